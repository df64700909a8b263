//! The `sync` recipe: the list of wanted images, in the YAML format of DUCC's wishlist
//! (`cvmfs/ducc` `lib/recipe.go`, version 1), plus one extension.
//!
//! ```yaml
//! version: 1
//! cvmfs_repo: 'images.example.org'          # optional; must equal the repository's fqrn
//! input:
//!   - 'https://registry.hub.docker.com/library/debian:12'   # → docker.io/library/debian:12
//!   - 'docker://127.0.0.1:5000/app:1.2*'                    # tag glob over tags/list
//!   - image: 'https://ghcr.io/org/tool:*'                   # extension: an entry as a map
//!     platforms: [linux/amd64, linux/arm64]                 #   publish only these
//!     default_platform: linux/arm64                         #   public symlink target
//! ```
//!
//! * An image is `[scheme://]REGISTRY/REPOSITORY[:TAG][@DIGEST]`; the scheme is `https://`
//!   (default), `docker://` (same as https) or `http://` (the registry is reached over plain
//!   HTTP). Docker Hub's aliases (`registry.hub.docker.com`, `index.docker.io`, …, see
//!   [`crate::reference::DOCKER_HUB_ALIASES`]) are published as `docker.io` (so `…/debian` gets `library/`), as in
//!   docs/CONTRACTS.md §3.
//! * A tag containing `*`, `?` or `[` is a glob (shell rules, as DUCC's Go `path.Match`),
//!   expanded against the registry's tag list at every pass.
//! * DUCC keys this publisher does not use (`user`, `output_format`) are accepted and
//!   ignored, so an existing wishlist works unchanged.
//! * A recipe with any invalid entry is rejected as a whole: syncing half a recipe would
//!   remove the images of the entries that were dropped.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::reference::ImageName;
use crate::source::{Platform, PlatformFilter};

/// One entry of `input:` after normalisation.
#[derive(Clone, Debug)]
pub struct RecipeEntry {
    /// The text as written in the recipe (for messages and the event log).
    pub text: String,
    /// The image; for a glob entry the tag is `None` (see [`RecipeEntry::tag_glob`]).
    pub name: ImageName,
    /// The tag pattern of a glob entry (`1.2*`, `*`).
    pub tag_glob: Option<String>,
    /// `http://` was given: the registry speaks plain HTTP.
    pub plain_http: bool,
    /// Which platforms of an index to publish (empty = all).
    pub platforms: PlatformFilter,
    /// The platform the public symlink points at (linux/amd64 unless given).
    pub default_platform: Platform,
}

impl RecipeEntry {
    /// Whether this entry names tags by a glob.
    pub fn is_glob(&self) -> bool {
        self.tag_glob.is_some()
    }

    /// Whether the published image `other` (a concrete tag) is one this entry wants:
    /// same registry and repository, and the same tag or one the glob matches.
    pub fn covers(&self, other: &ImageName) -> bool {
        if self.name.registry != other.registry || self.name.repository != other.repository {
            return false;
        }
        match (&self.tag_glob, &other.tag) {
            (Some(g), Some(t)) => glob_matches(g, t),
            (Some(_), None) => false,
            (None, _) => self.name.tag == other.tag && self.name.digest == other.digest,
        }
    }

    /// The concrete image for tag `tag` of a glob entry.
    pub fn with_tag(&self, tag: &str) -> ImageName {
        ImageName {
            tag: Some(tag.to_string()),
            ..self.name.clone()
        }
    }
}

/// Whether `tag` matches the shell glob `pattern` (`*`, `?`, `[…]`); an invalid pattern
/// matches nothing (patterns are checked when the recipe is parsed).
pub fn glob_matches(pattern: &str, tag: &str) -> bool {
    glob::Pattern::new(pattern).is_ok_and(|p| p.matches(tag))
}

/// A parsed recipe.
#[derive(Clone, Debug)]
pub struct Recipe {
    /// `version:`; only 1 exists.
    pub version: u32,
    /// `cvmfs_repo:`, when given.
    pub cvmfs_repo: Option<String>,
    /// The `input:` entries in order.
    pub entries: Vec<RecipeEntry>,
}

