//! Building the test image with debootstrap, a chroot, umoci and a hand-made layer.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::layer_tar::{self, Item};
use super::layout::{ImageFacts, read_layout};
use super::{
    DELETED_DIR, DELETED_FILE, IMAGE_KEY, IMAGE_TAG, OPAQUE_DIR, OPAQUE_LOWER_FILES,
    OPAQUE_UPPER_FILE,
};
use crate::error::{Error, Result, io_context};
use crate::process::run_checked;

/// Longest any one build command (debootstrap, apt, umoci) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Runs one build command, logged; error with the log tail if it fails.
pub(crate) fn step(command: &mut Command, log: &Path) -> Result<()> {
    run_checked(command, log, STEP_TIMEOUT).map(drop)
}

/// The debootstrap mirror when none can be read from apt's sources.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// A finished image in an OCI layout.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// The OCI layout directory.
    pub layout: PathBuf,
    /// Tag of the image in the layout.
    pub tag: String,
    /// Manifest facts (layer digests and sizes, diff IDs).
    pub facts: ImageFacts,
}

impl TestImage {
    /// `oci:<layout>:<tag>`, the skopeo / `strata-publisher ingest` source reference.
    pub fn oci_reference(&self) -> String {
        format!("oci:{}:{}", self.layout.display(), self.tag)
    }
}

/// Returns the cached test image under `<cache_root>/<IMAGE_KEY>/`, building it first if
/// needed (progress and tool output go to `<cache_root>/<IMAGE_KEY>/build.log`).
///
/// Concurrent callers serialise on `<cache_root>/<IMAGE_KEY>.lock` (an exclusive
/// `flock`); the first builds, the others wait and reuse. A half-built image (no
/// `complete` marker) is deleted and rebuilt.
///
/// Errors: debootstrap, apt, umoci failing (with the log tail), or the built image not
/// having the files the whiteout layer is about.
pub fn test_image(cache_root: &Path) -> Result<TestImage> {
    cached_image(cache_root, IMAGE_KEY, IMAGE_TAG, build_image)
}

