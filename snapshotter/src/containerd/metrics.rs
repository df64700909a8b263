//! Prometheus metrics of `strata-snapshotter run` (docs/lazy-snapshotters.md §8 G: operators want to know
//! whether a pull was lazy, and why not). Served as text exposition format 0.0.4 at
//! `http://<--metrics ADDR>/metrics` when `--metrics` is given:
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `strata_layers_remote_total` | counter | `via` | extraction Prepares answered from the repository (`cri.layer-digest`, `snapshot.ref`, `existing`) |
//! | `strata_layers_fallback_total` | counter | `reason` | extraction Prepares that fell back to a local snapshot ([`FallbackReason`]) |
//! | `strata_prepare_duration_seconds` | histogram | | time to answer a Prepare (remote or local) |
//! | `strata_snapshots_unavailable` | gauge | | remote snapshots whose layer was unreachable at the last check |
//! | `strata_cache_hits_total`, `strata_cache_misses_total` | counter | | object requests answered from / missing in the FUSE client's cache |
//! | `strata_cache_fetched_bytes_total` | counter | | stored (compressed) bytes the FUSE clients downloaded |
//! | `strata_cache_size_bytes` | gauge | | bytes the shared cache holds |
//!
//! The `strata_cache_*` series come from the FUSE client's cache index `<cache>/cachedb`
//! (its `properties` table: `hits`, `misses`, `bytes_fetched`, `total_size`; see
//! [`crate::client::quota`]), read-only, only when `--cache-dir` is given and the index exists;
//! otherwise they are omitted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::containerd::snapshots::remote::FallbackReason;

/// Upper bounds (seconds) of the Prepare latency histogram buckets.
pub const PREPARE_BUCKETS: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// The counters; shared (`Arc`) between the gRPC service and the HTTP endpoint.
#[derive(Debug, Default)]
pub struct Metrics {
    remote: Mutex<BTreeMap<&'static str, u64>>,
    fallback: Mutex<BTreeMap<FallbackReason, u64>>,
    /// Cumulative bucket counts are computed at render time; these are per-bucket.
    prepare_buckets: [AtomicU64; PREPARE_BUCKETS.len()],
    prepare_count: AtomicU64,
    prepare_sum_ns: AtomicU64,
    unavailable: AtomicU64,
    cache_dir: Option<PathBuf>,
}

/// What the FUSE client's cache index says (all zero if unreadable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Requests answered from the cache.
    pub hits: u64,
    /// Requests that had to download.
    pub misses: u64,
    /// Stored bytes downloaded.
    pub bytes_fetched: u64,
    /// Bytes held.
    pub size: u64,
    /// Raw bytes fetched by read-ahead.
    pub readahead_bytes: u64,
    /// Raw bytes fetched by read-ahead and later read.
    pub readahead_used_bytes: u64,
    /// Startup packs prefetched.
    pub prefetch_packs: u64,
    /// Startup packs that could not be used.
    pub prefetch_failed_packs: u64,
    /// Raw bytes startup packs put into the cache.
    pub prefetch_bytes: u64,
    /// Raw bytes of prefetched objects later read.
    pub prefetch_used_bytes: u64,
    /// Milliseconds spent prefetching.
    pub prefetch_ms: u64,
}

/// Reads the `properties` table of `<cache>/cachedb` read-only; `None` if there is no
/// readable index.
pub fn read_cache_counters(cache_dir: &Path) -> Option<CacheCounters> {
    let db = cache_dir.join("cachedb");
    if !db.is_file() {
        return None;
    }
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    let _ = conn.busy_timeout(Duration::from_millis(500));
    let mut stmt = conn.prepare("SELECT key, value FROM properties").ok()?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .ok()?;
    let mut c = CacheCounters::default();
    for (key, value) in rows.flatten() {
        let v = u64::try_from(value).unwrap_or(0);
        match key.as_str() {
            "hits" => c.hits = v,
            "misses" => c.misses = v,
            "bytes_fetched" => c.bytes_fetched = v,
            "total_size" => c.size = v,
            "readahead_bytes" => c.readahead_bytes = v,
            "readahead_used_bytes" => c.readahead_used_bytes = v,
            "prefetch_packs" => c.prefetch_packs = v,
            "prefetch_failed_packs" => c.prefetch_failed_packs = v,
            "prefetch_bytes" => c.prefetch_bytes = v,
            "prefetch_used_bytes" => c.prefetch_used_bytes = v,
            "prefetch_ms" => c.prefetch_ms = v,
            _ => {}
        }
    }
    Some(c)
}

