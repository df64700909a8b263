//! The tonic implementation of `containerd.services.snapshots.v1.Snapshots` over a shared
//! [`Snapshotter`]. Every call runs the (synchronous) snapshotter on a blocking thread;
//! errors become gRPC codes as containerd's `errdefs` expects (docs/lazy-snapshotters.md §1).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tonic::{Request, Response, Status};

use crate::containerd::api::containerd::services::snapshots::v1 as pb;
use crate::containerd::api::containerd::types::Mount as PbMount;
use crate::containerd::metrics::Metrics;
use crate::containerd::overlay_mounts::Mount;
use crate::containerd::snapshots::store::{Kind, Labels};
use crate::containerd::snapshots::{Info, Prepared, Snapshotter, UsageSource};
use crate::error::Error;

/// Entries per `ListSnapshotsResponse` message (as rust-extensions' wrapper does).
const LIST_BATCH: usize = 100;

/// The gRPC service; cheap to clone.
#[derive(Clone)]
pub struct SnapshotsService {
    inner: Arc<Mutex<Snapshotter>>,
    metrics: Arc<Metrics>,
}

/// Maps the crate error to the gRPC code containerd's `errdefs.FromGRPC` understands.
pub fn to_status(err: Error) -> Status {
    match &err {
        Error::SnapshotNotFound(_) => Status::not_found(err.to_string()),
        Error::SnapshotExists(_) => Status::already_exists(err.to_string()),
        Error::SnapshotPrecondition(_) => Status::failed_precondition(err.to_string()),
        Error::SnapshotInvalid(_) => Status::invalid_argument(err.to_string()),
        Error::SnapshotUnavailable { .. } => Status::unavailable(err.to_string()),
        _ => Status::internal(err.to_string()),
    }
}

fn to_pb_mount(m: Mount) -> PbMount {
    PbMount {
        r#type: m.kind,
        source: m.source,
        target: String::new(),
        options: m.options,
    }
}

fn timestamp(ns: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: i32::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

fn to_pb_kind(kind: Kind) -> pb::Kind {
    match kind {
        Kind::Active => pb::Kind::Active,
        Kind::View => pb::Kind::View,
        Kind::Committed => pb::Kind::Committed,
    }
}

fn to_pb_info(info: Info) -> pb::Info {
    pb::Info {
        name: info.name,
        parent: info.parent,
        kind: to_pb_kind(info.kind) as i32,
        created_at: Some(timestamp(info.created_ns)),
        updated_at: Some(timestamp(info.updated_ns)),
        labels: info.labels.into_iter().collect(),
    }
}

fn labels(map: std::collections::HashMap<String, String>) -> Labels {
    map.into_iter().collect::<BTreeMap<_, _>>()
}

impl SnapshotsService {
    /// Serves `snapshotter`; Prepare latencies go to `metrics` (share the same `Arc` with
    /// [`Snapshotter::set_metrics`]).
    pub fn new(snapshotter: Snapshotter, metrics: Arc<Metrics>) -> SnapshotsService {
        SnapshotsService {
            inner: Arc::new(Mutex::new(snapshotter)),
            metrics,
        }
    }

    /// Runs `f` on the shared snapshotter on a blocking thread (start-up checks).
    pub async fn run_blocking<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&mut Snapshotter) -> crate::Result<T> + Send + 'static,
    {
        self.with(f).await
    }

    /// Runs `f` with the snapshotter locked, on a blocking thread.
    async fn with<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&mut Snapshotter) -> crate::Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut guard = inner
                .lock()
                .map_err(|_| Status::internal("snapshotter state poisoned by a panic"))?;
            f(&mut guard).map_err(to_status)
        })
        .await
        .map_err(|e| Status::internal(format!("snapshotter task failed: {e}")))?
    }
}

