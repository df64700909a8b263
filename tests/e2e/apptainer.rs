//! The HPC host: real Apptainer (Debian sid's, in the sid root of `scripts/install-runtimes`,
//! entered with bubblewrap) runs published images straight from the Strata mount, bound at
//! `/cvmfs/<fqrn>` as on a batch node: `apptainer exec|run|shell
//! /cvmfs/<fqrn>/<registry>/<repo>:<tag>`. What it checks is the `/.singularity.d` the
//! publisher writes (publisher/src/singularity.rs): the image's `Env` (with its `PATH`),
//! `Entrypoint` + `Cmd` with and without arguments, `WorkingDir`, an image without `Cmd`.
//!
//! Modes: the unprivileged one (a non-root user in a user namespace, `--userns`, what many
//! HPC sites run) is the main one. Root's privileged mode runs too, with
//! `--drop-caps CAP_SYS_RESOURCE`: Apptainer's privileged starter asks for every capability
//! in the bounding set and this machine's root lacks `CAP_SYS_RESOURCE`. Setuid mode (a
//! non-root user with the setuid starter) cannot run: Debian's apptainer package ships no
//! `starter-suid`.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tests::image::{self, DELETED_FILE, OPAQUE_DIR, OPAQUE_UPPER_FILE};
use tests::process::{run_capture, run_checked};
use tests::runtimes::{SidSandbox, publish_and_mount, sid_sandbox};
use tests::scenario::{WORKLOAD, expected_workload_output, image_cache_root};
use tests::steps::{Steps, format_duration};
use tests::workdir::WorkDir;

use super::in_workdir;

/// The repository name the HPC host mounts.
const FQRN: &str = "hpc.strata.example";
/// The unprivileged user the batch job runs as (`nobody:nogroup`).
const USER: (u32, u32) = (65534, 65534);
/// Longest one Apptainer command may take (a cold start reads through the mount).
const APPTAINER_TIMEOUT: Duration = Duration::from_secs(300);

/// The image with `Entrypoint`, `Cmd`, `Env` (its own `PATH`) and `WorkingDir`.
const RUN_IMAGE: &str = "hpc.test/apptainer:run";
/// The same layers with neither `Entrypoint` nor `Cmd`.
const BARE_IMAGE: &str = "hpc.test/apptainer:bare";
/// The `PATH` of [`RUN_IMAGE`]: a directory no default `PATH` has, first.
const IMAGE_PATH: &str =
    "/opt/hpc/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// A variable of [`RUN_IMAGE`]'s `Env`, with characters the shell must not interpret.
const GREETING: (&str, &str) = ("GREETING", "hello from the image, it's $HOME `x`");
/// [`RUN_IMAGE`]'s `WorkingDir`.
const WORKDIR: &str = "/usr/share";
/// [`RUN_IMAGE`]'s entrypoint script (`sh -c SCRIPT entrypoint ARGS…`).
const ENTRYPOINT_SCRIPT: &str = r#"echo "pwd=$(pwd) greeting=$GREETING args=[$*] n=$#""#;
/// [`RUN_IMAGE`]'s `Cmd`: the entrypoint's default arguments.
const CMD: [&str; 2] = ["default", "it's two"];

