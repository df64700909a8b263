//! A per-test scratch directory that holds every log, socket, mount point and repository.

use std::path::{Path, PathBuf};

use crate::error::{Result, io_context};
use crate::mounts;
use crate::process::{TAIL_LINES, tail};

/// A temporary directory under `$TMPDIR` (`/tmp/strata-<label>-XXXX`) with a `logs/`
/// subdirectory.
///
/// On drop, everything still mounted below it is unmounted (deepest first) and the
/// directory is removed — unless [`WorkDir::keep`] was called (a failed test keeps it for
/// inspection) or `STRATA_KEEP_WORKDIR=1` is set.
#[derive(Debug)]
pub struct WorkDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    /// Creates `/tmp/strata-<label>-XXXX/logs`.
    pub fn new(label: &str) -> Result<WorkDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("strata-{label}-"))
            .tempdir()
            .map_err(io_context("create a temporary directory"))?;
        let path = dir.path().to_path_buf();
        std::fs::create_dir(path.join("logs")).map_err(io_context("create logs directory"))?;
        let keep = std::env::var_os("STRATA_KEEP_WORKDIR").is_some_and(|v| v == "1");
        Ok(WorkDir {
            dir: Some(dir),
            path,
            keep,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subdirectory, created if needed.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let path = self.path.join(name);
        std::fs::create_dir_all(&path).map_err(io_context(format!("create {}", path.display())))?;
        Ok(path)
    }

    /// The log file path for `name` (`logs/<name>.log`).
    pub fn log(&self, name: &str) -> PathBuf {
        self.path.join("logs").join(format!("{name}.log"))
    }

    /// Whether the directory stays after drop (`STRATA_KEEP_WORKDIR=1` or [`WorkDir::keep`]).
    pub fn kept(&self) -> bool {
        self.keep
    }

    /// Keep the directory after drop (mounts below it are still undone).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Prints the last lines of every log to stderr, for a failure report.
    pub fn dump_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.path.join("logs")) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        logs.sort();
        for log in logs {
            eprintln!("----- last {TAIL_LINES} lines of {} -----", log.display());
            eprintln!("{}", tail(&log, TAIL_LINES));
        }
        eprintln!("----- work directory kept at {} -----", self.path.display());
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        mounts::unmount_all_under(&self.path);
        if let Some(dir) = self.dir.take() {
            let still_mounted = mounts::mounts_under(&self.path)
                .map(|m| !m.is_empty())
                .unwrap_or(true);
            if self.keep || still_mounted {
                let _ = dir.keep();
            }
        }
    }
}

/// The `main` of a harness program (the demo, the benches): runs `body` in a fresh
/// [`WorkDir`] labelled `label`; on failure prints `<program>: FAILED: <error>` with the
/// tails of every log and keeps the directory.
pub fn run_program(
    program: &str,
    label: &str,
    body: impl FnOnce(&WorkDir) -> anyhow::Result<()>,
) -> std::process::ExitCode {
    let mut work = match WorkDir::new(label) {
        Ok(work) => work,
        Err(e) => {
            eprintln!("{program}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match body(&work) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            work.dump_logs();
            work.keep();
            eprintln!("{program}: FAILED: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_logs_and_removes_itself() {
        let work = WorkDir::new("unit").unwrap();
        let path = work.path().to_path_buf();
        assert!(path.join("logs").is_dir());
        assert_eq!(work.log("registry"), path.join("logs/registry.log"));
        assert!(work.subdir("a/b").unwrap().is_dir());
        drop(work);
        assert!(!path.exists());
    }

    #[test]
    fn keep_leaves_the_directory() {
        let mut work = WorkDir::new("unit").unwrap();
        work.keep();
        let path = work.path().to_path_buf();
        drop(work);
        assert!(path.is_dir());
        std::fs::remove_dir_all(path).unwrap();
    }
}
