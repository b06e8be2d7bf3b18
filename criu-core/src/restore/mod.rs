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
//!    its old number; then cwd and umask.
//! 7. Process state: handlers, itimers, rlimits, name, personality, the mm fields with
//!    the exe link (`PR_SET_MM_MAP`, once no mapping of the old exe is left), clear_tid,
//!    robust list, rseq, and the pending signals (queued by the task to itself).
//! 8. Last, unmap the work page (stopping at that syscall's exit, since its `int3` goes
//!    with it), set the dumped registers, xsave and blocked mask, and let go.
//!
//! Namespaces: a root that was pid 1 gets a new pid namespace (stage 2); the tree's own
//! UTS and IPC namespaces are created anew in the root before it clones the others,
//! with their names and limits; `join_ns` enters existing ones instead.
//!
//! The SysV message queues and semaphore sets of the tree's IPC namespace are created
//! again in the one it ends up in (new or joined), with their ids and contents.
//!
//! Where each stage lives: `load` and `restore` here (stages 1-2, the order of it all)
//! and `rebuild` (stages 3-8 for one task); `tree.rs` (sessions, groups, zombies),
//! `namespaces.rs` (the tree's own namespaces and SysV objects), `memory.rs` (pages,
//! shared memory, the vDSO's move; `cow.rs` for copy-on-write sharing, `vdso.rs` for the
//! proxy), `fds.rs` and `crate::files::restore` (stage 6), `attrs.rs` and `threads.rs`
//! (stage 7, and the registers of stage 8).
//!
//! What cannot be rebuilt yet (terminals other than a shell job's, SysV shared memory,
//! a root other than "/", unknown mappings) is refused in stage 1, before any process
//! exists, with a message saying what.

mod attrs;
mod cow;
mod fds;
/// Stage 6's opening of files: the restore driver of [`crate::files`], whose kinds hold
/// both their dump and their restore code.
pub use crate::files::restore as files;
mod memory;
mod namespaces;
mod threads;
mod tree;
mod vdso;

use fds::*;
use memory::*;
use namespaces::*;
use threads::*;
use tree::*;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criu_images::{pb, ImageReader};

use crate::affinity::Affinity;
use crate::arch;
use crate::inject::Injector;
use crate::interrupt::{Interrupt, Interrupted};
use crate::proc::ProcDir;
use crate::sys::{self, Pid, WaitStatus};
use criu_images::flags::task_state;
use criu_images::flags::vma::{
    VMA_ANON_PRIVATE, VMA_ANON_SHARED, VMA_AREA_MEMFD, VMA_AREA_VDSO, VMA_AREA_VSYSCALL,
    VMA_AREA_VVAR, VMA_FILE_PRIVATE, VMA_FILE_SHARED,
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
    /// `--join-ns KIND:PATH`: the tree enters these existing namespaces (`net`, `mnt`,
    /// `uts`, `ipc`; PATH an nsfs file such as /proc/PID/ns/net) instead of ours.
    pub join_ns: Vec<(String, PathBuf)>,
    /// `--root`: paths of the files the restorer opens are looked up under this
    /// directory (the tree's root filesystem as we see it).
    pub root: Option<PathBuf>,
    /// `--inherit-fd fd[N]:KEY`: the dumped file named KEY (a regular file's path) is
    /// our open fd N instead, as is (no reopening, no size check).
    pub inherit_fds: Vec<(String, i32)>,
    /// Where to mount the procfs of the new pid namespace (a tree whose root is pid 1
    /// of its own), inside the mount namespace the tree joined.
    pub proc_mount: Option<PathBuf>,
    /// `--cpu-cap`: what this CPU must offer of the dumping one (default `fpu`: every
    /// xsave component the images need; `none` restores regardless).
    pub cpu_cap: arch::CpuCap,
    /// Raised by the front-end to stop the restore (a signal): until the tree is let go
    /// it then fails with `RestoreError::Interrupted` and leaves no process behind.
    pub interrupt: Interrupt,
}

