//! Finding a published layer in the repository mount (CONTRACTS §3) for an extraction
//! Prepare (docs/lazy-snapshotters.md §2, §3.3), and saying why not when it is not there.
//!
//! 1. `containerd.io/snapshot/cri.layer-digest` = `sha256:<hex>` (compressed digest):
//!    `<mountpoint>/.layers/<hex[0:2]>/<hex>/layerfs` must be a directory (as the CVMFS
//!    snapshotter does, docs/lazy-snapshotters.md §4).
//! 2. Otherwise `containerd.io/snapshot.ref` = `sha256:<chainid hex>`:
//!    `<mountpoint>/.chainids/<hh>/<hex>` is a symlink to the top layer's `layerfs`; it is
//!    canonicalized and must be a directory. This makes clients that pass no CRI labels
//!    lazy too.
//! 3. Otherwise the ChainID at the end of the Prepare key (`extract-<n>-<r> sha256:<hex>`,
//!    containerd's `snapshots.UnpackKeyFormat`, possibly behind the metadata layer's
//!    `<namespace>/<seq>/` prefix) through `.chainids`. A layer found this way is reported
//!    but never taken remote: without the `snapshot.ref` label containerd's metadata layer
//!    does not run the remote handshake, and its unpacker (`rootfs/apply.go`) retries an
//!    `AlreadyExists` Prepare with a new key forever — so the caller falls back with
//!    [`FallbackReason::NoLabels`] and the log names the client as the cause.
//!
//! Errors from the mount are classified: `ENOENT` is "not published"; `ENOTCONN`
//! (FUSE process gone), `EIO` (repository not reachable over HTTP), `ESTALE`,
//! `ECONNABORTED` and a mount point without `.layers` (not mounted) are "unreachable".

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use namespace::{Digest, paths};

use crate::client::startup::ask_mount;
use crate::containerd::snapshots::store::Labels;

/// Label naming the snapshot (ChainID) an extraction Prepare wants to produce.
pub const LABEL_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// CRI label with the compressed layer digest.
pub const LABEL_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// Label set on snapshots committed from the repository.
pub const LABEL_REMOTE: &str = "containerd.io/snapshot/remote";
/// Prefix of the labels containerd lets a snapshot inherit (`snapshots.FilterInheritedLabels`:
/// this prefix, or exactly [`LABEL_SNAPSHOT_REF`]).
pub const INHERITED_LABEL_PREFIX: &str = "containerd.io/snapshot/";

/// Why an extraction Prepare was not answered from the repository. The names are the
/// `reason` values of the fallback counter and log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FallbackReason {
    /// The layer is not in the repository.
    NotPublished,
    /// The repository mount is not there, not connected, or answers I/O errors.
    Unreachable,
    /// The request carries no `containerd.io/snapshot.ref` label (e.g. containerd 1.6
    /// `ctr image pull`), so containerd cannot take a remote snapshot.
    NoLabels,
    /// A parent snapshot's directory is not reachable.
    ParentUnavailable,
    /// The target name exists with another parent or kind.
    TargetConflict,
}

impl FallbackReason {
    /// All reasons, for exporting zero counters.
    pub const ALL: [FallbackReason; 5] = [
        FallbackReason::NotPublished,
        FallbackReason::Unreachable,
        FallbackReason::NoLabels,
        FallbackReason::ParentUnavailable,
        FallbackReason::TargetConflict,
    ];

    /// Short snake_case name (metric label value, log field).
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::NotPublished => "not_published",
            FallbackReason::Unreachable => "unreachable",
            FallbackReason::NoLabels => "no_labels",
            FallbackReason::ParentUnavailable => "parent_unavailable",
            FallbackReason::TargetConflict => "target_conflict",
        }
    }
}

/// Where a layer was found, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The layer's root directory inside the mount, and which source led there.
    Found {
        /// The `layerfs` directory (canonical when found through `.chainids`).
        path: PathBuf,
        /// `cri.layer-digest`, `snapshot.ref` or `key`.
        via: &'static str,
    },
    /// Not usable: the classified reason and a human-readable detail for the log.
    Missing {
        /// Classification.
        reason: FallbackReason,
        /// What was looked at and what happened.
        detail: String,
    },
}

/// The repository mount point, as seen by the snapshotter.
#[derive(Clone, Debug)]
pub struct RepositoryMount {
    mountpoint: PathBuf,
    /// Images whose startup prefetch was asked for (once per image and process).
    prefetched: Arc<Mutex<HashSet<String>>>,
}

/// Images remembered as prefetched; past it, the set is cleared (asking again is cheap).
const MAX_PREFETCHED: usize = 10_000;

