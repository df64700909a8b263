//! `strata-snapshotter run` and `pull` against a private containerd — Debian 12's 1.6, or
//! 1.7 or 2.x when `STRATA_CONTAINERD_RELEASE` says so ([`release`]) — driven with `ctr`. The repository "mount point" is a plain directory tree laid out as
//! CONTRACTS §3 describes (`.layers`, `.chainids`, `.metadata`), so no FUSE is involved;
//! running a container is covered by the workspace end-to-end test.
//!
//! The tests of the kubelet's CRI pull, non-root users, setuid and file-capability
//! binaries, other runtimes, `--flat-lowerdir` and `--plain-mountpoint` run on the real
//! stack instead ([`stack`]: registry, `strata-publisher`, FUSE mount and its plain
//! mount; `run --plain-mountpoint` as deployed).
//!
//! Needs root (containerd) and the `containerd` and `ctr` binaries; fails without them.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use namespace::paths;
use tests::image::sha256_digest;
use tests::keeper::{EventKind, Keeper};
use tests::net::{free_addr, http_get};
use tests::ok;
use tests::process::{Service, Spawn, tail};
use tests::wait::wait_until;

mod stack;

const NAMESPACE: &str = "strata-it";
const SNAPSHOTTER: &str = "strata";
const IMAGE: &str = "127.0.0.1:5000/demo:1";

/// The containerd these tests run against: Debian 12's 1.6, or the release
/// `STRATA_CONTAINERD_RELEASE` names (`1.7`, `2.x`; `scripts/test` runs them on each).
fn release() -> tests::containerd::Release {
    tests::runtimes::containerd_release_from_env()
        .unwrap_or_else(|e| panic!("the containerd release to test: {e}"))
}

/// Starts a service as this file's tests always have: a fresh log each start, and signals
/// to its pid only (containerd's shims are not in its process group anyway).
fn spawn(name: &str, command: Command, log: &Path) -> Service {
    let how = Spawn {
        fresh_log: true,
        pid_only: true,
    };
    Service::spawn_with(name, command, log, how).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits (30 s at most) until `service` listens on `socket`; panics with its log if it
/// exits first or never listens.
fn wait_socket(service: &mut Service, socket: &Path) {
    let what = format!("{} to listen on {}", service.name(), socket.display());
    if let Err(e) = service.wait_ready(&what, Duration::from_secs(30), || {
        Ok(UnixStream::connect(socket).is_ok())
    }) {
        panic!("{e}:\n{}", service.log_text());
    }
}

/// containerd + our snapshotter in one temp dir. Field order = drop order: containerd
/// stops before the snapshotter; running tasks are killed first (`Drop for Env`).
struct Env {
    containerd: Service,
    snapshotter: Service,
    address: PathBuf,
    snap_socket: PathBuf,
    mountpoint: PathBuf,
    root: PathBuf,
    run_args: Vec<String>,
    /// `--plain-mountpoint` of `run`, if any.
    plain_mountpoint: Option<PathBuf>,
    /// The `ctr` of the containerd release under test ([`release`]).
    ctr: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Env {
    fn drop(&mut self) {
        // Containers outlive containerd (shims); never leave them behind, in any namespace.
        let (_, namespaces) = self.ctr_raw(&["namespaces", "ls", "-q"]);
        let mut all: Vec<&str> = namespaces.split_whitespace().collect();
        if !all.contains(&NAMESPACE) {
            all.push(NAMESPACE);
        }
        for ns in all {
            let (_, tasks) = self.ctr_raw_in(ns, &["tasks", "ls", "-q"]);
            for task in tasks.split_whitespace() {
                let _ = self.ctr_raw_in(ns, &["tasks", "kill", "-s", "SIGKILL", task]);
            }
            for task in tasks.split_whitespace() {
                for _ in 0..50 {
                    if self.ctr_raw_in(ns, &["tasks", "rm", "-f", task]).0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = self.ctr_raw_in(ns, &["containers", "rm", task]);
            }
        }
    }
}

/// How [`Env::start_opts`] sets containerd and the snapshotter up.
#[derive(Clone, Debug, Default)]
struct Options {
    /// Extra flags of `strata-snapshotter run`.
    run_args: Vec<String>,
    /// The repository mount point; default a plain directory `<tmp>/mnt` (fake mount).
    mountpoint: Option<PathBuf>,
    /// `run --plain-mountpoint` (the mount's xattr-less second session); default none.
    plain_mountpoint: Option<PathBuf>,
    /// Enable containerd's CRI plugin (kubelet's path) with our snapshotter, snapshot
    /// annotations on, and a plain-HTTP mirror for this registry `host:port`; `None`
    /// disables the plugin.
    cri_registry: Option<String>,
}

/// The CRI part of containerd's config for `opts` (module doc of [`Options`]): without a
/// registry, the plugin is disabled; with one, CNI points at empty directories (pulls need
/// no network plugin) and the registry is reached over plain HTTP.
fn cri_config(opts: &Options, dir: &Path) -> String {
    let Some(registry) = &opts.cri_registry else {
        return "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n".to_string();
    };
    format!(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n\
         \x20 stream_server_port = \"0\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
         \x20 snapshotter = \"{SNAPSHOTTER}\"\n\
         \x20 disable_snapshot_annotations = false\n\
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
         \x20 bin_dir = \"{cni}/bin\"\n\
         \x20 conf_dir = \"{cni}/net.d\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{registry}\"]\n\
         \x20 endpoint = [\"http://{registry}\"]\n",
        cni = dir.join("cni").display(),
    )
}

/// Starts `strata-snapshotter run` for `env`-like paths with extra flags (and
/// `--plain-mountpoint plain` when given).
fn spawn_snapshotter(
    socket: &Path,
    root: &Path,
    mountpoint: &Path,
    plain: Option<&Path>,
    extra: &[String],
    log: &Path,
) -> Service {
    let mut run = Command::new(env!("CARGO_BIN_EXE_strata-snapshotter"));
    run.arg("run")
        .arg("--socket")
        .arg(socket)
        .arg("--root")
        .arg(root)
        .arg("--mountpoint")
        .arg(mountpoint)
        .arg("--name")
        .arg(SNAPSHOTTER)
        .args(extra)
        .env("RUST_LOG", "info,snapshotter=debug");
    if let Some(plain) = plain {
        run.arg("--plain-mountpoint").arg(plain);
    }
    let mut p = spawn("strata-snapshotter run", run, log);
    wait_socket(&mut p, socket);
    p
}

impl Env {
    fn start() -> Env {
        Env::start_with(&[])
    }

    /// Kills `run` (SIGKILL when `kill`, else SIGTERM), waits for it to go and starts it
    /// again with the same flags; its log continues in `run.log`.
    fn restart_snapshotter(&mut self, kill: bool) {
        let pid = self.snapshotter.pid().expect("run is running");
        let signal = if kill {
            nix::sys::signal::Signal::SIGKILL
        } else {
            nix::sys::signal::Signal::SIGTERM
        };
        self.snapshotter.stop_with(signal, Duration::from_secs(60));
        let previous = self.snapshotter.log_text();
        let log = self.dir.path().join("run.log");
        let old_log = self.dir.path().join(format!("run-{pid}.log"));
        std::fs::write(&old_log, previous).expect("save log");
        self.snapshotter = spawn_snapshotter(
            &self.snap_socket,
            &self.root,
            &self.mountpoint,
            self.plain_mountpoint.as_deref(),
            &self.run_args,
            &log,
        );
        // containerd's proxy connection backs off after the socket went away (at most
        // 3 s in containerd 1.6); calls fail fast meanwhile, so wait until it reconnects.
        self.wait_for("containerd to reconnect to the snapshotter", || {
            self.ctr_raw(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"])
                .0
        });
    }

    fn start_with(extra: &[&str]) -> Env {
        Env::start_opts(Options {
            run_args: extra.iter().map(|s| s.to_string()).collect(),
            ..Options::default()
        })
    }

    fn start_opts(opts: Options) -> Env {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root to run containerd"
        );
        let dir = tempfile::Builder::new()
            .prefix("strata-ctd")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let address = d.join("containerd.sock");
        let snap_socket = d.join("strata.sock");
        let mountpoint = opts.mountpoint.clone().unwrap_or_else(|| d.join("mnt"));
        let root = d.join("strata-root");
        std::fs::create_dir_all(&mountpoint).expect("mkdir mnt");

        let run_args = opts.run_args.clone();
        let plain_mountpoint = opts.plain_mountpoint.clone();
        let snapshotter = spawn_snapshotter(
            &snap_socket,
            &root,
            &mountpoint,
            plain_mountpoint.as_deref(),
            &run_args,
            &d.join("run.log"),
        );

        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\n\
                 root = \"{root}\"\n\
                 state = \"{state}\"\n\
                 {cri}\
                 [grpc]\n  address = \"{sock}\"\n\
                 [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [debug]\n  address = \"\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n\
                 [proxy_plugins.{name}]\n  type = \"snapshot\"\n  address = \"{snap}\"\n",
                root = d.join("ctd-root").display(),
                state = d.join("ctd-state").display(),
                sock = address.display(),
                opt = d.join("opt").display(),
                name = SNAPSHOTTER,
                snap = snap_socket.display(),
                cri = cri_config(&opts, d),
            ),
        )
        .expect("write config");
        let release = release();
        let mut cmd = release.containerd_command().expect("containerd command");
        cmd.arg("--config").arg(&config);
        let mut containerd = spawn("containerd", cmd, &d.join("containerd.log"));
        wait_socket(&mut containerd, &address);
        let env = Env {
            containerd,
            snapshotter,
            address,
            snap_socket,
            mountpoint,
            root,
            run_args,
            plain_mountpoint,
            ctr: release.program("ctr"),
            dir,
        };
        // containerd answers only once its plugins are loaded.
        let ready = || env.ctr_raw(&["version"]).0;
        if let Err(e) = wait_until(
            "containerd to answer",
            Duration::from_secs(30),
            Duration::from_millis(100),
            ready,
        ) {
            panic!("{e}:\n{}", env.containerd.log_text());
        }
        env
    }

    /// For failure messages: the snapshotter's whole log and the last `lines` lines of
    /// containerd's.
    fn logs(&self, lines: usize) -> String {
        format!(
            "--- snapshotter log:\n{}\n--- containerd log (tail):\n{}",
            self.snapshotter.log_text(),
            tail(self.containerd.log(), lines)
        )
    }

    fn ctr_raw(&self, args: &[&str]) -> (bool, String) {
        self.ctr_raw_in(NAMESPACE, args)
    }

    /// `ctr -n namespace args…`: (success, stdout+stderr).
    fn ctr_raw_in(&self, namespace: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.address)
            .arg("-n")
            .arg(namespace)
            .args(args)
            .output()
            .expect("run ctr");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Runs `ctr -n NAMESPACE args…`, panics (with both logs) on failure; returns stdout+err.
    fn ctr(&self, args: &[&str]) -> String {
        self.ctr_in(NAMESPACE, args)
    }

    /// As [`Env::ctr`] in `namespace`.
    fn ctr_in(&self, namespace: &str, args: &[&str]) -> String {
        let (ok, text) = self.ctr_raw_in(namespace, args);
        assert!(ok, "ctr {args:?} failed:\n{text}\n{}", self.logs(40));
        text
    }

    /// Runs `/bin/sh -c script` in a container `id` of `image` on the snapshotter (as
    /// [`Env::ctr`], removed when it exits); returns its output.
    fn run_sh(&self, image: &str, id: &str, script: &str) -> String {
        self.ctr(&run_args(image, id, &["/bin/sh", "-c", script]))
    }

    fn snap(&self, args: &[&str]) -> String {
        let mut all = vec!["snapshots", "--snapshotter", SNAPSHOTTER];
        all.extend_from_slice(args);
        self.ctr(&all)
    }

    /// `ctr snapshots prepare|view KEY PARENT`, then a `containerd.io/gc.root` label: ctr
    /// holds a lease only while the command runs, and containerd's garbage collector (run
    /// after any later deletion) may otherwise remove the snapshot before the test uses it.
    fn snap_rooted(&self, verb: &str, key: &str, parent: &str) {
        self.snap(&[verb, key, parent]);
        self.snap(&["label", key, "containerd.io/gc.root=2026-01-01T00:00:00Z"]);
    }

    fn pull(&self, reference: &str) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_strata-snapshotter"))
            .arg("pull")
            .arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(NAMESPACE)
            .arg("--snapshotter")
            .arg(SNAPSHOTTER)
            .arg("--mountpoint")
            .arg(&self.mountpoint)
            .arg(reference)
            .output()
            .expect("run pull")
    }
}

