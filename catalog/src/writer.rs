//! Writing a catalog: SQLite schema 2.5 revision 7 (CVMFS spec §6).
//!
//! All rows go in through one transaction with cached prepared statements, so a layer of
//! 100 000 entries is written quickly; [`CatalogWriter::finish`] computes the `self_`
//! counters from the rows, writes properties and statistics, commits and closes the file.
//! The database stays in rollback-journal mode (never WAL) with rowid tables (spec §6.1).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use crate::entry::{Entry, EntryKind, FLAG_CHUNKED, FLAG_EXTERNAL, S_IFMT};
use crate::error::{Error, Result};
use crate::hash::ContentHash;
use crate::path_hash::{file_name, parent_hash, path_hash};
use crate::statistics::{Counters, Statistics};

/// `schema` property written (spec §6.2).
pub const SCHEMA_VERSION: &str = "2.5";
/// `schema_revision` property written (spec §6.2).
pub const SCHEMA_REVISION: u32 = 7;

/// The DDL, statement by statement, as stock CVMFS 2.12 creates it (spec §6.3).
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

/// How an entry relates to nested catalogs (spec §6.14).
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
/// `root_prefix` (spec §6.4).
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
    /// are composed as in spec §6.6.
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
            entry.name,
            entry.symlink,
            entry.uid,
            entry.gid,
            xattr,
        ])
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Error::InvalidEntry {
                    path: path.to_string(),
                    reason: "added twice".into(),
                }
            }
            e => Error::sqlite(&self.path, e),
        })?;
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

    /// Registers a direct child catalog mounted at `mountpoint` (spec §6.12): writes the
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
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Error::InvalidEntry {
                        path: mountpoint.to_string(),
                        reason: "nested catalog registered twice".into(),
                    }
                }
                e => Error::sqlite(&self.path, e),
            })?;
        self.subtree += child.total();
        Ok(())
    }

    /// Computes the `self_` counters from the rows, writes properties (`schema`,
    /// `schema_revision`, `revision`, `last_modified`, `root_prefix` for nested catalogs,
    /// `TTL` and `previous_revision` when given) and all 24 statistics, commits and closes
    /// the file (spec §6.4, §6.13). Returns the statistics written.
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
