//! The history (tag) database, so that stock tools (`cvmfs_server tag -l`, rollback) can
//! list a repository's revisions (docs/format.md §9.5).
//!
//! An SQLite file with schema `1.0` revision `3` (tables `properties`, `branches`, `tags`,
//! `recycle_bin`), stored zlib-compressed as an object with suffix `H` and named by the
//! manifest's `H` line. Each publish copies the previous database, updates it and stores a
//! new object whose `previous_revision` property names the old one.
//!
//! Tags written per publish, as the stock server does: `trunk` (the current revision,
//! created with the first publish), `trunk-previous` (the revision before, the default undo
//! target) and an automatic `generic-YYYY-MM-DDTHH:MM:SSZ` tag (`CVMFS_AUTO_TAG`).
//!
//! The publisher's whole job is one call of [`update_history`] after the root catalog is
//! stored and before the manifest is signed; see `docs/CONTRACTS.md` §1.1.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::compression::{decompress, verify};
use crate::error::{Error, Result};
use crate::hash::{ContentHash, Suffix};
use crate::store::LocalStore;
use crate::whitelist::format_utc;

/// `schema` property of the history database (docs/format.md §9.5).
pub const SCHEMA_VERSION: &str = "1.0";
/// `schema_revision` property of the history database (docs/format.md §9.5).
pub const SCHEMA_REVISION: u32 = 3;
/// The tag that names the current revision.
pub const HEAD_TAG: &str = "trunk";
/// The tag that names the revision before the current one.
pub const PREVIOUS_HEAD_TAG: &str = "trunk-previous";
/// Largest history database [`update_history`] will inflate, bytes.
pub const MAX_HISTORY_SIZE: u64 = 1 << 30;

/// The DDL of history schema 1.0 revision 3, statement by statement (docs/format.md §9.5).
pub const HISTORY_DDL: [&str; 4] = [
    "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key));",
    "CREATE TABLE branches (branch TEXT, parent TEXT, initial_revision INTEGER, CONSTRAINT pk_branch PRIMARY KEY (branch), FOREIGN KEY (parent) REFERENCES branches (branch), CHECK ((branch <> '') OR (parent IS NULL)), CHECK ((branch = '') OR (parent IS NOT NULL)));",
    "CREATE TABLE tags (name TEXT, hash TEXT, revision INTEGER, timestamp INTEGER, channel INTEGER, description TEXT, size INTEGER, branch TEXT, CONSTRAINT pk_tags PRIMARY KEY (name), FOREIGN KEY (branch) REFERENCES branches (branch));",
    "CREATE TABLE recycle_bin (hash TEXT, flags INTEGER, CONSTRAINT pk_hash PRIMARY KEY (hash));",
];

/// One row of the `tags` table (docs/format.md §9.5). `channel` is always 0 and not represented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    /// Tag name, unique.
    pub name: String,
    /// Hash of the root catalog of the tagged revision (plain hex in the database).
    pub root_hash: ContentHash,
    /// Uncompressed size of that root catalog, bytes.
    pub size: u64,
    /// Repository revision (manifest `S`).
    pub revision: u64,
    /// Unix seconds of the publish.
    pub timestamp: u64,
    /// Free text.
    pub description: String,
    /// Branch name; `""` is the main line.
    pub branch: String,
}

/// One published revision, as [`update_history`] records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publication {
    /// Hash of the new root catalog (manifest `C`).
    pub root_catalog: ContentHash,
    /// Uncompressed size of the root catalog, bytes (manifest `B`).
    pub catalog_size: u64,
    /// The new revision (manifest `S`).
    pub revision: u64,
    /// Unix seconds of the publish (manifest `T`).
    pub timestamp: u64,
}

/// Creates or updates a history database file. Not `Sync`; use it on one blocking thread.
pub struct HistoryWriter {
    conn: Connection,
    path: PathBuf,
}

