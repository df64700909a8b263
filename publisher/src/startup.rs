//! The startup working set of an image (`strata-publisher startup`): the objects a start
//! reads, in the order it reads them, published as startup packs (docs/format.md §13) under
//! the image's platform metadata (docs/namespace.md §9), in one new signed revision.
//!
//! The input is an access trace (namespace `trace`): the repository paths a container
//! start read, recorded by `strata-snapshotter mount --trace`. Each path is resolved in the
//! revision being extended to its object (a file); a chunked file gives the chunks the
//! trace lists as read, each at its own record's place, whatever the file's size (a
//! version 1 trace, paths only, gives all chunks of a chunked file of at most
//! [`StartupOptions::max_chunked_file`]); every object goes in once, at its first place.
//! Paths under `.metadata` are left out (`pull` reads the manifest and config before it
//! asks for the packs). Paths the revision does not hold (a trace taken on an older
//! revision, or of another image) are skipped and counted: a trace of `.layers/…/layerfs` paths stays
//! valid for every image that shares those layers. The nested catalogs a client loads to
//! reach those paths (a layer's bucket and `layerfs` catalogs, a flat tree's; not the root
//! catalog, which every mount has) go in too, first, smallest first, in packs of their
//! own, the first at most [`FIRST_PACK_BYTES`] unless its one catalog is larger (a pull resolves every layer before the
//! start reads a file: the layers' bucket catalogs, a few KiB, come in a pack that
//! arrives with the image's manifest). The
//! objects are copied, stored bytes
//! unchanged, into packs of about [`StartupOptions::pack_size`] bytes; the whole set is
//! bounded by [`StartupOptions::max_bytes`].
//!
//! What is written, all ordinary catalog rows (so that stock replication copies it and
//! stock garbage collection keeps it; stock clients see plain files):
//!
//! * `startup/trace`: the trace lines that resolved, as a trace;
//! * `startup/objects`: one line per object, `<hash><P or -> <size> <pack file> <path>`;
//! * `startup/pack-NNN.strata-pack`: the packs, stored uncompressed (their members are
//!   compressed already), unchunked.
//!
//! Packs are content-addressed like every object: the same trace over the same revision
//! gives the same packs, so publishing again stores nothing new; the packs of an image that
//! leaves the repository go with its `.metadata` and then with `gc`.

use std::collections::{HashMap, HashSet};

use catalog::{ContentHash, Entry, EntryKind, HashAlgorithm, PackBuilder, PackMember, Suffix};
use namespace::trace::Access;
use namespace::{ImageName, Platform, paths};

use crate::catalog_view::CatalogView;
use crate::error::{Error, Result};
use crate::flatten::LayerView;
use crate::publish::{Namespace, load_namespace, publish, unix_now};
use crate::repo::Repo;
use crate::tree::{Node, file_entry};

/// The first pack's size bound when the working set has catalogs (see
/// [`publish_startup`]).
pub const FIRST_PACK_BYTES: u64 = 64 * 1024;

/// How a working set is packed.
#[derive(Clone, Debug)]
pub struct StartupOptions {
    /// The platform whose working set this is (`None`: the image's only platform, else
    /// linux/amd64).
    pub platform: Option<Platform>,
    /// A pack is closed once its data reaches this many bytes (one object larger than this
    /// gets a pack of its own).
    pub pack_size: u64,
    /// Objects past this many stored bytes in all are left out.
    pub max_bytes: u64,
    /// In a version 1 trace (paths only), chunked files larger than this are left out (a
    /// start reads parts of a huge file, and such a trace does not say which; version 2
    /// lists the chunks read).
    pub max_chunked_file: u64,
}

impl Default for StartupOptions {
    fn default() -> Self {
        StartupOptions {
            platform: None,
            pack_size: 2 * 1024 * 1024,
            max_bytes: 512 * 1024 * 1024,
            max_chunked_file: 64 * 1024 * 1024,
        }
    }
}

