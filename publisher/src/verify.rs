//! `verify`: checks a published revision end to end, from a repository directory or over
//! HTTP, as a client would see it: manifest, certificate and whitelist signatures (CVMFS
//! docs/format.md §7.5), then every catalog reachable from the root catalog (docs/format.md §6) and every
//! content object its rows name — whole files and chunks — by hash. Every fault is
//! collected (the walk goes on), so one run names all of them.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

use catalog::{CatalogReader, ContentHash, EntryKind, Manifest, RsaPublicKey, Suffix};

use crate::error::{Error, Result};

/// Where the served files come from.
pub trait Fetcher: Send + Sync {
    /// The file at `rel` (e.g. `.cvmfspublished`, `data/ab/cd…C`); `None` if it does not
    /// exist.
    fn get(&self, rel: &str) -> Result<Option<Vec<u8>>>;
    /// A label for messages.
    fn label(&self) -> String;
}

/// The served tree of a repository directory (`DIR/srv`).
pub struct DirFetcher {
    /// The `srv` directory.
    pub srv: PathBuf,
}

impl Fetcher for DirFetcher {
    fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let path = self.srv.join(rel);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }

    fn label(&self) -> String {
        self.srv.display().to_string()
    }
}

/// A repository served over HTTP at `base` (`http://host/cvmfs/<fqrn>`). Must be used on a
/// blocking thread (it blocks on `handle` for each request).
pub struct HttpFetcher {
    /// The base URL, without trailing `/`.
    pub base: String,
    /// The HTTP client.
    pub client: reqwest::Client,
    /// The runtime that drives the client.
    pub handle: tokio::runtime::Handle,
}

impl Fetcher for HttpFetcher {
    fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let url = format!("{}/{rel}", self.base);
        let err = |e: reqwest::Error| Error::io(format!("GET {url}"), std::io::Error::other(e));
        self.handle.block_on(async {
            let resp = self.client.get(&url).send().await.map_err(err)?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let resp = resp.error_for_status().map_err(err)?;
            Ok(Some(resp.bytes().await.map_err(err)?.to_vec()))
        })
    }

    fn label(&self) -> String {
        self.base.clone()
    }
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// The revision checked (0 if the manifest could not be read).
    pub revision: u64,
    /// Catalogs checked.
    pub catalogs: usize,
    /// Distinct content objects checked (files and chunks).
    pub objects: usize,
    /// Every fault, one line each, naming the object and where it is referenced.
    pub faults: Vec<String>,
}

/// Verifies the revision `fetch` serves, for repository `fqrn` signed under one of
/// `master_keys`, at time `now` (Unix seconds). Errors only when the manifest itself is
/// missing or `scratch` is unusable; everything else is a fault in the report.
pub fn verify(
    fetch: &dyn Fetcher,
    fqrn: &str,
    master_keys: &[RsaPublicKey],
    now: u64,
    scratch: &Path,
) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let manifest_bytes = fetch
        .get(".cvmfspublished")?
        .ok_or_else(|| Error::NotRepository {
            path: PathBuf::from(fetch.label()),
            reason: ".cvmfspublished is missing".into(),
        })?;
    let manifest: Manifest = match Manifest::parse(&manifest_bytes) {
        Ok(m) => m.manifest,
        Err(e) => {
            report.faults.push(format!(".cvmfspublished: {e}"));
            return Ok(report);
        }
    };
    report.revision = manifest.revision;
    let cert_rel = manifest.certificate.object_path(Suffix::Certificate);
    let whitelist = fetch.get(".cvmfswhitelist")?;
    match (fetch.get(&cert_rel)?, whitelist) {
        (None, _) => report
            .faults
            .push(format!("certificate {cert_rel}: missing")),
        (_, None) => report.faults.push(".cvmfswhitelist: missing".into()),
        (Some(cert), Some(wl)) => {
            if let Err(e) =
                catalog::verify_repository(&manifest_bytes, &cert, &wl, master_keys, fqrn, now)
            {
                report.faults.push(format!("signatures: {e}"));
            }
        }
    }
    let mut seen_objects: HashSet<(ContentHash, bool)> = HashSet::new();
    let mut seen_catalogs: HashSet<ContentHash> = HashSet::new();
    let mut queue: VecDeque<(ContentHash, String)> = VecDeque::new();
    queue.push_back((manifest.catalog_hash, String::new()));
    if let Some(h) = manifest.history {
        check_object(fetch, &h, Suffix::History, "history database", &mut report);
    }
    while let Some((hash, prefix)) = queue.pop_front() {
        if !seen_catalogs.insert(hash) {
            continue;
        }
        report.catalogs += 1;
        let what = format!(
            "catalog {} ({})",
            hash.object_path(Suffix::Catalog),
            shown(&prefix)
        );
        let Some(stored) = fetch.get(&hash.object_path(Suffix::Catalog))? else {
            report.faults.push(format!("{what}: missing"));
            continue;
        };
        let file = scratch.join(format!("{}.db", hash.to_hex()));
        let inflated = std::fs::File::create(&file)
            .map_err(|e| Error::io(format!("create {}", file.display()), e))
            .and_then(|f| {
                let mut w = std::io::BufWriter::new(f);
                catalog::verify_and_inflate(&stored[..], &mut w, &hash, true)?;
                w.flush()
                    .map_err(|e| Error::io(format!("write {}", file.display()), e))
            });
        if let Err(e) = inflated {
            report.faults.push(format!("{what}: {e}"));
            continue;
        }
        let walked = walk_catalog(fetch, &file, &prefix, &mut report, &mut seen_objects);
        let _ = std::fs::remove_file(&file);
        match walked {
            Ok(nested) => queue.extend(nested),
            Err(e) => report.faults.push(format!("{what}: {e}")),
        }
    }
    report.objects = seen_objects.len();
    Ok(report)
}

