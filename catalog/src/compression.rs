//! zlib objects: compression, bounded decompression and hash verification.
//!
//! docs/format.md §3: every compressed object is one complete zlib stream (RFC 1950) written at
//! level 6; the content hash is taken over the stored (compressed) bytes (§2.2).
//! The default backend is zlib-rs, whose output differs from C zlib's byte for byte, so
//! object hashes differ from `cvmfs_server`'s for the same content (clients only check
//! against the catalog, so this is compatible). With the cargo feature `zlib-compat`
//! flate2 uses the C zlib, and objects are byte-identical to stock CVMFS (docs/format.md §3.1,
//! §11.2). Objects of regular files may also be stored uncompressed (code 1, docs/format.md §3.2):
//! [`ObjectWriter::uncompressed`], [`decode`].

use std::io::{Read, Write};

use flate2::write::ZlibEncoder;
use flate2::{Compression, Decompress, FlushDecompress, Status};

use crate::error::{Error, Result};
use crate::hash::{ContentHash, HashAlgorithm, Hasher};

/// The zlib level CVMFS uses (`Z_DEFAULT_COMPRESSION`, docs/format.md §3.1).
pub const LEVEL: u32 = 6;

/// Compresses `raw` into one zlib stream at level 6 (docs/format.md §3.1), as [`compress_into`].
pub fn compress(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = compress_into(raw, &mut out, HashAlgorithm::Sha1);
    out
}

/// Compresses `raw` into `out` (cleared first; its allocation is re-used) as one object —
/// one zlib stream at level 6 (docs/format.md §3.1), through an [`ObjectWriter`] — and returns the
/// hash of the stored bytes with `algorithm`, taken in the same pass.
///
/// Errors: none in practice ([`Error::Io`] from the `Vec` it writes to).
pub fn compress_into(
    raw: &[u8],
    out: &mut Vec<u8>,
    algorithm: HashAlgorithm,
) -> Result<ContentHash> {
    out.clear();
    out.reserve(raw.len() / 2 + 64);
    let mut w = ObjectWriter::new(out, algorithm);
    w.write_all(raw)
        .map_err(|e| Error::io("compressing an object in memory", e))?;
    let (_, info) = w.finish()?;
    Ok(info.hash)
}

/// Inflates one complete zlib stream.
///
/// Errors: [`Error::TooLarge`] as soon as the output would exceed `max_size` bytes
/// (zip-bomb protection); [`Error::Decompress`] for corrupt or truncated streams or bytes
/// after the end of the stream.
pub fn decompress(stored: &[u8], max_size: u64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(stored.len().saturating_mul(3).min(1 << 24));
    let mut inflater = Inflater::new();
    inflater.feed(stored, &mut |chunk: &[u8]| {
        if out.len() as u64 + chunk.len() as u64 > max_size {
            return Err(Error::TooLarge { limit: max_size });
        }
        out.extend_from_slice(chunk);
        Ok(())
    })?;
    inflater.finish()?;
    Ok(out)
}

/// The deflate implementation compiled in: `"zlib"` (C zlib, feature `zlib-compat`) or
/// `"zlib-rs"`.
pub const BACKEND: &str = if cfg!(feature = "zlib-compat") {
    "zlib"
} else {
    "zlib-rs"
};

/// The raw bytes of a stored object: inflated if `compressed` (code 0), else returned as
/// they are (code 1, docs/format.md §3.2). Does not check the hash (see [`verify`]).
///
/// Errors: as [`decompress`]; for raw objects [`Error::TooLarge`] if longer than `max_size`.
pub fn decode(stored: &[u8], compressed: bool, max_size: u64) -> Result<Vec<u8>> {
    if compressed {
        decompress(stored, max_size)
    } else if stored.len() as u64 > max_size {
        Err(Error::TooLarge { limit: max_size })
    } else {
        Ok(stored.to_vec())
    }
}

/// Checks that `stored` hashes to `expected` with `expected`'s algorithm.
///
/// Errors with [`Error::HashMismatch`].
pub fn verify(stored: &[u8], expected: &ContentHash) -> Result<()> {
    let actual = ContentHash::of_bytes(expected.algorithm, stored);
    check(&actual, expected)
}

