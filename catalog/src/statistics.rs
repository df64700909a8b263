//! The 24 `statistics` counters of a catalog (docs/format.md §6.13).

use std::ops::{Add, AddAssign};

/// One set of the twelve counters (either the `self_` or the `subtree_` half).
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    /// Regular files, including chunked and external ones.
    pub regular: i64,
    /// Symbolic links.
    pub symlink: i64,
    /// FIFOs, sockets, char and block devices.
    pub special: i64,
    /// Directories, including the catalog's root entry and nested mountpoints.
    pub dir: i64,
    /// Rows in `nested_catalogs` (direct children).
    pub nested: i64,
    /// Chunked regular files.
    pub chunked: i64,
    /// Rows in `chunks`.
    pub chunks: i64,
    /// Σ size of regular files, bytes.
    pub file_size: i64,
    /// Σ size of chunked files, bytes.
    pub chunked_size: i64,
    /// Entries with a non-NULL `xattr`.
    pub xattr: i64,
    /// External files.
    pub external: i64,
    /// Σ size of external files, bytes.
    pub external_file_size: i64,
}

/// The counter names without prefix, in the order stock CVMFS lists them.
pub const COUNTER_NAMES: [&str; 12] = [
    "regular",
    "symlink",
    "special",
    "dir",
    "nested",
    "chunked",
    "chunks",
    "file_size",
    "chunked_size",
    "xattr",
    "external",
    "external_file_size",
];

impl Counters {
    /// The values in [`COUNTER_NAMES`] order.
    pub fn values(&self) -> [i64; 12] {
        [
            self.regular,
            self.symlink,
            self.special,
            self.dir,
            self.nested,
            self.chunked,
            self.chunks,
            self.file_size,
            self.chunked_size,
            self.xattr,
            self.external,
            self.external_file_size,
        ]
    }

    /// Sets the counter called `name` (without prefix); returns false for unknown names.
    pub fn set(&mut self, name: &str, value: i64) -> bool {
        let slot = match name {
            "regular" => &mut self.regular,
            "symlink" => &mut self.symlink,
            "special" => &mut self.special,
            "dir" => &mut self.dir,
            "nested" => &mut self.nested,
            "chunked" => &mut self.chunked,
            "chunks" => &mut self.chunks,
            "file_size" => &mut self.file_size,
            "chunked_size" => &mut self.chunked_size,
            "xattr" => &mut self.xattr,
            "external" => &mut self.external,
            "external_file_size" => &mut self.external_file_size,
            _ => return false,
        };
        *slot = value;
        true
    }
}

impl Add for Counters {
    type Output = Counters;
    fn add(self, o: Counters) -> Counters {
        let mut r = self;
        r += o;
        r
    }
}

impl AddAssign for Counters {
    fn add_assign(&mut self, o: Counters) {
        self.regular += o.regular;
        self.symlink += o.symlink;
        self.special += o.special;
        self.dir += o.dir;
        self.nested += o.nested;
        self.chunked += o.chunked;
        self.chunks += o.chunks;
        self.file_size += o.file_size;
        self.chunked_size += o.chunked_size;
        self.xattr += o.xattr;
        self.external += o.external;
        self.external_file_size += o.external_file_size;
    }
}

/// A catalog's statistics: its own rows (`self_`) and all descendant catalogs (`subtree`,
/// = Σ over direct children of child `self_ + subtree`).
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Statistics {
    /// Counters over this catalog's own tables.
    pub self_: Counters,
    /// Counters over all descendant catalogs.
    pub subtree: Counters,
}

impl Statistics {
    /// What a parent adds to its `subtree` for this child: `self_ + subtree`.
    pub fn total(&self) -> Counters {
        self.self_ + self.subtree
    }

    /// All 24 `(counter, value)` rows as stored in the `statistics` table
    /// (`self_regular`, …, `subtree_external_file_size`).
    pub fn rows(&self) -> Vec<(String, i64)> {
        let mut rows = Vec::with_capacity(24);
        for (prefix, c) in [("self_", &self.self_), ("subtree_", &self.subtree)] {
            for (name, value) in COUNTER_NAMES.iter().zip(c.values()) {
                rows.push((format!("{prefix}{name}"), value));
            }
        }
        rows
    }

    /// Sets the counter named as in the `statistics` table; false for unknown names.
    pub fn set(&mut self, counter: &str, value: i64) -> bool {
        if let Some(n) = counter.strip_prefix("self_") {
            self.self_.set(n, value)
        } else if let Some(n) = counter.strip_prefix("subtree_") {
            self.subtree.set(n, value)
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let mut s = Statistics::default();
        s.self_.regular = 3;
        s.self_.external_file_size = 9;
        s.subtree.dir = 7;
        let rows = s.rows();
        assert_eq!(rows.len(), 24);
        assert_eq!(rows[0], ("self_regular".to_string(), 3));
        assert_eq!(rows[23], ("subtree_external_file_size".to_string(), 0));
        let mut back = Statistics::default();
        for (k, v) in &rows {
            assert!(back.set(k, *v));
        }
        assert_eq!(back, s);
        assert!(!back.set("self_bogus", 1));
        assert!(!back.set("bogus", 1));
        assert_eq!(s.total().dir, 7);
        assert_eq!(s.total().regular, 3);
    }
}
