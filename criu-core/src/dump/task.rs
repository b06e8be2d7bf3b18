//! Per-process and per-thread state of a frozen task, as `core_entry`s: registers,
//! signals, credentials, timers, limits, and the values only an injected syscall can
//! read (handlers, itimers, brk, sigaltstack, clear_child_tid).

use std::io;

use criu_images::pb;

use crate::arch;
use crate::inject::Injector;
use crate::proc::{PosixTimer, ProcDir};
use crate::sys::{self, Pid};

/// task_state values of task_core_entry.
pub const TASK_ALIVE: u32 = 1;
pub const TASK_STOPPED: u32 = 3;
pub const TASK_ZOMBIE: u32 = 6;

/// Process-wide values read by injection in the thread-group leader.
#[derive(Debug, Default, Clone)]
pub struct ProcessExtras {
    pub sigactions: Vec<pb::SaEntry>,
    pub itimers: [pb::ItimerEntry; 3],
    pub brk: u64,
    pub dumpable: i32,
    pub thp_disabled: bool,
    pub child_subreaper: bool,
    pub posix_timers: Vec<pb::PosixTimerEntry>,
}

/// Per-thread values read by injection in that thread.
#[derive(Debug, Default, Clone)]
pub struct ThreadExtras {
    pub clear_tid: u64,
    pub sas: pb::ThreadSasEntry,
    pub pdeath_sig: u32,
    pub secbits: u32,
}

const SIGACTION_SIZE: u64 = 32;

/// Reads the process-wide state that needs injection. `inj` runs in the leader;
/// `timers` are the POSIX timers /proc lists for the process.
pub fn process_extras(inj: &mut Injector, timers: &[PosixTimer]) -> io::Result<ProcessExtras> {
    let scratch = inj.scratch(4096)?;
    let mut out = ProcessExtras::default();
    // Handlers of signals 1..=64 except SIGKILL and SIGSTOP, which cannot have any.
    for sig in 1..=64u64 {
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            continue;
        }
        inj.syscall_ok(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            [sig, 0, scratch + SIGACTION_SIZE * sig, 8, 0, 0],
        )?;
    }
    let raw = inj.read(scratch, (SIGACTION_SIZE * 65) as usize)?;
    let word =
        |b: &[u8], i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    for sig in 1..=64usize {
        if sig == libc::SIGKILL as usize || sig == libc::SIGSTOP as usize {
            continue;
        }
        let b = &raw[sig * SIGACTION_SIZE as usize..(sig + 1) * SIGACTION_SIZE as usize];
        out.sigactions.push(pb::SaEntry {
            sigaction: word(b, 0),
            flags: word(b, 1),
            restorer: word(b, 2),
            mask: word(b, 3),
            compat_sigaction: Some(false),
            mask_extended: None,
        });
    }
    // getitimer(which, &itimerval): {interval {sec, usec}, value {sec, usec}}.
    for which in 0..3u64 {
        inj.syscall_ok(
            "getitimer",
            libc::SYS_getitimer,
            [which, scratch + 64 * which, 0, 0, 0, 0],
        )?;
    }
    let t = inj.read(scratch, 192)?;
    for which in 0..3usize {
        let b = &t[which * 64..];
        out.itimers[which] = pb::ItimerEntry {
            isec: word(b, 0),
            iusec: word(b, 1),
            vsec: word(b, 2),
            vusec: word(b, 3),
        };
    }
    // timer_gettime(id, &itimerspec {interval {sec, nsec}, value {sec, nsec}}).
    for t in timers {
        let id = t.id as u64;
        inj.syscall_ok(
            "timer_gettime",
            libc::SYS_timer_gettime,
            [id, scratch, 0, 0, 0, 0],
        )?;
        let v = inj.read(scratch, 32)?;
        let overrun = inj.syscall_ok(
            "timer_getoverrun",
            libc::SYS_timer_getoverrun,
            [id, 0, 0, 0, 0, 0],
        )?;
        out.posix_timers.push(pb::PosixTimerEntry {
            it_id: t.id as u32,
            clock_id: t.clock_id,
            si_signo: t.signo,
            it_sigev_notify: t.notify,
            sival_ptr: t.sival_ptr,
            overrun: overrun as u32,
            isec: word(&v, 0),
            insec: word(&v, 1),
            vsec: word(&v, 2),
            vnsec: word(&v, 3),
            notify_thread_id: (t.notify & libc::SIGEV_THREAD_ID as u32 != 0)
                .then_some(t.notify_pid),
        });
    }
    out.brk = inj.syscall_ok("brk", libc::SYS_brk, [0; 6])?;
    out.dumpable = inj.syscall_ok(
        "prctl(PR_GET_DUMPABLE)",
        libc::SYS_prctl,
        [libc::PR_GET_DUMPABLE as u64, 0, 0, 0, 0, 0],
    )? as i32;
    out.thp_disabled = inj.syscall_ok(
        "prctl(PR_GET_THP_DISABLE)",
        libc::SYS_prctl,
        [libc::PR_GET_THP_DISABLE as u64, 0, 0, 0, 0, 0],
    )? != 0;
    inj.syscall_ok(
        "prctl(PR_GET_CHILD_SUBREAPER)",
        libc::SYS_prctl,
        [libc::PR_GET_CHILD_SUBREAPER as u64, scratch, 0, 0, 0, 0],
    )?;
    out.child_subreaper = inj.read(scratch, 4)? != [0, 0, 0, 0];
    Ok(out)
}

