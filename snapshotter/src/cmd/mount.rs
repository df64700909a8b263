//! `strata-snapshotter mount`: mount one repository read-only through FUSE, in the
//! foreground, until it is unmounted or the process gets SIGINT/SIGTERM (then it unmounts).
//!
//! Boot order (docs/format.md §8.2): keys → tokio runtime and HTTP [`Fetcher`] → local
//! [`ObjectCache`] → [`MountedRevision::boot`] (breadcrumb, manifest, certificate, whitelist
//! verification, the choice between the server's and the cached revision, root catalog) →
//! FUSE session. Verification failures refuse the mount with an error naming the failed
//! check. When the server is unreachable and the breadcrumb's root catalog is cached, the
//! mount serves that revision (offline mode, logged at `warn`) and checks the server again
//! after the short-term TTL. Nothing is printed on stdout; logs go to stderr.
//!
//! Live updates (docs/format.md §8.6): an updater thread re-checks the manifest every effective TTL
//! (the root catalog's TTL, capped by `max_ttl`), refusing a manifest whose `T` is older
//! than the breadcrumb's or the mounted root catalog's `last_modified`. A strictly newer
//! revision is verified in full, opened, swapped in through [`Switcher`] without
//! unmounting, and recorded in the breadcrumb; a failed check keeps serving the current
//! revision and retries after half the short-term TTL ([`SHORT_TTL`], capped by the
//! effective TTL). A pinned mount (`--tag`, `--root-hash`) has no updater.
//!
//! Crashes and upgrades ([`crate::keeper`], [`crate::fuse::handover`]): after mounting,
//! the process hands its `/dev/fuse` descriptors and its handover journal to the
//! descriptor store behind `$NOTIFY_SOCKET` (systemd, or the keeper of `--keeper`). A
//! process started with such descriptors does not mount: it reads the journal, opens the
//! journaled revision from the cache (no network), rebuilds the inode table, takes the
//! connections over and asks the kernel to resend what its predecessor left unanswered.
//! SIGHUP re-executes the binary in place with the same descriptors (an upgrade).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use crate::client::breadcrumb::Breadcrumb;
use crate::client::cache::ObjectCache;
use crate::client::fetch::Fetcher;
pub use crate::client::mount_config::MountArgs;
use crate::client::mount_config::MountConfig;
use crate::client::readahead::ReadAhead;
use crate::client::repository::{Booted, MountedRevision, Origin, Revision, Trust};
use crate::client::startup::StartupPrefetch;
use crate::fuse::handover;
use crate::fuse::journal::Journal;
use crate::fuse::trace::AccessTrace;
use crate::fuse::{PageFill, StrataFs, Switcher};
use crate::keeper;
use crate::{Error, Result};