/// The arguments of `ctr run --rm --snapshotter strata image id command…`.
fn run_args<'a>(image: &'a str, id: &'a str, command: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--rm", "--snapshotter", SNAPSHOTTER, image, id];
    args.extend_from_slice(command);
    args
}

fn typed(digest: &str) -> namespace::Digest {
    digest
        .parse()
        .unwrap_or_else(|e| panic!("test digest: {e}"))
}

/// `M/.layers/<hh>/<hex>/layerfs` of the layer `digest` (CONTRACTS §3).
fn layerfs_of(mount: &Path, digest: &str) -> PathBuf {
    mount.join(paths::join(&paths::layerfs(&typed(digest))))
}

/// The ChainIDs of `diff_ids` (OCI image spec), as text.
fn chain_ids_of(diff_ids: &[String]) -> Vec<String> {
    let diff_ids: Vec<namespace::Digest> = diff_ids.iter().map(|d| typed(d)).collect();
    namespace::chain_ids(&diff_ids)
        .iter()
        .map(|c| c.to_string())
        .collect()
}

/// `M/.chainids/<hh>/<chain hex>` → the layerfs of `layer_digest`.
fn link_chain(mount: &Path, chain: &str, layer_digest: &str) {
    let link = mount.join(paths::join(&paths::chainid_link(&typed(chain))));
    std::fs::create_dir_all(link.parent().expect("parent")).expect("mkdir chainids");
    std::os::unix::fs::symlink(paths::chainid_target(&typed(layer_digest)), link).expect("symlink");
}

/// (config, manifest) bytes of a linux/amd64 image of gzip layers `(digest, size)`.
fn image_documents(diff_ids: &[String], layers: &[(String, usize)]) -> (Vec<u8>, Vec<u8>) {
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes();
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(d, size)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d,
                "size": size,
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256_digest(&config),
            "size": config.len(),
        },
        "layers": layers,
    })
    .to_string()
    .into_bytes();
    (config, manifest)
}

/// `M/.metadata/<reference>/{manifest,config}.json`.
fn write_metadata(mount: &Path, reference: &str, manifest: &[u8], config: &[u8]) {
    let meta = mount.join(".metadata").join(reference);
    std::fs::create_dir_all(&meta).expect("mkdir metadata");
    std::fs::write(meta.join("manifest.json"), manifest).expect("write manifest");
    std::fs::write(meta.join("config.json"), config).expect("write config");
}

/// A published image in the fake mount: per layer a `layerfs` with one file, `.chainids`
/// links, and `.metadata/<ref>/{manifest,config}.json`. Returns (layer digests, chain ids).
fn publish(
    mount: &Path,
    reference: &str,
    files: &[&str],
    publish_layers: bool,
) -> (Vec<String>, Vec<String>) {
    let mut layer_digests = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, file) in files.iter().enumerate() {
        // Stand-ins for compressed/uncompressed digests: any distinct sha256 values do.
        let digest = sha256_digest(format!("{reference} layer {i} compressed").as_bytes());
        let diff = sha256_digest(format!("{reference} layer {i} tar").as_bytes());
        if publish_layers {
            let layerfs = layerfs_of(mount, &digest);
            std::fs::create_dir_all(layerfs.join("etc")).expect("mkdir layerfs");
            std::fs::write(layerfs.join("etc").join(file), format!("layer{i}\n")).expect("write");
            if i == 0 {
                install_shell(&layerfs);
            }
        }
        layer_digests.push(digest);
        diff_ids.push(diff);
    }
    let chain_ids = chain_ids_of(&diff_ids);
    if publish_layers {
        for (chain, digest) in chain_ids.iter().zip(&layer_digests) {
            link_chain(mount, chain, digest);
        }
    }
    // Sizes are stand-ins too: nothing reads these blobs.
    let sized: Vec<(String, usize)> = layer_digests.iter().map(|d| (d.clone(), 1234)).collect();
    let (config, manifest) = image_documents(&diff_ids, &sized);
    write_metadata(mount, reference, &manifest, &config);
    (layer_digests, chain_ids)
}

/// Copies `/bin/dash` (as `bin/sh`), `/bin/sleep` and the shared libraries `ldd` lists for
/// them into `layerfs`: just enough for `ctr run … /bin/sh -c …` loops.
fn install_shell(layerfs: &Path) {
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    };
    copy(Path::new("/bin/dash"), &layerfs.join("bin/sh"));
    copy(Path::new("/bin/sleep"), &layerfs.join("bin/sleep"));
    let ldd = Command::new("ldd")
        .arg("/bin/dash")
        .arg("/bin/sleep")
        .output()
        .expect("run ldd");
    for line in String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter(|l| !l.trim_end().ends_with(':'))
    {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(lib) = path {
            let real = lib.canonicalize().expect("canonicalize library");
            copy(
                &real,
                &layerfs.join(lib.strip_prefix("/").expect("absolute")),
            );
        }
    }
}

/// The KIND column of `ctr snapshots ls` for `key` (KEY PARENT KIND).
fn kind_of(listing: &str, key: &str) -> Option<String> {
    listing.lines().find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.first() == Some(&key)).then(|| cols.last().unwrap_or(&"").to_string())
    })
}

#[test]
fn local_snapshots_through_containerd() {
    let env = Env::start();
    env.snap(&["prepare", "base-active"]);
    let ls = env.snap(&["ls"]);
    assert_eq!(
        kind_of(&ls, "base-active").as_deref(),
        Some("Active"),
        "{ls}"
    );
    let m = env.snap(&["mounts", "/tmp/target", "base-active"]);
    assert!(m.contains("bind") && m.contains("rw"), "{m}");
    assert!(
        m.contains(&format!("{}/snapshots/", env.root.display())),
        "{m}"
    );

    env.snap(&["commit", "base", "base-active"]);
    let ls = env.snap(&["ls"]);
    assert_eq!(kind_of(&ls, "base").as_deref(), Some("Committed"), "{ls}");
    assert_eq!(kind_of(&ls, "base-active"), None, "{ls}");

    env.snap_rooted("prepare", "child", "base");
    let m = env.snap(&["mounts", "/tmp/target", "child"]);
    assert!(m.contains("overlay"), "{m}");
    assert!(
        m.contains("upperdir=") && m.contains("workdir=") && m.contains("lowerdir="),
        "{m}"
    );

    env.snap_rooted("view", "ro", "base");
    let m = env.snap(&["mounts", "/tmp/target", "ro"]);
    assert!(m.contains("bind") && m.contains("ro"), "{m}");

    // A parent with children cannot go (containerd checks this itself too).
    let (ok, _) = env.ctr_raw(&["snapshots", "--snapshotter", SNAPSHOTTER, "rm", "base"]);
    assert!(!ok, "removing a parent must fail");
    env.snap(&["rm", "child"]);
    env.snap(&["rm", "ro"]);
    env.snap(&["rm", "base"]);
    let ls = env.snap(&["ls"]);
    assert_eq!(kind_of(&ls, "base"), None, "{ls}");
    assert!(env.dir.path().exists());
}

