//! The `fuser::Filesystem` adapter: each kernel request is answered by the concept's
//! module ([`super::lookup`], [`super::listing`], [`super::read`], [`super::xattr`]) and
//! its result turned into a reply (errors through [`super::errno`]); open file and
//! directory handles are kept here.
//!
//! **No-open mode.** When the kernel offers `FUSE_NO_OPEN_SUPPORT` (Linux ≥ 4.18) and
//! `FUSE_NO_OPENDIR_SUPPORT` (≥ 5.1), `open` and `opendir` answer `ENOSYS`: the kernel then
//! opens files and directories itself for the rest of the session, with `FOPEN_KEEP_CACHE`
//! (and `FOPEN_CACHE_DIR` for directories), and never sends `OPEN`, `RELEASE`, `OPENDIR` or
//! `RELEASEDIR` again; the first `FLUSH` answers `ENOSYS` too, so no `FLUSH` follows. Each
//! container start through overlayfs opens dozens of files, each an `OPEN` and a
//! `RELEASE` round trip otherwise. A `READ` or `READDIR` then names only the inode (see
//! [`super::read`], [`super::listing`]). Kernels without these capabilities get file and
//! directory handles as before, files opened with `FOPEN_NOFLUSH` (a read-only file has
//! nothing to write back on `close(2)`). A session with FUSE passthrough
//! ([`super::passthrough`]) keeps `OPEN` for files (directories still open without asking):
//! each open unchunked file is then read by the kernel from its cache file directly.

use std::ffi::OsStr;

use super::os_name;
use std::sync::Arc;

use catalog::EntryKind;
use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request,
};

use super::attr::negative_entry_attr;
use super::errno::report;
use super::page_fill;
use super::read::{OpenFile, require_regular};
use super::xattr::{reply_sized, xattr_names};
use super::{StrataFs, TTL, file_attr, lock};

/// Capabilities asked of the kernel at `INIT` beyond fuser's defaults.
const WANTED_CAPABILITIES: InitFlags = InitFlags::FUSE_CACHE_SYMLINKS
    .union(InitFlags::FUSE_DO_READDIRPLUS)
    .union(InitFlags::FUSE_READDIRPLUS_AUTO);

/// Open flags of regular files: keep the page cache across opens (a revision never
/// changes; a switch invalidates it) and skip `FLUSH` on close (nothing to write back).
const FILE_OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_NOFLUSH);

/// Open flags of directories: the kernel caches listings in the directory's page cache
/// (`FOPEN_CACHE_DIR`) and keeps them across opens, so a warm `readdir` sends no `READDIR`
/// (a switch's inode invalidation drops them).
const DIR_OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_CACHE_DIR);

