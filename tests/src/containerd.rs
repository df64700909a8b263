//! A private containerd for one test: own root, state, sockets and config, with the Strata
//! snapshotter registered as a proxy plugin. Debian 12's 1.6 with a minimal config by
//! default; or a [`Release`] (1.6, or 1.7 and 2.x from `scripts/install-runtimes`) configured
//! with its deploy snippet, `deploy/containerd/config-<release>.toml`, as the deploy guide
//! tells operators to.

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
    /// The `ctr` of the same release.
    ctr: PathBuf,
}

/// A containerd release and its documented config snippet.
#[derive(Debug, Clone)]
pub struct Release {
    /// The snippet's name: `deploy/containerd/config-<name>.toml` (`1.6`, `1.7`, `2.x`).
    pub name: String,
    /// Where `containerd`, `ctr` and `containerd-shim-runc-v2` are; `None`: the system's
    /// (`PATH`).
    pub bin_dir: Option<PathBuf>,
    /// Configure the snippet's documented alternative for containerd ≥ 2.1's Transfer
    /// Service: its `disable_snapshot_annotations` line is left out (that setting makes
    /// CRI fall back to the local pull), so CRI pulls go through the Transfer Service and
    /// its `unpack_config`.
    pub transfer_service_cri: bool,
}

impl Release {
    /// `path` of a program of this release: in [`Release::bin_dir`], or looked up on `PATH`.
    pub fn program(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    /// `containerd` of this release, with its directory first on `PATH` (for its shim).
    pub fn containerd_command(&self) -> Result<Command> {
        let mut command = Command::new(self.program("containerd"));
        if let Some(bin) = &self.bin_dir {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let joined = std::env::join_paths(
                std::iter::once(bin.clone()).chain(std::env::split_paths(&path)),
            )
            .map_err(|e| {
                crate::error::Error::Invalid(format!("PATH with {}: {e}", bin.display()))
            })?;
            command.env("PATH", joined);
        }
        Ok(command)
    }

    /// The deploy snippet, `deploy/containerd/config-<name>.toml` of this repository.
    pub fn snippet_path(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/containerd")
            .join(format!("config-{}.toml", self.name))
    }

    /// The snippet as configured: as documented, or with its `disable_snapshot_annotations`
    /// setting left out ([`Release::transfer_service_cri`]; an error if it has none).
    pub fn snippet(&self) -> Result<String> {
        let path = self.snippet_path();
        let text = std::fs::read_to_string(&path)
            .map_err(io_context(format!("read {}", path.display())))?;
        if !self.transfer_service_cri {
            return Ok(text);
        }
        let setting = |l: &str| l.trim_start().starts_with("disable_snapshot_annotations");
        if !text.lines().any(setting) {
            return Err(crate::error::Error::Invalid(format!(
                "{}: no disable_snapshot_annotations line to leave out for the Transfer Service",
                path.display()
            )));
        }
        Ok(text
            .lines()
            .filter(|l| !setting(l))
            .map(|l| format!("{l}\n"))
            .collect())
    }
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
        let config = config_toml(dir, &socket, snapshotter_socket);
        let system = Release {
            name: "1.6".into(),
            bin_dir: None,
            transfer_service_cri: false,
        };
        Containerd::start_with_config(dir, log, ctr_log, &system, &config)
    }

    /// As [`Containerd::start`], for `release` and configured with its deploy snippet
    /// ([`Release::snippet_path`]): the snippet's proxy socket and containerd root become
    /// the test's, and the private root, state and sockets are added. The CRI plugin runs
    /// with the snippet's settings (it must accept them; no pod is started); its image
    /// pulls reach the test registry `registry` (`host:port`) over plain HTTP through a
    /// `hosts.toml` in `dir/certs.d` (the registry `config_path`, as a site configures a
    /// mirror).
    pub fn start_release(
        dir: &Path,
        log: &Path,
        ctr_log: &Path,
        snapshotter_socket: &Path,
        release: &Release,
        registry: &str,
    ) -> Result<Containerd> {
        let snippet = release.snippet()?;
        let socket = dir.join("containerd.sock");
        let hosts_dir = dir.join("certs.d");
        let host_dir = hosts_dir.join(registry);
        std::fs::create_dir_all(&host_dir)
            .map_err(io_context(format!("create {}", host_dir.display())))?;
        let hosts_toml = host_dir.join("hosts.toml");
        std::fs::write(&hosts_toml, plain_http_hosts_toml(registry))
            .map_err(io_context(format!("write {}", hosts_toml.display())))?;
        let mut config = release_config_toml(dir, &socket, snapshotter_socket, &snippet);
        config.push_str(&cri_registry_toml(&snippet, &hosts_dir));
        Containerd::start_with_config(dir, log, ctr_log, release, &config)
    }

