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
pub use criu_images::flags::task_state::{
    ALIVE as TASK_ALIVE, STOPPED as TASK_STOPPED, ZOMBIE as TASK_ZOMBIE,
};

/// Process-wide values read by injection in the thread-group leader.
#[derive(Debug, Default, Clone)]
pub struct ProcessExtras {
    pub sigactions: Vec<pb::SaEntry>,
    pub itimers: [pb::ItimerEntry; 3],
    pub brk: u64,
    pub dumpable: i32,
    pub thp_disabled: bool,
    pub child_subreaper: bool,
    /// `MEMBARRIER_CMD_REGISTER_*` bits of the membarrier commands the process
    /// registered for (the registrations belong to its mm).
    pub membarrier: u32,
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

/// Where each answer lands in the leader's scratch area: the calls all run before any
/// is read (`Injector::syscalls`), so every one has its own place.
const SIGACTIONS_AT: u64 = 0;
const ITIMERS_AT: u64 = SIGACTIONS_AT + SIGACTION_SIZE * 65;
const SUBREAPER_AT: u64 = ITIMERS_AT + 32 * 3;
const TIMERS_AT: u64 = SUBREAPER_AT + 16;

fn word(b: &[u8], i: usize) -> u64 {
    b.get(i * 8..i * 8 + 8)
        .and_then(|w| w.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or_default()
}

/// Reads the process-wide state that needs injection. `inj` runs in the leader;
/// `timers` are the POSIX timers /proc lists for the process.
pub fn process_extras(inj: &mut Injector, timers: &[PosixTimer]) -> io::Result<ProcessExtras> {
    let scratch = inj.scratch(TIMERS_AT + 32 * timers.len() as u64)?;
    // Handlers of signals 1..=64 except SIGKILL and SIGSTOP, which cannot have any.
    let signals: Vec<u64> = (1..=64u64)
        .filter(|&sig| sig != libc::SIGKILL as u64 && sig != libc::SIGSTOP as u64)
        .collect();
    let mut calls: Vec<(&str, i64, [u64; 6])> = signals
        .iter()
        .map(|&sig| {
            let at = scratch + SIGACTIONS_AT + SIGACTION_SIZE * sig;
            (
                "rt_sigaction",
                libc::SYS_rt_sigaction,
                [sig, 0, at, 8, 0, 0],
            )
        })
        .collect();
    // getitimer(which, &itimerval): {interval {sec, usec}, value {sec, usec}}.
    for which in 0..3u64 {
        let at = scratch + ITIMERS_AT + 32 * which;
        calls.push(("getitimer", libc::SYS_getitimer, [which, at, 0, 0, 0, 0]));
    }
    // timer_gettime(id, &itimerspec {interval {sec, nsec}, value {sec, nsec}}).
    let timers_from = calls.len();
    for (i, t) in timers.iter().enumerate() {
        let (id, at) = (t.id as u64, scratch + TIMERS_AT + 32 * i as u64);
        calls.push((
            "timer_gettime",
            libc::SYS_timer_gettime,
            [id, at, 0, 0, 0, 0],
        ));
        calls.push((
            "timer_getoverrun",
            libc::SYS_timer_getoverrun,
            [id, 0, 0, 0, 0, 0],
        ));
    }
    let prctl = |op: i32, arg: u64| [op as u64, arg, 0, 0, 0, 0];
    let tail_from = calls.len();
    calls.extend([
        ("brk", libc::SYS_brk, [0; 6]),
        (
            "prctl(PR_GET_DUMPABLE)",
            libc::SYS_prctl,
            prctl(libc::PR_GET_DUMPABLE, 0),
        ),
        (
            "prctl(PR_GET_THP_DISABLE)",
            libc::SYS_prctl,
            prctl(libc::PR_GET_THP_DISABLE, 0),
        ),
        (
            "prctl(PR_GET_CHILD_SUBREAPER)",
            libc::SYS_prctl,
            prctl(libc::PR_GET_CHILD_SUBREAPER, scratch + SUBREAPER_AT),
        ),
    ]);
    let results = inj.syscalls_ok(&calls)?;
    let raw = inj.read(scratch, (TIMERS_AT + 32 * timers.len() as u64) as usize)?;

    let mut out = ProcessExtras::default();
    for &sig in &signals {
        let at = (SIGACTIONS_AT + SIGACTION_SIZE * sig) as usize;
        let b = &raw[at..at + SIGACTION_SIZE as usize];
        out.sigactions.push(pb::SaEntry {
            sigaction: word(b, 0),
            flags: word(b, 1),
            restorer: word(b, 2),
            mask: word(b, 3),
            compat_sigaction: Some(false),
            mask_extended: None,
        });
    }
    for which in 0..3usize {
        let b = &raw[ITIMERS_AT as usize + 32 * which..];
        out.itimers[which] = pb::ItimerEntry {
            isec: word(b, 0),
            iusec: word(b, 1),
            vsec: word(b, 2),
            vusec: word(b, 3),
        };
    }
    let timer_results = &results[timers_from..tail_from];
    for (i, t) in timers.iter().enumerate() {
        let v = &raw[TIMERS_AT as usize + 32 * i..];
        out.posix_timers.push(pb::PosixTimerEntry {
            it_id: t.id as u32,
            clock_id: t.clock_id,
            si_signo: t.signo,
            it_sigev_notify: t.notify,
            sival_ptr: t.sival_ptr,
            overrun: timer_results[2 * i + 1] as u32,
            isec: word(v, 0),
            insec: word(v, 1),
            vsec: word(v, 2),
            vnsec: word(v, 3),
            notify_thread_id: (t.notify & libc::SIGEV_THREAD_ID as u32 != 0)
                .then_some(t.notify_pid),
        });
    }
    let tail = &results[tail_from..];
    out.brk = tail[0];
    out.dumpable = match tail[1] {
        d @ (0 | 1) => d as i32,
        // SUID_DUMP_ROOT (a setuid program with fs.suid_dumpable=2): prctl cannot set it.
        other => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("dumpable mode {other} (suid_dumpable), which restore cannot set"),
            ))
        }
    };
    out.thp_disabled = match tail[2] {
        0 => false,
        1 => true,
        // Linux 6.18: 3 is "disabled except where madvise(MADV_HUGEPAGE) asks", which
        // the image's boolean cannot hold.
        other => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("THP disabled with flags (PR_GET_THP_DISABLE answers {other})"),
            ))
        }
    };
    let at = SUBREAPER_AT as usize;
    out.child_subreaper = raw[at..at + 4] != [0, 0, 0, 0];
    out.membarrier = membarrier_registrations(inj)?;
    Ok(out)
}

