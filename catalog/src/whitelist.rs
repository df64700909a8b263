//! The signed whitelist `.cvmfswhitelist` (docs/format.md §7.4).
//!
//! Body: creation time `YYYYMMDDHHMMSS`, `E` + expiry time (both UTC), `N<fqrn>`, then one
//! certificate fingerprint per line; then `--\n`, the hex SHA-1 of the body and `\n`; then a
//! raw PKCS#1 v1.5 type-1 signature (no DigestInfo, no further hashing) of the hex string by
//! the master key. Expiry is checked at hour granularity.

use rsa::Pkcs1v15Sign;

use crate::error::{Error, Result};
use crate::hash::{ContentHash, HashAlgorithm};
use crate::keys::{Certificate, RsaPrivateKey, RsaPublicKey};
use crate::signed;

/// Stock validity of a whitelist: 30 days.
pub const DEFAULT_VALIDITY_SECS: u64 = 30 * 24 * 3600;

/// The fields of a whitelist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Whitelist {
    /// Creation time, Unix seconds (written as UTC `YYYYMMDDHHMMSS`).
    pub created: u64,
    /// Expiry time, Unix seconds (written as `E` + UTC `YYYYMMDDHHMMSS`).
    pub expires: u64,
    /// The repository name (`N`).
    pub fqrn: String,
    /// Certificate fingerprints, `AA:BB:…` (docs/format.md §2.3 (3)).
    pub fingerprints: Vec<String>,
}

/// A parsed `.cvmfswhitelist` whose body hash has been checked (the signature has not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedWhitelist {
    /// The parsed fields.
    pub whitelist: Whitelist,
    /// The exact body bytes (up to and including the newline before `--`).
    pub body: Vec<u8>,
    /// The hex hash line, as in the file.
    pub body_hash_hex: String,
    /// The signature bytes.
    pub signature: Vec<u8>,
}

impl Whitelist {
    /// A whitelist for `fqrn` listing `cert`'s SHA-1 fingerprint, created at `now` (Unix
    /// seconds) and expiring `validity_secs` later.
    pub fn new(fqrn: &str, cert: &Certificate, now: u64, validity_secs: u64) -> Whitelist {
        Whitelist {
            created: now,
            expires: now.saturating_add(validity_secs),
            fqrn: fqrn.to_string(),
            fingerprints: vec![cert.fingerprint(HashAlgorithm::Sha1)],
        }
    }

    /// The body bytes (docs/format.md §7.4).
    pub fn body(&self) -> Vec<u8> {
        let mut s = format!(
            "{}\nE{}\nN{}\n",
            format_utc(self.created),
            format_utc(self.expires),
            self.fqrn
        );
        for f in &self.fingerprints {
            s.push_str(f);
            s.push('\n');
        }
        s.into_bytes()
    }

    /// The complete `.cvmfswhitelist`: body, `--\n`, hex SHA-1 of the body, `\n`, and the
    /// raw PKCS#1 v1.5 signature of the hex string by `master` (docs/format.md §7.4).
    ///
    /// Errors with [`Error::Sign`].
    pub fn sign(&self, master: &RsaPrivateKey) -> Result<Vec<u8>> {
        let body = self.body();
        let hex = ContentHash::of_bytes(HashAlgorithm::Sha1, &body).to_hex();
        let sig = master
            .sign(Pkcs1v15Sign::new_unprefixed(), hex.as_bytes())
            .map_err(|e| Error::Sign(e.to_string()))?;
        let mut out = body;
        out.extend_from_slice(b"--\n");
        out.extend_from_slice(hex.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&sig);
        Ok(out)
    }

