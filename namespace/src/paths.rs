//! Where things live in the published namespace (docs/CONTRACTS.md §3), relative to the
//! repository root:
//!
//! ```text
//! .layers/<hh>/<hex>/layerfs                     a layer's tree (nested catalog; <hh> is one too)
//! .layers/<hh>/<hex>/.metadata/layer.json        what is known of the layer
//! .chainids/<hh>/<chainid hex>                   → ../../.layers/<hh>/<hex>/layerfs (top layer)
//! .flat/<hh>/<config hex>                        the flattened image (nested catalog)
//! .metadata/<public>/{manifest,config,index}.json
//! .metadata/<public>/platforms/<os>-<arch>[-<variant>]/{manifest.json,config.json,rootfs}
//! .metadata/<public>/platforms/<os>-<arch>[-<variant>]/startup/{trace,objects,pack-NNN.strata-pack}
//! <public>                                       → ../…/.flat/<hh>/<config hex>
//! ```
//!
//! `<public>` is [`ImageName::public_path`](crate::ImageName::public_path):
//! `<registry>/<repository>:<tag>` or `<registry>/<repository>@sha256:<hex>`; `<hh>` is the
//! first two hex digits ([`Sha256Hex::shard`]). Paths are given as components (for walking
//! a tree) or joined with [`join`] / [`absolute`]; symlink targets as relative text. Only a
//! typed [`Digest`] goes into a path, so no label or manifest text can.

use crate::digest::{Digest, Sha256Hex};

/// The layers directory at the repository root.
pub const LAYERS: &str = ".layers";
/// The ChainID symlinks directory at the repository root.
pub const CHAINIDS: &str = ".chainids";
/// The flattened images directory at the repository root.
pub const FLAT: &str = ".flat";
/// The image metadata directory at the repository root (and a layer's metadata directory
/// next to its `layerfs`).
pub const METADATA: &str = ".metadata";
/// A layer's tree inside `.layers/<hh>/<hex>/`.
pub const LAYERFS: &str = "layerfs";
/// A layer's facts inside `.layers/<hh>/<hex>/.metadata/`.
pub const LAYER_JSON: &str = "layer.json";
/// The per-platform directory inside `.metadata/<public>/`.
pub const PLATFORMS: &str = "platforms";
/// The symlink to the flat tree inside `.metadata/<public>/platforms/<platform>/`.
pub const ROOTFS: &str = "rootfs";
/// The image manifest inside a metadata directory.
pub const MANIFEST_JSON: &str = "manifest.json";
/// The image config inside a metadata directory.
pub const CONFIG_JSON: &str = "config.json";
/// The image index inside `.metadata/<public>/`, when the reference named one.
pub const INDEX_JSON: &str = "index.json";

/// The startup working set of one platform's image, inside its platform directory
/// (docs/namespace.md §9).
pub const STARTUP: &str = "startup";
/// The access trace the startup working set was made from, inside `startup/`.
pub const STARTUP_TRACE: &str = "trace";
/// The ordered object list of the working set, inside `startup/`.
pub const STARTUP_OBJECTS: &str = "objects";
/// The name ending of a startup pack (docs/format.md §13) inside `startup/`.
pub const PACK_SUFFIX: &str = ".strata-pack";

/// `pack-<NNN>.strata-pack`: the `index`th startup pack (zero-based), named so that the
/// names sort in pack order.
pub fn pack_name(index: usize) -> String {
    format!("pack-{index:03}{PACK_SUFFIX}")
}

/// Whether `name` is the file name of a startup pack.
pub fn is_pack_name(name: &str) -> bool {
    name.starts_with("pack-") && name.ends_with(PACK_SUFFIX)
}

/// `a/b/c`.
pub fn join(components: &[&str]) -> String {
    components.join("/")
}

/// `/a/b/c`: the path below the repository root as catalogs spell it.
pub fn absolute(components: &[&str]) -> String {
    format!("/{}", join(components))
}

/// The text of a relative symlink in directory `from_dir` pointing at `to` (both from the
/// repository root): one `../` per component of `from_dir`, then `to`.
pub fn relative_target(from_dir: &[&str], to: &[&str]) -> String {
    format!("{}{}", "../".repeat(from_dir.len()), join(to))
}

fn shard_and_hex(hex: &Sha256Hex) -> (&str, &str) {
    (hex.shard(), hex.as_str())
}

/// `.layers/<hh>`: the bucket of a compressed layer digest (a nested catalog).
pub fn layer_bucket(layer: &Digest) -> [&str; 2] {
    [LAYERS, layer.hex().shard()]
}

/// `.layers/<hh>/<hex>`.
pub fn layer_dir(layer: &Digest) -> [&str; 3] {
    let (hh, hex) = shard_and_hex(layer.hex());
    [LAYERS, hh, hex]
}

/// `.layers/<hh>/<hex>/layerfs`: the layer's tree (a nested catalog).
pub fn layerfs(layer: &Digest) -> [&str; 4] {
    let (hh, hex) = shard_and_hex(layer.hex());
    [LAYERS, hh, hex, LAYERFS]
}

/// `.layers/<hh>/<hex>/.metadata/layer.json`.
pub fn layer_json(layer: &Digest) -> [&str; 5] {
    let (hh, hex) = shard_and_hex(layer.hex());
    [LAYERS, hh, hex, METADATA, LAYER_JSON]
}