impl RestoreOptions {
    pub fn new(images_dir: impl Into<PathBuf>) -> Self {
        RestoreOptions {
            images_dir: images_dir.into(),
            pid_wait: Duration::from_secs(5),
            shell_job: false,
            join_ns: Vec::new(),
            root: None,
            inherit_fds: Vec::new(),
            proc_mount: None,
            cpu_cap: arch::CpuCap::default(),
            interrupt: Interrupt::new(),
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

fn read_all<M: prost::Message + Default>(dir: &Path, name: &str) -> Result<Vec<M>, RestoreError> {
    let mut r = ImageReader::open(dir.join(name))?;
    let mut out = Vec::new();
    while let Some(e) = r.next_entry::<M>()? {
        out.push(e);
    }
    Ok(out)
}

fn read_one<M: prost::Message + Default>(dir: &Path, name: &str) -> Result<M, RestoreError> {
    read_all::<M>(dir, name)?
        .into_iter()
        .next()
        .ok_or_else(|| RestoreError::BadImage {
            image: name.to_owned(),
            what: "has no entry".into(),
        })
}

/// Everything stage 1 loads for one process.
struct Images {
    pid: Pid,
    entry: pb::PstreeEntry,
    /// Cores of the threads other than the leader, with their tids.
    threads: Vec<(Pid, pb::CoreEntry)>,
    core: pb::CoreEntry,
    tc: pb::TaskCoreEntry,
    ti: pb::ThreadInfoX86,
    ids: pb::TaskKobjIdsEntry,
    mm: pb::MmEntry,
    files: HashMap<u32, pb::FileEntry>,
    fdinfo: Vec<pb::FdinfoEntry>,
    fs: pb::FsEntry,
    pagemap: Vec<pb::PagemapEntry>,
    pages_id: u32,
    /// Set when the dumped vDSO is not this kernel's: how to redirect it.
    vdso_proxy: Option<vdso::Proxy>,
    /// Seccomp of the leader, then of each of `threads`.
    seccomp: Vec<attrs::SeccompPlan>,
}

fn unsupported(what: impl Into<String>) -> RestoreError {
    RestoreError::Unsupported { what: what.into() }
}

/// A process that had exited and was not yet reaped by its parent: it is rebuilt as a
/// zombie of the same parent, with its pid, group, session, name and wait status.
struct Zombie {
    entry: pb::PstreeEntry,
    /// Bytes: a name need not be UTF-8.
    comm: Vec<u8>,
    /// The wait status the parent will read (exit code << 8, or the killing signal).
    exit_status: u32,
}

impl Zombie {
    fn pid(&self) -> Pid {
        Pid(self.entry.pid as i32)
    }
}

/// Stage 1: every process of the tree, parents before children, and the zombies.
fn load_tree(dir: &Path) -> Result<(Vec<Images>, Vec<Zombie>), RestoreError> {
    let tree: Vec<pb::PstreeEntry> = read_all(dir, "pstree.img")?;
    if tree.is_empty() {
        return Err(RestoreError::BadImage {
            image: "pstree.img".into(),
            what: "has no process".into(),
        });
    }
    let files: HashMap<u32, pb::FileEntry> = read_all::<pb::FileEntry>(dir, "files.img")?
        .into_iter()
        .map(|f| (f.id, f))
        .collect();
    // CRIU writes no seccomp.img for a tree without seccomp.
    let seccomp = if dir.join("seccomp.img").exists() {
        read_one::<pb::SeccompEntry>(dir, "seccomp.img")?.seccomp_filters
    } else {
        Vec::new()
    };
    let mut out: Vec<Images> = Vec::with_capacity(tree.len());
    let mut zombies = Vec::new();
    for (i, e) in tree.iter().enumerate() {
        if i > 0 && !out.iter().any(|p| p.entry.pid == e.ppid) {
            return Err(RestoreError::BadImage {
                image: "pstree.img".into(),
                what: format!("process {} comes before its parent {}", e.pid, e.ppid),
            });
        }
        let core: pb::CoreEntry = read_one(dir, &format!("core-{}.img", e.pid))?;
        let zombie = core
            .tc
            .as_ref()
            .filter(|tc| tc.task_state == task_state::ZOMBIE);
        if let Some(tc) = zombie {
            if i == 0 {
                return Err(unsupported(format!(
                    "the root of the tree, {}, as a zombie",
                    e.pid
                )));
            }
            zombies.push(Zombie {
                entry: e.clone(),
                comm: tc.comm.clone(),
                exit_status: tc.exit_code,
            });
            continue;
        }
        out.push(load(dir, e, core, &files, &seccomp)?);
    }
    Ok((out, zombies))
}

/// Stage 1 for one process.
fn load(
    dir: &Path,
    root: &pb::PstreeEntry,
    core: pb::CoreEntry,
    files: &HashMap<u32, pb::FileEntry>,
    seccomp_filters: &[pb::SeccompFilter],
) -> Result<Images, RestoreError> {
    let pid = Pid(root.pid as i32);
    let bad = |what: &str| RestoreError::BadImage {
        image: format!("core-{}.img", pid.0),
        what: what.into(),
    };
    let tc = core.tc.clone().ok_or_else(|| bad("has no task core"))?;
    if tc.task_state != task_state::ALIVE && tc.task_state != task_state::STOPPED {
        return Err(unsupported(format!(
            "process {} in task state {}",
            pid, tc.task_state
        )));
    }
    let ti = core
        .thread_info
        .clone()
        .ok_or_else(|| bad("has no x86 thread info"))?;
    let mut threads = Vec::new();
    for tid in root.threads.iter().skip(1) {
        threads.push((
            Pid(*tid as i32),
            read_one::<pb::CoreEntry>(dir, &format!("core-{tid}.img"))?,
        ));
    }
    let mut seccomp = vec![attrs::seccomp_plan(
        core.thread_core.as_ref(),
        seccomp_filters,
        &format!("core-{}.img", pid.0),
    )?];
    for (tid, tcore) in &threads {
        seccomp.push(attrs::seccomp_plan(
            tcore.thread_core.as_ref(),
            seccomp_filters,
            &format!("core-{}.img", tid.0),
        )?);
    }
    let files = files.clone();
    let ids: pb::TaskKobjIdsEntry = read_one(dir, &format!("ids-{}.img", pid.0))?;
    let mm: pb::MmEntry = read_one(dir, &format!("mm-{}.img", pid.0))?;
    let fdinfo: Vec<pb::FdinfoEntry> = read_all(dir, &format!("fdinfo-{}.img", ids.files_id))?;
    for fd in &fdinfo {
        let file = files.get(&fd.id).ok_or_else(|| RestoreError::BadImage {
            image: "files.img".into(),
            what: format!("has no file {} for fd {}", fd.id, fd.fd),
        })?;
        let _ = file;
    }
    let fs: pb::FsEntry = read_one(dir, &format!("fs-{}.img", pid.0))?;
    // Only "/" as a root is rebuilt (stage 6 opens the cwd below it): refused here,
    // before any process exists.
    let root_name = files
        .get(&fs.root_id)
        .and_then(|f| f.reg.as_ref())
        .map(|r| r.path().to_owned())
        .unwrap_or_else(|| "/".into());
    if root_name != Path::new("/") {
        return Err(unsupported(format!(
            "process {}: a root of {}",
            pid.0,
            root_name.display()
        )));
    }
    for vma in &mm.vmas {
        if let Some(what) = files::mapping_refusal(&files, vma) {
            return Err(unsupported(what));
        }
        let known = VMA_ANON_SHARED
            | VMA_ANON_PRIVATE
            | VMA_FILE_PRIVATE
            | VMA_FILE_SHARED
            | VMA_AREA_VDSO
            | VMA_AREA_VVAR
            | VMA_AREA_VSYSCALL
            | VMA_AREA_MEMFD
            | 1
            | (1 << 5);
        if vma.status & !known != 0 {
            return Err(unsupported(format!(
                "the mapping at {:#x} (status {:#x})",
                vma.start, vma.status
            )));
        }
        let file = files.get(&(vma.shmid as u32));
        let backed = if vma.status & VMA_AREA_MEMFD != 0 {
            file.is_some_and(|f| f.memfd.is_some())
        } else {
            file.is_some_and(|f| f.reg.is_some())
        };
        if vma.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 && !backed {
            return Err(RestoreError::BadImage {
                image: format!("mm-{}.img", pid.0),
                what: format!("mapping {:#x} names missing file {}", vma.start, vma.shmid),
            });
        }
    }
    let mut pm = ImageReader::open(dir.join(format!("pagemap-{}.img", pid.0)))?;
    let head: pb::PagemapHead = pm.next_entry()?.ok_or_else(|| RestoreError::BadImage {
        image: "pagemap".into(),
        what: "is empty".into(),
    })?;
    let mut pagemap = Vec::new();
    while let Some(e) = pm.next_entry::<pb::PagemapEntry>()? {
        pagemap.push(e);
    }
    Ok(Images {
        pid,
        entry: root.clone(),
        threads,
        core,
        tc,
        ti,
        ids,
        mm,
        files,
        fdinfo,
        fs,
        pagemap,
        pages_id: head.pages_id,
        vdso_proxy: None,
        seccomp,
    })
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

/// Restores the image set in `opts.images_dir`.
pub fn restore(opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    let started = Instant::now();
    let (mut procs, mut zombies) = load_tree(&opts.images_dir)?;
    check_cpu(&opts.images_dir, &procs, opts.cpu_cap)?;
    for p in &mut procs {
        let ips: Vec<u64> = std::iter::once(&p.core)
            .chain(p.threads.iter().map(|(_, c)| c))
            .filter_map(|c| c.thread_info.as_ref().map(|t| t.gpregs.ip))
            .collect();
        p.vdso_proxy = vdso::check(&opts.images_dir, &p.mm, &p.pagemap, p.pages_id, &ips)?;
    }
    let mut opener = FileOpener::load(&opts.images_dir)?;
    opener.set_root(opts.root.clone());
    for (key, fd) in &opts.inherit_fds {
        opener.inherit(key, *fd)?;
    }
    let own_ns = load_own_namespaces(
        &opts.images_dir,
        &procs[0],
        opener.root_ids(),
        &opts.join_ns,
    )?;
    let joined_net = opts.join_ns.iter().any(|(k, _)| k == "net");
    if joined_net {
        // Sockets of the tree live in the namespace it joins.
        opener.accept_net_ns(procs[0].ids.net_ns_id);
    }
    let terminal = if opts.shell_job {
        let terminal = sys::stdin_terminal();
        opener.inherit_terminal(terminal.as_ref().and_then(|t| t.try_clone().ok()));
        migrate_shell_job(&mut procs, &mut zombies)?;
        // A root that leads its own session keeps it, and no terminal is handed over.
        let in_our_session = procs[0].entry.sid != procs[0].entry.pid;
        terminal.filter(|_| in_our_session && opener.has_job_terminal())
    } else {
        None
    };
    let fd_table_users: Vec<crate::fdtable::FdTableUser> = procs
        .iter()
        .map(|p| crate::fdtable::FdTableUser {
            pid: p.entry.pid as i32,
            ppid: p.entry.ppid as i32,
            files_id: p.ids.files_id,
        })
        .collect();
    crate::fdtable::check_sharing(&fd_table_users).map_err(|e| unsupported(e.to_string()))?;
    // Every task of the tree, zombies too (they exist again before any file is opened).
    let tree_tids: Vec<i32> = procs
        .iter()
        .flat_map(|p| p.entry.threads.iter().map(|&t| t as i32))
        .chain(zombies.iter().map(|z| z.entry.pid as i32))
        .collect();
    opener.set_tree_pids(tree_tids.iter().map(|&t| (t, t)));
    for p in &procs {
        opener.check(p.pid, &p.fdinfo)?;
    }
    let leaderless = leaderless_groups(&procs, &zombies)?;
    let root_pdeath = procs[0]
        .core
        .thread_core
        .as_ref()
        .and_then(|t| t.pdeath_sig);
    if let Some(sig) = root_pdeath.filter(|&s| s != 0) {
        // Its parent is the restorer now (as with CRIU, which warns the same).
        tracing::warn!(
            sig,
            "the root's parent-death signal fires when the restorer ends"
        );
    }
    // Injection is a ptrace round trip per syscall: with the restorer and the tasks on
    // one CPU it costs a fifth of a cross-CPU one. Tasks inherit the pinning from us and
    // get our original affinity back before they run; page copies use every CPU.
    let affinity = Affinity::pin_here();
    let root = procs[0].pid;
    let terr = |pid: Pid, what: &str| {
        let what = what.to_owned();
        move |source| RestoreError::Task { pid, what, source }
    };

    // Namespaces to join, and a pidfd of ours, opened before the root is cloned so that
    // it and every task cloned from it find them at the same numbers: a task in a pid
    // namespace of its own could not name us by pid to open one.
    let mut join = Vec::new();
    for (kind, path) in &opts.join_ns {
        let nstype =
            ns_type(kind).ok_or_else(|| unsupported(format!("joining a {kind} namespace")))?;
        let fd = File::open(path).map_err(terr(root, &format!("opening {}", path.display())))?;
        join.push((nstype, fd));
    }
    let restorer_pidfd = sys::pidfd_open(Pid(std::process::id() as i32))
        .map_err(terr(root, "opening a pidfd of the restorer"))?;
    let task_pidfd = restorer_pidfd.as_raw_fd() as u64;
    let gadget = restorer_gadget().map_err(terr(root, "finding our own code"))?;
    // A root that was pid 1 is the init of a pid namespace of its own: it gets a new one.
    let new_pid_ns = root == Pid(1);

    // Stage 2: the root, with its old pid, as our child.
    let deadline = Instant::now() + opts.pid_wait;
    let child = loop {
        match sys::clone3_stopped_child(root, new_pid_ns) {
            Ok(c) => break c,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(RestoreError::PidBusy(root))
            }
            Err(e) => return Err(terr(root, "clone3")(e)),
        }
    };
    let mut guard = TreeGuard {
        pids: vec![child],
        armed: true,
    };
    wait_for_sigstop(child).map_err(terr(child, "starting"))?;
    // Seccomp is put back before the last injected calls, which it must not stop: the
    // option is inherited by every task cloned from the root, and ends with the tracing.
    let under_seccomp = procs.iter().any(|p| p.seccomp.iter().any(|s| !s.is_off()));
    let options = if under_seccomp {
        TRACE_OPTIONS | sys::PTRACE_O_SUSPEND_SECCOMP
    } else {
        TRACE_OPTIONS
    };
    sys::ptrace_setoptions(child, options).map_err(terr(child, "ptrace options"))?;
    // The child held a SIGKILL for its parent's death until EXITKILL took over.
    let mut inj = Injector::new(child, gadget).map_err(terr(root, "starting injection"))?;
    inj.syscall_ok(
        "prctl",
        libc::SYS_prctl,
        [libc::PR_SET_PDEATHSIG as u64, 0, 0, 0, 0, 0],
    )
    .and_then(|_| inj.finish())
    .map_err(terr(root, "clearing its parent-death signal"))?;
    // Image pid -> our pid of the same task (they differ in a new pid namespace).
    let mut hosts: HashMap<Pid, Pid> = HashMap::new();
    hosts.insert(root, child);
    let host = |hosts: &HashMap<Pid, Pid>, p: Pid| hosts.get(&p).copied().unwrap_or(p);
    if !join.is_empty() || (new_pid_ns && opts.proc_mount.is_some()) {
        enter_namespaces(
            child,
            gadget,
            &join,
            opts.proc_mount.as_deref().filter(|_| new_pid_ns),
        )
        .map_err(terr(root, "entering its namespaces"))?;
    }
    if own_ns.uts.is_some() || own_ns.ipc.is_some() {
        let mut inj = Injector::new(child, gadget).map_err(terr(root, "starting injection"))?;
        recreate_namespaces(&mut inj, &own_ns)
            .and_then(|()| inj.finish())
            .map_err(terr(root, "recreating its UTS and IPC namespaces"))?;
    }
    if let Some(objects) = &own_ns.sysv {
        recreate_sysv(child, objects).map_err(terr(root, "recreating SysV IPC objects"))?;
    }

    // Private mappings each process holds with tree memory, for copy-on-write sharing.
    let mut cow_held: HashMap<Pid, cow::Held> = HashMap::new();
    // The rest of the tree: each process, still a copy of the restorer, puts itself in
    // its session and group, then clones its children with their old pids, so every
    // task has its real parent.
    let mut group_holders = Vec::new();
    for p in &procs {
        opts.interrupt.check()?;
        let p_host = host(&hosts, p.pid);
        let mut inj = Injector::new(p_host, gadget).map_err(terr(p.pid, "starting injection"))?;
        join_session_and_group(&mut inj, &p.entry)?;
        if p.pid == root {
            for &pgid in &leaderless {
                let holder = hold_group(&mut inj, pgid, gadget, opts.pid_wait)?;
                guard.pids.push(holder);
                group_holders.push(holder);
            }
        }
        // Memory it shares copy-on-write with its children goes in now, so that they
        // inherit it (see cow.rs).
        let inherited = cow_held.get(&p.pid).cloned().unwrap_or_default();
        let candidates = cow::candidates(p, &procs, &|v| {
            v.status & VMA_FILE_PRIVATE != 0 && opener.is_ghost(v.shmid as u32)
        });
        let held = if candidates.is_empty() {
            inherited
        } else {
            cow::prefill(
                &mut inj,
                p_host,
                p,
                &candidates,
                &inherited,
                &opts.images_dir,
                &affinity,
            )
            .map_err(terr(p.pid, "filling memory shared with its children"))?
        };
        cow_held.insert(p.pid, held.clone());
        let children = procs
            .iter()
            .filter(|c| c.pid != root)
            .map(|c| &c.entry)
            .chain(zombies.iter().map(|z| &z.entry))
            .filter(|c| c.ppid == p.entry.pid);
        for c in children {
            let c_pid = Pid(c.pid as i32);
            // A child that shares its parent's fd table is cloned sharing it; the first
            // of them to be rebuilt fills it for all (`SharedFdTable`).
            let share_files = procs
                .iter()
                .any(|o| o.pid == c_pid && o.ids.files_id == p.ids.files_id);
            let clone_flags = if share_files {
                libc::CLONE_FILES as u64
            } else {
                0
            };
            let scratch = inj.scratch(4096).map_err(terr(p.pid, "scratch memory"))?;
            inj.write(scratch + 512, &c_pid.0.to_le_bytes())
                .map_err(terr(p.pid, "writing a pid"))?;
            let mut args = Vec::new();
            for w in [
                clone_flags,
                0,
                0,
                0,
                libc::SIGCHLD as u64,
                0,
                0,
                0,
                scratch + 512,
                1,
                0,
            ] {
                args.extend_from_slice(&u64::to_le_bytes(w));
            }
            inj.write(scratch, &args)
                .map_err(terr(p.pid, "writing clone3 arguments"))?;
            let deadline = Instant::now() + opts.pid_wait;
            loop {
                match inj.syscall(libc::SYS_clone3, [scratch, args.len() as u64, 0, 0, 0, 0]) {
                    Ok(ret) if ret > 0 => {
                        // Our number for it, from the fork event (the call returned the
                        // parent's number).
                        let ours = inj
                            .last_event_msg()
                            .map_or(Pid(ret as i32), |m| Pid(m as i32));
                        hosts.insert(c_pid, ours);
                        cow_held.insert(c_pid, held.inherited());
                        break;
                    }
                    Ok(ret) if ret == -(libc::EEXIST as i64) && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Ok(ret) if ret == -(libc::EEXIST as i64) => {
                        return Err(RestoreError::PidBusy(c_pid))
                    }
                    Ok(ret) => {
                        return Err(terr(c_pid, "clone3")(std::io::Error::from_raw_os_error(
                            -ret as i32,
                        )))
                    }
                    Err(e) => return Err(terr(c_pid, "clone3")(e)),
                }
            }
            let c_host = host(&hosts, c_pid);
            guard.pids.push(c_host);
            wait_for_sigstop(c_host).map_err(terr(c_pid, "starting"))?;
            if zombies.iter().any(|z| z.pid() == c_pid) {
                // Now, not later: a group or session the zombie leads must exist before
                // the live processes that belong to it join it.
                let mut zinj =
                    Injector::new(c_host, gadget).map_err(terr(c_pid, "starting injection"))?;
                join_session_and_group(&mut zinj, c)?;
                zinj.finish().map_err(terr(c_pid, "ending injection"))?;
            }
        }
        inj.finish().map_err(terr(p.pid, "ending injection"))?;
    }

    // Zombies die now, before any live process is rebuilt: the SIGCHLD their parent gets
    // arrives while the parent still has the restorer's default (ignore) disposition,
    // and the parent's first injected call discards it; its own pending signals come
    // from the images later (stage 7).
    for z in &zombies {
        bury(z, host(&hosts, z.pid()), gadget)
            .map_err(terr(z.pid(), "turning it into a zombie"))?;
    }
    // Every member has joined: the groups live on without their holders.
    for holder in group_holders {
        release_group_holder(holder).map_err(terr(holder, "ending a process group holder"))?;
        guard.pids.retain(|&p| p != holder);
    }
    let forked = started.elapsed();
    tracing::debug!(took = ?forked, "tree forked");
    // Threads are created later, by their leader, under the same numbers inside the
    // tree's pid namespace: only a new namespace (the root was pid 1) renumbers them.
    if new_pid_ns {
        let ours: Vec<(i32, i32)> = hosts.iter().map(|(i, o)| (i.0, o.0)).collect();
        opener.set_tree_pids(ours);
    }
    // Stages 3-8 for each process; everything stays stopped until the whole tree is
    // rebuilt, so no task sees a half-built parent, child or peer.
    let mut shared = shared_anon_objects(&procs, &opts.images_dir)?;
    // The restorer creates the tree's sockets: in the tree's network namespace, the one
    // the root joined.
    let netns = match join.iter().find(|(t, _)| *t == libc::CLONE_NEWNET) {
        Some((_, ns)) => Some(
            sys::NetnsGuard::enter(ns.as_fd())
                .map_err(terr(root, "entering the tree's network namespace"))?,
        ),
        None => None,
    };
    drop(join);
    let mut thread_hosts: HashMap<Pid, Vec<Pid>> = HashMap::new();
    let mut fd_tables: HashMap<u32, SharedFdTable> = HashMap::new();
    for p in &procs {
        fd_tables.entry(p.ids.files_id).or_default().left += 1;
    }
    for p in &procs {
        let fd_table = fd_tables.entry(p.ids.files_id).or_default();
        opts.interrupt.check()?;
        let threads = rebuild(
            p,
            host(&hosts, p.pid),
            task_pidfd,
            &opts.images_dir,
            gadget,
            &mut opener,
            &mut shared,
            &affinity,
            fd_table,
            cow_held.get(&p.pid).cloned().unwrap_or_default(),
        )?;
        thread_hosts.insert(p.pid, threads);
    }
    drop(netns);
    // The opener holds the far ends of pipes and FIFOs: drop it once every task holds
    // its own, so readers see EOF exactly when they did before.
    drop(opener);
    if let Some(t) = &terminal {
        // A job that led its own group was in the foreground when dumped (a shell job
        // is dumped from the foreground, or stopped in the background: then it
        // stops again at once); one that did not goes on in the group of our parent.
        let e = &procs[0].entry;
        let group = if e.pgid == e.pid {
            Ok(Pid(e.pgid as i32))
        } else {
            sys::parent_group()
        };
        if let Err(e) = group.and_then(|g| sys::set_foreground_group(t.as_fd(), g)) {
            tracing::warn!("the restored job is not in the terminal's foreground: {e}");
        }
    }
    let mut stopped = Vec::new();
    opts.interrupt.check()?;
    // Every task as it goes (leaders first), with the signal its detach delivers.
    let mut release = Vec::new();
    for p in &procs {
        let leader = host(&hosts, p.pid);
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
    guard.armed = false;
    let stats = RestoreStats {
        forking_time: forked.as_micros() as u32,
        restore_time: started.elapsed().as_micros() as u32,
        pages_restored: procs
            .iter()
            .flat_map(|p| &p.pagemap)
            .map(|e| e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages)))
            .sum(),
    };
    write_stats(&opts.images_dir, &stats)?;
    tracing::info!(?stats, "tree restored");
    drop(restorer_pidfd);
    Ok(Restored { pid: child, stats })
}

/// Stage 1 for the CPU (`--cpu-cap`): with `fpu`, every thread's xsave components, and
/// the dumping CPU's whole set when the images describe it (cpuinfo.img), must be ones
/// this CPU enables; otherwise their state would be dropped and code chosen for them
/// would fault. `ins` and `cpu` compare CPUID words, which is not done yet: refused.
fn check_cpu(dir: &Path, procs: &[Images], cap: arch::CpuCap) -> Result<(), RestoreError> {
    if cap.ins || cap.cpu {
        let which = if cap.cpu { "cpu" } else { "ins" };
        return Err(unsupported(format!(
            "checking CPU capability `{which}` (use --cpu-cap=fpu or none)"
        )));
    }
    if !cap.fpu {
        return Ok(());
    }
    let here = arch::xfeatures_here();
    let lacking = |image: String, needed: u64| {
        let missing = needed & !here;
        if missing == 0 {
            return Ok(());
        }
        Err(RestoreError::Mismatch {
            image,
            what: format!(
                "needs xsave feature {}, which this CPU lacks (--cpu-cap=none restores \
                 without it)",
                arch::describe_xfeatures(missing)
            ),
        })
    };
    if dir.join("cpuinfo.img").exists() {
        let info: pb::CpuinfoEntry = read_one(dir, "cpuinfo.img")?;
        for x in &info.x86_entry {
            lacking("cpuinfo.img".into(), x.xfeatures_mask.unwrap_or(0))?;
        }
    }
    for p in procs {
        let threads =
            std::iter::once((p.pid, &p.core)).chain(p.threads.iter().map(|(t, c)| (*t, c)));
        for (tid, core) in threads {
            if let Some(ti) = &core.thread_info {
                lacking(
                    format!("core-{}.img", tid.0),
                    arch::xfeatures_needed(&ti.fpregs),
                )?;
            }
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

/// A queued SysV message: its type and text.
type QueuedMessage = (u64, Vec<u8>);

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
}

/// Stages 3-8 for one process; `pid` is our number for it (`img.pid` the image's, the
/// task's own), `restorer_pidfd` the task's fd number of a pidfd of ours. Returns our
/// numbers of its other threads.
#[allow(clippy::too_many_arguments)]
fn rebuild(
    img: &Images,
    pid: Pid,
    restorer_pidfd: u64,
    dir: &Path,
    gadget: u64,
    opener: &mut FileOpener,
    shared: &mut HashMap<u64, File>,
    affinity: &Affinity,
    fd_table: &mut SharedFdTable,
    cow_held: cow::Held,
) -> Result<Vec<Pid>, RestoreError> {
    // In a table filled by another process, our pidfd has moved already.
    let restorer_pidfd = fd_table.pidfd.unwrap_or(restorer_pidfd);
    let vpid = img.pid;
    let terr = |what: &str| {
        let what = what.to_owned();
        move |source| RestoreError::Task { pid, what, source }
    };
    let rebuilding = Instant::now();
    let mut inj = Injector::new(pid, gadget).map_err(terr("starting injection"))?;
    let my_maps = ProcDir::open(pid)
        .and_then(|d| d.maps_plain())
        .map_err(terr("reading the new task's maps"))?;

    // Stage 3: a work page (gadget), scratch pages, and room for batches of injected
    // calls (Injector::syscalls), free in both layouts.
    let work = free_area(&img.mm.vmas, &my_maps, WORK_AREA)
        .ok_or_else(|| terr("finding room")(std::io::Error::other("no free area")))?;
    let rwx = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
    inj.syscall_ok(
        "mmap work area",
        libc::SYS_mmap,
        [work, WORK_AREA, rwx, anon, u64::MAX, 0],
    )
    .map_err(terr("mapping the work area"))?;
    inj.retarget(work, false)
        .map_err(terr("moving the gadget"))?;
    inj.set_scratch(work + PAGE, 3 * PAGE);
    inj.set_batch_room(work + 4 * PAGE, WORK_AREA - 4 * PAGE);
    let scratch = work + PAGE;
    let all_signals = [u64::MAX];
    inj.write(scratch, &all_signals[0].to_le_bytes())
        .map_err(terr("writing scratch"))?;
    inj.syscall_ok(
        "rt_sigprocmask",
        libc::SYS_rt_sigprocmask,
        [libc::SIG_SETMASK as u64, scratch, 0, 8, 0, 0],
    )
    .map_err(terr("blocking signals"))?;
    let rseq = sys::ptrace_get_rseq(pid).map_err(terr("reading rseq"))?;
    if rseq.abi_pointer != 0 {
        inj.syscall_ok(
            "rseq unregister",
            libc::SYS_rseq,
            [
                rseq.abi_pointer,
                u64::from(rseq.abi_size),
                1,
                u64::from(rseq.signature),
                0,
                0,
            ],
        )
        .map_err(terr("unregistering rseq"))?;
    }
    let current = ProcDir::open(pid)
        .and_then(|d| d.maps_plain())
        .map_err(terr("reading the new task's maps"))?;
    // Mappings that hold its memory already, shared with its parent: kept (cow.rs).
    let kept = cow::kept(img, &cow_held.vmas, &current);
    for m in &current {
        let special = matches!(
            m.path.as_str(),
            "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]"
        );
        if m.start == work || special || kept.contains(&(m.start, m.end)) {
            continue;
        }
        inj.syscall_ok(
            "munmap",
            libc::SYS_munmap,
            [m.start, m.end - m.start, 0, 0, 0, 0],
        )
        .map_err(terr("unmapping the restorer"))?;
    }

    tracing::debug!(%pid, took = ?rebuilding.elapsed(), "before stage 4");
    // Stage 4: the vDSO and its data pages, at their dumped distances.
    let dumped_vvar = img
        .mm
        .vmas
        .iter()
        .find(|v| v.status & VMA_AREA_VVAR != 0)
        .map(|v| v.start);
    let dumped_vdso = img
        .mm
        .vmas
        .iter()
        .find(|v| v.status & VMA_AREA_VDSO != 0)
        .map(|v| v.start);
    let specials: Vec<_> = current
        .iter()
        .filter(|m| matches!(m.path.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]"))
        .collect();
    // With a proxy, this kernel's vDSO and its data go out of the dumped layout's way
    // (stage 5 puts the dumped vDSO's bytes at its address).
    let mut live_vdso = None;
    if img.vdso_proxy.is_some() {
        let base = specials.iter().map(|m| m.start).min().unwrap_or(0);
        let total = specials.iter().map(|m| m.end).max().unwrap_or(base) - base;
        let aside = free_area(&img.mm.vmas, &current, total).ok_or_else(|| {
            terr("finding room")(std::io::Error::other("no room for this kernel's vDSO"))
        })?;
        let vdso = specials
            .iter()
            .find(|m| m.path == "[vdso]")
            .ok_or_else(|| {
                terr("finding this kernel's vDSO")(std::io::Error::other("no [vdso] mapping"))
            })?;
        move_block(&mut inj, &specials, base, aside).map_err(terr("moving the vDSO"))?;
        live_vdso = Some(aside + (vdso.start - base));
    } else if let (Some(dvvar), Some(dvdso)) = (dumped_vvar, dumped_vdso) {
        let base = specials.iter().map(|m| m.start).min().unwrap_or(0);
        let cur_vdso = specials
            .iter()
            .find(|m| m.path == "[vdso]")
            .map(|m| m.start)
            .unwrap_or(0);
        if cur_vdso - base != dvdso - dvvar {
            return Err(unsupported(
                "a vDSO laid out differently from this kernel's",
            ));
        }
        let total = specials.iter().map(|m| m.end).max().unwrap_or(base) - base;
        let overlaps = |a: u64| a < base + total && base < a + total;
        let mut from = base;
        if overlaps(dvvar) && dvvar != base {
            // Through a temporary spot, so no move lands on a mapping still to move.
            let tmp = free_area(&img.mm.vmas, &current, total).ok_or_else(|| {
                terr("finding room")(std::io::Error::other("no room to move the vDSO"))
            })?;
            move_block(&mut inj, &specials, from, tmp).map_err(terr("moving the vDSO"))?;
            from = tmp;
        }
        if from != dvvar {
            move_block(&mut inj, &specials, from, dvvar).map_err(terr("moving the vDSO"))?;
        }
    }
    // A task that had unmapped its vDSO (or its data pages) gets none: the restorer's
    // copies go.
    for m in &specials {
        let dumped = if m.path == "[vdso]" {
            dumped_vdso
        } else {
            dumped_vvar
        };
        if dumped.is_none() {
            inj.syscall_ok(
                "munmap",
                libc::SYS_munmap,
                [m.start, m.end - m.start, 0, 0, 0, 0],
            )
            .map_err(terr(&format!("unmapping {}", m.path)))?;
        }
    }

    tracing::debug!(%pid, took = ?rebuilding.elapsed(), "before stage 5");
    // Stage 5: mappings, pages, protections.
    //
    // Adjacent private anonymous mappings that were separate VMAs must stay separate (the
    // /proc view is part of what is restored), but the kernel merges a new mapping into a
    // compatible neighbour. So while filling, every other one also gets PROT_EXEC, which
    // keeps them apart; once each holds its own pages (its own anon_vma) the final
    // mprotect cannot merge them either.
    let mut opened: Vec<(u64, u64)> = Vec::new();
    let mut mmaps: Vec<(String, i64, [u64; 6])> = Vec::new();
    let mut file_maps: Vec<(PathBuf, i32, [u64; 6])> = Vec::new();
    let mut previous_end = 0;
    let mut alternate = false;
    for v in &img.mm.vmas {
        if v.status & VMA_AREA_VDSO != 0 && img.vdso_proxy.is_some() {
            // The dumped vDSO's bytes, as ordinary memory, writable until its entry
            // points are redirected.
            let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
            let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED) as u64;
            mmaps.push((
                format!("mmap (vDSO proxy at {:#x})", v.start),
                libc::SYS_mmap,
                [v.start, v.end - v.start, rw, anon, u64::MAX, 0],
            ));
            continue;
        }
        if v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL) != 0 {
            continue;
        }
        let len = v.end - v.start;
        alternate = v.start == previous_end && !alternate;
        previous_end = v.end;
        let apart = if alternate { libc::PROT_EXEC as u64 } else { 0 };
        let fill_prot = u64::from(v.prot) | (libc::PROT_READ | libc::PROT_WRITE) as u64 | apart;
        // File and memfd mappings: shared ones get their final protection at once (their
        // pages are never filled), private ones stay writable while their pages are.
        let file_prot = if v.status & VMA_FILE_SHARED != 0 {
            u64::from(v.prot)
        } else {
            fill_prot
        };
        if kept.contains(&(v.start, v.end)) {
            // Already there: only its protection for the filling, in turn with the
            // others so that neighbours stay apart.
            mmaps.push((
                format!("mprotect (kept memory at {:#x})", v.start),
                libc::SYS_mprotect,
                [v.start, len, fill_prot, 0, 0, 0],
            ));
            continue;
        }
        let writable = v.fdflags.unwrap_or(0) & libc::O_ACCMODE as u32 == libc::O_RDWR as u32;
        // Locked mappings are locked once filled (below): MAP_LOCKED would populate
        // them now, before their pages are copied in.
        let flags = u64::from(v.flags & !(libc::MAP_LOCKED as u32)) | libc::MAP_FIXED as u64;
        // A deleted file is recreated from its ghost image by the opener, as a memfd is.
        let ghost =
            v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 && opener.is_ghost(v.shmid as u32);
        if v.status & VMA_AREA_MEMFD != 0 || ghost {
            // A memfd (or shared anonymous memory CRIU saved as one): the opener rebuilds
            // the object with its contents; every task maps that one object.
            let object = opener.open(v.shmid as u32, &[])?.as_raw_fd();
            // The mapping needs the access mode it was mapped with (a writable shared
            // mapping needs O_RDWR), which the file entry's own open may not have: map
            // through a fresh open of the same object.
            let reopened = File::options()
                .read(true)
                .write(writable)
                .open(format!("/proc/self/fd/{object}"))
                .map_err(terr("reopening a memfd"))?;
            let fd = give_fd(&mut inj, restorer_pidfd, reopened.as_raw_fd())
                .map_err(terr("passing a memfd"))?;
            map_task_fd(&mut inj, v, file_prot, flags, fd)
                .map_err(terr(&format!("mapping a memfd at {:#x}", v.start)))?;
        } else if v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 {
            let path = img.files[&(v.shmid as u32)]
                .reg
                .as_ref()
                .map(|r| r.path().to_owned())
                .unwrap_or_default();
            let mode = if writable {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            };
            // Opened once per mapping: two neighbouring mappings of one open file with
            // consecutive offsets would merge into one VMA.
            file_maps.push((path, mode, [v.start, len, file_prot, flags, 0, v.pgoff]));
        } else if v.status & VMA_ANON_SHARED != 0 {
            // Shared anonymous memory: every task maps the one object made and filled
            // beforehand (`shared_anon_objects`), at the mapping's offset in it.
            let prot = u64::from(v.prot);
            let object = shared.get(&v.shmid).ok_or_else(|| RestoreError::BadImage {
                image: format!("mm-{}.img", vpid.0),
                what: format!(
                    "shared memory {} at {:#x} was not prepared",
                    v.shmid, v.start
                ),
            })?;
            let fd = give_fd(&mut inj, restorer_pidfd, object.as_raw_fd())
                .map_err(terr("passing shared memory"))?;
            let through_fd = flags & !(libc::MAP_ANONYMOUS as u64);
            map_task_fd(&mut inj, v, prot, through_fd, fd)
                .map_err(terr(&format!("mapping shared memory at {:#x}", v.start)))?;
        } else {
            mmaps.push((
                format!("mmap (anonymous at {:#x})", v.start),
                libc::SYS_mmap,
                [v.start, len, fill_prot, flags, u64::MAX, 0],
            ));
        }
        opened.push((v.start, v.end));
    }
    // The private anonymous mappings in one batch of injected calls; then the file
    // mappings in rounds: one batch opens the files (paths side by side in the scratch
    // area, and few enough to stay within any fd limit), one maps and closes them.
    inj.syscalls_ok(&mmaps).map_err(terr("mapping memory"))?;
    let mut rest = &file_maps[..];
    while !rest.is_empty() {
        let (paths, opens) = open_round(rest, scratch).map_err(|path| {
            terr(&format!("opening {path}"))(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG))
        })?;
        inj.write(scratch, &paths)
            .map_err(terr("writing the paths of mapped files"))?;
        let fds = inj
            .syscalls_ok(&opens)
            .map_err(terr("opening mapped files"))?;
        let (round, later) = rest.split_at(fds.len());
        let mut calls = Vec::with_capacity(2 * fds.len());
        for ((path, _, args), &fd) in round.iter().zip(&fds) {
            let mut args = *args;
            args[4] = fd;
            let what = format!("mmap ({} at {:#x})", path.display(), args[0]);
            calls.push((what, libc::SYS_mmap, args));
        }
        for &fd in &fds {
            let what = "close (a mapped file)".to_string();
            calls.push((what, libc::SYS_close, [fd, 0, 0, 0, 0, 0]));
        }
        inj.syscalls_ok(&calls).map_err(terr("mapping files"))?;
        rest = later;
    }
    let pages = File::open(dir.join(format!("pages-{}.img", img.pages_id)))
        .map_err(terr("opening the pages image"))?;
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{}/mem", pid.0))
        .map_err(terr("opening task memory"))?;
    // Fresh anonymous memory is filled through a userfaultfd of the task: UFFDIO_COPY
    // allocates and fills each page in one step (a plain write first zeroes it).
    let uffd = task_userfaultfd(&mut inj, pid);
    let mut registered = Vec::new();
    if let Some(u) = &uffd {
        for v in img
            .mm
            .vmas
            .iter()
            .filter(|v| v.status & VMA_ANON_PRIVATE != 0)
        {
            if v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL) == 0
                && !kept.contains(&(v.start, v.end))
                && u.register_missing(v.start, v.end - v.start).is_ok()
            {
                registered.push((v.start, v.end));
            }
        }
    }
    let fast = uffd.as_ref().map(|u| (u, registered.as_slice()));
    let filling = Instant::now();
    // Not written: kept memory (filled below), and droppable memory, which the kernel
    // may empty at any time and a restore empties as CRIU's does (it saves none of it).
    let skip: Vec<(u64, u64)> = img
        .mm
        .vmas
        .iter()
        .filter(|v| v.flags & MAP_TYPE == crate::dump::mm::MAP_DROPPABLE as u32)
        .map(|v| (v.start, v.end))
        .chain(kept.iter().copied())
        .collect();
    fill_pages(pid, &img.pagemap, &pages, &mem, affinity, fast, &skip).map_err(|e| match e {
        FillError::Image(what) => RestoreError::BadImage {
            image: format!("pages-{}.img", img.pages_id),
            what,
        },
        FillError::Task(source) => terr("filling pages")(source),
    })?;
    // Kept memory that is not its own yet (inherited) gets its differing pages.
    let inherited: Vec<(u64, u64)> = kept
        .iter()
        .filter(|r| !cow_held.own.contains(r))
        .copied()
        .collect();
    cow::fill_differing(pid, &img.pagemap, &pages, &inherited, true)
        .and_then(|()| cow::drop_unsaved(&mut inj, &img.pagemap, &inherited))
        .map_err(terr("filling memory shared with its parent"))?;
    tracing::debug!(%pid, took = ?filling.elapsed(), "pages filled");
    if let Some(u) = &uffd {
        for &(start, end) in &registered {
            u.unregister(start, end - start)
                .map_err(terr("unregistering the userfaultfd"))?;
        }
    }
    drop(uffd);
    for v in &img.mm.vmas {
        if v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL | VMA_FILE_SHARED) != 0 {
            continue;
        }
        inj.syscall_ok(
            "mprotect",
            libc::SYS_mprotect,
            [v.start, v.end - v.start, u64::from(v.prot), 0, 0, 0],
        )
        .map_err(terr(&format!("protecting {:#x}", v.start)))?;
    }
    if let (Some(proxy), Some(live)) = (&img.vdso_proxy, live_vdso) {
        redirect_vdso(&mut inj, proxy, live).map_err(terr("redirecting the old vDSO"))?;
    }
    lock_mappings(&mut inj, &img.mm.vmas).map_err(terr("locking memory"))?;
    // madvise(2) advice recorded per VMA (MADV_DONTFORK, DONTDUMP, HUGEPAGE...): it is
    // part of the VMA, and VMAs differing in it were separate ones.
    for v in &img.mm.vmas {
        let madv = v.madv.unwrap_or(0);
        if madv == 0 || v.status & (VMA_AREA_VVAR | VMA_AREA_VSYSCALL | VMA_AREA_VDSO) != 0 {
            continue;
        }
        for advice in (0..64u64).filter(|a| madv & (1 << a) != 0) {
            inj.syscall_ok(
                "madvise",
                libc::SYS_madvise,
                [v.start, v.end - v.start, advice, 0, 0, 0],
            )
            .map_err(terr(&format!("advice {advice} for {:#x}", v.start)))?;
        }
    }

