//! `strata-snapshotter mount` through HTTP proxies (docs/format.md §8.8): a real Squid (Debian's
//! `squid`, started here on 127.0.0.1 with its own configuration, cache and logs in a temp
//! dir), and a tiny forwarding proxy written here that can fail (502, garbage) or tamper
//! with object bytes.
//!
//! These tests need root, `/dev/fuse` and `/usr/sbin/squid`; they fail (not skip) without.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tests::net::free_port;
use tests::process::{Service, Spawn};
use tests::random::pseudo_random;
use tests::wait::wait_until;

use crate::support::*;

/// Files of the test repository and their contents.
const FILES: &[(&str, &[u8])] = &[
    ("hello.txt", b"hello strata\n"),
    ("hard1", b"linked\n"),
    ("layers/lower/kept", b"kept\n"),
    ("layers/lower/gone", b"to be deleted\n"),
    ("layers/lower/od/old", b"old\n"),
    ("layers/upper/od/new", b"new\n"),
];

fn read_all_files(mnt: &Path) {
    for (path, body) in FILES {
        let got = std::fs::read(mnt.join(path))
            .unwrap_or_else(|e| panic!("reading {path} through the mount: {e}"));
        assert_eq!(&got, body, "{path}");
    }
}

/// Quick retries so that failing proxies do not slow the tests down.
fn with_proxy(mut cmd: Command, chain: &str) -> Command {
    cmd.args([
        "--proxy",
        chain,
        "--backoff-init",
        "10ms",
        "--backoff-max",
        "50ms",
        "--timeout",
        "5s",
    ]);
    cmd
}

// ---------------------------------------------------------------------------------------
// A real Squid

/// Squid in the foreground, stopped (SIGTERM to its pid, SIGKILL after 10 s) on drop.
struct Squid {
    service: Service,
    dir: tempfile::TempDir,
    port: u16,
}

