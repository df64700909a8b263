//! Writing a catalog: SQLite schema 2.5 revision 7 (docs/format.md §6).
//!
//! All rows go in through one transaction with cached prepared statements, so a layer of
//! 100 000 entries is written quickly; [`CatalogWriter::finish`] computes the `self_`
//! counters from the rows, writes properties and statistics, commits and closes the file.
//! The database stays in rollback-journal mode (never WAL) with rowid tables (docs/format.md §6.1).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use crate::entry::{Entry, EntryKind, FLAG_CHUNKED, FLAG_EXTERNAL, S_IFMT};
use crate::error::{Error, Result};
use crate::hash::ContentHash;
use crate::path_hash::{file_name, parent_hash, path_hash};
use crate::statistics::{Counters, Statistics};

/// `schema` property written (docs/format.md §6.2).
pub const SCHEMA_VERSION: &str = "2.5";
/// `schema_revision` property written (docs/format.md §6.2).
pub const SCHEMA_REVISION: u32 = 7;

/// The DDL, statement by statement, as stock CVMFS 2.12 creates it (docs/format.md §6.3).
pub const SCHEMA_DDL: [&str; 7] = [
    "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key));",
    "CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, parent_2 INTEGER, hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER, mtime INTEGER, mtimens INTEGER, flags INTEGER, name TEXT, symlink TEXT, uid INTEGER, gid INTEGER, xattr BLOB, CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2));",
    "CREATE INDEX idx_catalog_parent ON catalog (parent_1, parent_2);",
    "CREATE TABLE chunks (md5path_1 INTEGER, md5path_2 INTEGER, offset INTEGER, size INTEGER, hash BLOB, CONSTRAINT pk_chunks PRIMARY KEY (md5path_1, md5path_2, offset, size), FOREIGN KEY (md5path_1, md5path_2) REFERENCES catalog(md5path_1, md5path_2));",
    "CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT, size INTEGER, CONSTRAINT pk_nested_catalogs PRIMARY KEY (path));",
    "CREATE TABLE bind_mountpoints (path TEXT, sha1 TEXT, size INTEGER, CONSTRAINT pk_bind_mountpoints PRIMARY KEY (path));",
    "CREATE TABLE statistics (counter TEXT, value INTEGER, CONSTRAINT pk_statistics PRIMARY KEY (counter));",
];

const INSERT_ENTRY: &str = "INSERT INTO catalog (md5path_1, md5path_2, parent_1, parent_2, \
    hardlinks, hash, size, mode, mtime, mtimens, flags, name, symlink, uid, gid, xattr) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)";
const INSERT_CHUNK: &str =
    "INSERT INTO chunks (md5path_1, md5path_2, offset, size, hash) VALUES (?1, ?2, ?3, ?4, ?5)";

/// How an entry relates to nested catalogs (docs/format.md §6.14).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transition {
    /// An ordinary entry.
    None,
    /// The parent catalog's copy of a nested catalog's mountpoint directory (flag 2).
    NestedMountpoint,
    /// The nested catalog's copy of its own root directory (flag 32).
    NestedRoot,
}

/// Properties written by [`CatalogWriter::finish`] besides `schema`, `schema_revision` and
/// `root_prefix` (docs/format.md §6.4).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CatalogProperties {
    /// `revision`: root catalog's must equal the manifest `S`.
    pub revision: u64,
    /// `last_modified`, Unix seconds.
    pub last_modified: u64,
    /// `TTL` in seconds (root catalog), omitted when `None`.
    pub ttl: Option<u64>,
    /// `previous_revision`: hash of this catalog's previous version, omitted when `None`.
    pub previous_revision: Option<ContentHash>,
}

/// Builds one catalog file. Not `Sync`; use it from one blocking thread.
pub struct CatalogWriter {
    conn: Connection,
    path: PathBuf,
    root_prefix: String,
    subtree: Counters,
}

