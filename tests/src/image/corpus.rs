//! The tar conformance corpus: one set of awkward entries, written into a layer tar by
//! each writer real image layers come from, each tar on top of the same small base layer
//! as a two-layer image in one OCI layout (one tag per writer).
//!
//! The entries ([`stage`] makes them on disk as root; each writer archives the directory):
//!
//! | path | what |
//! |---|---|
//! | `./` | mode 0750, uid/gid 1000, xattr `user.root` (containerd ignores the root entry) |
//! | `d/file`, `d/hard`, `other/hard` | a file (uid/gid 1000, 0640), a hard link beside it and one across directories |
//! | `empty`, `data.bin` | an empty file, 300 KiB of pseudo-random bytes |
//! | `links/*` | relative, absolute and dangling symlinks; one whose target is 150 bytes |
//! | `names/…` | a 150-byte name and a path of more than 300 bytes |
//! | `modes/*` | setuid, setgid, a sticky directory |
//! | `dev/*` | char device 1:3, block device 8:1 (gid 6), a FIFO |
//! | `xattrs/*` | `security.capability` (v2), `user.*` on a file and on the directory |
//! | `owners/big` | uid/gid 3000000/3000001, beyond what octal header fields hold |
//! | `times/*` | an mtime in 1960, one in 2250 (past 8^11 s, beyond octal), one with nanoseconds |
//! | `sparse/holes` | 8 MiB with three 4 KiB data extents and holes between them |
//! | `gone/.wh.victim`, `opq/.wh..wh..opq`, `opq/new` | a whiteout and an opaque directory over the base layer's `gone/victim` and `opq/old` |
//!
//! Writers ([`WRITERS`]): Go `archive/tar` (`umoci repack`, the writer of umoci, buildkit
//! and docker), GNU tar in `gnu`, `posix` and `ustar` formats with and without `--sparse`
//! (every sparse version), bsdtar (libarchive) in `pax` and `gnutar`, Python `tarfile` in
//! PAX and GNU formats (with a file replaced after a hard link to it was made), busybox
//! tar. Formats that cannot hold an entry (ustar: long names, big ids, times outside
//! 1970..2242; busybox likewise) archive the [`Source::Portable`] subset. Two more tars:
//! names, a directory and link targets that are not UTF-8 (Latin-1), and a hard link to
//! nothing, which must be refused.

use std::os::unix::fs::{FileExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;

use super::layer_tar::{self, Item};
use super::rich::CAPABILITY_V2;
use super::umoci;
use crate::error::{Error, Result, io_context};
use crate::process::run_checked;
use crate::random::pseudo_random;

/// Longest one writer or umoci command may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// Default mtime of the staged entries (2023-11-14T22:13:20Z).
const MTIME: i64 = 1_700_000_000;
/// 1960-01-01T00:00:00Z: before the epoch (GNU base-256, PAX negative).
pub const OLD_MTIME: i64 = -315_619_200;
/// 2250-01-01T00:00:00Z: beyond 8^11 s, the largest mtime an octal field holds (and
/// before 2262, past which Go's `time.UnixNano`, which containerd uses, overflows).
pub const FUTURE_MTIME: i64 = 8_835_955_200;
/// Real size of `sparse/holes`.
pub const SPARSE_SIZE: u64 = 8 << 20;
/// Its data extents (offset, length), filesystem-block aligned so the holes are real.
const SPARSE_EXTENTS: [(u64, u64); 3] = [(0, 4096), (4 << 20, 4096), ((8 << 20) - 4096, 4096)];
/// The hard-link target that [`Writer`] `python-*` replaces after linking to it.
pub const REPLACED_LATER: &str = "later/target";

/// Which subset of the entries a writer archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Every entry of the table.
    Full,
    /// What ustar can hold: no long names or link names, no big ids, no times before 1970
    /// or past 2242, no xattrs.
    Portable,
    /// [`Source::Full`] without the whiteout markers: `umoci repack` writes the whiteouts
    /// itself from what was deleted in the unpacked base.
    Deletions,
}

