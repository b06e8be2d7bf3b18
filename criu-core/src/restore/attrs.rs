//! Process and thread attributes that a restore puts back exactly as dumped: scheduling
//! (policy, real-time priority, nice), the parent-death signal, oom_score_adj, loginuid,
//! the THP switch, child subreaper, dumpable, and seccomp (filter chains and strict
//! mode).
//!
//! Order matters, and is the caller's (see `rebuild`):
//! - loginuid and the THP switch go first (stage 7), while the task still has the
//!   restorer's capabilities, and before its threads are cloned (they inherit loginuid);
//! - seccomp filters go in before the credentials drop (installing one needs
//!   CAP_SYS_ADMIN or no_new_privs), and after the threads are cloned (a clone inherits
//!   the filters of its creator). The injected calls that follow (setresuid...) are not
//!   filtered because every restored task is traced with PTRACE_O_SUSPEND_SECCOMP, which
//!   ends when it is detached;
//! - the parent-death signal and the dumpable flag after the credentials (a uid or gid
//!   change clears the one and resets the other), and strict mode last of all (it allows nothing but read, write, exit and sigreturn);
//! - scheduling and oom_score_adj from outside, once the task is rebuilt.

use criu_images::pb;

use super::{open_in_task, RestoreError};
use crate::inject::Injector;
use crate::sys::{self, Pid};

const SECCOMP_MODE_STRICT: u32 = 1;
const SECCOMP_MODE_FILTER: u32 = 2;
const SECCOMP_SET_MODE_STRICT: u64 = 0;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_FILTER_FLAG_TSYNC: u32 = 1;
/// The kernel's limit on one classic BPF program (BPF_MAXINSNS).
const MAX_FILTER_INSNS: usize = 4096;

/// The seccomp state one thread gets back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct SeccompPlan {
    /// `SECCOMP_MODE_*`: 0 off, 1 strict, 2 filter.
    pub mode: u32,
    /// Filter mode: (program, `SECCOMP_FILTER_FLAG_*`) in installation order, oldest
    /// first. Empty for a thread that gets its filters from its leader's TSYNC.
    pub chain: Vec<(Vec<u8>, u32)>,
}

impl SeccompPlan {
    pub fn is_off(&self) -> bool {
        self.mode == 0
    }
}

/// What `thread_core` says about a thread's seccomp, with its filter chain taken out of
/// `seccomp.img` (`filters`): from `seccomp_filter`, following `prev` (see
/// `dump/seccomp.rs` for CRIU's layout).
pub(super) fn seccomp_plan(
    tcore: Option<&pb::ThreadCoreEntry>,
    filters: &[pb::SeccompFilter],
    image: &str,
) -> Result<SeccompPlan, RestoreError> {
    let bad = |what: String| RestoreError::BadImage {
        image: image.to_owned(),
        what,
    };
    let Some(tcore) = tcore else {
        return Ok(SeccompPlan::default());
    };
    let mode = tcore.seccomp_mode.unwrap_or(0) as u32;
    match mode {
        0 | SECCOMP_MODE_STRICT => {
            if tcore.seccomp_filter.is_some() {
                return Err(bad(format!(
                    "seccomp filter given for a thread in seccomp mode {mode}"
                )));
            }
            Ok(SeccompPlan {
                mode,
                chain: Vec::new(),
            })
        }
        SECCOMP_MODE_FILTER => {
            let mut chain = Vec::new();
            let mut at = tcore.seccomp_filter;
            while let Some(pos) = at {
                let f = filters.get(pos as usize).ok_or_else(|| {
                    bad(format!(
                        "seccomp filter {pos} is not in seccomp.img ({} filters)",
                        filters.len()
                    ))
                })?;
                if chain.len() >= filters.len() {
                    return Err(bad("the seccomp filter chain loops".into()));
                }
                let insns = f.filter.len() / sys::SOCK_FILTER_SIZE;
                if f.filter.len() % sys::SOCK_FILTER_SIZE != 0
                    || insns == 0
                    || insns > MAX_FILTER_INSNS
                {
                    return Err(bad(format!(
                        "seccomp filter {pos} is {} bytes, not 1 to {MAX_FILTER_INSNS} \
                         BPF instructions",
                        f.filter.len()
                    )));
                }
                chain.push((f.filter.clone(), f.flags.unwrap_or(0)));
                at = f.prev;
            }
            Ok(SeccompPlan { mode, chain })
        }
        other => Err(bad(format!("unknown seccomp mode {other}"))),
    }
}