impl HistoryWriter {
    /// Creates a new, empty history database at `file` (replacing any file there) for the
    /// repository `fqrn`: the schema, the properties and the main-line branch `('', NULL, 0)`.
    ///
    /// Errors: [`Error::Io`] if an old file cannot be removed, [`Error::Sqlite`].
    pub fn create(file: &Path, fqrn: &str) -> Result<HistoryWriter> {
        match std::fs::remove_file(file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", file.display()), e)),
        }
        let sql = |e| Error::sqlite(file, e);
        let conn = Connection::open(file).map_err(sql)?;
        conn.execute_batch("PRAGMA journal_mode=DELETE; BEGIN;")
            .map_err(sql)?;
        for ddl in HISTORY_DDL {
            conn.execute(ddl, []).map_err(sql)?;
        }
        let mut ins = conn
            .prepare("INSERT INTO properties (key, value) VALUES (?1, ?2)")
            .map_err(sql)?;
        for (k, v) in [
            ("schema", SCHEMA_VERSION.to_string()),
            ("schema_revision", SCHEMA_REVISION.to_string()),
            ("fqrn", fqrn.to_string()),
        ] {
            ins.execute(params![k, v]).map_err(sql)?;
        }
        drop(ins);
        conn.execute(
            "INSERT INTO branches (branch, parent, initial_revision) VALUES ('', NULL, 0)",
            [],
        )
        .map_err(sql)?;
        Ok(HistoryWriter {
            conn,
            path: file.to_path_buf(),
        })
    }

    /// Opens an existing history database read-write to add tags.
    ///
    /// Errors: [`Error::Sqlite`] if it is not SQLite, [`Error::InvalidHistory`] if it lacks
    /// the tables of schema 1.0 or names no schema.
    pub fn open(file: &Path) -> Result<HistoryWriter> {
        let sql = |e| Error::sqlite(file, e);
        let conn = Connection::open_with_flags(
            file,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        check_schema(&conn, file)?;
        conn.execute_batch("PRAGMA journal_mode=DELETE; BEGIN;")
            .map_err(sql)?;
        Ok(HistoryWriter {
            conn,
            path: file.to_path_buf(),
        })
    }

    fn sql(&self, e: rusqlite::Error) -> Error {
        Error::sqlite(&self.path, e)
    }

    /// Adds `tag`, replacing a tag of the same name. A branch other than `""` must exist.
    ///
    /// Errors: [`Error::InvalidHistory`] for an unknown branch, [`Error::Sqlite`].
    pub fn insert(&mut self, tag: &Tag) -> Result<()> {
        let known: bool = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM branches WHERE branch = ?1",
                [&tag.branch],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )
            .map_err(|e| self.sql(e))?;
        if !known {
            return Err(Error::InvalidHistory {
                path: self.path.clone(),
                reason: format!("tag {:?} on unknown branch {:?}", tag.name, tag.branch),
            });
        }
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO tags (name, hash, revision, timestamp, channel, \
                 description, size, branch) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    tag.name,
                    tag.root_hash.to_hex(),
                    tag.revision as i64,
                    tag.timestamp as i64,
                    tag.description,
                    tag.size as i64,
                    tag.branch
                ])
            })
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Removes the tag `name`; false if there was none.
    ///
    /// Errors: [`Error::Sqlite`].
    pub fn remove(&mut self, name: &str) -> Result<bool> {
        let n = self
            .conn
            .execute("DELETE FROM tags WHERE name = ?1", [name])
            .map_err(|e| self.sql(e))?;
        Ok(n > 0)
    }

    /// The tag `name`, if present.
    ///
    /// Errors: [`Error::Sqlite`], [`Error::InvalidHistory`] for an undecodable row.
    pub fn tag(&self, name: &str) -> Result<Option<Tag>> {
        find_tag(&self.conn, &self.path, name)
    }

    /// Sets (or with `None` removes) the `previous_revision` property: the hash of the
    /// history object this one replaces.
    ///
    /// Errors: [`Error::Sqlite`].
    pub fn set_previous_revision(&mut self, previous: Option<&ContentHash>) -> Result<()> {
        let r = match previous {
            Some(h) => self.conn.execute(
                "INSERT OR REPLACE INTO properties (key, value) VALUES ('previous_revision', ?1)",
                [h.to_hex()],
            ),
            None => self
                .conn
                .execute("DELETE FROM properties WHERE key = 'previous_revision'", []),
        };
        r.map(|_| ()).map_err(|e| self.sql(e))
    }

    /// Records a publish as the stock server does: `trunk-previous` := the old `trunk` (if
    /// any), `trunk` := `p`, plus the automatic tag `generic-YYYY-MM-DDTHH:MM:SSZ` (UTC of
    /// `p.timestamp`; if that name is taken, `-r<revision>` is appended). Returns the name
    /// of the automatic tag.
    ///
    /// Errors: [`Error::Sqlite`], [`Error::InvalidHistory`].
    pub fn record_publish(&mut self, p: &Publication) -> Result<String> {
        let tag = |name: &str, description: &str| Tag {
            name: name.to_string(),
            root_hash: p.root_catalog,
            size: p.catalog_size,
            revision: p.revision,
            timestamp: p.timestamp,
            description: description.to_string(),
            branch: String::new(),
        };
        if let Some(mut old) = self.tag(HEAD_TAG)? {
            old.name = PREVIOUS_HEAD_TAG.to_string();
            old.description = "default undo target".to_string();
            self.insert(&old)?;
        }
        self.insert(&tag(HEAD_TAG, "current HEAD"))?;
        let t = format_utc(p.timestamp);
        let mut name = format!(
            "generic-{}-{}-{}T{}:{}:{}Z",
            &t[0..4],
            &t[4..6],
            &t[6..8],
            &t[8..10],
            &t[10..12],
            &t[12..14]
        );
        if self.tag(&name)?.is_some() {
            name = format!("{name}-r{}", p.revision);
        }
        self.insert(&tag(&name, ""))?;
        Ok(name)
    }

    /// Commits and closes the file.
    ///
    /// Errors: [`Error::Sqlite`].
    pub fn finish(self) -> Result<()> {
        let path = self.path;
        self.conn
            .execute_batch("COMMIT;")
            .map_err(|e| Error::sqlite(&path, e))?;
        self.conn.close().map_err(|(_, e)| Error::sqlite(&path, e))
    }
}

