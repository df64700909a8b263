//! What the dynamic loader opens after an ELF file: its program interpreter (`PT_INTERP`),
//! the libraries it names (`DT_NEEDED`) and the directories it asks to search first
//! (`DT_RUNPATH`, or `DT_RPATH` without one), read from its program headers the way
//! `ld.so` reads them (section headers may be stripped). Parsing is the `object` crate's,
//! reading only the headers, the dynamic segment and its string table from the file.
//!
//! Read-ahead ([`crate::client::readahead`]) uses it: a program or an extension module
//! that is opened is about to be mapped, and the loader then opens what it needs one
//! library after another — one round trip each from a distant server, in a library
//! directory too big to read ahead whole.

use std::io::{Read, Seek};

use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::read::{ReadCache, ReadRef};
use object::{Endianness, FileKind};

/// The first bytes of every ELF file.
pub const MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];

/// What the loader needs after an ELF file, in the order it asks for them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dependencies {
    /// The program interpreter (`PT_INTERP`, an absolute path), for executables.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` names, in order.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` entries, or `DT_RPATH` entries when there is no `DT_RUNPATH`, split at
    /// `:` (they may hold `$ORIGIN`).
    pub search: Vec<String>,
    /// Whether the file is 64-bit (`ELFCLASS64`): the loader searches `lib64` only then.
    pub class64: bool,
    /// The multiarch tuple of the file's machine (`x86_64-linux-gnu`), when known: Debian
    /// and Ubuntu keep libraries in `/usr/lib/<tuple>`.
    pub multiarch: Option<&'static str>,
}

/// The dependencies of the ELF file read by `reader` (only its headers, dynamic segment
/// and string table are read); `None` when it is not a dynamically linked ELF file or its
/// headers cannot be read (a damaged or truncated file: read-ahead skips it, the loader
/// reports it).
pub fn dependencies(reader: impl Read + Seek) -> Option<Dependencies> {
    let data = ReadCache::new(reader);
    match FileKind::parse(&data).ok()? {
        FileKind::Elf64 => parse::<elf::FileHeader64<Endianness>, _>(&data),
        FileKind::Elf32 => parse::<elf::FileHeader32<Endianness>, _>(&data),
        _ => None,
    }
}

/// Program headers looked at, at most (real files have a dozen; the file is outside data).
const MAX_PROGRAM_HEADERS: usize = 256;
/// Largest `PT_INTERP` read (Linux's `PATH_MAX`).
const MAX_INTERPRETER: u64 = 4096;
/// Largest `PT_DYNAMIC` read (real ones hold a few dozen 16-byte entries).
const MAX_DYNAMIC: u64 = 64 * 1024;
/// Longest string read from the dynamic string table (a name or a runpath).
const MAX_STRING: u64 = 4096;
/// `DT_NEEDED` names kept, at most.
const MAX_NEEDED: usize = 256;
/// Runpath directories kept, at most.
const MAX_SEARCH: usize = 32;

fn parse<'data, Elf, R>(data: R) -> Option<Dependencies>
where
    Elf: FileHeader<Endian = Endianness>,
    R: ReadRef<'data>,
{
    // Every read below is bounded: `data` keeps what it read, and a crafted file could
    // otherwise make it read the file many times over.
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let segments = header.program_headers(endian, data).ok()?;
    if segments.len() > MAX_PROGRAM_HEADERS {
        return None;
    }
    let mut out = Dependencies {
        multiarch: multiarch(header.e_machine(endian), header.is_class_64(), endian),
        class64: header.is_class_64(),
        ..Dependencies::default()
    };
    // The first PT_INTERP and PT_DYNAMIC, as the loader takes them.
    let first = |kind: elf::ProgramType, max: u64| {
        segments
            .iter()
            .find(|s| s.p_type(endian) == kind)
            .filter(|s| s.p_filesz(endian).into() <= max)
    };
    if let Some(interp) = first(elf::PT_INTERP, MAX_INTERPRETER)
        .and_then(|s| s.interpreter(endian, data).ok().flatten())
    {
        out.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
    }
    let entries = first(elf::PT_DYNAMIC, MAX_DYNAMIC)?
        .dynamic(endian, data)
        .ok()??;
    // DT_STRTAB is a virtual address: the string table is where a PT_LOAD segment maps it.
    let (mut strtab, mut strsz) = (None, None);
    for entry in entries {
        let tag = entry.tag(endian);
        if tag == elf::DT_NULL {
            break;
        } else if tag == elf::DT_STRTAB {
            strtab = Some(entry.val(endian));
        } else if tag == elf::DT_STRSZ {
            strsz = Some(entry.val(endian));
        }
    }
    let (address, size) = (strtab?, strsz?);
    let offset = segments.iter().find_map(|s| {
        let start: u64 = s.p_vaddr(endian).into();
        let filesz: u64 = s.p_filesz(endian).into();
        let offset: u64 = s.p_offset(endian).into();
        let within = address.checked_sub(start).filter(|w| *w < filesz)?;
        (s.p_type(endian) == elf::PT_LOAD)
            .then(|| offset.checked_add(within))
            .flatten()
    })?;
    let file_len = data.len().ok()?;
    let string = |val: u64| -> Option<String> {
        // At most MAX_STRING bytes, inside the table and the file, up to the NUL.
        let start = offset.checked_add(val).filter(|_| val < size)?;
        let len = (size - val)
            .min(MAX_STRING)
            .min(file_len.checked_sub(start)?);
        let bytes = data.read_bytes_at(start, len).ok()?;
        let end = bytes.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
    };
    let (mut runpath, mut rpath) = (None, None);
    for entry in entries {
        let tag = entry.tag(endian);
        if tag == elf::DT_NULL {
            break;
        }
        let val = entry.val(endian);
        if tag == elf::DT_NEEDED && out.needed.len() < MAX_NEEDED {
            out.needed.extend(string(val));
        } else if tag == elf::DT_RUNPATH && runpath.is_none() {
            runpath = string(val);
        } else if tag == elf::DT_RPATH && rpath.is_none() {
            rpath = string(val);
        }
    }
    // DT_RPATH counts only without DT_RUNPATH.
    out.search = runpath
        .or(rpath)
        .unwrap_or_default()
        .split(':')
        .filter(|s| !s.is_empty())
        .take(MAX_SEARCH)
        .map(str::to_string)
        .collect();
    Some(out)
}

