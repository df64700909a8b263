//! `strata-bench-layer-read`: one big layer read whole with an empty cache, Strata's client
//! beside stock `cvmfs2`, on loopback, in one run.
//!
//! What a node does when a container reads most of a layer (a build, a scan, `tar` of a
//! directory), and the worst case for a client that fetches one object at a time. The layer
//! is this machine's `/usr/share`, `/usr/lib` and `/usr/include` (Debian's files; over
//! 100 000 entries and several GB), written by GNU tar, compressed with `pigz -1` into an
//! OCI layout and cached under `<target>/strata-bench-images/layer-read-v1`. It is
//! published with `strata-publisher ingest oci:…` and served by `strata-publisher serve`.
//! For each client, with an empty cache and the page cache dropped before every phase:
//!
//! * **cold read**: `tar -cf - .` in the layer's `layerfs` directory, its output counted;
//! * **warm read**: the same again (every object now in the client's cache);
//! * **stat walk**: `find . -printf '%s\n'` (a `stat` of every entry).
//!
//! Clients: `strata-snapshotter mount` (read-ahead on, the default), the same with
//! `--no-read-ahead`, and stock `cvmfs2` when installed (`BENCH_STOCK=0` leaves it out,
//! `BENCH_STOCK=1` requires it). `BENCH_CLIENTS=strata,no-read-ahead,stock` picks rows (all by
//! default), `BENCH_MOUNT_OPTIONS` adds options to Strata's mounts (A/B runs). Measured: wall times, GETs and bytes the server sent
//! (serve's access log), peak RSS of the mount process (`VmHWM`). Prints a Markdown table
//! on stdout, progress on stderr. Needs root, `/dev/fuse`, the tools of
//! `scripts/install-deps` and a release build (`cargo build --release -p publisher -p
//! snapshotter -p tests`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use ::tests::binaries::{check_prerequisites, target_dir, which};
use ::tests::image::{put_blob, sha256_file};
use ::tests::measure::{Machine, load_average, memory_kib, say, sync, utc_now};
use ::tests::stock::StockMount;
use ::tests::strata::{FuseMount, HttpServer, MountArgs, Repo, Served};
use ::tests::workdir::{WorkDir, run_program};
use anyhow::{Context, Result, bail};

const FQRN: &str = "layer-read.strata.example";
/// What the layer holds, relative to `/`.
const SOURCES: &[&str] = &["usr/share", "usr/lib", "usr/include"];
/// Bump whenever the recipe changes: the cache directory's name includes it.
const RECIPE: &str = "layer-read-v1";

fn main() -> ExitCode {
    run_program("strata-bench-layer-read", "bench-layer-read", bench)
}

/// The cached layout: where it is and its one layer's digest.
struct Layout {
    dir: PathBuf,
    layer_hex: String,
    entries: u64,
    tar_bytes: u64,
    blob_bytes: u64,
}

/// Figures of one client.
struct Row {
    client: &'static str,
    cold: Duration,
    cold_bytes: u64,
    cold_served: Served,
    warm: Duration,
    stat_walk: Duration,
    peak_rss_kib: Option<u64>,
}