/// Reads the per-thread state that needs injection. `inj` runs in that thread.
pub fn thread_extras(inj: &mut Injector) -> io::Result<ThreadExtras> {
    let scratch = inj.scratch(4096)?;
    let mut out = ThreadExtras::default();
    inj.syscall_ok(
        "prctl(PR_GET_TID_ADDRESS)",
        libc::SYS_prctl,
        [libc::PR_GET_TID_ADDRESS as u64, scratch, 0, 0, 0, 0],
    )?;
    out.clear_tid = u64::from_le_bytes(inj.read(scratch, 8)?.try_into().unwrap_or_default());
    inj.syscall_ok(
        "sigaltstack",
        libc::SYS_sigaltstack,
        [0, scratch + 64, 0, 0, 0, 0],
    )?;
    // stack_t: {ss_sp u64, ss_flags i32, pad, ss_size u64}.
    let ss = inj.read(scratch + 64, 24)?;
    out.sas = pb::ThreadSasEntry {
        ss_sp: u64::from_le_bytes(ss[0..8].try_into().unwrap_or_default()),
        ss_flags: u32::from_le_bytes(ss[8..12].try_into().unwrap_or_default()),
        ss_size: u64::from_le_bytes(ss[16..24].try_into().unwrap_or_default()),
    };
    inj.syscall_ok(
        "prctl(PR_GET_PDEATHSIG)",
        libc::SYS_prctl,
        [libc::PR_GET_PDEATHSIG as u64, scratch + 128, 0, 0, 0, 0],
    )?;
    out.pdeath_sig = u32::from_le_bytes(inj.read(scratch + 128, 4)?.try_into().unwrap_or_default());
    out.secbits = inj.syscall_ok(
        "prctl(PR_GET_SECUREBITS)",
        libc::SYS_prctl,
        [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0],
    )? as u32;
    Ok(out)
}

/// A capability set as CRIU stores it: 32-bit words, lowest first.
fn cap_words(set: u64) -> Vec<u32> {
    vec![set as u32, (set >> 32) as u32]
}

fn signal_queue(raw: Vec<[u8; sys::SIGINFO_SIZE]>) -> pb::SignalQueueEntry {
    pb::SignalQueueEntry {
        signals: raw
            .into_iter()
            .map(|s| pb::SiginfoEntry {
                siginfo: s.to_vec(),
            })
            .collect(),
    }
}

/// The robust futex list head of a thread, read from outside.
fn robust_list(tid: Pid) -> (u64, u32) {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: get_robust_list(2) writes one pointer and one size_t into our locals.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid.0,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    if ret == 0 {
        (head, len as u32)
    } else {
        (0, 0)
    }
}

