//! The CernVM-FS client behind `strata-snapshotter mount` (no FUSE here: [`crate::fuse`]
//! serves what this module loads).
//!
//! * [`mount_config`] — the mount's flags and TOML file (stock `CVMFS_*` option names);
//! * [`fetch`] — HTTP downloads of manifest, whitelist and objects, with server and proxy
//!   fail-over through the HTTP [`proxy_chain`] (`CVMFS_HTTP_PROXY`);
//! * [`cache`] — the verified, decompressed, content-addressed object cache, with its
//!   SQLite LRU index and [`quota`];
//! * [`readahead`] — fetching a directory's small files and a file's next chunks before
//!   they are read (read-ahead threads, behind demand reads);
//! * [`elf`] and [`library_search`] — what the dynamic loader opens after an ELF file,
//!   and where it finds it in an image root (read-ahead of libraries); [`chunk_reader`]
//!   reads a chunked file's headers through the cache;
//! * `writeback` — starting the write-back of cache files that arrive ahead of reads, on
//!   a thread of its own (a container start would otherwise wait for it);
//! * [`startup`] — prefetching an image's startup packs (its published working set) when
//!   a pull or a start asks for it;
//! * `work_queue` — the job queue and worker threads read-ahead and startup prefetch
//!   share;
//! * [`breadcrumb`] — which revision this node mounted last (rollback protection);
//! * [`repository`] — boot (manifest chain verification, choice of revision) and the
//!   [`repository::MountedRevision`]: one revision's catalog tree, loaded lazily.

pub mod breadcrumb;
pub mod cache;
pub mod chunk_reader;
pub mod elf;
pub mod fetch;
pub mod library_search;
pub mod mount_config;
pub mod proxy_chain;
pub mod quota;
pub mod readahead;
pub mod repository;
pub mod scan;
pub mod startup;
mod work_queue;
mod writeback;
