//! `sync` and `gc` as operators run them, against a real `docker-registry` filled with
//! `skopeo`: images added, a tag moved, an image dropped from the recipe, a registry that is
//! down or an image that does not exist, SIGKILL of `sync` and `gc` at random points. After
//! every pass `verify` passes and the public paths are exactly what the recipe names.
//!
//! Needs `docker-registry` and `skopeo` (Debian packages); a missing tool fails the test.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use tests::random::pseudo_random;
use tests::wait::wait_until;

use crate::support::{
    BIN, Registry, gzip, noise_layer, ok, require_registry_tools, run, run_ok, sha256_digest,
    verify_ok,
};

const FQRN: &str = "sync.example.org";

fn init_repo(dir: &Path) {
    crate::support::init_repo(dir, FQRN);
}

fn write_recipe(file: &Path, entries: &[String]) {
    let mut text = format!("version: 1\ncvmfs_repo: '{FQRN}'\ninput:\n");
    for e in entries {
        text.push_str(&format!("  - '{e}'\n"));
    }
    ok(std::fs::write(file, text));
}

fn sync(repo: &Path, recipe: &Path, extra: &[&str]) -> Output {
    let r = repo.display().to_string();
    let f = recipe.display().to_string();
    let mut args = vec!["sync", "--repo", &r, "--recipe", &f];
    args.extend(extra);
    run(&args)
}

fn sync_ok(repo: &Path, recipe: &Path) -> String {
    let out = sync(repo, recipe, &[]);
    assert!(
        out.status.success(),
        "sync failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    verify_ok(repo);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every public path: symlinks outside the hidden trees, read from the current revision;
/// checked against the `.metadata` images (they must be the same set).
fn public_paths(repo: &Path) -> BTreeSet<String> {
    let r = ok(publisher::repo::Repo::open(repo));
    let ns = ok(publisher::publish::load_namespace(&r));
    fn walk(n: &publisher::tree::Node, path: &str, out: &mut BTreeSet<String>) {
        for (name, c) in &n.children {
            let p = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}/{name}")
            };
            if c.is_dir() {
                walk(c, &p, out);
            } else if !c.entry.symlink.is_empty() {
                out.insert(p);
            }
        }
    }
    let mut out = BTreeSet::new();
    for (name, c) in &ns.root.children {
        if !name.starts_with('.') {
            if c.is_dir() {
                walk(c, name, &mut out);
            } else {
                out.insert(name.clone());
            }
        }
    }
    let meta: BTreeSet<String> = ok(publisher::sync::published(repo)).into_keys().collect();
    assert_eq!(out, meta, "public symlinks and .metadata disagree");
    out
}

/// Number of `.flat/<hh>/<hex>` trees in the current revision.
fn flat_count(repo: &Path) -> usize {
    let r = ok(publisher::repo::Repo::open(repo));
    let ns = ok(publisher::publish::load_namespace(&r));
    ns.root
        .get(&[".flat"])
        .map(|f| f.children.values().map(|b| b.children.len()).sum())
        .unwrap_or(0)
}

fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}

/// The event-log lines after the first `skip`.
fn events_after(repo: &Path, skip: usize) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(repo.join("events.jsonl")).unwrap_or_default();
    text.lines()
        .skip(skip)
        .map(|l| ok(serde_json::from_str(l)))
        .collect()
}

fn count(events: &[serde_json::Value], kind: &str) -> usize {
    events.iter().filter(|e| e["event"] == kind).count()
}

fn revision(repo: &Path) -> u64 {
    ok(ok(publisher::repo::Repo::open(repo)).current_manifest())
        .manifest
        .revision
}

