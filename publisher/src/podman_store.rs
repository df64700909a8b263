//! The podman additional image store (docs/namespace.md §10a): `podmanStore/` at the
//! repository root, laid out as containers-storage's overlay driver lays out an image store,
//! so that podman (or buildah, CRI-O) with `additionalimagestores = ["<mount>/podmanStore"]`
//! lists and runs every published image without pulling it.
//!
//! ```text
//! podmanStore/                                   nested catalog (.cvmfscatalog)
//!   overlay/<layer id>/diff                      → ../../../.layers/<hh>/<hex>/layerfs
//!   overlay/<layer id>/link                      the layer's short name
//!   overlay/<layer id>/lower                     l/<parent's name>:l/<grandparent's>… (not for a bottom layer)
//!   overlay/l/<short name>                       → ../<layer id>/diff
//!   overlay-layers/layers.json, layers.lock      the layer records; an empty lock file
//!   overlay-images/images.json, images.lock      the image records; an empty lock file
//!   overlay-images/<config hex>/manifest         big data: the manifest,
//!   overlay-images/<config hex>/=<base64 key>    …by digest (`manifest-sha256:…`), the config (`sha256:…`)
//! ```
//!
//! The store is derived from the namespace alone: [`refresh`] rebuilds it from every
//! image's stored `manifest.json` and `config.json` (the default platform's: what the
//! public symlink points at) whenever a revision is about to be published, so an image
//! that leaves (`remove`, `sync`) leaves the store in the same revision, and a layer stays
//! while any image uses it. Big-data files are catalog rows sharing the `.metadata` files'
//! content objects; layers are the published `layerfs` trees. Names follow containers/image
//! (layer IDs, image ID = config hex, big-data keys), so a store is what `podman pull` would
//! have made, minus the tar-split data (`podman save`/`push` of a store image cannot work).

use std::collections::BTreeMap;

use catalog::{ContentHash, Suffix};
use namespace::{Digest, Sha256Hex, paths};
use serde::{Deserialize, Serialize};

use crate::digest::sha256_digest;
use crate::error::{Error, Result};
use crate::ingest::read_layer_facts;
use crate::listing::RawManifest;
use crate::objects::read_object;
use crate::publish::{Namespace, load_catalog_node, unix_now};
use crate::removal::{MAX_METADATA_SIZE, image_dirs};
use crate::repo::Repo;
use crate::tree::{CATALOG_MARKER, CatalogMark, Node, file_entry, marker_entry, symlink_entry};

/// One record of `overlay-layers/layers.json` (containers-storage's `Layer`, the fields a
/// pulled layer has).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    /// The layer ID ([`paths::podman_layer_ids`]).
    pub id: String,
    /// The parent layer's ID; absent for a bottom layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The compressed blob's digest (names `.layers/<hh>/<hex>`).
    #[serde(rename = "compressed-diff-digest")]
    pub compressed_digest: String,
    /// The compressed blob's size, from the manifest.
    #[serde(rename = "compressed-size")]
    pub compressed_size: u64,
    /// The diffID.
    #[serde(rename = "diff-digest")]
    pub diff_digest: String,
    /// The uncompressed tar's size, when `layer.json` knows it (podman counts it in image
    /// sizes; without it the layer counts 0, never a walk of the tree).
    #[serde(rename = "diff-size", default, skip_serializing_if = "Option::is_none")]
    pub diff_size: Option<u64>,
}

