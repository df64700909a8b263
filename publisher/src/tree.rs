//! The in-memory namespace: a tree of catalog rows ([`catalog::Entry`]) with nested-catalog
//! marks, used to build layer trees, flattened images and whole revisions before they are
//! written as catalogs.
//!
//! Paths are given as component slices (`["a", "b"]` for `/a/b`); the root node has no
//! name. A node that is a nested-catalog root carries a [`CatalogMark`]; a published catalog
//! that has not been read back has no children in memory (`loaded == false`).

use std::collections::{BTreeMap, HashMap};

use catalog::{ContentHash, Entry, EntryKind, Statistics};

/// `S_IFMT` and the file type bits of `st_mode` (POSIX).
pub const S_IFMT: u32 = 0o170000;
/// Directory type bits.
pub const S_IFDIR: u32 = 0o040000;
/// Regular file type bits.
pub const S_IFREG: u32 = 0o100000;
/// Symlink type bits.
pub const S_IFLNK: u32 = 0o120000;
/// Character device type bits.
pub const S_IFCHR: u32 = 0o020000;
/// Block device type bits.
pub const S_IFBLK: u32 = 0o060000;
/// FIFO type bits.
pub const S_IFIFO: u32 = 0o010000;

/// Size recorded for directories (stock `st_size`, docs/format.md §6.7).
pub const DIR_SIZE: u64 = 4096;

/// The xattr overlayfs reads to treat a directory as opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Name of the marker file in every nested catalog root (docs/format.md §6.14).
pub const CATALOG_MARKER: &str = ".cvmfscatalog";

/// A catalog that exists in the store: its hash, uncompressed size and (once read) its
/// statistics.
#[derive(Clone, Debug)]
pub struct PublishedCatalog {
    /// Hash of the compressed catalog object (suffix `C`).
    pub hash: ContentHash,
    /// Uncompressed size in bytes (the `nested_catalogs.size` column).
    pub size: u64,
    /// The catalog's statistics, read lazily when the parent is rewritten.
    pub statistics: Option<(catalog::Counters, catalog::Counters)>,
}

impl PublishedCatalog {
    /// The statistics as the catalog crate's type, if known.
    pub fn statistics(&self) -> Option<Statistics> {
        self.statistics
            .map(|(self_, subtree)| Statistics { self_, subtree })
    }
}

/// Marks a node as the root of a nested catalog.
#[derive(Clone, Debug, Default)]
pub struct CatalogMark {
    /// The version in the previous revision, if any.
    pub published: Option<PublishedCatalog>,
    /// Whether the node's children are in memory. An unloaded catalog can only be re-used.
    pub loaded: bool,
    /// Whether the loaded contents changed, so the catalog must be written anew.
    pub dirty: bool,
}

impl CatalogMark {
    /// A catalog that is built in this publish.
    pub fn new_catalog() -> CatalogMark {
        CatalogMark {
            published: None,
            loaded: true,
            dirty: true,
        }
    }

    /// Whether the catalog must be written (new or changed).
    pub fn needs_write(&self) -> bool {
        self.published.is_none() || self.dirty
    }
}

/// One node of the namespace.
#[derive(Clone, Debug)]
pub struct Node {
    /// The catalog row for this node; `entry.name` is the last path component.
    pub entry: Entry,
    /// Children by name (directories only).
    pub children: BTreeMap<String, Node>,
    /// Set when this node is a nested catalog root (boxed: few nodes are, and an inline
    /// mark would more than double every node's size).
    pub catalog: Option<Box<CatalogMark>>,
}

/// A template for catalog rows; every constructor below fills it in.
fn blank_entry(name: &str, kind: EntryKind, mode: u32) -> Entry {
    Entry {
        name: name.to_string(),
        kind,
        mode,
        size: 0,
        rdev: 0,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_ns: None,
        hash: None,
        compressed: true,
        symlink: String::new(),
        linkcount: 1,
        hardlink_group: 0,
        xattrs: BTreeMap::new(),
        chunks: Vec::new(),
        flags: 0,
        rowid: 0,
    }
}

