//! FUSE passthrough (Linux ≥ 6.9, `FUSE_PASSTHROUGH`): an open unchunked file is backed by
//! its cache file, and the kernel reads (and maps) it directly — no `READ` request, no copy
//! through this process, for the rest of that open. A cold start spends most of its local
//! time on reads of freshly fetched objects (every 128 KiB a round trip through this
//! process otherwise); with passthrough they cost what a read of a local file costs.
//!
//! The kernel requires one backing file per FUSE inode for all its open files, so backing
//! ids are kept per inode with a count of open handles, and closed when the last one is
//! released. Chunked files (several cache files) are read through this process as before.
//! Passthrough needs `OPEN` requests, so a mount that uses it does not use no-open mode
//! ([`super::filesystem`]). It is asked for at `INIT` when the mount allows it
//! (`mount --no-passthrough` turns it off); a kernel without it, or a cache directory the
//! kernel cannot stack on (e.g. on overlayfs), leaves every read going through this process.
//! The first failure to register a backing file switches passthrough off for the session
//! (so no inode is ever opened both ways) and is logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::{BackingId, ReplyOpen};

use crate::client::cache::PinnedFile;

/// The passthrough state of one FUSE session.
#[derive(Default)]
pub(super) struct Passthrough {
    /// Set at `INIT` when the kernel agreed; cleared on the first failure.
    on: AtomicBool,
    /// Backing ids by inode, with the number of open handles using each.
    by_inode: Mutex<HashMap<u64, (Arc<BackingId>, usize)>>,
    /// Open handles that use passthrough, with their inode.
    handles: Mutex<HashMap<u64, u64>>,
}

impl Passthrough {
    /// Passthrough is on for this session from now on.
    pub(super) fn enable(&self) {
        self.on.store(true, Ordering::SeqCst);
    }

    /// Whether opens use passthrough.
    pub(super) fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }

    /// The backing id of inode `ino` for a new open handle `fh` of cache file `file`
    /// (the inode's id if it has one, else a new one); `None` (and passthrough off for the
    /// session) if the kernel refuses it.
    pub(super) fn backing(
        &self,
        reply: &ReplyOpen,
        ino: u64,
        fh: u64,
        file: &PinnedFile,
    ) -> Option<Arc<BackingId>> {
        let mut by_inode = lock(&self.by_inode);
        let id = match by_inode.get_mut(&ino) {
            Some((id, opens)) => {
                *opens += 1;
                id.clone()
            }
            None => match reply.open_backing(&**file) {
                Ok(id) => {
                    let id = Arc::new(id);
                    by_inode.insert(ino, (id.clone(), 1));
                    id
                }
                Err(e) => {
                    if self.on.swap(false, Ordering::SeqCst) {
                        tracing::warn!(error = %e, "FUSE passthrough refused; reads go through this process from now on");
                    }
                    return None;
                }
            },
        };
        lock(&self.handles).insert(fh, ino);
        Some(id)
    }

    /// Handle `fh` was released: its inode's backing id is closed with its last handle.
    pub(super) fn release(&self, fh: u64) {
        let Some(ino) = lock(&self.handles).remove(&fh) else {
            return;
        };
        let mut by_inode = lock(&self.by_inode);
        if let Some((_, opens)) = by_inode.get_mut(&ino) {
            *opens -= 1;
            if *opens == 0 {
                by_inode.remove(&ino);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
