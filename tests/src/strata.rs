//! Running the Strata binaries the way an operator does (command lines of
//! `docs/CONTRACTS.md` §4): `strata-publisher init/ingest/serve` and
//! `strata-snapshotter mount/run/pull`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::binaries::{PUBLISHER, SNAPSHOTTER, strata_binary};
use crate::error::{Error, Result, io_context};
use crate::mounts;
use crate::net::{free_port, http_get};
use crate::process::{Service, run_capture, run_checked};
use crate::workdir::WorkDir;

/// Longest `init` may take.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest an `ingest` of the test image may take.
pub const INGEST_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Longest a `pull` may take.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Longest a command that must fail (wrong input) may take to do so.
pub const FAILURE_TIMEOUT: Duration = Duration::from_secs(120);

/// A command for a Strata binary with the environment the tests use: `NO_COLOR=1` (plain
/// logs the tests can parse) and `RUST_LOG=info` unless the caller set `RUST_LOG`.
pub fn strata_command(binary: &str) -> Result<Command> {
    let mut command = Command::new(strata_binary(binary)?);
    command.env("NO_COLOR", "1");
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    Ok(command)
}

/// `strata-snapshotter cache --cache DIR`: the cache's counters as `(key, value)` lines.
pub fn cache_report(cache: &Path, log: &Path) -> Result<String> {
    let mut command = strata_command(SNAPSHOTTER)?;
    command.arg("cache").arg("--cache").arg(cache);
    let output = run_checked(&mut command, log, Duration::from_secs(60))?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The number after `key: ` in a [`cache_report`] (`None` if there is no such line).
pub fn report_value(report: &str, key: &str) -> Option<u64> {
    report.lines().find_map(|line| {
        line.strip_prefix(key)?
            .strip_prefix(": ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// A publisher repository directory (`--repo DIR`, contract §2).
#[derive(Debug, Clone)]
pub struct Repo {
    /// The `--repo` directory.
    pub dir: PathBuf,
    /// Fully qualified repository name, e.g. `demo.strata.example`.
    pub fqrn: String,
}

impl Repo {
    /// `strata-publisher init --repo dir --fqrn fqrn`, logged to `log`.
    pub fn init(dir: &Path, fqrn: &str, log: &Path) -> Result<Repo> {
        run_checked(
            strata_command(PUBLISHER)?
                .arg("init")
                .arg("--repo")
                .arg(dir)
                .arg("--fqrn")
                .arg(fqrn),
            log,
            INIT_TIMEOUT,
        )?;
        let repo = Repo {
            dir: dir.to_owned(),
            fqrn: fqrn.to_owned(),
        };
        if !repo.public_key().is_file() {
            return Err(Error::Invalid(format!(
                "strata-publisher init wrote no public key at {} (contract §2)",
                repo.public_key().display()
            )));
        }
        Ok(repo)
    }

    /// The master public key clients need: `DIR/keys/<fqrn>.pub`.
    pub fn public_key(&self) -> PathBuf {
        self.dir.join("keys").join(format!("{}.pub", self.fqrn))
    }

    /// The `strata-publisher ingest --repo DIR refs…` command.
    pub fn ingest_command(&self, refs: &[&str]) -> Result<Command> {
        let mut command = strata_command(PUBLISHER)?;
        command
            .arg("ingest")
            .arg("--repo")
            .arg(&self.dir)
            .args(refs);
        Ok(command)
    }

    /// Ingests `refs`; error with the log tail if the publisher fails.
    pub fn ingest(&self, refs: &[&str], log: &Path) -> Result<()> {
        run_checked(&mut self.ingest_command(refs)?, log, INGEST_TIMEOUT).map(drop)
    }

    /// `strata-publisher startup --repo DIR --trace TRACE REFERENCE`: publishes the image's
    /// startup packs from an access trace; its summary line.
    pub fn startup(&self, reference: &str, trace: &Path, log: &Path) -> Result<String> {
        let mut command = strata_command(PUBLISHER)?;
        command
            .arg("startup")
            .arg("--repo")
            .arg(&self.dir)
            .arg("--trace")
            .arg(trace)
            .arg(reference);
        let output = run_checked(&mut command, log, INGEST_TIMEOUT)?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// `strata-publisher startup --repo DIR --record --timeout TIMEOUT --save-trace TRACE
    /// REFERENCE [-- COMMAND]`:
    /// records the image's start in the publisher's sandbox and publishes it; its stdout.
    pub fn record_startup(
        &self,
        reference: &str,
        trace: &Path,
        timeout: &str,
        command: &[&str],
        log: &Path,
    ) -> Result<String> {
        let mut cmd = strata_command(PUBLISHER)?;
        cmd.arg("startup")
            .arg("--repo")
            .arg(&self.dir)
            .args(["--record", "--timeout", timeout, "--save-trace"])
            .arg(trace)
            .arg(reference);
        if !command.is_empty() {
            cmd.arg("--").args(command);
        }
        let output = run_checked(&mut cmd, log, INGEST_TIMEOUT)?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Starts `strata-publisher serve --repo DIR --listen 127.0.0.1:<free port>` and waits
    /// until `GET /cvmfs/<fqrn>/.cvmfspublished` answers 200 (30 s at most).
    pub fn serve(&self, log: &Path) -> Result<HttpServer> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut command = strata_command(PUBLISHER)?;
        command
            .arg("serve")
            .arg("--repo")
            .arg(&self.dir)
            .arg("--listen")
            .arg(addr.to_string());
        let mut service = Service::spawn("strata-publisher serve", command, log)?;
        let path = format!("/cvmfs/{}/.cvmfspublished", self.fqrn);
        service.wait_ready(
            &format!("GET http://{addr}{path}"),
            Duration::from_secs(30),
            || {
                Ok(http_get(addr, &path)
                    .map(|r| r.status == 200)
                    .unwrap_or(false))
            },
        )?;
        Ok(HttpServer {
            service,
            addr,
            fqrn: self.fqrn.clone(),
        })
    }

    /// Starts `strata-snapshotter mount` of this repository as `server` serves it, the way
    /// the end-to-end tests mount it: at `<work>/mnt` with the cache `<work>/cache`, logged
    /// to `snapshotter-mount`; with the plain mount at [`plain_mountpoint_of`] too when
    /// `plain`, and `options` added (as [`FuseMount::start_with_options`]).
    pub fn mount(
        &self,
        server: &HttpServer,
        work: &WorkDir,
        plain: bool,
        options: &[&str],
    ) -> Result<FuseMount> {
        let mountpoint = work.path().join("mnt");
        let plain = plain.then(|| plain_mountpoint_of(&mountpoint));
        FuseMount::start_with_options(
            &MountArgs {
                fqrn: &self.fqrn,
                server: &server.server_url(),
                pubkey: &self.public_key(),
                cache: &work.path().join("cache"),
                mountpoint: &mountpoint,
            },
            plain.as_deref(),
            options,
            &work.log("snapshotter-mount"),
        )
    }
}

/// Totals of the serve access log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// Successful GET answers.
    pub requests: u64,
    /// Σ body bytes of those answers.
    pub bytes: u64,
}

impl Served {
    /// What was served after `before` (an earlier total of the same log).
    pub fn since(self, before: Served) -> Served {
        Served {
            requests: self.requests.saturating_sub(before.requests),
            bytes: self.bytes.saturating_sub(before.bytes),
        }
    }
}

impl std::fmt::Display for Served {
    /// `N GETs, X.Y MB`, as the bench tables print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} GETs, {:.1} MB",
            self.requests,
            self.bytes as f64 / 1e6
        )
    }
}

/// A running `strata-publisher serve`; stopped on drop.
#[derive(Debug)]
pub struct HttpServer {
    service: Service,
    addr: SocketAddr,
    fqrn: String,
}

impl HttpServer {
    /// `http://127.0.0.1:PORT/cvmfs/@fqrn@` — the `--server` URL shape stock clients use.
    pub fn server_url(&self) -> String {
        format!("http://{}/cvmfs/@fqrn@", self.addr)
    }

    /// The repository's base URL `http://127.0.0.1:PORT/cvmfs/<fqrn>`.
    pub fn repository_url(&self) -> String {
        format!("http://{}/cvmfs/{}", self.addr, self.fqrn)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's log file.
    pub fn log(&self) -> &Path {
        self.service.log()
    }

    /// Successful GETs and bytes served so far, from the access lines of the log
    /// (`GET /cvmfs/<fqrn>/<path> <status> <bytes>`, one per request).
    ///
    /// Errors: the log has no access line at all (the contract is not met).
    pub fn served(&self) -> Result<Served> {
        let text = std::fs::read_to_string(self.log())
            .map_err(io_context(format!("read {}", self.log().display())))?;
        parse_served(&text).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: no access lines (`GET /cvmfs/<fqrn>/<path> <status> <bytes>`, one per \
                 request, as publisher/src/serve.rs documents)",
                self.log().display()
            ))
        })
    }

    /// The paths (below `/cvmfs/<fqrn>/`) of every successful GET so far, in order, from
    /// the access lines of the log.
    ///
    /// Errors: the log cannot be read.
    pub fn get_paths(&self) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(self.log())
            .map_err(io_context(format!("read {}", self.log().display())))?;
        let prefix = format!("/cvmfs/{}/", self.fqrn);
        Ok(text
            .lines()
            .filter_map(|line| {
                let line = strip_ansi(line);
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["GET", path, "200", _] => path.strip_prefix(&prefix).map(str::to_owned),
                    _ => None,
                }
            })
            .collect())
    }

    /// Successful GETs and bytes served since the total `before` ([`HttpServer::served`]).
    ///
    /// Errors: as [`HttpServer::served`].
    pub fn served_since(&self, before: Served) -> Result<Served> {
        Ok(self.served()?.since(before))
    }

    /// Stops the server now (also done on drop).
    pub fn stop(&mut self) {
        self.service.stop(Duration::from_secs(5));
    }
}

