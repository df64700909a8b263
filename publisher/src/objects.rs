//! Writing and reading content objects of the [`LocalStore`] (docs/format.md §1.3, §3): file
//! contents and catalogs are zlib-compressed and named by the SHA-1 of the stored bytes.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use catalog::{ContentHash, LocalStore, Suffix};

use crate::error::{Error, Result};

/// Stores a finished catalog file (suffix `C`, always zlib, docs/format.md §1.4), streaming it
/// through [`LocalStore::store_stream`]; returns its hash and uncompressed size.
pub fn store_catalog(store: &LocalStore, file: &Path) -> Result<(ContentHash, u64)> {
    let f = File::open(file).map_err(|e| Error::io(format!("open {}", file.display()), e))?;
    let info = store.store_stream(f, Suffix::Catalog)?;
    Ok((info.hash, info.raw_size))
}

/// Reads an object and inflates it; errors if it is larger than `max_size` bytes or does not
/// hash to `hash`.
pub fn read_object(
    store: &LocalStore,
    hash: &ContentHash,
    suffix: Suffix,
    max_size: u64,
) -> Result<Vec<u8>> {
    let stored = store.get(hash, suffix)?;
    catalog::compression::verify(&stored, hash)?;
    Ok(catalog::decompress(&stored, max_size)?)
}

/// Inflates the catalog object `hash` into the file `dest` (verifying its hash).
pub fn inflate_catalog(store: &LocalStore, hash: &ContentHash, dest: &Path) -> Result<()> {
    let stored = store.get(hash, Suffix::Catalog)?;
    let out = File::create(dest).map_err(|e| Error::io(format!("create {}", dest.display()), e))?;
    let mut w = io::BufWriter::new(out);
    catalog::verify_and_inflate(&stored[..], &mut w, hash, true)?;
    w.flush()
        .map_err(|e| Error::io(format!("write {}", dest.display()), e))
}
