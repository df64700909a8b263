//! Arbitrary bytes as a stored object (docs/format.md §3): bounded inflate, streaming verify+inflate
//! (compressed and raw), and a round trip of the bytes through compress and the chunker.
//! Any outcome but a panic is fine; round trips must be exact.
#![no_main]

use catalog::{ContentHash, HashAlgorithm};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = catalog::decompress(data, 1 << 20);
    let _ = catalog::decode(data, false, 1 << 20);
    let h = ContentHash::of_bytes(HashAlgorithm::Sha1, data);
    let _ = catalog::verify_and_inflate(data, std::io::sink(), &h, true);
    let _ = catalog::verify_and_inflate(data, std::io::sink(), &h, false);
    // Truncations of a valid stream must fail cleanly.
    let z = catalog::compress(data);
    assert_eq!(
        catalog::decompress(&z, data.len() as u64).expect("round trip"),
        data
    );
    let cut = data.len() % z.len();
    let _ = catalog::decompress(&z[..cut], 1 << 20);
    // The chunker with small parameters: cut points are strictly increasing and in range.
    let p = catalog::ChunkParams::new(32, 64, 128).expect("params");
    let cuts = catalog::chunking::cut_points(data, p).expect("cuts");
    let mut last = 0;
    for c in cuts {
        assert!(c > last && c < data.len() as u64 && c - last <= 128);
        last = c;
    }
});
