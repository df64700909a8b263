//! `strata-snapshotter prefetch --mountpoint DIR REF`: asks the mount to fetch the image's
//! startup packs in the background ([`crate::client::startup`]) and returns once the first, small pack is in — what
//! `pull` does for containerd, for hosts that start images without it (Apptainer on an HPC
//! batch node, before a job array).

use std::path::PathBuf;

use namespace::{ImageName, Platform, paths};

use crate::client::startup::ask_mount;
use crate::pull::image::metadata_dir;
use crate::pull::platform::platform_dir;
use crate::{Error, Result};

/// Command-line arguments of `strata-snapshotter prefetch`.
#[derive(clap::Args, Debug)]
pub struct PrefetchArgs {
    /// The repository's mount point.
    #[arg(long)]
    pub mountpoint: PathBuf,
    /// Platform (`OS/ARCH[/VARIANT]`; default: this node's).
    #[arg(long)]
    pub platform: Option<String>,
    /// The image as published (`REGISTRY/REPOSITORY:TAG`, e.g. `docker.io/library/debian:12`).
    pub reference: String,
}

/// Asks for the prefetch; prints the mount's answer, or that the image has no packs.
///
/// # Errors
/// A reference or platform that does not parse, an image that is not published
/// ([`Error::ImageMetadata`]), or a failed request.
pub fn main(args: PrefetchArgs) -> Result<()> {
    let text = args.reference.as_str();
    let public = ImageName::parse(text.strip_prefix("docker://").unwrap_or(text))?.public_path();
    let platform = match &args.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::node(),
    };
    let meta = metadata_dir(&args.mountpoint, &public);
    let Some(pdir) = platform_dir(&meta, &public, &platform)? else {
        return Err(Error::ImageMetadata {
            reference: public,
            reason: format!(
                "{}: no platforms/ directory (not published, or the mount point is wrong)",
                meta.display()
            ),
        });
    };
    match ask_mount(&pdir.join(paths::STARTUP))? {
        Some(answer) => println!("prefetching {public} ({platform}): {answer}"),
        None => {
            println!("{public} ({platform}) has no startup packs (or the mount does not prefetch)")
        }
    }
    Ok(())
}
