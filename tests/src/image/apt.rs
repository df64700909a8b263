//! Images made of Debian packages only, for the benches: `debootstrap --variant=minbase
//! bookworm` as the first layer, then one layer per `apt-get install` (in a chroot, from the
//! mirror this machine's apt uses), each committed with `umoci repack`.
//!
//! [`PYANA`] is the bench image of the cold-read figures: python3, then numpy and scipy in
//! a layer of their own, the shape of a typical analysis image; [`GCC`] a compiler
//! toolchain.

use std::path::Path;
use std::process::Command;

use super::build::{TestImage, apt_install, cached_image, minbase_bundle, repack, step};
use crate::error::{Result, io_context};

/// A recipe: Debian packages per layer above minbase, and the image config.
#[derive(Debug, Clone, Copy)]
pub struct AptRecipe {
    /// Cache key (change it whenever the recipe changes).
    pub key: &'static str,
    /// Tag of the finished image in its layout.
    pub tag: &'static str,
    /// Packages installed in each layer above the minbase one, bottom first.
    pub layers: &'static [&'static [&'static str]],
    /// The config's `Cmd`.
    pub cmd: &'static str,
}

/// python3 (layer 2), numpy and scipy (layer 3) on bookworm minbase.
pub const PYANA: AptRecipe = AptRecipe {
    key: "bookworm-python3-numpy-scipy-v1",
    tag: "pyana",
    layers: &[&["python3"], &["python3-numpy", "python3-scipy"]],
    cmd: "python3",
};

/// A compiler toolchain: binutils (layer 2), gcc and the C library headers (layer 3) on
/// bookworm minbase.
pub const GCC: AptRecipe = AptRecipe {
    key: "bookworm-gcc-v1",
    tag: "gcc",
    layers: &[&["binutils"], &["gcc", "libc6-dev"]],
    cmd: "gcc",
};

/// The image of `recipe`, cached under `<cache_root>/<key>/` (built first if needed; the
/// build log is `<cache_root>/<key>/build.log`).
///
/// Errors: debootstrap, apt or umoci failing (with the log tail).
pub fn apt_image(cache_root: &Path, recipe: &AptRecipe) -> Result<TestImage> {
    cached_image(cache_root, recipe.key, recipe.tag, |dir| build(dir, recipe))
}

fn build(dir: &Path, recipe: &AptRecipe) -> Result<()> {
    let log = dir.join("build.log");
    let layout = dir.join("oci");
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    let image = |tag: &str| format!("{}:{tag}", layout.display());

    minbase_bundle(&layout, &bundle, &log)?;
    let mut top = "layer1".to_owned();
    repack(&image(&top), &bundle, &log)?;
    for (i, packages) in recipe.layers.iter().enumerate() {
        apt_install(&rootfs, packages, &log)?;
        top = format!("layer{}", i + 2);
        repack(&image(&top), &bundle, &log)?;
    }
    step(
        Command::new("umoci").args([
            "config",
            "--image",
            &image(&top),
            "--tag",
            recipe.tag,
            "--config.env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--config.cmd",
            recipe.cmd,
        ]),
        &log,
    )?;
    std::fs::remove_dir_all(&bundle).map_err(io_context(format!("remove {}", bundle.display())))
}
