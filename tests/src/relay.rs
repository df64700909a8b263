//! A TCP relay that adds latency: what `tc qdisc … netem delay` would do on a kernel that
//! has no `netem` (this project's machines have none).
//!
//! [`LatencyRelay::start`] listens on a free port of 127.0.0.1 and forwards every
//! connection to `upstream`. Each direction is its own pipeline: a reader thread stamps
//! every chunk it receives with `received + one_way`, and a writer thread sends the chunk
//! on when that time has come. So a request-response round trip costs `2 × one_way`
//! more, exactly as a link with that propagation delay would, and throughput is not capped:
//! chunks in flight queue without bound while earlier ones wait (a long-fat pipe, not a
//! slow one). End of stream travels the same way (a half-close reaches the other side
//! `one_way` later), and an error on either side closes both.
//!
//! Put one in front of `strata-publisher serve` and one in front of the registry, and give
//! clients the relay's address: both paths then see the same round-trip time.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result, io_context};

/// Bytes one read takes at most.
const CHUNK: usize = 64 * 1024;

/// The round-trip times a bench runs at: `BENCH_RTT_MS` (comma-separated whole
/// milliseconds), `default` when it is not set.
///
/// Errors: an entry that is not a whole number ([`Error::Invalid`]).
pub fn rtts_from_env(default: &str) -> Result<Vec<u64>> {
    let rtts = std::env::var("BENCH_RTT_MS").unwrap_or_else(|_| default.to_owned());
    rtts.split(',')
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                Error::Invalid(format!("BENCH_RTT_MS: {v:?} is not a whole number of ms"))
            })
        })
        .collect()
}

/// A running relay; stopped (listener closed, connections left to finish) on drop.
#[derive(Debug)]
pub struct LatencyRelay {
    addr: SocketAddr,
    upstream: SocketAddr,
    one_way: Duration,
    stopping: Arc<AtomicBool>,
    connections: Arc<AtomicU64>,
    accept: Option<JoinHandle<()>>,
}

impl LatencyRelay {
    /// Starts relaying `127.0.0.1:<free port>` → `upstream`, delaying every byte by
    /// `one_way` in each direction (so the round trip grows by twice that).
    ///
    /// Errors: the listening socket cannot be made.
    pub fn start(upstream: SocketAddr, one_way: Duration) -> Result<LatencyRelay> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(io_context("bind the relay's socket"))?;
        let addr = listener
            .local_addr()
            .map_err(io_context("the relay's address"))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let accept = {
            let stopping = stopping.clone();
            let connections = connections.clone();
            std::thread::Builder::new()
                .name(format!("relay {addr}"))
                .spawn(move || {
                    for client in listener.incoming() {
                        if stopping.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(client) = client else { continue };
                        connections.fetch_add(1, Ordering::Relaxed);
                        relay_connection(client, upstream, one_way);
                    }
                })
                .map_err(io_context("spawn the relay's accept thread"))?
        };
        Ok(LatencyRelay {
            addr,
            upstream,
            one_way,
            stopping,
            connections,
            accept: Some(accept),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address every connection is forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The delay added in each direction.
    pub fn one_way(&self) -> Duration {
        self.one_way
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for LatencyRelay {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Connects to `upstream` and starts both directions of `client`'s connection; if
/// `upstream` refuses, `client` is closed (as a dead server would look through a link).
fn relay_connection(client: TcpStream, upstream: SocketAddr, one_way: Duration) {
    let Ok(server) = TcpStream::connect(upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
    }
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        return;
    };
    pipe(client, server2, one_way);
    pipe(server, client2, one_way);
}

/// One direction, `from` → `to`, each chunk delivered `one_way` after it was read.
fn pipe(mut from: TcpStream, mut to: TcpStream, one_way: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>();
    let reader = move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send((Instant::now() + one_way, None));
                    return;
                }
                Ok(n) => {
                    if tx
                        .send((Instant::now() + one_way, Some(buf[..n].to_vec())))
                        .is_err()
                    {
                        let _ = from.shutdown(Shutdown::Both);
                        return;
                    }
                }
            }
        }
    };
    let writer = move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            match chunk {
                Some(bytes) => {
                    if to.write_all(&bytes).is_err() {
                        let _ = to.shutdown(Shutdown::Both);
                        return;
                    }
                }
                None => {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
            }
        }
    };
    // A failed spawn drops the closure and with it the sockets: the connection closes.
    let _ = std::thread::Builder::new()
        .name("relay-read".into())
        .spawn(reader);
    let _ = std::thread::Builder::new()
        .name("relay-write".into())
        .spawn(writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port: every connection gets its bytes back.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut back = stream.try_clone().unwrap();
                    let _ = std::io::copy(&mut stream, &mut back);
                    let _ = back.shutdown(Shutdown::Write);
                });
            }
        });
        addr
    }

    fn round_trip(addr: SocketAddr, payload: &[u8]) -> (Vec<u8>, Duration) {
        let start = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let mut writer = s.try_clone().unwrap();
        let payload = payload.to_vec();
        let send = std::thread::spawn(move || {
            writer.write_all(&payload).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        send.join().unwrap();
        (back, start.elapsed())
    }

    #[test]
    fn adds_the_delay_in_each_direction_and_keeps_the_bytes() {
        let echo = echo_server();
        let relay = LatencyRelay::start(echo, Duration::from_millis(40)).unwrap();
        let (back, took) = round_trip(relay.addr(), b"ping");
        assert_eq!(back, b"ping");
        // Connect, then the data and the end of stream each way: at least one round trip
        // of 2 × 40 ms beyond the direct path.
        assert!(
            took >= Duration::from_millis(80),
            "round trip took {took:?}"
        );
        assert!(took < Duration::from_secs(2), "round trip took {took:?}");
        assert_eq!(relay.connections(), 1);
    }

    #[test]
    fn does_not_cap_throughput() {
        let echo = echo_server();
        let relay = LatencyRelay::start(echo, Duration::from_millis(50)).unwrap();
        // 64 MiB through a 100 ms round trip: a relay that waited per chunk (stop and go)
        // would take 1024 chunks × 100 ms; a pipelined one takes about one round trip plus
        // copying.
        let payload: Vec<u8> = (0..64 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let (back, took) = round_trip(relay.addr(), &payload);
        assert!(back == payload, "the bytes came back changed");
        assert!(took < Duration::from_secs(20), "64 MiB took {took:?}");
    }

    #[test]
    fn a_refusing_upstream_closes_the_client() {
        // A port nothing listens on: bind, note it, close.
        let dead = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let relay = LatencyRelay::start(dead, Duration::ZERO).unwrap();
        let mut s = TcpStream::connect(relay.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    }
}
