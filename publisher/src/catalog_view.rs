//! A layer catalog (`.layers/<hh>/<hex>/layerfs`) read as a [`LayerView`] for the streaming
//! flattener: either the uncompressed file `ingest` has just written, or a published catalog
//! inflated into `DIR/tmp`.

use std::path::{Path, PathBuf};

use catalog::{CatalogReader, ContentHash, Entry};

use crate::error::{Error, Result};
use crate::flatten::LayerView;
use crate::objects::inflate_catalog;
use crate::repo::Repo;

/// An open layer catalog. Paths given to [`LayerView`] are relative to the catalog's root
/// prefix. Hidden rows (the `.cvmfscatalog` marker, `tree::hidden_marker_entry`) are not
/// layer content: an image has no hidden files, so the view leaves them out.
pub struct CatalogView {
    reader: CatalogReader,
    file: PathBuf,
    prefix: String,
    /// Keeps an inflated copy alive (removed on drop).
    _tmp: Option<tempfile::TempDir>,
}

impl CatalogView {
    /// Opens the uncompressed catalog `file`.
    ///
    /// Errors: [`Error::Catalog`] if it is not a catalog.
    pub fn open(file: &Path) -> Result<CatalogView> {
        let reader = CatalogReader::open(file)?;
        let prefix = reader.root_prefix().to_string();
        Ok(CatalogView {
            reader,
            file: file.to_path_buf(),
            prefix,
            _tmp: None,
        })
    }

    /// Inflates the published catalog `hash` into `DIR/tmp` and opens it.
    ///
    /// Errors: store and catalog errors.
    pub fn open_published(repo: &Repo, hash: &ContentHash) -> Result<CatalogView> {
        let tmp = tempfile::tempdir_in(repo.tmp_dir()?)
            .map_err(|e| Error::io("creating temp dir in DIR/tmp", e))?;
        let file = tmp.path().join("layer.db");
        inflate_catalog(&repo.store, hash, &file)?;
        let mut view = CatalogView::open(&file)?;
        view._tmp = Some(tmp);
        Ok(view)
    }

    /// The nested catalogs this catalog references (mountpoint and hash).
    ///
    /// Errors: [`Error::Catalog`].
    pub fn nested_catalogs(&self) -> Result<Vec<catalog::NestedCatalogRef>> {
        Ok(self.reader.nested_catalogs()?)
    }

    /// Bytes of the (uncompressed) catalog file.
    ///
    /// Errors: [`Error::Io`] if it cannot be stat'ed.
    pub fn file_size(&self) -> Result<u64> {
        std::fs::metadata(&self.file)
            .map(|m| m.len())
            .map_err(|e| Error::io(format!("stat {}", self.file.display()), e))
    }

    /// The catalog's root path as catalogs spell it (`/.layers/ab/<hex>/layerfs`).
    pub fn root_path(&self) -> &str {
        &self.prefix
    }

    fn full(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }
}

impl LayerView for CatalogView {
    fn root(&self) -> Result<Entry> {
        self.reader.lookup(&self.prefix)?.ok_or_else(|| {
            Error::Task(format!(
                "catalog {} has no root entry {:?}",
                self.file.display(),
                self.prefix
            ))
        })
    }

    fn list(&self, dir: &str) -> Result<Vec<Entry>> {
        let full = self.full(dir);
        let mut out = self.reader.list(&full)?;
        out.retain(|e| !e.is_hidden());
        for e in &mut out {
            if e.is_chunked() {
                // The reader leaves `chunks` empty; the writer needs them (docs/format.md §6.10).
                e.chunks = self.reader.chunks(&format!("{full}/{}", e.name))?;
            }
        }
        Ok(out)
    }

    fn lookup(&self, path: &str) -> Result<Option<Entry>> {
        let full = self.full(path);
        let mut e = self.reader.lookup(&full)?.filter(|e| !e.is_hidden());
        if let Some(e) = e.as_mut()
            && e.is_chunked()
        {
            e.chunks = self.reader.chunks(&full)?;
        }
        Ok(e)
    }

    /// `max(hardlinks >> 32)` over the catalog table (the group id is the high half of
    /// the `hardlinks` column, docs/format.md §6.8; masked to 32 bits as the reader takes it,
    /// since SQLite shifts the signed column arithmetically).
    fn max_hardlink_group(&self) -> Result<u32> {
        let sql = |source| Error::Sqlite {
            file: self.file.clone(),
            source,
        };
        let conn = rusqlite::Connection::open_with_flags(
            &self.file,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        let max: i64 = conn
            .query_row(
                "SELECT COALESCE(MAX((hardlinks >> 32) & 4294967295), 0) FROM catalog",
                [],
                |r| r.get(0),
            )
            .map_err(sql)?;
        Ok(u32::try_from(max.max(0)).unwrap_or(u32::MAX))
    }
}
