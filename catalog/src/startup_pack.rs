//! Startup packs (docs/format.md §13): many content objects back to back in one file, so
//! that a client far from the server fetches an image's startup working set with a few
//! plain GETs instead of one round trip per object.
//!
//! A pack is Strata's own file type, published as an ordinary regular file of the catalog
//! (stored uncompressed: its members are already compressed), so that stock clients see a
//! file, stock replication copies it and stock garbage collection keeps it while a catalog
//! references it. Its bytes:
//!
//! ```text
//! strata startup pack 1\n
//! objects <N>\n
//! <hash hex> <C|P|-> <1|0> <stored size> <raw size>\n    N lines, one per member
//! \n
//! <stored bytes of member 1><stored bytes of member 2>…
//! ```
//!
//! A member line names the object (`ContentHash::to_hex`, with its algorithm suffix), its
//! kind (`C` a catalog the start loads, `P` a chunk, `-` a whole file), whether it is zlib-compressed, the length of its
//! stored bytes (exactly as under `data/`) and the length of its content. The data area is
//! exactly the sum of the stored sizes. A reader trusts nothing in a pack: each member is
//! verified against its own hash (and its size) before use, as if it had been fetched
//! alone.

use crate::error::{Error, Result};
use crate::hash::{ContentHash, Suffix};

/// First line of every pack.
pub const MAGIC: &str = "strata startup pack 1";

/// Members per pack at most (a reader refuses more).
pub const MAX_MEMBERS: usize = 1 << 20;

/// One object in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackMember {
    /// The object's content hash (of its stored bytes).
    pub hash: ContentHash,
    /// [`Suffix::None`] (a whole file), [`Suffix::Partial`] (a chunk) or
    /// [`Suffix::Catalog`] (a nested catalog).
    pub suffix: Suffix,
    /// Whether the stored bytes are a zlib stream.
    pub compressed: bool,
    /// Length of the stored bytes.
    pub stored_size: u64,
    /// Length of the content (the inflated bytes).
    pub raw_size: u64,
}

/// Builds a pack from members added in order.
#[derive(Default)]
pub struct PackBuilder {
    members: Vec<PackMember>,
    data: Vec<u8>,
}

impl PackBuilder {
    /// An empty pack.
    pub fn new() -> PackBuilder {
        PackBuilder::default()
    }

    /// Appends a member with its stored bytes.
    ///
    /// # Errors
    /// [`Error::InvalidPack`] if `stored` is not `member.stored_size` bytes long or the
    /// suffix is not a file, chunk or catalog.
    pub fn push(&mut self, member: PackMember, stored: &[u8]) -> Result<()> {
        if stored.len() as u64 != member.stored_size {
            return Err(Error::InvalidPack(format!(
                "member {} has {} stored bytes, not {}",
                member.hash.to_hex(),
                stored.len(),
                member.stored_size
            )));
        }
        suffix_letter(member.suffix)?;
        self.members.push(member);
        self.data.extend_from_slice(stored);
        Ok(())
    }

    /// Members so far.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no member was added.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Stored bytes of the members so far (the data area).
    pub fn data_len(&self) -> u64 {
        self.data.len() as u64
    }

    /// The pack's bytes.
    pub fn finish(self) -> Vec<u8> {
        let mut head = format!("{MAGIC}\nobjects {}\n", self.members.len());
        for m in &self.members {
            // Only file, chunk and catalog suffixes get in (checked by `push`).
            let kind = suffix_letter(m.suffix).unwrap_or('-');
            head.push_str(&format!(
                "{} {kind} {} {} {}\n",
                m.hash.to_hex(),
                u8::from(m.compressed),
                m.stored_size,
                m.raw_size
            ));
        }
        head.push('\n');
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.data);
        out
    }
}

fn suffix_letter(suffix: Suffix) -> Result<char> {
    match suffix {
        Suffix::None => Ok('-'),
        Suffix::Partial => Ok('P'),
        Suffix::Catalog => Ok('C'),
        other => Err(Error::InvalidPack(format!(
            "only files, chunks and catalogs go into a pack, not objects with suffix {:?}",
            other.letter()
        ))),
    }
}

