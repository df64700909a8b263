//! `strata-bench-client`: measures `strata-snapshotter mount` against the same tree on local
//! disk (not a timed test; run it by hand, as root).
//!
//! 1. Generates, with the `catalog` crate, a repository of a data tree (`--data-mb` MB in
//!    files of mixed size, half incompressible, half text) and a metadata tree of
//!    `--entries` small files in directories of 1000, one nested catalog per 10 directories;
//!    the same trees are written to local disk.
//! 2. Serves it with `strata-publisher serve` on 127.0.0.1 and mounts it.
//! 3. Reads every data file cold (empty cache: HTTP), warm (object cache on disk, page
//!    cache dropped) and hot (page cache), each beside the local tree under the same
//!    conditions; stats every entry of the metadata tree twice (first walk loads catalogs,
//!    second is answered mostly by the kernel's entry/attribute caches) beside a local walk;
//!    then reports the mount process's peak RSS (`VmHWM`).
//!
//! Prints a Markdown table on stdout.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use catalog::{
    CatalogProperties, CatalogWriter, Certificate, Entry, LocalStore, Manifest, Suffix, Transition,
    Whitelist,
};
use clap::Parser;

const FQRN: &str = "bench.strata.example";

#[derive(Parser)]
#[command(about = "Benchmark the FUSE client against local disk")]
struct Args {
    /// Work directory (repository, local trees, cache, mount point); default a temp dir.
    #[arg(long)]
    work: Option<PathBuf>,
    /// Size of the data tree in MB.
    #[arg(long, default_value_t = 1024)]
    data_mb: u64,
    /// Entries of the metadata tree.
    #[arg(long, default_value_t = 300_000)]
    entries: u64,
    /// The `strata-publisher` binary (default: next to this one).
    #[arg(long)]
    publisher: Option<PathBuf>,
    /// The `strata-snapshotter` binary (default: next to this one).
    #[arg(long)]
    snapshotter: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let work = args
        .work
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;
    let exe_dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    let publisher = args
        .publisher
        .clone()
        .unwrap_or_else(|| exe_dir.join("strata-publisher"));
    let snapshotter = args
        .snapshotter
        .clone()
        .unwrap_or_else(|| exe_dir.join("strata-snapshotter"));

