//! `strata-demo`: the main job on a built-in example, printing each step and its duration.
//!
//! Builds (or reuses) a small real image — Debian bookworm minbase + python3 + a whiteout
//! layer —, pushes it to a private `docker-registry`, publishes it into a CVMFS repository
//! with `strata-publisher`, serves it over HTTP, mounts it with `strata-snapshotter mount`,
//! starts a private containerd with the Strata proxy snapshotter, pulls the image lazily
//! and runs a Python workload in it. Needs root, `/dev/fuse` and the packages of
//! `scripts/install-deps`; `scripts/demo` does all of that.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use tests::scenario::{FQRN, Published, Stack, WORKLOAD, check_workload};
use tests::steps::{Steps, format_bytes, format_duration};
use tests::workdir::{WorkDir, run_program};

fn main() -> ExitCode {
    run_program("strata-demo", "demo", demo)
}

fn demo(work: &WorkDir) -> Result<()> {
    println!("Strata demo: publish a container image into CernVM-FS and run it lazily.");
    println!(
        "work directory: {} ({})\n",
        work.path().display(),
        if work.kept() {
            "kept: STRATA_KEEP_WORKDIR=1"
        } else {
            "removed at the end; STRATA_KEEP_WORKDIR=1 keeps it"
        }
    );
    let start = Instant::now();
    let mut steps = Steps::new();
    let published = Published::up(work, &mut steps)?;
    let stack = Stack::attach(published, work, &mut steps)?;
    let out = steps.run(
        "run the workload: ctr run … python3 -c '<hashlib+json>'",
        || stack.check_workload(),
    )?;
    let first_output = start.elapsed();
    print!("    container printed: {out}");
    steps.run("run it again (warm cache)", || stack.check_workload())?;
    steps.run("check whiteouts inside the container", || {
        stack.check_whiteouts()
    })?;
    let snapshots = steps.run("ctr snapshots --snapshotter strata ls", || {
        stack.check_snapshots()
    })?;
    let gets = stack.check_registry_untouched()?;
    let (served, image_size) = stack.check_bytes_fetched()?;

    // For comparison, what containerd does without Strata: download and unpack every layer
    // (from the same registry on 127.0.0.1, so no network in the way).
    let reference = stack.published.reference.clone();
    let native = Instant::now();
    steps.run(
        "for comparison: ctr images pull (overlayfs, downloads every layer)",
        || {
            stack.containerd.ctr_checked(&[
                "images",
                "pull",
                "--plain-http",
                "--snapshotter",
                "overlayfs",
                &reference,
            ])
        },
    )?;
    steps.run("for comparison: the workload under overlayfs", || {
        check_workload(&stack.containerd, "overlayfs", &reference)
    })?;
    let native = native.elapsed();

    let facts = &stack.published.image.facts;
    println!("\n==== summary ====");
    println!(
        "image               {} ({} layers)",
        stack.published.reference,
        facts.layers.len()
    );
    println!(
        "repository          {FQRN} at {}",
        stack.published.server.repository_url()
    );
    println!("workload            python3 -c \"{WORKLOAD}\"");
    println!(
        "image size          {} compressed (sum of manifest layer sizes)",
        format_bytes(image_size)
    );
    println!(
        "node fetched        {} in {} HTTP GETs ({:.1} % of the image)",
        format_bytes(served.bytes),
        served.requests,
        100.0 * served.bytes as f64 / image_size as f64
    );
    println!(
        "registry blob GETs  {gets}, all by the publisher during the ingest; none from the node"
    );
    println!(
        "snapshots           {} committed by the Strata snapshotter",
        snapshots
            .iter()
            .filter(|(_, kind)| kind == "Committed")
            .count()
    );
    println!(
        "first output        {} after the demo started",
        format_duration(first_output)
    );
    let lazy: std::time::Duration = steps
        .done()
        .iter()
        .filter(|s| {
            s.name.starts_with("strata-snapshotter pull") || s.name.starts_with("run the workload")
        })
        .map(|s| s.duration)
        .sum();
    println!(
        "pull + first run    {} with Strata (lazy, cold cache); {} without (download + unpack {})",
        format_duration(lazy),
        format_duration(native),
        format_bytes(image_size)
    );
    println!("\nsteps:\n{}", steps.summary());
    Ok(())
}