/// Sums the access lines of a serve log; `None` if there is none.
///
/// The publisher writes one line per request to stderr in the form
/// `GET /cvmfs/<fqrn>/data/ab/cd… 200 1234` (method, path, status, body bytes;
/// `publisher/src/serve.rs`); `key=value` tracing lines with `method=`, `status=` and
/// `bytes=` are accepted too.
fn parse_served(text: &str) -> Option<Served> {
    let mut total = Served::default();
    let mut seen = false;
    for line in text.lines() {
        let line = strip_ansi(line);
        let Some((method, status, bytes)) = access_line(&line) else {
            continue;
        };
        seen = true;
        if method == "GET" && status == 200 {
            total.requests += 1;
            total.bytes += bytes;
        }
    }
    seen.then_some(total)
}

/// (method, status, bytes) of one access line in either accepted form.
fn access_line(line: &str) -> Option<(String, u16, u64)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if let [method, path, status, bytes] = words.as_slice()
        && path.starts_with('/')
        && method.chars().all(|c| c.is_ascii_uppercase())
    {
        return Some((
            (*method).to_owned(),
            status.parse().ok()?,
            bytes.parse().ok()?,
        ));
    }
    let status = field(line, "status")?.parse().ok()?;
    let bytes = field(line, "bytes")?.parse().ok()?;
    let method = field(line, "method").unwrap_or_else(|| "GET".to_owned());
    Some((method, status, bytes))
}