    /// Parses a `.cvmfswhitelist`: framing, the two timestamps, `N`, fingerprints (text after
    /// a space, tab or `#` is ignored, unparsable lines are skipped; `V…`/`W…` option lines
    /// are ignored), and the body hash against the hex line.
    ///
    /// Errors: [`Error::InvalidWhitelist`], [`Error::WhitelistBodyHash`].
    pub fn parse(bytes: &[u8]) -> Result<SignedWhitelist> {
        let bad = |m: String| Error::InvalidWhitelist(m);
        let framed = signed::split(bytes).map_err(bad)?;
        let body = std::str::from_utf8(framed.body).map_err(|_| bad("body is not UTF-8".into()))?;
        let mut lines = body.split('\n');
        let created_text = lines.next().unwrap_or_default();
        let created = parse_utc(created_text)
            .ok_or_else(|| bad(format!("creation time {created_text:?}")))?;
        let expires_text = lines.next().unwrap_or_default();
        let expires = expires_text
            .strip_prefix('E')
            .and_then(parse_utc)
            .ok_or_else(|| bad(format!("expiry line {expires_text:?}")))?;
        let mut fqrn = None;
        let mut fingerprints = Vec::new();
        for l in lines.filter(|l| !l.is_empty()) {
            if let Some(n) = l.strip_prefix('N') {
                fqrn = Some(n.to_string());
                continue;
            }
            let f = l.split([' ', '\t', '#']).next().unwrap_or_default();
            if let Ok(h) = ContentHash::parse_fingerprint(&f.to_uppercase()) {
                fingerprints.push(h.fingerprint());
            }
        }
        let fqrn = fqrn.ok_or_else(|| bad("missing N line".into()))?;
        let algorithm = signed::algorithm_of_hex(framed.hash_hex)
            .ok_or_else(|| bad(format!("hash line {:?} is not a hash", framed.hash_hex)))?;
        let actual = ContentHash::of_bytes(algorithm, framed.body).to_hex();
        if actual != framed.hash_hex {
            return Err(Error::WhitelistBodyHash {
                stated: framed.hash_hex.to_string(),
                actual,
            });
        }
        if framed.signature.is_empty() {
            return Err(bad("no signature".into()));
        }
        Ok(SignedWhitelist {
            whitelist: Whitelist {
                created,
                expires,
                fqrn,
                fingerprints,
            },
            body: framed.body.to_vec(),
            body_hash_hex: framed.hash_hex.to_string(),
            signature: framed.signature.to_vec(),
        })
    }

    /// Whether `cert`'s DER fingerprint (computed with each listed fingerprint's algorithm)
    /// is listed.
    pub fn lists(&self, cert: &Certificate) -> bool {
        self.fingerprints.iter().any(|f| {
            ContentHash::parse_fingerprint(f)
                .is_ok_and(|h| cert.fingerprint(h.algorithm) == h.fingerprint())
        })
    }

    /// Checks the expiry at hour granularity: valid while `now` (Unix seconds) is before
    /// the `E` time truncated to the hour (docs/format.md §7.4).
    ///
    /// Errors with [`Error::WhitelistExpired`].
    pub fn check_expiry(&self, now: u64) -> Result<()> {
        if now < self.expires - self.expires % 3600 {
            Ok(())
        } else {
            Err(Error::WhitelistExpired {
                expired: format_utc(self.expires),
                now: format_utc(now),
            })
        }
    }
}

impl SignedWhitelist {
    /// Verifies the raw PKCS#1 v1.5 signature over the hex hash line with each master key
    /// in turn; succeeds if any verifies.
    ///
    /// Errors with [`Error::WhitelistSignature`].
    pub fn verify_signature(&self, master_keys: &[RsaPublicKey]) -> Result<()> {
        let ok = master_keys.iter().any(|k| {
            k.verify(
                Pkcs1v15Sign::new_unprefixed(),
                self.body_hash_hex.as_bytes(),
                &self.signature,
            )
            .is_ok()
        });
        if ok {
            Ok(())
        } else {
            Err(Error::WhitelistSignature {
                keys: master_keys.len(),
            })
        }
    }
}

