//! Stage 1: every image of the tree loaded and checked, and what this restore cannot
//! rebuild refused, before any process exists. A refusal here has created nothing but
//! what the restorer holds (the tree's ptys, made last, unless they are those of the
//! tree's own mount namespace), which goes with it.

use super::*;
use crate::netlock::{LockMethod, NetworkLock};

/// What stage 1 hands on: the tree, checked, and what the restorer made ready for it.
pub(super) struct Checked {
    /// Every live process, parents before children.
    pub(super) procs: Vec<Images>,
    pub(super) zombies: Vec<Zombie>,
    /// Opens every file of the tree for the tasks (stage 6), checked against them.
    pub(super) opener: FileOpener,
    pub(super) own_ns: OwnNamespaces,
    /// The tree's own user namespace, made first (`userns.rs`).
    pub(super) user_ns: Option<super::userns::UserNs>,
    /// The clocks the tree's new time namespace starts from (`timens.rs`).
    pub(super) time_ns: Option<crate::timens::Clocks>,
    /// The SysV shared memory segments of the tree's IPC namespace.
    pub(super) sysv_shm: Option<super::sysvshm::Segments>,
    /// Groups whose leader is gone, held while their members join them (`hold_group`),
    /// and sessions whose leader is gone, made again by a helper of the root.
    pub(super) leaderless: super::tree::Leaderless,
    /// `--shell-job`: our terminal, which the job gets for its foreground when it was
    /// in our session.
    pub(super) terminal: Option<OwnedFd>,
    /// The network lock the dump left on the tree's TCP connections, to lift once the
    /// tree is rebuilt (or when a later stage fails).
    pub(super) netlock: Option<NetworkLock>,
    /// The ptys that are controlling terminals of sessions of the tree, made already
    /// (`FileOpener::make_ptys`; for a tree with a mount namespace of its own, once
    /// the root has built it, in stage 2), given in stage 2 (`tree.rs`).
    pub(super) terminals: Vec<files::ControllingTerminal>,
    /// The tree's own network namespace, made anew (not joined): the root enters it.
    pub(super) new_net: Option<std::fs::File>,
}

