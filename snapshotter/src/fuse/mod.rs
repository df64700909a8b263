//! The read-only FUSE file system over a [`Repository`]; the only module that sees `fuser`.
//!
//! Operations: lookup, getattr, readlink, open/read/release, opendir/readdir/releasedir,
//! getxattr/listxattr (the stored xattrs of spec §6.9, plus one magic attribute below;
//! `trusted.overlay.opaque` must be readable because overlayfs reads it from lower layers),
//! statfs. Crate errors become errno values here and nowhere else: a missing path is
//! `ENOENT`, a non-directory parent `ENOTDIR`, and download or verification failures `EIO`
//! (spec §8.5).
//!
//! `fuser` runs several event-loop threads (see [`crate::mount`]); a request that waits on
//! the network (a nested catalog or a file object) blocks only its own thread. Entries,
//! attributes and negative lookups are cached by the kernel for [`TTL`], since a revision
//! never changes; so are symlink targets (`FUSE_CACHE_SYMLINKS`, in the page cache of the
//! link's inode), file pages (`FOPEN_KEEP_CACHE`) and directory listings
//! (`FOPEN_CACHE_DIR`).
//!
//! **No-open mode.** When the kernel offers `FUSE_NO_OPEN_SUPPORT` (Linux ≥ 4.18) and
//! `FUSE_NO_OPENDIR_SUPPORT` (≥ 5.1), `open` and `opendir` answer `ENOSYS`: the kernel then
//! opens files and directories itself for the rest of the session, with `FOPEN_KEEP_CACHE`
//! (and `FOPEN_CACHE_DIR` for directories), and never sends `OPEN`, `RELEASE`, `OPENDIR` or
//! `RELEASEDIR` again; the first `FLUSH` answers `ENOSYS` too, so no `FLUSH` follows. Each
//! container start through overlayfs opens dozens of files, each an `OPEN` and a
//! `RELEASE` round trip otherwise. A `READ` then names only the inode: the object is found
//! from the inode's node and pinned for that read only (a pin held between reads would
//! stop the cache's eviction, see [`crate::cache`]); listings are kept per directory inode
//! in a small LRU (tagged with the generation). Kernels without these capabilities get
//! file and directory handles as before, files opened with `FOPEN_NOFLUSH` (a read-only
//! file has nothing to write back on `close(2)`).
//!
//! **Plain twin.** [`StrataFs::plain_twin`] is a second file system over the same state
//! (revision, inodes, cache) for a second mount point, with extended attributes switched
//! off: its `getxattr` and `listxattr` answer `ENOSYS`, after which the kernel fails them
//! with `EOPNOTSUPP` for that session without asking. overlayfs probes
//! `trusted.overlay.{metacopy,opaque,redirect,origin}` on every lower dentry it looks up,
//! and the kernel caches no xattrs of FUSE files, so a lower layer in the main mount costs
//! one round trip per probe; in the twin none. Only layers and flat trees without any
//! xattr may be used from the twin (`strata-snapshotter run --plain-mountpoint` checks
//! [`CATALOG_COUNTERS_XATTR`]).
//!
//! **Magic xattr.** `user.catalog_counters` (CVMFS's name and format), answered by name on
//! any path of the main mount and never listed (as stock CVMFS with
//! `CVMFS_HIDE_MAGIC_XATTRS=yes`): the statistics (spec §6.13) of the catalog that hosts
//! the path — for a nested catalog's mountpoint directory, that nested catalog.
//!
//! Live updates (spec §8.6): a [`Switcher`] (taken before the session starts) swaps in a
//! new [`Repository`] without unmounting. The inode table starts a new generation (numbers
//! of unchanged paths are kept, see [`inodes`]) and the kernel's caches of every entry,
//! inode and negative lookup of the old revision are invalidated through the FUSE notify
//! channel of every session (an inode invalidation with offset 0 also drops its page
//! cache, which holds a cached symlink target). Open files read the revision they opened to
//! the end: with handles, through their pinned cache file; in no-open mode, through their
//! inode, which a changed file does not share with its new version (see [`inodes`]) and
//! whose node is kept in the inode LRU or rebuilt from one of the last
//! [`RETIRED_REVISIONS`] revisions (a chunked file's chunk list also comes from the
//! node's revision while it is kept).

mod attr;
mod inodes;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use catalog::{Chunk, Entry, EntryKind, Suffix};
use fuser::{
    Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request,
};

use lru::LruCache;

use crate::cache::{ObjectRequest, PinnedFile};
use crate::repository::{LoadedCatalog, Repository};
use crate::{Error, Result};

pub use attr::{file_attr, fuse_rdev};
pub use inodes::{Inodes, Node, ROOT_INODE};

/// How long the kernel may cache entries, attributes and negative lookups.
pub const TTL: Duration = Duration::from_secs(300);

