//! `strata-publisher sync`: makes the repository equal to a recipe, once or in a loop
//! ([`crate::sync::sync_pass`]).

use std::path::{Path, PathBuf};

use clap::Args;

use crate::error::{Error, Result};
use crate::events::{EventLog, Outcome};
use crate::layer::Limits;
use crate::recipe::Recipe;
use crate::source::registry::RegistryOptions;
use crate::sync::SyncOptions;

/// Command-line options of `strata-publisher sync`: the repository, the recipe (DUCC
/// wishlist), whether to loop and how often, the event log, dry run, and registry and
/// layer-limit settings. The subcommand's help text is the doc comment of `Command::Sync`,
/// which clap sets after this one.
#[derive(Args)]
pub struct SyncArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// The recipe (version: 1, cvmfs_repo, input: [...]); re-read at every pass.
    #[arg(long)]
    pub recipe: PathBuf,
    /// Run passes forever, --interval apart.
    #[arg(long = "loop")]
    pub repeat: bool,
    /// Time between the start of two passes with --loop (e.g. 5m, 30s).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,
    /// JSON-lines event log (default DIR/events.jsonl).
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Print the plan (added/updated/removed/unchanged/failed), change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Docker config.json with `auths` (as for ingest).
    #[arg(long)]
    pub authfile: Option<PathBuf>,
    /// Registry `HOST[:PORT]` that may be reached over plain HTTP (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure: Vec<String>,
    /// Largest uncompressed layer, in bytes.
    #[arg(long, default_value_t = crate::layer::DEFAULT_MAX_LAYER_SIZE)]
    pub max_layer_size: u64,
    /// File contents held in memory at once, in bytes, shared by all layers converted at
    /// the same time (pieces being read, queued and compressed). Default: (CPUs + 2) ×
    /// 16 MiB, at least 64 MiB. Smaller values save memory and may slow large files.
    #[arg(long, value_name = "BYTES")]
    pub memory_budget: Option<u64>,
}

/// Runs one pass, or with `--loop` passes forever, `--interval` apart (a failed pass is
/// reported on stderr and the loop goes on).
///
/// Errors (one pass only): those of `pass`.
pub fn run(args: SyncArgs) -> Result<()> {
    let rt = super::runtime()?;
    let options = SyncOptions {
        registry: RegistryOptions {
            credentials: None,
            authfile: args.authfile,
            insecure: args.insecure,
        },
        limits: Limits {
            max_layer_size: args.max_layer_size,
            memory_budget: args.memory_budget,
        },
        dry_run: args.dry_run,
    };
    let events = args
        .events
        .unwrap_or_else(|| args.repo.join("events.jsonl"));
    loop {
        let started = std::time::Instant::now();
        let r = rt.block_on(pass(&args.repo, &args.recipe, &events, &options));
        if !args.repeat {
            return r;
        }
        if let Err(e) = r {
            eprintln!("strata-publisher: sync pass: {}", super::error_chain(&e));
        }
        std::thread::sleep(args.interval.saturating_sub(started.elapsed()));
    }
}

/// One pass: prints one line per image and the summary.
///
/// Errors: [`Error::SyncFailed`] if any image or recipe entry failed; a recipe or event
/// log that cannot be read or opened; those of [`crate::sync::sync_pass`], in an
/// [`Error::Context`] naming the repository and recipe.
async fn pass(repo: &Path, recipe_file: &Path, events: &Path, options: &SyncOptions) -> Result<()> {
    let recipe = Recipe::load(recipe_file)?;
    let label = recipe_file.display().to_string();
    let mut log = if options.dry_run {
        None
    } else {
        Some(EventLog::open(events, &EventLog::new_pass_id())?)
    };
    let report = crate::sync::sync_pass(repo, &recipe, &label, options, log.as_mut())
        .await
        .map_err(|e| e.context(format!("syncing {} to {label}", repo.display())))?;
    let verb = |o: Outcome| match (o, options.dry_run) {
        (Outcome::Added, false) => "added",
        (Outcome::Added, true) => "would add",
        (Outcome::Updated, false) => "updated",
        (Outcome::Updated, true) => "would update",
        (Outcome::Removed, false) => "removed",
        (Outcome::Removed, true) => "would remove",
        (Outcome::Unchanged, _) => "unchanged",
        (Outcome::Failed, _) => "FAILED",
    };
    for e in &report.events {
        let digest = e
            .digest
            .as_deref()
            .or(e.previous_digest.as_deref())
            .unwrap_or("");
        match &e.error {
            Some(err) => println!("{:<12} {}: {err}", verb(e.event), e.image),
            None => println!(
                "{:<12} {} {digest} ({:.2} s)",
                verb(e.event),
                e.image,
                e.seconds
            ),
        }
    }
    let s = &report.summary;
    let revision = match s.revision {
        Some(r) => format!("published revision {r}"),
        None => "no new revision".to_string(),
    };
    println!(
        "{revision}: {} added, {} updated, {} removed, {} unchanged, {} failed, {} entries pruned in {:.2} s",
        s.added, s.updated, s.removed, s.unchanged, s.failed, report.pruned, s.seconds
    );
    if s.failed > 0 {
        return Err(Error::SyncFailed(s.failed));
    }
    Ok(())
}
