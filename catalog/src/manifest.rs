//! The signed manifest `.cvmfspublished` (docs/format.md §7.1, §7.2).
//!
//! Body: one `<key><value>\n` line per field in the order `C B R D S G A N X H T M Y`;
//! then `--\n`, the hex hash of the body (the root catalog's algorithm, SHA-1 by default)
//! and `\n`; then the RSA PKCS#1 v1.5 signature with a SHA-1 DigestInfo over the ASCII bytes
//! of that hex string, made with the certificate's private key.

use rsa::Pkcs1v15Sign;
use sha1::{Digest, Sha1};

use crate::error::{Error, Result};
use crate::hash::ContentHash;
use crate::keys::{Certificate, RsaPrivateKey};
use crate::signed;

/// `R`: hex MD5 of the root path `""` (docs/format.md §6.5); the only accepted value.
pub const ROOT_PATH_HASH: &str = "d41d8cd98f00b204e9800998ecf8427e";

/// The fields of a manifest (docs/format.md §7.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// `C`: root catalog hash (suffix `C` implied).
    pub catalog_hash: ContentHash,
    /// `B`: uncompressed root catalog size in bytes.
    pub catalog_size: u64,
    /// `D`: TTL in seconds.
    pub ttl: u64,
    /// `S`: revision; must equal the root catalog's `revision` property.
    pub revision: u64,
    /// `G`: garbage-collectable.
    pub garbage_collectable: bool,
    /// `A`: `.cvmfsalt-*` alternative paths exist.
    pub alternative_paths: bool,
    /// `N`: the fully qualified repository name.
    pub fqrn: String,
    /// `X`: certificate object hash (suffix `X` implied).
    pub certificate: ContentHash,
    /// `H`: history database hash (suffix `H` implied).
    pub history: Option<ContentHash>,
    /// `T`: publish time, Unix seconds.
    pub timestamp: u64,
    /// `M`: meta-info hash (suffix `M` implied).
    pub meta_info: Option<ContentHash>,
    /// `Y`: hash of the raw `.cvmfsreflog`.
    pub reflog: Option<ContentHash>,
}

/// A parsed `.cvmfspublished` whose body hash has been checked (the signature has not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedManifest {
    /// The parsed fields.
    pub manifest: Manifest,
    /// The exact body bytes (up to and including the newline before `--`).
    pub body: Vec<u8>,
    /// The hex hash line, as in the file.
    pub body_hash_hex: String,
    /// The signature bytes.
    pub signature: Vec<u8>,
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

impl Manifest {
    /// The body bytes in stock writer order `C B R D S G A N X [H] T [M] [Y]`, every line
    /// `\n`-terminated.
    pub fn body(&self) -> Vec<u8> {
        let mut s = String::new();
        let mut line = |k: char, v: &str| {
            s.push(k);
            s.push_str(v);
            s.push('\n');
        };
        line('C', &self.catalog_hash.to_hex());
        line('B', &self.catalog_size.to_string());
        line('R', ROOT_PATH_HASH);
        line('D', &self.ttl.to_string());
        line('S', &self.revision.to_string());
        line('G', yes_no(self.garbage_collectable));
        line('A', yes_no(self.alternative_paths));
        line('N', &self.fqrn);
        line('X', &self.certificate.to_hex());
        if let Some(h) = &self.history {
            line('H', &h.to_hex());
        }
        line('T', &self.timestamp.to_string());
        if let Some(h) = &self.meta_info {
            line('M', &h.to_hex());
        }
        if let Some(h) = &self.reflog {
            line('Y', &h.to_hex());
        }
        s.into_bytes()
    }

    /// The complete `.cvmfspublished`: body, `--\n`, hex hash of the body (with the root
    /// catalog hash's algorithm) and `\n`, then the PKCS#1 v1.5 / SHA-1 signature of the hex
    /// string by `key` (docs/format.md §7.2).
    ///
    /// Errors with [`Error::Sign`].
    pub fn sign(&self, key: &RsaPrivateKey) -> Result<Vec<u8>> {
        let body = self.body();
        let hex = ContentHash::of_bytes(self.catalog_hash.algorithm, &body).to_hex();
        let sig = key
            .sign(Pkcs1v15Sign::new::<Sha1>(), &Sha1::digest(hex.as_bytes()))
            .map_err(|e| Error::Sign(e.to_string()))?;
        let mut out = body;
        out.extend_from_slice(b"--\n");
        out.extend_from_slice(hex.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&sig);
        Ok(out)
    }

