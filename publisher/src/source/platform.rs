//! Platforms (`os/architecture[/variant]`, OCI image index spec "platform" object) and the
//! `--platform` selection.

use std::fmt;

use crate::error::{Error, Result};

/// One platform of a multi-platform image.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    /// `os`, e.g. `linux`.
    pub os: String,
    /// `architecture`, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// `variant`, e.g. `v8`; `None` when absent or empty.
    pub variant: Option<String>,
}

impl Platform {
    /// linux/amd64, the default public platform.
    pub fn linux_amd64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    /// A platform from its parts; an empty variant counts as none.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_string),
        }
    }

    /// Parses `os/arch[/variant]`. Errors with [`Error::Reference`] on anything else.
    pub fn parse(text: &str) -> Result<Platform> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid = (2..=3).contains(&parts.len())
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            });
        if !valid {
            return Err(Error::Reference {
                reference: text.to_string(),
                reason: "platform must be os/arch[/variant]".into(),
            });
        }
        Ok(Platform::new(parts[0], parts[1], parts.get(2).copied()))
    }

    /// Whether `other` is this platform; a variant-less `self` matches every variant.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }

    /// The directory name under `.metadata/…/platforms/`: `<os>-<arch>[-<variant>]`.
    pub fn dir_name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}-{}-{v}", self.os, self.architecture),
            None => format!("{}-{}", self.os, self.architecture),
        }
    }

    /// Index entries that are not images to run: buildkit attestations (`unknown/unknown`).
    pub fn is_unknown(&self) -> bool {
        self.os == "unknown" || self.architecture == "unknown"
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Which platforms of an index to publish (`--platform`, repeatable; empty = all).
#[derive(Clone, Debug, Default)]
pub struct PlatformFilter {
    /// The platforms asked for; empty selects every platform.
    pub wanted: Vec<Platform>,
}

impl PlatformFilter {
    /// Whether `p` is selected. Attestation entries (`unknown/unknown`) never are.
    pub fn selects(&self, p: &Platform) -> bool {
        !p.is_unknown() && (self.wanted.is_empty() || self.wanted.iter().any(|w| w.matches(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_match_and_names() {
        let p = Platform::parse("linux/arm64/v8").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.dir_name(), "linux-arm64-v8");
        assert_eq!(p.to_string(), "linux/arm64/v8");
        let any_arm = Platform::parse("linux/arm64").unwrap_or_else(|e| panic!("{e}"));
        assert!(any_arm.matches(&p));
        assert!(!p.matches(&any_arm));
        assert!(!Platform::linux_amd64().matches(&p));
        for bad in ["linux", "linux/", "a/b/c/d", "linux/am d64"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        let all = PlatformFilter::default();
        assert!(all.selects(&p));
        assert!(!all.selects(&Platform::new("unknown", "unknown", None)));
        let only = PlatformFilter {
            wanted: vec![Platform::linux_amd64()],
        };
        assert!(!only.selects(&p));
        assert!(only.selects(&Platform::new("linux", "amd64", Some(""))));
    }
}
