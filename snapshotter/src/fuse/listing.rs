//! Directory listings: `.`, `..` and the children of a directory in one revision, with
//! inodes allocated for every child (a `READDIRPLUS` hands the kernel each child's entry,
//! from the inode table, with the listing, so that a program that lists a directory and
//! then `stat`s or opens its entries — `tar`, `find`, `ls -l`, Python's imports — sends
//! no `LOOKUP` for them). With a handle (`OPENDIR`) a listing lives as long as
//! the handle; in no-open mode (no `OPENDIR`, see [`super::filesystem`]) listings are kept
//! per directory inode in a small LRU, tagged with the generation they were made in.

use std::sync::Arc;

use catalog::EntryKind;
use fuser::{Errno, FileHandle, FileType, INodeNo};

use super::errno::report;
use super::{Node, ROOT_INODE, StrataFs, attr, lock};
use crate::Result;
use crate::client::repository::MountedRevision;

/// One entry of a listing.
pub(super) struct Listed {
    pub(super) ino: u64,
    pub(super) kind: FileType,
    pub(super) name: String,
}

/// One listed directory, `.` and `..` first.
pub(super) type DirListing = Vec<Listed>;

/// Directory listings kept in no-open mode (by inode), for `readdir` without a handle.
pub(super) const LISTINGS: usize = 256;

impl StrataFs {
    /// The listing a `READDIR` or `READDIRPLUS` of directory `ino` reads: the one made at
    /// `OPENDIR` for handle `fh`, or without a handle (no-opendir mode, or a directory a
    /// predecessor opened) the inode's.
    pub(super) fn listing_for(
        &self,
        ino: INodeNo,
        fh: FileHandle,
    ) -> std::result::Result<Arc<DirListing>, Errno> {
        let items = lock(&self.dirs).get(&fh.0).cloned();
        match items {
            Some(items) => Ok(items),
            None if self.no_opendir || self.shared.adopted => self.listing_of_inode(ino),
            None => Err(Errno::EBADF),
        }
    }

    /// No-open mode: the listing of directory `ino`, from the LRU when made in the current
    /// generation.
    pub(super) fn listing_of_inode(
        &self,
        ino: INodeNo,
    ) -> std::result::Result<Arc<DirListing>, Errno> {
        if let Some((g, items)) = lock(&self.shared.listings).get(&ino.0)
            && *g == self.inodes().generation()
        {
            return Ok(items.clone());
        }
        let node = self.node(ino)?;
        if node.entry.kind != EntryKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        let (items, generation) = self
            .listing(&node)
            .map_err(|e| report("readdir", &node.path, &e))?;
        let items = Arc::new(items);
        lock(&self.shared.listings).put(ino.0, (generation, items.clone()));
        Ok(items)
    }

    /// The listing of directory `node`, allocating inodes for its children, with the
    /// generation it was made in (made again if a switch comes in between, as in
    /// [`StrataFs::lookup_child`]).
    pub(super) fn listing(&self, node: &Node) -> Result<(DirListing, u64)> {
        let listing = self.in_one_revision("listing", &node.path, |repo, generation| {
            Ok(self
                .listing_in(repo, generation, node)?
                .map(|items| (items, generation)))
        })?;
        Ok(listing)
    }

    /// The listing of `node` in `repo`, the revision of `generation`; `None` if a switch
    /// came in between.
    fn listing_in(
        &self,
        repo: &MountedRevision,
        generation: u64,
        node: &Node,
    ) -> Result<Option<DirListing>> {
        let children = repo.list(&node.path)?;
        let parent_ino = if node.path.is_empty() {
            ROOT_INODE
        } else {
            let parent = catalog::parent_path(&node.path);
            match repo.lookup(parent)? {
                Some(f) => {
                    let Some(p) =
                        self.inodes()
                            .intern_at(generation, parent, &f.catalog.mountpoint, f.entry)
                    else {
                        return Ok(None);
                    };
                    p.ino
                }
                None => ROOT_INODE,
            }
        };
        let mut items = Vec::with_capacity(children.len() + 2);
        for (name, ino) in [(".", node.ino), ("..", parent_ino)] {
            items.push(Listed {
                ino,
                kind: FileType::Directory,
                name: name.to_string(),
            });
        }
        for found in children {
            let path = format!("{}/{}", node.path, found.entry.name);
            let name = found.entry.name.clone();
            let Some(child) = self.inodes().intern_child_at(
                generation,
                node.ino,
                &name,
                &path,
                &found.catalog.mountpoint,
                found.entry,
            ) else {
                return Ok(None);
            };
            items.push(Listed {
                ino: child.ino,
                kind: attr::file_type(&child.entry),
                name,
            });
        }
        Ok(Some(items))
    }
}
