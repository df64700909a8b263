//! `strata-snapshotter run` and `pull` against a private containerd 1.6 (Debian's), driven
//! with `ctr`. The repository "mount point" is a plain directory tree laid out as
//! CONTRACTS §3 describes (`.layers`, `.chainids`, `.metadata`), so no FUSE is involved;
//! running a container is covered by the workspace end-to-end test.
//!
//! Needs root (containerd) and the `containerd` and `ctr` binaries; fails without them.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const NAMESPACE: &str = "strata-it";
const SNAPSHOTTER: &str = "strata";
const IMAGE: &str = "127.0.0.1:5000/demo:1";

/// A child process killed (by its pid) and reaped on drop.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, mut command: Command, log: &Path) -> Process {
        let out = std::fs::File::create(log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Process {
            name,
            child,
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `socket` accepts connections; panics with the log after 30 s or if the
    /// process exits.
    fn wait_socket(&mut self, socket: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if UnixStream::connect(socket).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}:\n{}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {} within 30 s:\n{}",
                self.name,
                socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// containerd + our snapshotter in one temp dir. Field order = drop order: containerd
/// stops before the snapshotter.
struct Env {
    containerd: Process,
    snapshotter: Process,
    address: PathBuf,
    mountpoint: PathBuf,
    root: PathBuf,
    dir: tempfile::TempDir,
}

impl Env {
    fn start() -> Env {
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
        let mountpoint = d.join("mnt");
        let root = d.join("strata-root");
        std::fs::create_dir_all(&mountpoint).expect("mkdir mnt");

        let mut run = Command::new(env!("CARGO_BIN_EXE_strata-snapshotter"));
        run.arg("run")
            .arg("--socket")
            .arg(&snap_socket)
            .arg("--root")
            .arg(&root)
            .arg("--mountpoint")
            .arg(&mountpoint)
            .arg("--name")
            .arg(SNAPSHOTTER)
            .env("RUST_LOG", "info,snapshotter=debug");
        let mut snapshotter = Process::spawn("strata-snapshotter run", run, &d.join("run.log"));
        snapshotter.wait_socket(&snap_socket);

        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\n\
                 root = \"{root}\"\n\
                 state = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
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
            ),
        )
        .expect("write config");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config);
        let mut containerd = Process::spawn("containerd", cmd, &d.join("containerd.log"));
        containerd.wait_socket(&address);
        let env = Env {
            containerd,
            snapshotter,
            address,
            mountpoint,
            root,
            dir,
        };
        // containerd answers only once its plugins are loaded.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !env.ctr_raw(&["version"]).0 {
            assert!(
                Instant::now() < deadline,
                "containerd not ready:\n{}",
                env.containerd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        env
    }

    fn ctr_raw(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.address)
            .arg("-n")
            .arg(NAMESPACE)
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
        let (ok, text) = self.ctr_raw(args);
        assert!(
            ok,
            "ctr {args:?} failed:\n{text}\n--- snapshotter log:\n{}\n--- containerd log (tail):\n{}",
            self.snapshotter.log(),
            tail(&self.containerd.log(), 40)
        );
        text
    }

    fn snap(&self, args: &[&str]) -> String {
        let mut all = vec!["snapshots", "--snapshotter", SNAPSHOTTER];
        all.extend_from_slice(args);
        self.ctr(&all)
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

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
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
        let digest = sha256(format!("{reference} layer {i} compressed").as_bytes());
        let diff = sha256(format!("{reference} layer {i} tar").as_bytes());
        if publish_layers {
            let hex = hex_of(&digest);
            let layerfs = mount
                .join(".layers")
                .join(&hex[..2])
                .join(hex)
                .join("layerfs");
            std::fs::create_dir_all(layerfs.join("etc")).expect("mkdir layerfs");
            std::fs::write(layerfs.join("etc").join(file), format!("layer{i}\n")).expect("write");
            if i == 0 {
                install_shell(&layerfs);
            }
        }
        layer_digests.push(digest);
        diff_ids.push(diff);
    }
    let mut chain_ids: Vec<String> = Vec::new();
    for diff in &diff_ids {
        let next = match chain_ids.last() {
            None => diff.clone(),
            Some(prev) => sha256(format!("{prev} {diff}").as_bytes()),
        };
        chain_ids.push(next);
    }
    if publish_layers {
        for (chain, digest) in chain_ids.iter().zip(&layer_digests) {
            let (c, l) = (hex_of(chain), hex_of(digest));
            let dir = mount.join(".chainids").join(&c[..2]);
            std::fs::create_dir_all(&dir).expect("mkdir chainids");
            std::os::unix::fs::symlink(
                format!("../../.layers/{}/{l}/layerfs", &l[..2]),
                dir.join(c),
            )
            .expect("symlink");
        }
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes();
    let layers: Vec<serde_json::Value> = layer_digests
        .iter()
        .map(|d| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d,
                "size": 1234,
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": layers,
    })
    .to_string()
    .into_bytes();
    let meta = mount.join(".metadata").join(reference);
    std::fs::create_dir_all(&meta).expect("mkdir metadata");
    std::fs::write(meta.join("manifest.json"), &manifest).expect("write manifest");
    std::fs::write(meta.join("config.json"), &config).expect("write config");
    (layer_digests, chain_ids)
}

