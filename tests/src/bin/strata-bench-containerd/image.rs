//! The bench image: five layers of files from the Debian packages installed on this machine
//! (the recipe of `publisher/benches/ingest.sh`, made runnable and sized), written as an OCI
//! layout and cached under `<target>/strata-bench-images/<key>/`.
//!
//! | layer | content | sized? |
//! |---|---|---|
//! | 1 | `/usr/lib/x86_64-linux-gnu`, `/usr/lib64`, the merged-`/usr` symlinks `/bin`, `/lib`, `/lib64`, `/sbin` | no (whole) |
//! | 2 | `/usr/lib/llvm-14`, `/usr/lib/gcc` | yes |
//! | 3 | `/usr/bin`, `/usr/sbin`, `/usr/libexec` | no (whole) |
//! | 4 | `/usr/include`, `/usr/lib/python3.11`, `/etc/python3.11` | no (whole) |
//! | 5 | `/usr/share` | yes |
//!
//! Layers 1, 3 and 4 hold what the workload needs (the dynamic loader, libc, Python and its
//! standard library) and are taken whole. The rest of the requested size is split between
//! layers 2 and 5 in proportion to their full sizes; each takes its files in sorted path
//! order until its share is used. Sizes count a hard-linked file once per layer, as tar
//! stores it.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ::tests::image::{ImageFacts, put_blob, read_layout, sha256_file};
use ::tests::process::run_capture;
use ::tests::{Error, Result, error::io_context};
use serde_json::json;

/// Tag of the image inside the cached layout.
pub const TAG: &str = "1";
/// Bump whenever the recipe changes: the cache key includes it.
const RECIPE: &str = "v2";
/// Longest one `tar`/`pigz` of a layer may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// One layer of the recipe: directories (absolute) taken from `/`, and whether it is sized.
struct LayerSpec {
    dirs: &'static [&'static str],
    sized: bool,
}

const LAYERS: &[LayerSpec] = &[
    LayerSpec {
        dirs: &[
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/bin",
            "/lib",
            "/lib64",
            "/sbin",
        ],
        sized: false,
    },
    LayerSpec {
        dirs: &["/usr/lib/llvm-14", "/usr/lib/gcc"],
        sized: true,
    },
    LayerSpec {
        dirs: &["/usr/bin", "/usr/sbin", "/usr/libexec"],
        sized: false,
    },
    LayerSpec {
        dirs: &["/usr/include", "/usr/lib/python3.11", "/etc/python3.11"],
        sized: false,
    },
    LayerSpec {
        dirs: &["/usr/share"],
        sized: true,
    },
];

/// One entry of a layer's file list, relative to `/`.
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    /// Bytes of a regular file; 0 for directories and symlinks.
    size: u64,
    regular: bool,
}

/// What was built, as recorded in `<key>/bench.json`.
#[derive(Debug, Clone)]
pub struct BenchImage {
    /// The OCI layout directory.
    pub layout: PathBuf,
    /// Manifest facts (compressed layer sizes, diff IDs).
    pub facts: ImageFacts,
    /// Σ uncompressed tar bytes of the five layers.
    pub uncompressed: u64,
    /// Regular files in the image.
    pub files: u64,
    /// Files the workload reads (absolute paths inside the image): two from layer 2, four
    /// from layer 5, each 16 KiB to 1 MiB.
    pub workload_files: Vec<String>,
}

impl BenchImage {
    /// `oci:<layout>:1`, the skopeo source reference.
    pub fn oci_reference(&self) -> String {
        format!("oci:{}:{TAG}", self.layout.display())
    }
}

