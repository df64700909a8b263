//! Revisions: creating revision 0 (docs/format.md §9.1), reading the current revision back into
//! a [`Node`] tree, and writing a new revision bottom-up (docs/format.md §9.2): nested catalogs first,
//! then the root catalog, then the signed manifest, last and atomically.

use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use catalog::{
    CatalogProperties, CatalogReader, CatalogWriter, Certificate, ContentHash, Manifest, Suffix,
    Transition, Whitelist,
};

use crate::error::{Error, Result};
use crate::objects::{inflate_catalog, store_catalog};
use crate::repo::{Repo, Settings, write_file_mode};
use crate::tree::{
    CATALOG_MARKER, CatalogMark, Node, PublishedCatalog, dir_entry, hidden_marker_entry,
};

/// Validity of a freshly signed whitelist: 30 days (stock default, docs/format.md §7.4).
pub const WHITELIST_VALIDITY: u64 = 30 * 24 * 3600;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Creates a repository in `dir` (docs/CONTRACTS.md §2, docs/format.md §9.1): keys and
/// certificate, the certificate and empty-file objects, a signed whitelist, an empty root
/// catalog at revision 0, the manifest `S0`, `.cvmfs_master_replica`, and `strata.json`
/// last. Errors with [`Error::AlreadyRepository`] if `dir` already is one.
pub fn init(dir: &Path, fqrn: &str, ttl: u64) -> Result<Manifest> {
    if Repo::exists(dir) {
        return Err(Error::AlreadyRepository(dir.to_path_buf()));
    }
    let settings = Settings {
        fqrn: fqrn.to_string(),
        ttl,
    };
    let repo = Repo::create_layout(dir, settings)?;
    let _lock = Repo::lock(dir)?;
    if Repo::exists(dir) {
        return Err(Error::AlreadyRepository(dir.to_path_buf()));
    }

    let master = catalog::keys::generate_key()?;
    let cert_key = catalog::keys::generate_key()?;
    let cert = Certificate::self_signed(&cert_key, fqrn)?;
    write_file_mode(
        &repo.key_path("masterkey"),
        catalog::keys::private_key_to_pem(&master)?.as_bytes(),
        0o600,
    )?;
    write_file_mode(
        &repo.key_path("pub"),
        catalog::keys::public_key_to_pem(&catalog::RsaPublicKey::from(&master))?.as_bytes(),
        0o644,
    )?;
    write_file_mode(
        &repo.key_path("key"),
        catalog::keys::private_key_to_pem(&cert_key)?.as_bytes(),
        0o600,
    )?;
    write_file_mode(&repo.key_path("crt"), cert.to_pem().as_bytes(), 0o644)?;

    let now = unix_now();
    let cert_hash = repo
        .store
        .put_raw(cert.to_pem().as_bytes(), Suffix::Certificate)?;
    repo.store.put_raw(b"", Suffix::None)?;
    let whitelist = Whitelist::new(fqrn, &cert, now, WHITELIST_VALIDITY);
    repo.store
        .write_file_atomic(".cvmfswhitelist", &whitelist.sign(&master)?)?;

    let mut root = Node::leaf(dir_entry("", 0o755, 0, 0, now as i64));
    root.catalog = Some(Box::new(CatalogMark::new_catalog()));
    let ctx = WriteCtx {
        repo: &repo,
        revision: 0,
        now,
        stats_cache: HashMap::new(),
    };
    let published = ctx.write(&mut root, "")?;
    let manifest = Manifest {
        catalog_hash: published.hash,
        catalog_size: published.size,
        ttl,
        revision: 0,
        garbage_collectable: false,
        alternative_paths: false,
        fqrn: fqrn.to_string(),
        certificate: cert_hash,
        history: None,
        timestamp: now,
        meta_info: None,
        reflog: None,
    };
    repo.store
        .write_file_atomic(".cvmfspublished", &manifest.sign(&cert_key)?)?;
    repo.store.write_file_atomic(
        ".cvmfs_master_replica",
        b"This file marks the repository as replicable to stratum 1 servers\n",
    )?;
    repo.save_settings()?;
    Ok(manifest)
}

/// The current revision read back: the root catalog's rows as a tree, nested catalogs as
/// unloaded [`CatalogMark`]s.
#[derive(Debug)]
pub struct Namespace {
    /// The repository root; a catalog root itself.
    pub root: Node,
    /// The manifest of the revision that was read.
    pub manifest: Manifest,
}

