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

/// A regular file the loader will open.
pub struct Library {
    /// Repository path (`/.flat/<hh>/<hex>/usr/lib/…`), symbolic links resolved.
    pub path: String,
    /// The path it was found at, before symbolic links were resolved: the directory the
    /// loader takes as its `$ORIGIN`.
    pub searched: String,
    /// Its catalog row.
    pub found: Found,
}

/// The directories searched after an ELF file's runpath, in the order Debian's
/// `/etc/ld.so.cache` lists them (`ld.so.conf.d`: `libc.conf`, then the multiarch
/// directories), then glibc's built-in ones (`lib64` only for 64-bit files, as on Fedora).
fn system_dirs(multiarch: Option<&str>, class64: bool) -> Vec<String> {
    let mut dirs = vec!["/usr/local/lib".to_string()];
    if let Some(tuple) = multiarch {
        dirs.push(format!("/usr/local/lib/{tuple}"));
        dirs.push(format!("/lib/{tuple}"));
        dirs.push(format!("/usr/lib/{tuple}"));
    }
    if class64 {
        dirs.push("/lib64".into());
        dirs.push("/usr/lib64".into());
    }
    dirs.push("/lib".into());
    dirs.push("/usr/lib".into());
    dirs
}

/// The directories searched for the `DT_NEEDED` names of the ELF file found at
/// repository path `searched` in image root `root` (both as
/// [`namespace::paths::image_root_of`] gives them), as paths inside the root: runpath
/// entries (`$ORIGIN` = the directory the file was found in; entries with other `$`
/// tokens, or relative ones, are left out), then the system directories.
pub fn search_dirs(root: &str, searched: &str, deps: &Dependencies) -> Vec<String> {
    let inside = searched.strip_prefix(root).unwrap_or(searched);
    let origin = inside.rsplit_once('/').map_or("", |(dir, _)| dir);
    let mut dirs: Vec<String> = Vec::new();
    let runpath = deps
        .search
        .iter()
        .map(|s| s.replace("${ORIGIN}", origin).replace("$ORIGIN", origin))
        .filter(|s| s.starts_with('/') && !s.contains('$'));
    for dir in runpath.chain(system_dirs(deps.multiarch, deps.class64)) {
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
    // The walk's last lookup is of the path it resolves to: kept, not looked up again.
    let mut last = None;
    let lookup = |p: &str| match repo.lookup(p) {
        Ok(found) => {
            let found = found?;
            let step = (found.entry.kind, found.entry.symlink.clone());
            last = Some(found);
            Some(step)
        }
        Err(e) => {
            tracing::debug!(path = p, error = %e, "library search: lookup failed");
            None
        }
    };
    let resolved = walk(root, path, lookup)?;
    let found = last?;
    (found.entry.kind == EntryKind::Regular).then(|| Library {
        path: resolved,
        searched: format!("{root}{path}"),
        found,
    })
}

/// The path of the non-directory that `path` (absolute inside `root`) names, symbolic
/// links followed inside `root` the way the kernel follows them under a `chroot`;
/// `lookup` gives an entry's kind and symbolic-link target, `None` if it does not exist.
fn walk(
    root: &str,
    path: &str,
    mut lookup: impl FnMut(&str) -> Option<(EntryKind, String)>,
) -> Option<String> {
    let mut pending: VecDeque<String> = components(path).collect();
    let mut current = root.to_string();
    let mut links = 0;
    let mut last_kind = EntryKind::Directory;
    while let Some(component) = pending.pop_front() {
        if component == ".." {
            if current.len() > root.len()
                && let Some((parent, _)) = current.rsplit_once('/')
            {
                current.truncate(parent.len().max(root.len()));
            }
            last_kind = EntryKind::Directory;
            continue;
        }
        let candidate = format!("{current}/{component}");
        let (kind, target) = lookup(&candidate)?;
        match kind {
            EntryKind::Symlink => {
                links += 1;
                if links > MAX_LINKS {
                    return None;
                }
                if target.starts_with('/') {
                    current = root.to_string();
                }
                for part in components(&target).collect::<Vec<_>>().into_iter().rev() {
                    pending.push_front(part);
                }
                last_kind = EntryKind::Directory;
            }
            EntryKind::Directory => current = candidate,
            // A file in the middle of a path: ENOTDIR.
            _ if !pending.is_empty() => return None,
            other => {
                current = candidate;
                last_kind = other;
            }
        }
    }
    (last_kind != EntryKind::Directory).then_some(current)
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
    use std::collections::HashMap;

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
            class64: true,
            ..Dependencies::default()
        };
        let dirs = search_dirs("/.flat/ab/cd", "/.flat/ab/cd/usr/bin/prog", &deps);
        assert_eq!(
            dirs,
            [
                "/usr/bin/../lib",
                "/usr/bin/x",
                "/opt/lib",
                "/usr/local/lib",
                "/usr/local/lib/x86_64-linux-gnu",
                "/lib/x86_64-linux-gnu",
                "/usr/lib/x86_64-linux-gnu",
                "/lib64",
                "/usr/lib64",
                "/lib",
                "/usr/lib",
            ]
        );
        // 32-bit, no multiarch tuple, a runpath naming a system directory: once, in
        // runpath order, and no lib64.
        let deps = Dependencies {
            search: vec!["/usr/lib".into()],
            ..Dependencies::default()
        };
        assert_eq!(
            search_dirs("/r", "/r/prog", &deps),
            ["/usr/lib", "/usr/local/lib", "/lib"]
        );
    }

    /// A tree as `walk` sees it: path → (kind, symlink target).
    fn tree(entries: &[(&str, &str)]) -> HashMap<String, (EntryKind, String)> {
        entries
            .iter()
            .map(|(path, what)| {
                let value = match *what {
                    "dir" => (EntryKind::Directory, String::new()),
                    "file" => (EntryKind::Regular, String::new()),
                    target => (EntryKind::Symlink, target.to_string()),
                };
                (format!("/R{path}"), value)
            })
            .collect()
    }

    #[test]
    fn walk_follows_links_inside_the_root() {
        let t = tree(&[
            ("/lib", "usr/lib"),
            ("/usr", "dir"),
            ("/usr/lib", "dir"),
            ("/usr/lib/libc.so.6", "file"),
            ("/usr/lib/libblas.so.3", "/etc/alternatives/libblas.so.3"),
            ("/etc", "dir"),
            ("/etc/alternatives", "dir"),
            (
                "/etc/alternatives/libblas.so.3",
                "/usr/lib/openblas/libblas.so.3",
            ),
            ("/usr/lib/openblas", "dir"),
            ("/usr/lib/openblas/libblas.so.3", "file"),
            ("/up", "../../../usr/lib/libc.so.6"),
            ("/loop", "loop"),
            ("/dirlink", "usr/lib"),
        ]);
        let walk_in = |path: &str| walk("/R", path, |p| t.get(p).cloned());
        assert_eq!(
            walk_in("/lib/libc.so.6").as_deref(),
            Some("/R/usr/lib/libc.so.6")
        );
        // Absolute targets start again at the root, not at the host's /.
        assert_eq!(
            walk_in("/lib/libblas.so.3").as_deref(),
            Some("/R/usr/lib/openblas/libblas.so.3")
        );
        // `..` stops at the root.
        assert_eq!(walk_in("/up").as_deref(), Some("/R/usr/lib/libc.so.6"));
        assert_eq!(
            walk_in("/usr/../../lib/libc.so.6").as_deref(),
            Some("/R/usr/lib/libc.so.6")
        );
        // A loop, a directory, a missing file, a file used as a directory.
        assert_eq!(walk_in("/loop"), None);
        assert_eq!(walk_in("/dirlink"), None);
        assert_eq!(walk_in("/usr/lib/libm.so.6"), None);
        assert_eq!(walk_in("/usr/lib/libc.so.6/x"), None);
    }
}
