//! `strata-publisher verify`: checks the published revision of a repository directory or
//! of a served URL ([`crate::verify::verify`]).

use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};
use crate::verify::{DirFetcher, Fetcher, HttpFetcher, VerifyReport};

/// Command-line options of `strata-publisher verify`: the repository directory or URL, its
/// master public key and fqrn. The subcommand's help text is the doc comment of
/// `Command::Verify`, which clap sets after this one.
#[derive(Args)]
pub struct VerifyArgs {
    /// Repository directory, or the URL it is served at (`http://HOST/cvmfs/<fqrn>`, or
    /// `http://HOST/cvmfs/@fqrn@` with --fqrn).
    #[arg(long)]
    pub repo: String,
    /// Master public key (required for a URL; default `DIR/keys/<fqrn>.pub`).
    #[arg(long)]
    pub pubkey: Option<PathBuf>,
    /// Repository name (default: from DIR/strata.json, or the URL's last component).
    #[arg(long)]
    pub fqrn: Option<String>,
}

/// Verifies the revision, prints every fault on stderr (`FAULT: …`) and a summary on
/// stdout when there is none.
///
/// Errors: [`Error::Faults`] if any fault was found; [`Error::Usage`] for a URL without
/// the key or name it needs; a repository, key or manifest that cannot be read.
pub fn run(args: VerifyArgs) -> Result<()> {
    let VerifyArgs { repo, pubkey, fqrn } = args;
    let report = super::runtime()?.block_on(check(&repo, pubkey, fqrn))?;
    for f in &report.faults {
        eprintln!("FAULT: {f}");
    }
    if !report.faults.is_empty() {
        return Err(Error::Faults {
            repo,
            revision: report.revision,
            count: report.faults.len(),
        });
    }
    println!(
        "revision {} of {repo} verified: signatures, {} catalog(s), {} object(s)",
        report.revision, report.catalogs, report.objects
    );
    Ok(())
}

/// Verifies `repo`, a directory or a URL, with the master key `pubkey` (default: the
/// directory's own) for repository `fqrn` (default: the directory's, or the URL's last
/// component).
async fn check(repo: &str, pubkey: Option<PathBuf>, fqrn: Option<String>) -> Result<VerifyReport> {
    let is_url = repo.starts_with("http://") || repo.starts_with("https://");
    let (fetcher, fqrn, key_file, scratch): (Box<dyn Fetcher>, String, PathBuf, PathBuf) = if is_url
    {
        // The URL as stock clients write it (CVMFS_SERVER_URL) may carry @fqrn@.
        let base = match (&fqrn, repo.contains("@fqrn@")) {
            (Some(f), true) => repo.replace("@fqrn@", f),
            (None, true) => {
                return Err(Error::Usage(format!(
                    "{repo}: give --fqrn to fill in @fqrn@"
                )));
            }
            (_, false) => repo.to_string(),
        };
        let base = base.trim_end_matches('/').to_string();
        let fqrn = match fqrn {
            Some(f) => f,
            None => base.rsplit('/').next().unwrap_or_default().to_string(),
        };
        let key = pubkey
            .ok_or_else(|| Error::Usage("--pubkey is required to verify a URL".to_string()))?;
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| Error::io("building the HTTP client", std::io::Error::other(e)))?;
        let f = HttpFetcher {
            base,
            client,
            handle: tokio::runtime::Handle::current(),
        };
        (Box::new(f), fqrn, key, std::env::temp_dir())
    } else {
        let dir = PathBuf::from(repo);
        let r = crate::repo::Repo::open(&dir)?;
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
        .map_err(|e| Error::io(format!("reading {}", key_file.display()), e))?;
    let key = catalog::keys::public_key_from_pem(&pem)?;
    tokio::task::spawn_blocking(move || {
        let tmp = tempfile::tempdir_in(&scratch).map_err(|e| {
            Error::io(
                format!("creating a temporary directory in {}", scratch.display()),
                e,
            )
        })?;
        let now = crate::publish::unix_now();
        crate::verify::verify(fetcher.as_ref(), &fqrn, &[key], now, tmp.path())
    })
    .await?
}
