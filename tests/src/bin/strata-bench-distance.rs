//! `strata-bench-distance`: cold reads at a distance, side by side in one run.
//!
//! The node is rarely next to the server. This bench puts a [`LatencyRelay`] (a TCP relay
//! that adds a one-way delay in each direction, since this project's kernels have no
//! `netem`) in front of `strata-publisher serve` and one in front of the registry, and for
//! each round-trip time of `BENCH_RTT_MS` (default `0,20,50`) measures:
//!
//! * **native**: a fresh private containerd, `ctr images pull --plain-http` through the
//!   registry relay (download and unpack into overlayfs), then `ctr run --rm` of the
//!   workload;
//! * **Strata**: `strata-snapshotter mount` with an empty cache through the serve relay,
//!   then the workload run in the image's root on the mount (`chroot
//!   <mount>/<registry>/<repository>:<tag>`), cold, then again warm; and once more cold
//!   with `--no-read-ahead` (demand fetches only), on another empty cache;
//! * **stock `cvmfs2`** (when installed; `BENCH_STOCK=0` leaves it out, `BENCH_STOCK=1`
//!   requires it): the same repository through the same relay, mounted with a private
//!   config and an empty cache, the same cold workload.
//!
//! The image is [`PYANA`]: bookworm minbase, python3, then numpy and scipy in a layer of
//! their own (built with debootstrap and apt, cached under `<target>/strata-bench-images`).
//! The workload imports numpy and scipy.linalg and prints a determinant; every run must
//! print the same line.
//!
//! Measured: wall time of each command (blocking `wait4`), GETs and bytes the node received
//! (serve's access log for Strata and stock, the registry's for native). Prints a Markdown
//! table on stdout, progress on stderr. Needs root, `/dev/fuse`, the tools of
//! `scripts/install-deps` and a release build: `cargo build --release -p publisher -p
//! snapshotter -p tests`.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use ::tests::binaries::{check_prerequisites, target_dir, which};
use ::tests::image::{PYANA, TestImage, apt_image};
use ::tests::measure::{
    Machine, Timed, load_average, memory_kib, run_timed, say, secs, sync, utc_now,
};
use ::tests::node::native_start;
use ::tests::registry::Registry;
use ::tests::relay::{LatencyRelay, rtts_from_env};
use ::tests::stock::StockMount;
use ::tests::strata::{FuseMount, HttpServer, MountArgs, Repo, Served};
use ::tests::workdir::{WorkDir, run_program};
use anyhow::{Context, Result, bail};

const FQRN: &str = "distance.strata.example";
const REPOSITORY: &str = "bench/pyana";
/// Longest one pull, mount or run may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// The workload: numpy and scipy.linalg imported, one determinant computed.
const WORKLOAD: &str = "import numpy, scipy, scipy.linalg\n\
a = numpy.arange(1.0, 17.0).reshape(4, 4) + 10 * numpy.eye(4)\n\
print(numpy.__version__, scipy.__version__, round(float(scipy.linalg.det(a)), 3))";

fn main() -> ExitCode {
    run_program("strata-bench-distance", "bench-distance", bench)
}

/// Settings from the environment.
struct Settings {
    /// `BENCH_RTT_MS`: round-trip times to add, in ms.
    rtts: Vec<u64>,
    /// Whether to run stock `cvmfs2` (`BENCH_STOCK`; default: when it is installed).
    stock: bool,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let rtts = rtts_from_env("0,20,50")?;
        let installed = which("cvmfs2").is_some();
        let stock = match std::env::var("BENCH_STOCK").as_deref() {
            Ok("0") => false,
            Ok("1") if !installed => bail!("BENCH_STOCK=1 but cvmfs2 is not on PATH"),
            Ok("1") => true,
            Ok(other) if !other.is_empty() => bail!("BENCH_STOCK={other:?}: use 0 or 1"),
            _ => installed,
        };
        Ok(Settings { rtts, stock })
    }
}

/// One row of the table.
struct Row {
    rtt_ms: u64,
    native_pull: Duration,
    native_run: Duration,
    native_received: Served,
    strata_mount: Duration,
    strata_cold: Duration,
    strata_warm: Duration,
    /// Peak resident set of the mount process after the cold and warm runs, in KiB.
    strata_peak_rss_kib: u64,
    strata_received: Served,
    /// Strata with `--no-read-ahead`: demand fetches only.
    nora_cold: Duration,
    nora_received: Served,
    stock: Option<StockFigures>,
}

struct StockFigures {
    mount: Duration,
    cold: Duration,
    received: Served,
}

