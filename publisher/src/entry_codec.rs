//! A compact binary form of one catalog row ([`catalog::Entry`], without its name), for the
//! scratch databases that layers are staged in while they are read ([`crate::staging`]).
//!
//! Layout (little endian): `mode u32, size u64, rdev u64, uid u32, gid u32, mtime i64,
//! mtime_ns u32 (u32::MAX = none), linkcount u32, hardlink_group u32, flags u32,
//! compressed u8, hash (u8 tag: 0 none, 1 + algorithm code; then 20 bytes), symlink
//! (u32 length + bytes), xattrs (u32 count; each u32 key length + key, u32 value length +
//! value), chunks (u32 count; each offset u64, size u64, hash tag + 20 bytes)`. The kind
//! is taken from the type bits of `mode` (they agree, [`catalog::Entry::validate`]).

use std::collections::BTreeMap;

use catalog::{Chunk, ContentHash, Entry, EntryKind, HashAlgorithm};

use crate::error::{Error, Result};

fn algorithm_code(a: HashAlgorithm) -> u8 {
    match a {
        HashAlgorithm::Sha1 => 0,
        HashAlgorithm::Rmd160 => 1,
        HashAlgorithm::Shake128 => 2,
    }
}

fn put_hash(out: &mut Vec<u8>, h: Option<&ContentHash>) {
    match h {
        None => out.push(0),
        Some(h) => {
            out.push(1 + algorithm_code(h.algorithm));
            out.extend_from_slice(&h.digest);
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Encodes `e` (its name is not stored).
pub fn encode(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + e.symlink.len() + 48 * e.chunks.len());
    out.extend_from_slice(&e.mode.to_le_bytes());
    out.extend_from_slice(&e.size.to_le_bytes());
    out.extend_from_slice(&e.rdev.to_le_bytes());
    out.extend_from_slice(&e.uid.to_le_bytes());
    out.extend_from_slice(&e.gid.to_le_bytes());
    out.extend_from_slice(&e.mtime.to_le_bytes());
    out.extend_from_slice(&e.mtime_ns.unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&e.linkcount.to_le_bytes());
    out.extend_from_slice(&e.hardlink_group.to_le_bytes());
    out.extend_from_slice(&e.flags.to_le_bytes());
    out.push(u8::from(e.compressed));
    put_hash(&mut out, e.hash.as_ref());
    put_bytes(&mut out, e.symlink.as_bytes());
    out.extend_from_slice(&(e.xattrs.len() as u32).to_le_bytes());
    for (k, v) in &e.xattrs {
        put_bytes(&mut out, k.as_bytes());
        put_bytes(&mut out, v);
    }
    out.extend_from_slice(&(e.chunks.len() as u32).to_le_bytes());
    for c in &e.chunks {
        out.extend_from_slice(&c.offset.to_le_bytes());
        out.extend_from_slice(&c.size.to_le_bytes());
        put_hash(&mut out, Some(&c.hash));
    }
    out
}

/// An undecodable row (the staging database fills in its file and path).
fn bad(reason: impl Into<String>) -> Error {
    Error::Staging {
        file: std::path::PathBuf::new(),
        path: String::new(),
        reason: reason.into(),
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("staged row is truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| bad("staged row holds a non-UTF-8 string"))
    }
    fn hash(&mut self) -> Result<Option<ContentHash>> {
        let tag = self.array::<1>()?[0];
        let algorithm = match tag {
            0 => return Ok(None),
            1 => HashAlgorithm::Sha1,
            2 => HashAlgorithm::Rmd160,
            3 => HashAlgorithm::Shake128,
            t => return Err(bad(format!("staged row has hash tag {t}"))),
        };
        Ok(Some(ContentHash {
            algorithm,
            digest: self.array()?,
        }))
    }
}

/// Decodes what [`encode`] wrote, naming the entry `name`.
///
/// Errors: [`Error::Staging`] (without file and path) if the bytes are not such an
/// encoding.
pub fn decode(name: &str, bytes: &[u8]) -> Result<Entry> {
    let mut c = Cursor(bytes);
    let mode = c.u32()?;
    let kind = EntryKind::from_mode(mode)
        .ok_or_else(|| bad(format!("staged row {name:?} has mode {mode:o}")))?;
    let size = c.u64()?;
    let rdev = c.u64()?;
    let uid = c.u32()?;
    let gid = c.u32()?;
    let mtime = c.u64()? as i64;
    let mtime_ns = Some(c.u32()?).filter(|n| *n != u32::MAX);
    let linkcount = c.u32()?;
    let hardlink_group = c.u32()?;
    let flags = c.u32()?;
    let compressed = c.array::<1>()?[0] != 0;
    let hash = c.hash()?;
    let symlink = c.string()?;
    let mut xattrs = BTreeMap::new();
    for _ in 0..c.u32()? {
        let k = c.string()?;
        xattrs.insert(k, c.bytes()?.to_vec());
    }
    let n = c.u32()?;
    let mut chunks = Vec::with_capacity(n.min(1 << 16) as usize);
    for _ in 0..n {
        let offset = c.u64()?;
        let size = c.u64()?;
        let hash = c
            .hash()?
            .ok_or_else(|| bad(format!("staged chunk of {name:?} has no hash")))?;
        chunks.push(Chunk { offset, size, hash });
    }
    Ok(Entry {
        name: name.to_string(),
        kind,
        mode,
        size,
        rdev,
        uid,
        gid,
        mtime,
        mtime_ns,
        hash,
        compressed,
        symlink,
        linkcount,
        hardlink_group,
        xattrs,
        chunks,
        flags,
        rowid: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{dir_entry, file_entry, special_entry, symlink_entry};

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
        for e in [
            f,
            chunked,
            dir_entry("d", 0o1777, 1, 2, 3),
            symlink_entry("l", "../t", 0, 0, 0),
            special_entry("tty", EntryKind::CharDevice, 0o600, 0x501),
        ] {
            assert_eq!(decode(&e.name, &encode(&e)).ok(), Some(e));
        }
        assert!(decode("x", &[1, 2, 3]).is_err());
    }
}
