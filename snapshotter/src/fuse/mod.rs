//! The read-only FUSE file system over a [`MountedRevision`]; the only module that sees
//! `fuser`.
//!
//! Operations: lookup, getattr, readlink, open/read/release, opendir/readdir/releasedir,
//! getxattr/listxattr, statfs. `fuser` runs several event-loop threads (see
//! [`crate::cmd::mount`]); a request that waits on the network (a nested catalog or a file
//! object) blocks only its own thread. Entries, attributes and negative lookups are cached
//! by the kernel for [`TTL`], since a revision never changes; so are symlink targets
//! (`FUSE_CACHE_SYMLINKS`, in the page cache of the link's inode), file pages
//! (`FOPEN_KEEP_CACHE`) and directory listings (`FOPEN_CACHE_DIR`).
//!
//! One concept per file:
//!
//! * `filesystem` — the `fuser::Filesystem` adapter: kernel requests in, replies out, the
//!   kernel capabilities asked at `INIT` and no-open mode;
//! * `lookup` — inode → node and name → node, across revision switches, with negative
//!   entries;
//! * `listing` — directory listings;
//! * `read` — the data path: opening a file's object or chunk list, reads;
//! * `passthrough` — the kernel reading open unchunked files from the cache directly;
//!   `page_fill` — the kernel's page cache filled with an opened chunked program;
//! * `xattr` — extended attributes, stored and magic;
//! * `switch` — live updates: swapping in a new revision, kernel cache invalidation, the
//!   retired revisions open files still read;
//! * `inodes` — the inode table; `attr` — catalog entry → `struct stat`;
//! * `errno` — crate errors → errno values (here and nowhere else).
//!
//! **Plain twin.** [`StrataFs::plain_twin`] is a second file system over the same state
//! (revision, inodes, cache) for a second mount point, with extended attributes switched
//! off (see `xattr`). Only layers and flat trees without any xattr may be used from the
//! twin (`strata-snapshotter run --plain-mountpoint` checks [`CATALOG_COUNTERS_XATTR`]).

mod attr;
mod errno;
mod filesystem;
pub mod handover;
mod inodes;
pub mod journal;
mod listing;
mod lookup;
mod page_fill;
mod passthrough;
mod read;
mod switch;
pub mod trace;
mod xattr;

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use catalog::Entry;
use lru::LruCache;

use crate::client::readahead::ReadAhead;
use crate::client::repository::MountedRevision;
use crate::client::startup::StartupPrefetch;
use crate::{Error, Result};
use listing::{DirListing, LISTINGS};
use read::OpenHandle;

pub use attr::{file_attr, fuse_rdev};
pub use inodes::{Inodes, Node, ROOT_INODE};
pub use page_fill::PageFill;
pub use switch::Switcher;

/// `name` (a catalog name, [`catalog::names`]) as the kernel sees it: the bytes it stands
/// for, which need not be UTF-8.
fn os_name(name: &str) -> std::borrow::Cow<'_, std::ffi::OsStr> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    match catalog::names::to_bytes(name) {
        std::borrow::Cow::Borrowed(bytes) => {
            std::borrow::Cow::Borrowed(std::ffi::OsStr::from_bytes(bytes))
        }
        std::borrow::Cow::Owned(bytes) => {
            std::borrow::Cow::Owned(std::ffi::OsString::from_vec(bytes))
        }
    }
}

/// How long the kernel may cache entries, attributes and negative lookups.
pub const TTL: Duration = Duration::from_secs(300);

pub use crate::catalog_counters::CATALOG_COUNTERS_XATTR;

/// Totals reported by `statfs`, from the root catalog's statistics (docs/format.md §6.13).
#[derive(Clone, Copy, Debug, Default)]
struct FsTotals {
    bytes: u64,
    files: u64,
}

/// The state shared by the file system and its [`Switcher`].
struct Shared {
    repo: RwLock<Arc<MountedRevision>>,
    inodes: Inodes,
    totals: Mutex<FsTotals>,
    /// `(parent inode, name)` of negative lookups answered in the current revision.
    negatives: Mutex<HashSet<(u64, String)>>,
    /// `(generation, revision)` of the last [`switch::RETIRED_REVISIONS`] revisions
    /// switched away from, oldest first.
    retired: Mutex<VecDeque<(u64, Arc<MountedRevision>)>>,
    /// No-open mode: listings by directory inode, with the generation they were made in.
    listings: Mutex<LruCache<u64, (u64, Arc<DirListing>)>>,
    /// Fetches ahead of reads (see [`crate::client::readahead`]), once the mount sets it.
    read_ahead: OnceLock<Arc<ReadAhead>>,
    /// Records first reads ([`trace`]), if the mount sets it.
    trace: OnceLock<Arc<trace::AccessTrace>>,
    /// Prefetches startup packs on request ([`crate::client::startup`]), once set.
    startup: OnceLock<Arc<StartupPrefetch>>,
    /// What the kernel offered at the main mount's `FUSE_INIT`, for a successor that
    /// takes the connection over ([`handover`]).
    kernel_init: OnceLock<handover::KernelInit>,
    /// Where state is journaled for a successor ([`journal`]), once attached.
    journal: OnceLock<Arc<journal::Journal>>,
    /// This process's epoch ([`journal`]): handles it gives out start at `epoch << 40`.
    epoch: u32,
    /// The connection was taken over from a predecessor: a handle this process did not
    /// give out is the predecessor's, and is served by inode.
    adopted: bool,
    /// Passthrough backing ids predecessors left registered: `(session, inode) → id`
    /// ([`passthrough`]).
    inherited_backing: Mutex<std::collections::BTreeMap<(u8, u64), u32>>,
    /// The negative lookups of a switch a predecessor died in before invalidating
    /// ([`Switcher::finish_interrupted_switch`]).
    unfinished_switch: Mutex<Option<HashSet<(u64, String)>>>,
}