#[test]
fn pull_commits_remote_layers_and_creates_image() {
    let env = Env::start();
    let (layers, chains) = publish(&env.mountpoint, IMAGE, &["a", "b", "c"], true);

    let stdout = env.pull_ok(IMAGE);
    for step in ["metadata:", "connect:", "content and snapshots:", "image:"] {
        assert!(stdout.contains(step), "no timing for {step}: {stdout}");
    }
    assert!(stdout.contains("3 layers from the repository"), "{stdout}");

    let images = env.ctr(&["images", "ls"]);
    assert!(images.contains(IMAGE), "{images}");
    let ls = env.snap(&["ls"]);
    for chain in &chains {
        assert_eq!(
            kind_of(&ls, chain).as_deref(),
            Some("Committed"),
            "{chain}: {ls}"
        );
    }
    let info = env.snap(&["info", &chains[2]]);
    assert!(info.contains("containerd.io/snapshot/remote"), "{info}");
    assert!(info.contains(&chains[1]), "parent of the top layer: {info}");

    // The snapshotter logged one remote decision per layer.
    let log = env.snapshotter.log_text();
    assert_eq!(log.matches("remote: layer published").count(), 3, "{log}");

    // A container snapshot on top stacks the three layerfs dirs, top first.
    env.snap_rooted("prepare", "ctr-rootfs", &chains[2]);
    let m = env.snap(&["mounts", "/tmp/target", "ctr-rootfs"]);
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|d| layerfs_of(&env.mountpoint, d).display().to_string())
        .collect();
    assert!(
        m.contains(&format!("lowerdir={}", lower.join(":"))),
        "{m}\nexpected {lower:?}"
    );
    env.snap(&["rm", "ctr-rootfs"]);

    // ctr considers the image unpacked (it Stats the top ChainID) and runs a container on
    // an overlay of the three remote layers plus a local upper dir.
    let out = env.run_sh(IMAGE, "strata-it-run", "read a < /etc/a; read c < /etc/c; echo \"$a-$c\"; echo x > /etc/new; read n < /etc/new; echo $n");
    assert_eq!(out.trim(), "layer0-layer2\nx", "{out}");

    // Pulling again is idempotent: everything is already there.
    let out = env.pull(IMAGE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 already present"), "{stdout}");

    // The image is usable by ctr's own bookkeeping: its content resolves.
    let usage = env.ctr(&["images", "check"]);
    assert!(usage.contains(IMAGE), "{usage}");
}

