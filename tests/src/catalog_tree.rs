//! Reading a published subtree back through the `catalog` crate, the way a CVMFS client
//! does (docs/format.md §7.1, §6.12): `.cvmfspublished` → root catalog → nested catalogs, every
//! object read from the served tree `DIR/srv/data/`, checked against its hash and
//! inflated; chunked files are put together from [`CatalogReader::chunks`]. Hidden rows are
//! not listed, as a client does not list them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use catalog::{CatalogReader, ContentHash, Entry, EntryKind, Manifest, Suffix};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result, io_context};
use crate::fstree::{Kind, Node, Tree, child_path};

/// Largest object (catalog or file content) inflated here: 1 GiB.
const MAX_OBJECT: u64 = 1 << 30;

/// A published revision opened from its served directory; catalogs are inflated into a
/// private temporary directory and opened on demand.
pub struct Published {
    srv: PathBuf,
    scratch: tempfile::TempDir,
    /// Open catalogs by root prefix (`""` = root catalog, `/.flat/ab/ab12…`).
    catalogs: BTreeMap<String, CatalogReader>,
    /// The manifest of the revision.
    pub manifest: Manifest,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("srv", &self.srv)
            .field("revision", &self.manifest.revision)
            .field("catalogs", &self.catalogs.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What one catalog walk saw besides the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkFacts {
    /// Catalogs the subtree spans (root prefixes).
    pub catalogs: Vec<String>,
    /// Files stored in chunks, and their chunk counts.
    pub chunked: BTreeMap<String, usize>,
    /// Hard-link groups: (directory, group id) → member paths, for groups of ≥ 2.
    pub hardlink_groups: BTreeMap<(String, u32), Vec<String>>,
}

impl Published {
    /// Opens the revision `srv/.cvmfspublished` names (`srv` = `DIR/srv` of the publisher
    /// repository). The signature is not checked here (`strata-publisher verify` does).
    ///
    /// Errors: missing or malformed manifest, missing or corrupt root catalog.
    pub fn open(srv: &Path) -> Result<Published> {
        let path = srv.join(".cvmfspublished");
        let bytes = std::fs::read(&path).map_err(io_context(format!("read {}", path.display())))?;
        let signed = Manifest::parse(&bytes)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let scratch = tempfile::Builder::new()
            .prefix("strata-catalogs-")
            .tempdir()
            .map_err(io_context("create a scratch directory for catalogs"))?;
        let mut published = Published {
            srv: srv.to_owned(),
            scratch,
            catalogs: BTreeMap::new(),
            manifest: signed.manifest,
        };
        let root = published.manifest.catalog_hash;
        published.load_catalog("", &root)?;
        Ok(published)
    }

    /// The stored bytes of an object, checked against its hash.
    fn object(&self, hash: &ContentHash, suffix: Suffix) -> Result<Vec<u8>> {
        let path = self.srv.join(hash.object_path(suffix));
        let stored =
            std::fs::read(&path).map_err(io_context(format!("read {}", path.display())))?;
        catalog::compression::verify(&stored, hash)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        Ok(stored)
    }

    fn load_catalog(&mut self, prefix: &str, hash: &ContentHash) -> Result<()> {
        if self.catalogs.contains_key(prefix) {
            return Ok(());
        }
        let stored = self.object(hash, Suffix::Catalog)?;
        let raw = catalog::decompress(&stored, MAX_OBJECT)
            .map_err(|e| Error::Invalid(format!("catalog {hash} of {prefix:?}: {e}")))?;
        let file = self.scratch.path().join(format!("{hash}.sqlite"));
        let mut out = std::fs::File::create(&file)
            .map_err(io_context(format!("create {}", file.display())))?;
        out.write_all(&raw)
            .map_err(io_context(format!("write {}", file.display())))?;
        drop(out);
        let reader = CatalogReader::open(&file)
            .map_err(|e| Error::Invalid(format!("open catalog {hash} of {prefix:?}: {e}")))?;
        if reader.root_prefix() != prefix {
            return Err(Error::Invalid(format!(
                "catalog {hash} registered at {prefix:?} has root prefix {:?}",
                reader.root_prefix()
            )));
        }
        self.catalogs.insert(prefix.to_owned(), reader);
        Ok(())
    }

    /// The prefix of the deepest catalog holding absolute `path` (`/.flat/ab/…`), loading
    /// nested catalogs on the way.
    fn catalog_for(&mut self, path: &str) -> Result<String> {
        let mut prefix = String::new();
        loop {
            let nested = self
                .catalog(&prefix)?
                .nested_catalogs()
                .map_err(|e| Error::Invalid(format!("nested catalogs of {prefix:?}: {e}")))?;
            let Some(next) = nested.into_iter().find(|n| {
                path == n.path
                    || path
                        .strip_prefix(n.path.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            }) else {
                return Ok(prefix);
            };
            self.load_catalog(&next.path, &next.hash)?;
            prefix = next.path;
        }
    }

    fn catalog(&self, prefix: &str) -> Result<&CatalogReader> {
        self.catalogs
            .get(prefix)
            .ok_or_else(|| Error::Invalid(format!("catalog {prefix:?} not loaded")))
    }

    /// The entry at absolute `path`, from the deepest catalog holding it.
    ///
    /// Errors: catalog or object failures; `Ok(None)` if no catalog has the path.
    pub fn lookup(&mut self, path: &str) -> Result<Option<Entry>> {
        let prefix = self.catalog_for(path)?;
        self.catalog(&prefix)?
            .lookup(path)
            .map_err(|e| Error::Invalid(format!("lookup {path}: {e}")))
    }

    /// Reads the subtree at absolute catalog path `root` (e.g. `/.flat/ab/ab12…`) into a
    /// [`Tree`] (`""` = `root` itself), with the content hash of every regular file.
    ///
    /// Errors: `root` missing or not a directory, catalog or object failures (an object
    /// whose hash does not match is an error), a chunk list not tiling its file.
    pub fn tree(&mut self, root: &str) -> Result<(Tree, WalkFacts)> {
        let entry = self
            .lookup(root)?
            .ok_or_else(|| Error::Invalid(format!("{root}: not in the catalogs")))?;
        if entry.kind != EntryKind::Directory {
            return Err(Error::Invalid(format!("{root}: not a directory")));
        }
        let mut tree = Tree::new();
        let mut facts = WalkFacts::default();
        let prefix = self.catalog_for(root)?;
        facts.catalogs.push(prefix.clone());
        tree.insert(String::new(), self.node(&prefix, root, &entry)?);
        self.visit(&prefix, root, "", &mut tree, &mut facts)?;
        Ok((tree, facts))
    }

    fn visit(
        &mut self,
        prefix: &str,
        dir: &str,
        relative: &str,
        tree: &mut Tree,
        facts: &mut WalkFacts,
    ) -> Result<()> {
        let children = self
            .catalog(prefix)?
            .list(dir)
            .map_err(|e| Error::Invalid(format!("list {dir}: {e}")))?;
        // Hidden rows (the `.cvmfscatalog` markers of layer and flat roots) are left out of
        // listings, as clients do (docs/format.md §6.6, §8.3).
        for child in children.into_iter().filter(|c| !c.is_hidden()) {
            let path = format!("{dir}/{}", child.name);
            let rel = child_path(relative, &child.name);
            if child.hardlink_group != 0 {
                facts
                    .hardlink_groups
                    .entry((relative.to_owned(), child.hardlink_group))
                    .or_default()
                    .push(rel.clone());
            }
            if child.kind == EntryKind::Directory && child.is_nested_mountpoint() {
                let nested = self.catalog_for(&path)?;
                if nested != path {
                    return Err(Error::Invalid(format!(
                        "{path} is a nested mountpoint but no nested catalog is registered there"
                    )));
                }
                facts.catalogs.push(nested.clone());
                // The nested root's row (in the child) is what a client serves.
                let root_entry = self
                    .catalog(&nested)?
                    .lookup(&path)
                    .map_err(|e| Error::Invalid(format!("lookup {path}: {e}")))?
                    .ok_or_else(|| Error::Invalid(format!("{path}: no root row in its catalog")))?;
                tree.insert(rel.clone(), self.node(&nested, &path, &root_entry)?);
                self.visit(&nested, &path, &rel, tree, facts)?;
                continue;
            }
            let node = self.node(prefix, &path, &child)?;
            if child.is_chunked() {
                let chunks = self
                    .catalog(prefix)?
                    .chunks(&path)
                    .map_err(|e| Error::Invalid(format!("chunks of {path}: {e}")))?;
                facts.chunked.insert(rel.clone(), chunks.len());
            }
            tree.insert(rel.clone(), node);
            if child.kind == EntryKind::Directory {
                self.visit(prefix, &path, &rel, tree, facts)?;
            }
        }
        Ok(())
    }

    /// One catalog row as a [`Node`], reading its content for regular files.
    fn node(&self, prefix: &str, path: &str, e: &Entry) -> Result<Node> {
        let kind = match e.kind {
            EntryKind::Directory => Kind::Dir,
            EntryKind::Regular => Kind::File,
            EntryKind::Symlink => Kind::Symlink,
            EntryKind::CharDevice => Kind::Char,
            EntryKind::BlockDevice => Kind::Block,
            EntryKind::Fifo => Kind::Fifo,
            EntryKind::Socket => Kind::Socket,
        };
        let mut node = Node::new(kind, e.mode);
        node.mode = e.mode;
        node.uid = e.uid;
        node.gid = e.gid;
        node.mtime = e.mtime;
        node.mtime_ns = e.mtime_ns.unwrap_or(0);
        node.size = e.size;
        node.xattrs = e.xattrs.clone();
        match kind {
            Kind::Symlink => node.target = Some(e.symlink.clone()),
            Kind::Char | Kind::Block => {
                node.device = Some((libc::major(e.rdev), libc::minor(e.rdev)));
            }
            Kind::File => node.content = Some(self.content(prefix, path, e)?),
            _ => {}
        }
        Ok(node)
    }

    /// SHA-256 hex of a regular file's content: its one object, or its chunks in order
    /// (each suffix `P`, docs/format.md §4), which must tile `[0, size)`.
    fn content(&self, prefix: &str, path: &str, e: &Entry) -> Result<String> {
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        if let Some(hash) = e.hash {
            let stored = self.object(&hash, Suffix::None)?;
            let raw = catalog::decode(&stored, e.compressed, MAX_OBJECT)
                .map_err(|err| Error::Invalid(format!("{path}: object {hash}: {err}")))?;
            total = raw.len() as u64;
            hasher.update(&raw);
        } else {
            let chunks = self
                .catalog(prefix)?
                .chunks(path)
                .map_err(|err| Error::Invalid(format!("chunks of {path}: {err}")))?;
            if chunks.is_empty() && e.size != 0 {
                return Err(Error::Invalid(format!(
                    "{path}: {} bytes but neither a hash nor chunks",
                    e.size
                )));
            }
            for chunk in &chunks {
                if chunk.offset != total {
                    return Err(Error::Invalid(format!(
                        "{path}: chunk at {} but the previous ones end at {total}",
                        chunk.offset
                    )));
                }
                let stored = self.object(&chunk.hash, Suffix::Partial)?;
                let raw = catalog::decode(&stored, e.compressed, MAX_OBJECT).map_err(|err| {
                    Error::Invalid(format!("{path}: chunk {}: {err}", chunk.hash))
                })?;
                if raw.len() as u64 != chunk.size {
                    return Err(Error::Invalid(format!(
                        "{path}: chunk {} holds {} bytes, the catalog says {}",
                        chunk.hash,
                        raw.len(),
                        chunk.size
                    )));
                }
                total += chunk.size;
                hasher.update(&raw);
            }
        }
        if total != e.size {
            return Err(Error::Invalid(format!(
                "{path}: content is {total} bytes, the catalog says {}",
                e.size
            )));
        }
        Ok(hex::encode(hasher.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use catalog::{CatalogProperties, CatalogWriter, Chunk, HashAlgorithm, LocalStore, Transition};

    use super::*;

    const PROPS: CatalogProperties = CatalogProperties {
        revision: 1,
        last_modified: 1,
        ttl: Some(60),
        previous_revision: None,
    };

    /// A repository with a root catalog (`/a`, `/l`) and a nested catalog at `/n` holding
    /// a chunked file and a device; returns the hash of `/a`'s object.
    fn repository(srv: &Path, scratch: &Path) -> ContentHash {
        let store = LocalStore::open(srv).unwrap();
        let a = store.put_raw(b"hello", Suffix::None).unwrap();
        let c1 = store.put_raw(b"abc", Suffix::Partial).unwrap();
        let c2 = store.put_raw(b"defg", Suffix::Partial).unwrap();

        let nested_db = scratch.join("n.db");
        let mut w = CatalogWriter::create(&nested_db, "/n").unwrap();
        w.add(
            "/n",
            &Entry::directory("n", 0o700, 3, 4, 5),
            Transition::NestedRoot,
        )
        .unwrap();
        let mut big = Entry::regular("big", 0o644, 0, 0, 7, 7, a);
        big.hash = None;
        big.chunks = vec![
            Chunk {
                offset: 0,
                size: 3,
                hash: c1,
            },
            Chunk {
                offset: 3,
                size: 4,
                hash: c2,
            },
        ];
        w.add("/n/big", &big, Transition::None).unwrap();
        let dev = Entry::special(
            "dev",
            EntryKind::CharDevice,
            0o600,
            libc::makedev(1, 3),
            0,
            0,
            9,
        );
        w.add("/n/dev", &dev, Transition::None).unwrap();
        let stats = w.finish(&PROPS).unwrap();
        let nested_bytes = std::fs::read(&nested_db).unwrap();
        let nested = store.put_raw(&nested_bytes, Suffix::Catalog).unwrap();

        let root_db = scratch.join("root.db");
        let mut w = CatalogWriter::create(&root_db, "").unwrap();
        w.add("", &Entry::directory("", 0o755, 0, 0, 1), Transition::None)
            .unwrap();
        w.add(
            "/a",
            &Entry::regular("a", 0o640, 1, 2, 3, 5, a),
            Transition::None,
        )
        .unwrap();
        w.add("/l", &Entry::symlink("l", "a", 0, 0, 4), Transition::None)
            .unwrap();
        w.add(
            "/n",
            &Entry::directory("n", 0o700, 3, 4, 5),
            Transition::NestedMountpoint,
        )
        .unwrap();
        w.add_nested("/n", &nested, nested_bytes.len() as u64, &stats)
            .unwrap();
        w.finish(&PROPS).unwrap();
        let root_bytes = std::fs::read(&root_db).unwrap();
        let root = store.put_raw(&root_bytes, Suffix::Catalog).unwrap();

        let manifest = Manifest {
            catalog_hash: root,
            catalog_size: root_bytes.len() as u64,
            ttl: 60,
            revision: 1,
            garbage_collectable: false,
            alternative_paths: false,
            fqrn: "unit.example".into(),
            certificate: ContentHash::of_bytes(HashAlgorithm::Sha1, b"certificate"),
            history: None,
            timestamp: 1,
            meta_info: None,
            reflog: None,
        };
        let key = catalog::keys::generate_key().unwrap();
        std::fs::write(srv.join(".cvmfspublished"), manifest.sign(&key).unwrap()).unwrap();
        a
    }

    #[test]
    fn reads_nested_catalogs_chunks_devices_and_checks_object_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let srv = dir.path().join("srv");
        let a = repository(&srv, dir.path());
        let mut published = Published::open(&srv).unwrap();
        let (tree, facts) = published.tree("").unwrap();
        let keys: Vec<&str> = tree.keys().map(String::as_str).collect();
        assert_eq!(keys, ["", "a", "l", "n", "n/big", "n/dev"]);
        assert_eq!(facts.catalogs, ["", "/n"]);
        assert_eq!(facts.chunked.get("n/big"), Some(&2));
        let sha = |b: &[u8]| Some(hex::encode(Sha256::digest(b)));
        assert_eq!(tree["a"].content, sha(b"hello"));
        assert_eq!(
            (tree["a"].mode, tree["a"].uid, tree["a"].gid),
            (libc::S_IFREG | 0o640, 1, 2)
        );
        assert_eq!(tree["n/big"].content, sha(b"abcdefg"));
        assert_eq!(tree["n"].mode, libc::S_IFDIR | 0o700);
        assert_eq!(tree["n/dev"].device, Some((1, 3)));
        assert_eq!(tree["l"].target.as_deref(), Some("a"));
        let (sub, _) = published.tree("/n").unwrap();
        assert_eq!(sub.len(), 3);

        // A stored object that does not match its name is an error, never content.
        std::fs::write(
            srv.join(a.object_path(Suffix::None)),
            catalog::compress(b"evil"),
        )
        .unwrap();
        let error = Published::open(&srv)
            .unwrap()
            .tree("")
            .unwrap_err()
            .to_string();
        assert!(error.contains(&a.to_hex()), "{error}");
    }
}
