//! Access traces: which regular files a program reads, and which chunks of its chunked
//! files, in the order it first reads them (`mount --trace FILE`; the format's home is
//! [`namespace::trace`]).
//!
//! A container start reads a few hundred files in dependency order; knowing them in
//! advance lets them be fetched in bulk instead of one round trip each (the startup working
//! set, docs/architecture.md). The trace is how that set is learned on a node: mount with
//! `--trace FILE`, start the container or run the command, stop. Every regular file of the
//! repository is written once, when it is first opened (or first read, in no-open mode),
//! as its repository path (`/.flat/<hh>/<hex>/usr/bin/python3.11`, or a path below a
//! layer's `layerfs`), one per line, after a `# strata access trace v2` header line; a
//! chunk of a chunked file, when a read first touches it, as `chunk <index> <path>` (a
//! start maps parts of a large library, and the pack need hold only those; a chunk read
//! that fails is not written). A chunked ELF program started with `execve` is read whole
//! (`page_fill`): all its chunks are written then (seen only with `OPEN` requests, i.e.
//! with FUSE passthrough; without, the mount warns at `INIT`). Lines are written as they happen (each flushed), so a trace taken while the
//! mount keeps running is complete up to its last line. An open that fails (a download
//! error) is not recorded. Paths of every image read through the mount go
//! to the one file, in the order they were read; whoever uses it keeps the ones under the
//! image root it is about.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::{Error, Result};

/// First line of a trace file ([`namespace::trace`] is the format's home).
pub use namespace::trace::{Access, HEADER};

/// Records remembered as traced; past it, recording stops (a trace is a start's working
/// set, not a walk of the whole repository) and a warning says so.
pub const MAX_TRACED: usize = 1 << 20;

/// An open trace file and the paths written to it.
pub struct AccessTrace {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    out: BufWriter<File>,
    /// The lines written.
    seen: HashSet<String>,
    /// Set once writing failed or the limit was reached: nothing more is written.
    stopped: bool,
}

impl AccessTrace {
    /// Creates (truncates) `path` and writes the header.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file if it cannot be created or written.
    pub fn create(path: &Path) -> Result<AccessTrace> {
        let io = |source| Error::Io {
            context: format!("creating the trace file {}", path.display()),
            source,
        };
        let mut out = BufWriter::new(File::create(path).map_err(io)?);
        writeln!(out, "{HEADER}").map_err(io)?;
        out.flush().map_err(io)?;
        Ok(AccessTrace {
            path: path.to_owned(),
            state: Mutex::new(State {
                out,
                seen: HashSet::new(),
                stopped: false,
            }),
        })
    }

    /// Records an open of regular file `path` (a repository path): written if it is the
    /// first. A failed write is logged once and ends the trace; the mount goes on.
    pub fn record(&self, path: &str) {
        self.write(Access::File(path.to_string()));
    }

    /// Records a read of chunk `index` of chunked file `path`: written if it is the first.
    pub fn record_chunk(&self, path: &str, index: usize) {
        self.write(Access::Chunk {
            path: path.to_string(),
            index,
        });
    }

    fn write(&self, access: Access) {
        let line = access.line();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.stopped || state.seen.contains(&line) {
            return;
        }
        if state.seen.len() >= MAX_TRACED {
            state.stopped = true;
            tracing::warn!(
                trace = %self.path.display(),
                "trace holds {MAX_TRACED} records; recording stops"
            );
            return;
        }
        // One record per line: a name with a newline cannot be written unambiguously.
        if line.contains('\n') {
            return;
        }
        let written = writeln!(state.out, "{line}").and_then(|()| state.out.flush());
        match written {
            Ok(()) => {
                state.seen.insert(line);
            }
            Err(e) => {
                state.stopped = true;
                tracing::warn!(trace = %self.path.display(), error = %e, "cannot write the trace; recording stops");
            }
        }
    }
}

/// A trace file, its records in order (header and blank lines skipped).
///
/// # Errors
/// [`Error::Io`] if it cannot be read, [`Error::Config`] if it is not a trace
/// ([`namespace::trace::parse`]).
pub fn read(path: &Path) -> Result<namespace::trace::Trace> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        context: format!("reading the trace file {}", path.display()),
        source,
    })?;
    Ok(namespace::trace::parse(&text, &path.display().to_string())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reads_are_written_once_in_order_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let trace = AccessTrace::create(&path).unwrap();
        for p in ["/b", "/a/x", "/b", "/c", "/a/x", "/bad\nname"] {
            trace.record(p);
        }
        for i in [1, 0, 1] {
            trace.record_chunk("/c", i);
        }
        trace.record_chunk("/bad\nname", 0);
        let file = |p: &str| Access::File(p.to_string());
        let chunk = |i| Access::Chunk {
            path: "/c".to_string(),
            index: i,
        };
        // Written as it happens: readable while the trace is still open.
        let written = read(&path).unwrap();
        assert!(written.lists_chunks);
        assert_eq!(
            written.accesses,
            [file("/b"), file("/a/x"), file("/c"), chunk(1), chunk(0)]
        );
        drop(trace);
        std::fs::write(&path, "/a\n").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("not a Strata access trace"), "{e}");
    }
}
