//! The data path: what a read of a regular file needs (the whole decompressed object from
//! the cache, or the chunk list of a chunked file, whose chunks are fetched when a read
//! first touches them, docs/format.md §4.6), and the reads themselves.
//!
//! With a handle (`OPEN`) the object stays pinned in the cache while the file is open; in
//! no-open mode a `READ` names only the inode: the object is found from the inode's node
//! and pinned for that read only (a pin held between reads would stop the cache's
//! eviction, see [`crate::client::cache`]).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use catalog::{Chunk, EntryKind};
use fuser::{Errno, INodeNo};

use super::errno::report;
use super::{Node, StrataFs, lock};
use crate::client::cache::{ObjectRequest, PinnedFile};
use crate::client::readahead::Content;
use crate::{Error, Result};

/// An open regular file.
pub(super) enum OpenFile {
    /// Unchunked: the cached, decompressed object (pinned while open).
    Whole(PinnedFile),
    /// Chunked (docs/format.md §4.6): chunk objects are fetched when a read first touches them.
    Chunked {
        path: String,
        chunks: Vec<Chunk>,
        compressed: bool,
        files: Mutex<HashMap<usize, Arc<PinnedFile>>>,
    },
}

/// An open file with the node it was opened as.
pub(super) type OpenHandle = (Arc<Node>, Arc<OpenFile>);

impl StrataFs {
    /// No-open mode: the file of `ino` for one read (its object pinned until dropped);
    /// `at_start` if the read is at offset 0; `pid` the reading process (see
    /// [`StrataFs::open_file`]).
    pub(super) fn file_of_inode(
        &self,
        ino: INodeNo,
        at_start: bool,
        pid: u32,
    ) -> std::result::Result<OpenFile, Errno> {
        let node = self.node(ino)?;
        require_regular(&node)?;
        self.open_file(&node, at_start, pid)
            .map_err(|e| report("read", &node.path, &e))
    }

    /// Fetches what a read of `node` needs first: the whole object, or the chunk list; and
    /// starts the read-ahead of its directory (a file opened is read, and so, likely, are
    /// its neighbours) unless the file came in a startup pack (the pack knows which of its
    /// neighbours a start reads). `opening`: an `OPEN`, or a read at offset 0 in no-open
    /// mode; an unchunked ELF file then has its libraries read ahead (a chunked one when
    /// its first chunk is read, [`StrataFs::read_file`]). `pid`: the process opening it
    /// (a scan's read-ahead follows one reader).
    pub(super) fn open_file(&self, node: &Node, opening: bool, pid: u32) -> Result<OpenFile> {
        let dir = node.path.rsplit_once('/').map_or("", |(dir, _)| dir);
        // A chunked file's chunk list first (a catalog query, no fetch): whether it came
        // in a pack is known by its chunks.
        let chunked = self.chunked_file(node)?;
        // The page-fill reader's open of a started program ([`super::page_fill`]): no
        // read-ahead, no trace.
        if self.page_fill.is_reader(pid) {
            return match chunked {
                Some(file) => Ok(file),
                None => self.fetch_whole(node),
            };
        }
        let repo = self.repo();
        let from_pack = match &chunked {
            Some(OpenFile::Chunked { chunks, .. }) => chunks_from_pack(repo.cache(), chunks),
            _ => node
                .entry
                .hash
                .is_some_and(|h| repo.cache().came_in_a_pack(&h)),
        };
        if from_pack {
            if let Some(read_ahead) = self.shared.read_ahead.get() {
                read_ahead.known_directory(&self.repo(), dir);
            }
        } else {
            self.read_ahead_directory(dir, &node.path, node.entry.size, pid);
        }
        let file = match chunked {
            Some(file) => file,
            None => self.fetch_whole(node)?,
        };
        // A program or library about to be mapped: the loader opens its libraries next.
        if opening
            && !from_pack
            && let (OpenFile::Whole(cached), Some(hash), Some(read_ahead)) =
                (&file, node.entry.hash, self.shared.read_ahead.get())
        {
            read_ahead.opened_file(&self.repo(), &node.path, cached, || Content::Whole(hash));
        }
        if let Some(trace) = self.shared.trace.get() {
            trace.record(&node.path);
        }
        Ok(file)
    }

    /// The open file of chunked `node`: its chunk list, from the catalog of the node's own
    /// revision (an old-revision inode, a file open across a switch and read by inode in
    /// no-open mode, must not get the chunks of whatever the path holds now); nothing is
    /// fetched. `None` for an unchunked file.
    fn chunked_file(&self, node: &Node) -> Result<Option<OpenFile>> {
        let entry = &node.entry;
        if entry.flags & catalog::entry::FLAG_EXTERNAL != 0 {
            return Err(Error::Unsupported {
                path: node.path.clone(),
                reason: "external data (docs/format.md §6.6 flag 128) is not supported".into(),
            });
        }
        if !entry.is_chunked() {
            return Ok(None);
        }
        let repo = self.repo_of(node);
        let catalog = repo
            .loaded_catalog(&node.catalog)
            .ok_or_else(|| Error::NotFound(node.path.clone()))?;
        let chunks = repo.chunks(&catalog, &node.path, entry.size)?;
        Ok(Some(OpenFile::Chunked {
            path: node.path.clone(),
            chunks,
            compressed: entry.compressed,
            files: Mutex::new(HashMap::new()),
        }))
    }

