//! Lower directories from the *plain* repository mount (`run --plain-mountpoint`).
//!
//! overlayfs probes `trusted.overlay.{metacopy,opaque,redirect,origin}` on every lower
//! dentry it looks up, and the kernel caches no extended attributes for FUSE: every probe
//! is a GETXATTR round trip to `strata-snapshotter mount`. A FUSE session that answers
//! GETXATTR with `ENOSYS` is never asked again (the kernel answers `EOPNOTSUPP` itself).
//! `mount --plain-mountpoint DIR` therefore mounts the same repository a second time at
//! `DIR`, same tree and inodes, with extended attributes switched off (CONTRACTS §4).
//!
//! A layer (or flat tree) may use the plain mount only if it carries no extended
//! attribute at all — opaque directories (`trusted.overlay.opaque`), file capabilities
//! (`security.capability`) and user xattrs must stay visible. The main mount says so in
//! the CVMFS magic attribute [`CATALOG_COUNTERS_XATTR`] of the directory: a layer's
//! `layerfs` and a flat tree are each exactly one nested catalog, so the tree has no
//! xattrs iff `self_xattr + subtree_xattr == 0` ([`CatalogCounters`]).
//!
//! [`PlainLowers::lower`] maps `<mountpoint>/<rel>` to `<plain>/<rel>` when that holds
//! and `<plain>/<rel>` is a directory, and leaves every other path alone. Blocking:
//! getxattr and stat in the FUSE mounts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::debug;

use crate::catalog_counters::{CATALOG_COUNTERS_XATTR, CatalogCounters};

/// Whether the tree at a repository path may be served from the plain mount.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Xattrs {
    /// The catalog (and everything nested below) holds no extended attribute.
    None,
    /// It holds this many entries with extended attributes.
    Some(i64),
}

/// Maps lower directories in the repository mount to the plain mount (module doc). Shared
/// by `&self` callers: the per-path verdicts sit behind a mutex.
#[derive(Debug)]
pub struct PlainLowers {
    mountpoint: PathBuf,
    plain: PathBuf,
    /// Repository-relative path → what its catalog counters said. Only definite answers
    /// are kept (a layer's path names its digest, so they never change); a missing or
    /// unreadable attribute is asked again next time.
    verdicts: Mutex<HashMap<PathBuf, Xattrs>>,
}

impl PlainLowers {
    /// Lower directories under `mountpoint` (the main mount) may be served from `plain`.
    pub fn new(mountpoint: &Path, plain: &Path) -> PlainLowers {
        PlainLowers {
            mountpoint: mountpoint.to_path_buf(),
            plain: plain.to_path_buf(),
            verdicts: Mutex::new(HashMap::new()),
        }
    }

    /// The plain mount point.
    pub fn plain(&self) -> &Path {
        &self.plain
    }

    /// `<plain>/<rel>` for `dir` = `<mountpoint>/<rel>` whose tree carries no extended
    /// attribute (its [`CATALOG_COUNTERS_XATTR`] parse and say so) when `<plain>/<rel>`
    /// is a directory; `dir` itself otherwise (paths outside the mount, the mount root,
    /// trees with xattrs, a missing/garbled attribute, a missing plain directory — the
    /// reason is logged at debug level). Blocking.
    pub fn lower(&self, dir: &Path) -> PathBuf {
        let Some(rel) = self.relative(dir) else {
            return dir.to_path_buf();
        };
        match self.verdict(&rel, dir) {
            Ok(Xattrs::None) => {}
            Ok(Xattrs::Some(n)) => {
                debug!(path = %dir.display(), xattrs = n, "main mount: the tree has extended attributes");
                return dir.to_path_buf();
            }
            Err(reason) => {
                debug!(path = %dir.display(), %reason, "main mount: cannot tell whether the tree has extended attributes");
                return dir.to_path_buf();
            }
        }
        let plain = self.plain.join(&rel);
        match std::fs::metadata(&plain) {
            Ok(m) if m.is_dir() => {
                debug!(path = %dir.display(), plain = %plain.display(), "plain mount: the tree has no extended attributes");
                plain
            }
            Ok(_) => {
                debug!(plain = %plain.display(), "main mount: the plain path is not a directory");
                dir.to_path_buf()
            }
            Err(e) => {
                debug!(plain = %plain.display(), error = %e, "main mount: the plain path is unavailable");
                dir.to_path_buf()
            }
        }
    }

