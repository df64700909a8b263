//! The containerd proxy snapshotter behind `strata-snapshotter run`: the plugin containerd
//! reaches through its `proxy_plugins` configuration (not to be confused with the HTTP
//! proxies of [`crate::client::proxy_chain`]).
//!
//! * [`api`] — the generated gRPC code of the containerd API (also used by `pull`);
//! * [`service`] — the `containerd.services.snapshots.v1.Snapshots` gRPC service;
//! * [`snapshots`] — the snapshot state machine, its SQLite metadata store and the
//!   remote-snapshot handshake against the repository mount;
//! * [`overlay_mounts`] — the overlayfs mount lists handed to containerd for a snapshot;
//! * [`metrics`] — the Prometheus counters of `run`;
//! * [`run_config`] — `run`'s TOML configuration file.

pub mod api;
pub mod metrics;
pub mod overlay_mounts;
pub mod run_config;
pub mod service;
pub mod snapshots;
