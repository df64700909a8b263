//! OCI image layout directories (OCI image spec, "Image Layout"): `index.json` names images
//! through the `org.opencontainers.image.ref.name` annotation; blobs live in
//! `blobs/sha256/<hex>`.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{
    BlobDescriptor, Document, FetchedImage, assemble, parse_document, select_platform,
    verify_digest,
};
use crate::digest::sha256_hex;
use crate::error::{Error, Result};
use crate::reference::ImageName;

/// Largest manifest, index or config we read into memory (bytes).
const MAX_DOCUMENT: u64 = 16 * 1024 * 1024;

/// One image in a layout directory.
pub struct LayoutSource {
    /// The layout directory.
    pub dir: PathBuf,
    /// Tag to select (`None`: the only image).
    pub tag: Option<String>,
    /// The public name.
    pub name: ImageName,
}

impl LayoutSource {
    /// Opens `dir` for the image tagged `tag`, published as `name`.
    pub fn new(dir: &Path, tag: Option<String>, name: ImageName) -> LayoutSource {
        LayoutSource {
            dir: dir.to_path_buf(),
            tag,
            name,
        }
    }

    fn image(&self) -> String {
        format!("oci:{}", self.dir.display())
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = sha256_hex(digest).ok_or_else(|| Error::Image {
            image: self.image(),
            reason: format!("unsupported digest {digest:?}"),
        })?;
        Ok(self.dir.join("blobs/sha256").join(hex))
    }

    fn read_small(&self, path: &Path) -> Result<Vec<u8>> {
        let f = File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let mut buf = Vec::new();
        f.take(MAX_DOCUMENT + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        if buf.len() as u64 > MAX_DOCUMENT {
            return Err(Error::Image {
                image: self.image(),
                reason: format!("{} is larger than {MAX_DOCUMENT} bytes", path.display()),
            });
        }
        Ok(buf)
    }

    fn read_blob(&self, blob: &BlobDescriptor, what: &str) -> Result<Vec<u8>> {
        let bytes = self.read_small(&self.blob_path(&blob.digest)?)?;
        verify_digest(&self.image(), what, &bytes, &blob.digest)?;
        Ok(bytes)
    }

    /// Reads the image's manifest (through a nested index if needed) and config.
    pub async fn fetch(&self) -> Result<FetchedImage> {
        let image = self.image();
        let top = self.read_small(&self.dir.join("index.json"))?;
        let Document::Index(entries) = parse_document(&image, &top)? else {
            return Err(Error::Image {
                image,
                reason: "index.json is not an image index".into(),
            });
        };
        let chosen = match &self.tag {
            Some(t) => entries
                .iter()
                .find(|e| e.ref_name.as_deref() == Some(t.as_str())),
            None if entries.len() == 1 => entries.first(),
            None => None,
        }
        .ok_or_else(|| Error::Image {
            image: image.clone(),
            reason: match &self.tag {
                Some(t) => format!("no image tagged {t:?} in index.json"),
                None => format!("index.json lists {} images; give a tag", entries.len()),
            },
        })?;
        let mut index = None;
        let mut bytes = self.read_blob(&chosen.descriptor, "manifest")?;
        let mut doc = parse_document(&image, &bytes)?;
        if let Document::Index(inner) = &doc {
            let entry = select_platform(&image, inner)?;
            let manifest = self.read_blob(&entry.descriptor, "platform manifest")?;
            index = Some(std::mem::replace(&mut bytes, manifest));
            doc = parse_document(&image, &bytes)?;
        }
        let Document::Manifest { config, layers } = doc else {
            return Err(Error::Image {
                image,
                reason: "nested index inside an index".into(),
            });
        };
        let config_bytes = self.read_blob(&config, "config")?;
        assemble(
            self.name.clone(),
            index,
            bytes,
            config,
            layers,
            config_bytes,
        )
    }

    /// Opens a layer blob file.
    pub fn open_blob(&self, blob: &BlobDescriptor) -> Result<Box<dyn Read + Send>> {
        let path = self.blob_path(&blob.digest)?;
        let f = File::open(&path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        Ok(Box::new(f))
    }
}
