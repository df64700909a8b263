//! Progress of an ingest: on a terminal, indicatif bars (one per layer: compressed bytes
//! read, rate, ETA; one for the batch: layers done); otherwise one log line when a layer
//! starts and one when it ends, with its size and rate.

use std::io::{IsTerminal, Read};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress of one ingest.
pub struct Progress {
    multi: Option<MultiProgress>,
    layers: ProgressBar,
}

impl Progress {
    /// Bars when stderr is a terminal, log lines otherwise.
    pub fn new() -> Progress {
        Progress::with_bars(std::io::stderr().is_terminal())
    }

    /// Bars (`true`) or log lines (`false`).
    pub fn with_bars(bars: bool) -> Progress {
        if !bars {
            return Progress {
                multi: None,
                layers: ProgressBar::hidden(),
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let layers = multi.add(ProgressBar::new(0));
        layers.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} layers {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        layers.set_prefix("ingest");
        Progress {
            multi: Some(multi),
            layers,
        }
    }

    /// Announces `n` more layers to convert.
    pub fn add_layers(&self, n: u64) {
        self.layers.inc_length(n);
    }

    /// Starts tracking one layer of `size` compressed bytes.
    pub fn layer(&self, digest: &str, size: u64) -> LayerProgress {
        let short: String = digest
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect();
        let bar = match &self.multi {
            Some(m) => {
                let b = m.add(ProgressBar::new(size));
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                b.set_prefix(short.clone());
                b
            }
            None => {
                tracing::info!(layer = %digest, bytes = size, "converting layer");
                ProgressBar::hidden()
            }
        };
        LayerProgress {
            bar,
            layers: self.layers.clone(),
            digest: digest.to_string(),
            start: Instant::now(),
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

/// Progress of one layer.
pub struct LayerProgress {
    bar: ProgressBar,
    layers: ProgressBar,
    digest: String,
    start: Instant,
}

impl LayerProgress {
    /// Wraps the blob reader so that bytes read advance the bar.
    pub fn reader<R: Read>(&self, inner: R) -> CountingReader<R> {
        CountingReader {
            inner,
            bar: self.bar.clone(),
        }
    }

    /// The layer is converted: `compressed` / `uncompressed` bytes, `files` stored.
    pub fn finish(&self, compressed: u64, uncompressed: u64, files: u64) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        self.bar.finish_and_clear();
        self.layers.inc(1);
        tracing::info!(
            layer = %self.digest,
            compressed,
            uncompressed,
            files,
            seconds = format!("{secs:.2}"),
            mb_per_s = format!("{:.1}", uncompressed as f64 / secs / 1e6),
            "converted layer"
        );
    }
}

/// A reader that advances a progress bar.
pub struct CountingReader<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_reader_passes_bytes_through() {
        let p = Progress::with_bars(false);
        p.add_layers(1);
        let l = p.layer("sha256:abc", 5);
        let mut out = Vec::new();
        l.reader(&b"hello"[..])
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, b"hello");
        l.finish(5, 10, 1);
        assert_eq!(p.layers.position(), 1);
    }
}
