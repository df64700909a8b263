//! The image namespace Strata publishes in a CVMFS repository (docs/CONTRACTS.md §3), in
//! one place for the publisher that writes it and the snapshotter that reads it:
//!
//! * [`digest`]: typed OCI digests (`sha256:<64 lowercase hex>`), validated once where they
//!   enter, so that a malformed label or digest can never reach a path;
//! * [`chain_id`]: OCI ChainIDs of a layer stack;
//! * [`reference`](mod@reference): image references and their normalisation to public names;
//! * [`platform`]: OCI platforms and how they are matched;
//! * [`paths`]: where layers, ChainIDs, flattened images and metadata live;
//! * [`trace`]: the text of an access trace (what a start reads, in order).
//!
//! No network and no file system access: only names.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chain_id;
pub mod digest;
mod error;
pub mod paths;
pub mod platform;
pub mod reference;
pub mod trace;

pub use chain_id::{chain_ids, top_chain_id};
pub use digest::{Digest, Sha256Hex};
pub use error::{Error, Result};
pub use platform::{Platform, PlatformFilter};
pub use reference::ImageName;
