//! `serve`: the served tree `DIR/srv` over HTTP at `/cvmfs/<fqrn>/` with the headers a CVMFS
//! web server must send (docs/format.md §8.9): `data/**` `Cache-Control: max-age=259200` and
//! `application/octet-stream`; `.cvmfs*` `max-age=61` and `application/x-cvmfs`; no
//! `Last-Modified`, no `ETag`, no `Content-Encoding`; conditional request headers ignored.
//!
//! One line per request goes to stderr, in the stable form
//! `GET /cvmfs/<fqrn>/data/ab/cd… 200 1234` (method, path, status, body bytes).

use std::io::Write;
use std::path::Path;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::{Listener, ListenerExt};
use tower_http::services::ServeDir;

use crate::error::{Error, Result};
use crate::repo::Repo;

/// `Cache-Control` for content-addressed objects: 3 days (stock Apache config).
pub const DATA_CACHE_CONTROL: &str = "max-age=259200";
/// `Cache-Control` for `.cvmfs*` files: 61 s, just above Squid's 60 s floor.
pub const META_CACHE_CONTROL: &str = "max-age=61";

/// The router serving `srv` at `/cvmfs/<fqrn>/` and 404 everywhere else, with one access
/// line per request on stderr.
pub fn router(srv: &Path, fqrn: &str) -> Router {
    router_with(srv, fqrn, true)
}

/// [`router`] without access lines (the private server of `startup --record`).
pub fn quiet_router(srv: &Path, fqrn: &str) -> Router {
    router_with(srv, fqrn, false)
}

fn router_with(srv: &Path, fqrn: &str, access_log: bool) -> Router {
    let base = format!("/cvmfs/{fqrn}");
    let files = ServeDir::new(srv).append_index_html_on_directories(false);
    let prefix = format!("{base}/");
    Router::new()
        .nest_service(&base, files)
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let prefix = prefix.clone();
            async move { cvmfs_headers(prefix, access_log, req, next).await }
        }))
}

