//! Content-defined chunking of regular files, bit-identical to stock CVMFS (docs/format.md §4).
//!
//! * [`Chunker`] finds the cut points in a byte stream fed in pieces of any size: the xor32
//!   rolling checksum (§4.2) and the boundary algorithm of §4.3, including the
//!   `x == 0xFFFFFFFF` artefact hit and the hard cut at `max`. The boundaries do not depend
//!   on how the input is split.
//! * [`ChunkingWriter`] takes a file's uncompressed bytes through [`std::io::Write`] and
//!   stores each piece as an independent object (zlib or raw, hashed, suffix `P`) in a
//!   [`LocalStore`] while the bytes stream through; memory use is bounded (no piece is ever
//!   buffered whole), so multi-GB layer files are fine. [`ChunkingWriter::finish`] says
//!   whether the file became one whole-file object (no suffix, §4.1) or a chunk list.
//! * [`chunk_range`] / [`chunk_spans`] map a read `(offset, len)` to the chunks that hold it
//!   (binary search, §4.6), for clients.
//!
//! All of this is blocking code (file I/O, zlib): async callers run it on a blocking thread.

use std::io::Write;
use std::ops::Range;

use tempfile::NamedTempFile;

use crate::compression::ObjectWriter;
use crate::entry::{Chunk, Entry};
use crate::error::{Error, Result};
use crate::hash::{ContentHash, HashAlgorithm, Suffix};
use crate::store::LocalStore;

/// Default minimum chunk size, 4 MiB (docs/format.md §4.1).
pub const DEFAULT_MIN: u64 = 4 * 1024 * 1024;
/// Default average chunk size, 8 MiB (docs/format.md §4.1).
pub const DEFAULT_AVG: u64 = 8 * 1024 * 1024;
/// Default maximum chunk size, 16 MiB (docs/format.md §4.1).
pub const DEFAULT_MAX: u64 = 16 * 1024 * 1024;

/// The centre of the cut window, `u32::MAX / 2` (docs/format.md §4.2).
const MAGIC: u32 = 0x7FFF_FFFF;
/// Bytes fed into the checksum before the first cut test (docs/format.md §4.3).
const WINDOW: u64 = 32;

/// One step of the xor32 rolling checksum: `(state << 1) ^ byte`, 32-bit wrap-around
/// (docs/format.md §4.2).
#[inline]
pub fn xor32(state: u32, byte: u8) -> u32 {
    (state << 1) ^ u32::from(byte)
}

/// Chunk size parameters in bytes (docs/format.md §4.1): `min ≥ 32`, `min < avg < max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkParams {
    /// Minimum chunk size; files of at most this size are never chunked.
    pub min: u64,
    /// Average (target) chunk size; sets the cut threshold `u32::MAX / avg`.
    pub avg: u64,
    /// Maximum chunk size: a chunk that reaches it without a hit is cut (hard cut).
    pub max: u64,
}

impl Default for ChunkParams {
    /// The stock server defaults 4 / 8 / 16 MiB.
    fn default() -> Self {
        ChunkParams {
            min: DEFAULT_MIN,
            avg: DEFAULT_AVG,
            max: DEFAULT_MAX,
        }
    }
}

impl ChunkParams {
    /// Checked constructor.
    ///
    /// Errors: [`Error::ChunkParams`] unless `32 ≤ min < avg < max` and `avg < 2^32`.
    pub fn new(min: u64, avg: u64, max: u64) -> Result<ChunkParams> {
        let p = ChunkParams { min, avg, max };
        p.validate()?;
        Ok(p)
    }

    /// Checks `32 ≤ min < avg < max` and `avg < 2^32` (docs/format.md §4.1).
    ///
    /// Errors: [`Error::ChunkParams`].
    pub fn validate(&self) -> Result<()> {
        if self.min < WINDOW || self.min >= self.avg || self.avg >= self.max {
            return Err(Error::ChunkParams(format!(
                "need 32 <= min < avg < max, got {}/{}/{}",
                self.min, self.avg, self.max
            )));
        }
        if self.avg > u64::from(u32::MAX) {
            return Err(Error::ChunkParams(format!("avg {} >= 2^32", self.avg)));
        }
        Ok(())
    }

