//! Prefetching an image's startup working set: its startup packs (docs/format.md §13),
//! published by `strata-publisher startup` under
//! `.metadata/<image>/platforms/<platform>/startup/` (docs/namespace.md §9).
//!
//! A start that reads a few hundred files in dependency order pays one round trip per
//! miss; at 50 ms from the server that is most of its time. A pack holds the objects the
//! start read, in the order it read them, so a few plain GETs — cached by every Squid on
//! the way, like any object — bring the whole working set.
//!
//! Prefetching starts when someone asks for it: `strata-snapshotter pull`, a Prepare of a
//! remote snapshot that names its image, or anyone reading the extended attribute
//! [`PREFETCH_XATTR`] of a `startup` directory (or of one pack) through the mount
//! (`getfattr -n user.strata.prefetch DIR`). The request returns once a small first pack
//! (at most 128 KiB: the layers' catalogs, which `pull` looks up next) is
//! fetched and unpacked by the requesting thread; the other packs are
//! fetched in the background by [`PrefetchSettings::threads`] workers (at a lower CPU
//! priority: nice + 10), in pack order
//! (the first pack holds what a start reads first). Each pack is downloaded whole with a
//! plain GET, verified against its own hash, parsed, and every member is verified against
//! *its* hash and size before it enters the cache (unpacking takes one of as many slots
//! as the machine has CPUs: the start runs on the same CPUs)
//! ([`ObjectCache::commit_stored`](crate::client::cache::ObjectCache::commit_stored)): a
//! member that fails is dropped (and counted), the rest are kept. Objects already cached
//! are skipped. Reads never wait for a pack's download: a read of an object whose pack is
//! still on its way, or waiting for an unpack slot, fetches the object on its own, as
//! without packs; once a pack's unpacking starts, its members are claimed
//! ([`ObjectCache::claim_pack`](crate::client::cache::ObjectCache::claim_pack)), and a read
//! of one waits the milliseconds until it is unpacked (next, at the worker's own priority). Prefetching never evicts: a member
//! that does not fit under the quota is skipped; [`PrefetchSettings::max_bytes`] bounds the
//! packs queued per request, [`MAX_PACK_BYTES`] one pack. A pack that cannot be used (download, hash, format) is logged
//! and counted; its objects are then fetched one by one when read, as they would be without
//! it. Counters (packs, failures, rejected members, bytes prefetched and later read, time)
//! are kept in the cache index ([`crate::client::quota::CacheStats`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use catalog::{ContentHash, EntryKind, StartupPack, Suffix};
use namespace::paths;

use crate::client::cache::ObjectRequest;
use crate::client::quota::PrefetchCounts;
use crate::client::repository::MountedRevision;
use crate::client::work_queue::{JobQueue, Workers};
use crate::{Error, Result};

/// The extended attribute whose read starts the prefetch of a `startup` directory or pack.
pub const PREFETCH_XATTR: &str = "user.strata.prefetch";

/// Asks the mount that serves `startup_dir` (an image's `startup` directory, as a path in
/// the mount) to prefetch its packs: one `getxattr` of [`PREFETCH_XATTR`], answered once
/// the small first pack is in (a round trip), the others coming in the background. `Ok(None)` if the image has no startup packs or the mount does not prefetch
/// (another client, `--no-prefetch`); else the mount's answer (`N pack(s), B bytes`).
/// Blocking.
///
/// # Errors
/// [`Error::Io`] naming the directory for any other failure of the request.
pub fn ask_mount(startup_dir: &std::path::Path) -> Result<Option<String>> {
    match xattr::get(startup_dir, PREFETCH_XATTR) {
        Ok(value) => Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned())),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(nix::libc::ENODATA)
                || e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) =>
        {
            Ok(None)
        }
        Err(source) => Err(Error::Io {
            context: format!("asking for the prefetch of {}", startup_dir.display()),
            source,
        }),
    }
}

/// A pack larger than this is not fetched (it is held in memory while it is unpacked; the
/// publisher makes them about 2 MiB).
pub const MAX_PACK_BYTES: u64 = 64 * 1024 * 1024;

