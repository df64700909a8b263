//! Image reference normalisation for `pull REF` (CONTRACTS §3), the same rules the
//! publisher applies when it names images: `debian:12` → `docker.io/library/debian:12`;
//! `127.0.0.1:5000/demo:1` stays; no tag and no digest → `:latest`; an optional
//! `docker://` prefix is accepted.

use crate::error::{Error, Result};

/// The registry unqualified names refer to.
pub const DEFAULT_REGISTRY: &str = "docker.io";

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
    /// Parses and normalises `text`. The first path component is a registry if it contains
    /// `.` or `:` or is `localhost`. Errors with [`Error::ImageMetadata`] on empty parts,
    /// upper-case repositories, bad tags or digests.
    pub fn parse(text: &str) -> Result<Reference> {
        let bad = |reason: &str| Error::ImageMetadata {
            reference: text.to_string(),
            reason: reason.to_string(),
        };
        let body = text.strip_prefix("docker://").unwrap_or(text);
        let (rest, digest) = match body.split_once('@') {
            Some((r, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("digest must be sha256:<hex>"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("digest must be sha256 followed by 64 hex digits"));
                }
                (r, Some(format!("sha256:{}", hex.to_ascii_lowercase())))
            }
            None => (body, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                && !t.starts_with(['.', '-']);
            if !ok {
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
        let registry_ok = registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
            && registry.bytes().any(|b| b.is_ascii_alphanumeric());
        if !registry_ok {
            return Err(bad("registry must be a host name with optional port"));
        }
        for p in repo_parts {
            let ok = p.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            }) && *p != "."
                && *p != "..";
            if !ok {
                return Err(bad("repository components must be [a-z0-9._-]"));
            }
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
        Ok(Reference {
            registry,
            repository,
            tag,
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
    fn rejects_bad_references() {
        for bad in [
            "",
            "Demo:1",
            "a//b",
            "demo:",
            "demo@md5:00",
            "demo:-x",
            "../x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
