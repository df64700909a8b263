//! `strata-publisher gc`: deletes objects no retained revision references
//! ([`crate::gc::gc`]).

use std::path::PathBuf;

use clap::Args;

use crate::error::Result;
use crate::gc::GcOptions;

/// Command-line options of `strata-publisher gc`: the repository, how many revisions stay
/// readable, the grace period for new objects, and dry run. The subcommand's help text is
/// the doc comment of `Command::Gc`, which clap sets after this one.
#[derive(Args)]
pub struct GcArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Revisions to keep readable, counting the current one.
    #[arg(long, default_value_t = crate::gc::DEFAULT_KEEP_REVISIONS as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_revisions: u64,
    /// Never delete objects modified less than this long ago (e.g. 1h, 0s).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub grace: std::time::Duration,
    /// List what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Collects garbage and prints what was (or, with `--dry-run`, would be) deleted and
/// kept.
///
/// Errors: those of [`crate::gc::gc`], in an [`crate::Error::Context`] naming the
/// repository.
pub fn run(args: GcArgs) -> Result<()> {
    let GcArgs {
        repo,
        keep_revisions,
        grace,
        dry_run,
    } = args;
    let options = GcOptions {
        keep_revisions: usize::try_from(keep_revisions).unwrap_or(usize::MAX),
        grace,
        dry_run,
    };
    let r = crate::gc::gc(&repo, &options)
        .map_err(|e| e.context(format!("garbage-collecting {}", repo.display())))?;
    for c in &r.candidates {
        println!("would delete {c}");
    }
    let revisions: Vec<String> = r.retained.iter().map(|(n, _)| n.to_string()).collect();
    println!(
        "{} {} object(s), {} ({} bytes); kept {} referenced by revision(s) {} ({} catalogs), {} younger than the grace period; {} scanned",
        if dry_run { "would delete" } else { "deleted" },
        r.deleted,
        crate::listing::human_bytes(r.bytes_freed),
        r.bytes_freed,
        r.referenced,
        revisions.join(", "),
        r.catalogs,
        r.young,
        r.scanned
    );
    Ok(())
}