/// The image `<cache_root>/<key>/oci:<tag>`, made by `build(<cache_root>/<key>)` unless a
/// `complete` marker says an earlier build finished. Concurrent callers serialise on
/// `<cache_root>/<key>.lock` (an exclusive `flock`): the first builds, the others wait and
/// reuse. A half-built image (no marker) is deleted and rebuilt.
///
/// Errors: what `build` returns; I/O on the cache directory; an unreadable layout.
pub(crate) fn cached_image(
    cache_root: &Path,
    key: &str,
    tag: &str,
    build: impl FnOnce(&Path) -> Result<()>,
) -> Result<TestImage> {
    std::fs::create_dir_all(cache_root)
        .map_err(io_context(format!("create {}", cache_root.display())))?;
    let lock_path = cache_root.join(format!("{key}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_context(format!("open {}", lock_path.display())))?;
    lock.lock()
        .map_err(io_context(format!("lock {}", lock_path.display())))?;

    let dir = cache_root.join(key);
    let layout = dir.join("oci");
    if !dir.join("complete").is_file() {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(io_context(format!("remove half-built {}", dir.display())))?;
        }
        std::fs::create_dir_all(&dir).map_err(io_context(format!("create {}", dir.display())))?;
        build(&dir)?;
        File::create(dir.join("complete")).map_err(io_context("write the complete marker"))?;
    }
    let facts = read_layout(&layout, tag)?;
    drop(lock);
    Ok(TestImage {
        layout,
        tag: tag.to_owned(),
        facts,
    })
}

fn build_image(dir: &Path) -> Result<()> {
    let log = dir.join("build.log");
    let layout = dir.join("oci");
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    let image = |tag: &str| format!("{}:{tag}", layout.display());

    // Layer 1: Debian minbase.
    minbase_bundle(&layout, &bundle, &log)?;
    let opaque = rootfs.join(OPAQUE_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&opaque).map_err(io_context(format!("create {}", opaque.display())))?;
    for name in OPAQUE_LOWER_FILES {
        std::fs::write(opaque.join(name), format!("{name} from layer 1\n"))
            .map_err(io_context(format!("write {name}")))?;
    }
    repack(&image("layer1"), &bundle, &log)?;

    // Layer 2: python3 from the same mirror, installed in a chroot.
    apt_install(&rootfs, &["python3"], &log)?;
    check_lower_layers(&rootfs)?;
    repack(&image("layer2"), &bundle, &log)?;

    // Layer 3: whiteouts and an opaque directory.
    let (deleted_dir_parent, deleted_dir_name) = split_parent(DELETED_DIR);
    let (deleted_file_parent, deleted_file_name) = split_parent(DELETED_FILE);
    let file_whiteout = format!("{deleted_file_parent}/.wh.{deleted_file_name}");
    let dir_whiteout = format!("{deleted_dir_parent}/.wh.{deleted_dir_name}");
    let opaque_dir = OPAQUE_DIR.trim_start_matches('/');
    let opaque_marker = format!("{opaque_dir}/.wh..wh..opq");
    let upper = format!("{opaque_dir}/{}", OPAQUE_UPPER_FILE.0);
    let items = [
        Item::dir("etc"),
        Item::file(&file_whiteout, b""),
        Item::dir(opaque_dir),
        Item::file(&opaque_marker, b""),
        Item::file(&upper, OPAQUE_UPPER_FILE.1),
        Item::dir("usr"),
        Item::dir("usr/share"),
        Item::dir("usr/share/doc"),
        Item::file(&dir_whiteout, b""),
    ];
    let tar = dir.join("layer3.tar");
    std::fs::write(&tar, layer_tar::build(&items)?)
        .map_err(io_context(format!("write {}", tar.display())))?;
    step(
        Command::new("umoci")
            .args([
                "raw",
                "add-layer",
                "--image",
                &image("layer2"),
                "--tag",
                "layer3",
            ])
            .arg(&tar),
        &log,
    )?;
    step(
        Command::new("umoci").args([
            "config",
            "--image",
            &image("layer3"),
            "--tag",
            IMAGE_TAG,
            "--config.env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--config.cmd",
            "python3",
        ]),
        &log,
    )?;
    std::fs::remove_dir_all(&bundle).map_err(io_context(format!("remove {}", bundle.display())))?;
    std::fs::remove_file(&tar).map_err(io_context(format!("remove {}", tar.display())))?;
    Ok(())
}

/// Starts the OCI layout `layout` (an empty image tagged `base`) and its bundle `bundle`
/// with `debootstrap --variant=minbase bookworm` in `bundle/rootfs`, apt's downloads and
/// lists removed: layer 1 of every test image, ready for `umoci repack`.
pub(crate) fn minbase_bundle(layout: &Path, bundle: &Path, log: &Path) -> Result<()> {
    let base = format!("{}:base", layout.display());
    step(
        Command::new("umoci").args(["init", "--layout"]).arg(layout),
        log,
    )?;
    step(Command::new("umoci").args(["new", "--image", &base]), log)?;
    step(
        Command::new("umoci")
            .args(["unpack", "--image", &base])
            .arg(bundle),
        log,
    )?;
    let rootfs = bundle.join("rootfs");
    step(
        Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&rootfs)
            .arg(debian_mirror()),
        log,
    )?;
    clean_apt(&rootfs)
}

/// `apt-get install --no-install-recommends packages` in a chroot of `rootfs` (with `/proc`
/// and `/dev` mounted for the time), then apt's downloads and lists removed.
pub(crate) fn apt_install(rootfs: &Path, packages: &[&str], log: &Path) -> Result<()> {
    {
        let _mounts = ChrootMounts::new(rootfs, log)?;
        let install = format!(
            "apt-get update -q && apt-get install -y -q --no-install-recommends {}",
            packages.join(" ")
        );
        step(
            Command::new("chroot").arg(rootfs).args([
                "/usr/bin/env",
                "DEBIAN_FRONTEND=noninteractive",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "sh",
                "-c",
                &install,
            ]),
            log,
        )?;
    }
    clean_apt(rootfs)
}

/// Builds an OCI layout at `layout` whose image (tag `evil`) has one layer with a regular
/// file named `../evil`: ingesting it must fail.
pub fn build_escaping_layout(layout: &Path, log: &Path) -> Result<()> {
    let image = format!("{}:evil", layout.display());
    step(
        Command::new("umoci").args(["init", "--layout"]).arg(layout),
        log,
    )?;
    step(Command::new("umoci").args(["new", "--image", &image]), log)?;
    let tar = layout.with_extension("tar");
    std::fs::write(&tar, layer_tar::escaping("../evil")?)
        .map_err(io_context(format!("write {}", tar.display())))?;
    step(
        Command::new("umoci")
            .args(["raw", "add-layer", "--image", &image])
            .arg(&tar),
        log,
    )
}

/// `/usr/share/doc/python3` → (`usr/share/doc`, `python3`).
fn split_parent(path: &str) -> (&str, &str) {
    let relative = path.trim_start_matches('/');
    relative.rsplit_once('/').unwrap_or(("", relative))
}

pub(crate) fn repack(image: &str, bundle: &Path, log: &Path) -> Result<()> {
    step(
        Command::new("umoci")
            .args(["repack", "--refresh-bundle", "--image", image])
            .arg(bundle),
        log,
    )
}