const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;
/// (register, execute) command pairs of the private expedited barriers.
const MEMBARRIER_PRIVATE: [(u32, u64); 3] = [(1 << 4, 1 << 3), (1 << 6, 1 << 5), (1 << 8, 1 << 7)];

/// The membarrier commands the process registered for, as `MEMBARRIER_CMD_REGISTER_*`
/// bits (what CRIU records as `membarrier_registration_mask`). Asked inside the task:
/// registrations are kept per mm, and nothing in /proc shows them.
fn membarrier_registrations(inj: &mut Injector) -> io::Result<u32> {
    let ret = inj.syscall(
        libc::SYS_membarrier,
        [MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0, 0, 0, 0],
    )?;
    if ret >= 0 {
        return Ok(ret as u32);
    }
    match -ret as i32 {
        // No membarrier at all: nothing can be registered.
        libc::ENOSYS => Ok(0),
        // Before Linux 6.3 there is no query: a private expedited barrier fails with
        // EPERM in a process not registered for it. (A GLOBAL_EXPEDITED registration
        // cannot be seen on those kernels.)
        libc::EINVAL => {
            let mut mask = 0;
            for (register, execute) in MEMBARRIER_PRIVATE {
                if inj.syscall(libc::SYS_membarrier, [execute, 0, 0, 0, 0, 0])? == 0 {
                    mask |= register;
                }
            }
            Ok(mask)
        }
        errno => Err(io::Error::other(format!(
            "membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS): {}",
            io::Error::from_raw_os_error(errno)
        ))),
    }
}

/// Reads the per-thread state that needs injection. `inj` runs in that thread.
pub fn thread_extras(inj: &mut Injector) -> io::Result<ThreadExtras> {
    let scratch = inj.scratch(256)?;
    let (tid_at, sas_at, pdeath_at) = (scratch, scratch + 64, scratch + 128);
    let prctl = |op: i32, arg: u64| [op as u64, arg, 0, 0, 0, 0];
    let results = inj.syscalls_ok(&[
        (
            "prctl(PR_GET_TID_ADDRESS)",
            libc::SYS_prctl,
            prctl(libc::PR_GET_TID_ADDRESS, tid_at),
        ),
        (
            "sigaltstack",
            libc::SYS_sigaltstack,
            [0, sas_at, 0, 0, 0, 0],
        ),
        (
            "prctl(PR_GET_PDEATHSIG)",
            libc::SYS_prctl,
            prctl(libc::PR_GET_PDEATHSIG, pdeath_at),
        ),
        (
            "prctl(PR_GET_SECUREBITS)",
            libc::SYS_prctl,
            prctl(libc::PR_GET_SECUREBITS, 0),
        ),
    ])?;
    let raw = inj.read(scratch, 256)?;
    // stack_t: {ss_sp u64, ss_flags i32, pad, ss_size u64}.
    let ss = &raw[64..88];
    Ok(ThreadExtras {
        clear_tid: word(&raw, 0),
        sas: pb::ThreadSasEntry {
            ss_sp: word(ss, 0),
            ss_flags: word(ss, 1) as u32,
            ss_size: word(ss, 2),
        },
        pdeath_sig: word(&raw[128..], 0) as u32,
        secbits: results[3] as u32,
    })
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
    // A thread without a list (or gone) reads as none, as CRIU saves it.
    sys::get_robust_list(tid).map_or((0, 0), |(head, len)| (head, len as u32))
}

