//! Test data kept in the repository, for the tests of every crate.

use std::path::PathBuf;

/// The fqrn of [`stock_repo`].
pub const STOCK_FQRN: &str = "stock.strata.example";

/// The repository written by stock CVMFS 2.12 tools, kept at
/// `catalog/tests/data/stock-repo` (see its README): `srv/` is the served tree,
/// `stock.strata.example.pub` the master public key. Its whitelist expires on
/// 2026-12-29: a mount of it needs `--accept-expired-whitelist` after that.
pub fn stock_repo() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../catalog/tests/data/stock-repo"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stock_repository_is_in_the_repository() {
        let repo = stock_repo();
        assert!(
            repo.join("srv/.cvmfspublished").is_file(),
            "{}",
            repo.display()
        );
        assert!(repo.join("srv/.cvmfswhitelist").is_file());
        assert!(repo.join(format!("{STOCK_FQRN}.pub")).is_file());
    }
}
