//! The one error type of the `publisher` crate.

use std::path::PathBuf;

/// `Result` with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while creating, filling or serving a repository.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The CVMFS format layer failed (catalog, object, signature …).
    #[error(transparent)]
    Catalog(#[from] catalog::Error),
    /// `init` was pointed at a directory that already holds a repository.
    #[error("{0} is already a repository")]
    AlreadyRepository(PathBuf),
    /// A repository name (fqrn) that CVMFS does not accept.
    #[error(
        "invalid repository name {0:?}: it must be dot-separated labels of [a-z0-9-], e.g. images.example.org"
    )]
    InvalidFqrn(String),
    /// The directory is not a repository made by `init`, or its layout is damaged.
    #[error("{path} is not a usable repository: {reason}")]
    NotRepository {
        /// The `--repo` directory.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// An image reference (`docker://…`, `oci:…`, `--name`) could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    Reference {
        /// The text given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A digest (in a manifest, config, index or layer record) is not `sha256:<64 lowercase
    /// hex>`, so it cannot name anything in the namespace.
    #[error("{0}")]
    Digest(namespace::Error),
    /// The registry client failed (HTTP, auth, registry error document).
    #[error("registry error for {image}: {source}")]
    Registry {
        /// The image being fetched.
        image: String,
        /// The client error.
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    /// An image manifest, index or config is malformed or unsupported.
    #[error("image {image}: {reason}")]
    Image {
        /// The image reference.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// Bytes fetched do not match the digest that names them.
    #[error("image {image}: {what} digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The image reference.
        image: String,
        /// Which blob (e.g. `layer sha256:… compressed`, `config`).
        what: String,
        /// The digest the manifest or config promised.
        expected: String,
        /// The digest of the bytes seen.
        actual: String,
    },
    /// A layer tarball holds something we refuse (path escaping the root, dangling hard link,
    /// sparse file, undecodable data …).
    #[error("image {image}, layer {layer}, entry {entry:?}: {reason}")]
    Layer {
        /// The image reference.
        image: String,
        /// The layer digest (`sha256:…`).
        layer: String,
        /// The tar entry path as found in the archive (empty if not at an entry).
        entry: String,
        /// What is wrong.
        reason: String,
    },
    /// JSON (settings, layer facts) could not be read or written.
    #[error("{context}: {source}")]
    Json {
        /// What was being parsed or written.
        context: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A sync recipe (DUCC wishlist format) could not be read or is invalid.
    #[error("recipe {file}: {reason}")]
    Recipe {
        /// The recipe file (or a label for recipe text given in memory).
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
    /// SQLite on a database the publisher opens itself: the scratch database a layer is
    /// staged in ([`crate::staging`]), or a catalog file read directly
    /// ([`crate::catalog_view`]).
    #[error("SQLite database {}: {source}", file.display())]
    Sqlite {
        /// The database file.
        file: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// A row of a layer's scratch database ([`crate::staging`]) could not be decoded (the
    /// file was damaged while the layer was being converted).
    #[error("staging database {}: row {path:?}: {reason}", file.display())]
    Staging {
        /// The database file.
        file: PathBuf,
        /// The row's path below the layer root.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// What a command was doing when `source` happened (the command line's outermost
    /// message, e.g. `ingesting into DIR`).
    #[error("{context}")]
    Context {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: Box<Error>,
    },
    /// The command line asks for something it does not give enough to do.
    #[error("{0}")]
    Usage(String),
    /// `verify` found faults (each one is printed as it is found).
    #[error("revision {revision} of {repo}: {count} fault(s)")]
    Faults {
        /// The repository directory or URL, as given.
        repo: String,
        /// The revision checked.
        revision: u64,
        /// Number of faults.
        count: usize,
    },
    /// A `sync` pass in which images or recipe entries failed (each one is reported).
    #[error("{0} image(s) or recipe entries failed")]
    SyncFailed(usize),
}

impl Error {
    /// `self` as the source of an [`Error::Context`] saying what was being done.
    pub fn context(self, context: impl Into<String>) -> Error {
        Error::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps a JSON error with a description of what was being done.
    pub fn json(context: impl Into<String>, source: serde_json::Error) -> Error {
        Error::Json {
            context: context.into(),
            source,
        }
    }
}

/// Bad references and platforms keep the publisher's [`Error::Reference`] (`--platform`,
/// `--name`, recipes); a bad digest is an [`Error::Digest`]; a bad access trace an
/// [`Error::Usage`] naming the file.
impl From<namespace::Error> for Error {
    fn from(e: namespace::Error) -> Error {
        match e {
            namespace::Error::Reference { reference, reason } => {
                Error::Reference { reference, reason }
            }
            namespace::Error::Platform { platform, reason } => Error::Reference {
                reference: platform,
                reason,
            },
            digest @ namespace::Error::Digest { .. } => Error::Digest(digest),
            namespace::Error::Trace { trace, reason } => {
                Error::Usage(format!("access trace {trace}: {reason}"))
            }
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Error {
        Error::Task(e.to_string())
    }
}
