//! The tar conformance corpus against containerd's own unpack.
//!
//! Each writer of `tests::image::corpus` (Go archive/tar, GNU tar in every format and
//! sparse version, bsdtar, Python tarfile, busybox tar) archives the same awkward entries
//! into a layer over one base layer; each image is pushed to a local `docker-registry`.
//! The ground truth is containerd 1.6 itself: `ctr images pull` unpacks every image with
//! the overlayfs snapshotter; the writer's layer is the lower directory containerd made of
//! it, and the flat tree is a read-only overlay mount of the image's snapshot (what a
//! container sees). Then:
//!
//! * every image containerd unpacked is ingested by `strata-publisher` (one run, one
//!   revision), and its `layerfs` and flat tree, read through the catalogs and through
//!   `strata-snapshotter mount`, must equal containerd's, entry by entry (`tests::fstree`: type, mode, owner, mtime with
//!   nanoseconds, size, content, symlink target, device numbers, xattrs);
//! * every image containerd refuses, Strata must refuse too: the ingest fails with an
//!   error naming the entry, and the repository's revision does not move;
//! * containerd's answer must be the one the corpus table states, so the README's support
//!   table stays true.
//!
//! Documented exceptions, applied only here: containerd ignores the layer tar's root entry
//! (`./`) and leaves its snapshot root's mtime as it made it; it makes overlay whiteout
//! devices without setting their mtime; and a directory the tar only implies (umoci writes
//! no entry for a directory whose metadata did not change, only the whiteouts in it) gets
//! its mode and owner from the lower layer but the time of the unpack as its mtime, where
//! the publisher keeps the lower layer's (deterministic, as an overlay copy-up does). Those
//! mtimes are not compared. The flat
//! tree's `.singularity.d/` is the publisher's own (docs/CONTRACTS.md §3) and is left out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use namespace::{Digest, paths};
use tests::binaries::check_prerequisites;
use tests::catalog_tree;
use tests::containerd::Containerd;
use tests::fstree::{self, Kind, Rules, Tree};
use tests::fswalk;
use tests::image::corpus::{self, Verdict, WRITERS, Writer};
use tests::image::{self, read_layout};
use tests::measure::du_bytes;
use tests::mounts::unmount;
use tests::node::{Source as NodeSource, StrataNode};
use tests::process::run_checked;
use tests::registry::Registry;
use tests::scenario::{FQRN, image_cache_root};
use tests::steps::Steps;
use tests::strata::Repo;
use tests::tar_tree;
use tests::workdir::WorkDir;

use super::{expect_clear_failure, in_workdir};

/// What containerd made of one writer's image.
enum Unpacked {
    /// The writer's layer as containerd's lower directory, and the image's merged tree.
    Trees { layer: Tree, flat: Tree },
    /// `ctr images pull` failed: its message.
    Refused(String),
}

/// One corpus image as pushed.
struct Image {
    writer: &'static Writer,
    /// `<registry>/corpus:<writer>`.
    reference: String,
    /// `docker://<reference>`, what `strata-publisher ingest` takes.
    source: String,
    /// `/.layers/<hh>/<hex>/layerfs` of the writer's layer.
    layerfs: String,
    /// `/.flat/<hh>/<config hex>`.
    flat: String,
    /// The ChainID of the whole image (its top snapshot in containerd).
    chain_id: String,
    /// Directories the writer's tar only implies (parents without an entry of their own).
    implied: Vec<String>,
}

fn typed(digest: &str) -> Result<Digest> {
    digest
        .parse()
        .with_context(|| format!("not a sha256 digest: {digest}"))
}