/// Reads the current revision (manifest `C` → root catalog).
pub fn load_namespace(repo: &Repo) -> Result<Namespace> {
    let signed = repo.current_manifest()?;
    let manifest = signed.manifest;
    let mut root = read_catalog_tree(repo, &manifest.catalog_hash)?;
    root.catalog = Some(Box::new(CatalogMark {
        published: Some(PublishedCatalog {
            hash: manifest.catalog_hash,
            size: manifest.catalog_size,
            statistics: None,
        }),
        loaded: true,
        dirty: true,
    }));
    Ok(Namespace { root, manifest })
}

/// Reads the catalog object `hash` into a tree rooted at its root entry. Its own nested
/// catalogs become unloaded [`CatalogMark`] nodes; the returned node has no mark (the caller
/// knows what it is).
pub fn read_catalog_tree(repo: &Repo, hash: &ContentHash) -> Result<Node> {
    let tmp = tempfile::tempdir_in(repo.tmp_dir()?)
        .map_err(|e| Error::io("creating temp dir in DIR/tmp", e))?;
    let file = tmp.path().join("catalog.db");
    inflate_catalog(&repo.store, hash, &file)?;
    let reader = CatalogReader::open(&file)?;
    let prefix = reader.root_prefix().to_string();
    let nested: HashMap<String, (ContentHash, u64)> = reader
        .nested_catalogs()?
        .into_iter()
        .map(|n| (n.path, (n.hash, n.size)))
        .collect();
    let entry = reader
        .lookup(&prefix)?
        .ok_or_else(|| Error::NotRepository {
            path: repo.dir.clone(),
            reason: format!("catalog {hash} has no root entry {prefix:?}"),
        })?;
    let mut node = Node::leaf(entry);
    fill_children(&reader, &prefix, &mut node, &nested)?;
    Ok(node)
}

fn fill_children(
    reader: &CatalogReader,
    path: &str,
    node: &mut Node,
    nested: &HashMap<String, (ContentHash, u64)>,
) -> Result<()> {
    for entry in reader.list(path)? {
        let child_path = format!("{path}/{}", entry.name);
        let name = entry.name.clone();
        let mut entry = entry;
        if entry.is_chunked() {
            // The reader leaves `chunks` empty; the writer needs them (docs/format.md §6.10).
            entry.chunks = reader.chunks(&child_path)?;
        }
        let mut child = Node::leaf(entry);
        if child.entry.is_nested_mountpoint() {
            let (hash, size) = nested.get(&child_path).copied().ok_or_else(|| {
                Error::Catalog(catalog::Error::InvalidEntry {
                    path: child_path.clone(),
                    reason: "nested mountpoint without a nested_catalogs row".into(),
                })
            })?;
            child.catalog = Some(Box::new(CatalogMark {
                published: Some(PublishedCatalog {
                    hash,
                    size,
                    statistics: None,
                }),
                loaded: false,
                dirty: false,
            }));
        } else if child.is_dir() {
            fill_children(reader, &child_path, &mut child, nested)?;
        }
        node.children.insert(name, child);
    }
    Ok(())
}

/// Loads the children of the unloaded catalog node at `path` (absolute, e.g.
/// `/.layers/ab`) so that rows can be added to it; the node stays a catalog root whose old
/// version is recorded, and is marked dirty. No-op if it is already loaded.
pub fn load_catalog_node(repo: &Repo, node: &mut Node) -> Result<()> {
    let Some(mark) = node.catalog.as_mut() else {
        return Ok(());
    };
    if mark.loaded {
        return Ok(());
    }
    let Some(published) = mark.published.clone() else {
        return Ok(());
    };
    let tree = read_catalog_tree(repo, &published.hash)?;
    node.children = tree.children;
    mark.loaded = true;
    Ok(())
}

