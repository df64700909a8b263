//! The compress-and-hash worker pool (docs/architecture.md §2: download → decompress → tar →
//! chunk, compress and hash on a worker pool → object store).
//!
//! Layer readers (one blocking thread per layer) cut file contents into pieces — whole files
//! up to the minimum chunk size, content-defined chunks above it (docs/format.md §4, through
//! [`catalog::chunking::Chunker`]) — and hand them to a fixed set of worker threads. Every
//! byte of a piece, from the moment a reader starts filling it until a worker has stored
//! it, is counted against one byte budget shared by all readers of the pool
//! ([`Pool::budget`]): a reader reserves the piece's final size (at most the maximum chunk
//! size) before reading it and waits while the budget is spent, so file contents in memory
//! never exceed the budget whatever the number of layers converted at once or their size.
//! A worker compresses (zlib level 6) into a buffer it keeps for its lifetime, hashes the
//! result and stores it unless the object exists already ([`LocalStore::store_object`],
//! not fsynced one by one).
//!
//! Readers do not wait for their pieces: [`FileSink::store_file`] returns the file's
//! [`PendingContent`], naming the jobs ([`JobId`]) that store its objects, and the jobs'
//! hashes come back later ([`FileSink::take_ready`], [`FileSink::finish_all`]).
//! [`PendingContent::resolve`] turns the one into the other. A job number is not a
//! [`ContentHash`], so it cannot end up in a catalog in place of one. Hard-link copies of
//! an entry carry the same pending content and are resolved with it.

use std::collections::HashMap;
use std::io::Read;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use catalog::chunking::{ChunkParams, Chunker};
use catalog::{Chunk, ContentHash, Durability, LocalStore, Suffix};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Bytes read from a tar entry at a time.
const READ_BLOCK: usize = 1 << 20;

/// The number of one job of a [`FileSink`]: one object being compressed and stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A regular file's content whose objects are still being stored: the jobs storing them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PendingContent {
    /// One whole-file object (files up to the minimum chunk size, or without a cut).
    Whole(JobId),
    /// The chunks (≥ 2), in file order.
    Chunked(Vec<PendingChunk>),
}

/// One chunk of a [`PendingContent::Chunked`] file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChunk {
    /// Offset of the chunk in the file.
    pub offset: u64,
    /// Uncompressed size of the chunk.
    pub size: u64,
    /// The job storing the chunk's object.
    pub job: JobId,
}

impl PendingContent {
    /// The content as a catalog row holds it — the whole-file object, or the chunks — with
    /// the object hash of every job from `hash_of`.
    ///
    /// Errors: whatever `hash_of` returns (a job without a result).
    pub fn resolve(
        &self,
        mut hash_of: impl FnMut(JobId) -> Result<ContentHash>,
    ) -> Result<(Option<ContentHash>, Vec<Chunk>)> {
        match self {
            PendingContent::Whole(job) => Ok((Some(hash_of(*job)?), Vec::new())),
            PendingContent::Chunked(chunks) => {
                let chunks = chunks
                    .iter()
                    .map(|c| {
                        Ok(Chunk {
                            offset: c.offset,
                            size: c.size,
                            hash: hash_of(c.job)?,
                        })
                    })
                    .collect::<Result<_>>()?;
                Ok((None, chunks))
            }
        }
    }
}

/// What a worker sends back: the job and the hash of the object it stored.
type Reply = (JobId, Result<ContentHash>);

struct Job {
    data: Vec<u8>,
    /// Bytes of the budget this piece holds (released once the worker is done with it).
    reserved: u64,
    suffix: Suffix,
    id: JobId,
    reply: Sender<Reply>,
}

