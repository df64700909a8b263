//! `gc`: deletes objects of `DIR/srv/data` that no retained revision references (CVMFS
//! docs/format.md §1.3 object names; the idea of `cvmfs_server gc`, mark and sweep).
//!
//! * Retained revisions: the current one and the `keep - 1` newest before it, found through
//!   the tag history the manifest's `H` names (docs/format.md §9.5; every publish adds a tag with the
//!   root catalog hash). A repository without history retains only the current revision.
//! * Mark: every catalog reachable from a retained root catalog (`C`), every whole-file
//!   object (no suffix) and chunk (`P`) their rows name, and the current manifest's
//!   certificate (`X`), history (`H`) and meta-info (`M`). Catalogs are immutable, so one
//!   shared by several revisions is read once.
//! * Sweep: every file `data/<hh>/<38 hex>[suffix]` not marked and older than `grace` is
//!   unlinked. Files that do not look like objects, and `data/txn`, are left alone.
//!
//! `gc` holds the repository lock (`DIR/lock`) like `ingest` and `sync`, so it never races a
//! publish; `grace` additionally spares fresh objects of writers that do not take the lock.
//! It only ever unlinks unreferenced objects and never touches the manifest, so killing it
//! at any point leaves a complete repository, and a rerun finishes the job.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use catalog::{CatalogReader, ContentHash, EntryKind, HistoryReader, Suffix};

use crate::error::{Error, Result};
use crate::objects::{inflate_catalog, read_object};
use crate::repo::Repo;

/// Settings of a `gc` run.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Revisions to retain, counting the current one (at least 1).
    pub keep_revisions: usize,
    /// Objects modified less than this long ago are never deleted.
    pub grace: Duration,
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            keep_revisions: DEFAULT_KEEP_REVISIONS,
            grace: DEFAULT_GRACE,
            dry_run: false,
        }
    }
}

/// Default `--keep-revisions`.
pub const DEFAULT_KEEP_REVISIONS: usize = 3;
/// Default `--grace`: one hour.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// What a `gc` run found and did.
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    /// Retained revisions (revision, root catalog), newest first.
    pub retained: Vec<(u64, ContentHash)>,
    /// Catalogs read.
    pub catalogs: usize,
    /// Distinct objects referenced by the retained revisions.
    pub referenced: usize,
    /// Object files found under `data/`.
    pub scanned: usize,
    /// Unreferenced objects kept because they are younger than the grace period.
    pub young: usize,
    /// Objects deleted (or, with `dry_run`, that would be).
    pub deleted: usize,
    /// Their stored bytes.
    pub bytes_freed: u64,
    /// With `dry_run`: the paths (`data/<hh>/<name>`) that would be deleted.
    pub candidates: Vec<String>,
}

/// The retained revisions of `repo` (see the module docs), newest first; the current
/// revision is always the first. Blocking.
///
/// Errors when the manifest or the history object cannot be read.
pub fn retained_revisions(repo: &Repo, keep: usize) -> Result<Vec<(u64, ContentHash)>> {
    let m = repo.current_manifest()?.manifest;
    let mut out = vec![(m.revision, m.catalog_hash)];
    let Some(h) = m.history else {
        return Ok(out);
    };
    let tmp = tempfile::tempdir_in(repo.tmp_dir()?)
        .map_err(|e| Error::io("creating temp dir in DIR/tmp", e))?;
    let file = tmp.path().join("history.db");
    let raw = read_object(
        &repo.store,
        &h,
        Suffix::History,
        catalog::history::MAX_HISTORY_SIZE,
    )?;
    std::fs::write(&file, raw).map_err(|e| Error::io(format!("write {}", file.display()), e))?;
    let mut tags = HistoryReader::open(&file)?.tags()?;
    tags.sort_by_key(|t| std::cmp::Reverse(t.revision));
    for t in tags {
        if out.len() >= keep.max(1) {
            break;
        }
        if t.revision < out[out.len() - 1].0 {
            out.push((t.revision, t.root_hash));
        }
    }
    Ok(out)
}

