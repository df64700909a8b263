//! `strata-bench-startup`: cold container starts at a distance with startup packs, side by
//! side with containerd's native pull in one run.
//!
//! For each image ([`PYANA`]: python3, numpy, scipy — workload `import numpy,
//! scipy.linalg`; [`GCC`]: binutils, gcc, libc6-dev — workload: compile and run a C hello
//! world), built from Debian packages and cached under `<target>/strata-bench-images`:
//!
//! 1. push to a private `docker-registry`, `strata-publisher ingest`, serve;
//! 2. **record**: a Strata node (mount with `--trace`, containerd, snapshotter) pulls and
//!    runs the workload once; **pack**: `strata-publisher startup` publishes the trace as
//!    startup packs. Both timed: the publisher's extra time per image.
//!
//! `BENCH_IMAGES=gcc` (or `pyana`) runs one image only.
//!
//! Then for each round trip of `BENCH_RTT_MS` (default `0,50`), through a [`LatencyRelay`]
//! in front of the registry and one in front of `serve`:
//!
//! * **native**: a fresh private containerd; `ctr images pull --plain-http` (download and
//!   unpack into overlayfs), `ctr run --rm` of the workload;
//! * **Strata + packs**: a fresh node with an empty cache; `strata-snapshotter pull` (which
//!   asks the mount for the image's packs), `ctr run --rm`, cold; then the run again, warm;
//!
//! both `BENCH_REPS` times (default 5), one after the other, each start fresh; the table
//! gives medians, and the range of the per-start ratios (× faster than native, cold ÷
//! warm): on a small shared machine one start swings by a third. Then once:
//!
//! * **Strata, no packs**: the same with `mount --no-prefetch` (read-ahead only).
//!
//! Measured: wall time of each command (blocking `wait4`), GETs and bytes the node received
//! (the registry's access log for native, serve's for Strata), the bytes of the working set
//! (stored bytes of the objects the recorded start read), and the prefetch counters of the
//! cold node's cache. Every run of an image must print the same line. Prints a Markdown
//! table on stdout, progress on stderr. Needs root, `/dev/fuse`, the tools of
//! `scripts/install-deps` and a release build: `cargo build --release -p publisher -p
//! snapshotter -p tests`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ::tests::binaries::{check_prerequisites, target_dir};
use ::tests::image::{AptRecipe, GCC, PYANA, TestImage, apt_image};
use ::tests::measure::{
    Machine, Timed, load_average, median, median_f64, say, secs, sync, utc_now,
};
use ::tests::node::{Source, StrataNode, native_start};
use ::tests::registry::Registry;
use ::tests::relay::{LatencyRelay, rtts_from_env};
use ::tests::strata::{HttpServer, Repo, Served, cache_report, report_value};
use ::tests::workdir::{WorkDir, run_program};
use anyhow::{Context, Result, bail};

const FQRN: &str = "startup.strata.example";
/// The numpy/scipy workload.
const PYTHON_WORKLOAD: &str = "import numpy, scipy, scipy.linalg\n\
a = numpy.arange(1.0, 17.0).reshape(4, 4) + 10 * numpy.eye(4)\n\
print(numpy.__version__, scipy.__version__, round(float(scipy.linalg.det(a)), 3))";
/// The compiler workload.
const GCC_WORKLOAD: &str = "printf '#include <stdio.h>\\nint main(void) { puts(\"hello from gcc\"); return 0; }\\n' \
> /tmp/hello.c && gcc -O2 -o /tmp/hello /tmp/hello.c && /tmp/hello";

fn main() -> ExitCode {
    run_program("strata-bench-startup", "bench-startup", bench)
}

/// One bench image and its workload.
struct Case {
    recipe: AptRecipe,
    /// Repository name in the registry.
    repository: &'static str,
    /// The container's command line.
    args: Vec<String>,
    /// What it is, for the table.
    what: &'static str,
}

