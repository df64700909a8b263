//! The mount's FUSE connections outlive its process (`mount --keeper`; the `keeper` and
//! `fuse::handover` module docs): what a successor must keep — the revision a live update
//! switched to, inode numbers, files held open in an earlier revision — checked across a
//! `kill -9` of the serving process.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tests::random::pseudo_random;

use crate::support::*;

/// The pids of `pid`'s children (the keeper's serving process).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Kills the keeper `m`'s serving process with SIGKILL and waits until the log shows
/// `takeovers` takeovers in all.
fn kill_worker_and_wait_takeover(m: &Mounted, takeovers: usize) {
    let keeper = m.child.as_ref().map(std::process::Child::id).unwrap_or(0);
    let workers = children(keeper);
    assert_eq!(
        workers.len(),
        1,
        "the keeper's children: {workers:?}\n{}",
        m.log_text()
    );
    kill(Pid::from_raw(workers[0] as i32), Signal::SIGKILL).unwrap();
    m.wait_until(
        "the new mount process to take the connections over",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            m.log_text()
                .matches("took over the FUSE connection")
                .count()
                >= takeovers
        },
    );
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
    kill_worker_and_wait_takeover(&m, 1);
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
    kill_worker_and_wait_takeover(&m, 2);

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
    assert!(!tests::mounts::is_fuse_mounted(&plain).unwrap());
}
