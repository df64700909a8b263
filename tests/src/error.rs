//! The harness's one error type, and [`ok`], the tests' unwrap that prints an error with
//! `Display`.

use std::path::PathBuf;

/// Everything that can go wrong while setting up or checking the end-to-end scenario.
///
/// Each variant names the step or input it is about, so that a failing test says what broke.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem or process operation failed; `context` says which and on what.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `create /tmp/x/registry.yml`.
        context: String,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and exited unsuccessfully.
    #[error("{command} failed ({status}); see {log}:\n{tail}")]
    Command {
        /// The command line, shortened to program and arguments.
        command: String,
        /// Exit status as printed by std (`exit status: 1`, `signal: 9`).
        status: String,
        /// Log file holding its stdout and stderr.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },
    /// Something the tests need is missing on this machine (not root, no /dev/fuse, a tool
    /// or a Strata binary not built). This is a test failure, never a skip.
    #[error("missing prerequisite: {0}")]
    Prerequisite(String),
    /// A service did not become ready in time.
    #[error("timed out after {seconds} s waiting for {what}")]
    Timeout {
        /// What was awaited, e.g. `registry on 127.0.0.1:40123`.
        what: String,
        /// How long we waited, in seconds.
        seconds: u64,
    },
    /// A started service exited before it became ready.
    #[error("{name} exited early ({status}); see {log}:\n{tail}")]
    ExitedEarly {
        /// Service name, e.g. `strata-publisher serve`.
        name: String,
        /// Exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },
    /// Data we read back (an OCI layout, an HTTP answer, a log) was not what it must be.
    #[error("{0}")]
    Invalid(String),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Builds a closure turning an `io::Error` into [`Error::Io`] with `context`.
pub fn io_context(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// The value of `r`; panics with the error's `Display` text (not `Debug`, as `unwrap`
/// would): the tests' unwrap.
pub fn ok<T, E: std::fmt::Display>(r: std::result::Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}