/// Stage 1: loads the tree's images and checks them, its files and this CPU and kernel
/// against what the restore can rebuild.
pub(super) fn check(opts: &RestoreOptions) -> Result<Checked, RestoreError> {
    let (mut procs, mut zombies) = load_tree(&opts.images_dir)?;
    check_cpu(&opts.images_dir, &procs, opts.cpu_cap)?;
    for p in &mut procs {
        let ips: Vec<u64> = std::iter::once(&p.core)
            .chain(p.threads.iter().map(|(_, c)| c))
            .filter_map(|c| c.thread_info.as_ref().map(|t| t.gpregs.ip))
            .collect();
        p.vdso_proxy = vdso::check(p.pages.bytes(), &p.mm, &p.pagemap, p.pages_id, &ips)?;
    }
    for (kind, _) in &opts.join_ns {
        if ns_type(kind).is_none() {
            return Err(unsupported(format!("joining a {kind} namespace")));
        }
    }
    let mut opener = FileOpener::load(&opts.images_dir)?;
    opener.set_root(opts.root.clone());
    opener.set_ext_unix_sk(opts.ext_unix_sk);
    opener.set_file_locks(opts.file_locks);
    opener.set_tcp(opts.tcp_established, opts.tcp_close);
    if opts.orphan_pts_master {
        if !opts.notify.is_set() {
            return Err(unsupported(
                "orphan_pts_master without a caller to take the new pty's master (it is \
                 sent with the orphan-pts-master notification of the RPC)"
                    .to_owned(),
            ));
        }
        opener.make_orphan_ptys();
    }
    for (key, fd) in &opts.inherit_fds {
        opener.inherit(key, *fd)?;
    }
    let mut own_ns = load_own_namespaces(
        &opts.images_dir,
        &procs[0],
        opener.root_ids(),
        &opts.join_ns,
    )?;
    let user_ns = super::userns::load(
        &opts.images_dir,
        &procs,
        zombies.len(),
        opener.root_ids(),
        &opts.join_ns,
    )?;
    own_ns.mounts = super::mounts::load(opts, &procs[0], opener.root_ids())?;
    if let Some(m) = &own_ns.mounts {
        opener.skip_checks_under(m.mountpoints_off_root());
    }
    let time_ns = timens::load(opts, &procs, opener.root_ids())?;
    let sysv_shm = super::sysvshm::load(&opts.images_dir, &procs, opener.root_ids())?;
    let joined_net = opts.join_ns.iter().any(|(k, _)| k == "net");
    let own_net = own_network_namespace(&procs[0], opener.root_ids())
        .filter(|_| !joined_net)
        .map(|id| crate::netns::restore::load(&opts.images_dir, id))
        .transpose()?;
    if user_ns.is_some() && own_net.is_some() {
        // Made by us, ours would own it: its root could no longer configure it.
        return Err(unsupported(
            "a network namespace of the tree's own with a user namespace of its own \
             (join one with --join-ns net:PATH instead)",
        ));
    }
    if joined_net || own_net.is_some() {
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
    opener.set_tree_namespaces(procs.iter().map(|p| (p.entry.pid as i32, &p.ids)));
    for p in &procs {
        opener.check(p.pid, &p.fdinfo)?;
        check_root(&opener, p)?;
    }
    let tasks: Vec<(Pid, &[pb::FdinfoEntry])> =
        procs.iter().map(|p| (p.pid, &p.fdinfo[..])).collect();
    opener.check_locks(&tasks)?;
    opener.check_epolls(&tasks)?;
    let leaderless = leaderless(&procs, &zombies)?;
    // Then the tree's ptys, made with their numbers now, so that a number taken on
    // this system fails the restore before any task exists; in a mount namespace of
    // the tree's own they are its devpts', which exists only once the root has built
    // it (stage 2 makes them then).
    let terminals = if own_ns.mounts.is_some() {
        Vec::new()
    } else {
        make_ptys(opts, &mut opener, &procs)?
    };
    // Last: from here the restore owns the lock (a refusal above left it in place, so
    // a restore with the right options can still take the connections over).
    // The tree's own network namespace, made and filled now (an fd keeps it; nothing
    // is left of it if the restore fails).
    let new_net = own_net
        .as_ref()
        .map(crate::netns::restore::create)
        .transpose()?;
    let netlock = network_lock(opts, &procs[0], &opener, new_net.as_ref())?;
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
    Ok(Checked {
        procs,
        zombies,
        opener,
        own_ns,
        user_ns,
        time_ns,
        sysv_shm,
        leaderless,
        terminal,
        netlock,
        terminals,
        new_net,
    })
}

/// Makes the tree's ptys with `opener` (`FileOpener::make_ptys`) and returns the
/// controlling terminals of its sessions; the masters of ptys whose master was outside
/// the tree go to the caller.
pub(super) fn make_ptys(
    opts: &RestoreOptions,
    opener: &mut FileOpener,
    procs: &[Images],
) -> Result<Vec<files::ControllingTerminal>, RestoreError> {
    let leaders: Vec<Pid> = procs
        .iter()
        .filter(|p| p.entry.sid == p.entry.pid)
        .map(|p| p.pid)
        .collect();
    let terminals = opener.make_ptys(&leaders, opts.pid_wait)?;
    // CRIU's caller (runc) passes each such master on to the container's console.
    for (index, master) in opener.take_orphan_masters() {
        tracing::info!(index, "the master of a new pty goes to the caller");
        opts.notify
            .send(crate::notify::Event::OrphanPtsMaster(master.as_raw_fd()))?;
    }
    Ok(terminals)
}

/// The id of the tree's own network namespace, when it is not the dumper's.
fn own_network_namespace(root: &Images, host: Option<&pb::TaskKobjIdsEntry>) -> Option<u32> {
    let host = host?;
    root.ids.net_ns_id.filter(|&id| Some(id) != host.net_ns_id)
}

/// The network lock the dump left on the images' TCP connections (as its inventory
/// names it), for the restore to lift; `None` when the images hold no connection (a
/// dump locks only connections, so there is nothing to lift) unless the tree has a
/// network namespace of its own (the dump locked it whole): the one it joins, or the
/// one made anew (`new_net`), which got the lock back with its firewall, so that its
/// connections come back before they may see a packet.
fn network_lock(
    opts: &RestoreOptions,
    root: &Images,
    opener: &FileOpener,
    new_net: Option<&std::fs::File>,
) -> Result<Option<NetworkLock>, RestoreError> {
    let conns = opener.tcp_connections();
    // A tree in a network namespace of its own was locked inside it: the one it joins.
    let own_net = own_network_namespace(root, opener.root_ids()).is_some();
    if conns.is_empty() && !own_net {
        return Ok(None);
    }
    let inventory: pb::InventoryEntry = read_one(&opts.images_dir, "inventory.img")?;
    let method = LockMethod::from_image(inventory.network_lock_method).ok_or_else(|| {
        RestoreError::BadImage {
            image: "inventory.img".into(),
            what: format!(
                "network lock method {:?} is none CRIU knows",
                inventory.network_lock_method
            ),
        }
    })?;
    if !crate::netlock::tool_available(method) {
        if conns.is_empty() {
            // Nothing needs the lock lifted; without the tool, nobody could have made it.
            return Ok(None);
        }
        return Err(unsupported(format!(
            "TCP connections locked with {method} by the dump without {} installed to \
             lift the lock",
            method.tool().unwrap_or("its tool")
        )));
    }
    // CRIU names the table of images without a run id by the root's pid.
    let run_id = inventory
        .dump_criu_run_id
        .unwrap_or_else(|| root.entry.pid.to_string());
    // A namespace made anew holds the lock already: the dump saved its firewall with
    // the lock in it, as CRIU does.
    let made = new_net.map(|ns| {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            ns.as_raw_fd()
        ))
    });
    let joined = opts
        .join_ns
        .iter()
        .find(|(k, _)| k == "net")
        .map(|(_, path)| path.clone());
    let netns = made.or(joined).filter(|_| own_net);
    Ok(Some(NetworkLock::left_by_dump(
        method, &run_id, conns, netns,
    )))
}