/// A parsed pack: its members and where their stored bytes are.
#[derive(Debug)]
pub struct StartupPack<'a> {
    members: Vec<PackMember>,
    offsets: Vec<usize>,
    data: &'a [u8],
}

impl<'a> StartupPack<'a> {
    /// Parses `bytes` (the whole pack). Checks the structure only; members are verified
    /// by whoever uses them.
    ///
    /// # Errors
    /// [`Error::InvalidPack`] naming what is wrong: another magic, a malformed member line,
    /// more than [`MAX_MEMBERS`] members, or a data area that is not exactly the sum of the
    /// stored sizes.
    pub fn parse(bytes: &'a [u8]) -> Result<StartupPack<'a>> {
        let bad = |what: String| Error::InvalidPack(what);
        let mut rest = bytes;
        let mut line = || -> Result<&'a str> {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or_else(|| bad("the header ends before its blank line".into()))?;
            let text = std::str::from_utf8(&rest[..end])
                .map_err(|_| bad("the header is not UTF-8".into()))?;
            rest = &rest[end + 1..];
            Ok(text)
        };
        let magic = line()?;
        if magic != MAGIC {
            return Err(bad(format!("not a startup pack (first line {magic:?})")));
        }
        let count = line()?
            .strip_prefix("objects ")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| bad("second line is not `objects <N>`".into()))?;
        if count > MAX_MEMBERS {
            return Err(bad(format!(
                "{count} members (at most {MAX_MEMBERS} are read)"
            )));
        }
        let mut members = Vec::with_capacity(count);
        for i in 0..count {
            let text = line()?;
            members.push(parse_member(text).map_err(|why| bad(format!("member {i}: {why}")))?);
        }
        if !line()?.is_empty() {
            return Err(bad(format!("no blank line after the {count} member lines")));
        }
        let data = rest;
        let mut offsets = Vec::with_capacity(count);
        let mut at: u64 = 0;
        for m in &members {
            offsets.push(at as usize);
            at = at
                .checked_add(m.stored_size)
                .ok_or_else(|| bad("stored sizes overflow".into()))?;
        }
        if at != data.len() as u64 {
            return Err(bad(format!(
                "the members' stored sizes add up to {at} bytes but the data area holds {}",
                data.len()
            )));
        }
        Ok(StartupPack {
            members,
            offsets,
            data,
        })
    }

    /// The members, in pack order.
    pub fn members(&self) -> &[PackMember] {
        &self.members
    }

    /// The stored bytes of member `i` (unverified); `None` past the end.
    pub fn stored(&self, i: usize) -> Option<&'a [u8]> {
        let m = self.members.get(i)?;
        let start = *self.offsets.get(i)?;
        self.data.get(start..start + m.stored_size as usize)
    }
}