/// Unix seconds → UTC `YYYYMMDDHHMMSS` (proleptic Gregorian).
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// UTC `YYYYMMDDHHMMSS` → Unix seconds; `None` unless exactly 14 digits of a valid time
/// not before 1970.
pub fn parse_utc(text: &str) -> Option<u64> {
    if text.len() != 14 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| text[r].parse::<u32>().ok();
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hh, mm, ss) = (n(8..10)?, n(10..12)?, n(12..14)?);
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) || hh > 23 || mm > 59 || ss > 60
    {
        return None;
    }
    let days = days_from_civil(i64::from(y), m, d);
    let secs = days * 86400 + i64::from(hh * 3600 + mm * 60 + ss);
    u64::try_from(secs).ok()
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        2 if y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400)) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 for a civil date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Civil date for days since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;
    use crate::keys::{public_key_from_pem, test_key};
    use crate::test_support::{STOCK_REPO, openssl};

    fn fixture(rel: &str) -> std::path::PathBuf {
        std::path::Path::new(STOCK_REPO).join(rel)
    }

    #[test]
    fn utc_conversions() {
        assert_eq!(format_utc(0), "19700101000000");
        assert_eq!(format_utc(1_700_000_000), "20231114221320");
        assert_eq!(format_utc(951_782_400), "20000229000000");
        assert_eq!(parse_utc("20231114221320"), Some(1_700_000_000));
        assert_eq!(parse_utc("20000229000000"), Some(951_782_400));
        for s in [
            0u64,
            59,
            86_399,
            86_400,
            951_868_799,
            4_102_444_800,
            1_795_938_237,
        ] {
            assert_eq!(parse_utc(&format_utc(s)), Some(s), "{s}");
        }
        for bad in [
            "",
            "2023111422132",
            "202311142213200",
            "20231314221320",
            "20230229000000",
            "20231114241320",
            "2023111422132x",
            "19691231235959",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn spec_11_5_body_hash() {
        let wl = Whitelist {
            created: parse_utc("20240101000000").unwrap(),
            expires: parse_utc("20240131000000").unwrap(),
            fqrn: "example.cern.ch".into(),
            fingerprints: vec![
                "DA:39:A3:EE:5E:6B:4B:0D:32:55:BF:EF:95:60:18:90:AF:D8:07:09".into(),
            ],
        };
        let body = wl.body();
        assert_eq!(body.len(), 108);
        assert_eq!(
            ContentHash::of_bytes(HashAlgorithm::Sha1, &body).to_hex(),
            "93dd9b8cb4d8d1aa6794532e3c773a0d96fa331f"
        );
        let signed = wl.sign(test_key(1)).unwrap();
        let tail = b"--\n93dd9b8cb4d8d1aa6794532e3c773a0d96fa331f\n";
        assert_eq!(&signed[108..108 + tail.len()], tail);
        assert_eq!(signed.len(), 108 + tail.len() + 256);
    }

    #[test]
    fn signature_of_wrong_length_is_rejected() {
        let master = test_key(1);
        let cert = Certificate::self_signed(test_key(0), "example.cern.ch").unwrap();
        let wl = Whitelist::new("example.cern.ch", &cert, 1_700_000_000, 3600);
        let bytes = wl.sign(master).unwrap();
        let sig_len = Whitelist::parse(&bytes).unwrap().signature.len();
        let head = bytes.len() - sig_len;
        for len in [0usize, 1, 255, 257, 1000] {
            let mut v = bytes[..head].to_vec();
            v.extend(std::iter::repeat_n(0x5Au8, len));
            match Whitelist::parse(&v) {
                Ok(p) => assert!(
                    matches!(
                        p.verify_signature(&[master.to_public_key()]),
                        Err(Error::WhitelistSignature { keys: 1 })
                    ),
                    "length {len}"
                ),
                Err(e) => assert!(matches!(e, Error::InvalidWhitelist(_)), "{e}"),
            }
        }
    }

    #[test]
    fn sign_parse_verify_round_trip() {
        let master = test_key(1);
        let cert = Certificate::self_signed(test_key(0), "example.cern.ch").unwrap();
        let other = Certificate::self_signed(test_key(2), "other").unwrap();
        let now = 1_700_000_000;
        let wl = Whitelist::new("example.cern.ch", &cert, now, DEFAULT_VALIDITY_SECS);
        assert_eq!(wl.expires, now + 30 * 86400);
        assert!(wl.lists(&cert));
        assert!(!wl.lists(&other));
        let bytes = wl.sign(master).unwrap();
        let parsed = Whitelist::parse(&bytes).unwrap();
        assert_eq!(parsed.whitelist, wl);
        parsed.verify_signature(&[master.to_public_key()]).unwrap();
        parsed
            .verify_signature(&[test_key(2).to_public_key(), master.to_public_key()])
            .unwrap();
        assert!(matches!(
            parsed.verify_signature(&[test_key(2).to_public_key()]),
            Err(Error::WhitelistSignature { keys: 1 })
        ));
        assert!(parsed.verify_signature(&[]).is_err());

        let mut flipped = bytes.clone();
        flipped[20] ^= 1; // inside the E line
        assert!(Whitelist::parse(&flipped).is_err());
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let p = Whitelist::parse(&flipped).unwrap();
        assert!(p.verify_signature(&[master.to_public_key()]).is_err());
    }

    #[test]
    fn expiry_has_hour_granularity() {
        let cert = Certificate::self_signed(test_key(0), "x").unwrap();
        let mut wl = Whitelist::new("x", &cert, 0, 0);
        wl.expires = parse_utc("20240131103000").unwrap();
        wl.check_expiry(parse_utc("20240131095959").unwrap())
            .unwrap();
        let err = wl
            .check_expiry(parse_utc("20240131100000").unwrap())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "whitelist expired at 20240131103000 (now 20240131100000)"
        );
        assert!(
            wl.check_expiry(parse_utc("20250101000000").unwrap())
                .is_err()
        );
    }

    #[test]
    fn fingerprint_lines_are_lenient() {
        let cert = Certificate::self_signed(test_key(0), "x").unwrap();
        let fp = cert.fingerprint(HashAlgorithm::Sha1);
        let body = format!(
            "20240101000000\nE20240131000000\nNx\nWcachain\n{} # release manager\nnot a fingerprint\n{}\n",
            fp.to_lowercase(),
            cert.fingerprint(HashAlgorithm::Rmd160)
        );
        let mut bytes = body.clone().into_bytes();
        bytes.extend_from_slice(b"--\n");
        bytes.extend_from_slice(
            ContentHash::of_bytes(HashAlgorithm::Sha1, body.as_bytes())
                .to_hex()
                .as_bytes(),
        );
        bytes.extend_from_slice(b"\nS");
        let p = Whitelist::parse(&bytes).unwrap();
        assert_eq!(p.whitelist.fingerprints.len(), 2);
        assert_eq!(p.whitelist.fingerprints[0], fp);
        assert!(p.whitelist.lists(&cert));
        let mut only_rmd = p.whitelist.clone();
        only_rmd.fingerprints.remove(0);
        assert!(only_rmd.lists(&cert));
    }

    #[test]
    fn openssl_recovers_the_hash() {
        let master = test_key(1);
        let cert = Certificate::self_signed(test_key(0), "x").unwrap();
        let parsed =
            Whitelist::parse(&Whitelist::new("x", &cert, 0, 3600).sign(master).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (pub_file, sig_file) = (dir.path().join("m.pub"), dir.path().join("sig"));
        std::fs::write(
            &pub_file,
            crate::keys::public_key_to_pem(&master.to_public_key()).unwrap(),
        )
        .unwrap();
        std::fs::write(&sig_file, &parsed.signature).unwrap();
        let out = openssl(&[
            OsStr::new("pkeyutl"),
            OsStr::new("-verifyrecover"),
            OsStr::new("-pubin"),
            OsStr::new("-inkey"),
            pub_file.as_os_str(),
            OsStr::new("-in"),
            sig_file.as_os_str(),
        ]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), parsed.body_hash_hex);
    }

    #[test]
    fn stock_whitelist_verifies_with_stock_master_key() {
        let bytes = std::fs::read(fixture("srv/.cvmfswhitelist")).unwrap();
        let p = Whitelist::parse(&bytes).unwrap();
        assert_eq!(p.whitelist.fqrn, "stock.strata.example");
        assert_eq!(format_utc(p.whitelist.created), "20261129074356");
        assert_eq!(format_utc(p.whitelist.expires), "20261229074356");
        assert_eq!(
            p.whitelist.fingerprints,
            ["F2:54:C8:CB:8D:64:DF:86:7E:8C:4D:F2:54:55:87:47:64:67:B5:F4"]
        );
        let pem = std::fs::read_to_string(fixture("stock.strata.example.pub")).unwrap();
        p.verify_signature(&[public_key_from_pem(&pem).unwrap()])
            .unwrap();
        assert_eq!(
            p.whitelist.body(),
            p.body,
            "our serialisation matches stock's"
        );
        p.whitelist
            .check_expiry(parse_utc("20261215000000").unwrap())
            .unwrap();
        assert!(
            p.whitelist
                .check_expiry(parse_utc("20261229070000").unwrap())
                .is_err()
        );
    }
}
