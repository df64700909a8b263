//! The compress-and-hash worker pool (DESIGN.md, "Publisher": download → decompress → tar →
//! chunk, compress and hash on a worker pool → object store).
//!
//! Layer readers (one blocking thread per layer) cut file contents into pieces — whole files
//! up to the minimum chunk size, content-defined chunks above it (CVMFS spec §4, through
//! [`catalog::chunking::Chunker`]) — and hand them to a fixed set of worker threads over a
//! bounded channel, so memory stays bounded (queue depth × 16 MiB) whatever the layer size.
//! A worker compresses (zlib level 6) and hashes the piece and stores it unless the object
//! exists already.
//!
//! Readers do not wait for their pieces: an entry gets a *placeholder* hash naming the job,
//! and [`FileSink::finish`] replaces every placeholder in the layer tree once all jobs of the
//! layer are done. Hard-link copies of an entry carry the same placeholder and are resolved
//! with it.

use std::collections::HashMap;
use std::io::Read;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use catalog::chunking::{ChunkParams, Chunker};
use catalog::{Chunk, ContentHash, HashAlgorithm, LocalStore, Suffix};

use crate::error::{Error, Result};
use crate::tree::Node;

/// Bytes read from a tar entry at a time.
const READ_BLOCK: usize = 1 << 20;
/// First 12 bytes of a placeholder digest; the last 8 are the job number.
const PLACEHOLDER_MAGIC: [u8; 12] = *b"strata-job\xff\xfe";

struct Job {
    data: Vec<u8>,
    suffix: Suffix,
    id: u64,
    reply: Sender<(u64, Result<ContentHash>)>,
}

/// A fixed set of threads storing objects; dropping it ends them.
pub struct Pool {
    tx: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    store: LocalStore,
    params: ChunkParams,
}

impl Pool {
    /// Starts `threads` workers (at least 1) writing to `store`, with a queue of
    /// `2 × threads` pieces; files are chunked with the CVMFS defaults (4/8/16 MiB).
    pub fn new(store: &LocalStore, threads: usize) -> Pool {
        Pool::with_params(store, threads, ChunkParams::default())
    }

    /// As [`Pool::new`], chunking with `params`.
    pub fn with_params(store: &LocalStore, threads: usize, params: ChunkParams) -> Pool {
        let threads = threads.max(1);
        let (tx, rx) = sync_channel::<Job>(2 * threads);
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..threads)
            .map(|i| {
                let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
                let store = store.clone();
                std::thread::Builder::new()
                    .name(format!("strata-zlib-{i}"))
                    .spawn(move || {
                        loop {
                            let job = match rx.lock() {
                                Ok(r) => r.recv(),
                                Err(_) => return,
                            };
                            let Ok(job) = job else { return };
                            let r = store_piece(&store, &job.data, job.suffix);
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
        }
    }

    /// One worker per CPU.
    pub fn per_cpu(store: &LocalStore) -> Pool {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        Pool::new(store, n)
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

/// Compresses (zlib level 6, spec §3) and hashes `raw` and stores it as an object with
/// `suffix` unless it exists. Unlike [`LocalStore::put_raw`] the object is not fsynced one
/// by one (one fsync per object made the workers wait on the disk instead of compressing);
/// `ingest` syncs the file system once before it publishes
/// ([`crate::repo::Repo::sync_objects`]). A killed process loses nothing either way: the
/// rename happens after the write.
pub fn store_piece(store: &LocalStore, raw: &[u8], suffix: Suffix) -> Result<ContentHash> {
    let stored = catalog::compress(raw);
    let hash = ContentHash::of_bytes(HashAlgorithm::Sha1, &stored);
    let target = store.object_file(&hash, suffix);
    if target.is_file() {
        return Ok(hash);
    }
    let mut tmp = store.temp_file()?;
    std::io::Write::write_all(&mut tmp, &stored)
        .map_err(|e| Error::io(format!("writing {}", tmp.path().display()), e))?;
    tmp.persist(&target)
        .map_err(|e| Error::io(format!("renaming to {}", target.display()), e.error))?;
    Ok(hash)
}

/// The placeholder hash standing for job `id` until the job is done.
fn placeholder(id: u64) -> ContentHash {
    let mut digest = [0u8; 20];
    digest[..12].copy_from_slice(&PLACEHOLDER_MAGIC);
    digest[12..].copy_from_slice(&id.to_be_bytes());
    ContentHash {
        algorithm: HashAlgorithm::Sha1,
        digest,
    }
}

fn placeholder_id(h: &ContentHash) -> Option<u64> {
    (h.digest[..12] == PLACEHOLDER_MAGIC).then(|| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.digest[12..]);
        u64::from_be_bytes(b)
    })
}

/// How a file's content will be stored (hashes may be placeholders until
/// [`FileSink::finish`]).
#[derive(Debug)]
pub struct StoredContent {
    /// Uncompressed size in bytes.
    pub size: u64,
    /// The whole-file object, when not chunked.
    pub hash: Option<ContentHash>,
    /// The chunks (≥ 2), when chunked.
    pub chunks: Vec<Chunk>,
}

/// The per-layer side of the pool: submits the pieces of one layer's files and collects
/// their hashes.
pub struct FileSink<'p> {
    pool: &'p Pool,
    params: ChunkParams,
    reply_tx: Sender<(u64, Result<ContentHash>)>,
    reply_rx: Receiver<(u64, Result<ContentHash>)>,
    next_id: u64,
    /// Job → tar path, for error messages.
    paths: HashMap<u64, String>,
    done: HashMap<u64, ContentHash>,
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
            done: HashMap::new(),
        }
    }

