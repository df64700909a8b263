//! The main job, end to end, as both the e2e test and `strata-demo` run it:
//! registry → push → `strata-publisher init/ingest/serve` → `strata-snapshotter mount` →
//! private containerd → `strata-snapshotter run` → `strata-snapshotter pull` → `ctr run`.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::binaries::{check_prerequisites, target_dir};
use crate::containerd::{Containerd, NAMESPACE, Release, SNAPSHOTTER_NAME};
use crate::cri;
use crate::error::{Error, Result};
use crate::image::{self, TestImage};
use crate::registry::Registry;
use crate::steps::Steps;
use crate::strata::{self, FuseMount, HttpServer, PullArgs, Repo, Served, SnapshotterDaemon};
use crate::workdir::WorkDir;

/// The repository name used by the scenario.
pub const FQRN: &str = "demo.strata.example";
/// Repository and tag the image is pushed as: `127.0.0.1:PORT/demo:1`.
pub const PUSHED_NAME: (&str, &str) = ("demo", "1");
/// The workload: imports two standard modules and prints a computed value.
pub const WORKLOAD: &str = "import hashlib, json; \
     print(json.dumps({\"sha256\": hashlib.sha256(b\"strata\").hexdigest()}))";

/// What [`WORKLOAD`] must print (computed here with the `sha2` crate).
pub fn expected_workload_output() -> String {
    format!(
        "{{\"sha256\": \"{}\"}}\n",
        hex::encode(Sha256::digest(b"strata"))
    )
}

/// Where the cached test image lives: `<target>/strata-test-images/`.
pub fn image_cache_root() -> Result<PathBuf> {
    Ok(target_dir()?.join("strata-test-images"))
}

/// The publishing side: registry with the pushed image, publisher repository, HTTP server.
/// Drop order (fields top to bottom) stops the server before the registry.
#[derive(Debug)]
pub struct Published {
    /// `strata-publisher serve`.
    pub server: HttpServer,
    /// The test registry.
    pub registry: Registry,
    /// The publisher repository.
    pub repo: Repo,
    /// The image as built (OCI layout and manifest facts).
    pub image: TestImage,
    /// The reference as pushed and published: `127.0.0.1:PORT/demo:1`.
    pub reference: String,
    /// Registry blob GETs logged when the ingest finished.
    pub blob_gets_at_ingest_end: usize,
}

impl Published {
    /// Checks prerequisites, builds (or reuses) the test image, starts the registry, pushes,
    /// initialises a repository, ingests the image from the registry and serves it.
    pub fn up(work: &WorkDir, steps: &mut Steps) -> Result<Published> {
        steps.run(
            "check prerequisites (root, /dev/fuse, tools, built binaries)",
            check_prerequisites,
        )?;
        let cache = image_cache_root()?;
        let image = steps.run(
            "test image: debootstrap minbase + python3 + whiteout layer (cached)",
            || image::test_image(&cache),
        )?;
        let registry = steps.run("start docker-registry on 127.0.0.1", || {
            Registry::start(&work.subdir("registry")?, &work.log("registry"))
        })?;
        let reference = format!("{}/{}:{}", registry.host(), PUSHED_NAME.0, PUSHED_NAME.1);
        steps.run(
            &format!("push the image with skopeo to {reference}"),
            || {
                registry
                    .push(&image.oci_reference(), &reference, &work.log("skopeo"))
                    .map(drop)
            },
        )?;
        let repo_dir = work.path().join("repo");
        let repo = steps.run(&format!("strata-publisher init --fqrn {FQRN}"), || {
            Repo::init(&repo_dir, FQRN, &work.log("publisher-init"))
        })?;
        steps.run(
            &format!("strata-publisher ingest docker://{reference}"),
            || {
                repo.ingest(
                    &[&format!("docker://{reference}")],
                    &work.log("publisher-ingest"),
                )
            },
        )?;
        let blob_gets_at_ingest_end = registry.blob_gets(PUSHED_NAME.0)?;
        let server = steps.run("strata-publisher serve --listen 127.0.0.1:PORT", || {
            repo.serve(&work.log("publisher-serve"))
        })?;
        Ok(Published {
            server,
            registry,
            repo,
            image,
            reference,
            blob_gets_at_ingest_end,
        })
    }
}

