//! The framing shared by `.cvmfspublished` and `.cvmfswhitelist` (docs/format.md §7.2, §7.4):
//! body lines, a `--` line, the hex hash of the body, then a binary signature.

use crate::hash::{ContentHash, HashAlgorithm};

/// A signed text file split into its parts.
pub(crate) struct Framed<'a> {
    /// Everything up to and including the newline before `--\n`.
    pub body: &'a [u8],
    /// The hex hash line (without newline).
    pub hash_hex: &'a str,
    /// The signature bytes, to the end of the file.
    pub signature: &'a [u8],
}

/// Splits `bytes` at the first line that is exactly `--`. Returns a description of the
/// problem on failure.
pub(crate) fn split(bytes: &[u8]) -> Result<Framed<'_>, String> {
    let mut pos = 0;
    let sep = loop {
        if pos >= bytes.len() {
            return Err("no \"--\" line".into());
        }
        if bytes[pos..].starts_with(b"--\n") {
            break pos;
        }
        match bytes[pos..].iter().position(|b| *b == b'\n') {
            Some(i) => pos += i + 1,
            None => return Err("no \"--\" line".into()),
        }
    };
    let body = &bytes[..sep];
    let rest = &bytes[sep + 3..];
    let nl = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no newline after the hash line")?;
    let hash_hex =
        std::str::from_utf8(&rest[..nl]).map_err(|_| "hash line is not ASCII".to_string())?;
    Ok(Framed {
        body,
        hash_hex,
        signature: &rest[nl + 1..],
    })
}

/// The algorithm implied by a hex hash line's length (docs/format.md §2.3), `None` if unknown.
pub(crate) fn algorithm_of_hex(hex: &str) -> Option<HashAlgorithm> {
    ContentHash::parse_hex(hex).ok().map(|h| h.algorithm)
}

/// Body text lines, without their newlines, empty lines skipped.
pub(crate) fn lines(body: &str) -> impl Iterator<Item = &str> {
    body.split('\n').filter(|l| !l.is_empty())
}
