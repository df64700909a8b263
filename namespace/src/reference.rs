//! Image references and the public names `<registry>/<repository>:<tag>` under which images
//! appear in the repository (docs/CONTRACTS.md §3 normalisation): `debian:12` →
//! `docker.io/library/debian:12`; `127.0.0.1:5000/demo:1` stays; no tag and no digest →
//! `:latest`.
//!
//! The grammar and the Docker Hub normalisation are those of docker's `reference` package
//! (as ported by `oci_spec::distribution::Reference`; checked by hand in [`grammar`], which
//! says why). On top of them, as the publisher and the snapshotter always did: Docker Hub
//! host aliases, bracketed IPv6 registries, `sha256`-only lowercase digests, ASCII tags and
//! lowercase repositories (see [`ImageName::parse`]).

mod grammar;

use std::fmt;
use std::net::Ipv6Addr;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The registry that unqualified names refer to.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// The tag of a reference without tag and digest.
pub const DEFAULT_TAG: &str = "latest";

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
    /// Registry host with optional port, e.g. `docker.io`, `127.0.0.1:5000`, `[::1]:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/debian`; may contain `/`.
    pub repository: String,
    /// Tag; `None` only when a digest was given without a tag.
    pub tag: Option<String>,
    /// Manifest (or index) digest if the reference pinned one.
    pub digest: Option<Digest>,
}

impl ImageName {
    /// Parses and normalises a docker-style name (without a `docker://` prefix).
    ///
    /// The grammar and normalisation are those of the distribution reference
    /// (docker's `reference` package): the first component is a registry if it
    /// contains `.` or `:` or is `localhost`; otherwise the registry is `docker.io`, and a
    /// one-component repository there gets the `library/` prefix. No tag and no digest →
    /// tag `latest`. On top of that (docs/CONTRACTS.md §3): [`DOCKER_HUB_ALIASES`] become
    /// `docker.io`; a bracketed IPv6 registry (`[::1]:5000/x`) is accepted; a digest must be
    /// `sha256:<64 hex>` (stored lower-case); tags are ASCII `[A-Za-z0-9_.-]`.
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
        let parsed = grammar::parse(&body).map_err(bad)?;
        let (registry, repository) = split_domain(parsed.name);
        if repository.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(bad("repository name must not be more than 255 characters"));
        }
        let tag = match (parsed.tag, parsed.digest) {
            (None, None) => Some(DEFAULT_TAG),
            (tag, _) => tag,
        };
        let digest = match parsed.digest {
            Some(d) => Some(
                d.to_ascii_lowercase()
                    .parse::<Digest>()
                    .map_err(|_| bad("digest must be sha256 followed by 64 hex digits"))?,
            ),
            None => None,
        };
        // The grammar takes an upper-case first component for a host, and the domain split
        // then gives it to docker.io as part of the repository (as docker's parser did
        // before it learnt better): reject it here.
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase"));
        }
        let (registry, repository) = match ipv6_registry {
            Some(host) => (host, repository),
            None => docker_hub_alias(&registry, &repository),
        };
        Ok(ImageName {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// The path of this image's entries below `/.metadata/` and `/`, and its containerd
    /// image name: `<registry>/<repository>:<tag>`, or `<registry>/<repository>@sha256:<hex>`
    /// when only a digest is known.
    pub fn public_path(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}/{}:{t}", self.registry, self.repository),
            (None, Some(d)) => format!("{}/{}@{d}", self.registry, self.repository),
            (None, None) => format!("{}/{}:{DEFAULT_TAG}", self.registry, self.repository),
        }
    }

    /// What to ask the registry for: the digest if pinned, else the tag (`latest` without).
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
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