async fn cvmfs_headers(prefix: String, access_log: bool, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let rel = path.strip_prefix(&prefix).map(str::to_string);
    let allowed = matches!(method, Method::GET | Method::HEAD)
        && rel
            .as_deref()
            .is_some_and(|r| !r.is_empty() && !r.starts_with("data/txn"));
    let mut resp = if allowed {
        for h in [
            header::IF_MODIFIED_SINCE,
            header::IF_UNMODIFIED_SINCE,
            header::IF_NONE_MATCH,
            header::IF_MATCH,
            header::IF_RANGE,
        ] {
            req.headers_mut().remove(h);
        }
        next.run(req).await
    } else if matches!(method, Method::GET | Method::HEAD) {
        StatusCode::NOT_FOUND.into_response()
    } else {
        StatusCode::METHOD_NOT_ALLOWED.into_response()
    };
    // ServeDir answers a directory with a redirect; we serve files only.
    if resp.status().is_redirection() {
        resp = StatusCode::NOT_FOUND.into_response();
    }
    let headers = resp.headers_mut();
    headers.remove(header::LAST_MODIFIED);
    headers.remove(header::ETAG);
    headers.remove(header::CONTENT_ENCODING);
    if resp.status().is_success() {
        let rel = rel.unwrap_or_default();
        let name = rel.rsplit('/').next().unwrap_or_default();
        let (ctype, cache) = if rel.starts_with("data/") {
            ("application/octet-stream", DATA_CACHE_CONTROL)
        } else if name.ends_with(".json") {
            ("application/json", META_CACHE_CONTROL)
        } else if name.starts_with(".cvmfs") {
            ("application/x-cvmfs", META_CACHE_CONTROL)
        } else {
            ("application/octet-stream", META_CACHE_CONTROL)
        };
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    }
    if !access_log {
        return resp;
    }
    let bytes = if method == Method::HEAD {
        0
    } else {
        resp.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let line = format!("{method} {path} {} {bytes}\n", resp.status().as_u16());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    resp
}

/// Serves the repository in `dir` on `listener` until the process ends. Prints
/// `listening on http://ADDR` (the real bound address) on stdout once bound.
pub async fn serve(dir: &Path, listener: tokio::net::TcpListener) -> Result<()> {
    let repo = Repo::open(dir)?;
    let app = router(&dir.join("srv"), &repo.settings.fqrn);
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the bound address", e))?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    }
    axum::serve(no_delay(listener), app.into_make_service())
        .await
        .map_err(|e| Error::io("serving HTTP", e))
}

/// `listener` with `TCP_NODELAY` set on every accepted connection. hyper writes a response's
/// head and body separately; with Nagle's algorithm the body of a small object then waits
/// for the ACK of the head, which a client on a kept-alive connection delays by up to 40 ms
/// (Linux delayed ACK): one stall per object fetched.
pub fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY on an HTTP connection: {e}");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::tests::ok;

    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = ok(tokio::net::TcpListener::bind("127.0.0.1:0").await);
        let addr = ok(listener.local_addr());
        let mut listener = no_delay(listener);
        let client = tokio::spawn(tokio::net::TcpStream::connect(addr));
        let (stream, _) = listener.accept().await;
        assert!(
            ok(stream.nodelay()),
            "TCP_NODELAY not set on the accepted stream"
        );
        drop(ok(ok(client.await)));
    }

    #[tokio::test]
    async fn serves_objects_and_manifest_with_cvmfs_headers() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let work = ok(tempfile::tempdir());
        let dir = work.path().join("repo");
        let fqrn = "serve.example.org";
        ok(crate::publish::init(&dir, fqrn, 60));
        let listener = ok(tokio::net::TcpListener::bind("127.0.0.1:0").await);
        let addr = ok(listener.local_addr());
        let app = router(&dir.join("srv"), fqrn);
        tokio::spawn(async move { axum::serve(listener, app.into_make_service()).await });
        let client = ok(reqwest::Client::builder().no_proxy().build());
        let base = format!("http://{addr}/cvmfs/{fqrn}");

        let r = ok(client
            .get(format!("{base}/.cvmfspublished"))
            .header("If-Modified-Since", "Wed, 21 Oct 2099 07:28:00 GMT")
            .send()
            .await);
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "application/x-cvmfs");
        assert_eq!(h["cache-control"], META_CACHE_CONTROL);
        for absent in ["last-modified", "etag", "content-encoding"] {
            assert!(h.get(absent).is_none(), "{absent} sent");
        }
        let body = ok(r.bytes().await);
        assert_eq!(
            body.as_ref(),
            &ok(std::fs::read(dir.join("srv/.cvmfspublished")))[..]
        );

        // the empty-file object (docs/format.md §11.3)
        let empty = format!("{base}/data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78");
        let r = ok(client.get(&empty).send().await);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/octet-stream");
        assert_eq!(r.headers()["cache-control"], DATA_CACHE_CONTROL);
        assert!(r.headers().get("last-modified").is_none());
        assert_eq!(ok(r.bytes().await).len(), 8);
        let r = ok(client.head(&empty).send().await);
        assert_eq!(r.status(), 200);

        for missing in [
            format!("http://{addr}/keys/{fqrn}.key"),
            format!("http://{addr}/cvmfs/{fqrn}/../keys/{fqrn}.key"),
            format!("http://{addr}/cvmfs/other.org/.cvmfspublished"),
            format!("{base}/data"),
            format!("{base}/data/txn"),
            format!("{base}/data/00/0000000000000000000000000000000000000000"),
            format!("http://{addr}/"),
        ] {
            let r = ok(client.get(&missing).send().await);
            assert_eq!(r.status(), 404, "{missing}");
        }
        let r = ok(client.post(&empty).send().await);
        assert_eq!(r.status(), 405);
    }
}