fn cases() -> Vec<Case> {
    let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    vec![
        Case {
            recipe: PYANA,
            repository: "bench/pyana",
            args: words(&["python3", "-c", PYTHON_WORKLOAD]),
            what: "python3 + numpy + scipy, `import numpy, scipy.linalg`",
        },
        Case {
            recipe: GCC,
            repository: "bench/gcc",
            args: words(&["sh", "-c", GCC_WORKLOAD]),
            what: "gcc toolchain, compile and run a C hello world",
        },
    ]
}

/// The cases named in `BENCH_IMAGES` (comma-separated `pyana`, `gcc`; default both).
fn cases_from_env() -> Result<Vec<Case>> {
    let all = cases();
    let Ok(wanted) = std::env::var("BENCH_IMAGES") else {
        return Ok(all);
    };
    let names: Vec<&str> = wanted.split(',').map(str::trim).collect();
    for name in &names {
        if !all
            .iter()
            .any(|c| c.repository.strip_prefix("bench/") == Some(*name))
        {
            bail!("BENCH_IMAGES: no bench image {name:?} (pyana, gcc)");
        }
    }
    Ok(all
        .into_iter()
        .filter(|c| {
            names
                .iter()
                .any(|n| c.repository.strip_prefix("bench/") == Some(*n))
        })
        .collect())
}

/// An image, published with its startup packs.
struct Prepared {
    case: Case,
    image: TestImage,
    reference: String,
    /// What every run must print.
    output: String,
    record: Duration,
    pack: Duration,
    /// `strata-publisher startup`'s summary line.
    summary: String,
    /// Stored bytes of the working set (the objects the recorded start read).
    working_set: u64,
}

/// One start of an image at one round trip, each side fresh: native (a new containerd)
/// and Strata + packs (a new node with an empty cache: pull, cold run, warm run).
struct Rep {
    native_pull: Duration,
    native_run: Duration,
    native_received: Served,
    packs_pull: Duration,
    packs_run: Duration,
    packs_warm: Duration,
    packs_received: Served,
    prefetched: u64,
    prefetched_read: u64,
}

impl Rep {
    fn native(&self) -> Duration {
        self.native_pull + self.native_run
    }

    fn strata(&self) -> Duration {
        self.packs_pull + self.packs_run
    }

    /// Native pull + run ÷ Strata pull + run.
    fn faster(&self) -> f64 {
        self.native().as_secs_f64() / self.strata().as_secs_f64().max(1e-9)
    }

    /// Cold run ÷ warm run.
    fn cold_over_warm(&self) -> f64 {
        self.packs_run.as_secs_f64() / self.packs_warm.as_secs_f64().max(1e-9)
    }
}

struct Row {
    image: usize,
    rtt_ms: u64,
    reps: Vec<Rep>,
    nopacks_pull: Duration,
    nopacks_run: Duration,
    nopacks_received: Served,
}

/// Starts per image and round trip: `BENCH_REPS`, default 5.
fn reps_from_env() -> Result<usize> {
    match std::env::var("BENCH_REPS") {
        Err(_) => Ok(5),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("BENCH_REPS: {v:?} is not a whole number above 0"),
        },
    }
}

fn bench(work: &WorkDir) -> Result<()> {
    let rtts = rtts_from_env("0,50")?;
    let reps = reps_from_env()?;
    check_prerequisites()?;
    let started = utc_now();
    let load_start = load_average();
    say(&format!("work directory {}", work.path().display()));

    let registry = Registry::start(&work.subdir("registry")?, &work.log("registry"))?;
    let repo = Repo::init(&work.path().join("repo"), FQRN, &work.log("publisher-init"))?;
    let server = repo.serve(&work.log("publisher-serve"))?;
    let mut prepared = Vec::new();
    for case in cases_from_env()? {
        prepared.push(prepare(work, case, &registry, &repo, &server)?);
    }

    let mut rows = Vec::new();
    for &rtt_ms in &rtts {
        let one_way = Duration::from_millis(rtt_ms) / 2;
        say(&format!("round trip {rtt_ms} ms"));
        let registry_relay = LatencyRelay::start(registry.addr(), one_way)?;
        let serve_relay = LatencyRelay::start(server.addr(), one_way)?;
        let server_url = format!("http://{}/cvmfs/@fqrn@", serve_relay.addr());
        for (i, p) in prepared.iter().enumerate() {
            rows.push(measure(
                work,
                i,
                p,
                rtt_ms,
                reps,
                &registry,
                &registry_relay,
                &repo,
                &server,
                &server_url,
            )?);
        }
    }
    let load_end = load_average();
    println!(
        "{}",
        render(
            &started,
            &Machine::read(),
            (load_start, load_end),
            &prepared,
            &rows
        )
    );
    Ok(())
}

