//! `sync`: keeps the repository equal to a [`Recipe`] (docs/architecture.md §2; DUCC's
//! `convert`/`loop`, docs/lazy-snapshotters.md §7), one pass = at most one new revision.
//!
//! A pass, under the repository lock (`DIR/lock`, the one `ingest` and `gc` take):
//!
//! 1. reads what the current revision publishes ([`crate::removal::published_images`]);
//! 2. expands tag globs through each registry's tag list;
//! 3. checks every wanted image with one manifest `HEAD` (a few at a time): *unchanged* when
//!    the published manifest/index digest, platform set and public symlink target are what
//!    the registry and recipe now say (a digest-pinned reference needs no request at all);
//! 4. ingests each new or changed image on its own (so one bad image or registry cannot spoil
//!    the others; a failed image keeps its previous state), re-pointing public symlinks;
//! 5. removes every published image the recipe does not want — **everything in the
//!    repository that is not in the recipe, including images ingested by hand** (DUCC
//!    wishlist semantics, minus DUCC's manual removal) — except images a failed entry might
//!    still want (an unreachable registry's glob keeps every tag it matched before);
//! 6. prunes `.flat`, `.layers`, `.chainids` entries no remaining image references
//!    ([`crate::removal::prune`]);
//! 7. publishes one revision if anything changed.
//!
//! Objects are never deleted here; that is `gc`'s job.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;

use crate::error::{Error, Result};
use crate::events::{EventLog, ImageEvent, Outcome, PassSummary};
use crate::ingest::{IngestOptions, IngestSummary, blocking, ingest_batch};
use crate::layer::Limits;
use crate::pipeline::Pool;
use crate::progress::Progress;
use crate::publish::{Namespace, load_namespace, publish};
use crate::recipe::{Recipe, RecipeEntry};
use crate::reference::ImageName;
use crate::removal::{PublishedImage, prune, published_images, references, remove_image};
use crate::repo::Repo;
use crate::source::registry::{RegistryOptions, RegistrySource};
use crate::source::{Document, Platform, Source, parse_document, select_platforms};

/// How many manifest checks (and tag lists) run at the same time.
pub const CHECK_CONCURRENCY: usize = 16;

/// Settings of a `sync` pass.
#[derive(Clone, Debug, Default)]
pub struct SyncOptions {
    /// Credentials, auth file, plain-HTTP hosts (as for `ingest`).
    pub registry: RegistryOptions,
    /// Layer limits (as `ingest --max-layer-size`).
    pub limits: Limits,
    /// Plan only: no lock, no ingest, no revision (the event log is not written either).
    pub dry_run: bool,
}

/// What one pass did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default)]
pub struct PassReport {
    /// One event per image or failed recipe entry: failures first in recipe order, then
    /// the rest by public path.
    pub events: Vec<ImageEvent>,
    /// Counts, revision and time.
    pub summary: PassSummary,
    /// `.flat`/`.layers`/`.chainids` entries pruned.
    pub pruned: usize,
}

impl PassReport {
    /// The failed images and entries.
    pub fn failures(&self) -> impl Iterator<Item = &ImageEvent> {
        self.events.iter().filter(|e| e.event == Outcome::Failed)
    }
}

/// One concrete wanted image.
#[derive(Clone, Debug)]
struct Want {
    name: ImageName,
    entry: usize,
}

/// The registry options for `entry` (`http://` adds its registry to the plain-HTTP hosts).
fn registry_options(base: &RegistryOptions, entry: &RecipeEntry) -> RegistryOptions {
    let mut o = base.clone();
    if entry.plain_http && !o.insecure.contains(&entry.name.registry) {
        o.insecure.push(entry.name.registry.clone());
    }
    o
}

/// One HTTP client per registry (and plain-HTTP setting) for the whole pass: creating a
/// client per image costs TLS set-up and a token round trip each.
#[derive(Default)]
struct Clients(std::sync::Mutex<HashMap<(String, bool), RegistrySource>>);