fn parse_member(text: &str) -> std::result::Result<PackMember, String> {
    let fields: Vec<&str> = text.split(' ').collect();
    let [hash, kind, compressed, stored, raw] = fields[..] else {
        return Err(format!("{text:?} does not have 5 fields"));
    };
    let hash = ContentHash::parse_hex(hash).map_err(|e| e.to_string())?;
    let suffix = match kind {
        "-" => Suffix::None,
        "P" => Suffix::Partial,
        "C" => Suffix::Catalog,
        other => return Err(format!("kind {other:?} is not `-`, `P` or `C`")),
    };
    let compressed = match compressed {
        "1" => true,
        "0" => false,
        other => return Err(format!("compression flag {other:?} is neither 0 nor 1")),
    };
    let number = |what: &str, s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{what} {s:?} is not a decimal number"));
        }
        s.parse::<u64>().map_err(|e| format!("{what} {s:?}: {e}"))
    };
    Ok(PackMember {
        hash,
        suffix,
        compressed,
        stored_size: number("stored size", stored)?,
        raw_size: number("raw size", raw)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HashAlgorithm;

    fn member(raw: &[u8], suffix: Suffix) -> (PackMember, Vec<u8>) {
        let stored = crate::compress(raw);
        (
            PackMember {
                hash: ContentHash::of_bytes(HashAlgorithm::Sha1, &stored),
                suffix,
                compressed: true,
                stored_size: stored.len() as u64,
                raw_size: raw.len() as u64,
            },
            stored,
        )
    }

    fn three_member_pack() -> (Vec<u8>, Vec<(PackMember, Vec<u8>)>) {
        let members = vec![
            member(b"hello, world\n", Suffix::None),
            member(&[7u8; 5000], Suffix::Partial),
            member(b"SQLite format 3\0", Suffix::Catalog),
        ];
        let mut b = PackBuilder::new();
        for (m, s) in &members {
            b.push(*m, s).expect("push");
        }
        (b.finish(), members)
    }

    #[test]
    fn round_trip_keeps_order_and_bytes() -> Result<()> {
        let (bytes, members) = three_member_pack();
        let pack = StartupPack::parse(&bytes)?;
        assert_eq!(pack.members().len(), 3);
        for (i, (m, stored)) in members.iter().enumerate() {
            assert_eq!(&pack.members()[i], m);
            assert_eq!(pack.stored(i), Some(&stored[..]));
        }
        assert_eq!(pack.stored(3), None);
        let text = String::from_utf8_lossy(&bytes[..60]).to_string();
        assert!(
            text.starts_with("strata startup pack 1\nobjects 3\n"),
            "{text}"
        );
        Ok(())
    }

    #[test]
    fn the_format_test_vector() -> Result<()> {
        // docs/format.md §13.3
        let (m, stored) = member(b"hello, world\n", Suffix::None);
        assert_eq!(m.hash.to_hex(), "2605a7c5375c7887e3ea435d1b2a8af15ad0534f");
        let mut b = PackBuilder::new();
        b.push(m, &stored)?;
        let bytes = b.finish();
        let head = "strata startup pack 1\nobjects 1\n\
                    2605a7c5375c7887e3ea435d1b2a8af15ad0534f - 1 21 13\n\n";
        assert_eq!(&bytes[..head.len()], head.as_bytes());
        assert_eq!(bytes.len(), head.len() + 21);
        Ok(())
    }

    #[test]
    fn an_empty_pack_parses() -> Result<()> {
        let bytes = PackBuilder::new().finish();
        assert_eq!(bytes, b"strata startup pack 1\nobjects 0\n\n");
        assert!(StartupPack::parse(&bytes)?.members().is_empty());
        Ok(())
    }

    #[test]
    fn malformed_packs_are_refused_with_the_reason() {
        let (good, _) = three_member_pack();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not a pack\n".to_vec(), "not a startup pack"),
            (good[..good.len() - 1].to_vec(), "add up to"),
            ([&good[..], b"x"].concat(), "add up to"),
            (
                b"strata startup pack 1\nobjects 1\n\n".to_vec(),
                "does not have 5 fields",
            ),
            (
                b"strata startup pack 1\nobjects x\n\n".to_vec(),
                "objects <N>",
            ),
            (
                b"strata startup pack 1\nobjects 0\nextra\n".to_vec(),
                "no blank line",
            ),
            (b"strata startup pack 1\nobjects 0".to_vec(), "ends before"),
            (
                format!(
                    "strata startup pack 1\nobjects 1\n{} X 1 1 1\n\nx",
                    "0".repeat(40)
                )
                .into_bytes(),
                "not `-`, `P` or `C`",
            ),
            (
                format!(
                    "strata startup pack 1\nobjects 1\n{} - 1 +1 1\n\nx",
                    "0".repeat(40)
                )
                .into_bytes(),
                "not a decimal",
            ),
            (
                format!("strata startup pack 1\nobjects {}\n\n", MAX_MEMBERS + 1).into_bytes(),
                "at most",
            ),
        ];
        for (bytes, why) in cases {
            match StartupPack::parse(&bytes) {
                Err(Error::InvalidPack(msg)) => assert!(msg.contains(why), "{msg:?} for {why:?}"),
                other => panic!("expected InvalidPack({why}), got {other:?}"),
            }
        }
    }

    #[test]
    fn builder_refuses_wrong_lengths_and_kinds() {
        let (m, stored) = member(b"x", Suffix::None);
        let mut b = PackBuilder::new();
        assert!(b.push(m, &stored[1..]).is_err());
        let certificate = PackMember {
            suffix: Suffix::Certificate,
            ..m
        };
        assert!(b.push(certificate, &stored).is_err());
        assert!(b.is_empty());
    }
}
