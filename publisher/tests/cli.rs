//! Command-line tests of `strata-publisher` as operators run it: re-ingest from a local
//! `docker-registry` (no layer blob downloaded again), SIGKILL during `ingest` (the last
//! revision stays complete, a rerun finishes), `verify`/`ls`/`resign` exit codes.
//!
//! Needs `docker-registry` and `skopeo` (Debian packages of the same names) for the registry
//! test; a missing tool fails it (scripts/install-deps installs both).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    BIN, Registry, gzip, mixed_layer, ok, require_registry_tools, run, run_ok, sha256_digest,
    verify_ok, write_layout,
};

const FQRN: &str = "cli.example.org";

fn init_repo(dir: &Path) {
    crate::support::init_repo(dir, FQRN);
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
    let extra = mixed_layer(77, 1, 1000);
    let gz = gzip(&extra);
    let put = |bytes: &[u8]| ok(tests::image::put_blob(&blobs, bytes)).0;
    let extra_digest = put(&gz);
    cfg["architecture"] = "arm64".into();
    cfg["variant"] = "v8".into();
    if let Some(ids) = cfg["rootfs"]["diff_ids"].as_array_mut() {
        ids.push(sha256_digest(&extra).into());
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

#[test]
fn reingest_from_registry_downloads_no_layer() {
    require_registry_tools();
    let work = ok(tempfile::tempdir());
    let registry = Registry::start(work.path());
    let layout = work.path().join("layout");
    let tars: Vec<Vec<u8>> = (1..=3).map(|s| mixed_layer(s, 4, 64 << 10)).collect();
    let layers = write_layout(&layout, "1", &tars).layers;
    registry.copy_in(&layout, "1", "demo/app", false);
    let dest = format!("docker://{}/demo/app:1", registry.addr);

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
    require_registry_tools();
    let work = ok(tempfile::tempdir());
    let registry = Registry::start(work.path());
    let layout = work.path().join("layout");
    write_layout(&layout, "1", &[mixed_layer(5, 2, 2000)]);
    make_multi_platform(&layout, "1");
    registry.copy_in(&layout, "1", "multi", true);
    let dest = format!("docker://{}/multi:1", registry.addr);
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
    let tars: Vec<Vec<u8>> = (1..=4).map(|s| mixed_layer(s, 12, 512 << 10)).collect();
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
    // and the staging databases and catalogs of the killed runs in DIR/tmp
    let tmp: Vec<_> = ok(std::fs::read_dir(repo.join("tmp"))).collect();
    assert!(tmp.is_empty(), "scratch left in DIR/tmp: {tmp:?}");
    let ls = run_ok(&["ls", "--repo", &r]);
    assert!(ls.contains("localhost/layout:1"), "{ls}");
}

#[test]
fn verify_exits_non_zero_naming_the_fault() {
    let work = ok(tempfile::tempdir());
    let layout = work.path().join("layout");
    write_layout(&layout, "1", &[mixed_layer(9, 2, 4096)]);
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
