//! Stage 2: the process tree forked with its pids, sessions and process groups (with
//! holders for groups whose leader is gone), controlling terminals, zombies, and a shell
//! job's terminal.

use super::*;

use std::os::fd::RawFd;

/// `--shell-job`: the tree joins our session in place of the one it had (its shell's),
/// and our process group in place of its own when its root did not lead one, as CRIU
/// does. Refused when our ids are pids or groups of the images.
pub(super) fn migrate_shell_job(
    procs: &mut [Images],
    zombies: &mut [Zombie],
) -> Result<(), RestoreError> {
    let root = procs[0].entry.clone();
    if root.sid == root.pid {
        return Ok(());
    }
    let (sid, pgid) = sys::own_session_and_group();
    let entries = || {
        procs
            .iter()
            .map(|p| &p.entry)
            .chain(zombies.iter().map(|z| &z.entry))
    };
    for (ours, what) in [(sid, "session"), (pgid, "process group")] {
        if let Some(e) = entries().find(|e| e.pid as i32 == ours.0) {
            return Err(unsupported(format!(
                "a shell job here: our {what} {ours} is process {} of the images",
                e.pid
            )));
        }
    }
    let mut remap = vec![(root.sid, sid.0 as u32)];
    if root.pgid != root.pid {
        remap.push((root.pgid, pgid.0 as u32));
    }
    let entries = procs
        .iter_mut()
        .map(|p| &mut p.entry)
        .chain(zombies.iter_mut().map(|z| &mut z.entry));
    for e in entries {
        for &(old, new) in &remap {
            if e.sid == old {
                e.sid = new;
            }
            if e.pgid == old {
                e.pgid = new;
            }
        }
    }
    Ok(())
}

/// setsid/setpgid in a freshly cloned task, so it joins the session and process group
/// the image gives it (creating them when it leads them). Returns false when the group
/// it joins does not exist yet (EPERM: its leader, cloned earlier, has not made it):
/// `join_group` later, once every task has made the groups it leads.
pub(super) fn join_session_and_group(
    inj: &mut Injector,
    e: &pb::PstreeEntry,
) -> Result<bool, RestoreError> {
    let pid = Pid(e.pid as i32);
    let terr = |what: &'static str| {
        move |source| RestoreError::Task {
            pid,
            what: what.into(),
            source,
        }
    };
    let (sid, pgid) = (e.sid as i32, e.pgid as i32);
    if sid == pid.0 {
        inj.syscall_ok("setsid", libc::SYS_setsid, [0; 6])
            .map_err(terr("creating its session"))?;
    }
    if pgid == pid.0 && sid != pid.0 {
        inj.syscall_ok("setpgid", libc::SYS_setpgid, [0; 6])
            .map_err(terr("making its process group"))?;
    }
    if pgid != pid.0 {
        let ret = inj
            .syscall(libc::SYS_setpgid, [0, pgid as u64, 0, 0, 0, 0])
            .map_err(terr("joining its process group"))?;
        if ret == -(libc::EPERM as i64) {
            return Ok(false);
        }
        if ret < 0 {
            return Err(terr("joining its process group")(
                std::io::Error::from_raw_os_error(-ret as i32),
            ));
        }
    }
    Ok(true)
}

/// The task (our number `host`) joins its process group, which did not exist yet when
/// it was cloned (`join_session_and_group`).
fn join_group(host: Pid, e: &pb::PstreeEntry, gadget: u64) -> Result<(), RestoreError> {
    let pid = Pid(e.pid as i32);
    let mut inj = Injector::new(host, gadget).map_err(terr(pid, "starting injection"))?;
    inj.syscall_ok("setpgid", libc::SYS_setpgid, [0, e.pgid as u64, 0, 0, 0, 0])
        .and_then(|_| inj.finish())
        .map_err(terr(pid, "joining its process group"))
}

/// Process groups and sessions of the tree whose leader is gone (it exited and was
/// reaped, as a group or session outlives its leader): a helper must hold each group
/// while its members join it (`hold_group`), or make each session again and fork its
/// members (`Forking::fork_through_helper`). What cannot be rebuilt is refused (see
/// `sessions.rs`, which the dump asks too).
pub(super) fn leaderless(procs: &[Images], zombies: &[Zombie]) -> Result<Leaderless, RestoreError> {
    let ids = |e: &pb::PstreeEntry, zombie| crate::sessions::TaskIds {
        pid: e.pid,
        ppid: e.ppid,
        pgid: e.pgid,
        sid: e.sid,
        zombie,
    };
    let tasks: Vec<crate::sessions::TaskIds> = procs
        .iter()
        .map(|p| ids(&p.entry, false))
        .chain(zombies.iter().map(|z| ids(&z.entry, true)))
        .collect();
    // After a shell job's migration, ids outside the tree are ours.
    let (our_sid, our_pgid) = sys::own_session_and_group();
    let outside = [our_sid.0 as u32, our_pgid.0 as u32];
    let new_pid_ns = procs[0].pid == Pid(1);
    let made = crate::sessions::leaderless(&tasks, &outside, new_pid_ns).map_err(unsupported)?;
    let pid = |id: u32| Pid(id as i32);
    Ok(Leaderless {
        groups: made
            .groups
            .iter()
            .map(|g| (pid(g.pgid), pid(g.sid)))
            .collect(),
        sessions: made.sessions.into_iter().map(pid).collect(),
    })
}

/// Groups and sessions whose leader is gone, by their number (see `leaderless`).
#[derive(Debug, Default)]
pub(super) struct Leaderless {
    /// (group, its session).
    pub(super) groups: Vec<(Pid, Pid)>,
    pub(super) sessions: Vec<Pid>,
}

