//! Throughput of the hot paths of publishing and mounting, one core each:
//! compress + hash (zlib-rs, or C zlib with `--features zlib-compat`), hash only,
//! content-defined chunking, catalog inserts and lookups.
//!
//! `cargo bench -p catalog --bench catalog` (add `--features zlib-compat` for C zlib).

use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

use catalog::chunking::{ChunkParams, Chunker};
use catalog::compression::BACKEND;
use catalog::{
    CatalogProperties, CatalogReader, CatalogWriter, ContentHash, Entry, HashAlgorithm,
    ObjectWriter, Transition,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Layer-like bytes: alternating 4 KiB blocks of pseudo-random bytes (incompressible, like
/// already compressed files) and text-like bytes (compressible, like sources and configs).
fn sample(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const WORDS: [&[u8]; 8] = [
        b"the ",
        b"file ",
        b"system ",
        b"catalog ",
        b"layer ",
        b"chunk\n",
        b"hash ",
        b"{}; ",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        let block = out.len() / 4096;
        if block % 2 == 0 {
            out.extend_from_slice(&next().to_le_bytes());
        } else {
            out.extend_from_slice(WORDS[(next() % 8) as usize]);
        }
    }
    out.truncate(len);
    out
}

fn compress_and_hash(c: &mut Criterion) {
    let data = sample(8 << 20);
    let mut g = c.benchmark_group(format!("object/{BACKEND}"));
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("compress+sha1", |b| {
        b.iter(|| {
            let mut ow = ObjectWriter::new(std::io::sink(), HashAlgorithm::Sha1);
            for part in data.chunks(64 * 1024) {
                ow.write_all(part).unwrap();
            }
            black_box(ow.finish().unwrap().1)
        })
    });
    g.bench_function("sha1 only (uncompressed object)", |b| {
        b.iter(|| black_box(ContentHash::of_bytes(HashAlgorithm::Sha1, &data)))
    });
    g.finish();
}

fn chunking(c: &mut Criterion) {
    let data = sample(64 << 20);
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("cut points, 4/8/16 MiB", |b| {
        b.iter(|| {
            let mut ch = Chunker::new(ChunkParams::default()).unwrap();
            let mut n = 0;
            for part in data.chunks(64 * 1024) {
                n += ch.push(part).len();
            }
            black_box(n)
        })
    });
    g.finish();
}

const ROWS: usize = 10_000;

fn catalog_rows(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let hash = ContentHash::of_bytes(HashAlgorithm::Sha1, b"content");
    let props = CatalogProperties {
        revision: 1,
        last_modified: 1_700_000_000,
        ttl: Some(240),
        previous_revision: None,
    };
    let write = |file: &std::path::Path| {
        let mut w = CatalogWriter::create(file, "").unwrap();
        w.add(
            "",
            &Entry::directory("", 0o755, 0, 0, 1_700_000_000),
            Transition::None,
        )
        .unwrap();
        for d in 0..100 {
            let name = format!("d{d}");
            w.add(
                &format!("/{name}"),
                &Entry::directory(&name, 0o755, 0, 0, 1_700_000_000),
                Transition::None,
            )
            .unwrap();
            for f in 0..(ROWS / 100 - 1) {
                let fname = format!("file-{f}.txt");
                let e = Entry::regular(&fname, 0o644, 0, 0, 1_700_000_000, f as u64, hash);
                w.add(&format!("/{name}/{fname}"), &e, Transition::None)
                    .unwrap();
            }
        }
        w.finish(&props).unwrap()
    };
    let mut g = c.benchmark_group("catalog");
    g.throughput(Throughput::Elements(ROWS as u64));
    let file = dir.path().join("bench.db");
    g.bench_function("insert 10k rows + finish", |b| {
        b.iter(|| black_box(write(&file)))
    });
    g.finish();

    write(&file);
    let reader = CatalogReader::open(&file).unwrap();
    let paths: Vec<String> = (0..1000)
        .map(|i| format!("/d{}/file-{}.txt", i % 100, (i * 7) % 99))
        .collect();
    let mut g = c.benchmark_group("catalog");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("lookup (10k-row catalog)", |b| {
        b.iter(|| {
            i = (i + 1) % paths.len();
            black_box(reader.lookup(&paths[i]).unwrap())
        })
    });
    g.bench_function("list 99 children", |b| {
        b.iter(|| black_box(reader.list("/d42").unwrap().len()))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = compress_and_hash, chunking, catalog_rows
}
criterion_main!(benches);
