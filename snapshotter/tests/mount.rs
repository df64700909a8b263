//! End-to-end tests of `strata-snapshotter mount`: a repository built with the `catalog`
//! crate (and the stock-`cvmfs_server` fixture) is served over HTTP by an in-test axum
//! server and mounted through FUSE by the real binary.
//!
//! These tests need root and `/dev/fuse`; they fail (not skip) without them.

use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catalog::{
    CatalogProperties, CatalogWriter, Certificate, ContentHash, Entry, EntryKind, LocalStore,
    Manifest, Statistics, Suffix, Transition, Whitelist,
};

const FQRN: &str = "test.strata.example";
const STOCK_FQRN: &str = "stock.strata.example";
const STOCK_REPO: &str = "/work/shared/fixtures/stock-repo";
const MTIME: i64 = 1_760_000_000;

// ---------------------------------------------------------------------------------------
// Environment

fn require_root_and_fuse() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (FUSE mount with allow_other, overlay mounts)"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "these tests need /dev/fuse"
    );
}

/// An HTTP server on 127.0.0.1 serving `dir` at `/cvmfs/<fqrn>/` for each pair; counts
/// requests under `data/`.
struct Server {
    url: String,
    data_requests: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
    /// Requests whose path ends with one of these are answered after 2 s.
    slow: Arc<Mutex<Vec<String>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start(repos: &[(&str, &Path)]) -> Server {
        use axum::{Router, extract::Request, middleware::Next};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let data_requests = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let mut router = Router::new();
        for (fqrn, dir) in repos {
            router = router.nest_service(
                &format!("/cvmfs/{fqrn}"),
                tower_http::services::ServeDir::new(dir),
            );
        }
        let slow = Arc::new(Mutex::new(Vec::<String>::new()));
        let (counter, seen, slow2) = (data_requests.clone(), paths.clone(), slow.clone());
        let router = router.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let (counter, seen, slow) = (counter.clone(), seen.clone(), slow2.clone());
                async move {
                    let path = req.uri().path().to_string();
                    if path.contains("/data/") {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let delay = slow.lock().unwrap().iter().any(|s| path.ends_with(s));
                    if delay {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    seen.lock().unwrap().push(path);
                    next.run(req).await
                }
            },
        ));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, router).await.unwrap() });
        Server {
            url: format!("http://{addr}/cvmfs/@fqrn@"),
            data_requests,
            paths,
            slow,
            _runtime: runtime,
        }
    }
}

/// Whether `/proc/self/mountinfo` lists `mountpoint` with a `fuse` file system type.
fn fuse_mounted(mountpoint: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mountpoint.to_string_lossy();
    info.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let fstype = line.split(" - ").nth(1).and_then(|r| r.split(' ').next());
        fields.get(4) == Some(&want.as_ref()) && fstype.is_some_and(|t| t.starts_with("fuse"))
    })
}

/// A running `strata-snapshotter mount`; SIGTERM and wait on drop.
struct Mounted {
    child: Option<Child>,
    mountpoint: PathBuf,
    log: PathBuf,
}

