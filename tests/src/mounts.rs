//! Reading `/proc/self/mountinfo` and tearing mounts down.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::error::{Error, Result, io_context};
use crate::wait::poll;

pub use catalog::mountinfo::MountEntry;

/// All current mounts of this process's mount namespace ([`catalog::mountinfo::mounts`]).
pub fn mounts() -> Result<Vec<MountEntry>> {
    catalog::mountinfo::mounts().map_err(io_context("read /proc/self/mountinfo"))
}

/// The filesystem type mounted at exactly `path` (the topmost mount), if any.
pub fn mount_type(path: &Path) -> Result<Option<String>> {
    catalog::mountinfo::mount_type(path).map_err(io_context("read /proc/self/mountinfo"))
}

/// Whether a FUSE filesystem (`fuse` or `fuse.*`) is mounted at `path`.
pub fn is_fuse_mounted(path: &Path) -> Result<bool> {
    catalog::mountinfo::is_fuse_mounted(path).map_err(io_context("read /proc/self/mountinfo"))
}

/// Waits until a FUSE file system is mounted at `path` by `mount` (a mount process started
/// as a plain child, not a [`crate::process::Service`]), polling every 50 ms.
///
/// Errors: `mount` exits first ([`Error::Invalid`] with its status), `timeout` passes
/// ([`Error::Timeout`]), or the mount table cannot be read.
pub fn wait_fuse_mounted(mount: &mut Child, path: &Path, timeout: Duration) -> Result<()> {
    let what = format!("a FUSE mount at {}", path.display());
    poll(&what, timeout, Duration::from_millis(50), || {
        if is_fuse_mounted(path)? {
            return Ok(Some(()));
        }
        match mount.try_wait() {
            Ok(None) => Ok(None),
            Ok(Some(status)) => Err(Error::Invalid(format!("the mount exited with {status}"))),
            Err(e) => Err(io_context("wait for the mount")(e)),
        }
    })
}

/// Mount points at or below `dir`, deepest first (the order to unmount them in).
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = mounts()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// Unmounts `path`: `fusermount3 -u`, else `umount`, else a lazy `umount -l`.
/// Returns whether nothing is mounted there any more.
pub fn unmount(path: &Path) -> bool {
    for (program, args) in [
        ("fusermount3", &["-u"][..]),
        ("umount", &[][..]),
        ("umount", &["-l"][..]),
    ] {
        let still = mount_type(path).map(|t| t.is_some()).unwrap_or(true);
        if !still {
            return true;
        }
        let _ = Command::new(program)
            .args(args)
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    mount_type(path).map(|t| t.is_none()).unwrap_or(false)
}

/// Unmounts everything at or below `dir` (deepest first), repeating for stacked mounts.
pub fn unmount_all_under(dir: &Path) {
    for _ in 0..4 {
        let Ok(list) = mounts_under(dir) else { return };
        if list.is_empty() {
            return;
        }
        for path in list {
            unmount(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_mounted_and_nothing_is_under_a_temp_dir() {
        assert!(mount_type(Path::new("/")).unwrap().is_some());
        let dir = tempfile::tempdir().unwrap();
        assert!(mounts_under(dir.path()).unwrap().is_empty());
    }
}
