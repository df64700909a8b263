//! Reading a catalog read-only (docs/format.md §6), including stock catalogs of older schema
//! revisions where that is cheap (no `mtimens` before rev 7, no `xattr` before rev 2, no
//! `nested_catalogs.size` before rev 1).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};

use crate::entry::{Chunk, Entry, EntryKind, FLAG_COMPRESSION_MASK, FLAG_HASH_MASK};
use crate::error::{Error, Result};
use crate::hash::{ContentHash, HashAlgorithm};
use crate::path_hash::{file_name, path_hash};
use crate::statistics::Statistics;
use crate::xattr::decode_xattrs;

/// A child catalog listed in `nested_catalogs` (docs/format.md §6.12).
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
    has_nested: bool,
    nested_has_size: bool,
    has_bind_mountpoints: bool,
    has_statistics: bool,
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
        let nested_columns = table_columns(&conn, "nested_catalogs").map_err(sql)?;
        let has_nested = !nested_columns.is_empty();
        let nested_has_size = nested_columns.iter().any(|c| c == "size");
        let has_bind_mountpoints = !table_columns(&conn, "bind_mountpoints")
            .map_err(sql)?
            .is_empty();
        let has_statistics = !table_columns(&conn, "statistics").map_err(sql)?.is_empty();
        Ok(CatalogReader {
            conn,
            path: file.to_path_buf(),
            root_prefix,
            revision,
            ttl,
            last_modified,
            schema_revision,
            select,
            has_nested,
            nested_has_size,
            has_bind_mountpoints,
            has_statistics,
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
    /// A row whose name is not the last component of `path`, or a second row with the same
    /// path hash, is a path-hash collision (or a forged catalog): [`Error::InvalidCatalog`].
    pub fn lookup(&self, path: &str) -> Result<Option<Entry>> {
        let key = path_hash(path);
        let sql = format!(
            "{} WHERE md5path_1 = ?1 AND md5path_2 = ?2 LIMIT 2",
            self.select
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![key.0, key.1], raw_row)
            .map_err(|e| self.sql(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.sql(e))?;
        if rows.len() > 1 {
            return Err(self.invalid(format!(
                "path hash collision: {} rows for {path:?}",
                rows.len()
            )));
        }
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        if row.name != file_name(path) {
            return Err(self.invalid(format!(
                "path hash collision: the row for {path:?} is named {:?}",
                row.name
            )));
        }
        self.decode(row).map(Some)
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

    /// The chunks of the file at `path`, ordered by offset (docs/format.md §6.11); empty if the file
    /// is not chunked or not in this catalog. The hash algorithm comes from the file's flags.
    ///
    /// Errors: [`Error::Sqlite`], [`Error::InvalidCatalog`] (also when the rows do not tile
    /// the file from offset 0 with non-empty chunks).
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
        // Chunks MUST tile the file from offset 0 (docs/format.md §6.11); anything else (negative,
        // overlapping, gapped or overflowing rows) is refused here, so readers can do
        // offset arithmetic on the result without checks.
        let mut next: u64 = 0;
        for r in rows {
            let (offset, size, digest) = r.map_err(|e| self.sql(e))?;
            let hash = ContentHash::from_digest(algorithm, &digest)
                .map_err(|_| self.invalid(format!("chunk of {path:?} has a bad hash")))?;
            let tiles = u64::try_from(offset).is_ok_and(|o| o == next)
                && u64::try_from(size).is_ok_and(|s| s > 0);
            let end = next.checked_add(size as u64).filter(|_| tiles);
            let Some(end) = end else {
                return Err(self.invalid(format!(
                    "chunks of {path:?} do not tile the file: chunk at offset {offset} with \
                     size {size}, expected offset {next}"
                )));
            };
            out.push(Chunk {
                offset: next,
                size: size as u64,
                hash,
            });
            next = end;
        }
        Ok(out)
    }

    /// The direct child catalogs (docs/format.md §6.12), sorted by path.
    ///
    /// Errors: [`Error::Sqlite`], [`Error::InvalidCatalog`] for a row without a valid hash.
    pub fn nested_catalogs(&self) -> Result<Vec<NestedCatalogRef>> {
        if !self.has_nested {
            return Ok(Vec::new());
        }
        let sql = if self.nested_has_size {
            "SELECT path, sha1, size FROM nested_catalogs ORDER BY path"
        } else {
            "SELECT path, sha1, 0 FROM nested_catalogs ORDER BY path"
        };
        self.references(sql)
    }

    fn references(&self, sql: &str) -> Result<Vec<NestedCatalogRef>> {
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
                    self.invalid(format!("catalog reference {path:?} has no valid hash"))
                })?;
            out.push(NestedCatalogRef {
                path,
                hash,
                size: size.unwrap_or(0).max(0) as u64,
            });
        }
        Ok(out)
    }

    /// Bind mountpoints (docs/format.md §6.12; flag 0x4000 entries), sorted by path; empty for
    /// catalogs older than schema revision 4, which lack the table.
    ///
    /// Errors: [`Error::Sqlite`], [`Error::InvalidCatalog`] for a row without a valid hash.
    pub fn bind_mountpoints(&self) -> Result<Vec<NestedCatalogRef>> {
        if !self.has_bind_mountpoints {
            return Ok(Vec::new());
        }
        self.references("SELECT path, sha1, size FROM bind_mountpoints ORDER BY path")
    }

    /// The `statistics` counters; counters missing in older catalogs (e.g. the special-file
    /// counters before schema revision 5, the whole table in very old ones) read as 0.
    ///
    /// Errors: [`Error::Sqlite`].
    pub fn statistics(&self) -> Result<Statistics> {
        let mut stats = Statistics::default();
        if !self.has_statistics {
            return Ok(stats);
        }
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
        name: raw_text(r, 0)?,
        mode: r.get(1)?,
        size: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
        flags: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
        hash: r.get(4)?,
        hardlinks: r.get::<_, Option<i64>>(5)?.unwrap_or(1),
        uid: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
        gid: r.get::<_, Option<i64>>(7)?.unwrap_or(0),
        mtime: r.get::<_, Option<i64>>(8)?.unwrap_or(0),
        mtimens: r.get(9)?,
        symlink: raw_text(r, 10)?,
        xattr: r.get(11)?,
        rowid: r.get(12)?,
    })
}

