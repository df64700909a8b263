//! `strata-snapshotter mount --keeper` seen from outside (issue #16): the process started is
//! the *keeper*; its one child, the *worker*, mounts and serves. A worker killed (`kill -9`,
//! or stopped then killed) is replaced at once by a new worker that takes the same FUSE
//! connections over; SIGHUP re-executes the worker in place (same pid) and it takes them
//! over too. Each worker that took over logs [`TOOK_OVER`] to the keeper's log.
//!
//! [`Keeper`] finds the worker (`/proc/<keeper>/task/<keeper>/children`), sends those
//! events and waits until a worker has taken over, timing each one ([`Event`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, Result, io_context};
use crate::process::{TAIL_LINES, tail};
use crate::wait::poll;

/// What a worker that took the FUSE connections over logs.
pub const TOOK_OVER: &str = "took over the FUSE connection";

/// Longest a takeover may take once the old worker is gone (or SIGHUP was sent).
pub const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// The children of `pid`: what `/proc/<pid>/task/<tid>/children` lists for each of its
/// threads (the main thread's `/proc/<pid>/task/<pid>/children` holds those it forked),
/// sorted.
///
/// Errors: the process is gone, or a kernel without `CONFIG_PROC_CHILDREN`.
pub fn children(pid: u32) -> Result<Vec<u32>> {
    let tasks = format!("/proc/{pid}/task");
    let mut all = Vec::new();
    for task in std::fs::read_dir(&tasks).map_err(io_context(format!("list {tasks}")))? {
        let task = task.map_err(io_context(format!("list {tasks}")))?;
        let path = task.path().join("children");
        // A thread that exited meanwhile has no file any more.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for w in text.split_whitespace() {
            let child = w
                .parse()
                .map_err(|_| Error::Invalid(format!("{}: {w:?} is not a pid", path.display())))?;
            all.push(child);
        }
    }
    all.sort_unstable();
    all.dedup();
    Ok(all)
}

/// Whether `pid` is gone: no such process, or a zombie nobody has reaped yet.
pub fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S …": the state is the first field after the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// Seconds since the Unix epoch, as the readers' `date +%s.%N` timestamps.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What [`Keeper`] did to the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// SIGKILL to the worker.
    Kill,
    /// SIGHUP to the keeper: the worker re-executes itself in place.
    Upgrade,
    /// SIGSTOP to the worker, a wait, then SIGKILL.
    StopThenKill,
}

/// One event and its takeover.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// What was done.
    pub kind: EventKind,
    /// The worker before.
    pub old_worker: u32,
    /// The worker that took over (the same pid after [`EventKind::Upgrade`]).
    pub new_worker: u32,
    /// When the first signal was sent.
    pub sent: SystemTime,
    /// When the takeover was seen (its log line and the keeper's child).
    pub done: SystemTime,
}

impl Event {
    /// Seconds from the first signal to the takeover seen.
    pub fn seconds(&self) -> f64 {
        unix_seconds(self.done) - unix_seconds(self.sent)
    }
}

/// A running `mount --keeper` process and the log it shares with its workers.
#[derive(Clone, Debug)]
pub struct Keeper {
    pid: u32,
    log: PathBuf,
}

impl Keeper {
    /// The keeper `pid` (the process the test started), logging to `log`.
    pub fn new(pid: u32, log: &Path) -> Keeper {
        Keeper {
            pid,
            log: log.to_owned(),
        }
    }

