//! End-to-end tests of `strata-snapshotter mount`: a repository built with the `catalog`
//! crate (and the stock-`cvmfs_server` fixture) is served over HTTP by an in-test axum
//! server and mounted through FUSE by the real binary.
//!
//! These tests need root and `/dev/fuse`; they fail (not skip) without them.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tests::fixtures::{STOCK_FQRN, stock_repo};
use tests::mounts::is_fuse_mounted;
use tests::net::free_addr;
use tests::random::pseudo_random;
use tests::wait::{poll, wait_until};

use crate::support::*;

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn mounts_a_catalog_crate_repository() {
    require_root_and_fuse();
    let (work, repo, server, mnt) = serve_test_repo();
    let cache = work.path().join("cache");
    let mut m = Mounted::start(
        mount_command(&server, FQRN, &repo.pubkey, &cache, &mnt),
        &mnt,
        &work.path().join("mount.log"),
    );

    // Listing and metadata.
    assert_eq!(
        names(&mnt),
        vec!["hard1", "hard2", "hello.txt", "layers", "link"]
    );
    let (h1, h2) = (
        std::fs::metadata(mnt.join("hard1")).unwrap(),
        std::fs::metadata(mnt.join("hard2")).unwrap(),
    );
    assert_eq!(h1.ino(), h2.ino());
    assert_eq!(h1.nlink(), 2);
    assert_eq!(std::fs::read(mnt.join("hard2")).unwrap(), b"linked\n");
    let fs = nix::sys::statvfs::statvfs(&mnt).unwrap();
    assert!(fs.files() >= 10, "statfs files = {}", fs.files());
    assert!(fs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
    let hello = std::fs::symlink_metadata(mnt.join("hello.txt")).unwrap();
    assert_eq!(hello.mode(), 0o100640);
    assert_eq!((hello.uid(), hello.gid()), (1000, 1001));
    assert_eq!(hello.size(), 13);
    assert_eq!(hello.mtime(), MTIME);
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hello strata\n"
    );
    assert_eq!(
        std::fs::read_link(mnt.join("link")).unwrap(),
        PathBuf::from("hello.txt")
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("link")).unwrap(),
        "hello strata\n"
    );
    assert_eq!(std::fs::metadata(&mnt).unwrap().mode() & 0o170000, 0o040000);
    let missing = std::fs::metadata(mnt.join("nope")).unwrap_err();
    assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
    let not_dir = std::fs::metadata(mnt.join("hello.txt/x")).unwrap_err();
    assert_eq!(not_dir.raw_os_error(), Some(libc::ENOTDIR));

    // The nested catalog: whiteout, opaque directory, files.
    let upper = mnt.join("layers/upper");
    assert_eq!(names(&upper), vec![".cvmfscatalog", "gone", "od"]);
    let wh = std::fs::symlink_metadata(upper.join("gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert_eq!(wh.mode(), 0o020000);
    assert_eq!(
        getxattr(&upper.join("od"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
    assert_eq!(listxattr(&upper.join("od")), b"trusted.overlay.opaque\0");
    assert!(listxattr(&upper.join("od/new")).is_empty());
    let absent = getxattr(&upper.join("od/new"), "trusted.overlay.opaque").unwrap_err();
    assert_eq!(absent.raw_os_error(), Some(libc::ENODATA));
    assert_eq!(
        std::fs::read_to_string(upper.join("od/new")).unwrap(),
        "new\n"
    );

    // overlayfs with two lowerdirs inside the FUSE mount honours whiteout and opaque dir.
    let merged = work.path().join("merged");
    mount_overlay(&[&upper, &mnt.join("layers/lower")], &merged);
    let merged_names = names(&merged);
    let merged_od = names(&merged.join("od"));
    let kept = std::fs::read_to_string(merged.join("kept"));
    let _ = Command::new("umount").arg(&merged).status();
    assert_eq!(merged_names, vec![".cvmfscatalog", "kept", "od"]);
    assert_eq!(merged_od, vec!["new"]);
    assert_eq!(kept.unwrap(), "kept\n");

    // Clean unmount on SIGTERM.
    m.stop();

    // A remount with the same cache downloads no object it already has.
    let before = server.data_requests.load(Ordering::SeqCst);
    let mut m = Mounted::start(
        mount_command(&server, FQRN, &repo.pubkey, &cache, &mnt),
        &mnt,
        &work.path().join("mount2.log"),
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hello strata\n"
    );
    assert_eq!(names(&mnt.join("layers/upper/od")), vec!["new"]);
    assert_eq!(
        server.data_requests.load(Ordering::SeqCst),
        before,
        "remount fetched cached objects: {:?}",
        server.paths.lock().unwrap()
    );
    m.stop();
}

#[test]
fn a_plain_mount_point_serves_the_same_tree_without_xattrs_and_counters_are_magic() {
    require_root_and_fuse();
    let (work, repo, server, mnt) = serve_test_repo();
    let plain = work.path().join("plain");
    let cache = work.path().join("cache");
    let mut cmd = mount_command(&server, FQRN, &repo.pubkey, &cache, &mnt);
    cmd.arg("--plain-mountpoint").arg(&plain);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("mount.log"));
    m.wait_mounted(&plain, Duration::from_secs(10));

    // The same tree, the same inodes, the same content.
    assert_eq!(names(&plain), names(&mnt));
    assert_eq!(
        names(&plain.join("layers/upper")),
        names(&mnt.join("layers/upper"))
    );
    for p in ["hello.txt", "hard1", "layers/upper/od/new"] {
        assert_eq!(
            std::fs::read(plain.join(p)).unwrap(),
            std::fs::read(mnt.join(p)).unwrap()
        );
        assert_eq!(
            std::fs::metadata(plain.join(p)).unwrap().ino(),
            std::fs::metadata(mnt.join(p)).unwrap().ino()
        );
    }
    // No extended attributes there (the kernel answers, twice in a row), while the main
    // mount still has them.
    let od = "layers/upper/od";
    for _ in 0..2 {
        let err = getxattr(&plain.join(od), "trusted.overlay.opaque").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP), "{err}");
    }
    let err = xattr::list(plain.join(od)).map(|l| l.count()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP), "{err}");
    assert_eq!(
        getxattr(&mnt.join(od), "trusted.overlay.opaque").unwrap(),
        b"y"
    );

    // user.catalog_counters: by name only, the hosting catalog's statistics (docs/format.md §6.13).
    let counters = |path: &Path| -> String {
        let value = xattr::get(path, "user.catalog_counters")
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .unwrap_or_else(|| panic!("{}: no counters", path.display()));
        String::from_utf8(value).unwrap()
    };
    let nested = counters(&mnt.join("layers/upper"));
    assert!(
        nested.contains("\ncatalog_mountpoint: /layers/upper\n"),
        "{nested}"
    );
    assert!(nested.starts_with("catalog_hash: "), "{nested}");
    assert!(nested.lines().any(|l| l == "self_xattr,1"), "{nested}");
    let root = counters(&mnt);
    assert!(root.contains("\ncatalog_mountpoint: \n"), "{root}");
    assert!(root.lines().any(|l| l == "self_xattr,0"), "{root}");
    assert_eq!(counters(&mnt.join("hello.txt")), root);
    assert_eq!(counters(&mnt.join("layers/lower")), root);
    assert!(counters(&mnt.join(od)).contains("catalog_mountpoint: /layers/upper\n"));
    assert!(listxattr(&mnt.join("layers/upper")).is_empty());
    assert_eq!(listxattr(&mnt.join(od)), b"trusted.overlay.opaque\0");
    assert!(xattr::get(&plain, "user.catalog_counters").is_err());

    // overlayfs over a plain lower (no xattrs) and a main-mount upper (opaque dir).
    let merged = work.path().join("merged");
    mount_overlay(
        &[&mnt.join("layers/upper"), &plain.join("layers/lower")],
        &merged,
    );
    let merged_names = names(&merged);
    let merged_od = names(&merged.join("od"));
    let _ = Command::new("umount").arg(&merged).status();
    assert_eq!(merged_names, vec![".cvmfscatalog", "kept", "od"]);
    assert_eq!(merged_od, vec!["new"]);

    // SIGTERM unmounts both.
    m.stop();
    assert!(
        !is_fuse_mounted(&plain).unwrap(),
        "the plain mount outlived the process"
    );
}

