//! `ingest`: one repository transaction for a batch of images (DESIGN.md, "Publisher").
//!
//! For each image: fetch manifest and config, download and convert only the layers that are
//! not yet in the repository (a few at a time, each streamed on a blocking thread), then add
//! the namespace of docs/CONTRACTS.md §3: `.layers/<hh>/<hex>/{layerfs,.metadata/layer.json}`,
//! `.chainids/<hh>/<chainid>`, `.flat/<hh>/<config hex>`, `.metadata/<name>/…` and the public
//! symlink. Only when every image succeeded is one new revision published.

use std::path::Path;
use std::sync::Arc;

use catalog::{ContentHash, LocalStore, Suffix};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::digest::{chain_ids, sha256_hex};
use crate::error::{Error, Result};
use crate::flatten::flatten;
use crate::layer::{LayerId, read_layer};
use crate::objects::read_object;
use crate::publish::{
    Namespace, load_catalog_node, load_namespace, publish, read_catalog_tree, unix_now,
};
use crate::reference::{ImageName, ImageRef};
use crate::repo::Repo;
use crate::source::oci_layout::LayoutSource;
use crate::source::registry::RegistrySource;
use crate::source::{BlobDescriptor, FetchedImage, Source};
use crate::tree::{CatalogMark, Node, file_entry, marker_entry, symlink_entry};

/// How many layers of one image are converted at the same time.
pub const LAYER_CONCURRENCY: usize = 3;

/// Contents of `.layers/<hh>/<hex>/.metadata/layer.json` (docs/CONTRACTS.md §3).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerFacts {
    /// Compressed layer digest `sha256:<hex>`.
    pub digest: String,
    /// Uncompressed tar digest `sha256:<hex>`.
    pub diff_id: String,
    /// Media type from the manifest that brought the layer.
    pub media_type: String,
    /// Compressed size in bytes.
    pub size: u64,
    /// Every ChainID whose top layer this is.
    pub chain_ids: Vec<String>,
}

/// What one `ingest` did.
#[derive(Clone, Debug, Default)]
pub struct IngestSummary {
    /// The revision published.
    pub revision: u64,
    /// Public names of the images published.
    pub images: Vec<String>,
    /// Layers converted in this run.
    pub layers_converted: usize,
    /// Layers found in the repository already.
    pub layers_reused: usize,
}

/// Turns command-line references into sources. `name` (`--name REGISTRY/REPO:TAG`) names the
/// `oci:` image; it is an error to give it with more than one `oci:` reference.
pub fn sources(refs: &[String], name: Option<&str>) -> Result<Vec<Source>> {
    let layouts = refs.iter().filter(|r| r.starts_with("oci:")).count();
    if name.is_some() && layouts != 1 {
        return Err(Error::Reference {
            reference: name.unwrap_or_default().to_string(),
            reason: "--name needs exactly one oci: reference".into(),
        });
    }
    let mut out = Vec::new();
    for r in refs {
        out.push(match ImageRef::parse(r)? {
            ImageRef::Registry(n) => Source::Registry(RegistrySource::new(n)),
            ImageRef::Layout { dir, tag } => {
                let public = match name {
                    Some(n) => ImageName::parse(n)?,
                    None => {
                        ImageRef::default_layout_name(&dir, tag.as_deref().unwrap_or("latest"))?
                    }
                };
                Source::Layout(LayoutSource::new(&dir, tag, public))
            }
        });
    }
    Ok(out)
}

async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

