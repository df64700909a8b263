//! Lookups: the node of an inode number (refreshed from the current revision when its path
//! still has that number, else the old node an open file holds) and the child of a
//! directory by name, interned in the inode table with the generation of the revision it
//! was read from. A name that does not exist is remembered as a negative entry of that
//! generation, so that the next switch invalidates the kernel's copy ([`super::switch`]).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use catalog::EntryKind;
use fuser::{Errno, INodeNo};

use super::errno::report;
use super::switch::SWITCH_RETRIES;
use super::{Node, StrataFs, lock};
use crate::{Error, Result};

/// Negative lookups remembered for invalidation after a switch; beyond this many, the
/// kernel's copies simply expire after [`super::TTL`].
const MAX_NEGATIVES: usize = 1 << 20;

impl StrataFs {
    /// The node of `ino`. A node of an older revision is refreshed from the current one
    /// when its path still resolves to the same inode number; otherwise the stale node is
    /// returned (an open file of the old revision).
    pub(super) fn node(&self, ino: INodeNo) -> std::result::Result<Arc<Node>, Errno> {
        let inodes = self.inodes();
        if let Some(node) = inodes.cached(ino.0)
            && inodes.is_current(&node)
        {
            return Ok(node);
        }
        let path = inodes.path_of(ino.0).ok_or(Errno::ENOENT)?;
        for _ in 0..SWITCH_RETRIES {
            let (repo, generation) = self.shared.snapshot();
            match repo.lookup(&path) {
                Ok(Some(found)) => {
                    match inodes.intern_at(
                        generation,
                        &path,
                        &found.catalog.mountpoint,
                        found.entry,
                    ) {
                        Some(fresh) if fresh.ino == ino.0 => return Ok(fresh),
                        Some(_) => break,
                        // A switch came in between: read the new revision.
                        None => continue,
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(report("inode", &path, &e)),
            }
        }
        // Renumbered or gone in the current revision: the old node, if still known
        // (an open file of the previous revision), else rebuilt from the retired revision
        // it belongs to.
        if let Some(node) = inodes.cached(ino.0) {
            return Ok(node);
        }
        self.retired_node(ino.0, &path).ok_or(Errno::ENOENT)
    }

    /// Looks `name` up in directory `parent`; `None` if it does not exist (then remembered
    /// as a negative entry of the generation it was answered in, for invalidation at the
    /// next switch).
    ///
    /// The lookup is made in one revision and interned with that revision's generation; if
    /// a switch came in between (a lookup can wait seconds for a catalog download), it is
    /// made again in the new revision, so that no row of an old revision is recorded as
    /// current in a new generation, which no invalidation would reach.
    pub(super) fn lookup_child(&self, parent: &Node, name: &OsStr) -> Result<Option<Arc<Node>>> {
        if parent.entry.kind != EntryKind::Directory {
            return Err(Error::NotADirectory(parent.path.clone()));
        }
        let name = catalog::names::from_bytes(name.as_bytes());
        let name = name.as_ref();
        let path = format!("{}/{}", parent.path, name);
        let found = self.in_one_revision("lookup", &path, |repo, generation| {
            match repo.lookup(&path)? {
                Some(found) => Ok(self
                    .inodes()
                    .intern_child_at(
                        generation,
                        parent.ino,
                        name,
                        &path,
                        &found.catalog.mountpoint,
                        found.entry,
                    )
                    .map(Some)),
                None => {
                    // Checked under the lock the switch takes the set with, after it has
                    // started the new generation: recorded here = invalidated there.
                    let mut negatives = lock(&self.shared.negatives);
                    if self.inodes().generation() != generation {
                        return Ok(None);
                    }
                    if negatives.len() < MAX_NEGATIVES
                        && negatives.insert((parent.ino, name.to_string()))
                        && let Some(journal) = self.shared.journal.get()
                    {
                        // For a successor's next switch (`journal`): before the reply.
                        journal.append(&super::journal::Record::Negative {
                            generation: u32::try_from(generation).unwrap_or(u32::MAX),
                            parent: parent.ino,
                            name: name.to_string(),
                        });
                    }
                    Ok(Some(None))
                }
            }
        })?;
        Ok(found)
    }
}