/// A mount process killed with SIGKILL leaves dead FUSE mounts (every request fails with
/// `ENOTCONN`) at both mount points; the next process detaches them and mounts cleanly. The
/// main one was used (in no-open mode its root opens without a request); the plain one
/// never was (its `stat` fails, so `create_dir_all` and `mkdir -p` fail on it).
#[test]
fn a_killed_mount_leaves_dead_mounts_that_the_next_one_replaces() {
    require_root_and_fuse();
    let (work, repo, server, mnt) = serve_test_repo();
    let plain = work.path().join("plain");
    let cache = work.path().join("cache");
    std::fs::create_dir_all(&mnt).unwrap();
    // Whatever happens, no dead mount is left behind in the temporary directory.
    struct Detach(Vec<PathBuf>);
    impl Drop for Detach {
        fn drop(&mut self) {
            for dir in &self.0 {
                let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    let _detach = Detach(vec![mnt.clone(), plain.clone()]);
    // Not `Mounted::start`: the mount points may hold the dead mounts (mountinfo lists
    // them, `create_dir_all` fails on them); the log says when this process is up.
    let start = |log: &str| {
        let mut cmd = mount_command(&server, FQRN, &repo.pubkey, &cache, &mnt);
        cmd.arg("--plain-mountpoint").arg(&plain);
        let log = work.path().join(log);
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let m = Mounted {
            child: Some(child),
            mountpoint: mnt.clone(),
            log,
        };
        wait_for_log(
            &m,
            "also mounted without extended attributes",
            Duration::from_secs(20),
        );
        m
    };
    let mut first = start("first.log");
    for _ in 0..2 {
        assert_eq!(names(&mnt).len(), 5);
    }
    let mut child = first.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let err = nix::sys::statfs::statfs(&mnt).unwrap_err();
    assert_eq!(err, nix::errno::Errno::ENOTCONN);
    // No-open mode: the dead root still opens (and lists, from the kernel's cache); the
    // never used one cannot even be created with `create_dir_all` (EEXIST, then ENOTCONN).
    assert!(std::fs::read_dir(&mnt).is_ok(), "the dead root opens");
    assert!(std::fs::create_dir_all(&plain).is_err());

    let mut second = start("second.log");
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hello strata\n"
    );
    assert_eq!(
        std::fs::read_to_string(plain.join("hello.txt")).unwrap(),
        "hello strata\n"
    );
    let log = second.log_text();
    assert_eq!(log.matches("stale FUSE mount").count(), 2, "{log}");
    // Nothing left underneath either mount point once it is stopped.
    second.stop();
    assert!(
        !is_fuse_mounted(&mnt).unwrap(),
        "a dead mount is still at {}",
        mnt.display()
    );
    assert!(
        !is_fuse_mounted(&plain).unwrap(),
        "a dead mount is still at {}",
        plain.display()
    );
}

#[test]
fn a_slow_download_blocks_only_its_own_request() {
    require_root_and_fuse();
    let (work, repo, server, mnt) = serve_test_repo();
    let mut m = Mounted::start(
        mount_command(
            &server,
            FQRN,
            &repo.pubkey,
            &work.path().join("cache"),
            &mnt,
        ),
        &mnt,
        &work.path().join("mount.log"),
    );
    server.slow.lock().unwrap().push(repo.hello_object.clone());
    let hello = mnt.join("hello.txt");
    let slow_reader = std::thread::spawn(move || {
        let start = Instant::now();
        let text = std::fs::read_to_string(hello).unwrap();
        (text, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    assert_eq!(
        std::fs::read_to_string(mnt.join("layers/lower/kept")).unwrap(),
        "kept\n"
    );
    assert_eq!(names(&mnt.join("layers/upper/od")), vec!["new"]);
    let fast = start.elapsed();
    let (text, slow) = slow_reader.join().unwrap();
    assert_eq!(text, "hello strata\n");
    assert!(
        slow >= Duration::from_millis(1500),
        "slow read took {slow:?}"
    );
    assert!(
        fast < Duration::from_millis(1000),
        "other requests waited {fast:?}"
    );
    m.stop();
}

#[test]
fn wrong_public_key_refuses_the_mount() {
    require_root_and_fuse();
    let (work, repo, server, mnt) = serve_test_repo();
    std::fs::create_dir_all(&mnt).unwrap();
    let out = mount_command(
        &server,
        FQRN,
        &repo.wrong_pubkey,
        &work.path().join("cache"),
        &mnt,
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mount succeeded with a wrong key");
    assert!(
        stderr.contains("failed verification") && stderr.contains("whitelist signature"),
        "error does not name the failed check: {stderr}"
    );
    assert!(out.stdout.is_empty());
    assert!(!is_fuse_mounted(&mnt).unwrap());
}

#[test]
fn mounts_the_stock_fixture_repository() {
    require_root_and_fuse();
    let work = tempfile::tempdir().unwrap();
    let srv = stock_repo().join("srv");
    let key = stock_repo().join(format!("{STOCK_FQRN}.pub"));
    let server = Server::start(&[(STOCK_FQRN, &srv)]);
    let mnt = work.path().join("mnt");
    let mut cmd = mount_command(&server, STOCK_FQRN, &key, &work.path().join("cache"), &mnt);
    // The fixture's whitelist was signed once and expires 30 days later.
    cmd.arg("--accept-expired-whitelist");
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("mount.log"));

    let object = |hex: &str, suffix: &str| {
        let stored =
            std::fs::read(srv.join(format!("data/{}/{}{suffix}", &hex[..2], &hex[2..]))).unwrap();
        catalog::decompress(&stored, 1 << 30).unwrap()
    };

    assert_eq!(names(&mnt), vec!["README", "layers", "sw"]);
    assert_eq!(
        std::fs::read(mnt.join("README")).unwrap(),
        object("5798f7f4ca7585d850eea64610a1f73d8f8de7a3", "")
    );

    // A chunked file: the concatenation of its chunk objects (docs/format.md §4.6).
    let v1 = mnt.join("sw/v1");
    let mut expected = Vec::new();
    for hex in [
        "90207e08580f001130d87aab09b75e09da461033",
        "0a764ec4b4f81e772a26e54c9230e99939d6c1e0",
        "f7a923a55e2eb1d9c6f2995146acc45a0dafa5d8",
        "41662b0b97a7537863c86902bfad73b217580f6d",
        "260c7efee14e061d41c17a242cd17c432d15df7d",
        "317b024879444c42f8f33691fb215ea153513416",
    ] {
        expected.extend(object(hex, "P"));
    }
    // First a cold read that starts in one chunk and ends in the next (boundary at 23491).
    let f = std::fs::File::open(v1.join("big.bin")).unwrap();
    let mut buf = vec![0u8; 1000];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 23_000).unwrap();
    assert_eq!(buf, expected[23_000..24_000]);
    let big = std::fs::read(v1.join("big.bin")).unwrap();
    assert_eq!(big.len(), 204_800);
    assert!(big == expected, "chunked file content differs");

    assert_eq!(std::fs::read_to_string(v1.join("a")).unwrap().len(), 12);
    assert_eq!(
        std::fs::read_link(v1.join("link")).unwrap(),
        PathBuf::from("a")
    );
    assert_eq!(getxattr(&v1.join("dir"), "user.foo").unwrap(), b"bar");
    let null = std::fs::symlink_metadata(v1.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert!(
        std::fs::symlink_metadata(v1.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );

    // The layer catalog of stock image tooling: whiteout as char 0:0.
    let layer = mnt.join("layers/aa/layerfs");
    let removed = std::fs::symlink_metadata(layer.join("var/removed")).unwrap();
    assert!(removed.file_type().is_char_device());
    assert_eq!(removed.rdev(), 0);
    assert_eq!(
        std::fs::read_link(layer.join("lib64")).unwrap(),
        PathBuf::from("lib")
    );
    assert!(std::fs::read(layer.join("etc/empty")).unwrap().is_empty());

    // Unmounting from outside ends the process cleanly.
    drop(f);
    let status = Command::new("umount").arg(&mnt).status().unwrap();
    assert!(status.success());
    m.wait_exit();
}

/// Runs a mount that must be refused; returns its stderr.
fn refused(cmd: &mut Command, mnt: &Path) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "mount succeeded:\n{stderr}");
    assert!(!is_fuse_mounted(mnt).unwrap());
    stderr
}

#[test]
fn bad_signature_expired_whitelist_and_wrong_fqrn_refuse_the_mount() {
    require_root_and_fuse();
    let (work, repo, server, mnt) = serve_test_repo();
    std::fs::create_dir_all(&mnt).unwrap();
    let cache = work.path().join("cache");
    let published = repo.srv.join(".cvmfspublished");
    let whitelist = repo.srv.join(".cvmfswhitelist");
    let good_manifest = std::fs::read(&published).unwrap();
    let good_whitelist = std::fs::read(&whitelist).unwrap();

    // 1. A manifest whose signature does not verify (last signature byte flipped).
    let mut bad = good_manifest.clone();
    *bad.last_mut().unwrap() ^= 0x01;
    std::fs::write(&published, &bad).unwrap();
    let err = refused(
        &mut mount_command(&server, FQRN, &repo.pubkey, &cache, &mnt),
        &mnt,
    );
    assert!(err.contains("manifest signature"), "{err}");
    std::fs::write(&published, &good_manifest).unwrap();

    // 2. A whitelist that expired yesterday (properly signed).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = catalog::Whitelist::new(FQRN, &repo.cert, now - 10 * 86400, 9 * 86400);
    std::fs::write(&whitelist, expired.sign(&repo.master).unwrap()).unwrap();
    let err = refused(
        &mut mount_command(&server, FQRN, &repo.pubkey, &cache, &mnt),
        &mnt,
    );
    assert!(err.contains("whitelist expired"), "{err}");
    std::fs::write(&whitelist, &good_whitelist).unwrap();

    // 3. The right files mounted under another name.
    let literal = Server {
        url: server.url.replace("@fqrn@", FQRN),
        ..Server::start(&[])
    };
    let mut cmd = mount_command(&literal, "other.strata.example", &repo.pubkey, &cache, &mnt);
    let err = refused(&mut cmd, &mnt);
    assert!(
        err.contains("manifest is for fqrn test.strata.example, not other.strata.example"),
        "{err}"
    );

    // And with everything restored the mount works.
    let mut m = Mounted::start(
        mount_command(&server, FQRN, &repo.pubkey, &cache, &mnt),
        &mnt,
        &work.path().join("ok.log"),
    );
    assert_eq!(
        std::fs::read(mnt.join("hello.txt")).unwrap(),
        b"hello strata\n"
    );
    m.stop();
}

/// Bytes of the object files under `cache/00`…`ff`.
/// Reads `path` after dropping its pages from the kernel's page cache, so that the read
/// reaches the mount process (which then finds the object in its cache or downloads it).
fn read_past_page_cache(path: &Path) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap();
    nix::fcntl::posix_fadvise(
        &file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap_or_else(|e| panic!("posix_fadvise on {}: {e}", path.display()));
    drop(file);
    std::fs::read(path).unwrap()
}

fn cache_usage(cache: &Path) -> u64 {
    (0..=255u8)
        .filter_map(|i| std::fs::read_dir(cache.join(format!("{i:02x}"))).ok())
        .flat_map(|d| d.flatten())
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn a_quota_smaller_than_the_image_holds_while_everything_is_read() {
    require_root_and_fuse();
    const OBJECT: usize = 200 * 1024;
    let files: Vec<(String, Vec<u8>)> = (0..16u64)
        .map(|i| (format!("/d{}/f{i}", i % 3), pseudo_random(OBJECT, i + 1)))
        .collect();
    let (work, repo, server, mnt) = serve_flat_repo(&files);
    let cache = work.path().join("cache");
    let mut cmd = mount_command(&server, FQRN, &repo.keys.pubkey, &cache, &mnt);
    cmd.args(["--quota-limit", "1"]);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    let quota = 1u64 << 20;
    for round in 0..2 {
        for (path, body) in &files {
            // Past the page cache: the second round must fetch evicted objects again.
            let got = read_past_page_cache(&mnt.join(&path[1..]));
            assert!(&got == body, "{path} differs");
            let used = cache_usage(&cache);
            assert!(
                used <= quota + OBJECT as u64,
                "round {round}: cache holds {used} bytes with a {quota}-byte quota"
            );
        }
    }

    let stats = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_strata-snapshotter"))
            .args(["cache", "--cache"])
            .arg(&cache)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let field = |text: &str, key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .and_then(|v| v.split(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    };
    let text = stats(&[]);
    assert!(field(&text, "misses") >= 32, "{text}");
    assert!(
        field(&text, "bytes fetched") >= 32 * OBJECT as u64,
        "{text}"
    );
    assert!(field(&text, "size") <= quota + OBJECT as u64, "{text}");
    // Evicting everything while mounted keeps the root catalog (in use).
    let text = stats(&["--evict-all"]);
    assert!(text.contains("evicted: "), "{text}");
    assert_eq!(field(&text, "entries"), 1, "{text}");
    assert_eq!(std::fs::read(mnt.join("d0/f0")).unwrap(), files[0].1);
    m.stop();
}

#[test]
fn a_new_revision_appears_while_open_files_keep_their_revision() {
    require_root_and_fuse();
    let old_big = pseudo_random(1 << 20, 7);
    let rev1: Vec<(String, Vec<u8>)> = vec![
        ("/a".into(), b"one\n".to_vec()),
        ("/keep".into(), b"same\n".to_vec()),
        ("/d/big".into(), old_big.clone()),
    ];
    // Catalog TTL 240 s, capped to 1 s by --max-ttl.
    let (work, repo, server, mnt) = serve_flat_repo(&rev1);
    let mut cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    // The plain mount (a second session) must switch with the main one.
    let plain = work.path().join("plain");
    cmd.args(["--max-ttl", "1s", "--backoff-init", "10ms"])
        .arg("--plain-mountpoint")
        .arg(&plain);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    m.wait_mounted(&plain, Duration::from_secs(10));

    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"one\n");
    assert_eq!(std::fs::read(plain.join("a")).unwrap(), b"one\n");
    assert!(!mnt.join("new").exists());
    assert!(!plain.join("new").exists());
    // Listed (and cached by the kernel, FOPEN_CACHE_DIR) before the switch.
    assert_eq!(names(&mnt), vec!["a", "d", "keep"]);
    assert_eq!(names(&plain), vec!["a", "d", "keep"]);
    let keep_ino = std::fs::metadata(mnt.join("keep")).unwrap().ino();
    let d_ino = std::fs::metadata(mnt.join("d")).unwrap().ino();
    let held = std::fs::File::open(mnt.join("d/big")).unwrap();
    let mut head = vec![0u8; 100_000];
    std::os::unix::fs::FileExt::read_exact_at(&held, &mut head, 0).unwrap();
    assert_eq!(head, old_big[..100_000]);

    // A failed check (manifest gone for a while) keeps serving revision 1.
    let published = repo.srv.join(".cvmfspublished");
    let hidden = repo.srv.join("published.away");
    std::fs::rename(&published, &hidden).unwrap();
    m.wait_until(
        "a failed revision check in the log",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || m.log_text().contains("revision check failed"),
    );
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"one\n");
    std::fs::rename(&hidden, &published).unwrap();

    // Revision 2: /a changes, /d/big changes, /new appears, /keep stays.
    let new_big = pseudo_random(1 << 20, 8);
    let rev2: Vec<(String, Vec<u8>)> = vec![
        ("/a".into(), b"two!\n".to_vec()),
        ("/keep".into(), b"same\n".to_vec()),
        ("/d/big".into(), new_big.clone()),
        ("/new".into(), b"new file\n".to_vec()),
    ];
    repo.publish(&rev2, 2, 240);
    m.wait_until(
        "revision 2",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || mnt.join("new").exists(),
    );
    assert_eq!(std::fs::read(mnt.join("new")).unwrap(), b"new file\n");
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"two!\n");
    assert_eq!(names(&mnt), vec!["a", "d", "keep", "new"]);
    // The plain session's kernel caches were invalidated too.
    assert_eq!(std::fs::read(plain.join("new")).unwrap(), b"new file\n");
    assert_eq!(std::fs::read(plain.join("a")).unwrap(), b"two!\n");
    assert_eq!(names(&plain), vec!["a", "d", "keep", "new"]);
    // Unchanged paths keep their inode numbers.
    assert_eq!(std::fs::metadata(mnt.join("keep")).unwrap().ino(), keep_ino);
    assert_eq!(std::fs::metadata(mnt.join("d")).unwrap().ino(), d_ino);
    // The file held open reads revision 1 to the end.
    let mut rest = vec![0u8; old_big.len() - 100_000];
    std::os::unix::fs::FileExt::read_exact_at(&held, &mut rest, 100_000).unwrap();
    assert!(rest == old_big[100_000..], "the open file changed revision");
    drop(held);
    // A new open sees revision 2.
    assert!(std::fs::read(mnt.join("d/big")).unwrap() == new_big);
    let text = m.log_text();
    m.stop();
    assert!(text.contains("switched to a new revision"), "{text}");
}

#[test]
fn a_chunked_file_fetches_only_the_chunks_read_and_each_once_and_a_trace_lists_them() {
    require_root_and_fuse();
    let work = tempfile::tempdir().unwrap();
    let srv = work.path().join("srv");
    let store = catalog::LocalStore::open(&srv).unwrap();
    let keys = make_keys(&store, work.path());
    const CHUNK: usize = 1 << 20;
    let body = pseudo_random(8 * CHUNK, 11);
    let big = chunked_file(&store, "big", &body, CHUNK);
    let chunk_path = |i: usize| big.chunks[i].hash.object_path(catalog::Suffix::Partial);
    let db = work.path().join("root.db");
    let mut w = catalog::CatalogWriter::create(&db, "").unwrap();
    w.add("", &dir(""), catalog::Transition::None).unwrap();
    w.add("/big", &big, catalog::Transition::None).unwrap();
    w.finish(&props()).unwrap();
    let (hash, size) = store_catalog(&store, &db);
    publish(&store, &keys, hash, size, 1);

    let server = Server::start(&[(FQRN, &srv)]);
    let mnt = work.path().join("mnt");
    // Without read-ahead: what a read fetches is exactly what it touches.
    let trace = work.path().join("start.trace");
    let mut cmd = mount_command_in(&server, &keys.pubkey, work.path(), &mnt);
    cmd.arg("--no-read-ahead").arg("--trace").arg(&trace);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    let requested = |object: &str| server.requests_for(object);
    let f = std::fs::File::open(mnt.join("big")).unwrap();
    let mut buf = vec![0u8; 4096];
    let at = 5 * CHUNK + 1000;
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, at as u64).unwrap();
    assert_eq!(buf, body[at..at + 4096]);
    for i in 0..8 {
        assert_eq!(requested(&chunk_path(i)), usize::from(i == 5), "chunk {i}");
    }
    // Eight concurrent readers of another missing chunk: one download.
    let readers: Vec<_> = (0..8)
        .map(|t| {
            let path = mnt.join("big");
            std::thread::spawn(move || {
                let f = std::fs::File::open(path).unwrap();
                let mut buf = vec![0u8; 1000];
                let at = 2 * CHUNK + 100 * t;
                std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, at as u64).unwrap();
                (at, buf)
            })
        })
        .collect();
    for r in readers {
        let (at, buf) = r.join().unwrap();
        assert_eq!(buf, body[at..at + 1000]);
    }
    assert_eq!(requested(&chunk_path(2)), 1);
    // Reading across a chunk boundary fetches the next chunk.
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, (6 * CHUNK - 10) as u64).unwrap();
    assert_eq!(buf, body[6 * CHUNK - 10..6 * CHUNK - 10 + 4096]);
    assert_eq!(requested(&chunk_path(6)), 1);
    assert_eq!(requested(&chunk_path(7)), 0);
    drop(f);
    m.stop();
    // The trace lists the file when opened, then each chunk when first read.
    assert_eq!(
        std::fs::read_to_string(&trace).unwrap(),
        "# strata access trace v2\n/big\nchunk 5 /big\nchunk 2 /big\nchunk 6 /big\n"
    );

    // With read-ahead (the default), the first read of a chunked file this small fetches
    // all its chunks, each once, and the whole file is then read from the cache.
    let cmd = mount_command(
        &server,
        FQRN,
        &keys.pubkey,
        &work.path().join("cache-read-ahead"),
        &mnt,
    );
    let before: Vec<usize> = (0..8).map(|i| requested(&chunk_path(i))).collect();
    let fetched = |i: usize| requested(&chunk_path(i)) - before[i];
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m2.log"));
    let f = std::fs::File::open(mnt.join("big")).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, (3 * CHUNK) as u64).unwrap();
    assert_eq!(buf, body[3 * CHUNK..3 * CHUNK + 4096]);
    wait_until(
        "the chunks to be read ahead",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || (0..8).all(|i| fetched(i) != 0),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", (0..8).map(fetched).collect::<Vec<_>>()));
    std::thread::sleep(Duration::from_millis(300));
    drop(f);
    assert!(std::fs::read(mnt.join("big")).unwrap() == body);
    for i in 0..8 {
        assert_eq!(fetched(i), 1, "chunk {i}");
    }
    assert_eq!(server.range_requests.load(Ordering::SeqCst), 0);
    m.stop();
}

