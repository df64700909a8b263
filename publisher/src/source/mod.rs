//! Image sources: where manifests, configs and layer blobs come from. Both kinds hand back
//! the bytes exactly as stored (so their digests still verify) and layer blobs as blocking
//! readers for the tar pipeline.

pub mod oci_layout;
pub mod registry;

use std::collections::HashMap;
use std::io::Read;

use serde::Deserialize;

use crate::digest::{sha256_digest, sha256_hex};
use crate::error::{Error, Result};
use crate::reference::ImageName;

/// A blob a manifest points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobDescriptor {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Media type from the manifest.
    pub media_type: String,
    /// Size in bytes as the manifest states it.
    pub size: u64,
}

/// One image's metadata, fetched and verified.
#[derive(Clone, Debug)]
pub struct FetchedImage {
    /// The public name (`<registry>/<repository>:<tag>`).
    pub name: ImageName,
    /// The index / manifest list bytes, when the reference named one.
    pub index: Option<Vec<u8>>,
    /// The single-platform manifest bytes.
    pub manifest: Vec<u8>,
    /// The config bytes.
    pub config: Vec<u8>,
    /// The config descriptor.
    pub config_descriptor: BlobDescriptor,
    /// Layers, lowest first.
    pub layers: Vec<BlobDescriptor>,
    /// diffIDs from the config's `rootfs.diff_ids`, one per layer.
    pub diff_ids: Vec<String>,
}

/// Where one image comes from.
pub enum Source {
    /// A registry (OCI distribution API).
    Registry(registry::RegistrySource),
    /// An OCI image layout directory.
    Layout(oci_layout::LayoutSource),
}

impl Source {
    /// The public name of the image.
    pub fn name(&self) -> &ImageName {
        match self {
            Source::Registry(s) => &s.name,
            Source::Layout(s) => &s.name,
        }
    }

    /// Fetches index (if any), manifest and config; picks linux/amd64 from an index.
    pub async fn fetch(&self) -> Result<FetchedImage> {
        match self {
            Source::Registry(s) => s.fetch().await,
            Source::Layout(s) => s.fetch().await,
        }
    }

    /// Opens a blob for streaming; the reader must be used on a blocking thread.
    pub async fn open_blob(&self, blob: &BlobDescriptor) -> Result<Box<dyn Read + Send>> {
        match self {
            Source::Registry(s) => s.open_blob(blob).await,
            Source::Layout(s) => s.open_blob(blob),
        }
    }
}

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    annotations: HashMap<String, String>,
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    architecture: String,
    os: String,
}

/// The fields of a manifest or index that we use (OCI image spec; Docker schema 2).
#[derive(Deserialize)]
struct RawDocument {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
struct RawConfig {
    rootfs: RawRootfs,
}

#[derive(Deserialize)]
struct RawRootfs {
    diff_ids: Vec<String>,
}

/// A parsed manifest-or-index.
pub(crate) enum Document {
    /// An OCI index or Docker manifest list: (digest, media type, platform os/arch,
    /// `org.opencontainers.image.ref.name`).
    Index(Vec<IndexEntry>),
    /// A single-platform image manifest.
    Manifest {
        config: BlobDescriptor,
        layers: Vec<BlobDescriptor>,
    },
}

/// One entry of an index.
pub(crate) struct IndexEntry {
    pub descriptor: BlobDescriptor,
    pub platform: Option<(String, String)>,
    pub ref_name: Option<String>,
}

fn descriptor(image: &str, d: RawDescriptor) -> Result<BlobDescriptor> {
    if sha256_hex(&d.digest).is_none() {
        return Err(Error::Image {
            image: image.to_string(),
            reason: format!("unsupported digest {:?} (only sha256)", d.digest),
        });
    }
    Ok(BlobDescriptor {
        digest: d.digest,
        media_type: d.media_type,
        size: d.size,
    })
}

/// Parses manifest or index bytes.
pub(crate) fn parse_document(image: &str, bytes: &[u8]) -> Result<Document> {
    let doc: RawDocument = serde_json::from_slice(bytes).map_err(|e| Error::Image {
        image: image.to_string(),
        reason: format!("manifest is not valid JSON: {e}"),
    })?;
    let is_index = doc.manifests.is_some()
        || doc
            .media_type
            .as_deref()
            .is_some_and(|m| m.contains("index") || m.contains("manifest.list"));
    if is_index {
        let mut entries = Vec::new();
        for d in doc.manifests.unwrap_or_default() {
            let platform = d
                .platform
                .as_ref()
                .map(|p| (p.os.clone(), p.architecture.clone()));
            let ref_name = d
                .annotations
                .get("org.opencontainers.image.ref.name")
                .cloned();
            entries.push(IndexEntry {
                descriptor: descriptor(image, d)?,
                platform,
                ref_name,
            });
        }
        return Ok(Document::Index(entries));
    }
    let (Some(config), Some(layers)) = (doc.config, doc.layers) else {
        return Err(Error::Image {
            image: image.to_string(),
            reason: "manifest has no config or no layers (schema 1 is not supported)".into(),
        });
    };
    Ok(Document::Manifest {
        config: descriptor(image, config)?,
        layers: layers
            .into_iter()
            .map(|l| descriptor(image, l))
            .collect::<Result<_>>()?,
    })
}

/// The linux/amd64 entry of an index (the platform nodes run).
pub(crate) fn select_platform<'a>(
    image: &str,
    entries: &'a [IndexEntry],
) -> Result<&'a IndexEntry> {
    entries
        .iter()
        .find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|(os, arch)| os == "linux" && arch == "amd64")
        })
        .ok_or_else(|| Error::Image {
            image: image.to_string(),
            reason: "index has no linux/amd64 manifest".into(),
        })
}

