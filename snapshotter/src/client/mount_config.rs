//! Configuration of `strata-snapshotter mount`: command-line flags and an optional TOML file
//! (`--config FILE`) whose keys are the stock client's option names without the `CVMFS_`
//! prefix, lower-cased (docs/format.md §8.1). Flags override the file.
//!
//! ```toml
//! fqrn = "software.example.org"
//! server_url = "http://s1.example.org/cvmfs/@fqrn@;http://s2.example.org/cvmfs/@fqrn@"
//! http_proxy = "http://squid1:3128|http://squid2:3128;DIRECT"
//! public_key = ["/etc/cvmfs/keys/example.org.pub"]   # or "a.pub:b.pub"
//! cache_base = "/var/lib/strata/cache"
//! quota_limit = 4000        # MB; 0 or absent = unmanaged
//! timeout = 5               # seconds through a proxy (CVMFS_TIMEOUT)
//! timeout_direct = 10       # seconds without proxy (CVMFS_TIMEOUT_DIRECT)
//! max_retries = 1           # same-URL retries of transfer errors
//! backoff_init = 2          # seconds (or "500ms")
//! backoff_max = 10
//! proxy_reset_after = 300   # seconds until failed proxies are probed again
//! host_reset_after = 1800   # seconds until failed hosts are probed again
//! max_ttl = 15              # minutes (CVMFS_MAX_TTL); caps the catalog TTL
//! # Strata only: read-ahead (see the `readahead` module docs); these are the defaults.
//! read_ahead = true
//! read_ahead_max_file_size = 1048576   # bytes; larger files are not read with their directory
//! read_ahead_max_files = 256           # directories with more small files are not read ahead
//! read_ahead_max_dir_bytes = 16777216  # nor those whose small files add up to more
//! read_ahead_threads = 16
//! read_ahead_whole_chunked_size = 67108864  # chunked files up to this are read ahead whole
//! read_ahead_chunks = 2                # chunks ahead of a reader of a larger chunked file
//! read_ahead_libraries = true          # an ELF file opened: fetch the libraries it needs
//! # Strata only: startup packs prefetched when a pull or start asks (the `startup` module
//! # docs); these are the defaults.
//! prefetch = true
//! prefetch_threads = 8                 # packs fetched at the same time
//! prefetch_max_bytes = 1073741824      # bytes of packs per request at most
//! # Strata only: FUSE passthrough where the kernel offers it (Linux >= 6.9; the
//! # `fuse::passthrough` module docs): open files read from the cache by the kernel.
//! passthrough = true
//! # Mount a fixed revision instead of the current one (no live updates), at most one of:
//! repository_tag = "trunk-previous"   # a tag of the history database (CVMFS_REPOSITORY_TAG)
//! root_hash = "5798f7f4…"              # a root catalog hash (CVMFS_ROOT_HASH)
//! # Strata only: also mount the repository here with extended attributes switched off
//! # (for `strata-snapshotter run --plain-mountpoint`; see the `fuse` module docs).
//! plain_mountpoint = "/cvmfs/software.example.org-plain"
//! # Strata only: write every regular file read, once, in first-read order, to this file
//! # (the `fuse::trace` module docs).
//! trace = "/var/tmp/start.trace"
//! # Strata only: keep the FUSE connections across a crash or upgrade of the serving
//! # process without systemd (the `keeper` module docs); under systemd, use the unit's
//! # file-descriptor store instead.
//! keeper = false
//! ```
//!
//! Every duration may also be a string in `humantime` form (`"250ms"`, `"2m"`), in which
//! case the unit is explicit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::client::proxy_chain::ProxyChain;
use crate::client::readahead::ReadAheadSettings;
use crate::client::repository::Pin;
use crate::client::startup::PrefetchSettings;
use crate::{Error, Result};

