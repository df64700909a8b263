//! One catalog row: a directory, file, symlink or special file (docs/format.md §6.6–§6.8).

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::hash::ContentHash;
use crate::writer::Transition;

/// `kFlagDir`: directory (docs/format.md §6.6).
pub const FLAG_DIR: u32 = 1;
/// `kFlagDirNestedMountpoint`: nested-catalog mountpoint, the copy in the parent.
pub const FLAG_NESTED_MOUNTPOINT: u32 = 2;
/// `kFlagFile`: any non-directory.
pub const FLAG_FILE: u32 = 4;
/// `kFlagLink`: symbolic link (with [`FLAG_FILE`]).
pub const FLAG_LINK: u32 = 8;
/// `kFlagFileSpecial`: FIFO, socket, char or block device (with [`FLAG_FILE`]).
pub const FLAG_SPECIAL: u32 = 16;
/// `kFlagDirNestedRoot`: root directory of a nested catalog, the copy in the child.
pub const FLAG_NESTED_ROOT: u32 = 32;
/// `kFlagFileChunk`: regular file stored in chunks.
pub const FLAG_CHUNKED: u32 = 64;
/// `kFlagFileExternal`: data lives outside `data/`.
pub const FLAG_EXTERNAL: u32 = 128;
/// Bits 8–10: hash algorithm code (`algorithm id - 1`).
pub const FLAG_HASH_MASK: u32 = 0x700;
/// Bits 11–13: compression code (0 zlib, 1 none).
pub const FLAG_COMPRESSION_MASK: u32 = 0x3800;
/// `kFlagDirBindMountpoint`.
pub const FLAG_BIND_MOUNTPOINT: u32 = 0x4000;
/// `kFlagHidden`: omitted from listings, lookup still works.
pub const FLAG_HIDDEN: u32 = 0x8000;
/// `kFlagDirectIo`.
pub const FLAG_DIRECT_IO: u32 = 0x10000;

/// `S_IFMT` and the file type bits of `st_mode` (Linux values).
pub const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;

/// File type of an entry; must agree with the type bits of [`Entry::mode`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum EntryKind {
    /// `S_IFDIR`.
    Directory,
    /// `S_IFREG`.
    Regular,
    /// `S_IFLNK`.
    Symlink,
    /// `S_IFCHR`; the device number lives in [`Entry::rdev`].
    CharDevice,
    /// `S_IFBLK`; the device number lives in [`Entry::rdev`].
    BlockDevice,
    /// `S_IFIFO`.
    Fifo,
    /// `S_IFSOCK`.
    Socket,
}

impl EntryKind {
    /// The `S_IFMT` bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            EntryKind::Directory => S_IFDIR,
            EntryKind::Regular => S_IFREG,
            EntryKind::Symlink => S_IFLNK,
            EntryKind::CharDevice => S_IFCHR,
            EntryKind::BlockDevice => S_IFBLK,
            EntryKind::Fifo => S_IFIFO,
            EntryKind::Socket => S_IFSOCK,
        }
    }

    /// The kind named by the `S_IFMT` bits of `mode`; `None` for an unknown type.
    pub fn from_mode(mode: u32) -> Option<EntryKind> {
        match mode & S_IFMT {
            S_IFDIR => Some(EntryKind::Directory),
            S_IFREG => Some(EntryKind::Regular),
            S_IFLNK => Some(EntryKind::Symlink),
            S_IFCHR => Some(EntryKind::CharDevice),
            S_IFBLK => Some(EntryKind::BlockDevice),
            S_IFIFO => Some(EntryKind::Fifo),
            S_IFSOCK => Some(EntryKind::Socket),
            _ => None,
        }
    }

    /// FIFO, socket or device: counted as "special" (docs/format.md §6.13).
    pub fn is_special(self) -> bool {
        matches!(
            self,
            EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo | EntryKind::Socket
        )
    }

    /// Char or block device: `rdev` is stored in the `size` column (docs/format.md §6.7).
    pub fn is_device(self) -> bool {
        matches!(self, EntryKind::CharDevice | EntryKind::BlockDevice)
    }
}

/// One chunk of a chunked regular file (docs/format.md §6.11): uncompressed `offset` and `size` in
/// bytes, `hash` of the stored chunk object (suffix `P`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Chunk {
    /// Uncompressed start offset in bytes.
    pub offset: u64,
    /// Uncompressed length in bytes.
    pub size: u64,
    /// Hash of the stored chunk object.
    pub hash: ContentHash,
}

