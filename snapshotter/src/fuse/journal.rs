//! The handover journal: what a successor needs to resume serving a FUSE connection
//! ([`super::handover`]) with the meaning the kernel already gave it, appended to an
//! anonymous memory file (`memfd`) that outlives the process the same way the `/dev/fuse`
//! descriptor does (kept by the keeper or systemd's file-descriptor store).
//!
//! * the kernel's `FUSE_INIT` offer ([`KernelInit`]), replayed to the successor's session;
//! * the revision of each generation (the successor serves the very revision the kernel's
//!   cached entries came from, then updates as usual);
//! * every inode number handed out, with its parent, name, fingerprint and generation, and
//!   the hard-link groups and extra names (`fuse::inodes`): a number the kernel knows
//!   keeps its meaning;
//! * the process epoch: file handles and unique fingerprints of one process never collide
//!   with a predecessor's.
//!
//! Each record is appended with one `pwrite` **before** the reply that reveals it to the
//! kernel, so a process killed at any instant leaves a journal that covers every number the
//! kernel holds. Nothing is synced: the journal has to outlive the process, not the node.
//! Records: a tag byte, a little-endian `u32` payload length, the payload. The first record
//! names the format ([`FORMAT`]); a successor refuses a journal of another format rather
//! than misread it (an upgrade that changes the format must say so, and cannot hand over).

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use catalog::ContentHash;

use super::handover::KernelInit;
use crate::client::repository::Revision;
use crate::{Error, Result};

const INIT: u8 = 1;
const REVISION: u8 = 2;
const INODE: u8 = 3;
const TOUCH: u8 = 4;
const HARDLINK: u8 = 5;
const LINK_NAME: u8 = 6;
const GENERATION: u8 = 7;
const EPOCH: u8 = 8;
const BACKING: u8 = 9;
const BACKING_CLOSED: u8 = 10;
const NEGATIVE: u8 = 11;
const INVALIDATED: u8 = 12;
const MAGIC: u8 = 0x53; // 'S'

/// The journal format this build writes and reads.
pub const FORMAT: &[u8] = b"strata-handover-1";

/// One inode record as journaled (the compact record of `fuse::inodes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InodeRecord {
    /// The number; records come in allocation order (2, 3, …; 1 is the root).
    pub ino: u64,
    /// The parent's number (0 for the root).
    pub parent: u64,
    /// The entry's fingerprint.
    pub fingerprint: u64,
    /// The generation it was last seen in.
    pub generation: u32,
    /// Its name in the parent.
    pub name: String,
}

/// One record, in journal order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The kernel's `FUSE_INIT` offer.
    Init(KernelInit),
    /// The revision served in a generation (written when the generation starts).
    Revision {
        /// The generation.
        generation: u32,
        /// The revision.
        revision: Revision,
        /// Whether the mount is pinned (no live updates).
        pinned: bool,
    },
    /// A new inode number.
    Inode(InodeRecord),
    /// An existing number seen again, unchanged, in `generation`.
    Touch {
        /// The number.
        ino: u64,
        /// The generation.
        generation: u32,
    },
    /// A hard-link group's number.
    HardLink {
        /// Mountpoint of the catalog that holds the group.
        catalog: String,
        /// The group.
        group: u32,
        /// The number.
        ino: u64,
    },
    /// Another name of a hard-link group, seen in the current generation.
    LinkName {
        /// The directory.
        parent: u64,
        /// The name.
        name: String,
        /// The group's number.
        ino: u64,
    },
    /// A new generation started (a revision switch).
    Generation(u32),
    /// A process started serving (0 for the first).
    Epoch(u32),
    /// A FUSE passthrough backing id registered on a connection (journaled before any
    /// open uses it).
    Backing {
        /// The session: 0 the main mount, 1 the plain one.
        session: u8,
        /// The inode it backs.
        ino: u64,
        /// The kernel's backing id.
        id: u32,
    },
    /// That id is about to be closed (journaled before it is, so a successor never uses
    /// an id the kernel may give to another file).
    BackingClosed {
        /// The session.
        session: u8,
        /// The inode.
        ino: u64,
    },
    /// A negative lookup answered in `generation` (the kernel caches it; the next switch
    /// must invalidate it).
    Negative {
        /// The generation.
        generation: u32,
        /// The directory.
        parent: u64,
        /// The name not found.
        name: String,
    },
    /// The kernel caches of the generations before `generation` were invalidated (the end
    /// of a switch).
    Invalidated(u32),
}

