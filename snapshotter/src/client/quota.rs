//! The LRU index and quota of the local object cache: `<cache>/cachedb`, a SQLite database
//! modelled on the stock client's (docs/format.md §8.7, `quota_posix.cc`).
//!
//! ```sql
//! cache_catalog(sha TEXT PRIMARY KEY,   -- object hex (the cache file name, `XX` + rest)
//!               size INTEGER,           -- bytes of the decompressed cache file
//!               acseq INTEGER,          -- access sequence number: higher = more recent
//!               type INTEGER,           -- 0 regular/chunk, 1 catalog, 2 other (certificate)
//!               pinned INTEGER,         -- always 0: kept for the stock layout (see below)
//!               mtime INTEGER)          -- file mtime (ns) when indexed; a change means corruption
//! properties(key TEXT PRIMARY KEY, value INTEGER)   -- total_size, seq, hits, misses, bytes_fetched
//! ```
//!
//! All mounts of the node share one cache directory and hence one index (SQLite WAL, busy
//! timeout). "In use" is decided by `flock(2)`: every open cache file is held with a shared
//! lock ([`crate::client::cache::PinnedFile`]); eviction takes an exclusive non-blocking lock first
//! and skips the object if that fails, so open files and catalogs in use — of any process
//! on the node — are never evicted, and a crashed process leaves no stale pins behind. The
//! stock `pinned` column is kept for layout familiarity but not used.
//!
//! Eviction keeps the sum of sizes at or below the quota: before an object of `n` bytes is
//! committed, least recently used unlocked objects are deleted until `total + n ≤ quota`
//! (the stock client cleans down to half the limit; a hard bound is what we promise here).
//! If the database is missing or unreadable it is rebuilt from the directory contents.
//!
//! Writes wait in memory and go to the database together, in one transaction: a
//! whole-layer read commits a hundred thousand objects and reads each once, and one
//! transaction per object (or worse, per read, on the reader's path) kept every FUSE and
//! read-ahead thread queued on the index. Rows (an object committed or accessed) and
//! counters are written by whichever writer finds [`FLUSH_ROWS`] of them waiting, by a
//! background thread within [`FLUSH_INTERVAL`], before any eviction, `stats` or `forget`,
//! and when the index is dropped. A crash loses at most that half second of rows: their
//! objects are indexed again at their next access (an unindexed file is inserted then),
//! and counted in the total from then on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::{Error, Result};

/// Object types recorded in the index (the stock `type` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// File content or a chunk.
    Regular = 0,
    /// A catalog.
    Catalog = 1,
    /// Anything else (certificate, …).
    Other = 2,
}

/// How a downloaded object arrived, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// A read asked for it (a miss).
    Demand,
    /// Read-ahead fetched it on its own ([`crate::client::readahead`]).
    ReadAhead,
    /// It came in a startup pack ([`crate::client::startup`]); the pack's download is the
    /// miss, not each member.
    Pack,
}

/// Counters and totals of a cache directory, as `strata-snapshotter cache` prints them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Bytes of all indexed objects.
    pub size: u64,
    /// Number of indexed objects.
    pub entries: u64,
    /// Requests answered from the cache (since the index was created).
    pub hits: u64,
    /// Requests that downloaded.
    pub misses: u64,
    /// Stored (compressed) bytes downloaded.
    pub bytes_fetched: u64,
    /// Raw bytes of the objects read-ahead fetched ([`crate::client::readahead`]).
    pub readahead_bytes: u64,
    /// Raw bytes of read-ahead objects that were later read; the rest is waste.
    pub readahead_used_bytes: u64,
    /// Startup packs prefetched whole ([`crate::client::startup`]).
    pub prefetch_packs: u64,
    /// Startup packs that could not be used (download, hash or format error).
    pub prefetch_failed_packs: u64,
    /// Pack members that failed their own hash or size and were not cached.
    pub prefetch_rejected_objects: u64,
    /// Raw bytes of the objects startup packs put into the cache.
    pub prefetch_bytes: u64,
    /// Raw bytes of prefetched objects that were later read.
    pub prefetch_used_bytes: u64,
    /// Milliseconds spent prefetching packs (download and commit, summed over packs).
    pub prefetch_ms: u64,
}

