//! `strata-publisher`: turns OCI/Docker images into a CernVM-FS repository and serves it.
//!
//! * [`publish::init`] creates a repository (keys, whitelist, revision 0);
//! * [`ingest::ingest`] converts images from [`source`]s — registries or OCI layouts — into
//!   layer catalogs ([`layer`]), flattened images ([`flatten`]) and the namespace of
//!   docs/CONTRACTS.md §3, then publishes one new revision ([`publish`]);
//! * [`serve::serve`] serves the result as static files with CVMFS cache headers;
//! * [`cli`] is the `strata-publisher` command line over these.
//!
//! The in-memory namespace is a [`tree::Node`] tree of catalog rows; the CVMFS format itself
//! (objects, catalogs, manifest, signatures) is the `catalog` crate's.

#![warn(missing_docs)]

pub mod catalog_view;
pub mod cli;
pub mod decompress;
pub mod digest;
pub mod entry_codec;
pub mod error;
pub mod events;
pub mod flatten;
pub mod gc;
pub mod ingest;
pub mod layer;
pub mod listing;
pub mod objects;
pub mod pipeline;
pub mod podman_store;
pub mod progress;
pub mod publish;
pub mod recipe;
pub mod record;
pub mod reference;
pub mod removal;
pub mod repo;
pub mod serve;
pub mod singularity;
pub mod source;
pub mod sparse;
pub mod staging;
pub mod startup;
pub mod sync;
pub mod tree;
pub mod verify;

pub use error::{Error, Result};