/// One catalog row (docs/format.md §6.3, §6.7).
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Entry {
    /// Last path component; `""` for the repository root.
    pub name: String,
    /// File type; must agree with `mode`.
    pub kind: EntryKind,
    /// Full `st_mode` including type bits (`S_IFREG | 0o644`, …).
    pub mode: u32,
    /// Regular: uncompressed bytes; symlink: target length; directory: 4096; device: 0.
    pub size: u64,
    /// Device number of char/block devices (glibc `makedev`); stored in the `size` column.
    pub rdev: u64,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanosecond part of the mtime (0..1e9), or `None` (stored as NULL).
    pub mtime_ns: Option<u32>,
    /// Hash of the stored object for unchunked regular files; `None` otherwise.
    pub hash: Option<ContentHash>,
    /// Regular files: the object is zlib (true) or stored raw (false).
    pub compressed: bool,
    /// Symlink target; `""` otherwise.
    pub symlink: String,
    /// Directories: 2 + subdirectories; files: 1 or the hard-link group size.
    pub linkcount: u32,
    /// Hard-link group id within the catalog; 0 = none (docs/format.md §6.8).
    pub hardlink_group: u32,
    /// Extended attributes (docs/format.md §6.9); empty = NULL column.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Chunks of a chunked file (writer input only; the reader leaves it empty, use
    /// `CatalogReader::chunks`).
    pub chunks: Vec<Chunk>,
    /// Catalog flags (docs/format.md §6.6). Filled by the reader. The writer computes them itself and
    /// only takes [`FLAG_HIDDEN`] and [`FLAG_DIRECT_IO`] from here.
    pub flags: u32,
    /// SQLite rowid of the row; filled by the reader only.
    pub rowid: i64,
}

