//! The client's verification of a repository's entry point (docs/format.md §7.5), in order:
//! manifest framing and required keys, `N`, `R`, certificate and manifest signature,
//! whitelist name, expiry and signature, certificate fingerprint in the whitelist.

use crate::compression::{decompress, verify};
use crate::error::{Error, Result};
use crate::hash::Suffix;
use crate::keys::{Certificate, RsaPublicKey};
use crate::manifest::{Manifest, SignedManifest};
use crate::whitelist::Whitelist;

/// Largest certificate object accepted when inflating one (bytes).
const MAX_CERTIFICATE_SIZE: u64 = 1 << 20;

/// Verifies `manifest` (`.cvmfspublished` bytes) for repository `fqrn` at time `now` (Unix
/// seconds) and returns its fields.
///
/// `certificate` is either the PEM text or the stored certificate object (`data/…X`, zlib);
/// a stored object is checked against the manifest's `X` hash first. The timestamp rule of
/// step 5 needs client state and is left to the caller. Each failed check has its own error:
/// [`Error::InvalidManifest`]/[`Error::ManifestBodyHash`] (step 2),
/// [`Error::ManifestFqrn`] (3), [`Error::ManifestRootPathHash`] (4),
/// [`Error::CertificateMismatch`]/[`Error::Certificate`] (7),
/// [`Error::ManifestSignature`] (8), [`Error::InvalidWhitelist`]/[`Error::WhitelistBodyHash`],
/// [`Error::WhitelistFqrn`], [`Error::WhitelistExpired`], [`Error::WhitelistSignature`] (9),
/// [`Error::FingerprintNotListed`] (10).
pub fn verify_repository(
    manifest: &[u8],
    certificate: &[u8],
    whitelist: &[u8],
    master_keys: &[RsaPublicKey],
    fqrn: &str,
    now: u64,
) -> Result<Manifest> {
    let signed: SignedManifest = Manifest::parse(manifest)?;
    let m = &signed.manifest;
    if m.fqrn != fqrn {
        return Err(Error::ManifestFqrn {
            found: m.fqrn.clone(),
            expected: fqrn.to_string(),
        });
    }
    let cert = if certificate.starts_with(b"-----") || certificate.starts_with(b"\n") {
        Certificate::from_pem(certificate)?
    } else {
        verify(certificate, &m.certificate).map_err(|e| match e {
            Error::HashMismatch { expected, actual } => Error::CertificateMismatch {
                expected: format!("{expected}{}", Suffix::Certificate.letter().unwrap_or('X')),
                actual,
            },
            e => e,
        })?;
        Certificate::from_pem(&decompress(certificate, MAX_CERTIFICATE_SIZE)?)?
    };
    signed.verify_signature(&cert)?;
    let wl = Whitelist::parse(whitelist)?;
    if wl.whitelist.fqrn != fqrn {
        return Err(Error::WhitelistFqrn {
            found: wl.whitelist.fqrn.clone(),
            expected: fqrn.to_string(),
        });
    }
    wl.whitelist.check_expiry(now)?;
    wl.verify_signature(master_keys)?;
    if !wl.whitelist.lists(&cert) {
        return Err(Error::FingerprintNotListed(
            cert.fingerprint(crate::hash::HashAlgorithm::Sha1),
        ));
    }
    Ok(signed.manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::compress;
    use crate::hash::{ContentHash, HashAlgorithm};
    use crate::keys::{RsaPrivateKey, public_key_from_pem, test_key};
    use crate::whitelist::{Whitelist, parse_utc};

    const NOW: u64 = 1_700_000_000;
    const FQRN: &str = "example.org";

    struct Repo {
        manifest: Vec<u8>,
        cert_pem: Vec<u8>,
        cert_object: Vec<u8>,
        whitelist: Vec<u8>,
        master: RsaPublicKey,
    }

    /// The certificate the repository serves (key 0), made once so fingerprints agree.
    fn served() -> &'static Certificate {
        static CERT: std::sync::OnceLock<Certificate> = std::sync::OnceLock::new();
        CERT.get_or_init(|| Certificate::self_signed(test_key(0), FQRN).unwrap())
    }

    fn repo(
        manifest_fqrn: &str,
        wl_fqrn: &str,
        signer: &RsaPrivateKey,
        listed: &Certificate,
    ) -> Repo {
        let cert = served();
        let cert_pem = cert.to_pem().into_bytes();
        let cert_object = compress(&cert_pem);
        let m = Manifest {
            catalog_hash: ContentHash::of_bytes(HashAlgorithm::Sha1, b"catalog"),
            catalog_size: 4096,
            ttl: 240,
            revision: 1,
            garbage_collectable: false,
            alternative_paths: false,
            fqrn: manifest_fqrn.into(),
            certificate: ContentHash::of_bytes(HashAlgorithm::Sha1, &cert_object),
            history: None,
            timestamp: NOW,
            meta_info: None,
            reflog: None,
        };
        let master = test_key(1);
        Repo {
            manifest: m.sign(signer).unwrap(),
            cert_pem,
            cert_object,
            whitelist: Whitelist::new(wl_fqrn, listed, NOW, 30 * 86400)
                .sign(master)
                .unwrap(),
            master: master.to_public_key(),
        }
    }

    fn good() -> Repo {
        repo(FQRN, FQRN, test_key(0), served())
    }

    fn check(r: &Repo, cert: &[u8], now: u64) -> Result<Manifest> {
        verify_repository(
            &r.manifest,
            cert,
            &r.whitelist,
            std::slice::from_ref(&r.master),
            FQRN,
            now,
        )
    }

    #[test]
    fn accepts_a_good_repository() {
        let r = good();
        let m = check(&r, &r.cert_pem, NOW + 10).unwrap();
        assert_eq!((m.fqrn.as_str(), m.revision), (FQRN, 1));
        // The stored certificate object works too.
        check(&r, &r.cert_object, NOW + 10).unwrap();
    }

    #[test]
    fn each_failure_names_its_check() {
        let cert = served();
        let r = repo("other.org", FQRN, test_key(0), cert);
        let e = check(&r, &r.cert_pem, NOW).unwrap_err();
        assert!(matches!(e, Error::ManifestFqrn { .. }));
        assert_eq!(
            e.to_string(),
            "manifest is for fqrn other.org, not example.org"
        );

        let r = good();
        let mut wrong_object = r.cert_object.clone();
        wrong_object.push(0);
        let e = check(&r, &wrong_object, NOW).unwrap_err();
        assert!(matches!(e, Error::CertificateMismatch { .. }), "{e}");

        // Signed by a key other than the certificate's.
        let r = repo(FQRN, FQRN, test_key(2), cert);
        let e = check(&r, &r.cert_pem, NOW).unwrap_err();
        assert!(matches!(e, Error::ManifestSignature { .. }));
        assert!(
            e.to_string()
                .starts_with("manifest signature does not verify with certificate ")
        );

        let r = repo(FQRN, "other.org", test_key(0), cert);
        let e = check(&r, &r.cert_pem, NOW).unwrap_err();
        assert_eq!(
            e.to_string(),
            "whitelist is for fqrn other.org, not example.org"
        );

        let r = good();
        let e = check(&r, &r.cert_pem, NOW + 31 * 86400).unwrap_err();
        assert!(e.to_string().starts_with("whitelist expired at "), "{e}");

        let r = good();
        let e = verify_repository(
            &r.manifest,
            &r.cert_pem,
            &r.whitelist,
            &[test_key(2).to_public_key()],
            FQRN,
            NOW,
        )
        .unwrap_err();
        assert!(matches!(e, Error::WhitelistSignature { .. }), "{e}");

        let other = Certificate::self_signed(test_key(2), "other").unwrap();
        let r = repo(FQRN, FQRN, test_key(0), &other);
        let e = check(&r, &r.cert_pem, NOW).unwrap_err();
        assert!(matches!(e, Error::FingerprintNotListed(_)));
        assert!(e.to_string().ends_with("not in whitelist"), "{e}");

        let r = good();
        let mut m = r.manifest.clone();
        m[3] ^= 1;
        assert!(
            verify_repository(
                &m,
                &r.cert_pem,
                &r.whitelist,
                std::slice::from_ref(&r.master),
                FQRN,
                NOW
            )
            .is_err()
        );
        let mut w = r.whitelist.clone();
        w[0] ^= 1;
        assert!(
            verify_repository(
                &r.manifest,
                &r.cert_pem,
                &w,
                std::slice::from_ref(&r.master),
                FQRN,
                NOW
            )
            .is_err()
        );
    }

    #[test]
    fn stock_fixture_verifies() {
        let srv = std::path::Path::new(crate::test_support::STOCK_REPO).join("srv");
        let manifest = std::fs::read(srv.join(".cvmfspublished")).unwrap();
        let whitelist = std::fs::read(srv.join(".cvmfswhitelist")).unwrap();
        let cert =
            std::fs::read(srv.join("data/9d/30017dabd8e6dd9b7bf86b75c6880d03f08741X")).unwrap();
        let pem = std::fs::read_to_string(srv.join("../stock.strata.example.pub")).unwrap();
        let master = public_key_from_pem(&pem).unwrap();
        // Inside the whitelist's validity (E20261229074356): the manifest's own T.
        let now = 1_795_938_237;
        let m = verify_repository(
            &manifest,
            &cert,
            &whitelist,
            std::slice::from_ref(&master),
            "stock.strata.example",
            now,
        )
        .unwrap();
        assert_eq!(m.revision, 2);
        let late = parse_utc("20261229080000").unwrap();
        let e = verify_repository(
            &manifest,
            &cert,
            &whitelist,
            std::slice::from_ref(&master),
            "stock.strata.example",
            late,
        )
        .unwrap_err();
        assert!(matches!(e, Error::WhitelistExpired { .. }));
        let e = verify_repository(
            &manifest,
            &cert,
            &whitelist,
            &[master],
            "other.example",
            now,
        )
        .unwrap_err();
        assert!(matches!(e, Error::ManifestFqrn { .. }));
    }
}
