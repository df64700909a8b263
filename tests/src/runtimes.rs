//! The container runtimes Debian 12 does not ship, as `scripts/install-runtimes` installs
//! them from newer Debian suites under [`runtimes_dir`]: containerd 1.7 and 2.x (unpacked
//! `.deb`s that run on Debian 12), and a `sid` root with Apptainer and podman (which need a
//! newer glibc), entered with bubblewrap ([`SidSandbox`]).
//!
//! A runtime that is not installed is an error naming the script, never a skip.
//!
//! The tests of the runtimes in the sid root start alike: [`sid_sandbox`] (prerequisites,
//! the sandbox), then [`publish_and_mount`] (a repository published, served and mounted).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::binaries::{check_prerequisites, which};
use crate::containerd::Release;
use crate::error::{Error, Result};
use crate::steps::Steps;
use crate::strata::{FuseMount, HttpServer, Repo};
use crate::workdir::WorkDir;

/// Where `scripts/install-runtimes` puts the runtimes unless `STRATA_RUNTIMES_DIR` says
/// otherwise (the script reads the same variable).
pub const DEFAULT_RUNTIMES_DIR: &str = "/opt/strata/runtimes";

/// The stamp file the script writes into each finished runtime directory.
const STAMP: &str = ".strata-installed";

/// The runtimes directory: `STRATA_RUNTIMES_DIR` or [`DEFAULT_RUNTIMES_DIR`].
pub fn runtimes_dir() -> PathBuf {
    std::env::var_os("STRATA_RUNTIMES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIMES_DIR))
}

/// `<runtimes>/<name>`, which `scripts/install-runtimes` must have finished (its stamp file
/// is there).
///
/// Errors: [`Error::Prerequisite`] naming the directory and the script.
pub fn installed(name: &str) -> Result<PathBuf> {
    let dir = runtimes_dir().join(name);
    if !dir.join(STAMP).is_file() {
        return Err(Error::Prerequisite(format!(
            "{} (no {STAMP}): run scripts/install-runtimes (scripts/install-deps does)",
            dir.display()
        )));
    }
    Ok(dir)
}

/// The sid root with Apptainer and podman, entered with `bwrap`: a `pivot_root` sandbox
/// (Apptainer refuses to start in a plain chroot), the root read-only, the host's `/dev`,
/// `/sys` and network, a fresh `/proc` (own PID namespace) and `/tmp`, an empty environment but `HOME` and `PATH`, and host directories
/// bound where the runtimes expect them (e.g. a Strata mount at `/cvmfs/<fqrn>`).
#[derive(Debug, Clone)]
pub struct SidSandbox {
    root: PathBuf,
    /// (host directory, path inside, writable).
    binds: Vec<(PathBuf, String, bool)>,
}

/// The sid root's directory name under [`runtimes_dir`].
pub const SID_ROOT: &str = "sid-root";

impl SidSandbox {
    /// The installed sid root, with no bind yet.
    ///
    /// Errors: [`Error::Prerequisite`] if the root or `bwrap` is not installed.
    pub fn new() -> Result<SidSandbox> {
        let root = installed(SID_ROOT)?;
        if which("bwrap").is_none() {
            return Err(Error::Prerequisite(
                "bwrap (Debian package bubblewrap; scripts/install-deps installs it)".into(),
            ));
        }
        Ok(SidSandbox {
            root,
            binds: Vec::new(),
        })
    }

    /// The root directory on the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Binds the host directory `host` read-only at `inside`, an absolute path whose top
    /// directory exists in the root (`/cvmfs`); the top directory becomes a tmpfs and the
    /// parents below it are made there, mode 0755, so that unprivileged users reach `inside`.
    pub fn bind(mut self, host: &Path, inside: &str) -> SidSandbox {
        self.binds.push((host.to_owned(), inside.to_owned(), false));
        self
    }

    /// As [`SidSandbox::bind`], writable: for a runtime's state that must outlive one
    /// command (podman's storage under `/tmp/…`, its `/run`). Below `/tmp` (already a tmpfs)
    /// only the missing parents are made.
    pub fn bind_rw(mut self, host: &Path, inside: &str) -> SidSandbox {
        self.binds.push((host.to_owned(), inside.to_owned(), true));
        self
    }

    /// `bwrap … program args…`: runs `program` inside the sandbox as root, in `/`.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("bwrap");
        command.arg("--ro-bind").arg(&self.root).arg("/");
        command.args(["--dev-bind", "/dev", "/dev", "--proc", "/proc"]);
        command.args(["--bind", "/sys", "/sys"]);
        command.args(["--perms", "1777", "--tmpfs", "/tmp"]);
        let mut made: Vec<String> = vec!["/tmp".to_owned()];
        for (host, inside, writable) in &self.binds {
            // The parents: the top one (which must exist in the read-only root, as `/cvmfs`
            // does) becomes a tmpfs, the others directories in it.
            let mut parent = String::new();
            let components: Vec<&str> = inside.split('/').filter(|c| !c.is_empty()).collect();
            for (i, component) in components
                .iter()
                .take(components.len().saturating_sub(1))
                .enumerate()
            {
                parent.push('/');
                parent.push_str(component);
                if made.contains(&parent) {
                    continue;
                }
                let kind = if i == 0 { "--tmpfs" } else { "--dir" };
                command.args(["--perms", "0755", kind, &parent]);
                made.push(parent.clone());
            }
            let bind = if *writable { "--bind" } else { "--ro-bind" };
            command.arg(bind).arg(host).arg(inside);
        }
        command.args(["--chdir", "/", "--unshare-pid", "--die-with-parent"]);
        // Only what a login would set: the test's own environment stays outside.
        command.args(["--clearenv", "--setenv", "HOME", "/root"]);
        command.args([
            "--setenv",
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ]);
        command.arg(program).args(args);
        command
    }

    /// As [`SidSandbox::command`], run as the unprivileged user `uid:gid` (no supplementary
    /// groups, `HOME=/tmp`), the way a batch job runs.
    pub fn command_as(&self, uid: u32, gid: u32, program: &str, args: &[&str]) -> Command {
        let (uid, gid) = (uid.to_string(), gid.to_string());
        let mut full = vec![
            "--reuid",
            &uid,
            "--regid",
            &gid,
            "--clear-groups",
            "env",
            "HOME=/tmp",
            program,
        ];
        full.extend_from_slice(args);
        self.command("setpriv", &full)
    }
}

