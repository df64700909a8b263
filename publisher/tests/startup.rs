//! `strata-publisher startup`: an access trace becomes startup packs under the image's
//! platform metadata, holding exactly the traced files' objects in first-read order,
//! content-addressed (the same trace publishes the same packs), kept by a re-ingest of the
//! unchanged image, and a repository that still verifies.

use std::path::Path;

use catalog::{StartupPack, Suffix};

use tests::random::pseudo_random;

use crate::support::{init_repo, noise_layer, ok, run, run_ok, verify_ok, write_layout};

/// The files of the published `startup/` directory of `localhost/layout:1`.
fn startup_files(repo: &Path) -> Vec<(String, catalog::ContentHash, bool)> {
    crate::support::startup_files(repo, "localhost/layout:1")
}

/// An image of two layers ingested into a new repository, and the repository paths of
/// its layers' roots and its flat tree.
struct Ingested {
    repo: std::path::PathBuf,
    /// The image as `ingest` takes it.
    src: String,
    l1: String,
    l2: String,
    flat: String,
}

/// Ingests an image into `work/repo`: layer 1 three files of 10 000 bytes (`l1/f0`…, seeds
/// 1000…), layer 2 one file of `big` bytes (`l2/f0`, seed 2000).
fn ingest_two_layers(work: &Path, big: usize) -> Ingested {
    ingest_layers(work, [noise_layer(1, 3, 10_000), noise_layer(2, 1, big)])
}

/// Ingests an image of the two layer tars `layers` into `work/repo`.
fn ingest_layers(work: &Path, layers: [Vec<u8>; 2]) -> Ingested {
    let layout = work.join("layout");
    let image = write_layout(&layout, "1", &layers);
    let repo = work.join("repo");
    init_repo(&repo, "startup.test");
    let src = format!("oci:{}:1", layout.display());
    run_ok(&["ingest", "--repo", &repo.display().to_string(), &src]);
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    let layerfs = |d: &str| format!("/.layers/{}/{}/layerfs", &hex(d)[..2], hex(d));
    Ingested {
        flat: format!("/.flat/{}/{}", &hex(&image.config)[..2], hex(&image.config)),
        l1: layerfs(&image.layers[0]),
        l2: layerfs(&image.layers[1]),
        repo,
        src,
    }
}

/// The members of the packs among `files` (of the repository in `repo`), in pack and
/// member order, as suffix and content; every pack and member checked against its hash.
fn pack_members(
    repo: &Path,
    files: &[(String, catalog::ContentHash, bool)],
) -> Vec<(Suffix, Vec<u8>)> {
    let store = ok(catalog::LocalStore::open(&repo.join("srv")));
    let mut members = Vec::new();
    for (name, hash, compressed) in files {
        if !namespace::paths::is_pack_name(name) {
            continue;
        }
        // Stored as is (its members are compressed already).
        assert!(!compressed, "{name} is stored compressed");
        let bytes = ok(store.get(hash, Suffix::None));
        ok(catalog::compression::verify(&bytes, hash));
        let pack = ok(StartupPack::parse(&bytes));
        for (i, m) in pack.members().iter().enumerate() {
            let stored = pack.stored(i).unwrap_or_else(|| panic!("member {i}"));
            ok(catalog::compression::verify(stored, &m.hash));
            let raw = ok(catalog::decode(stored, m.compressed, m.raw_size));
            assert_eq!(raw.len() as u64, m.raw_size);
            members.push((m.suffix, raw));
        }
    }
    members
}