/// The FUSE file system of one mounted repository (one revision at a time).
pub struct StrataFs {
    shared: Arc<Shared>,
    /// Open files by handle, with the node they were opened as.
    files: Mutex<HashMap<u64, OpenHandle>>,
    dirs: Mutex<HashMap<u64, Arc<DirListing>>>,
    next_handle: AtomicU64,
    /// The kernel opens files without `OPEN` ([`filesystem`], "No-open mode"); set at `INIT`.
    no_open: bool,
    /// The kernel opens directories without `OPENDIR`; set at `INIT`.
    no_opendir: bool,
    /// Whether extended attributes are served (false in the plain twin).
    xattrs: bool,
    /// Whether `INIT` may ask for FUSE passthrough ([`passthrough`]).
    allow_passthrough: bool,
    /// This session's passthrough state.
    passthrough: passthrough::Passthrough,
    /// This session's page-cache fill of chunked programs ([`page_fill`]).
    page_fill: Arc<PageFill>,
}

impl Shared {
    fn repo(&self) -> Arc<MountedRevision> {
        self.repo
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The root entry and `statfs` totals of `repo`.
fn root_and_totals(repo: &MountedRevision) -> Result<(Entry, FsTotals)> {
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

/// The first file handle of a process of `epoch`: handles of successive processes on one
/// connection never collide.
fn first_handle(epoch: u32) -> u64 {
    (u64::from(epoch) << 40) | 1
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
    pub fn new(repo: Arc<MountedRevision>) -> Result<StrataFs> {
        let (root, totals) = root_and_totals(&repo)?;
        Ok(StrataFs::with_inodes(
            repo,
            Inodes::new(root),
            totals,
            0,
            false,
        ))
    }

    /// A file system that resumes a predecessor's connection: the revision `repo` and the
    /// inode table its `journal` recorded (`records`, read by [`journal::Journal::adopt`],
    /// and their `summary`), journaling on to the same journal. See [`handover`].
    /// `retired`: the revisions of earlier generations that could be opened (oldest
    /// first), which open files of those generations go on reading.
    ///
    /// # Errors
    /// As [`StrataFs::new`]; [`Error::Config`] if the journal's inode records do not
    /// replay.
    pub fn adopt(
        repo: Arc<MountedRevision>,
        retired: Vec<(u64, Arc<MountedRevision>)>,
        records: &[journal::Record],
        summary: &journal::Summary,
        journal: Arc<journal::Journal>,
    ) -> Result<StrataFs> {
        let (root, totals) = root_and_totals(&repo)?;
        let inodes = Inodes::replay(records, root)
            .map_err(|e| Error::Config(format!("the handover journal: {e}")))?;
        let epoch = summary.epoch + 1;
        inodes.set_epoch(epoch);
        journal.append(&journal::Record::Epoch(epoch));
        inodes.journal_to(journal.clone(), false);
        let fs = StrataFs::with_inodes(repo, inodes, totals, epoch, true);
        {
            let mut kept = lock(&fs.shared.retired);
            kept.extend(retired);
            while kept.len() > switch::RETIRED_REVISIONS {
                kept.pop_front();
            }
        }
        if let Some(init) = summary.kernel_init {
            let _ = fs.shared.kernel_init.set(init);
        }
        *lock(&fs.shared.inherited_backing) = summary.backing.clone();
        // The kernel's negative entries of this generation, for the next switch.
        lock(&fs.shared.negatives).extend(summary.negatives.iter().cloned());
        *lock(&fs.shared.unfinished_switch) = summary
            .unfinished_switch
            .as_ref()
            .map(|n| n.iter().cloned().collect());
        fs.passthrough
            .handover(journal.clone(), 0, fs.inherited_backing_of(0));
        let _ = fs.shared.journal.set(journal);
        Ok(fs)
    }

    /// Journals this file system's state for a successor from now on (a fresh mount; see
    /// [`journal`]). `pinned`: the revision is pinned (no live updates). Set once, before
    /// mounting.
    pub fn journal_to(&self, journal: Arc<journal::Journal>, pinned: bool) {
        journal.append(&journal::Record::Epoch(self.shared.epoch));
        journal.append(&journal::Record::Revision {
            generation: 0,
            revision: *self.repo().revision(),
            pinned,
        });
        self.inodes().journal_to(journal.clone(), true);
        self.passthrough
            .handover(journal.clone(), 0, HashMap::new());
        let _ = self.shared.journal.set(journal);
    }

    /// The backing ids predecessors left on session `session`'s connection, by inode.
    fn inherited_backing_of(&self, session: u8) -> HashMap<u64, u32> {
        lock(&self.shared.inherited_backing)
            .iter()
            .filter(|((s, _), _)| *s == session)
            .map(|((_, ino), id)| (*ino, *id))
            .collect()
    }

    fn with_inodes(
        repo: Arc<MountedRevision>,
        inodes: Inodes,
        totals: FsTotals,
        epoch: u32,
        adopted: bool,
    ) -> StrataFs {
        StrataFs {
            shared: Arc::new(Shared {
                repo: RwLock::new(repo),
                inodes,
                totals: Mutex::new(totals),
                negatives: Mutex::new(HashSet::new()),
                retired: Mutex::new(VecDeque::new()),
                listings: Mutex::new(LruCache::new(
                    NonZeroUsize::new(LISTINGS).unwrap_or(NonZeroUsize::MIN),
                )),
                read_ahead: OnceLock::new(),
                trace: OnceLock::new(),
                startup: OnceLock::new(),
                kernel_init: OnceLock::new(),
                journal: OnceLock::new(),
                epoch,
                adopted,
                inherited_backing: Mutex::new(std::collections::BTreeMap::new()),
                unfinished_switch: Mutex::new(None),
            }),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(first_handle(epoch)),
            no_open: false,
            no_opendir: false,
            xattrs: true,
            allow_passthrough: false,
            passthrough: passthrough::Passthrough::default(),
            page_fill: Arc::default(),
        }
    }

    /// A second file system over the same revision, inodes and cache, for a second mount
    /// point, with extended attributes switched off (module docs, "Plain twin"; `xattr`). A
    /// [`Switcher`] of either switches both; the caller passes both sessions' notifiers.
    pub fn plain_twin(&self) -> StrataFs {
        let passthrough = passthrough::Passthrough::default();
        if let Some(journal) = self.shared.journal.get() {
            passthrough.handover(journal.clone(), 1, self.inherited_backing_of(1));
        }
        StrataFs {
            shared: self.shared.clone(),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(first_handle(self.shared.epoch)),
            no_open: false,
            no_opendir: false,
            xattrs: false,
            allow_passthrough: self.allow_passthrough,
            passthrough,
            page_fill: Arc::default(),
        }
    }

    /// Lets `INIT` ask the kernel for FUSE passthrough (`passthrough`); set before
    /// mounting (a twin made afterwards inherits it).
    pub fn allow_passthrough(&mut self, allow: bool) {
        self.allow_passthrough = allow;
    }

    /// Fetch ahead of reads with `read_ahead` (shared with the plain twin); without it,
    /// only what is read is fetched. Set once, before mounting.
    pub fn set_read_ahead(&self, read_ahead: Arc<ReadAhead>) {
        let _ = self.shared.read_ahead.set(read_ahead);
    }

    /// Prefetch startup packs with `prefetch` when asked (`xattr`); without it, the
    /// request attribute does not exist. Set once, before mounting.
    pub fn set_startup_prefetch(&self, prefetch: Arc<StartupPrefetch>) {
        let _ = self.shared.startup.set(prefetch);
    }

    /// Record every regular file read, once, in `trace` (shared with the plain twin).
    pub fn set_trace(&self, trace: Arc<trace::AccessTrace>) {
        let _ = self.shared.trace.set(trace);
    }

    /// This session's page-cache fill ([`PageFill`]): the mount connects it to the
    /// session's mount point once the session exists (the file system has moved into it).
    pub fn page_fill(&self) -> Arc<PageFill> {
        self.page_fill.clone()
    }

    /// Read-ahead of directory `dir` (a repository path) of the current revision.
    fn read_ahead_directory(&self, dir: &str, file: &str, size: u64, pid: u32) {
        if let Some(read_ahead) = self.shared.read_ahead.get() {
            read_ahead.directory(&self.repo(), dir, file, size, pid);
        }
    }

    /// A handle that switches the served revision while the session runs.
    pub fn switcher(&self) -> Switcher {
        Switcher {
            shared: self.shared.clone(),
        }
    }

    fn repo(&self) -> Arc<MountedRevision> {
        self.shared.repo()
    }

    fn inodes(&self) -> &Inodes {
        &self.shared.inodes
    }

    /// What the kernel offered at this file system's (or its twin's) first `FUSE_INIT`;
    /// `None` before the mount.
    pub fn kernel_init(&self) -> Option<handover::KernelInit> {
        self.shared.kernel_init.get().copied()
    }

    fn new_handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }
}
