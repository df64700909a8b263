//! Image sources: where manifests, configs and layer blobs come from. Every kind hands back
//! the bytes exactly as stored (so their digests still verify) and layer blobs as blocking
//! readers for the tar pipeline.
//!
//! A reference may name an index (OCI image index, Docker manifest list); then every
//! platform it lists is fetched, unless [`PlatformFilter`] restricts them.

pub mod auth;
pub mod docker_archive;
pub mod oci_layout;
pub mod registry;

use std::collections::HashMap;
use std::io::Read;

use serde::Deserialize;

pub use namespace::{Platform, PlatformFilter};

use namespace::Digest;

use crate::error::{Error, Result};
use crate::reference::ImageName;

/// A blob a manifest points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobDescriptor {
    /// The blob's digest, validated when the manifest was parsed.
    pub digest: Digest,
    /// Media type from the manifest.
    pub media_type: String,
    /// Size in bytes as the manifest states it.
    pub size: u64,
}

/// One platform's image metadata, fetched and verified.
#[derive(Clone, Debug)]
pub struct FetchedImage {
    /// The platform (from the index entry, else from the config's `os`/`architecture`).
    pub platform: Platform,
    /// The single-platform manifest bytes.
    pub manifest: Vec<u8>,
    /// The config bytes.
    pub config: Vec<u8>,
    /// The config descriptor.
    pub config_descriptor: BlobDescriptor,
    /// Layers, lowest first.
    pub layers: Vec<BlobDescriptor>,
    /// diffIDs from the config's `rootfs.diff_ids`, one per layer.
    pub diff_ids: Vec<Digest>,
}

/// Everything one reference names: the index (if it named one) and one image per selected
/// platform, in index order.
#[derive(Clone, Debug)]
pub struct FetchedSet {
    /// The public name (`<registry>/<repository>:<tag>`).
    pub name: ImageName,
    /// The index / manifest list bytes, when the reference named one.
    pub index: Option<Vec<u8>>,
    /// The selected platforms' images (at least one).
    pub images: Vec<FetchedImage>,
}

impl FetchedSet {
    /// The image the public symlink points at: the one matching `default` (a variant-less
    /// `default` matches any variant, an exact match wins), else the first one.
    pub fn default_image(&self, default: &Platform) -> &FetchedImage {
        self.images
            .iter()
            .find(|i| i.platform == *default)
            .or_else(|| self.images.iter().find(|i| default.matches(&i.platform)))
            .unwrap_or(&self.images[0])
    }
}

/// Where one image comes from.
pub enum Source {
    /// A registry (OCI distribution API).
    Registry(registry::RegistrySource),
    /// An OCI image layout directory.
    Layout(oci_layout::LayoutSource),
    /// A `docker save` tarball.
    Archive(docker_archive::ArchiveSource),
}

impl Source {
    /// The public name of the image.
    pub fn name(&self) -> &ImageName {
        match self {
            Source::Registry(s) => &s.name,
            Source::Layout(s) => &s.name,
            Source::Archive(s) => &s.name,
        }
    }

    /// Fetches index (if any), manifests and configs of the platforms `filter` selects.
    pub async fn fetch(&self, filter: &PlatformFilter) -> Result<FetchedSet> {
        match self {
            Source::Registry(s) => s.fetch(filter).await,
            Source::Layout(s) => {
                let s = s.clone();
                let filter = filter.clone();
                tokio::task::spawn_blocking(move || s.fetch(&filter)).await?
            }
            Source::Archive(s) => {
                let s = s.clone();
                let filter = filter.clone();
                tokio::task::spawn_blocking(move || s.fetch(&filter)).await?
            }
        }
    }

