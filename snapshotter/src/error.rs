//! The crate's one error type. It becomes a FUSE errno in `crate::fuse` (`fuse/errno.rs`)
//! and a gRPC `Status` in [`crate::containerd::service`], and nowhere else.

/// Everything that can go wrong in the snapshotter crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CVMFS format error (bad catalog, hash mismatch, signature, ...).
    #[error(transparent)]
    Catalog(#[from] catalog::Error),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `read <path>`; the message prefix.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An HTTP request could not be completed (connect, timeout, transfer); names the URL.
    #[error("GET {url}: {reason}")]
    Http {
        /// The full URL requested.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The server answered with a non-success HTTP status (docs/format.md §8.8.5); names the URL.
    #[error("GET {url}: HTTP status {status}")]
    HttpStatus {
        /// The full URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// An object's decompressed size differs from the size the catalog records (docs/format.md §8.5).
    #[error("object {object}: decompressed size {actual} bytes, catalog says {expected}")]
    SizeMismatch {
        /// Hex hash of the object.
        object: String,
        /// Size recorded in the catalog.
        expected: u64,
        /// Size actually inflated.
        actual: u64,
    },
    /// A concurrent download of the same object, which this request waited for, failed.
    #[error("object {object} is unavailable: {reason}")]
    ObjectUnavailable {
        /// Hex hash of the object.
        object: String,
        /// Why the other download failed.
        reason: String,
    },
    /// The repository failed the signature / whitelist chain check (docs/format.md §7.5); the source
    /// names the failed step.
    #[error("repository {fqrn} failed verification: {source}")]
    Verification {
        /// The repository name.
        fqrn: String,
        /// The failed check.
        #[source]
        source: catalog::Error,
    },
    /// The manifest is older than what this node already saw: its `T` is below the
    /// breadcrumb's timestamp or the mounted root catalog's `last_modified` (docs/format.md §7.5 step
    /// 5, §8.6). A rollback by a stale mirror or proxy, or a replay.
    #[error(
        "repository {fqrn} failed verification: manifest timestamp check: T={timestamp} is \
         older than the minimum {minimum} (breadcrumb or mounted root catalog); outdated \
         manifest refused"
    )]
    Outdated {
        /// The repository name.
        fqrn: String,
        /// The manifest's `T`, Unix seconds.
        timestamp: u64,
        /// The minimum it had to reach, Unix seconds.
        minimum: u64,
    },
    /// The repository switched revisions during every attempt of one FUSE lookup or
    /// listing (see `fuse::switch::SWITCH_RETRIES`); names the path. FUSE errno `EAGAIN`.
    #[error("{0}")]
    Busy(String),
    /// The revision asked for (`mount --tag`, `--root-hash`) cannot be mounted.
    #[error("repository {fqrn}: cannot mount the requested revision: {reason}")]
    Revision {
        /// The repository name.
        fqrn: String,
        /// Why (unknown tag, no history database, …).
        reason: String,
    },
    /// A path does not exist in the repository.
    #[error("{0:?}: no such file or directory")]
    NotFound(String),
    /// A path used as a directory is not one.
    #[error("{0:?}: not a directory")]
    NotADirectory(String),
    /// A catalog entry cannot be served by this client (e.g. external data, docs/format.md §6.6 flag 128).
    #[error("{path:?}: {reason}")]
    Unsupported {
        /// Repository path of the entry.
        path: String,
        /// What is not supported.
        reason: String,
    },
    /// Invalid command-line or configuration value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The snapshot metadata database (`<root>/metadata.db`, SQLite) failed.
    #[error("snapshot metadata database: {0}")]
    SnapshotDb(#[from] rusqlite::Error),
    /// A snapshot key or name is unknown (gRPC `NotFound`, docs/lazy-snapshotters.md §1).
    #[error("snapshot {0:?} does not exist")]
    SnapshotNotFound(String),
    /// A snapshot key or name is taken (gRPC `AlreadyExists`, docs/lazy-snapshotters.md §1). Also the
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
    /// A digest (in a manifest, config or label) is not `sha256:<64 lowercase hex>`.
    #[error("{0}")]
    Digest(namespace::Error),
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
    /// A remote layer under the snapshot is not reachable: its `layerfs` directory in the
    /// repository mount is missing (mount down?) (gRPC `Unavailable`, as stargz's
    /// `checkAvailability`).
    #[error("snapshot {key:?}: remote layer {path} is unavailable")]
    SnapshotUnavailable {
        /// The snapshot asked for.
        key: String,
        /// The missing `layerfs` directory.
        path: String,
    },
    /// `pull` could not fetch or unpack a layer that is not in the repository from the
    /// image's registry (the fallback path); names the layer and what failed.
    #[error("layer {index} ({digest}) is not published and the registry fallback failed: {reason}")]
    LayerFallback {
        /// Position of the layer in the manifest, from 0.
        index: usize,
        /// Compressed layer digest.
        digest: String,
        /// What failed (HTTP, content store, diff service, digest mismatch, …).
        reason: String,
    },
}

/// A bad reference is an [`Error::ImageMetadata`] naming it, a bad `--platform` an
/// [`Error::Config`], a bad digest an [`Error::Digest`], a bad trace an [`Error::Config`].
impl From<namespace::Error> for Error {
    fn from(e: namespace::Error) -> Error {
        match e {
            namespace::Error::Reference { reference, reason } => {
                Error::ImageMetadata { reference, reason }
            }
            namespace::Error::Platform { platform, .. } => Error::Config(format!(
                "platform {platform:?} is not OS/ARCH[/VARIANT] (lower case, e.g. linux/arm64/v8)"
            )),
            digest @ namespace::Error::Digest { .. } => Error::Digest(digest),
            trace @ namespace::Error::Trace { .. } => Error::Config(trace.to_string()),
        }
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
