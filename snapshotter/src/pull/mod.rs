//! `strata-snapshotter pull REF`: puts a published image into containerd without
//! downloading a single layer (anchors §3.3: containerd 1.6's `ctr image pull` never passes
//! the remote-snapshot labels, so we run the unpacker's handshake ourselves).
//!
//! Steps (each timed on stdout):
//!
//! 1. read `manifest.json` and `config.json` from `<mountpoint>/.metadata/<ref>/`; compute
//!    diffIDs and ChainIDs;
//! 2. connect to containerd and take a lease (`containerd-lease` on every later call);
//! 3. write the config (label `containerd.io/gc.ref.snapshot.<snapshotter>=<top ChainID>`)
//!    and the manifest (label `containerd.io/gc.ref.content.config=<config digest>`) into
//!    the content store;
//! 4. per layer, unless `Stat(ChainID)` already succeeds: `Prepare("extract-… <ChainID>",
//!    parent = previous ChainID)` with labels `containerd.io/snapshot.ref`, `cri.layer-digest`,
//!    `cri.image-ref` and `cri.manifest-digest`, expecting `AlreadyExists` (anchors §3.2).
//!    A Prepare that succeeds means the layer is not published: the key is removed and
//!    `pull` fails naming the layer;
//! 5. create or update the image record `<ref>` → manifest descriptor;
//! 6. delete the lease.
//!
//! Afterwards `ctr run --snapshotter <name> <ref> …` finds the image unpacked (it Stats the
//! top ChainID) and prepares the container's snapshot on top of the remote layers.

pub mod containerd;
pub mod image;
pub mod reference;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tonic::Code;

use crate::api::containerd::services::snapshots::v1 as snapshots;
use crate::api::containerd::types::Descriptor;
use crate::error::{Error, Result};
use containerd::{Containerd, call_error};
use image::Image;
use reference::Reference;

/// Command-line arguments of `pull` (CONTRACTS §4).
#[derive(clap::Args, Debug, Clone)]
pub struct PullArgs {
    /// containerd's gRPC socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub address: PathBuf,
    /// containerd namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Name of our proxy snapshotter in containerd's config.
    #[arg(long, default_value = "strata")]
    pub snapshotter: String,
    /// Where the repository is mounted.
    #[arg(long)]
    pub mountpoint: PathBuf,
    /// Image reference, e.g. `127.0.0.1:5000/demo:1` or `debian:12`.
    pub reference: String,
}

/// Label: the snapshot an extraction Prepare should produce.
pub const LABEL_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// CRI label: compressed layer digest.
pub const LABEL_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// CRI label: image reference.
pub const LABEL_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// CRI label: manifest digest.
pub const LABEL_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// GC label on the manifest blob pointing at its config.
pub const LABEL_GC_CONFIG: &str = "containerd.io/gc.ref.content.config";
/// GC label prefix on the config blob pointing at the top snapshot.
pub const LABEL_GC_SNAPSHOT_PREFIX: &str = "containerd.io/gc.ref.snapshot.";

/// How long the pull's lease lives if `pull` dies before deleting it.
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);

/// What [`pull`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    /// The containerd image name.
    pub name: String,
    /// Manifest digest.
    pub manifest_digest: String,
    /// Top ChainID (the snapshot containers start from).
    pub top_chain_id: String,
    /// Layers committed from the repository by this pull.
    pub remote_layers: usize,
    /// Layers that were already present in containerd.
    pub existing_layers: usize,
}

/// A unique suffix like containerd's `uniquePart()`: nanoseconds and a random number.
fn unique_part() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    format!("{nanos}-{:08x}", hasher.finish() as u32)
}

/// Extraction labels for layer `i` (module doc, step 4).
pub fn layer_labels(image: &Image, i: usize, image_ref: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_SNAPSHOT_REF.to_string(), image.chain_ids[i].clone()),
        (
            LABEL_LAYER_DIGEST.to_string(),
            image.layers[i].digest.clone(),
        ),
        (LABEL_IMAGE_REF.to_string(), image_ref.to_string()),
        (
            LABEL_MANIFEST_DIGEST.to_string(),
            image.manifest_descriptor.digest.clone(),
        ),
    ])
}

struct Timer {
    start: Instant,
    step: Instant,
}

impl Timer {
    fn new() -> Timer {
        let now = Instant::now();
        Timer {
            start: now,
            step: now,
        }
    }

    fn step(&mut self, what: &str) {
        let now = Instant::now();
        println!("{what}: {:.1} ms", (now - self.step).as_secs_f64() * 1e3);
        self.step = now;
    }
}

/// Runs the pull (module doc, steps 2–6) against a connected containerd; `step` is
/// called after each step with its name (for timings).
pub async fn pull(
    client: &mut Containerd,
    args: &PullArgs,
    image: &Image,
    name: &str,
    step: &mut dyn FnMut(&str),
) -> Result<Pulled> {
    let top = image
        .chain_ids
        .last()
        .cloned()
        .ok_or_else(|| Error::ImageMetadata {
            reference: name.to_string(),
            reason: "the image has no layers".into(),
        })?;

    let lease_id = format!("strata-pull-{}", unique_part());
    let lease = client.create_lease(&lease_id, LEASE_EXPIRY).await?;
    client.set_lease(Some(&lease))?;
    step("lease");

    let result = pull_in_lease(client, args, image, name, &top, step).await;
    client.set_lease(None)?;
    let deleted = client.delete_lease(&lease).await;
    step("delete lease");
    let pulled = result?;
    deleted?;
    Ok(pulled)
}