#[test]
fn sync_follows_the_recipe() {
    require_registry_tools();
    let work = ok(tempfile::tempdir());
    let reg = Registry::start(work.path());
    let a = reg.addr;
    reg.push("app", "1.0", &[1, 2], 3, 4000);
    reg.push("app", "1.1", &[1, 3], 3, 4000);
    reg.push("app", "2.0", &[1, 4], 3, 4000);
    let base_cfg = reg.push("tools/base", "1", &[5], 2, 3000);
    let repo = work.path().join("repo");
    init_repo(&repo);
    let recipe = work.path().join("recipe.yaml");
    write_recipe(
        &recipe,
        &[
            format!("docker://{a}/app:1.*"),
            format!("https://{a}/tools/base:1"),
        ],
    );

    // 1. add
    let out = sync_ok(&repo, &recipe);
    let want = set(&[
        format!("{a}/app:1.0"),
        format!("{a}/app:1.1"),
        format!("{a}/tools/base:1"),
    ]);
    assert_eq!(public_paths(&repo), want, "{out}");
    let in_podman = |repo: &Path| -> BTreeSet<String> {
        crate::podman_store::podman_names(repo)
            .into_keys()
            .collect()
    };
    assert_eq!(
        in_podman(&repo),
        want,
        "the podman store follows the namespace"
    );
    let ev = events_after(&repo, 0);
    assert_eq!(count(&ev, "added"), 3, "{ev:?}");
    assert_eq!(ev.last().map(|e| e["event"].clone()), Some("pass".into()));
    assert_eq!(ev.last().map(|e| e["revision"].clone()), Some(1.into()));
    assert_eq!(flat_count(&repo), 3);

    // 2. nothing to do: no new revision
    let seen = events_after(&repo, 0).len();
    let out = sync_ok(&repo, &recipe);
    assert!(out.contains("no new revision"), "{out}");
    let ev = events_after(&repo, seen);
    assert_eq!(count(&ev, "unchanged"), 3, "{ev:?}");
    assert_eq!(revision(&repo), 1);

    // 3. a tag moves: re-ingested, symlink re-pointed, the old flat tree pruned
    let new_cfg = reg.push("app", "1.0", &[1, 6], 3, 4000);
    let seen = events_after(&repo, 0).len();
    sync_ok(&repo, &recipe);
    let ev = events_after(&repo, seen);
    assert_eq!(count(&ev, "updated"), 1, "{ev:?}");
    assert_eq!(count(&ev, "unchanged"), 2, "{ev:?}");
    let updated = ev.iter().find(|e| e["event"] == "updated").cloned();
    assert_eq!(
        updated.map(|e| e["image"].clone()),
        Some(format!("{a}/app:1.0").into())
    );
    assert_eq!(public_paths(&repo), want);
    let published = ok(publisher::sync::published(&repo));
    let target = published
        .get(&format!("{a}/app:1.0"))
        .and_then(|p| p.public_target.clone())
        .unwrap_or_default();
    assert!(target.ends_with(&new_cfg[7..]), "{target} vs {new_cfg}");
    assert_eq!(
        crate::podman_store::podman_names(&repo).get(&format!("{a}/app:1.0")),
        Some(&new_cfg[7..].to_string()),
        "the moved tag names the new image in the podman store"
    );
    assert_eq!(
        flat_count(&repo),
        3,
        "the moved tag's old flat tree is pruned"
    );

    // 4. an image leaves the recipe; a dry run first changes nothing
    write_recipe(&recipe, &[format!("docker://{a}/app:1.*")]);
    let rev = revision(&repo);
    let seen = events_after(&repo, 0).len();
    let out = sync(&repo, &recipe, &["--dry-run"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("would remove {a}/tools/base:1")),
        "{text}"
    );
    assert_eq!(revision(&repo), rev);
    assert_eq!(events_after(&repo, seen).len(), 0, "dry run wrote events");
    sync_ok(&repo, &recipe);
    let ev = events_after(&repo, seen);
    assert_eq!(count(&ev, "removed"), 1, "{ev:?}");
    let want = set(&[format!("{a}/app:1.0"), format!("{a}/app:1.1")]);
    assert_eq!(public_paths(&repo), want);
    assert_eq!(flat_count(&repo), 2);
    assert_eq!(
        in_podman(&repo),
        want,
        "the removed image left the podman store"
    );
    let r = ok(publisher::repo::Repo::open(&repo));
    let ns = ok(publisher::publish::load_namespace(&r));
    assert!(
        ns.root
            .get(&[".flat", &base_cfg[7..9], &base_cfg[7..]])
            .is_none()
    );

    // 5. glob widened: app:2.0 joins
    write_recipe(&recipe, &[format!("{a}/app:*")]);
    sync_ok(&repo, &recipe);
    let want = set(&[
        format!("{a}/app:1.0"),
        format!("{a}/app:1.1"),
        format!("{a}/app:2.0"),
    ]);
    assert_eq!(public_paths(&repo), want);

    // 6. gc keeps the current revision readable, and `ls` still lists everything
    let r = repo.display().to_string();
    let out = run_ok(&["gc", "--repo", &r, "--keep-revisions", "2", "--grace", "0s"]);
    assert!(out.contains("deleted"), "{out}");
    verify_ok(&repo);
    let again = run_ok(&["gc", "--repo", &r, "--keep-revisions", "2", "--grace", "0s"]);
    assert!(again.starts_with("deleted 0 object(s)"), "{again}");
    let ls = run_ok(&["ls", "--repo", &r]);
    assert!(ls.contains(&format!("{a}/app:2.0")), "{ls}");
}