/// Builds, pushes, publishes, records and packs one image.
fn prepare(
    work: &WorkDir,
    case: Case,
    registry: &Registry,
    repo: &Repo,
    server: &HttpServer,
) -> Result<Prepared> {
    say(&format!(
        "image {} (cached under <target>/strata-bench-images)",
        case.recipe.key
    ));
    let image = apt_image(&target_dir()?.join("strata-bench-images"), &case.recipe)?;
    let reference = format!("{}/{}:1", registry.host(), case.repository);
    registry.push(&image.oci_reference(), &reference, &work.log("skopeo"))?;
    repo.ingest(
        &[&format!("docker://{reference}")],
        &work.log("publisher-ingest"),
    )?;

    say("  record: a traced node pulls and runs the workload");
    let tag = case.recipe.tag;
    let trace = work.path().join(format!("{tag}.trace"));
    let trace_arg = trace.to_string_lossy().into_owned();
    let pubkey = repo.public_key();
    let url = server.server_url();
    let source = Source {
        fqrn: FQRN,
        server_url: &url,
        pubkey: &pubkey,
    };
    let t = Instant::now();
    let node = StrataNode::start(
        work,
        &format!("record-{tag}"),
        source,
        &["--trace", &trace_arg],
    )?;
    node.pull(work, &reference)?;
    let run = node.run(work, &reference, &format!("record-{tag}"), &case.args)?;
    let record = t.elapsed();
    drop(node);
    let output = run.stdout.trim().to_owned();
    if output.is_empty() {
        bail!("{}: the workload printed nothing", case.recipe.key);
    }

    let t = Instant::now();
    let summary = repo.startup(&reference, &trace, &work.log("publisher-startup"))?;
    let pack = t.elapsed();
    // "revision N: K object(s), B stored bytes (C content bytes) in P pack(s) …"
    let working_set = summary
        .split(" stored bytes")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no stored byte count in {summary:?}"))?;
    say(&format!(
        "  {output}; recorded in {:.1} s, packed in {:.1} s: {summary}",
        record.as_secs_f64(),
        pack.as_secs_f64()
    ));
    Ok(Prepared {
        case,
        image,
        reference,
        output,
        record,
        pack,
        summary,
        working_set,
    })
}

#[allow(clippy::too_many_arguments)]
fn measure(
    work: &WorkDir,
    index: usize,
    p: &Prepared,
    rtt_ms: u64,
    reps: usize,
    registry: &Registry,
    registry_relay: &LatencyRelay,
    repo: &Repo,
    server: &HttpServer,
    server_url: &str,
) -> Result<Row> {
    let tag = format!("{}-rtt{rtt_ms}", p.case.recipe.tag);
    say(&format!("  {}", p.case.recipe.key));
    let pubkey = repo.public_key();
    let source = Source {
        fqrn: FQRN,
        server_url,
        pubkey: &pubkey,
    };
    let mut row = Vec::with_capacity(reps);
    for r in 0..reps {
        row.push(start_both(
            work,
            p,
            &format!("{tag}-{r}"),
            registry,
            registry_relay,
            server,
            source,
        )?);
    }

    // Strata without packs (read-ahead only), once: the packs' share of the gain.
    sync();
    let before_serve = server.served()?;
    let node = StrataNode::start(work, &format!("nopacks-{tag}"), source, &["--no-prefetch"])?;
    let nopacks_pull = node.pull(work, &p.reference)?;
    let nopacks_run = node.run(work, &p.reference, &format!("nopacks-{tag}"), &p.case.args)?;
    check(&nopacks_run, p, "Strata cold without packs")?;
    let nopacks_received = server.served_since(before_serve)?;
    drop(node);
    say(&format!(
        "    Strata, no packs: pull {:.2} s, cold run {:.2} s ({} GETs, {:.1} MB)",
        nopacks_pull.wall.as_secs_f64(),
        nopacks_run.wall.as_secs_f64(),
        nopacks_received.requests,
        nopacks_received.bytes as f64 / 1e6,
    ));
    Ok(Row {
        image: index,
        rtt_ms,
        reps: row,
        nopacks_pull: nopacks_pull.wall,
        nopacks_run: nopacks_run.wall,
        nopacks_received,
    })
}

