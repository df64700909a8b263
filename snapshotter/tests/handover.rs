//! The mount's FUSE connections outlive its process (`mount --keeper`; the `keeper` and
//! `fuse::handover` module docs), without containerd: what a successor must keep — the
//! revision a live update switched to, inode numbers, files held open in an earlier
//! revision, reads in flight — checked across `kill -9`s of the serving process. The same
//! under running containers: `containerd::keeper_mount_survives_kill_upgrade_and_stop_with_containers_reading`.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tests::keeper::Keeper;
use tests::mounts::is_fuse_mounted;
use tests::random::pseudo_random;
use tests::wait::wait_until;

use crate::support::*;

/// The keeper `m` runs, as [`tests::keeper`] drives it.
fn keeper_of(m: &Mounted) -> Keeper {
    let pid = m.child.as_ref().map(std::process::Child::id).unwrap_or(0);
    Keeper::new(pid, &m.log)
}

#[test]
fn a_successor_serves_the_switched_revision_with_the_same_inodes_and_open_files() {
    require_root_and_fuse();
    let old_big = pseudo_random(1 << 20, 17);
    let rev1: Vec<(String, Vec<u8>)> = vec![
        ("/a".into(), b"one\n".to_vec()),
        ("/keep".into(), b"same\n".to_vec()),
        ("/d/big".into(), old_big.clone()),
    ];
    let (work, repo, server, mnt) = serve_flat_repo(&rev1);
    let plain = work.path().join("plain");
    let mut cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    // No passthrough: reads of the held file must reach the serving process (with it,
    // the kernel reads the cache file itself and no process is asked).
    cmd.args([
        "--keeper",
        "--no-passthrough",
        "--max-ttl",
        "1s",
        "--backoff-init",
        "10ms",
    ])
    .arg("--plain-mountpoint")
    .arg(&plain);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    m.wait_mounted(&plain, Duration::from_secs(10));

    let a1 = std::fs::metadata(mnt.join("a")).unwrap().ino();
    let keep = std::fs::metadata(mnt.join("keep")).unwrap().ino();
    // Held open (in no-open mode or not) across a revision switch and two takeovers.
    let held = std::fs::File::open(mnt.join("d/big")).unwrap();
    let mut head = vec![0u8; 4096];
    held.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, old_big[..4096]);

    // A takeover in revision 1: nothing changes for readers.
    let keeper = keeper_of(&m);
    tests::ok(keeper.kill_worker());
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"one\n");
    assert_eq!(std::fs::metadata(mnt.join("a")).unwrap().ino(), a1);

    // Revision 2, switched to live; then the serving process dies.
    let new_big = pseudo_random(1 << 20, 18);
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
        Duration::from_millis(100),
        || mnt.join("new").exists(),
    );
    let a2 = std::fs::metadata(mnt.join("a")).unwrap().ino();
    let new = std::fs::metadata(mnt.join("new")).unwrap().ino();
    assert_ne!(a2, a1, "a changed file gets a new number");
    tests::ok(keeper.kill_worker());

    // The successor serves revision 2 (not the one it would boot), with its numbers.
    let text = m.log_text();
    let last = text
        .rsplit("took over the FUSE connection")
        .next()
        .unwrap_or("");
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("took over the FUSE connection"))
        .unwrap_or("");
    assert!(line.contains("revision=2"), "{line}\n{last}");
    for root in [&mnt, &plain] {
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"two!\n");
        assert_eq!(std::fs::read(root.join("new")).unwrap(), b"new file\n");
        assert_eq!(names(root), vec!["a", "d", "keep", "new"]);
    }
    assert_eq!(std::fs::metadata(mnt.join("a")).unwrap().ino(), a2);
    assert_eq!(std::fs::metadata(mnt.join("new")).unwrap().ino(), new);
    assert_eq!(std::fs::metadata(mnt.join("keep")).unwrap().ino(), keep);
    // The file opened in revision 1, by a process two deaths ago, still reads revision 1.
    let mut rest = vec![0u8; old_big.len() - 4096];
    held.read_exact_at(&mut rest, 4096).unwrap();
    assert!(rest == old_big[4096..], "the open file changed revision");
    drop(held);
    assert!(std::fs::read(mnt.join("d/big")).unwrap() == new_big);

    // SIGTERM to the keeper unmounts both and ends it cleanly.
    m.stop();
    assert!(!is_fuse_mounted(&plain).unwrap());
}

