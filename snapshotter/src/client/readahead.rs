//! Read-ahead: fetching what a container is about to read before it asks, so that a start
//! that reads hundreds of files in dependency order pays far fewer sequential round trips.
//!
//! Containers read the way programs load: an interpreter or a dynamic loader looks a
//! directory up, then opens files in it one after another (Python's `import` walks
//! `__pycache__` directories, `ld.so` a library directory). Each miss costs one HTTP round
//! trip, so at 20–50 ms from the server a start is dominated by them. Two patterns are
//! fetched ahead, in the background:
//!
//! * **Directories.** The first time a regular file in a directory is opened (or, without
//!   `OPEN` calls, first read), the directory's other small regular files
//!   ([`ReadAheadSettings::max_file_size`]) are queued, unless there are more than
//!   [`ReadAheadSettings::max_files`] of them or they add up to more than
//!   [`ReadAheadSettings::max_dir_bytes`]: a huge directory (a system library directory)
//!   is used a few files at a time, and reading it ahead would mostly be waste. A lookup
//!   or a listing alone starts nothing: Python lists every directory on its path and
//!   `stat`s each module's source, but reads only the compiled `__pycache__/*.pyc`; read
//!   ahead on a listing or lookup, a start fetched every source file it never read.
//! * **Chunked files.** The first read of a chunked file of at most
//!   [`ReadAheadSettings::whole_chunked_size`] queues all its other chunks, those after the
//!   read first: a program or library is mapped and then faulted in all over the file, not
//!   front to back, so its chunks are wanted soon and in no order a reader could predict.
//!   In a larger chunked file, a read of chunk `i` queues the next
//!   [`ReadAheadSettings::chunks_ahead`] chunks (a sequential reader then finds them
//!   cached).
//!
//! * **Libraries.** The first time an ELF file (a program, a library, a Python extension
//!   module) is opened, what the dynamic loader will open after it — its interpreter and
//!   its `DT_NEEDED` libraries, searched as `ld.so` searches them inside the image root
//!   ([`crate::client::library_search`]) — is queued ahead of other work, and what each
//!   of those needs when it arrives: the loader maps one library after another from a
//!   system library directory far too big to read ahead whole
//!   ([`ReadAheadSettings::libraries`]). An unchunked file is looked at when opened, a
//!   chunked one when its first chunk is read (never a chunk fetched only to look).
//!
//! * **Scans.** A program that reads every file of every directory it enters (`tar`,
//!   `cp -r`, a checksum or a virus scan of a tree, a build reading its sources) waits,
//!   with the above, for the first file of each directory, and for each large file, and
//!   read-ahead runs dry at every directory boundary. When in [`SCAN_AFTER`] of the last
//!   [`SCAN_WINDOW`] directories the reader opened files in (with at least
//!   [`SCAN_MIN_FILES`] small files each) every small file was opened, the reader is
//!   taken for a scanner. Directories with fewer small files neither count nor push the
//!   others out of the window, so a run of them (`/usr/share/doc`) neither starts nor
//!   ends a scan. A container start does not look like that (Python opens some of the
//!   files of each `__pycache__` it enters).
//!
//!   For a scanner, the directory it enters starts a depth-first walk of the tree in the
//!   order such readers take ([`crate::client::scan`]: each directory's entries in
//!   listing order, a subdirectory entered where it stands, then on in the parent after
//!   it, up to the highest directory the reader has opened files in, within its image
//!   root). It queues small files and larger ones (up to
//!   [`ReadAheadSettings::whole_chunked_size`], chunked ones chunk by chunk, at most
//!   [`SCAN_LARGER_AT_ONCE`] downloading, the others waiting in order), with no limit on
//!   a directory's size. A step at a time ([`WALK_STEP_JOBS`] fetches, [`WALK_STEP_BYTES`]
//!   or [`WALK_STEP_LISTINGS`] directories listed): the first (the reader's own
//!   directory) ahead of everything, later ones behind what is queued, the next step
//!   halfway through the last, so the workers fetch in the reader's order without running
//!   dry. It stays at most [`crate::client::scan::SCAN_AHEAD_BYTES`] (and
//!   [`crate::client::scan::SCAN_AHEAD_FILES`] objects) ahead: files it queued that the
//!   reader has not opened, where a file the reader opens puts every file queued before
//!   it behind the reader too. Past that, or when the reader has opened nothing for
//!   [`SCAN_IDLE`], it waits for the reader's next open. The walk follows one reader,
//!   the thread whose open started it (the FUSE request's pid is the kernel's thread id):
//!   another thread's opens neither move nor restart it (they get the directory
//!   read-ahead above) until the reader has opened nothing for [`SCAN_IDLE`]; then the
//!   next thread that opens a file takes the walk over (`find -exec` and `xargs` run a
//!   new process per batch; a multi-threaded scanner's threads take turns). When its
//!   reader opens a file in a directory the walk has not listed (it jumped, or caught up,
//!   or went above where the walk stopped), a new walk starts there (without the subdirectories listed before
//!   that file: the reader has been through them), and what the old one queued is
//!   dropped. The walk ends when the pattern stops.
//!
//! A directory whose first opened file came in a startup pack is not read ahead: the pack
//! holds what a start reads there ([`crate::client::startup`]), and a guess would only
//! add bytes nobody reads; nor are the libraries of an ELF file that came in a pack, nor
//! the other chunks of a chunked file any of whose chunks came in one (the pack holds the
//! chunks a start reads; `fuse/read.rs` decides).
//!
//! Otherwise the queue is last in, first out by directory: the directory a program has just
//! entered is the one it reads now, so its files go ahead of what earlier directories left
//! queued.
//!
//! [`ReadAheadSettings::threads`] worker threads take queued objects and fetch them into the
//! cache ([`ObjectCache::prefetch`](crate::client::cache::ObjectCache::prefetch)) with the same fetcher, proxy chain and verification as
//! demand reads; a demand read of an object being read ahead shares that download. Read-ahead
//! never delays a demand read: demand reads never wait on the queue (they fetch on their own
//! FUSE thread), and while at least [`ReadAheadSettings::pause_when_demand`] demand
//! downloads are in flight the workers start nothing new (so bandwidth goes to what a
//! container waits for). The queue is bounded ([`MAX_QUEUED`]); past it, the oldest queued
//! work is dropped for the newest. Read-ahead never evicts: an object that does not fit under the quota is
//! skipped. What it fetched, and how much of that was later read, is counted by the cache
//! ([`crate::client::quota::CacheStats`]): the difference is the waste.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use std::os::unix::fs::FileExt;