#[test]
fn read_ahead_fetches_a_directory_s_small_files_once_and_they_are_then_read_from_the_cache() {
    require_root_and_fuse();
    let mut files: Vec<(String, Vec<u8>)> = (0..10u64)
        .map(|i| {
            (
                format!("/lib/f{i:02}"),
                pseudo_random(3000 + i as usize, i + 100),
            )
        })
        .collect();
    // Larger than the read-ahead size limit (1 MiB by default): only fetched when read.
    files.push(("/lib/huge".into(), pseudo_random(1_500_000, 7)));
    files.push(("/elsewhere/x".into(), pseudo_random(2000, 8)));
    let (work, repo, server, mnt) = serve_flat_repo(&files);
    let cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    let objects: Vec<String> = files
        .iter()
        .map(|(_, body)| object_of(&repo.store, body))
        .collect();
    let requested = |object: &str| server.requests_for(object);
    assert_eq!(std::fs::read(mnt.join("lib/f00")).unwrap(), files[0].1);
    // The rest of the directory's small files arrive in the background.
    wait_until(
        "read-ahead to fetch the directory",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || (1..10).all(|i| requested(&objects[i]) != 0),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", server.paths.lock().unwrap()));
    assert_eq!(
        requested(&objects[10]),
        0,
        "a file over the size limit was read ahead"
    );
    assert_eq!(
        requested(&objects[11]),
        0,
        "another directory was read ahead"
    );
    for (i, (path, body)) in files.iter().enumerate().take(10) {
        assert_eq!(
            &std::fs::read(mnt.join(&path[1..])).unwrap(),
            body,
            "{path}"
        );
        assert_eq!(requested(&objects[i]), 1, "{path} fetched more than once");
    }
    assert_eq!(server.range_requests.load(Ordering::SeqCst), 0);
    m.stop();
    let out = Command::new(env!("CARGO_BIN_EXE_strata-snapshotter"))
        .args(["cache", "--cache"])
        .arg(work.path().join("cache"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let read_ahead: u64 = (3001..3010).sum();
    assert!(
        text.contains(&format!("read-ahead bytes later read: {read_ahead}\n"))
            || text.contains(&format!(
                "read-ahead bytes later read: {}\n",
                read_ahead + 3000
            )),
        "{text}"
    );
}

#[test]
fn a_listing_hands_the_kernel_each_entry_so_stat_and_open_ask_no_lookup() {
    require_root_and_fuse();
    let files: Vec<(String, Vec<u8>)> = (0..40u64)
        .map(|i| (format!("/d/f{i:02}"), pseudo_random(100 + i as usize, i)))
        .chain([("/d/sub/x".to_string(), b"x".to_vec())])
        .collect();
    let (work, repo, server, mnt) = serve_flat_repo(&files);
    let mut cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    // fuser logs every request it dispatches at debug.
    cmd.env("RUST_LOG", "info,fuser=debug");
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    let dir = mnt.join("d");
    // What `tar` and `find` do: list, then stat (and open) every entry.
    let mut listed: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), meta.len())
        })
        .collect();
    listed.sort();
    assert_eq!(listed.len(), 41);
    assert_eq!(listed[0], ("f00".to_string(), 100));
    assert_eq!(listed[40].0, "sub");
    for (path, body) in &files {
        assert_eq!(
            &std::fs::read(mnt.join(&path[1..])).unwrap(),
            body,
            "{path}"
        );
    }
    let log = m.log_text();
    assert!(log.contains("READDIRPLUS"), "no READDIRPLUS:\n{log}");
    let lookups: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("LOOKUP name \"f") || l.contains("LOOKUP name \"sub\""))
        .collect();
    assert!(
        lookups.is_empty(),
        "entries listed with READDIRPLUS were looked up again: {lookups:?}"
    );
    m.stop();
}