#[test]
fn every_tar_containerd_unpacks_strata_publishes_identically() {
    in_workdir("tar-corpus", |work| {
        let mut steps = Steps::new();
        steps.run("check prerequisites", check_prerequisites)?;
        let corpus_dir = work.subdir("corpus")?;
        let layout = steps.run("build the corpus (every writer)", || {
            corpus::build_corpus(&corpus_dir)
        })?;
        let registry = steps.run("start docker-registry", || {
            Registry::start(&work.subdir("registry")?, &work.log("registry"))
        })?;
        let mut images = Vec::new();
        for writer in WRITERS {
            let reference = format!("{}/corpus:{}", registry.host(), writer.name);
            steps.run(&format!("push {reference}"), || {
                registry.push(
                    &format!("oci:{}:{}", layout.display(), writer.name),
                    &reference,
                    &work.log("skopeo"),
                )
            })?;
            let facts = read_layout(&layout, writer.name)?;
            let top = facts.layers.last().context("corpus image without layers")?;
            let blob = tests::image::layout::blob_path(&layout, &top.digest)?;
            // The model reads what containerd accepts; a tar it refuses implies nothing.
            let implied = tar_tree::layer_tree(&blob)
                .map(|tree| {
                    tree.into_iter()
                        .filter(|(_, node)| node.kind == Kind::Dir && node.implicit)
                        .map(|(path, _)| path)
                        .collect()
                })
                .unwrap_or_default();
            images.push(Image {
                writer,
                source: format!("docker://{reference}"),
                reference,
                layerfs: paths::absolute(&paths::layerfs(&typed(&top.digest)?)),
                flat: paths::absolute(&paths::flat_dir(&typed(&facts.config_digest)?)),
                chain_id: facts.chain_ids().last().cloned().context("no ChainID")?,
                implied,
            });
        }
        let containerd = steps.run("start containerd 1.6 (overlayfs)", || {
            Containerd::start(
                &work.subdir("containerd")?,
                &work.log("containerd"),
                &work.log("ctr"),
                &work.path().join("no-proxy-snapshotter.sock"),
            )
        })?;
        let mut truths = Vec::new();
        for image in &images {
            let truth = steps.run(&format!("containerd unpacks {}", image.writer.name), || {
                containerd_unpack(&containerd, image, work)
            })?;
            truths.push(truth);
        }
        let repo = steps.run("strata-publisher init", || {
            Repo::init(&work.path().join("repo"), FQRN, &work.log("publisher-init"))
        })?;
        let srv = repo.dir.join("srv");
        let mut failures = Vec::new();
        let mut accepted = Vec::new();
        for (image, truth) in images.iter().zip(&truths) {
            let containerd_verdict = match truth {
                Unpacked::Trees { .. } => "unpacks",
                Unpacked::Refused(_) => "refuses",
            };
            let stated = match image.writer.verdict {
                Verdict::Refused(_) => "refuses",
                Verdict::Accepted => "unpacks",
            };
            if containerd_verdict != stated {
                let why = match truth {
                    Unpacked::Refused(message) => message.clone(),
                    Unpacked::Trees { .. } => String::new(),
                };
                failures.push(format!(
                    "{}: containerd {containerd_verdict} it, the corpus table says it {stated} it {why}",
                    image.writer.name
                ));
            }
            match (image.writer.verdict, truth) {
                (Verdict::Accepted, Unpacked::Trees { .. }) => accepted.push(image.source.as_str()),
                (Verdict::Refused(entry), _) => {
                    let result = steps.run(
                        &format!(
                            "strata-publisher refuses {} (naming {entry})",
                            image.writer.name
                        ),
                        || expect_refusal(&repo, &srv, image, entry, work),
                    );
                    failures.extend(result.err().map(|e| format!("{e:#}")));
                }
                (Verdict::Accepted, Unpacked::Refused(_)) => {}
            }
        }
        steps.run(
            &format!(
                "strata-publisher ingest ({} images, one revision)",
                accepted.len()
            ),
            || repo.ingest(&accepted, &work.log("publisher-ingest")),
        )?;
        // Both readers: the catalogs as published, and the FUSE mount as a container sees
        // them (lookups, listings and symlink targets of names that are not UTF-8 too).
        let mut published = catalog_tree::Published::open(&srv)?;
        let server = steps.run("strata-publisher serve", || {
            repo.serve(&work.log("publisher-serve"))
        })?;
        let mut mount = steps.run("strata-snapshotter mount", || {
            repo.mount(&server, work, false, &[])
        })?;
        let mountpoint = mount.mountpoint().to_owned();
        for (image, truth) in images.iter().zip(&truths) {
            let (Verdict::Accepted, Unpacked::Trees { layer, flat }) =
                (image.writer.verdict, truth)
            else {
                continue;
            };
            let name = image.writer.name;
            let trees = [
                (
                    "layerfs",
                    &image.layerfs,
                    layer,
                    rules(layer, &image.implied, &[]),
                ),
                (
                    "flat tree",
                    &image.flat,
                    flat,
                    rules(flat, &image.implied, &[".singularity.d"]),
                ),
            ];
            for (what, path, expected, rules) in &trees {
                let result = steps.run(
                    &format!("{name}: {what} (catalog, mount) = containerd's"),
                    || -> Result<()> {
                        let (actual, _) = published.tree(path)?;
                        fstree::expect_equal(
                            &format!("{name} {what} (catalog)"),
                            "containerd",
                            expected,
                            &actual,
                            rules,
                        )?;
                        let mounted = mountpoint.join(path.trim_start_matches('/'));
                        let walked = fswalk::walk(&mounted)?.tree;
                        fstree::expect_equal(
                            &format!("{name} {what} (mount)"),
                            "containerd",
                            expected,
                            &walked,
                            rules,
                        )
                        .map_err(anyhow::Error::from)
                    },
                );
                failures.extend(result.err().map(|e| format!("{e:#}")));
            }
        }
        mount
            .check_running()
            .context("the FUSE mount died during the walks")?;
        mount.stop();
        drop(registry);
        println!("steps:\n{}", steps.summary());
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        Ok(())
    });
}