/// A history database opened read-only.
pub struct HistoryReader {
    conn: Connection,
    path: PathBuf,
}

impl HistoryReader {
    /// Opens the (uncompressed) history database read-only.
    ///
    /// Errors: [`Error::Sqlite`] if it is not SQLite, [`Error::InvalidHistory`] if it lacks
    /// the schema 1.0 tables.
    pub fn open(file: &Path) -> Result<HistoryReader> {
        let conn = Connection::open_with_flags(
            file,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::sqlite(file, e))?;
        check_schema(&conn, file)?;
        Ok(HistoryReader {
            conn,
            path: file.to_path_buf(),
        })
    }

    fn property(&self, key: &str) -> Result<Option<String>> {
        property(&self.conn, &self.path, key)
    }

    /// The `fqrn` property.
    ///
    /// Errors: [`Error::Sqlite`].
    pub fn fqrn(&self) -> Result<Option<String>> {
        self.property("fqrn")
    }

    /// The `schema_revision` property (0 if absent).
    ///
    /// Errors: [`Error::Sqlite`].
    pub fn schema_revision(&self) -> Result<u64> {
        Ok(self
            .property("schema_revision")?
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }

    /// The `previous_revision` property: the history object this one replaced.
    ///
    /// Errors: [`Error::Sqlite`], [`Error::InvalidHistory`] if it is not a hash.
    pub fn previous_revision(&self) -> Result<Option<ContentHash>> {
        self.property("previous_revision")?
            .map(|v| {
                ContentHash::parse_hex(v.trim()).map_err(|_| Error::InvalidHistory {
                    path: self.path.clone(),
                    reason: format!("previous_revision {v:?}"),
                })
            })
            .transpose()
    }

    /// The tag `name`, if present.
    ///
    /// Errors: [`Error::Sqlite`], [`Error::InvalidHistory`].
    pub fn tag(&self, name: &str) -> Result<Option<Tag>> {
        find_tag(&self.conn, &self.path, name)
    }

    /// All tags, newest revision first (then by name).
    ///
    /// Errors: [`Error::Sqlite`], [`Error::InvalidHistory`].
    pub fn tags(&self) -> Result<Vec<Tag>> {
        let sql = |e| Error::sqlite(&self.path, e);
        let mut stmt = self
            .conn
            .prepare(&format!("{SELECT_TAG} ORDER BY revision DESC, name"))
            .map_err(sql)?;
        let rows = stmt.query_map([], raw_tag).map_err(sql)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(decode_tag(r.map_err(sql)?, &self.path)?);
        }
        Ok(out)
    }
}

