//! Image references given on the command line: `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`,
//! `oci:DIR[:TAG]`, and the public names `<registry>/<repository>:<tag>` under which images
//! appear in the repository (docs/CONTRACTS.md §3 normalisation).

use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;

use oci_spec::distribution::Reference;

use crate::error::{Error, Result};

/// The registry that unqualified names refer to.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// Host names that mean Docker Hub and are published as [`DEFAULT_REGISTRY`] (so a
/// one-component repository there gets `library/`), as DUCC's wishlists and docker's
/// `config.json` spell it.
pub const DOCKER_HUB_ALIASES: &[&str] = &[
    "registry.hub.docker.com",
    "index.docker.io",
    "registry-1.docker.io",
    "hub.docker.com",
];

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
    /// The grammar and normalisation are those of the distribution reference
    /// (`oci_spec::distribution::Reference`, a port of docker's `reference` package): the
    /// first component is a registry if it contains `.` or `:` or is `localhost`; otherwise
    /// the registry is `docker.io`, and a one-component repository there gets the `library/`
    /// prefix. No tag and no digest → tag `latest`. On top of that (docs/CONTRACTS.md §3):
    /// [`DOCKER_HUB_ALIASES`] become `docker.io`; a bracketed IPv6 registry
    /// (`[::1]:5000/x`) is accepted; a digest must be `sha256:<64 hex>` (stored lower-case);
    /// tags are ASCII `[A-Za-z0-9_.-]`.
    ///
    /// Errors with [`Error::Reference`] on empty parts, upper-case repositories, bad tags or
    /// digests that are not `sha256:<64 hex>`.
    pub fn parse(text: &str) -> Result<ImageName> {
        let bad = |reason: &str| Error::Reference {
            reference: text.to_string(),
            reason: reason.to_string(),
        };
        // The distribution grammar has no IPv6 hosts: parse the rest under a stand-in host.
        let (ipv6_registry, body) = match text.split_once('/') {
            Some((host, rest)) if host.starts_with('[') => (
                Some(bracketed_ipv6_host(host).ok_or_else(|| bad("bad IPv6 registry"))?),
                format!("localhost/{rest}"),
            ),
            _ => (None, text.to_string()),
        };
        let parsed = Reference::try_from(body.as_str()).map_err(|e| bad(&e.to_string()))?;
        let digest = match parsed.digest() {
            Some(d) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("digest must be sha256 followed by 64 hex digits"))?;
                Some(format!("sha256:{}", hex.to_ascii_lowercase()))
            }
            None => None,
        };
        // The grammar's `\w` is Unicode-aware; registries only accept ASCII tags.
        if parsed.tag().is_some_and(|t| !t.is_ascii()) {
            return Err(bad("tag must be [A-Za-z0-9_.-], at most 128 characters"));
        }
        // The grammar takes an upper-case first component for a host, then gives it to
        // docker.io as part of the repository (an oci-spec FIXME): reject it here.
        if parsed.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase"));
        }
        let (registry, repository) = match ipv6_registry {
            Some(host) => (host, parsed.repository().to_string()),
            None => docker_hub_alias(parsed.registry(), parsed.repository()),
        };
        Ok(ImageName {
            registry,
            repository,
            tag: parsed.tag().map(str::to_string),
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

/// `[addr]` or `[addr]:port` when `addr` is an IPv6 address.
fn bracketed_ipv6_host(host: &str) -> Option<String> {
    let (addr, port) = host.strip_prefix('[')?.split_once(']')?;
    addr.parse::<Ipv6Addr>().ok()?;
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok.then(|| host.to_string())
}

/// `(registry, repository)` with a Docker Hub alias replaced by `docker.io` and the
/// `library/` prefix added to a one-component repository there.
fn docker_hub_alias(registry: &str, repository: &str) -> (String, String) {
    if !DOCKER_HUB_ALIASES.contains(&registry) {
        return (registry.to_string(), repository.to_string());
    }
    let repository = if repository.contains('/') {
        repository.to_string()
    } else {
        format!("library/{repository}")
    };
    (DEFAULT_REGISTRY.to_string(), repository)
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
    fn docker_hub_aliases_become_docker_io() {
        for alias in DOCKER_HUB_ALIASES {
            let n =
                ImageName::parse(&format!("{alias}/debian:12")).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(n.public_path(), "docker.io/library/debian:12", "{alias}");
            let n =
                ImageName::parse(&format!("{alias}/user/app")).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(n.public_path(), "docker.io/user/app:latest", "{alias}");
        }
    }

    #[test]
    fn edge_cases_kept_over_the_library() {
        // Bracketed IPv6 registries, which the distribution grammar lacks.
        let n = ImageName::parse("[::1]:5000/demo:1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (n.registry.as_str(), n.repository.as_str()),
            ("[::1]:5000", "demo")
        );
        assert!(ImageName::parse("[zz]:5000/demo").is_err());
        // Digests: sha256 only, stored lower-case.
        let n = ImageName::parse(&format!("x@sha256:{}", "AB".repeat(32)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n.digest, Some(format!("sha256:{}", "ab".repeat(32))));
        assert!(ImageName::parse(&format!("x@sha512:{}", "a".repeat(128))).is_err());
        // ASCII tags only.
        assert!(ImageName::parse("x:tag\u{e9}").is_err());
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