/// `ctr images pull` (unpacks with overlayfs), then a view of the image's snapshot: its
/// first lower directory is the writer's layer, its read-only overlay mount the flat tree.
/// (The view is left to containerd's garbage collection, which may already have removed
/// it: it is held by no lease; the committed snapshots it names are the image's.)
fn containerd_unpack(containerd: &Containerd, image: &Image, work: &WorkDir) -> Result<Unpacked> {
    let pull = containerd.ctr_capture(&["images", "pull", "--plain-http", &image.reference])?;
    if !pull.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&pull.stdout),
            String::from_utf8_lossy(&pull.stderr)
        );
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        println!("    containerd refuses it: {last}");
        return Ok(Unpacked::Refused(last.to_owned()));
    }
    let key = format!("corpus-view-{}", image.writer.name);
    let target = work.subdir(&format!("view-{}", image.writer.name))?;
    let target_text = target.to_string_lossy().into_owned();
    // `--target` prints the mount at once: the view is held by no lease, and containerd's
    // garbage collection may remove it right after (the image's snapshots stay).
    let view = containerd.ctr_checked(&[
        "snapshots",
        "--snapshotter",
        "overlayfs",
        "view",
        "--target",
        &target_text,
        &key,
        &image.chain_id,
    ])?;
    let text = String::from_utf8_lossy(&view.stdout).into_owned();
    let lowers = lower_dirs(&text)
        .with_context(|| format!("no lowerdir in `ctr snapshots view --target`: {text}"))?;
    let layer_dir = lowers.first().context("empty lowerdir")?.clone();
    run_checked(
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "ro,lowerdir={}",
                lowers
                    .iter()
                    .map(|p| p.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(":")
            ))
            .arg(&target),
        &work.log("mount"),
        Duration::from_secs(30),
    )?;
    let flat = fswalk::walk(&target);
    unmount(&target);
    let flat = flat.context("walk containerd's snapshot")?.tree;
    let layer = fswalk::walk(&layer_dir)
        .with_context(|| format!("walk containerd's layer {}", layer_dir.display()))?
        .tree;
    Ok(Unpacked::Trees { layer, flat })
}

/// The `lowerdir=` directories of the mount `ctr snapshots mounts` prints (top first).
fn lower_dirs(text: &str) -> Option<Vec<PathBuf>> {
    let start = text.find("lowerdir=")? + "lowerdir=".len();
    let value: String = text[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',')
        .collect();
    Some(value.split(':').map(PathBuf::from).collect())
}

/// The comparison rules: `excluded` subtrees; the root's, every whiteout device's and
/// every `implied` directory's mtime are containerd's own (see the module documentation).
fn rules(expected: &Tree, implied: &[String], excluded: &[&str]) -> Rules {
    let mut ignore_mtime: std::collections::BTreeSet<String> = expected
        .iter()
        .filter(|(_, node)| node.kind == Kind::Char && node.device == Some((0, 0)))
        .map(|(path, _)| path.clone())
        .collect();
    ignore_mtime.insert(String::new());
    ignore_mtime.extend(implied.iter().cloned());
    Rules {
        excluded: excluded.iter().map(|e| (*e).to_owned()).collect(),
        ignore_mtime,
    }
}

/// An ingest of `image` alone fails, naming `entry`, and the revision does not move.
fn expect_refusal(
    repo: &Repo,
    srv: &Path,
    image: &Image,
    entry: &str,
    work: &WorkDir,
) -> Result<String> {
    let manifest = srv.join(".cvmfspublished");
    let before =
        std::fs::read(&manifest).with_context(|| format!("read {}", manifest.display()))?;
    let output = tests::process::run_capture(
        &mut repo.ingest_command(&[&image.source])?,
        &work.log(&format!("publisher-refuse-{}", image.writer.name)),
        Duration::from_secs(600),
    )?;
    let message =
        expect_clear_failure(&format!("ingest {}", image.writer.name), &output, &[entry])?;
    let after = std::fs::read(&manifest).with_context(|| format!("read {}", manifest.display()))?;
    if before != after {
        bail!(
            "{}: the refused ingest published a new revision",
            image.writer.name
        );
    }
    println!("    {message}");
    Ok(message)
}