/// The value of a `key=value` field of a log line (quotes removed), if present.
fn field(line: &str, key: &str) -> Option<String> {
    let pattern = format!("{key}=");
    let mut search = line;
    while let Some(at) = search.find(&pattern) {
        let before = search[..at].chars().last();
        let rest = &search[at + pattern.len()..];
        if before.is_none_or(|c| c == ' ' || c == '{' || c == ',') {
            let value: String = rest
                .trim_start_matches('"')
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '"' && *c != ',' && *c != '}')
                .collect();
            return Some(value);
        }
        search = rest;
    }
    None
}

/// Removes ANSI escape sequences (`ESC [ … letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A running `strata-snapshotter mount`; on drop the mount point (and the plain mount
/// point, if any) is unmounted and the process stopped.
#[derive(Debug)]
pub struct FuseMount {
    service: Service,
    mountpoint: PathBuf,
    plain: Option<PathBuf>,
}

/// Where the tests put the xattr-less second mount of `mountpoint`
/// (`--plain-mountpoint`, contract §4): the sibling `<mountpoint>-plain`.
pub fn plain_mountpoint_of(mountpoint: &Path) -> PathBuf {
    let mut name = mountpoint.file_name().unwrap_or_default().to_os_string();
    name.push("-plain");
    mountpoint.with_file_name(name)
}

