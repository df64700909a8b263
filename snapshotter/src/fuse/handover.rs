//! Taking over a live FUSE connection: a new mount process serves the `/dev/fuse`
//! descriptor a previous one served, so that the mount — and every container whose overlay
//! lowerdirs point into it — survives a crash, a `kill -9` or an upgrade of the process.
//!
//! The descriptor must outlive the process that serves it (something else holds a copy:
//! a keeper process, or systemd's file-descriptor store). Two facts of the kernel make the
//! rest work:
//!
//! * **The connection is initialised once.** The kernel sends `FUSE_INIT` only when the
//!   file system is mounted; a new server never sees it again, yet `fuser` starts every
//!   session with that handshake. [`take_over`] therefore hands `fuser` one end of a
//!   `SOCK_SEQPACKET` socket pair (one message per read, as `/dev/fuse` gives requests),
//!   writes a synthetic `FUSE_INIT` into it carrying the capabilities the kernel offered
//!   at the real one ([`KernelInit`], saved by the first server), discards the reply, and
//!   then `dup3`s the real descriptor over the session's: from then on the session reads
//!   the kernel's requests. The file system's own `init` runs with the kernel's real
//!   offer, so it chooses the same modes (no-open, passthrough) the kernel agreed to.
//! * **Requests in flight are kept.** Requests the dead server had read but not answered
//!   stay on the connection's processing queue as long as a descriptor of the same
//!   `/dev/fuse` open file lives (cloned descriptors, `FUSE_DEV_IOC_CLONE`, are separate
//!   devices whose requests end with `ECONNABORTED` when they close: a session that may be
//!   taken over must not clone). `FUSE_NOTIFY_RESEND` (Linux ≥ 6.9, [`resend_in_flight`])
//!   moves them back to the pending queue, so the new server answers them; on older
//!   kernels they are never answered and the caller blocks.
//!
//! The rest of the state a successor needs (the revision, the inode numbers) is in the
//! handover journal ([`super::journal`]); who keeps the descriptors is
//! [`crate::keeper`]'s concern; `strata-snapshotter mount` puts it together.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use fuser::{Config, Filesystem, Session, SessionACL};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

/// `FUSE_INIT`'s opcode.
const FUSE_INIT: u32 = 26;
/// The notification code of `FUSE_NOTIFY_RESEND` (Linux 6.9).
const FUSE_NOTIFY_RESEND: i32 = 7;
/// `FUSE_INIT_EXT`: `fuse_init_in.flags2` holds the capability bits 32–63.
const FUSE_INIT_EXT: u64 = 1 << 30;
/// `sizeof(struct fuse_in_header)`.
const IN_HEADER: usize = 40;
/// `sizeof(struct fuse_init_in)` since ABI 7.36.
const INIT_IN: usize = 64;

/// What the kernel offered at the connection's one real `FUSE_INIT`, which a successor
/// replays to its own file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelInit {
    /// The capability bits the kernel offered (`fuse_init_in.flags | flags2 << 32`).
    pub capabilities: u64,
    /// The kernel's ABI minor version (major is 7).
    pub abi_minor: u32,
    /// The kernel's maximum read-ahead, bytes.
    pub max_readahead: u32,
}

impl KernelInit {
    /// The `FUSE_INIT` request (header and `fuse_init_in`, native byte order) the kernel
    /// would send with this offer.
    pub fn request(&self) -> Vec<u8> {
        let mut msg = Vec::with_capacity(IN_HEADER + INIT_IN);
        let len = u32::try_from(IN_HEADER + INIT_IN).unwrap_or(u32::MAX);
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&FUSE_INIT.to_ne_bytes());
        msg.extend_from_slice(&1u64.to_ne_bytes()); // unique
        msg.extend_from_slice(&0u64.to_ne_bytes()); // nodeid
        msg.extend_from_slice(&[0u8; 12]); // uid, gid, pid
        msg.extend_from_slice(&[0u8; 4]); // total_extlen, padding
        let flags = self.capabilities | FUSE_INIT_EXT;
        msg.extend_from_slice(&7u32.to_ne_bytes());
        msg.extend_from_slice(&self.abi_minor.to_ne_bytes());
        msg.extend_from_slice(&self.max_readahead.to_ne_bytes());
        msg.extend_from_slice(&((flags & 0xffff_ffff) as u32).to_ne_bytes());
        msg.extend_from_slice(&((flags >> 32) as u32).to_ne_bytes());
        msg.resize(IN_HEADER + INIT_IN, 0); // unused[11]
        msg
    }
}

