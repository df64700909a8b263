//! One image layer: tar stream → rows staged in a scratch database ([`crate::staging`]),
//! with every regular file compressed into the object store on the way; then the rows in
//! directory order for the layer's catalog ([`StagedLayer::emit`]).
//!
//! Whiteouts are stored the way overlayfs reads them (docs/namespace.md §6, CONTRACTS.md §3):
//! `.wh.NAME` becomes a character device 0:0 named `NAME`, `.wh..wh..opq` becomes the xattr
//! `trusted.overlay.opaque="y"` on its directory; no `.wh.*` name is ever stored. Hard links
//! inside one directory become a CVMFS hard-link group (docs/format.md §6.8); across directories they
//! become separate entries sharing one content object. A later entry for a path replaces the
//! earlier one, as when unpacking.

use std::io::Read;
use std::path::Path;

use catalog::{Entry, EntryKind};
use tar::EntryType;

use crate::decompress::{BlobDigests, LayerStream};
use crate::error::{Error, Result};
use crate::flatten::{Image, Sink, inherit, normalize_hardlinks};
use crate::pipeline::{FileSink, PendingContent, Pool};
use crate::sparse::{self, Expanded, MapLocation, SparseHeader, SparseRecords};
use crate::staging::{StagedEntry, Staging, join};
use crate::tree::{
    DIR_SIZE, OPAQUE_XATTR, dir_entry, file_entry_without_content, special_entry, symlink_entry,
    whiteout_entry,
};

/// Prefix of whiteout names (OCI image spec, "Whiteouts").
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// PAX key prefix of extended attributes.
const PAX_XATTR: &str = "SCHILY.xattr.";
/// Largest xattr key or value the catalog format can hold (docs/format.md §6.9).
const XATTR_MAX: usize = 255;

/// What identifies a layer in error messages and checks.
#[derive(Clone, Debug)]
pub struct LayerId {
    /// The image the layer belongs to (for messages).
    pub image: String,
    /// Layer digest `sha256:<hex>` of the compressed blob.
    pub digest: String,
    /// Expected diffID `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// Media type from the manifest.
    pub media_type: String,
}

impl LayerId {
    fn error(&self, entry: &str, reason: impl Into<String>) -> Error {
        Error::Layer {
            image: self.image.clone(),
            layer: self.digest.clone(),
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }
}

/// Default `--max-layer-size`: 64 GiB of uncompressed tar per layer.
pub const DEFAULT_MAX_LAYER_SIZE: u64 = 64 << 30;

/// Limits that stop hostile layers (decompression bombs, absurd headers).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest uncompressed tar stream of one layer, and largest total of file contents
    /// (sparse files count at their full size), in bytes.
    pub max_layer_size: u64,
    /// Bytes of file contents held in memory at once, across every layer converted at the
    /// same time (`--memory-budget`; see [`crate::pipeline::Budget`]); `None` =
    /// [`crate::pipeline::default_budget`].
    pub memory_budget: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layer_size: DEFAULT_MAX_LAYER_SIZE,
            memory_budget: None,
        }
    }
}

/// A reader that fails once more than `limit` bytes came through it.
struct CappedReader<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "uncompressed layer is larger than the limit of {} bytes (--max-layer-size)",
                self.limit
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A layer read into its scratch database (metadata only; contents are in the store). The
/// database is removed when this is dropped.
pub struct StagedLayer {
    /// Holds `layer.db` (in the repository's `DIR/tmp` in `ingest`).
    dir: tempfile::TempDir,
    /// The layer root's row: `0755 root:root`, the mtime of `./` (0 if the tar has none).
    pub root: Entry,
    /// Whether the tar had a `./` entry (otherwise the root is implied, see
    /// [`StagedLayer::emit`]).
    pub root_explicit: bool,
    /// Digests and sizes that were verified.
    pub digests: BlobDigests,
    /// Number of regular files stored.
    pub files: u64,
    /// Whether the layer implies directories (the root or another directory without a tar
    /// entry of its own), which [`StagedLayer::emit`] fills from the layers below.
    pub may_imply: bool,
}

impl std::fmt::Debug for StagedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedLayer")
            .field("dir", &self.dir.path())
            .field("files", &self.files)
            .field("digests", &self.digests)
            .finish_non_exhaustive()
    }
}

/// Name of the staging database in a [`StagedLayer`]'s directory.
const STAGING_FILE: &str = "layer.db";

impl StagedLayer {
    /// Sends the layer's rows to `out` in directory order (each directory before its
    /// contents, `""` = the root), as its catalog holds them: pending contents resolved,
    /// hard-link groups normalised and directory link counts set (docs/format.md §6.7, §6.8).
    /// Directories the layer only implies (no tar entry of their own; `umoci repack`
    /// writes such layers) take the metadata the same directory has in `lower`, the image
    /// below this layer ([`crate::flatten::inherit`]); without `lower`, or where `lower`
    /// has no such directory, they stay `0755 root:root` mtime 0. Memory: one directory
    /// listing per level. Returns the root row as sent.
    ///
    /// Errors: [`Error::Sqlite`], [`Error::Task`] for a job without a result.
    pub fn emit(&self, lower: Option<&Image<'_>>, out: &mut Sink<'_>) -> Result<Entry> {
        let staging = Staging::open(&self.dir.path().join(STAGING_FILE))?;
        let mut root = self.root.clone();
        root.name = String::new();
        self.walk(&staging, "", root, self.root_explicit, lower, out)
    }

    fn walk(
        &self,
        staging: &Staging,
        rel: &str,
        mut entry: Entry,
        explicit: bool,
        lower: Option<&Image<'_>>,
        out: &mut Sink<'_>,
    ) -> Result<Entry> {
        let mut rows = staging
            .list(rel)?
            .into_iter()
            .map(|r| Ok((staging.resolve(r.staged)?, r.explicit)))
            .collect::<Result<Vec<(Entry, bool)>>>()?;
        normalize_hardlinks(rows.iter_mut().map(|(e, _)| e));
        let subdirs = rows
            .iter()
            .filter(|(e, _)| e.kind == EntryKind::Directory)
            .count();
        if !explicit && let Some(below) = lower.map(|l| l.resolve_dir(rel)).transpose()?.flatten() {
            inherit(&mut entry, &below);
        }
        entry.linkcount = 2 + subdirs as u32;
        entry.size = DIR_SIZE;
        out(rel, &entry)?;
        for (e, explicit) in rows {
            let path = join(rel, &e.name);
            if e.kind == EntryKind::Directory {
                self.walk(staging, &path, e, explicit, lower, out)?;
            } else {
                out(&path, &e)?;
            }
        }
        Ok(entry)
    }
}

/// Reads the compressed layer `blob`, verifies its digest and diffID, stores every regular
/// file in `store` and stages the layer's rows in a new scratch database in `scratch` (the
/// repository's `DIR/tmp` in `ingest`). Runs on a blocking thread. Memory does not grow
/// with the number of entries: rows, and the object hashes of finished files, go to the
/// database as they come.
///
/// Errors: [`Error::DigestMismatch`] if the blob or tar digests differ from `id`,
/// [`Error::Layer`] for hostile or unsupported entries (path escaping the root, dangling or
/// directory hard link, malformed sparse maps), store errors,
/// [`Error::Sqlite`] / [`Error::Io`] for the scratch database.
pub fn read_layer<R: Read>(
    blob: R,
    id: &LayerId,
    pool: &Pool,
    limits: &Limits,
    scratch: &Path,
) -> Result<StagedLayer> {
    let dir = tempfile::Builder::new()
        .prefix("layer-")
        .tempdir_in(scratch)
        .map_err(|e| {
            Error::io(
                format!("creating a staging dir in {}", scratch.display()),
                e,
            )
        })?;
    let mut sink = FileSink::new(pool);
    let stream = LayerStream::new(blob, &id.media_type).map_err(|e| id.error("", e.to_string()))?;
    let mut archive = tar::Archive::new(CappedReader {
        inner: stream,
        left: limits.max_layer_size,
        limit: limits.max_layer_size,
    });
    let mut builder = Builder {
        staging: Staging::create(&dir.path().join(STAGING_FILE))?,
        root: dir_entry("", 0o755, 0, 0, 0),
        root_explicit: false,
        next_group: 1,
        files: 0,
        content_bytes: 0,
        limits: limits.clone(),
        last_entry: String::new(),
        known_dirs: Vec::new(),
        implied: false,
    };
    let entries = archive
        .entries()
        .map_err(|e| id.error("", format!("reading tar: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| {
            let after = if builder.last_entry.is_empty() {
                "at the first entry".to_string()
            } else {
                format!("after entry {:?}", builder.last_entry)
            };
            id.error("", format!("reading tar {after}: {e}"))
        })?;
        builder.add(entry, id, &mut sink)?;
        for (job, hash) in sink.take_ready() {
            builder.staging.put_job(job, &hash)?;
        }
    }
    let digests = archive
        .into_inner()
        .inner
        .finish()
        .map_err(|e| id.error("", format!("reading blob: {e}")))?;
    if digests.compressed != id.digest {
        return Err(Error::DigestMismatch {
            image: id.image.clone(),
            what: format!("layer {} (compressed blob)", id.digest),
            expected: id.digest.clone(),
            actual: digests.compressed,
        });
    }
    if digests.uncompressed != id.diff_id {
        return Err(Error::DigestMismatch {
            image: id.image.clone(),
            what: format!("layer {} (uncompressed tar = diffID)", id.digest),
            expected: id.diff_id.clone(),
            actual: digests.uncompressed,
        });
    }
    for (job, hash) in sink.finish_all().map_err(|e| id.error("", e.to_string()))? {
        builder.staging.put_job(job, &hash)?;
    }
    builder.staging.commit()?;
    Ok(StagedLayer {
        dir,
        root: builder.root,
        root_explicit: builder.root_explicit,
        digests,
        files: builder.files,
        may_imply: builder.implied || !builder.root_explicit,
    })
}

