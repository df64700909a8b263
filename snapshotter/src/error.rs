//! The crate's one error type. It becomes a FUSE errno in [`crate::fuse`] and a gRPC
//! `Status` in [`crate::service`], and nowhere else.

/// Everything that can go wrong in the snapshotter crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CVMFS format error (bad catalog, hash mismatch, signature, ...).
    #[error(transparent)]
    Catalog(#[from] catalog::Error),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
