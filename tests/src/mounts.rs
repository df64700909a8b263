//! Reading `/proc/self/mountinfo` and tearing mounts down.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::error::{Error, Result, io_context};
use crate::wait::poll;

/// One line of `/proc/self/mountinfo` (proc(5)): mount point and filesystem type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount point, octal escapes (`\040`) decoded.
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. `fuse`, `fuse.strata`, `overlay`.
    pub fs_type: String,
}

/// All current mounts of this process's mount namespace.
pub fn mounts() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_context("read /proc/self/mountinfo"))?;
    Ok(parse_mountinfo(&text))
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            let mount_point = PathBuf::from(unescape(fields.get(4)?));
            let fs_type = (*fields.get(separator + 1)?).to_owned();
            Some(MountEntry {
                mount_point,
                fs_type,
            })
        })
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) if bytes[i] == b'\\' => {
                out.push(
                    d.iter()
                        .fold(0u8, |acc, b| acc.wrapping_mul(8).wrapping_add(b - b'0')),
                );
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The filesystem type mounted at exactly `path` (the topmost mount), if any.
pub fn mount_type(path: &Path) -> Result<Option<String>> {
    Ok(mounts()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
        .map(|m| m.fs_type))
}

/// Whether a FUSE filesystem (`fuse` or `fuse.*`) is mounted at `path`.
pub fn is_fuse_mounted(path: &Path) -> Result<bool> {
    Ok(mount_type(path)?.is_some_and(|t| t == "fuse" || t.starts_with("fuse.")))
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
    fn parses_mountinfo_lines_with_escapes_and_optional_fields() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    40 30 0:50 / /tmp/m rw,nosuid - fuse /dev/fuse rw,user_id=0\n";
        let parsed = parse_mountinfo(text);
        assert_eq!(
            parsed,
            vec![
                MountEntry {
                    mount_point: "/mnt/with space".into(),
                    fs_type: "ext3".into()
                },
                MountEntry {
                    mount_point: "/tmp/m".into(),
                    fs_type: "fuse".into()
                },
            ]
        );
    }

    #[test]
    fn root_is_mounted_and_a_temp_dir_is_not() {
        assert!(mount_type(Path::new("/")).unwrap().is_some());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(mount_type(dir.path()).unwrap(), None);
        assert!(!is_fuse_mounted(dir.path()).unwrap());
        assert!(mounts_under(dir.path()).unwrap().is_empty());
    }
}
