//! `ingest`: one repository transaction for a batch of images (docs/architecture.md §2).
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
use namespace::{Digest, chain_ids, paths};
use serde::{Deserialize, Serialize};

use crate::catalog_view::CatalogView;
use crate::error::{Error, Result};
use crate::flatten::{Image, LayerView};
use crate::layer::{LayerId, Limits, StagedLayer, read_layer};
use crate::objects::read_object;
use crate::pipeline::Pool;
use crate::progress::Progress;
use crate::publish::{
    Namespace, StreamedCatalog, load_catalog_node, load_namespace, publish, unix_now,
    write_streamed,
};
use crate::reference::{ImageName, ImageRef};
use crate::repo::Repo;
use crate::source::docker_archive::ArchiveSource;
use crate::source::oci_layout::LayoutSource;
use crate::source::registry::{RegistryOptions, RegistrySource};
use crate::source::{BlobDescriptor, FetchedImage, FetchedSet, Platform, PlatformFilter, Source};
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
    /// Uncompressed tar size in bytes (written since the podman store; older layers lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_size: Option<u64>,
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

/// Turns command-line references into sources. `name` (`--name REGISTRY/REPO:TAG`) names
/// the `oci:` or `docker-archive:` image; it is an error to give it with more than one such
/// reference.
pub fn sources(
    refs: &[String],
    name: Option<&str>,
    registry: &RegistryOptions,
) -> Result<Vec<Source>> {
    let local = refs
        .iter()
        .filter(|r| r.starts_with("oci:") || r.starts_with("docker-archive:"))
        .count();
    if name.is_some() && local != 1 {
        return Err(Error::Reference {
            reference: name.unwrap_or_default().to_string(),
            reason: "--name needs exactly one oci: or docker-archive: reference".into(),
        });
    }
    let name = name.map(ImageName::parse).transpose()?;
    let mut out = Vec::new();
    for r in refs {
        out.push(match ImageRef::parse(r)? {
            ImageRef::Registry(n) => Source::Registry(RegistrySource::new(n, registry)?),
            ImageRef::Layout { dir, tag } => {
                let public = match &name {
                    Some(n) => n.clone(),
                    None => {
                        ImageRef::default_layout_name(&dir, tag.as_deref().unwrap_or("latest"))?
                    }
                };
                Source::Layout(LayoutSource::new(&dir, tag, public))
            }
            ImageRef::Archive { file } => {
                Source::Archive(ArchiveSource::open(&file, name.as_ref())?)
            }
        });
    }
    Ok(out)
}

/// Runs `f` (file, zlib or SQLite work) on tokio's blocking pool and returns its result;
/// a panic in `f` becomes [`Error::Task`]. Shared with `sync`.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

/// Settings of one `ingest` run.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// Which platforms of an index to publish (`--platform`; empty = all).
    pub platforms: PlatformFilter,
    /// The platform the public symlink points at (`--default-platform`, linux/amd64).
    pub default_platform: Platform,
    /// Limits on layer contents (`--max-layer-size`).
    pub limits: Limits,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            platforms: PlatformFilter::default(),
            default_platform: Platform::linux_amd64(),
            limits: Limits::default(),
        }
    }
}

/// Runs one ingest transaction on the repository in `dir`; holds `DIR/lock` throughout.
/// Either every image is published in one new revision, or (on any error) nothing is.
pub async fn ingest(
    dir: &Path,
    sources: Vec<Source>,
    options: &IngestOptions,
) -> Result<IngestSummary> {
    let dir = dir.to_path_buf();
    let (repo, lock, ns) = blocking(move || {
        let lock = Repo::lock(&dir)?;
        let repo = Repo::open(&dir)?;
        repo.clean_scratch()?;
        let ns = load_namespace(&repo)?;
        Ok((repo, lock, ns))
    })
    .await?;
    let repo = Arc::new(repo);
    let pool = Arc::new(Pool::per_cpu(&repo.store, options.limits.memory_budget));
    let progress = Arc::new(Progress::new());
    let mut summary = IngestSummary::default();
    let converted =
        ingest_batch(&repo, &pool, &progress, ns, &sources, options, &mut summary).await;
    // Joining the workers may wait for pieces still being compressed (after an error):
    // not on a tokio worker.
    blocking(move || {
        drop(pool);
        Ok(())
    })
    .await?;
    let mut ns = converted?;
    let repo2 = repo.clone();
    let (manifest, _ns) = blocking(move || {
        crate::podman_store::refresh(&repo2, &mut ns)?;
        let m = publish(&repo2, &mut ns)?;
        Ok((m, ns))
    })
    .await?;
    drop(lock);
    summary.revision = manifest.revision;
    Ok(summary)
}