/// Every object (as its path `data/<hh>/<rest><suffix>`) that the revisions with root
/// catalogs `roots` reference, and the number of catalogs read. Blocking.
///
/// Errors when a catalog is missing or damaged: then nothing may be deleted.
pub fn referenced_objects(repo: &Repo, roots: &[ContentHash]) -> Result<(HashSet<String>, usize)> {
    let tmp = tempfile::tempdir_in(repo.tmp_dir()?)
        .map_err(|e| Error::io("creating temp dir in DIR/tmp", e))?;
    let mut marked: HashSet<String> = HashSet::new();
    let mut seen: HashSet<ContentHash> = HashSet::new();
    let mut queue: Vec<ContentHash> = roots.to_vec();
    while let Some(hash) = queue.pop() {
        if !seen.insert(hash) {
            continue;
        }
        marked.insert(hash.object_path(Suffix::Catalog));
        let file = tmp.path().join("catalog.db");
        inflate_catalog(&repo.store, &hash, &file)?;
        let reader = CatalogReader::open(&file)?;
        queue.extend(reader.nested_catalogs()?.into_iter().map(|n| n.hash));
        let mut dirs = vec![reader.root_prefix().to_string()];
        while let Some(dir) = dirs.pop() {
            for e in reader.list(&dir)? {
                let path = format!("{dir}/{}", e.name);
                match e.kind {
                    EntryKind::Directory if !e.is_nested_mountpoint() => dirs.push(path),
                    EntryKind::Regular if e.is_chunked() => {
                        for c in reader.chunks(&path)? {
                            marked.insert(c.hash.object_path(Suffix::Partial));
                        }
                    }
                    EntryKind::Regular => {
                        if let Some(h) = e.hash {
                            marked.insert(h.object_path(Suffix::None));
                        }
                    }
                    _ => {}
                }
            }
        }
        drop(reader);
        let _ = std::fs::remove_file(&file);
    }
    Ok((marked, seen.len()))
}

