//! Generated gRPC code for the containerd API (vendored protos under `proto/`, containerd
//! 1.7/2.0 `api/` tree, Apache-2.0). Modules follow the proto packages:
//!
//! * [`containerd::services::snapshots::v1`] — the `Snapshots` service we serve (`run`);
//! * [`containerd::services::content::v1`], [`containerd::services::images::v1`],
//!   [`containerd::services::leases::v1`] — clients used by `pull`;
//! * [`containerd::types`] — `Mount` and `Descriptor`.

#![allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    rustdoc::all,
    unreachable_pub
)]

include!(concat!(env!("OUT_DIR"), "/containerd_api.rs"));
