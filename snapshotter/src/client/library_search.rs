//! Where the dynamic loader finds what an ELF file needs, inside the image root the file
//! lies in (a flattened image or a layer's `layerfs`, [`namespace::paths::image_root_of`])
//! of the mounted revision: the interpreter, then each `DT_NEEDED` name searched in the
//! runpath (`$ORIGIN` expanded) and then in the system library directories, symbolic links
//! followed inside the root the way the kernel follows them under a `chroot` (absolute
//! targets from the root, `..` never above it). Debian's alternatives
//! (`libblas.so.3 → /etc/alternatives/… → …/openblas-pthread/libblas.so.3`) and merged
//! `/usr` (`/lib → usr/lib`) resolve as they do in a container.
//!
//! The loader also reads `/etc/ld.so.cache`, `LD_LIBRARY_PATH` and `ld.so.conf` additions;
//! a library found only through those is not read ahead (it is fetched when opened, as
//! before). In a layer, only the layer itself is searched: which layers lie below it
//! depends on the image.

use std::collections::VecDeque;

use catalog::EntryKind;

use crate::client::elf::Dependencies;
use crate::client::repository::{Found, MountedRevision};

/// Symbolic links followed in one path at most (Linux's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// A regular file the loader will open, with its repository path.
pub struct Library {
    /// Repository path (`/.flat/<hh>/<hex>/usr/lib/…`), symbolic links resolved.
    pub path: String,
    /// Its catalog row.
    pub found: Found,
}

/// The directories searched after an ELF file's runpath: Debian's multiarch directories
/// (`ld.so.conf.d`), then glibc's built-in ones.
fn system_dirs(multiarch: Option<&str>) -> Vec<String> {
    let mut dirs = Vec::new();
    if let Some(tuple) = multiarch {
        dirs.push(format!("/usr/local/lib/{tuple}"));
        dirs.push(format!("/lib/{tuple}"));
        dirs.push(format!("/usr/lib/{tuple}"));
    }
    for dir in ["/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib"] {
        dirs.push(dir.to_string());
    }
    dirs
}

/// The directories searched for the `DT_NEEDED` names of the ELF file at repository path
/// `path` in image root `root` (both as [`namespace::paths::image_root_of`] gives them), as
/// paths inside the root: runpath entries (`$ORIGIN` = the file's directory; entries with
/// other `$` tokens are left out), then the system directories.
pub fn search_dirs(root: &str, path: &str, deps: &Dependencies) -> Vec<String> {
    let inside = path.strip_prefix(root).unwrap_or(path);
    let origin = inside.rsplit_once('/').map_or("", |(dir, _)| dir);
    let mut dirs: Vec<String> = deps
        .search
        .iter()
        .map(|s| s.replace("${ORIGIN}", origin).replace("$ORIGIN", origin))
        .filter(|s| s.starts_with('/') && !s.contains('$'))
        .collect();
    for dir in system_dirs(deps.multiarch) {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// The regular file `name` in the first of `dirs` (paths inside `root`) that has it.
pub fn find_library(
    repo: &MountedRevision,
    root: &str,
    dirs: &[String],
    name: &str,
) -> Option<Library> {
    if name.contains('/') {
        // A path: the loader opens it as given (relative to the working directory when
        // relative, which is not known here).
        return name
            .starts_with('/')
            .then(|| resolve(repo, root, name))
            .flatten();
    }
    dirs.iter()
        .find_map(|dir| resolve(repo, root, &format!("{dir}/{name}")))
}

/// The regular file at `path` (absolute inside image root `root`, a repository path), with
/// every symbolic link on the way followed inside the root; `None` when it does not
/// resolve to a regular file (missing, a loop, a directory) or a catalog cannot be read.
pub fn resolve(repo: &MountedRevision, root: &str, path: &str) -> Option<Library> {
    let mut pending: VecDeque<String> = components(path).collect();
    let mut current = root.to_string();
    let mut last: Option<Found> = None;
    let mut links = 0;
    while let Some(component) = pending.pop_front() {
        if component == ".." {
            if current.len() > root.len()
                && let Some((parent, _)) = current.rsplit_once('/')
            {
                current.truncate(parent.len().max(root.len()));
            }
            last = None;
            continue;
        }
        let candidate = format!("{current}/{component}");
        let found = match repo.lookup(&candidate) {
            Ok(Some(found)) => found,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(path = candidate, error = %e, "library search: lookup failed");
                return None;
            }
        };
        match found.entry.kind {
            EntryKind::Symlink => {
                links += 1;
                if links > MAX_LINKS {
                    return None;
                }
                let target = found.entry.symlink.clone();
                if target.starts_with('/') {
                    current = root.to_string();
                }
                for part in components(&target).collect::<Vec<_>>().into_iter().rev() {
                    pending.push_front(part);
                }
                last = None;
            }
            EntryKind::Directory => {
                current = candidate;
                last = Some(found);
            }
            _ if pending.is_empty() => {
                current = candidate;
                last = Some(found);
            }
            _ => return None,
        }
    }
    let found = last?;
    (found.entry.kind == EntryKind::Regular).then_some(Library {
        path: current,
        found,
    })
}

/// The non-empty components of `path` other than `.`.
fn components(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runpath_origin_expands_and_system_dirs_follow() {
        let deps = Dependencies {
            search: vec![
                "$ORIGIN/../lib".into(),
                "${ORIGIN}/x".into(),
                "/opt/lib".into(),
                "$LIB/y".into(),
                "relative".into(),
            ],
            multiarch: Some("x86_64-linux-gnu"),
            ..Dependencies::default()
        };
        let dirs = search_dirs("/.flat/ab/cd", "/.flat/ab/cd/usr/bin/prog", &deps);
        assert_eq!(
            dirs,
            [
                "/usr/bin/../lib",
                "/usr/bin/x",
                "/opt/lib",
                "/usr/local/lib/x86_64-linux-gnu",
                "/lib/x86_64-linux-gnu",
                "/usr/lib/x86_64-linux-gnu",
                "/lib64",
                "/usr/lib64",
                "/lib",
                "/usr/lib",
                "/usr/local/lib",
            ]
        );
        // No multiarch tuple, a runpath naming a system directory: once, in runpath order.
        let deps = Dependencies {
            search: vec!["/usr/lib".into()],
            ..Dependencies::default()
        };
        assert_eq!(
            search_dirs("/r", "/r/prog", &deps),
            ["/usr/lib", "/lib64", "/usr/lib64", "/lib", "/usr/local/lib"]
        );
    }
}
