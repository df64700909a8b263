//! Shared helpers of the mount integration tests: a test HTTP server, the mount process,
//! and a repository built with the `catalog` crate.
#![allow(dead_code)]

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tests::mounts::{is_fuse_mounted, wait_fuse_mounted};
use tests::wait::{poll, wait_until};

use catalog::{
    CatalogProperties, CatalogWriter, Certificate, ContentHash, Entry, EntryKind, LocalStore,
    Manifest, Statistics, Suffix, Transition, Whitelist,
};

pub const FQRN: &str = "test.strata.example";
pub const MTIME: i64 = 1_760_000_000;

// ---------------------------------------------------------------------------------------
// Environment

/// Fails the test, naming what is missing, unless it runs as root with `/dev/fuse` (FUSE
/// mount with `allow_other`, overlay mounts).
pub fn require_root_and_fuse() {
    if let Err(e) = tests::binaries::check_root_and_fuse() {
        panic!("{e}");
    }
}

/// An HTTP server on 127.0.0.1 serving `dir` at `/cvmfs/<fqrn>/` for each pair; counts
/// requests under `data/`.
pub struct Server {
    pub url: String,
    pub data_requests: Arc<AtomicUsize>,
    pub paths: Arc<Mutex<Vec<String>>>,
    /// Requests whose path ends with one of these are answered after 2 s.
    pub slow: Arc<Mutex<Vec<String>>>,
    /// Requests whose path ends with one of these wait until it is taken off the list.
    pub held: Arc<Mutex<Vec<String>>>,
    /// Requests that have waited (or are waiting) on `held`.
    pub held_requests: Arc<AtomicUsize>,
    /// Requests that carried a `Range` header (there must be none, docs/format.md §8.8.1).
    pub range_requests: Arc<AtomicUsize>,
    /// `host:port` the server listens on.
    pub addr: String,
    pub _runtime: tokio::runtime::Runtime,
}

impl Server {
    /// Waits (polling every 20 ms) until at least `n` requests are held; after `within`
    /// panics naming `what`.
    pub fn wait_held(&self, n: usize, what: &str, within: Duration) {
        let held = || self.held_requests.load(Ordering::SeqCst) >= n;
        wait_until(what, within, Duration::from_millis(20), held).unwrap_or_else(|e| panic!("{e}"));
    }

    /// How many requests so far asked for a path ending in `object` (`data/xx/…`).
    pub fn requests_for(&self, object: &str) -> usize {
        self.paths
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.ends_with(object))
            .count()
    }

    pub fn start(repos: &[(&str, &Path)]) -> Server {
        Server::start_at(repos, "127.0.0.1:0")
    }

    /// [`Server::start`] on `addr` (`host:port`); dropping the server stops it.
    pub fn start_at(repos: &[(&str, &Path)], addr: &str) -> Server {
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
        let held = Arc::new(Mutex::new(Vec::<String>::new()));
        let held_requests = Arc::new(AtomicUsize::new(0));
        let range_requests = Arc::new(AtomicUsize::new(0));
        let (counter, seen, slow2, ranges) = (
            data_requests.clone(),
            paths.clone(),
            slow.clone(),
            range_requests.clone(),
        );
        let (held2, held_requests2) = (held.clone(), held_requests.clone());
        let router = router.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let (counter, seen, slow, ranges) =
                    (counter.clone(), seen.clone(), slow2.clone(), ranges.clone());
                let (held, held_requests) = (held2.clone(), held_requests2.clone());
                async move {
                    let path = req.uri().path().to_string();
                    if req.headers().contains_key("range") {
                        ranges.fetch_add(1, Ordering::SeqCst);
                    }
                    if path.contains("/data/") {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let delay = slow.lock().unwrap().iter().any(|s| path.ends_with(s));
                    if delay {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    let is_held =
                        |path: &str| held.lock().unwrap().iter().any(|s| path.ends_with(s));
                    if is_held(&path) {
                        held_requests.fetch_add(1, Ordering::SeqCst);
                        while is_held(&path) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    seen.lock().unwrap().push(path.clone());
                    let mut response = next.run(req).await;
                    // What a CVMFS web server sends (docs/format.md §8.9), so that Squid caches.
                    let h = response.headers_mut();
                    h.remove("last-modified");
                    h.remove("etag");
                    let max_age = if path.contains("/data/") {
                        "max-age=259200"
                    } else {
                        "max-age=61"
                    };
                    h.insert(
                        "cache-control",
                        axum::http::HeaderValue::from_static(max_age),
                    );
                    response
                }
            },
        ));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, router).await.unwrap() });
        Server {
            url: format!("http://{addr}/cvmfs/@fqrn@"),
            data_requests,
            paths,
            slow,
            held,
            held_requests,
            range_requests,
            addr: addr.to_string(),
            _runtime: runtime,
        }
    }
}

