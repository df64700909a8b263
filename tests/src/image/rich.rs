//! The fourth test image: one hand-made layer with every entry kind a layer can hold
//! (the publisher must carry each through exactly), built once per machine and cached like the main test image.
//!
//! | path | what |
//! |---|---|
//! | `./` | the layer root, mode 0755, its own mtime |
//! | `d/file`, `d/file-hardlink`, `other/file-hardlink` | a file (uid/gid 1000), a hard link in the same directory and one across directories |
//! | `dev/null-char`, `dev/sda1-block`, `dev/fifo` | char device 1:3, block device 8:1 (gid 6), a FIFO |
//! | `links/*` | relative, absolute, dangling symlinks and one whose target is > 100 bytes (GNU `K`) |
//! | `modes/*` | setuid, setgid, all twelve bits, no bits, a sticky directory |
//! | `xattrs/*` | PAX `SCHILY.xattr.*`: `security.capability` (v2, `cap_net_bind_service`), `user.*`, `trusted.*`, on files and a directory |
//! | `names/…` | a name of 150 bytes and a path of > 250 bytes (GNU `L`) |
//! | `times/*` | mtimes before 1970 (GNU base-256, PAX with a fraction), after 2038 (octal, and PAX with a fraction; not after 2262, which umoci cannot represent), with nanoseconds |
//! | `owners/big-ids` | uid/gid 3000000/3000001 (PAX, beyond octal's range) |
//! | `empty`, `big.bin` | an empty file and an 18 MiB pseudo-random file (chunked: more than the 16 MiB chunk maximum) |
//! | `sparse/holes` | a GNU PAX sparse file, format 1.0 (what `tar --sparse --format=posix` writes): stored as `sparse/GNUSparseFile.0/holes` with its map, 3 MiB with three data segments and holes |
//! | `replaced`, `swap` | a path written twice (the later entry wins) and a directory replaced by a file |
//! | `opq/` with `.wh..wh..opq`, `.wh.never-existed` | an opaque directory and a whiteout, overlay-converted in `layerfs` |

use std::path::Path;

use tar::{Builder, EntryType, Header};

use super::build::{TestImage, cached_image};
use super::umoci;
use crate::error::{Result, io_context};
use crate::random::pseudo_random;

/// Cache key of this image's recipe; change it whenever the recipe changes.
pub const RICH_KEY: &str = "rich-entries-v4";
/// Tag of the finished image in the cached layout.
pub const RICH_TAG: &str = "rich";
/// Real size of `sparse/holes`.
const SPARSE_SIZE: u64 = 3 * 1024 * 1024;
/// Its data segments (offset, length): block multiples, as GNU tar writes them.
const SPARSE_SEGMENTS: [(u64, u64); 3] = [(0, 4096), (1024 * 1024, 512), (SPARSE_SIZE - 512, 512)];

/// The stored data of `sparse/holes` in sparse format 1.0: the map (segment count, then
/// offset and length of each, one decimal number per line) padded to a 512-byte block,
/// then the segments back to back.
fn sparse_1_0_data() -> Vec<u8> {
    let mut map = format!("{}\n", SPARSE_SEGMENTS.len());
    for (offset, len) in SPARSE_SEGMENTS {
        map.push_str(&format!("{offset}\n{len}\n"));
    }
    let mut data = map.into_bytes();
    data.resize(data.len().div_ceil(512) * 512, 0);
    for (i, (_, len)) in SPARSE_SEGMENTS.iter().enumerate() {
        data.extend(pseudo_random(*len as usize, 0x5350_0000 + i as u64));
    }
    data
}

/// Size of `big.bin`: beyond the 16 MiB chunk maximum, so it is always chunked.
pub const BIG_FILE_SIZE: usize = 18 << 20;
/// Default mtime of the entries (2023-11-14T22:13:20Z).
const MTIME: i64 = 1_700_000_000;
/// `security.capability` v2 (`VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE`) granting
/// `cap_net_bind_service` (bit 10) permitted and effective; linux/capability.h.
pub const CAPABILITY_V2: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, // magic_etc, little endian
    0x00, 0x04, 0x00, 0x00, // permitted[0]: 1 << 10
    0x00, 0x00, 0x00, 0x00, // inheritable[0]
    0x00, 0x00, 0x00, 0x00, // permitted[1]
    0x00, 0x00, 0x00, 0x00, // inheritable[1]
];