impl Clients {
    /// A source for `name`, sharing the client of earlier sources of its registry.
    fn source(
        &self,
        name: ImageName,
        entry: &RecipeEntry,
        options: &SyncOptions,
    ) -> Result<RegistrySource> {
        let key = (name.registry.clone(), entry.plain_http);
        let mut map = self
            .0
            .lock()
            .map_err(|_| Error::Task("registry client cache poisoned".into()))?;
        if let Some(s) = map.get(&key).and_then(|p| p.sibling(name.clone())) {
            return Ok(s);
        }
        let opts = registry_options(&options.registry, entry);
        let proto = RegistrySource::new(name.clone(), &opts)?;
        let source = proto
            .sibling(name)
            .ok_or_else(|| Error::Task("registry client for another registry".into()))?;
        map.insert(key, proto);
        Ok(source)
    }
}

fn failed(image: String, started: Instant, error: &Error) -> ImageEvent {
    ImageEvent {
        event: Outcome::Failed,
        image,
        digest: None,
        previous_digest: None,
        seconds: started.elapsed().as_secs_f64(),
        error: Some(error_text(error)),
    }
}

/// `error` and its sources, `: `-separated, skipping a source whose text is already there
/// (the registry client's errors repeat their source; the root cause, e.g. "Connection
/// refused", is often only in the last one).
fn error_text(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

/// Expands the recipe into concrete images. Failed glob entries come back as events and as
/// entry indexes whose published images must be kept.
async fn expand(
    recipe: &Recipe,
    options: &SyncOptions,
    clients: &Clients,
) -> (Vec<Want>, Vec<ImageEvent>, HashSet<usize>) {
    let listed: Vec<(usize, Instant, Result<Vec<String>>)> = futures::stream::iter(
        recipe
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_glob()),
    )
    .map(|(i, e)| async move {
        let started = Instant::now();
        let r = async {
            clients
                .source(e.with_tag("latest"), e, options)?
                .list_tags()
                .await
        }
        .await;
        (i, started, r)
    })
    .buffer_unordered(CHECK_CONCURRENCY)
    .collect()
    .await;
    let mut tags: HashMap<usize, Vec<String>> = HashMap::new();
    let mut events = Vec::new();
    let mut failed_entries = HashSet::new();
    for (i, started, r) in listed {
        match r {
            Ok(t) => {
                tags.insert(i, t);
            }
            Err(e) => {
                failed_entries.insert(i);
                events.push((i, failed(recipe.entries[i].text.clone(), started, &e)));
            }
        }
    }
    events.sort_by_key(|(i, _)| *i);
    let mut wants: Vec<Want> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (i, e) in recipe.entries.iter().enumerate() {
        let names: Vec<ImageName> = match (&e.tag_glob, tags.get(&i)) {
            (Some(g), Some(t)) => {
                let mut t: Vec<&String> = t
                    .iter()
                    .filter(|t| crate::recipe::glob_matches(g, t))
                    .collect();
                t.sort();
                if t.is_empty() {
                    tracing::warn!(entry = %e.text, "tag glob matches no tag");
                }
                t.into_iter().map(|t| e.with_tag(t)).collect()
            }
            (Some(_), None) => Vec::new(),
            (None, _) => vec![e.name.clone()],
        };
        for name in names {
            if seen.insert(name.public_path()) {
                wants.push(Want { name, entry: i });
            } else {
                tracing::warn!(image = %name, entry = %e.text, "image wanted twice; the first entry wins");
            }
        }
    }
    (
        wants,
        events.into_iter().map(|(_, e)| e).collect(),
        failed_entries,
    )
}

/// Strips the leading `../` of a relative symlink target.
fn target_tail(t: &str) -> &str {
    let mut t = t;
    while let Some(r) = t.strip_prefix("../") {
        t = r;
    }
    t
}

