//! Restoring a dumped process from its images, by injection: the restorer creates the
//! task with its old pid, then rebuilds it entirely from outside with ptrace, running one
//! system call at a time inside it (see `inject.rs`). Nothing of the restorer's code is
//! left in the restored task.
//!
//! The stages, in order, and why:
//! 1. Load and check the images, and refuse what this restore cannot rebuild yet, before
//!    any process exists: also xsave state this CPU lacks (`--cpu-cap`), and a dumped
//!    vDSO that differs from this kernel's where no proxy can stand in for it (`vdso.rs`).
//! 2. Open what every task will need from us (a pidfd of the restorer, the namespaces
//!    to join) so that clones inherit them at the same numbers; wait until the pid is
//!    free (unless a new pid namespace starts), then `clone3(set_tid)`: the child traces
//!    itself to us and stops. From here a guard kills it on any error, so no
//!    half-restored process survives a failure. The root enters or recreates its
//!    namespaces (mount last), and the SysV objects are made again, before it clones
//!    anyone. Each process, still a copy of the restorer, joins its session
//!    and group and clones its children (zombies too) the same way. Zombies then take
//!    their name and exit with their dumped status; we reap them only as their tracer,
//!    so they stay zombies of their real parent.
//! 3. Move the injection gadget to a work page of its own (the child still runs on a copy
//!    of the restorer, which is about to go), block every signal, drop the inherited rseq
//!    registration (its area is in the restorer's TLS), and unmap everything else.
//! 4. Move `[vvar]`, `[vvar_vclock]` and `[vdso]` to their dumped addresses, keeping their
//!    distances, so the vDSO code the task had mapped works where it expects it; or, when
//!    the dumped vDSO is another kernel's, out of the way: a proxy takes its place in
//!    stage 5 (its bytes, each entry point a jump into this kernel's vDSO).
//! 5. Recreate every mapping at its address, writable while its pages are copied in, then
//!    set the final protections (a page that is not writable cannot be filled later).
//! 6. Files: the restorer opens each one itself (under `--root`, or the caller's
//!    `--inherit-fd`; sockets inside the tree's joined network namespace), and the task
//!    takes a duplicate with `pidfd_getfd` through the inherited pidfd and puts it at
//!    its old number (POSIX message queues are made first, in the root's IPC
//!    namespace, `files/mqueue.rs`); then cwd and umask.
//! 7. Process state: handlers, itimers, rlimits, name, personality, the mm fields with
//!    the exe link (`PR_SET_MM_MAP`, once no mapping of the old exe is left), a chrooted
//!    task's root (chroot, once nothing more is opened in it by path), then the
//!    file locks (`--file-locks`: taken by the task through its own fds once the restore
//!    closes no more fds in it, as a close drops the process's POSIX locks on that
//!    file; in an fd table several processes share, POSIX ones by the last of them),
//!    clear_tid, robust list, rseq, and the pending signals (queued by the task
//!    to itself).
//! 8. Last, unmap the work page (stopping at that syscall's exit, since its `int3` goes
//!    with it), set the dumped registers, xsave and blocked mask, and let go.
//!
//! Namespaces: a root that was pid 1 gets a new pid namespace (stage 2); the tree's own
//! UTS and IPC namespaces are created anew in the root before it clones the others,
//! with their names and limits; `join_ns` enters existing ones instead. A mount
//! namespace of its own is built last in the root, which then pivots into it
//! (`mounts.rs`); from then on files are opened through `/proc/ROOT/root`. Every tree gets
//! a new time namespace, first of all, whose clocks go on from the dumped ones
//! (`timens.rs`).
//!
//! The SysV message queues and semaphore sets of the tree's IPC namespace are created
//! again in the one it ends up in (new or joined), with their ids and contents; so are
//! its SysV shared memory segments (`sysvshm.rs`), once the root is there, and also
//! those of the restorer's own namespace that the tree alone had attached. Each task
//! attaches them in stage 5; those that had been removed are removed again before the
//! tree is let go.
//!
//! Where each stage lives: `restore` here is the order of it all, and `rebuild` the
//! order of stages 3-8 for one process, each a method of its context `Rebuild`.
//! `load.rs` is stage 1; `tree.rs` stage 2 (forking, sessions, groups, zombies, a shell
//! job's terminal) with `namespaces.rs` (the tree's own namespaces and SysV objects),
//! `mounts.rs` (its mount namespace) and `timens.rs` (its time namespace);
//! `memory.rs` stages 3 and 5 (the work area, mappings, pages, shared memory; `cow.rs`
//! for copy-on-write sharing); `vdso.rs` stage 4 (and the proxy); `fds.rs` and
//! `crate::files::restore` (the driver; each kind's restore is in its `files/` module)
//! stage 6; `state.rs` (process-wide), `threads.rs` (per thread) and `attrs.rs` stage 7;
//! `threads.rs` stage 8.
//!
//! What cannot be rebuilt yet (terminals other than Unix98 ptys, a root that is a
//! deleted directory, unknown mappings) is refused in stage 1, before any process
//! exists, with a message saying what.