/// Fetches every image of the batch, converts the layers the repository lacks (a few at a
/// a time, from all images at once), then adds every image to `ns`. Also used by `sync`
/// (one image per call, so that one failure leaves the others).
pub(crate) async fn ingest_batch(
    repo: &Arc<Repo>,
    pool: &Arc<Pool>,
    progress: &Arc<Progress>,
    ns: Namespace,
    sources: &[Source],
    options: &IngestOptions,
    summary: &mut IngestSummary,
) -> Result<Namespace> {
    let sets: Vec<FetchedSet> =
        futures::future::try_join_all(sources.iter().map(|s| s.fetch(&options.platforms))).await?;
    // Every layer of every platform of every image, once: (source index, blob, diffID).
    let mut layers: Vec<(usize, BlobDescriptor, Digest)> = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        let platforms: Vec<String> = set.images.iter().map(|i| i.platform.to_string()).collect();
        tracing::info!(image = %set.name, platforms = %platforms.join(","), "fetched manifests and configs");
        for img in &set.images {
            for (l, d) in img.layers.iter().zip(&img.diff_ids) {
                if !layers.iter().any(|(_, x, _)| x.digest == l.digest) {
                    layers.push((i, l.clone(), d.clone()));
                }
            }
        }
    }
    // Which layers are missing (loading the .layers/<hh> catalogs that may hold them)?
    let digests: Vec<Digest> = layers.iter().map(|(_, l, _)| l.digest.clone()).collect();
    let repo2 = repo.clone();
    let (ns, missing) = blocking(move || {
        let mut ns = ns;
        let mut missing = Vec::new();
        for d in &digests {
            if let Some(bucket) = ns.root.get_mut(&paths::layer_bucket(d)) {
                load_catalog_node(&repo2, bucket)?;
            }
            if ns.root.get(&paths::layerfs(d)).is_none() {
                missing.push(d.clone());
            }
        }
        Ok((ns, missing))
    })
    .await?;

    let to_fetch: Vec<(usize, BlobDescriptor, Digest)> = layers
        .iter()
        .filter(|(_, l, _)| missing.contains(&l.digest))
        .cloned()
        .collect();
    progress.add_layers(to_fetch.len() as u64);
    let scratch = repo.tmp_dir()?;
    let converted: Vec<(Digest, StagedLayer)> = futures::stream::iter(to_fetch)
        .map(|(i, blob, diff_id)| {
            let pool = pool.clone();
            let progress = progress.clone();
            let label = sets[i].name.to_string();
            let limits = options.limits.clone();
            let source = &sources[i];
            let scratch = scratch.clone();
            async move {
                let bar = progress.layer(&blob.digest.to_string(), blob.size);
                let reader = bar.reader(source.open_blob(&blob).await?);
                let id = LayerId {
                    image: label,
                    digest: blob.digest.to_string(),
                    diff_id: diff_id.to_string(),
                    media_type: blob.media_type.clone(),
                };
                let tree =
                    blocking(move || read_layer(reader, &id, &pool, &limits, &scratch)).await?;
                bar.finish(
                    tree.digests.compressed_size,
                    tree.digests.uncompressed_size,
                    tree.files,
                );
                Ok::<_, Error>((blob.digest, tree))
            }
        })
        .buffer_unordered(LAYER_CONCURRENCY)
        .try_collect()
        .await?;
    summary.layers_converted += converted.len();
    summary.layers_reused += layers.len() - missing.len();
    summary
        .images
        .extend(sets.iter().map(|s| s.name.public_path()));

    let repo2 = repo.clone();
    let default_platform = options.default_platform.clone();
    blocking(move || {
        let mut ns = ns;
        let mut converted: std::collections::HashMap<_, _> = converted.into_iter().collect();
        for set in &sets {
            for img in &set.images {
                let label = format!("{} ({})", set.name, img.platform);
                add_image(&repo2, &mut ns, &label, img, &mut converted)?;
            }
            add_metadata(&repo2, &mut ns, set, &default_platform)?;
        }
        Ok(ns)
    })
    .await
}

/// Adds one platform image's layers, chain IDs and flat tree to `ns` (blocking thread).
///
/// Nothing of the size of a layer is held in memory: each new layer's catalog is written
/// straight from its staging database ([`StagedLayer::emit`]), and the flat tree is merged
/// from the layer catalogs directory by directory into its own catalog
/// ([`Image::emit`]); only their root rows join `ns` (publisher/README.md, "Memory").
fn add_image(
    repo: &Repo,
    ns: &mut Namespace,
    label: &str,
    image: &FetchedImage,
    converted: &mut std::collections::HashMap<Digest, StagedLayer>,
) -> Result<()> {
    let store = &repo.store;
    let now = unix_now() as i64;
    let empty = store.put_raw(b"", Suffix::None)?;
    let chains = chain_ids(&image.diff_ids);

    let config = &image.config_descriptor.digest;
    let flat_exists = ns.root.get(&paths::flat_dir(config)).is_some();
    // The layer catalogs are read back when the flat tree is built, or when a new layer
    // implies directories, which take their metadata from the layers below (a layer shared
    // by images of one batch is fixed against the first image's lower layers).
    let implied = |l: &BlobDescriptor| converted.get(&l.digest).is_some_and(|t| t.may_imply);
    let need_views = !flat_exists || image.layers.iter().any(implied);
    // Written catalogs stay on disk (for the views) until the image is done.
    let mut written: Vec<StreamedCatalog> = Vec::new();
    let mut views: Vec<CatalogView> = Vec::new();
    for blob in &image.layers {
        let digest = &blob.digest;
        let layer = digest.to_string();
        let Some(staged) = converted.remove(digest) else {
            if need_views {
                let view = published_layer_view(repo, ns, digest).map_err(in_layer(
                    label,
                    &layer,
                    "opening its published catalog",
                ))?;
                views.push(view);
            }
            continue;
        };
        // New layer: .layers/<hh>/<hex>/layerfs + .metadata/layer.json
        let lower = Image::for_lookup(views.iter().map(|v| v as &dyn LayerView).collect())?;
        let path = paths::absolute(&paths::layerfs(digest));
        // Its `.cvmfscatalog` marker is hidden (write_streamed): the listed content must be
        // exactly the layer, since it becomes a container's lowerdir.
        let layerfs = write_streamed(repo, &ns.manifest, &path, |out| {
            staged.emit((!lower.is_empty()).then_some(&lower), out)?;
            Ok(())
        })
        .map_err(in_layer(label, &layer, "writing its catalog"))?;
        drop(lower);
        let bucket = bucket_mut(ns, digest, empty, now);
        bucket.insert(&[digest.hex().as_str()], layerfs.mountpoint(), now);
        let facts = LayerFacts {
            digest: layer,
            diff_id: staged.digests.uncompressed.clone(),
            media_type: blob.media_type.clone(),
            size: staged.digests.compressed_size,
            diff_size: Some(staged.digests.uncompressed_size),
            chain_ids: Vec::new(),
        };
        write_layer_facts(store, bucket, digest, &facts, now)?;
        drop(staged);
        if need_views {
            views.push(CatalogView::open(&layerfs.file)?);
            written.push(layerfs);
        }
    }

    // Chain IDs: record them in layer.json and as .chainids symlinks.
    for (chain, blob) in chains.iter().zip(&image.layers) {
        let bucket = bucket_mut(ns, &blob.digest, empty, now);
        let mut facts = read_layer_facts(store, bucket, &blob.digest)?;
        let chain_text = chain.to_string();
        if !facts.chain_ids.contains(&chain_text) {
            facts.chain_ids.push(chain_text);
            write_layer_facts(store, bucket, &blob.digest, &facts, now)?;
        }
        let [top, hh, hex] = paths::chainid_link(chain);
        let target = paths::chainid_target(&blob.digest);
        let link = Node::leaf(symlink_entry(hex, &target, 0, 0, now));
        ns.root.insert(&[top, hh], link, now);
    }

    // The flattened image, merged from the layer catalogs into its own catalog, with a
    // hidden marker too: the flat tree lists the image's root file system as is.
    if !flat_exists {
        let flat_error = |e: Error| Error::Image {
            image: label.to_string(),
            reason: format!("building the flat tree from the layer catalogs: {e}"),
        };
        let flat =
            Image::new(views.iter().map(|v| v as &dyn LayerView).collect()).map_err(flat_error)?;
        let root_mtime = flat.root_entry().mtime;
        let singularity = crate::singularity::dir_node(store, &image.config, root_mtime)?;
        let [top, hh, _] = paths::flat_dir(config);
        let path = paths::absolute(&paths::flat_dir(config));
        let catalog = write_streamed(repo, &ns.manifest, &path, |out| {
            flat.emit(vec![singularity], out)?;
            Ok(())
        })
        .map_err(flat_error)?;
        ns.root.insert(&[top, hh], catalog.mountpoint(), now);
    }
    drop(views);
    drop(written);
    Ok(())
}

