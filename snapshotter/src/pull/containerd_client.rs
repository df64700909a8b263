//! A containerd API client over its unix socket, for `pull`: the generated tonic clients
//! with containerd's per-request headers (`containerd-namespace` always,
//! `containerd-lease` once a lease is taken), plus the two multi-step calls `pull` needs
//! (writing a blob to the content store, creating or updating an image record).

use std::collections::HashMap;
use std::path::Path;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Status};

use crate::containerd::api::containerd::services::content::v1 as content;
use crate::containerd::api::containerd::services::images::v1 as images;
use crate::containerd::api::containerd::services::leases::v1 as leases;
use crate::containerd::api::containerd::services::snapshots::v1 as snapshots;
use crate::containerd::api::containerd::types::Descriptor;
use crate::error::{Error, Result};

/// Header naming the containerd namespace of a request.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// Header naming the lease that protects what a request creates from GC.
pub const LEASE_HEADER: &str = "containerd-lease";

/// Adds the namespace and (optional) lease headers to every request.
#[derive(Clone, Debug)]
pub struct Headers {
    namespace: AsciiMetadataValue,
    lease: Option<AsciiMetadataValue>,
}

impl Interceptor for Headers {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        let md = request.metadata_mut();
        md.insert(NAMESPACE_HEADER, self.namespace.clone());
        if let Some(lease) = &self.lease {
            md.insert(LEASE_HEADER, lease.clone());
        }
        Ok(request)
    }
}

/// A client channel carrying [`Headers`].
pub type Intercepted = InterceptedService<Channel, Headers>;

/// A connection to containerd in one namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    headers: Headers,
}

/// Wraps a failed call as [`Error::Containerd`].
pub fn call_error(call: &str) -> impl FnOnce(Status) -> Error + '_ {
    move |status| Error::Containerd {
        call: call.to_string(),
        status: Box::new(status),
    }
}

fn header_value(what: &str, value: &str) -> Result<AsciiMetadataValue> {
    MetadataValue::try_from(value).map_err(|_| Error::Io {
        context: format!("{what} {value:?}"),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a valid gRPC header value",
        ),
    })
}

impl Containerd {
    /// Connects to containerd's gRPC socket at `address`, working in `namespace`.
    pub async fn connect(address: &Path, namespace: &str) -> Result<Containerd> {
        let path = address.to_path_buf();
        let connect_error = |source| Error::ContainerdConnect {
            address: address.display().to_string(),
            source,
        };
        let channel = Endpoint::try_from("http://[::]:50051")
            .map_err(connect_error)?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(connect_error)?;
        Ok(Containerd {
            channel,
            headers: Headers {
                namespace: header_value("namespace", namespace)?,
                lease: None,
            },
        })
    }

    /// Sends `containerd-lease: lease` on every later request (or stops, with `None`).
    pub fn set_lease(&mut self, lease: Option<&str>) -> Result<()> {
        self.headers.lease = lease.map(|l| header_value("lease", l)).transpose()?;
        Ok(())
    }

    fn intercepted(&self) -> Intercepted {
        InterceptedService::new(self.channel.clone(), self.headers.clone())
    }

    /// The channel with this connection's headers, for any generated client (e.g. the
    /// diff service).
    pub fn intercepted_channel(&self) -> Intercepted {
        self.intercepted()
    }

    /// containerd's Snapshots service (requests name the snapshotter).
    pub fn snapshots(&self) -> snapshots::snapshots_client::SnapshotsClient<Intercepted> {
        snapshots::snapshots_client::SnapshotsClient::new(self.intercepted())
    }

    /// The content store.
    pub fn content(&self) -> content::content_client::ContentClient<Intercepted> {
        content::content_client::ContentClient::new(self.intercepted())
    }

    /// The image store.
    pub fn images(&self) -> images::images_client::ImagesClient<Intercepted> {
        images::images_client::ImagesClient::new(self.intercepted())
    }

    /// The lease manager.
    pub fn leases(&self) -> leases::leases_client::LeasesClient<Intercepted> {
        leases::leases_client::LeasesClient::new(self.intercepted())
    }

