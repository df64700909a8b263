//! What the bench measures: wall time and peak RSS of a child command (`wait4`), peak RSS of
//! a running process (`VmHWM` of `/proc/<pid>/status`), bytes a registry served (its access
//! log), and the machine's load.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::process::{describe, tail};
use crate::{Error, Result, error::io_context};

/// One finished command.
#[derive(Debug, Clone)]
pub struct Timed {
    /// Wall time from spawn to exit (the wait blocks: no polling granularity).
    pub wall: Duration,
    /// Peak resident set of the process (`ru_maxrss` of `wait4`), in KiB.
    pub max_rss_kib: u64,
    /// Its standard output.
    pub stdout: String,
}

/// Runs `command` (own process group, stdin null, output appended to `log`), waits for it
/// with `wait4` and returns wall time, peak RSS and stdout. After `timeout` the group is
/// killed.
///
/// Errors: it cannot start, it is killed by the timeout, or it exits unsuccessfully (the
/// error quotes the log tail).
#[allow(unsafe_code)] // wait4 with rusage has no safe wrapper
pub fn run_timed(command: &mut Command, log: &Path, timeout: Duration) -> Result<Timed> {
    let what = describe(command);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_context(format!("open {}", log.display())))?;
    let _ = writeln!(file, "# $ {what}");
    let stdout = tempfile::tempfile().map_err(io_context("create a temporary file"))?;
    let stdout_child = stdout
        .try_clone()
        .map_err(io_context("clone a temporary file"))?;
    let stderr = file
        .try_clone()
        .map_err(io_context(format!("clone {}", log.display())))?;
    let start = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout_child))
        .stderr(Stdio::from(stderr))
        .process_group(0)
        .spawn()
        .map_err(io_context(format!("run {what}")))?;
    let pid = child.id() as libc::pid_t;
    let done = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (done, timed_out) = (done.clone(), timed_out.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                if start.elapsed() > timeout {
                    timed_out.store(true, Ordering::Release);
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid pointers to locals.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    done.store(true, Ordering::Release);
    let _ = watchdog.join();
    drop(child); // already reaped by wait4; std's Child does not wait on drop
    if waited != pid {
        return Err(io_context(format!("wait4 for {what}"))(
            std::io::Error::last_os_error(),
        ));
    }
    let out = read_back(stdout);
    let _ = file.write_all(out.as_bytes());
    let exit = if libc::WIFEXITED(status) {
        format!("exit status: {}", libc::WEXITSTATUS(status))
    } else {
        format!("signal: {}", libc::WTERMSIG(status))
    };
    let _ = writeln!(file, "# {exit} after {:.3} s", wall.as_secs_f64());
    if timed_out.load(Ordering::Acquire) {
        return Err(Error::Timeout {
            what,
            seconds: timeout.as_secs(),
        });
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(Error::Command {
            command: what,
            status: exit,
            log: log.to_owned(),
            tail: tail(log, 30),
        });
    }
    Ok(Timed {
        wall,
        max_rss_kib: usage.ru_maxrss as u64,
        stdout: out,
    })
}

fn read_back(mut file: File) -> String {
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(0)).is_ok() {
        let _ = file.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The first process whose argument vector satisfies `matches` (`/proc/<pid>/cmdline`
/// split at NULs), if any.
pub fn find_pid(matches: impl Fn(&[String]) -> bool) -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| {
                let argv: Vec<String> = raw
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                matches(&argv)
            })
            .unwrap_or(false)
    })
}

/// Peak and current resident set of a running process, in KiB: (`VmHWM`, `VmRSS`) of
/// `/proc/<pid>/status` (proc(5)).
///
/// Errors: the process is gone or the fields are missing.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(io_context(format!("read {path}")))?;
    let hwm = status_field(&text, "VmHWM:");
    let rss = status_field(&text, "VmRSS:");
    match (hwm, rss) {
        (Some(hwm), Some(rss)) => Ok((hwm, rss)),
        _ => Err(Error::Invalid(format!("{path}: no VmHWM/VmRSS"))),
    }
}

