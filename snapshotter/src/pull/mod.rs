//! Lazy pull (`strata-snapshotter pull REF`, entry point [`crate::cmd::pull`]): puts an
//! image into containerd, taking every layer that is published in the repository remotely,
//! without downloading it (docs/lazy-snapshotters.md §3: containerd 1.6's `ctr image pull` never passes the
//! remote-snapshot labels, so we run the unpacker's handshake ourselves), and fetching the
//! others from the image's registry.
//!
//! Steps (each timed on stdout; a progress bar per downloaded layer on a terminal):
//!
//! 1. read `manifest.json` and `config.json` of the platform (`--platform`, the node's by
//!    default) from `<mountpoint>/.metadata/<ref>/[platforms/<os>-<arch>[-<variant>]/]`
//!    ([`image::Image::read_platform`]); an image not in the repository at all is read from
//!    its registry instead ([`registry`], index → platform manifest → config); compute
//!    diffIDs and ChainIDs;
//! 2. connect to containerd (while step 1 reads) and take a lease (`containerd-lease` on
//!    every later call);
//! 3. write the config (label `containerd.io/gc.ref.snapshot.<snapshotter>=<top ChainID>`)
//!    and the manifest (label `containerd.io/gc.ref.content.config=<config digest>`) into
//!    the content store, while step 4 runs;
//! 4. per layer, unless `Stat(ChainID)` already succeeds: `Prepare("extract-… <ChainID>",
//!    parent = previous ChainID)` with labels `containerd.io/snapshot.ref`, `cri.layer-digest`,
//!    `cri.image-ref` and `cri.manifest-digest`, expecting `AlreadyExists` (docs/lazy-snapshotters.md §2).
//!    A Prepare that succeeds means the layer is not published: its blob is fetched from the
//!    registry into the content store (label `containerd.io/uncompressed=<diffID>`), applied
//!    onto the prepared snapshot by containerd's diff service (`Diff.Apply`, which returns
//!    the diffID, checked) and committed as the ChainID — what containerd's own unpacker
//!    does. With `--remote-only` the key is removed instead and `pull` fails naming the
//!    layer. The manifest blob carries `containerd.io/gc.ref.content.l.<i>` for every layer
//!    so fetched blobs live as long as the image;
//! 5. create or update the image record `<ref>` → manifest descriptor;
//! 6. delete the lease.
//!
//! Afterwards `ctr run --snapshotter <name> <ref> …` finds the image unpacked (it Stats the
//! top ChainID) and prepares the container's snapshot on top of the remote layers.

pub mod containerd_client;
pub mod image;
pub mod platform;
pub mod registry;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::Code;

use crate::containerd::api::containerd::services::content::v1 as content;
use crate::containerd::api::containerd::services::diff::v1 as diff;
use crate::containerd::api::containerd::services::snapshots::v1 as snapshots;
use crate::containerd::api::containerd::types::Descriptor;
use crate::error::{Error, Result};
use containerd_client::{Containerd, call_error};
use image::Image;
use namespace::{Digest, ImageName, Platform};
use registry::Registry;

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
    /// Platform to pull, OS/ARCH[/VARIANT] [default: this node's, e.g. linux/amd64].
    #[arg(long)]
    pub platform: Option<String>,
    /// Fail instead of fetching layers that are not published from the registry.
    #[arg(long)]
    pub remote_only: bool,
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
    /// Layers fetched from the registry and unpacked (not published).
    pub fetched_layers: usize,
}

/// Label on a layer blob naming its diffID (containerd's unpacker sets it).
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// GC label prefix on the manifest blob pointing at layer blobs.
pub const LABEL_GC_LAYER_PREFIX: &str = "containerd.io/gc.ref.content.l.";
/// Bytes per content-store `Write` message.
const WRITE_CHUNK: usize = 1 << 20;

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
        (
            LABEL_SNAPSHOT_REF.to_string(),
            image.chain_ids[i].to_string(),
        ),
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

