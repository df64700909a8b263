//! A private containerd (Debian's 1.6) for one test: own root, state, sockets and config,
//! with the Strata snapshotter registered as a proxy plugin.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::error::{Result, io_context};
use crate::process::{Service, run_capture, run_checked};

/// The proxy plugin name the tests register the Strata snapshotter under.
pub const SNAPSHOTTER_NAME: &str = "strata";
/// The containerd namespace the tests work in.
pub const NAMESPACE: &str = "strata-test";

/// Longest one `ctr` command may take (`ctr run` of a short workload included).
pub const CTR_TIMEOUT: Duration = Duration::from_secs(180);

/// A running private containerd; on drop its tasks and containers are removed, containerd
/// is stopped and any leftover shim of this instance is killed.
#[derive(Debug)]
pub struct Containerd {
    service: Service,
    socket: PathBuf,
    log: PathBuf,
}

impl Containerd {
    /// Writes `dir/config.toml` (config `version = 2`, root `dir/root`, state `dir/state`,
    /// gRPC socket `dir/containerd.sock`, CRI plugin disabled, proxy plugin
    /// [`SNAPSHOTTER_NAME`] at `snapshotter_socket`), starts containerd and waits until
    /// `ctr version` answers (60 s at most). `ctr` invocations are logged to `ctr_log`.
    pub fn start(
        dir: &Path,
        log: &Path,
        ctr_log: &Path,
        snapshotter_socket: &Path,
    ) -> Result<Containerd> {
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(&config, config_toml(dir, &socket, snapshotter_socket))
            .map_err(io_context(format!("write {}", config.display())))?;
        let mut command = Command::new("containerd");
        command.arg("--config").arg(&config);
        let mut service = Service::spawn("containerd", command, log)?;
        let probe_socket = socket.clone();
        let probe_log = ctr_log.to_owned();
        service.wait_ready("containerd (ctr version)", Duration::from_secs(60), || {
            if !probe_socket.exists() {
                return Ok(false);
            }
            let mut ctr = Command::new("ctr");
            ctr.arg("--address").arg(&probe_socket).arg("version");
            Ok(run_capture(&mut ctr, &probe_log, CTR_TIMEOUT)?
                .status
                .success())
        })?;
        Ok(Containerd {
            service,
            socket,
            log: ctr_log.to_owned(),
        })
    }

    /// The gRPC socket (`ctr --address`, `strata-snapshotter pull --address`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `ctr --address <socket> -n <NAMESPACE>` ready for a subcommand.
    pub fn ctr(&self) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", NAMESPACE]);
        command
    }

    /// Runs `ctr … args`; its output whatever the exit status (also logged).
    pub fn ctr_capture(&self, args: &[&str]) -> Result<Output> {
        run_capture(self.ctr().args(args), &self.log, CTR_TIMEOUT)
    }

    /// Runs `ctr … args`; error with the log tail if it fails.
    pub fn ctr_checked(&self, args: &[&str]) -> Result<Output> {
        run_checked(self.ctr().args(args), &self.log, CTR_TIMEOUT)
    }

    /// The server version line of `ctr version`.
    pub fn version(&self) -> Result<String> {
        let output = run_checked(
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .arg("version"),
            &self.log,
            CTR_TIMEOUT,
        )?;
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(text
            .split("Server:")
            .nth(1)
            .and_then(|s| s.lines().find_map(|l| l.trim().strip_prefix("Version:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default())
    }

    /// Snapshots of `snapshotter` as (key, kind) pairs from `ctr snapshots ls`
    /// (kind: `Committed`, `Active` or `View`).
    pub fn snapshots(&self, snapshotter: &str) -> Result<Vec<(String, String)>> {
        let output = self.ctr_checked(&["snapshots", "--snapshotter", snapshotter, "ls"])?;
        Ok(parse_snapshots(&String::from_utf8_lossy(&output.stdout)))
    }

    /// Kills and deletes every task and container of [`NAMESPACE`] (best effort).
    fn remove_workloads(&self) {
        if let Ok(out) = self.ctr_capture(&["tasks", "ls", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.ctr_capture(&["tasks", "kill", "-s", "SIGKILL", id]);
                let _ = self.ctr_capture(&["tasks", "delete", "-f", id]);
            }
        }
        if let Ok(out) = self.ctr_capture(&["containers", "ls", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.ctr_capture(&["containers", "delete", id]);
            }
        }
    }

    /// Kills shims started by this containerd (they daemonise out of its process group):
    /// processes whose command line names our socket.
    fn kill_shims(&self) {
        let needle = self.socket.to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("containerd-shim") && cmdline.contains(&needle) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Removes workloads, stops containerd, kills leftover shims.
    pub fn stop(&mut self) {
        self.remove_workloads();
        self.service.stop(Duration::from_secs(10));
        self.kill_shims();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config_toml(dir: &Path, socket: &Path, snapshotter_socket: &Path) -> String {
    format!(
        "version = 2\n\
         root = \"{root}\"\n\
         state = \"{state}\"\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         \n[grpc]\n  address = \"{socket}\"\n\
         \n[ttrpc]\n  address = \"{socket}.ttrpc\"\n\
         \n[debug]\n  address = \"\"\n\
         \n[proxy_plugins.{name}]\n  type = \"snapshot\"\n  address = \"{snap}\"\n",
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        socket = socket.display(),
        name = SNAPSHOTTER_NAME,
        snap = snapshotter_socket.display(),
    )
}

fn parse_snapshots(text: &str) -> Vec<(String, String)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(((*fields.first()?).to_owned(), (*fields.last()?).to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_registers_the_proxy_plugin() {
        let text = config_toml(
            Path::new("/w"),
            Path::new("/w/c.sock"),
            Path::new("/s/snap.sock"),
        );
        assert!(text.starts_with("version = 2\n"));
        assert!(text.contains("root = \"/w/root\""));
        assert!(text.contains(
            "[proxy_plugins.strata]\n  type = \"snapshot\"\n  address = \"/s/snap.sock\""
        ));
        assert!(text.contains("address = \"/w/c.sock.ttrpc\""));
    }

    #[test]
    fn parses_ctr_snapshot_listing() {
        let text = "KEY                                                                     PARENT KIND\n\
                    sha256:aa                                                                      Committed\n\
                    sha256:bb                                                               sha256:aa Committed\n\
                    c1                                                                      sha256:bb Active\n";
        assert_eq!(
            parse_snapshots(text),
            vec![
                ("sha256:aa".into(), "Committed".into()),
                ("sha256:bb".into(), "Committed".into()),
                ("c1".into(), "Active".into()),
            ]
        );
    }
}
