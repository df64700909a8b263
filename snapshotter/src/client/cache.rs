//! The local content-addressed object cache (docs/format.md §8.7 layout).
//!
//! `<root>/XX/<rest of hex><algo-id>` holds the **decompressed**, verified content of the
//! object whose content hash hex starts with `XX`; `<root>/txn/` holds temporaries. An object
//! is committed by `rename(2)` only after the hash of the downloaded (stored, usually
//! compressed) bytes matched and the inflated size matched the catalog (docs/format.md §2.2, §3.4,
//! §8.5), so a file under `XX/` is always complete. The cache survives restarts: an object
//! already present is not downloaded again. Nothing is synced; the write-back of objects
//! that arrive ahead of reads (packs, read-ahead) is started as they are committed, on a
//! thread of its own, so that a container start does not wait for it (`writeback`).
//!
//! Concurrent requests for the same missing object share one download (docs/format.md §8.5): the first
//! requester downloads, the others wait on a condition variable and then use the committed
//! file (or get the downloader's error).
//!
//! Every returned file is a [`PinnedFile`]: it holds a shared `flock(2)` for as long as it
//! is open, which is what "in use" means to eviction ([`crate::client::quota`]). Requests for an
//! object this process already holds pinned share that descriptor and its lock (a
//! reference count in memory) instead of opening and locking the file again. With a quota,
//! least recently used objects nobody holds are deleted before a new object is committed so
//! that the indexed total stays at or below the quota. A cache hit moves the object to the
//! recent end of the index at most once per [`TOUCH_INTERVAL`] per object (and process), so
//! that warm opens do not write the shared SQLite index: the eviction order is LRU to
//! within that interval, and hits are added to the index's counter with the next write
//! (or when the cache is dropped). A cached file whose size differs from
//! the catalog's, or whose mtime differs from the one indexed at commit (something wrote to
//! it), is deleted and fetched again. Hits, misses and downloaded bytes are counted in the
//! index and survive restarts.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use catalog::{ContentHash, InflatingWriter, Suffix};
use nix::fcntl::{Flock, FlockArg};

use crate::client::quota::{Arrival, CacheIndex, ObjectKind, PrefetchCounts, Touch, mtime_ns};
use crate::client::writeback::WriteBack;
use crate::{Error, Result};

/// How often a cache hit of one object is written to the LRU index at most (the eviction
/// order is least recently used to within this interval).
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// Beyond this many remembered recent touches the stale ones are dropped (memory bound:
/// about 60 bytes each; a touch not remembered costs one indexed `SELECT` and a row
/// written with the index's next batch).
const MAX_RECENT: usize = 1 << 14;

/// An open cache file holding a shared `flock(2)`: while any clone lives, no process evicts
/// the object. Clones share one descriptor and lock; each has its own read position for
/// [`Read`]. Dereferences to [`File`] (use positional reads, `FileExt::read_at`, on it).
#[derive(Clone, Debug)]
pub struct PinnedFile {
    file: Arc<Flock<File>>,
    pos: u64,
}

impl std::ops::Deref for PinnedFile {
    type Target = File;
    fn deref(&self) -> &File {
        &self.file
    }
}

impl Read for PinnedFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A pin this process holds: the shared lock and the file's length.
struct LivePin {
    file: Weak<Flock<File>>,
    len: u64,
}

/// The last time an object's access was written to the index, and its mtime then.
#[derive(Clone, Copy)]
struct RecentTouch {
    mtime: i64,
    at: Instant,
}

/// Where a download writes: a [`Write`] that can be emptied and rewound before another
/// attempt (fail-over to another proxy or server must not append to a partial body).
pub trait Sink: Write {
    /// Discards everything written so far.
    ///
    /// # Errors
    /// I/O errors of the underlying file.
    fn restart(&mut self) -> std::io::Result<()>;
}

impl Sink for Vec<u8> {
    fn restart(&mut self) -> std::io::Result<()> {
        self.clear();
        Ok(())
    }
}

/// Where the stored bytes of objects come from (the HTTP [`crate::client::fetch::Fetcher`] in
/// production, an in-memory map in tests).
pub trait ObjectSource: Send + Sync {
    /// Writes the stored (as served, usually zlib) bytes of object `hash` with type `suffix`
    /// into `sink`; returns the byte count. `no_cache` asks proxies to refetch (used for the
    /// one retry after a verification failure, docs/format.md §8.8.5).
    ///
    /// # Errors
    /// Whatever the transport reports; the error should name what was requested.
    fn fetch(
        &self,
        hash: &ContentHash,
        suffix: Suffix,
        no_cache: bool,
        sink: &mut dyn Sink,
    ) -> Result<u64>;
}

/// One object to obtain from the cache.
#[derive(Clone, Copy, Debug)]
pub struct ObjectRequest {
    /// Content hash of the stored bytes.
    pub hash: ContentHash,
    /// Type suffix used to build the URL (`''`, `C`, `P`, `X`, …, docs/format.md §1.4).
    pub suffix: Suffix,
    /// Whether the stored bytes are zlib (docs/format.md §3; false only for files flagged uncompressed).
    pub compressed: bool,
    /// The decompressed size the catalog records, when known (files and chunks; not catalogs).
    pub size: Option<u64>,
}

impl ObjectRequest {
    /// The request for the object of unchunked regular file `entry` (`None` without a
    /// content hash: a chunked file, or not a regular file).
    pub fn whole(entry: &catalog::Entry) -> Option<ObjectRequest> {
        Some(ObjectRequest {
            hash: entry.hash?,
            suffix: Suffix::None,
            compressed: entry.compressed,
            size: Some(entry.size),
        })
    }

    /// The request for chunk `chunk` of a chunked file stored compressed or not as
    /// `compressed` says (docs/format.md §4.6: suffix `P`).
    pub fn chunk(chunk: &catalog::Chunk, compressed: bool) -> ObjectRequest {
        ObjectRequest {
            hash: chunk.hash,
            suffix: Suffix::Partial,
            compressed,
            size: Some(chunk.size),
        }
    }
}

/// Outcome of one download, shared with the requests that waited for it.
#[derive(Default)]
struct InFlight {
    done: Mutex<Option<std::result::Result<(), String>>>,
    cond: Condvar,
    /// For a member of a startup pack being unpacked: the pack's queue of members a read
    /// waits for ([`PackClaim::next_member`] takes them first).
    wanted: Option<Arc<Mutex<Vec<ContentHash>>>>,
}

impl InFlight {
    /// Waits until the download ends; its error as text if it failed. `hash` is the
    /// object's: a pack member waited for is queued to be unpacked next.
    fn wait(&self, hash: ContentHash) -> std::result::Result<(), String> {
        if let Some(wanted) = &self.wanted {
            lock(wanted).push(hash);
        }
        let mut done = lock(&self.done);
        loop {
            if let Some(outcome) = done.as_ref() {
                return outcome.clone();
            }
            done = self
                .cond
                .wait(done)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// Ends a flight its leader was filling if the filling unwinds (a panic), so that those
/// waiting on it look again instead of waiting for ever.
struct EndOnUnwind<'a> {
    cache: &'a ObjectCache,
    hash: ContentHash,
    flight: &'a InFlight,
    armed: bool,
}

impl Drop for EndOnUnwind<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.cache
                .end_flight(self.hash, self.flight, &Ok::<(), Error>(()));
        }
    }
}

/// Members of a startup pack claimed for committing ([`ObjectCache::claim_pack`]); those
/// not committed when it drops are given up (a reader waiting on one then fetches it).
pub struct PackClaim<'a> {
    cache: &'a ObjectCache,
    /// The pack's members, in pack order.
    members: &'a [ObjectRequest],
    /// Claimed and not yet committed, by hash, with the member's index.
    flights: HashMap<ContentHash, (usize, Arc<InFlight>)>,
    /// Claimed members a read waits for, in the order the reads came.
    wanted: Arc<Mutex<Vec<ContentHash>>>,
    /// Members before this one are committed or were not claimed.
    next_in_order: usize,
}

