//! The served tree of a repository on local disk: `data/00..ff`, `data/txn`, and the files
//! at the root (`.cvmfspublished`, `.cvmfswhitelist`, …) (docs/format.md §1.2, §1.3).
//!
//! Every write goes to a temporary file in `data/txn`, is fsynced (unless the caller syncs
//! later, [`Durability::Deferred`]) and then renamed into place, so readers (the HTTP
//! server, Stratum-1s) never see partial objects.
//!
//! Objects are made in one way: compressed and hashed by an [`ObjectWriter`], in memory
//! ([`LocalStore::store_object`], [`LocalStore::put_raw`]) or streamed through a temporary
//! file ([`LocalStore::new_object`], [`LocalStore::commit_object`],
//! [`LocalStore::store_stream`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use std::os::unix::fs::PermissionsExt;
use tempfile::NamedTempFile;

use crate::compression::{ObjectInfo, ObjectWriter, compress_into};
use crate::error::{Error, Result};
use crate::hash::{ContentHash, HashAlgorithm, Suffix};
use crate::stock_zlib;

/// Whether a new object is fsynced before it is renamed into place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Fsync each object: once it has its name it survives a crash.
    Synced,
    /// No fsync per object (one per object made the publisher's workers wait on the disk
    /// instead of compressing): the caller syncs the file system once before anything
    /// refers to the objects. A killed process loses nothing either way: the rename
    /// happens after the write.
    Deferred,
}

