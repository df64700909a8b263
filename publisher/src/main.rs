//! `strata-publisher` command line (docs/CONTRACTS.md §4).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Turns OCI/Docker images into a CernVM-FS repository and serves it.
#[derive(Parser)]
#[command(name = "strata-publisher", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a repository: keys, whitelist, empty revision 0.
    Init {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Fully qualified repository name, e.g. images.example.org.
        #[arg(long)]
        fqrn: String,
        /// Root catalog TTL in seconds.
        #[arg(long, default_value_t = publisher::repo::DEFAULT_TTL)]
        ttl: u64,
    },
    /// Add images and publish one new revision.
    Ingest {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Public name REGISTRY/REPO:TAG for the oci: or docker-archive: reference.
        #[arg(long)]
        name: Option<String>,
        /// Publish only this platform of an index, os/arch[/variant] (repeatable; default:
        /// every platform).
        #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
        platforms: Vec<String>,
        /// The platform the public symlink points at (else the first one published).
        #[arg(long, default_value = "linux/amd64", value_name = "OS/ARCH[/VARIANT]")]
        default_platform: String,
        /// Registry user name (with --password); else credentials come from --authfile.
        #[arg(long, requires = "password")]
        username: Option<String>,
        /// Registry password or token.
        #[arg(
            long,
            requires = "username",
            env = "STRATA_REGISTRY_PASSWORD",
            hide_env_values = true
        )]
        password: Option<String>,
        /// Docker config.json with `auths` (default $DOCKER_CONFIG/config.json, then
        /// ~/.docker/config.json).
        #[arg(long)]
        authfile: Option<PathBuf>,
        /// Registry HOST[:PORT] that may be reached over plain HTTP (repeatable; loopback
        /// hosts always may).
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure: Vec<String>,
        /// Largest uncompressed layer (and total file contents of one layer), in bytes.
        #[arg(long, default_value_t = publisher::layer::DEFAULT_MAX_LAYER_SIZE)]
        max_layer_size: u64,
        /// File contents held in memory at once, in bytes, shared by all layers converted at
        /// the same time (pieces being read, queued and compressed). Default: (CPUs + 2) ×
        /// 16 MiB, at least 64 MiB. Smaller values save memory and may slow large files.
        #[arg(long, value_name = "BYTES")]
        memory_budget: Option<u64>,
        /// docker://HOST[:PORT]/REPO[:TAG|@DIGEST], oci:DIR[:TAG] or docker-archive:FILE.
        #[arg(required = true)]
        refs: Vec<String>,
    },
    /// Check the published revision: signatures, every catalog, every object hash.
    Verify {
        /// Repository directory, or the URL it is served at (http://HOST/cvmfs/<fqrn>, or
        /// http://HOST/cvmfs/@fqrn@ with --fqrn).
        #[arg(long)]
        repo: String,
        /// Master public key (required for a URL; default DIR/keys/<fqrn>.pub).
        #[arg(long)]
        pubkey: Option<PathBuf>,
        /// Repository name (default: from DIR/strata.json, or the URL's last component).
        #[arg(long)]
        fqrn: Option<String>,
    },
    /// List published images: platforms, layers, sizes.
    Ls {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
    },
    /// Sign a fresh whitelist (.cvmfswhitelist) with the master key.
    Resign {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Validity in days (1 to 36500; 0 would sign a whitelist that has already expired).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=36500))]
        days: u64,
    },
    /// Make the repository equal to a recipe (DUCC wishlist YAML): add, update, remove
    /// images, in one revision per pass. Exits non-zero if any image failed.
    Sync {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// The recipe (version: 1, cvmfs_repo, input: [...]); re-read at every pass.
        #[arg(long)]
        recipe: PathBuf,
        /// Run passes forever, --interval apart.
        #[arg(long = "loop")]
        repeat: bool,
        /// Time between the start of two passes with --loop (e.g. 5m, 30s).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// JSON-lines event log (default DIR/events.jsonl).
        #[arg(long)]
        events: Option<PathBuf>,
        /// Print the plan (added/updated/removed/unchanged/failed), change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Docker config.json with `auths` (as for ingest).
        #[arg(long)]
        authfile: Option<PathBuf>,
        /// Registry HOST[:PORT] that may be reached over plain HTTP (repeatable).
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure: Vec<String>,
        /// Largest uncompressed layer, in bytes.
        #[arg(long, default_value_t = publisher::layer::DEFAULT_MAX_LAYER_SIZE)]
        max_layer_size: u64,
        /// File contents held in memory at once, in bytes, shared by all layers converted at
        /// the same time (pieces being read, queued and compressed). Default: (CPUs + 2) ×
        /// 16 MiB, at least 64 MiB. Smaller values save memory and may slow large files.
        #[arg(long, value_name = "BYTES")]
        memory_budget: Option<u64>,
    },
    /// Delete objects no retained revision references.
    Gc {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Revisions to keep readable, counting the current one.
        #[arg(long, default_value_t = publisher::gc::DEFAULT_KEEP_REVISIONS as u64,
              value_parser = clap::value_parser!(u64).range(1..))]
        keep_revisions: u64,
        /// Never delete objects modified less than this long ago (e.g. 1h, 0s).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        /// List what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Serve DIR/srv at http://ADDR/cvmfs/<fqrn>/.
    Serve {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Address to listen on, e.g. 127.0.0.1:8000 (port 0 picks one).
        #[arg(long)]
        listen: String,
    },
}

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
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-publisher: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, skipping a cause whose text an outer message
/// already includes (most of our errors and the registry client's print their source in
/// their own message, so `{:#}` would repeat it).
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

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    match cli.command {
        Command::Init { repo, fqrn, ttl } => {
            let m = publisher::publish::init(&repo, &fqrn, ttl)
                .with_context(|| format!("creating repository in {}", repo.display()))?;
            println!(
                "created {fqrn} in {} (revision {})",
                repo.display(),
                m.revision
            );
        }
        Command::Ingest {
            repo,
            name,
            platforms,
            default_platform,
            username,
            password,
            authfile,
            insecure,
            max_layer_size,
            memory_budget,
            refs,
        } => {
            use publisher::source::{Platform, PlatformFilter};
            let registry = publisher::source::registry::RegistryOptions {
                credentials: username.zip(password).map(|(username, password)| {
                    publisher::source::auth::Credentials { username, password }
                }),
                authfile,
                insecure,
            };
            let options = publisher::ingest::IngestOptions {
                platforms: PlatformFilter {
                    wanted: platforms
                        .iter()
                        .map(|p| Platform::parse(p))
                        .collect::<Result<_, _>>()?,
                },
                default_platform: Platform::parse(&default_platform)?,
                limits: publisher::layer::Limits {
                    max_layer_size,
                    memory_budget,
                },
            };
            let sources = publisher::ingest::sources(&refs, name.as_deref(), &registry)?;
            let s = rt
                .block_on(publisher::ingest::ingest(&repo, sources, &options))
                .with_context(|| format!("ingesting into {}", repo.display()))?;
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
        }
        Command::Verify { repo, pubkey, fqrn } => {
            let report = rt.block_on(verify_command(&repo, pubkey, fqrn))?;
            for f in &report.faults {
                eprintln!("FAULT: {f}");
            }
            if !report.faults.is_empty() {
                anyhow::bail!(
                    "revision {} of {repo}: {} fault(s)",
                    report.revision,
                    report.faults.len()
                );
            }
            println!(
                "revision {} of {repo} verified: signatures, {} catalog(s), {} object(s)",
                report.revision, report.catalogs, report.objects
            );
        }
        Command::Ls { repo } => {
            let r = publisher::repo::Repo::open(&repo)?;
            let images = publisher::listing::list_images(&r)?;
            if images.is_empty() {
                // Say so on stderr; stdout stays empty for scripts.
                eprintln!("no images published in {}", repo.display());
            }
            for image in images {
                print!("{image}");
            }
        }
        Command::Resign { repo, days } => {
            let expires = publisher::publish::resign(&repo, days)?;
            println!(
                "whitelist of {} re-signed, valid until {}",
                repo.display(),
                catalog::whitelist::format_utc(expires)
            );
        }
        Command::Sync {
            repo,
            recipe,
            repeat,
            interval,
            events,
            dry_run,
            authfile,
            insecure,
            max_layer_size,
            memory_budget,
        } => {
            let options = publisher::sync::SyncOptions {
                registry: publisher::source::registry::RegistryOptions {
                    credentials: None,
                    authfile,
                    insecure,
                },
                limits: publisher::layer::Limits {
                    max_layer_size,
                    memory_budget,
                },
                dry_run,
            };
            let events = events.unwrap_or_else(|| repo.join("events.jsonl"));
            loop {
                let started = std::time::Instant::now();
                let r = rt.block_on(sync_command(&repo, &recipe, &events, &options));
                if !repeat {
                    return r;
                }
                if let Err(e) = r {
                    eprintln!("strata-publisher: sync pass: {}", error_chain(&e));
                }
                std::thread::sleep(interval.saturating_sub(started.elapsed()));
            }
        }
        Command::Gc {
            repo,
            keep_revisions,
            grace,
            dry_run,
        } => {
            let options = publisher::gc::GcOptions {
                keep_revisions: usize::try_from(keep_revisions).unwrap_or(usize::MAX),
                grace,
                dry_run,
            };
            let r = publisher::gc::gc(&repo, &options)
                .with_context(|| format!("garbage-collecting {}", repo.display()))?;
            for c in &r.candidates {
                println!("would delete {c}");
            }
            let revisions: Vec<String> = r.retained.iter().map(|(n, _)| n.to_string()).collect();
            println!(
                "{} {} object(s), {} ({} bytes); kept {} referenced by revision(s) {} ({} catalogs), {} younger than the grace period; {} scanned",
                if dry_run { "would delete" } else { "deleted" },
                r.deleted,
                publisher::listing::human_bytes(r.bytes_freed),
                r.bytes_freed,
                r.referenced,
                revisions.join(", "),
                r.catalogs,
                r.young,
                r.scanned
            );
        }
        Command::Serve { repo, listen } => rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            publisher::serve::serve(&repo, listener).await?;
            anyhow::Ok(())
        })?,
    }
    Ok(())
}