pub use crate::catalog_counters::CATALOG_COUNTERS_XATTR;

/// An open regular file.
enum OpenFile {
    /// Unchunked: the cached, decompressed object (pinned while open).
    Whole(PinnedFile),
    /// Chunked (spec §4.6): chunk objects are fetched when a read first touches them.
    Chunked {
        path: String,
        chunks: Vec<Chunk>,
        compressed: bool,
        files: Mutex<HashMap<usize, Arc<PinnedFile>>>,
    },
}

/// An open file with the node it was opened as.
type OpenHandle = (Arc<Node>, Arc<OpenFile>);

/// One listed directory: `(inode, type, name)` including `.` and `..`.
type DirListing = Vec<(u64, FileType, String)>;

/// Totals reported by `statfs`, from the root catalog's statistics (spec §6.13).
#[derive(Clone, Copy, Debug, Default)]
struct FsTotals {
    bytes: u64,
    files: u64,
}

/// Negative lookups remembered for invalidation after a switch; beyond this many, the
/// kernel's copies simply expire after [`TTL`].
const MAX_NEGATIVES: usize = 1 << 20;

/// Earlier revisions kept after switches, so that a file opened in one of them still
/// reads its content in no-open mode once its node has left the inode LRU.
const RETIRED_REVISIONS: usize = 4;

/// How often a lookup or listing is made again when a revision switch comes in between
/// (switches are minutes apart; this bounds the work, not a wait).
const SWITCH_RETRIES: usize = 4;

/// Directory listings kept in no-open mode (by inode), for `readdir` without a handle.
const LISTINGS: usize = 256;

/// The state shared by the file system and its [`Switcher`].
struct Shared {
    repo: RwLock<Arc<Repository>>,
    inodes: Inodes,
    totals: Mutex<FsTotals>,
    /// `(parent inode, name)` of negative lookups answered in the current revision.
    negatives: Mutex<HashSet<(u64, String)>>,
    /// `(generation, repository)` of the last [`RETIRED_REVISIONS`] revisions switched
    /// away from, oldest first.
    retired: Mutex<VecDeque<(u64, Arc<Repository>)>>,
    /// No-open mode: listings by directory inode, with the generation they were made in.
    listings: Mutex<LruCache<u64, (u64, Arc<DirListing>)>>,
}

/// The FUSE file system of one mounted repository (one revision at a time).
pub struct StrataFs {
    shared: Arc<Shared>,
    /// Open files by handle, with the node they were opened as.
    files: Mutex<HashMap<u64, OpenHandle>>,
    dirs: Mutex<HashMap<u64, Arc<DirListing>>>,
    next_handle: AtomicU64,
    /// The kernel opens files without `OPEN` (see the module docs); set at `INIT`.
    no_open: bool,
    /// The kernel opens directories without `OPENDIR`; set at `INIT`.
    no_opendir: bool,
    /// Whether extended attributes are served (false in the plain twin).
    xattrs: bool,
}

/// Swaps the revision a running [`StrataFs`] serves (spec §8.6).
#[derive(Clone)]
pub struct Switcher {
    shared: Arc<Shared>,
}

impl Switcher {
    /// The revision currently served.
    pub fn current(&self) -> Arc<Repository> {
        self.shared.repo()
    }

    /// Serves `repo` from now on and invalidates the kernel's caches of the previous
    /// revision through `notifier` (if given). Returns the number of inodes invalidated.
    ///
    /// # Errors
    /// Catalog errors reading the new root entry or statistics; [`Error::NotFound`] if the
    /// new root catalog has no root entry. The old revision stays in place on error.
    pub fn switch(&self, repo: Arc<Repository>, notifiers: &[fuser::Notifier]) -> Result<usize> {
        let (root, totals) = root_and_totals(&repo)?;
        // The revision and the generation change together, under the revision's write
        // lock: a reader's `Shared::snapshot` sees both old or both new. The old revision
        // is retired and its negative entries taken under that lock too, so that no reader
        // of the new one finds its generation without a retired revision (an old inode's
        // chunk list would come from the new revision) or records a negative entry of the
        // new revision into the old set (invalidated now, then forgotten at the next
        // switch). Lock order: revision → inode table (released) → retired, negatives.
        // The kernel is notified after all locks are released.
        let (old, negatives) = {
            let mut current = self
                .shared
                .repo
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let generation = self.shared.inodes.generation();
            let previous = std::mem::replace(&mut *current, repo);
            let old = self.shared.inodes.new_generation(root);
            {
                let mut retired = lock(&self.shared.retired);
                retired.push_back((generation, previous));
                while retired.len() > RETIRED_REVISIONS {
                    retired.pop_front();
                }
            }
            let negatives = std::mem::take(&mut *lock(&self.shared.negatives));
            (old, negatives)
        };
        *lock(&self.shared.totals) = totals;
        lock(&self.shared.listings).clear();
        for notifier in notifiers {
            invalidate(notifier, &old, &negatives);
        }
        Ok(old.len())
    }
}