#[derive(Deserialize)]
struct RawRecipe {
    version: u32,
    #[serde(default)]
    cvmfs_repo: Option<String>,
    /// `None` when the key is missing or empty (`input:`): refused, because syncing such a
    /// recipe (a truncated file, a template) would remove every published image.
    #[serde(default)]
    input: Option<Vec<RawEntry>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawEntry {
    Plain(String),
    Detailed {
        image: String,
        #[serde(default)]
        platforms: Vec<String>,
        #[serde(default)]
        default_platform: Option<String>,
    },
}

impl Recipe {
    /// Reads and parses the recipe file. Errors: [`Error::Io`] if unreadable,
    /// [`Error::Recipe`] if invalid.
    pub fn load(file: &Path) -> Result<Recipe> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Error::io(format!("read {}", file.display()), e))?;
        Recipe::parse(&text, &file.display().to_string())
    }

    /// Parses recipe text; `label` names it in errors. Errors with [`Error::Recipe`] on
    /// invalid YAML, `version` ≠ 1, or any invalid entry (bad reference, scheme, glob,
    /// platform, a glob together with a digest).
    pub fn parse(text: &str, label: &str) -> Result<Recipe> {
        let bad = |reason: String| Error::Recipe {
            file: label.to_string(),
            reason,
        };
        let raw: RawRecipe =
            serde_norway::from_str(text).map_err(|e| bad(format!("invalid YAML: {e}")))?;
        if raw.version != 1 {
            return Err(bad(format!(
                "version {} is not supported (only 1)",
                raw.version
            )));
        }
        let input = raw.input.ok_or_else(|| {
            bad("no `input:` list (write `input: []` to remove every published image)".into())
        })?;
        let mut entries = Vec::with_capacity(input.len());
        for (i, e) in input.into_iter().enumerate() {
            let (image, platforms, default_platform) = match e {
                RawEntry::Plain(s) => (s, Vec::new(), None),
                RawEntry::Detailed {
                    image,
                    platforms,
                    default_platform,
                } => (image, platforms, default_platform),
            };
            let entry = parse_entry(&image, &platforms, default_platform.as_deref())
                .map_err(|e| bad(format!("input #{} {image:?}: {e}", i + 1)))?;
            entries.push(entry);
        }
        Ok(Recipe {
            version: raw.version,
            cvmfs_repo: raw.cvmfs_repo,
            entries,
        })
    }

    /// Checks `cvmfs_repo` (when given) against the repository's fqrn. Errors with
    /// [`Error::Recipe`] on a mismatch, so a recipe never syncs the wrong repository.
    pub fn check_repository(&self, fqrn: &str, label: &str) -> Result<()> {
        match &self.cvmfs_repo {
            Some(r) if r != fqrn => Err(Error::Recipe {
                file: label.to_string(),
                reason: format!("cvmfs_repo is {r:?} but the repository is {fqrn:?}"),
            }),
            _ => Ok(()),
        }
    }
}

