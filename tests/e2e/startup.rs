//! Startup packs with the real parts: a start recorded by the publisher in its sandbox; a
//! container start traced by the mount, published with
//! `strata-publisher startup`, then a cold node (fresh cache, fresh containerd) whose
//! `pull` asks for the packs: the server sees the pack GETs and no GET of any object in
//! them, and the workload runs. A damaged pack on a third cold node is refused and the
//! start still succeeds through ordinary fetches.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tests::scenario::{Published, Stack};
use tests::steps::Steps;
use tests::strata::{cache_report, report_value};
use tests::wait::poll;
use tests::workdir::WorkDir;

use crate::in_workdir;

/// `startup/` of the published image, as a path in the mount `mnt`.
fn startup_dir(mnt: &Path, reference: &str) -> std::path::PathBuf {
    mnt.join(namespace::paths::join(&namespace::paths::startup_dir(
        reference,
        "linux-amd64",
    )))
}

/// Waits until the counter `key` of the cache at `cache` reaches `packs`; the report.
/// The names of the startup packs in `startup` (an image's `startup` directory on a mount).
fn pack_names(startup: &Path) -> Result<Vec<String>> {
    Ok(std::fs::read_dir(startup)
        .with_context(|| format!("list {}", startup.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| namespace::paths::is_pack_name(n))
        .collect())
}

/// Polls the cache report of a live mount until `key` counts at least `at_least`: the mount
/// writes its counters to the cache index in batches, within half a second.
fn wait_for_count(work: &WorkDir, cache: &Path, key: &str, at_least: u64) -> Result<String> {
    let what = format!("the cache to count {at_least} for {key:?}");
    let mut last = String::new();
    let counted = poll(
        &what,
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let report = cache_report(cache, &work.log("cache-report"))?;
            if report_value(&report, key).is_some_and(|n| n >= at_least) {
                return Ok(Some(report));
            }
            last = report;
            Ok(None)
        },
    );
    counted.with_context(|| format!("the last report:\n{last}"))
}

/// The data paths (`data/XX/…[P]`) of the file and chunk objects the published `objects`
/// list names (not its catalogs: `pull` may load one before the first pack arrives).
fn member_objects(objects: &str) -> Result<Vec<String>> {
    objects
        .lines()
        .filter(|line| !line.split(' ').next().unwrap_or_default().ends_with('C'))
        .map(|line| {
            let id = line.split(' ').next().unwrap_or_default();
            let (hex, suffix) = match id.strip_suffix('P') {
                Some(hex) => (hex, catalog::Suffix::Partial),
                None => (
                    id.strip_suffix('-').context("object kind")?,
                    catalog::Suffix::None,
                ),
            };
            let hash = catalog::ContentHash::parse_hex(hex)
                .with_context(|| format!("object line {line:?}"))?;
            Ok(hash.object_path(suffix))
        })
        .collect()
}

/// Brings the stack down but keeps the publishing side.
fn detach(stack: Stack) -> Published {
    let Stack {
        containerd,
        snapshotter,
        mount,
        published,
    } = stack;
    drop(containerd);
    drop(snapshotter);
    drop(mount);
    published
}

#[test]
fn a_traced_start_is_served_from_its_startup_packs_on_a_cold_node() {
    in_workdir("startup", |work| {
        let mut steps = Steps::new();
        let published = Published::up(work, &mut steps)?;
        // No node needed: the publisher records a start in its own sandbox.
        let recorded_trace = work.path().join("recorded.trace");
        let out = steps.run(
            "strata-publisher startup --record -- python3 -c …",
            || {
                published.repo.record_startup(
                    &published.reference,
                    &recorded_trace,
                    "120s",
                    &["python3", "-c", "import json; print(json.dumps([1]))"],
                    &work.log("startup-record"),
                )
            },
        )?;
        println!("    {}", out.replace('\n', "\n    "));
        let text = std::fs::read_to_string(&recorded_trace)?;
        ensure!(
            text.starts_with("# strata access trace v2\n")
                && text
                    .lines()
                    .any(|l| l.starts_with("/.flat/") && l.ends_with("/usr/bin/python3.11"))
                && text
                    .lines()
                    .any(|l| l.contains("/usr/lib/python3.11/json/")),
            "the recorded trace lacks python3.11 or the json package:\n{text}"
        );
        ensure!(
            out.contains("exit status: 0") && out.contains("pack(s) under"),
            "record: {out}"
        );
        // A start that never ends (a service) is stopped at the timeout; what it read by
        // then is its start (`/etc/os-release` is a symlink to `/usr/lib/os-release`).
        let service_trace = work.path().join("service.trace");
        let out = steps.run(
            "startup --record of a service, stopped at --timeout",
            || {
                published.repo.record_startup(
                    &published.reference,
                    &service_trace,
                    "3s",
                    &["sh", "-c", "cat /etc/os-release >/dev/null; exec sleep 600"],
                    &work.log("startup-record-service"),
                )
            },
        )?;
        let text = std::fs::read_to_string(&service_trace)?;
        ensure!(
            out.contains("stopped after 3s") && text.lines().any(|l| l.ends_with("/os-release")),
            "record of a service: {out}\n{text}"
        );
        let stack = Stack::attach(published, work, &mut steps)?;
        steps.run("first start (traced)", || stack.check_workload())?;
        let traced = steps.run("the trace lists what the start read", || {
            stack.check_trace(work)
        })?;
        println!("    {traced} files traced");
        let published = detach(stack);
        let reference = published.reference.clone();
        let summary = steps.run("strata-publisher startup --trace mount.trace", || {
            published.repo.startup(
                &reference,
                &work.path().join("mount.trace"),
                &work.log("startup"),
            )
        })?;
        println!("    {summary}");

        // A cold node: fresh cache, containerd and snapshotter; `pull` asks for the packs.
        let mut cold = WorkDir::new("startup-cold")?;
        let result = cold_start(&cold, published, &mut steps, &reference);
        let published = match result {
            Ok(published) => published,
            Err(e) => {
                cold.dump_logs();
                cold.keep();
                return Err(e);
            }
        };

        // A damaged pack: refused as a whole, the start succeeds through ordinary fetches.
        let mut damaged = WorkDir::new("startup-damaged")?;
        if let Err(e) = damaged_pack_start(&damaged, published, &mut steps) {
            damaged.dump_logs();
            damaged.keep();
            return Err(e);
        }
        println!("steps:\n{}", steps.summary());
        Ok(())
    });
}