/// Normalises a tar path: strips leading `/` and `./`, drops `.` and empty components,
/// resolves `..`. Returns `None` if the path escapes the root.
pub fn normalize_path(raw: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c.to_string()),
        }
    }
    Some(out)
}

struct Builder {
    staging: Staging,
    /// The root row (kept here: `./` has no parent row).
    root: Entry,
    root_explicit: bool,
    next_group: u32,
    files: u64,
    /// Sum of regular file sizes so far (bounded by `limits.max_layer_size`).
    content_bytes: u64,
    limits: Limits,
    /// The last entry path seen, for errors between entries.
    last_entry: String,
    /// Components of the deepest directory known to be staged as a directory with every
    /// parent a directory too: a cache of the parent checks, since tar entries mostly come
    /// in directory order (one path, not a set: memory stays O(depth)).
    known_dirs: Vec<String>,
    /// Whether an implicit directory was staged.
    implied: bool,
}

/// The tar entry being added, as named in error messages.
struct At<'a> {
    layer: &'a LayerId,
    /// The entry's path as found in the archive.
    path: &'a str,
}

impl At<'_> {
    fn error(&self, reason: impl Into<String>) -> Error {
        self.layer.error(self.path, reason)
    }
}

/// Metadata common to all entry kinds, read from the header and PAX records.
struct Meta {
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_ns: Option<u32>,
    xattrs: std::collections::BTreeMap<String, Vec<u8>>,
    /// A GNU sparse file's real name, size and map, from its PAX records.
    sparse: Option<SparseHeader>,
}

impl Builder {
    /// Makes every component of `parent` a staged directory, as unpacking does: a missing
    /// one becomes an implicit directory `0755 root:root` mtime 0, a file or other
    /// non-directory in the way is replaced by one. Never writes through a symlink: a
    /// parent that is a symlink earlier in this layer would let the entry land outside the
    /// directory it names, so that is an error.
    fn ensure_parent(&mut self, parent: &[String], at: &At<'_>) -> Result<()> {
        let common = self
            .known_dirs
            .iter()
            .zip(parent)
            .take_while(|(a, b)| a == b)
            .count();
        self.known_dirs.truncate(common);
        let mut missing = false;
        for k in common..parent.len() {
            let dir = parent[..k].join("/");
            let name = &parent[k];
            if !missing {
                match self.staging.get(&dir, name)? {
                    Some(r) if r.staged.entry().kind == EntryKind::Directory => {
                        self.known_dirs.push(name.clone());
                        continue;
                    }
                    Some(r) if r.staged.entry().kind == EntryKind::Symlink => {
                        return Err(at.error(format!(
                            "parent {:?} is a symlink in this layer; refusing to write through it",
                            parent[..=k].join("/")
                        )));
                    }
                    // A file or whiteout of this layer deleted the lower one: the
                    // directory made in its place is a new one.
                    Some(_) => {
                        let mut e = dir_entry(name, 0o755, 0, 0, 0);
                        e.xattrs.insert(OPAQUE_XATTR.to_string(), b"y".to_vec());
                        self.staging.put(&dir, &StagedEntry::new(e), false)?;
                        self.implied = true;
                        self.known_dirs.push(name.clone());
                        continue;
                    }
                    None => missing = true,
                }
            }
            let e = dir_entry(name, 0o755, 0, 0, 0);
            self.staging.put(&dir, &StagedEntry::new(e), false)?;
            self.implied = true;
            self.known_dirs.push(name.clone());
        }
        Ok(())
    }

    /// Stages the non-directory `staged` at `parent/<name>`, replacing whatever was there
    /// (a directory with its contents).
    fn put_leaf(&mut self, parent: &[String], staged: &StagedEntry) -> Result<()> {
        let dir = parent.join("/");
        let entry = staged.entry();
        if let Some(r) = self.staging.get(&dir, &entry.name)? {
            if r.staged.entry().kind == EntryKind::Directory {
                self.staging.remove_below(&join(&dir, &entry.name))?;
            }
            // The cached directory chain may run through what is replaced now.
            let depth = parent.len();
            if self.known_dirs.len() > depth
                && self.known_dirs[..depth] == *parent
                && self.known_dirs[depth] == entry.name
            {
                self.known_dirs.truncate(depth);
            }
        }
        self.staging.put(&dir, staged, false)
    }