/// A `fuser` session of `fs` serving the already-initialised connection `fuse` (see the
/// module docs). `config` must not ask for cloned descriptors.
///
/// # Errors
/// The socket pair, the synthetic handshake (including an error the file system's `init`
/// returns) or the `dup2` failing.
#[allow(unsafe_code)] // dup3 onto a descriptor the session owns; see the SAFETY note
pub fn take_over<FS: Filesystem>(
    fs: FS,
    fuse: &OwnedFd,
    init: &KernelInit,
    acl: SessionACL,
    config: Config,
) -> std::io::Result<Session<FS>> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    nix::unistd::write(&ours, &init.request())?;
    let session = Session::from_fd(fs, theirs, acl, config)?;
    let mut reply = [0u8; 512];
    nix::unistd::read(&ours, &mut reply)?;
    // The session now reads the kernel's requests: dup3 replaces the socket behind its
    // descriptor number with the connection, close-on-exec (an upgrade in place passes on
    // only the descriptors it names, `crate::keeper::reexec`).
    let target = session.as_fd().as_raw_fd();
    // SAFETY: `target` is the session's own descriptor, which the session keeps open for
    // its whole life; replacing the open file behind that number is the point (the
    // session then reads the kernel's requests). The returned descriptor is that same
    // number, still owned by the session: it is forgotten, not closed.
    let replaced =
        unsafe { nix::unistd::dup3_raw(fuse.as_fd(), target, nix::fcntl::OFlag::O_CLOEXEC) }?;
    std::mem::forget(replaced);
    Ok(session)
}

/// Asks the kernel to send again every request the connection's previous server read but
/// did not answer (`FUSE_NOTIFY_RESEND`). `Ok(false)` if the kernel does not know the
/// notification (Linux < 6.9): those requests stay unanswered.
///
/// # Errors
/// Writing to the connection failing otherwise.
pub fn resend_in_flight(fuse: BorrowedFd<'_>) -> std::io::Result<bool> {
    let mut notify = Vec::with_capacity(16);
    notify.extend_from_slice(&16u32.to_ne_bytes());
    notify.extend_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    notify.extend_from_slice(&0u64.to_ne_bytes());
    match nix::unistd::write(fuse, &notify) {
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::EINVAL) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether a kernel of release `osrelease` (`/proc/sys/kernel/osrelease`, e.g.
/// `6.18.44-fc-v1272`) knows `FUSE_NOTIFY_RESEND` (Linux 6.9); `None` if the text is not
/// a release.
pub fn kernel_resends(osrelease: &str) -> Option<bool> {
    let mut parts = osrelease.trim().split(['.', '-']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some((major, minor) >= (6, 9))
}

/// Warns, once a descriptor store keeps the connection, if this kernel cannot resend
/// requests in flight: a crash is then survived, but reads in flight at that instant
/// stay blocked.
pub fn warn_if_kernel_cannot_resend() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if kernel_resends(&release) == Some(false) {
        tracing::warn!(
            kernel = release.trim(),
            "this kernel cannot resend FUSE requests in flight (FUSE_NOTIFY_RESEND, Linux >= 6.9): a crash of this process is survived, but reads in flight at that instant stay blocked"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_from_6_9_resend() {
        assert_eq!(kernel_resends("6.18.44-fc-v1272\n"), Some(true));
        assert_eq!(kernel_resends("6.9.0"), Some(true));
        assert_eq!(kernel_resends("7.0.1-arch1"), Some(true));
        assert_eq!(kernel_resends("6.1.0-27-amd64"), Some(false));
        assert_eq!(kernel_resends("5.15.0"), Some(false));
        assert_eq!(kernel_resends("weird"), None);
    }

    #[test]
    fn the_synthetic_init_is_the_kernels_layout() {
        let init = KernelInit {
            capabilities: 0x1_0000_0001,
            abi_minor: 45,
            max_readahead: 65_536,
        };
        let msg = init.request();
        assert_eq!(msg.len(), 104);
        let u32_at = |at: usize| u32::from_ne_bytes(msg[at..at + 4].try_into().unwrap());
        assert_eq!(u32_at(0), 104, "len");
        assert_eq!(u32_at(4), 26, "opcode FUSE_INIT");
        assert_eq!(u32_at(40), 7, "major");
        assert_eq!(u32_at(44), 45, "minor");
        assert_eq!(u32_at(48), 65_536, "max_readahead");
        assert_eq!(u32_at(52), 1 | (1 << 30), "flags with FUSE_INIT_EXT");
        assert_eq!(u32_at(56), 1, "flags2");
        assert!(msg[60..].iter().all(|b| *b == 0));
    }
}
