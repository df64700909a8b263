//! Reading a catalog read-only (CVMFS spec §6), including stock catalogs of older schema
//! revisions where that is cheap (no `mtimens` before rev 7, no `xattr` before rev 2, no
//! `nested_catalogs.size` before rev 1).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};

use crate::entry::{Chunk, Entry, EntryKind, FLAG_COMPRESSION_MASK, FLAG_HASH_MASK};
use crate::error::{Error, Result};
use crate::hash::{ContentHash, HashAlgorithm};
use crate::path_hash::path_hash;
use crate::statistics::Statistics;
use crate::xattr::decode_xattrs;

/// A child catalog listed in `nested_catalogs` (spec §6.12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NestedCatalogRef {
    /// Absolute mountpoint path, e.g. `/software/v1`.
    pub path: String,
    /// Hash of the child catalog object (suffix `C`).
    pub hash: ContentHash,
    /// Uncompressed size of the child catalog in bytes (0 if unknown).
    pub size: u64,
}

/// A catalog opened read-only. `Send`, not `Sync`: wrap it in a `Mutex` to share.
pub struct CatalogReader {
    conn: Connection,
    path: PathBuf,
    root_prefix: String,
    revision: u64,
    ttl: Option<u64>,
    last_modified: u64,
    schema_revision: u64,
    select: String,
    nested_has_size: bool,
}