/// A thread's scheduling as CRIU saves it: the policy with its `SCHED_RESET_ON_FORK`
/// flag (which /proc/PID/stat does not show), the real-time priority and the nice value.
/// SCHED_DEADLINE has parameters the image cannot hold: refused.
fn thread_sched(tid: Pid) -> io::Result<sys::Sched> {
    let sched = sys::sched_get(tid)?;
    const SCHED_DEADLINE: i32 = 6;
    if sched.policy & !sys::SCHED_RESET_ON_FORK == SCHED_DEADLINE {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "SCHED_DEADLINE scheduling, which the image cannot hold",
        ));
    }
    Ok(sched)
}

/// The thread part of a core entry (everything but `tc`).
pub fn thread_core(
    (pid, tid): (Pid, Pid),
    status: &crate::proc::Status,
    regs: &libc::user_regs_struct,
    extras: &ThreadExtras,
) -> io::Result<pb::CoreEntry> {
    let dir = ProcDir::open_thread(pid, tid)?;
    let xstate = sys::ptrace_get_xstate(tid)?;
    let unsaved = arch::xfeatures_unsaved(&xstate);
    if unsaved != 0 {
        // Refused before anything changes: a restore would silently lose that state.
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "xsave state {} is in use, which the image format cannot hold",
                arch::describe_xfeatures(unsaved)
            ),
        ));
    }
    let mask = sys::ptrace_get_sigmask(tid)?;
    let pending = sys::ptrace_peek_siginfo(tid, false)?;
    let rseq = sys::ptrace_get_rseq(tid)?;
    let (futex_rla, futex_rla_len) = robust_list(tid);
    let sched = thread_sched(tid)?;
    let comm = dir.comm()?;
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
        sched_nice: Some(sched.nice),
        sched_policy: Some(sched.policy as u32),
        sched_prio: sched.realtime().then_some(sched.priority as u32),
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

/// Refuses an oom_score_adj that a restorer like us could not set: lowering it below
/// the minimum a process inherited needs CAP_SYS_RESOURCE (which this machine kind
/// lacks). Tried on ourselves: lowering our own value to `value` works exactly when a
/// restored task (cloned from a restorer like us) may be given it; ours is raised back
/// at once (raising is always allowed).
fn check_oom_score_adj_settable(value: i32) -> io::Result<()> {
    const PATH: &str = "/proc/self/oom_score_adj";
    let ours: i32 = std::fs::read_to_string(PATH)?
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{PATH}: {e}")))?;
    if value >= ours {
        return Ok(());
    }
    match std::fs::write(PATH, value.to_string()) {
        Ok(()) => std::fs::write(PATH, ours.to_string()),
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "oom_score_adj {value}, below what a restore without CAP_SYS_RESOURCE \
                 can set"
            ),
        )),
        Err(e) => Err(e),
    }
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
    let comm = dir.comm().unwrap_or(stat.comm.clone().into_bytes());
    let mut tc = pb::TaskCoreEntry {
        task_state: state,
        exit_code: exit_code as u32,
        // A zombie's is not read: CRIU records zombies without one.
        personality: 0,
        flags: stat.flags,
        blk_sigset: 0,
        comm,
        stop_signo,
        ..Default::default()
    };
    if state == TASK_ZOMBIE {
        return Ok(tc);
    }
    tc.personality = dir.read_number("personality", 16)? as u32;
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
    // loginuid exists only in kernels built with audit support; any other error is one.
    tc.loginuid = match dir.read_number("loginuid", 10) {
        Ok(v) => Some(v as u32),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let oom_score_adj = dir.read_number("oom_score_adj", 10)? as i32;
    check_oom_score_adj_settable(oom_score_adj)?;
    tc.oom_score_adj = Some(oom_score_adj);
    if let Some(x) = extras {
        tc.timers = Some(pb::TaskTimersEntry {
            real: x.itimers[0],
            virt: x.itimers[1],
            prof: x.itimers[2],
            posix: x.posix_timers.clone(),
        });
        tc.sigactions = x.sigactions.clone();
        tc.child_subreaper = Some(x.child_subreaper);
        tc.membarrier_registration_mask = (x.membarrier != 0).then_some(x.membarrier);
    }
    Ok(tc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_oom_score_adj() -> i32 {
        std::fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn has_cap_sys_resource() -> bool {
        caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_RESOURCE,
        )
        .unwrap()
    }

    #[test]
    fn an_oom_score_adj_below_what_we_may_set_is_refused_and_ours_stays() {
        let ours = own_oom_score_adj();
        // Raising is always allowed: nothing is tried.
        check_oom_score_adj_settable(ours + 5).unwrap();
        // -1000 is below any minimum but that of a process with CAP_SYS_RESOURCE.
        let lowest = check_oom_score_adj_settable(-1000);
        if has_cap_sys_resource() {
            lowest.unwrap();
        } else {
            let e = lowest.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
            assert!(e.to_string().contains("oom_score_adj -1000"), "{e}");
        }
        assert_eq!(own_oom_score_adj(), ours, "the probe leaves our own value");
    }
}