    /// Stages one tar entry: skips extension headers, normalises the path, reads the
    /// metadata, makes the parent directories, then hands the entry to the function for its
    /// kind. Whiteouts and opaque markers are recognised by name whatever their tar type.
    fn add<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        id: &LayerId,
        sink: &mut FileSink<'_>,
    ) -> Result<()> {
        // Names need not be UTF-8: bytes that are not stay bytes (catalog::names).
        let raw_path = catalog::names::from_bytes(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        self.last_entry.clone_from(&raw_path);
        let at = At {
            layer: id,
            path: &raw_path,
        };
        if matches!(kind, EntryType::GNUSparse | EntryType::Continuous) {
            // containerd's unpacker handles regular files of type '0' (and NUL) only: an
            // old-GNU sparse file ('S', `tar --format=gnu --sparse`) or a contiguous file
            // ('7') fails its unpack ("unhandled tar header type"), so no runtime would run
            // this layer.
            return Err(at.error(format!(
                "tar entry type {kind:?} ({:?}): containerd refuses it too (\"unhandled tar \
                 header type\"); GNU tar writes sparse files containerd accepts with \
                 --format=posix",
                char::from(kind.as_byte())
            )));
        }
        let meta = self.meta(&mut entry, &at)?;
        if meta.sparse.is_some() && kind != EntryType::Regular {
            return Err(at.error(format!(
                "GNU sparse records on a {kind:?} entry (only regular files can be sparse)"
            )));
        }
        // A sparse file's real name replaces GNU tar's `GNUSparseFile.<pid>/` placeholder.
        let real_path = match meta.sparse.as_ref().and_then(|s| s.name.clone()) {
            Some(name) if kind == EntryType::Regular => {
                self.last_entry.clone_from(&name);
                name
            }
            _ => raw_path.clone(),
        };
        let at = At {
            layer: id,
            path: &real_path,
        };
        let path =
            normalize_path(&real_path).ok_or_else(|| at.error("path escapes the layer root"))?;
        let Some((name, parent)) = path.split_last() else {
            return self.add_root(kind, meta, &at);
        };
        self.ensure_parent(parent, &at)?;
        // Whiteouts (OCI image spec): never stored under their own names.
        if name == OPAQUE_MARKER {
            return self.add_opaque_marker(parent);
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            return self.add_whiteout(parent, hidden, &meta, &at);
        }
        match kind {
            EntryType::Directory => self.add_dir(parent, name, meta),
            EntryType::Regular => self.add_file(parent, name, meta, &mut entry, &at, sink),
            EntryType::Symlink => self.add_symlink(parent, name, meta, &entry, &at),
            EntryType::Link => self.add_hardlink(&path, &entry, &at),
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.add_special(parent, name, meta, &entry)
            }
            other => Err(at.error(format!("unsupported tar entry type {other:?}"))),
        }
    }

    /// `./` itself: only its mtime is kept (in the builder: the root has no parent row).
    /// containerd's unpack skips an entry that resolves to the root ("resolved to root"), so
    /// a snapshot's root is always as the snapshotter made it, `0755 root:root` (an upper
    /// snapshot copies its parent's owner, root's): mode, owner and xattrs of `./` are not
    /// applied, only an opaque marker `./.wh..wh..opq` is. The mtime (containerd's is the
    /// time of the unpack) is the entry's, so that the tree stays reproducible.
    fn add_root(&mut self, kind: EntryType, meta: Meta, at: &At<'_>) -> Result<()> {
        if kind != EntryType::Directory {
            return Err(at.error("non-directory entry at the layer root"));
        }
        let mut e = dir_entry("", 0o755, 0, 0, meta.mtime);
        // An opaque marker may come before `./` itself.
        if let Some(v) = self.root.xattrs.get(OPAQUE_XATTR) {
            e.xattrs.insert(OPAQUE_XATTR.to_string(), v.clone());
        }
        self.root = e;
        self.root_explicit = true;
        Ok(())
    }

    /// `.wh..wh..opq` in `parent`: marks that directory opaque (the root's mark is kept in
    /// the builder). A marker whose directory is not staged is dropped.
    fn add_opaque_marker(&mut self, parent: &[String]) -> Result<()> {
        let y = b"y".to_vec();
        match parent.split_last() {
            None => {
                self.root.xattrs.insert(OPAQUE_XATTR.to_string(), y);
            }
            Some((dname, dparent)) => {
                let dparent = dparent.join("/");
                if let Some(mut r) = self.staging.get(&dparent, dname)? {
                    r.staged
                        .entry_mut()
                        .xattrs
                        .insert(OPAQUE_XATTR.to_string(), y);
                    self.staging.put(&dparent, &r.staged, r.explicit)?;
                }
            }
        }
        Ok(())
    }

    /// `.wh.NAME` in `parent`: the overlayfs whiteout of `hidden`, replacing whatever this
    /// layer staged there.
    fn add_whiteout(
        &mut self,
        parent: &[String],
        hidden: &str,
        meta: &Meta,
        at: &At<'_>,
    ) -> Result<()> {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(at.error("invalid whiteout name"));
        }
        // Owned as its entry says, as containerd's overlay conversion chowns the device.
        let mut whiteout = whiteout_entry(hidden, meta.mtime);
        (whiteout.uid, whiteout.gid) = (meta.uid, meta.gid);
        self.put_leaf(parent, &StagedEntry::new(whiteout))
    }

    /// A directory entry. An existing directory keeps its contents (and opaque mark) and
    /// takes the new metadata; anything else there is replaced, and as that file or
    /// whiteout of this layer deleted the lower directory (umoci unpack applies entries in
    /// order), the new one is opaque.
    fn add_dir(&mut self, parent: &[String], name: &str, meta: Meta) -> Result<()> {
        let parent_path = parent.join("/");
        let mut e = dir_entry(name, meta.perm, meta.uid, meta.gid, meta.mtime);
        e.xattrs = meta.xattrs;
        e.mtime_ns = meta.mtime_ns;
        match self.staging.get(&parent_path, name)? {
            Some(existing) if existing.staged.entry().kind == EntryKind::Directory => {
                if let Some(v) = existing.staged.entry().xattrs.get(OPAQUE_XATTR) {
                    e.xattrs.insert(OPAQUE_XATTR.to_string(), v.clone());
                }
            }
            Some(_) => {
                e.xattrs.insert(OPAQUE_XATTR.to_string(), b"y".to_vec());
            }
            None => {}
        }
        self.staging.put(&parent_path, &StagedEntry::new(e), true)
    }

    /// A regular file (also sparse and contiguous): its contents go to the pool, within
    /// `--max-layer-size`. A PAX sparse file is expanded to its real size, holes as zeros
    /// ([`crate::sparse`]); old-GNU sparse entries are expanded by the `tar` crate.
    fn add_file<R: Read>(
        &mut self,
        parent: &[String],
        name: &str,
        meta: Meta,
        entry: &mut tar::Entry<'_, R>,
        at: &At<'_>,
        sink: &mut FileSink<'_>,
    ) -> Result<()> {
        let sparse = meta.sparse.clone();
        let stored = entry.size();
        let size = sparse.as_ref().and_then(|h| h.size).unwrap_or(stored);
        self.content_bytes = self.content_bytes.saturating_add(size);
        if size > self.limits.max_layer_size || self.content_bytes > self.limits.max_layer_size {
            return Err(at.error(format!(
                "file size {size} (layer total {}) exceeds the limit of {} bytes \
                 (--max-layer-size)",
                self.content_bytes, self.limits.max_layer_size
            )));
        }
        let content = match sparse {
            None => sink.store_file(entry, size, at.path),
            Some(header) => {
                let (segments, map_bytes) = match header.map {
                    MapLocation::Records(segments) => (segments, 0),
                    MapLocation::Data => sparse::read_map_1x0(entry).map_err(|e| at.error(e))?,
                };
                sparse::check(&segments, size, stored.saturating_sub(map_bytes))
                    .map_err(|e| at.error(e))?;
                sink.store_file(&mut Expanded::new(entry, segments, size), size, at.path)
            }
        }
        .map_err(|e| at.error(e.to_string()))?;
        self.files += 1;
        let e = file_entry_without_content(name, meta.perm, meta.uid, meta.gid, meta.mtime, size);
        self.put_leaf_with(parent, e, meta, Some(content))
    }

    /// A symbolic link (its target is kept as written, relative or absolute).
    fn add_symlink<R: Read>(
        &mut self,
        parent: &[String],
        name: &str,
        meta: Meta,
        entry: &tar::Entry<'_, R>,
        at: &At<'_>,
    ) -> Result<()> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| at.error("symlink without target"))?;
        let target = catalog::names::from_bytes(&target).into_owned();
        let e = symlink_entry(name, &target, meta.uid, meta.gid, meta.mtime);
        self.put_leaf_with(parent, e, meta, None)
    }

    /// A character or block device, or a FIFO.
    fn add_special<R: Read>(
        &mut self,
        parent: &[String],
        name: &str,
        meta: Meta,
        entry: &tar::Entry<'_, R>,
    ) -> Result<()> {
        let header = entry.header();
        let mut e = match header.entry_type() {
            EntryType::Fifo => special_entry(name, EntryKind::Fifo, meta.perm, 0),
            kind => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let ek = if kind == EntryType::Char {
                    EntryKind::CharDevice
                } else {
                    EntryKind::BlockDevice
                };
                special_entry(name, ek, meta.perm, libc::makedev(major, minor))
            }
        };
        e.uid = meta.uid;
        e.gid = meta.gid;
        e.mtime = meta.mtime;
        self.put_leaf_with(parent, e, meta, None)
    }

    /// A hard link at `path` to an earlier non-directory entry of this layer: a copy of
    /// the target's row (its content included), in the target's hard-link group when both
    /// are in one directory (docs/format.md §6.8), else a separate entry sharing the content. The
    /// copy is made now, so it survives a later replacement or whiteout of the target.
    fn add_hardlink<R: Read>(
        &mut self,
        path: &[String],
        entry: &tar::Entry<'_, R>,
        at: &At<'_>,
    ) -> Result<()> {
        let raw_target = entry
            .link_name_bytes()
            .ok_or_else(|| at.error("hard link without target"))?;
        let raw_target = catalog::names::from_bytes(&raw_target).into_owned();
        let target = normalize_path(&raw_target)
            .ok_or_else(|| at.error(format!("hard link target {raw_target:?} escapes the root")))?;
        let Some((name, parent)) = path.split_last() else {
            return Err(at.error("hard link at the layer root"));
        };
        let dangling = || {
            at.error(format!(
                "hard link target {raw_target:?} does not exist earlier in the layer"
            ))
        };
        let (tname, tparent) = target.split_last().ok_or_else(dangling)?;
        let tparent = tparent.join("/");
        let mut t = self
            .staging
            .get(&tparent, tname)?
            .filter(|r| r.staged.entry().kind != EntryKind::Directory)
            .ok_or_else(dangling)?;
        if target == path {
            return Ok(());
        }
        let same_dir = target.len() == path.len() && target[..target.len() - 1] == *parent;
        let mut link = t.staged.clone();
        if same_dir {
            let group = &mut t.staged.entry_mut().hardlink_group;
            if *group == 0 {
                *group = self.next_group;
                self.next_group += 1;
                self.staging.put(&tparent, &t.staged, t.explicit)?;
            }
            link.entry_mut().hardlink_group = t.staged.entry().hardlink_group;
        } else {
            link.entry_mut().hardlink_group = 0;
        }
        link.entry_mut().name = name.clone();
        self.put_leaf(parent, &link)
    }

    /// [`Builder::put_leaf`] of `e` with the xattrs and mtime nanoseconds of `meta`, and the
    /// content being stored by the jobs of `pending` for a regular file.
    fn put_leaf_with(
        &mut self,
        parent: &[String],
        mut e: Entry,
        meta: Meta,
        pending: Option<PendingContent>,
    ) -> Result<()> {
        e.xattrs = meta.xattrs;
        e.mtime_ns = meta.mtime_ns;
        let staged = match pending {
            Some(content) => StagedEntry::pending(e, content),
            None => StagedEntry::new(e),
        };
        self.put_leaf(parent, &staged)
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, at: &At<'_>) -> Result<Meta> {
        let h = entry.header();
        let perm = h.mode().map_err(|e| at.error(format!("bad mode: {e}")))? & 0o7777;
        let uid = h.uid().map_err(|e| at.error(format!("bad uid: {e}")))?;
        let gid = h.gid().map_err(|e| at.error(format!("bad gid: {e}")))?;
        let mut uid = uid;
        let mut gid = gid;
        let mut mtime = header_mtime(h).map_err(|e| at.error(format!("bad mtime: {e}")))?;
        let mut mtime_ns = None;
        let mut xattrs = std::collections::BTreeMap::new();
        let mut sparse = SparseRecords::default();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| at.error(format!("bad PAX header: {e}")))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| at.error(format!("bad PAX record: {e}")))?;
                let Ok(key) = ext.key() else {
                    tracing::warn!(
                        image = %at.layer.image, layer = %at.layer.digest, entry = at.path,
                        "dropping a PAX record whose key is not UTF-8: {:?}",
                        String::from_utf8_lossy(ext.key_bytes())
                    );
                    continue;
                };
                if key == sparse::NAME_KEY {
                    // A name, which need not be UTF-8 (catalog::names).
                    sparse.take(key, &catalog::names::from_bytes(ext.value_bytes()));
                } else if key.starts_with(sparse::PAX_PREFIX) {
                    let value = ext
                        .value()
                        .map_err(|_| at.error(format!("PAX record {key} is not UTF-8")))?;
                    sparse.take(key, value);
                } else if key == "mtime" {
                    let (secs, ns) = ext
                        .value()
                        .ok()
                        .and_then(parse_pax_time)
                        .ok_or_else(|| at.error("bad PAX mtime"))?;
                    mtime = secs;
                    mtime_ns = (ns != 0).then_some(ns);
                } else if key == "uid" || key == "gid" {
                    let v = ext
                        .value()
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| at.error(format!("bad PAX {key}")))?;
                    if key == "uid" {
                        uid = v;
                    } else {
                        gid = v;
                    }
                } else if let Some(name) = key.strip_prefix(PAX_XATTR) {
                    let value = ext.value_bytes();
                    if name.is_empty() || name.len() > XATTR_MAX || value.len() > XATTR_MAX {
                        tracing::warn!(
                            image = %at.layer.image, layer = %at.layer.digest, entry = at.path,
                            "dropping xattr {name:?}: longer than 255 bytes (docs/format.md §6.9)"
                        );
                        continue;
                    }
                    xattrs.insert(name.to_string(), value.to_vec());
                }
            }
        }
        let (mtime, mtime_ns) = bound_time(mtime, mtime_ns);
        Ok(Meta {
            perm,
            uid: u32::try_from(uid).map_err(|_| at.error("uid out of range"))?,
            gid: u32::try_from(gid).map_err(|_| at.error("gid out of range"))?,
            mtime,
            mtime_ns,
            xattrs,
            sparse: sparse.header().map_err(|e| at.error(e))?,
        })
    }
}