/// The cached image of about `target_mb` MB (10^6 bytes) of files, building it first if
/// needed (tool output to `log`). A half-built directory (no `bench.json`) is rebuilt.
///
/// Errors: a recipe directory missing from this machine, `tar`/`pigz` failing, I/O.
pub fn bench_image(cache_root: &Path, target_mb: u64, log: &Path) -> Result<BenchImage> {
    let dir = cache_root.join(format!("debian-usr-5layers-{target_mb}MB-{RECIPE}"));
    let facts_file = dir.join("bench.json");
    if facts_file.is_file() {
        return load(&dir);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_context(format!("remove {}", dir.display())))?;
    }
    let layout = dir.join("oci");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io_context(format!("create {}", blobs.display())))?;

    let lists: Vec<Vec<Entry>> = LAYERS
        .iter()
        .map(|spec| list_layer(spec.dirs))
        .collect::<Result<_>>()?;
    let chosen = size_layers(&lists, target_mb * 1_000_000)?;
    let workload_files = pick_workload_files(&chosen);

    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut uncompressed = 0;
    let mut files = 0;
    for (i, entries) in chosen.iter().enumerate() {
        let tar = dir.join(format!("layer{}.tar", i + 1));
        let list = dir.join(format!("layer{}.list", i + 1));
        write_list(&list, entries)?;
        // Exit status 1 is GNU tar's "some files differ" (a file changed while read, e.g.
        // an apt run elsewhere); 2 is fatal.
        let output = run_capture(
            Command::new("tar")
                .args(["-C", "/", "--null", "--no-recursion", "--numeric-owner"])
                .arg("-cf")
                .arg(&tar)
                .arg("-T")
                .arg(&list),
            log,
            TOOL_TIMEOUT,
        )?;
        if output.status.code().is_none_or(|c| c > 1) {
            return Err(Error::Invalid(format!(
                "tar of layer {} failed ({}); see {}",
                i + 1,
                output.status,
                log.display()
            )));
        }
        let (diff_id, tar_size) = sha256_file(&tar)?;
        let gz = dir.join(format!("layer{}.tar.gz", i + 1));
        let out = File::create(&gz).map_err(io_context(format!("create {}", gz.display())))?;
        let status = Command::new("pigz")
            .args(["-6", "-c"])
            .arg(&tar)
            .stdout(out)
            .status()
            .map_err(io_context("run pigz"))?;
        if !status.success() {
            return Err(Error::Invalid(format!(
                "pigz -6 -c {} failed ({status})",
                tar.display()
            )));
        }
        let (digest, size) = sha256_file(&gz)?;
        let blob = blobs.join(digest.trim_start_matches("sha256:"));
        std::fs::rename(&gz, &blob).map_err(io_context(format!("move {}", gz.display())))?;
        std::fs::remove_file(&tar).map_err(io_context(format!("remove {}", tar.display())))?;
        layers.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest,
            "size": size,
        }));
        diff_ids.push(diff_id);
        uncompressed += tar_size;
        files += entries.iter().filter(|e| e.regular).count() as u64;
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/bash"],
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .map_err(|e| Error::Invalid(format!("config JSON: {e}")))?;
    let (config_digest, config_size) = put_blob(&blobs, &config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layers,
    }))
    .map_err(|e| Error::Invalid(format!("manifest JSON: {e}")))?;
    let (manifest_digest, manifest_size) = put_blob(&blobs, &manifest)?;
    write(
        &layout.join("index.json"),
        json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": TAG},
            }],
        })
        .to_string()
        .as_bytes(),
    )?;
    write(
        &layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    write(
        &facts_file,
        json!({
            "uncompressed": uncompressed,
            "files": files,
            "workload_files": workload_files,
        })
        .to_string()
        .as_bytes(),
    )?;
    load(&dir)
}

fn load(dir: &Path) -> Result<BenchImage> {
    let path = dir.join("bench.json");
    let bytes = std::fs::read(&path).map_err(io_context(format!("read {}", path.display())))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let layout = dir.join("oci");
    let missing = || Error::Invalid(format!("{}: missing fields", path.display()));
    Ok(BenchImage {
        facts: read_layout(&layout, TAG)?,
        layout,
        uncompressed: value["uncompressed"].as_u64().ok_or_else(missing)?,
        files: value["files"].as_u64().ok_or_else(missing)?,
        workload_files: value["workload_files"]
            .as_array()
            .ok_or_else(missing)?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
    })
}