/// Increments of the startup-pack counters ([`CacheIndex::record_prefetch`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefetchCounts {
    /// Packs used.
    pub packs: u64,
    /// Packs that could not be used.
    pub failed_packs: u64,
    /// Members rejected.
    pub rejected_objects: u64,
    /// Raw bytes of prefetched objects read.
    pub used_bytes: u64,
    /// Milliseconds spent.
    pub ms: u64,
}

/// Result of one touch: whether the object was indexed, and its recorded mtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Touch {
    /// The object was indexed with this mtime (ns).
    Known(i64),
    /// The object was not indexed; it is now.
    New,
}

/// Index writes wait in memory at most about this long.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// A writer that finds this many rows waiting writes them at once.
pub const FLUSH_ROWS: usize = 256;

/// Rows kept waiting across failed writes at most.
const MAX_WAITING_ROWS: usize = 64 * 1024;

/// The index of one cache directory, with its writes waiting in memory (module docs) and
/// the thread that writes them; dropping it writes what waits and stops the thread.
pub struct CacheIndex {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

/// What the index handle and its flusher thread share.
struct Shared {
    root: PathBuf,
    conn: Mutex<Connection>,
    pending: Mutex<Pending>,
    /// Set when the handle is dropped: the flusher returns.
    stop: Mutex<bool>,
    wake: Condvar,
}

/// Writes waiting for the next transaction.
#[derive(Default)]
struct Pending {
    /// Objects committed or accessed, in order (each moves to the recent end of the LRU
    /// list, or is inserted).
    rows: Vec<Row>,
    /// Bytes of the committed objects among `rows` (new to the index, as a rule).
    committed_bytes: u64,
    /// The mtime of each committed object among `rows` (what [`CacheIndex::touch`]
    /// compares with before the row is written).
    committed_mtimes: std::collections::HashMap<String, i64>,
    counts: Counts,
}

/// One object committed or accessed.
struct Row {
    sha: String,
    size: u64,
    kind: ObjectKind,
    mtime: i64,
    /// Committed (its file is new: size and mtime replace what was indexed) rather than
    /// accessed.
    committed: bool,
}

/// Counter increments waiting.
#[derive(Default)]
struct Counts {
    hits: u64,
    misses: u64,
    bytes_fetched: u64,
    readahead_bytes: u64,
    readahead_used_bytes: u64,
    prefetch: PrefetchCounts,
    prefetch_bytes: u64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cache_catalog (
    sha TEXT PRIMARY KEY, size INTEGER NOT NULL, acseq INTEGER NOT NULL,
    type INTEGER NOT NULL DEFAULT 0, pinned INTEGER NOT NULL DEFAULT 0,
    mtime INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS cache_catalog_acseq ON cache_catalog(acseq);
CREATE TABLE IF NOT EXISTS properties (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO properties VALUES ('schema', 1), ('total_size', 0), ('seq', 0),
    ('hits', 0), ('misses', 0), ('bytes_fetched', 0), ('readahead_bytes', 0),
    ('readahead_used_bytes', 0), ('prefetch_packs', 0), ('prefetch_failed_packs', 0),
    ('prefetch_rejected_objects', 0), ('prefetch_bytes', 0), ('prefetch_used_bytes', 0),
    ('prefetch_ms', 0);
";

fn db_error(context: &str, e: rusqlite::Error) -> Error {
    Error::Io {
        context: format!("cache index: {context}"),
        source: std::io::Error::other(e),
    }
}

impl CacheIndex {
    /// Opens `<root>/cachedb`, creating it — and filling it from the objects already in
    /// `root` — if it is missing or unreadable.
    ///
    /// # Errors
    /// [`Error::Io`] if the database can be neither opened nor recreated.
    pub fn open(root: &Path) -> Result<CacheIndex> {
        let path = root.join("cachedb");
        let existed = path.exists();
        match Self::open_db(&path) {
            Ok(conn) if existed => return Self::with_connection(root, conn),
            Ok(conn) => {
                let index = Self::with_connection(root, conn)?;
                index.rebuild()?;
                return Ok(index);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cache index unreadable; rebuilding");
            }
        }
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(root.join(format!("cachedb{suffix}")));
        }
        let conn = Self::open_db(&path).map_err(|e| db_error("creating", e))?;
        let index = Self::with_connection(root, conn)?;
        index.rebuild()?;
        Ok(index)
    }

    /// The handle over an open database, its flusher thread started.
    fn with_connection(root: &Path, conn: Connection) -> Result<CacheIndex> {
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            conn: Mutex::new(conn),
            pending: Mutex::new(Pending::default()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("cache-index".into())
                .spawn(move || shared.flush_periodically())
                .map_err(|source| Error::Io {
                    context: "starting the cache index's writer thread".into(),
                    source,
                })?
        };
        Ok(CacheIndex {
            shared,
            flusher: Some(flusher),
        })
    }

    fn open_db(path: &Path) -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        let schema: i64 =
            conn.query_row("SELECT value FROM properties WHERE key='schema'", [], |r| {
                r.get(0)
            })?;
        if schema != 1 {
            return Err(rusqlite::Error::InvalidQuery);
        }
        Ok(conn)
    }

    /// Re-indexes every object file under `00`…`ff` (sizes from the files, recency from
    /// their mtimes) and recomputes the total.
    ///
    /// # Errors
    /// [`Error::Io`] on database errors.
    pub fn rebuild(&self) -> Result<()> {
        let mut files = Vec::new();
        for i in 0..=255u8 {
            let head = format!("{i:02x}");
            let Ok(entries) = std::fs::read_dir(self.shared.root.join(&head)) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                files.push((format!("{head}{name}"), meta.len(), mtime_ns(&meta)));
            }
        }
        files.sort_by_key(|f| f.2);
        let mut conn = self.shared.lock_conn();
        // Counters that wait are kept; rows are read from the directory again.
        self.shared.flush_locked(&mut conn)?;
        let tx = conn.transaction().map_err(|e| db_error("rebuild", e))?;
        tx.execute("DELETE FROM cache_catalog", [])
            .map_err(|e| db_error("rebuild", e))?;
        let mut total = 0u64;
        for (seq, (sha, size, mtime)) in files.iter().enumerate() {
            tx.execute(
                "INSERT INTO cache_catalog (sha, size, acseq, type, pinned, mtime) \
                 VALUES (?1, ?2, ?3, 0, 0, ?4)",
                params![sha, *size as i64, seq as i64, mtime],
            )
            .map_err(|e| db_error("rebuild", e))?;
            total += size;
        }
        set_prop(&tx, "total_size", total as i64)?;
        set_prop(&tx, "seq", files.len() as i64)?;
        tx.commit().map_err(|e| db_error("rebuild", e))?;
        tracing::info!(root = %self.shared.root.display(), objects = files.len(), bytes = total, "cache index rebuilt");
        Ok(())
    }