/// What containerd's unpack does with a writer's tar (the corpus states it; the
/// conformance test checks containerd agrees and that Strata matches containerd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Unpacked; Strata must publish the same trees.
    Accepted,
    /// Refused; Strata must refuse it too, with an error naming this entry.
    Refused(&'static str),
}

/// One tar writer of the corpus.
#[derive(Debug, Clone, Copy)]
pub struct Writer {
    /// Tag of its image in the corpus layout, and its name in reports.
    pub name: &'static str,
    /// The tool and options, as the README's support table names them.
    pub tool: &'static str,
    /// The entries it archives.
    pub source: Source,
    /// What containerd does with its tar.
    pub verdict: Verdict,
}

/// Every writer, in report order.
pub const WRITERS: &[Writer] = &[
    Writer {
        name: "go-umoci",
        tool: "Go archive/tar (umoci repack)",
        source: Source::Deletions,
        verdict: Verdict::Accepted,
    },
    Writer {
        name: "gnu-gnu",
        tool: "GNU tar --format=gnu",
        source: Source::Full,
        verdict: Verdict::Accepted,
    },
    Writer {
        name: "gnu-posix",
        tool: "GNU tar --format=posix --xattrs",
        source: Source::Full,
        verdict: Verdict::Accepted,
    },
    Writer {
        name: "gnu-ustar",
        tool: "GNU tar --format=ustar",
        source: Source::Portable,
        verdict: Verdict::Accepted,
    },
    Writer {
        name: "gnu-posix-sparse-0.0",
        tool: "GNU tar --format=posix --sparse --sparse-version=0.0",
        source: Source::Full,
        verdict: Verdict::Accepted,
    },
    Writer {
        name: "gnu-posix-sparse-0.1",
        tool: "GNU tar --format=posix --sparse --sparse-version=0.1",
        source: Source::Full,
        verdict: Verdict::Accepted,
    },
    Writer {
        name: "gnu-posix-sparse-1.0",
        tool: "GNU tar --format=posix --sparse --sparse-version=1.0",
        source: Source::Full,
        verdict: Verdict::Accepted,
    },
    Writer {
        name: "gnu-gnu-sparse",
        tool: "GNU tar --format=gnu --sparse (old GNU type S)",
        source: Source::Full,
        verdict: Verdict::Refused("sparse/holes"),
    },
    Writer {
        name: "bsdtar-pax",
        tool: "bsdtar --format pax --xattrs (libarchive)",
        source: Source::Full,
        verdict: Verdict::Accepted,
    },
    Writer {
        name: "bsdtar-gnutar",
        tool: "bsdtar --format gnutar (libarchive)",
        source: Source::Full,
        verdict: Verdict::Accepted,
    },
    Writer {
        name: "python-pax",
        tool: "Python tarfile PAX_FORMAT",
        source: Source::Full,
        verdict: Verdict::Accepted,
    },
    Writer {
        name: "python-gnu",
        tool: "Python tarfile GNU_FORMAT",
        source: Source::Full,
        verdict: Verdict::Accepted,
    },
    Writer {
        name: "busybox",
        tool: "busybox tar",
        source: Source::Portable,
        verdict: Verdict::Accepted,
    },
    Writer {
        name: "python-missing-link",
        tool: "Python tarfile: a hard link to nothing",
        source: Source::Portable,
        verdict: Verdict::Refused("missing/link"),
    },
    Writer {
        name: "python-non-utf8",
        tool: "Python tarfile: names and link targets that are not UTF-8",
        source: Source::Portable,
        verdict: Verdict::Accepted,
    },
];

