//! Flattening: applying layer trees in order into one root filesystem, resolving overlayfs
//! whiteouts (a character device 0:0 deletes the name below; a directory with
//! `trusted.overlay.opaque="y"` hides all lower content of that directory).
//!
//! Content objects are shared with the layers (entries keep their hashes), so a flat image
//! costs catalog space only (DESIGN.md, "Repository namespace").

use crate::tree::{Node, OPAQUE_XATTR, is_whiteout};

/// Applies `layers` (lowest first, each a layer root as produced by
/// [`crate::layer::read_layer`]) and returns the flattened root directory. The root's
/// metadata comes from the topmost layer. Hard-link groups are renumbered so groups of
/// different layers stay apart, then normalised (CVMFS spec §6.8).
pub fn flatten(layers: &[&Node]) -> Node {
    let mut flat = Flattener::new();
    for layer in layers {
        flat.push(layer);
    }
    flat.finish()
}

/// Flattening one layer at a time: [`Flattener::root`] is the image as seen from above the
/// layers pushed so far (hard-link groups not yet normalised).
pub struct Flattener {
    root: Node,
    group_offset: u32,
}

impl Flattener {
    /// An empty root filesystem.
    pub fn new() -> Flattener {
        Flattener {
            root: Node::dir("", 0o755, 0),
            group_offset: 0,
        }
    }

    /// Applies the layer root `layer` on top.
    pub fn push(&mut self, layer: &Node) {
        let max = layer.max_hardlink_group();
        let mut entry = layer.entry.clone();
        entry.xattrs.remove(OPAQUE_XATTR);
        entry.name = String::new();
        self.root.entry = entry;
        apply_dir(&mut self.root, layer, self.group_offset);
        self.group_offset += max;
    }

    /// As [`Flattener::push`], consuming `layer`: its nodes are moved onto the image instead
    /// of copied, so the layer's memory is handed over as it is applied (the same result as
    /// `push(&layer)`).
    pub fn push_owned(&mut self, layer: Node) {
        let max = layer.max_hardlink_group();
        let Node {
            mut entry,
            children,
            ..
        } = layer;
        let opaque = is_opaque(&entry);
        entry.xattrs.remove(OPAQUE_XATTR);
        entry.name = String::new();
        self.root.entry = entry;
        apply_children_owned(&mut self.root, children, opaque, self.group_offset);
        self.group_offset += max;
    }

    /// The tree so far.
    pub fn root(&self) -> &Node {
        &self.root
    }

    /// The flattened root directory, hard-link groups normalised and link counts set.
    pub fn finish(mut self) -> Node {
        self.root.catalog = None;
        self.root.normalize_hardlinks();
        self.root.fix_linkcounts();
        self.root
    }
}

impl Default for Flattener {
    fn default() -> Self {
        Flattener::new()
    }
}

/// Gives each directory in `implicit` (paths below `layer`, see
/// [`crate::layer::LayerTree::implicit_dirs`]) the mode, owner, mtime and xattrs the same
/// directory has in `lower` (the image below this layer), as overlayfs's copy-up does when
/// containerd applies such a layer natively; the layer's own opaque mark is kept. Without
/// this, a layer that only implies `/tmp` would turn the image's sticky `1777` `/tmp` into
/// `0755` in every container. Directories absent from `lower` keep `0755 root:root`.
pub fn inherit_implicit_dirs(layer: &mut Node, implicit: &[Vec<String>], lower: &Node) {
    for path in implicit {
        let comps: Vec<&str> = path.iter().map(String::as_str).collect();
        let Some(below) = lower.get(&comps).filter(|n| n.is_dir()) else {
            continue;
        };
        let Some(node) = layer.get_mut(&comps) else {
            continue;
        };
        let opaque = node.entry.xattrs.get(OPAQUE_XATTR).cloned();
        let e = &mut node.entry;
        e.mode = below.entry.mode;
        e.uid = below.entry.uid;
        e.gid = below.entry.gid;
        e.mtime = below.entry.mtime;
        e.mtime_ns = below.entry.mtime_ns;
        e.xattrs = below.entry.xattrs.clone();
        e.xattrs.remove(OPAQUE_XATTR);
        if let Some(v) = opaque {
            e.xattrs.insert(OPAQUE_XATTR.to_string(), v);
        }
    }
}

/// Whether a layer directory is opaque (`trusted.overlay.opaque="y"`).
fn is_opaque(e: &catalog::Entry) -> bool {
    e.xattrs.get(OPAQUE_XATTR).is_some_and(|v| v == b"y")
}

/// [`apply_dir`] for a layer directory given by value: its `children`, and whether it was
/// opaque. The same rules, with the layer's nodes moved instead of copied.
fn apply_children_owned(
    dst: &mut Node,
    children: std::collections::BTreeMap<String, Node>,
    opaque: bool,
    group_offset: u32,
) {
    if opaque {
        dst.children.clear();
    }
    for (name, child) in children {
        if is_whiteout(&child.entry) {
            dst.children.remove(&name);
            continue;
        }
        let is_dir = child.is_dir();
        let Node {
            entry,
            children: grandchildren,
            ..
        } = child;
        if is_dir {
            let opaque = is_opaque(&entry);
            let d = place_dir(dst, name, entry);
            apply_children_owned(d, grandchildren, opaque, group_offset);
        } else {
            place_leaf(dst, name, entry, group_offset);
        }
    }
}

/// Applies the children of the layer directory `src` onto `dst`.
fn apply_dir(dst: &mut Node, src: &Node, group_offset: u32) {
    if is_opaque(&src.entry) {
        dst.children.clear();
    }
    for (name, child) in &src.children {
        if is_whiteout(&child.entry) {
            dst.children.remove(name);
            continue;
        }
        if child.is_dir() {
            let d = place_dir(dst, name.clone(), child.entry.clone());
            apply_dir(d, child, group_offset);
        } else {
            place_leaf(dst, name.clone(), child.entry.clone(), group_offset);
        }
    }
}

/// The image directory `name` in `dst` for a layer directory with `entry` (its opaque mark
/// dropped): an existing directory takes the layer's metadata and keeps its children;
/// anything else there is replaced by an empty directory.
fn place_dir(dst: &mut Node, name: String, mut entry: catalog::Entry) -> &mut Node {
    use std::collections::btree_map::Entry as Slot;
    entry.xattrs.remove(OPAQUE_XATTR);
    match dst.children.entry(name) {
        Slot::Occupied(o) if o.get().is_dir() => {
            let d = o.into_mut();
            d.entry = entry;
            d
        }
        Slot::Occupied(mut o) => {
            o.insert(Node::leaf(entry));
            o.into_mut()
        }
        Slot::Vacant(v) => v.insert(Node::leaf(entry)),
    }
}

/// Puts the layer's non-directory `entry` at `name` in `dst`, replacing whatever is there;
/// its hard-link group is moved past the groups of the layers below (`group_offset`).
fn place_leaf(dst: &mut Node, name: String, mut entry: catalog::Entry, group_offset: u32) {
    if entry.hardlink_group != 0 {
        entry.hardlink_group += group_offset;
    }
    dst.children.insert(name, Node::leaf(entry));
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
        let mut owned = Flattener::new();
        for l in [l0.clone(), l1.clone(), l2.clone()] {
            owned.push_owned(l);
        }
        assert_eq!(format!("{:?}", owned.finish()), format!("{flat:?}"));
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