/// Stores the history of a new publish as an `H` object and returns its hash, for the
/// manifest's `H` line (docs/format.md §7.1, §9.5).
///
/// `previous` is the manifest `H` of the revision being replaced (`None` for the first
/// publish with history: a new database for `fqrn` is created). The previous object is read
/// from `store`, verified, inflated into a temporary file in `scratch_dir`, updated with
/// [`HistoryWriter::record_publish`] and `previous_revision`, then compressed and stored.
/// Blocking (SQLite, zlib, fsync).
///
/// Errors: [`Error::Io`] (e.g. the previous object is missing), [`Error::HashMismatch`],
/// [`Error::Decompress`], [`Error::Sqlite`], [`Error::InvalidHistory`].
pub fn update_history(
    store: &LocalStore,
    scratch_dir: &Path,
    fqrn: &str,
    previous: Option<&ContentHash>,
    publication: &Publication,
) -> Result<ContentHash> {
    let dir = tempfile::Builder::new()
        .prefix("history")
        .tempdir_in(scratch_dir)
        .map_err(|e| {
            Error::io(
                format!("creating a directory in {}", scratch_dir.display()),
                e,
            )
        })?;
    let file = dir.path().join("history.db");
    let mut w = match previous {
        None => HistoryWriter::create(&file, fqrn)?,
        Some(h) => {
            let stored = store.get(h, Suffix::History)?;
            verify(&stored, h)?;
            let raw = decompress(&stored, MAX_HISTORY_SIZE)?;
            std::fs::write(&file, raw)
                .map_err(|e| Error::io(format!("writing {}", file.display()), e))?;
            HistoryWriter::open(&file)?
        }
    };
    w.set_previous_revision(previous)?;
    w.record_publish(publication)?;
    w.finish()?;
    let raw =
        std::fs::read(&file).map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
    store.put_raw(&raw, Suffix::History)
}

const SELECT_TAG: &str =
    "SELECT name, hash, revision, timestamp, description, size, branch FROM tags";

