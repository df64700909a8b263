//! `strata-snapshotter`: FUSE client of a Strata/CVMFS repository, containerd proxy
//! snapshotter and lazy `pull`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "strata-snapshotter", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount a repository read-only through FUSE (foreground until unmounted or signalled).
    Mount(Box<snapshotter::cmd::mount::MountArgs>),
    /// Serve the containerd Snapshots gRPC API on a unix socket.
    Run(snapshotter::cmd::run::RunArgs),
    /// Put a published image into containerd without downloading its layers.
    Pull(snapshotter::cmd::pull::PullArgs),
    /// Show a cache directory's size, entries, hits/misses and bytes fetched; optionally
    /// evict everything not in use.
    Cache(snapshotter::cmd::cache::CacheArgs),
    /// Ask the mount to fetch an image's startup packs in the background (returns once the first, small pack is in).
    Prefetch(snapshotter::cmd::prefetch::PrefetchArgs),
    /// Read started chunked programs through a mount (started by `mount` itself).
    #[command(hide = true)]
    PageFillReader(snapshotter::cmd::page_fill_reader::PageFillReaderArgs),
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // fuser logs "Failed to send FUSE reply: No such file or directory" at
                // error level for every reply to a request the kernel already dropped
                // (interrupted, or the overlay above was unmounted): dozens per container
                // exit. libfuse ignores that ENOENT as harmless; so do we, unless RUST_LOG
                // asks for fuser::reply.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser::reply=off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Mount(args) => snapshotter::cmd::mount::main(*args).map_err(Into::into),
        Command::Run(args) => snapshotter::cmd::run::main(args).map_err(Into::into),
        Command::Pull(args) => snapshotter::cmd::pull::main(args).map_err(Into::into),
        Command::Cache(args) => snapshotter::cmd::cache::main(args).map_err(Into::into),
        Command::Prefetch(args) => snapshotter::cmd::prefetch::main(args).map_err(Into::into),
        Command::PageFillReader(args) => {
            snapshotter::cmd::page_fill_reader::main(args).map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("strata-snapshotter: error: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, skipping a cause whose text an outer message
/// already includes (errors that print their source in their own message would otherwise
/// repeat it under `{:#}`).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