impl Filesystem for StrataFs {
    /// Asks for `WANTED_CAPABILITIES`; a kernel without them just keeps asking (readlink
    /// per resolution), so that is logged, not fatal.
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let offered = config.capabilities();
        // The kernel's offer, for a successor that takes the connection over (the first
        // INIT only: a takeover replays this very offer).
        let max_readahead = match config.set_max_readahead(u32::MAX) {
            Err(kernel_max) => kernel_max,
            Ok(_) => u32::MAX,
        };
        let offer = super::handover::KernelInit {
            capabilities: offered.bits(),
            abi_minor: config.kernel_abi().1,
            max_readahead,
        };
        if self.shared.kernel_init.set(offer).is_ok()
            && let Some(journal) = self.shared.journal.get()
        {
            journal.append(&super::journal::Record::Init(offer));
        }
        self.no_open = offered.contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        self.no_opendir = offered.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        if self.allow_passthrough
            && offered.contains(InitFlags::FUSE_PASSTHROUGH)
            && config.set_max_stack_depth(1).is_ok()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
        {
            // Passthrough needs OPEN: no no-open mode for files.
            self.no_open = false;
            self.passthrough.enable();
            tracing::info!("FUSE passthrough: the kernel reads open files from the cache directly");
        }
        tracing::debug!(
            no_open = self.no_open,
            no_opendir = self.no_opendir,
            "kernel opens files / directories without asking"
        );
        if self.no_open && self.shared.trace.get().is_some() {
            tracing::warn!(
                "--trace without FUSE passthrough: the kernel opens files without asking, so \
                 a started chunked program is traced by the chunks its run touched, not whole \
                 (a node with passthrough then cannot fill the page cache with it)"
            );
        }
        if let Err(missing) = config.add_capabilities(WANTED_CAPABILITIES) {
            tracing::info!(
                ?missing,
                "kernel lacks FUSE capabilities; continuing without"
            );
            let _ = config.add_capabilities(WANTED_CAPABILITIES & !missing);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = match self.node(parent) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.lookup_child(&parent, name) {
            Ok(Some(node)) => reply.entry(&TTL, &file_attr(node.ino, &node.entry), Generation(0)),
            // Inode 0 with a TTL is a cached negative entry (FUSE protocol).
            Ok(None) => reply.entry(&TTL, &negative_entry_attr(&parent.entry), Generation(0)),
            Err(e) => reply.error(report("lookup", &parent.path, &e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        // fstat of an open file answers for the revision it was opened in.
        let opened = fh.and_then(|fh| lock(&self.files).get(&fh.0).map(|(n, _)| n.clone()));
        if let Some(node) = opened.filter(|n| n.ino == ino.0) {
            return reply.attr(&TTL, &file_attr(node.ino, &node.entry));
        }
        match self.node(ino) {
            Ok(node) => reply.attr(&TTL, &file_attr(node.ino, &node.entry)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino) {
            Ok(node) if node.entry.kind == EntryKind::Symlink => {
                reply.data(&catalog::names::to_bytes(&node.entry.symlink))
            }
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.no_open {
            // The kernel takes this as success and opens every file itself from now on.
            return reply.error(Errno::ENOSYS);
        }
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        if let Err(e) = require_regular(&node) {
            return reply.error(e);
        }
        match self.open_file(&node, true, req.pid()) {
            Ok(file) => {
                let fh = self.new_handle();
                if flags.0 & page_fill::FMODE_EXEC != 0 {
                    self.opened_for_exec(ino, &node, &file);
                }
                let backing = match &file {
                    OpenFile::Whole(pinned) if self.passthrough.is_on() => {
                        self.passthrough.backing(&reply, ino.0, fh, pinned)
                    }
                    _ => None,
                };
                self.files
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(fh, (node.clone(), Arc::new(file)));
                match backing {
                    // The kernel allows no page-cache flag with passthrough (the backing
                    // file's page cache serves).
                    Some(id) => {
                        reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &id)
                    }
                    None => reply.opened(FileHandle(fh), FILE_OPEN_FLAGS),
                }
            }
            Err(e) => reply.error(report("open", &node.path, &e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = self
            .files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&fh.0)
            .map(|(_, f)| f.clone());
        let file = match file {
            Some(file) => file,
            None if self.no_open => match self.file_of_inode(ino, offset == 0, req.pid()) {
                Ok(file) => Arc::new(file),
                Err(e) => return reply.error(e),
            },
            // A handle of the process this one took the connection over from: opened
            // again by inode, and kept under that handle until it is released.
            None if self.shared.adopted => {
                match (self.node(ino), self.file_of_inode(ino, false, req.pid())) {
                    (Ok(node), Ok(file)) => {
                        let file = Arc::new(file);
                        lock(&self.files).insert(fh.0, (node, file.clone()));
                        file
                    }
                    (Err(e), _) | (_, Err(e)) => return reply.error(e),
                }
            }
            None => return reply.error(Errno::EBADF),
        };
        match self.read_file(&file, offset, size, req.pid()) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(report("read", "", &e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&fh.0);
        self.passthrough.release(fh.0);
        reply.ok();
    }

    /// Nothing to write back on `close(2)` of a read-only file. In no-open mode (no
    /// `FOPEN_NOFLUSH` from an `OPEN`) this answers `ENOSYS`, and the kernel sends no
    /// `FLUSH` again; otherwise `ok`. (fuser's default answers `ENOSYS` with a warning.)
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if self.no_open {
            reply.error(Errno::ENOSYS);
        } else {
            reply.ok();
        }
    }

    /// No ioctls: `ENOTTY`, what a regular file answers (e.g. the `TCGETS` of `isatty(3)`,
    /// which every Python start issues). fuser's default logs a warning each time.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            // Success for the kernel, which opens directories itself from now on.
            return reply.error(Errno::ENOSYS);
        }
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.listing(&node) {
            Ok((items, _)) => {
                let fh = self.new_handle();
                self.dirs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(fh, Arc::new(items));
                reply.opened(FileHandle(fh), DIR_OPEN_FLAGS);
            }
            Err(e) => reply.error(report("opendir", &node.path, &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let items = match self.listing_for(ino, fh) {
            Ok(items) => items,
            Err(e) => return reply.error(e),
        };
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(item.ino),
                (i + 1) as u64,
                item.kind,
                os_name(&item.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    /// A listing with each entry's attributes: the kernel takes them as `LOOKUP` replies
    /// (the dentries and attributes of [`TTL`]), so that a `stat` or an `open` of a listed
    /// entry asks nothing more. `.` and `..` are not looked up by the kernel. An entry of
    /// an older revision (a handle opened before a switch) is handed with no TTL, so the
    /// kernel asks again; one whose node is gone is not handed at all (inode 0).
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let items = match self.listing_for(ino, fh) {
            Ok(items) => items,
            Err(e) => return reply.error(e),
        };
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            let (attr, ttl) = match self.node(INodeNo(item.ino)) {
                Ok(node) if self.inodes().is_current(&node) => {
                    (file_attr(node.ino, &node.entry), TTL)
                }
                Ok(node) => (file_attr(node.ino, &node.entry), std::time::Duration::ZERO),
                Err(_) => match self.node(ino) {
                    Ok(dir) => (negative_entry_attr(&dir.entry), std::time::Duration::ZERO),
                    Err(e) => return reply.error(e),
                },
            };
            if reply.add(
                INodeNo(item.ino),
                (i + 1) as u64,
                os_name(&item.name),
                &ttl,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let block = 4096u64;
        let totals = *lock(&self.shared.totals);
        reply.statfs(
            totals.bytes.div_ceil(block),
            0,
            0,
            totals.files,
            0,
            block as u32,
            255,
            block as u32,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if !self.xattrs {
            // The kernel answers EOPNOTSUPP itself from now on (plain twin).
            return reply.error(Errno::ENOSYS);
        }
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.xattr(&node, name) {
            Ok(Some(value)) => reply_sized(reply, size, &value),
            Ok(None) => reply.error(Errno::ENODATA),
            Err(e) => reply.error(report("getxattr", &node.path, &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        reply_sized(reply, size, &xattr_names(&node.entry));
    }
}