impl std::fmt::Debug for CatalogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogReader")
            .field("path", &self.path)
            .field("root_prefix", &self.root_prefix)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl CatalogReader {
    /// Opens the (uncompressed) catalog file read-only and immutable.
    ///
    /// Errors: [`Error::Sqlite`] if it is not an SQLite database, [`Error::InvalidCatalog`]
    /// if the `catalog` table is missing or the schema is older than 2.4.
    pub fn open(file: &Path) -> Result<CatalogReader> {
        let sql = |e| Error::sqlite(file, e);
        let uri = format!("file:{}?immutable=1", uri_escape(&file.to_string_lossy()));
        let conn = Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(sql)?;
        let invalid = |reason: String| Error::InvalidCatalog {
            path: file.to_path_buf(),
            reason,
        };
        let columns = table_columns(&conn, "catalog").map_err(sql)?;
        if columns.is_empty() {
            return Err(invalid("no catalog table".into()));
        }
        let prop = |key: &str| -> Result<Option<String>> {
            conn.query_row(
                "SELECT CAST(value AS TEXT) FROM properties WHERE key = ?1",
                [key],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(sql)
        };
        let num = |key: &str| -> Result<Option<u64>> {
            match prop(key)? {
                None => Ok(None),
                Some(v) => parse_number(&v)
                    .map(Some)
                    .ok_or_else(|| invalid(format!("property {key} = {v:?} is not a number"))),
            }
        };
        let schema: f64 = match prop("schema")? {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| invalid(format!("schema {v:?}")))?,
            None => 1.0,
        };
        if schema < 2.4 - 0.0005 {
            return Err(invalid(format!("schema {schema} is too old")));
        }
        let root_prefix = prop("root_prefix")?.unwrap_or_default();
        let revision = num("revision")?.unwrap_or(0);
        let ttl = num("TTL")?;
        let last_modified = num("last_modified")?.unwrap_or(0);
        let schema_revision = num("schema_revision")?.unwrap_or(0);
        let has = |c: &str| columns.iter().any(|x| x == c);
        for required in [
            "md5path_1",
            "md5path_2",
            "parent_1",
            "parent_2",
            "hardlinks",
            "hash",
            "size",
            "mode",
            "mtime",
            "flags",
            "name",
            "symlink",
            "uid",
            "gid",
        ] {
            if !has(required) {
                return Err(invalid(format!("catalog table lacks column {required}")));
            }
        }
        let select = format!(
            "SELECT name, mode, size, flags, hash, hardlinks, uid, gid, mtime, {}, symlink, {}, \
             rowid FROM catalog",
            if has("mtimens") { "mtimens" } else { "NULL" },
            if has("xattr") { "xattr" } else { "NULL" },
        );
        let nested_has_size = table_columns(&conn, "nested_catalogs")
            .map_err(sql)?
            .iter()
            .any(|c| c == "size");
        Ok(CatalogReader {
            conn,
            path: file.to_path_buf(),
            root_prefix,
            revision,
            ttl,
            last_modified,
            schema_revision,
            select,
            nested_has_size,
        })
    }

    /// `root_prefix` property: `""` for the root catalog, else the mountpoint path.
    pub fn root_prefix(&self) -> &str {
        &self.root_prefix
    }

    /// `revision` property (0 if absent).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// `TTL` property in seconds, if present (clients default to 240).
    pub fn ttl(&self) -> Option<u64> {
        self.ttl
    }

    /// `last_modified` property, Unix seconds (0 if absent).
    pub fn last_modified(&self) -> u64 {
        self.last_modified
    }

    /// `schema_revision` property (0 if absent).
    pub fn schema_revision(&self) -> u64 {
        self.schema_revision
    }

    /// The entry at absolute `path` (`""` = repository root), if this catalog has a row for
    /// it. Nested mountpoints are found in the parent (flag 2) as well as in the child.
    ///
    /// Errors: [`Error::Sqlite`], [`Error::InvalidCatalog`] for rows that cannot be decoded.
    pub fn lookup(&self, path: &str) -> Result<Option<Entry>> {
        let key = path_hash(path);
        let sql = format!("{} WHERE md5path_1 = ?1 AND md5path_2 = ?2", self.select);
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.sql(e))?;
        let row = stmt
            .query_row(params![key.0, key.1], raw_row)
            .optional()
            .map_err(|e| self.sql(e))?;
        row.map(|r| self.decode(r)).transpose()
    }

    /// The children of directory `dir` stored in this catalog, hidden ones included, sorted
    /// by name. Empty for a nested mountpoint in the parent catalog.
    ///
    /// Errors: [`Error::Sqlite`], [`Error::InvalidCatalog`].
    pub fn list(&self, dir: &str) -> Result<Vec<Entry>> {
        let key = path_hash(dir);
        let sql = format!(
            "{} WHERE parent_1 = ?1 AND parent_2 = ?2 ORDER BY name",
            self.select
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![key.0, key.1], raw_row)
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for r in rows {
            let r = r.map_err(|e| self.sql(e))?;
            // The root's parent key is (0,0), never MD5 of anything, so it cannot show up.
            out.push(self.decode(r)?);
        }
        Ok(out)
    }

    /// The chunks of the file at `path`, ordered by offset (spec §6.11); empty if the file
    /// is not chunked or not in this catalog. The hash algorithm comes from the file's flags.
    ///
    /// Errors: [`Error::Sqlite`], [`Error::InvalidCatalog`].
    pub fn chunks(&self, path: &str) -> Result<Vec<Chunk>> {
        let key = path_hash(path);
        let flags: Option<i64> = self
            .conn
            .prepare_cached("SELECT flags FROM catalog WHERE md5path_1 = ?1 AND md5path_2 = ?2")
            .and_then(|mut s| s.query_row(params![key.0, key.1], |r| r.get(0)).optional())
            .map_err(|e| self.sql(e))?;
        let Some(flags) = flags else {
            return Ok(Vec::new());
        };
        let algorithm = self.algorithm(flags as u32, path)?;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT offset, size, hash FROM chunks WHERE md5path_1 = ?1 AND md5path_2 = ?2 \
                 ORDER BY offset",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![key.0, key.1], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for r in rows {
            let (offset, size, digest) = r.map_err(|e| self.sql(e))?;
            let hash = ContentHash::from_digest(algorithm, &digest)
                .map_err(|_| self.invalid(format!("chunk of {path:?} has a bad hash")))?;
            out.push(Chunk {
                offset: offset as u64,
                size: size as u64,
                hash,
            });
        }
        Ok(out)
    }

    /// The direct child catalogs (spec §6.12), sorted by path.
    ///
    /// Errors: [`Error::Sqlite`], [`Error::InvalidCatalog`] for a row without a valid hash.
    pub fn nested_catalogs(&self) -> Result<Vec<NestedCatalogRef>> {
        let sql = if self.nested_has_size {
            "SELECT path, sha1, size FROM nested_catalogs ORDER BY path"
        } else {
            "SELECT path, sha1, 0 FROM nested_catalogs ORDER BY path"
        };
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for r in rows {
            let (path, hash, size) = r.map_err(|e| self.sql(e))?;
            let hash = hash
                .as_deref()
                .and_then(|h| ContentHash::parse_hex(h).ok())
                .ok_or_else(|| {
                    self.invalid(format!("nested catalog {path:?} has no valid hash"))
                })?;
            out.push(NestedCatalogRef {
                path,
                hash,
                size: size.unwrap_or(0).max(0) as u64,
            });
        }
        Ok(out)
    }

    /// The `statistics` counters; counters missing in older catalogs read as 0.
    ///
    /// Errors: [`Error::Sqlite`].
    pub fn statistics(&self) -> Result<Statistics> {
        let mut stats = Statistics::default();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT counter, value FROM statistics")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.sql(e))?;
        for r in rows {
            let (k, v) = r.map_err(|e| self.sql(e))?;
            stats.set(&k, v);
        }
        Ok(stats)
    }

    fn sql(&self, e: rusqlite::Error) -> Error {
        Error::sqlite(&self.path, e)
    }

    fn invalid(&self, reason: String) -> Error {
        Error::InvalidCatalog {
            path: self.path.clone(),
            reason,
        }
    }

    fn algorithm(&self, flags: u32, name: &str) -> Result<HashAlgorithm> {
        HashAlgorithm::from_flag_code((flags & FLAG_HASH_MASK) >> 8)
            .ok_or_else(|| self.invalid(format!("{name:?} has an unknown hash algorithm")))
    }

    fn decode(&self, r: RawRow) -> Result<Entry> {
        let mode = r.mode as u32;
        let flags = r.flags as u32;
        let kind = EntryKind::from_mode(mode)
            .ok_or_else(|| self.invalid(format!("{:?} has unknown file type {mode:o}", r.name)))?;
        let hash = match r.hash {
            Some(d) if !d.is_empty() && d.iter().any(|b| *b != 0) => {
                let algorithm = self.algorithm(flags, &r.name)?;
                Some(
                    ContentHash::from_digest(algorithm, &d)
                        .map_err(|_| self.invalid(format!("{:?} has a bad hash", r.name)))?,
                )
            }
            _ => None,
        };
        let xattrs = match r.xattr {
            Some(blob) => {
                decode_xattrs(&blob).map_err(|e| self.invalid(format!("{:?}: {e}", r.name)))?
            }
            None => Default::default(),
        };
        let hardlinks = r.hardlinks as u64;
        let (size, rdev) = if kind.is_device() {
            (0, r.size as u64)
        } else {
            (r.size as u64, 0)
        };
        Ok(Entry {
            name: r.name,
            kind,
            mode,
            size,
            rdev,
            uid: r.uid as u32,
            gid: r.gid as u32,
            mtime: r.mtime,
            mtime_ns: r.mtimens.map(|n| n as u32),
            hash,
            compressed: kind != EntryKind::Regular || (flags & FLAG_COMPRESSION_MASK) == 0,
            symlink: r.symlink,
            linkcount: (hardlinks & 0xffff_ffff) as u32,
            hardlink_group: (hardlinks >> 32) as u32,
            xattrs,
            chunks: Vec::new(),
            flags,
            rowid: r.rowid,
        })
    }
}

