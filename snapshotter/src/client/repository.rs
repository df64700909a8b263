//! The client's view of one repository revision: the verified manifest and the tree of
//! catalogs, loaded lazily.
//!
//! Boot (docs/format.md §8.2, §7.5): fetch `.cvmfspublished`, refuse it if its `T` is older than
//! the breadcrumb's ([`crate::client::breadcrumb`], §7.5 step 5), fetch the certificate object (`X`)
//! and `.cvmfswhitelist`, run [`catalog::verify_repository`] (a failure refuses the mount and
//! names the failed check), then decide which root catalog to mount (§8.2 step 4, see
//! [`MountedRevision::boot`]): the server's if it is newer than the one of the breadcrumb, else
//! the cached one; the cached one also when the server is unreachable (offline mode). A
//! pinned mount ([`Pin`]: a history tag, §9.5, or a root hash, `CVMFS_ROOT_HASH`) verifies
//! the manifest chain all the same and then mounts the named root catalog. Nested catalogs are
//! loaded on demand by the walk of docs/format.md §6.14: start at the deepest loaded catalog whose
//! mountpoint is a path prefix (by whole components), look the path up, and on a miss
//! descend into the direct child catalog that covers the path.
//!
//! Loaded catalogs stay in a map keyed by mountpoint (`""` = root) for the life of the
//! revision (a live update opens a new [`MountedRevision`]). Each [`catalog::CatalogReader`] is `Send`
//! but not `Sync`, so each sits behind its own `Mutex`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use catalog::{
    CatalogReader, Chunk, ContentHash, Entry, HistoryReader, Manifest, NestedCatalogRef, Suffix,
};

use crate::client::breadcrumb::Breadcrumb;
use crate::client::cache::{ObjectCache, ObjectRequest, PinnedFile};
use crate::client::fetch::Fetcher;
use crate::{Error, Result};

/// What the client trusts: the repository name and its master public keys.
pub struct Trust {
    /// Fully qualified repository name, e.g. `stock.strata.example`.
    pub fqrn: String,
    /// Master public keys (docs/format.md §7.3); the whitelist must verify with one of them.
    pub master_keys: Vec<catalog::RsaPublicKey>,
    /// Testing aid: verify an expired whitelist as if it were still valid (the signature,
    /// name and fingerprint checks still apply). Never set this in production.
    pub accept_expired_whitelist: bool,
}

/// The TTL of a revision whose root catalog has no `TTL` property and that did not come
/// with a manifest (docs/format.md §8.6: 240 s).
pub const DEFAULT_TTL: u64 = 240;

/// The revision a [`MountedRevision`] serves: its root catalog and the facts the client tracks
/// about it (docs/format.md §8.2, §8.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revision {
    /// Hash of the root catalog (manifest `C`).
    pub root_hash: ContentHash,
    /// Revision number (manifest `S`; the root catalog's `revision` for pinned mounts).
    pub revision: u64,
    /// Publish time, Unix seconds (manifest `T`; the root catalog's `last_modified` for
    /// pinned mounts).
    pub timestamp: u64,
    /// TTL in seconds used when the root catalog has no `TTL` property (manifest `D`).
    pub ttl: u64,
}

impl Revision {
    /// The revision a verified manifest publishes.
    pub fn of_manifest(m: &Manifest) -> Revision {
        Revision {
            root_hash: m.catalog_hash,
            revision: m.revision,
            timestamp: m.timestamp,
            ttl: m.ttl,
        }
    }

    /// The breadcrumb that records this revision (docs/format.md §8.2 step 6).
    pub fn breadcrumb(&self) -> Breadcrumb {
        Breadcrumb {
            catalog_hash: self.root_hash,
            timestamp: self.timestamp,
            revision: self.revision,
        }
    }
}

/// A fixed revision to mount instead of the current one; such a mount has no live updates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pin {
    /// A tag of the history database the manifest's `H` names (docs/format.md §9.5): `trunk`,
    /// `trunk-previous`, `generic-YYYY-MM-DDTHH:MM:SSZ`, …
    Tag(String),
    /// A root catalog hash (stock `CVMFS_ROOT_HASH`, docs/format.md §8.1).
    RootHash(ContentHash),
}

/// How [`MountedRevision::boot`] chose the mounted revision (docs/format.md §8.2 step 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The server's current revision; the breadcrumb now records it.
    Server,
    /// The breadcrumb's cached revision: the server publishes no newer one.
    Cached {
        /// The revision the server publishes.
        server_revision: u64,
    },
    /// Offline mode: the server's manifest could not be fetched (or was refused as
    /// outdated), so the breadcrumb's cached revision is served; the next check comes after
    /// the short-term TTL (docs/format.md §8.6).
    Offline {
        /// Why the server's manifest was not used.
        reason: String,
    },
    /// A pinned revision ([`Pin`]); no live updates.
    Pinned,
}

/// A booted repository and how its revision was chosen.
pub struct Booted {
    /// The repository, ready to serve.
    pub repo: MountedRevision,
    /// Where its revision came from.
    pub origin: Origin,
}

