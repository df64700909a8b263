//! Names and paths that are not UTF-8.
//!
//! A Linux file name is any byte string without `/` and NUL, and a layer tar may carry
//! such names (Latin-1 names from old archives); containerd unpacks them as they are, and
//! stock CVMFS stores catalog names and symlink targets as raw bytes in `TEXT` columns and
//! hashes paths over their bytes (docs/format.md §6.5). Inside Strata names and paths are
//! Rust `String`s; this module is the one place where bytes become such a string and back:
//!
//! * valid UTF-8 stays as it is, except the escape character itself;
//! * a byte that is not part of valid UTF-8 becomes [`ESCAPE`] followed by two lowercase
//!   hex digits (`caf\xe9` → `caf\u{FDD0}e9`);
//! * [`ESCAPE`] (U+FDD0, a noncharacter no real name uses) becomes [`ESCAPE`] twice.
//!
//! Different bytes give different names ([`to_bytes`] ∘ [`from_bytes`] is the identity);
//! the mapping is the identity on every UTF-8 name without U+FDD0, and compatible with
//! splitting at `/` (an ASCII byte is never part of a multi-byte sequence or an escape).
//! [`to_bytes`] reads only what [`from_bytes`] writes (lowercase hex); any other use of
//! U+FDD0 stands for itself.
//! The edges that convert: the publisher reading tar names and link targets, the catalog
//! writer and reader (`TEXT` columns, path hashes), the FUSE mount (lookups, listings,
//! symlink targets).

use std::borrow::Cow;

/// The escape character: U+FDD0.
pub const ESCAPE: char = '\u{FDD0}';

/// `bytes` as a Strata name or path (see the module documentation).
pub fn from_bytes(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes)
        && !text.contains(ESCAPE)
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            out.push(c);
            if c == ESCAPE {
                out.push(ESCAPE);
            }
        }
        for b in chunk.invalid() {
            out.push(ESCAPE);
            out.push_str(&format!("{b:02x}"));
        }
    }
    Cow::Owned(out)
}

/// The bytes a Strata name or path stands for (inverse of [`from_bytes`]). An escape not
/// followed by [`ESCAPE`] or two hex digits (never made by [`from_bytes`]) stays as it is.
pub fn to_bytes(name: &str) -> Cow<'_, [u8]> {
    if !name.contains(ESCAPE) {
        return Cow::Borrowed(name.as_bytes());
    }
    let mut out = Vec::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find(ESCAPE) {
        out.extend_from_slice(&rest.as_bytes()[..at]);
        let after = &rest[at + ESCAPE.len_utf8()..];
        if let Some(tail) = after.strip_prefix(ESCAPE) {
            let mut buf = [0u8; 4];
            out.extend_from_slice(ESCAPE.encode_utf8(&mut buf).as_bytes());
            rest = tail;
        } else if let Some(byte) = after
            .get(..2)
            .filter(|h| {
                h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            rest = &after[2..];
        } else {
            let mut buf = [0u8; 4];
            out.extend_from_slice(ESCAPE.encode_utf8(&mut buf).as_bytes());
            rest = after;
        }
    }
    out.extend_from_slice(rest.as_bytes());
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_names_are_unchanged() {
        for name in ["", "etc/passwd", "café", "日本語/ファイル", "a b\tc"] {
            assert!(matches!(from_bytes(name.as_bytes()), Cow::Borrowed(n) if n == name));
            assert!(matches!(to_bytes(name), Cow::Borrowed(b) if b == name.as_bytes()));
        }
    }

    #[test]
    fn other_bytes_are_escaped_and_come_back() {
        assert_eq!(from_bytes(b"caf\xe9"), "caf\u{FDD0}e9");
        assert_eq!(from_bytes(b"dir/\xff\xfe/x"), "dir/\u{FDD0}ff\u{FDD0}fe/x");
        // A truncated multi-byte sequence: each byte on its own.
        assert_eq!(from_bytes(b"\xe6\x97"), "\u{FDD0}e6\u{FDD0}97");
        // The escape character itself is doubled.
        assert_eq!(from_bytes("x\u{FDD0}e9".as_bytes()), "x\u{FDD0}\u{FDD0}e9");
        let samples: [&[u8]; 7] = [
            b"caf\xe9",
            b"\xff",
            b"a/\x80\x81/b",
            "\u{FDD0}".as_bytes(),
            "\u{FDD0}\u{FDD0}ff".as_bytes(),
            b"\xef\xb7\x90\xe9",
            b"mixed \xc3\xa9 and \xe9",
        ];
        for bytes in samples {
            assert_eq!(to_bytes(&from_bytes(bytes)), bytes, "{bytes:?}");
        }
        // Different bytes, different names.
        assert_ne!(from_bytes(b"\xe9"), from_bytes("\u{FDD0}e9".as_bytes()));
    }

    #[test]
    fn splitting_at_slashes_commutes() {
        let path = b"a\xe9/b\xff/c";
        let whole = from_bytes(path).into_owned();
        let parts: Vec<String> = path
            .split(|b| *b == b'/')
            .map(|p| from_bytes(p).into_owned())
            .collect();
        assert_eq!(whole, parts.join("/"));
    }

    #[test]
    fn a_lone_escape_stays() {
        assert_eq!(to_bytes("x\u{FDD0}zz"), "x\u{FDD0}zz".as_bytes());
        assert_eq!(to_bytes("x\u{FDD0}E9"), "x\u{FDD0}E9".as_bytes());
        assert_eq!(to_bytes("x\u{FDD0}"), "x\u{FDD0}".as_bytes());
    }
}
