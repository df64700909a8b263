//! The main job's end-to-end test: the real parts together on 127.0.0.1, started by the
//! test itself — Debian's `docker-registry`, a three-layer image built from Debian packages
//! and pushed with `skopeo`, `strata-publisher init/ingest/serve`,
//! `strata-snapshotter mount/run/pull`, a private containerd 1.6 and `runc`.
//!
//! Runs as root with FUSE (`scripts/test` builds the workspace first). A missing
//! prerequisite is a failure, never a skip. On failure every log's tail is printed and the
//! work directory is kept.

mod apptainer;
mod containerd_matrix;
mod podman;
mod startup;
mod tar_corpus;
mod tree_equality;

use std::process::Output;
use std::sync::Mutex;

use anyhow::{Context, Result, bail, ensure};
use tests::binaries::check_system;
use tests::containerd::{Containerd, NAMESPACE};
use tests::image::{self, build_escaping_layout};
use tests::mounts::is_fuse_mounted;
use tests::net::free_port;
use tests::registry::Registry;
use tests::scenario::{self, FQRN, Published, Stack, image_cache_root};
use tests::steps::{Steps, format_bytes};
use tests::strata::{MountArgs, Repo, run_expecting_failure};
use tests::workdir::WorkDir;

/// Serialises the tests of this binary: their step output stays readable and they do not
/// compete for the two CPUs (the image build is shared through its own lock anyway).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `body` in a fresh work directory; on error dumps every log, keeps the directory
/// and fails the test with the error chain.
fn in_workdir(label: &str, body: impl FnOnce(&WorkDir) -> Result<()>) {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    println!("\n######## {label} ########");
    let mut work = WorkDir::new(label).expect("create a work directory");
    if let Err(error) = body(&work) {
        work.dump_logs();
        work.keep();
        panic!("{label}: {error:#}");
    }
}

/// A wrong-input command must exit non-zero, never panic, and say what was wrong: its
/// output mentions at least one of `mentions` (case-insensitive). Returns the message.
fn expect_clear_failure(what: &str, output: &Output, mentions: &[&str]) -> Result<String> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let text = format!("{stdout}{stderr}");
    ensure!(
        !output.status.success(),
        "{what}: exited successfully; output:\n{text}"
    );
    ensure!(
        !text.contains("panicked"),
        "{what}: panicked instead of a clear error:\n{text}"
    );
    ensure!(
        output.status.code().is_some(),
        "{what}: killed by a signal ({})",
        output.status
    );
    let lower = text.to_lowercase();
    ensure!(
        mentions.iter().any(|m| lower.contains(&m.to_lowercase())),
        "{what}: the error does not name the input (expected one of {mentions:?}):\n{text}"
    );
    Ok(text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_owned())
}

/// The image itself, without Strata: containerd's own overlayfs snapshotter pulls it from
/// the registry and runs the workload, and the whiteouts hold. This pins down the test
/// image, so that a failure of the Strata test is Strata's.
#[test]
fn reference_image_behaves_under_containerd_overlayfs() {
    in_workdir("reference", |work| {
        let mut steps = Steps::new();
        steps.run("check system prerequisites", check_system)?;
        let cache = image_cache_root()?;
        let image = steps.run("test image (cached)", || image::test_image(&cache))?;
        ensure!(
            image.facts.layers.len() == 3,
            "test image has {} layers",
            image.facts.layers.len()
        );
        let registry = steps.run("start docker-registry", || {
            Registry::start(&work.subdir("registry")?, &work.log("registry"))
        })?;
        let reference = format!("{}/reference:1", registry.host());
        steps.run("skopeo copy", || {
            registry.push(&image.oci_reference(), &reference, &work.log("skopeo"))
        })?;
        let containerd = steps.run("start private containerd", || {
            Containerd::start(
                &work.subdir("containerd")?,
                &work.log("containerd"),
                &work.log("ctr"),
                &work.path().join("unused-snapshotter.sock"),
            )
        })?;
        let version = containerd.version()?;
        ensure!(!version.is_empty(), "ctr version printed no server version");
        println!("    containerd {version}, namespace {NAMESPACE}");
        steps.run("ctr images pull --plain-http (overlayfs)", || {
            containerd.ctr_checked(&["images", "pull", "--plain-http", &reference])
        })?;
        let out = steps.run("workload under overlayfs", || {
            scenario::check_workload(&containerd, "overlayfs", &reference)
        })?;
        print!("    {out}");
        steps.run("whiteouts under overlayfs", || {
            scenario::check_whiteouts(&containerd, "overlayfs", &reference)
        })?;
        Ok(())
    });
}