/// `.chainids/<hh>/<chainid hex>`: the symlink naming a layer stack.
pub fn chainid_link(chain: &Digest) -> [&str; 3] {
    let (hh, hex) = shard_and_hex(chain.hex());
    [CHAINIDS, hh, hex]
}

/// The target of [`chainid_link`] when `top_layer` is the stack's top layer:
/// `../../.layers/<hh>/<hex>/layerfs`.
pub fn chainid_target(top_layer: &Digest) -> String {
    // The link lives two levels down, in `.chainids/<hh>/`.
    format!("../../{}", join(&layerfs(top_layer)))
}

/// `.flat/<hh>/<config hex>`: the flattened image of the config digest (a nested catalog).
pub fn flat_dir(config: &Digest) -> [&str; 3] {
    let (hh, hex) = shard_and_hex(config.hex());
    [FLAT, hh, hex]
}

/// The components of a public path (`<registry>/<repository>:<tag>`).
pub fn public_components(public: &str) -> Vec<&str> {
    public.split('/').collect()
}

/// `.metadata/<public>`.
pub fn metadata_dir(public: &str) -> Vec<&str> {
    let mut dir = vec![METADATA];
    dir.extend(public_components(public));
    dir
}

/// `.metadata/<public>/platforms/<platform dir>` (`platform_dir` is
/// [`Platform::dir_name`](crate::Platform::dir_name)).
pub fn platform_metadata_dir<'a>(public: &'a str, platform_dir: &'a str) -> Vec<&'a str> {
    let mut dir = metadata_dir(public);
    dir.extend([PLATFORMS, platform_dir]);
    dir
}

/// `.metadata/<public>/platforms/<platform dir>/startup`.
pub fn startup_dir<'a>(public: &'a str, platform_dir: &'a str) -> Vec<&'a str> {
    let mut dir = platform_metadata_dir(public, platform_dir);
    dir.push(STARTUP);
    dir
}

/// The target of a symlink in `from_dir` to the flat tree of `config`:
/// `../…/.flat/<hh>/<config hex>` (the `rootfs` link of a platform directory, and the public
/// symlink from its parent directory).
pub fn flat_target(from_dir: &[&str], config: &Digest) -> String {
    relative_target(from_dir, &flat_dir(config))
}

/// The public symlink `<public>` as (parent directory, name); `None` for an empty path.
pub fn public_link(public: &str) -> Option<(Vec<&str>, &str)> {
    let comps = public_components(public);
    let (name, parent) = comps.split_last()?;
    Some((parent.to_vec(), *name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImageName;

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn layer_chainid_and_flat_paths() {
        let (l, c, f) = (digest('a'), digest('c'), digest('f'));
        let a = "a".repeat(64);
        assert_eq!(join(&layer_bucket(&l)), ".layers/aa");
        assert_eq!(join(&layer_dir(&l)), format!(".layers/aa/{a}"));
        assert_eq!(absolute(&layerfs(&l)), format!("/.layers/aa/{a}/layerfs"));
        assert_eq!(
            absolute(&layer_json(&l)),
            format!("/.layers/aa/{a}/.metadata/layer.json")
        );
        assert_eq!(
            join(&chainid_link(&c)),
            format!(".chainids/cc/{}", "c".repeat(64))
        );
        assert_eq!(chainid_target(&l), format!("../../.layers/aa/{a}/layerfs"));
        assert_eq!(join(&flat_dir(&f)), format!(".flat/ff/{}", "f".repeat(64)));
    }

    #[test]
    fn metadata_and_public_symlinks() -> crate::Result<()> {
        let f = digest('f');
        let flat = format!(".flat/ff/{}", "f".repeat(64));
        let public = ImageName::parse("127.0.0.1:5000/demo/app:v1")?.public_path();
        assert_eq!(
            join(&metadata_dir(&public)),
            ".metadata/127.0.0.1:5000/demo/app:v1"
        );
        let pdir = platform_metadata_dir(&public, "linux-arm64-v8");
        assert_eq!(
            join(&pdir),
            ".metadata/127.0.0.1:5000/demo/app:v1/platforms/linux-arm64-v8"
        );
        assert_eq!(flat_target(&pdir, &f), format!("../../../../../../{flat}"));
        let (parent, name) = public_link(&public).unwrap_or_default();
        assert_eq!(
            (parent.clone(), name),
            (vec!["127.0.0.1:5000", "demo"], "app:v1")
        );
        assert_eq!(flat_target(&parent, &f), format!("../../{flat}"));
        // A digest-only reference is a public path of its own.
        let d = format!("sha256:{}", "d".repeat(64));
        let pinned = ImageName::parse(&format!("localhost/x@{d}"))?.public_path();
        assert_eq!(
            join(&metadata_dir(&pinned)),
            format!(".metadata/localhost/x@{d}")
        );
        assert_eq!(public_link(""), Some((vec![], "")));
        Ok(())
    }

    #[test]
    fn startup_paths_and_pack_names() -> crate::Result<()> {
        let public = ImageName::parse("debian:12")?.public_path();
        assert_eq!(
            join(&startup_dir(&public, "linux-amd64")),
            ".metadata/docker.io/library/debian:12/platforms/linux-amd64/startup"
        );
        assert_eq!(pack_name(0), "pack-000.strata-pack");
        assert_eq!(pack_name(1234), "pack-1234.strata-pack");
        assert!(is_pack_name(&pack_name(7)));
        assert!(!is_pack_name("objects") && !is_pack_name("pack-000.json"));
        Ok(())
    }
}
