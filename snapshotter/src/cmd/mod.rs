//! The `strata-snapshotter` commands, one module each: what a command parses, boots and
//! serves until it is stopped; the work itself is in [`crate::client`], [`crate::fuse`],
//! [`crate::containerd`] and [`crate::pull`].
//!
//! * [`mount`] — boot a repository with the [`crate::client`] and serve it through
//!   [`crate::fuse`] (plus live updates);
//! * [`run`] — serve the [`crate::containerd`] proxy snapshotter on a unix socket;
//! * [`pull`] — put an image into containerd with [`crate::pull`];
//! * [`cache`] — show or empty a cache directory ([`crate::client::quota`]);
//! * [`prefetch`] — ask the mount for an image's startup packs ([`crate::client::startup`]);
//! * [`page_fill_reader`] — (hidden) read started chunked programs through a mount for
//!   its page-cache fill ([`crate::fuse::PageFill`]);
//! * [`readiness`] — the systemd notification `mount` and `run` send once they serve.

pub mod cache;
pub mod mount;
pub mod page_fill_reader;
pub mod prefetch;
pub mod pull;
pub mod readiness;
pub mod run;
