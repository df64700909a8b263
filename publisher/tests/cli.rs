//! Command-line tests of `strata-publisher` as operators run it: re-ingest from a local
//! `docker-registry` (no layer blob downloaded again), SIGKILL during `ingest` (the last
//! revision stays complete, a rerun finishes), `verify`/`ls`/`resign` exit codes.
//!
//! Needs `docker-registry` and `skopeo` (Debian packages of the same names) for the registry
//! test; it is skipped with a message when they are missing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_strata-publisher");
const FQRN: &str = "cli.example.org";

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn run(args: &[&str]) -> Output {
    ok(Command::new(BIN).args(args).output())
}

fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "strata-publisher {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic pseudo-random bytes (incompressible, so zlib has work to do).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A layer tar with `files` files of `size` bytes each (half noise, half text).
fn layer_tar(seed: u64, files: usize, size: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..files {
        let mut data = noise(seed * 1000 + i as u64, size / 2);
        data.extend(
            format!("line {i} of layer {seed}\n")
                .repeat(size / 40)
                .bytes()
                .take(size / 2),
        );
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        ok(b.append_data(&mut h, format!("l{seed}/f{i}"), &data[..]));
    }
    ok(b.into_inner())
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    ok(e.write_all(raw));
    ok(e.finish())
}

/// Writes an OCI layout tagged `tag` with gzip layers; returns the layer digests.
fn write_layout(dir: &Path, tag: &str, tars: &[Vec<u8>]) -> Vec<String> {
    let blobs = dir.join("blobs/sha256");
    ok(std::fs::create_dir_all(&blobs));
    let put = |bytes: &[u8]| {
        let d = digest(bytes);
        ok(std::fs::write(blobs.join(&d[7..]), bytes));
        d
    };
    let mut layers = Vec::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for t in tars {
        let gz = gzip(t);
        let d = put(&gz);
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d, "size": gz.len()}));
        layers.push(d);
        diff_ids.push(digest(t));
    }
    let config = ok(serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}})));
    let cd = put(&config);
    let manifest = ok(serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cd, "size": config.len()},
        "layers": descs})));
    let md = put(&manifest);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
        "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    ok(std::fs::write(dir.join("index.json"), index.to_string()));
    ok(std::fs::write(
        dir.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    ));
    layers
}

/// Rewrites `dir/index.json` so that tag `tag` names an OCI index of the image already in
/// the layout (as linux/amd64) and a second image (linux/arm64/v8) with one more layer.
fn make_multi_platform(dir: &Path, tag: &str) {
    let blobs = dir.join("blobs/sha256");
    let index: serde_json::Value = ok(serde_json::from_slice(&ok(std::fs::read(
        dir.join("index.json"),
    ))));
    let amd = index["manifests"][0].clone();
    let amd_digest = amd["digest"].as_str().unwrap_or_default().to_string();
    let amd_manifest: serde_json::Value = ok(serde_json::from_slice(&ok(std::fs::read(
        blobs.join(&amd_digest[7..]),
    ))));
    let cfg_digest = amd_manifest["config"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut cfg: serde_json::Value = ok(serde_json::from_slice(&ok(std::fs::read(
        blobs.join(&cfg_digest[7..]),
    ))));
    let extra = layer_tar(77, 1, 1000);
    let gz = gzip(&extra);
    let put = |bytes: &[u8]| {
        let d = digest(bytes);
        ok(std::fs::write(blobs.join(&d[7..]), bytes));
        d
    };
    let extra_digest = put(&gz);
    cfg["architecture"] = "arm64".into();
    cfg["variant"] = "v8".into();
    if let Some(ids) = cfg["rootfs"]["diff_ids"].as_array_mut() {
        ids.push(digest(&extra).into());
    }
    let cfg_bytes = ok(serde_json::to_vec(&cfg));
    let mut arm_manifest = amd_manifest.clone();
    arm_manifest["config"]["digest"] = put(&cfg_bytes).into();
    arm_manifest["config"]["size"] = cfg_bytes.len().into();
    if let Some(l) = arm_manifest["layers"].as_array_mut() {
        l.push(
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": extra_digest, "size": gz.len()}),
        );
    }
    let arm_bytes = ok(serde_json::to_vec(&arm_manifest));
    let arm_digest = put(&arm_bytes);
    let idx = ok(serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd_digest,
             "size": amd["size"], "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm_digest,
             "size": arm_bytes.len(), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]})));
    let idx_digest = put(&idx);
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": idx_digest,
        "size": idx.len(), "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    ok(std::fs::write(dir.join("index.json"), top.to_string()));
}

