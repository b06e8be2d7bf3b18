//! Dumping a process tree into a CRIU image directory.
//!
//! The stages, in order (`dump` below reads like this list):
//! 1. Check the target and the image directory, and every open file of the tree, while
//!    nothing has been touched yet: refusals leave the tree exactly as it was.
//! 2. Freeze the tree (ptrace seize + interrupt, optionally the cgroup freezer first).
//! 3. Per process (`process.rs`): ids, open files, memory map and page list, registers
//!    and the state that needs an injected syscall; per thread: registers, xsave,
//!    signals, creds.
//! 4. Copy the pages of every process into its pages file (all cores, bounded memory).
//! 5. Write the remaining images (pstree, inventory, files, stats).
//! 6. Let the tree go: kill it (default), leave it running, or leave it stopped.
//!
//! Every change made to a task is owned by a guard (`FrozenTree`, `Injector`), so an
//! error at any stage resumes the tree untouched; so does a signal the front-end turns
//! into `DumpOptions::interrupt`. A dumper that dies outright (SIGKILL, the OOM killer)
//! runs no guard: the kernel lets the tree go and it runs on as it was. A thread whose
//! state is being read by injected syscalls returns into its own context by itself
//! (`Injector::make_self_restoring`), except for the two calls that map and unmap that
//! code, under `PTRACE_O_EXITKILL` (`freeze::KillIfTracerDies`: it dies with the dumper;
//! so does a thread under seccomp, for all its injected calls); memory released in stage
//! 4 is put back by a watchdog (release.rs); TCP connections in repair mode are taken
//! out of it, and the network lock lifted, by a watchdog too (files/tcp.rs); and once
//! the images are complete a tree that is killed after the dump dies with the dumper
//! (`commit_to_kill`).

pub mod aio;
pub mod guards;
pub mod ids;
pub mod mm;
pub mod ns;
pub mod predump;
mod process;
pub mod protect;
pub mod release;
pub mod seccomp;
pub mod snapshot;
pub mod sysvshm;
pub mod task;
pub mod track;
pub mod userns;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criu_images::{pb, ImageKind, ImageWriter};

use crate::affinity::Affinity;
use crate::cgroup::CgroupFreezer;
use crate::files::{FileError, FileTable, TreeChecks};
use crate::freeze::{FreezeError, FrozenProcess, FrozenTree};
use crate::interrupt::{Interrupt, Interrupted};
use crate::netlock::LockMethod;
use crate::notify::{Event, Notifier, NotifyError};
use crate::proc::ProcDir;
use crate::sys::{self, Pid};
use crate::timens::Clocks;

/// What `dump` should do; the fields mirror CRIU's `dump` options.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// `-t`: root of the tree.
    pub pid: Pid,
    /// `-D`: where images go.
    pub images_dir: PathBuf,
    /// `-W`: where stats-dump goes (the images dir when unset).
    pub work_dir: Option<PathBuf>,
    /// `-R`: leave the tree running after the dump.
    pub leave_running: bool,
    /// `-s`: leave the tree stopped after the dump.
    pub leave_stopped: bool,
    /// `-j`: the tree is a shell job (its terminal is inherited).
    pub shell_job: bool,
    /// CRIU's `orphan_pts_master` (runc sets it): a pty slave whose master is outside
    /// the tree (a container's console, held by its monitor) is saved; the restore makes
    /// a new pty for it and hands its master to the caller.
    pub orphan_pts_master: bool,
    /// `--file-locks`: record the flock, POSIX and OFD locks the tree holds (refused
    /// otherwise, as CRIU does).
    pub file_locks: bool,
    /// `--ghost-limit`: the most data (allocated bytes) a deleted regular file may hold
    /// to be saved in a ghost image.
    pub ghost_limit: u64,
    /// `--link-remap`: a deleted name of a file with other names is saved by giving the
    /// file a name of its own next to the old one (refused otherwise, as CRIU does).
    pub link_remap: bool,
    /// `--freeze-cgroup`: freeze this cgroup (v1 freezer or v2) before seizing the tree.
    pub freeze_cgroup: Option<PathBuf>,
    /// How long any single task may take to stop.
    pub freeze_timeout: Duration,
    /// Page-copy worker threads (0: one per core).
    pub workers: usize,
    /// Namespaces of the tree's own that the caller recreates on restore (`net`, `mnt`),
    /// as CRIU's `--external net[...]`: accepted, and their contents not saved. (A pid
    /// namespace whose init is the root needs no flag: the tree is saved with the pids
    /// it has inside it.)
    pub external_namespaces: Vec<String>,
    /// `--external mnt[MOUNTPOINT]:KEY`, as CRIU's: the mount at MOUNTPOINT of the
    /// tree's own mount namespace is saved as external, by KEY (the restore binds the
    /// path it maps KEY to there). (mount point, key) pairs.
    pub ext_mounts: Vec<(String, String)>,
    /// `--ext-unix-sk[=INODE,...]` and `--external unix[INODE]`, as CRIU's: which unix
    /// sockets connected to a socket outside the tree are saved (the peer by its name,
    /// to be connected to again on restore) instead of refused.
    pub ext_unix_sk: crate::files::ExternalUnix,
    /// `--tcp-established`: TCP connections are dumped in TCP repair mode, under the
    /// network lock (refused without it, or `tcp_close`).
    pub tcp_established: bool,
    /// `--tcp-close`: TCP connections are recorded without repair and come back closed.
    pub tcp_close: bool,
    /// `--skip-in-flight`: connections a listener has not accepted yet are left
    /// behind (refused without it).
    pub skip_in_flight: bool,
    /// `--network-lock`: how TCP connections are locked while dumped.
    pub network_lock: LockMethod,
    /// This dump's id (`inventory.img`'s `dump_criu_run_id`), which names the network
    /// lock the restore lifts (CRIU's `criu_run_id`: a UUID).
    pub run_id: String,
    /// `--manage-cgroups`: the tree's cgroups go into `cgroup.img` (None: no cgroup is
    /// recorded; the tree takes the restorer's).
    pub cgroups: Option<crate::cgroups::CgroupOptions>,
    /// `--prev-images-dir`: the images of the previous (pre-)dump, relative to the
    /// images dir as in CRIU; linked as `parent`.
    pub prev_images_dir: Option<PathBuf>,
    /// `--track-mem`: pages not written since the pre-dump in `prev_images_dir` are
    /// saved as references to it (`track.rs`).
    pub track_mem: bool,
    /// With `leave_running`: copy private anonymous memory after the tree runs again,
    /// from a copy-on-write image of each process made at the freeze (`snapshot.rs`);
    /// otherwise all of it is copied while the tree is frozen.
    pub live_snapshot: bool,
    /// How a live snapshot saves each process's private anonymous memory: from a
    /// copy-on-write child (`snapshot.rs`) or write-protected (`protect.rs`).
    pub snapshot_method: protect::SnapshotMethod,
    /// Whether a tree killed after the dump gives its memory back while it is saved
    /// (`release.rs`).
    pub release_memory: release::ReleaseMemory,
    /// `--compress`: pages files are compressed once the tree is let go, in criu-rs's
    /// own form (`criu_images::zpages`), which CRIU cannot read.
    pub compress: bool,
    /// Test hook: fail right after this stage, to prove failures leave the tree intact.
    pub fail_after: Option<Stage>,
    /// Test hook: wait right after this stage until the dump is interrupted (or for 30
    /// s), so that a test can stop or kill the dumper at a known moment.
    pub pause_after: Option<Stage>,
    /// Raised by the front-end to stop the dump (a signal): it then fails with
    /// `DumpError::Interrupted` and leaves the tree as it was.
    pub interrupt: Interrupt,
    /// Told at CRIU's script points (pre-dump, network-lock, post-dump,
    /// network-unlock); a refusal fails the dump, which resumes the tree.
    pub notify: Notifier,
    /// Counts the bytes of pages to copy and copied, for a front-end that shows them.
    pub progress: crate::Progress,
}

impl DumpOptions {
    pub fn new(pid: Pid, images_dir: impl Into<PathBuf>) -> Self {
        DumpOptions {
            pid,
            images_dir: images_dir.into(),
            work_dir: None,
            leave_running: false,
            leave_stopped: false,
            shell_job: false,
            orphan_pts_master: false,
            file_locks: false,
            ghost_limit: crate::files::DEFAULT_GHOST_LIMIT,
            link_remap: false,
            freeze_cgroup: None,
            freeze_timeout: Duration::from_secs(10),
            workers: 0,
            external_namespaces: Vec::new(),
            ext_mounts: Vec::new(),
            ext_unix_sk: Default::default(),
            tcp_established: false,
            tcp_close: false,
            skip_in_flight: false,
            network_lock: LockMethod::default(),
            run_id: run_id(),
            cgroups: None,
            prev_images_dir: None,
            track_mem: false,
            live_snapshot: true,
            snapshot_method: protect::SnapshotMethod::Auto,
            release_memory: release::ReleaseMemory::Auto,
            compress: false,
            fail_after: None,
            pause_after: None,
            interrupt: Interrupt::new(),
            notify: Notifier::default(),
            progress: crate::Progress::new(),
        }
    }
}