/// Runs the pull (module doc, steps 2–6) against a connected containerd; `step` is
/// called after each step with its name (for timings).
pub async fn pull(
    client: &mut Containerd,
    args: &PullArgs,
    image: &Image,
    name: &str,
    registry: Option<&Registry>,
    step: &mut dyn FnMut(&str),
) -> Result<Pulled> {
    let top = image
        .chain_ids
        .last()
        .map(Digest::to_string)
        .ok_or_else(|| Error::ImageMetadata {
            reference: name.to_string(),
            reason: "the image has no layers".into(),
        })?;

    let lease_id = format!("strata-pull-{}", unique_part());
    let lease = client.create_lease(&lease_id, LEASE_EXPIRY).await?;
    client.set_lease(Some(&lease))?;
    step("lease");

    let result = pull_in_lease(client, args, image, name, &top, registry, step).await;
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
    registry: Option<&Registry>,
    step: &mut dyn FnMut(&str),
) -> Result<Pulled> {
    let config_labels = HashMap::from([(
        format!("{LABEL_GC_SNAPSHOT_PREFIX}{}", args.snapshotter),
        top.to_string(),
    )]);
    let mut manifest_labels = HashMap::from([(
        LABEL_GC_CONFIG.to_string(),
        image.config_descriptor.digest.clone(),
    )]);
    for (i, layer) in image.layers.iter().enumerate() {
        manifest_labels.insert(format!("{LABEL_GC_LAYER_PREFIX}{i}"), layer.digest.clone());
    }
    // The config and the manifest (the lease keeps them until the image record refers to
    // them), and the layers' snapshots, all at once: each content write is a containerd
    // transaction of its own, and the snapshots do not depend on them.
    // A failed content write stops the layers after the one under way, and is reported
    // first; the layer under way finishes (or cleans up after itself).
    let content_failed = std::sync::atomic::AtomicBool::new(false);
    let content = async {
        let written = tokio::try_join!(
            client.write_blob(
                &image.config_descriptor.digest,
                &image.config,
                &config_labels,
            ),
            client.write_blob(
                &image.manifest_descriptor.digest,
                &image.manifest,
                &manifest_labels,
            ),
        );
        if written.is_err() {
            content_failed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        written.map(drop)
    };
    let snapshots = async {
        let mut snapshots_client = client.snapshots();
        let (mut remote_layers, mut existing_layers, mut fetched_layers) = (0, 0, 0);
        for (i, chain_id) in image.chain_ids.iter().enumerate() {
            if content_failed.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let stat = snapshots_client
                .stat(snapshots::StatSnapshotRequest {
                    snapshotter: args.snapshotter.clone(),
                    key: chain_id.to_string(),
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
                image.chain_ids[i - 1].to_string()
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
                Ok(response) => {
                    // The snapshotter made an ordinary snapshot: the layer is not published.
                    let remove = |key: String| {
                        let mut c = snapshots_client.clone();
                        let snapshotter = args.snapshotter.clone();
                        async move {
                            let _ = c
                                .remove(snapshots::RemoveSnapshotRequest { snapshotter, key })
                                .await;
                        }
                    };
                    let Some(registry) = registry.filter(|_| !args.remote_only) else {
                        remove(key).await;
                        return Err(Error::LayerNotPublished {
                            index: i,
                            digest: image.layers[i].digest.clone(),
                            chain_id: chain_id.to_string(),
                        });
                    };
                    let mounts = response.into_inner().mounts;
                    let fetched =
                        fetch_and_apply(client, args, image, i, &key, mounts, registry).await;
                    if let Err(e) = fetched {
                        remove(key).await;
                        return Err(Error::LayerFallback {
                            index: i,
                            digest: image.layers[i].digest.clone(),
                            reason: e.to_string(),
                        });
                    }
                    fetched_layers += 1;
                }
            }
        }
        Ok((remote_layers, existing_layers, fetched_layers))
    };
    let (written, layers) = tokio::join!(content, snapshots);
    written?;
    let (remote_layers, existing_layers, fetched_layers) = layers?;
    step("content and snapshots");

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
        fetched_layers,
    })
}

/// The normal path for layer `i` (module doc, step 4): blob into the content store (unless
/// already there), `Diff.Apply` onto `mounts` of the prepared `key`, diffID check, `Commit`
/// as the ChainID. Progress on stderr when it is a terminal.
async fn fetch_and_apply(
    client: &Containerd,
    args: &PullArgs,
    image: &Image,
    i: usize,
    key: &str,
    mounts: Vec<crate::containerd::api::containerd::types::Mount>,
    registry: &Registry,
) -> Result<()> {
    let layer = &image.layers[i];
    let diff_id = &image.diff_ids[i].to_string();
    let present = client
        .content()
        .info(content::InfoRequest {
            digest: layer.digest.clone(),
        })
        .await
        .is_ok();
    if !present {
        write_blob_stream(client, registry, &layer.digest, layer.size, diff_id).await?;
    }
    let applied = diff::diff_client::DiffClient::new(client.intercepted_channel())
        .apply(diff::ApplyRequest {
            diff: Some(Descriptor {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
                size: layer.size,
                annotations: HashMap::new(),
            }),
            mounts,
            payloads: HashMap::new(),
        })
        .await
        .map_err(call_error("diff.Apply"))?
        .into_inner()
        .applied
        .map(|d| d.digest)
        .unwrap_or_default();
    if &applied != diff_id {
        return Err(Error::ImageMetadata {
            reference: layer.digest.clone(),
            reason: format!("applied layer has diffID {applied}, the config says {diff_id}"),
        });
    }
    let chain_id = &image.chain_ids[i].to_string();
    client
        .snapshots()
        .commit(snapshots::CommitSnapshotRequest {
            snapshotter: args.snapshotter.clone(),
            name: chain_id.clone(),
            key: key.to_string(),
            labels: HashMap::from([(LABEL_SNAPSHOT_REF.to_string(), chain_id.clone())]),
            parent: String::new(),
        })
        .await
        .map_err(call_error("snapshots.Commit"))?;
    Ok(())
}