impl CatalogWriter {
    /// Creates a new, empty catalog at `file` (replacing any file there) for the subtree at
    /// `root_prefix` (`""` = the root catalog, else an absolute path like `/software/v1`).
    ///
    /// Errors: [`Error::Io`] if an old file cannot be removed, [`Error::Sqlite`].
    pub fn create(file: &Path, root_prefix: &str) -> Result<CatalogWriter> {
        if !(root_prefix.is_empty()
            || (root_prefix.starts_with('/') && !root_prefix.ends_with('/')))
        {
            return Err(Error::InvalidCatalog {
                path: file.to_path_buf(),
                reason: format!("root prefix {root_prefix:?} is not \"\" or an absolute path"),
            });
        }
        for f in [file.to_path_buf(), journal_path(file)] {
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing {}", f.display()), e)),
            }
        }
        let sql = |e| Error::sqlite(file, e);
        let conn = Connection::open(file).map_err(sql)?;
        conn.execute_batch("PRAGMA journal_mode=DELETE; PRAGMA foreign_keys=OFF; BEGIN;")
            .map_err(sql)?;
        for ddl in SCHEMA_DDL {
            conn.execute(ddl, []).map_err(sql)?;
        }
        Ok(CatalogWriter {
            conn,
            path: file.to_path_buf(),
            root_prefix: root_prefix.to_string(),
            subtree: Counters::default(),
        })
    }

    /// Adds the entry at absolute `path` (`""` for the repository root) with its chunks.
    ///
    /// `entry.name` must be the last component of `path`; the path must be the catalog's
    /// root prefix or lie below it; [`Transition::NestedRoot`] only for the root prefix of a
    /// nested catalog, [`Transition::NestedMountpoint`] only for directories below it. Flags
    /// are composed as in docs/format.md §6.6.
    ///
    /// Errors: [`Error::InvalidEntry`] for the violations above or those of
    /// [`Entry::validate`], [`Error::Sqlite`] (e.g. the path was already added).
    pub fn add(&mut self, path: &str, entry: &Entry, transition: Transition) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::InvalidEntry {
                path: path.to_string(),
                reason,
            })
        };
        entry.validate(path)?;
        if !(path.is_empty() || (path.starts_with('/') && !path.ends_with('/'))) {
            return bad("not an absolute path without trailing slash".into());
        }
        if file_name(path) != entry.name {
            return bad(format!(
                "name {:?} is not the last path component",
                entry.name
            ));
        }
        let is_root = path == self.root_prefix;
        let below = (self.root_prefix.is_empty() && !is_root)
            || path
                .strip_prefix(self.root_prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        if !is_root && !below {
            return bad(format!("outside the catalog at {:?}", self.root_prefix));
        }
        if is_root && entry.kind != EntryKind::Directory {
            return bad("the catalog root must be a directory".into());
        }
        match transition {
            Transition::NestedRoot if !is_root || self.root_prefix.is_empty() => {
                return bad("nested-root transition away from a nested catalog's root".into());
            }
            Transition::None if is_root && !self.root_prefix.is_empty() => {
                return bad("a nested catalog's root needs Transition::NestedRoot".into());
            }
            Transition::NestedMountpoint if is_root || entry.kind != EntryKind::Directory => {
                return bad("a nested mountpoint must be a directory below the root".into());
            }
            _ => {}
        }
        let key = path_hash(path);
        let parent = parent_hash(path);
        let hash = if entry.kind == EntryKind::Regular && entry.chunks.is_empty() {
            entry.hash.map(|h| h.digest.to_vec())
        } else {
            None
        };
        let xattr = if entry.xattrs.is_empty() {
            None
        } else {
            Some(crate::xattr::encode_xattrs(&entry.xattrs)?)
        };
        let sql = |e| Error::sqlite(&self.path, e);
        let mut stmt = self.conn.prepare_cached(INSERT_ENTRY).map_err(sql)?;
        stmt.execute(params![
            key.0,
            key.1,
            parent.0,
            parent.1,
            entry.hardlinks(),
            hash,
            entry.size_column() as i64,
            entry.mode,
            entry.mtime,
            entry.mtime_ns,
            entry.compose_flags(transition),
            RawText::of(&entry.name),
            RawText::of(&entry.symlink),
            entry.uid,
            entry.gid,
            xattr,
        ])
        .map_err(|e| duplicate_or_sqlite(&self.path, e, path, "added twice"))?;
        if !entry.chunks.is_empty() {
            let mut cstmt = self.conn.prepare_cached(INSERT_CHUNK).map_err(sql)?;
            for c in &entry.chunks {
                cstmt
                    .execute(params![
                        key.0,
                        key.1,
                        c.offset as i64,
                        c.size as i64,
                        c.hash.digest.to_vec()
                    ])
                    .map_err(sql)?;
            }
        }
        Ok(())
    }

    /// Registers a direct child catalog mounted at `mountpoint` (docs/format.md §6.12): writes the
    /// `nested_catalogs` row (plain hex hash, uncompressed `size` in bytes) and adds
    /// `child.self_ + child.subtree` to this catalog's `subtree_` counters. The mountpoint
    /// directory itself must be added with [`Transition::NestedMountpoint`].
    ///
    /// Errors: [`Error::InvalidEntry`] if the mountpoint is not below this catalog's root or
    /// was registered twice, [`Error::Sqlite`].
    pub fn add_nested(
        &mut self,
        mountpoint: &str,
        hash: &ContentHash,
        size: u64,
        child: &Statistics,
    ) -> Result<()> {
        let below = mountpoint
            .strip_prefix(self.root_prefix.as_str())
            .is_some_and(|rest| rest.starts_with('/') && !rest.ends_with('/'));
        if !below {
            return Err(Error::InvalidEntry {
                path: mountpoint.to_string(),
                reason: format!(
                    "nested catalog outside the catalog at {:?}",
                    self.root_prefix
                ),
            });
        }
        self.conn
            .prepare_cached("INSERT INTO nested_catalogs (path, sha1, size) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![mountpoint, hash.to_hex(), size as i64]))
            .map_err(|e| {
                duplicate_or_sqlite(&self.path, e, mountpoint, "nested catalog registered twice")
            })?;
        self.subtree += child.total();
        Ok(())
    }

    /// Computes the `self_` counters from the rows, writes properties (`schema`,
    /// `schema_revision`, `revision`, `last_modified`, `root_prefix` for nested catalogs,
    /// `TTL` and `previous_revision` when given) and all 24 statistics, commits and closes
    /// the file (docs/format.md §6.4, §6.13). Returns the statistics written.
    ///
    /// Errors: [`Error::InvalidCatalog`] if the root entry (the root prefix) was never added,
    /// [`Error::Sqlite`].
    pub fn finish(self, props: &CatalogProperties) -> Result<Statistics> {
        let path = self.path.clone();
        let sql = |e| Error::sqlite(&path, e);
        let root = path_hash(&self.root_prefix);
        let has_root: bool = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM catalog WHERE md5path_1 = ?1 AND md5path_2 = ?2",
                params![root.0, root.1],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )
            .map_err(sql)?;
        if !has_root {
            return Err(Error::InvalidCatalog {
                path: path.clone(),
                reason: format!("no entry for the catalog root {:?}", self.root_prefix),
            });
        }
        let self_ = self.count_rows().map_err(sql)?;
        let stats = Statistics {
            self_,
            subtree: self.subtree,
        };
        let mut properties: Vec<(&str, String)> = vec![
            ("schema", SCHEMA_VERSION.to_string()),
            ("schema_revision", SCHEMA_REVISION.to_string()),
            ("revision", props.revision.to_string()),
            ("last_modified", props.last_modified.to_string()),
        ];
        if !self.root_prefix.is_empty() {
            properties.push(("root_prefix", self.root_prefix.clone()));
        }
        if let Some(ttl) = props.ttl {
            properties.push(("TTL", ttl.to_string()));
        }
        if let Some(prev) = props.previous_revision {
            properties.push(("previous_revision", prev.to_hex()));
        }
        {
            let mut p = self
                .conn
                .prepare("INSERT INTO properties (key, value) VALUES (?1, ?2)")
                .map_err(sql)?;
            for (k, v) in &properties {
                p.execute(params![k, v]).map_err(sql)?;
            }
            let mut s = self
                .conn
                .prepare("INSERT INTO statistics (counter, value) VALUES (?1, ?2)")
                .map_err(sql)?;
            for (k, v) in stats.rows() {
                s.execute(params![k, v]).map_err(sql)?;
            }
        }
        self.conn.execute_batch("COMMIT;").map_err(sql)?;
        self.conn.close().map_err(|(_, e)| sql(e))?;
        Ok(stats)
    }

    fn count_rows(&self) -> rusqlite::Result<Counters> {
        let t = |bits: u32| format!("(mode & {S_IFMT}) = {bits}");
        let regular = t(EntryKind::Regular.type_bits());
        let special = format!(
            "({} OR {} OR {} OR {})",
            t(EntryKind::CharDevice.type_bits()),
            t(EntryKind::BlockDevice.type_bits()),
            t(EntryKind::Fifo.type_bits()),
            t(EntryKind::Socket.type_bits())
        );
        let q = format!(
            "SELECT \
               COALESCE(SUM({regular}), 0), \
               COALESCE(SUM({symlink}), 0), \
               COALESCE(SUM({special}), 0), \
               COALESCE(SUM({dir}), 0), \
               COALESCE(SUM({regular} AND (flags & {FLAG_CHUNKED}) != 0), 0), \
               COALESCE(SUM(CASE WHEN {regular} THEN size ELSE 0 END), 0), \
               COALESCE(SUM(CASE WHEN {regular} AND (flags & {FLAG_CHUNKED}) != 0 THEN size ELSE 0 END), 0), \
               COALESCE(SUM(xattr IS NOT NULL), 0), \
               COALESCE(SUM({regular} AND (flags & {FLAG_EXTERNAL}) != 0), 0), \
               COALESCE(SUM(CASE WHEN {regular} AND (flags & {FLAG_EXTERNAL}) != 0 THEN size ELSE 0 END), 0) \
             FROM catalog",
            symlink = t(EntryKind::Symlink.type_bits()),
            dir = t(EntryKind::Directory.type_bits()),
        );
        let mut c = self.conn.query_row(&q, [], |r| {
            Ok(Counters {
                regular: r.get(0)?,
                symlink: r.get(1)?,
                special: r.get(2)?,
                dir: r.get(3)?,
                chunked: r.get(4)?,
                file_size: r.get(5)?,
                chunked_size: r.get(6)?,
                xattr: r.get(7)?,
                external: r.get(8)?,
                external_file_size: r.get(9)?,
                ..Counters::default()
            })
        })?;
        c.nested = self
            .conn
            .query_row("SELECT COUNT(*) FROM nested_catalogs", [], |r| r.get(0))?;
        c.chunks = self
            .conn
            .query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get(0))?;
        Ok(c)
    }
}