/// Writes a new revision from `ns` (revision + 1) and publishes its manifest, signed with
/// the certificate key, via an atomic rename (docs/format.md §9.2), after `syncfs` of the
/// served tree. Returns the new manifest.
pub fn publish(repo: &Repo, ns: &mut Namespace) -> Result<Manifest> {
    // Objects from the worker pool are written without fsync; make them durable first.
    repo.sync_objects()?;
    let revision = ns.manifest.revision + 1;
    let now = unix_now().max(ns.manifest.timestamp);
    ns.root.fix_linkcounts();
    if let Some(mark) = ns.root.catalog.as_mut() {
        mark.dirty = true;
    }
    let mut ctx = WriteCtx {
        repo,
        revision,
        now,
        stats_cache: load_stats_cache(repo),
    };
    let root = ctx.write_mut(&mut ns.root, "")?;
    save_stats_cache(repo, &ctx.stats_cache)?;
    let key = repo.certificate_key()?;
    // Stored again (a no-op unless missing) so that a repository whose certificate object
    // predates `catalog::stock_zlib` gets one a Stratum-1 replication keeps intact.
    let certificate = repo
        .store
        .put_raw(repo.certificate()?.to_pem().as_bytes(), Suffix::Certificate)?;
    // The tag history (docs/format.md §9.5): trunk → this revision, an automatic generic tag.
    let history = catalog::update_history(
        &repo.store,
        &repo.tmp_dir()?,
        &repo.settings.fqrn,
        ns.manifest.history.as_ref(),
        &catalog::Publication {
            root_catalog: root.hash,
            catalog_size: root.size,
            revision,
            timestamp: now,
        },
    )?;
    let manifest = Manifest {
        catalog_hash: root.hash,
        catalog_size: root.size,
        ttl: repo.settings.ttl,
        revision,
        garbage_collectable: false,
        alternative_paths: false,
        fqrn: repo.settings.fqrn.clone(),
        certificate,
        history: Some(history),
        timestamp: now,
        meta_info: None,
        reflog: None,
    };
    refresh_whitelist(repo, now)?;
    repo.store
        .write_file_atomic(".cvmfspublished", &manifest.sign(&key)?)?;
    ns.manifest = manifest.clone();
    Ok(manifest)
}

