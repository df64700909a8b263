//! Live updates (docs/format.md §8.6): a [`Switcher`] (taken before the session starts) swaps in a
//! new [`MountedRevision`] without unmounting. The inode table starts a new generation
//! (numbers of unchanged paths are kept, see [`super::inodes`]) and the kernel's caches of
//! every entry, inode and negative lookup of the old revision are invalidated through the
//! FUSE notify channel of every session (an inode invalidation with offset 0 also drops its
//! page cache, which holds a cached symlink target). Open files read the revision they
//! opened to the end: with handles, through their pinned cache file; in no-open mode,
//! through their inode, which a changed file does not share with its new version (see
//! [`super::inodes`]) and whose node is kept in the inode LRU or rebuilt from one of the
//! last [`RETIRED_REVISIONS`] revisions (a chunked file's chunk list also comes from the
//! node's revision while it is kept).
//!
//! Readers take the revision and its generation together ([`Shared::snapshot`]) and do a
//! lookup or listing again when a switch comes in between ([`StrataFs::in_one_revision`]).

use super::os_name;
use std::collections::HashSet;
use std::sync::Arc;

use fuser::INodeNo;

use super::inodes::{self, Node};
use super::{Shared, StrataFs, lock, root_and_totals};
use crate::client::repository::MountedRevision;
use crate::{Error, Result};

/// Earlier revisions kept after switches, so that a file opened in one of them still
/// reads its content in no-open mode once its node has left the inode LRU.
pub(super) const RETIRED_REVISIONS: usize = 4;

/// How often a lookup or listing is made again when a revision switch comes in between
/// (switches are minutes apart; this bounds the work, not a wait).
pub(super) const SWITCH_RETRIES: usize = 4;

/// Swaps the revision a running [`StrataFs`] serves (docs/format.md §8.6).
#[derive(Clone)]
pub struct Switcher {
    pub(super) shared: Arc<Shared>,
}

impl Switcher {
    /// The revision currently served.
    pub fn current(&self) -> Arc<MountedRevision> {
        self.shared.repo()
    }

    /// How many inode numbers were handed out (by this process and any it took over from).
    pub fn inode_count(&self) -> usize {
        self.shared.inodes.len()
    }

    /// Serves `repo` from now on and invalidates the kernel's caches of the previous
    /// revision through `notifier` (if given). Returns the number of inodes invalidated.
    ///
    /// # Errors
    /// Catalog errors reading the new root entry or statistics; [`Error::NotFound`] if the
    /// new root catalog has no root entry. The old revision stays in place on error.
    pub fn switch(
        &self,
        repo: Arc<MountedRevision>,
        notifiers: &[fuser::Notifier],
    ) -> Result<usize> {
        let (root, totals) = root_and_totals(&repo)?;
        // The revision and the generation change together, under the revision's write
        // lock: a reader's `Shared::snapshot` sees both old or both new. The old revision
        // is retired and its negative entries taken under that lock too, so that no reader
        // of the new one finds its generation without a retired revision (an old inode's
        // chunk list would come from the new revision) or records a negative entry of the
        // new revision into the old set (invalidated now, then forgotten at the next
        // switch). Lock order: revision → inode table (released) → retired, negatives.
        // The kernel is notified after all locks are released.
        let (old, negatives) = {
            let mut current = self
                .shared
                .repo
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let generation = self.shared.inodes.generation();
            // A successor must serve the revision of the generation it resumes: the new
            // one is journaled before its generation starts ([`super::journal`]).
            if let Some(journal) = self.shared.journal.get() {
                journal.append(&super::journal::Record::Revision {
                    generation: u32::try_from(generation + 1).unwrap_or(u32::MAX),
                    revision: *repo.revision(),
                    pinned: false,
                });
            }
            let previous = std::mem::replace(&mut *current, repo);
            let old = self.shared.inodes.new_generation(root);
            {
                let mut retired = lock(&self.shared.retired);
                retired.push_back((generation, previous));
                while retired.len() > RETIRED_REVISIONS {
                    retired.pop_front();
                }
            }
            let negatives = std::mem::take(&mut *lock(&self.shared.negatives));
            (old, negatives)
        };
        *lock(&self.shared.totals) = totals;
        lock(&self.shared.listings).clear();
        for notifier in notifiers {
            invalidate(notifier, &old, &negatives);
        }
        if let Some(journal) = self.shared.journal.get() {
            let generation = u32::try_from(self.shared.inodes.generation()).unwrap_or(u32::MAX);
            journal.append(&super::journal::Record::Invalidated(generation));
        }
        Ok(old.len())
    }