/// The latest time containerd's unpack represents: Go's `time.Unix(0, 0).Add(1<<63 - 1)`,
/// 2262-04-11T23:47:16.854775807Z, as (seconds, nanoseconds).
const LATEST_TIME: (i64, u32) = (9_223_372_036, 854_775_807);

/// An entry's mtime as containerd's unpack sets it (`archive.boundTime`): a time before
/// 1970 or after [`LATEST_TIME`] becomes the epoch, anything else stays. A layer must read
/// the same under Strata as under containerd's own snapshotters (docs/format.md §6.9).
fn bound_time(secs: i64, ns: Option<u32>) -> (i64, Option<u32>) {
    if secs < 0 || (secs, ns.unwrap_or(0)) > LATEST_TIME {
        (0, None)
    } else {
        (secs, ns)
    }
}

/// The header's mtime as signed seconds: octal, or GNU base-256 (first byte `0x80`
/// positive, `0xff` negative two's complement) for times before 1970 or after 2242.
fn header_mtime(h: &tar::Header) -> std::io::Result<i64> {
    let raw = &h.as_old().mtime;
    if raw[0] == 0xff {
        let mut v: i64 = -1;
        for b in &raw[1..] {
            v = (v << 8) | i64::from(*b);
        }
        return Ok(v);
    }
    h.mtime()
        .and_then(|m| i64::try_from(m).map_err(|_| std::io::Error::other("mtime out of range")))
}