#[test]
fn a_reader_that_reads_every_file_gets_larger_files_and_subdirectories_read_ahead() {
    require_root_and_fuse();
    // Seven directories of five small files and one over the read-ahead size limit, the
    // last with a subdirectory; seven more of the same after them in listing order
    // (`p0`…`p6`), which the reader enters only at the end.
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (prefix, base) in [("d", 0u64), ("p", 1000)] {
        for d in 0..7u64 {
            for f in 0..5u64 {
                let seed = base + d * 10 + f;
                files.push((
                    format!("/t/{prefix}{d}/f{f}"),
                    pseudo_random(3000 + seed as usize, seed),
                ));
            }
            files.push((
                format!("/t/{prefix}{d}/big"),
                pseudo_random(1_500_000, base + 100 + d),
            ));
        }
    }
    files.push(("/t/d6/sub/s0".into(), pseudo_random(2000, 999)));
    let (work, repo, server, mnt) = serve_flat_repo(&files);
    let cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    let requested = |path: &str| {
        let body = &files.iter().find(|(p, _)| p == path).unwrap().1;
        server.requests_for(&object_of(&repo.store, body))
    };
    let read = |path: &str| {
        let body = &files.iter().find(|(p, _)| p == path).unwrap().1;
        assert_eq!(
            &std::fs::read(mnt.join(&path[1..])).unwrap(),
            body,
            "{path}"
        );
    };
    // Not a scan yet: a large file is fetched only when read.
    read("/t/d0/f0");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        requested("/t/d0/big"),
        0,
        "a large file read ahead before any scan"
    );
    // Read every file of five directories, as tar does...
    for d in 0..5 {
        for f in 0..5 {
            read(&format!("/t/d{d}/f{f}"));
        }
        read(&format!("/t/d{d}/big"));
    }
    // ...then the first file of the sixth: its large file and its neighbours' come ahead.
    read("/t/d5/f0");
    m.wait_until(
        "a scan's read-ahead of large files and subdirectories",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || requested("/t/d5/big") == 1,
    );
    read("/t/d6/f0");
    m.wait_until(
        "a subdirectory read ahead",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || requested("/t/d6/sub/s0") == 1 && requested("/t/d6/big") == 1,
    );
    // The walk goes on where the reader goes next, in its order: /t after d6 (the reader
    // has been in /t's directories), into p0, which the reader has not entered.
    m.wait_until(
        "the next directory in the reader's order read ahead",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || requested("/t/p0/f0") == 1 && requested("/t/p0/big") == 1,
    );
    for (path, _) in &files {
        read(path);
        assert_eq!(requested(path), 1, "{path} fetched more than once");
    }
    m.stop();
}

#[test]
fn opening_an_elf_file_reads_ahead_the_libraries_the_loader_needs() {
    require_root_and_fuse();
    // A flattened image root, merged /usr. `prog` needs libstrata-a.so.1 (found through
    // its runpath `$ORIGIN/../lib`, a symbolic link to the real file) and libc.so.6 (in
    // /lib/x86_64-linux-gnu, through the /lib → usr/lib link, there an absolute link to an
    // alternative, an absolute link in turn). The library is a chunked executable whose
    // interpreter is /lib64/ld-linux-x86-64.so.2 (through /lib64 → usr/lib64): found only
    // if its headers are read from its chunks.
    const ROOT: &str = "/.flat/ab/abcdef";
    let at = |p: &str| format!("{ROOT}{p}");
    let files: Vec<(String, Vec<u8>)> = vec![
        (
            at("/usr/bin/prog"),
            include_bytes!("fixtures/elf/needs-a.so").to_vec(),
        ),
        (
            at("/usr/lib/libstrata-a.so.1.0"),
            include_bytes!("fixtures/elf/rpath-exe").to_vec(),
        ),
        (at("/opt/real/libc.so.6"), pseudo_random(5000, 61)),
        (
            at("/usr/lib64/ld-linux-x86-64.so.2"),
            pseudo_random(4000, 62),
        ),
        (
            at("/usr/lib/x86_64-linux-gnu/libunused.so.1"),
            pseudo_random(3000, 63),
        ),
    ];
    let paths = [
        at("/lib"),
        at("/lib64"),
        at("/usr/lib/libstrata-a.so.1"),
        at("/usr/lib/x86_64-linux-gnu/libc.so.6"),
        at("/etc/alternatives/libc.so.6"),
    ];
    let links = [
        (paths[0].as_str(), "usr/lib"),
        (paths[1].as_str(), "usr/lib64"),
        (paths[2].as_str(), "libstrata-a.so.1.0"),
        (paths[3].as_str(), "/etc/alternatives/libc.so.6"),
        (paths[4].as_str(), "/opt/real/libc.so.6"),
    ];
    let chunked = files[1].0.clone();
    let (work, repo, server, mnt) = serve_flat_repo(&[]);
    repo.publish_with_links(
        &files,
        &links,
        |_| 0o644,
        |p| (p == chunked).then_some(1024),
        2,
        240,
    );
    let objects: Vec<String> = files
        .iter()
        .map(|(_, body)| object_of(&repo.store, body))
        .collect();
    let requested = |i: usize| server.requests_for(&objects[i]);
    let cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    let inside = |i: usize| mnt.join(&files[i].0[1..]);
    assert_eq!(std::fs::read(inside(0)).unwrap(), files[0].1);
    // libc and the chunked library's interpreter (object 1 is chunked: no such GET).
    wait_until(
        "read-ahead to fetch the libraries",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || requested(2) != 0 && requested(3) != 0,
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", server.paths.lock().unwrap(), m.log_text()));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(requested(4), 0, "a library nothing needs was fetched");
    let before = server.paths.lock().unwrap().len();
    for (i, (path, body)) in files.iter().enumerate().take(4) {
        assert_eq!(&std::fs::read(inside(i)).unwrap(), body, "{path}");
    }
    assert_eq!(
        server.paths.lock().unwrap().len(),
        before,
        "reading the libraries fetched more: {:?}",
        server.paths.lock().unwrap()
    );
    assert_eq!(server.range_requests.load(Ordering::SeqCst), 0);
    m.stop();
}

#[test]
fn a_trace_lists_the_files_read_once_each_in_first_read_order() {
    require_root_and_fuse();
    let files: Vec<(String, Vec<u8>)> = ["/lib/a", "/lib/b", "/bin/c", "/bin/never-read"]
        .iter()
        .enumerate()
        .map(|(i, p)| (p.to_string(), pseudo_random(1000 + i, i as u64 + 500)))
        .collect();
    let (work, repo, server, mnt) = serve_flat_repo(&files);
    let trace = work.path().join("start.trace");
    let mut cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    cmd.arg("--trace").arg(&trace);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    for p in ["bin/c", "lib/a", "bin/c", "lib/b", "lib/a"] {
        std::fs::read(mnt.join(p)).unwrap();
    }
    // Looked up, listed, stat'ed: not read, so not in the trace.
    std::fs::metadata(mnt.join("bin/never-read")).unwrap();
    std::fs::read_dir(mnt.join("bin")).unwrap().for_each(drop);
    // Written as reads happen: complete while the mount runs.
    let text = std::fs::read_to_string(&trace).unwrap();
    m.stop();
    assert_eq!(
        text, "# strata access trace v2\n/bin/c\n/lib/a\n/lib/b\n",
        "trace file"
    );
}

#[test]
fn concurrent_readers_of_one_object_cause_one_get() {
    require_root_and_fuse();
    // Over the read-ahead size limit: only the readers fetch it.
    let files = vec![("/data/big".to_string(), pseudo_random(3_000_000, 41))];
    let (work, repo, server, mnt) = serve_flat_repo(&files);
    let object = object_of(&repo.store, &files[0].1);
    server.held.lock().unwrap().push(object.clone());
    let cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let path = mnt.join("data/big");
            std::thread::spawn(move || std::fs::read(path))
        })
        .collect();
    // The first reader's download waits on the server; give the others time to ask too.
    server.wait_held(1, "a reader to ask for the object", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let asked = server.held_requests.load(Ordering::SeqCst);
    server.held.lock().unwrap().clear();
    for reader in readers {
        let body = reader.join().unwrap().unwrap();
        assert!(body == files[0].1, "a reader got other bytes");
    }
    assert_eq!(asked, 1, "concurrent readers made {asked} requests");
    assert_eq!(server.requests_for(&object), 1);
    assert_eq!(server.range_requests.load(Ordering::SeqCst), 0);
    m.stop();
}

