//! Sparse files in layer tars: the PAX forms GNU tar writes with `--sparse --format=posix`
//! (formats 0.0, 0.1 and 1.0), read the way Go's `archive/tar` reads them, since that is
//! what containerd (and umoci, buildkit, docker) unpack with. Old-GNU type `S` entries are
//! expanded by the `tar` crate itself.
//!
//! A sparse entry stores only its data segments, back to back; the map says where each
//! segment goes in the real file, and everything else is a hole that reads as zeros:
//!
//! * **0.0**: PAX records `GNU.sparse.size` (real size), `GNU.sparse.numblocks`, then one
//!   `GNU.sparse.offset` / `GNU.sparse.numbytes` pair per segment, in order;
//! * **0.1**: `GNU.sparse.size`, `GNU.sparse.numblocks`, and `GNU.sparse.map` =
//!   `offset,size,offset,size,…`;
//! * **1.0** (`GNU.sparse.major=1`, `GNU.sparse.minor=0`): `GNU.sparse.realsize` and
//!   `GNU.sparse.name`; the map is at the start of the entry's data, decimal numbers each
//!   ended by a newline (the number of segments, then an offset and a size per segment),
//!   padded with zeros to a 512-byte block, followed by the segments.
//!
//! The real name is `GNU.sparse.name` when present (GNU tar's header name is then a
//! `GNUSparseFile.<pid>/<name>` placeholder); otherwise the entry keeps its header name, as
//! Go's reader does. A map whose segments are out of order, overlap or run past the real
//! size is an error naming the entry, as it is for containerd.

use std::io::Read;

/// A PAX record key prefix of GNU sparse files.
pub const PAX_PREFIX: &str = "GNU.sparse.";
/// The record holding a sparse file's real name (formats 0.1 and 1.0).
pub const NAME_KEY: &str = "GNU.sparse.name";

/// Size of a tar block; the 1.0 map is padded to it.
const BLOCK: usize = 512;

/// Bytes a 1.0 map may take at most (Go's reader refuses longer ones, `errSparseTooLong`).
const MAX_MAP_BYTES: usize = 1024 * 1024;

/// The GNU sparse PAX records of one entry, gathered while its records are read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SparseRecords {
    major: Option<String>,
    minor: Option<String>,
    name: Option<String>,
    size: Option<String>,
    realsize: Option<String>,
    map: Option<String>,
    /// 0.0's repeated `offset` and `numbytes` records, in order.
    pairs: Vec<String>,
}

/// Where a sparse file's map is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapLocation {
    /// In the PAX records (0.0, 0.1): the segments.
    Records(Vec<Segment>),
    /// At the start of the entry's data (1.0).
    Data,
}

/// What the records say about a sparse entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseHeader {
    /// The real name, when the records give one.
    pub name: Option<String>,
    /// The real size; `None` when no record gives it (the entry's header size stands, as
    /// in Go's reader).
    pub size: Option<u64>,
    /// The map, or where to find it.
    pub map: MapLocation,
}

/// One data segment: `len` bytes of the stored data go at `offset` of the real file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Where in the real file.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
}

impl SparseRecords {
    /// Takes one PAX record; returns false if it is not a GNU sparse record.
    pub fn take(&mut self, key: &str, value: &str) -> bool {
        let Some(field) = key.strip_prefix(PAX_PREFIX) else {
            return false;
        };
        let value = value.to_string();
        match field {
            "major" => self.major = Some(value),
            "minor" => self.minor = Some(value),
            "name" => self.name = Some(value),
            "size" => self.size = Some(value),
            "realsize" => self.realsize = Some(value),
            "map" => self.map = Some(value),
            "offset" | "numbytes" => self.pairs.push(value),
            // numblocks is implied by the map.
            _ => {}
        }
        true
    }

