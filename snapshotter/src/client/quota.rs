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

use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// The index of one cache directory.
pub struct CacheIndex {
    root: PathBuf,
    conn: Mutex<Connection>,
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
            Ok(conn) if existed => {
                return Ok(CacheIndex {
                    root: root.to_path_buf(),
                    conn: Mutex::new(conn),
                });
            }
            Ok(conn) => {
                let index = CacheIndex {
                    root: root.to_path_buf(),
                    conn: Mutex::new(conn),
                };
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
        let index = CacheIndex {
            root: root.to_path_buf(),
            conn: Mutex::new(conn),
        };
        index.rebuild()?;
        Ok(index)
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
            let Ok(entries) = std::fs::read_dir(self.root.join(&head)) else {
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
        let mut conn = self.lock();
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
        tracing::info!(root = %self.root.display(), objects = files.len(), bytes = total, "cache index rebuilt");
        Ok(())
    }

    /// Records an access to object `sha` and adds `hits` cache hits to the counter: moves
    /// the object to the most recent end of the LRU list, inserting it with `size`, `kind`
    /// and `mtime` if it was not indexed. Returns what was known before.
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
        self.write("touch", |tx| touch_in(tx, sha, size, kind, mtime, hits))
    }

    /// A download committed to the cache, in one transaction: the object's row as
    /// [`CacheIndex::touch`] writes it, a miss of `fetched` stored bytes, and, for
    /// read-ahead, `size` more bytes read ahead.
    ///
    /// # Errors
    /// [`Error::Io`] on database errors.
    #[allow(clippy::too_many_arguments)]
    pub fn commit_download(
        &self,
        sha: &str,
        size: u64,
        kind: ObjectKind,
        mtime: i64,
        hits: u64,
        fetched: u64,
        arrival: Arrival,
    ) -> Result<Touch> {
        self.write("download", |tx| {
            let result = touch_in(tx, sha, size, kind, mtime, hits)?;
            if arrival != Arrival::Pack {
                add_prop(tx, "misses", 1)?;
                add_prop(tx, "bytes_fetched", fetched as i64)?;
            }
            match arrival {
                Arrival::Demand => {}
                Arrival::ReadAhead => add_prop(tx, "readahead_bytes", size as i64)?,
                Arrival::Pack => add_prop(tx, "prefetch_bytes", size as i64)?,
            }
            Ok(result)
        })
    }

    /// Adds `hits` cache hits (answered without writing the index) to the counter.
    ///
    /// # Errors
    /// [`Error::Io`] on database errors.
    pub fn record_hits(&self, hits: u64) -> Result<()> {
        let conn = self.lock();
        add_prop(&conn, "hits", hits as i64)
    }

    /// Records a download of `bytes` stored bytes (a cache miss).
    ///
    /// # Errors
    /// [`Error::Io`] on database errors.
    pub fn record_download(&self, bytes: u64) -> Result<()> {
        self.write("counters", |tx| {
            add_prop(tx, "misses", 1)?;
            add_prop(tx, "bytes_fetched", bytes as i64)
        })
    }

    /// Adds to the read-ahead counters: raw bytes read ahead, and raw bytes of read-ahead
    /// objects later read.
    ///
    /// # Errors
    /// [`Error::Io`] on database errors.
    pub fn record_read_ahead(&self, fetched: u64, used: u64) -> Result<()> {
        self.write("counters", |tx| {
            add_prop(tx, "readahead_bytes", fetched as i64)?;
            add_prop(tx, "readahead_used_bytes", used as i64)
        })
    }

    /// Adds to the startup-pack counters ([`CacheStats`]'s `prefetch_*`).
    ///
    /// # Errors
    /// [`Error::Io`] on database errors.
    pub fn record_prefetch(&self, counts: &PrefetchCounts) -> Result<()> {
        self.write("counters", |tx| {
            add_prop(tx, "prefetch_packs", counts.packs as i64)?;
            add_prop(tx, "prefetch_failed_packs", counts.failed_packs as i64)?;
            add_prop(
                tx,
                "prefetch_rejected_objects",
                counts.rejected_objects as i64,
            )?;
            add_prop(tx, "prefetch_used_bytes", counts.used_bytes as i64)?;
            add_prop(tx, "prefetch_ms", counts.ms as i64)
        })
    }

    /// Bytes of all indexed objects.
    ///
    /// # Errors
    /// [`Error::Io`] on database errors.
    pub fn total_size(&self) -> Result<u64> {
        let conn = self.lock();
        get_prop(&conn, "total_size").map(|v| v.max(0) as u64)
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
        let mut conn = self.lock();
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

    /// Totals and counters.
    ///
    /// # Errors
    /// [`Error::Io`] on database errors.
    pub fn stats(&self) -> Result<CacheStats> {
        let conn = self.lock();
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
        let (head, rest) = sha.split_at(2.min(sha.len()));
        self.root.join(head).join(rest)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `body` in one (deferred) transaction, committed if it succeeds and rolled back
    /// if it fails; database errors name `context`.
    fn write<T>(
        &self,
        context: &str,
        body: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| db_error(context, e))?;
        let result = body(&tx)?;
        tx.commit().map_err(|e| db_error(context, e))?;
        Ok(result)
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

/// The row and counters of [`CacheIndex::touch`], inside transaction `tx`.
fn touch_in(
    tx: &rusqlite::Transaction<'_>,
    sha: &str,
    size: u64,
    kind: ObjectKind,
    mtime: i64,
    hits: u64,
) -> Result<Touch> {
    let seq = get_prop(tx, "seq")? + 1;
    set_prop(tx, "seq", seq)?;
    if hits > 0 {
        add_prop(tx, "hits", hits as i64)?;
    }
    let known: Option<i64> = tx
        .query_row(
            "SELECT mtime FROM cache_catalog WHERE sha = ?1",
            [sha],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| db_error("touch", e))?;
    let result = match known {
        Some(m) => {
            tx.execute(
                "UPDATE cache_catalog SET acseq = ?2 WHERE sha = ?1",
                params![sha, seq],
            )
            .map_err(|e| db_error("touch", e))?;
            Touch::Known(m)
        }
        None => {
            tx.execute(
                "INSERT INTO cache_catalog (sha, size, acseq, type, pinned, mtime) \
                     VALUES (?1, ?2, ?3, ?4, 0, ?5)",
                params![sha, size as i64, seq, kind as i64, mtime],
            )
            .map_err(|e| db_error("touch", e))?;
            add_prop(tx, "total_size", size as i64)?;
            Touch::New
        }
    };
    Ok(result)
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
    conn.query_row("SELECT value FROM properties WHERE key = ?1", [key], |r| {
        r.get(0)
    })
    .optional()
    .map(|v| v.unwrap_or(0))
    .map_err(|e| db_error("properties", e))
}

fn set_prop(conn: &Connection, key: &str, value: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO properties (key, value) VALUES (?1, ?2) \
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map(drop)
    .map_err(|e| db_error("properties", e))
}

fn add_prop(conn: &Connection, key: &str, delta: i64) -> Result<()> {
    conn.execute(
        "UPDATE properties SET value = value + ?2 WHERE key = ?1",
        params![key, delta],
    )
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
            idx.record_download(7).unwrap();
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
