//! Removing images from the namespace (docs/CONTRACTS.md §3), for `sync`.
//!
//! * [`published_images`] reads what the current revision publishes: every directory of
//!   `/.metadata` that holds a `manifest.json` is one image; its path below `/.metadata` is
//!   the public path.
//! * [`remove_image`] drops one image's public symlink and `.metadata/<name>` directory.
//! * [`references`] computes what the remaining images use, from their stored manifests
//!   and configs only: `.flat/<hh>/<config hex>` of every platform, `.layers/<hh>/<layer hex>`
//!   of every layer, `.chainids/<hh>/<chainid hex>` of every layer stack (OCI ChainIDs of
//!   the config's `rootfs.diff_ids`).
//! * [`prune`] removes every `.flat`, `.layers` and `.chainids` entry those references do
//!   not name (also leftovers of tags that moved), and drops ChainIDs no longer published
//!   from the remaining layers' `layer.json`.
//!
//! * [`remove`] is the `remove` command: named images out, pruned, the podman store
//!   refreshed, one new revision.
//!
//! None of this deletes objects: the objects stay in the store until `gc`.

use std::collections::{BTreeMap, HashSet};

use catalog::Suffix;
use namespace::{Digest, chain_ids, paths};
use serde::Deserialize;

use crate::digest::sha256_digest;
use crate::error::{Error, Result};
use crate::ingest::LayerFacts;
use crate::listing::RawManifest;
use crate::objects::read_object;
use crate::publish::{Namespace, load_catalog_node, unix_now};
use crate::reference::ImageName;
use crate::repo::Repo;
use crate::tree::{CATALOG_MARKER, Node, file_entry};

/// Largest `.metadata` JSON document read back, bytes.
pub const MAX_METADATA_SIZE: u64 = 16 << 20;

/// One image the current revision publishes.
#[derive(Clone, Debug)]
pub struct PublishedImage {
    /// The public path `<registry>/<repository>:<tag>` (or `@sha256:<hex>`).
    pub path: String,
    /// The path parsed back into a name (`None` if it does not parse, e.g. hand-made).
    pub name: Option<ImageName>,
    /// `sha256:` digest of what the reference named when it was ingested: `index.json` if
    /// stored, else `manifest.json`.
    pub top_digest: String,
    /// The stored `index.json`, if any.
    pub index: Option<Vec<u8>>,
    /// `platforms/<dir>` → target of its `rootfs` symlink.
    pub platforms: BTreeMap<String, String>,
    /// Target of the public symlink (`None` if it is missing).
    pub public_target: Option<String>,
}

fn read_file_node(repo: &Repo, node: Option<&Node>, what: &str) -> Result<Option<Vec<u8>>> {
    let Some(node) = node else {
        return Ok(None);
    };
    let hash = node.entry.hash.ok_or_else(|| Error::NotRepository {
        path: repo.dir.clone(),
        reason: format!("{what} has no content hash"),
    })?;
    Ok(Some(read_object(
        &repo.store,
        &hash,
        Suffix::None,
        MAX_METADATA_SIZE,
    )?))
}

/// Calls `f(path, dir)` for every image directory below `/.metadata` (a directory with a
/// `manifest.json`), not descending into image directories.
fn visit_images<'a>(node: &'a Node, path: &str, f: &mut dyn FnMut(&str, &'a Node)) {
    if node.children.contains_key(paths::MANIFEST_JSON) && !path.is_empty() {
        f(path, node);
        return;
    }
    for (name, child) in &node.children {
        if child.is_dir() {
            let p = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}/{name}")
            };
            visit_images(child, &p, f);
        }
    }
}

/// Every image directory of `ns` (`.metadata/<public>`) with its public path, in path order.
pub(crate) fn image_dirs(ns: &Namespace) -> Vec<(String, &Node)> {
    let mut dirs: Vec<(String, &Node)> = Vec::new();
    if let Some(meta) = ns.root.get(&[paths::METADATA]) {
        visit_images(meta, "", &mut |p, n| dirs.push((p.to_string(), n)));
    }
    dirs
}

