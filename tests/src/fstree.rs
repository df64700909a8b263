//! A file tree as the tree-equality tests of issues 4 and 5 see it: one [`Node`] per path
//! with the metadata a container can observe, from whichever source (an unpacked root
//! filesystem, a FUSE mount, a catalog, a layer tar), and [`differences`] between two such
//! trees.
//!
//! What is compared, per path: type, full `st_mode` (incl. setuid/setgid/sticky), uid,
//! gid, mtime seconds and nanoseconds, size (not for directories: a directory's size is
//! the file system's business, 4096 in a catalog, anything on ext4), xattrs, symlink
//! target, device major/minor and the SHA-256 of regular files' content. Not compared:
//! link counts and inode numbers (a CVMFS hard-link group only spans one directory, docs/format.md
//! §6.8, so counts legitimately differ from a local unpack).

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};

/// The kind of a file, from the type bits of its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `S_IFDIR`
    Dir,
    /// `S_IFREG`
    File,
    /// `S_IFLNK`
    Symlink,
    /// `S_IFCHR`
    Char,
    /// `S_IFBLK`
    Block,
    /// `S_IFIFO`
    Fifo,
    /// `S_IFSOCK`
    Socket,
}

impl Kind {
    /// The kind named by the type bits of a full `st_mode`, `None` for unknown bits.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Some(Kind::Dir),
            libc::S_IFREG => Some(Kind::File),
            libc::S_IFLNK => Some(Kind::Symlink),
            libc::S_IFCHR => Some(Kind::Char),
            libc::S_IFBLK => Some(Kind::Block),
            libc::S_IFIFO => Some(Kind::Fifo),
            libc::S_IFSOCK => Some(Kind::Socket),
            _ => None,
        }
    }

    /// The `S_IF*` type bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            Kind::Dir => libc::S_IFDIR,
            Kind::File => libc::S_IFREG,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Char => libc::S_IFCHR,
            Kind::Block => libc::S_IFBLK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
        }
    }
}

/// What one path looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// File type.
    pub kind: Kind,
    /// Full `st_mode`: type bits and the twelve permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, whole seconds since the epoch (negative before 1970), rounded
    /// towards minus infinity.
    pub mtime: i64,
    /// The nanoseconds within [`Node::mtime`] (0 when the source has none).
    pub mtime_ns: u32,
    /// Regular file: bytes; symlink: target length; devices, FIFOs: 0; directories: not
    /// compared.
    pub size: u64,
    /// Extended attributes, name → value.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Symlink target.
    pub target: Option<String>,
    /// Character and block devices: (major, minor).
    pub device: Option<(u32, u32)>,
    /// Regular files: lowercase hex SHA-256 of the content.
    pub content: Option<String>,
    /// Made up by the source rather than read: a directory a tar implies (a parent without
    /// an entry of its own) has no metadata to compare, only its kind.
    pub implicit: bool,
}

impl Node {
    /// A node of `kind` with permission bits `perm`, owned by root, mtime 0, nothing else.
    pub fn new(kind: Kind, perm: u32) -> Node {
        Node {
            kind,
            mode: kind.type_bits() | (perm & 0o7777),
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_ns: 0,
            size: 0,
            xattrs: BTreeMap::new(),
            target: None,
            device: None,
            content: None,
            implicit: false,
        }
    }
}

/// A whole tree: path relative to its root (`""` = the root itself, `etc/passwd`) → node.
pub type Tree = BTreeMap<String, Node>;

/// Exceptions to the comparison, each one documented where it is used.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Subtrees left out on both sides (the path and everything below it).
    pub excluded: Vec<String>,
    /// Paths whose mtime is not compared.
    pub ignore_mtime: BTreeSet<String>,
}