#[test]
fn a_demand_read_is_not_queued_behind_read_ahead() {
    require_root_and_fuse();
    // More files than read-ahead threads, all held by the server but the first.
    let mut files: Vec<(String, Vec<u8>)> = (0..40u64)
        .map(|i| (format!("/slow/s{i:02}"), pseudo_random(2000, i + 200)))
        .collect();
    files.push(("/fast/x".into(), pseudo_random(2000, 999)));
    let (work, repo, server, mnt) = serve_flat_repo(&files);
    let held: Vec<String> = files[1..40]
        .iter()
        .map(|(_, body)| object_of(&repo.store, body))
        .collect();
    server.held.lock().unwrap().extend(held);
    let cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    assert_eq!(std::fs::read(mnt.join("slow/s00")).unwrap(), files[0].1);
    // Every read-ahead thread waits on a held download now.
    server.wait_held(16, "read-ahead to start", Duration::from_secs(20));
    let fast = mnt.join("fast/x");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        let _ = tx.send((std::fs::read(fast), start.elapsed()));
    });
    let got = rx.recv_timeout(Duration::from_secs(5));
    // Release the held downloads before asserting, so that the mount can stop.
    server.held.lock().unwrap().clear();
    let (body, took) = got.expect("a demand read waited behind read-ahead");
    assert_eq!(body.unwrap(), files[40].1);
    assert!(
        took < Duration::from_secs(3),
        "the demand read took {took:?}"
    );
    m.stop();
}

/// A chunked file held open across a live update reads its own revision's chunks to the end
/// (no-open mode reads by inode: the old inode must not get the new revision's chunk list
/// of the same path), and a new open reads the new revision.
#[test]
fn a_chunked_file_held_open_keeps_its_revision_across_a_switch() {
    require_root_and_fuse();
    let work = tempfile::tempdir().unwrap();
    let srv = work.path().join("srv");
    let store = catalog::LocalStore::open(&srv).unwrap();
    let keys = make_keys(&store, work.path());
    const CHUNK: usize = 1 << 20;
    // Revision `revision`: `/big` chunked (same size in both), `/mark` names the revision.
    let publish_chunked = |body: &[u8], revision: u64| {
        let big = chunked_file(&store, "big", body, CHUNK);
        let mark = file(
            &store,
            "mark",
            0o644,
            0,
            0,
            format!("{revision}\n").as_bytes(),
        );
        let db = work.path().join(format!("root-{revision}.db"));
        let mut w = catalog::CatalogWriter::create(&db, "").unwrap();
        w.add("", &dir(""), catalog::Transition::None).unwrap();
        w.add("/big", &big, catalog::Transition::None).unwrap();
        w.add("/mark", &mark, catalog::Transition::None).unwrap();
        w.finish(&catalog::CatalogProperties {
            revision,
            last_modified: unix_now(),
            ttl: Some(240),
            previous_revision: None,
        })
        .unwrap();
        let (hash, size) = store_catalog(&store, &db);
        publish(&store, &keys, hash, size, revision);
    };
    let old = pseudo_random(4 * CHUNK, 21);
    publish_chunked(&old, 1);
    let server = Server::start(&[(FQRN, &srv)]);
    let mnt = work.path().join("mnt");
    let mut cmd = mount_command_in(&server, &keys.pubkey, work.path(), &mnt);
    cmd.args(["--max-ttl", "1s", "--backoff-init", "10ms"]);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    assert_eq!(std::fs::read(mnt.join("mark")).unwrap(), b"1\n");
    let held = std::fs::File::open(mnt.join("big")).unwrap();
    let mut head = vec![0u8; CHUNK];
    std::os::unix::fs::FileExt::read_exact_at(&held, &mut head, 0).unwrap();
    assert!(head == old[..CHUNK]);

    let new = pseudo_random(4 * CHUNK, 22);
    publish_chunked(&new, 2);
    m.wait_until(
        "revision 2",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || std::fs::read(mnt.join("mark")).unwrap() == b"2\n",
    );
    // The switch dropped the old inode's page cache: these reads reach the mount.
    let mut rest = vec![0u8; old.len() - CHUNK];
    std::os::unix::fs::FileExt::read_exact_at(&held, &mut rest, CHUNK as u64).unwrap();
    assert!(
        rest == old[CHUNK..],
        "the open chunked file changed revision"
    );
    drop(held);
    assert!(
        std::fs::read(mnt.join("big")).unwrap() == new,
        "a new open reads revision 2"
    );
    m.stop();
}

/// `(path, content)` pairs of a [`FlatRepo`] revision.
fn tree(files: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    files
        .iter()
        .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
        .collect()
}

/// The breadcrumb's text, `<hex>T<ts>R<revision>` (docs/format.md §8.7).
fn breadcrumb(cache: &Path) -> String {
    std::fs::read_to_string(cache.join(format!("cvmfschecksum.{FQRN}"))).unwrap_or_default()
}

/// Waits until the mount's log contains `text`.
fn wait_for_log(m: &Mounted, text: &str, within: Duration) {
    m.wait_until(
        &format!("the log to say {text:?}"),
        within,
        Duration::from_millis(100),
        || m.log_text().contains(text),
    );
}

#[test]
fn the_breadcrumb_keeps_a_node_from_going_back_to_an_older_revision() {
    require_root_and_fuse();
    let (work, repo, server, mnt) = serve_flat_repo(&tree(&[("/a", "one\n")]));
    let cache = work.path().join("cache");
    let mount = || mount_command(&server, FQRN, &repo.keys.pubkey, &cache, &mnt);
    let log = |n: &str| work.path().join(format!("{n}.log"));

    let mut m = Mounted::start(mount(), &mnt, &log("1"));
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"one\n");
    m.stop();
    let rev2 = repo.publish(&tree(&[("/a", "two\n")]), 2, 240);
    let mut m = Mounted::start(mount(), &mnt, &log("2"));
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"two\n");
    m.stop();
    let crumb = format!("{}T{}R2", rev2.catalog_hash, rev2.timestamp);
    assert_eq!(breadcrumb(&cache), crumb);

    // The server goes back to revision 1 (newly signed): the cached revision 2 is newer
    // and stays mounted (docs/format.md §8.2 step 4).
    repo.publish_at(&tree(&[("/a", "one\n")]), 1, 240, rev2.timestamp + 1);
    let mut m = Mounted::start(mount(), &mnt, &log("3"));
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"two\n");
    m.stop();
    assert!(
        m.log_text().contains("mounted the cached revision"),
        "{}",
        m.log_text()
    );
    assert_eq!(breadcrumb(&cache), crumb);

    // A higher revision signed with an older timestamp than the breadcrumb's is refused by
    // the timestamp check; the cached revision is served instead.
    repo.publish_at(&tree(&[("/a", "replayed\n")]), 3, 240, rev2.timestamp - 100);
    let mut m = Mounted::start(mount(), &mnt, &log("4"));
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"two\n");
    m.stop();
    let text = m.log_text();
    assert!(
        text.contains("manifest timestamp check") && text.contains("OFFLINE MODE"),
        "{text}"
    );
    assert_eq!(breadcrumb(&cache), crumb);

    // Without the cached root catalog there is nothing to fall back to: the mount is refused
    // with a message naming the check.
    let hex = rev2.catalog_hash.to_hex();
    std::fs::remove_file(cache.join(&hex[..2]).join(&hex[2..])).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let out = mount().output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "mounted an outdated manifest:\n{stderr}"
    );
    assert!(
        stderr.contains("manifest timestamp check") && stderr.contains("outdated"),
        "{stderr}"
    );
    assert!(!is_fuse_mounted(&mnt).unwrap());
}

