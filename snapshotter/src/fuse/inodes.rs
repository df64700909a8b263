//! Inode numbers for catalog entries, stable within a revision and, where practical, across
//! revision switches (docs/format.md §8.4 allows any scheme stable within a mount generation).
//!
//! Numbers are allocated on first sight: the root is 1 (`FUSE_ROOT_ID`), then 2, 3, … in
//! the order entries are looked up or listed. An entry is identified by its parent's inode
//! and its name, so the two copies of a nested-catalog transition directory (the parent's
//! mountpoint row and the child's root row, docs/format.md §6.14) get one inode. Members of a
//! hard-link group share one inode within their catalog (docs/format.md §6.8, §8.4).
//!
//! **Memory.** Every number handed out keeps a compact record — parent inode, name, a
//! fingerprint of the entry and its generation, about 60 bytes — so that walking a tree of
//! several hundred thousand entries stays within a few tens of MB. Full [`Node`]s (with
//! the catalog row) are kept only in a small LRU of recently used inodes; the file system
//! rebuilds others from the path by a catalog lookup (the kernel's attribute cache answers
//! most `getattr`s anyway).
//!
//! **Generations.** Each revision is a generation. After a switch
//! ([`Inodes::new_generation`]) every record is stale; when a name is seen again in the
//! new revision it keeps its number if it is still a directory, or if its entry is
//! unchanged (same fingerprint: type, mode, owner, size, mtime, content hash, link target,
//! xattrs, flags). A changed file gets a new number, so the kernel never mixes page-cache
//! contents of two revisions under one inode.
//!
//! **Handover.** With a [`Journal`] attached ([`Inodes::journal_to`]), every change of the
//! table is journaled before the number reaches the kernel, and a successor process
//! rebuilds the same table from it ([`Inodes::replay`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use catalog::{Entry, EntryKind};
use lru::LruCache;

use super::journal::{InodeRecord, Journal, Record as Journaled};

/// The inode number of the repository root (FUSE's `FUSE_ROOT_ID`).
pub const ROOT_INODE: u64 = 1;

/// How many full nodes the LRU keeps.
const RECENT: usize = 2048;

/// An inode with its catalog row (built on demand; see the module docs).
#[derive(Debug)]
pub struct Node {
    /// The inode number.
    pub ino: u64,
    /// Repository path (`""` = root, else `/a/b`); for a hard-link group, the member it was
    /// first seen as.
    pub path: String,
    /// Mountpoint of the catalog that holds the row (`""` = root catalog).
    pub catalog: String,
    /// The catalog row.
    pub entry: Entry,
    /// The generation (revision switch count) the node belongs to.
    pub generation: u64,
}

/// The compact, permanent part of an inode (32 bytes; the name lives in [`Records`]'
/// arena).
#[derive(Clone, Copy)]
struct Record {
    parent: u64,
    fingerprint: u64,
    generation: u32,
    name_off: u32,
    name_len: u32,
}

/// Records by inode number, in pages of [`PAGE`] (no doubling slack), with the names in
/// one byte arena.
#[derive(Default)]
struct Records {
    pages: Vec<Vec<Record>>,
    len: usize,
    names: Vec<u8>,
}

/// Records per page.
const PAGE: usize = 4096;

impl Records {
    /// Appends `record` named `name`; returns its index.
    fn push(&mut self, mut record: Record, name: &str) -> usize {
        record.name_off = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        record.name_len = u32::try_from(name.len()).unwrap_or(0);
        self.names.extend_from_slice(name.as_bytes());
        if self.len.is_multiple_of(PAGE) {
            self.pages.push(Vec::with_capacity(PAGE));
        }
        if let Some(page) = self.pages.last_mut() {
            page.push(record);
        }
        self.len += 1;
        self.len - 1
    }