/// One start each way, both fresh: native (containerd's overlayfs snapshotter, pulling
/// through the registry relay), then Strata + packs (an empty cache; pull asks for the
/// packs; cold run, warm run).
fn start_both(
    work: &WorkDir,
    p: &Prepared,
    tag: &str,
    registry: &Registry,
    registry_relay: &LatencyRelay,
    server: &HttpServer,
    source: Source<'_>,
) -> Result<Rep> {
    sync();
    let native = native_start(
        work,
        &format!("native-{tag}"),
        registry,
        registry_relay.addr(),
        &p.reference,
        &p.case.args,
    )?;
    check(&native.run, p, "native")?;
    say(&format!(
        "    native: pull {:.2} s, run {:.2} s",
        native.pull.wall.as_secs_f64(),
        native.run.wall.as_secs_f64()
    ));

    sync();
    let before_serve = server.served()?;
    let node = StrataNode::start(work, &format!("packs-{tag}"), source, &[])?;
    let packs_pull = node.pull(work, &p.reference)?;
    let packs_run = node.run(work, &p.reference, &format!("packs-{tag}"), &p.case.args)?;
    check(&packs_run, p, "Strata cold with packs")?;
    let packs_received = server.served_since(before_serve)?;
    let packs_warm = node.run(
        work,
        &p.reference,
        &format!("packs-warm-{tag}"),
        &p.case.args,
    )?;
    check(&packs_warm, p, "Strata warm")?;
    // Stopped first: the mount writes its last counters to the cache index as it exits.
    let cache = node.cache.clone();
    drop(node);
    let report = cache_report(&cache, &work.log(&format!("cache-report-{tag}")))?;
    let prefetched = report_value(&report, "prefetched bytes").unwrap_or(0);
    let prefetched_read = report_value(&report, "prefetched bytes later read").unwrap_or(0);
    let rep = Rep {
        native_pull: native.pull.wall,
        native_run: native.run.wall,
        native_received: native.received,
        packs_pull: packs_pull.wall,
        packs_run: packs_run.wall,
        packs_warm: packs_warm.wall,
        packs_received,
        prefetched,
        prefetched_read,
    };
    say(&format!(
        "    Strata + packs: pull {:.2} s, cold run {:.2} s ({} GETs, {:.1} MB), warm run {:.2} s; \
         prefetched {:.1} MB, {:.1} MB of it read; {:.1}× faster than native, cold ÷ warm {:.2}",
        rep.packs_pull.as_secs_f64(),
        rep.packs_run.as_secs_f64(),
        rep.packs_received.requests,
        rep.packs_received.bytes as f64 / 1e6,
        rep.packs_warm.as_secs_f64(),
        prefetched as f64 / 1e6,
        prefetched_read as f64 / 1e6,
        rep.faster(),
        rep.cold_over_warm(),
    ));
    Ok(rep)
}

