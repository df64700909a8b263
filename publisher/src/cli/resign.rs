//! `strata-publisher resign`: signs a fresh whitelist ([`crate::publish::resign`]).

use std::path::PathBuf;

use clap::Args;

use crate::error::Result;

/// Command-line options of `strata-publisher resign`: the repository and the new
/// whitelist's validity. The subcommand's help text is the doc comment of
/// `Command::Resign`, which clap sets after this one.
#[derive(Args)]
pub struct ResignArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Validity in days (1 to 36500; 0 would sign a whitelist that has already expired).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=36500))]
    pub days: u64,
}

/// Re-signs the whitelist and prints until when it is valid.
///
/// Errors: those of [`crate::publish::resign`].
pub fn run(args: ResignArgs) -> Result<()> {
    let expires = crate::publish::resign(&args.repo, args.days)?;
    println!(
        "whitelist of {} re-signed, valid until {}",
        args.repo.display(),
        catalog::whitelist::format_utc(expires)
    );
    Ok(())
}