#[test]
fn pull_of_unpublished_layer_fails_naming_it() {
    let env = Env::start();
    let reference = "127.0.0.1:5000/missing:1";
    let (layers, _chains) = publish(&env.mountpoint, reference, &["x"], false);
    let out = env.pull(reference);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pull must fail");
    assert!(stderr.contains("not published"), "{stderr}");
    assert!(stderr.contains(&layers[0]), "{stderr}");
    let log = env.snapshotter.log_text();
    assert!(log.contains("fallback to local snapshot"), "{log}");

    // Nothing half-done stays behind as an image.
    let images = env.ctr(&["images", "ls"]);
    assert!(!images.contains(reference), "{images}");

    // And an unknown reference is a clear error too.
    let out = env.pull("127.0.0.1:5000/nothing:1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("manifests/1"), "{stderr}");
}

impl Env {
    /// `pull` that must succeed; returns its stdout.
    fn pull_ok(&self, reference: &str) -> String {
        let out = self.pull(reference);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "pull failed:\n{stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs(40)
        );
        stdout
    }

    /// The first line of `/state` inside task `task` (written by [`READER_LOOP`]).
    fn reader_state(&self, task: &str) -> (u64, String) {
        // The loop truncates and rewrites the file: retry a read that catches it empty.
        for attempt in 0..50 {
            let exec = format!("state-{attempt}");
            let out = self.ctr(&[
                "tasks",
                "exec",
                "--exec-id",
                &exec,
                task,
                "/bin/sh",
                "-c",
                "read x < /state; echo $x",
            ]);
            let line = out.trim().to_string();
            if let Some((n, rest)) = line.split_once(' ')
                && let Ok(n) = n.parse()
            {
                return (n, rest.to_string());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no state from {task}");
    }

    fn wait_for(&self, what: &str, ok: impl FnMut() -> bool) {
        if let Err(e) = wait_until(
            what,
            Duration::from_secs(30),
            Duration::from_millis(200),
            ok,
        ) {
            panic!("{e}\n{}", self.logs(40));
        }
    }

    /// Files and directories left under `<root>/snapshots`.
    fn snapshot_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join("snapshots"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A container loop reading files of two remote layers, counting iterations into
/// `/state` (in its own upper dir).
const READER_LOOP: &str = "i=0; while true; do read a < /etc/a; read c < /etc/c; i=$((i+1)); \
                           echo \"$i $a $c\" > /state; sleep 0.1; done";

#[test]
fn killing_and_restarting_run_never_disturbs_running_containers() {
    let metrics = free_addr().expect("free port");
    let mut env = Env::start_with(&["--metrics", &metrics.to_string()]);
    let (_layers, chains) = publish(&env.mountpoint, IMAGE, &["a", "b", "c"], true);
    env.pull_ok(IMAGE);

    let text = String::from_utf8_lossy(&http_get(metrics, "/metrics").expect("GET /metrics").body)
        .into_owned();
    assert!(
        text.contains("strata_layers_remote_total{via=\"cri.layer-digest\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("strata_prepare_duration_seconds_count 3"),
        "{text}"
    );

    env.ctr(&[
        "run",
        "-d",
        "--snapshotter",
        SNAPSHOTTER,
        IMAGE,
        "reader",
        "/bin/sh",
        "-c",
        READER_LOOP,
    ]);
    let mut last = String::new();
    let running = wait_until(
        "the reader loop",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let (ok, text) = env.ctr_raw(&[
                "tasks",
                "exec",
                "--exec-id",
                "probe",
                "reader",
                "/bin/sh",
                "-c",
                "read x < /state",
            ]);
            last = text;
            ok
        },
    );
    if let Err(e) = running {
        panic!("{e}: {last}\n{}", env.ctr_raw(&["tasks", "ls"]).1);
    }
    let (before, content) = env.reader_state("reader");
    assert_eq!(content, "layer0 layer2");

    // SIGKILL: no shutdown code runs. The container's overlay mount does not depend on us.
    env.restart_snapshotter(true);
    std::thread::sleep(Duration::from_millis(500));
    let (after, content) = env.reader_state("reader");
    assert!(after > before, "the loop kept going: {before} -> {after}");
    assert_eq!(content, "layer0 layer2");
    let tasks = env.ctr(&["tasks", "ls"]);
    assert!(tasks.contains("RUNNING"), "{tasks}");

    // Again while it runs, gracefully this time.
    env.restart_snapshotter(false);
    let (later, _) = env.reader_state("reader");
    assert!(later > after, "{after} -> {later}");

    // Everything else still works: listing, new containers on the same image.
    let ls = env.snap(&["ls"]);
    for chain in &chains {
        assert_eq!(kind_of(&ls, chain).as_deref(), Some("Committed"), "{ls}");
    }
    assert!(
        ls.contains("reader"),
        "the running container's snapshot: {ls}"
    );
    let out = env.run_sh(IMAGE, "second", "read b < /etc/b; echo $b");
    assert_eq!(out.trim(), "layer1");

    // Stop the reader, remove its container and the image: containerd's GC removes our
    // snapshots (Remove + Cleanup) and nothing is left under the root.
    env.ctr(&["tasks", "kill", "-s", "SIGKILL", "reader"]);
    env.wait_for("the reader task to stop", || {
        env.ctr_raw(&["tasks", "rm", "reader"]).0
    });
    env.ctr(&["containers", "rm", "reader"]);
    env.ctr(&["images", "rm", "--sync", IMAGE]);
    env.wait_for("GC of the image's snapshots", || {
        let ls = env.snap(&["ls"]);
        chains.iter().all(|c| !ls.contains(c.as_str()))
    });
    env.wait_for("no snapshot directories left", || {
        env.snapshot_dirs().is_empty()
    });
    let log = env.snapshotter.log_text();
    assert!(!log.contains("ERROR"), "{log}");

    // And the image can be pulled and run again afterwards.
    env.pull_ok(IMAGE);
    let out = env.run_sh(IMAGE, "third", "read c < /etc/c; echo $c");
    assert_eq!(out.trim(), "layer2");
}

#[test]
fn restart_with_repository_unreachable_keeps_state_and_recovers() {
    let mut env = Env::start();
    let (_layers, chains) = publish(&env.mountpoint, IMAGE, &["a", "b", "c"], true);
    env.pull_ok(IMAGE);
    let before = env.snap(&["ls"]);

    // The repository goes away (FUSE mount down: here the directory disappears).
    let gone = env.mountpoint.with_extension("gone");
    std::fs::rename(&env.mountpoint, &gone).expect("hide repository");
    env.restart_snapshotter(true);
    env.wait_for("the start-up check", || {
        env.snapshotter
            .log_text()
            .contains("checked remote snapshots")
    });

    // No state lost; the layers are reported unavailable, not deleted.
    let ls = env.snap(&["ls"]);
    assert_eq!(ls, before, "listing changed while the repository is away");
    let info = env.snap(&["info", &chains[2]]);
    assert!(info.contains("strata.io/unavailable"), "{info}");
    let log = env.snapshotter.log_text();
    assert_eq!(
        log.matches("remote snapshot unavailable").count(),
        3,
        "{log}"
    );
    // Starting a container fails cleanly (Unavailable), leaving nothing behind.
    let (ok, text) = env.ctr_raw(&run_args(IMAGE, "nope", &["/bin/sh", "-c", "true"]));
    assert!(!ok, "{text}");
    assert!(text.contains("unavailable"), "{text}");

    // Back: everything works again without a restart.
    std::fs::rename(&gone, &env.mountpoint).expect("restore repository");
    let out = env.run_sh(IMAGE, "back", "read a < /etc/a; echo $a");
    assert_eq!(out.trim(), "layer0");
    // A restart clears the label.
    env.restart_snapshotter(false);
    env.wait_for("the start-up check", || {
        env.snapshotter
            .log_text()
            .contains("checked remote snapshots")
    });
    let info = env.snap(&["info", &chains[2]]);
    assert!(!info.contains("strata.io/unavailable"), "{info}");
    assert_eq!(env.snap(&["ls"]), before);
}

#[test]
fn require_remote_refuses_fallbacks_with_failed_precondition() {
    let env = Env::start_with(&["--require-remote"]);
    let reference = "127.0.0.1:5000/missing:1";
    let (_layers, chains) = publish(&env.mountpoint, reference, &["x"], false);
    let out = env.pull(reference);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("FailedPrecondition") || stderr.contains("--require-remote"),
        "{stderr}"
    );
    let log = env.snapshotter.log_text();
    assert!(log.contains("fallback refused (--require-remote)"), "{log}");
    // No half-made snapshot.
    let ls = env.snap(&["ls"]);
    assert!(!ls.contains(&chains[0]), "{ls}");
    assert!(!ls.contains("extract-"), "{ls}");
}

/// A test registry (distribution API subset) served by axum at the address it was started
/// at: blobs and manifests by path, counting blob GETs per digest.
struct TestRegistry {
    blob_gets: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    _runtime: tokio::runtime::Runtime,
}

type Contents = std::collections::HashMap<String, (Vec<u8>, String)>;

fn start_registry_at(addr: &str, contents: Contents) -> TestRegistry {
    use axum::extract::{Path as AxPath, State};
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    type Shared = (
        std::sync::Arc<Contents>,
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let gets = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let state: Shared = (std::sync::Arc::new(contents), std::sync::Arc::clone(&gets));
    async fn handler(
        State((contents, gets)): State<Shared>,
        AxPath(rest): AxPath<String>,
    ) -> axum::response::Response {
        // rest = "<repo>/blobs/<digest>" or "<repo>/manifests/<ref>"
        let key = rest
            .split_once("/blobs/")
            .map(|(_, d)| d.to_string())
            .or_else(|| {
                rest.split_once("/manifests/")
                    .map(|(r, t)| format!("{r}:{t}"))
            })
            .unwrap_or_default();
        if rest.contains("/blobs/")
            && let Ok(mut g) = gets.lock()
        {
            *g.entry(key.clone()).or_default() += 1;
        }
        match contents.get(&key) {
            Some((bytes, media)) => {
                ([(header::CONTENT_TYPE, media.clone())], bytes.clone()).into_response()
            }
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr.to_string()))
        .expect("bind registry");
    let app = axum::Router::new()
        .route("/v2/{*rest}", axum::routing::get(handler))
        .with_state(state);
    runtime.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    TestRegistry {
        blob_gets: gets,
        _runtime: runtime,
    }
}

/// A real image: per layer a directory with `etc/<file>` (layer 0 also the shell), its
/// tar and gzip blobs; `published[i]` layers also go into the fake repository mount.
struct RealImage {
    reference: String,
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer_digests: Vec<String>,
    chains: Vec<String>,
    blobs: Contents,
}

fn real_image(
    work: &Path,
    mount: &Path,
    reference: &str,
    files: &[&str],
    published: &[bool],
    publish_metadata: bool,
) -> RealImage {
    let mut layer_digests = Vec::new();
    let mut diff_ids = Vec::new();
    let mut blobs = Contents::new();
    for (i, file) in files.iter().enumerate() {
        let dir = work.join(format!("layer{i}"));
        std::fs::create_dir_all(dir.join("etc")).expect("mkdir");
        std::fs::write(dir.join("etc").join(file), format!("layer{i}\n")).expect("write");
        if i == 0 {
            install_shell(&dir);
        }
        let tar = work.join(format!("layer{i}.tar"));
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&dir)
            .arg("--numeric-owner")
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(ok.success());
        let tar_bytes = std::fs::read(&tar).expect("read tar");
        let gz = Command::new("gzip")
            .arg("-n")
            .arg("-c")
            .arg(&tar)
            .output()
            .expect("gzip");
        assert!(gz.status.success());
        let digest = sha256_digest(&gz.stdout);
        diff_ids.push(sha256_digest(&tar_bytes));
        blobs.insert(
            digest.clone(),
            (gz.stdout, "application/octet-stream".to_string()),
        );
        if published[i] {
            let layerfs = layerfs_of(mount, &digest);
            std::fs::create_dir_all(layerfs.parent().expect("parent")).expect("mkdir");
            let ok = Command::new("cp")
                .arg("-a")
                .arg(&dir)
                .arg(&layerfs)
                .status()
                .expect("cp");
            assert!(ok.success());
        }
        layer_digests.push(digest);
    }
    let chains = chain_ids_of(&diff_ids);
    let sized: Vec<(String, usize)> = layer_digests
        .iter()
        .map(|d| (d.clone(), blobs[d].0.len()))
        .collect();
    let (config, manifest) = image_documents(&diff_ids, &sized);
    blobs.insert(
        sha256_digest(&config),
        (config.clone(), "application/octet-stream".into()),
    );
    let (repo_tag, _) = (
        reference
            .split_once('/')
            .map(|(_, r)| r)
            .unwrap_or(reference),
        (),
    );
    blobs.insert(
        repo_tag.to_string(),
        (
            manifest.clone(),
            "application/vnd.oci.image.manifest.v1+json".into(),
        ),
    );
    for (i, chain) in chains.iter().enumerate() {
        if published[i] {
            link_chain(mount, chain, &layer_digests[i]);
        }
    }
    if publish_metadata {
        write_metadata(mount, reference, &manifest, &config);
    }
    RealImage {
        reference: reference.to_string(),
        manifest,
        config,
        layer_digests,
        chains,
        blobs,
    }
}

#[test]
fn partly_published_image_mixes_remote_and_fetched_layers_and_ten_containers_run() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = Env::start();
    let work = env.dir.path().join("work");
    // A registry whose address is only known once it listens: build the image after.
    let mut contents = Contents::new();
    let registry = free_addr().expect("free port").to_string();
    let reference = format!("{registry}/mixed:1");
    let image = real_image(
        &work,
        &env.mountpoint,
        &reference,
        &["a", "b", "c"],
        &[true, false, true],
        true,
    );
    contents.extend(image.blobs.clone());
    let reg = start_registry_at(&registry, contents);

    let stdout = env.pull_ok(&reference);
    assert!(
        stdout.contains("2 layers from the repository, 1 fetched from the registry"),
        "{stdout}"
    );
    // Only the unpublished layer was downloaded, once.
    let gets = reg.blob_gets.lock().map(|g| g.clone()).unwrap_or_default();
    assert_eq!(gets.get(&image.layer_digests[1]), Some(&1), "{gets:?}");
    assert_eq!(gets.get(&image.layer_digests[0]), None, "{gets:?}");
    assert_eq!(gets.get(&image.layer_digests[2]), None, "{gets:?}");
    let info = env.snap(&["info", &image.chains[1]]);
    assert!(!info.contains("containerd.io/snapshot/remote"), "{info}");
    let info = env.snap(&["info", &image.chains[2]]);
    assert!(info.contains("containerd.io/snapshot/remote"), "{info}");
    let _ = (&image.manifest, &image.config, &image.reference);

    // Ten containers from the same image at once.
    let handles: Vec<_> = (0..10)
        .map(|n| {
            let address = env.address.clone();
            let reference = reference.clone();
            let ctr = env.ctr.clone();
            std::thread::spawn(move || {
                Command::new(ctr)
                    .arg("--address")
                    .arg(&address)
                    .args(["-n", NAMESPACE, "run", "--rm", "--snapshotter", SNAPSHOTTER])
                    .arg(&reference)
                    .arg(format!("ten-{n}"))
                    .args([
                        "/bin/sh",
                        "-c",
                        "read a < /etc/a; read b < /etc/b; read c < /etc/c; echo $a$b$c",
                    ])
                    .output()
                    .expect("ctr run")
            })
        })
        .collect();
    for (n, h) in handles.into_iter().enumerate() {
        let out = h.join().expect("join");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.trim() == "layer0layer1layer2",
            "container {n}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let gets = reg.blob_gets.lock().map(|g| g.clone()).unwrap_or_default();
    assert_eq!(gets.get(&image.layer_digests[1]), Some(&1), "{gets:?}");

    // Removal + GC: nothing of ours is left.
    env.ctr(&["images", "rm", "--sync", &reference]);
    env.wait_for("no snapshots left", || {
        let ls = env.snap(&["ls"]);
        ls.lines().count() <= 1
    });
    env.wait_for("no snapshot directories left", || {
        env.snapshot_dirs().is_empty()
    });
}

#[test]
fn image_not_in_the_repository_pulls_and_runs_through_the_registry() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = Env::start();
    let work = env.dir.path().join("work");
    // The image's reference names the registry: its address is chosen before it listens.
    let registry = free_addr().expect("free port").to_string();
    let reference = format!("{registry}/plain:2");
    let image = real_image(
        &work,
        &env.mountpoint,
        &reference,
        &["a", "b"],
        &[false, false],
        false,
    );
    let _reg = start_registry_at(&registry, image.blobs.clone());
    let stdout = env.pull_ok(&reference);
    assert!(stdout.contains("not in the repository"), "{stdout}");
    assert!(
        stdout.contains("0 layers from the repository, 2 fetched from the registry"),
        "{stdout}"
    );
    let log = env.snapshotter.log_text();
    assert_eq!(
        log.matches("fallback to local snapshot").count(),
        2,
        "{log}"
    );
    let out = env.run_sh(&reference, "plain", "read b < /etc/b; echo $b");
    assert_eq!(out.trim(), "layer1");
    // --remote-only refuses such an image.
    let out = Command::new(env!("CARGO_BIN_EXE_strata-snapshotter"))
        .args([
            "pull",
            "--remote-only",
            "--namespace",
            NAMESPACE,
            "--snapshotter",
            SNAPSHOTTER,
        ])
        .arg("--address")
        .arg(&env.address)
        .arg("--mountpoint")
        .arg(&env.mountpoint)
        .arg(&reference)
        .output()
        .expect("pull");
    assert!(!out.status.success());
    let _ = image.chains;
}

/// The command of the non-root comparison: `ctr` 1.6 has no `--user` (it came with 1.7),
/// so the container starts as root and `setpriv` switches to uid/gid 1000 without
/// supplementary groups, which drops every capability (as runc does for a non-root
/// process user without capabilities) before running [`USER_SCRIPT`] (`/bin/check` in the
/// image: `ctr containers create` 1.6 takes a `-c` among the command's arguments for its
/// own `--config`).
const AS_USER: [&str; 5] = [
    "/bin/setpriv",
    "--reuid=1000",
    "--regid=1000",
    "--clear-groups",
    "/bin/check",
];

/// The script the non-root comparison runs as uid 1000: who am I, a setuid-root `id`, a `cat` with
/// `cap_dac_override` on a root-only file, the plain `cat` on it, a file owned by the
/// user, files of both layers, a `#!` script. Failures print a word on stdout, their stderr
/// goes to /dev/null: `ctr run` may exit before it copies a failing command's last stderr
/// line (seen in CI), which made the two runs' outputs differ.
const USER_SCRIPT: &str = "/bin/id; /bin/suid-id; /bin/cap-cat /etc/secret 2>/dev/null || echo cap-cat-denied; \
     /bin/cat /etc/secret 2>/dev/null || echo cat-denied; read n < /home/user/note; echo $n; \
     read a < /etc/a; read b < /etc/b; echo $a $b; /bin/hello";

/// The two-layer image of the CRI test (see [`USER_SCRIPT`]).
fn caps_image(work: &Path) -> stack::Built {
    let l0 = work.join("caps0");
    stack::install_tools(
        &l0,
        &[
            ("/bin/dash", "bin/sh"),
            ("/usr/bin/id", "bin/id"),
            ("/bin/cat", "bin/cat"),
            ("/usr/bin/id", "bin/suid-id"),
            ("/bin/cat", "bin/cap-cat"),
            ("/usr/bin/setpriv", "bin/setpriv"),
        ],
    );
    stack::set_mode_owner(&l0.join("bin/suid-id"), 0o4755, 0, 0);
    stack::setcap(&l0.join("bin/cap-cat"), "cap_dac_override+ep");
    std::fs::create_dir_all(l0.join("etc")).expect("mkdir");
    std::fs::write(l0.join("etc/secret"), "secret\n").expect("write");
    stack::set_mode_owner(&l0.join("etc/secret"), 0o600, 0, 0);
    std::fs::write(l0.join("etc/a"), "layer0\n").expect("write");
    std::fs::write(l0.join("bin/hello"), "#!/bin/sh\necho hello from $0\n").expect("write");
    stack::set_mode_owner(&l0.join("bin/hello"), 0o755, 0, 0);
    std::fs::write(l0.join("bin/check"), format!("#!/bin/sh\n{USER_SCRIPT}\n")).expect("write");
    stack::set_mode_owner(&l0.join("bin/check"), 0o755, 0, 0);
    let l1 = work.join("caps1");
    std::fs::create_dir_all(l1.join("etc")).expect("mkdir");
    std::fs::write(l1.join("etc/b"), "layer1\n").expect("write");
    std::fs::create_dir_all(l1.join("home/user")).expect("mkdir");
    std::fs::write(l1.join("home/user/note"), "mine\n").expect("write");
    stack::set_mode_owner(&l1.join("home/user/note"), 0o600, 1000, 1000);
    stack::set_mode_owner(&l1.join("home/user"), 0o700, 1000, 1000);
    stack::oci_image(work, "1", &[l0, l1])
}

/// Runs on 1.6 only (`scripts/test` skips it for 1.7 and 2.x): its containerd config has a
/// version-2 CRI section of its own, which 2.x migrates into something that unpacks
/// locally, and the v1 shim runtimes it also tries were removed in 2.0. The CRI path on
/// 1.7 and 2.x, with their deploy snippets, is the e2e containerd matrix's.
#[test]
fn cri_pull_is_remote_and_user_setuid_caps_and_runtimes_match_overlayfs() {
    assert_eq!(
        release().name,
        "1.6",
        "this test is written for containerd 1.6 (see its doc); skip it for other releases"
    );
    let dir = tempfile::Builder::new()
        .prefix("strata-cri")
        .tempdir()
        .expect("tempdir");
    let work = dir.path().join("image");
    let image = caps_image(&work);
    // With a start recorded and published as startup packs: the kubelet's pull never runs
    // `strata-snapshotter pull`, so the snapshotter's Prepare is what asks for them.
    let stack = stack::Stack::start_recorded(
        &dir.path().join("stack"),
        &[(&image, "caps:1")],
        &[],
        &[("caps:1", &["/bin/hello"])],
    );
    let reference = format!("{}/caps:1", stack.registry_host);
    let env = Env::start_opts(Options {
        mountpoint: Some(stack.mountpoint.clone()),
        plain_mountpoint: Some(stack.plain_mountpoint.clone()),
        cri_registry: Some(stack.registry_host.clone()),
        ..Options::default()
    });

    // The kubelet's pull: every layer remote, no layer blob fetched.
    let mark = stack.registry_mark();
    let image_ref = tests::cri::pull_image(&env.address, &reference)
        .unwrap_or_else(|e| panic!("{e}\n{}", env.logs(60)));
    assert_eq!(image_ref, image.config_digest);
    let status = tests::cri::image_status(&env.address, &reference)
        .expect("ImageStatus")
        .expect("image known after the pull");
    assert_eq!(status.id, image.config_digest);
    assert!(status.size > 0, "{status:?}");
    assert!(status.repo_tags.contains(&reference), "{status:?}");
    for chain in &image.chains {
        let info = env.ctr_in(
            "k8s.io",
            &["snapshots", "--snapshotter", SNAPSHOTTER, "info", chain],
        );
        assert!(info.contains("containerd.io/snapshot/remote"), "{info}");
    }
    let log = env.snapshotter.log_text();
    assert_eq!(
        log.matches("remote: layer published").count(),
        image.chains.len(),
        "{log}"
    );
    assert!(log.contains("cri.layer-digest"), "{log}");
    // The first remote Prepare of the image asked the mount for its startup packs, on a
    // thread of its own; the mount fetched them.
    let mount_log = dir.path().join("stack/mount.log");
    let prefetched = wait_until(
        "the startup packs to be prefetched after the CRI pull",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || std::fs::read_to_string(&mount_log).is_ok_and(|t| t.contains("startup pack prefetched")),
    );
    let log = env.snapshotter.log_text();
    assert!(
        prefetched.is_ok() && log.matches("startup prefetch asked").count() == 1,
        "{prefetched:?}\n{log}\n{}",
        std::fs::read_to_string(&mount_log).unwrap_or_default()
    );
    assert_eq!(
        stack.blob_gets_since(mark, &image.layer_digests),
        0,
        "layer blobs were fetched"
    );
    // The registry did serve this pull (manifest, config), so the log is the right one.
    let served = stack.registry_mark() - mark;
    assert!(served > 0, "no registry requests during the CRI pull");

    check_plain_mount(&stack, &image);
    // The container's root overlay: layer 1 (no xattrs) from the plain mount, layer 0
    // (`security.capability` on cap-cat) from the main mount, nearest first.
    let proc_mounts = env.ctr_in(
        "k8s.io",
        &run_args(&reference, "proc-mounts", &["/bin/cat", "/proc/mounts"]),
    );
    let (layer0, layer1) = (
        layerfs_of(&stack.mountpoint, &image.layer_digests[0]),
        layerfs_of(&stack.mountpoint, &image.layer_digests[1]),
    );
    let expected_lower = format!(
        "{}:{}",
        plain_of(&stack, &layer1).display(),
        layer0.display()
    );
    assert_eq!(
        root_lowerdir(&proc_mounts).as_deref(),
        Some(expected_lower.as_str()),
        "{proc_mounts}"
    );
    // The same through `ctr snapshots prepare --target` (prints the mounts at once, so
    // no garbage collection can come between) of a container snapshot.
    let top = image.chains.last().expect("layers");
    let m = env.ctr_in(
        "k8s.io",
        &[
            "snapshots",
            "--snapshotter",
            SNAPSHOTTER,
            "prepare",
            "--target",
            "/tmp/target",
            "plain-probe",
            top,
        ],
    );
    assert!(m.contains(&format!("lowerdir={expected_lower}")), "{m}");
    env.ctr_in(
        "k8s.io",
        &[
            "snapshots",
            "--snapshotter",
            SNAPSHOTTER,
            "rm",
            "plain-probe",
        ],
    );

    // A non-root user through the real FUSE mount, against containerd's own overlayfs
    // snapshotter on the same image; with ctr's default NoNewPrivileges (setuid and file
    // capabilities do not elevate) and without it (they do).
    let run_as_user = |ns: &str, snapshotter: &[&str], id: &str, new_privs: bool| {
        let mut args = vec!["run", "--rm"];
        if new_privs {
            args.push("--allow-new-privs");
        }
        args.extend_from_slice(snapshotter);
        args.extend_from_slice(&[&reference, id]);
        args.extend_from_slice(&AS_USER);
        env.ctr_in(ns, &args)
    };
    let strata = run_as_user(
        "k8s.io",
        &["--snapshotter", SNAPSHOTTER],
        "user-strata",
        true,
    );
    let strata_nnp = run_as_user("k8s.io", &["--snapshotter", SNAPSHOTTER], "user-nnp", false);
    env.ctr_in("native", &["images", "pull", "--plain-http", &reference]);
    let native = run_as_user("native", &[], "user-native", true);
    let native_nnp = run_as_user("native", &[], "user-native-nnp", false);
    assert_eq!(strata, native, "strata vs overlayfs, --allow-new-privs");
    assert_eq!(
        strata_nnp, native_nnp,
        "strata vs overlayfs, NoNewPrivileges"
    );
    for expected in [
        "uid=1000 gid=1000",
        "euid=0",
        "secret",
        "cat-denied",
        "mine",
        "layer0 layer1",
        "hello from /bin/hello",
    ] {
        assert!(
            strata.contains(expected),
            "{expected:?} in:\n{strata}\nFUSE mount: {}",
            stack.mount_options()
        );
    }
    assert!(!strata_nnp.contains("euid=0"), "{strata_nnp}");
    assert!(!strata_nnp.lines().any(|l| l == "secret"), "{strata_nnp}");
    // Without new privileges the file capability is not gained: cap-cat is refused too.
    assert!(
        strata_nnp.lines().any(|l| l == "cap-cat-denied"),
        "{strata_nnp}"
    );

    // Other create paths on the remote image: the v1 shim runtime and runc v1, through
    // `container create` + `task start`.
    for (n, runtime) in ["io.containerd.runtime.v1.linux", "io.containerd.runc.v1"]
        .iter()
        .enumerate()
    {
        let id = format!("other-runtime-{n}");
        let mut args = vec![
            "containers",
            "create",
            "--allow-new-privs",
            "--snapshotter",
            SNAPSHOTTER,
            "--runtime",
            runtime,
            &reference,
            &id,
        ];
        args.extend_from_slice(&AS_USER);
        env.ctr_in("k8s.io", &args);
        let out = env.ctr_in("k8s.io", &["tasks", "start", &id]);
        assert_eq!(out, native, "{runtime}");
        env.ctr_in("k8s.io", &["containers", "rm", &id]);
    }
    // Nothing was fetched from the registry for the strata side.
    let log = env.snapshotter.log_text();
    assert!(!log.contains("fallback to local snapshot"), "{log}");
}

/// `<plain>/<rel>` for `path` = `<mountpoint>/<rel>` of `stack`.
fn plain_of(stack: &stack::Stack, path: &Path) -> PathBuf {
    stack.plain_mountpoint.join(
        path.strip_prefix(&stack.mountpoint)
            .expect("path in the mount"),
    )
}

/// The `lowerdir=` option of the overlay mounted at `/` in a `/proc/mounts` listing.
fn root_lowerdir(proc_mounts: &str) -> Option<String> {
    let line = proc_mounts.lines().find(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.get(1) == Some(&"/") && f.get(2) == Some(&"overlay")
    })?;
    let options = line.split(' ').nth(3)?;
    options
        .split(',')
        .find_map(|o| o.strip_prefix("lowerdir="))
        .map(str::to_string)
}

/// The two mounts of [`caps_image`] (contract §4): the plain mount is the same tree with
/// every extended attribute refused (`EOPNOTSUPP`), the main mount keeps
/// `security.capability` and answers `user.catalog_counters` (hidden from listxattr):
/// layer 0 counts its xattr, layer 1 none; each layer is its own catalog.
fn check_plain_mount(stack: &stack::Stack, image: &stack::Built) {
    use snapshotter::catalog_counters::{CATALOG_COUNTERS_XATTR, CatalogCounters};
    let layers: Vec<PathBuf> = image
        .layer_digests
        .iter()
        .map(|d| layerfs_of(&stack.mountpoint, d))
        .collect();
    let cap_cat = layers[0].join("bin/cap-cat");
    let cap = xattr::get(&cap_cat, "security.capability")
        .expect("getxattr on the main mount")
        .expect("cap-cat has security.capability on the main mount");
    assert!(cap.len() >= 20, "{cap:?}");
    let listed: Vec<String> = xattr::list(&cap_cat)
        .expect("listxattr on the main mount")
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    assert!(
        listed.iter().any(|n| n == "security.capability")
            && !listed.iter().any(|n| n == CATALOG_COUNTERS_XATTR),
        "{listed:?}"
    );
    let plain_cap_cat = plain_of(stack, &cap_cat);
    let refused = |r: std::io::Result<()>, what: &str| {
        let err = r.expect_err(what);
        assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP), "{what}: {err}");
    };
    refused(
        xattr::get(&plain_cap_cat, "security.capability").map(drop),
        "getxattr security.capability on the plain mount",
    );
    refused(
        xattr::list(&plain_cap_cat).map(drop),
        "listxattr on the plain mount",
    );
    refused(
        xattr::get(plain_of(stack, &layers[0]), CATALOG_COUNTERS_XATTR).map(drop),
        "getxattr user.catalog_counters on the plain mount",
    );
    assert_eq!(
        std::fs::read(&plain_cap_cat).expect("read plain cap-cat"),
        std::fs::read(&cap_cat).expect("read cap-cat"),
        "the plain mount is the same tree"
    );
    for (i, (layer, xattrs)) in layers.iter().zip([1, 0]).enumerate() {
        let value = xattr::get(layer, CATALOG_COUNTERS_XATTR)
            .expect("getxattr user.catalog_counters")
            .unwrap_or_else(|| panic!("layer {i}: no {CATALOG_COUNTERS_XATTR}"));
        let counters = CatalogCounters::parse(&value)
            .unwrap_or_else(|e| panic!("layer {i}: {e}: {:?}", String::from_utf8_lossy(&value)));
        assert_eq!(
            Path::new("/").join(counters.catalog_mountpoint.trim_start_matches('/')),
            Path::new("/").join(layer.strip_prefix(&stack.mountpoint).expect("in mount")),
            "layer {i} is its own catalog"
        );
        assert_eq!(counters.xattrs(), xattrs, "layer {i}: {counters:?}");
        assert_eq!(
            counters.counters.get("subtree_nested"),
            Some(&0),
            "layer {i}"
        );
        let names: Vec<String> = xattr::list(layer)
            .expect("listxattr layer")
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n == CATALOG_COUNTERS_XATTR),
            "magic xattr listed: {names:?}"
        );
    }
    // Any path answers: its catalog's counters.
    let value = xattr::get(layers[0].join("bin"), CATALOG_COUNTERS_XATTR)
        .expect("getxattr")
        .expect("user.catalog_counters on a subdirectory");
    assert_eq!(CatalogCounters::parse(&value).map(|c| c.xattrs()), Ok(1));
}