    /// Parses a `.cvmfspublished`: framing, required keys `C R D S X` (docs/format.md §7.5 step 2),
    /// `R` = MD5("") (step 4), numbers and hashes, and the body hash against the hex line.
    /// Missing `B`, `T` read as 0, a missing `N` as `""`; unknown keys are ignored; the
    /// last of duplicate keys wins.
    ///
    /// Errors: [`Error::InvalidManifest`], [`Error::ManifestRootPathHash`],
    /// [`Error::ManifestBodyHash`].
    pub fn parse(bytes: &[u8]) -> Result<SignedManifest> {
        let bad = |m: String| Error::InvalidManifest(m);
        let framed = signed::split(bytes).map_err(bad)?;
        let body = std::str::from_utf8(framed.body).map_err(|_| bad("body is not UTF-8".into()))?;
        if !body.is_empty() && !body.ends_with('\n') {
            return Err(bad("body does not end with a newline".into()));
        }
        let mut fields: std::collections::BTreeMap<char, &str> = Default::default();
        for l in signed::lines(body) {
            let mut chars = l.chars();
            if let Some(k) = chars.next() {
                fields.insert(k, chars.as_str());
            }
        }
        let req = |k: char| {
            fields
                .get(&k)
                .copied()
                .ok_or_else(|| bad(format!("missing required key {k}")))
        };
        let hash = |k: char, v: &str| {
            ContentHash::parse_hex(v).map_err(|_| bad(format!("{k} is not a hash: {v:?}")))
        };
        let num = |k: char, v: &str| {
            v.parse::<u64>()
                .map_err(|_| bad(format!("{k} is not a number: {v:?}")))
        };
        let opt_num = |k: char| fields.get(&k).map(|v| num(k, v)).transpose();
        let opt_hash = |k: char| fields.get(&k).map(|v| hash(k, v)).transpose();
        let catalog_hash = hash('C', req('C')?)?;
        let r = req('R')?;
        let ttl = num('D', req('D')?)?;
        let revision = num('S', req('S')?)?;
        let certificate = hash('X', req('X')?)?;
        if r != ROOT_PATH_HASH {
            return Err(Error::ManifestRootPathHash(r.to_string()));
        }
        let manifest = Manifest {
            catalog_hash,
            catalog_size: opt_num('B')?.unwrap_or(0),
            ttl,
            revision,
            garbage_collectable: fields.get(&'G') == Some(&"yes"),
            alternative_paths: fields.get(&'A') == Some(&"yes"),
            fqrn: fields.get(&'N').copied().unwrap_or_default().to_string(),
            certificate,
            history: opt_hash('H')?,
            timestamp: opt_num('T')?.unwrap_or(0),
            meta_info: opt_hash('M')?,
            reflog: opt_hash('Y')?,
        };
        let algorithm = signed::algorithm_of_hex(framed.hash_hex)
            .ok_or_else(|| bad(format!("hash line {:?} is not a hash", framed.hash_hex)))?;
        let actual = ContentHash::of_bytes(algorithm, framed.body).to_hex();
        if actual != framed.hash_hex {
            return Err(Error::ManifestBodyHash {
                stated: framed.hash_hex.to_string(),
                actual,
            });
        }
        if framed.signature.is_empty() {
            return Err(bad("no signature".into()));
        }
        Ok(SignedManifest {
            manifest,
            body: framed.body.to_vec(),
            body_hash_hex: framed.hash_hex.to_string(),
            signature: framed.signature.to_vec(),
        })
    }
}

