//! "A retained older revision still mounts and reads after `gc`": the
//! publisher syncs revision A, then B (the image's tag moves, so A's files are referenced
//! by A alone), runs `gc`, serves the repository with `strata-publisher serve`, and the real
//! FUSE client `strata-snapshotter mount --tag/--root-hash` mounts revision A and reads
//! every file of it. With `--keep-revisions 1` revision A's objects are gone and the same
//! mounts are refused cleanly.
//!
//! Needs `docker-registry` and `skopeo` (a missing tool fails the test),
//! root and `/dev/fuse` (the mount), and `strata-snapshotter` built beside this test's
//! binary (`cargo build -p snapshotter`; `scripts/test` builds the whole workspace first).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::mounts::{is_fuse_mounted, wait_fuse_mounted};
use tests::random::pseudo_random;
use tests::strata::{HttpServer, Repo};

use crate::support::{Registry, ok, require_registry_tools, run_ok, verify_ok};

const FQRN: &str = "gc.example.org";

/// `strata-snapshotter` of the same build profile as this test (`target/<profile>/`);
/// fails the test, saying how to build it, if it is missing.
fn snapshotter_binary() -> PathBuf {
    ok(tests::binaries::strata_binary(tests::binaries::SNAPSHOTTER))
}

/// The `mount` command for revision `pin` (`["--tag", NAME]` or `["--root-hash", HEX]`)
/// with a fresh cache under `work`.
fn mount_command(
    work: &Path,
    serve: &HttpServer,
    repo: &Path,
    mnt: &Path,
    pin: [&str; 2],
) -> Command {
    let cache = ok(tempfile::tempdir_in(work)).keep();
    let mut cmd = Command::new(snapshotter_binary());
    cmd.args([
        "mount",
        "--fqrn",
        FQRN,
        "--server",
        &serve.server_url(),
        "--pubkey",
    ])
    .arg(repo.join(format!("keys/{FQRN}.pub")))
    .arg("--cache")
    .arg(cache)
    .args(pin)
    .arg(mnt)
    .env("RUST_LOG", "info")
    .stdin(Stdio::null());
    cmd
}

/// Mounts, runs `f` on the mount point, unmounts and waits for a clean exit.
fn with_mount(mut cmd: Command, mnt: &Path, log: &Path, f: impl FnOnce(&Path)) {
    ok(std::fs::create_dir_all(mnt));
    let mut child = ok(cmd.stderr(ok(std::fs::File::create(log))).spawn());
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    if let Err(e) = wait_fuse_mounted(&mut child, mnt, Duration::from_secs(30)) {
        panic!("{e}:\n{}", log_text());
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(mnt)));
    let unmounted = Command::new("umount").arg(mnt).status();
    let status = ok(child.wait());
    if let Err(panic) = result {
        eprintln!("mount log:\n{}", log_text());
        std::panic::resume_unwind(panic);
    }
    assert!(ok(unmounted).success(), "umount failed");
    assert!(
        status.success(),
        "mount exited with {status}:\n{}",
        log_text()
    );
}

/// Reads every regular file below `dir` (symlinks are not followed); returns how many.
fn read_everything(dir: &Path) -> usize {
    let mut files = 0;
    for entry in ok(std::fs::read_dir(dir)) {
        let path = ok(entry).path();
        let meta = ok(std::fs::symlink_metadata(&path));
        if meta.is_dir() {
            files += read_everything(&path);
        } else if meta.is_file() {
            let data =
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            assert_eq!(data.len() as u64, meta.len(), "{}", path.display());
            files += 1;
        }
    }
    files
}

fn manifest(repo: &Path) -> catalog::Manifest {
    ok(ok(publisher::repo::Repo::open(repo)).current_manifest()).manifest
}

fn gc(repo: &Path, keep: &str) -> String {
    let r = repo.display().to_string();
    run_ok(&[
        "gc",
        "--repo",
        &r,
        "--keep-revisions",
        keep,
        "--grace",
        "0s",
    ])
}

