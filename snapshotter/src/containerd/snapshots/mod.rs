//! The snapshot state machine behind the containerd `Snapshots` service, with containerd
//! semantics (docs/lazy-snapshotters.md §1, containerd `snapshots/snapshotter.go` and
//! `snapshots/overlay/overlay.go`) plus the remote-snapshot handshake (docs/lazy-snapshotters.md §2):
//!
//! * `Prepare` creates an *active* snapshot (`<root>/snapshots/<id>/{fs,work}`) — unless its
//!   labels name a target (`containerd.io/snapshot.ref`) whose layer is published in the
//!   repository mount; then it records a *committed* snapshot named by the target whose
//!   directory is the layer's `layerfs` inside the mount, and answers
//!   [`Prepared::Remote`] (gRPC `AlreadyExists`).
//! * `View` creates a read-only snapshot; `Commit` turns an active snapshot into a committed
//!   one (same directory); only committed snapshots can be parents; keys and names share
//!   one namespace; `Remove` refuses snapshots with children.
//!
//! Everything here is synchronous (SQLite, directory walks, `stat` in the FUSE mount): the
//! gRPC layer calls it from blocking threads.

pub mod filter;
pub mod flat;
pub mod plain;
pub mod remote;
pub mod store;

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use crate::containerd::metrics::Metrics;
use crate::containerd::overlay_mounts::{Layout, Mount, OverlayOptions, snapshot_mounts};
use crate::error::{Error, Result};
use filter::Filter;
use flat::FlatIndex;
use plain::PlainLowers;
use remote::{
    FallbackReason, LABEL_REMOTE, LABEL_SNAPSHOT_REF, RepositoryMount, Resolution,
    inherited_labels, key_chain_id,
};
use store::{Kind, Labels, NewRecord, Record, Store};

/// Largest combined size of one label's key and value, in bytes (containerd
/// `labels.Validate`, docs/lazy-snapshotters.md §1).
pub const MAX_LABEL_SIZE: usize = 4096;

/// Label added to `Stat`/`List` answers (never stored) for a remote snapshot whose layer
/// was unreachable at the last check; the value says why.
pub const LABEL_UNAVAILABLE: &str = "strata.io/unavailable";

/// What a snapshot looks like from outside (`containerd.services.snapshots.v1.Info`).
#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    /// Key (active/view) or name (committed).
    pub name: String,
    /// Parent name; "" for none.
    pub parent: String,
    /// Kind.
    pub kind: Kind,
    /// Labels.
    pub labels: Labels,
    /// Creation time, ns since the Unix epoch.
    pub created_ns: i64,
    /// Last update time, ns since the Unix epoch.
    pub updated_ns: i64,
}

impl From<&Record> for Info {
    fn from(r: &Record) -> Info {
        Info {
            name: r.key.clone(),
            parent: r.parent.clone().unwrap_or_default(),
            kind: r.kind,
            labels: r.labels.clone(),
            created_ns: r.created_ns,
            updated_ns: r.updated_ns,
        }
    }
}

/// Disk usage of a snapshot: bytes allocated (`st_blocks * 512`) and distinct inodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes.
    pub size: i64,
    /// Inodes.
    pub inodes: i64,
}

/// The outcome of [`Snapshotter::prepare`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// An ordinary active snapshot with these mounts.
    Mounts(Vec<Mount>),
    /// The layer is published: a committed snapshot `name` now exists (gRPC `AlreadyExists`).
    Remote {
        /// The committed snapshot's name (the `containerd.io/snapshot.ref` target).
        name: String,
    },
}

/// The snapshotter: metadata store, snapshot directories under `<root>/snapshots`, and the
/// repository mount for remote layers.
pub struct Snapshotter {
    root: PathBuf,
    store: Store,
    repository: RepositoryMount,
    overlay: OverlayOptions,
    metrics: Arc<Metrics>,
    require_remote: bool,
    /// Remote snapshots found unreachable by the last check: key → reason.
    unavailable: BTreeMap<String, String>,
    /// With `--flat-lowerdir`: the flat trees of published images ([`flat`]).
    flat: Option<FlatIndex>,
    /// With `--plain-mountpoint`: lower directories without xattrs from the plain mount
    /// ([`plain`]).
    plain: Option<PlainLowers>,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Checks the containerd label size limit ([`MAX_LABEL_SIZE`]).
pub fn validate_labels(labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(Error::SnapshotInvalid("empty label key".into()));
        }
        if k.len() + v.len() > MAX_LABEL_SIZE {
            return Err(Error::SnapshotInvalid(format!(
                "label {k:?}: key and value exceed {MAX_LABEL_SIZE} bytes"
            )));
        }
    }
    Ok(())
}

/// Measures the disk usage of the tree at `dir` (blocks of every entry, hard links once),
/// as containerd's `fs.DiskUsage`. Blocking.
pub fn disk_usage(dir: &Path) -> Result<Usage> {
    walk_usage(dir, |meta| {
        i64::try_from(meta.blocks() * 512).unwrap_or(i64::MAX)
    })
}

