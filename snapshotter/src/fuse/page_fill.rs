//! Filling the kernel's page cache with a chunked program when it is started
//! (`FUSE_NOTIFY_STORE`).
//!
//! The kernel reads an unchunked file from its cache file directly ([`super::passthrough`]);
//! a chunked one (several cache files, docs/format.md §4.6) cannot be backed by one file,
//! so every page of it the kernel does not have is a `READ` through this process. A
//! program is faulted in wherever its code runs: gcc's `cc1` (33 MB, 4 chunks) cost some
//! 330 `READ`s in random order on its first run, 30–40 ms of a cold container start whose
//! warm run found the pages cached (`strata-bench-startup`, 0 ms, 2026-12-07).
//!
//! So when `execve` opens a chunked file ([`FMODE_EXEC`] in the `OPEN` flags) whose chunks
//! are all in the cache and whose first bytes are an ELF header
//! ([`crate::client::elf::MAGIC`]), its content is pushed into the kernel's page cache for
//! that inode, once per inode and session, on this session's fill thread, up to
//! [`MAX_FILL_BYTES`]. The open does not wait: pages the kernel asks for before the fill
//! reaches them are read as before. Nothing is fetched for a fill (a file whose chunks are
//! not all cached is left alone, and tried again at its next start). Libraries and data
//! files are left alone: a library is mapped and only the parts a program calls are
//! touched (numpy's start maps a 37 MB OpenBLAS and reads a fraction of it: filling it
//! made that start slower), and data files are read in order with the kernel's
//! read-ahead. The kernel may drop the pages again under memory pressure; they are then
//! read through this process as before.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

use catalog::Chunk;
use fuser::{INodeNo, Notifier};

use super::lock;
use crate::client::cache::{ObjectCache, ObjectRequest};
use crate::client::elf;
use crate::client::repository::MountedRevision;
use crate::{Error, Result};

/// The `OPEN` flag of an `execve`'s open of the program (`__FMODE_EXEC`, 0x20 in
/// `include/uapi/asm-generic/fcntl.h`; the kernel passes the file's flags to FUSE).
pub const FMODE_EXEC: i32 = 0x20;

/// Chunked files larger than this are not filled.
pub const MAX_FILL_BYTES: u64 = 256 * 1024 * 1024;

/// Bytes per `FUSE_NOTIFY_STORE` message.
const STORE_BYTES: usize = 1024 * 1024;

/// One chunked file to fill.
struct Job {
    ino: u64,
    path: String,
    chunks: Vec<Chunk>,
    compressed: bool,
    repo: Arc<MountedRevision>,
}

/// The page-cache fill of one FUSE session: its notifier, the inodes filled or queued, the
/// thread that fills.
#[derive(Default)]
pub struct PageFill {
    /// Set once the session exists ([`PageFill::connect`]); jobs go here.
    queue: OnceLock<Mutex<Sender<Job>>>,
    /// Inodes filled, or queued to be; an inode whose fill did not happen is taken out.
    filled: Arc<Mutex<HashSet<u64>>>,
}

impl PageFill {
    /// Starts the fill thread of the session whose `notifier` this is. Before it, opens
    /// fill nothing. Once per session; a second call is ignored.
    ///
    /// # Errors
    /// [`Error::Io`] if the thread cannot be started (the mount then works without
    /// filling).
    pub fn connect(&self, notifier: Notifier) -> Result<()> {
        if self.queue.get().is_some() {
            return Ok(());
        }
        let (tx, rx) = channel();
        let filled = self.filled.clone();
        std::thread::Builder::new()
            .name("page-fill".into())
            .spawn(move || run(&rx, &notifier, &filled))
            .map_err(|source| Error::Io {
                context: "starting the page-cache fill thread".into(),
                source,
            })?;
        let _ = self.queue.set(Mutex::new(tx));
        Ok(())
    }

    /// A chunked file at `path` (inode `ino` of this session) was opened: queues its fill
    /// unless its inode was filled (or queued) before, or it is too large.
    pub(super) fn opened(
        &self,
        ino: u64,
        path: &str,
        chunks: &[Chunk],
        compressed: bool,
        repo: Arc<MountedRevision>,
    ) {
        let Some(queue) = self.queue.get() else {
            return;
        };
        let size = chunks.last().map_or(0, |c| c.offset.saturating_add(c.size));
        if size > MAX_FILL_BYTES || !lock(&self.filled).insert(ino) {
            return;
        }
        let job = Job {
            ino,
            path: path.to_string(),
            chunks: chunks.to_vec(),
            compressed,
            repo,
        };
        if lock(queue).send(job).is_err() {
            lock(&self.filled).remove(&ino);
        }
    }
}

/// What a fill did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The file's bytes were stored (this many).
    Filled(u64),
    /// A chunk is not in the cache: nothing stored; tried again at the next open.
    NotCached,
    /// Not a program or library: nothing stored, and never tried again.
    NotElf,
}

/// The fill thread: one job after the other until the session's file system is dropped.
fn run(rx: &Receiver<Job>, notifier: &Notifier, filled: &Mutex<HashSet<u64>>) {
    while let Ok(job) = rx.recv() {
        let started = std::time::Instant::now();
        let store = |offset, bytes: &[u8]| notifier.store(INodeNo(job.ino), offset, bytes);
        let outcome = fill(
            job.repo.cache(),
            &job.path,
            &job.chunks,
            job.compressed,
            &store,
        );
        match outcome {
            Ok(Outcome::Filled(bytes)) => tracing::debug!(
                path = %job.path,
                bytes,
                ms = started.elapsed().as_millis() as u64,
                "page cache filled"
            ),
            Ok(Outcome::NotCached) => {
                lock(filled).remove(&job.ino);
            }
            Ok(Outcome::NotElf) => {}
            // Reads go through this process, as without the fill.
            Err(e) => tracing::debug!(path = %job.path, error = %e, "page cache not filled"),
        }
    }
}