    /// Records an access to object `sha` and adds `hits` cache hits to the counter: the
    /// object moves to the most recent end of the LRU list, or is inserted with `size`,
    /// `kind` and `mtime` if it was not indexed, with the next write (module docs).
    /// Returns what the index knew: [`Touch::Known`] with the mtime indexed at commit.
    ///
    /// # Errors
    /// [`Error::Io`] on database errors.
    pub fn touch(
        &self,
        sha: &str,
        size: u64,
        kind: ObjectKind,
        mtime: i64,
        hits: u64,
    ) -> Result<Touch> {
        let conn = self.shared.lock_conn();
        let waiting = self
            .shared
            .lock_pending()
            .committed_mtimes
            .get(sha)
            .copied();
        let known: Option<i64> = match waiting {
            Some(mtime) => Some(mtime),
            None => conn
                .prepare_cached("SELECT mtime FROM cache_catalog WHERE sha = ?1")
                .and_then(|mut stmt| stmt.query_row([sha], |r| r.get(0)).optional())
                .map_err(|e| db_error("touch", e))?,
        };
        self.shared.queue(
            Row {
                sha: sha.to_string(),
                size,
                kind,
                mtime,
                committed: false,
            },
            |c| c.hits += hits,
        );
        self.shared.flush_if_full(conn);
        Ok(known.map_or(Touch::New, Touch::Known))
    }

    /// A download committed to the cache: the object's row as [`CacheIndex::touch`]
    /// writes it, a miss of `fetched` stored bytes (not for a pack member: the pack's
    /// download is the miss), and `size` more bytes read ahead or prefetched, written
    /// with the next write (module docs).
    pub fn commit_download(
        &self,
        sha: &str,
        size: u64,
        kind: ObjectKind,
        mtime: i64,
        fetched: u64,
        arrival: Arrival,
    ) {
        let row = Row {
            sha: sha.to_string(),
            size,
            kind,
            mtime,
            committed: true,
        };
        self.shared.queue(row, |c| {
            if arrival != Arrival::Pack {
                c.misses += 1;
                c.bytes_fetched += fetched;
            }
            match arrival {
                Arrival::Demand => {}
                Arrival::ReadAhead => c.readahead_bytes += size,
                Arrival::Pack => c.prefetch_bytes += size,
            }
        });
        if self.shared.rows_waiting() >= FLUSH_ROWS {
            self.shared.flush_if_full(self.shared.lock_conn());
        }
    }

