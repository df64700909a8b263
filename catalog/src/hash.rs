//! Content hashes: algorithms, textual forms, object paths and fingerprints.
//!
//! docs/format.md §1.3 (object naming), §1.4 (suffix letters), §2 (hashing).

use std::fmt;

use sha1::Digest;
use sha1::digest::{ExtendableOutput, Update, XofReader};

use crate::error::{Error, Result};

/// A content hash algorithm (docs/format.md §2.1). All produce 20-byte digests.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum HashAlgorithm {
    /// SHA-1, text identifier `""`, flag code 0. The only one this crate writes by default.
    #[default]
    Sha1,
    /// RIPEMD-160, text identifier `-rmd160`, flag code 1.
    Rmd160,
    /// SHAKE128 squeezed to 160 bits, text identifier `-shake128`, flag code 2.
    Shake128,
}

impl HashAlgorithm {
    /// The identifier appended to the hex digest: `""`, `"-rmd160"` or `"-shake128"`
    /// (docs/format.md §2.3).
    pub fn text_id(self) -> &'static str {
        match self {
            HashAlgorithm::Sha1 => "",
            HashAlgorithm::Rmd160 => "-rmd160",
            HashAlgorithm::Shake128 => "-shake128",
        }
    }

    /// The code stored in catalog flag bits 8–10 (`algorithm id - 1`, docs/format.md §6.6).
    pub fn flag_code(self) -> u32 {
        match self {
            HashAlgorithm::Sha1 => 0,
            HashAlgorithm::Rmd160 => 1,
            HashAlgorithm::Shake128 => 2,
        }
    }

    /// Inverse of [`HashAlgorithm::flag_code`]; `None` for unknown codes.
    pub fn from_flag_code(code: u32) -> Option<HashAlgorithm> {
        match code {
            0 => Some(HashAlgorithm::Sha1),
            1 => Some(HashAlgorithm::Rmd160),
            2 => Some(HashAlgorithm::Shake128),
            _ => None,
        }
    }

    /// Length of the plain textual form: 40, 47 or 49 characters (docs/format.md §2.3).
    pub fn hex_len(self) -> usize {
        40 + self.text_id().len()
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HashAlgorithm::Sha1 => "sha1",
            HashAlgorithm::Rmd160 => "rmd160",
            HashAlgorithm::Shake128 => "shake128",
        })
    }
}

/// Object type suffix letter appended to object names (docs/format.md §1.4). Not part of the hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Suffix {
    /// Regular file contents: no letter.
    None,
    /// `C`: an SQLite catalog.
    Catalog,
    /// `P`: one chunk of a chunked file.
    Partial,
    /// `X`: the PEM certificate.
    Certificate,
    /// `H`: the history database.
    History,
    /// `M`: the meta-info JSON.
    MetaInfo,
}

impl Suffix {
    /// The suffix letter, `None` for plain file objects.
    pub fn letter(self) -> Option<char> {
        match self {
            Suffix::None => None,
            Suffix::Catalog => Some('C'),
            Suffix::Partial => Some('P'),
            Suffix::Certificate => Some('X'),
            Suffix::History => Some('H'),
            Suffix::MetaInfo => Some('M'),
        }
    }
}

/// A 20-byte content digest together with its algorithm (docs/format.md §2).
///
/// For objects the digest is computed over the **stored** (normally zlib-compressed) bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ContentHash {
    /// The algorithm that produced `digest`.
    pub algorithm: HashAlgorithm,
    /// The raw digest bytes.
    pub digest: [u8; 20],
}

impl ContentHash {
    /// Hashes `bytes` in one go.
    pub fn of_bytes(algorithm: HashAlgorithm, bytes: &[u8]) -> ContentHash {
        let mut h = Hasher::new(algorithm);
        h.update(bytes);
        h.finish()
    }

    /// Builds a hash from a raw digest as stored in catalog BLOBs (docs/format.md §2.5).
    ///
    /// Errors with [`Error::InvalidHash`] unless `digest` is exactly 20 bytes.
    pub fn from_digest(algorithm: HashAlgorithm, digest: &[u8]) -> Result<ContentHash> {
        let digest: [u8; 20] = digest
            .try_into()
            .map_err(|_| Error::InvalidHash(hex::encode(digest)))?;
        Ok(ContentHash { algorithm, digest })
    }