pub(super) fn read_all<M: prost::Message + Default>(
    dir: &Path,
    name: &str,
) -> Result<Vec<M>, RestoreError> {
    let mut r = ImageReader::open(dir.join(name))?;
    let mut out = Vec::new();
    while let Some(e) = r.next_entry::<M>()? {
        out.push(e);
    }
    Ok(out)
}

pub(super) fn read_one<M: prost::Message + Default>(
    dir: &Path,
    name: &str,
) -> Result<M, RestoreError> {
    read_all::<M>(dir, name)?
        .into_iter()
        .next()
        .ok_or_else(|| RestoreError::BadImage {
            image: name.to_owned(),
            what: "has no entry".into(),
        })
}

/// Everything stage 1 loads for one process.
pub(super) struct Images {
    pub(super) pid: Pid,
    pub(super) entry: pb::PstreeEntry,
    /// Cores of the threads other than the leader, with their tids.
    pub(super) threads: Vec<(Pid, pb::CoreEntry)>,
    pub(super) core: pb::CoreEntry,
    pub(super) tc: pb::TaskCoreEntry,
    pub(super) ti: pb::ThreadInfoX86,
    pub(super) ids: pb::TaskKobjIdsEntry,
    pub(super) mm: pb::MmEntry,
    pub(super) files: std::sync::Arc<HashMap<u32, pb::FileEntry>>,
    pub(super) fdinfo: Vec<pb::FdinfoEntry>,
    pub(super) fs: pb::FsEntry,
    pub(super) pagemap: Vec<pb::PagemapEntry>,
    pub(super) pages_id: u32,
    /// The pages of `pagemap`, in its order: `pages-<pages_id>.img`, or for an
    /// incremental dump those of its parent chain (`chain.rs`).
    pub(super) pages: std::sync::Arc<super::chain::PagesImage>,
    /// Guard regions (MADV_GUARD_INSTALL) to install once the memory is restored: CRIU
    /// records them as VMA entries of their own, taken out of `mm.vmas` here.
    pub(super) guards: Vec<(u64, u64)>,
    /// Set when the dumped vDSO is not this kernel's: how to redirect it.
    pub(super) vdso_proxy: Option<vdso::Proxy>,
    /// Seccomp of the leader, then of each of `threads`.
    pub(super) seccomp: Vec<attrs::SeccompPlan>,
}

/// A process that had exited and was not yet reaped by its parent: it is rebuilt as a
/// zombie of the same parent, with its pid, group, session, name and wait status.
pub(super) struct Zombie {
    pub(super) entry: pb::PstreeEntry,
    /// Bytes: a name need not be UTF-8.
    pub(super) comm: Vec<u8>,
    /// The wait status the parent will read (exit code << 8, or the killing signal).
    pub(super) exit_status: u32,
}

impl Zombie {
    pub(super) fn pid(&self) -> Pid {
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
    // One table for every process: a copy each would cost a tree of N processes N^2
    // (prost's file entries are large), and every task is forked from the restorer.
    let files: std::sync::Arc<HashMap<u32, pb::FileEntry>> = std::sync::Arc::new(
        read_all::<pb::FileEntry>(dir, "files.img")?
            .into_iter()
            .map(|f| (f.id, f))
            .collect(),
    );
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
        out.push(load_process(dir, e, core, &files, &seccomp)?);
    }
    Ok((out, zombies))
}