/// A first pack at most this large is fetched and unpacked before a request is answered
/// (the publisher makes a first pack of catalogs of at most 64 KiB).
const INLINE_PACK_BYTES: u64 = 128 * 1024;

/// Packs queued at most; past it, new requests are refused (logged).
const MAX_QUEUED: usize = 4096;

/// How startup packs are prefetched (`prefetch*` keys of the mount's config file, and
/// `mount` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefetchSettings {
    /// Whether packs are prefetched at all.
    pub enabled: bool,
    /// Packs fetched at the same time.
    pub threads: usize,
    /// Bytes of packs queued per request at most (packs past it are left out).
    pub max_bytes: u64,
}

impl Default for PrefetchSettings {
    fn default() -> Self {
        PrefetchSettings {
            enabled: true,
            threads: 8,
            max_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// How much lower the prefetch workers' CPU priority is than the mount's (nice value
/// added). Unpacking is CPU work on the CPUs the start runs on; what the start waits for
/// goes first: the pull's own reads and containerd's calls, the mount's FUSE threads (a
/// container in a cgroup of its own is weighed by its cgroup). Measured (2 CPUs, twelve
/// starts alternating, 0 ms): `pull` of the gcc image 0.049 s against 0.079 s (medians),
/// numpy/scipy 0.053 against 0.072; the cold run unchanged, also at 50 ms. Unpacking does
/// not wait for CPU that nobody else wants, and a member a read waits for is unpacked at
/// the worker's own priority ([`WorkerPriority::raised`]).
const PREFETCH_NICE: i32 = 10;

/// A prefetch worker thread's priority: its own, and lowered by [`PREFETCH_NICE`] (at
/// most to 19) while it works for nobody in particular.
struct WorkerPriority {
    tid: rustix::thread::Pid,
    own: i32,
    lowered: i32,
}

impl WorkerPriority {
    /// Lowers the calling thread's priority; `None` (logged) if the system refuses, which
    /// only costs the difference.
    fn lower() -> Option<WorkerPriority> {
        let tid = rustix::thread::gettid();
        let set = rustix::process::getpriority_process(Some(tid)).and_then(|own| {
            let lowered = (own + PREFETCH_NICE).min(19);
            rustix::process::setpriority_process(Some(tid), lowered).map(|()| WorkerPriority {
                tid,
                own,
                lowered,
            })
        });
        set.map_err(|e| tracing::debug!(error = %e, "prefetch worker keeps its priority"))
            .ok()
    }

    /// The thread's own priority until the guard drops (a read waits for what it does);
    /// nothing if the system refuses (raising a priority needs `CAP_SYS_NICE`).
    fn raised(&self) -> RaisedPriority<'_> {
        let raised = rustix::process::setpriority_process(Some(self.tid), self.own).is_ok();
        RaisedPriority(self, raised)
    }
}

/// [`WorkerPriority::raised`]: lowered again on drop.
struct RaisedPriority<'a>(&'a WorkerPriority, bool);

impl Drop for RaisedPriority<'_> {
    fn drop(&mut self) {
        if self.1 {
            let _ = rustix::process::setpriority_process(Some(self.0.tid), self.0.lowered);
        }
    }
}

/// One queued pack.
struct Job {
    repo: Arc<MountedRevision>,
    path: String,
    req: ObjectRequest,
    /// Its number in the order packs were queued (unpacking goes by it).
    order: u64,
}

/// Packs queued, in progress or done (by hash); a failed one is forgotten so that a later
/// request tries again: the queue's `seen` state.
type Seen = HashSet<ContentHash>;

struct Inner {
    settings: PrefetchSettings,
    queue: JobQueue<Job, Seen>,
    /// Packs downloaded all at once, unpacked a few at a time ([`UnpackSlots`]).
    unpacking: UnpackSlots,
    /// Packs queued since the start (numbers them).
    queued_so_far: AtomicU64,
}

/// How many downloaded packs are unpacked (parsed, each member verified, inflated and
/// written) at once: as many as the machine has CPUs. Unpacking is CPU work; the start
/// the packs are for runs on the same CPUs, and the scheduler shares them per thread:
/// with every worker unpacking (8 on 2 CPUs) the start's threads got a ninth of the
/// machine each instead of a third, and the first pack, which the start needs first,
/// shared its CPU with seven others. Downloads are not limited by this. A free slot goes
/// to the waiting pack queued first (packs are queued in the order the start reads
/// them), not to whichever download ended first.
struct UnpackSlots {
    state: Mutex<SlotState>,
    freed: Condvar,
}