/// Whether the published image is what `entry` wants when the registry names `digest`:
/// same manifest/index digest, same set of platforms (for an index), public symlink on the
/// default platform.
fn is_current(p: &PublishedImage, digest: &str, entry: &RecipeEntry) -> bool {
    if p.top_digest != digest {
        return false;
    }
    let Some(index) = &p.index else {
        return true;
    };
    let Ok(Document::Index(entries)) = parse_document(&p.path, index) else {
        return false;
    };
    let Ok(chosen) = select_platforms(&p.path, &entries, &entry.platforms) else {
        return false;
    };
    let platforms: Vec<Platform> = chosen.into_iter().map(|(_, pl)| pl).collect();
    let dirs: HashSet<String> = platforms.iter().map(Platform::dir_name).collect();
    if dirs != p.platforms.keys().cloned().collect::<HashSet<_>>() {
        return false;
    }
    // The default-platform rule of `FetchedSet::default_image`.
    let d = &entry.default_platform;
    let default = platforms
        .iter()
        .find(|pl| *pl == d)
        .or_else(|| platforms.iter().find(|pl| d.matches(pl)))
        .or(platforms.first());
    match (default, &p.public_target) {
        (Some(pl), Some(t)) => p
            .platforms
            .get(&pl.dir_name())
            .is_some_and(|r| target_tail(r) == target_tail(t)),
        _ => false,
    }
}

/// Result of checking one wanted image.
enum Check {
    Unchanged(String),
    Ingest {
        source: Box<RegistrySource>,
        digest: String,
        previous: Option<String>,
    },
    Failed(Error),
}

async fn check(
    want: &Want,
    entry: &RecipeEntry,
    published: Option<&PublishedImage>,
    options: &SyncOptions,
    clients: &Clients,
) -> Check {
    if let (Some(d), Some(p)) = (&want.name.digest, published)
        && is_current(p, &d.to_string(), entry)
    {
        return Check::Unchanged(d.to_string());
    }
    let source = match clients.source(want.name.clone(), entry, options) {
        Ok(s) => s,
        Err(e) => return Check::Failed(e),
    };
    match source.manifest_digest().await {
        Ok(digest) => match published {
            Some(p) if is_current(p, &digest, entry) => Check::Unchanged(digest),
            p => Check::Ingest {
                source: Box::new(source),
                digest,
                previous: p.map(|p| p.top_digest.clone()),
            },
        },
        Err(e) => Check::Failed(e),
    }
}