    /// The sparse header these records make, `None` if they do not make the entry a sparse
    /// file (no records, or a version Go's reader does not know, which it reads as a
    /// plain file).
    ///
    /// # Errors
    /// A number that does not parse, or a map that is malformed or does not fit the size.
    pub fn header(&self) -> Result<Option<SparseHeader>, String> {
        // An empty map record alone does not make a sparse file (Go's reader).
        let map_in_records =
            self.map.as_deref().is_some_and(|m| !m.is_empty()) || !self.pairs.is_empty();
        let is_1x0 = match (self.major.as_deref(), self.minor.as_deref()) {
            (Some("0"), Some("0" | "1")) => false,
            (Some("1"), Some("0")) => true,
            (Some(_), _) | (_, Some(_)) => return Ok(None),
            (None, None) if map_in_records => false,
            (None, None) => return Ok(None),
        };
        let size = self
            .size
            .as_deref()
            .filter(|s| !s.is_empty())
            .or(self.realsize.as_deref())
            .map(|s| parse_number(s, "sparse file size"))
            .transpose()?;
        let name = self.name.clone().filter(|n| !n.is_empty());
        let map = if is_1x0 {
            MapLocation::Data
        } else {
            // 0.0's repeated records first, as Go's reader takes them.
            let numbers: Vec<&str> = if self.pairs.is_empty() {
                match &self.map {
                    Some(map) if !map.is_empty() => map.split(',').collect(),
                    _ => Vec::new(),
                }
            } else {
                self.pairs.iter().map(String::as_str).collect()
            };
            MapLocation::Records(segments_of(&numbers)?)
        };
        Ok(Some(SparseHeader { name, size, map }))
    }
}

/// Reads the 1.0 map at the start of `data`, consuming its padded blocks: the segments
/// and the bytes the map took.
///
/// # Errors
/// An I/O error, or a malformed map (longer than 1 MiB, as Go's reader refuses too).
pub fn read_map_1x0<R: Read>(data: &mut R) -> Result<(Vec<Segment>, u64), String> {
    let mut block = vec![0u8; BLOCK];
    let mut pending: Vec<u8> = Vec::new();
    let mut numbers: Vec<u64> = Vec::new();
    let mut consumed = 0usize;
    let done = |numbers: &Vec<u64>| {
        numbers
            .first()
            .is_some_and(|&n| numbers.len() as u64 == 1 + 2 * n)
    };
    while !done(&numbers) {
        if consumed >= MAX_MAP_BYTES {
            return Err("sparse map longer than 1 MiB".into());
        }
        data.read_exact(&mut block)
            .map_err(|e| format!("reading the sparse map: {e}"))?;
        consumed += BLOCK;
        for &b in &block {
            if done(&numbers) {
                break;
            }
            if b == b'\n' {
                let text = std::str::from_utf8(&pending).map_err(|_| "sparse map is not text")?;
                numbers.push(parse_number(text, "sparse map entry")?);
                pending.clear();
            } else {
                if pending.len() > 20 {
                    return Err("sparse map entry is not a number".into());
                }
                pending.push(b);
            }
        }
    }
    let segments = numbers[1..]
        .chunks(2)
        .map(|p| Segment {
            offset: p[0],
            len: p[1],
        })
        .collect();
    Ok((segments, consumed as u64))
}

/// Checks `segments` against the real `size` and the `stored` bytes that hold them: in
/// order, not overlapping, inside the real size, and covering exactly the stored data
/// (Go's reader refuses a map past the size and stored data no segment takes,
/// `errUnrefData`).
///
/// # Errors
/// The first fault, in words.
pub fn check(segments: &[Segment], size: u64, stored: u64) -> Result<(), String> {
    validate(segments, size)?;
    let mapped = segments
        .iter()
        .try_fold(0u64, |sum, s| sum.checked_add(s.len))
        .ok_or("sparse map segments overflow")?;
    if mapped != stored {
        return Err(format!(
            "sparse map covers {mapped} bytes but the entry stores {stored}"
        ));
    }
    Ok(())
}

fn parse_number(text: &str, what: &str) -> Result<u64, String> {
    // Digits only, as Go's strconv.ParseInt takes them (no sign, no blanks).
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} {text:?} is not a number"));
    }
    text.parse::<u64>()
        .map_err(|_| format!("{what} {text:?} is not a number"))
}

fn segments_of(numbers: &[&str]) -> Result<Vec<Segment>, String> {
    if !numbers.len().is_multiple_of(2) {
        return Err("sparse map has an odd number of entries".into());
    }
    numbers
        .chunks(2)
        .map(|p| {
            Ok(Segment {
                offset: parse_number(p[0], "sparse map offset")?,
                len: parse_number(p[1], "sparse map size")?,
            })
        })
        .collect()
}