/// Streams blob `digest` (`size` bytes) from `registry` into containerd's content store
/// (`Write`: WRITE messages of [`WRITE_CHUNK`] bytes, then COMMIT with the expected digest;
/// containerd verifies it), labelled with its diffID.
async fn write_blob_stream(
    client: &Containerd,
    registry: &Registry,
    digest: &str,
    size: i64,
    diff_id: &str,
) -> Result<()> {
    use std::io::IsTerminal;
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(u64::try_from(size).unwrap_or(0));
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(format!("fetch {}", &digest[..digest.len().min(19)]));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut response = registry.blob(digest).await?;
    let url = format!("{}/…/blobs/{digest}", registry.base());
    let reference = format!("strata-pull-{digest}-{}", unique_part());
    let (tx, rx) = tokio::sync::mpsc::channel::<content::WriteContentRequest>(4);
    let mut content_client = client.content();
    let call = tokio::spawn(async move {
        let mut stream = content_client
            .write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
        Ok::<(), tonic::Status>(())
    });
    let mut offset: i64 = 0;
    let mut buffer: Vec<u8> = Vec::with_capacity(WRITE_CHUNK);
    let send_error = || Error::Http {
        url: url.clone(),
        reason: "containerd closed the content write stream".into(),
    };
    loop {
        let chunk = response.chunk().await.map_err(|e| Error::Http {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let done = chunk.is_none();
        if let Some(c) = chunk {
            bar.inc(c.len() as u64);
            buffer.extend_from_slice(&c);
        }
        if buffer.len() >= WRITE_CHUNK || (done && !buffer.is_empty()) {
            let data = std::mem::take(&mut buffer);
            let len = i64::try_from(data.len()).unwrap_or(i64::MAX);
            tx.send(content::WriteContentRequest {
                action: content::WriteAction::Write as i32,
                r#ref: reference.clone(),
                total: size,
                expected: digest.to_string(),
                offset,
                data,
                labels: HashMap::new(),
            })
            .await
            .map_err(|_| send_error())?;
            offset += len;
        }
        if done {
            break;
        }
    }
    tx.send(content::WriteContentRequest {
        action: content::WriteAction::Commit as i32,
        r#ref: reference,
        total: offset,
        expected: digest.to_string(),
        offset,
        data: Vec::new(),
        labels: HashMap::from([(LABEL_UNCOMPRESSED.to_string(), diff_id.to_string())]),
    })
    .await
    .map_err(|_| send_error())?;
    drop(tx);
    bar.finish_and_clear();
    match call.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(status)) if status.code() == Code::AlreadyExists => Ok(()),
        Ok(Err(status)) => Err(call_error("content.Write")(status)),
        Err(e) => Err(Error::Io {
            context: "content write task".into(),
            source: std::io::Error::other(e),
        }),
    }
}

/// Reads the image from the registry (module doc, step 1): the manifest named by the tag or
/// digest, `platform`'s manifest if that is an index, and the config.
pub async fn image_from_registry(
    registry: &Registry,
    reference: &ImageName,
    name: &str,
    platform: &Platform,
) -> Result<Image> {
    let tag = reference.manifest_reference();
    let (mut manifest, media_type) = registry.manifest(&tag).await?;
    if image::is_index(&manifest, &media_type) {
        let digest = image::select_from_index(name, &manifest, platform)?;
        manifest = registry.manifest(&digest).await?.0;
    }
    #[derive(serde::Deserialize)]
    struct ConfigRef {
        config: image::Descriptor,
    }
    let config_ref: ConfigRef =
        serde_json::from_slice(&manifest).map_err(|e| Error::ImageMetadata {
            reference: name.to_string(),
            reason: format!("manifest from {}: {e}", registry.base()),
        })?;
    let config = registry.blob_bytes(&config_ref.config.digest).await?;
    let image = Image::parse(name, manifest, config)?;
    image.check_platform(name, platform)?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_labels_name_chain_layer_image_and_manifest() -> Result<()> {
        let config = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111"]}}"#.to_vec();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":5}}]}}"#,
            Digest::of_bytes(&config),
            config.len()
        );
        let img = Image::parse("r", manifest.into_bytes(), config)?;
        let labels = layer_labels(&img, 0, "127.0.0.1:5000/demo:1");
        assert_eq!(labels[LABEL_SNAPSHOT_REF], img.diff_ids[0].to_string());
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