#[test]
fn offline_mode_serves_the_cache_and_recovers_when_the_server_returns() {
    require_root_and_fuse();
    let work = tempfile::tempdir().unwrap();
    let repo = FlatRepo::build(
        work.path(),
        &tree(&[
            ("/a", "one\n"),
            ("/d/seen", "seen\n"),
            ("/unseen", "never read\n"),
        ]),
        240,
    );
    let addr = free_addr().unwrap().to_string();
    let server = Server::start_at(&[(FQRN, &repo.srv)], &addr);
    let mnt = work.path().join("mnt");
    let cache = work.path().join("cache");
    // Short revision checks and downloads, whichever server it mounts from.
    let mount = |server: &Server| {
        let mut cmd = mount_command(server, FQRN, &repo.keys.pubkey, &cache, &mnt);
        cmd.args([
            "--max-ttl",
            "1s",
            "--backoff-init",
            "10ms",
            "--timeout",
            "2s",
        ]);
        cmd
    };
    // Without read-ahead, so that `unseen` (beside `a`) stays out of the cache.
    let mut first = mount(&server);
    first.arg("--no-read-ahead");
    let mut m = Mounted::start(first, &mnt, &work.path().join("1.log"));
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"one\n");
    assert_eq!(std::fs::read(mnt.join("d/seen")).unwrap(), b"seen\n");
    m.stop();

    // The server goes away: the mount comes up from the cache and says so.
    let url = server.url.clone();
    drop(server);
    let down = Server {
        url,
        ..Server::start(&[])
    };
    let mut m = Mounted::start(mount(&down), &mnt, &work.path().join("2.log"));
    assert!(m.log_text().contains("OFFLINE MODE"), "{}", m.log_text());
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"one\n");
    assert_eq!(std::fs::read(mnt.join("d/seen")).unwrap(), b"seen\n");
    assert_eq!(names(&mnt), vec!["a", "d", "unseen"]);
    // What was never cached cannot be read, and fails cleanly.
    let err = std::fs::read(mnt.join("unseen")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Checks keep failing while the server is down (short-term TTL, capped to 1 s here).
    wait_for_log(&m, "revision check failed", Duration::from_secs(15));

    // The server returns with revision 2: the mount leaves offline mode and switches.
    repo.publish(
        &tree(&[("/a", "two\n"), ("/unseen", "never read\n")]),
        2,
        240,
    );
    let _server = Server::start_at(&[(FQRN, &repo.srv)], &addr);
    wait_for_log(&m, "leaving offline mode", Duration::from_secs(20));
    m.wait_until(
        "the switch to revision 2",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || !mnt.join("d").exists(),
    );
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"two\n");
    assert_eq!(std::fs::read(mnt.join("unseen")).unwrap(), b"never read\n");
    assert!(breadcrumb(&cache).ends_with("R2"), "{}", breadcrumb(&cache));

    // A live update whose manifest is older than the mounted revision is refused (docs/format.md
    // §8.6) and revision 2 stays.
    let rev2_time = unix_now();
    repo.publish_at(&tree(&[("/a", "three\n")]), 3, 240, rev2_time - 1000);
    wait_for_log(&m, "manifest timestamp check", Duration::from_secs(15));
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"two\n");
    m.stop();
}

#[test]
fn mounts_a_pinned_revision_by_tag_and_by_root_hash() {
    require_root_and_fuse();
    let work = tempfile::tempdir().unwrap();
    let rev1 = tree(&[("/a", "one\n"), ("/old/f", "old file\n")]);
    let repo = FlatRepo::build(work.path(), &rev1, 240);
    let first = repo.tags();
    repo.publish(&tree(&[("/a", "two\n"), ("/new", "new file\n")]), 2, 240);
    let tags = repo.tags();
    let generic1 = tags
        .iter()
        .find(|t| t.revision == 1 && t.name.starts_with("generic-"))
        .expect("an automatic tag of revision 1")
        .name
        .clone();
    let root1 = first.iter().find(|t| t.name == "trunk").unwrap().root_hash;
    let server = Server::start(&[(FQRN, &repo.srv)]);
    let mnt = work.path().join("mnt");
    let cache = work.path().join("cache");
    let pinned = |flag: &str, value: &str| {
        let mut cmd = mount_command(&server, FQRN, &repo.keys.pubkey, &cache, &mnt);
        cmd.args([flag, value, "--max-ttl", "1s"]);
        cmd
    };
    let reads_revision_1 = |mnt: &Path| {
        assert_eq!(names(mnt), vec!["a", "old"]);
        assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"one\n");
        assert_eq!(std::fs::read(mnt.join("old/f")).unwrap(), b"old file\n");
    };

    let mut m = Mounted::start(
        pinned("--tag", "trunk-previous"),
        &mnt,
        &work.path().join("1.log"),
    );
    reads_revision_1(&mnt);
    // No live updates: a new revision does not replace the pinned one.
    repo.publish(&tree(&[("/a", "three\n")]), 3, 240);
    std::thread::sleep(Duration::from_millis(2500));
    reads_revision_1(&mnt);
    m.stop();
    assert!(m.log_text().contains("pinned revision"), "{}", m.log_text());

    for (i, (flag, value)) in [
        ("--tag", generic1.as_str()),
        ("--root-hash", &root1.to_hex()),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = Mounted::start(
            pinned(flag, value),
            &mnt,
            &work.path().join(format!("p{i}.log")),
        );
        reads_revision_1(&mnt);
        m.stop();
    }
    // Pinned mounts leave the breadcrumb of the current revision alone.
    assert_eq!(breadcrumb(&cache), "");

    // An unknown tag and a root catalog the server does not have refuse the mount.
    std::fs::create_dir_all(&mnt).unwrap();
    let err = refused(&mut pinned("--tag", "no-such-tag"), &mnt);
    assert!(
        err.contains("\"no-such-tag\" is not in the history database") && err.contains("trunk"),
        "{err}"
    );
    let missing = catalog::ContentHash::of_bytes(catalog::HashAlgorithm::Sha1, b"gone");
    let err = refused(&mut pinned("--root-hash", &missing.to_hex()), &mnt);
    assert!(err.contains("HTTP status 404"), "{err}");
}

/// Waits up to `within` for one datagram on `socket` (a systemd notify socket).
fn notification(socket: &std::os::unix::net::UnixDatagram, within: Duration) -> String {
    socket.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no sd_notify message within {within:?}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn mount_and_run_tell_systemd_they_are_ready_only_once_they_serve() {
    require_root_and_fuse();
    let (work, repo, server, mnt) = serve_test_repo();
    let plain = work.path().join("plain");
    std::fs::create_dir_all(&mnt).unwrap();

    // mount (Type=notify in deploy/systemd/strata-mount@.service): READY=1 comes when both
    // the main and the plain mount are live.
    let notify = work.path().join("notify-mount");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    let mut cmd = mount_command(
        &server,
        FQRN,
        &repo.pubkey,
        &work.path().join("cache"),
        &mnt,
    );
    cmd.arg("--plain-mountpoint")
        .arg(&plain)
        .env("NOTIFY_SOCKET", &notify);
    let log = work.path().join("mount.log");
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut m = Mounted {
        child: Some(child),
        mountpoint: mnt.clone(),
        log,
    };
    // First the descriptors a successor needs, for systemd's file-descriptor store
    // (`FileDescriptorStoreMax=` in the unit; the keeper module docs), then READY=1.
    for name in ["fuse", "fuse-plain", "journal"] {
        assert_eq!(
            notification(&socket, Duration::from_secs(30)),
            format!("FDSTORE=1\nFDNAME={name}\n")
        );
    }
    assert_eq!(notification(&socket, Duration::from_secs(30)), "READY=1\n");
    assert!(
        is_fuse_mounted(&mnt).unwrap(),
        "READY=1 before the mount:\n{}",
        m.log_text()
    );
    assert!(
        is_fuse_mounted(&plain).unwrap(),
        "READY=1 before the plain mount"
    );
    assert_eq!(
        std::fs::read_to_string(plain.join("hello.txt")).unwrap(),
        "hello strata\n"
    );

    // run (strata-snapshotter.service): READY=1 once the gRPC socket accepts connections.
    let notify = work.path().join("notify-run");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    let grpc = work.path().join("snapshotter.sock");
    let mut run = Command::new(env!("CARGO_BIN_EXE_strata-snapshotter"))
        .arg("run")
        .arg("--socket")
        .arg(&grpc)
        .arg("--root")
        .arg(work.path().join("root"))
        .arg("--mountpoint")
        .arg(&mnt)
        .env("NOTIFY_SOCKET", &notify)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(work.path().join("run.log")).unwrap())
        .spawn()
        .unwrap();
    let ready = notification(&socket, Duration::from_secs(30));
    let connected = std::os::unix::net::UnixStream::connect(&grpc);
    let _ = run.kill();
    let _ = run.wait();
    assert_eq!(ready, "READY=1\n");
    assert!(
        connected.is_ok(),
        "READY=1 before the socket: {connected:?}"
    );
    m.stop();
}

/// Publishes `revision` of `repo`: a root catalog with `/rev<revision>` and a nested
/// catalog at `/n` holding `/n/f` = `body`. Returns the nested catalog's object path
/// (`data/xx/…C`).
fn publish_nested(repo: &FlatRepo, body: &[u8], revision: u64) -> String {
    use catalog::{CatalogProperties, CatalogWriter, Suffix, Transition};
    let props = CatalogProperties {
        revision,
        last_modified: unix_now(),
        ttl: Some(240),
        previous_revision: None,
    };
    std::fs::create_dir_all(&repo.scratch).unwrap();
    let nested_db = repo.scratch.join(format!("n-{revision}.db"));
    let mut w = CatalogWriter::create(&nested_db, "/n").unwrap();
    w.add("/n", &dir("n"), Transition::NestedRoot).unwrap();
    let marker = file(&repo.store, ".cvmfscatalog", 0o644, 0, 0, b"");
    w.add("/n/.cvmfscatalog", &marker, Transition::None)
        .unwrap();
    let f = file(&repo.store, "f", 0o644, 0, 0, body);
    w.add("/n/f", &f, Transition::None).unwrap();
    let stats = w.finish(&props).unwrap();
    let (nested, nested_size) = store_catalog(&repo.store, &nested_db);

    let root_db = repo.scratch.join(format!("root-n-{revision}.db"));
    let mut w = CatalogWriter::create(&root_db, "").unwrap();
    w.add("", &dir(""), Transition::None).unwrap();
    let name = format!("rev{revision}");
    let rev = file(&repo.store, &name, 0o644, 0, 0, b"x");
    w.add(&format!("/{name}"), &rev, Transition::None).unwrap();
    w.add("/n", &dir("n"), Transition::NestedMountpoint)
        .unwrap();
    w.add_nested("/n", &nested, nested_size, &stats).unwrap();
    w.finish(&props).unwrap();
    let (root, root_size) = store_catalog(&repo.store, &root_db);
    repo.publish_root(root, root_size, revision, unix_now());
    nested.object_path(Suffix::Catalog)
}