/// What `startup` published.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartupSummary {
    /// The new revision.
    pub revision: u64,
    /// `startup/` directory, relative to the repository root.
    pub directory: String,
    /// Paths in the trace.
    pub paths: usize,
    /// Paths that resolved to a regular file of the revision.
    pub resolved: usize,
    /// Paths the revision does not hold (or that are not regular files).
    pub missing: usize,
    /// Paths under `.metadata`, left out: `pull` reads an image's manifest and config
    /// before it asks for the packs.
    pub metadata: usize,
    /// Paths of chunked files left out for their size (version 1 traces), or objects left
    /// out past [`StartupOptions::max_bytes`].
    pub left_out: usize,
    /// Chunk records of files the revision holds that name no chunk of them (the file is
    /// not chunked in this revision, or has fewer chunks).
    pub chunks_skipped: usize,
    /// Objects packed.
    pub objects: usize,
    /// Packs written.
    pub packs: usize,
    /// Stored bytes of all packed objects.
    pub stored_bytes: u64,
    /// Content bytes of all packed objects.
    pub raw_bytes: u64,
}

impl std::fmt::Display for StartupSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "revision {}: {} object(s), {} stored bytes ({} content bytes) in {} pack(s) under {}; \
             trace: {} path(s), {} resolved, {} not in this revision, {} of image metadata, \
             {} left out for size, {} chunk record(s) skipped",
            self.revision,
            self.objects,
            self.stored_bytes,
            self.raw_bytes,
            self.packs,
            self.directory,
            self.paths,
            self.resolved,
            self.missing,
            self.metadata,
            self.left_out,
            self.chunks_skipped
        )
    }
}

/// One object of the working set, with the path it was first read at.
struct WantedObject {
    member: PackMember,
    path: String,
}