#[test]
fn a_trace_becomes_packs_of_its_objects_in_first_read_order() {
    let work = ok(tempfile::tempdir());
    // Layer 2's file is chunked: above the maximum chunk.
    let Ingested {
        repo,
        src,
        l1,
        l2,
        flat,
    } = ingest_two_layers(work.path(), 20 << 20);
    let big = pseudo_random(20 << 20, 2000);
    let r = repo.display().to_string();
    let trace = work.path().join("start.trace");
    // What `pull` reads before it asks for the packs: not packed.
    let config = "/.metadata/localhost/layout:1/platforms/linux-amd64/config.json";
    ok(std::fs::write(
        &trace,
        format!(
            "# strata access trace v1\n{config}\n{l1}/l1/f2\n{flat}/l1/f0\n/no/such/file\n\
             {l2}/l2/f0\n{flat}/l1/f2\n{l1}/l1\n"
        ),
    ));
    let t = trace.display().to_string();
    let publish = || {
        run_ok(&[
            "startup",
            "--repo",
            &r,
            "--trace",
            &t,
            "--pack-size",
            "4000000",
            "localhost/layout:1",
        ])
    };
    let out = publish();
    // f2 twice (layer and flat path: one object), a missing path, a directory.
    assert!(
        out.contains("7 path(s), 4 resolved, 2 not in this revision, 1 of image metadata"),
        "{out}"
    );
    verify_ok(&repo);

    let files = startup_files(&repo);
    let names: Vec<&str> = files.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names[..2], ["objects", "pack-000.strata-pack"], "{names:?}");
    assert!(names.contains(&"trace") && names.len() >= 4, "{names:?}");
    let store = ok(catalog::LocalStore::open(&repo.join("srv")));
    let mut contents: Vec<Vec<u8>> = Vec::new();
    let mut chunks = Vec::new();
    let mut catalogs = 0;
    for (suffix, raw) in pack_members(&repo, &files) {
        match suffix {
            Suffix::Partial => chunks.extend(raw),
            Suffix::Catalog => {
                assert!(raw.starts_with(b"SQLite format 3\0"), "a catalog member");
                catalogs += 1;
            }
            _ => contents.push(raw),
        }
    }
    // The catalogs a client loads on the way: two layers' buckets and layerfs catalogs,
    // the flat tree's (and its bucket's, if it has one); never the root catalog.
    assert!((4..=6).contains(&catalogs), "{catalogs} catalog members");
    // First-read order: f2, f0, then the big file's chunks; each object once.
    assert_eq!(contents.len(), 2, "whole-file members");
    assert_eq!(
        contents[0],
        pseudo_random(10_000, 1002),
        "first member is l1/f2"
    );
    assert_eq!(
        contents[1],
        pseudo_random(10_000, 1000),
        "second member is l1/f0"
    );
    assert!(chunks == big, "the chunks add up to l2/f0");
    let trace_kept = ok(store.get(
        &files
            .iter()
            .find(|(n, _, _)| n == "trace")
            .map(|(_, h, _)| *h)
            .unwrap_or_else(|| panic!("no trace")),
        Suffix::None,
    ));
    let trace_kept =
        String::from_utf8(ok(catalog::decompress(&trace_kept, 1 << 20))).unwrap_or_default();
    assert_eq!(
        trace_kept,
        format!("# strata access trace v1\n{l1}/l1/f2\n{flat}/l1/f0\n{l2}/l2/f0\n{flat}/l1/f2\n")
    );

    // The same trace again: the same packs (content-addressed).
    let packs = |files: &[(String, catalog::ContentHash, bool)]| {
        files
            .iter()
            .filter(|(n, _, _)| namespace::paths::is_pack_name(n))
            .map(|(_, h, _)| *h)
            .collect::<Vec<_>>()
    };
    let before = packs(&files);
    publish();
    assert_eq!(
        packs(&startup_files(&repo)),
        before,
        "same trace, same packs"
    );
    // A re-ingest of the unchanged image keeps them.
    run_ok(&["ingest", "--repo", &r, &src]);
    assert_eq!(packs(&startup_files(&repo)), before, "kept by a re-ingest");
    verify_ok(&repo);

    // Nothing of the trace in the image, or an image not published: a clear error.
    ok(std::fs::write(
        &trace,
        "# strata access trace v1\n/no/such\n",
    ));
    let out = run(&["startup", "--repo", &r, "--trace", &t, "localhost/layout:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("nothing to publish"),
        "{err}"
    );
    let out = run(&["startup", "--repo", &r, "--trace", &t, "localhost/other:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not published"),
        "{err}"
    );
    ok(std::fs::write(&trace, "/a\n"));
    let out = run(&["startup", "--repo", &r, "--trace", &t, "localhost/layout:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a Strata access trace") && err.contains(&t),
        "{err}"
    );
}

