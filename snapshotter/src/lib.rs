//! `strata-snapshotter`: the node side of Strata.
//!
//! Two long-lived processes share this crate:
//!
//! * `strata-snapshotter mount` — the FUSE client of a CernVM-FS repository
//!   ([`fetch`] over HTTP, a verified content-addressed [`cache`], the [`repository`]
//!   view of manifest and catalogs, and the [`fuse`] file system);
//! * `strata-snapshotter run` — the containerd proxy snapshotter ([`api`] is the
//!   generated gRPC code, [`snapshots`] the metadata store, [`service`] the
//!   `containerd.services.snapshots.v1.Snapshots` implementation);
//!
//! and `strata-snapshotter pull` ([`pull`]) puts a published image into containerd
//! without downloading its layers.

pub mod error;

pub use error::{Error, Result};

pub mod api;
pub mod breadcrumb;
pub mod cache;
pub mod cache_cmd;
pub mod catalog_counters;
pub mod config;
pub mod fetch;
pub mod fuse;
pub mod metrics;
pub mod mount;
pub mod mounts;
pub mod proxy;
pub mod pull;
pub mod quota;
pub mod readiness;
pub mod repository;
pub mod service;
pub mod snapshots;