fn journal_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push("-journal");
    PathBuf::from(s)
}

/// A primary-key violation (the row for `path` exists already) as [`Error::InvalidEntry`]
/// with `reason`; any other SQLite error as [`Error::Sqlite`] of the catalog file `db`.
fn duplicate_or_sqlite(db: &Path, e: rusqlite::Error, path: &str, reason: &str) -> Error {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Error::InvalidEntry {
                path: path.to_string(),
                reason: reason.to_string(),
            }
        }
        e => Error::sqlite(db, e),
    }
}

/// A name or symlink target bound as `TEXT` with the bytes it stands for
/// ([`crate::names`]): stock CVMFS stores them raw, UTF-8 or not.
struct RawText<'a>(std::borrow::Cow<'a, [u8]>);

impl<'a> RawText<'a> {
    fn of(text: &'a str) -> RawText<'a> {
        RawText(crate::names::to_bytes(text))
    }
}

impl rusqlite::ToSql for RawText<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(
            rusqlite::types::ValueRef::Text(&self.0),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Chunk, FLAG_HIDDEN};
    use crate::hash::HashAlgorithm;
    use crate::reader::CatalogReader;
    use std::collections::BTreeMap;

    fn h(text: &[u8]) -> ContentHash {
        ContentHash::of_bytes(HashAlgorithm::Sha1, text)
    }

    const MTIME: i64 = 1_700_000_000;

    /// Adds a 0755 directory named after the last component of `path`.
    fn add_dir(w: &mut CatalogWriter, path: &str, transition: Transition) {
        let name = path.rsplit('/').next().unwrap_or_default();
        w.add(
            path,
            &Entry::directory(name, 0o755, 0, 0, MTIME),
            transition,
        )
        .unwrap();
    }