impl SignedManifest {
    /// Verifies the signature over the hex hash line with the certificate's RSA key
    /// (PKCS#1 v1.5, SHA-1 DigestInfo; docs/format.md §7.2).
    ///
    /// Errors: [`Error::ManifestSignature`] naming the certificate's SHA-1 fingerprint;
    /// [`Error::Certificate`] if the certificate has no RSA key.
    pub fn verify_signature(&self, cert: &Certificate) -> Result<()> {
        let key = cert.public_key()?;
        key.verify(
            Pkcs1v15Sign::new::<Sha1>(),
            &Sha1::digest(self.body_hash_hex.as_bytes()),
            &self.signature,
        )
        .map_err(|_| Error::ManifestSignature {
            fingerprint: cert.fingerprint(crate::hash::HashAlgorithm::Sha1),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;
    use crate::hash::HashAlgorithm;
    use crate::keys::{public_key_to_pem, test_key};
    use crate::test_support::openssl;

    fn h(hex: &str) -> ContentHash {
        ContentHash::parse_hex(hex).unwrap()
    }

    /// The manifest of docs/format.md §11.5.
    fn vector() -> Manifest {
        Manifest {
            catalog_hash: h("3e6e0f4e4c0f6c4c55d5e0c8f6ee8a2f1b5a27b1"),
            catalog_size: 28672,
            ttl: 240,
            revision: 7,
            garbage_collectable: false,
            alternative_paths: false,
            fqrn: "example.cern.ch".into(),
            certificate: h("5798f7f4ca7585d850eea64610a1f73d8f8de7a3"),
            history: None,
            timestamp: 1700000000,
            meta_info: None,
            reflog: None,
        }
    }

    #[test]
    fn spec_11_5_body_hash() {
        let body = vector().body();
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            "C3e6e0f4e4c0f6c4c55d5e0c8f6ee8a2f1b5a27b1\nB28672\nRd41d8cd98f00b204e9800998ecf8427e\n\
             D240\nS7\nGno\nAno\nNexample.cern.ch\nX5798f7f4ca7585d850eea64610a1f73d8f8de7a3\n\
             T1700000000\n"
        );
        assert_eq!(body.len(), 170);
        assert_eq!(
            ContentHash::of_bytes(HashAlgorithm::Sha1, &body).to_hex(),
            "0c1e78e6570d6f555c45d7c5b8e3adea384fc442"
        );
        let signed = vector().sign(test_key(0)).unwrap();
        let tail = b"--\n0c1e78e6570d6f555c45d7c5b8e3adea384fc442\n";
        assert_eq!(&signed[170..170 + tail.len()], tail);
        assert_eq!(signed.len(), 170 + tail.len() + 256);
    }

    #[test]
    fn optional_lines_in_order() {
        let mut m = vector();
        m.history = Some(h("1111111111111111111111111111111111111111"));
        m.meta_info = Some(h("2222222222222222222222222222222222222222"));
        m.reflog = Some(h("3333333333333333333333333333333333333333"));
        m.garbage_collectable = true;
        let body = String::from_utf8(m.body()).unwrap();
        let keys: String = body.lines().map(|l| &l[..1]).collect();
        assert_eq!(keys, "CBRDSGANXHTMY");
        assert!(body.contains("\nGyes\n"));
    }

    #[test]
    fn signature_of_wrong_length_is_rejected() {
        let key = test_key(0);
        let cert = Certificate::self_signed(key, "example.cern.ch").unwrap();
        let bytes = vector().sign(key).unwrap();
        let sig_len = Manifest::parse(&bytes).unwrap().signature.len();
        assert_eq!(sig_len, 256);
        let head = bytes.len() - sig_len;
        for len in [1usize, 128, 255, 257, 512, 4096] {
            let mut v = bytes[..head].to_vec();
            v.extend(std::iter::repeat_n(0xA5u8, len));
            let p = Manifest::parse(&v).unwrap();
            assert!(
                matches!(
                    p.verify_signature(&cert),
                    Err(Error::ManifestSignature { .. })
                ),
                "length {len}"
            );
        }
        // No signature at all.
        assert!(Manifest::parse(&bytes[..head]).is_err());
    }

    #[test]
    fn sign_parse_verify_round_trip() {
        let key = test_key(0);
        let cert = Certificate::self_signed(key, "example.cern.ch").unwrap();
        let mut m = vector();
        m.history = Some(h("1111111111111111111111111111111111111111"));
        m.alternative_paths = true;
        let bytes = m.sign(key).unwrap();
        let parsed = Manifest::parse(&bytes).unwrap();
        assert_eq!(parsed.manifest, m);
        assert_eq!(parsed.body, m.body());
        parsed.verify_signature(&cert).unwrap();

        // Another key's certificate does not verify it.
        let other = Certificate::self_signed(test_key(1), "other").unwrap();
        let err = parsed.verify_signature(&other).unwrap_err();
        assert!(matches!(err, Error::ManifestSignature { .. }));
        assert!(
            err.to_string()
                .contains(&other.fingerprint(HashAlgorithm::Sha1))
        );

        // A flipped byte in the body breaks the body hash, in the signature the signature.
        let mut flipped = bytes.clone();
        flipped[1] ^= 1;
        assert!(matches!(
            Manifest::parse(&flipped),
            Err(Error::ManifestBodyHash { .. } | Error::InvalidManifest(_))
        ));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let p = Manifest::parse(&flipped).unwrap();
        assert!(matches!(
            p.verify_signature(&cert),
            Err(Error::ManifestSignature { .. })
        ));
        // So does a flipped byte in a value whose hash line was "fixed up".
        let text = String::from_utf8_lossy(&bytes[..m.body().len()]).replace("S7", "S8");
        let mut forged = text.clone().into_bytes();
        forged.extend_from_slice(b"--\n");
        forged.extend_from_slice(
            ContentHash::of_bytes(HashAlgorithm::Sha1, text.as_bytes())
                .to_hex()
                .as_bytes(),
        );
        forged.push(b'\n');
        forged.extend_from_slice(&parsed.signature);
        let p = Manifest::parse(&forged).unwrap();
        assert_eq!(p.manifest.revision, 8);
        assert!(p.verify_signature(&cert).is_err());
    }

    #[test]
    fn parse_errors() {
        let frame = |body: &str| {
            let mut v = body.as_bytes().to_vec();
            v.extend_from_slice(b"--\n");
            v.extend_from_slice(
                ContentHash::of_bytes(HashAlgorithm::Sha1, body.as_bytes())
                    .to_hex()
                    .as_bytes(),
            );
            v.extend_from_slice(b"\nSIG");
            v
        };
        let good = String::from_utf8(vector().body()).unwrap();
        assert!(Manifest::parse(&frame(&good)).is_ok());
        for key in ["C", "R", "D", "S", "X"] {
            let body: String = good
                .lines()
                .filter(|l| !l.starts_with(key))
                .map(|l| format!("{l}\n"))
                .collect();
            let err = Manifest::parse(&frame(&body)).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("missing required key {key}")),
                "{err}"
            );
        }
        let bad_r = good.replace(
            "Rd41d8cd98f00b204e9800998ecf8427e",
            "R00000000000000000000000000000000",
        );
        assert!(matches!(
            Manifest::parse(&frame(&bad_r)),
            Err(Error::ManifestRootPathHash(_))
        ));
        assert!(matches!(
            Manifest::parse(good.as_bytes()),
            Err(Error::InvalidManifest(_))
        ));
        let bad_num = good.replace("S7", "Sseven");
        assert!(Manifest::parse(&frame(&bad_num)).is_err());
        // Unknown keys and empty lines are tolerated.
        let extra = good.replace("Gno\n", "Gno\n\nZsomething\n");
        assert_eq!(Manifest::parse(&frame(&extra)).unwrap().manifest, vector());
    }

