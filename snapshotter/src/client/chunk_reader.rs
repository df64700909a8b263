//! A chunked file (docs/format.md §4.6) read as one stream from the cache, each chunk
//! fetched into it ([`ObjectCache::prefetch_and_open`]) the first time a read touches it: how
//! read-ahead reads the headers of a large program or library
//! ([`crate::client::elf`]) without fetching the chunks it does not look at.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use catalog::Chunk;

use crate::client::cache::{ObjectCache, ObjectRequest, PinnedFile};

/// A [`Read`] + [`Seek`] view of a chunked file's content in `cache`.
pub struct ChunkReader<'a> {
    cache: &'a ObjectCache,
    chunks: &'a [Chunk],
    compressed: bool,
    size: u64,
    pos: u64,
    open: HashMap<usize, PinnedFile>,
}

impl<'a> ChunkReader<'a> {
    /// The file made of `chunks` (ordered by offset, tiling the file), stored compressed
    /// or not as `compressed` says.
    pub fn new(cache: &'a ObjectCache, chunks: &'a [Chunk], compressed: bool) -> Self {
        let size = chunks.last().map_or(0, |c| c.offset + c.size);
        ChunkReader {
            cache,
            chunks,
            compressed,
            size,
            pos: 0,
            open: HashMap::new(),
        }
    }

    /// The cached file of chunk `index`, fetched first if needed.
    fn chunk_file(&mut self, index: usize) -> std::io::Result<&PinnedFile> {
        if !self.open.contains_key(&index) {
            let req = ObjectRequest::chunk(&self.chunks[index], self.compressed);
            let file = self
                .cache
                .prefetch_and_open(&req)
                .map_err(std::io::Error::other)?
                .ok_or_else(|| std::io::Error::other("chunk does not fit in the cache"))?;
            self.open.insert(index, file);
        }
        self.open
            .get(&index)
            .ok_or_else(|| std::io::Error::other("chunk file vanished"))
    }
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() || self.pos >= self.size {
            return Ok(0);
        }
        let pos = self.pos;
        let index = self
            .chunks
            .partition_point(|c| c.offset + c.size <= pos)
            .min(self.chunks.len() - 1);
        let chunk = &self.chunks[index];
        let within = pos - chunk.offset;
        let len = buf
            .len()
            .min(usize::try_from(chunk.size - within).unwrap_or(usize::MAX));
        let n = self.chunk_file(index)?.read_at(&mut buf[..len], within)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "cached chunk shorter than its catalog row",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ChunkReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::cache::tests::MemorySource;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    /// `body` cut into `size`-byte chunks stored in `src`.
    fn chunked(src: &MemorySource, body: &[u8], size: usize) -> Vec<Chunk> {
        body.chunks(size)
            .enumerate()
            .map(|(i, part)| Chunk {
                offset: (i * size) as u64,
                size: part.len() as u64,
                hash: src.add(part),
            })
            .collect()
    }

    #[test]
    fn reads_across_chunks_and_seeks() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let chunks = chunked(&src, &body, 3000);
        let cache = ObjectCache::open(dir.path(), src.clone()).unwrap();
        let mut reader = ChunkReader::new(&cache, &chunks, true);
        assert_eq!(reader.seek(SeekFrom::End(0)).unwrap(), 10_000);
        // Only the chunk a read touches is fetched.
        reader.seek(SeekFrom::Start(9_500)).unwrap();
        let mut tail = Vec::new();
        reader.read_to_end(&mut tail).unwrap();
        assert_eq!(tail, body[9_500..]);
        assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
        // A read across a chunk boundary.
        reader.seek(SeekFrom::Start(2_990)).unwrap();
        let mut across = [0u8; 20];
        reader.read_exact(&mut across).unwrap();
        assert_eq!(across, body[2_990..3_010]);
        assert_eq!(src.fetches.load(Ordering::SeqCst), 3);
        assert!(reader.seek(SeekFrom::Current(-20_000)).is_err());
    }

    #[test]
    fn an_elf_file_s_dependencies_read_from_its_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let body = include_bytes!("../../tests/fixtures/elf/needs-a.so");
        let chunks = chunked(&src, body, 512);
        let cache = ObjectCache::open(dir.path(), src.clone()).unwrap();
        let deps = crate::client::elf::dependencies(ChunkReader::new(&cache, &chunks, true));
        let whole = crate::client::elf::dependencies(std::io::Cursor::new(&body[..]));
        assert!(deps.is_some());
        assert_eq!(deps, whole);
        // The headers, the dynamic segment and its strings: not the whole file.
        let fetched = src.fetches.load(Ordering::SeqCst);
        assert!(
            fetched < chunks.len(),
            "{fetched} of {} chunks",
            chunks.len()
        );
    }
}