impl PackClaim<'_> {
    /// The index of the member to commit next, and whether a read waits for it: one a read
    /// is waiting for, else the next claimed one in pack order; `None` when every claimed
    /// member is committed.
    pub fn next_member(&mut self) -> Option<(usize, bool)> {
        let wanted = std::mem::take(&mut *lock(&self.wanted));
        let mut waited = None;
        for hash in wanted {
            match self.flights.get(&hash) {
                Some((i, _)) if waited.is_none() => waited = Some(*i),
                // Later ones come back on the next call.
                Some(_) => lock(&self.wanted).push(hash),
                None => {}
            }
        }
        if let Some(i) = waited {
            return Some((i, true));
        }
        while let Some(m) = self.members.get(self.next_in_order) {
            if self.flights.contains_key(&m.hash) {
                return Some((self.next_in_order, false));
            }
            self.next_in_order += 1;
        }
        None
    }

    /// Verifies, inflates and commits `stored`, the stored bytes of member `index`, as
    /// [`ObjectCache::commit_stored`]; `Ok(false)` if it was not claimed (cached or being
    /// downloaded when the pack arrived, or committed already), is cached by now, or would
    /// not fit under the quota without evicting.
    ///
    /// # Errors
    /// As [`ObjectCache::commit_stored`]; the member is given up.
    pub fn commit(&mut self, index: usize, stored: &[u8]) -> Result<bool> {
        let Some(req) = self.members.get(index) else {
            return Ok(false);
        };
        let Some((_, flight)) = self.flights.remove(&req.hash) else {
            return Ok(false);
        };
        let cache = self.cache;
        let fits = cache.fits_without_evicting(req.size.unwrap_or(0));
        if !matches!(fits, Ok(true)) {
            cache.end_flight(req.hash, &flight, &Ok::<(), Error>(()));
            return fits.map(|_| false);
        }
        cache.fill_claimed(req, &flight, Arrival::Pack, || {
            cache.commit_bytes(req, stored)
        })
    }
}

impl Drop for PackClaim<'_> {
    fn drop(&mut self) {
        for (hash, (_, flight)) in self.flights.drain() {
            self.cache.end_flight(hash, &flight, &Ok::<(), Error>(()));
        }
    }
}

/// The verified, decompressed object cache under one directory.
pub struct ObjectCache {
    root: PathBuf,
    txn: PathBuf,
    source: Arc<dyn ObjectSource>,
    in_flight: Mutex<HashMap<ContentHash, Arc<InFlight>>>,
    index: CacheIndex,
    quota: Option<u64>,
    /// Objects this process holds pinned, by hash (dead entries are pruned on insert).
    pins: Mutex<HashMap<ContentHash, LivePin>>,
    /// Objects whose access was written to the index within [`TOUCH_INTERVAL`].
    recent: Mutex<HashMap<ContentHash, RecentTouch>>,
    /// Demand requests (not read-ahead) waiting for a download right now.
    demand: AtomicUsize,
    /// Objects read ahead or prefetched from a pack by this process and not read since,
    /// with their raw size and how they came (forgotten past [`MAX_UNREAD`]).
    unread: Mutex<HashMap<ContentHash, (u64, Arrival)>>,
    /// Objects this process committed from startup packs (cleared past [`MAX_PACKED`]).
    packed: Mutex<std::collections::HashSet<ContentHash>>,
    /// Starts the write-back of objects that arrive ahead of reads.
    writeback: WriteBack,
}

/// Objects remembered as having come from a startup pack; past it, the set starts again.
const MAX_PACKED: usize = 1 << 20;

/// Objects remembered as read ahead and not read; past it the set starts again (a
/// long-lived mount keeps every start's never-read objects there otherwise; those
/// forgotten and read later are not counted as used).
const MAX_UNREAD: usize = 1 << 18;

/// Counts a demand request as waiting for a download while it lives.
struct DemandGuard<'a>(&'a AtomicUsize);

impl<'a> DemandGuard<'a> {
    fn new(counter: &'a AtomicUsize) -> DemandGuard<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        DemandGuard(counter)
    }
}

impl Drop for DemandGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ObjectCache {
    /// [`ObjectCache::open_with_quota`] without a quota.
    ///
    /// # Errors
    /// As [`ObjectCache::open_with_quota`].
    pub fn open(root: &Path, source: Arc<dyn ObjectSource>) -> Result<ObjectCache> {
        ObjectCache::open_with_quota(root, source, None)
    }

