//! Starting the write-back of cache files that arrive ahead of reads (startup packs,
//! read-ahead), on a thread of its own.
//!
//! Left dirty, they are written at the latest when something syncs the file system the
//! cache is on, and a container start does: unmounting an overlayfs syncs its upper
//! directory's whole file system (containerd's temporary mounts, a container's exit). A
//! cold start right after its startup packs landed (96 MB of content for numpy/scipy) then
//! waited some 50–70 ms at its end for their write-back. Started as they are committed
//! (`sync_file_range(2)`, `SYNC_FILE_RANGE_WRITE`: submit, do not wait for completion),
//! the write-back runs while the start does. The call can still block (block allocation,
//! a full device queue), so it runs here, not on the worker that committed the file: that
//! worker holds what readers wait for (the object's download slot, an unpacking slot).
//! Demand reads are left to the kernel's flusher. A file the thread cannot take (queue
//! full, no thread) or fails on only costs that wait later: nothing is returned or
//! retried. Files are queued by path and opened again by the thread, so a long queue
//! holds no descriptors.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

/// Files queued at most; past it, files are left to the kernel's flusher.
const QUEUE: usize = 4096;

/// The write-back thread of one cache, started with the first file.
#[derive(Default)]
pub struct WriteBack {
    state: Mutex<State>,
    /// Files the thread has handled (for tests).
    #[cfg(test)]
    handled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Default)]
enum State {
    #[default]
    NotStarted,
    Running(SyncSender<PathBuf>),
    /// The thread could not be started or has ended: the kernel's flusher does it.
    Unavailable,
}

impl WriteBack {
    /// Queues the committed cache file at `path` for the start of its write-back (the
    /// thread opens it again: queued files hold no descriptor, and a file evicted
    /// meanwhile is skipped). Never blocks on the write-back itself.
    pub fn start(&self, path: PathBuf) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let State::NotStarted = *state {
            *state = self.spawn();
        }
        if let State::Running(tx) = &*state
            && let Err(TrySendError::Disconnected(_)) = tx.try_send(path)
        {
            *state = State::Unavailable;
        }
    }

    fn spawn(&self) -> State {
        let (tx, rx) = sync_channel::<PathBuf>(QUEUE);
        #[cfg(test)]
        let handled = self.handled.clone();
        let spawned = std::thread::Builder::new()
            .name("cache-writeback".into())
            .spawn(move || {
                for path in rx {
                    let started = File::open(&path).and_then(|file| write_back(&file));
                    match started {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(error) => {
                            tracing::debug!(path = %path.display(), %error, "could not start writing a cache file back");
                        }
                    }
                    #[cfg(test)]
                    handled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        match spawned {
            Ok(_) => State::Running(tx),
            Err(error) => {
                tracing::warn!(%error, "no cache write-back thread; the kernel's flusher writes the cache back");
                State::Unavailable
            }
        }
    }
}

/// Starts writing `file`'s dirty pages to disk without waiting for them.
#[allow(unsafe_code)] // one system call on a descriptor `file` owns; see the SAFETY note
fn write_back(file: &File) -> std::io::Result<()> {
    // SAFETY: `sync_file_range` takes a descriptor, two offsets and flags by value and
    // touches no memory of this process; the descriptor is `file`'s, open for the call.
    let rc = unsafe {
        nix::libc::sync_file_range(file.as_raw_fd(), 0, 0, nix::libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    #[test]
    fn queued_files_are_written_back_on_the_thread_and_missing_ones_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = File::create(&path).unwrap();
        file.write_all(&vec![7u8; 4 << 20]).unwrap();
        // The call itself works on a regular file (no EINVAL, EBADF).
        write_back(&file).unwrap();
        file.write_all(&vec![8u8; 4 << 20]).unwrap();
        let writeback = WriteBack::default();
        writeback.start(path.clone());
        writeback.start(dir.path().join("evicted meanwhile"));
        writeback.start(path);
        let deadline = Instant::now() + Duration::from_secs(20);
        while writeback.handled.load(Ordering::SeqCst) < 3 {
            assert!(
                Instant::now() < deadline,
                "the thread handled {} of 3",
                writeback.handled.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(matches!(
            *writeback.state.lock().unwrap(),
            State::Running(_)
        ));
    }
}
