//! `strata-snapshotter run`: the containerd proxy snapshotter (docs/lazy-snapshotters.md §5). It serves
//! `containerd.services.snapshots.v1.Snapshots` on a unix socket; containerd reaches it
//! through
//!
//! ```toml
//! [proxy_plugins.strata]
//!   type = "snapshot"
//!   address = "<--socket>"
//! ```
//!
//! State lives under `--root`: `metadata.db` (SQLite) and `snapshots/<id>/{fs,work}`.
//! Published layers are read from the repository mounted at `--mountpoint`
//! (`strata-snapshotter mount`, a separate process: containers keep their overlay mounts
//! of the repository whatever happens to this one). The socket is bound before anything
//! slow happens, so containerd's (lazy, retrying) dial succeeds as early as possible; the
//! check of the remote snapshots (stats in the FUSE mount) runs after serving started.
//! Nothing is ever wiped at start-up: unreachable remote snapshots are logged and carry
//! the `strata.io/unavailable` label in Stat/List until the repository is back. The
//! process stops on SIGINT or SIGTERM and removes its socket; SIGKILL loses nothing
//! (SQLite WAL, synchronous=FULL).
//!
//! Settings come from flags, `--config FILE` ([`run_config`]) and defaults, in that order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::info;

use crate::containerd::api::containerd::services::snapshots::v1::snapshots_server::SnapshotsServer;
use crate::containerd::metrics::Metrics;
use crate::containerd::run_config::{self, FileConfig, RunConfig};
use crate::containerd::service::SnapshotsService;
use crate::containerd::snapshots::Snapshotter;
use crate::error::{Error, Result};

/// Command-line arguments of `run` (CONTRACTS §4). Unset values come from `--config`, then
/// the defaults of [`run_config`].
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Unix socket to serve the Snapshots API on (a stale file is replaced)
    /// [default: /run/strata/snapshotter.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// State directory: `metadata.db` and `snapshots/`
    /// [default: /var/lib/containerd/io.containerd.snapshotter.v1.strata].
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Where the repository is mounted (by `strata-snapshotter mount`).
    #[arg(long)]
    pub mountpoint: Option<PathBuf>,
    /// The proxy plugin name containerd uses for us (only for logs) [default: strata].
    #[arg(long)]
    pub name: Option<String>,
    /// Fail (FailedPrecondition) extraction Prepares whose layer cannot be served from the
    /// repository, instead of falling back to a normal unpack.
    #[arg(long)]
    pub require_remote: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// The FUSE client's cache directory (cache hit/miss/bytes metrics only).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Give a container whose layers are all remote the image's published flat tree as its
    /// only overlay lowerdir (`--flat-lowerdir` = `--flat-lowerdir=true`)
    /// [default: false; see deploy/README.md].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub flat_lowerdir: Option<bool>,
    /// The repository's second mount without extended attributes (`strata-snapshotter
    /// mount --plain-mountpoint DIR`): lower directories whose trees carry no xattrs are
    /// handed to containerd from there, so overlayfs's xattr probes cost no FUSE round
    /// trip [default: unset = the main mount only; see deploy/README.md].
    #[arg(long, value_name = "DIR")]
    pub plain_mountpoint: Option<PathBuf>,
    /// TOML configuration file (see deploy/README.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl RunArgs {
    /// The effective settings: flags over `--config` over defaults.
    pub fn resolve(&self) -> Result<RunConfig> {
        let file = match &self.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        let flags = FileConfig {
            socket: self.socket.clone(),
            root: self.root.clone(),
            mountpoint: self.mountpoint.clone(),
            name: self.name.clone(),
            require_remote: self.require_remote.then_some(true),
            metrics: self.metrics,
            cache_dir: self.cache_dir.clone(),
            flat_lowerdir: self.flat_lowerdir,
            plain_mountpoint: self.plain_mountpoint.clone(),
        };
        run_config::merge(flags, file)
    }
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// Takes an exclusive `flock` on `<root>/lock` (creating `root`), without waiting.
///
/// # Errors
/// [`Error::Io`] naming the lock file when another process holds it (another `run` with the
/// same `--root`) or it cannot be created.
pub fn lock_root(root: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(root).map_err(io_err(format!("create {}", root.display())))?;
    let path = root.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("open {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Io {
            context: format!("lock {}", path.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "another strata-snapshotter run uses this --root",
            ),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(format!("lock {}", path.display()))(e)),
    }
}

/// Binds `socket`, replacing a stale socket file (one nobody listens on); refuses to replace
/// a live socket or anything else.
pub fn bind(socket: &Path) -> Result<UnixListener> {
    match std::fs::symlink_metadata(socket) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(Error::Io {
                    context: format!("bind {}", socket.display()),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "the path exists and is not a socket",
                    ),
                });
            }
            // Only a dead socket is stale: a second `run` on the socket of a live one would
            // take containerd's future connections from it, and remove the file on exit.
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err(Error::Io {
                    context: format!("bind {}", socket.display()),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another process is listening on this socket (is a snapshotter already running?)",
                    ),
                });
            }
            std::fs::remove_file(socket)
                .map_err(io_err(format!("remove stale socket {}", socket.display())))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("stat {}", socket.display()))(e)),
    }
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    UnixListener::bind(socket).map_err(io_err(format!("bind {}", socket.display())))
}

/// Serves on an already bound listener until `shutdown` completes. The remote snapshots
/// are checked ([`Snapshotter::check_remote`]) in the background once serving started.
pub async fn serve(
    listener: UnixListener,
    mut snapshotter: Snapshotter,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    snapshotter.set_metrics(Arc::clone(&metrics));
    let service = SnapshotsService::new(snapshotter, metrics);
    let checker = service.clone();
    tokio::spawn(async move {
        if let Err(e) = checker.run_blocking(|s| s.check_remote().map(|_| ())).await {
            tracing::warn!(error = %e.message(), "start-up check of remote snapshots failed");
        }
    });
    tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| Error::Io {
            context: "serve snapshots gRPC".into(),
            source: std::io::Error::other(e),
        })
}