    /// The first column of the one row `sql` selects.
    fn one<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> T {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// The first two columns of the one row `sql` selects.
    fn two(conn: &Connection, sql: &str) -> (i64, i64) {
        conn.query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
    }

    /// A child catalog at /software/v1 with one file and a directory with an xattr.
    fn write_child(file: &Path) -> Statistics {
        let mut w = CatalogWriter::create(file, "/software/v1").unwrap();
        let mut root = Entry::directory("v1", 0o755, 0, 0, MTIME);
        root.linkcount = 3;
        w.add("/software/v1", &root, Transition::NestedRoot)
            .unwrap();
        let mut sub = Entry::directory("share", 0o755, 0, 0, MTIME);
        sub.xattrs.insert("user.foo".into(), b"bar".to_vec());
        w.add("/software/v1/share", &sub, Transition::None).unwrap();
        let f = Entry::regular("tool", 0o755, 0, 0, MTIME, 6, h(b"tool"));
        w.add("/software/v1/tool", &f, Transition::None).unwrap();
        let stats = w
            .finish(&CatalogProperties {
                revision: 3,
                last_modified: MTIME as u64,
                ttl: None,
                previous_revision: None,
            })
            .unwrap();
        assert_eq!(stats.self_.dir, 2);
        assert_eq!(stats.self_.regular, 1);
        assert_eq!(stats.self_.xattr, 1);
        assert_eq!(stats.self_.file_size, 6);
        stats
    }

    /// Every entry kind in the root catalog, plus the mountpoint of the child.
    fn write_root(file: &Path, child: &Statistics) -> Vec<(String, Entry)> {
        let mut entries: Vec<(String, Entry)> = Vec::new();
        let mut add = |p: &str, e: Entry| entries.push((p.to_string(), e));
        let mut root = Entry::directory("", 0o755, 0, 0, MTIME);
        root.linkcount = 4;
        add("", root);
        let mut hello = Entry::regular("hello.txt", 0o644, 1000, 1000, MTIME, 6, h(b"hello"));
        hello.mtime_ns = Some(123_456_789);
        hello
            .xattrs
            .insert("security.capability".into(), vec![1, 0, 0, 2]);
        hello.xattrs.insert("user.b".into(), b"2".to_vec());
        add("/hello.txt", hello);
        let mut raw = Entry::regular("raw.bin", 0o600, 0, 0, MTIME, 9, h(b"raw"));
        raw.compressed = false;
        add("/raw.bin", raw);
        let mut rmd = Entry::regular("rmd", 0o644, 0, 0, MTIME, 1, h(b"x"));
        rmd.hash = Some(ContentHash::of_bytes(HashAlgorithm::Rmd160, b"x"));
        add("/rmd", rmd);
        let mut big = Entry::regular("big", 0o644, 0, 0, MTIME, 30, h(b"unused"));
        big.hash = None;
        big.chunks = vec![
            Chunk {
                offset: 20,
                size: 10,
                hash: h(b"c3"),
            },
            Chunk {
                offset: 0,
                size: 12,
                hash: h(b"c1"),
            },
            Chunk {
                offset: 12,
                size: 8,
                hash: h(b"c2"),
            },
        ];
        big.chunks.sort_by_key(|c| c.offset);
        add("/big", big);
        let mut a = Entry::regular("a", 0o644, 0, 0, MTIME, 6, h(b"same"));
        a.hardlink_group = 1;
        a.linkcount = 2;
        let mut b = a.clone();
        b.name = "b".into();
        add("/a", a);
        add("/b", b);
        add("/link", Entry::symlink("link", "hello.txt", 0, 0, MTIME));
        add(
            "/fifo",
            Entry::special("fifo", EntryKind::Fifo, 0o644, 0, 0, 0, MTIME),
        );
        add(
            "/sock",
            Entry::special("sock", EntryKind::Socket, 0o755, 0, 0, 0, MTIME),
        );
        add(
            "/null",
            Entry::special("null", EntryKind::CharDevice, 0o666, 0x0103, 0, 0, MTIME),
        );
        add(
            "/sda",
            Entry::special("sda", EntryKind::BlockDevice, 0o660, 0x0800, 0, 6, MTIME),
        );
        add(
            "/gone",
            Entry::special("gone", EntryKind::CharDevice, 0, 0, 0, 0, MTIME),
        );
        let mut hidden = Entry::directory(".cvmfs", 0o755, 0, 0, MTIME);
        hidden.flags = FLAG_HIDDEN;
        add("/.cvmfs", hidden);
        add(
            "/software",
            Entry::directory("software", 0o755, 0, 0, MTIME),
        );
        let mut mp = Entry::directory("v1", 0o755, 0, 0, MTIME);
        mp.linkcount = 3;
        add("/software/v1", mp);

        let mut w = CatalogWriter::create(file, "").unwrap();
        for (p, e) in &entries {
            let t = if p == "/software/v1" {
                Transition::NestedMountpoint
            } else {
                Transition::None
            };
            w.add(p, e, t).unwrap();
        }
        let child_hash = h(b"child catalog");
        w.add_nested("/software/v1", &child_hash, 4096, child)
            .unwrap();
        let stats = w
            .finish(&CatalogProperties {
                revision: 7,
                last_modified: MTIME as u64 + 5,
                ttl: Some(240),
                previous_revision: Some(h(b"previous")),
            })
            .unwrap();
        assert_eq!(stats.self_.regular, 6);
        assert_eq!(stats.self_.symlink, 1);
        assert_eq!(stats.self_.special, 5);
        assert_eq!(stats.self_.dir, 4);
        assert_eq!(stats.self_.nested, 1);
        assert_eq!(stats.self_.chunked, 1);
        assert_eq!(stats.self_.chunks, 3);
        assert_eq!(stats.self_.file_size, 6 + 9 + 1 + 30 + 6 + 6);
        assert_eq!(stats.self_.chunked_size, 30);
        assert_eq!(stats.self_.xattr, 1);
        assert_eq!(stats.subtree, child.total());
        entries
    }

    #[test]
    fn round_trip_every_kind_and_nested() {
        let dir = tempfile::tempdir().unwrap();
        let child_file = dir.path().join("child.db");
        let root_file = dir.path().join("root.db");
        let child = write_child(&child_file);
        let entries = write_root(&root_file, &child);
        assert!(!dir.path().join("root.db-journal").exists());

        let r = CatalogReader::open(&root_file).unwrap();
        assert_eq!(r.root_prefix(), "");
        assert_eq!(r.revision(), 7);
        assert_eq!(r.ttl(), Some(240));
        assert_eq!(r.last_modified(), MTIME as u64 + 5);
        assert_eq!(r.schema_revision(), 7);
        for (path, written) in &entries {
            let got = r.lookup(path).unwrap().unwrap_or_else(|| panic!("{path}"));
            let mut expect = written.clone();
            let t = if path == "/software/v1" {
                Transition::NestedMountpoint
            } else {
                Transition::None
            };
            expect.flags = written.compose_flags(t);
            expect.rowid = got.rowid;
            expect.chunks = Vec::new();
            if path == "/big" {
                assert!(got.is_chunked());
            }
            assert_eq!(got, expect, "{path}");
        }
        assert_eq!(r.lookup("/nope").unwrap(), None);
        let root = r.lookup("").unwrap().unwrap();
        assert_eq!(root.flags, 1);
        assert_eq!(r.lookup("/software/v1").unwrap().unwrap().flags, 3);
        assert!(
            r.lookup("/software/v1")
                .unwrap()
                .unwrap()
                .is_nested_mountpoint()
        );
        assert!(r.lookup("/.cvmfs").unwrap().unwrap().is_hidden());
        assert_eq!(r.lookup("/null").unwrap().unwrap().rdev, 0x0103);
        assert_eq!(r.lookup("/null").unwrap().unwrap().size, 0);
        assert_eq!(r.lookup("/raw.bin").unwrap().unwrap().flags, 2052);
        assert_eq!(r.lookup("/rmd").unwrap().unwrap().flags, 260);
        assert_eq!(r.lookup("/big").unwrap().unwrap().flags, 68);

        let names: Vec<String> = r.list("").unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                ".cvmfs",
                "a",
                "b",
                "big",
                "fifo",
                "gone",
                "hello.txt",
                "link",
                "null",
                "raw.bin",
                "rmd",
                "sda",
                "sock",
                "software"
            ]
        );
        assert_eq!(r.list("/software").unwrap().len(), 1);
        assert!(r.list("/software/v1").unwrap().is_empty());