/// Arguments of `strata-snapshotter mount`.
#[derive(Debug, Clone)]
pub struct MountArgs<'a> {
    /// `--fqrn`
    pub fqrn: &'a str,
    /// `--server`, e.g. `http://127.0.0.1:PORT/cvmfs/@fqrn@`
    pub server: &'a str,
    /// `--pubkey`
    pub pubkey: &'a Path,
    /// `--cache`
    pub cache: &'a Path,
    /// MOUNTPOINT
    pub mountpoint: &'a Path,
}

impl MountArgs<'_> {
    /// The full `strata-snapshotter mount …` command.
    pub fn command(&self) -> Result<Command> {
        self.command_with_plain(None)
    }

    /// The `strata-snapshotter mount …` command, with `--plain-mountpoint plain` when
    /// given (the same repository also mounted there without extended attributes).
    pub fn command_with_plain(&self, plain: Option<&Path>) -> Result<Command> {
        let mut command = strata_command(SNAPSHOTTER)?;
        if let Some(plain) = plain {
            command.arg("mount").arg("--plain-mountpoint").arg(plain);
        } else {
            command.arg("mount");
        }
        command
            .arg("--fqrn")
            .arg(self.fqrn)
            .arg("--server")
            .arg(self.server)
            .arg("--pubkey")
            .arg(self.pubkey)
            .arg("--cache")
            .arg(self.cache)
            .arg(self.mountpoint);
        Ok(command)
    }
}

impl FuseMount {
    /// Starts the mount and waits until `/proc/self/mountinfo` lists the mount point as
    /// FUSE (60 s at most; contract §4). No plain mount.
    pub fn start(args: &MountArgs<'_>, log: &Path) -> Result<FuseMount> {
        FuseMount::start_with_plain(args, None, log)
    }

    /// As [`FuseMount::start`], with `--plain-mountpoint plain` when given (created if
    /// needed); then both mount points must be listed as FUSE.
    pub fn start_with_plain(
        args: &MountArgs<'_>,
        plain: Option<&Path>,
        log: &Path,
    ) -> Result<FuseMount> {
        FuseMount::start_with_options(args, plain, &[], log)
    }

    /// As [`FuseMount::start_with_plain`], with `options` added to the command line (e.g.
    /// `--no-read-ahead`).
    pub fn start_with_options(
        args: &MountArgs<'_>,
        plain: Option<&Path>,
        options: &[&str],
        log: &Path,
    ) -> Result<FuseMount> {
        for dir in [Some(args.cache), Some(args.mountpoint), plain]
            .into_iter()
            .flatten()
        {
            std::fs::create_dir_all(dir)
                .map_err(io_context(format!("create {}", dir.display())))?;
        }
        let mut command = args.command_with_plain(plain)?;
        command.args(options);
        let mut service = Service::spawn("strata-snapshotter mount", command, log)?;
        let mountpoint = args.mountpoint.to_owned();
        let plain = plain.map(Path::to_owned);
        let what = match &plain {
            Some(p) => format!(
                "FUSE mounts at {} and {} (plain)",
                mountpoint.display(),
                p.display()
            ),
            None => format!("FUSE mount at {}", mountpoint.display()),
        };
        service.wait_ready(&what, Duration::from_secs(60), || {
            Ok(mounts::is_fuse_mounted(&mountpoint)?
                && match &plain {
                    Some(p) => mounts::is_fuse_mounted(p)?,
                    None => true,
                })
        })?;
        Ok(FuseMount {
            service,
            mountpoint,
            plain,
        })
    }

    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The plain (xattr-less) mount point, if the mount was started with one.
    pub fn plain_mountpoint(&self) -> Option<&Path> {
        self.plain.as_deref()
    }