/// A task with pid `pgid` that leads a new process group of that number in the session
/// of the task behind `inj` (which has joined it), so the group's members can join it.
/// The root clones it with CLONE_PARENT, so its parent is us: we end and reap it
/// (`GroupHolder::release`) without any restored task seeing it. Where that cannot be
/// (`parent`: our number for the task behind `inj`), it is that task's child, which
/// reaps it once we end it: the init of a new pid namespace cannot clone with
/// CLONE_PARENT, and a holder in another session is cloned by its leader, whose parent
/// is a restored task.
pub(super) fn hold_group(
    inj: &mut Injector,
    pgid: Pid,
    gadget: u64,
    pid_wait: Duration,
    parent: Option<Pid>,
) -> Result<GroupHolder, RestoreError> {
    let terr = |what: &'static str| {
        move |source| RestoreError::Task {
            pid: pgid,
            what: what.into(),
            source,
        }
    };
    let flags = if parent.is_some() {
        0
    } else {
        libc::CLONE_PARENT as u64
    };
    let ours = clone_by_injection(inj, flags, Some(pgid), pid_wait)
        .map_err(|e| e.for_task(pgid, "clone3 (group holder)"))?;
    let led = (|| {
        wait_for_sigstop(ours)?;
        let mut hinj = Injector::new(ours, gadget)?;
        hinj.syscall_ok("setpgid", libc::SYS_setpgid, [0, 0, 0, 0, 0, 0])?;
        hinj.finish()
    })();
    if let Err(e) = led {
        let _ = release_group_holder(ours);
        return Err(terr("leading its process group")(e));
    }
    Ok(GroupHolder { ours, pgid, parent })
}

/// A task holding a process group whose leader is gone (`hold_group`).
pub(super) struct GroupHolder {
    /// Our number for it.
    pub(super) ours: Pid,
    /// Its number in the tree (the group's).
    pgid: Pid,
    /// Our number for its parent, which must reap it, when that is not us.
    parent: Option<Pid>,
}

impl GroupHolder {
    /// Ends the holder once every member has joined (the group lives on without it);
    /// its parent reaps it when that is a restored task.
    pub(super) fn release(&self, gadget: u64) -> std::io::Result<()> {
        release_group_holder(self.ours)?;
        let Some(parent) = self.parent else {
            return Ok(());
        };
        let mut inj = Injector::new(parent, gadget)?;
        let ret = inj.syscall(
            libc::SYS_wait4,
            [self.pgid.0 as u64, 0, libc::__WALL as u64, 0, 0, 0],
        )?;
        inj.finish()?;
        // ECHILD: already reaped (SIGCHLD ignored in the parent).
        if ret < 0 && ret != -(libc::ECHILD as i64) {
            return Err(std::io::Error::from_raw_os_error(-ret as i32));
        }
        Ok(())
    }
}

/// Why `clone_by_injection` failed.
pub(super) enum InjectedClone {
    /// The pid stayed taken for the whole wait.
    Busy,
    Failed(std::io::Error),
}

impl InjectedClone {
    /// The restore's error for task `pid`, saying `what` failed.
    fn for_task(self, pid: Pid, what: &str) -> RestoreError {
        match self {
            InjectedClone::Busy => RestoreError::PidBusy(pid),
            InjectedClone::Failed(e) => terr(pid, what)(e),
        }
    }
}

/// The task behind `inj` clones a child with pid `pid` (in the child's pid namespace:
/// a new one with CLONE_NEWPID; any free one with `None`) and clone flags `flags`, waiting up to `pid_wait` for
/// the pid to be free. With CLONE_PARENT the child is its parent's sibling (our child
/// when the task is) and takes its exit signal; without it, it exits with SIGCHLD.
/// Traced tasks' children arrive traced by us and stopped (`TRACE_OPTIONS`). Returns
/// our number for it.
fn clone_by_injection(
    inj: &mut Injector,
    flags: u64,
    pid: Option<Pid>,
    pid_wait: Duration,
) -> Result<Pid, InjectedClone> {
    let scratch = inj.scratch(4096).map_err(InjectedClone::Failed)?;
    inj.write(scratch + 512, &pid.map_or(0, |p| p.0).to_le_bytes())
        .map_err(InjectedClone::Failed)?;
    let (set_tid, set_tid_size) = match pid {
        Some(_) => (scratch + 512, 1),
        None => (0, 0),
    };
    // clone3 wants exit_signal 0 with CLONE_PARENT (the parent's own is taken).
    let exit_signal = if flags & libc::CLONE_PARENT as u64 != 0 {
        0
    } else {
        libc::SIGCHLD as u64
    };
    let mut args = Vec::new();
    // clone3 args: flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size,
    // tls, set_tid, set_tid_size, cgroup.
    for w in [
        flags,
        0,
        0,
        0,
        exit_signal,
        0,
        0,
        0,
        set_tid,
        set_tid_size,
        0,
    ] {
        args.extend_from_slice(&w.to_le_bytes());
    }
    inj.write(scratch, &args).map_err(InjectedClone::Failed)?;
    let deadline = Instant::now() + pid_wait;
    loop {
        let ret = inj
            .syscall(libc::SYS_clone3, [scratch, args.len() as u64, 0, 0, 0, 0])
            .map_err(InjectedClone::Failed)?;
        if ret > 0 {
            // Our number for it, from the clone event (the call returned the parent's
            // number, which differs when the parent is in another pid namespace).
            return Ok(inj
                .last_event_msg()
                .map_or(Pid(ret as i32), |m| Pid(m as i32)));
        }
        if ret == -(libc::EEXIST as i64) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if ret == -(libc::EEXIST as i64) {
            return Err(InjectedClone::Busy);
        }
        return Err(InjectedClone::Failed(std::io::Error::from_raw_os_error(
            -ret as i32,
        )));
    }
}

/// Kills and reaps a group holder (our child and tracee).
pub(super) fn release_group_holder(holder: Pid) -> std::io::Result<()> {
    sys::kill(holder, libc::SIGKILL)?;
    loop {
        match sys::wait_timeout(holder, Duration::from_secs(5))? {
            WaitStatus::Exited(_) | WaitStatus::Signaled(_) => return Ok(()),
            // A stop reported on its way out: let it go on dying.
            _ => {
                let _ = sys::ptrace_cont(holder, 0);
            }
        }
    }
}

