//! Filling the kernel's page cache with a chunked program when it is started.
//!
//! The kernel reads an unchunked file from its cache file directly ([`super::passthrough`]);
//! a chunked one (several cache files, docs/format.md §4.6) cannot be backed by one file,
//! so every page of it the kernel does not have is a `READ` through this process, one
//! fault at a time. A program is faulted in wherever its code runs: gcc's `cc1` (33 MB, 4
//! chunks) cost some 330 `READ`s in random order on its first run, 30–40 ms of a cold
//! container start whose warm run found the pages cached (`strata-bench-startup`, 0 ms,
//! 2026-12-07).
//!
//! So when `execve` opens a chunked file ([`FMODE_EXEC`] in the `OPEN` flags) whose chunks
//! are all in the cache and whose first bytes are an ELF header
//! ([`crate::client::elf::MAGIC`]), this session's fill thread reads the whole file once,
//! in order, through the session's own mount point: the kernel's read-ahead then asks for
//! it in large `READ`s, several at a time, and keeps the pages, so the program's faults
//! find them. Once per inode and session, up to [`MAX_FILL_BYTES`]; the open does not wait,
//! and a job that waited longer than [`MAX_JOB_AGE`] is dropped (its program is well under
//! way). Nothing is fetched for a fill: a file whose chunks are not all cached is left
//! alone, and tried again at its next start. The bytes count as read in the cache's
//! statistics, as any read of the program would.
//!
//! Reading through the mount rather than pushing pages (`FUSE_NOTIFY_STORE`) keeps the
//! kernel's own read path: a push waits, uninterruptibly, for any page a `READ` of the
//! same file has locked, and a process killed or re-executed in that moment could not end
//! before a successor answered that `READ` — which it cannot start before the process
//! ends. A read through the mount waits killably.
//!
//! Libraries and data files are left alone: a library is mapped and only the parts a
//! program calls are touched (numpy's start maps a 37 MB OpenBLAS and reads a fraction of
//! it: filling it made that start slower), and data files are read in order with the
//! kernel's read-ahead. In no-open mode (kernels without FUSE passthrough, or
//! `--no-passthrough`) the kernel sends no `OPEN`, and nothing is filled. The kernel may
//! drop the pages again under memory pressure; they are then read through this process
//! one fault at a time, as without the fill.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use catalog::Chunk;
use fuser::INodeNo;

use super::read::OpenFile;
use super::{Node, StrataFs, lock};
use crate::client::cache::{ObjectCache, ObjectRequest};
use crate::client::elf;
use crate::client::repository::MountedRevision;
use crate::{Error, Result};

/// The `OPEN` flag of an `execve`'s open of the program (`__FMODE_EXEC`, 0x20 in
/// `include/uapi/asm-generic/fcntl.h`; the kernel passes the file's flags to FUSE, and
/// overlayfs opens the lower file with the same flags).
pub const FMODE_EXEC: i32 = 0x20;

/// Chunked programs larger than this are not filled.
pub const MAX_FILL_BYTES: u64 = 256 * 1024 * 1024;

/// A fill that waited this long behind others is dropped.
pub const MAX_JOB_AGE: Duration = Duration::from_secs(2);

/// Bytes per `read` of a fill.
const READ_BYTES: usize = 1024 * 1024;

/// One chunked program to fill.
struct Job {
    ino: u64,
    path: String,
    chunks: Vec<Chunk>,
    compressed: bool,
    repo: Arc<MountedRevision>,
    queued: Instant,
}

/// The page-cache fill of one FUSE session: where the session is mounted, the inodes
/// filled or queued, the thread that fills.
#[derive(Default)]
pub struct PageFill {
    /// Set once the session is mounted ([`PageFill::connect`]); jobs go here.
    queue: OnceLock<Sender<Job>>,
    /// Inodes filled, or queued to be; an inode whose fill did not happen (chunks not all
    /// cached, an error) is taken out, and tried again at its next start.
    filled: Arc<Mutex<HashSet<u64>>>,
}

impl PageFill {
    /// Starts the fill thread of the session mounted at `mountpoint`. Before it, starts
    /// fill nothing. Once per session; a second call is ignored.
    ///
    /// # Errors
    /// [`Error::Io`] if the thread cannot be started (the mount then works without
    /// filling).
    pub fn connect(&self, mountpoint: &Path) -> Result<()> {
        if self.queue.get().is_some() {
            return Ok(());
        }
        let (tx, rx) = channel();
        let filled = self.filled.clone();
        let mountpoint = mountpoint.to_path_buf();
        std::thread::Builder::new()
            .name("page-fill".into())
            .spawn(move || run(&rx, &mountpoint, &filled))
            .map_err(|source| Error::Io {
                context: "starting the page-cache fill thread".into(),
                source,
            })?;
        let _ = self.queue.set(tx);
        Ok(())
    }

    /// A chunked file at `path` (inode `ino` of this session) was started: queues its fill
    /// unless its inode was filled (or queued) before, or it is too large.
    fn started(
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
            queued: Instant::now(),
        };
        if queue.send(job).is_err() {
            lock(&self.filled).remove(&ino);
        }
    }
}

impl StrataFs {
    /// `node` was opened as inode `ino` by an `execve` (`OPEN` flags with
    /// [`FMODE_EXEC`]): a chunked program has the kernel's page cache filled (module docs).
    pub(super) fn opened_for_exec(&self, ino: INodeNo, node: &Node, file: &OpenFile) {
        if let OpenFile::Chunked {
            path,
            chunks,
            compressed,
            ..
        } = file
        {
            self.page_fill
                .started(ino.0, path, chunks, *compressed, self.repo_of(node));
        }
    }
}

