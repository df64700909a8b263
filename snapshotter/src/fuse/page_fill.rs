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
//! ([`crate::client::elf::MAGIC`]), the file is read once, in order, through the
//! session's own mount point: the kernel's read-ahead then asks for it in large `READ`s,
//! several at a time, and keeps the pages, so the program's faults find them. Once per
//! inode and session, up to [`MAX_FILL_BYTES`]; the open does not wait (this session's
//! fill thread checks the file), and a job that waited longer than [`MAX_JOB_AGE`] is
//! dropped (its program is well under way). Nothing is fetched for the decision: a file
//! whose chunks are not all cached is left alone, and tried again at its next start (a
//! chunk evicted in the moment between the check and the read fails that read: the
//! program's own faults fetch it). The reader's requests are known by its pid: they
//! start no read-ahead, are not traced and count as no read in the cache's statistics
//! (read-ahead and prefetch "later read" stay what the program itself read).
//!
//! The read is done by a process of its own, `strata-snapshotter page-fill-reader`
//! ([`crate::cmd::page_fill_reader`]), which the fill thread starts when first needed
//! (and again if it ended) and sends the files to: a request of the mount's own (`OPEN`,
//! `GETATTR`) that one of its workers has taken is waited for uninterruptibly, so a thread
//! of the mount in that wait when the mount is killed or re-executes itself (a keeper
//! upgrade) would keep the process from ending and its successor from starting. Pushing
//! pages instead (`FUSE_NOTIFY_STORE`) waits, uninterruptibly too, on any page a `READ`
//! of the file holds.
//!
//! Libraries and data files are left alone: a library is mapped and only the parts a
//! program calls are touched (numpy's start maps a 37 MB OpenBLAS and reads a fraction of
//! it: filling it made that start slower), and data files are read in order with the
//! kernel's read-ahead. In no-open mode (kernels without FUSE passthrough, or
//! `--no-passthrough`) the kernel sends no `OPEN`, and nothing is filled. The kernel may
//! drop the pages again under memory pressure; they are then read through this process
//! one fault at a time, as without the fill.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use catalog::Chunk;
use fuser::INodeNo;

use super::read::OpenFile;
use super::{Node, StrataFs, lock, os_name};
use crate::client::cache::{ObjectCache, ObjectRequest};
use crate::client::elf;
use crate::client::repository::MountedRevision;
use crate::cmd::page_fill_reader;
use crate::{Error, Result};

/// The `OPEN` flag of an `execve`'s open of the program (`__FMODE_EXEC`, 0x20 in
/// `include/uapi/asm-generic/fcntl.h`; the kernel passes the file's flags to FUSE, and
/// overlayfs opens the lower file with the same flags).
pub const FMODE_EXEC: i32 = 0x20;

/// Chunked programs larger than this are not filled.
pub const MAX_FILL_BYTES: u64 = 256 * 1024 * 1024;

/// A fill that waited this long behind others is dropped.
pub const MAX_JOB_AGE: Duration = Duration::from_secs(2);

/// One chunked program to fill.
struct Job {
    ino: u64,
    path: String,
    /// The file's size (where its last chunk ends).
    size: u64,
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
    /// The reader process's pid (0 before it runs): its requests are the fill's, not a
    /// start's ([`PageFill::is_reader`]).
    reader_pid: Arc<AtomicU32>,
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
        let reader_pid = self.reader_pid.clone();
        let mountpoint = mountpoint.to_path_buf();
        std::thread::Builder::new()
            .name("page-fill".into())
            .spawn(move || run(&rx, &mountpoint, &filled, &reader_pid))
            .map_err(|source| Error::Io {
                context: "starting the page-cache fill thread".into(),
                source,
            })?;
        let _ = self.queue.set(tx);
        Ok(())
    }

    /// Whether a request of `pid` comes from the reader process: its opens and reads are
    /// the fill's, so they start no read-ahead, are not traced, fetch nothing and count
    /// as no read in the cache's statistics.
    pub(super) fn is_reader(&self, pid: u32) -> bool {
        pid != 0 && self.reader_pid.load(Ordering::Relaxed) == pid
    }

    /// Whether a started chunked program of these `chunks` is read whole (the fill is on
    /// and the file small enough).
    fn fills(&self, chunks: &[Chunk]) -> bool {
        self.queue.get().is_some() && file_size(chunks) <= MAX_FILL_BYTES
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
        let size = file_size(chunks);
        if size > MAX_FILL_BYTES || !lock(&self.filled).insert(ino) {
            return;
        }
        let job = Job {
            ino,
            path: path.to_string(),
            size,
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
    /// [`FMODE_EXEC`]): a chunked program has the kernel's page cache filled (module docs),
    /// so a trace lists all its chunks when it will be (a start with packs needs them all
    /// for the fill): when the fill is on, the file within its bound, and an ELF file (its
    /// first chunk, which the kernel reads next anyway, is fetched to tell; a script or a
    /// file the kernel refuses is listed by the chunks read).
    pub(super) fn opened_for_exec(&self, ino: INodeNo, node: &Node, file: &OpenFile) {
        if let OpenFile::Chunked {
            path,
            chunks,
            compressed,
            ..
        } = file
        {
            if let Some(trace) = self.shared.trace.get()
                && self.page_fill.fills(chunks)
                && self.starts_with_elf_magic(path, chunks, *compressed)
            {
                for index in 0..chunks.len() {
                    trace.record_chunk(path, index);
                }
            }
            self.page_fill
                .started(ino.0, path, chunks, *compressed, self.repo_of(node));
        }
    }

    /// Whether chunked file `path` begins with the ELF magic (its first chunk fetched
    /// unless cached; a failure counts as no).
    fn starts_with_elf_magic(&self, path: &str, chunks: &[Chunk], compressed: bool) -> bool {
        let Some(first) = chunks.first() else {
            return false;
        };
        let read = self
            .repo()
            .cache()
            .get(&ObjectRequest::chunk(first, compressed))
            .and_then(|f| begins_with_elf_magic(&f, path));
        match read {
            Ok(is_elf) => is_elf,
            Err(error) => {
                tracing::debug!(path, %error, "cannot tell whether a started file is a program");
                false
            }
        }
    }
}

/// The size of a chunked file of `chunks`.
fn file_size(chunks: &[Chunk]) -> u64 {
    chunks.last().map_or(0, |c| c.offset.saturating_add(c.size))
}

/// What a fill did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Sent to the reader process (a file of this many bytes).
    Sent(u64),
    /// A chunk is not in the cache: nothing read; tried again at the next start.
    NotCached,
    /// Not a program: nothing read, never tried again.
    NotElf,
    /// The job waited too long.
    Stale,
}

