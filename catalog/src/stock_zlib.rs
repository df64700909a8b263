//! C zlib, byte for byte as stock CVMFS writes it, for the objects stock tools re-create
//! from their content under the name they already had.
//!
//! An object's name is the hash of its stored (compressed) bytes (docs/format.md §2.2). Most objects
//! pass through stock tools untouched, but a few are inflated and compressed again with C
//! zlib at `Z_DEFAULT_COMPRESSION` (level 6) and then stored **under the old name**:
//!
//! | object | stock code that re-creates it (CernVM-FS 2.12) |
//! |---|---|
//! | certificate (`X`) | `cvmfs/swissknife_pull.cc`, `CommandPull::Main`: `StoreBuffer(ensemble.cert_buf, …, manifest->certificate(), true)` re-compresses the PEM the manifest fetch inflated (`cvmfs_server snapshot`, `add-replica`) |
//! | meta-info (`M`) | same file: the meta-info is downloaded inflated and stored with `StoreBuffer(info, …, meta_info_hash, true)` |
//!
//! (`StoreBuffer` calls `zlib::CompressMem2File` of `cvmfs/compression/compression.cc`:
//! `deflateInit(Z_DEFAULT_COMPRESSION)`, input fed with `Z_NO_FLUSH`, ended with
//! `Z_FINISH`.) Catalogs, history databases, file objects and chunks are copied as served
//! (`Store(...)` of the downloaded file), and `resign`, `gc` and `check` only read, delete
//! or re-sign; stock publishing (`cvmfs_swissknife sign`) re-creates the certificate too,
//! but names it by its new hash.
//!
//! If the publisher's bytes for such an object differ from C zlib's, the replica holds
//! bytes that do not hash to the name the manifest gives, and no client can mount it. So
//! the publisher writes them with C zlib (through `libz-sys`, the crate flate2's C backend
//! uses) whatever flate2 backend the build has: zlib-rs, the default, is much faster for
//! file objects but its streams differ from C zlib's.
//!
//! The same concern reaches the stock client's cache tools, which re-compress every cached
//! object to check it (`cvmfs/cvmfs_fsck.cc`, `CompressFd2Null`; the `user.lhash` magic
//! xattr, `cvmfs/cache.cc` `ChecksumFd`): with the default backend they report the
//! publisher's file objects and catalogs as mismatching (`cvmfs_fsck -f` moves them to
//! quarantine, the client downloads them again). The `zlib-compat` feature makes every
//! object C zlib.

#![allow(unsafe_code)]

use crate::hash::Suffix;

/// The level stock CVMFS compresses with (`Z_DEFAULT_COMPRESSION`, docs/format.md §3.1).
const LEVEL: i32 = 6;

/// Whether stock tools re-create objects with `suffix` from their content under the same
/// name (see the module docs): such objects must be written with [`compress`].
pub fn recreated_by_stock(suffix: Suffix) -> bool {
    matches!(suffix, Suffix::Certificate | Suffix::MetaInfo)
}

/// Compresses `raw` into one zlib stream with C zlib at level 6: the bytes stock CVMFS
/// (`zlib::CompressMem2File`) writes for the same content.
pub fn compress(raw: &[u8]) -> Vec<u8> {
    let source_len = libz_sys::uLong::try_from(raw.len())
        .unwrap_or_else(|_| panic!("{} bytes exceed C zlib's uLong", raw.len()));
    // SAFETY: compressBound only computes a size.
    let bound = unsafe { libz_sys::compressBound(source_len) };
    let mut out = vec![0u8; usize::try_from(bound).unwrap_or(usize::MAX)];
    let mut out_len = bound;
    // SAFETY: `out` is writable for `out_len` bytes and `raw` readable for `source_len`
    // bytes; compress2 writes at most `out_len` bytes and stores the length it wrote.
    let rc = unsafe {
        libz_sys::compress2(
            out.as_mut_ptr(),
            &mut out_len,
            raw.as_ptr(),
            source_len,
            LEVEL,
        )
    };
    // compress2 fails only for lack of memory or with an output buffer smaller than
    // compressBound, which it is not.
    assert_eq!(rc, libz_sys::Z_OK, "C zlib compress2 failed ({rc})");
    out.truncate(usize::try_from(out_len).unwrap_or(out.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::decompress;

    #[test]
    fn matches_stock_vectors() {
        // docs/format.md §3.1 / §11.2 (Python zlib 1.2.13, the routine stock CVMFS calls)
        assert_eq!(
            hex::encode(compress(b"hello\n")),
            "789ccb48cdc9c9e70200084b021f"
        );
        assert_eq!(
            compress(b""),
            [0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]
        );
    }

    #[test]
    fn round_trips_and_is_deterministic() {
        for size in [0usize, 1, 1000, 16_384, 16_385, 300_000] {
            let raw: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let z = compress(&raw);
            assert_eq!(decompress(&z, size as u64).unwrap(), raw);
            assert_eq!(compress(&decompress(&z, size as u64).unwrap()), z);
        }
    }

    #[test]
    fn only_certificate_and_meta_info_are_recreated() {
        let all = [
            Suffix::None,
            Suffix::Catalog,
            Suffix::Partial,
            Suffix::Certificate,
            Suffix::History,
            Suffix::MetaInfo,
        ];
        let recreated: Vec<_> = all.into_iter().filter(|s| recreated_by_stock(*s)).collect();
        assert_eq!(recreated, [Suffix::Certificate, Suffix::MetaInfo]);
    }
}