/// One loaded catalog.
pub struct LoadedCatalog {
    /// Repository path of its root (`""` for the root catalog, else `/a/b`).
    pub mountpoint: String,
    /// Content hash of the catalog object.
    pub hash: ContentHash,
    reader: Mutex<CatalogReader>,
    nested: Vec<NestedCatalogRef>,
    /// Keeps the cache file locked (in use) while the catalog is loaded.
    _pin: PinnedFile,
}

impl LoadedCatalog {
    /// Runs `f` with the catalog's reader locked.
    pub fn with<R>(&self, f: impl FnOnce(&CatalogReader) -> R) -> R {
        let reader = self
            .reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&reader)
    }

    /// The direct child catalog whose mountpoint is `path` or a component-prefix of it.
    fn child_covering(&self, path: &str) -> Option<&NestedCatalogRef> {
        self.nested.iter().find(|n| is_below_or_at(path, &n.path))
    }
}

/// A catalog entry with the catalog it came from.
#[derive(Clone)]
pub struct Found {
    /// The catalog holding the row.
    pub catalog: Arc<LoadedCatalog>,
    /// The row.
    pub entry: Entry,
}

/// The mounted revision: its root catalog plus lazily loaded nested catalogs.
pub struct MountedRevision {
    fqrn: String,
    revision: Revision,
    cache: Arc<ObjectCache>,
    catalogs: RwLock<BTreeMap<String, Arc<LoadedCatalog>>>,
}

impl MountedRevision {
    /// Boots (docs/format.md §8.2): reads the breadcrumb, fetches and verifies the manifest chain
    /// (refusing a manifest older than the breadcrumb, §7.5 step 5) and opens a root
    /// catalog:
    ///
    /// * with `pin`: the tagged revision or the given root hash ([`Origin::Pinned`]); the
    ///   manifest chain must verify, there is no offline fallback;
    /// * the server's revision if its `S` is greater than the breadcrumb's, or there is no
    ///   breadcrumb whose root catalog is still cached, or both revisions are 0 (the
    ///   breadcrumb is then rewritten) ([`Origin::Server`]);
    /// * else the breadcrumb's cached revision ([`Origin::Cached`]);
    /// * the cached revision also when the manifest cannot be downloaded or is outdated
    ///   ([`Origin::Offline`]).
    ///
    /// # Errors
    /// Download errors naming the URL (when nothing is cached); [`Error::Verification`] and
    /// [`Error::Outdated`] naming the failed check; [`Error::Revision`] for an unknown tag;
    /// catalog errors for an unreadable root catalog.
    pub fn boot(
        fetcher: &Fetcher,
        cache: Arc<ObjectCache>,
        trust: &Trust,
        pin: Option<&Pin>,
    ) -> Result<Booted> {
        let fqrn = &trust.fqrn;
        let crumb = Breadcrumb::read(cache.root(), fqrn);
        let minimum = crumb.map_or(0, |c| c.timestamp);
        if let Some(pin) = pin {
            let manifest = MountedRevision::verified_manifest(fetcher, &cache, trust, minimum)?;
            let root = match pin {
                Pin::RootHash(hash) => *hash,
                Pin::Tag(name) => {
                    let tag = resolve_tag(&cache, fqrn, &manifest, name)?;
                    tracing::info!(
                        tag = %tag.name,
                        revision = tag.revision,
                        root = %tag.root_hash,
                        "tag resolved through the history database"
                    );
                    tag.root_hash
                }
            };
            let repo = MountedRevision::open_root(fqrn, root, cache)?;
            return Ok(Booted {
                repo,
                origin: Origin::Pinned,
            });
        }
        let local = crumb.filter(|c| cache.path_of(&c.catalog_hash).is_file());
        let server = MountedRevision::verified_manifest(fetcher, &cache, trust, minimum);
        match choose(server, local)? {
            Choice::Server(manifest) => {
                let revision = Revision::of_manifest(&manifest);
                let repo = MountedRevision::open(fqrn, revision, cache.clone())?;
                if let Err(e) = revision.breadcrumb().write(cache.root(), fqrn) {
                    tracing::warn!(error = %e, "cannot write the breadcrumb");
                }
                Ok(Booted {
                    repo,
                    origin: Origin::Server,
                })
            }
            Choice::Local(crumb, origin) => {
                let revision = Revision {
                    root_hash: crumb.catalog_hash,
                    revision: crumb.revision,
                    timestamp: crumb.timestamp,
                    ttl: DEFAULT_TTL,
                };
                let repo = MountedRevision::open(fqrn, revision, cache)?;
                Ok(Booted { repo, origin })
            }
        }
    }

    /// The revision the server publishes, without verifying it: a cheap check for live
    /// updates (docs/format.md §8.6) before the full verification of a newer revision.
    ///
    /// # Errors
    /// Download errors; [`Error::Verification`] if the manifest does not parse.
    pub fn published_revision(fetcher: &Fetcher, trust: &Trust) -> Result<u64> {
        let published = fetcher.blocking_get_bytes(".cvmfspublished")?;
        Manifest::parse(&published)
            .map(|s| s.manifest.revision)
            .map_err(|source| Error::Verification {
                fqrn: trust.fqrn.clone(),
                source,
            })
    }