/// Files per `data/l<i>/d<j>` directory and directories per layer of [`walk_image`].
const WALK_FILES: usize = 100;
const WALK_DIRS: usize = 10;
/// Layers of [`walk_image`] (the first holds the tools).
const WALK_LAYERS: usize = 5;

/// A five-layer image for the flat-lowerdir test: layer 0 the tools, `etc/a` and
/// `data/common/f0..49`; layers 1–4 `data/l<i>/d<j>/f<k>` (1 000 files each) and a new
/// version of every `data/common` file; layer 3 deletes `etc/a` (whiteout).
fn walk_image(work: &Path) -> stack::Built {
    let mut layers = Vec::new();
    for i in 0..WALK_LAYERS {
        let dir = work.join(format!("walk{i}"));
        let common = dir.join("data/common");
        std::fs::create_dir_all(&common).expect("mkdir");
        for k in 0..50 {
            std::fs::write(common.join(format!("f{k}")), format!("layer{i}\n")).expect("write");
        }
        if i == 0 {
            stack::install_tools(
                &dir,
                &[("/bin/dash", "bin/sh"), ("/usr/bin/find", "bin/find")],
            );
            std::fs::create_dir_all(dir.join("etc")).expect("mkdir");
            std::fs::write(dir.join("etc/a"), "layer0\n").expect("write");
        } else {
            for j in 0..WALK_DIRS {
                let d = dir.join(format!("data/l{i}/d{j}"));
                std::fs::create_dir_all(&d).expect("mkdir");
                for k in 0..WALK_FILES {
                    std::fs::write(d.join(format!("f{k}")), format!("l{i} d{j} f{k}\n"))
                        .expect("write");
                }
            }
        }
        if i == 3 {
            std::fs::create_dir_all(dir.join("etc")).expect("mkdir");
            std::fs::write(dir.join("etc/.wh.a"), "").expect("whiteout");
        }
        layers.push(dir);
    }
    stack::oci_image(work, "1", &layers)
}