    /// Finishes a switch a predecessor died in before it had invalidated the kernel's
    /// caches ([`super::StrataFs::adopt`] keeps what its journal says): every inode not
    /// of the current generation and the previous generation's negative lookups are
    /// invalidated in both sessions. Returns how many inodes (0 if nothing was pending).
    pub fn finish_interrupted_switch(&self, notifiers: &[fuser::Notifier]) -> usize {
        let Some(negatives) = lock(&self.shared.unfinished_switch).take() else {
            return 0;
        };
        let old = self.shared.inodes.stale();
        for notifier in notifiers {
            invalidate(notifier, &old, &negatives);
        }
        if let Some(journal) = self.shared.journal.get() {
            let generation = u32::try_from(self.shared.inodes.generation()).unwrap_or(u32::MAX);
            journal.append(&super::journal::Record::Invalidated(generation));
        }
        old.len()
    }
}

/// Drops one session's kernel caches of the `old` inodes and of the `negatives`.
fn invalidate(
    notifier: &fuser::Notifier,
    old: &[inodes::StaleInode],
    negatives: &HashSet<(u64, String)>,
) {
    let quiet = |what: &str, r: std::io::Result<()>| {
        if let Err(e) = r {
            tracing::debug!(what, error = %e, "kernel cache invalidation");
        }
    };
    for stale in old {
        quiet("inode", notifier.inval_inode(INodeNo(stale.ino), 0, 0));
        if stale.parent != 0 {
            quiet(
                "entry",
                notifier.inval_entry(INodeNo(stale.parent), &os_name(&stale.name)),
            );
        }
    }
    for (parent, name) in negatives {
        quiet(
            "negative entry",
            notifier.inval_entry(INodeNo(*parent), &os_name(name)),
        );
    }
}

impl Shared {
    /// The current revision and its generation, read together (see [`Switcher::switch`]).
    /// What is read from the revision is interned with this generation, and re-read if a
    /// switch came in between ([`super::Inodes::intern_child_at`]).
    pub(super) fn snapshot(&self) -> (Arc<MountedRevision>, u64) {
        let current = self
            .repo
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (current.clone(), self.inodes.generation())
    }
}

impl StrataFs {
    /// The node of `ino` (path `path`) in the retired revision of its generation, if that
    /// revision is still kept and has the path.
    pub(super) fn retired_node(&self, ino: u64, path: &str) -> Option<Arc<Node>> {
        let generation = self.inodes().generation_of(ino)?;
        let repo = self.retired_repo(generation)?;
        let found = repo.lookup(path).ok()??;
        Some(Arc::new(Node {
            ino,
            path: path.to_owned(),
            catalog: found.catalog.mountpoint.clone(),
            entry: found.entry,
            generation,
        }))
    }

    /// The retired revision that was current in `generation`, if still kept.
    pub(super) fn retired_repo(&self, generation: u64) -> Option<Arc<MountedRevision>> {
        lock(&self.shared.retired)
            .iter()
            .find(|(g, _)| *g == generation)
            .map(|(_, r)| r.clone())
    }

    /// The revision `node` was found in: its retired revision when it belongs to an
    /// earlier generation and that revision is still kept, else the current one.
    pub(super) fn repo_of(&self, node: &Node) -> Arc<MountedRevision> {
        if !self.inodes().is_current(node)
            && let Some(repo) = self.retired_repo(node.generation)
        {
            return repo;
        }
        self.repo()
    }

