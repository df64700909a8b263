//! Arbitrary bytes as `.cvmfspublished` and `.cvmfswhitelist` (docs/format.md §7): parse, verify
//! against a fixed certificate/master key, and run the whole verification chain with the
//! bytes in each position. Any outcome but a panic is fine.
#![no_main]

use std::sync::OnceLock;

use catalog::{Certificate, Manifest, RsaPrivateKey, Whitelist};
use libfuzzer_sys::fuzz_target;

struct Keys {
    cert: Certificate,
    cert_pem: String,
    master: catalog::RsaPublicKey,
    manifest: Vec<u8>,
    whitelist: Vec<u8>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        // Fixed keys from PEM would be faster to load, but generating once per process is
        // fine: libFuzzer runs one process.
        let key: RsaPrivateKey = catalog::keys::generate_key().expect("key");
        let master_key: RsaPrivateKey = catalog::keys::generate_key().expect("key");
        let cert = Certificate::self_signed(&key, "fuzz.example").expect("cert");
        let wl = Whitelist::new("fuzz.example", &cert, 1_700_000_000, 3600);
        let whitelist = wl.sign(&master_key).expect("sign");
        let h = catalog::ContentHash::of_bytes(catalog::HashAlgorithm::Sha1, b"x");
        let m = Manifest {
            catalog_hash: h,
            catalog_size: 1,
            ttl: 240,
            revision: 1,
            garbage_collectable: false,
            alternative_paths: false,
            fqrn: "fuzz.example".into(),
            certificate: h,
            history: None,
            timestamp: 1_700_000_000,
            meta_info: None,
            reflog: None,
        };
        let manifest = m.sign(&key).expect("sign");
        Keys {
            cert_pem: cert.to_pem(),
            cert,
            master: master_key.to_public_key(),
            manifest,
            whitelist,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let k = keys();
    if let Ok(m) = Manifest::parse(data) {
        let _ = m.manifest.body();
        let _ = m.verify_signature(&k.cert);
    }
    if let Ok(w) = Whitelist::parse(data) {
        let _ = w.verify_signature(std::slice::from_ref(&k.master));
        let _ = w.whitelist.check_expiry(1_700_000_100);
        let _ = w.whitelist.lists(&k.cert);
    }
    let _ = Certificate::from_pem(data);
    let _ = catalog::whitelist::parse_utc(&String::from_utf8_lossy(data));
    let master = std::slice::from_ref(&k.master);
    let now = 1_700_000_100;
    let _ = catalog::verify_repository(
        data,
        k.cert_pem.as_bytes(),
        &k.whitelist,
        master,
        "fuzz.example",
        now,
    );
    let _ =
        catalog::verify_repository(&k.manifest, data, &k.whitelist, master, "fuzz.example", now);
    let _ = catalog::verify_repository(
        &k.manifest,
        k.cert_pem.as_bytes(),
        data,
        master,
        "fuzz.example",
        now,
    );
});