struct SlotState {
    free: usize,
    /// Queue numbers of the packs waiting for a slot.
    waiting: std::collections::BTreeSet<u64>,
}

impl UnpackSlots {
    fn new(slots: usize) -> UnpackSlots {
        UnpackSlots {
            state: Mutex::new(SlotState {
                free: slots.max(1),
                waiting: std::collections::BTreeSet::new(),
            }),
            freed: Condvar::new(),
        }
    }

    /// Waits for a free slot for the pack queued as number `order`, letting packs queued
    /// before it that are waiting too go first; the slot is given back when the returned
    /// guard drops.
    fn take(&self, order: u64) -> UnpackSlot<'_> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.waiting.insert(order);
        while state.free == 0 || state.waiting.first() != Some(&order) {
            state = self
                .freed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.waiting.remove(&order);
        state.free -= 1;
        // The next in line may find a slot free too.
        self.freed.notify_all();
        UnpackSlot(self)
    }
}

/// A taken unpacking slot.
struct UnpackSlot<'a>(&'a UnpackSlots);

impl Drop for UnpackSlot<'_> {
    fn drop(&mut self) {
        self.0
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .free += 1;
        self.0.freed.notify_all();
    }
}

/// The startup-pack prefetcher of one mount process; stopped (queue dropped, workers
/// joined) on drop.
pub struct StartupPrefetch {
    inner: Arc<Inner>,
    workers: Workers,
}