/// Command-line arguments of `strata-snapshotter mount`. Every option except the mount
/// point may come from `--config FILE` instead; flags win.
#[derive(clap::Args, Debug, Default)]
pub struct MountArgs {
    /// TOML configuration file (keys: see the `config` module docs).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Fully qualified repository name, e.g. `software.example.org`.
    #[arg(long)]
    pub fqrn: Option<String>,
    /// Repository URL(s), `;`-separated, tried in order (CVMFS_SERVER_URL); `@fqrn@` and
    /// `@org@` are substituted, e.g. `http://127.0.0.1:8080/cvmfs/@fqrn@`.
    #[arg(long)]
    pub server: Option<String>,
    /// Proxy chain in CVMFS_HTTP_PROXY syntax: `|` load-balances within a group, `;` fails
    /// over to the next group, `DIRECT` = no proxy. Default `DIRECT`.
    #[arg(long)]
    pub proxy: Option<String>,
    /// Master public key file (PEM); repeat or separate with `:` for several.
    #[arg(long = "pubkey", value_delimiter = ':')]
    pub pubkeys: Vec<PathBuf>,
    /// Local cache directory (content-addressed, shared by all repositories of the node).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Cache quota in MB (CVMFS_QUOTA_LIMIT); 0 = unmanaged.
    #[arg(long)]
    pub quota_limit: Option<u64>,
    /// Per-request timeout through a proxy (connect and idle read), e.g. `5s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Per-request timeout without a proxy (DIRECT), e.g. `10s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout_direct: Option<Duration>,
    /// Same-URL retries of transfer errors (CVMFS_MAX_RETRIES).
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// Initial retry back-off (the first delay is uniform in [0, this]), e.g. `2s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub backoff_init: Option<Duration>,
    /// Maximal retry back-off, e.g. `10s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub backoff_max: Option<Duration>,
    /// How long a failed proxy is tried only as a last resort, e.g. `5m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub proxy_reset_after: Option<Duration>,
    /// How long a failed server is tried only as a last resort, e.g. `30m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub host_reset_after: Option<Duration>,
    /// Upper bound of the catalog TTL between manifest checks, e.g. `4m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_ttl: Option<Duration>,
    /// FUSE worker threads (each blocks only itself while waiting on the network).
    #[arg(long, value_parser = clap::value_parser!(u16).range(4..))]
    pub threads: Option<u16>,
    /// Fetch only what is read: no read-ahead of a directory's small files and of the next
    /// chunks of a file being read (read-ahead is on by default).
    #[arg(long)]
    pub no_read_ahead: bool,
    /// Files larger than this are not read ahead with their directory (bytes; default 1 MiB).
    #[arg(long, value_name = "BYTES")]
    pub read_ahead_max_file_size: Option<u64>,
    /// Threads fetching read-ahead objects concurrently (default 16).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub read_ahead_threads: Option<u16>,
    /// Ignore requests to prefetch startup packs (`user.strata.prefetch`; on by default).
    #[arg(long)]
    pub no_prefetch: bool,
    /// Serve every read through this process, even where the kernel offers FUSE
    /// passthrough (Linux >= 6.9; by default open files are read from the cache by the
    /// kernel directly).
    #[arg(long)]
    pub no_passthrough: bool,
    /// Mount the revision that history tag NAME names (docs/format.md §9.5: `trunk-previous`,
    /// `generic-YYYY-MM-DDTHH:MM:SSZ`, …) instead of the current one; no live updates.
    /// The manifest chain is verified all the same (CVMFS_REPOSITORY_TAG).
    #[arg(long = "tag", value_name = "NAME", conflicts_with = "root_hash")]
    pub tag: Option<String>,
    /// Mount the root catalog with this hash instead of the current revision; no live
    /// updates. The manifest chain is verified all the same (CVMFS_ROOT_HASH).
    #[arg(long, value_name = "HEX")]
    pub root_hash: Option<String>,
    /// Tests only: accept a whitelist past its expiry date (signature, name and fingerprint
    /// are still checked). Fixture repositories carry whitelists that expire after 30 days.
    #[arg(long, hide = true)]
    pub accept_expired_whitelist: bool,
    /// Also mount the repository at DIR, from the same process (same revision, inodes and
    /// cache), with extended attributes switched off: the kernel then answers every
    /// getxattr there with EOPNOTSUPP without asking the process. `strata-snapshotter run
    /// --plain-mountpoint` gives overlayfs such paths for layers without xattrs, whose
    /// `trusted.overlay.*` probes would otherwise each cost a FUSE round trip.
    #[arg(long, value_name = "DIR")]
    pub plain_mountpoint: Option<PathBuf>,
    /// Write the repository path of every regular file read, once, in the order of first
    /// reads, to FILE (created or truncated): the access trace of what ran meanwhile.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Keep the FUSE connections alive across a crash, kill or upgrade of the process that
    /// serves them, without systemd: this process becomes a small keeper that starts the
    /// serving process, keeps its `/dev/fuse` descriptors, and starts a new one that takes
    /// them over whenever it dies (SIGHUP upgrades it in place). Under systemd, use the
    /// unit's file-descriptor store instead (deploy/README.md).
    #[arg(long)]
    pub keeper: bool,
    /// Where to mount.
    pub mountpoint: PathBuf,
}

