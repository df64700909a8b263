//! `strata-snapshotter`: the node side of Strata.
//!
//! One binary, four commands ([`cmd`]); the folders follow the processes they run in:
//!
//! * `strata-snapshotter mount` ([`cmd::mount`]) — the CernVM-FS client: [`client`] fetches
//!   over HTTP through a proxy chain, keeps a verified content-addressed cache with a
//!   quota, verifies the manifest chain and opens one revision's catalogs; [`fuse`] serves
//!   that revision read-only to the kernel and switches revisions on live updates;
//! * `strata-snapshotter run` ([`cmd::run`]) — the containerd proxy snapshotter
//!   ([`containerd`]): the `Snapshots` gRPC service, the snapshot store, the overlay mounts
//!   of remote layers from the repository mount, metrics;
//! * `strata-snapshotter pull` ([`cmd::pull`]) — [`pull`] puts a published image into
//!   containerd without downloading its layers;
//! * `strata-snapshotter cache` ([`cmd::cache`]) — inspects a cache directory.
//!
//! [`catalog_counters`] is the one contract between the two processes (the magic xattr
//! `mount` serves and `run` reads); [`error`] is the crate's one error type.

#![warn(missing_docs)]

pub mod error;

pub use error::{Error, Result};

pub mod catalog_counters;
pub mod client;
pub mod cmd;
pub mod containerd;
pub mod fuse;
pub mod keeper;
pub mod pull;