    /// The open file of unchunked `node`: its object, fetched unless cached.
    fn fetch_whole(&self, node: &Node) -> Result<OpenFile> {
        let Some(req) = ObjectRequest::whole(&node.entry) else {
            return Err(Error::Unsupported {
                path: node.path.clone(),
                reason: "regular file without content hash or chunks".into(),
            });
        };
        let started = std::time::Instant::now();
        let file = self.repo().cache().get(&req)?;
        log_wait(&node.path, None, started);
        Ok(OpenFile::Whole(file))
    }

    /// Reads up to `size` bytes at `offset` of an open file for process `pid` (the
    /// page-fill reader's reads fetch nothing and count as no read).
    pub(super) fn read_file(
        &self,
        file: &OpenFile,
        offset: u64,
        size: u32,
        pid: u32,
    ) -> Result<Vec<u8>> {
        match file {
            OpenFile::Whole(f) => read_at(f, offset, size as usize, "cached object"),
            OpenFile::Chunked {
                path,
                chunks,
                compressed,
                files,
            } => {
                // Only the chunks this read touches are fetched (docs/format.md §4.6).
                let spans = catalog::chunking::chunk_spans(chunks, offset, u64::from(size));
                let mut out = Vec::with_capacity(spans.iter().map(|s| s.len as usize).sum());
                let reader = self.page_fill.is_reader(pid);
                for span in spans {
                    let Some(chunk) = chunks.get(span.index) else {
                        break;
                    };
                    let cached = lock(files).get(&span.index).cloned();
                    let chunk_file = match cached {
                        Some(f) => f,
                        None if reader => {
                            let req = ObjectRequest::chunk(chunk, *compressed);
                            let f = Arc::new(self.repo().cache().open_cached(&req)?.ok_or_else(
                                || {
                                    Error::NotFound(format!(
                                        "{path}: chunk {} not cached",
                                        span.index
                                    ))
                                },
                            )?);
                            lock(files).insert(span.index, f.clone());
                            f
                        }
                        None => {
                            let repo = self.repo();
                            // A pack holds the chunks a start reads (the trace lists them):
                            // the others are not read ahead.
                            let from_pack = chunks_from_pack(repo.cache(), chunks);
                            if !from_pack && let Some(read_ahead) = self.shared.read_ahead.get() {
                                read_ahead.chunks_after(&repo, chunks, span.index, *compressed);
                            }
                            let started = std::time::Instant::now();
                            let f = Arc::new(
                                repo.cache()
                                    .get(&ObjectRequest::chunk(chunk, *compressed))?,
                            );
                            log_wait(path, Some(span.index), started);
                            // A chunked program or library: its headers are in chunk 0.
                            if span.index == 0
                                && !from_pack
                                && let Some(read_ahead) = self.shared.read_ahead.get()
                            {
                                read_ahead.opened_file(&repo, path, &f, || {
                                    Content::Chunked(chunks.clone(), *compressed)
                                });
                            }
                            lock(files).insert(span.index, f.clone());
                            f
                        }
                    };
                    let bytes = read_at(&chunk_file, span.within, span.len as usize, path)?;
                    if !reader && let Some(trace) = self.shared.trace.get() {
                        trace.record_chunk(path, span.index);
                    }
                    let short = bytes.len() < span.len as usize;
                    out.extend_from_slice(&bytes);
                    if short {
                        break;
                    }
                }
                Ok(out)
            }
        }
    }
}

/// Whether any of a chunked file's `chunks` came in a startup pack: the pack then holds
/// the chunks a start reads (not necessarily all, nor the first), and read-ahead leaves
/// the file and its directory alone.
fn chunks_from_pack(cache: &crate::client::cache::ObjectCache, chunks: &[Chunk]) -> bool {
    cache.any_came_in_a_pack(chunks.iter().map(|c| &c.hash))
}

/// Only regular files are opened or read: `EISDIR` for a directory, `EINVAL` otherwise.
pub(super) fn require_regular(node: &Node) -> std::result::Result<(), Errno> {
    match node.entry.kind {
        EntryKind::Regular => Ok(()),
        EntryKind::Directory => Err(Errno::EISDIR),
        _ => Err(Errno::EINVAL),
    }
}

/// Logs (at debug) a read that waited for its object: what a cold start pays for, one line
/// per wait, to see which reads were not fetched ahead.
fn log_wait(path: &str, chunk: Option<usize>, started: std::time::Instant) {
    let waited = started.elapsed();
    if waited >= std::time::Duration::from_millis(1) {
        tracing::debug!(
            path,
            ?chunk,
            ms = waited.as_millis() as u64,
            "read waited for its object"
        );
    }
}

/// `pread` until `len` bytes or end of file.
fn read_at(file: &File, offset: u64, len: usize, what: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Io {
                    context: format!("reading {what}"),
                    source,
                });
            }
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pread_stops_at_end_of_file() {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, b"0123456789").unwrap();
        assert_eq!(read_at(&f, 3, 4, "t").unwrap(), b"3456");
        assert_eq!(read_at(&f, 8, 100, "t").unwrap(), b"89");
        assert!(read_at(&f, 20, 5, "t").unwrap().is_empty());
    }
}
