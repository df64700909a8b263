//! HTTP fetcher of repository files: `.cvmfspublished`, `.cvmfswhitelist` and `data/` objects.
//!
//! Requests look like the stock client's (CVMFS spec §8.8.1): plain `GET`, `User-Agent:
//! cvmfs Fuse strata/<version>`, no `Range`, no `Accept-Encoding`, redirects not followed,
//! and `Pragma: no-cache` / `Cache-Control: no-cache` only when retrying a download whose
//! content failed verification (§8.8.5 "bad data"). Timeouts are per request: connect and
//! idle-read (the equivalent of the stock "low-speed time", §8.8.4).
//!
//! The fetcher is async (reqwest on a tokio runtime that the mount process owns); FUSE threads
//! and the boot code, which are plain OS threads, use the `blocking_*` wrappers. Proxy chains
//! and server fail-over (§8.8.2–8.8.5) come later; [`Fetcher`] is the place they will live.

use std::io::Write;
use std::time::Duration;

use catalog::{ContentHash, Suffix};
use reqwest::header::{CACHE_CONTROL, HeaderMap, HeaderValue, PRAGMA};

use crate::cache::ObjectSource;
use crate::{Error, Result};

/// `User-Agent` sent on every request, like the stock `cvmfs Fuse <version>`.
pub const USER_AGENT: &str = concat!("cvmfs Fuse strata/", env!("CARGO_PKG_VERSION"));

/// Fetches files of one repository from one server over HTTP.
pub struct Fetcher {
    client: reqwest::Client,
    base_url: String,
    runtime: tokio::runtime::Handle,
}

impl Fetcher {
    /// Makes a fetcher for `server_url` with `@fqrn@` replaced by `fqrn` and `@org@` by the
    /// first label of `fqrn` (spec §8.1), e.g. `http://127.0.0.1:8080/cvmfs/@fqrn@`.
    /// `timeout` bounds connecting and each wait for response bytes. Requests run on
    /// `runtime`.
    ///
    /// # Errors
    /// [`Error::Config`] if the URL is not `http://` or `https://`, or the client cannot be built.
    pub fn new(
        server_url: &str,
        fqrn: &str,
        timeout: Duration,
        runtime: tokio::runtime::Handle,
    ) -> Result<Fetcher> {
        let org = fqrn.split('.').next().unwrap_or(fqrn);
        let base_url = server_url
            .replace("@fqrn@", fqrn)
            .replace("@org@", org)
            .trim_end_matches('/')
            .to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(Error::Config(format!(
                "server URL {base_url:?} must start with http:// or https://"
            )));
        }
        // reqwest is built without a default TLS provider; main.rs installs ring, and this
        // does the same for library users (a second install is a harmless no-op error).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Fetcher {
            client,
            base_url,
            runtime,
        })
    }

    /// The repository base URL after substitution, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// GETs `<base>/<path>` and streams the body into `sink`; returns the byte count.
    /// `path` is relative (`.cvmfspublished`, `data/57/98…`). `no_cache` adds the no-cache
    /// headers (spec §8.8.1: only for a retry after bad data).
    ///
    /// # Errors
    /// [`Error::Http`] for transfer failures and timeouts, [`Error::HttpStatus`] for any
    /// non-2xx answer (redirects included), [`Error::Io`] if `sink` fails. All name the URL.
    pub async fn get_to(&self, path: &str, no_cache: bool, sink: &mut dyn Write) -> Result<u64> {
        let url = format!("{}/{}", self.base_url, path.trim_start_matches('/'));
        let mut headers = HeaderMap::new();
        if no_cache {
            headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        let http_error = |e: reqwest::Error| Error::Http {
            url: url.clone(),
            reason: error_chain(&e),
        };
        let mut response = self
            .client
            .get(&url)
            .headers(headers)
            .send()
            .await
            .map_err(http_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::HttpStatus {
                url,
                status: status.as_u16(),
            });
        }
        let mut total = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(http_error)? {
            sink.write_all(&chunk).map_err(|source| Error::Io {
                context: format!("storing the body of {url}"),
                source,
            })?;
            total += chunk.len() as u64;
        }
        tracing::debug!(%url, bytes = total, "fetched");
        Ok(total)
    }

    /// [`Fetcher::get_to`] into memory.
    ///
    /// # Errors
    /// As [`Fetcher::get_to`].
    pub async fn get_bytes(&self, path: &str, no_cache: bool) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        self.get_to(path, no_cache, &mut body).await?;
        Ok(body)
    }

    /// [`Fetcher::get_to`] from a thread that is not a tokio worker (FUSE threads, boot).
    /// Writing to `sink` happens on the calling thread.
    ///
    /// # Errors
    /// As [`Fetcher::get_to`].
    ///
    /// # Panics
    /// If called from inside the tokio runtime (tokio refuses nested `block_on`).
    pub fn blocking_get_to(&self, path: &str, no_cache: bool, sink: &mut dyn Write) -> Result<u64> {
        self.runtime.block_on(self.get_to(path, no_cache, sink))
    }

    /// [`Fetcher::get_bytes`] from a thread that is not a tokio worker.
    ///
    /// # Errors
    /// As [`Fetcher::get_to`].
    pub fn blocking_get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        self.runtime.block_on(self.get_bytes(path, false))
    }
}