/// Returns the cached image under `<cache_root>/<RICH_KEY>/`, building it first if needed
/// (`umoci init`, `umoci new`, `umoci raw add-layer` of [`layer_tar`]); concurrent callers
/// serialise on `<cache_root>/<RICH_KEY>.lock`.
///
/// Errors: umoci failing (with the log tail), I/O.
pub fn rich_image(cache_root: &Path) -> Result<TestImage> {
    cached_image(cache_root, RICH_KEY, RICH_TAG, build)
}

fn build(dir: &Path) -> Result<()> {
    let log = dir.join("build.log");
    let layout = dir.join("oci");
    umoci::new_layout(&layout, &log)?;
    let tar = dir.join("layer.tar");
    std::fs::write(&tar, layer_tar()?).map_err(io_context(format!("write {}", tar.display())))?;
    umoci::add_layer(&layout, umoci::EMPTY, RICH_TAG, &tar, &log)?;
    std::fs::remove_file(&tar).map_err(io_context(format!("remove {}", tar.display())))?;
    Ok(())
}

/// One entry to write.
struct Spec<'a> {
    kind: EntryType,
    path: &'a str,
    mode: u32,
    owner: (u64, u64),
    mtime: i64,
    data: &'a [u8],
    link: Option<&'a str>,
    device: Option<(u32, u32)>,
    pax: Vec<(String, Vec<u8>)>,
}

impl<'a> Spec<'a> {
    fn new(kind: EntryType, path: &'a str, mode: u32) -> Spec<'a> {
        Spec {
            kind,
            path,
            mode,
            owner: (0, 0),
            mtime: MTIME,
            data: b"",
            link: None,
            device: None,
            pax: Vec::new(),
        }
    }
    fn dir(path: &'a str, mode: u32) -> Spec<'a> {
        Spec::new(EntryType::Directory, path, mode)
    }
    fn file(path: &'a str, mode: u32, data: &'a [u8]) -> Spec<'a> {
        Spec {
            data,
            ..Spec::new(EntryType::Regular, path, mode)
        }
    }
    fn link(kind: EntryType, path: &'a str, target: &'a str) -> Spec<'a> {
        Spec {
            link: Some(target),
            ..Spec::new(kind, path, 0o777)
        }
    }
    fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.owner = (uid, gid);
        self
    }
    fn mtime(mut self, mtime: i64) -> Self {
        self.mtime = mtime;
        self
    }
    fn pax(mut self, key: &str, value: &[u8]) -> Self {
        self.pax.push((key.to_owned(), value.to_vec()));
        self
    }
}