    /// Runs `attempt` on the current revision and its generation until it answers
    /// (`Some`); `None` means a switch came in between and it is run again on the new
    /// revision, at most [`SWITCH_RETRIES`] times, then [`Error::Busy`] naming `what` of
    /// `path`.
    pub(super) fn in_one_revision<T>(
        &self,
        what: &str,
        path: &str,
        mut attempt: impl FnMut(&MountedRevision, u64) -> Result<Option<T>>,
    ) -> Result<T> {
        for _ in 0..SWITCH_RETRIES {
            let (repo, generation) = self.shared.snapshot();
            if let Some(answer) = attempt(&repo, generation)? {
                return Ok(answer);
            }
        }
        Err(Error::Busy(format!(
            "{path}: the repository switched revisions {SWITCH_RETRIES} times during one {what}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::ROOT_INODE;
    use catalog::Entry;
    use std::ffi::OsStr;
    use std::time::Duration;

    /// A one-catalog repository at `revision` holding the files `names` (`/<name>`), on a
    /// memory source; the directory keeps the cache.
    fn memory_repo(revision: u64, names: &[&str]) -> (Arc<MountedRevision>, tempfile::TempDir) {
        use crate::client::cache::{ObjectCache, tests::MemorySource};
        use crate::client::repository::Revision;
        use catalog::{CatalogProperties, CatalogWriter, Transition};
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(MemorySource::default());
        let props = CatalogProperties {
            revision,
            last_modified: 1_700_000_000,
            ttl: Some(240),
            previous_revision: None,
        };
        let db = tmp.path().join("root.db");
        let mut w = CatalogWriter::create(&db, "").unwrap();
        w.add("", &Entry::directory("", 0o755, 0, 0, 0), Transition::None)
            .unwrap();
        for name in names {
            let hash = src.add(name.as_bytes());
            let e = Entry::regular(name, 0o644, 0, 0, 0, name.len() as u64, hash);
            w.add(&format!("/{name}"), &e, Transition::None).unwrap();
        }
        w.finish(&props).unwrap();
        let raw = std::fs::read(&db).unwrap();
        let manifest =
            crate::client::repository::tests::manifest(src.add(&raw), raw.len() as u64, revision);
        let cache = Arc::new(ObjectCache::open(&tmp.path().join("cache"), src).unwrap());
        let repo =
            MountedRevision::open("t.example", Revision::of_manifest(&manifest), cache).unwrap();
        (Arc::new(repo), tmp)
    }

    /// Runs a switch of `fs` to `next` while the test holds `guard` (a lock the switch
    /// takes); true if `next` became visible to readers before the guard was released.
    fn visible_while_held<G>(fs: &StrataFs, next: &Arc<MountedRevision>, guard: G) -> bool {
        let switcher = fs.switcher();
        let to = next.clone();
        let switch = std::thread::spawn(move || switcher.switch(to, &[]).unwrap());
        let deadline = std::time::Instant::now() + Duration::from_millis(300);
        let mut visible = false;
        while std::time::Instant::now() < deadline && !visible {
            visible = fs
                .shared
                .repo
                .try_read()
                .is_ok_and(|current| Arc::ptr_eq(&current, next));
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(guard);
        switch.join().unwrap();
        visible
    }

    #[test]
    fn a_new_revision_is_visible_only_once_the_old_one_is_retired() {
        let (one, _t1) = memory_repo(1, &["a"]);
        let (two, _t2) = memory_repo(2, &["b"]);
        let fs = StrataFs::new(one.clone()).unwrap();
        // Otherwise an old-revision inode read in between (no-open mode) finds no retired
        // revision of its generation and takes its chunk list from the new one.
        let retired = lock(&fs.shared.retired);
        assert!(!visible_while_held(&fs, &two, retired));
        let retired = lock(&fs.shared.retired);
        assert_eq!(retired.len(), 1);
        assert_eq!(retired[0].0, 0);
        assert!(Arc::ptr_eq(&retired[0].1, &one));
    }

    #[test]
    fn a_negative_lookup_of_the_new_revision_is_kept_for_the_next_switch() {
        let (one, _t1) = memory_repo(1, &["a"]);
        let (two, _t2) = memory_repo(2, &["b"]);
        let fs = StrataFs::new(one).unwrap();
        let root = fs.node(INodeNo(ROOT_INODE)).unwrap();
        assert!(
            fs.lookup_child(&root, OsStr::new("gone"))
                .unwrap()
                .is_none()
        );
        // A negative answered from the new revision before the switch has taken the set
        // of the old one would be invalidated by this switch and then forgotten: the
        // kernel would keep it past the next switch.
        let negatives = lock(&fs.shared.negatives);
        assert!(
            !visible_while_held(&fs, &two, negatives),
            "revision 2 was served before the negatives of revision 1 were taken"
        );
        let root = fs.node(INodeNo(ROOT_INODE)).unwrap();
        assert!(
            fs.lookup_child(&root, OsStr::new("later"))
                .unwrap()
                .is_none()
        );
        let negatives = lock(&fs.shared.negatives);
        assert!(negatives.contains(&(ROOT_INODE, "later".to_string())));
        assert!(!negatives.contains(&(ROOT_INODE, "gone".to_string())));
    }
}
