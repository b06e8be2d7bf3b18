//! io_uring instances: refused by the dump, on purpose. This module says why, and
//! describes the ring in the refusal so the user sees what the program holds.
//!
//! # Why a ring is not dumped (Linux 6.18, checked on this machine)
//!
//! A ring is a kernel context (`struct io_ring_ctx`) plus memory the program maps from
//! the ring's fd (`IORING_OFF_SQ_RING`, `IORING_OFF_CQ_RING`, `IORING_OFF_SQES`; shown
//! as `anon_inode:[io_uring]` in `maps`) or hands in (`IORING_SETUP_NO_MMAP`). What
//! the dump can see of the context is `/proc/PID/fdinfo/N`: `SqMask`, `SqHead`,
//! `SqTail`, `CachedSqHead`, `CqMask`, `CqHead`, `CqTail`, `CachedCqTail`, the
//! pending SQEs and unreaped CQEs, `SqThread`/`SqThreadCpu` (SQPOLL), `UserFiles`
//! (slot and name only), `UserBufs` (address/length), `PollList`, `CqOverflowList`,
//! `NAPI`. A restore that lets "the program's next submission work" needs more than
//! that, and each missing piece would be a silent difference, not a refusal:
//!
//! 1. **Requests in flight cannot be seen.** fdinfo lists poll-armed requests and
//!    overflowed CQEs only; a pending timeout, work queued to or running in io-wq (a
//!    blocking read), a linked chain, a futex or waitid wait, a multishot request
//!    between completions, task_work not run yet show nowhere, and the counters do not
//!    add up to them (`IOSQE_CQE_SKIP_SUCCESS` and multishot break "one SQE, one CQE").
//!    The only query, `IORING_REGISTER_SYNC_CANCEL` with `IORING_ASYNC_CANCEL_ANY`,
//!    answers by cancelling what it finds: the dump would have changed the tree
//!    before it could refuse. So the condition "no request in flight" cannot be checked.
//! 2. **The setup flags cannot be read.** fdinfo prints none of them, and nothing else
//!    returns `io_uring_params` after `io_uring_setup`. Two rings made with flags 0 and
//!    with `SUBMIT_ALL|COOP_TASKRUN` show the same fdinfo (checked). `DEFER_TASKRUN`,
//!    `SUBMIT_ALL`, `IOPOLL`, `COOP_TASKRUN`/`TASKRUN_FLAG`, `ATTACH_WQ`, `R_DISABLED`,
//!    `REGISTERED_FD_ONLY`, `CQE_MIXED` change what the program sees; only
//!    `SINGLE_ISSUER` leaks (an `io_uring_register` from another task fails with
//!    `EEXIST`), sizes follow from the masks, and `SQE128`/`CQE32` from the mappings.
//! 3. **The kernel-owned indexes cannot be set.** The SQ head and CQ tail in the shared
//!    rings are mirrors: the kernel works from `cached_sq_head`/`cached_cq_tail` and
//!    overwrites the mirrors at the next submission (checked: writing 100 to the SQ
//!    head and 200 to the CQ tail in the mapping left `CachedSqHead`/`CachedCqTail`
//!    alone, and the next `io_uring_enter` put both mirrors back).
//!    `IORING_REGISTER_RESIZE_RINGS` (6.13+) copies the mirrors into the new rings but
//!    not the cached values, and only for `DEFER_TASKRUN` rings (EINVAL otherwise,
//!    checked): on a resized ring with a forged head of 50 fdinfo showed `SqHead: 50`,
//!    `CachedSqHead: 0`, i.e. 50 stale SQEs the kernel would take as new. A new ring can
//!    only be brought to the dumped indexes by consuming NOPs (`IOSQE_CQE_SKIP_SUCCESS`
//!    for the SQ side), up to 2^32 of each: possible, slow in the worst case, and
//!    `sq_dropped`/`cq_overflow` would still start from zero.
//! 4. **Registered state is invisible or unidentifiable.** `UserFiles` shows each
//!    slot's dentry name (`pipe:[4209740]`, `/etc/hostname`), which does not say which
//!    open file description it is (two opens of one path look the same), and sparse
//!    slots are not listed; no interface gives the file back without submitting on
//!    the ring (`IORING_OP_FIXED_FD_INSTALL`, `IORING_OP_MSG_RING`), which moves the
//!    indexes the program owns half of. The registered eventfd (`EBUSY` on a second
//!    registration is the only trace), its async mode, provided-buffer rings in user
//!    memory, restrictions, the file-allocation range, resource tags, registered ring
//!    fds (kept per task, `IORING_REGISTER_RING_FDS`) and, on this kernel, personalities
//!    (registered one, fdinfo showed no `Personalities:` section) do not show at all.
//!    A registered buffer shows its address, but it pins the pages it had at
//!    registration, which need not be the pages at that address now.
//! 5. **Its threads are not the program's.** SQPOLL runs an `iou-sqp-PID` thread and
//!    io-wq `iou-wrk-PID` workers; both are listed in `/proc/PID/task` and can be
//!    seized and interrupted like any thread (checked), with `rip` 0 and `orig_ax` the
//!    io_uring syscall, so a dump that took them as threads would restore threads that
//!    jump to address 0. They are marked `PF_IO_WORKER` in `stat`'s flags; the dump
//!    refuses a process that has any ([`io_threads`]), whatever holds the ring.
//!
//! CRIU refuses io_uring too (it does not know the file type). So the dump refuses
//! every ring by name, before the freeze, with the descriptor and what fdinfo shows of
//! the ring ([`describe`]); a ring kept only by its mappings (the fd closed) is refused
//! as a mapping of a kernel object, and by its threads when it has any.