impl Entry {
    fn base(name: &str, kind: EntryKind, mode_perm: u32, uid: u32, gid: u32, mtime: i64) -> Entry {
        Entry {
            name: name.to_string(),
            kind,
            mode: kind.type_bits() | (mode_perm & 0o7777),
            size: 0,
            rdev: 0,
            uid,
            gid,
            mtime,
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

    /// A directory: size 4096, linkcount 2 (add 1 per subdirectory yourself).
    pub fn directory(name: &str, mode_perm: u32, uid: u32, gid: u32, mtime: i64) -> Entry {
        let mut e = Entry::base(name, EntryKind::Directory, mode_perm, uid, gid, mtime);
        e.size = 4096;
        e.linkcount = 2;
        e
    }

    /// An unchunked, zlib-compressed regular file of `size` uncompressed bytes whose stored
    /// object hashes to `hash`.
    pub fn regular(
        name: &str,
        mode_perm: u32,
        uid: u32,
        gid: u32,
        mtime: i64,
        size: u64,
        hash: ContentHash,
    ) -> Entry {
        let mut e = Entry::base(name, EntryKind::Regular, mode_perm, uid, gid, mtime);
        e.size = size;
        e.hash = Some(hash);
        e
    }

    /// A symbolic link, mode `0o120777`, size = target length in bytes (of the bytes the
    /// target stands for, [`crate::names`]).
    pub fn symlink(name: &str, target: &str, uid: u32, gid: u32, mtime: i64) -> Entry {
        let mut e = Entry::base(name, EntryKind::Symlink, 0o777, uid, gid, mtime);
        e.size = crate::names::to_bytes(target).len() as u64;
        e.symlink = target.to_string();
        e
    }

    /// A FIFO, socket or device (`kind` must be special); `rdev` is used for devices only.
    pub fn special(
        name: &str,
        kind: EntryKind,
        mode_perm: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
        mtime: i64,
    ) -> Entry {
        let mut e = Entry::base(name, kind, mode_perm, uid, gid, mtime);
        if kind.is_device() {
            e.rdev = rdev;
        }
        e
    }

    /// Flag 2: the parent catalog's copy of a nested-catalog mountpoint.
    pub fn is_nested_mountpoint(&self) -> bool {
        self.flags & FLAG_NESTED_MOUNTPOINT != 0
    }

    /// Flag 32: the child catalog's copy of its own root directory.
    pub fn is_nested_root(&self) -> bool {
        self.flags & FLAG_NESTED_ROOT != 0
    }

    /// Flag 0x8000: omitted from directory listings.
    pub fn is_hidden(&self) -> bool {
        self.flags & FLAG_HIDDEN != 0
    }

    /// Flag 64: data is in the `chunks` table (reader), or `chunks` is non-empty (writer
    /// input).
    pub fn is_chunked(&self) -> bool {
        self.flags & FLAG_CHUNKED != 0 || !self.chunks.is_empty()
    }

    /// The packed `hardlinks` column: `(group << 32) | linkcount` (docs/format.md §6.8).
    pub fn hardlinks(&self) -> i64 {
        ((u64::from(self.hardlink_group) << 32) | u64::from(self.linkcount)) as i64
    }

    /// The value of the `size` column: `rdev` for devices, `size` otherwise (docs/format.md §6.7).
    pub fn size_column(&self) -> u64 {
        if self.kind.is_device() {
            self.rdev
        } else {
            self.size
        }
    }

    /// Composes the `flags` column as the stock writer does (docs/format.md §6.6): transition bits,
    /// then type bits, then hash-algorithm bits (if there is a hash or chunks), then hidden.
    pub fn compose_flags(&self, transition: Transition) -> u32 {
        let mut flags = match transition {
            Transition::None => 0,
            Transition::NestedMountpoint => FLAG_NESTED_MOUNTPOINT,
            Transition::NestedRoot => FLAG_NESTED_ROOT,
        };
        flags |= match self.kind {
            EntryKind::Directory => FLAG_DIR,
            EntryKind::Symlink => FLAG_FILE | FLAG_LINK,
            k if k.is_special() => FLAG_FILE | FLAG_SPECIAL,
            _ => {
                let mut f = FLAG_FILE | (self.flags & FLAG_DIRECT_IO);
                if !self.compressed {
                    f |= 1 << 11;
                }
                if !self.chunks.is_empty() {
                    f |= FLAG_CHUNKED;
                }
                f
            }
        };
        let algorithm = self
            .hash
            .map(|h| h.algorithm)
            .or_else(|| self.chunks.first().map(|c| c.hash.algorithm));
        if self.kind == EntryKind::Regular
            && let Some(a) = algorithm
        {
            flags |= a.flag_code() << 8;
        }
        flags | (self.flags & FLAG_HIDDEN)
    }

    /// Checks the invariants the writer relies on; `path` is used in the error only.
    ///
    /// Errors with [`Error::InvalidEntry`] when kind and mode disagree, a non-regular entry
    /// has a hash or chunks, a regular file has neither a hash nor chunks, chunks do not tile
    /// the file (docs/format.md §6.11), a symlink has no target, a non-symlink has one, the name
    /// contains `/` or NUL, or linkcount is 0.
    pub fn validate(&self, path: &str) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::InvalidEntry {
                path: path.to_string(),
                reason,
            })
        };
        if EntryKind::from_mode(self.mode) != Some(self.kind) {
            return bad(format!(
                "mode {:o} does not match kind {:?}",
                self.mode, self.kind
            ));
        }
        if self.name.contains('/') || self.name.contains('\0') {
            return bad(format!("name {:?} contains '/' or NUL", self.name));
        }
        if self.linkcount == 0 {
            return bad("linkcount is 0".into());
        }
        if let Some(ns) = self.mtime_ns
            && ns >= 1_000_000_000
        {
            return bad(format!("mtime_ns {ns} out of range"));
        }
        if self.kind == EntryKind::Regular {
            if self.hash.is_none() && self.chunks.is_empty() {
                return bad("regular file without hash or chunks".into());
            }
            let mut next = 0u64;
            for c in &self.chunks {
                if c.offset != next || c.size == 0 {
                    return bad(format!(
                        "chunk at offset {} does not tile the file",
                        c.offset
                    ));
                }
                if let Some(first) = self.chunks.first()
                    && c.hash.algorithm != first.hash.algorithm
                {
                    return bad("chunks use different hash algorithms".into());
                }
                next += c.size;
            }
            if !self.chunks.is_empty() && next != self.size {
                return bad(format!("chunks cover {next} bytes, size is {}", self.size));
            }
        } else if self.hash.is_some() || !self.chunks.is_empty() {
            return bad(format!("{:?} entry with a hash or chunks", self.kind));
        }
        if self.kind == EntryKind::Symlink {
            if self.symlink.is_empty() {
                return bad("symlink without target".into());
            }
        } else if !self.symlink.is_empty() {
            return bad("symlink target on a non-symlink".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashAlgorithm;

    fn sha1() -> ContentHash {
        ContentHash::parse_hex("5798f7f4ca7585d850eea64610a1f73d8f8de7a3").unwrap()
    }

    #[test]
    fn flags_table_spec_11_4() {
        let file = Entry::regular("f", 0o644, 0, 0, 0, 6, sha1());
        assert_eq!(file.compose_flags(Transition::None), 4);
        assert_eq!(file.mode, 33188);
        let mut raw = file.clone();
        raw.compressed = false;
        assert_eq!(raw.compose_flags(Transition::None), 2052);
        let mut rmd = file.clone();
        rmd.hash = Some(ContentHash {
            algorithm: HashAlgorithm::Rmd160,
            ..sha1()
        });
        assert_eq!(rmd.compose_flags(Transition::None), 260);
        let mut shake = file.clone();
        shake.hash = Some(ContentHash {
            algorithm: HashAlgorithm::Shake128,
            ..sha1()
        });
        assert_eq!(shake.compose_flags(Transition::None), 516);
        let mut chunked = file.clone();
        chunked.hash = None;
        chunked.chunks = vec![Chunk {
            offset: 0,
            size: 6,
            hash: sha1(),
        }];
        assert_eq!(chunked.compose_flags(Transition::None), 68);
        let dir = Entry::directory("d", 0o755, 0, 0, 0);
        assert_eq!(dir.compose_flags(Transition::None), 1);
        assert_eq!(dir.mode, 16877);
        assert_eq!(dir.compose_flags(Transition::NestedMountpoint), 3);
        assert_eq!(dir.compose_flags(Transition::NestedRoot), 33);
        let link = Entry::symlink("l", "target", 0, 0, 0);
        assert_eq!(link.compose_flags(Transition::None), 12);
        assert_eq!(link.mode, 41471);
        for kind in [
            EntryKind::Fifo,
            EntryKind::Socket,
            EntryKind::CharDevice,
            EntryKind::BlockDevice,
        ] {
            let s = Entry::special("s", kind, 0o600, 0x0103, 0, 0, 0);
            assert_eq!(s.compose_flags(Transition::None), 20);
            s.validate("/s").unwrap();
        }
        let mut hidden = dir.clone();
        hidden.flags = FLAG_HIDDEN;
        assert_eq!(hidden.compose_flags(Transition::None), 32769);
        let mut dio = file.clone();
        dio.flags = FLAG_DIRECT_IO;
        assert_eq!(dio.compose_flags(Transition::None), 65540);
    }

    #[test]
    fn packed_values() {
        let mut f = Entry::regular("f", 0o644, 0, 0, 0, 6, sha1());
        assert_eq!(f.hardlinks(), 1);
        f.hardlink_group = 3;
        f.linkcount = 2;
        assert_eq!(f.hardlinks(), 12884901890);
        assert_eq!(Entry::directory("d", 0o755, 0, 0, 0).hardlinks(), 2);
        let dev = Entry::special("null", EntryKind::CharDevice, 0o666, 0x0103, 0, 0, 0);
        assert_eq!(dev.size, 0);
        assert_eq!(dev.size_column(), 0x0103);
    }

    #[test]
    fn validation() {
        let mut f = Entry::regular("f", 0o644, 0, 0, 0, 6, sha1());
        f.validate("/f").unwrap();
        f.mode = 0o40644;
        assert!(f.validate("/f").is_err());
        let mut f = Entry::regular("f", 0o644, 0, 0, 0, 10, sha1());
        f.hash = None;
        assert!(f.validate("/f").is_err());
        f.chunks = vec![
            Chunk {
                offset: 0,
                size: 4,
                hash: sha1(),
            },
            Chunk {
                offset: 4,
                size: 6,
                hash: sha1(),
            },
        ];
        f.validate("/f").unwrap();
        f.chunks[1].offset = 5;
        assert!(f.validate("/f").is_err());
        let mut d = Entry::directory("d", 0o755, 0, 0, 0);
        d.hash = Some(sha1());
        assert!(d.validate("/d").is_err());
        let mut l = Entry::symlink("l", "x", 0, 0, 0);
        l.symlink.clear();
        assert!(l.validate("/l").is_err());
        let bad_name = Entry::directory("a/b", 0o755, 0, 0, 0);
        assert!(bad_name.validate("/a/b").is_err());
    }

    #[test]
    fn kinds_from_mode() {
        for kind in [
            EntryKind::Directory,
            EntryKind::Regular,
            EntryKind::Symlink,
            EntryKind::CharDevice,
            EntryKind::BlockDevice,
            EntryKind::Fifo,
            EntryKind::Socket,
        ] {
            assert_eq!(EntryKind::from_mode(kind.type_bits() | 0o644), Some(kind));
        }
        assert_eq!(EntryKind::from_mode(0o644), None);
    }
}
