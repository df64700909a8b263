//! Which file systems are mounted where: `/proc/self/mountinfo` read as proc(5) describes
//! it. Not the repository format, but the one reader of the mount table that the publisher
//! (which mounts a revision with the client to record its start), the snapshotter's client
//! bench and the test harness share: a FUSE mount of a repository is up when this says so.

use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo` (proc(5)): mount point and filesystem type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount point, octal escapes (`\040`) decoded.
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. `fuse`, `fuse.strata`, `overlay`.
    pub fs_type: String,
}

/// All current mounts of this process's mount namespace, in mount order.
///
/// # Errors
/// `/proc/self/mountinfo` cannot be read.
pub fn mounts() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The entries of a mountinfo text; lines without the ` - ` separator or a mount point
/// are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
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
///
/// # Errors
/// `/proc/self/mountinfo` cannot be read.
pub fn mount_type(path: &Path) -> std::io::Result<Option<String>> {
    Ok(mounts()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
        .map(|m| m.fs_type))
}

/// Whether a FUSE filesystem (`fuse` or `fuse.*`) is mounted at `path`.
///
/// # Errors
/// `/proc/self/mountinfo` cannot be read.
pub fn is_fuse_mounted(path: &Path) -> std::io::Result<bool> {
    Ok(mount_type(path)?.is_some_and(|t| t == "fuse" || t.starts_with("fuse.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines_with_escapes_and_optional_fields() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    40 30 0:50 / /tmp/m rw,nosuid - fuse /dev/fuse rw,user_id=0\n";
        let parsed = parse(text);
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
    }
}