/// A nested catalog written row by row ([`write_streamed`]): what the parent needs, and the
/// uncompressed file, kept until this is dropped so it can be read again (the flat tree is
/// merged from the layer catalogs just written).
pub struct StreamedCatalog {
    /// The stored catalog.
    pub published: PublishedCatalog,
    /// The catalog's root row (also the mountpoint row in the parent).
    pub root: catalog::Entry,
    /// The uncompressed catalog file.
    pub file: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

impl StreamedCatalog {
    /// The node for the parent's tree: the root row, marked as a published, unloaded
    /// catalog, so [`publish`] re-uses it by hash.
    pub fn mountpoint(&self) -> Node {
        let mut node = Node::leaf(self.root.clone());
        node.catalog = Some(Box::new(CatalogMark {
            published: Some(self.published.clone()),
            loaded: false,
            dirty: false,
        }));
        node
    }
}

/// Writes the nested catalog at `path` (absolute, e.g. `/.layers/ab/<hex>/layerfs`) without
/// a tree in memory: `fill` sends its rows — `(path relative to the catalog root, row)`,
/// `""` for the root, whose name is set to the last component of `path` — straight into a
/// [`CatalogWriter`]. Properties as [`publish`] would write them in the revision after
/// `manifest` (same revision number; `last_modified` is the time of this call). This is
/// what keeps `ingest`'s memory independent of the number of files (publisher/README.md,
/// "Memory"). The catalog must hold no nested catalogs. Returns the stored catalog.
///
/// Unless `fill` sends a root-level `.cvmfscatalog` itself (then image content that also
/// serves as the marker), a hidden marker is added ([`hidden_marker_entry`]): stock
/// `cvmfs_server check` wants a `.cvmfscatalog` in every nested catalog root (docs/format.md
/// §6.14), and the hidden flag (§6.6) keeps it out of the listings clients serve, so the
/// layer or image root a container sees stays the image's.
///
/// Errors: those of `fill`, of writing ([`Error::Catalog`], [`Error::Io`]); a `fill` that
/// sends no root row is [`Error::Task`].
pub fn write_streamed(
    repo: &Repo,
    manifest: &Manifest,
    path: &str,
    fill: impl FnOnce(&mut crate::flatten::Sink<'_>) -> Result<()>,
) -> Result<StreamedCatalog> {
    let tmp = tempfile::tempdir_in(repo.tmp_dir()?)
        .map_err(|e| Error::io("creating temp dir in DIR/tmp", e))?;
    let file = tmp.path().join("catalog.db");
    let mut w = CatalogWriter::create(&file, path)?;
    let name = path.rsplit('/').next().unwrap_or_default().to_string();
    let mut root = None;
    let mut has_marker = false;
    fill(&mut |rel: &str, e: &catalog::Entry| {
        has_marker |= rel == CATALOG_MARKER;
        if rel.is_empty() {
            let mut e = e.clone();
            e.name.clone_from(&name);
            w.add(path, &e, Transition::NestedRoot)?;
            root = Some(e);
        } else {
            w.add(&format!("{path}/{rel}"), e, Transition::None)?;
        }
        Ok(())
    })?;
    let root = root.ok_or_else(|| Error::Task(format!("{path}: no root row written")))?;
    if !has_marker {
        let empty = repo.store.put_raw(b"", Suffix::None)?;
        w.add(
            &format!("{path}/{CATALOG_MARKER}"),
            &hidden_marker_entry(empty, root.mtime),
            Transition::None,
        )?;
    }
    let stats = w.finish(&CatalogProperties {
        revision: manifest.revision + 1,
        last_modified: unix_now().max(manifest.timestamp),
        ttl: None,
        previous_revision: None,
    })?;
    let (hash, size) = store_catalog(&repo.store, &file)?;
    let mut cache = load_stats_cache(repo);
    cache.insert(hash, (stats.self_, stats.subtree));
    save_stats_cache(repo, &cache)?;
    Ok(StreamedCatalog {
        published: PublishedCatalog {
            hash,
            size,
            statistics: Some((stats.self_, stats.subtree)),
        },
        root,
        file,
        _tmp: tmp,
    })
}

/// `resign`: signs a fresh `.cvmfswhitelist` valid for `days` days from now with the master
/// key (docs/format.md §7.4, as `cvmfs_server resign`), under the repository lock. Returns the new
/// expiry (Unix seconds).
pub fn resign(dir: &Path, days: u64) -> Result<u64> {
    let _lock = Repo::lock(dir)?;
    let repo = Repo::open(dir)?;
    let now = unix_now();
    let wl = Whitelist::new(
        &repo.settings.fqrn,
        &repo.certificate()?,
        now,
        days.saturating_mul(24 * 3600),
    );
    repo.store
        .write_file_atomic(".cvmfswhitelist", &wl.sign(&repo.master_key()?)?)?;
    Ok(wl.expires)
}

/// Re-signs `.cvmfswhitelist` when it expires within 7 days (docs/format.md §9.2 step 6).
fn refresh_whitelist(repo: &Repo, now: u64) -> Result<()> {
    let current = repo.store.read_file(".cvmfswhitelist")?;
    let fresh = current
        .and_then(|b| Whitelist::parse(&b).ok())
        .is_some_and(|w| w.whitelist.expires > now + 7 * 24 * 3600);
    if !fresh {
        let wl = Whitelist::new(
            &repo.settings.fqrn,
            &repo.certificate()?,
            now,
            WHITELIST_VALIDITY,
        );
        repo.store
            .write_file_atomic(".cvmfswhitelist", &wl.sign(&repo.master_key()?)?)?;
    }
    Ok(())
}

/// `DIR/statistics.json`: statistics of catalogs by hash, so that re-used nested catalogs
/// need not be inflated on every publish (catalogs are immutable, so entries never go stale).
fn stats_cache_path(repo: &Repo) -> std::path::PathBuf {
    repo.dir.join("statistics.json")
}

type StatsCache = HashMap<ContentHash, (catalog::Counters, catalog::Counters)>;

fn load_stats_cache(repo: &Repo) -> StatsCache {
    let Ok(bytes) = std::fs::read(stats_cache_path(repo)) else {
        return HashMap::new();
    };
    let Ok(raw) = serde_json::from_slice::<HashMap<String, HashMap<String, i64>>>(&bytes) else {
        return HashMap::new();
    };
    raw.into_iter()
        .filter_map(|(hash, rows)| {
            let hash = ContentHash::parse_hex(&hash).ok()?;
            let mut stats = catalog::Statistics::default();
            for (name, value) in rows {
                stats.set(&name, value).then_some(())?;
            }
            Some((hash, (stats.self_, stats.subtree)))
        })
        .collect()
}

fn save_stats_cache(repo: &Repo, cache: &StatsCache) -> Result<()> {
    let raw: HashMap<String, HashMap<String, i64>> = cache
        .iter()
        .map(|(hash, (self_, subtree))| {
            let stats = catalog::Statistics {
                self_: *self_,
                subtree: *subtree,
            };
            (hash.to_hex(), stats.rows().into_iter().collect())
        })
        .collect();
    let json = serde_json::to_vec(&raw).map_err(|e| Error::json("encoding statistics.json", e))?;
    let tmp = repo.tmp_dir()?.join("statistics.json");
    write_file_mode(&tmp, &json, 0o644)?;
    std::fs::rename(&tmp, stats_cache_path(repo))
        .map_err(|e| Error::io("replacing statistics.json", e))
}

struct WriteCtx<'a> {
    repo: &'a Repo,
    revision: u64,
    now: u64,
    stats_cache: StatsCache,
}

impl WriteCtx<'_> {
    /// Writes the catalog rooted at `node` (path `path`, `""` = root) and, first, every
    /// nested catalog below it that is new or dirty; re-uses the others by hash.
    fn write(mut self, node: &mut Node, path: &str) -> Result<PublishedCatalog> {
        self.write_mut(node, path)
    }