/// What the flat-lowerdir containers print: a file of the top layer that every layer
/// has, whether the deleted file is gone, and the number of files under `/data`.
const WALK_CHECK: &str = "read c < /data/common/f7; echo $c; \
     if [ -e /etc/a ]; then echo a-present; else echo a-gone; fi";

/// The workload whose time is measured: a walk of every file under `/data`.
const WALK: &str = "/bin/find /data -type f";

#[test]
fn flat_lowerdir_gives_one_lowerdir_with_the_same_files_and_timings() {
    let dir = tempfile::Builder::new()
        .prefix("strata-flat")
        .tempdir()
        .expect("tempdir");
    let image = walk_image(&dir.path().join("image"));
    let stack = stack::Stack::start(&dir.path().join("stack"), &[(&image, "walk:1")]);
    let reference = format!("{}/walk:1", stack.registry_host);
    let mut env = Env::start_opts(Options {
        mountpoint: Some(stack.mountpoint.clone()),
        plain_mountpoint: Some(stack.plain_mountpoint.clone()),
        run_args: vec!["--flat-lowerdir".into()],
        ..Options::default()
    });
    env.pull_ok(&reference);
    let top = image.chains.last().expect("layers").clone();
    let flat_dir = stack
        .mountpoint
        .join(paths::join(&paths::flat_dir(&typed(&image.config_digest))));

    // One lowerdir, the flat tree, for a container snapshot on the top layer.
    let mounts_of = |env: &Env, key: &str| {
        env.snap_rooted("prepare", key, &top);
        let m = env.snap(&["mounts", "/tmp/target", key]);
        env.snap(&["rm", key]);
        m
    };
    // No layer has xattrs: the flat tree comes from the plain mount.
    let flat_lower = plain_of(&stack, &flat_dir);
    let m = mounts_of(&env, "flat-probe");
    assert!(
        m.contains(&format!("lowerdir={}", flat_lower.display()))
            && !m.contains(&format!("lowerdir={}:", flat_lower.display())),
        "{m}"
    );

    let run = |env: &Env, id: &str, script: &str| -> (String, Duration) {
        let started = Instant::now();
        let out = env.run_sh(&reference, id, script);
        (out, started.elapsed())
    };
    let (flat_check, _) = run(&env, "flat-check", WALK_CHECK);
    let (flat_walk, _) = run(&env, "flat-walk", WALK);

    // The same without the option: one lowerdir per layer, same files.
    env.run_args.clear();
    env.restart_snapshotter(false);
    let m = mounts_of(&env, "layers-probe");
    assert_eq!(
        m.split("lowerdir=").nth(1).map(|l| l.matches(':').count()),
        Some(WALK_LAYERS - 1),
        "{m}"
    );
    let lowers = m
        .split("lowerdir=")
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default();
    assert!(
        lowers
            .split(':')
            .all(|l| Path::new(l).starts_with(&stack.plain_mountpoint)),
        "every layer from the plain mount: {m}"
    );
    let (layers_check, _) = run(&env, "layers-check", WALK_CHECK);
    let (layers_walk, _) = run(&env, "layers-walk", WALK);
    assert_eq!(flat_check.trim(), "layer4\na-gone");
    assert_eq!(layers_check, flat_check);
    let sorted = |s: &str| {
        let mut v: Vec<String> = s.lines().map(str::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&flat_walk), sorted(&layers_walk));
    assert_eq!(
        flat_walk.lines().count(),
        50 + (WALK_LAYERS - 1) * WALK_DIRS * WALK_FILES
    );

    // Timings, alternating the modes (STRATA_FLAT_REPS repetitions, default 3): container
    // start (`true`) and the walk, wall time of `ctr run --rm`.
    let reps: usize = std::env::var("STRATA_FLAT_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut times: [(Vec<Duration>, Vec<Duration>); 2] = Default::default();
    for rep in 0..reps {
        for (mode, flat) in [(0usize, false), (1, true)] {
            env.run_args = if flat {
                vec!["--flat-lowerdir".into()]
            } else {
                Vec::new()
            };
            env.restart_snapshotter(false);
            let (_, start) = run(&env, &format!("start-{rep}-{mode}"), "true");
            let (_, walk) = run(&env, &format!("walk-{rep}-{mode}"), WALK);
            times[mode].0.push(start);
            times[mode].1.push(walk);
        }
    }
    let median = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1000.0
    };
    println!(
        "flat-lowerdir figures ({WALK_LAYERS} layers, {} files, {reps} repetitions, median ms):",
        50 + (WALK_LAYERS - 1) * WALK_DIRS * WALK_FILES
    );
    for (mode, name) in [(0, "one lowerdir per layer"), (1, "flat lowerdir")] {
        println!(
            "  {name:24} start {:7.1}  walk {:7.1}  (start {:?}, walk {:?})",
            median(&times[mode].0),
            median(&times[mode].1),
            times[mode].0,
            times[mode].1
        );
    }
}