/// A duration in a TOML file: a bare number in the option's CVMFS unit, or a humantime
/// string.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum FileDuration {
    Number(u64),
    Text(String),
}

impl FileDuration {
    fn resolve(&self, key: &str, unit: Duration) -> Result<Duration> {
        match self {
            FileDuration::Number(n) => {
                Ok(unit.saturating_mul(u32::try_from(*n).unwrap_or(u32::MAX)))
            }
            FileDuration::Text(t) => humantime::parse_duration(t)
                .map_err(|e| Error::Config(format!("{key} = {t:?}: {e}"))),
        }
    }
}

/// One or several key files: a TOML array or a `:`-separated string.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum FileKeys {
    List(Vec<PathBuf>),
    Text(String),
}

/// The TOML file's contents.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    fqrn: Option<String>,
    server_url: Option<String>,
    http_proxy: Option<String>,
    public_key: Option<FileKeys>,
    cache_base: Option<PathBuf>,
    quota_limit: Option<u64>,
    timeout: Option<FileDuration>,
    timeout_direct: Option<FileDuration>,
    max_retries: Option<u32>,
    backoff_init: Option<FileDuration>,
    backoff_max: Option<FileDuration>,
    proxy_reset_after: Option<FileDuration>,
    host_reset_after: Option<FileDuration>,
    max_ttl: Option<FileDuration>,
    threads: Option<u16>,
    read_ahead: Option<bool>,
    read_ahead_max_file_size: Option<u64>,
    read_ahead_max_files: Option<usize>,
    read_ahead_max_dir_bytes: Option<u64>,
    read_ahead_threads: Option<u16>,
    read_ahead_whole_chunked_size: Option<u64>,
    read_ahead_chunks: Option<usize>,
    read_ahead_libraries: Option<bool>,
    prefetch: Option<bool>,
    prefetch_threads: Option<u16>,
    prefetch_max_bytes: Option<u64>,
    passthrough: Option<bool>,
    repository_tag: Option<String>,
    root_hash: Option<String>,
    plain_mountpoint: Option<PathBuf>,
    trace: Option<PathBuf>,
    keeper: Option<bool>,
}

/// HTTP behaviour (docs/format.md §8.8.4, §8.8.5).
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkSettings {
    /// Connect and idle-read timeout through a proxy (CVMFS_TIMEOUT, default 5 s).
    pub timeout: Duration,
    /// The same without a proxy (CVMFS_TIMEOUT_DIRECT, default 10 s).
    pub timeout_direct: Duration,
    /// Same-URL retries of transfer errors (CVMFS_MAX_RETRIES, default 1).
    pub max_retries: u32,
    /// First back-off bound (CVMFS_BACKOFF_INIT, default 2 s).
    pub backoff_init: Duration,
    /// Back-off cap (CVMFS_BACKOFF_MAX, default 10 s).
    pub backoff_max: Duration,
    /// CVMFS_PROXY_RESET_AFTER (default 300 s).
    pub proxy_reset_after: Duration,
    /// CVMFS_HOST_RESET_AFTER (default 1800 s).
    pub host_reset_after: Duration,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            timeout: Duration::from_secs(5),
            timeout_direct: Duration::from_secs(10),
            max_retries: 1,
            backoff_init: Duration::from_secs(2),
            backoff_max: Duration::from_secs(10),
            proxy_reset_after: Duration::from_secs(300),
            host_reset_after: Duration::from_secs(1800),
        }
    }
}

