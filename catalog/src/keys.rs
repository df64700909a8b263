//! RSA keys and the self-signed X.509 certificate that signs manifests (docs/format.md §7.3).
//!
//! Formats as stock CVMFS writes them: 2048-bit RSA, private keys as PKCS#1 PEM
//! (`BEGIN RSA PRIVATE KEY`), public keys as SubjectPublicKeyInfo PEM (`BEGIN PUBLIC KEY`),
//! a self-signed certificate with issuer = subject = `CN=<name>`, one year of validity and a
//! SHA-256 signature. Trust comes only from the whitelist fingerprint of the DER encoding.
//!
//! `rsa` 0.10 renamed `RsaPrivateKey`/`RsaPublicKey` to `PrivateKey`/`PublicKey` (the old
//! names are deprecated aliases of the same types); this module re-exports the new ones
//! under the old names so callers need no deprecated paths.

use std::str::FromStr;
use std::time::Duration;

use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use sha2::Sha256;
use x509_cert::Certificate as X509;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::der::pem::PemLabel;
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{SubjectPublicKeyInfo, SubjectPublicKeyInfoRef};
use x509_cert::time::Validity;

pub use rsa::{PrivateKey as RsaPrivateKey, PublicKey as RsaPublicKey};

use crate::error::{Error, Result};
use crate::hash::{ContentHash, HashAlgorithm};

/// Key size stock CVMFS uses for master and certificate keys.
pub const KEY_BITS: usize = 2048;

/// Validity of a generated certificate: one year (docs/format.md §7.3).
pub const CERTIFICATE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Generates a fresh 2048-bit RSA key from the thread-local CSPRNG.
///
/// Errors with [`Error::Key`] if generation fails.
pub fn generate_key() -> Result<RsaPrivateKey> {
    let mut rng = rand::rng();
    RsaPrivateKey::new(&mut rng, KEY_BITS).map_err(|e| Error::Key(format!("generating: {e}")))
}

/// PKCS#1 PEM (`-----BEGIN RSA PRIVATE KEY-----`), LF line endings.
///
/// Errors with [`Error::Key`].
pub fn private_key_to_pem(k: &RsaPrivateKey) -> Result<String> {
    k.to_pkcs1_pem(LineEnding::LF)
        .map(|s| s.to_string())
        .map_err(|e| Error::Key(format!("encoding private key: {e}")))
}

/// Parses a PKCS#1 PEM private key; also accepts PKCS#8 (`BEGIN PRIVATE KEY`).
///
/// Errors with [`Error::Key`].
pub fn private_key_from_pem(pem: &str) -> Result<RsaPrivateKey> {
    RsaPrivateKey::from_pkcs1_pem(pem)
        .or_else(|e| {
            use rsa::pkcs8::DecodePrivateKey;
            RsaPrivateKey::from_pkcs8_pem(pem).map_err(|_| e)
        })
        .map_err(|e| Error::Key(format!("decoding private key: {e}")))
}

/// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`), as in `/etc/cvmfs/keys/*.pub`.
///
/// Errors with [`Error::Key`].
pub fn public_key_to_pem(k: &RsaPublicKey) -> Result<String> {
    k.to_public_key_pem(LineEnding::LF)
        .map_err(|e| Error::Key(format!("encoding public key: {e}")))
}

/// Parses an SPKI PEM public key; also accepts PKCS#1 (`BEGIN RSA PUBLIC KEY`).
///
/// Errors with [`Error::Key`].
pub fn public_key_from_pem(pem: &str) -> Result<RsaPublicKey> {
    RsaPublicKey::from_public_key_pem(pem.trim())
        .or_else(|e| {
            use rsa::pkcs1::DecodeRsaPublicKey;
            RsaPublicKey::from_pkcs1_pem(pem.trim()).map_err(|_| e)
        })
        .map_err(|e| Error::Key(format!("decoding public key: {e}")))
}

/// An X.509 certificate, kept as its DER encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    /// The DER encoding (what whitelist fingerprints hash).
    pub der: Vec<u8>,
}