/// The whole slice. Drop order: containerd (tasks, shims), snapshotter daemon, FUSE mount,
/// then the publishing side.
#[derive(Debug)]
pub struct Stack {
    /// The private containerd.
    pub containerd: Containerd,
    /// `strata-snapshotter run`.
    pub snapshotter: SnapshotterDaemon,
    /// `strata-snapshotter mount`.
    pub mount: FuseMount,
    /// Registry, repository and HTTP server.
    pub published: Published,
}

impl Stack {
    /// Mounts the repository, starts containerd and the snapshotter and pulls the image
    /// lazily.
    pub fn attach(published: Published, work: &WorkDir, steps: &mut Steps) -> Result<Stack> {
        Stack::attach_with(published, work, steps, None)
    }

    /// As [`Stack::attach`], with containerd `release` configured by its deploy snippet
    /// ([`Containerd::start_release`]) instead of Debian 12's with the minimal config.
    pub fn attach_with(
        published: Published,
        work: &WorkDir,
        steps: &mut Steps,
        release: Option<&Release>,
    ) -> Result<Stack> {
        let stack = Stack::attach_unpulled(published, work, steps, release)?;
        stack.pull_lazily(work, steps)?;
        Ok(stack)
    }

    /// As [`Stack::attach_with`] without the pull: nothing is in containerd yet, so that a
    /// first pull (e.g. CRI's, [`Stack::check_cri_pull`]) is the one that makes the layers'
    /// snapshots.
    pub fn attach_unpulled(
        published: Published,
        work: &WorkDir,
        steps: &mut Steps,
        release: Option<&Release>,
    ) -> Result<Stack> {
        // With the xattr-less second mount, as deployed (deploy/README.md), and an access
        // trace of everything the containers read ([`Stack::check_trace`]).
        let trace = work.path().join("mount.trace");
        let trace_arg = trace.to_string_lossy().into_owned();
        let mount = steps.run("strata-snapshotter mount (FUSE, plain mount too)", || {
            let options = ["--trace", trace_arg.as_str()];
            published
                .repo
                .mount(&published.server, work, true, &options)
        })?;
        let mountpoint = mount.mountpoint().to_owned();
        let plain = strata::plain_mountpoint_of(&mountpoint);
        let snapshotter_socket = work.path().join("snapshotter.sock");
        // The snapshotter listens before containerd starts, as deployed (deploy/README.md):
        // containerd dials the proxy plugin's socket as it loads it, and a refused dial
        // makes gRPC fail calls for its reconnect backoff (a pull right after the start
        // failed with "connection refused" once in CI).
        let snapshotter = steps.run(
            "strata-snapshotter run (containerd proxy snapshotter)",
            || {
                SnapshotterDaemon::start_with_plain(
                    &snapshotter_socket,
                    &work.path().join("snapshotter-root"),
                    &mountpoint,
                    Some(&plain),
                    &work.log("snapshotter-run"),
                )
            },
        )?;
        let containerd = steps.run("start a private containerd with the proxy plugin", || {
            let dir = work.subdir("containerd")?;
            let (log, ctr_log) = (work.log("containerd"), work.log("ctr"));
            match release {
                None => Containerd::start(&dir, &log, &ctr_log, &snapshotter_socket),
                Some(release) => Containerd::start_release(
                    &dir,
                    &log,
                    &ctr_log,
                    &snapshotter_socket,
                    release,
                    &published.registry.host(),
                ),
            }
        })?;
        Ok(Stack {
            containerd,
            snapshotter,
            mount,
            published,
        })
    }

