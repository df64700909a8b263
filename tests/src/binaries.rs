//! Where the Strata binaries and the cargo target directory are, and whether this machine
//! has what the end-to-end scenario needs.
//!
//! Tests never build anything: `scripts/test` runs `cargo build --workspace --all-targets`
//! first, and the binaries are looked up beside the running executable
//! (`target/<profile>/deps/e2e-…` → `target/<profile>/`, `target/<profile>/strata-demo` →
//! `target/<profile>/`). `STRATA_BIN_DIR` overrides the directory.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result, io_context};

/// The publisher binary's file name (crate `publisher`).
pub const PUBLISHER: &str = "strata-publisher";
/// The snapshotter binary's file name (crate `snapshotter`).
pub const SNAPSHOTTER: &str = "strata-snapshotter";

/// External programs the scenario runs, all from Debian packages (see `scripts/install-deps`).
pub const TOOLS: &[(&str, &str)] = &[
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
    ("umoci", "umoci"),
    ("debootstrap", "debootstrap"),
    ("containerd", "containerd"),
    ("containerd-shim-runc-v2", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("fusermount3", "fuse3"),
    ("chroot", "coreutils"),
    ("mount", "mount"),
    ("tar", "tar"),
    ("bsdtar", "libarchive-tools"),
    ("busybox", "busybox"),
    ("python3", "python3"),
];

/// The directory holding the workspace's binaries for the profile this executable was
/// built with (`target/debug` or `target/release`), or `STRATA_BIN_DIR`.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("STRATA_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(io_context("find the current executable"))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| Error::Invalid(format!("{} has no parent directory", exe.display())))?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The cargo target directory (parent of [`bin_dir`]); shared caches live below it.
pub fn target_dir() -> Result<PathBuf> {
    let bin = bin_dir()?;
    Ok(bin.parent().map(Path::to_path_buf).unwrap_or(bin))
}

/// Path of a workspace binary, or [`Error::Prerequisite`] telling how to build it.
pub fn strata_binary(name: &str) -> Result<PathBuf> {
    let dir = bin_dir()?;
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Prerequisite(format!(
            "{} not found; build the workspace first (`cargo build --workspace`, or \
             `cargo build --release --workspace` for the demo) — tests never build binaries",
            path.display()
        )))
    }
}

/// Looks `program` up on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Checks that we run as root, `/dev/fuse` exists, every tool of [`TOOLS`] is on `PATH`,
/// and the two Strata binaries are built. Every missing piece is listed in one
/// [`Error::Prerequisite`]; the tests fail on it, they are never skipped.
pub fn check_prerequisites() -> Result<()> {
    let mut missing = system_gaps();
    for name in [PUBLISHER, SNAPSHOTTER] {
        if let Err(Error::Prerequisite(text)) = strata_binary(name) {
            missing.push(text);
        }
    }
    prerequisites(missing)
}

/// [`check_prerequisites`] without the Strata binaries: root, `/dev/fuse` and [`TOOLS`].
pub fn check_system() -> Result<()> {
    prerequisites(system_gaps())
}

/// Checks that we run as root and `/dev/fuse` exists: what a FUSE mount (with
/// `allow_other`) and overlay mounts need. Both missing pieces are listed in one
/// [`Error::Prerequisite`].
pub fn check_root_and_fuse() -> Result<()> {
    prerequisites(root_and_fuse_gaps())
}

fn prerequisites(missing: Vec<String>) -> Result<()> {
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Prerequisite(missing.join("; ")))
    }
}

fn root_and_fuse_gaps() -> Vec<String> {
    let mut missing = Vec::new();
    if !nix::unistd::Uid::effective().is_root() {
        missing.push("root (FUSE mounts, containerd and chroot need it); run with sudo".to_owned());
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse (modprobe fuse)".to_owned());
    }
    missing
}

fn system_gaps() -> Vec<String> {
    let mut missing = root_and_fuse_gaps();
    for (program, package) in TOOLS {
        if which(program).is_none() {
            missing.push(format!(
                "{program} (apt-get install {package}; see scripts/install-deps)"
            ));
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_dir_is_the_profile_directory() {
        let dir = bin_dir().unwrap();
        // Unit tests run from target/<profile>/deps/tests-<hash>.
        assert_ne!(dir.file_name().unwrap(), "deps");
        assert!(dir.join("deps").is_dir(), "{}", dir.display());
        assert_eq!(target_dir().unwrap(), dir.parent().unwrap());
    }

    #[test]
    fn which_finds_sh_and_not_nonsense() {
        assert!(which("sh").is_some());
        assert!(which("no-such-program-strata").is_none());
    }

    #[test]
    fn missing_binary_names_the_build_command() {
        let err = strata_binary("no-such-binary").unwrap_err().to_string();
        assert!(err.contains("cargo build --workspace"), "{err}");
    }
}
