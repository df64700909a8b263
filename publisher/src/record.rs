//! Recording a start on the publishing host (`strata-publisher startup --record`): no node
//! needed. The published revision is served on a loopback port, mounted with
//! `strata-snapshotter mount --trace` (the same binary nodes run; found next to this one, on
//! `PATH`, or given), and the image's `Entrypoint` + `Cmd` — or the operator's command — runs
//! in the image root on the mount inside a sandbox: `bwrap` with every namespace unshared
//! (no network), the root read-only, fresh `/dev`, `/proc` and a `/tmp` tmpfs (also in an
//! image that has no such directories, as many minimal images do not: the sandbox's root
//! is a tmpfs holding the image root's top-level entries, bound read-only), the
//! config's `Env` and `WorkingDir`, stopped after a timeout (a service never exits: what it
//! read by then is its start). The trace is what the sandboxed start read, in first-read
//! order; the caller publishes it ([`crate::startup::publish_startup`]).
//!
//! The trace names `.flat` paths (the image root); the packs hold objects, which are the
//! same whichever path reads them, so a node that starts the image through its layers
//! (containerd) gets them from the packs as well.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use namespace::{ImageName, Platform, paths};

use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::singularity::RunConfig;

/// The `bwrap` arguments that put the top-level entries of the image root `root` into
/// the sandbox's root, read-only: `--symlink` for a symbolic link (`/bin` → `usr/bin`),
/// `--ro-bind` for anything else. `/dev`, `/proc` and `/tmp` are left out: the sandbox
/// makes its own. Blocking (lists a directory of the mount).
///
/// # Errors
/// [`Error::Io`] naming the root when it cannot be listed.
fn root_binds(root: &Path) -> Result<Vec<std::ffi::OsString>> {
    let io = |e| Error::io(format!("listing the image root {}", root.display()), e);
    let mut args = Vec::new();
    for entry in std::fs::read_dir(root).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        if ["dev", "proc", "tmp"].iter().any(|n| name == *n) {
            continue;
        }
        let inside = Path::new("/").join(&name).into_os_string();
        if entry.file_type().map_err(io)?.is_symlink() {
            let target = std::fs::read_link(entry.path()).map_err(io)?;
            args.extend(["--symlink".into(), target.into_os_string(), inside]);
        } else {
            args.extend(["--ro-bind".into(), entry.path().into_os_string(), inside]);
        }
    }
    Ok(args)
}

/// `PATH` of the sandbox when the image config sets none (the OCI runtime default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a start is recorded.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// The command to run (empty: the image's `Entrypoint` + `Cmd`).
    pub command: Vec<String>,
    /// The start is stopped after this long.
    pub timeout: Duration,
    /// `strata-snapshotter` to mount with (default: next to this program, else `PATH`).
    pub snapshotter: Option<PathBuf>,
    /// The platform to run (default: the image's only platform, else linux/amd64).
    pub platform: Option<Platform>,
}

/// A recorded start.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The trace text (`namespace::trace`: the paths and chunks read).
    pub trace: String,
    /// What ran.
    pub command: Vec<String>,
    /// How it ended: `exit status: 0`, or `stopped after 60 s`.
    pub ended: String,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Records the start of `reference` (as published in the repository in `dir`).
///
/// # Errors
/// [`Error::Usage`] for an image that is not published, a platform it lacks, or an image
/// with nothing to run and no command; [`Error::Io`] naming what failed to start (the
/// server, the mount — with its log — or `bwrap`).
pub async fn record(dir: &Path, reference: &str, options: &RecordOptions) -> Result<Recorded> {
    let public = ImageName::parse(reference)?.public_path();
    let repo = Repo::open(dir)?;
    let fqrn = repo.settings.fqrn.clone();
    let scratch = tempfile::tempdir_in(repo.tmp_dir()?)
        .map_err(|e| Error::io("creating a scratch directory in DIR/tmp", e))?;
    let (mnt, cache) = (scratch.path().join("mnt"), scratch.path().join("cache"));
    let trace = scratch.path().join("start.trace");
    let mount_log = scratch.path().join("mount.log");
    for d in [&mnt, &cache] {
        std::fs::create_dir_all(d)
            .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
    }

    // The revision, served on a loopback port for the mount only.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::io("binding a loopback port", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the bound address", e))?;
    let app = crate::serve::quiet_router(&dir.join("srv"), &fqrn);
    let server = tokio::spawn(async move {
        axum::serve(crate::serve::no_delay(listener), app.into_make_service()).await
    });

    let snapshotter = snapshotter_binary(options.snapshotter.as_deref());
    let log = std::fs::File::create(&mount_log)
        .map_err(|e| Error::io(format!("creating {}", mount_log.display()), e))?;
    let mut mount = tokio::process::Command::new(&snapshotter)
        .arg("mount")
        .args(["--fqrn", &fqrn])
        .arg("--server")
        .arg(format!("http://{addr}/cvmfs/@fqrn@"))
        .arg("--pubkey")
        .arg(repo.key_path("pub"))
        .arg("--cache")
        .arg(&cache)
        .arg("--trace")
        .arg(&trace)
        .arg("--no-prefetch")
        .arg(&mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io(format!("starting {} mount", snapshotter.display()), e))?;
    let ran = async {
        wait_mounted(&mut mount, &mnt, &mount_log).await?;
        run_start(&mnt, &public, options).await
    }
    .await;
    stop_mount(&mut mount, &mnt).await;
    server.abort();
    let (command, ended, elapsed) = ran?;
    let trace = std::fs::read_to_string(&trace)
        .map_err(|e| Error::io(format!("reading the trace {}", trace.display()), e))?;
    Ok(Recorded {
        trace,
        command,
        ended,
        elapsed,
    })
}