/// The reader process of a session ([`crate::cmd::page_fill_reader`]), its pid published
/// in `pid`.
struct Reader {
    child: Option<Child>,
    pid: Arc<AtomicU32>,
}

impl Reader {
    /// Sends `record` to the reader, starting it first if it is not running; once more
    /// with a new reader if the write fails (the reader ended).
    fn send(&mut self, record: &[u8]) -> std::io::Result<()> {
        let mut last = None;
        for _ in 0..2 {
            let running = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            if !running {
                let child = start_reader()?;
                self.pid.store(child.id(), Ordering::Relaxed);
                self.child = Some(child);
            }
            let stdin = self.child.as_mut().and_then(|c| c.stdin.as_mut());
            match stdin.map(|s| s.write_all(record)) {
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) => last = Some(e),
                None => last = Some(std::io::Error::other("the reader has no stdin")),
            }
            self.stop();
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("the reader did not start")))
    }

    /// Ends the reader: its input closed, killed, reaped if it has ended.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.kill();
            let _ = child.try_wait();
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Input closed: the reader ends at its end of input.
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.try_wait();
        }
    }
}

/// Starts `strata-snapshotter page-fill-reader` (this very binary, also after it was
/// replaced on disk), its input a pipe, its log this process's.
fn start_reader() -> std::io::Result<Child> {
    Command::new("/proc/self/exe")
        .args(["page-fill-reader", "--parent"])
        .arg(std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
}

/// The fill thread: one job after the other until the session's file system is dropped.
/// The first failure of a session is a warning, later ones are debug lines.
fn run(
    rx: &Receiver<Job>,
    mountpoint: &Path,
    filled: &Mutex<HashSet<u64>>,
    reader_pid: &Arc<AtomicU32>,
) {
    let mut warned = false;
    let mut reader = Reader {
        child: None,
        pid: reader_pid.clone(),
    };
    while let Ok(job) = rx.recv() {
        let path = mountpoint.join(&*os_name(job.path.trim_start_matches('/')));
        let outcome = if job.queued.elapsed() > MAX_JOB_AGE {
            Ok(Outcome::Stale)
        } else {
            fill(&job, &path, &mut reader)
        };
        match outcome {
            Ok(Outcome::Sent(bytes)) => {
                tracing::debug!(path = %job.path, bytes, "page fill sent to the reader");
            }
            Ok(Outcome::NotElf) => {
                tracing::debug!(path = %job.path, "not a program: page cache not filled");
            }
            Ok(outcome @ (Outcome::NotCached | Outcome::Stale)) => {
                tracing::debug!(path = %job.path, ?outcome, "page cache not filled");
                lock(filled).remove(&job.ino);
            }
            Err(e) => {
                // Reads go through this process one fault at a time, as without the fill.
                if warned {
                    tracing::debug!(path = %job.path, error = %e, "page cache not filled");
                } else {
                    warned = true;
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

/// Sends `job`'s file (at `path` under the session's mount point) to the reader, once its
/// chunks are all cached and its first chunk starts with an ELF header.
fn fill(job: &Job, path: &Path, reader: &mut Reader) -> Result<Outcome> {
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
    reader
        .send(&page_fill_reader::record(job.ino, path))
        .map_err(|source| Error::Io {
            context: "sending a file to the page-fill reader".into(),
            source,
        })?;
    Ok(Outcome::Sent(job.size))
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
    begins_with_elf_magic(&file, path).map(Some)
}

/// Whether `first_chunk` (the cached first chunk of the file at `path`) begins with the
/// ELF magic; shorter than the magic is no.
fn begins_with_elf_magic(first_chunk: &std::fs::File, path: &str) -> Result<bool> {
    let mut magic = [0u8; 4];
    match first_chunk.read_exact_at(&mut magic, 0) {
        Ok(()) => Ok(magic == elf::MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
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