    /// `strata-snapshotter pull` of the published image into [`NAMESPACE`] (lazy).
    pub fn pull_lazily(&self, work: &WorkDir, steps: &mut Steps) -> Result<()> {
        let reference = &self.published.reference;
        steps.run(
            &format!("strata-snapshotter pull {reference} (lazy)"),
            || {
                strata::pull(
                    &PullArgs {
                        address: self.containerd.socket(),
                        namespace: NAMESPACE,
                        snapshotter: SNAPSHOTTER_NAME,
                        mountpoint: self.mount.mountpoint(),
                        reference,
                    },
                    &work.log("snapshotter-pull"),
                )
            },
        )
    }

    /// Runs [`WORKLOAD`] through the Strata snapshotter; see [`check_workload`].
    pub fn check_workload(&self) -> Result<String> {
        check_workload(
            &self.containerd,
            SNAPSHOTTER_NAME,
            &self.published.reference,
        )
    }

    /// The mount's access trace after the workload ran in a container: the Python binary
    /// and the `json` package it imports, read through a layer's `layerfs` (the paths
    /// overlayfs reads for the container), each once, the binary before the package.
    /// Returns the number of files traced.
    pub fn check_trace(&self, work: &WorkDir) -> Result<usize> {
        let path = work.path().join("mount.trace");
        let text = std::fs::read_to_string(&path)
            .map_err(crate::error::io_context(format!("read {}", path.display())))?;
        let mut lines = text.lines();
        if lines.next() != Some("# strata access trace v2") {
            return Err(Error::Invalid(format!(
                "{}: no trace header",
                path.display()
            )));
        }
        // The files opened (a chunked file's chunks follow as `chunk <i> <path>` lines).
        let paths: Vec<&str> = lines.filter(|l| l.starts_with('/')).collect();
        let unique: std::collections::HashSet<&&str> = paths.iter().collect();
        if unique.len() != paths.len() {
            return Err(Error::Invalid(format!(
                "{}: a path is listed twice",
                path.display()
            )));
        }
        let position = |what: &str, wanted: &dyn Fn(&str) -> bool| {
            paths
                .iter()
                .position(|p| p.contains("/layerfs/") && wanted(p))
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "{}: no {what} read through a layerfs among {} paths",
                        path.display(),
                        paths.len()
                    ))
                })
        };
        let python = position("python3 binary", &|p| p.ends_with("/usr/bin/python3.11"))?;
        let json = position("json package", &|p| p.contains("/usr/lib/python3.11/json/"))?;
        if python > json {
            return Err(Error::Invalid(format!(
                "{}: the json package is listed before the python3 binary",
                path.display()
            )));
        }
        Ok(paths.len())
    }

    /// Whiteouts through the Strata snapshotter; see [`check_whiteouts`].
    pub fn check_whiteouts(&self) -> Result<()> {
        check_whiteouts(
            &self.containerd,
            SNAPSHOTTER_NAME,
            &self.published.reference,
        )
    }

    /// `ctr snapshots --snapshotter strata ls` lists every layer's ChainID as Committed.
    pub fn check_snapshots(&self) -> Result<Vec<(String, String)>> {
        let listed = self.containerd.snapshots(SNAPSHOTTER_NAME)?;
        let missing: Vec<String> = self
            .published
            .image
            .facts
            .chain_ids()
            .into_iter()
            .filter(|id| {
                !listed
                    .iter()
                    .any(|(key, kind)| key == id && kind == "Committed")
            })
            .collect();
        if !missing.is_empty() {
            return Err(Error::Invalid(format!(
                "ctr snapshots --snapshotter {SNAPSHOTTER_NAME} ls lacks committed layers {missing:?}; listed {listed:?}"
            )));
        }
        Ok(listed)
    }

    /// The kubelet's path, as the first pull of the image ([`Stack::attach_unpulled`]): a
    /// CRI `PullImage` of the published image (into containerd's `k8s.io` namespace, with
    /// the deploy snippet's CRI settings) answers the config digest and makes every layer
    /// a remote snapshot of the Strata snapshotter (label `containerd.io/snapshot/remote`,
    /// and the snapshotter logs each layer published `via` the CRI layer-digest label) with
    /// no layer blob fetched from the registry or kept in the content store; `ImageStatus`
    /// knows the tag; the workload then runs from the CRI-pulled image. Returns the
    /// workload's output.
    pub fn check_cri_pull(&self) -> Result<String> {
        let published = &self.published;
        let facts = &published.image.facts;
        let layers: Vec<&str> = facts.layers.iter().map(|l| l.digest.as_str()).collect();
        let gets_before = published.registry.blob_gets_of(PUSHED_NAME.0, &layers)?;
        let reference = &published.reference;
        let socket = self.containerd.socket();
        let published_via_cri = || -> Result<usize> {
            Ok(self
                .snapshotter
                .log_text()?
                .lines()
                .filter(|l| l.contains("remote: layer published") && l.contains("cri.layer-digest"))
                .count())
        };
        let published_before = published_via_cri()?;
        let image_ref = cri::pull_image(socket, reference)?;
        if image_ref != facts.config_digest {
            return Err(Error::Invalid(format!(
                "CRI PullImage {reference} answered {image_ref}, expected the config digest {}",
                facts.config_digest
            )));
        }
        let status = cri::image_status(socket, reference)?.ok_or_else(|| {
            Error::Invalid(format!(
                "CRI ImageStatus: {reference} unknown after PullImage"
            ))
        })?;
        if status.id != facts.config_digest || !status.repo_tags.contains(reference) {
            return Err(Error::Invalid(format!(
                "CRI ImageStatus {reference}: {status:?}"
            )));
        }
        for chain in facts.chain_ids() {
            let info = self.containerd.ctr_in(
                cri::CRI_NAMESPACE,
                &[
                    "snapshots",
                    "--snapshotter",
                    SNAPSHOTTER_NAME,
                    "info",
                    &chain,
                ],
            )?;
            let info = String::from_utf8_lossy(&info.stdout);
            if !info.contains("containerd.io/snapshot/remote") {
                return Err(Error::Invalid(format!(
                    "the CRI pull made layer {chain} without the remote label (it was unpacked, not lazy):\n{info}"
                )));
            }
        }
        // The snapshotter itself took each layer remote from the CRI labels (not an earlier
        // pull's snapshot, not containerd's `snapshot.ref` alone).
        let published_now = published_via_cri()? - published_before;
        if published_now != layers.len() {
            return Err(Error::Invalid(format!(
                "the snapshotter logged {published_now} layers published via cri.layer-digest for the CRI pull, expected {}",
                layers.len()
            )));
        }
        let fetched = published.registry.blob_gets_of(PUSHED_NAME.0, &layers)? - gets_before;
        if fetched != 0 {
            return Err(Error::Invalid(format!(
                "the CRI pull fetched {fetched} layer blobs from the registry"
            )));
        }
        let (_, kept) = self.content_listing(cri::CRI_NAMESPACE)?;
        if !kept.is_empty() {
            return Err(Error::Invalid(format!(
                "after the CRI pull the k8s.io content store holds layer blobs {kept:?}"
            )));
        }
        check_workload_in(
            &self.containerd,
            cri::CRI_NAMESPACE,
            SNAPSHOTTER_NAME,
            reference,
        )
    }

    /// `ctr -n namespace content ls -q`, and the image's layer blobs it lists.
    fn content_listing(&self, namespace: &str) -> Result<(String, Vec<String>)> {
        let output = self
            .containerd
            .ctr_in(namespace, &["content", "ls", "-q"])?;
        let listed = String::from_utf8_lossy(&output.stdout).into_owned();
        let layers = self
            .published
            .image
            .facts
            .layers
            .iter()
            .map(|l| l.digest.clone())
            .filter(|d| listed.lines().any(|line| line.trim() == d))
            .collect();
        Ok((listed, layers))
    }

    /// containerd's content store holds the manifest and config but no layer blob: the pull
    /// was lazy.
    pub fn check_no_layer_content(&self) -> Result<usize> {
        let (listed, downloaded) = self.content_listing(NAMESPACE)?;
        let facts = &self.published.image.facts;
        if !downloaded.is_empty() {
            return Err(Error::Invalid(format!(
                "containerd's content store holds layer blobs {downloaded:?}: the pull was not lazy"
            )));
        }
        if !listed
            .lines()
            .any(|line| line.trim() == facts.config_digest)
        {
            return Err(Error::Invalid(format!(
                "containerd's content store lacks the config {}; it lists:\n{listed}",
                facts.config_digest
            )));
        }
        Ok(listed.lines().count())
    }

    /// Through the FUSE mount: `.metadata/<registry>/<repo>:<tag>/config.json` has the
    /// config digest (the same bytes through the plain mount, if any), and the public path `<registry>/<repo>:<tag>` (the flattened image)
    /// has the whiteouts resolved (contract §3).
    pub fn check_namespace(&self) -> Result<()> {
        let mount = self.mount.mountpoint();
        let reference = &self.published.reference;
        let config_path = mount.join(".metadata").join(reference).join("config.json");
        let config = std::fs::read(&config_path).map_err(crate::error::io_context(format!(
            "read {}",
            config_path.display()
        )))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
        if digest != self.published.image.facts.config_digest {
            return Err(Error::Invalid(format!(
                "{} has digest {digest}, the image config is {}",
                config_path.display(),
                self.published.image.facts.config_digest
            )));
        }
        if let Some(plain) = self.mount.plain_mountpoint() {
            // The plain mount is the same tree (contract §4).
            let plain_config = plain.join(".metadata").join(reference).join("config.json");
            let same = std::fs::read(&plain_config).map_err(crate::error::io_context(format!(
                "read {}",
                plain_config.display()
            )))?;
            if same != config {
                return Err(Error::Invalid(format!(
                    "{} differs from {}",
                    plain_config.display(),
                    config_path.display()
                )));
            }
        }
        let flat = mount.join(reference);
        let relative = |p: &str| flat.join(p.trim_start_matches('/'));
        let python = relative("/usr/bin/python3");
        let problems: Vec<String> = [
            (!python.exists()).then(|| format!("{} missing", python.display())),
            relative(image::DELETED_FILE)
                .symlink_metadata()
                .is_ok()
                .then(|| format!("{} present", relative(image::DELETED_FILE).display())),
            relative(image::DELETED_DIR)
                .symlink_metadata()
                .is_ok()
                .then(|| format!("{} present", relative(image::DELETED_DIR).display())),
        ]
        .into_iter()
        .flatten()
        .collect();
        let opaque = relative(image::OPAQUE_DIR);
        let mut names: Vec<String> = std::fs::read_dir(&opaque)
            .map_err(crate::error::io_context(format!(
                "list {}",
                opaque.display()
            )))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        let mut problems = problems;
        if names != [image::OPAQUE_UPPER_FILE.0] {
            problems.push(format!("{} lists {names:?}", opaque.display()));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "flattened image at the public path: {}",
                problems.join("; ")
            )))
        }
    }

    /// The registry saw blob GETs during the ingest and none since.
    pub fn check_registry_untouched(&self) -> Result<usize> {
        let now = self.published.registry.blob_gets(PUSHED_NAME.0)?;
        let at_end = self.published.blob_gets_at_ingest_end;
        if at_end == 0 {
            return Err(Error::Invalid(format!(
                "the registry access log ({}) shows no blob GET during the ingest: the log is not what we think",
                self.published.registry.log().display()
            )));
        }
        if now != at_end {
            return Err(Error::Invalid(format!(
                "{} blob GETs reached the registry after the ingest (see {})",
                now - at_end,
                self.published.registry.log().display()
            )));
        }
        Ok(at_end)
    }

    /// The node fetched fewer bytes from the HTTP server than the image's compressed size.
    pub fn check_bytes_fetched(&self) -> Result<(Served, u64)> {
        let served = self.published.server.served()?;
        let image_size = self.published.image.facts.compressed_size();
        if served.bytes == 0 || served.bytes >= image_size {
            return Err(Error::Invalid(format!(
                "the node fetched {} bytes in {} requests; expected more than 0 and fewer than the \
                 image's compressed size {image_size} (see {})",
                served.bytes,
                served.requests,
                self.published.server.log().display()
            )));
        }
        Ok((served, image_size))
    }
}

