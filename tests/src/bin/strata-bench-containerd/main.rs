//! `strata-bench-containerd`: the seed talk's table (native containerd against Strata, cold and warm), on one machine in one
//! run: containerd's own overlayfs snapshotter against Strata with a cold and a warm cache,
//! on a multi-GB five-layer image built from this machine's Debian files.
//!
//! 1. Builds (or reuses, cached under `<target>/strata-bench-images/`) the image of
//!    [`image`], about `BENCH_SIZE_MB` MB (default 2000) of files, pushes it to a private
//!    `docker-registry` on 127.0.0.1, publishes it (`strata-publisher ingest`, timed and
//!    printed, not part of the table) and serves it.
//! 2. **native**: a fresh private containerd 1.6; `ctr images pull --plain-http` (download
//!    and unpack into overlayfs), then `ctr run --rm` of the workload.
//! 3. **Strata, cold cache**: `strata-snapshotter mount` with an empty cache, a fresh
//!    containerd, `strata-snapshotter run`, `strata-snapshotter pull`, the same workload.
//! 4. **Strata, warm cache**: a new mount process on the same cache directory, again a
//!    fresh containerd and snapshotter root, pull, workload.
//! 5. `BENCH_REPS` (default 10) more runs each on the native and the warm Strata
//!    containerd, alternated, for the warm comparison (medians): the workload, and an
//!    empty container (`true`) that shows container set-up and teardown alone.
//!
//! The workload runs `python3` (layer 3) importing a few standard modules (layer 4, its
//! C libraries from layer 1) and hashes six files of layers 2 and 5. Every run must print
//! the same line.
//!
//! Strata's mount and `run` use the plain mount (`--plain-mountpoint <mnt>-plain`, as
//! deployed) unless `BENCH_PLAIN=0`.
//!
//! `BENCH_HOLD=1` keeps both containerd instances, the mount and the snapshotter running
//! after the repetitions (see [`hold`]), for measuring by hand.
//!
//! Measured: wall time of each command (blocking `wait4`), bytes received by the node (the
//! registry's access log for native, `strata-publisher serve`'s for Strata), peak RSS
//! (`VmHWM`) of containerd and of the Strata mount and run processes after pull + first
//! run, and `ru_maxrss` of `strata-snapshotter pull`. Prints a Markdown table on stdout;
//! progress on stderr. Needs root, `/dev/fuse`, the tools of `scripts/install-deps` and a
//! release build: `cargo build --release -p publisher -p snapshotter -p tests`.

mod image;

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use ::tests::binaries::{SNAPSHOTTER, check_prerequisites, target_dir};
use ::tests::containerd::{Containerd, NAMESPACE, SNAPSHOTTER_NAME};
use ::tests::registry::Registry;
use ::tests::strata::{
    FuseMount, HttpServer, MountArgs, Repo, SnapshotterDaemon, plain_mountpoint_of, strata_command,
};
use ::tests::workdir::{WorkDir, run_program};
use anyhow::{Context, Result, bail};

use ::tests::measure::{
    Machine, Timed, du_bytes, find_pid, load_average, median, memory_kib, registry_served,
    run_timed, say, sync, utc_now,
};
use image::BenchImage;

const FQRN: &str = "bench.strata.example";
const REPOSITORY: &str = "bench/debian";
/// Longest one pull or container run may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The workload's Python program; the files to hash follow as arguments.
const WORKLOAD: &str = "import sys, hashlib, json, sqlite3, email.parser, http.client\n\
h = hashlib.sha256()\n\
for p in sys.argv[1:]:\n    h.update(open(p, 'rb').read())\n\
print(json.dumps({'files': len(sys.argv) - 1, 'sha256': h.hexdigest(), 'sqlite': sqlite3.sqlite_version}))";

fn main() -> ExitCode {
    run_program("strata-bench-containerd", "bench-containerd", bench)
}

/// Settings from the environment.
struct Settings {
    /// `BENCH_SIZE_MB`: the image's file bytes, in MB (10^6).
    size_mb: u64,
    /// `BENCH_REPS`: extra warm workload runs per side.
    reps: usize,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let var = |name: &str, default: u64| -> Result<u64> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .with_context(|| format!("{name}={v}: not a whole number")),
                Err(_) => Ok(default),
            }
        };
        let settings = Settings {
            size_mb: var("BENCH_SIZE_MB", 2000)?,
            reps: var("BENCH_REPS", 10)? as usize,
        };
        if settings.reps == 0 {
            bail!("BENCH_REPS must be at least 1 (the warm comparison takes medians)");
        }
        Ok(settings)
    }
}

