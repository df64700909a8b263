//! Registries speaking the OCI distribution API, through `oci-client`: anonymous, HTTP basic
//! or bearer-token auth (the client follows `WWW-Authenticate`, sending the credentials of
//! [`super::auth`] to the token service). Plain HTTP only for loopback hosts and hosts named
//! with `--insecure-registry`.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;

use futures::TryStreamExt;
use namespace::Digest;
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

/// Page size asked for when listing tags ([`RegistrySource::list_tags`]).
pub const TAGS_PAGE: usize = 1000;

/// Whether `registry` (`host[:port]`) is a loopback host, reachable over plain HTTP.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

/// Whether `registry` may be reached over plain HTTP: loopback hosts, and hosts named with
/// `--insecure-registry` (exact `host[:port]` match).
pub fn plain_http_allowed(registry: &str, insecure: &[String]) -> bool {
    is_loopback(registry) || insecure.iter().any(|h| h == registry)
}

/// The `oci-client` reference for `name` (tag and/or digest; no tag → `latest`).
fn reference_of(name: &ImageName) -> Reference {
    match (&name.tag, &name.digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(
            name.registry.clone(),
            name.repository.clone(),
            t.clone(),
            d.to_string(),
        ),
        (None, Some(d)) => Reference::with_digest(
            name.registry.clone(),
            name.repository.clone(),
            d.to_string(),
        ),
        (t, None) => Reference::with_tag(
            name.registry.clone(),
            name.repository.clone(),
            t.clone().unwrap_or_else(|| "latest".into()),
        ),
    }
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
        let plain = plain_http_allowed(&name.registry, &options.insecure);
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
        let reference = reference_of(&name);
        Ok(RegistrySource {
            client: Client::new(config),
            reference,
            name,
            auth,
        })
    }

    /// A source for another image of the same registry that shares this one's HTTP client
    /// (connection pool, TLS set-up, cached bearer tokens) and credentials; `None` if `name`
    /// is on another registry. Used by `sync`, which checks many images of few registries.
    pub fn sibling(&self, name: ImageName) -> Option<RegistrySource> {
        (name.registry == self.name.registry).then(|| RegistrySource {
            client: self.client.clone(),
            reference: reference_of(&name),
            auth: self.auth.clone(),
            name,
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

    async fn config_raw(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut bytes: Vec<u8> = Vec::new();
        self.client
            .pull_blob(&self.reference, digest.to_string().as_str(), &mut bytes)
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
        let mut blobs: HashMap<Digest, Vec<u8>> = HashMap::new();
        let manifests: Vec<Vec<u8>> = match parse_document(&image, &top)? {
            Document::Manifest { .. } => vec![top.clone()],
            Document::Index(entries) => {
                let mut out = Vec::new();
                for (e, _) in select_platforms(&image, &entries, filter)? {
                    let r = self
                        .reference
                        .clone_with_digest(e.descriptor.digest.to_string());
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

    /// The digest (`sha256:<hex>`) of the manifest or index the reference names: a `HEAD`
    /// request (`Docker-Content-Digest`, OCI distribution spec), or `GET` and hash when the
    /// registry sends no digest header. What `sync` compares with the published image.
    pub async fn manifest_digest(&self) -> Result<String> {
        self.client
            .fetch_manifest_digest(&self.reference, &self.auth)
            .await
            .map_err(|e| self.registry_error(e))
    }

    /// Every tag of the repository, in registry order (`GET /v2/<name>/tags/list`, OCI
    /// distribution spec "Listing Tags"). `oci-client` returns one page and hides the `Link`
    /// header, so pages are requested with `n` = [`TAGS_PAGE`] and `last` = the last tag seen
    /// until a page brings no new tag (also ending the loop on registries that ignore `last`).
    pub async fn list_tags(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            let page = self
                .client
                .list_tags(
                    &self.reference,
                    &self.auth,
                    Some(TAGS_PAGE),
                    out.last().map(String::as_str),
                )
                .await
                // Name the repository, not the placeholder tag of the reference (`:latest`).
                .map_err(|source| Error::Registry {
                    image: format!(
                        "{}/{} (tag list)",
                        self.reference.registry(),
                        self.reference.repository()
                    ),
                    source,
                })?;
            let before = out.len();
            for t in page.tags {
                if seen.insert(t.clone()) {
                    out.push(t);
                }
            }
            if out.len() == before {
                return Ok(out);
            }
        }
    }

    /// Starts streaming a blob; the returned reader bridges to the async stream and must be
    /// read on a blocking thread.
    pub async fn open_blob(&self, blob: &BlobDescriptor) -> Result<Box<dyn Read + Send>> {
        let stream = self
            .client
            .pull_blob_stream(&self.reference, blob.digest.to_string().as_str())
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
        let insecure = vec!["registry.lan:5000".to_string()];
        assert!(plain_http_allowed("registry.lan:5000", &insecure));
        assert!(!plain_http_allowed("registry.lan", &insecure));
        assert!(!plain_http_allowed("registry.lan:5001", &insecure));
        assert!(plain_http_allowed("127.0.0.1:5001", &[]));
    }

    /// A registry that demands a bearer token from its token service, which demands HTTP
    /// basic credentials `u:p` (the Docker Hub / Harbor / GitLab flow).
    async fn token_registry(
        blobs: std::collections::HashMap<String, Vec<u8>>,
        manifest: Vec<u8>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use axum::extract::{Path as AxPath, State};
        use axum::http::{HeaderMap, StatusCode, header};
        use axum::response::{IntoResponse, Response};
        use axum::routing::get;
        use base64::Engine;
        use std::sync::atomic::{AtomicUsize, Ordering};

        #[derive(Clone)]
        struct St {
            blobs: std::sync::Arc<std::collections::HashMap<String, Vec<u8>>>,
            manifest: std::sync::Arc<Vec<u8>>,
            realm: String,
            tokens: std::sync::Arc<AtomicUsize>,
        }
        /// `None` if authorized, else the 401 challenge.
        fn authorized(st: &St, h: &HeaderMap) -> Option<Response> {
            if h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
                == Some("Bearer good-token")
            {
                return None;
            }
            let challenge = format!(
                "Bearer realm=\"{}\",service=\"test\",scope=\"repository:demo:pull\"",
                st.realm
            );
            Some(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, challenge)],
                )
                    .into_response(),
            )
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let tokens = std::sync::Arc::new(AtomicUsize::new(0));
        let st = St {
            blobs: std::sync::Arc::new(blobs),
            manifest: std::sync::Arc::new(manifest),
            realm: format!("http://{addr}/token"),
            tokens: tokens.clone(),
        };
        let app = axum::Router::new()
            .route(
                "/token",
                get(|State(st): State<St>, h: HeaderMap| async move {
                    let want = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode("u:p")
                    );
                    if h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
                        != Some(want.as_str())
                    {
                        return StatusCode::UNAUTHORIZED.into_response();
                    }
                    st.tokens.fetch_add(1, Ordering::SeqCst);
                    axum::Json(serde_json::json!({"token": "good-token"})).into_response()
                }),
            )
            .route(
                "/v2/",
                get(|State(st): State<St>, h: HeaderMap| async move {
                    authorized(&st, &h).unwrap_or_else(|| StatusCode::OK.into_response())
                }),
            )
            .route(
                "/v2/demo/manifests/{reference}",
                get(|State(st): State<St>, h: HeaderMap| async move {
                    if let Some(r) = authorized(&st, &h) {
                        return r;
                    }
                    let ct = "application/vnd.oci.image.manifest.v1+json";
                    let digest = crate::digest::sha256_digest(&st.manifest);
                    (
                        [
                            (header::CONTENT_TYPE, ct.to_string()),
                            (
                                header::HeaderName::from_static("docker-content-digest"),
                                digest,
                            ),
                        ],
                        st.manifest.as_ref().clone(),
                    )
                        .into_response()
                }),
            )
            .route(
                "/v2/demo/blobs/{digest}",
                get(
                    |State(st): State<St>, AxPath(d): AxPath<String>, h: HeaderMap| async move {
                        if let Some(r) = authorized(&st, &h) {
                            return r;
                        }
                        match st.blobs.get(&d) {
                            Some(b) => b.clone().into_response(),
                            None => StatusCode::NOT_FOUND.into_response(),
                        }
                    },
                ),
            )
            .with_state(st);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (addr.to_string(), tokens)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bearer_token_flow_with_credentials() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let layer = b"not really a tar".to_vec();
        let layer_digest = crate::digest::sha256_digest(&layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}))
        .unwrap_or_default();
        let config_digest = crate::digest::sha256_digest(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": layer.len()}]}))
        .unwrap_or_default();
        let blobs = [
            (config_digest.clone(), config),
            (layer_digest.clone(), layer.clone()),
        ]
        .into_iter()
        .collect();
        let (host, tokens) = token_registry(blobs, manifest).await;
        let name = ImageName::parse(&format!("{host}/demo:1")).unwrap_or_else(|e| panic!("{e}"));

        // anonymous: the token service refuses
        let anon = RegistrySource::new(name.clone(), &RegistryOptions::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(anon.fetch(&PlatformFilter::default()).await.is_err());

        // credentials from a docker config.json
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let authfile = dir.path().join("config.json");
        std::fs::write(
            &authfile,
            format!(r#"{{"auths":{{"{host}":{{"auth":"dTpw"}}}}}}"#),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let options = RegistryOptions {
            authfile: Some(authfile),
            ..RegistryOptions::default()
        };
        let src = RegistrySource::new(name, &options).unwrap_or_else(|e| panic!("{e}"));
        let set = src
            .fetch(&PlatformFilter::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            set.images[0].config_descriptor.digest.to_string(),
            config_digest
        );
        let blob = set.images[0].layers[0].clone();
        let mut reader = src.open_blob(&blob).await.unwrap_or_else(|e| panic!("{e}"));
        let got = tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            reader.read_to_end(&mut v).map(|_| v)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, layer);
        assert!(tokens.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    }
}