/// A counting semaphore over bytes: the file contents that readers and workers hold.
#[derive(Debug)]
pub struct Budget {
    capacity: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

impl Budget {
    /// A budget of `capacity` bytes (at least 1).
    pub fn new(capacity: u64) -> Budget {
        Budget {
            capacity: capacity.max(1),
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Total bytes that may be held at once.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `n` bytes (clamped to the capacity) are free, takes them and returns how
    /// many were taken (pass that number to [`Budget::release`]).
    pub fn acquire(&self, n: u64) -> u64 {
        let n = n.min(self.capacity);
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        while *used + n > self.capacity {
            used = self
                .freed
                .wait(used)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *used += n;
        n
    }

    /// Gives back `n` bytes taken by [`Budget::acquire`].
    pub fn release(&self, n: u64) {
        if n == 0 {
            return;
        }
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        *used = used.saturating_sub(n);
        drop(used);
        self.freed.notify_all();
    }
}

/// The default content budget for `threads` workers: `(threads + 2) × max` (one piece per
/// worker being compressed and two being filled or queued), at least 4 × `max`.
pub fn default_budget(threads: usize, params: ChunkParams) -> u64 {
    (threads as u64 + 2).max(4) * params.max
}

/// A fixed set of threads storing objects; dropping it ends them.
pub struct Pool {
    tx: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    store: LocalStore,
    params: ChunkParams,
    budget: Arc<Budget>,
}

impl Pool {
    /// Starts `threads` workers (at least 1) writing to `store`, with the default budget
    /// ([`default_budget`]); files are chunked with the CVMFS defaults (4/8/16 MiB).
    pub fn new(store: &LocalStore, threads: usize) -> Pool {
        let params = ChunkParams::default();
        Pool::with_params(store, threads, params, default_budget(threads, params))
    }

    /// As [`Pool::new`], chunking with `params`, with `budget` bytes of file contents in
    /// memory at most (pieces being read, queued or compressed; see [`Budget`]). A budget
    /// below `params.max` still works: a piece larger than the budget then waits until it is
    /// the only one in flight.
    pub fn with_params(
        store: &LocalStore,
        threads: usize,
        params: ChunkParams,
        budget: u64,
    ) -> Pool {
        let threads = threads.max(1);
        let budget = Arc::new(Budget::new(budget));
        // The budget bounds the bytes; the queue only needs to hold one job per worker.
        let (tx, rx) = sync_channel::<Job>(threads);
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..threads)
            .map(|i| {
                let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
                let store = store.clone();
                let budget = budget.clone();
                std::thread::Builder::new()
                    .name(format!("strata-zlib-{i}"))
                    .spawn(move || {
                        let mut out = Vec::new();
                        loop {
                            let job = match rx.lock() {
                                Ok(r) => r.recv(),
                                Err(_) => return,
                            };
                            let Ok(job) = job else { return };
                            // Not fsynced one by one: `ingest` syncs the file system once
                            // before it publishes ([`crate::repo::Repo::sync_objects`]).
                            let r = store
                                .store_object(&job.data, job.suffix, Durability::Deferred, &mut out)
                                .map_err(Error::from);
                            drop(job.data);
                            budget.release(job.reserved);
                            // Keep the output buffer for the next piece, unless one
                            // unusually large piece grew it beyond the budget.
                            if out.capacity() as u64 > budget.capacity() {
                                out = Vec::new();
                            }
                            let _ = job.reply.send((job.id, r));
                        }
                    })
            })
            .filter_map(std::result::Result::ok)
            .collect();
        Pool {
            tx: Some(tx),
            workers,
            store: store.clone(),
            params,
            budget,
        }
    }

    /// One worker per CPU, with `budget` bytes of file contents in flight at most (`None`:
    /// [`default_budget`]).
    pub fn per_cpu(store: &LocalStore, budget: Option<u64>) -> Pool {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        let params = ChunkParams::default();
        let budget = budget.unwrap_or_else(|| default_budget(n, params));
        Pool::with_params(store, n, params, budget)
    }

    /// The byte budget shared by every reader and worker of this pool.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    fn submit(&self, job: Job) -> Result<()> {
        let stopped = || Error::Task("the object worker pool has stopped".into());
        match &self.tx {
            Some(tx) if !self.workers.is_empty() => tx.send(job).map_err(|_| stopped()),
            _ => Err(stopped()),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The per-layer side of the pool: submits the pieces of one layer's files and collects
/// their hashes.
pub struct FileSink<'p> {
    pool: &'p Pool,
    params: ChunkParams,
    reply_tx: Sender<Reply>,
    reply_rx: Receiver<Reply>,
    next_id: u64,
    /// Job → tar path, for error messages; only jobs not finished yet.
    paths: HashMap<JobId, String>,
    /// Results not yet taken by [`FileSink::take_ready`] (or [`FileSink::finish_all`]).
    ready: Vec<(JobId, ContentHash)>,
    /// Number of jobs finished.
    finished: u64,
}

impl<'p> FileSink<'p> {
    /// A sink for one layer; files larger than the pool's minimum chunk size are chunked.
    pub fn new(pool: &'p Pool) -> FileSink<'p> {
        let (reply_tx, reply_rx) = channel();
        FileSink {
            pool,
            params: pool.params,
            reply_tx,
            reply_rx,
            next_id: 0,
            paths: HashMap::new(),
            ready: Vec::new(),
            finished: 0,
        }
    }

    /// Queues `data`, which holds `reserved` bytes of the pool's budget (released by the
    /// worker, or here if the pool has stopped).
    fn submit(
        &mut self,
        data: Vec<u8>,
        reserved: u64,
        suffix: Suffix,
        path: &str,
    ) -> Result<JobId> {
        let id = JobId(self.next_id);
        self.next_id += 1;
        self.paths.insert(id, path.to_string());
        let queued = self.pool.submit(Job {
            data,
            reserved,
            suffix,
            id,
            reply: self.reply_tx.clone(),
        });
        if queued.is_err() {
            self.pool.budget().release(reserved);
        }
        queued?;
        // Collect what is ready, so the map of finished jobs stays current.
        while let Ok((id, r)) = self.reply_rx.try_recv() {
            self.record(id, r)?;
        }
        Ok(id)
    }

    fn record(&mut self, id: JobId, r: Result<ContentHash>) -> Result<()> {
        let path = self.paths.remove(&id).unwrap_or_default();
        let hash = r.map_err(|e| Error::Task(format!("storing contents of {path:?}: {e}")))?;
        self.ready.push((id, hash));
        self.finished += 1;
        Ok(())
    }

    /// Reads exactly `size` bytes of one file from `r` and queues its pieces; returns the
    /// jobs storing them. Errors with [`Error::Io`] if `r` ends early or fails.
    pub fn store_file<R: Read>(
        &mut self,
        r: &mut R,
        size: u64,
        path: &str,
    ) -> Result<PendingContent> {
        let short = |got: u64| {
            Error::io(
                format!("reading {path:?}"),
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("file shorter than its header says ({got} of {size} bytes)"),
                ),
            )
        };
        let pool: &'p Pool = self.pool;
        let budget = &pool.budget;
        let params = self.params;
        if size <= params.min {
            let reserved = budget.acquire(size);
            let mut data = Vec::with_capacity(size as usize);
            let read = r.take(size).read_to_end(&mut data);
            if let Err(e) = read {
                budget.release(reserved);
                return Err(Error::io(format!("reading {path:?}"), e));
            }
            if data.len() as u64 != size {
                budget.release(reserved);
                return Err(short(data.len() as u64));
            }
            let job = self.submit(data, reserved, Suffix::None, path)?;
            return Ok(PendingContent::Whole(job));
        }
        let mut chunker = Chunker::new(params).map_err(Error::from)?;
        // A piece never exceeds the maximum chunk size nor what is left of the file, so
        // reserving that much before filling it keeps the piece within the budget (and a
        // reader holding a reservation can always finish its piece: no deadlock between
        // readers). The piece is allocated at that size once, never grown.
        let reserve = |left_in_file: u64| budget.acquire(left_in_file.min(params.max));
        let mut reserved = reserve(size);
        let mut piece: Vec<u8> = Vec::with_capacity(reserved as usize);
        let mut piece_start = 0u64;
        let mut chunks = Vec::new();
        let mut block = vec![0u8; READ_BLOCK.min(size as usize)];
        let mut left = size;
        while left > 0 {
            let want = (left as usize).min(block.len());
            let n = match r.read(&mut block[..want]) {
                Ok(0) => {
                    budget.release(reserved);
                    return Err(short(size - left));
                }
                Ok(n) => n,
                Err(e) => {
                    budget.release(reserved);
                    return Err(Error::io(format!("reading {path:?}"), e));
                }
            };
            left -= n as u64;
            let mut data = &block[..n];
            while let Some(k) = chunker.scan(data) {
                piece.extend_from_slice(&data[..k]);
                data = &data[k..];
                let len = piece.len() as u64;
                let full = std::mem::take(&mut piece);
                let held = std::mem::take(&mut reserved);
                let job = self.submit(full, held, Suffix::Partial, path)?;
                chunks.push(PendingChunk {
                    offset: piece_start,
                    size: len,
                    job,
                });
                piece_start += len;
                reserved = reserve(size - piece_start);
                piece = Vec::with_capacity(reserved as usize);
            }
            piece.extend_from_slice(data);
        }
        if chunks.is_empty() {
            let job = self.submit(piece, reserved, Suffix::None, path)?;
            return Ok(PendingContent::Whole(job));
        }
        let len = piece.len() as u64;
        let job = self.submit(piece, reserved, Suffix::Partial, path)?;
        chunks.push(PendingChunk {
            offset: piece_start,
            size: len,
            job,
        });
        Ok(PendingContent::Chunked(chunks))
    }

    /// The results of jobs finished since the last call: `(job, object hash)`, the jobs
    /// being those in the [`PendingContent`] [`FileSink::store_file`] returned. Lets the
    /// caller move results to disk as they come instead of holding one per file.
    pub fn take_ready(&mut self) -> Vec<(JobId, ContentHash)> {
        std::mem::take(&mut self.ready)
    }

    /// Waits for every queued piece of this layer and returns the results not yet taken
    /// by [`FileSink::take_ready`]. Errors with the first failed job.
    pub fn finish_all(mut self) -> Result<Vec<(JobId, ContentHash)>> {
        drop(std::mem::replace(&mut self.reply_tx, channel().0));
        while self.finished < self.next_id {
            match self.reply_rx.recv() {
                Ok((id, r)) => self.record(id, r)?,
                Err(_) => {
                    return Err(Error::Task(
                        "object workers stopped before finishing the layer".into(),
                    ));
                }
            }
        }
        Ok(std::mem::take(&mut self.ready))
    }

    /// The store the pool writes to.
    pub fn store(&self) -> &LocalStore {
        &self.pool.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::tests::random::pseudo_random;

    fn small_params() -> ChunkParams {
        ChunkParams::new(64, 256, 1024).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `content` with the hashes of `done` (every job of it must be there).
    fn resolved(
        done: &HashMap<JobId, ContentHash>,
        content: &PendingContent,
    ) -> (Option<ContentHash>, Vec<Chunk>) {
        content
            .resolve(|job| {
                done.get(&job)
                    .copied()
                    .ok_or_else(|| Error::Task(format!("object job {job} has no result")))
            })
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn files_and_chunks_get_real_hashes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = LocalStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let pool = Pool::with_params(&store, 2, small_params(), 4096);
        let mut sink = FileSink::new(&pool);
        let small = b"hello".to_vec();
        let mut big = Vec::new();
        let mut x: u32 = 1;
        for _ in 0..20_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            big.push((x >> 16) as u8);
        }
        let s = sink
            .store_file(&mut &small[..], 5, "small")
            .unwrap_or_else(|e| panic!("{e}"));
        let b = sink
            .store_file(&mut &big[..], big.len() as u64, "big")
            .unwrap_or_else(|e| panic!("{e}"));
        let PendingContent::Chunked(pending_chunks) = &b else {
            panic!("not chunked: {b:?}")
        };
        assert!(pending_chunks.len() >= 2);
        let expect_cuts =
            catalog::chunking::cut_points(&big, small_params()).unwrap_or_else(|e| panic!("{e}"));
        let got_cuts: Vec<u64> = pending_chunks.iter().skip(1).map(|c| c.offset).collect();
        assert_eq!(got_cuts, expect_cuts);
        assert_eq!(
            pending_chunks.iter().map(|c| c.size).sum::<u64>(),
            big.len() as u64
        );
        // A hard-link copy carries the same pending content and resolves with it.
        let hardlink = s.clone();
        let done: HashMap<JobId, ContentHash> = sink
            .finish_all()
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .collect();
        let real = store
            .put_raw(b"hello", Suffix::None)
            .unwrap_or_else(|e| panic!("{e}"));
        for c in [&s, &hardlink] {
            assert_eq!(resolved(&done, c), (Some(real), Vec::new()));
        }
        let (whole, chunks) = resolved(&done, &b);
        assert_eq!((whole, chunks.len()), (None, pending_chunks.len()));
        let mut joined = Vec::new();
        for c in &chunks {
            let stored = store
                .get(&c.hash, Suffix::Partial)
                .unwrap_or_else(|e| panic!("{e}"));
            joined.extend(catalog::decompress(&stored, 1 << 20).unwrap_or_else(|e| panic!("{e}")));
        }
        assert_eq!(joined, big);
    }

    #[test]
    fn budget_waits_and_releases() {
        let b = Arc::new(Budget::new(100));
        assert_eq!(b.acquire(60), 60);
        assert_eq!(b.acquire(40), 40);
        assert_eq!(b.used(), 100);
        let b2 = b.clone();
        // More than the capacity is clamped to it, so this waits for everything.
        let t = std::thread::spawn(move || b2.acquire(500));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(b.used(), 100, "the acquire must wait");
        b.release(60);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(b.used(), 40, "still waiting: 100 bytes are not free yet");
        b.release(40);
        assert_eq!(t.join().unwrap_or_else(|_| panic!("join")), 100);
        assert_eq!(b.used(), 100);
    }

    /// Layers read at once through one pool with a budget far below the chunk sizes: every
    /// file is stored correctly, nothing deadlocks, and the budget is all given back.
    #[test]
    fn tight_budget_shared_by_several_readers() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = LocalStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let pool = Pool::with_params(&store, 2, small_params(), 300);
        std::thread::scope(|s| {
            for seed in 0..3u64 {
                let pool = &pool;
                let store = &store;
                s.spawn(move || {
                    let mut sink = FileSink::new(pool);
                    let files: Vec<Vec<u8>> = (0..20)
                        .map(|i| pseudo_random(1 + (i * 997) % 5000, seed * 100 + i as u64))
                        .collect();
                    let mut pending = Vec::new();
                    for (i, f) in files.iter().enumerate() {
                        let name = format!("f{i}");
                        let c = sink
                            .store_file(&mut &f[..], f.len() as u64, &name)
                            .unwrap_or_else(|e| panic!("{e}"));
                        assert!(pool.budget().used() <= 300);
                        pending.push(c);
                    }
                    let done: HashMap<JobId, ContentHash> = sink
                        .finish_all()
                        .unwrap_or_else(|e| panic!("{e}"))
                        .into_iter()
                        .collect();
                    for (f, c) in files.iter().zip(&pending) {
                        let mut got = Vec::new();
                        let parts: Vec<(ContentHash, Suffix)> = match resolved(&done, c) {
                            (Some(h), _) => vec![(h, Suffix::None)],
                            (None, chunks) => {
                                chunks.iter().map(|c| (c.hash, Suffix::Partial)).collect()
                            }
                        };
                        for (h, suffix) in parts {
                            let stored = store.get(&h, suffix).unwrap_or_else(|e| panic!("{e}"));
                            got.extend(
                                catalog::decompress(&stored, 1 << 20)
                                    .unwrap_or_else(|e| panic!("{e}")),
                            );
                        }
                        assert_eq!(&got, f);
                    }
                });
            }
        });
        assert_eq!(pool.budget().used(), 0);
    }

    #[test]
    fn short_input_is_an_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = LocalStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let pool = Pool::with_params(&store, 1, small_params(), 4096);
        let mut sink = FileSink::new(&pool);
        assert!(sink.store_file(&mut &b"abc"[..], 10, "f").is_err());
        assert!(sink.store_file(&mut &[7u8; 100][..], 5000, "g").is_err());
    }
}