/// Stage 1 for one process.
fn load_process(
    dir: &Path,
    root: &pb::PstreeEntry,
    core: pb::CoreEntry,
    files: &std::sync::Arc<HashMap<u32, pb::FileEntry>>,
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
    // Every signal but SIGKILL and SIGSTOP can have one (stage 7 sets them in order).
    if tc.sigactions.len() > 62 {
        return Err(bad("has more than 62 signal handlers"));
    }
    let mut threads = Vec::new();
    for tid in root.threads.iter().skip(1) {
        let image = format!("core-{tid}.img");
        let tcore: pb::CoreEntry = read_one(dir, &image)?;
        if tcore.thread_info.is_none() {
            return Err(RestoreError::BadImage {
                image,
                what: "has no x86 thread info".into(),
            });
        }
        threads.push((Pid(*tid as i32), tcore));
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
    let mut mm: pb::MmEntry = read_one(dir, &format!("mm-{}.img", pid.0))?;
    let guards = take_guards(&mut mm);
    let fdinfo: Vec<pb::FdinfoEntry> = read_all(dir, &format!("fdinfo-{}.img", ids.files_id))?;
    for fd in &fdinfo {
        let file = files.get(&fd.id).ok_or_else(|| RestoreError::BadImage {
            image: "files.img".into(),
            what: format!("has no file {} for fd {}", fd.id, fd.fd),
        })?;
        let _ = file;
    }
    let fs: pb::FsEntry = read_one(dir, &format!("fs-{}.img", pid.0))?;
    check_mappings(pid, &files, &mm)?;
    let mut pm = ImageReader::open(dir.join(format!("pagemap-{}.img", pid.0)))?;
    let head: pb::PagemapHead = pm.next_entry()?.ok_or_else(|| RestoreError::BadImage {
        image: "pagemap".into(),
        what: "is empty".into(),
    })?;
    let mut pagemap = Vec::new();
    while let Some(e) = pm.next_entry::<pb::PagemapEntry>()? {
        pagemap.push(e);
    }
    let (pagemap, pages) = match super::chain::resolve(dir, pid.0 as u32, &pagemap, head.pages_id)?
    {
        Some((resolved, pages)) => (resolved, pages),
        None => (pagemap, super::chain::PagesImage::open(dir, head.pages_id)?),
    };
    Ok(Images {
        pages: std::sync::Arc::new(pages),
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
        guards,
        vdso_proxy: None,
        seccomp,
    })
}

/// Takes the guard-region entries (status VMA_AREA_GUARD) out of `mm.vmas`: they are no
/// mappings, only markers inside the mappings listed before them.
fn take_guards(mm: &mut pb::MmEntry) -> Vec<(u64, u64)> {
    let is_guard = |v: &pb::VmaEntry| v.status & VMA_AREA_GUARD != 0;
    let guards = mm
        .vmas
        .iter()
        .filter(|v| is_guard(v))
        .map(|v| (v.start, v.end))
        .collect();
    mm.vmas.retain(|v| !is_guard(v));
    guards
}

/// Stage 1 for the mappings of process `pid` (`mm`, its files `files`): refuses those
/// the restore cannot map again, and those that name a file the images lack.
/// A chrooted task's root is made again with chroot(2) by its path (stage 7): a deleted
/// directory as a root has no path to chroot to.
fn check_root(opener: &FileOpener, p: &Images) -> Result<(), RestoreError> {
    if !opener.is_ghost(p.fs.root_id) {
        return Ok(());
    }
    let root_name = p
        .files
        .get(&p.fs.root_id)
        .and_then(|f| f.reg.as_ref())
        .map(|r| r.path().display().to_string())
        .unwrap_or_default();
    Err(unsupported(format!(
        "process {}: a root of a deleted directory ({root_name})",
        p.pid.0
    )))
}

fn check_mappings(
    pid: Pid,
    files: &HashMap<u32, pb::FileEntry>,
    mm: &pb::MmEntry,
) -> Result<(), RestoreError> {
    for vma in &mm.vmas {
        if let Some(what) = files::mapping_refusal(files, vma) {
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
            | VMA_AREA_SYSVIPC
            | VMA_AREA_AIORING
            | VMA_AREA_SOCKET
            | 1
            | (1 << 5);
        if vma.status & !known != 0 {
            return Err(unsupported(format!(
                "the mapping at {:#x} (status {:#x})",
                vma.start, vma.status
            )));
        }
        let file = files.get(&(vma.shmid as u32));
        let backed = if vma.status & VMA_AREA_SOCKET != 0 {
            // The kind table checked that it names a packet socket.
            true
        } else if vma.status & VMA_AREA_MEMFD != 0 {
            file.is_some_and(|f| f.memfd.is_some())
        } else {
            file.is_some_and(|f| f.reg.is_some() || files::io_uring_of(f).is_some())
        };
        if vma.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 && !backed {
            return Err(RestoreError::BadImage {
                image: format!("mm-{}.img", pid.0),
                what: format!("mapping {:#x} names missing file {}", vma.start, vma.shmid),
            });
        }
    }
    Ok(())
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
