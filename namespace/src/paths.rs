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
//! podmanStore/overlay/<layer id>/{diff → ../../../.layers/<hh>/<hex>/layerfs, link, lower}
//! podmanStore/overlay/l/<link name>               → ../<layer id>/diff
//! podmanStore/overlay-layers/{layers.json,layers.lock}
//! podmanStore/overlay-images/{images.json,images.lock}
//! podmanStore/overlay-images/<config hex>/{manifest,=<base64 key>…}
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

/// The podman (containers-storage) additional image store at the repository root
/// (docs/namespace.md §10a), named as DUCC names it in `unpacked.cern.ch`.
pub const PODMAN_STORE: &str = "podmanStore";
/// The overlay driver's directory inside the store: one directory per layer, and `l/`.
pub const PODMAN_OVERLAY: &str = "overlay";
/// The short-name symlinks inside `overlay/` (containers-storage's `linkDir`).
pub const PODMAN_LINKS: &str = "l";
/// The image store inside the store (`<driver>-images`).
pub const PODMAN_IMAGES: &str = "overlay-images";
/// The layer store inside the store (`<driver>-layers`).
pub const PODMAN_LAYERS: &str = "overlay-layers";
/// The image records inside `overlay-images/`.
pub const PODMAN_IMAGES_JSON: &str = "images.json";
/// The image store's lock file inside `overlay-images/` (must exist; opened read-only).
pub const PODMAN_IMAGES_LOCK: &str = "images.lock";
/// The layer records inside `overlay-layers/`.
pub const PODMAN_LAYERS_JSON: &str = "layers.json";
/// The layer store's lock file inside `overlay-layers/` (must exist; opened read-only).
pub const PODMAN_LAYERS_LOCK: &str = "layers.lock";
/// A layer's tree inside `overlay/<layer id>/`: here a symlink to the layer's `layerfs`.
pub const PODMAN_DIFF: &str = "diff";
/// A layer's short name inside `overlay/<layer id>/` (the name of its `l/` symlink).
pub const PODMAN_LINK: &str = "link";
/// A layer's lower layers inside `overlay/<layer id>/`: `l/<name>:l/<name>…`, nearest first.
pub const PODMAN_LOWER: &str = "lower";
/// The big-data key of an image's manifest that podman reads without a digest.
pub const PODMAN_MANIFEST_KEY: &str = "manifest";
/// Length of a short layer name (containers-storage's overlay `idLength`).
pub const PODMAN_LINK_LEN: usize = 26;

