//! Tree equality, the acceptance of issues 4 and 5: what the publisher stores and what the
//! FUSE mount shows must be the image itself.
//!
//! Two images are pushed to a local `docker-registry` and ingested from it in one
//! `strata-publisher ingest`: the three-layer Debian test image and the one-layer image
//! with every entry kind (`tests::image::rich`). For each image:
//!
//! * the flattened tree `.flat/<hh>/<config hex>` equals the root filesystem
//!   `umoci unpack` makes from the same OCI layout (as root, so owners, devices and
//!   `trusted.*`/`security.*` xattrs are real);
//! * every `.layers/<hh>/<hex>/layerfs` equals its layer tar with overlayfs whiteouts
//!   (`tests::tar_tree`).
//!
//! `flat_tree_equals_umoci_unpack` reads the trees through the `catalog` crate from the
//! repository's `srv/` directory, then runs `strata-publisher verify`.
//! `mounted_trees_equal_source` serves the repository, mounts it with
//! `strata-snapshotter mount` and walks the mount with `lstat`/`readlink`/`llistxattr`/
//! `read`. Fields compared: see `tests::fstree`.
//!
//! Documented exceptions (each also applied in the code below, nowhere else):
//!
//! * `.singularity.d/` of a flat tree is not part of any layer: the publisher adds it from
//!   the image config (docs/CONTRACTS.md §3). It is left out of the flat comparison.
//! * A directory that a layer only implies (a parent without an entry of its own, like
//!   `var/` and `var/log/` in layer 2 of the Debian image, which `umoci repack` wrote
//!   without them) takes the metadata it has in the lower layers, as `umoci unpack` and an
//!   overlay copy-up keep it (publisher/src/flatten.rs, `inherit_implicit_dirs`). Only
//!   when no lower layer has that directory does the publisher's placeholder (0755
//!   root:root, mtime 0) stand; the mtime of those directories alone is not compared.
//! * An mtime before 1970 (the rich image's `times/`): `umoci unpack` keeps it, containerd's
//!   unpack sets it to the epoch (`archive.boundTime`), and the publisher follows
//!   containerd (`tests/e2e/tar_corpus.rs` checks it against containerd itself). The umoci
//!   tree's negative mtimes are compared as 0 ([`epoch_bounded`]).
//! * A directory a layer tar only implies (a parent without an entry of its own) has no
//!   metadata in the tar: `layerfs` must have a directory there, nothing more is compared.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use namespace::{Digest, paths};
use tests::binaries::check_prerequisites;
use tests::catalog_tree;
use tests::fstree::{self, Kind, Rules, Tree};
use tests::fswalk;
use tests::image::{self, rich_image};
use tests::process::run_checked;
use tests::registry::Registry;
use tests::scenario::{FQRN, image_cache_root};
use tests::steps::Steps;
use tests::strata::{Repo, strata_command};
use tests::tar_tree;
use tests::workdir::WorkDir;

use super::in_workdir;

/// One image as published, with what it must equal.
struct Source {
    /// Short name (`demo`, `rich`), also the pushed repository name.
    name: &'static str,
    /// The root filesystem `umoci unpack` made.
    rootfs: PathBuf,
    /// `/.flat/<hh>/<config hex>` (absolute catalog path).
    flat: String,
    /// Bottom first: (`/.layers/<hh>/<hex>/layerfs`, the layer tar's overlay tree).
    layers: Vec<(String, Tree)>,
}

impl Source {
    /// The flat-tree rules: `.singularity.d` out; the mtime of a directory that only
    /// implicit directories (placeholders) define is not compared (see the module
    /// documentation).
    fn flat_rules(&self) -> Rules {
        let mut rules = Rules {
            excluded: vec![".singularity.d".to_owned()],
            ..Rules::default()
        };
        // A directory's metadata comes from the topmost layer with an entry for it; an
        // implied directory inherits what the layers below have (publisher/src/flatten.rs).
        let mut from: std::collections::BTreeMap<&str, bool> = std::collections::BTreeMap::new();
        for (_, tree) in &self.layers {
            for (path, node) in tree {
                if node.kind == Kind::Dir {
                    let placeholder = node.implicit && from.get(path.as_str()).is_none_or(|p| *p);
                    from.insert(path, placeholder);
                }
            }
        }
        rules.ignore_mtime = from
            .into_iter()
            .filter(|(_, implicit)| *implicit)
            .map(|(path, _)| path.to_owned())
            .collect();
        rules
    }
}

/// Registry, repository and the sources of both images; drop stops the registry.
struct Published {
    registry: Registry,
    repo: Repo,
    sources: Vec<Source>,
}

/// `digest` as a typed digest, naming it in the error.
fn typed(digest: &str) -> Result<Digest> {
    digest
        .parse()
        .with_context(|| format!("not a sha256 digest: {digest}"))
}