    /// Parses the plain textual form (docs/format.md §2.3): 40 hex digits (SHA-1), or 40 hex digits
    /// followed by `-rmd160` / `-shake128`. No type suffix letter is accepted.
    ///
    /// Errors with [`Error::InvalidHash`] on any other input.
    pub fn parse_hex(text: &str) -> Result<ContentHash> {
        let bad = || Error::InvalidHash(text.to_string());
        let (hex_part, algorithm) = match text.len() {
            40 => (text, HashAlgorithm::Sha1),
            47 if text.ends_with("-rmd160") => (&text[..40], HashAlgorithm::Rmd160),
            49 if text.ends_with("-shake128") => (&text[..40], HashAlgorithm::Shake128),
            _ => return Err(bad()),
        };
        let mut digest = [0u8; 20];
        hex::decode_to_slice(hex_part, &mut digest).map_err(|_| bad())?;
        Ok(ContentHash { algorithm, digest })
    }

    /// Plain textual form: lowercase hex plus the algorithm identifier, no suffix letter
    /// (docs/format.md §2.3 (1)).
    pub fn to_hex(&self) -> String {
        let mut s = hex::encode(self.digest);
        s.push_str(self.algorithm.text_id());
        s
    }

    /// Relative object path `data/<2 hex>/<rest><algo id><suffix>` with `/` separators
    /// (docs/format.md §1.3, §2.4).
    pub fn object_path(&self, suffix: Suffix) -> String {
        let hex = self.to_hex();
        let mut p = format!("data/{}/{}", &hex[..2], &hex[2..]);
        if let Some(c) = suffix.letter() {
            p.push(c);
        }
        p
    }

    /// Whitelist fingerprint form: uppercase hex bytes joined by `:`, then the algorithm
    /// identifier in uppercase (docs/format.md §2.3 (3)), e.g. `DA:39:…:09` or `AB:…:EF-RMD160`.
    pub fn fingerprint(&self) -> String {
        let mut s = self
            .digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        s.push_str(&self.algorithm.text_id().to_uppercase());
        s
    }

    /// Parses the fingerprint form produced by [`ContentHash::fingerprint`].
    ///
    /// Errors with [`Error::InvalidHash`] on anything else.
    pub fn parse_fingerprint(text: &str) -> Result<ContentHash> {
        let bad = || Error::InvalidHash(text.to_string());
        let (hex_part, algorithm) = if let Some(p) = text.strip_suffix("-RMD160") {
            (p, HashAlgorithm::Rmd160)
        } else if let Some(p) = text.strip_suffix("-SHAKE128") {
            (p, HashAlgorithm::Shake128)
        } else {
            (text, HashAlgorithm::Sha1)
        };
        let parts: Vec<&str> = hex_part.split(':').collect();
        if parts.len() != 20 {
            return Err(bad());
        }
        let mut digest = [0u8; 20];
        for (d, p) in digest.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *d = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(ContentHash { algorithm, digest })
    }

