//! `strata-publisher` command line (docs/CONTRACTS.md §4): parses the arguments
//! ([`publisher::cli::Cli`]), sets up logging, runs the subcommand and turns its error into
//! the exit status.

use std::process::ExitCode;

use clap::Parser;
use publisher::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match Cli::parse().command {
        Command::Init(args) => cli::init::run(args),
        Command::Ingest(args) => cli::ingest::run(args),
        Command::Verify(args) => cli::verify::run(args),
        Command::Ls(args) => cli::ls::run(args),
        Command::Resign(args) => cli::resign::run(args),
        Command::Sync(args) => cli::sync::run(args),
        Command::Gc(args) => cli::gc::run(args),
        Command::Remove(args) => cli::remove::run(args),
        Command::Startup(args) => cli::startup::run(args),
        Command::Serve(args) => cli::serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-publisher: {}", cli::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