/// The resolved configuration of one mount.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Repository name.
    pub fqrn: String,
    /// Base URLs after `@fqrn@`/`@org@` substitution, without trailing `/`, in fail-over order.
    pub servers: Vec<String>,
    /// The proxy chain.
    pub proxies: ProxyChain,
    /// Master public key files.
    pub public_keys: Vec<PathBuf>,
    /// Cache directory.
    pub cache_dir: PathBuf,
    /// Cache quota in bytes; `None` = unmanaged.
    pub quota_bytes: Option<u64>,
    /// HTTP behaviour.
    pub network: NetworkSettings,
    /// Cap of the root catalog TTL (docs/format.md §8.6), if any.
    pub max_ttl: Option<Duration>,
    /// FUSE worker threads.
    pub threads: u16,
    /// What is fetched ahead of reads.
    pub read_ahead: ReadAheadSettings,
    /// How startup packs are prefetched.
    pub prefetch: PrefetchSettings,
    /// Whether FUSE passthrough is asked for.
    pub passthrough: bool,
    /// A fixed revision to mount (no live updates), if any.
    pub pin: Option<Pin>,
    /// See [`MountArgs::accept_expired_whitelist`].
    pub accept_expired_whitelist: bool,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// The second mount without extended attributes, if any
    /// ([`MountArgs::plain_mountpoint`]).
    pub plain_mountpoint: Option<PathBuf>,
    /// Where to write the access trace, if anywhere ([`MountArgs::trace`]).
    pub trace: Option<PathBuf>,
    /// Whether to run as a keeper ([`MountArgs::keeper`]).
    pub keeper: bool,
}

impl MountArgs {
    /// Reads `--config` (if given) and merges it under the flags.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read; [`Error::Config`] for TOML errors, unknown
    /// keys, missing required values (fqrn, server, public key, cache) and bad URLs or
    /// proxy chains.
    pub fn resolve(&self) -> Result<MountConfig> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let secs = Duration::from_secs(1);
        let dur = |flag: Option<Duration>,
                   value: &Option<FileDuration>,
                   key: &str,
                   unit: Duration,
                   default: Duration|
         -> Result<Duration> {
            match (flag, value) {
                (Some(d), _) => Ok(d),
                (None, Some(v)) => v.resolve(key, unit),
                (None, None) => Ok(default),
            }
        };
        let d = NetworkSettings::default();
        let network = NetworkSettings {
            timeout: dur(self.timeout, &file.timeout, "timeout", secs, d.timeout)?,
            timeout_direct: dur(
                self.timeout_direct,
                &file.timeout_direct,
                "timeout_direct",
                secs,
                d.timeout_direct,
            )?,
            max_retries: self
                .max_retries
                .or(file.max_retries)
                .unwrap_or(d.max_retries),
            backoff_init: dur(
                self.backoff_init,
                &file.backoff_init,
                "backoff_init",
                secs,
                d.backoff_init,
            )?,
            backoff_max: dur(
                self.backoff_max,
                &file.backoff_max,
                "backoff_max",
                secs,
                d.backoff_max,
            )?,
            proxy_reset_after: dur(
                self.proxy_reset_after,
                &file.proxy_reset_after,
                "proxy_reset_after",
                secs,
                d.proxy_reset_after,
            )?,
            host_reset_after: dur(
                self.host_reset_after,
                &file.host_reset_after,
                "host_reset_after",
                secs,
                d.host_reset_after,
            )?,
        };
        let max_ttl = match (self.max_ttl, &file.max_ttl) {
            (Some(d), _) => Some(d),
            (None, Some(v)) => Some(v.resolve("max_ttl", Duration::from_secs(60))?),
            (None, None) => None,
        }
        .filter(|d| !d.is_zero());

