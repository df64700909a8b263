//! The real repository stack for the containerd tests that need more than a fake mount
//! directory: Debian's `docker-registry` holding images pushed with `skopeo`,
//! `strata-publisher init/ingest/serve`, and `strata-snapshotter mount` (FUSE) of the
//! published repository, with its xattr-less plain mount beside it (as deployed). Images are built here from directories on local disk (OCI
//! layout, gzip layers, `security.capability` kept as `SCHILY.xattr`).
//!
//! `strata-publisher` must be built (`cargo build -p publisher`; CI builds the workspace
//! first): it is looked up beside this package's binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use tests::image::write_layout_with;
use tests::registry::Registry;
use tests::strata::{FuseMount, HttpServer, MountArgs, Repo};

use super::chain_ids_of;

/// The repository name the stack publishes under.
pub const FQRN: &str = "ctd.strata.test";

/// An OCI image built by [`oci_image`].
#[derive(Clone, Debug)]
pub struct Built {
    /// The OCI layout directory (`oci:DIR:TAG` for skopeo).
    pub layout: PathBuf,
    /// The tag inside the layout.
    pub tag: String,
    /// Compressed layer digests, bottom first.
    pub layer_digests: Vec<String>,
    /// ChainIDs, bottom first.
    pub chains: Vec<String>,
    /// The config digest (the image ID).
    pub config_digest: String,
}

fn run_ok(what: &str, cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Builds an OCI layout at `work/<tag>-oci` whose layers are the directories `layers`
/// (bottom first): `tar --xattrs` (numeric owners, `security.capability` kept), stored
/// gzip-compressed ([`tests::image::write_layout_with`]). The config runs `/bin/sh` on
/// linux/amd64.
pub fn oci_image(work: &Path, tag: &str, layers: &[PathBuf]) -> Built {
    let layout = work.join(format!("{tag}-oci"));
    let tars: Vec<Vec<u8>> = layers
        .iter()
        .map(|dir| {
            run_ok(
                "tar",
                Command::new("tar")
                    .args([
                        "--xattrs",
                        "--xattrs-include=security.capability",
                        "--numeric-owner",
                        "--sort=name",
                        "-C",
                    ])
                    .arg(dir)
                    .args(["-cf", "-", "."]),
            )
        })
        .collect();
    let config = serde_json::json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]});
    let image = write_layout_with(&layout, tag, &tars, config)
        .unwrap_or_else(|e| panic!("write {}: {e}", layout.display()));
    Built {
        layout,
        tag: tag.to_string(),
        chains: chain_ids_of(&image.diff_ids),
        layer_digests: image.layers,
        config_digest: image.config,
    }
}

/// Registry, publisher HTTP server and FUSE mount, in `dir`. Field order = drop order: the
/// mount goes first (drop the containerd [`super::Env`] before this), then the server,
/// then the registry.
pub struct Stack {
    mount: FuseMount,
    _serve: HttpServer,
    registry: Registry,
    /// `127.0.0.1:PORT` of the registry.
    pub registry_host: String,
    /// Where the repository is mounted.
    pub mountpoint: PathBuf,
    /// Where the same mount process mounts it again without extended attributes
    /// (`mount --plain-mountpoint`, as deployed): `<dir>/cvmfs-plain`.
    pub plain_mountpoint: PathBuf,
}

impl Stack {
    /// Starts the registry, pushes `images` (`(built image, "repo:tag")`) with skopeo,
    /// publishes them all with `strata-publisher ingest`, serves the repository and
    /// mounts it with `strata-snapshotter mount --plain-mountpoint` (both mounts).
    pub fn start(dir: &Path, images: &[(&Built, &str)]) -> Stack {
        Stack::start_with(dir, images, &[])
    }

    /// As [`Stack::start`], with `mount_options` added to the `mount` command line (e.g.
    /// `--keeper`).
    pub fn start_with(dir: &Path, images: &[(&Built, &str)], mount_options: &[&str]) -> Stack {
        Stack::start_recorded(dir, images, mount_options, &[])
    }