    fn get(&self, i: usize) -> Option<&Record> {
        self.pages.get(i / PAGE)?.get(i % PAGE)
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut Record> {
        self.pages.get_mut(i / PAGE)?.get_mut(i % PAGE)
    }

    fn name(&self, r: &Record) -> &str {
        let start = r.name_off as usize;
        self.names
            .get(start..start + r.name_len as usize)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    fn iter(&self) -> impl Iterator<Item = (usize, &Record)> {
        self.pages.iter().flatten().enumerate()
    }
}

/// One inode of the previous generation, for kernel cache invalidation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleInode {
    /// Its number.
    pub ino: u64,
    /// Its parent's number (0 for the root).
    pub parent: u64,
    /// Its name in the parent.
    pub name: String,
}

#[derive(Default)]
struct Table {
    /// `records[ino]`; index 0 is a placeholder.
    records: Records,
    /// hash of `(parent, name)` → latest ino (current or stale: see `Record::generation`);
    /// the record's parent and name are compared on use.
    by_name: HashMap<u64, u64>,
    /// `(catalog mountpoint, group)` → latest ino (current or stale).
    hardlinks: HashMap<(Box<str>, u32), u64>,
    /// `(parent, name)` of hard-link group members seen in the current generation under a
    /// name other than their record's.
    link_names: HashMap<(u64, Box<str>), u64>,
    generation: u32,
}

/// Thread-safe map between inode numbers and catalog entries.
pub struct Inodes {
    table: RwLock<Table>,
    recent: Mutex<LruCache<u64, Arc<Node>>>,
    unique: AtomicU64,
    /// Where changes are journaled for a successor, once attached.
    journal: OnceLock<Arc<Journal>>,
}

impl Inodes {
    /// A table holding only the root entry (inode 1), generation 0.
    pub fn new(root: Entry) -> Inodes {
        let inodes = Inodes::empty();
        inodes.intern("", "", root);
        inodes
    }

    /// A table with only the placeholder record 0 (no root yet).
    fn empty() -> Inodes {
        let inodes = Inodes {
            table: RwLock::new(Table::default()),
            recent: Mutex::new(LruCache::new(
                NonZeroUsize::new(RECENT).unwrap_or(NonZeroUsize::MIN),
            )),
            unique: AtomicU64::new(1),
            journal: OnceLock::new(),
        };
        let placeholder = Record {
            parent: 0,
            fingerprint: 0,
            generation: u32::MAX,
            name_off: 0,
            name_len: 0,
        };
        inodes.write().records.push(placeholder, "");
        inodes
    }

    /// The table a predecessor journaled (`records`, in order), then `root` (read from the
    /// journaled current revision) interned as inode 1. Numbers keep the meaning the
    /// predecessor gave them; the caller attaches the same journal again.
    ///
    /// # Errors
    /// A message naming the first inode record out of sequence (not a journal of this
    /// table).
    pub fn replay(records: &[Journaled], root: Entry) -> std::result::Result<Inodes, String> {
        let inodes = Inodes::empty();
        {
            let mut table = inodes.write();
            for record in records {
                match record {
                    Journaled::Inode(r) => {
                        if r.ino != table.records.len as u64 {
                            return Err(format!(
                                "inode record {} where {} was expected",
                                r.ino, table.records.len
                            ));
                        }
                        let compact = Record {
                            parent: r.parent,
                            fingerprint: r.fingerprint,
                            generation: r.generation,
                            name_off: 0,
                            name_len: 0,
                        };
                        table.records.push(compact, &r.name);
                        table.by_name.insert(name_hash(r.parent, &r.name), r.ino);
                    }
                    Journaled::Touch { ino, generation } => {
                        let Some(r) = table.records.get_mut(*ino as usize) else {
                            return Err(format!("touch of unknown inode {ino}"));
                        };
                        r.generation = *generation;
                        let r = *r;
                        let key = name_hash(r.parent, table.records.name(&r));
                        table.by_name.insert(key, *ino);
                    }
                    Journaled::HardLink {
                        catalog,
                        group,
                        ino,
                    } => {
                        table
                            .hardlinks
                            .insert((Box::from(catalog.as_str()), *group), *ino);
                    }
                    Journaled::LinkName { parent, name, ino } => {
                        table
                            .link_names
                            .insert((*parent, Box::from(name.as_str())), *ino);
                    }
                    Journaled::Generation(g) => {
                        table.generation = *g;
                        table.link_names.clear();
                    }
                    _ => {}
                }
            }
            if table.records.len < 2 {
                return Err("the journal has no root inode".into());
            }
        }
        inodes.intern("", "", root);
        Ok(inodes)
    }

