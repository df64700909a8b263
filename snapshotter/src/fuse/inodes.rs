//! Inode numbers for catalog entries, stable for the life of a mount (one revision).
//!
//! Numbers are allocated on first sight: the root is 1 (`FUSE_ROOT_ID`), then 2, 3, … in
//! the order entries are looked up or listed. An entry is identified by its repository path,
//! so the two copies of a nested-catalog transition directory (the parent's mountpoint row
//! and the child's root row, spec §6.14) get one inode — the one first handed out, normally
//! from the parent's copy. Members of a hard-link group share one inode within their catalog
//! (spec §6.8, §8.4). Any scheme stable within a mount generation is allowed (spec §8.4).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use catalog::Entry;

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
}

#[derive(Hash, PartialEq, Eq)]
enum Key {
    Path(String),
    HardLink { catalog: String, group: u32 },
}

#[derive(Default)]
struct Table {
    by_key: HashMap<Key, u64>,
    nodes: HashMap<u64, Arc<Node>>,
    next: u64,
}

/// Thread-safe map between inode numbers and catalog entries.
pub struct Inodes {
    table: RwLock<Table>,
}

impl Inodes {
    /// A table holding only the root entry (inode 1).
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

    /// The node of `ino`, if it was handed out.
    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.read().nodes.get(&ino).cloned()
    }

    /// The node for the entry at `path` in the catalog mounted at `catalog`, allocating an
    /// inode on first sight. A hard-link group member (group ≠ 0) maps to its group's inode.
    pub fn intern(&self, path: &str, catalog: &str, entry: Entry) -> Arc<Node> {
        let key = if entry.hardlink_group != 0 {
            Key::HardLink {
                catalog: catalog.to_string(),
                group: entry.hardlink_group,
            }
        } else {
            Key::Path(path.to_string())
        };
        if let Some(ino) = self.read().by_key.get(&key)
            && let Some(node) = self.read().nodes.get(ino)
        {
            return node.clone();
        }
        let mut table = self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(ino) = table.by_key.get(&key) {
            return table.nodes[ino].clone();
        }
        let ino = table.next;
        table.next += 1;
        let node = Arc::new(Node {
            ino,
            path: path.to_string(),
            catalog: catalog.to_string(),
            entry,
        });
        table.by_key.insert(key, ino);
        table.nodes.insert(ino, node.clone());
        node
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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

    #[test]
    fn root_is_one_and_numbers_are_stable() {
        let t = Inodes::new(Entry::directory("", 0o755, 0, 0, 0));
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
        let t = Inodes::new(Entry::directory("", 0o755, 0, 0, 0));
        let x = t.intern("/d/x", "", file("x", 7));
        let y = t.intern("/d/y", "", file("y", 7));
        let z = t.intern("/n/z", "/n", file("z", 7));
        assert_eq!(x.ino, y.ino);
        assert_ne!(x.ino, z.ino);
        assert_eq!(t.get(x.ino).unwrap().path, "/d/x");
    }

    #[test]
    fn transition_directory_copies_share_the_inode() {
        let t = Inodes::new(Entry::directory("", 0o755, 0, 0, 0));
        let parent_copy = t.intern("/n", "", Entry::directory("n", 0o755, 0, 0, 0));
        let child_copy = t.intern("/n", "/n", Entry::directory("n", 0o755, 0, 0, 0));
        assert_eq!(parent_copy.ino, child_copy.ino);
    }
}
