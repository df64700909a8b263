//! Layer blob decompression (gzip, zstd or none), with SHA-256 of both the compressed blob
//! (the layer digest) and the uncompressed tar (the diffID) computed on the way through.
//!
//! The format is taken from the magic bytes (gzip `1f 8b`, zstd `28 b5 2f fd`); the media
//! type only decides when the blob is too short to tell. gzip uses `MultiGzDecoder` because
//! some tools (pigz, parallel writers) write several members, and a plain `GzDecoder` would
//! stop after the first.

use std::io::{self, BufRead, BufReader, Read};

use crate::digest::HashingReader;

/// A layer compression format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// `application/vnd.oci.image.layer.v1.tar+gzip`, Docker `…rootfs.diff.tar.gzip`.
    Gzip,
    /// `application/vnd.oci.image.layer.v1.tar+zstd`.
    Zstd,
    /// Plain tar.
    None,
}

impl Compression {
    /// Detects the format from the first bytes of the blob, falling back to `media_type`.
    pub fn detect(media_type: &str, head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if head.len() >= 4 {
            Compression::None
        } else if media_type.ends_with("gzip") {
            Compression::Gzip
        } else if media_type.ends_with("zstd") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

type Compressed<R> = BufReader<HashingReader<R>>;

/// The decoder for one blob.
pub enum Decoder<R: Read> {
    /// gzip, all members.
    Gzip(Box<flate2::bufread::MultiGzDecoder<Compressed<R>>>),
    /// zstd, all frames.
    Zstd(zstd::stream::read::Decoder<'static, Compressed<R>>),
    /// No compression.
    Plain(Compressed<R>),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Plain(d) => d.read(buf),
        }
    }
}

/// Digests and sizes of one blob, known after the whole blob went through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobDigests {
    /// `sha256:<hex>` of the compressed blob (must equal the layer digest).
    pub compressed: String,
    /// Compressed size in bytes.
    pub compressed_size: u64,
    /// `sha256:<hex>` of the uncompressed tar (must equal the diffID).
    pub uncompressed: String,
    /// Uncompressed size in bytes.
    pub uncompressed_size: u64,
}

/// A reader of the uncompressed tar stream of one layer blob.
pub struct LayerStream<R: Read> {
    inner: HashingReader<Decoder<R>>,
    /// The format that was detected.
    pub compression: Compression,
}

impl<R: Read> LayerStream<R> {
    /// Starts decoding `blob`; reads up to a few bytes to detect the format.
    pub fn new(blob: R, media_type: &str) -> io::Result<LayerStream<R>> {
        let mut buffered = BufReader::with_capacity(256 * 1024, HashingReader::new(blob));
        let head = buffered.fill_buf()?;
        let compression = Compression::detect(media_type, &head[..head.len().min(4)]);
        let decoder = match compression {
            Compression::Gzip => {
                Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(buffered)))
            }
            Compression::Zstd => Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(buffered)?),
            Compression::None => Decoder::Plain(buffered),
        };
        Ok(LayerStream {
            inner: HashingReader::new(decoder),
            compression,
        })
    }

    /// Reads both streams to their ends and returns their digests.
    pub fn finish(self) -> io::Result<BlobDigests> {
        let (decoder, uncompressed, uncompressed_size) = self.inner.finish()?;
        let buffered = match decoder {
            Decoder::Gzip(d) => (*d).into_inner(),
            Decoder::Zstd(d) => d.finish(),
            Decoder::Plain(d) => d,
        };
        // Bytes still in the BufReader were hashed when they were read from below; only
        // the unread rest of the blob (trailing garbage, padding) remains to be hashed.
        let (_, compressed, compressed_size) = buffered.into_inner().finish()?;
        Ok(BlobDigests {
            compressed,
            compressed_size,
            uncompressed,
            uncompressed_size,
        })
    }
}

impl<R: Read> Read for LayerStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::digest::sha256_digest;

    fn roundtrip(blob: &[u8], raw: &[u8], expect: Compression) {
        let mut s = LayerStream::new(blob, "").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.compression, expect);
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, raw);
        let d = s.finish().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.compressed, sha256_digest(blob));
        assert_eq!(d.compressed_size, blob.len() as u64);
        assert_eq!(d.uncompressed, sha256_digest(raw));
        assert_eq!(d.uncompressed_size, raw.len() as u64);
    }

    #[test]
    fn gzip_multi_member_zstd_and_plain() {
        let raw = b"some tar bytes, not really a tar".repeat(100);
        let mut gz = Vec::new();
        for half in raw.chunks(raw.len() / 2) {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(half).unwrap_or_else(|e| panic!("{e}"));
            gz.extend(e.finish().unwrap_or_else(|e| panic!("{e}")));
        }
        roundtrip(&gz, &raw, Compression::Gzip);
        let zs = zstd::encode_all(&raw[..], 3).unwrap_or_else(|e| panic!("{e}"));
        roundtrip(&zs, &raw, Compression::Zstd);
        roundtrip(&raw, &raw, Compression::None);
    }

    #[test]
    fn partial_read_still_hashes_everything() {
        let raw = vec![7u8; 100_000];
        let zs = zstd::encode_all(&raw[..], 3).unwrap_or_else(|e| panic!("{e}"));
        let mut s = LayerStream::new(&zs[..], "application/vnd.oci.image.layer.v1.tar+zstd")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut first = [0u8; 10];
        s.read_exact(&mut first).unwrap_or_else(|e| panic!("{e}"));
        let d = s.finish().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.uncompressed, sha256_digest(&raw));
        assert_eq!(d.compressed, sha256_digest(&zs));
    }

    #[test]
    fn media_type_decides_for_tiny_blobs() {
        assert_eq!(Compression::detect("x.tar+zstd", b""), Compression::Zstd);
        assert_eq!(Compression::detect("tar.gzip", b"a"), Compression::Gzip);
        assert_eq!(Compression::detect("tar.gzip", b"abcd"), Compression::None);
    }
}