    /// Journals every record so far, then every change, to `journal` (see the module
    /// docs). Once.
    pub fn journal_to(&self, journal: Arc<Journal>, fresh: bool) {
        let table = self.write();
        if fresh {
            journal.append(&Journaled::Generation(table.generation));
            for (ino, r) in table.records.iter().skip(1) {
                journal.append(&Journaled::Inode(InodeRecord {
                    ino: ino as u64,
                    parent: r.parent,
                    fingerprint: r.fingerprint,
                    generation: r.generation,
                    name: table.records.name(r).to_string(),
                }));
            }
        }
        let _ = self.journal.set(journal);
        drop(table);
    }

    /// Fingerprints that are never reused (chunked files) start at a value no process of an
    /// earlier `epoch` can have given out.
    pub fn set_epoch(&self, epoch: u32) {
        self.unique
            .store((u64::from(epoch) << 32) | 1, Ordering::Relaxed);
    }

    fn journal(&self, record: impl FnOnce() -> Journaled) {
        if let Some(journal) = self.journal.get() {
            journal.append(&record());
        }
    }

    /// The full node of `ino` if it is among the recently used ones (possibly stale).
    pub fn cached(&self, ino: u64) -> Option<Arc<Node>> {
        self.recent().get(&ino).cloned()
    }

    /// The repository path of `ino` (rebuilt from the parent chain), if it was handed out.
    pub fn path_of(&self, ino: u64) -> Option<String> {
        let table = self.read();
        let mut names = Vec::new();
        let mut at = ino;
        while at != ROOT_INODE {
            let record = table.records.get(at as usize)?;
            names.push(table.records.name(record));
            at = record.parent;
            if names.len() > 4096 {
                return None;
            }
        }
        let mut path = String::new();
        for name in names.iter().rev() {
            path.push('/');
            path.push_str(name);
        }
        Some(path)
    }

    /// The generation `ino` was last seen in (its revision), if it was handed out.
    pub fn generation_of(&self, ino: u64) -> Option<u64> {
        let table = self.read();
        table
            .records
            .get(ino as usize)
            .map(|r| u64::from(r.generation))
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        u64::from(self.read().generation)
    }

    /// Whether `node` belongs to the current generation.
    pub fn is_current(&self, node: &Node) -> bool {
        node.generation == self.generation()
    }

    /// Number of inode numbers handed out so far.
    pub fn len(&self) -> usize {
        self.read().records.len - 1
    }

    /// Whether only the root has a number (never true after [`Inodes::new`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The node for the entry at `path` in the catalog mounted at `catalog`, read in the
    /// current generation; see [`Inodes::intern_at`].
    pub fn intern(&self, path: &str, catalog: &str, entry: Entry) -> Arc<Node> {
        loop {
            if let Some(node) = self.intern_at(self.generation(), path, catalog, entry.clone()) {
                return node;
            }
        }
    }

    /// The node for the entry at `path` in the catalog mounted at `catalog`, read from the
    /// revision of `generation`; see [`Inodes::intern_child_at`]. The parent's number is
    /// found by walking `path` from the root; an unknown parent gets a number as a
    /// placeholder directory.
    pub fn intern_at(
        &self,
        generation: u64,
        path: &str,
        catalog: &str,
        entry: Entry,
    ) -> Option<Arc<Node>> {
        if path.is_empty() {
            return self.intern_child_at(generation, 0, "", path, catalog, entry);
        }
        let parent = self.ino_of_path(catalog::parent_path(path));
        self.intern_child_at(
            generation,
            parent,
            catalog::path_hash::file_name(path),
            path,
            catalog,
            entry,
        )
    }