/// The thread part of a core entry (everything but `tc`).
pub fn thread_core(
    pid: Pid,
    tid: Pid,
    regs: &libc::user_regs_struct,
    extras: &ThreadExtras,
) -> io::Result<pb::CoreEntry> {
    let dir = ProcDir::open_thread(pid, tid)?;
    let status = dir.status()?;
    let stat = dir.stat()?;
    let xstate = sys::ptrace_get_xstate(tid)?;
    let mask = sys::ptrace_get_sigmask(tid)?;
    let pending = sys::ptrace_peek_siginfo(tid, false)?;
    let rseq = sys::ptrace_get_rseq(tid)?;
    let (futex_rla, futex_rla_len) = robust_list(tid);
    let comm = dir.read_string("comm")?.trim_end_matches('\n').to_owned();
    let creds = pb::CredsEntry {
        uid: status.uids[0],
        euid: status.uids[1],
        suid: status.uids[2],
        fsuid: status.uids[3],
        gid: status.gids[0],
        egid: status.gids[1],
        sgid: status.gids[2],
        fsgid: status.gids[3],
        cap_inh: cap_words(status.cap_inh),
        cap_prm: cap_words(status.cap_prm),
        cap_eff: cap_words(status.cap_eff),
        cap_bnd: cap_words(status.cap_bnd),
        secbits: extras.secbits,
        groups: status.groups.clone(),
        no_new_privs: status.no_new_privs.then_some(1),
        cap_amb: cap_words(status.cap_amb),
        ..Default::default()
    };
    let seccomp_mode = match status.seccomp {
        0 => pb::SeccompMode::Disabled,
        1 => pb::SeccompMode::Strict,
        _ => pb::SeccompMode::Filter,
    };
    let thread_core = pb::ThreadCoreEntry {
        futex_rla,
        futex_rla_len,
        sched_nice: Some(stat.nice as i32),
        sched_policy: Some(stat.policy),
        sched_prio: (stat.rt_priority != 0).then_some(stat.rt_priority),
        blk_sigset: Some(mask),
        sas: Some(extras.sas),
        pdeath_sig: (extras.pdeath_sig != 0).then_some(extras.pdeath_sig),
        signals_p: Some(signal_queue(pending)),
        creds: Some(creds),
        seccomp_mode: (status.seccomp != 0).then_some(seccomp_mode as i32),
        seccomp_filter: None,
        comm: Some(comm),
        blk_sigset_extended: None,
        rseq_entry: Some(pb::RseqEntry {
            rseq_abi_pointer: rseq.abi_pointer,
            rseq_abi_size: rseq.abi_size,
            signature: rseq.signature,
            rseq_cs_pointer: None,
        }),
        cg_set: None,
    };
    let image_regs = arch::regs_for_image(regs);
    Ok(pb::CoreEntry {
        mtype: pb::core_entry::March::X8664 as i32,
        thread_info: Some(pb::ThreadInfoX86 {
            clear_tid_addr: extras.clear_tid,
            gpregs: arch::regs_to_image(&image_regs),
            fpregs: arch::fpregs_to_image(&xstate),
            tls: Vec::new(),
        }),
        tc: None,
        ids: None,
        thread_core: Some(thread_core),
    })
}

/// The process part of the leader's core entry.
pub fn task_core(
    dir: &ProcDir,
    state: u32,
    exit_code: i32,
    stop_signo: Option<u32>,
    extras: Option<&ProcessExtras>,
) -> io::Result<pb::TaskCoreEntry> {
    let stat = dir.stat()?;
    let comm = dir
        .read_string("comm")
        .map(|c| c.trim_end_matches('\n').to_owned())
        .unwrap_or(stat.comm.clone());
    let mut tc = pb::TaskCoreEntry {
        task_state: state,
        exit_code: exit_code as u32,
        personality: dir.read_number("personality", 16).unwrap_or(0) as u32,
        flags: stat.flags,
        blk_sigset: 0,
        comm,
        stop_signo,
        ..Default::default()
    };
    if state == TASK_ZOMBIE {
        return Ok(tc);
    }
    let leader = dir.pid();
    tc.blk_sigset = sys::ptrace_get_sigmask(leader)?;
    tc.rlimits = Some(pb::TaskRlimitsEntry {
        rlimits: dir
            .limits()?
            .into_iter()
            .map(|(cur, max)| pb::RlimitEntry { cur, max })
            .collect(),
    });
    tc.signals_s = Some(signal_queue(sys::ptrace_peek_siginfo(leader, true)?));
    tc.loginuid = dir.read_number("loginuid", 10).ok().map(|v| v as u32);
    tc.oom_score_adj = dir.read_number("oom_score_adj", 10).ok().map(|v| v as i32);
    if let Some(x) = extras {
        tc.timers = Some(pb::TaskTimersEntry {
            real: x.itimers[0],
            virt: x.itimers[1],
            prof: x.itimers[2],
            posix: x.posix_timers.clone(),
        });
        tc.sigactions = x.sigactions.clone();
        tc.child_subreaper = Some(x.child_subreaper);
    }
    Ok(tc)
}