/// Runs one ingest transaction on the repository in `dir`; holds `DIR/lock` throughout.
pub async fn ingest(dir: &Path, sources: Vec<Source>) -> Result<IngestSummary> {
    let dir = dir.to_path_buf();
    let (repo, lock, ns) = blocking(move || {
        let lock = Repo::lock(&dir)?;
        let repo = Repo::open(&dir)?;
        let ns = load_namespace(&repo)?;
        Ok((repo, lock, ns))
    })
    .await?;
    let repo = Arc::new(repo);
    let mut ns = ns;
    let mut summary = IngestSummary::default();
    for source in &sources {
        ns = ingest_image(&repo, ns, source, &mut summary).await?;
    }
    let repo2 = repo.clone();
    let (manifest, _ns) = blocking(move || {
        let m = publish(&repo2, &mut ns)?;
        Ok((m, ns))
    })
    .await?;
    drop(lock);
    summary.revision = manifest.revision;
    Ok(summary)
}

/// `<hh>` and `<hex>` of a `sha256:<hex>` digest.
fn split_digest(digest: &str) -> Result<(String, String)> {
    let hex = sha256_hex(digest).ok_or_else(|| Error::Image {
        image: String::new(),
        reason: format!("unsupported digest {digest:?}"),
    })?;
    Ok((hex[..2].to_string(), hex.to_string()))
}

async fn ingest_image(
    repo: &Arc<Repo>,
    ns: Namespace,
    source: &Source,
    summary: &mut IngestSummary,
) -> Result<Namespace> {
    let image = source.fetch().await?;
    let label = image.name.to_string();
    tracing::info!(image = %label, layers = image.layers.len(), "fetched manifest and config");

    // Which layers are missing (loading the .layers/<hh> catalogs that may hold them)?
    let digests: Vec<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
    let config_digest = image.config_descriptor.digest.clone();
    let repo2 = repo.clone();
    let (ns, missing, flat_exists) = blocking(move || {
        let mut ns = ns;
        let mut missing = Vec::new();
        for d in &digests {
            let (hh, hex) = split_digest(d)?;
            if let Some(bucket) = ns.root.get_mut(&[".layers", &hh]) {
                load_catalog_node(&repo2, bucket)?;
            }
            let exists = ns.root.get(&[".layers", &hh, &hex, "layerfs"]).is_some();
            if !exists && !missing.contains(d) {
                missing.push(d.clone());
            }
        }
        let (chh, chex) = split_digest(&config_digest)?;
        let flat_exists = ns.root.get(&[".flat", &chh, &chex]).is_some();
        Ok((ns, missing, flat_exists))
    })
    .await?;

    let to_fetch: Vec<(BlobDescriptor, String)> = missing
        .iter()
        .filter_map(|d| {
            let i = image.layers.iter().position(|l| &l.digest == d)?;
            Some((image.layers[i].clone(), image.diff_ids[i].clone()))
        })
        .collect();
    let converted: Vec<(String, crate::layer::LayerTree)> = futures::stream::iter(to_fetch)
        .map(|(blob, diff_id)| {
            let repo = repo.clone();
            let label = label.clone();
            async move {
                let reader = source.open_blob(&blob).await?;
                let id = LayerId {
                    image: label,
                    digest: blob.digest.clone(),
                    diff_id,
                    media_type: blob.media_type.clone(),
                };
                let tree = blocking(move || read_layer(reader, &id, &repo.store)).await?;
                tracing::info!(layer = %blob.digest, files = tree.files, "converted layer");
                Ok::<_, Error>((blob.digest, tree))
            }
        })
        .buffered(LAYER_CONCURRENCY)
        .try_collect()
        .await?;
    summary.layers_converted += converted.len();
    summary.layers_reused += image.layers.len() - missing.len();
    summary.images.push(image.name.public_path());

    let repo2 = repo.clone();
    blocking(move || {
        let mut ns = ns;
        add_image(&repo2, &mut ns, &image, converted, flat_exists)?;
        Ok(ns)
    })
    .await
}