/// The ChainID of an extraction key `[<ns>/<seq>/]extract-<x> sha256:<hex>` (containerd
/// `snapshots.UnpackKeyFormat` = `"extract-%s %s"`), or `None`.
pub fn key_chain_id(key: &str) -> Option<Digest> {
    let (head, chain) = key.rsplit_once(' ')?;
    let last = head.rsplit('/').next().unwrap_or(head);
    if last.starts_with("extract-") {
        chain.parse().ok()
    } else {
        None
    }
}

/// Only the labels containerd lets a snapshot inherit (`snapshots.FilterInheritedLabels`).
pub fn inherited_labels(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| k.starts_with(INHERITED_LABEL_PREFIX) || *k == LABEL_SNAPSHOT_REF)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether an I/O error from the mount means "the repository is not reachable" (as
/// opposed to "this path does not exist").
pub fn is_unreachable(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOTCONN | libc::EIO | libc::ESTALE | libc::ECONNABORTED | libc::ETIMEDOUT)
    )
}

/// Classifies a failed lookup of `path` in the mount.
fn missing(path: &Path, err: &std::io::Error) -> Resolution {
    let reason = if is_unreachable(err) {
        FallbackReason::Unreachable
    } else {
        FallbackReason::NotPublished
    };
    Resolution::Missing {
        reason,
        detail: format!("{}: {err}", path.display()),
    }
}

/// Looks `path` up: `Ok(canonical dir)`, or the classified miss.
fn lookup_dir(path: &Path, canonicalize: bool) -> std::result::Result<PathBuf, Resolution> {
    let resolved = if canonicalize {
        path.canonicalize().map_err(|e| missing(path, &e))?
    } else {
        path.to_path_buf()
    };
    match std::fs::metadata(&resolved) {
        Ok(m) if m.is_dir() => Ok(resolved),
        Ok(_) => Err(Resolution::Missing {
            reason: FallbackReason::NotPublished,
            detail: format!("{} is not a directory", resolved.display()),
        }),
        Err(e) => Err(missing(&resolved, &e)),
    }
}

