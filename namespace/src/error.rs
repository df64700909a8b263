//! The errors of this crate: bad input, named.

/// Bad digests, references and platforms, each naming the input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a `sha256:<64 lowercase hex>` digest (or not 64 lowercase hex digits).
    #[error("invalid digest {digest:?}: {reason}")]
    Digest {
        /// The input.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An image reference that does not parse or normalise.
    #[error("invalid image reference {reference:?}: {reason}")]
    Reference {
        /// The input.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A platform that is not `os/architecture[/variant]`.
    #[error("invalid platform {platform:?}: {reason}")]
    Platform {
        /// The input.
        platform: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An access trace that does not parse.
    #[error("access trace {trace}: {reason}")]
    Trace {
        /// The trace file (or a label for trace text given in memory).
        trace: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
