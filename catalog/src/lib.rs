//! The CernVM-FS (CVMFS) repository format, without any networking.
//!
//! Everything here follows `docs/format.md`; section numbers in the docs point
//! there. Main pieces:
//!
//! * [`hash`]: [`ContentHash`] (SHA-1, RIPEMD-160, SHAKE128), object names
//!   `data/57/98f7…a3C` and whitelist fingerprints (§1.3, §2).
//! * [`chunking`]: content-defined chunking bit-identical to stock CVMFS, a streaming
//!   [`ChunkingWriter`] into the store, and chunk lookup for random access (§4).
//! * [`compression`]: zlib objects, bounded inflate, hash verification, streaming
//!   [`ObjectWriter`] and [`verify_and_inflate`] (§3).
//! * [`path_hash`](mod@path_hash), [`xattr`], [`entry`], [`statistics`]: the pieces of a catalog row and
//!   of the counters (§6.5–§6.13).
//! * [`writer`] / [`reader`]: [`CatalogWriter`] builds schema 2.5 rev 7 SQLite catalogs,
//!   [`CatalogReader`] reads them (and stock catalogs) read-only (§6).
//! * [`keys`], [`manifest`], [`whitelist`], [`verify`]: RSA keys and certificates, the
//!   signed `.cvmfspublished` and `.cvmfswhitelist`, and the client's verification chain
//!   (§7).
//! * [`history`]: the tag database (`H` object) stock tools use to list revisions (§9.5).
//! * [`store`]: [`LocalStore`], the served tree with atomic writes (§1.2).
//! * [`mountinfo`]: which file systems are mounted where (`/proc/self/mountinfo`), for the
//!   publisher, the client bench and the tests that wait for a repository's FUSE mount.
//! * [`stock_zlib`]: C zlib for the objects stock tools re-create from their content
//!   (certificate, meta-info), so their names survive a Stratum-1 replication (§3.1, §7.3).
//!
//! Catalogs and objects are plain files: all of this is blocking code, to be run on
//! blocking threads by async callers.

// Unsafe code only in `stock_zlib` (one C zlib call, through libz-sys).
#![warn(missing_docs)]

pub mod chunking;
pub mod compression;
pub mod entry;
pub mod error;
pub mod hash;
pub mod history;
pub mod keys;
pub mod manifest;
pub mod mountinfo;
pub mod names;
pub mod path_hash;
pub mod reader;
mod signed;
pub mod startup_pack;
pub mod statistics;
pub mod stock_zlib;
pub mod store;
#[cfg(test)]
mod test_support;
pub mod verify;
pub mod whitelist;
pub mod writer;
pub mod xattr;

pub use chunking::{ChunkParams, Chunker, ChunkingWriter, StoredFile, chunk_range, chunk_spans};
pub use compression::{
    InflatingWriter, ObjectInfo, ObjectWriter, compress, compress_into, decode, decompress,
    verify_and_inflate,
};
pub use entry::{Chunk, Entry, EntryKind};
pub use error::{Error, Result};
pub use hash::{ContentHash, HashAlgorithm, Hasher, Suffix};
pub use history::{HistoryReader, HistoryWriter, Publication, Tag, update_history};
pub use keys::{Certificate, RsaPrivateKey, RsaPublicKey};
pub use manifest::{Manifest, SignedManifest};
pub use path_hash::{PathHash, parent_hash, parent_path, path_hash};
pub use reader::{CatalogReader, NestedCatalogRef};
pub use startup_pack::{PackBuilder, PackMember, StartupPack};
pub use statistics::{Counters, Statistics};
pub use store::{Durability, LocalStore};
pub use verify::verify_repository;
pub use whitelist::{SignedWhitelist, Whitelist};
pub use writer::{CatalogProperties, CatalogWriter, Transition};
pub use xattr::{decode_xattrs, encode_xattrs};