#[test]
fn apptainer_runs_published_images_from_the_mount() {
    in_workdir("apptainer", |work| {
        let mut steps = Steps::new();
        let sandbox = sid_sandbox(&mut steps, "apptainer")?;
        let version = steps.run("apptainer --version inside the sid root", || {
            stdout_of(run_checked(
                &mut sandbox.command("apptainer", &["--version"]),
                &work.log("apptainer"),
                APPTAINER_TIMEOUT,
            )?)
        })?;
        println!("    {}", version.trim());

        let layout = steps.run("the test image with two configs (umoci config)", || {
            image_variants(work)
        })?;
        let images = [(RUN_IMAGE, "run"), (BARE_IMAGE, "bare")]
            .map(|(name, tag)| (name, format!("oci:{layout}:{tag}")));
        let published = publish_and_mount(&mut steps, work, FQRN, &images, &[])?;
        let mountpoint = published.mount.mountpoint().to_owned();
        let host = Host {
            sandbox: sandbox.bind(&mountpoint, &format!("/cvmfs/{FQRN}")),
            work,
        };
        let run_image = format!("/cvmfs/{FQRN}/{RUN_IMAGE}");
        let bare_image = format!("/cvmfs/{FQRN}/{BARE_IMAGE}");

        // Cold: nothing of the image is in the mount's cache yet.
        let (cold, out) = steps.run("cold start: apptainer exec python3 workload", || {
            host.timed_user(&["exec", "--userns", &run_image, "python3", "-c", WORKLOAD])
        })?;
        let expected = expected_workload_output();
        ensure!(
            out == expected,
            "workload printed {out:?}, expected {expected:?}"
        );
        let (warm, _) = steps.run("warm start: the same again", || {
            host.timed_user(&["exec", "--userns", &run_image, "python3", "-c", WORKLOAD])
        })?;
        println!(
            "    apptainer exec python3: cold {}, warm {}",
            format_duration(cold),
            format_duration(warm)
        );

        steps.run("exec: the image's Env and PATH, the calling user", || {
            let out = host.user(&[
                "exec",
                "--userns",
                &run_image,
                "sh",
                "-c",
                "printf '%s|%s|%s:%s\\n' \"$GREETING\" \"$PATH\" \"$(id -u)\" \"$(id -g)\"",
            ])?;
            expect(
                "apptainer exec",
                &out,
                &format!("{}|{IMAGE_PATH}|{}:{}\n", GREETING.1, USER.0, USER.1),
            )
        })?;
        steps.run("run: Entrypoint + Cmd in WorkingDir", || {
            let out = host.user(&["run", "--userns", &run_image])?;
            expect("apptainer run", &out, &entrypoint_output(&CMD))
        })?;
        steps.run("run with arguments: they replace Cmd", || {
            let args = ["x y", "$HOME", "\"z\""];
            let mut full = vec!["run", "--userns", &run_image];
            full.extend_from_slice(&args);
            let out = host.user(&full)?;
            expect("apptainer run ARGS", &out, &entrypoint_output(&args))
        })?;
        steps.run("shell --contain: commands on stdin see the image's Env", || {
            let script = format!(
                "echo 'echo \"shell $GREETING $(id -u)\"' | apptainer shell --contain --userns {run_image}"
            );
            let output = run_checked(
                &mut host
                    .sandbox
                    .command_as(USER.0, USER.1, "sh", &["-c", &script]),
                &host.work.log("apptainer"),
                APPTAINER_TIMEOUT,
            )?;
            let out = stdout_of(output)?;
            expect("apptainer shell", &out, &format!("shell {} {}\n", GREETING.1, USER.0))
        })?;
        steps.run("image without Cmd: run needs a command, exec works", || {
            let output = run_capture(
                &mut host
                    .sandbox
                    .command_as(USER.0, USER.1, "apptainer", &["run", "--userns", &bare_image]),
                &host.work.log("apptainer"),
                APPTAINER_TIMEOUT,
            )?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            ensure!(
                !output.status.success() && stderr.contains("neither Entrypoint nor Cmd"),
                "apptainer run of an image without Cmd: {}, stderr:\n{stderr}",
                output.status
            );
            let out = host.user(&["run", "--userns", &bare_image, "/bin/echo", "given"])?;
            expect("apptainer run CMD", &out, "given\n")?;
            let script = format!(
                "if [ -e {DELETED_FILE} ]; then echo present; else echo absent; fi; ls {OPAQUE_DIR}; cat {OPAQUE_DIR}/{}",
                OPAQUE_UPPER_FILE.0
            );
            let out = host.user(&["exec", "--userns", &bare_image, "sh", "-c", &script])?;
            expect(
                "whiteouts under apptainer exec",
                &out,
                &format!(
                    "absent\n{}\n{}",
                    OPAQUE_UPPER_FILE.0,
                    String::from_utf8_lossy(OPAQUE_UPPER_FILE.1)
                ),
            )
        })?;
        steps.run("root, privileged mode: exec sees the image's Env", || {
            let output = run_checked(
                &mut host.sandbox.command(
                    "apptainer",
                    &[
                        "exec",
                        "--drop-caps",
                        "CAP_SYS_RESOURCE",
                        &run_image,
                        "sh",
                        "-c",
                        "printf '%s|%s\\n' \"$GREETING\" \"$(id -u)\"",
                    ],
                ),
                &host.work.log("apptainer"),
                APPTAINER_TIMEOUT,
            )?;
            expect(
                "apptainer exec as root",
                &stdout_of(output)?,
                &format!("{}|0\n", GREETING.1),
            )
        })?;
        let mut mount = published.mount;
        mount
            .check_running()
            .context("the FUSE mount died during the test")?;
        println!("steps:\n{}", steps.summary());
        Ok(())
    });
}