    /// The mount process's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.service.pid()
    }

    /// Its log (stdout and stderr; with `--keeper`, the keeper's and its workers').
    pub fn log(&self) -> &Path {
        self.service.log()
    }

    /// Fails if the mount process died.
    pub fn check_running(&mut self) -> Result<()> {
        self.service.check_running()
    }

    /// Unmounts and stops the process (also done on drop).
    pub fn stop(&mut self) {
        if self.service.pid().is_some() {
            let all: Vec<PathBuf> = std::iter::once(self.mountpoint.clone())
                .chain(self.plain.clone())
                .collect();
            for m in &all {
                mounts::unmount(m);
            }
            self.service.stop(Duration::from_secs(10));
            for m in &all {
                mounts::unmount(m);
            }
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `strata-snapshotter run` (the containerd proxy snapshotter); stopped on drop.
#[derive(Debug)]
pub struct SnapshotterDaemon {
    service: Service,
    socket: PathBuf,
}

impl SnapshotterDaemon {
    /// Its log (stdout and stderr) so far.
    pub fn log_text(&self) -> Result<String> {
        let log = self.service.log();
        std::fs::read_to_string(log)
            .map_err(crate::error::io_context(format!("read {}", log.display())))
    }

    /// Starts `strata-snapshotter run --socket socket --root root --mountpoint mountpoint`
    /// and waits until the socket exists (30 s at most).
    pub fn start(
        socket: &Path,
        root: &Path,
        mountpoint: &Path,
        log: &Path,
    ) -> Result<SnapshotterDaemon> {
        SnapshotterDaemon::start_with_plain(socket, root, mountpoint, None, log)
    }

    /// As [`SnapshotterDaemon::start`], with `--plain-mountpoint plain` when given (the
    /// mount's xattr-less second session, [`FuseMount::plain_mountpoint`]).
    pub fn start_with_plain(
        socket: &Path,
        root: &Path,
        mountpoint: &Path,
        plain: Option<&Path>,
        log: &Path,
    ) -> Result<SnapshotterDaemon> {
        std::fs::create_dir_all(root).map_err(io_context(format!("create {}", root.display())))?;
        let mut command = strata_command(SNAPSHOTTER)?;
        command
            .arg("run")
            .arg("--socket")
            .arg(socket)
            .arg("--root")
            .arg(root)
            .arg("--mountpoint")
            .arg(mountpoint);
        if let Some(plain) = plain {
            command.arg("--plain-mountpoint").arg(plain);
        }
        let mut service = Service::spawn("strata-snapshotter run", command, log)?;
        let probe = socket.to_owned();
        service.wait_ready(
            &format!("snapshotter socket {}", socket.display()),
            Duration::from_secs(30),
            || Ok(probe.exists()),
        )?;
        Ok(SnapshotterDaemon {
            service,
            socket: socket.to_owned(),
        })
    }

    /// The gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Fails if the daemon died.
    pub fn check_running(&mut self) -> Result<()> {
        self.service.check_running()
    }

    /// Stops the daemon now (also done on drop).
    pub fn stop(&mut self) {
        self.service.stop(Duration::from_secs(10));
    }
}

/// Arguments of `strata-snapshotter pull`.
#[derive(Debug, Clone)]
pub struct PullArgs<'a> {
    /// `--address`: containerd's gRPC socket.
    pub address: &'a Path,
    /// `--namespace`
    pub namespace: &'a str,
    /// `--snapshotter`
    pub snapshotter: &'a str,
    /// `--mountpoint`
    pub mountpoint: &'a Path,
    /// REF as it was published, e.g. `127.0.0.1:5000/demo:1`.
    pub reference: &'a str,
}

/// Runs `strata-snapshotter pull …`; error with the log tail if it fails.
pub fn pull(args: &PullArgs<'_>, log: &Path) -> Result<()> {
    let mut command = strata_command(SNAPSHOTTER)?;
    command
        .arg("pull")
        .arg("--address")
        .arg(args.address)
        .arg("--namespace")
        .arg(args.namespace)
        .arg("--snapshotter")
        .arg(args.snapshotter)
        .arg("--mountpoint")
        .arg(args.mountpoint)
        .arg(args.reference);
    run_checked(&mut command, log, PULL_TIMEOUT).map(drop)
}

/// Runs a command expected to fail and returns its output (for wrong-input checks); at most
/// [`FAILURE_TIMEOUT`].
pub fn run_expecting_failure(command: &mut Command, log: &Path) -> Result<Output> {
    run_capture(command, log, FAILURE_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_access_lines_in_plain_and_coloured_logs() {
        let plain = "GET /cvmfs/x/.cvmfspublished 200 612\n\
                     GET /cvmfs/x/data/ab/cdC 200 10000\n\
                     HEAD /cvmfs/x/data/ab/cdC 200 0\n\
                     GET /cvmfs/x/data/00/00 404 0\n\
                     2026-11-29T09:00:00Z  INFO strata_publisher: listening on 127.0.0.1:8080\n";
        assert_eq!(
            parse_served(plain),
            Some(Served {
                requests: 2,
                bytes: 10612
            })
        );
        let log = "2026-11-29T09:00:00Z  INFO strata_publisher::serve: request method=GET path=/cvmfs/x/.cvmfspublished status=200 bytes=612\n\
                   2026-11-29T09:00:01Z  INFO strata_publisher::serve: request method=GET path=/cvmfs/x/data/ab/cdC status=200 bytes=10000\n\
                   2026-11-29T09:00:01Z  INFO strata_publisher::serve: request method=HEAD path=/cvmfs/x/data/ab/cdC status=200 bytes=0\n\
                   2026-11-29T09:00:02Z  INFO strata_publisher::serve: request method=GET path=/cvmfs/x/data/00/00 status=404 bytes=9\n\
                   \u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[3mmethod\u{1b}[0m\u{1b}[2m=\u{1b}[0mGET \u{1b}[3mstatus\u{1b}[0m\u{1b}[2m=\u{1b}[0m200 \u{1b}[3mbytes\u{1b}[0m\u{1b}[2m=\u{1b}[0m5\n\
                   unrelated line\n";
        assert_eq!(
            parse_served(log),
            Some(Served {
                requests: 3,
                bytes: 10617
            })
        );
        assert_eq!(parse_served("starting\nlistening on 127.0.0.1:1\n"), None);
    }

    #[test]
    fn plain_mountpoint_is_the_dash_plain_sibling() {
        assert_eq!(
            plain_mountpoint_of(Path::new("/w/mnt")),
            PathBuf::from("/w/mnt-plain")
        );
        let args = MountArgs {
            fqrn: "f",
            server: "http://s/cvmfs/@fqrn@",
            pubkey: Path::new("/k.pub"),
            cache: Path::new("/c"),
            mountpoint: Path::new("/w/mnt"),
        };
        let words = |c: Command| -> Vec<String> {
            c.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let plain = Path::new("/w/mnt-plain");
        let with = words(args.command_with_plain(Some(plain)).expect("command"));
        assert_eq!(&with[..3], ["mount", "--plain-mountpoint", "/w/mnt-plain"]);
        assert_eq!(with.last().map(String::as_str), Some("/w/mnt"));
        let without = words(args.command().expect("command"));
        assert_eq!(without[0], "mount");
        assert!(!without.iter().any(|w| w == "--plain-mountpoint"));
        assert_eq!(with.len(), without.len() + 2);
    }

    #[test]
    fn field_matches_whole_keys_only() {
        assert_eq!(field("a xbytes=1 bytes=2", "bytes").as_deref(), Some("2"));
        assert_eq!(
            field("path=\"/a b\" status=200", "status").as_deref(),
            Some("200")
        );
        assert_eq!(field("{bytes=7}", "bytes").as_deref(), Some("7"));
        assert_eq!(field("nothing", "bytes"), None);
    }
}
