//! Finding a published layer in the repository mount (CONTRACTS §3) from the labels of an
//! extraction Prepare (anchors §3.2, §3.3).
//!
//! 1. `containerd.io/snapshot/cri.layer-digest` = `sha256:<hex>` (compressed digest):
//!    `<mountpoint>/.layers/<hex[0:2]>/<hex>/layerfs` must be a directory (as the CVMFS
//!    snapshotter does, anchors §1.1).
//! 2. Otherwise `containerd.io/snapshot.ref` = `sha256:<chainid hex>`:
//!    `<mountpoint>/.chainids/<hh>/<hex>` is a symlink to the top layer's `layerfs`; it is
//!    canonicalized and must be a directory. This makes clients that pass no CRI labels
//!    lazy too.

use std::path::{Path, PathBuf};

use crate::snapshots::store::Labels;

/// Label naming the snapshot (ChainID) an extraction Prepare wants to produce.
pub const LABEL_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// CRI label with the compressed layer digest.
pub const LABEL_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// Label set on snapshots committed from the repository.
pub const LABEL_REMOTE: &str = "containerd.io/snapshot/remote";

/// Where a layer was found, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The layer's root directory inside the mount, and which label led there.
    Found {
        /// The `layerfs` directory (canonical when found through `.chainids`).
        path: PathBuf,
        /// `cri.layer-digest` or `snapshot.ref`.
        via: &'static str,
    },
    /// Not published (or the mount is not there); the reason, for the log.
    Missing(String),
}

/// The repository mount point, as seen by the snapshotter.
#[derive(Clone, Debug)]
pub struct Repository {
    mountpoint: PathBuf,
}

/// The lowercase 64-hex part of `sha256:<hex>`, or `None` (also guards against paths).
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

impl Repository {
    /// A repository mounted at `mountpoint` (need not exist yet).
    pub fn new(mountpoint: &Path) -> Repository {
        Repository {
            mountpoint: mountpoint.to_path_buf(),
        }
    }

    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// `<mountpoint>/.layers/<hh>/<hex>/layerfs` for a compressed layer digest.
    pub fn layer_path(&self, hex: &str) -> PathBuf {
        self.mountpoint
            .join(".layers")
            .join(&hex[..2])
            .join(hex)
            .join("layerfs")
    }

    /// `<mountpoint>/.chainids/<hh>/<hex>` for a ChainID.
    pub fn chainid_path(&self, hex: &str) -> PathBuf {
        self.mountpoint.join(".chainids").join(&hex[..2]).join(hex)
    }

    /// Resolves the layer an extraction Prepare with `labels` asks for (module doc order).
    /// Blocking: stats paths inside the FUSE mount.
    pub fn resolve(&self, labels: &Labels) -> Resolution {
        let mut reasons = Vec::new();
        match labels.get(LABEL_LAYER_DIGEST) {
            Some(digest) => match sha256_hex(digest) {
                Some(hex) => {
                    let path = self.layer_path(hex);
                    if path.is_dir() {
                        return Resolution::Found {
                            path,
                            via: "cri.layer-digest",
                        };
                    }
                    reasons.push(format!("{} is not a directory", path.display()));
                }
                None => reasons.push(format!("layer digest {digest:?} is not sha256:<hex>")),
            },
            None => reasons.push("no cri.layer-digest label".to_string()),
        }
        match labels.get(LABEL_SNAPSHOT_REF) {
            Some(chain) => match sha256_hex(chain) {
                Some(hex) => {
                    let link = self.chainid_path(hex);
                    match link.canonicalize() {
                        Ok(path) if path.is_dir() => {
                            return Resolution::Found {
                                path,
                                via: "snapshot.ref",
                            };
                        }
                        Ok(path) => reasons.push(format!("{} is not a directory", path.display())),
                        Err(e) => reasons.push(format!("{}: {e}", link.display())),
                    }
                }
                None => reasons.push(format!("snapshot.ref {chain:?} is not sha256:<hex>")),
            },
            None => reasons.push("no snapshot.ref label".to_string()),
        }
        Resolution::Missing(reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYER: &str = "aa11111111111111111111111111111111111111111111111111111111111111";
    const CHAIN: &str = "cc22222222222222222222222222222222222222222222222222222222222222";

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn fake_mount() -> std::io::Result<(tempfile::TempDir, Repository)> {
        let dir = tempfile::tempdir()?;
        let repo = Repository::new(dir.path());
        std::fs::create_dir_all(repo.layer_path(LAYER))?;
        let link = repo.chainid_path(CHAIN);
        std::fs::create_dir_all(link.parent().unwrap_or(dir.path()))?;
        std::os::unix::fs::symlink(format!("../../.layers/aa/{LAYER}/layerfs"), &link)?;
        Ok((dir, repo))
    }

    #[test]
    fn found_by_layer_digest_first() -> std::io::Result<()> {
        let (_d, repo) = fake_mount()?;
        let r = repo.resolve(&labels(&[
            (LABEL_LAYER_DIGEST, &format!("sha256:{LAYER}")),
            (LABEL_SNAPSHOT_REF, "sha256:nothex"),
        ]));
        assert_eq!(
            r,
            Resolution::Found {
                path: repo.layer_path(LAYER),
                via: "cri.layer-digest"
            }
        );
        Ok(())
    }

    #[test]
    fn found_by_chainid_symlink_canonicalized() -> std::io::Result<()> {
        let (_d, repo) = fake_mount()?;
        let r = repo.resolve(&labels(&[(LABEL_SNAPSHOT_REF, &format!("sha256:{CHAIN}"))]));
        assert_eq!(
            r,
            Resolution::Found {
                path: repo.layer_path(LAYER).canonicalize()?,
                via: "snapshot.ref"
            }
        );
        Ok(())
    }

    #[test]
    fn missing_layer_falls_through_to_chainid_then_reports_both() -> std::io::Result<()> {
        let (_d, repo) = fake_mount()?;
        let other = "bb".repeat(32);
        let r = repo.resolve(&labels(&[
            (LABEL_LAYER_DIGEST, &format!("sha256:{other}")),
            (LABEL_SNAPSHOT_REF, &format!("sha256:{CHAIN}")),
        ]));
        assert!(matches!(
            r,
            Resolution::Found {
                via: "snapshot.ref",
                ..
            }
        ));
        let r = repo.resolve(&labels(&[
            (LABEL_LAYER_DIGEST, &format!("sha256:{other}")),
            (LABEL_SNAPSHOT_REF, &format!("sha256:{other}")),
        ]));
        match r {
            Resolution::Missing(reason) => {
                assert!(reason.contains(".layers/bb/"), "{reason}");
                assert!(reason.contains(".chainids/bb/"), "{reason}");
            }
            found => panic!("unexpected {found:?}"),
        }
        Ok(())
    }

    #[test]
    fn rejects_non_sha256_and_traversal() {
        assert_eq!(sha256_hex("sha256:../../etc"), None);
        assert_eq!(sha256_hex(&format!("sha512:{LAYER}")), None);
        assert_eq!(
            sha256_hex(&format!("sha256:{}", LAYER.to_uppercase())),
            None
        );
        assert_eq!(sha256_hex(&format!("sha256:{LAYER}")), Some(LAYER));
    }
}
