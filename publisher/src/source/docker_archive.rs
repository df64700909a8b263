//! `docker-archive:FILE`: tarballs as `docker save` writes them.
//!
//! * Docker before 25 (the "docker save" format, moby `image/tarexport`): `manifest.json` is
//!   `[{"Config": "<hex>.json", "RepoTags": ["repo:tag"], "Layers": ["<id>/layer.tar", …]}]`;
//!   layers are plain tars, duplicate layers are symlinks to the first copy. There is no
//!   registry manifest, so one is synthesised (Docker v2 schema 2) with layer digests =
//!   sha256 of the layer files as stored.
//! * Docker 25+ writes an OCI layout (`index.json`, `blobs/sha256/…`) beside the same
//!   `manifest.json`; then the real manifest (or index) from the layout is used.
//!
//! The tarball is indexed once (member → offset, size); blobs are read in place.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use namespace::{Digest, Sha256Hex};
use serde::Deserialize;

use super::oci_layout::{LayoutRoot, MAX_DOCUMENT, blob_path};
use super::{BlobDescriptor, Document, FetchedSet, PlatformFilter, parse_document, resolve};
use crate::decompress::Compression;
use crate::digest::HashingReader;
use crate::error::{Error, Result};
use crate::layer::normalize_path;
use crate::reference::ImageName;

/// Docker media type of a config (Docker image manifest v2 schema 2).
pub const DOCKER_CONFIG_MEDIA_TYPE: &str = "application/vnd.docker.container.image.v1+json";
/// Docker media type of a schema 2 manifest.
pub const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Where each member of a tarball is: normalised path → (data offset, size).
#[derive(Debug)]
pub struct ArchiveIndex {
    /// The tarball.
    pub file: PathBuf,
    members: HashMap<String, (u64, u64)>,
    links: HashMap<String, String>,
}

impl ArchiveIndex {
    /// Reads the headers of `file` (seeking over contents).
    ///
    /// Errors with [`Error::Image`] if it is not a readable tar.
    pub fn open(file: &Path) -> Result<ArchiveIndex> {
        let label = format!("docker-archive:{}", file.display());
        let bad = |reason: String| Error::Image {
            image: label.clone(),
            reason,
        };
        let f = File::open(file).map_err(|e| Error::io(format!("open {}", file.display()), e))?;
        let mut archive = tar::Archive::new(f);
        let mut members = HashMap::new();
        let mut links = HashMap::new();
        let entries = archive
            .entries_with_seek()
            .map_err(|e| bad(format!("not a tar: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| bad(format!("not a tar: {e}")))?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(path) = normalize_path(&raw).map(|c| c.join("/")) else {
                return Err(bad(format!("member {raw:?} escapes the archive")));
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    members.insert(path, (entry.raw_file_position(), entry.size()));
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default();
                    let resolved = if entry.header().entry_type() == tar::EntryType::Symlink {
                        let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                        format!("{dir}/{target}")
                    } else {
                        target
                    };
                    if let Some(t) = normalize_path(&resolved) {
                        links.insert(path, t.join("/"));
                    }
                }
                _ => {}
            }
        }
        Ok(ArchiveIndex {
            file: file.to_path_buf(),
            members,
            links,
        })
    }

    fn locate(&self, rel: &str) -> Option<(u64, u64)> {
        let mut path = normalize_path(rel)?.join("/");
        for _ in 0..8 {
            if let Some(m) = self.members.get(&path) {
                return Some(*m);
            }
            path = self.links.get(&path)?.clone();
        }
        None
    }

    /// Whether the member `rel` exists (following member symlinks).
    pub fn contains(&self, rel: &str) -> bool {
        self.locate(rel).is_some()
    }

