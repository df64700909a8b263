//! Platforms (`os/architecture[/variant]`, the OCI image index "platform" object) and the
//! two ways they are matched: the publisher's `--platform` selection of the index entries to
//! publish ([`Platform::matches`], [`PlatformFilter`]) and the snapshotter's choice of the
//! manifest and config that fit its node ([`Platform::fits`]).

use std::fmt;

use crate::error::{Error, Result};

/// One platform of a multi-platform image.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    /// `os`, e.g. `linux`.
    pub os: String,
    /// `architecture` (GOARCH spelling): `amd64`, `arm64`, `arm`, `ppc64le`, `s390x`, …
    pub architecture: String,
    /// `variant`, e.g. `v8`; `None` when absent or empty.
    pub variant: Option<String>,
}

impl Platform {
    /// linux/amd64, the default public platform.
    pub fn linux_amd64() -> Platform {
        Platform::new("linux", "amd64", None)
    }

    /// A platform from its parts; an empty variant counts as none.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_string),
        }
    }

    /// Parses `os/arch[/variant]`: two or three non-empty parts of lowercase ASCII letters,
    /// digits, `_`, `-` and `.` (OCI platform values are lowercase: `Linux/amd64` would
    /// match nothing). Errors with [`Error::Platform`] on anything else.
    pub fn parse(text: &str) -> Result<Platform> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid = (2..=3).contains(&parts.len())
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || b == b'_'
                            || b == b'-'
                            || b == b'.'
                    })
            });
        if !valid {
            return Err(Error::Platform {
                platform: text.to_string(),
                reason: "platform must be os/arch[/variant] (lower case, e.g. linux/arm64/v8)"
                    .into(),
            });
        }
        Ok(Platform::new(parts[0], parts[1], parts.get(2).copied()))
    }

    /// The platform of this node (containerd's `platforms.DefaultSpec()`): the OS and the
    /// Go name of the CPU architecture this binary runs on (`arm` gets variant `v7`).
    pub fn node() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform::new(std::env::consts::OS, architecture, variant)
    }

    /// Whether `other` (an index entry) is this platform as asked for: a variant-less
    /// `self` matches every variant; with a variant, `other` must have the same one. The
    /// publisher's `--platform` rule.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }

    /// Whether an image config's or index entry's `os`/`architecture`/`variant` fit this
    /// platform: a missing `os` or `architecture` fits anything, and a missing variant on
    /// either side fits any variant. The snapshotter's rule for its node (as containerd's
    /// platform matcher is lenient about variants).
    pub fn fits(
        &self,
        os: Option<&str>,
        architecture: Option<&str>,
        variant: Option<&str>,
    ) -> bool {
        os.is_none_or(|o| o == self.os)
            && architecture.is_none_or(|a| a == self.architecture)
            && match (variant, self.variant.as_deref()) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// The directory name under `.metadata/…/platforms/`: `<os>-<arch>[-<variant>]`.
    pub fn dir_name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}-{}-{v}", self.os, self.architecture),
            None => format!("{}-{}", self.os, self.architecture),
        }
    }

    /// Of the directory names under `.metadata/…/platforms/` (sorted), the one holding this
    /// platform: [`Platform::dir_name`], or without a variant the first `<os>-<arch>-*`.
    pub fn find_dir<'a>(&self, sorted_names: &'a [String]) -> Option<&'a String> {
        let exact = self.dir_name();
        let prefix = format!("{}-{}-", self.os, self.architecture);
        sorted_names.iter().find(|n| **n == exact).or_else(|| {
            self.variant
                .is_none()
                .then(|| sorted_names.iter().find(|n| n.starts_with(&prefix)))
                .flatten()
        })
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
    fn parse_match_and_names() -> Result<()> {
        let p = Platform::parse("linux/arm64/v8")?;
        assert_eq!(p.dir_name(), "linux-arm64-v8");
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert_eq!(Platform::parse("linux/amd64")?.dir_name(), "linux-amd64");
        let any_arm = Platform::parse("linux/arm64")?;
        assert!(any_arm.matches(&p));
        assert!(!p.matches(&any_arm));
        assert!(!Platform::linux_amd64().matches(&p));
        for bad in [
            "linux",
            "linux/",
            "a/b/c/d",
            "linux/am d64",
            "Linux/amd64",
            "linux/amd64/",
        ] {
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
        Ok(())
    }

    #[test]
    fn the_node_is_linux_and_its_architecture() {
        let node = Platform::node();
        assert_eq!(node.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(node.dir_name(), "linux-amd64");
        }
    }

    #[test]
    fn config_fitting_ignores_missing_variants() -> Result<()> {
        let arm = Platform::parse("linux/arm64")?;
        assert!(arm.fits(Some("linux"), Some("arm64"), Some("v8")));
        assert!(!arm.fits(Some("linux"), Some("amd64"), None));
        let v7 = Platform::parse("linux/arm/v7")?;
        assert!(!v7.fits(Some("linux"), Some("arm"), Some("v6")));
        assert!(v7.fits(Some("linux"), Some("arm"), None));
        assert!(v7.fits(None, None, None));
        Ok(())
    }

    #[test]
    fn finds_the_platform_directory() -> Result<()> {
        let names: Vec<String> = ["linux-amd64", "linux-arm-v7", "linux-arm64-v8"]
            .map(String::from)
            .to_vec();
        let got = |p: &str| -> Result<Option<String>> {
            Ok(Platform::parse(p)?.find_dir(&names).cloned())
        };
        assert_eq!(got("linux/amd64")?.as_deref(), Some("linux-amd64"));
        assert_eq!(got("linux/arm64")?.as_deref(), Some("linux-arm64-v8"));
        assert_eq!(got("linux/arm64/v8")?.as_deref(), Some("linux-arm64-v8"));
        assert_eq!(got("linux/arm/v6")?, None);
        assert_eq!(got("linux/s390x")?, None);
        Ok(())
    }
}
