//! The CVMFS magic extended attribute `user.catalog_counters`: the statistics (docs/format.md
//! §6.13) of the catalog that hosts a path, as `strata-snapshotter mount` serves it
//! ([`to_text`], in [`crate::fuse`]) and as `run` reads it to choose the plain mount for a
//! lower directory ([`CatalogCounters::parse`], in [`crate::containerd::snapshots`]). The format is
//! stock CVMFS's (`magic_xattr.cc`).

use std::collections::BTreeMap;

/// The CVMFS magic extended attribute with the hosting catalog's statistics; value
/// `catalog_hash: <hex>\ncatalog_mountpoint: <path>\n` then `self_<counter>,<n>\n` and
/// `subtree_<counter>,<n>\n` lines sorted by key (stock CVMFS `magic_xattr.cc`; counters of
/// docs/format.md §6.13, e.g. `self_xattr`).
pub const CATALOG_COUNTERS_XATTR: &str = "user.catalog_counters";

/// The value of [`CATALOG_COUNTERS_XATTR`]: the catalog whose statistics these are and
/// its counters (docs/format.md §6.13, table `statistics`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogCounters {
    /// Content hash of the catalog, lowercase hex.
    pub catalog_hash: String,
    /// Repository path of the catalog's root: `""` for the root catalog, else `/a/b`.
    pub catalog_mountpoint: String,
    /// `<self|subtree>_<counter>` → value, e.g. `self_xattr` → 0.
    pub counters: BTreeMap<String, i64>,
}

impl CatalogCounters {
    /// Parses the attribute value
    ///
    /// ```text
    /// catalog_hash: <hex>
    /// catalog_mountpoint: <"" or /a/b>
    /// <prefix>_<counter>,<value>        (one per line, any number)
    /// ```
    ///
    /// as CVMFS writes it (`catalog_counters` magic xattr). Errors (a human-readable
    /// reason) for anything else, and when `self_xattr` or `subtree_xattr` is missing.
    pub fn parse(value: &[u8]) -> std::result::Result<CatalogCounters, String> {
        let text = std::str::from_utf8(value).map_err(|_| "not UTF-8".to_string())?;
        let mut lines = text.lines();
        let catalog_hash = lines
            .next()
            .and_then(|l| l.strip_prefix("catalog_hash: "))
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or("first line is not `catalog_hash: <hex>`")?
            .to_string();
        let catalog_mountpoint = lines
            .next()
            .and_then(|l| l.strip_prefix("catalog_mountpoint:"))
            .map(str::trim_start)
            .filter(|m| m.is_empty() || m.starts_with('/'))
            .ok_or("second line is not `catalog_mountpoint: <path>`")?
            .to_string();
        let mut counters = BTreeMap::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (key, value) = line
                .split_once(',')
                .ok_or_else(|| format!("counter line {line:?} is not `<name>,<value>`"))?;
            let value: i64 = value
                .parse()
                .map_err(|_| format!("counter {key:?} has a non-integer value {value:?}"))?;
            counters.insert(key.to_string(), value);
        }
        for key in ["self_xattr", "subtree_xattr"] {
            if !counters.contains_key(key) {
                return Err(format!("no {key} counter"));
            }
        }
        Ok(CatalogCounters {
            catalog_hash,
            catalog_mountpoint,
            counters,
        })
    }

    /// Entries with extended attributes in the catalog and every catalog nested below it:
    /// `self_xattr + subtree_xattr` (0 if either is missing, which [`Self::parse`]
    /// refuses).
    pub fn xattrs(&self) -> i64 {
        let get = |k: &str| self.counters.get(k).copied().unwrap_or(0);
        get("self_xattr").saturating_add(get("subtree_xattr"))
    }
}

/// The [`CATALOG_COUNTERS_XATTR`] text of the catalog with hash `hash` (hex) mounted at
/// `mountpoint`: stock CVMFS's `catalog_hash`/`catalog_mountpoint` lines, then every
/// `self_`/`subtree_` counter as `name,value`, sorted by name.
pub fn to_text(hash: &str, mountpoint: &str, stats: &catalog::Statistics) -> String {
    let mut lines = BTreeMap::new();
    for (prefix, counters) in [("self", &stats.self_), ("subtree", &stats.subtree)] {
        for (name, value) in catalog::statistics::COUNTER_NAMES
            .iter()
            .zip(counters.values())
        {
            lines.insert(format!("{prefix}_{name}"), value);
        }
    }
    let mut text = format!("catalog_hash: {hash}\ncatalog_mountpoint: {mountpoint}\n");
    for (key, value) in lines {
        text.push_str(&format!("{key},{value}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value as [`to_text`] writes it, with one regular file in the catalog and
    /// `self_xattr`/`subtree_xattr` entries with xattrs.
    fn counters_of(mountpoint: &str, self_xattr: i64, subtree_xattr: i64) -> String {
        let mut stats = catalog::Statistics::default();
        stats.self_.regular = 1;
        stats.self_.xattr = self_xattr;
        stats.subtree.xattr = subtree_xattr;
        to_text("0123abcd", mountpoint, &stats)
    }

    #[test]
    fn parses_the_cvmfs_format() {
        let c = CatalogCounters::parse(counters_of("/.layers/ab/abcd/layerfs", 2, 3).as_bytes())
            .expect("parse");
        assert_eq!(c.catalog_hash, "0123abcd");
        assert_eq!(c.catalog_mountpoint, "/.layers/ab/abcd/layerfs");
        assert_eq!(c.counters.get("self_regular"), Some(&1));
        assert_eq!(c.counters.len(), 24);
        assert_eq!(c.xattrs(), 5);
        let root = CatalogCounters::parse(counters_of("", 0, 0).as_bytes()).expect("parse root");
        assert_eq!(root.catalog_mountpoint, "");
        assert_eq!(root.xattrs(), 0);
        for bad in [
            "",
            "catalog_hash: xyz\ncatalog_mountpoint: \nself_xattr,0\nsubtree_xattr,0\n",
            "catalog_hash: ab\ncatalog_mountpoint: rel\nself_xattr,0\nsubtree_xattr,0\n",
            "catalog_hash: ab\ncatalog_mountpoint: \nself_xattr,0\n",
            "catalog_hash: ab\ncatalog_mountpoint: \nself_xattr,zero\nsubtree_xattr,0\n",
            "catalog_hash: ab\ncatalog_mountpoint: \nself_xattr 0\nsubtree_xattr,0\n",
        ] {
            assert!(CatalogCounters::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(CatalogCounters::parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn catalog_counters_have_the_cvmfs_format() {
        let mut stats = catalog::Statistics::default();
        stats.self_.regular = 3;
        stats.self_.xattr = 2;
        stats.subtree.xattr = 5;
        let text = to_text("abc123", "/.layers/ab/abcd/layerfs", &stats);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "catalog_hash: abc123");
        assert_eq!(lines[1], "catalog_mountpoint: /.layers/ab/abcd/layerfs");
        assert_eq!(lines.len(), 2 + 24);
        assert!(lines.contains(&"self_regular,3"));
        assert!(lines.contains(&"self_xattr,2"));
        assert!(lines.contains(&"subtree_xattr,5"));
        assert!(lines.contains(&"subtree_external_file_size,0"));
        let keys: Vec<&str> = lines[2..]
            .iter()
            .map(|l| l.split(',').next().unwrap())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }
}