impl Squid {
    /// `squid -z` then `squid -N` in the foreground, on 127.0.0.1:<free port>.
    fn start() -> Squid {
        assert!(
            Path::new("/usr/sbin/squid").exists(),
            "these tests need Debian's squid"
        );
        let dir = tempfile::tempdir().unwrap();
        let user = nix::unistd::User::from_name("proxy")
            .unwrap()
            .expect("user proxy (Debian's squid package creates it)");
        nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        let port = free_port().unwrap();
        let d = dir.path().display();
        let conf = dir.path().join("squid.conf");
        std::fs::write(
            &conf,
            format!(
                "http_port 127.0.0.1:{port}\n\
                 pid_filename {d}/squid.pid\n\
                 cache_effective_user proxy\n\
                 cache_dir ufs {d}/cache 100 4 16\n\
                 coredump_dir {d}\n\
                 access_log stdio:{d}/access.log\n\
                 cache_log {d}/cache.log\n\
                 cache_store_log none\n\
                 logfile_rotate 0\n\
                 netdb_filename none\n\
                 http_access allow localhost\n\
                 http_access deny all\n\
                 minimum_expiry_time 0\n\
                 maximum_object_size 1024 MB\n\
                 cache_mem 32 MB\n\
                 shutdown_lifetime 1 seconds\n"
            ),
        )
        .unwrap();
        let status = Command::new("/usr/sbin/squid")
            .args(["-z", "-N", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "squid -z failed");
        let mut command = Command::new("/usr/sbin/squid");
        command.args(["-N", "-f"]).arg(&conf);
        let how = Spawn {
            fresh_log: true,
            pid_only: true,
        };
        let service = Service::spawn_with("squid", command, &dir.path().join("squid.stderr"), how)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut squid = Squid { service, dir, port };
        let listening = || Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        let what = format!("squid on 127.0.0.1:{port}");
        if let Err(e) = squid
            .service
            .wait_ready(&what, Duration::from_secs(30), listening)
        {
            panic!("{e}: {}", squid.cache_log());
        }
        squid
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    fn cache_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cache.log")).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// A test proxy

const FORWARD: u8 = 0;
const TAMPER: u8 = 1;
const BAD_GATEWAY: u8 = 2;
const GARBAGE: u8 = 3;

/// A forwarding HTTP proxy on 127.0.0.1 whose behaviour can be switched at run time:
/// forward, forward but flip a byte of every `data/` body, answer 502 with a
/// `Proxy-Status: …; error=…` header, or answer garbage.
struct TestProxy {
    addr: String,
    mode: Arc<AtomicU8>,
    /// Request heads received.
    requests: Arc<Mutex<Vec<String>>>,
    runtime: tokio::runtime::Runtime,
}

impl TestProxy {
    fn start(mode: u8) -> TestProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mode = Arc::new(AtomicU8::new(mode));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (m, r) = (mode.clone(), requests.clone());
        runtime.spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(handle(sock, m.load(Ordering::SeqCst), r.clone()));
            }
        });
        TestProxy {
            addr,
            mode,
            requests,
            runtime,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// The proxy dies: its connections, in-flight requests included, are dropped and its
    /// port refuses new ones.
    fn kill(self) {
        self.runtime.shutdown_background();
    }
}

async fn handle(mut sock: tokio::net::TcpStream, mode: u8, requests: Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    requests.lock().unwrap().push(head.clone());
    match mode {
        BAD_GATEWAY => {
            let _ = sock
                .write_all(
                    b"HTTP/1.1 502 Bad Gateway\r\nProxy-Status: strata-test; \
                      error=destination_unavailable\r\nContent-Length: 0\r\n\
                      Connection: close\r\n\r\n",
                )
                .await;
            return;
        }
        GARBAGE => {
            let _ = sock
                .write_all(b"\x00\x17\xfe not HTTP at all\r\n\r\n")
                .await;
            return;
        }
        _ => {}
    }
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let target = request_line.split(' ').nth(1).unwrap_or_default();
    let rest = target.strip_prefix("http://").unwrap_or(target);
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut upstream_req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for line in lines.take_while(|l| !l.is_empty()) {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !matches!(name.as_str(), "host" | "connection" | "proxy-connection") {
            upstream_req.push_str(line);
            upstream_req.push_str("\r\n");
        }
    }
    upstream_req.push_str("\r\n");
    let Ok(mut upstream) = tokio::net::TcpStream::connect(host).await else {
        let _ = sock
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nX-Squid-Error: ERR_CONNECT_FAIL 111\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    };
    if upstream.write_all(upstream_req.as_bytes()).await.is_err() {
        return;
    }
    let mut response = Vec::new();
    if upstream.read_to_end(&mut response).await.is_err() {
        return;
    }
    if mode == TAMPER
        && path.contains("/data/")
        && let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n")
    {
        let body = end + 4;
        if response.len() > body {
            let mid = body + (response.len() - body) / 2;
            response[mid] ^= 0x55;
        }
    }
    let _ = sock.write_all(&response).await;
    let _ = sock.shutdown().await;
}

/// The cache file of the object whose stored bytes are at `object_path` (`data/XX/…`).
fn cache_file(cache: &Path, object_path: &str) -> PathBuf {
    let rest = object_path.trim_start_matches("data/");
    cache.join(rest)
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn a_second_mount_with_an_empty_cache_is_served_by_squid() {
    require_root_and_fuse();
    let (work, repo, server, mnt) = serve_test_repo();
    let squid = Squid::start();

    let first = mount_command(&server, FQRN, &repo.pubkey, &work.path().join("c1"), &mnt);
    let mut m = Mounted::start(
        with_proxy(first, &squid.url()),
        &mnt,
        &work.path().join("m1.log"),
    );
    read_all_files(&mnt);
    m.stop();
    let origin_data = server
        .data_requests
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        origin_data >= FILES.len(),
        "first mount fetched {origin_data} objects"
    );

    let second = mount_command(&server, FQRN, &repo.pubkey, &work.path().join("c2"), &mnt);
    let mut m = Mounted::start(
        with_proxy(second, &squid.url()),
        &mnt,
        &work.path().join("m2.log"),
    );
    read_all_files(&mnt);
    m.stop();

    assert_eq!(
        server
            .data_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        origin_data,
        "the second mount reached the origin: {:?}",
        server.paths.lock().unwrap()
    );
    // Squid logs each request; the hello object must be a hit the second time.
    let hello = repo.hello_object.clone();
    let hit = || {
        squid
            .access_log()
            .lines()
            .filter(|l| l.contains(&hello))
            .any(|l| l.contains("TCP_HIT/200") || l.contains("TCP_MEM_HIT/200"))
    };
    let what = format!("a cache hit for {hello} in Squid's access log");
    wait_until(
        &what,
        Duration::from_secs(10),
        Duration::from_millis(200),
        hit,
    )
    .unwrap_or_else(|e| panic!("{e}:\n{}", squid.access_log()));
    let log = squid.access_log();
    let data_hits = log
        .lines()
        .filter(|l| l.contains("/data/") && l.contains("_HIT/200"))
        .count();
    assert!(data_hits >= FILES.len(), "only {data_hits} hits:\n{log}");
    assert_eq!(
        server
            .range_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a request carried a Range header"
    );
}

#[test]
fn reads_fail_over_from_a_dead_502_or_garbage_proxy() {
    require_root_and_fuse();
    let (work, repo, server, mnt) = serve_test_repo();
    let good = TestProxy::start(FORWARD);
    for (name, mode) in [
        ("dead", None),
        ("502", Some(BAD_GATEWAY)),
        ("garbage", Some(GARBAGE)),
    ] {
        let bad = mode.map(TestProxy::start);
        let bad_url = match &bad {
            Some(p) => p.url(),
            None => format!("http://127.0.0.1:{}", free_port().unwrap()),
        };
        let chain = format!("{bad_url};{}", good.url());
        let cmd = mount_command(
            &server,
            FQRN,
            &repo.pubkey,
            &work.path().join(format!("cache-{name}")),
            &mnt,
        );
        let log = work.path().join(format!("{name}.log"));
        let mut m = Mounted::start(with_proxy(cmd, &chain), &mnt, &log);
        read_all_files(&mnt);
        let text = m.log_text();
        m.stop();
        assert!(
            text.lines()
                .any(|l| l.contains("proxy failed") && l.contains(&bad_url)),
            "{name}: the log does not name the failed proxy {bad_url}:\n{text}"
        );
        if let Some(p) = bad {
            assert!(!p.requests.lock().unwrap().is_empty());
        }
    }
    assert!(!good.requests.lock().unwrap().is_empty());
}

#[test]
fn read_ahead_fails_over_from_a_proxy_that_dies_under_it() {
    require_root_and_fuse();
    let work = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..30u64)
        .map(|i| (format!("/lib/f{i:02}"), pseudo_random(3000, i + 300)))
        .collect();
    let repo = FlatRepo::build(work.path(), &files, 240);
    let server = Server::start(&[(FQRN, &repo.srv)]);
    // Every file but the first waits on the server until released: read-ahead of them is
    // in flight through the first proxy when it dies.
    let ahead: Vec<String> = files[1..]
        .iter()
        .map(|(_, body)| object_of(&repo.store, body))
        .collect();
    server.held.lock().unwrap().extend(ahead.iter().cloned());
    let first = TestProxy::start(FORWARD);
    let second = TestProxy::start(FORWARD);
    let first_url = first.url();
    let mnt = work.path().join("mnt");
    let cache = work.path().join("cache");
    let cmd = mount_command(&server, FQRN, &repo.keys.pubkey, &cache, &mnt);
    let chain = format!("{first_url};{}", second.url());
    let log = work.path().join("m.log");
    let mut m = Mounted::start(with_proxy(cmd, &chain), &mnt, &log);
    assert_eq!(std::fs::read(mnt.join("lib/f00")).unwrap(), files[0].1);
    server.wait_held(8, "read-ahead to start", Duration::from_secs(20));
    assert!(
        second.requests.lock().unwrap().is_empty(),
        "the second proxy was used while the first worked"
    );
    first.kill();
    server.held.lock().unwrap().clear();
    // Every object read ahead arrives through the second proxy.
    let through_second = |object: &str| {
        second
            .requests
            .lock()
            .unwrap()
            .iter()
            .any(|head| head.contains(object))
    };
    m.wait_until(
        "read-ahead to fail over",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || ahead.iter().all(|o| through_second(o)),
    );
    // Give the last downloads time to be committed, then read everything: from the cache.
    std::thread::sleep(Duration::from_millis(500));
    let before = second.requests.lock().unwrap().len();
    for (path, body) in &files {
        assert_eq!(
            &std::fs::read(mnt.join(&path[1..])).unwrap(),
            body,
            "{path}"
        );
    }
    assert_eq!(
        second.requests.lock().unwrap().len(),
        before,
        "files read ahead were fetched again"
    );
    let text = m.log_text();
    m.stop();
    assert!(
        text.lines()
            .any(|l| l.contains("proxy failed") && l.contains(&first_url)),
        "the log does not name the dead proxy {first_url}:\n{text}"
    );
    assert_eq!(server.range_requests.load(Ordering::SeqCst), 0);
}

