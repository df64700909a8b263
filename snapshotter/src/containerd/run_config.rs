//! The configuration file of `strata-snapshotter run` (`--config FILE`, TOML). Every key
//! is optional; a command-line flag wins over the file, the file over the default.
//!
//! ```toml
//! # Unix socket containerd's proxy_plugins entry points at.
//! socket = "/run/strata/snapshotter.sock"            # default
//! # State: metadata.db and snapshots/. Keep it under containerd's root with the plugin's
//! # name so CRI (containerd 1.6/1.7) accounts image-fs usage correctly (docs/lazy-snapshotters.md §6).
//! root = "/var/lib/containerd/io.containerd.snapshotter.v1.strata"   # default
//! # Where `strata-snapshotter mount` mounts the repository. Required (no default).
//! mountpoint = "/cvmfs/strata.example.org"
//! # The proxy plugin name in containerd's config (logs only).
//! name = "strata"                                     # default
//! # Fail extraction Prepares that cannot be served from the repository instead of
//! # falling back to a normal (downloading) unpack.
//! require_remote = false                              # default
//! # Serve Prometheus metrics at http://<metrics>/metrics. Unset = no endpoint.
//! metrics = "127.0.0.1:9110"
//! # The FUSE client's cache directory, for the cache hit/miss/bytes metrics and nothing
//! # else. Unset = those series are omitted.
//! cache_dir = "/var/lib/strata/cache"
//! # Give a container whose layers are all remote the image's flat tree
//! # (`.flat/<hh>/<config hex>`) as its single overlay lowerdir, when one is published,
//! # instead of one lowerdir per layer (deploy/README.md has the measurements).
//! flat_lowerdir = false                               # default
//! # The repository's second, xattr-less mount (`strata-snapshotter mount
//! # --plain-mountpoint`). Lower directories whose trees carry no extended attribute
//! # (catalog counters `self_xattr + subtree_xattr == 0`) are handed to containerd from
//! # here, so overlayfs's trusted.overlay.* probes cost no FUSE round trip. Unset = the
//! # main mount only.
//! plain_mountpoint = "/cvmfs/strata.example.org-plain"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Default `socket`.
pub const DEFAULT_SOCKET: &str = "/run/strata/snapshotter.sock";
/// Default `root` (containerd's root + `io.containerd.snapshotter.v1.<name>`).
pub const DEFAULT_ROOT: &str = "/var/lib/containerd/io.containerd.snapshotter.v1.strata";
/// Default `name`.
pub const DEFAULT_NAME: &str = "strata";
/// Default `flat_lowerdir` (chosen by measurement, deploy/README.md "Flat lowerdir").
pub const DEFAULT_FLAT_LOWERDIR: bool = false;

/// The file's keys (module doc).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Unix socket.
    pub socket: Option<PathBuf>,
    /// State directory.
    pub root: Option<PathBuf>,
    /// Repository mount point.
    pub mountpoint: Option<PathBuf>,
    /// Plugin name (logs).
    pub name: Option<String>,
    /// Refuse fallbacks.
    pub require_remote: Option<bool>,
    /// Metrics listen address.
    pub metrics: Option<SocketAddr>,
    /// FUSE client cache directory.
    pub cache_dir: Option<PathBuf>,
    /// One flat lowerdir for all-remote images.
    pub flat_lowerdir: Option<bool>,
    /// The xattr-less second mount of the repository.
    pub plain_mountpoint: Option<PathBuf>,
}

/// The effective settings of `run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunConfig {
    /// Unix socket to serve on.
    pub socket: PathBuf,
    /// State directory.
    pub root: PathBuf,
    /// Repository mount point.
    pub mountpoint: PathBuf,
    /// Plugin name (logs).
    pub name: String,
    /// Refuse fallbacks (`FailedPrecondition`).
    pub require_remote: bool,
    /// Metrics endpoint address, if any.
    pub metrics: Option<SocketAddr>,
    /// FUSE client cache directory, if known.
    pub cache_dir: Option<PathBuf>,
    /// Give all-remote containers the image's flat tree as their only lowerdir.
    pub flat_lowerdir: bool,
    /// The repository's xattr-less second mount (`mount --plain-mountpoint`), if any:
    /// lower directories without extended attributes come from there.
    pub plain_mountpoint: Option<PathBuf>,
}

impl FileConfig {
    /// Parses TOML text; [`Error::Config`] names the problem.
    pub fn parse(text: &str) -> Result<FileConfig> {
        toml::from_str(text).map_err(|e| Error::Config(format!("run config: {e}")))
    }

    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("read {}", path.display()),
            source,
        })?;
        FileConfig::parse(&text)
    }
}