fn bench(work: &WorkDir) -> Result<()> {
    let settings = Settings::from_env()?;
    check_prerequisites()?;
    let started = utc_now();
    let load_start = load_average();
    say(&format!("work directory {}", work.path().display()));

    say("bench image (python3, numpy, scipy; cached under <target>/strata-bench-images)");
    let t = Instant::now();
    let image = apt_image(&target_dir()?.join("strata-bench-images"), &PYANA)?;
    say(&format!("  ready in {:.1} s", t.elapsed().as_secs_f64()));

    let registry = Registry::start(&work.subdir("registry")?, &work.log("registry"))?;
    let reference = format!("{}/{REPOSITORY}:1", registry.host());
    say(&format!("push {reference}"));
    registry.push(&image.oci_reference(), &reference, &work.log("skopeo"))?;

    say("publish: strata-publisher init + ingest, serve");
    let repo = Repo::init(&work.path().join("repo"), FQRN, &work.log("publisher-init"))?;
    repo.ingest(
        &[&format!("docker://{reference}")],
        &work.log("publisher-ingest"),
    )?;
    let server = repo.serve(&work.log("publisher-serve"))?;

    let mut rows = Vec::new();
    let mut expected: Option<String> = None;
    for &rtt_ms in &settings.rtts {
        let one_way = Duration::from_millis(rtt_ms) / 2;
        say(&format!("round trip {rtt_ms} ms"));
        let row = measure_at(
            work,
            rtt_ms,
            one_way,
            &settings,
            &registry,
            &repo,
            &server,
            &reference,
            &mut expected,
        )?;
        rows.push(row);
    }
    let load_end = load_average();
    println!(
        "{}",
        render(
            &started,
            &Machine::read(),
            (load_start, load_end),
            &image,
            &rows,
            expected.as_deref().unwrap_or("")
        )
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn measure_at(
    work: &WorkDir,
    rtt_ms: u64,
    one_way: Duration,
    settings: &Settings,
    registry: &Registry,
    repo: &Repo,
    server: &HttpServer,
    reference: &str,
    expected: &mut Option<String>,
) -> Result<Row> {
    let tag = format!("rtt{rtt_ms}");
    let registry_relay = LatencyRelay::start(registry.addr(), one_way)?;
    let serve_relay = LatencyRelay::start(server.addr(), one_way)?;
    let server_url = format!("http://{}/cvmfs/@fqrn@", serve_relay.addr());

    // Native: containerd's overlayfs snapshotter, pulling through the registry relay.
    sync();
    let args: Vec<String> = ["python3", "-c", WORKLOAD].map(str::to_owned).to_vec();
    let native = native_start(
        work,
        &format!("native-{tag}"),
        registry,
        registry_relay.addr(),
        reference,
        &args,
    )?;
    let (pull, run) = (&native.pull, &native.run);
    check_output(run, expected, "native")?;
    say(&format!(
        "  native: pull {:.2} s, run {:.2} s",
        pull.wall.as_secs_f64(),
        run.wall.as_secs_f64()
    ));

    // Strata: an empty cache, the image root on the mount.
    sync();
    let cache = work.path().join(format!("cache-{tag}"));
    let mountpoint = work.path().join(format!("mnt-{tag}"));
    let before_serve = server.served()?;
    let t = Instant::now();
    let mut mount = FuseMount::start(
        &MountArgs {
            fqrn: FQRN,
            server: &server_url,
            pubkey: &repo.public_key(),
            cache: &cache,
            mountpoint: &mountpoint,
        },
        &work.log(&format!("mount-{tag}")),
    )?;
    let strata_mount = t.elapsed();
    let root = mountpoint.join(reference);
    let cold = chroot_workload(&root, &work.log(&format!("workload-{tag}")))?;
    check_output(&cold, expected, "Strata cold")?;
    let strata_received = server.served_since(before_serve)?;
    let warm = chroot_workload(&root, &work.log(&format!("workload-{tag}")))?;
    check_output(&warm, expected, "Strata warm")?;
    let pid = mount.pid().context("the mount process is gone")?;
    let (strata_peak_rss_kib, _) = memory_kib(pid)?;
    mount.stop();
    say(&format!(
        "  Strata: mount {:.2} s, cold run {:.2} s ({} GETs, {:.1} MB), warm run {:.2} s, \
         mount peak RSS {:.1} MB",
        strata_mount.as_secs_f64(),
        cold.wall.as_secs_f64(),
        strata_received.requests,
        strata_received.bytes as f64 / 1e6,
        warm.wall.as_secs_f64(),
        strata_peak_rss_kib as f64 / 1024.0
    ));

    // Strata without read-ahead (demand fetches only), an empty cache again.
    sync();
    let before_serve = server.served()?;
    let dir = work.subdir(&format!("no-read-ahead-{tag}"))?;
    let (nora_cache, nora_mnt) = (dir.join("cache"), dir.join("mnt"));
    let mut nora = FuseMount::start_with_options(
        &MountArgs {
            fqrn: FQRN,
            server: &server_url,
            pubkey: &repo.public_key(),
            cache: &nora_cache,
            mountpoint: &nora_mnt,
        },
        None,
        &["--no-read-ahead"],
        &work.log(&format!("mount-no-read-ahead-{tag}")),
    )?;
    let nora_cold = chroot_workload(
        &nora_mnt.join(reference),
        &work.log(&format!("workload-no-read-ahead-{tag}")),
    )?;
    check_output(&nora_cold, expected, "Strata cold without read-ahead")?;
    let nora_received = server.served_since(before_serve)?;
    nora.stop();
    say(&format!(
        "  Strata without read-ahead: cold run {:.2} s ({} GETs, {:.1} MB)",
        nora_cold.wall.as_secs_f64(),
        nora_received.requests,
        nora_received.bytes as f64 / 1e6,
    ));

    // Stock cvmfs2, same repository, same relay.
    let stock = if settings.stock {
        sync();
        let before_serve = server.served()?;
        let dir = work.subdir(&format!("stock-{tag}"))?;
        let t = Instant::now();
        let mut stock = StockMount::start(
            &dir,
            FQRN,
            &server_url,
            &repo.public_key(),
            &work.log("stock-cvmfs2"),
        )?;
        let mount = t.elapsed();
        let cold = chroot_workload(
            &stock.mountpoint.join(reference),
            &work.log(&format!("workload-stock-{tag}")),
        )?;
        check_output(&cold, expected, "stock cvmfs2 cold")?;
        let received = server.served_since(before_serve)?;
        stock.stop();
        say(&format!(
            "  stock cvmfs2: mount {:.2} s, cold run {:.2} s ({} GETs, {:.1} MB)",
            mount.as_secs_f64(),
            cold.wall.as_secs_f64(),
            received.requests,
            received.bytes as f64 / 1e6
        ));
        Some(StockFigures {
            mount,
            cold: cold.wall,
            received,
        })
    } else {
        None
    };

    Ok(Row {
        rtt_ms,
        native_pull: pull.wall,
        native_run: run.wall,
        native_received: native.received,
        strata_mount,
        strata_cold: cold.wall,
        strata_warm: warm.wall,
        strata_peak_rss_kib,
        strata_received,
        nora_cold: nora_cold.wall,
        nora_received,
        stock,
    })
}

/// Runs the workload in the image root `root` (a path on a mount) with `chroot`.
fn chroot_workload(root: &Path, log: &Path) -> Result<Timed> {
    Ok(run_timed(
        Command::new("chroot").arg(root).args([
            "/usr/bin/env",
            "-i",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root",
            "python3",
            "-c",
            WORKLOAD,
        ]),
        log,
        STEP_TIMEOUT,
    )?)
}

/// Every run must print what the first one printed.
fn check_output(run: &Timed, expected: &mut Option<String>, what: &str) -> Result<()> {
    let got = run.stdout.trim().to_owned();
    match expected {
        None => {
            if got.is_empty() {
                bail!("{what}: the workload printed nothing");
            }
            *expected = Some(got);
        }
        Some(want) if *want != got => bail!("{what}: the workload printed {got:?}, not {want:?}"),
        Some(_) => {}
    }
    Ok(())
}

fn render(
    started: &str,
    machine: &Machine,
    load: (Option<f64>, Option<f64>),
    image: &TestImage,
    rows: &[Row],
    output: &str,
) -> String {
    let show = |l: Option<f64>| l.map_or("?".into(), |l| format!("{l:.2}"));
    let compressed: u64 = image.facts.layers.iter().map(|l| l.size).sum();
    let mut out = format!(
        "Run of **{started}**: {} × {} (`nproc` {}), {:.0} GiB RAM, kernel {}, containerd {}; \
         1-minute load average {} at the start, {} at the end. Image {} ({} layers, {:.1} MB \
         compressed). Workload output: `{output}`.\n\n",
        machine.cpus,
        machine.cpu_model,
        machine.cpus,
        machine.mem_gb,
        machine.kernel,
        machine.containerd,
        show(load.0),
        show(load.1),
        PYANA.key,
        image.facts.layers.len(),
        compressed as f64 / 1e6,
    );
    out.push_str(
        "| round trip | native pull | native run | native pull + run | native received \
         | Strata mount | Strata cold run | Strata warm run | Strata received \
         | Strata mount peak RSS | Strata cold, no read-ahead | received, no read-ahead \
         | stock cvmfs2 mount | stock cold run | stock received |\n\
         |---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---|---:|---:|---|\n",
    );
    for r in rows {
        let (stock_mount, stock_cold, stock_received) = match &r.stock {
            Some(s) => (secs(s.mount), secs(s.cold), s.received.to_string()),
            None => ("—".into(), "—".into(), "—".into()),
        };
        out.push_str(&format!(
            "| {} ms | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} MB | {} | {} | {} | {} | {} |\n",
            r.rtt_ms,
            secs(r.native_pull),
            secs(r.native_run),
            secs(r.native_pull + r.native_run),
            r.native_received,
            secs(r.strata_mount),
            secs(r.strata_cold),
            secs(r.strata_warm),
            r.strata_received,
            r.strata_peak_rss_kib as f64 / 1024.0,
            secs(r.nora_cold),
            r.nora_received,
            stock_mount,
            stock_cold,
            stock_received,
        ));
    }
    out
}
