//! An image's metadata as published in the repository mount (CONTRACTS §3):
//! `.metadata/<registry>/<repository>:<tag>/{manifest.json,config.json}`, and what `pull`
//! derives from it: the manifest descriptor, layer digests, diffIDs and OCI ChainIDs.
//!
//! Only the fields `pull` needs are parsed (OCI image-spec `manifest.md`, `config.md`;
//! Docker schema 2 has the same shape).

use std::path::{Path, PathBuf};

use namespace::{Digest, Platform, chain_ids, paths};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::pull::platform::platform_dir;

/// OCI image manifest media type (used when the manifest does not name its own type and
/// its config is not a Docker config).
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// A content descriptor: media type, `sha256:<hex>` digest, size in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: i64,
}

#[derive(Deserialize)]
struct ManifestJson {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ConfigJson {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Everything `pull` needs about one image.
#[derive(Clone, Debug)]
pub struct Image {
    /// `manifest.json` bytes as published.
    pub manifest: Vec<u8>,
    /// The manifest's descriptor (digest = sha256 of [`Image::manifest`]).
    pub manifest_descriptor: Descriptor,
    /// `config.json` bytes as published.
    pub config: Vec<u8>,
    /// The config's descriptor from the manifest (digest checked against the bytes).
    pub config_descriptor: Descriptor,
    /// Layer descriptors, bottom first.
    pub layers: Vec<Descriptor>,
    /// Uncompressed layer digests from the config, bottom first.
    pub diff_ids: Vec<Digest>,
    /// OCI ChainIDs, bottom first (`chain_ids[i]` names the snapshot of layers `0..=i`).
    pub chain_ids: Vec<Digest>,
}

/// `<mountpoint>/.metadata/<public path>`.
pub fn metadata_dir(mountpoint: &Path, public_path: &str) -> PathBuf {
    mountpoint.join(paths::join(&paths::metadata_dir(public_path)))
}

impl Image {
    /// Parses an image from its manifest and config bytes. `reference` names it in errors
    /// ([`Error::ImageMetadata`]: bad JSON, config digest mismatch, diffID count mismatch).
    pub fn parse(reference: &str, manifest: Vec<u8>, config: Vec<u8>) -> Result<Image> {
        let bad = |reason: String| Error::ImageMetadata {
            reference: reference.to_string(),
            reason,
        };
        let m: ManifestJson =
            serde_json::from_slice(&manifest).map_err(|e| bad(format!("manifest.json: {e}")))?;
        let c: ConfigJson =
            serde_json::from_slice(&config).map_err(|e| bad(format!("config.json: {e}")))?;
        let config_digest = Digest::of_bytes(&config).to_string();
        if config_digest != m.config.digest {
            return Err(bad(format!(
                "config.json has digest {config_digest}, the manifest says {}",
                m.config.digest
            )));
        }
        if c.rootfs.diff_ids.len() != m.layers.len() {
            return Err(bad(format!(
                "{} layers in the manifest but {} diff_ids in the config",
                m.layers.len(),
                c.rootfs.diff_ids.len()
            )));
        }
        let diff_ids = c
            .rootfs
            .diff_ids
            .iter()
            .map(|d| {
                d.parse::<Digest>()
                    .map_err(|e| bad(format!("config.json: rootfs.diff_ids: {e}")))
            })
            .collect::<Result<Vec<Digest>>>()?;
        let media_type = m.media_type.clone().unwrap_or_else(|| {
            if m.config.media_type == DOCKER_CONFIG {
                DOCKER_MANIFEST.to_string()
            } else {
                OCI_MANIFEST.to_string()
            }
        });
        let manifest_descriptor = Descriptor {
            media_type,
            digest: Digest::of_bytes(&manifest).to_string(),
            size: i64::try_from(manifest.len()).unwrap_or(i64::MAX),
        };
        let chain_ids = chain_ids(&diff_ids);
        Ok(Image {
            manifest,
            manifest_descriptor,
            config,
            config_descriptor: m.config,
            layers: m.layers,
            diff_ids,
            chain_ids,
        })
    }

    /// Reads `manifest.json` and `config.json` from `<mountpoint>/.metadata/<public_path>/`.
    /// Blocking.
    pub fn read(mountpoint: &Path, public_path: &str) -> Result<Image> {
        let dir = metadata_dir(mountpoint, public_path);
        Image::read_dir(&dir, public_path)
    }