/// Drops one session's kernel caches of the `old` inodes and of the `negatives`.
fn invalidate(
    notifier: &fuser::Notifier,
    old: &[inodes::StaleInode],
    negatives: &HashSet<(u64, String)>,
) {
    let quiet = |what: &str, r: std::io::Result<()>| {
        if let Err(e) = r {
            tracing::debug!(what, error = %e, "kernel cache invalidation");
        }
    };
    for stale in old {
        quiet("inode", notifier.inval_inode(INodeNo(stale.ino), 0, 0));
        if stale.parent != 0 {
            quiet(
                "entry",
                notifier.inval_entry(INodeNo(stale.parent), OsStr::new(&stale.name)),
            );
        }
    }
    for (parent, name) in negatives {
        quiet(
            "negative entry",
            notifier.inval_entry(INodeNo(*parent), OsStr::new(name)),
        );
    }
}

impl Shared {
    fn repo(&self) -> Arc<Repository> {
        self.repo
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The current revision and its generation, read together (see [`Switcher::switch`]).
    /// What is read from the revision is interned with this generation, and re-read if a
    /// switch came in between ([`Inodes::intern_child_at`]).
    fn snapshot(&self) -> (Arc<Repository>, u64) {
        let current = self
            .repo
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (current.clone(), self.inodes.generation())
    }
}

/// The root entry and `statfs` totals of `repo`.
fn root_and_totals(repo: &Repository) -> Result<(Entry, FsTotals)> {
    let root = repo
        .lookup("")?
        .ok_or_else(|| Error::NotFound(String::new()))?;
    let stats = repo.root_catalog().with(|r| r.statistics())?;
    let sum =
        |f: fn(&catalog::Counters) -> i64| (f(&stats.self_) + f(&stats.subtree)).max(0) as u64;
    let totals = FsTotals {
        bytes: sum(|c| c.file_size),
        files: sum(|c| c.regular + c.symlink + c.special + c.dir),
    };
    Ok((root.entry, totals))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StrataFs {
    /// A file system over `repo`; inode 1 is the repository root.
    ///
    /// # Errors
    /// Catalog errors reading the root entry or statistics; [`Error::NotFound`] if the root
    /// catalog has no root entry.
    pub fn new(repo: Arc<Repository>) -> Result<StrataFs> {
        let (root, totals) = root_and_totals(&repo)?;
        Ok(StrataFs {
            shared: Arc::new(Shared {
                repo: RwLock::new(repo),
                inodes: Inodes::new(root),
                totals: Mutex::new(totals),
                negatives: Mutex::new(HashSet::new()),
                retired: Mutex::new(VecDeque::new()),
                listings: Mutex::new(LruCache::new(
                    NonZeroUsize::new(LISTINGS).unwrap_or(NonZeroUsize::MIN),
                )),
            }),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            no_open: false,
            no_opendir: false,
            xattrs: true,
        })
    }

    /// A second file system over the same revision, inodes and cache, for a second mount
    /// point, with extended attributes switched off (module docs, "Plain twin"). A
    /// [`Switcher`] of either switches both; the caller passes both sessions' notifiers.
    pub fn plain_twin(&self) -> StrataFs {
        StrataFs {
            shared: self.shared.clone(),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            no_open: false,
            no_opendir: false,
            xattrs: false,
        }
    }

    /// The [`CATALOG_COUNTERS_XATTR`] value for `node`.
    fn catalog_counters(&self, node: &Node) -> Result<Vec<u8>> {
        let repo = self.repo();
        let catalog = if node.entry.kind == EntryKind::Directory {
            repo.directory(&node.path)?.catalog
        } else {
            self.catalog_of(node)?
        };
        let stats = catalog.with(|r| r.statistics())?;
        Ok(
            crate::catalog_counters::to_text(&catalog.hash.to_hex(), &catalog.mountpoint, &stats)
                .into_bytes(),
        )
    }

    /// A handle that switches the served revision while the session runs.
    pub fn switcher(&self) -> Switcher {
        Switcher {
            shared: self.shared.clone(),
        }
    }

    fn repo(&self) -> Arc<Repository> {
        self.shared.repo()
    }

    fn inodes(&self) -> &Inodes {
        &self.shared.inodes
    }

    /// The node of `ino`. A node of an older revision is refreshed from the current one
    /// when its path still resolves to the same inode number; otherwise the stale node is
    /// returned (an open file of the old revision).
    fn node(&self, ino: INodeNo) -> std::result::Result<Arc<Node>, Errno> {
        let inodes = self.inodes();
        if let Some(node) = inodes.cached(ino.0)
            && inodes.is_current(&node)
        {
            return Ok(node);
        }
        let path = inodes.path_of(ino.0).ok_or(Errno::ENOENT)?;
        for _ in 0..SWITCH_RETRIES {
            let (repo, generation) = self.shared.snapshot();
            match repo.lookup(&path) {
                Ok(Some(found)) => {
                    match inodes.intern_at(
                        generation,
                        &path,
                        &found.catalog.mountpoint,
                        found.entry,
                    ) {
                        Some(fresh) if fresh.ino == ino.0 => return Ok(fresh),
                        Some(_) => break,
                        // A switch came in between: read the new revision.
                        None => continue,
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(report("inode", &path, &e)),
            }
        }
        // Renumbered or gone in the current revision: the old node, if still known
        // (an open file of the previous revision), else rebuilt from the retired revision
        // it belongs to.
        if let Some(node) = inodes.cached(ino.0) {
            return Ok(node);
        }
        self.retired_node(ino.0, &path).ok_or(Errno::ENOENT)
    }

    /// The node of `ino` (path `path`) in the retired revision of its generation, if that
    /// revision is still kept and has the path.
    fn retired_node(&self, ino: u64, path: &str) -> Option<Arc<Node>> {
        let generation = self.inodes().generation_of(ino)?;
        let repo = self.retired_repo(generation)?;
        let found = repo.lookup(path).ok()??;
        Some(Arc::new(Node {
            ino,
            path: path.to_owned(),
            catalog: found.catalog.mountpoint.clone(),
            entry: found.entry,
            generation,
        }))
    }

    /// The retired revision that was current in `generation`, if still kept.
    fn retired_repo(&self, generation: u64) -> Option<Arc<Repository>> {
        lock(&self.shared.retired)
            .iter()
            .find(|(g, _)| *g == generation)
            .map(|(_, r)| r.clone())
    }

    /// The revision `node` was found in: its retired revision when it belongs to an
    /// earlier generation and that revision is still kept, else the current one.
    fn repo_of(&self, node: &Node) -> Arc<Repository> {
        if !self.inodes().is_current(node)
            && let Some(repo) = self.retired_repo(node.generation)
        {
            return repo;
        }
        self.repo()
    }

    /// No-open mode: the file of `ino` for one read (its object pinned until dropped).
    fn file_of_inode(&self, ino: INodeNo) -> std::result::Result<OpenFile, Errno> {
        let node = self.node(ino)?;
        require_regular(&node)?;
        self.open_file(&node)
            .map_err(|e| report("read", &node.path, &e))
    }

    /// No-open mode: the listing of directory `ino`, from the LRU when made in the current
    /// generation.
    fn listing_of_inode(&self, ino: INodeNo) -> std::result::Result<Arc<DirListing>, Errno> {
        if let Some((g, items)) = lock(&self.shared.listings).get(&ino.0)
            && *g == self.inodes().generation()
        {
            return Ok(items.clone());
        }
        let node = self.node(ino)?;
        if node.entry.kind != EntryKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        let (items, generation) = self
            .listing(&node)
            .map_err(|e| report("readdir", &node.path, &e))?;
        let items = Arc::new(items);
        lock(&self.shared.listings).put(ino.0, (generation, items.clone()));
        Ok(items)
    }

    /// Looks `name` up in directory `parent`; `None` if it does not exist (then remembered
    /// as a negative entry of the generation it was answered in, for invalidation at the
    /// next switch).
    ///
    /// The lookup is made in one revision and interned with that revision's generation; if
    /// a switch came in between (a lookup can wait seconds for a catalog download), it is
    /// made again in the new revision, so that no row of an old revision is recorded as
    /// current in a new generation, which no invalidation would reach.
    fn lookup_child(&self, parent: &Node, name: &OsStr) -> Result<Option<Arc<Node>>> {
        if parent.entry.kind != EntryKind::Directory {
            return Err(Error::NotADirectory(parent.path.clone()));
        }
        let Some(name) = name.to_str() else {
            return Ok(None);
        };
        let path = format!("{}/{}", parent.path, name);
        self.in_one_revision("lookup", &path, |repo, generation| {
            match repo.lookup(&path)? {
                Some(found) => Ok(self
                    .inodes()
                    .intern_child_at(
                        generation,
                        parent.ino,
                        name,
                        &path,
                        &found.catalog.mountpoint,
                        found.entry,
                    )
                    .map(Some)),
                None => {
                    // Checked under the lock the switch takes the set with, after it has
                    // started the new generation: recorded here = invalidated there.
                    let mut negatives = lock(&self.shared.negatives);
                    if self.inodes().generation() != generation {
                        return Ok(None);
                    }
                    if negatives.len() < MAX_NEGATIVES {
                        negatives.insert((parent.ino, name.to_string()));
                    }
                    Ok(Some(None))
                }
            }
        })
    }

    /// Runs `attempt` on the current revision and its generation until it answers
    /// (`Some`); `None` means a switch came in between and it is run again on the new
    /// revision, at most [`SWITCH_RETRIES`] times, then [`Error::Busy`] naming `what` of
    /// `path`.
    fn in_one_revision<T>(
        &self,
        what: &str,
        path: &str,
        mut attempt: impl FnMut(&Repository, u64) -> Result<Option<T>>,
    ) -> Result<T> {
        for _ in 0..SWITCH_RETRIES {
            let (repo, generation) = self.shared.snapshot();
            if let Some(answer) = attempt(&repo, generation)? {
                return Ok(answer);
            }
        }
        Err(Error::Busy(format!(
            "{path}: the repository switched revisions {SWITCH_RETRIES} times during one {what}"
        )))
    }

    /// The listing of directory `node`, allocating inodes for its children, with the
    /// generation it was made in (made again if a switch comes in between, as in
    /// [`StrataFs::lookup_child`]).
    fn listing(&self, node: &Node) -> Result<(DirListing, u64)> {
        self.in_one_revision("listing", &node.path, |repo, generation| {
            Ok(self
                .listing_in(repo, generation, node)?
                .map(|items| (items, generation)))
        })
    }

    /// The listing of `node` in `repo`, the revision of `generation`; `None` if a switch
    /// came in between.
    fn listing_in(
        &self,
        repo: &Repository,
        generation: u64,
        node: &Node,
    ) -> Result<Option<DirListing>> {
        let children = repo.list(&node.path)?;
        let parent_ino = if node.path.is_empty() {
            ROOT_INODE
        } else {
            let parent = catalog::parent_path(&node.path);
            match repo.lookup(parent)? {
                Some(f) => {
                    let Some(p) =
                        self.inodes()
                            .intern_at(generation, parent, &f.catalog.mountpoint, f.entry)
                    else {
                        return Ok(None);
                    };
                    p.ino
                }
                None => ROOT_INODE,
            }
        };
        let mut items = Vec::with_capacity(children.len() + 2);
        items.push((node.ino, FileType::Directory, ".".to_string()));
        items.push((parent_ino, FileType::Directory, "..".to_string()));
        for found in children {
            let path = format!("{}/{}", node.path, found.entry.name);
            let name = found.entry.name.clone();
            let Some(child) = self.inodes().intern_child_at(
                generation,
                node.ino,
                &name,
                &path,
                &found.catalog.mountpoint,
                found.entry,
            ) else {
                return Ok(None);
            };
            items.push((child.ino, attr::file_type(&child.entry), name));
        }
        Ok(Some(items))
    }

    /// Fetches what a read of `node` needs first: the whole object, or the chunk list.
    fn open_file(&self, node: &Node) -> Result<OpenFile> {
        let entry = &node.entry;
        if entry.flags & catalog::entry::FLAG_EXTERNAL != 0 {
            return Err(Error::Unsupported {
                path: node.path.clone(),
                reason: "external data (spec §6.6 flag 128) is not supported".into(),
            });
        }
        if entry.is_chunked() {
            // The chunk list of the node's own revision: an old-revision inode (a file
            // open across a switch, read by inode in no-open mode) must not get the chunks
            // of whatever the path holds now.
            let repo = self.repo_of(node);
            let catalog = repo
                .loaded_catalog(&node.catalog)
                .ok_or_else(|| Error::NotFound(node.path.clone()))?;
            let chunks = repo.chunks(&catalog, &node.path, entry.size)?;
            return Ok(OpenFile::Chunked {
                path: node.path.clone(),
                chunks,
                compressed: entry.compressed,
                files: Mutex::new(HashMap::new()),
            });
        }
        let Some(hash) = entry.hash else {
            return Err(Error::Unsupported {
                path: node.path.clone(),
                reason: "regular file without content hash or chunks".into(),
            });
        };
        let file = self.repo().cache().get(&ObjectRequest {
            hash,
            suffix: Suffix::None,
            compressed: entry.compressed,
            size: Some(entry.size),
        })?;
        Ok(OpenFile::Whole(file))
    }

    fn catalog_of(&self, node: &Node) -> Result<Arc<LoadedCatalog>> {
        self.repo()
            .loaded_catalog(&node.catalog)
            .ok_or_else(|| Error::NotFound(node.path.clone()))
    }

    /// Reads up to `size` bytes at `offset` of an open file.
    fn read_file(&self, file: &OpenFile, offset: u64, size: u32) -> Result<Vec<u8>> {
        match file {
            OpenFile::Whole(f) => read_at(f, offset, size as usize, "cached object"),
            OpenFile::Chunked {
                path,
                chunks,
                compressed,
                files,
            } => {
                // Only the chunks this read touches are fetched (spec §4.6).
                let spans = catalog::chunking::chunk_spans(chunks, offset, u64::from(size));
                let mut out = Vec::with_capacity(spans.iter().map(|s| s.len as usize).sum());
                for span in spans {
                    let Some(chunk) = chunks.get(span.index) else {
                        break;
                    };
                    let cached = lock(files).get(&span.index).cloned();
                    let chunk_file = match cached {
                        Some(f) => f,
                        None => {
                            let f = Arc::new(self.repo().cache().get(&ObjectRequest {
                                hash: chunk.hash,
                                suffix: Suffix::Partial,
                                compressed: *compressed,
                                size: Some(chunk.size),
                            })?);
                            lock(files).insert(span.index, f.clone());
                            f
                        }
                    };
                    let bytes = read_at(&chunk_file, span.within, span.len as usize, path)?;
                    let short = bytes.len() < span.len as usize;
                    out.extend_from_slice(&bytes);
                    if short {
                        break;
                    }
                }
                Ok(out)
            }
        }
    }

    fn new_handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }
}

/// Only regular files are opened or read: `EISDIR` for a directory, `EINVAL` otherwise.
fn require_regular(node: &Node) -> std::result::Result<(), Errno> {
    match node.entry.kind {
        EntryKind::Regular => Ok(()),
        EntryKind::Directory => Err(Errno::EISDIR),
        _ => Err(Errno::EINVAL),
    }
}

/// `pread` until `len` bytes or end of file.
fn read_at(file: &File, offset: u64, len: usize, what: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Io {
                    context: format!("reading {what}"),
                    source,
                });
            }
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// The errno for a crate error (the FUSE edge of the error type).
fn errno(e: &Error) -> Errno {
    match e {
        Error::NotFound(_) => Errno::ENOENT,
        Error::NotADirectory(_) => Errno::ENOTDIR,
        Error::Busy(_) => Errno::EAGAIN,
        Error::Io { source, .. } => source
            .raw_os_error()
            .map(Errno::from_i32)
            .unwrap_or(Errno::EIO),
        _ => Errno::EIO,
    }
}

/// Logs `e` (what failed, on which path) and returns its errno.
fn report(op: &str, path: &str, e: &Error) -> Errno {
    let code = errno(e);
    if code == Errno::ENOENT || code == Errno::ENOTDIR {
        tracing::debug!(op, path, error = %e, "request failed");
    } else {
        tracing::warn!(op, path, error = %e, "request failed");
    }
    code
}

/// Capabilities asked of the kernel at `INIT` beyond fuser's defaults.
const WANTED_CAPABILITIES: InitFlags = InitFlags::FUSE_CACHE_SYMLINKS;

/// Open flags of regular files: keep the page cache across opens (a revision never
/// changes; a switch invalidates it) and skip `FLUSH` on close (nothing to write back).
const FILE_OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_NOFLUSH);

/// Open flags of directories: the kernel caches listings in the directory's page cache
/// (`FOPEN_CACHE_DIR`) and keeps them across opens, so a warm `readdir` sends no `READDIR`
/// (a switch's inode invalidation drops them).
const DIR_OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_CACHE_DIR);