/// One column of the table.
struct Phase {
    pull: Timed,
    first: Timed,
    /// Bytes and successful GETs the node received (registry or serve, by column).
    received: (u64, u64),
    /// containerd's (VmHWM, VmRSS) in KiB after pull + first run.
    containerd: (u64, u64),
    /// Strata only.
    strata: Option<StrataFacts>,
}

struct StrataFacts {
    /// (VmHWM, VmRSS) of `strata-snapshotter mount`, KiB.
    mount: (u64, u64),
    /// (VmHWM, VmRSS) of `strata-snapshotter run`, KiB.
    run: (u64, u64),
    mount_start: Duration,
    run_start: Duration,
    /// Registry GET bytes during the phase (must be 0).
    registry_bytes: u64,
    /// Layer blobs in containerd's content store after the pull.
    layer_blobs: usize,
}

/// Warm repetitions, alternated between the native and the warm Strata containerd: the
/// workload, and an empty container (`true`: container set-up and teardown only).
#[derive(Default)]
struct Reps {
    native: Vec<Duration>,
    strata: Vec<Duration>,
    native_empty: Vec<Duration>,
    strata_empty: Vec<Duration>,
}

/// A running Strata node: kept alive for the warm repetitions.
struct StrataNode {
    containerd: Containerd,
    _snapshotter: SnapshotterDaemon,
    _mount: FuseMount,
}

