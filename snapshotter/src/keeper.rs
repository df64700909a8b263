//! Kept descriptors: how a mount's FUSE connections outlive the process that serves them
//! (a crash, a `kill -9`, an OOM kill or an upgrade), so that running containers whose
//! overlay lowerdirs point into the mount never see `ENOTCONN`.
//!
//! The mount process (the *worker*) hands three descriptors to a store as soon as it has
//! mounted: the main mount's `/dev/fuse` (`fuse`), the plain mount's (`fuse-plain`) and its
//! handover journal (`journal`, [`crate::fuse::journal`]). The store speaks systemd's
//! file-descriptor-store protocol (`FDSTORE=1` + `FDNAME=` with the descriptor, over
//! `$NOTIFY_SOCKET`, sd_notify(3)), so there are two stores and one worker:
//!
//! * **systemd** (`FileDescriptorStoreMax=` in the unit): when the worker dies, systemd
//!   restarts it (`Restart=`) and passes the stored descriptors (`$LISTEN_FDS`,
//!   `$LISTEN_FDNAMES`);
//! * **the keeper** ([`run`], `strata-snapshotter mount --keeper`), for hosts without
//!   systemd: a small single-threaded process that starts the worker, receives the
//!   descriptors on its own notify socket, forwards `READY=1`, and when the worker dies
//!   starts a new one at once with the descriptors ([`HANDOVER_FDS`]).
//!
//! A worker that finds descriptors ([`inherited`]) takes the connections over
//! ([`crate::fuse::handover`]) instead of mounting. A planned upgrade (SIGHUP) re-executes
//! the worker's binary in place with the same descriptors ([`reexec`]): same pid, so
//! neither systemd nor the keeper notice.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::unistd::Pid;

use crate::{Error, Result};

/// The name of the main mount's `/dev/fuse` descriptor.
pub const FUSE_MAIN: &str = "fuse";
/// The name of the plain mount's `/dev/fuse` descriptor.
pub const FUSE_PLAIN: &str = "fuse-plain";
/// The name of the handover journal's descriptor.
pub const JOURNAL: &str = "journal";

/// Set (to `1`) in the worker's environment: the process serves, and does not start a
/// keeper of its own.
pub const WORKER_ENV: &str = "STRATA_MOUNT_WORKER";
/// `name=fd,name=fd,…`: descriptors a keeper or a re-executed worker passes on (systemd
/// uses `$LISTEN_FDS` instead).
pub const HANDOVER_FDS: &str = "STRATA_HANDOVER_FDS";

/// A restarted worker that dies again this soon counts as a failed start.
const QUICK_DEATH: Duration = Duration::from_secs(5);
/// The keeper gives up after this many failed starts in a row (the connection then ends).
const FAILED_STARTS: u32 = 10;

/// The signals a worker handles (SIGTERM, SIGINT: unmount; SIGHUP: upgrade). They stay
/// blocked from before a worker is started (or re-executed) until it has installed its
/// handlers ([`unblock_control_signals`]): one sent meanwhile waits instead of killing it
/// with the default action (which would end the mount instead of unmounting it, or not
/// restart it under systemd).
pub fn control_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

/// Blocks [`control_signals`] in the calling thread (and the threads it starts later).
pub fn block_control_signals() {
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&control_signals()), None) {
        tracing::warn!(error = %e, "cannot block SIGTERM/SIGINT/SIGHUP until the handlers are in place");
    }
}

/// Unblocks [`control_signals`] in the calling thread, once their handlers are installed.
pub fn unblock_control_signals() {
    if let Err(e) = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&control_signals()), None) {
        tracing::warn!(error = %e, "cannot unblock SIGTERM/SIGINT/SIGHUP");
    }
}

/// Descriptors a predecessor left.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The main mount's connection.
    pub fuse: Option<OwnedFd>,
    /// The plain mount's connection.
    pub plain: Option<OwnedFd>,
    /// The handover journal.
    pub journal: Option<OwnedFd>,
}

impl Inherited {
    fn put(&mut self, name: &str, fd: OwnedFd) {
        match name {
            FUSE_MAIN => self.fuse = Some(fd),
            FUSE_PLAIN => self.plain = Some(fd),
            JOURNAL => self.journal = Some(fd),
            other => tracing::warn!(name = other, "ignoring an unknown inherited descriptor"),
        }
    }
}

/// Whether this process is a keeper's worker.
pub fn is_worker() -> bool {
    std::env::var_os(WORKER_ENV).is_some()
}