/// Builds (or reuses) both images, pushes them to a fresh registry, ingests both from it
/// in one `ingest`, and unpacks each with umoci.
fn publish(work: &WorkDir, steps: &mut Steps) -> Result<Published> {
    steps.run("check prerequisites", check_prerequisites)?;
    let cache = image_cache_root()?;
    let demo = steps.run("Debian test image (cached)", || image::test_image(&cache))?;
    let rich = steps.run("image with every entry kind (cached)", || {
        rich_image(&cache)
    })?;
    let registry = steps.run("start docker-registry", || {
        Registry::start(&work.subdir("registry")?, &work.log("registry"))
    })?;
    let mut references = Vec::new();
    for (name, image) in [("demo", &demo), ("rich", &rich)] {
        let reference = format!("{}/{name}:1", registry.host());
        steps.run(&format!("skopeo copy to {reference}"), || {
            registry.push(
                &image.oci_reference(),
                &reference,
                &work.log(&format!("skopeo-{name}")),
            )
        })?;
        references.push(format!("docker://{reference}"));
    }
    let repo = steps.run("strata-publisher init", || {
        Repo::init(&work.path().join("repo"), FQRN, &work.log("publisher-init"))
    })?;
    let refs: Vec<&str> = references.iter().map(String::as_str).collect();
    steps.run(
        "strata-publisher ingest (both images, one revision)",
        || repo.ingest(&refs, &work.log("publisher-ingest")),
    )?;
    let mut sources = Vec::new();
    for (name, image) in [("demo", demo), ("rich", rich)] {
        let bundle = work.path().join(format!("bundle-{name}"));
        steps.run(&format!("umoci unpack {name}"), || {
            run_checked(
                Command::new("umoci")
                    .args([
                        "unpack",
                        "--image",
                        &format!("{}:{}", image.layout.display(), image.tag),
                    ])
                    .arg(&bundle),
                &work.log(&format!("umoci-unpack-{name}")),
                Duration::from_secs(600),
            )
        })?;
        let mut layers = Vec::new();
        for layer in &image.facts.layers {
            let blob = image::layout::blob_path(&image.layout, &layer.digest)?;
            let tree = tar_tree::layer_tree(&blob)
                .with_context(|| format!("read layer {} of {name}", layer.digest))?;
            layers.push((
                paths::absolute(&paths::layerfs(&typed(&layer.digest)?)),
                tree,
            ));
        }
        sources.push(Source {
            name,
            flat: paths::absolute(&paths::flat_dir(&typed(&image.facts.config_digest)?)),
            rootfs: bundle.join("rootfs"),
            layers,
        });
    }
    Ok(Published {
        registry,
        repo,
        sources,
    })
}

/// `tree` with every mtime before 1970 set to the epoch, as containerd's unpack sets it.
fn epoch_bounded(mut tree: Tree) -> Tree {
    for node in tree.values_mut() {
        if node.mtime < 0 {
            (node.mtime, node.mtime_ns) = (0, 0);
        }
    }
    tree
}

/// Issue 4: the catalogs hold the image exactly.
#[test]
fn flat_tree_equals_umoci_unpack() {
    in_workdir("tree-catalog", |work| {
        let mut steps = Steps::new();
        let published = publish(work, &mut steps)?;
        let srv = published.repo.dir.join("srv");
        let mut repo = catalog_tree::Published::open(&srv)?;
        println!("    revision {}", repo.manifest.revision);
        let mut failures = Vec::new();
        for source in &published.sources {
            let name = source.name;
            let result = steps.run(
                &format!("{name}: .flat tree (catalog) = umoci rootfs"),
                || -> Result<()> {
                    let expected = epoch_bounded(fswalk::walk(&source.rootfs)?.tree);
                    let (actual, facts) = repo.tree(&source.flat)?;
                    println!("    {} spans catalogs {:?}", source.flat, facts.catalogs);
                    fstree::expect_equal(
                        &format!("{name} flat"),
                        "umoci unpack or the layer tar",
                        &expected,
                        &actual,
                        &source.flat_rules(),
                    )?;
                    if name == "rich" {
                        check_rich_catalog_facts(&facts)?;
                    }
                    Ok(())
                },
            );
            failures.extend(result.err().map(|e| format!("{e:#}")));
            for (i, (path, tar)) in source.layers.iter().enumerate() {
                let result = steps.run(
                    &format!("{name}: layer {} layerfs (catalog) = tar", i + 1),
                    || -> Result<()> {
                        let (actual, _) = repo.tree(path)?;
                        fstree::expect_equal(
                            &format!("{name} layer {}", i + 1),
                            "umoci unpack or the layer tar",
                            tar,
                            &actual,
                            &Rules::default(),
                        )
                        .map_err(anyhow::Error::from)
                    },
                );
                failures.extend(result.err().map(|e| format!("{e:#}")));
            }
        }
        steps.run("strata-publisher verify --repo DIR", || {
            run_checked(
                strata_command("strata-publisher")?
                    .arg("verify")
                    .arg("--repo")
                    .arg(&published.repo.dir),
                &work.log("publisher-verify"),
                Duration::from_secs(600),
            )
            .map(drop)
        })?;
        drop(published.registry);
        println!("steps:\n{}", steps.summary());
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        Ok(())
    });
}

