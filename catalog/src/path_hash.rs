//! Catalog path keys: MD5 of the absolute repository path split into two little-endian
//! signed 64-bit halves (docs/format.md §6.5).

use md5::{Digest, Md5};

/// The `(md5path_1, md5path_2)` or `(parent_1, parent_2)` pair of a catalog row.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct PathHash(pub i64, pub i64);

impl PathHash {
    /// Splits a 16-byte MD5 digest into the two little-endian signed halves.
    pub fn from_md5(digest: [u8; 16]) -> PathHash {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&digest[..8]);
        hi.copy_from_slice(&digest[8..]);
        PathHash(i64::from_le_bytes(lo), i64::from_le_bytes(hi))
    }

    /// The 16 MD5 bytes again (inverse of [`PathHash::from_md5`]).
    pub fn to_md5(self) -> [u8; 16] {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&self.0.to_le_bytes());
        d[8..].copy_from_slice(&self.1.to_le_bytes());
        d
    }
}

/// Path key of `path`: MD5 of its bytes (the bytes it stands for, [`crate::names`]). `""`
/// is the repository root; paths are absolute, `/`-separated, without trailing slash
/// (docs/format.md §6.5).
pub fn path_hash(path: &str) -> PathHash {
    PathHash::from_md5(Md5::digest(crate::names::to_bytes(path)).into())
}

/// Parent key of `path`: the path hash of [`parent_path`], except for the root, whose parent
/// is the all-zero `PathHash(0, 0)` (docs/format.md §6.5).
pub fn parent_hash(path: &str) -> PathHash {
    if path.is_empty() {
        PathHash(0, 0)
    } else {
        path_hash(parent_path(path))
    }
}

/// Everything before the last `/`: `"/a/b"` → `"/a"`, `"/a"` → `""`, `""` → `""`.
pub fn parent_path(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[..i],
        None => "",
    }
}

/// The last component of `path`: `"/a/b"` → `"b"`, `""` → `""`.
pub fn file_name(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_11_1_vectors() {
        let rows: [(&str, i64, i64, i64, i64); 7] = [
            ("", 338333539836370388, 9098107892288553193, 0, 0),
            (
                "/a",
                -2906336618250618618,
                -744252105585281751,
                338333539836370388,
                9098107892288553193,
            ),
            (
                "/usr",
                4261349461019561853,
                8805651796865472228,
                338333539836370388,
                9098107892288553193,
            ),
            (
                "/usr/bin",
                -6332405977853062539,
                -3354531661490446888,
                4261349461019561853,
                8805651796865472228,
            ),
            (
                "/usr/bin/bash",
                5447899406954305397,
                -3072467430493135652,
                -6332405977853062539,
                -3354531661490446888,
            ),
            (
                "/software",
                3445601412511816508,
                6267067367417020806,
                338333539836370388,
                9098107892288553193,
            ),
            (
                "/software/v1",
                5933606009665733622,
                -8320353742129006166,
                3445601412511816508,
                6267067367417020806,
            ),
        ];
        for (path, m1, m2, p1, p2) in rows {
            assert_eq!(path_hash(path), PathHash(m1, m2), "{path}");
            assert_eq!(parent_hash(path), PathHash(p1, p2), "{path}");
        }
        assert_eq!(
            hex::encode(path_hash("").to_md5()),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
    }

    #[test]
    fn parents_and_names() {
        assert_eq!(parent_path("/a/b"), "/a");
        assert_eq!(parent_path("/a"), "");
        assert_eq!(parent_path(""), "");
        assert_eq!(file_name("/a/b"), "b");
        assert_eq!(file_name("/a"), "a");
        assert_eq!(file_name(""), "");
    }
}
