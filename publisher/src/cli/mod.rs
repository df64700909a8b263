//! The `strata-publisher` command line (docs/CONTRACTS.md §4): its clap definitions and
//! one entry point per subcommand, which runs the command and prints what it reports. The
//! binary (`src/main.rs`) parses, sets up logging, calls the entry point and turns an
//! error into the exit status.

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};

pub mod gc;
pub mod ingest;
pub mod init;
pub mod ls;
pub mod remove;
pub mod resign;
pub mod serve;
pub mod startup;
pub mod sync;
pub mod verify;

/// Turns OCI/Docker images into a CernVM-FS repository and serves it.
#[derive(Parser)]
#[command(name = "strata-publisher", version)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands, each with its arguments.
#[derive(Subcommand)]
pub enum Command {
    /// Create a repository: keys, whitelist, empty revision 0.
    Init(init::InitArgs),
    /// Add images and publish one new revision.
    Ingest(ingest::IngestArgs),
    /// Check the published revision: signatures, every catalog, every object hash.
    Verify(verify::VerifyArgs),
    /// List published images: platforms, layers, sizes.
    Ls(ls::LsArgs),
    /// Sign a fresh whitelist (.cvmfswhitelist) with the master key.
    Resign(resign::ResignArgs),
    /// Make the repository equal to a recipe (DUCC wishlist YAML): add, update, remove
    /// images, in one revision per pass. Exits non-zero if any image failed.
    Sync(sync::SyncArgs),
    /// Remove images (their public paths, metadata, podman store entries and every tree no
    /// other image uses) and publish one new revision; objects stay until gc.
    Remove(remove::RemoveArgs),
    /// Publish an image's startup working set (the objects an access trace of its start
    /// read) as startup packs under its metadata, in one new revision.
    Startup(startup::StartupArgs),
    /// Delete objects no retained revision references.
    Gc(gc::GcArgs),
    /// Serve DIR/srv at `http://ADDR/cvmfs/<fqrn>/`.
    Serve(serve::ServeArgs),
}

/// The error and its causes, `: `-separated, skipping a cause whose text an outer message
/// already includes (most of our errors and the registry client's print their source in
/// their own message, so printing every cause would repeat it).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// The tokio runtime a subcommand that talks to the network runs on.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().map_err(|e| Error::io("starting the tokio runtime", e))
}
