//! OCI image layout directories (OCI image spec, "Image Layout"): `index.json` names images
//! through the `org.opencontainers.image.ref.name` annotation; blobs live in
//! `blobs/sha256/<hex>`. The same layout inside a `docker save` tarball (Docker 25+) is read
//! through [`LayoutRoot::Archive`].

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use namespace::Digest;

use super::docker_archive::ArchiveIndex;
use super::{
    BlobDescriptor, Document, FetchedSet, PlatformFilter, parse_document, resolve, verify_digest,
};
use crate::error::{Error, Result};
use crate::reference::ImageName;

/// Largest manifest, index or config we read into memory (bytes).
pub const MAX_DOCUMENT: u64 = 16 * 1024 * 1024;

/// Where the files of a layout are.
#[derive(Clone, Debug)]
pub enum LayoutRoot {
    /// A directory.
    Dir(PathBuf),
    /// The members of a tarball.
    Archive(Arc<ArchiveIndex>),
}

impl LayoutRoot {
    /// A label for messages.
    pub fn label(&self) -> String {
        match self {
            LayoutRoot::Dir(d) => format!("oci:{}", d.display()),
            LayoutRoot::Archive(a) => format!("docker-archive:{}", a.file.display()),
        }
    }

    /// Opens the file at `rel` (`/`-separated, relative to the layout root) for streaming.
    pub fn open(&self, rel: &str) -> Result<Box<dyn Read + Send>> {
        match self {
            LayoutRoot::Dir(d) => {
                let path = d.join(rel);
                let f = File::open(&path)
                    .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
                Ok(Box::new(f))
            }
            LayoutRoot::Archive(a) => a.open_member(rel),
        }
    }

    /// Reads the small file at `rel` (at most [`MAX_DOCUMENT`] bytes).
    pub fn read_small(&self, rel: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open(rel)?
            .take(MAX_DOCUMENT + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(format!("read {rel} in {}", self.label()), e))?;
        if buf.len() as u64 > MAX_DOCUMENT {
            return Err(Error::Image {
                image: self.label(),
                reason: format!("{rel} is larger than {MAX_DOCUMENT} bytes"),
            });
        }
        Ok(buf)
    }

    /// Whether the file `rel` exists.
    pub fn exists(&self, rel: &str) -> bool {
        match self {
            LayoutRoot::Dir(d) => d.join(rel).is_file(),
            LayoutRoot::Archive(a) => a.contains(rel),
        }
    }
}

/// One image in a layout.
#[derive(Clone, Debug)]
pub struct LayoutSource {
    /// Where the layout is.
    pub root: LayoutRoot,
    /// Tag to select (`None`: the only image).
    pub tag: Option<String>,
    /// The public name.
    pub name: ImageName,
}

/// `blobs/sha256/<hex>` of a digest.
pub fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

impl LayoutSource {
    /// Opens the layout directory `dir` for the image tagged `tag`, published as `name`.
    pub fn new(dir: &Path, tag: Option<String>, name: ImageName) -> LayoutSource {
        LayoutSource {
            root: LayoutRoot::Dir(dir.to_path_buf()),
            tag,
            name,
        }
    }

    fn read_blob(&self, blob: &BlobDescriptor, what: &str) -> Result<Vec<u8>> {
        let image = self.root.label();
        let bytes = self.root.read_small(&blob_path(&blob.digest))?;
        verify_digest(&image, what, &bytes, &blob.digest)?;
        Ok(bytes)
    }

    /// Reads the image's manifest(s) (through an index if needed) and config(s). Blocking.
    pub fn fetch(&self, filter: &PlatformFilter) -> Result<FetchedSet> {
        let image = self.root.label();
        let top = self.root.read_small("index.json")?;
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
        let bytes = self.read_blob(&chosen.descriptor, "manifest")?;
        resolve(&self.name, &image, bytes, filter, |d, what| {
            self.read_blob(d, what)
        })
    }

    /// Opens a layer blob.
    pub fn open_blob(&self, blob: &BlobDescriptor) -> Result<Box<dyn Read + Send>> {
        self.root.open(&blob_path(&blob.digest))
    }
}