    /// True for the all-zero "null hash", which means "no hash" (docs/format.md §2.3).
    pub fn is_null(&self) -> bool {
        self.digest.iter().all(|b| *b == 0)
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Streaming hasher for any [`HashAlgorithm`] (docs/format.md §2.1).
#[derive(Clone)]
pub struct Hasher {
    algorithm: HashAlgorithm,
    state: HasherState,
}

#[derive(Clone)]
enum HasherState {
    Sha1(sha1::Sha1),
    Rmd160(ripemd::Ripemd160),
    Shake128(shake::Shake128),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: HashAlgorithm) -> Hasher {
        let state = match algorithm {
            HashAlgorithm::Sha1 => HasherState::Sha1(sha1::Sha1::new()),
            HashAlgorithm::Rmd160 => HasherState::Rmd160(ripemd::Ripemd160::new()),
            HashAlgorithm::Shake128 => HasherState::Shake128(shake::Shake128::default()),
        };
        Hasher { algorithm, state }
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            HasherState::Sha1(h) => Digest::update(h, bytes),
            HasherState::Rmd160(h) => Digest::update(h, bytes),
            HasherState::Shake128(h) => Update::update(h, bytes),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> ContentHash {
        let mut digest = [0u8; 20];
        match self.state {
            HasherState::Sha1(h) => digest.copy_from_slice(&h.finalize()),
            HasherState::Rmd160(h) => digest.copy_from_slice(&h.finalize()),
            HasherState::Shake128(h) => h.finalize_xof().read(&mut digest),
        }
        ContentHash {
            algorithm: self.algorithm,
            digest,
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `zlib.compress(b"hello\n", 6)`, docs/format.md §11.2.
    const HELLO_Z: [u8; 14] = [
        0x78, 0x9c, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0xe7, 0x02, 0x00, 0x08, 0x4b, 0x02, 0x1f,
    ];

    #[test]
    fn hello_object_names_spec_11_2() {
        let sha1 = ContentHash::of_bytes(HashAlgorithm::Sha1, &HELLO_Z);
        assert_eq!(sha1.to_hex(), "5798f7f4ca7585d850eea64610a1f73d8f8de7a3");
        assert_eq!(
            sha1.object_path(Suffix::None),
            "data/57/98f7f4ca7585d850eea64610a1f73d8f8de7a3"
        );
        assert_eq!(
            sha1.object_path(Suffix::Catalog),
            "data/57/98f7f4ca7585d850eea64610a1f73d8f8de7a3C"
        );
        let rmd = ContentHash::of_bytes(HashAlgorithm::Rmd160, &HELLO_Z);
        assert_eq!(
            rmd.object_path(Suffix::None),
            "data/92/e6eb3559a98184aefdab5f76286027aa83bfb0-rmd160"
        );
        assert_eq!(
            rmd.object_path(Suffix::Catalog),
            "data/92/e6eb3559a98184aefdab5f76286027aa83bfb0-rmd160C"
        );
        let shake = ContentHash::of_bytes(HashAlgorithm::Shake128, &HELLO_Z);
        assert_eq!(
            shake.object_path(Suffix::None),
            "data/97/71532cda37f736dff5b6609ddae2f44c6407f2-shake128"
        );
        // Partial32 (first 4 bytes big-endian) = 1469642740.
        assert_eq!(
            u32::from_be_bytes(sha1.digest[..4].try_into().unwrap()),
            1469642740
        );
    }

    #[test]
    fn empty_inputs() {
        assert_eq!(
            ContentHash::of_bytes(HashAlgorithm::Shake128, b"").to_hex(),
            "7f9c2ba4e88f827d616045507605853ed73b8093-shake128"
        );
        // docs/format.md §11.3: the empty-file object.
        let z = [0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01];
        assert_eq!(
            ContentHash::of_bytes(HashAlgorithm::Sha1, &z).to_hex(),
            "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"
        );
    }

    #[test]
    fn streaming_equals_one_shot() {
        for alg in [
            HashAlgorithm::Sha1,
            HashAlgorithm::Rmd160,
            HashAlgorithm::Shake128,
        ] {
            let mut h = Hasher::new(alg);
            h.update(b"hel");
            h.update(b"lo\n");
            assert_eq!(h.finish(), ContentHash::of_bytes(alg, b"hello\n"));
        }
    }

    #[test]
    fn parse_and_print_all_forms() {
        for text in [
            "5798f7f4ca7585d850eea64610a1f73d8f8de7a3",
            "92e6eb3559a98184aefdab5f76286027aa83bfb0-rmd160",
            "9771532cda37f736dff5b6609ddae2f44c6407f2-shake128",
        ] {
            let h = ContentHash::parse_hex(text).unwrap();
            assert_eq!(h.to_hex(), text);
            assert_eq!(h.to_string(), text);
            assert_eq!(h.algorithm.hex_len(), text.len());
        }
        assert_eq!(
            ContentHash::parse_hex("9771532cda37f736dff5b6609ddae2f44c6407f2-shake128")
                .unwrap()
                .algorithm,
            HashAlgorithm::Shake128
        );
        for bad in [
            "",
            "5798f7f4ca7585d850eea64610a1f73d8f8de7a",
            "5798f7f4ca7585d850eea64610a1f73d8f8de7a3C",
            "zz98f7f4ca7585d850eea64610a1f73d8f8de7a3",
            "92e6eb3559a98184aefdab5f76286027aa83bfb0-xxxxxx",
        ] {
            assert!(ContentHash::parse_hex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprint_form() {
        let h = ContentHash::of_bytes(HashAlgorithm::Sha1, b"");
        assert_eq!(
            h.fingerprint(),
            "DA:39:A3:EE:5E:6B:4B:0D:32:55:BF:EF:95:60:18:90:AF:D8:07:09"
        );
        assert_eq!(ContentHash::parse_fingerprint(&h.fingerprint()).unwrap(), h);
        let r = ContentHash::of_bytes(HashAlgorithm::Rmd160, b"");
        assert!(r.fingerprint().ends_with("-RMD160"));
        assert_eq!(ContentHash::parse_fingerprint(&r.fingerprint()).unwrap(), r);
        assert!(ContentHash::parse_fingerprint("DA:39").is_err());
    }

    #[test]
    fn flag_codes_round_trip() {
        for alg in [
            HashAlgorithm::Sha1,
            HashAlgorithm::Rmd160,
            HashAlgorithm::Shake128,
        ] {
            assert_eq!(HashAlgorithm::from_flag_code(alg.flag_code()), Some(alg));
        }
        assert_eq!(HashAlgorithm::from_flag_code(5), None);
    }
}