/// The base layer every corpus image has below its writer's layer.
fn base_layer() -> Result<Vec<u8>> {
    layer_tar::build(&[
        Item::dir("gone"),
        Item::file("gone/victim", b"deleted by a whiteout\n"),
        Item::dir("opq"),
        Item::file("opq/old", b"hidden by the opaque directory\n"),
        Item::file("base-only", b"from the base layer\n"),
    ])
}

/// The Python `tarfile` writer (run as `python3 - FORMAT SOURCE OUT [CASE]`).
const TARFILE_WRITER: &str = include_str!("corpus_tarfile.py");

/// Builds the corpus under `dir`: `dir/oci` holds one image per [`WRITERS`] entry, tagged
/// with its name; `dir/tars/<name>.tar` keeps each writer's layer tar. Needs root (devices,
/// owners, `security.*` xattrs) and the writers: `tar`, `bsdtar`, `busybox`, `python3`,
/// `umoci`.
///
/// Errors: a writer or umoci failing (with its log), I/O.
pub fn build_corpus(dir: &Path) -> Result<PathBuf> {
    let log = dir.join("corpus.log");
    let layout = dir.join("oci");
    let tars = dir.join("tars");
    std::fs::create_dir_all(&tars).map_err(io_context(format!("create {}", tars.display())))?;
    umoci::new_layout(&layout, &log)?;
    let base = dir.join("base.tar");
    std::fs::write(&base, base_layer()?)
        .map_err(io_context(format!("write {}", base.display())))?;
    umoci::add_layer(&layout, umoci::EMPTY, "base", &base, &log)?;
    for source in [Source::Full, Source::Portable] {
        stage(&dir.join(source_dir(source)), source)?;
    }
    for writer in WRITERS {
        let tar = tars.join(format!("{}.tar", writer.name));
        if writer.source == Source::Deletions {
            go_writer(dir, &layout, writer.name, &tar, &log)?;
            continue;
        }
        let source = dir.join(source_dir(writer.source));
        write_tar(writer.name, &source, &tar, &log)?;
        umoci::add_layer(&layout, "base", writer.name, &tar, &log)?;
    }
    Ok(layout)
}

fn source_dir(source: Source) -> &'static str {
    match source {
        Source::Full => "src-full",
        Source::Portable => "src-portable",
        Source::Deletions => "src-deletions",
    }
}

/// Runs writer `name` on `source` into `tar`.
fn write_tar(name: &str, source: &Path, tar: &Path, log: &Path) -> Result<()> {
    let gnu = |format: &str, extra: &[&str]| {
        let mut c = Command::new("tar");
        c.arg(format!("--format={format}"))
            .args(["--numeric-owner", "-C"])
            .arg(source)
            .args(extra)
            .arg("-cf")
            .arg(tar)
            .arg(".");
        c
    };
    let xattrs = ["--xattrs", "--xattrs-include=*"];
    let mut command = match name {
        "gnu-gnu" => gnu("gnu", &[]),
        "gnu-posix" => gnu("posix", &xattrs),
        "gnu-ustar" => gnu("ustar", &[]),
        "gnu-gnu-sparse" => gnu("gnu", &["--sparse"]),
        "gnu-posix-sparse-0.0" | "gnu-posix-sparse-0.1" | "gnu-posix-sparse-1.0" => {
            let version = format!("--sparse-version={}", &name["gnu-posix-sparse-".len()..]);
            gnu(
                "posix",
                &["--xattrs", "--xattrs-include=*", "--sparse", &version],
            )
        }
        "bsdtar-pax" | "bsdtar-gnutar" => {
            let mut c = Command::new("bsdtar");
            c.args(["--format", &name["bsdtar-".len()..], "--numeric-owner"]);
            if name == "bsdtar-pax" {
                c.arg("--xattrs");
            }
            c.arg("-C").arg(source).arg("-cf").arg(tar).arg(".");
            c
        }
        "busybox" => {
            let mut c = Command::new("busybox");
            c.args(["tar", "-C"])
                .arg(source)
                .arg("-cf")
                .arg(tar)
                .arg(".");
            c
        }
        _ => {
            let (format, case) = match name {
                "python-pax" => ("pax", "full"),
                "python-gnu" => ("gnu", "full"),
                "python-missing-link" => ("pax", "missing-link"),
                "python-non-utf8" => ("pax", "non-utf8"),
                other => {
                    return Err(Error::Invalid(format!("no such corpus writer: {other}")));
                }
            };
            let script = log.with_file_name("corpus_tarfile.py");
            std::fs::write(&script, TARFILE_WRITER)
                .map_err(io_context(format!("write {}", script.display())))?;
            let mut c = Command::new("python3");
            c.arg(&script).arg(format).arg(source).arg(tar).arg(case);
            c
        }
    };
    run_checked(&mut command, log, STEP_TIMEOUT).map(drop)
}

