//! Platforms for `pull --platform OS/ARCH[/VARIANT]` and where the repository keeps each
//! platform's metadata (CONTRACTS §3): `.metadata/<ref>/platforms/<os>-<arch>[-<variant>]/`,
//! with the default platform's files also one level up.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An OCI platform (image-spec `image-index.md`): `os`, `architecture`, optional `variant`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, …
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, `arm`, `ppc64le`, `s390x`, `riscv64`, …
    pub architecture: String,
    /// `v7`, `v8`, … if any.
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`; [`Error::Config`] otherwise.
    pub fn parse(text: &str) -> Result<Platform> {
        let parts: Vec<&str> = text.split('/').collect();
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(Error::Config(format!(
                "platform {text:?} is not OS/ARCH[/VARIANT] (lower case, e.g. linux/arm64/v8)"
            ))),
        }
    }

    /// The platform of this node (containerd's `platforms.DefaultSpec()`): `linux` and the
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
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// The directory name under `platforms/`: `<os>-<arch>[-<variant>]`.
    pub fn dir_name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}-{}-{v}", self.os, self.architecture),
            None => format!("{}-{}", self.os, self.architecture),
        }
    }

    /// Whether an image config's `os`/`architecture`/`variant` fit this platform (a missing
    /// variant on either side fits any variant; missing `os`/`architecture` fit anything).
    pub fn matches(
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
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The directory holding `platform`'s `manifest.json`/`config.json` inside the image's
/// metadata directory `dir`: `dir/platforms/<os>-<arch>-<variant>`, or without a requested
/// variant `dir/platforms/<os>-<arch>` or the first `<os>-<arch>-*` (sorted). `Ok(None)`
/// if the image has no `platforms/` directory (older layout: only `dir` itself);
/// [`Error::ImageMetadata`] naming the published platforms if `platform` is not among them.
/// Blocking.
pub fn platform_dir(dir: &Path, reference: &str, platform: &Platform) -> Result<Option<PathBuf>> {
    let platforms = dir.join("platforms");
    let entries = match std::fs::read_dir(&platforms) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::ImageMetadata {
                reference: reference.to_string(),
                reason: format!("{}: {e}", platforms.display()),
            });
        }
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let exact = platform.dir_name();
    let prefix = format!("{}-{}-", platform.os, platform.architecture);
    let found = names.iter().find(|n| **n == exact).or_else(|| {
        platform
            .variant
            .is_none()
            .then(|| names.iter().find(|n| n.starts_with(&prefix)))
            .flatten()
    });
    match found {
        Some(name) => Ok(Some(platforms.join(name))),
        None => Err(Error::ImageMetadata {
            reference: reference.to_string(),
            reason: format!(
                "platform {platform} is not published (published: {})",
                names.join(", ")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_platforms() -> Result<()> {
        let p = Platform::parse("linux/arm64/v8")?;
        assert_eq!(p.dir_name(), "linux-arm64-v8");
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert_eq!(Platform::parse("linux/amd64")?.dir_name(), "linux-amd64");
        for bad in ["linux", "linux/", "Linux/amd64", "a/b/c/d", "linux/amd64/"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        let node = Platform::node();
        assert_eq!(node.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(node.dir_name(), "linux-amd64");
        }
        Ok(())
    }

    #[test]
    fn config_matching_ignores_missing_variants() -> Result<()> {
        let arm = Platform::parse("linux/arm64")?;
        assert!(arm.matches(Some("linux"), Some("arm64"), Some("v8")));
        assert!(!arm.matches(Some("linux"), Some("amd64"), None));
        let v7 = Platform::parse("linux/arm/v7")?;
        assert!(!v7.matches(Some("linux"), Some("arm"), Some("v6")));
        assert!(v7.matches(None, None, None));
        Ok(())
    }

    #[test]
    fn finds_platform_directories() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Io {
            context: "tempdir".into(),
            source: e,
        })?;
        assert_eq!(platform_dir(dir.path(), "r", &Platform::node())?, None);
        for name in ["linux-amd64", "linux-arm64-v8", "linux-arm-v7"] {
            std::fs::create_dir_all(dir.path().join("platforms").join(name)).map_err(|e| {
                Error::Io {
                    context: "mkdir".into(),
                    source: e,
                }
            })?;
        }
        let p = |s: &str| Platform::parse(s);
        let got = |s: &str| -> Result<Option<String>> {
            Ok(platform_dir(dir.path(), "r", &p(s)?)?.map(|d| {
                d.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }))
        };
        assert_eq!(got("linux/amd64")?.as_deref(), Some("linux-amd64"));
        assert_eq!(got("linux/arm64")?.as_deref(), Some("linux-arm64-v8"));
        assert_eq!(got("linux/arm64/v8")?.as_deref(), Some("linux-arm64-v8"));
        match platform_dir(dir.path(), "r", &p("linux/s390x")?) {
            Err(Error::ImageMetadata { reason, .. }) => {
                assert!(
                    reason.contains("linux-amd64, linux-arm-v7, linux-arm64-v8"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(platform_dir(dir.path(), "r", &p("linux/arm/v6")?).is_err());
        Ok(())
    }
}
