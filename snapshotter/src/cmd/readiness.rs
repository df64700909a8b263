//! systemd readiness: `READY=1` on `$NOTIFY_SOCKET` (sd_notify(3)) once a process really
//! serves, so that `Type=notify` units order what comes after them (containerd) on the
//! service being usable rather than on the process having started. Without
//! `$NOTIFY_SOCKET` (not started by systemd) nothing is sent.

/// Tells systemd that `what` (for the log, e.g. "mount") is ready. A failure to send is
/// logged and otherwise ignored: the service works without it, and systemd's start timeout
/// reports a unit that never became ready.
pub fn notify_ready(what: &str) {
    match sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        Ok(()) => tracing::debug!(what, "readiness sent to systemd (if $NOTIFY_SOCKET is set)"),
        Err(e) => tracing::warn!(what, error = %e, "cannot send READY=1 to systemd"),
    }
}