/// A `TEXT` column as a Strata name ([`crate::names`]): stock CVMFS stores names and
/// symlink targets as raw bytes, which need not be UTF-8. NULL is `""`.
fn raw_text(r: &Row<'_>, column: usize) -> rusqlite::Result<String> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(column)? {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
            crate::names::from_bytes(bytes).into_owned()
        }
        ValueRef::Null => String::new(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::compression::{decompress, verify};
    use crate::entry::EntryKind;
    use crate::hash::Suffix;
    use crate::manifest::Manifest;

    fn fixture() -> PathBuf {
        Path::new(crate::test_support::STOCK_REPO).join("srv")
    }

    /// Fetches, verifies and inflates a catalog object of the stock fixture into `dir`.
    fn open_stock(dir: &Path, hash: &ContentHash) -> CatalogReader {
        let stored = std::fs::read(fixture().join(hash.object_path(Suffix::Catalog))).unwrap();
        verify(&stored, hash).unwrap();
        let file = dir.join(format!("{hash}.db"));
        std::fs::write(&file, decompress(&stored, 64 << 20).unwrap()).unwrap();
        CatalogReader::open(&file).unwrap()
    }

    #[test]
    fn reads_stock_cvmfs_catalogs() {
        let published = std::fs::read(fixture().join(".cvmfspublished")).unwrap();
        let manifest = Manifest::parse(&published).unwrap().manifest;
        let dir = tempfile::tempdir().unwrap();

        let root = open_stock(dir.path(), &manifest.catalog_hash);
        assert_eq!(root.root_prefix(), "");
        assert_eq!(root.revision(), manifest.revision);
        assert_eq!(root.ttl(), Some(240));
        assert_eq!(root.schema_revision(), 7);
        let top: Vec<String> = root.list("").unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(top, ["README", "layers", "sw"]);
        let readme = root.lookup("/README").unwrap().unwrap();
        assert_eq!(readme.kind, EntryKind::Regular);
        assert_eq!(readme.size, 6);
        assert_eq!(
            readme.hash.unwrap().to_hex(),
            "5798f7f4ca7585d850eea64610a1f73d8f8de7a3"
        );
        let sw_v1 = root.lookup("/sw/v1").unwrap().unwrap();
        assert!(sw_v1.is_nested_mountpoint());
        assert_eq!(sw_v1.kind, EntryKind::Directory);
        let nested = root.nested_catalogs().unwrap();
        assert_eq!(
            nested.iter().map(|n| n.path.as_str()).collect::<Vec<_>>(),
            ["/layers/aa/layerfs", "/sw/v1"]
        );
        let stats = root.statistics().unwrap();
        assert_eq!(stats.self_.nested, 2);
        assert_eq!(stats.subtree.chunked, 1);

        let v1 = open_stock(dir.path(), &nested[1].hash);
        assert_eq!(v1.root_prefix(), "/sw/v1");
        let v1_root = v1.lookup("/sw/v1").unwrap().unwrap();
        assert!(v1_root.is_nested_root());
        let names: Vec<String> = v1
            .list("/sw/v1")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(names.iter().any(|n| n == "big.bin"), "{names:?}");
        assert!(names.iter().any(|n| n == ".cvmfscatalog"), "{names:?}");
        let big = v1.lookup("/sw/v1/big.bin").unwrap().unwrap();
        assert!(big.is_chunked());
        assert_eq!(big.hash, None);
        let chunks = v1.chunks("/sw/v1/big.bin").unwrap();
        assert_eq!(chunks.len(), 6);
        let mut next = 0;
        for c in &chunks {
            assert_eq!(c.offset, next);
            next += c.size;
            assert!(
                fixture()
                    .join(c.hash.object_path(Suffix::Partial))
                    .is_file()
            );
        }
        assert_eq!(next, big.size);
        let link = v1.lookup("/sw/v1/link").unwrap().unwrap();
        assert_eq!(
            (link.kind, link.symlink.as_str()),
            (EntryKind::Symlink, "a")
        );
        let fifo = v1.lookup("/sw/v1/fifo").unwrap().unwrap();
        assert_eq!(fifo.kind, EntryKind::Fifo);
        let dir_x = v1.lookup("/sw/v1/dir").unwrap().unwrap();
        assert_eq!(
            dir_x.xattrs.get("user.foo").map(Vec::as_slice),
            Some(&b"bar"[..])
        );
        let null = v1.lookup("/sw/v1/dev/null").unwrap().unwrap();
        assert_eq!(
            (null.kind, null.rdev, null.size),
            (EntryKind::CharDevice, 259, 0)
        );

        let layer = open_stock(dir.path(), &nested[0].hash);
        assert_eq!(layer.root_prefix(), "/layers/aa/layerfs");
        let mut all = Vec::new();
        walk(&layer, "/layers/aa/layerfs", &mut all);
        let find = |name: &str| {
            all.iter()
                .find(|(_, e)| e.name == name)
                .map(|(_, e)| e.clone())
        };
        assert!(find(".wh.gone").is_some(), "{all:?}");
        let removed = find("removed").unwrap();
        assert_eq!(
            (removed.kind, removed.rdev, removed.mode),
            (EntryKind::CharDevice, 0, 0o20000)
        );
        assert_eq!(find("busybox").unwrap().mode, 0o100755);
        assert_eq!(find("lib64").unwrap().symlink, "lib");
        // Every non-root entry is found again by lookup, under the path it was listed at.
        for (path, e) in &all {
            assert_eq!(layer.lookup(path).unwrap().as_ref(), Some(e), "{path}");
        }
        assert_eq!(all.len(), 16);
    }

    fn walk(r: &CatalogReader, dir: &str, out: &mut Vec<(String, Entry)>) {
        for e in r.list(dir).unwrap() {
            let path = format!("{dir}/{}", e.name);
            if e.kind == EntryKind::Directory {
                walk(r, &path, out);
            }
            out.push((path, e));
        }
    }

    #[test]
    fn tolerates_old_schema_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("old.db");
        let conn = Connection::open(&file).unwrap();
        conn.execute_batch(
            "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key));
             INSERT INTO properties VALUES ('schema', '2.5'), ('schema_revision', '1'), ('revision', '4');
             CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, parent_2 INTEGER,
               hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER, mtime INTEGER, flags INTEGER,
               name TEXT, symlink TEXT, uid INTEGER, gid INTEGER,
               CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2));
             CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT, CONSTRAINT pk_nested_catalogs PRIMARY KEY (path));
             INSERT INTO nested_catalogs VALUES ('/x', '5798f7f4ca7585d850eea64610a1f73d8f8de7a3');
             CREATE TABLE statistics (counter TEXT, value INTEGER, CONSTRAINT pk_statistics PRIMARY KEY (counter));",
        )
        .unwrap();
        let root = path_hash("");
        conn.execute(
            "INSERT INTO catalog VALUES (?1, ?2, 0, 0, 2, NULL, 4096, 16877, 5, 1, '', '', 0, 0)",
            params![root.0, root.1],
        )
        .unwrap();
        drop(conn);
        let r = CatalogReader::open(&file).unwrap();
        assert_eq!(r.revision(), 4);
        let e = r.lookup("").unwrap().unwrap();
        assert_eq!(
            (e.kind, e.mtime_ns, e.linkcount),
            (EntryKind::Directory, None, 2)
        );
        assert!(e.xattrs.is_empty());
        assert_eq!(r.nested_catalogs().unwrap()[0].size, 0);
        assert_eq!(r.statistics().unwrap(), Statistics::default());
    }

    /// A catalog as stock CVMFS wrote it at 2.5 revision `rev` (docs/format.md §6.15): columns and
    /// tables added later are left out, and only the counters of that revision exist.
    fn old_catalog(file: &Path, rev: u32) {
        let conn = Connection::open(file).unwrap();
        let mut cols = String::from(
            "md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, parent_2 INTEGER, \
             hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER, mtime INTEGER, ",
        );
        if rev >= 7 {
            cols.push_str("mtimens INTEGER, ");
        }
        cols.push_str("flags INTEGER, name TEXT, symlink TEXT, uid INTEGER, gid INTEGER, ");
        if rev >= 2 {
            cols.push_str("xattr BLOB, ");
        }
        let nested = if rev >= 1 {
            "path TEXT, sha1 TEXT, size INTEGER"
        } else {
            "path TEXT, sha1 TEXT"
        };
        conn.execute_batch(&format!(
            "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key));
             CREATE TABLE catalog ({cols}CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2));
             CREATE TABLE chunks (md5path_1 INTEGER, md5path_2 INTEGER, offset INTEGER, size INTEGER, hash BLOB,
               CONSTRAINT pk_chunks PRIMARY KEY (md5path_1, md5path_2, offset, size));
             CREATE TABLE nested_catalogs ({nested}, CONSTRAINT pk_nested_catalogs PRIMARY KEY (path));
             CREATE TABLE statistics (counter TEXT, value INTEGER, CONSTRAINT pk_statistics PRIMARY KEY (counter));"
        ))
        .unwrap();
        if rev >= 4 {
            conn.execute_batch(
                "CREATE TABLE bind_mountpoints (path TEXT, sha1 TEXT, size INTEGER, \
                 CONSTRAINT pk_bind_mountpoints PRIMARY KEY (path));
                 INSERT INTO bind_mountpoints VALUES ('/snap', 'e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78', 99);",
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO properties VALUES ('schema', '2.5'), ('schema_revision', ?1), ('revision', '12')",
            [rev.to_string()],
        )
        .unwrap();
        let mut counters = vec![
            "regular",
            "symlink",
            "dir",
            "nested",
            "chunked",
            "chunks",
            "file_size",
            "chunked_size",
        ];
        if rev >= 2 {
            counters.push("xattr");
        }
        if rev >= 3 {
            counters.extend(["external", "external_file_size"]);
        }
        if rev >= 5 {
            counters.push("special");
        }
        for c in counters {
            for prefix in ["self_", "subtree_"] {
                conn.execute(
                    "INSERT INTO statistics VALUES (?1, 1)",
                    [format!("{prefix}{c}")],
                )
                .unwrap();
            }
        }
        conn.execute(
            "INSERT INTO nested_catalogs (path, sha1) VALUES ('/n', '5798f7f4ca7585d850eea64610a1f73d8f8de7a3')",
            [],
        )
        .unwrap();
        let named = |names: &[&str], values: &[String]| {
            let sql = format!(
                "INSERT INTO catalog ({}) VALUES ({})",
                names.join(", "),
                values.join(", ")
            );
            conn.execute(&sql, []).unwrap();
        };
        let root = path_hash("");
        let file_key = path_hash("/f");
        let mut names = vec![
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
        ];
        let v = |x: &dyn ToString| x.to_string();
        let mut dir_vals: Vec<String> = vec![
            v(&root.0),
            v(&root.1),
            v(&0),
            v(&0),
            v(&2),
            "NULL".into(),
            v(&4096),
            v(&0o40755),
            v(&5),
            v(&1),
            "''".into(),
            "''".into(),
            v(&0),
            v(&0),
        ];
        let mut file_vals: Vec<String> = vec![
            v(&file_key.0),
            v(&file_key.1),
            v(&root.0),
            v(&root.1),
            v(&1),
            "X'5798f7f4ca7585d850eea64610a1f73d8f8de7a3'".into(),
            v(&6),
            v(&0o100644),
            v(&7),
            v(&4),
            "'f'".into(),
            "''".into(),
            v(&1000),
            v(&1000),
        ];
        if rev >= 7 {
            names.push("mtimens");
            dir_vals.push(v(&11));
            file_vals.push(v(&22));
        }
        if rev >= 2 {
            names.push("xattr");
            dir_vals.push("NULL".into());
            file_vals.push("X'01010803757365722e666f6f626172'".into());
        }
        named(&names, &dir_vals);
        named(&names, &file_vals);
    }

    #[test]
    fn reads_each_older_schema_revision() {
        let dir = tempfile::tempdir().unwrap();
        for rev in 0..=7u32 {
            let file = dir.path().join(format!("rev{rev}.db"));
            old_catalog(&file, rev);
            let r = CatalogReader::open(&file).unwrap();
            assert_eq!((r.schema_revision(), r.revision()), (u64::from(rev), 12));
            let f = r.lookup("/f").unwrap().unwrap();
            assert_eq!(
                (f.kind, f.size, f.uid, f.mtime),
                (EntryKind::Regular, 6, 1000, 7)
            );
            assert_eq!(
                f.hash.unwrap().to_hex(),
                "5798f7f4ca7585d850eea64610a1f73d8f8de7a3"
            );
            // rev < 7: no mtimens column.
            assert_eq!(
                f.mtime_ns,
                if rev >= 7 { Some(22) } else { None },
                "rev {rev}"
            );
            // rev < 2: no xattr column.
            assert_eq!(f.xattrs.len(), usize::from(rev >= 2), "rev {rev}");
            assert_eq!(r.list("").unwrap().len(), 1);
            // rev < 1: nested_catalogs.size missing → 0.
            let n = r.nested_catalogs().unwrap();
            assert_eq!((n.len(), n[0].size), (1, 0));
            // rev < 4: no bind_mountpoints table.
            let b = r.bind_mountpoints().unwrap();
            if rev >= 4 {
                assert_eq!((b.len(), b[0].path.as_str(), b[0].size), (1, "/snap", 99));
            } else {
                assert!(b.is_empty());
            }
            // rev < 5: special counters missing → 0; rev < 3: no external counters.
            let s = r.statistics().unwrap();
            assert_eq!(s.self_.special, i64::from(rev >= 5), "rev {rev}");
            assert_eq!(s.subtree.external, i64::from(rev >= 3), "rev {rev}");
            assert_eq!((s.self_.regular, s.subtree.dir), (1, 1));
        }
        // A catalog without a statistics table at all.
        let file = dir.path().join("nostats.db");
        old_catalog(&file, 0);
        Connection::open(&file)
            .unwrap()
            .execute_batch("DROP TABLE statistics; DROP TABLE nested_catalogs;")
            .unwrap();
        let r = CatalogReader::open(&file).unwrap();
        assert_eq!(r.statistics().unwrap(), Statistics::default());
        assert!(r.nested_catalogs().unwrap().is_empty());
    }

    #[test]
    fn chunks_that_do_not_tile_the_file_are_errors() {
        // The stock fixture's chunked /sw/v1/big.bin, with its chunk rows tampered.
        let published = std::fs::read(fixture().join(".cvmfspublished")).unwrap();
        let manifest = Manifest::parse(&published).unwrap().manifest;
        let dir = tempfile::tempdir().unwrap();
        let root = open_stock(dir.path(), &manifest.catalog_hash);
        let v1 = root.nested_catalogs().unwrap()[1].hash;
        drop(open_stock(dir.path(), &v1));
        let file = dir.path().join(format!("{v1}.db"));
        let big = "/sw/v1/big.bin";
        assert_eq!(
            CatalogReader::open(&file)
                .unwrap()
                .chunks(big)
                .unwrap()
                .len(),
            6
        );
        for tamper in [
            "UPDATE chunks SET offset = -9223372036854775807 WHERE offset = 0", // found by fuzzing
            "UPDATE chunks SET size = 9223372036854775807 WHERE offset = 0",
            "UPDATE chunks SET size = 0 WHERE offset = 0",
            "DELETE FROM chunks WHERE offset = 0",
        ] {
            let copy = dir.path().join("tampered.db");
            std::fs::copy(&file, &copy).unwrap();
            Connection::open(&copy)
                .unwrap()
                .execute(tamper, [])
                .unwrap();
            let err = CatalogReader::open(&copy).unwrap().chunks(big).unwrap_err();
            assert!(err.to_string().contains("do not tile"), "{tamper}: {err}");
        }
    }

    #[test]
    fn path_hash_collisions_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        // A row stored under /f's hash but named otherwise.
        let file = dir.path().join("renamed.db");
        old_catalog(&file, 7);
        Connection::open(&file)
            .unwrap()
            .execute("UPDATE catalog SET name = 'g' WHERE name = 'f'", [])
            .unwrap();
        let r = CatalogReader::open(&file).unwrap();
        assert!(matches!(r.lookup("/f"), Err(Error::InvalidCatalog { .. })));
        assert!(r.lookup("").unwrap().is_some());
        // Two rows claiming the same md5path with different names (no primary key).
        let file = dir.path().join("dup.db");
        let conn = Connection::open(&file).unwrap();
        conn.execute_batch(
            "CREATE TABLE properties (key TEXT, value TEXT);
             INSERT INTO properties VALUES ('schema', '2.5'), ('schema_revision', '7');
             CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, parent_2 INTEGER,
               hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER, mtime INTEGER, mtimens INTEGER,
               flags INTEGER, name TEXT, symlink TEXT, uid INTEGER, gid INTEGER, xattr BLOB);",
        )
        .unwrap();
        let key = path_hash("/a");
        let root = path_hash("");
        for name in ["a", "b"] {
            conn.execute(
                "INSERT INTO catalog VALUES (?1, ?2, ?3, ?4, 2, NULL, 4096, 16877, 0, NULL, 1, ?5, '', 0, 0, NULL)",
                params![key.0, key.1, root.0, root.1, name],
            )
            .unwrap();
        }
        drop(conn);
        let r = CatalogReader::open(&file).unwrap();
        let err = r.lookup("/a").unwrap_err();
        assert!(err.to_string().contains("collision"), "{err}");
    }

    #[test]
    fn rejects_non_catalogs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("junk.db");
        std::fs::write(&file, b"not a database at all, definitely not").unwrap();
        assert!(CatalogReader::open(&file).is_err());
        let empty = dir.path().join("empty.db");
        Connection::open(&empty)
            .unwrap()
            .execute_batch("CREATE TABLE t (x INTEGER);")
            .unwrap();
        assert!(matches!(
            CatalogReader::open(&empty),
            Err(Error::InvalidCatalog { .. })
        ));
        assert!(CatalogReader::open(&dir.path().join("missing.db")).is_err());
    }

    #[test]
    fn uri_escaping() {
        assert_eq!(uri_escape("/a b/c?d#e%f"), "/a b/c%3fd%23e%25f");
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("we?ird#dir%");
        std::fs::create_dir(&sub).unwrap();
        let file = sub.join("c.db");
        let mut w = crate::writer::CatalogWriter::create(&file, "").unwrap();
        w.add(
            "",
            &Entry::directory("", 0o755, 0, 0, 0),
            crate::writer::Transition::None,
        )
        .unwrap();
        w.finish(&Default::default()).unwrap();
        assert!(
            CatalogReader::open(&file)
                .unwrap()
                .lookup("")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn reader_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<CatalogReader>();
    }
}