/// Runs the command: boots the repository, mounts it and serves until unmounted.
///
/// # Errors
/// [`Error::Config`] for unreadable keys; download, verification and catalog errors during
/// boot; [`Error::Io`] if the FUSE mount fails.
pub fn main(args: MountArgs) -> Result<()> {
    // SIGTERM/SIGINT/SIGHUP wait until their handlers are installed (below), in every
    // thread started before then (`keeper::control_signals`).
    keeper::block_control_signals();
    // Before any other thread: descriptors a predecessor left (see `crate::keeper`).
    // SAFETY: no other thread runs yet (logging starts none).
    #[allow(unsafe_code)]
    let inherited = unsafe { keeper::inherited() }?;
    limit_malloc_arenas();
    let args: MountConfig = args.resolve()?;
    if args.keeper && !keeper::is_worker() {
        return keeper::run();
    }
    // The binary to re-execute on SIGHUP: its path now, before an upgrade replaces it.
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        context: "finding this executable".into(),
        source,
    })?;
    let master_keys = read_keys(&args.public_keys)?;
    crate::client::quota::limit_sqlite_memory(SQLITE_MEMORY)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("strata-net")
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            context: "starting the tokio runtime".into(),
            source,
        })?;
    tracing::info!(
        fqrn = %args.fqrn,
        servers = %args.servers.join(";"),
        proxies = %args.proxies,
        "configuration"
    );
    let fetcher = Arc::new(Fetcher::new(
        args.servers.clone(),
        args.proxies.clone(),
        args.network.clone(),
        runtime.handle().clone(),
    )?);
    let cache = Arc::new(ObjectCache::open_with_quota(
        &args.cache_dir,
        fetcher.clone(),
        args.quota_bytes,
    )?);
    let trust = Trust {
        fqrn: args.fqrn.clone(),
        master_keys,
        accept_expired_whitelist: args.accept_expired_whitelist,
    };
    let adopted = match (inherited.fuse, inherited.journal) {
        (Some(fuse), Some(journal)) => Some(Adopted::read(fuse, inherited.plain, journal)?),
        (None, None) => None,
        _ => {
            return Err(Error::Config(
                "inherited a FUSE connection without its handover journal (or the reverse); \
                 cannot take it over"
                    .into(),
            ));
        }
    };
    let (repo, origin, mut fs, journal) = match &adopted {
        None => {
            let Booted { repo, origin } =
                MountedRevision::boot(&fetcher, cache.clone(), &trust, args.pin.as_ref())?;
            let repo = Arc::new(repo);
            let fs = StrataFs::new(repo.clone())?;
            let journal = Arc::new(Journal::create()?);
            fs.journal_to(journal.clone(), origin == Origin::Pinned);
            (repo, origin, fs, journal)
        }
        Some(adopted) => {
            let repo = Arc::new(MountedRevision::open(
                &args.fqrn,
                adopted.revision,
                cache.clone(),
            )?);
            let origin = if adopted.pinned {
                Origin::Pinned
            } else {
                Origin::Server
            };
            // Open files of earlier generations read their own revisions (from the cache).
            let retired = adopted
                .summary
                .retired
                .iter()
                .filter_map(|(generation, revision)| {
                    match MountedRevision::open(&args.fqrn, *revision, cache.clone()) {
                        Ok(repo) => Some((u64::from(*generation), Arc::new(repo))),
                        Err(e) => {
                            tracing::warn!(revision = revision.revision, error = %e, "cannot reopen a retired revision; its open files read the current one");
                            None
                        }
                    }
                })
                .collect();
            let fs = StrataFs::adopt(
                repo.clone(),
                retired,
                &adopted.records,
                &adopted.summary,
                adopted.journal.clone(),
            )?;
            (repo, origin, fs, adopted.journal.clone())
        }
    };
    fs.allow_passthrough(args.passthrough);
    let read_ahead =
        Arc::new(
            ReadAhead::start(args.read_ahead.clone()).map_err(|source| Error::Io {
                context: "starting the read-ahead threads".into(),
                source,
            })?,
        );
    fs.set_read_ahead(read_ahead);
    fs.set_startup_prefetch(Arc::new(
        StartupPrefetch::start(args.prefetch.clone()).map_err(|source| Error::Io {
            context: "starting the prefetch threads".into(),
            source,
        })?,
    ));
    if let Some(path) = &args.trace {
        fs.set_trace(Arc::new(AccessTrace::create(path)?));
        tracing::info!(trace = %path.display(), "recording first reads");
    }
    let switcher = fs.switcher();
    let twin = args.plain_mountpoint.as_ref().map(|_| fs.plain_twin());
    let kernel_init = fs.kernel_init();

    // Signal handlers before the mount appears: a SIGTERM right after it must unmount, not
    // kill the process and leave a dead mount behind.
    let signals = {
        let _runtime = runtime.enter();
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(int), Ok(term), Ok(hup)) => Some((int, term, hup)),
            _ => {
                tracing::error!("cannot install signal handlers; unmount with umount(8)");
                None
            }
        }
    };
    // Handlers in place: this thread (and those started from now on, the FUSE ones) take
    // the control signals again; one that arrived meanwhile is handled now.
    keeper::unblock_control_signals();
    // A panic in a FUSE thread would end the session and unmount; where a store can start
    // a successor, ending the process hands the connections over instead.
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            std::process::abort();
        }));
    }

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("strata:{}", args.fqrn)),
        MountOption::Subtype("strata".into()),
        MountOption::RO,
        MountOption::DefaultPermissions,
    ];
    config.acl = SessionACL::All; // allow_other: containers run as any uid
    config.n_threads = Some(usize::from(args.threads));
    // No cloned descriptors: requests a cloned descriptor had read end with ECONNABORTED
    // when its process dies, where on the one shared descriptor they wait for a successor
    // (`fuse::handover`). Measured on 2026-12-06 (debug build, 2 cores, 20 000 files of
    // 2–4 KB read cold by 4 parallel `cat`s, no read-ahead): 4.0 s without cloned
    // descriptors against 11.0 s with them; the warm re-read 3.4 s against 2.9 s.
    config.clone_fd = false;

    let main_fill = fs.page_fill();
    let (mut session, main_fd) = match &adopted {
        None => {
            detach_stale_mount(&args.mountpoint);
            refuse_live_fuse_mount(&args.mountpoint)?;
            let session =
                fuser::Session::new(fs, &args.mountpoint, &config).map_err(|source| Error::Io {
                    context: format!("mounting {}", args.mountpoint.display()),
                    source,
                })?;
            let fd = session
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| Error::Io {
                    context: "keeping the FUSE descriptor".into(),
                    source,
                })?;
            (session, fd)
        }
        Some(adopted) => {
            let fd = adopted.fuse.try_clone().map_err(|source| Error::Io {
                context: "keeping the FUSE descriptor".into(),
                source,
            })?;
            let session = resume(fs, &fd, kernel_init.as_ref(), &config, &args.mountpoint)?;
            (session, fd)
        }
    };
    let revision = repo.revision().revision;
    let root = repo.revision().root_hash;
    let mountpoint = args.mountpoint.display();
    match &origin {
        _ if adopted.is_some() => tracing::info!(
            fqrn = %args.fqrn,
            revision,
            %root,
            %mountpoint,
            inodes = switcher.inode_count(),
            "took over the FUSE connection of the previous mount process (same revision, same inode numbers)"
        ),
        Origin::Server => {
            tracing::info!(fqrn = %args.fqrn, revision, %root, %mountpoint, "mounted");
        }
        Origin::Cached { server_revision } => tracing::info!(
            fqrn = %args.fqrn,
            revision,
            server_revision,
            %root,
            %mountpoint,
            "mounted the cached revision (the server publishes no newer one)"
        ),
        Origin::Offline { reason } => tracing::warn!(
            fqrn = %args.fqrn,
            revision,
            %root,
            %mountpoint,
            reason = %reason,
            "mounted in OFFLINE MODE from the cache; the server is checked again after the \
             short-term TTL"
        ),
        Origin::Pinned => tracing::info!(
            fqrn = %args.fqrn,
            revision,
            %root,
            %mountpoint,
            "mounted a pinned revision; live updates are off"
        ),
    }
    connect_page_fill(&main_fill, &args.mountpoint);
    let mut notifiers = vec![session.notifier()];
    let main_unmounter = match adopted {
        None => Unmounter::Session(session.unmount_callable()),
        Some(_) => Unmounter::Detach,
    };
    let mut unmounters = vec![(main_unmounter, args.mountpoint.clone())];
    let plain = match (twin, &args.plain_mountpoint) {
        (Some(twin), Some(dir)) => {
            let inherited = adopted.as_ref().and_then(|a| a.plain.as_ref());
            let mut plain = PlainSession::start(twin, dir, &config, inherited, kernel_init)?;
            notifiers.push(plain.notifier.clone());
            if let Some(unmounter) = plain.signal_unmounter.take() {
                unmounters.push((unmounter, dir.clone()));
            }
            tracing::info!(plain_mountpoint = %dir.display(), "also mounted without extended attributes");
            Some(plain)
        }
        _ => None,
    };
    // What a successor needs: handed to the store after a fresh mount (a successor's
    // store has them already), and passed on by an upgrade in place.
    let mut kept: Vec<(&'static str, OwnedFd)> = vec![(keeper::FUSE_MAIN, main_fd)];
    if let Some(plain) = &plain {
        kept.push((
            keeper::FUSE_PLAIN,
            plain.fd.try_clone().map_err(|source| Error::Io {
                context: "keeping the plain mount's FUSE descriptor".into(),
                source,
            })?,
        ));
    }
    kept.push((
        keeper::JOURNAL,
        journal
            .fd()
            .try_clone_to_owned()
            .map_err(|source| Error::Io {
                context: "keeping the handover journal".into(),
                source,
            })?,
    ));
    if adopted.is_none() {
        let borrowed: Vec<(&str, BorrowedFd<'_>)> =
            kept.iter().map(|(n, fd)| (*n, fd.as_fd())).collect();
        keeper::store(&borrowed);
    } else {
        // Requests the predecessor had read but not answered: the kernel sends them again,
        // now that every session reads (`fuse::handover`).
        for (name, fd) in kept.iter().filter(|(n, _)| *n != keeper::JOURNAL) {
            match handover::resend_in_flight(fd.as_fd()) {
                Ok(true) => tracing::debug!(name, "asked the kernel to resend requests in flight"),
                Ok(false) => tracing::warn!(
                    name,
                    "this kernel cannot resend requests in flight (FUSE_NOTIFY_RESEND, Linux >= 6.9): reads that were waiting on the previous process stay blocked"
                ),
                Err(e) => {
                    tracing::warn!(name, error = %e, "asking the kernel to resend requests in flight failed")
                }
            }
        }
    }
    // A switch the predecessor died in is finished once this process serves: the
    // invalidation waits for pages that resent READs hold, which only this process's
    // workers answer.
    let unfinished = adopted
        .is_some()
        .then(|| (switcher.clone(), notifiers.clone()));
    if let Some(signals) = signals {
        runtime.spawn(on_signal(signals, unmounters, exe, kept, cache.clone()));
    }
    // Both mounts are live: a Type=notify unit now lets containerd and the snapshotter start.
    crate::cmd::readiness::notify_ready("mount");

    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let update_thread = if origin == Origin::Pinned {
        if let Some((switcher, notifiers)) = unfinished {
            std::thread::Builder::new()
                .name("strata-finish-switch".into())
                .spawn(move || finish_interrupted_switch(&switcher, &notifiers))
                .map_err(|source| Error::Io {
                    context: "starting the thread that finishes an interrupted switch".into(),
                    source,
                })?;
        }
        None
    } else {
        let updater = Updater {
            fetcher,
            cache,
            trust,
            switcher,
            notifiers,
            max_ttl: args.max_ttl,
            offline: matches!(origin, Origin::Offline { .. }),
        };
        let thread = std::thread::Builder::new()
            .name("strata-update".into())
            .spawn(move || {
                // Before any switch of this process's own.
                if let Some((switcher, notifiers)) = unfinished {
                    finish_interrupted_switch(&switcher, &notifiers);
                }
                updater.run(&stopped);
            })
            .map_err(|source| Error::Io {
                context: "starting the update thread".into(),
                source,
            })?;
        Some(thread)
    };

    let served = session.run().map_err(|source| Error::Io {
        context: format!("serving {}", args.mountpoint.display()),
        source,
    });
    drop(stop);
    if let Some(thread) = update_thread {
        let _ = thread.join();
    }
    // The main mount is gone: the plain one goes with it.
    if let Some(plain) = plain {
        plain.unmount_and_join();
    }
    served?;
    tracing::info!(mountpoint = %args.mountpoint.display(), "unmounted");
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Finishes the kernel cache invalidation of a revision switch the predecessor died in
/// ([`Switcher::finish_interrupted_switch`]); on a thread of its own or the update
/// thread's, while the sessions serve.
fn finish_interrupted_switch(switcher: &Switcher, notifiers: &[fuser::Notifier]) {
    let invalidated = switcher.finish_interrupted_switch(notifiers);
    if invalidated > 0 {
        tracing::warn!(
            invalidated,
            "the previous mount process died during a revision switch; finished invalidating the kernel's caches"
        );
    }
}

/// What a predecessor left: its connections, its journal and what the journal says.
struct Adopted {
    fuse: OwnedFd,
    plain: Option<OwnedFd>,
    journal: Arc<Journal>,
    records: Vec<crate::fuse::journal::Record>,
    /// What the records say; its revision is `revision`.
    summary: crate::fuse::journal::Summary,
    revision: Revision,
    pinned: bool,
}

impl Adopted {
    /// Reads the journal.
    ///
    /// # Errors
    /// The journal's errors; [`Error::Config`] if it names no revision (the predecessor
    /// died before it mounted anything).
    fn read(fuse: OwnedFd, plain: Option<OwnedFd>, journal: OwnedFd) -> Result<Adopted> {
        let (journal, records) = Journal::adopt(journal)?;
        let summary = crate::fuse::journal::summarize(&records);
        let (revision, pinned) = summary.revision.ok_or_else(|| {
            Error::Config("the handover journal names no revision; cannot take over".into())
        })?;
        Ok(Adopted {
            fuse,
            plain,
            journal: Arc::new(journal),
            records,
            summary,
            revision,
            pinned,
        })
    }
}

/// Starts a session's page-cache fill ([`crate::fuse::PageFill`]) for its mount point; a
/// mount whose fill thread cannot start works without it (logged).
fn connect_page_fill(fill: &PageFill, mountpoint: &Path) {
    if let Err(e) = fill.connect(mountpoint) {
        tracing::warn!(error = %e, "chunked programs are read without filling the page cache");
    }
}

/// A session of `fs` serving the inherited connection `fd` of `mountpoint`: taken over
/// with the kernel's journaled `FUSE_INIT` offer, or, if the predecessor died before it
/// read that `INIT`, served from the start (the kernel resends the `INIT`).
fn resume(
    fs: StrataFs,
    fd: &OwnedFd,
    kernel_init: Option<&handover::KernelInit>,
    config: &Config,
    mountpoint: &Path,
) -> Result<fuser::Session<StrataFs>> {
    let io = |source| Error::Io {
        context: format!(
            "taking over the FUSE connection of {}",
            mountpoint.display()
        ),
        source,
    };
    let config = config.clone();
    match kernel_init {
        Some(init) => handover::take_over(fs, fd, init, SessionACL::All, config).map_err(io),
        None => {
            let fd = fd.try_clone().map_err(io)?;
            fuser::Session::from_fd(fs, fd, SessionACL::All, config).map_err(io)
        }
    }
}

/// How a session is unmounted at a signal.
enum Unmounter {
    /// fuser's (a session that mounted).
    Session(fuser::SessionUnmounter),
    /// A lazy `umount2` (a session that took a connection over: fuser did not mount it).
    Detach,
}

impl Unmounter {
    fn unmount(&mut self, mountpoint: &Path) -> std::io::Result<()> {
        match self {
            Unmounter::Session(u) => u.unmount(),
            // EINVAL: not a mount point any more (the signal handler detached it already).
            Unmounter::Detach => {
                match nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH) {
                    Ok(()) | Err(nix::errno::Errno::EINVAL) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

/// Makes glibc's malloc use one arena and a fixed mmap threshold.
///
/// With the default arenas (8 per core) every FUSE worker thread gets its own arena, and
/// memory freed after a walk of a large directory tree stays spread over them: measured on
/// a 300 000-entry walk, peak RSS 65 MB with the default and 54 MB with one arena.
///
/// Each fuser worker thread allocates a zeroed 16 MiB request buffer of which a request
/// touches only the first pages. glibc raises its mmap threshold after the first large
/// free, after which such buffers come from the heap and `calloc` zeroes (touches) all of
/// them: with a plain mount's second session, 14 MB → 31 MB RSS at start. A fixed threshold
/// keeps them in untouched mmap'd pages.
#[allow(unsafe_code)] // mallopt has no safe wrapper
fn limit_malloc_arenas() {
    // SAFETY: mallopt only tunes the allocator; it is called before this process starts
    // any other thread (the tokio runtime and the FUSE workers come later).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Soft cap of SQLite's memory in the mount process (all catalogs and the cache index).
pub const SQLITE_MEMORY: u64 = 8 << 20;

/// The short-term TTL used after a failed check (docs/format.md §8.6: 180 s).
pub const SHORT_TTL: Duration = Duration::from_secs(180);

/// The TTL of `repo` capped by `max_ttl`, at least one second.
pub fn effective_ttl(repo_ttl: Duration, max_ttl: Option<Duration>) -> Duration {
    max_ttl
        .map_or(repo_ttl, |m| repo_ttl.min(m))
        .max(Duration::from_secs(1))
}

/// How long to wait after a failed check: half of the smaller of the effective TTL and
/// [`SHORT_TTL`], at least one second.
pub fn retry_after_failure(ttl: Duration) -> Duration {
    (ttl.min(SHORT_TTL) / 2).max(Duration::from_secs(1))
}

/// How long an offline mount waits before checking the server again: the short-term TTL,
/// or the effective TTL if that is shorter (docs/format.md §8.2 step 4, §8.6), at least one second.
pub fn offline_retry(ttl: Duration) -> Duration {
    ttl.min(SHORT_TTL).max(Duration::from_secs(1))
}

/// The live-update loop of one mount (docs/format.md §8.6).
struct Updater {
    fetcher: Arc<Fetcher>,
    cache: Arc<ObjectCache>,
    trust: Trust,
    switcher: Switcher,
    /// One per session (the main mount and the plain one).
    notifiers: Vec<fuser::Notifier>,
    max_ttl: Option<Duration>,
    /// Serving the cache because the server's manifest was unavailable (docs/format.md §8.2 step 4).
    offline: bool,
}

impl Updater {
    /// Checks after every TTL until `stop` is dropped.
    fn run(mut self, stop: &std::sync::mpsc::Receiver<()>) {
        let ttl = effective_ttl(self.switcher.current().ttl(), self.max_ttl);
        let mut wait = if self.offline {
            offline_retry(ttl)
        } else {
            ttl
        };
        loop {
            match stop.recv_timeout(wait) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let current = self.switcher.current();
            match self.check(&current) {
                Ok(()) => {
                    if self.offline {
                        self.offline = false;
                        tracing::info!(
                            revision = self.switcher.current().revision().revision,
                            "the server answers again; leaving offline mode"
                        );
                    }
                    wait = effective_ttl(self.switcher.current().ttl(), self.max_ttl);
                }
                Err(e) => {
                    let ttl = effective_ttl(current.ttl(), self.max_ttl);
                    wait = if self.offline {
                        offline_retry(ttl)
                    } else {
                        retry_after_failure(ttl)
                    };
                    tracing::warn!(
                        revision = current.revision().revision,
                        offline = self.offline,
                        retry_in = ?wait,
                        error = %e,
                        "revision check failed; still serving the current revision"
                    );
                }
            }
        }
    }

    /// One check: switch if the server publishes a strictly newer, verified revision whose
    /// `T` is not older than the breadcrumb's or the mounted root catalog's (docs/format.md §8.6).
    fn check(&self, current: &MountedRevision) -> Result<()> {
        let mounted = current.revision().revision;
        let published = MountedRevision::published_revision(&self.fetcher, &self.trust)?;
        if published <= mounted {
            tracing::debug!(mounted, published, "no newer revision");
            return Ok(());
        }
        let fqrn = &self.trust.fqrn;
        let minimum = Breadcrumb::read(self.cache.root(), fqrn)
            .map_or(0, |b| b.timestamp)
            .max(current.minimum_timestamp());
        let manifest =
            MountedRevision::verified_manifest(&self.fetcher, &self.cache, &self.trust, minimum)?;
        if manifest.revision <= mounted {
            return Ok(());
        }
        let next = Revision::of_manifest(&manifest);
        let revision = next.revision;
        let repo = Arc::new(MountedRevision::open(fqrn, next, self.cache.clone())?);
        let invalidated = self.switcher.switch(repo, &self.notifiers)?;
        if let Err(e) = next.breadcrumb().write(self.cache.root(), fqrn) {
            tracing::warn!(error = %e, "cannot write the breadcrumb");
        }
        tracing::info!(
            from = mounted,
            to = revision,
            invalidated,
            "switched to a new revision"
        );
        Ok(())
    }
}

/// Waits for signals: SIGHUP re-executes this binary in place, passing `kept` on (a
/// planned upgrade, `keeper::reexec`); SIGINT or SIGTERM unmounts. If the mount is busy it
/// is detached (`MNT_DETACH`) and the process serves it until nothing uses it any more.
async fn on_signal(
    (mut int, mut term, mut hup): (
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
    ),
    unmounters: Vec<(Unmounter, PathBuf)>,
    exe: PathBuf,
    kept: Vec<(&'static str, OwnedFd)>,
    cache: Arc<ObjectCache>,
) {
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                tracing::info!(exe = %exe.display(), "SIGHUP: upgrading in place (re-executing with the FUSE connections)");
                let borrowed: Vec<(&str, BorrowedFd<'_>)> =
                    kept.iter().map(|(n, fd)| (*n, fd.as_fd())).collect();
                // The successor starts from the index on disk: what waits goes there first.
                let index = cache.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || index.index().flush()).await {
                    tracing::warn!(error = %e, "cache index: the last writes were lost");
                }
                let error = keeper::reexec(&exe, &borrowed);
                tracing::error!(exe = %exe.display(), error = %error, "cannot re-execute; still serving");
            }
        }
    }
    // The plain mount (if any) first: the process ends with the main session.
    for (mut unmounter, mountpoint) in unmounters.into_iter().rev() {
        tracing::info!(mountpoint = %mountpoint.display(), "signal received, unmounting");
        if let Err(e) = unmounter.unmount(&mountpoint) {
            tracing::warn!(error = %e, "unmount failed; detaching lazily");
            if let Err(e) = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH) {
                tracing::error!(error = %e, "lazy unmount failed");
            }
            continue;
        }
        // The kernel detaches lazily: it keeps the file system, and this process keeps
        // answering, while anything still uses it (open files, overlay mounts of running
        // containers). Say so, or the process looks like it ignored the signal.
        tracing::info!(
            mountpoint = %mountpoint.display(),
            "detached; exiting once nothing uses the file system any more (open files, running containers)"
        );
    }
}

/// The second FUSE session of `--plain-mountpoint` (extended attributes off; see the
/// `fuse` module docs), served on its own threads.
struct PlainSession {
    notifier: fuser::Notifier,
    /// For the signal handler (taken once).
    signal_unmounter: Option<Unmounter>,
    /// For the end of the main session.
    exit_unmounter: Unmounter,
    /// The connection (for a successor).
    fd: OwnedFd,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
    mountpoint: PathBuf,
}

impl PlainSession {
    /// Mounts `twin` at `dir` (created if missing) with `config` and serves it; or, with
    /// `inherited`, takes that connection of `dir` over (see [`resume`]).
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be created, is a live FUSE mount already, or
    /// the mount, the takeover or the serving thread fails to start.
    fn start(
        twin: StrataFs,
        dir: &Path,
        config: &Config,
        inherited: Option<&OwnedFd>,
        kernel_init: Option<handover::KernelInit>,
    ) -> Result<PlainSession> {
        let keep = |fd: BorrowedFd<'_>| {
            fd.try_clone_to_owned().map_err(|source| Error::Io {
                context: "keeping the plain mount's FUSE descriptor".into(),
                source,
            })
        };
        let fill = twin.page_fill();
        let (session, fd, signal_unmounter, exit_unmounter) = match inherited {
            Some(fd) => {
                let session = resume(twin, fd, kernel_init.as_ref(), config, dir)?;
                (
                    session,
                    keep(fd.as_fd())?,
                    Unmounter::Detach,
                    Unmounter::Detach,
                )
            }
            None => {
                // A dead mount first: `create_dir_all` fails on it (EEXIST, then ENOTCONN).
                detach_stale_mount(dir);
                std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                    context: format!("creating the plain mount point {}", dir.display()),
                    source,
                })?;
                refuse_live_fuse_mount(dir)?;
                let mut session =
                    fuser::Session::new(twin, dir, config).map_err(|source| Error::Io {
                        context: format!("mounting {}", dir.display()),
                        source,
                    })?;
                let fd = keep(session.as_fd())?;
                let signal = Unmounter::Session(session.unmount_callable());
                let exit = Unmounter::Session(session.unmount_callable());
                (session, fd, signal, exit)
            }
        };
        let notifier = session.notifier();
        connect_page_fill(&fill, dir);
        let signal_unmounter = Some(signal_unmounter);
        let mountpoint = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("strata-plain".into())
            .spawn(move || session.run())
            .map_err(|source| Error::Io {
                context: "starting the plain mount's thread".into(),
                source,
            })?;
        Ok(PlainSession {
            notifier,
            signal_unmounter,
            exit_unmounter,
            fd,
            thread,
            mountpoint,
        })
    }

    /// Unmounts (if still mounted; lazily, as fuser does) and waits for the session's
    /// end, logging how it ended.
    fn unmount_and_join(mut self) {
        if let Err(e) = self.exit_unmounter.unmount(&self.mountpoint) {
            tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmount failed; detaching lazily");
            if let Err(e) = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
            {
                tracing::error!(error = %e, "lazy unmount failed");
            }
        }
        match self.thread.join() {
            Ok(Ok(())) => {
                tracing::info!(mountpoint = %self.mountpoint.display(), "unmounted");
            }
            Ok(Err(e)) => {
                tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "plain mount ended with an error");
            }
            Err(_) => tracing::error!("the plain mount's thread panicked"),
        }
    }
}