/// Go `archive/tar` through umoci: unpack the base image, delete and add in its root
/// filesystem what the other writers' tars say, `umoci repack` (which writes the
/// whiteouts for what was deleted).
fn go_writer(dir: &Path, layout: &Path, name: &str, tar: &Path, log: &Path) -> Result<()> {
    let bundle = dir.join("bundle-go");
    let base = format!("{}:base", layout.display());
    run_checked(
        Command::new("umoci")
            .args(["unpack", "--image", &base])
            .arg(&bundle),
        log,
        STEP_TIMEOUT,
    )?;
    let rootfs = bundle.join("rootfs");
    for gone in ["gone/victim", "opq/old"] {
        let path = rootfs.join(gone);
        std::fs::remove_file(&path).map_err(io_context(format!("remove {}", path.display())))?;
    }
    stage(&rootfs, Source::Deletions)?;
    run_checked(
        Command::new("umoci")
            .args(["repack", "--image", &format!("{}:{name}", layout.display())])
            .arg(&bundle),
        log,
        STEP_TIMEOUT,
    )?;
    // Keep the layer umoci wrote (gzip) beside the others for inspection.
    let facts = super::layout::read_layout(layout, name)?;
    let top = facts
        .layers
        .last()
        .ok_or_else(|| Error::Invalid(format!("{name}: umoci repack wrote no layer")))?;
    let blob = super::layout::blob_path(layout, &top.digest)?;
    std::fs::copy(&blob, tar.with_extension("tar.gz"))
        .map_err(io_context(format!("copy {}", blob.display())))?;
    Ok(())
}