    /// Opens (creating if needed) the cache at `root`: makes `00`…`ff` and `txn/`, removes
    /// temporaries that no running process holds (they are locked while in use) and opens
    /// the index `cachedb`. `quota` is in bytes (`None` = unmanaged).
    ///
    /// # Errors
    /// [`Error::Io`] if the directories or the index cannot be created.
    pub fn open_with_quota(
        root: &Path,
        source: Arc<dyn ObjectSource>,
        quota: Option<u64>,
    ) -> Result<ObjectCache> {
        let io = |context: String| move |source| Error::Io { context, source };
        for i in 0..=255u8 {
            let dir = root.join(format!("{i:02x}"));
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        let txn = root.join("txn");
        std::fs::create_dir_all(&txn).map_err(io(format!("creating {}", txn.display())))?;
        if let Ok(entries) = std::fs::read_dir(&txn) {
            for entry in entries.flatten() {
                if let Ok(f) = File::open(entry.path())
                    && Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok()
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let index = CacheIndex::open(root)?;
        Ok(ObjectCache {
            root: root.to_path_buf(),
            txn,
            source,
            in_flight: Mutex::new(HashMap::new()),
            index,
            quota,
            pins: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
            demand: AtomicUsize::new(0),
            unread: Mutex::new(HashMap::new()),
            packed: Mutex::new(std::collections::HashSet::new()),
            writeback: WriteBack::default(),
        })
    }

    /// The LRU index and counters of this cache directory.
    pub fn index(&self) -> &CacheIndex {
        &self.index
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the committed file of `hash`: `<root>/XX/<rest of hex><algo-id>` (docs/format.md §8.7).
    pub fn path_of(&self, hash: &ContentHash) -> PathBuf {
        let hex = hash.to_hex();
        let (head, rest) = hex.split_at(2);
        self.root.join(head).join(rest)
    }

    /// Removes the committed file of `hash`, if any (used when a cached catalog turns out
    /// unreadable).
    pub fn evict(&self, hash: &ContentHash) {
        self.unremember(hash);
        let path = self.path_of(hash);
        if let Err(e) = self.index.forget(&hash.to_hex()) {
            tracing::warn!(error = %e, "cache index");
        }
        let _ = std::fs::remove_file(&path);
        tracing::warn!(path = %path.display(), "evicted cached object");
    }

    /// Returns the decompressed, verified content of `req`, opened read-only, downloading
    /// and committing it first if it is not cached. A cached file whose length differs from
    /// `req.size` is deleted and fetched again. Concurrent calls for the same missing hash
    /// share one download. Blocking (network and file I/O): call it from a plain thread
    /// (FUSE workers, `spawn_blocking`), never from a tokio worker.
    ///
    /// # Errors
    /// The source's error for download failures; [`catalog::Error::HashMismatch`] (via
    /// [`Error::Catalog`]) or a zlib error if the object fails verification twice (the
    /// second try asks proxies for a fresh copy); [`Error::SizeMismatch`] if the inflated
    /// size differs from `req.size`; [`Error::ObjectUnavailable`] if a concurrent download
    /// this call waited for failed; [`Error::Io`] for local file errors.
    pub fn get(&self, req: &ObjectRequest) -> Result<PinnedFile> {
        if let Some(file) = self.open_committed(req)? {
            self.note_read(&req.hash);
            return Ok(file);
        }
        let _demand = DemandGuard::new(&self.demand);
        let file = self.get_missing(req)?;
        self.note_read(&req.hash);
        Ok(file)
    }

    /// [`ObjectCache::get`] of an object that was not cached a moment ago.
    fn get_missing(&self, req: &ObjectRequest) -> Result<PinnedFile> {
        loop {
            if let Some(file) = self.open_committed(req)? {
                return Ok(file);
            }
            let (flight, leader) = self.join_flight(req.hash);
            if leader {
                // Re-check: a download may have committed between our check and our insert.
                let result = match self.open_committed(req) {
                    Ok(Some(file)) => Ok(Some(file)),
                    Ok(None) => self.download(req, Arrival::Demand).map(|_| None),
                    Err(e) => Err(e),
                };
                self.end_flight(req.hash, &flight, &result);
                match result {
                    Ok(Some(file)) => return Ok(file),
                    Ok(None) => continue,
                    Err(e) => return Err(e),
                }
            }
            if let Err(reason) = flight.wait(req.hash) {
                return Err(Error::ObjectUnavailable {
                    object: req.hash.to_hex(),
                    reason,
                });
            }
            // Success: loop to open the committed file.
        }
    }

    /// Joins the download of `hash` in flight, or starts one: `(flight, true)` when the
    /// caller is the one to download (and must call [`ObjectCache::end_flight`]).
    fn join_flight(&self, hash: ContentHash) -> (Arc<InFlight>, bool) {
        let mut map = lock(&self.in_flight);
        match map.get(&hash) {
            Some(f) => (f.clone(), false),
            None => {
                let f = Arc::new(InFlight::default());
                map.insert(hash, f.clone());
                (f, true)
            }
        }
    }

    /// Ends the download of `hash` this caller led, waking those who joined it.
    fn end_flight<T>(&self, hash: ContentHash, flight: &InFlight, result: &Result<T>) {
        *lock(&flight.done) = Some(match result {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        });
        lock(&self.in_flight).remove(&hash);
        flight.cond.notify_all();
    }

    /// `req`'s object if it is committed, pinned, without fetching it and without counting
    /// a read or a hit (a look at a file's header for this process's own decisions).
    ///
    /// # Errors
    /// [`Error::Io`] for local file errors.
    pub fn open_cached(&self, req: &ObjectRequest) -> Result<Option<PinnedFile>> {
        self.open_committed_as(req, false)
    }

    /// Whether `req`'s object is committed (with the right size, when known); no pin, no
    /// index write.
    pub fn is_cached(&self, req: &ObjectRequest) -> bool {
        std::fs::metadata(self.path_of(&req.hash))
            .is_ok_and(|m| m.is_file() && req.size.is_none_or(|size| m.len() == size))
    }

    /// Whether this process put object `hash` into the cache from a startup pack (a
    /// start's working set is known for the directories it came from: read-ahead need not
    /// guess there).
    pub fn came_in_a_pack(&self, hash: &ContentHash) -> bool {
        lock(&self.packed).contains(hash)
    }

    /// Whether this process put any of `hashes` into the cache from a startup pack (one
    /// lock for all).
    pub fn any_came_in_a_pack<'h>(
        &self,
        mut hashes: impl Iterator<Item = &'h ContentHash>,
    ) -> bool {
        let packed = lock(&self.packed);
        hashes.any(|h| packed.contains(h))
    }

    /// Demand requests waiting for a download right now (read-ahead holds back while there
    /// are several, see [`crate::client::readahead`]).
    pub fn demand_in_flight(&self) -> usize {
        self.demand.load(Ordering::SeqCst)
    }

    /// Read-ahead of `req`: downloads and commits it unless it is cached, being downloaded
    /// already, or would not fit under the quota without evicting (read-ahead never
    /// evicts). Returns whether it fetched. Counted as read-ahead in the index until a
    /// demand request reads it.
    ///
    /// # Errors
    /// As [`ObjectCache::get`].
    pub fn prefetch(&self, req: &ObjectRequest) -> Result<bool> {
        self.ahead_of_reads(req, Arrival::ReadAhead, || {
            self.download(req, Arrival::ReadAhead)
        })
    }

    /// Read-ahead that needs the content itself (the headers of a program or library,
    /// [`crate::client::elf`]): [`ObjectCache::prefetch`], waiting for a download of it
    /// already in flight, then the committed file, pinned. Not counted as a read (a
    /// demand request reading it later is). `None` when it is not cached and does not fit
    /// under the quota without evicting.
    ///
    /// # Errors
    /// As [`ObjectCache::get`].
    pub fn prefetch_and_open(&self, req: &ObjectRequest) -> Result<Option<PinnedFile>> {
        // A few turns at most: a file that stays unopenable (an index out of step with
        // the directory) is left to demand reads.
        for _ in 0..3 {
            if let Some(file) = self.open_committed_as(req, false)? {
                return Ok(Some(file));
            }
            let flight = lock(&self.in_flight).get(&req.hash).cloned();
            if let Some(flight) = flight {
                if let Err(reason) = flight.wait(req.hash) {
                    return Err(Error::ObjectUnavailable {
                        object: req.hash.to_hex(),
                        reason,
                    });
                }
                continue;
            }
            if !self.prefetch(req)?
                && !self.is_cached(req)
                && !lock(&self.in_flight).contains_key(&req.hash)
            {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Brings `req` in ahead of any read with `fill` (a download, or a pack member's
    /// bytes), unless it is cached, being downloaded, or would not fit under the quota
    /// without evicting. What it brought is remembered as unread (counted as used when a
    /// demand request reads it) before the flight ends, so that a reader waiting on it
    /// finds it used. A reader waiting on a read-ahead download gets its outcome; one
    /// waiting on a pack member looks again either way (the file, or a download of its own).
    fn ahead_of_reads(
        &self,
        req: &ObjectRequest,
        arrival: Arrival,
        fill: impl FnOnce() -> Result<Option<u64>>,
    ) -> Result<bool> {
        if self.is_cached(req) || !self.fits_without_evicting(req.size.unwrap_or(0))? {
            return Ok(false);
        }
        let (flight, leader) = self.join_flight(req.hash);
        if !leader {
            return Ok(false);
        }
        self.fill_claimed(req, &flight, arrival, fill)
    }

    /// [`ObjectCache::ahead_of_reads`] once the caller leads `req`'s flight (and has
    /// checked the quota): fills it unless it is cached by now, remembers what came as
    /// unread, and ends the flight (also if `fill` panics).
    fn fill_claimed(
        &self,
        req: &ObjectRequest,
        flight: &InFlight,
        arrival: Arrival,
        fill: impl FnOnce() -> Result<Option<u64>>,
    ) -> Result<bool> {
        let mut unwinding = EndOnUnwind {
            cache: self,
            hash: req.hash,
            flight,
            armed: true,
        };
        let result = if self.is_cached(req) {
            Ok(None)
        } else {
            fill()
        };
        unwinding.armed = false;
        if let Ok(Some(size)) = &result {
            let mut unread = lock(&self.unread);
            if unread.len() >= MAX_UNREAD {
                unread.clear();
            }
            unread.insert(req.hash, (*size, arrival));
            drop(unread);
            if arrival == Arrival::Pack {
                let mut packed = lock(&self.packed);
                if packed.len() >= MAX_PACKED {
                    packed.clear();
                }
                packed.insert(req.hash);
            }
        }
        if arrival == Arrival::Pack {
            self.end_flight(req.hash, flight, &Ok::<(), Error>(()));
        } else {
            self.end_flight(req.hash, flight, &result);
        }
        Ok(result?.is_some())
    }

    /// Claims the members of a startup pack whose unpacking starts (`members`, its index)
    /// that are neither cached nor being downloaded: each is in flight from now until it
    /// is committed ([`PackClaim::commit`]) or the claim drops, so a read that needs one
    /// while the pack is unpacked waits for it (milliseconds; [`PackClaim::next_member`]
    /// puts it first) instead of fetching it on its own (a round trip: a pull's layer
    /// catalogs came that way, 59 ms at 50 ms).
    pub fn claim_pack<'a>(&'a self, members: &'a [ObjectRequest]) -> PackClaim<'a> {
        let wanted = Arc::new(Mutex::new(Vec::new()));
        let mut flights = HashMap::new();
        // Looked at outside the lock (a file system call each): one cached meanwhile is
        // found cached when it is committed.
        let missing: Vec<(usize, &ObjectRequest)> = members
            .iter()
            .enumerate()
            .filter(|(_, req)| !self.is_cached(req))
            .collect();
        let mut map = lock(&self.in_flight);
        for (i, req) in missing {
            if flights.contains_key(&req.hash) || map.contains_key(&req.hash) {
                continue;
            }
            let flight = Arc::new(InFlight {
                wanted: Some(wanted.clone()),
                ..InFlight::default()
            });
            map.insert(req.hash, flight.clone());
            flights.insert(req.hash, (i, flight));
        }
        drop(map);
        PackClaim {
            cache: self,
            members,
            flights,
            wanted,
            next_in_order: 0,
        }
    }

    /// Downloads the stored bytes of `req` (at most `limit` of them) into memory, verified
    /// against its hash (one retry asking proxies for a fresh copy); not cached. Counted as
    /// a miss. Used for startup packs, whose members are cached one by one
    /// ([`ObjectCache::commit_stored`]).
    ///
    /// # Errors
    /// The source's error; [`catalog::Error::HashMismatch`] (via [`Error::Catalog`]) if the
    /// bytes fail verification twice; [`Error::SizeMismatch`] past `limit`.
    pub fn fetch_stored(&self, req: &ObjectRequest, limit: u64) -> Result<Vec<u8>> {
        let mut attempt = 0;
        loop {
            let mut sink = BoundedVec {
                bytes: Vec::new(),
                limit,
            };
            let fetched = self
                .source
                .fetch(&req.hash, req.suffix, attempt > 0, &mut sink);
            let fetched = match fetched {
                Err(e) if sink.bytes.len() as u64 > limit => {
                    tracing::debug!(error = %e, "download cut at its limit");
                    return Err(Error::SizeMismatch {
                        object: req.hash.to_hex(),
                        expected: limit,
                        actual: sink.bytes.len() as u64,
                    });
                }
                other => other?,
            };
            self.index.record_download(fetched);
            match catalog::compression::verify(&sink.bytes, &req.hash) {
                Ok(()) => return Ok(sink.bytes),
                Err(e) if attempt > 0 => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(object = %req.hash, error = %e, "object failed verification; retrying with no-cache");
                    attempt += 1;
                }
            }
        }
    }

    /// Caches the object `req` from its stored bytes `stored` (a member of a startup pack):
    /// verified against its own hash and size, inflated, committed and counted as
    /// prefetched. Skipped (`Ok(false)`) if it is cached, being downloaded, or would not fit
    /// under the quota without evicting (prefetching never evicts). A demand read waiting
    /// for it meanwhile gets it, or, if it fails, fetches it on its own.
    ///
    /// # Errors
    /// [`catalog::Error::HashMismatch`] or a zlib error (via [`Error::Catalog`]) if the
    /// bytes are not the object; [`Error::SizeMismatch`]; local file errors.
    pub fn commit_stored(&self, req: &ObjectRequest, stored: &[u8]) -> Result<bool> {
        self.claim_pack(std::slice::from_ref(req)).commit(0, stored)
    }

    /// Verifies, inflates and commits the stored bytes `stored` of `req` (from a pack).
    fn commit_bytes(&self, req: &ObjectRequest, stored: &[u8]) -> Result<Option<u64>> {
        let (raw, _raw_lock, mut sink) = self.temporary(req)?;
        sink.write_all(stored).map_err(|source| Error::Io {
            context: format!("writing a temporary file for object {}", req.hash),
            source,
        })?;
        let actual = sink.finish()?;
        self.commit(req, raw, actual, 0, Arrival::Pack)
    }

    /// A temporary file in `txn/` for `req`'s object, locked so that a starting process
    /// does not delete it, and the sink that hashes and inflates into it.
    fn temporary(
        &self,
        req: &ObjectRequest,
    ) -> Result<(tempfile::NamedTempFile, Flock<File>, InflatingSink)> {
        let io = |context: &str| {
            let context = format!("{context} for object {}", req.hash);
            move |source| Error::Io { context, source }
        };
        let raw =
            tempfile::NamedTempFile::new_in(&self.txn).map_err(io("creating a temporary file"))?;
        let lock = lock_temp(&raw).map_err(io("locking a temporary file"))?;
        let sink = InflatingSink::new(
            raw.as_file()
                .try_clone()
                .map_err(io("opening a temporary file"))?,
            req,
        )
        .map_err(io("opening a temporary file"))?;
        Ok((raw, lock, sink))
    }

    /// Whether `incoming` more bytes stay under the quota (always, without one).
    fn fits_without_evicting(&self, incoming: u64) -> Result<bool> {
        match self.quota {
            Some(quota) => Ok(self.index.total_size()?.saturating_add(incoming) <= quota),
            None => Ok(true),
        }
    }

    /// A demand request read `hash`: if read-ahead fetched it, that was no waste (counted
    /// with the index's next write).
    fn note_read(&self, hash: &ContentHash) {
        let Some((size, arrival)) = lock(&self.unread).remove(hash) else {
            return;
        };
        if arrival == Arrival::Pack {
            self.index.record_prefetch(&PrefetchCounts {
                used_bytes: size,
                ..PrefetchCounts::default()
            });
        } else {
            self.index.record_read_ahead(0, size);
        }
    }

    /// Forgets the in-memory pin and recent touch of `hash` (its file is going away).
    fn unremember(&self, hash: &ContentHash) {
        lock(&self.pins).remove(hash);
        lock(&self.recent).remove(hash);
    }

    /// A clone of the pin this process already holds on `req`'s object, if any and of the
    /// requested size.
    fn live_pin(&self, req: &ObjectRequest) -> Option<PinnedFile> {
        let pins = lock(&self.pins);
        let pin = pins.get(&req.hash)?;
        if req.size.is_some_and(|size| size != pin.len) {
            return None;
        }
        pin.file.upgrade().map(|file| PinnedFile { file, pos: 0 })
    }

    /// Remembers `file` (of length `len`) as this process's pin on `hash`.
    fn remember_pin(&self, hash: ContentHash, file: &Arc<Flock<File>>, len: u64) {
        let mut pins = lock(&self.pins);
        if pins.len() >= 1024 && pins.len().is_power_of_two() {
            pins.retain(|_, p| p.file.strong_count() > 0);
        }
        pins.insert(
            hash,
            LivePin {
                file: Arc::downgrade(file),
                len,
            },
        );
    }

    /// Whether a hit of `hash` with file mtime `mtime` was written to the index recently
    /// enough (and with the same mtime) that this one need not be.
    fn touched_recently(&self, hash: &ContentHash, mtime: i64) -> bool {
        lock(&self.recent)
            .get(hash)
            .is_some_and(|t| t.mtime == mtime && t.at.elapsed() < TOUCH_INTERVAL)
    }

    fn note_touch(&self, hash: ContentHash, mtime: i64) {
        let mut recent = lock(&self.recent);
        if recent.len() >= MAX_RECENT {
            recent.retain(|_, t| t.at.elapsed() < TOUCH_INTERVAL);
            if recent.len() >= MAX_RECENT {
                recent.clear();
            }
        }
        recent.insert(
            hash,
            RecentTouch {
                mtime,
                at: Instant::now(),
            },
        );
    }

    /// Writes an access of `sha` to the index, with the hits counted since the last write.
    fn touch(
        &self,
        sha: &str,
        meta: &std::fs::Metadata,
        suffix: Suffix,
        hit: bool,
    ) -> Result<Touch> {
        self.index.touch(
            sha,
            meta.len(),
            kind_of(suffix),
            mtime_ns(meta),
            u64::from(hit),
        )
    }

    /// Opens and pins the committed file if present and plausible, and records the access
    /// in the index (at most once per [`TOUCH_INTERVAL`]); deletes it if its length or mtime
    /// is wrong. An object this process already pins is shared without any system call.
    fn open_committed(&self, req: &ObjectRequest) -> Result<Option<PinnedFile>> {
        self.open_committed_as(req, true)
    }

    /// [`ObjectCache::open_committed`], counting the access as a cache hit only if `hit`
    /// (read-ahead's own opens are not hits).
    fn open_committed_as(&self, req: &ObjectRequest, hit: bool) -> Result<Option<PinnedFile>> {
        if let Some(pinned) = self.live_pin(req) {
            if hit {
                self.index.record_hits(1);
            }
            return Ok(Some(pinned));
        }
        let path = self.path_of(&req.hash);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    context: format!("opening cached object {}", path.display()),
                    source,
                });
            }
        };
        if let Some(size) = req.size {
            let len = file
                .metadata()
                .map_err(|source| Error::Io {
                    context: format!("stat of cached object {}", path.display()),
                    source,
                })?
                .len();
            if len != size {
                tracing::warn!(path = %path.display(), len, size, "cached object has the wrong size; refetching");
                drop(file);
                self.forget(req);
                return Ok(None);
            }
        }
        let stat_err = |source| Error::Io {
            context: format!("stat of cached object {}", path.display()),
            source,
        };
        let file = Flock::lock(file, FlockArg::LockShared).map_err(|(_, errno)| Error::Io {
            context: format!("locking cached object {}", path.display()),
            source: errno.into(),
        })?;
        let meta = file.metadata().map_err(stat_err)?;
        // Evicted between our open and our lock: the path no longer names this inode.
        match std::fs::metadata(&path) {
            Ok(now)
                if std::os::unix::fs::MetadataExt::ino(&now)
                    == std::os::unix::fs::MetadataExt::ino(&meta) => {}
            _ => return Ok(None),
        }
        let mtime = mtime_ns(&meta);
        if self.touched_recently(&req.hash, mtime) {
            if hit {
                self.index.record_hits(1);
            }
        } else {
            match self.touch(&req.hash.to_hex(), &meta, req.suffix, hit)? {
                Touch::Known(indexed) if indexed != mtime => {
                    tracing::warn!(path = %path.display(), "cached object was modified after commit; refetching");
                    drop(file);
                    self.forget(req);
                    return Ok(None);
                }
                _ => self.note_touch(req.hash, mtime),
            }
        }
        let file = Arc::new(file);
        self.remember_pin(req.hash, &file, meta.len());
        Ok(Some(PinnedFile { file, pos: 0 }))
    }

    /// Drops `req`'s cache file and index row.
    fn forget(&self, req: &ObjectRequest) {
        self.unremember(&req.hash);
        if let Err(e) = self.index.forget(&req.hash.to_hex()) {
            tracing::warn!(error = %e, "cache index");
        }
        let _ = std::fs::remove_file(self.path_of(&req.hash));
    }

    /// Downloads, verifies, inflates and commits `req`; one retry with no-cache headers if
    /// the bytes fail verification. The body is hashed and inflated as it arrives, straight
    /// into one temporary file in `txn/` ([`InflatingSink`]), which is renamed into place
    /// once verified; nothing is synced (a cache file is checked against its size and
    /// indexed mtime when opened, so a torn one after a power loss is fetched again).
    ///
    /// Read-ahead ([`Arrival::ReadAhead`]) never evicts: an object that does not fit under
    /// the quota without evicting is dropped instead of committed: `Ok(None)`. Otherwise
    /// the raw size of the committed object.
    fn download(&self, req: &ObjectRequest, arrival: Arrival) -> Result<Option<u64>> {
        let mut attempt = 0;
        loop {
            let no_cache = attempt > 0;
            let (raw, _raw_lock, mut sink) = self.temporary(req)?;
            let fetched = self
                .source
                .fetch(&req.hash, req.suffix, no_cache, &mut sink)?;
            match sink.finish() {
                Ok(actual) => {
                    let committed = self.commit(req, raw, actual, fetched, arrival);
                    // A committed download counts its miss in its own index transaction;
                    // any other outcome counts it here.
                    if !matches!(committed, Ok(Some(_))) {
                        self.index.record_download(fetched);
                    }
                    return committed;
                }
                Err(e) => {
                    self.index.record_download(fetched);
                    if attempt > 0 {
                        return Err(e.into());
                    }
                    tracing::warn!(object = %req.hash, error = %e, "object failed verification; retrying with no-cache");
                    attempt += 1;
                }
            }
        }
    }

    /// Commits the verified download of `req` in `raw` (`actual` raw bytes, `fetched`
    /// stored bytes): renamed into place and indexed in one transaction with its miss.
    /// `Ok(None)` for read-ahead or a pack member (only a demand read evicts) that does
    /// not fit under the quota; neither that nor an error writes the index.
    fn commit(
        &self,
        req: &ObjectRequest,
        raw: tempfile::NamedTempFile,
        actual: u64,
        fetched: u64,
        arrival: Arrival,
    ) -> Result<Option<u64>> {
        let may_evict = arrival == Arrival::Demand;
        let object = req.hash.to_hex();
        if let Some(expected) = req.size
            && actual != expected
        {
            return Err(Error::SizeMismatch {
                object,
                expected,
                actual,
            });
        }
        if !may_evict && !self.fits_without_evicting(actual)? {
            return Ok(None);
        }
        if let Some(quota) = self.quota {
            let freed = self.index.make_room(actual, quota)?;
            if freed > 0 {
                tracing::debug!(freed, quota, "evicted to stay under the quota");
            }
        }
        let path = self.path_of(&req.hash);
        let committed = raw.persist(&path).map_err(|e| Error::Io {
            context: format!("committing {}", path.display()),
            source: e.error,
        })?;
        let meta = committed.metadata().map_err(|source| Error::Io {
            context: format!("stat of the committed file for object {object}"),
            source,
        })?;
        if arrival != Arrival::Demand {
            self.writeback.start(path.clone());
        }
        // Row, miss and read-ahead, with the index's next write.
        self.index.commit_download(
            &object,
            meta.len(),
            kind_of(req.suffix),
            mtime_ns(&meta),
            fetched,
            arrival,
        );
        self.note_touch(req.hash, mtime_ns(&meta));
        Ok(Some(actual))
    }
}

/// Where a download goes: hashed and inflated as it arrives ([`catalog::InflatingWriter`])
/// into the cache's temporary file, rewound and emptied when the fetcher restarts it on
/// another route.
struct InflatingSink {
    file: File,
    writer: Option<InflatingWriter<BufWriter<File>>>,
    /// Whether anything was written since it was made or last restarted.
    written: bool,
    hash: ContentHash,
    compressed: bool,
    limit: Option<u64>,
}

impl InflatingSink {
    fn new(file: File, req: &ObjectRequest) -> std::io::Result<InflatingSink> {
        let mut sink = InflatingSink {
            file,
            writer: None,
            written: false,
            hash: req.hash,
            compressed: req.compressed,
            limit: req.size,
        };
        sink.writer = Some(sink.fresh_writer()?);
        Ok(sink)
    }

    fn fresh_writer(&self) -> std::io::Result<InflatingWriter<BufWriter<File>>> {
        Ok(InflatingWriter::new(
            BufWriter::with_capacity(128 * 1024, self.file.try_clone()?),
            self.hash,
            self.compressed,
            self.limit,
        ))
    }

    fn writer(&mut self) -> std::io::Result<&mut InflatingWriter<BufWriter<File>>> {
        self.writer
            .as_mut()
            .ok_or_else(|| std::io::Error::other("download sink used after a failed restart"))
    }

    /// Verifies the download; the raw size.
    fn finish(mut self) -> catalog::Result<u64> {
        match self.writer.take() {
            Some(writer) => writer.finish().map(|(_, raw)| raw),
            None => Err(catalog::Error::io(
                "finishing a download",
                std::io::Error::other("download sink used after a failed restart"),
            )),
        }
    }
}

impl Write for InflatingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written |= !buf.is_empty();
        self.writer()?.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.writer()?.flush()
    }
}

