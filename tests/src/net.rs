//! Loopback networking helpers: free ports and a minimal HTTP/1.0 GET for readiness probes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::error::{Error, Result, io_context};

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_context("bind 127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(io_context("local_addr of 127.0.0.1:0"))?
        .port();
    Ok(port)
}

/// `127.0.0.1:PORT` with a port from [`free_port`]: the address of a server started later,
/// or of one that must be down.
pub fn free_addr() -> Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// Status code and body of a plain-HTTP GET answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// HTTP status code, e.g. 200.
    pub status: u16,
    /// Raw header block (status line excluded), `\r\n` separated.
    pub headers: String,
    /// Body bytes as received (the request asks for `Connection: close`).
    pub body: Vec<u8>,
}

/// `GET path` on `addr` over HTTP/1.0 with a 5 s timeout.
///
/// Errors: connection refused or reset ([`Error::Io`]), an answer that is not HTTP
/// ([`Error::Invalid`]).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    let context = format!("GET http://{addr}{path}");
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io_context(&context))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io_context(&context))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io_context(&context))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io_context(&context))?;
    parse_response(&raw).ok_or_else(|| Error::Invalid(format!("{context}: not an HTTP answer")))
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    Some(HttpResponse {
        status,
        headers: headers.to_owned(),
        body: raw[split + 4..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().unwrap();
        assert!(port > 0);
        TcpListener::bind(("127.0.0.1", port)).unwrap();
        let addr = free_addr().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() > 0);
        TcpListener::bind(addr).unwrap();
    }

    #[test]
    fn get_against_a_tiny_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            // Read the whole request first: closing with unread input would reset.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                request.extend_from_slice(&buf[..n]);
            }
            let request = String::from_utf8_lossy(&request).into_owned();
            conn.write_all(b"HTTP/1.1 404 Not Found\r\nX-A: b\r\n\r\nnope")
                .unwrap();
            request
        });
        let answer = http_get(addr, "/v2/").unwrap();
        assert_eq!(answer.status, 404);
        assert_eq!(answer.body, b"nope");
        assert!(answer.headers.contains("X-A: b"));
        assert!(server.join().unwrap().starts_with("GET /v2/ HTTP/1.0\r\n"));
    }
}