#[test]
fn a_lookup_that_spans_a_revision_switch_answers_from_the_new_revision() {
    require_root_and_fuse();
    let work = tempfile::tempdir().unwrap();
    let repo = FlatRepo::build(work.path(), &[("/a".into(), b"a\n".to_vec())], 240);
    let old_nested = publish_nested(&repo, b"one\n", 2);
    let server = Server::start(&[(FQRN, &repo.srv)]);
    let mnt = work.path().join("mnt");
    let mut cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    cmd.args(["--max-ttl", "1s", "--backoff-init", "10ms"]);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    assert!(mnt.join("rev2").exists());

    // The lookup of /n/f needs revision 2's nested catalog, whose download is held.
    server.held.lock().unwrap().push(old_nested.clone());
    let f = mnt.join("n/f");
    let reader = std::thread::spawn(move || std::fs::read(f));
    server.wait_held(1, "the nested catalog's request", Duration::from_secs(10));

    // Revision 3 changes /n/f and is switched to while that lookup waits.
    publish_nested(&repo, b"two\n", 3);
    m.wait_until(
        "revision 3",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || mnt.join("rev3").exists(),
    );
    assert!(
        !reader.is_finished(),
        "the lookup did not wait for the held download"
    );
    server.held.lock().unwrap().clear();

    // The waiting lookup is answered from revision 3, and so is every later one (the
    // kernel caches the entry for 300 s, and an old entry recorded as current in the new
    // generation would never be invalidated).
    assert_eq!(reader.join().unwrap().unwrap(), b"two\n");
    assert_eq!(std::fs::read(mnt.join("n/f")).unwrap(), b"two\n");
    m.stop();
}

/// Mounts a read-only overlayfs of `lowers` (uppermost first) at `merged`, creating it;
/// panics with mount's stderr on failure.
fn mount_overlay(lowers: &[&Path], merged: &Path) {
    std::fs::create_dir_all(merged).unwrap();
    let lowerdir: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={}", lowerdir.join(":")))
        .arg(merged)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "overlay mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls the cache index at `cache` until `done` holds for its counters (10 s at most).
fn wait_for_stats(
    cache: &Path,
    m: &Mounted,
    done: impl Fn(&snapshotter::client::quota::CacheStats) -> bool,
) -> snapshotter::client::quota::CacheStats {
    let mut last = None;
    let counted = poll(
        "the cache counters",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let stats = snapshotter::client::quota::CacheIndex::open(cache)
                .and_then(|i| i.stats())
                .unwrap();
            if done(&stats) {
                return Ok(Some(stats));
            }
            last = Some(stats);
            Ok(None)
        },
    );
    counted.unwrap_or_else(|e| panic!("{e}: {last:?}\n{}", m.log_text()))
}

#[test]
fn startup_packs_are_prefetched_on_request_and_checked_member_by_member() {
    require_root_and_fuse();
    let work = tempfile::tempdir().unwrap();
    let bodies: Vec<Vec<u8>> = (0..6)
        .map(|i| pseudo_random(5000 + i, 700 + i as u64))
        .collect();
    let stored: Vec<Vec<u8>> = bodies.iter().map(|b| catalog::compress(b)).collect();
    let member = |i: usize| catalog::PackMember {
        hash: catalog::ContentHash::of_bytes(catalog::HashAlgorithm::Sha1, &stored[i]),
        suffix: catalog::Suffix::None,
        compressed: true,
        stored_size: stored[i].len() as u64,
        raw_size: bodies[i].len() as u64,
    };
    // pack-000: f0, f1, f2; pack-001: f3 and f4 with a flipped byte. f5 in no pack.
    let mut first = catalog::PackBuilder::new();
    for (i, bytes) in stored.iter().enumerate().take(3) {
        first.push(member(i), bytes).unwrap();
    }
    let mut second = catalog::PackBuilder::new();
    second.push(member(3), &stored[3]).unwrap();
    let mut damaged = stored[4].clone();
    damaged[10] ^= 0x40;
    second.push(member(4), &damaged).unwrap();
    let (first, second) = (first.finish(), second.finish());
    let mut files: Vec<(String, Vec<u8>)> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| (format!("/app/f{i}"), b.clone()))
        .collect();
    files.push(("/app/startup/pack-000.strata-pack".into(), first.clone()));
    files.push(("/app/startup/pack-001.strata-pack".into(), second.clone()));
    files.push((
        "/bad/startup/pack-000.strata-pack".into(),
        b"not a pack\n".to_vec(),
    ));
    let repo = FlatRepo::build(work.path(), &files, 240);
    for (i, b) in bodies.iter().enumerate() {
        assert_eq!(
            object_of(&repo.store, b),
            member(i).hash.object_path(catalog::Suffix::None),
            "the pack holds the file's own object"
        );
    }
    let server = Server::start(&[(FQRN, &repo.srv)]);
    let mnt = work.path().join("mnt");
    let cache = work.path().join("cache");
    // Without read-ahead, every GET below is what the packs did or did not save.
    let mut cmd = mount_command(&server, FQRN, &repo.keys.pubkey, &cache, &mnt);
    cmd.arg("--no-read-ahead");
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));

    // The first pack is small (15 KB): it is in before the answer, its members cached;
    // the second is not waited for.
    let first_object = object_of(&repo.store, &first);
    let second_object = object_of(&repo.store, &second);
    server.slow.lock().unwrap().push(first_object.clone());
    server.held.lock().unwrap().push(second_object.clone());
    let asked = std::time::Instant::now();
    let answer = getxattr(&mnt.join("app/startup"), "user.strata.prefetch").unwrap();
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "answered before the (slow) first pack came"
    );
    server.held.lock().unwrap().clear();
    server.slow.lock().unwrap().clear();
    assert_eq!(
        server.requests_for(&object_of(&repo.store, &first)),
        1,
        "the first pack fetched before the answer"
    );
    for i in 0..3 {
        // The cache keeps objects as XX/rest of the hash.
        let hex = member(i).hash.to_hex();
        let cached = cache.join(&hex[..2]).join(&hex[2..]);
        assert!(cached.is_file(), "f{i} cached: {}", cached.display());
    }
    let bytes = first.len() + second.len();
    assert_eq!(
        String::from_utf8_lossy(&answer),
        format!("2 pack(s), {bytes} bytes")
    );
    let stats = wait_for_stats(&cache, &m, |s| s.prefetch_packs == 2);
    assert_eq!(stats.prefetch_rejected_objects, 1, "the flipped member");
    assert_eq!(
        stats.prefetch_bytes,
        (0..4).map(|i| bodies[i].len() as u64).sum::<u64>()
    );
    let pack_objects = [
        object_of(&repo.store, &first),
        object_of(&repo.store, &second),
    ];
    for p in &pack_objects {
        assert_eq!(server.requests_for(p), 1, "one plain GET per pack");
    }
    // Asked again: the same answer, nothing fetched again.
    let again = getxattr(&mnt.join("app/startup"), "user.strata.prefetch").unwrap();
    assert_eq!(again, answer);
    for (i, b) in bodies.iter().enumerate() {
        assert_eq!(&std::fs::read(mnt.join(format!("app/f{i}"))).unwrap(), b);
    }
    for (i, b) in bodies.iter().enumerate() {
        let gets = server.requests_for(&object_of(&repo.store, b));
        // From the pack: no GET; the rejected member and the one in no pack: their own GET.
        let want = usize::from(i >= 4);
        assert_eq!(gets, want, "GETs of f{i}");
    }
    for p in &pack_objects {
        assert_eq!(server.requests_for(p), 1);
    }
    let stats = wait_for_stats(&cache, &m, |s| s.prefetch_used_bytes == s.prefetch_bytes);
    assert_eq!(stats.prefetch_failed_packs, 0);
    // Not a startup directory or pack: no such attribute.
    let e = getxattr(&mnt.join("app/f0"), "user.strata.prefetch").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENODATA), "{e}");
    // A pack that is no pack: counted, logged; nothing else happens.
    let answer = getxattr(&mnt.join("bad/startup"), "user.strata.prefetch").unwrap();
    assert_eq!(String::from_utf8_lossy(&answer), "1 pack(s), 11 bytes");
    wait_for_stats(&cache, &m, |s| s.prefetch_failed_packs == 1);
    assert_eq!(server.range_requests.load(Ordering::SeqCst), 0);
    m.stop();
    let log = m.log_text();
    assert!(
        log.contains("startup pack member rejected") && log.contains("startup pack unusable"),
        "{log}"
    );
}

/// A chunked file whose chunks came in a startup pack is known to the pack like an
/// unchunked one: opening it does not read its directory ahead (what a start needs from
/// that directory is in the pack too), and reading it does not read ahead the chunks the
/// pack left out (a start's trace lists the chunks it reads).
#[test]
fn a_chunked_file_from_a_startup_pack_reads_ahead_neither_its_directory_nor_its_other_chunks() {
    require_root_and_fuse();
    const CHUNK: usize = 300_000;
    let big = pseudo_random(700_000, 93);
    let mut pack = catalog::PackBuilder::new();
    let mut chunk_objects = Vec::new();
    for (i, piece) in big.chunks(CHUNK).enumerate() {
        let stored = catalog::compress(piece);
        let hash = catalog::ContentHash::of_bytes(catalog::HashAlgorithm::Sha1, &stored);
        chunk_objects.push(hash.object_path(catalog::Suffix::Partial));
        // The last of the three chunks was not read by the traced start.
        if i == 2 {
            continue;
        }
        let member = catalog::PackMember {
            hash,
            suffix: catalog::Suffix::Partial,
            compressed: true,
            stored_size: stored.len() as u64,
            raw_size: piece.len() as u64,
        };
        pack.push(member, &stored).unwrap();
    }
    let mut files: Vec<(String, Vec<u8>)> = (0..6u64)
        .map(|i| (format!("/app/s{i}"), pseudo_random(3000, 94 + i)))
        .collect();
    files.push(("/app/big".into(), big.clone()));
    files.push(("/app/startup/pack-000.strata-pack".into(), pack.finish()));
    // A directory read ahead as usual: when its neighbour arrives, read-ahead has had its
    // chance at /app too.
    files.push(("/other/x".into(), pseudo_random(3000, 101)));
    files.push(("/other/y".into(), pseudo_random(3000, 102)));
    let (work, repo, server, mnt) = serve_flat_repo(&[]);
    repo.publish_with_links(
        &files,
        &[],
        |_| 0o644,
        |p| (p == "/app/big").then_some(CHUNK),
        2,
        240,
    );
    for object in &chunk_objects {
        assert!(
            repo.srv.join(object).is_file(),
            "the pack holds the file's own chunk {object}"
        );
    }
    let cache = work.path().join("cache");
    let cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    getxattr(&mnt.join("app/startup"), "user.strata.prefetch").unwrap();
    wait_for_stats(&cache, &m, |s| s.prefetch_packs == 1);
    // What the start read: parts of the first two chunks.
    let f = std::fs::File::open(mnt.join("app/big")).unwrap();
    for at in [0, CHUNK + 1000] {
        let mut buf = vec![0u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, at as u64).unwrap();
        assert!(buf == big[at..at + 4096], "content at {at}");
    }
    drop(f);
    let requested = |object: &str| server.requests_for(object);
    assert_eq!(std::fs::read(mnt.join("other/x")).unwrap(), files[8].1);
    let neighbour = object_of(&repo.store, &files[9].1);
    wait_until(
        "read-ahead of /other",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || requested(&neighbour) != 0,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", m.log_text()));
    // Read-ahead takes the newest directory first: give a wrongly queued /app a moment
    // more (on loopback it would have fetched its six small files by now many times over).
    std::thread::sleep(Duration::from_secs(1));
    for (i, object) in chunk_objects.iter().enumerate() {
        assert_eq!(requested(object), 0, "chunk {i} was fetched");
    }
    for (path, body) in files.iter().take(6) {
        assert_eq!(
            requested(&object_of(&repo.store, body)),
            0,
            "{path} was read ahead: {:?}\n{}",
            server.paths.lock().unwrap(),
            m.log_text()
        );
    }
    m.stop();
}

/// Resident bytes of `path` in the page cache (`fincore`, util-linux).
fn resident(path: &Path) -> u64 {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux)");
    assert!(out.status.success(), "fincore {}: {out:?}", path.display());
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("fincore {}: {text:?}: {e}", path.display()))
}