use catalog::{Chunk, ContentHash, EntryKind};

use crate::client::cache::{ObjectCache, ObjectRequest};
use crate::client::chunk_reader::ChunkReader;
use crate::client::elf;
use crate::client::library_search::{self, Library};
use crate::client::repository::MountedRevision;
use crate::client::scan::{Frame, Scan, Walk, common_ancestor};
use crate::client::work_queue::{JobQueue, Queue, Workers};

/// Queued objects and directories at most; past it, the oldest are dropped for new ones.
pub const MAX_QUEUED: usize = 16 * 1024;

/// Directories remembered as already read ahead (per mount process); past it, the set is
/// cleared and a directory may be read ahead once more (its files are cached by then).
const MAX_SEEN_DIRS: usize = 64 * 1024;

/// Directories read ahead that the scan detector looks back on.
pub const SCAN_WINDOW: usize = 8;
/// Directories of the window whose files were all opened that make the reader a scanner.
pub const SCAN_AFTER: usize = 4;
/// Small files a directory must hold to count towards [`SCAN_AFTER`].
pub const SCAN_MIN_FILES: usize = 4;
/// How long after the reader's last open a scan's walk goes on; then it waits for the
/// next open.
pub const SCAN_IDLE: Duration = crate::client::scan::READER_IDLE;
/// Fetches a scan's walk queues per step at most (then the walk goes on behind them).
pub const WALK_STEP_JOBS: usize = 256;
/// Bytes a scan's walk queues per step at most.
pub const WALK_STEP_BYTES: u64 = 32 << 20;
/// Directories a scan's walk lists per step at most (directories of subdirectories alone
/// queue nothing).
pub const WALK_STEP_LISTINGS: usize = 64;
/// A scan's larger files downloaded at once at most: each download holds its connection's
/// read buffer (a few hundred KB for a large body), and more at once would not be faster
/// on a node's few cores, only larger in memory.
pub const SCAN_LARGER_AT_ONCE: usize = 4;

/// How read-ahead behaves (`mount` options and `[readahead]` of the mount's config file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadAheadSettings {
    /// Whether read-ahead runs at all.
    pub enabled: bool,
    /// Regular files larger than this are not read ahead with their directory.
    pub max_file_size: u64,
    /// Directories with more small files than this are not read ahead.
    pub max_files: usize,
    /// Directories whose small files add up to more than this are not read ahead.
    pub max_dir_bytes: u64,
    /// Chunked files up to this size are read ahead whole when first read.
    pub whole_chunked_size: u64,
    /// Chunks fetched ahead of a read of a larger chunked file.
    pub chunks_ahead: usize,
    /// Whether an ELF file opened queues the libraries the loader will open after it.
    pub libraries: bool,
    /// Worker threads fetching read-ahead objects concurrently.
    pub threads: usize,
    /// Workers start nothing new while this many demand downloads are in flight.
    pub pause_when_demand: usize,
}

impl Default for ReadAheadSettings {
    fn default() -> Self {
        ReadAheadSettings {
            enabled: true,
            max_file_size: 1024 * 1024,
            max_files: 256,
            max_dir_bytes: 16 * 1024 * 1024,
            whole_chunked_size: 64 * 1024 * 1024,
            chunks_ahead: 2,
            libraries: true,
            threads: 16,
            pause_when_demand: 4,
        }
    }
}

/// One piece of queued work.
enum Job {
    /// List the directory and queue its small regular files, or, for a scanner, start a
    /// walk there. `pid`: the thread that opened a file in it; `restart`: the scan's
    /// reader left walk generation `.1` behind, opening entry `.0` (a new walk starts
    /// there, without the subdirectories listed before that entry).
    Directory {
        repo: Arc<MountedRevision>,
        dir: String,
        pid: u32,
        restart: Option<(String, u64)>,
    },
    /// Fetch one object into the cache.
    Object(Arc<MountedRevision>, ObjectRequest),
    /// Queue what the loader opens after the ELF file at this path (found at the
    /// second: its `$ORIGIN`).
    Needs(Arc<MountedRevision>, String, String, Content),
    /// Fetch a library the loader is about to open, then queue what it needs in turn.
    Library(Arc<MountedRevision>, Library),
    /// The next step of the scan's walk ([`Scan::walk`]) of this generation.
    Walk(u64),
    /// An object a scan's walk queued (of walk `generation`: dropped once another walk
    /// started); a `larger` file's (or chunk) is fetched at most [`SCAN_LARGER_AT_ONCE`]
    /// at a time.
    Scanned {
        repo: Arc<MountedRevision>,
        req: ObjectRequest,
        generation: u64,
        larger: bool,
    },
}