    fn read_dir(dir: &Path, public_path: &str) -> Result<Image> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| Error::ImageMetadata {
                reference: public_path.to_string(),
                reason: format!(
                    "{}: {e} (is the image published and mounted?)",
                    path.display()
                ),
            })
        };
        // Both at once: each is a round trip to the server on a cold node.
        let (manifest, config) = std::thread::scope(|scope| {
            let config = scope.spawn(|| read(paths::CONFIG_JSON));
            let manifest = read(paths::MANIFEST_JSON);
            let config = config.join().unwrap_or_else(|_| {
                Err(Error::ImageMetadata {
                    reference: public_path.to_string(),
                    reason: "reading config.json panicked".into(),
                })
            });
            (manifest, config)
        });
        Image::parse(public_path, manifest?, config?)
    }

    /// Reads `platform`'s image from the repository (CONTRACTS §3): from
    /// `.metadata/<ref>/platforms/<os>-<arch>[-<variant>]/` when the image has a
    /// `platforms/` directory, else from `.metadata/<ref>/` if its config's platform fits.
    /// `Ok(None)` if `.metadata/<ref>` does not exist (not published); errors if the
    /// platform is not published. Blocking.
    pub fn read_platform(
        mountpoint: &Path,
        public_path: &str,
        platform: &Platform,
    ) -> Result<Option<Image>> {
        let dir = metadata_dir(mountpoint, public_path);
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::ImageMetadata {
                    reference: public_path.to_string(),
                    reason: format!("{}: {e} (is the repository mounted?)", dir.display()),
                });
            }
        }
        let image = match platform_dir(&dir, public_path, platform)? {
            Some(pdir) => Image::read_dir(&pdir, public_path)?,
            None => Image::read_dir(&dir, public_path)?,
        };
        image.check_platform(public_path, platform)?;
        Ok(Some(image))
    }

    /// [`Error::ImageMetadata`] unless the config's `os`/`architecture`/`variant` fit.
    pub fn check_platform(&self, reference: &str, platform: &Platform) -> Result<()> {
        let c: ConfigPlatform = serde_json::from_slice(&self.config).unwrap_or_default();
        if platform.fits(
            c.os.as_deref(),
            c.architecture.as_deref(),
            c.variant.as_deref(),
        ) {
            Ok(())
        } else {
            Err(Error::ImageMetadata {
                reference: reference.to_string(),
                reason: format!(
                    "the image is for {}/{}, not {platform} (use --platform)",
                    c.os.unwrap_or_default(),
                    c.architecture.unwrap_or_default()
                ),
            })
        }
    }
}

