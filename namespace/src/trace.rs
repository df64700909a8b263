//! The text of an access trace (`strata-snapshotter mount --trace FILE`, read by
//! `strata-publisher startup`): which regular files of the repository a program read, in
//! the order it first read them.
//!
//! ```text
//! # strata access trace v1
//! /.layers/ab/ab…/layerfs/usr/bin/python3.11
//! /.layers/cd/cd…/layerfs/usr/lib/python3.11/os.py
//! ```
//!
//! One repository path per line (absolute, as Strata spells it: a name that is not UTF-8
//! in the escaped form of `catalog::names`), each once; blank lines
//! and further `#` lines are ignored. A name holding a newline cannot be written and is left
//! out by the writer.

use crate::error::{Error, Result};

/// First line of a trace.
pub const HEADER: &str = "# strata access trace v1";

/// The paths of trace text `text`, in order; `source` names it in errors.
///
/// # Errors
/// [`Error::Trace`] if the first line is not [`HEADER`] or a path is not absolute.
pub fn parse(text: &str, source: &str) -> Result<Vec<String>> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(Error::Trace {
            trace: source.to_string(),
            reason: format!("not a Strata access trace (first line is not {HEADER:?})"),
        });
    }
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.starts_with('/') {
            return Err(Error::Trace {
                trace: source.to_string(),
                reason: format!("line {}: {line:?} is not an absolute path", i + 2),
            });
        }
        out.push(line.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_order_and_errors_naming_the_source() {
        let text = format!("{HEADER}\n/b\n\n# note\n/a/x\n");
        assert_eq!(parse(&text, "t").unwrap_or_default(), ["/b", "/a/x"]);
        let e = parse("/a\n", "start.trace").unwrap_err().to_string();
        assert!(
            e.contains("start.trace") && e.contains("not a Strata access trace"),
            "{e}"
        );
        let e = parse(&format!("{HEADER}\na\n"), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("absolute"), "{e}");
    }
}
