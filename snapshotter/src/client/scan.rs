//! The state of a scan's read-ahead ([`crate::client::readahead`]): the walk of the tree
//! that queues fetches in the reader's order, and how far ahead of the reader it is.
//!
//! A walk ([`Walk`]) is depth-first in listing order, the order `READDIR` returns and
//! `tar` and `find` read: each directory's entries in turn, a subdirectory entered where
//! it stands, then on in the parent after the directory it started in, up to the top
//! (the highest directory the reader has opened files in, within its image root). The
//! [`Scan`] beside it (under the read-ahead queue's lock) holds the walk between its
//! steps, the directories it listed (a reader that enters another one has left the walk
//! behind: a new walk starts there), and the files it queued that the reader has not
//! opened yet, in walk order: the reader reads in the same order, so a file it opens
//! means every file queued before it is behind it too. That list is how far ahead the
//! walk is, in bytes and objects; past [`SCAN_AHEAD_BYTES`] or [`SCAN_AHEAD_FILES`] the
//! walk waits for the reader.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::client::repository::{Found, MountedRevision};

/// How far a scan reads ahead of its reader at most: bytes of files it queued that the
/// reader has not opened yet.
pub const SCAN_AHEAD_BYTES: u64 = 256 << 20;
/// How long the reader may open nothing before another thread's opens take the walk over
/// (and before the walk waits for it).
pub const READER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);
/// The same bound in objects (a chunked file's chunks count one each).
pub const SCAN_AHEAD_FILES: usize = 4 * 1024;
/// Directories a walk remembers having listed at most (then it forgets them all: a
/// reader entering one of them starts a new walk there).
const MAX_WALKED: usize = 16 * 1024;

/// A scan's depth-first walk of the tree its reader reads.
pub struct Walk {
    /// The revision it walks.
    pub(crate) repo: Arc<MountedRevision>,
    /// [`Scan::generation`] when it started.
    pub(crate) generation: u64,
    /// The directories being walked, outermost first, with their entries still to take.
    pub(crate) stack: Vec<Frame>,
    /// The outermost directory walked so far (where it goes up from).
    pub(crate) start: String,
    /// No step taken yet: the first step is the reader's own directory, queued first.
    pub(crate) first: bool,
}

/// One directory of a [`Walk`].
pub struct Frame {
    /// Its repository path.
    pub(crate) dir: String,
    /// Its entries not taken yet, in listing order.
    pub(crate) rest: VecDeque<Found>,
}

/// A scan's read-ahead state.
#[derive(Default)]
pub struct Scan {
    /// Bumped by every new walk and by the end of a scan: what older walks queued is
    /// dropped when a worker takes it.
    pub(crate) generation: u64,
    /// The current walk, between its steps (`None` while a step runs, or when there is
    /// no walk).
    pub(crate) walk: Option<Box<Walk>>,
    /// A step of the current walk is queued or running.
    pub(crate) stepping: bool,
    /// The highest directory the reader has opened files in during the scan, within one
    /// image root: how far up a walk goes. `None`: no scan under way.
    pub(crate) top: Option<String>,
    /// The reader the walk follows: the FUSE request pid of its opens, which is the
    /// kernel's id of the opening thread (0 when the opener is outside the mount's pid
    /// namespace). Its opens move the walk; others' do not, until it has opened nothing
    /// for [`READER_IDLE`] (a `find -exec` or `xargs` runs a new process per batch).
    pub(crate) reader: Option<u32>,
    /// When the reader last opened a file.
    reader_seen: Option<std::time::Instant>,
    /// Directories (keys) the current walk listed.
    walked: HashMap<u64, u64>,
    /// Files (keys, bytes) the current walk queued that the reader has not opened yet,
    /// in walk order; the first has sequence number `first`.
    ahead: VecDeque<(u64, u64)>,
    /// The sequence number of each file in `ahead`.
    index: HashMap<u64, u64>,
    first: u64,
    ahead_bytes: u64,
}

impl Scan {
    /// Whether a scan is under way (a walk started and the scan has not ended).
    pub(crate) fn under_way(&self) -> bool {
        self.top.is_some()
    }

    /// Whether the scan under way follows thread `pid` in this open: its reader, or,
    /// when the reader has opened nothing for [`READER_IDLE`], a new one that takes the
    /// walk over. Notes the open for the reader.
    pub(crate) fn follows(&mut self, pid: u32) -> bool {
        if !self.under_way() {
            return false;
        }
        if self.reader != Some(pid) {
            if !self.reader_idle() {
                return false;
            }
            tracing::debug!(pid, "read-ahead: the scan follows another reader");
            self.reader = Some(pid);
        }
        self.reader_seen = Some(std::time::Instant::now());
        true
    }

