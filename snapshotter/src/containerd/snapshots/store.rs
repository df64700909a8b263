//! The snapshot metadata store: one SQLite table at `<root>/metadata.db`.
//!
//! Schema (`snapshots`): `id` (integer, names the directory `<root>/snapshots/<id>`),
//! `key` (unique: the active/view key or the committed name — containerd keeps them in one
//! namespace, docs/lazy-snapshotters.md §1), `parent` (name of a committed snapshot or NULL), `kind`
//! (`active`/`view`/`committed`), `labels` (JSON object of strings), `created_ns` and
//! `updated_ns` (Unix time in nanoseconds), `remote` (the `layerfs` directory inside the
//! FUSE mount for a snapshot committed from the repository, else NULL), `size` and `inodes`
//! (usage recorded at commit, bytes and inode count; for remote snapshots the apparent size
//! of the layer, recorded at the first `Usage`). Nothing here is ever wiped: a database
//! that cannot be opened is an error, not a reason to start afresh.
//!
//! The store is synchronous; callers run it on blocking threads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result};

/// Snapshot labels: key → value.
pub type Labels = BTreeMap<String, String>;

/// The three snapshot kinds of containerd's snapshots API (docs/lazy-snapshotters.md §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Writable, from Prepare; can be committed.
    Active,
    /// Read-only, from View; cannot be committed.
    View,
    /// Immutable, from Commit (or a remote Prepare); the only kind that can be a parent.
    Committed,
}

impl Kind {
    /// The name stored in the database and used by list filters (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        }
    }

    /// Parses [`Kind::as_str`] output; `None` for anything else.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "active" => Some(Kind::Active),
            "view" => Some(Kind::View),
            "committed" => Some(Kind::Committed),
            _ => None,
        }
    }
}

/// One row of the `snapshots` table.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Row id; the snapshot directory is `<root>/snapshots/<id>`.
    pub id: i64,
    /// Key (active/view) or name (committed).
    pub key: String,
    /// Name of the committed parent, if any.
    pub parent: Option<String>,
    /// Kind.
    pub kind: Kind,
    /// Labels.
    pub labels: Labels,
    /// Creation time, ns since the Unix epoch.
    pub created_ns: i64,
    /// Last update time, ns since the Unix epoch.
    pub updated_ns: i64,
    /// For remote snapshots: the `layerfs` directory in the FUSE mount.
    pub remote: Option<PathBuf>,
    /// Bytes used, recorded at commit (0 before); for remote snapshots the layer walk,
    /// once measured (see `snapshots::remote_usage`).
    pub size: i64,
    /// Inodes used, recorded at commit.
    pub inodes: i64,
}

/// What [`Store::insert`] needs.
#[derive(Clone, Debug)]
pub struct NewRecord<'a> {
    /// Key or name; must not exist.
    pub key: &'a str,
    /// Committed parent name.
    pub parent: Option<&'a str>,
    /// Kind.
    pub kind: Kind,
    /// Labels.
    pub labels: &'a Labels,
    /// Remote `layerfs` directory, for remote committed snapshots.
    pub remote: Option<&'a Path>,
}

/// The open metadata database.
pub struct Store {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS snapshots (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT NOT NULL UNIQUE,
    parent      TEXT,
    kind        TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
    labels      TEXT NOT NULL,
    created_ns  INTEGER NOT NULL,
    updated_ns  INTEGER NOT NULL,
    remote      TEXT,
    size        INTEGER NOT NULL DEFAULT 0,
    inodes      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
";

const COLUMNS: &str = "id, key, parent, kind, labels, created_ns, updated_ns, remote, size, inodes";

/// Current time in ns since the Unix epoch (0 if the clock is before 1970).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn labels_to_json(labels: &Labels) -> String {
    // A map of strings always serialises.
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_string())
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let kind_text: String = row.get(3)?;
    let kind = Kind::parse(&kind_text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            3,
            rusqlite::types::Type::Text,
            format!("unknown snapshot kind {kind_text:?}").into(),
        )
    })?;
    let labels_text: String = row.get(4)?;
    let labels: Labels = serde_json::from_str(&labels_text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Record {
        id: row.get(0)?,
        key: row.get(1)?,
        parent: row.get(2)?,
        kind,
        labels,
        created_ns: row.get(5)?,
        updated_ns: row.get(6)?,
        remote: row.get::<_, Option<String>>(7)?.map(PathBuf::from),
        size: row.get(8)?,
        inodes: row.get(9)?,
    })
}

fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

impl Store {
    /// Opens (creating if needed) the database at `path` with WAL journaling.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    /// Opens a private in-memory database (tests).
    pub fn in_memory() -> Result<Store> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    /// The record with key or name `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Record>> {
        let sql = format!("SELECT {COLUMNS} FROM snapshots WHERE key = ?1");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![key], row_to_record)
            .optional()?)
    }

    /// The record with key `key`, or [`Error::SnapshotNotFound`].
    pub fn require(&self, key: &str) -> Result<Record> {
        self.get(key)?
            .ok_or_else(|| Error::SnapshotNotFound(key.to_string()))
    }

    /// All records, in id order.
    pub fn all(&self) -> Result<Vec<Record>> {
        let sql = format!("SELECT {COLUMNS} FROM snapshots ORDER BY id");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([], row_to_record)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Inserts a new record and returns it. [`Error::SnapshotExists`] if the key is taken.
    pub fn insert(&mut self, new: &NewRecord<'_>) -> Result<Record> {
        let now = now_ns();
        let remote = new.remote.map(|p| p.display().to_string());
        let result = self
            .conn
            .prepare_cached(
                "INSERT INTO snapshots (key, parent, kind, labels, created_ns, updated_ns, remote)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
            )?
            .execute(params![
                new.key,
                new.parent,
                new.kind.as_str(),
                labels_to_json(new.labels),
                now,
                remote
            ]);
        match result {
            Ok(_) => self.require(new.key),
            Err(e) if is_unique_violation(&e) => Err(Error::SnapshotExists(new.key.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Turns the active snapshot `key` into the committed snapshot `name` with `labels` and
    /// the measured usage; the id (and so the directory) stays, the creation time is reset
    /// (containerd `storage.CommitActive`); `parent`, when given, replaces the parent
    /// (commit with rebase). [`Error::SnapshotExists`] if `name` is taken.
    pub fn commit(
        &mut self,
        key: &str,
        name: &str,
        labels: &Labels,
        size: i64,
        inodes: i64,
        parent: Option<&str>,
    ) -> Result<Record> {
        let now = now_ns();
        let result = self
            .conn
            .prepare_cached(
                "UPDATE snapshots SET key = ?2, kind = 'committed', labels = ?3, created_ns = ?4,
                                  updated_ns = ?4, size = ?5, inodes = ?6,
                                  parent = COALESCE(?7, parent)
             WHERE key = ?1",
            )?
            .execute(params![
                key,
                name,
                labels_to_json(labels),
                now,
                size,
                inodes,
                parent
            ]);
        match result {
            Ok(0) => Err(Error::SnapshotNotFound(key.to_string())),
            Ok(_) => self.require(name),
            Err(e) if is_unique_violation(&e) => Err(Error::SnapshotExists(name.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Records the usage of `key` (the walk of a remote layer), without touching its
    /// update time.
    pub fn set_usage(&mut self, key: &str, size: i64, inodes: i64) -> Result<()> {
        let n = self
            .conn
            .prepare_cached("UPDATE snapshots SET size = ?2, inodes = ?3 WHERE key = ?1")?
            .execute(params![key, size, inodes])?;
        if n == 0 {
            return Err(Error::SnapshotNotFound(key.to_string()));
        }
        Ok(())
    }

    /// Replaces the labels of `key` and bumps its update time.
    pub fn set_labels(&mut self, key: &str, labels: &Labels) -> Result<Record> {
        let n = self
            .conn
            .prepare_cached("UPDATE snapshots SET labels = ?2, updated_ns = ?3 WHERE key = ?1")?
            .execute(params![key, labels_to_json(labels), now_ns()])?;
        if n == 0 {
            return Err(Error::SnapshotNotFound(key.to_string()));
        }
        self.require(key)
    }

    /// Number of snapshots whose parent is `name`.
    pub fn children(&self, name: &str) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM snapshots WHERE parent = ?1")?
            .query_row(params![name], |r| r.get(0))?)
    }

    /// Deletes `key`; [`Error::SnapshotNotFound`] if absent.
    pub fn delete(&mut self, key: &str) -> Result<()> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM snapshots WHERE key = ?1")?
            .execute(params![key])?;
        if n == 0 {
            return Err(Error::SnapshotNotFound(key.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn insert_get_commit_delete_round_trip() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Io {
            context: "tempdir".into(),
            source: e,
        })?;
        let mut store = Store::open(&dir.path().join("metadata.db"))?;
        let l = labels(&[("a", "1")]);
        let rec = store.insert(&NewRecord {
            key: "k1",
            parent: None,
            kind: Kind::Active,
            labels: &l,
            remote: None,
        })?;
        assert_eq!(rec.kind, Kind::Active);
        assert_eq!(rec.labels, l);
        assert!(rec.created_ns > 0);
        let committed = store.commit("k1", "n1", &labels(&[("b", "2")]), 4096, 3, None)?;
        assert_eq!(committed.id, rec.id);
        assert_eq!(committed.kind, Kind::Committed);
        assert_eq!(committed.labels, labels(&[("b", "2")]));
        assert_eq!((committed.size, committed.inodes), (4096, 3));
        assert!(store.get("k1")?.is_none());
        store.delete("n1")?;
        assert!(matches!(
            store.delete("n1"),
            Err(Error::SnapshotNotFound(_))
        ));
        Ok(())
    }

    #[test]
    fn duplicate_keys_and_names_are_already_exists() -> Result<()> {
        let mut store = Store::in_memory()?;
        let l = Labels::new();
        let new = NewRecord {
            key: "k",
            parent: None,
            kind: Kind::View,
            labels: &l,
            remote: None,
        };
        store.insert(&new)?;
        assert!(matches!(store.insert(&new), Err(Error::SnapshotExists(k)) if k == "k"));
        store.insert(&NewRecord {
            key: "k2",
            kind: Kind::Active,
            ..new.clone()
        })?;
        assert!(matches!(
            store.commit("k2", "k", &l, 0, 0, None),
            Err(Error::SnapshotExists(_))
        ));
        Ok(())
    }

    #[test]
    fn records_survive_reopen_with_remote_path_and_children() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Io {
            context: "tempdir".into(),
            source: e,
        })?;
        let db = dir.path().join("metadata.db");
        {
            let mut store = Store::open(&db)?;
            let l = labels(&[("containerd.io/snapshot/remote", "true")]);
            store.insert(&NewRecord {
                key: "sha256:c1",
                parent: None,
                kind: Kind::Committed,
                labels: &l,
                remote: Some(Path::new("/m/.layers/ab/abcd/layerfs")),
            })?;
            store.insert(&NewRecord {
                key: "child",
                parent: Some("sha256:c1"),
                kind: Kind::Active,
                labels: &Labels::new(),
                remote: None,
            })?;
        }
        let store = Store::open(&db)?;
        let rec = store.require("sha256:c1")?;
        assert_eq!(
            rec.remote.as_deref(),
            Some(Path::new("/m/.layers/ab/abcd/layerfs"))
        );
        assert_eq!(store.children("sha256:c1")?, 1);
        assert_eq!(store.all()?.len(), 2);
        Ok(())
    }
}
