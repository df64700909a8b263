//! The FUSE edge of the crate's error type: each [`Error`] becomes an errno here and
//! nowhere else. A missing path is `ENOENT`, a non-directory parent `ENOTDIR`, a lookup
//! overtaken by revision switches `EAGAIN`, an I/O error its own errno, and download or
//! verification failures `EIO` (docs/format.md §8.5).

use fuser::Errno;

use crate::Error;

/// The errno for a crate error (the FUSE edge of the error type).
fn errno(e: &Error) -> Errno {
    match e {
        Error::NotFound(_) => Errno::ENOENT,
        Error::NotADirectory(_) => Errno::ENOTDIR,
        Error::Busy(_) => Errno::EAGAIN,
        Error::Io { source, .. } => source
            .raw_os_error()
            .map(Errno::from_i32)
            .unwrap_or(Errno::EIO),
        _ => Errno::EIO,
    }
}

/// Logs `e` (what failed, on which path) and returns its errno.
pub(super) fn report(op: &str, path: &str, e: &Error) -> Errno {
    let code = errno(e);
    if code == Errno::ENOENT || code == Errno::ENOTDIR {
        tracing::debug!(op, path, error = %e, "request failed");
    } else {
        tracing::warn!(op, path, error = %e, "request failed");
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_errno_at_the_edge() {
        assert_eq!(errno(&Error::NotFound("/x".into())), Errno::ENOENT);
        assert_eq!(errno(&Error::NotADirectory("/x".into())), Errno::ENOTDIR);
        assert_eq!(errno(&Error::Busy("/x".into())), Errno::EAGAIN);
        assert_eq!(
            errno(&Error::HttpStatus {
                url: "u".into(),
                status: 404
            }),
            Errno::EIO
        );
        assert_eq!(
            errno(&Error::Catalog(catalog::Error::HashMismatch {
                expected: "a".into(),
                actual: "b".into()
            })),
            Errno::EIO
        );
        assert_eq!(
            errno(&Error::Io {
                context: "x".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC)
            }),
            Errno::ENOSPC
        );
    }
}