    /// The keeper's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The log's text (empty if unreadable).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log, TAIL_LINES)
    }

    /// How many [`TOOK_OVER`] lines the log has.
    pub fn takeovers(&self) -> usize {
        self.log_text().matches(TOOK_OVER).count()
    }

    /// The worker: the keeper's one child.
    ///
    /// Errors: the keeper is gone, or it has no child or more than one.
    pub fn worker(&self) -> Result<u32> {
        match children(self.pid)?.as_slice() {
            [worker] => Ok(*worker),
            other => Err(Error::Invalid(format!(
                "the keeper {} has children {other:?}, not one worker",
                self.pid
            ))),
        }
    }

    /// Waits (at most `timeout`) until the keeper has exactly one child; returns it.
    pub fn wait_worker(&self, timeout: Duration) -> Result<u32> {
        let what = format!("the keeper {} to have one worker", self.pid);
        poll(&what, timeout, Duration::from_millis(50), || {
            Ok(self.worker().ok())
        })
        .map_err(|e| self.with_log(e))
    }

    /// SIGKILL to the worker; waits until a new worker (another pid) has logged
    /// [`TOOK_OVER`].
    pub fn kill_worker(&self) -> Result<Event> {
        let old = self.worker()?;
        let before = self.takeovers();
        let sent = SystemTime::now();
        self.signal(old, Signal::SIGKILL)?;
        self.wait_takeover(EventKind::Kill, old, before, sent)
    }

    /// SIGHUP to the keeper (a planned upgrade); waits until the worker has logged
    /// [`TOOK_OVER`] again. The worker must keep its pid (it re-executes in place).
    pub fn upgrade(&self) -> Result<Event> {
        self.upgrade_through(false)
    }

    /// As [`Keeper::upgrade`] with SIGHUP sent to the worker itself.
    pub fn upgrade_worker(&self) -> Result<Event> {
        self.upgrade_through(true)
    }

    fn upgrade_through(&self, worker: bool) -> Result<Event> {
        let old = self.worker()?;
        let before = self.takeovers();
        let sent = SystemTime::now();
        self.signal(if worker { old } else { self.pid }, Signal::SIGHUP)?;
        self.wait_takeover(EventKind::Upgrade, old, before, sent)
    }

    /// SIGSTOP to the worker, `stopped` later SIGKILL (no SIGCONT); waits until a new worker
    /// has logged [`TOOK_OVER`].
    pub fn stop_then_kill_worker(&self, stopped: Duration) -> Result<Event> {
        let old = self.worker()?;
        let before = self.takeovers();
        let sent = SystemTime::now();
        self.signal(old, Signal::SIGSTOP)?;
        std::thread::sleep(stopped);
        self.signal(old, Signal::SIGKILL)?;
        self.wait_takeover(EventKind::StopThenKill, old, before, sent)
    }

    fn signal(&self, pid: u32, signal: Signal) -> Result<()> {
        kill(Pid::from_raw(pid as i32), signal).map_err(|e| {
            Error::Invalid(format!(
                "{signal} to {pid}: {e}\n--- log tail:\n{}",
                self.log_tail()
            ))
        })
    }

    /// Waits until the log has more than `before` [`TOOK_OVER`] lines and the keeper's one
    /// child is the worker `kind` expects: another pid than `old` after a kill, `old`
    /// after an upgrade. The old worker must be gone after a kill.
    fn wait_takeover(
        &self,
        kind: EventKind,
        old: u32,
        before: usize,
        sent: SystemTime,
    ) -> Result<Event> {
        let what = format!(
            "a worker to take over after {kind:?} of worker {old} (keeper {})",
            self.pid
        );
        let new = poll(&what, TAKEOVER_TIMEOUT, Duration::from_millis(20), || {
            if is_gone(self.pid) {
                return Err(Error::Invalid(format!("the keeper {} is gone", self.pid)));
            }
            if self.takeovers() <= before {
                return Ok(None);
            }
            Ok(self.worker().ok())
        })
        .map_err(|e| self.with_log(e))?;
        let done = SystemTime::now();
        let expected = match kind {
            EventKind::Upgrade => new == old,
            EventKind::Kill | EventKind::StopThenKill => new != old && is_gone(old),
        };
        if !expected {
            return Err(self.with_log(Error::Invalid(format!(
                "after {kind:?} of worker {old} the keeper's worker is {new} (old one gone: {})",
                is_gone(old)
            ))));
        }
        Ok(Event {
            kind,
            old_worker: old,
            new_worker: new,
            sent,
            done,
        })
    }

    fn with_log(&self, e: Error) -> Error {
        Error::Invalid(format!(
            "{e}\n--- {} (tail):\n{}",
            self.log.display(),
            self.log_tail()
        ))
    }
}

/// Timestamps (Unix seconds) of a reader's successful reads, in order: the longest stall
/// between two of them overlapping `[from, to]`, in seconds (`None` without such a pair).
pub fn longest_gap(oks: &[f64], from: f64, to: f64) -> Option<f64> {
    oks.windows(2)
        .filter(|w| w[1] >= from && w[0] <= to)
        .map(|w| w[1] - w[0])
        .reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_of_this_process_and_gone_pids() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // Spawned from a test thread, not the main one: found all the same.
        let listed = children(std::process::id()).unwrap();
        assert!(listed.contains(&child.id()), "{listed:?}");
        assert!(!is_gone(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(is_gone(child.id()));
        assert!(!children(std::process::id()).unwrap().contains(&child.id()));
        assert!(children(u32::MAX).is_err());
    }

    #[test]
    fn longest_gap_overlapping_a_window() {
        let oks = [1.0, 1.1, 1.2, 3.2, 3.3, 10.0];
        let gap = |from, to| longest_gap(&oks, from, to).map(|g| (g * 1000.0).round() / 1000.0);
        assert_eq!(gap(2.0, 2.5), Some(2.0));
        assert_eq!(gap(1.0, 1.15), Some(0.1));
        assert_eq!(gap(3.0, 4.0), Some(6.7));
        assert_eq!(gap(11.0, 12.0), None);
    }
}