    /// `rel` with `dir` = `<mountpoint>/<rel>` and `rel` non-empty, plain components only.
    /// Also tries the canonical mount point (remote layers found through `.chainids` are
    /// stored canonicalized).
    fn relative(&self, dir: &Path) -> Option<PathBuf> {
        let strip = |base: &Path| -> Option<PathBuf> {
            let rel = dir.strip_prefix(base).ok()?;
            let normal = rel.components().count() > 0
                && rel
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            normal.then(|| rel.to_path_buf())
        };
        strip(&self.mountpoint).or_else(|| {
            let canonical = self.mountpoint.canonicalize().ok()?;
            (canonical != self.mountpoint)
                .then(|| strip(&canonical))
                .flatten()
        })
    }

    /// The cached verdict for `rel`, or one read from `dir`'s attribute (and cached).
    fn verdict(&self, rel: &Path, dir: &Path) -> std::result::Result<Xattrs, String> {
        if let Some(v) = self.cached(rel) {
            return Ok(v);
        }
        let value = xattr::get_deref(dir, CATALOG_COUNTERS_XATTR)
            .map_err(|e| format!("getxattr {CATALOG_COUNTERS_XATTR}: {e}"))?
            .ok_or_else(|| format!("no {CATALOG_COUNTERS_XATTR} attribute"))?;
        let counters =
            CatalogCounters::parse(&value).map_err(|e| format!("{CATALOG_COUNTERS_XATTR}: {e}"))?;
        let repo_path = Path::new("/").join(rel);
        if !counters.catalog_mountpoint.is_empty()
            && !repo_path.starts_with(&counters.catalog_mountpoint)
        {
            return Err(format!(
                "{CATALOG_COUNTERS_XATTR} names catalog {:?}, which does not contain {}",
                counters.catalog_mountpoint,
                repo_path.display()
            ));
        }
        let verdict = match counters.xattrs() {
            0 => Xattrs::None,
            n => Xattrs::Some(n),
        };
        if let Ok(mut cache) = self.verdicts.lock() {
            cache.insert(rel.to_path_buf(), verdict.clone());
        }
        Ok(verdict)
    }