/// The journal of one mount (its main and plain connections share it).
pub struct Journal {
    file: File,
    /// Where the next record goes.
    end: Mutex<u64>,
}

impl Journal {
    /// A new, empty journal in a memory file.
    ///
    /// # Errors
    /// [`Error::Io`] if the memory file cannot be created.
    pub fn create() -> Result<Journal> {
        let fd = nix::sys::memfd::memfd_create(
            c"strata-handover",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(|e| io_error("creating the handover journal (memfd)", e.into()))?;
        let journal = Journal {
            file: File::from(fd),
            end: Mutex::new(0),
        };
        let mut first = vec![MAGIC];
        first.extend_from_slice(&u32::try_from(FORMAT.len()).unwrap_or(0).to_le_bytes());
        first.extend_from_slice(FORMAT);
        journal
            .file
            .write_all_at(&first, 0)
            .map_err(|e| io_error("writing the handover journal", e))?;
        *journal
            .end
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = first.len() as u64;
        Ok(journal)
    }

    /// The journal a predecessor wrote to `fd`, with its records; appends go after them.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read; [`Error::Config`] if it is not a journal (a
    /// truncated last record is dropped: the process died while writing it, before any
    /// reply could reveal it).
    pub fn adopt(fd: OwnedFd) -> Result<(Journal, Vec<Record>)> {
        let file = File::from(fd);
        let len = file
            .metadata()
            .map_err(|e| io_error("reading the handover journal", e))?
            .len();
        let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
        file.read_exact_at(&mut bytes, 0)
            .map_err(|e| io_error("reading the handover journal", e))?;
        let (records, used) = decode(&bytes)?;
        Ok((
            Journal {
                file,
                end: Mutex::new(used as u64),
            },
            records,
        ))
    }

    /// The memory file, to hand to a keeper or systemd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Appends `record`. A failure is logged: the mount keeps serving, only a successor
    /// would lose the numbers.
    pub fn append(&self, record: &Record) {
        let bytes = encode(record);
        let mut end = self
            .end
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.file.write_all_at(&bytes, *end) {
            Ok(()) => *end += bytes.len() as u64,
            Err(e) => tracing::error!(error = %e, "cannot append to the handover journal"),
        }
    }
}

fn io_error(context: &str, source: std::io::Error) -> Error {
    Error::Io {
        context: context.into(),
        source,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// One record's bytes.
pub fn encode(record: &Record) -> Vec<u8> {
    let mut p = Vec::with_capacity(48);
    let tag = match record {
        Record::Init(k) => {
            p.extend_from_slice(&k.capabilities.to_le_bytes());
            p.extend_from_slice(&k.abi_minor.to_le_bytes());
            p.extend_from_slice(&k.max_readahead.to_le_bytes());
            INIT
        }
        Record::Revision {
            generation,
            revision,
            pinned,
        } => {
            p.extend_from_slice(&generation.to_le_bytes());
            p.extend_from_slice(&revision.revision.to_le_bytes());
            p.extend_from_slice(&revision.timestamp.to_le_bytes());
            p.extend_from_slice(&revision.ttl.to_le_bytes());
            p.push(u8::from(*pinned));
            put_str(&mut p, &revision.root_hash.to_hex());
            REVISION
        }
        Record::Inode(r) => {
            p.extend_from_slice(&r.ino.to_le_bytes());
            p.extend_from_slice(&r.parent.to_le_bytes());
            p.extend_from_slice(&r.fingerprint.to_le_bytes());
            p.extend_from_slice(&r.generation.to_le_bytes());
            put_str(&mut p, &r.name);
            INODE
        }
        Record::Touch { ino, generation } => {
            p.extend_from_slice(&ino.to_le_bytes());
            p.extend_from_slice(&generation.to_le_bytes());
            TOUCH
        }
        Record::HardLink {
            catalog,
            group,
            ino,
        } => {
            p.extend_from_slice(&ino.to_le_bytes());
            p.extend_from_slice(&group.to_le_bytes());
            put_str(&mut p, catalog);
            HARDLINK
        }
        Record::LinkName { parent, name, ino } => {
            p.extend_from_slice(&ino.to_le_bytes());
            p.extend_from_slice(&parent.to_le_bytes());
            put_str(&mut p, name);
            LINK_NAME
        }
        Record::Generation(g) => {
            p.extend_from_slice(&g.to_le_bytes());
            GENERATION
        }
        Record::Epoch(e) => {
            p.extend_from_slice(&e.to_le_bytes());
            EPOCH
        }
        Record::Backing { session, ino, id } => {
            p.push(*session);
            p.extend_from_slice(&ino.to_le_bytes());
            p.extend_from_slice(&id.to_le_bytes());
            BACKING
        }
        Record::BackingClosed { session, ino } => {
            p.push(*session);
            p.extend_from_slice(&ino.to_le_bytes());
            BACKING_CLOSED
        }
        Record::Negative {
            generation,
            parent,
            name,
        } => {
            p.extend_from_slice(&generation.to_le_bytes());
            p.extend_from_slice(&parent.to_le_bytes());
            put_str(&mut p, name);
            NEGATIVE
        }
        Record::Invalidated(g) => {
            p.extend_from_slice(&g.to_le_bytes());
            INVALIDATED
        }
    };
    let mut out = Vec::with_capacity(5 + p.len());
    out.push(tag);
    out.extend_from_slice(&u32::try_from(p.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&p);
    out
}

/// A cursor over one record's payload.
struct Payload<'a>(&'a [u8]);

impl Payload<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }
    fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

/// The records in `bytes` and how many bytes they take (a truncated last record is left
/// out).
///
/// # Errors
/// [`Error::Config`] naming the offset of a record that is not one.
pub fn decode(bytes: &[u8]) -> Result<(Vec<Record>, usize)> {
    let mut records = Vec::new();
    let header = 5 + FORMAT.len();
    if bytes.len() < header || bytes[0] != MAGIC || &bytes[5..header] != FORMAT {
        let shown = String::from_utf8_lossy(bytes.get(5..header.min(bytes.len())).unwrap_or(&[]))
            .into_owned();
        return Err(Error::Config(format!(
            "the handover journal is not of format {} (it starts with {shown:?}): written by another version of strata-snapshotter?",
            String::from_utf8_lossy(FORMAT)
        )));
    }
    let mut at = header;
    while bytes.len() >= at + 5 {
        let tag = bytes[at];
        let len = u32::from_le_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]])
            as usize;
        let Some(payload) = bytes.get(at + 5..at + 5 + len) else {
            break; // the writer died mid-record
        };
        let record = parse(tag, Payload(payload)).ok_or_else(|| {
            Error::Config(format!(
                "the handover journal has a bad record (tag {tag}) at byte {at}"
            ))
        })?;
        records.push(record);
        at += 5 + len;
    }
    Ok((records, at))
}