        let chunks = r.chunks("/big").unwrap();
        assert_eq!(
            chunks
                .iter()
                .map(|c| (c.offset, c.size))
                .collect::<Vec<_>>(),
            [(0, 12), (12, 8), (20, 10)]
        );
        assert_eq!(chunks[0].hash, h(b"c1"));
        assert!(r.chunks("/hello.txt").unwrap().is_empty());

        let nested = r.nested_catalogs().unwrap();
        assert_eq!(nested.len(), 1);
        assert_eq!(nested[0].path, "/software/v1");
        assert_eq!(nested[0].hash, h(b"child catalog"));
        assert_eq!(nested[0].size, 4096);

        let stats = r.statistics().unwrap();
        assert_eq!(stats.subtree, child.total());
        assert_eq!(stats.self_.regular, 6);

        let c = CatalogReader::open(&child_file).unwrap();
        assert_eq!(c.root_prefix(), "/software/v1");
        assert_eq!(c.ttl(), None);
        let croot = c.lookup("/software/v1").unwrap().unwrap();
        assert_eq!(croot.flags, 33);
        assert!(croot.is_nested_root());
        let share = c.lookup("/software/v1/share").unwrap().unwrap();
        assert_eq!(
            share.xattrs.get("user.foo").map(Vec::as_slice),
            Some(&b"bar"[..])
        );
        assert_eq!(c.list("/software/v1").unwrap().len(), 2);
        assert_eq!(c.statistics().unwrap(), child);
    }

    /// Raw SQL view of what was written: column types, properties, statistics, header.
    #[test]
    fn stored_values_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let child = write_child(&dir.path().join("c.db"));
        let file = dir.path().join("root.db");
        write_root(&file, &child);
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(&bytes[..16], b"SQLite format 3\0");
        assert_eq!((bytes[18], bytes[19]), (1, 1), "rollback journal, not WAL");

        let conn = Connection::open(&file).unwrap();
        assert_eq!(one::<String>(&conn, "PRAGMA journal_mode"), "delete");
        let props: BTreeMap<String, String> = conn
            .prepare("SELECT key, value FROM properties")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(props["schema"], "2.5");
        assert_eq!(props["schema_revision"], "7");
        assert_eq!(props["revision"], "7");
        assert_eq!(props["TTL"], "240");
        assert_eq!(props["previous_revision"], h(b"previous").to_hex());
        assert!(!props.contains_key("root_prefix"));
        let n: i64 = one(&conn, "SELECT COUNT(*) FROM statistics");
        assert_eq!(n, 24);
        // docs/format.md §11.1 / §11.2 row for a file: hash blob, size, flags, mode, hardlinks.
        let row: (i64, i64, i64, i64, Vec<u8>, i64, i64, String) = conn
            .query_row(
                "SELECT md5path_1, md5path_2, parent_1, parent_2, hash, flags, hardlinks, symlink \
                 FROM catalog WHERE name = 'hello.txt'",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                    ))
                },
            )
            .unwrap();
        let key = path_hash("/hello.txt");
        assert_eq!((row.0, row.1), (key.0, key.1));
        assert_eq!((row.2, row.3), (338333539836370388, 9098107892288553193));
        assert_eq!(row.4, h(b"hello").digest.to_vec());
        assert_eq!((row.5, row.6, row.7.as_str()), (4, 1, ""));
        let root_parent: (i64, i64) = two(
            &conn,
            "SELECT parent_1, parent_2 FROM catalog WHERE name = ''",
        );
        assert_eq!(root_parent, (0, 0));
        let nulls: i64 = one(
            &conn,
            "SELECT COUNT(*) FROM catalog WHERE name IS NULL OR symlink IS NULL",
        );
        assert_eq!(nulls, 0);
        let hl: i64 = one(&conn, "SELECT hardlinks FROM catalog WHERE name = 'a'");
        assert_eq!(hl, (1 << 32) | 2);
        let dev: (i64, i64) = two(&conn, "SELECT size, flags FROM catalog WHERE name = 'sda'");
        assert_eq!(dev, (0x0800, 20));
        let no_mtimens: i64 = one(&conn, "SELECT COUNT(*) FROM catalog WHERE mtimens IS NULL");
        assert_eq!(no_mtimens, 15, "only hello.txt records nanoseconds");
    }

    /// `sqlite3 .schema` of a written catalog shows exactly the tables of docs/format.md §6.3.
    #[test]
    fn sqlite3_cli_schema_matches_spec() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("root.db");
        let mut w = CatalogWriter::create(&file, "").unwrap();
        add_dir(&mut w, "", Transition::None);
        w.finish(&CatalogProperties::default()).unwrap();
        let out = crate::test_support::run_tool(
            "sqlite3",
            &[file.as_os_str(), std::ffi::OsStr::new(".schema")],
        );
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let got: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(got, SCHEMA_DDL.to_vec());
        // And the table/column structure equals the spec's DDL, compared via SQLite itself.
        let spec = Connection::open_in_memory().unwrap();
        spec.execute_batch(SPEC_6_3_DDL).unwrap();
        let ours = Connection::open(&file).unwrap();
        let describe = |c: &Connection| -> Vec<(String, String, String, i64)> {
            let mut out = Vec::new();
            for t in [
                "properties",
                "catalog",
                "chunks",
                "nested_catalogs",
                "bind_mountpoints",
                "statistics",
            ] {
                let mut s = c.prepare(&format!("PRAGMA table_info({t})")).unwrap();
                let cols = s
                    .query_map([], |r| Ok((t.to_string(), r.get(1)?, r.get(2)?, r.get(5)?)))
                    .unwrap();
                out.extend(cols.map(|r| r.unwrap()));
            }
            out
        };
        assert_eq!(describe(&ours), describe(&spec));
        let idx = |c: &Connection| -> String {
            one(
                c,
                "SELECT sql FROM sqlite_master WHERE name = 'idx_catalog_parent'",
            )
        };
        assert_eq!(idx(&ours), idx(&spec));
    }

    /// The DDL as printed in docs/format.md §6.3, comments included.
    const SPEC_6_3_DDL: &str = "