/// Issuer = subject, no extensions (the CA/B profiles insist on fields CVMFS does not use).
struct SelfSigned {
    subject: Name,
}

impl BuilderProfile for SelfSigned {
    fn get_issuer(&self, subject: &Name) -> Name {
        subject.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        _tbs: &x509_cert::TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(Vec::new())
    }
}

impl Certificate {
    /// A self-signed certificate for `key` with subject and issuer `CN=<common_name>`, a
    /// random serial, one year of validity from now and a SHA-256 RSA signature.
    ///
    /// Errors with [`Error::Certificate`] (e.g. a name that is not a valid RFC 4514 value).
    pub fn self_signed(key: &RsaPrivateKey, common_name: &str) -> Result<Certificate> {
        let err =
            |what: &str, e: &dyn std::fmt::Display| Error::Certificate(format!("{what}: {e}"));
        let escaped: String = common_name
            .chars()
            .flat_map(|c| {
                let esc = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' | '#');
                esc.then_some('\\').into_iter().chain(std::iter::once(c))
            })
            .collect();
        let subject = Name::from_str(&format!("CN={escaped}")).map_err(|e| err("subject", &e))?;
        let mut rng = rand::rng();
        let serial = SerialNumber::generate(&mut rng);
        let validity = Validity::from_now(CERTIFICATE_VALIDITY).map_err(|e| err("validity", &e))?;
        let spki = SubjectPublicKeyInfo::from_key(&key.to_public_key())
            .map_err(|e| err("public key", &e))?;
        let builder = CertificateBuilder::new(SelfSigned { subject }, serial, validity, spki)
            .map_err(|e| err("builder", &e))?;
        let signer = SigningKey::<Sha256>::new(key.clone());
        let cert = builder
            .build::<_, rsa::pkcs1v15::Signature>(&signer)
            .map_err(|e| err("signing", &e))?;
        let der = cert.to_der().map_err(|e| err("encoding", &e))?;
        Ok(Certificate { der })
    }

    /// Parses a PEM certificate (`-----BEGIN CERTIFICATE-----`); text around the block is
    /// ignored.
    ///
    /// Errors with [`Error::Certificate`].
    pub fn from_pem(pem: &[u8]) -> Result<Certificate> {
        let text =
            std::str::from_utf8(pem).map_err(|_| Error::Certificate("PEM is not UTF-8".into()))?;
        let begin = format!("-----BEGIN {}-----", X509::PEM_LABEL);
        let end = format!("-----END {}-----", X509::PEM_LABEL);
        let start = text
            .find(&begin)
            .ok_or_else(|| Error::Certificate("no BEGIN CERTIFICATE block".into()))?;
        let stop = text[start..]
            .find(&end)
            .map(|i| start + i + end.len())
            .ok_or_else(|| Error::Certificate("no END CERTIFICATE line".into()))?;
        let cert = X509::from_pem(&text.as_bytes()[start..stop])
            .map_err(|e| Error::Certificate(format!("decoding PEM: {e}")))?;
        let der = cert
            .to_der()
            .map_err(|e| Error::Certificate(format!("re-encoding: {e}")))?;
        Ok(Certificate { der })
    }

    /// PEM encoding (`-----BEGIN CERTIFICATE-----`, base64 in 64-character lines, LF).
    pub fn to_pem(&self) -> String {
        let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64_encode(&self.der);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
        out
    }

