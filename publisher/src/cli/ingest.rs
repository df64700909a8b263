//! `strata-publisher ingest`: adds images and publishes one new revision
//! ([`crate::ingest::ingest`]).

use std::path::PathBuf;

use clap::Args;

use crate::error::Result;
use crate::ingest::IngestOptions;
use crate::layer::Limits;
use crate::source::auth::Credentials;
use crate::source::registry::RegistryOptions;
use crate::source::{Platform, PlatformFilter};

/// Command-line options of `strata-publisher ingest`: the repository, the image references
/// to convert, and registry, platform and layer-limit settings. The subcommand's help text
/// is the doc comment of `Command::Ingest`, which clap sets after this one.
#[derive(Args)]
pub struct IngestArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Public name REGISTRY/REPO:TAG for the oci: or docker-archive: reference.
    #[arg(long)]
    pub name: Option<String>,
    /// Publish only this platform of an index, os/arch[/variant] (repeatable; default:
    /// every platform).
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    pub platforms: Vec<String>,
    /// The platform the public symlink points at (else the first one published).
    #[arg(long, default_value = "linux/amd64", value_name = "OS/ARCH[/VARIANT]")]
    pub default_platform: String,
    /// Registry user name (with --password); else credentials come from --authfile.
    #[arg(long, requires = "password")]
    pub username: Option<String>,
    /// Registry password or token.
    #[arg(
        long,
        requires = "username",
        env = "STRATA_REGISTRY_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Docker config.json with `auths` (default $DOCKER_CONFIG/config.json, then
    /// ~/.docker/config.json).
    #[arg(long)]
    pub authfile: Option<PathBuf>,
    /// Registry `HOST[:PORT]` that may be reached over plain HTTP (repeatable; loopback
    /// hosts always may).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure: Vec<String>,
    /// Largest uncompressed layer (and total file contents of one layer), in bytes.
    #[arg(long, default_value_t = crate::layer::DEFAULT_MAX_LAYER_SIZE)]
    pub max_layer_size: u64,
    /// File contents held in memory at once, in bytes, shared by all layers converted at
    /// the same time (pieces being read, queued and compressed). Default: (CPUs + 2) ×
    /// 16 MiB, at least 64 MiB. Smaller values save memory and may slow large files.
    #[arg(long, value_name = "BYTES")]
    pub memory_budget: Option<u64>,
    /// `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`, `oci:DIR[:TAG]` or `docker-archive:FILE`.
    #[arg(required = true)]
    pub refs: Vec<String>,
}

/// Ingests the images and prints the revision published and one line per image.
///
/// Errors: a bad platform or reference; those of [`crate::ingest::ingest`], in an
/// [`crate::Error::Context`] naming the repository.
pub fn run(args: IngestArgs) -> Result<()> {
    let rt = super::runtime()?;
    let registry = RegistryOptions {
        credentials: args
            .username
            .zip(args.password)
            .map(|(username, password)| Credentials { username, password }),
        authfile: args.authfile,
        insecure: args.insecure,
    };
    let options = IngestOptions {
        platforms: PlatformFilter {
            wanted: args
                .platforms
                .iter()
                .map(|p| Platform::parse(p).map_err(crate::Error::from))
                .collect::<Result<_>>()?,
        },
        default_platform: Platform::parse(&args.default_platform)?,
        limits: Limits {
            max_layer_size: args.max_layer_size,
            memory_budget: args.memory_budget,
        },
    };
    let sources = crate::ingest::sources(&args.refs, args.name.as_deref(), &registry)?;
    let repo = args.repo;
    let s = rt
        .block_on(crate::ingest::ingest(&repo, sources, &options))
        .map_err(|e| e.context(format!("ingesting into {}", repo.display())))?;
    println!(
        "published revision {}: {} image(s), {} layer(s) converted, {} reused",
        s.revision,
        s.images.len(),
        s.layers_converted,
        s.layers_reused
    );
    for i in s.images {
        println!("  {i}");
    }
    Ok(())
}
