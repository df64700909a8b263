//! What a layer tar means as an overlayfs lower directory (docs/CONTRACTS.md §3): the
//! entries of a (gzip-compressed or plain) layer tar read with the `tar` crate into a
//! [`Tree`], with the OCI whiteouts turned into overlayfs ones:
//!
//! * `DIR/.wh.NAME` → a character device 0:0 named `NAME`, mode `S_IFCHR|0`, with the
//!   whiteout entry's owner (containerd chowns it so) and mtime;
//! * `DIR/.wh..wh..opq` → xattr `trusted.overlay.opaque` = `y` on `DIR`;
//! * a directory the layer makes where it had a whiteout or a non-directory (`.wh.d` then
//!   `d/x`) is opaque too: unpacking deletes the lower `d` before making the new one.
//!
//! Tar semantics as unpacking applies them (OCI image spec `layer.md`): PAX records
//! (`path`, `linkpath`, `mtime` with nanoseconds, `uid`, `gid`, `SCHILY.xattr.*`) override
//! the header; GNU base-256 numbers (negative mtimes) are decoded, and an mtime before 1970
//! or after 2262-04-11 is the epoch (containerd's `archive.boundTime`); a later entry for a
//! path replaces the earlier one (and a non-directory replacing a directory drops its
//! children); a hard link is a second name for its target (same metadata, same content);
//! a symlink's mode is always `0777` (Linux ignores the header's); the root entry `./`
//! gives only its mtime (containerd skips it: the root is `0755 root:root`). A parent directory
//! without an entry of its own is [`Node::implicit`]. A GNU PAX sparse file of format 1.0
//! (`GNU.sparse.major`/`minor` = 1/0, the map at the start of its data) is the file
//! `GNU.sparse.name` of `GNU.sparse.realsize` bytes, holes read as zeros; other sparse
//! formats are an error here (the corpus this model checks uses 1.0, GNU tar's default).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::error::{Error, Result, io_context};
use crate::fstree::{Kind, Node, Tree};

/// The xattr overlayfs reads to treat a directory as opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The prefix of whiteout names.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The PAX key prefix of extended attributes.
const PAX_XATTR: &str = "SCHILY.xattr.";

/// Reads the layer blob at `path` (gzip if it starts with the gzip magic, else a plain tar).
///
/// Errors: as [`tar_tree`], plus the file not being readable.
pub fn layer_tree(path: &Path) -> Result<Tree> {
    let mut file =
        std::fs::File::open(path).map_err(io_context(format!("open {}", path.display())))?;
    let mut magic = [0u8; 2];
    let n = file
        .read(&mut magic)
        .map_err(io_context(format!("read {}", path.display())))?;
    let file = std::fs::File::open(path).map_err(io_context(format!("open {}", path.display())))?;
    let what = path.display().to_string();
    if n == 2 && magic == [0x1f, 0x8b] {
        tar_tree(flate2::read::MultiGzDecoder::new(file), &what)
    } else {
        tar_tree(file, &what)
    }
}

/// Reads an uncompressed tar stream into its overlayfs [`Tree`]; `what` names it in
/// errors.
///
/// Names that are not UTF-8 are written as Strata writes them (`catalog::names`).
///
/// Errors: unreadable tar, a path escaping the root, a hard link to
/// nothing earlier in the tar, an entry type a layer cannot hold ([`Error::Invalid`]).
pub fn tar_tree<R: Read>(reader: R, what: &str) -> Result<Tree> {
    let mut archive = tar::Archive::new(reader);
    let mut tree = Tree::new();
    let mut root = Node::new(Kind::Dir, 0o755);
    root.implicit = true;
    tree.insert(String::new(), root);
    let entries = archive
        .entries()
        .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
        add_entry(&mut tree, entry, what)?;
    }
    Ok(tree)
}