fn parse(tag: u8, mut p: Payload<'_>) -> Option<Record> {
    Some(match tag {
        INIT => Record::Init(KernelInit {
            capabilities: p.u64()?,
            abi_minor: p.u32()?,
            max_readahead: p.u32()?,
        }),
        REVISION => {
            let generation = p.u32()?;
            let revision = p.u64()?;
            let timestamp = p.u64()?;
            let ttl = p.u64()?;
            let pinned = p.u8()? != 0;
            let root_hash = ContentHash::parse_hex(&p.string()?).ok()?;
            Record::Revision {
                generation,
                revision: Revision {
                    root_hash,
                    revision,
                    timestamp,
                    ttl,
                },
                pinned,
            }
        }
        INODE => Record::Inode(InodeRecord {
            ino: p.u64()?,
            parent: p.u64()?,
            fingerprint: p.u64()?,
            generation: p.u32()?,
            name: p.string()?,
        }),
        TOUCH => Record::Touch {
            ino: p.u64()?,
            generation: p.u32()?,
        },
        HARDLINK => {
            let ino = p.u64()?;
            let group = p.u32()?;
            Record::HardLink {
                catalog: p.string()?,
                group,
                ino,
            }
        }
        LINK_NAME => {
            let ino = p.u64()?;
            let parent = p.u64()?;
            Record::LinkName {
                parent,
                name: p.string()?,
                ino,
            }
        }
        GENERATION => Record::Generation(p.u32()?),
        EPOCH => Record::Epoch(p.u32()?),
        BACKING => Record::Backing {
            session: p.u8()?,
            ino: p.u64()?,
            id: p.u32()?,
        },
        BACKING_CLOSED => Record::BackingClosed {
            session: p.u8()?,
            ino: p.u64()?,
        },
        NEGATIVE => Record::Negative {
            generation: p.u32()?,
            parent: p.u64()?,
            name: p.string()?,
        },
        INVALIDATED => Record::Invalidated(p.u32()?),
        _ => return None,
    })
}

