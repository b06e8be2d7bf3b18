//! Stages 7 and 8 per thread: the other threads cloned with their tids, signal state,
//! the alternate stack, credentials and the final registers; and stage 8 itself.

use super::*;

/// Per-thread state only the thread itself can set: clear_child_tid, robust list, rseq,
/// sigaltstack, and its private pending signals.
pub(super) fn thread_state(
    inj: &mut Injector,
    tid: Pid,
    pid: Pid,
    ti: &pb::ThreadInfoX86,
    tcore: Option<&pb::ThreadCoreEntry>,
    scratch: u64,
) -> std::io::Result<()> {
    inj.syscall_ok(
        "set_tid_address",
        libc::SYS_set_tid_address,
        [ti.clear_tid_addr, 0, 0, 0, 0, 0],
    )?;
    let Some(tcore) = tcore else { return Ok(()) };
    if tcore.futex_rla != 0 {
        let len = u64::from(tcore.futex_rla_len);
        inj.syscall_ok(
            "set_robust_list",
            libc::SYS_set_robust_list,
            [tcore.futex_rla, len, 0, 0, 0, 0],
        )?;
    }
    if let Some(r) = &tcore.rseq_entry {
        if r.rseq_abi_pointer != 0 {
            let args = [
                r.rseq_abi_pointer,
                u64::from(r.rseq_abi_size),
                0,
                u64::from(r.signature),
                0,
                0,
            ];
            inj.syscall_ok("rseq", libc::SYS_rseq, args)?;
        }
    }
    set_sigaltstack(inj, tcore.sas.as_ref(), scratch)?;
    // Queued by the thread to itself: kernel-origin codes allow no other sender. They
    // stay blocked until the final mask is set.
    for s in tcore.signals_p.iter().flat_map(|q| q.signals.iter()) {
        let signo = u32::from_le_bytes(
            s.siginfo
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .unwrap_or_default(),
        );
        inj.write(scratch, &s.siginfo)?;
        let args = [pid.0 as u64, tid.0 as u64, u64::from(signo), scratch, 0, 0];
        inj.syscall_ok("rt_tgsigqueueinfo", libc::SYS_rt_tgsigqueueinfo, args)?;
    }
    Ok(())
}

/// The sigaltstack a thread is given: the dumped one, or none (disabled) when the dump
/// says so or says nothing. Disabled is set explicitly too: a task cloned from the
/// restorer inherits the restorer's own alternate stack (Rust gives its threads one),
/// whose memory is gone in the restored task, and an SA_ONSTACK handler would then run
/// there and crash. SS_ONSTACK (the thread was on its alternate stack when dumped) is a
/// state, not a request: the signal frame in the restored stack memory carries that.
pub(super) fn sigaltstack_for(sas: Option<&pb::ThreadSasEntry>) -> pb::ThreadSasEntry {
    const SS_AUTODISARM: u32 = 1 << 31;
    match sas {
        Some(s) if s.ss_flags & libc::SS_DISABLE as u32 == 0 => pb::ThreadSasEntry {
            ss_sp: s.ss_sp,
            ss_size: s.ss_size,
            ss_flags: s.ss_flags & SS_AUTODISARM,
        },
        _ => pb::ThreadSasEntry {
            ss_sp: 0,
            ss_size: 0,
            ss_flags: libc::SS_DISABLE as u32,
        },
    }
}

/// stack_t as sigaltstack(2) takes it: {ss_sp, ss_flags (int), padding, ss_size}.
pub(super) fn stack_t_bytes(s: &pb::ThreadSasEntry) -> Vec<u8> {
    let mut raw = s.ss_sp.to_le_bytes().to_vec();
    raw.extend_from_slice(&s.ss_flags.to_le_bytes());
    raw.extend_from_slice(&[0; 4]);
    raw.extend_from_slice(&s.ss_size.to_le_bytes());
    raw
}