/// Stages of a dump, for errors and the failure-injection hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Check,
    Freeze,
    Files,
    Memory,
    /// Inside the tasks stage: the first thread's injected calls are set up and none
    /// has run (a point for the test hooks only).
    Injected,
    Tasks,
    Pages,
    Images,
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("image directory {path}: {source}")]
    ImagesDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    #[error(transparent)]
    Files(#[from] FileError),
    #[error(transparent)]
    Namespace(#[from] ns::NsError),
    #[error(transparent)]
    Mounts(#[from] crate::mounts::dump::MountDumpError),
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(transparent)]
    SysvShm(#[from] sysvshm::ShmError),
    #[error(transparent)]
    Cgroups(#[from] crate::cgroups::CgroupsError),
    #[error("process {pid}: {what}: {source}")]
    Task {
        pid: Pid,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("process {pid}: cannot dump {what}")]
    Unsupported { pid: Pid, what: String },
    /// A write-protected live snapshot whose process let go of memory before it was
    /// copied (`protect.rs`); the tree runs on.
    #[error("process {pid}: live snapshot failed: {what}")]
    SnapshotChanged { pid: Pid, what: String },
    #[error(transparent)]
    Image(#[from] criu_images::Error),
    #[error("dump stopped after stage {0:?} by the failure-injection hook")]
    Injected(Stage),
    #[error("{0}; the tree was left as it was")]
    Interrupted(#[from] Interrupted),
    #[error("{0}; the tree was left as it was")]
    Notify(#[from] NotifyError),
    #[error("{0}")]
    Options(String),
}

/// CRIU's dump statistics (stats-dump), times in microseconds.
#[derive(Debug, Clone, Default)]
pub struct DumpStats {
    pub freezing_time: u32,
    pub frozen_time: u32,
    pub memdump_time: u32,
    pub memwrite_time: u32,
    pub pages_scanned: u64,
    pub pages_written: u64,
    /// Pages saved as references to the parent images (incremental dumps).
    pub pages_skipped_parent: u64,
    pub shpages_written: u64,
    /// Pages of a live snapshot copied after the tree ran again (counted in
    /// `pages_written` too).
    pub pages_written_live: u64,
    pub processes: usize,
    pub threads: usize,
}

fn task_err(pid: Pid, what: &'static str) -> impl FnOnce(std::io::Error) -> DumpError {
    // An interruption travels through io::Error from the page copy: it stays one.
    move |source| match Interrupted::from_io(&source) {
        Some(interrupted) => DumpError::Interrupted(interrupted),
        None => DumpError::Task { pid, what, source },
    }
}

/// Marks the end of a stage: logs it, and fails here if the test hook asks for it.
fn hook(opts: &DumpOptions, stage: Stage) -> Result<(), DumpError> {
    tracing::debug!(?stage, "stage done");
    if opts.pause_after == Some(stage) {
        tracing::warn!(?stage, "pausing on request of the test hook");
        let until = Instant::now() + Duration::from_secs(30);
        while opts.interrupt.signal().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    opts.interrupt.check()?;
    if opts.fail_after == Some(stage) {
        tracing::warn!(?stage, "failing on request of the test hook");
        return Err(DumpError::Injected(stage));
    }
    Ok(())
}

/// Everything collected about one process before its images are written.
struct ProcessDump {
    frozen: FrozenProcess,
    ids: pb::TaskKobjIdsEntry,
    cores: Vec<pb::CoreEntry>,
    mm: Option<pb::MmEntry>,
    page_runs: Vec<mm::PageRun>,
    /// VMAs whose pages its snapshot child holds, scanned there after the thaw (not in
    /// `page_runs`; see `LiveCopy`).
    held: Vec<mm::Vma>,
    /// Start and end of each VMA the pages were scanned in.
    vma_bounds: Vec<(u64, u64)>,
    /// An executable address for injected calls (0 for a zombie).
    gadget: u64,
    fs: Option<pb::FsEntry>,
    fdinfo: Option<Vec<pb::FdinfoEntry>>,
}

/// Walks the tree from /proc without touching it, for the pre-freeze checks.
fn walk_tree(root: Pid) -> Vec<Pid> {
    let mut out = vec![];
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        if out.contains(&pid) {
            continue;
        }
        out.push(pid);
        if let Ok(dir) = ProcDir::open(pid) {
            queue.extend(dir.children().unwrap_or_default());
        }
    }
    out
}

fn check_images_dir(dir: &Path) -> Result<(), DumpError> {
    let err = |source| DumpError::ImagesDir {
        path: dir.to_owned(),
        source,
    };
    let meta = std::fs::metadata(dir).map_err(err)?;
    if !meta.is_dir() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    let probe = dir.join(".criu-rs-write-test");
    std::fs::write(&probe, b"").map_err(err)?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Dumps the tree rooted at `opts.pid` into `opts.images_dir`.
pub fn dump(opts: &DumpOptions) -> Result<DumpStats, DumpError> {
    if opts.compress && opts.prev_images_dir.is_some() {
        return Err(DumpError::Options(
            "--compress: incremental dumps (--prev-images-dir) are not compressed yet".into(),
        ));
    }
    let method = opts.snapshot_method;
    let stats = match on_tracer_thread(|| dump_as_tracer(opts, method)) {
        // The tree ran on; a dump whose snapshot children hold the memory cannot be
        // undone by what the program does meanwhile.
        Err(DumpError::SnapshotChanged { pid, what })
            if method == protect::SnapshotMethod::Auto =>
        {
            tracing::warn!(%pid, "write-protected live snapshot failed ({what}): dumping again with copy-on-write children");
            on_tracer_thread(|| dump_as_tracer(opts, protect::SnapshotMethod::Fork))
        }
        result => result,
    }?;
    if opts.compress {
        compress_pages_files(&opts.images_dir, workers(opts));
    }
    Ok(stats)
}

/// `--compress`: each pages file of `dir` replaced by its compressed form
/// (`criu_images::zpages`), once the tree is let go (no frozen time). Best effort: the
/// dump is complete already, so a pages file that cannot be compressed (no room) stays
/// as it is, with a warning.
fn compress_pages_files(dir: &Path, workers: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let ids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("pages-")?
                .strip_suffix(".img")?
                .parse()
                .ok()
        })
        .collect();
    for id in ids {
        let raw_path = dir.join(format!("pages-{id}.img"));
        let packed_path = dir.join(criu_images::zpages::file_name(id));
        let started = Instant::now();
        let packed = std::fs::File::open(&raw_path).and_then(|raw| {
            let out = criu_images::create_image_file(&packed_path)?;
            criu_images::zpages::compress(&raw, &out, workers)
        });
        match packed {
            Ok(bytes) => {
                let raw = std::fs::metadata(&raw_path).map_or(0, |m| m.len());
                if let Err(e) = std::fs::remove_file(&raw_path) {
                    tracing::warn!("removing {} after compressing it: {e}", raw_path.display());
                    let _ = std::fs::remove_file(&packed_path);
                    continue;
                }
                tracing::info!(pages = %raw_path.display(), raw, compressed = bytes, took = ?started.elapsed(), "pages compressed");
            }
            Err(e) => {
                tracing::warn!("{} stays uncompressed: {e}", raw_path.display());
                let _ = std::fs::remove_file(&packed_path);
            }
        }
    }
}

/// Runs `work` on a thread of its own, the tree's tracer (in the caller's tracing span):
/// a task that could not be detached (one that never stopped, like a parent waiting for
/// a stopped vfork child) is detached by the kernel when its tracer thread ends, so
/// nothing stays traced after we return.
fn on_tracer_thread<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    let span = tracing::Span::current();
    std::thread::scope(|s| {
        let tracer = s.spawn(|| {
            let _entered = span.enter();
            work()
        });
        tracer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn dump_as_tracer(
    opts: &DumpOptions,
    method: protect::SnapshotMethod,
) -> Result<DumpStats, DumpError> {
    opts.notify.send(Event::PreDump)?;
    // Stage 1: checks that change nothing.
    check_images_dir(&opts.images_dir)?;
    if let Some(w) = &opts.work_dir {
        check_images_dir(w)?;
    }
    crate::freeze::check_target(opts.pid)?;
    check_session(opts)?;
    let mut tree_kinds = opts.external_namespaces.clone();
    if opts
        .cgroups
        .as_ref()
        .is_some_and(|c| c.mode != crate::cgroups::CgMode::Ignore)
    {
        tree_kinds.push(ns::SAVED_WITH_CGROUPS.into());
    }
    ns::check_namespaces_with(&walk_tree(opts.pid), &tree_kinds)?;
    if own_mounts(opts)? {
        crate::mounts::dump::read(opts.pid, &opts.ext_mounts)?;
    }
    if ns::saves_network_namespace(opts) {
        crate::netns::dump::check(opts.pid)?;
    }
    sysvshm::check_tree(&walk_tree(opts.pid))?;
    let mut file_checks = TreeChecks::new(
        &walk_tree(opts.pid),
        opts.shell_job || opts.orphan_pts_master,
    )
    .with_file_locks(opts.file_locks)
    .with_link_remap(opts.link_remap);
    file_checks.set_tcp(opts.tcp_established || opts.tcp_close, opts.skip_in_flight);
    if !opts.tcp_close {
        file_checks.set_network_lock(opts.network_lock);
    }
    file_checks.allow_external_unix(opts.ext_unix_sk.clone());
    crate::files::check_mqueue_namespace(opts.pid)?;
    for pid in walk_tree(opts.pid) {
        let checked = file_checks
            .check(pid)
            .map_err(DumpError::from)
            .and_then(|()| check_memory_supported(pid))
            .and_then(|()| check_signals_supported(pid))
            .and_then(|()| check_io_threads(pid));
        match checked {
            Ok(()) => {}
            // A short-lived child that exited meanwhile (or is exiting right now) is not
            // part of the tree; if it is alive after all, the frozen stage dumps or
            // refuses it for real.
            Err(e) if pid != opts.pid && vanishing(&e, pid) => {}
            Err(e) => return Err(e),
        }
    }
    // A tree that runs on after the dump (-R, -s) gets its pages files allocated before
    // the freeze: the filesystem's allocation (the floor of writing to tmpfs) then costs
    // it no downtime (1 GiB: ~0.25 s frozen instead of ~0.45 s). A tree that is killed
    // after the dump has no downtime to save, and the whole dump is ~10% faster without
    // the separate allocation pass, so it is skipped.
    let mut prealloc = PagesPrealloc::new(&opts.images_dir);
    if opts.leave_running || opts.leave_stopped {
        for pid in walk_tree(opts.pid) {
            prealloc.prepare(pid);
        }
    }
    // An incremental dump: the parent linked, its tracker's fds taken over.
    let incremental = match &opts.prev_images_dir {
        Some(prev) => {
            let parent = track::link_parent(&opts.images_dir, prev).map_err(|source| {
                DumpError::ImagesDir {
                    path: opts.images_dir.join("parent"),
                    source,
                }
            })?;
            let tracking = if opts.track_mem {
                track::Tracking::take_over(&parent)
            } else {
                track::Tracking::default()
            };
            Some((parent, tracking))
        }
        None => None,
    };
    hook(opts, Stage::Check)?;
    let protection = write_protect_before_freeze(opts, method, &prealloc, incremental.is_some());

    // Stage 2: freeze.
    let freeze_start = Instant::now();
    let tree = freeze_tree(opts)?;
    let mut stats = DumpStats {
        freezing_time: freeze_start.elapsed().as_micros() as u32,
        ..Default::default()
    };
    // The tree's stop for write protection counts as frozen time too.
    let stopped_before = protection.stop_us;
    // The clocks the tree saw last: a restore in a new time namespace makes them go on
    // from here, so the time the tree spends frozen, dumped and restored does not show.
    // (CRIU reads them once the images are written, which adds the whole dump to it.)
    let clocks_at_freeze = Clocks::now().map_err(task_err(opts.pid, "reading the clocks"))?;
    hook(opts, Stage::Freeze)?;
    let frozen_at = Instant::now();

    // Stages 3-5 run with the tree frozen; any error drops `tree`, which resumes it.
    tracing::info!(
        processes = tree.processes.len(),
        threads = tree.live_threads().count(),
        freezing_us = stats.freezing_time,
        "tree frozen"
    );
    // A tree with a network of its own: the caller may cut it off while it is dumped.
    let own_net = ns::own_network_namespace(opts.pid).unwrap_or(false);
    let locked = if own_net {
        opts.notify.send(Event::NetworkLock).map(|()| true)
    } else {
        Ok(false)
    };
    let result = locked.map_err(DumpError::from).and_then(|locked| {
        let dumped = dump_frozen(
            opts,
            &tree,
            &mut stats,
            &mut prealloc,
            clocks_at_freeze,
            incremental,
            protection,
        )
        .and_then(|segments| Ok((segments, opts.notify.send(Event::PostDump)?)));
        if locked && (dumped.is_err() || opts.leave_running || opts.leave_stopped) {
            opts.notify.report(Event::NetworkUnlock);
        }
        dumped
    });
    if let Err(e) = &result {
        tracing::error!("dump failed, resuming the tree: {e}");
    }
    let ((host_segments, live), ()) = result?;

    // Stage 6: release.
    stats.processes = tree.processes.len();
    stats.threads = tree.live_threads().count();
    if opts.leave_stopped {
        for p in &tree.processes {
            // A task of the tree: it stays stopped after the detach. One that is gone
            // needs nothing.
            let _ = sys::kill(p.pid, libc::SIGSTOP);
        }
        tree.resume();
    } else if opts.leave_running {
        tree.resume();
    } else {
        tree.kill();
        // What only the tree held goes with it; the images keep it (see sysvshm.rs).
        sysvshm::remove_saved(&host_segments);
    }
    stats.frozen_time = (frozen_at.elapsed().as_micros() as u64 + stopped_before) as u32;
    // A live snapshot's second half, the tree running (dropped on error: the children
    // are killed and reaped all the same).
    let live_start = Instant::now();
    let live_bytes = live.finish(opts, &mut stats)?;
    stats.pages_written_live = live_bytes / sys::page_size();
    if live_bytes > 0 {
        stats.memwrite_time += live_start.elapsed().as_micros() as u32;
        tracing::info!(
            frozen_us = stats.frozen_time,
            copy_us = live_start.elapsed().as_micros() as u64,
            live_bytes,
            "live snapshot copied"
        );
    }
    write_stats(opts, &stats)?;
    Ok(stats)
}

/// Stage 2's freeze: through the cgroup freezer when given one, else ptrace alone.
fn freeze_tree(opts: &DumpOptions) -> Result<FrozenTree, FreezeError> {
    match &opts.freeze_cgroup {
        Some(path) => {
            let mut freezer = CgroupFreezer::open(path).map_err(FreezeError::from)?;
            FrozenTree::freeze_with_cgroup(opts.pid, &mut freezer, opts.freeze_timeout)
        }
        None => FrozenTree::freeze(opts.pid, opts.freeze_timeout),
    }
}

/// A live snapshot's write protection, set up before the freeze for the processes the
/// snapshot method gives it to (`protect.rs`); none for other dumps, and for
/// incremental ones (whose write tracking registers the same memory).
fn write_protect_before_freeze(
    opts: &DumpOptions,
    method: protect::SnapshotMethod,
    prealloc: &PagesPrealloc,
    incremental: bool,
) -> protect::Protection {
    let live = opts.live_snapshot && opts.leave_running && !opts.leave_stopped;
    let (min_bytes, max_vmas) = match method {
        protect::SnapshotMethod::Fork => return Default::default(),
        protect::SnapshotMethod::Auto => (protect::AUTO_MIN_BYTES, protect::AUTO_MAX_VMAS),
        protect::SnapshotMethod::WriteProtect => (1, usize::MAX),
    };
    if !live || incremental {
        return Default::default();
    }
    protect::Protection::prepare(&prealloc.smaps, min_bytes, max_vmas)
}

/// A tree whose session leader is outside it is a shell job: its session and terminal
/// belong to someone else, so (as CRIU) it is dumped only when the user says so (`-j`).
fn check_session(opts: &DumpOptions) -> Result<(), DumpError> {
    let stat = ProcDir::open(opts.pid)
        .and_then(|d| d.stat())
        .map_err(task_err(opts.pid, "reading stat"))?;
    if stat.sid != opts.pid.0 && !opts.shell_job {
        let in_tree = walk_tree(opts.pid).contains(&Pid(stat.sid));
        if !in_tree {
            return Err(DumpError::Unsupported {
                pid: opts.pid,
                what: format!(
                    "a shell job: its session leader {} is outside the tree (use -j/--shell-job)",
                    stat.sid
                ),
            });
        }
    }
    // Sessions and groups whose leader is gone: refused here when the restore could not
    // rebuild them (see sessions.rs).
    let tasks: Vec<crate::sessions::TaskIds> = walk_tree(opts.pid)
        .into_iter()
        .filter_map(|pid| ProcDir::open(pid).and_then(|d| d.stat()).ok())
        .map(|s| crate::sessions::TaskIds {
            pid: s.pid as u32,
            ppid: s.ppid as u32,
            pgid: s.pgid as u32,
            sid: s.sid as u32,
            zombie: s.state == 'Z',
        })
        .collect();
    let outside = if opts.shell_job {
        vec![stat.sid as u32, stat.pgid as u32]
    } else {
        Vec::new()
    };
    let new_pid_ns = ns::root_is_pid_ns_init(opts.pid).unwrap_or(false);
    crate::sessions::leaderless(&tasks, &outside, new_pid_ns).map_err(|what| {
        DumpError::Unsupported {
            pid: opts.pid,
            what,
        }
    })?;
    Ok(())
}

/// Pages files allocated before the freeze, by pid. Files not taken by the dump are
/// removed when this drops (also on error).
struct PagesPrealloc {
    dir: PathBuf,
    files: Vec<(Pid, PathBuf, std::fs::File)>,
    /// The smaps each estimate was made from: a live snapshot takes the VmFlags from
    /// them instead of reading smaps again while frozen (`scan_memory_beside_child`).
    smaps: Vec<(Pid, Vec<crate::proc::MapEntry>)>,
}

impl PagesPrealloc {
    /// Below this, allocation takes no noticeable time.
    const MIN_BYTES: u64 = 8 << 20;

    fn new(dir: &Path) -> Self {
        PagesPrealloc {
            dir: dir.to_owned(),
            files: Vec::new(),
            smaps: Vec::new(),
        }
    }

    /// Allocates a pages file for `pid` sized by its smaps; best effort, as the real
    /// size is only known once the tree is frozen.
    fn prepare(&mut self, pid: Pid) {
        let Ok(maps) = ProcDir::open(pid).and_then(|d| d.maps()) else {
            return;
        };
        let estimate = mm::estimate_private_bytes(&mm::vmas(maps.clone()));
        self.smaps.push((pid, maps));
        if estimate < Self::MIN_BYTES {
            return;
        }
        let path = self.dir.join(format!(".pages-prealloc-{}", pid.0));
        let Ok(file) = criu_images::create_image_file(&path) else {
            return;
        };
        // Slack for pages touched between the estimate and the freeze.
        if sys::fallocate(&file, estimate + estimate / 16).is_ok() {
            self.files.push((pid, path, file));
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }

    /// The pages file for `pid` at `path`: the preallocated one renamed into place, or a
    /// new one.
    fn take_or_create(&mut self, pid: Pid, path: &Path) -> std::io::Result<std::fs::File> {
        if let Some(i) = self.files.iter().position(|(p, _, _)| *p == pid) {
            let (_, tmp, file) = self.files.swap_remove(i);
            std::fs::rename(&tmp, path)?;
            return Ok(file);
        }
        criu_images::create_image_file(path)
    }
}

impl Drop for PagesPrealloc {
    fn drop(&mut self) {
        for (_, path, _) in self.files.drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Whether a pre-freeze check failed only because `pid` is exiting or gone.
fn vanishing(err: &DumpError, pid: Pid) -> bool {
    let state = ProcDir::open(pid).and_then(|d| d.stat()).map(|s| s.state);
    let exited = !matches!(state, Ok(s) if s != 'Z' && s != 'X');
    let io_source = match err {
        DumpError::Files(FileError::Io { source, .. }) => Some(source.raw_os_error()),
        DumpError::Task { source, .. } => Some(source.raw_os_error()),
        _ => None,
    };
    exited
        || matches!(
            io_source,
            Some(Some(libc::ESRCH)) | Some(Some(libc::ENOENT))
        )
}

/// Refuses mappings the dump cannot save, before freezing.
fn check_memory_supported(pid: Pid) -> Result<(), DumpError> {
    let Ok(dir) = ProcDir::open(pid) else {
        return Ok(());
    };
    // What backs a mapping shows in `maps`; `smaps` would cost a page-table walk.
    let Ok(maps) = dir.maps_plain() else {
        return Ok(());
    };
    refuse_unsupported(pid, &mm::vmas(maps))
}

/// Refuses a pending SIGTRAP, before freezing. The dump and the restore drive tasks
/// with ptrace, whose stops are reported as SIGTRAP: a SIGTRAP already queued (by kill,
/// sigqueue, a breakpoint) cannot be told from those, and is consumed or misplaced on
/// the way, so the restored task would not find it (CRIU refuses it too).
fn check_signals_supported(pid: Pid) -> Result<(), DumpError> {
    const SIGTRAP_BIT: u64 = 1 << (libc::SIGTRAP - 1);
    let Ok(dir) = ProcDir::open(pid) else {
        return Ok(());
    };
    let refuse = |queue: String| DumpError::Unsupported {
        pid,
        what: format!(
            "a pending SIGTRAP ({queue}): ptrace, which the dump and the restore use, \
             reports its own stops as SIGTRAP, so a queued one would not be restored exactly"
        ),
    };
    let status = dir
        .status()
        .map_err(task_err(pid, "read /proc/PID/status"))?;
    if status.shd_pending & SIGTRAP_BIT != 0 {
        return Err(refuse("queued for the process".into()));
    }
    for tid in dir.threads().map_err(task_err(pid, "list the threads"))? {
        let Ok(thread) = ProcDir::open_thread(pid, tid) else {
            continue;
        };
        // A thread that exited meanwhile has nothing pending.
        let Ok(status) = thread.status() else {
            continue;
        };
        if status.sig_pending & SIGTRAP_BIT != 0 {
            return Err(refuse(format!("queued for thread {tid}")));
        }
    }
    Ok(())
}

/// Refuses a process with an SQPOLL thread (`iou-sqp-PID`), before freezing: the ring it
/// polls is refused by the files' checks when the tree holds it, but a ring kept only by
/// its mappings, or passed to another process, would lose its thread unnoticed. io-wq
/// workers (`iou-wrk-PID`) are left out of the dump (see `ProcDir::user_threads`): a
/// ring dumped at rest has no work for them, and the restored ring starts its own.
fn check_io_threads(pid: Pid) -> Result<(), DumpError> {
    let Ok(dir) = ProcDir::open(pid) else {
        return Ok(());
    };
    for tid in dir.threads().map_err(task_err(pid, "list the threads"))? {
        // A thread that exited meanwhile is none of the process's.
        let Ok(stat) = ProcDir::open_thread(pid, tid).and_then(|t| t.stat()) else {
            continue;
        };
        if stat.flags & crate::proc::PF_IO_WORKER != 0 && stat.comm.starts_with("iou-sqp") {
            return Err(DumpError::Unsupported {
                pid,
                what: format!(
                    "io_uring SQPOLL thread {tid} ({}): rings polled by a kernel thread \
                     are not dumped",
                    stat.comm
                ),
            });
        }
    }
    Ok(())
}

/// Refuses the first mapping the dump cannot save or the restore could not map again
/// (the kind table decides).
fn refuse_unsupported(pid: Pid, vmas: &[mm::Vma]) -> Result<(), DumpError> {
    match vmas.iter().find_map(|vma| mm::refusal(pid, vma)) {
        Some(what) => Err(DumpError::Unsupported { pid, what }),
        None => Ok(()),
    }
}

/// The dump of a frozen tree under way (stages 3-5): what the stages collect, process
/// by process, for the images.
struct TreeDump<'a> {
    opts: &'a DumpOptions,
    stats: &'a mut DumpStats,
    ids: ids::IdAllocator,
    /// The dumper's own kernel-object ids, numbered first: what the tree shares with us
    /// needs no images.
    root_ids: pb::TaskKobjIdsEntry,
    files: FileTable,
    seccomp: seccomp::SeccompTable,
    /// One task per namespace id, to read that namespace's contents from.
    ns_tasks: Vec<(&'static str, u64, u32, Pid)>,
    dumps: Vec<ProcessDump>,
    /// The fd tables dumped so far: a shared one is dumped once.
    dumped_files_ids: Vec<u32>,
    /// Shared anonymous memory objects, saved once each however many tasks map them.
    shmem: Vec<(u64, std::fs::File)>,
    /// The tree's SysV shared memory attachments.
    sysv: sysvshm::TreeAttachments,
    /// An incremental dump: the parent images' dir and the memory tracking.
    incremental: Option<(PathBuf, track::Tracking)>,
    /// Whether each process gets a snapshot child (a live snapshot, `snapshot.rs`).
    wants_snapshot: bool,
    /// The snapshot children made so far (killed and reaped when dropped).
    snapshots: snapshot::SnapshotChildren,
    /// Pages to copy from the snapshot children once the tree runs again.
    live_pages: Vec<LivePages>,
    /// The smaps of processes read during stage 3 (a live snapshot's, beside the page
    /// scan).
    smaps_read: Vec<(Pid, std::io::Result<Vec<crate::proc::MapEntry>>)>,
    /// The smaps of processes read before the freeze (a live snapshot's).
    smaps_before: Vec<(Pid, Vec<crate::proc::MapEntry>)>,
    /// Processes whose pages files are laid out after the thaw.
    deferred_pages: Vec<DeferredPages>,
    /// The write-protected processes of a live snapshot (`protect.rs`).
    protection: protect::Protection,
}

/// The pages of one process that its snapshot child holds, to be copied after the thaw.
struct LivePages {
    pid: Pid,
    child: Pid,
    file: std::fs::File,
    chunks: Vec<mm::Chunk>,
}

/// A process with a snapshot child whose held VMAs were not scanned while frozen
/// (`scan_memory_beside_child`): its other pages were copied frozen into a memory file;
/// its pages file and pagemap are written once the child is scanned, in address order.
struct DeferredPages {
    pid: Pid,
    child: Pid,
    vpid: u32,
    pages_id: u32,
    file: std::fs::File,
    /// The runs scanned while frozen, whose pages `frozen_pages` holds in run order.
    frozen_runs: Vec<mm::PageRun>,
    frozen_pages: std::fs::File,
    held: Vec<mm::Vma>,
}

/// The second half of a live snapshot: the pages the snapshot children hold, and the
/// children themselves.
pub(crate) struct LiveCopy {
    pages: Vec<LivePages>,
    deferred: Vec<DeferredPages>,
    children: snapshot::SnapshotChildren,
    protection: protect::Protection,
}

impl LiveCopy {
    /// Copies the pages out of the snapshot children (the tree runs meanwhile), then
    /// kills and reaps them. Returns the bytes copied.
    fn finish(mut self, opts: &DumpOptions, stats: &mut DumpStats) -> Result<u64, DumpError> {
        self.children.set_thawed();
        let workers = workers(opts);
        opts.progress.begin(crate::progress::Phase::Snapshot);
        let mut bytes = 0;
        for p in &self.deferred {
            bytes += p.finish(opts, workers, stats)?;
        }
        for p in &self.pages {
            bytes += mm::copy_chunks(
                p.child,
                &p.chunks,
                &p.file,
                workers,
                &opts.interrupt,
                &opts.progress,
            )
            .map_err(task_err(p.pid, "copying pages from its snapshot"))?;
            tracing::debug!(pid = %p.pid, child = %p.child, bytes, "snapshot pages copied");
        }
        self.children
            .end_all()
            .map_err(task_err(opts.pid, "ending the snapshot children"))?;
        let protected = self
            .protection
            .finish(workers, &opts.interrupt, &opts.progress);
        if protected.is_err() {
            // A copy stopped by the interruption is that, not a changed memory (a dump
            // whose copy completed, or that had none, is not interrupted after the fact:
            // a killed tree is gone by now).
            opts.interrupt.check()?;
        }
        bytes += protected.map_err(|(pid, what)| DumpError::SnapshotChanged { pid, what })?;
        Ok(bytes)
    }
}

impl DeferredPages {
    /// Scans the held VMAs in the child (its smaps read beside, to check its VmFlags),
    /// lays out the pages file, puts the frozen copy in place and copies the child's
    /// pages, then writes the pagemap. Returns the bytes copied from the child.
    fn finish(
        &self,
        opts: &DumpOptions,
        workers: usize,
        stats: &mut DumpStats,
    ) -> Result<u64, DumpError> {
        let pid = self.pid;
        let (scanned, smaps) = mm::scan_pages_beside_smaps(self.child, &self.held);
        let (child_runs, scanned) =
            scanned.map_err(task_err(pid, "scanning its snapshot child's page map"))?;
        let smaps = smaps.map_err(task_err(pid, "reading its snapshot child's smaps"))?;
        let held: Vec<(u64, u64)> = self.held.iter().map(|v| (v.map.start, v.map.end)).collect();
        snapshot::check_child_flags(&smaps, &held)
            .map_err(|what| DumpError::Unsupported { pid, what })?;
        let runs = snapshot::merge_scans(&self.frozen_runs, &child_runs);
        let pieces = snapshot::split_runs(&runs, &held);
        let (frozen, live) = snapshot::chunks_of(&pieces);
        let total: u64 = pieces.iter().map(|(s, e, _)| e - s).sum();
        let frozen_bytes: u64 = frozen.iter().map(|c| c.len).sum();
        let copied: u64 = self.frozen_runs.iter().map(|r| r.end - r.start).sum();
        if frozen_bytes != copied {
            return Err(DumpError::Unsupported {
                pid,
                what: format!(
                    "internal: {frozen_bytes} bytes to place from the frozen copy, which holds {copied}"
                ),
            });
        }
        self.file
            .set_len(total)
            .map_err(task_err(pid, "sizing the pages file"))?;
        place_frozen_copy(&self.frozen_pages, &frozen, &self.file)
            .map_err(task_err(pid, "writing the pages copied frozen"))?;
        let live_bytes = mm::copy_chunks(
            self.child,
            &live,
            &self.file,
            workers,
            &opts.interrupt,
            &opts.progress,
        )
        .map_err(task_err(pid, "copying pages from its snapshot"))?;
        write_pagemap(&opts.images_dir, self.vpid, self.pages_id, &runs)?;
        stats.pages_scanned += scanned;
        stats.pages_written += total / sys::page_size();
        tracing::debug!(%pid, child = %self.child, live_bytes, frozen_bytes, runs = runs.len(), "pages written after the thaw");
        Ok(live_bytes)
    }
}

/// Copies `frozen_pages` (the chunks' bytes back to back, in order) to the chunks'
/// offsets in `file`.
fn place_frozen_copy(
    frozen_pages: &std::fs::File,
    chunks: &[mm::Chunk],
    file: &std::fs::File,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = Vec::new();
    let mut at = 0u64;
    for c in chunks {
        buf.resize(c.len as usize, 0);
        frozen_pages.read_exact_at(&mut buf, at)?;
        file.write_all_at(&buf, c.offset)?;
        at += c.len;
    }
    Ok(())
}

/// `pagemap-<vpid>.img`: the pages file's id, then one entry per run.
fn write_pagemap(
    dir: &Path,
    vpid: u32,
    pages_id: u32,
    runs: &[mm::PageRun],
) -> Result<(), DumpError> {
    let mut w = ImageWriter::create(dir.join(format!("pagemap-{vpid}.img")), kind("PAGEMAP"))?;
    w.write_entry(&pb::PagemapHead { pages_id })?;
    for e in mm::pagemap_entries(runs) {
        w.write_entry(&e)?;
    }
    w.finish()?;
    Ok(())
}

/// Page-copy worker threads: as asked, or one per core.
fn workers(opts: &DumpOptions) -> usize {
    if opts.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.workers
    }
}

impl<'a> TreeDump<'a> {
    fn new(
        opts: &'a DumpOptions,
        tree: &FrozenTree,
        stats: &'a mut DumpStats,
    ) -> Result<Self, DumpError> {
        let me = Pid(std::process::id() as i32);
        let mut ids = ids::IdAllocator::default();
        let root_ids = ids
            .ids(me)
            .map_err(task_err(me, "reading the dumper's own ids"))?;
        let mut files = FileTable::new();
        // Both keep a pty slave whose master is outside the tree.
        files.set_shell_job(opts.shell_job || opts.orphan_pts_master);
        files.allow_external_unix(opts.ext_unix_sk.clone());
        files.set_file_locks(opts.file_locks);
        files.set_ghost_limit(opts.ghost_limit);
        files.set_link_remap(opts.link_remap);
        // Zombies too: a pidfd of one names a task of the tree.
        let zombies = tree.processes.iter().map(|p| p.pid);
        files.set_tree_pids(tree.live_threads().map(|(_, tid)| tid).chain(zombies));
        files.set_tcp(
            opts.tcp_established,
            opts.skip_in_flight,
            crate::files::TcpDumpOptions {
                close: opts.tcp_close,
                lock: opts.network_lock,
                run_id: opts.run_id.clone(),
            },
        );
        Ok(TreeDump {
            opts,
            stats,
            ids,
            root_ids,
            files,
            seccomp: seccomp::SeccompTable::new(),
            ns_tasks: Vec::new(),
            dumps: Vec::new(),
            dumped_files_ids: Vec::new(),
            shmem: Vec::new(),
            sysv: sysvshm::TreeAttachments::default(),
            incremental: None,
            wants_snapshot: opts.live_snapshot && opts.leave_running && !opts.leave_stopped,
            snapshots: Default::default(),
            live_pages: Vec::new(),
            smaps_read: Vec::new(),
            smaps_before: Vec::new(),
            deferred_pages: Vec::new(),
            protection: Default::default(),
        })
    }
}

impl TreeDump<'_> {
    /// A tree in a user namespace of its own has its credentials saved in that
    /// namespace's terms, as CRIU saves them (`userns.rs`).
    fn creds_in_own_user_ns(&mut self) -> Result<(), DumpError> {
        let root_user = self.dumps.first().and_then(|p| p.ids.user_ns_id);
        if root_user.is_none() || root_user == self.root_ids.user_ns_id {
            return Ok(());
        }
        let maps = userns::read_maps(self.opts.pid)?;
        let cores = self.dumps.iter_mut().flat_map(|p| p.cores.iter_mut());
        for creds in cores.filter_map(|c| c.thread_core.as_mut()?.creds.as_mut()) {
            userns::creds_inside(creds, &maps);
        }
        Ok(())
    }
}

/// Whether the tree has a mount namespace of its own that the dump saves.
fn own_mounts(opts: &DumpOptions) -> Result<bool, DumpError> {
    crate::mounts::dump::saves_mount_namespace(opts.pid, &opts.external_namespaces)
        .map_err(task_err(opts.pid, "reading its mount namespace"))
}

/// Stages 3-5, with the tree frozen. Returns the SysV shared memory segments of the
/// host IPC namespace it saved (`sysvshm::remove_saved`), and for a live snapshot the
/// pages still to copy once the tree runs.
fn dump_frozen(
    opts: &DumpOptions,
    tree: &FrozenTree,
    stats: &mut DumpStats,
    prealloc: &mut PagesPrealloc,
    clocks_at_freeze: Clocks,
    incremental: Option<(PathBuf, track::Tracking)>,
    protection: protect::Protection,
) -> Result<(Vec<i32>, LiveCopy), DumpError> {
    let mut d = TreeDump::new(opts, tree, stats)?;
    d.incremental = incremental;
    d.protection = protection;
    d.smaps_before = std::mem::take(&mut prealloc.smaps);
    let netns = ns::lock_and_read_network(opts, &mut d.files)?;
    let memdump_start = Instant::now();
    let pinned = Affinity::pin_here();
    // Stage 3, process by process (process.rs).
    for p in &tree.processes {
        d.dump_process(p)?;
    }
    check_fd_table_sharing(&d.dumps)?;
    d.creds_in_own_user_ns()?;
    // A tree with an IPC namespace of its own takes it along: its message queues that
    // no descriptor holds are saved too.
    let root_ipc = d.dumps.first().and_then(|p| p.ids.ipc_ns_id);
    if root_ipc.is_some() && root_ipc != d.root_ids.ipc_ns_id {
        d.files.dump_mqueue_namespace(opts.pid)?;
    }
    d.stats.memdump_time = memdump_start.elapsed().as_micros() as u32;

    // smaps only now: the injected calls above map and unmap scratch areas.
    let killed_after = !opts.leave_running && !opts.leave_stopped;
    let with_mm: Vec<Pid> = d
        .dumps
        .iter()
        .filter(|d| d.mm.is_some())
        .map(|d| d.frozen.pid)
        .collect();
    let smaps = if with_mm
        .iter()
        .all(|pid| d.smaps_read.iter().any(|(p, _)| p == pid))
    {
        mm::TreeSmaps::already_read(std::mem::take(&mut d.smaps_read))
    } else {
        // Read beside the copy (read after it, its page walk added ~25 ms per GiB; beside
        // it, 12 alternating 1 GiB dumps had a median of 452 ms against 464), except
        // where the memory is released from the start: read after the copy then, the
        // walk finds next to nothing.
        mm::TreeSmaps::new(with_mm, !killed_after || !d.releases_from_start())
    };
    let vpids = VirtualPids::read(tree).map_err(task_err(opts.pid, "reading NSpid"))?;
    // Stage 4: pages, copied by workers on every CPU.
    drop(pinned);
    let write_start = Instant::now();
    // A tree that is killed after the dump gives its memory back as it is saved where
    // that pays (see release.rs); each guard writes it back if the dump fails after all.
    let (releases, pages_id) = d.write_pages(prealloc, &smaps, &vpids, killed_after)?;
    d.fill_vma_entries(&smaps)?;
    d.write_shared_memory(pages_id)?;
    let host_segments = d.save_sysv_shm()?;
    d.stats.memwrite_time = write_start.elapsed().as_micros() as u32;
    hook(opts, Stage::Pages)?;

    // Stage 5: the other images. The ptys' queues are read out last, the tree frozen:
    // reading takes the data out, so a dump that fails (or a tree that goes on) has it
    // put back by the guard, and the less happens in between, the less a dumper killed
    // meanwhile (which cannot put it back) loses.
    let tty_queues = d.files.drain_tty_queues()?;
    ns::write_namespace_images(&opts.images_dir, &d.ns_tasks, &d.root_ids)?;
    let root_mnt = d.dumps.first().and_then(|p| p.ids.mnt_ns_id);
    if let Some(id) = root_mnt.filter(|_| own_mounts(opts).unwrap_or(false)) {
        let planned = crate::mounts::dump::read(opts.pid, &opts.ext_mounts)?;
        crate::mounts::dump::write(&opts.images_dir, id, opts.pid, &planned)?;
    }
    let net_id = d.dumps.first().and_then(|p| p.ids.net_ns_id);
    if let (Some(contents), Some(id)) = (&netns, net_id) {
        contents.write(&opts.images_dir, id)?;
    }
    write_timens_image(opts, &d.dumps, &d.root_ids, clocks_at_freeze)?;
    write_images(opts, &d.dumps, &vpids, &d.root_ids, &d.files, &d.seccomp)?;
    hook(opts, Stage::Images)?;
    // The images name them: they stay for the restore (which removes them).
    d.files.keep_link_remaps();
    if killed_after {
        commit_to_kill(tree);
        // The connections stay in repair mode (they close silently with the tree) and
        // locked, until the restore.
        d.files.commit_tcp();
        tty_queues.keep();
    }
    releases.into_iter().for_each(release::PageRelease::keep);
    d.protection.ready();
    let live = LiveCopy {
        pages: std::mem::take(&mut d.live_pages),
        deferred: std::mem::take(&mut d.deferred_pages),
        children: std::mem::take(&mut d.snapshots),
        protection: std::mem::take(&mut d.protection),
    };
    Ok((host_segments, live))
}

impl TreeDump<'_> {
    /// Whether the tree's memory, if it is killed after the dump, is released from the
    /// first pages copied (`ReleaseMemory::release_at_once` of all its releasable pages).
    fn releases_from_start(&self) -> bool {
        let releasable = mm::releasable_bytes(self.dumps.iter().flat_map(|d| &d.page_runs));
        releasable >= release::MIN_BYTES && self.opts.release_memory.release_at_once(releasable)
    }

    /// Stage 4: the pages of each process into `pages-<n>.img` (a preallocated file when
    /// there is one), with its pagemap; with `killed_after`, a process's memory may be
    /// released as it is saved (`ReleaseMemory`). Returns the guards of those releases,
    /// and the last pages id used.
    fn write_pages(
        &mut self,
        prealloc: &mut PagesPrealloc,
        smaps: &std::sync::Arc<mm::TreeSmaps>,
        vpids: &VirtualPids,
        killed_after: bool,
    ) -> Result<(Vec<release::PageRelease>, u32), DumpError> {
        let opts = self.opts;
        let workers = workers(opts);
        let dir = &opts.images_dir;
        let mut pages_id = 0u32;
        let mut releases: Vec<release::PageRelease> = Vec::new();
        for d in &self.dumps {
            let Some(_) = d.mm else { continue };
            pages_id += 1;
            let pid = d.frozen.pid;
            let pages_path = dir.join(format!("pages-{pages_id}.img"));
            let file = prealloc
                .take_or_create(pid, &pages_path)
                .map_err(task_err(pid, "creating the pages file"))?;
            let releasable = mm::releasable_bytes(&d.page_runs);
            // A memory shared with another process of the tree (CLONE_VM) is still to be
            // read through that one.
            let mm_shared = self
                .dumps
                .iter()
                .any(|o| o.frozen.pid != pid && o.mm.is_some() && o.ids.vm_id == d.ids.vm_id);
            let may_release = opts.release_memory != release::ReleaseMemory::Never;
            if killed_after && may_release && releasable >= release::MIN_BYTES && !mm_shared {
                let release = release::PageRelease::new(
                    pid,
                    d.frozen.threads[0],
                    d.gadget,
                    &pages_path,
                    smaps.clone(),
                    opts.release_memory.release_at_once(releasable),
                )
                .map_err(task_err(pid, "opening the pages file"))?;
                releases.push(release);
            }
            let release = releases
                .last_mut()
                .filter(|r| r.pid() == pid)
                .map(|r| r as &mut dyn mm::ReleaseSaved);
            let protected = self.protection.held(pid).filter(|_| !mm_shared);
            if let Some(held) = protected {
                // Its write-protected pages are copied once the tree runs; the rest now.
                let pieces = snapshot::split_runs(&d.page_runs, held);
                let (frozen, live) = snapshot::chunks_of(&pieces);
                let total: u64 = pieces.iter().map(|(s, e, _)| e - s).sum();
                // A preallocated file too big is cut after the thaw: giving back its
                // slack (~1/16 of it) takes ~8 ms per GiB.
                let allocated = file
                    .metadata()
                    .map_err(task_err(pid, "sizing the pages file"))?
                    .len();
                if allocated < total {
                    file.set_len(total)
                        .map_err(task_err(pid, "sizing the pages file"))?;
                }
                mm::copy_chunks(
                    pid,
                    &frozen,
                    &file,
                    workers,
                    &opts.interrupt,
                    &opts.progress,
                )
                .map_err(task_err(pid, "copying pages"))?;
                let live_bytes: u64 = live.iter().map(|c| c.len).sum();
                tracing::debug!(%pid, live_bytes, frozen_bytes = total - live_bytes, "write-protected snapshot");
                self.protection
                    .add_pages(pid, file, total, live)
                    .map_err(task_err(pid, "opening its memory"))?;
                self.stats.pages_written += total / sys::page_size();
                write_pagemap(dir, vpids.of(pid), pages_id, &d.page_runs)?;
                continue;
            }
            let snapshot = self.snapshots.of(pid).filter(|_| !mm_shared);
            if let Some(child) = snapshot.filter(|_| !d.held.is_empty()) {
                // Only the pages scanned frozen are copied now, into memory: where they
                // go in the pages file depends on the child's scan.
                let frozen_pages: std::fs::File = sys::memfd_create("criu-rs-frozen-pages", 0)
                    .map_err(task_err(pid, "making a memory file"))?
                    .into();
                mm::copy_pages(
                    pid,
                    &d.page_runs,
                    &frozen_pages,
                    workers,
                    None,
                    &opts.interrupt,
                    &opts.progress,
                )
                .map_err(task_err(pid, "copying pages"))?;
                self.deferred_pages.push(DeferredPages {
                    pid,
                    child: child.pid,
                    vpid: vpids.of(pid),
                    pages_id,
                    file,
                    frozen_runs: d.page_runs.clone(),
                    frozen_pages,
                    held: d.held.clone(),
                });
                continue;
            }
            let bytes = match snapshot {
                // What the child holds is copied once the tree runs; the rest now.
                Some(child) => {
                    let maps = smaps.of(pid).map_err(task_err(pid, "reading smaps"))?;
                    let pieces = snapshot::split_runs(&d.page_runs, &snapshot::child_holds(maps));
                    let (frozen, live) = snapshot::chunks_of(&pieces);
                    let total: u64 = pieces.iter().map(|(s, e, _)| e - s).sum();
                    file.set_len(total)
                        .map_err(task_err(pid, "sizing the pages file"))?;
                    mm::copy_chunks(
                        pid,
                        &frozen,
                        &file,
                        workers,
                        &opts.interrupt,
                        &opts.progress,
                    )
                    .map_err(task_err(pid, "copying pages"))?;
                    let live_bytes: u64 = live.iter().map(|c| c.len).sum();
                    tracing::debug!(%pid, child = %child.pid, live_bytes, frozen_bytes = total - live_bytes, "live snapshot");
                    let dup = file
                        .try_clone()
                        .map_err(task_err(pid, "duplicating the pages file"))?;
                    self.live_pages.push(LivePages {
                        pid,
                        child: child.pid,
                        file: dup,
                        chunks: live,
                    });
                    total
                }
                None => mm::copy_pages(
                    pid,
                    &d.page_runs,
                    &file,
                    workers,
                    release,
                    &opts.interrupt,
                    &opts.progress,
                )
                .map_err(task_err(pid, "copying pages"))?,
            };
            self.stats.pages_written += bytes / sys::page_size();
            tracing::debug!(%pid, pages_id, bytes, runs = d.page_runs.len(), "pages written");
            write_pagemap(dir, vpids.of(pid), pages_id, &d.page_runs)?;
        }
        Ok((releases, pages_id))
    }

    /// The VMA entries of each process, now that smaps is read; refused when the map
    /// is not the one the pages were scanned in.
    fn fill_vma_entries(&mut self, smaps: &mm::TreeSmaps) -> Result<(), DumpError> {
        // Memories (mm) whose SysV attachments are counted: one per vm_id.
        let mut counted: Vec<u32> = Vec::new();
        for d in &mut self.dumps {
            let pid = d.frozen.pid;
            let Some(mm_entry) = d.mm.as_mut() else {
                continue;
            };
            let maps = smaps.of(pid).map_err(task_err(pid, "reading smaps"))?;
            let vmas = mm::vmas(maps.to_vec());
            let bounds: Vec<(u64, u64)> = vmas.iter().map(|v| (v.map.start, v.map.end)).collect();
            if bounds != d.vma_bounds {
                return Err(DumpError::Unsupported {
                    pid,
                    what: "a memory map that changed while frozen (smaps and maps differ)".into(),
                });
            }
            mm_entry.vmas = vma_entries(pid, &vmas, &mut self.files, &mut self.shmem)?;
            let guarded = guards::guard_regions(pid, &vmas)
                .map_err(task_err(pid, "scanning for guard regions"))?;
            mm_entry
                .vmas
                .extend(guarded.iter().map(guards::guard_entry));
            mm_entry.aios = aio::ring_entries(pid, &vmas)
                .map_err(|what| DumpError::Unsupported { pid, what })?;
            let count = !counted.contains(&d.ids.vm_id);
            counted.push(d.ids.vm_id);
            self.sysv.add_vmas(pid, &vmas, count)?;
        }
        Ok(())
    }

    /// The SysV shared memory of the tree's IPC namespace (`ipcns-shm-ID.img`); in the
    /// dumper's own namespace only the segments the tree attached. Returns those of the
    /// dumper's namespace not marked removed.
    fn save_sysv_shm(&mut self) -> Result<Vec<i32>, DumpError> {
        let root = self.opts.pid;
        let Some(ns_id) = self
            .dumps
            .iter()
            .find(|d| d.frozen.pid == root)
            .and_then(|d| d.ids.ipc_ns_id)
        else {
            return Ok(Vec::new());
        };
        let host = Some(ns_id) == self.root_ids.ipc_ns_id;
        let saved = sysvshm::save(&self.opts.images_dir, &self.sysv, root, ns_id, host)?;
        // The contents are inline in `ipcns-shm`, not in a pages image, so they are not
        // `shpages_written`: that counts pages of `pages-*.img` (zdtm checks the sum).
        tracing::debug!(ns_id, bytes = saved.bytes, "SysV shared memory saved");
        Ok(saved.host_ids)
    }

    /// The pages of shared memory objects and memfds, each under its own pages id after
    /// `pages_id`.
    fn write_shared_memory(&mut self, mut pages_id: u32) -> Result<(), DumpError> {
        let (dir, pid) = (&self.opts.images_dir, self.opts.pid);
        for (inode, object) in &self.shmem {
            pages_id += 1;
            self.stats.shpages_written += write_shmem(dir, *inode, pages_id, object)
                .map_err(task_err(pid, "saving shared memory"))?;
        }
        for memfd in self.files.memfds() {
            pages_id += 1;
            let dup = memfd.file().try_clone_to_owned();
            let object = std::fs::File::from(dup.map_err(task_err(pid, "duplicating a memfd"))?);
            self.stats.shpages_written +=
                write_shmem(dir, u64::from(memfd.shmid), pages_id, &object)
                    .map_err(task_err(pid, "saving a memfd"))?;
        }
        Ok(())
    }
}

/// Refuses fd tables shared (CLONE_FILES) in a way restore cannot clone again.
fn check_fd_table_sharing(dumps: &[ProcessDump]) -> Result<(), DumpError> {
    let users: Vec<crate::fdtable::FdTableUser> = dumps
        .iter()
        .filter(|d| d.mm.is_some())
        .map(|d| crate::fdtable::FdTableUser {
            pid: d.frozen.pid.0,
            ppid: d.frozen.ppid.0,
            files_id: d.ids.files_id,
        })
        .collect();
    crate::fdtable::check_sharing(&users).map_err(|e| DumpError::Unsupported {
        pid: Pid(e.pid),
        what: format!(
            "an fd table shared with process {} but not with its parent {}",
            e.with, e.ppid
        ),
    })
}

/// The commit of a dump that kills its tree: the images are complete, so from here a
/// dumper that dies (SIGKILL, the OOM killer) takes the tree along, as the kill that
/// follows would. Before this, a dying dumper leaves the tree running as it was (see
/// release.rs for the released memory).
fn commit_to_kill(tree: &FrozenTree) {
    for (_, tid) in tree.live_threads() {
        // Only a task that is not in a ptrace stop refuses (none here); the kill that
        // follows ends it all the same.
        if let Err(e) = sys::ptrace_setoptions(tid, libc::PTRACE_O_EXITKILL) {
            tracing::debug!(%tid, "setting PTRACE_O_EXITKILL: {e}");
        }
    }
}

/// The image's VMA entries of `pid` (`vmas` from its smaps, for the VmFlags), registering
/// the files and shared memory objects they map.
fn vma_entries(
    pid: Pid,
    vmas: &[mm::Vma],
    files: &mut FileTable,
    shmem: &mut Vec<(u64, std::fs::File)>,
) -> Result<Vec<pb::VmaEntry>, DumpError> {
    let mut vma_entries = Vec::with_capacity(vmas.len());
    for vma in vmas {
        let map_file = format!(
            "/proc/{}/map_files/{:x}-{:x}",
            pid.0, vma.map.start, vma.map.end
        );
        let shmid = match &vma.backing {
            mm::Backing::Memfd { path, .. } => {
                let object = std::fs::File::open(&map_file)
                    .map_err(task_err(pid, "opening a memfd mapping"))?;
                let mode = if vma.map.has_flag("mw") {
                    libc::O_RDWR
                } else {
                    libc::O_RDONLY
                };
                // The link's bytes: maps text is read lossily, a name need not be UTF-8.
                let link = std::fs::read_link(&map_file).unwrap_or_else(|_| PathBuf::from(path));
                let id = files.memfd_file(&link, object.as_fd(), mode as u32, 0)?;
                u64::from(id)
            }
            mm::Backing::FilePrivate { path } | mm::Backing::FileShared { path } => {
                let opened = std::fs::File::open(&map_file).ok();
                let path = opened
                    .as_ref()
                    .and_then(|_| std::fs::read_link(&map_file).ok())
                    .unwrap_or_else(|| PathBuf::from(path));
                let id = files.reg_file(pid, &path, opened.as_ref().map(AsFd::as_fd), 0, 0)?;
                u64::from(id)
            }
            mm::Backing::AnonShared { inode }
            | mm::Backing::ShmemPrivate { inode }
            | mm::Backing::HugetlbShared { inode } => {
                if !shmem.iter().any(|(i, _)| i == inode) {
                    let object = std::fs::File::open(&map_file)
                        .map_err(task_err(pid, "opening shared memory"))?;
                    shmem.push((*inode, object));
                }
                *inode
            }
            mm::Backing::SysvShm { shmid } => *shmid,
            // Stage 1 found it a packet socket the process holds: its fd is dumped.
            mm::Backing::Socket { inode } => {
                files
                    .packet_socket_id(*inode)
                    .map(u64::from)
                    .ok_or(DumpError::Unsupported {
                        pid,
                        what: format!("a packet ring at {:#x} without its socket", vma.map.start),
                    })?
            }
            // Stage 1 found that the process holds the ring: its fd is dumped.
            mm::Backing::IoUring { inode, sqes_offset } => {
                let unsupported = |what: String| DumpError::Unsupported { pid, what };
                let ring = files
                    .io_uring_ring(*inode, sqes_offset.is_some())
                    .ok_or_else(|| {
                        unsupported(format!(
                            "an io_uring ring mapped at {:#x} without its descriptor",
                            vma.map.start
                        ))
                    })?;
                // A program maps the regions at their sizes; a longer mapping means
                // wider entries than the ring was saved with (SQE128, CQE32), which
                // nothing else shows. Other offsets are other regions (provided buffer
                // rings, ...), which are not saved.
                let off = match sqes_offset {
                    Some(sqes) => crate::files::io_uring::ring_offset(vma.map.offset, *sqes),
                    None => vma.map.offset,
                };
                let (base, region) = if off >= sys::IORING_OFF_SQES {
                    (sys::IORING_OFF_SQES, ring.sqes_len)
                } else if off >= sys::IORING_OFF_CQ_RING {
                    (sys::IORING_OFF_CQ_RING, ring.rings_len)
                } else {
                    (sys::IORING_OFF_SQ_RING, ring.rings_len)
                };
                if off - base + (vma.map.end - vma.map.start) > region as u64 {
                    return Err(unsupported(format!(
                        "an io_uring region mapped at {:#x}-{:#x} (offset {off:#x}), past the \
                         {region} bytes of the saved region (a ring with 128-byte SQEs or \
                         32-byte CQEs, or a region of another kind, is not dumped)",
                        vma.map.start, vma.map.end
                    )));
                }
                u64::from(ring.id)
            }
            mm::Backing::Unsupported(what) => {
                return Err(DumpError::Unsupported {
                    pid,
                    what: format!("{what} at {:#x}", vma.map.start),
                })
            }
            _ => 0,
        };
        vma_entries.push(mm::vma_entry(vma, shmid));
    }
    Ok(vma_entries)
}

/// Saves the populated pages of a shared memory object (shared anonymous memory or a
/// memfd) as `pagemap-shmem-<shmid>.img` + `pages-<pages_id>.img`; returns pages written.
fn write_shmem(
    dir: &Path,
    shmid: u64,
    pages_id: u32,
    object: &std::fs::File,
) -> std::io::Result<u64> {
    let ranges = mm::shmem_data_ranges(object)?;
    let pages = dir.join(format!("pages-{pages_id}.img"));
    let (entries, bytes) = mm::copy_shmem(object, &ranges, &pages)?;
    let image = |e: criu_images::Error| std::io::Error::other(e.to_string());
    let path = dir.join(format!("pagemap-shmem-{shmid}.img"));
    let mut w = ImageWriter::create(path, kind("PAGEMAP")).map_err(image)?;
    w.write_entry(&pb::PagemapHead { pages_id })
        .map_err(image)?;
    for e in &entries {
        w.write_entry(e).map_err(image)?;
    }
    w.finish().map_err(image)?;
    Ok(bytes / sys::page_size())
}

fn kind(name: &str) -> &'static ImageKind {
    // The table is static and these names are spelled in this file only.
    ImageKind::by_name(name)
        .unwrap_or_else(|| panic!("image kind {name} is missing from the table"))
}

fn write_one<M: prost::Message>(
    dir: &Path,
    kind_name: &str,
    id: impl std::fmt::Display,
    entries: &[M],
) -> Result<(), DumpError> {
    let k = kind(kind_name);
    let mut w = ImageWriter::create(dir.join(k.file_name(id)), k)?;
    for e in entries {
        w.write_entry(e)?;
    }
    w.finish()?;
    Ok(())
}

/// Pids as the tree's own pid namespace numbers them (the last field of NSpid), which
/// is what the images hold, as CRIU's do; the same numbers when the tree shares the
/// dumper's pid namespace.
pub struct VirtualPids(std::collections::HashMap<i32, i32>);

impl VirtualPids {
    fn read(tree: &FrozenTree) -> std::io::Result<VirtualPids> {
        let mut map = std::collections::HashMap::new();
        // A process in the dumper's own pid namespace numbers its threads as we do: no
        // NSpid to read per thread (a thousand threads: a thousand reads).
        use std::os::unix::fs::MetadataExt;
        let pid_ns = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/pid")).map(|m| m.ino());
        let ours = pid_ns("self")?;
        for p in &tree.processes {
            if pid_ns(&p.pid.0.to_string()).is_ok_and(|ns| ns == ours) {
                continue;
            }
            for &t in &p.threads {
                let status = ProcDir::open_thread(p.pid, t)?.status()?;
                if let Some(&inner) = status.ns_pid.last() {
                    map.insert(t.0, inner);
                }
                // The session and group too (the process's, shared by its threads):
                // their leader may be gone from the tree (a daemon's session after its
                // leader exited) and have no pid to map. 0: no number inside (a session
                // made outside the namespace).
                if t != p.pid {
                    continue;
                }
                for ids in [&status.ns_sid, &status.ns_pgid] {
                    if let (Some(&outer), Some(&inner)) = (ids.first(), ids.last()) {
                        if inner != 0 {
                            map.entry(outer).or_insert(inner);
                        }
                    }
                }
            }
        }
        Ok(VirtualPids(map))
    }

    /// The number a task, session or group of the tree has inside it; a session or
    /// group the tree only joined from outside keeps its number.
    pub fn of(&self, pid: Pid) -> u32 {
        self.0.get(&pid.0).copied().unwrap_or(pid.0) as u32
    }
}

/// The tree's clocks at the freeze (`at_freeze`: as the dumper saw them), as CRIU
/// records them: a tree in a time namespace of its own gets `timens-ID.img` (ID its
/// namespace's) with that namespace's clocks, a tree in ours `timens-0.img` with ours.
/// Either way a restore starts a new time namespace from them.
fn write_timens_image(
    opts: &DumpOptions,
    dumps: &[ProcessDump],
    root_ids: &pb::TaskKobjIdsEntry,
    at_freeze: Clocks,
) -> Result<(), DumpError> {
    let root = opts.pid;
    let tree_ns = dumps
        .iter()
        .find(|d| d.frozen.pid == root)
        .and_then(|d| d.ids.time_ns_id);
    let (id, clocks) = match tree_ns {
        Some(id) if Some(id) != root_ids.time_ns_id => {
            // Offsets are against the host's clocks: the tree's clock is ours minus our
            // namespace's offset plus its own (stage 1 made sure both can be read).
            let me = Pid(std::process::id() as i32);
            let ours = Clocks::offsets_of(me).map_err(task_err(me, "reading our time offsets"))?;
            let theirs =
                Clocks::offsets_of(root).map_err(task_err(root, "reading its time offsets"))?;
            (id, at_freeze - ours + theirs)
        }
        _ => (0, at_freeze),
    };
    tracing::debug!(id, ?clocks, "the tree's clocks");
    write_one(&opts.images_dir, "TIMENS", id, &[clocks.to_entry()])
}

fn write_images(
    opts: &DumpOptions,
    dumps: &[ProcessDump],
    vpids: &VirtualPids,
    root_ids: &pb::TaskKobjIdsEntry,
    files: &FileTable,
    seccomp: &seccomp::SeccompTable,
) -> Result<(), DumpError> {
    let dir = &opts.images_dir;
    let root = opts.pid;
    let v = |pid: Pid| vpids.of(pid);
    let pstree: Vec<pb::PstreeEntry> = dumps
        .iter()
        .map(|d| pb::PstreeEntry {
            pid: v(d.frozen.pid),
            ppid: if d.frozen.pid == root {
                0
            } else {
                v(d.frozen.ppid)
            },
            pgid: v(d.frozen.pgid),
            sid: v(d.frozen.sid),
            threads: d.frozen.threads.iter().map(|&t| v(t)).collect(),
        })
        .collect();
    write_one(dir, "PSTREE", "", &pstree)?;
    let mut cgroups = match &opts.cgroups {
        Some(o) if o.mode != crate::cgroups::CgMode::Ignore => {
            Some(crate::cgroups::dump::CgroupDump::new(o.clone())?)
        }
        _ => None,
    };
    for d in dumps {
        let pid = v(d.frozen.pid);
        write_one(dir, "IDS", pid, std::slice::from_ref(&d.ids))?;
        for (core, &tid) in d.cores.iter().zip(&d.frozen.threads) {
            let mut core = core.clone();
            // Timers aimed at a thread name it by its tid (as /proc showed it to us).
            let timers = core.tc.as_mut().and_then(|tc| tc.timers.as_mut());
            for t in timers.into_iter().flat_map(|t| t.posix.iter_mut()) {
                if let Some(n) = t.notify_thread_id.as_mut() {
                    *n = v(Pid(*n)) as i32;
                }
            }
            if let Some(cg) = cgroups.as_mut() {
                let set = cg.thread_set(d.frozen.pid, tid)?;
                if let Some(tcore) = core.thread_core.as_mut() {
                    tcore.cg_set = Some(set);
                }
                // The leader's also where readers before per-thread sets look.
                if let Some(tc) = core.tc.as_mut() {
                    tc.cg_set = Some(set);
                }
            }
            write_one(dir, "CORE", v(tid), std::slice::from_ref(&core))?;
        }
        if let Some(mm) = &d.mm {
            write_one(dir, "MM", pid, std::slice::from_ref(mm))?;
        }
        if let Some(fs) = &d.fs {
            write_one(dir, "FS", pid, std::slice::from_ref(fs))?;
        }
        if let Some(fdinfo) = &d.fdinfo {
            write_one(dir, "FDINFO", d.ids.files_id, fdinfo)?;
        }
    }
    files.write_images_numbered(dir, &|pid| vpids.of(pid))?;
    files.write_locks(dir, v)?;
    write_one(dir, "SECCOMP", "", &[seccomp.entry()])?;
    if let Some(entry) = cgroups.as_ref().map(|c| c.entry()).transpose()?.flatten() {
        write_one(dir, "CGROUP", "", &[entry])?;
    }
    let inventory = pb::InventoryEntry {
        root_cg_set: cgroups.as_ref().map(|c| c.own_set()),
        img_version: 2,
        fdinfo_per_id: Some(true),
        root_ids: Some(*root_ids),
        ns_per_id: Some(true),
        lsmtype: Some(pb::Lsmtype::NoLsm as i32),
        network_lock_method: Some(opts.network_lock.image_value()),
        plugins_entry: Some(pb::PluginsEntry::default()),
        dump_criu_run_id: Some(opts.run_id.clone()),
        ..Default::default()
    };
    write_one(dir, "INVENTORY", "", &[inventory])?;
    Ok(())
}

/// `stats-dump` in the work dir (the images dir when unset), as CRIU writes it: once the
/// tree is released, so that the frozen time is whole.
fn write_stats(opts: &DumpOptions, stats: &DumpStats) -> Result<(), DumpError> {
    let dir = &opts.images_dir;
    let work = opts.work_dir.as_deref().unwrap_or(dir);
    let entry = pb::StatsEntry {
        dump: Some(pb::DumpStatsEntry {
            freezing_time: stats.freezing_time,
            frozen_time: stats.frozen_time,
            memdump_time: stats.memdump_time,
            memwrite_time: stats.memwrite_time,
            pages_scanned: stats.pages_scanned,
            pages_skipped_parent: stats.pages_skipped_parent,
            pages_written: stats.pages_written,
            irmap_resolve: Some(0),
            pages_lazy: 0,
            page_pipes: Some(0),
            page_pipe_bufs: Some(0),
            shpages_scanned: Some(0),
            shpages_skipped_parent: Some(0),
            shpages_written: Some(stats.shpages_written),
        }),
        restore: None,
    };
    let k = kind("STATS");
    let mut w = ImageWriter::create(work.join("stats-dump"), k)?;
    w.write_entry(&entry)?;
    w.finish()?;
    Ok(())
}

/// A run id in UUID form, from the kernel's random source.
pub fn run_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