/// Checks that `bytes` hash to `digest`.
pub(crate) fn verify_digest(image: &str, what: &str, bytes: &[u8], digest: &str) -> Result<()> {
    let actual = sha256_digest(bytes);
    if actual == digest {
        Ok(())
    } else {
        Err(Error::DigestMismatch {
            image: image.to_string(),
            what: what.to_string(),
            expected: digest.to_string(),
            actual,
        })
    }
}

/// Assembles a [`FetchedImage`] from verified manifest and config bytes: reads diffIDs from
/// the config and checks there is one per layer.
pub(crate) fn assemble(
    name: ImageName,
    index: Option<Vec<u8>>,
    manifest: Vec<u8>,
    config_descriptor: BlobDescriptor,
    layers: Vec<BlobDescriptor>,
    config: Vec<u8>,
) -> Result<FetchedImage> {
    let image = name.to_string();
    verify_digest(&image, "config", &config, &config_descriptor.digest)?;
    let parsed: RawConfig = serde_json::from_slice(&config).map_err(|e| Error::Image {
        image: image.clone(),
        reason: format!("config has no rootfs.diff_ids: {e}"),
    })?;
    let diff_ids = parsed.rootfs.diff_ids;
    if diff_ids.len() != layers.len() {
        return Err(Error::Image {
            image,
            reason: format!(
                "manifest has {} layers but config has {} diff_ids",
                layers.len(),
                diff_ids.len()
            ),
        });
    }
    if let Some(bad) = diff_ids.iter().find(|d| sha256_hex(d).is_none()) {
        return Err(Error::Image {
            image,
            reason: format!("unsupported diffID {bad:?}"),
        });
    }
    Ok(FetchedImage {
        name,
        index,
        manifest,
        config,
        config_descriptor,
        layers,
        diff_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_platform_selection() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"mediaType":"m","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},
            {{"mediaType":"m","digest":"{}","size":2,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            d('a'),
            d('b')
        );
        let Ok(Document::Index(entries)) = parse_document("x", index.as_bytes()) else {
            panic!("not an index")
        };
        let e = select_platform("x", &entries).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.descriptor.digest, d('b'));
        assert!(select_platform("x", &entries[..1]).is_err());
    }

    #[test]
    fn manifest_and_config_checks() {
        let cfg = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
        let cfg_digest = sha256_digest(cfg);
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{cfg_digest}","size":{}}},
            "layers":[{{"mediaType":"l","digest":"{cfg_digest}","size":3}}]}}"#,
            cfg.len()
        );
        let Ok(Document::Manifest { config, layers }) = parse_document("x", manifest.as_bytes())
        else {
            panic!("not a manifest")
        };
        let name = ImageName::parse("localhost/x:1").unwrap_or_else(|e| panic!("{e}"));
        let img = assemble(
            name.clone(),
            None,
            manifest.clone().into_bytes(),
            config.clone(),
            layers.clone(),
            cfg.to_vec(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(img.diff_ids.len(), 1);
        assert!(matches!(
            assemble(
                name.clone(),
                None,
                vec![],
                config.clone(),
                layers.clone(),
                b"{}".to_vec()
            ),
            Err(Error::DigestMismatch { .. })
        ));
        assert!(assemble(name, None, vec![], config, vec![], cfg.to_vec()).is_err());
        assert!(parse_document("x", br#"{"schemaVersion":1}"#).is_err());
    }
}
