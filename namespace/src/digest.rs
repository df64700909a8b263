//! Typed SHA-256 digests as OCI writes them (OCI image spec, "Digests"): [`Digest`] is
//! `sha256:<hex>`, [`Sha256Hex`] its 64 lowercase hex digits. Both are validated on
//! construction, so whatever holds one can put it into a path.
//!
//! Only `sha256` is accepted: the namespace is addressed by sha256 hex (`.layers/<hh>/<hex>`)
//! and neither the publisher nor the snapshotter ever accepted another algorithm.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// Exactly 64 lowercase hex digits: a SHA-256 value as it appears in the namespace's paths.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first two hex digits: the shard directory (`<hh>` of `.layers/<hh>/<hex>`).
    pub fn shard(&self) -> &str {
        &self.0[..2]
    }

    /// The SHA-256 of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Sha256Hex {
        Sha256Hex(hex::encode(Sha256::digest(bytes)))
    }
}

impl FromStr for Sha256Hex {
    type Err = Error;

    /// Errors with [`Error::Digest`] unless `text` is 64 lowercase hex digits.
    fn from_str(text: &str) -> Result<Sha256Hex> {
        let valid =
            text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if valid {
            Ok(Sha256Hex(text.to_string()))
        } else {
            Err(Error::Digest {
                digest: text.to_string(),
                reason: "expected 64 lowercase hex digits".into(),
            })
        }
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Sha256Hex {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// An OCI digest `sha256:<64 lowercase hex>`: a blob, manifest, config, diffID or ChainID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(Sha256Hex);

/// The algorithm prefix of every [`Digest`].
pub const SHA256_PREFIX: &str = "sha256:";

impl Digest {
    /// The digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest(Sha256Hex::of_bytes(bytes))
    }

    /// The hex part.
    pub fn hex(&self) -> &Sha256Hex {
        &self.0
    }

    /// The digest with the hex part `hex`.
    pub fn from_hex(hex: Sha256Hex) -> Digest {
        Digest(hex)
    }

    /// Parses `text`, naming `what` it is (e.g. the label it came from) in the error: an
    /// [`Error::Digest`] whose input reads `<what> <text>`.
    pub fn parse_named(text: &str, what: &str) -> Result<Digest> {
        text.parse().map_err(|e| match e {
            Error::Digest { digest, reason } => Error::Digest {
                digest: format!("{what} {digest}"),
                reason,
            },
            other => other,
        })
    }
}

impl FromStr for Digest {
    type Err = Error;

    /// Errors with [`Error::Digest`] naming `text` unless it is `sha256:<64 lowercase hex>`;
    /// other algorithms are refused.
    fn from_str(text: &str) -> Result<Digest> {
        let bad = |reason: &str| Error::Digest {
            digest: text.to_string(),
            reason: reason.to_string(),
        };
        let Some((algorithm, hex)) = text.split_once(':') else {
            return Err(bad("expected sha256:<64 lowercase hex digits>"));
        };
        if algorithm != "sha256" {
            return Err(bad(&format!(
                "algorithm {algorithm:?} is not supported (only sha256)"
            )));
        }
        hex.parse()
            .map(Digest)
            .map_err(|_| bad("expected sha256:<64 lowercase hex digits>"))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHA256_PREFIX}{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digests_of_bytes_and_hex() {
        let d = Digest::of_bytes(b"");
        assert_eq!(d.to_string(), format!("sha256:{EMPTY}"));
        assert_eq!(d.hex().as_str(), EMPTY);
        assert_eq!(d.hex().shard(), "e3");
        assert_eq!(d.hex().as_str().len(), 64);
        let parsed: Digest = format!("sha256:{EMPTY}").parse().expect("valid");
        assert_eq!(parsed, d);
        assert_eq!(Sha256Hex::of_bytes(b""), *d.hex());
    }

    #[test]
    fn rejects_non_sha256_upper_case_short_and_traversal() {
        for bad in [
            "sha256:E3B0".to_string(),
            "md5:00".to_string(),
            "sha256:../../etc".to_string(),
            format!("sha512:{EMPTY}"),
            format!("sha256:{}", EMPTY.to_uppercase()),
            format!("sha256:{EMPTY}0"),
            EMPTY.to_string(),
            String::new(),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} accepted");
        }
        assert!("nothex".parse::<Sha256Hex>().is_err());
        assert!(EMPTY.to_uppercase().parse::<Sha256Hex>().is_err());
    }

    #[test]
    fn errors_name_the_input_and_what_it_is() {
        let e = "sha512:00".parse::<Digest>().err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("sha512:00") && e.contains("only sha256")),
            "{e:?}"
        );
        let e = Digest::parse_named("sha256:x", "label containerd.io/snapshot.ref")
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("containerd.io/snapshot.ref sha256:x")),
            "{e:?}"
        );
    }
}