    /// Adds `hits` cache hits (answered without an access row) to the counter.
    pub fn record_hits(&self, hits: u64) {
        self.shared.count(|c| c.hits += hits);
    }

    /// Records a download of `bytes` stored bytes (a cache miss) that committed nothing.
    pub fn record_download(&self, bytes: u64) {
        self.shared.count(|c| {
            c.misses += 1;
            c.bytes_fetched += bytes;
        });
    }

    /// Adds to the read-ahead counters: raw bytes read ahead, and raw bytes of read-ahead
    /// objects later read.
    pub fn record_read_ahead(&self, fetched: u64, used: u64) {
        self.shared.count(|c| {
            c.readahead_bytes += fetched;
            c.readahead_used_bytes += used;
        });
    }

    /// Adds to the startup-pack counters ([`CacheStats`]'s `prefetch_*`).
    pub fn record_prefetch(&self, counts: &PrefetchCounts) {
        self.shared.count(|c| c.prefetch.add(counts));
    }

    /// Writes what waits now.
    ///
    /// # Errors
    /// [`Error::Io`] on database errors (what waited is then lost, see the module docs).
    pub fn flush(&self) -> Result<()> {
        let mut conn = self.shared.lock_conn();
        self.shared.flush_locked(&mut conn)
    }

    /// Bytes of all indexed objects, and of those committed but not written yet.
    ///
    /// # Errors
    /// [`Error::Io`] on database errors.
    pub fn total_size(&self) -> Result<u64> {
        let conn = self.shared.lock_conn();
        let indexed = get_prop(&conn, "total_size")?.max(0) as u64;
        Ok(indexed + self.shared.lock_pending().committed_bytes)
    }

    /// Removes `sha` from the index and deletes its file (a corrupted or vanished object).
    ///
    /// # Errors
    /// [`Error::Io`] on database errors.
    pub fn forget(&self, sha: &str) -> Result<()> {
        self.write("forget", |tx| remove_row(tx, sha))?;
        let _ = std::fs::remove_file(self.file_of(sha));
        Ok(())
    }

    /// Evicts least recently used objects that no process holds open until `total +
    /// incoming ≤ quota`, or nothing evictable is left. Returns the bytes freed.
    ///
    /// # Errors
    /// [`Error::Io`] on database errors.
    pub fn make_room(&self, incoming: u64, quota: u64) -> Result<u64> {
        self.evict_while(|total| total.saturating_add(incoming) > quota)
    }

    /// Evicts every object that no process holds open. Returns the bytes freed.
    ///
    /// # Errors
    /// [`Error::Io`] on database errors.
    pub fn evict_all(&self) -> Result<u64> {
        self.evict_while(|total| total > 0)
    }

