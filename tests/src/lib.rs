//! End-to-end harness for Strata: runs the real parts together on 127.0.0.1 — Debian's
//! `docker-registry`, an image built from real Debian packages and pushed with `skopeo`,
//! `strata-publisher init/ingest/serve`, `strata-snapshotter mount/run/pull`, a private
//! containerd 1.6 with `runc` — with no mocks.
//!
//! * [`process`]: services killed on drop, commands with timeouts, logs kept in files;
//! * [`workdir`]: the per-test directory (logs, sockets, mounts), torn down on drop;
//! * [`registry`], [`containerd`], [`strata`]: one type per running component;
//! * [`image`]: the cached three-layer test image (debootstrap, apt, whiteouts);
//! * [`scenario`]: the main job of issue 2, shared by the e2e test and `strata-demo`.
//!
//! Everything here needs root, `/dev/fuse` and the packages of `scripts/install-deps`;
//! [`binaries::check_prerequisites`] turns a missing piece into an error, never a skip.

pub mod binaries;
pub mod catalog_tree;
pub mod containerd;
pub mod error;
pub mod fstree;
pub mod fswalk;
pub mod image;
pub mod mounts;
pub mod net;
pub mod process;
pub mod registry;
pub mod scenario;
pub mod steps;
pub mod strata;
pub mod tar_tree;
pub mod workdir;

pub use error::{Error, Result};