/// Detaches (`MNT_DETACH`) a dead FUSE mount left at `mountpoint` by a mount process that
/// was killed (SIGKILL, OOM): every access to it fails with `ENOTCONN`, so mounting over it
/// would fail with "Transport endpoint is not connected" and a supervisor restarting this
/// process would loop on that error. A live mount point, or any other error, is left alone.
fn detach_stale_mount(mountpoint: &Path) {
    // `stat` may still be answered from the kernel's attribute cache of the dead mount's
    // root, and so may opening it once the dead session ran in no-open mode (the kernel
    // then opens directories without asking); `statfs` is never cached by FUSE and always
    // reaches the (missing) daemon.
    let dead =
        |r: std::io::Result<()>| r.is_err_and(|e| e.raw_os_error() == Some(nix::libc::ENOTCONN));
    let statfs = nix::sys::statfs::statfs(mountpoint)
        .map(drop)
        .map_err(std::io::Error::from);
    if !dead(statfs) && !dead(std::fs::metadata(mountpoint).map(drop)) {
        return;
    }
    tracing::warn!(
        mountpoint = %mountpoint.display(),
        "stale FUSE mount (its process is gone); detaching it"
    );
    if let Err(e) = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "detaching the stale mount failed");
    }
}

/// Fails if a live FUSE file system is mounted exactly at `mountpoint` (a second `mount`
/// of the same repository would stack on the first, as stock `cvmfs2` refuses to).
///
/// # Errors
/// [`Error::Io`] (`AlreadyExists`) naming the mount point.
fn refuse_live_fuse_mount(mountpoint: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(here) = std::fs::metadata(mountpoint) else {
        return Ok(()); // mounting reports a missing mount point
    };
    let parent = mountpoint.join("..");
    let is_mount_point = std::fs::metadata(&parent).is_ok_and(|p| p.dev() != here.dev());
    let is_fuse = nix::sys::statfs::statfs(mountpoint)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC);
    if is_mount_point && is_fuse {
        return Err(Error::Io {
            context: format!("mounting {}", mountpoint.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a FUSE file system is already mounted there (another strata-snapshotter mount?); unmount it first",
            ),
        });
    }
    Ok(())
}