        let missing = |what: &str, flag: &str, key: &str| {
            Error::Config(format!("{what} is required: {flag} or `{key}` in --config"))
        };
        let fqrn = self
            .fqrn
            .clone()
            .or(file.fqrn)
            .ok_or_else(|| missing("the repository name", "--fqrn", "fqrn"))?;
        let server = self
            .server
            .clone()
            .or(file.server_url)
            .ok_or_else(|| missing("a server URL", "--server", "server_url"))?;
        let servers = server_list(&server, &fqrn)?;
        let proxies = ProxyChain::parse(
            self.proxy
                .as_deref()
                .or(file.http_proxy.as_deref())
                .unwrap_or("DIRECT"),
        )?;
        let public_keys: Vec<PathBuf> = if self.pubkeys.is_empty() {
            match file.public_key {
                Some(FileKeys::List(v)) => v,
                Some(FileKeys::Text(t)) => t.split(':').map(PathBuf::from).collect(),
                None => Vec::new(),
            }
        } else {
            self.pubkeys.clone()
        }
        .into_iter()
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
        if public_keys.is_empty() {
            return Err(missing("a master public key", "--pubkey", "public_key"));
        }
        let cache_dir = self
            .cache
            .clone()
            .or(file.cache_base)
            .ok_or_else(|| missing("a cache directory", "--cache", "cache_base"))?;
        let quota_mb = self.quota_limit.or(file.quota_limit).unwrap_or(0);
        let pin = resolve_pin(
            self.tag.clone().or(file.repository_tag),
            self.root_hash.clone().or(file.root_hash),
        )?;
        let plain_mountpoint = self.plain_mountpoint.clone().or(file.plain_mountpoint);
        if plain_mountpoint.as_deref() == Some(self.mountpoint.as_path()) {
            return Err(Error::Config(format!(
                "plain_mountpoint {} is the mount point itself; give another directory",
                self.mountpoint.display()
            )));
        }
        Ok(MountConfig {
            fqrn,
            servers,
            proxies,
            public_keys,
            cache_dir,
            quota_bytes: (quota_mb > 0).then(|| quota_mb.saturating_mul(1 << 20)),
            network,
            max_ttl,
            threads: self.threads.or(file.threads).unwrap_or(8).max(4),
            read_ahead: {
                let d = ReadAheadSettings::default();
                ReadAheadSettings {
                    enabled: !self.no_read_ahead && file.read_ahead.unwrap_or(d.enabled),
                    max_file_size: self
                        .read_ahead_max_file_size
                        .or(file.read_ahead_max_file_size)
                        .unwrap_or(d.max_file_size),
                    max_files: file.read_ahead_max_files.unwrap_or(d.max_files),
                    max_dir_bytes: file.read_ahead_max_dir_bytes.unwrap_or(d.max_dir_bytes),
                    whole_chunked_size: file
                        .read_ahead_whole_chunked_size
                        .unwrap_or(d.whole_chunked_size),
                    chunks_ahead: file.read_ahead_chunks.unwrap_or(d.chunks_ahead),
                    libraries: file.read_ahead_libraries.unwrap_or(d.libraries),
                    threads: self
                        .read_ahead_threads
                        .or(file.read_ahead_threads)
                        .map_or(d.threads, |t| usize::from(t).max(1)),
                    pause_when_demand: d.pause_when_demand,
                }
            },
            prefetch: {
                let d = PrefetchSettings::default();
                PrefetchSettings {
                    enabled: !self.no_prefetch && file.prefetch.unwrap_or(d.enabled),
                    threads: file
                        .prefetch_threads
                        .map_or(d.threads, |t| usize::from(t).max(1)),
                    max_bytes: file.prefetch_max_bytes.unwrap_or(d.max_bytes),
                }
            },
            passthrough: !self.no_passthrough && file.passthrough.unwrap_or(true),
            pin,
            accept_expired_whitelist: self.accept_expired_whitelist,
            mountpoint: self.mountpoint.clone(),
            plain_mountpoint,
            trace: self.trace.clone().or(file.trace),
            keeper: self.keeper || file.keeper.unwrap_or(false),
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        context: format!("reading configuration {}", path.display()),
        source,
    })?;
    toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// The pinned revision from a tag and/or a root hash (at most one of them).
///
/// # Errors
/// [`Error::Config`] if both are given or the hash does not parse (docs/format.md §2.3 forms).
fn resolve_pin(tag: Option<String>, root_hash: Option<String>) -> Result<Option<Pin>> {
    match (tag, root_hash) {
        (Some(_), Some(_)) => Err(Error::Config(
            "a tag and a root hash both pin the revision; give one of them".into(),
        )),
        (Some(t), None) if t.trim().is_empty() => Err(Error::Config("empty tag".into())),
        (Some(t), None) => Ok(Some(Pin::Tag(t.trim().to_string()))),
        (None, Some(h)) => catalog::ContentHash::parse_hex(h.trim())
            .map(|h| Some(Pin::RootHash(h)))
            .map_err(|e| Error::Config(format!("root hash {h:?}: {e}"))),
        (None, None) => Ok(None),
    }
}

/// Splits a `CVMFS_SERVER_URL` value at `;`, substitutes `@fqrn@` and `@org@` (the first
/// label of the name, docs/format.md §8.1) and drops trailing `/`.
///
/// # Errors
/// [`Error::Config`] for an empty list or a URL that is not `http://` or `https://`.
pub fn server_list(text: &str, fqrn: &str) -> Result<Vec<String>> {
    let org = fqrn.split('.').next().unwrap_or(fqrn);
    let servers: Vec<String> = text
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.replace("@fqrn@", fqrn)
                .replace("@org@", org)
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    if servers.is_empty() {
        return Err(Error::Config("the server list is empty".into()));
    }
    for s in &servers {
        if !(s.starts_with("http://") || s.starts_with("https://")) {
            return Err(Error::Config(format!(
                "server URL {s:?} must start with http:// or https://"
            )));
        }
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::proxy_chain::Proxy;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: MountArgs,
    }

    fn parse(args: &[&str]) -> std::result::Result<MountArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn the_historical_flags_still_work_and_default_to_direct() {
        let args = parse(&[
            "--fqrn",
            "a.b",
            "--server",
            "http://h/cvmfs/@fqrn@",
            "--pubkey",
            "/k1.pub:/k2.pub",
            "--pubkey",
            "/k3.pub",
            "--cache",
            "/c",
            "--timeout",
            "10s",
            "/mnt",
        ])
        .unwrap();
        let c = args.resolve().unwrap();
        assert_eq!(c.servers, vec!["http://h/cvmfs/a.b"]);
        assert_eq!(c.proxies.groups, vec![vec![Proxy::Direct]]);
        assert_eq!(
            c.public_keys,
            vec![
                PathBuf::from("/k1.pub"),
                PathBuf::from("/k2.pub"),
                PathBuf::from("/k3.pub")
            ]
        );
        assert_eq!(c.network.timeout, Duration::from_secs(10));
        assert_eq!(c.network.timeout_direct, Duration::from_secs(10));
        assert_eq!(c.quota_bytes, None);
        assert_eq!(c.max_ttl, None);
        assert_eq!(c.threads, 8);
        assert!(!c.accept_expired_whitelist);
        assert_eq!(c.pin, None);
        let err = parse(&["--fqrn", "a", "--server", "http://s", "--cache", "c", "m"])
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("--pubkey"), "{err}");
    }

