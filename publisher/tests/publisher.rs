//! The integration tests of `strata-publisher`, linked as one test binary: the command line
//! as operators run it ([`cli`]), `sync` and `gc` against a real registry ([`sync`]), a
//! retained revision mounted after `gc` ([`gc_mount`]), startup packs from an access trace
//! ([`startup`]), and what a stock Stratum-1
//! replication does to every object ([`stock_replication`]).
//!
//! Needs root, `/dev/fuse` and the tools `scripts/install-deps` installs (`docker-registry`,
//! `skopeo`, `python3`); a missing one fails the tests that use it.

mod support;

mod cli;
mod gc_mount;
mod podman_store;
mod startup;
mod stock_replication;
mod sync;