/// Ends a freshly cloned task the way the dumped zombie ended: its name set, then
/// exit_group with its exit code, or killed by its signal (without a core file, as the
/// original already wrote any). We reap it as its tracer only; it stays a zombie for
/// its parent to wait for.
pub(super) fn bury(z: &Zombie, ours: Pid, gadget: u64) -> std::io::Result<()> {
    // The task kills itself by the number it has for itself.
    let pid = z.pid();
    let mut inj = Injector::new(ours, gadget)?;
    let scratch = inj.scratch(4096)?;
    let mut comm = z.comm[..z.comm.len().min(15)].to_vec();
    comm.push(0);
    inj.write(scratch, &comm)?;
    inj.syscall_ok(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        [libc::PR_SET_NAME as u64, scratch, 0, 0, 0, 0],
    )?;
    let signal = (z.exit_status & 0x7f) as i32;
    let status = if signal == 0 {
        let code = u64::from((z.exit_status >> 8) & 0xff);
        inj.exit_with(libc::SYS_exit_group, [code, 0, 0, 0, 0, 0])?
    } else {
        // A signal whose default action does not kill cannot have ended it: CRIU takes
        // SIGABRT then, and so do we.
        let fatal = !matches!(
            signal,
            libc::SIGCHLD
                | libc::SIGCONT
                | libc::SIGURG
                | libc::SIGWINCH
                | libc::SIGSTOP
                | libc::SIGTSTP
                | libc::SIGTTIN
                | libc::SIGTTOU
        ) && signal < 32;
        let signal = if fatal { signal } else { libc::SIGABRT };
        inj.syscall_ok(
            "prctl(PR_SET_DUMPABLE)",
            libc::SYS_prctl,
            [libc::PR_SET_DUMPABLE as u64, 0, 0, 0, 0, 0],
        )?;
        // Default action and unblocked, whatever the restorer it was cloned from had
        // (SIGKILL has no other action and cannot be blocked: the kernel refuses both).
        if signal != libc::SIGKILL {
            inj.write(scratch + 64, &[0u8; 32])?;
            inj.syscall_ok(
                "rt_sigaction",
                libc::SYS_rt_sigaction,
                [signal as u64, scratch + 64, 0, 8, 0, 0],
            )?;
            inj.write(scratch + 128, &(1u64 << (signal - 1)).to_le_bytes())?;
            inj.syscall_ok(
                "rt_sigprocmask",
                libc::SYS_rt_sigprocmask,
                [libc::SIG_UNBLOCK as u64, scratch + 128, 0, 8, 0, 0],
            )?;
        }
        inj.exit_with(libc::SYS_kill, [pid.0 as u64, signal as u64, 0, 0, 0, 0])?
    };
    match status {
        WaitStatus::Exited(_) | WaitStatus::Signaled(_) => Ok(()),
        other => Err(std::io::Error::other(format!(
            "did not end as expected: {other:?}"
        ))),
    }
}

/// Waits for a new task's first stop (SIGSTOP, from itself or from ptrace auto-attach).
pub(super) fn wait_for_sigstop(pid: Pid) -> std::io::Result<()> {
    match sys::wait_timeout(pid, Duration::from_secs(5))? {
        WaitStatus::Stopped {
            sig: libc::SIGSTOP, ..
        } => Ok(()),
        other => Err(std::io::Error::other(format!(
            "did not stop as expected: {other:?}"
        ))),
    }
}

/// What stage 2 made: every task of the tree, stopped, with what it inherited from us.
pub(super) struct Forked {
    /// Kills every task made so far unless the restore completes.
    pub(super) guard: TreeGuard,
    /// Image pid -> our pid of the same task (they differ in a new pid namespace).
    pub(super) hosts: HashMap<Pid, Pid>,
    /// Private mappings each process holds with tree memory, for copy-on-write sharing.
    pub(super) cow_held: HashMap<Pid, cow::Held>,
    /// A pidfd of ours, which every task has at the same number (the tasks' end of the
    /// courier for a tree in its own user namespace).
    pub(super) restorer_pidfd: OwnedFd,
    /// For a tree in its own user namespace: our end of the courier, held (never read)
    /// until the restore ends.
    pub(super) _courier: Option<super::userns::Courier>,
    /// The namespaces the tree joined, which the root entered from its copies of these.
    pub(super) join: Vec<(libc::c_int, File)>,
    /// Where injection starts in a task that is still a copy of the restorer.
    pub(super) gadget: u64,
    /// The root was pid 1, the init of a pid namespace of its own: it got a new one.
    pub(super) new_pid_ns: bool,
    /// Files of `/dev/tty` the session leaders opened (by file id), for the opener.
    pub(super) dev_ttys: Vec<(u32, OwnedFd)>,
    /// Masters of ptys made while the mount namespace was built (a mount binds their
    /// slave node), by number, for the opener.
    pub(super) premade_ptys: Vec<(u32, OwnedFd)>,
}

impl Forked {
    /// Our number for the task the images call `pid`.
    pub(super) fn host(&self, pid: Pid) -> Pid {
        self.hosts.get(&pid).copied().unwrap_or(pid)
    }
}