/// A PAX 1.0 sparse file of 64 MiB apparent size with three 4 KiB data extents (GNU tar
/// `--format=posix --sparse`), in a layer on top of the Debian test image: ingesting it
/// grows the repository by less than 1 MiB, and it reads back byte-identical through the
/// FUSE mount and inside a container started by containerd with the Strata snapshotter.
#[test]
fn a_64_mib_sparse_file_costs_under_1_mib_and_reads_back_under_containerd() {
    in_workdir("sparse-64mib", |work| {
        let mut steps = Steps::new();
        steps.run("check prerequisites", check_prerequisites)?;
        let cache = image_cache_root()?;
        let demo = steps.run("Debian test image (cached)", || image::test_image(&cache))?;
        let dir = work.subdir("sparse")?;
        let (layout, sha256) = steps.run("sparse image (GNU tar, PAX 1.0, 64 MiB)", || {
            corpus::sparse_image(&dir, &demo.oci_reference())
        })?;
        let registry = steps.run("start docker-registry", || {
            Registry::start(&work.subdir("registry")?, &work.log("registry"))
        })?;
        let base = format!("{}/sparse:base", registry.host());
        let sparse = format!("{}/sparse:64mib", registry.host());
        for (tag, reference) in [("base", &base), ("sparse", &sparse)] {
            steps.run(&format!("push {reference}"), || {
                registry.push(
                    &format!("oci:{}:{tag}", layout.display()),
                    reference,
                    &work.log("skopeo"),
                )
            })?;
        }
        let repo = steps.run("strata-publisher init", || {
            Repo::init(&work.path().join("repo"), FQRN, &work.log("publisher-init"))
        })?;
        let srv = repo.dir.join("srv");
        steps.run("ingest the base image", || {
            repo.ingest(&[&format!("docker://{base}")], &work.log("ingest"))
        })?;
        let before = du_bytes(&srv)?;
        steps.run("ingest the image with the sparse layer", || {
            repo.ingest(&[&format!("docker://{sparse}")], &work.log("ingest"))
        })?;
        let growth = du_bytes(&srv)?.saturating_sub(before);
        println!("    the repository grew by {growth} bytes for the sparse layer");
        ensure!(
            growth < 1 << 20,
            "the 64 MiB sparse file made the repository grow by {growth} bytes (limit 1 MiB)"
        );
        let server = steps.run("strata-publisher serve", || {
            repo.serve(&work.log("publisher-serve"))
        })?;
        let server_url = server.server_url();
        let pubkey = repo.public_key();
        let node = steps.run("Strata node (mount, containerd, snapshotter)", || {
            StrataNode::start(
                work,
                "sparse",
                NodeSource {
                    fqrn: FQRN,
                    server_url: &server_url,
                    pubkey: &pubkey,
                },
                &[],
            )
        })?;
        let facts = read_layout(&layout, "sparse")?;
        let flat = paths::absolute(&paths::flat_dir(&typed(&facts.config_digest)?));
        let mounted = node
            .mountpoint
            .join(flat.trim_start_matches('/'))
            .join(corpus::LARGE_SPARSE_PATH);
        steps.run("read it through the FUSE mount", || -> Result<()> {
            let size = std::fs::metadata(&mounted)
                .with_context(|| format!("stat {}", mounted.display()))?
                .len();
            ensure!(
                size == corpus::LARGE_SPARSE_SIZE,
                "size {size} through the mount"
            );
            let got = fswalk::file_sha256(&mounted)?;
            ensure!(
                got == sha256,
                "sha256 {got} through the mount, expected {sha256}"
            );
            Ok(())
        })?;
        steps.run("strata-snapshotter pull", || node.pull(work, &sparse))?;
        let run = steps.run("ctr run: sha256sum of the sparse file", || {
            node.run(
                work,
                &sparse,
                "sparse-read",
                &[
                    "sha256sum".to_owned(),
                    format!("/{}", corpus::LARGE_SPARSE_PATH),
                ],
            )
        })?;
        ensure!(
            run.stdout.starts_with(&sha256),
            "inside the container: {:?}, expected {sha256}",
            run.stdout
        );
        drop(node);
        drop(registry);
        println!("steps:\n{}", steps.summary());
        Ok(())
    });
}
