//! The publisher's repository directory (docs/CONTRACTS.md §2): settings, keys, the served
//! tree `srv/`, scratch `tmp/` and the `lock` file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use catalog::{Certificate, LocalStore, SignedManifest};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Default TTL of the root catalog in seconds (CVMFS default, docs/format.md §8.6).
pub const DEFAULT_TTL: u64 = 240;

/// `DIR/strata.json`: publisher settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Settings {
    /// Fully qualified repository name, e.g. `images.example.org`.
    pub fqrn: String,
    /// Root catalog TTL in seconds.
    pub ttl: u64,
}

/// An open repository directory.
#[derive(Debug)]
pub struct Repo {
    /// The `--repo` directory.
    pub dir: PathBuf,
    /// Its settings.
    pub settings: Settings,
    /// The served tree `DIR/srv`.
    pub store: LocalStore,
}

/// An exclusive `flock` on `DIR/lock`, released on drop.
#[derive(Debug)]
pub struct RepoLock {
    _file: File,
}

/// Checks an fqrn: non-empty dot-separated labels of `[a-z0-9-]`.
pub fn validate_fqrn(fqrn: &str) -> Result<()> {
    let ok = !fqrn.is_empty()
        && fqrn.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidFqrn(fqrn.to_string()))
    }
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let context = format!("{what} {}", path.display());
    move |e| Error::io(context, e)
}

/// Writes `bytes` to `path` (create or truncate) with permission bits `mode`.
pub fn write_file_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("create", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("sync", path))
}

impl Repo {
    /// Path of `DIR/strata.json`.
    pub fn settings_path(dir: &Path) -> PathBuf {
        dir.join("strata.json")
    }

    /// Whether `dir` already holds a repository (settings or a published manifest).
    pub fn exists(dir: &Path) -> bool {
        Repo::settings_path(dir).exists() || dir.join("srv/.cvmfspublished").exists()
    }

    /// Creates the directory skeleton (`keys/`, `srv/`, `tmp/`) and opens the store, without
    /// writing settings; used by `init`, which writes `strata.json` last.
    pub fn create_layout(dir: &Path, settings: Settings) -> Result<Repo> {
        validate_fqrn(&settings.fqrn)?;
        for sub in ["keys", "srv", "tmp"] {
            fs::create_dir_all(dir.join(sub)).map_err(io_err("create", &dir.join(sub)))?;
        }
        let store = LocalStore::open(&dir.join("srv"))?;
        Ok(Repo {
            dir: dir.to_path_buf(),
            settings,
            store,
        })
    }

    /// Writes `DIR/strata.json`.
    pub fn save_settings(&self) -> Result<()> {
        let json = serde_json::to_vec_pretty(&self.settings)
            .map_err(|e| Error::json("encoding settings", e))?;
        write_file_mode(&Repo::settings_path(&self.dir), &json, 0o644)
    }

