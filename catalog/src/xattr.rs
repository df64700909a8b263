//! The packed extended-attribute blob of `catalog.xattr` (docs/format.md §6.9).
//!
//! Layout: `u8 version = 1`, `u8 count`, then per attribute `u8 key_len`, `u8 value_len`,
//! key bytes, value bytes, in ascending byte-wise key order.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The only blob version CVMFS knows.
const VERSION: u8 = 1;

/// Packs `x` (docs/format.md §6.9). An empty map still encodes (to `01 00`); callers store SQL NULL
/// for "no xattrs" instead.
///
/// Errors with [`Error::Xattr`] for more than 255 attributes, empty keys, keys containing
/// NUL, or keys/values longer than 255 bytes.
pub fn encode_xattrs(x: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>> {
    let count = u8::try_from(x.len())
        .map_err(|_| Error::Xattr(format!("{} attributes, at most 255", x.len())))?;
    let mut out = vec![VERSION, count];
    // BTreeMap<String> iterates in byte-wise order, as std::map<std::string> does.
    for (k, v) in x {
        if k.is_empty() || k.as_bytes().contains(&0) {
            return Err(Error::Xattr(format!("invalid key {k:?}")));
        }
        let kl = u8::try_from(k.len())
            .map_err(|_| Error::Xattr(format!("key {k:?} longer than 255 bytes")))?;
        let vl = u8::try_from(v.len())
            .map_err(|_| Error::Xattr(format!("value of {k:?} longer than 255 bytes")))?;
        out.extend_from_slice(&[kl, vl]);
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(v);
    }
    Ok(out)
}

/// Unpacks a blob (docs/format.md §6.9). A repeated key keeps the later value.
///
/// Errors with [`Error::Xattr`] for a version other than 1, truncated data, trailing bytes,
/// empty keys or keys that are not UTF-8.
pub fn decode_xattrs(blob: &[u8]) -> Result<BTreeMap<String, Vec<u8>>> {
    let (&version, rest) = blob
        .split_first()
        .ok_or_else(|| Error::Xattr("empty blob".into()))?;
    if version != VERSION {
        return Err(Error::Xattr(format!("version {version}, expected 1")));
    }
    let (&count, mut rest) = rest
        .split_first()
        .ok_or_else(|| Error::Xattr("missing count".into()))?;
    let mut map = BTreeMap::new();
    for i in 0..count {
        if rest.len() < 2 {
            return Err(Error::Xattr(format!("attribute {i} truncated")));
        }
        let (kl, vl) = (rest[0] as usize, rest[1] as usize);
        rest = &rest[2..];
        if kl == 0 {
            return Err(Error::Xattr(format!("attribute {i} has an empty key")));
        }
        if rest.len() < kl + vl {
            return Err(Error::Xattr(format!("attribute {i} truncated")));
        }
        let key = std::str::from_utf8(&rest[..kl])
            .map_err(|_| Error::Xattr(format!("attribute {i} key is not UTF-8")))?;
        if key.contains('\0') {
            return Err(Error::Xattr(format!("attribute {i} key contains NUL")));
        }
        map.insert(key.to_string(), rest[kl..kl + vl].to_vec());
        rest = &rest[kl + vl..];
    }
    if !rest.is_empty() {
        return Err(Error::Xattr(format!("{} trailing bytes", rest.len())));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(items: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    #[test]
    fn spec_vectors() {
        let one = map(&[("user.foo", b"bar")]);
        assert_eq!(
            hex::encode(encode_xattrs(&one).unwrap()),
            "01010803757365722e666f6f626172"
        );
        let two = map(&[("user.b", b"2"), ("user.a", b"1")]);
        let blob = encode_xattrs(&two).unwrap();
        assert_eq!(
            hex::encode(&blob),
            "01020601757365722e61310601757365722e6232"
        );
        assert_eq!(decode_xattrs(&blob).unwrap(), two);
    }

    #[test]
    fn binary_values_and_limits() {
        let m = map(&[
            ("security.capability", &[0, 1, 2, 255]),
            ("trusted.overlay.opaque", b"y"),
        ]);
        assert_eq!(decode_xattrs(&encode_xattrs(&m).unwrap()).unwrap(), m);
        let long_key = "k".repeat(256);
        assert!(encode_xattrs(&map(&[(&long_key, b"")])).is_err());
        assert!(encode_xattrs(&map(&[("k", &[0u8; 256])])).is_err());
        assert!(encode_xattrs(&map(&[("", b"v")])).is_err());
        let many: BTreeMap<String, Vec<u8>> = (0..256).map(|i| (format!("k{i}"), vec![])).collect();
        assert!(encode_xattrs(&many).is_err());
    }

    #[test]
    fn rejects_bad_blobs() {
        assert!(decode_xattrs(&[]).is_err());
        assert!(decode_xattrs(&[2, 0]).is_err());
        assert!(decode_xattrs(&[1, 1, 3, 1, b'a', b'b']).is_err()); // truncated
        assert!(decode_xattrs(&[1, 1, 0, 0]).is_err()); // empty key
        assert!(decode_xattrs(&[1, 0, 9]).is_err()); // trailing
        assert_eq!(decode_xattrs(&[1, 0]).unwrap(), BTreeMap::new());
        // A repeated key keeps the later value.
        let dup = [1, 2, 1, 1, b'a', b'1', 1, 1, b'a', b'2'];
        assert_eq!(decode_xattrs(&dup).unwrap(), map(&[("a", b"2")]));
    }

    proptest::proptest! {
        #[test]
        fn round_trips_any_valid_map(
            m in proptest::collection::btree_map(
                "[a-z.]{1,40}",
                proptest::collection::vec(proptest::num::u8::ANY, 0..255),
                0..20,
            )
        ) {
            let blob = encode_xattrs(&m).unwrap();
            proptest::prop_assert_eq!(decode_xattrs(&blob).unwrap(), m);
        }

        #[test]
        fn never_panics_on_garbage(blob in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode_xattrs(&blob);
        }
    }
}