/// Stage 2: the tree's tasks with their old pids, sessions, groups and parents, still
/// copies of the restorer, stopped; the root in its namespaces, with the SysV objects;
/// the zombies dead again.
pub(super) fn fork(
    opts: &RestoreOptions,
    tree: &mut Checked,
    affinity: &Affinity,
    cgroups: Option<&CgroupRestore>,
) -> Result<Forked, RestoreError> {
    let root = tree.procs[0].pid;
    let (join, mut restorer_pidfd) = open_inherited(opts, root, tree.new_net.as_ref())?;
    // A tree in its own user namespace takes its files by courier (`userns.rs`).
    let mut courier = None;
    if tree.user_ns.is_some() {
        let (ours, theirs) =
            super::userns::Courier::start().map_err(terr(root, "making the courier of files"))?;
        (courier, restorer_pidfd) = (Some(ours), theirs);
    }
    let gadget = restorer_gadget().map_err(terr(root, "finding our own code"))?;
    let new_pid_ns = root == Pid(1);
    let mut ns_flags = if new_pid_ns { libc::CLONE_NEWPID } else { 0 };
    if tree.user_ns.is_some() {
        ns_flags |= libc::CLONE_NEWUSER;
    }
    // A root in a new user namespace has no privileges over the namespaces it joins
    // (ours own them): a nest enters them first and clones it there.
    let nested = tree.user_ns.is_some() && !join.is_empty();
    let child = if nested {
        clone_root_in_nest(opts, root, ns_flags, &join, gadget)?
    } else {
        clone_root(opts, root, ns_flags)?
    };
    let mut forking = Forking {
        nested,
        opts,
        tree: &*tree,
        affinity,
        cgroups,
        adopted: adopted_by_leaders(tree, new_pid_ns),
        late_joins: Vec::new(),
        forked: Forked {
            guard: TreeGuard {
                pids: vec![child],
                armed: true,
            },
            hosts: HashMap::from([(root, child)]),
            cow_held: HashMap::new(),
            restorer_pidfd,
            _courier: courier,
            join,
            gadget,
            new_pid_ns,
            dev_ttys: Vec::new(),
            premade_ptys: Vec::new(),
        },
    };
    forking.set_up_root(child)?;
    if tree.own_ns.mounts.is_some() {
        // The tree's ptys are those of the devpts of its mount namespace, built now:
        // made through it, before any session takes one as its terminal.
        let adopted = std::mem::take(&mut forking.adopted);
        let mut forked = forking.forked;
        tree.opener
            .set_root(Some(PathBuf::from(format!("/proc/{}/root", child.0))));
        tree.opener
            .add_premade_ptys(std::mem::take(&mut forked.premade_ptys));
        tree.terminals = super::load::make_ptys(opts, &mut tree.opener, &tree.procs)?;
        forking = Forking {
            nested,
            opts,
            tree: &*tree,
            affinity,
            cgroups,
            adopted,
            late_joins: Vec::new(),
            forked,
        };
    }
    let tree = &*tree;
    // The rest of the tree: each process, still a copy of the restorer, puts itself in
    // its session and group, then clones its children with their old pids, so every
    // task has its real parent.
    let mut group_holders = Vec::new();
    // Parents before children, as the images list them; a process a zombie forks (see
    // `Forking::adopted`) once that zombie has.
    let mut left: Vec<&Images> = tree.procs.iter().collect();
    while !left.is_empty() {
        let before = left.len();
        let mut later = Vec::new();
        for p in left {
            if !forking.forked.hosts.contains_key(&p.pid) {
                later.push(p);
                continue;
            }
            opts.interrupt.check()?;
            forking.fork_children(p, &mut group_holders)?;
        }
        if later.len() == before {
            return Err(unsupported(format!(
                "process {}: no process of the tree forks it",
                later[0].pid
            )));
        }
        left = later;
    }
    // Every process group exists now: the tasks cloned before their group's leader
    // made it join it.
    for &pid in &forking.late_joins {
        let entries = tree.procs.iter().map(|p| &p.entry);
        let mut entries = entries.chain(tree.zombies.iter().map(|z| &z.entry));
        if let Some(e) = entries.find(|e| e.pid == pid.0 as u32) {
            join_group(forking.forked.host(pid), e, gadget)?;
        }
    }
    let forked = &mut forking.forked;
    // Each session's terminal gets its foreground group.
    for t in &tree.terminals {
        let leader = forked.host(t.sid);
        let pidfd = forked.restorer_pidfd.as_raw_fd();
        give_foreground(leader, t, gadget, pidfd).map_err(terr(
            t.sid,
            &format!("making group {} the foreground of {}", t.pgrp, t.name),
        ))?;
    }
    // Zombies die now, before any live process is rebuilt: the SIGCHLD their parent gets
    // arrives while the parent still has the restorer's default (ignore) disposition,
    // and the parent's first injected call discards it; its own pending signals come
    // from the images later (stage 7).
    for z in &tree.zombies {
        bury(z, forked.host(z.pid()), gadget).map_err(terr(z.pid(), "turning it into a zombie"))?;
    }
    // Every member has joined: the groups live on without their holders.
    for holder in group_holders {
        holder
            .release(gadget)
            .map_err(terr(holder.pgid, "ending a process group holder"))?;
        forked.guard.pids.retain(|&p| p != holder.ours);
    }
    Ok(forking.forked)
}

/// Namespaces to join (those of `--join-ns`, and the tree's network namespace made
/// anew, `new_net`), and a pidfd of ours, opened before the root is cloned so that
/// it and every task cloned from it find them at the same numbers: a task in a pid
/// namespace of its own could not name us by pid to open one.
fn open_inherited(
    opts: &RestoreOptions,
    root: Pid,
    new_net: Option<&File>,
) -> Result<(Vec<(libc::c_int, File)>, OwnedFd), RestoreError> {
    let mut join = Vec::new();
    if let Some(ns) = new_net {
        let ns = ns
            .try_clone()
            .map_err(terr(root, "duplicating its network namespace's fd"))?;
        join.push((libc::CLONE_NEWNET, ns));
    }
    for (kind, path) in &opts.join_ns {
        // Stage 1 refused a kind that cannot be joined.
        let nstype =
            ns_type(kind).ok_or_else(|| unsupported(format!("joining a {kind} namespace")))?;
        let fd = File::open(path).map_err(terr(root, &format!("opening {}", path.display())))?;
        join.push((nstype, fd));
    }
    let restorer_pidfd = sys::pidfd_open(Pid(std::process::id() as i32))
        .map_err(terr(root, "opening a pidfd of the restorer"))?;
    Ok((join, restorer_pidfd))
}

