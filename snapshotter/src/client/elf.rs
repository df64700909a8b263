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
use object::read::{ReadCache, ReadRef, StringTable};
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

fn parse<'data, Elf, R>(data: R) -> Option<Dependencies>
where
    Elf: FileHeader<Endian = Endianness>,
    R: ReadRef<'data>,
{
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let segments = header.program_headers(endian, data).ok()?;
    let mut out = Dependencies {
        multiarch: multiarch(header.e_machine(endian), header.is_class_64(), endian),
        ..Dependencies::default()
    };
    let mut dynamic = None;
    for segment in segments {
        if let Ok(Some(interp)) = segment.interpreter(endian, data) {
            out.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
        }
        if let Ok(Some(entries)) = segment.dynamic(endian, data) {
            dynamic = Some(entries);
        }
    }
    let entries = dynamic?;
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
    let strings = StringTable::new(data, offset, offset.checked_add(size)?);
    let string = |val: u64| -> Option<String> {
        let bytes = strings.get(u32::try_from(val).ok()?).ok()?;
        Some(String::from_utf8_lossy(bytes).into_owned())
    };
    let (mut runpath, mut rpath) = (Vec::new(), Vec::new());
    for entry in entries {
        let tag = entry.tag(endian);
        if tag == elf::DT_NULL {
            break;
        }
        let val = entry.val(endian);
        if tag == elf::DT_NEEDED {
            out.needed.extend(string(val));
        } else if tag == elf::DT_RUNPATH {
            runpath.extend(string(val));
        } else if tag == elf::DT_RPATH {
            rpath.extend(string(val));
        }
    }
    let search = if runpath.is_empty() { rpath } else { runpath };
    out.search = search
        .iter()
        .flat_map(|s| s.split(':'))
        .filter(|s| !s.is_empty())
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