/// Debian's multiarch tuple of an ELF machine (`dpkg-architecture -qDEB_HOST_MULTIARCH`).
fn multiarch(machine: elf::Machine, is_64: bool, endian: Endianness) -> Option<&'static str> {
    let little = endian == Endianness::Little;
    Some(match (machine, is_64, little) {
        (elf::EM_X86_64, true, _) => "x86_64-linux-gnu",
        (elf::EM_386, false, _) => "i386-linux-gnu",
        (elf::EM_AARCH64, true, true) => "aarch64-linux-gnu",
        (elf::EM_ARM, false, true) => "arm-linux-gnueabihf",
        (elf::EM_PPC64, true, true) => "powerpc64le-linux-gnu",
        (elf::EM_S390, true, false) => "s390x-linux-gnu",
        (elf::EM_RISCV, true, true) => "riscv64-linux-gnu",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;

    /// A shared object built for this test (see `tests/fixtures/elf/README.md`): needs
    /// `libstrata-a.so.1` and `libc.so.6`, runpath `$ORIGIN/../lib:/opt/strata/lib`.
    const SHARED: &[u8] = include_bytes!("../../tests/fixtures/elf/needs-a.so");
    /// An executable with interpreter `/lib64/ld-linux-x86-64.so.2`, needing `libc.so.6`
    /// and rpath `/opt/old` (no runpath).
    const EXECUTABLE: &[u8] = include_bytes!("../../tests/fixtures/elf/rpath-exe");

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn reads_needed_and_runpath_of_a_shared_object() {
        let deps = dependencies(&file_with(SHARED)).unwrap();
        assert_eq!(deps.needed, ["libstrata-a.so.1", "libc.so.6"]);
        assert_eq!(deps.search, ["$ORIGIN/../lib", "/opt/strata/lib"]);
        assert_eq!(deps.interpreter, None);
        assert_eq!(deps.multiarch, Some("x86_64-linux-gnu"));
    }

    #[test]
    fn reads_interpreter_and_rpath_of_an_executable() {
        let deps = dependencies(&file_with(EXECUTABLE)).unwrap();
        assert_eq!(
            deps.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(deps.needed, ["libc.so.6"]);
        assert_eq!(deps.search, ["/opt/old"]);
    }

    /// Offset of the first program header of type `kind` in an ELF64 little-endian file.
    fn program_header(bytes: &[u8], kind: u32) -> usize {
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
        let phoff = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
        (0..u16_at(56))
            .map(|i| phoff + i * u16_at(54))
            .find(|&at| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) == kind)
            .unwrap()
    }

    #[test]
    fn crafted_sizes_are_not_read() {
        // A dynamic segment claiming 1 GiB (inside a 1 GiB file, a crafted file could make
        // every read that large): not read at all.
        let mut bytes = SHARED.to_vec();
        let at = program_header(&bytes, elf::PT_DYNAMIC.0);
        bytes[at + 32..at + 40].copy_from_slice(&(1u64 << 30).to_le_bytes()); // p_filesz
        let file = file_with(&bytes);
        file.set_len(1 << 30).unwrap();
        assert_eq!(dependencies(&file), None);
        // A second PT_DYNAMIC after the first is ignored, as the loader ignores it.
        let mut bytes = EXECUTABLE.to_vec();
        let note = program_header(&bytes, elf::PT_NOTE.0);
        assert!(note > program_header(&bytes, elf::PT_DYNAMIC.0));
        bytes[note..note + 4].copy_from_slice(&elf::PT_DYNAMIC.0.to_le_bytes());
        bytes[note + 32..note + 40].copy_from_slice(&(1u64 << 20).to_le_bytes());
        let deps = dependencies(&file_with(&bytes)).unwrap();
        assert_eq!(deps.needed, ["libc.so.6"]);
        assert!(deps.interpreter.is_some());
    }

    #[test]
    fn other_files_and_damaged_headers_give_nothing() {
        assert_eq!(dependencies(&file_with(b"#!/bin/sh\necho hi\n")), None);
        assert_eq!(dependencies(&file_with(&MAGIC)), None);
        // Cut off inside the program headers.
        assert_eq!(dependencies(&file_with(&SHARED[..100])), None);
        // Program headers pointing past the end of the file.
        let mut damaged = SHARED.to_vec();
        damaged[32..40].copy_from_slice(&u64::MAX.to_le_bytes()); // e_phoff
        assert_eq!(dependencies(&file_with(&damaged)), None);
    }
}