#[test]
fn failures_do_not_stop_the_others() {
    require_registry_tools();
    let work = ok(tempfile::tempdir());
    let reg = Registry::start(work.path());
    let a = reg.addr;
    reg.push("app", "1", &[1], 2, 2000);
    reg.push("app", "2", &[2], 2, 2000);
    let dead = ok(tests::net::free_addr()); // nothing listens there
    let repo = work.path().join("repo");
    init_repo(&repo);
    let recipe = work.path().join("recipe.yaml");
    write_recipe(
        &recipe,
        &[
            format!("{a}/app:1"),
            format!("{a}/missing:1"),
            format!("{dead}/gone:1"),
            format!("{dead}/globbed:*"),
        ],
    );
    let out = sync(&repo, &recipe, &[]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAILED"), "{text}");
    verify_ok(&repo);
    assert_eq!(public_paths(&repo), set(&[format!("{a}/app:1")]));
    let ev = events_after(&repo, 0);
    assert_eq!(count(&ev, "added"), 1, "{ev:?}");
    assert_eq!(count(&ev, "failed"), 3, "{ev:?}");
    let failed: BTreeSet<String> = ev
        .iter()
        .filter(|e| e["event"] == "failed")
        .map(|e| e["image"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(failed.contains(&format!("{a}/missing:1")), "{failed:?}");
    assert!(failed.contains(&format!("{dead}/gone:1")), "{failed:?}");
    assert!(failed.contains(&format!("{dead}/globbed:*")), "{failed:?}");
    assert!(
        ev.iter()
            .all(|e| e["event"] != "failed" || e["error"].is_string())
    );
    let pass = ev.last().cloned().unwrap_or_default();
    assert_eq!(pass["event"], "pass");
    assert_eq!(pass["failed"], 3);
    assert_eq!(pass["added"], 1);

    // The registry goes down: every image fails, nothing is removed, no revision.
    write_recipe(&recipe, &[format!("{a}/app:*")]);
    sync_ok(&repo, &recipe);
    let before = public_paths(&repo);
    assert_eq!(before, set(&[format!("{a}/app:1"), format!("{a}/app:2")]));
    let rev = revision(&repo);
    drop(reg);
    let seen = events_after(&repo, 0).len();
    let out = sync(&repo, &recipe, &[]);
    assert!(!out.status.success());
    verify_ok(&repo);
    assert_eq!(public_paths(&repo), before);
    assert_eq!(revision(&repo), rev);
    let ev = events_after(&repo, seen);
    assert_eq!(count(&ev, "failed"), 1, "{ev:?}");
    assert_eq!(count(&ev, "removed"), 0, "{ev:?}");
}

/// A pseudo-random delay in `0..max_ms` from the clock.
fn random_ms(max_ms: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (nanos.wrapping_mul(0x9E37_79B9) >> 7) % max_ms
}

fn kill_after(mut child: Child, ms: u64) -> bool {
    std::thread::sleep(Duration::from_millis(ms));
    let finished = matches!(child.try_wait(), Ok(Some(_)));
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    !finished
}

#[test]
fn killed_sync_and_gc_leave_a_verifying_repository() {
    require_registry_tools();
    let work = ok(tempfile::tempdir());
    let reg = Registry::start(work.path());
    let a = reg.addr;
    for (i, tag) in ["1", "2", "3"].iter().enumerate() {
        let s = 10 * (i as u64 + 1);
        reg.push("big", tag, &[s, s + 1, s + 2], 40, 90_000);
    }
    let repo = work.path().join("repo");
    init_repo(&repo);
    let recipe = work.path().join("recipe.yaml");
    write_recipe(&recipe, &[format!("{a}/big:*")]);
    let r = repo.display().to_string();
    let f = recipe.display().to_string();
    let mut killed = 0;
    for max in [300, 800, 1500, 3000] {
        let ms = random_ms(max);
        let child = ok(Command::new(BIN)
            .args(["sync", "--repo", &r, "--recipe", &f])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn());
        if kill_after(child, ms) {
            killed += 1;
        }
        eprintln!("sync killed after {ms} ms");
        verify_ok(&repo);
    }
    sync_ok(&repo, &recipe);
    let all = set(&[
        format!("{a}/big:1"),
        format!("{a}/big:2"),
        format!("{a}/big:3"),
    ]);
    assert_eq!(public_paths(&repo), all);

    // Garbage to collect: two images leave, one tag moves.
    reg.push("big", "1", &[50, 51], 40, 90_000);
    write_recipe(&recipe, &[format!("{a}/big:1")]);
    sync_ok(&repo, &recipe);
    // Kill points spread over a whole run, measured by a dry run (same marking work).
    let t = Instant::now();
    run_ok(&[
        "gc",
        "--repo",
        &r,
        "--keep-revisions",
        "1",
        "--grace",
        "0s",
        "--dry-run",
    ]);
    let full = (t.elapsed().as_millis() as u64).max(10);
    for _ in 0..4 {
        let ms = random_ms(2 * full);
        let child = ok(Command::new(BIN)
            .args(["gc", "--repo", &r, "--keep-revisions", "1", "--grace", "0s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn());
        if kill_after(child, ms) {
            killed += 1;
        }
        eprintln!("gc killed after {ms} ms");
        verify_ok(&repo);
    }
    let out = run_ok(&["gc", "--repo", &r, "--keep-revisions", "1", "--grace", "0s"]);
    eprintln!("{out}");
    verify_ok(&repo);
    let again = run_ok(&["gc", "--repo", &r, "--keep-revisions", "1", "--grace", "0s"]);
    assert!(again.starts_with("deleted 0 object(s)"), "{again}");
    assert_eq!(public_paths(&repo), set(&[format!("{a}/big:1")]));
    eprintln!("{killed} of 8 runs were killed before they finished");
}

#[test]
fn loop_runs_passes_and_rereads_the_recipe() {
    require_registry_tools();
    let work = ok(tempfile::tempdir());
    let reg = Registry::start(work.path());
    let a = reg.addr;
    reg.push("app", "1", &[1], 1, 1000);
    reg.push("app", "2", &[2], 1, 1000);
    let repo = work.path().join("repo");
    init_repo(&repo);
    let recipe = work.path().join("recipe.yaml");
    write_recipe(&recipe, &[format!("{a}/app:1")]);
    let events = work.path().join("ev.jsonl");
    let child = ok(Command::new(BIN)
        .args(["sync", "--loop", "--interval", "300ms", "--repo"])
        .arg(&repo)
        .arg("--recipe")
        .arg(&recipe)
        .arg("--events")
        .arg(&events)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn());
    let passes = |n: usize| {
        let count = || {
            std::fs::read_to_string(&events)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("\"event\":\"pass\""))
                .count()
        };
        let what = format!("{n} passes");
        wait_until(
            &what,
            Duration::from_secs(60),
            Duration::from_millis(50),
            || count() >= n,
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {}",
                std::fs::read_to_string(&events).unwrap_or_default()
            )
        });
    };
    passes(2);
    assert_eq!(public_paths(&repo), set(&[format!("{a}/app:1")]));
    // the recipe changes under the running loop
    write_recipe(&recipe, &[format!("{a}/app:2")]);
    let seen = std::fs::read_to_string(&events)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"event\":\"pass\""))
        .count();
    passes(seen + 2);
    kill_after(child, 0);
    verify_ok(&repo);
    assert_eq!(public_paths(&repo), set(&[format!("{a}/app:2")]));
    assert!(!repo.join("events.jsonl").exists(), "--events not honoured");
}

#[test]
fn a_corrupt_layer_keeps_the_previous_image_and_spares_the_others() {
    require_registry_tools();
    let work = ok(tempfile::tempdir());
    let reg = Registry::start(work.path());
    let a = reg.addr;
    let old_cfg = reg.push("app", "1", &[1], 2, 2000);
    let repo = work.path().join("repo");
    init_repo(&repo);
    let recipe = work.path().join("recipe.yaml");
    write_recipe(&recipe, &[format!("{a}/app:1"), format!("{a}/app:2")]);
    let out = sync(&repo, &recipe, &[]);
    assert!(!out.status.success(), "app:2 does not exist yet");
    assert_eq!(public_paths(&repo), set(&[format!("{a}/app:1")]));

    // app:1 moves to an image whose new layer the registry serves corrupted; app:2 appears.
    reg.push("app", "1", &[7], 2, 2000);
    reg.push("app", "2", &[8], 2, 2000);
    let bad_layer = sha256_digest(&gzip(&noise_layer(7, 2, 2000)));
    let blob = work.path().join(format!(
        "storage/docker/registry/v2/blobs/sha256/{}/{}/data",
        &bad_layer[7..9],
        &bad_layer[7..]
    ));
    let len = ok(std::fs::metadata(&blob)).len() as usize;
    ok(std::fs::write(&blob, pseudo_random(len, 99)));
    let seen = events_after(&repo, 0).len();
    let out = sync(&repo, &recipe, &[]);
    assert!(!out.status.success());
    verify_ok(&repo);
    assert_eq!(
        public_paths(&repo),
        set(&[format!("{a}/app:1"), format!("{a}/app:2")])
    );
    let published = ok(publisher::sync::published(&repo));
    let target = published
        .get(&format!("{a}/app:1"))
        .and_then(|p| p.public_target.clone())
        .unwrap_or_default();
    assert!(target.ends_with(&old_cfg[7..]), "app:1 moved: {target}");
    let ev = events_after(&repo, seen);
    let failed: Vec<&serde_json::Value> = ev.iter().filter(|e| e["event"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{ev:?}");
    assert_eq!(failed[0]["image"], format!("{a}/app:1"));
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&bad_layer)),
        "{ev:?}"
    );
    assert_eq!(count(&ev, "added"), 1, "{ev:?}");
}