/// A repository's served tree rooted at a directory.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Opens (creating as needed) the tree at `root` with `data/00` … `data/ff` and
    /// `data/txn`.
    ///
    /// Errors: [`Error::Io`] if a directory cannot be created.
    pub fn open(root: &Path) -> Result<LocalStore> {
        let data = root.join("data");
        let mk = |p: &Path| {
            std::fs::create_dir_all(p)
                .map_err(|e| Error::io(format!("creating {}", p.display()), e))
        };
        mk(&data.join("txn"))?;
        for i in 0..=255u8 {
            mk(&data.join(format!("{i:02x}")))?;
        }
        Ok(LocalStore {
            root: root.to_path_buf(),
        })
    }

    /// The directory the tree lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Absolute path of the object `hash` with `suffix`.
    pub fn object_file(&self, hash: &ContentHash, suffix: Suffix) -> PathBuf {
        self.root.join(hash.object_path(suffix))
    }

    /// Whether the object exists.
    pub fn contains(&self, hash: &ContentHash, suffix: Suffix) -> bool {
        self.object_file(hash, suffix).is_file()
    }

    /// Stores `stored` (already compressed as appropriate) as object `hash`+`suffix`, unless
    /// it exists; fsynced. Returns false if it already existed. The caller vouches that
    /// `stored` hashes to `hash`.
    ///
    /// Errors: [`Error::Io`].
    pub fn put(&self, hash: &ContentHash, suffix: Suffix, stored: &[u8]) -> Result<bool> {
        self.put_with(hash, suffix, stored, Durability::Synced)
    }

    fn put_with(
        &self,
        hash: &ContentHash,
        suffix: Suffix,
        stored: &[u8],
        durability: Durability,
    ) -> Result<bool> {
        if self.contains(hash, suffix) {
            return Ok(false);
        }
        let mut tmp = self.temp_file()?;
        tmp.write_all(stored)
            .map_err(|e| Error::io(format!("writing {}", tmp.path().display()), e))?;
        self.commit_with(tmp, hash, suffix, durability)
    }

    /// Compresses `raw` (zlib level 6), hashes the result with SHA-1 and stores it, fsynced;
    /// returns the hash. For catalogs, certificates, meta-info (always compressed, docs/format.md
    /// §3.3). As [`LocalStore::store_object`].
    ///
    /// Errors: [`Error::Io`].
    pub fn put_raw(&self, raw: &[u8], suffix: Suffix) -> Result<ContentHash> {
        self.store_object(raw, suffix, Durability::Synced, &mut Vec::new())
    }

    /// Compresses `raw` into `buf` ([`compress_into`]: zlib level 6; `buf` is cleared first
    /// and its allocation re-used), hashes the stored bytes with SHA-1 and stores them as
    /// object `hash`+`suffix` unless it exists; returns the hash. Objects that stock tools
    /// re-create from their content (certificate, meta-info) are compressed with C zlib
    /// exactly as stock does ([`stock_zlib`]), so that a Stratum-1 replica keeps their names.
    ///
    /// Errors: [`Error::Io`].
    pub fn store_object(
        &self,
        raw: &[u8],
        suffix: Suffix,
        durability: Durability,
        buf: &mut Vec<u8>,
    ) -> Result<ContentHash> {
        let hash = if stock_zlib::recreated_by_stock(suffix) {
            *buf = stock_zlib::compress(raw);
            ContentHash::of_bytes(HashAlgorithm::Sha1, buf)
        } else {
            compress_into(raw, buf, HashAlgorithm::Sha1)?
        };
        self.put_with(&hash, suffix, buf, durability)?;
        Ok(hash)
    }

    /// A new object to stream into: an [`ObjectWriter`] (zlib if `compressed`, else the
    /// bytes as they are, docs/format.md §3.2; hashed with `algorithm`) over a temporary file in
    /// `data/txn`. End it with [`LocalStore::commit_object`]; dropping it deletes the file.
    ///
    /// Errors: [`Error::Io`].
    pub fn new_object(
        &self,
        algorithm: HashAlgorithm,
        compressed: bool,
    ) -> Result<ObjectWriter<NamedTempFile>> {
        Ok(ObjectWriter::with_compression(
            self.temp_file()?,
            algorithm,
            compressed,
        ))
    }

    /// Ends an object from [`LocalStore::new_object`] and stores it, fsynced, as object
    /// `<its hash>`+`suffix` unless that exists; returns what was written and whether the
    /// object is new.
    ///
    /// Errors: [`Error::Io`].
    pub fn commit_object(
        &self,
        w: ObjectWriter<NamedTempFile>,
        suffix: Suffix,
    ) -> Result<(ObjectInfo, bool)> {
        let (tmp, info) = w.finish()?;
        let new = self.commit(tmp, &info.hash, suffix)?;
        Ok((info, new))
    }

    /// Compresses (zlib level 6) and hashes (SHA-1) everything `r` yields into a new object
    /// with `suffix`, streaming through a temporary file; an object that already exists is
    /// not written again.
    ///
    /// Errors: [`Error::Io`], also when reading `r` fails.
    pub fn store_stream<R: Read>(&self, mut r: R, suffix: Suffix) -> Result<ObjectInfo> {
        let mut w = self.new_object(HashAlgorithm::Sha1, true)?;
        std::io::copy(&mut r, &mut w).map_err(|e| Error::io("compressing object", e))?;
        let (info, _) = self.commit_object(w, suffix)?;
        Ok(info)
    }

    /// A new temporary file in `data/txn`, to be filled and then passed to
    /// [`LocalStore::commit`] (dropping it deletes it). For objects, use
    /// [`LocalStore::new_object`], which compresses and hashes on the way.
    ///
    /// Errors: [`Error::Io`].
    pub fn temp_file(&self) -> Result<NamedTempFile> {
        let txn = self.root.join("data").join("txn");
        // 0644: the served tree is read by web servers running as other users.
        tempfile::Builder::new()
            .permissions(std::fs::Permissions::from_mode(0o644))
            .tempfile_in(&txn)
            .map_err(|e| Error::io(format!("creating a temporary file in {}", txn.display()), e))
    }

    /// Fsyncs `tmp` and renames it to the object `hash`+`suffix`; if the object already
    /// exists, deletes `tmp` instead and returns false.
    ///
    /// Errors: [`Error::Io`].
    pub fn commit(&self, tmp: NamedTempFile, hash: &ContentHash, suffix: Suffix) -> Result<bool> {
        self.commit_with(tmp, hash, suffix, Durability::Synced)
    }

    fn commit_with(
        &self,
        tmp: NamedTempFile,
        hash: &ContentHash,
        suffix: Suffix,
        durability: Durability,
    ) -> Result<bool> {
        let target = self.object_file(hash, suffix);
        if target.is_file() {
            return Ok(false);
        }
        if durability == Durability::Synced {
            tmp.as_file()
                .sync_all()
                .map_err(|e| Error::io(format!("syncing {}", tmp.path().display()), e))?;
        }
        tmp.persist(&target)
            .map_err(|e| Error::io(format!("renaming to {}", target.display()), e.error))?;
        Ok(true)
    }

    /// The stored bytes of object `hash`+`suffix` (not decompressed, not verified).
    ///
    /// Errors: [`Error::Io`] (kind `NotFound` if missing).
    pub fn get(&self, hash: &ContentHash, suffix: Suffix) -> Result<Vec<u8>> {
        let p = self.object_file(hash, suffix);
        std::fs::read(&p).map_err(|e| Error::io(format!("reading {}", p.display()), e))
    }

    /// Atomically replaces the file `name` at the root of the tree (e.g. `.cvmfspublished`):
    /// temp file in `data/txn`, fsync, rename, fsync of the root directory.
    ///
    /// Errors: [`Error::Io`], also for a `name` that is empty or contains `/` or `..`.
    pub fn write_file_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let target = self.root_file(name)?;
        let mut tmp = self.temp_file()?;
        tmp.write_all(bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| Error::io(format!("writing {}", tmp.path().display()), e))?;
        tmp.persist(&target)
            .map_err(|e| Error::io(format!("renaming to {}", target.display()), e.error))?;
        std::fs::File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(format!("syncing {}", self.root.display()), e))
    }

    /// The contents of the file `name` at the root of the tree, `None` if it does not exist.
    ///
    /// Errors: [`Error::Io`] for other failures or an invalid `name`.
    pub fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let p = self.root_file(name)?;
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
        }
    }

    fn root_file(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::io(
                format!("invalid root file name {name:?}"),
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        Ok(self.root.join(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::decompress;

    #[test]
    fn layout_put_get() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        assert!(dir.path().join("data/00").is_dir());
        assert!(dir.path().join("data/ff").is_dir());
        assert!(dir.path().join("data/txn").is_dir());

        let h = store.put_raw(b"hello\n", Suffix::Catalog).unwrap();
        assert!(store.contains(&h, Suffix::Catalog));
        assert!(!store.contains(&h, Suffix::None));
        assert!(dir.path().join(h.object_path(Suffix::Catalog)).is_file());
        let stored = store.get(&h, Suffix::Catalog).unwrap();
        assert_eq!(decompress(&stored, 100).unwrap(), b"hello\n");
        // Second put is skipped.
        assert!(!store.put(&h, Suffix::Catalog, &stored).unwrap());
        assert!(store.put(&h, Suffix::Partial, &stored).unwrap());
        // No temporary files left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("data/txn"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn recreated_objects_are_stored_as_stock_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let pem: Vec<u8> = (0..3000u32)
            .map(|i| b"MIIC+/=AZaz09\n"[i as usize % 14])
            .collect();
        for suffix in [Suffix::Certificate, Suffix::MetaInfo] {
            let h = store.put_raw(&pem, suffix).unwrap();
            let stored = store.get(&h, suffix).unwrap();
            assert_eq!(stored, stock_zlib::compress(&pem), "{suffix:?}");
            assert_eq!(ContentHash::of_bytes(HashAlgorithm::Sha1, &stored), h);
        }
    }

    #[test]
    fn temp_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let mut tmp = store.temp_file().unwrap();
        tmp.write_all(b"abc").unwrap();
        let h = ContentHash::of_bytes(HashAlgorithm::Sha1, b"abc");
        assert!(store.commit(tmp, &h, Suffix::None).unwrap());
        let tmp2 = store.temp_file().unwrap();
        assert!(!store.commit(tmp2, &h, Suffix::None).unwrap());
        assert_eq!(store.get(&h, Suffix::None).unwrap(), b"abc");
        assert_eq!(
            std::fs::read_dir(dir.path().join("data/txn"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn root_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        assert_eq!(store.read_file(".cvmfspublished").unwrap(), None);
        store.write_file_atomic(".cvmfspublished", b"one").unwrap();
        store.write_file_atomic(".cvmfspublished", b"two").unwrap();
        assert_eq!(store.read_file(".cvmfspublished").unwrap().unwrap(), b"two");
        assert!(store.write_file_atomic("../x", b"").is_err());
        assert!(store.read_file("").is_err());
    }
}