async fn signalled() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we just run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping"),
        _ = int.recv() => info!("SIGINT: stopping"),
    }
}

/// Runs `strata-snapshotter run`.
pub fn main(args: RunArgs) -> Result<()> {
    let cfg = args.resolve()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io_err("start tokio runtime".into()))?;
    // Held until the process exits: two `run`s on one root would share metadata.db and
    // each one's Cleanup would delete the other's new snapshot directories.
    let _root_lock = lock_root(&cfg.root)?;
    runtime.block_on(async move {
        let listener = bind(&cfg.socket)?;
        info!(socket = %cfg.socket.display(), name = %cfg.name, "listening");
        // containerd may connect from now on (requests wait for the start-up below).
        crate::cmd::readiness::notify_ready("run");
        let metrics = Arc::new(Metrics::new(cfg.cache_dir.clone()));
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(addr) = cfg.metrics {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(io_err(format!("bind metrics address {addr}")))?;
            info!(%addr, "metrics at http://{addr}/metrics");
            let m = Arc::clone(&metrics);
            tokio::spawn(async move {
                let stopped = async {
                    let _ = metrics_stopped.await;
                };
                if let Err(e) = crate::containerd::metrics::serve(tcp, m, stopped).await {
                    tracing::warn!(error = %e, "metrics endpoint stopped");
                }
            });
        }
        let (root, mountpoint) = (cfg.root.clone(), cfg.mountpoint.clone());
        let mut snapshotter =
            tokio::task::spawn_blocking(move || Snapshotter::open(&root, &mountpoint))
                .await
                .map_err(|e| Error::Io {
                    context: "open snapshotter".into(),
                    source: std::io::Error::other(e),
                })??;
        snapshotter.set_require_remote(cfg.require_remote);
        snapshotter.set_flat_lowerdir(cfg.flat_lowerdir);
        snapshotter.set_plain_mountpoint(cfg.plain_mountpoint.as_deref());
        info!(
            root = %cfg.root.display(),
            mountpoint = %cfg.mountpoint.display(),
            plain_mountpoint = %cfg
                .plain_mountpoint
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            require_remote = cfg.require_remote,
            flat_lowerdir = cfg.flat_lowerdir,
            "snapshotter ready"
        );
        let result = serve(listener, snapshotter, metrics, signalled()).await;
        let _ = stop_metrics.send(());
        let _ = std::fs::remove_file(&cfg.socket);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containerd::api::containerd::services::snapshots::v1 as pb;
    use pb::snapshots_client::SnapshotsClient;
    use std::collections::HashMap;

    #[test]
    fn root_lock_is_exclusive() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("root");
        let held = lock_root(&root)?;
        let second = lock_root(&root).err().map(|e| e.to_string());
        assert!(
            second
                .as_deref()
                .is_some_and(|e| e.contains("root/lock") && e.contains("another")),
            "{second:?}"
        );
        drop(held);
        lock_root(&root)?;
        Ok(())
    }

    #[tokio::test]
    async fn serves_prepare_stat_list_over_unix_socket()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("run/snap.sock");
        std::fs::create_dir_all(socket.parent().ok_or("no parent")?)?;
        // A stale socket file is replaced.
        drop(std::os::unix::net::UnixListener::bind(&socket)?);
        let listener = bind(&socket)?;
        // A live one is not.
        assert!(
            bind(&socket).is_err(),
            "replaced a socket that has a listener"
        );
        let sn = Snapshotter::open(&dir.path().join("root"), &dir.path().join("mnt"))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, sn, Arc::new(Metrics::default()), async {
            let _ = rx.await;
        }));

        let path = socket.clone();
        let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await?;
        let mut client = SnapshotsClient::new(channel);
        let stat = client
            .stat(pb::StatSnapshotRequest {
                snapshotter: "strata".into(),
                key: "nope".into(),
            })
            .await;
        assert_eq!(stat.err().map(|s| s.code()), Some(tonic::Code::NotFound));
        let prepared = client
            .prepare(pb::PrepareSnapshotRequest {
                snapshotter: "strata".into(),
                key: "k".into(),
                parent: String::new(),
                labels: HashMap::from([("a".to_string(), "b".to_string())]),
            })
            .await?
            .into_inner();
        assert_eq!(prepared.mounts.len(), 1);
        assert_eq!(prepared.mounts[0].r#type, "bind");
        let again = client
            .prepare(pb::PrepareSnapshotRequest {
                snapshotter: "strata".into(),
                key: "k".into(),
                parent: String::new(),
                labels: HashMap::new(),
            })
            .await;
        assert_eq!(
            again.err().map(|s| s.code()),
            Some(tonic::Code::AlreadyExists)
        );
        let mut stream = client
            .list(pb::ListSnapshotsRequest {
                snapshotter: "strata".into(),
                filters: vec!["kind==active".into()],
            })
            .await?
            .into_inner();
        let mut names = Vec::new();
        while let Some(batch) = stream.message().await? {
            names.extend(batch.info.into_iter().map(|i| (i.name, i.kind, i.labels)));
        }
        assert_eq!(
            names,
            vec![(
                "k".to_string(),
                pb::Kind::Active as i32,
                HashMap::from([("a".to_string(), "b".to_string())])
            )]
        );
        let _ = tx.send(());
        server.await??;
        Ok(())
    }
}