    /// Creates a lease that expires by itself after `expire` (label
    /// `containerd.io/gc.expire`), so a crashed pull leaves nothing pinned; returns its id.
    pub async fn create_lease(&self, id: &str, expire: std::time::Duration) -> Result<String> {
        let until = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + expire);
        let response = self
            .leases()
            .create(leases::CreateRequest {
                id: id.to_string(),
                labels: HashMap::from([("containerd.io/gc.expire".to_string(), until.to_string())]),
            })
            .await
            .map_err(call_error("leases.Create"))?;
        Ok(response
            .into_inner()
            .lease
            .map(|l| l.id)
            .unwrap_or_else(|| id.to_string()))
    }

    /// Deletes a lease (what it protected is then held by the image record, or collected).
    pub async fn delete_lease(&self, id: &str) -> Result<()> {
        self.leases()
            .delete(leases::DeleteRequest {
                id: id.to_string(),
                sync: false,
            })
            .await
            .map_err(call_error("leases.Delete"))?;
        Ok(())
    }

    /// Writes `data` (digest `digest`) to the content store with `labels`, in one
    /// `Write` stream message (action COMMIT with offset 0, data, total and expected
    /// digest — containerd's content service accepts data on the commit message). If the
    /// blob already exists, only its labels are updated. Returns whether it was written.
    pub async fn write_blob(
        &self,
        digest: &str,
        data: &[u8],
        labels: &HashMap<String, String>,
    ) -> Result<bool> {
        let total = i64::try_from(data.len()).unwrap_or(i64::MAX);
        let request = content::WriteContentRequest {
            action: content::WriteAction::Commit as i32,
            r#ref: format!("strata-pull-{digest}"),
            total,
            expected: digest.to_string(),
            offset: 0,
            data: data.to_vec(),
            labels: labels.clone(),
        };
        let written = match self.content().write(tokio_stream::once(request)).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                match stream.message().await {
                    Ok(Some(_)) | Ok(None) => Ok(true),
                    Err(status) => Err(status),
                }
            }
            Err(status) => Err(status),
        };
        match written {
            Ok(w) => Ok(w),
            Err(status) if status.code() == Code::AlreadyExists => {
                self.update_content_labels(digest, labels).await?;
                Ok(false)
            }
            Err(status) => Err(call_error("content.Write")(status)),
        }
    }

    /// Sets `labels` on an existing blob (field paths `labels.<key>`).
    pub async fn update_content_labels(
        &self,
        digest: &str,
        labels: &HashMap<String, String>,
    ) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        self.content()
            .update(content::UpdateRequest {
                info: Some(content::Info {
                    digest: digest.to_string(),
                    size: 0,
                    created_at: None,
                    updated_at: None,
                    labels: labels.clone(),
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: labels.keys().map(|k| format!("labels.{k}")).collect(),
                }),
            })
            .await
            .map_err(call_error("content.Update"))?;
        Ok(())
    }

    /// Creates the image `name` → `target`, or points an existing one at `target`.
    /// Returns whether it was created.
    pub async fn put_image(&self, name: &str, target: Descriptor) -> Result<bool> {
        let image = images::Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let created = self
            .images()
            .create(images::CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            })
            .await;
        match created {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::AlreadyExists => {
                self.images()
                    .update(images::UpdateImageRequest {
                        image: Some(image),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["target".to_string()],
                        }),
                        source_date_epoch: None,
                    })
                    .await
                    .map_err(call_error("images.Update"))?;
                Ok(false)
            }
            Err(status) => Err(call_error("images.Create")(status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_namespace_and_lease() -> Result<()> {
        let mut h = Headers {
            namespace: header_value("namespace", "k8s.io")?,
            lease: None,
        };
        let req = h.call(Request::new(())).map_err(call_error("test"))?;
        assert_eq!(
            req.metadata()
                .get(NAMESPACE_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("k8s.io")
        );
        assert!(req.metadata().get(LEASE_HEADER).is_none());
        h.lease = Some(header_value("lease", "strata-pull-1")?);
        let req = h.call(Request::new(())).map_err(call_error("test"))?;
        assert_eq!(
            req.metadata()
                .get(LEASE_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("strata-pull-1")
        );
        assert!(header_value("namespace", "bad\nvalue").is_err());
        Ok(())
    }
}