/// Finds the image root and config on the mount `mnt` and runs the start in the sandbox.
async fn run_start(
    mnt: &Path,
    public: &str,
    options: &RecordOptions,
) -> Result<(Vec<String>, String, Duration)> {
    let platforms = mnt
        .join(paths::join(&paths::metadata_dir(public)))
        .join(paths::PLATFORMS);
    let published: Vec<String> = match std::fs::read_dir(&platforms) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect(),
        Err(e) => {
            return Err(Error::Usage(format!(
                "{public} is not published ({}: {e})",
                platforms.display()
            )));
        }
    };
    let platform_dir =
        crate::startup::pick_platform(public, &published, options.platform.as_ref())?;
    let pdir = platforms.join(&platform_dir);
    let config_path = pdir.join(paths::CONFIG_JSON);
    let config = std::fs::read(&config_path)
        .map_err(|e| Error::io(format!("reading {}", config_path.display()), e))?;
    let run = RunConfig::from_image_config(&config)?;
    let command: Vec<String> = if options.command.is_empty() {
        run.entrypoint
            .clone()
            .unwrap_or_default()
            .into_iter()
            .chain(run.cmd.clone().unwrap_or_default())
            .collect()
    } else {
        options.command.clone()
    };
    if command.is_empty() {
        return Err(Error::Usage(format!(
            "{public} has neither Entrypoint nor Cmd: give the command to record after `--`"
        )));
    }
    let root = pdir.join(paths::ROOTFS);
    let root = std::fs::canonicalize(&root)
        .map_err(|e| Error::io(format!("resolving {}", root.display()), e))?;
    let binds = tokio::task::spawn_blocking(move || root_binds(&root))
        .await
        .map_err(|e| Error::io("listing the image root", std::io::Error::other(e)))??;
    let mut sandbox = tokio::process::Command::new("bwrap");
    sandbox
        .args(["--tmpfs", "/"])
        .args(&binds)
        .args(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"])
        .args(["--remount-ro", "/"])
        .args([
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
        ]);
    let env = run.env.clone().unwrap_or_default();
    if !env.iter().any(|kv| kv.starts_with("PATH=")) {
        sandbox.args(["--setenv", "PATH", DEFAULT_PATH]);
    }
    if !env.iter().any(|kv| kv.starts_with("HOME=")) {
        sandbox.args(["--setenv", "HOME", "/root"]);
    }
    for kv in &env {
        if let Some((k, v)) = kv.split_once('=') {
            sandbox.args(["--setenv", k, v]);
        }
    }
    let workdir = run.working_dir.clone().filter(|w| !w.is_empty());
    sandbox
        .args(["--chdir", workdir.as_deref().unwrap_or("/")])
        .arg("--")
        .args(&command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    tracing::info!(image = public, platform = %platform_dir, command = ?command, timeout = ?options.timeout, "recording the start in a sandbox");
    let started = Instant::now();
    let mut child = sandbox
        .spawn()
        .map_err(|e| Error::io("starting bwrap (Debian package bubblewrap)", e))?;
    let ended = match tokio::time::timeout(options.timeout, child.wait()).await {
        Ok(Ok(status)) => status.to_string(),
        Ok(Err(e)) => return Err(Error::io("waiting for the sandbox", e)),
        Err(_) => {
            let _ = child.kill().await;
            format!(
                "stopped after {}",
                humantime::format_duration(options.timeout)
            )
        }
    };
    Ok((command, ended, started.elapsed()))
}

/// `strata-snapshotter`: `given`, else next to this program, else from `PATH`.
fn snapshotter_binary(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_owned();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("strata-snapshotter")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("strata-snapshotter"))
}

/// Whether a FUSE mount is listed at `mnt` (an unreadable mount table: not mounted).
fn fuse_mounted(mnt: &Path) -> bool {
    catalog::mountinfo::is_fuse_mounted(mnt).unwrap_or(false)
}

/// Waits (30 s at most) until the mount is up; an error with the mount's log if it exits
/// first or never mounts.
async fn wait_mounted(mount: &mut tokio::process::Child, mnt: &Path, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if fuse_mounted(mnt) {
            return Ok(());
        }
        let exited = mount
            .try_wait()
            .map_err(|e| Error::io("waiting for the mount", e))?;
        if exited.is_some() || Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            return Err(Error::io(
                format!("mounting the revision at {}", mnt.display()),
                std::io::Error::other(format!(
                    "{}; its log ends:\n{}",
                    exited.map_or("no mount within 30 s".into(), |s| format!(
                        "exited with {s}"
                    )),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM to the mount, then (after 20 s) SIGKILL and a lazy unmount.
async fn stop_mount(mount: &mut tokio::process::Child, mnt: &Path) {
    if let Some(pid) = mount.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(20), mount.wait())
        .await
        .is_err()
    {
        let _ = mount.kill().await;
    }
    if fuse_mounted(mnt) {
        let _ = nix::mount::umount2(mnt, nix::mount::MntFlags::MNT_DETACH);
    }
}