#[tonic::async_trait]
impl pb::snapshots_server::Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let req = request.into_inner();
        let (key, parent, labels) = (req.key, req.parent, labels(req.labels));
        let started = std::time::Instant::now();
        let prepared = self.with(move |s| s.prepare(&key, &parent, &labels)).await;
        self.metrics.observe_prepare(started.elapsed());
        let prepared = prepared?;
        match prepared {
            Prepared::Mounts(mounts) => Ok(Response::new(pb::PrepareSnapshotResponse {
                mounts: mounts.into_iter().map(to_pb_mount).collect(),
            })),
            Prepared::Remote { name } => Err(Status::already_exists(format!(
                "target snapshot {name:?} committed from the repository"
            ))),
        }
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let req = request.into_inner();
        let (key, parent, labels) = (req.key, req.parent, labels(req.labels));
        let mounts = self.with(move |s| s.view(&key, &parent, &labels)).await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: mounts.into_iter().map(to_pb_mount).collect(),
        }))
    }

    async fn mounts(
        &self,
        request: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let key = request.into_inner().key;
        let mounts = self.with(move |s| s.mounts(&key)).await?;
        Ok(Response::new(pb::MountsResponse {
            mounts: mounts.into_iter().map(to_pb_mount).collect(),
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let (name, key, labels, parent) = (req.name, req.key, labels(req.labels), req.parent);
        self.with(move |s| s.commit(&name, &key, &labels, &parent))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let key = request.into_inner().key;
        let k = key.clone();
        let trash = self.with(move |s| s.remove_detached(&k)).await?;
        if let Some(trash) = trash {
            // Outside the snapshotter's lock: Prepares go on while a large upper
            // directory is deleted.
            tokio::task::spawn_blocking(move || {
                crate::containerd::snapshots::delete_trash(&key, &trash)
            })
            .await
            .map_err(|e| Status::internal(format!("snapshot removal task failed: {e}")))?;
        }
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let key = request.into_inner().key;
        let info = self.with(move |s| s.stat(&key)).await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(to_pb_info(info)),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let req = request.into_inner();
        let info = req
            .info
            .ok_or_else(|| Status::invalid_argument("update without info"))?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = Info {
            name: info.name,
            parent: info.parent,
            kind: Kind::Active, // ignored: only labels are mutable
            labels: labels(info.labels),
            created_ns: 0,
            updated_ns: 0,
        };
        let updated = self.with(move |s| s.update(&info, &paths)).await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(to_pb_info(updated)),
        }))
    }

    type ListStream =
        futures::stream::Iter<std::vec::IntoIter<Result<pb::ListSnapshotsResponse, Status>>>;

    async fn list(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let filters = request.into_inner().filters;
        tracing::debug!(?filters, "list");
        let infos = self.with(move |s| s.list(&filters)).await?;
        tracing::debug!(count = infos.len(), "list result");
        let mut batches = Vec::new();
        let mut infos = infos.into_iter().map(to_pb_info).peekable();
        while infos.peek().is_some() {
            let info: Vec<pb::Info> = infos.by_ref().take(LIST_BATCH).collect();
            batches.push(Ok(pb::ListSnapshotsResponse { info }));
        }
        Ok(Response::new(futures::stream::iter(batches)))
    }

    async fn usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let key = request.into_inner().key;
        // Look up under the lock, measure without it.
        let lookup = key.clone();
        let source = self.with(move |s| s.usage_source(&lookup)).await?;
        let measured = tokio::task::spawn_blocking(move || match source {
            UsageSource::Known(usage) => Ok((usage, None)),
            UsageSource::Measure(dir) => {
                crate::containerd::snapshots::disk_usage(&dir).map(|u| (u, None))
            }
            UsageSource::Remote { dir, walked } => {
                crate::containerd::snapshots::remote_usage(&dir, walked)
            }
        })
        .await
        .map_err(|e| Status::internal(format!("usage task failed: {e}")))?
        .map_err(to_status)?;
        let (usage, fresh) = measured;
        if let Some(walked) = fresh {
            self.with(move |s| s.store_remote_walk(&key, walked))
                .await?;
        }
        Ok(Response::new(pb::UsageResponse {
            size: usage.size,
            inodes: usage.inodes,
        }))
    }

    async fn cleanup(&self, _request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        self.with(|s| s.cleanup().map(|_| ())).await?;
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_containerd_codes() {
        let code = |e| to_status(e).code();
        assert_eq!(
            code(Error::SnapshotNotFound("k".into())),
            tonic::Code::NotFound
        );
        assert_eq!(
            code(Error::SnapshotExists("k".into())),
            tonic::Code::AlreadyExists
        );
        assert_eq!(
            code(Error::SnapshotPrecondition("x".into())),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            code(Error::SnapshotInvalid("x".into())),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(Error::Io {
                context: "x".into(),
                source: std::io::Error::other("y"),
            }),
            tonic::Code::Internal
        );
    }

    #[test]
    fn timestamps_split_seconds_and_nanos() {
        let t = timestamp(1_700_000_000_123_456_789);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_456_789));
    }
}
