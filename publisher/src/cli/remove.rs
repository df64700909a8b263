//! `strata-publisher remove`: takes images out of the repository
//! ([`crate::removal::remove`]).

use std::path::PathBuf;

use clap::Args;

use crate::error::Result;

/// Command-line options of `strata-publisher remove`: the repository and the published
/// names to take out. The subcommand's help text is the doc comment of `Command::Remove`,
/// which clap sets after this one.
#[derive(Args)]
pub struct RemoveArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Images as published: REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:HEX.
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// Removes the images and prints the new revision and what went with them.
///
/// Errors: those of [`crate::removal::remove`], in an [`crate::Error::Context`] naming the
/// repository.
pub fn run(args: RemoveArgs) -> Result<()> {
    let s = crate::removal::remove(&args.repo, &args.images)
        .map_err(|e| e.context(format!("removing images from {}", args.repo.display())))?;
    println!(
        "revision {}: removed {}; pruned {} flat tree(s), {} layer(s), {} ChainID link(s); podman store: {} image(s), {} layer(s)",
        s.revision,
        s.removed.join(", "),
        s.pruned.flats.len(),
        s.pruned.layers.len(),
        s.pruned.chains.len(),
        s.podman.images,
        s.podman.layers
    );
    Ok(())
}