impl Sink for InflatingSink {
    fn restart(&mut self) -> std::io::Result<()> {
        // Nothing to undo before the first attempt. (Truncating an empty file is not free
        // either: ext4 then writes the file out when it is closed, in this thread.)
        if !self.written && self.writer.is_some() {
            return Ok(());
        }
        self.written = false;
        // Drop the old writer first: its buffer is flushed on drop, before the truncation.
        self.writer = None;
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.writer = Some(self.fresh_writer()?);
        Ok(())
    }
}

/// A download into memory that stops at `limit` bytes (a pack larger than its catalog
/// row says is not read on forever).
struct BoundedVec {
    bytes: Vec<u8>,
    limit: u64,
}

impl Write for BoundedVec {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() as u64 + buf.len() as u64 > self.limit {
            self.bytes.extend_from_slice(buf);
            return Err(std::io::Error::other(format!(
                "more than the expected {} bytes",
                self.limit
            )));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink for BoundedVec {
    fn restart(&mut self) -> std::io::Result<()> {
        self.bytes.clear();
        Ok(())
    }
}

/// Holds an exclusive lock on another descriptor of temporary `tmp` while it is in use, so
/// that a starting process does not delete it from `txn/`.
fn lock_temp(tmp: &tempfile::NamedTempFile) -> std::io::Result<Flock<File>> {
    Flock::lock(tmp.reopen()?, FlockArg::LockExclusive).map_err(|(_, e)| e.into())
}

/// The index type of an object with URL suffix `suffix`.
fn kind_of(suffix: Suffix) -> ObjectKind {
    match suffix {
        Suffix::None | Suffix::Partial => ObjectKind::Regular,
        Suffix::Catalog => ObjectKind::Catalog,
        _ => ObjectKind::Other,
    }
}

/// Locks `m`, ignoring poisoning (the protected data stays consistent: plain maps/options).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::client::quota::CacheIndex;
    use catalog::HashAlgorithm;
    use rusqlite::Connection;
    use std::sync::atomic::AtomicUsize;