fn bench(work: &WorkDir) -> Result<()> {
    let settings = Settings::from_env()?;
    check_prerequisites()?;
    let started = utc_now();
    let load_start = load_average();
    say(&format!("work directory {}", work.path().display()));

    say(&format!(
        "bench image, {} MB of files (cached under <target>/strata-bench-images)",
        settings.size_mb
    ));
    let t = Instant::now();
    let image = image::bench_image(
        &target_dir()?.join("strata-bench-images"),
        settings.size_mb,
        &work.log("image-build"),
    )?;
    say(&format!(
        "  image ready in {:.1} s",
        t.elapsed().as_secs_f64()
    ));

    let registry = Registry::start(&work.subdir("registry")?, &work.log("registry"))?;
    let reference = format!("{}/{REPOSITORY}:{}", registry.host(), image::TAG);
    say(&format!("push {reference}"));
    let push = run_timed(
        Command::new("skopeo").args([
            "copy",
            "--dest-tls-verify=false",
            &image.oci_reference(),
            &format!("docker://{reference}"),
        ]),
        &work.log("skopeo"),
        STEP_TIMEOUT,
    )?;
    say(&format!("  pushed in {:.1} s", push.wall.as_secs_f64()));

    say("publish: strata-publisher init + ingest");
    let repo = Repo::init(&work.path().join("repo"), FQRN, &work.log("publisher-init"))?;
    let mut ingest_cmd = repo.ingest_command(&[&format!("docker://{reference}")])?;
    let ingest = run_timed(&mut ingest_cmd, &work.log("publisher-ingest"), STEP_TIMEOUT)?;
    say(&format!(
        "  published in {:.1} s (peak RSS {} MB)",
        ingest.wall.as_secs_f64(),
        ingest.max_rss_kib / 1024
    ));
    let server = repo.serve(&work.log("publisher-serve"))?;
    sync();

    let args = workload_args(&image);

    // Native: containerd's overlayfs snapshotter.
    say("native: fresh containerd, ctr images pull (overlayfs), ctr run");
    let native_cd = Containerd::start(
        &work.subdir("containerd-native")?,
        &work.log("containerd-native"),
        &work.log("ctr-native"),
        &work.path().join("no-proxy-snapshotter.sock"),
    )?;
    let before = registry_served(registry.log())?;
    let pull = run_timed(
        native_cd.ctr().args([
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "overlayfs",
            &reference,
        ]),
        &work.log("ctr-native"),
        STEP_TIMEOUT,
    )?;
    let first = run_workload(&native_cd, "overlayfs", &reference, "native-1", &args, work)?;
    let after = registry_served(registry.log())?;
    let native = Phase {
        pull,
        first,
        received: (after.1 - before.1, after.0 - before.0),
        containerd: memory_kib(containerd_pid(&native_cd)?)?,
        strata: None,
    };
    let expected = native.first.stdout.clone();
    say(&format!(
        "  pull {:.3} s, first run {:.3} s, output {}",
        native.pull.wall.as_secs_f64(),
        native.first.wall.as_secs_f64(),
        expected.trim()
    ));
    sync();

    let cache = work.path().join("cache");
    say("Strata, cold cache: mount (empty cache), containerd, run, pull, ctr run");
    let (cold, cold_node) = strata_phase(
        "cold", work, &server, &repo, &cache, &registry, &reference, &image, &args,
    )?;
    check_output(&cold.first, &expected, "Strata cold")?;
    let cache_bytes = du_bytes(&cache)?;
    drop(cold_node);

    say(
        "Strata, warm cache: new mount on the same cache, fresh containerd and root, pull, ctr run",
    );
    let (warm, warm_node) = strata_phase(
        "warm", work, &server, &repo, &cache, &registry, &reference, &image, &args,
    )?;
    check_output(&warm.first, &expected, "Strata warm")?;

    say(&format!(
        "warm repetitions: {} runs each, alternated",
        settings.reps
    ));
    let mut reps = Reps::default();
    let empty = ["true".to_owned()];
    for i in 0..settings.reps {
        let n = run_workload(
            &native_cd,
            "overlayfs",
            &reference,
            &format!("native-r{i}"),
            &args,
            work,
        )?;
        check_output(&n, &expected, "native repetition")?;
        reps.native.push(n.wall);
        let s = run_workload(
            &warm_node.containerd,
            SNAPSHOTTER_NAME,
            &reference,
            &format!("strata-r{i}"),
            &args,
            work,
        )?;
        check_output(&s, &expected, "Strata warm repetition")?;
        reps.strata.push(s.wall);
        let n = run_workload(
            &native_cd,
            "overlayfs",
            &reference,
            &format!("native-e{i}"),
            &empty,
            work,
        )?;
        reps.native_empty.push(n.wall);
        let s = run_workload(
            &warm_node.containerd,
            SNAPSHOTTER_NAME,
            &reference,
            &format!("strata-e{i}"),
            &empty,
            work,
        )?;
        reps.strata_empty.push(s.wall);
    }
    let load_end = load_average();
    if std::env::var_os("BENCH_HOLD").is_some() {
        hold(work, &native_cd, &warm_node.containerd, &reference, &args)?;
    }
    drop(warm_node);
    drop(native_cd);

    let machine = Machine::read();
    println!(
        "{}",
        render(&Report {
            started,
            machine,
            load: (load_start, load_end),
            image: &image,
            push: push.wall,
            ingest: &ingest,
            native: &native,
            cold: &cold,
            warm: &warm,
            cache_bytes,
            reps,
            output: expected.trim().to_owned(),
        })
    );
    Ok(())
}

