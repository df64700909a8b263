//! The integration tests of `strata-snapshotter`, linked as one test binary: the FUSE
//! `mount` against repositories served over HTTP ([`mount`]), through Squid and failing
//! proxies ([`squid`]), and `run`/`pull` under a private containerd ([`containerd`]), some
//! on the real registry, publisher and mount stack.
//!
//! Needs root, `/dev/fuse` and the tools `scripts/install-deps` installs (containerd, `ctr`,
//! runc, Squid, `docker-registry`, `skopeo`); a missing one fails the tests that use it.

mod support;

mod containerd;
mod handover;
mod mount;
mod squid;
