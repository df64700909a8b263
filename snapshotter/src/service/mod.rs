//! `strata-snapshotter run`: the containerd proxy snapshotter (anchors §3.4). It serves
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
//! (`strata-snapshotter mount`). The socket is bound before anything slow happens, so
//! containerd's (lazy, retrying) dial succeeds as early as possible; the process stops on
//! SIGINT or SIGTERM and removes its socket.

pub mod grpc;

use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::info;

use crate::api::containerd::services::snapshots::v1::snapshots_server::SnapshotsServer;
use crate::error::{Error, Result};
use crate::snapshots::Snapshotter;
use grpc::SnapshotsService;

/// Command-line arguments of `run` (CONTRACTS §4).
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Unix socket to serve the Snapshots API on (a stale file is replaced).
    #[arg(long)]
    pub socket: PathBuf,
    /// State directory: `metadata.db` and `snapshots/`.
    #[arg(long)]
    pub root: PathBuf,
    /// Where the repository is mounted (by `strata-snapshotter mount`).
    #[arg(long)]
    pub mountpoint: PathBuf,
    /// The proxy plugin name containerd uses for us (only for logs).
    #[arg(long, default_value = "strata")]
    pub name: String,
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// Binds `socket`, replacing a stale socket file; refuses to replace anything else.
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

/// Serves on an already bound listener until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    snapshotter: Snapshotter,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(SnapshotsService::new(snapshotter)))
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io_err("start tokio runtime".into()))?;
    runtime.block_on(async move {
        let listener = bind(&args.socket)?;
        info!(socket = %args.socket.display(), name = %args.name, "listening");
        let (root, mountpoint) = (args.root.clone(), args.mountpoint.clone());
        let snapshotter =
            tokio::task::spawn_blocking(move || Snapshotter::open(&root, &mountpoint))
                .await
                .map_err(|e| Error::Io {
                    context: "open snapshotter".into(),
                    source: std::io::Error::other(e),
                })??;
        info!(
            root = %args.root.display(),
            mountpoint = %args.mountpoint.display(),
            "snapshotter ready"
        );
        let result = serve(listener, snapshotter, signalled()).await;
        let _ = std::fs::remove_file(&args.socket);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::containerd::services::snapshots::v1 as pb;
    use pb::snapshots_client::SnapshotsClient;
    use std::collections::HashMap;

    #[tokio::test]
    async fn serves_prepare_stat_list_over_unix_socket()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("run/snap.sock");
        std::fs::create_dir_all(socket.parent().ok_or("no parent")?)?;
        // A stale socket file is replaced.
        drop(std::os::unix::net::UnixListener::bind(&socket)?);
        let listener = bind(&socket)?;
        let sn = Snapshotter::open(&dir.path().join("root"), &dir.path().join("mnt"))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, sn, async {
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