    tracing::debug!(%pid, took = ?rebuilding.elapsed(), "before stage 6");
    // Stage 6: files, cwd, umask.
    let pidfd = match fd_table.pidfd {
        Some(pidfd) => pidfd,
        None => {
            let pidfd = restore_fd_table(&mut inj, img, pid, restorer_pidfd, scratch, opener)?;
            fd_table.pidfd = Some(pidfd);
            pidfd
        }
    };
    fd_table.left = fd_table.left.saturating_sub(1);
    let last_of_table = fd_table.left == 0;
    let cwd_name = img
        .files
        .get(&img.fs.cwd_id)
        .and_then(|f| f.reg.as_ref())
        .map(|r| r.path().to_owned())
        .unwrap_or_else(|| "/".into());
    let cwd = open_in_task(
        &mut inj,
        scratch,
        &cwd_name,
        libc::O_RDONLY | libc::O_DIRECTORY,
    )
    .map_err(terr(&format!("opening cwd {}", cwd_name.display())))?;
    inj.syscall_ok("fchdir", libc::SYS_fchdir, [cwd, 0, 0, 0, 0, 0])
        .map_err(terr("changing directory"))?;
    inj.syscall_ok("close", libc::SYS_close, [cwd, 0, 0, 0, 0, 0])
        .map_err(terr("changing directory"))?;
    if let Some(umask) = img.fs.umask {
        inj.syscall_ok("umask", libc::SYS_umask, [u64::from(umask), 0, 0, 0, 0, 0])
            .map_err(terr("umask"))?;
    }