/// Installs a thread's filter chain by injection in that thread, oldest first.
pub(super) fn install_seccomp_filters(
    inj: &mut Injector,
    plan: &SeccompPlan,
) -> std::io::Result<()> {
    if plan.mode != SECCOMP_MODE_FILTER || plan.chain.is_empty() {
        return Ok(());
    }
    // The programs go to an area of their own: they may be larger than the scratch pages.
    let largest = plan.chain.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    let len = (16 + largest as u64).next_multiple_of(sys::page_size());
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let area = inj.syscall_ok(
        "mmap (seccomp filters)",
        libc::SYS_mmap,
        [0, len, rw, anon, u64::MAX, 0],
    )?;
    let installed = (|| {
        for (program, flags) in &plan.chain {
            // struct sock_fprog: {u16 len, 6 bytes padding, struct sock_filter *filter}.
            let mut fprog = ((program.len() / sys::SOCK_FILTER_SIZE) as u16)
                .to_le_bytes()
                .to_vec();
            fprog.extend_from_slice(&[0; 6]);
            fprog.extend_from_slice(&(area + 16).to_le_bytes());
            fprog.extend_from_slice(program);
            inj.write(area, &fprog)?;
            let ret = inj.syscall(
                libc::SYS_seccomp,
                [SECCOMP_SET_MODE_FILTER, u64::from(*flags), area, 0, 0, 0],
            )?;
            // With TSYNC a positive answer is the thread that could not be synchronized.
            if ret > 0 && flags & SECCOMP_FILTER_FLAG_TSYNC != 0 {
                return Err(std::io::Error::other(format!(
                    "seccomp TSYNC: thread {ret} cannot take the filter"
                )));
            }
            inj.check_result("seccomp(SECCOMP_SET_MODE_FILTER)", ret)?;
        }
        Ok(())
    })();
    let unmapped = inj.syscall_ok(
        "munmap (seccomp filters)",
        libc::SYS_munmap,
        [area, len, 0, 0, 0, 0],
    );
    installed.and(unmapped.map(drop))
}

/// Puts a thread in strict mode: its last injected call but the one that ends the
/// injection (allowed while the task is traced with PTRACE_O_SUSPEND_SECCOMP).
pub(super) fn enter_seccomp_strict(inj: &mut Injector, plan: &SeccompPlan) -> std::io::Result<()> {
    if plan.mode != SECCOMP_MODE_STRICT {
        return Ok(());
    }
    inj.syscall_ok(
        "seccomp(SECCOMP_SET_MODE_STRICT)",
        libc::SYS_seccomp,
        [SECCOMP_SET_MODE_STRICT, 0, 0, 0, 0, 0],
    )
    .map(drop)
}

/// The parent-death signal of the injected thread (after its credentials).
pub(super) fn set_pdeath_signal(
    inj: &mut Injector,
    tcore: Option<&pb::ThreadCoreEntry>,
) -> std::io::Result<()> {
    let sig = tcore.and_then(|t| t.pdeath_sig).unwrap_or(0);
    // A new task starts without one; 0 needs no call.
    if sig == 0 {
        return Ok(());
    }
    inj.syscall_ok(
        "prctl(PR_SET_PDEATHSIG)",
        libc::SYS_prctl,
        [libc::PR_SET_PDEATHSIG as u64, u64::from(sig), 0, 0, 0, 0],
    )
    .map(drop)
}