/// One `sync` pass: prints one line per image and the summary; errors if any failed.
async fn sync_command(
    repo: &std::path::Path,
    recipe_file: &std::path::Path,
    events: &std::path::Path,
    options: &publisher::sync::SyncOptions,
) -> anyhow::Result<()> {
    let recipe = publisher::recipe::Recipe::load(recipe_file)?;
    let label = recipe_file.display().to_string();
    let mut log = if options.dry_run {
        None
    } else {
        Some(publisher::events::EventLog::open(
            events,
            &publisher::events::EventLog::new_pass_id(),
        )?)
    };
    let report = publisher::sync::sync_pass(repo, &recipe, &label, options, log.as_mut())
        .await
        .with_context(|| format!("syncing {} to {label}", repo.display()))?;
    let verb = |o: publisher::events::Outcome| {
        use publisher::events::Outcome::*;
        match (o, options.dry_run) {
            (Added, false) => "added",
            (Added, true) => "would add",
            (Updated, false) => "updated",
            (Updated, true) => "would update",
            (Removed, false) => "removed",
            (Removed, true) => "would remove",
            (Unchanged, _) => "unchanged",
            (Failed, _) => "FAILED",
        }
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
        anyhow::bail!("{} image(s) or recipe entries failed", s.failed);
    }
    Ok(())
}

