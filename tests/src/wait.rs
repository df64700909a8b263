//! Waiting for a condition: the harness's one poll loop, whose timeout error names what was
//! awaited ([`Error::Timeout`]).

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Polls `attempt` every `every` until it returns `Ok(Some(value))` (returned) or an error
/// (returned at once); after `timeout` fails with [`Error::Timeout`] naming `what`.
///
/// `attempt` runs at least once, and once more after the deadline has passed, so a
/// condition that holds by then is never reported as a timeout.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut attempt: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = Instant::now() >= deadline;
        if let Some(value) = attempt()? {
            return Ok(value);
        }
        if last {
            return Err(Error::Timeout {
                what: what.to_owned(),
                seconds: timeout.as_secs(),
            });
        }
        std::thread::sleep(every.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// Polls `ready` every `every` until it holds; after `timeout` fails with
/// [`Error::Timeout`] naming `what`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    poll(what, timeout, every, || Ok(ready().then_some(())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_ready_and_times_out_naming_what() {
        let mut calls = 0;
        wait_until(
            "three calls",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                calls += 1;
                calls == 3
            },
        )
        .unwrap();
        assert_eq!(calls, 3);

        let start = Instant::now();
        let err = wait_until(
            "the impossible",
            Duration::from_millis(200),
            Duration::from_millis(20),
            || false,
        )
        .unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(err.to_string().contains("the impossible"), "{err}");
    }

    #[test]
    fn poll_returns_the_value_and_passes_errors_through() {
        let mut n = 0;
        let got = poll("n > 1", Duration::from_secs(5), Duration::ZERO, || {
            n += 1;
            Ok((n > 1).then_some(n * 10))
        })
        .unwrap();
        assert_eq!(got, 20);
        let err = poll::<()>("never", Duration::from_secs(5), Duration::ZERO, || {
            Err(Error::Invalid("broken".into()))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "broken");
    }
}
