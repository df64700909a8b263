//! `strata-publisher startup`: publishes an image's startup working set from an access
//! trace ([`crate::startup::publish_startup`]).

use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};
use crate::startup::StartupOptions;

// The subcommand's help is the doc comment of `Command::Startup`.
#[derive(Args)]
pub struct StartupArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Access trace of the image's start (`strata-snapshotter mount --trace FILE`).
    #[arg(long)]
    pub trace: PathBuf,
    /// Platform the trace was recorded on (default: the image's only platform, else
    /// linux/amd64).
    #[arg(long)]
    pub platform: Option<String>,
    /// Close a pack once it holds this many bytes.
    #[arg(long, default_value_t = StartupOptions::default().pack_size)]
    pub pack_size: u64,
    /// Leave out objects past this many bytes in all.
    #[arg(long, default_value_t = StartupOptions::default().max_bytes)]
    pub max_bytes: u64,
    /// Leave out chunked files larger than this many bytes.
    #[arg(long, default_value_t = StartupOptions::default().max_chunked_file)]
    pub max_chunked_file: u64,
    /// The image, as published (`REGISTRY/REPOSITORY:TAG`, or `REPOSITORY@sha256:…`).
    pub image: String,
}

/// Publishes the working set and prints what went in.
///
/// Errors: those of [`crate::startup::publish_startup`], in an [`Error::Context`] naming
/// the repository and image.
pub fn run(args: StartupArgs) -> Result<()> {
    let platform = args
        .platform
        .as_deref()
        .map(namespace::Platform::parse)
        .transpose()?;
    let options = StartupOptions {
        platform,
        pack_size: args.pack_size.max(1),
        max_bytes: args.max_bytes,
        max_chunked_file: args.max_chunked_file,
    };
    let trace = std::fs::read_to_string(&args.trace)
        .map_err(|e| Error::io(format!("reading the trace {}", args.trace.display()), e))?;
    let summary = crate::startup::publish_startup(
        &args.repo,
        &args.image,
        &trace,
        &args.trace.display().to_string(),
        &options,
    )
    .map_err(|e| Error::Context {
        context: format!(
            "publishing the startup working set of {} in {}",
            args.image,
            args.repo.display()
        ),
        source: Box::new(e),
    })?;
    println!("{summary}");
    Ok(())
}