    #[test]
    fn openssl_accepts_the_signature() {
        let key = test_key(2);
        let bytes = vector().sign(key).unwrap();
        let parsed = Manifest::parse(&bytes).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (pub_file, hash_file, sig_file) = (
            dir.path().join("pub.pem"),
            dir.path().join("hash.txt"),
            dir.path().join("sig.bin"),
        );
        std::fs::write(&pub_file, public_key_to_pem(&key.to_public_key()).unwrap()).unwrap();
        std::fs::write(&hash_file, &parsed.body_hash_hex).unwrap();
        std::fs::write(&sig_file, &parsed.signature).unwrap();
        let out = openssl(&[
            OsStr::new("dgst"),
            OsStr::new("-sha1"),
            OsStr::new("-verify"),
            pub_file.as_os_str(),
            OsStr::new("-signature"),
            sig_file.as_os_str(),
            hash_file.as_os_str(),
        ]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Verified OK"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn stock_manifest_verifies_with_stock_certificate() {
        let root = std::path::Path::new(crate::test_support::STOCK_REPO).join("srv");
        let parsed =
            Manifest::parse(&std::fs::read(root.join(".cvmfspublished")).unwrap()).unwrap();
        let m = &parsed.manifest;
        assert_eq!(m.fqrn, "stock.strata.example");
        assert_eq!(m.revision, 2);
        assert_eq!(m.ttl, 240);
        assert_eq!(m.catalog_size, 16384);
        assert!(m.meta_info.is_some() && m.reflog.is_some() && m.history.is_none());
        let stored =
            std::fs::read(root.join(m.certificate.object_path(crate::hash::Suffix::Certificate)))
                .unwrap();
        let cert =
            Certificate::from_pem(&crate::compression::decompress(&stored, 1 << 20).unwrap())
                .unwrap();
        parsed.verify_signature(&cert).unwrap();
        // Our body serialisation reproduces stock's byte for byte.
        assert_eq!(m.body(), parsed.body);
    }
}
