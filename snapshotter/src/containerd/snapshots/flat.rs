//! The flattened root file systems of published images (`M/.flat/<hh>/<config hex>`,
//! CONTRACTS §3), found from the ChainID of an image's top layer.
//!
//! When every parent of a container snapshot is remote, the container may get the image's
//! flat tree as its single `lowerdir` instead of one `layerfs` per layer (issue 6,
//! `--flat-lowerdir`). The flat tree is the publisher's overlay of the same layers (the
//! ChainID fixes the ordered diff IDs, OCI image spec "ChainID"), with whiteouts applied,
//! so the container sees the same files; the publisher adds `/.singularity.d` to it
//! (CONTRACTS §3), which is the one visible difference.
//!
//! The ChainID → flat mapping comes from the published image configs
//! (`M/.metadata/**/config.json`: `rootfs.diff_ids` give the ChainID, the sha256 of the
//! bytes the config digest) and is cached; a miss rescans at most every
//! [`RESCAN_INTERVAL`], so images without a flat tree (or not published at all) cost one
//! hash lookup per container start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use namespace::{Digest, paths, top_chain_id};
use tracing::{debug, warn};

/// Shortest time between two scans of `M/.metadata` caused by misses.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(30);

/// Deepest directory level under `M/.metadata` searched for `config.json`
/// (`<registry>/<repo parts…>:<tag>/platforms/<platform>/config.json`).
const MAX_DEPTH: usize = 12;

/// Cached ChainID → flat directory lookups over one repository mount.
#[derive(Debug)]
pub struct FlatIndex {
    mountpoint: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Top ChainID → `M/.flat/<hh>/<config hex>` (existing when scanned).
    by_chain: HashMap<Digest, PathBuf>,
    /// When the last scan ran.
    scanned: Option<Instant>,
}

impl FlatIndex {
    /// An empty index over the repository mounted at `mountpoint`.
    pub fn new(mountpoint: &Path) -> FlatIndex {
        FlatIndex {
            mountpoint: mountpoint.to_path_buf(),
            state: Mutex::new(State::default()),
        }
    }

    /// The flat tree of the image whose top layer has ChainID `chain` (`sha256:<hex>`), if
    /// one is published and is a directory now. Blocking: reads the mount on a miss.
    pub fn lookup(&self, chain: &str) -> Option<PathBuf> {
        let chain: Digest = chain.parse().ok()?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = state.by_chain.get(&chain)
            && dir.is_dir()
        {
            return Some(dir.clone());
        }
        let stale = state
            .scanned
            .is_none_or(|at| at.elapsed() >= RESCAN_INTERVAL);
        if !stale {
            return None;
        }
        state.by_chain = self.scan();
        state.scanned = Some(Instant::now());
        state.by_chain.get(&chain).filter(|d| d.is_dir()).cloned()
    }