    fn submit(&mut self, data: Vec<u8>, suffix: Suffix, path: &str) -> Result<ContentHash> {
        let id = self.next_id;
        self.next_id += 1;
        self.paths.insert(id, path.to_string());
        self.pool.submit(Job {
            data,
            suffix,
            id,
            reply: self.reply_tx.clone(),
        })?;
        // Collect what is ready, so the map of finished jobs stays current.
        while let Ok((id, r)) = self.reply_rx.try_recv() {
            self.record(id, r)?;
        }
        Ok(placeholder(id))
    }

    fn record(&mut self, id: u64, r: Result<ContentHash>) -> Result<()> {
        let hash = r.map_err(|e| {
            let path = self.paths.get(&id).cloned().unwrap_or_default();
            Error::Task(format!("storing contents of {path:?}: {e}"))
        })?;
        self.done.insert(id, hash);
        Ok(())
    }

    /// Reads exactly `size` bytes of one file from `r` and queues its pieces. Errors with
    /// [`Error::Io`] if `r` ends early or fails.
    pub fn store_file<R: Read>(
        &mut self,
        r: &mut R,
        size: u64,
        path: &str,
    ) -> Result<StoredContent> {
        let short = |got: u64| {
            Error::io(
                format!("reading {path:?}"),
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("file shorter than its header says ({got} of {size} bytes)"),
                ),
            )
        };
        if size <= self.params.min {
            let mut data = Vec::with_capacity(size as usize);
            r.take(size)
                .read_to_end(&mut data)
                .map_err(|e| Error::io(format!("reading {path:?}"), e))?;
            if data.len() as u64 != size {
                return Err(short(data.len() as u64));
            }
            let hash = self.submit(data, Suffix::None, path)?;
            return Ok(StoredContent {
                size,
                hash: Some(hash),
                chunks: Vec::new(),
            });
        }
        let mut chunker = Chunker::new(self.params).map_err(Error::from)?;
        let mut piece: Vec<u8> = Vec::new();
        let mut piece_start = 0u64;
        let mut chunks = Vec::new();
        let mut block = vec![0u8; READ_BLOCK];
        let mut left = size;
        while left > 0 {
            let want = (left as usize).min(READ_BLOCK);
            let n = r
                .read(&mut block[..want])
                .map_err(|e| Error::io(format!("reading {path:?}"), e))?;
            if n == 0 {
                return Err(short(size - left));
            }
            left -= n as u64;
            let mut data = &block[..n];
            while let Some(k) = chunker.scan(data) {
                piece.extend_from_slice(&data[..k]);
                data = &data[k..];
                let len = piece.len() as u64;
                let full = std::mem::take(&mut piece);
                let hash = self.submit(full, Suffix::Partial, path)?;
                chunks.push(Chunk {
                    offset: piece_start,
                    size: len,
                    hash,
                });
                piece_start += len;
            }
            piece.extend_from_slice(data);
        }
        if chunks.is_empty() {
            let hash = self.submit(piece, Suffix::None, path)?;
            return Ok(StoredContent {
                size,
                hash: Some(hash),
                chunks,
            });
        }
        let len = piece.len() as u64;
        let hash = self.submit(piece, Suffix::Partial, path)?;
        chunks.push(Chunk {
            offset: piece_start,
            size: len,
            hash,
        });
        Ok(StoredContent {
            size,
            hash: None,
            chunks,
        })
    }

    /// Waits for every queued piece of this layer and puts the real hashes into `root`'s
    /// entries (the whole loaded subtree). Errors with the first failed job.
    pub fn finish(mut self, root: &mut Node) -> Result<()> {
        drop(std::mem::replace(&mut self.reply_tx, channel().0));
        while (self.done.len() as u64) < self.next_id {
            match self.reply_rx.recv() {
                Ok((id, r)) => self.record(id, r)?,
                Err(_) => {
                    return Err(Error::Task(
                        "object workers stopped before finishing the layer".into(),
                    ));
                }
            }
        }
        let done = &self.done;
        let mut missing = None;
        resolve(root, &mut |h: &mut ContentHash| {
            if let Some(id) = placeholder_id(h) {
                match done.get(&id) {
                    Some(real) => *h = *real,
                    None => missing = Some(id),
                }
            }
        });
        match missing {
            Some(id) => Err(Error::Task(format!("object job {id} has no result"))),
            None => Ok(()),
        }
    }

    /// The store the pool writes to.
    pub fn store(&self) -> &LocalStore {
        &self.pool.store
    }
}