    /// In-memory [`ObjectSource`]: stored bytes by hash; counts fetches; can serve corrupt
    /// bytes to requests without no-cache, and can be slow.
    #[derive(Default)]
    pub(crate) struct MemorySource {
        pub objects: Mutex<HashMap<ContentHash, Vec<u8>>>,
        pub fetches: AtomicUsize,
        pub no_cache_fetches: AtomicUsize,
        pub corrupt_unless_no_cache: bool,
        pub delay: Duration,
    }

    impl MemorySource {
        /// Stores `raw` compressed; returns its hash.
        pub fn add(&self, raw: &[u8]) -> ContentHash {
            let stored = catalog::compress(raw);
            let hash = ContentHash::of_bytes(HashAlgorithm::Sha1, &stored);
            lock(&self.objects).insert(hash, stored);
            hash
        }
    }

    impl ObjectSource for MemorySource {
        fn fetch(
            &self,
            hash: &ContentHash,
            _suffix: Suffix,
            no_cache: bool,
            sink: &mut dyn Sink,
        ) -> Result<u64> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            if no_cache {
                self.no_cache_fetches.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(self.delay);
            let Some(mut bytes) = lock(&self.objects).get(hash).cloned() else {
                return Err(Error::HttpStatus {
                    url: format!("mem://{hash}"),
                    status: 404,
                });
            };
            if self.corrupt_unless_no_cache && !no_cache {
                bytes[0] ^= 0xff;
            }
            sink.write_all(&bytes).map_err(|source| Error::Io {
                context: format!("writing mem://{hash}"),
                source,
            })?;
            Ok(bytes.len() as u64)
        }
    }

