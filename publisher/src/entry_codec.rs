//! A compact binary form of one staged row ([`StagedEntry`]: a catalog row and its pending
//! content), for the scratch databases that layers are staged in while they are read
//! ([`crate::staging`]).
//!
//! The row's serde form (the `catalog` crate's `serde` feature) in postcard: integers as
//! varints, strings and byte strings length-prefixed. Scratch data only: it is written
//! and read by the same build, so the layout needs no versioning.

use crate::error::{Error, Result};
use crate::staging::StagedEntry;

/// An undecodable row (the staging database fills in its file and path).
fn bad(reason: impl Into<String>) -> Error {
    Error::Staging {
        file: std::path::PathBuf::new(),
        path: String::new(),
        reason: reason.into(),
    }
}

/// Encodes `e`.
///
/// Errors: [`Error::Staging`] (without file and path) if postcard cannot encode it, which
/// an in-memory row does not cause.
pub fn encode(e: &StagedEntry) -> Result<Vec<u8>> {
    postcard::to_allocvec(e).map_err(|err| bad(format!("cannot encode the row: {err}")))
}

/// Decodes what [`encode`] wrote for the entry named `name`.
///
/// Errors: [`Error::Staging`] (without file and path) if the bytes are not such an
/// encoding, or are the row of another name.
pub fn decode(name: &str, bytes: &[u8]) -> Result<StagedEntry> {
    let staged: StagedEntry = postcard::from_bytes(bytes).map_err(|err| match err {
        postcard::Error::DeserializeUnexpectedEnd => bad("staged row is truncated"),
        err => bad(format!("staged row is not a row: {err}")),
    })?;
    if staged.entry().name != name {
        return Err(bad(format!(
            "staged row under {name:?} holds the entry {:?}",
            staged.entry().name
        )));
    }
    Ok(staged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{JobId, PendingChunk, PendingContent};
    use crate::tree::{dir_entry, file_entry, special_entry, symlink_entry};
    use catalog::{Chunk, ContentHash, EntryKind, HashAlgorithm};

    #[test]
    fn every_field_survives() {
        let h = |b: &[u8]| ContentHash::of_bytes(HashAlgorithm::Sha1, b);
        let mut f = file_entry("f", 0o4755, 7, 8, -5, 3, h(b"x"));
        f.mtime_ns = Some(12);
        f.hardlink_group = 3;
        f.linkcount = 2;
        f.xattrs.insert("user.a".into(), vec![0, 1, 255]);
        let mut chunked = file_entry("c", 0o644, 0, 0, 1 << 40, 10, h(b"y"));
        chunked.hash = None;
        chunked.chunks = vec![
            Chunk {
                offset: 0,
                size: 4,
                hash: h(b"a"),
            },
            Chunk {
                offset: 4,
                size: 6,
                hash: h(b"b"),
            },
        ];
        let pending_whole = StagedEntry::pending(
            file_entry("p", 0o600, 0, 0, 0, 3, h(b"z")),
            PendingContent::Whole(JobId(9)),
        );
        let pending_chunks = StagedEntry::pending(
            file_entry("q", 0o600, 0, 0, 0, 10, h(b"z")),
            PendingContent::Chunked(vec![
                PendingChunk {
                    offset: 0,
                    size: 4,
                    job: JobId(1),
                },
                PendingChunk {
                    offset: 4,
                    size: 6,
                    job: JobId(u64::MAX),
                },
            ]),
        );
        for e in [
            StagedEntry::new(f),
            StagedEntry::new(chunked),
            StagedEntry::new(dir_entry("d", 0o1777, 1, 2, 3)),
            StagedEntry::new(symlink_entry("l", "../t", 0, 0, 0)),
            StagedEntry::new(special_entry("tty", EntryKind::CharDevice, 0o600, 0x501)),
            pending_whole,
            pending_chunks,
        ] {
            let bytes = encode(&e).unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(decode(&e.entry().name, &bytes).ok(), Some(e));
        }
        assert!(decode("x", &[1, 2, 3]).is_err());
        let d = StagedEntry::new(dir_entry("d", 0o755, 0, 0, 0));
        let bytes = encode(&d).unwrap_or_else(|err| panic!("{err}"));
        assert!(decode("other", &bytes).is_err());
        assert!(decode("d", &bytes[..bytes.len() - 1]).is_err());
    }
}