    /// The cut threshold `T = u32::MAX / avg` (docs/format.md §4.2); 511 for the defaults.
    pub fn threshold(&self) -> u32 {
        (u64::from(u32::MAX) / self.avg.max(1)) as u32
    }
}

/// Streaming cut-point detector (docs/format.md §4.3).
///
/// Feed the file's bytes in order with [`Chunker::scan`] (or [`Chunker::push`]); each cut
/// is reported as the absolute offset where the next chunk starts. The last chunk ends at
/// the end of the file and is not reported. The same bytes give the same cuts however they
/// are split.
#[derive(Clone, Debug)]
pub struct Chunker {
    min: u64,
    max: u64,
    threshold: u32,
    /// Absolute offset of the next byte to be fed.
    pos: u64,
    /// Absolute offset where the current chunk starts.
    last: u64,
    state: u32,
}

impl Chunker {
    /// A detector for a new file.
    ///
    /// Errors: [`Error::ChunkParams`] (see [`ChunkParams::validate`]).
    pub fn new(params: ChunkParams) -> Result<Chunker> {
        params.validate()?;
        Ok(Chunker {
            min: params.min,
            max: params.max,
            threshold: params.threshold(),
            pos: 0,
            last: 0,
            state: 0,
        })
    }

    /// Bytes fed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Absolute offset where the current (unfinished) chunk starts.
    pub fn chunk_start(&self) -> u64 {
        self.last
    }

    #[inline]
    fn hit(&self, x: u32) -> bool {
        x.abs_diff(MAGIC) < self.threshold || x == u32::MAX
    }

    fn cut(&mut self) {
        self.last = self.pos;
        self.state = 0;
    }

    /// Feeds bytes from `data` up to the next cut. Returns `Some(k)` if the current chunk
    /// ends after `data[..k]` (the chunker has then consumed exactly `k` bytes and a new
    /// chunk starts at `data[k]`; call again with `&data[k..]`), or `None` if all of `data`
    /// was consumed without a cut. `k` may be 0 (a hard cut right at the start of `data`).
    pub fn scan(&mut self, data: &[u8]) -> Option<usize> {
        let warm = self.min - WINDOW;
        let mut i = 0usize;
        while i < data.len() {
            let rel = self.pos - self.last;
            if rel == self.max {
                // A byte exists past `last + max`: hard cut (docs/format.md §4.3).
                self.cut();
                return Some(i);
            }
            let rem = (data.len() - i) as u64;
            if rel < warm {
                // Bytes before the warm-up window do not influence the checksum.
                let n = (warm - rel).min(rem) as usize;
                i += n;
                self.pos += n as u64;
            } else if rel < self.min {
                let n = (self.min - rel).min(rem) as usize;
                let mut x = self.state;
                for &b in &data[i..i + n] {
                    x = xor32(x, b);
                }
                self.state = x;
                i += n;
                self.pos += n as u64;
            } else {
                let n = (self.max - rel).min(rem) as usize;
                let mut x = self.state;
                for (j, &b) in data[i..i + n].iter().enumerate() {
                    x = xor32(x, b);
                    if self.hit(x) {
                        // The byte that produced the hit starts the next chunk.
                        self.pos += j as u64;
                        self.cut();
                        return Some(i + j);
                    }
                }
                self.state = x;
                i += n;
                self.pos += n as u64;
            }
        }
        None
    }

    /// Feeds all of `data`; returns the absolute offsets of the cuts found in it (each the
    /// start of a new chunk, i.e. the end of the previous one), in increasing order.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<u64> {
        let mut cuts = Vec::new();
        while let Some(k) = self.scan(data) {
            cuts.push(self.pos);
            data = &data[k..];
        }
        cuts
    }
}

/// The cut offsets of a whole in-memory file (docs/format.md §4.3): the start offsets of every chunk
/// but the first. Empty when the file stays in one piece.
///
/// Errors: [`Error::ChunkParams`].
pub fn cut_points(data: &[u8], params: ChunkParams) -> Result<Vec<u64>> {
    Ok(Chunker::new(params)?.push(data))
}