/// What a fill did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The file was read whole (this many bytes).
    Filled(u64),
    /// A chunk is not in the cache: nothing read; tried again at the next start.
    NotCached,
    /// Not a program: nothing read, never tried again.
    NotElf,
    /// The path now names another file (a revision switch), or the job waited too long.
    Gone,
}

/// The fill thread: one job after the other until the session's file system is dropped.
/// The first failure of a session is a warning, later ones are debug lines.
fn run(rx: &Receiver<Job>, mountpoint: &Path, filled: &Mutex<HashSet<u64>>) {
    let warned = AtomicBool::new(false);
    while let Ok(job) = rx.recv() {
        let started = Instant::now();
        let outcome = if job.queued.elapsed() > MAX_JOB_AGE {
            Ok(Outcome::Gone)
        } else {
            fill(&job, &mountpoint.join(job.path.trim_start_matches('/')))
        };
        match outcome {
            Ok(Outcome::Filled(bytes)) => tracing::debug!(
                path = %job.path,
                bytes,
                ms = started.elapsed().as_millis() as u64,
                "page cache filled"
            ),
            Ok(Outcome::NotElf) => {
                tracing::debug!(path = %job.path, "not a program: page cache not filled");
            }
            Ok(outcome @ (Outcome::NotCached | Outcome::Gone)) => {
                tracing::debug!(path = %job.path, ?outcome, "page cache not filled");
                lock(filled).remove(&job.ino);
            }
            Err(e) => {
                // Reads go through this process one fault at a time, as without the fill.
                if warned.swap(true, Ordering::Relaxed) {
                    tracing::debug!(path = %job.path, error = %e, "page cache not filled");
                } else {
                    tracing::warn!(
                        path = %job.path,
                        error = %e,
                        "page cache not filled (further failures at debug level)"
                    );
                }
                lock(filled).remove(&job.ino);
            }
        }
    }
}

/// Reads `job`'s file whole through `path` (its place under the session's mount point),
/// once its chunks are all cached and its first chunk starts with an ELF header.
fn fill(job: &Job, path: &Path) -> Result<Outcome> {
    let cache = job.repo.cache();
    match cached_program(cache, &job.path, &job.chunks, job.compressed)? {
        None => return Ok(Outcome::NotCached),
        Some(false) => return Ok(Outcome::NotElf),
        Some(true) => {}
    }
    if !job
        .chunks
        .iter()
        .all(|c| cache.is_cached(&ObjectRequest::chunk(c, job.compressed)))
    {
        return Ok(Outcome::NotCached);
    }
    let io = |source| Error::Io {
        context: format!("filling the page cache with {}", path.display()),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    if file.metadata().map_err(io)?.ino() != job.ino {
        return Ok(Outcome::Gone);
    }
    let mut buf = vec![0u8; READ_BYTES];
    let mut read = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(Outcome::Filled(read)),
            Ok(n) => read += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
}

/// Whether the chunked file `path` is a program: its first chunk starts with an ELF
/// header (read from the cache file, without counting as a read); `None` if the first
/// chunk is not cached.
fn cached_program(
    cache: &ObjectCache,
    path: &str,
    chunks: &[Chunk],
    compressed: bool,
) -> Result<Option<bool>> {
    let Some(first) = chunks.first() else {
        return Ok(Some(false));
    };
    let Some(file) = cache.open_cached(&ObjectRequest::chunk(first, compressed))? else {
        return Ok(None);
    };
    let mut magic = [0u8; 4];
    match file.read_exact_at(&mut magic, 0) {
        Ok(()) => Ok(Some(magic == elf::MAGIC)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(Some(false)),
        Err(source) => Err(Error::Io {
            context: format!("reading the header of {path} from the cache"),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::cache::tests::MemorySource;

    /// A chunked file of `parts` in a cache over a memory source, the chunks for which
    /// `cached` is true fetched into it.
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

    fn program() -> Vec<u8> {
        let mut bytes = elf::MAGIC.to_vec();
        bytes.extend([2, 1, 1, 0]);
        bytes
    }

    #[test]
    fn a_program_is_known_by_its_first_chunk_without_counting_a_read() {
        let (_dir, cache, chunks) = chunked(&[&program(), b"rest"], &[true, false]);
        let reads = cache.index().stats().unwrap();
        assert_eq!(
            cached_program(&cache, "/bin/p", &chunks, true).unwrap(),
            Some(true)
        );
        let after = cache.index().stats().unwrap();
        assert_eq!(after.hits, reads.hits, "a look at the header is no hit");
    }

    #[test]
    fn a_data_file_is_no_program_and_an_uncached_first_chunk_is_unknown() {
        let (_dir, cache, chunks) = chunked(&[b"plain text", b"more"], &[true, true]);
        assert_eq!(
            cached_program(&cache, "/d", &chunks, true).unwrap(),
            Some(false)
        );
        let (_dir, cache, chunks) = chunked(&[&program(), b"rest"], &[false, true]);
        assert_eq!(
            cached_program(&cache, "/bin/p", &chunks, true).unwrap(),
            None
        );
        assert!(
            !cache.is_cached(&ObjectRequest::chunk(&chunks[0], true)),
            "nothing was fetched"
        );
    }
}
