//! Registries speaking the OCI distribution API, through `oci-client` with anonymous auth
//! (bearer-token flow included). Plain HTTP is used only for loopback hosts.

use std::io::Read;

use futures::TryStreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::{
    BlobDescriptor, Document, FetchedImage, assemble, parse_document, select_platform,
    verify_digest,
};
use crate::error::{Error, Result};
use crate::reference::ImageName;

const ACCEPTED: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// Whether `registry` (`host[:port]`) is a loopback host, reachable over plain HTTP.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

/// One image in a registry.
pub struct RegistrySource {
    client: Client,
    reference: Reference,
    /// The public name.
    pub name: ImageName,
}

impl RegistrySource {
    /// A source for `name`. Requires a rustls crypto provider to be installed.
    pub fn new(name: ImageName) -> RegistrySource {
        let protocol = if is_loopback(&name.registry) {
            ClientProtocol::HttpsExcept(vec![name.registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
            ..Default::default()
        };
        let reference = match (&name.tag, &name.digest) {
            (Some(t), Some(d)) => Reference::with_tag_and_digest(
                name.registry.clone(),
                name.repository.clone(),
                t.clone(),
                d.clone(),
            ),
            (None, Some(d)) => {
                Reference::with_digest(name.registry.clone(), name.repository.clone(), d.clone())
            }
            (t, None) => Reference::with_tag(
                name.registry.clone(),
                name.repository.clone(),
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        };
        RegistrySource {
            client: Client::new(config),
            reference,
            name,
        }
    }

    fn registry_error(&self, e: oci_client::errors::OciDistributionError) -> Error {
        Error::Registry {
            image: self.name.to_string(),
            source: e,
        }
    }

    async fn manifest_raw(&self, reference: &Reference) -> Result<Vec<u8>> {
        let (bytes, _) = self
            .client
            .pull_manifest_raw(reference, &RegistryAuth::Anonymous, ACCEPTED)
            .await
            .map_err(|e| self.registry_error(e))?;
        Ok(bytes.to_vec())
    }

    /// Fetches manifest (via the index when the tag names one) and config.
    pub async fn fetch(&self) -> Result<FetchedImage> {
        let image = self.name.to_string();
        let mut bytes = self.manifest_raw(&self.reference).await?;
        if let Some(d) = &self.name.digest {
            verify_digest(&image, "manifest", &bytes, d)?;
        }
        let mut index = None;
        let mut doc = parse_document(&image, &bytes)?;
        if let Document::Index(entries) = &doc {
            let entry = select_platform(&image, entries)?;
            let r = self
                .reference
                .clone_with_digest(entry.descriptor.digest.clone());
            let manifest = self.manifest_raw(&r).await?;
            verify_digest(
                &image,
                "platform manifest",
                &manifest,
                &entry.descriptor.digest,
            )?;
            index = Some(std::mem::replace(&mut bytes, manifest));
            doc = parse_document(&image, &bytes)?;
        }
        let Document::Manifest { config, layers } = doc else {
            return Err(Error::Image {
                image,
                reason: "nested index inside an index".into(),
            });
        };
        let mut config_bytes: Vec<u8> = Vec::new();
        self.client
            .pull_blob(&self.reference, config.digest.as_str(), &mut config_bytes)
            .await
            .map_err(|e| self.registry_error(e))?;
        assemble(
            self.name.clone(),
            index,
            bytes,
            config,
            layers,
            config_bytes,
        )
    }

    /// Starts streaming a blob; the returned reader bridges to the async stream and must be
    /// read on a blocking thread.
    pub async fn open_blob(&self, blob: &BlobDescriptor) -> Result<Box<dyn Read + Send>> {
        let stream = self
            .client
            .pull_blob_stream(&self.reference, blob.digest.as_str())
            .await
            .map_err(|e| self.registry_error(e))?;
        let reader = StreamReader::new(stream.map_err(std::io::Error::other));
        Ok(Box::new(SyncIoBridge::new(reader)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.org:5000"));
        assert!(!is_loopback("docker.io"));
    }
}
