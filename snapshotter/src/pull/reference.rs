//! Image reference normalisation for `pull REF` (CONTRACTS §3), the same rules the
//! publisher applies when it names images: `debian:12` → `docker.io/library/debian:12`;
//! `127.0.0.1:5000/demo:1` stays; no tag and no digest → `:latest`; an optional
//! `docker://` prefix is accepted. The parsing is `oci_spec::distribution::Reference`'s.

use std::net::Ipv6Addr;

use crate::error::{Error, Result};

/// The registry unqualified names refer to.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// Host names that mean Docker Hub and are normalised to [`DEFAULT_REGISTRY`], the same
/// list as the publisher's (`publisher/src/reference.rs`), so both name an image alike.
pub const DOCKER_HUB_ALIASES: &[&str] = &[
    "registry.hub.docker.com",
    "index.docker.io",
    "registry-1.docker.io",
    "hub.docker.com",
];

/// A normalised reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Registry host with optional port.
    pub registry: String,
    /// Repository path (may contain `/`).
    pub repository: String,
    /// Tag; `None` only when a digest was given without one.
    pub tag: Option<String>,
    /// `sha256:<hex>` if pinned.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses and normalises `text` with the distribution reference grammar
    /// (`oci_spec::distribution::Reference`): the first path component is a registry if it
    /// contains `.` or `:` or is `localhost`, else `docker.io` (one-component repositories
    /// there get `library/`); no tag and no digest → `latest`. On top of that, as the
    /// publisher does: an optional `docker://` prefix is stripped, [`DOCKER_HUB_ALIASES`]
    /// become `docker.io`, bracketed IPv6 registries are accepted, digests must be
    /// `sha256:<64 hex>` (stored lower-case) and tags ASCII.
    ///
    /// Errors with [`Error::ImageMetadata`] on empty parts, upper-case repositories, bad tags
    /// or digests.
    pub fn parse(text: &str) -> Result<Reference> {
        let bad = |reason: &str| Error::ImageMetadata {
            reference: text.to_string(),
            reason: reason.to_string(),
        };
        let text = text.strip_prefix("docker://").unwrap_or(text);
        // The distribution grammar has no IPv6 hosts: parse the rest under a stand-in host.
        let (ipv6_registry, body) = match text.split_once('/') {
            Some((host, rest)) if host.starts_with('[') => (
                Some(bracketed_ipv6_host(host).ok_or_else(|| bad("bad IPv6 registry"))?),
                format!("localhost/{rest}"),
            ),
            _ => (None, text.to_string()),
        };
        let parsed = oci_spec::distribution::Reference::try_from(body.as_str())
            .map_err(|e| bad(&e.to_string()))?;
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
        Ok(Reference {
            registry,
            repository,
            tag: parsed.tag().map(str::to_string),
            digest,
        })
    }

    /// `<registry>/<repository>:<tag>` (or `@<digest>` without a tag): the directory below
    /// `.metadata/` and the containerd image name.
    pub fn public_path(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}/{}:{t}", self.registry, self.repository),
            (None, Some(d)) => format!("{}/{}@{d}", self.registry, self.repository),
            (None, None) => format!("{}/{}:latest", self.registry, self.repository),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn path(t: &str) -> String {
        Reference::parse(t)
            .unwrap_or_else(|e| panic!("{t}: {e}"))
            .public_path()
    }

    #[test]
    fn normalises_like_the_contract() {
        assert_eq!(path("debian:12"), "docker.io/library/debian:12");
        assert_eq!(path("docker.io/debian:12"), "docker.io/library/debian:12");
        assert_eq!(path("127.0.0.1:5000/demo:1"), "127.0.0.1:5000/demo:1");
        assert_eq!(path("127.0.0.1:5000/demo"), "127.0.0.1:5000/demo:latest");
        assert_eq!(path("docker://localhost/a/b"), "localhost/a/b:latest");
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
    fn aliases_ipv6_and_digest_case_match_the_publisher() {
        for alias in DOCKER_HUB_ALIASES {
            assert_eq!(
                path(&format!("docker://{alias}/debian:12")),
                "docker.io/library/debian:12"
            );
        }
        assert_eq!(path("[::1]:5000/demo:1"), "[::1]:5000/demo:1");
        assert_eq!(
            path(&format!("demo@sha256:{}", "AB".repeat(32))),
            format!("docker.io/library/demo@sha256:{}", "ab".repeat(32))
        );
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Demo:1",
            "a//b",
            "demo:",
            "demo@md5:00",
            "demo:-x",
            "../x",
            "[zz]/x",
            "demo:t\u{e9}",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