/// The rich image's catalog: `big.bin` is chunked, and the two names of `d/file` in `d`
/// form one hard-link group (docs/format.md §6.8) while `other/file-hardlink` does not join it.
fn check_rich_catalog_facts(facts: &catalog_tree::WalkFacts) -> Result<()> {
    let chunks = facts.chunked.get("big.bin").copied().unwrap_or(0);
    ensure!(
        chunks >= 2,
        "big.bin is not chunked (chunks: {chunks}); chunked files: {:?}",
        facts.chunked
    );
    let groups: Vec<&Vec<String>> = facts.hardlink_groups.values().collect();
    let expected = vec!["d/file".to_owned(), "d/file-hardlink".to_owned()];
    ensure!(
        groups == [&expected],
        "hard-link groups {:?}, expected one group {expected:?}",
        facts.hardlink_groups
    );
    println!("    big.bin in {chunks} chunks; hard-link group {expected:?}");
    Ok(())
}

/// Issue 5: the FUSE mount shows the image exactly.
#[test]
fn mounted_trees_equal_source() {
    in_workdir("tree-mount", |work| {
        let mut steps = Steps::new();
        let published = publish(work, &mut steps)?;
        let server = steps.run("strata-publisher serve", || {
            published.repo.serve(&work.log("publisher-serve"))
        })?;
        let mut mount = steps.run("strata-snapshotter mount", || {
            published.repo.mount(&server, work, false, &[])
        })?;
        let mountpoint = mount.mountpoint().to_owned();
        let mut failures = Vec::new();
        for source in &published.sources {
            let name = source.name;
            let result = steps.run(
                &format!("{name}: mounted .flat tree = umoci rootfs"),
                || -> Result<()> {
                    let expected = epoch_bounded(fswalk::walk(&source.rootfs)?.tree);
                    let started = Instant::now();
                    let walked = fswalk::walk(&mount_path(&mountpoint, &source.flat))?;
                    println!(
                        "    walked and read the mounted flat tree in {:.1?}",
                        started.elapsed()
                    );
                    fstree::expect_equal(
                        &format!("{name} flat"),
                        "umoci unpack or the layer tar",
                        &expected,
                        &walked.tree,
                        &source.flat_rules(),
                    )?;
                    if name == "rich" {
                        check_rich_hardlinks(&walked)?;
                    }
                    Ok(())
                },
            );
            failures.extend(result.err().map(|e| format!("{e:#}")));
            for (i, (path, tar)) in source.layers.iter().enumerate() {
                let result = steps.run(
                    &format!("{name}: mounted layer {} layerfs = tar", i + 1),
                    || -> Result<()> {
                        let walked = fswalk::walk(&mount_path(&mountpoint, path))?;
                        fstree::expect_equal(
                            &format!("{name} layer {}", i + 1),
                            "umoci unpack or the layer tar",
                            tar,
                            &walked.tree,
                            &Rules::default(),
                        )
                        .map_err(anyhow::Error::from)
                    },
                );
                failures.extend(result.err().map(|e| format!("{e:#}")));
            }
        }
        mount
            .check_running()
            .context("the FUSE mount died during the walk")?;
        mount.stop();
        println!("steps:\n{}", steps.summary());
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        Ok(())
    });
}

/// `M/<absolute catalog path>`.
fn mount_path(mountpoint: &Path, catalog_path: &str) -> PathBuf {
    mountpoint.join(catalog_path.trim_start_matches('/'))
}

/// Through the mount, the hard-link group in `d` is one inode with link count 2; the link
/// across directories is a file of its own (CVMFS groups never span directories).
fn check_rich_hardlinks(walked: &fswalk::Walked) -> Result<()> {
    let inode = |p: &str| {
        walked
            .inodes
            .get(p)
            .copied()
            .with_context(|| format!("{p} not in the mounted tree"))
    };
    let (a, b, c) = (
        inode("d/file")?,
        inode("d/file-hardlink")?,
        inode("other/file-hardlink")?,
    );
    ensure!(
        a.ino == b.ino && a.nlink == 2 && b.nlink == 2,
        "d/file {a:?} and d/file-hardlink {b:?} are not one inode with 2 links"
    );
    ensure!(
        c.ino != a.ino,
        "other/file-hardlink shares the inode of d/file across directories"
    );
    println!(
        "    d/file and d/file-hardlink: inode {} with {} links",
        a.ino, a.nlink
    );
    Ok(())
}