mod aio;
mod attrs;
mod cow;
mod fds;
mod lazy;
/// Stage 6's opening of files: the restore driver of [`crate::files`], whose kinds hold
/// both their dump and their restore code.
pub use crate::files::restore as files;
mod cgns;
mod chain;
mod load;
mod memory;
mod mounts;
mod namespaces;
mod state;
mod sysvshm;
mod threads;
mod timens;
mod tree;
mod userns;
mod vdso;

use cgns::*;
use fds::*;
pub use lazy::{LazyPages, LocalPages, PageSource};
use load::{read_one, Checked, Images, Zombie};
use memory::*;
use namespaces::*;
use threads::*;
use tree::*;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criu_images::{pb, ImageReader};

use crate::affinity::Affinity;
use crate::arch;
use crate::inject::Injector;
use crate::interrupt::{Interrupt, Interrupted};
use crate::notify::{Event, Notifier, NotifyError};
use crate::proc::{MapEntry, ProcDir};
use crate::sys::{self, Pid, WaitStatus};
use criu_images::flags::task_state;
use criu_images::flags::vma::{
    VMA_ANON_PRIVATE, VMA_ANON_SHARED, VMA_AREA_AIORING, VMA_AREA_GUARD, VMA_AREA_MEMFD,
    VMA_AREA_SOCKET, VMA_AREA_SYSVIPC, VMA_AREA_VDSO, VMA_AREA_VSYSCALL, VMA_AREA_VVAR,
    VMA_FILE_PRIVATE, VMA_FILE_SHARED,
};
use files::{FileOpener, FileRestoreError};

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// `-D`: the image directory.
    pub images_dir: PathBuf,
    /// How long to wait for the old pid to become free.
    pub pid_wait: Duration,
    /// `-j`: the tree is a job of a shell. It joins our session (and our process group
    /// when its root led none), its terminal fds become our own terminal (stdin), and
    /// the terminal's foreground group is set as the shell had it.
    pub shell_job: bool,
    /// CRIU's `orphan_pts_master`: a pty slave whose master was outside the tree gets
    /// a new pty with its number, whose master goes to the caller with the
    /// `orphan-pts-master` notification (so `notify` must be set).
    pub orphan_pts_master: bool,
    /// `--file-locks`: take the images' file locks again (images holding locks are
    /// refused without it).
    pub file_locks: bool,
    /// `--join-ns KIND:PATH`: the tree enters these existing namespaces (`net`, `mnt`,
    /// `uts`, `ipc`; PATH an nsfs file such as /proc/PID/ns/net) instead of ours.
    pub join_ns: Vec<(String, PathBuf)>,
    /// `--root`: paths of the files the restorer opens are looked up under this
    /// directory (the tree's root filesystem as we see it).
    pub root: Option<PathBuf>,
    /// `--inherit-fd fd[N]:KEY`: the dumped file named KEY (a regular file's path) is
    /// our open fd N instead, as is (no reopening, no size check).
    pub inherit_fds: Vec<(String, i32)>,
    /// `--external mnt[KEY]:PATH`: the external mount saved by KEY is a bind of PATH
    /// (our path), in the tree's own mount namespace.
    pub ext_mounts: Vec<(String, PathBuf)>,
    /// Where to mount the procfs of the new pid namespace (a tree whose root is pid 1
    /// of its own), inside the mount namespace the tree joined.
    pub proc_mount: Option<PathBuf>,
    /// `--cpu-cap`: what this CPU must offer of the dumping one (default `fpu`: every
    /// xsave component the images need; `none` restores regardless).
    pub cpu_cap: arch::CpuCap,
    /// `--tcp-established`: TCP connections of the images are rebuilt in repair mode
    /// (refused without it, or `tcp_close`).
    pub tcp_established: bool,
    /// `--tcp-close`: TCP connections of the images come back closed.
    pub tcp_close: bool,
    /// `--manage-cgroups`: the tree goes back into the cgroups of `cgroup.img`, made
    /// as the mode says (None: it stays in ours).
    pub cgroups: Option<crate::cgroups::CgroupOptions>,
    /// Raised by the front-end to stop the restore (a signal): until the tree is let go
    /// it then fails with `RestoreError::Interrupted` and leaves no process behind.
    pub interrupt: Interrupt,
    /// Put the tree in a new time namespace whose CLOCK_MONOTONIC and CLOCK_BOOTTIME go
    /// on from the dumped values, as CRIU does (default); off (`--no-timens`), the tree
    /// shares ours and its clocks jump to the host's.
    pub new_time_ns: bool,
    /// `--ext-unix-sk`, as CRIU's: a unix socket whose peer was outside the dumped tree
    /// is connected to that peer's name again (a new connection, for a stream socket);
    /// without it such a socket is refused before any process exists.
    pub ext_unix_sk: bool,
    /// Told at CRIU's script points (pre-restore ... post-resume); a refusal before
    /// the tree runs fails the restore, which kills it.
    pub notify: Notifier,
    /// `--lazy-pages`: private anonymous memory is not filled before the tree runs;
    /// its pages come on fault and in the background (`lazy.rs`), and `Restored::lazy`
    /// serves them until every one is in.
    pub lazy_pages: bool,
    /// With `lazy_pages`: copy pages in the background once the tree runs (default);
    /// off, pages come only when the tree touches them (for tests of a restorer that
    /// dies with pages missing).
    pub lazy_background: bool,
    /// Counts the bytes of pages to fill and filled, for a front-end that shows them
    /// (pages a lazy restore leaves to its server are not counted).
    pub progress: crate::Progress,
}