/// Merges flags (`flags`, same shape as the file) over the file over the defaults.
/// [`Error::Config`] if no mount point is given anywhere, or the plain mount point is the
/// mount point.
pub fn merge(flags: FileConfig, file: FileConfig) -> Result<RunConfig> {
    let mountpoint = flags.mountpoint.or(file.mountpoint).ok_or_else(|| {
        Error::Config(
            "no repository mount point: give --mountpoint or `mountpoint` in --config".into(),
        )
    })?;
    let plain_mountpoint = flags.plain_mountpoint.or(file.plain_mountpoint);
    if plain_mountpoint.as_deref() == Some(mountpoint.as_path()) {
        return Err(Error::Config(format!(
            "plain_mountpoint {} is the repository mount point itself; give the directory \
             `strata-snapshotter mount --plain-mountpoint` mounts",
            mountpoint.display()
        )));
    }
    Ok(RunConfig {
        socket: flags
            .socket
            .or(file.socket)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
        root: flags
            .root
            .or(file.root)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)),
        mountpoint,
        name: flags
            .name
            .or(file.name)
            .unwrap_or_else(|| DEFAULT_NAME.to_string()),
        require_remote: flags
            .require_remote
            .or(file.require_remote)
            .unwrap_or(false),
        metrics: flags.metrics.or(file.metrics),
        cache_dir: flags.cache_dir.or(file.cache_dir),
        flat_lowerdir: flags
            .flat_lowerdir
            .or(file.flat_lowerdir)
            .unwrap_or(DEFAULT_FLAT_LOWERDIR),
        plain_mountpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() -> Result<()> {
        let doc = include_str!("run_config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let file = FileConfig::parse(&example)?;
        assert_eq!(file.socket.as_deref(), Some(Path::new(DEFAULT_SOCKET)));
        assert_eq!(file.root.as_deref(), Some(Path::new(DEFAULT_ROOT)));
        assert_eq!(file.require_remote, Some(false));
        assert_eq!(file.flat_lowerdir, Some(DEFAULT_FLAT_LOWERDIR));
        assert_eq!(
            file.plain_mountpoint.as_deref(),
            Some(Path::new("/cvmfs/strata.example.org-plain"))
        );
        assert_eq!(
            file.metrics,
            Some(
                "127.0.0.1:9110"
                    .parse()
                    .map_err(|_| Error::Config("addr".into()))?
            )
        );
        Ok(())
    }

    #[test]
    fn flags_win_over_file_over_defaults() -> Result<()> {
        let file = FileConfig::parse(
            "mountpoint = \"/m\"\nroot = \"/file-root\"\nrequire_remote = true\nname = \"x\"\n",
        )?;
        let flags = FileConfig {
            root: Some("/flag-root".into()),
            ..FileConfig::default()
        };
        let c = merge(flags, file)?;
        assert_eq!(c.flat_lowerdir, DEFAULT_FLAT_LOWERDIR);
        let on = FileConfig::parse("mountpoint = \"/m\"\nflat_lowerdir = true\n")?;
        let off = FileConfig {
            flat_lowerdir: Some(false),
            ..FileConfig::default()
        };
        assert!(merge(FileConfig::default(), on.clone())?.flat_lowerdir);
        assert!(!merge(off, on)?.flat_lowerdir);
        assert_eq!(c.root, PathBuf::from("/flag-root"));
        assert_eq!(c.mountpoint, PathBuf::from("/m"));
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert!(c.require_remote);
        assert_eq!(c.name, "x");
        assert_eq!(c.metrics, None);
        assert_eq!(c.plain_mountpoint, None);
        let plain = FileConfig::parse("mountpoint = \"/m\"\nplain_mountpoint = \"/p\"\n")?;
        assert_eq!(
            merge(FileConfig::default(), plain.clone())?.plain_mountpoint,
            Some(PathBuf::from("/p"))
        );
        let flag = FileConfig {
            plain_mountpoint: Some("/q".into()),
            ..FileConfig::default()
        };
        assert_eq!(
            merge(flag, plain)?.plain_mountpoint,
            Some(PathBuf::from("/q"))
        );
        assert!(matches!(
            merge(
                FileConfig::default(),
                FileConfig::parse("mountpoint = \"/m\"\nplain_mountpoint = \"/m\"\n")?
            ),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            merge(FileConfig::default(), FileConfig::default()),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            FileConfig::parse("bogus = 1"),
            Err(Error::Config(_))
        ));
        Ok(())
    }

    #[test]
    fn shipped_deploy_files_parse() -> Result<()> {
        let file = FileConfig::parse(include_str!("../../../deploy/snapshotter.toml"))?;
        let c = merge(FileConfig::default(), file)?;
        assert_eq!(
            c.plain_mountpoint,
            Some(PathBuf::from(format!("{}-plain", c.mountpoint.display())))
        );
        assert_eq!(c.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        for (name, text) in [
            (
                "1.6",
                include_str!("../../../deploy/containerd/config-1.6.toml"),
            ),
            (
                "1.7",
                include_str!("../../../deploy/containerd/config-1.7.toml"),
            ),
            (
                "2.x",
                include_str!("../../../deploy/containerd/config-2.x.toml"),
            ),
        ] {
            let v: toml::Value =
                toml::from_str(text).map_err(|e| Error::Config(format!("{name}: {e}")))?;
            let address = v
                .get("proxy_plugins")
                .and_then(|p| p.get("strata"))
                .and_then(|p| p.get("address"))
                .and_then(|a| a.as_str());
            assert_eq!(address, Some(DEFAULT_SOCKET), "{name}");
        }
        Ok(())
    }
}