/// Makes the corpus entries for `source` under `root` (created if missing), as root.
pub fn stage(root: &Path, source: Source) -> Result<()> {
    let full = source != Source::Portable;
    let p = |rel: &str| root.join(rel);
    for d in [
        "d", "other", "links", "modes", "dev", "xattrs", "owners", "times", "sparse", "gone",
        "opq", "names",
    ] {
        mkdir(&p(d), 0o755)?;
    }
    write(&p("d/file"), b"hello from the corpus\n", 0o640)?;
    lchown(p("d/file"), Some(1000), Some(1000)).map_err(io_context("chown d/file"))?;
    link(&p("d/file"), &p("d/hard"))?;
    link(&p("d/file"), &p("other/hard"))?;
    write(&p("empty"), b"", 0o644)?;
    write(&p("data.bin"), &pseudo_random(300 * 1024, 0xC0_4B05), 0o644)?;
    symlink("../d/file", p("links/rel")).map_err(io_context("symlink links/rel"))?;
    symlink("/etc/passwd", p("links/abs")).map_err(io_context("symlink links/abs"))?;
    symlink("nowhere", p("links/dangling")).map_err(io_context("symlink links/dangling"))?;
    write(&p("modes/suid"), b"#!/bin/sh\n", 0o4755)?;
    write(&p("modes/sgid"), b"#!/bin/sh\n", 0o2755)?;
    mkdir(&p("modes/sticky"), 0o1777)?;
    mknod(
        &p("dev/char"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )
    .map_err(|e| Error::Invalid(format!("mknod dev/char: {e}")))?;
    mknod(
        &p("dev/block"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        makedev(8, 1),
    )
    .map_err(|e| Error::Invalid(format!("mknod dev/block: {e}")))?;
    lchown(p("dev/block"), Some(0), Some(6)).map_err(io_context("chown dev/block"))?;
    mknod(
        &p("dev/fifo"),
        SFlag::S_IFIFO,
        Mode::from_bits_truncate(0o644),
        0,
    )
    .map_err(|e| Error::Invalid(format!("mknod dev/fifo: {e}")))?;
    write_sparse(&p("sparse/holes"), SPARSE_SIZE, &SPARSE_EXTENTS, 0x5EED)?;
    write(&p("opq/new"), b"the opaque directory's own file\n", 0o644)?;
    write(&p("base-only"), b"replaced by the writer's layer\n", 0o644)?;
    if source != Source::Deletions {
        write(&p("gone/.wh.victim"), b"", 0o644)?;
        write(&p("opq/.wh..wh..opq"), b"", 0o644)?;
    }
    if full {
        let long_name = "n".repeat(150);
        write(&p(&format!("names/{long_name}")), b"a long name\n", 0o644)?;
        let mut deep = p("names");
        for i in 0..5 {
            deep.push(format!("{i}{}", "d".repeat(59)));
            mkdir(&deep, 0o755)?;
        }
        write(&deep.join("leaf"), b"a long path\n", 0o644)?;
        symlink("t".repeat(150), p("links/long")).map_err(io_context("symlink links/long"))?;
        write(&p("xattrs/cap"), b"capable\n", 0o755)?;
        set_xattr(&p("xattrs/cap"), "security.capability", &CAPABILITY_V2)?;
        write(&p("xattrs/user"), b"with a user xattr\n", 0o644)?;
        set_xattr(&p("xattrs/user"), "user.strata", b"corpus")?;
        set_xattr(&p("xattrs"), "user.dir", b"1")?;
        write(&p("owners/big"), b"big ids\n", 0o644)?;
        lchown(p("owners/big"), Some(3_000_000), Some(3_000_001))
            .map_err(io_context("chown owners/big"))?;
        write(&p("times/old"), b"1960\n", 0o644)?;
        write(&p("times/future"), b"2250\n", 0o644)?;
    }
    write(&p("times/nanos"), b"nanoseconds\n", 0o644)?;
    // The root as a writer archives it (`./`): containerd ignores that entry.
    set_xattr(root, "user.root", b"ignored")?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o750))
        .map_err(io_context(format!("chmod {}", root.display())))?;
    lchown(root, Some(1000), Some(1000)).map_err(io_context("chown the root"))?;
    // Times last, deepest first, so creating children does not move a directory's mtime.
    let mut paths = Vec::new();
    collect(root, &mut paths)?;
    paths.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    for path in paths {
        let (secs, nanos) = match path.strip_prefix(root).ok().and_then(Path::to_str) {
            Some("times/old") => (OLD_MTIME, 0),
            Some("times/future") => (FUTURE_MTIME, 0),
            Some("times/nanos") => (MTIME, 123_456_789),
            _ => (MTIME, 0),
        };
        let time = TimeSpec::new(secs, nanos);
        utimensat(
            nix::fcntl::AT_FDCWD,
            &path,
            &time,
            &time,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| Error::Invalid(format!("set the mtime of {}: {e}", path.display())))?;
    }
    Ok(())
}

