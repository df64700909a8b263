//! podman on a node that mounts the repository: real podman (Debian sid's, in the sid root
//! of `scripts/install-runtimes`, entered with bubblewrap, rootful) with a `storage.conf`
//! whose `additionalimagestores` names `/cvmfs/<fqrn>/podmanStore`, the store the publisher
//! writes (publisher/src/podman_store.rs, docs/namespace.md §10a). No registry exists in
//! this test and every run says `--pull never`: what podman lists and runs comes from the
//! mount.
//!
//! Checks: `podman images` lists both published names of the image, read-only (from the
//! store), with one image ID (as podman would make it); `podman run` runs the workload and sees the whiteouts and the
//! opaque directory of the third layer as containerd does; `strata-publisher remove` of one
//! name, once the mount has switched to the new revision, leaves podman the other name
//! (still runnable); removing the other leaves podman an empty store.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tests::binaries::PUBLISHER;
use tests::image::{self, DELETED_DIR, DELETED_FILE, OPAQUE_DIR, OPAQUE_UPPER_FILE};
use tests::process::run_checked;
use tests::runtimes::{SidSandbox, publish_and_mount, sid_sandbox};
use tests::scenario::{WORKLOAD, expected_workload_output, image_cache_root};
use tests::steps::{Steps, format_duration};
use tests::strata::{Repo, strata_command};
use tests::wait::wait_until;
use tests::workdir::WorkDir;

use super::in_workdir;

/// The repository name the node mounts.
const FQRN: &str = "podman.strata.example";
/// The two names the test image is published under (one config, so one podman image).
const NAMES: [&str; 2] = ["podman.test/debian:1", "podman.test/debian-again:2"];
/// Longest one podman command may take (a cold start reads through the mount).
const PODMAN_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest the mount may take to show a new revision (`--max-ttl 1s`).
const SWITCH_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn podman_runs_published_images_from_the_store_in_the_mount() {
    in_workdir("podman", |work| {
        let mut steps = Steps::new();
        let sandbox = sid_sandbox(&mut steps, "podman")?;
        let test_image = steps.run("test image (cached)", || {
            image::test_image(&image_cache_root()?)
        })?;
        let layout = test_image.oci_reference();
        let images = NAMES.map(|name| (name, layout.clone()));
        let mut published =
            publish_and_mount(&mut steps, work, FQRN, &images, &["--max-ttl", "1s"])?;
        let mountpoint = published.mount.mountpoint().to_owned();
        let node = steps.run("podman's storage, /run and storage.conf", || {
            Node::new(work, sandbox, &mountpoint)
        })?;
        let version = steps.run("podman --version inside the sid root", || {
            node.podman(&["--version"])
        })?;
        println!("    {}", version.trim());

        let listed = steps.run("podman images: both names, read-only, one image ID", || {
            let listed = node.images()?;
            let ids: Vec<&str> = listed.iter().map(|(_, id)| id.as_str()).collect();
            for name in NAMES {
                ensure!(
                    listed.iter().any(|(n, _)| n == name),
                    "podman images does not list {name}: {listed:?}"
                );
            }
            ensure!(
                listed.len() == 2 && ids[0] == ids[1],
                "expected the two names of one image, got {listed:?}"
            );
            Ok(listed)
        })?;
        println!("    {listed:?}");

        let start = Instant::now();
        let out = steps.run("podman run --pull never: python3 workload (cold)", || {
            node.run(NAMES[0], &["python3", "-c", WORKLOAD])
        })?;
        let cold = start.elapsed();
        ensure!(
            out == expected_workload_output(),
            "workload printed {out:?}, expected {:?}",
            expected_workload_output()
        );
        let start = Instant::now();
        steps.run("podman run: the same again (warm)", || {
            node.run(NAMES[0], &["python3", "-c", WORKLOAD])
        })?;
        println!(
            "    podman run python3: cold {}, warm {}",
            format_duration(cold),
            format_duration(start.elapsed())
        );
        steps.run("whiteouts and the opaque directory inside the container", || {
            let script = format!(
                "for p in {DELETED_FILE} {DELETED_DIR}; do if [ -e $p ]; then echo present; else echo absent; fi; done; ls {OPAQUE_DIR}; cat {OPAQUE_DIR}/{}",
                OPAQUE_UPPER_FILE.0
            );
            let out = node.run(NAMES[1], &["sh", "-c", &script])?;
            let expected = format!(
                "absent\nabsent\n{}\n{}",
                OPAQUE_UPPER_FILE.0,
                String::from_utf8_lossy(OPAQUE_UPPER_FILE.1)
            );
            ensure!(out == expected, "printed {out:?}, expected {expected:?}");
            Ok(())
        })?;
        steps.run("a container writes to its own layer, not the store", || {
            let out = node.run(
                NAMES[0],
                &[
                    "sh",
                    "-c",
                    "echo new > /etc/written && cat /etc/written && echo ok",
                ],
            )?;
            ensure!(out == "new\nok\n", "printed {out:?}");
            Ok(())
        })?;

        steps.run(&format!("strata-publisher remove {}", NAMES[0]), || {
            remove(&published.repo, NAMES[0], work)
        })?;
        steps.run("the mount switches to the next revision", || {
            wait_until_gone(&mountpoint, NAMES[0])
        })?;
        steps.run(
            "podman images: only the other name is left, and runs",
            || {
                let listed = node.images()?;
                ensure!(
                    listed.len() == 1 && listed[0].0 == NAMES[1],
                    "after removing {}: podman lists {listed:?}",
                    NAMES[0]
                );
                let out = node.run(NAMES[1], &["python3", "-c", WORKLOAD])?;
                ensure!(
                    out == expected_workload_output(),
                    "workload printed {out:?}"
                );
                Ok(())
            },
        )?;
        steps.run(&format!("strata-publisher remove {}", NAMES[1]), || {
            remove(&published.repo, NAMES[1], work)
        })?;
        steps.run("the mount switches again", || {
            wait_until_gone(&mountpoint, NAMES[1])
        })?;
        steps.run(
            "podman images: nothing; podman run --pull never fails",
            || {
                let listed = node.images()?;
                ensure!(listed.is_empty(), "after removing both: {listed:?}");
                let output = tests::process::run_capture(
                    &mut node.command(&["run", "--rm", "--pull", "never", NAMES[1], "true"]),
                    &node.work.log("podman"),
                    PODMAN_TIMEOUT,
                )?;
                ensure!(
                    !output.status.success(),
                    "podman run of a removed image succeeded"
                );
                // Failed because the image is gone, not for another reason.
                let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
                ensure!(
                    ["image not known", "no such image", "image not found"]
                        .iter()
                        .any(|m| stderr.contains(m)),
                    "podman run of a removed image failed, but not for want of the image:\n{stderr}"
                );
                Ok(())
            },
        )?;
        published
            .mount
            .check_running()
            .context("the FUSE mount died during the test")?;
        println!("steps:\n{}", steps.summary());
        Ok(())
    });
}