    /// Fetches `.cvmfspublished`, refuses it if its `T` is below `minimum_timestamp` (Unix
    /// seconds; docs/format.md §7.5 step 5: the breadcrumb's timestamp, and while mounted also the
    /// root catalog's `last_modified`), then fetches the certificate and `.cvmfswhitelist`
    /// and verifies the chain (docs/format.md §7.5).
    ///
    /// # Errors
    /// Download errors naming the URL; [`Error::Outdated`] for an old manifest;
    /// [`Error::Verification`] naming the failed check.
    pub fn verified_manifest(
        fetcher: &Fetcher,
        cache: &ObjectCache,
        trust: &Trust,
        minimum_timestamp: u64,
    ) -> Result<Manifest> {
        let published = fetcher.blocking_get_bytes(".cvmfspublished")?;
        let verification = |source| Error::Verification {
            fqrn: trust.fqrn.clone(),
            source,
        };
        // Parse first only to learn the certificate's hash; verify_repository re-checks all.
        let signed = Manifest::parse(&published).map_err(verification)?;
        if signed.manifest.timestamp < minimum_timestamp {
            return Err(Error::Outdated {
                fqrn: trust.fqrn.clone(),
                timestamp: signed.manifest.timestamp,
                minimum: minimum_timestamp,
            });
        }
        let mut certificate = Vec::new();
        std::io::Read::read_to_end(
            &mut cache.get(&ObjectRequest {
                hash: signed.manifest.certificate,
                suffix: Suffix::Certificate,
                compressed: true,
                size: None,
            })?,
            &mut certificate,
        )
        .map_err(|source| Error::Io {
            context: "reading the cached certificate".into(),
            source,
        })?;
        let whitelist = fetcher.blocking_get_bytes(".cvmfswhitelist")?;
        let mut now = unix_now();
        if trust.accept_expired_whitelist
            && let Ok(w) = catalog::Whitelist::parse(&whitelist)
            && w.whitelist.expires <= now
        {
            tracing::warn!(
                expires = w.whitelist.expires,
                "accepting an expired whitelist (--accept-expired-whitelist, tests only)"
            );
            now = w
                .whitelist
                .expires
                .saturating_sub(1)
                .max(w.whitelist.created);
        }
        let manifest = catalog::verify_repository(
            &published,
            &certificate,
            &whitelist,
            &trust.master_keys,
            &trust.fqrn,
            now,
        )
        .map_err(verification)?;
        tracing::info!(
            fqrn = %trust.fqrn,
            revision = manifest.revision,
            root = %manifest.catalog_hash,
            "repository verified"
        );
        Ok(manifest)
    }

    /// Opens `revision` (from a verified manifest or a breadcrumb): fetches and opens its
    /// root catalog.
    ///
    /// # Errors
    /// Download/verification errors of the catalog object, catalog open errors.
    pub fn open(
        fqrn: &str,
        revision: Revision,
        cache: Arc<ObjectCache>,
    ) -> Result<MountedRevision> {
        let root = load_catalog(&cache, &revision.root_hash, "")?;
        let in_catalog = root.with(|r| r.revision());
        if in_catalog != revision.revision {
            tracing::warn!(
                manifest = revision.revision,
                catalog = in_catalog,
                "root catalog revision differs from the manifest (docs/format.md §7.1 S)"
            );
        }
        Ok(MountedRevision::with_root(fqrn, revision, root, cache))
    }

    /// Opens the root catalog `root_hash` of a pinned revision; revision number, timestamp
    /// and TTL come from the catalog's properties (docs/format.md §6.4).
    ///
    /// # Errors
    /// Download/verification errors of the catalog object (e.g. HTTP 404 when garbage
    /// collection removed it), catalog open errors.
    pub fn open_root(
        fqrn: &str,
        root_hash: ContentHash,
        cache: Arc<ObjectCache>,
    ) -> Result<MountedRevision> {
        let root = load_catalog(&cache, &root_hash, "")?;
        let revision = root.with(|r| Revision {
            root_hash,
            revision: r.revision(),
            timestamp: r.last_modified(),
            ttl: r.ttl().unwrap_or(DEFAULT_TTL),
        });
        Ok(MountedRevision::with_root(fqrn, revision, root, cache))
    }

    fn with_root(
        fqrn: &str,
        revision: Revision,
        root: LoadedCatalog,
        cache: Arc<ObjectCache>,
    ) -> MountedRevision {
        let mut catalogs = BTreeMap::new();
        catalogs.insert(String::new(), Arc::new(root));
        MountedRevision {
            fqrn: fqrn.to_string(),
            revision,
            cache,
            catalogs: RwLock::new(catalogs),
        }
    }

    /// The repository name.
    pub fn fqrn(&self) -> &str {
        &self.fqrn
    }

