//! The integration tests of the `catalog` crate, linked as one test binary: property tests
//! of random trees written to one catalog and read back ([`tree_roundtrip`]). No network,
//! no root.

mod tree_roundtrip;