/// The audit login uid of the process, written by the task itself (the kernel lets no
/// one else write it). Needs CAP_AUDIT_CONTROL: before the credentials drop.
pub(super) fn set_loginuid(
    inj: &mut Injector,
    pid: Pid,
    loginuid: Option<u32>,
    scratch: u64,
) -> std::io::Result<()> {
    let Some(uid) = loginuid else { return Ok(()) };
    let current = std::fs::read_to_string(format!("/proc/{}/loginuid", pid.0))?;
    if current.trim().parse::<u32>().ok() == Some(uid) {
        return Ok(());
    }
    let fd = open_in_task(
        inj,
        scratch,
        std::path::Path::new("/proc/self/loginuid"),
        libc::O_WRONLY,
    )?;
    let text = uid.to_string();
    inj.write(scratch + 256, text.as_bytes())?;
    let written = inj.syscall_ok(
        "write (loginuid)",
        libc::SYS_write,
        [fd, scratch + 256, text.len() as u64, 0, 0, 0],
    );
    inj.syscall_ok("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    written.map(drop)
}

/// The process's "THP disabled" switch (an mm flag the restorer's copy may differ in).
pub(super) fn set_thp_disabled(inj: &mut Injector, disabled: Option<bool>) -> std::io::Result<()> {
    let Some(disabled) = disabled else {
        return Ok(());
    };
    inj.syscall_ok(
        "prctl(PR_SET_THP_DISABLE)",
        libc::SYS_prctl,
        [
            libc::PR_SET_THP_DISABLE as u64,
            u64::from(disabled),
            0,
            0,
            0,
            0,
        ],
    )
    .map(drop)
}

/// The process's membarrier registrations (`MEMBARRIER_CMD_REGISTER_*` bits), one
/// registration per bit, in the task: they belong to its mm, which the rebuilt task
/// keeps from here on (threads cloned later share it).
pub(super) fn set_membarrier(inj: &mut Injector, mask: Option<u32>) -> std::io::Result<()> {
    let Some(mask) = mask else { return Ok(()) };
    for bit in 0..32 {
        let cmd = 1u32 << bit;
        if mask & cmd == 0 {
            continue;
        }
        inj.syscall_ok(
            &format!("membarrier(register command {cmd:#x})"),
            libc::SYS_membarrier,
            [u64::from(cmd), 0, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// Whether the process is a child subreaper (orphans below it are reparented to it).
pub(super) fn set_child_subreaper(inj: &mut Injector, on: Option<bool>) -> std::io::Result<()> {
    let Some(on) = on else { return Ok(()) };
    inj.syscall_ok(
        "prctl(PR_SET_CHILD_SUBREAPER)",
        libc::SYS_prctl,
        [
            libc::PR_SET_CHILD_SUBREAPER as u64,
            u64::from(on),
            0,
            0,
            0,
            0,
        ],
    )
    .map(drop)
}

/// The dumpable flag (0 or 1; the dump refuses 2), after the credentials: changing
/// them resets it.
pub(super) fn set_dumpable(inj: &mut Injector, dumpable: Option<i32>) -> std::io::Result<()> {
    let Some(value) = dumpable.filter(|v| *v == 0 || *v == 1) else {
        return Ok(());
    };
    inj.syscall_ok(
        "prctl(PR_SET_DUMPABLE)",
        libc::SYS_prctl,
        [libc::PR_SET_DUMPABLE as u64, value as u64, 0, 0, 0, 0],
    )
    .map(drop)
}

/// oom_score_adj of the process, written from outside. Fails (rather than leaving the
/// restorer's value) when this restorer may not set it: a value below the restorer's
/// own minimum needs CAP_SYS_RESOURCE.
pub(super) fn set_oom_score_adj(pid: Pid, value: Option<i32>) -> std::io::Result<()> {
    let Some(value) = value else { return Ok(()) };
    let path = format!("/proc/{}/oom_score_adj", pid.0);
    if std::fs::read_to_string(&path)?.trim().parse::<i32>().ok() == Some(value) {
        return Ok(());
    }
    std::fs::write(&path, value.to_string())
        .map_err(|e| std::io::Error::new(e.kind(), format!("oom_score_adj {value}: {e}")))
}

/// Scheduling of one thread, set from outside (`tid` our number for it).
pub(super) fn set_sched(tid: Pid, tcore: Option<&pb::ThreadCoreEntry>) -> std::io::Result<()> {
    let Some(t) = tcore else { return Ok(()) };
    let Some(sched) = sched_of(t) else {
        return Ok(());
    };
    if sys::sched_get(tid)? == sched {
        return Ok(());
    }
    sys::sched_set(tid, sched).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "scheduling policy {:#x}, priority {}, nice {}: {e}",
                sched.policy, sched.priority, sched.nice
            ),
        )
    })
}

/// The scheduling a thread core asks for; `None` when it holds none (an image of a
/// dumper that saves no scheduling).
fn sched_of(t: &pb::ThreadCoreEntry) -> Option<sys::Sched> {
    if t.sched_policy.is_none() && t.sched_nice.is_none() {
        return None;
    }
    let mut sched = sys::Sched {
        policy: t.sched_policy.unwrap_or(0) as i32,
        priority: 0,
        nice: t.sched_nice.unwrap_or(0),
    };
    if sched.realtime() {
        sched.priority = t.sched_prio.unwrap_or(0) as i32;
    }
    Some(sched)
}

/// The signal that stops a restored stopped task again: the one that stopped it (its
/// parent can then wait for that stop as before), except that SIGTSTP, SIGTTIN and
/// SIGTTOU do nothing in an orphaned process group (the kernel drops them), where a
/// SIGSTOP still stops it. `pid` is our number for the task.
pub(super) fn stop_signal(pid: Pid, stop_signo: Option<u32>) -> i32 {
    let sig = stop_signo.map_or(libc::SIGSTOP, |s| s as i32);
    match sig {
        libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU if !group_orphaned(pid) => sig,
        _ => libc::SIGSTOP,
    }
}

/// Whether the process group of `pid` is orphaned as the kernel sees it: no live member
/// has a parent in another group of the same session (members whose parent is pid 1 do
/// not count). Unreadable means orphaned, the safe answer.
fn group_orphaned(pid: Pid) -> bool {
    let stat = |p: i32| {
        crate::proc::ProcDir::open(Pid(p))
            .and_then(|d| d.stat())
            .ok()
    };
    let Some(me) = stat(pid.0) else { return true };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    for entry in entries.flatten() {
        let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Some(member) = stat(n).filter(|s| s.pgid == me.pgid) else {
            continue;
        };
        if member.state == 'Z' || member.ppid <= 1 {
            continue;
        }
        if stat(member.ppid).is_some_and(|p| p.pgid != me.pgid && p.sid == member.sid) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(byte: u8, prev: Option<u32>, flags: u32) -> pb::SeccompFilter {
        pb::SeccompFilter {
            filter: vec![byte; 2 * sys::SOCK_FILTER_SIZE],
            prev,
            flags: Some(flags),
        }
    }

    fn core(mode: Option<i32>, first: Option<u32>) -> pb::ThreadCoreEntry {
        pb::ThreadCoreEntry {
            seccomp_mode: mode,
            seccomp_filter: first,
            ..Default::default()
        }
    }

    #[test]
    fn a_chain_is_installed_oldest_first_following_prev() {
        // As the dump writes them: newest first, each `prev` naming the next newer one.
        let filters = [
            filter(3, None, 0),
            filter(2, Some(0), 1),
            filter(1, Some(1), 0),
        ];
        let plan = seccomp_plan(Some(&core(Some(2), Some(2))), &filters, "core").unwrap();
        let order: Vec<(u8, u32)> = plan.chain.iter().map(|(p, f)| (p[0], *f)).collect();
        assert_eq!(order, vec![(1, 0), (2, 1), (3, 0)]);
        assert_eq!(plan.mode, 2);
    }

    #[test]
    fn strict_and_off_threads_have_no_chain() {
        let plan = seccomp_plan(Some(&core(Some(1), None)), &[], "core").unwrap();
        assert_eq!((plan.mode, plan.chain.len()), (1, 0));
        assert!(seccomp_plan(Some(&core(None, None)), &[], "core")
            .unwrap()
            .is_off());
        assert!(seccomp_plan(None, &[], "core").unwrap().is_off());
    }

    #[test]
    fn broken_chains_are_bad_images() {
        let looped = [filter(1, Some(1), 0), filter(2, Some(0), 0)];
        let e = seccomp_plan(Some(&core(Some(2), Some(0))), &looped, "core-1.img");
        assert!(matches!(e, Err(RestoreError::BadImage { .. })), "{e:?}");
        let e = seccomp_plan(Some(&core(Some(2), Some(5))), &looped, "core-1.img");
        assert!(e.unwrap_err().to_string().contains("not in seccomp.img"));
        let short = [pb::SeccompFilter {
            filter: vec![0; 5],
            prev: None,
            flags: None,
        }];
        assert!(seccomp_plan(Some(&core(Some(2), Some(0))), &short, "x").is_err());
        assert!(seccomp_plan(Some(&core(Some(7), None)), &[], "x").is_err());
        assert!(seccomp_plan(Some(&core(Some(1), Some(0))), &short, "x").is_err());
    }

    #[test]
    fn realtime_threads_keep_their_priority_others_get_none() {
        let mut t = pb::ThreadCoreEntry {
            sched_policy: Some((libc::SCHED_RR | sys::SCHED_RESET_ON_FORK) as u32),
            sched_prio: Some(7),
            sched_nice: Some(-3),
            ..Default::default()
        };
        let s = sched_of(&t).unwrap();
        assert_eq!(
            (s.policy, s.priority, s.nice),
            (libc::SCHED_RR | sys::SCHED_RESET_ON_FORK, 7, -3)
        );
        t.sched_policy = Some(libc::SCHED_BATCH as u32);
        assert_eq!(sched_of(&t).unwrap().priority, 0);
        assert!(sched_of(&pb::ThreadCoreEntry::default()).is_none());
    }
}