/// A directory row: `perm` are the permission bits (incl. setuid/setgid/sticky).
pub fn dir_entry(name: &str, perm: u32, uid: u32, gid: u32, mtime: i64) -> Entry {
    let mut e = blank_entry(name, EntryKind::Directory, S_IFDIR | (perm & 0o7777));
    e.size = DIR_SIZE;
    e.linkcount = 2;
    e.uid = uid;
    e.gid = gid;
    e.mtime = mtime;
    e
}

/// A regular file row backed by the zlib object `hash` of `size` uncompressed bytes.
pub fn file_entry(
    name: &str,
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
    hash: ContentHash,
) -> Entry {
    let mut e = file_entry_without_content(name, perm, uid, gid, mtime, size);
    e.hash = Some(hash);
    e
}

/// A regular file row of `size` bytes whose content (`hash` or `chunks`) is not known yet
/// (see [`crate::staging::StagedEntry::pending`]).
pub fn file_entry_without_content(
    name: &str,
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
) -> Entry {
    let mut e = blank_entry(name, EntryKind::Regular, S_IFREG | (perm & 0o7777));
    e.size = size;
    e.uid = uid;
    e.gid = gid;
    e.mtime = mtime;
    e
}

/// A symlink row (mode `0o120777`, size = target length, docs/format.md §6.7).
pub fn symlink_entry(name: &str, target: &str, uid: u32, gid: u32, mtime: i64) -> Entry {
    Entry::symlink(name, target, uid, gid, mtime)
}

/// A special file row: `kind` is a device, FIFO or socket; `rdev` the glibc device number.
pub fn special_entry(name: &str, kind: EntryKind, perm: u32, rdev: u64) -> Entry {
    let type_bits = match kind {
        EntryKind::CharDevice => S_IFCHR,
        EntryKind::BlockDevice => S_IFBLK,
        EntryKind::Fifo => S_IFIFO,
        _ => 0o140000,
    };
    let mut e = blank_entry(name, kind, type_bits | (perm & 0o7777));
    e.rdev = rdev;
    e
}

/// The overlayfs whiteout for `name`: a character device 0:0 with mode `S_IFCHR|0`.
pub fn whiteout_entry(name: &str, mtime: i64) -> Entry {
    let mut e = special_entry(name, EntryKind::CharDevice, 0, 0);
    e.mtime = mtime;
    e
}

/// Whether `e` is an overlayfs whiteout (character device 0:0).
pub fn is_whiteout(e: &Entry) -> bool {
    e.kind == EntryKind::CharDevice && e.rdev == 0
}

/// A regular empty file pointing at the empty-file object (docs/format.md §6.14 marker).
pub fn marker_entry(empty: ContentHash, mtime: i64) -> Entry {
    file_entry(CATALOG_MARKER, 0o644, 0, 0, mtime, 0, empty)
}

/// The marker [`marker_entry`] with the hidden flag (`kFlagHidden`, docs/format.md §6.6): stock
/// `cvmfs_server check` finds it in the catalog, while clients (stock `cvmfs2`, Strata's)
/// leave it out of directory listings. For catalog roots that are image content (layer
/// trees, flat trees), which must list exactly the image's files.
pub fn hidden_marker_entry(empty: ContentHash, mtime: i64) -> Entry {
    let mut e = marker_entry(empty, mtime);
    e.flags |= catalog::entry::FLAG_HIDDEN;
    e
}

impl Node {
    /// A leaf node (file, symlink, special file or empty directory).
    pub fn leaf(entry: Entry) -> Node {
        Node {
            entry,
            children: BTreeMap::new(),
            catalog: None,
        }
    }

    /// An empty directory owned by root with the given permission bits.
    pub fn dir(name: &str, perm: u32, mtime: i64) -> Node {
        Node::leaf(dir_entry(name, perm, 0, 0, mtime))
    }

