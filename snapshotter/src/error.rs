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
    /// The snapshot metadata database (`<root>/metadata.db`, SQLite) failed.
    #[error("snapshot metadata database: {0}")]
    SnapshotDb(#[from] rusqlite::Error),
    /// A snapshot key or name is unknown (gRPC `NotFound`, anchors §3.1).
    #[error("snapshot {0:?} does not exist")]
    SnapshotNotFound(String),
    /// A snapshot key or name is taken (gRPC `AlreadyExists`, anchors §3.1). Also the
    /// answer to a remote Prepare: the target was committed from the repository.
    #[error("snapshot {0:?} already exists")]
    SnapshotExists(String),
    /// The snapshot is in the wrong state for the call, e.g. removing a parent or committing
    /// a view (gRPC `FailedPrecondition`).
    #[error("{0}")]
    SnapshotPrecondition(String),
    /// A malformed request: bad filter, non-committed parent, oversized label, unknown
    /// field path (gRPC `InvalidArgument`).
    #[error("invalid argument: {0}")]
    SnapshotInvalid(String),
    /// A containerd API call made by `pull` failed; names the call.
    #[error("containerd {call}: {status}")]
    Containerd {
        /// The service and method, e.g. `content.Write`.
        call: String,
        /// The gRPC status containerd answered with.
        status: Box<tonic::Status>,
    },
    /// Connecting to containerd's socket failed.
    #[error("connect to containerd at {address}: {source}")]
    ContainerdConnect {
        /// The socket path.
        address: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The image's metadata in the repository (`.metadata/<ref>/`, CONTRACTS §3) is missing
    /// or malformed.
    #[error("image {reference}: {reason}")]
    ImageMetadata {
        /// The normalised reference.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// `pull` found a layer that the snapshotter did not resolve from the repository.
    #[error(
        "layer {index} ({digest}, chain {chain_id}) is not published in the repository; \
         the snapshotter would have to download it"
    )]
    LayerNotPublished {
        /// Position of the layer in the manifest, from 0.
        index: usize,
        /// Compressed layer digest.
        digest: String,
        /// The layer's ChainID.
        chain_id: String,
    },
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