    /// Whether the reader has opened nothing for [`READER_IDLE`].
    pub(crate) fn reader_idle(&self) -> bool {
        self.reader_seen.is_none_or(|t| t.elapsed() >= READER_IDLE)
    }

    /// A new walk from `dir` (key `key`) for process `reader`, replacing any other; its
    /// generation.
    pub(crate) fn start(&mut self, key: u64, dir: &str, reader: u32) -> u64 {
        if self.reader != Some(reader) {
            self.top = None;
        }
        self.reader = Some(reader);
        self.reader_seen = Some(std::time::Instant::now());
        self.generation += 1;
        self.walk = None;
        self.stepping = false;
        self.walked.clear();
        self.clear_ahead();
        self.walked.insert(key, self.generation);
        // A walk in another image root starts from its own top.
        if let (Some(top), Some(root)) = (&self.top, namespace::paths::image_root_of(dir))
            && !within(top, root)
        {
            self.top = None;
        }
        self.widen_top(dir);
        self.generation
    }

    /// The scan ended: the walk and what it knew are dropped.
    pub(crate) fn end(&mut self) {
        if self.under_way() {
            tracing::debug!(ahead_bytes = self.ahead_bytes, "read-ahead: scan ended");
        }
        self.generation += 1;
        self.walk = None;
        self.stepping = false;
        self.top = None;
        self.reader = None;
        self.walked.clear();
        self.clear_ahead();
    }

    /// Whether the current walk listed directory `key`.
    pub(crate) fn walked(&self, key: u64) -> bool {
        self.walked.get(&key) == Some(&self.generation)
    }

    /// Walk `generation` listed directory `key`.
    pub(crate) fn listed(&mut self, key: u64, generation: u64) {
        if generation != self.generation {
            return;
        }
        if self.walked.len() >= MAX_WALKED {
            self.walked.clear();
        }
        self.walked.insert(key, generation);
    }

    /// The reader opened a file in `dir`: the top goes up to the common ancestor, but
    /// not above `dir`'s image root (another image's reader is another process).
    pub(crate) fn widen_top(&mut self, dir: &str) {
        let root = namespace::paths::image_root_of(dir);
        let top = match &self.top {
            None => dir,
            Some(top) => {
                if root.is_some_and(|root| !within(top, root)) {
                    return;
                }
                common_ancestor(top, dir)
            }
        };
        let top = match root {
            Some(root) if !within(top, root) => root,
            _ => top,
        };
        self.top = Some(top.to_string());
    }

    /// The current walk queued file `key` (`bytes` of it).
    pub(crate) fn queued(&mut self, key: u64, bytes: u64) {
        let seq = self.first + self.ahead.len() as u64;
        self.ahead.push_back((key, bytes));
        self.index.insert(key, seq);
        self.ahead_bytes += bytes;
    }

    /// The reader opened file `key`: it and every file the walk queued before it are
    /// behind the reader now.
    pub(crate) fn opened(&mut self, key: u64) {
        let Some(&seq) = self.index.get(&key) else {
            return;
        };
        while self.first <= seq {
            let Some((passed, bytes)) = self.ahead.pop_front() else {
                break;
            };
            if self.index.get(&passed) == Some(&self.first) {
                self.index.remove(&passed);
            }
            self.ahead_bytes = self.ahead_bytes.saturating_sub(bytes);
            self.first += 1;
        }
    }

    /// Whether the walk is as far ahead of the reader as it may go.
    pub(crate) fn far_enough(&self) -> bool {
        self.ahead_bytes >= SCAN_AHEAD_BYTES || self.ahead.len() >= SCAN_AHEAD_FILES
    }

    /// Bytes the walk queued that the reader has not opened.
    pub(crate) fn ahead_bytes(&self) -> u64 {
        self.ahead_bytes
    }

    fn clear_ahead(&mut self) {
        self.first += self.ahead.len() as u64;
        self.ahead.clear();
        self.index.clear();
        self.ahead_bytes = 0;
    }
}