/// The longest repository name a registry takes.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Splits a name that parsed into registry and repository (docker's `splitDockerDomain`):
/// the first component is a registry if it contains `.` or `:` or is `localhost`, else
/// the registry is `docker.io`; `index.docker.io` is `docker.io`; a one-component
/// repository on `docker.io` gets `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (domain, remainder) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first, rest.to_string())
        }
        _ => (DEFAULT_REGISTRY, name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        DEFAULT_REGISTRY
    } else {
        domain
    };
    if domain == DEFAULT_REGISTRY && !remainder.contains('/') {
        return (domain.to_string(), format!("library/{remainder}"));
    }
    (domain.to_string(), remainder)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn name(t: &str) -> (String, String, Option<String>, Option<String>) {
        let n = ImageName::parse(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        (
            n.registry,
            n.repository,
            n.tag,
            n.digest.map(|d| d.to_string()),
        )
    }

    fn path(t: &str) -> String {
        ImageName::parse(t)
            .unwrap_or_else(|e| panic!("{t}: {e}"))
            .public_path()
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
    fn normalises_like_the_contract() {
        assert_eq!(path("debian:12"), "docker.io/library/debian:12");
        assert_eq!(path("docker.io/debian:12"), "docker.io/library/debian:12");
        assert_eq!(path("127.0.0.1:5000/demo:1"), "127.0.0.1:5000/demo:1");
        assert_eq!(path("127.0.0.1:5000/demo"), "127.0.0.1:5000/demo:latest");
        assert_eq!(path("localhost/a/b"), "localhost/a/b:latest");
        assert_eq!(path("user/app:v2"), "docker.io/user/app:v2");
        let d = "ab".repeat(32);
        assert_eq!(
            path(&format!("demo@sha256:{d}")),
            format!("docker.io/library/demo@sha256:{d}")
        );
        assert_eq!(
            path(&format!("demo:1@sha256:{d}")),
            "docker.io/library/demo:1"
        );
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
        assert_eq!(n.digest.as_ref().map(Digest::to_string), Some(d.clone()));
        assert_eq!(n.public_path(), format!("localhost:5000/a/b@{d}"));
        assert_eq!(n.manifest_reference(), d);
        let n = ImageName::parse(&format!("quay.io/x/y:2@{d}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n.public_path(), "quay.io/x/y:2");
        assert_eq!(n.to_string(), format!("quay.io/x/y:2@{d}"));
        assert_eq!(n.manifest_reference(), d);
        assert_eq!(
            ImageName::parse("x:5").map(|n| n.manifest_reference()).ok(),
            Some("5".to_string())
        );
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "a//b",
            "Upper/x",
            "Demo:1",
            "x:",
            "x@sha256:12",
            "demo@md5:00",
            "a/../b",
            "../x",
            "x:-t",
            ".flat/x:1",
            "[zz]/x",
            "demo:t\u{e9}",
        ] {
            assert!(ImageName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn repository_names_are_at_most_255_characters_after_normalisation() {
        let path = |n: usize| format!("a/{}", "b".repeat(n - 2));
        assert!(ImageName::parse(&path(255)).is_ok());
        assert!(ImageName::parse(&path(256)).is_err());
        // `library/` counts: 247 + 8 = 255 is taken, 248 + 8 = 256 is not.
        assert_eq!(
            ImageName::parse(&"c".repeat(247))
                .map(|n| n.repository.len())
                .ok(),
            Some(255)
        );
        let err = ImageName::parse(&"c".repeat(248))
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("255 characters")),
            "{err:?}"
        );
        // A registry does not count.
        assert!(ImageName::parse(&format!("registry.example:5000/{}", path(255))).is_ok());
        assert!(ImageName::parse(&format!("registry.example:5000/{}", path(256))).is_err());
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
        assert_eq!(n.public_path(), "[::1]:5000/demo:1");
        assert!(ImageName::parse("[zz]:5000/demo").is_err());
        // Digests: sha256 only, stored lower-case.
        let n = ImageName::parse(&format!("x@sha256:{}", "AB".repeat(32)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            n.digest.map(|d| d.to_string()),
            Some(format!("sha256:{}", "ab".repeat(32)))
        );
        assert!(ImageName::parse(&format!("x@sha512:{}", "a".repeat(128))).is_err());
        // ASCII tags only.
        assert!(ImageName::parse("x:tag\u{e9}").is_err());
    }
}