/// `a/./b/` → `a/b`; `None` if the path climbs out of the root.
fn normalize(raw: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

fn add_entry<R: Read>(tree: &mut Tree, mut entry: tar::Entry<'_, R>, what: &str) -> Result<()> {
    let kind = entry.header().entry_type();
    if matches!(
        kind,
        EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink
    ) {
        return Ok(());
    }
    let raw = catalog::names::from_bytes(&entry.path_bytes()).into_owned();
    let invalid = |reason: String| Error::Invalid(format!("{what}: entry {raw:?}: {reason}"));
    let mut meta = read_meta(&mut entry).map_err(invalid)?;
    let sparse = meta.sparse.take();
    let real = sparse.as_ref().map_or(raw.as_str(), |s| s.name.as_str());
    let path = normalize(real).ok_or_else(|| invalid("escapes the root".into()))?;
    let (parent, name) = match path.rsplit_once('/') {
        Some((p, n)) => (p.to_owned(), n.to_owned()),
        None => (String::new(), path.clone()),
    };

    if path.is_empty() {
        if kind != EntryType::Directory {
            return Err(invalid("a non-directory at the layer root".into()));
        }
        // containerd skips `./` ("resolved to root"): the root stays 0755 root:root, with
        // its opaque mark; only the mtime is kept (containerd's is the unpack time).
        let mut root = Node::new(Kind::Dir, 0o755);
        (root.mtime, root.mtime_ns) = (meta.mtime, meta.mtime_ns);
        if let Some(v) = tree.get("").and_then(|r| r.xattrs.get(OPAQUE_XATTR)) {
            root.xattrs.insert(OPAQUE_XATTR.to_owned(), v.clone());
        }
        tree.insert(String::new(), root);
        return Ok(());
    }
    if name == OPAQUE_MARKER {
        ensure_dirs(tree, &parent, true);
        if let Some(dir) = tree.get_mut(&parent) {
            dir.xattrs.insert(OPAQUE_XATTR.to_owned(), b"y".to_vec());
        }
        return Ok(());
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        ensure_dirs(tree, &parent, true);
        let mut node = Node::new(Kind::Char, 0);
        node.device = Some((0, 0));
        (node.uid, node.gid) = (meta.uid, meta.gid);
        node.mtime = meta.mtime;
        node.mtime_ns = meta.mtime_ns;
        let target = crate::fstree::child_path(&parent, hidden);
        replace(tree, &target, node);
        return Ok(());
    }
    let node = match kind {
        EntryType::Directory => {
            ensure_dirs(tree, &parent, true);
            let mut node = meta.apply(Node::new(Kind::Dir, 0));
            match tree.get(&path) {
                Some(existing) if existing.kind == Kind::Dir => {
                    if let Some(v) = existing.xattrs.get(OPAQUE_XATTR) {
                        node.xattrs.insert(OPAQUE_XATTR.to_owned(), v.clone());
                    }
                    tree.insert(path, node);
                }
                Some(_) => {
                    // The layer removed what was here (a whiteout or a file): unpacking
                    // deletes the lower directory first, so this one hides it.
                    node.xattrs.insert(OPAQUE_XATTR.to_owned(), b"y".to_vec());
                    replace(tree, &path, node);
                }
                None => replace(tree, &path, node),
            }
            return Ok(());
        }
        EntryType::Regular => {
            let mut node = meta.apply(Node::new(Kind::File, 0));
            if let Some(sparse) = sparse {
                let mut data = Vec::new();
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| invalid(format!("reading content: {e}")))?;
                let content = expand_sparse_1_0(&data, sparse.size).map_err(invalid)?;
                node.size = content.len() as u64;
                node.content = Some(hex::encode(Sha256::digest(&content)));
                ensure_dirs(tree, &parent, true);
                replace(tree, &path, node);
                return Ok(());
            }
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut size = 0u64;
            loop {
                let n = entry
                    .read(&mut buf)
                    .map_err(|e| invalid(format!("reading content: {e}")))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            node.size = size;
            node.content = Some(hex::encode(hasher.finalize()));
            node
        }
        EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| invalid("symlink without target".into()))?;
            let size = target.len() as u64;
            let target = catalog::names::from_bytes(&target).into_owned();
            let mut node = meta.apply(Node::new(Kind::Symlink, 0));
            node.mode = libc::S_IFLNK | 0o777;
            node.size = size;
            node.target = Some(target);
            node
        }
        EntryType::Link => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| invalid("hard link without target".into()))?;
            let target = catalog::names::from_bytes(&target).into_owned();
            let target = normalize(&target).ok_or_else(|| invalid("link target escapes".into()))?;
            tree.get(&target)
                .filter(|n| n.kind != Kind::Dir)
                .cloned()
                .ok_or_else(|| {
                    invalid(format!("hard link to {target:?}, not earlier in the tar"))
                })?
        }
        EntryType::Char | EntryType::Block => {
            let major = entry.header().device_major().ok().flatten().unwrap_or(0);
            let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
            let k = if kind == EntryType::Char {
                Kind::Char
            } else {
                Kind::Block
            };
            let mut node = meta.apply(Node::new(k, 0));
            node.device = Some((major, minor));
            node
        }
        EntryType::Fifo => meta.apply(Node::new(Kind::Fifo, 0)),
        other => return Err(invalid(format!("unsupported entry type {other:?}"))),
    };
    ensure_dirs(tree, &parent, true);
    replace(tree, &path, node);
    Ok(())
}