/// How a file was stored by [`ChunkingWriter`]: either one whole-file object or chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFile {
    /// Uncompressed file size in bytes.
    pub size: u64,
    /// Whether the objects are zlib streams (else stored raw, compression code 1).
    pub compressed: bool,
    /// The whole-file object (no suffix) when the file is not chunked.
    pub hash: Option<ContentHash>,
    /// The chunks (objects with suffix `P`) when the file is chunked (≥ 2 chunks).
    pub chunks: Vec<Chunk>,
    /// Sum of the stored (compressed) object sizes in bytes, whether new or already present.
    pub stored_size: u64,
    /// Objects that were not yet in the store.
    pub new_objects: u32,
}

impl StoredFile {
    /// Whether the file was stored as chunks (catalog flag 64, docs/format.md §4.4).
    pub fn is_chunked(&self) -> bool {
        !self.chunks.is_empty()
    }

    /// Sets `size`, `hash`, `chunks` and `compressed` of a regular-file entry accordingly.
    pub fn apply_to(&self, entry: &mut Entry) {
        entry.size = self.size;
        entry.hash = self.hash;
        entry.chunks = self.chunks.clone();
        entry.compressed = self.compressed;
    }
}

/// Stores a regular file's content in a [`LocalStore`] while it is being written, chunked
/// as stock CVMFS does (docs/format.md §4.3, §4.4).
///
/// Write the uncompressed bytes with [`Write`]; each piece streams through an
/// [`ObjectWriter`] into a temporary file in `data/txn` and is committed (suffix `P`) as
/// soon as the next cut is found. At [`finish`](ChunkingWriter::finish) a file that stayed
/// in one piece (size ≤ `min`, or no cut before EOF) is committed as a normal whole-file
/// object without suffix instead (§4.1). Memory use is a few zlib buffers, independent of
/// file and chunk size. Dropping the writer without `finish` deletes the unfinished piece
/// (already committed chunks stay; they are content-addressed and harmless).
pub struct ChunkingWriter {
    store: LocalStore,
    chunker: Chunker,
    algorithm: HashAlgorithm,
    compressed: bool,
    current: Option<ObjectWriter<NamedTempFile>>,
    chunks: Vec<Chunk>,
    stored_size: u64,
    new_objects: u32,
}

impl ChunkingWriter {
    /// A writer for one file, storing objects hashed with `algorithm`, zlib-compressed if
    /// `compressed` (else raw, code 1), chunked with `params`.
    ///
    /// Errors: [`Error::ChunkParams`], [`Error::Io`] if no temporary file can be made.
    pub fn new(
        store: &LocalStore,
        params: ChunkParams,
        algorithm: HashAlgorithm,
        compressed: bool,
    ) -> Result<ChunkingWriter> {
        let chunker = Chunker::new(params)?;
        let mut w = ChunkingWriter {
            store: store.clone(),
            chunker,
            algorithm,
            compressed,
            current: None,
            chunks: Vec::new(),
            stored_size: 0,
            new_objects: 0,
        };
        w.current = Some(w.start_piece()?);
        Ok(w)
    }

    fn start_piece(&self) -> Result<ObjectWriter<NamedTempFile>> {
        self.store.new_object(self.algorithm, self.compressed)
    }

    /// Ends the current piece and commits it under `suffix`; returns its hash and raw size.
    fn commit_piece(&mut self, suffix: Suffix) -> Result<(ContentHash, u64)> {
        let ow = self
            .current
            .take()
            .ok_or_else(|| Error::io("chunking writer", std::io::ErrorKind::Other.into()))?;
        let (info, new) = self.store.commit_object(ow, suffix)?;
        if new {
            self.new_objects += 1;
        }
        self.stored_size += info.stored_size;
        Ok((info.hash, info.raw_size))
    }

    fn write_current(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self.current.as_mut() {
            Some(ow) => ow.write_all(data),
            None => Err(std::io::Error::other("chunking writer failed earlier")),
        }
    }

