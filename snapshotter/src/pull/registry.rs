//! A minimal OCI distribution client for `pull`'s fallback: layers (and, for images not in
//! the repository at all, manifests and configs) come from the image's own registry.
//!
//! * Base URL: `http://` for loopback registries (`localhost`, `127.0.0.0/8`, `[::1]`, as
//!   containerd and Docker treat them as insecure by default), `https://` otherwise;
//!   `docker.io` is served by `registry-1.docker.io`.
//! * `GET /v2/<repository>/blobs/<digest>` and `/manifests/<tag or digest>` (distribution
//!   spec), following redirects.
//! * Anonymous bearer tokens (distribution `token` spec): a `401` with
//!   `WWW-Authenticate: Bearer realm=…,service=…,scope=…` is answered by fetching
//!   `realm?service=…&scope=…` and retrying once with `Authorization: Bearer <token>`.

use std::sync::Mutex;

use crate::error::{Error, Result};
use namespace::ImageName;

/// Media types `pull` accepts for manifests, most specific first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// One registry repository.
pub struct Registry {
    client: reqwest::Client,
    base: String,
    repository: String,
    token: Mutex<Option<String>>,
}

/// Whether `host[:port]` is a loopback registry (plain HTTP).
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Parses `Bearer realm="…",service="…",scope="…"` into (realm, other params).
fn parse_bearer(header: &str) -> Option<(String, Vec<(String, String)>)> {
    let rest = header.trim().strip_prefix("Bearer ")?;
    let mut realm = None;
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            chars.by_ref().take_while(|c| *c != '"').collect()
        } else {
            chars.by_ref().take_while(|c| *c != ',').collect()
        };
        if key.trim() == "realm" {
            realm = Some(value);
        } else {
            params.push((key.trim().to_string(), value));
        }
    }
    Some((realm?, params))
}

impl Registry {
    /// The registry of `reference`.
    pub fn new(reference: &ImageName) -> Result<Registry> {
        let host = if reference.registry == "docker.io" {
            "registry-1.docker.io".to_string()
        } else {
            reference.registry.clone()
        };
        let scheme = if is_loopback(&host) { "http" } else { "https" };
        let client = reqwest::Client::builder()
            .user_agent(concat!("strata-snapshotter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Http {
                url: format!("{scheme}://{host}/v2/"),
                reason: e.to_string(),
            })?;
        Ok(Registry {
            client,
            base: format!("{scheme}://{host}"),
            repository: reference.repository.clone(),
            token: Mutex::new(None),
        })
    }

    /// The base URL (`scheme://host`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GET `/v2/<repository>/<what>` with optional `Accept`, handling a bearer challenge
    /// once; a non-success status is [`Error::HttpStatus`].
    pub async fn get(&self, what: &str, accept: Option<&str>) -> Result<reqwest::Response> {
        let url = format!("{}/v2/{}/{what}", self.base, self.repository);
        let send = |token: Option<String>| {
            let mut req = self.client.get(&url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send()
        };
        let http = |e: reqwest::Error| Error::Http {
            url: url.clone(),
            reason: e.to_string(),
        };
        let token = self.token.lock().ok().and_then(|t| t.clone());
        let mut response = send(token).await.map_err(http)?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            let challenge = response
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_bearer);
            if let Some((realm, params)) = challenge {
                let token = self.fetch_token(&realm, &params).await?;
                if let Ok(mut t) = self.token.lock() {
                    *t = Some(token.clone());
                }
                response = send(Some(token)).await.map_err(http)?;
            }
        }
        if !response.status().is_success() {
            return Err(Error::HttpStatus {
                url,
                status: response.status().as_u16(),
            });
        }
        Ok(response)
    }

    async fn fetch_token(&self, realm: &str, params: &[(String, String)]) -> Result<String> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect();
        let separator = if realm.contains('?') { '&' } else { '?' };
        let url = format!("{realm}{separator}{}", query.join("&"));
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| Error::Http {
                url: realm.to_string(),
                reason: e.to_string(),
            })?;
        if !response.status().is_success() {
            return Err(Error::HttpStatus {
                url: realm.to_string(),
                status: response.status().as_u16(),
            });
        }
        let bytes = response.bytes().await.map_err(|e| Error::Http {
            url: realm.to_string(),
            reason: format!("token response: {e}"),
        })?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::Http {
            url: realm.to_string(),
            reason: format!("token response: {e}"),
        })?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| Error::Http {
                url: realm.to_string(),
                reason: "token response has no token".into(),
            })
    }

    /// The blob `digest` as a streaming response.
    pub async fn blob(&self, digest: &str) -> Result<reqwest::Response> {
        self.get(&format!("blobs/{digest}"), None).await
    }

    /// The whole blob `digest`, checked against its digest.
    pub async fn blob_bytes(&self, digest: &str) -> Result<Vec<u8>> {
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.repository);
        let bytes = self
            .blob(digest)
            .await?
            .bytes()
            .await
            .map_err(|e| Error::Http {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let got = namespace::Digest::of_bytes(&bytes).to_string();
        if got != digest {
            return Err(Error::Http {
                url,
                reason: format!("content has digest {got}"),
            });
        }
        Ok(bytes.to_vec())
    }

    /// The manifest (or index) named by `tag_or_digest`: bytes and `Content-Type`.
    pub async fn manifest(&self, tag_or_digest: &str) -> Result<(Vec<u8>, String)> {
        let url = format!(
            "{}/v2/{}/manifests/{tag_or_digest}",
            self.base, self.repository
        );
        let response = self
            .get(&format!("manifests/{tag_or_digest}"), Some(MANIFEST_ACCEPT))
            .await?;
        let media_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = response.bytes().await.map_err(|e| Error::Http {
            url,
            reason: e.to_string(),
        })?;
        Ok((bytes.to_vec(), media_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        for r in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "docker.io",
            "registry.example.org:5000",
            "10.0.0.1:5000",
            "[fe80::1]:5000",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn bearer_challenges_parse() {
        let (realm, params) = parse_bearer(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull""#,
        )
        .unwrap_or_default();
        assert_eq!(realm, "https://auth.docker.io/token");
        assert_eq!(
            params,
            vec![
                ("service".to_string(), "registry.docker.io".to_string()),
                (
                    "scope".to_string(),
                    "repository:library/debian:pull".to_string()
                ),
            ]
        );
        assert_eq!(parse_bearer("Basic realm=x"), None);
        assert_eq!(
            percent_encode("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
        assert_eq!(parse_bearer("Bearer service=x"), None);
    }
}