/// The object files (`srv/data/XX/…`) of the startup packs of `public`'s linux/amd64.
fn pack_objects(repo: &Path, public: &str) -> Vec<std::path::PathBuf> {
    crate::support::startup_files(repo, public)
        .into_iter()
        .filter(|(name, _, _)| namespace::paths::is_pack_name(name))
        .map(|(_, h, _)| repo.join("srv").join(h.object_path(catalog::Suffix::None)))
        .collect()
}

#[test]
fn gc_deletes_the_packs_of_a_removed_image_and_keeps_the_others() {
    require_registry_tools();
    let work = ok(tempfile::tempdir());
    let reg = Registry::start(work.path());
    let a = reg.addr;
    let cfg_a = reg.push("keep", "1", &[21], 2, 3000);
    let cfg_b = reg.push("drop", "1", &[22], 2, 3000);
    let repo = work.path().join("repo");
    init_repo(&repo);
    let recipe = work.path().join("recipe.yaml");
    write_recipe(
        &recipe,
        &[
            format!("docker://{a}/keep:1"),
            format!("docker://{a}/drop:1"),
        ],
    );
    sync_ok(&repo, &recipe);
    let r = repo.display().to_string();
    for (name, cfg, seed) in [("keep", &cfg_a, 21), ("drop", &cfg_b, 22)] {
        let hex = cfg.trim_start_matches("sha256:");
        let trace = work.path().join(format!("{name}.trace"));
        ok(std::fs::write(
            &trace,
            format!(
                "# strata access trace v1\n/.flat/{}/{hex}/l{seed}/f1\n/.flat/{}/{hex}/l{seed}/f0\n",
                &hex[..2],
                &hex[..2]
            ),
        ));
        let out = run_ok(&[
            "startup",
            "--repo",
            &r,
            "--trace",
            &trace.display().to_string(),
            &format!("{a}/{name}:1"),
        ]);
        assert!(out.contains("2 resolved"), "{out}");
    }
    let kept = pack_objects(&repo, &format!("{a}/keep:1"));
    let dropped = pack_objects(&repo, &format!("{a}/drop:1"));
    assert!(!kept.is_empty() && !dropped.is_empty());
    assert!(kept.iter().chain(&dropped).all(|p| p.is_file()));

    // `drop` leaves the recipe: its .metadata (and startup/) goes; gc deletes its packs.
    write_recipe(&recipe, &[format!("docker://{a}/keep:1")]);
    sync_ok(&repo, &recipe);
    run_ok(&["gc", "--repo", &r, "--keep-revisions", "1", "--grace", "0s"]);
    verify_ok(&repo);
    for p in &dropped {
        assert!(
            !p.exists(),
            "pack of the removed image kept: {}",
            p.display()
        );
    }
    for p in &kept {
        assert!(
            p.is_file(),
            "pack of the kept image deleted: {}",
            p.display()
        );
    }
    assert_eq!(pack_objects(&repo, &format!("{a}/keep:1")), kept);
}