    /// The RSA public key in the certificate.
    ///
    /// Errors with [`Error::Certificate`] if the DER does not parse or the key is not RSA.
    pub fn public_key(&self) -> Result<RsaPublicKey> {
        let cert = X509::from_der(&self.der)
            .map_err(|e| Error::Certificate(format!("decoding DER: {e}")))?;
        let spki = cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| Error::Certificate(format!("encoding key: {e}")))?;
        RsaPublicKey::from_public_key_der(&spki)
            .map_err(|e| Error::Certificate(format!("not an RSA key: {e}")))
    }

    /// Hash of the DER encoding in whitelist form `AA:BB:…` (docs/format.md §2.3 (3), §7.4).
    pub fn fingerprint(&self, alg: HashAlgorithm) -> String {
        ContentHash::of_bytes(alg, &self.der).fingerprint()
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Keys shared by the tests of this crate: 2048-bit generation is slow in debug builds.
#[cfg(test)]
pub(crate) fn test_key(slot: usize) -> &'static RsaPrivateKey {
    use std::sync::OnceLock;
    static KEYS: [OnceLock<RsaPrivateKey>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    KEYS[slot].get_or_init(|| generate_key().unwrap())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use rsa::traits::PublicKeyParts;

    use super::*;
    use crate::compression::decompress;
    use crate::test_support::{STOCK_REPO, openssl};

    fn fixture(rel: &str) -> std::path::PathBuf {
        std::path::Path::new(STOCK_REPO).join(rel)
    }

    #[test]
    fn pem_round_trips() {
        let key = test_key(0);
        assert_eq!(key.size(), 256, "2048-bit modulus");
        let pem = private_key_to_pem(key).unwrap();
        assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        assert_eq!(&private_key_from_pem(&pem).unwrap(), key);
        let public = key.to_public_key();
        let ppem = public_key_to_pem(&public).unwrap();
        assert!(ppem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(public_key_from_pem(&ppem).unwrap(), public);
        assert!(private_key_from_pem("garbage").is_err());
        assert!(public_key_from_pem(&pem).is_err());
    }

    #[test]
    fn self_signed_certificate() {
        let key = test_key(0);
        let cert = Certificate::self_signed(key, "example.org CernVM-FS Release Managers").unwrap();
        let pem = cert.to_pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        let back = Certificate::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(back, cert);
        assert_eq!(cert.public_key().unwrap(), key.to_public_key());
        let fp = cert.fingerprint(HashAlgorithm::Sha1);
        assert_eq!(fp.len(), 59);
        assert!(cert.fingerprint(HashAlgorithm::Rmd160).ends_with("-RMD160"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.pem");
        std::fs::write(&file, &pem).unwrap();
        let f = file.as_os_str();
        let out = openssl(&[
            OsStr::new("x509"),
            OsStr::new("-in"),
            f,
            OsStr::new("-noout"),
            OsStr::new("-subject"),
            OsStr::new("-issuer"),
            OsStr::new("-fingerprint"),
            OsStr::new("-sha1"),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("subject=CN = example.org CernVM-FS Release Managers"),
            "{text}"
        );
        assert!(
            text.contains("issuer=CN = example.org CernVM-FS Release Managers"),
            "{text}"
        );
        assert!(text.contains(&format!("Fingerprint={fp}")), "{text}");
        let out = openssl(&[OsStr::new("verify"), OsStr::new("-CAfile"), f, f]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(": OK"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn names_are_escaped() {
        let cert = Certificate::self_signed(test_key(1), "a,b+c=d").unwrap();
        assert!(cert.public_key().is_ok());
    }

    #[test]
    fn stock_certificate_and_master_key() {
        let stored = std::fs::read(fixture(
            "srv/data/9d/30017dabd8e6dd9b7bf86b75c6880d03f08741X",
        ))
        .unwrap();
        let cert = Certificate::from_pem(&decompress(&stored, 1 << 20).unwrap()).unwrap();
        assert_eq!(
            cert.fingerprint(HashAlgorithm::Sha1),
            "F2:54:C8:CB:8D:64:DF:86:7E:8C:4D:F2:54:55:87:47:64:67:B5:F4"
        );
        assert_eq!(cert.public_key().unwrap().size(), 256);
        let pem = std::fs::read_to_string(fixture("stock.strata.example.pub")).unwrap();
        assert_eq!(public_key_from_pem(&pem).unwrap().size(), 256);
        assert!(Certificate::from_pem(b"no certificate here").is_err());
    }
}
