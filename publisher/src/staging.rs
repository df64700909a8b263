//! The scratch SQLite database one layer is staged in while its tar stream is read, so that
//! the metadata memory of `ingest` does not grow with the number of files
//! (publisher/README.md, "Memory").
//!
//! One row per path below the layer root, keyed by `(parent, name)` (`parent` is the path
//! of the directory, components joined by `/`, `""` for the root), holding a
//! [`StagedEntry`] in the form of [`crate::entry_codec`] and whether a directory had a tar
//! entry of its own. A second table maps the pool's jobs to the object hashes they
//! produced, so pending contents ([`crate::pipeline::PendingContent`]) are resolved on disk
//! too ([`Staging::resolve`]). The database lives in
//! the repository's `DIR/tmp` (removed on drop, and by the next run after a kill); it is
//! written without journal or fsync, as nothing in it survives the process.

use std::path::{Path, PathBuf};

use catalog::{ContentHash, Entry, HashAlgorithm};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::entry_codec;
use crate::error::{Error, Result};
use crate::pipeline::{JobId, PendingContent};

/// SQLite page cache of one staging database, in KiB (negative `cache_size`).
const CACHE_KIB: i64 = 16 * 1024;

const SCHEMA: &str = "
PRAGMA journal_mode = OFF;
PRAGMA synchronous = OFF;
PRAGMA locking_mode = EXCLUSIVE;
CREATE TABLE IF NOT EXISTS rows (parent TEXT NOT NULL, name TEXT NOT NULL, dir INTEGER NOT NULL,
    explicit INTEGER NOT NULL, entry BLOB NOT NULL, PRIMARY KEY (parent, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, hash BLOB NOT NULL);
";

/// A row as staged while its layer is read: a catalog row whose regular file content may
/// still be being stored by the pool. Only [`Staging::resolve`] makes a catalog row of it,
/// so a pending content can never be written into a catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StagedEntry {
    /// The row; without `hash` and `chunks` while `pending` is set.
    entry: Entry,
    /// For a regular file read from the layer: the jobs storing its content.
    pending: Option<PendingContent>,
}

impl StagedEntry {
    /// A row complete as it is (no content to wait for: a directory, symlink, special file).
    pub fn new(entry: Entry) -> StagedEntry {
        StagedEntry {
            entry,
            pending: None,
        }
    }

    /// The regular file `entry` whose content is being stored by the jobs of `content`
    /// (its own `hash` and `chunks` are dropped).
    pub fn pending(mut entry: Entry, content: PendingContent) -> StagedEntry {
        entry.hash = None;
        entry.chunks = Vec::new();
        StagedEntry {
            entry,
            pending: Some(content),
        }
    }

    /// The row's metadata (for a pending file, without its content).
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// The row's metadata, to change (name, xattrs, hard-link group); the content stays.
    pub fn entry_mut(&mut self) -> &mut Entry {
        &mut self.entry
    }

    /// The catalog row, with the object hashes of a pending content from `hash_of`.
    ///
    /// Errors: whatever `hash_of` returns.
    pub fn resolve(self, hash_of: impl FnMut(JobId) -> Result<ContentHash>) -> Result<Entry> {
        let mut entry = self.entry;
        if let Some(content) = self.pending {
            (entry.hash, entry.chunks) = content.resolve(hash_of)?;
        }
        Ok(entry)
    }
}

/// One staged row: the entry (named) and, for directories, whether the layer had a tar
/// entry for it.
#[derive(Clone, Debug)]
pub struct Row {
    /// The staged row; its `name` is the last path component.
    pub staged: StagedEntry,
    /// Whether a directory came from a tar entry of its own (false: implied by a child).
    pub explicit: bool,
}

/// An open staging database.
pub struct Staging {
    conn: Connection,
    file: PathBuf,
    in_txn: bool,
}

/// The parent path of `path` (components joined by `/`; the root is `""`) and its last
/// component.
pub fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// `parent/name`, or `name` at the root.
pub fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

impl Staging {
    /// Creates (or opens) the database `file` and starts one write transaction.
    ///
    /// Errors: [`Error::Sqlite`].
    pub fn create(file: &Path) -> Result<Staging> {
        let mut s = Staging::open(file)?;
        s.conn.execute_batch("BEGIN").map_err(|e| s.sql(e))?;
        s.in_txn = true;
        Ok(s)
    }