/// Runs one pass of `recipe` on the repository in `dir` (see the module docs). Image events
/// go to `log` (after the revision is published) unless `options.dry_run`.
///
/// Errors only for what stops the whole pass: the repository cannot be opened or read,
/// `cvmfs_repo` names another repository, pruning finds unreadable metadata, or publishing
/// fails. Image failures are [`Outcome::Failed`] events in the report.
pub async fn sync_pass(
    dir: &Path,
    recipe: &Recipe,
    label: &str,
    options: &SyncOptions,
    log: Option<&mut EventLog>,
) -> Result<PassReport> {
    let started = Instant::now();
    let dir2 = dir.to_path_buf();
    let dry_run = options.dry_run;
    let recipe2 = recipe.clone();
    let label2 = label.to_string();
    let (repo, lock, ns, published) = blocking(move || {
        let lock = if dry_run {
            None
        } else {
            Some(Repo::lock(&dir2)?)
        };
        let repo = Repo::open(&dir2)?;
        recipe2.check_repository(&repo.settings.fqrn, &label2)?;
        if lock.is_some() {
            repo.clean_scratch()?;
        }
        let ns = load_namespace(&repo)?;
        let published = published_images(&repo, &ns)?;
        Ok((repo, lock, ns, published))
    })
    .await?;
    let repo = Arc::new(repo);

    let clients = Clients::default();
    let (wants, mut failures, failed_entries) = expand(recipe, options, &clients).await;
    let checks: Vec<(Want, Instant, Check)> = futures::stream::iter(wants)
        .map(|w| {
            let entry = &recipe.entries[w.entry];
            let clients = &clients;
            let published = published.get(&w.name.public_path());
            async move {
                let t = Instant::now();
                let c = check(&w, entry, published, options, clients).await;
                (w, t, c)
            }
        })
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect()
        .await;

    let mut events: Vec<ImageEvent> = Vec::new();
    let mut to_ingest = Vec::new();
    let mut wanted: HashSet<String> = HashSet::new();
    for (w, t, c) in checks {
        let path = w.name.public_path();
        wanted.insert(path.clone());
        match c {
            Check::Unchanged(digest) => events.push(ImageEvent {
                event: Outcome::Unchanged,
                image: path,
                digest: Some(digest),
                previous_digest: None,
                seconds: t.elapsed().as_secs_f64(),
                error: None,
            }),
            Check::Failed(e) => failures.push(failed(path, t, &e)),
            Check::Ingest {
                source,
                digest,
                previous,
            } => to_ingest.push((w, t, source, digest, previous)),
        }
    }

    // Removals: published, not wanted, not possibly wanted by a failed glob entry.
    let removals: Vec<&PublishedImage> = published
        .values()
        .filter(|p| !wanted.contains(&p.path))
        .filter(|p| {
            !failed_entries.iter().any(|i| {
                p.name
                    .as_ref()
                    .is_some_and(|n| recipe.entries[*i].covers(n))
            })
        })
        .collect();

    if dry_run {
        for (w, t, _, digest, previous) in to_ingest {
            events.push(ImageEvent {
                event: if previous.is_some() {
                    Outcome::Updated
                } else {
                    Outcome::Added
                },
                image: w.name.public_path(),
                digest: Some(digest),
                previous_digest: previous,
                seconds: t.elapsed().as_secs_f64(),
                error: None,
            });
        }
        for p in removals {
            events.push(removed_event(p));
        }
        return Ok(finish(failures, events, None, 0, started, true));
    }

    // Ingest, one image at a time; a failure restores the namespace before it.
    let pool = Arc::new(Pool::per_cpu(&repo.store, options.limits.memory_budget));
    let progress = Arc::new(Progress::new());
    let mut ns = ns;
    let mut changed = false;
    for (w, t, source, digest, previous) in to_ingest {
        let entry = &recipe.entries[w.entry];
        let ingest_options = IngestOptions {
            platforms: entry.platforms.clone(),
            default_platform: entry.default_platform.clone(),
            limits: options.limits.clone(),
        };
        let before = Namespace {
            root: ns.root.clone(),
            manifest: ns.manifest.clone(),
        };
        let sources = [Source::Registry(*source)];
        let mut summary = IngestSummary::default();
        let path = w.name.public_path();
        match ingest_batch(
            &repo,
            &pool,
            &progress,
            ns,
            &sources,
            &ingest_options,
            &mut summary,
        )
        .await
        {
            Ok(n) => {
                ns = n;
                changed = true;
                tracing::info!(image = %path, converted = summary.layers_converted, reused = summary.layers_reused, "ingested");
                events.push(ImageEvent {
                    event: if previous.is_some() {
                        Outcome::Updated
                    } else {
                        Outcome::Added
                    },
                    image: path,
                    digest: Some(digest),
                    previous_digest: previous,
                    seconds: t.elapsed().as_secs_f64(),
                    error: None,
                });
            }
            Err(e) => {
                tracing::error!(image = %path, error = %e, "ingest failed; previous state kept");
                ns = before;
                failures.push(failed(path, t, &e));
            }
        }
    }

    // Joining the object workers may wait for pieces still being compressed: not on a
    // tokio worker.
    blocking(move || {
        drop(pool);
        Ok(())
    })
    .await?;

    let removed_paths: Vec<String> = removals.iter().map(|p| p.path.clone()).collect();
    for p in &removals {
        events.push(removed_event(p));
    }
    let any_updated = events.iter().any(|e| e.event == Outcome::Updated);
    let repo2 = repo.clone();
    let (ns, pruned, removed_any, store_changed) = blocking(move || {
        let mut ns = ns;
        let mut removed_any = false;
        for p in &removed_paths {
            removed_any |= remove_image(&mut ns, p);
        }
        let refs = references(&repo2, &ns)?;
        let report = prune(&repo2, &mut ns, &refs, removed_any || any_updated)?;
        // The podman store follows what is published; a store that differs (also the
        // first one of a repository published before it existed) is a change of its own.
        let store = crate::podman_store::refresh(&repo2, &mut ns)?;
        Ok((ns, report, removed_any, store.changed))
    })
    .await?;
    changed |= removed_any || store_changed || !pruned.is_empty();
    let pruned_count = pruned.flats.len() + pruned.layers.len() + pruned.chains.len();
    if pruned_count > 0 {
        tracing::info!(
            flats = pruned.flats.len(),
            layers = pruned.layers.len(),
            chains = pruned.chains.len(),
            "pruned entries no image references"
        );
    }

    let mut revision = None;
    if changed {
        let repo2 = repo.clone();
        let published = blocking(move || {
            let mut ns = ns;
            publish(&repo2, &mut ns)
        })
        .await;
        match published {
            Ok(m) => revision = Some(m.revision),
            Err(e) => {
                // Nothing of this pass is published: say so for every change, then fail.
                let mut report = finish(failures, events, None, pruned_count, started, false);
                for ev in report.events.iter_mut() {
                    if matches!(
                        ev.event,
                        Outcome::Added | Outcome::Updated | Outcome::Removed
                    ) {
                        ev.event = Outcome::Failed;
                        ev.error = Some(format!("publishing failed: {e}"));
                    }
                }
                if let Some(log) = log {
                    write_log(log, &report);
                }
                return Err(e);
            }
        }
    }
    drop(lock);
    let report = finish(failures, events, revision, pruned_count, started, false);
    if let Some(log) = log {
        write_log(log, &report);
    }
    Ok(report)
}