impl Rules {
    fn excludes(&self, path: &str) -> bool {
        self.excluded.iter().any(|e| {
            path == e
                || path
                    .strip_prefix(e.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

/// Differences a failed [`expect_equal`] shows (all are counted).
pub const SHOWN_DIFFERENCES: usize = 60;

/// Prints what `what` compared (paths and kinds of `expected`) and fails with the first
/// [`SHOWN_DIFFERENCES`] [`differences`], if any; `source` names what `expected` was read
/// from (`umoci`, `containerd`) in the message.
///
/// Errors: [`Error::Invalid`] listing the differences.
pub fn expect_equal(
    what: &str,
    source: &str,
    expected: &Tree,
    actual: &Tree,
    rules: &Rules,
) -> Result<()> {
    let differences = differences(expected, actual, rules);
    println!(
        "    {what}: {} paths ({})",
        expected.len(),
        census(expected)
    );
    if differences.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = differences
        .iter()
        .take(SHOWN_DIFFERENCES)
        .map(String::as_str)
        .collect();
    Err(Error::Invalid(format!(
        "{what}: {} differences (expected = {source}, got = Strata):\n  {}",
        differences.len(),
        shown.join("\n  ")
    )))
}

/// Every difference between `expected` and `actual` under `rules`, one line each
/// (`path: field expected X, got Y`, `path: missing`, `path: unexpected`), in path order.
pub fn differences(expected: &Tree, actual: &Tree, rules: &Rules) -> Vec<String> {
    let mut out = Vec::new();
    let paths: BTreeSet<&String> = expected.keys().chain(actual.keys()).collect();
    for path in paths {
        if rules.excludes(path) {
            continue;
        }
        let shown = if path.is_empty() { "/" } else { path.as_str() };
        match (expected.get(path), actual.get(path)) {
            (Some(_), None) => out.push(format!("{shown}: missing")),
            (None, Some(a)) => out.push(format!("{shown}: unexpected {:?}", a.kind)),
            (Some(e), Some(a)) => {
                let check_mtime = !rules.ignore_mtime.contains(path);
                node_differences(shown, e, a, check_mtime, &mut out);
            }
            (None, None) => {}
        }
    }
    out
}

fn node_differences(path: &str, e: &Node, a: &Node, check_mtime: bool, out: &mut Vec<String>) {
    let mut field = |name: &str, same: bool, expected: String, actual: String| {
        if !same {
            out.push(format!("{path}: {name} expected {expected}, got {actual}"));
        }
    };
    field(
        "type",
        e.kind == a.kind,
        format!("{:?}", e.kind),
        format!("{:?}", a.kind),
    );
    if e.kind != a.kind {
        return;
    }
    if e.implicit || a.implicit {
        return;
    }
    field(
        "mode",
        e.mode == a.mode,
        format!("{:o}", e.mode),
        format!("{:o}", a.mode),
    );
    field("uid", e.uid == a.uid, e.uid.to_string(), a.uid.to_string());
    field("gid", e.gid == a.gid, e.gid.to_string(), a.gid.to_string());
    if check_mtime {
        field(
            "mtime",
            (e.mtime, e.mtime_ns) == (a.mtime, a.mtime_ns),
            format!("{}.{:09}", e.mtime, e.mtime_ns),
            format!("{}.{:09}", a.mtime, a.mtime_ns),
        );
    }
    if e.kind != Kind::Dir {
        field(
            "size",
            e.size == a.size,
            e.size.to_string(),
            a.size.to_string(),
        );
    }
    field(
        "xattrs",
        e.xattrs == a.xattrs,
        show_xattrs(&e.xattrs),
        show_xattrs(&a.xattrs),
    );
    field(
        "symlink target",
        e.target == a.target,
        format!("{:?}", e.target),
        format!("{:?}", a.target),
    );
    field(
        "device",
        e.device == a.device,
        format!("{:?}", e.device),
        format!("{:?}", a.device),
    );
    field(
        "content sha256",
        e.content == a.content,
        format!("{:?}", e.content),
        format!("{:?}", a.content),
    );
}

fn show_xattrs(x: &BTreeMap<String, Vec<u8>>) -> String {
    let parts: Vec<String> = x
        .iter()
        .map(|(k, v)| match std::str::from_utf8(v) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{k}={s:?}"),
            _ => format!("{k}=0x{}", hex::encode(v)),
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// How many of each kind a tree holds, e.g. `Dir 12, File 30, Symlink 2`.
pub fn census(tree: &Tree) -> String {
    let mut counts: BTreeMap<Kind, usize> = BTreeMap::new();
    for node in tree.values() {
        *counts.entry(node.kind).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k:?} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Joins a relative tree path and a child name (`""` + `etc` → `etc`).
pub fn child_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &str) -> Node {
        let mut n = Node::new(Kind::File, 0o644);
        n.size = content.len() as u64;
        n.content = Some(content.to_owned());
        n
    }

    #[test]
    fn equal_trees_have_no_differences() {
        let mut t = Tree::new();
        t.insert(String::new(), Node::new(Kind::Dir, 0o755));
        t.insert("a".into(), file("x"));
        assert!(differences(&t, &t.clone(), &Rules::default()).is_empty());
    }

    #[test]
    fn reports_each_field_missing_and_unexpected() {
        let mut e = Tree::new();
        e.insert("a".into(), file("x"));
        e.insert("gone".into(), file("g"));
        let mut a = Tree::new();
        let mut changed = file("y");
        changed.mode |= 0o4000;
        changed.uid = 7;
        changed.mtime_ns = 5;
        changed.xattrs.insert("user.k".into(), b"v".to_vec());
        a.insert("a".into(), changed);
        a.insert("new".into(), Node::new(Kind::Fifo, 0o600));
        let d = differences(&e, &a, &Rules::default());
        assert_eq!(
            d,
            [
                "a: mode expected 100644, got 104644",
                "a: uid expected 0, got 7",
                "a: mtime expected 0.000000000, got 0.000000005",
                "a: xattrs expected {}, got {user.k=\"v\"}",
                "a: content sha256 expected Some(\"x\"), got Some(\"y\")",
                "gone: missing",
                "new: unexpected Fifo",
            ]
        );
    }

    #[test]
    fn rules_exclude_subtrees_and_mtimes_and_implicit_nodes_compare_only_kind() {
        let mut e = Tree::new();
        let mut dir = Node::new(Kind::Dir, 0o755);
        dir.mtime = 10;
        dir.size = 4096;
        e.insert(String::new(), dir.clone());
        let mut a = Tree::new();
        let mut other = dir.clone();
        other.mtime = 0;
        other.size = 12288;
        a.insert(String::new(), other);
        a.insert(".singularity.d".into(), Node::new(Kind::Dir, 0o755));
        a.insert(".singularity.d/env".into(), file("e"));
        a.insert(".singularity.dx".into(), file("e"));
        let rules = Rules {
            excluded: vec![".singularity.d".into()],
            ignore_mtime: [String::new()].into(),
        };
        assert_eq!(
            differences(&e, &a, &rules),
            [".singularity.dx: unexpected File"]
        );
        let mut implicit = Node::new(Kind::Dir, 0o700);
        implicit.implicit = true;
        e.insert("p".into(), implicit);
        a.insert("p".into(), Node::new(Kind::Dir, 0o755));
        assert_eq!(differences(&e, &a, &rules).len(), 1);
        a.insert("p".into(), file(""));
        assert!(
            differences(&e, &a, &rules)
                .iter()
                .any(|d| d == "p: type expected Dir, got File")
        );
    }

    #[test]
    fn kinds_round_trip_through_modes() {
        for kind in [
            Kind::Dir,
            Kind::File,
            Kind::Symlink,
            Kind::Char,
            Kind::Block,
            Kind::Fifo,
            Kind::Socket,
        ] {
            assert_eq!(Kind::from_mode(kind.type_bits() | 0o755), Some(kind));
        }
        assert_eq!(Kind::from_mode(0o644), None);
        assert_eq!(child_path("", "etc"), "etc");
        assert_eq!(child_path("etc", "passwd"), "etc/passwd");
    }
}