    /// As [`WriteCtx::write`], adding the statistics of every catalog written to `cache`.
    fn write_mut(&mut self, node: &mut Node, path: &str) -> Result<PublishedCatalog> {
        let mut nested: Vec<(String, PublishedCatalog)> = Vec::new();
        self.children_catalogs(node, path, &mut nested)?;

        let tmp = tempfile::tempdir_in(self.repo.tmp_dir()?)
            .map_err(|e| Error::io("creating temp dir in DIR/tmp", e))?;
        let file = tmp.path().join("catalog.db");
        let mut w = CatalogWriter::create(&file, path)?;
        let transition = if path.is_empty() {
            Transition::None
        } else {
            Transition::NestedRoot
        };
        w.add(path, &node.entry, transition)?;
        add_rows(&mut w, node, path)?;
        for (p, c) in &nested {
            let stats = c
                .statistics()
                .ok_or_else(|| Error::Task(format!("no statistics for {p}")))?;
            w.add_nested(p, &c.hash, c.size, &stats)?;
        }
        let previous_revision = node
            .catalog
            .as_ref()
            .and_then(|m| m.published.as_ref())
            .map(|p| p.hash);
        let stats = w.finish(&CatalogProperties {
            revision: self.revision,
            last_modified: self.now,
            ttl: path.is_empty().then_some(self.repo.settings.ttl),
            previous_revision,
        })?;
        let (hash, size) = store_catalog(&self.repo.store, &file)?;
        self.stats_cache.insert(hash, (stats.self_, stats.subtree));
        let published = PublishedCatalog {
            hash,
            size,
            statistics: Some((stats.self_, stats.subtree)),
        };
        let mark = node.catalog.get_or_insert_with(Box::default);
        mark.published = Some(published.clone());
        mark.dirty = false;
        Ok(published)
    }

    fn children_catalogs(
        &mut self,
        node: &mut Node,
        path: &str,
        out: &mut Vec<(String, PublishedCatalog)>,
    ) -> Result<()> {
        for (name, child) in node.children.iter_mut() {
            let child_path = format!("{path}/{name}");
            match &child.catalog {
                Some(mark) if mark.needs_write() => {
                    let p = self.write_mut(child, &child_path)?;
                    out.push((child_path, p));
                }
                Some(mark) => {
                    let mut p = mark
                        .published
                        .clone()
                        .ok_or_else(|| Error::Task(format!("catalog {child_path} has no hash")))?;
                    if p.statistics.is_none() {
                        p.statistics = Some(self.statistics_of(&p.hash)?);
                    }
                    out.push((child_path, p));
                }
                None if child.is_dir() => self.children_catalogs(child, &child_path, out)?,
                None => {}
            }
        }
        Ok(())
    }

    fn statistics_of(
        &mut self,
        hash: &ContentHash,
    ) -> Result<(catalog::Counters, catalog::Counters)> {
        if let Some(s) = self.stats_cache.get(hash) {
            return Ok(*s);
        }
        let tmp = tempfile::tempdir_in(self.repo.tmp_dir()?)
            .map_err(|e| Error::io("creating temp dir in DIR/tmp", e))?;
        let file = tmp.path().join("catalog.db");
        inflate_catalog(&self.repo.store, hash, &file)?;
        let s = CatalogReader::open(&file)?.statistics()?;
        let pair = (s.self_, s.subtree);
        self.stats_cache.insert(*hash, pair);
        Ok(pair)
    }
}

/// Adds the rows below `node` that belong to its catalog; nested catalog roots get only their
/// mountpoint row.
fn add_rows(w: &mut CatalogWriter, node: &Node, path: &str) -> Result<()> {
    for (name, child) in &node.children {
        let child_path = format!("{path}/{name}");
        if child.catalog.is_some() {
            w.add(&child_path, &child.entry, Transition::NestedMountpoint)?;
        } else {
            w.add(&child_path, &child.entry, Transition::None)?;
            if child.is_dir() {
                add_rows(w, child, &child_path)?;
            }
        }
    }
    Ok(())
}