/// Every entry below the directories (not following symlinks), their parent directories,
/// sorted by path; paths relative to `/`.
fn list_layer(dirs: &[&str]) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut parents = BTreeSet::new();
    let mut seen = HashSet::new();
    for dir in dirs {
        let path = Path::new(dir);
        let meta = path
            .symlink_metadata()
            .map_err(io_context(format!("bench image recipe: {dir}")))?;
        let rel = dir.trim_start_matches('/');
        let mut parent = Path::new(rel).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            parents.insert(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
        if meta.is_dir() {
            walk(path, &mut entries, &mut seen)?;
        } else {
            entries.push(Entry {
                path: rel.to_owned(),
                size: 0,
                regular: meta.is_file(),
            });
        }
    }
    entries.extend(parents.into_iter().map(|path| Entry {
        path,
        size: 0,
        regular: false,
    }));
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries.dedup_by(|a, b| a.path == b.path);
    Ok(entries)
}

/// Appends `dir` and everything below it. A regular file whose inode was already listed
/// (a hard link; `seen` holds (device, inode) pairs) counts 0 bytes: tar stores it as a link.
fn walk(dir: &Path, out: &mut Vec<Entry>, seen: &mut HashSet<(u64, u64)>) -> Result<()> {
    out.push(Entry {
        path: dir.to_string_lossy().trim_start_matches('/').to_owned(),
        size: 0,
        regular: false,
    });
    let read = std::fs::read_dir(dir).map_err(io_context(format!("list {}", dir.display())))?;
    for item in read {
        let item = item.map_err(io_context(format!("list {}", dir.display())))?;
        let path = item.path();
        let meta = path
            .symlink_metadata()
            .map_err(io_context(format!("stat {}", path.display())))?;
        if meta.is_dir() {
            walk(&path, out, seen)?;
        } else if meta.is_file() || meta.file_type().is_symlink() {
            let first_link = meta.nlink() < 2 || seen.insert((meta.dev(), meta.ino()));
            out.push(Entry {
                path: path.to_string_lossy().trim_start_matches('/').to_owned(),
                size: if meta.is_file() && first_link {
                    meta.len()
                } else {
                    0
                },
                regular: meta.is_file(),
            });
        }
    }
    Ok(())
}

fn bytes(entries: &[Entry]) -> u64 {
    entries.iter().map(|e| e.size).sum()
}

/// Whole unsized layers; the sized ones share what is left of `target` bytes in proportion
/// to their full sizes, each taking regular files in path order while they fit (directories
/// and symlinks always).
fn size_layers(lists: &[Vec<Entry>], target: u64) -> Result<Vec<Vec<Entry>>> {
    let fixed: u64 = LAYERS
        .iter()
        .zip(lists)
        .filter(|(spec, _)| !spec.sized)
        .map(|(_, list)| bytes(list))
        .sum();
    let sized_full: u64 = LAYERS
        .iter()
        .zip(lists)
        .filter(|(spec, _)| spec.sized)
        .map(|(_, list)| bytes(list))
        .sum();
    if target < fixed {
        return Err(Error::Invalid(format!(
            "BENCH_SIZE_MB={} is below the {} MB the runnable layers (1, 3, 4) need on this machine",
            target / 1_000_000,
            fixed.div_ceil(1_000_000)
        )));
    }
    let left = target - fixed;
    Ok(LAYERS
        .iter()
        .zip(lists)
        .map(|(spec, list)| {
            if !spec.sized || left >= sized_full {
                return list.clone();
            }
            let share = (left as u128 * bytes(list) as u128 / sized_full.max(1) as u128) as u64;
            let mut used = 0;
            list.iter()
                .filter(|e| {
                    if !e.regular {
                        return true;
                    }
                    if used + e.size > share {
                        return false;
                    }
                    used += e.size;
                    true
                })
                .cloned()
                .collect()
        })
        .collect())
}

/// Two files of layer 2 and four of layer 5, 16 KiB to 1 MiB each, evenly spread over the
/// layer's sorted list; absolute paths.
fn pick_workload_files(layers: &[Vec<Entry>]) -> Vec<String> {
    let mut picked = Vec::new();
    for (layer, count) in [(1usize, 2usize), (4, 4)] {
        let candidates: Vec<&Entry> = layers[layer]
            .iter()
            .filter(|e| e.regular && (16 << 10..=1 << 20).contains(&e.size))
            .collect();
        if candidates.is_empty() {
            continue;
        }
        for k in 0..count {
            let at = (2 * k + 1) * candidates.len() / (2 * count);
            picked.push(format!("/{}", candidates[at].path));
        }
    }
    picked
}