/// Adds one image's namespace to `ns` (runs on a blocking thread).
fn add_image(
    repo: &Repo,
    ns: &mut Namespace,
    image: &FetchedImage,
    converted: Vec<(String, crate::layer::LayerTree)>,
    flat_exists: bool,
) -> Result<()> {
    let store = &repo.store;
    let now = unix_now() as i64;
    let empty = store.put_raw(b"", Suffix::None)?;
    let chains = chain_ids(&image.diff_ids);

    // New layers: .layers/<hh>/<hex>/layerfs + .metadata/layer.json
    for (digest, tree) in converted {
        let (hh, hex) = split_digest(&digest)?;
        if ns.root.get(&[".layers", &hh, &hex, "layerfs"]).is_some() {
            continue; // the same layer twice in one image
        }
        let bucket = bucket_mut(ns, &hh, empty, now);
        let mut layerfs = tree.root;
        layerfs.entry.name = "layerfs".into();
        // No `.cvmfscatalog` marker here (spec §9.4 makes it optional): the layer's
        // content must be exactly the layer, since it becomes a container's lowerdir.
        layerfs.catalog = Some(CatalogMark::new_catalog());
        bucket.insert(&[&hex], layerfs, now);
        let blob = image
            .layers
            .iter()
            .find(|l| l.digest == digest)
            .cloned()
            .unwrap_or_else(|| BlobDescriptor {
                digest: digest.clone(),
                media_type: String::new(),
                size: tree.digests.compressed_size,
            });
        let facts = LayerFacts {
            digest: digest.clone(),
            diff_id: tree.digests.uncompressed.clone(),
            media_type: blob.media_type,
            size: tree.digests.compressed_size,
            chain_ids: image
                .layers
                .iter()
                .zip(&chains)
                .filter(|(l, _)| l.digest == digest)
                .map(|(_, c)| c.clone())
                .collect(),
        };
        write_layer_facts(store, bucket, &hex, &facts, now)?;
    }

    // Chain IDs: record them in layer.json and as .chainids symlinks.
    for (i, chain) in chains.iter().enumerate() {
        let (hh, hex) = split_digest(&image.layers[i].digest)?;
        let (chh, chex) = split_digest(chain)?;
        let bucket = bucket_mut(ns, &hh, empty, now);
        let mut facts = read_layer_facts(store, bucket, &hex)?;
        if !facts.chain_ids.contains(chain) {
            facts.chain_ids.push(chain.clone());
            write_layer_facts(store, bucket, &hex, &facts, now)?;
            if let Some(m) = bucket.catalog.as_mut() {
                m.dirty = true;
            }
        }
        let target = format!("../../.layers/{hh}/{hex}/layerfs");
        let link = Node::leaf(symlink_entry(&chex, &target, 0, 0, now));
        ns.root.insert(&[".chainids", &chh], link, now);
    }

    // The flattened image.
    let (chh, chex) = split_digest(&image.config_descriptor.digest)?;
    if !flat_exists && ns.root.get(&[".flat", &chh, &chex]).is_none() {
        let mut trees = Vec::with_capacity(image.layers.len());
        for l in &image.layers {
            let (hh, hex) = split_digest(&l.digest)?;
            let node = ns
                .root
                .get(&[".layers", &hh, &hex, "layerfs"])
                .ok_or_else(|| Error::Task(format!("layer {} vanished", l.digest)))?;
            let tree = match node.catalog.as_ref() {
                Some(m) if !m.loaded => match &m.published {
                    Some(p) => read_catalog_tree(repo, &p.hash)?,
                    None => node.clone(),
                },
                _ => node.clone(),
            };
            trees.push(tree);
        }
        let refs: Vec<&Node> = trees.iter().collect();
        let mut flat = flatten(&refs);
        flat.entry.name = chex.clone();
        // No marker either: the flat tree is the image's root file system as is.
        flat.catalog = Some(CatalogMark::new_catalog());
        ns.root.insert(&[".flat", &chh], flat, now);
    }

    // .metadata/<registry>/<repository>:<tag>/ and the public symlink.
    let public = image.name.public_path();
    let comps: Vec<&str> = public.split('/').collect();
    let mut meta_path = vec![".metadata"];
    meta_path.extend(&comps);
    ns.root.remove(&meta_path);
    let mut files: Vec<(&str, &[u8])> = vec![
        ("manifest.json", &image.manifest),
        ("config.json", &image.config),
    ];
    if let Some(index) = &image.index {
        files.push(("index.json", index));
    }
    for (name, bytes) in files {
        let hash = store.put_raw(bytes, Suffix::None)?;
        let e = file_entry(name, 0o644, 0, 0, now, bytes.len() as u64, hash);
        ns.root.insert(&meta_path, Node::leaf(e), now);
    }
    let (name, parent) = comps
        .split_last()
        .ok_or_else(|| Error::Task("empty public name".into()))?;
    let target = format!("{}.flat/{chh}/{chex}", "../".repeat(parent.len()));
    ns.root.insert(
        parent,
        Node::leaf(symlink_entry(name, &target, 0, 0, now)),
        now,
    );
    Ok(())
}