/// `ctr run --snapshotter <snapshotter> --rm <reference> <id> args…` in [`NAMESPACE`]; its
/// stdout.
pub fn run_container(
    containerd: &Containerd,
    snapshotter: &str,
    reference: &str,
    id: &str,
    args: &[&str],
) -> Result<String> {
    run_container_in(containerd, NAMESPACE, snapshotter, reference, id, args)
}

/// [`run_container`] in containerd namespace `namespace`.
fn run_container_in(
    containerd: &Containerd,
    namespace: &str,
    snapshotter: &str,
    reference: &str,
    id: &str,
    args: &[&str],
) -> Result<String> {
    let mut full = vec!["run", "--snapshotter", snapshotter, "--rm", reference, id];
    full.extend_from_slice(args);
    let output = containerd.ctr_in(namespace, &full)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs [`WORKLOAD`] in a container and checks it printed [`expected_workload_output`].
pub fn check_workload(
    containerd: &Containerd,
    snapshotter: &str,
    reference: &str,
) -> Result<String> {
    check_workload_in(containerd, NAMESPACE, snapshotter, reference)
}

/// [`check_workload`] in containerd namespace `namespace`.
fn check_workload_in(
    containerd: &Containerd,
    namespace: &str,
    snapshotter: &str,
    reference: &str,
) -> Result<String> {
    let out = run_container_in(
        containerd,
        namespace,
        snapshotter,
        reference,
        "strata-workload",
        &["python3", "-c", WORKLOAD],
    )?;
    let expected = expected_workload_output();
    if out != expected {
        return Err(Error::Invalid(format!(
            "workload printed {out:?}, expected {expected:?}"
        )));
    }
    Ok(out)
}

/// Inside a container: the deleted file and directory are absent and the opaque
/// directory lists only the upper layer's file, with its content.
pub fn check_whiteouts(containerd: &Containerd, snapshotter: &str, reference: &str) -> Result<()> {
    let script = format!(
        "for p in {file} {dir}; do if [ -e \"$p\" ] || [ -L \"$p\" ]; then echo \"present $p\"; \
         else echo \"absent $p\"; fi; done; echo listing; ls -A {opaque}; echo content; \
         cat {opaque}/{upper}",
        file = image::DELETED_FILE,
        dir = image::DELETED_DIR,
        opaque = image::OPAQUE_DIR,
        upper = image::OPAQUE_UPPER_FILE.0,
    );
    let out = run_container(
        containerd,
        snapshotter,
        reference,
        "strata-whiteouts",
        &["sh", "-c", &script],
    )?;
    let expected = format!(
        "absent {}\nabsent {}\nlisting\n{}\ncontent\n{}",
        image::DELETED_FILE,
        image::DELETED_DIR,
        image::OPAQUE_UPPER_FILE.0,
        String::from_utf8_lossy(image::OPAQUE_UPPER_FILE.1)
    );
    if out != expected {
        return Err(Error::Invalid(format!(
            "whiteouts not applied inside the container ({snapshotter} snapshotter):\n--- got\n{out}--- expected\n{expected}"
        )));
    }
    Ok(())
}