    /// Opens the member `rel` (following member symlinks) for streaming.
    pub fn open_member(&self, rel: &str) -> Result<Box<dyn Read + Send>> {
        let (offset, size) = self.locate(rel).ok_or_else(|| Error::Image {
            image: format!("docker-archive:{}", self.file.display()),
            reason: format!("no member {rel:?}"),
        })?;
        let mut f = File::open(&self.file)
            .map_err(|e| Error::io(format!("open {}", self.file.display()), e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io(format!("seek in {}", self.file.display()), e))?;
        Ok(Box::new(f.take(size)))
    }
}

#[derive(Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// One image of a `docker save` tarball.
#[derive(Clone, Debug)]
pub struct ArchiveSource {
    /// The public name.
    pub name: ImageName,
    root: LayoutRoot,
    index: Arc<ArchiveIndex>,
    entry_config: String,
    entry_layers: Vec<String>,
    /// Layer digest → member path, filled by `fetch`.
    blobs: Arc<std::sync::Mutex<HashMap<Digest, String>>>,
}

impl ArchiveSource {
    /// Indexes `file` and picks its image: the one whose `RepoTags` hold `name` if given,
    /// else the first. The public name is `name`, else the first RepoTag, else
    /// `localhost/<file stem>:latest`.
    ///
    /// Errors with [`Error::Image`] for unreadable archives or a missing `manifest.json`.
    pub fn open(file: &Path, name: Option<&ImageName>) -> Result<ArchiveSource> {
        let index = Arc::new(ArchiveIndex::open(file)?);
        let root = LayoutRoot::Archive(index.clone());
        let label = root.label();
        let bytes = root.read_small("manifest.json")?;
        let entries: Vec<ManifestEntry> =
            serde_json::from_slice(&bytes).map_err(|e| Error::Image {
                image: label.clone(),
                reason: format!("manifest.json is not a docker save manifest: {e}"),
            })?;
        let tags_of = |e: &ManifestEntry| -> Vec<ImageName> {
            e.repo_tags
                .iter()
                .flatten()
                .filter_map(|t| ImageName::parse(t).ok())
                .collect()
        };
        let entry = match name {
            Some(n) => entries
                .iter()
                .find(|e| {
                    tags_of(e)
                        .iter()
                        .any(|t| t.public_path() == n.public_path())
                })
                .or(entries.first()),
            None => entries.first(),
        }
        .ok_or_else(|| Error::Image {
            image: label.clone(),
            reason: "manifest.json lists no image".into(),
        })?;
        let public = match name {
            Some(n) => n.clone(),
            None => match tags_of(entry).into_iter().next() {
                Some(t) => t,
                None => {
                    let stem = file
                        .file_stem()
                        .map(|s| s.to_string_lossy().to_ascii_lowercase())
                        .unwrap_or_else(|| "image".into());
                    ImageName::parse(&format!("localhost/{stem}:latest"))?
                }
            },
        };
        Ok(ArchiveSource {
            name: public,
            root,
            index,
            entry_config: entry.config.clone(),
            entry_layers: entry.layers.clone(),
            blobs: Arc::default(),
        })
    }

    fn label(&self) -> String {
        self.root.label()
    }