/// Whether repository path `path` is `dir` or below it.
fn within(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The longest common ancestor of repository paths `a` and `b` (`""`: the root).
pub fn common_ancestor<'a>(a: &'a str, b: &str) -> &'a str {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    let same = x.iter().zip(y).take_while(|(p, q)| p == q).count();
    if same == x.len() && (same == y.len() || y[same] == b'/') {
        return a;
    }
    if same == y.len() && x[same] == b'/' {
        return &a[..same];
    }
    // Back to the last separator both share (always a character boundary).
    match x[..same].iter().rposition(|&c| c == b'/') {
        Some(end) => &a[..end],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_ancestor_is_a_whole_directory_of_both_paths() {
        assert_eq!(common_ancestor("/a/b/c", "/a/b/d"), "/a/b");
        assert_eq!(common_ancestor("/a/b", "/a/b/c"), "/a/b");
        assert_eq!(common_ancestor("/a/b/c", "/a/b"), "/a/b");
        assert_eq!(common_ancestor("/a/b", "/a/b"), "/a/b");
        assert_eq!(common_ancestor("/a/bc", "/a/bd"), "/a");
        assert_eq!(common_ancestor("/a/b", "/a/bc"), "/a");
        assert_eq!(common_ancestor("/x", "/y"), "");
        assert_eq!(common_ancestor("", "/y"), "");
        assert_eq!(common_ancestor("/a/é1", "/a/é2"), "/a");
        assert_eq!(common_ancestor("/a/é", "/a/è"), "/a");
    }

    #[test]
    fn a_file_the_reader_opens_puts_everything_queued_before_it_behind() {
        let mut scan = Scan::default();
        scan.start(1, "/t/d0", 7);
        for key in 10..20 {
            scan.queued(key, 100);
        }
        assert_eq!(scan.ahead_bytes(), 1000);
        // Skipped 10 and 11 (an excluded file, say): passed all the same.
        scan.opened(12);
        assert_eq!(scan.ahead_bytes(), 700);
        scan.opened(11);
        assert_eq!(
            scan.ahead_bytes(),
            700,
            "a file behind the reader counts once"
        );
        scan.opened(99);
        assert_eq!(scan.ahead_bytes(), 700, "a file the walk did not queue");
        scan.opened(19);
        assert_eq!(scan.ahead_bytes(), 0);
        // A new walk forgets the old one's files.
        scan.queued(30, 5);
        scan.start(2, "/t/d1", 7);
        assert_eq!(scan.ahead_bytes(), 0);
        scan.opened(30);
        assert_eq!(scan.ahead_bytes(), 0);
    }

    #[test]
    fn another_thread_takes_the_walk_over_only_once_the_reader_paused() {
        let mut scan = Scan::default();
        assert!(!scan.follows(7), "no scan under way");
        scan.start(1, "/t", 7);
        assert!(scan.follows(7));
        assert!(!scan.follows(8), "another thread while the reader reads");
        scan.reader_seen = std::time::Instant::now().checked_sub(READER_IDLE);
        assert!(scan.reader_idle());
        assert!(
            scan.follows(8),
            "the reader paused: the next thread takes over"
        );
        assert!(!scan.follows(7), "and the old one is another thread now");
    }

    #[test]
    fn the_walk_stops_far_enough_ahead_in_bytes_or_files() {
        let mut scan = Scan::default();
        scan.start(1, "/t", 7);
        scan.queued(2, SCAN_AHEAD_BYTES - 1);
        assert!(!scan.far_enough());
        scan.queued(3, 1);
        assert!(scan.far_enough());
        scan.opened(3);
        assert!(!scan.far_enough());
        for key in 0..SCAN_AHEAD_FILES as u64 {
            scan.queued(100 + key, 1);
        }
        assert!(scan.far_enough());
    }

    #[test]
    fn the_top_stays_within_the_image_root_the_scan_started_in() {
        let layer = "/.layers/ab/abcd/layerfs";
        let mut scan = Scan::default();
        scan.start(1, &format!("{layer}/usr/lib/a"), 7);
        scan.widen_top(&format!("{layer}/usr/share/b"));
        assert_eq!(scan.top.as_deref(), Some("/.layers/ab/abcd/layerfs/usr"));
        // Another image's reader does not move it.
        scan.widen_top("/.flat/cd/cdef/usr/lib");
        assert_eq!(scan.top.as_deref(), Some("/.layers/ab/abcd/layerfs/usr"));
        // Nor above the layer's root.
        scan.widen_top(&format!("{layer}/etc"));
        assert_eq!(scan.top.as_deref(), Some(layer));
        scan.widen_top(layer);
        assert_eq!(scan.top.as_deref(), Some(layer));
        scan.end();
        assert!(!scan.under_way());
    }
}