/// Files per reader of the keeper test: far more than its loop reads while the test runs
/// (about eight a second, some 70 in all as the test's 30 s stop blocks them), so that
/// each read is of a file never read before and reaches the FUSE mount.
const KEEPER_FILES: usize = 1500;

/// The readers of the keeper test, by the directory `/data/<name>` each reads: `a` in layer 1
/// (which has a file capability: from the main mount), `b` in layer 2 (from the plain mount).
const KEEPER_READERS: [&str; 2] = ["a", "b"];

/// The image of the keeper test: layer 0 the tools of [`keeper_reader`] (from the plain
/// mount), layer 1 `data/a/f0..` and `bin/cap-true`, a copy of `true` with a file
/// capability (so the layer comes from the main mount), layer 2 `data/b/f0..` (plain
/// mount); `data/<r>/f<n>` holds `<r> <n>`.
fn keeper_image(work: &Path) -> stack::Built {
    let l0 = work.join("keeper0");
    stack::install_tools(
        &l0,
        &[
            ("/bin/dash", "bin/sh"),
            ("/bin/cat", "bin/cat"),
            ("/bin/date", "bin/date"),
            ("/bin/sleep", "bin/sleep"),
        ],
    );
    let mut layers = vec![l0];
    for (i, name) in KEEPER_READERS.iter().enumerate() {
        let layer = work.join(format!("keeper{}", i + 1));
        let data = layer.join("data").join(name);
        std::fs::create_dir_all(&data).expect("mkdir");
        for n in 0..KEEPER_FILES {
            std::fs::write(data.join(format!("f{n}")), format!("{name} {n}\n")).expect("write");
        }
        layers.push(layer);
    }
    let cap_true = layers[1].join("bin/cap-true");
    std::fs::create_dir_all(layers[1].join("bin")).expect("mkdir");
    std::fs::copy("/bin/true", &cap_true).expect("copy /bin/true");
    stack::setcap(&cap_true, "cap_net_bind_service+ep");
    stack::oci_image(work, "1", &layers)
}

/// The loop of keeper-test reader `name`: every 0.1 s (plus four `exec`s of image
/// binaries: `cat`, `cap-true` from the main mount, `date`, `sleep`) it reads the next
/// file of `/data/<name>` and checks its content, appending `ok <n> <unix time>` or
/// `FAIL <n> <unix time> <failed step> <what cat said>` to `/out/<name>.log`;
/// `exhausted` once it has read them all (then it sleeps).
fn keeper_reader(name: &str) -> String {
    format!(
        "n=0; while [ $n -lt {KEEPER_FILES} ]; do \
           s=cat; \
           if x=$(/bin/cat /data/{name}/f$n 2>&1) && s=content && [ \"$x\" = \"{name} $n\" ] \
              && s=cap-true && /bin/cap-true && s=date && t=$(/bin/date +%s.%N 2>&1); \
           then echo \"ok $n $t\" >> /out/{name}.log; \
           else echo \"FAIL $n $(/bin/date +%s.%N 2>&1) $s $x\" >> /out/{name}.log; fi; \
           n=$((n+1)); \
           /bin/sleep 0.1 || echo \"FAIL $n sleep\" >> /out/{name}.log; \
         done; echo exhausted >> /out/{name}.log; exec /bin/sleep 100000"
    )
}

/// What a keeper-test reader has logged so far (complete lines only).
#[derive(Debug, Default)]
struct ReaderLog {
    /// Timestamps of the successful reads, in order.
    oks: Vec<f64>,
    /// Every other line but `exhausted`: the failures.
    fails: Vec<String>,
    /// It has read every file.
    exhausted: bool,
}

impl ReaderLog {
    fn parse(text: &str) -> ReaderLog {
        let mut log = ReaderLog::default();
        // The last piece is empty or a line being written.
        let mut lines: Vec<&str> = text.split('\n').collect();
        lines.pop();
        for line in lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["ok", _, t] if t.parse::<f64>().is_ok() => {
                    log.oks.push(t.parse().unwrap_or_default());
                }
                ["exhausted"] => log.exhausted = true,
                _ => log.fails.push(line.to_string()),
            }
        }
        log
    }

    /// Successful reads after `since` (Unix seconds).
    fn oks_after(&self, since: f64) -> usize {
        self.oks.iter().filter(|&&t| t > since).count()
    }
}

