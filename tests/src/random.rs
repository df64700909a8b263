//! Deterministic pseudo-random bytes for test inputs: the one generator of the workspace's
//! tests (file contents zlib cannot shrink, data content-defined chunking cuts as real
//! data, distinct objects from distinct seeds).

/// `len` deterministic pseudo-random bytes from `seed` (xorshift64*, the seed spread by the
/// golden-ratio multiplier so that nearby seeds start far apart).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_distinct_per_seed_and_incompressible() {
        let a = pseudo_random(1000, 7);
        assert_eq!(a, pseudo_random(1000, 7));
        assert!(a.iter().any(|b| *b != a[0]));
        // Neighbouring seeds (tests use `i + 100`, `i + 200`…) give different bytes.
        let firsts: std::collections::BTreeSet<Vec<u8>> =
            (0..1000).map(|seed| pseudo_random(64, seed)).collect();
        assert_eq!(firsts.len(), 1000);
        // A prefix of a longer stream is the shorter one.
        assert_eq!(pseudo_random(13, 5)[..], pseudo_random(100, 5)[..13]);
        let data = pseudo_random(100_000, 1);
        let packed = catalog::compress(&data);
        assert!(packed.len() > data.len() * 99 / 100, "{}", packed.len());
    }
}