    /// Whether this node is a directory.
    pub fn is_dir(&self) -> bool {
        self.entry.kind == EntryKind::Directory
    }

    /// The node at `path` below this one.
    pub fn get(&self, path: &[&str]) -> Option<&Node> {
        let mut node = self;
        for c in path {
            node = node.children.get(*c)?;
        }
        Some(node)
    }

    /// The node at `path` below this one, mutable.
    pub fn get_mut(&mut self, path: &[&str]) -> Option<&mut Node> {
        let mut node = self;
        for c in path {
            node = node.children.get_mut(*c)?;
        }
        Some(node)
    }

    /// The directory at `path`, creating missing (or replacing non-directory) components as
    /// implicit directories `0755 root:root` with mtime `mtime`.
    pub fn ensure_dir(&mut self, path: &[&str], mtime: i64) -> &mut Node {
        let mut node = self;
        for c in path {
            let replace = node.children.get(*c).is_none_or(|n| !n.is_dir());
            if replace {
                node.children
                    .insert((*c).to_string(), Node::dir(c, 0o755, mtime));
            }
            node = match node.children.get_mut(*c) {
                Some(n) => n,
                None => unreachable!("inserted above"),
            };
        }
        node
    }

    /// Puts `child` (named by `child.entry.name`) into the directory at `parent`, creating
    /// parents as in [`Node::ensure_dir`]; replaces whatever had that name.
    pub fn insert(&mut self, parent: &[&str], child: Node, mtime: i64) {
        let dir = self.ensure_dir(parent, mtime);
        dir.children.insert(child.entry.name.clone(), child);
    }

    /// Removes and returns the node at `path`.
    pub fn remove(&mut self, path: &[&str]) -> Option<Node> {
        let (last, parent) = path.split_last()?;
        self.get_mut(parent)?.children.remove(*last)
    }

    /// Sets directory link counts to `2 + number of child directories` (docs/format.md §6.7),
    /// recursively over loaded subtrees. Unloaded catalogs keep their recorded count.
    pub fn fix_linkcounts(&mut self) {
        if !self.is_dir() || self.catalog.as_ref().is_some_and(|c| !c.loaded) {
            return;
        }
        let subdirs = self.children.values().filter(|c| c.is_dir()).count();
        self.entry.linkcount = 2 + subdirs as u32;
        self.entry.size = DIR_SIZE;
        for c in self.children.values_mut() {
            c.fix_linkcounts();
        }
    }

    /// Makes hard-link groups of this catalog consistent (docs/format.md §6.8): every member of
    /// a group gets `linkcount` = number of members; a group left with one member is
    /// dissolved. Does not descend into nested catalogs.
    pub fn normalize_hardlinks(&mut self) {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        self.visit_catalog(&mut |n| {
            if n.entry.hardlink_group != 0 {
                *counts.entry(n.entry.hardlink_group).or_default() += 1;
            }
        });
        self.visit_catalog_mut(&mut |n| {
            let g = n.entry.hardlink_group;
            if g != 0 {
                let count = counts.get(&g).copied().unwrap_or(1);
                if count <= 1 {
                    n.entry.hardlink_group = 0;
                    n.entry.linkcount = 1;
                } else {
                    n.entry.linkcount = count;
                }
            } else if !n.is_dir() {
                n.entry.linkcount = 1;
            }
        });
    }

    /// The largest hard-link group id in this catalog (0 if none).
    pub fn max_hardlink_group(&self) -> u32 {
        let mut max = 0;
        self.visit_catalog(&mut |n| max = max.max(n.entry.hardlink_group));
        max
    }

    /// Calls `f` on every node of this catalog below this node (not this node itself), not
    /// descending into nested catalogs (their mountpoint nodes are visited).
    pub fn visit_catalog(&self, f: &mut dyn FnMut(&Node)) {
        for c in self.children.values() {
            f(c);
            if c.catalog.is_none() {
                c.visit_catalog(f);
            }
        }
    }

