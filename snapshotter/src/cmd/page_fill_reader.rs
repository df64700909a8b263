//! `strata-snapshotter page-fill-reader --parent PID` (hidden): the process that reads
//! started chunked programs through a mount so that the kernel keeps their pages
//! ([`crate::fuse::PageFill`] starts it and sends it the files).
//!
//! It is a process of its own, not a thread of the mount: a request of the mount's own
//! (`OPEN`, `GETATTR`) that a worker of the mount has taken can only be waited for
//! uninterruptibly, so a thread of the mount waiting on one when the mount is killed or
//! re-executes itself would keep the mount's process from ending, and its successor from
//! starting. This process can hang in such a wait without holding anything back; it gets
//! `SIGKILL` when the thread of the mount that started it ends (`PR_SET_PDEATHSIG`).
//!
//! Input on stdin, one record per file: the inode number in decimal, a space, the file's
//! path (any bytes but NUL), a NUL. Each file is opened, checked to be that inode (a
//! revision switch gives a path another inode: then it is skipped) and read to its end.
//! Nothing is written to stdout; failures are logged (stderr, the mount's log).

use std::ffi::OsStr;
use std::io::{BufRead, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use crate::{Error, Result};

/// Command-line arguments of the hidden `page-fill-reader` command.
#[derive(clap::Args, Debug)]
pub struct PageFillReaderArgs {
    /// The mount process that started this one; if it is already gone, exit.
    #[arg(long)]
    pub parent: i32,
}

/// Bytes per `read`.
const READ_BYTES: usize = 1024 * 1024;

/// Reads the files named on stdin until stdin ends.
///
/// # Errors
/// [`Error::Io`] if the parent death signal cannot be set or stdin cannot be read.
pub fn main(args: PageFillReaderArgs) -> Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(|e| Error::Io {
        context: "setting the page-fill reader's parent death signal".into(),
        source: std::io::Error::from(e),
    })?;
    // The parent may have ended before the signal was set.
    if nix::unistd::getppid().as_raw() != args.parent {
        return Ok(());
    }
    let mut stdin = std::io::stdin().lock();
    let mut record = Vec::new();
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        record.clear();
        let n = stdin
            .read_until(0, &mut record)
            .map_err(|source| Error::Io {
                context: "reading the page-fill reader's input".into(),
                source,
            })?;
        if n == 0 {
            return Ok(());
        }
        let Some((ino, path)) = parse_record(&record) else {
            tracing::warn!("page-fill reader: a malformed record, skipped");
            continue;
        };
        let started = Instant::now();
        match read_whole(path, ino, &mut buf) {
            Ok(Some(bytes)) => tracing::debug!(
                path = %path.display(),
                bytes,
                ms = started.elapsed().as_millis() as u64,
                "page cache filled"
            ),
            Ok(None) => {
                tracing::debug!(path = %path.display(), "another file there now: not filled");
            }
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "page cache not filled"),
        }
    }
}

/// `(inode, path)` of a record (its trailing NUL optional).
fn parse_record(record: &[u8]) -> Option<(u64, &Path)> {
    let record = record.strip_suffix(&[0]).unwrap_or(record);
    let space = record.iter().position(|&b| b == b' ')?;
    let ino = std::str::from_utf8(&record[..space]).ok()?.parse().ok()?;
    let path = &record[space + 1..];
    (!path.is_empty()).then(|| (ino, Path::new(OsStr::from_bytes(path))))
}

/// One record: `ino`, a space, `path`, a NUL.
pub fn record(ino: u64, path: &Path) -> Vec<u8> {
    let mut out = format!("{ino} ").into_bytes();
    out.extend_from_slice(path.as_os_str().as_bytes());
    out.push(0);
    out
}

/// Reads `path` to its end if it is inode `ino`; the bytes read, or `None` if it is
/// another inode.
fn read_whole(path: &Path, ino: u64, buf: &mut [u8]) -> std::io::Result<Option<u64>> {
    let mut file = std::fs::File::open(path)?;
    if file.metadata()?.ino() != ino {
        return Ok(None);
    }
    let mut read = 0u64;
    loop {
        match file.read(buf) {
            Ok(0) => return Ok(Some(read)),
            Ok(n) => read += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_any_path_bytes() {
        let path = Path::new(OsStr::from_bytes(b"/m/a b/\xff\xfe/c\n"));
        let r = record(42, path);
        assert_eq!(r.last(), Some(&0));
        assert_eq!(parse_record(&r), Some((42, path)));
        assert_eq!(parse_record(b"x /p\0"), None);
        assert_eq!(parse_record(b"7 \0"), None);
        assert_eq!(parse_record(b"7\0"), None);
    }

    #[test]
    fn a_file_is_read_whole_only_if_it_is_the_inode_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 3 * READ_BYTES + 5]).unwrap();
        let ino = std::fs::metadata(&path).unwrap().ino();
        let mut buf = vec![0u8; READ_BYTES];
        assert_eq!(
            read_whole(&path, ino, &mut buf).unwrap(),
            Some(3 * READ_BYTES as u64 + 5)
        );
        assert_eq!(read_whole(&path, ino + 1, &mut buf).unwrap(), None);
    }
}
