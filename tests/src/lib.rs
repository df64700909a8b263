//! End-to-end harness for Strata: runs the real parts together on 127.0.0.1 — Debian's
//! `docker-registry`, an image built from real Debian packages and pushed with `skopeo`,
//! `strata-publisher init/ingest/serve`, `strata-snapshotter mount/run/pull`, a private
//! containerd 1.6 with `runc` — with no mocks.
//!
//! * [`process`]: services killed on drop, commands with timeouts, logs kept in files;
//! * [`workdir`]: the per-test directory (logs, sockets, mounts), torn down on drop;
//! * [`registry`], [`containerd`], [`strata`]: one type per running component;
//! * [`cri`]: the kubelet's image calls (CRI `PullImage`, `ImageStatus`);
//! * [`image`]: the cached three-layer test image (debootstrap, apt, whiteouts);
//! * [`scenario`]: the main job (publish, mount, pull, run), shared by the e2e test and `strata-demo`;
//! * [`relay`]: a TCP relay that adds latency (benches at a distance);
//! * [`measure`]: what the benches measure (wall time, peak RSS, load, the machine);
//! * [`stock`]: a stock `cvmfs2` mount beside Strata's (benches);
//! * [`random`]: the one generator of pseudo-random test data;
//! * [`keeper`]: `mount --keeper`, its worker and their takeovers (kill, upgrade);
//! * [`wait`]: the one poll loop (a condition, a timeout naming what was awaited);
//! * [`runtimes`]: containerd 1.7/2.x and the sid root with Apptainer and podman
//!   (`scripts/install-runtimes`).
//!
//! Everything here needs root, `/dev/fuse` and the packages of `scripts/install-deps`;
//! [`binaries::check_prerequisites`] turns a missing piece into an error, never a skip.

pub mod binaries;
pub mod catalog_tree;
pub mod containerd;
pub mod cri;
pub mod error;
pub mod fixtures;
pub mod fstree;
pub mod fswalk;
pub mod image;
pub mod keeper;
pub mod measure;
pub mod mounts;
pub mod net;
pub mod node;
pub mod process;
pub mod random;
pub mod registry;
pub mod relay;
pub mod runtimes;
pub mod scenario;
pub mod steps;
pub mod stock;
pub mod strata;
pub mod tar_tree;
pub mod wait;
pub mod workdir;

pub use error::{Error, Result, ok};
