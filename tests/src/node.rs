//! A Strata containerd node as the benches start one: `strata-snapshotter mount` (main and
//! plain mount, as deployed) on its own cache, a private containerd with the proxy plugin,
//! `strata-snapshotter run`; and, on it, `strata-snapshotter pull` and `ctr run`, timed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::binaries::SNAPSHOTTER;
use crate::containerd::{Containerd, NAMESPACE, SNAPSHOTTER_NAME};
use crate::error::Result;
use crate::measure::{Timed, run_timed};
use crate::strata::{FuseMount, MountArgs, SnapshotterDaemon, plain_mountpoint_of, strata_command};
use crate::workdir::WorkDir;

/// Longest a pull or a container run may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Where a node gets its repository.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Repository name.
    pub fqrn: &'a str,
    /// `--server` URL (`http://HOST:PORT/cvmfs/@fqrn@`).
    pub server_url: &'a str,
    /// The repository's master public key.
    pub pubkey: &'a Path,
}

/// A running node. Drop order (fields top to bottom): containerd (tasks, shims), the
/// snapshotter, the mount.
#[derive(Debug)]
pub struct StrataNode {
    /// The private containerd.
    pub containerd: Containerd,
    /// `strata-snapshotter run`.
    pub snapshotter: SnapshotterDaemon,
    /// `strata-snapshotter mount`.
    pub mount: FuseMount,
    /// The main mount point.
    pub mountpoint: PathBuf,
    /// The mount's cache directory.
    pub cache: PathBuf,
    label: String,
}

impl StrataNode {
    /// Starts a node named `label` in `work` (its own cache, mount points, containerd and
    /// snapshotter root), the mount with the extra `mount_options`.
    ///
    /// Errors: any of the three failing to start (with its log tail).
    pub fn start(
        work: &WorkDir,
        label: &str,
        source: Source<'_>,
        mount_options: &[&str],
    ) -> Result<StrataNode> {
        let dir = work.subdir(&format!("node-{label}"))?;
        let mountpoint = dir.join("mnt");
        let cache = dir.join("cache");
        let plain = plain_mountpoint_of(&mountpoint);
        let mount = FuseMount::start_with_options(
            &MountArgs {
                fqrn: source.fqrn,
                server: source.server_url,
                pubkey: source.pubkey,
                cache: &cache,
                mountpoint: &mountpoint,
            },
            Some(&plain),
            mount_options,
            &work.log(&format!("mount-{label}")),
        )?;
        let socket = dir.join("snapshotter.sock");
        // Listening before containerd starts, as deployed (see `scenario::Stack`).
        let snapshotter = SnapshotterDaemon::start_with_plain(
            &socket,
            &dir.join("snapshotter-root"),
            &mountpoint,
            Some(&plain),
            &work.log(&format!("snapshotter-run-{label}")),
        )?;
        let containerd = Containerd::start(
            &work.subdir(&format!("node-{label}/containerd"))?,
            &work.log(&format!("containerd-{label}")),
            &work.log(&format!("ctr-{label}")),
            &socket,
        )?;
        Ok(StrataNode {
            containerd,
            snapshotter,
            mount,
            mountpoint,
            cache,
            label: label.to_owned(),
        })
    }

    /// `strata-snapshotter pull REFERENCE` into this node's containerd, timed.
    ///
    /// Errors: the pull failing (with its log tail).
    pub fn pull(&self, work: &WorkDir, reference: &str) -> Result<Timed> {
        let mut command = strata_command(SNAPSHOTTER)?;
        command
            .arg("pull")
            .arg("--address")
            .arg(self.containerd.socket())
            .args(["--namespace", NAMESPACE, "--snapshotter", SNAPSHOTTER_NAME])
            .arg("--mountpoint")
            .arg(&self.mountpoint)
            .arg(reference);
        run_timed(
            &mut command,
            &work.log(&format!("pull-{}", self.label)),
            STEP_TIMEOUT,
        )
    }

    /// `ctr run --rm --snapshotter strata REFERENCE <id> ARGS…`, timed.
    ///
    /// Errors: the container failing (with the log tail).
    pub fn run(&self, work: &WorkDir, reference: &str, id: &str, args: &[String]) -> Result<Timed> {
        ctr_run(
            &self.containerd,
            SNAPSHOTTER_NAME,
            reference,
            id,
            args,
            work,
        )
    }
}

/// `ctr run --rm --snapshotter SNAPSHOTTER REFERENCE <id> ARGS…` on `containerd`, timed.
///
/// Errors: the container failing (with the log tail).
pub fn ctr_run(
    containerd: &Containerd,
    snapshotter: &str,
    reference: &str,
    id: &str,
    args: &[String],
    work: &WorkDir,
) -> Result<Timed> {
    let mut command: Command = containerd.ctr();
    command
        .args(["run", "--rm", "--snapshotter", snapshotter, reference])
        .arg(id)
        .args(args);
    run_timed(&mut command, &work.log("ctr-run"), STEP_TIMEOUT)
}

/// What a native start (containerd's own pull into overlayfs, then a run) took.
#[derive(Debug)]
pub struct NativeStart {
    /// `ctr images pull --plain-http`.
    pub pull: Timed,
    /// `ctr run --rm` of the workload.
    pub run: Timed,
    /// What the registry served meanwhile.
    pub received: crate::strata::Served,
}

/// The native path: a fresh private containerd (named `label` in `work`) pulls `reference`
/// from `registry` through `via` (a relay in front of it, or the registry itself) into its
/// overlayfs snapshotter and runs `args` in it, timed; the containerd is stopped after.
///
/// Errors: containerd failing to start, the pull or the container failing.
pub fn native_start(
    work: &WorkDir,
    label: &str,
    registry: &crate::registry::Registry,
    via: std::net::SocketAddr,
    reference: &str,
    args: &[String],
) -> Result<NativeStart> {
    let relayed = reference.replacen(&registry.host(), &via.to_string(), 1);
    let containerd = Containerd::start(
        &work.subdir(&format!("containerd-{label}"))?,
        &work.log(&format!("containerd-{label}")),
        &work.log(&format!("ctr-{label}")),
        &work.path().join("no-proxy-snapshotter.sock"),
    )?;
    let before = crate::measure::registry_served(registry.log())?;
    let pull = run_timed(
        containerd.ctr().args([
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "overlayfs",
            &relayed,
        ]),
        &work.log(&format!("ctr-{label}")),
        STEP_TIMEOUT,
    )?;
    let run = ctr_run(&containerd, "overlayfs", &relayed, label, args, work)?;
    let after = crate::measure::registry_served(registry.log())?;
    Ok(NativeStart {
        pull,
        run,
        received: crate::strata::Served {
            requests: after.0 - before.0,
            bytes: after.1 - before.1,
        },
    })
}
