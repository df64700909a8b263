//! Child processes owned by a test: long-running services killed on drop, and one-shot
//! commands whose output is kept in log files.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::error::{Error, Result, io_context};
use crate::wait::poll;

/// How many log lines error messages and failure reports quote.
pub const TAIL_LINES: usize = 40;

/// A long-running child (registry, server, FUSE mount, containerd, snapshotter).
///
/// By default it runs in its own process group with stdout and stderr appended to one log
/// file, and dropping it sends SIGTERM to the group, waits up to 10 s, then SIGKILLs the
/// group; [`Spawn`] changes both.
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    how: Spawn,
}

/// How [`Service::spawn_with`] starts a service and what its signals reach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spawn {
    /// Start the log afresh (truncate it) instead of appending to it, with no command line
    /// at its top: the log holds only what this process wrote.
    pub fresh_log: bool,
    /// Leave the process in the test's process group and signal its pid only, never a group
    /// (its children, if any, are left alone).
    pub pid_only: bool,
}

impl Service {
    /// Starts `command` as service `name`, logging to `log` (created or appended).
    ///
    /// Errors: the log cannot be opened or the program cannot be executed.
    pub fn spawn(name: &str, command: Command, log: &Path) -> Result<Service> {
        Service::spawn_with(name, command, log, Spawn::default())
    }

    /// [`Service::spawn`], started and signalled as `how` says.
    ///
    /// Errors: the log cannot be opened or the program cannot be executed.
    pub fn spawn_with(name: &str, mut command: Command, log: &Path, how: Spawn) -> Result<Service> {
        let file = if how.fresh_log {
            File::create(log).map_err(io_context(format!("create log {}", log.display())))?
        } else {
            open_log(log, &command)?
        };
        let err = file
            .try_clone()
            .map_err(io_context(format!("clone {}", log.display())))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        if !how.pid_only {
            command.process_group(0);
        }
        let child = command
            .spawn()
            .map_err(io_context(format!("start {name} ({})", describe(&command))))?;
        Ok(Service {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
            how,
        })
    }