impl RestoreOptions {
    pub fn new(images_dir: impl Into<PathBuf>) -> Self {
        RestoreOptions {
            images_dir: images_dir.into(),
            pid_wait: Duration::from_secs(5),
            shell_job: false,
            orphan_pts_master: false,
            file_locks: false,
            join_ns: Vec::new(),
            root: None,
            inherit_fds: Vec::new(),
            ext_mounts: Vec::new(),
            proc_mount: None,
            cpu_cap: arch::CpuCap::default(),
            tcp_established: false,
            tcp_close: false,
            cgroups: None,
            interrupt: Interrupt::new(),
            new_time_ns: true,
            ext_unix_sk: false,
            notify: Notifier::default(),
            lazy_pages: false,
            lazy_background: true,
            progress: crate::Progress::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Image(#[from] criu_images::Error),
    #[error(transparent)]
    Files(#[from] FileRestoreError),
    #[error("{image}: {what}")]
    BadImage { image: String, what: String },
    #[error("cannot restore {what} yet")]
    Unsupported { what: String },
    #[error("pid {0} is still in use")]
    PidBusy(Pid),
    /// The images need what this CPU or kernel does not offer (a CPU feature, the
    /// dumped vDSO).
    #[error("{image}: {what}")]
    Mismatch { image: String, what: String },
    #[error("{0}; nothing of the tree was left behind")]
    Interrupted(#[from] Interrupted),
    #[error(transparent)]
    Cgroups(#[from] crate::cgroups::CgroupsError),
    #[error(transparent)]
    NetworkLock(#[from] crate::netlock::LockError),
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error("{0}")]
    TcpRepair(std::io::Error),
    #[error("{0}; nothing of the tree was left behind")]
    Notify(#[from] NotifyError),
    #[error("restoring pid {pid}: {what}: {source}")]
    Task {
        pid: Pid,
        what: String,
        source: std::io::Error,
    },
}

/// A restored process, running; it is a child of the restorer.
#[derive(Debug)]
pub struct Restored {
    pub pid: Pid,
    pub stats: RestoreStats,
    /// With `lazy_pages`: the pages still being copied into the running tree. Dropping
    /// it (or `LazyPages::wait`) waits until every one is in.
    pub lazy: Option<LazyPages>,
}

/// CRIU's restore statistics (stats-restore), times in microseconds.
#[derive(Debug, Clone, Default)]
pub struct RestoreStats {
    /// Creating every task with its pid.
    pub forking_time: u32,
    /// The whole restore.
    pub restore_time: u32,
    pub pages_restored: u64,
}

fn unsupported(what: impl Into<String>) -> RestoreError {
    RestoreError::Unsupported { what: what.into() }
}

/// An error of the task we call `pid`, saying what failed.
fn terr(pid: Pid, what: &str) -> impl FnOnce(std::io::Error) -> RestoreError {
    let what = what.to_owned();
    move |source| RestoreError::Task { pid, what, source }
}

/// Kills and reaps every task of a half-built tree unless disarmed.
struct TreeGuard {
    pids: Vec<Pid>,
    armed: bool,
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for pid in self.pids.iter().rev() {
            let _ = sys::kill(*pid, libc::SIGKILL);
        }
        for pid in self.pids.iter().rev() {
            // Our children or tracees; a pid that is neither just returns an error.
            let _ = sys::wait_all(*pid);
        }
    }
}

/// ptrace options of every restored task: a dying restorer takes its half-built tree
/// along, syscall stops are marked, and children and threads the task creates on our
/// behalf arrive traced and stopped.
const TRACE_OPTIONS: libc::c_int = libc::PTRACE_O_EXITKILL
    | libc::PTRACE_O_TRACESYSGOOD
    | libc::PTRACE_O_TRACECLONE
    | libc::PTRACE_O_TRACEFORK;

/// The pages files a restore unpacked from their compressed form (`dump --compress`,
/// `criu_images::zpages`): removed when this drops. A lazy restore's pages server maps
/// its file before that, and the mapping outlives the name.
struct UnpackedPages(Vec<PathBuf>);

impl UnpackedPages {
    fn unpack(dir: &Path) -> Result<UnpackedPages, RestoreError> {
        let mut unpacked = UnpackedPages(Vec::new());
        let Ok(entries) = std::fs::read_dir(dir) else {
            // Stage 1 names what is wrong with the directory.
            return Ok(unpacked);
        };
        let ids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| criu_images::zpages::pages_id_of(e.file_name().to_str()?))
            .collect();
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        for id in ids {
            let raw_path = dir.join(format!("pages-{id}.img"));
            if raw_path.exists() {
                continue;
            }
            let name = criu_images::zpages::file_name(id);
            let bad = |what: String| RestoreError::BadImage {
                image: name.clone(),
                what,
            };
            let started = Instant::now();
            let packed = File::open(dir.join(&name)).map_err(|e| bad(e.to_string()))?;
            // Under another name until it is whole: a restorer killed while unpacking
            // must not leave a partial pages-N.img that the next restore would trust.
            let partial = dir.join(format!(".pages-{id}.img.unpacking"));
            let out = criu_images::create_image_file(&partial)
                .map_err(|e| bad(format!("unpacking into {}: {e}", partial.display())))?;
            unpacked.0.push(partial.clone());
            let bytes = criu_images::zpages::decompress(&packed, &out, workers)
                .map_err(|e| bad(e.to_string()))?;
            std::fs::rename(&partial, &raw_path)
                .map_err(|e| bad(format!("renaming {}: {e}", partial.display())))?;
            unpacked.0.push(raw_path);
            tracing::debug!(%name, bytes, took = ?started.elapsed(), "pages unpacked");
        }
        Ok(unpacked)
    }
}

impl Drop for UnpackedPages {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Restores the image set in `opts.images_dir`.
pub fn restore(opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    let started = Instant::now();
    opts.notify.send(Event::PreRestore)?;
    // The tree's cgroups, made before any task exists (and before stage 1, whose file
    // checks may look at cgroup directories); declared before the tasks' guard, so a
    // failed restore kills the tasks, then removes the cgroups it made.
    let cgroups = match &opts.cgroups {
        Some(o) => crate::cgroups::restore::prepare(&opts.images_dir, o)?,
        None => None,
    };
    // Compressed pages files (`dump --compress`) unpacked beside them for the restore,
    // and removed again when it ends.
    let _unpacked = UnpackedPages::unpack(&opts.images_dir)?;
    // Stage 1: the images, checked, and every refusal before any process exists.
    let mut tree = load::check(opts)?;
    // The lock the dump left on the tree's TCP connections: lifted once the tree is
    // rebuilt, or when this drops. Declared before the tasks' guard, so a failed
    // restore first kills the tasks (their sockets, still in repair mode, close
    // silently), then lifts it.
    let mut netlock = tree.netlock.take();
    // Injection is a ptrace round trip per syscall: with the restorer and the tasks on
    // one CPU it costs a fifth of a cross-CPU one. Tasks inherit the pinning from us and
    // get our original affinity back before they run; page copies use every CPU.
    let affinity = Affinity::pin_here();
    // Stage 2: every task, a copy of the restorer with its old pid, session, group and
    // parent; the root in its namespaces; the zombies dead again.
    let mut forked = tree::fork(opts, &mut tree, &affinity, cgroups.as_ref())?;
    let root = forked.host(tree.procs[0].pid);
    opts.notify.send(Event::SetupNamespaces(root))?;
    opts.notify.send(Event::PostSetupNamespaces)?;
    let forking_time = started.elapsed();
    tracing::debug!(took = ?forking_time, "tree forked");
    // The SysV shared memory segments, once the root is in its IPC namespace.
    let fresh_ipc = tree.own_ns.ipc.as_ref();
    let mut sysv = sysvshm::create(
        &opts.images_dir,
        tree.sysv_shm.as_ref(),
        forked.host(tree.procs[0].pid),
        fresh_ipc.is_some(),
        fresh_ipc.and_then(|v| v.shm_next_id),
    )?;
    let Checked {
        procs,
        mut opener,
        terminal,
        own_ns,
        ..
    } = tree;
    opener.add_dev_ttys(std::mem::take(&mut forked.dev_ttys));
    if own_ns.mounts.is_some() {
        // The tree's paths are those of its new mount namespace, which we see there.
        opener.set_root(Some(PathBuf::from(format!("/proc/{}/root", root.0))));
    }
    // Threads are created later, by their leader, under the same numbers inside the
    // tree's pid namespace: only a new namespace (the root was pid 1) renumbers them.
    if forked.new_pid_ns {
        let ours: HashMap<i32, i32> = forked.hosts.iter().map(|(i, o)| (i.0, o.0)).collect();
        opener.renumber_owners(&ours);
        opener.set_tree_pids(ours);
        let pid_ns = File::open(format!("/proc/{}/ns/pid", root.0))
            .map_err(terr(procs[0].pid, "opening its pid namespace"))?;
        opener.set_tree_pid_ns(pid_ns.into());
    }
    // With --lazy-pages, the server answers faults from the moment each process's
    // memory is registered (stage 5); dropped on an error, it has the tree killed.
    let mut lazy = match opts.lazy_pages {
        true => Some(
            lazy::LazyServer::start(affinity.original().copied())
                .map_err(terr(root, "starting the lazy pages server"))?,
        ),
        false => None,
    };
    // Stages 3-8, process by process.
    let (thread_hosts, repaired) = rebuild_tree(
        opts,
        &procs,
        opener,
        &mut forked,
        &sysv,
        &affinity,
        lazy.as_ref(),
    )?;
    if let Some(t) = &terminal {
        give_terminal(&procs[0], t);
    }
    sysv.remove_again()?;
    opts.interrupt.check()?;
    opts.notify.send(Event::PostRestore(root))?;
    if crate::dump::ns::own_network_namespace(root).unwrap_or(false) {
        opts.notify.report(Event::NetworkUnlock);
    }
    // The TCP connections go live: the lock first, so that the window probe each
    // socket sends as it leaves repair mode gets through (as CRIU does it).
    if let Some(lock) = netlock.as_mut() {
        lock.unlock()?;
    }
    repaired.release().map_err(RestoreError::TcpRepair)?;
    // Every task into its cgroups, still stopped.
    if let Some(cg) = &cgroups {
        move_into_cgroups(cg, &procs, &forked, &thread_hosts)?;
    }
    // As in CRIU, the caller's answer no longer stops a restore this far.
    opts.notify.report(Event::PreResume);
    let_go(&procs, &forked, &thread_hosts, &affinity)?;
    forked.guard.armed = false;
    if let Some(server) = lazy.as_mut() {
        if opts.lazy_background {
            server
                .go(affinity.cpus())
                .map_err(terr(root, "starting the lazy pages workers"))?;
        }
    }
    if let Some(cg) = cgroups {
        cg.commit();
    }
    opts.notify.report(Event::PostResume);
    sysv.commit();
    let stats = RestoreStats {
        forking_time: forking_time.as_micros() as u32,
        restore_time: started.elapsed().as_micros() as u32,
        pages_restored: procs
            .iter()
            .flat_map(|p| &p.pagemap)
            .map(|e| e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages)))
            .sum(),
    };
    write_stats(&opts.images_dir, &stats)?;
    tracing::info!(?stats, "tree restored");
    Ok(Restored {
        pid: forked.host(procs[0].pid),
        stats,
        lazy: lazy.map(LazyPages::new),
    })
}

/// Stages 3-8 for each process, with `opener` (dropped at the end); everything stays
/// stopped until the whole tree is rebuilt, so no task sees a half-built parent, child
/// or peer. Returns our numbers of the other threads of each process, and the TCP
/// sockets left in repair mode.
fn rebuild_tree(
    opts: &RestoreOptions,
    procs: &[Images],
    mut opener: FileOpener,
    forked: &mut Forked,
    sysv: &sysvshm::Created,
    affinity: &Affinity,
    lazy: Option<&lazy::LazyServer>,
) -> Result<(HashMap<Pid, Vec<Pid>>, crate::files::RepairedSockets), RestoreError> {
    let shared = shared_anon_objects(procs, &opts.images_dir)?;
    // The restorer creates the tree's sockets: in the tree's network namespace, the one
    // the root joined.
    let join = std::mem::take(&mut forked.join);
    let netns = match join.iter().find(|(t, _)| *t == libc::CLONE_NEWNET) {
        Some((_, ns)) => Some(
            sys::NetnsGuard::enter(ns.as_fd())
                .map_err(terr(procs[0].pid, "entering the tree's network namespace"))?,
        ),
        None => None,
    };
    drop(join);
    let mut thread_hosts: HashMap<Pid, Vec<Pid>> = HashMap::new();
    let mut fd_tables: HashMap<u32, SharedFdTable> = HashMap::new();
    for p in procs {
        fd_tables.entry(p.ids.files_id).or_default().left += 1;
    }
    let task_pidfd = forked.restorer_pidfd.as_raw_fd() as u64;
    // Message queues before any file: in the IPC namespace the root is in by now.
    opener.make_mqueues(forked.host(procs[0].pid))?;
    for p in procs {
        let fd_table = fd_tables.entry(p.ids.files_id).or_default();
        opts.interrupt.check()?;
        let pid = forked.host(p.pid);
        let rebuilding = Instant::now();
        let (inj, work) = map_work_area(p, pid, forked.gadget)?;
        let rb = Rebuild {
            img: p,
            pid,
            inj,
            work,
            // In a table filled by another process, our pidfd has moved already.
            restorer_pidfd: fd_table.pidfd.unwrap_or(task_pidfd),
            opener: &mut opener,
            shared: &shared,
            sysv,
            affinity,
            fd_table,
            cow_held: forked.cow_held.get(&p.pid).cloned().unwrap_or_default(),
            started: rebuilding,
            lazy,
            progress: &opts.progress,
        };
        thread_hosts.insert(p.pid, rebuild(rb)?);
    }
    drop(netns);
    opener.finish_sockets()?;
    let repaired = opener.take_repaired();
    opener.keep_mqueues();
    opener.remove_link_remaps();
    let writable_mounts = opener.take_writable_mounts();
    // The opener holds the far ends of pipes and FIFOs: drop it once every task holds
    // its own, so readers see EOF exactly when they did before.
    drop(opener);
    // Its descriptors are closed: no file on those mounts is open for writing now.
    writable_mounts
        .read_only_again()
        .map_err(|source| RestoreError::Task {
            pid: Pid(std::process::id() as i32),
            what: "making a mount read-only again after making deleted files on it".into(),
            source,
        })?;
    Ok((thread_hosts, repaired))
}

/// One process through stages 3-8: its images, our hold on it, and what the restorer
/// holds for the whole tree that it takes from.
struct Rebuild<'a> {
    img: &'a Images,
    /// Our number for it (`img.pid` is the image's, the task's own).
    pid: Pid,
    /// Injection into the leader, from the work area.
    inj: Injector,
    /// The work area (`WORK_AREA` bytes): the gadget page, scratch, room for batches.
    work: u64,
    /// The task's fd number of a pidfd of ours.
    restorer_pidfd: u64,
    opener: &'a mut FileOpener,
    /// Shared anonymous memory objects by shmid, made and filled beforehand
    /// (`shared_anon_objects`).
    shared: &'a HashMap<u64, File>,
    /// The tree's SysV shared memory segments, made beforehand (`sysvshm::create`).
    sysv: &'a sysvshm::Created,
    affinity: &'a Affinity,
    /// The fd table it shares with other processes of the tree (or has alone).
    fd_table: &'a mut SharedFdTable,
    /// Memory it holds already, shared copy-on-write with its parent (cow.rs).
    cow_held: cow::Held,
    /// When its rebuild started, for the debug log of each stage.
    started: Instant,
    /// The lazy pages server (`--lazy-pages`), which takes the private anonymous memory.
    lazy: Option<&'a lazy::LazyServer>,
    /// Counts the pages filled (`RestoreOptions::progress`).
    progress: &'a crate::Progress,
}

impl Rebuild<'_> {
    /// The scratch area of the process's injected calls (`SCRATCH_BYTES`).
    fn scratch(&self) -> u64 {
        self.work + PAGE
    }

    /// An error of this task, saying what failed.
    fn err(&self, what: &str) -> impl FnOnce(std::io::Error) -> RestoreError {
        terr(self.pid, what)
    }

    /// Logs how long the rebuild took up to `stage`.
    fn log_before(&self, stage: u32) {
        tracing::debug!(pid = %self.pid, took = ?self.started.elapsed(), "before stage {stage}");
    }
}

/// Stages 3-8 for one process, in order. Returns our numbers of its other threads.
fn rebuild(mut rb: Rebuild) -> Result<Vec<Pid>, RestoreError> {
    // Stage 3: the restorer's memory goes (`map_work_area` made the work area first).
    rb.block_signals_and_rseq()?;
    let current = rb.maps()?;
    let kept = rb.unmap_restorer(&current)?;
    rb.log_before(4);
    // Stage 4: the vDSO and its data pages.
    let live_vdso = rb.place_vdso(&current)?;
    rb.log_before(5);
    // Stage 5: mappings, pages, protections.
    rb.map_memory(&kept)?;
    rb.fill_memory(&kept)?;
    rb.restore_aio_rings()?;
    rb.protect_memory(live_vdso)?;
    rb.log_before(6);
    // Stage 6: files, cwd, umask.
    let pidfd_to_close = rb.restore_files()?;
    rb.log_before(7);
    // Stage 7: process state, then the threads, then what must come last.
    rb.process_attrs()?;
    rb.handlers_and_itimers()?;
    rb.rlimits()?;
    rb.name_and_personality()?;
    rb.mm_fields()?;
    rb.change_root()?;
    // Our pidfd goes once no process still to be rebuilt needs it in this fd table.
    if let Some(pidfd) = pidfd_to_close {
        rb.inj
            .syscall_ok("close", libc::SYS_close, [pidfd, 0, 0, 0, 0, 0])
            .map_err(rb.err("pidfd"))?;
    }
    // File locks once the restore closes no more fds in the task (fds.rs).
    rb.take_file_locks()?;
    // The leader's own per-thread state (threads.rs).
    let (img, scratch) = (rb.img, rb.scratch());
    let tcore = img.core.thread_core.as_ref();
    thread_state(&mut rb.inj, img.pid, img.pid, &img.ti, tcore, scratch)
        .map_err(rb.err("thread state"))?;
    rb.pending_signals()?;
    let threads = rb.clone_threads()?;
    rb.posix_timers()?;
    rb.seccomp_and_credentials()?;
    rb.log_before(8);
    // Stage 8: the registers, and let it be.
    rb.finish(&threads)?;
    Ok(threads)
}

/// Moves each process, and each thread whose cgroups differ from its leader's, into
/// the cgroups its core entry names.
fn move_into_cgroups(
    cg: &crate::cgroups::restore::CgroupRestore,
    procs: &[Images],
    forked: &Forked,
    thread_hosts: &HashMap<Pid, Vec<Pid>>,
) -> Result<(), RestoreError> {
    use crate::cgroups::restore::set_of;
    for p in procs {
        let hosts = thread_hosts.get(&p.pid).map(Vec::as_slice).unwrap_or(&[]);
        let threads: Vec<(u32, Pid)> = p
            .threads
            .iter()
            .zip(hosts)
            .map(|((_, core), &host)| (set_of(core), host))
            .collect();
        cg.move_process(forked.host(p.pid), set_of(&p.core), &threads)?;
    }
    Ok(())
}

/// Lets every task go (leaders first): their affinity back, the commit, then each
/// detach with the signal it delivers; waits for the stopped ones to stop again.
fn let_go(
    procs: &[Images],
    forked: &Forked,
    thread_hosts: &HashMap<Pid, Vec<Pid>>,
    affinity: &Affinity,
) -> Result<(), RestoreError> {
    let mut stopped = Vec::new();
    // Every task as it goes (leaders first), with the signal its detach delivers.
    let mut release = Vec::new();
    for p in procs {
        let leader = forked.host(p.pid);
        let stop = if p.tc.task_state == task_state::STOPPED {
            stopped.push(leader);
            attrs::stop_signal(leader, p.tc.stop_signo)
        } else {
            0
        };
        // A stopped process gets its stop signal once, through its leader (detached
        // first): the group stop it starts holds the other threads too.
        let others = thread_hosts.get(&p.pid).cloned().unwrap_or_default();
        for tid in std::iter::once(leader).chain(others) {
            affinity
                .release(tid)
                .map_err(terr(tid, "setting its CPU affinity"))?;
            release.push((tid, if tid == leader { stop } else { 0 }));
        }
    }
    commit(&release).map_err(|(tid, e)| terr(tid, "committing")(e))?;
    for &(tid, sig) in &release {
        sys::ptrace_detach(tid, sig).map_err(terr(tid, "letting go"))?;
    }
    // The stop happens when the task takes the signal: wait for it while we are still
    // the root's parent, which the orphaned-group rule above counted on.
    for &pid in &stopped {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(ProcDir::open(pid).and_then(|d| d.stat()), Ok(s) if s.state == 'T') {
            if Instant::now() >= deadline {
                tracing::warn!(%pid, "the restored process did not stop again");
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

/// The commit of a restore: until here a restorer that dies (SIGKILL, OOM) takes the
/// half-built tree along (`PTRACE_O_EXITKILL`); from here on every task is complete, so
/// a dying restorer leaves the whole tree running, as the detaches that follow would.
/// The only moment a death splits the tree is inside this loop (one ptrace call per
/// task, a few microseconds each); a one-process, one-thread tree commits in one call.
fn commit(tasks: &[(Pid, i32)]) -> Result<(), (Pid, std::io::Error)> {
    let started = Instant::now();
    for &(tid, _) in tasks {
        sys::ptrace_setoptions(tid, TRACE_OPTIONS & !libc::PTRACE_O_EXITKILL)
            .map_err(|e| (tid, e))?;
    }
    tracing::debug!(tasks = tasks.len(), took = ?started.elapsed(), "restore committed");
    Ok(())
}

/// stats-restore, as CRIU writes it.
fn write_stats(dir: &Path, stats: &RestoreStats) -> Result<(), RestoreError> {
    let kind = criu_images::ImageKind::by_name("STATS")
        .ok_or_else(|| unsupported("a schema without STATS"))?;
    let mut w = criu_images::ImageWriter::create(dir.join("stats-restore"), kind)?;
    w.write_entry(&pb::StatsEntry {
        dump: None,
        restore: Some(pb::RestoreStatsEntry {
            pages_compared: 0,
            pages_skipped_cow: 0,
            forking_time: stats.forking_time,
            restore_time: stats.restore_time,
            pages_restored: Some(stats.pages_restored),
        }),
    })?;
    w.finish()?;
    Ok(())
}

/// The start of our own first private executable mapping: a fresh task cloned from us
/// has the same code at the same address, so injection can start there.
fn restorer_gadget() -> std::io::Result<u64> {
    let maps = ProcDir::open(Pid(std::process::id() as i32))?.maps_plain()?;
    maps.iter()
        .find(|m| m.exec && !m.shared && m.path.starts_with('/'))
        .map(|m| m.start)
        .ok_or_else(|| std::io::Error::other("no executable mapping of our own"))
}

const PAGE: u64 = 4096;
/// The mapping-type bits of mmap(2) flags (MAP_SHARED, MAP_PRIVATE, MAP_DROPPABLE...).
const MAP_TYPE: u32 = 0x0f;

/// The area each new task gets for restoring it: the gadget page, three scratch pages
/// (threads borrow the last two), and four pages of room for batch code.
const WORK_AREA: u64 = 8 * PAGE;

/// Bytes of the scratch area a process's injected calls may use (`work + PAGE`).
const SCRATCH_BYTES: usize = 3 * PAGE as usize;

/// File mappings opened at once while restoring memory: far below any fd limit.
const FILES_PER_ROUND: usize = 64;

/// An fd table, shared by the processes of the tree that have its `files_id` (cloned
/// with CLONE_FILES): the first of them to be rebuilt fills it, the others find it done.
#[derive(Debug, Default)]
struct SharedFdTable {
    /// Processes still to be rebuilt with this table.
    left: usize,
    /// Once filled: where our pidfd is in it, kept open until the last of them is rebuilt.
    pidfd: Option<u64>,
    /// POSIX locks of the processes rebuilt so far, which the last one takes (fds.rs).
    posix_locks: Vec<crate::files::LockCall>,
}
