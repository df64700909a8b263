//! Arbitrary bytes as a catalog file: open, walk the tree, read chunks, nested catalogs,
//! bind mountpoints and statistics. Any outcome but a panic is fine.
#![no_main]

use std::io::Write;

use catalog::CatalogReader;
use libfuzzer_sys::fuzz_target;

fn walk(r: &CatalogReader, dir: &str, depth: u32, budget: &mut u32) {
    if depth > 8 {
        return;
    }
    let Ok(children) = r.list(dir) else { return };
    for e in children {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let path = format!("{dir}/{}", e.name);
        let _ = r.lookup(&path);
        if e.is_chunked() {
            if let Ok(chunks) = r.chunks(&path) {
                let _ = catalog::chunk_spans(&chunks, e.size / 3, e.size / 2 + 1);
            }
        }
        if e.kind == catalog::EntryKind::Directory && !e.name.is_empty() {
            walk(r, &path, depth + 1, budget);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut f) = tempfile::NamedTempFile::new() else {
        return;
    };
    if f.write_all(data).is_err() {
        return;
    }
    let Ok(r) = CatalogReader::open(f.path()) else {
        return;
    };
    let prefix = r.root_prefix().to_string();
    let _ = (
        r.revision(),
        r.ttl(),
        r.last_modified(),
        r.schema_revision(),
    );
    let _ = r.lookup(&prefix);
    let mut budget = 2000;
    walk(&r, &prefix, 0, &mut budget);
    let _ = r.nested_catalogs();
    let _ = r.bind_mountpoints();
    let _ = r.statistics();
});
