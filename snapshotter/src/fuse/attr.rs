//! Catalog entry → `struct stat` as FUSE wants it (docs/format.md §6.7 "Client → struct stat").
//!
//! Mode, uid and gid are reported exactly as stored (no `CVMFS_CLAIM_OWNERSHIP`): container
//! layers must keep their owners. Char and block devices report their device number, so a
//! whiteout (char 0:0) looks like one to overlayfs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use catalog::{Entry, EntryKind};
use fuser::{FileAttr, FileType, INodeNo};

/// `st_blksize` reported for every entry.
const BLOCK_SIZE: u32 = 4096;

/// The FUSE file type of `entry`, from the type bits of its mode (the stock client decides
/// by mode, docs/format.md §6.6), falling back to its kind.
pub fn file_type(entry: &Entry) -> FileType {
    match EntryKind::from_mode(entry.mode).unwrap_or(entry.kind) {
        EntryKind::Directory => FileType::Directory,
        EntryKind::Regular => FileType::RegularFile,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::CharDevice => FileType::CharDevice,
        EntryKind::BlockDevice => FileType::BlockDevice,
        EntryKind::Fifo => FileType::NamedPipe,
        EntryKind::Socket => FileType::Socket,
    }
}

/// A negative entry for a name in directory `parent`: inode 0 (FUSE protocol: the kernel
/// caches that the name does not exist), with the directory's other attributes.
pub fn negative_entry_attr(parent: &Entry) -> FileAttr {
    let mut attr = file_attr(0, parent);
    attr.ino = fuser::INodeNo(0);
    attr
}

/// The attributes of `entry` under inode `ino`.
pub fn file_attr(ino: u64, entry: &Entry) -> FileAttr {
    let kind = file_type(entry);
    let size = match kind {
        FileType::Symlink => catalog::names::to_bytes(&entry.symlink).len() as u64,
        FileType::CharDevice | FileType::BlockDevice => 0,
        _ => entry.size,
    };
    let rdev = match kind {
        FileType::CharDevice | FileType::BlockDevice => fuse_rdev(entry.rdev),
        _ => 0,
    };
    let time = mtime(entry);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind,
        perm: (entry.mode & 0o7777) as u16,
        nlink: entry.linkcount.max(1),
        uid: entry.uid,
        gid: entry.gid,
        rdev,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// `mtime` plus `mtime_ns` as a `SystemTime` (negative seconds count back from the epoch).
fn mtime(entry: &Entry) -> SystemTime {
    let ns = Duration::from_nanos(u64::from(entry.mtime_ns.unwrap_or(0).min(999_999_999)));
    if entry.mtime >= 0 {
        UNIX_EPOCH + Duration::from_secs(entry.mtime as u64) + ns
    } else {
        UNIX_EPOCH - Duration::from_secs(entry.mtime.unsigned_abs()) + ns
    }
}

/// Converts a glibc `makedev` device number (as catalogs store it, docs/format.md §6.7) into the
/// 32-bit encoding the FUSE protocol carries (the kernel's `new_encode_dev`:
/// `minor & 0xff | major << 8 | (minor & !0xff) << 12`).
pub fn fuse_rdev(glibc: u64) -> u32 {
    let major = ((glibc >> 8) & 0xfff) | ((glibc >> 32) & 0xffff_f000);
    let minor = (glibc & 0xff) | ((glibc >> 12) & 0xffff_ff00);
    ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_convert_from_glibc_to_kernel_encoding() {
        assert_eq!(fuse_rdev(0), 0);
        // makedev(1, 3) = /dev/null
        assert_eq!(fuse_rdev(libc::makedev(1, 3)), 0x103);
        // A large minor spills above bit 20 in both encodings.
        let glibc = libc::makedev(8, 0x12345);
        let kernel = fuse_rdev(glibc);
        assert_eq!(kernel & 0xff, 0x45);
        assert_eq!((kernel >> 8) & 0xfff, 8);
        assert_eq!(kernel >> 20, 0x123);
    }

    #[test]
    fn whiteout_is_char_device_zero() {
        let e = Entry::special("gone", EntryKind::CharDevice, 0, 0, 0, 0, 5);
        let a = file_attr(9, &e);
        assert_eq!(a.kind, FileType::CharDevice);
        assert_eq!(a.rdev, 0);
        assert_eq!(a.size, 0);
        assert_eq!(a.perm, 0);
    }

    #[test]
    fn attributes_are_reported_as_stored() {
        let mut e = Entry::symlink("l", "../target", 1000, 100, 1_700_000_000);
        e.mtime_ns = Some(5);
        let a = file_attr(3, &e);
        assert_eq!(a.kind, FileType::Symlink);
        assert_eq!(a.size, 9);
        assert_eq!((a.uid, a.gid, a.perm), (1000, 100, 0o777));
        assert_eq!(
            a.mtime,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_nanos(5)
        );
        let d = Entry::directory("d", 0o1777, 0, 0, -10);
        let a = file_attr(4, &d);
        assert_eq!(a.perm, 0o1777);
        assert_eq!(a.nlink, 2);
        assert_eq!(a.mtime, UNIX_EPOCH - Duration::from_secs(10));
    }
}