fn check(actual: &ContentHash, expected: &ContentHash) -> Result<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(Error::HashMismatch {
            expected: expected.to_hex(),
            actual: actual.to_hex(),
        })
    }
}

/// What [`ObjectWriter::finish`] reports about the object written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ObjectInfo {
    /// Hash of the stored (compressed) bytes.
    pub hash: ContentHash,
    /// Number of stored (compressed) bytes written to the inner writer.
    pub stored_size: u64,
    /// Number of uncompressed bytes written into the `ObjectWriter`.
    pub raw_size: u64,
}

/// Streaming compress + hash in one pass: write uncompressed bytes into it, the zlib stream
/// goes to `inner` and is hashed on the way (docs/format.md §2.2, §3.1). Made with
/// [`ObjectWriter::uncompressed`], it stores the bytes as they are (compression code 1,
/// docs/format.md §3.2) and only hashes them.
pub struct ObjectWriter<W: Write> {
    encoder: Encoder<W>,
    raw_size: u64,
}

enum Encoder<W: Write> {
    Zlib(ZlibEncoder<HashingWriter<W>>),
    Raw(HashingWriter<W>),
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> ObjectWriter<W> {
    /// Starts a new object whose stored bytes go to `inner`, hashed with `algorithm`.
    pub fn new(inner: W, algorithm: HashAlgorithm) -> Self {
        Self::with_compression(inner, algorithm, true)
    }

    /// Starts a new object stored without compression (code 1, "none", docs/format.md §3.2): the
    /// bytes written go to `inner` unchanged and are hashed with `algorithm`. Only for
    /// regular files and chunks whose catalog entry says so (`Entry::compressed == false`);
    /// catalogs, certificates, history and meta-info are always zlib (docs/format.md §3.3).
    pub fn uncompressed(inner: W, algorithm: HashAlgorithm) -> Self {
        Self::with_compression(inner, algorithm, false)
    }

    /// [`ObjectWriter::new`] when `compressed`, else [`ObjectWriter::uncompressed`].
    pub fn with_compression(inner: W, algorithm: HashAlgorithm, compressed: bool) -> Self {
        let hw = HashingWriter {
            inner,
            hasher: Hasher::new(algorithm),
            written: 0,
        };
        let encoder = if compressed {
            Encoder::Zlib(ZlibEncoder::new(hw, Compression::new(LEVEL)))
        } else {
            Encoder::Raw(hw)
        };
        ObjectWriter {
            encoder,
            raw_size: 0,
        }
    }

    /// Whether the object is zlib-compressed (false: stored raw).
    pub fn is_compressed(&self) -> bool {
        matches!(self.encoder, Encoder::Zlib(_))
    }

    /// Uncompressed bytes written so far.
    pub fn raw_size(&self) -> u64 {
        self.raw_size
    }

    /// Ends the zlib stream, flushes `inner` and returns it with the object's hash and sizes.
    ///
    /// Errors with [`Error::Io`] if writing to `inner` fails.
    pub fn finish(self) -> Result<(W, ObjectInfo)> {
        let mut hw = match self.encoder {
            Encoder::Zlib(z) => z
                .finish()
                .map_err(|e| Error::io("finishing zlib object", e))?,
            Encoder::Raw(hw) => hw,
        };
        hw.flush()
            .map_err(|e| Error::io("flushing zlib object", e))?;
        let info = ObjectInfo {
            hash: hw.hasher.finish(),
            stored_size: hw.written,
            raw_size: self.raw_size,
        };
        Ok((hw.inner, info))
    }
}

impl<W: Write> Write for ObjectWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = match &mut self.encoder {
            Encoder::Zlib(z) => z.write(buf)?,
            Encoder::Raw(hw) => hw.write(buf)?,
        };
        self.raw_size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.encoder {
            Encoder::Zlib(z) => z.flush(),
            Encoder::Raw(hw) => hw.flush(),
        }
    }
}

