//! Image references given on the command line: `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`,
//! `oci:DIR[:TAG]` and `docker-archive:FILE`. The public names `<registry>/<repository>:<tag>`
//! under which images appear in the repository, and their normalisation (docs/CONTRACTS.md
//! §3), are the `namespace` crate's [`ImageName`].

use std::path::PathBuf;

pub use namespace::ImageName;
pub use namespace::reference::{DEFAULT_REGISTRY, DOCKER_HUB_ALIASES};

use crate::error::{Error, Result};

/// Where an image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// A registry speaking the OCI distribution API.
    Registry(ImageName),
    /// An OCI image layout directory; `tag` selects by `org.opencontainers.image.ref.name`.
    Layout {
        /// The layout directory (holds `oci-layout`, `index.json`, `blobs/`).
        dir: PathBuf,
        /// The tag to select; `None` = the only image in the layout.
        tag: Option<String>,
    },
    /// A tarball as `docker save` writes it (`manifest.json` + config + layer tars, or an
    /// OCI layout inside, as Docker 25+ writes it).
    Archive {
        /// The tarball.
        file: PathBuf,
    },
}

impl ImageRef {
    /// Parses `docker://…`, `docker-archive:FILE` or `oci:DIR[:TAG]` (a `:` after the last `/` of `DIR` starts the
    /// tag). Errors with [`Error::Reference`] for anything else.
    pub fn parse(text: &str) -> Result<ImageRef> {
        if let Some(rest) = text.strip_prefix("docker://") {
            return Ok(ImageRef::Registry(ImageName::parse(rest)?));
        }
        if let Some(rest) = text.strip_prefix("oci:") {
            let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
            let (dir, tag) = match rest[last_slash..].rfind(':') {
                Some(i) => (
                    &rest[..last_slash + i],
                    Some(rest[last_slash + i + 1..].to_string()),
                ),
                None => (rest, None),
            };
            if dir.is_empty() || tag.as_deref() == Some("") {
                return Err(Error::Reference {
                    reference: text.to_string(),
                    reason: "expected oci:DIR[:TAG]".into(),
                });
            }
            return Ok(ImageRef::Layout {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        if let Some(rest) = text.strip_prefix("docker-archive:") {
            if rest.is_empty() {
                return Err(Error::Reference {
                    reference: text.to_string(),
                    reason: "expected docker-archive:FILE".into(),
                });
            }
            return Ok(ImageRef::Archive {
                file: PathBuf::from(rest),
            });
        }
        Err(Error::Reference {
            reference: text.to_string(),
            reason: "expected docker://HOST/REPO[:TAG|@DIGEST], oci:DIR[:TAG] or \
                     docker-archive:FILE"
                .into(),
        })
    }

    /// The public name of an `oci:` layout image when no `--name` is given:
    /// `localhost/<dir basename>:<tag>`.
    ///
    /// Errors with [`Error::Reference`] when the basename is not a valid repository name.
    pub fn default_layout_name(dir: &std::path::Path, tag: &str) -> Result<ImageName> {
        let base = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
            .or_else(|| dir.file_name().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "image".to_string())
            .to_ascii_lowercase();
        Ok(ImageName::parse(&format!("localhost/{base}:{tag}"))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_schemes() {
        assert_eq!(
            ImageRef::parse("docker://127.0.0.1:5000/x:1").ok(),
            Some(ImageRef::Registry(ImageName {
                registry: "127.0.0.1:5000".into(),
                repository: "x".into(),
                tag: Some("1".into()),
                digest: None
            }))
        );
        assert_eq!(
            ImageRef::parse("oci:/tmp/lay:v2").ok(),
            Some(ImageRef::Layout {
                dir: "/tmp/lay".into(),
                tag: Some("v2".into())
            })
        );
        assert_eq!(
            ImageRef::parse("oci:./lay").ok(),
            Some(ImageRef::Layout {
                dir: "./lay".into(),
                tag: None
            })
        );
        assert_eq!(
            ImageRef::parse("docker-archive:/tmp/a.tar").ok(),
            Some(ImageRef::Archive {
                file: "/tmp/a.tar".into()
            })
        );
        assert!(ImageRef::parse("docker-archive:").is_err());
        assert!(ImageRef::parse("debian:12").is_err());
        assert!(ImageRef::parse("oci:").is_err());
    }

    #[test]
    fn default_layout_name_uses_basename() {
        let n = ImageRef::default_layout_name(std::path::Path::new("/nonexistent/My-Img"), "t")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n.public_path(), "localhost/my-img:t");
    }
}
