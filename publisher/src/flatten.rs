//! Flattening: applying layers in order into one root filesystem, resolving overlayfs
//! whiteouts (a character device 0:0 deletes the name below; a directory with
//! `trusted.overlay.opaque="y"` hides all lower content of that directory).
//!
//! The image is never built in memory: [`Image::emit`] merges the layers directory by
//! directory — for each directory it lists that directory in every layer that still
//! contributes to it, applies the overlay rules to the listings and hands the resulting
//! rows to a sink (a [`catalog::CatalogWriter`] in `ingest`), then descends. Memory is one
//! merged listing per directory level (depth × widest directory), whatever the number of
//! files (publisher/README.md, "Memory"). Layers are read through [`LayerView`]: a written
//! layer catalog ([`crate::catalog_view::CatalogView`]) or an in-memory [`Node`] tree.
//!
//! Content objects are shared with the layers (entries keep their hashes), so a flat image
//! costs catalog space only (docs/namespace.md §5).

use std::collections::{BTreeMap, HashMap};

use catalog::{Entry, EntryKind};

use crate::error::{Error, Result};
use crate::staging::join;
use crate::tree::{DIR_SIZE, Node, OPAQUE_XATTR, components, is_whiteout};

/// A layer as the merge reads it, one directory at a time. Paths are relative to the layer
/// root, components joined by `/` (`""` is the root).
pub trait LayerView {
    /// The layer root's row.
    fn root(&self) -> Result<Entry>;
    /// The rows of directory `dir`, sorted by name, chunk lists filled in; empty if `dir`
    /// is not a directory of the layer.
    fn list(&self, dir: &str) -> Result<Vec<Entry>>;
    /// The row at `path` (not the root).
    fn lookup(&self, path: &str) -> Result<Option<Entry>>;
    /// The largest hard-link group id of the layer (0 if none).
    fn max_hardlink_group(&self) -> Result<u32>;
}

impl LayerView for Node {
    fn root(&self) -> Result<Entry> {
        Ok(self.entry.clone())
    }
    fn list(&self, dir: &str) -> Result<Vec<Entry>> {
        Ok(self
            .get(&components(dir))
            .map(|n| n.children.values().map(|c| c.entry.clone()).collect())
            .unwrap_or_default())
    }
    fn lookup(&self, path: &str) -> Result<Option<Entry>> {
        Ok(self.get(&components(path)).map(|n| n.entry.clone()))
    }
    fn max_hardlink_group(&self) -> Result<u32> {
        Ok(Node::max_hardlink_group(self))
    }
}

/// Whether a layer directory is opaque (`trusted.overlay.opaque="y"`).
pub fn is_opaque(e: &Entry) -> bool {
    e.xattrs.get(OPAQUE_XATTR).is_some_and(|v| v == b"y")
}

/// Makes the hard-link groups of one directory's rows consistent (docs/format.md §6.8; groups
/// never span directories, [`crate::layer`]): every member gets `linkcount` = number of
/// members, a group of one is dissolved, other non-directories get linkcount 1.
pub fn normalize_hardlinks<'e>(entries: impl IntoIterator<Item = &'e mut Entry>) {
    let mut entries: Vec<&mut Entry> = entries
        .into_iter()
        .filter(|e| e.kind != EntryKind::Directory)
        .collect();
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for e in &entries {
        if e.hardlink_group != 0 {
            *counts.entry(e.hardlink_group).or_default() += 1;
        }
    }
    for e in &mut entries {
        let g = e.hardlink_group;
        let count = if g == 0 {
            1
        } else {
            counts.get(&g).copied().unwrap_or(1)
        };
        if count <= 1 {
            e.hardlink_group = 0;
            e.linkcount = 1;
        } else {
            e.linkcount = count;
        }
    }
}

/// Where the merge sends rows: `(path relative to the image root, row)`, each directory
/// before its contents, directories with final link counts.
pub type Sink<'s> = dyn FnMut(&str, &Entry) -> Result<()> + 's;

