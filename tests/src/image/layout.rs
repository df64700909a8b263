//! Reading facts back from an OCI image layout (image-spec `image-layout.md`): the manifest
//! of a tag, its layers' compressed digests and sizes, the config's diff IDs and the
//! ChainIDs containerd names committed snapshots by; and the digests and blobs of layouts
//! the benches and tests write themselves ([`write_layout`]: one image of gzip layers).

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use serde_json::Value;

use crate::error::{Error, Result, io_context};

/// One layer descriptor of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFacts {
    /// `sha256:<hex>` of the compressed blob.
    pub digest: String,
    /// Compressed size in bytes, as in the manifest.
    pub size: u64,
    /// e.g. `application/vnd.oci.image.layer.v1.tar+gzip`.
    pub media_type: String,
}

/// What the tests need to know about one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the config blob.
    pub config_digest: String,
    /// Layers, bottom first.
    pub layers: Vec<LayerFacts>,
    /// `rootfs.diff_ids` of the config, bottom first (`sha256:<hex>` of uncompressed tars).
    pub diff_ids: Vec<namespace::Digest>,
}

impl ImageFacts {
    /// The image's compressed size: Σ layer sizes of the manifest, in bytes.
    pub fn compressed_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// ChainIDs of the layer stack, bottom first (image-spec `config.md`, "Layer ChainID").
    pub fn chain_ids(&self) -> Vec<String> {
        namespace::chain_ids(&self.diff_ids)
            .iter()
            .map(ToString::to_string)
            .collect()
    }
}