/// The `.layers/<hh>` catalog node, created (with its marker) if missing; marked dirty.
fn bucket_mut<'a>(ns: &'a mut Namespace, hh: &str, empty: ContentHash, now: i64) -> &'a mut Node {
    let layers = ns.root.ensure_dir(&[".layers"], now);
    layers.children.entry(hh.to_string()).or_insert_with(|| {
        let mut b = Node::dir(hh, 0o755, now);
        b.catalog = Some(CatalogMark::new_catalog());
        b.children.insert(
            crate::tree::CATALOG_MARKER.into(),
            Node::leaf(marker_entry(empty, now)),
        );
        b
    })
}

fn write_layer_facts(
    store: &LocalStore,
    bucket: &mut Node,
    hex: &str,
    facts: &LayerFacts,
    now: i64,
) -> Result<()> {
    let json =
        serde_json::to_vec_pretty(facts).map_err(|e| Error::json("encoding layer.json", e))?;
    let hash = store.put_raw(&json, Suffix::None)?;
    let e = file_entry("layer.json", 0o644, 0, 0, now, json.len() as u64, hash);
    bucket.insert(&[hex, ".metadata"], Node::leaf(e), now);
    if let Some(m) = bucket.catalog.as_mut() {
        m.dirty = true;
    }
    Ok(())
}