/// The root, with its old pid, as our child; waiting up to `opts.pid_wait` for the pid
/// to be free. Returns our number for it.
fn clone_root(
    opts: &RestoreOptions,
    root: Pid,
    ns_flags: libc::c_int,
) -> Result<Pid, RestoreError> {
    let deadline = Instant::now() + opts.pid_wait;
    loop {
        match sys::clone3_stopped_child(Some(root), ns_flags) {
            Ok(c) => return Ok(c),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(RestoreError::PidBusy(root))
            }
            Err(e) => return Err(terr(root, "clone3")(e)),
        }
    }
}

/// A tree in its own user namespace that joins existing namespaces (`join`, which
/// our user namespace owns): its root, made in the new user namespace, would have no
/// privileges left to enter them. So a "nest" enters them first: a stopped child of
/// ours (any pid), a copy of the restorer with our privileges, made to setns into each
/// and then to clone the root with its pid and new namespaces (`ns_flags`), and
/// CLONE_PARENT, so the root is our child as `clone_root` makes it. The root inherits
/// the joined namespaces from the nest. The nest is killed and reaped once the root
/// exists (or the clone failed). Returns our number for the root.
fn clone_root_in_nest(
    opts: &RestoreOptions,
    root: Pid,
    ns_flags: libc::c_int,
    join: &[(libc::c_int, File)],
    gadget: u64,
) -> Result<Pid, RestoreError> {
    /// Kills and reaps the nest when dropped.
    struct Nest(Pid);
    impl Drop for Nest {
        fn drop(&mut self) {
            if let Err(e) = release_group_holder(self.0) {
                tracing::warn!(nest = %self.0, "ending the nest: {e}");
            }
        }
    }
    let nest = Nest(sys::clone3_stopped_child(None, 0).map_err(terr(root, "clone3 (nest)"))?);
    wait_for_sigstop(nest.0).map_err(terr(root, "starting the nest"))?;
    // Its clone arrives traced and stopped, as the root's children do.
    sys::ptrace_setoptions(nest.0, TRACE_OPTIONS).map_err(terr(root, "ptrace options"))?;
    enter_namespaces(nest.0, gadget, join, None)
        .map_err(terr(root, "entering its namespaces (from the nest)"))?;
    let mut inj = Injector::new(nest.0, gadget).map_err(terr(root, "starting injection"))?;
    let flags = (ns_flags | libc::CLONE_PARENT) as u64;
    let ours = clone_by_injection(&mut inj, flags, Some(root), opts.pid_wait)
        .map_err(|e| e.for_task(root, "clone3 (from the nest)"))?;
    drop(inj);
    drop(nest);
    Ok(ours)
}

/// Stage 2 under way: the tree as loaded, and what has been made of it so far.
struct Forking<'a> {
    /// The root was cloned in the namespaces it joins (`clone_root_in_nest`).
    nested: bool,
    opts: &'a RestoreOptions,
    tree: &'a Checked,
    affinity: &'a Affinity,
    cgroups: Option<&'a CgroupRestore>,
    forked: Forked,
    /// Tasks whose group did not exist yet when they joined it (`join_group`).
    late_joins: Vec<Pid>,
    /// Live processes in a session another process of the tree leads, whose parent is
    /// the root as init of the tree's pid namespace (they were orphaned and went to it):
    /// only their session leader can fork them into its session. A zombie leader does so
    /// before it dies, and its death hands them to the root; a live one through a
    /// helper child of its own, which forks them and is ended, which hands them to the
    /// root. By leader; those of a session whose leader is gone by the session's number
    /// (a helper of the root with that number makes the session again and forks them).
    adopted: HashMap<Pid, Vec<Pid>>,
}

/// Who forks a process: its parent, or, for its parent, the process that leads its
/// session or its helper (`Forking::adopted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForkedBy {
    Parent,
    SessionLeader,
}

/// The processes each session leader of the tree forks into its session (see
/// `Forking::adopted`): those whose session it leads but that are the root's children,
/// when the root is the init of a new pid namespace. Those of a session whose leader is
/// gone are under the session's number: a helper of the root with that number forks
/// them (zombies too).
fn adopted_by_leaders(tree: &Checked, new_pid_ns: bool) -> HashMap<Pid, Vec<Pid>> {
    let mut adopted: HashMap<Pid, Vec<Pid>> = HashMap::new();
    let root = tree.procs[0].pid;
    if !new_pid_ns {
        return adopted;
    }
    for p in tree.procs.iter().skip(1) {
        let e = &p.entry;
        if e.sid == e.pid || e.sid == e.ppid || e.ppid != root.0 as u32 {
            continue;
        }
        let zombie = tree.zombies.iter().map(|z| z.pid());
        let live = tree.procs.iter().skip(1).map(|l| l.pid);
        if let Some(leader) = zombie.chain(live).find(|l| l.0 as u32 == e.sid) {
            adopted.entry(leader).or_default().push(p.pid);
        }
    }
    let entries = tree.procs.iter().map(|p| &p.entry);
    for e in entries.chain(tree.zombies.iter().map(|z| &z.entry)) {
        let sid = Pid(e.sid as i32);
        if e.ppid == root.0 as u32 && tree.leaderless.sessions.contains(&sid) {
            adopted.entry(sid).or_default().push(Pid(e.pid as i32));
        }
    }
    adopted
}