    #[test]
    fn file_values_use_cvmfs_names_and_units_and_flags_override_them() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("m.toml");
        std::fs::write(
            &cfg,
            r#"
fqrn = "atlas.cern.ch"
server_url = "http://s1/cvmfs/@fqrn@; http://s2/@org@/"
http_proxy = "http://p1:3128|http://p2:3128;DIRECT"
public_key = "/a.pub:/b.pub"
cache_base = "/var/cache/strata"
quota_limit = 100
timeout = 3
backoff_init = "50ms"
proxy_reset_after = 60
max_ttl = 2
read_ahead_libraries = false
"#,
        )
        .unwrap();
        let cfg_arg = cfg.to_str().unwrap();
        let c = parse(&["--config", cfg_arg, "/mnt"])
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(c.fqrn, "atlas.cern.ch");
        assert_eq!(
            c.servers,
            vec!["http://s1/cvmfs/atlas.cern.ch", "http://s2/atlas"]
        );
        assert_eq!(c.proxies.groups.len(), 2);
        assert_eq!(c.proxies.groups[0].len(), 2);
        assert_eq!(c.public_keys.len(), 2);
        assert_eq!(c.quota_bytes, Some(100 << 20));
        assert_eq!(c.network.timeout, Duration::from_secs(3));
        assert_eq!(c.network.backoff_init, Duration::from_millis(50));
        assert_eq!(c.network.proxy_reset_after, Duration::from_secs(60));
        assert_eq!(
            c.max_ttl,
            Some(Duration::from_secs(120)),
            "max_ttl is in minutes"
        );
        assert!(c.read_ahead.enabled && !c.read_ahead.libraries);