/// Whether a file name in `data/<hh>/` is an object name: 38 lowercase hex digits, then an
/// optional algorithm tag (`-rmd160`, `-shake128`) and suffix letter (docs/format.md §1.3).
fn is_object_name(name: &str) -> bool {
    name.len() >= 38
        && name
            .bytes()
            .take(38)
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Runs `gc` on the repository in `dir` (see the module docs). Blocking; holds the
/// repository lock throughout.
///
/// Errors when the repository, a retained catalog or the history cannot be read (nothing is
/// deleted then), or when an unlink fails (what was deleted before stays deleted — all of it
/// unreferenced).
pub fn gc(dir: &Path, options: &GcOptions) -> Result<GcReport> {
    let _lock = Repo::lock(dir)?;
    let repo = Repo::open(dir)?;
    let manifest = repo.current_manifest()?.manifest;
    let retained = retained_revisions(&repo, options.keep_revisions)?;
    let roots: Vec<ContentHash> = retained.iter().map(|(_, h)| *h).collect();
    let (mut marked, catalogs) = referenced_objects(&repo, &roots)?;
    marked.insert(manifest.certificate.object_path(Suffix::Certificate));
    if let Some(h) = manifest.history {
        marked.insert(h.object_path(Suffix::History));
    }
    if let Some(m) = manifest.meta_info {
        marked.insert(m.object_path(Suffix::MetaInfo));
    }
    let mut report = GcReport {
        retained,
        catalogs,
        referenced: marked.len(),
        ..GcReport::default()
    };
    let cutoff = SystemTime::now()
        .checked_sub(options.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let data = repo.store.root().join("data");
    for b in 0..=255u8 {
        let hh = format!("{b:02x}");
        let bucket = data.join(&hh);
        let entries = match std::fs::read_dir(&bucket) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("list {}", bucket.display()), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("list {}", bucket.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_object_name(&name) {
                continue;
            }
            let Ok(meta) = entry.metadata() else {
                continue; // vanished
            };
            if !meta.is_file() {
                continue;
            }
            report.scanned += 1;
            let rel = format!("data/{hh}/{name}");
            if marked.contains(&rel) {
                continue;
            }
            if meta.modified().is_ok_and(|t| t > cutoff) {
                report.young += 1;
                continue;
            }
            if options.dry_run {
                report.candidates.push(rel);
            } else {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(Error::io(format!("remove {}", entry.path().display()), e));
                    }
                }
            }
            report.deleted += 1;
            report.bytes_freed += meta.len();
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::ingest::{IngestOptions, ingest};
    use crate::layer::tests::TarBuilder;
    use crate::publish::{init, load_namespace, publish};
    use crate::reference::ImageName;
    use crate::removal::{prune, references, remove_image};
    use crate::source::Source;
    use crate::source::oci_layout::LayoutSource;
    use ::tests::ok;

    fn big(seed: u8, n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
            .collect()
    }

    async fn ingest_layout(repo: &Path, work: &Path, name: &str, tars: &[Vec<u8>]) -> ContentHash {
        let dir = work.join(name.replace(['/', ':'], "_"));
        ok(::tests::image::write_layout(&dir, "1", tars));
        let n = ok(ImageName::parse(name));
        let src = Source::Layout(LayoutSource::new(&dir, Some("1".into()), n));
        ok(ingest(repo, vec![src], &IngestOptions::default()).await);
        ok(ok(Repo::open(repo)).current_manifest())
            .manifest
            .catalog_hash
    }

    /// Independent of `gc`: (objects, catalogs) of the revisions `roots`, walking every
    /// catalog with the catalog crate.
    fn walk(repo: &Repo, roots: &[ContentHash]) -> BTreeSet<String> {
        let tmp = ok(tempfile::tempdir());
        let mut out = BTreeSet::new();
        let mut todo: Vec<ContentHash> = roots.to_vec();
        while let Some(h) = todo.pop() {
            out.insert(h.object_path(Suffix::Catalog));
            let f = tmp.path().join(h.to_hex());
            ok(inflate_catalog(&repo.store, &h, &f));
            let r = ok(CatalogReader::open(&f));
            for n in ok(r.nested_catalogs()) {
                todo.push(n.hash);
            }
            fn rows(r: &CatalogReader, dir: &str, out: &mut BTreeSet<String>) {
                for e in r.list(dir).unwrap_or_else(|e| panic!("{e}")) {
                    let p = format!("{dir}/{}", e.name);
                    if e.kind == EntryKind::Directory && !e.is_nested_mountpoint() {
                        rows(r, &p, out);
                    } else if e.kind == EntryKind::Regular {
                        let chunks = r.chunks(&p).unwrap_or_else(|e| panic!("{e}"));
                        for c in chunks {
                            out.insert(c.hash.object_path(Suffix::Partial));
                        }
                        if let Some(h) = e.hash {
                            out.insert(h.object_path(Suffix::None));
                        }
                    }
                }
            }
            rows(&r, r.root_prefix(), &mut out);
        }
        out
    }

    fn on_disk(srv: &Path) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for b in 0..=255u8 {
            let hh = format!("{b:02x}");
            let Ok(rd) = std::fs::read_dir(srv.join("data").join(&hh)) else {
                continue;
            };
            for e in rd {
                let e = ok(e);
                out.insert(format!("data/{hh}/{}", e.file_name().to_string_lossy()));
            }
        }
        out
    }

    /// Reads (and hash-checks) every object of revision `root`.
    fn read_revision(repo: &Repo, root: &ContentHash) {
        for rel in walk(repo, &[*root]) {
            let bytes = ok(std::fs::read(repo.store.root().join(&rel)));
            let stem = &rel[5..].replace('/', "");
            let hex = stem.trim_end_matches(['C', 'P']);
            let h = ok(ContentHash::parse_hex(hex));
            ok(catalog::compression::verify(&bytes, &h));
        }
    }

    fn age(path: &PathBuf, secs: u64) {
        let f = ok(std::fs::File::options().write(true).open(path));
        let t = SystemTime::now() - Duration::from_secs(secs);
        ok(f.set_modified(t));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gc_keeps_exactly_the_retained_revisions() {
        let work = ok(tempfile::tempdir());
        let dir = work.path().join("repo");
        ok(init(&dir, "gc.example.org", 60));
        let base = TarBuilder::new()
            .file("bin/tool", 0o755, &big(3, 6 << 20)) // chunked (> 4 MiB)
            .file("etc/a", 0o644, b"a")
            .finish();
        let only_a = TarBuilder::new()
            .file("a/data", 0o644, &big(5, 9000))
            .finish();
        let only_b = TarBuilder::new()
            .file("b/data", 0o644, &big(7, 9000))
            .finish();
        let r1 = ingest_layout(&dir, work.path(), "localhost/a:1", &[base.clone(), only_a]).await;
        let r2 = ingest_layout(&dir, work.path(), "localhost/b:1", &[base, only_b]).await;
        // revision 3: a:1 removed and pruned
        let repo = ok(Repo::open(&dir));
        let mut ns = ok(load_namespace(&repo));
        assert!(remove_image(&mut ns, "localhost/a:1"));
        let refs = ok(references(&repo, &ns));
        let pruned = ok(prune(&repo, &mut ns, &refs, true));
        assert_eq!((pruned.flats.len(), pruned.layers.len()), (1, 1));
        assert_eq!(pruned.chains.len(), 1);
        ok(publish(&repo, &mut ns));
        let m3 = ok(repo.current_manifest()).manifest;
        let r3 = m3.catalog_hash;
        assert_eq!(m3.revision, 3);
        // objects only revision 1 had exist before gc
        let only_r1: BTreeSet<String> = walk(&repo, &[r1])
            .difference(&walk(&repo, &[r2, r3]))
            .cloned()
            .collect();
        assert!(!only_r1.is_empty());
        let before = on_disk(repo.store.root());

        // dry run: nothing deleted
        let dry = ok(gc(
            &dir,
            &GcOptions {
                keep_revisions: 2,
                grace: Duration::ZERO,
                dry_run: true,
            },
        ));
        assert_eq!(on_disk(repo.store.root()), before);
        assert_eq!(dry.candidates.len(), dry.deleted);
        assert!(dry.deleted > 0);

        // grace: everything is fresh, nothing goes
        let fresh = ok(gc(
            &dir,
            &GcOptions {
                keep_revisions: 2,
                grace: Duration::from_secs(3600),
                dry_run: false,
            },
        ));
        assert_eq!(fresh.deleted, 0);
        assert_eq!(fresh.young, dry.deleted);
        assert_eq!(on_disk(repo.store.root()), before);

        let report = ok(gc(
            &dir,
            &GcOptions {
                keep_revisions: 2,
                grace: Duration::ZERO,
                dry_run: false,
            },
        ));
        assert_eq!(
            report.retained.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            vec![3, 2]
        );
        assert_eq!(report.deleted, dry.deleted);
        assert!(report.bytes_freed > 0);
        let mut expected = walk(&repo, &[r3, r2]);
        expected.insert(m3.certificate.object_path(Suffix::Certificate));
        if let Some(h) = m3.history {
            expected.insert(h.object_path(Suffix::History));
        }
        let after: BTreeSet<String> = on_disk(repo.store.root())
            .into_iter()
            .filter(|p| !p.starts_with("data/txn"))
            .collect();
        assert_eq!(after, expected);
        for o in &only_r1 {
            assert!(!repo.store.root().join(o).exists(), "{o} survived");
        }
        // the retained older revision still reads, the current one verifies
        read_revision(&repo, &r2);
        let key = ok(repo.master_public_key());
        let v = ok(crate::verify::verify(
            &crate::verify::DirFetcher {
                srv: repo.store.root().to_path_buf(),
            },
            "gc.example.org",
            &[key],
            crate::publish::unix_now(),
            work.path(),
        ));
        assert!(v.faults.is_empty(), "{:?}", v.faults);

        // a second run finds nothing more; an old stray object goes, a fresh one stays
        let stray_old = repo
            .store
            .root()
            .join(format!("data/ab/{}", "1".repeat(38)));
        let stray_new = repo
            .store
            .root()
            .join(format!("data/ab/{}P", "2".repeat(38)));
        let not_object = repo.store.root().join("data/ab/README");
        for p in [&stray_old, &stray_new, &not_object] {
            ok(std::fs::write(p, b"x"));
        }
        age(&stray_old, 7200);
        age(&not_object, 7200);
        let again = ok(gc(
            &dir,
            &GcOptions {
                keep_revisions: 2,
                grace: Duration::from_secs(3600),
                dry_run: false,
            },
        ));
        assert_eq!((again.deleted, again.young), (1, 1));
        assert!(!stray_old.exists() && stray_new.exists() && not_object.exists());

        // keep 1: only the current revision's objects remain
        ok(std::fs::remove_file(&stray_new));
        ok(gc(
            &dir,
            &GcOptions {
                keep_revisions: 1,
                grace: Duration::ZERO,
                dry_run: false,
            },
        ));
        let mut expected = walk(&repo, &[r3]);
        expected.insert(m3.certificate.object_path(Suffix::Certificate));
        if let Some(h) = m3.history {
            expected.insert(h.object_path(Suffix::History));
        }
        let after: BTreeSet<String> = on_disk(repo.store.root())
            .into_iter()
            .filter(|p| !p.starts_with("data/txn") && !p.ends_with("README"))
            .collect();
        assert_eq!(after, expected);
    }

    #[test]
    fn object_names() {
        assert!(is_object_name(&"a".repeat(38)));
        assert!(is_object_name(&format!("{}C", "0".repeat(38))));
        assert!(is_object_name(&format!("{}-rmd160P", "0".repeat(38))));
        assert!(!is_object_name("README"));
        assert!(!is_object_name(&"A".repeat(38)));
    }
}