impl Forking<'_> {
    /// The root (our number `child`), before it clones anyone: traced with the options
    /// every task inherits, its parent-death signal cleared, in its namespaces, with the
    /// SysV objects of its IPC namespace.
    fn set_up_root(&mut self, child: Pid) -> Result<(), RestoreError> {
        let (opts, tree) = (self.opts, self.tree);
        let root = tree.procs[0].pid;
        let gadget = self.forked.gadget;
        wait_for_sigstop(child).map_err(terr(child, "starting"))?;
        // Seccomp is put back before the last injected calls, which it must not stop: the
        // option is inherited by every task cloned from the root, and ends with the
        // tracing.
        let under_seccomp = tree
            .procs
            .iter()
            .any(|p| p.seccomp.iter().any(|s| !s.is_off()));
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
        // Its user namespace before anything is created in it (`userns.rs`).
        if let Some(user_ns) = &tree.user_ns {
            super::userns::set_up(child, gadget, user_ns)
                .map_err(terr(root, "setting up its user namespace"))?;
        }
        // First, while nobody is in the new namespace yet: its offsets can be written
        // only until a task enters it.
        if let Some(dumped) = tree.time_ns {
            let pidfd = self.forked.restorer_pidfd.as_raw_fd() as u64;
            let offsets = timens::enter_new(child, gadget, pidfd, dumped)
                .map_err(terr(root, "putting it in a new time namespace"))?;
            tracing::debug!(?dumped, ?offsets, "new time namespace");
        }
        let new_pid_ns = self.forked.new_pid_ns;
        // A nested root is in its joined namespaces already.
        let join: &[(libc::c_int, File)] = if self.nested { &[] } else { &self.forked.join };
        // A mount namespace of the tree's own has its procfs among its mounts.
        let proc_mount = opts
            .proc_mount
            .as_deref()
            .filter(|_| new_pid_ns && tree.own_ns.mounts.is_none());
        if tree.user_ns.is_some() {
            // Inside its new user namespace the root may not mount in a mount
            // namespace ours owns: we mount its procfs from outside.
            if !join.is_empty() {
                enter_namespaces(child, gadget, join, None)
                    .map_err(terr(root, "entering its namespaces"))?;
            }
            if let Some(target) = proc_mount {
                mount_proc_of(child, target).map_err(terr(
                    root,
                    &format!("mounting its procfs at {}", target.display()),
                ))?;
            }
        } else if !join.is_empty() || proc_mount.is_some() {
            enter_namespaces(child, gadget, join, proc_mount)
                .map_err(terr(root, "entering its namespaces"))?;
        }
        let own_ns = &tree.own_ns;
        if own_ns.uts.is_some() || own_ns.ipc.is_some() {
            let mut inj = Injector::new(child, gadget).map_err(terr(root, "starting injection"))?;
            recreate_namespaces(&mut inj, own_ns)
                .and_then(|()| inj.finish())
                .map_err(terr(root, "recreating its UTS and IPC namespaces"))?;
        }
        if let Some(objects) = &own_ns.sysv {
            recreate_sysv(child, objects).map_err(terr(root, "recreating SysV IPC objects"))?;
        }
        if let Some(cg) = self.cgroups {
            enter_cgroup_namespace(cg, &tree.procs[0], child, gadget)?;
        }
        if let Some(mounts) = &own_ns.mounts {
            self.forked.premade_ptys = super::mounts::build(child, gadget, mounts)
                .map_err(terr(root, "building its mount namespace"))?;
        }
        Ok(())
    }

    /// Process `p` joins its session and group (the root, and a session leader, also
    /// make the holders of the groups of their session whose leader is gone, into
    /// `group_holders`), maps the memory it shares copy-on-write with its children, and
    /// clones them.
    ///
    /// A child that stayed in the session `p` was born into when `p` made its own later
    /// (it was forked before the setsid) is cloned before `p` makes it: a task inherits
    /// its session, and cannot enter one it is not in.
    fn fork_children(
        &mut self,
        p: &Images,
        group_holders: &mut Vec<GroupHolder>,
    ) -> Result<(), RestoreError> {
        let tree = self.tree;
        let root = tree.procs[0].pid;
        let gadget = self.forked.gadget;
        let p_host = self.forked.host(p.pid);
        let mut inj = Injector::new(p_host, gadget).map_err(terr(p.pid, "starting injection"))?;
        let held = self.prefill_cow(&mut inj, p, p_host)?;
        self.forked.cow_held.insert(p.pid, held.clone());
        let adopted: Vec<Pid> = self.adopted.values().flatten().copied().collect();
        let children: Vec<&pb::PstreeEntry> = tree
            .procs
            .iter()
            .filter(|c| c.pid != root)
            .map(|c| &c.entry)
            .chain(tree.zombies.iter().map(|z| &z.entry))
            .filter(|c| c.ppid == p.entry.pid && !adopted.contains(&Pid(c.pid as i32)))
            .collect();
        let born_in = if p.entry.sid == p.entry.pid && p.pid != root {
            let sid = inj
                .syscall_ok("getsid", libc::SYS_getsid, [0; 6])
                .map_err(terr(p.pid, "reading the session it was born in"))?;
            Some(sid as u32).filter(|&sid| sid != p.entry.sid)
        } else {
            None
        };
        let (before_setsid, after): (Vec<_>, Vec<_>) = children
            .into_iter()
            .partition(|c| born_in.is_some() && self.born_in(c, &adopted) == born_in);
        for c in before_setsid {
            self.fork_child(&mut inj, p, c, &held, ForkedBy::Parent)?;
        }
        if !join_session_and_group(&mut inj, &p.entry)? {
            self.late_joins.push(p.pid);
        }
        if let Some(t) = tree.terminals.iter().find(|t| t.sid == p.pid) {
            let pidfd = self.forked.restorer_pidfd.as_raw_fd();
            let dev_ttys = take_terminal(&mut inj, p_host, t, pidfd)
                .map_err(terr(p.pid, &format!("taking {} as its terminal", t.name)))?;
            self.forked.dev_ttys.extend(dev_ttys);
        }
        // Holders of the groups whose leader is gone: the root's in its session,
        // a session leader's in its own.
        for &(pgid, sid) in &tree.leaderless.groups {
            let parent = if p.pid == root && sid.0 as u32 == p.entry.sid {
                self.forked.new_pid_ns.then_some(p_host)
            } else if p.pid == sid && p.pid != root {
                Some(p_host)
            } else {
                continue;
            };
            let holder = hold_group(&mut inj, pgid, gadget, self.opts.pid_wait, parent)?;
            self.forked.guard.pids.push(holder.ours);
            group_holders.push(holder);
        }
        for c in after {
            self.fork_child(&mut inj, p, c, &held, ForkedBy::Parent)?;
        }
        for q in self.adopted.get(&p.pid).cloned().unwrap_or_default() {
            if let Some(q) = tree.procs.iter().find(|o| o.pid == q) {
                self.fork_through_helper(&mut inj, p, &[&q.entry], None)?;
            }
        }
        if p.pid == root {
            for &sid in &tree.leaderless.sessions {
                let members = self.adopted.get(&sid).cloned().unwrap_or_default();
                let entries = tree.procs.iter().map(|o| &o.entry);
                let members: Vec<&pb::PstreeEntry> = entries
                    .chain(tree.zombies.iter().map(|z| &z.entry))
                    .filter(|e| members.contains(&Pid(e.pid as i32)))
                    .collect();
                self.fork_through_helper(&mut inj, p, &members, Some(sid))?;
            }
        }
        inj.finish().map_err(terr(p.pid, "ending injection"))?;
        Ok(())
    }

    /// The session task `e` must be born in, if it matters: its own when it does not
    /// make one; when it does, the one a child of its must be born in, if that is not
    /// `e`'s (that child is forked before `e`'s setsid, see `fork_children`). `adopted`:
    /// the tasks someone else than their parent forks.
    fn born_in(&self, e: &pb::PstreeEntry, adopted: &[Pid]) -> Option<u32> {
        if e.sid != e.pid {
            return Some(e.sid);
        }
        let tree = self.tree;
        let root = tree.procs[0].pid.0 as u32;
        tree.procs
            .iter()
            .map(|c| &c.entry)
            .chain(tree.zombies.iter().map(|z| &z.entry))
            .filter(|c| c.ppid == e.pid && c.pid != root && !adopted.contains(&Pid(c.pid as i32)))
            .filter_map(|c| self.born_in(c, adopted))
            .find(|&sid| sid != e.sid)
    }

    /// Session leader `p` (injected through `inj`) forks `members` into its session for
    /// the root, whose children they are: `p` clones a helper (any pid), the helper
    /// clones them with their pids and is killed, which hands them to the root as the
    /// init of the pid namespace (no task is a child subreaper yet: stage 7 restores
    /// that), and `p` reaps the helper.
    ///
    /// With `session`, whose leader is gone, `p` is the root: the helper takes the
    /// session's number and makes the session (and its group of that number) again
    /// before it forks them.
    fn fork_through_helper(
        &mut self,
        inj: &mut Injector,
        p: &Images,
        members: &[&pb::PstreeEntry],
        session: Option<Pid>,
    ) -> Result<(), RestoreError> {
        let gadget = self.forked.gadget;
        let helper = clone_by_injection(inj, 0, session, self.opts.pid_wait)
            .map_err(|e| e.for_task(p.pid, "clone3 (a helper to fork a member)"))?;
        self.forked.guard.pids.push(helper);
        let forked = (|| -> Result<i64, RestoreError> {
            wait_for_sigstop(helper).map_err(terr(p.pid, "starting a helper"))?;
            // Its number where `p` is, for `p` to reap it.
            let nspid = crate::proc::ProcDir::open(helper)
                .and_then(|d| d.status())
                .map_err(terr(p.pid, "reading a helper's numbers"))?
                .ns_pid
                .last()
                .copied()
                .unwrap_or(helper.0);
            let mut hinj =
                Injector::new(helper, gadget).map_err(terr(p.pid, "starting injection"))?;
            if let Some(sid) = session {
                hinj.syscall_ok("setsid", libc::SYS_setsid, [0; 6])
                    .map_err(terr(sid, "making its session again in a helper"))?;
            }
            let by = ForkedBy::SessionLeader;
            for q in members {
                self.fork_child(&mut hinj, p, q, &cow::Held::default(), by)?;
            }
            hinj.finish().map_err(terr(p.pid, "ending injection"))?;
            Ok(i64::from(nspid))
        })();
        let ended = release_group_holder(helper);
        self.forked.guard.pids.retain(|&h| h != helper);
        let nspid = forked?;
        ended.map_err(terr(p.pid, "ending a helper"))?;
        // ECHILD: already reaped (SIGCHLD ignored in `p`).
        let ret = inj
            .syscall(
                libc::SYS_wait4,
                [nspid as u64, 0, libc::__WALL as u64, 0, 0, 0],
            )
            .map_err(terr(p.pid, "reaping a helper"))?;
        if ret < 0 && ret != -(libc::ECHILD as i64) {
            return Err(terr(p.pid, "reaping a helper")(
                std::io::Error::from_raw_os_error(-ret as i32),
            ));
        }
        Ok(())
    }

    /// Memory `p` (our number `p_host`) shares copy-on-write with its children goes in
    /// now, so that they inherit it (see cow.rs). Returns what it holds.
    fn prefill_cow(
        &self,
        inj: &mut Injector,
        p: &Images,
        p_host: Pid,
    ) -> Result<cow::Held, RestoreError> {
        let tree = self.tree;
        let inherited = self
            .forked
            .cow_held
            .get(&p.pid)
            .cloned()
            .unwrap_or_default();
        let candidates = cow::candidates(p, &tree.procs, &|v| {
            v.status & VMA_FILE_PRIVATE != 0 && tree.opener.is_ghost(v.shmid as u32)
        });
        if candidates.is_empty() {
            return Ok(inherited);
        }
        cow::prefill(inj, p_host, p, &candidates, &inherited, self.affinity)
            .map_err(terr(p.pid, "filling memory shared with its children"))
    }

    /// Process `p` (injected through `inj`) clones its child `c` with its old pid; a
    /// zombie-to-be also joins its session and group now. `held`: the memory the
    /// child inherits from `p`.
    fn fork_child(
        &mut self,
        inj: &mut Injector,
        p: &Images,
        c: &pb::PstreeEntry,
        held: &cow::Held,
        by: ForkedBy,
    ) -> Result<(), RestoreError> {
        let tree = self.tree;
        let c_pid = Pid(c.pid as i32);
        // A child that shares its parent's fd table is cloned sharing it; the first
        // of them to be rebuilt fills it for all (`SharedFdTable`). One its session
        // leader forks for its parent shares nothing of the leader's.
        let share_files = by == ForkedBy::Parent
            && tree
                .procs
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
        let deadline = Instant::now() + self.opts.pid_wait;
        loop {
            match inj.syscall(libc::SYS_clone3, [scratch, args.len() as u64, 0, 0, 0, 0]) {
                Ok(ret) if ret > 0 => {
                    // Our number for it, from the fork event (the call returned the
                    // parent's number).
                    let ours = inj
                        .last_event_msg()
                        .map_or(Pid(ret as i32), |m| Pid(m as i32));
                    self.forked.hosts.insert(c_pid, ours);
                    self.forked.cow_held.insert(c_pid, held.inherited());
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
        let c_host = self.forked.host(c_pid);
        self.forked.guard.pids.push(c_host);
        wait_for_sigstop(c_host).map_err(terr(c_pid, "starting"))?;
        if tree.zombies.iter().any(|z| z.pid() == c_pid) {
            // Now, not later: a group or session the zombie leads must exist before
            // the live processes that belong to it join it.
            let mut zinj = Injector::new(c_host, self.forked.gadget)
                .map_err(terr(c_pid, "starting injection"))?;
            if !join_session_and_group(&mut zinj, c)? {
                self.late_joins.push(c_pid);
            }
            // The processes of its session it hands to the root when it dies (see
            // `Forking::adopted`): a copy of it, nothing of it shared.
            for q in self.adopted.get(&c_pid).cloned().unwrap_or_default() {
                if let Some(q) = tree.procs.iter().find(|o| o.pid == q) {
                    let by = ForkedBy::SessionLeader;
                    self.fork_child(&mut zinj, p, &q.entry, &cow::Held::default(), by)?;
                }
            }
            zinj.finish().map_err(terr(c_pid, "ending injection"))?;
        }
        Ok(())
    }
}

/// A session leader that just made its session (`inj`, still a copy of the restorer)
/// takes the pty `t` as its controlling terminal, through a duplicate of our slave
/// (`restorer_pidfd`: our pidfd, at that number in the task). It clones its children
/// afterwards, so they have it too (see files/tty.rs).
///
/// Then it opens `/dev/tty` once for each file of it the images hold (`/dev/tty` stands
/// for the opener's terminal, so only a task of the session can), and we take those
/// (`host`: our number for it). Returns them by file id.
fn take_terminal(
    inj: &mut Injector,
    host: Pid,
    t: &files::ControllingTerminal,
    restorer_pidfd: RawFd,
) -> std::io::Result<Vec<(u32, OwnedFd)>> {
    let fd = give_fd(inj, restorer_pidfd as u64, t.slave.as_raw_fd())?;
    let taken = inj.syscall_ok(
        "ioctl(TIOCSCTTY)",
        libc::SYS_ioctl,
        [fd, libc::TIOCSCTTY, 0, 0, 0, 0],
    );
    let closed = inj.syscall_ok("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
    taken.and(closed)?;
    let mut out = Vec::new();
    if t.dev_tty.is_empty() {
        return Ok(out);
    }
    let pidfd = sys::pidfd_open(host)?;
    let scratch = inj.scratch(4096)?;
    inj.write(scratch, b"/dev/tty\0")?;
    for &(id, flags) in &t.dev_tty {
        let flags = (flags | libc::O_NOCTTY | libc::O_CLOEXEC) as u64;
        let theirs = inj.syscall_ok(
            "openat(/dev/tty)",
            libc::SYS_openat,
            [libc::AT_FDCWD as u64, scratch, flags, 0, 0, 0],
        )?;
        let ours = sys::pidfd_getfd(pidfd.as_fd(), theirs as i32);
        inj.syscall_ok("close", libc::SYS_close, [theirs, 0, 0, 0, 0, 0])?;
        out.push((id, ours?));
    }
    Ok(out)
}

/// The leader of `t`'s session (our number `leader`) makes the dumped group the
/// terminal's foreground one: only a task whose controlling terminal it is may. A group
/// that no longer exists (the foreground job had ended, its shell had not taken the
/// terminal back yet) leaves the leader's own group there, with a warning.
fn give_foreground(
    leader: Pid,
    t: &files::ControllingTerminal,
    gadget: u64,
    restorer_pidfd: RawFd,
) -> std::io::Result<()> {
    let mut inj = Injector::new(leader, gadget)?;
    let scratch = inj.scratch(4096)?;
    inj.write(scratch, &t.pgrp.0.to_le_bytes())?;
    let fd = give_fd(&mut inj, restorer_pidfd as u64, t.slave.as_raw_fd())?;
    let set = inj.syscall_ok(
        "ioctl(TIOCSPGRP)",
        libc::SYS_ioctl,
        [fd, libc::TIOCSPGRP, scratch, 0, 0, 0],
    );
    inj.syscall_ok("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    match set {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH) | Some(libc::EPERM)) => {
            tracing::warn!(
                "{}: its foreground group {} is gone; session {}'s leader's group stays                  in the foreground",
                t.name,
                t.pgrp,
                t.sid
            );
        }
        other => {
            other?;
        }
    }
    inj.finish()
}

/// `--shell-job`: the terminal's foreground group as the shell had it, for a job
/// (whose root is `root`) that was in our session. A job that led its own group was in
/// the foreground when dumped (a shell job is dumped from the foreground, or stopped in
/// the background: then it stops again at once); one that did not goes on in the group
/// of our parent.
pub(super) fn give_terminal(root: &Images, terminal: &OwnedFd) {
    let e = &root.entry;
    let group = if e.pgid == e.pid {
        Ok(Pid(e.pgid as i32))
    } else {
        sys::parent_group()
    };
    if let Err(e) = group.and_then(|g| sys::set_foreground_group(terminal.as_fd(), g)) {
        tracing::warn!("the restored job is not in the terminal's foreground: {e}");
    }
}