impl Filesystem for StrataFs {
    /// Asks for [`WANTED_CAPABILITIES`]; a kernel without them just keeps asking (readlink
    /// per resolution), so that is logged, not fatal.
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let offered = config.capabilities();
        self.no_open = offered.contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        self.no_opendir = offered.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        tracing::debug!(
            no_open = self.no_open,
            no_opendir = self.no_opendir,
            "kernel opens files / directories without asking"
        );
        if let Err(missing) = config.add_capabilities(WANTED_CAPABILITIES) {
            tracing::info!(
                ?missing,
                "kernel lacks FUSE capabilities; continuing without"
            );
            let _ = config.add_capabilities(WANTED_CAPABILITIES & !missing);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = match self.node(parent) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.lookup_child(&parent, name) {
            Ok(Some(node)) => reply.entry(&TTL, &file_attr(node.ino, &node.entry), Generation(0)),
            // Inode 0 with a TTL is a cached negative entry (FUSE protocol).
            Ok(None) => {
                let mut attr = file_attr(0, &parent.entry);
                attr.ino = INodeNo(0);
                reply.entry(&TTL, &attr, Generation(0));
            }
            Err(e) => reply.error(report("lookup", &parent.path, &e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        // fstat of an open file answers for the revision it was opened in.
        let opened = fh.and_then(|fh| lock(&self.files).get(&fh.0).map(|(n, _)| n.clone()));
        if let Some(node) = opened.filter(|n| n.ino == ino.0) {
            return reply.attr(&TTL, &file_attr(node.ino, &node.entry));
        }
        match self.node(ino) {
            Ok(node) => reply.attr(&TTL, &file_attr(node.ino, &node.entry)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino) {
            Ok(node) if node.entry.kind == EntryKind::Symlink => {
                reply.data(node.entry.symlink.as_bytes())
            }
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.no_open {
            // The kernel takes this as success and opens every file itself from now on.
            return reply.error(Errno::ENOSYS);
        }
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        if let Err(e) = require_regular(&node) {
            return reply.error(e);
        }
        match self.open_file(&node) {
            Ok(file) => {
                let fh = self.new_handle();
                self.files
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(fh, (node.clone(), Arc::new(file)));
                reply.opened(FileHandle(fh), FILE_OPEN_FLAGS);
            }
            Err(e) => reply.error(report("open", &node.path, &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = self
            .files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&fh.0)
            .map(|(_, f)| f.clone());
        let file = match file {
            Some(file) => file,
            None if self.no_open => match self.file_of_inode(ino) {
                Ok(file) => Arc::new(file),
                Err(e) => return reply.error(e),
            },
            None => return reply.error(Errno::EBADF),
        };
        match self.read_file(&file, offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(report("read", "", &e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&fh.0);
        reply.ok();
    }

    /// Nothing to write back on `close(2)` of a read-only file. In no-open mode (no
    /// `FOPEN_NOFLUSH` from an `OPEN`) this answers `ENOSYS`, and the kernel sends no
    /// `FLUSH` again; otherwise `ok`. (fuser's default answers `ENOSYS` with a warning.)
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if self.no_open {
            reply.error(Errno::ENOSYS);
        } else {
            reply.ok();
        }
    }

    /// No ioctls: `ENOTTY`, what a regular file answers (e.g. the `TCGETS` of `isatty(3)`,
    /// which every Python start issues). fuser's default logs a warning each time.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            // Success for the kernel, which opens directories itself from now on.
            return reply.error(Errno::ENOSYS);
        }
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.listing(&node) {
            Ok((items, _)) => {
                let fh = self.new_handle();
                self.dirs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(fh, Arc::new(items));
                reply.opened(FileHandle(fh), DIR_OPEN_FLAGS);
            }
            Err(e) => reply.error(report("opendir", &node.path, &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let items = self
            .dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&fh.0)
            .cloned();
        let items = match items {
            Some(items) => items,
            None if self.no_opendir => match self.listing_of_inode(ino) {
                Ok(items) => items,
                Err(e) => return reply.error(e),
            },
            None => return reply.error(Errno::EBADF),
        };
        for (i, (ino, kind, name)) in items.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let block = 4096u64;
        let totals = *lock(&self.shared.totals);
        reply.statfs(
            totals.bytes.div_ceil(block),
            0,
            0,
            totals.files,
            0,
            block as u32,
            255,
            block as u32,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if !self.xattrs {
            // The kernel answers EOPNOTSUPP itself from now on (plain twin).
            return reply.error(Errno::ENOSYS);
        }
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if name == CATALOG_COUNTERS_XATTR {
            return match self.catalog_counters(&node) {
                Ok(text) => reply_sized(reply, size, &text),
                Err(e) => reply.error(report("getxattr", &node.path, &e)),
            };
        }
        let value = name.to_str().and_then(|n| node.entry.xattrs.get(n));
        match value {
            None => reply.error(Errno::ENODATA),
            Some(v) => reply_sized(reply, size, v),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        reply_sized(reply, size, &xattr_names(&node.entry));
    }
}

/// The `listxattr` buffer: each stored name followed by NUL.
fn xattr_names(entry: &Entry) -> Vec<u8> {
    let mut names = Vec::new();
    for key in entry.xattrs.keys() {
        names.extend_from_slice(key.as_bytes());
        names.push(0);
    }
    names
}

/// Answers an xattr request: the size when `size` is 0, `ERANGE` if `value` does not fit.
fn reply_sized(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_errno_at_the_edge() {
        assert_eq!(errno(&Error::NotFound("/x".into())), Errno::ENOENT);
        assert_eq!(errno(&Error::NotADirectory("/x".into())), Errno::ENOTDIR);
        assert_eq!(errno(&Error::Busy("/x".into())), Errno::EAGAIN);
        assert_eq!(
            errno(&Error::HttpStatus {
                url: "u".into(),
                status: 404
            }),
            Errno::EIO
        );
        assert_eq!(
            errno(&Error::Catalog(catalog::Error::HashMismatch {
                expected: "a".into(),
                actual: "b".into()
            })),
            Errno::EIO
        );
        assert_eq!(
            errno(&Error::Io {
                context: "x".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC)
            }),
            Errno::ENOSPC
        );
    }

    #[test]
    fn xattr_names_are_nul_separated() {
        let mut e = Entry::directory("d", 0o755, 0, 0, 0);
        e.xattrs
            .insert("trusted.overlay.opaque".into(), b"y".to_vec());
        e.xattrs.insert("user.a".into(), b"1".to_vec());
        assert_eq!(xattr_names(&e), b"trusted.overlay.opaque\0user.a\0");
    }

    /// A one-catalog repository at `revision` holding the files `names` (`/<name>`), on a
    /// memory source; the directory keeps the cache.
    fn memory_repo(revision: u64, names: &[&str]) -> (Arc<Repository>, tempfile::TempDir) {
        use crate::cache::{ObjectCache, tests::MemorySource};
        use crate::repository::Revision;
        use catalog::{CatalogProperties, CatalogWriter, Transition};
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let props = CatalogProperties {
            revision,
            last_modified: 1_700_000_000,
            ttl: Some(240),
            previous_revision: None,
        };
        let db = tmp.path().join("root.db");
        let mut w = CatalogWriter::create(&db, "").unwrap();
        w.add("", &Entry::directory("", 0o755, 0, 0, 0), Transition::None)
            .unwrap();
        for name in names {
            let hash = src.add(name.as_bytes());
            let e = Entry::regular(name, 0o644, 0, 0, 0, name.len() as u64, hash);
            w.add(&format!("/{name}"), &e, Transition::None).unwrap();
        }
        w.finish(&props).unwrap();
        let raw = std::fs::read(&db).unwrap();
        let manifest =
            crate::repository::tests::manifest(src.add(&raw), raw.len() as u64, revision);
        let cache = Arc::new(ObjectCache::open(&tmp.path().join("cache"), src).unwrap());
        let repo = Repository::open("t.example", Revision::of_manifest(&manifest), cache).unwrap();
        (Arc::new(repo), tmp)
    }

    /// Runs a switch of `fs` to `next` while the test holds `guard` (a lock the switch
    /// takes); true if `next` became visible to readers before the guard was released.
    fn visible_while_held<G>(fs: &StrataFs, next: &Arc<Repository>, guard: G) -> bool {
        let switcher = fs.switcher();
        let to = next.clone();
        let switch = std::thread::spawn(move || switcher.switch(to, &[]).unwrap());
        let deadline = std::time::Instant::now() + Duration::from_millis(300);
        let mut visible = false;
        while std::time::Instant::now() < deadline && !visible {
            visible = fs
                .shared
                .repo
                .try_read()
                .is_ok_and(|current| Arc::ptr_eq(&current, next));
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(guard);
        switch.join().unwrap();
        visible
    }

    #[test]
    fn a_new_revision_is_visible_only_once_the_old_one_is_retired() {
        let (one, _t1) = memory_repo(1, &["a"]);
        let (two, _t2) = memory_repo(2, &["b"]);
        let fs = StrataFs::new(one.clone()).unwrap();
        // Otherwise an old-revision inode read in between (no-open mode) finds no retired
        // revision of its generation and takes its chunk list from the new one.
        let retired = lock(&fs.shared.retired);
        assert!(!visible_while_held(&fs, &two, retired));
        let retired = lock(&fs.shared.retired);
        assert_eq!(retired.len(), 1);
        assert_eq!(retired[0].0, 0);
        assert!(Arc::ptr_eq(&retired[0].1, &one));
    }

    #[test]
    fn a_negative_lookup_of_the_new_revision_is_kept_for_the_next_switch() {
        let (one, _t1) = memory_repo(1, &["a"]);
        let (two, _t2) = memory_repo(2, &["b"]);
        let fs = StrataFs::new(one).unwrap();
        let root = fs.node(INodeNo(ROOT_INODE)).unwrap();
        assert!(
            fs.lookup_child(&root, OsStr::new("gone"))
                .unwrap()
                .is_none()
        );
        // A negative answered from the new revision before the switch has taken the set
        // of the old one would be invalidated by this switch and then forgotten: the
        // kernel would keep it past the next switch.
        let negatives = lock(&fs.shared.negatives);
        assert!(
            !visible_while_held(&fs, &two, negatives),
            "revision 2 was served before the negatives of revision 1 were taken"
        );
        let root = fs.node(INodeNo(ROOT_INODE)).unwrap();
        assert!(
            fs.lookup_child(&root, OsStr::new("later"))
                .unwrap()
                .is_none()
        );
        let negatives = lock(&fs.shared.negatives);
        assert!(negatives.contains(&(ROOT_INODE, "later".to_string())));
        assert!(!negatives.contains(&(ROOT_INODE, "gone".to_string())));
    }

    #[test]
    fn pread_stops_at_end_of_file() {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, b"0123456789").unwrap();
        assert_eq!(read_at(&f, 3, 4, "t").unwrap(), b"3456");
        assert_eq!(read_at(&f, 8, 100, "t").unwrap(), b"89");
        assert!(read_at(&f, 20, 5, "t").unwrap().is_empty());
    }
}