/// Names `image` and `layer` in an error met while `doing` something with the layer (an
/// [`Error::Layer`] is kept; a damaged staged row names its path as the entry).
fn in_layer<'a>(image: &'a str, layer: &'a str, doing: &'a str) -> impl Fn(Error) -> Error + 'a {
    move |e| match e {
        Error::Layer { .. } => e,
        other => Error::Layer {
            image: image.to_string(),
            layer: layer.to_string(),
            entry: match &other {
                Error::Staging { path, .. } => path.clone(),
                _ => String::new(),
            },
            reason: format!("{doing}: {other}"),
        },
    }
}

/// The published catalog of the layer `digest` in `ns`, inflated into `DIR/tmp` and opened.
fn published_layer_view(repo: &Repo, ns: &Namespace, digest: &Digest) -> Result<CatalogView> {
    let hash = ns
        .root
        .get(&paths::layerfs(digest))
        .and_then(|n| n.catalog.as_ref())
        .and_then(|m| m.published.as_ref())
        .map(|p| p.hash)
        .ok_or_else(|| Error::Task(format!("layer {digest} vanished")))?;
    CatalogView::open_published(repo, &hash)
}

/// Writes `.metadata/<public>/` (docs/CONTRACTS.md §3): `manifest.json`/`config.json` of
/// the default platform, `index.json` if the reference named one, and
/// `platforms/<os>-<arch>[-<variant>]/{manifest.json,config.json,rootfs}` for every platform
/// published (`rootfs` a relative symlink to its `.flat` tree); then the public symlink to
/// the default platform's `.flat` tree.
fn add_metadata(
    repo: &Repo,
    ns: &mut Namespace,
    set: &FetchedSet,
    default_platform: &Platform,
) -> Result<()> {
    let store = &repo.store;
    let now = unix_now() as i64;
    let public = set.name.public_path();
    let meta_path = paths::metadata_dir(&public);
    // The startup working sets of platforms whose config is unchanged stay (below).
    let old_meta = ns.root.remove(&meta_path);
    let mut put = |dir: &[&str], name: &str, bytes: &[u8]| -> Result<()> {
        let hash = store.put_raw(bytes, Suffix::None)?;
        let e = file_entry(name, 0o644, 0, 0, now, bytes.len() as u64, hash);
        ns.root.insert(dir, Node::leaf(e), now);
        Ok(())
    };
    let mut links = Vec::new();
    let default = set.default_image(default_platform);
    put(&meta_path, paths::MANIFEST_JSON, &default.manifest)?;
    put(&meta_path, paths::CONFIG_JSON, &default.config)?;
    if let Some(index) = &set.index {
        put(&meta_path, paths::INDEX_JSON, index)?;
    }
    let pdirs: Vec<String> = set.images.iter().map(|i| i.platform.dir_name()).collect();
    for (img, pdir) in set.images.iter().zip(&pdirs) {
        let dir = paths::platform_metadata_dir(&public, pdir);
        put(&dir, paths::MANIFEST_JSON, &img.manifest)?;
        put(&dir, paths::CONFIG_JSON, &img.config)?;
        let target = paths::flat_target(&dir, &img.config_descriptor.digest);
        links.push((dir, symlink_entry(paths::ROOTFS, &target, 0, 0, now)));
    }
    let mut configs = Vec::new();
    for (dir, link) in links {
        let config = ns
            .root
            .get(&[dir.as_slice(), &[paths::CONFIG_JSON]].concat())
            .and_then(|n| n.entry.hash);
        if let (Some(config), Some(pdir)) = (config, dir.last()) {
            configs.push((pdir.to_string(), config));
        }
        ns.root.insert(&dir, Node::leaf(link), now);
    }
    if let Some(old) = &old_meta {
        for (pdir, startup) in crate::startup::kept_startup_dirs(old, &configs) {
            ns.root
                .insert(&paths::platform_metadata_dir(&public, &pdir), startup, now);
        }
    }
    let (parent, name) =
        paths::public_link(&public).ok_or_else(|| Error::Task("empty public name".into()))?;
    let target = paths::flat_target(&parent, &default.config_descriptor.digest);
    ns.root.insert(
        &parent,
        Node::leaf(symlink_entry(name, &target, 0, 0, now)),
        now,
    );
    if set.images.len() > 1 || default.platform != *default_platform {
        tracing::info!(image = %public, platform = %default.platform, "public path points at");
    }
    Ok(())
}