    /// As [`Stack::start_with`]; before the mount starts, the start of each `(image name
    /// as pushed, command)` of `recorded` is recorded in the publisher's sandbox and
    /// published as startup packs (`strata-publisher startup --record`).
    pub fn start_recorded(
        dir: &Path,
        images: &[(&Built, &str)],
        mount_options: &[&str],
        recorded: &[(&str, &[&str])],
    ) -> Stack {
        if let Err(e) = tests::binaries::check_root_and_fuse() {
            panic!("{e}");
        }
        std::fs::create_dir_all(dir).expect("mkdir stack");
        let registry_dir = dir.join("registry");
        std::fs::create_dir_all(&registry_dir).expect("mkdir registry");
        let registry = Registry::start(&registry_dir, &dir.join("registry.log"))
            .unwrap_or_else(|e| panic!("start the registry: {e}"));
        let host = registry.host();
        for (image, name) in images {
            registry
                .push(
                    &format!("oci:{}:{}", image.layout.display(), image.tag),
                    &format!("{host}/{name}"),
                    &dir.join("skopeo.log"),
                )
                .unwrap_or_else(|e| panic!("skopeo copy: {e}"));
        }
        let repo = Repo::init(&dir.join("repo"), FQRN, &dir.join("publisher.log"))
            .unwrap_or_else(|e| panic!("strata-publisher init: {e}"));
        let mut refs = vec!["--insecure-registry".to_string(), host.clone()];
        refs.extend(
            images
                .iter()
                .map(|(_, name)| format!("docker://{host}/{name}")),
        );
        let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
        repo.ingest(&refs, &dir.join("publisher.log"))
            .unwrap_or_else(|e| panic!("strata-publisher ingest: {e}"));
        for (name, command) in recorded {
            repo.record_startup(
                &format!("{host}/{name}"),
                &dir.join(format!("{}.trace", name.replace(['/', ':'], "-"))),
                "60s",
                command,
                &dir.join("publisher.log"),
            )
            .unwrap_or_else(|e| panic!("strata-publisher startup --record {name}: {e}"));
        }
        let serve = repo
            .serve(&dir.join("serve.log"))
            .unwrap_or_else(|e| panic!("strata-publisher serve: {e}"));

        let mountpoint = dir.join("cvmfs");
        let plain_mountpoint = dir.join("cvmfs-plain");
        let mount = FuseMount::start_with_options(
            &MountArgs {
                fqrn: FQRN,
                server: &serve.server_url(),
                pubkey: &repo.public_key(),
                cache: &dir.join("cache"),
                mountpoint: &mountpoint,
            },
            Some(&plain_mountpoint),
            mount_options,
            &dir.join("mount.log"),
        )
        .unwrap_or_else(|e| panic!("strata-snapshotter mount: {e}"));
        Stack {
            mount,
            _serve: serve,
            registry,
            registry_host: host,
            mountpoint,
            plain_mountpoint,
        }
    }

    /// How many requests the registry's access log has now (for
    /// [`Stack::blob_gets_since`]); the publisher's own ingest fetched every layer once
    /// before this.
    pub fn registry_mark(&self) -> usize {
        self.access_log().len()
    }

    /// `GET /v2/<repository>/blobs/<digest>` requests for any of `digests` in the
    /// registry's access log after request `mark`.
    pub fn blob_gets_since(&self, mark: usize, digests: &[String]) -> usize {
        self.access_log()
            .iter()
            .skip(mark)
            .filter(|l| {
                l.method == "GET"
                    && l.path.starts_with("/v2/")
                    && digests
                        .iter()
                        .any(|d| l.path.contains(&format!("/blobs/{d}")))
            })
            .count()
    }

    fn access_log(&self) -> Vec<tests::registry::AccessLine> {
        self.registry
            .access_log()
            .unwrap_or_else(|e| panic!("the registry's access log: {e}"))
    }

    /// The `strata-snapshotter mount` process (with `--keeper`, the keeper).
    pub fn mount(&self) -> &FuseMount {
        &self.mount
    }

    /// The FUSE mount's `/proc/self/mountinfo` line (options), for diagnostics.
    pub fn mount_options(&self) -> String {
        let want = self.mountpoint.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(want.as_str()))
            .unwrap_or_default()
            .to_string()
    }
}

/// Copies each `(host binary, path in dir)` and the shared libraries `ldd` lists for them
/// into `dir` (libraries at their host paths).
pub fn install_tools(dir: &Path, tools: &[(&str, &str)]) {
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    };
    let mut ldd = Command::new("ldd");
    for (from, to) in tools {
        copy(Path::new(from), &dir.join(to));
        ldd.arg(from);
    }
    let out = run_ok("ldd", &mut ldd);
    for line in String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| !l.trim_end().ends_with(':'))
    {
        if let Some(lib) = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from)
        {
            let real = lib.canonicalize().expect("canonicalize library");
            copy(&real, &dir.join(lib.strip_prefix("/").expect("absolute")));
        }
    }
}

/// Sets mode bits (`chmod`) and owner of `path`.
pub fn set_mode_owner(path: &Path, mode: u32, uid: u32, gid: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    // chown clears setuid: set the mode afterwards.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Gives `path` the file capabilities `caps` (`setcap`, libcap2-bin).
pub fn setcap(path: &Path, caps: &str) {
    run_ok("setcap", Command::new("setcap").arg(caps).arg(path));
}