/// One record of `overlay-images/images.json` (containers-storage's `Image`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The image ID: the config digest's hex.
    pub id: String,
    /// The digest of the (first) manifest.
    pub digest: String,
    /// The public names (`<registry>/<repository>:<tag>` or `…@sha256:<hex>`).
    pub names: Vec<String>,
    /// The top layer's ID.
    pub layer: String,
    /// Caller metadata; containers/image writes `{}`.
    pub metadata: String,
    /// The big-data keys, each a file of the image directory
    /// ([`paths::podman_big_data_name`]).
    #[serde(rename = "big-data-names")]
    pub big_data_names: Vec<String>,
    /// Their sizes.
    #[serde(rename = "big-data-sizes")]
    pub big_data_sizes: BTreeMap<String, u64>,
    /// Their digests.
    #[serde(rename = "big-data-digests")]
    pub big_data_digests: BTreeMap<String, String>,
    /// The config's `created`, when it is an RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// What [`refresh`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreReport {
    /// Images in the store.
    pub images: usize,
    /// Layers in the store.
    pub layers: usize,
    /// Published images left out, each with the reason (a layer not published, a manifest
    /// that does not match its config).
    pub skipped: Vec<(String, String)>,
    /// Whether the store differs from the one of the current revision.
    pub changed: bool,
}

/// A big-data item of an image: its key, the content object it shares, size and digest.
#[derive(Clone, Debug)]
struct BigData {
    key: String,
    hash: ContentHash,
    size: u64,
    digest: String,
}

