//! The one error type of the `catalog` crate.

use std::path::PathBuf;

/// `Result` with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while reading or writing CVMFS repository data.
///
/// Verification failures (docs/format.md §7.5) each have their own variant so that callers (and log
/// readers) can tell which check failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An SQLite operation on a catalog failed.
    #[error("catalog {path}: {source}")]
    Sqlite {
        /// The catalog file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// A startup pack is malformed (docs/format.md §13).
    #[error("invalid startup pack: {0}")]
    InvalidPack(String),
    /// A textual hash could not be parsed (docs/format.md §2.3).
    #[error("invalid content hash {0:?}")]
    InvalidHash(String),
    /// The hash algorithm is known but this build cannot compute it.
    #[error("hash algorithm {0} is not supported here")]
    UnsupportedAlgorithm(String),
    /// Stored bytes do not hash to the expected content hash (docs/format.md §2.2).
    #[error("hash mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        /// The hash the caller expected.
        expected: String,
        /// The hash of the bytes actually seen.
        actual: String,
    },
    /// A zlib stream is corrupt or truncated (docs/format.md §3.1).
    #[error("zlib stream is corrupt: {0}")]
    Decompress(String),
    /// Decompressed output would exceed the caller's limit.
    #[error("decompressed object exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// An extended-attribute map or blob violates docs/format.md §6.9.
    #[error("invalid xattrs: {0}")]
    Xattr(String),
    /// A catalog entry is inconsistent (e.g. kind and mode disagree, docs/format.md §6.6/§6.7).
    #[error("invalid catalog entry {path:?}: {reason}")]
    InvalidEntry {
        /// The entry's path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A catalog database does not have the expected structure or contents (docs/format.md §6).
    #[error("invalid catalog {path}: {reason}")]
    InvalidCatalog {
        /// The catalog file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Chunk size parameters violate `32 ≤ min < avg < max` (docs/format.md §4.1).
    #[error("invalid chunk parameters: {0}")]
    ChunkParams(String),
    /// A history database is malformed (docs/format.md §9.5).
    #[error("invalid history database {path}: {reason}")]
    InvalidHistory {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Key generation, encoding or decoding failed (docs/format.md §7.3).
    #[error("key: {0}")]
    Key(String),
    /// A certificate could not be built or parsed (docs/format.md §7.3).
    #[error("certificate: {0}")]
    Certificate(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
    /// A manifest is malformed: framing, missing key, bad value (docs/format.md §7.1, §7.2).
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// The manifest's hex line does not match the hash of its body (docs/format.md §7.2).
    #[error("manifest body hash is {actual}, but the file says {stated}")]
    ManifestBodyHash {
        /// The hash line in the file.
        stated: String,
        /// The hash computed over the body.
        actual: String,
    },
    /// The manifest signature does not verify with the certificate's key (docs/format.md §7.2).
    #[error("manifest signature does not verify with certificate {fingerprint}")]
    ManifestSignature {
        /// SHA-1 fingerprint of the certificate tried.
        fingerprint: String,
    },
    /// The manifest names another repository (docs/format.md §7.5 step 3).
    #[error("manifest is for fqrn {found}, not {expected}")]
    ManifestFqrn {
        /// The `N` line of the manifest.
        found: String,
        /// The repository being verified.
        expected: String,
    },
    /// The manifest's `R` line is not MD5("") (docs/format.md §7.5 step 4).
    #[error("manifest root path hash is {0}, not d41d8cd98f00b204e9800998ecf8427e")]
    ManifestRootPathHash(String),
    /// The manifest's `X` hash does not match the certificate given (docs/format.md §7.5 step 7).
    #[error("manifest names certificate {expected}, but the certificate given hashes to {actual}")]
    CertificateMismatch {
        /// The `X` line.
        expected: String,
        /// Hash of the compressed PEM given.
        actual: String,
    },
    /// A whitelist is malformed (docs/format.md §7.4).
    #[error("invalid whitelist: {0}")]
    InvalidWhitelist(String),
    /// The whitelist's hex line does not match the hash of its body (docs/format.md §7.4).
    #[error("whitelist body hash is {actual}, but the file says {stated}")]
    WhitelistBodyHash {
        /// The hash line in the file.
        stated: String,
        /// The hash computed over the body.
        actual: String,
    },
    /// No master key verifies the whitelist signature (docs/format.md §7.4).
    #[error("whitelist signature does not verify with any of {keys} master key(s)")]
    WhitelistSignature {
        /// How many keys were tried.
        keys: usize,
    },
    /// The whitelist has expired (docs/format.md §7.4, hour granularity).
    #[error("whitelist expired at {expired} (now {now})")]
    WhitelistExpired {
        /// Expiry, as `YYYYMMDDHHMMSS` UTC.
        expired: String,
        /// The time checked against, as `YYYYMMDDHHMMSS` UTC.
        now: String,
    },
    /// The whitelist names another repository (docs/format.md §7.5 step 9).
    #[error("whitelist is for fqrn {found}, not {expected}")]
    WhitelistFqrn {
        /// The `N` line of the whitelist.
        found: String,
        /// The repository being verified.
        expected: String,
    },
    /// The certificate's fingerprint is not in the whitelist (docs/format.md §7.5 step 10).
    #[error("certificate fingerprint {0} not in whitelist")]
    FingerprintNotListed(String),
}

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps an SQLite error with the catalog path.
    pub fn sqlite(path: impl Into<PathBuf>, source: rusqlite::Error) -> Error {
        Error::Sqlite {
            path: path.into(),
            source,
        }
    }
}
