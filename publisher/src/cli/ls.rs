//! `strata-publisher ls`: lists the published images ([`crate::listing`]).

use std::path::PathBuf;

use clap::Args;

use crate::error::Result;

/// Command-line options of `strata-publisher ls`: the repository directory. The
/// subcommand's help text is the doc comment of `Command::Ls`, which clap sets after this
/// one.
#[derive(Args)]
pub struct LsArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
}

/// Prints every published image (nothing on stdout, and a note on stderr, if there is
/// none).
///
/// Errors: those of [`crate::repo::Repo::open`] and [`crate::listing::list_images`].
pub fn run(args: LsArgs) -> Result<()> {
    let r = crate::repo::Repo::open(&args.repo)?;
    let images = crate::listing::list_images(&r)?;
    if images.is_empty() {
        // Say so on stderr; stdout stays empty for scripts.
        eprintln!("no images published in {}", args.repo.display());
    }
    for image in images {
        print!("{image}");
    }
    Ok(())
}