impl StartupPrefetch {
    /// Starts the workers (none if prefetching is disabled).
    ///
    /// # Errors
    /// A worker thread cannot be spawned.
    pub fn start(settings: PrefetchSettings) -> std::io::Result<StartupPrefetch> {
        let threads = if settings.enabled {
            settings.threads.max(1)
        } else {
            0
        };
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let inner = Arc::new(Inner {
            unpacking: UnpackSlots::new(cpus.min(threads)),
            queued_so_far: AtomicU64::new(0),
            settings,
            queue: JobQueue::new(HashSet::new()),
        });
        let workers = Workers::spawn(threads, "prefetch", &inner, Inner::work)?;
        Ok(StartupPrefetch { inner, workers })
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &PrefetchSettings {
        &self.inner.settings
    }

    /// Queues the packs of `path` (a repository path: a `startup` directory, whose packs
    /// are taken in name order, or one pack) of revision `repo`, leaving out packs queued
    /// before and those past [`PrefetchSettings::max_bytes`]. Returns the answer to the
    /// request, the same however often it is asked (`getxattr` asks twice: size, then
    /// value): how many packs and bytes it covers, whether queued now or before. Waits only
    /// for a newly queued first pack of at most 128 KiB, fetched and unpacked
    /// on the calling thread; a failure of it is logged and counted, not returned.
    ///
    /// # Errors
    /// [`Error::NotFound`] if `path` is neither; catalog errors.
    pub fn request(&self, repo: &Arc<MountedRevision>, path: &str) -> Result<String> {
        if !self.inner.settings.enabled {
            return Ok("disabled".into());
        }
        let found = repo
            .lookup(path)?
            .ok_or_else(|| Error::NotFound(path.to_string()))?;
        let name = path.rsplit('/').next().unwrap_or("");
        let whole_directory = found.entry.kind == EntryKind::Directory;
        let packs: Vec<(String, catalog::Entry)> = match found.entry.kind {
            EntryKind::Directory => repo
                .list(path)?
                .into_iter()
                .filter(|f| {
                    f.entry.kind == EntryKind::Regular && paths::is_pack_name(&f.entry.name)
                })
                .map(|f| (format!("{path}/{}", f.entry.name), f.entry))
                .collect(),
            EntryKind::Regular if paths::is_pack_name(name) => {
                vec![(path.to_string(), found.entry)]
            }
            _ => return Err(Error::NotFound(format!("{path}: no startup pack"))),
        };
        let mut admitted = 0usize;
        let mut queued = 0usize;
        let mut bytes = 0u64;
        let mut left_out = 0usize;
        // A small first pack (the layers' catalogs, which `pull` looks up next) is brought
        // in before the answer: the lookups then find them claimed or cached, never fetch
        // them on their own (a round trip on the pull's path when they came first).
        let mut first: Option<Job> = None;
        let mut queue = self.inner.queue.lock();
        for (pack_path, entry) in packs {
            let Some(hash) = entry.hash else {
                continue;
            };
            if bytes + entry.size > self.inner.settings.max_bytes
                || entry.size > MAX_PACK_BYTES
                || queue.jobs.len() >= MAX_QUEUED
            {
                left_out += 1;
                continue;
            }
            bytes += entry.size;
            admitted += 1;
            if !queue.seen.insert(hash) {
                continue;
            }
            queued += 1;
            let job = Job {
                repo: repo.clone(),
                path: pack_path,
                req: ObjectRequest {
                    hash,
                    suffix: Suffix::None,
                    compressed: entry.compressed,
                    size: Some(entry.size),
                },
                order: self.inner.queued_so_far.fetch_add(1, Ordering::Relaxed),
            };
            // Only the first pack of a directory (its catalogs), when it is small.
            if whole_directory
                && entry.name == paths::pack_name(0)
                && entry.size <= INLINE_PACK_BYTES
            {
                first = Some(job);
                continue;
            }
            queue.jobs.push_back(job);
            self.inner.queue.notify_one();
        }
        drop(queue);
        if let Some(job) = first {
            self.inner.run_first(&job);
        }
        if left_out > 0 {
            tracing::warn!(
                path,
                left_out,
                max_bytes = self.inner.settings.max_bytes,
                "startup packs left out (prefetch size bound)"
            );
        }
        if queued > 0 {
            tracing::info!(path, packs = queued, "startup prefetch queued");
        }
        Ok(format!("{admitted} pack(s), {bytes} bytes"))
    }

    /// Packs waiting (for tests and metrics).
    pub fn queued(&self) -> usize {
        self.inner.queue.lock().jobs.len()
    }

    /// Stops the workers: queued packs are dropped, those in progress finish.
    pub fn stop(&mut self) {
        self.workers.stop(&self.inner.queue);
    }
}

impl Drop for StartupPrefetch {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Inner {
    /// A worker: takes packs until stopped.
    fn work(&self) {
        let priority = WorkerPriority::lower();
        while let Some(job) = self.queue.next() {
            self.run(&job, Some(&self.unpacking), priority.as_ref());
        }
    }

    /// Fetches and unpacks a request's small first pack on the calling thread, without
    /// waiting for an unpack slot (it is tiny; the slots may be held by other images'
    /// packs at a lower priority). A failed one is forgotten, as the workers' are.
    fn run_first(&self, job: &Job) {
        self.run(job, None, None);
    }