    fn cached(&self, rel: &Path) -> Option<Xattrs> {
        self.verdicts.lock().ok()?.get(rel).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYER: &str = ".layers/ab/abcd/layerfs";

    /// A value as the mount serves it, with `xattr` entries in the catalog itself.
    fn counters(mountpoint: &str, self_xattr: i64, subtree_xattr: i64) -> String {
        let mut stats = catalog::Statistics::default();
        stats.self_.xattr = self_xattr;
        stats.subtree.xattr = subtree_xattr;
        crate::catalog_counters::to_text("0123abcd", mountpoint, &stats)
    }

    struct Fake {
        _dir: tempfile::TempDir,
        mount: PathBuf,
        plain: PathBuf,
        lowers: PlainLowers,
    }

    /// A fake main mount and plain mount (both plain directories) with [`LAYER`] in both.
    fn fake() -> Fake {
        let dir = tempfile::tempdir().expect("tempdir");
        let mount = dir.path().join("mnt");
        let plain = dir.path().join("plain");
        for base in [&mount, &plain] {
            std::fs::create_dir_all(base.join(LAYER)).expect("mkdir");
        }
        let lowers = PlainLowers::new(&mount, &plain);
        Fake {
            _dir: dir,
            mount,
            plain,
            lowers,
        }
    }

    fn set(path: &Path, value: &str) {
        xattr::set(path, CATALOG_COUNTERS_XATTR, value.as_bytes()).expect("setxattr user.*");
    }

    #[test]
    fn a_tree_without_xattrs_gets_the_plain_path() {
        let f = fake();
        let dir = f.mount.join(LAYER);
        set(&dir, &counters("/.layers/ab/abcd/layerfs", 0, 0));
        assert_eq!(f.lowers.lower(&dir), f.plain.join(LAYER));
        // The root catalog's counters (an enclosing catalog) are sound too.
        let flat = ".flat/cd/cdef";
        std::fs::create_dir_all(f.mount.join(flat)).expect("mkdir");
        std::fs::create_dir_all(f.plain.join(flat)).expect("mkdir");
        set(&f.mount.join(flat), &counters("", 0, 0));
        assert_eq!(f.lowers.lower(&f.mount.join(flat)), f.plain.join(flat));
    }

    #[test]
    fn a_tree_with_xattrs_keeps_the_main_path() {
        let f = fake();
        let dir = f.mount.join(LAYER);
        set(&dir, &counters("/.layers/ab/abcd/layerfs", 3, 0));
        assert_eq!(f.lowers.lower(&dir), dir);
        set(&dir, &counters("/.layers/ab/abcd/layerfs", 0, 1));
        // Cached: still the main path (and it would be anyway).
        assert_eq!(f.lowers.lower(&dir), dir);
    }

    #[test]
    fn a_missing_or_garbled_attribute_keeps_the_main_path() {
        let f = fake();
        let dir = f.mount.join(LAYER);
        assert_eq!(f.lowers.lower(&dir), dir, "no attribute");
        set(&dir, "garbage");
        assert_eq!(f.lowers.lower(&dir), dir, "garbled");
        // Counters of a catalog that does not contain the path.
        set(&dir, &counters("/.layers/ff/ffff/layerfs", 0, 0));
        assert_eq!(f.lowers.lower(&dir), dir, "other catalog");
        // Not cached: once the attribute is right, the plain path.
        set(&dir, &counters("/.layers/ab/abcd/layerfs", 0, 0));
        assert_eq!(f.lowers.lower(&dir), f.plain.join(LAYER));
    }

    #[test]
    fn a_missing_plain_directory_keeps_the_main_path() {
        let f = fake();
        let dir = f.mount.join(LAYER);
        set(&dir, &counters("/.layers/ab/abcd/layerfs", 0, 0));
        std::fs::remove_dir(f.plain.join(LAYER)).expect("rmdir");
        assert_eq!(f.lowers.lower(&dir), dir);
        std::fs::write(f.plain.join(LAYER), "").expect("a file instead");
        assert_eq!(f.lowers.lower(&dir), dir);
    }

    #[test]
    fn the_verdict_is_cached_per_path() {
        let f = fake();
        let dir = f.mount.join(LAYER);
        set(&dir, &counters("/.layers/ab/abcd/layerfs", 0, 0));
        assert_eq!(f.lowers.lower(&dir), f.plain.join(LAYER));
        // The attribute is not read again: removing it changes nothing.
        xattr::remove(&dir, CATALOG_COUNTERS_XATTR).expect("removexattr");
        assert_eq!(f.lowers.lower(&dir), f.plain.join(LAYER));
        assert_eq!(f.lowers.cached(Path::new(LAYER)), Some(Xattrs::None));
    }

    #[test]
    fn paths_outside_the_mount_are_left_alone() {
        let f = fake();
        set(&f.mount, &counters("", 0, 0));
        assert_eq!(f.lowers.lower(&f.mount), f.mount, "the mount root itself");
        let local = f.mount.with_file_name("root/snapshots/1/fs");
        assert_eq!(f.lowers.lower(&local), local);
        let sneaky = f.mount.join("../plain").join(LAYER);
        assert_eq!(f.lowers.lower(&sneaky), sneaky);
    }

    #[test]
    fn the_canonical_mount_point_matches_too() {
        let f = fake();
        let link = f.mount.with_file_name("mnt-link");
        std::os::unix::fs::symlink(&f.mount, &link).expect("symlink");
        let lowers = PlainLowers::new(&link, &f.plain);
        let canonical = f.mount.canonicalize().expect("canon").join(LAYER);
        set(&canonical, &counters("/.layers/ab/abcd/layerfs", 0, 0));
        assert_eq!(lowers.lower(&canonical), f.plain.join(LAYER));
        assert_eq!(lowers.lower(&link.join(LAYER)), f.plain.join(LAYER));
    }
}