#[test]
fn a_version_2_trace_packs_only_the_chunks_read_in_the_order_read() {
    let work = ok(tempfile::tempdir());
    // Layer 2's file has several chunks.
    let Ingested { repo, l1, l2, .. } = ingest_two_layers(work.path(), 40 << 20);
    let big = pseudo_random(40 << 20, 2000);
    let r = repo.display().to_string();
    // The big file opened, its chunk 1 read, a small file, then its chunk 0; chunk 99 is
    // not one of its chunks, and a small file has none.
    let lines = format!(
        "{l2}/l2/f0\nchunk 1 {l2}/l2/f0\n{l1}/l1/f2\nchunk 0 {l2}/l2/f0\nchunk 99 {l2}/l2/f0\n\
         chunk 0 {l1}/l1/f2\n"
    );
    let trace = work.path().join("start.trace");
    ok(std::fs::write(
        &trace,
        format!("# strata access trace v2\n{lines}"),
    ));
    let t = trace.display().to_string();
    let out = run_ok(&["startup", "--repo", &r, "--trace", &t, "localhost/layout:1"]);
    assert!(
        out.contains("2 path(s), 2 resolved") && out.contains("2 chunk record(s) skipped"),
        "{out}"
    );
    verify_ok(&repo);

    let files = startup_files(&repo);
    let content: Vec<(Suffix, Vec<u8>)> = pack_members(&repo, &files)
        .into_iter()
        .filter(|(suffix, _)| *suffix != Suffix::Catalog)
        .collect();
    let suffixes: Vec<Suffix> = content.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        suffixes,
        [Suffix::Partial, Suffix::None, Suffix::Partial],
        "chunk 1, l1/f2, chunk 0: nothing else of the big file"
    );
    let (first, second) = (&content[2].1, &content[0].1);
    assert!(
        big.starts_with(first) && big[first.len()..].starts_with(second),
        "the members are the big file's chunks 0 and 1 ({} and {} bytes of {})",
        first.len(),
        second.len(),
        big.len()
    );
    assert!(
        first.len() + second.len() < big.len(),
        "the chunks not read are left out"
    );
    assert_eq!(content[1].1, pseudo_random(10_000, 1002), "l1/f2");
    // The published trace keeps version 2 and the records that resolved.
    let store = ok(catalog::LocalStore::open(&repo.join("srv")));
    let kept = files
        .iter()
        .find(|(n, _, _)| n == "trace")
        .map(|(_, h, _)| *h)
        .unwrap_or_else(|| panic!("no trace"));
    let kept = ok(catalog::decompress(
        &ok(store.get(&kept, Suffix::None)),
        1 << 20,
    ));
    assert_eq!(
        String::from_utf8_lossy(&kept),
        format!(
            "# strata access trace v2\n{l2}/l2/f0\nchunk 1 {l2}/l2/f0\n{l1}/l1/f2\n\
             chunk 0 {l2}/l2/f0\n"
        )
    );
}

#[test]
fn catalogs_come_first_smallest_first_and_the_first_pack_is_small() {
    let work = ok(tempfile::tempdir());
    // Layer 1: 4000 small files (its layerfs catalog and the flat tree's are large),
    // layer 2: one file.
    let Ingested {
        repo, l1, l2, flat, ..
    } = ingest_layers(
        work.path(),
        [noise_layer(1, 4000, 16), noise_layer(2, 1, 1000)],
    );
    let r = repo.display().to_string();
    let trace = work.path().join("start.trace");
    ok(std::fs::write(
        &trace,
        format!("# strata access trace v1\n{l1}/l1/f7\n{flat}/l1/f1\n{l2}/l2/f0\n"),
    ));
    run_ok(&[
        "startup",
        "--repo",
        &r,
        "--trace",
        &trace.display().to_string(),
        "localhost/layout:1",
    ]);
    verify_ok(&repo);
    let store = ok(catalog::LocalStore::open(&repo.join("srv")));
    // (pack, suffix, stored size) of every member, in pack and member order.
    let mut members = Vec::new();
    for (name, hash, _) in startup_files(&repo) {
        if !namespace::paths::is_pack_name(&name) {
            continue;
        }
        let bytes = ok(store.get(&hash, Suffix::None));
        let pack = ok(StartupPack::parse(&bytes));
        for (i, m) in pack.members().iter().enumerate() {
            let stored = pack.stored(i).map_or(0, <[u8]>::len);
            members.push((name.clone(), m.suffix, stored as u64));
        }
    }
    let catalogs = members
        .iter()
        .take_while(|(_, suffix, _)| *suffix == Suffix::Catalog)
        .count();
    // Both layers' bucket and layerfs catalogs, the flat tree's.
    assert!(catalogs >= 5, "{members:?}");
    assert!(
        members[catalogs..]
            .iter()
            .all(|(_, suffix, _)| *suffix != Suffix::Catalog),
        "catalogs first: {members:?}"
    );
    assert!(
        members[..catalogs].windows(2).all(|w| w[0].2 <= w[1].2),
        "smallest first: {members:?}"
    );
    let first: Vec<_> = members
        .iter()
        .filter(|(pack, _, _)| pack == "pack-000.strata-pack")
        .collect();
    let first_bytes: u64 = first.iter().map(|(_, _, size)| size).sum();
    assert!(
        first.len() >= 3 && first_bytes <= publisher::startup::FIRST_PACK_BYTES,
        "the small catalogs alone in a small first pack: {members:?}"
    );
    let catalog_bytes: u64 = members[..catalogs].iter().map(|(_, _, size)| size).sum();
    assert!(
        catalog_bytes > publisher::startup::FIRST_PACK_BYTES,
        "catalogs too large for one small pack (the test's premise): {members:?}"
    );
}