fn removed_event(p: &PublishedImage) -> ImageEvent {
    ImageEvent {
        event: Outcome::Removed,
        image: p.path.clone(),
        digest: None,
        previous_digest: Some(p.top_digest.clone()),
        seconds: 0.0,
        error: None,
    }
}

fn finish(
    failures: Vec<ImageEvent>,
    mut events: Vec<ImageEvent>,
    revision: Option<u64>,
    pruned: usize,
    started: Instant,
    dry_run: bool,
) -> PassReport {
    events.sort_by(|a, b| a.image.cmp(&b.image));
    let count = |o: Outcome| events.iter().filter(|e| e.event == o).count();
    let summary = PassSummary {
        revision,
        added: count(Outcome::Added),
        updated: count(Outcome::Updated),
        removed: count(Outcome::Removed),
        unchanged: count(Outcome::Unchanged),
        failed: failures.len(),
        seconds: started.elapsed().as_secs_f64(),
        dry_run,
    };
    let mut all = failures;
    all.extend(events);
    PassReport {
        events: all,
        summary,
        pruned,
    }
}

/// Appends the report to the log; a log that cannot be written is reported, not fatal.
fn write_log(log: &mut EventLog, report: &PassReport) {
    let r = report
        .events
        .iter()
        .try_for_each(|e| log.image(e))
        .and_then(|()| log.pass(&report.summary));
    if let Err(e) = r {
        tracing::error!(error = %e, "cannot write the event log");
    }
}