/// The store as records, before it becomes catalog rows.
#[derive(Debug, Default)]
struct Store {
    /// By layer ID.
    layers: BTreeMap<String, (LayerRecord, Digest)>,
    /// By image ID.
    images: BTreeMap<String, (ImageRecord, Vec<BigData>)>,
    /// Layer ID → its short names of the lower layers, nearest first.
    lowers: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    created: Option<String>,
    rootfs: RawRootfs,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Rebuilds `podmanStore/` in `ns` from the images `ns` publishes (module docs); leaves it
/// untouched when nothing changed (`changed` = false). Blocking: reads every image's
/// manifest and config. Errors when a stored document cannot be read; an image that cannot
/// be described (e.g. a layer that is not published) is skipped and reported.
pub fn refresh(repo: &Repo, ns: &mut Namespace) -> Result<StoreReport> {
    let now = unix_now() as i64;
    let old = previous_layers(repo, ns)?;
    let mut store = Store::default();
    let mut report = StoreReport::default();
    for (public, dir) in image_dirs(ns) {
        if let Err(reason) = add_image(repo, ns, &public, dir, &old, &mut store) {
            tracing::warn!(image = %public, %reason, "left out of the podman store");
            report.skipped.push((public, reason));
        }
    }
    report.images = store.images.len();
    report.layers = store.layers.len();

    let layers_json = to_json(store.layers.values().map(|(r, _)| r).collect::<Vec<_>>())?;
    let images_json = to_json(store.images.values().map(|(r, _)| r).collect::<Vec<_>>())?;
    let layers_hash = repo.store.put_raw(&layers_json, Suffix::None)?;
    let images_hash = repo.store.put_raw(&images_json, Suffix::None)?;
    let unchanged = ns.root.get(&[paths::PODMAN_STORE]).is_some_and(|node| {
        let hash =
            |dir: [&str; 2], name: &str| node.get(&[dir[1], name]).and_then(|n| n.entry.hash);
        hash(paths::podman_layers_dir(), paths::PODMAN_LAYERS_JSON) == Some(layers_hash)
            && hash(paths::podman_images_dir(), paths::PODMAN_IMAGES_JSON) == Some(images_hash)
    });
    if unchanged {
        return Ok(report);
    }
    report.changed = true;

    let empty = repo.store.put_raw(b"", Suffix::None)?;
    let mut root = Node::dir(paths::PODMAN_STORE, 0o755, now);
    root.catalog = Some(Box::new(CatalogMark::new_catalog()));
    root.children
        .insert(CATALOG_MARKER.into(), Node::leaf(marker_entry(empty, now)));
    // Paths inside the store node: drop the leading `podmanStore`.
    let inner =
        |full: &[&str]| -> Vec<String> { full[1..].iter().map(|c| c.to_string()).collect() };
    let put = |root: &mut Node, dir: &[String], name: &str, bytes: &[u8]| -> Result<()> {
        let hash = repo.store.put_raw(bytes, Suffix::None)?;
        let e = file_entry(name, 0o644, 0, 0, now, bytes.len() as u64, hash);
        root.insert(&refs(dir), Node::leaf(e), now);
        Ok(())
    };
    let layers_dir = inner(&paths::podman_layers_dir());
    let images_dir = inner(&paths::podman_images_dir());
    put(
        &mut root,
        &layers_dir,
        paths::PODMAN_LAYERS_JSON,
        &layers_json,
    )?;
    put(&mut root, &layers_dir, paths::PODMAN_LAYERS_LOCK, b"")?;
    put(
        &mut root,
        &images_dir,
        paths::PODMAN_IMAGES_JSON,
        &images_json,
    )?;
    put(&mut root, &images_dir, paths::PODMAN_IMAGES_LOCK, b"")?;
    let links_dir = inner(&paths::podman_links_dir());
    root.ensure_dir(&refs(&links_dir), now);
    for (id, (_, compressed)) in &store.layers {
        let id: Sha256Hex = id.parse().map_err(Error::Digest)?;
        let dir = inner(&paths::podman_layer_dir(&id));
        let diff = paths::podman_diff_target(&id, compressed);
        root.insert(
            &refs(&dir),
            Node::leaf(symlink_entry(paths::PODMAN_DIFF, &diff, 0, 0, now)),
            now,
        );
        let link = paths::podman_link_name(&id);
        put(&mut root, &dir, paths::PODMAN_LINK, link.as_bytes())?;
        let lowers = store.lowers.get(id.as_str()).cloned().unwrap_or_default();
        if !lowers.is_empty() {
            let text: Vec<String> = lowers
                .iter()
                .map(|l| paths::podman_lower_entry(l))
                .collect();
            put(
                &mut root,
                &dir,
                paths::PODMAN_LOWER,
                text.join(":").as_bytes(),
            )?;
        }
        let target = paths::podman_link_target(&id);
        root.insert(
            &refs(&links_dir),
            Node::leaf(symlink_entry(&link, &target, 0, 0, now)),
            now,
        );
    }
    for (record, big_data) in store.images.values() {
        let config: Digest = format!("sha256:{}", record.id)
            .parse()
            .map_err(Error::Digest)?;
        let dir = inner(&paths::podman_image_dir(&config));
        for item in big_data {
            let name = paths::podman_big_data_name(&item.key);
            let e = file_entry(&name, 0o644, 0, 0, now, item.size, item.hash);
            root.insert(&refs(&dir), Node::leaf(e), now);
        }
    }
    ns.root.children.insert(paths::PODMAN_STORE.into(), root);
    Ok(report)
}

fn refs(path: &[String]) -> Vec<&str> {
    path.iter().map(String::as_str).collect()
}

fn to_json<T: Serialize>(value: T) -> Result<Vec<u8>> {
    serde_json::to_vec(&value).map_err(|e| Error::json("encoding the podman store", e))
}

/// The diff sizes of the current store's `layers.json`, by layer ID (empty without one).
fn previous_layers(repo: &Repo, ns: &mut Namespace) -> Result<BTreeMap<String, u64>> {
    let Some(node) = ns.root.get_mut(&[paths::PODMAN_STORE]) else {
        return Ok(BTreeMap::new());
    };
    load_catalog_node(repo, node)?;
    let [_, layers] = paths::podman_layers_dir();
    let Some(hash) = node
        .get(&[layers, paths::PODMAN_LAYERS_JSON])
        .and_then(|n| n.entry.hash)
    else {
        return Ok(BTreeMap::new());
    };
    // Only sizes come from here: a store this publisher cannot read back (damaged, or
    // beyond the limit) costs the sizes of layers no image of this run brought, not the
    // publish.
    let records: Vec<LayerRecord> = match read_object(
        &repo.store,
        &hash,
        Suffix::None,
        MAX_LAYERS_JSON_SIZE,
    )
    .map_err(|e| e.to_string())
    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(records) => records,
        Err(error) => {
            tracing::warn!(%error, "previous podmanStore layers.json unreadable; its layer sizes are dropped");
            Vec::new()
        }
    };
    Ok(records
        .into_iter()
        .filter_map(|r| r.diff_size.map(|s| (r.id, s)))
        .collect())
}