    fn feed(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            match self.chunker.scan(data) {
                None => {
                    self.write_current(data)
                        .map_err(|e| Error::io("writing chunk object", e))?;
                    return Ok(());
                }
                Some(k) => {
                    self.write_current(&data[..k])
                        .map_err(|e| Error::io("writing chunk object", e))?;
                    // A cut means there is at least one more byte: the file has ≥ 2
                    // chunks, so this piece is a chunk object (suffix P).
                    let offset = self.chunks.last().map_or(0, |c| c.offset + c.size);
                    let (hash, size) = self.commit_piece(Suffix::Partial)?;
                    self.chunks.push(Chunk { offset, size, hash });
                    self.current = Some(self.start_piece()?);
                    data = &data[k..];
                }
            }
        }
        Ok(())
    }

    /// Ends the file: commits the last piece and returns how the file was stored.
    ///
    /// Errors: [`Error::Io`].
    pub fn finish(mut self) -> Result<StoredFile> {
        let size = self.chunker.position();
        if self.chunks.is_empty() {
            let (hash, _) = self.commit_piece(Suffix::None)?;
            return Ok(StoredFile {
                size,
                compressed: self.compressed,
                hash: Some(hash),
                chunks: Vec::new(),
                stored_size: self.stored_size,
                new_objects: self.new_objects,
            });
        }
        let offset = self.chunker.chunk_start();
        let (hash, size_last) = self.commit_piece(Suffix::Partial)?;
        self.chunks.push(Chunk {
            offset,
            size: size_last,
            hash,
        });
        Ok(StoredFile {
            size,
            compressed: self.compressed,
            hash: None,
            chunks: std::mem::take(&mut self.chunks),
            stored_size: self.stored_size,
            new_objects: self.new_objects,
        })
    }
}