    /// The OCI manifest or index in `index.json` (Docker 25+) that describes the image with
    /// config digest `config`, if there is one.
    fn oci_top(&self, config: &Digest) -> Result<Option<Vec<u8>>> {
        if !self.root.exists("index.json") {
            return Ok(None);
        }
        let label = self.label();
        let top = self.root.read_small("index.json")?;
        let Document::Index(entries) = parse_document(&label, &top)? else {
            return Ok(None);
        };
        for e in entries {
            let rel = blob_path(&e.descriptor.digest);
            if !self.root.exists(&rel) {
                continue;
            }
            let bytes = self.root.read_small(&rel)?;
            let names_config = |b: &[u8]| match parse_document(&label, b) {
                Ok(Document::Manifest { config: c, .. }) => c.digest == *config,
                _ => false,
            };
            let found = match parse_document(&label, &bytes)? {
                Document::Manifest { config: c, .. } => c.digest == *config,
                Document::Index(inner) => inner.iter().any(|i| {
                    self.root
                        .read_small(&blob_path(&i.descriptor.digest))
                        .is_ok_and(|b| names_config(&b))
                }),
            };
            if found {
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }

    /// Reads config and manifest (real or synthesised). Blocking.
    pub fn fetch(&self, filter: &PlatformFilter) -> Result<FetchedSet> {
        let label = self.label();
        let config = self.root.read_small(&self.entry_config)?;
        let config_digest = Digest::of_bytes(&config);
        let read_blob = |d: &BlobDescriptor, what: &str| -> Result<Vec<u8>> {
            let bytes = self.root.read_small(&blob_path(&d.digest))?;
            super::verify_digest(&label, what, &bytes, &d.digest)?;
            Ok(bytes)
        };
        if let Some(top) = self.oci_top(&config_digest)? {
            return resolve(&self.name, &label, top, filter, read_blob);
        }
        let manifest = self.synthesise_manifest(&config, &config_digest)?;
        resolve(&self.name, &label, manifest, filter, |d, what| {
            if d.digest == config_digest {
                Ok(config.clone())
            } else {
                read_blob(d, what)
            }
        })
    }

    /// A Docker v2 schema 2 manifest for the old format; records where each layer is.
    fn synthesise_manifest(&self, config: &[u8], config_digest: &Digest) -> Result<Vec<u8>> {
        let label = self.label();
        let mut layers = Vec::new();
        let mut blobs = HashMap::new();
        for rel in &self.entry_layers {
            let (_, size) = self.index.locate(rel).ok_or_else(|| Error::Image {
                image: label.clone(),
                reason: format!("manifest.json names missing layer {rel:?}"),
            })?;
            let mut head = [0u8; 4];
            let n = self.root.open(rel)?.read(&mut head).unwrap_or(0);
            let compression = Compression::detect("", &head[..n]);
            let media_type = match compression {
                Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
            };
            // The digest of the file as stored: the name says it (blobs/sha256/<hex>), or we
            // hash the member once.
            let digest = match rel
                .strip_prefix("blobs/sha256/")
                .and_then(|h| h.parse::<Sha256Hex>().ok())
            {
                Some(hex) => Digest::from_hex(hex),
                None => {
                    let mut r = HashingReader::new(self.root.open(rel)?);
                    std::io::copy(&mut r, &mut std::io::sink())
                        .map_err(|e| Error::io(format!("read {rel} in {label}"), e))?;
                    r.finish()
                        .map_err(|e| Error::io(format!("read {rel} in {label}"), e))?
                        .1
                        .parse::<Digest>()?
                }
            };
            layers.push(serde_json::json!({
                "mediaType": media_type, "size": size, "digest": digest.to_string(),
            }));
            blobs.insert(digest, rel.clone());
        }
        if let Ok(mut b) = self.blobs.lock() {
            *b = blobs;
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": DOCKER_CONFIG_MEDIA_TYPE,
                "size": config.len(),
                "digest": config_digest.to_string(),
            },
            "layers": layers,
        });
        let bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::json("encoding synthesised manifest", e))?;
        if bytes.len() as u64 > MAX_DOCUMENT {
            return Err(Error::Image {
                image: label,
                reason: "too many layers".into(),
            });
        }
        Ok(bytes)
    }

    /// Opens a layer blob (by the member `fetch` recorded, else `blobs/sha256/<hex>`).
    pub fn open_blob(&self, blob: &BlobDescriptor) -> Result<Box<dyn Read + Send>> {
        let rel = self
            .blobs
            .lock()
            .ok()
            .and_then(|b| b.get(&blob.digest).cloned());
        match rel {
            Some(rel) => self.root.open(&rel),
            None => self.root.open(&blob_path(&blob.digest)),
        }
    }
}