/// Publishes the startup working set of `reference` (as published) from the trace text
/// `trace` (`trace_name` names it in errors) as a new revision of the repository in `dir`;
/// holds `DIR/lock` throughout. Blocking (file, zlib and SQLite work).
///
/// # Errors
/// [`Error::Usage`] if the image or platform is not published or nothing of the trace is
/// in it; trace, store and catalog errors; a stored object that fails its hash.
pub fn publish_startup(
    dir: &std::path::Path,
    reference: &str,
    trace: &str,
    trace_name: &str,
    options: &StartupOptions,
) -> Result<StartupSummary> {
    let trace = namespace::trace::parse(trace, trace_name)?;
    let public = ImageName::parse(reference)?.public_path();
    let _lock = Repo::lock(dir)?;
    let repo = Repo::open(dir)?;
    repo.clean_scratch()?;
    let mut ns = load_namespace(&repo)?;
    let platform_dir = choose_platform(&ns, &public, options.platform.as_ref())?;

    let mut summary = StartupSummary {
        paths: trace
            .accesses
            .iter()
            .filter(|a| matches!(a, Access::File(_)))
            .count(),
        ..StartupSummary::default()
    };
    let mut resolver = Resolver::new(&repo);
    let mut seen: HashSet<ContentHash> = HashSet::new();
    let mut wanted: Vec<WantedObject> = Vec::new();
    let mut kept_lines: Vec<String> = Vec::new();
    let mut total: u64 = 0;
    let metadata_prefix = format!("/{}/", paths::METADATA);
    for access in &trace.accesses {
        let line = access.path();
        let is_file = matches!(access, Access::File(_));
        if line.starts_with(&metadata_prefix) {
            summary.metadata += usize::from(is_file);
            continue;
        }
        let found = resolver.regular_file(&ns, line)?;
        // The catalogs a client loads to reach this path, before its content.
        let catalogs: Vec<PackMember> = resolver
            .take_opened()
            .into_iter()
            .map(|(hash, size)| PackMember {
                hash,
                suffix: Suffix::Catalog,
                compressed: true,
                stored_size: 0,
                raw_size: size,
            })
            .collect();
        let Some(entry) = found else {
            summary.missing += usize::from(is_file);
            continue;
        };
        let content = match access {
            Access::File(_) => {
                summary.resolved += 1;
                if entry.is_chunked() && trace.lists_chunks {
                    // Its chunks come with their own records, those read only.
                    Vec::new()
                } else if entry.is_chunked() && entry.size > options.max_chunked_file {
                    summary.left_out += 1;
                    continue;
                } else {
                    members_of(&entry)
                }
            }
            Access::Chunk { index, .. } => {
                // A chunk the file does not have in this revision is skipped.
                match entry.chunks.get(*index).filter(|_| entry.is_chunked()) {
                    Some(chunk) => vec![chunk_member(chunk, entry.compressed)],
                    None => {
                        summary.chunks_skipped += 1;
                        continue;
                    }
                }
            }
        };
        kept_lines.push(access.line());
        for member in catalogs.into_iter().chain(content) {
            if !seen.insert(member.hash) {
                continue;
            }
            let stored = repo.store.object_file(&member.hash, member.suffix);
            let stored_size = std::fs::metadata(&stored)
                .map_err(|e| Error::io(format!("object of {line}: {}", stored.display()), e))?
                .len();
            if total + stored_size > options.max_bytes {
                summary.left_out += 1;
                continue;
            }
            total += stored_size;
            wanted.push(WantedObject {
                member: PackMember {
                    stored_size,
                    ..member
                },
                path: line.to_string(),
            });
        }
    }
    if wanted.is_empty() {
        return Err(Error::Usage(format!(
            "{trace_name}: none of its {} path(s) is a regular file with content in revision {} \
             ({} resolved); nothing to publish for {public}",
            summary.paths, ns.manifest.revision, summary.resolved
        )));
    }

    let now = unix_now() as i64;
    let mut objects_text = String::new();
    let mut packs: Vec<(String, Vec<u8>)> = Vec::new();
    // Catalogs first, in their own pack(s): a pull resolves every layer before the start
    // reads a file, and the container's mount loads every layer's catalog before its first
    // read. Smallest first, and the first pack small ([`FIRST_PACK_BYTES`]): it holds the
    // layers' bucket catalogs (a few KiB), which the pull looks up as soon as it has read
    // the image's manifest; a pack that small arrives with that manifest, before the
    // lookups, so they wait for it instead of fetching each catalog on their own.
    let (mut catalogs, files): (Vec<&WantedObject>, Vec<&WantedObject>) = wanted
        .iter()
        .partition(|o| o.member.suffix == Suffix::Catalog);
    catalogs.sort_by_key(|o| o.member.stored_size);
    let first_file = catalogs.len();
    let mut builder = PackBuilder::new();
    for (i, object) in catalogs.into_iter().chain(files).enumerate() {
        let limit = if packs.is_empty() && i < first_file {
            FIRST_PACK_BYTES.min(options.pack_size)
        } else {
            options.pack_size
        };
        let full = builder.data_len() + object.member.stored_size > limit || i == first_file;
        if !builder.is_empty() && full {
            packs.push((
                paths::pack_name(packs.len()),
                std::mem::take(&mut builder).finish(),
            ));
        }
        let stored = repo.store.get(&object.member.hash, object.member.suffix)?;
        catalog::compression::verify(&stored, &object.member.hash)?;
        builder.push(object.member, &stored)?;
        summary.objects += 1;
        summary.stored_bytes += object.member.stored_size;
        summary.raw_bytes += object.member.raw_size;
        objects_text.push_str(&format!(
            "{}{} {} {} {}\n",
            object.member.hash.to_hex(),
            object.member.suffix.letter().unwrap_or('-'),
            object.member.raw_size,
            paths::pack_name(packs.len()),
            object.path
        ));
    }
    packs.push((paths::pack_name(packs.len()), builder.finish()));
    summary.packs = packs.len();

    let startup = paths::startup_dir(&public, &platform_dir);
    summary.directory = paths::join(&startup);
    let mut node = Node::dir(paths::STARTUP, 0o755, now);
    let mut put = |name: &str, bytes: &[u8], compressed: bool| -> Result<()> {
        let entry = if compressed {
            let hash = repo.store.put_raw(bytes, Suffix::None)?;
            file_entry(name, 0o644, 0, 0, now, bytes.len() as u64, hash)
        } else {
            let hash = ContentHash::of_bytes(HashAlgorithm::Sha1, bytes);
            repo.store.put(&hash, Suffix::None, bytes)?;
            let mut e = file_entry(name, 0o644, 0, 0, now, bytes.len() as u64, hash);
            e.compressed = false;
            e
        };
        node.children.insert(name.to_string(), Node::leaf(entry));
        Ok(())
    };
    // The trace as it resolved, in the input's version (a path of a chunked file stands
    // for all its chunks in version 1, for none in version 2).
    let header = if trace.lists_chunks {
        namespace::trace::HEADER
    } else {
        namespace::trace::HEADER_V1
    };
    let mut trace_text = format!("{header}\n");
    for line in &kept_lines {
        trace_text.push_str(line);
        trace_text.push('\n');
    }
    put(paths::STARTUP_TRACE, trace_text.as_bytes(), true)?;
    put(paths::STARTUP_OBJECTS, objects_text.as_bytes(), true)?;
    for (name, bytes) in &packs {
        put(name, bytes, false)?;
    }
    let (parent, _) = startup
        .split_last()
        .map(|(last, parent)| (parent.to_vec(), *last))
        .ok_or_else(|| Error::Task("empty startup path".into()))?;
    ns.root.remove(&startup);
    ns.root.insert(&parent, node, now);
    let manifest = publish(&repo, &mut ns)?;
    summary.revision = manifest.revision;
    Ok(summary)
}