fn write_list(path: &Path, entries: &[Entry]) -> Result<()> {
    let mut text = Vec::new();
    for e in entries {
        text.extend_from_slice(e.path.as_bytes());
        text.push(0);
    }
    write(path, &text)
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(io_context(format!("create {}", path.display())))?;
    file.write_all(data)
        .map_err(io_context(format!("write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            size,
            regular: true,
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            size: 0,
            regular: false,
        }
    }

    #[test]
    fn sized_layers_share_what_the_fixed_ones_leave() {
        // Fixed layers 1, 3, 4: 100 bytes each; sized layers 2 and 5: 300 and 100 bytes.
        let lists = vec![
            vec![file("a", 100)],
            vec![
                dir("b"),
                file("b/1", 100),
                file("b/2", 100),
                file("b/3", 100),
            ],
            vec![file("c", 100)],
            vec![file("d", 100)],
            vec![dir("e"), file("e/1", 50), file("e/2", 50)],
        ];
        // 300 fixed + 200 left: layer 2 gets 3/4 (150 → one file), layer 5 1/4 (50 → one).
        let chosen = size_layers(&lists, 500).unwrap();
        let names = |l: &Vec<Entry>| l.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
        assert_eq!(names(&chosen[1]), ["b", "b/1"]);
        assert_eq!(names(&chosen[4]), ["e", "e/1"]);
        assert_eq!(names(&chosen[0]), ["a"]);
        // Enough room: everything.
        assert_eq!(size_layers(&lists, 10_000).unwrap()[1].len(), 4);
        // Below the fixed layers: refused with the size they need.
        let err = size_layers(&lists, 200).unwrap_err().to_string();
        assert!(err.contains("BENCH_SIZE_MB"), "{err}");
    }

    #[test]
    fn workload_files_come_from_layers_2_and_5_within_bounds() {
        let mut layers = vec![Vec::new(); 5];
        layers[1] = (0..10).map(|i| file(&format!("l2/{i}"), 20_000)).collect();
        layers[4] = (0..8)
            .map(|i| file(&format!("l5/{i}"), if i % 2 == 0 { 100 } else { 30_000 }))
            .collect();
        let picked = pick_workload_files(&layers);
        assert_eq!(
            picked,
            ["/l2/2", "/l2/7", "/l5/1", "/l5/3", "/l5/5", "/l5/7"]
        );
    }

    #[test]
    fn list_layer_adds_parents_and_sorts() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("x");
        std::fs::create_dir_all(root.join("y")).unwrap();
        std::fs::write(root.join("y/f"), b"abc").unwrap();
        std::os::unix::fs::symlink("f", root.join("y/l")).unwrap();
        let dir = root.to_string_lossy().into_owned();
        let leaked: &'static str = Box::leak(dir.into_boxed_str());
        let entries = list_layer(&[leaked]).unwrap();
        let rel = leaked.trim_start_matches('/');
        let names: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
        assert!(names.contains(&format!("{rel}/y/f")));
        assert!(names.contains(&format!("{rel}/y/l")));
        let mut ancestor = Path::new(rel).parent();
        while let Some(a) = ancestor.filter(|a| !a.as_os_str().is_empty()) {
            assert!(names.contains(&a.to_string_lossy().into_owned()), "{a:?}");
            ancestor = a.parent();
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        let f = entries.iter().find(|e| e.path.ends_with("y/f")).unwrap();
        assert_eq!((f.size, f.regular), (3, true));
        let l = entries.iter().find(|e| e.path.ends_with("y/l")).unwrap();
        assert!(!l.regular);
        std::fs::hard_link(root.join("y/f"), root.join("y/g")).unwrap();
        let entries = list_layer(&[leaked]).unwrap();
        let sizes: Vec<u64> = entries
            .iter()
            .filter(|e| e.path.ends_with("y/f") || e.path.ends_with("y/g"))
            .map(|e| e.size)
            .collect();
        assert_eq!(sizes, [3, 0], "a hard link counts once");
    }
}