    /// Mutable form of [`Node::visit_catalog`].
    pub fn visit_catalog_mut(&mut self, f: &mut dyn FnMut(&mut Node)) {
        for c in self.children.values_mut() {
            f(c);
            if c.catalog.is_none() {
                c.visit_catalog_mut(f);
            }
        }
    }

    /// Number of nodes below this one (whole loaded subtree), for tests and logs.
    pub fn count(&self) -> usize {
        self.children.values().map(|c| 1 + c.count()).sum()
    }
}

/// Splits a `/`-separated absolute or relative path into its non-empty components.
pub fn components(path: &str) -> Vec<&str> {
    path.split('/').filter(|c| !c.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::HashAlgorithm;

    fn h(b: &[u8]) -> ContentHash {
        ContentHash::of_bytes(HashAlgorithm::Sha1, b)
    }

    #[test]
    fn ensure_dir_replaces_files_and_creates_parents() {
        let mut root = Node::dir("", 0o755, 0);
        root.insert(
            &["a"],
            Node::leaf(file_entry("f", 0o644, 0, 0, 0, 1, h(b"x"))),
            5,
        );
        assert_eq!(root.get(&["a"]).map(|n| n.is_dir()), Some(true));
        assert_eq!(root.get(&["a"]).map(|n| n.entry.mtime), Some(5));
        // a file in the way of a directory is replaced
        root.ensure_dir(&["a", "f", "g"], 0);
        assert!(root.get(&["a", "f", "g"]).is_some_and(Node::is_dir));
        assert_eq!(root.count(), 3);
        assert!(root.remove(&["a", "f"]).is_some());
        assert_eq!(root.count(), 1);
    }

    #[test]
    fn linkcounts_count_subdirectories() {
        let mut root = Node::dir("", 0o755, 0);
        root.ensure_dir(&["a", "b"], 0);
        root.ensure_dir(&["c"], 0);
        root.insert(&[], Node::leaf(symlink_entry("l", "a", 0, 0, 0)), 0);
        root.fix_linkcounts();
        assert_eq!(root.entry.linkcount, 4);
        assert_eq!(root.get(&["a"]).map(|n| n.entry.linkcount), Some(3));
        assert_eq!(root.get(&["c"]).map(|n| n.entry.linkcount), Some(2));
    }

    #[test]
    fn hardlink_groups_are_counted_and_dissolved() {
        let mut root = Node::dir("", 0o755, 0);
        for (name, group) in [("a", 1), ("b", 1), ("c", 1), ("d", 2)] {
            let mut e = file_entry(name, 0o644, 0, 0, 0, 1, h(b"x"));
            e.hardlink_group = group;
            root.insert(&[], Node::leaf(e), 0);
        }
        root.normalize_hardlinks();
        for n in ["a", "b", "c"] {
            let e = &root
                .get(&[n])
                .map(|n| n.entry.clone())
                .unwrap_or_else(|| panic!());
            assert_eq!((e.hardlink_group, e.linkcount), (1, 3));
        }
        let d = root.get(&["d"]).map(|n| n.entry.clone());
        assert_eq!(d.map(|e| (e.hardlink_group, e.linkcount)), Some((0, 1)));
        assert_eq!(root.max_hardlink_group(), 1);
    }

    #[test]
    fn whiteout_is_char_device_zero() {
        let w = whiteout_entry("gone", 0);
        assert_eq!(w.mode, S_IFCHR);
        assert!(is_whiteout(&w));
        assert!(!is_whiteout(&special_entry(
            "tty",
            EntryKind::CharDevice,
            0o600,
            0x501
        )));
    }

    #[test]
    fn components_skip_empty() {
        assert_eq!(components("/a//b/"), vec!["a", "b"]);
        assert!(components("").is_empty());
    }
}