use super::dump::OpenFd;

/// `PF_IO_WORKER` in `/proc/PID/stat`'s flags: an io_uring kernel thread of the process
/// (io-wq worker or SQPOLL thread).
pub const PF_IO_WORKER: u32 = 0x10;

/// What fdinfo shows of the ring behind `fd`, for the refusal.
pub(super) fn describe(fd: &OpenFd<'_>) -> String {
    summary(&fd.fdinfo)
}

/// The summary of an io_uring fdinfo text: sizes, indexes, pending entries, SQPOLL
/// thread, registered files and buffers. Fields missing from the text are left out.
pub fn summary(fdinfo: &str) -> String {
    let field = |name: &str| {
        fdinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == name).then(|| v.trim())
        })
    };
    let entries = |mask: &str| {
        field(mask)
            .and_then(|m| u32::from_str_radix(m.trim_start_matches("0x"), 16).ok())
            .map(|m| u64::from(m) + 1)
    };
    let mut out = Vec::new();
    if let (Some(sq), Some(cq)) = (entries("SqMask"), entries("CqMask")) {
        out.push(format!("{sq} SQ / {cq} CQ entries"));
    }
    if let (Some(h), Some(t)) = (field("SqHead"), field("SqTail")) {
        out.push(format!("SQ head {h} tail {t}"));
    }
    if let (Some(h), Some(t)) = (field("CqHead"), field("CqTail")) {
        out.push(format!("CQ head {h} tail {t}"));
    }
    for (name, what) in [
        ("SQEs", "SQEs not submitted"),
        ("CQEs", "CQEs not reaped"),
        ("UserFiles", "registered files"),
        ("UserBufs", "registered buffers"),
    ] {
        if let Some(n) = field(name).filter(|n| *n != "0") {
            out.push(format!("{n} {what}"));
        }
    }
    if let Some(t) = field("SqThread").filter(|t| *t != "-1") {
        out.push(format!("SQPOLL thread {t}"));
    }
    if fdinfo.lines().any(|l| l == "Personalities:") {
        out.push("personalities".into());
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fdinfo of a ring on Linux 6.18: 3 NOPs submitted, 2 reaped, a pipe and a file
    /// registered, one buffer.
    const FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t4209739\n\
SqMask:\t0x3\nSqHead:\t3\nSqTail:\t3\nCachedSqHead:\t3\nCqMask:\t0x7\nCqHead:\t2\n\
CqTail:\t3\nCachedCqTail:\t3\nSQEs:\t0\nCQEs:\t1\n    2: user_data:2, res:0, flag:0\n\
SqThread:\t-1\nSqThreadCpu:\t-1\nSqTotalTime:\t0\nSqWorkTime:\t0\nUserFiles:\t3\n\
    0: pipe:[4209740]\n    1: /etc/hostname\nUserBufs:\t1\n    0: 0x55bf5574d0c0/4096\n\
PollList:\nCqOverflowList:\nNAPI:\tdisabled\n";

    #[test]
    fn the_summary_says_what_the_ring_holds() {
        assert_eq!(
            summary(FDINFO),
            "4 SQ / 8 CQ entries, SQ head 3 tail 3, CQ head 2 tail 3, 1 CQEs not reaped, \
             3 registered files, 1 registered buffers"
        );
        let sqpoll = FDINFO.replace("SqThread:\t-1", "SqThread:\t77");
        assert!(
            summary(&sqpoll).ends_with("SQPOLL thread 77"),
            "{}",
            summary(&sqpoll)
        );
        assert_eq!(summary("pos:\t0\n"), "");
    }
}