    /// Writes `config` to `dir/config.toml`, starts `release`'s containerd with it (its
    /// directory first on `PATH`, for the shim) and waits until `ctr version` answers.
    fn start_with_config(
        dir: &Path,
        log: &Path,
        ctr_log: &Path,
        release: &Release,
        config: &str,
    ) -> Result<Containerd> {
        let socket = dir.join("containerd.sock");
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config)
            .map_err(io_context(format!("write {}", config_path.display())))?;
        let mut command = release.containerd_command()?;
        command.arg("--config").arg(&config_path);
        let mut service = Service::spawn("containerd", command, log)?;
        let ctr_program = release.program("ctr");
        let probe_socket = socket.clone();
        let probe_log = ctr_log.to_owned();
        service.wait_ready("containerd (ctr version)", Duration::from_secs(60), || {
            if !probe_socket.exists() {
                return Ok(false);
            }
            let mut ctr = Command::new(&ctr_program);
            ctr.arg("--address").arg(&probe_socket).arg("version");
            Ok(run_capture(&mut ctr, &probe_log, CTR_TIMEOUT)?
                .status
                .success())
        })?;
        Ok(Containerd {
            service,
            socket,
            log: ctr_log.to_owned(),
            ctr: ctr_program,
        })
    }

    /// containerd's own log (stdout and stderr) so far.
    pub fn log_text(&self) -> Result<String> {
        let log = self.service.log();
        std::fs::read_to_string(log).map_err(io_context(format!("read {}", log.display())))
    }

    /// The gRPC socket (`ctr --address`, `strata-snapshotter pull --address`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `ctr --address <socket> -n <NAMESPACE>` ready for a subcommand.
    pub fn ctr(&self) -> Command {
        self.ctr_namespace(NAMESPACE)
    }

    /// `ctr --address <socket> -n <namespace>` ready for a subcommand.
    fn ctr_namespace(&self, namespace: &str) -> Command {
        let mut command = Command::new(&self.ctr);
        command
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", namespace]);
        command
    }

    /// Runs `ctr -n namespace … args` (another namespace than [`NAMESPACE`], e.g. the CRI
    /// plugin's `k8s.io`); error with the log tail if it fails.
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Result<Output> {
        run_checked(
            self.ctr_namespace(namespace).args(args),
            &self.log,
            CTR_TIMEOUT,
        )
    }

    /// Runs `ctr … args`; its output whatever the exit status (also logged).
    pub fn ctr_capture(&self, args: &[&str]) -> Result<Output> {
        run_capture(self.ctr().args(args), &self.log, CTR_TIMEOUT)
    }

    /// Runs `ctr … args`; error with the log tail if it fails.
    pub fn ctr_checked(&self, args: &[&str]) -> Result<Output> {
        self.ctr_in(NAMESPACE, args)
    }

    /// The server version line of `ctr version`.
    pub fn version(&self) -> Result<String> {
        let output = run_checked(
            Command::new(&self.ctr)
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

/// A deploy snippet made private: its proxy socket (`/run/strata/snapshotter.sock`) and
/// containerd root (`/var/lib/containerd`, the snapshotter's exported root) become the test's,
/// and the test's root, state and sockets are added (top-level keys before the snippet, whose
/// own top-level keys, `version`, come before its tables; `[grpc]` etc. after it).
fn release_config_toml(
    dir: &Path,
    socket: &Path,
    snapshotter_socket: &Path,
    snippet: &str,
) -> String {
    let root = dir.join("root");
    let snippet = snippet
        .replace(
            "/run/strata/snapshotter.sock",
            &snapshotter_socket.display().to_string(),
        )
        .replace("/var/lib/containerd", &root.display().to_string());
    format!(
        "root = \"{root}\"\n\
         state = \"{state}\"\n\
         \n{snippet}\n\
         \n[grpc]\n  address = \"{socket}\"\n\
         \n[ttrpc]\n  address = \"{socket}.ttrpc\"\n\
         \n[debug]\n  address = \"\"\n",
        root = root.display(),
        state = dir.join("state").display(),
        socket = socket.display(),
    )
}

/// containerd's `hosts.toml` for a registry served over plain HTTP at `host` (`host:port`).
fn plain_http_hosts_toml(host: &str) -> String {
    format!(
        "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// The CRI plugin's registry `config_path` table for a deploy snippet: the images plugin's
/// in config version 3 (containerd 2.x), the CRI plugin's in version 2 (1.6, 1.7).
fn cri_registry_toml(snippet: &str, hosts_dir: &Path) -> String {
    let table = if snippet.lines().any(|l| l.trim() == "version = 3") {
        "plugins.'io.containerd.cri.v1.images'.registry"
    } else {
        "plugins.\"io.containerd.grpc.v1.cri\".registry"
    };
    format!("\n[{table}]\n  config_path = \"{}\"\n", hosts_dir.display())
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
    fn release_config_makes_the_deploy_snippet_private() {
        let snippet = "# c\nversion = 3\n\n[proxy_plugins]\n  [proxy_plugins.strata]\n    \
                       address = \"/run/strata/snapshotter.sock\"\n    \
                       [proxy_plugins.strata.exports]\n      \
                       root = \"/var/lib/containerd/io.containerd.snapshotter.v1.strata\"\n";
        let text = release_config_toml(
            Path::new("/w"),
            Path::new("/w/c.sock"),
            Path::new("/s/snap.sock"),
            snippet,
        );
        assert!(
            text.starts_with("root = \"/w/root\"\nstate = \"/w/state\"\n"),
            "{text}"
        );
        assert!(text.contains("version = 3\n"));
        assert!(text.contains("address = \"/s/snap.sock\""));
        assert!(text.contains("root = \"/w/root/io.containerd.snapshotter.v1.strata\""));
        assert!(!text.contains("/run/strata") && !text.contains("/var/lib/containerd"));
        // top-level keys before the first table, [grpc] after the snippet's tables
        let first_table = text.find('[').unwrap_or(0);
        assert!(text.find("version = 3").unwrap_or(usize::MAX) < first_table);
        assert!(text.contains("[grpc]\n  address = \"/w/c.sock\""));
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

    #[test]
    fn the_transfer_service_variant_leaves_out_only_disable_snapshot_annotations() {
        let mut release = Release {
            name: "2.x".into(),
            bin_dir: None,
            transfer_service_cri: false,
        };
        let documented = release.snippet().expect("2.x snippet");
        assert!(documented.contains("disable_snapshot_annotations = false"));
        release.transfer_service_cri = true;
        let transfer = release.snippet().expect("2.x snippet, Transfer Service");
        assert!(
            !transfer.contains("disable_snapshot_annotations"),
            "{transfer}"
        );
        assert!(transfer.contains("unpack_config"), "{transfer}");
        assert_eq!(
            documented.lines().count(),
            transfer.lines().count() + 1,
            "one line left out"
        );
        release.name = "nonexistent".into();
        assert!(release.snippet().is_err());
    }

    #[test]
    fn the_cri_registry_table_follows_the_config_version() {
        let hosts = Path::new("/w/certs.d");
        assert_eq!(
            cri_registry_toml("version = 3\n", hosts),
            "\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = \"/w/certs.d\"\n"
        );
        assert!(
            cri_registry_toml("version = 2\n", hosts)
                .contains("[plugins.\"io.containerd.grpc.v1.cri\".registry]")
        );
        assert_eq!(
            plain_http_hosts_toml("127.0.0.1:5000"),
            "server = \"http://127.0.0.1:5000\"\n\n[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
    }
}