/// The main job: publish → HTTP → FUSE → containerd runs it.
#[test]
fn main_job_end_to_end() {
    in_workdir("e2e", |work| {
        let mut steps = Steps::new();
        let published = Published::up(work, &mut steps)?;

        // Wrong input: the right server, the wrong master key → refused, nothing mounted.
        steps.run(
            "wrong input: mount with another repository's public key",
            || wrong_key(work, &published),
        )?;

        let stack = Stack::attach(published, work, &mut steps)?;
        let out = steps.run("ctr run: python3 imports hashlib+json", || {
            stack.check_workload()
        })?;
        print!("    workload printed {out}");
        let traced = steps.run(
            "mount --trace: the container's reads, in first-read order",
            || stack.check_trace(work),
        )?;
        println!("    {traced} files traced");
        steps.run(
            "whiteouts and opaque directory inside the container",
            || stack.check_whiteouts(),
        )?;
        let listed = steps.run(
            "ctr snapshots --snapshotter strata ls: layers committed",
            || stack.check_snapshots(),
        )?;
        println!("    {} snapshots listed", listed.len());
        let entries = steps.run(
            "containerd content store: no layer blob (lazy pull)",
            || stack.check_no_layer_content(),
        )?;
        println!("    {entries} content entries, no layer among them");
        let gets = steps.run("registry: no blob GET after the ingest", || {
            stack.check_registry_untouched()
        })?;
        println!("    {gets} blob GETs, all during the ingest");
        let (served, size) = steps.run("HTTP server: node fetched less than the image", || {
            stack.check_bytes_fetched()
        })?;
        println!(
            "    fetched {} in {} requests; image compressed size {}",
            format_bytes(served.bytes),
            served.requests,
            format_bytes(size)
        );
        // After the byte count: this reads the flattened tree's catalogs too.
        steps.run(
            "FUSE namespace: .metadata config and the flattened public path",
            || stack.check_namespace(),
        )?;
        let mut stack = stack;
        stack
            .mount
            .check_running()
            .context("the FUSE mount died during the test")?;
        stack
            .snapshotter
            .check_running()
            .context("the snapshotter died during the test")?;
        println!("steps:\n{}", steps.summary());
        Ok(())
    });
}

fn wrong_key(work: &WorkDir, published: &Published) -> Result<String> {
    let other = Repo::init(
        &work.path().join("other-repo"),
        FQRN,
        &work.log("other-init"),
    )?;
    let mountpoint = work.subdir("mnt-wrong-key")?;
    let pubkey = other.public_key();
    let server = published.server.server_url();
    let args = MountArgs {
        fqrn: FQRN,
        server: &server,
        pubkey: &pubkey,
        cache: &work.subdir("cache-wrong-key")?,
        mountpoint: &mountpoint,
    };
    let output = run_expecting_failure(&mut args.command()?, &work.log("mount-wrong-key"));
    let mounted = is_fuse_mounted(&mountpoint)?;
    let output = output?;
    ensure!(
        !mounted,
        "mount with the wrong key left a FUSE mount at {}",
        mountpoint.display()
    );
    let pubkey_text = pubkey.display().to_string();
    let message = expect_clear_failure(
        "mount with the wrong public key",
        &output,
        &["signature", "whitelist", &pubkey_text],
    )?;
    println!("    refused: {message}");
    Ok(message)
}

/// `ingest` of an image the registry does not have fails naming it.
#[test]
fn wrong_input_missing_image() {
    in_workdir("missing-image", |work| {
        check_system()?;
        let registry = Registry::start(&work.subdir("registry")?, &work.log("registry"))?;
        let repo = Repo::init(&work.path().join("repo"), FQRN, &work.log("publisher-init"))?;
        let reference = format!("docker://{}/no-such-image:1", registry.host());
        let output = run_expecting_failure(
            &mut repo.ingest_command(&[&reference])?,
            &work.log("ingest"),
        )?;
        let message =
            expect_clear_failure("ingest of a missing image", &output, &["no-such-image"])?;
        println!("missing image refused: {message}");
        Ok(())
    });
}

/// `ingest` of a layer with an entry `../evil` fails naming it and writes nothing outside.
#[test]
fn wrong_input_layer_escaping_its_root() {
    in_workdir("escape", |work| {
        check_system()?;
        let layout = work.path().join("evil-layout");
        build_escaping_layout(&layout, &work.log("umoci"))?;
        let repo = Repo::init(&work.path().join("repo"), FQRN, &work.log("publisher-init"))?;
        let reference = format!("oci:{}:evil", layout.display());
        let output = run_expecting_failure(
            &mut repo.ingest_command(&[&reference])?,
            &work.log("ingest"),
        )?;
        let message = expect_clear_failure("ingest of an escaping layer", &output, &["../evil"])?;
        println!("escaping layer refused: {message}");
        for place in [
            work.path(),
            &repo.dir,
            &repo.dir.join("srv"),
            &repo.dir.join("tmp"),
        ] {
            ensure!(
                !place.join("evil").exists(),
                "ingest wrote {}",
                place.join("evil").display()
            );
        }
        Ok(())
    });
}

/// `mount` against a server nobody listens on fails naming the server.
#[test]
fn wrong_input_unreachable_server() {
    in_workdir("unreachable", |work| {
        check_system()?;
        let repo = Repo::init(&work.path().join("repo"), FQRN, &work.log("publisher-init"))?;
        let port = free_port()?;
        let server = format!("http://127.0.0.1:{port}/cvmfs/@fqrn@");
        let mountpoint = work.subdir("mnt")?;
        let pubkey = repo.public_key();
        let args = MountArgs {
            fqrn: FQRN,
            server: &server,
            pubkey: &pubkey,
            cache: &work.subdir("cache")?,
            mountpoint: &mountpoint,
        };
        let output = run_expecting_failure(&mut args.command()?, &work.log("mount"));
        let mounted = is_fuse_mounted(&mountpoint)?;
        let output = output?;
        if mounted {
            bail!("mount against an unreachable server left a FUSE mount");
        }
        let message = expect_clear_failure(
            "mount against an unreachable server",
            &output,
            &[&format!("127.0.0.1:{port}")],
        )?;
        println!("unreachable server refused: {message}");
        Ok(())
    });
}