/// Normalises one image reference of the recipe (see the module docs).
fn parse_entry(
    image: &str,
    platforms: &[String],
    default_platform: Option<&str>,
) -> std::result::Result<RecipeEntry, String> {
    let text = image.trim();
    let (rest, plain_http) = if let Some(r) = text.strip_prefix("https://") {
        (r, false)
    } else if let Some(r) = text.strip_prefix("docker://") {
        (r, false)
    } else if let Some(r) = text.strip_prefix("http://") {
        (r, true)
    } else if text.contains("://") {
        return Err("scheme must be https://, http:// or docker://".into());
    } else {
        (text, false)
    };
    // Docker Hub aliases are normalised by `ImageName::parse`.
    // A glob tag: validate the rest with a placeholder tag.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let tag_start = rest[last_slash..].rfind(':').map(|i| last_slash + i + 1);
    let glob_tag = tag_start
        .map(|s| rest[s..].split('@').next().unwrap_or_default().to_string())
        .filter(|t| t.contains(['*', '?', '[']));
    let (name, tag_glob) = match glob_tag {
        Some(g) => {
            if rest.contains('@') {
                return Err("a tag glob cannot be combined with a digest".into());
            }
            glob::Pattern::new(&g).map_err(|e| format!("invalid tag glob {g:?}: {e}"))?;
            let start = tag_start.unwrap_or(rest.len());
            let mut n = ImageName::parse(&format!("{}latest", &rest[..start]))
                .map_err(|e| e.to_string())?;
            n.tag = None;
            (n, Some(g))
        }
        None => (ImageName::parse(rest).map_err(|e| e.to_string())?, None),
    };
    let platforms = PlatformFilter {
        wanted: platforms
            .iter()
            .map(|p| Platform::parse(p).map_err(|e| e.to_string()))
            .collect::<std::result::Result<_, _>>()?,
    };
    let default_platform = match default_platform {
        Some(p) => Platform::parse(p).map_err(|e| e.to_string())?,
        None => Platform::linux_amd64(),
    };
    Ok(RecipeEntry {
        text: text.to_string(),
        name,
        tag_glob,
        plain_http,
        platforms,
        default_platform,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::tests::ok;

    const DUCC: &str = r#"
version: 1
user: cvmfsunpacker
cvmfs_repo: 'unpacked.cern.ch'
output_format: 'https://gitlab-registry.cern.ch/unpacked/sync/$(image)'
input:
  - 'https://registry.hub.docker.com/library/centos:centos7'
  - 'https://registry.hub.docker.com/atlas/analysisbase:21.2.1*'
  - 'https://registry.hub.docker.com/pyhf/pyhf:*'
  - 'docker://127.0.0.1:5000/demo/app:1'
  - 'http://registry.lan:5000/tools@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
  - image: 'https://ghcr.io/org/multi:2'
    platforms: [linux/amd64, linux/arm64/v8]
    default_platform: linux/arm64
"#;

    #[test]
    fn ducc_wishlist_parses_and_normalises() {
        let r = ok(Recipe::parse(DUCC, "recipe.yaml"));
        assert_eq!(r.version, 1);
        assert_eq!(r.cvmfs_repo.as_deref(), Some("unpacked.cern.ch"));
        let e = &r.entries;
        assert_eq!(e.len(), 6);
        assert_eq!(e[0].name.public_path(), "docker.io/library/centos:centos7");
        assert!(!e[0].is_glob());
        assert_eq!(e[1].name.registry, "docker.io");
        assert_eq!(e[1].name.repository, "atlas/analysisbase");
        assert_eq!(e[1].tag_glob.as_deref(), Some("21.2.1*"));
        assert_eq!(e[1].name.tag, None);
        assert_eq!(
            e[1].with_tag("21.2.10").public_path(),
            "docker.io/atlas/analysisbase:21.2.10"
        );
        assert_eq!(e[2].tag_glob.as_deref(), Some("*"));
        assert_eq!(e[3].name.public_path(), "127.0.0.1:5000/demo/app:1");
        assert!(!e[3].plain_http);
        assert!(e[4].plain_http);
        assert_eq!(e[4].name.tag, None);
        assert!(e[4].name.digest.is_some());
        assert_eq!(e[5].platforms.wanted.len(), 2);
        assert_eq!(e[5].default_platform.to_string(), "linux/arm64");
        assert_eq!(e[0].default_platform, Platform::linux_amd64());
        assert!(r.check_repository("unpacked.cern.ch", "r").is_ok());
        assert!(r.check_repository("other.example.org", "r").is_err());
    }

    #[test]
    fn globs_cover_published_tags() {
        let r = ok(Recipe::parse(DUCC, "r"));
        let name = |s: &str| ok(ImageName::parse(s));
        assert!(r.entries[1].covers(&name("atlas/analysisbase:21.2.1")));
        assert!(r.entries[1].covers(&name("atlas/analysisbase:21.2.15-x")));
        assert!(!r.entries[1].covers(&name("atlas/analysisbase:21.3")));
        assert!(!r.entries[1].covers(&name("atlas/other:21.2.1")));
        assert!(r.entries[0].covers(&name("centos:centos7")));
        assert!(!r.entries[0].covers(&name("centos:centos8")));
        assert!(glob_matches("1.?", "1.2"));
        assert!(glob_matches("v[0-9]", "v7"));
        assert!(!glob_matches("v[0-9]", "vx"));
    }

    #[test]
    fn invalid_recipes_are_rejected_whole() {
        for bad in [
            "version: 2\ninput: []\n",
            "input: ['a:1']\n",
            "version: 1\ninput:\n  - 'ftp://x.org/a:1'\n",
            "version: 1\ninput:\n  - 'x.org/A:1'\n",
            "version: 1\ninput:\n  - 'x.org/a:1*@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'\n",
            "version: 1\ninput:\n  - 'x.org/a:[1'\n",
            "version: 1\ninput:\n  - image: 'x.org/a:1'\n    platforms: [linux]\n",
            "version: 1\ninput:\n  - 'good.org/a:1'\n  - 'bad.org/a:b c'\n",
            "not: [valid",
            "version: 1\n",
            "version: 1\ninput:\n",
        ] {
            let e = Recipe::parse(bad, "r");
            assert!(matches!(e, Err(Error::Recipe { .. })), "{bad}: {e:?}");
        }
        let empty = ok(Recipe::parse("version: 1\ninput: []\n", "r"));
        assert!(empty.entries.is_empty());
    }
}