    fn evict_while(&self, mut more: impl FnMut(u64) -> bool) -> Result<u64> {
        let mut conn = self.shared.lock_conn();
        self.shared.flush_locked(&mut conn)?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| db_error("evict", e))?;
        let mut total = get_prop(&tx, "total_size")?.max(0) as u64;
        let mut freed = 0u64;
        let mut after = i64::MIN;
        'outer: while more(total) {
            let batch: Vec<(String, i64, i64)> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT sha, size, acseq FROM cache_catalog WHERE acseq > ?1 \
                         ORDER BY acseq LIMIT 64",
                    )
                    .map_err(|e| db_error("evict", e))?;
                stmt.query_map([after], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                    .map_err(|e| db_error("evict", e))?
            };
            if batch.is_empty() {
                break;
            }
            for (sha, size, acseq) in batch {
                after = acseq;
                if !more(total) {
                    break 'outer;
                }
                let path = self.file_of(&sha);
                match delete_if_unused(&path) {
                    Ok(true) => {
                        remove_row(&tx, &sha)?;
                        total = total.saturating_sub(size.max(0) as u64);
                        freed += size.max(0) as u64;
                        tracing::debug!(%sha, size, "evicted");
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot evict"),
                }
            }
        }
        tx.commit().map_err(|e| db_error("evict", e))?;
        Ok(freed)
    }

    /// Totals and counters (what waited written first).
    ///
    /// # Errors
    /// [`Error::Io`] on database errors.
    pub fn stats(&self) -> Result<CacheStats> {
        let mut conn = self.shared.lock_conn();
        self.shared.flush_locked(&mut conn)?;
        let entries: i64 = conn
            .query_row("SELECT count(*) FROM cache_catalog", [], |r| r.get(0))
            .map_err(|e| db_error("stats", e))?;
        let p = |k| get_prop(&conn, k).map(|v| v.max(0) as u64);
        Ok(CacheStats {
            size: p("total_size")?,
            entries: entries.max(0) as u64,
            hits: p("hits")?,
            misses: p("misses")?,
            bytes_fetched: p("bytes_fetched")?,
            readahead_bytes: p("readahead_bytes")?,
            readahead_used_bytes: p("readahead_used_bytes")?,
            prefetch_packs: p("prefetch_packs")?,
            prefetch_failed_packs: p("prefetch_failed_packs")?,
            prefetch_rejected_objects: p("prefetch_rejected_objects")?,
            prefetch_bytes: p("prefetch_bytes")?,
            prefetch_used_bytes: p("prefetch_used_bytes")?,
            prefetch_ms: p("prefetch_ms")?,
        })
    }

    /// The cache file of `sha`.
    fn file_of(&self, sha: &str) -> PathBuf {
        object_file(&self.shared.root, sha)
    }

    /// Runs `body` in one (deferred) transaction after what waited is written, committed
    /// if it succeeds and rolled back if it fails; database errors name `context`.
    fn write<T>(
        &self,
        context: &str,
        body: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.shared.lock_conn();
        self.shared.flush_locked(&mut conn)?;
        let tx = conn.transaction().map_err(|e| db_error(context, e))?;
        let result = body(&tx)?;
        tx.commit().map_err(|e| db_error(context, e))?;
        Ok(result)
    }
}

impl Drop for CacheIndex {
    fn drop(&mut self) {
        *self
            .shared
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.wake.notify_all();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "cache index: the last writes were lost");
        }
    }
}

impl Shared {
    fn lock_conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `row` with counter changes `count`.
    fn queue(&self, row: Row, count: impl FnOnce(&mut Counts)) {
        let mut pending = self.lock_pending();
        if row.committed {
            pending.committed_bytes += row.size;
            pending.committed_mtimes.insert(row.sha.clone(), row.mtime);
        }
        pending.rows.push(row);
        count(&mut pending.counts);
    }

    /// Counter changes only.
    fn count(&self, count: impl FnOnce(&mut Counts)) {
        count(&mut self.lock_pending().counts);
    }

    fn rows_waiting(&self) -> usize {
        self.lock_pending().rows.len()
    }

    /// Writes what waits if [`FLUSH_ROWS`] rows do (a failure is logged: the rows'
    /// objects are indexed again at their next access).
    fn flush_if_full(&self, mut conn: MutexGuard<'_, Connection>) {
        if self.rows_waiting() >= FLUSH_ROWS
            && let Err(e) = self.flush_locked(&mut conn)
        {
            tracing::warn!(error = %e, "cache index: writes lost");
        }
    }