/// The `.layers/<hh>` catalog node, created (with its marker) if missing; marked dirty.
fn bucket_mut<'a>(
    ns: &'a mut Namespace,
    layer: &Digest,
    empty: ContentHash,
    now: i64,
) -> &'a mut Node {
    let [layers, hh] = paths::layer_bucket(layer);
    let layers = ns.root.ensure_dir(&[layers], now);
    layers.children.entry(hh.to_string()).or_insert_with(|| {
        let mut b = Node::dir(hh, 0o755, now);
        b.catalog = Some(Box::new(CatalogMark::new_catalog()));
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
    layer: &Digest,
    facts: &LayerFacts,
    now: i64,
) -> Result<()> {
    let json =
        serde_json::to_vec_pretty(facts).map_err(|e| Error::json("encoding layer.json", e))?;
    let hash = store.put_raw(&json, Suffix::None)?;
    let e = file_entry(paths::LAYER_JSON, 0o644, 0, 0, now, json.len() as u64, hash);
    let [.., hex, metadata, _] = paths::layer_json(layer);
    bucket.insert(&[hex, metadata], Node::leaf(e), now);
    if let Some(m) = bucket.catalog.as_mut() {
        m.dirty = true;
    }
    Ok(())
}

pub(crate) fn read_layer_facts(
    store: &LocalStore,
    bucket: &Node,
    layer: &Digest,
) -> Result<LayerFacts> {
    let [.., hex, metadata, json] = paths::layer_json(layer);
    let node = bucket
        .get(&[hex, metadata, json])
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
    use ::tests::ok;

    const FQRN: &str = "test.example.org";

    /// Writes an OCI layout with the given layer tars (gzip) tagged `tag`; returns
    /// (layer digests, diffIDs, config digest).
    fn write_layout(dir: &Path, tag: &str, tars: &[Vec<u8>]) -> (Vec<String>, Vec<String>, String) {
        write_layout_with(dir, tag, tars, true)
    }

    /// The image config used by the test layouts.
    fn test_config(diff_ids: &[String], arch: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}}))
        .unwrap_or_default()
    }

    /// Writes blobs into a layout; returns a function-like closure result: digest.
    fn put_blob(dir: &Path, bytes: &[u8]) -> String {
        let blobs = dir.join("blobs/sha256");
        ok(fs::create_dir_all(&blobs));
        let d = sha256_digest(bytes);
        ok(fs::write(blobs.join(&d[7..]), bytes));
        d
    }

    /// An image manifest (OCI) for `tars` (gzip or plain) and its config; returns
    /// (manifest bytes, layer digests, diffIDs, config digest).
    fn put_image(
        dir: &Path,
        tars: &[Vec<u8>],
        gz: bool,
        arch: &str,
    ) -> (Vec<u8>, Vec<String>, Vec<String>, String) {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_json = Vec::new();
        for t in tars {
            let blob = if gz { gzip(t) } else { t.clone() };
            let d = put_blob(dir, &blob);
            layer_json.push(serde_json::json!({
                "mediaType": if gz { "application/vnd.oci.image.layer.v1.tar+gzip" }
                             else { "application/vnd.oci.image.layer.v1.tar" },
                "digest": d, "size": blob.len()}));
            layers.push(d);
            diff_ids.push(sha256_digest(t));
        }
        let config = test_config(&diff_ids, arch);
        let config_digest = put_blob(dir, &config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": layer_json}))
        .unwrap_or_default();
        (manifest, layers, diff_ids, config_digest)
    }

    fn write_layout_with(
        dir: &Path,
        tag: &str,
        tars: &[Vec<u8>],
        gz: bool,
    ) -> (Vec<String>, Vec<String>, String) {
        let (manifest, layers, diff_ids, config_digest) = put_image(dir, tars, gz, "amd64");
        let manifest_digest = put_blob(dir, &manifest);
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

    /// Writes an OCI layout whose tag names an index of an amd64 and an arm64/v8 image.
    /// Returns the config digests (amd64, arm64).
    fn write_multi_platform_layout(dir: &Path, tag: &str) -> (String, String) {
        let tars = test_tars();
        let (m_amd, _, _, c_amd) = put_image(dir, &tars, true, "amd64");
        let arm_only = TarBuilder::new().file("arm", 0o644, b"arm64").finish();
        let (m_arm, _, _, c_arm) = put_image(dir, &[tars[0].clone(), arm_only], true, "arm64");
        let (d_amd, d_arm) = (put_blob(dir, &m_amd), put_blob(dir, &m_arm));
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d_arm,
                 "size": m_arm.len(), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d_amd,
                 "size": m_amd.len(), "platform": {"os": "linux", "architecture": "amd64"}}]}))
        .unwrap_or_default();
        let d_index = put_blob(dir, &index);
        let top = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": d_index, "size": index.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag}}]});
        ok(fs::write(dir.join("index.json"), top.to_string()));
        ok(fs::write(
            dir.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        ));
        (c_amd, c_arm)
    }

    /// Writes `file` as `docker save` (before Docker 25) would: plain layer tars under
    /// `<n>/layer.tar`, the second copy of a repeated layer as a symlink.
    fn write_docker_archive(file: &Path, tars: &[Vec<u8>], repo_tag: &str) {
        let diff_ids: Vec<String> = tars.iter().map(|t| sha256_digest(t)).collect();
        let config = test_config(&diff_ids, "amd64");
        let config_name = format!("{}.json", &sha256_digest(&config)[7..]);
        let mut b = tar::Builder::new(Vec::new());
        let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(EntryType::Regular);
            ok(b.append_data(&mut h, name, data));
        };
        let mut layers = Vec::new();
        for (i, t) in tars.iter().enumerate() {
            let name = format!("{i:064}/layer.tar");
            add(&mut b, &name, t);
            layers.push(name);
        }
        add(&mut b, &config_name, &config);
        let manifest = serde_json::json!([{
            "Config": config_name, "RepoTags": [repo_tag], "Layers": layers}]);
        add(&mut b, "manifest.json", manifest.to_string().as_bytes());
        ok(fs::write(file, ok(b.into_inner())));
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

        /// The content of the (unchunked, at most 1 MiB) file at `path`.
        fn content(&self, path: &str) -> Vec<u8> {
            let hash = self
                .entry(path)
                .hash
                .unwrap_or_else(|| panic!("{path} has no content hash"));
            ok(read_object(&self.repo.store, &hash, Suffix::None, 1 << 20))
        }
    }

    /// The manifest digest `index.json` of the OCI layout `layout` names first.
    fn layout_manifest_digest(layout: &Path) -> String {
        let index: serde_json::Value = ok(serde_json::from_slice(&ok(fs::read(
            layout.join("index.json"),
        ))));
        index["manifests"][0]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Ingests tag `tag` of the OCI layout `layout` (default name, default options).
    async fn ingest_layout(dir: &Path, layout: &Path, tag: &str) -> Result<IngestSummary> {
        let srcs = sources(
            &[format!("oci:{}:{tag}", layout.display())],
            None,
            &RegistryOptions::default(),
        )?;
        ingest(dir, srcs, &IngestOptions::default()).await
    }

    /// Every row below `path` (through nested catalogs), rowids cleared, by relative path.
    fn rows(view: &RepoView, path: &str) -> Vec<(String, Entry)> {
        let mut out = Vec::new();
        let mut stack = vec![path.to_string()];
        while let Some(dir) = stack.pop() {
            let (cat, _) = view.find(&dir).unwrap_or_else(|| panic!("{dir} missing"));
            for mut e in ok(cat.list(&dir)) {
                let p = format!("{dir}/{}", e.name);
                e.rowid = 0;
                if e.kind == EntryKind::Directory {
                    stack.push(p.clone());
                }
                out.push((p[path.len()..].to_string(), e));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
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
            &RegistryOptions::default(),
        ));
        let s = ok(ingest(&dir, srcs, &IngestOptions::default()).await);
        assert_eq!((s.revision, s.layers_converted, s.layers_reused), (1, 2, 0));
        let m1 = verify(&dir);
        assert_eq!(m1.revision, 1);
        let history = m1.history.unwrap_or_else(|| panic!("no history"));
        assert!(
            dir.join("srv")
                .join(history.object_path(Suffix::History))
                .exists()
        );

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
        // the layer lists exactly the layer: its catalog marker is hidden (CVMFS §6.6)
        let marker = view.entry(&format!("{lfs0}/.cvmfscatalog"));
        assert!(marker.is_hidden() && marker.kind == EntryKind::Regular && marker.size == 0);
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
        let facts: LayerFacts = ok(serde_json::from_slice(
            &view.content(&format!("/.layers/{}/{l0}/.metadata/layer.json", &l0[..2])),
        ));
        assert_eq!(facts.diff_id, diff_ids[0]);
        assert_eq!(facts.chain_ids, vec![diff_ids[0].clone()]);
        // chain ids
        let typed: Vec<Digest> = diff_ids.iter().map(|d| ok(d.parse())).collect();
        let chains: Vec<String> = chain_ids(&typed).iter().map(Digest::to_string).collect();
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
        assert!(view.entry(&format!("{flat}/.cvmfscatalog")).is_hidden());
        assert!(view.find(&format!("{flat}/etc/motd")).is_none());
        assert!(view.find(&format!("{flat}/etc/passwd")).is_some());
        assert!(view.find(&format!("{flat}/var/cache/old")).is_none());
        assert_eq!(view.entry(&format!("{flat}/var/cache/new")).size, 3);
        assert_eq!(view.entry(&format!("{flat}/app/data")).mode, 0o100600);
        assert_eq!(view.entry(&format!("{flat}/bin/sh")).hash, bb.hash);
        // metadata and public symlink
        let meta = "/.metadata/localhost/demo/app:v1";
        assert_eq!(
            sha256_digest(&view.content(&format!("{meta}/manifest.json"))),
            layout_manifest_digest(&layout)
        );
        assert!(view.find(&format!("{meta}/config.json")).is_some());
        assert!(view.find(&format!("{meta}/index.json")).is_none());
        let link = view.entry("/localhost/demo/app:v1");
        assert_eq!(link.symlink, format!("../../.flat/{}/{c}", &c[..2]));
        drop(view);

        // A second ingest of the same image re-uses everything but catalogs.
        let before = objects(&dir.join("srv"));
        let srcs = ok(sources(
            &[oci_ref],
            Some("localhost/demo/app:v1"),
            &RegistryOptions::default(),
        ));
        let s = ok(ingest(&dir, srcs, &IngestOptions::default()).await);
        assert_eq!((s.revision, s.layers_converted, s.layers_reused), (2, 0, 2));
        let after = objects(&dir.join("srv"));
        let new: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
        assert!(!new.is_empty());
        assert!(
            new.iter()
                .all(|p| p.to_string_lossy().ends_with('C') || p.to_string_lossy().ends_with('H')),
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
        let err = ingest(
            &dir,
            ok(sources(&refs, None, &RegistryOptions::default())),
            &IngestOptions::default(),
        )
        .await
        .err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("escapes") && msg.contains("localhost/bad:1"),
            "{msg}"
        );
        assert_eq!(verify(&dir).revision, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn docker_archive_and_oci_layout_give_identical_trees() {
        let work = ok(tempfile::tempdir());
        let tars = test_tars();
        let layout = work.path().join("layout");
        let (layers, _, config) = write_layout_with(&layout, "v1", &tars, false);
        let archive = work.path().join("app.tar");
        write_docker_archive(&archive, &tars, "localhost/demo/app:v1");
        let mut trees = Vec::new();
        for r in [
            format!("oci:{}:v1", layout.display()),
            format!("docker-archive:{}", archive.display()),
        ] {
            let dir = work.path().join(format!("repo{}", trees.len()));
            ok(init(&dir, FQRN, 60));
            let name = r.starts_with("oci:").then_some("localhost/demo/app:v1");
            let srcs = ok(sources(&[r], name, &RegistryOptions::default()));
            let s = ok(ingest(&dir, srcs, &IngestOptions::default()).await);
            assert_eq!(s.images, vec!["localhost/demo/app:v1".to_string()]);
            verify(&dir);
            let view = RepoView::open(&dir);
            let c = &config[7..];
            let link = view.entry("/localhost/demo/app:v1");
            assert_eq!(link.symlink, format!("../../.flat/{}/{c}", &c[..2]));
            let mut t = rows(&view, &format!("/.flat/{}/{c}", &c[..2]));
            for l in &layers {
                let h = &l[7..];
                t.extend(rows(&view, &format!("/.layers/{}/{h}/layerfs", &h[..2])));
            }
            assert!(t.len() > 10);
            trees.push(t);
        }
        assert_eq!(trees[0], trees[1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn multi_platform_index_publishes_every_platform() {
        let work = ok(tempfile::tempdir());
        let layout = work.path().join("multi");
        let (c_amd, c_arm) = write_multi_platform_layout(&layout, "1");
        let flat = |c: &str| format!(".flat/{}/{}", &c[7..9], &c[7..]);
        let r = format!("oci:{}:1", layout.display());
        let run = |platforms: Vec<&str>, default: &str, dir: PathBuf| {
            let r = r.clone();
            let options = IngestOptions {
                platforms: PlatformFilter {
                    wanted: platforms.iter().map(|p| ok(Platform::parse(p))).collect(),
                },
                default_platform: ok(Platform::parse(default)),
                limits: Limits::default(),
            };
            async move {
                ok(init(&dir, FQRN, 60));
                let srcs = ok(sources(&[r], None, &RegistryOptions::default()));
                ok(ingest(&dir, srcs, &options).await);
                verify(&dir);
                RepoView::open(&dir)
            }
        };
        // all platforms, public path at linux/amd64
        let view = run(vec![], "linux/amd64", work.path().join("all")).await;
        let meta = "/.metadata/localhost/multi:1";
        assert!(view.find(&format!("{meta}/index.json")).is_some());
        assert_eq!(
            view.entry("/localhost/multi:1").symlink,
            format!("../{}", flat(&c_amd))
        );
        for (p, c) in [("linux-amd64", &c_amd), ("linux-arm64-v8", &c_arm)] {
            let dir = format!("{meta}/platforms/{p}");
            assert!(view.find(&format!("{dir}/manifest.json")).is_some(), "{p}");
            assert_eq!(
                &sha256_digest(&view.content(&format!("{dir}/config.json"))),
                c
            );
            assert_eq!(
                view.entry(&format!("{dir}/rootfs")).symlink,
                format!("../../../../../{}", flat(c))
            );
            assert!(view.find(&format!("/{}/bin/busybox", flat(c))).is_some());
            assert!(
                view.find(&format!("/{}/.singularity.d/runscript", flat(c)))
                    .is_some()
            );
        }
        assert!(view.find(&format!("/{}/arm", flat(&c_arm))).is_some());
        assert!(view.find(&format!("/{}/arm", flat(&c_amd))).is_none());
        assert_eq!(
            sha256_digest(&view.content(&format!("{meta}/config.json"))),
            c_amd
        );
        // --default-platform picks the public one
        let view = run(vec![], "linux/arm64", work.path().join("arm-default")).await;
        assert_eq!(
            view.entry("/localhost/multi:1").symlink,
            format!("../{}", flat(&c_arm))
        );
        // --platform restricts
        let view = run(
            vec!["linux/arm64/v8"],
            "linux/amd64",
            work.path().join("arm-only"),
        )
        .await;
        assert!(view.find(&format!("/{}", flat(&c_amd))).is_none());
        assert!(
            view.find(&format!("{meta}/platforms/linux-amd64"))
                .is_none()
        );
        assert_eq!(
            view.entry("/localhost/multi:1").symlink,
            format!("../{}", flat(&c_arm))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_layers_fail_cleanly_and_publish_nothing() {
        let work = ok(tempfile::tempdir());
        let dir = work.path().join("repo");
        ok(init(&dir, FQRN, 60));
        let good = work.path().join("good");
        write_layout(&good, "1", &test_tars());
        ok(ingest_layout(&dir, &good, "1").await);
        let before = verify(&dir);
        let escape = TarBuilder::new()
            .link(EntryType::Symlink, "lib", "/")
            .file("lib/etc/shadow", 0o644, b"x")
            .finish();
        let big = TarBuilder::new()
            .file("zeros", 0o644, &vec![0u8; 3 << 20])
            .finish();
        let normal = TarBuilder::new().file("f", 0o644, &[9u8; 200_000]).finish();
        type Damage = fn(&Path);
        let cases: Vec<(&str, Vec<u8>, Option<Damage>, &str)> = vec![
            ("escape", escape, None, "symlink"),
            ("bomb", big, None, "--max-layer-size"),
            (
                "flipped",
                normal.clone(),
                Some(|p: &Path| {
                    let mut b = ok(fs::read(p));
                    let n = b.len();
                    b[n - 12] ^= 0xff;
                    ok(fs::write(p, b));
                }),
                "layer sha256:",
            ),
            (
                "truncated",
                normal,
                Some(|p: &Path| {
                    let b = ok(fs::read(p));
                    ok(fs::write(p, &b[..b.len() / 2]));
                }),
                "layer sha256:",
            ),
        ];
        for (name, tar, damage, expect) in cases {
            let layout = work.path().join(name);
            let (layers, _, _) = write_layout(&layout, "1", &[tar]);
            if let Some(d) = damage {
                d(&layout.join("blobs/sha256").join(&layers[0][7..]));
            }
            let options = IngestOptions {
                limits: Limits {
                    max_layer_size: 1 << 20,
                    ..Limits::default()
                },
                ..IngestOptions::default()
            };
            let srcs = ok(sources(
                &[format!("oci:{}:1", layout.display())],
                None,
                &RegistryOptions::default(),
            ));
            let msg = ingest(&dir, srcs, &options)
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                msg.contains(&format!("localhost/{name}:1")),
                "{name}: {msg}"
            );
            assert!(msg.contains(&layers[0]), "{name}: {msg}");
            assert!(msg.contains(expect), "{name}: {msg}");
            let after = verify(&dir);
            assert_eq!(after.revision, before.revision, "{name}");
            assert_eq!(after.catalog_hash, before.catalog_hash, "{name}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_files_are_chunked_and_survive_reuse() {
        let work = ok(tempfile::tempdir());
        let dir = work.path().join("repo");
        ok(init(&dir, FQRN, 60));
        let big = ::tests::random::pseudo_random(20 << 20, 7);
        let base = TarBuilder::new().file("big.bin", 0o644, &big).finish();
        let a = work.path().join("a");
        write_layout(&a, "1", std::slice::from_ref(&base));
        ok(ingest_layout(&dir, &a, "1").await);
        // a second image on the same base layer: its flat tree is built from the published
        // layer catalog, chunk lists included
        let b = work.path().join("b");
        let top = TarBuilder::new().file("other", 0o644, b"o").finish();
        let (_, _, cfg_b) = write_layout(&b, "1", &[base, top]);
        let s = ok(ingest_layout(&dir, &b, "1").await);
        assert_eq!((s.layers_converted, s.layers_reused), (1, 1));
        verify(&dir);
        let view = RepoView::open(&dir);
        let path = format!("/.flat/{}/{}/big.bin", &cfg_b[7..9], &cfg_b[7..]);
        let (cat, e) = view.find(&path).unwrap_or_else(|| panic!("missing"));
        assert!(e.is_chunked() && e.hash.is_none());
        let chunks = ok(cat.chunks(&path));
        assert!(chunks.len() >= 2);
        let mut joined = Vec::new();
        for c in chunks {
            joined.extend(ok(read_object(
                &view.repo.store,
                &c.hash,
                Suffix::Partial,
                32 << 20,
            )));
        }
        assert!(joined == big, "chunks do not reassemble the file");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn implicit_directories_keep_the_lower_layers_metadata() {
        let work = ok(tempfile::tempdir());
        let dir = work.path().join("repo");
        ok(init(&dir, FQRN, 60));
        let base = TarBuilder::new()
            .dir("tmp", 0o1777)
            .dir("home/", 0o755)
            .dir("home/u", 0o700)
            .finish();
        // upper layers with no entries for tmp/ and home/u/ (as `umoci repack` writes them)
        let top = TarBuilder::new()
            .file("tmp/x", 0o644, b"x")
            .file("home/u/f", 0o600, b"f")
            .file("new/dir/g", 0o644, b"g")
            .finish();
        let a = work.path().join("a");
        let (layers_a, _, cfg_a) = write_layout(&a, "1", &[base.clone(), top]);
        ok(ingest_layout(&dir, &a, "1").await);
        // a second image on the published base layer: the lower tree comes from its catalog
        let top2 = TarBuilder::new().file("tmp/y", 0o644, b"y").finish();
        let b = work.path().join("b");
        let (layers_b, _, cfg_b) = write_layout(&b, "1", &[base, top2]);
        ok(ingest_layout(&dir, &b, "1").await);
        verify(&dir);
        let view = RepoView::open(&dir);
        let layerfs = |d: &str| format!("/.layers/{}/{}/layerfs", &d[7..9], &d[7..]);
        let flat = |c: &str| format!("/.flat/{}/{}", &c[7..9], &c[7..]);
        let mode = |p: String| view.entry(&p).mode;
        for root in [layerfs(&layers_a[1]), flat(&cfg_a)] {
            assert_eq!(mode(format!("{root}/tmp")), 0o041777, "{root}/tmp");
            assert_eq!(mode(format!("{root}/home/u")), 0o040700, "{root}/home/u");
            // absent below: the placeholder
            assert_eq!(mode(format!("{root}/new/dir")), 0o040755, "{root}/new/dir");
        }
        for root in [layerfs(&layers_b[1]), flat(&cfg_b)] {
            assert_eq!(mode(format!("{root}/tmp")), 0o041777, "{root}/tmp");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_ls_and_resign() {
        use crate::verify::{DirFetcher, verify as verify_repo};
        let work = ok(tempfile::tempdir());
        let dir = work.path().join("repo");
        ok(init(&dir, FQRN, 60));
        let layout = work.path().join("layout");
        let (layers, _, config) = write_layout(&layout, "v1", &test_tars());
        let srcs = ok(sources(
            &[format!("oci:{}:v1", layout.display())],
            Some("localhost/demo/app:v1"),
            &RegistryOptions::default(),
        ));
        ok(ingest(&dir, srcs, &IngestOptions::default()).await);
        let repo = ok(Repo::open(&dir));
        let keys = [ok(repo.master_public_key())];
        let fetch = DirFetcher {
            srv: dir.join("srv"),
        };
        let scratch = ok(tempfile::tempdir());
        let run = || ok(verify_repo(&fetch, FQRN, &keys, unix_now(), scratch.path()));
        let r = run();
        assert!(r.faults.is_empty(), "{:?}", r.faults);
        assert_eq!(r.revision, 1);
        assert!(r.catalogs >= 6 && r.objects >= 10, "{r:?}");

        // ls
        let images = ok(crate::listing::list_images(&repo));
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].name, "localhost/demo/app:v1");
        assert_eq!(images[0].platforms.len(), 1);
        let p = &images[0].platforms[0];
        assert_eq!(
            (p.platform.as_str(), p.config.as_str()),
            ("linux/amd64", config.as_str())
        );
        assert_eq!(
            p.layers.iter().map(|l| l.0.clone()).collect::<Vec<_>>(),
            layers
        );
        assert!(images[0].to_string().contains("2 layer(s)"));

        // corrupt one content object and delete another: both are named
        let view = RepoView::open(&dir);
        let l0 = &layers[0][7..];
        let passwd = view.entry(&format!("/.layers/{}/{l0}/layerfs/etc/passwd", &l0[..2]));
        let motd = view.entry(&format!("/.layers/{}/{l0}/layerfs/etc/motd", &l0[..2]));
        let bad = passwd
            .hash
            .unwrap_or_else(|| panic!())
            .object_path(Suffix::None);
        let gone = motd
            .hash
            .unwrap_or_else(|| panic!())
            .object_path(Suffix::None);
        let mut bytes = ok(fs::read(dir.join("srv").join(&bad)));
        bytes[2] ^= 1;
        ok(fs::write(dir.join("srv").join(&bad), bytes));
        ok(fs::remove_file(dir.join("srv").join(&gone)));
        let r = run();
        assert_eq!(r.faults.len(), 2, "{:?}", r.faults);
        assert!(
            r.faults
                .iter()
                .any(|f| f.contains(&bad) && f.contains("etc/passwd")),
            "{:?}",
            r.faults
        );
        assert!(
            r.faults
                .iter()
                .any(|f| f.contains(&gone) && f.contains("missing")),
            "{:?}",
            r.faults
        );

        // resign renews the whitelist; signatures still verify
        let before = ok(catalog::Whitelist::parse(&ok(fs::read(
            dir.join("srv/.cvmfswhitelist"),
        ))));
        let expires = ok(crate::publish::resign(&dir, 90));
        assert!(expires > before.whitelist.expires + 50 * 24 * 3600);
        verify(&dir);
        // an expired whitelist is a signature fault
        ok(crate::publish::resign(&dir, 0));
        let r = ok(verify_repo(
            &fetch,
            FQRN,
            &keys,
            unix_now() + 10,
            scratch.path(),
        ));
        assert!(
            r.faults.iter().any(|f| f.starts_with("signatures")),
            "{:?}",
            r.faults
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn docker25_archive_uses_the_oci_manifest_inside() {
        let work = ok(tempfile::tempdir());
        let layout = work.path().join("layout");
        let (layers, _, config) = write_layout_with(&layout, "1", &test_tars(), false);
        // Docker 25+ `docker save`: the OCI layout plus a manifest.json pointing into blobs/
        let manifest = serde_json::json!([{
            "Config": format!("blobs/sha256/{}", &config[7..]),
            "RepoTags": ["demo/app:v25"],
            "Layers": layers.iter().map(|l| format!("blobs/sha256/{}", &l[7..])).collect::<Vec<_>>()}]);
        ok(fs::write(
            layout.join("manifest.json"),
            manifest.to_string(),
        ));
        let archive = work.path().join("new.tar");
        let mut b = tar::Builder::new(Vec::new());
        ok(b.append_dir_all(".", &layout));
        ok(fs::write(&archive, ok(b.into_inner())));
        let dir = work.path().join("repo");
        ok(init(&dir, FQRN, 60));
        let srcs = ok(sources(
            &[format!("docker-archive:{}", archive.display())],
            None,
            &RegistryOptions::default(),
        ));
        let s = ok(ingest(&dir, srcs, &IngestOptions::default()).await);
        assert_eq!(s.images, vec!["docker.io/demo/app:v25".to_string()]);
        verify(&dir);
        let view = RepoView::open(&dir);
        assert_eq!(
            sha256_digest(&view.content("/.metadata/docker.io/demo/app:v25/manifest.json")),
            layout_manifest_digest(&layout),
            "the real manifest, not a synthesised one"
        );
        let c = &config[7..];
        assert!(
            view.find(&format!("/.flat/{}/{c}/bin/busybox", &c[..2]))
                .is_some()
        );
    }
}