    tracing::debug!(%pid, took = ?rebuilding.elapsed(), "before stage 7");
    // Stage 7: process state. loginuid and the THP switch first (see attrs.rs).
    attrs::set_loginuid(&mut inj, pid, img.tc.loginuid, scratch).map_err(terr("loginuid"))?;
    attrs::set_thp_disabled(&mut inj, img.mm.thp_disabled).map_err(terr("the THP switch"))?;
    attrs::set_child_subreaper(&mut inj, img.tc.child_subreaper)
        .map_err(terr("the child subreaper flag"))?;
    attrs::set_membarrier(&mut inj, img.tc.membarrier_registration_mask)
        .map_err(terr("the membarrier registrations"))?;
    // Handlers and itimers go in at once: each struct at its own place in the scratch
    // area, then one batch of calls.
    let mut raw = Vec::with_capacity(32 * 62 + 96);
    let mut calls: Vec<(String, i64, [u64; 6])> = Vec::new();
    let mut sig = 0u64;
    for sa in &img.tc.sigactions {
        sig += 1;
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            sig += 1;
        }
        if sig > 64 {
            return Err(RestoreError::BadImage {
                image: format!("core-{}.img", vpid.0),
                what: "has more than 62 signal handlers".into(),
            });
        }
        let at = raw.len() as u64;
        for w in [sa.sigaction, sa.flags, sa.restorer, sa.mask] {
            raw.extend_from_slice(&w.to_le_bytes());
        }
        calls.push((
            format!("rt_sigaction (handler of signal {sig})"),
            libc::SYS_rt_sigaction,
            [sig, scratch + at, 0, 8, 0, 0],
        ));
    }
    if let Some(t) = &img.tc.timers {
        for (which, it) in [&t.real, &t.virt, &t.prof].into_iter().enumerate() {
            let at = raw.len() as u64;
            for w in [it.isec, it.iusec, it.vsec, it.vusec] {
                raw.extend_from_slice(&w.to_le_bytes());
            }
            calls.push((
                "setitimer".to_string(),
                libc::SYS_setitimer,
                [which as u64, scratch + at, 0, 0, 0, 0],
            ));
        }
    }
    inj.write(scratch, &raw)
        .map_err(terr("writing handlers and itimers"))?;
    inj.syscalls_ok(&calls)
        .map_err(terr("setting handlers and itimers"))?;
    if let Some(limits) = &img.tc.rlimits {
        let mut raw = Vec::with_capacity(16 * limits.rlimits.len());
        let mut calls = Vec::with_capacity(limits.rlimits.len());
        for (res, l) in limits.rlimits.iter().enumerate() {
            let at = raw.len() as u64;
            raw.extend_from_slice(&l.cur.to_le_bytes());
            raw.extend_from_slice(&l.max.to_le_bytes());
            calls.push((libc::SYS_prlimit64, [0, res as u64, scratch + at, 0, 0, 0]));
        }
        inj.write(scratch, &raw)
            .map_err(terr("writing the limits"))?;
        // Raising a hard limit needs CAP_SYS_RESOURCE, which these machines lack; a
        // limit that cannot be set stays as inherited.
        let results = inj.syscalls(&calls).map_err(terr("setting the limits"))?;
        for (res, ret) in results.into_iter().enumerate() {
            if let Err(e) = inj.check_result("prlimit64", ret) {
                tracing::warn!(%pid, resource = res, "rlimit not restored: {e}");
            }
        }
    }
    let mut comm = img.tc.comm.clone();
    comm.truncate(15);
    comm.push(0);
    inj.write(scratch, &comm)
        .map_err(terr("writing the name"))?;
    inj.syscall_ok(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        [libc::PR_SET_NAME as u64, scratch, 0, 0, 0, 0],
    )
    .map_err(terr("name"))?;
    inj.syscall_ok(
        "personality",
        libc::SYS_personality,
        [u64::from(img.tc.personality), 0, 0, 0, 0, 0],
    )
    .map_err(terr("personality"))?;

    let exe_name = img
        .files
        .get(&img.mm.exe_file_id)
        .and_then(|f| f.reg.as_ref())
        .map(|r| r.path().to_owned())
        .unwrap_or_default();
    let exe = open_in_task(&mut inj, scratch, &exe_name, libc::O_RDONLY)
        .map_err(terr(&format!("opening exe {}", exe_name.display())))?;
    let auxv: Vec<u8> = img
        .mm
        .mm_saved_auxv
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let auxv_at = scratch + PAGE;
    inj.write(auxv_at, &auxv).map_err(terr("writing auxv"))?;
    let m = &img.mm;
    let mut map = Vec::new();
    for w in [
        m.mm_start_code,
        m.mm_end_code,
        m.mm_start_data,
        m.mm_end_data,
        m.mm_start_brk,
        m.mm_brk,
        m.mm_start_stack,
        m.mm_arg_start,
        m.mm_arg_end,
        m.mm_env_start,
        m.mm_env_end,
        auxv_at,
    ] {
        map.extend_from_slice(&w.to_le_bytes());
    }
    map.extend_from_slice(&(auxv.len() as u32).to_le_bytes());
    map.extend_from_slice(&(exe as u32).to_le_bytes());
    inj.write(scratch, &map)
        .map_err(terr("writing the mm map"))?;
    const PR_SET_MM: u64 = 35;
    const PR_SET_MM_MAP: u64 = 14;
    inj.syscall_ok(
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        [PR_SET_MM, PR_SET_MM_MAP, scratch, map.len() as u64, 0, 0],
    )
    .map_err(terr("mm fields"))?;
    inj.syscall_ok("close", libc::SYS_close, [exe, 0, 0, 0, 0, 0])
        .map_err(terr("exe"))?;
    if last_of_table {
        inj.syscall_ok("close", libc::SYS_close, [pidfd, 0, 0, 0, 0, 0])
            .map_err(terr("pidfd"))?;
    }
    thread_state(
        &mut inj,
        vpid,
        vpid,
        &img.ti,
        img.core.thread_core.as_ref(),
        scratch,
    )
    .map_err(terr("thread state"))?;
    // Process-wide pending signals, queued by the task to itself.
    for q in img.tc.signals_s.iter() {
        for sig in &q.signals {
            let signo = u32::from_le_bytes(
                sig.siginfo
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or_default(),
            );
            inj.write(scratch, &sig.siginfo)
                .map_err(terr("writing a pending signal"))?;
            inj.syscall_ok(
                "rt_sigqueueinfo",
                libc::SYS_rt_sigqueueinfo,
                [vpid.0 as u64, u64::from(signo), scratch, 0, 0, 0],
            )
            .map_err(terr(&format!("pending signal {signo}")))?;
        }
    }

    // The other threads: cloned by the leader with their old tids (they start at the
    // gadget's int3 and, traced through PTRACE_O_TRACECLONE, stop before running),
    // then given their own per-thread state by injection in themselves.
    let mut thread_hosts = Vec::with_capacity(img.threads.len());
    for ((tid, core), seccomp) in img.threads.iter().zip(&img.seccomp[1..]) {
        let ti = core
            .thread_info
            .as_ref()
            .ok_or_else(|| RestoreError::BadImage {
                image: format!("core-{}.img", tid.0),
                what: "has no x86 thread info".into(),
            })?;
        let flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM) as u64;
        let tids_at = scratch + 512;
        inj.write(tids_at, &tid.0.to_le_bytes())
            .map_err(terr("writing a tid"))?;
        let mut args = Vec::new();
        for w in [flags, 0, 0, 0, 0, 0, 0, 0, tids_at, 1, 0] {
            args.extend_from_slice(&u64::to_le_bytes(w));
        }
        inj.write(scratch, &args)
            .map_err(terr("writing clone3 arguments"))?;
        inj.syscall_ok(
            "clone3 (thread)",
            libc::SYS_clone3,
            [scratch, args.len() as u64, 0, 0, 0, 0],
        )
        .map_err(terr(&format!("creating thread {tid}")))?;
        // Our number for the thread, from the clone event (the tid it has is its own).
        let ours = inj.last_event_msg().map_or(*tid, |m| Pid(m as i32));
        thread_hosts.push(ours);
        match sys::wait_timeout(ours, Duration::from_secs(5))
            .map_err(terr("waiting for a new thread"))?
        {
            WaitStatus::Stopped { .. } => {}
            other => {
                return Err(terr("starting a thread")(std::io::Error::other(format!(
                    "{other:?}"
                ))))
            }
        }
        let mut tinj = Injector::new(ours, work).map_err(terr("injecting into a thread"))?;
        tinj.set_scratch(scratch + PAGE, 2 * PAGE);
        thread_state(
            &mut tinj,
            *tid,
            vpid,
            ti,
            core.thread_core.as_ref(),
            scratch + PAGE,
        )
        .map_err(terr(&format!("state of thread {tid}")))?;
        attrs::install_seccomp_filters(&mut tinj, seccomp)
            .map_err(terr(&format!("seccomp filters of thread {tid}")))?;
        if let Some(creds) = core.thread_core.as_ref().and_then(|t| t.creds.as_ref()) {
            set_creds(&mut tinj, creds, scratch + PAGE)
                .map_err(terr(&format!("credentials of thread {tid}")))?;
        }
        attrs::set_pdeath_signal(&mut tinj, core.thread_core.as_ref())
            .map_err(terr(&format!("parent-death signal of thread {tid}")))?;
        attrs::enter_seccomp_strict(&mut tinj, seccomp)
            .map_err(terr(&format!("seccomp strict mode of thread {tid}")))?;
        tinj.abandon();
        let mask = core
            .thread_core
            .as_ref()
            .and_then(|t| t.blk_sigset)
            .unwrap_or(0);
        set_final_registers(ours, ti, mask).map_err(terr(&format!("registers of thread {tid}")))?;
    }

    // POSIX timers, once every thread a timer may notify exists: created with their
    // old ids (PR_TIMER_CREATE_RESTORE_IDS, Linux 6.16) and armed with the time left.
    let posix = img
        .tc
        .timers
        .as_ref()
        .map(|t| t.posix.as_slice())
        .unwrap_or_default();
    if !posix.is_empty() {
        const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
        inj.syscall_ok(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
            libc::SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0],
        )
        .map_err(terr("asking for timer ids"))?;
        for t in posix {
            let mut sev = vec![0u8; 64];
            sev[0..8].copy_from_slice(&t.sival_ptr.to_le_bytes());
            sev[8..12].copy_from_slice(&(t.si_signo as i32).to_le_bytes());
            sev[12..16].copy_from_slice(&(t.it_sigev_notify as i32).to_le_bytes());
            sev[16..20].copy_from_slice(&t.notify_thread_id.unwrap_or(0).to_le_bytes());
            inj.write(scratch, &sev).map_err(terr("writing a timer"))?;
            inj.write(scratch + 128, &(t.it_id as i32).to_le_bytes())
                .map_err(terr("writing a timer"))?;
            let clock = u64::from(t.clock_id);
            inj.syscall_ok(
                "timer_create",
                libc::SYS_timer_create,
                [clock, scratch, scratch + 128, 0, 0, 0],
            )
            .map_err(terr(&format!("creating POSIX timer {}", t.it_id)))?;
            let mut its = Vec::new();
            for w in [t.isec, t.insec, t.vsec, t.vnsec] {
                its.extend_from_slice(&w.to_le_bytes());
            }
            inj.write(scratch + 256, &its)
                .map_err(terr("writing a timer"))?;
            let id = u64::from(t.it_id);
            inj.syscall_ok(
                "timer_settime",
                libc::SYS_timer_settime,
                [id, 0, scratch + 256, 0, 0, 0],
            )
            .map_err(terr(&format!("arming POSIX timer {}", t.it_id)))?;
        }
        inj.syscall_ok(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
            libc::SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0],
        )
        .map_err(terr("asking for timer ids"))?;
    }

    // The leader's seccomp filters, now that its threads exist (they would inherit
    // them), and while it may still install them.
    attrs::install_seccomp_filters(&mut inj, &img.seccomp[0]).map_err(terr("seccomp filters"))?;
    // Credentials last: once they drop, nothing but us (root) can trace or change the
    // task, and nothing can attach to it half-built.
    if let Some(creds) = img.core.thread_core.as_ref().and_then(|t| t.creds.as_ref()) {
        set_creds(&mut inj, creds, scratch).map_err(terr("credentials"))?;
    }
    attrs::set_pdeath_signal(&mut inj, img.core.thread_core.as_ref())
        .map_err(terr("parent-death signal"))?;
    attrs::set_dumpable(&mut inj, img.mm.dumpable).map_err(terr("the dumpable flag"))?;
    attrs::enter_seccomp_strict(&mut inj, &img.seccomp[0]).map_err(terr("seccomp strict mode"))?;

    tracing::debug!(%pid, took = ?rebuilding.elapsed(), "before stage 8");
    // Stage 8: drop the work page, then the dumped registers.
    inj.last_syscall(libc::SYS_munmap, [work, WORK_AREA, 0, 0, 0, 0])
        .map_err(terr("removing the work area"))?;
    let mask = img
        .core
        .thread_core
        .as_ref()
        .and_then(|t| t.blk_sigset)
        .unwrap_or(img.tc.blk_sigset);
    set_final_registers(pid, &img.ti, mask).map_err(terr("setting registers"))?;
    // From outside, once nothing more runs in the task: scheduling (a real-time policy
    // would only slow the injection down) and oom_score_adj.
    attrs::set_sched(pid, img.core.thread_core.as_ref()).map_err(terr("scheduling"))?;
    for ((tid, core), ours) in img.threads.iter().zip(&thread_hosts) {
        attrs::set_sched(*ours, core.thread_core.as_ref())
            .map_err(terr(&format!("scheduling of thread {tid}")))?;
    }
    attrs::set_oom_score_adj(pid, img.tc.oom_score_adj).map_err(terr("oom_score_adj"))?;
    let _ = opened;
    Ok(thread_hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> (PathBuf, i32, [u64; 6]) {
        (PathBuf::from(path), libc::O_RDONLY, [0; 6])
    }

    #[test]
    fn sigaltstack_is_the_dumped_one_or_explicitly_none() {
        let sas = |ss_sp, ss_size, ss_flags| pb::ThreadSasEntry {
            ss_sp,
            ss_size,
            ss_flags,
        };
        let none = sas(0, 0, libc::SS_DISABLE as u32);
        assert_eq!(
            sigaltstack_for(None),
            none,
            "no record: none, not inherited"
        );
        assert_eq!(sigaltstack_for(Some(&none)), none);
        let autodisarm = sas(0x7000_0000, 0x10000, 1 << 31);
        assert_eq!(sigaltstack_for(Some(&autodisarm)), autodisarm);
        // Dumped while on it: the same stack, armed.
        let on_it = sas(0x7000_0000, 0x10000, libc::SS_ONSTACK as u32);
        assert_eq!(sigaltstack_for(Some(&on_it)), sas(0x7000_0000, 0x10000, 0));
        let raw = stack_t_bytes(&autodisarm);
        assert_eq!(raw.len(), 24);
        assert_eq!(&raw[8..16], &[0, 0, 0, 0x80, 0, 0, 0, 0]);
    }

    #[test]
    fn file_mappings_are_opened_in_rounds_that_fit() {
        let scratch = 0x10_0000;
        // Many short paths: a round stops at FILES_PER_ROUND files.
        let many: Vec<_> = (0..150).map(|i| file(&format!("/lib/x{i}.so"))).collect();
        let (paths, opens) = open_round(&many, scratch).unwrap();
        assert_eq!(opens.len(), FILES_PER_ROUND);
        let first = paths.iter().position(|&b| b == 0).unwrap();
        assert_eq!(&paths[..first], b"/lib/x0.so");
        assert_eq!(
            opens[1].2[1],
            scratch + first as u64 + 1,
            "paths side by side"
        );
        assert_eq!(opens[0].1, libc::SYS_openat);
        // Long paths: a round stops before the scratch area overflows.
        let long = "/".to_string() + &"d".repeat(4000);
        let big = vec![file(&long), file(&long), file(&long), file(&long)];
        let (paths, opens) = open_round(&big, scratch).unwrap();
        assert_eq!(opens.len(), 3);
        assert!(paths.len() <= SCRATCH_BYTES);
        // A path that can never fit is named.
        let huge = "/".to_string() + &"d".repeat(SCRATCH_BYTES);
        assert_eq!(open_round(&[file(&huge)], scratch).unwrap_err(), huge);
        // A path that is not UTF-8 is opened by its bytes.
        use std::os::unix::ffi::OsStrExt;
        let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/dir-\xff\xfe/lib.so"));
        let (paths, _) = open_round(&[(odd, libc::O_RDONLY, [0; 6])], scratch).unwrap();
        assert_eq!(paths, b"/dir-\xff\xfe/lib.so\0");
    }
}