    /// The flusher thread: writes what waits every [`FLUSH_INTERVAL`] until stopped.
    fn flush_periodically(&self) {
        let mut stop = self.stop.lock().unwrap_or_else(PoisonError::into_inner);
        while !*stop {
            stop = self
                .wake
                .wait_timeout(stop, FLUSH_INTERVAL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            if *stop {
                break;
            }
            drop(stop);
            if let Err(e) = self.flush_locked(&mut self.lock_conn()) {
                tracing::warn!(error = %e, "cache index: writes lost");
            }
            stop = self.stop.lock().unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Writes what waits in one transaction, `conn` being the locked connection.
    /// What failed to be written waits for the next write (up to [`MAX_WAITING_ROWS`]
    /// rows; past that they are dropped, and their objects indexed again at their next
    /// access).
    fn flush_locked(&self, conn: &mut Connection) -> Result<()> {
        let pending = std::mem::take(&mut *self.lock_pending());
        if pending.rows.is_empty() && pending.counts.is_empty() {
            return Ok(());
        }
        let written = self.write_pending(conn, &pending);
        if written.is_err() {
            let mut waiting = self.lock_pending();
            let newer = std::mem::replace(&mut *waiting, pending);
            if waiting.rows.len() + newer.rows.len() > MAX_WAITING_ROWS {
                waiting.rows.clear();
                waiting.committed_mtimes.clear();
                waiting.committed_bytes = 0;
            }
            waiting.rows.extend(newer.rows);
            waiting.committed_bytes += newer.committed_bytes;
            waiting.committed_mtimes.extend(newer.committed_mtimes);
            waiting.counts.add(&newer.counts);
        }
        written
    }

    /// One transaction (taking the write lock at once: a deferred one that reads first
    /// can fail at once on a busy snapshot when other mounts write) with `pending`.
    fn write_pending(&self, conn: &mut Connection, pending: &Pending) -> Result<()> {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| db_error("write", e))?;
        let mut seq = get_prop(&tx, "seq")?;
        let mut added = 0i64;
        for row in &pending.rows {
            seq += 1;
            added += touch_in(&tx, &self.root, row, seq)?;
        }
        if !pending.rows.is_empty() {
            set_prop(&tx, "seq", seq)?;
        }
        let c = &pending.counts;
        let counters: [(&str, i64); 12] = [
            ("total_size", added),
            ("hits", c.hits as i64),
            ("misses", c.misses as i64),
            ("bytes_fetched", c.bytes_fetched as i64),
            ("readahead_bytes", c.readahead_bytes as i64),
            ("readahead_used_bytes", c.readahead_used_bytes as i64),
            ("prefetch_packs", c.prefetch.packs as i64),
            ("prefetch_failed_packs", c.prefetch.failed_packs as i64),
            (
                "prefetch_rejected_objects",
                c.prefetch.rejected_objects as i64,
            ),
            ("prefetch_bytes", c.prefetch_bytes as i64),
            ("prefetch_used_bytes", c.prefetch.used_bytes as i64),
            ("prefetch_ms", c.prefetch.ms as i64),
        ];
        for (key, delta) in counters {
            if delta != 0 {
                add_prop(&tx, key, delta)?;
            }
        }
        tx.commit().map_err(|e| db_error("write", e))
    }
}

impl PrefetchCounts {
    fn add(&mut self, o: &PrefetchCounts) {
        self.packs += o.packs;
        self.failed_packs += o.failed_packs;
        self.rejected_objects += o.rejected_objects;
        self.used_bytes += o.used_bytes;
        self.ms += o.ms;
    }
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.bytes_fetched += o.bytes_fetched;
        self.readahead_bytes += o.readahead_bytes;
        self.readahead_used_bytes += o.readahead_used_bytes;
        self.prefetch.add(&o.prefetch);
        self.prefetch_bytes += o.prefetch_bytes;
    }

    fn is_empty(&self) -> bool {
        self.hits == 0
            && self.misses == 0
            && self.bytes_fetched == 0
            && self.readahead_bytes == 0
            && self.readahead_used_bytes == 0
            && self.prefetch == PrefetchCounts::default()
            && self.prefetch_bytes == 0
    }
}

/// Caps SQLite's process-wide memory (page caches of every catalog and of the index) at
/// `bytes` as a soft limit (`PRAGMA soft_heap_limit`): past it SQLite recycles cache pages
/// instead of growing, and reads come from the kernel's page cache instead. Without it a
/// mount walking many nested catalogs holds up to 2 MB of cache per catalog.
///
/// # Errors
/// [`Error::Io`] if SQLite refuses the pragma.
pub fn limit_sqlite_memory(bytes: u64) -> Result<()> {
    let conn = Connection::open_in_memory().map_err(|e| db_error("memory limit", e))?;
    conn.query_row(&format!("PRAGMA soft_heap_limit = {bytes}"), [], |_| Ok(()))
        .map_err(|e| db_error("memory limit", e))
}

/// Deletes `path` unless some process holds it open with a lock: `Ok(true)` if it is gone
/// (deleted now, or already missing), `Ok(false)` if it is in use.
fn delete_if_unused(path: &Path) -> std::io::Result<bool> {
    use nix::fcntl::{Flock, FlockArg};
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => {
            std::fs::remove_file(path)?;
            drop(locked);
            Ok(true)
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(false),
        Err((_, errno)) => Err(std::io::Error::from(errno)),
    }
}

/// A file's mtime in nanoseconds since the epoch.
pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

/// Writes `row` with access sequence number `seq` inside transaction `tx`: moves an
/// indexed object to the recent end (a committed one also takes the new file's size and
/// mtime), or inserts it; the bytes it adds to the total.
fn touch_in(tx: &rusqlite::Transaction<'_>, root: &Path, row: &Row, seq: i64) -> Result<i64> {
    let err = |e| db_error("touch", e);
    let indexed: Option<i64> = tx
        .prepare_cached("SELECT size FROM cache_catalog WHERE sha = ?1")
        .and_then(|mut stmt| stmt.query_row([&row.sha], |r| r.get(0)).optional())
        .map_err(err)?;
    let size = row.size as i64;
    match indexed {
        Some(_) if !row.committed => {
            tx.prepare_cached("UPDATE cache_catalog SET acseq = ?2 WHERE sha = ?1")
                .and_then(|mut stmt| stmt.execute(params![row.sha, seq]))
                .map_err(err)?;
            Ok(0)
        }
        Some(old) => {
            tx.prepare_cached(
                "UPDATE cache_catalog SET acseq = ?2, size = ?3, mtime = ?4 WHERE sha = ?1",
            )
            .and_then(|mut stmt| stmt.execute(params![row.sha, seq, size, row.mtime]))
            .map_err(err)?;
            Ok(size - old)
        }
        // An access of an unindexed object that another process evicted meanwhile.
        None if !row.committed && !object_file(root, &row.sha).exists() => Ok(0),
        None => {
            tx.prepare_cached(
                "INSERT INTO cache_catalog (sha, size, acseq, type, pinned, mtime) \
                     VALUES (?1, ?2, ?3, ?4, 0, ?5)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![row.sha, size, seq, row.kind as i64, row.mtime])
            })
            .map_err(err)?;
            Ok(size)
        }
    }
}