    /// The mounted revision.
    pub fn revision(&self) -> &Revision {
        &self.revision
    }

    /// The smallest manifest `T` a live update may accept (docs/format.md §8.6): the larger of this
    /// revision's timestamp and its root catalog's `last_modified`, Unix seconds.
    pub fn minimum_timestamp(&self) -> u64 {
        let last_modified = self.root_catalog().with(|r| r.last_modified());
        self.revision.timestamp.max(last_modified)
    }

    /// How long this revision is valid before the manifest is checked again: the root
    /// catalog's `TTL` property, else the manifest's `D` (docs/format.md §8.6).
    pub fn ttl(&self) -> std::time::Duration {
        let ttl = self
            .root_catalog()
            .with(|r| r.ttl())
            .unwrap_or(self.revision.ttl);
        std::time::Duration::from_secs(ttl)
    }

    /// The object cache.
    pub fn cache(&self) -> &ObjectCache {
        &self.cache
    }

    /// The root catalog.
    pub fn root_catalog(&self) -> Arc<LoadedCatalog> {
        self.loaded()
            .get("")
            .cloned()
            .expect("the root catalog is inserted at open and never removed")
    }

    /// The loaded catalog mounted at `mountpoint`, if it is loaded.
    pub fn loaded_catalog(&self, mountpoint: &str) -> Option<Arc<LoadedCatalog>> {
        self.loaded().get(mountpoint).cloned()
    }

    /// Mountpoints of the catalogs loaded so far (`""` first).
    pub fn loaded_mountpoints(&self) -> Vec<String> {
        self.loaded().keys().cloned().collect()
    }

    /// Looks up `path` (`""` = root, else `/a/b`) by the nested-catalog walk of docs/format.md §6.14.
    /// A nested mountpoint itself is answered from the deepest catalog already loaded (the
    /// parent's copy unless the child is loaded); only paths below it load the child.
    ///
    /// # Errors
    /// Catalog read errors and download errors of nested catalogs.
    pub fn lookup(&self, path: &str) -> Result<Option<Found>> {
        let mut catalog = self.deepest_loaded(path);
        loop {
            if let Some(entry) = catalog.with(|r| r.lookup(path))? {
                return Ok(Some(Found { catalog, entry }));
            }
            let Some(child) = catalog.child_covering(path).cloned() else {
                return Ok(None);
            };
            catalog = self.load_nested(&child)?;
        }
    }

    /// The catalog that holds the children of directory `dir` (the child catalog when `dir`
    /// is a nested mountpoint, loading it if needed), with `dir`'s own entry.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::NotADirectory`], catalog and download errors.
    pub fn directory(&self, dir: &str) -> Result<Found> {
        let found = self
            .lookup(dir)?
            .ok_or_else(|| Error::NotFound(dir.to_string()))?;
        if found.entry.kind != catalog::EntryKind::Directory {
            return Err(Error::NotADirectory(dir.to_string()));
        }
        if found.entry.is_nested_mountpoint()
            && let Some(child) = found.catalog.nested.iter().find(|n| n.path == dir)
        {
            let child = child.clone();
            let catalog = self.load_nested(&child)?;
            return Ok(Found {
                catalog,
                entry: found.entry,
            });
        }
        Ok(found)
    }

    /// The children of directory `dir`, without hidden entries (docs/format.md §8.3), each with the
    /// catalog it came from.
    ///
    /// # Errors
    /// As [`MountedRevision::directory`], plus catalog read errors.
    pub fn list(&self, dir: &str) -> Result<Vec<Found>> {
        let parent = self.directory(dir)?;
        let entries = parent.catalog.with(|r| r.list(dir))?;
        Ok(entries
            .into_iter()
            .filter(|e| !e.is_hidden())
            .map(|entry| Found {
                catalog: parent.catalog.clone(),
                entry,
            })
            .collect())
    }

    /// The chunk list of chunked file `path` found in `catalog` (docs/format.md §6.11), ordered by
    /// offset and checked to tile `size` bytes exactly.
    ///
    /// # Errors
    /// Catalog read errors; [`Error::Unsupported`] if the rows are missing or do not tile
    /// the file (docs/format.md §4.6: EIO).
    pub fn chunks(&self, catalog: &LoadedCatalog, path: &str, size: u64) -> Result<Vec<Chunk>> {
        let chunks = catalog.with(|r| r.chunks(path))?;
        let mut next = 0u64;
        for c in &chunks {
            if c.offset != next {
                return Err(Error::Unsupported {
                    path: path.to_string(),
                    reason: format!("chunk list has a gap or overlap at offset {next}"),
                });
            }
            next = c.offset + c.size;
        }
        if next != size || chunks.is_empty() && size > 0 {
            return Err(Error::Unsupported {
                path: path.to_string(),
                reason: format!("chunks cover {next} bytes, the file has {size}"),
            });
        }
        Ok(chunks)
    }

