//! Inode numbers for catalog entries, stable within a revision and, where practical, across
//! revision switches (CVMFS spec §8.4 allows any scheme stable within a mount generation).
//!
//! Numbers are allocated on first sight: the root is 1 (`FUSE_ROOT_ID`), then 2, 3, … in
//! the order entries are looked up or listed. An entry is identified by its repository path,
//! so the two copies of a nested-catalog transition directory (the parent's mountpoint row
//! and the child's root row, spec §6.14) get one inode — the one first handed out, normally
//! from the parent's copy. Members of a hard-link group share one inode within their catalog
//! (spec §6.8, §8.4).
//!
//! Each revision is a **generation**. After a switch ([`Inodes::new_generation`]) every
//! node of the previous generation is stale; when a path is seen again in the new revision
//! it keeps its old inode number if it is still a directory, or if its entry is unchanged
//! (same type, mode, owner, size, mtime, content hash, link target, xattrs). A changed file
//! gets a new number, so the kernel never mixes page-cache contents of two revisions under
//! one inode. Stale nodes stay answerable (open files of an old revision may `fstat`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use catalog::{Entry, EntryKind};

/// The inode number of the repository root (FUSE's `FUSE_ROOT_ID`).
pub const ROOT_INODE: u64 = 1;

/// What an inode stands for.
#[derive(Debug)]
pub struct Node {
    /// The inode number.
    pub ino: u64,
    /// Repository path of the first entry seen with this inode (`""` = root, else `/a/b`).
    pub path: String,
    /// Mountpoint of the catalog that holds the row (`""` = root catalog).
    pub catalog: String,
    /// The catalog row.
    pub entry: Entry,
    /// The generation (revision switch count) the node belongs to.
    pub generation: u64,
}

#[derive(Hash, PartialEq, Eq)]
enum Key {
    Path(String),
    HardLink { catalog: String, group: u32 },
}

#[derive(Default)]
struct Table {
    /// Keys of the current generation.
    by_key: HashMap<Key, u64>,
    /// Every node handed out, current or stale, by number.
    nodes: HashMap<u64, Arc<Node>>,
    /// The number last used for each path, in any generation.
    last_ino: HashMap<String, u64>,
    next: u64,
    generation: u64,
}

/// Thread-safe map between inode numbers and catalog entries.
pub struct Inodes {
    table: RwLock<Table>,
}

impl Inodes {
    /// A table holding only the root entry (inode 1), generation 0.
    pub fn new(root: Entry) -> Inodes {
        let inodes = Inodes {
            table: RwLock::new(Table {
                next: ROOT_INODE,
                ..Table::default()
            }),
        };
        inodes.intern("", "", root);
        inodes
    }