    /// Opens (or creates) the database `file` without a transaction (for reading back).
    ///
    /// Errors: [`Error::Sqlite`].
    pub fn open(file: &Path) -> Result<Staging> {
        let sql = |source| Error::Sqlite {
            file: file.to_path_buf(),
            source,
        };
        let conn = Connection::open(file).map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(sql)?;
        Ok(Staging {
            conn,
            file: file.to_path_buf(),
            in_txn: false,
        })
    }

    fn sql(&self, source: rusqlite::Error) -> Error {
        Error::Sqlite {
            file: self.file.clone(),
            source,
        }
    }

    /// Decodes the row `parent/name`; an undecodable one is an [`Error::Staging`] naming
    /// the database and the path.
    fn decode(&self, parent: &str, name: &str, bytes: &[u8]) -> Result<StagedEntry> {
        entry_codec::decode(name, bytes).map_err(|e| self.at(parent, name, e))
    }

    /// `e` as an [`Error::Staging`] naming the database and the row `parent/name`.
    fn at(&self, parent: &str, name: &str, e: Error) -> Error {
        Error::Staging {
            file: self.file.clone(),
            path: join(parent, name),
            reason: match e {
                Error::Staging { reason, .. } => reason,
                other => other.to_string(),
            },
        }
    }

    /// Ends the write transaction (further writes run one statement at a time).
    pub fn commit(&mut self) -> Result<()> {
        if self.in_txn {
            self.conn.execute_batch("COMMIT").map_err(|e| self.sql(e))?;
            self.in_txn = false;
        }
        Ok(())
    }