fn init_repo(dir: &Path) {
    run_ok(&["init", "--repo", &dir.display().to_string(), "--fqrn", FQRN]);
}

fn verify_ok(dir: &Path) -> String {
    run_ok(&["verify", "--repo", &dir.display().to_string()])
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A `docker-registry` on a free loopback port; killed on drop.
struct Registry {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = ok(TcpListener::bind("127.0.0.1:0"))
            .local_addr()
            .map(|a| a.port());
        let addr = SocketAddr::from(([127, 0, 0, 1], ok(port)));
        let config = dir.join("registry.yml");
        ok(std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n",
                dir.join("storage").display()
            ),
        ));
        let log = dir.join("registry.log");
        let out = ok(std::fs::File::create(&log));
        let err = ok(out.try_clone());
        let child = ok(Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(out)
            .stderr(err)
            .spawn());
        let r = Registry { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !r.ready() {
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    }

    fn ready(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(self.addr) else {
            return false;
        };
        let req = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        let mut resp = String::new();
        s.write_all(req.as_bytes()).is_ok()
            && s.read_to_string(&mut resp).is_ok()
            && resp.starts_with("HTTP/1.0 200")
            || resp.starts_with("HTTP/1.1 200")
    }

    /// Access-log lines `GET /v2/<repo>/blobs/<digest>` for any of `digests`.
    fn blob_gets(&self, repo: &str, digests: &[String]) -> usize {
        let log = ok(std::fs::read_to_string(&self.log));
        log.lines()
            .filter(|l| {
                digests
                    .iter()
                    .any(|d| l.contains(&format!("\"GET /v2/{repo}/blobs/{d} ")))
            })
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn reingest_from_registry_downloads_no_layer() {
    if !have("docker-registry") || !have("skopeo") {
        eprintln!("skipping: docker-registry or skopeo not installed");
        return;
    }
    let work = ok(tempfile::tempdir());
    let registry = Registry::start(work.path());
    let layout = work.path().join("layout");
    let tars: Vec<Vec<u8>> = (1..=3).map(|s| layer_tar(s, 4, 64 << 10)).collect();
    let layers = write_layout(&layout, "1", &tars);
    let dest = format!("docker://{}/demo/app:1", registry.addr);
    let out = ok(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", "--quiet"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(&dest)
        .output());
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let repo = work.path().join("repo");
    init_repo(&repo);
    let r = repo.display().to_string();
    let first = run_ok(&["ingest", "--repo", &r, &dest]);
    assert!(first.contains("3 layer(s) converted"), "{first}");
    assert_eq!(registry.blob_gets("demo/app", &layers), 3);
    verify_ok(&repo);

    let start = Instant::now();
    let second = run_ok(&["ingest", "--repo", &r, &dest]);
    let took = start.elapsed();
    assert!(
        second.contains("0 layer(s) converted, 3 reused"),
        "{second}"
    );
    assert_eq!(
        registry.blob_gets("demo/app", &layers),
        3,
        "re-ingest downloaded a layer blob"
    );
    eprintln!("re-ingest of an unchanged image took {took:?}");
    verify_ok(&repo);
    let ls = run_ok(&["ls", "--repo", &r]);
    assert!(
        ls.contains(&format!("{}/demo/app:1", registry.addr)),
        "{ls}"
    );
    assert!(ls.contains("3 layer(s)"), "{ls}");
}

#[test]
fn multi_platform_index_from_registry() {
    if !have("docker-registry") || !have("skopeo") {
        eprintln!("skipping: docker-registry or skopeo not installed");
        return;
    }
    let work = ok(tempfile::tempdir());
    let registry = Registry::start(work.path());
    let layout = work.path().join("layout");
    write_layout(&layout, "1", &[layer_tar(5, 2, 2000)]);
    make_multi_platform(&layout, "1");
    let dest = format!("docker://{}/multi:1", registry.addr);
    let out = ok(Command::new("skopeo")
        .args(["copy", "--all", "--dest-tls-verify=false", "--quiet"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(&dest)
        .output());
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let repo = work.path().join("repo");
    init_repo(&repo);
    let r = repo.display().to_string();
    let first = run_ok(&[
        "ingest",
        "--repo",
        &r,
        "--default-platform",
        "linux/arm64",
        &dest,
    ]);
    assert!(first.contains("2 layer(s) converted"), "{first}");
    verify_ok(&repo);
    let ls = run_ok(&["ls", "--repo", &r]);
    assert!(
        ls.contains("linux/amd64") && ls.contains("linux/arm64/v8"),
        "{ls}"
    );
    // only amd64 into a second repository
    let repo2 = work.path().join("repo2");
    init_repo(&repo2);
    let r2 = repo2.display().to_string();
    let out = run_ok(&["ingest", "--repo", &r2, "--platform", "linux/amd64", &dest]);
    assert!(out.contains("1 layer(s) converted"), "{out}");
    let ls = run_ok(&["ls", "--repo", &r2]);
    assert!(ls.contains("linux/amd64") && !ls.contains("arm64"), "{ls}");
}

#[test]
fn sigkill_during_ingest_leaves_a_servable_revision() {
    let work = ok(tempfile::tempdir());
    let layout = work.path().join("layout");
    // ~24 MB of half-incompressible data in 4 layers: long enough to be killed in the middle
    let tars: Vec<Vec<u8>> = (1..=4).map(|s| layer_tar(s, 12, 512 << 10)).collect();
    write_layout(&layout, "1", &tars);
    let repo = work.path().join("repo");
    init_repo(&repo);
    let r = repo.display().to_string();
    let src = format!("oci:{}:1", layout.display());

    let mut killed_mid_run = 0;
    for delay_ms in [30u64, 150, 400, 800, 1500] {
        let mut child = ok(Command::new(BIN)
            .args(["ingest", "--repo", &r, &src])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn());
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished = ok(child.try_wait()).is_some();
        if !finished {
            // SIGKILL: no chance to clean up
            ok(child.kill());
            killed_mid_run += 1;
        }
        let _ = child.wait();
        let out = verify_ok(&repo);
        assert!(
            out.contains("verified"),
            "after kill at {delay_ms} ms: {out}"
        );
        if finished {
            break;
        }
    }
    assert!(killed_mid_run > 0, "ingest finished before any kill");
    let out = run_ok(&["ingest", "--repo", &r, &src]);
    assert!(out.contains("published revision"), "{out}");
    verify_ok(&repo);
    // the rerun removed the killed runs' leftovers
    let txn: Vec<_> = ok(std::fs::read_dir(repo.join("srv/data/txn"))).collect();
    assert!(txn.is_empty(), "temp objects left: {txn:?}");
    let ls = run_ok(&["ls", "--repo", &r]);
    assert!(ls.contains("localhost/layout:1"), "{ls}");
}

#[test]
fn verify_exits_non_zero_naming_the_fault() {
    let work = ok(tempfile::tempdir());
    let layout = work.path().join("layout");
    write_layout(&layout, "1", &[layer_tar(9, 2, 4096)]);
    let repo = work.path().join("repo");
    init_repo(&repo);
    let r = repo.display().to_string();
    run_ok(&[
        "ingest",
        "--repo",
        &r,
        &format!("oci:{}:1", layout.display()),
    ]);
    verify_ok(&repo);
    // damage the biggest non-catalog object
    let mut biggest: Option<(u64, PathBuf)> = None;
    for d in ok(std::fs::read_dir(repo.join("srv/data"))) {
        for f in ok(std::fs::read_dir(ok(d).path())) {
            let p = ok(f).path();
            let size = ok(p.metadata()).len();
            let name = p.to_string_lossy().into_owned();
            if !name.ends_with('C')
                && !name.ends_with('X')
                && biggest.as_ref().is_none_or(|b| b.0 < size)
            {
                biggest = Some((size, p));
            }
        }
    }
    let (_, victim) = biggest.unwrap_or_else(|| panic!("no objects"));
    let mut bytes = ok(std::fs::read(&victim));
    bytes[10] ^= 0x55;
    ok(std::fs::write(&victim, bytes));
    let out = run(&["verify", "--repo", &r]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let rel = victim
        .strip_prefix(repo.join("srv"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    assert!(err.contains(&format!("FAULT: object {rel}")), "{err}");
    // resign keeps signatures valid
    run_ok(&["resign", "--repo", &r, "--days", "60"]);
}
