//! The main job against every containerd release the deploy guide documents, each started
//! with its own config snippet from `deploy/containerd/` (so the snippets are tested, CRI
//! section included: containerd must start with it): Debian 12's 1.6, and 1.7 and 2.x from
//! `scripts/install-runtimes`. Publish → mount → `strata-snapshotter pull` (lazy) → `ctr run`
//! of the Python workload, whiteouts and the opaque directory inside the container,
//! committed snapshots, no layer blob in the content store; and the CRI path: the kubelet's
//! `PullImage` through the snippet's CRI settings makes every layer a remote snapshot, and
//! the workload runs from the CRI-pulled image — on 2.x both ways CRI pulls: the local pull
//! the snippet's `disable_snapshot_annotations = false` selects, and the Transfer Service
//! its documented alternative selects.

use anyhow::{Result, ensure};
use tests::runtimes::containerd_release;
use tests::scenario::{Published, Stack};
use tests::steps::Steps;
use tests::workdir::WorkDir;

use super::in_workdir;

#[test]
fn main_job_containerd_1_6_deploy_snippet() {
    in_workdir("containerd-1.6", |work| {
        main_job(work, "1.6", "1.6.", CriPull::Local)
    });
}

#[test]
fn main_job_containerd_1_7_deploy_snippet() {
    in_workdir("containerd-1.7", |work| {
        main_job(work, "1.7", "1.7.", CriPull::Local)
    });
}

#[test]
fn main_job_containerd_2_x_deploy_snippet() {
    in_workdir("containerd-2.x", |work| {
        main_job(work, "2.x", "2.", CriPull::LocalFallback)
    });
}

/// The 2.x snippet's documented alternative: without `disable_snapshot_annotations`, CRI
/// pulls go through the Transfer Service (containerd ≥ 2.1) and its `unpack_config`.
#[test]
fn main_job_containerd_2_x_transfer_service_cri_pull() {
    in_workdir("containerd-2.x-transfer", |work| {
        main_job(work, "2.x", "2.", CriPull::TransferService)
    });
}

/// Which way containerd's CRI plugin pulls, as its log shows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum CriPull {
    /// 1.6 and 1.7: CRI has only the local (client) pull.
    Local,
    /// 2.1+: the snippet's `disable_snapshot_annotations = false` makes CRI say it falls
    /// back from the Transfer Service to the local pull.
    LocalFallback,
    /// 2.1+ without that setting: the Transfer Service pulls, with no fallback logged.
    TransferService,
}

/// What containerd ≥ 2.1 logs when a CRI setting makes it pull without the Transfer Service.
const LOCAL_PULL_FALLBACK: &str = "Falling back to local image pull mode";

/// The main job with containerd `release`, whose server must report a version starting
/// with `version_prefix`, and whose CRI plugin pulls the way `cri_pull` says.
fn main_job(work: &WorkDir, release: &str, version_prefix: &str, cri_pull: CriPull) -> Result<()> {
    let mut steps = Steps::new();
    let release = steps.run(&format!("containerd {release} installed"), || {
        let mut release = containerd_release(release)?;
        release.transfer_service_cri = cri_pull == CriPull::TransferService;
        Ok::<_, tests::error::Error>(release)
    })?;
    let published = Published::up(work, &mut steps)?;
    // Nothing pulled yet: the CRI pull below is the image's first.
    let stack = Stack::attach_unpulled(published, work, &mut steps, Some(&release))?;
    let version = stack.containerd.version()?;
    println!(
        "    containerd {version} with {}",
        release.snippet_path().display()
    );
    ensure!(
        version.trim_start_matches('v').starts_with(version_prefix),
        "containerd {} reports server version {version:?}",
        release.name
    );
    let loaded = steps.run(
        "ctr plugins ls: the snippet's plugins loaded (strata, CRI, transfer)",
        || snippet_plugins_loaded(&stack),
    )?;
    println!("    {}", loaded.join(", "));
    let out = steps.run(
        "CRI PullImage first (the kubelet's pull, k8s.io): layers remote via the CRI labels, no blob fetched; ctr run",
        || stack.check_cri_pull(),
    )?;
    print!("    workload in the CRI-pulled image printed {out}");
    let log = stack.containerd.log_text()?;
    let fell_back = log.contains(LOCAL_PULL_FALLBACK);
    ensure!(
        fell_back == (cri_pull == CriPull::LocalFallback),
        "CRI pull path {cri_pull:?}, but containerd's log {} {LOCAL_PULL_FALLBACK:?}",
        if fell_back { "says" } else { "does not say" }
    );
    stack.pull_lazily(work, &mut steps)?;
    let out = steps.run("ctr run: python3 imports hashlib+json", || {
        stack.check_workload()
    })?;
    print!("    workload printed {out}");
    steps.run(
        "whiteouts and opaque directory inside the container",
        || stack.check_whiteouts(),
    )?;
    steps.run(
        "snapshots committed, no layer blob in the content store",
        || {
            stack.check_snapshots()?;
            stack.check_no_layer_content()
        },
    )?;
    println!("steps:\n{}", steps.summary());
    Ok(())
}

/// The plugins the deploy snippet configures, as `ctr plugins ls` lists them (type, id,
/// status): the `strata` proxy snapshotter, the CRI plugin, and on 2.x the CRI images and
/// runtime plugins and the local Transfer Service. Each must be there with status `ok` (a
/// snippet containerd rejects makes its plugin fail, not containerd). Returns `type.id`s.
fn snippet_plugins_loaded(stack: &Stack) -> Result<Vec<String>> {
    let output = stack.containerd.ctr_checked(&["plugins", "ls"])?;
    let text = String::from_utf8_lossy(&output.stdout);
    let plugins: Vec<(&str, &str, &str)> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some((*fields.first()?, *fields.get(1)?, *fields.last()?))
        })
        .collect();
    let wanted = |kind: &str, id: &str| {
        (kind == "io.containerd.snapshotter.v1" && id == "strata")
            || (kind == "io.containerd.grpc.v1" && id == "cri")
            || kind == "io.containerd.cri.v1"
            || kind == "io.containerd.transfer.v1"
    };
    let mut loaded = Vec::new();
    for (kind, id, status) in plugins.iter().filter(|(k, i, _)| wanted(k, i)) {
        ensure!(
            *status == "ok",
            "plugin {kind}.{id} has status {status}; ctr plugins ls:\n{text}"
        );
        loaded.push(format!("{kind}.{id}"));
    }
    for required in [
        "io.containerd.snapshotter.v1.strata",
        "io.containerd.grpc.v1.cri",
    ] {
        ensure!(
            loaded.iter().any(|l| l == required),
            "ctr plugins ls does not list {required}:\n{text}"
        );
    }
    Ok(loaded)
}