/// The published images of the repository in `dir` by public path (for tests and tools).
pub fn published(dir: &Path) -> Result<BTreeMap<String, PublishedImage>> {
    let repo = Repo::open(dir)?;
    let ns = load_namespace(&repo)?;
    published_images(&repo, &ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Recipe;
    use ::tests::ok;

    const INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
        {"mediaType":"m","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":1,"platform":{"architecture":"amd64","os":"linux"}},
        {"mediaType":"m","digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":1,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
        {"mediaType":"m","digest":"sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","size":1,"platform":{"architecture":"unknown","os":"unknown"}}]}"#;

    fn published(platforms: &[(&str, &str)], public: &str) -> PublishedImage {
        PublishedImage {
            path: "r.org/a:1".into(),
            name: ImageName::parse("r.org/a:1").ok(),
            top_digest: crate::digest::sha256_digest(INDEX.as_bytes()),
            index: Some(INDEX.as_bytes().to_vec()),
            platforms: platforms
                .iter()
                .map(|(d, t)| (d.to_string(), t.to_string()))
                .collect(),
            public_target: Some(public.into()),
        }
    }

    fn entry(yaml_entry: &str) -> RecipeEntry {
        let r = ok(Recipe::parse(
            &format!("version: 1\ninput:\n  - {yaml_entry}\n"),
            "t",
        ));
        r.entries[0].clone()
    }

    #[test]
    fn current_means_digest_platforms_and_default() {
        let digest = crate::digest::sha256_digest(INDEX.as_bytes());
        let both = [
            ("linux-amd64", "../../../../.flat/aa/amd"),
            ("linux-arm64-v8", "../../../../.flat/bb/arm"),
        ];
        let p = published(&both, "../.flat/aa/amd");
        let all = entry("'r.org/a:1'");
        assert!(is_current(&p, &digest, &all));
        // the tag moved
        assert!(!is_current(&p, &format!("sha256:{}", "d".repeat(64)), &all));
        // the recipe now wants only amd64
        let amd = entry("{image: 'r.org/a:1', platforms: [linux/amd64]}");
        assert!(!is_current(&p, &digest, &amd));
        let only_amd = published(&both[..1], "../.flat/aa/amd");
        assert!(is_current(&only_amd, &digest, &amd));
        // the recipe now wants the public path on arm64
        let arm = entry("{image: 'r.org/a:1', default_platform: linux/arm64}");
        assert!(!is_current(&p, &digest, &arm));
        let on_arm = published(&both, "../.flat/bb/arm");
        assert!(is_current(&on_arm, &digest, &arm));
        // a plain manifest: the digest decides
        let plain = PublishedImage {
            index: None,
            top_digest: "sha256:x".into(),
            ..published(&[], "../.flat/aa/amd")
        };
        assert!(is_current(&plain, "sha256:x", &all));
        assert_eq!(target_tail("../../.flat/aa/b"), ".flat/aa/b");
    }

    #[test]
    fn http_scheme_allows_plain_http_for_that_registry() {
        let e = entry("'http://registry.lan:5000/a:1'");
        let o = registry_options(&RegistryOptions::default(), &e);
        assert_eq!(o.insecure, vec!["registry.lan:5000".to_string()]);
        let e = entry("'https://registry.lan:5000/a:1'");
        assert!(
            registry_options(&RegistryOptions::default(), &e)
                .insecure
                .is_empty()
        );
    }

    /// A registry whose tags/list returns at most 2 tags per page and honours `last`
    /// (or, with `ignore_last`, always returns the first page).
    async fn paging_registry(tags: Vec<String>, ignore_last: bool) -> String {
        use axum::extract::Query;
        use axum::routing::get;
        let listener = ok(tokio::net::TcpListener::bind("127.0.0.1:0").await);
        let addr = ok(listener.local_addr());
        let app = axum::Router::new()
            .route("/v2/", get(|| async { "{}" }))
            .route(
                "/v2/demo/tags/list",
                get(move |Query(q): Query<HashMap<String, String>>| {
                    let tags = tags.clone();
                    async move {
                        let n: usize = q.get("n").and_then(|n| n.parse().ok()).unwrap_or(100);
                        let start = match q.get("last") {
                            Some(l) if !ignore_last => {
                                tags.iter().position(|t| t == l).map_or(0, |i| i + 1)
                            }
                            _ => 0,
                        };
                        let page: Vec<&String> = tags.iter().skip(start).take(n.min(2)).collect();
                        axum::Json(serde_json::json!({"name": "demo", "tags": page}))
                    }
                }),
            );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        addr.to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tag_lists_are_followed_across_pages() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tags: Vec<String> = ["1.0", "1.1", "1.2", "2.0", "2.1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let host = paging_registry(tags.clone(), false).await;
        let name = ok(ImageName::parse(&format!("{host}/demo:latest")));
        let src = ok(RegistrySource::new(
            name.clone(),
            &RegistryOptions::default(),
        ));
        assert_eq!(ok(src.list_tags().await), tags);
        // a registry that ignores `last` yields its first page, and the loop ends
        let host = paging_registry(tags.clone(), true).await;
        let name = ok(ImageName::parse(&format!("{host}/demo:latest")));
        let src = ok(RegistrySource::new(name, &RegistryOptions::default()));
        assert_eq!(ok(src.list_tags().await), tags[..2].to_vec());
        // glob expansion over the pages
        let host = paging_registry(tags, false).await;
        let recipe = ok(Recipe::parse(
            &format!("version: 1\ninput:\n  - 'http://{host}/demo:1.*'\n  - '{host}/demo:2.1'\n"),
            "t",
        ));
        let (wants, failures, failed_entries) =
            expand(&recipe, &SyncOptions::default(), &Clients::default()).await;
        assert!(failures.is_empty() && failed_entries.is_empty());
        let got: Vec<String> = wants.iter().map(|w| w.name.public_path()).collect();
        assert_eq!(
            got,
            ["1.0", "1.1", "1.2", "2.1"]
                .iter()
                .map(|t| format!("{host}/demo:{t}"))
                .collect::<Vec<_>>()
        );
    }
}