/// The cache file of `sha` under `root`.
fn object_file(root: &Path, sha: &str) -> PathBuf {
    let (head, rest) = sha.split_at(2.min(sha.len()));
    root.join(head).join(rest)
}

fn remove_row(tx: &rusqlite::Transaction<'_>, sha: &str) -> Result<()> {
    let size: Option<i64> = tx
        .query_row(
            "DELETE FROM cache_catalog WHERE sha = ?1 RETURNING size",
            [sha],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| db_error("remove", e))?;
    if let Some(size) = size {
        add_prop(tx, "total_size", -size)?;
    }
    Ok(())
}

fn get_prop(conn: &Connection, key: &str) -> Result<i64> {
    conn.prepare_cached("SELECT value FROM properties WHERE key = ?1")
        .and_then(|mut stmt| stmt.query_row([key], |r| r.get(0)).optional())
        .map(|v| v.unwrap_or(0))
        .map_err(|e| db_error("properties", e))
}

fn set_prop(conn: &Connection, key: &str, value: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO properties (key, value) VALUES (?1, ?2) \
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut stmt| stmt.execute(params![key, value]))
    .map(drop)
    .map_err(|e| db_error("properties", e))
}

fn add_prop(conn: &Connection, key: &str, delta: i64) -> Result<()> {
    conn.prepare_cached("UPDATE properties SET value = value + ?2 WHERE key = ?1")
        .and_then(|mut stmt| stmt.execute(params![key, delta]))
        .map(drop)
        .map_err(|e| db_error("properties", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, sha: &str, len: usize) -> i64 {
        let dir = root.join(&sha[..2]);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(&sha[2..]);
        std::fs::write(&path, vec![b'x'; len]).unwrap();
        mtime_ns(&std::fs::metadata(&path).unwrap())
    }

    #[test]
    fn lru_eviction_respects_the_quota_and_skips_locked_files() {
        let dir = tempfile::tempdir().unwrap();
        let idx = CacheIndex::open(dir.path()).unwrap();
        for (i, sha) in ["aa01", "bb02", "cc03", "dd04"].iter().enumerate() {
            let m = put(dir.path(), sha, 100);
            assert_eq!(
                idx.touch(sha, 100, ObjectKind::Regular, m, 0).unwrap(),
                Touch::New
            );
            assert_eq!(idx.stats().unwrap().size, 100 * (i as u64 + 1));
        }
        // aa01 becomes the most recent; bb02 is held open (shared lock) by someone.
        assert!(matches!(
            idx.touch("aa01", 100, ObjectKind::Regular, 0, 1).unwrap(),
            Touch::Known(_)
        ));
        let held = nix::fcntl::Flock::lock(
            std::fs::File::open(dir.path().join("bb/02")).unwrap(),
            nix::fcntl::FlockArg::LockShared,
        )
        .unwrap();
        // Room for 50 more bytes under a 300-byte quota: evict cc03 and dd04 (LRU order,
        // skipping the locked bb02), not aa01.
        assert_eq!(idx.make_room(50, 300).unwrap(), 200);
        assert!(!dir.path().join("cc/03").exists());
        assert!(!dir.path().join("dd/04").exists());
        assert!(dir.path().join("bb/02").exists());
        assert!(dir.path().join("aa/01").exists());
        let s = idx.stats().unwrap();
        assert_eq!((s.size, s.entries, s.hits), (200, 2, 1));

        // evict_all leaves only what is in use.
        assert_eq!(idx.evict_all().unwrap(), 100);
        assert!(dir.path().join("bb/02").exists());
        drop(held);
        assert_eq!(idx.evict_all().unwrap(), 100);
        assert_eq!(idx.stats().unwrap().entries, 0);
    }

    #[test]
    fn writes_wait_and_reach_the_database_together_within_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let idx = CacheIndex::open(dir.path()).unwrap();
        let m = put(dir.path(), "ab01", 10);
        idx.commit_download("ab01", 10, ObjectKind::Regular, m, 7, Arrival::ReadAhead);
        idx.record_read_ahead(0, 4);
        // Counted in the total and known to touch before the row is written.
        assert_eq!(idx.total_size().unwrap(), 10);
        assert_eq!(
            idx.touch("ab01", 10, ObjectKind::Regular, m, 1).unwrap(),
            Touch::Known(m)
        );
        // Another connection (another process) sees it all within the flush interval.
        let other = Connection::open(dir.path().join("cachedb")).unwrap();
        let prop = |k: &str| -> i64 {
            other
                .query_row("SELECT value FROM properties WHERE key = ?1", [k], |r| {
                    r.get(0)
                })
                .unwrap()
        };
        let deadline = std::time::Instant::now() + FLUSH_INTERVAL * 10;
        while prop("readahead_used_bytes") == 0 {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(20));
        }
        let row: (i64, i64) = other
            .query_row(
                "SELECT size, mtime FROM cache_catalog WHERE sha = 'ab01'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(row, (10, m));
        assert_eq!(
            [
                "total_size",
                "misses",
                "bytes_fetched",
                "readahead_bytes",
                "readahead_used_bytes",
                "hits"
            ]
            .map(prop),
            [10, 1, 7, 10, 4, 1]
        );
        // A new download of an indexed object replaces its size and mtime.
        idx.commit_download("ab01", 12, ObjectKind::Regular, m + 1, 9, Arrival::Demand);
        idx.record_hits(2);
        drop(idx);
        let s = CacheIndex::open(dir.path()).unwrap().stats().unwrap();
        assert_eq!((s.size, s.entries, s.misses, s.hits), (12, 1, 2, 3));
    }

    #[test]
    fn the_sqlite_memory_limit_is_accepted() {
        limit_sqlite_memory(16 << 20).unwrap();
        let conn = Connection::open_in_memory().unwrap();
        let v: i64 = conn
            .query_row("PRAGMA soft_heap_limit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 16 << 20);
    }

    #[test]
    fn counters_persist_and_a_lost_index_is_rebuilt_from_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        {
            let idx = CacheIndex::open(dir.path()).unwrap();
            let m = put(dir.path(), "ab12", 10);
            idx.touch("ab12", 10, ObjectKind::Catalog, m, 0).unwrap();
            idx.record_download(7);
        }
        let idx = CacheIndex::open(dir.path()).unwrap();
        let s = idx.stats().unwrap();
        assert_eq!(
            (s.size, s.entries, s.misses, s.bytes_fetched),
            (10, 1, 1, 7)
        );
        drop(idx);

        put(dir.path(), "cd34", 5);
        std::fs::write(dir.path().join("cachedb"), b"garbage, not sqlite").unwrap();
        let _ = std::fs::remove_file(dir.path().join("cachedb-wal"));
        let _ = std::fs::remove_file(dir.path().join("cachedb-shm"));
        let idx = CacheIndex::open(dir.path()).unwrap();
        let s = idx.stats().unwrap();
        assert_eq!((s.size, s.entries), (15, 2));
        idx.forget("ab12").unwrap();
        assert!(!dir.path().join("ab/12").exists());
        assert_eq!(idx.stats().unwrap().size, 5);
    }
}