/// Streaming verify + inflate: reads stored bytes from `r`, writes raw bytes to `w`
/// (inflated when `compressed`, copied otherwise) and checks the hash of the stored bytes
/// at the end. Returns the number of raw bytes written.
///
/// The output is written before the hash is known to be right: on error the caller must
/// discard what was written. Errors: [`Error::HashMismatch`], [`Error::Decompress`] (corrupt
/// or truncated stream), [`Error::Io`].
pub fn verify_and_inflate<R: Read, W: Write>(
    mut r: R,
    w: W,
    expected: &ContentHash,
    compressed: bool,
) -> Result<u64> {
    let mut writer = InflatingWriter::new(w, *expected, compressed, None);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading stored object", e)),
        };
        writer
            .write_all(&buf[..n])
            .map_err(|e| Error::io("writing inflated object", e))?;
    }
    writer.finish().map(|(_, raw)| raw)
}

/// Streaming verify + inflate, pushed: write the stored (as served) bytes of one object into
/// it, and it hashes them and writes the raw content to `inner`; [`InflatingWriter::finish`]
/// then checks the hash and that the zlib stream was complete, and returns `inner` and the
/// raw size. A client can so write a download straight into its cache file, in one pass
/// and without a second temporary copy.
///
/// Bad data never fails a write: after a zlib error or past `limit` raw bytes, the writer
/// stops inflating but keeps hashing, so that the whole body is still consumed (a
/// downloader treats write errors as local failures) and `finish` reports the error.
/// Only errors of `inner` fail a write.
pub struct InflatingWriter<W: Write> {
    inner: W,
    expected: ContentHash,
    hasher: Hasher,
    /// `None` for an object stored uncompressed (docs/format.md §3.2 code 1).
    inflater: Option<Inflater>,
    limit: Option<u64>,
    raw: u64,
    bad: Option<Error>,
}

impl<W: Write> InflatingWriter<W> {
    /// A writer for the object `expected`, zlib (`compressed`) or stored raw, whose raw
    /// content may not exceed `limit` bytes (the size the catalog records, when known).
    pub fn new(inner: W, expected: ContentHash, compressed: bool, limit: Option<u64>) -> Self {
        InflatingWriter {
            inner,
            expected,
            hasher: Hasher::new(expected.algorithm),
            inflater: compressed.then(Inflater::new),
            limit,
            raw: 0,
            bad: None,
        }
    }

    /// Raw bytes written to `inner` so far.
    pub fn raw_size(&self) -> u64 {
        self.raw
    }

    /// Checks the object and flushes `inner`; returns it with the raw size.
    ///
    /// # Errors
    /// [`Error::HashMismatch`] if the stored bytes do not hash to the expected name (checked
    /// first: it names the object), [`Error::Decompress`] for a broken or truncated zlib
    /// stream or raw content beyond the limit, [`Error::Io`] if `inner` fails.
    pub fn finish(mut self) -> Result<(W, u64)> {
        check(&self.hasher.finish(), &self.expected)?;
        if let Some(bad) = self.bad {
            return Err(bad);
        }
        if let Some(inflater) = self.inflater {
            inflater.finish()?;
        }
        self.inner
            .flush()
            .map_err(|e| Error::io("flushing inflated object", e))?;
        Ok((self.inner, self.raw))
    }
}