impl ObjectSource for Fetcher {
    fn fetch(
        &self,
        hash: &ContentHash,
        suffix: Suffix,
        no_cache: bool,
        sink: &mut dyn Write,
    ) -> Result<u64> {
        self.blocking_get_to(&hash.object_path(suffix), no_cache, sink)
    }
}

/// `e` and its sources, joined by `": "` (reqwest hides the useful part in the chain).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A one-route HTTP/1.1 server on 127.0.0.1 that records request headers and answers
    /// each path from `routes` (404 otherwise).
    async fn serve(
        routes: Vec<(&'static str, u16, &'static [u8])>,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen2.clone();
                let routes = routes.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = sock.read(&mut tmp).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&tmp[..n]);
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    seen.lock().unwrap().push(head);
                    let (status, body) = routes
                        .iter()
                        .find(|(p, _, _)| *p == path)
                        .map(|(_, s, b)| (*s, *b))
                        .unwrap_or((404, b"not found"));
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    sock.write_all(reply.as_bytes()).await.unwrap();
                    sock.write_all(body).await.unwrap();
                });
            }
        });
        (format!("http://{addr}/cvmfs/@fqrn@"), seen)
    }

    #[test]
    fn get_sends_stock_headers_and_names_url_on_error() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (url, seen) = rt.block_on(serve(vec![(
            "/cvmfs/demo.example.org/.cvmfspublished",
            200,
            b"Cabc\n",
        )]));
        let f = Fetcher::new(
            &url,
            "demo.example.org",
            Duration::from_secs(5),
            rt.handle().clone(),
        )
        .unwrap();
        assert!(f.base_url().ends_with("/cvmfs/demo.example.org"));
        assert_eq!(f.blocking_get_bytes(".cvmfspublished").unwrap(), b"Cabc\n");

        let err = f.blocking_get_bytes("data/00/missing").unwrap_err();
        match &err {
            Error::HttpStatus { url, status } => {
                assert_eq!(*status, 404);
                assert!(url.ends_with("/cvmfs/demo.example.org/data/00/missing"));
            }
            other => panic!("unexpected {other:?}"),
        }

        let mut sink = Vec::new();
        let _ = f.blocking_get_to(".cvmfspublished", true, &mut sink);
        let heads = seen.lock().unwrap().clone();
        let first = heads[0].to_ascii_lowercase();
        assert!(first.contains(&format!("user-agent: {}", USER_AGENT.to_ascii_lowercase())));
        assert!(!first.contains("range:"));
        assert!(!first.contains("accept-encoding"));
        assert!(!first.contains("no-cache"));
        let retry = heads[2].to_ascii_lowercase();
        assert!(retry.contains("pragma: no-cache"));
        assert!(retry.contains("cache-control: no-cache"));
    }

    #[test]
    fn refused_connection_is_an_http_error_naming_the_url() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let f = Fetcher::new(
            &format!("http://127.0.0.1:{port}/cvmfs/@fqrn@"),
            "x.org",
            Duration::from_secs(2),
            rt.handle().clone(),
        )
        .unwrap();
        let err = f.blocking_get_bytes(".cvmfswhitelist").unwrap_err();
        assert!(matches!(err, Error::Http { .. }), "{err:?}");
        assert!(err.to_string().contains("/cvmfs/x.org/.cvmfswhitelist"));
    }

    #[test]
    fn rejects_non_http_urls() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        assert!(matches!(
            Fetcher::new(
                "ftp://x/@fqrn@",
                "a.b",
                Duration::from_secs(1),
                rt.handle().clone()
            ),
            Err(Error::Config(_))
        ));
    }
}