/// Makes every component of `dir` a directory, implicit if it did not exist (a non-dir in
/// the way is replaced, as unpacking does).
fn ensure_dirs(tree: &mut Tree, dir: &str, implicit: bool) {
    if dir.is_empty() {
        return;
    }
    let mut path = String::new();
    for c in dir.split('/') {
        path = crate::fstree::child_path(&path, c);
        let existing = tree.get(&path).map(|n| n.kind);
        if existing != Some(Kind::Dir) {
            let mut node = Node::new(Kind::Dir, 0o755);
            node.implicit = implicit;
            if existing.is_some() {
                // Replaces a whiteout or a file of this layer: opaque, as above.
                node.xattrs.insert(OPAQUE_XATTR.to_owned(), b"y".to_vec());
            }
            replace(tree, &path, node);
        }
    }
}

/// Puts `node` at `path`, dropping whatever was there and below it.
fn replace(tree: &mut Tree, path: &str, node: Node) {
    let below = format!("{path}/");
    let doomed: Vec<String> = tree
        .range(below.clone()..)
        .take_while(|(k, _)| k.starts_with(&below))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        tree.remove(&k);
    }
    tree.insert(path.to_owned(), node);
}

/// Header and PAX metadata of one entry.
struct Meta {
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_ns: u32,
    xattrs: std::collections::BTreeMap<String, Vec<u8>>,
    sparse: Option<Sparse>,
}

/// A GNU PAX sparse file of format 1.0: its real name and size.
struct Sparse {
    name: String,
    size: u64,
}

/// The real content of a format-1.0 sparse entry whose stored data is `data`: decimal
/// numbers each ended by a newline (segment count, then offset and size of each), padded
/// to a 512-byte block, then the segments back to back.
fn expand_sparse_1_0(data: &[u8], size: u64) -> std::result::Result<Vec<u8>, String> {
    let mut numbers = Vec::new();
    let mut at = 0;
    loop {
        let end = data[at..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("sparse map without its numbers")?;
        let text = std::str::from_utf8(&data[at..at + end]).map_err(|_| "sparse map not text")?;
        numbers.push(
            text.parse::<u64>()
                .map_err(|_| format!("sparse map {text:?}"))?,
        );
        at += end + 1;
        if numbers.len() as u64 == 1 + 2 * numbers[0] {
            break;
        }
    }
    let mut stored = &data[at.div_ceil(512) * 512..];
    let mut content = vec![0u8; usize::try_from(size).map_err(|_| "sparse size")?];
    for pair in numbers[1..].chunks(2) {
        let (offset, len) = (pair[0] as usize, pair[1] as usize);
        let target = content
            .get_mut(offset..offset + len)
            .ok_or("sparse segment past the real size")?;
        if stored.len() < len {
            return Err("sparse data shorter than its map".into());
        }
        target.copy_from_slice(&stored[..len]);
        stored = &stored[len..];
    }
    Ok(content)
}

impl Meta {
    fn apply(self, mut node: Node) -> Node {
        node.mode = node.kind.type_bits() | self.perm;
        node.uid = self.uid;
        node.gid = self.gid;
        node.mtime = self.mtime;
        node.mtime_ns = self.mtime_ns;
        node.xattrs = self.xattrs;
        node
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> std::result::Result<Meta, String> {
    let h = entry.header();
    let perm = h.mode().map_err(|e| format!("mode: {e}"))? & 0o7777;
    let mut uid = h.uid().map_err(|e| format!("uid: {e}"))?;
    let mut gid = h.gid().map_err(|e| format!("gid: {e}"))?;
    let mut mtime = header_mtime(h)?;
    let mut mtime_ns = 0;
    let mut xattrs = std::collections::BTreeMap::new();
    let mut sparse: std::collections::BTreeMap<String, String> = Default::default();
    if let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| format!("PAX header: {e}"))?
    {
        for ext in pax {
            let ext = ext.map_err(|e| format!("PAX record: {e}"))?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value().ok();
            match key {
                "mtime" => {
                    (mtime, mtime_ns) = value
                        .and_then(pax_time)
                        .ok_or_else(|| format!("bad PAX mtime {value:?}"))?;
                }
                "uid" => {
                    uid = value
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| format!("bad PAX uid {value:?}"))?;
                }
                "gid" => {
                    gid = value
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| format!("bad PAX gid {value:?}"))?;
                }
                _ => {
                    if let Some(name) = key.strip_prefix(PAX_XATTR) {
                        xattrs.insert(name.to_owned(), ext.value_bytes().to_vec());
                    } else if let Some(field) = key.strip_prefix("GNU.sparse.") {
                        sparse.insert(field.to_owned(), value.unwrap_or_default().to_owned());
                    }
                }
            }
        }
    }
    // containerd's unpack (`archive.boundTime`): before 1970 or after Go's
    // `time.Unix(0, 0).Add(1<<63 - 1)` (2262-04-11T23:47:16.854775807Z) is the epoch.
    if mtime < 0 || (mtime, mtime_ns) > (9_223_372_036, 854_775_807) {
        (mtime, mtime_ns) = (0, 0);
    }
    Ok(Meta {
        perm,
        uid: u32::try_from(uid).map_err(|_| format!("uid {uid} out of range"))?,
        gid: u32::try_from(gid).map_err(|_| format!("gid {gid} out of range"))?,
        mtime,
        mtime_ns,
        xattrs,
        sparse: sparse_of(&sparse)?,
    })
}