    /// [`Inodes::intern_child_at`] for an entry read in the current generation.
    pub fn intern_child(
        &self,
        parent: u64,
        name: &str,
        path: &str,
        catalog: &str,
        entry: Entry,
    ) -> Arc<Node> {
        loop {
            let generation = self.generation();
            if let Some(node) =
                self.intern_child_at(generation, parent, name, path, catalog, entry.clone())
            {
                return node;
            }
        }
    }

    /// The node for entry `name` in directory `parent` (repository path `path`), allocating
    /// an inode on first sight in this generation and reusing the previous number when the
    /// entry is compatible (see the module docs). A hard-link group member (group ≠ 0) maps
    /// to its group's inode; its other names are remembered for invalidation.
    ///
    /// `generation` is the generation whose revision `entry` was read from. `None` when a
    /// switch has started a newer one since: the entry may be out of date, nothing is
    /// recorded, and the caller reads the new revision and tries again. (Recording it would
    /// make an old row current in the new generation, where no invalidation reaches it.)
    pub fn intern_child_at(
        &self,
        generation: u64,
        parent: u64,
        name: &str,
        path: &str,
        catalog: &str,
        entry: Entry,
    ) -> Option<Arc<Node>> {
        let name_key = name_hash(parent, name);
        let link_key =
            (entry.hardlink_group != 0).then(|| (Box::from(catalog), entry.hardlink_group));
        let known = {
            let table = self.read();
            if u64::from(table.generation) != generation {
                return None;
            }
            table.current_for(link_key.as_ref(), name_key, parent, name)
        };
        if let Some(ino) = known
            && link_key.is_none()
        {
            if let Some(node) = self.cached(ino).filter(|n| n.generation == generation) {
                return Some(node);
            }
            return Some(self.remember(ino, path, catalog, entry, generation));
        }
        let fingerprint = self.fingerprint(&entry);
        let mut table = self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if u64::from(table.generation) != generation {
            return None;
        }
        let generation32 = table.generation;
        let ino = if let Some(ino) = table.current_for(link_key.as_ref(), name_key, parent, name) {
            ino
        } else if let Some(ino) = table.by_name.get(&name_key).copied().filter(|i| {
            table.is_named(*i, parent, name)
                && table
                    .records
                    .get(*i as usize)
                    .is_some_and(|r| r.fingerprint == fingerprint)
        }) {
            // Unchanged since an earlier revision: keep the number.
            if let Some(r) = table.records.get_mut(ino as usize) {
                r.generation = generation32;
            }
            self.journal(|| Journaled::Touch {
                ino,
                generation: generation32,
            });
            ino
        } else {
            let record = Record {
                parent,
                fingerprint,
                generation: generation32,
                name_off: 0,
                name_len: 0,
            };
            let ino = table.records.push(record, name) as u64;
            self.journal(|| {
                Journaled::Inode(InodeRecord {
                    ino,
                    parent,
                    fingerprint,
                    generation: generation32,
                    name: name.to_string(),
                })
            });
            ino
        };
        table.by_name.insert(name_key, ino);
        if let Some(k) = link_key {
            let catalog = k.0.clone();
            let group = k.1;
            if table.hardlinks.insert(k, ino) != Some(ino) {
                self.journal(|| Journaled::HardLink {
                    catalog: catalog.into(),
                    group,
                    ino,
                });
            }
            if !table.is_named(ino, parent, name)
                && table
                    .link_names
                    .insert((parent, Box::from(name)), ino)
                    .is_none()
            {
                // Another name of the group: its dentry must be invalidated at the next
                // switch too, not just the name the inode was first seen as.
                self.journal(|| Journaled::LinkName {
                    parent,
                    name: name.to_string(),
                    ino,
                });
            }
        }
        drop(table);
        if let Some(node) = self.cached(ino).filter(|n| n.generation == generation) {
            return Some(node);
        }
        Some(self.remember(ino, path, catalog, entry, generation))
    }