fn shown(path: &str) -> &str {
    if path.is_empty() { "/" } else { path }
}

fn check_object(
    fetch: &dyn Fetcher,
    hash: &ContentHash,
    suffix: Suffix,
    what: &str,
    report: &mut VerifyReport,
) {
    let rel = hash.object_path(suffix);
    match fetch.get(&rel) {
        Ok(None) => report
            .faults
            .push(format!("object {rel} ({what}): missing")),
        Ok(Some(stored)) => {
            if let Err(e) = catalog::compression::verify(&stored, hash) {
                report.faults.push(format!("object {rel} ({what}): {e}"));
            }
        }
        Err(e) => report.faults.push(format!("object {rel} ({what}): {e}")),
    }
}

/// Checks every row of one catalog; returns its nested catalogs.
fn walk_catalog(
    fetch: &dyn Fetcher,
    file: &Path,
    prefix: &str,
    report: &mut VerifyReport,
    seen: &mut HashSet<(ContentHash, bool)>,
) -> Result<Vec<(ContentHash, String)>> {
    let reader = CatalogReader::open(file)?;
    if reader.root_prefix() != prefix {
        report.faults.push(format!(
            "catalog for {}: root prefix is {:?}",
            shown(prefix),
            reader.root_prefix()
        ));
    }
    let nested: Vec<(ContentHash, String)> = reader
        .nested_catalogs()?
        .into_iter()
        .map(|n| (n.hash, n.path))
        .collect();
    let mut dirs = vec![prefix.to_string()];
    while let Some(dir) = dirs.pop() {
        for e in reader.list(&dir)? {
            let path = format!("{dir}/{}", e.name);
            match e.kind {
                EntryKind::Directory if !e.is_nested_mountpoint() => dirs.push(path),
                EntryKind::Regular if e.is_chunked() => {
                    for c in reader.chunks(&path)? {
                        if seen.insert((c.hash, true)) {
                            let what = format!("chunk at {} of {path}", c.offset);
                            check_object(fetch, &c.hash, Suffix::Partial, &what, report);
                        }
                    }
                }
                EntryKind::Regular => match e.hash {
                    Some(h) => {
                        if seen.insert((h, false)) {
                            check_object(fetch, &h, Suffix::None, &path, report);
                        }
                    }
                    None => report
                        .faults
                        .push(format!("{path}: regular file without hash")),
                },
                _ => {}
            }
        }
    }
    Ok(nested)
}

#[cfg(test)]
mod tests {
    // End-to-end tests (fresh repository passes, a corrupted object is named) are in
    // `ingest::tests::verify_names_corrupted_objects`, which has the repository builders.
    use super::*;

    #[test]
    fn missing_manifest_is_an_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = DirFetcher {
            srv: dir.path().to_path_buf(),
        };
        assert!(verify(&f, "x", &[], 0, dir.path()).is_err());
        std::fs::write(dir.path().join(".cvmfspublished"), b"garbage")
            .unwrap_or_else(|e| panic!("{e}"));
        let r = verify(&f, "x", &[], 0, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.faults.len(), 1);
        assert!(r.faults[0].starts_with(".cvmfspublished"));
    }
}
