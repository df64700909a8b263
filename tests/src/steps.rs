//! Named, timed steps: what the demo prints and what a failing test reports.

use std::time::{Duration, Instant};

/// One finished step: its name and wall-clock duration.
#[derive(Debug, Clone)]
pub struct StepTime {
    /// Human-readable step name, e.g. `publish (strata-publisher ingest)`.
    pub name: String,
    /// Wall-clock time the step took.
    pub duration: Duration,
}

/// Runs and times steps, printing `==> name` before and the duration after each one.
#[derive(Debug, Default)]
pub struct Steps {
    done: Vec<StepTime>,
}

impl Steps {
    /// An empty list.
    pub fn new() -> Steps {
        Steps::default()
    }

    /// Runs `f` as step `name`; the step is recorded whether it fails or not.
    pub fn run<T, E: std::fmt::Display>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        println!("==> {name}");
        let start = Instant::now();
        let result = f();
        let duration = start.elapsed();
        match &result {
            Ok(_) => println!("    ok in {}", format_duration(duration)),
            Err(e) => println!("    FAILED after {}: {e}", format_duration(duration)),
        }
        self.done.push(StepTime {
            name: name.to_owned(),
            duration,
        });
        result
    }

    /// The steps run so far, in order.
    pub fn done(&self) -> &[StepTime] {
        &self.done
    }

    /// A table of all steps with their durations.
    pub fn summary(&self) -> String {
        let width = self.done.iter().map(|s| s.name.len()).max().unwrap_or(0);
        let mut text = String::new();
        for step in &self.done {
            text.push_str(&format!(
                "  {:width$}  {:>9}\n",
                step.name,
                format_duration(step.duration)
            ));
        }
        text
    }
}

/// `1.234 s` or `56 ms`.
pub fn format_duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.3} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// `12.3 MiB (12 901 234 bytes)`-style size for reports.
pub fn format_bytes(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    let human = if b >= KIB * KIB {
        format!("{:.1} MiB", b / KIB / KIB)
    } else if b >= KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{bytes} B")
    };
    format!("{human} ({bytes} bytes)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_successes_and_failures() {
        let mut steps = Steps::new();
        assert_eq!(steps.run("one", || Ok::<_, String>(5)).unwrap(), 5);
        assert!(steps.run("two", || Err::<(), _>("bad".to_owned())).is_err());
        let names: Vec<&str> = steps.done().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
        assert!(steps.summary().contains("one"));
    }

    #[test]
    fn formats() {
        assert_eq!(format_duration(Duration::from_millis(56)), "56 ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.500 s");
        assert_eq!(format_bytes(10), "10 B (10 bytes)");
        assert_eq!(format_bytes(2048), "2.0 KiB (2048 bytes)");
        assert_eq!(format_bytes(3 * 1024 * 1024), "3.0 MiB (3145728 bytes)");
    }
}