fn mount_command(server: &Server, fqrn: &str, pubkey: &Path, cache: &Path, mnt: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata-snapshotter"));
    cmd.args(["mount", "--fqrn", fqrn, "--server", &server.url, "--pubkey"])
        .arg(pubkey)
        .arg("--cache")
        .arg(cache)
        .arg(mnt)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

impl Mounted {
    fn start(mut cmd: Command, mountpoint: &Path, log: &Path) -> Mounted {
        std::fs::create_dir_all(mountpoint).unwrap();
        let log_file = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn strata-snapshotter");
        let mut m = Mounted {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fuse_mounted(mountpoint) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mount exited with {status}:\n{}", m.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "mount timed out:\n{}",
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit and the mount to disappear.
    fn stop(&mut self) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        self.wait_exit();
    }

    /// Waits for a successful exit and checks the mount is gone.
    fn wait_exit(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "mount exited with {status}:\n{}",
                    self.log_text()
                );
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&self.mountpoint)
                    .status();
                panic!("mount did not exit after SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!fuse_mounted(&self.mountpoint), "still mounted after exit");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            std::thread::sleep(Duration::from_millis(500));
            let _ = child.kill();
            let _ = child.wait();
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

fn getxattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the stated length.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    Ok(buf)
}

fn listxattr(path: &Path) -> Vec<u8> {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = vec![0u8; 1024];
    // SAFETY: a valid NUL-terminated string and a buffer of the stated length.
    let len = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(len >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buf.truncate(len as usize);
    buf
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// A repository built with the catalog crate

struct TestRepo {
    srv: PathBuf,
    pubkey: PathBuf,
    wrong_pubkey: PathBuf,
    /// Object path (`data/..`) of `/hello.txt`.
    hello_object: String,
}

fn props() -> CatalogProperties {
    CatalogProperties {
        revision: 1,
        last_modified: MTIME as u64,
        ttl: Some(240),
        previous_revision: None,
    }
}

fn file(store: &LocalStore, name: &str, perm: u32, uid: u32, gid: u32, raw: &[u8]) -> Entry {
    let hash = store.put_raw(raw, Suffix::None).unwrap();
    Entry::regular(name, perm, uid, gid, MTIME, raw.len() as u64, hash)
}

fn dir(name: &str) -> Entry {
    Entry::directory(name, 0o755, 0, 0, MTIME)
}

/// Stores catalog `db` (uncompressed SQLite) as a `C` object; returns hash and size.
fn store_catalog(store: &LocalStore, db: &Path) -> (ContentHash, u64) {
    let bytes = std::fs::read(db).unwrap();
    (
        store.put_raw(&bytes, Suffix::Catalog).unwrap(),
        bytes.len() as u64,
    )
}

/// ```text
/// /hello.txt                 0640 1000:1001 "hello strata\n"
/// /hard1, /hard2             one hard-link group
/// /link -> hello.txt
/// /layers/lower/{gone,kept,od/old}
/// /layers/upper/             nested catalog
///     gone                   char 0:0 (whiteout)
///     od/                    trusted.overlay.opaque=y
///     od/new
/// ```
fn build_repo(root: &Path) -> TestRepo {
    let srv = root.join("srv");
    let tmp = root.join("build");
    std::fs::create_dir_all(&tmp).unwrap();
    let store = LocalStore::open(&srv).unwrap();
    let empty = file(&store, ".cvmfscatalog", 0o644, 0, 0, b"");

    // Nested catalog /layers/upper.
    let upper_db = tmp.join("upper.db");
    let mut w = CatalogWriter::create(&upper_db, "/layers/upper").unwrap();
    w.add("/layers/upper", &dir("upper"), Transition::NestedRoot)
        .unwrap();
    w.add("/layers/upper/.cvmfscatalog", &empty, Transition::None)
        .unwrap();
    let whiteout = Entry::special("gone", EntryKind::CharDevice, 0, 0, 0, 0, MTIME);
    w.add("/layers/upper/gone", &whiteout, Transition::None)
        .unwrap();
    let mut od = dir("od");
    od.xattrs
        .insert("trusted.overlay.opaque".into(), b"y".to_vec());
    w.add("/layers/upper/od", &od, Transition::None).unwrap();
    w.add(
        "/layers/upper/od/new",
        &file(&store, "new", 0o644, 0, 0, b"new\n"),
        Transition::None,
    )
    .unwrap();
    let upper_stats: Statistics = w.finish(&props()).unwrap();
    let (upper_hash, upper_size) = store_catalog(&store, &upper_db);

    // Root catalog.
    let root_db = tmp.join("root.db");
    let mut w = CatalogWriter::create(&root_db, "").unwrap();
    w.add("", &dir(""), Transition::None).unwrap();
    w.add(
        "/hello.txt",
        &file(&store, "hello.txt", 0o640, 1000, 1001, b"hello strata\n"),
        Transition::None,
    )
    .unwrap();
    for name in ["hard1", "hard2"] {
        let mut e = file(&store, name, 0o644, 0, 0, b"linked\n");
        e.hardlink_group = 1;
        e.linkcount = 2;
        w.add(&format!("/{name}"), &e, Transition::None).unwrap();
    }
    w.add(
        "/link",
        &Entry::symlink("link", "hello.txt", 0, 0, MTIME),
        Transition::None,
    )
    .unwrap();
    w.add("/layers", &dir("layers"), Transition::None).unwrap();
    w.add("/layers/lower", &dir("lower"), Transition::None)
        .unwrap();
    for (name, body) in [("gone", &b"to be deleted\n"[..]), ("kept", b"kept\n")] {
        w.add(
            &format!("/layers/lower/{name}"),
            &file(&store, name, 0o644, 0, 0, body),
            Transition::None,
        )
        .unwrap();
    }
    w.add("/layers/lower/od", &dir("od"), Transition::None)
        .unwrap();
    w.add(
        "/layers/lower/od/old",
        &file(&store, "old", 0o644, 0, 0, b"old\n"),
        Transition::None,
    )
    .unwrap();
    w.add("/layers/upper", &dir("upper"), Transition::NestedMountpoint)
        .unwrap();
    w.add_nested("/layers/upper", &upper_hash, upper_size, &upper_stats)
        .unwrap();
    w.finish(&props()).unwrap();
    let (root_hash, root_size) = store_catalog(&store, &root_db);

    // Keys, certificate, whitelist, manifest.
    let master = catalog::keys::generate_key().unwrap();
    let cert_key = catalog::keys::generate_key().unwrap();
    let other = catalog::keys::generate_key().unwrap();
    let cert =
        Certificate::self_signed(&cert_key, &format!("{FQRN} CernVM-FS Release Managers")).unwrap();
    let cert_hash = store
        .put_raw(cert.to_pem().as_bytes(), Suffix::Certificate)
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let whitelist = Whitelist::new(FQRN, &cert, now - 3600, 30 * 24 * 3600);
    store
        .write_file_atomic(".cvmfswhitelist", &whitelist.sign(&master).unwrap())
        .unwrap();
    let manifest = Manifest {
        catalog_hash: root_hash,
        catalog_size: root_size,
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
    store
        .write_file_atomic(".cvmfspublished", &manifest.sign(&cert_key).unwrap())
        .unwrap();

    let pubkey = root.join(format!("{FQRN}.pub"));
    std::fs::write(
        &pubkey,
        catalog::keys::public_key_to_pem(&master.to_public_key()).unwrap(),
    )
    .unwrap();
    let wrong_pubkey = root.join("wrong.pub");
    std::fs::write(
        &wrong_pubkey,
        catalog::keys::public_key_to_pem(&other.to_public_key()).unwrap(),
    )
    .unwrap();
    let hello_object = ContentHash::of_bytes(
        catalog::HashAlgorithm::Sha1,
        &catalog::compress(b"hello strata\n"),
    )
    .object_path(Suffix::None);
    TestRepo {
        srv,
        pubkey,
        wrong_pubkey,
        hello_object,
    }
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn mounts_a_catalog_crate_repository() {
    require_root_and_fuse();
    let work = tempfile::tempdir().unwrap();
    let repo = build_repo(work.path());
    let server = Server::start(&[(FQRN, &repo.srv)]);
    let mnt = work.path().join("mnt");
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
    std::fs::create_dir_all(&merged).unwrap();
    let lower = mnt.join("layers/lower");
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={}:{}", upper.display(), lower.display()))
        .arg(&merged)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "overlay mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
fn a_slow_download_blocks_only_its_own_request() {
    require_root_and_fuse();
    let work = tempfile::tempdir().unwrap();
    let repo = build_repo(work.path());
    let server = Server::start(&[(FQRN, &repo.srv)]);
    let mnt = work.path().join("mnt");
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
    let work = tempfile::tempdir().unwrap();
    let repo = build_repo(work.path());
    let server = Server::start(&[(FQRN, &repo.srv)]);
    let mnt = work.path().join("mnt");
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
    assert!(!fuse_mounted(&mnt));
}

#[test]
fn mounts_the_stock_fixture_repository() {
    require_root_and_fuse();
    let work = tempfile::tempdir().unwrap();
    let srv = Path::new(STOCK_REPO).join("srv");
    let key = Path::new(STOCK_REPO).join(format!("{STOCK_FQRN}.pub"));
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

    // A chunked file: the concatenation of its chunk objects (spec §4.6).
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
