//! Property test: random trees with every entry kind → one catalog → read back
//! identical, entry by entry, listing by listing and chunk list by chunk list (CVMFS catalog
//! schema 2.5, docs/format.md §6).

use std::collections::{BTreeMap, BTreeSet};

use catalog::{
    CatalogProperties, CatalogReader, CatalogWriter, Chunk, ContentHash, Entry, EntryKind,
    HashAlgorithm, Transition,
};
use proptest::prelude::*;

/// Directories entries are placed in (besides the root), parents first.
const DIRS: [&str; 3] = ["/d0", "/d0/d1", "/e"];

fn hash_of(seed: u64) -> ContentHash {
    ContentHash::of_bytes(HashAlgorithm::Sha1, &seed.to_le_bytes())
}

/// Everything that varies between entries, before the name and parent are fixed.
#[derive(Clone, Debug)]
struct Spec {
    parent: usize,
    name: String,
    kind: u8,
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_ns: Option<u32>,
    seed: u64,
    size: u64,
    chunk_sizes: Vec<u64>,
    target: String,
    rdev: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        (
            0..=DIRS.len(),
            "[a-zA-Z0-9._ -]{1,12}",
            0u8..8,
            0u32..0o10000,
        ),
        (any::<u32>(), any::<u32>(), -(1i64 << 40)..(1i64 << 40)),
        (
            proptest::option::of(0u32..1_000_000_000),
            any::<u64>(),
            0u64..1 << 40,
        ),
        (
            prop::collection::vec(1u64..1 << 30, 2..5),
            "[ -~]{1,40}",
            any::<u32>(),
        ),
        prop::collection::btree_map(
            "user\\.[a-z]{1,8}",
            prop::collection::vec(any::<u8>(), 0..32),
            0..3,
        ),
    )
        .prop_map(
            |(
                (parent, name, kind, perm),
                (uid, gid, mtime),
                (mtime_ns, seed, size),
                (chunk_sizes, target, rdev),
                xattrs,
            )| Spec {
                parent,
                name,
                kind,
                perm,
                uid,
                gid,
                mtime,
                mtime_ns,
                seed,
                size,
                chunk_sizes,
                target,
                rdev: u64::from(rdev),
                xattrs,
            },
        )
}

/// The entry a spec stands for, and its chunks (kinds 0–7: regular, chunked regular,
/// uncompressed regular, symlink, char device, block device, fifo, socket).
fn entry(s: &Spec) -> Entry {
    let mut e = match s.kind {
        0 => Entry::regular(
            &s.name,
            s.perm,
            s.uid,
            s.gid,
            s.mtime,
            s.size,
            hash_of(s.seed),
        ),
        1 => {
            let mut e = Entry::regular(&s.name, s.perm, s.uid, s.gid, s.mtime, 0, hash_of(0));
            e.hash = None;
            let mut offset = 0;
            for (i, size) in s.chunk_sizes.iter().enumerate() {
                e.chunks.push(Chunk {
                    offset,
                    size: *size,
                    hash: hash_of(s.seed ^ i as u64),
                });
                offset += size;
            }
            e.size = offset;
            e
        }
        2 => {
            let mut e = Entry::regular(
                &s.name,
                s.perm,
                s.uid,
                s.gid,
                s.mtime,
                s.size,
                hash_of(s.seed),
            );
            e.compressed = false;
            e
        }
        3 => Entry::symlink(&s.name, &s.target, s.uid, s.gid, s.mtime),
        4 => Entry::special(
            &s.name,
            EntryKind::CharDevice,
            s.perm,
            s.rdev,
            s.uid,
            s.gid,
            s.mtime,
        ),
        5 => Entry::special(
            &s.name,
            EntryKind::BlockDevice,
            s.perm,
            s.rdev,
            s.uid,
            s.gid,
            s.mtime,
        ),
        6 => Entry::special(&s.name, EntryKind::Fifo, s.perm, 0, s.uid, s.gid, s.mtime),
        _ => Entry::special(&s.name, EntryKind::Socket, s.perm, 0, s.uid, s.gid, s.mtime),
    };
    e.mtime_ns = s.mtime_ns;
    e.xattrs = s.xattrs.clone();
    e
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_read_back_identical(specs in prop::collection::vec(spec(), 0..40)) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let file = dir.path().join("catalog.db");
        let mut written: Vec<(String, Entry)> = vec![(
            String::new(),
            Entry::directory("", 0o755, 0, 0, 1),
        )];
        for d in DIRS {
            let name = d.rsplit('/').next().unwrap_or_default();
            written.push((d.to_string(), Entry::directory(name, 0o750, 7, 8, -5)));
        }
        let mut taken: BTreeSet<String> = written.iter().map(|(p, _)| p.clone()).collect();
        for s in &specs {
            let parent = if s.parent == 0 { "" } else { DIRS[s.parent - 1] };
            let path = format!("{parent}/{}", s.name);
            if s.name == "." || s.name == ".." || !taken.insert(path.clone()) {
                continue;
            }
            written.push((path, entry(s)));
        }

        let mut w = CatalogWriter::create(&file, "").map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (path, e) in &written {
            w.add(path, e, Transition::None).map_err(|e| TestCaseError::fail(format!("{path}: {e}")))?;
        }
        let props = CatalogProperties { revision: 3, last_modified: 10, ttl: Some(60), previous_revision: None };
        let stats = w.finish(&props).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(stats.self_.dir, 1 + DIRS.len() as i64);

        let r = CatalogReader::open(&file).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (path, e) in &written {
            let got = r.lookup(path).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got = got.ok_or_else(|| TestCaseError::fail(format!("{path:?} missing")))?;
            let mut expect = e.clone();
            expect.flags = e.compose_flags(Transition::None);
            expect.rowid = got.rowid;
            expect.chunks = Vec::new();
            prop_assert_eq!(&got, &expect, "{:?}", path);
            let chunks = r.chunks(path).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&chunks, &e.chunks, "{:?}", path);
        }
        // every directory lists exactly its children
        for d in std::iter::once("").chain(DIRS) {
            let listed: BTreeSet<String> = r
                .list(d)
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .into_iter()
                .map(|e| e.name)
                .collect();
            let expect: BTreeSet<String> = written
                .iter()
                .filter(|(p, _)| !p.is_empty() && catalog::parent_path(p) == d)
                .map(|(_, e)| e.name.clone())
                .collect();
            prop_assert_eq!(listed, expect, "listing of {:?}", d);
        }
    }
}