fn bench(work: &WorkDir) -> Result<()> {
    let stock = match std::env::var("BENCH_STOCK").as_deref() {
        Ok("0") => false,
        Ok("1") if which("cvmfs2").is_none() => bail!("BENCH_STOCK=1 but cvmfs2 is not on PATH"),
        Ok("1") => true,
        Ok(other) if !other.is_empty() => bail!("BENCH_STOCK={other:?}: use 0 or 1"),
        _ => which("cvmfs2").is_some(),
    };
    let clients = match std::env::var("BENCH_CLIENTS") {
        Ok(list) if !list.is_empty() => list.split(',').map(str::to_string).collect(),
        _ => vec!["strata".into(), "no-read-ahead".into(), "stock".into()],
    };
    if let Some(bad) = clients
        .iter()
        .find(|c| !["strata", "no-read-ahead", "stock"].contains(&c.as_str()))
    {
        bail!("BENCH_CLIENTS: unknown client {bad:?} (use strata, no-read-ahead, stock)");
    }
    let stock = stock && clients.iter().any(|c| c == "stock");
    let extra_options = std::env::var("BENCH_MOUNT_OPTIONS").unwrap_or_default();
    check_prerequisites()?;
    let started = utc_now();
    let load_start = load_average();
    say(&format!("work directory {}", work.path().display()));
    let t = Instant::now();
    let layout = layout(
        &target_dir()?.join("strata-bench-images").join(RECIPE),
        work,
    )?;
    say(&format!(
        "layer: {} entries, {:.2} GB tar, {:.2} GB compressed (ready in {:.0} s)",
        layout.entries,
        layout.tar_bytes as f64 / 1e9,
        layout.blob_bytes as f64 / 1e9,
        t.elapsed().as_secs_f64()
    ));

    let repo = Repo::init(&work.path().join("repo"), FQRN, &work.log("publisher-init"))?;
    let t = Instant::now();
    repo.ingest(
        &[&format!("oci:{}:1", layout.dir.display())],
        &work.log("publisher-ingest"),
    )?;
    let ingest = t.elapsed();
    say(&format!("ingest {:.1} s", ingest.as_secs_f64()));
    let server = repo.serve(&work.log("publisher-serve"))?;
    let layer_rel = format!(
        ".layers/{}/{}/layerfs",
        &layout.layer_hex[..2],
        layout.layer_hex
    );

    let mut rows = Vec::new();
    for (client, read_ahead) in [("Strata", true), ("Strata, no read-ahead", false)] {
        let name = if read_ahead {
            "strata"
        } else {
            "no-read-ahead"
        };
        if !clients.iter().any(|c| c == name) {
            continue;
        }
        let dir = work.subdir(&client.replace([' ', ','], "-"))?;
        let (cache, mountpoint) = (dir.join("cache"), dir.join("mnt"));
        let args = MountArgs {
            fqrn: FQRN,
            server: &server.server_url(),
            pubkey: &repo.public_key(),
            cache: &cache,
            mountpoint: &mountpoint,
        };
        let mut options: Vec<&str> = extra_options.split_whitespace().collect();
        if !read_ahead {
            options.push("--no-read-ahead");
        }
        let mut mount = FuseMount::start_with_options(
            &args,
            None,
            &options,
            &work.log(&format!("mount-{read_ahead}")),
        )?;
        let row = measure(client, &mountpoint.join(&layer_rel), &server, work, || {
            mount.pid()
        })?;
        mount.stop();
        rows.push(row);
    }
    if stock {
        let dir = work.subdir("stock")?;
        let mut mount = StockMount::start(
            &dir,
            FQRN,
            &server.server_url(),
            &repo.public_key(),
            &work.log("stock-cvmfs2"),
        )?;
        let root = mount.mountpoint.join(&layer_rel);
        let row = measure("stock cvmfs2 2.12", &root, &server, work, || mount.pid())?;
        mount.stop();
        rows.push(row);
    }
    let load_end = load_average();
    println!(
        "{}",
        render(&started, (load_start, load_end), &layout, ingest, &rows)
    );
    Ok(())
}

/// Cold read, warm read and stat walk of `root` through one client.
fn measure(
    client: &'static str,
    root: &Path,
    server: &HttpServer,
    work: &WorkDir,
    pid: impl Fn() -> Option<u32>,
) -> Result<Row> {
    say(&format!("{client}: cold read"));
    drop_caches()?;
    let before = server.served()?;
    let (cold, cold_bytes) = tar_read(root, work)?;
    let after = server.served()?;
    let cold_served = Served {
        requests: after.requests - before.requests,
        bytes: after.bytes - before.bytes,
    };
    say(&format!(
        "  {:.1} s, {:.2} GB of tar, {} GETs, {:.2} GB received",
        cold.as_secs_f64(),
        cold_bytes as f64 / 1e9,
        cold_served.requests,
        cold_served.bytes as f64 / 1e9
    ));
    drop_caches()?;
    let (warm, warm_bytes) = tar_read(root, work)?;
    if warm_bytes != cold_bytes {
        bail!("{client}: the warm read gave {warm_bytes} bytes of tar, the cold one {cold_bytes}");
    }
    say(&format!("  warm read {:.1} s", warm.as_secs_f64()));
    drop_caches()?;
    let t = Instant::now();
    let out = Command::new("find")
        .arg(".")
        .args(["-printf", "%s\\n"])
        .current_dir(root)
        .stdout(Stdio::null())
        .status()
        .context("run find")?;
    let stat_walk = t.elapsed();
    if !out.success() {
        bail!("{client}: find failed ({out})");
    }
    say(&format!("  stat walk {:.1} s", stat_walk.as_secs_f64()));
    let peak_rss_kib = pid().and_then(|p| memory_kib(p).ok()).map(|(hwm, _)| hwm);
    Ok(Row {
        client,
        cold,
        cold_bytes,
        cold_served,
        warm,
        stat_walk,
        peak_rss_kib,
    })
}