/// The containers-storage layer IDs of a layer stack with `diff_ids` (bottom first), as
/// containers/image gives them when it pulls the image (`storage_dest.go`, `layerID`): the
/// bottom layer's is its diffID's hex, every other `sha256(<parent id> + "+" + <diffID hex>)`.
/// A pull of the same image into a node's own store thus names the same layers.
pub fn podman_layer_ids(diff_ids: &[Digest]) -> Vec<Sha256Hex> {
    let mut out: Vec<Sha256Hex> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.hex().clone(),
            Some(parent) => Sha256Hex::of_bytes(format!("{parent}+{}", diff.hex()).as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The short name of layer `id` (what `overlay/<id>/link` holds and `overlay/l/` lists):
/// [`PODMAN_LINK_LEN`] characters of RFC 4648 base32 (`A-Z2-7`, the alphabet
/// containers-storage draws its random names from) of `sha256("strata-podman-link:" + id)`,
/// so that every revision names a layer alike.
pub fn podman_link_name(id: &Sha256Hex) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Digest::of_bytes(format!("strata-podman-link:{id}").as_bytes());
    let bytes: Vec<u8> = (0..32)
        .filter_map(|i| u8::from_str_radix(&digest.hex().as_str()[2 * i..2 * i + 2], 16).ok())
        .collect();
    let mut out = String::with_capacity(PODMAN_LINK_LEN);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in bytes {
        if out.len() == PODMAN_LINK_LEN {
            break;
        }
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 && out.len() < PODMAN_LINK_LEN {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
        buffer &= (1 << bits) - 1;
    }
    out
}

/// `podmanStore/overlay/<layer id>`.
pub fn podman_layer_dir(id: &Sha256Hex) -> [&str; 3] {
    [PODMAN_STORE, PODMAN_OVERLAY, id.as_str()]
}

/// The target of `podmanStore/overlay/<layer id>/diff`: the layer's `layerfs`, relative
/// (`../../../.layers/<hh>/<hex>/layerfs`), so it resolves under any mount point.
pub fn podman_diff_target(id: &Sha256Hex, layer: &Digest) -> String {
    relative_target(&podman_layer_dir(id), &layerfs(layer))
}

/// `podmanStore/overlay/l`.
pub fn podman_links_dir() -> [&'static str; 3] {
    [PODMAN_STORE, PODMAN_OVERLAY, PODMAN_LINKS]
}

/// The target of `podmanStore/overlay/l/<link name>`: `../<layer id>/diff`, the form
/// containers-storage reads back (it takes the layer ID from it).
pub fn podman_link_target(id: &Sha256Hex) -> String {
    format!("../{id}/{PODMAN_DIFF}")
}

/// An entry of a `lower` file: `l/<link name>`.
pub fn podman_lower_entry(link_name: &str) -> String {
    format!("{PODMAN_LINKS}/{link_name}")
}

/// `podmanStore/overlay-layers`.
pub fn podman_layers_dir() -> [&'static str; 2] {
    [PODMAN_STORE, PODMAN_LAYERS]
}

/// `podmanStore/overlay-images`.
pub fn podman_images_dir() -> [&'static str; 2] {
    [PODMAN_STORE, PODMAN_IMAGES]
}

/// `podmanStore/overlay-images/<config hex>`: the image's big-data files (its ID is the
/// config digest's hex, as containers/image gives it).
pub fn podman_image_dir(config: &Digest) -> [&str; 3] {
    [PODMAN_STORE, PODMAN_IMAGES, config.hex().as_str()]
}

/// The big-data key of the manifest with digest `manifest`: `manifest-sha256:<hex>`.
pub fn podman_manifest_key(manifest: &Digest) -> String {
    format!("{PODMAN_MANIFEST_KEY}-{manifest}")
}

/// The file name of big-data item `key` in an image directory, as containers-storage makes
/// it (`makeBigDataBaseName`): the key itself if it has only `[.0-9a-z]`, else `=` and its
/// standard base64.
pub fn podman_big_data_name(key: &str) -> String {
    if key
        .bytes()
        .all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase())
    {
        return key.to_string();
    }
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::from("=");
    for chunk in key.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
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

/// The image root filesystem that repository path `path` lies in: the `.flat/<hh>/<hex>`
/// of a flattened image or the `.layers/<hh>/<hex>/layerfs` of a layer, as the prefix of
/// `path` (with `path`'s leading `/`, if any); `None` for paths outside both, and for the
/// directories above a root.
pub fn image_root_of(path: &str) -> Option<&str> {
    let rel = path.strip_prefix('/').unwrap_or(path);
    let lead = path.len() - rel.len();
    let mut parts = rel.split('/');
    let first = parts.next()?;
    let (depth, last) = match first {
        FLAT => (3, None),
        LAYERS => (4, Some(LAYERFS)),
        _ => return None,
    };
    // Without allocating: this runs on every file opened.
    let mut len = first.len();
    let mut component = first;
    for _ in 1..depth {
        component = parts.next().filter(|c| !c.is_empty())?;
        len += 1 + component.len();
    }
    if last.is_some_and(|l| l != component) {
        return None;
    }
    Some(&path[..lead + len])
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
    fn image_root_of_a_path() {
        let (l, f) = (digest('a'), digest('f'));
        let layer = absolute(&layerfs(&l));
        let flat = absolute(&flat_dir(&f));
        let lib = format!("{layer}/usr/lib/libz.so.1");
        assert_eq!(image_root_of(&lib), Some(layer.as_str()));
        assert_eq!(image_root_of(&layer), Some(layer.as_str()));
        assert_eq!(
            image_root_of(&format!("{flat}/bin/sh")),
            Some(flat.as_str())
        );
        // Without the leading slash, the root comes without it too.
        assert_eq!(image_root_of(&lib[1..]), Some(&layer[1..]), "relative path");
        // Above a root, beside one, or outside both.
        let layer_dir = absolute(&layer_dir(&l));
        assert_eq!(image_root_of(&layer_dir), None);
        assert_eq!(
            image_root_of(&format!("{layer_dir}/.metadata/layer.json")),
            None
        );
        assert_eq!(image_root_of("/.flat/ff"), None);
        assert_eq!(image_root_of("/.flat//x/bin"), None);
        assert_eq!(image_root_of("/docker.io/library/debian:12/bin/sh"), None);
        assert_eq!(image_root_of(""), None);
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
    fn podman_store_names_follow_containers_storage() -> crate::Result<()> {
        let (d1, d2) = (digest('1'), digest('2'));
        let ids = podman_layer_ids(&[d1.clone(), d2.clone()]);
        assert_eq!(ids[0].as_str(), "1".repeat(64));
        assert_eq!(
            ids[1],
            Sha256Hex::of_bytes(format!("{}+{}", "1".repeat(64), "2".repeat(64)).as_bytes())
        );
        assert!(podman_layer_ids(&[]).is_empty());
        let link = podman_link_name(&ids[1]);
        assert_eq!(link.len(), PODMAN_LINK_LEN);
        assert!(
            link.bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        );
        assert_eq!(link, podman_link_name(&ids[1]));
        assert_ne!(link, podman_link_name(&ids[0]));
        let a = "a".repeat(64);
        assert_eq!(
            podman_diff_target(&ids[0], &digest('a')),
            format!("../../../.layers/aa/{a}/layerfs")
        );
        assert_eq!(
            join(&podman_layer_dir(&ids[0])),
            format!("podmanStore/overlay/{}", ids[0])
        );
        assert_eq!(podman_link_target(&ids[0]), format!("../{}/diff", ids[0]));
        assert_eq!(podman_lower_entry("ABC"), "l/ABC");
        assert_eq!(
            join(&podman_image_dir(&digest('f'))),
            format!("podmanStore/overlay-images/{}", "f".repeat(64))
        );
        // Names containers-storage wrote (podman 5.8, `podman import`).
        assert_eq!(podman_big_data_name("manifest"), "manifest");
        let config: Digest =
            "sha256:91faf78d33ea6c3a48fa4866f6e8d4b505a282e5974e01e8784f2df25519d6e5".parse()?;
        assert_eq!(
            podman_big_data_name(&config.to_string()),
            "=c2hhMjU2OjkxZmFmNzhkMzNlYTZjM2E0OGZhNDg2NmY2ZThkNGI1MDVhMjgyZTU5NzRlMDFlODc4NGYyZGYyNTUxOWQ2ZTU="
        );
        let manifest: Digest =
            "sha256:0b4b8488e2e821407685b26ee55cba54d98f03f1832b46d406a456d24dfa073a".parse()?;
        assert_eq!(
            podman_big_data_name(&podman_manifest_key(&manifest)),
            "=bWFuaWZlc3Qtc2hhMjU2OjBiNGI4NDg4ZTJlODIxNDA3Njg1YjI2ZWU1NWNiYTU0ZDk4ZjAzZjE4MzJiNDZkNDA2YTQ1NmQyNGRmYTA3M2E="
        );
        assert_eq!(podman_big_data_name("ab.1"), "ab.1");
        assert_eq!(podman_big_data_name("x:"), "=eDo=");
        assert_eq!(podman_big_data_name("a-b"), "=YS1i");
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
