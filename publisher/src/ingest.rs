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
        layerfs.catalog = Some(CatalogMark::new_catalog());
        layerfs.children.insert(
            crate::tree::CATALOG_MARKER.into(),
            Node::leaf(marker_entry(empty, now)),
        );
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
        flat.catalog = Some(CatalogMark::new_catalog());
        flat.children.insert(
            crate::tree::CATALOG_MARKER.into(),
            Node::leaf(marker_entry(empty, now)),
        );
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
    let bucket = layers.children.entry(hh.to_string()).or_insert_with(|| {
        let mut b = Node::dir(hh, 0o755, now);
        b.catalog = Some(CatalogMark::new_catalog());
        b.children.insert(
            crate::tree::CATALOG_MARKER.into(),
            Node::leaf(marker_entry(empty, now)),
        );
        b
    });
    bucket
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