#[derive(Deserialize, Default)]
struct ConfigPlatform {
    os: Option<String>,
    architecture: Option<String>,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct IndexJson {
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    platform: Option<ConfigPlatform>,
}

/// Whether `bytes` (with HTTP `content_type`) is an image index / manifest list.
pub fn is_index(bytes: &[u8], content_type: &str) -> bool {
    if content_type.contains("index") || content_type.contains("manifest.list") {
        return true;
    }
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Probe>(bytes).is_ok_and(|p| p.manifests.is_some())
}

/// The digest of `platform`'s manifest in an index (first match, as containerd's
/// platform matcher picks), or [`Error::ImageMetadata`] listing what the index has.
pub fn select_from_index(reference: &str, index: &[u8], platform: &Platform) -> Result<String> {
    let idx: IndexJson = serde_json::from_slice(index).map_err(|e| Error::ImageMetadata {
        reference: reference.to_string(),
        reason: format!("index: {e}"),
    })?;
    let mut seen = Vec::new();
    for m in &idx.manifests {
        let p = m.platform.as_ref();
        let (os, arch, var) = (
            p.and_then(|p| p.os.as_deref()),
            p.and_then(|p| p.architecture.as_deref()),
            p.and_then(|p| p.variant.as_deref()),
        );
        if os.is_some() && arch.is_some() && platform.fits(os, arch, var) {
            return Ok(m.digest.clone());
        }
        seen.push(format!(
            "{}/{}{}",
            os.unwrap_or("?"),
            arch.unwrap_or("?"),
            var.map(|v| format!("/{v}")).unwrap_or_default()
        ));
    }
    Err(Error::ImageMetadata {
        reference: reference.to_string(),
        reason: format!(
            "no manifest for {platform} in the index (has: {})",
            seen.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn sha256_digest(bytes: &[u8]) -> String {
        Digest::of_bytes(bytes).to_string()
    }

    fn image_bytes(config_media: &str, with_media_type: bool) -> (Vec<u8>, Vec<u8>) {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
            d(1),
            d(2)
        )
        .into_bytes();
        let mt = if with_media_type {
            format!(r#""mediaType":"{DOCKER_MANIFEST}","#)
        } else {
            String::new()
        };
        let manifest = format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"{config_media}","digest":"{}","size":{}}},"layers":[{{"mediaType":"x","digest":"{}","size":10}},{{"mediaType":"x","digest":"{}","size":20}}]}}"#,
            sha256_digest(&config),
            config.len(),
            d(11),
            d(12)
        )
        .into_bytes();
        (manifest, config)
    }

    #[test]
    fn parses_manifest_and_config() -> Result<()> {
        let (manifest, config) = image_bytes(DOCKER_CONFIG, true);
        let img = Image::parse("r", manifest.clone(), config)?;
        assert_eq!(img.manifest_descriptor.digest, sha256_digest(&manifest));
        assert_eq!(img.manifest_descriptor.size, manifest.len() as i64);
        assert_eq!(img.manifest_descriptor.media_type, DOCKER_MANIFEST);
        assert_eq!(img.layers.len(), 2);
        assert_eq!(img.layers[1].digest, d(12));
        let diff_ids: Vec<String> = img.diff_ids.iter().map(Digest::to_string).collect();
        assert_eq!(diff_ids, vec![d(1), d(2)]);
        assert_eq!(img.chain_ids, chain_ids(&img.diff_ids));
        Ok(())
    }

    #[test]
    fn infers_media_type_when_absent() -> Result<()> {
        let (m, c) = image_bytes("application/vnd.oci.image.config.v1+json", false);
        assert_eq!(
            Image::parse("r", m, c)?.manifest_descriptor.media_type,
            OCI_MANIFEST
        );
        let (m, c) = image_bytes(DOCKER_CONFIG, false);
        assert_eq!(
            Image::parse("r", m, c)?.manifest_descriptor.media_type,
            DOCKER_MANIFEST
        );
        Ok(())
    }

    #[test]
    fn reads_the_requested_platform_and_refuses_others() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Io {
            context: "tempdir".into(),
            source: e,
        })?;
        let (m, c) = image_bytes(DOCKER_CONFIG, true);
        let meta = metadata_dir(dir.path(), "r/x:1");
        let arm = meta.join("platforms/linux-arm64-v8");
        std::fs::create_dir_all(&arm).map_err(|e| Error::Io {
            context: "mkdir".into(),
            source: e,
        })?;
        let arm_config = String::from_utf8_lossy(&c)
            .replace("amd64", "arm64")
            .into_bytes();
        let arm_manifest = String::from_utf8_lossy(&m)
            .replace(&sha256_digest(&c), &sha256_digest(&arm_config))
            .into_bytes();
        for (p, b) in [
            (meta.join("manifest.json"), &m),
            (meta.join("config.json"), &c),
            (arm.join("manifest.json"), &arm_manifest),
            (arm.join("config.json"), &arm_config),
        ] {
            std::fs::write(p, b).map_err(|e| Error::Io {
                context: "write".into(),
                source: e,
            })?;
        }
        let arm64 = Platform::parse("linux/arm64")?;
        let img = Image::read_platform(dir.path(), "r/x:1", &arm64)?
            .ok_or(Error::NotFound("img".into()))?;
        assert_eq!(img.config, arm_config);
        // amd64 has no platforms/ entry here: refused, naming what is published.
        let amd64 = Platform::parse("linux/amd64")?;
        assert!(matches!(
            Image::read_platform(dir.path(), "r/x:1", &amd64),
            Err(Error::ImageMetadata { reason, .. }) if reason.contains("linux-arm64-v8")
        ));
        // Older layout (no platforms/): the config's platform must fit.
        std::fs::remove_dir_all(meta.join("platforms")).map_err(|e| Error::Io {
            context: "rm".into(),
            source: e,
        })?;
        assert!(Image::read_platform(dir.path(), "r/x:1", &amd64)?.is_some());
        assert!(Image::read_platform(dir.path(), "r/x:1", &arm64).is_err());
        assert!(Image::read_platform(dir.path(), "r/y:1", &amd64)?.is_none());
        Ok(())
    }

    #[test]
    fn picks_the_platform_from_an_index() -> Result<()> {
        let index = br#"{"schemaVersion":2,"manifests":[
            {"digest":"sha256:a","platform":{"os":"linux","architecture":"arm","variant":"v7"}},
            {"digest":"sha256:b","platform":{"os":"linux","architecture":"amd64"}},
            {"digest":"sha256:c","platform":{"os":"unknown","architecture":"unknown"}}]}"#;
        assert!(is_index(index, "application/json"));
        assert!(!is_index(
            b"{\"layers\":[]}",
            "application/vnd.oci.image.manifest.v1+json"
        ));
        assert_eq!(
            select_from_index("r", index, &Platform::parse("linux/amd64")?)?,
            "sha256:b"
        );
        assert_eq!(
            select_from_index("r", index, &Platform::parse("linux/arm/v7")?)?,
            "sha256:a"
        );
        assert!(select_from_index("r", index, &Platform::parse("linux/s390x")?).is_err());
        Ok(())
    }

    #[test]
    fn rejects_config_digest_mismatch_and_missing_files() {
        let (m, mut c) = image_bytes(DOCKER_CONFIG, true);
        c.push(b' ');
        assert!(matches!(
            Image::parse("r", m, c),
            Err(Error::ImageMetadata { .. })
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Image::read(dir.path(), "docker.io/library/x:1");
        assert!(matches!(err, Err(Error::ImageMetadata { .. })));
    }
}