/// Largest previous `layers.json` read back (about 400 bytes a layer).
const MAX_LAYERS_JSON_SIZE: u64 = 1 << 30;

/// The content of file `name` in `dir`: (hash, size, bytes).
fn stored(
    repo: &Repo,
    dir: &Node,
    name: &str,
) -> std::result::Result<Option<(ContentHash, u64, Vec<u8>)>, String> {
    let Some(node) = dir.children.get(name) else {
        return Ok(None);
    };
    let hash = node
        .entry
        .hash
        .ok_or_else(|| format!("{name} has no content"))?;
    let bytes = read_object(&repo.store, &hash, Suffix::None, MAX_METADATA_SIZE)
        .map_err(|e| format!("reading {name}: {e}"))?;
    Ok(Some((hash, bytes.len() as u64, bytes)))
}

/// Adds the image at `.metadata/<public>` (`dir`) to `store`, or says why it cannot be.
fn add_image(
    repo: &Repo,
    ns: &Namespace,
    public: &str,
    dir: &Node,
    old_sizes: &BTreeMap<String, u64>,
    store: &mut Store,
) -> std::result::Result<(), String> {
    let (m_hash, m_size, manifest) =
        stored(repo, dir, paths::MANIFEST_JSON)?.ok_or("no manifest.json")?;
    let (c_hash, c_size, config) =
        stored(repo, dir, paths::CONFIG_JSON)?.ok_or("no config.json")?;
    let raw: RawManifest =
        serde_json::from_slice(&manifest).map_err(|e| format!("manifest.json: {e}"))?;
    let conf: RawConfig =
        serde_json::from_slice(&config).map_err(|e| format!("config.json: {e}"))?;
    let config_digest: Digest = raw.config.digest.parse().map_err(|e| format!("{e}"))?;
    let diff_ids = conf
        .rootfs
        .diff_ids
        .iter()
        .map(|d| d.parse::<Digest>().map_err(|e| format!("{e}")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if diff_ids.len() != raw.layers.len() || diff_ids.is_empty() {
        return Err(format!(
            "{} layer(s) in the manifest, {} diffID(s) in the config",
            raw.layers.len(),
            diff_ids.len()
        ));
    }
    let ids = paths::podman_layer_ids(&diff_ids);
    let mut records = Vec::new();
    for (i, (blob, diff)) in raw.layers.iter().zip(&diff_ids).enumerate() {
        let compressed: Digest = blob.digest.parse().map_err(|e| format!("{e}"))?;
        if !layer_published(ns, &compressed) {
            return Err(format!("layer {compressed} is not published"));
        }
        let id = ids[i].to_string();
        let diff_size =
            layer_diff_size(repo, ns, &compressed).or_else(|| old_sizes.get(&id).copied());
        records.push(LayerRecord {
            id,
            parent: i.checked_sub(1).map(|p| ids[p].to_string()),
            compressed_digest: compressed.to_string(),
            compressed_size: blob.size,
            diff_digest: diff.to_string(),
            diff_size,
        });
        let lowers: Vec<String> = ids[..i].iter().rev().map(paths::podman_link_name).collect();
        store.lowers.insert(ids[i].to_string(), lowers);
        let record = records.last().cloned();
        if let Some(record) = record {
            store
                .layers
                .entry(record.id.clone())
                .or_insert((record, compressed));
        }
    }

    let manifest_digest = sha256_digest(&manifest);
    let parsed_manifest: Digest = manifest_digest.parse().map_err(|e| format!("{e}"))?;
    let mut big_data = vec![
        BigData {
            key: config_digest.to_string(),
            hash: c_hash,
            size: c_size,
            digest: sha256_digest(&config),
        },
        BigData {
            key: paths::podman_manifest_key(&parsed_manifest),
            hash: m_hash,
            size: m_size,
            digest: manifest_digest.clone(),
        },
        BigData {
            key: paths::PODMAN_MANIFEST_KEY.to_string(),
            hash: m_hash,
            size: m_size,
            digest: manifest_digest.clone(),
        },
    ];
    if let Some((i_hash, i_size, index)) = stored(repo, dir, paths::INDEX_JSON)? {
        let index_digest = sha256_digest(&index);
        let parsed: Digest = index_digest.parse().map_err(|e| format!("{e}"))?;
        big_data.push(BigData {
            key: paths::podman_manifest_key(&parsed),
            hash: i_hash,
            size: i_size,
            digest: index_digest,
        });
    }
    let id = config_digest.hex().to_string();
    let top = ids.last().map(|t| t.to_string()).unwrap_or_default();
    match store.images.get_mut(&id) {
        Some((image, items)) => {
            // Another name of the same image (same config): one record, every manifest.
            image.names.push(public.to_string());
            for item in big_data {
                if !image.big_data_names.contains(&item.key) {
                    add_big_data(image, &item);
                    items.push(item);
                }
            }
        }
        None => {
            let mut image = ImageRecord {
                id: id.clone(),
                digest: manifest_digest,
                names: vec![public.to_string()],
                layer: top,
                metadata: "{}".into(),
                big_data_names: Vec::new(),
                big_data_sizes: BTreeMap::new(),
                big_data_digests: BTreeMap::new(),
                created: conf.created.filter(|c| is_rfc3339(c)),
            };
            for item in &big_data {
                add_big_data(&mut image, item);
            }
            store.images.insert(id, (image, big_data));
        }
    }
    Ok(())
}

fn add_big_data(image: &mut ImageRecord, item: &BigData) {
    image.big_data_names.push(item.key.clone());
    image.big_data_sizes.insert(item.key.clone(), item.size);
    image
        .big_data_digests
        .insert(item.key.clone(), item.digest.clone());
}

/// Whether `.layers/<hh>/<hex>/layerfs` exists. Its bucket is a nested catalog; one that
/// this publish did not load is trusted as it was published (an image's layers are
/// published with it and pruned only when no image uses them, namespace.md §11).
fn layer_published(ns: &Namespace, layer: &Digest) -> bool {
    match ns.root.get(&paths::layer_bucket(layer)) {
        None => false,
        Some(bucket) if bucket.catalog.as_ref().is_some_and(|m| !m.loaded) => true,
        Some(_) => ns.root.get(&paths::layerfs(layer)).is_some(),
    }
}

/// The layer's uncompressed size from its `layer.json`, when its bucket is loaded in `ns`
/// (it is for every layer of an image ingested in this run); `None` otherwise.
fn layer_diff_size(repo: &Repo, ns: &Namespace, layer: &Digest) -> Option<u64> {
    let bucket = ns.root.get(&paths::layer_bucket(layer))?;
    if !bucket.catalog.as_ref().is_some_and(|m| m.loaded) {
        return None;
    }
    read_layer_facts(&repo.store, bucket, layer)
        .ok()
        .and_then(|f| f.diff_size)
}

/// Whether `text` is an RFC 3339 time as Go's `time.Time` reads it from JSON
/// (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`): a config with another `created` would make
/// podman refuse the whole `images.json`, so such a time is left out.
fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(digits(0..4)
        && at(4, b'-')
        && digits(5..7)
        && at(7, b'-')
        && digits(8..10)
        && (at(10, b'T') || at(10, b't'))
        && digits(11..13)
        && at(13, b':')
        && digits(14..16)
        && at(16, b':')
        && digits(17..19))
    {
        return false;
    }
    let mut i = 19;
    if at(i, b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    let zone = &b[i..];
    zone == b"Z"
        || zone == b"z"
        || (zone.len() == 6
            && (zone[0] == b'+' || zone[0] == b'-')
            && zone[1..3].iter().all(u8::is_ascii_digit)
            && zone[3] == b':'
            && zone[4..6].iter().all(u8::is_ascii_digit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_as_go_reads_them() {
        for ok in [
            "2026-12-06T11:56:46.8311006Z",
            "2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00+02:00",
            "1970-01-01T00:00:00.1-05:30",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "",
            "2024-01-01",
            "2024-01-01 00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00+0200",
            "yesterday",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }
}