/// The sparse file the `GNU.sparse.*` records describe, if any.
fn sparse_of(
    records: &std::collections::BTreeMap<String, String>,
) -> std::result::Result<Option<Sparse>, String> {
    if records.is_empty() {
        return Ok(None);
    }
    let field = |k: &str| records.get(k).map(String::as_str);
    if (field("major"), field("minor")) != (Some("1"), Some("0")) {
        return Err(format!("sparse format other than 1.0: {records:?}"));
    }
    let name = field("name").ok_or("sparse 1.0 without GNU.sparse.name")?;
    let size = field("realsize")
        .and_then(|v| v.parse().ok())
        .ok_or("sparse 1.0 without GNU.sparse.realsize")?;
    Ok(Some(Sparse {
        name: name.to_owned(),
        size,
    }))
}

/// The header's mtime: octal, or GNU base-256 (first byte `0x80` positive, `0xff`
/// negative, big-endian two's complement).
fn header_mtime(h: &tar::Header) -> std::result::Result<i64, String> {
    let raw = &h.as_old().mtime;
    if raw[0] & 0x80 != 0 {
        let mut v: i64 = if raw[0] & 0x40 != 0 { -1 } else { 0 };
        for (i, b) in raw.iter().enumerate() {
            let b = if i == 0 {
                *b & 0x7f | (*b & 0x40) << 1
            } else {
                *b
            };
            v = (v << 8) | i64::from(b);
        }
        return Ok(v);
    }
    let m = h.mtime().map_err(|e| format!("mtime: {e}"))?;
    i64::try_from(m).map_err(|_| format!("mtime {m} out of range"))
}

/// A PAX time `[-]SECS[.FRACTION]` as (seconds rounded towards minus infinity, ns).
pub fn pax_time(v: &str) -> Option<(i64, u32)> {
    let (negative, digits) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if !fraction.bytes().all(|b| b.is_ascii_digit()) || (whole.is_empty() && fraction.is_empty()) {
        return None;
    }
    let secs: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut padded: String = fraction.chars().take(9).collect();
    while padded.len() < 9 {
        padded.push('0');
    }
    let ns: u32 = padded.parse().ok()?;
    Some(match (negative, ns) {
        (false, ns) => (secs, ns),
        (true, 0) => (-secs, 0),
        (true, ns) => (-secs - 1, 1_000_000_000 - ns),
    })
}

#[cfg(test)]
mod tests {
    use tar::{Builder, Header};

    use super::*;

    fn header(kind: EntryType, mode: u32, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }

    #[test]
    fn pax_times_round_down() {
        assert_eq!(
            pax_time("1700000000.123456789"),
            Some((1_700_000_000, 123_456_789))
        );
        assert_eq!(pax_time("-1000000.25"), Some((-1_000_001, 750_000_000)));
        assert_eq!(pax_time("-5"), Some((-5, 0)));
        assert_eq!(pax_time("7.5"), Some((7, 500_000_000)));
        assert_eq!(pax_time("x"), None);
    }

    #[test]
    fn base256_mtimes_decode() {
        let mut h = header(EntryType::Regular, 0o644, 0);
        let mut raw = [0xffu8; 12];
        raw[4..].copy_from_slice(&(-86_400i64).to_be_bytes());
        h.as_old_mut().mtime = raw;
        assert_eq!(header_mtime(&h), Ok(-86_400));
        let mut raw = [0u8; 12];
        raw[0] = 0x80;
        raw[4..].copy_from_slice(&10_000_000_000i64.to_be_bytes());
        h.as_old_mut().mtime = raw;
        assert_eq!(header_mtime(&h), Ok(10_000_000_000));
    }

