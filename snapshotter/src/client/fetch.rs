//! HTTP fetcher of repository files: `.cvmfspublished`, `.cvmfswhitelist` and `data/` objects,
//! through a CVMFS proxy chain with server and proxy fail-over (docs/format.md §8.8).
//!
//! Requests look like the stock client's (§8.8.1): plain `GET`, `User-Agent: cvmfs Fuse
//! strata/<version>`, never a `Range`, no `Accept-Encoding`, redirects not followed, and
//! `Pragma: no-cache` / `Cache-Control: no-cache` only when retrying a download whose content
//! failed verification (§8.8.5 "bad data"). Timeouts are per request: connect and idle-read
//! (the equivalent of the stock "low-speed time", §8.8.4), `timeout` through a proxy and
//! `timeout_direct` without.
//!
//! There is one pooled `reqwest::Client` per distinct proxy of the chain and one for
//! `DIRECT` (`.no_proxy()`, so environment proxies are ignored). One request tries the
//! servers in order, healthy ones first (§8.8.3); for each server the proxies group by
//! group, random inside a group, healthy ones first ([`crate::client::proxy_chain::proxy_order`]).
//! Errors are classified as in §8.8.5:
//!
//! * HTTP 5xx / 400 / 404 / 3xx → **host** error (next server), unless the answer carries
//!   `X-Squid-Error` or a `Proxy-Status` with `error=` → **proxy** error (next proxy);
//! * HTTP 429 → host transfer error; other statuses → proxy error through a proxy, host
//!   error when direct;
//! * connect failure, timeout, short or garbled transfer → proxy (or, direct, host)
//!   transfer error; transfer errors are first retried on the same route up to
//!   `max_retries` times after a back-off (uniform in `[0, backoff_init]`, doubling,
//!   capped at `backoff_max`).
//!
//! A failed proxy or host is tried only after the healthy ones until its reset time has
//! passed (`proxy_reset_after`, `host_reset_after`). Every failure is logged at `warn` with
//! the proxy, the server and the reason. When all proxies fail for a server, the next
//! server is tried; when every server has failed the last error is returned.
//!
//! The fetcher is async (reqwest on the mount's tokio runtime); FUSE threads and the boot
//! code use the `blocking_*` wrappers.

use std::time::Duration;

use catalog::{ContentHash, Suffix};
use reqwest::header::{CACHE_CONTROL, HeaderMap, HeaderValue, PRAGMA};

use crate::client::cache::{ObjectSource, Sink};
use crate::client::mount_config::NetworkSettings;
use crate::client::proxy_chain::{Health, Proxy, ProxyChain, proxy_order};
use crate::{Error, Result};

/// `User-Agent` sent on every request, like the stock `cvmfs Fuse <version>`.
pub const USER_AGENT: &str = concat!("cvmfs Fuse strata/", env!("CARGO_PKG_VERSION"));

/// Why one attempt failed (docs/format.md §8.8.5).
#[derive(Debug)]
enum Failure {
    /// The proxy is at fault: try another proxy. `transfer` errors may be retried first.
    Proxy { error: Error, transfer: bool },
    /// The server is at fault: try another server. `transfer` errors may be retried first.
    Host { error: Error, transfer: bool },
    /// A local error (writing the sink): give up.
    Local(Error),
}

/// Fetches files of one repository from its servers through its proxy chain.
pub struct Fetcher {
    servers: Vec<String>,
    chain: ProxyChain,
    proxies: Vec<Proxy>,
    clients: Vec<reqwest::Client>,
    proxy_health: Health,
    host_health: Health,
    settings: NetworkSettings,
    runtime: tokio::runtime::Handle,
}

impl Fetcher {
    /// Makes a fetcher for the base URLs `servers` (already substituted, see
    /// [`crate::client::mount_config::server_list`]) through `chain`. Requests run on `runtime`.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty server list or if a client cannot be built (bad proxy
    /// URL).
    pub fn new(
        servers: Vec<String>,
        chain: ProxyChain,
        settings: NetworkSettings,
        runtime: tokio::runtime::Handle,
    ) -> Result<Fetcher> {
        if servers.is_empty() {
            return Err(Error::Config("the server list is empty".into()));
        }
        // reqwest is built without a default TLS provider; main.rs installs ring, and this
        // does the same for library users (a second install is a harmless no-op error).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let proxies = chain.distinct();
        let clients = proxies
            .iter()
            .map(|p| build_client(p, &settings))
            .collect::<Result<Vec<_>>>()?;
        Ok(Fetcher {
            proxy_health: Health::new(proxies.len(), settings.proxy_reset_after),
            host_health: Health::new(servers.len(), settings.host_reset_after),
            servers,
            chain,
            proxies,
            clients,
            settings,
            runtime,
        })
    }

