//! The text of an access trace (`strata-snapshotter mount --trace FILE`, read by
//! `strata-publisher startup`): which regular files of the repository a program read, and
//! which chunks of its chunked files, in the order it first read them.
//!
//! ```text
//! # strata access trace v2
//! /.layers/ab/ab…/layerfs/usr/bin/python3.11
//! chunk 0 /.layers/ab/ab…/layerfs/usr/bin/python3.11
//! /.layers/cd/cd…/layerfs/usr/lib/python3.11/os.py
//! chunk 3 /.layers/ef/ef…/layerfs/usr/lib/x86_64-linux-gnu/libopenblasp-r0.3.21.so
//! ```
//!
//! One record per line, each once: a repository path (absolute, as Strata spells it: a
//! name that is not UTF-8 in the escaped form of `catalog::names`) when a regular file is
//! first opened; `chunk <index> <path>` when chunk `<index>` (from 0, in the file's chunk
//! list, docs/format.md §4.6) of chunked file `<path>` is first read. A chunked file
//! started as a program is read whole (the mount fills the page cache with it), so all its
//! chunks are listed when it is started (by a mount that sees opens: with FUSE passthrough;
//! without, only the chunks the program's run touched). Blank lines and further `#` lines
//! are ignored.
//! A name holding a newline cannot be written and is left out by the writer.
//!
//! Version 1 traces (header `# strata access trace v1`) have paths only; a reader takes
//! every chunk of a chunked file they list. In version 2 only the chunks listed were read.

use crate::error::{Error, Result};

/// First line of a trace, as written.
pub const HEADER: &str = "# strata access trace v2";

/// First line of a version 1 trace (paths only), still read.
pub const HEADER_V1: &str = "# strata access trace v1";

/// How a chunk record starts.
const CHUNK: &str = "chunk ";

/// One record of a trace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// The regular file at this repository path was first opened.
    File(String),
    /// Chunk `index` of the chunked file at `path` was first read.
    Chunk {
        /// The chunked file's repository path.
        path: String,
        /// The chunk's place in the file's chunk list, from 0.
        index: usize,
    },
}

impl Access {
    /// The path the record is about.
    pub fn path(&self) -> &str {
        match self {
            Access::File(path) | Access::Chunk { path, .. } => path,
        }
    }

    /// The record as one line of trace text (no newline).
    pub fn line(&self) -> String {
        match self {
            Access::File(path) => path.clone(),
            Access::Chunk { path, index } => format!("{CHUNK}{index} {path}"),
        }
    }
}

/// A parsed trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// The records, in order.
    pub accesses: Vec<Access>,
    /// Whether the trace lists the chunks read (version 2); in a version 1 trace a chunked
    /// file's path stands for all its chunks.
    pub lists_chunks: bool,
}

/// The records of trace text `text`, in order; `source` names it in errors.
///
/// # Errors
/// [`Error::Trace`] if the first line is neither header, a path is not absolute, a chunk
/// record is malformed, or a version 1 trace holds a chunk record.
pub fn parse(text: &str, source: &str) -> Result<Trace> {
    let bad = |reason: String| Error::Trace {
        trace: source.to_string(),
        reason,
    };
    let mut lines = text.lines();
    let lists_chunks = match lines.next() {
        Some(HEADER) => true,
        Some(HEADER_V1) => false,
        _ => {
            return Err(bad(format!(
                "not a Strata access trace (first line is neither {HEADER:?} nor {HEADER_V1:?})"
            )));
        }
    };
    let mut accesses = Vec::new();
    for (i, line) in lines.enumerate() {
        let number = i + 2;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix(CHUNK) {
            if !lists_chunks {
                return Err(bad(format!(
                    "line {number}: a chunk record in a version 1 trace"
                )));
            }
            let parsed = rest
                .split_once(' ')
                .filter(|(index, _)| index.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|(index, path)| Some((index.parse::<usize>().ok()?, path)))
                .filter(|(_, path)| path.starts_with('/'));
            let Some((index, path)) = parsed else {
                return Err(bad(format!(
                    "line {number}: {line:?} is not `chunk <index> <absolute path>`"
                )));
            };
            accesses.push(Access::Chunk {
                path: path.to_string(),
                index,
            });
            continue;
        }
        if !line.starts_with('/') {
            return Err(bad(format!(
                "line {number}: {line:?} is not an absolute path"
            )));
        }
        accesses.push(Access::File(line.to_string()));
    }
    Ok(Trace {
        accesses,
        lists_chunks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str) -> Access {
        Access::File(p.to_string())
    }

    #[test]
    fn records_in_order_and_errors_naming_the_source() {
        let text = format!("{HEADER}\n/b\n\n# note\nchunk 2 /a/x y\n/a/x y\n");
        let trace = parse(&text, "t").unwrap_or_default();
        let chunk = Access::Chunk {
            path: "/a/x y".into(),
            index: 2,
        };
        assert_eq!(trace.accesses, [file("/b"), chunk.clone(), file("/a/x y")]);
        assert!(trace.lists_chunks);
        assert_eq!(chunk.line(), "chunk 2 /a/x y");
        assert_eq!(chunk.path(), "/a/x y");

        let e = parse("/a\n", "start.trace").unwrap_err().to_string();
        assert!(
            e.contains("start.trace") && e.contains("not a Strata access trace"),
            "{e}"
        );
        let e = parse(&format!("{HEADER}\na\n"), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("absolute"), "{e}");
        for bad in [
            "chunk x /a",
            "chunk 1 a",
            "chunk 1",
            "chunk -1 /a",
            "chunk +1 /a",
        ] {
            let e = parse(&format!("{HEADER}\n{bad}\n"), "t")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("line 2") && e.contains("chunk <index>"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn version_1_traces_list_paths_only() {
        let trace = parse(&format!("{HEADER_V1}\n/b\n/a\n"), "t").unwrap_or_default();
        assert_eq!(trace.accesses, [file("/b"), file("/a")]);
        assert!(!trace.lists_chunks);
        let e = parse(&format!("{HEADER_V1}\n/b\nchunk 0 /b\n"), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("version 1"), "{e}");
    }
}