/// The batch host: the sid sandbox with the mount at `/cvmfs/<fqrn>`.
struct Host<'a> {
    sandbox: SidSandbox,
    work: &'a WorkDir,
}

impl Host<'_> {
    /// `apptainer ARGS…` as [`USER`]; its stdout (a failure is an error with the log tail).
    fn user(&self, args: &[&str]) -> Result<String> {
        let output = run_checked(
            &mut self.sandbox.command_as(USER.0, USER.1, "apptainer", args),
            &self.work.log("apptainer"),
            APPTAINER_TIMEOUT,
        )?;
        stdout_of(output)
    }

    /// [`Host::user`], timed.
    fn timed_user(&self, args: &[&str]) -> Result<(Duration, String)> {
        let start = Instant::now();
        let out = self.user(args)?;
        Ok((start.elapsed(), out))
    }
}

fn stdout_of(output: Output) -> Result<String> {
    String::from_utf8(output.stdout).context("the command's output is not UTF-8")
}

fn expect(what: &str, got: &str, expected: &str) -> Result<()> {
    ensure!(
        got == expected,
        "{what} printed {got:?}, expected {expected:?}"
    );
    Ok(())
}

/// What the entrypoint script prints, run in [`WORKDIR`] with `args`.
fn entrypoint_output(args: &[&str]) -> String {
    format!(
        "pwd={WORKDIR} greeting={} args=[{}] n={}\n",
        GREETING.1,
        args.join(" "),
        args.len()
    )
}

/// Copies the cached test image's OCI layout into the work directory and adds the tags
/// `run` (entrypoint, cmd, env, working directory) and `bare` (neither entrypoint nor cmd)
/// with `umoci config`; returns the layout path.
fn image_variants(work: &WorkDir) -> Result<String> {
    let test_image = image::test_image(&image_cache_root()?)?;
    let layout = work.path().join("oci");
    run_checked(
        Command::new("cp")
            .arg("-a")
            .arg(&test_image.layout)
            .arg(&layout),
        &work.log("umoci"),
        Duration::from_secs(120),
    )?;
    let layout = layout
        .to_str()
        .context("the work directory's path is not UTF-8")?
        .to_owned();
    let from = format!("{layout}:{}", test_image.tag);
    let greeting = format!("{}={}", GREETING.0, GREETING.1);
    let path = format!("PATH={IMAGE_PATH}");
    let mut run = vec![
        "config",
        "--image",
        &from,
        "--tag",
        "run",
        "--config.env",
        &path,
        "--config.env",
        &greeting,
        "--config.workingdir",
        WORKDIR,
        "--config.entrypoint",
        "/bin/sh",
        "--config.entrypoint",
        "-c",
        "--config.entrypoint",
        ENTRYPOINT_SCRIPT,
        "--config.entrypoint",
        "entrypoint",
    ];
    for arg in CMD {
        run.extend(["--config.cmd", arg]);
    }
    let bare = [
        "config",
        "--image",
        &from,
        "--tag",
        "bare",
        "--clear",
        "config.cmd",
        "--clear",
        "config.entrypoint",
    ];
    for args in [&run[..], &bare[..]] {
        run_checked(
            Command::new("umoci").args(args),
            &work.log("umoci"),
            Duration::from_secs(120),
        )?;
    }
    Ok(layout)
}