/// Segments in order, not overlapping, inside the real size (Go's `validateSparseEntries`).
fn validate(segments: &[Segment], size: u64) -> Result<(), String> {
    let mut end = 0u64;
    for s in segments {
        let seg_end = s
            .offset
            .checked_add(s.len)
            .ok_or("sparse map segment overflows")?;
        if s.offset < end || seg_end > size {
            return Err(format!(
                "sparse map segment at {} of {} bytes is out of order or past the real size {size}",
                s.offset, s.len
            ));
        }
        end = seg_end;
    }
    Ok(())
}

/// The real file of a sparse entry: the stored segments put at their offsets, zeros
/// between them and after the last up to the real size.
pub struct Expanded<R> {
    data: R,
    segments: std::vec::IntoIter<Segment>,
    current: Option<Segment>,
    pos: u64,
    size: u64,
}

impl<R: Read> Expanded<R> {
    /// Expands `data` (the segments back to back, map already consumed) by `segments`.
    pub fn new(data: R, segments: Vec<Segment>, size: u64) -> Expanded<R> {
        let mut segments = segments.into_iter();
        let current = segments.next();
        Expanded {
            data,
            segments,
            current,
            pos: 0,
            size,
        }
    }
}

impl<R: Read> Read for Expanded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if buf.is_empty() || self.pos >= self.size {
                return Ok(0);
            }
            let want = buf.len() as u64;
            match self.current {
                // A hole before the next segment, or after the last one.
                Some(seg) if self.pos < seg.offset => {
                    let n = want.min(seg.offset - self.pos) as usize;
                    buf[..n].fill(0);
                    self.pos += n as u64;
                    return Ok(n);
                }
                Some(seg) if self.pos < seg.offset + seg.len => {
                    let n = want.min(seg.offset + seg.len - self.pos) as usize;
                    let got = self.data.read(&mut buf[..n])?;
                    if got == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "sparse file data shorter than its map",
                        ));
                    }
                    self.pos += got as u64;
                    return Ok(got);
                }
                Some(_) => self.current = self.segments.next(),
                None => {
                    let n = want.min(self.size - self.pos) as usize;
                    buf[..n].fill(0);
                    self.pos += n as u64;
                    return Ok(n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(pairs: &[(&str, &str)]) -> SparseRecords {
        let mut r = SparseRecords::default();
        for (k, v) in pairs {
            assert!(r.take(k, v));
        }
        r
    }

    fn expand(data: &[u8], segments: Vec<Segment>, size: u64) -> Vec<u8> {
        let mut out = Vec::new();
        Expanded::new(data, segments, size)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn seg(offset: u64, len: u64) -> Segment {
        Segment { offset, len }
    }

    #[test]
    fn format_0_0_pairs_and_0_1_map_give_the_same_segments() {
        let h0 = records(&[
            ("GNU.sparse.size", "10000"),
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.offset", "0"),
            ("GNU.sparse.numbytes", "3"),
            ("GNU.sparse.offset", "8000"),
            ("GNU.sparse.numbytes", "5"),
        ])
        .header()
        .unwrap()
        .unwrap();
        let h1 = records(&[
            ("GNU.sparse.major", "0"),
            ("GNU.sparse.minor", "1"),
            ("GNU.sparse.name", "dir/real"),
            ("GNU.sparse.size", "10000"),
            ("GNU.sparse.map", "0,3,8000,5"),
        ])
        .header()
        .unwrap()
        .unwrap();
        assert_eq!(h0.map, MapLocation::Records(vec![seg(0, 3), seg(8000, 5)]));
        assert_eq!(h0.map, h1.map);
        assert_eq!((h0.size, h0.name), (Some(10000), None));
        assert_eq!(h1.name.as_deref(), Some("dir/real"));
    }

    #[test]
    fn format_1_0_reads_its_map_from_the_data() {
        let h = records(&[
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.name", "big"),
            ("GNU.sparse.realsize", "1048576"),
        ])
        .header()
        .unwrap()
        .unwrap();
        assert_eq!(h.map, MapLocation::Data);
        let mut data = b"2\n0\n4\n1048570\n6\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"abcdEFGHIJ");
        let mut r = &data[..];
        let (segments, map_bytes) = read_map_1x0(&mut r).unwrap();
        assert_eq!(segments, vec![seg(0, 4), seg(1048570, 6)]);
        assert_eq!(map_bytes, 512);
        let size = h.size.unwrap();
        check(&segments, size, data.len() as u64 - map_bytes).unwrap();
        let out = expand(r, segments, size);
        assert_eq!(out.len(), 1048576);
        assert_eq!(&out[..4], b"abcd");
        assert!(out[4..1048570].iter().all(|&b| b == 0));
        assert_eq!(&out[1048570..], b"EFGHIJ");
    }

    #[test]
    fn a_map_past_its_first_block_is_read_whole() {
        let mut text = String::from("100\n");
        for i in 0..100u64 {
            text.push_str(&format!("{}\n1\n", i * 1000));
        }
        assert!(text.len() > 512);
        let mut data = text.into_bytes();
        data.resize(data.len().div_ceil(512) * 512, 0);
        data.extend(std::iter::repeat_n(b'x', 100));
        let mut r = &data[..];
        let (segments, map_bytes) = read_map_1x0(&mut r).unwrap();
        assert_eq!(segments.len(), 100);
        assert_eq!(map_bytes, 1024);
        let out = expand(r, segments, 100_000);
        assert_eq!(out.iter().filter(|&&b| b == b'x').count(), 100);
        assert_eq!(out[99_000], b'x');
    }

    #[test]
    fn holes_at_the_end_and_an_empty_map_read_as_zeros() {
        assert_eq!(expand(b"ab", vec![seg(2, 2)], 7), b"\0\0ab\0\0\0");
        assert_eq!(expand(b"", vec![], 5), vec![0u8; 5]);
        let h = records(&[
            ("GNU.sparse.major", "0"),
            ("GNU.sparse.minor", "1"),
            ("GNU.sparse.size", "5"),
            ("GNU.sparse.map", ""),
        ])
        .header()
        .unwrap()
        .unwrap();
        assert_eq!(h.map, MapLocation::Records(vec![]));
        // Without a version, an empty map is no sparse file (Go's reader).
        let plain = records(&[("GNU.sparse.size", "5"), ("GNU.sparse.map", "")]);
        assert_eq!(plain.header().unwrap(), None);
    }

    #[test]
    fn bad_maps_are_errors_and_unknown_versions_are_plain_files() {
        let map = |m: &str| {
            let h = records(&[("GNU.sparse.size", "10"), ("GNU.sparse.map", m)])
                .header()
                .unwrap()
                .unwrap();
            match h.map {
                MapLocation::Records(segments) => segments,
                MapLocation::Data => panic!("0.x map in the data"),
            }
        };
        let bad = |m: &str, stored: u64| check(&map(m), 10, stored).unwrap_err();
        assert!(bad("0,5,3,2", 7).contains("order"));
        assert!(bad("8,5", 5).contains("past"));
        // Stored data no segment takes (Go: "sparse file contains unreferenced data").
        assert!(bad("0,3", 20).contains("covers 3 bytes but the entry stores 20"));
        check(&map("0,3,8,2"), 10, 5).unwrap();
        let header_error = |pairs: &[(&str, &str)]| records(pairs).header().unwrap_err();
        assert!(
            header_error(&[("GNU.sparse.size", "10"), ("GNU.sparse.map", "0,1,2")]).contains("odd")
        );
        assert!(
            header_error(&[("GNU.sparse.size", "x"), ("GNU.sparse.map", "0,1")]).contains("number")
        );
        assert!(
            header_error(&[("GNU.sparse.size", "10"), ("GNU.sparse.map", " 0,1")])
                .contains("number")
        );
        // No size record: the header's size stands.
        let h = records(&[("GNU.sparse.map", "0,1")])
            .header()
            .unwrap()
            .unwrap();
        assert_eq!(h.size, None);
        let unknown = records(&[("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")]);
        assert_eq!(unknown.header().unwrap(), None);
        assert_eq!(SparseRecords::default().header().unwrap(), None);
        // Short data: an error, not a short file.
        let mut out = Vec::new();
        let e = Expanded::new(&b"ab"[..], vec![seg(0, 4)], 4)
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        let mut short = &b"1\n0\n"[..];
        assert!(read_map_1x0(&mut short).is_err());
        // A map that goes on and on is refused at 1 MiB.
        let mut long = b"1000000000\n".to_vec();
        long.extend(b"1\n".repeat(1 << 20));
        let e = read_map_1x0(&mut &long[..]).unwrap_err();
        assert!(e.contains("1 MiB"), "{e}");
    }
}
