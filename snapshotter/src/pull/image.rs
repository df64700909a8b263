//! An image's metadata as published in the repository mount (CONTRACTS §3):
//! `.metadata/<registry>/<repository>:<tag>/{manifest.json,config.json}`, and what `pull`
//! derives from it: the manifest descriptor, layer digests, diffIDs and OCI ChainIDs.
//!
//! Only the fields `pull` needs are parsed (OCI image-spec `manifest.md`, `config.md`;
//! Docker schema 2 has the same shape).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

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
    pub diff_ids: Vec<String>,
    /// OCI ChainIDs, bottom first (`chain_ids[i]` names the snapshot of layers `0..=i`).
    pub chain_ids: Vec<String>,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// OCI ChainIDs (image-spec `config.md`): `ChainID(L0) = DiffID(L0)`,
/// `ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(prev) => sha256_digest(format!("{prev} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// `<mountpoint>/.metadata/<public path>`.
pub fn metadata_dir(mountpoint: &Path, public_path: &str) -> PathBuf {
    mountpoint.join(".metadata").join(public_path)
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
        let config_digest = sha256_digest(&config);
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
        let media_type = m.media_type.clone().unwrap_or_else(|| {
            if m.config.media_type == DOCKER_CONFIG {
                DOCKER_MANIFEST.to_string()
            } else {
                OCI_MANIFEST.to_string()
            }
        });
        let manifest_descriptor = Descriptor {
            media_type,
            digest: sha256_digest(&manifest),
            size: i64::try_from(manifest.len()).unwrap_or(i64::MAX),
        };
        let chain_ids = chain_ids(&c.rootfs.diff_ids);
        Ok(Image {
            manifest,
            manifest_descriptor,
            config,
            config_descriptor: m.config,
            layers: m.layers,
            diff_ids: c.rootfs.diff_ids,
            chain_ids,
        })
    }

    /// Reads `manifest.json` and `config.json` from `<mountpoint>/.metadata/<public_path>/`.
    /// Blocking.
    pub fn read(mountpoint: &Path, public_path: &str) -> Result<Image> {
        let dir = metadata_dir(mountpoint, public_path);
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
        Image::parse(public_path, read("manifest.json")?, read("config.json")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let diffs = vec![d(1), d(2), d(3)];
        let chains = chain_ids(&diffs);
        assert_eq!(chains[0], d(1));
        let c1 = sha256_digest(format!("{} {}", d(1), d(2)).as_bytes());
        assert_eq!(chains[1], c1);
        assert_eq!(
            chains[2],
            sha256_digest(format!("{c1} {}", d(3)).as_bytes())
        );
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn known_chain_id_vector() {
        // printf 'sha256:aaa…a sha256:bbb…b' | sha256sum (coreutils), 64 of each letter.
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            chain_ids(&[a, b])[1],
            "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"
        );
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
        assert_eq!(img.diff_ids, vec![d(1), d(2)]);
        assert_eq!(img.chain_ids.len(), 2);
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
