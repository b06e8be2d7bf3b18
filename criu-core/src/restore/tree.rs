//! Stage 2's process tree: sessions and process groups (with holders for groups whose leader is gone), zombies, and a shell job's terminal.

use super::*;

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
/// the image gives it (creating them when it leads them).
pub(super) fn join_session_and_group(
    inj: &mut Injector,
    e: &pb::PstreeEntry,
) -> Result<(), RestoreError> {
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
    if pgid != pid.0 || sid != pid.0 {
        let target = if pgid == pid.0 { 0 } else { pgid as u64 };
        inj.syscall_ok("setpgid", libc::SYS_setpgid, [0, target, 0, 0, 0, 0])
            .map_err(terr("joining its process group"))?;
    }
    Ok(())
}

/// Process groups of the tree whose leader is gone (it exited and was reaped, as a
/// group outlives its leader): something must hold each while its members join it
/// (`hold_group`). What cannot be rebuilt is refused (see `sessions.rs`, which the dump
/// asks too).
pub(super) fn leaderless_groups(
    procs: &[Images],
    zombies: &[Zombie],
) -> Result<Vec<Pid>, RestoreError> {
    let tasks: Vec<crate::sessions::TaskIds> = procs
        .iter()
        .map(|p| &p.entry)
        .chain(zombies.iter().map(|z| &z.entry))
        .map(|e| crate::sessions::TaskIds {
            pid: e.pid,
            pgid: e.pgid,
            sid: e.sid,
        })
        .collect();
    // After a shell job's migration, ids outside the tree are ours.
    let (our_sid, our_pgid) = sys::own_session_and_group();
    let outside = [our_sid.0 as u32, our_pgid.0 as u32];
    let new_pid_ns = procs[0].pid == Pid(1);
    crate::sessions::leaderless_groups(&tasks, &outside, new_pid_ns)
        .map(|groups| groups.into_iter().map(|g| Pid(g as i32)).collect())
        .map_err(unsupported)
}

/// A task with pid `pgid` that leads a new process group of that number in the root's
/// session, so the group's members can join it. It is cloned by the root (`inj`, which
/// has joined its session) with CLONE_PARENT, so its parent is us: we end and reap it
/// (`release_group_holder`) without any restored task seeing it. Returns our number
/// for it.
pub(super) fn hold_group(
    inj: &mut Injector,
    pgid: Pid,
    gadget: u64,
    pid_wait: Duration,
) -> Result<Pid, RestoreError> {
    let terr = |what: &'static str| {
        move |source| RestoreError::Task {
            pid: pgid,
            what: what.into(),
            source,
        }
    };
    let scratch = inj.scratch(4096).map_err(terr("scratch memory"))?;
    inj.write(scratch + 512, &pgid.0.to_le_bytes())
        .map_err(terr("writing a pid"))?;
    let mut args = Vec::new();
    // clone3 args: flags, pidfd, child_tid, parent_tid, exit_signal (0: CLONE_PARENT
    // takes the root's), stack, stack_size, tls, set_tid, set_tid_size, cgroup.
    for w in [
        libc::CLONE_PARENT as u64,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        scratch + 512,
        1,
        0,
    ] {
        args.extend_from_slice(&w.to_le_bytes());
    }
    inj.write(scratch, &args)
        .map_err(terr("writing clone3 arguments"))?;
    let deadline = Instant::now() + pid_wait;
    let ours = loop {
        let ret = inj
            .syscall(libc::SYS_clone3, [scratch, args.len() as u64, 0, 0, 0, 0])
            .map_err(terr("clone3 (group holder)"))?;
        if ret > 0 {
            break inj
                .last_event_msg()
                .map_or(Pid(ret as i32), |m| Pid(m as i32));
        }
        if ret == -(libc::EEXIST as i64) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if ret == -(libc::EEXIST as i64) {
            return Err(RestoreError::PidBusy(pgid));
        }
        return Err(terr("clone3 (group holder)")(
            std::io::Error::from_raw_os_error(-ret as i32),
        ));
    };
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
    Ok(ours)
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
