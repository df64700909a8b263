//! The served tree of a repository on local disk: `data/00..ff`, `data/txn`, and the files
//! at the root (`.cvmfspublished`, `.cvmfswhitelist`, …) (CVMFS spec §1.2, §1.3).
//!
//! Every write goes to a temporary file in `data/txn`, is fsynced and then renamed into
//! place, so readers (the HTTP server, Stratum-1s) never see partial objects.

use std::io::Write;
use std::path::{Path, PathBuf};

use std::os::unix::fs::PermissionsExt;
use tempfile::NamedTempFile;

use crate::compression::compress;
use crate::error::{Error, Result};
use crate::hash::{ContentHash, HashAlgorithm, Suffix};

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
    /// it exists. Returns false if it already existed. The caller vouches that `stored`
    /// hashes to `hash`.
    ///
    /// Errors: [`Error::Io`].
    pub fn put(&self, hash: &ContentHash, suffix: Suffix, stored: &[u8]) -> Result<bool> {
        if self.contains(hash, suffix) {
            return Ok(false);
        }
        let mut tmp = self.temp_file()?;
        tmp.write_all(stored)
            .map_err(|e| Error::io(format!("writing {}", tmp.path().display()), e))?;
        self.commit(tmp, hash, suffix)
    }

    /// Compresses `raw` (zlib level 6), hashes the result with SHA-1 and stores it; returns
    /// the hash. For catalogs, certificates, meta-info (always compressed, spec §3.3).
    ///
    /// Errors: [`Error::Io`].
    pub fn put_raw(&self, raw: &[u8], suffix: Suffix) -> Result<ContentHash> {
        let stored = compress(raw);
        let hash = ContentHash::of_bytes(HashAlgorithm::Sha1, &stored);
        self.put(&hash, suffix, &stored)?;
        Ok(hash)
    }

    /// A new temporary file in `data/txn`, to be filled and then passed to
    /// [`LocalStore::commit`] (dropping it deletes it).
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
        let target = self.object_file(hash, suffix);
        if target.is_file() {
            return Ok(false);
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io(format!("syncing {}", tmp.path().display()), e))?;
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