impl Write for ChunkingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.feed(buf).map_err(|e| match e {
            Error::Io { source, .. } => source,
            other => std::io::Error::other(other),
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Indices of the chunks that overlap the byte range `[offset, offset + len)` (docs/format.md §4.6).
///
/// `chunks` must be ordered by offset and tile the file (as [`crate::CatalogReader::chunks`]
/// returns them for a valid catalog). Binary search, O(log n). Empty for `len == 0` or a
/// range starting at or beyond the end of the file; a range reaching past the end is
/// clipped to the last chunk.
pub fn chunk_range(chunks: &[Chunk], offset: u64, len: u64) -> Range<usize> {
    if len == 0 {
        return 0..0;
    }
    let end = offset.saturating_add(len);
    let first = chunks.partition_point(|c| c.offset.saturating_add(c.size) <= offset);
    let last = chunks.partition_point(|c| c.offset < end);
    if first >= last { 0..0 } else { first..last }
}

/// One chunk's share of a read: bytes `[within, within + len)` of chunk `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSpan {
    /// Index into the chunk list.
    pub index: usize,
    /// Start offset inside the chunk's uncompressed bytes.
    pub within: u64,
    /// Number of bytes to take from this chunk.
    pub len: u64,
}

/// The pieces of a read of `[offset, offset + len)` from a chunked file, in order (docs/format.md
/// §4.6): concatenating `chunk[index][within..within + len]` of each gives the requested
/// bytes (clipped at the end of the file). Same preconditions as [`chunk_range`].
pub fn chunk_spans(chunks: &[Chunk], offset: u64, len: u64) -> Vec<ChunkSpan> {
    let end = offset.saturating_add(len);
    chunk_range(chunks, offset, len)
        .map(|index| {
            let c = &chunks[index];
            let start = offset.max(c.offset);
            let stop = end.min(c.offset.saturating_add(c.size));
            ChunkSpan {
                index,
                within: start - c.offset,
                len: stop.saturating_sub(start),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::decompress;
    use sha2::{Digest, Sha256};

    /// `S(n)` of docs/format.md §11.6: SHA256(u64_le(0)) || SHA256(u64_le(1)) || … truncated to n.
    fn stream(n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 32);
        let mut i = 0u64;
        while out.len() < n {
            out.extend_from_slice(&Sha256::digest(i.to_le_bytes()));
            i += 1;
        }
        out.truncate(n);
        out
    }

    fn sha1_hex(b: &[u8]) -> String {
        ContentHash::of_bytes(HashAlgorithm::Sha1, b).to_hex()
    }

    /// The boundary algorithm of docs/format.md §4.3 transcribed literally, as an oracle.
    fn reference_cuts(data: &[u8], p: ChunkParams) -> Vec<u64> {
        let n = data.len() as u64;
        let t = p.threshold();
        let hit = |x: u32| x.abs_diff(MAGIC) < t || x == u32::MAX;
        let mut last = 0u64;
        let mut cuts = Vec::new();
        loop {
            let p0 = last + p.min - 32;
            if p0 >= n {
                break;
            }
            let mut x = 0u32;
            for q in p0..(last + p.min).min(n) {
                x = xor32(x, data[q as usize]);
            }
            let mut cut = None;
            for q in (last + p.min)..(last + p.max).min(n) {
                x = xor32(x, data[q as usize]);
                if hit(x) {
                    cut = Some(q);
                    break;
                }
            }
            let c = match cut {
                Some(c) => c,
                None if last + p.max < n => last + p.max,
                None => break,
            };
            cuts.push(c);
            last = c;
        }
        cuts
    }

    #[test]
    fn xor32_state_sequence() {
        // docs/format.md §11.6: the upstream unit test's table (input byte, state after it), from 0.
        const TABLE: [(u8, u32); 48] = [
            (5, 5),
            (255, 245),
            (0, 490),
            (32, 1012),
            (27, 2035),
            (11, 4077),
            (87, 8077),
            (128, 16282),
            (127, 32587),
            (224, 65142),
            (63, 130259),
            (11, 260525),
            (1, 521051),
            (103, 1042129),
            (73, 2084331),
            (22, 4168640),
            (235, 8337259),
            (17, 16674503),
            (3, 33349005),
            (90, 66698048),
            (210, 133396050),
            (163, 266791943),
            (12, 533583874),
            (79, 1067167819),
            (53, 2134335651),
            (2, 4268671300),
            (100, 4242375404),
            (193, 4189783321),
            (64, 4084599410),
            (242, 3874231318),
            (14, 3453495330),
            (111, 2612023339),
            (83, 929079301),
            (253, 1858158839),
            (207, 3716317473),
            (172, 3137667822),
            (62, 1980368354),
            (190, 3960736634),
            (114, 3626505862),
            (39, 2958044459),
            (6, 1621121616),
            (175, 3242243087),
            (93, 2189518915),
            (238, 84070504),
            (184, 168140904),
            (84, 336281732),
            (29, 672563477),
            (200, 1345127138),
        ];
        let mut x = 0u32;
        for (i, (b, want)) in TABLE.iter().enumerate() {
            x = xor32(x, *b);
            assert_eq!(x, *want, "step {i}");
        }
    }

    #[test]
    fn threshold_and_params() {
        assert_eq!(ChunkParams::default().threshold(), 511);
        assert_eq!(
            ChunkParams::new(1000, 2000, 4000).unwrap().threshold(),
            2147483
        );
        assert_eq!(
            ChunkParams::new(64, 128, 256).unwrap().threshold(),
            33554431
        );
        assert!(ChunkParams::new(31, 64, 128).is_err());
        assert!(ChunkParams::new(64, 64, 128).is_err());
        assert!(ChunkParams::new(64, 128, 128).is_err());
        assert!(matches!(
            Chunker::new(ChunkParams {
                min: 100,
                avg: 50,
                max: 200
            }),
            Err(Error::ChunkParams(_))
        ));
    }

    #[test]
    fn hit_window_edges() {
        let c = Chunker::new(ChunkParams::default()).unwrap();
        assert!(c.hit(0x7FFF_FE01) && c.hit(0x800001FD) && c.hit(MAGIC));
        assert!(!c.hit(0x7FFF_FE00) && !c.hit(0x800001FE));
        assert!(c.hit(0xFFFF_FFFF), "the -fwrapv abs(INT_MIN) artefact");
        assert!(!c.hit(0) && !c.hit(0xFFFF_FFFE));
    }

    #[test]
    fn vector_3000() {
        let s = stream(3000);
        assert!(sha1_hex(&s).starts_with("ee492655"));
        let p = ChunkParams::new(1000, 2000, 4000).unwrap();
        assert_eq!(cut_points(&s, p).unwrap(), vec![2516]);
    }

    #[test]
    fn vector_4096() {
        let s = stream(4096);
        assert!(sha1_hex(&s).starts_with("e98b2b9f"));
        let p = ChunkParams::new(64, 128, 256).unwrap();
        let expected = vec![
            78u64, 149, 257, 513, 583, 726, 899, 1073, 1237, 1302, 1411, 1617, 1760, 1866, 1941,
            2027, 2167, 2251, 2333, 2516, 2633, 2709, 2787, 2985, 3076, 3228, 3484, 3603, 3741,
            3838, 3908, 3976, 4087,
        ];
        assert_eq!(cut_points(&s, p).unwrap(), expected);
        assert_eq!(reference_cuts(&s, p), expected);
        // Byte-at-a-time feeding gives the same cuts.
        let mut c = Chunker::new(p).unwrap();
        let mut cuts = Vec::new();
        for b in &s {
            cuts.extend(c.push(std::slice::from_ref(b)));
        }
        assert_eq!(cuts, expected);
    }

    #[test]
    fn vector_40mib_defaults_and_zeros() {
        let s = stream(41_943_040);
        assert!(sha1_hex(&s).starts_with("cd92f5dc"));
        let expected = vec![6143420u64, 18208890, 26933804, 31307251, 36591734];
        let mut c = Chunker::new(ChunkParams::default()).unwrap();
        let mut cuts = Vec::new();
        for block in s.chunks(65_536) {
            cuts.extend(c.push(block));
        }
        assert_eq!(cuts, expected);

        let zeros = vec![0u8; 41_943_040];
        assert_eq!(
            cut_points(&zeros, ChunkParams::default()).unwrap(),
            vec![16_777_216, 33_554_432]
        );
        // A hard cut landing exactly on EOF is not a cut.
        assert_eq!(
            cut_points(&zeros[..33_554_432], ChunkParams::default()).unwrap(),
            vec![16_777_216]
        );
    }

    #[test]
    fn ffffffff_is_a_hit() {
        // 0x01 bytes set one new low bit per step: after 32 of them x = 0xFFFFFFFF, far
        // outside the window (T = 3), so only the artefact rule cuts here.
        let p = ChunkParams::new(32, 1 << 30, 1 << 31).unwrap();
        assert_eq!(p.threshold(), 3);
        let data = vec![0x01u8; 100];
        // Position 32 is the first tested byte; x after it is 0xFFFFFFFF -> cut at 32, then
        // every 32 bytes.
        assert_eq!(cut_points(&data, p).unwrap(), vec![32, 64, 96]);
        assert_eq!(reference_cuts(&data, p), vec![32, 64, 96]);
    }

    fn store_file(
        data: &[u8],
        writes: &[usize],
        p: ChunkParams,
        compressed: bool,
    ) -> (tempfile::TempDir, LocalStore, StoredFile) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let mut w = ChunkingWriter::new(&store, p, HashAlgorithm::Sha1, compressed).unwrap();
        let mut rest = data;
        let mut i = 0;
        while !rest.is_empty() {
            let n = writes
                .get(i % writes.len().max(1))
                .copied()
                .unwrap_or(rest.len())
                .clamp(1, rest.len());
            w.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
            i += 1;
        }
        let f = w.finish().unwrap();
        (dir, store, f)
    }

    fn reassemble(store: &LocalStore, f: &StoredFile) -> Vec<u8> {
        let read = |h: &ContentHash, s: Suffix, size: u64| {
            let stored = store.get(h, s).unwrap();
            crate::compression::verify(&stored, h).unwrap();
            if f.compressed {
                decompress(&stored, size).unwrap()
            } else {
                stored
            }
        };
        match &f.hash {
            Some(h) => read(h, Suffix::None, f.size),
            None => f
                .chunks
                .iter()
                .flat_map(|c| read(&c.hash, Suffix::Partial, c.size))
                .collect(),
        }
    }

    #[test]
    fn writer_chunks_and_stores() {
        let s = stream(4096);
        let p = ChunkParams::new(64, 128, 256).unwrap();
        let (dir, store, f) = store_file(&s, &[1000, 7, 64 * 1024], p, true);
        assert!(f.is_chunked());
        assert_eq!(f.hash, None);
        assert_eq!(f.size, 4096);
        assert_eq!(f.chunks.len(), 34);
        assert_eq!(f.chunks[1].offset, 78);
        assert_eq!(
            f.chunks[33],
            Chunk {
                offset: 4087,
                size: 9,
                hash: f.chunks[33].hash
            }
        );
        assert_eq!(reassemble(&store, &f), s);
        for c in &f.chunks {
            assert!(store.contains(&c.hash, Suffix::Partial));
            assert!(!store.contains(&c.hash, Suffix::None));
        }
        // No temporaries left.
        assert_eq!(
            std::fs::read_dir(dir.path().join("data/txn"))
                .unwrap()
                .count(),
            0
        );
        // The entry accepts it.
        let mut e = Entry::regular("f", 0o644, 0, 0, 0, 0, f.chunks[0].hash);
        f.apply_to(&mut e);
        e.validate("/f").unwrap();
        assert!(e.is_chunked() || !e.chunks.is_empty());
    }

    #[test]
    fn writer_whole_file_cases() {
        let p = ChunkParams::new(64, 128, 256).unwrap();
        // Empty file: the well-known empty object (docs/format.md §11.3 is C zlib; zlib-rs may
        // differ, so check content only).
        let (_d, store, f) = store_file(b"", &[1], p, true);
        assert_eq!((f.size, f.is_chunked()), (0, false));
        assert_eq!(reassemble(&store, &f), b"");
        // ≤ min: one whole-file object without suffix.
        let s = stream(64);
        let (_d, store, f) = store_file(&s, &[10], p, true);
        let h = f.hash.unwrap();
        assert!(store.contains(&h, Suffix::None) && !store.contains(&h, Suffix::Partial));
        assert_eq!(reassemble(&store, &f), s);
        // Uncompressed: the object is the bytes themselves (docs/format.md §3.2 code 1).
        let (_d, store, f) = store_file(b"hello\n", &[3], p, false);
        let h = f.hash.unwrap();
        assert_eq!(h, ContentHash::of_bytes(HashAlgorithm::Sha1, b"hello\n"));
        assert_eq!(store.get(&h, Suffix::None).unwrap(), b"hello\n");
        assert!(!f.compressed);
        // Exactly max bytes: a hard cut on EOF is not a cut.
        let zeros = vec![0u8; 256];
        let (_d, _store, f) = store_file(&zeros, &[100], p, true);
        assert!(!f.is_chunked());
        let zeros = vec![0u8; 257];
        let (_d, store, f) = store_file(&zeros, &[100], p, false);
        assert_eq!(
            f.chunks
                .iter()
                .map(|c| (c.offset, c.size))
                .collect::<Vec<_>>(),
            vec![(0, 256), (256, 1)]
        );
        assert_eq!(reassemble(&store, &f), zeros);
    }

    /// The stock fixture's `big.bin` (204800 bytes) was chunked by `cvmfs_swissknife` with
    /// min/avg/max 16/32/64 KiB: our boundaries must be the same, and with C zlib
    /// (`zlib-compat`) the chunk objects must be byte-identical too.
    #[test]
    fn matches_stock_cvmfs_chunks() {
        let srv = std::path::Path::new(crate::test_support::STOCK_REPO).join("srv");
        let stock: [(u64, &str); 6] = [
            (0, "90207e08580f001130d87aab09b75e09da461033"),
            (23491, "0a764ec4b4f81e772a26e54c9230e99939d6c1e0"),
            (40519, "f7a923a55e2eb1d9c6f2995146acc45a0dafa5d8"),
            (66148, "41662b0b97a7537863c86902bfad73b217580f6d"),
            (128812, "260c7efee14e061d41c17a242cd17c432d15df7d"),
            (156396, "317b024879444c42f8f33691fb215ea153513416"),
        ];
        let mut data = Vec::new();
        for (offset, hex) in stock {
            let h = ContentHash::parse_hex(hex).unwrap();
            let stored = std::fs::read(srv.join(h.object_path(Suffix::Partial))).unwrap();
            assert_eq!(data.len() as u64, offset);
            data.extend(decompress(&stored, 1 << 20).unwrap());
        }
        assert_eq!(data.len(), 204_800);
        let p = ChunkParams::new(16_384, 32_768, 65_536).unwrap();
        let (_d, store, f) = store_file(&data, &[4096, 100_000, 1], p, true);
        let ours: Vec<u64> = f.chunks.iter().map(|c| c.offset).collect();
        let theirs: Vec<u64> = stock.iter().map(|c| c.0).collect();
        assert_eq!(ours, theirs);
        assert_eq!(reassemble(&store, &f), data);
        if cfg!(feature = "zlib-compat") {
            let hashes: Vec<String> = f.chunks.iter().map(|c| c.hash.to_hex()).collect();
            let want: Vec<String> = stock.iter().map(|c| c.1.to_string()).collect();
            assert_eq!(
                hashes, want,
                "C zlib chunk objects are byte-identical to stock"
            );
        }
    }

    #[test]
    fn ranges_and_spans() {
        let h = ContentHash::of_bytes(HashAlgorithm::Sha1, b"x");
        let chunks: Vec<Chunk> = [(0u64, 10u64), (10, 5), (15, 20)]
            .iter()
            .map(|&(offset, size)| Chunk {
                offset,
                size,
                hash: h,
            })
            .collect();
        assert_eq!(chunk_range(&chunks, 0, 1), 0..1);
        assert_eq!(chunk_range(&chunks, 9, 2), 0..2);
        assert_eq!(chunk_range(&chunks, 10, 5), 1..2);
        assert_eq!(chunk_range(&chunks, 10, 6), 1..3);
        assert_eq!(chunk_range(&chunks, 0, 100), 0..3);
        assert_eq!(chunk_range(&chunks, 34, 100), 2..3);
        assert_eq!(chunk_range(&chunks, 35, 1), 0..0);
        assert_eq!(chunk_range(&chunks, 5, 0), 0..0);
        assert_eq!(chunk_range(&[], 0, 10), 0..0);
        assert_eq!(chunk_range(&chunks, u64::MAX, u64::MAX), 0..0);
        assert_eq!(
            chunk_spans(&chunks, 8, 10),
            vec![
                ChunkSpan {
                    index: 0,
                    within: 8,
                    len: 2
                },
                ChunkSpan {
                    index: 1,
                    within: 0,
                    len: 5
                },
                ChunkSpan {
                    index: 2,
                    within: 0,
                    len: 3
                },
            ]
        );
        assert_eq!(
            chunk_spans(&chunks, 30, 100),
            vec![ChunkSpan {
                index: 2,
                within: 15,
                len: 5
            }]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(40))]

        #[test]
        fn boundaries_do_not_depend_on_splits(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..6000),
            splits in proptest::collection::vec(1usize..700, 1..20),
            min in 32u64..200,
        ) {
            let p = ChunkParams::new(min, min * 2, min * 4).unwrap();
            let whole = cut_points(&data, p).unwrap();
            proptest::prop_assert_eq!(&whole, &reference_cuts(&data, p));
            let mut c = Chunker::new(p).unwrap();
            let mut cuts = Vec::new();
            let mut rest = &data[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = splits[i % splits.len()].min(rest.len());
                cuts.extend(c.push(&rest[..n]));
                rest = &rest[n..];
                i += 1;
            }
            proptest::prop_assert_eq!(cuts, whole);
        }

        #[test]
        fn chunk_compress_reassemble(
            // Low-entropy bytes make hits and hard cuts both likely.
            data in proptest::collection::vec(0u8..4, 0..3000),
            splits in proptest::collection::vec(1usize..900, 1..8),
            compressed in proptest::bool::ANY,
        ) {
            let p = ChunkParams::new(64, 128, 256).unwrap();
            let (_d, store, f) = store_file(&data, &splits, p, compressed);
            proptest::prop_assert_eq!(f.size, data.len() as u64);
            let cuts = cut_points(&data, p).unwrap();
            if cuts.is_empty() {
                proptest::prop_assert!(f.hash.is_some() && f.chunks.is_empty());
            } else {
                let starts: Vec<u64> = f.chunks.iter().skip(1).map(|c| c.offset).collect();
                proptest::prop_assert_eq!(starts, cuts);
            }
            proptest::prop_assert_eq!(reassemble(&store, &f), data.clone());
            // Random access through the spans gives the same bytes.
            if f.is_chunked() {
                let pieces: Vec<Vec<u8>> = f.chunks.iter().map(|c| {
                    let st = store.get(&c.hash, Suffix::Partial).unwrap();
                    if compressed { decompress(&st, c.size).unwrap() } else { st }
                }).collect();
                let (off, len) = (data.len() as u64 / 3, data.len() as u64 / 2);
                let mut got = Vec::new();
                for s in chunk_spans(&f.chunks, off, len) {
                    got.extend_from_slice(&pieces[s.index][s.within as usize..(s.within + s.len) as usize]);
                }
                proptest::prop_assert_eq!(&got[..], &data[off as usize..(off + len) as usize]);
            }
        }
    }
}