/// The descriptors a keeper, a re-executing predecessor ([`HANDOVER_FDS`]) or systemd's
/// store (`$LISTEN_FDS`) passed, made close-on-exec; the variables are removed.
///
/// # Safety
/// Changes the environment: call before any other thread starts.
///
/// # Errors
/// [`Error::Config`] if [`HANDOVER_FDS`] names something that is not an open descriptor.
#[allow(unsafe_code)] // taking ownership of inherited descriptor numbers; see SAFETY
pub unsafe fn inherited() -> Result<Inherited> {
    let mut found = Inherited::default();
    if let Some(list) = std::env::var_os(HANDOVER_FDS) {
        // SAFETY: the caller guarantees no other thread runs.
        unsafe { std::env::remove_var(HANDOVER_FDS) };
        let list = list.to_string_lossy().into_owned();
        for item in list.split(',').filter(|s| !s.is_empty()) {
            let bad = || Error::Config(format!("{HANDOVER_FDS}: {item:?} is not name=descriptor"));
            let (name, fd) = item.split_once('=').ok_or_else(bad)?;
            let fd: RawFd = fd.parse().map_err(|_| bad())?;
            if fd < 3 {
                return Err(bad());
            }
            // SAFETY: F_GETFD only queries; it fails on a number that is not open.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            fcntl(borrowed, FcntlArg::F_GETFD).map_err(|_| bad())?;
            fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|_| bad())?;
            // SAFETY: the number is open (checked above) and was passed to this process
            // to own; nothing else in it refers to that number.
            found.put(name, unsafe { OwnedFd::from_raw_fd(fd) });
        }
        return Ok(found);
    }
    // SAFETY: the caller guarantees no other thread runs.
    let listened =
        unsafe { sd_notify::listen_fds_with_names_and_unset_env() }.map_err(|e| Error::Io {
            context: "reading $LISTEN_FDS".into(),
            source: e,
        })?;
    for (fd, name) in listened {
        // SAFETY: systemd passed these numbers to this process (LISTEN_PID matched); they
        // are open and nothing else owns them.
        found.put(&name, unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(found)
}

/// Hands `fds` to the store behind `$NOTIFY_SOCKET` (systemd or a keeper), one message
/// per name. Without `$NOTIFY_SOCKET` nothing is sent; a failure is logged (the mount
/// works, it just would not survive its process).
pub fn store(fds: &[(&str, BorrowedFd<'_>)]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        tracing::info!(
            "no descriptor store ($NOTIFY_SOCKET unset: neither --keeper nor systemd): a crash of this process ends the mount"
        );
        return;
    }
    for (name, fd) in fds {
        let state = [
            sd_notify::NotifyState::FdStore,
            sd_notify::NotifyState::FdName(name),
        ];
        if let Err(e) = sd_notify::notify_with_fds(&state, &[*fd]) {
            tracing::warn!(name, error = %e, "cannot hand a descriptor to the store; a crash of this process would end the mount");
        }
    }
    tracing::info!(names = %fds.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(","), "FUSE connections handed to the descriptor store");
    crate::fuse::handover::warn_if_kernel_cannot_resend();
}

/// Replaces this process with `exe` (the same arguments), passing `fds` on
/// ([`HANDOVER_FDS`]): a planned upgrade. Returns only on failure (the process then keeps
/// serving).
#[allow(unsafe_code)] // clears close-on-exec on descriptors this process owns
pub fn reexec(exe: &Path, fds: &[(&str, BorrowedFd<'_>)]) -> std::io::Error {
    let list: Vec<String> = fds
        .iter()
        .map(|(name, fd)| format!("{name}={}", fd.as_raw_fd()))
        .collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| {
            !matches!(
                k.to_str(),
                Some(HANDOVER_FDS | "LISTEN_FDS" | "LISTEN_PID" | "LISTEN_FDNAMES")
            )
        })
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    env.extend(CString::new(format!("{HANDOVER_FDS}={}", list.join(","))).ok());
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let Ok(path) = CString::new(exe.as_os_str().as_bytes()) else {
        return std::io::Error::other("the executable's path has a NUL byte");
    };
    for (_, fd) in fds {
        if let Err(e) = fcntl(*fd, FcntlArg::F_SETFD(FdFlag::empty())) {
            return e.into();
        }
    }
    // The new image handles them once its handlers are installed (the mask survives exec).
    block_control_signals();
    let error = match nix::unistd::execve(&path, &args, &env) {
        Err(e) => std::io::Error::from(e),
        Ok(never) => match never {},
    };
    for (_, fd) in fds {
        let _ = fcntl(*fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
    unblock_control_signals();
    error
}

/// The keeper (`strata-snapshotter mount --keeper`): starts this binary again as the
/// worker (same arguments), keeps the descriptors it stores, and restarts it with them
/// whenever it dies of anything but a clean end. SIGTERM and SIGINT go to the worker (which
/// unmounts) and the keeper ends with it; SIGHUP goes to the worker (an upgrade in place).
/// Returns when the worker ended cleanly.
///
/// # Errors
/// [`Error::Io`] setting up (notify socket, signals, starting the worker); the worker's
/// failure when it ends otherwise (before mounting, or `FAILED_STARTS` failed starts in a
/// row).
pub fn run() -> Result<()> {
    let io = |context: &str| {
        let context = context.to_string();
        move |source: std::io::Error| Error::Io { context, source }
    };
    let exe = std::env::current_exe().map_err(io("finding this executable"))?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let base = if nix::unistd::access("/run", nix::unistd::AccessFlags::W_OK).is_ok() {
        PathBuf::from("/run")
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::Builder::new()
        .prefix("strata-keeper.")
        .tempdir_in(&base)
        .map_err(io("creating the keeper's directory"))?;
    let socket_path = dir.path().join("notify");
    let socket =
        UnixDatagram::bind(&socket_path).map_err(io("binding the keeper's notify socket"))?;

    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| io("blocking signals")(e.into()))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| io("creating a signalfd")(e.into()))?;

    let mut keeper = Keeper {
        exe,
        args,
        socket_path,
        kept: BTreeMap::new(),
        ready_sent: false,
        stopping: None,
        failed_starts: 0,
    };
    let mut worker = keeper.spawn().map_err(io("starting the mount process"))?;
    loop {
        let mut fds = [
            PollFd::new(socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(io("waiting for the mount process")(e.into())),
        }
        let readable = |f: &PollFd<'_>| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
        let (message, signal) = (readable(&fds[0]), readable(&fds[1]));
        if message {
            keeper.receive(&socket);
        }
        if !signal {
            continue;
        }
        let Ok(Some(info)) = signals.read_signal() else {
            continue;
        };
        let pid = Pid::from_raw(worker.child.id() as i32);
        match Signal::try_from(info.ssi_signo as i32) {
            Ok(s @ (Signal::SIGTERM | Signal::SIGINT)) => {
                tracing::info!(signal = %s, "keeper: stopping the mount process");
                keeper.stopping = Some(s);
                let _ = kill(pid, s);
            }
            Ok(Signal::SIGHUP) => {
                tracing::info!(
                    pid = pid.as_raw(),
                    "keeper: upgrade asked, passing SIGHUP to the mount process"
                );
                let _ = kill(pid, Signal::SIGHUP);
            }
            _ => {}
        }
        // SIGCHLD (or any signal: cheap): reap.
        let Ok(Some(status)) = worker.child.try_wait() else {
            continue;
        };
        // Descriptors sent just before dying are in the socket already.
        keeper.receive(&socket);
        match keeper.after_exit(&worker, status) {
            Next::Exit(result) => return result,
            Next::Restart => {
                worker = keeper
                    .spawn()
                    .map_err(io("starting the mount process again"))?;
                if let Some(s) = keeper.stopping {
                    // Asked to stop while the old one was dying: the new one unmounts
                    // (it handles the signal once its handlers are in place).
                    let _ = kill(Pid::from_raw(worker.child.id() as i32), s);
                }
            }
        }
    }
}

/// The keeper's state.
struct Keeper {
    exe: PathBuf,
    args: Vec<OsString>,
    socket_path: PathBuf,
    /// Descriptors by name.
    kept: BTreeMap<String, OwnedFd>,
    ready_sent: bool,
    /// The signal that asked the keeper to stop.
    stopping: Option<Signal>,
    failed_starts: u32,
}

struct Worker {
    child: Child,
    started: Instant,
}

enum Next {
    Exit(Result<()>),
    Restart,
}

impl Keeper {
    #[allow(unsafe_code)] // pre_exec: async-signal-safe calls only
    fn spawn(&self) -> std::io::Result<Worker> {
        let mut command = Command::new(&self.exe);
        command
            .args(&self.args)
            .env(WORKER_ENV, "1")
            .env("NOTIFY_SOCKET", &self.socket_path)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove(HANDOVER_FDS);
        let raw: Vec<RawFd> = self.kept.values().map(AsRawFd::as_raw_fd).collect();
        if !self.kept.is_empty() {
            let list: Vec<String> = self
                .kept
                .iter()
                .map(|(name, fd)| format!("{name}={}", fd.as_raw_fd()))
                .collect();
            command.env(HANDOVER_FDS, list.join(","));
        }
        // The worker starts with only the control signals blocked (`control_signals`).
        let mask = control_signals();
        // SAFETY: runs in the child between fork and exec; sigprocmask and fcntl are
        // async-signal-safe, and nothing is allocated.
        unsafe {
            command.pre_exec(move || {
                libc::pthread_sigmask(libc::SIG_SETMASK, mask.as_ref(), std::ptr::null_mut());
                for fd in &raw {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        tracing::info!(
            pid = child.id(),
            takes_over = !self.kept.is_empty(),
            "keeper: started the mount process"
        );
        Ok(Worker {
            child,
            started: Instant::now(),
        })
    }

    /// Reads every pending message of the notify socket.
    fn receive(&mut self, socket: &UnixDatagram) {
        loop {
            let mut buf = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!([RawFd; 8]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let received = recvmsg::<()>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
            );
            let (len, fds) = match received {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(received) = c {
                                // SAFETY: SCM_RIGHTS just installed these descriptors in
                                // this process; nothing else owns them.
                                #[allow(unsafe_code)]
                                fds.extend(
                                    received
                                        .into_iter()
                                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                                );
                            }
                        }
                    }
                    (msg.bytes, fds)
                }
                Err(_) => return, // EAGAIN: nothing more
            };
            let text = String::from_utf8_lossy(&buf[..len.min(buf.len())]).into_owned();
            self.handle(&text, fds);
        }
    }

    /// One notify message: `FDSTORE=1` + `FDNAME=` with descriptors, `READY=1`.
    fn handle(&mut self, text: &str, fds: Vec<OwnedFd>) {
        let lines: Vec<&str> = text.lines().collect();
        if lines.contains(&"FDSTORE=1") {
            let name = lines
                .iter()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .unwrap_or("stored");
            for fd in fds {
                tracing::debug!(name, "keeper: descriptor stored");
                self.kept.insert(name.to_string(), fd);
            }
        }
        if lines.contains(&"READY=1") {
            self.failed_starts = 0;
            if !self.ready_sent {
                self.ready_sent = true;
                crate::cmd::readiness::notify_ready("mount (keeper)");
            }
        }
    }

    fn after_exit(&mut self, worker: &Worker, status: ExitStatus) -> Next {
        let pid = worker.child.id();
        // Killed while asked to stop (or before it could handle the request): a successor
        // takes the connections over and unmounts, rather than leaving dead mounts.
        let killed_while_stopping = self.stopping.is_some()
            && status.signal().is_some()
            && self.kept.contains_key(FUSE_MAIN);
        if (self.stopping.is_some() && !killed_while_stopping) || status.success() {
            tracing::info!(pid, %status, "keeper: the mount process ended; exiting");
            return Next::Exit(if status.success() {
                Ok(())
            } else {
                Err(Error::Config(format!("the mount process ended: {status}")))
            });
        }
        if !self.kept.contains_key(FUSE_MAIN) {
            return Next::Exit(Err(Error::Config(format!(
                "the mount process failed before mounting ({status}); see its log above"
            ))));
        }
        if worker.started.elapsed() < QUICK_DEATH {
            self.failed_starts += 1;
        }
        if self.failed_starts >= FAILED_STARTS {
            return Next::Exit(Err(Error::Config(format!(
                "the mount process died {FAILED_STARTS} times in a row shortly after starting (last: {status}); giving up, the mount ends"
            ))));
        }
        if self.failed_starts > 1 {
            std::thread::sleep(Duration::from_millis(200) * self.failed_starts);
        }
        tracing::warn!(
            pid,
            status = %describe(status),
            "keeper: the mount process died; starting a new one to take over its FUSE connections"
        );
        Next::Restart
    }
}

fn describe(status: ExitStatus) -> String {
    match status.signal() {
        Some(s) => Signal::try_from(s).map_or_else(|_| format!("signal {s}"), |s| s.to_string()),
        None => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_messages_keep_descriptors_by_name_and_ready_counts_once() {
        let mut keeper = Keeper {
            exe: PathBuf::from("/bin/true"),
            args: Vec::new(),
            socket_path: PathBuf::new(),
            kept: BTreeMap::new(),
            ready_sent: false,
            stopping: None,
            failed_starts: 3,
        };
        let fd = |_: ()| OwnedFd::from(tempfile::tempfile().unwrap());
        keeper.handle("FDSTORE=1\nFDNAME=fuse\n", vec![fd(())]);
        keeper.handle("FDSTORE=1\nFDNAME=journal\n", vec![fd(())]);
        keeper.handle("FDSTORE=1\nFDNAME=fuse\n", vec![fd(())]);
        assert_eq!(
            keeper.kept.keys().collect::<Vec<_>>(),
            ["fuse", "journal"],
            "one descriptor per name, the latest"
        );
        keeper.handle("READY=1\n", Vec::new());
        assert!(keeper.ready_sent);
        assert_eq!(keeper.failed_starts, 0, "a ready worker resets the count");
    }
}
