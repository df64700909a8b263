//! Registries speaking the OCI distribution API, through `oci-client`: anonymous, HTTP basic
//! or bearer-token auth (the client follows `WWW-Authenticate`, sending the credentials of
//! [`super::auth`] to the token service). Plain HTTP only for loopback hosts and hosts named
//! with `--insecure-registry`.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;

use futures::TryStreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::auth::{Credentials, credentials_for};
use super::{
    BlobDescriptor, Document, FetchedSet, PlatformFilter, parse_document, resolve,
    select_platforms, verify_digest,
};
use crate::error::{Error, Result};
use crate::reference::ImageName;

/// How to reach registries: credentials and which hosts may be plain HTTP.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// `--username/--password`, used for every registry of the batch.
    pub credentials: Option<Credentials>,
    /// `--authfile` (docker `config.json` format).
    pub authfile: Option<PathBuf>,
    /// `--insecure-registry HOST[:PORT]`: plain HTTP allowed.
    pub insecure: Vec<String>,
}

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
    auth: RegistryAuth,
    /// The public name.
    pub name: ImageName,
}

impl RegistrySource {
    /// A source for `name`. Requires a rustls crypto provider to be installed.
    ///
    /// Errors when the credentials file cannot be read or parsed.
    pub fn new(name: ImageName, options: &RegistryOptions) -> Result<RegistrySource> {
        let auth = match credentials_for(
            &name.registry,
            options.credentials.as_ref(),
            options.authfile.as_deref(),
        )? {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        let plain = is_loopback(&name.registry) || options.insecure.contains(&name.registry);
        let protocol = if plain {
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
        Ok(RegistrySource {
            client: Client::new(config),
            reference,
            name,
            auth,
        })
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
            .pull_manifest_raw(reference, &self.auth, ACCEPTED)
            .await
            .map_err(|e| self.registry_error(e))?;
        Ok(bytes.to_vec())
    }

    async fn config_raw(&self, digest: &str) -> Result<Vec<u8>> {
        let mut bytes: Vec<u8> = Vec::new();
        self.client
            .pull_blob(&self.reference, digest, &mut bytes)
            .await
            .map_err(|e| self.registry_error(e))?;
        Ok(bytes)
    }

    /// Fetches the manifest or index the reference names and, for an index, the manifests
    /// of the platforms `filter` selects; then their configs.
    pub async fn fetch(&self, filter: &PlatformFilter) -> Result<FetchedSet> {
        let image = self.name.to_string();
        let top = self.manifest_raw(&self.reference).await?;
        if let Some(d) = &self.name.digest {
            verify_digest(&image, "manifest", &top, d)?;
        }
        // Fetch everything resolve() will ask for, then resolve synchronously.
        let mut blobs: HashMap<String, Vec<u8>> = HashMap::new();
        let manifests: Vec<Vec<u8>> = match parse_document(&image, &top)? {
            Document::Manifest { .. } => vec![top.clone()],
            Document::Index(entries) => {
                let mut out = Vec::new();
                for (e, _) in select_platforms(&image, &entries, filter)? {
                    let r = self
                        .reference
                        .clone_with_digest(e.descriptor.digest.clone());
                    let m = self.manifest_raw(&r).await?;
                    verify_digest(&image, "platform manifest", &m, &e.descriptor.digest)?;
                    blobs.insert(e.descriptor.digest.clone(), m.clone());
                    out.push(m);
                }
                out
            }
        };
        for m in &manifests {
            if let Document::Manifest { config, .. } = parse_document(&image, m)?
                && !blobs.contains_key(&config.digest)
            {
                let c = self.config_raw(&config.digest).await?;
                blobs.insert(config.digest.clone(), c);
            }
        }
        resolve(&self.name, &image, top, filter, |d, what| {
            blobs.get(&d.digest).cloned().ok_or_else(|| Error::Image {
                image: image.clone(),
                reason: format!("{what} {} was not fetched", d.digest),
            })
        })
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