/// The platform directory name under `.metadata/<public>/platforms/` the working set
/// belongs to.
fn choose_platform(ns: &Namespace, public: &str, wanted: Option<&Platform>) -> Result<String> {
    let platforms = paths::metadata_dir(public)
        .into_iter()
        .chain([paths::PLATFORMS])
        .collect::<Vec<_>>();
    let Some(dir) = ns.root.get(&platforms) else {
        return Err(Error::Usage(format!(
            "{public} is not published in revision {} (no {})",
            ns.manifest.revision,
            paths::join(&platforms)
        )));
    };
    let published: Vec<String> = dir.children.keys().cloned().collect();
    pick_platform(public, &published, wanted)
}

/// Of the platform directories `published` for image `public`: `wanted`'s, else the only
/// one, else linux/amd64's.
///
/// # Errors
/// [`Error::Usage`] naming the published platforms if that one is not among them.
pub fn pick_platform(
    public: &str,
    published: &[String],
    wanted: Option<&Platform>,
) -> Result<String> {
    let name = match wanted {
        Some(p) => p.dir_name(),
        None if published.len() == 1 => published[0].clone(),
        None => Platform::linux_amd64().dir_name(),
    };
    if !published.contains(&name) {
        return Err(Error::Usage(format!(
            "{public} has no platform {name} (published: {})",
            published.join(", ")
        )));
    }
    Ok(name)
}

/// The pack member of chunk `chunk` of a file stored `compressed` (its stored size is
/// filled in when the member is packed).
fn chunk_member(chunk: &catalog::Chunk, compressed: bool) -> PackMember {
    PackMember {
        hash: chunk.hash,
        suffix: Suffix::Partial,
        compressed,
        stored_size: 0,
        raw_size: chunk.size,
    }
}

/// The pack members of a regular file: its object, or its chunks in order (stored size
/// filled in by the caller).
fn members_of(entry: &Entry) -> Vec<PackMember> {
    if entry.is_chunked() {
        entry
            .chunks
            .iter()
            .map(|c| chunk_member(c, entry.compressed))
            .collect()
    } else {
        entry
            .hash
            .map(|hash| PackMember {
                hash,
                suffix: Suffix::None,
                compressed: entry.compressed,
                stored_size: 0,
                raw_size: entry.size,
            })
            .into_iter()
            .collect()
    }
}

