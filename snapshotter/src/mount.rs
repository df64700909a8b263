//! `strata-snapshotter mount`: mount one repository read-only through FUSE, in the
//! foreground, until it is unmounted or the process gets SIGINT/SIGTERM (then it unmounts).
//!
//! Boot order (CVMFS spec §8.2): keys → tokio runtime and HTTP [`Fetcher`] → local
//! [`ObjectCache`] → [`Repository::boot`] (manifest, certificate, whitelist verification,
//! root catalog) → FUSE session. Verification failures refuse the mount with an error naming
//! the failed check. Nothing is printed on stdout; logs go to stderr.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use crate::cache::ObjectCache;
pub use crate::config::MountArgs;
use crate::config::MountConfig;
use crate::fetch::Fetcher;
use crate::fuse::StrataFs;
use crate::repository::{Repository, Trust};
use crate::{Error, Result};

/// Runs the command: boots the repository, mounts it and serves until unmounted.
///
/// # Errors
/// [`Error::Config`] for unreadable keys; download, verification and catalog errors during
/// boot; [`Error::Io`] if the FUSE mount fails.
pub fn main(args: MountArgs) -> Result<()> {
    let args: MountConfig = args.resolve()?;
    let master_keys = read_keys(&args.public_keys)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("strata-net")
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            context: "starting the tokio runtime".into(),
            source,
        })?;
    tracing::info!(
        fqrn = %args.fqrn,
        servers = %args.servers.join(";"),
        proxies = %args.proxies,
        "configuration"
    );
    let fetcher = Arc::new(Fetcher::new(
        args.servers.clone(),
        args.proxies.clone(),
        args.network.clone(),
        runtime.handle().clone(),
    )?);
    let cache = Arc::new(ObjectCache::open_with_quota(
        &args.cache_dir,
        fetcher.clone(),
        args.quota_bytes,
    )?);
    let trust = Trust {
        fqrn: args.fqrn.clone(),
        master_keys,
        accept_expired_whitelist: args.accept_expired_whitelist,
    };
    let repo = Arc::new(Repository::boot(&fetcher, cache, &trust)?);
    let fs = StrataFs::new(repo.clone())?;

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("strata:{}", args.fqrn)),
        MountOption::Subtype("strata".into()),
        MountOption::RO,
        MountOption::DefaultPermissions,
    ];
    config.acl = SessionACL::All; // allow_other: containers run as any uid
    config.n_threads = Some(usize::from(args.threads));
    config.clone_fd = true;

    let mut session =
        fuser::Session::new(fs, &args.mountpoint, &config).map_err(|source| Error::Io {
            context: format!("mounting {}", args.mountpoint.display()),
            source,
        })?;
    tracing::info!(
        fqrn = %args.fqrn,
        revision = repo.manifest().revision,
        mountpoint = %args.mountpoint.display(),
        "mounted"
    );
    let unmounter = session.unmount_callable();
    let mountpoint = args.mountpoint.clone();
    runtime.spawn(unmount_on_signal(unmounter, mountpoint));

    session.run().map_err(|source| Error::Io {
        context: format!("serving {}", args.mountpoint.display()),
        source,
    })?;
    tracing::info!(mountpoint = %args.mountpoint.display(), "unmounted");
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Waits for SIGINT or SIGTERM, then unmounts. If the mount is busy it is detached
/// (`MNT_DETACH`) and the process exits, which ends the FUSE connection.
async fn unmount_on_signal(mut unmounter: fuser::SessionUnmounter, mountpoint: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers; unmount with umount(8)");
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!(mountpoint = %mountpoint.display(), "signal received, unmounting");
    if let Err(e) = unmounter.unmount() {
        tracing::warn!(error = %e, "unmount failed; detaching lazily");
        if let Err(e) = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH) {
            tracing::error!(error = %e, "lazy unmount failed");
        }
        std::process::exit(0);
    }
}

/// Reads master public keys (PEM, SPKI or PKCS#1 as stock CVMFS writes them, spec §7.3).
fn read_keys(paths: &[PathBuf]) -> Result<Vec<catalog::RsaPublicKey>> {
    paths
        .iter()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| read_key(p))
        .collect()
}

fn read_key(path: &Path) -> Result<catalog::RsaPublicKey> {
    let pem = std::fs::read_to_string(path).map_err(|source| Error::Io {
        context: format!("reading public key {}", path.display()),
        source,
    })?;
    catalog::keys::public_key_from_pem(&pem)
        .map_err(|e| Error::Config(format!("public key {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_key_names_the_file() {
        let err = read_keys(&[PathBuf::from("/nonexistent/key.pub")]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/key.pub"));
    }
}
