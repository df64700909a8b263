//! `strata-publisher init`: creates a repository ([`crate::publish::init`]).

use std::path::PathBuf;

use clap::Args;

use crate::error::Result;

/// Command-line options of `strata-publisher init`: the repository directory, its fqrn and
/// the catalog TTL. The subcommand's help text is the doc comment of `Command::Init`, which
/// clap sets after this one.
#[derive(Args)]
pub struct InitArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Fully qualified repository name, e.g. images.example.org.
    #[arg(long)]
    pub fqrn: String,
    /// Root catalog TTL in seconds.
    #[arg(long, default_value_t = crate::repo::DEFAULT_TTL)]
    pub ttl: u64,
}

/// Creates the repository and prints its name and revision.
///
/// Errors: those of [`crate::publish::init`], in an [`crate::Error::Context`] naming the
/// directory.
pub fn run(args: InitArgs) -> Result<()> {
    let InitArgs { repo, fqrn, ttl } = args;
    let m = crate::publish::init(&repo, &fqrn, ttl)
        .map_err(|e| e.context(format!("creating repository in {}", repo.display())))?;
    println!(
        "created {fqrn} in {} (revision {})",
        repo.display(),
        m.revision
    );
    Ok(())
}