    /// A fetcher for one server without proxy and default settings except `timeout` (both
    /// timeouts).
    ///
    /// # Errors
    /// As [`Fetcher::new`], plus [`Error::Config`] for a bad URL.
    pub fn direct(
        server_url: &str,
        fqrn: &str,
        timeout: Duration,
        runtime: tokio::runtime::Handle,
    ) -> Result<Fetcher> {
        let settings = NetworkSettings {
            timeout,
            timeout_direct: timeout,
            ..NetworkSettings::default()
        };
        Fetcher::new(
            crate::client::mount_config::server_list(server_url, fqrn)?,
            ProxyChain::parse("DIRECT")?,
            settings,
            runtime,
        )
    }

    /// The base URLs, in configured order.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// GETs `<server>/<path>` through the chain and streams the body into `sink` (restarted
    /// before every attempt); returns the byte count. `path` is relative
    /// (`.cvmfspublished`, `data/57/98…`). `no_cache` adds the no-cache headers (docs/format.md §8.8.1:
    /// only for a retry after bad data).
    ///
    /// # Errors
    /// The error of the last attempt when every server and proxy failed:
    /// [`Error::Http`] for transfer failures and timeouts, [`Error::HttpStatus`] for non-2xx
    /// answers; [`Error::Io`] if `sink` fails. All name the URL.
    pub async fn get_to(&self, path: &str, no_cache: bool, sink: &mut dyn Sink) -> Result<u64> {
        let path = path.trim_start_matches('/');
        let hosts = self
            .host_health
            .healthy_first((0..self.servers.len()).collect());
        let mut last = None;
        for host in hosts {
            let url = format!("{}/{}", self.servers[host], path);
            for proxy in proxy_order(&self.chain, &self.proxies, &self.proxy_health) {
                match self.attempt_with_retries(&url, proxy, no_cache, sink).await {
                    Ok(n) => {
                        self.proxy_health.mark_ok(proxy);
                        tracing::debug!(%url, proxy = %self.proxies[proxy], bytes = n, "fetched");
                        return Ok(n);
                    }
                    Err(Failure::Local(e)) => return Err(e),
                    Err(Failure::Proxy { error, .. }) => {
                        tracing::warn!(
                            proxy = %self.proxies[proxy],
                            host = %self.servers[host],
                            error = %error,
                            "proxy failed; trying the next proxy"
                        );
                        self.proxy_health.mark_failed(proxy);
                        last = Some(error);
                    }
                    Err(Failure::Host { error, .. }) => {
                        tracing::warn!(
                            host = %self.servers[host],
                            proxy = %self.proxies[proxy],
                            error = %error,
                            "host failed; trying the next host"
                        );
                        self.host_health.mark_failed(host);
                        last = Some(error);
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Config("no server configured".into())))
    }

    /// One route (server URL, proxy), retrying transfer errors with back-off.
    async fn attempt_with_retries(
        &self,
        url: &str,
        proxy: usize,
        no_cache: bool,
        sink: &mut dyn Sink,
    ) -> std::result::Result<u64, Failure> {
        let mut bound = self.settings.backoff_init;
        let mut retries = 0;
        loop {
            let result = self.attempt(url, proxy, no_cache, sink).await;
            let transfer = matches!(
                result,
                Err(Failure::Proxy { transfer: true, .. } | Failure::Host { transfer: true, .. })
            );
            if !transfer || retries >= self.settings.max_retries {
                return result;
            }
            retries += 1;
            let delay = if retries == 1 {
                Duration::from_micros(rand::random_range(0..=bound.as_micros() as u64))
            } else {
                bound = (bound * 2).min(self.settings.backoff_max);
                bound
            };
            if let Err(Failure::Proxy { error, .. } | Failure::Host { error, .. }) = &result {
                tracing::info!(%url, proxy = %self.proxies[proxy], error = %error, ?delay, "transfer failed; retrying");
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One GET over one route, classified (docs/format.md §8.8.5).
    async fn attempt(
        &self,
        url: &str,
        proxy: usize,
        no_cache: bool,
        sink: &mut dyn Sink,
    ) -> std::result::Result<u64, Failure> {
        let via_proxy = self.proxies[proxy] != Proxy::Direct;
        let transfer_failure = |e: &reqwest::Error| {
            let error = Error::Http {
                url: url.to_string(),
                reason: format!("{} (via {})", error_chain(e), self.proxies[proxy]),
            };
            if via_proxy {
                Failure::Proxy {
                    error,
                    transfer: true,
                }
            } else {
                Failure::Host {
                    error,
                    transfer: true,
                }
            }
        };
        let local = |source: std::io::Error| {
            Failure::Local(Error::Io {
                context: format!("storing the body of {url}"),
                source,
            })
        };
        sink.restart().map_err(local)?;
        let mut headers = HeaderMap::new();
        if no_cache {
            headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        let mut response = self.clients[proxy]
            .get(url)
            .headers(headers)
            .send()
            .await
            .map_err(|e| transfer_failure(&e))?;
        let status = response.status();
        if !status.is_success() {
            let error = Error::HttpStatus {
                url: url.to_string(),
                status: status.as_u16(),
            };
            return Err(classify_status(
                status.as_u16(),
                response.headers(),
                via_proxy,
                error,
            ));
        }
        let mut total = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| transfer_failure(&e))? {
            sink.write_all(&chunk).map_err(local)?;
            total += chunk.len() as u64;
        }
        sink.flush().map_err(local)?;
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
    ///
    /// # Errors
    /// As [`Fetcher::get_to`].
    ///
    /// # Panics
    /// If called from inside the tokio runtime (tokio refuses nested `block_on`).
    pub fn blocking_get_to(&self, path: &str, no_cache: bool, sink: &mut dyn Sink) -> Result<u64> {
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

/// Classifies a non-2xx answer (docs/format.md §8.8.5 table).
fn classify_status(status: u16, headers: &HeaderMap, via_proxy: bool, error: Error) -> Failure {
    let proxy_says_error = headers.contains_key("x-squid-error")
        || headers
            .get_all("proxy-status")
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.contains("error=")));
    match status {
        429 => Failure::Host {
            error,
            transfer: true,
        },
        300..=399 | 400 | 404 | 500..=599 => {
            if via_proxy && proxy_says_error {
                Failure::Proxy {
                    error,
                    transfer: false,
                }
            } else {
                Failure::Host {
                    error,
                    transfer: false,
                }
            }
        }
        _ if via_proxy => Failure::Proxy {
            error,
            transfer: false,
        },
        _ => Failure::Host {
            error,
            transfer: false,
        },
    }
}

/// The client for one hop: connect and idle-read timeouts, no redirects, and either the
/// proxy or no proxy at all.
fn build_client(proxy: &Proxy, settings: &NetworkSettings) -> Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none());
    let builder = match proxy {
        Proxy::Direct => builder
            .connect_timeout(settings.timeout_direct)
            .read_timeout(settings.timeout_direct)
            .no_proxy(),
        Proxy::Url(url) => builder
            .connect_timeout(settings.timeout)
            .read_timeout(settings.timeout)
            .proxy(
                reqwest::Proxy::all(url)
                    .map_err(|e| Error::Config(format!("proxy {url:?}: {e}")))?,
            ),
    };
    builder
        .build()
        .map_err(|e| Error::Config(format!("HTTP client for {proxy}: {e}")))
}

impl ObjectSource for Fetcher {
    fn fetch(
        &self,
        hash: &ContentHash,
        suffix: Suffix,
        no_cache: bool,
        sink: &mut dyn Sink,
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
                    // A proxy gets the absolute URI: strip `http://host`.
                    let target = head.split(' ').nth(1).unwrap_or("").to_string();
                    let path = match target.strip_prefix("http://") {
                        Some(rest) => rest
                            .find('/')
                            .map(|i| rest[i..].to_string())
                            .unwrap_or_default(),
                        None => target,
                    };
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
        let f = Fetcher::direct(
            &url,
            "demo.example.org",
            Duration::from_secs(5),
            rt.handle().clone(),
        )
        .unwrap();
        assert!(f.servers()[0].ends_with("/cvmfs/demo.example.org"));
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
        let f = Fetcher::direct(
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
            Fetcher::direct(
                "ftp://x/@fqrn@",
                "a.b",
                Duration::from_secs(1),
                rt.handle().clone()
            ),
            Err(Error::Config(_))
        ));
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn quick() -> NetworkSettings {
        NetworkSettings {
            timeout: Duration::from_secs(2),
            timeout_direct: Duration::from_secs(2),
            backoff_init: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            ..NetworkSettings::default()
        }
    }

    #[test]
    fn a_dead_proxy_fails_over_to_the_next_group_and_is_remembered() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        // The test server answers absolute-URI (proxy) requests itself.
        let (url, seen) = rt.block_on(serve(vec![(
            "/cvmfs/a.org/.cvmfspublished",
            200,
            b"manifest",
        )]));
        let proxy_addr = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let dead = free_port();
        let chain =
            ProxyChain::parse(&format!("http://127.0.0.1:{dead};http://{proxy_addr}")).unwrap();
        let f = Fetcher::new(
            vec!["http://origin.invalid/cvmfs/a.org".into()],
            chain,
            quick(),
            rt.handle().clone(),
        )
        .unwrap();
        assert_eq!(
            f.blocking_get_bytes(".cvmfspublished").unwrap(),
            b"manifest"
        );
        assert!(f.proxy_health.is_failed(0));
        assert!(!f.proxy_health.is_failed(1));
        // The request reached the proxy with the absolute URI of the origin.
        assert!(
            seen.lock().unwrap()[0]
                .starts_with("GET http://origin.invalid/cvmfs/a.org/.cvmfspublished")
        );
        // The next request goes to the healthy proxy first: one more request, no delay.
        let start = std::time::Instant::now();
        assert_eq!(
            f.blocking_get_bytes(".cvmfspublished").unwrap(),
            b"manifest"
        );
        assert!(start.elapsed() < Duration::from_millis(500));
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_host_error_moves_to_the_next_server() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (bad, _) = rt.block_on(serve(vec![]));
        let (good, _) = rt.block_on(serve(vec![("/cvmfs/a.org/data/00/x", 200, b"obj")]));
        let servers =
            crate::client::mount_config::server_list(&format!("{bad};{good}"), "a.org").unwrap();
        let f = Fetcher::new(
            servers,
            ProxyChain::parse("DIRECT").unwrap(),
            quick(),
            rt.handle().clone(),
        )
        .unwrap();
        assert_eq!(f.blocking_get_bytes("data/00/x").unwrap(), b"obj");
        assert!(f.host_health.is_failed(0));
        // Missing everywhere: the last host's 404.
        let err = f.blocking_get_bytes("data/00/y").unwrap_err();
        assert!(
            matches!(err, Error::HttpStatus { status: 404, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn squid_errors_blame_the_proxy_and_plain_errors_the_host() {
        let err = || Error::HttpStatus {
            url: "u".into(),
            status: 503,
        };
        let mut squid = HeaderMap::new();
        squid.insert(
            "x-squid-error",
            HeaderValue::from_static("ERR_CONNECT_FAIL 111"),
        );
        let mut status = HeaderMap::new();
        status.insert(
            "proxy-status",
            HeaderValue::from_static("squid; error=connection_refused"),
        );
        let plain = HeaderMap::new();
        assert!(matches!(
            classify_status(503, &squid, true, err()),
            Failure::Proxy { .. }
        ));
        assert!(matches!(
            classify_status(502, &status, true, err()),
            Failure::Proxy { .. }
        ));
        assert!(matches!(
            classify_status(404, &plain, true, err()),
            Failure::Host { .. }
        ));
        assert!(matches!(
            classify_status(503, &squid, false, err()),
            Failure::Host { .. }
        ));
        assert!(matches!(
            classify_status(429, &plain, true, err()),
            Failure::Host { transfer: true, .. }
        ));
        assert!(matches!(
            classify_status(407, &plain, true, err()),
            Failure::Proxy { .. }
        ));
        assert!(matches!(
            classify_status(407, &plain, false, err()),
            Failure::Host { .. }
        ));
    }
}