/// Removes apt's downloaded packages and package lists (as Debian's own images do).
pub(crate) fn clean_apt(rootfs: &Path) -> Result<()> {
    for dir in ["var/cache/apt", "var/lib/apt/lists"] {
        let path = rootfs.join(dir);
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries {
            let entry = entry.map_err(io_context(format!("list {}", path.display())))?;
            let p = entry.path();
            let result = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            result.map_err(io_context(format!("remove {}", p.display())))?;
        }
    }
    Ok(())
}

/// The files the whiteout layer deletes must exist, with the right kinds.
fn check_lower_layers(rootfs: &Path) -> Result<()> {
    let file = rootfs.join(DELETED_FILE.trim_start_matches('/'));
    let dir = rootfs.join(DELETED_DIR.trim_start_matches('/'));
    if !file.is_file() {
        return Err(Error::Invalid(format!(
            "test image: {} is not a regular file",
            file.display()
        )));
    }
    if !dir.is_dir() || dir.is_symlink() {
        return Err(Error::Invalid(format!(
            "test image: {} is not a directory",
            dir.display()
        )));
    }
    Ok(())
}

/// The Debian mirror apt uses on this machine for bookworm (deb822 `*.sources` or one-line
/// `*.list` entries), so that a local mirror or proxy setup is respected; `STRATA_DEBIAN_MIRROR`
/// overrides; [`DEFAULT_MIRROR`] otherwise.
pub fn debian_mirror() -> String {
    if let Ok(mirror) = std::env::var("STRATA_DEBIAN_MIRROR") {
        return mirror;
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|text| mirror_from_sources(&text))
        .unwrap_or_else(|| DEFAULT_MIRROR.to_owned())
}

/// The first URI serving suite `bookworm` with component `main` in one apt sources file.
fn mirror_from_sources(text: &str) -> Option<String> {
    // One-line format: deb [options] URI SUITE COMPONENT...
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(options) => options.split_once(']')?.1.trim_start(),
            None => rest,
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() >= 3 && fields[1] == "bookworm" && fields[2..].contains(&"main") {
            return Some(fields[0].trim_end_matches('/').to_owned());
        }
    }
    // deb822 format: stanzas separated by blank lines.
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (key, value) = l.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
        };
        let types = field("Types").unwrap_or_default();
        let suites = field("Suites").unwrap_or_default();
        let components = field("Components").unwrap_or_default();
        if types.split_whitespace().any(|t| t == "deb")
            && suites.split_whitespace().any(|s| s == "bookworm")
            && components.split_whitespace().any(|c| c == "main")
            && let Some(uri) =
                field("URIs").and_then(|u| u.split_whitespace().next().map(str::to_owned))
        {
            return Some(uri.trim_end_matches('/').to_owned());
        }
    }
    None
}

/// `/proc` and `/dev` mounted into a chroot (apt and dpkg need them); unmounted on drop.
struct ChrootMounts {
    mounted: Vec<PathBuf>,
}

impl ChrootMounts {
    fn new(rootfs: &Path, log: &Path) -> Result<ChrootMounts> {
        let mut guard = ChrootMounts {
            mounted: Vec::new(),
        };
        let proc = rootfs.join("proc");
        step(
            Command::new("mount")
                .args(["-t", "proc", "proc"])
                .arg(&proc),
            log,
        )?;
        guard.mounted.push(proc);
        let dev = rootfs.join("dev");
        step(
            Command::new("mount").args(["--bind", "/dev"]).arg(&dev),
            log,
        )?;
        guard.mounted.push(dev);
        Ok(guard)
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        for path in self.mounted.iter().rev() {
            if !crate::mounts::unmount(path) {
                eprintln!("warning: could not unmount {}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_mirror_in_both_source_formats() {
        let deb822 = "Types: deb\n# comment\nURIs: http://mirror.example/debian/\n\
                      Suites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://security.example\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(
            mirror_from_sources(deb822).as_deref(),
            Some("http://mirror.example/debian")
        );
        let one_line = "deb [arch=amd64] http://local/debian bookworm main contrib\n";
        assert_eq!(
            mirror_from_sources(one_line).as_deref(),
            Some("http://local/debian")
        );
        let other = "deb https://packages.example/apt cloud-sdk-bookworm main\n";
        assert_eq!(mirror_from_sources(other), None);
    }

    #[test]
    fn splits_paths() {
        assert_eq!(
            split_parent("/usr/share/doc/python3"),
            ("usr/share/doc", "python3")
        );
        assert_eq!(split_parent("/etc/issue.net"), ("etc", "issue.net"));
    }
}