/// Reads master public keys (PEM, SPKI or PKCS#1 as stock CVMFS writes them, docs/format.md §7.3).
fn read_keys(paths: &[PathBuf]) -> Result<Vec<catalog::RsaPublicKey>> {
    paths
        .iter()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| read_key(p))
        .collect()
}

fn read_key(path: &Path) -> Result<catalog::RsaPublicKey> {
    let pem = std::fs::read_to_string(path).map_err(|source| Error::Io {
        context: format!("reading public key {}", path.display()),
        source,
    })?;
    catalog::keys::public_key_from_pem(&pem)
        .map_err(|e| Error::Config(format!("public key {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_or_missing_mount_point_is_not_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(refuse_live_fuse_mount(dir.path()).is_ok());
        assert!(refuse_live_fuse_mount(&dir.path().join("missing")).is_ok());
    }

    #[test]
    fn ttl_is_capped_and_failures_retry_sooner() {
        let s = Duration::from_secs;
        assert_eq!(effective_ttl(s(240), None), s(240));
        assert_eq!(effective_ttl(s(240), Some(s(5))), s(5));
        assert_eq!(effective_ttl(s(0), None), s(1));
        assert_eq!(retry_after_failure(s(240)), s(90));
        assert_eq!(retry_after_failure(s(10)), s(5));
        assert_eq!(retry_after_failure(s(1)), s(1));
        assert_eq!(offline_retry(s(240)), SHORT_TTL);
        assert_eq!(offline_retry(s(2)), s(2));
        assert_eq!(offline_retry(s(0)), s(1));
    }

    #[test]
    fn unreadable_key_names_the_file() {
        let err = read_keys(&[PathBuf::from("/nonexistent/key.pub")]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/key.pub"));
    }
}