/// A catalog row before decoding.
struct RawRow {
    name: String,
    mode: i64,
    size: i64,
    flags: i64,
    hash: Option<Vec<u8>>,
    hardlinks: i64,
    uid: i64,
    gid: i64,
    mtime: i64,
    mtimens: Option<i64>,
    symlink: String,
    xattr: Option<Vec<u8>>,
    rowid: i64,
}

fn raw_row(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        name: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
        mode: r.get(1)?,
        size: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
        flags: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
        hash: r.get(4)?,
        hardlinks: r.get::<_, Option<i64>>(5)?.unwrap_or(1),
        uid: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
        gid: r.get::<_, Option<i64>>(7)?.unwrap_or(0),
        mtime: r.get::<_, Option<i64>>(8)?.unwrap_or(0),
        mtimens: r.get(9)?,
        symlink: r.get::<_, Option<String>>(10)?.unwrap_or_default(),
        xattr: r.get(11)?,
        rowid: r.get(12)?,
    })
}

fn table_columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let cols = stmt
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(cols)
}

/// Numbers in `properties` are text, possibly written as reals ("7", "7.0").
fn parse_number(v: &str) -> Option<u64> {
    let v = v.trim();
    v.parse::<u64>().ok().or_else(|| {
        v.parse::<f64>()
            .ok()
            .filter(|f| *f >= 0.0)
            .map(|f| f as u64)
    })
}

/// Escapes the characters that have a meaning in an SQLite `file:` URI.
fn uri_escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}