/// Finds rows by repository path in the namespace and the nested catalogs below it
/// (each opened once).
struct Resolver<'r> {
    repo: &'r Repo,
    views: HashMap<ContentHash, (CatalogView, Vec<catalog::NestedCatalogRef>)>,
    /// Nested catalogs opened, with their uncompressed size, in the order paths needed
    /// them (taken by [`Resolver::take_opened`]).
    opened: Vec<(ContentHash, u64)>,
}

impl<'r> Resolver<'r> {
    fn new(repo: &'r Repo) -> Resolver<'r> {
        Resolver {
            repo,
            views: HashMap::new(),
            opened: Vec::new(),
        }
    }

    /// The nested catalogs opened since the last call: what a client loads to reach the
    /// paths resolved since.
    fn take_opened(&mut self) -> Vec<(ContentHash, u64)> {
        std::mem::take(&mut self.opened)
    }

    /// The regular file at absolute repository path `path` with content (a hash or
    /// chunks), if the revision in `ns` has one.
    fn regular_file(&mut self, ns: &Namespace, path: &str) -> Result<Option<Entry>> {
        let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        let mut node = &ns.root;
        let mut entry = None;
        for (i, name) in components.iter().enumerate() {
            if let Some(mark) = node.catalog.as_ref()
                && !mark.loaded
            {
                let Some(published) = mark.published.as_ref() else {
                    return Ok(None);
                };
                entry = self.in_catalog(published.hash, &paths::absolute(&components))?;
                break;
            }
            match node.children.get(*name) {
                Some(child) => {
                    node = child;
                    if i + 1 == components.len() {
                        entry = Some(child.entry.clone());
                    }
                }
                None => return Ok(None),
            }
        }
        Ok(entry.filter(|e| {
            e.kind == EntryKind::Regular && e.size > 0 && (e.hash.is_some() || e.is_chunked())
        }))
    }

    /// The row of `path` in catalog `hash` or the nested catalog below it that holds it.
    fn in_catalog(&mut self, mut hash: ContentHash, path: &str) -> Result<Option<Entry>> {
        loop {
            let (view, nested) = match self.views.entry(hash) {
                std::collections::hash_map::Entry::Occupied(v) => v.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let view = CatalogView::open_published(self.repo, &hash)?;
                    let nested = view.nested_catalogs()?;
                    self.opened.push((hash, view.file_size()?));
                    v.insert((view, nested))
                }
            };
            let deeper = nested
                .iter()
                .filter(|n| {
                    path.strip_prefix(n.path.as_str())
                        .is_some_and(|r| r.starts_with('/'))
                })
                .max_by_key(|n| n.path.len());
            if let Some(n) = deeper {
                hash = n.hash;
                continue;
            }
            let Some(rel) = path.strip_prefix(view.root_path()) else {
                return Ok(None);
            };
            return view.lookup(rel.trim_start_matches('/'));
        }
    }
}

/// The `startup` directory of each platform of the image metadata `meta` (a node of
/// `.metadata/<public>`) whose `config.json` is still `config` in the new revision: a
/// re-ingest of an unchanged image keeps its working set; a changed image loses it.
pub fn kept_startup_dirs(meta: &Node, configs: &[(String, ContentHash)]) -> Vec<(String, Node)> {
    let Some(platforms) = meta.children.get(paths::PLATFORMS) else {
        return Vec::new();
    };
    configs
        .iter()
        .filter_map(|(pdir, config)| {
            let old = platforms.children.get(pdir)?;
            let same = old
                .children
                .get(paths::CONFIG_JSON)
                .and_then(|c| c.entry.hash)
                .is_some_and(|h| h == *config);
            let startup = old.children.get(paths::STARTUP)?;
            same.then(|| (pdir.clone(), startup.clone()))
        })
        .collect()
}