/// The containerd release directories `scripts/install-runtimes` unpacks, by the name the
/// deploy guide uses for their config snippet (`deploy/containerd/config-<name>.toml`).
pub const CONTAINERD_RELEASES: &[(&str, &str)] =
    &[("1.7", "containerd-1.7"), ("2.x", "containerd-2")];

/// The variable naming the containerd release the snapshotter's containerd tests run
/// against (`1.6`, `1.7`, `2.x`; unset: `1.6`, Debian 12's); `scripts/test` runs them once
/// per release.
pub const CONTAINERD_RELEASE_VAR: &str = "STRATA_CONTAINERD_RELEASE";

/// The release [`CONTAINERD_RELEASE_VAR`] names, installed.
///
/// Errors: as [`containerd_release`].
pub fn containerd_release_from_env() -> Result<Release> {
    let name = std::env::var(CONTAINERD_RELEASE_VAR).unwrap_or_else(|_| "1.6".to_owned());
    containerd_release(&name)
}

/// The containerd release `name`: `1.6` is Debian 12's (on `PATH`), `1.7` and `2.x` are
/// `<runtimes>/containerd-…/usr/bin` (`containerd`, `ctr`, `containerd-shim-runc-v2`).
///
/// Errors: [`Error::Prerequisite`] for a release that is not installed or not known.
pub fn containerd_release(name: &str) -> Result<Release> {
    if name == "1.6" {
        return Ok(Release {
            name: name.to_owned(),
            bin_dir: None,
            transfer_service_cri: false,
        });
    }
    let dir = CONTAINERD_RELEASES
        .iter()
        .find(|(release, _)| *release == name)
        .map(|(_, dir)| *dir)
        .ok_or_else(|| {
            Error::Prerequisite(format!("containerd release {name} (known: 1.6, 1.7, 2.x)"))
        })?;
    Ok(Release {
        name: name.to_owned(),
        bin_dir: Some(installed(dir)?.join("usr/bin")),
        transfer_service_cri: false,
    })
}

/// The first steps of a test of `runtime` in the sid root (podman, Apptainer): the
/// prerequisites ([`check_prerequisites`]), then the sandbox ([`SidSandbox::new`]).
pub fn sid_sandbox(steps: &mut Steps, runtime: &str) -> Result<SidSandbox> {
    steps.run(
        "check prerequisites (root, /dev/fuse, tools, built binaries)",
        check_prerequisites,
    )?;
    steps.run(
        &format!("the sid root with {runtime} (scripts/install-runtimes)"),
        SidSandbox::new,
    )
}

/// A repository published, served and mounted, for a runtime to read images from. Drop
/// order (fields top to bottom): the mount, the server, the repository.
#[derive(Debug)]
pub struct MountedRepo {
    /// `strata-snapshotter mount` at `<work>/mnt` ([`Repo::mount`]).
    pub mount: FuseMount,
    /// `strata-publisher serve`.
    pub server: HttpServer,
    /// The repository under `<work>/repo`.
    pub repo: Repo,
}

/// The steps after [`sid_sandbox`]: `strata-publisher init` of `fqrn` under `<work>/repo`,
/// `ingest --name NAME REFERENCE` of each of `images` (name, OCI reference), `serve`, and
/// `strata-snapshotter mount` with `options` (e.g. `--max-ttl 1s`) at `<work>/mnt`.
pub fn publish_and_mount(
    steps: &mut Steps,
    work: &WorkDir,
    fqrn: &str,
    images: &[(&str, String)],
    options: &[&str],
) -> Result<MountedRepo> {
    let repo = steps.run(&format!("strata-publisher init --fqrn {fqrn}"), || {
        Repo::init(&work.path().join("repo"), fqrn, &work.log("publisher-init"))
    })?;
    for (name, reference) in images {
        steps.run(&format!("strata-publisher ingest --name {name}"), || {
            repo.ingest(&["--name", name, reference], &work.log("publisher-ingest"))
        })?;
    }
    let server = steps.run("strata-publisher serve", || {
        repo.serve(&work.log("publisher-serve"))
    })?;
    let flags: String = options.iter().map(|o| format!(" {o}")).collect();
    let mount = steps.run(&format!("strata-snapshotter mount{flags} (FUSE)"), || {
        repo.mount(&server, work, false, options)
    })?;
    Ok(MountedRepo {
        mount,
        server,
        repo,
    })
}