/// Parses a PAX time `[-]SECS[.FRACTION]` (POSIX pax "mtime") into whole seconds (rounded
/// towards minus infinity) and nanoseconds.
pub fn parse_pax_time(v: &str) -> Option<(i64, u32)> {
    let (neg, digits) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    let secs: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut ns: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        ns += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if neg {
        if ns == 0 {
            Some((-secs, 0))
        } else {
            Some((-secs - 1, 1_000_000_000 - ns))
        }
    } else {
        Some((secs, ns))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::digest::sha256_digest;
    use crate::flatten::is_opaque;
    use crate::tree::{Node, S_IFCHR, is_whiteout};
    use catalog::{LocalStore, Suffix};

    /// What the tests look at: a staged layer's rows as [`StagedLayer::emit`] sends them
    /// (no lower image), collected into a tree, and the directories it only implies.
    #[derive(Debug)]
    pub struct LayerTree {
        pub root: Node,
        pub files: u64,
        pub implicit_dirs: Vec<Vec<String>>,
    }

    /// [`super::read_layer`] with a scratch directory, read back.
    fn read_layer<R: Read>(
        blob: R,
        id: &LayerId,
        pool: &Pool,
        limits: &Limits,
    ) -> Result<LayerTree> {
        let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let staged = super::read_layer(blob, id, pool, limits, scratch.path())?;
        let mut root = Node::dir("", 0o755, 0);
        staged.emit(None, &mut |path: &str, e: &Entry| {
            if path.is_empty() {
                root.entry = e.clone();
            } else {
                let c = crate::tree::components(path);
                if let Some((_, parent)) = c.split_last() {
                    root.insert(parent, Node::leaf(e.clone()), 0);
                }
            }
            Ok(())
        })?;
        let staging = Staging::open(&staged.dir.path().join(STAGING_FILE))?;
        let mut implicit_dirs = Vec::new();
        if !staged.root_explicit {
            implicit_dirs.push(Vec::new());
        }
        let mut todo = vec![String::new()];
        while let Some(dir) = todo.pop() {
            for r in staging.list(&dir)? {
                if r.staged.entry().kind == EntryKind::Directory {
                    let path = join(&dir, &r.staged.entry().name);
                    if !r.explicit {
                        implicit_dirs.push(path.split('/').map(str::to_string).collect());
                    }
                    todo.push(path);
                }
            }
        }
        assert!(staged.may_imply || implicit_dirs.is_empty());
        Ok(LayerTree {
            root,
            files: staged.files,
            implicit_dirs,
        })
    }

    /// Builds tars in memory.
    pub struct TarBuilder {
        b: tar::Builder<Vec<u8>>,
    }

    impl TarBuilder {
        pub fn new() -> Self {
            TarBuilder {
                b: tar::Builder::new(Vec::new()),
            }
        }

        pub fn header(kind: EntryType, mode: u32) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(0);
            h
        }

        pub fn dir(mut self, path: &str, mode: u32) -> Self {
            let mut h = Self::header(EntryType::Directory, mode);
            self.b
                .append_data(&mut h, path, &[][..])
                .unwrap_or_else(|e| panic!("{e}"));
            self
        }

        pub fn file(mut self, path: &str, mode: u32, data: &[u8]) -> Self {
            let mut h = Self::header(EntryType::Regular, mode);
            h.set_size(data.len() as u64);
            self.b
                .append_data(&mut h, path, data)
                .unwrap_or_else(|e| panic!("{e}"));
            self
        }

        pub fn link(mut self, kind: EntryType, path: &str, target: &str) -> Self {
            let mut h = Self::header(kind, 0o777);
            self.b
                .append_link(&mut h, path, target)
                .unwrap_or_else(|e| panic!("{e}"));
            self
        }

        pub fn device(mut self, kind: EntryType, path: &str, major: u32, minor: u32) -> Self {
            let mut h = Self::header(kind, 0o600);
            h.set_device_major(major).unwrap_or_else(|e| panic!("{e}"));
            h.set_device_minor(minor).unwrap_or_else(|e| panic!("{e}"));
            self.b
                .append_data(&mut h, path, &[][..])
                .unwrap_or_else(|e| panic!("{e}"));
            self
        }

        pub fn pax_xattr_file(mut self, path: &str, key: &str, value: &[u8]) -> Self {
            let k = format!("SCHILY.xattr.{key}");
            self.b
                .append_pax_extensions([(k.as_str(), value)])
                .unwrap_or_else(|e| panic!("{e}"));
            self.file(path, 0o644, b"")
        }

        /// A raw header whose name is written unchecked (for hostile paths).
        pub fn raw_file(mut self, name: &[u8]) -> Self {
            let mut h = Self::header(EntryType::Regular, 0o644);
            {
                let gnu = h.as_gnu_mut().unwrap_or_else(|| panic!("gnu"));
                gnu.name[..name.len()].copy_from_slice(name);
            }
            h.set_cksum();
            self.b.append(&h, &[][..]).unwrap_or_else(|e| panic!("{e}"));
            self
        }

        pub fn finish(self) -> Vec<u8> {
            self.b.into_inner().unwrap_or_else(|e| panic!("{e}"))
        }
    }

    /// `raw` gzip-compressed ([`::tests::image::gzip`]).
    pub fn gzip(raw: &[u8]) -> Vec<u8> {
        ::tests::image::gzip(raw).unwrap_or_else(|e| panic!("{e}"))
    }

    fn id_for(blob: &[u8], tar: &[u8]) -> LayerId {
        LayerId {
            image: "test/image:1".into(),
            digest: sha256_digest(blob),
            diff_id: sha256_digest(tar),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        }
    }

    fn read(tar: &[u8]) -> (Result<LayerTree>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = LocalStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let blob = gzip(tar);
        let r = read_layer(
            &blob[..],
            &id_for(&blob, tar),
            &Pool::new(&store, 2),
            &Limits::default(),
        );
        (r, dir)
    }

    fn ok(tar: &[u8]) -> LayerTree {
        let (r, _d) = read(tar);
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    fn get<'a>(t: &'a LayerTree, p: &str) -> &'a catalog::Entry {
        &t.root
            .get(&crate::tree::components(p))
            .unwrap_or_else(|| panic!("{p} missing"))
            .entry
    }

    #[test]
    fn directories_without_entries_are_listed_as_implicit() {
        let tar = TarBuilder::new()
            .dir("etc/", 0o755)
            .file("etc/passwd", 0o644, b"root")
            .file("usr/bin/x", 0o755, b"x")
            .dir("usr/", 0o755) // a later entry makes usr explicit
            .finish();
        let mut implicit = ok(&tar).implicit_dirs;
        implicit.sort();
        let usr_bin = vec!["usr".to_string(), "bin".to_string()];
        assert_eq!(
            implicit,
            vec![vec![], usr_bin.clone()],
            "no ./ entry: the root too"
        );
        let with_root = TarBuilder::new()
            .dir("./", 0o755)
            .file("usr/bin/x", 0o755, b"x");
        let mut implicit = ok(&with_root.finish()).implicit_dirs;
        implicit.sort();
        assert_eq!(implicit, vec![vec!["usr".to_string()], usr_bin]);
    }

    #[test]
    fn every_entry_kind() {
        let long = format!("deep/{}/file", "x".repeat(150));
        let tar = TarBuilder::new()
            .dir("./", 0o755)
            .dir("bin/", 0o755)
            .file("bin/su", 0o4755, b"setuid")
            .dir("tmp", 0o1777)
            .file(&long, 0o644, b"long name")
            .link(EntryType::Symlink, "bin/sh", "busybox")
            .file("bin/busybox", 0o755, b"bb")
            .link(EntryType::Link, "bin/ls", "bin/busybox")
            .link(EntryType::Link, "usr/ls", "bin/busybox")
            .device(EntryType::Char, "dev/tty", 5, 0)
            .device(EntryType::Block, "dev/sda", 8, 0)
            .device(EntryType::Fifo, "run/fifo", 0, 0)
            .pax_xattr_file("bin/ping", "security.capability", b"\x01\x02")
            .raw_file(b"/abs/file")
            .finish();
        let t = ok(&tar);
        assert_eq!(t.files, 5);
        assert_eq!(get(&t, "bin/su").mode, 0o104755);
        assert_eq!(get(&t, "tmp").mode, 0o041777);
        assert_eq!(get(&t, &long).size, 9);
        assert_eq!(get(&t, "bin/sh").symlink, "busybox");
        assert_eq!(get(&t, "bin/sh").size, 7);
        let (bb, ls, uls) = (get(&t, "bin/busybox"), get(&t, "bin/ls"), get(&t, "usr/ls"));
        assert_eq!(bb.hash, ls.hash);
        assert_eq!(bb.hash, uls.hash);
        assert!(bb.hardlink_group != 0);
        assert_eq!((ls.hardlink_group, ls.linkcount), (bb.hardlink_group, 2));
        assert_eq!((uls.hardlink_group, uls.linkcount), (0, 1));
        assert_eq!(get(&t, "usr").mode, 0o040755, "implicit parent");
        assert_eq!(get(&t, "dev/tty").kind, EntryKind::CharDevice);
        assert_eq!(get(&t, "dev/tty").rdev, libc::makedev(5, 0));
        assert_eq!(get(&t, "dev/sda").kind, EntryKind::BlockDevice);
        assert_eq!(get(&t, "run/fifo").kind, EntryKind::Fifo);
        assert_eq!(
            get(&t, "bin/ping").xattrs.get("security.capability"),
            Some(&b"\x01\x02".to_vec())
        );
        assert_eq!(get(&t, "abs/file").mode, 0o100644);
        assert_eq!(get(&t, "").linkcount, 2 + 7);
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let tar = TarBuilder::new()
            .file("etc/.wh.passwd", 0o644, b"")
            .dir("var/cache", 0o755)
            .file("var/cache/.wh..wh..opq", 0o644, b"")
            .file("var/cache/new", 0o644, b"n")
            .file(".wh.opt", 0o644, b"")
            .finish();
        let t = ok(&tar);
        let w = get(&t, "etc/passwd");
        assert!(is_whiteout(w));
        assert_eq!(w.mode, S_IFCHR);
        assert!(is_whiteout(get(&t, "opt")));
        let cache = get(&t, "var/cache");
        assert_eq!(cache.xattrs.get(OPAQUE_XATTR), Some(&b"y".to_vec()));
        assert!(t.root.get(&["var", "cache", "new"]).is_some());
        let mut names = Vec::new();
        t.root
            .visit_catalog(&mut |n| names.push(n.entry.name.clone()));
        assert!(names.iter().all(|n| !n.starts_with(".wh.")), "{names:?}");
    }

    #[test]
    fn later_entries_replace_earlier() {
        let tar = TarBuilder::new()
            .file("a", 0o644, b"one")
            .file("a", 0o600, b"second")
            .dir("d", 0o700)
            .file("d/x", 0o644, b"")
            .dir("d", 0o755)
            .file("f", 0o644, b"")
            .dir("f", 0o755)
            .finish();
        let t = ok(&tar);
        assert_eq!((get(&t, "a").size, get(&t, "a").mode), (6, 0o100600));
        assert_eq!(get(&t, "d").mode, 0o040755);
        assert!(
            t.root.get(&["d", "x"]).is_some(),
            "dir re-entry keeps children"
        );
        assert!(t.root.get(&["f"]).is_some_and(Node::is_dir));
    }

    #[test]
    fn replaced_directories_lose_their_contents_and_come_back_implied() {
        // The parent-directory cache must forget a directory replaced by a file or a
        // whiteout, and a file replacing a directory removes the whole staged subtree.
        let tar = TarBuilder::new()
            .dir("a", 0o700)
            .file("a/b/f1", 0o644, b"1")
            .file("a", 0o600, b"now a file")
            .file("a/c/f2", 0o644, b"2")
            .file("w/x/y", 0o644, b"y")
            .file(".wh.w", 0o644, b"")
            .file("w/z", 0o644, b"z")
            .file("k/l/m", 0o644, b"m")
            .link(EntryType::Symlink, "k", "/etc")
            .finish();
        let t = ok(&tar);
        assert!(t.root.get(&["a", "b"]).is_none(), "old subtree removed");
        assert_eq!(get(&t, "a").mode, 0o040755, "implied again");
        assert_eq!(get(&t, "a/c/f2").size, 1);
        assert!(t.root.get(&["w", "x"]).is_none());
        assert_eq!(get(&t, "w/z").size, 1);
        assert_eq!(get(&t, "k").symlink, "/etc");
        assert!(t.root.get(&["k", "l"]).is_none());
        let mut implicit = t.implicit_dirs.clone();
        implicit.sort();
        let p = |s: &[&str]| s.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert_eq!(implicit, vec![p(&[]), p(&["a"]), p(&["a", "c"]), p(&["w"])]);
        // a symlink replacing a cached directory is refused as a parent afterwards
        let tar = TarBuilder::new()
            .file("k/l/m", 0o644, b"m")
            .link(EntryType::Symlink, "k", "/etc")
            .file("k/l/n", 0o644, b"n")
            .finish();
        let (_, reason) = layer_error(read(&tar).0);
        assert!(reason.contains("symlink"), "{reason}");
    }

    /// Names of the flat tree's directory `path` (lower layer `lower`, then `upper`).
    fn flat_names(lower: &[u8], upper: &[u8], path: &[&str]) -> Vec<String> {
        let (l, u) = (ok(lower), ok(upper));
        let flat = crate::flatten::flatten(&[&l.root, &u.root]);
        flat.get(path)
            .unwrap_or_else(|| panic!("{path:?} missing"))
            .children
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn a_directory_recreated_after_its_whiteout_hides_the_lower_one() {
        // `.wh.d` then `d/...` in one layer: the lower `d` is deleted and a new one made
        // (umoci unpack: RemoveAll, then the new entries), so `d` is opaque.
        let lower = TarBuilder::new()
            .dir("d", 0o755)
            .file("d/old", 0o644, b"o")
            .dir("e", 0o755)
            .file("e/old", 0o644, b"o")
            .finish();
        let upper = TarBuilder::new()
            .file(".wh.d", 0o644, b"")
            .file("d/new", 0o644, b"n")
            .file(".wh.e", 0o644, b"")
            .dir("e", 0o700)
            .file("e/new", 0o644, b"n")
            .finish();
        assert_eq!(flat_names(&lower, &upper, &["d"]), vec!["new"]);
        assert_eq!(flat_names(&lower, &upper, &["e"]), vec!["new"]);
        let t = ok(&upper);
        assert!(is_opaque(get(&t, "d")) && is_opaque(get(&t, "e")));
        // Without a whiteout before, a directory entry merges with the lower one.
        let merge = TarBuilder::new().file("d/new", 0o644, b"n").finish();
        assert_eq!(flat_names(&lower, &merge, &["d"]), vec!["new", "old"]);
    }

    #[test]
    fn opaque_marker_before_the_root_entry_is_kept() {
        let lower = TarBuilder::new().file("old", 0o644, b"o").finish();
        let upper = TarBuilder::new()
            .file(".wh..wh..opq", 0o644, b"")
            .dir("./", 0o700)
            .file("new", 0o644, b"n")
            .finish();
        assert_eq!(flat_names(&lower, &upper, &[]), vec!["new"]);
    }

    #[test]
    fn hard_links_survive_replacement_and_whiteout_of_their_target() {
        let lower = TarBuilder::new().file("keep", 0o644, b"k").finish();
        let upper = TarBuilder::new()
            .file("a/f", 0o644, b"first")
            .link(EntryType::Link, "a/g", "a/f")
            .link(EntryType::Link, "b/h", "a/f")
            .file("a/f", 0o600, b"second!")
            .file("a/x", 0o644, b"x")
            .link(EntryType::Link, "a/y", "a/x")
            .file("a/.wh.x", 0o644, b"")
            .finish();
        let t = ok(&upper);
        let (f, g, h) = (get(&t, "a/f"), get(&t, "a/g"), get(&t, "b/h"));
        assert_eq!((f.size, g.size, h.size), (7, 5, 5));
        assert_eq!(g.hash, h.hash);
        assert_eq!((g.hardlink_group, g.linkcount), (0, 1), "group of one");
        assert!(is_whiteout(get(&t, "a/x")));
        assert_eq!((get(&t, "a/y").size, get(&t, "a/y").linkcount), (1, 1));
        assert_eq!(flat_names(&lower, &upper, &["a"]), vec!["f", "g", "y"]);
    }

    #[test]
    fn odd_names_and_directory_entries_after_their_children() {
        let long = "n".repeat(200);
        let tar = TarBuilder::new()
            .file("./d/sub/f", 0o644, b"f")
            .dir("./d/sub/", 0o700)
            .dir("./d", 0o750)
            .file("line\nbreak", 0o644, b"")
            .file(&format!("x/{long}"), 0o644, b"l")
            .file("sp ace/t\tab", 0o644, b"")
            .finish();
        let t = ok(&tar);
        assert_eq!(get(&t, "d").mode, 0o040750);
        assert_eq!(get(&t, "d/sub").mode, 0o040700);
        assert_eq!(get(&t, "d/sub/f").size, 1);
        assert!(t.root.get(&["line\nbreak"]).is_some());
        assert_eq!(get(&t, &format!("x/{long}")).size, 1);
        assert!(t.root.get(&["sp ace", "t\tab"]).is_some());
        assert!(
            !t.implicit_dirs
                .iter()
                .any(|d| d.first().is_some_and(|c| c == "d"))
        );
    }

    #[test]
    fn a_damaged_staged_row_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = LocalStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let tar = TarBuilder::new()
            .file("etc/passwd", 0o644, b"root")
            .finish();
        let blob = gzip(&tar);
        let staged = super::read_layer(
            &blob[..],
            &id_for(&blob, &tar),
            &Pool::new(&store, 2),
            &Limits::default(),
            dir.path(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let db = staged.dir.path().join(STAGING_FILE);
        let conn = rusqlite::Connection::open(&db).unwrap_or_else(|e| panic!("{e}"));
        conn.execute("UPDATE rows SET entry = x'0102' WHERE name = 'passwd'", [])
            .unwrap_or_else(|e| panic!("{e}"));
        drop(conn);
        let r = staged.emit(None, &mut |_: &str, _: &Entry| Ok(()));
        match r {
            Err(Error::Staging { file, path, reason }) => {
                assert_eq!((file, path.as_str()), (db, "etc/passwd"));
                assert!(reason.contains("truncated"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_paths_are_rejected() {
        for name in [&b"../etc/passwd"[..], b"a/../../x", b"/../../root"] {
            let tar = TarBuilder::new().raw_file(name).finish();
            let (r, _d) = read(&tar);
            match r {
                Err(Error::Layer {
                    entry,
                    reason,
                    image,
                    layer,
                }) => {
                    assert_eq!(entry, String::from_utf8_lossy(name));
                    assert!(reason.contains("escapes"), "{reason}");
                    assert_eq!(image, "test/image:1");
                    assert!(layer.starts_with("sha256:"));
                }
                other => panic!("{name:?}: {other:?}"),
            }
        }
        // inside the root after normalisation: fine
        let t = ok(&TarBuilder::new().raw_file(b"a/../b").finish());
        assert!(t.root.get(&["b"]).is_some());
    }

    #[test]
    fn dangling_hardlink_is_rejected() {
        let tar = TarBuilder::new()
            .link(EntryType::Link, "a", "missing")
            .finish();
        let (r, _d) = read(&tar);
        let msg = r
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("does not exist earlier"), "{msg}");
    }

    #[test]
    fn digest_mismatch_is_detected() {
        let tar = TarBuilder::new().file("a", 0o644, b"x").finish();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = LocalStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let blob = gzip(&tar);
        let mut id = id_for(&blob, &tar);
        id.diff_id = sha256_digest(b"other");
        assert!(matches!(
            read_layer(&blob[..], &id, &Pool::new(&store, 1), &Limits::default()),
            Err(Error::DigestMismatch { .. })
        ));
        let mut id = id_for(&blob, &tar);
        id.digest = sha256_digest(b"other");
        assert!(matches!(
            read_layer(&blob[..], &id, &Pool::new(&store, 1), &Limits::default()),
            Err(Error::DigestMismatch { .. })
        ));
    }

    #[test]
    fn path_normalisation() {
        assert_eq!(
            normalize_path("./a//b/./c"),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(normalize_path("/"), Some(vec![]));
        assert_eq!(normalize_path("a/.."), Some(vec![]));
        assert_eq!(normalize_path(".."), None);
    }

    fn read_with(tar: &[u8], limits: &Limits) -> Result<LayerTree> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = LocalStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let blob = gzip(tar);
        read_layer(
            &blob[..],
            &id_for(&blob, tar),
            &Pool::new(&store, 2),
            limits,
        )
    }

    fn layer_error(r: Result<LayerTree>) -> (String, String) {
        match r {
            Err(Error::Layer { entry, reason, .. }) => (entry, reason),
            other => panic!("expected a layer error, got {other:?}"),
        }
    }

    #[test]
    fn entry_under_a_symlink_of_the_same_layer_is_refused() {
        let tar = TarBuilder::new()
            .link(EntryType::Symlink, "a", "/etc")
            .file("a/passwd", 0o644, b"evil")
            .finish();
        let (entry, reason) = layer_error(read(&tar).0);
        assert_eq!(entry, "a/passwd");
        assert!(reason.contains("symlink"), "{reason}");
        // deeper, and for whiteouts too
        let tar = TarBuilder::new()
            .dir("d", 0o755)
            .link(EntryType::Symlink, "d/l", "../..")
            .file("d/l/x/.wh.y", 0o644, b"")
            .finish();
        let (_, reason) = layer_error(read(&tar).0);
        assert!(reason.contains("\"d/l\""), "{reason}");
        // a symlink replaced by a directory first is fine
        let tar = TarBuilder::new()
            .link(EntryType::Symlink, "a", "/etc")
            .dir("a", 0o755)
            .file("a/f", 0o644, b"ok")
            .finish();
        assert!(ok(&tar).root.get(&["a", "f"]).is_some());
    }

    #[test]
    fn decompression_bomb_and_absurd_sizes_are_capped() {
        let limits = Limits {
            max_layer_size: 1 << 20,
            ..Limits::default()
        };
        let big = vec![0u8; 4 << 20];
        let tar = TarBuilder::new().file("zeros", 0o644, &big).finish();
        let (entry, reason) = layer_error(read_with(&tar, &limits));
        assert_eq!(entry, "zeros");
        assert!(reason.contains("--max-layer-size"), "{reason}");
        // a bomb of many small files: the stream cap catches it
        let mut b = TarBuilder::new();
        for i in 0..40 {
            b = b.file(&format!("f{i}"), 0o644, &[1u8; 30_000]);
        }
        let msg = read_with(&b.finish(), &limits)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("--max-layer-size"), "{msg}");
        // a header claiming far more than the stream holds
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_size(1 << 40);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_path("huge").unwrap_or_else(|e| panic!("{e}"));
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend([7u8; 1024]);
        let (entry, _) = layer_error(read(&raw).0);
        assert_eq!(entry, "huge");
        let (entry, reason) = layer_error(read_with(&raw, &limits));
        assert_eq!(entry, "huge");
        assert!(reason.contains("exceeds"), "{reason}");
    }

    #[test]
    fn truncated_blob_fails_naming_the_layer() {
        let tar = TarBuilder::new()
            .file("a", 0o644, &[5u8; 100_000])
            .file("b", 0o644, b"b")
            .finish();
        let blob = gzip(&tar);
        let cut = &blob[..blob.len() / 2];
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = LocalStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let r = read_layer(
            cut,
            &id_for(&blob, &tar),
            &Pool::new(&store, 2),
            &Limits::default(),
        );
        let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("test/image:1") && msg.contains(&sha256_digest(&blob)),
            "{msg}"
        );
        assert!(msg.contains("\"a\""), "names the entry: {msg}");
    }

    #[test]
    fn pax_sparse_files_are_expanded_under_their_real_names_and_old_gnu_ones_refused() {
        // GNU old sparse (type S): data "A"*512 at 0, "xyz" at 4096, real size 8192.
        // containerd refuses the type, so the publisher does too.
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_path("sparse").unwrap_or_else(|e| panic!("{e}"));
        h.set_size(512 + 3);
        {
            let gnu = h.as_gnu_mut().unwrap_or_else(|| panic!("gnu"));
            let octal = |field: &mut [u8; 12], v: u64| {
                let text = format!("{v:011o}\0");
                field.copy_from_slice(text.as_bytes());
            };
            octal(&mut gnu.sparse[0].offset, 0);
            octal(&mut gnu.sparse[0].numbytes, 512);
            octal(&mut gnu.sparse[1].offset, 4096);
            octal(&mut gnu.sparse[1].numbytes, 3);
            octal(&mut gnu.sparse[2].offset, 8192);
            octal(&mut gnu.sparse[2].numbytes, 0);
            octal(&mut gnu.realsize, 8192);
        }
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend([b'A'; 512]);
        let mut tail = b"xyz".to_vec();
        tail.resize(512, 0);
        raw.extend(tail);
        raw.extend([0u8; 1024]);
        let blob = gzip(&raw);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = LocalStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let err = read_layer(
            &blob[..],
            &id_for(&blob, &raw),
            &Pool::new(&store, 2),
            &Limits::default(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.contains("\"sparse\"") && err.contains("containerd refuses"),
            "old-GNU type S is refused, naming the entry: {err}"
        );
        // PAX sparse 1.0 (map in the data) and 0.1 (map in a record), as GNU tar writes
        // them: the real name replaces the GNUSparseFile placeholder, holes read as zeros.
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([
            ("GNU.sparse.major", &b"1"[..]),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"opt/one"),
            ("GNU.sparse.realsize", b"8192"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let mut data = b"2\n0\n512\n4096\n3\n".to_vec();
        data.resize(512, 0);
        data.extend([b'A'; 512]);
        data.extend(b"xyz");
        let mut h = TarBuilder::header(EntryType::Regular, 0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, "opt/GNUSparseFile.7/one", &data[..])
            .unwrap_or_else(|e| panic!("{e}"));
        b.append_pax_extensions([
            ("GNU.sparse.major", &b"0"[..]),
            ("GNU.sparse.minor", b"1"),
            ("GNU.sparse.name", b"opt/two"),
            ("GNU.sparse.size", b"8192"),
            ("GNU.sparse.numblocks", b"2"),
            ("GNU.sparse.map", b"0,512,4096,3"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let mut data = vec![b'A'; 512];
        data.extend(b"xyz");
        let mut h = TarBuilder::header(EntryType::Regular, 0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, "opt/GNUSparseFile.7/two", &data[..])
            .unwrap_or_else(|e| panic!("{e}"));
        let (t, dir) = read(&b.into_inner().unwrap_or_default());
        let t = t.unwrap_or_else(|e| panic!("{e}"));
        let store = LocalStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let mut expect = vec![b'A'; 512];
        expect.resize(4096, 0);
        expect.extend(b"xyz");
        expect.resize(8192, 0);
        for name in ["opt/one", "opt/two"] {
            let e = get(&t, name);
            assert_eq!(e.size, 8192, "{name}");
            let stored = crate::objects::read_object(
                &store,
                &e.hash.unwrap_or_else(|| panic!("hash")),
                Suffix::None,
                1 << 20,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(stored, expect, "{name}");
        }
        assert!(
            t.root
                .get(&crate::tree::components("opt/GNUSparseFile.7"))
                .is_none(),
            "the placeholder directory was published"
        );
        // A map that does not fit the real size: a clear error naming the entry.
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([
            ("GNU.sparse.major", &b"0"[..]),
            ("GNU.sparse.minor", b"1"),
            ("GNU.sparse.name", b"bad"),
            ("GNU.sparse.size", b"100"),
            ("GNU.sparse.map", b"90,20"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let mut h = TarBuilder::header(EntryType::Regular, 0o644);
        h.set_size(20);
        b.append_data(&mut h, "GNUSparseFile.1/bad", &[0u8; 20][..])
            .unwrap_or_else(|e| panic!("{e}"));
        let (entry, reason) = layer_error(read(&b.into_inner().unwrap_or_default()).0);
        assert_eq!(entry, "bad");
        assert!(reason.contains("past the real size"), "{reason}");
        // Stored data that no segment takes: refused, as containerd's unpack refuses it.
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([
            ("GNU.sparse.major", &b"0"[..]),
            ("GNU.sparse.minor", b"1"),
            ("GNU.sparse.name", b"extra"),
            ("GNU.sparse.size", b"100"),
            ("GNU.sparse.map", b"0,10"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let mut h = TarBuilder::header(EntryType::Regular, 0o644);
        h.set_size(30);
        b.append_data(&mut h, "GNUSparseFile.1/extra", &[1u8; 30][..])
            .unwrap_or_else(|e| panic!("{e}"));
        let (entry, reason) = layer_error(read(&b.into_inner().unwrap_or_default()).0);
        assert_eq!(entry, "extra");
        assert!(
            reason.contains("covers 10 bytes but the entry stores 30"),
            "{reason}"
        );
        // Sparse records on a directory: refused (Go's reader: ErrHeader).
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([
            ("GNU.sparse.major", &b"0"[..]),
            ("GNU.sparse.minor", b"1"),
            ("GNU.sparse.size", b"0"),
            ("GNU.sparse.map", b""),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let mut h = TarBuilder::header(EntryType::Directory, 0o755);
        b.append_data(&mut h, "dir/", &[][..])
            .unwrap_or_else(|e| panic!("{e}"));
        let (entry, reason) = layer_error(read(&b.into_inner().unwrap_or_default()).0);
        assert_eq!(entry, "dir/");
        assert!(
            reason.contains("only regular files can be sparse"),
            "{reason}"
        );
    }

    #[test]
    fn a_sparse_file_whose_real_name_is_not_utf8_keeps_its_bytes() {
        // GNU tar in the C locale writes GNU.sparse.name with the name's raw bytes.
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([
            ("GNU.sparse.major", &b"1"[..]),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"opt/caf\xe9"),
            ("GNU.sparse.realsize", b"1024"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let mut data = b"1\n0\n3\n".to_vec();
        data.resize(512, 0);
        data.extend(b"abc");
        let mut h = TarBuilder::header(EntryType::Regular, 0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, "opt/GNUSparseFile.9/caf", &data[..])
            .unwrap_or_else(|e| panic!("{e}"));
        let (t, _dir) = read(&b.into_inner().unwrap_or_default());
        let t = t.unwrap_or_else(|e| panic!("{e}"));
        let name = catalog::names::from_bytes(b"opt/caf\xe9").into_owned();
        assert_eq!(get(&t, &name).size, 1024);
    }

    /// Every sparse form GNU tar writes, made by GNU tar itself (Debian's `tar`, part of
    /// every Debian system): PAX 0.0, 0.1, 1.0 are expanded; old-GNU type `S` is refused
    /// with the entry named (containerd refuses it).
    #[test]
    fn gnu_tar_sparse_archives_of_every_format_are_expanded_or_refused_as_containerd_does() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap_or_else(|e| panic!("{e}"));
        let size = 3 * 1024 * 1024 + 5;
        let f = std::fs::File::create(src.join("holes")).unwrap_or_else(|e| panic!("{e}"));
        f.set_len(size).unwrap_or_else(|e| panic!("{e}"));
        let middle: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 + 1).collect();
        for (at, bytes) in [(0, &b"head"[..]), (1_048_581, &middle), (size - 4, b"tail")] {
            f.write_all_at(bytes, at).unwrap_or_else(|e| panic!("{e}"));
        }
        drop(f);
        let expect = std::fs::read(src.join("holes")).unwrap_or_else(|e| panic!("{e}"));
        for (label, args) in [
            ("pax 0.0", &["--format=posix", "--sparse-version=0.0"][..]),
            ("pax 0.1", &["--format=posix", "--sparse-version=0.1"]),
            ("pax 1.0", &["--format=posix", "--sparse-version=1.0"]),
            ("old gnu", &["--format=gnu"]),
        ] {
            let out = std::process::Command::new("tar")
                .args(args)
                .args(["--sparse", "-cf", "-", "-C"])
                .arg(&src)
                .arg("holes")
                .output()
                .unwrap_or_else(|e| panic!("running GNU tar: {e}"));
            assert!(out.status.success(), "tar {label}: {out:?}");
            let tar = out.stdout;
            assert!(
                (tar.len() as u64) < size / 4,
                "{label}: tar did not write a sparse entry ({} bytes)",
                tar.len()
            );
            let (t, store_dir) = read(&tar);
            if label == "old gnu" {
                let (entry, reason) = layer_error(t);
                assert_eq!(entry, "holes", "{label}");
                assert!(reason.contains("containerd refuses"), "{label}: {reason}");
                continue;
            }
            let t = t.unwrap_or_else(|e| panic!("{label}: {e}"));
            let names: Vec<&String> = t.root.children.keys().collect();
            assert_eq!(names, ["holes"], "{label}");
            let e = get(&t, "holes");
            assert_eq!(e.size, size, "{label}");
            let store = LocalStore::open(store_dir.path()).unwrap_or_else(|e| panic!("{e}"));
            let got = crate::objects::read_object(
                &store,
                &e.hash.unwrap_or_else(|| panic!("{label}: chunked")),
                Suffix::None,
                1 << 30,
            )
            .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert!(got == expect, "{label}: contents differ");
        }
    }

    #[test]
    fn times_ids_and_mode_bits() {
        let mut b = tar::Builder::new(Vec::new());
        // PAX mtime before 1970 with a fraction, after 2038, big uid/gid
        b.append_pax_extensions([("mtime", &b"-86400.25"[..]), ("uid", b"4294967294")])
            .unwrap_or_else(|e| panic!("{e}"));
        let mut h = TarBuilder::header(EntryType::Regular, 0o2755);
        b.append_data(&mut h, "old", &[][..])
            .unwrap_or_else(|e| panic!("{e}"));
        b.append_pax_extensions([("mtime", &b"4102444800.5"[..])])
            .unwrap_or_else(|e| panic!("{e}"));
        let mut h = TarBuilder::header(EntryType::Directory, 0o1777);
        b.append_data(&mut h, "future/", &[][..])
            .unwrap_or_else(|e| panic!("{e}"));
        // GNU base-256 negative mtime in the header itself
        let mut h = TarBuilder::header(EntryType::Regular, 0o4711);
        {
            let gnu = h.as_gnu_mut().unwrap_or_else(|| panic!("gnu"));
            gnu.mtime = [0xff; 12];
            gnu.mtime[11] = 0xfe; // -2
        }
        b.append_data(&mut h, "neg", &[][..])
            .unwrap_or_else(|e| panic!("{e}"));
        let t = ok(&b.into_inner().unwrap_or_default());
        // Before 1970: the epoch, as containerd's unpack sets it.
        let old = get(&t, "old");
        assert_eq!((old.mtime, old.mtime_ns), (0, None));
        assert_eq!((old.uid, old.mode), (4294967294, 0o102755));
        let future = get(&t, "future");
        assert_eq!(
            (future.mtime, future.mtime_ns),
            (4102444800, Some(500_000_000))
        );
        assert_eq!(future.mode, 0o041777);
        let neg = get(&t, "neg");
        assert_eq!((neg.mtime, neg.mode), (0, 0o104711));
        assert_eq!(
            bound_time(9_223_372_036, Some(854_775_807)),
            (9_223_372_036, Some(854_775_807))
        );
        assert_eq!(bound_time(9_223_372_036, Some(854_775_808)), (0, None));
        assert_eq!(bound_time(9_300_000_000, None), (0, None));
        assert_eq!(bound_time(-1, Some(500_000_000)), (0, None));
        assert_eq!(parse_pax_time("12"), Some((12, 0)));
        assert_eq!(parse_pax_time("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time("x"), None);
    }
}