CREATE TABLE properties (key TEXT, value TEXT,
  CONSTRAINT pk_properties PRIMARY KEY (key));
CREATE TABLE catalog (
  md5path_1 INTEGER, md5path_2 INTEGER,      -- path hash halves (6.5)
  parent_1  INTEGER, parent_2  INTEGER,      -- parent-path hash halves
  hardlinks INTEGER,                         -- (group << 32) | linkcount  (6.8)
  hash      BLOB,                            -- raw digest or NULL          (2.5)
  size      INTEGER,
  mode      INTEGER,                         -- full st_mode incl. type bits
  mtime     INTEGER,                         -- seconds since epoch
  mtimens   INTEGER,                         -- nanosecond part or NULL (rev 7)
  flags     INTEGER,                         -- (6.6)
  name      TEXT,                            -- last path component, NOT NULL in practice
  symlink   TEXT,                            -- link target or '' , NOT NULL in practice
  uid       INTEGER,
  gid       INTEGER,
  xattr     BLOB,                            -- (6.9) or NULL
  CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2));
CREATE INDEX idx_catalog_parent ON catalog (parent_1, parent_2);
CREATE TABLE chunks (
  md5path_1 INTEGER, md5path_2 INTEGER, offset INTEGER, size INTEGER, hash BLOB,
  CONSTRAINT pk_chunks PRIMARY KEY (md5path_1, md5path_2, offset, size),
  FOREIGN KEY (md5path_1, md5path_2) REFERENCES catalog(md5path_1, md5path_2));
CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT, size INTEGER,
  CONSTRAINT pk_nested_catalogs PRIMARY KEY (path));
CREATE TABLE bind_mountpoints (path TEXT, sha1 TEXT, size INTEGER,
  CONSTRAINT pk_bind_mountpoints PRIMARY KEY (path));
CREATE TABLE statistics (counter TEXT, value INTEGER,
  CONSTRAINT pk_statistics PRIMARY KEY (counter));