/// `BENCH_HOLD` set: writes `<work>/hold.sh` (shell variables for both containerd
/// instances, the reference and the workload) and keeps everything running until the file
/// `<work>/hold` is deleted, for measuring by hand in the same warm environment.
fn hold(
    work: &WorkDir,
    native: &Containerd,
    strata: &Containerd,
    reference: &str,
    args: &[String],
) -> Result<()> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let script = format!(
        "NATIVE_CTR=\"ctr --address {} -n {NAMESPACE}\"\nSTRATA_CTR=\"ctr --address {} -n {NAMESPACE}\"\nSTRATA_SNAPSHOTTER={SNAPSHOTTER_NAME}\nREF={}\nWORKLOAD=({})\n",
        native.socket().display(),
        strata.socket().display(),
        quote(reference),
        args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
    );
    let flag = work.path().join("hold");
    std::fs::write(work.path().join("hold.sh"), script)?;
    std::fs::write(&flag, b"")?;
    say(&format!(
        "holding: source {}/hold.sh; rm {} to finish",
        work.path().display(),
        flag.display()
    ));
    while flag.exists() {
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// Whether Strata runs with the plain mount (`--plain-mountpoint`, as deployed):
/// `BENCH_PLAIN=0` turns it off.
fn plain_on() -> bool {
    std::env::var("BENCH_PLAIN").map_or(true, |v| v != "0")
}

/// `python3 -c WORKLOAD <files>`.
fn workload_args(image: &BenchImage) -> Vec<String> {
    let mut args = vec!["python3".to_owned(), "-c".to_owned(), WORKLOAD.to_owned()];
    args.extend(image.workload_files.iter().cloned());
    args
}

fn run_workload(
    containerd: &Containerd,
    snapshotter: &str,
    reference: &str,
    id: &str,
    args: &[String],
    work: &WorkDir,
) -> Result<Timed> {
    Ok(::tests::node::ctr_run(
        containerd,
        snapshotter,
        reference,
        &format!("bench-{id}"),
        args,
        work,
    )?)
}

fn check_output(run: &Timed, expected: &str, what: &str) -> Result<()> {
    if run.stdout != expected {
        bail!(
            "{what}: the workload printed {:?}, native printed {expected:?}",
            run.stdout
        );
    }
    Ok(())
}

/// Mount (cache `cache`), containerd, snapshotter, pull, first run; measured.
#[allow(clippy::too_many_arguments)]
fn strata_phase(
    label: &str,
    work: &WorkDir,
    server: &HttpServer,
    repo: &Repo,
    cache: &Path,
    registry: &Registry,
    reference: &str,
    image: &BenchImage,
    args: &[String],
) -> Result<(Phase, StrataNode)> {
    let served_before = server.served()?;
    let registry_before = registry_served(registry.log())?;
    let mountpoint = work.path().join(format!("mnt-{label}"));
    let server_url = server.server_url();
    let pubkey = repo.public_key();
    let t = Instant::now();
    let plain = plain_mountpoint_of(&mountpoint);
    let plain = plain_on().then_some(plain.as_path());
    let mount = FuseMount::start_with_plain(
        &MountArgs {
            fqrn: FQRN,
            server: &server_url,
            pubkey: &pubkey,
            cache,
            mountpoint: &mountpoint,
        },
        plain,
        &work.log(&format!("mount-{label}")),
    )?;
    let mount_start = t.elapsed();
    let socket = work.path().join(format!("snapshotter-{label}.sock"));
    // Listening before containerd starts, as deployed (see `tests::scenario::Stack`).
    let t = Instant::now();
    let snapshotter = SnapshotterDaemon::start_with_plain(
        &socket,
        &work.path().join(format!("snapshotter-root-{label}")),
        &mountpoint,
        plain,
        &work.log(&format!("snapshotter-run-{label}")),
    )?;
    let run_start = t.elapsed();
    let containerd = Containerd::start(
        &work.subdir(&format!("containerd-{label}"))?,
        &work.log(&format!("containerd-{label}")),
        &work.log(&format!("ctr-{label}")),
        &socket,
    )?;
    let mut pull_cmd = strata_command(SNAPSHOTTER)?;
    pull_cmd
        .arg("pull")
        .arg("--address")
        .arg(containerd.socket())
        .args(["--namespace", NAMESPACE, "--snapshotter", SNAPSHOTTER_NAME])
        .arg("--mountpoint")
        .arg(&mountpoint)
        .arg(reference);
    let pull = run_timed(
        &mut pull_cmd,
        &work.log(&format!("snapshotter-pull-{label}")),
        STEP_TIMEOUT,
    )?;
    let first = run_workload(
        &containerd,
        SNAPSHOTTER_NAME,
        reference,
        &format!("strata-{label}-1"),
        args,
        work,
    )?;
    let served_after = server.served()?;
    let registry_after = registry_served(registry.log())?;
    let mount_arg = mountpoint.to_string_lossy().into_owned();
    let socket_arg = socket.to_string_lossy().into_owned();
    let mount_pid =
        find_pid(|argv| argv.iter().any(|a| a == "mount") && argv.last() == Some(&mount_arg))
            .context("strata-snapshotter mount process not found")?;
    let run_pid = find_pid(|argv| argv.iter().any(|a| a == "run") && argv.contains(&socket_arg))
        .context("strata-snapshotter run process not found")?;
    let content = containerd.ctr_checked(&["content", "ls", "-q"])?;
    let listed = String::from_utf8_lossy(&content.stdout).into_owned();
    let layer_blobs = image
        .facts
        .layers
        .iter()
        .filter(|l| listed.lines().any(|line| line.trim() == l.digest))
        .count();
    let phase = Phase {
        pull,
        first,
        received: (
            served_after.bytes - served_before.bytes,
            served_after.requests - served_before.requests,
        ),
        containerd: memory_kib(containerd_pid(&containerd)?)?,
        strata: Some(StrataFacts {
            mount: memory_kib(mount_pid)?,
            run: memory_kib(run_pid)?,
            mount_start,
            run_start,
            registry_bytes: registry_after.1 - registry_before.1,
            layer_blobs,
        }),
    };
    say(&format!(
        "  pull {:.3} s, first run {:.3} s, {} bytes from serve",
        phase.pull.wall.as_secs_f64(),
        phase.first.wall.as_secs_f64(),
        phase.received.0
    ));
    Ok((
        phase,
        StrataNode {
            containerd,
            _snapshotter: snapshotter,
            _mount: mount,
        },
    ))
}

/// The containerd process serving `containerd`'s socket (its config sits beside it).
fn containerd_pid(containerd: &Containerd) -> Result<u32> {
    let config = containerd
        .socket()
        .with_file_name("config.toml")
        .to_string_lossy()
        .into_owned();
    find_pid(|argv| {
        argv.first().is_some_and(|a| a.ends_with("containerd")) && argv.contains(&config)
    })
    .with_context(|| format!("no containerd process with --config {config}"))
}

struct Report<'a> {
    started: String,
    machine: Machine,
    load: (Option<f64>, Option<f64>),
    image: &'a BenchImage,
    push: Duration,
    ingest: &'a Timed,
    native: &'a Phase,
    cold: &'a Phase,
    warm: &'a Phase,
    cache_bytes: u64,
    reps: Reps,
    output: String,
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

fn render(r: &Report<'_>) -> String {
    let m = &r.machine;
    let img = r.image;
    let (n, c, w) = (r.native, r.cold, r.warm);
    let (cs, ws) = match (&c.strata, &w.strata) {
        (Some(cs), Some(ws)) => (cs, ws),
        _ => return "internal error: Strata phases without Strata facts".into(),
    };
    let total = |p: &Phase| p.pull.wall + p.first.wall;
    let speedup = |p: &Phase| total(n).as_secs_f64() / total(p).as_secs_f64();
    let strata_sum = |s: &StrataFacts| s.mount.0 + s.run.0;
    let nat_med = median(&r.reps.native);
    let warm_med = median(&r.reps.strata);
    let warm_diff = 100.0 * (warm_med.as_secs_f64() / nat_med.as_secs_f64() - 1.0);
    let range = |v: &[Duration]| {
        let lo = v.iter().min().copied().unwrap_or_default();
        let hi = v.iter().max().copied().unwrap_or_default();
        format!("{}–{}", secs(lo), secs(hi))
    };
    let load = |l: Option<f64>| l.map_or("?".into(), |l| format!("{l:.2}"));
    let mut s = String::new();
    s.push_str(&format!(
        "Run of {}: {} × {}, {:.0} GB RAM, kernel {}, containerd {}, release build, all on 127.0.0.1.\n\
         1-minute load average {} at the start, {} at the end. Strata plain mount (`--plain-mountpoint`): {}.\n\n",
        r.started, m.cpus, m.cpu_model, m.mem_gb, m.kernel, m.containerd,
        load(r.load.0), load(r.load.1),
        if plain_on() { "on" } else { "off (BENCH_PLAIN=0)" }
    ));
    s.push_str(&format!(
        "Image: 5 layers built from this machine's Debian files, {} uncompressed ({} regular \
         files), {} compressed (gzip -6); pushed in {}; published (`strata-publisher ingest`, \
         not in the table) in {} with peak RSS {}.\n\
         Workload: `python3 -c 'import … sqlite3, email.parser, http.client; sha256 of {} files'` \
         (files of layers 2 and 5), printing `{}`.\n\n",
        mb(img.uncompressed),
        img.files,
        mb(img.facts.compressed_size()),
        secs(r.push),
        secs(r.ingest.wall),
        mib(r.ingest.max_rss_kib),
        img.workload_files.len(),
        r.output
    ));
    s.push_str(
        "| | native (containerd overlayfs) | Strata, cold cache | Strata, warm cache | target |\n",
    );
    s.push_str("|---|---|---|---|---|\n");
    s.push_str(&format!(
        "| pull (`ctr images pull` / `strata-snapshotter pull`) | {} | {} | {} | < 2 s: {} |\n",
        secs(n.pull.wall),
        secs(c.pull.wall),
        secs(w.pull.wall),
        met(c.pull.wall < Duration::from_secs(2))
    ));
    s.push_str(&format!(
        "| first run of the workload (`ctr run --rm`) | {} | {} | {} | |\n",
        secs(n.first.wall),
        secs(c.first.wall),
        secs(w.first.wall)
    ));
    s.push_str(&format!(
        "| pull + first run | {} | {} | {} | |\n",
        secs(total(n)),
        secs(total(c)),
        secs(total(w))
    ));
    s.push_str(&format!(
        "| speed-up of pull + first run over native | 1× | {:.1}× | {:.1}× | ≥ 15× (cold): {} |\n",
        speedup(c),
        speedup(w),
        met(speedup(c) >= 15.0)
    ));
    s.push_str(&format!(
        "| bytes received by the node (HTTP bodies, GETs) | {} in {} GETs (registry) | {} in {} GETs (serve) | {} in {} GETs (serve) | |\n",
        mb(n.received.0), n.received.1, mb(c.received.0), c.received.1, mb(w.received.0), w.received.1
    ));
    s.push_str(&format!(
        "| peak RSS of containerd (VmHWM) | {} | {} | {} | |\n",
        mib(n.containerd.0),
        mib(c.containerd.0),
        mib(w.containerd.0)
    ));
    s.push_str(&format!(
        "| peak RSS of Strata `mount` + `run` (VmHWM) | — | {} + {} = {} | {} + {} = {} | < 64 MB (cold): {} |\n",
        mib(cs.mount.0), mib(cs.run.0), mib(strata_sum(cs)),
        mib(ws.mount.0), mib(ws.run.0), mib(strata_sum(ws)),
        met(strata_sum(cs) * 1024 < 64_000_000)
    ));
    s.push_str(&format!(
        "| peak RSS of `strata-snapshotter pull` (short-lived) | — | {} | {} | |\n",
        mib(c.pull.max_rss_kib),
        mib(w.pull.max_rss_kib)
    ));
    s.push_str(&format!(
        "| warm workload runs, median of {} (min–max) | {} ({}) | — | {} ({}); {:+.1} % | within 3 %: {} |\n",
        r.reps.strata.len(), secs(nat_med), range(&r.reps.native), secs(warm_med), range(&r.reps.strata),
        warm_diff, met(warm_diff.abs() <= 3.0 || warm_med <= nat_med)
    ));
    let (ne, se) = (median(&r.reps.native_empty), median(&r.reps.strata_empty));
    s.push_str(&format!(
        "| same, empty container (`ctr run --rm … true`), median of {} (min–max) | {} ({}) | — | {} ({}); {:+.1} % | |\n",
        r.reps.strata_empty.len(), secs(ne), range(&r.reps.native_empty), secs(se), range(&r.reps.strata_empty),
        100.0 * (se.as_secs_f64() / ne.as_secs_f64() - 1.0)
    ));
    s.push_str(&format!(
        "\nAlso measured: mount start (until the FUSE mount is listed, 100 ms polling) {} cold / {} warm; \
         `strata-snapshotter run` start (until its socket exists) {} / {}; \
         registry bytes during the Strata phases {} / {}; layer blobs in containerd's content store \
         after `strata-snapshotter pull` {} / {} (of 5); object cache after the cold run {}; \
         containerd VmRSS after pull + first run {} / {} / {}; Strata VmRSS mount + run {} + {} (cold).\n",
        secs(cs.mount_start), secs(ws.mount_start), secs(cs.run_start), secs(ws.run_start),
        cs.registry_bytes, ws.registry_bytes, cs.layer_blobs, ws.layer_blobs, mb(r.cache_bytes),
        mib(n.containerd.1), mib(c.containerd.1), mib(w.containerd.1), mib(cs.mount.1), mib(cs.run.1)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_program_compiles_as_python_and_hashes_its_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a");
        std::fs::write(&f, b"strata").unwrap();
        let out = Command::new("python3")
            .args(["-c", WORKLOAD])
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("\"files\": 1"), "{text}");
        let expected = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"strata"));
        assert!(text.contains(&expected), "{text}");
    }

    #[test]
    fn du_counts_regular_files_recursively() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/x"), [0u8; 10]).unwrap();
        std::fs::write(dir.path().join("a/b/y"), [0u8; 5]).unwrap();
        assert_eq!(du_bytes(dir.path()).unwrap(), 15);
    }
}