    /// Opens a repository made by `init`. Errors with [`Error::NotRepository`] if
    /// `strata.json` is missing or malformed.
    pub fn open(dir: &Path) -> Result<Repo> {
        let path = Repo::settings_path(dir);
        let bytes = fs::read(&path).map_err(|e| Error::NotRepository {
            path: dir.to_path_buf(),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        let settings: Settings = serde_json::from_slice(&bytes)
            .map_err(|e| Error::json(format!("parsing {}", path.display()), e))?;
        validate_fqrn(&settings.fqrn)?;
        let store = LocalStore::open(&dir.join("srv"))?;
        Ok(Repo {
            dir: dir.to_path_buf(),
            settings,
            store,
        })
    }

    /// Takes the exclusive lock on `DIR/lock`, blocking until it is free (and saying so at
    /// `info` when it has to wait).
    pub fn lock(dir: &Path) -> Result<RepoLock> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                // Without a word, a second ingest/sync/gc looks hung for as long as the
                // first one runs.
                tracing::info!(
                    lock = %path.display(),
                    "waiting for the repository lock (another ingest, sync, gc or resign holds it)"
                );
                file.lock().map_err(io_err("flock", &path))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("flock", &path)(e)),
        }
        Ok(RepoLock { _file: file })
    }

    /// `DIR/keys/<fqrn>.<ext>`.
    pub fn key_path(&self, ext: &str) -> PathBuf {
        self.dir
            .join("keys")
            .join(format!("{}.{ext}", self.settings.fqrn))
    }

    /// `DIR/tmp`, created if missing.
    pub fn tmp_dir(&self) -> Result<PathBuf> {
        let p = self.dir.join("tmp");
        fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        Ok(p)
    }

    /// Removes what a killed run left behind: temp objects in `srv/data/txn` and scratch in
    /// `DIR/tmp`. Call with the lock held. Returns the number of entries removed.
    pub fn clean_scratch(&self) -> Result<usize> {
        let mut removed = 0;
        for dir in [self.store.root().join("data/txn"), self.tmp_dir()?] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries {
                let path = e.map_err(io_err("list", &dir))?.path();
                let r = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                r.map_err(io_err("remove", &path))?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed leftovers of an interrupted run");
        }
        Ok(removed)
    }

    /// Flushes everything written to the file system of `srv/` to disk (`syncfs(2)`): the
    /// objects the worker pool wrote without fsync become durable before a manifest names
    /// them.
    pub fn sync_objects(&self) -> Result<()> {
        let srv = self.store.root();
        let dir = File::open(srv).map_err(io_err("open", srv))?;
        nix::unistd::syncfs(&dir)
            .map_err(|e| Error::io(format!("syncfs {}", srv.display()), e.into()))
    }

    fn read_key_file(&self, ext: &str) -> Result<String> {
        let p = self.key_path(ext);
        fs::read_to_string(&p).map_err(io_err("read", &p))
    }

    /// The certificate private key (`<fqrn>.key`) that signs manifests.
    pub fn certificate_key(&self) -> Result<catalog::RsaPrivateKey> {
        Ok(catalog::keys::private_key_from_pem(
            &self.read_key_file("key")?,
        )?)
    }

    /// The master private key (`<fqrn>.masterkey`) that signs the whitelist.
    pub fn master_key(&self) -> Result<catalog::RsaPrivateKey> {
        Ok(catalog::keys::private_key_from_pem(
            &self.read_key_file("masterkey")?,
        )?)
    }

    /// The master public key (`<fqrn>.pub`).
    pub fn master_public_key(&self) -> Result<catalog::RsaPublicKey> {
        Ok(catalog::keys::public_key_from_pem(
            &self.read_key_file("pub")?,
        )?)
    }

    /// The certificate (`<fqrn>.crt`).
    pub fn certificate(&self) -> Result<Certificate> {
        Ok(Certificate::from_pem(
            self.read_key_file("crt")?.as_bytes(),
        )?)
    }

    /// The currently published manifest. Errors with [`Error::NotRepository`] if there is
    /// none.
    pub fn current_manifest(&self) -> Result<SignedManifest> {
        let bytes =
            self.store
                .read_file(".cvmfspublished")?
                .ok_or_else(|| Error::NotRepository {
                    path: self.dir.clone(),
                    reason: "srv/.cvmfspublished is missing".into(),
                })?;
        Ok(catalog::Manifest::parse(&bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fqrn_rules() {
        assert!(validate_fqrn("images.example.org").is_ok());
        assert!(validate_fqrn("a").is_ok());
        for bad in ["", "A.b", "a..b", "a/b", ".a"] {
            assert!(validate_fqrn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_roundtrip_and_lock() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(!Repo::exists(dir.path()));
        let s = Settings {
            fqrn: "t.example.org".into(),
            ttl: 60,
        };
        let repo = Repo::create_layout(dir.path(), s.clone()).unwrap_or_else(|e| panic!("{e}"));
        repo.save_settings().unwrap_or_else(|e| panic!("{e}"));
        assert!(Repo::exists(dir.path()));
        let again = Repo::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.settings, s);
        assert!(again.key_path("key").ends_with("keys/t.example.org.key"));
        std::fs::write(dir.path().join("srv/data/txn/tmp123"), b"x")
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(dir.path().join("tmp/cat1")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.clean_scratch().unwrap_or_else(|e| panic!("{e}")), 2);
        assert!(dir.path().join("srv/data/txn").is_dir());
        assert_eq!(again.clean_scratch().unwrap_or_else(|e| panic!("{e}")), 0);
        let _l = Repo::lock(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let f = File::open(dir.path().join("lock")).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)));
    }

    #[test]
    fn lock_waits_for_the_holder() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let held = Repo::lock(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let l = Repo::lock(&path);
            let _ = tx.send(());
            l.map(drop)
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "second lock taken while the first is held"
        );
        drop(held);
        assert!(rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
        let joined = waiter.join().unwrap_or_else(|_| panic!("waiter panicked"));
        joined.unwrap_or_else(|e| panic!("{e}"));
    }
}