/// Every image of `ns`, by public path. Blocking (reads `.metadata` objects). Errors when a
/// stored document cannot be read (missing or damaged object).
pub fn published_images(repo: &Repo, ns: &Namespace) -> Result<BTreeMap<String, PublishedImage>> {
    let mut dirs: Vec<(String, &Node)> = Vec::new();
    if let Some(meta) = ns.root.get(&[paths::METADATA]) {
        visit_images(meta, "", &mut |p, n| dirs.push((p.to_string(), n)));
    }
    let mut out = BTreeMap::new();
    for (path, dir) in dirs {
        let what = paths::absolute(&paths::metadata_dir(&path));
        let index = read_file_node(repo, dir.children.get(paths::INDEX_JSON), &what)?;
        let top = match &index {
            Some(i) => sha256_digest(i),
            None => {
                let m = read_file_node(repo, dir.children.get(paths::MANIFEST_JSON), &what)?;
                sha256_digest(&m.unwrap_or_default())
            }
        };
        let platforms = dir
            .children
            .get(paths::PLATFORMS)
            .map(|p| {
                p.children
                    .iter()
                    .map(|(name, d)| {
                        let target = d
                            .children
                            .get(paths::ROOTFS)
                            .map(|r| r.entry.symlink.clone())
                            .unwrap_or_default();
                        (name.clone(), target)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let comps = paths::public_components(&path);
        let public_target = ns
            .root
            .get(&comps)
            .filter(|n| !n.entry.symlink.is_empty())
            .map(|n| n.entry.symlink.clone());
        out.insert(
            path.clone(),
            PublishedImage {
                name: ImageName::parse(&path).ok(),
                path,
                top_digest: top,
                index,
                platforms,
                public_target,
            },
        );
    }
    Ok(out)
}

/// Removes the node at `path` and then every parent directory left empty, up to (not
/// including) `stop` components. Returns whether the node existed.
fn remove_and_trim(root: &mut Node, path: &[&str], stop: usize) -> bool {
    let removed = root.remove(path).is_some();
    let mut len = path.len().saturating_sub(1);
    while len > stop {
        let empty = root
            .get(&path[..len])
            .is_some_and(|n| n.is_dir() && n.children.is_empty() && n.catalog.is_none());
        if !empty {
            break;
        }
        root.remove(&path[..len]);
        len -= 1;
    }
    removed
}

/// Removes image `public` (`<registry>/<repository>:<tag>`) from `ns`: its public symlink
/// and `/.metadata/<public>/`, then parent directories left empty. Its `.flat`, `.layers`
/// and `.chainids` entries stay until [`prune`]. Returns whether anything was removed.
pub fn remove_image(ns: &mut Namespace, public: &str) -> bool {
    let comps: Vec<&str> = public.split('/').filter(|c| !c.is_empty()).collect();
    if comps.is_empty() || comps[0].starts_with('.') {
        return false;
    }
    let link = ns
        .root
        .get(&comps)
        .is_some_and(|n| !n.is_dir() && n.catalog.is_none());
    let mut removed = link && remove_and_trim(&mut ns.root, &comps, 0);
    let mut meta = vec![paths::METADATA];
    meta.extend(&comps);
    removed |= remove_and_trim(&mut ns.root, &meta, 1);
    removed
}

/// What the published images use, as hex digests (no `sha256:`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    /// Config digests: `.flat/<hh>/<hex>`.
    pub flats: HashSet<String>,
    /// Compressed layer digests: `.layers/<hh>/<hex>`.
    pub layers: HashSet<String>,
    /// ChainIDs: `.chainids/<hh>/<hex>`.
    pub chains: HashSet<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    rootfs: RawRootfs,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

fn digest_of(digest: &str, what: &str) -> Result<Digest> {
    digest.parse().map_err(|_| Error::Image {
        image: what.to_string(),
        reason: format!("unsupported digest {digest:?}"),
    })
}

fn hex_of(digest: &str, what: &str) -> Result<String> {
    Ok(digest_of(digest, what)?.hex().to_string())
}

/// Adds the references of one `manifest.json` + `config.json` pair in `dir`.
fn add_pair(repo: &Repo, dir: &Node, what: &str, refs: &mut References) -> Result<()> {
    if let Some(m) = read_file_node(repo, dir.children.get(paths::MANIFEST_JSON), what)? {
        let m: RawManifest = serde_json::from_slice(&m)
            .map_err(|e| Error::json(format!("parsing {what}/manifest.json"), e))?;
        refs.flats.insert(hex_of(&m.config.digest, what)?);
        for l in &m.layers {
            refs.layers.insert(hex_of(&l.digest, what)?);
        }
    }
    if let Some(c) = read_file_node(repo, dir.children.get(paths::CONFIG_JSON), what)? {
        let c: RawConfig = serde_json::from_slice(&c)
            .map_err(|e| Error::json(format!("parsing {what}/config.json"), e))?;
        let diff_ids = c
            .rootfs
            .diff_ids
            .iter()
            .map(|d| digest_of(d, what))
            .collect::<Result<Vec<Digest>>>()?;
        for chain in chain_ids(&diff_ids) {
            refs.chains.insert(chain.hex().to_string());
        }
    }
    Ok(())
}

/// The references of every image of `ns` (see the module docs). Blocking. Errors when any
/// stored document cannot be read or parsed — then nothing may be pruned.
pub fn references(repo: &Repo, ns: &Namespace) -> Result<References> {
    let mut dirs: Vec<(String, &Node)> = Vec::new();
    if let Some(meta) = ns.root.get(&[paths::METADATA]) {
        visit_images(meta, "", &mut |p, n| dirs.push((p.to_string(), n)));
    }
    let mut refs = References::default();
    for (path, dir) in dirs {
        let what = paths::absolute(&paths::metadata_dir(&path));
        add_pair(repo, dir, &what, &mut refs)?;
        if let Some(platforms) = dir.children.get(paths::PLATFORMS) {
            for (p, d) in &platforms.children {
                add_pair(repo, d, &format!("{what}/platforms/{p}"), &mut refs)?;
            }
        }
    }
    Ok(refs)
}

/// What [`prune`] removed, as `<hh>/<hex>` paths below each directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Removed `.flat` trees.
    pub flats: Vec<String>,
    /// Removed `.layers` entries.
    pub layers: Vec<String>,
    /// Removed `.chainids` links.
    pub chains: Vec<String>,
    /// Remaining layers whose `layer.json` lost ChainIDs.
    pub facts_rewritten: usize,
}

impl PruneReport {
    /// Whether anything was removed or rewritten.
    pub fn is_empty(&self) -> bool {
        self.flats.is_empty()
            && self.layers.is_empty()
            && self.chains.is_empty()
            && self.facts_rewritten == 0
    }
}

/// Removes unreferenced `<hh>/<hex>` children of the plain directory `/<top>`; empty
/// `<hh>` directories go too.
fn prune_plain(ns: &mut Namespace, top: &str, keep: &HashSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(dir) = ns.root.get_mut(&[top]) else {
        return out;
    };
    for (hh, bucket) in dir.children.iter_mut() {
        let gone: Vec<String> = bucket
            .children
            .keys()
            .filter(|hex| !keep.contains(*hex))
            .cloned()
            .collect();
        for hex in gone {
            bucket.children.remove(&hex);
            out.push(format!("{hh}/{hex}"));
        }
    }
    dir.children
        .retain(|_, b| !(b.is_dir() && b.children.is_empty() && b.catalog.is_none()));
    out
}

/// Removes every `.flat`, `.layers` and `.chainids` entry not in `refs` (see the module
/// docs). `scan_layers` = false skips the `.layers` buckets (each is a nested catalog that
/// must be read) unless `.flat` or `.chainids` had something to remove. Blocking.
pub fn prune(
    repo: &Repo,
    ns: &mut Namespace,
    refs: &References,
    scan_layers: bool,
) -> Result<PruneReport> {
    let mut report = PruneReport {
        flats: prune_plain(ns, paths::FLAT, &refs.flats),
        chains: prune_plain(ns, paths::CHAINIDS, &refs.chains),
        ..PruneReport::default()
    };
    if !scan_layers && report.flats.is_empty() && report.chains.is_empty() {
        return Ok(report);
    }
    let now = unix_now() as i64;
    let Some(layers) = ns.root.get_mut(&[paths::LAYERS]) else {
        return Ok(report);
    };
    for (hh, bucket) in layers.children.iter_mut() {
        load_catalog_node(repo, bucket)?;
        let gone: Vec<String> = bucket
            .children
            .keys()
            .filter(|hex| *hex != CATALOG_MARKER && !refs.layers.contains(*hex))
            .cloned()
            .collect();
        let mut dirty = !gone.is_empty();
        for hex in gone {
            bucket.children.remove(&hex);
            report.layers.push(format!("{hh}/{hex}"));
        }
        // ChainIDs of removed images leave the remaining layers' layer.json.
        if !report.chains.is_empty() {
            for (hex, layer) in bucket.children.iter_mut() {
                let Some(node) = layer.get(&[paths::METADATA, paths::LAYER_JSON]) else {
                    continue;
                };
                let what =
                    paths::absolute(&[paths::LAYERS, hh, hex, paths::METADATA, paths::LAYER_JSON]);
                let Some(bytes) = read_file_node(repo, Some(node), &what)? else {
                    continue;
                };
                let mut facts: LayerFacts = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::json(format!("parsing {what}"), e))?;
                let before = facts.chain_ids.len();
                facts.chain_ids.retain(|c| {
                    c.parse::<Digest>()
                        .is_ok_and(|d| refs.chains.contains(d.hex().as_str()))
                });
                if facts.chain_ids.len() != before {
                    let json = serde_json::to_vec_pretty(&facts)
                        .map_err(|e| Error::json("encoding layer.json", e))?;
                    let hash = repo.store.put_raw(&json, Suffix::None)?;
                    let e =
                        file_entry(paths::LAYER_JSON, 0o644, 0, 0, now, json.len() as u64, hash);
                    layer.insert(&[paths::METADATA], Node::leaf(e), now);
                    report.facts_rewritten += 1;
                    dirty = true;
                }
            }
        }
        if dirty && let Some(m) = bucket.catalog.as_mut() {
            m.dirty = true;
        }
    }
    // A bucket left with only its marker goes as a whole.
    layers.children.retain(|_, b| {
        !(b.catalog.as_ref().is_some_and(|m| m.loaded)
            && b.children.keys().all(|k| k == CATALOG_MARKER))
    });
    Ok(report)
}

/// What [`remove`] did.
#[derive(Clone, Debug, Default)]
pub struct RemoveSummary {
    /// The revision published.
    pub revision: u64,
    /// The public paths removed.
    pub removed: Vec<String>,
    /// What was pruned with them.
    pub pruned: PruneReport,
    /// The podman store after the removal.
    pub podman: crate::podman_store::StoreReport,
}

/// Removes the images `names` (references as published: `REGISTRY/REPO:TAG`,
/// `REPO@sha256:…`, normalised as `ingest` names them) from the repository in `dir`: their
/// public symlinks and `.metadata` directories, every `.flat`, `.layers` and `.chainids`
/// entry no remaining image uses, their podman store entries; then publishes one new
/// revision. Holds `DIR/lock`. Objects stay until `gc`.
///
/// Errors: [`Error::Reference`] for a name that does not parse or is not published (then
/// nothing is removed), and those of loading, pruning and publishing.
pub fn remove(dir: &std::path::Path, names: &[String]) -> Result<RemoveSummary> {
    let _lock = Repo::lock(dir)?;
    let repo = Repo::open(dir)?;
    repo.clean_scratch()?;
    let mut ns = crate::publish::load_namespace(&repo)?;
    let published = published_images(&repo, &ns)?;
    let mut paths_to_remove = Vec::new();
    for name in names {
        let public = ImageName::parse(name)?.public_path();
        if !published.contains_key(&public) {
            return Err(Error::Reference {
                reference: name.clone(),
                reason: format!("{public} is not published"),
            });
        }
        if !paths_to_remove.contains(&public) {
            paths_to_remove.push(public);
        }
    }
    for public in &paths_to_remove {
        remove_image(&mut ns, public);
    }
    let refs = references(&repo, &ns)?;
    let pruned = prune(&repo, &mut ns, &refs, true)?;
    let podman = crate::podman_store::refresh(&repo, &mut ns)?;
    let manifest = crate::publish::publish(&repo, &mut ns)?;
    Ok(RemoveSummary {
        revision: manifest.revision,
        removed: paths_to_remove,
        pruned,
        podman,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::symlink_entry;

    fn ns_with(paths: &[&str]) -> Namespace {
        let mut root = Node::dir("", 0o755, 0);
        for p in paths {
            let comps: Vec<&str> = p.split('/').collect();
            let (name, parent) = comps.split_last().unwrap_or_else(|| panic!());
            root.insert(
                parent,
                Node::leaf(symlink_entry(name, "../.flat/aa/bb", 0, 0, 0)),
                0,
            );
            let mut meta = vec![".metadata"];
            meta.extend(&comps);
            root.ensure_dir(&meta, 0);
        }
        Namespace {
            root,
            manifest: catalog::Manifest {
                catalog_hash: catalog::ContentHash::of_bytes(catalog::HashAlgorithm::Sha1, b""),
                catalog_size: 0,
                ttl: 0,
                revision: 0,
                garbage_collectable: false,
                alternative_paths: false,
                fqrn: "t".into(),
                certificate: catalog::ContentHash::of_bytes(catalog::HashAlgorithm::Sha1, b""),
                history: None,
                timestamp: 0,
                meta_info: None,
                reflog: None,
            },
        }
    }

    #[test]
    fn remove_image_trims_empty_parents_only() {
        let mut ns = ns_with(&["r.org/a/x:1", "r.org/a/x:2", "r.org/b:1"]);
        assert!(remove_image(&mut ns, "r.org/a/x:1"));
        assert!(ns.root.get(&["r.org", "a", "x:2"]).is_some());
        assert!(ns.root.get(&["r.org", "a", "x:1"]).is_none());
        assert!(ns.root.get(&[".metadata", "r.org", "a", "x:1"]).is_none());
        assert!(remove_image(&mut ns, "r.org/a/x:2"));
        assert!(ns.root.get(&["r.org", "a"]).is_none());
        assert!(ns.root.get(&[".metadata", "r.org", "a"]).is_none());
        assert!(ns.root.get(&["r.org", "b:1"]).is_some());
        assert!(remove_image(&mut ns, "r.org/b:1"));
        assert!(ns.root.get(&["r.org"]).is_none());
        assert!(ns.root.get(&[".metadata"]).is_some());
        assert!(!remove_image(&mut ns, "r.org/b:1"));
        // never the hidden trees
        assert!(!remove_image(&mut ns, ".metadata"));
        assert!(ns.root.get(&[".metadata"]).is_some());
    }

    #[test]
    fn prune_plain_keeps_referenced() {
        let mut ns = ns_with(&[]);
        for (hh, hex) in [("aa", "aa1"), ("aa", "aa2"), ("bb", "bb1")] {
            ns.root.ensure_dir(&[".flat", hh, hex], 0);
        }
        let keep: HashSet<String> = ["aa2".to_string()].into_iter().collect();
        let mut gone = prune_plain(&mut ns, ".flat", &keep);
        gone.sort();
        assert_eq!(gone, vec!["aa/aa1".to_string(), "bb/bb1".to_string()]);
        assert!(ns.root.get(&[".flat", "aa", "aa2"]).is_some());
        assert!(ns.root.get(&[".flat", "bb"]).is_none());
    }
}