/// A name in a directory being merged: its row so far, and for a directory the layers
/// whose same directory contributes to it (index, opaque there).
struct Slot {
    entry: Entry,
    layers: Vec<(usize, bool)>,
}

/// The layers of one image, lowest first, with what the merge needs about each.
pub struct Image<'a> {
    layers: Vec<&'a dyn LayerView>,
    roots: Vec<Entry>,
    /// Added to a layer's hard-link groups so groups of different layers stay apart.
    offsets: Vec<u32>,
}

impl<'a> Image<'a> {
    /// The image made of `layers` (lowest first). Reads each root row and the largest
    /// hard-link group of each layer.
    ///
    /// Errors: those of the views; [`Error::Task`] if the layers' hard-link groups do not
    /// fit in one `u32` numbering (docs/format.md §6.8: 32-bit group ids).
    pub fn new(layers: Vec<&'a dyn LayerView>) -> Result<Image<'a>> {
        let mut roots = Vec::with_capacity(layers.len());
        let mut offsets = Vec::with_capacity(layers.len());
        let mut offset = 0u32;
        for l in &layers {
            roots.push(l.root()?);
            offsets.push(offset);
            let max = l.max_hardlink_group()?;
            // Saturating here would let `apply` overflow a group id (a panic, or groups
            // of different layers merged).
            offset = offset.checked_add(max).ok_or_else(|| {
                Error::Task(format!(
                    "the layers hold more than {} hard-link groups together",
                    u32::MAX
                ))
            })?;
        }
        Ok(Image {
            layers,
            roots,
            offsets,
        })
    }

    /// As [`Image::new`] for [`Image::resolve_dir`] only: hard-link groups are not read
    /// (no full scan of each layer), so [`Image::emit`] would not keep groups apart.
    pub fn for_lookup(layers: Vec<&'a dyn LayerView>) -> Result<Image<'a>> {
        let roots = layers
            .iter()
            .map(|l| l.root())
            .collect::<Result<Vec<_>>>()?;
        let offsets = vec![0; layers.len()];
        Ok(Image {
            layers,
            roots,
            offsets,
        })
    }

    /// Whether the image has no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The image's root row: the top layer's root, opaque mark dropped (an empty
    /// directory `0755 root:root` for an image without layers).
    pub fn root_entry(&self) -> Entry {
        let mut e = self
            .roots
            .last()
            .cloned()
            .unwrap_or_else(|| crate::tree::dir_entry("", 0o755, 0, 0, 0));
        e.xattrs.remove(OPAQUE_XATTR);
        e.name = String::new();
        e
    }

    /// Merges the layers into `out`, adding `extra` (small trees, e.g. `/.singularity.d`)
    /// at the root where the image has nothing of that name. Returns the root row as sent.
    pub fn emit(&self, extra: Vec<Node>, out: &mut Sink<'_>) -> Result<Entry> {
        let active: Vec<(usize, bool)> = self
            .roots
            .iter()
            .enumerate()
            .map(|(i, r)| (i, is_opaque(r)))
            .collect();
        self.merge_dir("", self.root_entry(), &active, extra, out)
    }

    fn merge_dir(
        &self,
        rel: &str,
        mut entry: Entry,
        active: &[(usize, bool)],
        extra: Vec<Node>,
        out: &mut Sink<'_>,
    ) -> Result<Entry> {
        let mut slots: BTreeMap<String, Slot> = BTreeMap::new();
        for &(i, opaque) in active {
            if opaque {
                slots.clear();
            }
            for child in self.layers[i].list(rel)? {
                self.apply(&mut slots, i, child);
            }
        }
        let extra: Vec<Node> = extra
            .into_iter()
            .filter(|n| !slots.contains_key(&n.entry.name))
            .map(|mut n| {
                n.fix_linkcounts();
                n
            })
            .collect();
        normalize_hardlinks(slots.values_mut().map(|s| &mut s.entry));
        let subdirs = slots
            .values()
            .filter(|s| s.entry.kind == EntryKind::Directory)
            .count()
            + extra.iter().filter(|n| n.is_dir()).count();
        entry.linkcount = 2 + subdirs as u32;
        entry.size = DIR_SIZE;
        out(rel, &entry)?;
        for (name, slot) in slots {
            let path = join(rel, &name);
            if slot.entry.kind == EntryKind::Directory {
                self.merge_dir(&path, slot.entry, &slot.layers, Vec::new(), out)?;
            } else {
                out(&path, &slot.entry)?;
            }
        }
        for n in extra {
            emit_node(rel, &n, out)?;
        }
        Ok(entry)
    }

    /// Applies one row of layer `i` to the names of a directory (the rules of overlayfs).
    fn apply(&self, slots: &mut BTreeMap<String, Slot>, i: usize, mut child: Entry) {
        if is_whiteout(&child) {
            slots.remove(&child.name);
            return;
        }
        if child.kind == EntryKind::Directory {
            // An existing directory takes the layer's metadata and keeps its contents;
            // anything else there is replaced by this directory.
            let opaque = is_opaque(&child);
            child.xattrs.remove(OPAQUE_XATTR);
            match slots.get_mut(&child.name) {
                Some(s) if s.entry.kind == EntryKind::Directory => {
                    s.entry = child;
                    s.layers.push((i, opaque));
                }
                _ => {
                    slots.insert(
                        child.name.clone(),
                        Slot {
                            entry: child,
                            layers: vec![(i, opaque)],
                        },
                    );
                }
            }
            return;
        }
        if child.hardlink_group != 0 {
            child.hardlink_group += self.offsets[i];
        }
        slots.insert(
            child.name.clone(),
            Slot {
                entry: child,
                layers: Vec::new(),
            },
        );
    }

    /// The directory at `path` (relative, `""` = root) as the image shows it, opaque mark
    /// dropped; `None` if the image has no directory there. Looks up one name per level in
    /// the layers that contribute to it.
    pub fn resolve_dir(&self, path: &str) -> Result<Option<Entry>> {
        if self.layers.is_empty() {
            return Ok(None);
        }
        if path.is_empty() {
            return Ok(Some(self.root_entry()));
        }
        let mut active: Vec<(usize, bool)> = self
            .roots
            .iter()
            .enumerate()
            .map(|(i, r)| (i, is_opaque(r)))
            .collect();
        let comps = components(path);
        let mut prefix = String::new();
        for (k, c) in comps.iter().copied().enumerate() {
            let here = join(&prefix, c);
            let mut slot: Option<Slot> = None;
            for &(i, opaque) in &active {
                if opaque {
                    slot = None;
                }
                let Some(e) = self.layers[i].lookup(&here)? else {
                    continue;
                };
                let mut one = BTreeMap::new();
                if let Some(s) = slot.take() {
                    one.insert(c.to_string(), s);
                }
                self.apply(&mut one, i, e);
                slot = one.remove(c);
            }
            match slot {
                Some(s) if s.entry.kind == EntryKind::Directory => {
                    if k + 1 == comps.len() {
                        return Ok(Some(s.entry));
                    }
                    active = s.layers;
                }
                _ => return Ok(None),
            }
            prefix = here;
        }
        Ok(None)
    }
}

/// Sends the in-memory tree `node` (a child of the directory `parent`) to `out`.
fn emit_node(parent: &str, node: &Node, out: &mut Sink<'_>) -> Result<()> {
    let path = join(parent, &node.entry.name);
    out(&path, &node.entry)?;
    for c in node.children.values() {
        emit_node(&path, c, out)?;
    }
    Ok(())
}

/// Collects what a merge sends into a tree (tests, and small images).
pub fn collect(image: &Image<'_>, extra: Vec<Node>) -> Result<Node> {
    let mut root = Node::dir("", 0o755, 0);
    image.emit(extra, &mut |path: &str, e: &Entry| {
        if path.is_empty() {
            root.entry = e.clone();
        } else {
            let c = components(path);
            if let Some((_, parent)) = c.split_last() {
                root.insert(parent, Node::leaf(e.clone()), 0);
            }
        }
        Ok(())
    })?;
    Ok(root)
}

/// Applies `layers` (lowest first, each a layer root) and returns the flattened root
/// directory (in memory; `ingest` streams instead, [`Image::emit`]). The root's metadata
/// comes from the topmost layer. Hard-link groups are renumbered so groups of different
/// layers stay apart, then normalised (docs/format.md §6.8).
pub fn flatten(layers: &[&Node]) -> Node {
    let views: Vec<&dyn LayerView> = layers.iter().map(|l| *l as &dyn LayerView).collect();
    // Node views never fail.
    Image::new(views)
        .and_then(|image| collect(&image, Vec::new()))
        .unwrap_or_else(|_| Node::dir("", 0o755, 0))
}

/// Gives a directory the layer only implies (`entry`) the mode, owner, mtime and xattrs the
/// same directory has in the image below the layer (`below`), as overlayfs's copy-up does
/// when containerd applies such a layer natively; the layer's own opaque mark is kept.
/// Without this, a layer that only implies `/tmp` would turn the image's sticky `1777`
/// `/tmp` into `0755` in every container. (Directories absent below keep `0755
/// root:root`: the caller does not call this for them.)
pub fn inherit(entry: &mut Entry, below: &Entry) {
    let opaque = entry.xattrs.get(OPAQUE_XATTR).cloned();
    entry.mode = below.mode;
    entry.uid = below.uid;
    entry.gid = below.gid;
    entry.mtime = below.mtime;
    entry.mtime_ns = below.mtime_ns;
    entry.xattrs = below.xattrs.clone();
    entry.xattrs.remove(OPAQUE_XATTR);
    if let Some(v) = opaque {
        entry.xattrs.insert(OPAQUE_XATTR.to_string(), v);
    }
}

/// [`inherit`] for in-memory trees: each directory of `layer` at a path in `implicit`
/// takes the metadata of the same directory in the image `lower`.
pub fn inherit_implicit_dirs(layer: &mut Node, implicit: &[Vec<String>], lower: &Node) {
    let Ok(image) = Image::new(vec![lower as &dyn LayerView]) else {
        return;
    };
    for path in implicit {
        let Ok(Some(below)) = image.resolve_dir(&path.join("/")) else {
            continue;
        };
        let comps: Vec<&str> = path.iter().map(String::as_str).collect();
        if let Some(node) = layer.get_mut(&comps) {
            inherit(&mut node.entry, &below);
        }
    }
}

#[cfg(test)]
mod tests {
    use catalog::{ContentHash, HashAlgorithm};

    use super::*;
    use crate::tree::{
        CATALOG_MARKER, components, dir_entry, file_entry, marker_entry, whiteout_entry,
    };

    fn h(b: &[u8]) -> ContentHash {
        ContentHash::of_bytes(HashAlgorithm::Sha1, b)
    }

    fn file(root: &mut Node, path: &str, data: &[u8]) {
        let c = components(path);
        let (name, parent) = c.split_last().unwrap_or_else(|| panic!("path"));
        root.insert(
            parent,
            Node::leaf(file_entry(name, 0o644, 0, 0, 0, data.len() as u64, h(data))),
            0,
        );
    }

    fn whiteout(root: &mut Node, path: &str) {
        let c = components(path);
        let (name, parent) = c.split_last().unwrap_or_else(|| panic!("path"));
        root.insert(parent, Node::leaf(whiteout_entry(name, 0)), 0);
    }

    #[test]
    fn whiteouts_delete_and_opaque_hides() {
        let mut l0 = Node::dir("", 0o755, 0);
        file(&mut l0, "etc/passwd", b"root");
        file(&mut l0, "etc/group", b"g");
        file(&mut l0, "var/cache/a", b"a");
        file(&mut l0, "var/cache/sub/b", b"b");
        file(&mut l0, "opt/x/y", b"y");
        l0.insert(&[], Node::leaf(marker_entry(h(b""), 0)), 0);

        let mut l1 = Node::dir("", 0o700, 0);
        whiteout(&mut l1, "etc/passwd");
        whiteout(&mut l1, "opt");
        whiteout(&mut l1, "never/existed");
        let cache = l1.ensure_dir(&["var", "cache"], 0);
        cache
            .entry
            .xattrs
            .insert(OPAQUE_XATTR.into(), b"y".to_vec());
        file(&mut l1, "var/cache/new", b"n");

        let mut l2 = Node::dir("", 0o755, 0);
        file(&mut l2, "opt", b"now a file");

        let flat = flatten(&[&l0, &l1, &l2]);
        assert!(flat.get(&["etc", "passwd"]).is_none());
        assert!(flat.get(&["etc", "group"]).is_some());
        assert!(flat.get(&["var", "cache", "a"]).is_none());
        assert!(flat.get(&["var", "cache", "sub"]).is_none());
        assert!(flat.get(&["var", "cache", "new"]).is_some());
        assert!(
            flat.get(&["var", "cache"])
                .is_some_and(|n| n.entry.xattrs.is_empty())
        );
        assert!(flat.get(&["opt"]).is_some_and(|n| !n.is_dir()));
        assert!(flat.get(&["never"]).is_some_and(|n| n.children.is_empty()));
        // layer catalogs carry no marker: a `.cvmfscatalog` in a layer is image content
        assert!(flat.get(&[CATALOG_MARKER]).is_some());
        let mut whiteouts = 0;
        flat.visit_catalog(&mut |n| whiteouts += usize::from(is_whiteout(&n.entry)));
        assert_eq!(whiteouts, 0);
        assert_eq!(
            flat.entry.mode, 0o040755,
            "root metadata from the top layer"
        );
        assert_eq!(flat.entry.linkcount, 2 + 3);
    }

    #[test]
    fn directory_replaces_file_and_metadata_updates() {
        let mut l0 = Node::dir("", 0o755, 0);
        file(&mut l0, "a", b"file");
        l0.insert(&[], Node::leaf(dir_entry("d", 0o700, 1, 1, 5)), 0);
        file(&mut l0, "d/keep", b"k");
        let mut l1 = Node::dir("", 0o755, 0);
        file(&mut l1, "a/inside", b"i");
        l1.insert(&[], Node::leaf(dir_entry("d", 0o755, 2, 2, 9)), 0);
        let flat = flatten(&[&l0, &l1]);
        assert!(flat.get(&["a", "inside"]).is_some());
        let d = flat.get(&["d"]).unwrap_or_else(|| panic!("d"));
        assert_eq!((d.entry.mode, d.entry.uid, d.entry.mtime), (0o040755, 2, 9));
        assert!(d.children.contains_key("keep"));
    }

    #[test]
    fn hardlink_groups_of_layers_stay_apart() {
        let mut layers = Vec::new();
        for data in [&b"one"[..], b"two"] {
            let mut l = Node::dir("", 0o755, 0);
            let prefix = String::from_utf8_lossy(data).into_owned();
            for n in ["x", "y"] {
                let mut e = file_entry(&format!("{prefix}{n}"), 0o644, 0, 0, 0, 3, h(data));
                e.hardlink_group = 1;
                e.linkcount = 2;
                l.insert(&[], Node::leaf(e), 0);
            }
            layers.push(l);
        }
        // the top layer replaces one member of the bottom group
        file(&mut layers[1], "onex", b"replaced");
        let flat = flatten(&[&layers[0], &layers[1]]);
        let g = |n: &str| {
            flat.get(&[n])
                .map(|n| (n.entry.hardlink_group, n.entry.linkcount))
                .unwrap_or_default()
        };
        assert_eq!(g("onex"), (0, 1));
        assert_eq!(g("oney"), (0, 1), "group of one dissolved");
        assert_eq!(g("twox"), (2, 2));
        assert_eq!(g("twoy"), (2, 2));
    }

    #[test]
    fn hard_link_groups_that_do_not_fit_are_an_error() {
        let grouped = |name: &str, group: u32| {
            let mut root = Node::dir("", 0o755, 0);
            for n in ["x", "y"] {
                let mut e = file_entry(&format!("{name}{n}"), 0o644, 0, 0, 0, 1, h(b"x"));
                e.hardlink_group = group;
                root.insert(&[], Node::leaf(e), 0);
            }
            root
        };
        let (l0, l1) = (grouped("a", u32::MAX), grouped("b", 1));
        let r = Image::new(vec![&l0 as &dyn LayerView, &l1]);
        assert!(matches!(r, Err(Error::Task(m)) if m.contains("hard-link groups")));
        let l0 = grouped("a", u32::MAX - 1);
        let image = Image::new(vec![&l0 as &dyn LayerView, &l1]);
        let flat = image
            .and_then(|i| collect(&i, Vec::new()))
            .unwrap_or_else(|e| panic!("{e}"));
        let g = |n: &str| flat.get(&[n]).map(|n| n.entry.hardlink_group);
        assert_eq!((g("ax"), g("bx")), (Some(u32::MAX - 1), Some(u32::MAX)));
    }

    #[test]
    fn upper_entries_never_follow_lower_symlinks() {
        use crate::tree::symlink_entry;
        let mut l0 = Node::dir("", 0o755, 0);
        l0.insert(&[], Node::leaf(symlink_entry("a", "/etc", 0, 0, 0)), 0);
        file(&mut l0, "etc/passwd", b"root");
        let mut l1 = Node::dir("", 0o755, 0);
        file(&mut l1, "a/passwd", b"evil");
        let flat = flatten(&[&l0, &l1]);
        assert!(
            flat.get(&["a"]).is_some_and(Node::is_dir),
            "symlink replaced"
        );
        assert!(flat.get(&["a", "passwd"]).is_some());
        let passwd = flat.get(&["etc", "passwd"]).map(|n| n.entry.hash);
        assert_eq!(passwd, Some(Some(h(b"root"))), "target untouched");
    }

    #[test]
    fn implicit_directories_inherit_lower_metadata() {
        let mut lower = Node::dir("", 0o755, 0);
        let mut tmp = dir_entry("tmp", 0o1777, 0, 0, 100);
        tmp.xattrs.insert("user.k".into(), b"v".to_vec());
        lower.insert(&[], Node::leaf(tmp), 0);
        lower.insert(
            &["home"],
            Node::leaf(dir_entry("u", 0o700, 1000, 1000, 200)),
            0,
        );
        let mut layer = Node::dir("", 0o755, 0);
        layer.insert(
            &["tmp"],
            Node::leaf(file_entry("x", 0o644, 0, 0, 1, 1, h(b"x"))),
            0,
        );
        layer.insert(
            &["home", "u"],
            Node::leaf(file_entry("f", 0o600, 0, 0, 1, 1, h(b"f"))),
            0,
        );
        layer.insert(
            &["new"],
            Node::leaf(file_entry("g", 0o644, 0, 0, 1, 1, h(b"g"))),
            0,
        );
        if let Some(u) = layer.get_mut(&["home", "u"]) {
            u.entry.xattrs.insert(OPAQUE_XATTR.into(), b"y".to_vec());
        }
        let implicit: Vec<Vec<String>> = [&["tmp"][..], &["home"], &["home", "u"], &["new"]]
            .iter()
            .map(|p| p.iter().map(|c| c.to_string()).collect())
            .collect();
        inherit_implicit_dirs(&mut layer, &implicit, &lower);
        let e = |p: &[&str]| {
            layer
                .get(p)
                .map(|n| n.entry.clone())
                .unwrap_or_else(|| panic!("{p:?}"))
        };
        let t = e(&["tmp"]);
        assert_eq!(
            (t.mode, t.mtime, t.xattrs.get("user.k")),
            (0o041777, 100, Some(&b"v".to_vec()))
        );
        let u = e(&["home", "u"]);
        assert_eq!((u.mode, u.uid, u.gid, u.mtime), (0o040700, 1000, 1000, 200));
        assert_eq!(
            u.xattrs.get(OPAQUE_XATTR),
            Some(&b"y".to_vec()),
            "own opaque mark kept"
        );
        assert_eq!(e(&["new"]).mode, 0o040755, "absent below: placeholder kept");
    }
}