/// Drops the page cache of `path` (`POSIX_FADV_DONTNEED`).
fn drop_page_cache(path: &Path) {
    let file = std::fs::File::open(path).unwrap();
    nix::fcntl::posix_fadvise(
        &file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
}

/// A chunked program started from the mount (an `execve` of it, through overlayfs as in a
/// container) whose chunks are cached has its whole content read into the kernel's page
/// cache, not only the pages its run touches; a chunked file that is not ELF is not, even
/// when started (fuse/page_fill.rs). Needs `OPEN` requests: kernels with FUSE passthrough
/// (>= 6.9), where the mount leaves no-open mode off.
#[test]
fn a_started_chunked_program_is_read_into_the_page_cache_whole() {
    require_root_and_fuse();
    // Chunk boundaries off page boundaries.
    const CHUNK: usize = 300_000;
    // A runnable program with 3 MB its run never touches.
    let mut prog = include_bytes!("fixtures/elf/rpath-exe").to_vec();
    prog.extend(pseudo_random(3 * 1024 * 1024, 95));
    let data = pseudo_random(3 * 1024 * 1024, 96);
    let files: Vec<(String, Vec<u8>)> = vec![
        ("/l1/bin/prog".into(), prog.clone()),
        ("/l1/bin/data".into(), data.clone()),
        ("/l0/etc/motd".into(), b"hello\n".to_vec()),
    ];
    let (work, repo, server, mnt) = serve_flat_repo(&[]);
    repo.publish_with_links(
        &files,
        &[],
        |_| 0o755,
        |p| (p != "/l0/etc/motd").then_some(CHUNK),
        2,
        240,
    );
    let mut cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    cmd.env(
        "RUST_LOG",
        "info,snapshotter::fuse::page_fill=debug,snapshotter::cmd::page_fill_reader=debug",
    );
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    // Without passthrough the mount serves in no-open mode, where nothing is filled.
    // (A kernel >= 6.9 built with FUSE passthrough is needed.)
    wait_for_log(
        &m,
        "FUSE passthrough: the kernel reads open files",
        Duration::from_secs(5),
    );
    let (prog_path, data_path) = (mnt.join("l1/bin/prog"), mnt.join("l1/bin/data"));
    for (path, body) in [(&prog_path, &prog), (&data_path, &data)] {
        // Every chunk cached by a read; then the pages that read left dropped.
        assert_eq!(&std::fs::read(path).unwrap(), body);
        drop_page_cache(path);
        assert!(
            resident(path) < body.len() as u64 / 10,
            "{}: the page cache was not dropped",
            path.display()
        );
    }
    let merged = work.path().join("merged");
    mount_overlay(&[&mnt.join("l0"), &mnt.join("l1")], &merged);
    let _overlay = Unmounted(merged.clone());
    // The mount writes its counters every half second.
    let cache = work.path().join("cache");
    let counters = || {
        std::thread::sleep(Duration::from_millis(700));
        snapshotter::client::quota::CacheIndex::open(&cache)
            .and_then(|i| i.stats())
            .unwrap()
    };
    let before = counters();
    let status = Command::new(merged.join("bin/prog")).status().unwrap();
    assert!(status.success(), "{status}");
    wait_until(
        "the program's pages to be cached whole",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || resident(&prog_path) >= prog.len() as u64 - 4096,
    )
    .unwrap_or_else(|e| panic!("{e}: {} bytes\n{}", resident(&prog_path), m.log_text()));
    // Read by the reader process, not by a thread of the mount.
    wait_for_log(&m, "page cache filled", Duration::from_secs(10));
    // The reader's reads are the fill's, not the program's: they count as no cache hits
    // (one per chunk a read opens), only the program's own few do.
    let chunks = prog.len().div_ceil(CHUNK) as u64;
    let hits = counters().hits - before.hits;
    assert!(
        hits < chunks / 2,
        "{hits} cache hits for a run that touches one chunk of {chunks}"
    );
    // Not ELF: the kernel refuses to start it, and nothing is read.
    let refused = Command::new(merged.join("bin/data")).status().unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::ENOEXEC), "{refused}");
    wait_for_log(
        &m,
        "not a program: page cache not filled",
        Duration::from_secs(10),
    );
    assert!(resident(&data_path) < data.len() as u64 / 10);
    assert_eq!(std::fs::read(&prog_path).unwrap(), prog);
    drop(_overlay);
    m.stop();
}

/// A chunked program started on a cold mount is listed in a trace with every chunk, in
/// order, not only the chunks its run touches: a start with packs needs them all to fill
/// the page cache with it (fuse/page_fill.rs); a started file that is not ELF is listed by
/// the chunk the kernel read. Needs `OPEN` requests (FUSE passthrough).
#[test]
fn a_trace_lists_every_chunk_of_a_started_chunked_program() {
    require_root_and_fuse();
    const CHUNK: usize = 300_000;
    let mut prog = include_bytes!("fixtures/elf/rpath-exe").to_vec();
    prog.extend(pseudo_random(2 * 1024 * 1024, 97));
    // Started too, but not a program: the kernel refuses it after reading its start.
    let data = pseudo_random(2 * 1024 * 1024, 98);
    let (work, repo, server, mnt) = serve_flat_repo(&[]);
    repo.publish_with_links(
        &[
            ("/bin/prog".to_string(), prog.clone()),
            ("/bin/data".to_string(), data),
        ],
        &[],
        |_| 0o755,
        |_| Some(CHUNK),
        2,
        240,
    );
    let trace = work.path().join("start.trace");
    let mut cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    cmd.arg("--no-read-ahead").arg("--trace").arg(&trace);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    wait_for_log(
        &m,
        "FUSE passthrough: the kernel reads open files",
        Duration::from_secs(5),
    );
    let status = Command::new(mnt.join("bin/prog")).status().unwrap();
    assert!(status.success(), "{status}");
    let refused = Command::new(mnt.join("bin/data")).status().unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::ENOEXEC), "{refused}");
    let text = std::fs::read_to_string(&trace).unwrap();
    m.stop();
    let chunks = prog.len().div_ceil(CHUNK);
    let expected: String = std::iter::once("/bin/prog".to_string())
        .chain((0..chunks).map(|i| format!("chunk {i} /bin/prog")))
        .chain(["/bin/data".to_string(), "chunk 0 /bin/data".to_string()])
        .map(|l| l + "\n")
        .collect();
    assert_eq!(text, format!("# strata access trace v2\n{expected}"));
}

/// Unmounts (lazily) the mount at its path when dropped, also when a test fails.
struct Unmounted(PathBuf);

impl Drop for Unmounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn files_read_the_same_with_and_without_fuse_passthrough() {
    require_root_and_fuse();
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("/d/f{i}"),
                pseudo_random(300_000 + i * 7, 900 + i as u64),
            )
        })
        .collect();
    let (work, repo, server, _) = serve_flat_repo(&files);
    for (label, options) in [
        ("passthrough", &[][..]),
        ("no-passthrough", &["--no-passthrough"][..]),
    ] {
        let mnt = work.path().join(format!("mnt-{label}"));
        let mut cmd = mount_command(
            &server,
            FQRN,
            &repo.keys.pubkey,
            &work.path().join(format!("cache-{label}")),
            &mnt,
        );
        cmd.args(options);
        let mut m = Mounted::start(cmd, &mnt, &work.path().join(format!("{label}.log")));
        for (path, body) in &files {
            let p = mnt.join(path.trim_start_matches('/'));
            // Whole reads, a positional read in the middle, and two handles at once.
            assert_eq!(&std::fs::read(&p).unwrap(), body, "{label} {path}");
            let f = std::fs::File::open(&p).unwrap();
            let g = std::fs::File::open(&p).unwrap();
            let mut buf = vec![0u8; 1000];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 150_000).unwrap();
            assert_eq!(&buf[..], &body[150_000..151_000], "{label} {path}");
            std::os::unix::fs::FileExt::read_exact_at(&g, &mut buf, 0).unwrap();
            assert_eq!(&buf[..], &body[..1000], "{label} {path}");
        }
        m.stop();
        let log = m.log_text();
        // A kernel >= 6.9 offers passthrough: the mount must take it unless told not to.
        assert_eq!(
            log.contains("FUSE passthrough: the kernel reads open files"),
            options.is_empty() && kernel_at_least(6, 9),
            "{label}:\n{log}"
        );
    }
}

/// Whether the running kernel is at least `major.minor` (`uname -r`).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}
