//! A small CRI client, the kubelet's image path: `runtime.v1.ImageService/PullImage` and
//! `ImageStatus` over containerd's gRPC socket, generated from the vendored cri-api
//! `api.proto` (`tests/build.rs`). There is no `crictl` in Debian; this is the part of it the
//! tests need. CRI works in containerd's `k8s.io` namespace by itself, so no namespace
//! header is sent.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Error, Result};

/// The generated CRI v1 API (`runtime.v1`).
#[allow(clippy::all, dead_code, missing_docs)]
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/cri_api.rs"));
}

use api::runtime::v1::image_service_client::ImageServiceClient;
use api::runtime::v1::{ImageSpec, ImageStatusRequest, PullImageRequest};

/// The containerd namespace the CRI plugin keeps its images, containers and snapshots in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// What `ImageStatus` says about a pulled image.
#[derive(Debug)]
pub struct ImageInfo {
    /// The image ID (config digest).
    pub id: String,
    /// Tags the image is known by.
    pub repo_tags: Vec<String>,
    /// Size containerd reports, bytes.
    pub size: u64,
}

/// Runs `future` (`what`) on a current-thread runtime of its own: the tests are synchronous.
fn block_on<T>(what: &str, future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(crate::error::io_context(format!(
            "tokio runtime for {what}"
        )))?
        .block_on(future)
}

async fn connect(address: &Path) -> Result<ImageServiceClient<Channel>> {
    let path: PathBuf = address.to_owned();
    let channel = Endpoint::try_from("http://[::]:50051")
        .map_err(|e| Error::Invalid(format!("CRI endpoint: {e}")))?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|e| Error::Invalid(format!("connect to CRI at {}: {e}", address.display())))?;
    Ok(ImageServiceClient::new(channel))
}

fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..ImageSpec::default()
    }
}

/// `PullImage(image)` as the kubelet sends it (no auth, no sandbox config) to containerd at
/// `address`; the image reference containerd answers (the config digest).
pub fn pull_image(address: &Path, image: &str) -> Result<String> {
    block_on("CRI PullImage", async {
        let answer = connect(address)
            .await?
            .pull_image(PullImageRequest {
                image: Some(spec(image)),
                auth: None,
                sandbox_config: None,
            })
            .await
            .map_err(|s| Error::Invalid(format!("CRI PullImage {image}: {s}")))?;
        Ok(answer.into_inner().image_ref)
    })
}

/// `ImageStatus(image)`: `None` if containerd does not know the image.
pub fn image_status(address: &Path, image: &str) -> Result<Option<ImageInfo>> {
    block_on("CRI ImageStatus", async {
        let answer = connect(address)
            .await?
            .image_status(ImageStatusRequest {
                image: Some(spec(image)),
                verbose: false,
            })
            .await
            .map_err(|s| Error::Invalid(format!("CRI ImageStatus {image}: {s}")))?;
        Ok(answer.into_inner().image.map(|i| ImageInfo {
            id: i.id,
            repo_tags: i.repo_tags,
            size: i.size,
        }))
    })
}