/// Where a file's content is: one object, or chunks (stored compressed or not).
#[derive(Clone, Debug)]
pub enum Content {
    /// An unchunked file's object.
    Whole(ContentHash),
    /// A chunked file's chunks.
    Chunked(Vec<Chunk>, bool),
}

impl Content {
    /// What the loader needs after this ELF file ([`elf::dependencies`]), read from the
    /// cache (a chunked file's chunks fetched as its headers need them); `None` for other
    /// files or when the object was evicted meanwhile.
    fn dependencies(&self, cache: &ObjectCache) -> Option<elf::Dependencies> {
        match self {
            Content::Whole(hash) => {
                elf::dependencies(&std::fs::File::open(cache.path_of(hash)).ok()?)
            }
            Content::Chunked(chunks, compressed) => {
                elf::dependencies(ChunkReader::new(cache, chunks, *compressed))
            }
        }
    }
}

/// What was queued before: the queue's `seen` state, as 64-bit keys ([`Inner::key`]:
/// a whole-layer read sees a hundred thousand directories and files, and a key must cost
/// little memory). Each set is cleared when full (what it held is cached by then).
#[derive(Default)]
struct Seen {
    /// Directories read ahead (root catalog hash, path) and chunked files read ahead whole
    /// (their chunk list); at most [`MAX_SEEN_DIRS`].
    dirs: HashSet<u64>,
    /// ELF files whose libraries were queued (root catalog hash, path) and library names
    /// searched (root catalog hash, image root, search directories, name); at most
    /// [`MAX_SEEN_LIBRARIES`].
    libraries: HashSet<u64>,
    /// The last [`SCAN_WINDOW`] directories the reader opened files in, newest last.
    recent: VecDeque<Expanded>,
    /// Small files of the directories a scan read ahead (cleared when full).
    scanned: std::collections::HashMap<u64, usize>,
    /// The scan's walk and how far ahead of the reader it is.
    scan: Scan,
    /// A scan's larger downloads waiting for one of the [`SCAN_LARGER_AT_ONCE`] slots.
    larger_waiting: VecDeque<Job>,
}

/// A directory read ahead, for the scan detector.
struct Expanded {
    /// Its [`Key::Directory`].
    key: u64,
    /// Small files it holds (once a worker has listed it).
    files: Option<usize>,
    /// The distinct small files opened in it (keys of their paths).
    opened: HashSet<u64>,
}

impl Seen {
    /// Whether the reader reads every file of the directories it enters.
    fn scanning(&self) -> bool {
        self.recent
            .iter()
            .filter(|d| {
                d.files
                    .is_some_and(|n| n >= SCAN_MIN_FILES && d.opened.len() >= n)
            })
            .count()
            >= SCAN_AFTER
    }

    /// Makes room in the window: drops the oldest directory too small to tell (fewer than
    /// [`SCAN_MIN_FILES`] small files), else the oldest not listed yet, else the oldest.
    /// So a run of small directories (`/usr/share/doc`) neither makes nor ends a scan.
    fn forget_one(&mut self) {
        let small = |d: &Expanded| d.files.is_some_and(|n| n < SCAN_MIN_FILES);
        let at = self
            .recent
            .iter()
            .position(small)
            .or_else(|| self.recent.iter().position(|d| d.files.is_none()))
            .unwrap_or(0);
        self.recent.remove(at);
    }

    /// The scan stopped: its walk and the larger downloads waiting are dropped.
    fn end_scan(&mut self) {
        self.scan.end();
        self.larger_waiting.clear();
    }
}

/// ELF files and library names remembered (per mount process).
const MAX_SEEN_LIBRARIES: usize = 16 * 1024;

/// Adds `key` to `set`, clearing the set first when it holds `max` keys; `false` if the
/// key was there.
fn insert_bounded(set: &mut HashSet<u64>, key: u64, max: usize) -> bool {
    if set.contains(&key) {
        return false;
    }
    if set.len() >= max {
        set.clear();
    }
    set.insert(key)
}

/// What a [`Seen`] key stands for.
#[derive(Hash)]
enum Key<'a> {
    Directory(&'a ContentHash, &'a str),
    ChunkList(&'a ContentHash, &'a ContentHash, usize, u64),
    Elf(&'a ContentHash, &'a str),
    LibraryName(&'a ContentHash, &'a str, &'a [String], &'a str),
}

struct Inner {
    settings: ReadAheadSettings,
    /// Scan downloads of larger files in progress.
    larger: AtomicUsize,
    queue: JobQueue<Job, Seen>,
    /// Randomly keyed per process: no path can be made to collide on purpose.
    hasher: RandomState,
}

/// The read-ahead of one mount process: a bounded queue and its worker threads, stopped
/// (queue dropped, workers joined) on drop.
pub struct ReadAhead {
    inner: Arc<Inner>,
    workers: Workers,
}