fn read_layer_facts(store: &LocalStore, bucket: &Node, hex: &str) -> Result<LayerFacts> {
    let node = bucket
        .get(&[hex, ".metadata", "layer.json"])
        .ok_or_else(|| Error::Task(format!("layer {hex} has no .metadata/layer.json")))?;
    let hash = node
        .entry
        .hash
        .ok_or_else(|| Error::Task(format!("layer {hex}: layer.json has no hash")))?;
    let bytes = read_object(store, &hash, Suffix::None, 1 << 20)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::json(format!("parsing layer.json of {hex}"), e))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    use catalog::{CatalogReader, Entry, EntryKind};
    use tar::EntryType;

    use super::*;
    use crate::digest::sha256_digest;
    use crate::layer::tests::{TarBuilder, gzip};
    use crate::objects::inflate_catalog;
    use crate::publish::init;
    use crate::tree::S_IFCHR;

    const FQRN: &str = "test.example.org";

    fn ok<T, E: std::fmt::Display>(r: std::result::Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Writes an OCI layout with the given layer tars (gzip) tagged `tag`; returns
    /// (layer digests, diffIDs, config digest).
    fn write_layout(dir: &Path, tag: &str, tars: &[Vec<u8>]) -> (Vec<String>, Vec<String>, String) {
        let blobs = dir.join("blobs/sha256");
        ok(fs::create_dir_all(&blobs));
        let put = |bytes: &[u8]| {
            let d = sha256_digest(bytes);
            ok(fs::write(blobs.join(&d[7..]), bytes));
            d
        };
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_json = Vec::new();
        for t in tars {
            let gz = gzip(t);
            let d = put(&gz);
            layer_json.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d, "size": gz.len()}));
            layers.push(d);
            diff_ids.push(sha256_digest(t));
        }
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}}))
        .unwrap_or_default();
        let config_digest = put(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": layer_json}))
        .unwrap_or_default();
        let manifest_digest = put(&manifest);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag}}]});
        ok(fs::write(dir.join("index.json"), index.to_string()));
        ok(fs::write(
            dir.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        ));
        (layers, diff_ids, config_digest)
    }

    fn test_tars() -> Vec<Vec<u8>> {
        let base = TarBuilder::new()
            .dir("bin", 0o755)
            .file("bin/busybox", 0o755, b"#!busybox\n")
            .link(EntryType::Link, "bin/sh", "bin/busybox")
            .file("etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n")
            .file("etc/motd", 0o644, b"hello\n")
            .file("var/cache/old", 0o644, b"old")
            .finish();
        let top = TarBuilder::new()
            .file("etc/.wh.motd", 0o644, b"")
            .file("var/cache/.wh..wh..opq", 0o644, b"")
            .file("var/cache/new", 0o644, b"new")
            .file("app/data", 0o600, b"payload")
            .finish();
        vec![base, top]
    }

    /// Looks `path` up through the nested catalogs of the current revision.
    struct RepoView {
        repo: Repo,
        tmp: tempfile::TempDir,
    }

    impl RepoView {
        fn open(dir: &Path) -> RepoView {
            RepoView {
                repo: ok(Repo::open(dir)),
                tmp: ok(tempfile::tempdir()),
            }
        }

        fn catalog(&self, hash: &ContentHash) -> CatalogReader {
            let file = self.tmp.path().join(hash.to_hex());
            if !file.exists() {
                ok(inflate_catalog(&self.repo.store, hash, &file));
            }
            ok(CatalogReader::open(&file))
        }

        fn root(&self) -> CatalogReader {
            let m = ok(self.repo.current_manifest()).manifest;
            self.catalog(&m.catalog_hash)
        }

        /// The catalog that holds `path` (deepest) and the entry.
        fn find(&self, path: &str) -> Option<(CatalogReader, Entry)> {
            let mut cat = self.root();
            loop {
                if let Some(e) = ok(cat.lookup(path)) {
                    if e.is_nested_mountpoint() {
                        let n = ok(cat.nested_catalogs())
                            .into_iter()
                            .find(|n| n.path == path)?;
                        let child = self.catalog(&n.hash);
                        let e = ok(child.lookup(path))?;
                        return Some((child, e));
                    }
                    return Some((cat, e));
                }
                let n = ok(cat.nested_catalogs())
                    .into_iter()
                    .find(|n| path.starts_with(&format!("{}/", n.path)))?;
                cat = self.catalog(&n.hash);
            }
        }

        fn entry(&self, path: &str) -> Entry {
            self.find(path)
                .map(|(_, e)| e)
                .unwrap_or_else(|| panic!("{path} missing"))
        }
    }

    fn objects(srv: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in ok(fs::read_dir(srv.join("data"))) {
            let d = ok(d).path();
            if d.file_name().is_some_and(|n| n == "txn") {
                continue;
            }
            for f in ok(fs::read_dir(&d)) {
                out.push(ok(f).path());
            }
        }
        out.sort();
        out
    }

    fn verify(dir: &Path) -> catalog::Manifest {
        let repo = ok(Repo::open(dir));
        let manifest = ok(fs::read(dir.join("srv/.cvmfspublished")));
        let whitelist = ok(fs::read(dir.join("srv/.cvmfswhitelist")));
        let cert = ok(fs::read(dir.join(format!("keys/{FQRN}.crt"))));
        let master = ok(repo.master_public_key());
        ok(catalog::verify_repository(
            &manifest,
            &cert,
            &whitelist,
            &[master],
            FQRN,
            unix_now(),
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn init_ingest_oci_layout_and_reingest() {
        let work = ok(tempfile::tempdir());
        let dir = work.path().join("repo");
        let m0 = ok(init(&dir, FQRN, 60));
        assert_eq!(m0.revision, 0);
        assert!(matches!(
            init(&dir, FQRN, 60),
            Err(Error::AlreadyRepository(_))
        ));
        use std::os::unix::fs::PermissionsExt;
        for (ext, mode) in [
            ("masterkey", 0o600),
            ("key", 0o600),
            ("pub", 0o644),
            ("crt", 0o644),
        ] {
            let meta = ok(fs::metadata(dir.join(format!("keys/{FQRN}.{ext}"))));
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{ext}");
        }
        assert!(dir.join("srv/.cvmfs_master_replica").exists());
        verify(&dir);

        let layout = work.path().join("layout");
        let (layers, diff_ids, config) = write_layout(&layout, "v1", &test_tars());
        let oci_ref = format!("oci:{}:v1", layout.display());
        let srcs = ok(sources(
            std::slice::from_ref(&oci_ref),
            Some("localhost/demo/app:v1"),
        ));
        let s = ok(ingest(&dir, srcs).await);
        assert_eq!((s.revision, s.layers_converted, s.layers_reused), (1, 2, 0));
        let m1 = verify(&dir);
        assert_eq!(m1.revision, 1);

        let view = RepoView::open(&dir);
        let hex = |d: &str| d[7..].to_string();
        let (l0, l1, c) = (hex(&layers[0]), hex(&layers[1]), hex(&config));
        // layers, with whiteouts as overlayfs reads them
        let lfs0 = format!("/.layers/{}/{l0}/layerfs", &l0[..2]);
        let lfs1 = format!("/.layers/{}/{l1}/layerfs", &l1[..2]);
        let (cat, e) = view
            .find(&lfs0)
            .unwrap_or_else(|| panic!("layerfs missing"));
        assert!(e.is_nested_root());
        assert_eq!(cat.root_prefix(), lfs0);
        // the layer holds exactly the layer: no catalog marker
        assert!(view.find(&format!("{lfs0}/.cvmfscatalog")).is_none());
        let sh = view.entry(&format!("{lfs0}/bin/sh"));
        let bb = view.entry(&format!("{lfs0}/bin/busybox"));
        assert_eq!((sh.hash, sh.linkcount), (bb.hash, 2));
        assert!(sh.hardlink_group != 0 && sh.hardlink_group == bb.hardlink_group);
        let wh = view.entry(&format!("{lfs1}/etc/motd"));
        assert_eq!(
            (wh.kind, wh.mode, wh.rdev),
            (EntryKind::CharDevice, S_IFCHR, 0)
        );
        let opq = view.entry(&format!("{lfs1}/var/cache"));
        assert_eq!(
            opq.xattrs.get("trusted.overlay.opaque"),
            Some(&b"y".to_vec())
        );
        assert!(view.find(&format!("{lfs1}/etc/.wh.motd")).is_none());
        // .layers/<hh> is a nested catalog too
        let bucket = format!("/.layers/{}", &l0[..2]);
        assert!(view.find(&bucket).is_some_and(|(_, e)| e.is_nested_root()));
        assert_eq!(view.entry(&format!("{bucket}/.cvmfscatalog")).size, 0);
        let facts_entry = view.entry(&format!("/.layers/{}/{l0}/.metadata/layer.json", &l0[..2]));
        let facts_hash = facts_entry.hash.unwrap_or_else(|| panic!("no hash"));
        let facts: LayerFacts = ok(serde_json::from_slice(&ok(read_object(
            &view.repo.store,
            &facts_hash,
            Suffix::None,
            1 << 20,
        ))));
        assert_eq!(facts.diff_id, diff_ids[0]);
        assert_eq!(facts.chain_ids, vec![diff_ids[0].clone()]);
        // chain ids
        let chains = chain_ids(&diff_ids);
        let top = view.entry(&format!(
            "/.chainids/{}/{}",
            &chains[1][7..9],
            &chains[1][7..]
        ));
        assert_eq!(
            top.symlink,
            format!("../../.layers/{}/{l1}/layerfs", &l1[..2])
        );
        // flat image
        let flat = format!("/.flat/{}/{c}", &c[..2]);
        assert!(view.find(&flat).is_some_and(|(_, e)| e.is_nested_root()));
        assert!(view.find(&format!("{flat}/etc/motd")).is_none());
        assert!(view.find(&format!("{flat}/etc/passwd")).is_some());
        assert!(view.find(&format!("{flat}/var/cache/old")).is_none());
        assert_eq!(view.entry(&format!("{flat}/var/cache/new")).size, 3);
        assert_eq!(view.entry(&format!("{flat}/app/data")).mode, 0o100600);
        assert_eq!(view.entry(&format!("{flat}/bin/sh")).hash, bb.hash);
        // metadata and public symlink
        let meta = "/.metadata/localhost/demo/app:v1";
        let mf = view.entry(&format!("{meta}/manifest.json"));
        let mbytes = ok(read_object(
            &view.repo.store,
            &mf.hash.unwrap_or_else(|| panic!()),
            Suffix::None,
            1 << 20,
        ));
        let index: serde_json::Value = ok(serde_json::from_slice(&ok(fs::read(
            layout.join("index.json"),
        ))));
        assert_eq!(
            Some(sha256_digest(&mbytes).as_str()),
            index["manifests"][0]["digest"].as_str()
        );
        assert!(view.find(&format!("{meta}/config.json")).is_some());
        assert!(view.find(&format!("{meta}/index.json")).is_none());
        let link = view.entry("/localhost/demo/app:v1");
        assert_eq!(link.symlink, format!("../../.flat/{}/{c}", &c[..2]));
        drop(view);

        // A second ingest of the same image re-uses everything but catalogs.
        let before = objects(&dir.join("srv"));
        let srcs = ok(sources(&[oci_ref], Some("localhost/demo/app:v1")));
        let s = ok(ingest(&dir, srcs).await);
        assert_eq!((s.revision, s.layers_converted, s.layers_reused), (2, 0, 2));
        let after = objects(&dir.join("srv"));
        let new: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
        assert!(!new.is_empty());
        assert!(
            new.iter().all(|p| p.to_string_lossy().ends_with('C')),
            "new non-catalog objects: {new:?}"
        );
        let m2 = verify(&dir);
        assert_eq!(m2.revision, 2);
        assert!(m2.timestamp >= m1.timestamp);
        let view = RepoView::open(&dir);
        assert!(view.find(&format!("{lfs0}/bin/busybox")).is_some());
        assert_eq!(view.root().revision(), 2);
        // subtree counters of the root (from the statistics cache) = Σ children's totals
        assert!(dir.join("statistics.json").exists());
        let root = view.root();
        let mut sum = catalog::Counters::default();
        for n in ok(root.nested_catalogs()) {
            sum += ok(view.catalog(&n.hash).statistics()).total();
        }
        assert_eq!(ok(root.statistics()).subtree, sum);
        assert!(sum.regular >= 8, "{sum:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_image_publishes_nothing() {
        let work = ok(tempfile::tempdir());
        let dir = work.path().join("repo");
        ok(init(&dir, FQRN, 60));
        let good = work.path().join("good");
        write_layout(&good, "1", &test_tars()[..1]);
        let bad = work.path().join("bad");
        let hostile = TarBuilder::new().raw_file(b"../../etc/shadow").finish();
        write_layout(&bad, "1", &[hostile]);
        let refs = [
            format!("oci:{}:1", good.display()),
            format!("oci:{}:1", bad.display()),
        ];
        let err = ingest(&dir, ok(sources(&refs, None))).await.err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("escapes") && msg.contains("localhost/bad:1"),
            "{msg}"
        );
        assert_eq!(verify(&dir).revision, 0);
    }
}
