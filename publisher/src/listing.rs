//! `ls`: the images a repository publishes, from `/.metadata` of the current revision
//! (docs/CONTRACTS.md §3): name, platforms, config digest, layers and their sizes.

use std::fmt;

use catalog::Suffix;
use namespace::paths;
use serde::Deserialize;

use crate::error::Result;
use crate::objects::read_object;
use crate::publish::load_namespace;
use crate::repo::Repo;
use crate::tree::Node;

/// One platform of a published image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformListing {
    /// `os/arch[/variant]` (from the `platforms/` directory name, else the config).
    pub platform: String,
    /// `sha256:<hex>` of the config.
    pub config: String,
    /// (layer digest, compressed size in bytes), lowest first.
    pub layers: Vec<(String, u64)>,
}

/// One published image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageListing {
    /// `<registry>/<repository>:<tag>`.
    pub name: String,
    /// Where the public symlink points (relative target).
    pub target: String,
    /// Its platforms.
    pub platforms: Vec<PlatformListing>,
}

/// The fields of a stored `manifest.json` that listing and pruning read.
#[derive(Deserialize)]
pub(crate) struct RawManifest {
    pub(crate) config: RawDescriptor,
    #[serde(default)]
    pub(crate) layers: Vec<RawDescriptor>,
}

/// A descriptor of a stored manifest: digest (as stored) and size.
#[derive(Deserialize)]
pub(crate) struct RawDescriptor {
    pub(crate) digest: String,
    #[serde(default)]
    pub(crate) size: u64,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

fn read_json<T: for<'de> Deserialize<'de>>(repo: &Repo, node: Option<&Node>) -> Option<T> {
    let hash = node?.entry.hash?;
    let bytes = read_object(&repo.store, &hash, Suffix::None, 16 << 20).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn platform_of(repo: &Repo, dir: &Node, name: Option<&str>) -> Option<PlatformListing> {
    let m: RawManifest = read_json(repo, dir.children.get(paths::MANIFEST_JSON))?;
    let platform = match name {
        Some(n) => n.replacen('-', "/", 2),
        None => {
            let c: RawConfig = read_json(repo, dir.children.get(paths::CONFIG_JSON))?;
            format!("{}/{}", c.os, c.architecture)
        }
    };
    Some(PlatformListing {
        platform,
        config: m.config.digest,
        layers: m.layers.into_iter().map(|l| (l.digest, l.size)).collect(),
    })
}

fn collect(repo: &Repo, root: &Node, node: &Node, path: &str, out: &mut Vec<ImageListing>) {
    if node.children.contains_key(paths::MANIFEST_JSON) {
        let platforms = match node.children.get(paths::PLATFORMS) {
            Some(p) => p
                .children
                .iter()
                .filter_map(|(n, d)| platform_of(repo, d, Some(n)))
                .collect(),
            None => platform_of(repo, node, None).into_iter().collect(),
        };
        let comps: Vec<&str> = path.split('/').collect();
        let target = root
            .get(&comps)
            .map(|n| n.entry.symlink.clone())
            .unwrap_or_default();
        out.push(ImageListing {
            name: path.to_string(),
            target,
            platforms,
        });
        return;
    }
    for (name, child) in &node.children {
        if child.is_dir() {
            let p = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}/{name}")
            };
            collect(repo, root, child, &p, out);
        }
    }
}

/// Every image of the current revision, sorted by name.
pub fn list_images(repo: &Repo) -> Result<Vec<ImageListing>> {
    let ns = load_namespace(repo)?;
    let mut out = Vec::new();
    if let Some(meta) = ns.root.get(&[paths::METADATA]) {
        collect(repo, &ns.root, meta, "", &mut out);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `n` bytes as a short human figure (`1.5 MB`, SI units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl fmt::Display for ImageListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} -> {}", self.name, self.target)?;
        for p in &self.platforms {
            let total: u64 = p.layers.iter().map(|(_, s)| s).sum();
            writeln!(
                f,
                "  {}  config {}  {} layer(s), {}",
                p.platform,
                p.config,
                p.layers.len(),
                human_bytes(total)
            )?;
            for (d, s) in &p.layers {
                writeln!(f, "    {d}  {}", human_bytes(*s))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(human_bytes(4_400_000_000), "4.4 GB");
    }
}