        let c = parse(&[
            "--config",
            cfg_arg,
            "--proxy",
            "DIRECT",
            "--timeout",
            "1s",
            "--max-ttl",
            "5s",
            "/mnt",
        ])
        .unwrap()
        .resolve()
        .unwrap();
        assert_eq!(c.proxies.groups, vec![vec![Proxy::Direct]]);
        assert_eq!(c.network.timeout, Duration::from_secs(1));
        assert_eq!(c.max_ttl, Some(Duration::from_secs(5)));

        std::fs::write(&cfg, "fqrn = \"a\"\nserver = \"typo\"\n").unwrap();
        let err = parse(&["--config", cfg_arg, "/mnt"])
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("server"), "{err}");
    }

    #[test]
    fn a_revision_is_pinned_by_tag_or_root_hash_not_both() {
        let base = [
            "--fqrn", "a.b", "--server", "http://h", "--pubkey", "/k", "--cache", "/c",
        ];
        let with = |extra: &[&str]| {
            let mut args: Vec<&str> = base.to_vec();
            args.extend_from_slice(extra);
            args.push("/mnt");
            parse(&args)
        };
        let c = with(&["--tag", "trunk-previous"])
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(c.pin, Some(Pin::Tag("trunk-previous".into())));
        let hex = "5798f7f4ca7585d850eea64610a1f73d8f8de7a3";
        let c = with(&["--root-hash", hex]).unwrap().resolve().unwrap();
        assert_eq!(
            c.pin,
            Some(Pin::RootHash(catalog::ContentHash::parse_hex(hex).unwrap()))
        );
        assert!(with(&["--tag", "x", "--root-hash", hex]).is_err());
        let err = with(&["--root-hash", "xyz"])
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("root hash \"xyz\""), "{err}");

        // From the file, with stock option names; a flag still wins over the file.
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("m.toml");
        std::fs::write(&cfg, "repository_tag = \"generic-2025\"\n").unwrap();
        let cfg = cfg.to_str().unwrap();
        let c = with(&["--config", cfg]).unwrap().resolve().unwrap();
        assert_eq!(c.pin, Some(Pin::Tag("generic-2025".into())));
        let err = with(&["--config", cfg, "--root-hash", hex])
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("give one of them"), "{err}");
    }

    #[test]
    fn server_list_substitutes_and_rejects_bad_urls() {
        assert_eq!(
            server_list("http://a/@fqrn@;https://b/x/@org@/", "sw.example.org").unwrap(),
            vec!["http://a/sw.example.org", "https://b/x/sw"]
        );
        assert!(server_list(" ; ", "a").is_err());
        assert!(server_list("ftp://x", "a").is_err());
    }
}
