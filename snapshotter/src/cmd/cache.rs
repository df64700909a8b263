//! `strata-snapshotter cache --cache DIR [--evict-all]`: shows the size, entry count, hit and
//! miss counters and downloaded bytes of a cache directory (from its index `cachedb`, see
//! [`crate::client::quota`]) and can evict every object that no running mount holds open.
//! A running mount writes its counters to the index in batches, so on a live cache they
//! are at most half a second old.

use std::path::PathBuf;

use crate::client::quota::{CacheIndex, CacheStats};
use crate::{Error, Result};

/// Command-line arguments of `strata-snapshotter cache`.
#[derive(clap::Args, Debug)]
pub struct CacheArgs {
    /// The cache directory (as given to `mount --cache`).
    #[arg(long)]
    pub cache: PathBuf,
    /// Delete every cached object that is not in use (open files and loaded catalogs of
    /// running mounts stay).
    #[arg(long)]
    pub evict_all: bool,
}

/// Runs the command: prints the statistics on stdout (after eviction, if asked).
///
/// # Errors
/// [`Error::Config`] if the directory does not exist; index errors.
pub fn main(args: CacheArgs) -> Result<()> {
    if !args.cache.is_dir() {
        return Err(Error::Config(format!(
            "cache directory {} does not exist",
            args.cache.display()
        )));
    }
    let index = CacheIndex::open(&args.cache)?;
    if args.evict_all {
        let freed = index.evict_all()?;
        println!("evicted: {freed} bytes");
    }
    print!("{}", render(&args.cache, &index.stats()?));
    Ok(())
}

/// The report, one `key: value` per line.
pub fn render(dir: &std::path::Path, s: &CacheStats) -> String {
    let requests = s.hits + s.misses;
    let ratio = if requests == 0 {
        0.0
    } else {
        100.0 * s.hits as f64 / requests as f64
    };
    format!(
        "cache: {}\nsize: {} bytes ({:.1} MB)\nentries: {}\nhits: {}\nmisses: {}\nhit ratio: {:.1}%\nbytes fetched: {}\n\
         read-ahead bytes: {}\nread-ahead bytes later read: {}\nread-ahead waste: {} bytes\n\
         startup packs prefetched: {}\nstartup packs failed: {}\nstartup pack members rejected: {}\n\
         prefetched bytes: {}\nprefetched bytes later read: {}\nprefetch time: {} ms\n",
        dir.display(),
        s.size,
        s.size as f64 / 1048576.0,
        s.entries,
        s.hits,
        s.misses,
        ratio,
        s.bytes_fetched,
        s.readahead_bytes,
        s.readahead_used_bytes,
        s.readahead_bytes.saturating_sub(s.readahead_used_bytes),
        s.prefetch_packs,
        s.prefetch_failed_packs,
        s.prefetch_rejected_objects,
        s.prefetch_bytes,
        s.prefetch_used_bytes,
        s.prefetch_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_every_counter() {
        let s = CacheStats {
            size: 2 << 20,
            entries: 3,
            hits: 3,
            misses: 1,
            bytes_fetched: 1000,
            readahead_bytes: 500,
            readahead_used_bytes: 200,
            prefetch_packs: 2,
            prefetch_failed_packs: 1,
            prefetch_rejected_objects: 4,
            prefetch_bytes: 900,
            prefetch_used_bytes: 800,
            prefetch_ms: 12,
        };
        let text = render(std::path::Path::new("/c"), &s);
        assert!(text.contains("size: 2097152 bytes (2.0 MB)"), "{text}");
        assert!(text.contains("entries: 3"));
        assert!(text.contains("hits: 3\nmisses: 1\nhit ratio: 75.0%"));
        assert!(text.contains("bytes fetched: 1000"));
        assert!(text.contains("read-ahead bytes: 500\nread-ahead bytes later read: 200"));
        assert!(text.contains("read-ahead waste: 300 bytes"));
        assert!(text.contains("startup packs prefetched: 2\nstartup packs failed: 1"));
        assert!(text.contains("members rejected: 4\nprefetched bytes: 900"));
        assert!(text.contains("prefetched bytes later read: 800\nprefetch time: 12 ms"));
    }

    #[test]
    fn missing_directory_is_a_config_error() {
        let err = main(CacheArgs {
            cache: "/nonexistent/cache".into(),
            evict_all: false,
        })
        .unwrap_err();
        assert!(matches!(err, Error::Config(_)));
    }
}