async fn verify_command(
    repo: &str,
    pubkey: Option<PathBuf>,
    fqrn: Option<String>,
) -> anyhow::Result<publisher::verify::VerifyReport> {
    use publisher::verify::{DirFetcher, Fetcher, HttpFetcher};
    let is_url = repo.starts_with("http://") || repo.starts_with("https://");
    let (fetcher, fqrn, key_file, scratch): (Box<dyn Fetcher>, String, PathBuf, PathBuf) = if is_url
    {
        // The URL as stock clients write it (CVMFS_SERVER_URL) may carry @fqrn@.
        let base = match (&fqrn, repo.contains("@fqrn@")) {
            (Some(f), true) => repo.replace("@fqrn@", f),
            (None, true) => anyhow::bail!("{repo}: give --fqrn to fill in @fqrn@"),
            (_, false) => repo.to_string(),
        };
        let base = base.trim_end_matches('/').to_string();
        let fqrn = match fqrn {
            Some(f) => f,
            None => base.rsplit('/').next().unwrap_or_default().to_string(),
        };
        let key = pubkey.context("--pubkey is required to verify a URL")?;
        let client = reqwest::Client::builder().build()?;
        let f = HttpFetcher {
            base,
            client,
            handle: tokio::runtime::Handle::current(),
        };
        (Box::new(f), fqrn, key, std::env::temp_dir())
    } else {
        let dir = PathBuf::from(repo);
        let r = publisher::repo::Repo::open(&dir)?;
        let fqrn = fqrn.unwrap_or_else(|| r.settings.fqrn.clone());
        let key = pubkey.unwrap_or_else(|| r.key_path("pub"));
        let srv = dir.join("srv");
        // Not DIR/tmp: verify takes no repository lock, and an ingest or sync starting
        // meanwhile clears DIR/tmp of a killed run's leftovers (TMPDIR chooses the place).
        (
            Box::new(DirFetcher { srv }),
            fqrn,
            key,
            std::env::temp_dir(),
        )
    };
    let pem = std::fs::read_to_string(&key_file)
        .with_context(|| format!("reading {}", key_file.display()))?;
    let key = catalog::keys::public_key_from_pem(&pem)?;
    let report = tokio::task::spawn_blocking(move || {
        let tmp = tempfile::tempdir_in(&scratch)?;
        let now = publisher::publish::unix_now();
        anyhow::Ok(publisher::verify::verify(
            fetcher.as_ref(),
            &fqrn,
            &[key],
            now,
            tmp.path(),
        )?)
    })
    .await??;
    Ok(report)
}
