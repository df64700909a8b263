//! The `sync` event log: one JSON object per line (JSON Lines), appended, one line per image
//! per pass and one summary line per pass. Like DUCC's `--notification-file`, but naming
//! outcomes rather than internal steps.
//!
//! Image lines: `{"time": <unix seconds, float>, "pass": "<pass id>", "event":
//! "added"|"updated"|"removed"|"unchanged"|"failed", "image": "<registry>/<repo>:<tag>" (or
//! the recipe text for an entry that failed before it named an image), "digest": "sha256:…"
//! (the manifest/index digest now published; absent for removed/failed),
//! "previous_digest": "sha256:…" (updated/removed), "seconds": <float>, "error": "…"
//! (failed)}`.
//!
//! The pass line: `{"time", "pass", "event": "pass", "revision": <n or null when nothing
//! was published>, "added", "updated", "removed", "unchanged", "failed": <counts>,
//! "seconds": <float>, "dry_run": <bool>}`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// What happened to one image in a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Newly published.
    Added,
    /// Its tag moved (or its platforms changed): re-ingested, public symlink repointed.
    Updated,
    /// No longer wanted: removed from the namespace.
    Removed,
    /// Already published as the registry has it.
    Unchanged,
    /// Could not be checked or ingested; the previous state (if any) stays published.
    Failed,
}

/// One image line of the log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImageEvent {
    /// What happened.
    pub event: Outcome,
    /// The public name, or the recipe entry text.
    pub image: String,
    /// The manifest or index digest now published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The digest published before this pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_digest: Option<String>,
    /// Time spent on this image (check plus ingest), seconds.
    pub seconds: f64,
    /// The error, for [`Outcome::Failed`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The summary line of one pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PassSummary {
    /// The revision published, `None` when the pass changed nothing (or was a dry run).
    pub revision: Option<u64>,
    /// Images added.
    pub added: usize,
    /// Images updated.
    pub updated: usize,
    /// Images removed.
    pub removed: usize,
    /// Images unchanged.
    pub unchanged: usize,
    /// Images or recipe entries that failed.
    pub failed: usize,
    /// Wall time of the pass, seconds.
    pub seconds: f64,
    /// Whether this was `--dry-run` (nothing written but the log).
    pub dry_run: bool,
}

#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    time: f64,
    pass: &'a str,
    #[serde(flatten)]
    body: &'a T,
}

#[derive(Serialize)]
struct PassLine<'a> {
    event: &'static str,
    #[serde(flatten)]
    summary: &'a PassSummary,
}

/// An append-only JSON Lines file.
#[derive(Debug)]
pub struct EventLog {
    file: File,
    path: PathBuf,
    pass: String,
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl EventLog {
    /// Opens (creating if needed) `path` for appending; lines written carry the pass id
    /// `pass`. Errors with [`Error::Io`].
    pub fn open(path: &Path, pass: &str) -> Result<EventLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(format!("open event log {}", path.display()), e))?;
        Ok(EventLog {
            file,
            path: path.to_path_buf(),
            pass: pass.to_string(),
        })
    }

    /// A pass id: the UTC start time, `YYYY-MM-DDTHH:MM:SSZ`, plus the process id.
    pub fn new_pass_id() -> String {
        format!(
            "{}-{}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
            std::process::id()
        )
    }

    fn write<T: Serialize>(&mut self, body: &T) -> Result<()> {
        let line = Line {
            time: now_secs(),
            pass: &self.pass,
            body,
        };
        let mut bytes = serde_json::to_vec(&line).map_err(|e| Error::json("event", e))?;
        bytes.push(b'\n');
        // One write per line with O_APPEND: lines of concurrent writers do not interleave.
        self.file
            .write_all(&bytes)
            .map_err(|e| Error::io(format!("append to {}", self.path.display()), e))
    }

    /// Appends one image line.
    pub fn image(&mut self, event: &ImageEvent) -> Result<()> {
        self.write(event)
    }

    /// Appends the pass summary line.
    pub fn pass(&mut self, summary: &PassSummary) -> Result<()> {
        self.write(&PassLine {
            event: "pass",
            summary,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_pass_id() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("events.jsonl");
        let mut log = EventLog::open(&path, "p1").unwrap_or_else(|e| panic!("{e}"));
        let ev = ImageEvent {
            event: Outcome::Failed,
            image: "r/a:1".into(),
            digest: None,
            previous_digest: None,
            seconds: 0.5,
            error: Some("boom".into()),
        };
        log.image(&ev).unwrap_or_else(|e| panic!("{e}"));
        drop(log);
        let mut log = EventLog::open(&path, "p2").unwrap_or_else(|e| panic!("{e}"));
        log.pass(&PassSummary {
            failed: 1,
            ..PassSummary::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "failed");
        assert_eq!(lines[0]["pass"], "p1");
        assert_eq!(lines[0]["error"], "boom");
        assert!(lines[0].get("digest").is_none());
        assert!(lines[0]["time"].as_f64().is_some_and(|t| t > 1.0e9));
        assert_eq!(lines[1]["event"], "pass");
        assert_eq!(lines[1]["pass"], "p2");
        assert_eq!(lines[1]["failed"], 1);
        assert!(lines[1]["revision"].is_null());
        assert!(
            EventLog::new_pass_id().ends_with(&format!("Z-{}", std::process::id())),
            "{}",
            EventLog::new_pass_id()
        );
    }
}