/// Walks the tree at `dir` (symlinks not followed), taking every inode once (hard links
/// once): `inodes` counts them, `size` sums `size_of` over them. Blocking.
fn walk_usage(dir: &Path, size_of: impl Fn(&std::fs::Metadata) -> i64) -> Result<Usage> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(path.display().to_string()))?;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += size_of(&meta);
        }
        if meta.is_dir() {
            let entries =
                std::fs::read_dir(&path).map_err(io_err(format!("read {}", path.display())))?;
            for entry in entries {
                let entry = entry.map_err(io_err(format!("read {}", path.display())))?;
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

/// Where a snapshot's usage comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsageSource {
    /// Recorded at commit (local committed snapshots).
    Known(Usage),
    /// Measure this directory with [`disk_usage`] (active and view snapshots).
    Measure(PathBuf),
    /// A remote layer: measure with [`remote_usage`]; `walked` is the stored walk, if any.
    Remote {
        /// The `layerfs` directory in the mount.
        dir: PathBuf,
        /// The walk recorded earlier.
        walked: Option<Usage>,
    },
}

/// Extended attribute the FUSE client may set on a layer directory: decimal bytes the
/// shared cache holds for that layer's files (preferred over the walk when present).
pub const XATTR_CACHED_BYTES: &str = "user.strata.cached_bytes";

/// Reads [`XATTR_CACHED_BYTES`] of `dir` (following symlinks); `None` if absent or not a
/// number.
fn cached_bytes_xattr(dir: &Path) -> Option<i64> {
    let value = xattr::get_deref(dir, XATTR_CACHED_BYTES).ok()??;
    if value.len() > 32 {
        return None;
    }
    std::str::from_utf8(&value).ok()?.trim().parse().ok()
}

/// Apparent size (sum of regular files' lengths, hard links once) and inode count of the
/// tree at `dir`. Blocking; through the FUSE mount this reads metadata only.
pub fn apparent_usage(dir: &Path) -> Result<Usage> {
    walk_usage(dir, |meta| {
        if meta.is_file() {
            i64::try_from(meta.len()).unwrap_or(i64::MAX)
        } else {
            0
        }
    })
}

/// Usage of a remote layer at `dir`: bytes = [`XATTR_CACHED_BYTES`] when the FUSE client
/// provides it (what the shared cache holds for the layer), else the layer's apparent size
/// — an upper bound of what it can hold in the cache (objects are stored decompressed and
/// shared between layers, so the real figure is lower once files are deduplicated or not
/// yet read); inodes = the layer's entries. `walked` is a walk recorded earlier; the
/// second value is a fresh walk to record. Blocking.
pub fn remote_usage(dir: &Path, walked: Option<Usage>) -> Result<(Usage, Option<Usage>)> {
    let (walk, fresh) = match walked {
        Some(w) => (w, None),
        None => {
            let w = apparent_usage(dir)?;
            (w, Some(w))
        }
    };
    let size = cached_bytes_xattr(dir).unwrap_or(walk.size);
    Ok((
        Usage {
            size,
            inodes: walk.inodes,
        },
        fresh,
    ))
}

impl Snapshotter {
    /// Opens the snapshotter rooted at `root` (creates `root/snapshots` and
    /// `root/metadata.db`) over the repository mounted at `mountpoint`.
    pub fn open(root: &Path, mountpoint: &Path) -> Result<Snapshotter> {
        let snapshots = root.join("snapshots");
        std::fs::create_dir_all(&snapshots)
            .map_err(io_err(format!("create {}", snapshots.display())))?;
        let store = Store::open(&root.join("metadata.db"))?;
        Ok(Snapshotter {
            root: root.to_path_buf(),
            store,
            repository: RepositoryMount::new(mountpoint),
            overlay: OverlayOptions::detect(),
            metrics: Arc::new(Metrics::default()),
            require_remote: false,
            unavailable: BTreeMap::new(),
            flat: None,
            plain: None,
        })
    }

    /// With `true`, an active snapshot whose parents are all remote gets the image's flat
    /// tree (`M/.flat/<hh>/<config hex>`) as its single `lowerdir` when one is published
    /// for its top ChainID ([`flat`]); otherwise, and for views, one `lowerdir` per layer.
    pub fn set_flat_lowerdir(&mut self, enabled: bool) {
        self.flat = enabled.then(|| FlatIndex::new(self.repository.mountpoint()));
    }

    /// With `Some(dir)` (`--plain-mountpoint`): every lower directory inside the
    /// repository mount (`<mountpoint>/<rel>`, a layer's `layerfs` or a flat tree) whose
    /// tree carries no extended attribute is handed to containerd as `<dir>/<rel>`, the
    /// same tree in the mount's xattr-less second session ([`plain`]); `None` = always the
    /// main mount. Applies to overlay lowerdirs and to the bind mount of a one-layer view.
    pub fn set_plain_mountpoint(&mut self, dir: Option<&Path>) {
        self.plain = dir.map(|d| PlainLowers::new(self.repository.mountpoint(), d));
    }

    /// Counts remote/fallback decisions into `metrics`.
    pub fn set_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = metrics;
    }

    /// With `true`, an extraction Prepare that cannot be answered from the repository
    /// fails with `SnapshotPrecondition` (gRPC `FailedPrecondition`) instead of falling
    /// back to a local snapshot (`--require-remote`, docs/lazy-snapshotters.md §8 G).
    pub fn set_require_remote(&mut self, require: bool) {
        self.require_remote = require;
    }

    /// Checks every remote snapshot's layer directory in the mount; remembers (and logs)
    /// the unreachable ones — they are reported, never deleted. Returns them, key →
    /// reason. Blocking: stats inside the FUSE mount.
    pub fn check_remote(&mut self) -> Result<BTreeMap<String, String>> {
        let mut unavailable = BTreeMap::new();
        let mut total = 0;
        for record in self.store.all()? {
            let Some(path) = &record.remote else { continue };
            total += 1;
            match std::fs::metadata(path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    unavailable.insert(
                        record.key.clone(),
                        format!("{} is not a directory", path.display()),
                    );
                }
                Err(e) => {
                    unavailable.insert(record.key.clone(), format!("{}: {e}", path.display()));
                }
            }
        }
        for (key, reason) in &unavailable {
            warn!(key, %reason, "remote snapshot unavailable (kept; it works again once the repository is reachable)");
        }
        info!(
            remote = total,
            unavailable = unavailable.len(),
            "checked remote snapshots"
        );
        self.metrics.set_unavailable(unavailable.len() as u64);
        self.unavailable = unavailable.clone();
        Ok(unavailable)
    }

    /// `Info` of `record` as answered to containerd: stored fields plus
    /// [`LABEL_UNAVAILABLE`] when the last check found its layer unreachable.
    fn info(&self, record: &Record) -> Info {
        let mut info = Info::from(record);
        if let Some(reason) = self.unavailable.get(&record.key) {
            info.labels
                .insert(LABEL_UNAVAILABLE.to_string(), reason.clone());
        }
        info
    }

    /// Forgets a removed snapshot's unavailability.
    fn forget_unavailable(&mut self, key: &str) {
        if self.unavailable.remove(key).is_some() {
            self.metrics.set_unavailable(self.unavailable.len() as u64);
        }
    }

    /// Overrides the kernel-detected overlay options (tests).
    pub fn set_overlay_options(&mut self, options: OverlayOptions) {
        self.overlay = options;
    }

    fn snapshot_dir(&self, id: i64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// The directory that holds a snapshot's files: its `layerfs` in the mount (remote) or
    /// `<root>/snapshots/<id>/fs`.
    fn files_dir(&self, record: &Record) -> PathBuf {
        match &record.remote {
            Some(path) => path.clone(),
            None => self.snapshot_dir(record.id).join("fs"),
        }
    }

    /// Checks that `parent` ("" = none) exists and is committed; returns it.
    fn committed_parent(&self, parent: &str) -> Result<Option<Record>> {
        if parent.is_empty() {
            return Ok(None);
        }
        let record = self.store.require(parent)?;
        if record.kind != Kind::Committed {
            return Err(Error::SnapshotInvalid(format!(
                "parent {parent:?} is not a committed snapshot"
            )));
        }
        Ok(Some(record))
    }

    /// Parent chain of `record`, nearest first.
    fn chain(&self, record: &Record) -> Result<Vec<Record>> {
        let mut chain: Vec<Record> = Vec::new();
        let mut next = record.parent.clone();
        while let Some(name) = next {
            if chain.len() > 4096 || chain.iter().any(|r| r.key == name) {
                return Err(Error::SnapshotPrecondition(format!(
                    "parent chain of {:?} loops or is too deep",
                    record.key
                )));
            }
            let parent = self.store.require(&name)?;
            next = parent.parent.clone();
            chain.push(parent);
        }
        Ok(chain)
    }

    /// The directories of `record`'s parents, nearest first; `SnapshotUnavailable` if a
    /// remote one is not reachable in the repository mount.
    fn lower_dirs(&self, record: &Record) -> Result<Vec<PathBuf>> {
        let chain = self.chain(record)?;
        let mut dirs = Vec::with_capacity(chain.len());
        for parent in &chain {
            let dir = self.files_dir(parent);
            if parent.remote.is_some() && !dir.is_dir() {
                warn!(key = %record.key, path = %dir.display(), "remote layer unavailable");
                return Err(Error::SnapshotUnavailable {
                    key: record.key.clone(),
                    path: dir.display().to_string(),
                });
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    fn mounts_of(&self, record: &Record) -> Result<Vec<Mount>> {
        let dir = self.snapshot_dir(record.id);
        let layout = match record.kind {
            Kind::Active => Layout::Active {
                upper: dir.join("fs"),
                work: dir.join("work"),
            },
            Kind::View => Layout::View { fs: dir.join("fs") },
            Kind::Committed => {
                return Err(Error::SnapshotPrecondition(format!(
                    "snapshot {:?} is committed: it has no mounts",
                    record.key
                )));
            }
        };
        let mut lowers = match self.flat_lower(record)? {
            Some(flat) => vec![flat],
            None => self.lower_dirs(record)?,
        };
        if let Some(plain) = &self.plain {
            for dir in &mut lowers {
                *dir = plain.lower(dir);
            }
        }
        Ok(snapshot_mounts(&layout, &lowers, self.overlay))
    }

    /// The flat tree to use as the only lower directory of `record`: with
    /// [`Snapshotter::set_flat_lowerdir`], for an active snapshot with at least two
    /// parents, all remote, whose top parent's ChainID (its `containerd.io/snapshot.ref`)
    /// has a published flat tree. `None` = one lower directory per layer.
    fn flat_lower(&self, record: &Record) -> Result<Option<PathBuf>> {
        let Some(index) = &self.flat else {
            return Ok(None);
        };
        if record.kind != Kind::Active {
            return Ok(None);
        }
        let chain = self.chain(record)?;
        if chain.len() < 2 || chain.iter().any(|p| p.remote.is_none()) {
            return Ok(None);
        }
        let Some(top) = chain[0].labels.get(LABEL_SNAPSHOT_REF) else {
            return Ok(None);
        };
        let flat = index.lookup(top);
        if let Some(dir) = &flat {
            tracing::debug!(key = %record.key, chain = %top, flat = %dir.display(), "flat lowerdir");
        }
        Ok(flat)
    }

    /// containerd `Prepare(key, parent, labels)` (module doc). An *extraction* Prepare (label
    /// `containerd.io/snapshot.ref`, or a key `extract-… sha256:<ChainID>`) is first tried
    /// against the repository ([`remote`]); each one logs one line and counts one
    /// remote or fallback ([`Metrics`]). Errors: `SnapshotExists` (key taken),
    /// `SnapshotNotFound` (parent), `SnapshotInvalid` (parent not committed, labels too
    /// big), `SnapshotPrecondition` (fallback under `--require-remote`),
    /// `SnapshotUnavailable` (a remote parent layer is unreachable).
    pub fn prepare(&mut self, key: &str, parent: &str, labels: &Labels) -> Result<Prepared> {
        validate_labels(labels)?;
        let target = labels
            .get(LABEL_SNAPSHOT_REF)
            .cloned()
            .or_else(|| key_chain_id(key).map(|c| c.to_string()));
        if let Some(target) = target {
            match self.try_remote(key, &target, parent, labels)? {
                Ok(prepared) => return Ok(prepared),
                Err((reason, detail)) => {
                    self.metrics.layer_fallback(reason);
                    if self.require_remote {
                        warn!(key, target, reason = reason.as_str(), %detail, "fallback refused (--require-remote)");
                        return Err(Error::SnapshotPrecondition(format!(
                            "layer {target} is not available remotely ({}: {detail}) and \
                             --require-remote is set",
                            reason.as_str()
                        )));
                    }
                    info!(key, target, reason = reason.as_str(), %detail, "fallback to local snapshot");
                }
            }
        }
        self.create(Kind::Active, key, parent, labels)
            .map(Prepared::Mounts)
    }

    /// The remote path of Prepare: `Ok(Ok(_))` = answered from the repository (logged and
    /// counted here), `Ok(Err((reason, detail)))` = fall back.
    #[allow(clippy::type_complexity)]
    fn try_remote(
        &mut self,
        key: &str,
        target: &str,
        parent: &str,
        labels: &Labels,
    ) -> Result<std::result::Result<Prepared, (FallbackReason, String)>> {
        let parent_record = self.committed_parent(parent)?;
        let has_label = labels.contains_key(LABEL_SNAPSHOT_REF);
        if has_label && let Some(existing) = self.store.get(target)? {
            if existing.kind == Kind::Committed
                && existing.parent.as_deref().unwrap_or("") == parent
            {
                info!(
                    key,
                    target, "remote: target already committed, answering AlreadyExists"
                );
                self.metrics.layer_remote("existing");
                return Ok(Ok(Prepared::Remote {
                    name: target.to_string(),
                }));
            }
            return Ok(Err((
                FallbackReason::TargetConflict,
                format!(
                    "target {target:?} exists as a {} snapshot with parent {:?}",
                    existing.kind.as_str(),
                    existing.parent.as_deref().unwrap_or("")
                ),
            )));
        }
        if let Some(p) = &parent_record {
            let dir = self.files_dir(p);
            if !dir.is_dir() {
                return Ok(Err((
                    FallbackReason::ParentUnavailable,
                    format!(
                        "parent {parent:?} directory {} is unavailable",
                        dir.display()
                    ),
                )));
            }
        }
        match self.repository.resolve(key, labels) {
            Resolution::Found { path, via } => {
                let mut committed = inherited_labels(labels);
                committed.insert(LABEL_SNAPSHOT_REF.to_string(), target.to_string());
                committed.insert(LABEL_REMOTE.to_string(), "true".to_string());
                self.store.insert(&NewRecord {
                    key: target,
                    parent: parent_record.as_ref().map(|p| p.key.as_str()),
                    kind: Kind::Committed,
                    labels: &committed,
                    remote: Some(&path),
                })?;
                self.metrics.layer_remote(via);
                info!(key, target, via, path = %path.display(), "remote: layer published, committed from the repository");
                if let Some(image_ref) = labels.get(crate::pull::LABEL_IMAGE_REF) {
                    self.repository.prefetch_startup(image_ref);
                }
                Ok(Ok(Prepared::Remote {
                    name: target.to_string(),
                }))
            }
            Resolution::Missing { reason, detail } => Ok(Err((reason, detail))),
        }
    }

    /// containerd `View(key, parent, labels)`: a read-only snapshot. Errors as
    /// [`Snapshotter::prepare`].
    pub fn view(&mut self, key: &str, parent: &str, labels: &Labels) -> Result<Vec<Mount>> {
        validate_labels(labels)?;
        self.create(Kind::View, key, parent, labels)
    }

    fn create(
        &mut self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: &Labels,
    ) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::SnapshotInvalid("empty snapshot key".into()));
        }
        let parent_record = self.committed_parent(parent)?;
        if self.store.get(key)?.is_some() {
            return Err(Error::SnapshotExists(key.to_string()));
        }
        if let Some(p) = &parent_record {
            // Refuse before creating anything if a remote layer below is unreachable.
            let dir = self.files_dir(p);
            if p.remote.is_some() && !dir.is_dir() {
                return Err(Error::SnapshotUnavailable {
                    key: key.to_string(),
                    path: dir.display().to_string(),
                });
            }
            self.lower_dirs(p)?;
        }
        let record = self.store.insert(&NewRecord {
            key,
            parent: parent_record.as_ref().map(|p| p.key.as_str()),
            kind,
            labels,
            remote: None,
        })?;
        if let Err(e) = self.make_dirs(&record, parent_record.as_ref()) {
            let _ = std::fs::remove_dir_all(self.snapshot_dir(record.id));
            let _ = self.store.delete(key);
            return Err(e);
        }
        self.mounts_of(&record)
    }

    /// `<id>/fs` (owned like the nearest parent's directory, as containerd does) and, for
    /// active snapshots, `<id>/work`.
    fn make_dirs(&self, record: &Record, parent: Option<&Record>) -> Result<()> {
        let dir = self.snapshot_dir(record.id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(io_err(format!("remove stale {}", dir.display())))?;
        }
        let fs = dir.join("fs");
        std::fs::create_dir_all(&fs).map_err(io_err(format!("create {}", fs.display())))?;
        if record.kind == Kind::Active {
            let work = dir.join("work");
            std::fs::create_dir(&work).map_err(io_err(format!("create {}", work.display())))?;
        }
        if let Some(p) = parent {
            let pdir = self.files_dir(p);
            let meta = std::fs::metadata(&pdir)
                .map_err(io_err(format!("stat parent {}", pdir.display())))?;
            std::os::unix::fs::lchown(&fs, Some(meta.uid()), Some(meta.gid()))
                .map_err(io_err(format!("chown {}", fs.display())))?;
        }
        Ok(())
    }

    /// containerd `Mounts(key)` of an active or view snapshot. `SnapshotNotFound`, or
    /// `SnapshotPrecondition` for a committed one.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let record = self.store.require(key)?;
        self.mounts_of(&record)
    }

    /// containerd `Commit(name, key, labels[, parent])`: the active snapshot `key` becomes
    /// the committed snapshot `name` with exactly `labels` (containerd's storage replaces
    /// labels on commit, it does not inherit them), keeping its directory; its usage is
    /// measured now and its creation time reset (as `storage.CommitActive`).
    ///
    /// `parent` is the `CommitSnapshotRequest.parent` field of containerd ≥ 2.2 ("rebase",
    /// used by parallel unpack): "" keeps the snapshot's parent; the same name is a no-op;
    /// for a snapshot prepared without parent it must name a committed snapshot, which
    /// becomes the parent (the upper directory is an overlay diff, so it stacks on any
    /// parent); changing an existing parent is `SnapshotInvalid`.
    ///
    /// Errors: `SnapshotNotFound` (key or parent), `SnapshotExists` (name taken),
    /// `SnapshotPrecondition` (not active), `SnapshotInvalid` (labels, parent).
    pub fn commit(&mut self, name: &str, key: &str, labels: &Labels, parent: &str) -> Result<()> {
        validate_labels(labels)?;
        let record = self.store.require(key)?;
        if record.kind != Kind::Active {
            return Err(Error::SnapshotPrecondition(format!(
                "snapshot {key:?} is {}, only active snapshots can be committed",
                record.kind.as_str()
            )));
        }
        if self.store.get(name)?.is_some() {
            return Err(Error::SnapshotExists(name.to_string()));
        }
        let rebase = match (parent, record.parent.as_deref()) {
            ("", _) => None,
            (p, Some(current)) if p == current => None,
            (p, Some(current)) => {
                return Err(Error::SnapshotInvalid(format!(
                    "cannot commit {key:?} onto parent {p:?}: it was prepared on {current:?}"
                )));
            }
            (p, None) => {
                if p == key || p == name {
                    return Err(Error::SnapshotInvalid(format!(
                        "snapshot {key:?} cannot be its own parent"
                    )));
                }
                self.committed_parent(p)?;
                Some(p)
            }
        };
        let usage = disk_usage(&self.files_dir(&record))?;
        self.store
            .commit(key, name, labels, usage.size, usage.inodes, rebase)?;
        // The work dir is not needed by a committed snapshot.
        let _ = std::fs::remove_dir_all(self.snapshot_dir(record.id).join("work"));
        Ok(())
    }

    /// containerd `Remove(key)`: forgets the snapshot and deletes its directory (never the
    /// remote layer). `SnapshotNotFound`, or `SnapshotPrecondition` if it has children.
    pub fn remove(&mut self, key: &str) -> Result<()> {
        if let Some(trash) = self.remove_detached(key)? {
            delete_trash(key, &trash);
        }
        Ok(())
    }

    /// containerd `Remove(key)` without the slow part: the record is deleted and the
    /// snapshot's directory renamed to `<root>/snapshots/rm-<id>` (ids are never reused),
    /// whose path is returned for the caller to delete with [`delete_trash`] once it no
    /// longer holds the snapshotter, so that a garbage collection deleting a large upper
    /// directory does not stall the next container's Prepare. A trash directory left by a
    /// crash is deleted by `Cleanup`. Errors as [`Snapshotter::remove`].
    pub fn remove_detached(&mut self, key: &str) -> Result<Option<PathBuf>> {
        let record = self.store.require(key)?;
        let children = self.store.children(&record.key)?;
        if children > 0 {
            return Err(Error::SnapshotPrecondition(format!(
                "snapshot {key:?} has {children} children"
            )));
        }
        self.store.delete(key)?;
        self.forget_unavailable(key);
        let dir = self.snapshot_dir(record.id);
        if !dir.exists() {
            return Ok(None);
        }
        let trash = self
            .root
            .join("snapshots")
            .join(format!("rm-{}", record.id));
        std::fs::rename(&dir, &trash).map_err(io_err(format!("rename {}", dir.display())))?;
        Ok(Some(trash))
    }

    /// containerd `Stat(key)`.
    pub fn stat(&self, key: &str) -> Result<Info> {
        Ok(self.info(&self.store.require(key)?))
    }

    /// containerd `Update(info, fieldpaths)`: only labels are mutable. With no paths all
    /// labels are replaced; `labels` replaces all; `labels.<k>` sets (or, when absent or
    /// empty in `info`, deletes) one label. Other paths are `SnapshotInvalid`.
    pub fn update(&mut self, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        let record = self.store.require(&info.name)?;
        let mut labels = record.labels.clone();
        if fieldpaths.is_empty() {
            labels = info.labels.clone();
        }
        for path in fieldpaths {
            if path == "labels" {
                labels = info.labels.clone();
            } else if let Some(k) = path.strip_prefix("labels.") {
                match info.labels.get(k) {
                    Some(v) if !v.is_empty() => {
                        labels.insert(k.to_string(), v.clone());
                    }
                    _ => {
                        labels.remove(k);
                    }
                }
            } else {
                return Err(Error::SnapshotInvalid(format!(
                    "cannot update field {path:?} of snapshot {:?}",
                    info.name
                )));
            }
        }
        validate_labels(&labels)?;
        let updated = self.store.set_labels(&info.name, &labels)?;
        Ok(self.info(&updated))
    }

    /// containerd `List`/`Walk` with filters ([`filter`]).
    pub fn list(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filter = Filter::parse(filters)?;
        Ok(self
            .store
            .all()?
            .iter()
            .filter(|r| filter.matches(r))
            .map(|r| self.info(r))
            .collect())
    }

    /// Where [`Snapshotter::usage`] gets its answer; lets callers measure without holding
    /// the snapshotter (see [`UsageSource`]).
    pub fn usage_source(&self, key: &str) -> Result<UsageSource> {
        let record = self.store.require(key)?;
        Ok(match (record.kind, &record.remote) {
            (_, Some(dir)) => UsageSource::Remote {
                dir: dir.clone(),
                walked: (record.size > 0 || record.inodes > 0).then_some(Usage {
                    size: record.size,
                    inodes: record.inodes,
                }),
            },
            (Kind::Committed, None) => UsageSource::Known(Usage {
                size: record.size,
                inodes: record.inodes,
            }),
            _ => UsageSource::Measure(self.files_dir(&record)),
        })
    }

    /// Remembers the walked size of remote snapshot `key` (a layer never changes).
    pub fn store_remote_walk(&mut self, key: &str, walked: Usage) -> Result<()> {
        self.store.set_usage(key, walked.size, walked.inodes)
    }

    /// containerd `Usage(key)`: measured for active/view snapshots (allocated blocks and
    /// inodes, as containerd's `fs.DiskUsage`), recorded at commit for committed local
    /// ones, and for remote ones [`remote_usage`]. Blocking.
    pub fn usage(&mut self, key: &str) -> Result<Usage> {
        match self.usage_source(key)? {
            UsageSource::Known(usage) => Ok(usage),
            UsageSource::Measure(dir) => disk_usage(&dir),
            UsageSource::Remote { dir, walked } => {
                let (usage, fresh) = remote_usage(&dir, walked)?;
                if let Some(w) = fresh {
                    self.store_remote_walk(key, w)?;
                }
                Ok(usage)
            }
        }
    }

    /// containerd `Cleanup`: deletes directories under `<root>/snapshots` that belong to no
    /// snapshot. Returns what was deleted.
    pub fn cleanup(&mut self) -> Result<Vec<PathBuf>> {
        let ids: HashSet<String> = self.store.all()?.iter().map(|r| r.id.to_string()).collect();
        let dir = self.root.join("snapshots");
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(format!("read {}", dir.display())))? {
            let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if ids.contains(&name) {
                continue;
            }
            let path = entry.path();
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {}
                // A trash directory that a Remove is deleting at the same time.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("remove {}", path.display()))(e)),
            }
            info!(path = %path.display(), "cleanup: removed orphan snapshot directory");
            removed.push(path);
        }
        Ok(removed)
    }
}