impl ReadAhead {
    /// Starts the workers (none if read-ahead is disabled).
    ///
    /// # Errors
    /// A worker thread cannot be spawned.
    pub fn start(settings: ReadAheadSettings) -> std::io::Result<ReadAhead> {
        let threads = if settings.enabled {
            settings.threads
        } else {
            0
        };
        let inner = Arc::new(Inner {
            settings,
            larger: Default::default(),
            queue: JobQueue::new(Seen::default()),
            hasher: RandomState::new(),
        });
        let workers = Workers::spawn(threads, "read-ahead", &inner, Inner::work)?;
        Ok(ReadAhead { inner, workers })
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &ReadAheadSettings {
        &self.inner.settings
    }

    /// Process `pid` opened regular file `file` (`size` bytes) in directory `dir` (a
    /// repository path, `""` for the root) of revision `repo`: queues the directory's
    /// small regular files unless it was read ahead before, and notes the open for the
    /// scan detector and the scan's walk.
    pub fn directory(
        &self,
        repo: &Arc<MountedRevision>,
        dir: &str,
        file: &str,
        size: u64,
        pid: u32,
    ) {
        if !self.inner.settings.enabled {
            return;
        }
        let root_hash = &repo.revision().root_hash;
        let key = self.inner.key(Key::Directory(root_hash, dir));
        let small = size > 0 && size <= self.inner.settings.max_file_size;
        let file_key = self.inner.key(Key::Directory(root_hash, file));
        let mut queue = self.inner.queue.lock();
        let seen = &mut queue.seen;
        let at = match seen.recent.iter().position(|d| d.key == key) {
            Some(at) => at,
            None => {
                if seen.recent.len() >= SCAN_WINDOW {
                    seen.forget_one();
                }
                // A directory a scan read ahead: its small files are known already.
                let files = seen.scanned.get(&key).copied();
                seen.recent.push_back(Expanded {
                    key,
                    files,
                    opened: HashSet::new(),
                });
                seen.recent.len() - 1
            }
        };
        let expanded = &mut seen.recent[at];
        if small && expanded.opened.len() < self.inner.settings.max_files {
            expanded.opened.insert(file_key);
        }
        let follows = seen.scan.follows(pid);
        if follows {
            seen.scan.opened(file_key);
        }
        if !seen.scanning() {
            if seen.scan.under_way() {
                seen.end_scan();
            }
        } else if follows {
            seen.scan.widen_top(dir);
            if !seen.scan.walked(key) {
                // The reader left the walk behind (or jumped): a new walk from here. The
                // directory counts as walked until it starts, so that the reader's next
                // opens here do not ask again.
                let generation = seen.scan.generation;
                seen.scan.listed(key, generation);
                let name = file.rsplit_once('/').map_or(file, |(_, name)| name);
                let job = Job::Directory {
                    repo: repo.clone(),
                    dir: dir.to_string(),
                    pid,
                    restart: Some((name.to_string(), generation)),
                };
                self.inner.push_front(&mut queue, job);
                return;
            }
            // The reader caught up (or came back): the walk goes on, if it waits.
            if !seen.scan.stepping
                && !seen.scan.far_enough()
                && seen
                    .scan
                    .walk
                    .as_ref()
                    .is_some_and(|w| Arc::ptr_eq(&w.repo, repo))
            {
                seen.scan.stepping = true;
                let generation = seen.scan.generation;
                self.inner.push_front(&mut queue, Job::Walk(generation));
            }
            return;
        }
        if !insert_bounded(&mut queue.seen.dirs, key, MAX_SEEN_DIRS) {
            return;
        }
        let job = Job::Directory {
            repo: repo.clone(),
            dir: dir.to_string(),
            pid,
            restart: None,
        };
        self.inner.push_front(&mut queue, job);
    }

    /// Marks directory `dir` of `repo` as done without queueing anything: a file of it came
    /// in a startup pack, which lists what a start reads there better than a guess
    /// ([`crate::client::startup`]).
    pub fn known_directory(&self, repo: &Arc<MountedRevision>, dir: &str) {
        let key = self
            .inner
            .key(Key::Directory(&repo.revision().root_hash, dir));
        insert_bounded(&mut self.inner.queue.lock().seen.dirs, key, MAX_SEEN_DIRS);
    }

    /// Regular file `path` of `repo` is being read from its start, `head` being the cached
    /// file that holds its first bytes (the whole object, or a chunked file's first
    /// chunk) and `content` where the rest is: if it is an ELF file seen for the first
    /// time, queues, ahead of other work, what the loader will open after it (its
    /// interpreter and libraries, [`crate::client::elf`]), found in the image root it lies
    /// in ([`crate::client::library_search`]). Other files cost one 4-byte `pread`.
    pub fn opened_file(
        &self,
        repo: &Arc<MountedRevision>,
        path: &str,
        head: &std::fs::File,
        content: impl FnOnce() -> Content,
    ) {
        if !self.inner.settings.enabled
            || !self.inner.settings.libraries
            || namespace::paths::image_root_of(path).is_none()
        {
            return;
        }
        let mut magic = [0u8; 4];
        if !matches!(head.read_at(&mut magic, 0), Ok(4)) || magic != elf::MAGIC {
            return;
        }
        let key = self.inner.key(Key::Elf(&repo.revision().root_hash, path));
        let mut queue = self.inner.queue.lock();
        if !self.inner.remember(&mut queue, key) {
            return;
        }
        let job = Job::Needs(repo.clone(), path.to_string(), path.to_string(), content());
        self.inner.push_front(&mut queue, job);
    }

    /// A read of chunk `index` of a chunked file (`compressed` as its catalog row says):
    /// queues the file's other chunks the first time if the file is small enough to be
    /// read ahead whole, else (a larger file, or a later read) the next
    /// [`ReadAheadSettings::chunks_ahead`] chunks.
    pub fn chunks_after(
        &self,
        repo: &Arc<MountedRevision>,
        chunks: &[Chunk],
        index: usize,
        compressed: bool,
    ) {
        if !self.inner.settings.enabled || chunks.is_empty() {
            return;
        }
        let total: u64 = chunks.iter().map(|c| c.size).sum();
        // A file is known by its whole chunk list (first and last chunk, count, size); the
        // key is only made for a file small enough to be read ahead whole.
        let whole = total <= self.inner.settings.whole_chunked_size && {
            let key = self.inner.key(Key::ChunkList(
                &chunks[0].hash,
                &chunks[chunks.len() - 1].hash,
                chunks.len(),
                total,
            ));
            self.inner.queue.lock().seen.dirs.insert(key)
        };
        let ahead: Vec<&Chunk> = if whole {
            // After the read first, then the ones before it.
            chunks
                .iter()
                .skip(index + 1)
                .chain(chunks.iter().take(index))
                .collect()
        } else {
            chunks
                .iter()
                .skip(index + 1)
                .take(self.inner.settings.chunks_ahead)
                .collect()
        };
        let reqs: Vec<ObjectRequest> = ahead
            .into_iter()
            .map(|chunk| ObjectRequest::chunk(chunk, compressed))
            .filter(|req| !repo.cache().is_cached(req))
            .collect();
        let mut queue = self.inner.queue.lock();
        // Chunks of a file being read go before directory read-ahead, in file order.
        for req in reqs.into_iter().rev() {
            self.inner
                .push_front(&mut queue, Job::Object(repo.clone(), req));
        }
    }

    /// Jobs waiting (for tests and metrics).
    pub fn queued(&self) -> usize {
        self.inner.queue.lock().jobs.len()
    }

    /// Stops the workers: queued jobs are dropped, fetches in progress finish.
    pub fn stop(&mut self) {
        self.workers.stop(&self.inner.queue);
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Inner {
    /// Queues `job` to be taken next: the directory a program has just entered is the
    /// one it reads now, before what earlier directories left queued.
    /// When the queue is full, the oldest job is dropped for it.
    fn push_front(&self, queue: &mut Queue<Job, Seen>, job: Job) {
        if queue.jobs.len() >= MAX_QUEUED
            && let Some(Job::Walk(generation)) = queue.jobs.pop_back()
            && generation == queue.seen.scan.generation
        {
            // The walk's step was dropped: the reader's next open queues it again.
            queue.seen.scan.stepping = false;
        }
        queue.jobs.push_front(job);
        self.queue.notify_one();
    }

    /// The [`Seen`] key of `what`.
    fn key(&self, what: Key<'_>) -> u64 {
        self.hasher.hash_one(what)
    }

    /// Adds `key` to the ELF files and library names seen; `false` if it was there.
    fn remember(&self, queue: &mut Queue<Job, Seen>, key: u64) -> bool {
        insert_bounded(&mut queue.seen.libraries, key, MAX_SEEN_LIBRARIES)
    }

    /// A worker: takes jobs until stopped.
    fn work(&self) {
        while let Some(job) = self.queue.next() {
            match job {
                Job::Directory {
                    repo,
                    dir,
                    pid,
                    restart,
                } => self.expand(&repo, &dir, pid, restart),
                Job::Walk(generation) => {
                    let mut queue = self.queue.lock();
                    let seen = &mut queue.seen;
                    if generation != seen.scan.generation {
                        continue;
                    }
                    seen.scan.stepping = false;
                    if !seen.scanning() {
                        seen.end_scan();
                        continue;
                    }
                    // A reader that paused, or is far enough behind: the walk waits for
                    // its next open.
                    if seen.scan.reader_idle() || seen.scan.far_enough() {
                        tracing::trace!(
                            ahead = seen.scan.ahead_bytes(),
                            "read-ahead: the walk waits for the reader"
                        );
                        continue;
                    }
                    let Some(walk) = seen.scan.walk.take() else {
                        continue;
                    };
                    seen.scan.stepping = true;
                    drop(queue);
                    self.walk(walk);
                }
                Job::Object(repo, req) => {
                    if !self.wait_for_demand(&repo) {
                        return;
                    }
                    prefetch(&repo, &req);
                }
                Job::Scanned {
                    repo,
                    req,
                    generation,
                    larger,
                } => {
                    if generation != self.queue.lock().seen.scan.generation {
                        continue;
                    }
                    if !self.wait_for_demand(&repo) {
                        return;
                    }
                    if !larger {
                        prefetch(&repo, &req);
                        continue;
                    }
                    // Taken, or queued to wait, under the lock: a slot freed meanwhile
                    // looks for waiting downloads under it too.
                    let mut queue = self.queue.lock();
                    let Some(slot) = LargerSlot::take(&self.larger) else {
                        // All slots busy: it waits for the next one freed, in order.
                        queue.seen.larger_waiting.push_back(Job::Scanned {
                            repo,
                            req,
                            generation,
                            larger,
                        });
                        continue;
                    };
                    drop(queue);
                    prefetch(&repo, &req);
                    drop(slot);
                    let mut queue = self.queue.lock();
                    // The next waiting of the current walk (older walks' are dropped).
                    while let Some(next) = queue.seen.larger_waiting.pop_front() {
                        if matches!(&next, Job::Scanned { generation, .. }
                            if *generation == queue.seen.scan.generation)
                        {
                            self.push_front(&mut queue, next);
                            break;
                        }
                    }
                }
                Job::Needs(repo, path, origin, content) => {
                    if !self.wait_for_demand(&repo) {
                        return;
                    }
                    if let Some(deps) = content.dependencies(repo.cache()) {
                        self.needs(&repo, &path, &origin, &deps);
                    }
                }
                Job::Library(repo, library) => {
                    if !self.wait_for_demand(&repo) {
                        return;
                    }
                    self.library(&repo, library);
                }
            }
        }
    }

    /// Demand first: waits while enough demand downloads are in flight; `false` if the
    /// queue is stopping meanwhile.
    fn wait_for_demand(&self, repo: &MountedRevision) -> bool {
        while repo.cache().demand_in_flight() >= self.settings.pause_when_demand {
            if self.queue.lock().stopping() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Queues what the loader opens after the ELF file at `path` (found at `origin`, the
    /// path whose directory is its `$ORIGIN`) with dependencies `deps`: its interpreter and
    /// the libraries it needs that no earlier file queued, in the order the loader asks
    /// for them, ahead of other work.
    fn needs(
        &self,
        repo: &Arc<MountedRevision>,
        path: &str,
        origin: &str,
        deps: &elf::Dependencies,
    ) {
        let Some(root) = namespace::paths::image_root_of(path) else {
            return;
        };
        let dirs = library_search::search_dirs(root, origin, deps);
        let root_hash = &repo.revision().root_hash;
        // Names are searched once per image root and search path.
        let key =
            |name: &str, dirs: &[String]| self.key(Key::LibraryName(root_hash, root, dirs, name));
        let interpreter = deps
            .interpreter
            .as_deref()
            .filter(|i| i.starts_with('/'))
            .map(|i| (key(i, &[]), i));
        let names = deps
            .needed
            .iter()
            .map(|name| (key(name, &dirs), name.as_str()));
        let mut found = Vec::new();
        for (key, name) in interpreter.into_iter().chain(names) {
            if !self.remember(&mut self.queue.lock(), key) {
                continue; // searched for an earlier file
            }
            let library = if name.starts_with('/') {
                library_search::resolve(repo, root, name)
            } else {
                library_search::find_library(repo, root, &dirs, name)
            };
            if let Some(library) = library {
                found.push(library);
            }
        }
        if found.is_empty() {
            return;
        }
        tracing::debug!(
            path,
            libraries = ?found.iter().map(|l| l.path.as_str()).collect::<Vec<_>>(),
            "read-ahead: libraries queued"
        );
        let mut queue = self.queue.lock();
        for library in found.into_iter().rev() {
            self.push_front(&mut queue, Job::Library(repo.clone(), library));
        }
    }

    /// Fetches `library` (a chunked one: all its chunks if it is small enough to be read
    /// ahead whole, else its headers only), then queues what it needs in turn.
    fn library(&self, repo: &Arc<MountedRevision>, library: Library) {
        let entry = &library.found.entry;
        let key = self.key(Key::Elf(&repo.revision().root_hash, &library.path));
        if entry.is_chunked() {
            let chunks = match repo.chunks(&library.found.catalog, &library.path, entry.size) {
                Ok(chunks) => chunks,
                Err(e) => {
                    tracing::debug!(path = library.path, error = %e, "read-ahead: no chunk list");
                    return;
                }
            };
            let whole = entry.size <= self.settings.whole_chunked_size;
            let reqs: Vec<ObjectRequest> = chunks
                .iter()
                .filter(|_| whole)
                .map(|chunk| ObjectRequest::chunk(chunk, entry.compressed))
                .filter(|req| !repo.cache().is_cached(req))
                .collect();
            let mut queue = self.queue.lock();
            for req in reqs.into_iter().rev() {
                self.push_front(&mut queue, Job::Object(repo.clone(), req));
            }
            // Its headers first (the first chunk, shared with the chunk jobs above).
            if self.remember(&mut queue, key) {
                let content = Content::Chunked(chunks, entry.compressed);
                let job = Job::Needs(repo.clone(), library.path, library.searched, content);
                self.push_front(&mut queue, job);
            }
            return;
        }
        let Some(req) = ObjectRequest::whole(entry) else {
            return;
        };
        // Waits for a download in flight (the loader's own, often): its headers are next.
        let file = match repo.cache().prefetch_and_open(&req) {
            Ok(Some(file)) => file,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(object = %req.hash, error = %e, "read-ahead failed");
                return;
            }
        };
        if self.remember(&mut self.queue.lock(), key)
            && let Some(deps) = elf::dependencies(&*file)
        {
            self.needs(repo, &library.path, &library.searched, &deps);
        }
    }

    /// Queues the small regular files of `dir`, where thread `pid` opened a file; for a
    /// scanner ([`Seen::scanning`]), starts a [`Walk`] there instead, when no scan is
    /// under way or when its reader left the current walk behind (`restart`: the entry it
    /// opened and the walk's generation; the new walk leaves out the subdirectories listed
    /// before that entry, and keeps its files).
    fn expand(
        &self,
        repo: &Arc<MountedRevision>,
        dir: &str,
        pid: u32,
        restart: Option<(String, u64)>,
    ) {
        let children = match repo.list(dir) {
            Ok(children) => children,
            Err(e) => {
                tracing::debug!(dir, error = %e, "read-ahead: listing failed");
                return;
            }
        };
        let small: Vec<ObjectRequest> = children
            .iter()
            .filter_map(|found| self.small_file(&found.entry))
            .collect();
        let key = self.key(Key::Directory(&repo.revision().root_hash, dir));
        let mut queue = self.queue.lock();
        let seen = &mut queue.seen;
        if let Some(expanded) = seen.recent.iter_mut().find(|d| d.key == key) {
            expanded.files = Some(small.len());
        }
        // A restart only for the walk it was asked for (a newer restart, or another scan,
        // came first otherwise).
        let from = restart
            .filter(|(_, generation)| *generation == seen.scan.generation)
            .map(|(name, _)| name);
        let from = from.as_deref();
        if seen.scanning() && (from.is_some() || !seen.scan.under_way()) {
            // Walk from here, in the reader's order; any older walk stops, and what it
            // queued with it.
            let generation = seen.scan.start(key, dir, pid);
            seen.larger_waiting.clear();
            tracing::debug!(dir, from, "read-ahead: a scan walks from here");
            // The subdirectories before that entry are behind the reader (its files are
            // kept: a reader need not open them in listing order, and cached ones cost
            // nothing to skip).
            let at = from.and_then(|name| children.iter().position(|f| f.entry.name == name));
            let rest: VecDeque<_> = children
                .into_iter()
                .enumerate()
                .filter(|(i, found)| {
                    at.is_none_or(|at| *i >= at || found.entry.kind != EntryKind::Directory)
                })
                .map(|(_, found)| found)
                .collect();
            seen.scan.walk = Some(Box::new(Walk {
                repo: repo.clone(),
                generation,
                stack: vec![Frame {
                    dir: dir.to_string(),
                    rest,
                }],
                start: dir.to_string(),
                first: true,
            }));
            seen.scan.stepping = true;
            self.push_front(&mut queue, Job::Walk(generation));
            return;
        }
        drop(queue);
        let bytes: u64 = small.iter().filter_map(|r| r.size).sum();
        if small.len() > self.settings.max_files || bytes > self.settings.max_dir_bytes {
            tracing::debug!(
                dir,
                files = small.len(),
                bytes,
                "read-ahead: directory too big"
            );
            return;
        }
        tracing::debug!(
            dir,
            files = small.len(),
            bytes,
            "read-ahead: directory queued"
        );
        let mut queue = self.queue.lock();
        // In the directory's order, ahead of older work.
        for req in small.into_iter().rev() {
            self.push_front(&mut queue, Job::Object(repo.clone(), req));
        }
    }

    /// The request for `entry` if it is a small regular file, read ahead whole. Chunked
    /// files have no hash of their own: their chunks are read ahead when they are read.
    fn small_file(&self, entry: &catalog::Entry) -> Option<ObjectRequest> {
        if entry.kind != EntryKind::Regular
            || entry.size == 0
            || entry.size > self.settings.max_file_size
        {
            return None;
        }
        ObjectRequest::whole(entry)
    }

    /// The next step of `walk`: queues up to [`WALK_STEP_JOBS`] fetches (or
    /// [`WALK_STEP_BYTES`], or after [`WALK_STEP_LISTINGS`] directories listed) in the
    /// reader's order, entering subdirectories where they stand and, when the walk's
    /// directory is done, going on in its parent after it (up to the scan's top). The
    /// first step (the reader's own directory) goes to the front of the queue; later ones
    /// behind everything queued before, the walk's earlier steps among it. The next step
    /// is queued halfway through this one's fetches, so the workers never run dry while
    /// it lists.
    fn walk(&self, mut walk: Box<Walk>) {
        let began = std::time::Instant::now();
        let root_hash = walk.repo.revision().root_hash;
        let mut jobs: Vec<(Job, u64, u64)> = Vec::new();
        let mut bytes = 0u64;
        let mut listings = 0;
        let mut done = false;
        while jobs.len() < WALK_STEP_JOBS
            && bytes < WALK_STEP_BYTES
            && listings < WALK_STEP_LISTINGS
        {
            let Some(frame) = walk.stack.last_mut() else {
                listings += 1;
                if !self.walk_up(&mut walk) {
                    done = true;
                    break;
                }
                continue;
            };
            let Some(found) = frame.rest.pop_front() else {
                walk.stack.pop();
                continue;
            };
            let e = &found.entry;
            let path = format!("{}/{}", frame.dir, e.name);
            let scanned = |req: ObjectRequest, larger: bool| Job::Scanned {
                repo: walk.repo.clone(),
                req,
                generation: walk.generation,
                larger,
            };
            if let Some(req) = self.small_file(e) {
                bytes += e.size;
                let file = self.key(Key::Directory(&root_hash, &path));
                jobs.push((scanned(req, false), file, e.size));
                continue;
            }
            match e.kind {
                EntryKind::Directory => {
                    listings += 1;
                    if let Some(frame) = self.walk_into(&walk, path) {
                        walk.stack.push(frame);
                    }
                }
                EntryKind::Regular
                    if e.size > self.settings.max_file_size
                        && e.size <= self.settings.whole_chunked_size =>
                {
                    bytes += e.size;
                    let file = self.key(Key::Directory(&root_hash, &path));
                    // The file counts as ahead once, with its first object.
                    let mut size = e.size;
                    for req in self.larger_file(&walk.repo, &found, &path) {
                        jobs.push((scanned(req, true), file, std::mem::take(&mut size)));
                    }
                }
                _ => {}
            }
        }
        let mut queue = self.queue.lock();
        let scan = &mut queue.seen.scan;
        tracing::trace!(
            at = walk.stack.last().map_or("", |f| f.dir.as_str()),
            jobs = jobs.len(),
            ahead = scan.ahead_bytes(),
            took_us = began.elapsed().as_micros() as u64,
            "read-ahead: walk step"
        );
        if walk.generation != scan.generation {
            return;
        }
        for (_, file, size) in &jobs {
            scan.queued(*file, *size);
        }
        let first = std::mem::replace(&mut walk.first, false);
        let generation = walk.generation;
        if done {
            tracing::debug!(start = walk.start, "read-ahead: a scan's walk is done");
            scan.stepping = false;
        } else {
            scan.walk = Some(walk);
        }
        let n = jobs.len();
        let mut jobs: Vec<Job> = jobs.into_iter().map(|(job, _, _)| job).collect();
        if !done {
            jobs.insert(n / 2, Job::Walk(generation));
        }
        if first {
            // The reader's own directory: ahead of everything.
            for job in jobs.into_iter().rev() {
                self.push_front(&mut queue, job);
            }
        } else {
            for job in jobs {
                queue.jobs.push_back(job);
                self.queue.notify_one();
            }
        }
    }

    /// Lists subdirectory `dir` for `walk`; what it holds counts for the scan detector.
    fn walk_into(&self, walk: &Walk, dir: String) -> Option<Frame> {
        let children = match walk.repo.list(&dir) {
            Ok(children) => children,
            Err(e) => {
                tracing::debug!(dir, error = %e, "read-ahead: listing failed");
                return None;
            }
        };
        let files = children
            .iter()
            .filter(|found| self.small_file(&found.entry).is_some())
            .count();
        let key = self.key(Key::Directory(&walk.repo.revision().root_hash, &dir));
        let mut queue = self.queue.lock();
        let seen = &mut queue.seen;
        if seen.scanned.len() >= MAX_SEEN_DIRS {
            seen.scanned.clear();
        }
        seen.scanned.insert(key, files);
        seen.scan.listed(key, walk.generation);
        Some(Frame {
            dir,
            rest: children.into(),
        })
    }

    /// The walk finished the directory it started in: it goes on in the parent, after
    /// that directory, if the parent is within the scan's top; `false` if not.
    fn walk_up(&self, walk: &mut Walk) -> bool {
        let top = self.queue.lock().seen.scan.top.clone();
        let Some(top) = top else {
            return false;
        };
        let Some((parent, name)) = walk.start.rsplit_once('/') else {
            return false;
        };
        if walk.start == top || common_ancestor(&top, parent) != top {
            return false;
        }
        let children = match walk.repo.list(parent) {
            Ok(children) => children,
            Err(e) => {
                tracing::debug!(dir = parent, error = %e, "read-ahead: listing failed");
                return false;
            }
        };
        // The rest of the parent is this walk's: a reader opening a file there does not
        // start another.
        let key = self.key(Key::Directory(&walk.repo.revision().root_hash, parent));
        self.queue.lock().seen.scan.listed(key, walk.generation);
        let rest: VecDeque<_> = children
            .into_iter()
            .skip_while(|found| found.entry.name != name)
            .skip(1)
            .collect();
        walk.stack.push(Frame {
            dir: parent.to_string(),
            rest,
        });
        walk.start = parent.to_string();
        true
    }

    /// The objects of a larger regular file (chunked: its chunks), for a scan.
    fn larger_file(
        &self,
        repo: &MountedRevision,
        found: &crate::client::repository::Found,
        path: &str,
    ) -> Vec<ObjectRequest> {
        let e = &found.entry;
        if !e.is_chunked() {
            return ObjectRequest::whole(e).into_iter().collect();
        }
        match repo.chunks(&found.catalog, path, e.size) {
            Ok(chunks) => chunks
                .iter()
                .map(|chunk| ObjectRequest::chunk(chunk, e.compressed))
                .collect(),
            Err(err) => {
                tracing::debug!(path, error = %err, "read-ahead: no chunk list");
                Vec::new()
            }
        }
    }
}

/// Fetches `req` into the cache ahead of reads; a failure is only logged (a read fetches
/// it again).
fn prefetch(repo: &MountedRevision, req: &ObjectRequest) {
    if let Err(e) = repo.cache().prefetch(req) {
        tracing::debug!(object = %req.hash, error = %e, "read-ahead failed");
    }
}

/// One of the [`SCAN_LARGER_AT_ONCE`] slots for a scan's larger downloads, freed on drop.
struct LargerSlot<'a>(&'a AtomicUsize);

impl<'a> LargerSlot<'a> {
    fn take(count: &'a AtomicUsize) -> Option<LargerSlot<'a>> {
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < SCAN_LARGER_AT_ONCE).then_some(n + 1)
            })
            .ok()
            .map(|_| LargerSlot(count))
    }
}

impl Drop for LargerSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::{Expanded, SCAN_WINDOW, Seen};

    /// The reader entered a directory of `files` small files and opened `opened` of them.
    fn enter(seen: &mut Seen, key: u64, files: usize, opened: u64) {
        if seen.recent.len() >= SCAN_WINDOW {
            seen.forget_one();
        }
        seen.recent.push_back(Expanded {
            key,
            files: Some(files),
            opened: (0..opened).collect(),
        });
    }

    #[test]
    fn small_directories_neither_start_nor_end_a_scan() {
        let mut seen = Seen::default();
        for key in 0..20 {
            enter(&mut seen, key, 2, 2);
        }
        assert!(!seen.scanning(), "small directories started a scan");
        for key in 100..104 {
            enter(&mut seen, key, 5, 5);
        }
        assert!(seen.scanning());
        // /usr/share/doc: thousands of directories of a file or two.
        for key in 200..2200 {
            enter(&mut seen, key, 2, 2);
        }
        assert!(seen.scanning(), "small directories ended the scan");
        // Directories read in part end it.
        for key in 3000..3008 {
            enter(&mut seen, key, 5, 2);
        }
        assert!(!seen.scanning());
    }
}