    eprintln!(
        "generating {} MB of data and {} entries…",
        args.data_mb, args.entries
    );
    let t = Instant::now();
    let built = build(&work, args.data_mb << 20, args.entries)?;
    eprintln!("generated in {:.1?}", t.elapsed());

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = Guard(
        Command::new(&publisher)
            .args(["serve", "--repo"])
            .arg(work.join("repo"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", publisher.display()))?,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("publisher serve did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let mnt = work.join("mnt");
    let cache = work.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(&mnt)?;
    let mut mount = Guard(
        Command::new(&snapshotter)
            .args(["mount", "--fqrn", FQRN, "--server"])
            .arg(format!("http://127.0.0.1:{port}/cvmfs/@fqrn@"))
            .arg("--pubkey")
            .arg(&built.pubkey)
            .arg("--cache")
            .arg(&cache)
            .arg(&mnt)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", snapshotter.display()))?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !catalog::mountinfo::is_fuse_mounted(&mnt).unwrap_or(false) {
        if Instant::now() > deadline || mount.0.try_wait()?.is_some() {
            bail!("mount did not come up");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = mount.0.id();

    let local = work.join("local");
    let bytes = built.data_bytes as f64 / 1048576.0;
    let mut rows = Vec::new();

    drop_caches();
    let cold = time(|| read_tree(&mnt.join("data")))?;
    drop_caches();
    let local_cold = time(|| read_tree(&local.join("data")))?;
    rows.push(row(
        "read all files, cold (HTTP, empty cache)",
        cold,
        local_cold,
        Some(bytes),
    ));
    drop_caches();
    let warm = time(|| read_tree(&mnt.join("data")))?;
    drop_caches();
    let local_warm = time(|| read_tree(&local.join("data")))?;
    rows.push(row(
        "read all files, warm (cache on disk, page cache dropped)",
        warm,
        local_warm,
        Some(bytes),
    ));
    // Fill the page cache, then time.
    read_tree(&mnt.join("data"))?;
    read_tree(&local.join("data"))?;
    let hot = time(|| read_tree(&mnt.join("data")))?;
    let local_hot = time(|| read_tree(&local.join("data")))?;
    rows.push(row(
        "read all files, hot (page cache)",
        hot,
        local_hot,
        Some(bytes),
    ));

    let stat1 = time(|| stat_tree(&mnt.join("meta")))?;
    let stat2 = time(|| stat_tree(&mnt.join("meta")))?;
    let local_stat = time(|| stat_tree(&local.join("meta")))?;
    rows.push(row("stat every entry, first walk", stat1, local_stat, None));
    rows.push(row(
        "stat every entry, second walk",
        stat2,
        local_stat,
        None,
    ));
    let hwm = vm_hwm(pid)?;

    let _ = Command::new("umount").arg(&mnt).status();
    let _ = mount.0.wait();
    drop(server);

    println!(
        "data tree: {} files, {:.0} MB; metadata tree: {} entries in {} nested catalogs\n",
        built.data_files, bytes, built.meta_entries, built.catalogs
    );
    println!("| measurement | strata mount | local disk | ratio | mount MB/s |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!(
        "\npeak RSS of the mount process (VmHWM) after all walks: {:.1} MB",
        hwm as f64 / 1024.0
    );
    Ok(())
}

/// Kills the child on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Built {
    pubkey: PathBuf,
    data_files: u64,
    data_bytes: u64,
    meta_entries: u64,
    catalogs: u64,
}

/// Writes `work/repo` (publisher layout: `strata.json`, `srv/`) and `work/local`.
fn build(work: &Path, data_bytes: u64, entries: u64) -> Result<Built> {
    let repo = work.join("repo");
    let _ = std::fs::remove_dir_all(&repo);
    let local = work.join("local");
    let _ = std::fs::remove_dir_all(&local);
    let scratch = work.join("scratch");
    std::fs::create_dir_all(&scratch)?;
    std::fs::create_dir_all(&repo)?;
    std::fs::write(
        repo.join("strata.json"),
        format!("{{\"fqrn\": \"{FQRN}\", \"ttl\": 240}}"),
    )?;
    let store = LocalStore::open(&repo.join("srv"))?;
    let now = unix_now();
    let dir = |name: &str| Entry::directory(name, 0o755, 0, 0, now as i64);
    let props = || CatalogProperties {
        revision: 1,
        last_modified: now,
        ttl: Some(240),
        previous_revision: None,
    };

    // Metadata tree: /meta/gNNN/dMMMM/fKKK, nested catalog per /meta/gNNN (10 dirs of 1000).
    let tiny = store.put_raw(b"x\n", Suffix::None)?;
    let per_dir = 1000u64;
    let dirs = entries.div_ceil(per_dir);
    let groups = dirs.div_ceil(10);
    let mut nested = Vec::new();
    let mut made = 0u64;
    for g in 0..groups {
        let mp = format!("/meta/g{g:03}");
        let db = scratch.join(format!("g{g}.db"));
        let _ = std::fs::remove_file(&db);
        let mut w = CatalogWriter::create(&db, &mp)?;
        w.add(&mp, &dir(&format!("g{g:03}")), Transition::NestedRoot)?;
        for d in 0..10 {
            if made >= entries {
                break;
            }
            let dpath = format!("{mp}/d{d}");
            w.add(&dpath, &dir(&format!("d{d}")), Transition::None)?;
            let ldir = local.join(&dpath[1..]);
            std::fs::create_dir_all(&ldir)?;
            for f in 0..per_dir {
                if made >= entries {
                    break;
                }
                let name = format!("f{f:04}");
                let e = Entry::regular(&name, 0o644, 0, 0, now as i64, 2, tiny);
                w.add(&format!("{dpath}/{name}"), &e, Transition::None)?;
                std::fs::write(ldir.join(&name), b"x\n")?;
                made += 1;
            }
        }
        let stats = w.finish(&props())?;
        let bytes = std::fs::read(&db)?;
        let hash = store.put_raw(&bytes, Suffix::Catalog)?;
        nested.push((mp, hash, bytes.len() as u64, stats));
    }

    // Root catalog with the data tree: /data/dNN/fileMMM.
    let root_db = scratch.join("root.db");
    let _ = std::fs::remove_file(&root_db);
    let mut w = CatalogWriter::create(&root_db, "")?;
    w.add("", &dir(""), Transition::None)?;
    w.add("/meta", &dir("meta"), Transition::None)?;
    for (mp, hash, size, stats) in &nested {
        w.add(
            mp,
            &dir(catalog::path_hash::file_name(mp)),
            Transition::NestedMountpoint,
        )?;
        w.add_nested(mp, hash, *size, stats)?;
    }
    w.add("/data", &dir("data"), Transition::None)?;
    let sizes = [4 << 10, 64 << 10, 1 << 20, 8 << 20, 32 << 20];
    let mut written = 0u64;
    let mut n = 0u64;
    let mut seed = 0x1234_5678_9abc_def1u64;
    while written < data_bytes {
        let size = sizes[(n % sizes.len() as u64) as usize].min(data_bytes - written) as usize;
        let body = if n.is_multiple_of(2) {
            noise(size, &mut seed)
        } else {
            text(size, n)
        };
        let d = format!("/data/d{:02}", n % 16);
        if n < 16 {
            w.add(&d, &dir(&format!("d{:02}", n % 16)), Transition::None)?;
            std::fs::create_dir_all(local.join(&d[1..]))?;
        }
        let name = format!("file{n:05}");
        let hash = store.put_raw(&body, Suffix::None)?;
        let e = Entry::regular(&name, 0o644, 0, 0, now as i64, body.len() as u64, hash);
        w.add(&format!("{d}/{name}"), &e, Transition::None)?;
        std::fs::write(local.join(&d[1..]).join(&name), &body)?;
        written += size as u64;
        n += 1;
    }
    w.finish(&props())?;
    let bytes = std::fs::read(&root_db)?;
    let root_hash = store.put_raw(&bytes, Suffix::Catalog)?;

    let master = catalog::keys::generate_key()?;
    let cert_key = catalog::keys::generate_key()?;
    let cert = Certificate::self_signed(&cert_key, FQRN)?;
    let cert_hash = store.put_raw(cert.to_pem().as_bytes(), Suffix::Certificate)?;
    let whitelist = Whitelist::new(FQRN, &cert, now - 60, 30 * 86400);
    store.write_file_atomic(".cvmfswhitelist", &whitelist.sign(&master)?)?;
    let manifest = Manifest {
        catalog_hash: root_hash,
        catalog_size: bytes.len() as u64,
        ttl: 240,
        revision: 1,
        garbage_collectable: false,
        alternative_paths: false,
        fqrn: FQRN.into(),
        certificate: cert_hash,
        history: None,
        timestamp: now,
        meta_info: None,
        reflog: None,
    };
    store.write_file_atomic(".cvmfspublished", &manifest.sign(&cert_key)?)?;
    let pubkey = work.join(format!("{FQRN}.pub"));
    std::fs::write(
        &pubkey,
        catalog::keys::public_key_to_pem(&master.to_public_key())?,
    )?;
    Ok(Built {
        pubkey,
        data_files: n,
        data_bytes: written,
        meta_entries: made,
        catalogs: groups,
    })
}

fn noise(n: usize, x: &mut u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            *x as u8
        })
        .collect()
}

fn text(n: usize, seed: u64) -> Vec<u8> {
    let line = format!("line of a text file number {seed}, compressible content\n");
    line.bytes().cycle().take(n).collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn drop_caches() {
    // Needs root.
    let _ = std::process::Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3\n");
}

fn time(f: impl FnOnce() -> Result<u64>) -> Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

/// Reads every regular file below `dir`; returns the bytes read.
fn read_tree(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 20];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let mut f = std::fs::File::open(e.path())?;
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
            }
        }
    }
    Ok(total)
}

/// `lstat` of every entry below `dir` (names from `readdir`); returns the count.
fn stat_tree(dir: &Path) -> Result<u64> {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let path = e?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            count += 1;
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(count)
}

/// `VmHWM` of `pid` in kB.
fn vm_hwm(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")
}

fn row(what: &str, mount: Duration, local: Duration, mb: Option<f64>) -> String {
    let ratio = mount.as_secs_f64() / local.as_secs_f64().max(1e-9);
    let rate = mb
        .map(|mb| format!("{:.0}", mb / mount.as_secs_f64().max(1e-9)))
        .unwrap_or_else(|| "–".into());
    format!(
        "| {what} | {:.2} s | {:.2} s | {ratio:.2}× | {rate} |",
        mount.as_secs_f64(),
        local.as_secs_f64()
    )
}
