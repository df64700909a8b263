//! `strata-publisher serve`: serves the repository over HTTP ([`crate::serve::serve`]).

use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};

/// Command-line options of `strata-publisher serve`: the repository directory and the
/// listen address. The subcommand's help text is the doc comment of `Command::Serve`, which
/// clap sets after this one.
#[derive(Args)]
pub struct ServeArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:8000 (port 0 picks one).
    #[arg(long)]
    pub listen: String,
}

/// Listens on `--listen` and serves until the process is stopped.
///
/// Errors: [`Error::Io`] if the address cannot be bound; those of
/// [`crate::serve::serve`].
pub fn run(args: ServeArgs) -> Result<()> {
    let ServeArgs { repo, listen } = args;
    super::runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| Error::io(format!("binding {listen}"), e))?;
        crate::serve::serve(&repo, listener).await
    })
}