impl Metrics {
    /// Metrics reading cache counters from `cache_dir` (if any).
    pub fn new(cache_dir: Option<PathBuf>) -> Metrics {
        Metrics {
            cache_dir,
            ..Metrics::default()
        }
    }

    /// Counts one layer taken from the repository, found `via`.
    pub fn layer_remote(&self, via: &'static str) {
        if let Ok(mut m) = self.remote.lock() {
            *m.entry(via).or_default() += 1;
        }
    }

    /// Counts one layer that fell back to a local snapshot.
    pub fn layer_fallback(&self, reason: FallbackReason) {
        if let Ok(mut m) = self.fallback.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// Records one Prepare's latency.
    pub fn observe_prepare(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = PREPARE_BUCKETS.iter().position(|b| secs <= *b) {
            self.prepare_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.prepare_count.fetch_add(1, Ordering::Relaxed);
        self.prepare_sum_ns.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Sets the number of unavailable remote snapshots.
    pub fn set_unavailable(&self, n: u64) {
        self.unavailable.store(n, Ordering::Relaxed);
    }

    /// Remote-layer count for `via` (tests, logs).
    pub fn remote_count(&self, via: &str) -> u64 {
        self.remote
            .lock()
            .map(|m| m.get(via).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Fallback count for `reason`.
    pub fn fallback_count(&self, reason: FallbackReason) -> u64 {
        self.fallback
            .lock()
            .map(|m| m.get(&reason).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// The text exposition (blocking: reads the cache index).
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP strata_layers_remote_total Extraction Prepares answered from the repository.\n",
        );
        out.push_str("# TYPE strata_layers_remote_total counter\n");
        let remote = self.remote.lock().map(|m| m.clone()).unwrap_or_default();
        for via in ["cri.layer-digest", "snapshot.ref", "existing"] {
            let n = remote.get(via).copied().unwrap_or(0);
            let _ = writeln!(out, "strata_layers_remote_total{{via=\"{via}\"}} {n}");
        }
        out.push_str("# HELP strata_layers_fallback_total Extraction Prepares that fell back to a local snapshot.\n");
        out.push_str("# TYPE strata_layers_fallback_total counter\n");
        let fallback = self.fallback.lock().map(|m| m.clone()).unwrap_or_default();
        for reason in FallbackReason::ALL {
            let n = fallback.get(&reason).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "strata_layers_fallback_total{{reason=\"{}\"}} {n}",
                reason.as_str()
            );
        }
        out.push_str("# HELP strata_prepare_duration_seconds Time to answer a Prepare.\n");
        out.push_str("# TYPE strata_prepare_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (bound, bucket) in PREPARE_BUCKETS.iter().zip(&self.prepare_buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "strata_prepare_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.prepare_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "strata_prepare_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.prepare_sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "strata_prepare_duration_seconds_sum {sum}");
        let _ = writeln!(out, "strata_prepare_duration_seconds_count {count}");
        out.push_str("# HELP strata_snapshots_unavailable Remote snapshots whose layer was unreachable at the last check.\n");
        out.push_str("# TYPE strata_snapshots_unavailable gauge\n");
        let _ = writeln!(
            out,
            "strata_snapshots_unavailable {}",
            self.unavailable.load(Ordering::Relaxed)
        );
        if let Some(c) = self.cache_dir.as_deref().and_then(read_cache_counters) {
            for (name, kind, help, value) in [
                (
                    "strata_cache_hits_total",
                    "counter",
                    "Object requests answered from the cache.",
                    c.hits,
                ),
                (
                    "strata_cache_misses_total",
                    "counter",
                    "Object requests that downloaded.",
                    c.misses,
                ),
                (
                    "strata_cache_fetched_bytes_total",
                    "counter",
                    "Stored bytes downloaded by the FUSE clients.",
                    c.bytes_fetched,
                ),
                (
                    "strata_readahead_fetched_bytes_total",
                    "counter",
                    "Raw bytes the FUSE clients fetched ahead of reads.",
                    c.readahead_bytes,
                ),
                (
                    "strata_readahead_used_bytes_total",
                    "counter",
                    "Raw bytes fetched ahead that were later read (the rest is waste).",
                    c.readahead_used_bytes,
                ),
                (
                    "strata_prefetch_packs_total",
                    "counter",
                    "Startup packs the FUSE clients prefetched.",
                    c.prefetch_packs,
                ),
                (
                    "strata_prefetch_failed_packs_total",
                    "counter",
                    "Startup packs that could not be used (their objects are fetched one by one).",
                    c.prefetch_failed_packs,
                ),
                (
                    "strata_prefetch_bytes_total",
                    "counter",
                    "Raw bytes startup packs put into the cache.",
                    c.prefetch_bytes,
                ),
                (
                    "strata_prefetch_used_bytes_total",
                    "counter",
                    "Raw bytes from startup packs that were later read.",
                    c.prefetch_used_bytes,
                ),
                (
                    "strata_prefetch_milliseconds_total",
                    "counter",
                    "Time spent prefetching startup packs, summed over packs.",
                    c.prefetch_ms,
                ),
                (
                    "strata_cache_size_bytes",
                    "gauge",
                    "Bytes held by the shared cache.",
                    c.size,
                ),
            ] {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
                );
            }
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = std::sync::Arc::clone(&metrics);
            async move {
                let body = tokio::task::spawn_blocking(move || metrics.render())
                    .await
                    .unwrap_or_default();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_zero_series() {
        let m = Metrics::new(None);
        m.layer_remote("snapshot.ref");
        m.layer_remote("snapshot.ref");
        m.layer_fallback(FallbackReason::NotPublished);
        m.observe_prepare(Duration::from_millis(3));
        m.observe_prepare(Duration::from_millis(700));
        m.set_unavailable(2);
        let text = m.render();
        assert!(
            text.contains("strata_layers_remote_total{via=\"snapshot.ref\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("strata_layers_remote_total{via=\"cri.layer-digest\"} 0\n"));
        assert!(text.contains("strata_layers_fallback_total{reason=\"not_published\"} 1\n"));
        assert!(text.contains("strata_layers_fallback_total{reason=\"unreachable\"} 0\n"));
        assert!(text.contains("strata_prepare_duration_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("strata_prepare_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("strata_prepare_duration_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("strata_prepare_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("strata_prepare_duration_seconds_count 2\n"));
        assert!(text.contains("strata_snapshots_unavailable 2\n"));
        assert!(
            !text.contains("strata_cache_"),
            "no cache dir, no cache series"
        );
    }

    #[test]
    fn cache_counters_come_from_the_index_properties() -> rusqlite::Result<()> {
        let dir =
            tempfile::tempdir().map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
        assert_eq!(read_cache_counters(dir.path()), None);
        let conn = rusqlite::Connection::open(dir.path().join("cachedb"))?;
        conn.execute_batch(
            "CREATE TABLE properties (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT INTO properties VALUES ('hits', 7), ('misses', 3),
                 ('bytes_fetched', 4096), ('total_size', 9000), ('seq', 11),
                 ('readahead_bytes', 2048), ('readahead_used_bytes', 512),
                 ('prefetch_packs', 2), ('prefetch_failed_packs', 1), ('prefetch_bytes', 700),
                 ('prefetch_used_bytes', 600), ('prefetch_ms', 45);",
        )?;
        drop(conn);
        let c = read_cache_counters(dir.path());
        assert_eq!(
            c,
            Some(CacheCounters {
                hits: 7,
                misses: 3,
                bytes_fetched: 4096,
                size: 9000,
                readahead_bytes: 2048,
                readahead_used_bytes: 512,
                prefetch_packs: 2,
                prefetch_failed_packs: 1,
                prefetch_bytes: 700,
                prefetch_used_bytes: 600,
                prefetch_ms: 45,
            })
        );
        let text = Metrics::new(Some(dir.path().to_path_buf())).render();
        assert!(text.contains("strata_cache_hits_total 7\n"), "{text}");
        assert!(
            text.contains("strata_cache_fetched_bytes_total 4096\n"),
            "{text}"
        );
        assert!(
            text.contains("strata_readahead_fetched_bytes_total 2048\n")
                && text.contains("strata_readahead_used_bytes_total 512\n"),
            "{text}"
        );
        assert!(
            text.contains("strata_prefetch_packs_total 2\n")
                && text.contains("strata_prefetch_failed_packs_total 1\n")
                && text.contains("strata_prefetch_bytes_total 700\n")
                && text.contains("strata_prefetch_used_bytes_total 600\n")
                && text.contains("strata_prefetch_milliseconds_total 45\n"),
            "{text}"
        );
        Ok(())
    }
}
