//! The signed manifest `.cvmfspublished` (CVMFS spec §7.1, §7.2).
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

/// `R`: hex MD5 of the root path `""` (spec §6.5); the only accepted value.
pub const ROOT_PATH_HASH: &str = "d41d8cd98f00b204e9800998ecf8427e";

/// The fields of a manifest (spec §7.1).
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
    /// string by `key` (spec §7.2).
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

    /// Parses a `.cvmfspublished`: framing, required keys `C R D S X` (spec §7.5 step 2),
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
    /// (PKCS#1 v1.5, SHA-1 DigestInfo; spec §7.2).
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