    /// The node of `ino`, if it was handed out (possibly stale).
    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.read().nodes.get(&ino).cloned()
    }

    /// The inode number last handed out for `path` (any generation).
    pub fn last_ino_of(&self, path: &str) -> Option<u64> {
        self.read().last_ino.get(path).copied()
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Whether `node` belongs to the current generation.
    pub fn is_current(&self, node: &Node) -> bool {
        node.generation == self.generation()
    }

    /// The node for the entry at `path` in the catalog mounted at `catalog`, allocating an
    /// inode on first sight in this generation (reusing the path's previous number when the
    /// entry is compatible, see the module docs). A hard-link group member (group ≠ 0) maps
    /// to its group's inode.
    pub fn intern(&self, path: &str, catalog: &str, entry: Entry) -> Arc<Node> {
        let key = if entry.hardlink_group != 0 {
            Key::HardLink {
                catalog: catalog.to_string(),
                group: entry.hardlink_group,
            }
        } else {
            Key::Path(path.to_string())
        };
        {
            let table = self.read();
            if let Some(ino) = table.by_key.get(&key)
                && let Some(node) = table.nodes.get(ino)
            {
                return node.clone();
            }
        }
        let mut table = self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(ino) = table.by_key.get(&key) {
            return table.nodes[ino].clone();
        }
        let generation = table.generation;
        let reuse = table.last_ino.get(path).copied().filter(|ino| {
            table.nodes.get(ino).is_some_and(|old| {
                old.generation < generation && old.path == path && compatible(&old.entry, &entry)
            })
        });
        let ino = match reuse {
            Some(ino) => ino,
            None => {
                let ino = table.next;
                table.next += 1;
                ino
            }
        };
        let node = Arc::new(Node {
            ino,
            path: path.to_string(),
            catalog: catalog.to_string(),
            entry,
            generation,
        });
        table.by_key.insert(key, ino);
        table.nodes.insert(ino, node.clone());
        table.last_ino.insert(path.to_string(), ino);
        node
    }

    /// Starts a new generation (a revision switch): every node becomes stale, the root is
    /// re-interned as inode 1 with `root`. Returns the nodes of the previous generation, whose
    /// kernel caches the caller should invalidate.
    pub fn new_generation(&self, root: Entry) -> Vec<Arc<Node>> {
        let old: Vec<Arc<Node>> = {
            let mut table = self
                .table
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let previous = table.generation;
            table.generation += 1;
            table.by_key.clear();
            table
                .nodes
                .values()
                .filter(|n| n.generation == previous)
                .cloned()
                .collect()
        };
        self.intern("", "", root);
        old
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether `new` may keep the inode number of `old` across a revision switch: directories
/// stay directories; anything else must be unchanged.
fn compatible(old: &Entry, new: &Entry) -> bool {
    if old.kind != new.kind {
        return false;
    }
    if old.kind == EntryKind::Directory {
        return true;
    }
    // Chunked files carry no whole-file hash: renumber them to be safe.
    if old.kind == EntryKind::Regular && (old.hash.is_none() || new.hash.is_none()) {
        return false;
    }
    old.mode == new.mode
        && old.size == new.size
        && old.rdev == new.rdev
        && old.uid == new.uid
        && old.gid == new.gid
        && old.mtime == new.mtime
        && old.mtime_ns == new.mtime_ns
        && old.hash == new.hash
        && old.compressed == new.compressed
        && old.symlink == new.symlink
        && old.linkcount == new.linkcount
        && old.xattrs == new.xattrs
        && old.flags == new.flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::{ContentHash, HashAlgorithm};

    fn file(name: &str, group: u32) -> Entry {
        let mut e = Entry::regular(
            name,
            0o644,
            0,
            0,
            0,
            1,
            ContentHash::of_bytes(HashAlgorithm::Sha1, b"x"),
        );
        e.hardlink_group = group;
        e
    }

    fn root() -> Entry {
        Entry::directory("", 0o755, 0, 0, 0)
    }

    #[test]
    fn root_is_one_and_numbers_are_stable() {
        let t = Inodes::new(root());
        assert_eq!(t.get(ROOT_INODE).unwrap().path, "");
        let a = t.intern("/a", "", file("a", 0));
        let b = t.intern("/b", "", file("b", 0));
        assert_eq!((a.ino, b.ino), (2, 3));
        assert_eq!(t.intern("/a", "", file("a", 0)).ino, 2);
        assert_eq!(t.get(3).unwrap().path, "/b");
        assert!(t.get(4).is_none());
    }

    #[test]
    fn hard_links_share_an_inode_within_a_catalog_only() {
        let t = Inodes::new(root());
        let x = t.intern("/d/x", "", file("x", 7));
        let y = t.intern("/d/y", "", file("y", 7));
        let z = t.intern("/n/z", "/n", file("z", 7));
        assert_eq!(x.ino, y.ino);
        assert_ne!(x.ino, z.ino);
        assert_eq!(t.get(x.ino).unwrap().path, "/d/x");
    }

    #[test]
    fn transition_directory_copies_share_the_inode() {
        let t = Inodes::new(root());
        let parent_copy = t.intern("/n", "", Entry::directory("n", 0o755, 0, 0, 0));
        let child_copy = t.intern("/n", "/n", Entry::directory("n", 0o755, 0, 0, 0));
        assert_eq!(parent_copy.ino, child_copy.ino);
    }

    #[test]
    fn a_switch_keeps_numbers_of_unchanged_paths_and_renumbers_changed_files() {
        let t = Inodes::new(root());
        let d = t.intern("/d", "", Entry::directory("d", 0o755, 0, 0, 0));
        let same = t.intern("/d/same", "", file("same", 0));
        let changed = t.intern("/d/changed", "", file("changed", 0));
        let old = t.new_generation(Entry::directory("", 0o700, 0, 0, 5));
        assert_eq!(old.len(), 4);
        assert_eq!(t.generation(), 1);
        assert_eq!(t.get(ROOT_INODE).unwrap().entry.mode & 0o777, 0o700);
        assert!(!t.is_current(&same));

        let mut d2 = Entry::directory("d", 0o755, 0, 0, 99);
        d2.linkcount = 3;
        assert_eq!(t.intern("/d", "", d2).ino, d.ino);
        assert_eq!(t.intern("/d/same", "", file("same", 0)).ino, same.ino);
        let mut c2 = file("changed", 0);
        c2.size = 2;
        let c2 = t.intern("/d/changed", "", c2);
        assert_ne!(c2.ino, changed.ino);
        assert!(t.is_current(&c2));
        // The stale node still answers for open files.
        assert_eq!(t.get(changed.ino).unwrap().entry.size, 1);
        // A path that became a directory gets a new number too.
        let e = t.intern("/d/new", "", file("new", 0));
        assert!(e.ino > c2.ino);
    }
}
