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
//!
//! **Handover.** Backing ids belong to the connection, not to the process: files a dead
//! predecessor opened keep theirs, and the kernel refuses (`EBUSY`) a second id for an
//! inode while such a file is open. So every id is journaled when registered and before
//! it is closed ([`super::journal`]), and a successor reuses the ids its predecessors left
//! open ([`Passthrough::handover`]) and never closes them (it cannot know when the
//! kernel's files using them are gone; they end with the connection).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::{BackingId, ReplyOpen};

use super::journal::{Journal, Record};
use crate::client::cache::PinnedFile;

/// The open count of an inherited id: never drops to zero (see the module docs).
const NEVER_CLOSED: usize = usize::MAX / 2;

/// The passthrough state of one FUSE session.
#[derive(Default)]
pub(super) struct Passthrough {
    /// Set at `INIT` when the kernel agreed; cleared on the first failure.
    on: AtomicBool,
    /// Backing ids by inode, with the number of open handles using each.
    by_inode: Mutex<HashMap<u64, (Arc<BackingId>, usize)>>,
    /// Open handles that use passthrough, with their inode.
    handles: Mutex<HashMap<u64, u64>>,
    /// Where ids are journaled, with this session's index (0 main, 1 plain).
    journal: std::sync::OnceLock<(Arc<Journal>, u8)>,
    /// Ids a predecessor registered on this connection and never closed, by inode; taken
    /// (once) by the first open of the inode.
    inherited: Mutex<HashMap<u64, u32>>,
}

impl Passthrough {
    /// Passthrough is on for this session from now on.
    pub(super) fn enable(&self) {
        self.on.store(true, Ordering::SeqCst);
    }

    /// Journals this session's (index `session`) ids to `journal`, and reuses `inherited`
    /// (inode → id) left by predecessors. Set once, before mounting.
    pub(super) fn handover(
        &self,
        journal: Arc<Journal>,
        session: u8,
        inherited: HashMap<u64, u32>,
    ) {
        let _ = self.journal.set((journal, session));
        *lock(&self.inherited) = inherited;
    }

    fn journal(&self, record: impl FnOnce(u8) -> Record) {
        if let Some((journal, session)) = self.journal.get() {
            journal.append(&record(*session));
        }
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
            None if lock(&self.inherited).contains_key(&ino) => {
                let raw = lock(&self.inherited).remove(&ino).unwrap_or_default();
                // SAFETY: the journal says a predecessor registered `raw` on this very
                // connection and never closed it (a close is journaled before it
                // happens), and it is wrapped once (taken out of `inherited`) and never
                // dropped before the process ends (NEVER_CLOSED).
                #[allow(unsafe_code)]
                let id = Arc::new(unsafe { reply.wrap_backing(raw) });
                by_inode.insert(ino, (id.clone(), NEVER_CLOSED));
                id
            }
            None => match reply.open_backing(&**file) {
                Ok(id) => {
                    // Journaled before the reply that makes the kernel use it.
                    let raw = id.into_raw();
                    self.journal(|session| Record::Backing {
                        session,
                        ino,
                        id: raw,
                    });
                    // SAFETY: `raw` was just released from the BackingId `open_backing`
                    // returned; this is its one owner again.
                    #[allow(unsafe_code)]
                    let id = Arc::new(unsafe { reply.wrap_backing(raw) });
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
                // Journaled before the id is closed (when the map drops it).
                self.journal(|session| Record::BackingClosed { session, ino });
                by_inode.remove(&ino);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