/// The node: the sid sandbox with the mount at `/cvmfs/<fqrn>`, podman's graph root, run
/// root and `/run` in the work directory (so that they outlive one command), and a
/// `storage.conf` naming the store.
struct Node<'a> {
    sandbox: SidSandbox,
    work: &'a WorkDir,
}

/// Where the podman state is bound inside the sandbox.
const STATE: &str = "/tmp/podman";

impl<'a> Node<'a> {
    fn new(work: &'a WorkDir, sandbox: SidSandbox, mountpoint: &Path) -> Result<Node<'a>> {
        let state = work.subdir("podman")?;
        let run = work.subdir("podman-run")?;
        for dir in ["graph", "runroot", "tmp"] {
            std::fs::create_dir_all(state.join(dir))
                .with_context(|| format!("creating {}", state.join(dir).display()))?;
        }
        let conf = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{STATE}/graph\"\nrunroot = \"{STATE}/runroot\"\n\n\
             [storage.options]\nadditionalimagestores = [\"/cvmfs/{FQRN}/podmanStore\"]\n"
        );
        std::fs::write(state.join("storage.conf"), conf).context("writing storage.conf")?;
        Ok(Node {
            sandbox: sandbox
                .bind(mountpoint, &format!("/cvmfs/{FQRN}"))
                .bind_rw(&state, STATE)
                .bind_rw(&run, "/run"),
            work,
        })
    }

    /// `podman ARGS…` in the sandbox, with the test's storage.conf.
    fn command(&self, args: &[&str]) -> std::process::Command {
        let storage = format!("CONTAINERS_STORAGE_CONF={STATE}/storage.conf");
        let tmp = format!("TMPDIR={STATE}/tmp");
        let mut full = vec![
            storage.as_str(),
            tmp.as_str(),
            "PODMAN_IGNORE_CGROUPSV1_WARNING=1",
            "podman",
        ];
        full.extend_from_slice(args);
        self.sandbox.command("env", &full)
    }

    /// `podman ARGS…`; its stdout (a failure is an error with the log tail).
    fn podman(&self, args: &[&str]) -> Result<String> {
        let output = run_checked(
            &mut self.command(args),
            &self.work.log("podman"),
            PODMAN_TIMEOUT,
        )?;
        String::from_utf8(output.stdout).context("podman's output is not UTF-8")
    }

    /// `podman images`: (repository:tag, image ID) per line; every image must be listed
    /// read-only (it comes from the additional store, not the node's own).
    fn images(&self) -> Result<Vec<(String, String)>> {
        let out = self.podman(&[
            "images",
            "--noheading",
            "--no-trunc",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.ID}} {{.ReadOnly}}",
        ])?;
        let mut images = Vec::new();
        for line in out.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let [name, id, read_only] = fields[..] else {
                bail!("unexpected podman images line {line:?}");
            };
            ensure!(
                read_only == "true",
                "{name} is not a read-only (store) image: {line:?}"
            );
            images.push((name.to_owned(), id.to_owned()));
        }
        Ok(images)
    }

    /// `podman run --rm --pull never --network none IMAGE CMD…`; its stdout.
    fn run(&self, image: &str, cmd: &[&str]) -> Result<String> {
        let mut args = vec!["run", "--rm", "--pull", "never", "--network", "none", image];
        args.extend_from_slice(cmd);
        self.podman(&args)
    }
}

/// `strata-publisher remove --repo DIR NAME`.
fn remove(repo: &Repo, name: &str, work: &WorkDir) -> Result<()> {
    let mut command = strata_command(PUBLISHER)?;
    command.arg("remove").arg("--repo").arg(&repo.dir).arg(name);
    let output = run_checked(&mut command, &work.log("publisher-remove"), PODMAN_TIMEOUT)?;
    print!("    {}", String::from_utf8_lossy(&output.stdout));
    Ok(())
}

/// Waits until the mount no longer shows the public path `name` (the removal's revision
/// is mounted).
fn wait_until_gone(mountpoint: &Path, name: &str) -> Result<()> {
    let start = Instant::now();
    let path = mountpoint.join(name);
    let what = format!("{} to go", path.display());
    let gone = || path.symlink_metadata().is_err();
    wait_until(&what, SWITCH_TIMEOUT, Duration::from_millis(200), gone)?;
    println!("    switched after {}", format_duration(start.elapsed()));
    Ok(())
}