/// The uncompressed layer tar (GNU headers, PAX records where the header cannot say it).
///
/// Errors: the `tar` crate refusing an entry.
pub fn layer_tar() -> Result<Vec<u8>> {
    let big = pseudo_random(BIG_FILE_SIZE, 0x5354_5241_5441);
    let sparse_data = sparse_1_0_data();
    let long_name = format!("names/{}", "n".repeat(150));
    let long_path = format!("names/{}/{}", "d".repeat(120), "f".repeat(120));
    let long_dir = format!("names/{}", "d".repeat(120));
    let long_target = format!("../{}", "t".repeat(150));
    let d_file = Spec::file("d/file", 0o640, b"hello hard links\n")
        .owner(1000, 1000)
        .mtime(MTIME + 2);
    let specs = vec![
        Spec::dir("./", 0o755).mtime(MTIME - 100),
        Spec::dir("d", 0o750).owner(1000, 1000).mtime(MTIME + 1),
        d_file,
        Spec {
            mode: 0o640,
            ..Spec::link(EntryType::Link, "d/file-hardlink", "d/file")
        }
        .owner(1000, 1000)
        .mtime(MTIME + 2),
        Spec::dir("other", 0o755),
        Spec {
            mode: 0o640,
            ..Spec::link(EntryType::Link, "other/file-hardlink", "d/file")
        }
        .owner(1000, 1000)
        .mtime(MTIME + 2),
        Spec::dir("dev", 0o755),
        Spec {
            device: Some((1, 3)),
            ..Spec::new(EntryType::Char, "dev/null-char", 0o666)
        },
        Spec {
            device: Some((8, 1)),
            ..Spec::new(EntryType::Block, "dev/sda1-block", 0o660).owner(0, 6)
        },
        Spec::new(EntryType::Fifo, "dev/fifo", 0o600).mtime(MTIME + 3),
        Spec::dir("links", 0o755),
        Spec::link(EntryType::Symlink, "links/relative", "../d/file").owner(1000, 1000),
        Spec::link(EntryType::Symlink, "links/absolute", "/d/file"),
        Spec::link(EntryType::Symlink, "links/dangling", "does/not/exist").mtime(MTIME + 4),
        Spec::link(EntryType::Symlink, "links/long-target", &long_target),
        Spec::dir("modes", 0o755),
        Spec::file("modes/setuid", 0o4755, b"#!/bin/sh\necho suid\n"),
        Spec::file("modes/setgid", 0o2755, b"#!/bin/sh\necho sgid\n").owner(0, 50),
        Spec::file("modes/all-bits", 0o7777, b"all\n"),
        Spec::file("modes/no-bits", 0o000, b"none\n"),
        Spec::dir("modes/sticky-dir", 0o1777),
        Spec::dir("xattrs", 0o755).pax("SCHILY.xattr.user.on-a-dir", b"dir value"),
        Spec::file("xattrs/capability", 0o755, b"#!/bin/sh\necho cap\n")
            .pax("SCHILY.xattr.security.capability", &CAPABILITY_V2)
            .pax("SCHILY.xattr.user.strata", b"user value"),
        Spec::file("xattrs/trusted", 0o644, b"trusted\n")
            .pax("SCHILY.xattr.trusted.strata", b"trusted value"),
        Spec::dir("names", 0o755),
        Spec::file(&long_name, 0o644, b"long name\n"),
        Spec::dir(&long_dir, 0o755),
        Spec::file(&long_path, 0o644, b"long path\n"),
        Spec::dir("times", 0o755),
        Spec::file("times/before-1970-gnu", 0o644, b"1969\n").mtime(-31_536_000),
        Spec::file("times/before-1970-pax", 0o644, b"1969 pax\n").pax("mtime", b"-1000000.25"),
        Spec::file("times/after-2038", 0o644, b"2100\n").mtime(4_102_444_800),
        // 2200-01-01T00:00:00.5Z; not later: umoci keeps times as Go nanoseconds, which end in 2262.
        Spec::file("times/after-2038-pax", 0o644, b"2200\n").pax("mtime", b"7258118400.5"),
        Spec::file("times/nanoseconds", 0o644, b"ns\n").pax("mtime", b"1700000000.123456789"),
        Spec::dir("owners", 0o755),
        Spec::file("owners/big-ids", 0o644, b"ids\n")
            .pax("uid", b"3000000")
            .pax("gid", b"3000001"),
        Spec::file("empty", 0o644, b""),
        Spec::file("big.bin", 0o644, &big),
        Spec::dir("sparse", 0o755),
        Spec::file("sparse/GNUSparseFile.0/holes", 0o644, &sparse_data)
            .pax("GNU.sparse.major", b"1")
            .pax("GNU.sparse.minor", b"0")
            .pax("GNU.sparse.name", b"sparse/holes")
            .pax("GNU.sparse.realsize", SPARSE_SIZE.to_string().as_bytes()),
        Spec::file("replaced", 0o600, b"first version\n"),
        Spec::file("replaced", 0o644, b"second version wins\n").mtime(MTIME + 5),
        Spec::dir("swap", 0o755),
        Spec::file("swap/child", 0o644, b"dropped with its directory\n"),
        Spec::file("swap", 0o644, b"a file now\n"),
        Spec::dir("opq", 0o755),
        Spec::file("opq/.wh..wh..opq", 0o644, b""),
        Spec::file("opq/kept", 0o644, b"kept\n"),
        Spec::file(".wh.never-existed", 0o644, b""),
    ];
    let mut builder = Builder::new(Vec::new());
    for spec in &specs {
        append(&mut builder, spec)?;
    }
    builder
        .into_inner()
        .map_err(io_context("finish the rich layer tarball"))
}