fn status_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Successful GETs and their body bytes in a registry log (distribution's access log,
/// Apache combined format: `host - - [date] "GET /v2/… HTTP/1.1" 200 1234 "ref" "agent"`).
pub fn registry_served(log: &Path) -> Result<(u64, u64)> {
    let text =
        std::fs::read_to_string(log).map_err(io_context(format!("read {}", log.display())))?;
    Ok(text
        .lines()
        .filter_map(combined_get_bytes)
        .fold((0, 0), |(n, b), bytes| (n + 1, b + bytes)))
}

/// Body bytes of a successful GET line in combined log format, else `None`.
fn combined_get_bytes(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once(" \"")?;
    let (request, rest) = rest.split_once('"')?;
    if !request.starts_with("GET ") || !request.contains(" HTTP/") {
        return None;
    }
    let mut fields = rest.split_whitespace();
    let status: u16 = fields.next()?.parse().ok()?;
    let bytes: u64 = fields.next()?.parse().ok()?;
    (200..300).contains(&status).then_some(bytes)
}

/// `1.23 s`, as the bench tables print a duration.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// A bench's progress line on stderr, prefixed with the current load average (the machine
/// is shared: a figure taken under load says so next to it).
pub fn say(text: &str) {
    eprintln!(
        "[bench {:>5}] {text}",
        load_average().map_or("?".into(), |l| format!("{l:.2}"))
    );
}

/// The 1-minute load average of `/proc/loadavg` (proc(5)).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Median of durations (the mean of the middle two for an even count); zero if empty.
pub fn median(values: &[Duration]) -> Duration {
    Duration::from_secs_f64(median_f64(
        &values.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
    ))
}

/// Median of numbers (the mean of the middle two for an even count); zero if empty.
pub fn median_f64(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_timed_reports_wall_rss_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t.log");
        let t = run_timed(
            Command::new("sh").args(["-c", "echo hi; sleep 0.2"]),
            &log,
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(t.stdout, "hi\n");
        assert!(t.wall >= Duration::from_millis(200), "{:?}", t.wall);
        assert!(t.max_rss_kib > 0);
        let err = run_timed(
            Command::new("sh").args(["-c", "echo bad >&2; exit 4"]),
            &log,
            Duration::from_secs(30),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("exit status: 4") && err.contains("bad"),
            "{err}"
        );
        let err = run_timed(
            Command::new("sleep").arg("20"),
            &log,
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
    }

    #[test]
    fn memory_of_this_process_and_its_pid_by_argv() {
        let (hwm, rss) = memory_kib(std::process::id()).unwrap();
        assert!(hwm >= rss && rss > 0);
        let me = std::env::args().next().unwrap();
        assert!(find_pid(|argv| argv.first() == Some(&me)).is_some());
        assert!(find_pid(|argv| argv.iter().any(|a| a == "no-such-arg-strata")).is_none());
    }

    #[test]
    fn combined_log_lines() {
        let ok = "127.0.0.1 - - [29/Nov/2026:09:11:11 +0000] \"GET /v2/b/blobs/sha256:ab HTTP/1.1\" 200 1234 \"\" \"containerd/1.6\"";
        assert_eq!(combined_get_bytes(ok), Some(1234));
        let head = ok.replace("\"GET ", "\"HEAD ");
        assert_eq!(combined_get_bytes(&head), None);
        let missing = ok.replace("\" 200 1234", "\" 404 19");
        assert_eq!(combined_get_bytes(&missing), None);
        assert_eq!(combined_get_bytes("time=\"x\" level=info msg=\"y\""), None);
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("r.log");
        std::fs::write(&log, format!("{ok}\n{head}\n{ok}\nnoise\n")).unwrap();
        assert_eq!(registry_served(&log).unwrap(), (2, 2468));
    }

    #[test]
    fn medians() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(median(&[ms(4), ms(1), ms(2), ms(3)]), ms(2) + ms(1) / 2);
        assert_eq!(median(&[]), Duration::ZERO);
    }
}

/// Flushes every file system's dirty pages (before a timed phase, so that writeback of the
/// previous one does not land in it).
pub fn sync() {
    nix::unistd::sync();
}

/// Apparent size of the regular files below `dir` (an object cache), in bytes.
///
/// Errors: a directory that cannot be listed.
pub fn du_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(io_context(format!("list {}", d.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_context(format!("list {}", d.display())))?;
            let meta = entry
                .metadata()
                .map_err(io_context(format!("stat {}", entry.path().display())))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// The current time as `YYYY-MM-DD HH:MM UTC` (for the report's heading).
pub fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown date".into())
}

/// The machine a report was measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPUs available to this process.
    pub cpus: usize,
    /// `model name` of `/proc/cpuinfo`.
    pub cpu_model: String,
    /// The kernel release.
    pub kernel: String,
    /// `MemTotal`, GiB.
    pub mem_gb: f64,
    /// `containerd --version` (the system's).
    pub containerd: String,
}

impl Machine {
    /// Reads the machine's facts (`?` for what cannot be read).
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let containerd = Command::new("containerd")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .nth(2)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "?".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map_or("?".into(), |(_, m)| m.trim().to_owned()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or("?".into(), |k| k.trim().to_owned()),
            mem_gb: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
                .map_or(0.0, |kib| kib / 1024.0 / 1024.0),
            containerd,
        }
    }
}