/// Sets the thread's sigaltstack (see `sigaltstack_for`) and reads it back: what the
/// kernel then reports must be what was dumped, or the restore fails naming both.
pub(super) fn set_sigaltstack(
    inj: &mut Injector,
    dumped: Option<&pb::ThreadSasEntry>,
    scratch: u64,
) -> std::io::Result<()> {
    let want = sigaltstack_for(dumped);
    let raw = stack_t_bytes(&want);
    let back_at = scratch + raw.len() as u64;
    inj.write(scratch, &raw)?;
    inj.syscalls_ok(&[
        (
            "sigaltstack (set)",
            libc::SYS_sigaltstack,
            [scratch, 0, 0, 0, 0, 0],
        ),
        (
            "sigaltstack (read back)",
            libc::SYS_sigaltstack,
            [0, back_at, 0, 0, 0, 0],
        ),
    ])?;
    let back = inj.read(back_at, raw.len())?;
    let word = |at: usize| u64::from_le_bytes(back[at..at + 8].try_into().unwrap_or_default());
    let got = pb::ThreadSasEntry {
        ss_sp: word(0),
        // SS_ONSTACK here would only say where the injected calls' stack pointer is.
        ss_flags: word(8) as u32 & !(libc::SS_ONSTACK as u32),
        ss_size: word(16),
    };
    if got != want {
        return Err(std::io::Error::other(format!(
            "sigaltstack is {got:?} after setting {want:?}"
        )));
    }
    Ok(())
}

/// A thread's credentials, in the order the kernel allows: groups and gids and the
/// bounding set while still privileged, then securebits and keep-caps so the uid change
/// keeps the permitted set, then the uids, the capability sets and the ambient set.
pub(super) fn set_creds(
    inj: &mut Injector,
    c: &pb::CredsEntry,
    scratch: u64,
) -> std::io::Result<()> {
    // The capset data first, the groups after it: every call goes in one batch (one
    // stop of the task instead of one per call, ~10 per thread), so their data is
    // written up front, apart.
    let word = |set: &[u32], i: usize| set.get(i).copied().unwrap_or(0);
    // capset: header {version 3, pid 0}, then {effective, permitted, inheritable} x 2.
    let mut caps = Vec::new();
    caps.extend_from_slice(&0x2008_0522u32.to_le_bytes());
    caps.extend_from_slice(&0u32.to_le_bytes());
    for i in 0..2 {
        for set in [&c.cap_eff, &c.cap_prm, &c.cap_inh] {
            caps.extend_from_slice(&word(set, i).to_le_bytes());
        }
    }
    inj.write(scratch, &caps)?;
    let groups_at = scratch + 64;
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    if !groups.is_empty() {
        inj.write(groups_at, &groups)?;
    }
    let prctl = |op: i32, arg: u64, arg2: u64| [op as u64, arg, arg2, 0, 0, 0];
    let mut calls: Vec<(String, i64, [u64; 6])> = vec![
        (
            "setgroups".into(),
            libc::SYS_setgroups,
            [c.groups.len() as u64, groups_at, 0, 0, 0, 0],
        ),
        (
            "setresgid".into(),
            libc::SYS_setresgid,
            [c.gid.into(), c.egid.into(), c.sgid.into(), 0, 0, 0],
        ),
        // It returns the previous fsgid, never an error.
        (
            "setfsgid".into(),
            libc::SYS_setfsgid,
            [c.fsgid.into(), 0, 0, 0, 0, 0],
        ),
    ];
    let bounding = u64::from(word(&c.cap_bnd, 0)) | (u64::from(word(&c.cap_bnd, 1)) << 32);
    // Only the capabilities this kernel has: dropping one it has not fails (EINVAL,
    // allowed below) and changes nothing.
    for cap in (0..=last_capability()).filter(|cap| bounding & (1 << cap) == 0) {
        calls.push((
            format!("prctl(PR_CAPBSET_DROP, {cap})"),
            libc::SYS_prctl,
            prctl(libc::PR_CAPBSET_DROP, cap, 0),
        ));
    }
    const SECBIT_KEEP_CAPS: u64 = 1 << 4;
    calls.push((
        "prctl(PR_SET_SECUREBITS)".into(),
        libc::SYS_prctl,
        prctl(
            libc::PR_SET_SECUREBITS,
            u64::from(c.secbits) | SECBIT_KEEP_CAPS,
            0,
        ),
    ));
    calls.push((
        "setresuid".into(),
        libc::SYS_setresuid,
        [c.uid.into(), c.euid.into(), c.suid.into(), 0, 0, 0],
    ));
    calls.push((
        "setfsuid".into(),
        libc::SYS_setfsuid,
        [c.fsuid.into(), 0, 0, 0, 0, 0],
    ));
    calls.push((
        "capset".into(),
        libc::SYS_capset,
        [scratch, scratch + 8, 0, 0, 0, 0],
    ));
    let ambient = u64::from(word(&c.cap_amb, 0)) | (u64::from(word(&c.cap_amb, 1)) << 32);
    for cap in (0..64u64).filter(|cap| ambient & (1 << cap) != 0) {
        let raise = libc::PR_CAP_AMBIENT_RAISE as u64;
        calls.push((
            format!("prctl(PR_CAP_AMBIENT_RAISE, {cap})"),
            libc::SYS_prctl,
            prctl(libc::PR_CAP_AMBIENT, raise, cap),
        ));
    }
    if u64::from(c.secbits) & SECBIT_KEEP_CAPS == 0 {
        calls.push((
            "prctl(PR_SET_KEEPCAPS)".into(),
            libc::SYS_prctl,
            prctl(libc::PR_SET_KEEPCAPS, 0, 0),
        ));
    }
    if c.no_new_privs == Some(1) {
        calls.push((
            "prctl(PR_SET_NO_NEW_PRIVS)".into(),
            libc::SYS_prctl,
            prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0),
        ));
    }
    let raw: Vec<(i64, [u64; 6])> = calls.iter().map(|(_, nr, args)| (*nr, *args)).collect();
    let results = inj.syscalls(&raw)?;
    for ((name, _, _), ret) in calls.iter().zip(results) {
        let unknown_cap =
            name.starts_with("prctl(PR_CAPBSET_DROP") && ret == -(libc::EINVAL as i64);
        if !unknown_cap {
            inj.check_result(name, ret)?;
        }
    }
    Ok(())
}

/// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`),
/// or 63 when that cannot be read.
fn last_capability() -> u64 {
    static LAST: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        crate::proc::read_sysctl("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map_or(63, |last| last.min(63))
    })
}

/// The dumped registers, xsave and blocked mask of a thread stopped for good by us. A
/// call the image has it make again (ip at a `syscall` instruction) is put back as
/// interrupted, for the kernel to restart as the thread leaves its stop: a signal sent
/// to the tree while it was restored then ends the call (a `pause()` loop sees it), as
/// `arch::kernel_restart` explains.
pub(super) fn set_final_registers(
    tid: Pid,
    ti: &pb::ThreadInfoX86,
    mask: u64,
) -> std::io::Result<()> {
    let regs = arch::regs_from_image(&ti.gpregs);
    let at_syscall = arch::syscall_instruction_at(tid, regs.rip);
    sys::ptrace_set_regs(tid, &arch::kernel_restart_from_image(&regs, at_syscall))?;
    let xlen = sys::ptrace_get_xstate(tid)?.len();
    sys::ptrace_set_xstate(tid, &arch::fpregs_from_image(&ti.fpregs, xlen))?;
    sys::ptrace_set_sigmask(tid, mask)
}

impl Rebuild<'_> {
    /// Stage 7, the other threads: cloned by the leader with their old tids (they start
    /// at the gadget's int3 and, traced through PTRACE_O_TRACECLONE, stop before
    /// running), then given their own per-thread state by injection in themselves, and
    /// their registers. Returns our numbers for them.
    pub(super) fn clone_threads(&mut self) -> Result<Vec<Pid>, RestoreError> {
        let img = self.img;
        let mut thread_hosts = Vec::with_capacity(img.threads.len());
        for ((tid, core), seccomp) in img.threads.iter().zip(&img.seccomp[1..]) {
            thread_hosts.push(self.clone_thread(*tid, core, seccomp)?);
        }
        Ok(thread_hosts)
    }

    /// One thread of `clone_threads`: `tid` its own number, `core` its image.
    fn clone_thread(
        &mut self,
        tid: Pid,
        core: &pb::CoreEntry,
        seccomp: &attrs::SeccompPlan,
    ) -> Result<Pid, RestoreError> {
        let scratch = self.scratch();
        // Stage 1 refused a thread without it.
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
        self.inj
            .write(tids_at, &tid.0.to_le_bytes())
            .map_err(self.err("writing a tid"))?;
        let mut args = Vec::new();
        for w in [flags, 0, 0, 0, 0, 0, 0, 0, tids_at, 1, 0] {
            args.extend_from_slice(&u64::to_le_bytes(w));
        }
        self.inj
            .write(scratch, &args)
            .map_err(self.err("writing clone3 arguments"))?;
        self.inj
            .syscall_ok(
                "clone3 (thread)",
                libc::SYS_clone3,
                [scratch, args.len() as u64, 0, 0, 0, 0],
            )
            .map_err(self.err(&format!("creating thread {tid}")))?;
        // Our number for the thread, from the clone event (the tid it has is its own).
        let ours = self.inj.last_event_msg().map_or(tid, |m| Pid(m as i32));
        match sys::wait_timeout(ours, Duration::from_secs(5))
            .map_err(self.err("waiting for a new thread"))?
        {
            WaitStatus::Stopped { .. } => {}
            other => {
                return Err(self.err("starting a thread")(std::io::Error::other(
                    format!("{other:?}"),
                )))
            }
        }
        let tcore = core.thread_core.as_ref();
        let mut tinj =
            Injector::new(ours, self.work).map_err(self.err("injecting into a thread"))?;
        tinj.set_scratch(scratch + PAGE, 2 * PAGE);
        // The leader's batch room (its injector waits meanwhile): one stop per batch.
        tinj.set_batch_room(self.work + 4 * PAGE, WORK_AREA - 4 * PAGE);
        thread_state(&mut tinj, tid, self.img.pid, ti, tcore, scratch + PAGE)
            .map_err(self.err(&format!("state of thread {tid}")))?;
        attrs::install_seccomp_filters(&mut tinj, seccomp)
            .map_err(self.err(&format!("seccomp filters of thread {tid}")))?;
        if let Some(creds) = tcore.and_then(|t| t.creds.as_ref()) {
            set_creds(&mut tinj, creds, scratch + PAGE)
                .map_err(self.err(&format!("credentials of thread {tid}")))?;
        }
        attrs::set_pdeath_signal(&mut tinj, tcore)
            .map_err(self.err(&format!("parent-death signal of thread {tid}")))?;
        attrs::enter_seccomp_strict(&mut tinj, seccomp)
            .map_err(self.err(&format!("seccomp strict mode of thread {tid}")))?;
        tinj.abandon();
        let mask = tcore.and_then(|t| t.blk_sigset).unwrap_or(0);
        set_final_registers(ours, ti, mask)
            .map_err(self.err(&format!("registers of thread {tid}")))?;
        Ok(ours)
    }

    /// Stage 8: drop the work page (stopping at that syscall's exit, since its `int3`
    /// goes with it), then the dumped registers, xsave and blocked mask; from outside,
    /// once nothing more runs in the task, scheduling (a real-time policy would only
    /// slow the injection down) and oom_score_adj, also of its threads `thread_hosts`.
    pub(super) fn finish(self, thread_hosts: &[Pid]) -> Result<(), RestoreError> {
        let (img, pid) = (self.img, self.pid);
        let err = |what: &str| terr(pid, what);
        self.inj
            .last_syscall(libc::SYS_munmap, [self.work, WORK_AREA, 0, 0, 0, 0])
            .map_err(err("removing the work area"))?;
        let tcore = img.core.thread_core.as_ref();
        let mask = tcore
            .and_then(|t| t.blk_sigset)
            .unwrap_or(img.tc.blk_sigset);
        set_final_registers(pid, &img.ti, mask).map_err(err("setting registers"))?;
        attrs::set_sched(pid, tcore).map_err(err("scheduling"))?;
        for ((tid, core), ours) in img.threads.iter().zip(thread_hosts) {
            attrs::set_sched(*ours, core.thread_core.as_ref())
                .map_err(err(&format!("scheduling of thread {tid}")))?;
        }
        attrs::set_oom_score_adj(pid, img.tc.oom_score_adj).map_err(err("oom_score_adj"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
