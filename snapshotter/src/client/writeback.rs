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
//! full) or fails on only costs that wait later: nothing is returned or retried.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

/// Files queued at most; past it, files are left to the kernel's flusher.
const QUEUE: usize = 4096;

/// The write-back thread of one cache, started with the first file.
#[derive(Default)]
pub struct WriteBack {
    queue: Mutex<Option<SyncSender<File>>>,
}

impl WriteBack {
    /// Queues `file` (a descriptor of a committed cache file) for the start of its
    /// write-back. Never blocks on the write-back itself.
    pub fn start(&self, file: File) {
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if queue.is_none() {
            let (tx, rx) = sync_channel::<File>(QUEUE);
            let spawned = std::thread::Builder::new()
                .name("cache-writeback".into())
                .spawn(move || {
                    for file in rx {
                        if let Err(error) = write_back(&file) {
                            tracing::debug!(%error, "could not start writing a cache file back");
                        }
                    }
                });
            match spawned {
                Ok(_) => *queue = Some(tx),
                Err(error) => {
                    tracing::debug!(%error, "no write-back thread; left to the kernel");
                    return;
                }
            }
        }
        if let Some(tx) = queue.as_ref()
            && let Err(TrySendError::Disconnected(_)) = tx.try_send(file)
        {
            *queue = None;
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

    #[test]
    fn the_write_back_of_a_cache_file_starts_on_its_own_thread() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("f")).unwrap();
        file.write_all(&vec![7u8; 4 << 20]).unwrap();
        // The call itself works on a file of the cache's kind (no EINVAL, EBADF).
        write_back(&file).unwrap();
        file.write_all(&vec![8u8; 4 << 20]).unwrap();
        let writeback = WriteBack::default();
        writeback.start(file.try_clone().unwrap());
        writeback.start(file);
        assert!(writeback.queue.lock().unwrap().is_some(), "thread started");
    }
}
