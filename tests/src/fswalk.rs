//! Reading a directory tree from the file system into a [`Tree`]: the root filesystem
//! `umoci unpack` makes, or a subtree of the FUSE mount. Only `lstat`, `readlink`,
//! `llistxattr`/`lgetxattr` and `read` are used, so a FUSE mount is seen exactly as a
//! container would see it.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, Result, io_context};
use crate::fstree::{Kind, Node, Tree, child_path};

/// What one entry of a walk looked like beyond [`Node`]: its inode and link count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inode {
    /// `st_ino`
    pub ino: u64,
    /// `st_nlink`
    pub nlink: u64,
}

/// A walked tree and the inode of every path.
#[derive(Debug, Clone, Default)]
pub struct Walked {
    /// The tree (root = `""`).
    pub tree: Tree,
    /// `st_ino` and `st_nlink` per path.
    pub inodes: BTreeMap<String, Inode>,
}

/// Walks `root` (not following symlinks; the root itself must be a directory) and reads
/// every regular file completely.
///
/// Errors: any `lstat`, `readdir`, `readlink`, xattr call or read failing
/// ([`Error::Io`] naming the path).
pub fn walk(root: &Path) -> Result<Walked> {
    let mut walked = Walked::default();
    visit(root, "", &mut walked)?;
    Ok(walked)
}

fn visit(path: &Path, relative: &str, walked: &mut Walked) -> Result<()> {
    let (node, inode) = read_node(path)?;
    let is_dir = node.kind == Kind::Dir;
    walked.tree.insert(relative.to_owned(), node);
    walked.inodes.insert(relative.to_owned(), inode);
    if !is_dir {
        return Ok(());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_context(format!("list {}", path.display())))? {
        let entry = entry.map_err(io_context(format!("list {}", path.display())))?;
        // A name that is not UTF-8 is keyed as Strata writes it (catalog::names).
        let raw = entry.file_name();
        let name = catalog::names::from_bytes(raw.as_bytes()).into_owned();
        names.push((name, raw));
    }
    names.sort();
    for (name, raw) in names {
        visit(&path.join(&raw), &child_path(relative, &name), walked)?;
    }
    Ok(())
}

/// The [`Node`] and [`Inode`] of one path (not following a final symlink).
///
/// Errors: as [`walk`].
pub fn read_node(path: &Path) -> Result<(Node, Inode)> {
    let meta =
        std::fs::symlink_metadata(path).map_err(io_context(format!("lstat {}", path.display())))?;
    let kind = Kind::from_mode(meta.mode()).ok_or_else(|| {
        Error::Invalid(format!(
            "{}: unknown file type {:o}",
            path.display(),
            meta.mode()
        ))
    })?;
    let mut node = Node::new(kind, meta.mode());
    node.mode = meta.mode();
    node.uid = meta.uid();
    node.gid = meta.gid();
    node.mtime = meta.mtime();
    node.mtime_ns = u32::try_from(meta.mtime_nsec()).unwrap_or(0);
    node.size = meta.size();
    node.xattrs = xattrs(path)?;
    match kind {
        Kind::Symlink => {
            let target = std::fs::read_link(path)
                .map_err(io_context(format!("readlink {}", path.display())))?;
            node.target =
                Some(catalog::names::from_bytes(target.as_os_str().as_bytes()).into_owned());
        }
        Kind::Char | Kind::Block => {
            node.device = Some((libc::major(meta.rdev()), libc::minor(meta.rdev())));
        }
        Kind::File => node.content = Some(file_sha256(path)?),
        _ => {}
    }
    let inode = Inode {
        ino: meta.ino(),
        nlink: meta.nlink(),
    };
    Ok((node, inode))
}

/// Lowercase hex SHA-256 of a file's content, read to the end.
///
/// Errors: open or read failing ([`Error::Io`]).
pub fn file_sha256(path: &Path) -> Result<String> {
    let (digest, _) = crate::image::sha256_file(path)?;
    Ok(digest["sha256:".len()..].to_owned())
}

/// Every extended attribute of `path` (not following a final symlink): `llistxattr` then
/// `lgetxattr` of each name (the `xattr` crate's non-dereferencing calls).
///
/// Errors: a call failing other than with `ENOTSUP` (no xattrs at all) ([`Error::Io`]).
pub fn xattrs(path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let unsupported = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOTSUP);
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if unsupported(&e) => return Ok(BTreeMap::new()),
        Err(e) => return Err(io_context(format!("llistxattr {}", path.display()))(e)),
    };
    let mut out = BTreeMap::new();
    for name in names {
        let text = name.to_string_lossy().into_owned();
        let value = xattr::get(path, &name)
            .map_err(io_context(format!("lgetxattr {text} {}", path.display())))?;
        out.insert(text, value.unwrap_or_default());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn walks_files_links_fifos_and_xattrs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), b"hello").unwrap();
        std::fs::hard_link(root.join("d/f"), root.join("d/g")).unwrap();
        symlink("d/f", root.join("l")).unwrap();
        nix::unistd::mkfifo(
            &root.join("p"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        xattr::set(root.join("d/f"), "user.strata", b"v1").unwrap();

        let walked = walk(root).unwrap();
        let keys: Vec<&str> = walked.tree.keys().map(String::as_str).collect();
        assert_eq!(keys, ["", "d", "d/f", "d/g", "l", "p"]);
        let f = &walked.tree["d/f"];
        assert_eq!(f.kind, Kind::File);
        assert_eq!(f.size, 5);
        assert_eq!(
            f.content.as_deref(),
            Some(hex::encode(Sha256::digest(b"hello")).as_str())
        );
        assert_eq!(
            f.xattrs.get("user.strata").map(Vec::as_slice),
            Some(&b"v1"[..])
        );
        assert_eq!(
            walked.tree["d/g"].xattrs, f.xattrs,
            "a hard link shares xattrs"
        );
        assert_eq!(walked.inodes["d/f"].ino, walked.inodes["d/g"].ino);
        assert_eq!(walked.inodes["d/f"].nlink, 2);
        assert_eq!(walked.tree["l"].target.as_deref(), Some("d/f"));
        assert_eq!(walked.tree["l"].size, 3);
        assert_eq!(walked.tree["p"].kind, Kind::Fifo);
        assert_eq!(walked.tree["p"].mode, libc::S_IFIFO | 0o600);
    }
}