fn append(builder: &mut Builder<Vec<u8>>, spec: &Spec<'_>) -> Result<()> {
    let context = || format!("add {} to the rich layer", spec.path);
    if !spec.pax.is_empty() {
        builder
            .append_pax_extensions(spec.pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(io_context(context()))?;
    }
    let mut header = Header::new_gnu();
    header.set_entry_type(spec.kind);
    header.set_mode(spec.mode);
    header.set_uid(spec.owner.0);
    header.set_gid(spec.owner.1);
    header.set_size(spec.data.len() as u64);
    if spec.mtime >= 0 {
        header.set_mtime(spec.mtime as u64);
    } else {
        // GNU base-256: 0xff marks a negative number, big-endian two's complement.
        let mut raw = [0xffu8; 12];
        raw[4..].copy_from_slice(&spec.mtime.to_be_bytes());
        header.as_old_mut().mtime = raw;
    }
    if let Some((major, minor)) = spec.device {
        header
            .set_device_major(major)
            .map_err(io_context(context()))?;
        header
            .set_device_minor(minor)
            .map_err(io_context(context()))?;
    }
    match spec.link {
        Some(target) => builder
            .append_link(&mut header, spec.path, target)
            .map_err(io_context(context())),
        None => builder
            .append_data(&mut header, spec.path, spec.data)
            .map_err(io_context(context())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fstree::Kind;
    use crate::tar_tree::{OPAQUE_XATTR, tar_tree};

    #[test]
    fn the_layer_holds_every_entry_kind() {
        let bytes = layer_tar().unwrap();
        let tree = tar_tree(&bytes[..], "rich layer").unwrap();
        let node = |p: &str| tree.get(p).unwrap_or_else(|| panic!("{p} missing"));
        assert!(!node("").implicit, "the root has its own entry");
        assert_eq!(node("").mtime, MTIME - 100);
        assert_eq!(node("d/file-hardlink"), node("d/file"));
        assert_eq!(node("other/file-hardlink"), node("d/file"));
        assert_eq!(node("d/file").uid, 1000);
        assert_eq!(node("dev/null-char").device, Some((1, 3)));
        assert_eq!(node("dev/sda1-block").kind, Kind::Block);
        assert_eq!(node("dev/fifo").kind, Kind::Fifo);
        assert_eq!(
            node("links/long-target").target.as_deref().map(str::len),
            Some(153)
        );
        assert_eq!(node("modes/setuid").mode, libc::S_IFREG | 0o4755);
        assert_eq!(node("modes/sticky-dir").mode, libc::S_IFDIR | 0o1777);
        let caps = &node("xattrs/capability").xattrs;
        assert_eq!(
            caps.get("security.capability").map(Vec::as_slice),
            Some(&CAPABILITY_V2[..])
        );
        assert!(node("xattrs").xattrs.contains_key("user.on-a-dir"));
        assert!(tree.contains_key(&format!("names/{}", "n".repeat(150))));
        // Before 1970: the epoch, as containerd's unpack sets it (the tar holds the real
        // times, GNU base-256 and a negative PAX time with a fraction).
        assert_eq!(node("times/before-1970-gnu").mtime, 0);
        assert_eq!(
            (
                node("times/before-1970-pax").mtime,
                node("times/before-1970-pax").mtime_ns
            ),
            (0, 0)
        );
        assert_eq!(
            (
                node("times/after-2038-pax").mtime,
                node("times/after-2038-pax").mtime_ns
            ),
            (7_258_118_400, 500_000_000)
        );
        assert_eq!(node("times/nanoseconds").mtime_ns, 123_456_789);
        assert_eq!(
            (node("owners/big-ids").uid, node("owners/big-ids").gid),
            (3_000_000, 3_000_001)
        );
        assert_eq!(node("big.bin").size, BIG_FILE_SIZE as u64);
        assert_eq!(node("sparse/holes").size, SPARSE_SIZE);
        assert!(!tree.contains_key("sparse/GNUSparseFile.0"));
        assert_eq!(node("replaced").size, 20);
        assert_eq!(node("swap").kind, Kind::File);
        assert!(!tree.contains_key("swap/child"));
        assert_eq!(
            node("opq").xattrs.get(OPAQUE_XATTR).map(Vec::as_slice),
            Some(&b"y"[..])
        );
        assert_eq!(node("never-existed").device, Some((0, 0)));
        assert!(tree.keys().all(|k| !k.contains(".wh.")));
    }
}