fn cold_start(
    cold: &WorkDir,
    published: Published,
    steps: &mut Steps,
    reference: &str,
) -> Result<Published> {
    let before = published.server.get_paths()?.len();
    let stack = Stack::attach(published, cold, steps)?;
    let mnt = cold.path().join("mnt");
    let startup = startup_dir(&mnt, reference);
    let packs = pack_names(&startup)?;
    ensure!(!packs.is_empty(), "no pack in {}", startup.display());
    steps.run("the mount prefetched every pack", || {
        wait_for_count(
            cold,
            &cold.path().join("cache"),
            "startup packs prefetched",
            packs.len() as u64,
        )
    })?;
    let out = steps.run("cold start from the packs", || stack.check_workload())?;
    print!("    workload printed {out}");
    // What an HPC host runs before its jobs: the same request, answered the same.
    let mut prefetch = tests::strata::strata_command(tests::binaries::SNAPSHOTTER)?;
    prefetch
        .arg("prefetch")
        .arg("--mountpoint")
        .arg(&mnt)
        .arg(reference);
    let out = tests::process::run_checked(
        &mut prefetch,
        &cold.log("prefetch"),
        std::time::Duration::from_secs(60),
    )?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        said.contains(&format!("{} pack(s)", packs.len())),
        "strata-snapshotter prefetch said {said:?}"
    );
    let objects = std::fs::read_to_string(startup.join("objects"))?;
    let members = member_objects(&objects)?;
    let gets: Vec<String> = stack.published.server.get_paths()?[before..].to_vec();
    let member_gets: Vec<&String> = gets.iter().filter(|p| members.contains(p)).collect();
    ensure!(
        member_gets.is_empty(),
        "objects in a pack were fetched on their own: {member_gets:?}"
    );
    let pack_gets = gets
        .iter()
        .filter(|p| p.starts_with("data/") && !p.ends_with('C'))
        .count();
    // The mount's counters reach the cache index within half a second of the reads.
    let report = wait_for_count(
        cold,
        &cold.path().join("cache"),
        "prefetched bytes later read",
        1,
    )
    .context("nothing prefetched was read")?;
    let used = report_value(&report, "prefetched bytes later read").unwrap_or(0);
    let prefetched = report_value(&report, "prefetched bytes").unwrap_or(0);
    ensure!(
        used > 0 && prefetched > 0,
        "nothing prefetched was read:\n{report}"
    );
    println!(
        "    {} pack(s), {} members; {} data GETs on the cold node, none of a member; \
         {used} of {prefetched} prefetched bytes read",
        packs.len(),
        members.len(),
        pack_gets
    );
    Ok(detach(stack))
}

fn damaged_pack_start(node: &WorkDir, published: Published, steps: &mut Steps) -> Result<()> {
    // Flip one byte in the middle of every pack object in the served tree.
    let srv = published.repo.dir.join("srv");
    let objects_dir = srv.join("data");
    let mut flipped = 0;
    for bucket in std::fs::read_dir(&objects_dir)? {
        for object in std::fs::read_dir(bucket?.path())? {
            let path = object?.path();
            let mut bytes = std::fs::read(&path)?;
            if bytes.starts_with(catalog::startup_pack::MAGIC.as_bytes()) {
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x55;
                std::fs::write(&path, &bytes)?;
                flipped += 1;
            }
        }
    }
    ensure!(
        flipped > 0,
        "no pack object under {}",
        objects_dir.display()
    );
    let reference = published.reference.clone();
    let stack = Stack::attach(published, node, steps)?;
    // Every pack of the served revision fails (the flipped objects also include packs of
    // earlier revisions, which this node never asks for).
    let startup = startup_dir(&node.path().join("mnt"), &reference);
    let packs = pack_names(&startup)?.len() as u64;
    ensure!(
        packs > 0 && packs <= flipped,
        "{packs} pack(s) in {}, {flipped} flipped",
        startup.display()
    );
    steps.run("damaged packs: counted as failed", || {
        wait_for_count(
            node,
            &node.path().join("cache"),
            "startup packs failed",
            packs,
        )
    })?;
    let out = steps.run("start with damaged packs (ordinary fetches)", || {
        stack.check_workload()
    })?;
    print!("    workload printed {out}");
    Ok(())
}