    /// Starts a new generation (a revision switch): every record becomes stale and the
    /// root is re-interned as inode 1 with `root`. Returns the inodes of the previous
    /// generation, whose kernel caches the caller should invalidate.
    pub fn new_generation(&self, root: Entry) -> Vec<StaleInode> {
        let old = {
            let mut table = self
                .table
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let previous = table.generation;
            table.generation += 1;
            let generation = table.generation;
            self.journal(|| Journaled::Generation(generation));
            let mut old: Vec<StaleInode> = table
                .records
                .iter()
                .filter(|(_, r)| r.generation == previous)
                .map(|(ino, r)| StaleInode {
                    ino: ino as u64,
                    parent: r.parent,
                    name: table.records.name(r).to_string(),
                })
                .collect();
            old.extend(std::mem::take(&mut table.link_names).into_iter().map(
                |((parent, name), ino)| StaleInode {
                    ino,
                    parent,
                    name: name.into(),
                },
            ));
            old
        };
        self.intern("", "", root);
        old
    }

    /// Every inode not of the current generation (the placeholder 0 left out).
    pub fn stale(&self) -> Vec<StaleInode> {
        let table = self.read();
        table
            .records
            .iter()
            .skip(1)
            .filter(|(_, r)| r.generation != table.generation)
            .map(|(ino, r)| StaleInode {
                ino: ino as u64,
                parent: r.parent,
                name: table.records.name(r).to_string(),
            })
            .collect()
    }

    /// The number of directory `path`, walking from the root; unknown components get
    /// placeholder numbers (refreshed when really looked up).
    fn ino_of_path(&self, path: &str) -> u64 {
        let mut ino = ROOT_INODE;
        if path.is_empty() {
            return ino;
        }
        let mut sofar = String::new();
        for name in path.split('/').filter(|s| !s.is_empty()) {
            sofar.push('/');
            sofar.push_str(name);
            let key = name_hash(ino, name);
            let found = {
                let table = self.read();
                table
                    .by_name
                    .get(&key)
                    .copied()
                    .filter(|i| table.is_named(*i, ino, name))
            };
            ino = match found {
                Some(i) => i,
                None => {
                    let placeholder = Entry::directory(name, 0o755, 0, 0, 0);
                    let i = self.intern_child(ino, name, &sofar, "", placeholder).ino;
                    // Not a real row: keep it out of the LRU.
                    self.recent().pop(&i);
                    i
                }
            };
        }
        ino
    }

    /// Builds the full node and puts it into the LRU.
    fn remember(
        &self,
        ino: u64,
        path: &str,
        catalog: &str,
        entry: Entry,
        generation: u64,
    ) -> Arc<Node> {
        let node = Arc::new(Node {
            ino,
            path: path.to_string(),
            catalog: catalog.to_string(),
            entry,
            generation,
        });
        self.recent().put(ino, node.clone());
        node
    }

