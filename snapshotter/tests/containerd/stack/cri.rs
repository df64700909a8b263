//! A small CRI client (the kubelet's image path): `runtime.v1.ImageService/PullImage` and
//! `ImageStatus` over containerd's socket, generated from the vendored cri-api `api.proto`
//! (`snapshotter/build.rs`).

use std::path::Path;

use snapshotter::pull::containerd_client::Containerd;

/// The generated CRI v1 API (`runtime.v1`).
#[allow(clippy::all, dead_code, missing_docs)]
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/cri_api.rs"));
}

use api::runtime::v1::image_service_client::ImageServiceClient;
use api::runtime::v1::{ImageSpec, ImageStatusRequest, PullImageRequest};

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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..ImageSpec::default()
    }
}

/// `PullImage(image)` as kubelet sends it (no auth, no sandbox config); the image
/// reference containerd answers, or the gRPC error as text.
pub fn pull_image(address: &Path, image: &str) -> Result<String, String> {
    runtime().block_on(async {
        let c = Containerd::connect(address, "k8s.io")
            .await
            .map_err(|e| e.to_string())?;
        let mut client = ImageServiceClient::new(c.intercepted_channel());
        let answer = client
            .pull_image(PullImageRequest {
                image: Some(spec(image)),
                auth: None,
                sandbox_config: None,
            })
            .await
            .map_err(|s| format!("PullImage: {s}"))?;
        Ok(answer.into_inner().image_ref)
    })
}

/// `ImageStatus(image)`: `None` if containerd does not know the image.
pub fn image_status(address: &Path, image: &str) -> Result<Option<ImageInfo>, String> {
    runtime().block_on(async {
        let c = Containerd::connect(address, "k8s.io")
            .await
            .map_err(|e| e.to_string())?;
        let mut client = ImageServiceClient::new(c.intercepted_channel());
        let answer = client
            .image_status(ImageStatusRequest {
                image: Some(spec(image)),
                verbose: false,
            })
            .await
            .map_err(|s| format!("ImageStatus: {s}"))?;
        Ok(answer.into_inner().image.map(|i| ImageInfo {
            id: i.id,
            repo_tags: i.repo_tags,
            size: i.size,
        }))
    })
}