    #[test]
    fn a_directory_made_where_the_layer_had_a_whiteout_or_a_file_is_opaque() {
        let mut b = Builder::new(Vec::new());
        let mut add = |h: &mut Header, path: &str, data: &[u8]| {
            b.append_data(h, path, data).unwrap();
        };
        add(&mut header(EntryType::Regular, 0o644, 0), ".wh.w", b"");
        add(&mut header(EntryType::Regular, 0o644, 1), "w/n", b"n");
        add(&mut header(EntryType::Regular, 0o644, 1), "f", b"f");
        add(&mut header(EntryType::Directory, 0o755, 0), "f", b"");
        add(&mut header(EntryType::Directory, 0o755, 0), "plain", b"");
        add(&mut header(EntryType::Regular, 0o644, 1), "implied/x", b"x");
        let bytes = b.into_inner().unwrap();
        let tree = tar_tree(&bytes[..], "test").unwrap();
        let opaque = |p: &str| tree[p].xattrs.get(OPAQUE_XATTR).map(Vec::as_slice);
        assert_eq!(tree["w"].kind, Kind::Dir);
        assert_eq!(opaque("w"), Some(&b"y"[..]));
        assert_eq!(tree["f"].kind, Kind::Dir);
        assert_eq!(opaque("f"), Some(&b"y"[..]));
        assert_eq!(opaque("plain"), None);
        assert_eq!(opaque("implied"), None);
        assert!(tree.contains_key("w/n"));
    }

    #[test]
    fn whiteouts_links_replacements_and_implicit_parents() {
        let mut b = Builder::new(Vec::new());
        let mut add = |h: &mut Header, path: &str, data: &[u8]| {
            b.append_data(h, path, data).unwrap();
        };
        add(&mut header(EntryType::Directory, 0o750, 0), "d", b"");
        add(&mut header(EntryType::Regular, 0o644, 2), "d/f", b"hi");
        add(&mut header(EntryType::Regular, 0o644, 0), "d/.wh.gone", b"");
        add(
            &mut header(EntryType::Regular, 0o644, 0),
            "o/.wh..wh..opq",
            b"",
        );
        add(&mut header(EntryType::Directory, 0o700, 0), "o", b"");
        add(&mut header(EntryType::Regular, 0o600, 1), "x/deep/y", b"y");
        add(&mut header(EntryType::Regular, 0o644, 1), "x", b"x");
        let mut link = header(EntryType::Link, 0o644, 0);
        b.append_link(&mut link, "other", "d/f").unwrap();
        b.append_pax_extensions([("SCHILY.xattr.user.a", &b"1"[..]), ("mtime", b"-2.5")])
            .unwrap();
        let mut sym = header(EntryType::Symlink, 0o644, 0);
        b.append_link(&mut sym, "s", "d/f").unwrap();
        let bytes = b.into_inner().unwrap();

        let tree = tar_tree(&bytes[..], "test").unwrap();
        let keys: Vec<&str> = tree.keys().map(String::as_str).collect();
        assert_eq!(keys, ["", "d", "d/f", "d/gone", "o", "other", "s", "x"]);
        assert!(tree[""].implicit);
        assert_eq!(tree["d"].mode, libc::S_IFDIR | 0o750);
        let gone = &tree["d/gone"];
        assert_eq!(
            (gone.kind, gone.mode, gone.device),
            (Kind::Char, libc::S_IFCHR, Some((0, 0)))
        );
        assert_eq!(
            tree["o"].xattrs.get(OPAQUE_XATTR).map(Vec::as_slice),
            Some(&b"y"[..])
        );
        assert_eq!(tree["o"].mode, libc::S_IFDIR | 0o700);
        assert!(!tree["o"].implicit);
        assert_eq!(tree["other"], tree["d/f"]);
        let s = &tree["s"];
        assert_eq!(
            (s.mode, s.size, s.target.as_deref()),
            (libc::S_IFLNK | 0o777, 3, Some("d/f"))
        );
        // PAX mtime -2.5: before 1970, so the epoch (containerd's `archive.boundTime`).
        assert_eq!((s.mtime, s.mtime_ns), (0, 0));
        assert_eq!(s.xattrs.get("user.a").map(Vec::as_slice), Some(&b"1"[..]));
        assert_eq!(tree["x"].kind, Kind::File);
        assert_eq!(
            tree["d/f"].content.as_deref(),
            Some(hex::encode(Sha256::digest(b"hi")).as_str())
        );
    }
}