    /// Directories all share one fingerprint (they keep their number); regular files
    /// without a whole-file hash (chunked) get a unique one (never reused).
    fn fingerprint(&self, e: &Entry) -> u64 {
        if e.kind == EntryKind::Directory {
            return 0;
        }
        if e.kind == EntryKind::Regular && e.hash.is_none() {
            return u64::MAX - self.unique.fetch_add(1, Ordering::Relaxed);
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            e.kind as u8,
            e.mode,
            e.size,
            e.rdev,
            e.uid,
            e.gid,
            e.mtime,
            e.mtime_ns,
        )
            .hash(&mut h);
        e.hash.map(|c| c.digest).hash(&mut h);
        (e.compressed, &e.symlink, e.linkcount, &e.xattrs, e.flags).hash(&mut h);
        h.finish() | 1
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, LruCache<u64, Arc<Node>>> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Table {
    fn is_current(&self, ino: u64) -> bool {
        self.records
            .get(ino as usize)
            .is_some_and(|r| r.generation == self.generation)
    }

    /// The current-generation inode of a hard-link group or of `name` in `parent`.
    fn current_for(
        &self,
        link_key: Option<&(Box<str>, u32)>,
        name_key: u64,
        parent: u64,
        name: &str,
    ) -> Option<u64> {
        link_key
            .and_then(|k| self.hardlinks.get(k))
            .copied()
            .filter(|i| self.is_current(*i))
            .or_else(|| {
                self.by_name
                    .get(&name_key)
                    .copied()
                    .filter(|i| self.is_current(*i) && self.is_named(*i, parent, name))
            })
    }

    /// Whether `ino` is entry `name` of directory `parent` (guards hash collisions).
    fn is_named(&self, ino: u64, parent: u64, name: &str) -> bool {
        self.records
            .get(ino as usize)
            .is_some_and(|r| r.parent == parent && self.records.name(r) == name)
    }
}

/// Hash of an entry's key: parent inode and name.
fn name_hash(parent: u64, name: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (parent, name).hash(&mut h);
    h.finish()
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
    fn a_successor_replays_the_journal_to_the_same_numbers() {
        let journal = Arc::new(Journal::create().unwrap());
        let first = Inodes::new(root());
        first.journal_to(journal.clone(), true);
        let usr = first.intern("/usr", "", Entry::directory("usr", 0o755, 0, 0, 0));
        let a = first.intern("/usr/a", "", file("a", 0));
        let l1 = first.intern("/usr/l1", "", file("l1", 4));
        let l2 = first.intern("/usr/l2", "", file("l2", 4));
        assert_eq!(l1.ino, l2.ino);
        first.new_generation(root());
        let a2 = first.intern("/usr/a", "", file("a", 0)); // unchanged: same number
        assert_eq!(a2.ino, a.ino);
        let b = first.intern("/usr/b", "", file("b", 0));

        let (_, records) = Journal::adopt(journal.fd().try_clone_to_owned().unwrap()).unwrap();
        let next = Inodes::replay(&records, root()).unwrap();
        assert_eq!(next.generation(), 1);
        assert_eq!(next.len(), first.len());
        for n in [&usr, &a, &b] {
            assert_eq!(next.path_of(n.ino), Some(n.path.clone()));
        }
        assert_eq!(next.intern("/usr/b", "", file("b", 0)).ino, b.ino);
        assert_eq!(next.intern("/usr/a", "", file("a", 0)).ino, a.ino);
        let c = next.intern("/usr/c", "", file("c", 0));
        assert_eq!(
            c.ino,
            first.len() as u64 + 1,
            "new numbers follow the replayed ones"
        );
        let (m1, m2) = (
            next.intern("/usr/l1", "", file("l1", 4)),
            next.intern("/usr/l2", "", file("l2", 4)),
        );
        assert_eq!(m1.ino, m2.ino, "a hard-link group keeps one number");
    }

    #[test]
    fn root_is_one_and_numbers_are_stable() {
        let t = Inodes::new(root());
        assert_eq!(t.cached(ROOT_INODE).unwrap().path, "");
        let a = t.intern("/a", "", file("a", 0));
        let b = t.intern("/b", "", file("b", 0));
        assert_eq!((a.ino, b.ino), (2, 3));
        assert_eq!(t.intern("/a", "", file("a", 0)).ino, 2);
        assert_eq!(t.path_of(3).unwrap(), "/b");
        assert!(t.path_of(4).is_none());
        let deep = t.intern("/x/y/z", "", file("z", 0));
        assert_eq!(t.path_of(deep.ino).unwrap(), "/x/y/z");
        assert_eq!(t.path_of(ROOT_INODE).unwrap(), "");
    }

    #[test]
    fn an_entry_read_before_a_switch_is_not_recorded_in_the_new_generation() {
        let t = Inodes::new(root());
        let before = t.generation();
        let a = t.intern("/a", "", file("a", 0));
        t.new_generation(root());
        // A lookup that read the old revision and interns after the switch: refused.
        assert!(t.intern_at(before, "/a", "", file("a", 0)).is_none());
        assert!(t.intern_at(before, "/new", "", file("new", 0)).is_none());
        assert_eq!(t.generation_of(a.ino), Some(before));
        // Read again in the new revision, it is recorded there.
        let again = t.intern_at(t.generation(), "/a", "", file("a", 0)).unwrap();
        assert_eq!(again.ino, a.ino);
        assert_eq!(again.generation, t.generation());
        assert!(t.is_current(&again));
    }

    #[test]
    fn every_name_of_a_hard_link_group_is_invalidated_at_a_switch() {
        let t = Inodes::new(root());
        let x = t.intern("/d/x", "", file("x", 7));
        let y = t.intern("/e/y", "", file("y", 7));
        assert_eq!(x.ino, y.ino);
        let e = t.intern("/e", "", Entry::directory("e", 0o755, 0, 0, 0));
        let stale = t.new_generation(root());
        let names: Vec<(u64, u64, &str)> = stale
            .iter()
            .map(|s| (s.ino, s.parent, s.name.as_str()))
            .collect();
        assert!(names.contains(&(x.ino, e.ino, "y")), "{names:?}");
        assert!(names.iter().any(|&(i, _, n)| i == x.ino && n == "x"));
        // Only once per generation: the next switch has nothing of them.
        assert!(
            t.new_generation(root())
                .iter()
                .all(|s| s.name != "y" && s.name != "x")
        );
    }

    #[test]
    fn hard_links_share_an_inode_within_a_catalog_only() {
        let t = Inodes::new(root());
        let x = t.intern("/d/x", "", file("x", 7));
        let y = t.intern("/d/y", "", file("y", 7));
        let z = t.intern("/n/z", "/n", file("z", 7));
        assert_eq!(x.ino, y.ino);
        assert_ne!(x.ino, z.ino);
        assert_eq!(t.path_of(x.ino).unwrap(), "/d/x");
    }

    #[test]
    fn transition_directory_copies_share_the_inode() {
        let t = Inodes::new(root());
        let parent_copy = t.intern("/n", "", Entry::directory("n", 0o755, 0, 0, 0));
        let child_copy = t.intern("/n", "/n", Entry::directory("n", 0o755, 0, 0, 0));
        assert_eq!(parent_copy.ino, child_copy.ino);
    }

    #[test]
    fn nodes_outside_the_lru_are_rebuilt_by_path() {
        let t = Inodes::new(root());
        let first = t.intern("/f0", "", file("f0", 0));
        for i in 1..(RECENT as u64 + 10) {
            t.intern(&format!("/f{i}"), "", file("f", 0));
        }
        assert!(t.cached(first.ino).is_none());
        assert_eq!(t.path_of(first.ino).unwrap(), "/f0");
        assert_eq!(t.intern("/f0", "", file("f0", 0)).ino, first.ino);
        assert_eq!(t.len(), RECENT + 11, "files and the root");
    }

    #[test]
    fn a_switch_keeps_numbers_of_unchanged_paths_and_renumbers_changed_files() {
        let t = Inodes::new(root());
        let d = t.intern("/d", "", Entry::directory("d", 0o755, 0, 0, 0));
        let same = t.intern("/d/same", "", file("same", 0));
        let changed = t.intern("/d/changed", "", file("changed", 0));
        let old = t.new_generation(Entry::directory("", 0o700, 0, 0, 5));
        assert_eq!(old.len(), 4);
        assert!(old.contains(&StaleInode {
            ino: changed.ino,
            parent: d.ino,
            name: "changed".into()
        }));
        assert_eq!(t.generation(), 1);
        assert_eq!(t.cached(ROOT_INODE).unwrap().entry.mode & 0o777, 0o700);
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
        // The stale node is still in the LRU for open files of the old revision.
        assert_eq!(t.cached(changed.ino).unwrap().entry.size, 1);
        // A file that became a directory gets a new number too.
        t.new_generation(root());
        let e = t.intern("/d/same", "", Entry::directory("same", 0o755, 0, 0, 0));
        assert_ne!(e.ino, same.ino);
    }
}
