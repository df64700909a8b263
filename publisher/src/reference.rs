//! Image references given on the command line: `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`,
//! `oci:DIR[:TAG]`, and the public names `<registry>/<repository>:<tag>` under which images
//! appear in the repository (docs/CONTRACTS.md §3 normalisation).

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The registry that unqualified names refer to.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A normalised image name: registry, repository and tag and/or digest.
///
/// `debian:12` → (`docker.io`, `library/debian`, `12`); `127.0.0.1:5000/demo` →
/// (`127.0.0.1:5000`, `demo`, `latest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageName {
    /// Registry host with optional port, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/debian`; may contain `/`.
    pub repository: String,
    /// Tag; `None` only when a digest was given without a tag.
    pub tag: Option<String>,
    /// Manifest digest `sha256:<hex>` if the reference pinned one.
    pub digest: Option<String>,
}

impl ImageName {
    /// Parses and normalises a docker-style name (without the `docker://` prefix).
    ///
    /// The first component is a registry if it contains `.` or `:` or is `localhost`;
    /// otherwise the registry is `docker.io`, and a one-component repository there gets the
    /// `library/` prefix. No tag and no digest → tag `latest`.
    ///
    /// Errors with [`Error::Reference`] on empty parts, upper-case repositories, bad tags or
    /// digests that are not `sha256:<64 hex>`.
    pub fn parse(text: &str) -> Result<ImageName> {
        let bad = |reason: &str| Error::Reference {
            reference: text.to_string(),
            reason: reason.to_string(),
        };
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("digest must be sha256:<hex>"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("digest must be sha256 followed by 64 hex digits"));
                }
                (r, Some(format!("sha256:{}", hex.to_ascii_lowercase())))
            }
            None => (text, None),
        };
        // A ':' after the last '/' is the tag separator.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let valid = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
                && !t.starts_with(['.', '-']);
            if !valid {
                return Err(bad("tag must be [A-Za-z0-9_.-], at most 128 characters"));
            }
        }
        let parts: Vec<&str> = name.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("empty path component"));
        }
        let first = parts[0];
        let (registry, repo_parts) = if parts.len() > 1
            && (first.contains('.') || first.contains(':') || first == "localhost")
        {
            (first.to_string(), &parts[1..])
        } else {
            (DEFAULT_REGISTRY.to_string(), &parts[..])
        };
        for p in repo_parts {
            let ok = p.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            }) && *p != "."
                && *p != "..";
            if !ok {
                return Err(bad("repository components must be [a-z0-9._-]"));
            }
        }
        if registry.starts_with(['.', '-']) {
            return Err(bad("registry must not start with '.' or '-'"));
        }
        let mut repository = repo_parts.join("/");
        if registry == DEFAULT_REGISTRY && repo_parts.len() == 1 {
            repository = format!("library/{repository}");
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(ImageName {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The path of this image's entries below `/.metadata/` and `/`:
    /// `<registry>/<repository>:<tag>`, or `<registry>/<repository>@sha256:<hex>` when only
    /// a digest is known.
    pub fn public_path(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}/{}:{t}", self.registry, self.repository),
            (None, Some(d)) => format!("{}/{}@{d}", self.registry, self.repository),
            (None, None) => format!("{}/{}:latest", self.registry, self.repository),
        }
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.public_path())?;
        if let (Some(_), Some(d)) = (&self.tag, &self.digest) {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

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
        ImageName::parse(&format!("localhost/{base}:{tag}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(t: &str) -> (String, String, Option<String>, Option<String>) {
        let n = ImageName::parse(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        (n.registry, n.repository, n.tag, n.digest)
    }

    #[test]
    fn docker_hub_normalisation() {
        assert_eq!(
            name("debian:12"),
            (
                "docker.io".into(),
                "library/debian".into(),
                Some("12".into()),
                None
            )
        );
        assert_eq!(name("debian").2, Some("latest".into()));
        assert_eq!(name("user/app:v1").1, "user/app");
        assert_eq!(name("user/app:v1").0, "docker.io");
    }

    #[test]
    fn registry_with_port_and_digest() {
        assert_eq!(
            name("127.0.0.1:5000/demo:1"),
            (
                "127.0.0.1:5000".into(),
                "demo".into(),
                Some("1".into()),
                None
            )
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let n =
            ImageName::parse(&format!("localhost:5000/a/b@{d}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n.repository, "a/b");
        assert_eq!(n.tag, None);
        assert_eq!(n.digest.as_deref(), Some(d.as_str()));
        assert_eq!(n.public_path(), format!("localhost:5000/a/b@{d}"));
        let n = ImageName::parse(&format!("quay.io/x/y:2@{d}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n.public_path(), "quay.io/x/y:2");
        assert_eq!(n.to_string(), format!("quay.io/x/y:2@{d}"));
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "a//b",
            "Upper/x",
            "x:",
            "x@sha256:12",
            "a/../b",
            "x:-t",
            ".flat/x:1",
        ] {
            assert!(ImageName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

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