async fn pull_in_lease(
    client: &Containerd,
    args: &PullArgs,
    image: &Image,
    name: &str,
    top: &str,
    step: &mut dyn FnMut(&str),
) -> Result<Pulled> {
    let config_labels = HashMap::from([(
        format!("{LABEL_GC_SNAPSHOT_PREFIX}{}", args.snapshotter),
        top.to_string(),
    )]);
    client
        .write_blob(
            &image.config_descriptor.digest,
            &image.config,
            &config_labels,
        )
        .await?;
    let manifest_labels = HashMap::from([(
        LABEL_GC_CONFIG.to_string(),
        image.config_descriptor.digest.clone(),
    )]);
    client
        .write_blob(
            &image.manifest_descriptor.digest,
            &image.manifest,
            &manifest_labels,
        )
        .await?;
    step("content");

    let mut snapshots_client = client.snapshots();
    let (mut remote_layers, mut existing_layers) = (0, 0);
    for (i, chain_id) in image.chain_ids.iter().enumerate() {
        let stat = snapshots_client
            .stat(snapshots::StatSnapshotRequest {
                snapshotter: args.snapshotter.clone(),
                key: chain_id.clone(),
            })
            .await;
        match stat {
            Ok(_) => {
                existing_layers += 1;
                continue;
            }
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(call_error("snapshots.Stat")(s)),
        }
        let key = format!("extract-{} {chain_id}", unique_part());
        let parent = if i == 0 {
            String::new()
        } else {
            image.chain_ids[i - 1].clone()
        };
        let prepared = snapshots_client
            .prepare(snapshots::PrepareSnapshotRequest {
                snapshotter: args.snapshotter.clone(),
                key: key.clone(),
                parent,
                labels: layer_labels(image, i, name),
            })
            .await;
        match prepared {
            Err(s) if s.code() == Code::AlreadyExists => remote_layers += 1,
            Err(s) => return Err(call_error("snapshots.Prepare")(s)),
            Ok(_) => {
                // The snapshotter made an ordinary snapshot: the layer is not published.
                let _ = snapshots_client
                    .remove(snapshots::RemoveSnapshotRequest {
                        snapshotter: args.snapshotter.clone(),
                        key,
                    })
                    .await;
                return Err(Error::LayerNotPublished {
                    index: i,
                    digest: image.layers[i].digest.clone(),
                    chain_id: chain_id.clone(),
                });
            }
        }
    }
    step("snapshots");

    let d = &image.manifest_descriptor;
    client
        .put_image(
            name,
            Descriptor {
                media_type: d.media_type.clone(),
                digest: d.digest.clone(),
                size: d.size,
                annotations: HashMap::new(),
            },
        )
        .await?;
    step("image");
    Ok(Pulled {
        name: name.to_string(),
        manifest_digest: d.digest.clone(),
        top_chain_id: top.to_string(),
        remote_layers,
        existing_layers,
    })
}

/// Runs `strata-snapshotter pull`.
pub fn main(args: PullArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            context: "start tokio runtime".into(),
            source,
        })?;
    runtime.block_on(async move {
        let mut timer = Timer::new();
        let reference = Reference::parse(&args.reference)?;
        let name = reference.public_path();
        let (mountpoint, path) = (args.mountpoint.clone(), name.clone());
        let image = tokio::task::spawn_blocking(move || Image::read(&mountpoint, &path))
            .await
            .map_err(|e| Error::Io {
                context: "read image metadata".into(),
                source: std::io::Error::other(e),
            })??;
        timer.step("metadata");
        let mut client = Containerd::connect(&args.address, &args.namespace).await?;
        timer.step("connect");
        let pulled = pull(&mut client, &args, &image, &name, &mut |w| timer.step(w)).await?;
        let total = timer.start.elapsed();
        println!(
            "pulled {} ({}): {} layers from the repository, {} already present, top snapshot {}; total {:.1} ms",
            pulled.name,
            pulled.manifest_digest,
            pulled.remote_layers,
            pulled.existing_layers,
            pulled.top_chain_id,
            total.as_secs_f64() * 1e3
        );
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_labels_name_chain_layer_image_and_manifest() -> Result<()> {
        let config = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111"]}}"#.to_vec();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":5}}]}}"#,
            image::sha256_digest(&config),
            config.len()
        );
        let img = Image::parse("r", manifest.into_bytes(), config)?;
        let labels = layer_labels(&img, 0, "127.0.0.1:5000/demo:1");
        assert_eq!(labels[LABEL_SNAPSHOT_REF], img.diff_ids[0]);
        assert_eq!(labels[LABEL_LAYER_DIGEST], img.layers[0].digest);
        assert_eq!(labels[LABEL_IMAGE_REF], "127.0.0.1:5000/demo:1");
        assert_eq!(
            labels[LABEL_MANIFEST_DIGEST],
            img.manifest_descriptor.digest
        );
        Ok(())
    }

    #[test]
    fn unique_parts_differ() {
        assert_ne!(unique_part(), unique_part());
    }
}