impl<W: Write> Write for InflatingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        if self.bad.is_some() {
            return Ok(buf.len());
        }
        let (inner, raw, limit) = (&mut self.inner, &mut self.raw, self.limit);
        let mut io_error = None;
        let mut sink = |chunk: &[u8]| -> Result<()> {
            if limit.is_some_and(|l| *raw + chunk.len() as u64 > l) {
                return Err(Error::Decompress(format!(
                    "the object inflates to more than the {} bytes expected",
                    limit.unwrap_or(0)
                )));
            }
            if let Err(e) = inner.write_all(chunk) {
                let kind = e.kind();
                io_error = Some(e);
                return Err(Error::io(
                    "writing inflated object",
                    std::io::Error::from(kind),
                ));
            }
            *raw += chunk.len() as u64;
            Ok(())
        };
        let fed = match &mut self.inflater {
            Some(inflater) => inflater.feed(buf, &mut sink),
            None => sink(buf),
        };
        if let Some(e) = io_error {
            return Err(e);
        }
        if let Err(e) = fed {
            self.bad = Some(e);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Incremental zlib inflater that insists on a complete stream.
struct Inflater {
    state: Decompress,
    buf: Vec<u8>,
    done: bool,
}

impl Inflater {
    fn new() -> Inflater {
        Inflater {
            state: Decompress::new(true),
            buf: vec![0u8; 64 * 1024],
            done: false,
        }
    }

    fn feed(&mut self, mut input: &[u8], sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        loop {
            if self.done {
                if input.is_empty() {
                    return Ok(());
                }
                return Err(Error::Decompress(
                    "data after the end of the zlib stream".into(),
                ));
            }
            let in_before = self.state.total_in();
            let out_before = self.state.total_out();
            let status = self
                .state
                .decompress(input, &mut self.buf, FlushDecompress::None)
                .map_err(|e| Error::Decompress(e.to_string()))?;
            let consumed = (self.state.total_in() - in_before) as usize;
            let produced = (self.state.total_out() - out_before) as usize;
            input = &input[consumed..];
            if produced > 0 {
                sink(&self.buf[..produced])?;
            }
            if status == Status::StreamEnd {
                self.done = true;
                continue;
            }
            if produced == self.buf.len() {
                continue; // more output may be pending
            }
            if input.is_empty() {
                return Ok(());
            }
            if consumed == 0 && produced == 0 {
                return Err(Error::Decompress("inflate made no progress".into()));
            }
        }
    }

    fn finish(self) -> Result<()> {
        if self.done {
            Ok(())
        } else {
            Err(Error::Decompress("truncated zlib stream".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO_Z: [u8; 14] = [
        0x78, 0x9c, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0xe7, 0x02, 0x00, 0x08, 0x4b, 0x02, 0x1f,
    ];

    #[test]
    fn compress_into_is_one_zlib_stream_at_level_6() {
        // Every object's bytes: those of one zlib encoder at LEVEL fed the whole input (the
        // allocation of `out` is re-used and must not matter).
        let mut out = vec![1, 2, 3];
        let mut x: u32 = 7;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        for raw in [Vec::new(), b"hello".to_vec(), vec![0u8; 300_000], noise] {
            let mut enc = ZlibEncoder::new(Vec::new(), Compression::new(LEVEL));
            enc.write_all(&raw).unwrap();
            let expect = enc.finish().unwrap();
            let h = compress_into(&raw, &mut out, HashAlgorithm::Sha1).unwrap();
            assert_eq!(out, expect);
            assert_eq!(h, ContentHash::of_bytes(HashAlgorithm::Sha1, &expect));
            assert_eq!(compress(&raw), expect);
        }
    }

    #[test]
    fn inflates_c_zlib_vectors() {
        assert_eq!(decompress(&HELLO_Z, 100).unwrap(), b"hello\n");
        let empty = [0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01];
        assert_eq!(decompress(&empty, 0).unwrap(), b"");
    }

    #[test]
    fn round_trip_various_sizes() {
        for size in [0usize, 1, 6, 1000, 65_536, 300_000] {
            let raw: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let z = compress(&raw);
            assert_eq!(&z[..2], &[0x78, 0x9c], "zlib header, default level");
            assert_eq!(decompress(&z, size as u64).unwrap(), raw);
        }
    }

    #[test]
    fn bomb_is_capped() {
        let z = compress(&vec![0u8; 1_000_000]);
        assert!(matches!(
            decompress(&z, 999_999),
            Err(Error::TooLarge { limit: 999_999 })
        ));
        assert_eq!(decompress(&z, 1_000_000).unwrap().len(), 1_000_000);
    }

    #[test]
    fn truncated_and_corrupt_streams_fail() {
        let z = compress(b"hello world, hello world, hello world");
        for cut in 0..z.len() {
            assert!(
                matches!(decompress(&z[..cut], 1000), Err(Error::Decompress(_))),
                "cut at {cut}"
            );
        }
        let mut bad = z.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1; // Adler-32 trailer
        assert!(decompress(&bad, 1000).is_err());
        let mut trailing = z.clone();
        trailing.push(0);
        assert!(decompress(&trailing, 1000).is_err());
    }

    #[test]
    fn verify_checks_hash_of_stored_bytes() {
        let h = ContentHash::parse_hex("5798f7f4ca7585d850eea64610a1f73d8f8de7a3").unwrap();
        verify(&HELLO_Z, &h).unwrap();
        assert!(matches!(
            verify(b"hello\n", &h),
            Err(Error::HashMismatch { .. })
        ));
    }

    #[test]
    fn object_writer_matches_one_shot() {
        let raw: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
        let mut ow = ObjectWriter::new(Vec::new(), HashAlgorithm::Sha1);
        for part in raw.chunks(777) {
            ow.write_all(part).unwrap();
        }
        let (stored, info) = ow.finish().unwrap();
        // Buffering may change the deflate bytes, never the content.
        assert_eq!(decompress(&stored, raw.len() as u64).unwrap(), raw);
        assert_eq!(
            info.hash,
            ContentHash::of_bytes(HashAlgorithm::Sha1, &stored)
        );
        assert_eq!(info.stored_size, stored.len() as u64);
        assert_eq!(info.raw_size, raw.len() as u64);
    }

    #[test]
    fn verify_and_inflate_streams() {
        let h = ContentHash::parse_hex("5798f7f4ca7585d850eea64610a1f73d8f8de7a3").unwrap();
        let mut out = Vec::new();
        assert_eq!(
            verify_and_inflate(&HELLO_Z[..], &mut out, &h, true).unwrap(),
            6
        );
        assert_eq!(out, b"hello\n");

        // Uncompressed objects are copied and hashed as they are.
        let raw_hash = ContentHash::of_bytes(HashAlgorithm::Sha1, b"raw bytes");
        let mut out = Vec::new();
        assert_eq!(
            verify_and_inflate(&b"raw bytes"[..], &mut out, &raw_hash, false).unwrap(),
            9
        );
        assert_eq!(out, b"raw bytes");

        // Wrong hash.
        let mut out = Vec::new();
        assert!(matches!(
            verify_and_inflate(&HELLO_Z[..], &mut out, &raw_hash, true),
            Err(Error::HashMismatch { .. })
        ));

        // Truncated stream whose hash is right: still rejected.
        let cut = &HELLO_Z[..10];
        let cut_hash = ContentHash::of_bytes(HashAlgorithm::Sha1, cut);
        assert!(matches!(
            verify_and_inflate(cut, Vec::new(), &cut_hash, true),
            Err(Error::Decompress(_))
        ));

        // Large object through the streaming path.
        let raw: Vec<u8> = (0..500_000u32).map(|i| (i * 31 % 256) as u8).collect();
        let z = compress(&raw);
        let zh = ContentHash::of_bytes(HashAlgorithm::Sha1, &z);
        let mut out = Vec::new();
        assert_eq!(
            verify_and_inflate(&z[..], &mut out, &zh, true).unwrap(),
            raw.len() as u64
        );
        assert_eq!(out, raw);
    }

    #[test]
    fn inflating_writer_takes_the_body_in_any_pieces() {
        let raw: Vec<u8> = (0..200_000u32).map(|i| (i % 97) as u8).collect();
        let stored = compress(&raw);
        let hash = ContentHash::of_bytes(HashAlgorithm::Sha1, &stored);
        for piece in [1, 7, 4096, stored.len()] {
            let mut w = InflatingWriter::new(Vec::new(), hash, true, Some(raw.len() as u64));
            for part in stored.chunks(piece) {
                w.write_all(part).unwrap();
            }
            let (out, n) = w.finish().unwrap();
            assert_eq!(n, raw.len() as u64);
            assert!(out == raw, "pieces of {piece}");
        }
    }

    #[test]
    fn inflating_writer_reports_bad_data_at_finish_not_while_writing() {
        let stored = compress(b"hello\n");
        let hash = ContentHash::of_bytes(HashAlgorithm::Sha1, &stored);
        // Garbage instead of a zlib stream: every write succeeds, finish names the hash.
        let mut w = InflatingWriter::new(Vec::new(), hash, true, None);
        w.write_all(b"not zlib at all").unwrap();
        assert!(matches!(w.finish(), Err(Error::HashMismatch { .. })));
        // The right bytes, but more content than the catalog says: a decompression error.
        let mut w = InflatingWriter::new(Vec::new(), hash, true, Some(3));
        w.write_all(&stored).unwrap();
        assert!(matches!(w.finish(), Err(Error::Decompress(_))));
        // A truncated stream whose hash is right (a broken object under its own name).
        let cut = &stored[..stored.len() - 2];
        let cut_hash = ContentHash::of_bytes(HashAlgorithm::Sha1, cut);
        let mut w = InflatingWriter::new(Vec::new(), cut_hash, true, None);
        w.write_all(cut).unwrap();
        assert!(matches!(w.finish(), Err(Error::Decompress(_))));
        // Stored raw (uncompressed): hashed and passed through.
        let raw_hash = ContentHash::of_bytes(HashAlgorithm::Sha1, b"raw");
        let mut w = InflatingWriter::new(Vec::new(), raw_hash, false, Some(3));
        w.write_all(b"raw").unwrap();
        assert_eq!(w.finish().unwrap(), (b"raw".to_vec(), 3));
    }

    #[test]
    fn uncompressed_objects() {
        let mut ow = ObjectWriter::uncompressed(Vec::new(), HashAlgorithm::Sha1);
        assert!(!ow.is_compressed());
        ow.write_all(b"hel").unwrap();
        ow.write_all(b"lo\n").unwrap();
        assert_eq!(ow.raw_size(), 6);
        let (stored, info) = ow.finish().unwrap();
        assert_eq!(stored, b"hello\n");
        assert_eq!(
            info.hash.to_hex(),
            "f572d396fae9206628714fb2ce00f72e94f2258f",
            "SHA-1 of the raw bytes (docs/format.md §11.2 contrast line)"
        );
        assert_eq!((info.stored_size, info.raw_size), (6, 6));
        assert_eq!(decode(&stored, false, 6).unwrap(), b"hello\n");
        assert!(matches!(
            decode(&stored, false, 5),
            Err(Error::TooLarge { limit: 5 })
        ));
        assert_eq!(decode(&HELLO_Z, true, 6).unwrap(), b"hello\n");
        let mut out = Vec::new();
        verify_and_inflate(&stored[..], &mut out, &info.hash, false).unwrap();
        assert_eq!(out, b"hello\n");
        assert!(ObjectWriter::new(Vec::new(), HashAlgorithm::Sha1).is_compressed());
    }

    /// Under `zlib-compat` the objects are byte-identical to stock CVMFS (docs/format.md §11.2, §11.3).
    #[cfg(feature = "zlib-compat")]
    #[test]
    fn c_zlib_matches_stock_bytes() {
        assert_eq!(BACKEND, "zlib");
        assert_eq!(compress(b"hello\n"), HELLO_Z);
        assert_eq!(
            compress(b""),
            [0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]
        );
        let mut ow = ObjectWriter::new(Vec::new(), HashAlgorithm::Sha1);
        ow.write_all(b"hello\n").unwrap();
        let (stored, info) = ow.finish().unwrap();
        assert_eq!(stored, HELLO_Z);
        assert_eq!(
            info.hash.to_hex(),
            "5798f7f4ca7585d850eea64610a1f73d8f8de7a3"
        );
        let (_, empty) = ObjectWriter::new(Vec::new(), HashAlgorithm::Sha1)
            .finish()
            .unwrap();
        assert_eq!(
            empty.hash.to_hex(),
            "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"
        );
    }

    proptest::proptest! {
        #[test]
        fn round_trips_any_bytes(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..5000)) {
            let z = compress(&raw);
            proptest::prop_assert_eq!(decompress(&z, raw.len() as u64).unwrap(), raw);
        }

        #[test]
        fn never_panics_on_garbage(blob in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = decompress(&blob, 1 << 16);
            let h = ContentHash::of_bytes(HashAlgorithm::Sha1, &blob);
            let _ = verify_and_inflate(&blob[..], std::io::sink(), &h, true);
        }
    }
}