    /// The service's name as given to [`Service::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file holding its stdout and stderr.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The whole text of its log; empty if it cannot be read.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Process id, while it has not been stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails with [`Error::ExitedEarly`] (quoting the log tail) if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Err(Error::Invalid(format!("{} was already stopped", self.name)));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::ExitedEarly {
                name: self.name.clone(),
                status: status.to_string(),
                log: self.log.clone(),
                tail: tail(&self.log, TAIL_LINES),
            }),
            Err(e) => Err(Error::Io {
                context: format!("wait for {}", self.name),
                source: e,
            }),
        }
    }

    /// Polls `ready` every 100 ms until it returns `Ok(true)`, the process exits (error
    /// [`Error::ExitedEarly`]) or `timeout` passes (error [`Error::Timeout`] naming `what`).
    pub fn wait_ready(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        poll(what, timeout, Duration::from_millis(100), || {
            if ready()? {
                return Ok(Some(()));
            }
            self.check_running()?;
            Ok(None)
        })
    }

    /// Waits for the process to exit on its own, at most `timeout`; returns its status,
    /// or `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let what = format!("{} to exit", self.name);
        let exited = poll(&what, timeout, Duration::from_millis(100), || {
            child
                .try_wait()
                .map_err(io_context(format!("wait for {}", self.name)))
        });
        match exited {
            Ok(status) => Ok(Some(status)),
            Err(Error::Timeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stops the service: SIGTERM to its process group (its pid with
    /// [`Spawn::pid_only`]), then SIGKILL after `grace`. Returns the exit status (`None` if
    /// it had been stopped already).
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.stop_with(Signal::SIGTERM, grace)
    }

    /// [`Service::stop`] with `signal` first (SIGKILL for a crash).
    pub fn stop_with(&mut self, signal: Signal, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let pid = Pid::from_raw(child.id() as i32);
        let send = |signal| {
            let _ = if self.how.pid_only {
                kill(pid, signal)
            } else {
                killpg(pid, signal)
            };
        };
        send(signal);
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(status)) = child.try_wait() {
                if !self.how.pid_only {
                    send(Signal::SIGKILL); // stragglers in the group
                }
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        send(Signal::SIGKILL);
        child.wait().ok()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Runs `command` to completion (at most `timeout`), returning its output whatever the exit
/// status; stdout and stderr are also appended to `log`.
///
/// Errors: it cannot start ([`Error::Io`]); it runs longer than `timeout` (its process group
/// is killed, [`Error::Timeout`]).
pub fn run_capture(command: &mut Command, log: &Path, timeout: Duration) -> Result<Output> {
    let mut file = open_log(log, command)?;
    let stdout = tempfile::tempfile().map_err(io_context("create a temporary stdout file"))?;
    let stderr = tempfile::tempfile().map_err(io_context("create a temporary stderr file"))?;
    let clone = |f: &File| f.try_clone().map_err(io_context("clone a temporary file"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(clone(&stdout)?))
        .stderr(Stdio::from(clone(&stderr)?))
        .process_group(0)
        .spawn()
        .map_err(io_context(format!("run {}", describe(command))))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > timeout => {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                let _ = writeln!(file, "# killed after {} s", timeout.as_secs());
                return Err(Error::Timeout {
                    what: describe(command),
                    seconds: timeout.as_secs(),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(io_context(format!("wait for {}", describe(command)))(e)),
        }
    };
    let read_back = |mut f: File| -> Vec<u8> {
        let mut bytes = Vec::new();
        if f.seek(SeekFrom::Start(0)).is_ok() {
            let _ = f.read_to_end(&mut bytes);
        }
        bytes
    };
    let output = Output {
        status,
        stdout: read_back(stdout),
        stderr: read_back(stderr),
    };
    let _ = file.write_all(&output.stdout);
    let _ = file.write_all(&output.stderr);
    let _ = writeln!(file, "# {}", output.status);
    Ok(output)
}

/// Like [`run_capture`] but an unsuccessful exit is an [`Error::Command`] quoting the log.
pub fn run_checked(command: &mut Command, log: &Path, timeout: Duration) -> Result<Output> {
    let output = run_capture(command, log, timeout)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(command_error(command, output.status, log))
    }
}

fn command_error(command: &Command, status: ExitStatus, log: &Path) -> Error {
    Error::Command {
        command: describe(command),
        status: status.to_string(),
        log: log.to_owned(),
        tail: tail(log, TAIL_LINES),
    }
}

fn open_log(log: &Path, command: &Command) -> Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_context(format!("open log {}", log.display())))?;
    let _ = writeln!(file, "# $ {}", describe(command));
    Ok(file)
}

/// `program arg1 arg2 …` of a command, for messages.
pub fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// The last `lines` lines of a text file (at most the last 64 KiB are read); empty if the
/// file cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_checked_keeps_output_and_reports_failure_with_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("cmd.log");
        let minute = Duration::from_secs(60);
        let out = run_checked(
            Command::new("sh").args(["-c", "echo hello; echo oops >&2"]),
            &log,
            minute,
        )
        .unwrap();
        assert_eq!(out.stdout, b"hello\n");
        assert_eq!(out.stderr, b"oops\n");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("hello") && text.contains("oops"), "{text}");

        let err = run_checked(
            Command::new("sh").args(["-c", "echo broken-thing; exit 3"]),
            &log,
            minute,
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("exit status: 3"), "{message}");
        assert!(message.contains("broken-thing"), "{message}");
    }

    #[test]
    fn service_is_killed_on_drop_and_early_exit_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let service = Service::spawn("sleeper", cmd, &dir.path().join("s.log")).unwrap();
        let pid = service.pid().unwrap() as i32;
        drop(service);
        // The process is gone (reaped by stop), so signalling it fails.
        assert!(nix::sys::signal::kill(Pid::from_raw(pid), None).is_err());

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo dying; exit 7"]);
        let mut service = Service::spawn("dier", cmd, &dir.path().join("d.log")).unwrap();
        let err = service
            .wait_ready("never", Duration::from_secs(5), || Ok(false))
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("dier exited early") && message.contains("dying"),
            "{message}"
        );
    }

    #[test]
    fn fresh_log_and_pid_only_services() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("f.log");
        std::fs::write(&log, "an earlier run\n").unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 600"]);
        let how = Spawn {
            fresh_log: true,
            pid_only: true,
        };
        let mut service = Service::spawn_with("fresh", cmd, &log, how).unwrap();
        service
            .wait_ready("its first line", Duration::from_secs(10), || {
                Ok(!service_log(&log).is_empty())
            })
            .unwrap();
        assert_eq!(service_log(&log), "started\n");
        let pid = service.pid().unwrap() as i32;
        let status = service.stop_with(Signal::SIGKILL, Duration::from_secs(10));
        assert_eq!(
            status.map(|s| s.to_string()).as_deref(),
            Some("signal: 9 (SIGKILL)")
        );
        assert!(nix::sys::signal::kill(Pid::from_raw(pid), None).is_err());
    }

    fn service_log(log: &Path) -> String {
        std::fs::read_to_string(log).unwrap_or_default()
    }

    #[test]
    fn run_capture_kills_on_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let err = run_capture(
            Command::new("sleep").arg("30"),
            &dir.path().join("t.log"),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn tail_returns_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail(&path, 2), "c\nd");
        assert_eq!(tail(&dir.path().join("missing"), 2), "");
    }
}
