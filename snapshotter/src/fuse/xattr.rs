//! Extended attributes: the stored xattrs of an entry (docs/format.md §6.9; `trusted.overlay.opaque`
//! must be readable because overlayfs reads it from lower layers), plus one magic
//! attributes.
//!
//! **Magic xattrs.** `user.catalog_counters` ([`CATALOG_COUNTERS_XATTR`], CVMFS's name and
//! format), answered by name on any path of the main mount and never listed (as stock
//! CVMFS with `CVMFS_HIDE_MAGIC_XATTRS=yes`): the statistics (docs/format.md §6.13) of the catalog
//! that hosts the path — for a nested catalog's mountpoint directory, that nested catalog.
//! `user.strata.prefetch` ([`PREFETCH_XATTR`]) on an image's `startup` directory or on
//! one of its packs starts the prefetch of its packs (a small first pack before the answer,
//! the others in the background) and answers how
//! many packs and bytes that is ([`crate::client::startup`]); never listed, `ENODATA`
//! elsewhere or when prefetching is off.
//!
//! **Plain twin.** In [`StrataFs::plain_twin`] `getxattr` and `listxattr` answer `ENOSYS`,
//! after which the kernel fails them with `EOPNOTSUPP` for that session without asking.
//! overlayfs probes `trusted.overlay.{metacopy,opaque,redirect,origin}` on every lower
//! dentry it looks up, and the kernel caches no xattrs of FUSE files, so a lower layer in
//! the main mount costs one round trip per probe; in the twin none.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::sync::Arc;

use catalog::{Entry, EntryKind};
use fuser::{Errno, ReplyXattr};

use super::{CATALOG_COUNTERS_XATTR, Node, StrataFs};
use crate::client::repository::LoadedCatalog;
use crate::client::startup::PREFETCH_XATTR;
use crate::{Error, Result};

impl StrataFs {
    /// The value of extended attribute `name` of `node`: [`CATALOG_COUNTERS_XATTR`]
    /// computed from its catalog, any other name as stored; `None` if there is none.
    pub(super) fn xattr<'n>(&self, node: &'n Node, name: &OsStr) -> Result<Option<Cow<'n, [u8]>>> {
        if name == CATALOG_COUNTERS_XATTR {
            return self
                .catalog_counters(node)
                .map(|text| Some(Cow::Owned(text)));
        }
        if name == PREFETCH_XATTR {
            let Some(prefetch) = self.shared.startup.get() else {
                return Ok(None);
            };
            return match prefetch.request(&self.repo(), &node.path) {
                Ok(text) => Ok(Some(Cow::Owned(text.into_bytes()))),
                Err(Error::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            };
        }
        let value = name.to_str().and_then(|n| node.entry.xattrs.get(n));
        Ok(value.map(|v| Cow::Borrowed(v.as_slice())))
    }

    /// The [`CATALOG_COUNTERS_XATTR`] value for `node`.
    fn catalog_counters(&self, node: &Node) -> Result<Vec<u8>> {
        let repo = self.repo();
        let catalog = if node.entry.kind == EntryKind::Directory {
            repo.directory(&node.path)?.catalog
        } else {
            self.catalog_of(node)?
        };
        let stats = catalog.with(|r| r.statistics())?;
        Ok(
            crate::catalog_counters::to_text(&catalog.hash.to_hex(), &catalog.mountpoint, &stats)
                .into_bytes(),
        )
    }

    fn catalog_of(&self, node: &Node) -> Result<Arc<LoadedCatalog>> {
        self.repo()
            .loaded_catalog(&node.catalog)
            .ok_or_else(|| Error::NotFound(node.path.clone()))
    }
}

/// The `listxattr` buffer: each stored name followed by NUL.
pub(super) fn xattr_names(entry: &Entry) -> Vec<u8> {
    let mut names = Vec::new();
    for key in entry.xattrs.keys() {
        names.extend_from_slice(key.as_bytes());
        names.push(0);
    }
    names
}

/// Answers an xattr request: the size when `size` is 0, `ERANGE` if `value` does not fit.
pub(super) fn reply_sized(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_names_are_nul_separated() {
        let mut e = Entry::directory("d", 0o755, 0, 0, 0);
        e.xattrs
            .insert("trusted.overlay.opaque".into(), b"y".to_vec());
        e.xattrs.insert("user.a".into(), b"1".to_vec());
        assert_eq!(xattr_names(&e), b"trusted.overlay.opaque\0user.a\0");
    }
}