/// Reads the manifest tagged `tag` (annotation `org.opencontainers.image.ref.name`) from
/// the layout at `layout`, and its config.
///
/// Errors: missing files, invalid JSON, no such tag, missing fields ([`Error::Invalid`]).
pub fn read_layout(layout: &Path, tag: &str) -> Result<ImageFacts> {
    let index = read_json(&layout.join("index.json"))?;
    let descriptor = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .ok_or_else(|| Error::Invalid(format!("{}: no manifest tagged {tag}", layout.display())))?;
    let manifest_digest = string_field(descriptor, "digest", layout)?;
    let manifest = read_json(&blob_path(layout, &manifest_digest)?)?;
    let config_digest = string_field(&manifest["config"], "digest", layout)?;
    let config = read_json(&blob_path(layout, &config_digest)?)?;
    let layers = manifest["layers"]
        .as_array()
        .ok_or_else(|| Error::Invalid(format!("{manifest_digest}: no layers array")))?
        .iter()
        .map(|l| {
            Ok(LayerFacts {
                digest: string_field(l, "digest", layout)?,
                size: l["size"].as_u64().ok_or_else(|| {
                    Error::Invalid(format!("{manifest_digest}: layer without size"))
                })?,
                media_type: string_field(l, "mediaType", layout)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .ok_or_else(|| Error::Invalid(format!("{config_digest}: no rootfs.diff_ids")))?
        .iter()
        .map(|d| {
            d.as_str()
                .ok_or_else(|| Error::Invalid(format!("{config_digest}: non-string diff_id")))?
                .parse()
                .map_err(|e| Error::Invalid(format!("{config_digest}: rootfs.diff_ids: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ImageFacts {
        manifest_digest,
        config_digest,
        layers,
        diff_ids,
    })
}

/// `blobs/<algorithm>/<hex>` of a digest inside a layout.
pub fn blob_path(layout: &Path, digest: &str) -> Result<std::path::PathBuf> {
    let (algorithm, hex) = digest
        .split_once(':')
        .ok_or_else(|| Error::Invalid(format!("malformed digest {digest}")))?;
    Ok(layout.join("blobs").join(algorithm).join(hex))
}

/// Writes `data` as a blob under `blobs` (a layout's `blobs/sha256`): its `sha256:<hex>`
/// digest and size.
///
/// Errors: the file cannot be written.
pub fn put_blob(blobs: &Path, data: &[u8]) -> Result<(String, u64)> {
    let digest = sha256_digest(data);
    let path = blobs.join(&digest["sha256:".len()..]);
    std::fs::write(&path, data).map_err(io_context(format!("write {}", path.display())))?;
    Ok((digest, data.len() as u64))
}

/// `sha256:<hex>` of `data`: the digest of a blob, or the diffID of an uncompressed layer tar.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// `sha256:<hex>` and size of a file, read in 1 MiB pieces.
///
/// Errors: the file cannot be read.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut file =
        std::fs::File::open(path).map_err(io_context(format!("open {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(io_context(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), total))
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(io_context(format!("read {}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Invalid(format!("{}: invalid JSON: {e}", path.display())))
}

fn string_field(value: &Value, field: &str, layout: &Path) -> Result<String> {
    value[field].as_str().map(str::to_owned).ok_or_else(|| {
        Error::Invalid(format!(
            "{}: descriptor without string {field}",
            layout.display()
        ))
    })
}

/// `raw` gzip-compressed (fast), as layer blobs are.
///
/// Errors: none in practice (writing into memory); an I/O error is passed on.
pub fn gzip(raw: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(raw)
        .and_then(|()| encoder.finish())
        .map_err(io_context("gzip a layer"))
}

/// The digests of an image [`write_layout`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutImage {
    /// The config blob.
    pub config: String,
    /// The gzip layer blobs, bottom first.
    pub layers: Vec<String>,
    /// The layers' diff IDs (digests of the tars), bottom first.
    pub diff_ids: Vec<String>,
}

/// Writes an OCI layout at `dir`: one linux/amd64 image (config `Cmd` `/bin/sh`) of the
/// layer tars `tars` (bottom first, stored gzip-compressed), tagged `tag`.
///
/// Errors: a file cannot be written.
pub fn write_layout(dir: &Path, tag: &str, tars: &[Vec<u8>]) -> Result<LayoutImage> {
    write_layout_with(dir, tag, tars, serde_json::json!({"Cmd": ["/bin/sh"]}))
}

/// As [`write_layout`], with `config` as the image config's `config` object (`Cmd`, `Env`…).
///
/// Errors: a file cannot be written.
pub fn write_layout_with(
    dir: &Path,
    tag: &str,
    tars: &[Vec<u8>],
    config: Value,
) -> Result<LayoutImage> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io_context(format!("create {}", blobs.display())))?;
    let mut layers = Vec::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for t in tars {
        let gz = gzip(t)?;
        let (digest, size) = put_blob(&blobs, &gz)?;
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": size}));
        layers.push(digest);
        diff_ids.push(sha256_digest(t));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    .to_string();
    let (config_digest, config_size) = put_blob(&blobs, config.as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": descs})
    .to_string();
    let (manifest_digest, manifest_size) = put_blob(&blobs, manifest.as_bytes())?;
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
        "size": manifest_size, "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    for (name, text) in [
        ("index.json", index.to_string()),
        ("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#.to_owned()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io_context(format!("write {}", path.display())))?;
    }
    Ok(LayoutImage {
        config: config_digest,
        layers,
        diff_ids,
    })
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn reads_a_handmade_layout() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |bytes: &[u8]| {
            let hex = hex::encode(Sha256::digest(bytes));
            std::fs::write(blobs.join(&hex), bytes).unwrap();
            format!("sha256:{hex}")
        };
        let diff_id = format!("sha256:{}", "1".repeat(64));
        let config =
            put(format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#).as_bytes());
        let manifest = put(format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{config}","size":1}},
                   "layers":[{{"mediaType":"m","digest":"sha256:22","size":700}}]}}"#
        )
        .as_bytes());
        std::fs::write(
            dir.path().join("index.json"),
            format!(
                r#"{{"manifests":[{{"digest":"{manifest}",
                   "annotations":{{"org.opencontainers.image.ref.name":"t"}}}}]}}"#
            ),
        )
        .unwrap();
        let facts = read_layout(dir.path(), "t").unwrap();
        assert_eq!(facts.config_digest, config);
        assert_eq!(facts.compressed_size(), 700);
        let diff_ids: Vec<String> = facts.diff_ids.iter().map(ToString::to_string).collect();
        assert_eq!(diff_ids, [diff_id]);
        let err = read_layout(dir.path(), "nope").unwrap_err().to_string();
        assert!(err.contains("no manifest tagged nope"), "{err}");
    }
}