/// `tar -cf - .` in `root`, its output read and counted here: (wall time, bytes).
fn tar_read(root: &Path, work: &WorkDir) -> Result<(Duration, u64)> {
    let log = work.log("tar");
    let stderr =
        std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let t = Instant::now();
    let mut child = Command::new("tar")
        .args(["-cf", "-", "."])
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("run tar")?;
    let mut out = child.stdout.take().context("tar's stdout")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = out.read(&mut buf).context("read tar's output")?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
    }
    let status = child.wait().context("wait for tar")?;
    let took = t.elapsed();
    if !status.success() {
        bail!(
            "tar of {} failed ({status}): {}",
            root.display(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    Ok((took, bytes))
}

/// Writes back dirty pages and drops the page, dentry and inode caches, so that a phase
/// reads through the client and not from the kernel's caches.
fn drop_caches() -> Result<()> {
    sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("write /proc/sys/vm/drop_caches")
}

/// Builds (or finds) the OCI layout with the one layer.
fn layout(dir: &Path, work: &WorkDir) -> Result<Layout> {
    let facts = dir.join("facts.json");
    if let Ok(text) = std::fs::read_to_string(&facts) {
        let v: serde_json::Value = serde_json::from_str(&text).context("facts.json")?;
        let num = |k: &str| v[k].as_u64().with_context(|| format!("facts.json: {k}"));
        return Ok(Layout {
            dir: dir.to_owned(),
            layer_hex: v["layer_hex"]
                .as_str()
                .context("facts.json: layer_hex")?
                .into(),
            entries: num("entries")?,
            tar_bytes: num("tar_bytes")?,
            blob_bytes: num("blob_bytes")?,
        });
    }
    say("building the layer (GNU tar + pigz -1 of this machine's files)");
    let scratch = dir.with_extension("building");
    let _ = std::fs::remove_dir_all(&scratch);
    let blobs = scratch.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("create {}", blobs.display()))?;
    let tar_path = scratch.join("layer.tar");
    let status = Command::new("tar")
        .args(["--numeric-owner", "-cf"])
        .arg(&tar_path)
        .args(["-C", "/"])
        .args(SOURCES)
        .stderr(std::fs::File::create(work.log("layer-tar"))?)
        .status()
        .context("run tar")?;
    // 1: some files changed while read; the layer is still a valid tar.
    if !matches!(status.code(), Some(0 | 1)) {
        bail!("tar of {SOURCES:?} failed ({status})");
    }
    let count = Command::new("tar")
        .arg("-tf")
        .arg(&tar_path)
        .output()
        .context("run tar -t")?;
    let entries = count.stdout.iter().filter(|&&b| b == b'\n').count() as u64;
    let (diff_id, tar_bytes) = sha256_file(&tar_path)?;
    let blob_tmp = scratch.join("layer.tar.gz");
    let status = Command::new("pigz")
        .args(["-1", "-c"])
        .arg(&tar_path)
        .stdout(std::fs::File::create(&blob_tmp)?)
        .status()
        .context("run pigz")?;
    if !status.success() {
        bail!("pigz failed ({status})");
    }
    std::fs::remove_file(&tar_path)?;
    let (layer_digest, blob_bytes) = sha256_file(&blob_tmp)?;
    let layer_hex = layer_digest.trim_start_matches("sha256:");
    std::fs::rename(&blob_tmp, blobs.join(layer_hex))?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    .to_string();
    let (config_digest, config_size) = put_blob(&blobs, config.as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": blob_bytes,
        }],
    })
    .to_string();
    let (manifest_digest, manifest_size) = put_blob(&blobs, manifest.as_bytes())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "1"},
        }],
    });
    std::fs::write(scratch.join("index.json"), index.to_string())?;
    std::fs::write(
        scratch.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    std::fs::write(
        scratch.join("facts.json"),
        serde_json::json!({
            "layer_hex": layer_hex, "entries": entries,
            "tar_bytes": tar_bytes, "blob_bytes": blob_bytes,
        })
        .to_string(),
    )?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&scratch, dir)
        .with_context(|| format!("rename {} to {}", scratch.display(), dir.display()))?;
    layout(dir, work)
}

fn render(
    started: &str,
    load: (Option<f64>, Option<f64>),
    layout: &Layout,
    ingest: Duration,
    rows: &[Row],
) -> String {
    let machine = Machine::read();
    let show = |l: Option<f64>| l.map_or("?".into(), |l| format!("{l:.2}"));
    let mut out = format!(
        "Run of **{started}**: {} × {} (`nproc` {}), {:.0} GiB RAM, kernel {}; 1-minute load \
         average {} at the start, {} at the end. Layer: `/usr/share`, `/usr/lib`, \
         `/usr/include` of this machine, {} entries, {:.2} GB as tar, {:.2} GB compressed; \
         `strata-publisher ingest` {:.1} s.\n\n",
        machine.cpus,
        machine.cpu_model,
        machine.cpus,
        machine.mem_gb,
        machine.kernel,
        show(load.0),
        show(load.1),
        layout.entries,
        layout.tar_bytes as f64 / 1e9,
        layout.blob_bytes as f64 / 1e9,
        ingest.as_secs_f64(),
    );
    out.push_str(
        "| client | cold read (`tar -cf -`) | received | warm read | stat walk | mount peak RSS |\n\
         |---|---:|---|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.1} s ({:.0} MB/s) | {} GETs, {:.2} GB | {:.1} s | {:.1} s | {} |\n",
            r.client,
            r.cold.as_secs_f64(),
            r.cold_bytes as f64 / 1e6 / r.cold.as_secs_f64().max(1e-9),
            r.cold_served.requests,
            r.cold_served.bytes as f64 / 1e9,
            r.warm.as_secs_f64(),
            r.stat_walk.as_secs_f64(),
            r.peak_rss_kib
                .map_or("?".into(), |k| format!("{:.1} MB", k as f64 / 1024.0)),
        ));
    }
    out
}
