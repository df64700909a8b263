//! The breadcrumb `<cache>/cvmfschecksum.<fqrn>`: which root catalog of a repository this
//! node mounted last, and when it was published (docs/format.md §8.2 steps 3 and 6, §8.7).
//!
//! One line `<root catalog hash>T<manifest T>R<manifest S>`, the hash in its textual form
//! (plain hex plus the algorithm id, e.g. `…-rmd160`, no type suffix), as the stock client
//! writes it. Its timestamp is the minimum a manifest must carry to be accepted (docs/format.md §7.5
//! step 5, §8.6), so a proxy or mirror that serves an older manifest than this node has
//! already seen cannot roll the node back; and its catalog, if still cached, is what the
//! client mounts when the server is unreachable (offline mode, §8.2 step 4).

use std::io::Write;
use std::path::{Path, PathBuf};

use catalog::ContentHash;

use crate::{Error, Result};

/// One breadcrumb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breadcrumb {
    /// Hash of the root catalog mounted.
    pub catalog_hash: ContentHash,
    /// The manifest's `T` (Unix seconds of the publish).
    pub timestamp: u64,
    /// The manifest's `S` (revision); 0 when an old breadcrumb has no `R` part.
    pub revision: u64,
}

impl Breadcrumb {
    /// Path of the breadcrumb of `fqrn` in cache directory `cache`.
    pub fn path(cache: &Path, fqrn: &str) -> PathBuf {
        cache.join(format!("cvmfschecksum.{fqrn}"))
    }

    /// Parses `<hex>T<ts>[R<revision>]` (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`Error::Config`] naming the text if it is not of that form.
    pub fn parse(text: &str) -> Result<Breadcrumb> {
        let bad = || Error::Config(format!("malformed breadcrumb {text:?}"));
        let text = text.trim();
        let (hash, rest) = text.split_once('T').ok_or_else(bad)?;
        let (timestamp, revision) = match rest.split_once('R') {
            Some((t, r)) => (t, r.parse().map_err(|_| bad())?),
            None => (rest, 0),
        };
        Ok(Breadcrumb {
            catalog_hash: ContentHash::parse_hex(hash).map_err(|_| bad())?,
            timestamp: timestamp.parse().map_err(|_| bad())?,
            revision,
        })
    }

    /// The file's text, without a newline (the stock client writes none).
    pub fn to_text(&self) -> String {
        format!(
            "{}T{}R{}",
            self.catalog_hash.to_hex(),
            self.timestamp,
            self.revision
        )
    }

    /// Reads the breadcrumb of `fqrn` from cache directory `cache`. A missing file is
    /// `None`; an unreadable or malformed one is logged and treated as missing (the stock
    /// client does the same: the breadcrumb is an optimisation and a lower bound only).
    pub fn read(cache: &Path, fqrn: &str) -> Option<Breadcrumb> {
        let path = Breadcrumb::path(cache, fqrn);
        match std::fs::read_to_string(&path) {
            Ok(text) => match Breadcrumb::parse(&text) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring the breadcrumb");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring the breadcrumb");
                None
            }
        }
    }

    /// Writes the breadcrumb of `fqrn` into cache directory `cache` atomically (temporary
    /// file in `cache`, then `rename(2)`).
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn write(&self, cache: &Path, fqrn: &str) -> Result<()> {
        let path = Breadcrumb::path(cache, fqrn);
        let io = |source| Error::Io {
            context: format!("writing breadcrumb {}", path.display()),
            source,
        };
        let mut tmp = tempfile::NamedTempFile::new_in(cache).map_err(io)?;
        tmp.write_all(self.to_text().as_bytes()).map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::HashAlgorithm;

    #[test]
    fn round_trips_the_stock_format() {
        let hash = ContentHash::of_bytes(HashAlgorithm::Sha1, b"root");
        let b = Breadcrumb {
            catalog_hash: hash,
            timestamp: 1_700_000_123,
            revision: 42,
        };
        let text = b.to_text();
        assert_eq!(text, format!("{}T1700000123R42", hash.to_hex()));
        assert_eq!(Breadcrumb::parse(&format!("{text}\n")).unwrap(), b);

        let rmd = ContentHash::of_bytes(HashAlgorithm::Rmd160, b"root");
        let old = Breadcrumb::parse(&format!("{}T5", rmd.to_hex())).unwrap();
        assert_eq!((old.catalog_hash, old.timestamp, old.revision), (rmd, 5, 0));

        for bad in ["", "abcT1R2", &format!("{}X1R2", hash.to_hex())] {
            assert!(Breadcrumb::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Breadcrumb::parse(&format!("{}T1Rx", hash.to_hex())).is_err());
    }

    #[test]
    fn writes_atomically_and_reads_back_missing_or_bad_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Breadcrumb::read(dir.path(), "a.b"), None);
        let b = Breadcrumb {
            catalog_hash: ContentHash::of_bytes(HashAlgorithm::Sha1, b"x"),
            timestamp: 7,
            revision: 3,
        };
        b.write(dir.path(), "a.b").unwrap();
        assert!(dir.path().join("cvmfschecksum.a.b").is_file());
        assert_eq!(Breadcrumb::read(dir.path(), "a.b"), Some(b));
        assert_eq!(Breadcrumb::read(dir.path(), "other"), None);
        std::fs::write(dir.path().join("cvmfschecksum.a.b"), "garbage").unwrap();
        assert_eq!(Breadcrumb::read(dir.path(), "a.b"), None);
        // Only the breadcrumb is left in the directory (no temporaries).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