/// Pushes the content of the chunked file `path` (`chunks`, stored compressed or not as
/// `compressed` says) from `cache` through `store(offset, bytes)` in pieces of
/// [`STORE_BYTES`] at multiples of it, across chunk boundaries (the kernel marks a page
/// cached only when one piece covers it whole); nothing is fetched.
fn fill(
    cache: &ObjectCache,
    path: &str,
    chunks: &[Chunk],
    compressed: bool,
    store: &dyn Fn(u64, &[u8]) -> std::io::Result<()>,
) -> Result<Outcome> {
    let requests: Vec<ObjectRequest> = chunks
        .iter()
        .map(|c| ObjectRequest::chunk(c, compressed))
        .collect();
    if requests.is_empty() || !requests.iter().all(|r| cache.is_cached(r)) {
        return Ok(Outcome::NotCached);
    }
    let files = requests
        .iter()
        .map(|r| cache.get(r))
        .collect::<Result<Vec<_>>>()?;
    let io = |source| Error::Io {
        context: format!("filling the page cache with {path}"),
        source,
    };
    let size = chunks.last().map_or(0, |c| c.offset.saturating_add(c.size));
    let mut buf = vec![0u8; STORE_BYTES];
    let mut offset = 0u64;
    while offset < size {
        let len = usize::try_from(size - offset).map_or(STORE_BYTES, |n| n.min(STORE_BYTES));
        let mut filled = 0;
        for span in catalog::chunking::chunk_spans(chunks, offset, len as u64) {
            let (Some(file), Ok(n)) = (files.get(span.index), usize::try_from(span.len)) else {
                break;
            };
            file.read_exact_at(&mut buf[filled..filled + n], span.within)
                .map_err(io)?;
            filled += n;
        }
        if filled < len {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the chunks do not cover the file the catalog describes",
            )));
        }
        if offset == 0 && !buf[..len].starts_with(&elf::MAGIC) {
            return Ok(Outcome::NotElf);
        }
        store(offset, &buf[..len]).map_err(io)?;
        offset += len as u64;
    }
    Ok(Outcome::Filled(size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::cache::tests::MemorySource;
    use std::collections::BTreeMap;

    /// A chunked file of `parts` in a cache over a memory source; `cached` says which
    /// chunks are fetched into the cache first.
    fn chunked(parts: &[&[u8]], cached: &[bool]) -> (tempfile::TempDir, ObjectCache, Vec<Chunk>) {
        let dir = tempfile::tempdir().unwrap();
        let source = Arc::new(MemorySource::default());
        let mut chunks = Vec::new();
        let mut offset = 0;
        for part in parts {
            let hash = source.add(part);
            chunks.push(Chunk {
                offset,
                size: part.len() as u64,
                hash,
            });
            offset += part.len() as u64;
        }
        let cache = ObjectCache::open(dir.path(), source).unwrap();
        for (chunk, yes) in chunks.iter().zip(cached) {
            if *yes {
                cache.get(&ObjectRequest::chunk(chunk, true)).unwrap();
            }
        }
        (dir, cache, chunks)
    }

    /// Runs [`fill`], returning its outcome and what was stored, by offset.
    fn run_fill(cache: &ObjectCache, chunks: &[Chunk]) -> (Outcome, BTreeMap<u64, Vec<u8>>) {
        let stored = Mutex::new(BTreeMap::new());
        let store = |offset, bytes: &[u8]| {
            lock(&stored).insert(offset, bytes.to_vec());
            Ok(())
        };
        let outcome = fill(cache, "/usr/bin/prog", chunks, true, &store).unwrap();
        (outcome, stored.into_inner().unwrap())
    }

    #[test]
    fn a_cached_chunked_program_is_stored_whole_at_its_offsets() {
        let mut first = elf::MAGIC.to_vec();
        first.extend(vec![7u8; STORE_BYTES + 100]);
        let second = vec![9u8; 5000];
        let (_dir, cache, chunks) = chunked(&[&first, &second], &[true, true]);
        let (outcome, stored) = run_fill(&cache, &chunks);
        assert_eq!(
            outcome,
            Outcome::Filled((first.len() + second.len()) as u64)
        );
        // Pieces of STORE_BYTES (the last shorter), back to back across the chunk
        // boundary: together the file.
        assert_eq!(stored.len(), 2);
        assert_eq!(stored.get(&0).map(Vec::len), Some(STORE_BYTES));
        let mut end = 0;
        let mut whole = Vec::new();
        for (offset, bytes) in &stored {
            assert_eq!(*offset, end);
            end += bytes.len() as u64;
            whole.extend_from_slice(bytes);
        }
        assert_eq!(whole, [first, second].concat());
    }

    #[test]
    fn nothing_is_fetched_or_stored_while_a_chunk_is_missing() {
        let mut first = elf::MAGIC.to_vec();
        first.extend([1, 2, 3]);
        let (_dir, cache, chunks) = chunked(&[&first, b"rest"], &[true, false]);
        let (outcome, stored) = run_fill(&cache, &chunks);
        assert_eq!(outcome, Outcome::NotCached);
        assert!(stored.is_empty());
        assert!(!cache.is_cached(&ObjectRequest::chunk(&chunks[1], true)));
    }

    #[test]
    fn a_data_file_is_not_stored() {
        let (_dir, cache, chunks) = chunked(&[b"not a program", b"at all"], &[true, true]);
        let (outcome, stored) = run_fill(&cache, &chunks);
        assert_eq!(outcome, Outcome::NotElf);
        assert!(stored.is_empty());
    }
}
