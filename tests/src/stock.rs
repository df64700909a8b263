//! A stock `cvmfs2` mount (CernVM-FS 2.12 built from its public source; benches only, CI
//! cannot build it) with a private configuration and an empty cache: no `/etc/cvmfs`
//! chain, no autofs, in the foreground as a [`Service`]. Benches measure Strata's client
//! beside it on the same repository and server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{Result, io_context};
use crate::mounts;
use crate::process::Service;

/// A running stock `cvmfs2`; unmounted and stopped on drop.
pub struct StockMount {
    service: Service,
    /// Where the repository is mounted.
    pub mountpoint: PathBuf,
}

impl StockMount {
    /// Mounts `fqrn` from `server_url` (`…/cvmfs/@fqrn@`) with master key `pubkey`, cache
    /// and mount point under `dir`, logging to `log`.
    ///
    /// Errors: `cvmfs2` cannot start or does not mount within two minutes.
    pub fn start(
        dir: &Path,
        fqrn: &str,
        server_url: &str,
        pubkey: &Path,
        log: &Path,
    ) -> Result<StockMount> {
        let cache = dir.join("cache");
        let sockets = dir.join("run");
        let mountpoint = dir.join("mnt");
        for d in [&cache, &sockets, &mountpoint] {
            std::fs::create_dir_all(d).map_err(io_context(format!("create {}", d.display())))?;
        }
        let config = dir.join("cvmfs.conf");
        std::fs::write(
            &config,
            format!(
                "CVMFS_SERVER_URL={server_url}\nCVMFS_HTTP_PROXY=DIRECT\n\
                 CVMFS_PUBLIC_KEY={}\nCVMFS_CACHE_BASE={}\nCVMFS_SHARED_CACHE=no\n\
                 CVMFS_RELOAD_SOCKETS={}\nCVMFS_USER=root\nCVMFS_CLAIM_OWNERSHIP=no\n\
                 CVMFS_QUOTA_LIMIT=20000\n",
                pubkey.display(),
                cache.display(),
                sockets.display()
            ),
        )
        .map_err(io_context(format!("write {}", config.display())))?;
        let mut command = Command::new("cvmfs2");
        command
            .env_remove("CVMFS_KEYS_DIR")
            .arg("-f")
            .arg("-o")
            .arg(format!(
                "config={},allow_other,fsname=cvmfs2",
                config.display()
            ))
            .arg(fqrn)
            .arg(&mountpoint);
        let mut service = Service::spawn("cvmfs2", command, log)?;
        let mp = mountpoint.clone();
        service.wait_ready("stock cvmfs2 mount", Duration::from_secs(120), || {
            mounts::is_fuse_mounted(&mp)
        })?;
        Ok(StockMount {
            service,
            mountpoint,
        })
    }

    /// The `cvmfs2` process's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.service.pid()
    }

    /// Unmounts and stops `cvmfs2` (also done on drop).
    pub fn stop(&mut self) {
        mounts::unmount(&self.mountpoint);
        self.service.stop(Duration::from_secs(10));
        mounts::unmount(&self.mountpoint);
    }
}

impl Drop for StockMount {
    fn drop(&mut self) {
        self.stop();
    }
}
