//! The mount lists handed to containerd for a snapshot, shaped exactly as containerd's
//! overlayfs snapshotter shapes them (`snapshots/overlay/overlay.go`, `mounts()`), so
//! containerd and runc treat our snapshots like native overlay ones.
//!
//! | snapshot | parents | mounts |
//! |---|---|---|
//! | active or view | none | `bind` of its own `fs` dir, `rw` (active) or `ro` (view), `rbind` |
//! | view | one | `bind` of the parent's dir, `ro`, `rbind` |
//! | view | several | `overlay` with `lowerdir=p1:p2:..` only (read-only) |
//! | active | one or more | `overlay` with `workdir=..`, `upperdir=..`, `lowerdir=p1:..` |
//!
//! `p1` is the nearest parent. A parent's directory is its `layerfs` inside the FUSE mount
//! for a remote snapshot, or `<root>/snapshots/<id>/fs` for a local one.

use std::path::{Path, PathBuf};

/// One mount, as `containerd.types.Mount`: `kind` is the mount type (`bind`, `overlay`),
/// `source` the device or directory, `options` fstab-style options. The target is always
/// empty: containerd mounts snapshots at a path it chooses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Mount type: `bind` or `overlay`.
    pub kind: String,
    /// Bind source directory, or the literal `overlay` for overlay mounts.
    pub source: String,
    /// fstab-style options, in containerd's order.
    pub options: Vec<String>,
}

/// What a snapshot's own directories are, for [`snapshot_mounts`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A writable snapshot with its upper (`fs`) and overlay work (`work`) directories.
    Active {
        /// `<root>/snapshots/<id>/fs`.
        upper: PathBuf,
        /// `<root>/snapshots/<id>/work`.
        work: PathBuf,
    },
    /// A read-only view; `fs` is its own (empty) directory, used only without parents.
    View {
        /// `<root>/snapshots/<id>/fs`.
        fs: PathBuf,
    },
}

/// Kernel-dependent options appended to overlay mounts, as containerd does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverlayOptions {
    /// Add `index=off` (containerd does when `/sys/module/overlay/parameters/index` exists).
    pub index_off: bool,
}

impl OverlayOptions {
    /// Detects the options from the running kernel (`index=off` support).
    pub fn detect() -> OverlayOptions {
        OverlayOptions {
            index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
        }
    }
}

/// The mounts of a snapshot with layout `layout` whose parent directories are `lowers`,
/// nearest parent first (see the module table).
pub fn snapshot_mounts(layout: &Layout, lowers: &[PathBuf], options: OverlayOptions) -> Vec<Mount> {
    if lowers.is_empty() {
        let (source, flag) = match layout {
            Layout::Active { upper, .. } => (upper, "rw"),
            Layout::View { fs } => (fs, "ro"),
        };
        return vec![bind(source, flag)];
    }
    let mut opts = Vec::new();
    if options.index_off {
        opts.push("index=off".to_string());
    }
    match layout {
        Layout::Active { upper, work } => {
            opts.push(format!("workdir={}", work.display()));
            opts.push(format!("upperdir={}", upper.display()));
        }
        Layout::View { .. } if lowers.len() == 1 => return vec![bind(&lowers[0], "ro")],
        Layout::View { .. } => {}
    }
    let joined: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    opts.push(format!("lowerdir={}", joined.join(":")));
    vec![Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options: opts,
    }]
}

fn bind(source: &Path, flag: &str) -> Mount {
    Mount {
        kind: "bind".into(),
        source: source.display().to_string(),
        options: vec![flag.to_string(), "rbind".to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active() -> Layout {
        Layout::Active {
            upper: "/r/snapshots/7/fs".into(),
            work: "/r/snapshots/7/work".into(),
        }
    }

    #[test]
    fn active_without_parent_is_rw_bind_of_own_fs() {
        let m = snapshot_mounts(&active(), &[], OverlayOptions { index_off: true });
        assert_eq!(
            m,
            vec![Mount {
                kind: "bind".into(),
                source: "/r/snapshots/7/fs".into(),
                options: vec!["rw".into(), "rbind".into()],
            }]
        );
    }

    #[test]
    fn view_without_parent_is_ro_bind() {
        let m = snapshot_mounts(
            &Layout::View {
                fs: "/r/snapshots/8/fs".into(),
            },
            &[],
            OverlayOptions::default(),
        );
        assert_eq!(m[0].kind, "bind");
        assert_eq!(m[0].options, vec!["ro", "rbind"]);
    }

    #[test]
    fn view_with_one_parent_binds_the_parent_read_only() {
        let m = snapshot_mounts(
            &Layout::View {
                fs: "/r/snapshots/8/fs".into(),
            },
            &["/m/.layers/ab/abcd/layerfs".into()],
            OverlayOptions { index_off: true },
        );
        assert_eq!(
            m,
            vec![Mount {
                kind: "bind".into(),
                source: "/m/.layers/ab/abcd/layerfs".into(),
                options: vec!["ro".into(), "rbind".into()],
            }]
        );
    }

    #[test]
    fn view_with_parents_is_lowerdir_only_overlay() {
        let m = snapshot_mounts(
            &Layout::View {
                fs: "/r/snapshots/8/fs".into(),
            },
            &["/a".into(), "/b".into()],
            OverlayOptions::default(),
        );
        assert_eq!(m[0].kind, "overlay");
        assert_eq!(m[0].source, "overlay");
        assert_eq!(m[0].options, vec!["lowerdir=/a:/b"]);
    }

    #[test]
    fn active_with_parents_is_full_overlay_in_containerd_order() {
        let m = snapshot_mounts(
            &active(),
            &["/m/top".into(), "/r/snapshots/1/fs".into()],
            OverlayOptions { index_off: true },
        );
        assert_eq!(
            m[0].options,
            vec![
                "index=off",
                "workdir=/r/snapshots/7/work",
                "upperdir=/r/snapshots/7/fs",
                "lowerdir=/m/top:/r/snapshots/1/fs",
            ]
        );
    }
}