/// What a successor learns from a predecessor's journal, besides the inode records
/// ([`super::Inodes::replay`] reads those).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The kernel's `FUSE_INIT` offer, if the predecessor got as far as `INIT`.
    pub kernel_init: Option<KernelInit>,
    /// The current generation.
    pub generation: u32,
    /// The revision of the current generation (the latest one journaled for it or an
    /// earlier one) and whether it is pinned.
    pub revision: Option<(Revision, bool)>,
    /// The last process epoch.
    pub epoch: u32,
    /// The revisions of the last few earlier generations, oldest first (open files of
    /// those generations still read them: [`super::Switcher`]).
    pub retired: Vec<(u32, Revision)>,
    /// Passthrough backing ids still registered: `(session, inode) → id`.
    pub backing: std::collections::BTreeMap<(u8, u64), u32>,
    /// Negative lookups answered in the current generation.
    pub negatives: Vec<(u64, String)>,
    /// The last switch died before it had invalidated the kernel's caches of the previous
    /// generation: those negative lookups, to invalidate with every stale inode.
    pub unfinished_switch: Option<Vec<(u64, String)>>,
}

/// Reads the non-inode facts of `records`.
pub fn summarize(records: &[Record]) -> Summary {
    let mut summary = Summary::default();
    let mut revisions: Vec<(u32, Revision, bool)> = Vec::new();
    let mut negatives: Vec<(u32, u64, String)> = Vec::new();
    let mut invalidated = 0u32;
    for record in records {
        match record {
            Record::Init(k) => summary.kernel_init = Some(*k),
            Record::Revision {
                generation,
                revision,
                pinned,
            } => revisions.push((*generation, *revision, *pinned)),
            Record::Generation(g) => summary.generation = *g,
            Record::Epoch(e) => summary.epoch = summary.epoch.max(*e),
            Record::Backing { session, ino, id } => {
                summary.backing.insert((*session, *ino), *id);
            }
            Record::BackingClosed { session, ino } => {
                summary.backing.remove(&(*session, *ino));
            }
            Record::Negative {
                generation,
                parent,
                name,
            } => negatives.push((*generation, *parent, name.clone())),
            Record::Invalidated(g) => invalidated = invalidated.max(*g),
            _ => {}
        }
    }
    let current = summary.generation;
    let of = |g: u32| -> Vec<(u64, String)> {
        negatives
            .iter()
            .filter(|(n, _, _)| *n == g)
            .map(|(_, p, name)| (*p, name.clone()))
            .collect()
    };
    summary.negatives = of(current);
    if current > 0 && invalidated < current {
        summary.unfinished_switch = Some(of(current - 1));
    }
    // A switch journals the new revision before its generation starts: one written for a
    // generation that never started does not count.
    summary.revision = revisions
        .iter()
        .rev()
        .find(|(g, _, _)| *g <= summary.generation)
        .map(|(_, r, p)| (*r, *p));
    for (g, r, _) in revisions.iter().filter(|(g, _, _)| *g < current) {
        match summary.retired.last_mut() {
            Some((last, revision)) if last == g => *revision = *r,
            _ => summary.retired.push((*g, *r)),
        }
    }
    let keep = summary.retired.len().min(super::switch::RETIRED_REVISIONS);
    summary.retired.drain(..summary.retired.len() - keep);
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::HashAlgorithm;

    fn revision(n: u64) -> Revision {
        Revision {
            root_hash: ContentHash::of_bytes(HashAlgorithm::Sha1, &n.to_le_bytes()),
            revision: n,
            timestamp: 1_700_000_000 + n,
            ttl: 240,
        }
    }

    fn sample() -> Vec<Record> {
        vec![
            Record::Epoch(0),
            Record::Revision {
                generation: 0,
                revision: revision(7),
                pinned: false,
            },
            Record::Init(KernelInit {
                capabilities: 0x5fd_33ff_fffb,
                abi_minor: 45,
                max_readahead: 131_072,
            }),
            Record::Inode(InodeRecord {
                ino: 2,
                parent: 1,
                fingerprint: 0xdead_beef,
                generation: 0,
                name: "usr".into(),
            }),
            Record::Touch {
                ino: 2,
                generation: 1,
            },
            Record::HardLink {
                catalog: "/a".into(),
                group: 3,
                ino: 9,
            },
            Record::LinkName {
                parent: 2,
                name: "other".into(),
                ino: 9,
            },
            Record::Revision {
                generation: 1,
                revision: revision(8),
                pinned: false,
            },
            Record::Generation(1),
            Record::Revision {
                generation: 2,
                revision: revision(9),
                pinned: false,
            },
            Record::Backing {
                session: 1,
                ino: 9,
                id: 3,
            },
            Record::Backing {
                session: 0,
                ino: 2,
                id: 1,
            },
            Record::BackingClosed { session: 0, ino: 2 },
            Record::Negative {
                generation: 0,
                parent: 2,
                name: "gone".into(),
            },
            Record::Negative {
                generation: 1,
                parent: 1,
                name: "missing".into(),
            },
            Record::Epoch(1),
        ]
    }

    fn header() -> Vec<u8> {
        let mut h = vec![MAGIC];
        h.extend_from_slice(&(FORMAT.len() as u32).to_le_bytes());
        h.extend_from_slice(FORMAT);
        h
    }

    #[test]
    fn a_journal_of_another_format_is_refused() {
        let mut bytes = header();
        bytes[6] ^= 1;
        let err = decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("not of format strata-handover-1"), "{err}");
        assert!(decode(b"").is_err());
    }

    #[test]
    fn records_round_trip_and_a_torn_last_record_is_dropped() {
        let records = sample();
        let mut bytes = header();
        bytes.extend(records.iter().flat_map(encode));
        let (decoded, used) = decode(&bytes).unwrap();
        assert_eq!(decoded, records);
        assert_eq!(used, bytes.len());
        let torn = &bytes[..bytes.len() - 2];
        let (decoded, used) = decode(torn).unwrap();
        assert_eq!(decoded, records[..records.len() - 1]);
        assert!(used < torn.len());
    }

    #[test]
    fn an_unknown_record_names_its_offset() {
        let mut bytes = header();
        bytes.extend(encode(&Record::Epoch(0)));
        let at = bytes.len();
        bytes.extend_from_slice(&[99, 0, 0, 0, 0]);
        let err = decode(&bytes).unwrap_err().to_string();
        assert!(err.contains(&format!("byte {at}")), "{err}");
    }

    #[test]
    fn the_summary_serves_the_started_generations_revision() {
        let s = summarize(&sample());
        assert_eq!(s.generation, 1);
        assert_eq!(s.epoch, 1);
        assert_eq!(s.revision, Some((revision(8), false)));
        assert_eq!(s.retired, vec![(0, revision(7))]);
        assert_eq!(
            s.backing.into_iter().collect::<Vec<_>>(),
            vec![((1, 9), 3)],
            "a closed backing id is not inherited"
        );
        assert_eq!(s.negatives, vec![(1, "missing".to_string())]);
        assert_eq!(
            s.unfinished_switch,
            Some(vec![(2, "gone".to_string())]),
            "no Invalidated(1): the switch to 1 did not finish"
        );
        let mut finished = sample();
        finished.push(Record::Invalidated(1));
        assert_eq!(summarize(&finished).unfinished_switch, None);
        assert_eq!(s.kernel_init.map(|k| k.abi_minor), Some(45));
    }

    #[test]
    fn a_memfd_journal_is_adopted_with_its_records_and_appends_after_them() {
        let journal = Journal::create().unwrap();
        for r in sample() {
            journal.append(&r);
        }
        let fd = journal.fd().try_clone_to_owned().unwrap();
        let (adopted, records) = Journal::adopt(fd).unwrap();
        assert_eq!(records, sample());
        adopted.append(&Record::Epoch(2));
        let (_, records) = Journal::adopt(journal.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(records.last(), Some(&Record::Epoch(2)));
        assert_eq!(records.len(), sample().len() + 1);
    }
}