fn resolve(node: &mut Node, f: &mut dyn FnMut(&mut ContentHash)) {
    if let Some(h) = node.entry.hash.as_mut() {
        f(h);
    }
    for c in &mut node.entry.chunks {
        f(&mut c.hash);
    }
    for child in node.children.values_mut() {
        resolve(child, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::file_entry;

    fn small_params() -> ChunkParams {
        ChunkParams::new(64, 256, 1024).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn files_and_chunks_get_real_hashes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = LocalStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let pool = Pool::with_params(&store, 2, small_params());
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
        assert!(b.chunks.len() >= 2);
        let expect_cuts =
            catalog::chunking::cut_points(&big, small_params()).unwrap_or_else(|e| panic!("{e}"));
        let got_cuts: Vec<u64> = b.chunks.iter().skip(1).map(|c| c.offset).collect();
        assert_eq!(got_cuts, expect_cuts);
        assert_eq!(
            b.chunks.iter().map(|c| c.size).sum::<u64>(),
            big.len() as u64
        );
        let mut root = Node::dir("", 0o755, 0);
        let sh = s.hash.unwrap_or_else(|| panic!("hash"));
        root.insert(&[], Node::leaf(file_entry("s", 0o644, 0, 0, 0, 5, sh)), 0);
        root.insert(
            &[],
            Node::leaf(file_entry("hardlink", 0o644, 0, 0, 0, 5, sh)),
            0,
        );
        let mut e = file_entry("b", 0o644, 0, 0, 0, big.len() as u64, sh);
        e.hash = None;
        e.chunks = b.chunks;
        root.insert(&[], Node::leaf(e), 0);
        sink.finish(&mut root).unwrap_or_else(|e| panic!("{e}"));
        let real = store
            .put_raw(b"hello", Suffix::None)
            .unwrap_or_else(|e| panic!("{e}"));
        for n in ["s", "hardlink"] {
            assert_eq!(root.get(&[n]).and_then(|n| n.entry.hash), Some(real));
        }
        let chunks = &root.get(&["b"]).unwrap_or_else(|| panic!("b")).entry.chunks;
        let mut joined = Vec::new();
        for c in chunks {
            assert!(placeholder_id(&c.hash).is_none());
            let stored = store
                .get(&c.hash, Suffix::Partial)
                .unwrap_or_else(|e| panic!("{e}"));
            joined.extend(catalog::decompress(&stored, 1 << 20).unwrap_or_else(|e| panic!("{e}")));
        }
        assert_eq!(joined, big);
    }

    #[test]
    fn short_input_is_an_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = LocalStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let pool = Pool::with_params(&store, 1, small_params());
        let mut sink = FileSink::new(&pool);
        assert!(sink.store_file(&mut &b"abc"[..], 10, "f").is_err());
        assert!(sink.store_file(&mut &[7u8; 100][..], 5000, "g").is_err());
    }
}