    /// The row `name` in directory `parent`.
    pub fn get(&self, parent: &str, name: &str) -> Result<Option<Row>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT explicit, entry FROM rows WHERE parent = ?1 AND name = ?2")
            .map_err(|e| self.sql(e))?;
        let row = stmt
            .query_row(params![parent, name], |r| {
                Ok((r.get::<_, bool>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .optional()
            .map_err(|e| self.sql(e))?;
        row.map(|(explicit, bytes)| {
            Ok(Row {
                staged: self.decode(parent, name, &bytes)?,
                explicit,
            })
        })
        .transpose()
    }

    /// Stores `staged` as `parent/<name>`, replacing the row there (not its children:
    /// see [`Staging::remove_below`]).
    pub fn put(&self, parent: &str, staged: &StagedEntry, explicit: bool) -> Result<()> {
        let entry = staged.entry();
        let bytes = entry_codec::encode(staged).map_err(|e| self.at(parent, &entry.name, e))?;
        let mut stmt = self
            .conn
            .prepare_cached(
                "INSERT OR REPLACE INTO rows (parent, name, dir, explicit, entry) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(|e| self.sql(e))?;
        stmt.execute(params![
            parent,
            entry.name,
            entry.kind == catalog::EntryKind::Directory,
            explicit,
            bytes
        ])
        .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Removes every row below `path` (not `path` itself). Paths below `p` are `p/…`:
    /// they sort between `p/` and `p0` (`'0'` follows `'/'`).
    pub fn remove_below(&self, path: &str) -> Result<()> {
        let (lo, hi) = (format!("{path}/"), format!("{path}0"));
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM rows WHERE parent = ?1 OR (parent >= ?2 AND parent < ?3)")
            .map_err(|e| self.sql(e))?;
        stmt.execute(params![path, lo, hi])
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The rows of directory `dir`, sorted by name (byte order, as the in-memory trees).
    pub fn list(&self, dir: &str) -> Result<Vec<Row>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT name, explicit, entry FROM rows WHERE parent = ?1 ORDER BY name",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![dir], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for r in rows {
            let (name, explicit, bytes) = r.map_err(|e| self.sql(e))?;
            out.push(Row {
                staged: self.decode(dir, &name, &bytes)?,
                explicit,
            });
        }
        Ok(out)
    }

    /// Records that pool job `id` stored the object `hash`.
    pub fn put_job(&self, id: JobId, hash: &ContentHash) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO jobs (id, hash) VALUES (?1, ?2)")
            .map_err(|e| self.sql(e))?;
        let mut blob = [0u8; 21];
        blob[0] = match hash.algorithm {
            HashAlgorithm::Sha1 => 0,
            HashAlgorithm::Rmd160 => 1,
            HashAlgorithm::Shake128 => 2,
        };
        blob[1..].copy_from_slice(&hash.digest);
        stmt.execute(params![id.0 as i64, &blob[..]])
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The hash pool job `id` produced, if recorded.
    pub fn job(&self, id: JobId) -> Result<Option<ContentHash>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT hash FROM jobs WHERE id = ?1")
            .map_err(|e| self.sql(e))?;
        let blob: Option<Vec<u8>> = stmt
            .query_row(params![id.0 as i64], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))?;
        let Some(blob) = blob else { return Ok(None) };
        let algorithm = match blob.first() {
            Some(0) => HashAlgorithm::Sha1,
            Some(1) => HashAlgorithm::Rmd160,
            Some(2) => HashAlgorithm::Shake128,
            _ => return Err(Error::Task(format!("job {id}: bad stored hash"))),
        };
        let digest: [u8; 20] = blob
            .get(1..21)
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| Error::Task(format!("job {id}: bad stored hash")))?;
        Ok(Some(ContentHash { algorithm, digest }))
    }

    /// The catalog row of `staged`, its pending content resolved with the recorded jobs.
    ///
    /// Errors: [`Error::Sqlite`], [`Error::Task`] for a job without a result.
    pub fn resolve(&self, staged: StagedEntry) -> Result<Entry> {
        staged.resolve(|id| {
            self.job(id)?
                .ok_or_else(|| Error::Task(format!("object job {id} has no result")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{dir_entry, file_entry};

    #[test]
    fn rows_replace_list_and_remove_subtrees() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = Staging::create(&dir.path().join("s.db")).unwrap_or_else(|e| panic!("{e}"));
        let h = ContentHash::of_bytes(HashAlgorithm::Sha1, b"x");
        let ok = |r: Result<()>| r.unwrap_or_else(|e| panic!("{e}"));
        let put = |parent: &str, e: Entry, explicit: bool| {
            ok(s.put(parent, &StagedEntry::new(e), explicit));
        };
        put("", dir_entry("a", 0o755, 0, 0, 0), true);
        put("a", dir_entry("b", 0o755, 0, 0, 0), false);
        put("a/b", file_entry("f", 0o644, 0, 0, 0, 1, h), false);
        put("a.b", file_entry("g", 0o644, 0, 0, 0, 1, h), false);
        put("", file_entry("a", 0o600, 0, 0, 0, 1, h), false);
        let a = s.get("", "a").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.map(|r| r.staged.entry().mode), Some(0o100600));
        ok(s.remove_below("a"));
        assert!(
            s.get("a/b", "f")
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none()
        );
        assert!(s.get("a", "b").unwrap_or_else(|e| panic!("{e}")).is_none());
        assert!(
            s.get("a.b", "g")
                .unwrap_or_else(|e| panic!("{e}"))
                .is_some(),
            "a sibling sorting between is kept"
        );
        let names: Vec<String> = s
            .list("")
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|r| r.staged.entry().name.clone())
            .collect();
        assert_eq!(names, vec!["a"]);
        ok(s.put_job(JobId(7), &h));
        assert_eq!(s.job(JobId(7)).ok().flatten(), Some(h));
        assert_eq!(s.job(JobId(8)).ok().flatten(), None);
    }

    #[test]
    fn pending_content_resolves_through_the_jobs_table() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = Staging::create(&dir.path().join("s.db")).unwrap_or_else(|e| panic!("{e}"));
        let h = ContentHash::of_bytes(HashAlgorithm::Sha1, b"x");
        let other = ContentHash::of_bytes(HashAlgorithm::Sha1, b"y");
        let staged = StagedEntry::pending(
            file_entry("f", 0o644, 0, 0, 0, 1, other),
            PendingContent::Whole(JobId(3)),
        );
        assert_eq!(staged.entry().hash, None, "no hash while pending");
        s.put("", &staged, false).unwrap_or_else(|e| panic!("{e}"));
        let row = s
            .get("", "f")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("row f"));
        assert_eq!(
            row.staged, staged,
            "the pending content survives the database"
        );
        let missing = s.resolve(row.staged.clone()).err().map(|e| e.to_string());
        assert_eq!(
            missing.as_deref(),
            Some("background task failed: object job 3 has no result")
        );
        s.put_job(JobId(3), &h).unwrap_or_else(|e| panic!("{e}"));
        let e = s.resolve(row.staged).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((e.hash, e.chunks.len()), (Some(h), 0));
        let dir_row = StagedEntry::new(dir_entry("d", 0o755, 0, 0, 0));
        assert_eq!(
            s.resolve(dir_row).ok(),
            Some(dir_entry("d", 0o755, 0, 0, 0))
        );
    }

    #[test]
    fn split_and_join() {
        assert_eq!(split("a/b/c"), ("a/b", "c"));
        assert_eq!(split("c"), ("", "c"));
        assert_eq!(join("", "c"), "c");
    }
}