type RawTag = (
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

fn raw_tag(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawTag> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn decode_tag(t: RawTag, path: &Path) -> Result<Tag> {
    let (name, hash, revision, timestamp, description, size, branch) = t;
    let root_hash = hash
        .as_deref()
        .and_then(|h| ContentHash::parse_hex(h).ok())
        .ok_or_else(|| Error::InvalidHistory {
            path: path.to_path_buf(),
            reason: format!("tag {name:?} has no valid hash"),
        })?;
    let nonneg = |v: Option<i64>| v.unwrap_or(0).max(0) as u64;
    Ok(Tag {
        name,
        root_hash,
        size: nonneg(size),
        revision: nonneg(revision),
        timestamp: nonneg(timestamp),
        description: description.unwrap_or_default(),
        branch: branch.unwrap_or_default(),
    })
}

fn find_tag(conn: &Connection, path: &Path, name: &str) -> Result<Option<Tag>> {
    conn.prepare_cached(&format!("{SELECT_TAG} WHERE name = ?1"))
        .and_then(|mut s| s.query_row([name], raw_tag).optional())
        .map_err(|e| Error::sqlite(path, e))?
        .map(|t| decode_tag(t, path))
        .transpose()
}

fn property(conn: &Connection, path: &Path, key: &str) -> Result<Option<String>> {
    conn.query_row(
        "SELECT CAST(value AS TEXT) FROM properties WHERE key = ?1",
        [key],
        |r| r.get::<_, Option<String>>(0),
    )
    .optional()
    .map(Option::flatten)
    .map_err(|e| Error::sqlite(path, e))
}

fn check_schema(conn: &Connection, path: &Path) -> Result<()> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| Error::sqlite(path, e))?;
    for t in ["properties", "tags", "branches"] {
        if !tables.iter().any(|x| x == t) {
            return Err(Error::InvalidHistory {
                path: path.to_path_buf(),
                reason: format!("no {t} table"),
            });
        }
    }
    match property(conn, path, "schema")? {
        Some(v) if v.trim().starts_with('1') => Ok(()),
        other => Err(Error::InvalidHistory {
            path: path.to_path_buf(),
            reason: format!("schema {other:?}, expected 1.0"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashAlgorithm;

    fn h(b: &[u8]) -> ContentHash {
        ContentHash::of_bytes(HashAlgorithm::Sha1, b)
    }

    fn publication(revision: u64, timestamp: u64) -> Publication {
        Publication {
            root_catalog: h(&revision.to_le_bytes()),
            catalog_size: 28672 + revision,
            revision,
            timestamp,
        }
    }

    #[test]
    fn publishes_chain_of_history_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&dir.path().join("srv")).unwrap();
        let scratch = dir.path().join("tmp");
        std::fs::create_dir_all(&scratch).unwrap();

        let p1 = publication(1, 1_700_000_000);
        let h1 = update_history(&store, &scratch, "example.cern.ch", None, &p1).unwrap();
        assert!(store.contains(&h1, Suffix::History));
        let p2 = publication(2, 1_700_000_000); // same second: auto tag name gets -r2
        let h2 = update_history(&store, &scratch, "example.cern.ch", Some(&h1), &p2).unwrap();
        let p3 = publication(3, 1_700_003_661);
        let h3 = update_history(&store, &scratch, "example.cern.ch", Some(&h2), &p3).unwrap();
        assert_eq!(
            std::fs::read_dir(&scratch).unwrap().count(),
            0,
            "scratch cleaned"
        );

        let raw = decompress(&store.get(&h3, Suffix::History).unwrap(), 1 << 30).unwrap();
        let file = dir.path().join("h3.db");
        std::fs::write(&file, raw).unwrap();
        let r = HistoryReader::open(&file).unwrap();
        assert_eq!(r.fqrn().unwrap().as_deref(), Some("example.cern.ch"));
        assert_eq!(r.schema_revision().unwrap(), 3);
        assert_eq!(r.previous_revision().unwrap(), Some(h2));
        let names: Vec<(String, u64)> = r
            .tags()
            .unwrap()
            .into_iter()
            .map(|t| (t.name, t.revision))
            .collect();
        assert_eq!(
            names,
            vec![
                ("generic-2023-11-14T23:14:21Z".to_string(), 3),
                ("trunk".to_string(), 3),
                ("generic-2023-11-14T22:13:20Z-r2".to_string(), 2),
                ("trunk-previous".to_string(), 2),
                ("generic-2023-11-14T22:13:20Z".to_string(), 1),
            ]
        );
        let trunk = r.tag("trunk").unwrap().unwrap();
        assert_eq!(
            trunk,
            Tag {
                name: "trunk".into(),
                root_hash: p3.root_catalog,
                size: p3.catalog_size,
                revision: 3,
                timestamp: p3.timestamp,
                description: "current HEAD".into(),
                branch: String::new(),
            }
        );
        assert_eq!(r.tag("nope").unwrap(), None);

        // The exact schema of docs/format.md §9.5, as the sqlite3 CLI (and stock tools) see it.
        let conn = Connection::open(&file).unwrap();
        let ddl: Vec<String> = conn
            .prepare("SELECT sql FROM sqlite_master WHERE type = 'table' ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let want: Vec<String> = HISTORY_DDL
            .iter()
            .map(|s| s.trim_end_matches(';').to_string())
            .collect();
        assert_eq!(ddl, want);
        let branch: (String, Option<String>, i64) = conn
            .query_row(
                "SELECT branch, parent, initial_revision FROM branches",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(branch, (String::new(), None, 0));
        let channels: i64 = conn
            .query_row("SELECT COUNT(*) FROM tags WHERE channel <> 0", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(channels, 0);
        let journal: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "delete");

        // The first object has no previous_revision.
        let raw = decompress(&store.get(&h1, Suffix::History).unwrap(), 1 << 30).unwrap();
        let f1 = dir.path().join("h1.db");
        std::fs::write(&f1, raw).unwrap();
        let r1 = HistoryReader::open(&f1).unwrap();
        assert_eq!(r1.previous_revision().unwrap(), None);
        assert_eq!(r1.tags().unwrap().len(), 2);
    }

    #[test]
    fn writer_insert_remove_and_branches() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.db");
        let mut w = HistoryWriter::create(&file, "x.y").unwrap();
        let mut t = Tag {
            name: "release-1".into(),
            root_hash: h(b"a"),
            size: 1,
            revision: 5,
            timestamp: 6,
            description: "first".into(),
            branch: String::new(),
        };
        w.insert(&t).unwrap();
        t.description = "replaced".into();
        w.insert(&t).unwrap();
        assert_eq!(w.tag("release-1").unwrap().unwrap().description, "replaced");
        t.branch = "no-such-branch".into();
        assert!(matches!(w.insert(&t), Err(Error::InvalidHistory { .. })));
        assert!(w.remove("release-1").unwrap());
        assert!(!w.remove("release-1").unwrap());
        w.finish().unwrap();
        let mut w = HistoryWriter::open(&file).unwrap();
        w.record_publish(&publication(7, 0)).unwrap();
        w.finish().unwrap();
        let r = HistoryReader::open(&file).unwrap();
        assert_eq!(r.tags().unwrap().len(), 2);
        assert_eq!(
            r.tag("generic-1970-01-01T00:00:00Z")
                .unwrap()
                .unwrap()
                .revision,
            7
        );
    }

    #[test]
    fn hostile_history_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let not_sqlite = dir.path().join("junk");
        std::fs::write(&not_sqlite, b"this is not a database at all, no no no").unwrap();
        assert!(HistoryReader::open(&not_sqlite).is_err());
        assert!(HistoryWriter::open(&not_sqlite).is_err());
        // A catalog is not a history.
        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE properties (key TEXT, value TEXT);")
            .unwrap();
        assert!(matches!(
            HistoryReader::open(&other),
            Err(Error::InvalidHistory { .. })
        ));
        // A tag with a bad hash.
        let file = dir.path().join("h.db");
        HistoryWriter::create(&file, "x").unwrap().finish().unwrap();
        Connection::open(&file)
            .unwrap()
            .execute(
                "INSERT INTO tags VALUES ('t', 'zz', 1, 1, 0, '', 1, '')",
                [],
            )
            .unwrap();
        let r = HistoryReader::open(&file).unwrap();
        assert!(matches!(r.tags(), Err(Error::InvalidHistory { .. })));
        // A missing previous object.
        let store = LocalStore::open(&dir.path().join("srv")).unwrap();
        assert!(
            update_history(&store, dir.path(), "x", Some(&h(b"q")), &publication(1, 1)).is_err()
        );
    }
}