/// A running `strata-snapshotter mount`; SIGTERM and wait on drop.
pub struct Mounted {
    pub child: Option<Child>,
    pub mountpoint: PathBuf,
    pub log: PathBuf,
}

pub fn mount_command(
    server: &Server,
    fqrn: &str,
    pubkey: &Path,
    cache: &Path,
    mnt: &Path,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata-snapshotter"));
    cmd.args(["mount", "--fqrn", fqrn, "--server", &server.url, "--pubkey"])
        .arg(pubkey)
        .arg("--cache")
        .arg(cache)
        .arg(mnt)
        // `STRATA_TEST_MOUNT_LOG=debug` (any `RUST_LOG` filter) for a failing test's
        // mount log.
        .env(
            "RUST_LOG",
            std::env::var("STRATA_TEST_MOUNT_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null());
    cmd
}

impl Mounted {
    /// Polls `ready` every `every` until it holds; after `within` panics naming `what`, with
    /// the mount's log.
    pub fn wait_until(
        &self,
        what: &str,
        within: Duration,
        every: Duration,
        ready: impl FnMut() -> bool,
    ) {
        if let Err(e) = wait_until(what, within, every, ready) {
            panic!("{e}:\n{}", self.log_text());
        }
    }

    pub fn start(mut cmd: Command, mountpoint: &Path, log: &Path) -> Mounted {
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
        m.wait_mounted(mountpoint, Duration::from_secs(30));
        m
    }

    /// Waits until a FUSE mount is listed at `path` (the main or the plain mount point);
    /// panics with the log if the process exits first or `within` passes.
    pub fn wait_mounted(&mut self, path: &Path, within: Duration) {
        let mounted = wait_fuse_mounted(self.child.as_mut().unwrap(), path, within);
        if let Err(e) = mounted {
            panic!("{e}:\n{}", self.log_text());
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit and the mount to disappear.
    pub fn stop(&mut self) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        self.wait_exit();
    }

    /// Waits for a successful exit and checks the mount is gone.
    pub fn wait_exit(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let exited = poll(
            "the mount to exit after SIGTERM",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || Ok(child.try_wait().unwrap()),
        );
        match exited {
            Ok(status) => assert!(
                status.success(),
                "mount exited with {status}:\n{}",
                self.log_text()
            ),
            Err(e) => {
                let _ = child.kill();
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&self.mountpoint)
                    .status();
                panic!("{e}:\n{}", self.log_text());
            }
        }
        assert!(
            !is_fuse_mounted(&self.mountpoint).unwrap(),
            "still mounted after exit"
        );
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

/// getxattr(2) itself (the tests check its exact errno), following symlinks.
#[allow(unsafe_code)]
pub fn getxattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
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

/// listxattr(2) itself: the NUL-separated names.
#[allow(unsafe_code)]
pub fn listxattr(path: &Path) -> Vec<u8> {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = vec![0u8; 1024];
    // SAFETY: a valid NUL-terminated string and a buffer of the stated length.
    let len = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(len >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buf.truncate(len as usize);
    buf
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// The usual setup of a mount test

/// What most mount tests start from: a fresh working directory, a repository built in it
/// and served over HTTP, and the mount point `mnt` in it (not created), in that order.
pub type Served<R> = (tempfile::TempDir, R, Server, PathBuf);

/// [`build_repo`]'s repository, served.
pub fn serve_test_repo() -> Served<TestRepo> {
    let work = tempfile::tempdir().unwrap();
    let repo = build_repo(work.path());
    let server = Server::start(&[(FQRN, &repo.srv)]);
    let mnt = work.path().join("mnt");
    (work, repo, server, mnt)
}

/// [`mount_command`] for [`FQRN`] served by `server`, verified with `pubkey`, with its cache
/// in `work/cache`.
pub fn mount_command_in(server: &Server, pubkey: &Path, work: &Path, mnt: &Path) -> Command {
    mount_command(server, FQRN, pubkey, &work.join("cache"), mnt)
}

/// A [`FlatRepo`] of `files` (catalog TTL 240 s), served.
pub fn serve_flat_repo(files: &[(String, Vec<u8>)]) -> Served<FlatRepo> {
    let work = tempfile::tempdir().unwrap();
    let repo = FlatRepo::build(work.path(), files, 240);
    let server = Server::start(&[(FQRN, &repo.srv)]);
    let mnt = work.path().join("mnt");
    (work, repo, server, mnt)
}

// ---------------------------------------------------------------------------------------
// A repository built with the catalog crate

pub struct TestRepo {
    pub srv: PathBuf,
    pub pubkey: PathBuf,
    pub wrong_pubkey: PathBuf,
    /// Object path (`data/..`) of `/hello.txt`.
    pub hello_object: String,
    /// Master key (signs whitelists).
    pub master: catalog::RsaPrivateKey,
    /// Certificate key (signs manifests) and its certificate.
    pub cert_key: catalog::RsaPrivateKey,
    pub cert: Certificate,
    /// The published manifest.
    pub manifest: Manifest,
}

pub fn props() -> CatalogProperties {
    CatalogProperties {
        revision: 1,
        last_modified: MTIME as u64,
        ttl: Some(240),
        previous_revision: None,
    }
}

pub fn file(store: &LocalStore, name: &str, perm: u32, uid: u32, gid: u32, raw: &[u8]) -> Entry {
    let hash = store.put_raw(raw, Suffix::None).unwrap();
    Entry::regular(name, perm, uid, gid, MTIME, raw.len() as u64, hash)
}

/// Stores `body` in `store` as chunks of `chunk` bytes; the regular file `name` (0644,
/// owner 0:0, [`MTIME`]) made of them, as a chunked catalog entry (no hash of its own).
pub fn chunked_file(store: &LocalStore, name: &str, body: &[u8], chunk: usize) -> Entry {
    let mut chunks = Vec::new();
    for (i, piece) in body.chunks(chunk).enumerate() {
        let hash = store.put_raw(piece, Suffix::Partial).unwrap();
        chunks.push(catalog::Chunk {
            offset: (i * chunk) as u64,
            size: piece.len() as u64,
            hash,
        });
    }
    let mut entry = Entry::regular(name, 0o644, 0, 0, MTIME, body.len() as u64, chunks[0].hash);
    entry.hash = None;
    entry.chunks = chunks;
    entry
}

pub fn dir(name: &str) -> Entry {
    Entry::directory(name, 0o755, 0, 0, MTIME)
}

/// Stores catalog `db` (uncompressed SQLite) as a `C` object; returns hash and size.
pub fn store_catalog(store: &LocalStore, db: &Path) -> (ContentHash, u64) {
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
pub fn build_repo(root: &Path) -> TestRepo {
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

    let keys = make_keys(&store, root);
    let manifest = publish(&store, &keys, root_hash, root_size, 1);
    let Keys {
        master,
        cert_key,
        cert,
        pubkey,
        wrong_pubkey,
        ..
    } = keys;
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
        master,
        cert_key,
        cert,
        manifest,
    }
}

/// Signing material of a test repository.
pub struct Keys {
    pub master: catalog::RsaPrivateKey,
    pub cert_key: catalog::RsaPrivateKey,
    pub cert: Certificate,
    pub cert_hash: ContentHash,
    /// Master public key file.
    pub pubkey: PathBuf,
    /// A public key file of an unrelated key.
    pub wrong_pubkey: PathBuf,
}

/// Generates master and certificate keys, stores the certificate object, writes a whitelist
/// valid for 30 days and the public key files under `root`.
pub fn make_keys(store: &LocalStore, root: &Path) -> Keys {
    let master = catalog::keys::generate_key().unwrap();
    let cert_key = catalog::keys::generate_key().unwrap();
    let other = catalog::keys::generate_key().unwrap();
    let cert =
        Certificate::self_signed(&cert_key, &format!("{FQRN} CernVM-FS Release Managers")).unwrap();
    let cert_hash = store
        .put_raw(cert.to_pem().as_bytes(), Suffix::Certificate)
        .unwrap();
    let whitelist = Whitelist::new(FQRN, &cert, unix_now() - 3600, 30 * 24 * 3600);
    store
        .write_file_atomic(".cvmfswhitelist", &whitelist.sign(&master).unwrap())
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
    Keys {
        master,
        cert_key,
        cert,
        cert_hash,
        pubkey,
        wrong_pubkey,
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs and writes `.cvmfspublished` for root catalog `root_hash` at `revision`.
pub fn publish(
    store: &LocalStore,
    keys: &Keys,
    root_hash: ContentHash,
    root_size: u64,
    revision: u64,
) -> Manifest {
    publish_manifest(
        store,
        keys,
        manifest_for(keys, root_hash, root_size, revision),
    )
}

/// The manifest of root catalog `root_hash` at `revision`, published now, no history.
pub fn manifest_for(
    keys: &Keys,
    root_hash: ContentHash,
    root_size: u64,
    revision: u64,
) -> Manifest {
    Manifest {
        catalog_hash: root_hash,
        catalog_size: root_size,
        ttl: 240,
        revision,
        garbage_collectable: false,
        alternative_paths: false,
        fqrn: FQRN.into(),
        certificate: keys.cert_hash,
        history: None,
        timestamp: unix_now(),
        meta_info: None,
        reflog: None,
    }
}

/// Signs `manifest` with the certificate key and writes it as `.cvmfspublished`.
pub fn publish_manifest(store: &LocalStore, keys: &Keys, manifest: Manifest) -> Manifest {
    store
        .write_file_atomic(".cvmfspublished", &manifest.sign(&keys.cert_key).unwrap())
        .unwrap();
    manifest
}

/// Writes a root catalog (no nested catalogs) holding `files` (`/a/b` paths; parent
/// directories are created) at `revision` with catalog TTL `ttl`, storing every object in
/// `store`. Returns the catalog's hash and size.
pub fn write_flat_catalog(
    store: &LocalStore,
    scratch: &Path,
    files: &[(String, Vec<u8>)],
    revision: u64,
    ttl: u64,
) -> (ContentHash, u64) {
    write_flat_catalog_with_modes(store, scratch, files, |_| 0o644, revision, ttl)
}

/// [`write_flat_catalog`] with the permission bits of each file given by `mode` (of its
/// path), e.g. 0755 for an executable.
pub fn write_flat_catalog_with_modes(
    store: &LocalStore,
    scratch: &Path,
    files: &[(String, Vec<u8>)],
    mode: impl Fn(&str) -> u32,
    revision: u64,
    ttl: u64,
) -> (ContentHash, u64) {
    write_flat_catalog_with_links(store, scratch, files, &[], mode, |_| None, revision, ttl)
}

/// [`write_flat_catalog_with_modes`] with symbolic links `links` too (`/a/b` path,
/// target), and the files for which `chunk` gives a size chunked in pieces of that size.
#[allow(clippy::too_many_arguments)]
pub fn write_flat_catalog_with_links(
    store: &LocalStore,
    scratch: &Path,
    files: &[(String, Vec<u8>)],
    links: &[(&str, &str)],
    mode: impl Fn(&str) -> u32,
    chunk: impl Fn(&str) -> Option<usize>,
    revision: u64,
    ttl: u64,
) -> (ContentHash, u64) {
    let mut dirs = std::collections::BTreeSet::new();
    let paths = files
        .iter()
        .map(|(path, _)| path.as_str())
        .chain(links.iter().map(|(path, _)| *path));
    for path in paths {
        let mut p = catalog::parent_path(path);
        while !p.is_empty() {
            dirs.insert(p.to_string());
            p = catalog::parent_path(p);
        }
    }
    std::fs::create_dir_all(scratch).unwrap();
    let db = scratch.join(format!("root-{revision}.db"));
    let _ = std::fs::remove_file(&db);
    let mut w = CatalogWriter::create(&db, "").unwrap();
    w.add("", &dir(""), Transition::None).unwrap();
    for d in &dirs {
        w.add(d, &dir(catalog::path_hash::file_name(d)), Transition::None)
            .unwrap();
    }
    for (path, body) in files {
        let name = catalog::path_hash::file_name(path);
        let entry = match chunk(path) {
            Some(size) => {
                let mut entry = chunked_file(store, name, body, size);
                entry.mode = (entry.mode & !0o7777) | mode(path);
                entry
            }
            None => file(store, name, mode(path), 0, 0, body),
        };
        w.add(path, &entry, Transition::None).unwrap();
    }
    for (path, target) in links {
        let name = catalog::path_hash::file_name(path);
        w.add(
            path,
            &Entry::symlink(name, target, 0, 0, 0),
            Transition::None,
        )
        .unwrap();
    }
    w.finish(&CatalogProperties {
        revision,
        last_modified: unix_now(),
        ttl: Some(ttl),
        previous_revision: None,
    })
    .unwrap();
    store_catalog(store, &db)
}

/// A repository of `files` only (see [`write_flat_catalog`]), revision 1. Every publish
/// also updates the history database (docs/format.md §9.5: `trunk`, `trunk-previous`, `generic-…`).
pub struct FlatRepo {
    pub srv: PathBuf,
    pub store: LocalStore,
    pub keys: Keys,
    pub scratch: PathBuf,
    /// The history object of the last publish.
    pub history: Mutex<Option<ContentHash>>,
}

impl FlatRepo {
    pub fn build(root: &Path, files: &[(String, Vec<u8>)], ttl: u64) -> FlatRepo {
        let srv = root.join("srv");
        let store = LocalStore::open(&srv).unwrap();
        let keys = make_keys(&store, root);
        let scratch = root.join("build");
        let repo = FlatRepo {
            srv,
            store,
            keys,
            scratch,
            history: Mutex::new(None),
        };
        repo.publish(files, 1, ttl);
        repo
    }

    /// Publishes `files` as `revision`, now.
    pub fn publish(&self, files: &[(String, Vec<u8>)], revision: u64, ttl: u64) -> Manifest {
        self.publish_at(files, revision, ttl, unix_now())
    }

    /// Publishes `files` as `revision` with manifest timestamp `timestamp` (Unix seconds).
    pub fn publish_at(
        &self,
        files: &[(String, Vec<u8>)],
        revision: u64,
        ttl: u64,
        timestamp: u64,
    ) -> Manifest {
        let (hash, size) = write_flat_catalog(&self.store, &self.scratch, files, revision, ttl);
        self.publish_root(hash, size, revision, timestamp)
    }

    /// Publishes `files` (permission bits from `mode`) and symbolic links `links` as
    /// `revision`, now; the files for which `chunk` gives a size are chunked in pieces of
    /// that size.
    pub fn publish_with_links(
        &self,
        files: &[(String, Vec<u8>)],
        links: &[(&str, &str)],
        mode: impl Fn(&str) -> u32,
        chunk: impl Fn(&str) -> Option<usize>,
        revision: u64,
        ttl: u64,
    ) -> Manifest {
        let (hash, size) = write_flat_catalog_with_links(
            &self.store,
            &self.scratch,
            files,
            links,
            mode,
            chunk,
            revision,
            ttl,
        );
        self.publish_root(hash, size, revision, unix_now())
    }

    /// Publishes the stored root catalog `hash` (`size` bytes uncompressed) as `revision`
    /// with manifest timestamp `timestamp`, updating the history database.
    pub fn publish_root(
        &self,
        hash: ContentHash,
        size: u64,
        revision: u64,
        timestamp: u64,
    ) -> Manifest {
        let mut history = self.history.lock().unwrap();
        let h = catalog::update_history(
            &self.store,
            &self.scratch,
            FQRN,
            history.as_ref(),
            &catalog::Publication {
                root_catalog: hash,
                catalog_size: size,
                revision,
                timestamp,
            },
        )
        .unwrap();
        *history = Some(h);
        publish_manifest(
            &self.store,
            &self.keys,
            Manifest {
                timestamp,
                history: Some(h),
                ..manifest_for(&self.keys, hash, size, revision)
            },
        )
    }

    /// The tags of the current history database (docs/format.md §9.5), newest revision first.
    pub fn tags(&self) -> Vec<catalog::Tag> {
        let h = self
            .history
            .lock()
            .unwrap()
            .expect("published with history");
        let stored = self.store.get(&h, Suffix::History).unwrap();
        let db = self.scratch.join("history-read.db");
        std::fs::write(&db, catalog::decompress(&stored, 1 << 30).unwrap()).unwrap();
        catalog::HistoryReader::open(&db).unwrap().tags().unwrap()
    }
}

/// The repository path (`data/XX/…`) of the unchunked object holding `body`.
pub fn object_of(store: &catalog::LocalStore, body: &[u8]) -> String {
    store
        .put_raw(body, catalog::Suffix::None)
        .unwrap()
        .object_path(catalog::Suffix::None)
}