/// The keeper test's readers, logging into `dir` (bind-mounted at `/out`).
struct Readers {
    dir: PathBuf,
}

impl Readers {
    fn log(&self, name: &str) -> ReaderLog {
        let path = self.dir.join(format!("{name}.log"));
        ReaderLog::parse(&std::fs::read_to_string(path).unwrap_or_default())
    }

    /// For failure messages: per reader its count of reads, failures, and last lines.
    fn report(&self) -> String {
        let mut text = String::new();
        for name in KEEPER_READERS {
            let log = self.log(name);
            let all =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let last: Vec<&str> = all.lines().rev().take(5).collect();
            text.push_str(&format!(
                "reader {name}: {} ok, exhausted {}, failures {:?}, last lines {:?}\n",
                log.oks.len(),
                log.exhausted,
                log.fails,
                last
            ));
        }
        text
    }

    /// Panics, naming `after`, if a reader logged a failure.
    fn check_no_failure(&self, after: &str, keeper: &Keeper) {
        for name in KEEPER_READERS {
            let log = self.log(name);
            assert!(
                log.fails.is_empty(),
                "reader {name} failed to read after {after}: {:?}\n{}--- mount log (tail):\n{}",
                log.fails,
                self.report(),
                keeper.log_tail()
            );
        }
    }

    /// Waits (60 s at most) until every reader has `n` successful reads later than
    /// `since` (Unix seconds); panics naming `after` otherwise.
    fn wait_reads_after(&self, since: f64, n: usize, after: &str, keeper: &Keeper) {
        let what = format!("{n} reads of each reader after {after}");
        let done = wait_until(
            &what,
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                KEEPER_READERS
                    .iter()
                    .all(|name| self.log(name).oks_after(since) >= n)
            },
        );
        if let Err(e) = done {
            panic!(
                "{e}\n{}--- mount log (tail):\n{}",
                self.report(),
                keeper.log_tail()
            );
        }
        self.check_no_failure(after, keeper);
    }
}

/// `mount --keeper` (issue #16) under two containers that read files never read before and
/// run binaries of a lazily pulled image, from both the main and the plain mount: five
/// `kill -9`s of the worker, an upgrade (SIGHUP to the keeper) and a worker stopped for
/// 30 s then killed. Every read succeeds (slower at worst) and reading goes on after each
/// event; the containers, the image and a fresh pull work as before. Prints the longest
/// stall each reader saw around each kind of event.
#[test]
fn keeper_mount_survives_kill_upgrade_and_stop_with_containers_reading() {
    let dir = tempfile::Builder::new()
        .prefix("strata-keeper")
        .tempdir()
        .expect("tempdir");
    let image = keeper_image(&dir.path().join("image"));
    let stack = stack::Stack::start_with(
        &dir.path().join("stack"),
        &[(&image, "keeper:1")],
        &["--keeper"],
    );
    let keeper = Keeper::new(
        stack.mount().pid().expect("the keeper runs"),
        stack.mount().log(),
    );
    let first_worker = ok(keeper.wait_worker(Duration::from_secs(30)));
    assert_ne!(first_worker, keeper.pid());
    assert_eq!(keeper.takeovers(), 0, "{}", keeper.log_text());
    let reference = format!("{}/keeper:1", stack.registry_host);
    let env = Env::start_opts(Options {
        mountpoint: Some(stack.mountpoint.clone()),
        plain_mountpoint: Some(stack.plain_mountpoint.clone()),
        ..Options::default()
    });

    // A lazy pull: every layer remote, no layer blob fetched.
    let mark = stack.registry_mark();
    env.pull_ok(&reference);
    assert_eq!(
        stack.blob_gets_since(mark, &image.layer_digests),
        0,
        "layer blobs were fetched"
    );
    for chain in &image.chains {
        let info = env.snap(&["info", chain]);
        assert!(info.contains("containerd.io/snapshot/remote"), "{info}");
    }

    let readers = Readers {
        dir: env.dir.path().join("readers"),
    };
    std::fs::create_dir_all(&readers.dir).expect("mkdir readers");
    let out = format!(
        "type=bind,src={},dst=/out,options=rbind:rw",
        readers.dir.display()
    );
    for name in KEEPER_READERS {
        let id = format!("reader-{name}");
        let script = keeper_reader(name);
        env.ctr(&[
            "run",
            "-d",
            "--snapshotter",
            SNAPSHOTTER,
            "--mount",
            &out,
            &reference,
            &id,
            "/bin/sh",
            "-c",
            &script,
        ]);
    }
    // Their root overlay: layer 2 and layer 0 from the plain mount, layer 1 (file
    // capability) from the main one, nearest first: both mounts are read.
    let proc_mounts = env.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "mounts",
        "reader-a",
        "/bin/cat",
        "/proc/mounts",
    ]);
    let layer = |i: usize| layerfs_of(&stack.mountpoint, &image.layer_digests[i]);
    let expected_lower = format!(
        "{}:{}:{}",
        plain_of(&stack, &layer(2)).display(),
        layer(1).display(),
        plain_of(&stack, &layer(0)).display()
    );
    assert_eq!(
        root_lowerdir(&proc_mounts).as_deref(),
        Some(expected_lower.as_str()),
        "{proc_mounts}"
    );
    let started = tests::keeper::unix_seconds(std::time::SystemTime::now());
    readers.wait_reads_after(0.0, 10, "the start", &keeper);

    // The events, each once the readers have read for about a second since the last.
    let mut events: Vec<tests::keeper::Event> = Vec::new();
    let after = |event: tests::keeper::Event, events: &mut Vec<tests::keeper::Event>| {
        let what = format!(
            "{:?} #{} (worker {} -> {}, takeover after {:.2} s)",
            event.kind,
            events.len() + 1,
            event.old_worker,
            event.new_worker,
            event.seconds()
        );
        eprintln!("keeper test: {what}");
        readers.check_no_failure(&what, &keeper);
        readers.wait_reads_after(tests::keeper::unix_seconds(event.done), 8, &what, &keeper);
        events.push(event);
    };
    for _ in 0..5 {
        let event = ok(keeper.kill_worker());
        after(event, &mut events);
    }
    let event = ok(keeper.upgrade());
    after(event, &mut events);
    let event = ok(keeper.stop_then_kill_worker(Duration::from_secs(30)));
    after(event, &mut events);

    // The longest stall of each reader around each kind of event, and before any.
    let logs: Vec<(&str, ReaderLog)> = KEEPER_READERS
        .iter()
        .map(|name| (*name, readers.log(name)))
        .collect();
    let first_sent = tests::keeper::unix_seconds(events[0].sent);
    for (name, log) in &logs {
        let before = tests::keeper::longest_gap(&log.oks, started, first_sent - 0.5);
        eprintln!(
            "keeper test: reader {name}: {} reads; longest gap before the first event {}",
            log.oks.len(),
            seconds(before)
        );
        for kind in [EventKind::Kill, EventKind::Upgrade, EventKind::StopThenKill] {
            let of_kind: Vec<&tests::keeper::Event> =
                events.iter().filter(|e| e.kind == kind).collect();
            let stall = of_kind
                .iter()
                .filter_map(|e| {
                    tests::keeper::longest_gap(
                        &log.oks,
                        tests::keeper::unix_seconds(e.sent),
                        tests::keeper::unix_seconds(e.done),
                    )
                })
                .reduce(f64::max);
            let takeover = of_kind.iter().map(|e| e.seconds()).reduce(f64::max);
            eprintln!(
                "keeper test: reader {name}: {kind:?} x{}: longest read stall {}, longest \
                 signal-to-takeover {}",
                of_kind.len(),
                seconds(stall),
                seconds(takeover)
            );
        }
    }

    // The containers are still there and can go, as can the image; a fresh pull runs.
    readers.check_no_failure("the last event", &keeper);
    let tasks = env.ctr(&["tasks", "ls"]);
    let containers = env.ctr(&["containers", "ls"]);
    for name in KEEPER_READERS {
        let id = format!("reader-{name}");
        assert!(
            tasks
                .lines()
                .any(|l| l.starts_with(&format!("{id} ")) && l.contains("RUNNING")),
            "{tasks}"
        );
        assert!(
            containers.lines().any(|l| l.starts_with(&format!("{id} "))),
            "{containers}"
        );
        env.ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
        env.wait_for("the reader task to stop", || {
            env.ctr_raw(&["tasks", "rm", &id]).0
        });
        env.ctr(&["containers", "rm", &id]);
    }
    env.ctr(&["images", "rm", "--sync", &reference]);
    env.wait_for("GC of the image's snapshots", || {
        let ls = env.snap(&["ls"]);
        image.chains.iter().all(|c| !ls.contains(c.as_str()))
    });
    let mark = stack.registry_mark();
    env.pull_ok(&reference);
    assert_eq!(
        stack.blob_gets_since(mark, &image.layer_digests),
        0,
        "layer blobs were fetched by the pull after the takeovers"
    );
    let out = env.run_sh(
        &reference,
        "after-keeper",
        &format!(
            "/bin/cat /data/a/f{last} /data/b/f{last}",
            last = KEEPER_FILES - 1
        ),
    );
    assert_eq!(
        out,
        format!("a {last}\nb {last}\n", last = KEEPER_FILES - 1)
    );
    assert!(
        keeper.takeovers() >= events.len(),
        "a takeover per event:\n{}",
        keeper.log_text()
    );
}

/// `1.23 s`, or `-` for none.
fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |s| format!("{s:.2} s"))
}
