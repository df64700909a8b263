//! Shared helpers of the publisher's command-line tests (`cli.rs`, `sync.rs`): running the
//! binary, synthetic layers and OCI layouts, and a `docker-registry` filled with `skopeo`.
//! What the workspace's other tests need too (the registry process, blobs and digests,
//! tools on `PATH`) is the `tests` crate's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tests::random::pseudo_random;

pub use tests::image::{LayoutImage, sha256_digest};
pub use tests::ok;

pub const BIN: &str = env!("CARGO_BIN_EXE_strata-publisher");

pub fn run(args: &[&str]) -> Output {
    ok(Command::new(BIN).args(args).output())
}

/// Runs `strata-publisher args`, panics with its output unless it succeeds; returns stdout.
pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "strata-publisher {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn init_repo(dir: &Path, fqrn: &str) {
    run_ok(&["init", "--repo", &dir.display().to_string(), "--fqrn", fqrn]);
}

/// `verify` must pass; returns its stdout.
pub fn verify_ok(dir: &Path) -> String {
    run_ok(&["verify", "--repo", &dir.display().to_string()])
}

/// Fails the test, naming the missing tool, unless `docker-registry` and `skopeo` are
/// installed: a missing tool is a failure, never a silent pass.
pub fn require_registry_tools() {
    for tool in ["docker-registry", "skopeo"] {
        assert!(
            tests::binaries::which(tool).is_some(),
            "{tool} is not installed (Debian package {tool}); run scripts/install-deps as root"
        );
    }
}

/// A layer tar with `files` files `l<seed>/f<i>` of `size` bytes of noise.
pub fn noise_layer(seed: u64, files: usize, size: usize) -> Vec<u8> {
    layer_tar(seed, files, |i| pseudo_random(size, seed * 1000 + i as u64))
}

/// A layer tar with `files` files `l<seed>/f<i>` of `size` bytes, half noise, half text.
pub fn mixed_layer(seed: u64, files: usize, size: usize) -> Vec<u8> {
    layer_tar(seed, files, |i| {
        let mut data = pseudo_random(size / 2, seed * 1000 + i as u64);
        data.extend(
            format!("line {i} of layer {seed}\n")
                .repeat(size / 40)
                .bytes()
                .take(size / 2),
        );
        data
    })
}

fn layer_tar(seed: u64, files: usize, content: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..files {
        let data = content(i);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        ok(b.append_data(&mut h, format!("l{seed}/f{i}"), &data[..]));
    }
    ok(b.into_inner())
}

/// `raw` gzip-compressed ([`tests::image::gzip`]).
pub fn gzip(raw: &[u8]) -> Vec<u8> {
    ok(tests::image::gzip(raw))
}

/// Writes an OCI layout (one linux/amd64 image, tagged `tag`) of gzip layers
/// ([`tests::image::write_layout`]).
pub fn write_layout(dir: &Path, tag: &str, tars: &[Vec<u8>]) -> LayoutImage {
    ok(tests::image::write_layout(dir, tag, tars))
}

/// A `docker-registry` on a free loopback port (access log on, deletes enabled; the
/// `tests` crate's [`tests::registry::Registry`]), with the pushes these tests make; killed
/// on drop.
pub struct Registry {
    registry: tests::registry::Registry,
    pub addr: SocketAddr,
    work: PathBuf,
}

impl Registry {
    /// Starts a registry storing below `dir`; waits (up to 30 s) until `/v2/` answers.
    pub fn start(dir: &Path) -> Registry {
        let registry = ok(tests::registry::Registry::start(
            dir,
            &dir.join("registry.log"),
        ));
        Registry {
            addr: registry.addr(),
            registry,
            work: dir.to_path_buf(),
        }
    }

    /// Copies tag `tag` of the OCI layout `layout` to `<repo>:<tag>` here with skopeo
    /// (`all`: every image of an index, `skopeo copy --all`).
    pub fn copy_in(&self, layout: &Path, tag: &str, repo: &str, all: bool) {
        let mut cmd = Command::new("skopeo");
        cmd.arg("copy");
        if all {
            cmd.arg("--all");
        }
        let out = ok(cmd
            .args(["--dest-tls-verify=false", "--quiet"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.addr))
            .output());
        assert!(
            out.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Pushes a fresh image of noise layers (`seeds`, each `files` files of `size` bytes)
    /// under `repo:tag`; returns its config digest.
    pub fn push(&self, repo: &str, tag: &str, seeds: &[u64], files: usize, size: usize) -> String {
        let layout = self
            .work
            .join(format!("layout-{}-{tag}-{seeds:?}", repo.replace('/', "_")));
        let tars: Vec<Vec<u8>> = seeds.iter().map(|s| noise_layer(*s, files, size)).collect();
        let image = write_layout(&layout, tag, &tars);
        self.copy_in(&layout, tag, repo, false);
        image.config
    }

    /// Access-log lines `GET /v2/<repo>/blobs/<digest>` for any of `digests`.
    pub fn blob_gets(&self, repo: &str, digests: &[String]) -> usize {
        ok(self.registry.access_log())
            .iter()
            .filter(|l| {
                l.method == "GET"
                    && digests
                        .iter()
                        .any(|d| l.path == format!("/v2/{repo}/blobs/{d}"))
            })
            .count()
    }
}

/// `(name, content hash, compressed)` of every file in the published `startup/` directory of
/// image `public`, platform linux/amd64, in name order.
pub fn startup_files(repo: &Path, public: &str) -> Vec<(String, catalog::ContentHash, bool)> {
    let r = ok(publisher::repo::Repo::open(repo));
    let ns = ok(publisher::publish::load_namespace(&r));
    let dir = namespace::paths::startup_dir(public, "linux-amd64");
    let node = ns
        .root
        .get(&dir)
        .unwrap_or_else(|| panic!("no {}", namespace::paths::join(&dir)));
    node.children
        .iter()
        .map(|(name, n)| {
            let hash = n.entry.hash.unwrap_or_else(|| panic!("{name} has no hash"));
            (name.clone(), hash, n.entry.compressed)
        })
        .collect()
}