    fn req(hash: ContentHash, size: Option<u64>) -> ObjectRequest {
        ObjectRequest {
            hash,
            suffix: Suffix::None,
            compressed: true,
            size,
        }
    }

    fn read_all(mut f: PinnedFile) -> Vec<u8> {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut v).unwrap();
        v
    }

    fn txn_is_empty(cache: &ObjectCache) -> bool {
        std::fs::read_dir(cache.root().join("txn")).unwrap().count() == 0
    }

    #[test]
    fn prefetch_and_open_waits_for_a_download_in_flight_and_counts_no_read() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource {
            delay: Duration::from_millis(300),
            ..MemorySource::default()
        });
        let hash = src.add(b"\x7fELF headers");
        let cache = Arc::new(ObjectCache::open(dir.path(), src.clone()).unwrap());
        let reader = {
            let cache = cache.clone();
            std::thread::spawn(move || read_all(cache.get(&req(hash, Some(12))).unwrap()))
        };
        while src.fetches.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The reader's download is in flight: plain prefetch returns at once, without it.
        assert!(!cache.prefetch(&req(hash, Some(12))).unwrap());
        let file = cache.prefetch_and_open(&req(hash, Some(12))).unwrap();
        assert_eq!(read_all(file.unwrap()), b"\x7fELF headers");
        assert_eq!(reader.join().unwrap(), b"\x7fELF headers");
        assert_eq!(src.fetches.load(Ordering::SeqCst), 1, "one download");
        // Not cached, nothing in flight: fetched as read-ahead, not counted as read.
        let other = src.add(b"libfoo");
        assert!(
            cache
                .prefetch_and_open(&req(other, Some(6)))
                .unwrap()
                .is_some()
        );
        assert_eq!(src.fetches.load(Ordering::SeqCst), 2);
        assert!(lock(&cache.unread).contains_key(&other), "counted as read");
        let hits = |c: &ObjectCache| c.index().stats().unwrap().hits;
        let before = hits(&cache);
        assert!(
            cache
                .prefetch_and_open(&req(other, Some(6)))
                .unwrap()
                .is_some()
        );
        assert_eq!(hits(&cache), before, "counted as a hit");
        read_all(cache.get(&req(other, Some(6))).unwrap());
        assert_eq!(hits(&cache), before + 1, "a demand read is a hit");
    }

    #[test]
    fn commits_decompressed_content_under_cvmfs_layout_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let hash = src.add(b"hello world\n");
        let cache = ObjectCache::open(dir.path(), src.clone()).unwrap();
        let got = read_all(cache.get(&req(hash, Some(12))).unwrap());
        assert_eq!(got, b"hello world\n");
        let hex = hash.to_hex();
        let path = dir.path().join(&hex[..2]).join(&hex[2..]);
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world\n");
        assert!(txn_is_empty(&cache));

        // A new cache on the same directory (a remount) downloads nothing.
        let cache2 = ObjectCache::open(dir.path(), src.clone()).unwrap();
        assert_eq!(
            read_all(cache2.get(&req(hash, Some(12))).unwrap()),
            b"hello world\n"
        );
        assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn bad_bytes_are_refetched_with_no_cache_then_rejected() {
        let dir = tempfile::tempdir().unwrap();
        // Corrupt once, fine on the no-cache retry.
        let src = Arc::new(MemorySource {
            corrupt_unless_no_cache: true,
            ..Default::default()
        });
        let hash = src.add(b"payload");
        let cache = ObjectCache::open(dir.path(), src.clone()).unwrap();
        assert_eq!(
            read_all(cache.get(&req(hash, Some(7))).unwrap()),
            b"payload"
        );
        assert_eq!(src.fetches.load(Ordering::SeqCst), 2);
        assert_eq!(src.no_cache_fetches.load(Ordering::SeqCst), 1);

        // Always wrong: the served bytes belong to another hash.
        let src2 = Arc::new(MemorySource::default());
        let good = src2.add(b"one");
        let other = src2.add(b"two");
        let wrong = lock(&src2.objects)[&other].clone();
        lock(&src2.objects).insert(good, wrong);
        let dir2 = tempfile::tempdir().unwrap();
        let cache2 = ObjectCache::open(dir2.path(), src2.clone()).unwrap();
        let err = cache2.get(&req(good, None)).unwrap_err();
        assert!(
            matches!(err, Error::Catalog(catalog::Error::HashMismatch { .. })),
            "{err:?}"
        );
        assert!(!cache2.path_of(&good).exists());
        assert!(txn_is_empty(&cache2));
        assert_eq!(src2.no_cache_fetches.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn size_mismatch_is_rejected_and_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let hash = src.add(b"12345");
        let cache = ObjectCache::open(dir.path(), src).unwrap();
        let err = cache.get(&req(hash, Some(6))).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SizeMismatch {
                    expected: 6,
                    actual: 5,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!cache.path_of(&hash).exists());
    }

    #[test]
    fn short_cached_file_is_deleted_and_refetched() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let hash = src.add(b"abcdefgh");
        let cache = ObjectCache::open(dir.path(), src.clone()).unwrap();
        cache.get(&req(hash, Some(8))).unwrap();
        std::fs::write(cache.path_of(&hash), b"abc").unwrap();
        assert_eq!(
            read_all(cache.get(&req(hash, Some(8))).unwrap()),
            b"abcdefgh"
        );
        assert_eq!(src.fetches.load(Ordering::SeqCst), 2);
        assert_eq!(std::fs::read(cache.path_of(&hash)).unwrap(), b"abcdefgh");
    }

    #[test]
    fn concurrent_requests_share_one_download() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource {
            delay: Duration::from_millis(200),
            ..Default::default()
        });
        let hash = src.add(&vec![7u8; 100_000]);
        let missing = ContentHash::of_bytes(HashAlgorithm::Sha1, b"nowhere");
        let cache = Arc::new(ObjectCache::open(dir.path(), src.clone()).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                std::thread::spawn(move || read_all(cache.get(&req(hash, Some(100_000))).unwrap()))
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), vec![7u8; 100_000]);
        }
        assert_eq!(src.fetches.load(Ordering::SeqCst), 1);

        // Failures are shared too: waiters get the leader's error.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let cache = cache.clone();
                std::thread::spawn(move || cache.get(&req(missing, None)).map(|_| ()))
            })
            .collect();
        for t in threads {
            let err = t.join().unwrap().unwrap_err();
            assert!(err.to_string().contains("404"), "{err}");
        }
        assert_eq!(src.fetches.load(Ordering::SeqCst), 2);
    }

    /// Bytes of all committed object files under `root`.
    fn usage(root: &Path) -> u64 {
        let mut total = 0;
        for i in 0..=255u8 {
            for e in std::fs::read_dir(root.join(format!("{i:02x}")))
                .unwrap()
                .flatten()
            {
                total += e.metadata().unwrap().len();
            }
        }
        total
    }

    #[test]
    fn quota_smaller_than_the_data_holds_and_open_files_survive() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let objects: Vec<(ContentHash, Vec<u8>)> = (0..20u8)
            .map(|i| {
                let raw = vec![i; 10_000 + usize::from(i) * 100];
                (src.add(&raw), raw)
            })
            .collect();
        let quota = 50_000;
        let cache = ObjectCache::open_with_quota(dir.path(), src.clone(), Some(quota)).unwrap();
        // Hold the first object open the whole time: it must never be evicted.
        let held = cache
            .get(&req(objects[0].0, Some(objects[0].1.len() as u64)))
            .unwrap();
        for _ in 0..2 {
            for (hash, raw) in &objects {
                let got = read_all(cache.get(&req(*hash, Some(raw.len() as u64))).unwrap());
                assert_eq!(&got, raw);
                let used = usage(dir.path());
                assert!(
                    used <= quota + 12_000,
                    "cache holds {used} bytes, quota {quota}"
                );
                assert_eq!(cache.index().stats().unwrap().size, used);
            }
        }
        assert!(cache.path_of(&objects[0].0).exists());
        drop(held);
        let s = cache.index().stats().unwrap();
        assert!(s.misses >= 20 && s.hits >= 1, "{s:?}");
        assert!(s.bytes_fetched > 0);
        assert_eq!(cache.index().evict_all().unwrap(), s.size);
        assert_eq!(usage(dir.path()), 0);
    }

    #[test]
    fn warm_hits_share_pins_and_do_not_write_the_index_each_time() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let hash = src.add(b"shared");
        let cache = ObjectCache::open(dir.path(), src.clone()).unwrap();
        let first = cache.get(&req(hash, Some(6))).unwrap();
        // Held by this process: the same descriptor and lock, each with its own position.
        let second = cache.get(&req(hash, Some(6))).unwrap();
        assert_eq!(first.as_raw_fd(), second.as_raw_fd());
        assert_eq!(read_all(second), b"shared");
        assert_eq!(read_all(first), b"shared");
        // Not held, but touched within the interval: no index write, the hit is pending.
        let acseq = || -> i64 {
            let conn = Connection::open(dir.path().join("cachedb")).unwrap();
            conn.query_row(
                "SELECT acseq FROM cache_catalog WHERE sha = ?1",
                [hash.to_hex()],
                |r| r.get(0),
            )
            .unwrap()
        };
        cache.index().flush().unwrap();
        let before = acseq();
        assert_eq!(read_all(cache.get(&req(hash, Some(6))).unwrap()), b"shared");
        cache.index().flush().unwrap();
        assert_eq!(acseq(), before);
        drop(cache);
        // Hits reach the counter with the index's writes (three: the open that follows
        // the download counts as one, as it always did).
        let reopened = CacheIndex::open(dir.path()).unwrap();
        assert_eq!(reopened.stats().unwrap().hits, 3);
        assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_modified_cache_file_is_detected_and_refetched() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let hash = src.add(b"original");
        let cache = ObjectCache::open(dir.path(), src.clone()).unwrap();
        drop(cache.get(&req(hash, None)).unwrap());
        // Same length, different bytes, written later (bit flip by another program).
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(cache.path_of(&hash), b"ORIGINAL").unwrap();
        assert_eq!(read_all(cache.get(&req(hash, None)).unwrap()), b"original");
        assert_eq!(src.fetches.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn read_ahead_fetches_once_and_counts_what_is_read_later() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let read = src.add(&vec![1u8; 3000]);
        let unread = src.add(&vec![2u8; 5000]);
        let cache = ObjectCache::open(dir.path(), src.clone()).unwrap();
        assert!(cache.prefetch(&req(read, Some(3000))).unwrap());
        assert!(cache.prefetch(&req(unread, Some(5000))).unwrap());
        // Cached already: nothing to do.
        assert!(!cache.prefetch(&req(read, Some(3000))).unwrap());
        assert_eq!(src.fetches.load(Ordering::SeqCst), 2);
        // A demand read of a read-ahead object is a hit, and makes it "used".
        assert_eq!(
            read_all(cache.get(&req(read, Some(3000))).unwrap()),
            vec![1u8; 3000]
        );
        assert_eq!(src.fetches.load(Ordering::SeqCst), 2);
        drop(cache);
        let stats = CacheIndex::open(dir.path()).unwrap().stats().unwrap();
        assert_eq!(stats.readahead_bytes, 8000);
        assert_eq!(stats.readahead_used_bytes, 3000, "waste is the unread 5000");
    }

    #[test]
    fn a_read_of_a_claimed_pack_member_waits_for_it_instead_of_fetching() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let cache = Arc::new(ObjectCache::open(dir.path(), src.clone()).unwrap());
        let first = catalog::compress(&[5u8; 3000]);
        let second = catalog::compress(&[6u8; 2000]);
        let third = catalog::compress(&[7u8; 1000]);
        let [r1, r2, r3] = [(&first, 3000), (&second, 2000), (&third, 1000)]
            .map(|(b, n)| req(ContentHash::of_bytes(HashAlgorithm::Sha1, b), Some(n)));
        // The server has them all: a read that does not wait fetches.
        for (r, b) in [(&r1, &first), (&r2, &second), (&r3, &third)] {
            lock(&src.objects).insert(r.hash, b.clone());
        }
        let members = [r1, r2, r3];
        let mut claim = cache.claim_pack(&members);
        assert_eq!(claim.next_member(), Some((0, false)));
        assert!(claim.commit(0, &first).unwrap());
        assert_eq!(claim.next_member(), Some((1, false)), "pack order");
        let wait_for_a_reader = |claim: &PackClaim<'_>| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while lock(&claim.wanted).is_empty() {
                assert!(Instant::now() < deadline, "the reader never waited");
                std::thread::yield_now();
            }
        };
        // The pack is being unpacked: its third member is read meanwhile.
        let reader = {
            let cache = cache.clone();
            std::thread::spawn(move || read_all(cache.get(&r3).unwrap()))
        };
        wait_for_a_reader(&claim);
        // Waited for: it goes first.
        assert_eq!(claim.next_member(), Some((2, true)));
        assert!(claim.commit(2, &third).unwrap());
        assert_eq!(reader.join().unwrap(), vec![7u8; 1000]);
        assert_eq!(claim.next_member(), Some((1, false)));
        assert_eq!(src.fetches.load(Ordering::SeqCst), 0, "nothing fetched");
        // The second is read, then given up while the read waits (the pack's unpacking
        // stopped): the read fetches it on its own.
        let reader = {
            let cache = cache.clone();
            std::thread::spawn(move || read_all(cache.get(&r2).unwrap()))
        };
        wait_for_a_reader(&claim);
        drop(claim);
        assert_eq!(reader.join().unwrap(), vec![6u8; 2000]);
        assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
        assert!(lock(&cache.in_flight).is_empty(), "no flight left behind");
        // A member cached when the pack arrived is not claimed.
        let mut again = cache.claim_pack(std::slice::from_ref(&r1));
        assert_eq!(again.next_member(), None);
        assert!(!again.commit(0, &first).unwrap());
    }

    #[test]
    fn a_claimed_member_whose_fill_panics_does_not_hold_its_readers() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let cache = Arc::new(ObjectCache::open(dir.path(), src.clone()).unwrap());
        let raw = [8u8; 500];
        let r = req(src.add(&raw), Some(500));
        let members = [r];
        let claim = cache.claim_pack(&members);
        let flight = claim.flights[&r.hash].1.clone();
        let filled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.fill_claimed(&r, &flight, Arrival::Pack, || panic!("a bug"))
        }));
        assert!(filled.is_err());
        assert!(
            !lock(&cache.in_flight).contains_key(&r.hash),
            "the flight ended"
        );
        drop(claim);
        assert_eq!(read_all(cache.get(&r).unwrap()), raw.to_vec());
    }

    #[test]
    fn pack_members_are_verified_committed_and_counted_as_prefetched() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let cache = ObjectCache::open(dir.path(), src.clone()).unwrap();
        let good = catalog::compress(&[3u8; 4000]);
        let good_hash = ContentHash::of_bytes(HashAlgorithm::Sha1, &good);
        let other = catalog::compress(&[4u8; 1000]);
        let other_hash = ContentHash::of_bytes(HashAlgorithm::Sha1, &other);
        // A flipped byte: refused, nothing cached.
        let mut bad = other.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let e = cache
            .commit_stored(&req(other_hash, Some(1000)), &bad)
            .unwrap_err();
        assert!(e.to_string().contains("mismatch"), "{e}");
        assert!(!cache.is_cached(&req(other_hash, Some(1000))));
        // The right size matters too (content longer or shorter than the catalog says).
        for wrong in [3999, 4001] {
            assert!(
                cache
                    .commit_stored(&req(good_hash, Some(wrong)), &good)
                    .is_err(),
                "{wrong}"
            );
        }
        assert!(
            cache
                .commit_stored(&req(good_hash, Some(4000)), &good)
                .unwrap()
        );
        assert!(
            !cache
                .commit_stored(&req(good_hash, Some(4000)), &good)
                .unwrap(),
            "cached already"
        );
        assert!(txn_is_empty(&cache));
        // Read from the cache: no download.
        assert_eq!(
            read_all(cache.get(&req(good_hash, Some(4000))).unwrap()),
            vec![3u8; 4000]
        );
        assert_eq!(src.fetches.load(Ordering::SeqCst), 0);
        // The rejected member is fetched on its own when read.
        lock(&src.objects).insert(other_hash, other.clone());
        assert_eq!(
            read_all(cache.get(&req(other_hash, Some(1000))).unwrap()),
            vec![4u8; 1000]
        );
        assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
        drop(cache);
        let stats = CacheIndex::open(dir.path()).unwrap().stats().unwrap();
        assert_eq!(
            (stats.prefetch_bytes, stats.prefetch_used_bytes),
            (4000, 4000)
        );
        assert_eq!(
            stats.misses, 1,
            "a pack member is not a miss; the rejected one's fetch is"
        );
    }

    #[test]
    fn fetch_stored_verifies_and_stops_at_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource {
            corrupt_unless_no_cache: true,
            ..MemorySource::default()
        });
        let hash = src.add(&[5u8; 100_000]);
        let stored_len = lock(&src.objects)[&hash].len() as u64;
        let cache = ObjectCache::open(dir.path(), src.clone()).unwrap();
        // Corrupt through the proxy: the no-cache retry gets the right bytes.
        let bytes = cache.fetch_stored(&req(hash, None), stored_len).unwrap();
        assert_eq!(bytes, lock(&src.objects)[&hash]);
        assert_eq!(src.no_cache_fetches.load(Ordering::SeqCst), 1);
        assert!(!cache.is_cached(&req(hash, None)), "not cached itself");
        let e = cache
            .fetch_stored(&req(hash, None), stored_len - 1)
            .unwrap_err();
        assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
    }

    #[test]
    fn read_ahead_never_evicts_and_stays_inside_the_quota() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let demanded = src.add(&vec![3u8; 6000]);
        let ahead = src.add(&vec![4u8; 6000]);
        let cache = ObjectCache::open_with_quota(dir.path(), src.clone(), Some(10_000)).unwrap();
        drop(cache.get(&req(demanded, Some(6000))).unwrap());
        // 6000 + 6000 > 10 000: read-ahead would have to evict, so it does nothing.
        assert!(!cache.prefetch(&req(ahead, Some(6000))).unwrap());
        assert!(cache.is_cached(&req(demanded, Some(6000))));
        assert!(!cache.is_cached(&req(ahead, Some(6000))));
        assert!(usage(dir.path()) <= 10_000);
        // Without a known size the check happens after the download: dropped, not committed.
        assert!(!cache.prefetch(&req(ahead, None)).unwrap());
        assert!(!cache.is_cached(&req(ahead, None)));
        assert!(cache.is_cached(&req(demanded, Some(6000))));
        // A demand read may evict, as always.
        drop(cache.get(&req(ahead, Some(6000))).unwrap());
        assert!(usage(dir.path()) <= 10_000);
    }

    #[test]
    fn a_demand_read_shares_a_read_ahead_download_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource {
            delay: Duration::from_millis(300),
            ..Default::default()
        });
        let hash = src.add(&vec![5u8; 50_000]);
        let cache = Arc::new(ObjectCache::open(dir.path(), src.clone()).unwrap());
        let ahead = {
            let cache = cache.clone();
            std::thread::spawn(move || cache.prefetch(&req(hash, Some(50_000))).unwrap())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(cache.demand_in_flight(), 0, "read-ahead is not demand");
        let demand = {
            let cache = cache.clone();
            std::thread::spawn(move || read_all(cache.get(&req(hash, Some(50_000))).unwrap()))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(cache.demand_in_flight(), 1);
        assert!(ahead.join().unwrap());
        assert_eq!(demand.join().unwrap(), vec![5u8; 50_000]);
        assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
        assert_eq!(cache.demand_in_flight(), 0);
    }
}
