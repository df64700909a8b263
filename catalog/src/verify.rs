//! The client's verification of a repository's entry point (CVMFS spec §7.5), in order:
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