/// `root` and every path below it, not following symlinks.
fn collect(root: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    out.push(root.to_owned());
    let meta =
        std::fs::symlink_metadata(root).map_err(io_context(format!("lstat {}", root.display())))?;
    if meta.is_dir() {
        for entry in
            std::fs::read_dir(root).map_err(io_context(format!("list {}", root.display())))?
        {
            let entry = entry.map_err(io_context(format!("list {}", root.display())))?;
            collect(&entry.path(), out)?;
        }
    }
    Ok(())
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(path).map_err(io_context(format!("create {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_context(format!("chmod {}", path.display())))
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    std::fs::write(path, data).map_err(io_context(format!("write {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_context(format!("chmod {}", path.display())))
}

/// Writes `path` (mode 0644) as a file of `size` bytes with holes: pseudo-random data
/// (seed `seed + i`) in each extent `i` (offset, length), nothing elsewhere.
fn write_sparse(path: &Path, size: u64, extents: &[(u64, u64)], seed: u64) -> Result<()> {
    write(path, b"", 0o644)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_context(format!("open {}", path.display())))?;
    file.set_len(size)
        .map_err(io_context(format!("truncate {}", path.display())))?;
    for (i, (offset, len)) in extents.iter().enumerate() {
        file.write_all_at(&pseudo_random(*len as usize, seed + i as u64), *offset)
            .map_err(io_context(format!("write {}", path.display())))?;
    }
    Ok(())
}

fn link(target: &Path, path: &Path) -> Result<()> {
    std::fs::hard_link(target, path).map_err(io_context(format!("link {}", path.display())))
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    xattr::set(path, name, value).map_err(io_context(format!(
        "set xattr {name} on {}",
        path.display()
    )))
}

/// Apparent size of the large sparse file of [`sparse_image`].
pub const LARGE_SPARSE_SIZE: u64 = 64 << 20;
/// Its path in the image.
pub const LARGE_SPARSE_PATH: &str = "opt/sparse/holes-64MiB";

/// A sparse image on top of `base` (an `oci:DIR:TAG` source with a shell and
/// `sha256sum`, the Debian test image): one more layer, written by GNU tar with
/// `--format=posix --sparse --sparse-version=1.0`, holding [`LARGE_SPARSE_PATH`] of
/// [`LARGE_SPARSE_SIZE`] bytes with three 4 KiB data extents. Built under `dir`; returns
/// the layout (tag `sparse`) and the file's SHA-256.
///
/// Errors: skopeo, tar or umoci failing; tar not writing a sparse entry (the layer tar
/// would be 64 MiB); I/O.
pub fn sparse_image(dir: &Path, base: &str) -> Result<(PathBuf, String)> {
    let log = dir.join("sparse-image.log");
    let stage_dir = dir.join("sparse-src");
    let file = stage_dir.join(LARGE_SPARSE_PATH);
    let parent = file.parent().unwrap_or(&stage_dir).to_owned();
    mkdir(&parent, 0o755)?;
    let extents = [
        (0, 4096),
        (LARGE_SPARSE_SIZE / 2, 4096),
        (LARGE_SPARSE_SIZE - 4096, 4096),
    ];
    write_sparse(&file, LARGE_SPARSE_SIZE, &extents, 0x64_0000)?;
    let sha256 = crate::fswalk::file_sha256(&file)?;
    let tar = dir.join("sparse-layer.tar");
    run_checked(
        Command::new("tar")
            .args(["--format=posix", "--sparse", "--sparse-version=1.0", "-C"])
            .arg(&stage_dir)
            .arg("-cf")
            .arg(&tar)
            .arg("opt"),
        &log,
        STEP_TIMEOUT,
    )?;
    let tar_size = std::fs::metadata(&tar)
        .map_err(io_context(format!("stat {}", tar.display())))?
        .len();
    if tar_size > 1 << 20 {
        return Err(Error::Invalid(format!(
            "GNU tar wrote {tar_size} bytes for a sparse file: not a sparse entry"
        )));
    }
    let layout = dir.join("sparse-oci");
    run_checked(
        Command::new("skopeo")
            .args(["copy", base])
            .arg(format!("oci:{}:base", layout.display())),
        &log,
        STEP_TIMEOUT,
    )?;
    umoci::add_layer(&layout, "base", "sparse", &tar, &log)?;
    Ok((layout, sha256))
}