impl RepositoryMount {
    /// A repository mounted at `mountpoint` (need not exist yet).
    pub fn new(mountpoint: &Path) -> RepositoryMount {
        RepositoryMount {
            mountpoint: mountpoint.to_path_buf(),
            prefetched: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// `<mountpoint>/.layers/<hh>/<hex>/layerfs` for a compressed layer digest.
    pub fn layer_path(&self, layer: &Digest) -> PathBuf {
        self.mountpoint.join(paths::join(&paths::layerfs(layer)))
    }

    /// `<mountpoint>/.chainids/<hh>/<hex>` for a ChainID.
    pub fn chainid_path(&self, chain: &Digest) -> PathBuf {
        self.mountpoint
            .join(paths::join(&paths::chainid_link(chain)))
    }

    /// A remote layer of image `image_ref` (a Prepare's CRI label
    /// `containerd.io/snapshot/cri.image-ref`) was handed out: asks the mount, once per
    /// image, to prefetch the image's startup packs for this node's platform
    /// ([`crate::client::startup`]). Never fails or delays the Prepare: the request (one
    /// `getxattr` in the mount) runs on a thread of its own, a problem is logged. (The
    /// request is answered once a small first pack is in, and the mount may be busy committing the packs a
    /// `strata-snapshotter pull` asked for already: measured at 50 ms from the server, the
    /// Prepare that waited for it took 116 ms longer.)
    pub fn prefetch_startup(&self, image_ref: &str) {
        {
            let mut asked = self
                .prefetched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if asked.len() >= MAX_PREFETCHED {
                asked.clear();
            }
            if !asked.insert(image_ref.to_string()) {
                return;
            }
        }
        let name = match namespace::ImageName::parse(image_ref) {
            Ok(name) => name,
            Err(e) => {
                tracing::debug!(image_ref, error = %e, "no startup prefetch");
                return;
            }
        };
        let public = name.public_path();
        let platform = namespace::Platform::node().dir_name();
        let dir = self
            .mountpoint
            .join(paths::join(&paths::startup_dir(&public, &platform)));
        let ask = move || match ask_mount(&dir) {
            Ok(Some(answer)) => tracing::info!(image = %public, %answer, "startup prefetch asked"),
            Ok(None) => {}
            Err(e) => tracing::warn!(image = %public, error = %e, "startup prefetch not asked"),
        };
        if let Err(e) = std::thread::Builder::new()
            .name("startup-prefetch".into())
            .spawn(ask)
        {
            tracing::warn!(image_ref, error = %e, "startup prefetch not asked: no thread");
        }
    }

    /// `Ok` if the repository answers (`<mountpoint>/.layers` is a directory), else the
    /// [`FallbackReason::Unreachable`] miss saying why. Blocking.
    pub fn probe(&self) -> std::result::Result<(), Resolution> {
        let layers = self.mountpoint.join(paths::LAYERS);
        match std::fs::metadata(&layers) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(Resolution::Missing {
                reason: FallbackReason::Unreachable,
                detail: format!("{} is not a directory", layers.display()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Resolution::Missing {
                reason: FallbackReason::Unreachable,
                detail: format!(
                    "repository not mounted: {} does not exist",
                    layers.display()
                ),
            }),
            Err(e) => Err(Resolution::Missing {
                reason: FallbackReason::Unreachable,
                detail: format!("repository not reachable: {}: {e}", layers.display()),
            }),
        }
    }

    /// Resolves the layer an extraction Prepare with `key` and `labels` asks for (module
    /// doc order). Blocking: stats paths inside the FUSE mount.
    pub fn resolve(&self, key: &str, labels: &Labels) -> Resolution {
        if let Err(miss) = self.probe() {
            return miss;
        }
        let mut details = Vec::new();
        let mut unreachable = false;
        let mut note = |r: Resolution, details: &mut Vec<String>| {
            if let Resolution::Missing { reason, detail } = r {
                unreachable |= reason == FallbackReason::Unreachable;
                details.push(detail);
            }
        };
        match labels.get(LABEL_LAYER_DIGEST) {
            Some(digest) => match digest.parse::<Digest>() {
                Ok(layer) => match lookup_dir(&self.layer_path(&layer), false) {
                    Ok(path) => {
                        return Resolution::Found {
                            path,
                            via: "cri.layer-digest",
                        };
                    }
                    Err(miss) => note(miss, &mut details),
                },
                Err(e) => details.push(format!("label {LABEL_LAYER_DIGEST}: {e}")),
            },
            None => details.push("no cri.layer-digest label".to_string()),
        }
        let by_label = labels.get(LABEL_SNAPSHOT_REF);
        let chain = match by_label {
            Some(label) => Some(
                label
                    .parse::<Digest>()
                    .map_err(|e| format!("label {LABEL_SNAPSHOT_REF}: {e}")),
            ),
            None => key_chain_id(key).map(Ok),
        };
        match chain {
            Some(Ok(chain)) => match lookup_dir(&self.chainid_path(&chain), true) {
                Ok(path) if by_label.is_some() => {
                    return Resolution::Found {
                        path,
                        via: "snapshot.ref",
                    };
                }
                Ok(path) => {
                    return Resolution::Missing {
                        reason: FallbackReason::NoLabels,
                        detail: format!(
                            "published at {} (ChainID {chain} from the key), but the \
                             request has no {LABEL_SNAPSHOT_REF} label: the client does not \
                             support remote snapshots (use `strata-snapshotter pull`, CRI \
                             or nerdctl)",
                            path.display()
                        ),
                    };
                }
                Err(miss) => note(miss, &mut details),
            },
            Some(Err(e)) => details.push(e),
            None => details.push("no snapshot.ref label and no ChainID in the key".to_string()),
        }
        Resolution::Missing {
            reason: if unreachable {
                FallbackReason::Unreachable
            } else if by_label.is_none() && key_chain_id(key).is_none() {
                FallbackReason::NoLabels
            } else {
                FallbackReason::NotPublished
            },
            detail: details.join("; "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYER: &str = "aa11111111111111111111111111111111111111111111111111111111111111";
    const CHAIN: &str = "cc22222222222222222222222222222222222222222222222222222222222222";

    fn digest(hex: &str) -> Digest {
        format!("sha256:{hex}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn fake_mount() -> std::io::Result<(tempfile::TempDir, RepositoryMount)> {
        let dir = tempfile::tempdir()?;
        let repo = RepositoryMount::new(dir.path());
        std::fs::create_dir_all(repo.layer_path(&digest(LAYER)))?;
        let link = repo.chainid_path(&digest(CHAIN));
        std::fs::create_dir_all(link.parent().unwrap_or(dir.path()))?;
        std::os::unix::fs::symlink(paths::chainid_target(&digest(LAYER)), &link)?;
        Ok((dir, repo))
    }

    #[test]
    fn found_by_layer_digest_first() -> std::io::Result<()> {
        let (_d, repo) = fake_mount()?;
        let r = repo.resolve(
            "k",
            &labels(&[
                (LABEL_LAYER_DIGEST, &format!("sha256:{LAYER}")),
                (LABEL_SNAPSHOT_REF, "sha256:nothex"),
            ]),
        );
        assert_eq!(
            r,
            Resolution::Found {
                path: repo.layer_path(&digest(LAYER)),
                via: "cri.layer-digest"
            }
        );
        Ok(())
    }

    #[test]
    fn found_by_chainid_symlink_canonicalized() -> std::io::Result<()> {
        let (_d, repo) = fake_mount()?;
        let r = repo.resolve(
            "k",
            &labels(&[(LABEL_SNAPSHOT_REF, &format!("sha256:{CHAIN}"))]),
        );
        assert_eq!(
            r,
            Resolution::Found {
                path: repo.layer_path(&digest(LAYER)).canonicalize()?,
                via: "snapshot.ref"
            }
        );
        Ok(())
    }

    #[test]
    fn missing_layer_falls_through_to_chainid_then_reports_both() -> std::io::Result<()> {
        let (_d, repo) = fake_mount()?;
        let other = "bb".repeat(32);
        let r = repo.resolve(
            "k",
            &labels(&[
                (LABEL_LAYER_DIGEST, &format!("sha256:{other}")),
                (LABEL_SNAPSHOT_REF, &format!("sha256:{CHAIN}")),
            ]),
        );
        assert!(matches!(
            r,
            Resolution::Found {
                via: "snapshot.ref",
                ..
            }
        ));
        let r = repo.resolve(
            "k",
            &labels(&[
                (LABEL_LAYER_DIGEST, &format!("sha256:{other}")),
                (LABEL_SNAPSHOT_REF, &format!("sha256:{other}")),
            ]),
        );
        match r {
            Resolution::Missing { reason, detail } => {
                assert_eq!(reason, FallbackReason::NotPublished);
                assert!(detail.contains(".layers/bb/"), "{detail}");
                assert!(detail.contains(".chainids/bb/"), "{detail}");
            }
            found => panic!("unexpected {found:?}"),
        }
        Ok(())
    }

    #[test]
    fn key_chain_id_without_label_is_reported_not_taken() -> std::io::Result<()> {
        let (_d, repo) = fake_mount()?;
        let key = format!("default/12/extract-123-abc sha256:{CHAIN}");
        assert_eq!(key_chain_id(&key), Some(digest(CHAIN)));
        match repo.resolve(&key, &Labels::new()) {
            Resolution::Missing { reason, detail } => {
                assert_eq!(reason, FallbackReason::NoLabels);
                assert!(detail.contains("published at"), "{detail}");
            }
            found => panic!("unexpected {found:?}"),
        }
        // A container key carries no ChainID.
        assert_eq!(key_chain_id("default/13/my-container"), None);
        assert_eq!(key_chain_id(&format!("x sha256:{CHAIN}")), None);
        Ok(())
    }

    #[test]
    fn unmounted_repository_is_unreachable() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let repo = RepositoryMount::new(&dir.path().join("not-mounted"));
        match repo.resolve(
            "k",
            &labels(&[(LABEL_SNAPSHOT_REF, &format!("sha256:{CHAIN}"))]),
        ) {
            Resolution::Missing { reason, detail } => {
                assert_eq!(reason, FallbackReason::Unreachable);
                assert!(detail.contains("not mounted"), "{detail}");
            }
            found => panic!("unexpected {found:?}"),
        }
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        let enotconn = std::io::Error::from_raw_os_error(libc::ENOTCONN);
        let enoent = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert!(is_unreachable(&eio) && is_unreachable(&enotconn) && !is_unreachable(&enoent));
        Ok(())
    }

    #[test]
    fn only_containerd_inherited_labels_survive() {
        let l = labels(&[
            (LABEL_SNAPSHOT_REF, "sha256:x"),
            (LABEL_LAYER_DIGEST, "sha256:y"),
            ("containerd.io/gc.root", "z"),
            ("other", "w"),
        ]);
        let inherited = inherited_labels(&l);
        let kept: Vec<&str> = inherited.keys().map(String::as_str).collect();
        assert_eq!(kept, vec![LABEL_SNAPSHOT_REF, LABEL_LAYER_DIGEST]);
    }

    #[test]
    fn rejects_non_sha256_and_traversal() -> std::io::Result<()> {
        let (_d, repo) = fake_mount()?;
        for bad in [
            "sha256:../../etc".to_string(),
            format!("sha512:{LAYER}"),
            format!("sha256:{}", LAYER.to_uppercase()),
        ] {
            assert_eq!(key_chain_id(&format!("extract-1 {bad}")), None);
            let both = labels(&[(LABEL_LAYER_DIGEST, &bad), (LABEL_SNAPSHOT_REF, &bad)]);
            match repo.resolve("k", &both) {
                Resolution::Missing { reason, detail } => {
                    assert_eq!(reason, FallbackReason::NotPublished);
                    assert!(
                        detail.contains(&format!("label {LABEL_LAYER_DIGEST}"))
                            && detail.contains(&format!("label {LABEL_SNAPSHOT_REF}"))
                            && detail.contains(&bad),
                        "{detail}"
                    );
                }
                found => panic!("unexpected {found:?}"),
            }
        }
        assert_eq!(
            key_chain_id(&format!("extract-1 sha256:{LAYER}")),
            Some(digest(LAYER))
        );
        Ok(())
    }
}