/// Every run must print what the recorded run printed.
fn check(run: &Timed, p: &Prepared, what: &str) -> Result<()> {
    let got = run.stdout.trim();
    if got != p.output {
        bail!(
            "{what}: {} printed {got:?}, not {:?}",
            p.case.recipe.key,
            p.output
        );
    }
    Ok(())
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn render(
    started: &str,
    machine: &Machine,
    load: (Option<f64>, Option<f64>),
    prepared: &[Prepared],
    rows: &[Row],
) -> String {
    let show = |l: Option<f64>| l.map_or("?".into(), |l| format!("{l:.2}"));
    let mut out = format!(
        "Run of **{started}**: {} × {} (`nproc` {}), {:.0} GiB RAM, kernel {}, containerd {}; \
         1-minute load average {} at the start, {} at the end.\n\n",
        machine.cpus,
        machine.cpu_model,
        machine.cpus,
        machine.mem_gb,
        machine.kernel,
        machine.containerd,
        show(load.0),
        show(load.1),
    );
    out.push_str("| image | layers, compressed | workload output | record + pack (publisher) | working set |\n|---|---|---|---|---|\n");
    for p in prepared {
        let compressed: u64 = p.image.facts.layers.iter().map(|l| l.size).sum();
        out.push_str(&format!(
            "| {} ({}) | {}, {} | `{}` | {} + {} | {} ({}) |\n",
            p.case.recipe.key,
            p.case.what,
            p.image.facts.layers.len(),
            mb(compressed),
            p.output,
            secs(p.record),
            secs(p.pack),
            mb(p.working_set),
            p.summary.split(';').next().unwrap_or_default().trim(),
        ));
    }
    out.push_str(
        "\nEach figure a median of the starts (each side fresh every start: a new containerd, a \
         new node with an empty cache), the ratios' range in brackets; received: the start \
         that received most (each side).\n\n\
         | image | round trip | starts | native pull + run | native received | Strata + packs: pull \
         | cold run | pull + run | × faster than native | warm run | cold ÷ warm | received \
         | fetched ÷ working set | prefetched (read) | no packs: pull + run | no packs received |\n\
         |---|---:|---:|---:|---|---:|---:|---:|---|---:|---|---|---:|---|---:|---|\n",
    );
    for r in rows {
        let p = &prepared[r.image];
        let med = |f: &dyn Fn(&Rep) -> Duration| median(&r.reps.iter().map(f).collect::<Vec<_>>());
        let ratios = |f: &dyn Fn(&Rep) -> f64| {
            let v: Vec<f64> = r.reps.iter().map(f).collect();
            let lowest = v.iter().copied().fold(f64::INFINITY, f64::min);
            let highest = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (median_f64(&v), lowest, highest)
        };
        let (faster, faster_lo, faster_hi) = ratios(&Rep::faster);
        let (cw, cw_lo, cw_hi) = ratios(&Rep::cold_over_warm);
        let Some(most) = r.reps.iter().max_by_key(|x| x.packs_received.bytes) else {
            continue;
        };
        let native_most = r
            .reps
            .iter()
            .map(|x| x.native_received)
            .max_by_key(|n| n.bytes)
            .unwrap_or(most.native_received);
        out.push_str(&format!(
            "| {} | {} ms | {} | {} | {} | {} | {} | {} | {:.1}× ({:.1}–{:.1}) | {} | {:.2} ({:.2}–{:.2}) | {} | {:.2} | {} ({}) | {} | {} |\n",
            p.case.recipe.tag,
            r.rtt_ms,
            r.reps.len(),
            secs(med(&Rep::native)),
            native_most,
            secs(med(&|x| x.packs_pull)),
            secs(med(&|x| x.packs_run)),
            secs(med(&Rep::strata)),
            faster,
            faster_lo,
            faster_hi,
            secs(med(&|x| x.packs_warm)),
            cw,
            cw_lo,
            cw_hi,
            most.packs_received,
            most.packs_received.bytes as f64 / (p.working_set.max(1) as f64),
            mb(most.prefetched),
            mb(most.prefetched_read),
            secs(r.nopacks_pull + r.nopacks_run),
            r.nopacks_received,
        ));
    }
    out
}