";

    #[test]
    fn rejects_inconsistent_input() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = CatalogWriter::create(&dir.path().join("n.db"), "/n").unwrap();
        let d = Entry::directory("n", 0o755, 0, 0, MTIME);
        // The nested root needs its transition.
        assert!(w.add("/n", &d, Transition::None).is_err());
        w.add("/n", &d, Transition::NestedRoot).unwrap();
        // Twice.
        assert!(matches!(
            w.add("/n", &d, Transition::NestedRoot),
            Err(Error::InvalidEntry { .. })
        ));
        // Outside the subtree, wrong name, trailing slash.
        let f = Entry::regular("x", 0o644, 0, 0, MTIME, 1, h(b"x"));
        assert!(w.add("/other/x", &f, Transition::None).is_err());
        assert!(w.add("/nx", &f, Transition::None).is_err());
        assert!(w.add("/n/y", &f, Transition::None).is_err());
        assert!(w.add("/n/x/", &f, Transition::None).is_err());
        // A file cannot be a mountpoint.
        assert!(w.add("/n/x", &f, Transition::NestedMountpoint).is_err());
        w.add("/n/x", &f, Transition::None).unwrap();
        assert!(
            w.add_nested("/elsewhere", &h(b"c"), 1, &Statistics::default())
                .is_err()
        );
        w.finish(&CatalogProperties::default()).unwrap();

        // A catalog without its root entry is refused.
        let w = CatalogWriter::create(&dir.path().join("e.db"), "").unwrap();
        assert!(matches!(
            w.finish(&CatalogProperties::default()),
            Err(Error::InvalidCatalog { .. })
        ));
    }

    #[test]
    fn names_that_are_not_utf8_are_stored_as_their_bytes() {
        use crate::names::from_bytes;
        use crate::path_hash::PathHash;
        use md5::Digest;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("latin1.db");
        let mut w = CatalogWriter::create(&file, "").unwrap();
        add_dir(&mut w, "", Transition::None);
        let name = from_bytes(b"caf\xe9").into_owned();
        let target = from_bytes(b"r\xe9f").into_owned();
        let e = Entry::regular(&name, 0o644, 0, 0, MTIME, 1, h(b"x"));
        w.add(&format!("/{name}"), &e, Transition::None).unwrap();
        let link = Entry::symlink("l", &target, 0, 0, MTIME);
        w.add("/l", &link, Transition::None).unwrap();
        w.finish(&CatalogProperties::default()).unwrap();
        // As stock CVMFS stores them: raw bytes in the TEXT columns, the path key over the
        // raw path, the symlink size in bytes.
        let conn = Connection::open(&file).unwrap();
        let raw: Vec<u8> = conn
            .query_row(
                "SELECT CAST(name AS BLOB), typeof(name), md5path_1, md5path_2 FROM catalog \
                 WHERE size = 1",
                [],
                |r| {
                    let key = PathHash(r.get(2)?, r.get(3)?);
                    assert_eq!(r.get::<_, String>(1)?, "text");
                    assert_eq!(
                        key,
                        PathHash::from_md5(md5::Md5::digest(b"/caf\xe9").into())
                    );
                    r.get(0)
                },
            )
            .unwrap();
        assert_eq!(raw, b"caf\xe9");
        let (size, target_bytes): (i64, Vec<u8>) = conn
            .query_row(
                "SELECT size, CAST(symlink AS BLOB) FROM catalog WHERE name = 'l'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((size, target_bytes.as_slice()), (3, &b"r\xe9f"[..]));
        // And back.
        let r = CatalogReader::open(&file).unwrap();
        let found = r.lookup(&format!("/{name}")).unwrap().unwrap();
        assert_eq!(found.name, name);
        assert_eq!(r.lookup("/l").unwrap().unwrap().symlink, target);
        let mut listed: Vec<String> = r.list("").unwrap().into_iter().map(|e| e.name).collect();
        listed.sort();
        assert_eq!(listed, vec![name, "l".to_owned()]);
    }

    #[test]
    fn many_entries_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.db");
        let start = std::time::Instant::now();
        let mut w = CatalogWriter::create(&file, "").unwrap();
        add_dir(&mut w, "", Transition::None);
        for i in 0..20_000 {
            let name = format!("f{i}");
            let e = Entry::regular(&name, 0o644, 0, 0, MTIME, i, h(name.as_bytes()));
            w.add(&format!("/{name}"), &e, Transition::None).unwrap();
        }
        let stats = w.finish(&CatalogProperties::default()).unwrap();
        assert_eq!(stats.self_.regular, 20_000);
        assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
        let r = CatalogReader::open(&file).unwrap();
        assert_eq!(r.list("").unwrap().len(), 20_000);
        assert_eq!(r.lookup("/f777").unwrap().unwrap().size, 777);
    }

    /// Counts a catalog's own rows by walking it with the reader (independent of the
    /// writer's SQL), as docs/format.md §6.13 defines `self_*`.
    fn count_by_walking(r: &CatalogReader) -> Counters {
        fn walk(r: &CatalogReader, path: &str, c: &mut Counters) {
            for e in r.list(path).unwrap() {
                let p = format!("{path}/{}", e.name);
                match e.kind {
                    EntryKind::Directory => {
                        c.dir += 1;
                        if !e.is_nested_mountpoint() {
                            walk(r, &p, c);
                        }
                    }
                    EntryKind::Regular => {
                        c.regular += 1;
                        c.file_size += e.size as i64;
                        if e.is_chunked() {
                            c.chunked += 1;
                            c.chunked_size += e.size as i64;
                            c.chunks += r.chunks(&p).unwrap().len() as i64;
                        }
                    }
                    EntryKind::Symlink => c.symlink += 1,
                    _ => c.special += 1,
                }
                if !e.xattrs.is_empty() {
                    c.xattr += 1;
                }
            }
        }
        let mut c = Counters::default();
        let root = r.lookup(r.root_prefix()).unwrap().unwrap();
        c.dir += 1;
        if !root.xattrs.is_empty() {
            c.xattr += 1;
        }
        walk(r, r.root_prefix(), &mut c);
        c.nested = r.nested_catalogs().unwrap().len() as i64;
        c
    }

    #[test]
    fn statistics_add_up_across_nesting_levels() {
        // root "" → /a (nested) → /a/b (nested), and root → /c (nested); docs/format.md §6.13.
        let dir = tempfile::tempdir().unwrap();
        let props = |revision| CatalogProperties {
            revision,
            last_modified: MTIME as u64,
            ttl: None,
            previous_revision: None,
        };
        let chunked = |name: &str| {
            let mut e = Entry::regular(name, 0o644, 0, 0, MTIME, 30, h(b"x"));
            e.hash = None;
            e.chunks = vec![
                Chunk {
                    offset: 0,
                    size: 10,
                    hash: h(b"c1"),
                },
                Chunk {
                    offset: 10,
                    size: 20,
                    hash: h(b"c2"),
                },
            ];
            e
        };
        // Grandchild /a/b.
        let fb = dir.path().join("b.db");
        let mut w = CatalogWriter::create(&fb, "/a/b").unwrap();
        add_dir(&mut w, "/a/b", Transition::NestedRoot);
        w.add("/a/b/big", &chunked("big"), Transition::None)
            .unwrap();
        w.add(
            "/a/b/l",
            &Entry::symlink("l", "big", 0, 0, MTIME),
            Transition::None,
        )
        .unwrap();
        let sb = w.finish(&props(1)).unwrap();
        assert_eq!(sb.subtree, Counters::default());
        // Child /a with the mountpoint /a/b.
        let fa = dir.path().join("a.db");
        let mut w = CatalogWriter::create(&fa, "/a").unwrap();
        add_dir(&mut w, "/a", Transition::NestedRoot);
        add_dir(&mut w, "/a/b", Transition::NestedMountpoint);
        let mut fifo = Entry::special("p", EntryKind::Fifo, 0o600, 0, 0, 0, MTIME);
        fifo.xattrs.insert("user.k".into(), b"v".to_vec());
        w.add("/a/p", &fifo, Transition::None).unwrap();
        w.add(
            "/a/f",
            &Entry::regular("f", 0o644, 0, 0, MTIME, 5, h(b"f")),
            Transition::None,
        )
        .unwrap();
        w.add_nested("/a/b", &h(b"cat-b"), 4096, &sb).unwrap();
        let sa = w.finish(&props(1)).unwrap();
        // Sibling /c.
        let fc = dir.path().join("c.db");
        let mut w = CatalogWriter::create(&fc, "/c").unwrap();
        add_dir(&mut w, "/c", Transition::NestedRoot);
        w.add(
            "/c/g",
            &Entry::regular("g", 0o644, 0, 0, MTIME, 7, h(b"g")),
            Transition::None,
        )
        .unwrap();
        let sc = w.finish(&props(1)).unwrap();
        // Root.
        let fr = dir.path().join("root.db");
        let mut w = CatalogWriter::create(&fr, "").unwrap();
        add_dir(&mut w, "", Transition::None);
        for m in ["a", "c"] {
            add_dir(&mut w, &format!("/{m}"), Transition::NestedMountpoint);
        }
        w.add("/top", &chunked("top"), Transition::None).unwrap();
        w.add_nested("/a", &h(b"cat-a"), 8192, &sa).unwrap();
        w.add_nested("/c", &h(b"cat-c"), 4096, &sc).unwrap();
        let prev = h(b"previous root");
        let sr = w
            .finish(&CatalogProperties {
                revision: 9,
                last_modified: MTIME as u64,
                ttl: Some(300),
                previous_revision: Some(prev),
            })
            .unwrap();

        let files = [(&fr, sr), (&fa, sa), (&fc, sc), (&fb, sb)];
        for (f, written) in &files {
            let r = CatalogReader::open(f).unwrap();
            let read = r.statistics().unwrap();
            assert_eq!(&read, written, "{}: statistics read back", f.display());
            assert_eq!(read.self_, count_by_walking(&r), "{}: self_", f.display());
        }
        // subtree = Σ over every descendant catalog of its self_ (all levels).
        assert_eq!(sb.subtree, Counters::default());
        assert_eq!(sa.subtree, sb.self_);
        assert_eq!(sc.subtree, Counters::default());
        assert_eq!(sr.subtree, sa.self_ + sb.self_ + sc.self_);
        // A few absolute numbers: 7 directory rows in the tree (root, /a, /c twice as
        // mountpoint and root, /a/b twice), 2 chunked files of 2 chunks each.
        let total = sr.total();
        assert_eq!(total.dir, 1 + 2 + 2 + 2);
        assert_eq!(
            (total.chunked, total.chunks, total.chunked_size),
            (2, 4, 60)
        );
        assert_eq!((total.regular, total.file_size), (4, 30 + 30 + 5 + 7));
        assert_eq!((total.symlink, total.special, total.xattr), (1, 1, 1));
        assert_eq!(total.nested, 3);
        // TTL and previous_revision properties (docs/format.md §6.4).
        let r = CatalogReader::open(&fr).unwrap();
        assert_eq!((r.ttl(), r.revision()), (Some(300), 9));
        let conn = Connection::open(&fr).unwrap();
        let p: String = one(
            &conn,
            "SELECT value FROM properties WHERE key = 'previous_revision'",
        );
        assert_eq!(p, prev.to_hex());
        let n: i64 = one(&conn, "SELECT COUNT(*) FROM statistics");
        assert_eq!(n, 24);
    }
}