    fn loaded(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<LoadedCatalog>>> {
        self.catalogs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The loaded catalog with the longest mountpoint that is `path` or a component-prefix.
    fn deepest_loaded(&self, path: &str) -> Arc<LoadedCatalog> {
        let loaded = self.loaded();
        loaded
            .iter()
            .filter(|(mp, _)| is_below_or_at(path, mp))
            .max_by_key(|(mp, _)| mp.len())
            .map(|(_, c)| c.clone())
            .expect("the root catalog (mountpoint \"\") prefixes every path")
    }

    /// Returns the loaded catalog at `child.path`, fetching and opening it if needed.
    fn load_nested(&self, child: &NestedCatalogRef) -> Result<Arc<LoadedCatalog>> {
        if let Some(c) = self.loaded().get(&child.path) {
            return Ok(c.clone());
        }
        let started = std::time::Instant::now();
        let catalog = load_catalog(&self.cache, &child.hash, &child.path)?;
        let prefix = catalog.with(|r| r.root_prefix().to_string());
        if prefix != child.path {
            tracing::warn!(
                mountpoint = %child.path,
                root_prefix = %prefix,
                "nested catalog's root_prefix differs from its mountpoint"
            );
        }
        tracing::debug!(
            mountpoint = %child.path,
            hash = %child.hash,
            ms = started.elapsed().as_millis() as u64,
            "loaded nested catalog"
        );
        let mut map = self
            .catalogs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(map
            .entry(child.path.clone())
            .or_insert_with(|| Arc::new(catalog))
            .clone())
    }
}

/// What [`MountedRevision::boot`] mounts when nothing is pinned.
#[derive(Debug)]
enum Choice {
    /// The server's verified manifest.
    Server(Manifest),
    /// The breadcrumb's cached revision.
    Local(Breadcrumb, Origin),
}

/// The decision of docs/format.md §8.2 step 4 between the server's manifest (or the error fetching
/// it) and the breadcrumb of a cached root catalog.
fn choose(server: Result<Manifest>, local: Option<Breadcrumb>) -> Result<Choice> {
    match (server, local) {
        (Ok(m), None) => Ok(Choice::Server(m)),
        (Ok(m), Some(l))
            if m.catalog_hash == l.catalog_hash
                || m.revision > l.revision
                || (m.revision == 0 && l.revision == 0) =>
        {
            Ok(Choice::Server(m))
        }
        (Ok(m), Some(l)) => {
            tracing::info!(
                cached = l.revision,
                server = m.revision,
                "the cached revision is not older than the server's; mounting the cached one \
                 (docs/format.md §8.2 step 4)"
            );
            Ok(Choice::Local(
                l,
                Origin::Cached {
                    server_revision: m.revision,
                },
            ))
        }
        (Err(e), Some(l)) if falls_back_to_cache(&e) => {
            tracing::warn!(
                cached = l.revision,
                root = %l.catalog_hash,
                error = %e,
                "OFFLINE MODE: the server's manifest is unavailable; mounting the cached \
                 revision of the breadcrumb (docs/format.md §8.2 step 4)"
            );
            Ok(Choice::Local(
                l,
                Origin::Offline {
                    reason: e.to_string(),
                },
            ))
        }
        (Err(e), _) => Err(e),
    }
}

/// Whether a failure to obtain the server's manifest lets the client serve its cached
/// revision: download failures and an outdated manifest do; a manifest or whitelist that
/// fails its signature, name or expiry check refuses the mount.
fn falls_back_to_cache(e: &Error) -> bool {
    matches!(
        e,
        Error::Http { .. }
            | Error::HttpStatus { .. }
            | Error::ObjectUnavailable { .. }
            | Error::Outdated { .. }
    )
}

/// Finds tag `name` in the history database that verified `manifest` names (`H`, docs/format.md
/// §9.5), fetching the object through the cache.
///
/// # Errors
/// [`Error::Revision`] if the manifest has no `H` or the tag does not exist (listing the
/// tags that do); download and SQLite errors of the history object.
pub fn resolve_tag(
    cache: &ObjectCache,
    fqrn: &str,
    manifest: &Manifest,
    name: &str,
) -> Result<catalog::Tag> {
    let revision_error = |reason: String| Error::Revision {
        fqrn: fqrn.to_string(),
        reason,
    };
    let history = manifest.history.ok_or_else(|| {
        revision_error(format!(
            "tag {name:?}: the manifest names no history database (no H line)"
        ))
    })?;
    let _pin = cache.get(&ObjectRequest {
        hash: history,
        suffix: Suffix::History,
        compressed: true,
        size: None,
    })?;
    let reader = HistoryReader::open(&cache.path_of(&history))?;
    if let Some(tag) = reader.tag(name)? {
        return Ok(tag);
    }
    let tags: Vec<String> = reader.tags()?.into_iter().map(|t| t.name).collect();
    Err(revision_error(format!(
        "tag {name:?} is not in the history database (tags: {})",
        tags.join(", ")
    )))
}

/// Fetches catalog object `hash` through the cache and opens it; if the cached file cannot
/// be opened it is evicted and fetched once more.
fn load_catalog(
    cache: &ObjectCache,
    hash: &ContentHash,
    mountpoint: &str,
) -> Result<LoadedCatalog> {
    let request = ObjectRequest {
        hash: *hash,
        suffix: Suffix::Catalog,
        compressed: true,
        size: None,
    };
    let mut attempt = 0;
    loop {
        let pin = cache.get(&request)?;
        let opened = CatalogReader::open(&cache.path_of(hash))
            .and_then(|reader| reader.nested_catalogs().map(|nested| (reader, nested)));
        match opened {
            Ok((reader, nested)) => {
                return Ok(LoadedCatalog {
                    mountpoint: mountpoint.to_string(),
                    hash: *hash,
                    reader: Mutex::new(reader),
                    nested,
                    _pin: pin,
                });
            }
            Err(e) if attempt == 0 => {
                drop(pin);
                tracing::warn!(%hash, error = %e, "cached catalog unreadable; refetching");
                cache.evict(hash);
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// True if `path` equals `mountpoint` or lies below it by whole components; `""` (the
/// root) covers every path.
fn is_below_or_at(path: &str, mountpoint: &str) -> bool {
    mountpoint.is_empty()
        || path == mountpoint
        || (path.starts_with(mountpoint) && path.as_bytes().get(mountpoint.len()) == Some(&b'/'))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::client::cache::tests::MemorySource;
    use catalog::{CatalogProperties, CatalogWriter, HashAlgorithm, Transition};

    fn props() -> CatalogProperties {
        CatalogProperties {
            revision: 3,
            last_modified: 1_700_000_000,
            ttl: Some(240),
            previous_revision: None,
        }
    }

    /// Builds root catalog "" with /a (dir), /a/f (file), /n (nested mountpoint) and
    /// /n/deep (nested mountpoint of a grandchild); child /n with /n/g and a hidden marker
    /// /n/.cvmfscatalog (as the publisher writes in layer and flat roots); grandchild
    /// /n/deep with /n/deep/h. Returns the manifest pointing at the root and the source.
    fn build_tree(src: &MemorySource, tmp: &std::path::Path) -> Manifest {
        let empty = src.add(b"");
        let file = |name: &str, raw: &[u8]| {
            let hash = src.add(raw);
            Entry::regular(name, 0o644, 1, 2, 1_700_000_000, raw.len() as u64, hash)
        };
        let dir = |name: &str| Entry::directory(name, 0o755, 0, 0, 1_700_000_000);
        let mut marker = Entry::regular(".cvmfscatalog", 0o644, 0, 0, 1_700_000_000, 0, empty);
        marker.flags = catalog::entry::FLAG_HIDDEN;

        // grandchild /n/deep
        let p = tmp.join("deep.db");
        let mut w = CatalogWriter::create(&p, "/n/deep").unwrap();
        w.add("/n/deep", &dir("deep"), Transition::NestedRoot)
            .unwrap();
        w.add("/n/deep/h", &file("h", b"hhh"), Transition::None)
            .unwrap();
        let deep_stats = w.finish(&props()).unwrap();
        let deep_hash = src.add(&std::fs::read(&p).unwrap());

        // child /n
        let p = tmp.join("n.db");
        let mut w = CatalogWriter::create(&p, "/n").unwrap();
        w.add("/n", &dir("n"), Transition::NestedRoot).unwrap();
        w.add("/n/g", &file("g", b"gg"), Transition::None).unwrap();
        w.add("/n/.cvmfscatalog", &marker, Transition::None)
            .unwrap();
        w.add("/n/deep", &dir("deep"), Transition::NestedMountpoint)
            .unwrap();
        let size = std::fs::metadata(tmp.join("deep.db")).unwrap().len();
        w.add_nested("/n/deep", &deep_hash, size, &deep_stats)
            .unwrap();
        let n_stats = w.finish(&props()).unwrap();
        let n_hash = src.add(&std::fs::read(&p).unwrap());

        // root
        let p = tmp.join("root.db");
        let mut w = CatalogWriter::create(&p, "").unwrap();
        w.add("", &dir(""), Transition::None).unwrap();
        w.add("/a", &dir("a"), Transition::None).unwrap();
        w.add("/a/f", &file("f", b"ffff"), Transition::None)
            .unwrap();
        w.add("/n", &dir("n"), Transition::NestedMountpoint)
            .unwrap();
        let size = std::fs::metadata(tmp.join("n.db")).unwrap().len();
        w.add_nested("/n", &n_hash, size, &n_stats).unwrap();
        w.finish(&props()).unwrap();
        let root_hash = src.add(&std::fs::read(&p).unwrap());

        manifest(root_hash, std::fs::metadata(&p).unwrap().len(), 3)
    }

    /// A manifest of repository `t.example` at `revision` whose root catalog is `catalog`
    /// (`size` bytes uncompressed), with a placeholder certificate (tests that do not
    /// verify signatures).
    pub(crate) fn manifest(catalog: ContentHash, size: u64, revision: u64) -> Manifest {
        Manifest {
            catalog_hash: catalog,
            catalog_size: size,
            ttl: 240,
            revision,
            garbage_collectable: false,
            alternative_paths: false,
            fqrn: "t.example".into(),
            certificate: ContentHash::of_bytes(HashAlgorithm::Sha1, b"unused"),
            history: None,
            timestamp: 1_700_000_000,
            meta_info: None,
            reflog: None,
        }
    }

    fn open() -> (MountedRevision, Arc<MemorySource>, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let manifest = build_tree(&src, tmp.path());
        let cache = Arc::new(ObjectCache::open(&tmp.path().join("cache"), src.clone()).unwrap());
        let repo =
            MountedRevision::open("t.example", Revision::of_manifest(&manifest), cache).unwrap();
        (repo, src, tmp)
    }

    #[test]
    fn unreadable_cached_catalog_is_evicted_and_refetched() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let manifest = build_tree(&src, tmp.path());
        let cache = Arc::new(ObjectCache::open(&tmp.path().join("cache"), src.clone()).unwrap());
        let revision = Revision::of_manifest(&manifest);
        drop(MountedRevision::open("t.example", revision, cache.clone()).unwrap());
        std::fs::write(cache.path_of(&manifest.catalog_hash), b"not a database").unwrap();
        let repo = MountedRevision::open("t.example", revision, cache).unwrap();
        assert_eq!(repo.lookup("/a/f").unwrap().unwrap().entry.size, 4);
        assert_eq!(src.fetches.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    fn crumb(seed: &[u8], revision: u64) -> Breadcrumb {
        Breadcrumb {
            catalog_hash: ContentHash::of_bytes(HashAlgorithm::Sha1, seed),
            timestamp: 1_700_000_000 + revision,
            revision,
        }
    }

    fn manifest_at(seed: &[u8], revision: u64) -> Manifest {
        manifest(
            ContentHash::of_bytes(HashAlgorithm::Sha1, seed),
            1,
            revision,
        )
    }

    #[test]
    fn boot_prefers_the_newer_of_server_and_cache() {
        let chosen =
            |server: Result<Manifest>, local: Option<Breadcrumb>| match choose(server, local) {
                Ok(Choice::Server(m)) => format!("server {}", m.revision),
                Ok(Choice::Local(l, Origin::Cached { server_revision })) => {
                    format!("cached {} (server {server_revision})", l.revision)
                }
                Ok(Choice::Local(l, Origin::Offline { .. })) => format!("offline {}", l.revision),
                Ok(Choice::Local(..)) => "other".into(),
                Err(e) => format!("error {e}"),
            };
        // No cached revision: the server's.
        assert_eq!(chosen(Ok(manifest_at(b"b", 5)), None), "server 5");
        // A strictly newer server revision wins; an older or equal one does not.
        assert_eq!(
            chosen(Ok(manifest_at(b"b", 5)), Some(crumb(b"a", 4))),
            "server 5"
        );
        assert_eq!(
            chosen(Ok(manifest_at(b"b", 4)), Some(crumb(b"a", 5))),
            "cached 5 (server 4)"
        );
        assert_eq!(
            chosen(Ok(manifest_at(b"b", 5)), Some(crumb(b"a", 5))),
            "cached 5 (server 5)"
        );
        // The same root catalog, or both at revision 0: the server's.
        assert_eq!(
            chosen(Ok(manifest_at(b"a", 5)), Some(crumb(b"a", 5))),
            "server 5"
        );
        assert_eq!(
            chosen(Ok(manifest_at(b"b", 0)), Some(crumb(b"a", 0))),
            "server 0"
        );
        // Unreachable or outdated server: offline mode if something is cached.
        let unreachable = || Error::Http {
            url: "http://x/.cvmfspublished".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            chosen(Err(unreachable()), Some(crumb(b"a", 3))),
            "offline 3"
        );
        let outdated = || Error::Outdated {
            fqrn: "t".into(),
            timestamp: 1,
            minimum: 2,
        };
        assert_eq!(chosen(Err(outdated()), Some(crumb(b"a", 3))), "offline 3");
        let text = chosen(Err(outdated()), None);
        assert!(text.contains("manifest timestamp check"), "{text}");
        assert!(chosen(Err(unreachable()), None).contains("connection refused"));
        // A bad signature refuses the mount even with a cached revision.
        let forged = Error::Verification {
            fqrn: "t".into(),
            source: catalog::Error::FingerprintNotListed("AA:BB".into()),
        };
        assert!(chosen(Err(forged), Some(crumb(b"a", 3))).starts_with("error"));
    }

    #[test]
    fn a_pinned_root_takes_revision_and_timestamp_from_its_catalog() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let manifest = build_tree(&src, tmp.path());
        let cache = Arc::new(ObjectCache::open(&tmp.path().join("cache"), src).unwrap());
        let repo = MountedRevision::open_root("t.example", manifest.catalog_hash, cache).unwrap();
        assert_eq!(
            *repo.revision(),
            Revision {
                root_hash: manifest.catalog_hash,
                revision: 3,
                timestamp: 1_700_000_000,
                ttl: 240,
            }
        );
        assert_eq!(repo.minimum_timestamp(), 1_700_000_000);
        assert_eq!(repo.lookup("/n/g").unwrap().unwrap().entry.size, 2);
    }

    #[test]
    fn tags_resolve_through_the_history_object() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let mut manifest = build_tree(&src, tmp.path());
        let cache = ObjectCache::open(&tmp.path().join("cache"), src.clone()).unwrap();
        let err = resolve_tag(&cache, "t.example", &manifest, "trunk").unwrap_err();
        assert!(err.to_string().contains("no history database"), "{err}");

        let db = tmp.path().join("history.db");
        let mut w = catalog::HistoryWriter::create(&db, "t.example").unwrap();
        let old = ContentHash::of_bytes(HashAlgorithm::Sha1, b"old root");
        for (revision, root) in [(2, old), (3, manifest.catalog_hash)] {
            w.record_publish(&catalog::Publication {
                root_catalog: root,
                catalog_size: 1,
                revision,
                timestamp: 1_700_000_000 + revision * 3600,
            })
            .unwrap();
        }
        w.finish().unwrap();
        manifest.history = Some(src.add(&std::fs::read(&db).unwrap()));
        let previous = resolve_tag(&cache, "t.example", &manifest, "trunk-previous").unwrap();
        assert_eq!((previous.revision, previous.root_hash), (2, old));
        let trunk = resolve_tag(&cache, "t.example", &manifest, "trunk").unwrap();
        assert_eq!(trunk.root_hash, manifest.catalog_hash);
        let err = resolve_tag(&cache, "t.example", &manifest, "nope").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("\"nope\" is not in the history") && text.contains("trunk-previous"),
            "{text}"
        );
    }

    #[test]
    fn component_prefix_matching() {
        assert!(is_below_or_at("/a/b", ""));
        assert!(is_below_or_at("", ""));
        assert!(is_below_or_at("/a/b", "/a/b"));
        assert!(is_below_or_at("/a/b/c", "/a/b"));
        assert!(!is_below_or_at("/a/bc", "/a/b"));
        assert!(!is_below_or_at("/a", "/a/b"));
    }

    #[test]
    fn walk_loads_nested_catalogs_lazily() {
        let (repo, _src, _tmp) = open();
        assert_eq!(repo.loaded_mountpoints(), vec![""]);

        let f = repo.lookup("/a/f").unwrap().unwrap();
        assert_eq!(f.entry.size, 4);
        assert_eq!(f.catalog.mountpoint, "");

        // The mountpoint itself comes from the parent's copy; nothing is loaded.
        let n = repo.lookup("/n").unwrap().unwrap();
        assert!(n.entry.is_nested_mountpoint());
        assert_eq!(repo.loaded_mountpoints(), vec![""]);

        // Missing names outside nested catalogs load nothing either.
        assert!(repo.lookup("/a/zzz").unwrap().is_none());
        assert!(repo.lookup("/nn").unwrap().is_none());
        assert_eq!(repo.loaded_mountpoints(), vec![""]);

        // Below the mountpoint: the child is loaded.
        let g = repo.lookup("/n/g").unwrap().unwrap();
        assert_eq!(g.entry.size, 2);
        assert_eq!(g.catalog.mountpoint, "/n");
        assert_eq!(repo.loaded_mountpoints(), vec!["", "/n"]);

        // Two levels down in one walk.
        let h = repo.lookup("/n/deep/h").unwrap().unwrap();
        assert_eq!(h.catalog.mountpoint, "/n/deep");
        assert_eq!(repo.loaded_mountpoints(), vec!["", "/n", "/n/deep"]);
        assert!(repo.lookup("/n/deep/missing").unwrap().is_none());

        // Once loaded, the mountpoint is answered by the child's root copy.
        let n = repo.lookup("/n").unwrap().unwrap();
        assert!(n.entry.is_nested_root());
    }

    #[test]
    fn listing_a_mountpoint_uses_the_child_catalog() {
        let (repo, src, _tmp) = open();
        let names = |dir: &str| {
            let mut v: Vec<String> = repo
                .list(dir)
                .unwrap()
                .into_iter()
                .map(|f| f.entry.name)
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(""), vec!["a", "n"]);
        // The hidden marker is not listed (as stock cvmfs2, docs/format.md §6.6), lookup finds it.
        assert_eq!(names("/n"), vec!["deep", "g"]);
        let marker = repo.lookup("/n/.cvmfscatalog").unwrap().unwrap();
        assert!(marker.entry.is_hidden());
        assert_eq!(repo.loaded_mountpoints(), vec!["", "/n"]);
        assert_eq!(names("/n/deep"), vec!["h"]);
        assert!(matches!(repo.list("/a/f"), Err(Error::NotADirectory(_))));
        assert!(matches!(repo.list("/x"), Err(Error::NotFound(_))));

        // Each catalog object was downloaded once.
        let fetches = src.fetches.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(fetches, 3);
    }
}
