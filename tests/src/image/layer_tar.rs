//! Hand-made layer tarballs: the whiteout layer of the test image and a malicious layer
//! whose entry escapes the layer root.
//!
//! Whiteout conventions are those of the OCI image spec (`layer.md`, "Whiteouts"): an empty
//! file `.wh.<name>` deletes `<name>` of the lower layers; `<dir>/.wh..wh..opq` makes `<dir>`
//! opaque (hides everything the lower layers have in it).

use tar::{Builder, EntryType, Header};

use crate::error::{Result, io_context};

/// Fixed mtime of hand-made entries (2023-11-14T22:13:20Z), so the tarball is reproducible.
const MTIME: u64 = 1_700_000_000;

/// What a layer should contain, in tar order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A directory, mode 0755, owned by root.
    Dir(String),
    /// A regular file, mode 0644, owned by root.
    File(String, Vec<u8>),
}

impl Item {
    /// A directory entry `path` (relative, `/`-separated).
    pub fn dir(path: &str) -> Item {
        Item::Dir(path.to_owned())
    }

    /// A regular file `path` holding `data`.
    pub fn file(path: &str, data: &[u8]) -> Item {
        Item::File(path.to_owned(), data.to_vec())
    }
}

/// The tar bytes (uncompressed, GNU headers) of `items`.
pub fn build(items: &[Item]) -> Result<Vec<u8>> {
    let mut builder = Builder::new(Vec::new());
    for item in items {
        let mut header = Header::new_gnu();
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        let (path, data): (&str, &[u8]) = match item {
            Item::Dir(path) => {
                header.set_entry_type(EntryType::Directory);
                header.set_mode(0o755);
                (path.as_str(), &[])
            }
            Item::File(path, data) => {
                header.set_entry_type(EntryType::Regular);
                header.set_mode(0o644);
                (path.as_str(), data.as_slice())
            }
        };
        header.set_size(data.len() as u64);
        builder
            .append_data(&mut header, path, data)
            .map_err(io_context(format!("add {path} to a layer tarball")))?;
    }
    builder
        .into_inner()
        .map_err(io_context("finish a layer tarball"))
}

/// A tarball with a regular file `ok.txt` and then a regular file named literally
/// `name` (e.g. `../evil`), written into the header without the path checks that
/// [`tar::Builder::append_data`] applies: the kind of layer a publisher must refuse.
pub fn escaping(name: &str) -> Result<Vec<u8>> {
    let mut builder = Builder::new(Vec::new());
    let ok = b"fine\n";
    let mut header = regular_header(ok.len());
    builder
        .append_data(&mut header, "ok.txt", &ok[..])
        .map_err(io_context("add ok.txt"))?;

    let payload = b"escaped the layer root\n";
    let mut header = regular_header(payload.len());
    let raw = &mut header.as_old_mut().name;
    let bytes = name.as_bytes();
    let n = bytes.len().min(raw.len());
    raw[..n].copy_from_slice(&bytes[..n]);
    header.set_cksum();
    builder
        .append(&header, &payload[..])
        .map_err(io_context(format!("add {name}")))?;
    builder
        .into_inner()
        .map_err(io_context("finish the escaping tarball"))
}

/// A GNU header for a regular file of `size` bytes, mode 0644, root-owned, fixed mtime.
fn regular_header(size: usize) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::Regular);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_size(size as u64);
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(bytes: &[u8]) -> Vec<(String, EntryType, u64)> {
        let mut archive = tar::Archive::new(bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                (name, e.header().entry_type(), e.header().size().unwrap())
            })
            .collect()
    }

    #[test]
    fn builds_whiteouts_and_opaque_markers() {
        let bytes = build(&[
            Item::dir("etc"),
            Item::file("etc/.wh.issue.net", b""),
            Item::dir("etc/o"),
            Item::file("etc/o/.wh..wh..opq", b""),
            Item::file("etc/o/new.txt", b"new\n"),
        ])
        .unwrap();
        assert_eq!(
            names(&bytes),
            vec![
                ("etc".into(), EntryType::Directory, 0),
                ("etc/.wh.issue.net".into(), EntryType::Regular, 0),
                ("etc/o".into(), EntryType::Directory, 0),
                ("etc/o/.wh..wh..opq".into(), EntryType::Regular, 0),
                ("etc/o/new.txt".into(), EntryType::Regular, 4),
            ]
        );
    }

    #[test]
    fn escaping_entry_is_written_verbatim() {
        let bytes = escaping("../evil").unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        for entry in archive.entries().unwrap() {
            let header = entry.unwrap().header().clone();
            assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
            assert_eq!(header.mtime().unwrap(), MTIME);
        }
        let entries = names(&bytes);
        assert_eq!(entries[0].0, "ok.txt");
        assert_eq!(entries[1].0, "../evil");
    }
}