    /// Prefetches one pack (unpacking in one of `unpacking`'s slots, if given), logs and
    /// counts the outcome.
    fn run(&self, job: &Job, unpacking: Option<&UnpackSlots>, priority: Option<&WorkerPriority>) {
        let started = Instant::now();
        let mut counts = PrefetchCounts::default();
        match prefetch_pack(job, unpacking, priority, &mut counts) {
            Ok(committed) => {
                counts.packs = 1;
                tracing::info!(
                    pack = %job.path,
                    committed,
                    rejected = counts.rejected_objects,
                    ms = started.elapsed().as_millis() as u64,
                    "startup pack prefetched"
                );
            }
            Err(e) => {
                counts.failed_packs = 1;
                self.queue.lock().seen.remove(&job.req.hash);
                tracing::warn!(
                    pack = %job.path,
                    error = %e,
                    "startup pack unusable; its objects are fetched one by one when read"
                );
            }
        }
        counts.ms = started.elapsed().as_millis() as u64;
        job.repo.cache().index().record_prefetch(&counts);
    }
}

/// Downloads, verifies and unpacks one pack into the cache (unpacking in one of
/// `unpacking`'s slots, if given); the number of members committed (members already cached, being
/// downloaded or over the quota are skipped).
fn prefetch_pack(
    job: &Job,
    unpacking: Option<&UnpackSlots>,
    priority: Option<&WorkerPriority>,
    counts: &mut PrefetchCounts,
) -> Result<usize> {
    let cache = job.repo.cache();
    let size = job.req.size.unwrap_or(0);
    // Packs are published uncompressed; a compressed one may be a little larger stored.
    let limit = if job.req.compressed {
        size + size / 64 + 4096
    } else {
        size
    };
    let stored = cache.fetch_stored(&job.req, limit)?;
    let _slot = unpacking.map(|u| u.take(job.order));
    let bytes = if job.req.compressed {
        catalog::decompress(&stored, size)?
    } else {
        stored
    };
    let pack = StartupPack::parse(&bytes)?;
    let members: Vec<ObjectRequest> = pack
        .members()
        .iter()
        .map(|m| ObjectRequest {
            hash: m.hash,
            suffix: m.suffix,
            compressed: m.compressed,
            size: Some(m.raw_size),
        })
        .collect();
    // Every member is in flight from here: a read of one waits for it (and has it
    // unpacked next) rather than fetching it on its own.
    let mut claim = cache.claim_pack(&members);
    let mut committed = 0;
    while let Some((i, waited)) = claim.next_member() {
        let Some(stored) = pack.stored(i) else {
            break;
        };
        let _raised = priority.filter(|_| waited).map(WorkerPriority::raised);
        match claim.commit(i, stored) {
            Ok(true) => committed += 1,
            Ok(false) => {}
            Err(e) => {
                counts.rejected_objects += 1;
                tracing::warn!(pack = %job.path, object = %members[i].hash, error = %e, "startup pack member rejected");
            }
        }
    }
    Ok(committed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn no_more_packs_are_unpacked_at_once_than_there_are_slots() {
        let slots = Arc::new(UnpackSlots::new(2));
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6u64)
            .map(|t| {
                let (slots, inside, most) = (slots.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    for i in 0..20u64 {
                        let _slot = slots.take(i * 6 + t);
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
        let state = slots.state.lock().unwrap();
        assert_eq!(state.free, 2, "every slot given back");
        assert!(state.waiting.is_empty());
    }

    #[test]
    fn workers_run_at_a_lower_priority_and_at_their_own_for_a_waiting_read() {
        let this_before = rustix::process::getpriority_process(None).unwrap();
        std::thread::spawn(|| {
            let tid = rustix::thread::gettid();
            let nice = || rustix::process::getpriority_process(Some(tid)).unwrap();
            let before = nice();
            let priority = WorkerPriority::lower().expect("lowering is always allowed");
            assert_eq!(nice(), (before + PREFETCH_NICE).min(19));
            {
                let raised = priority.raised();
                // Raising needs CAP_SYS_NICE (the tests run as root in CI).
                if raised.1 {
                    assert_eq!(nice(), before);
                }
            }
            assert_eq!(nice(), (before + PREFETCH_NICE).min(19));
        })
        .join()
        .unwrap();
        // Only the worker's thread: this one keeps its priority.
        assert_eq!(
            rustix::process::getpriority_process(None).unwrap(),
            this_before
        );
    }

    #[test]
    fn a_free_slot_goes_to_the_pack_queued_first() {
        let slots = Arc::new(UnpackSlots::new(1));
        let held = slots.take(0);
        let got = Arc::new(Mutex::new(Vec::new()));
        // Queued as 3, 1, 2; their downloads ended in the order 3, 1, 2.
        let threads: Vec<_> = [3u64, 1, 2]
            .into_iter()
            .map(|order| {
                let (waiter, got) = (slots.clone(), got.clone());
                let t = std::thread::spawn(move || {
                    let _slot = waiter.take(order);
                    got.lock().unwrap().push(order);
                });
                // Each waits before the next comes.
                let deadline = Instant::now() + std::time::Duration::from_secs(10);
                while !slots.state.lock().unwrap().waiting.contains(&order) {
                    assert!(Instant::now() < deadline, "pack {order} never waited");
                    std::thread::yield_now();
                }
                t
            })
            .collect();
        drop(held);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*got.lock().unwrap(), vec![1, 2, 3]);
    }
}
