//! What this crate's unit tests share: the stock-written fixture repository and the
//! external tools (`openssl`, `sqlite3`) some of them check our output with.

use std::ffi::OsStr;
use std::process::{Command, Output};

/// The repository written by stock CVMFS 2.12 (`tests/data/stock-repo/README.md`):
/// `srv/` is the served tree, `stock.strata.example.pub` the master public key.
pub(crate) const STOCK_REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/stock-repo");

/// Runs `program args…` to completion. A tool that cannot be run fails the test, naming
/// it and `scripts/install-deps` (which installs it): a missing tool is never a pass.
pub(crate) fn run_tool(program: &str, args: &[&OsStr]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): install it with scripts/install-deps (as root)")
        })
}

/// Runs the `openssl` CLI; see [`run_tool`].
pub(crate) fn openssl(args: &[&OsStr]) -> Output {
    run_tool("openssl", args)
}