#[test]
fn a_retained_older_revision_mounts_and_reads_after_gc() {
    require_registry_tools();
    // This test mounts through FUSE.
    ok(tests::binaries::check_root_and_fuse());
    snapshotter_binary();
    let work = ok(tempfile::tempdir());
    let reg = Registry::start(work.path());
    let a = reg.addr;
    const FILES: usize = 3;
    const SIZE: usize = 6000;
    reg.push("demo", "1", &[1], FILES, SIZE);
    let repo = work.path().join("repo");
    crate::support::init_repo(&repo, FQRN);
    let recipe = work.path().join("recipe.yaml");
    ok(std::fs::write(
        &recipe,
        format!("version: 1\ncvmfs_repo: '{FQRN}'\ninput:\n  - 'docker://{a}/demo:1'\n"),
    ));
    let r = repo.display().to_string();
    let f = recipe.display().to_string();
    run_ok(&["sync", "--repo", &r, "--recipe", &f]);
    let rev_a = manifest(&repo);

    // Revision B: the tag moves to an image with other layers; A's flat tree and layers
    // leave the namespace, so their objects are referenced by revision A only.
    reg.push("demo", "1", &[2], FILES, SIZE);
    run_ok(&["sync", "--repo", &r, "--recipe", &f]);
    verify_ok(&repo);
    let rev_b = manifest(&repo);
    assert!(rev_b.revision > rev_a.revision);
    assert_ne!(rev_b.catalog_hash, rev_a.catalog_hash);

    let report = gc(&repo, "2");
    verify_ok(&repo);
    let root_a = rev_a.catalog_hash.to_hex();
    let root_a_object = repo
        .join("srv")
        .join(rev_a.catalog_hash.object_path(catalog::Suffix::Catalog));
    assert!(
        root_a_object.is_file(),
        "gc removed a retained root:\n{report}"
    );

    let serve = ok(Repo {
        dir: repo.clone(),
        fqrn: FQRN.into(),
    }
    .serve(&work.path().join("serve.log")));
    let mnt = work.path().join("mnt");
    let image_a = format!("{a}/demo:1");
    let reads_revision_a = |m: &Path| {
        for i in 0..FILES {
            let path = m.join(&image_a).join(format!("l1/f{i}"));
            let data =
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            assert!(
                data == pseudo_random(SIZE, 1000 + i as u64),
                "{} differs",
                path.display()
            );
        }
        assert!(
            !m.join(&image_a).join("l2").exists(),
            "revision B leaked in"
        );
        let files = read_everything(m);
        assert!(files > FILES, "only {files} files in revision A");
    };
    with_mount(
        mount_command(
            work.path(),
            &serve,
            &repo,
            &mnt,
            ["--tag", "trunk-previous"],
        ),
        &mnt,
        &work.path().join("tag.log"),
        reads_revision_a,
    );
    with_mount(
        mount_command(work.path(), &serve, &repo, &mnt, ["--root-hash", &root_a]),
        &mnt,
        &work.path().join("root-hash.log"),
        reads_revision_a,
    );

    // Keep only B: revision A's root catalog and its own objects are deleted, and mounting
    // A is refused cleanly instead of serving anything.
    gc(&repo, "1");
    verify_ok(&repo);
    assert!(
        !root_a_object.exists(),
        "gc --keep-revisions 1 kept revision A"
    );
    for pin in [
        ["--tag", "trunk-previous"],
        ["--root-hash", root_a.as_str()],
    ] {
        let out = ok(mount_command(work.path(), &serve, &repo, &mnt, pin).output());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{pin:?} mounted after gc:\n{stderr}");
        assert!(stderr.contains("HTTP status 404"), "{pin:?}: {stderr}");
        assert!(!ok(is_fuse_mounted(&mnt)));
    }
    // The current revision still mounts and reads completely.
    with_mount(
        mount_command(work.path(), &serve, &repo, &mnt, ["--tag", "trunk"]),
        &mnt,
        &work.path().join("trunk.log"),
        |m| {
            let path = m.join(&image_a).join("l2/f0");
            assert!(std::fs::read(path).unwrap() == pseudo_random(SIZE, 2000));
            read_everything(m);
        },
    );
}
