//! `strata-publisher startup`: publishes an image's startup working set from an access
//! trace ([`crate::startup::publish_startup`]), given (`--trace`) or recorded here in a
//! sandbox (`--record`, [`crate::record`]).

use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};
use crate::record::RecordOptions;
use crate::startup::StartupOptions;

/// Command-line options of `strata-publisher startup`: the repository, the image, and its
/// access trace or how to record one. The subcommand's help text is the doc comment of
/// `Command::Startup`, which clap sets after this one.
#[derive(Args)]
pub struct StartupArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Access trace of the image's start (`strata-snapshotter mount --trace FILE`).
    #[arg(long, required_unless_present = "record", conflicts_with = "record")]
    pub trace: Option<PathBuf>,
    /// Record the start here instead: mount the published revision with `--trace` and
    /// run the image's Entrypoint + Cmd (or the command after `--`) in a bwrap sandbox
    /// (no network, read-only root, /tmp a tmpfs) until it exits or --timeout passes.
    #[arg(long)]
    pub record: bool,
    /// With --record: stop the start after this long (e.g. 30s, 2m).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, requires = "record")]
    pub timeout: std::time::Duration,
    /// With --record: the strata-snapshotter to mount with (default: next to this program,
    /// else from PATH).
    #[arg(long, requires = "record")]
    pub snapshotter: Option<PathBuf>,
    /// With --record: also write the recorded trace to this file.
    #[arg(long, requires = "record")]
    pub save_trace: Option<PathBuf>,
    /// Platform the trace belongs to (default: the image's only platform, else
    /// linux/amd64).
    #[arg(long)]
    pub platform: Option<String>,
    /// Close a pack once it holds this many bytes.
    #[arg(long, default_value_t = StartupOptions::default().pack_size)]
    pub pack_size: u64,
    /// Leave out objects past this many bytes in all.
    #[arg(long, default_value_t = StartupOptions::default().max_bytes)]
    pub max_bytes: u64,
    /// Leave out chunked files larger than this many bytes (version 1 traces, which do not
    /// say which chunks were read).
    #[arg(long, default_value_t = StartupOptions::default().max_chunked_file)]
    pub max_chunked_file: u64,
    /// The image, as published (`REGISTRY/REPOSITORY:TAG`, or `REPOSITORY@sha256:…`).
    pub image: String,
    /// With --record: the command to run instead of the image's Entrypoint + Cmd.
    #[arg(last = true, requires = "record")]
    pub command: Vec<String>,
}

/// Publishes the working set and prints what went in (with --record, first what ran).
///
/// Errors: those of [`crate::startup::publish_startup`] and [`crate::record::record`], in
/// an [`Error::Context`] naming the repository and image.
pub fn run(args: StartupArgs) -> Result<()> {
    let platform = args
        .platform
        .as_deref()
        .map(namespace::Platform::parse)
        .transpose()?;
    let context = |e: Error| Error::Context {
        context: format!(
            "publishing the startup working set of {} in {}",
            args.image,
            args.repo.display()
        ),
        source: Box::new(e),
    };
    let (trace, trace_name) = match &args.trace {
        Some(file) => (
            std::fs::read_to_string(file)
                .map_err(|e| Error::io(format!("reading the trace {}", file.display()), e))?,
            file.display().to_string(),
        ),
        None => {
            let options = RecordOptions {
                command: args.command.clone(),
                timeout: args.timeout,
                snapshotter: args.snapshotter.clone(),
                platform: platform.clone(),
            };
            let recorded = super::runtime()?
                .block_on(crate::record::record(&args.repo, &args.image, &options))
                .map_err(context)?;
            println!(
                "recorded {:?}: {} after {:.1} s, {} file(s) read",
                recorded.command,
                recorded.ended,
                recorded.elapsed.as_secs_f64(),
                recorded.trace.lines().skip(1).count()
            );
            if let Some(file) = &args.save_trace {
                std::fs::write(file, &recorded.trace)
                    .map_err(|e| Error::io(format!("writing {}", file.display()), e))?;
            }
            (
                recorded.trace,
                format!("the recorded start of {}", args.image),
            )
        }
    };
    let options = StartupOptions {
        platform,
        pack_size: args.pack_size.max(1),
        max_bytes: args.max_bytes,
        max_chunked_file: args.max_chunked_file,
    };
    let summary =
        crate::startup::publish_startup(&args.repo, &args.image, &trace, &trace_name, &options)
            .map_err(context)?;
    println!("{summary}");
    Ok(())
}