/// Copies `/bin/dash` (as `bin/sh`) and the shared libraries `ldd` lists for it into
/// `layerfs`: just enough for `ctr run … /bin/sh -c …`.
fn install_shell(layerfs: &Path) {
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    };
    copy(Path::new("/bin/dash"), &layerfs.join("bin/sh"));
    let ldd = Command::new("ldd")
        .arg("/bin/dash")
        .output()
        .expect("run ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
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

    env.snap(&["prepare", "child", "base"]);
    let m = env.snap(&["mounts", "/tmp/target", "child"]);
    assert!(m.contains("overlay"), "{m}");
    assert!(
        m.contains("upperdir=") && m.contains("workdir=") && m.contains("lowerdir="),
        "{m}"
    );

    env.snap(&["view", "ro", "base"]);
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

    let out = env.pull(IMAGE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pull failed:\n{stdout}{}\n--- snapshotter log:\n{}\n--- containerd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.snapshotter.log(),
        tail(&env.containerd.log(), 40)
    );
    for step in ["metadata:", "connect:", "content:", "snapshots:", "image:"] {
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
    let log = env.snapshotter.log();
    assert_eq!(log.matches("remote: layer published").count(), 3, "{log}");

    // A container snapshot on top stacks the three layerfs dirs, top first.
    env.snap(&["prepare", "ctr-rootfs", &chains[2]]);
    let m = env.snap(&["mounts", "/tmp/target", "ctr-rootfs"]);
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|d| {
            let hex = hex_of(d);
            env.mountpoint
                .join(".layers")
                .join(&hex[..2])
                .join(hex)
                .join("layerfs")
                .display()
                .to_string()
        })
        .collect();
    assert!(
        m.contains(&format!("lowerdir={}", lower.join(":"))),
        "{m}\nexpected {lower:?}"
    );
    env.snap(&["rm", "ctr-rootfs"]);

    // ctr considers the image unpacked (it Stats the top ChainID) and runs a container on
    // an overlay of the three remote layers plus a local upper dir.
    let out = env.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        SNAPSHOTTER,
        IMAGE,
        "strata-it-run",
        "/bin/sh",
        "-c",
        "read a < /etc/a; read c < /etc/c; echo \"$a-$c\"; echo x > /etc/new; read n < /etc/new; echo $n",
    ]);
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
    let log = env.snapshotter.log();
    assert!(log.contains("fallback to local snapshot"), "{log}");

    // Nothing half-done stays behind as an image.
    let images = env.ctr(&["images", "ls"]);
    assert!(!images.contains(reference), "{images}");

    // And an unknown reference is a clear error too.
    let out = env.pull("127.0.0.1:5000/nothing:1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("manifest.json"), "{stderr}");
}