    /// Opens a blob for streaming; the reader must be used on a blocking thread.
    pub async fn open_blob(&self, blob: &BlobDescriptor) -> Result<Box<dyn Read + Send>> {
        match self {
            Source::Registry(s) => s.open_blob(blob).await,
            Source::Layout(s) => s.open_blob(blob),
            Source::Archive(s) => s.open_blob(blob),
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
    #[serde(default)]
    variant: Option<String>,
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
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct RawRootfs {
    diff_ids: Vec<String>,
}

/// A parsed manifest-or-index.
pub(crate) enum Document {
    /// An OCI index or Docker manifest list.
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
    pub platform: Option<Platform>,
    pub ref_name: Option<String>,
}

fn descriptor(image: &str, d: RawDescriptor) -> Result<BlobDescriptor> {
    let digest = d.digest.parse::<Digest>().map_err(|_| Error::Image {
        image: image.to_string(),
        reason: format!("unsupported digest {:?} (only sha256)", d.digest),
    })?;
    Ok(BlobDescriptor {
        digest,
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
                .map(|p| Platform::new(&p.os, &p.architecture, p.variant.as_deref()));
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

/// The entries of an index that `filter` selects (entries without a platform count as
/// linux/amd64, as Docker treats them). Errors with [`Error::Image`] if none is selected.
pub(crate) fn select_platforms<'a>(
    image: &str,
    entries: &'a [IndexEntry],
    filter: &PlatformFilter,
) -> Result<Vec<(&'a IndexEntry, Platform)>> {
    let chosen: Vec<(&IndexEntry, Platform)> = entries
        .iter()
        .map(|e| (e, e.platform.clone().unwrap_or_else(Platform::linux_amd64)))
        .filter(|(_, p)| filter.selects(p))
        .collect();
    if chosen.is_empty() {
        let have: Vec<String> = entries
            .iter()
            .filter_map(|e| e.platform.as_ref().map(Platform::to_string))
            .collect();
        return Err(Error::Image {
            image: image.to_string(),
            reason: format!(
                "index has no manifest for the selected platforms (it has: {})",
                have.join(", ")
            ),
        });
    }
    Ok(chosen)
}

/// Checks that `bytes` hash to `digest`.
pub(crate) fn verify_digest(image: &str, what: &str, bytes: &[u8], digest: &Digest) -> Result<()> {
    let actual = Digest::of_bytes(bytes);
    if actual == *digest {
        Ok(())
    } else {
        Err(Error::DigestMismatch {
            image: image.to_string(),
            what: what.to_string(),
            expected: digest.to_string(),
            actual: actual.to_string(),
        })
    }
}

/// Assembles a [`FetchedImage`] from a verified manifest and the config bytes: checks the
/// config digest, reads diffIDs (one per layer) and the platform (`platform` from the index
/// entry wins over the config's `os`/`architecture`/`variant`).
pub(crate) fn assemble(
    image: &str,
    platform: Option<Platform>,
    manifest: Vec<u8>,
    config_descriptor: BlobDescriptor,
    layers: Vec<BlobDescriptor>,
    config: Vec<u8>,
) -> Result<FetchedImage> {
    verify_digest(image, "config", &config, &config_descriptor.digest)?;
    let parsed: RawConfig = serde_json::from_slice(&config).map_err(|e| Error::Image {
        image: image.to_string(),
        reason: format!("config has no rootfs.diff_ids: {e}"),
    })?;
    let diff_ids = parsed.rootfs.diff_ids;
    if diff_ids.len() != layers.len() {
        return Err(Error::Image {
            image: image.to_string(),
            reason: format!(
                "manifest has {} layers but config has {} diff_ids",
                layers.len(),
                diff_ids.len()
            ),
        });
    }
    let diff_ids = diff_ids
        .iter()
        .map(|d| {
            d.parse::<Digest>().map_err(|_| Error::Image {
                image: image.to_string(),
                reason: format!("unsupported diffID {d:?}"),
            })
        })
        .collect::<Result<Vec<Digest>>>()?;
    let platform = platform.unwrap_or_else(|| {
        Platform::new(
            parsed.os.as_deref().unwrap_or("linux"),
            parsed.architecture.as_deref().unwrap_or("amd64"),
            parsed.variant.as_deref(),
        )
    });
    Ok(FetchedImage {
        platform,
        manifest,
        config,
        config_descriptor,
        layers,
        diff_ids,
    })
}

/// Reads the images an index or manifest names, through `get` (which returns the verified
/// bytes of a blob descriptor): every selected platform of an index, or the one manifest.
/// `top` are the bytes the reference named.
pub(crate) fn resolve<F>(
    name: &ImageName,
    image: &str,
    top: Vec<u8>,
    filter: &PlatformFilter,
    mut get: F,
) -> Result<FetchedSet>
where
    F: FnMut(&BlobDescriptor, &str) -> Result<Vec<u8>>,
{
    fn one<F>(
        image: &str,
        bytes: Vec<u8>,
        platform: Option<Platform>,
        get: &mut F,
    ) -> Result<FetchedImage>
    where
        F: FnMut(&BlobDescriptor, &str) -> Result<Vec<u8>>,
    {
        let Document::Manifest { config, layers } = parse_document(image, &bytes)? else {
            return Err(Error::Image {
                image: image.to_string(),
                reason: "nested index inside an index".into(),
            });
        };
        let config_bytes = get(&config, "config")?;
        assemble(image, platform, bytes, config, layers, config_bytes)
    }
    match parse_document(image, &top)? {
        Document::Manifest { .. } => Ok(FetchedSet {
            name: name.clone(),
            index: None,
            images: vec![one(image, top, None, &mut get)?],
        }),
        Document::Index(entries) => {
            let mut images = Vec::new();
            let chosen = select_platforms(image, &entries, filter)?;
            let manifests: Vec<(Vec<u8>, Platform)> = chosen
                .into_iter()
                .map(|(e, p)| Ok((get(&e.descriptor, "platform manifest")?, p)))
                .collect::<Result<_>>()?;
            for (bytes, p) in manifests {
                images.push(one(image, bytes, Some(p), &mut get)?);
            }
            Ok(FetchedSet {
                name: name.clone(),
                index: Some(top),
                images,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn index_platform_selection() {
        let d = digest_of;
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"mediaType":"m","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"m","digest":"{}","size":2,"platform":{{"architecture":"amd64","os":"linux"}}}},
            {{"mediaType":"m","digest":"{}","size":2,"platform":{{"architecture":"unknown","os":"unknown"}}}}]}}"#,
            d('a'),
            d('b'),
            d('c')
        );
        let Ok(Document::Index(entries)) = parse_document("x", index.as_bytes()) else {
            panic!("not an index")
        };
        let all = select_platforms("x", &entries, &PlatformFilter::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all.len(), 2, "attestation skipped");
        assert_eq!(all[0].1, Platform::new("linux", "arm64", Some("v8")));
        let amd = PlatformFilter {
            wanted: vec![Platform::linux_amd64()],
        };
        let e = select_platforms("x", &entries, &amd).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0.descriptor.digest.to_string(), d('b'));
        let s390 = PlatformFilter {
            wanted: vec![Platform::new("linux", "s390x", None)],
        };
        let err = select_platforms("x", &entries, &s390)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|m| m.contains("linux/arm64/v8, linux/amd64")));
    }

    #[test]
    fn manifest_and_config_checks() {
        let cfg = br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
        let cfg_digest = crate::digest::sha256_digest(cfg);
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{cfg_digest}","size":{}}},
            "layers":[{{"mediaType":"l","digest":"{cfg_digest}","size":3}}]}}"#,
            cfg.len()
        );
        let Ok(Document::Manifest { config, layers }) = parse_document("x", manifest.as_bytes())
        else {
            panic!("not a manifest")
        };
        let img = assemble(
            "x",
            None,
            manifest.clone().into_bytes(),
            config.clone(),
            layers.clone(),
            cfg.to_vec(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(img.diff_ids.len(), 1);
        assert_eq!(img.platform, Platform::new("linux", "arm64", None));
        assert!(matches!(
            assemble(
                "x",
                None,
                vec![],
                config.clone(),
                layers.clone(),
                b"{}".to_vec()
            ),
            Err(Error::DigestMismatch { .. })
        ));
        assert!(assemble("x", None, vec![], config, vec![], cfg.to_vec()).is_err());
        assert!(parse_document("x", br#"{"schemaVersion":1}"#).is_err());
        // resolve() of a bare manifest fetches the config through `get`
        let name = ImageName::parse("localhost/x:1").unwrap_or_else(|e| panic!("{e}"));
        let set = resolve(
            &name,
            "x",
            manifest.into_bytes(),
            &PlatformFilter::default(),
            |_, _| Ok(cfg.to_vec()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(set.index.is_none());
        assert_eq!(
            set.default_image(&Platform::linux_amd64())
                .platform
                .architecture,
            "arm64"
        );
    }
}
