//! Where the repository keeps each platform's metadata for `pull --platform
//! OS/ARCH[/VARIANT]` (CONTRACTS §3): `.metadata/<ref>/platforms/<os>-<arch>[-<variant>]/`,
//! with the default platform's files also one level up. The platform itself and its
//! matching rules are the `namespace` crate's.

use std::path::{Path, PathBuf};

use namespace::{Platform, paths};

use crate::error::{Error, Result};

/// The directory holding `platform`'s `manifest.json`/`config.json` inside the image's
/// metadata directory `dir`: `dir/platforms/<os>-<arch>-<variant>`, or without a requested
/// variant `dir/platforms/<os>-<arch>` or the first `<os>-<arch>-*` (sorted). `Ok(None)`
/// if the image has no `platforms/` directory (older layout: only `dir` itself);
/// [`Error::ImageMetadata`] naming the published platforms if `platform` is not among them.
/// Blocking.
pub fn platform_dir(dir: &Path, reference: &str, platform: &Platform) -> Result<Option<PathBuf>> {
    let platforms = dir.join(paths::PLATFORMS);
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
    match platform.find_dir(&names) {
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