#[test]
fn tampered_objects_give_eio_are_not_cached_and_recover() {
    require_root_and_fuse();
    let (work, repo, server, mnt) = serve_test_repo();
    let proxy = TestProxy::start(FORWARD);
    let cache = work.path().join("cache");
    let mut cmd = mount_command(&server, FQRN, &repo.pubkey, &cache, &mnt);
    // Demand reads only: read-ahead would fetch hello.txt before the tampering starts.
    cmd.arg("--no-read-ahead");
    let mut m = Mounted::start(
        with_proxy(cmd, &proxy.url()),
        &mnt,
        &work.path().join("m.log"),
    );
    // The catalogs are loaded; from now on every object body is corrupted.
    assert!(mnt.join("hello.txt").exists());
    proxy.set(TAMPER);
    let before = proxy.requests.lock().unwrap().len();
    let err = std::fs::read(mnt.join("hello.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let cached = cache_file(&cache, &repo.hello_object);
    assert!(!cached.exists(), "a corrupted object entered the cache");
    let txn_empty = std::fs::read_dir(cache.join("txn"))
        .map(|d| d.count() == 0)
        .unwrap_or(true);
    assert!(txn_empty, "temporaries left in txn/");
    // Every fetch of the object is two attempts: the normal one and one retry with
    // no-cache headers. (The kernel may send a read-ahead and then the read itself, each
    // reaching the mount process, so there may be two fetches.)
    let heads: Vec<String> = proxy.requests.lock().unwrap()[before..].to_vec();
    let for_hello: Vec<&String> = heads
        .iter()
        .filter(|h| h.contains(&repo.hello_object))
        .collect();
    assert!(
        !for_hello.is_empty() && for_hello.len().is_multiple_of(2),
        "{heads:?}"
    );
    for pair in for_hello.chunks(2) {
        let retry = pair[1].to_ascii_lowercase();
        assert!(retry.contains("pragma: no-cache") && retry.contains("cache-control: no-cache"));
        assert!(!pair[0].to_ascii_lowercase().contains("no-cache"));
    }

    // A good path again: the same read succeeds and is cached.
    proxy.set(FORWARD);
    assert_eq!(
        std::fs::read(mnt.join("hello.txt")).unwrap(),
        b"hello strata\n"
    );
    assert!(cached.exists());
    let text = m.log_text();
    m.stop();
    assert!(text.contains("failed verification"), "{text}");
}