/// Files per reader of the keeper test (a reader reads about eight a second).
const KEEPER_FILES: usize = 400;

/// A reader thread of the keeper test: reads `<mount>/<dir>/f0, f1, …` (each never read
/// before), checks each, and runs `<mount>/bin/true`, every 0.1 s until `stop`.
struct HostReader {
    /// Unix times of the successful rounds, in order.
    oks: std::sync::Mutex<Vec<f64>>,
    /// What failed.
    errors: std::sync::Mutex<Vec<String>>,
    stop: std::sync::atomic::AtomicBool,
}

impl HostReader {
    fn start(mount: &Path, dir: &'static str) -> (Arc<HostReader>, std::thread::JoinHandle<()>) {
        let reader = Arc::new(HostReader {
            oks: Default::default(),
            errors: Default::default(),
            stop: Default::default(),
        });
        let (shared, mount) = (reader.clone(), mount.to_owned());
        let handle = std::thread::spawn(move || {
            for n in 0..KEEPER_FILES {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let path = mount.join(format!("{dir}/f{n}"));
                let mut failed = Vec::new();
                match std::fs::read(&path) {
                    Ok(body) if body == format!("{dir} {n}\n").as_bytes() => {}
                    Ok(body) => failed.push(format!("{}: read {body:?}", path.display())),
                    Err(e) => failed.push(format!("{}: {e}", path.display())),
                }
                let exe = mount.join("bin/true");
                match Command::new(&exe).status() {
                    Ok(status) if status.success() => {}
                    other => failed.push(format!("{}: {other:?}", exe.display())),
                }
                let now = tests::keeper::unix_seconds(std::time::SystemTime::now());
                if failed.is_empty() {
                    shared.oks.lock().unwrap().push(now);
                } else {
                    let mut errors = shared.errors.lock().unwrap();
                    errors.extend(failed.into_iter().map(|e| format!("{now:.3} {e}")));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            shared
                .errors
                .lock()
                .unwrap()
                .push(format!("read all {KEEPER_FILES} files of {dir}"));
        });
        (reader, handle)
    }

    fn oks_after(&self, since: f64) -> usize {
        self.oks
            .lock()
            .unwrap()
            .iter()
            .filter(|&&t| t > since)
            .count()
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

/// `st_ino` of `root/<name>` for each name.
fn inodes(root: &Path, names: &[String]) -> Vec<u64> {
    names
        .iter()
        .map(|n| {
            let p = root.join(n);
            std::fs::metadata(&p)
                .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
                .ino()
        })
        .collect()
}

/// Drops the kernel's unused dentries and inodes (`vm.drop_caches = 2`), so that the next
/// lookups reach the mount process.
fn drop_dentries_and_inodes() {
    std::fs::write("/proc/sys/vm/drop_caches", "2")
        .unwrap_or_else(|e| panic!("write /proc/sys/vm/drop_caches: {e}"));
}

/// `mount --keeper --plain-mountpoint` (issue #16) without containerd: host threads read
/// files never read before through both mount points and run a binary from each while
/// the worker is killed five times; no read fails and reading goes on after each
/// takeover; a read in flight at a kill (its download held by the server), through either
/// mount, is answered by the new worker; inode numbers stay (paths looked up before, looked up first by the new
/// worker, and looked up again once the kernel forgot them); a file held open across the
/// takeovers still reads. SIGTERM to the keeper unmounts both and it exits 0, its worker
/// gone too.
#[test]
fn a_keeper_mount_survives_killed_workers_with_the_same_inodes_and_unmounts_on_sigterm() {
    use std::os::unix::process::CommandExt;
    require_root_and_fuse();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for dir in ["main", "plain"] {
        for n in 0..KEEPER_FILES {
            files.push((format!("/{dir}/f{n}"), format!("{dir} {n}\n").into_bytes()));
        }
    }
    let probes: Vec<String> = (0..10)
        .flat_map(|n| [format!("ino/x{n}"), format!("ino/y{n}")])
        .collect();
    for p in &probes {
        files.push((format!("/{p}"), format!("{p}\n").into_bytes()));
    }
    files.push(("/held".into(), b"held open\n".to_vec()));
    // Read while the worker is killed with their download held (a request in flight), one
    // through each mount; each in a directory of its own (no read-ahead of the other).
    let inflight: Vec<(String, Vec<u8>)> = ["main", "plain"]
        .iter()
        .map(|m| {
            (
                format!("/inflight-{m}/f"),
                format!("in flight on {m}\n").into_bytes(),
            )
        })
        .collect();
    files.extend(inflight.iter().cloned());
    files.push((
        "/bin/true".into(),
        std::fs::read("/bin/true").expect("read /bin/true"),
    ));
    let (work, repo, server, mnt) = serve_flat_repo(&files);
    // Revision 2: the same files, `bin/true` executable.
    let (hash, size) = write_flat_catalog_with_modes(
        &repo.store,
        &repo.scratch,
        &files,
        |p| if p == "/bin/true" { 0o755 } else { 0o644 },
        2,
        240,
    );
    repo.publish_root(hash, size, 2, unix_now());
    let inflight_objects: Vec<String> = inflight
        .iter()
        .map(|(_, body)| object_of(&repo.store, body))
        .collect();
    server
        .held
        .lock()
        .unwrap()
        .extend(inflight_objects.iter().cloned());

    let plain = work.path().join("plain");
    let log = work.path().join("mount.log");
    let mut cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    cmd.arg("--plain-mountpoint")
        .arg(&plain)
        .arg("--keeper")
        .process_group(0);
    let mut m = Mounted::start(cmd, &mnt, &log);
    let keeper = tests::keeper::Keeper::new(m.child.as_ref().expect("started").id(), &log);
    // Whatever happens, no worker and no mount is left behind.
    struct Cleanup(tests::keeper::Keeper, Vec<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let pid = |p: u32| nix::unistd::Pid::from_raw(p as i32);
            for child in tests::keeper::children(self.0.pid()).unwrap_or_default() {
                let _ = nix::sys::signal::kill(pid(child), nix::sys::signal::Signal::SIGKILL);
            }
            let _ = nix::sys::signal::killpg(pid(self.0.pid()), nix::sys::signal::Signal::SIGKILL);
            for dir in &self.1 {
                let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    let _cleanup = Cleanup(keeper.clone(), vec![mnt.clone(), plain.clone()]);
    m.wait_mounted(&plain, Duration::from_secs(30));
    let first = tests::ok(keeper.wait_worker(Duration::from_secs(30)));
    assert_ne!(first, keeper.pid());
    assert_eq!(
        std::fs::read(mnt.join("bin/true")).unwrap(),
        std::fs::read("/bin/true").unwrap(),
        "revision 2 is mounted"
    );

    // Inodes: x<n> looked up on both mounts, y<n> on the plain one only (the new worker
    // answers their first lookups on the main mount).
    let (xs, ys): (Vec<String>, Vec<String>) =
        probes.iter().cloned().partition(|p| p.contains("/x"));
    let x_main = inodes(&mnt, &xs);
    assert_eq!(inodes(&plain, &xs), x_main, "same inodes on both mounts");
    let y_plain = inodes(&plain, &ys);
    let held = std::fs::File::open(mnt.join("held")).expect("open held");
    let read_held = |when: &str| {
        nix::fcntl::posix_fadvise(
            &held,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .expect("posix_fadvise");
        let mut buf = [0u8; 64];
        let n = std::os::unix::fs::FileExt::read_at(&held, &mut buf, 0)
            .unwrap_or_else(|e| panic!("read the file held open {when}: {e}\n{}", m.log_text()));
        assert_eq!(&buf[..n], b"held open\n", "{when}");
    };
    read_held("before any takeover");

    let (main_reader, main_thread) = HostReader::start(&mnt, "main");
    let (plain_reader, plain_thread) = HostReader::start(&plain, "plain");
    let readers = [("main", &main_reader), ("plain", &plain_reader)];
    let wait_reads = |since: f64, n: usize, after: &str| {
        let what = format!("{n} reads through each mount after {after}");
        m.wait_until(
            &what,
            Duration::from_secs(60),
            Duration::from_millis(50),
            || readers.iter().all(|(_, r)| r.oks_after(since) >= n),
        );
        for (name, r) in &readers {
            let errors = r.errors();
            assert!(
                errors.is_empty(),
                "{name} reader after {after}: {errors:?}\n{}",
                m.log_text()
            );
        }
    };
    wait_reads(0.0, 5, "the start");

    let mut events = Vec::new();
    for k in 1..=5 {
        // Kills 2 and 3: while a read through the main (plain) mount waits on its download.
        let in_flight = (k == 2 || k == 3).then(|| {
            let i = k - 2;
            let root = if i == 0 { &mnt } else { &plain };
            let path = root.join(inflight[i].0.trim_start_matches('/'));
            let before = server.held_requests.load(Ordering::SeqCst);
            let reader = std::thread::spawn(move || std::fs::read(path));
            server.wait_held(
                before + 1,
                "a read to wait on its download",
                Duration::from_secs(30),
            );
            (i, reader)
        });
        let event = tests::ok(keeper.kill_worker());
        if let Some((i, reader)) = in_flight {
            let object = &inflight_objects[i];
            server.held.lock().unwrap().retain(|o| o != object);
            let answered = wait_until(
                "the read in flight at the kill to be answered",
                Duration::from_secs(60),
                Duration::from_millis(20),
                || reader.is_finished(),
            );
            if let Err(e) = answered {
                panic!("{e} (kill -9 #{k})\n{}", m.log_text());
            }
            let read = reader.join().expect("in-flight reader thread");
            match read {
                Ok(body) => assert_eq!(body, inflight[i].1, "kill -9 #{k}"),
                Err(e) => panic!(
                    "the read of {} in flight at kill -9 #{k} failed: {e}\n{}",
                    inflight[i].0,
                    m.log_text()
                ),
            }
        }
        let what = format!(
            "kill -9 #{k} (worker {} -> {}, takeover after {:.2} s)",
            event.old_worker,
            event.new_worker,
            event.seconds()
        );
        eprintln!("keeper mount test: {what}");
        if k == 1 {
            assert_eq!(inodes(&mnt, &xs), x_main, "x on main after {what}");
            assert_eq!(
                inodes(&mnt, &ys),
                y_plain,
                "first lookups of y on main after {what}"
            );
            read_held(&what);
        }
        wait_reads(tests::keeper::unix_seconds(event.done), 8, &what);
        events.push(event);
    }
    // An upgrade through the worker's own SIGHUP (the containerd test sends it to the
    // keeper): the same pid takes over.
    let upgrade = tests::ok(keeper.upgrade_worker());
    let what = format!(
        "SIGHUP to worker {} (takeover after {:.2} s)",
        upgrade.old_worker,
        upgrade.seconds()
    );
    eprintln!("keeper mount test: {what}");
    wait_reads(tests::keeper::unix_seconds(upgrade.done), 8, &what);
    // Lookups again once the kernel forgot what it could: the last worker answers them.
    drop_dentries_and_inodes();
    assert_eq!(inodes(&mnt, &xs), x_main, "x on main after six takeovers");
    assert_eq!(
        inodes(&plain, &xs),
        x_main,
        "x on plain after six takeovers"
    );
    assert_eq!(inodes(&mnt, &ys), y_plain, "y on main after six takeovers");
    assert_eq!(
        inodes(&plain, &ys),
        y_plain,
        "y on plain after six takeovers"
    );
    read_held("after six takeovers");

    for (_, r) in &readers {
        r.stop.store(true, Ordering::SeqCst);
    }
    let stopped = wait_until(
        "the reader threads to finish",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || main_thread.is_finished() && plain_thread.is_finished(),
    );
    if let Err(e) = stopped {
        panic!("{e} (a read hangs)\n{}", m.log_text());
    }
    main_thread.join().expect("main reader thread");
    plain_thread.join().expect("plain reader thread");
    for (name, r) in &readers {
        let errors = r.errors();
        assert!(
            errors.is_empty(),
            "{name} reader: {errors:?}\n{}",
            m.log_text()
        );
        let oks = r.oks.lock().unwrap().clone();
        let stall = events
            .iter()
            .filter_map(|e| {
                tests::keeper::longest_gap(
                    &oks,
                    tests::keeper::unix_seconds(e.sent),
                    tests::keeper::unix_seconds(e.done),
                )
            })
            .reduce(f64::max)
            .unwrap_or_default();
        let takeover = events.iter().map(|e| e.seconds()).reduce(f64::max);
        eprintln!(
            "keeper mount test: {name} reader: {} rounds, longest stall around a kill -9 \
             {stall:.2} s (longest signal-to-takeover {:.2} s)",
            oks.len(),
            takeover.unwrap_or_default()
        );
    }
    drop(held);

    // SIGTERM to the keeper: both mounts go, it exits 0 (Mounted::stop checks the main
    // mount and the status), and its worker is gone too.
    let worker = tests::ok(keeper.worker());
    m.stop();
    assert!(
        !is_fuse_mounted(&plain).unwrap(),
        "the plain mount outlived the keeper:\n{}",
        m.log_text()
    );
    let gone = wait_until(
        "the worker to be gone after the keeper exited",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || tests::keeper::is_gone(worker),
    );
    if let Err(e) = gone {
        panic!("{e}: worker {worker}\n{}", m.log_text());
    }
}

/// FUSE passthrough (on by default where the kernel offers it) across takeovers: files
/// opened through passthrough by a dead process keep their backing, and new opens of the
/// same files — a container `exec`ing a binary its shell also runs — are answered with
/// that backing (the kernel refuses a second one for an inode with `EBUSY`, which an
/// opener sees as EIO), through both mounts and across two generations of processes.
#[test]
fn files_held_open_through_passthrough_open_again_after_takeovers() {
    require_root_and_fuse();
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("/f{i}"), pseudo_random(64 << 10, 40 + i)))
        .collect();
    let (work, repo, server, mnt) = serve_flat_repo(&files);
    let plain = work.path().join("plain");
    let mut cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    cmd.arg("--keeper").arg("--plain-mountpoint").arg(&plain);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    m.wait_mounted(&plain, Duration::from_secs(10));
    assert!(
        m.log_text()
            .contains("FUSE passthrough: the kernel reads open files from the cache directly"),
        "this test needs passthrough on (Linux >= 6.9, cache not on overlayfs):\n{}",
        m.log_text()
    );
    let keeper = keeper_of(&m);
    let read = |path: &Path, i: usize| {
        let got = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(got == files[i].1, "{} has other bytes", path.display());
    };
    // Held open through passthrough by the first process: f0 and f1 on the main mount,
    // f1 and f2 on the plain one.
    let held: Vec<std::fs::File> = [
        mnt.join("f0"),
        mnt.join("f1"),
        plain.join("f1"),
        plain.join("f2"),
    ]
    .iter()
    .map(|p| std::fs::File::open(p).unwrap())
    .collect();
    tests::ok(keeper.kill_worker());
    for (root, i) in [(&mnt, 0), (&mnt, 1), (&plain, 1), (&plain, 2), (&mnt, 3)] {
        read(&root.join(format!("f{i}")), i);
    }
    // Opened by the second process, still open when it dies too.
    let held_again = std::fs::File::open(mnt.join("f3")).unwrap();
    tests::ok(keeper.kill_worker());
    for (root, i) in [(&mnt, 0), (&mnt, 3), (&plain, 2), (&plain, 3)] {
        read(&root.join(format!("f{i}")), i);
    }
    let mut head = vec![0u8; 4096];
    for (file, i) in held.iter().zip([0, 1, 1, 2]) {
        file.read_exact_at(&mut head, 0).unwrap();
        assert!(head == files[i].1[..4096]);
    }
    drop((held, held_again));
    m.stop();
}

/// A SIGTERM to the keeper while its serving process is being replaced (killed just
/// before) still unmounts both mounts cleanly, rather than leaving dead ones: the new
/// process gets the signal once its handlers are in place.
#[test]
fn a_stop_during_a_takeover_unmounts_cleanly() {
    require_root_and_fuse();
    let files: Vec<(String, Vec<u8>)> = vec![("/a".into(), b"one\n".to_vec())];
    let (work, repo, server, mnt) = serve_flat_repo(&files);
    let plain = work.path().join("plain");
    let mut cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    cmd.arg("--keeper").arg("--plain-mountpoint").arg(&plain);
    let mut m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    m.wait_mounted(&plain, Duration::from_secs(10));
    let keeper = keeper_of(&m);
    for _ in 0..3 {
        assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"one\n");
        tests::ok(keeper.kill_worker());
    }
    let worker = tests::ok(keeper.worker());
    let pid = |p: u32| nix::unistd::Pid::from_raw(p as i32);
    nix::sys::signal::kill(pid(worker), nix::sys::signal::Signal::SIGKILL).unwrap();
    nix::sys::signal::kill(pid(keeper.pid()), nix::sys::signal::Signal::SIGTERM).unwrap();
    // Exits 0 with both mounts gone (Mounted::stop checks the main one).
    m.stop();
    assert!(!is_fuse_mounted(&plain).unwrap(), "{}", m.log_text());
    assert!(!is_fuse_mounted(&mnt).unwrap(), "{}", m.log_text());
}

/// A name looked up in vain before a takeover (the kernel caches the negative entry for
/// minutes) appears as soon as the successor switches to a revision that has it: the
/// predecessor's negative lookups are journaled, and the successor's switch invalidates
/// them as its own.
#[test]
fn a_name_missing_before_a_takeover_appears_at_the_next_switch() {
    require_root_and_fuse();
    let rev1: Vec<(String, Vec<u8>)> = vec![("/a".into(), b"one\n".to_vec())];
    let (work, repo, server, mnt) = serve_flat_repo(&rev1);
    let mut cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
    cmd.args(["--keeper", "--max-ttl", "1s", "--backoff-init", "10ms"]);
    let m = Mounted::start(cmd, &mnt, &work.path().join("m.log"));
    // Cached as negative entries by the kernel (TTL 300 s).
    for _ in 0..2 {
        assert!(!mnt.join("new").exists());
        assert!(!mnt.join("later").exists());
    }
    let keeper = keeper_of(&m);
    tests::ok(keeper.kill_worker());
    assert!(!mnt.join("new").exists());
    let rev2: Vec<(String, Vec<u8>)> = vec![
        ("/a".into(), b"one\n".to_vec()),
        ("/new".into(), b"new file\n".to_vec()),
    ];
    repo.publish(&rev2, 2, 240);
    m.wait_until(
        "the successor to switch to revision 2",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || m.log_text().contains("switched to a new revision"),
    );
    assert_eq!(
        std::fs::read(mnt.join("new")).unwrap_or_default(),
        b"new file\n",
        "the predecessor's negative entry outlived the switch"
    );
    assert!(!mnt.join("later").exists());
    let mut m = m;
    m.stop();
}

/// One sd_notify(3) message received on `socket`: its text and the descriptors it
/// carried (as systemd's file-descriptor store receives them).
fn notify_message(
    socket: &std::os::unix::net::UnixDatagram,
) -> (String, Vec<std::os::fd::OwnedFd>) {
    use std::os::fd::{AsRawFd, FromRawFd, RawFd};
    let mut buf = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = nix::sys::socket::recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .expect("an sd_notify message within the socket's timeout");
    let mut fds = Vec::new();
    for c in msg.cmsgs().expect("control messages") {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(received) = c {
            // SAFETY: SCM_RIGHTS just installed these descriptors in this process.
            #[allow(unsafe_code)]
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let len = msg.bytes;
    (String::from_utf8_lossy(&buf[..len]).into_owned(), fds)
}

/// The systemd path without systemd (none runs here): this test plays the service
/// manager. It receives the mount's descriptors as `FDSTORE=1` messages, as systemd's
/// store does with `FileDescriptorStoreMax=`, and after a `kill -9` starts the mount
/// again as systemd's `Restart=` would: the stored descriptors at 3, 4, 5 with
/// `$LISTEN_FDS`, `$LISTEN_FDNAMES` and `$LISTEN_PID` (sd_listen_fds(3)). The new process
/// takes both mounts over with the same inode numbers, without mounting.
#[test]
fn a_successor_started_as_systemd_restarts_a_unit_takes_the_mounts_over() {
    use std::os::fd::{AsRawFd, OwnedFd};
    require_root_and_fuse();
    let files: Vec<(String, Vec<u8>)> = vec![
        ("/a".into(), b"one\n".to_vec()),
        ("/b".into(), b"two\n".to_vec()),
    ];
    let (work, repo, server, mnt) = serve_flat_repo(&files);
    let plain = work.path().join("plain");
    let notify = work.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let command = || {
        let mut cmd = mount_command_in(&server, &repo.keys.pubkey, work.path(), &mnt);
        cmd.arg("--plain-mountpoint")
            .arg(&plain)
            .env("NOTIFY_SOCKET", &notify);
        cmd
    };
    let mut first = Mounted::start(command(), &mnt, &work.path().join("first.log"));
    let mut stored: Vec<(String, OwnedFd)> = Vec::new();
    loop {
        let (text, fds) = notify_message(&socket);
        if text == "READY=1\n" {
            break;
        }
        let name = text
            .strip_prefix("FDSTORE=1\nFDNAME=")
            .and_then(|n| n.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("not a store message: {text:?}"))
            .to_string();
        assert_eq!(fds.len(), 1, "{text:?}");
        stored.extend(fds.into_iter().map(|fd| (name.clone(), fd)));
    }
    let names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["fuse", "fuse-plain", "journal"]);
    assert_eq!(std::fs::read(plain.join("a")).unwrap(), b"one\n");
    let a = std::fs::metadata(mnt.join("a")).unwrap().ino();

    let mut child = first.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    let raw: Vec<i32> = stored.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    // `$LISTEN_PID` is the new process's pid, known only once it runs: a shell sets it
    // to its own and execs the mount (same pid), as systemd sets it after its fork.
    let mount = command();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$@\"", "sh"])
        .arg(mount.get_program())
        .args(mount.get_args());
    for (key, value) in mount.get_envs() {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    cmd.env("LISTEN_FDS", raw.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"));
    // SAFETY: between fork and exec only fcntl and dup2, which are async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                // Out of the way first (a source may be 3, 4 or 5), then into place.
                let moved = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100 + i as i32);
                if moved < 0 || libc::dup2(moved, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let log = work.path().join("second.log");
    let mut second = Mounted {
        child: Some(
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        ),
        mountpoint: mnt.clone(),
        log,
    };
    second.wait_until(
        "the restarted process to take the mounts over",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || second.log_text().contains("took over the FUSE connection"),
    );
    assert!(
        !second.log_text().contains("Mounting"),
        "{}",
        second.log_text()
    );
    assert_eq!(std::fs::metadata(mnt.join("a")).unwrap().ino(), a);
    for root in [&mnt, &plain] {
        assert_eq!(std::fs::read(root.join("b")).unwrap(), b"two\n");
    }
    drop(stored);
    second.stop();
    assert!(!is_fuse_mounted(&plain).unwrap());
}