    /// Reads every `config.json` under `M/.metadata` (bounded depth) and maps its top
    /// ChainID to its flat directory, if that exists.
    fn scan(&self) -> HashMap<Digest, PathBuf> {
        let started = Instant::now();
        let mut found = HashMap::new();
        let mut configs = 0usize;
        let mut stack = vec![(self.mountpoint.join(paths::METADATA), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) => {
                    if depth == 0 && e.kind() != std::io::ErrorKind::NotFound {
                        warn!(path = %dir.display(), error = %e, "cannot list image metadata");
                    }
                    continue;
                }
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() && depth < MAX_DEPTH {
                    stack.push((path, depth + 1));
                } else if kind.is_file() && entry.file_name() == paths::CONFIG_JSON {
                    configs += 1;
                    if let Some((chain, flat)) = self.flat_of_config(&path) {
                        found.insert(chain, flat);
                    }
                }
            }
        }
        debug!(
            configs,
            flat = found.len(),
            ms = started.elapsed().as_millis() as u64,
            "scanned image metadata for flat trees"
        );
        found
    }

    /// (top ChainID, flat dir) of the image config at `path`, if its flat tree exists.
    fn flat_of_config(&self, path: &Path) -> Option<(Digest, PathBuf)> {
        let bytes = std::fs::read(path).ok()?;
        let config: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let diff_ids: Vec<Digest> = config
            .get("rootfs")?
            .get("diff_ids")?
            .as_array()?
            .iter()
            .map(|d| d.as_str()?.parse().ok())
            .collect::<Option<_>>()?;
        let chain = top_chain_id(&diff_ids)?;
        let config_digest = Digest::of_bytes(&bytes);
        let flat = self
            .mountpoint
            .join(paths::join(&paths::flat_dir(&config_digest)));
        flat.is_dir().then_some((chain, flat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(s: &str) -> Digest {
        Digest::of_bytes(s.as_bytes())
    }

    /// The top ChainID as the snapshotter gets it: text.
    fn chain_id(diff_ids: &[Digest]) -> Option<String> {
        top_chain_id(diff_ids).map(|c| c.to_string())
    }

    /// Publishes an image config with `diff_ids` under `.metadata/<reference>` and, if
    /// `flat`, its flat tree; returns the flat directory.
    fn publish(mount: &Path, reference: &str, diff_ids: &[Digest], flat: bool) -> PathBuf {
        let diff_ids: Vec<String> = diff_ids.iter().map(Digest::to_string).collect();
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        })
        .to_string();
        let meta = mount.join(".metadata").join(reference);
        std::fs::create_dir_all(&meta).expect("mkdir");
        std::fs::write(meta.join("config.json"), &config).expect("write");
        let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(config.as_bytes()));
        let dir = mount.join(".flat").join(&hex[..2]).join(&hex);
        if flat {
            std::fs::create_dir_all(dir.join("etc")).expect("mkdir flat");
        }
        dir
    }

    #[test]
    fn finds_the_flat_tree_of_a_top_chain_id_including_platform_configs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mount = tmp.path();
        let diffs = vec![digest("l0"), digest("l1"), digest("l2")];
        let flat = publish(mount, "127.0.0.1:5000/demo:1", &diffs, true);
        let arm = vec![digest("arm0")];
        let arm_flat = publish(
            mount,
            "127.0.0.1:5000/multi:1/platforms/linux-arm64",
            &arm,
            true,
        );
        let index = FlatIndex::new(mount);
        let top = chain_id(&diffs).expect("chain");
        assert_eq!(index.lookup(&top), Some(flat));
        assert_eq!(
            index.lookup(&chain_id(&arm).expect("chain")),
            Some(arm_flat)
        );
        // A lower ChainID of the same image is not an image of its own.
        let lower = chain_id(&diffs[..2]).expect("chain");
        assert_eq!(index.lookup(&lower), None);
        assert_eq!(index.lookup("not-a-digest"), None);
    }

    #[test]
    fn no_flat_tree_no_answer_and_misses_do_not_rescan_at_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mount = tmp.path();
        let diffs = vec![digest("x")];
        let flat = publish(mount, "r/x:1", &diffs, false);
        let index = FlatIndex::new(mount);
        let top = chain_id(&diffs).expect("chain");
        assert_eq!(index.lookup(&top), None);
        // Published later: not seen before the rescan interval (no scan per miss)…
        std::fs::create_dir_all(&flat).expect("mkdir");
        assert_eq!(index.lookup(&top), None);
        // …but as soon as the interval has passed.
        index
            .state
            .lock()
            .expect("lock")
            .scanned
            .replace(Instant::now() - RESCAN_INTERVAL);
        assert_eq!(index.lookup(&top), Some(flat.clone()));
        // A flat tree that went away is not handed out.
        std::fs::remove_dir_all(&flat).expect("rm");
        index
            .state
            .lock()
            .expect("lock")
            .scanned
            .replace(Instant::now());
        assert_eq!(index.lookup(&top), None);
    }
}