/// Deletes the directory `trash` of the removed snapshot `key` (from
/// [`Snapshotter::remove_detached`]); a failure is logged, and `Cleanup` retries. Blocking.
pub fn delete_trash(key: &str, trash: &Path) {
    if let Err(e) = std::fs::remove_dir_all(trash)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(
            key,
            "cannot delete {} (Cleanup will retry): {e}",
            trash.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest `sha256:<hex>`.
    fn hex_digest(hex: &str) -> namespace::Digest {
        format!("sha256:{hex}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    const LAYER1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const LAYER2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const CHAIN2: &str = "c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2";

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        mount: PathBuf,
        sn: Snapshotter,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let mount = dir.path().join("mnt");
        for hex in [LAYER1, LAYER2] {
            let layer = RepositoryMount::new(&mount).layer_path(&hex_digest(hex));
            std::fs::create_dir_all(layer.join("etc")).expect("mkdir");
            std::fs::write(layer.join("etc/hostname"), hex).expect("write");
        }
        let link = RepositoryMount::new(&mount).chainid_path(&hex_digest(CHAIN2));
        std::fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(namespace::paths::chainid_target(&hex_digest(LAYER2)), &link)
            .expect("symlink");
        let mut sn = Snapshotter::open(&root, &mount).expect("open");
        sn.set_overlay_options(OverlayOptions { index_off: false });
        Fixture {
            _dir: dir,
            root,
            mount,
            sn,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn extract_labels(chain: &str, layer: Option<&str>) -> Labels {
        let mut l = labels(&[(LABEL_SNAPSHOT_REF, chain)]);
        if let Some(layer) = layer {
            l.insert(remote::LABEL_LAYER_DIGEST.into(), format!("sha256:{layer}"));
        }
        l
    }

    fn mounts(p: Prepared) -> Vec<Mount> {
        match p {
            Prepared::Mounts(m) => m,
            other => panic!("expected mounts, got {other:?}"),
        }
    }

    #[test]
    fn prepare_commit_view_remove_lifecycle() -> Result<()> {
        let mut f = fixture();
        let m = mounts(f.sn.prepare("k1", "", &Labels::new())?);
        let dir1 = f.root.join("snapshots/1");
        assert_eq!(m[0].kind, "bind");
        assert_eq!(m[0].source, dir1.join("fs").display().to_string());
        assert_eq!(m[0].options, vec!["rw", "rbind"]);
        assert!(dir1.join("work").is_dir());
        std::fs::write(dir1.join("fs/file"), vec![7u8; 10000]).expect("write");

        assert!(matches!(
            f.sn.prepare("k1", "", &Labels::new()),
            Err(Error::SnapshotExists(_))
        ));
        assert!(matches!(
            f.sn.prepare("k2", "k1", &Labels::new()),
            Err(Error::SnapshotInvalid(_))
        ));
        assert!(matches!(
            f.sn.prepare("k2", "nope", &Labels::new()),
            Err(Error::SnapshotNotFound(_))
        ));

        f.sn.commit("base", "k1", &labels(&[("x", "y")]), "")?;
        assert!(matches!(f.sn.stat("k1"), Err(Error::SnapshotNotFound(_))));
        let info = f.sn.stat("base")?;
        assert_eq!(info.kind, Kind::Committed);
        assert_eq!(info.labels, labels(&[("x", "y")]));
        let usage = f.sn.usage("base")?;
        assert_eq!(usage.inodes, 2);
        assert!(usage.size >= 10000, "{usage:?}");
        assert!(matches!(
            f.sn.mounts("base"),
            Err(Error::SnapshotPrecondition(_))
        ));

        let m = mounts(f.sn.prepare("k2", "base", &Labels::new())?);
        let dir2 = f.root.join("snapshots/2");
        assert_eq!(m[0].kind, "overlay");
        assert_eq!(
            m[0].options,
            vec![
                format!("workdir={}", dir2.join("work").display()),
                format!("upperdir={}", dir2.join("fs").display()),
                format!("lowerdir={}", dir1.join("fs").display()),
            ]
        );
        assert_eq!(f.sn.mounts("k2")?, m);
        let v = f.sn.view("v1", "base", &Labels::new())?;
        assert_eq!(v[0].kind, "bind");
        assert_eq!(v[0].source, dir1.join("fs").display().to_string());
        assert_eq!(v[0].options, vec!["ro", "rbind"]);
        assert!(matches!(
            f.sn.commit("c", "v1", &Labels::new(), ""),
            Err(Error::SnapshotPrecondition(_))
        ));

        assert!(matches!(
            f.sn.remove("base"),
            Err(Error::SnapshotPrecondition(_))
        ));
        f.sn.remove("k2")?;
        f.sn.remove("v1")?;
        assert!(!dir2.exists());
        f.sn.remove("base")?;
        assert!(!dir1.exists());
        assert!(f.sn.list(&[])?.is_empty());
        Ok(())
    }

    #[test]
    fn remove_detached_leaves_the_directory_as_trash_for_the_caller() -> Result<()> {
        let mut f = fixture();
        f.sn.prepare("k", "", &Labels::new())?;
        let dir = f.root.join("snapshots/1");
        std::fs::write(dir.join("fs/file"), b"upper data").map_err(io_err("write test file"))?;
        let trash = f.sn.remove_detached("k")?.expect("k has a directory");
        assert_eq!(trash, f.root.join("snapshots/rm-1"));
        assert!(!dir.exists());
        assert!(trash.join("fs/file").is_file());
        assert!(matches!(f.sn.stat("k"), Err(Error::SnapshotNotFound(_))));
        // A new snapshot never takes the removed id, so its trash cannot collide.
        f.sn.prepare("k", "", &Labels::new())?;
        assert!(f.root.join("snapshots/2").is_dir());
        // Cleanup racing the caller's deletion: whoever comes second finds nothing.
        assert_eq!(f.sn.cleanup()?, vec![trash.clone()]);
        delete_trash("k", &trash);
        assert!(f.sn.cleanup()?.is_empty());
        assert!(f.root.join("snapshots/2").is_dir());
        Ok(())
    }

    #[test]
    fn remote_prepare_commits_target_and_answers_already_exists() -> Result<()> {
        let mut f = fixture();
        let chain1 = format!("sha256:{}", "a1".repeat(32));
        let p = f.sn.prepare(
            "default/1/extract-1 c1",
            "",
            &extract_labels(&chain1, Some(LAYER1)),
        )?;
        assert_eq!(
            p,
            Prepared::Remote {
                name: chain1.clone()
            }
        );
        // The key was never created; the target is committed with the remote label.
        assert!(f.sn.stat("default/1/extract-1 c1").is_err());
        let info = f.sn.stat(&chain1)?;
        assert_eq!(info.kind, Kind::Committed);
        assert_eq!(info.parent, "");
        assert_eq!(
            info.labels.get(LABEL_REMOTE).map(String::as_str),
            Some("true")
        );
        assert_eq!(info.labels.get(LABEL_SNAPSHOT_REF), Some(&chain1));
        // Remote usage: the layer's apparent size (one 64-byte file) and its entries
        // (layerfs, etc, etc/hostname), recorded after the first walk.
        assert_eq!(
            f.sn.usage(&chain1)?,
            Usage {
                size: 64,
                inodes: 3
            }
        );
        assert_eq!(
            f.sn.usage_source(&chain1)?,
            UsageSource::Remote {
                dir: RepositoryMount::new(&f.mount).layer_path(&hex_digest(LAYER1)),
                walked: Some(Usage {
                    size: 64,
                    inodes: 3
                })
            }
        );

        // Second layer found through the ChainID symlink only.
        let chain2 = format!("sha256:{CHAIN2}");
        let p =
            f.sn.prepare("extract-2", &chain1, &extract_labels(&chain2, None))?;
        assert_eq!(
            p,
            Prepared::Remote {
                name: chain2.clone()
            }
        );
        assert_eq!(f.sn.stat(&chain2)?.parent, chain1);

        // The handshake filter containerd sends finds it.
        let filter = format!(r#"labels."{LABEL_SNAPSHOT_REF}"=="{chain2}",parent=="{chain1}""#);
        let found = f.sn.list(&[filter])?;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, chain2);

        // A repeated Prepare of the same target answers AlreadyExists again.
        let p =
            f.sn.prepare("extract-3", &chain1, &extract_labels(&chain2, None))?;
        assert_eq!(
            p,
            Prepared::Remote {
                name: chain2.clone()
            }
        );

        // A container snapshot on top: overlay over both layerfs dirs, nearest first.
        let m = mounts(f.sn.prepare("ctr", &chain2, &Labels::new())?);
        let l2 = RepositoryMount::new(&f.mount)
            .layer_path(&hex_digest(LAYER2))
            .canonicalize()
            .expect("canon");
        let l1 = RepositoryMount::new(&f.mount).layer_path(&hex_digest(LAYER1));
        let lower = m[0].options.last().cloned().unwrap_or_default();
        assert_eq!(lower, format!("lowerdir={}:{}", l2.display(), l1.display()));
        let v = f.sn.view("ro", &chain2, &Labels::new())?;
        assert_eq!(
            v[0].options,
            vec![format!("lowerdir={}:{}", l2.display(), l1.display())]
        );

        // Removing a remote snapshot leaves the layer alone.
        f.sn.remove("ctr")?;
        f.sn.remove("ro")?;
        f.sn.remove(&chain2)?;
        assert!(l2.join("etc/hostname").is_file());
        Ok(())
    }

    #[test]
    fn flat_lowerdir_replaces_an_all_remote_chain_with_the_flat_tree() -> Result<()> {
        let mut f = fixture();
        let (d1, d2) = (
            format!("sha256:{}", "d1".repeat(32)),
            format!("sha256:{}", "d2".repeat(32)),
        );
        let chain1 = d1.clone();
        let chain2 = namespace::top_chain_id(&[hex_digest(&d1[7..]), hex_digest(&d2[7..])])
            .expect("chain")
            .to_string();
        f.sn.prepare("x1", "", &extract_labels(&chain1, Some(LAYER1)))?;
        f.sn.prepare("x2", &chain1, &extract_labels(&chain2, Some(LAYER2)))?;
        // The image's config and flat tree, as the publisher lays them out.
        let config =
            serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [d1, d2]}}).to_string();
        let meta = f.mount.join(".metadata/127.0.0.1:5000/demo:1");
        std::fs::create_dir_all(&meta).expect("mkdir");
        std::fs::write(meta.join("config.json"), &config).expect("write");
        let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(config.as_bytes()));
        let flat_dir = f.mount.join(".flat").join(&hex[..2]).join(&hex);
        std::fs::create_dir_all(&flat_dir).expect("mkdir");

        let per_layer = |f: &mut Fixture, key: &str| -> Result<String> {
            let m = mounts(f.sn.prepare(key, &chain2, &Labels::new())?);
            Ok(m[0].options.last().cloned().unwrap_or_default())
        };
        // Off (the default): one lowerdir per layer.
        let lower = per_layer(&mut f, "c0")?;
        assert_eq!(lower.matches(':').count(), 1, "{lower}");
        // On: the flat tree alone, for active snapshots; views keep the layers.
        f.sn.set_flat_lowerdir(true);
        assert_eq!(
            per_layer(&mut f, "c1")?,
            format!("lowerdir={}", flat_dir.display())
        );
        assert_eq!(
            f.sn.mounts("c0")?[0].options.last(),
            Some(&format!("lowerdir={}", flat_dir.display()))
        );
        let v = f.sn.view("v", &chain2, &Labels::new())?;
        assert_eq!(v[0].options[0].matches(':').count(), 1, "{v:?}");
        // One parent: nothing to gain, the layer itself.
        let m = mounts(f.sn.prepare("c2", &chain1, &Labels::new())?);
        assert_eq!(
            m[0].options.last(),
            Some(&format!(
                "lowerdir={}",
                RepositoryMount::new(&f.mount)
                    .layer_path(&hex_digest(LAYER1))
                    .display()
            ))
        );
        // A local layer in the chain: per layer.
        f.sn.prepare("local-active", &chain2, &Labels::new())?;
        f.sn.commit("local", "local-active", &Labels::new(), "")?;
        let lower = per_layer_of(&mut f, "c3", "local")?;
        assert_eq!(lower.matches(':').count(), 2, "{lower}");
        Ok(())
    }

    #[test]
    fn plain_mountpoint_serves_layers_without_xattrs_from_the_plain_mount() -> Result<()> {
        let mut f = fixture();
        let repo = RepositoryMount::new(&f.mount);
        let mount = f.mount.clone();
        let plain_root = f.mount.with_file_name("plain");
        let plain_layer = |hex: &str| {
            plain_root.join(
                repo.layer_path(&hex_digest(hex))
                    .strip_prefix(&mount)
                    .expect("in mount"),
            )
        };
        for hex in [LAYER1, LAYER2] {
            std::fs::create_dir_all(plain_layer(hex)).expect("mkdir plain");
        }
        // LAYER1 carries no xattrs, LAYER2 two (an opaque dir and a file capability, say).
        let counters = |hex: &str, n: u32| {
            format!(
                "catalog_hash: abcdef\ncatalog_mountpoint: /.layers/{}/{hex}/layerfs\n\
                 self_dir,2\nself_regular,1\nself_xattr,{n}\nsubtree_xattr,0\n",
                &hex[..2]
            )
        };
        xattr::set(
            repo.layer_path(&hex_digest(LAYER1)),
            crate::catalog_counters::CATALOG_COUNTERS_XATTR,
            counters(LAYER1, 0).as_bytes(),
        )
        .expect("setxattr");
        xattr::set(
            repo.layer_path(&hex_digest(LAYER2)),
            crate::catalog_counters::CATALOG_COUNTERS_XATTR,
            counters(LAYER2, 2).as_bytes(),
        )
        .expect("setxattr");
        f.sn.set_plain_mountpoint(Some(&plain_root));

        let chain1 = format!("sha256:{}", "a1".repeat(32));
        let chain2 = format!("sha256:{}", "a2".repeat(32));
        f.sn.prepare("x1", "", &extract_labels(&chain1, Some(LAYER1)))?;
        f.sn.prepare("x2", &chain1, &extract_labels(&chain2, Some(LAYER2)))?;
        // Active snapshot: nearest parent first, LAYER2 from the main mount, LAYER1 plain.
        let m = mounts(f.sn.prepare("ctr", &chain2, &Labels::new())?);
        assert_eq!(m[0].kind, "overlay");
        assert_eq!(
            m[0].options.last(),
            Some(&format!(
                "lowerdir={}:{}",
                repo.layer_path(&hex_digest(LAYER2)).display(),
                plain_layer(LAYER1).display()
            ))
        );
        assert_eq!(f.sn.mounts("ctr")?, m);
        // A one-layer view binds the plain layer; a two-layer view mixes as above.
        let v = f.sn.view("v1", &chain1, &Labels::new())?;
        assert_eq!(
            (v[0].kind.as_str(), v[0].source.clone()),
            ("bind", plain_layer(LAYER1).display().to_string())
        );
        let v = f.sn.view("v2", &chain2, &Labels::new())?;
        assert_eq!(
            v[0].options,
            vec![format!(
                "lowerdir={}:{}",
                repo.layer_path(&hex_digest(LAYER2)).display(),
                plain_layer(LAYER1).display()
            )]
        );
        // Local layers are never in the plain mount.
        f.sn.prepare("local-active", &chain2, &Labels::new())?;
        f.sn.commit("local", "local-active", &Labels::new(), "")?;
        let local = f.sn.files_dir(&f.sn.store.require("local")?);
        let lower = per_layer_of(&mut f, "c3", "local")?;
        assert_eq!(
            lower,
            format!(
                "lowerdir={}:{}:{}",
                local.display(),
                repo.layer_path(&hex_digest(LAYER2)).display(),
                plain_layer(LAYER1).display()
            )
        );
        // Off again: the main mount only.
        f.sn.set_plain_mountpoint(None);
        assert_eq!(
            f.sn.mounts("ctr")?[0].options.last(),
            Some(&format!(
                "lowerdir={}:{}",
                repo.layer_path(&hex_digest(LAYER2)).display(),
                repo.layer_path(&hex_digest(LAYER1)).display()
            ))
        );
        Ok(())
    }

    fn per_layer_of(f: &mut Fixture, key: &str, parent: &str) -> Result<String> {
        let m = mounts(f.sn.prepare(key, parent, &Labels::new())?);
        Ok(m[0].options.last().cloned().unwrap_or_default())
    }

    #[test]
    fn unreachable_remote_layer_is_unavailable() -> Result<()> {
        let mut f = fixture();
        let chain = format!("sha256:{}", "a1".repeat(32));
        f.sn.prepare("x", "", &extract_labels(&chain, Some(LAYER1)))?;
        f.sn.prepare("ctr", &chain, &Labels::new())?;
        // The mount goes away (FUSE process died, layer collected, ...).
        std::fs::rename(&f.mount, f.mount.with_extension("gone")).expect("rename");
        assert!(matches!(
            f.sn.mounts("ctr"),
            Err(Error::SnapshotUnavailable { .. })
        ));
        assert!(matches!(
            f.sn.prepare("ctr2", &chain, &Labels::new()),
            Err(Error::SnapshotUnavailable { .. })
        ));
        assert!(f.sn.stat("ctr2").is_err(), "nothing half-created");
        Ok(())
    }

    #[test]
    fn unpublished_layer_falls_back_to_local_active_snapshot() -> Result<()> {
        let mut f = fixture();
        let chain = format!("sha256:{}", "dd".repeat(32));
        let missing = "ee".repeat(32);
        let p =
            f.sn.prepare("extract-x", "", &extract_labels(&chain, Some(&missing)))?;
        let m = mounts(p);
        assert_eq!(m[0].kind, "bind");
        let info = f.sn.stat("extract-x")?;
        assert_eq!(info.kind, Kind::Active);
        assert!(!info.labels.contains_key(LABEL_REMOTE));
        assert!(f.sn.stat(&chain).is_err());
        // containerd then commits it under the chain id as usual.
        f.sn.commit(&chain, "extract-x", &extract_labels(&chain, None), "")?;
        assert_eq!(f.sn.stat(&chain)?.kind, Kind::Committed);
        Ok(())
    }

    #[test]
    fn list_filters_by_kind_name_and_parent() -> Result<()> {
        let mut f = fixture();
        f.sn.prepare("a", "", &Labels::new())?;
        f.sn.commit("A", "a", &Labels::new(), "")?;
        f.sn.prepare("b", "A", &labels(&[("team", "x")]))?;
        f.sn.view("c", "A", &Labels::new())?;
        let names = |v: Vec<Info>| v.into_iter().map(|i| i.name).collect::<Vec<_>>();
        assert_eq!(names(f.sn.list(&[])?), vec!["A", "b", "c"]);
        assert_eq!(names(f.sn.list(&["kind==view".into()])?), vec!["c"]);
        assert_eq!(
            names(f.sn.list(&["parent==A,labels.team==x".into()])?),
            vec!["b"]
        );
        assert_eq!(
            names(f.sn.list(&["name==A".into(), "name==c".into()])?),
            vec!["A", "c"]
        );
        assert!(matches!(
            f.sn.list(&["name=A".into()]),
            Err(Error::SnapshotInvalid(_))
        ));
        Ok(())
    }

    #[test]
    fn update_labels_with_field_paths() -> Result<()> {
        let mut f = fixture();
        f.sn.prepare("a", "", &labels(&[("k1", "v1"), ("k2", "v2")]))?;
        let mut info = f.sn.stat("a")?;
        info.labels = labels(&[("k1", "new"), ("k3", "v3")]);
        let out =
            f.sn.update(&info, &["labels.k1".into(), "labels.k2".into()])?;
        assert_eq!(out.labels, labels(&[("k1", "new")]));
        let out = f.sn.update(&info, &[])?;
        assert_eq!(out.labels, labels(&[("k1", "new"), ("k3", "v3")]));
        assert!(matches!(
            f.sn.update(&info, &["parent".into()]),
            Err(Error::SnapshotInvalid(_))
        ));
        let big = labels(&[("k", &"x".repeat(MAX_LABEL_SIZE))]);
        assert!(matches!(
            f.sn.prepare("b", "", &big),
            Err(Error::SnapshotInvalid(_))
        ));
        Ok(())
    }

    #[test]
    fn metadata_survives_reopen_and_cleanup_removes_orphans() -> Result<()> {
        let mut f = fixture();
        f.sn.prepare("a", "", &Labels::new())?;
        let orphan = f.root.join("snapshots/99");
        std::fs::create_dir_all(orphan.join("fs")).expect("mkdir");
        drop(f.sn);
        let mut sn = Snapshotter::open(&f.root, &f.mount)?;
        assert_eq!(sn.stat("a")?.kind, Kind::Active);
        let removed = sn.cleanup()?;
        assert_eq!(removed, vec![orphan.clone()]);
        assert!(!orphan.exists());
        assert!(f.root.join("snapshots/1/fs").is_dir());
        Ok(())
    }

    #[test]
    fn commit_with_parent_rebases_a_parentless_snapshot() -> Result<()> {
        let mut f = fixture();
        f.sn.prepare("a", "", &Labels::new())?;
        f.sn.commit("A", "a", &Labels::new(), "")?;
        // Parallel unpack (containerd >= 2.2): prepared without parent, committed onto A.
        f.sn.prepare("b", "", &Labels::new())?;
        let before = f.sn.stat("b")?.created_ns;
        f.sn.commit("B", "b", &labels(&[("l", "1")]), "A")?;
        let b = f.sn.stat("B")?;
        assert_eq!(b.parent, "A");
        assert!(b.created_ns >= before);
        assert!(matches!(
            f.sn.remove("A"),
            Err(Error::SnapshotPrecondition(_))
        ));
        // The same parent is fine, another one is not, an unknown one is NotFound.
        f.sn.prepare("c", "A", &Labels::new())?;
        assert!(matches!(
            f.sn.commit("C", "c", &Labels::new(), "B"),
            Err(Error::SnapshotInvalid(_))
        ));
        f.sn.commit("C", "c", &Labels::new(), "A")?;
        f.sn.prepare("d", "", &Labels::new())?;
        assert!(matches!(
            f.sn.commit("D", "d", &Labels::new(), "nope"),
            Err(Error::SnapshotNotFound(_))
        ));
        // Still active after the failed commit.
        assert_eq!(f.sn.stat("d")?.kind, Kind::Active);
        Ok(())
    }

    #[test]
    fn fallbacks_are_counted_by_reason_and_refused_under_require_remote() -> Result<()> {
        let mut f = fixture();
        let metrics = Arc::new(Metrics::default());
        f.sn.set_metrics(Arc::clone(&metrics));
        // A ChainID only in the key (ctr 1.6 Unpack): published, but never taken remote.
        let key = format!("default/4/extract-1-x sha256:{CHAIN2}");
        let m = mounts(f.sn.prepare(&key, "", &Labels::new())?);
        assert_eq!(m[0].kind, "bind");
        assert_eq!(metrics.fallback_count(FallbackReason::NoLabels), 1);
        // Not published.
        let chain = format!("sha256:{}", "dd".repeat(32));
        f.sn.prepare("x1", "", &extract_labels(&chain, Some(&"ee".repeat(32))))?;
        assert_eq!(metrics.fallback_count(FallbackReason::NotPublished), 1);
        // Remote.
        let chain1 = format!("sha256:{}", "a1".repeat(32));
        f.sn.prepare("x2", "", &extract_labels(&chain1, Some(LAYER1)))?;
        assert_eq!(metrics.remote_count("cri.layer-digest"), 1);
        f.sn.prepare("x3", "", &extract_labels(&chain1, Some(LAYER1)))?;
        assert_eq!(metrics.remote_count("existing"), 1);
        // Container snapshots are not extractions: never counted, never refused.
        f.sn.set_require_remote(true);
        f.sn.prepare("container", &chain1, &Labels::new())?;
        let chain3 = format!("sha256:{}", "d3".repeat(32));
        assert!(matches!(
            f.sn.prepare("x4", "", &extract_labels(&chain3, Some(&"ee".repeat(32)))),
            Err(Error::SnapshotPrecondition(m)) if m.contains("not_published")
        ));
        assert!(f.sn.stat("x4").is_err(), "nothing created");
        // The repository goes away: unreachable.
        std::fs::rename(&f.mount, f.mount.with_extension("gone")).expect("rename");
        f.sn.set_require_remote(false);
        f.sn.prepare("x5", "", &extract_labels(&chain3, Some(LAYER2)))?;
        assert_eq!(metrics.fallback_count(FallbackReason::Unreachable), 1);
        Ok(())
    }

    #[test]
    fn unreachable_remote_snapshots_are_reported_never_deleted() -> Result<()> {
        let mut f = fixture();
        let chain = format!("sha256:{}", "a1".repeat(32));
        f.sn.prepare("x", "", &extract_labels(&chain, Some(LAYER1)))?;
        assert!(f.sn.check_remote()?.is_empty());
        let moved = f.mount.with_extension("gone");
        std::fs::rename(&f.mount, &moved).expect("rename");
        drop(f.sn);
        let mut sn = Snapshotter::open(&f.root, &f.mount)?;
        let bad = sn.check_remote()?;
        assert_eq!(bad.keys().collect::<Vec<_>>(), vec![&chain]);
        let info = sn.stat(&chain)?;
        assert!(info.labels.contains_key(LABEL_UNAVAILABLE), "{info:?}");
        assert!(info.labels.contains_key(LABEL_REMOTE));
        assert_eq!(sn.list(&[])?.len(), 1);
        assert!(matches!(
            sn.prepare("ctr", &chain, &Labels::new()),
            Err(Error::SnapshotUnavailable { .. })
        ));
        // Back again: everything works, the label goes at the next check.
        std::fs::rename(&moved, &f.mount).expect("rename back");
        sn.prepare("ctr", &chain, &Labels::new())?;
        assert!(sn.check_remote()?.is_empty());
        assert!(!sn.stat(&chain)?.labels.contains_key(LABEL_UNAVAILABLE));
        Ok(())
    }
}
