//! Live snapshot (`dump -R`): the tree is frozen only while its state is collected; its
//! private anonymous memory is copied afterwards, while it runs, from a copy-on-write
//! image of each process made at the freeze.
//!
//! How: while a process is frozen and its leader runs our injected calls (stage 3), one
//! more call is `clone(2)` without `CLONE_VM` (but with `CLONE_FILES|CLONE_FS`: it
//! shares the fd table, so it holds no extra reference to any open file) and with exit
//! signal 0: a child whose memory is the process's at that moment, kept by the kernel page by page as the
//! process writes after the thaw (copy on write). The leader's ptrace options hold
//! `PTRACE_O_TRACECLONE` for that call, so the child is ours from its first moment and
//! stopped before it runs a single instruction of its own (and `PTRACE_O_EXITKILL`,
//! which it inherits: a dumper killed outright takes it down before it could run). Its
//! pages are read with `process_vm_readv` at the same addresses, by all cores, once the
//! tree runs again.
//!
//! What the child cannot hold is copied from the process while frozen, as before: pages
//! of other kinds than private anonymous memory (file-backed private copies, hugetlb,
//! the vDSO, AIO rings), and any page the child does not have after all (a
//! `MADV_DONTFORK` VMA is not in the child, a `MADV_WIPEONFORK` one is empty there; the
//! child's VmFlags tell). A process that shares its memory with another of the tree
//! (`CLONE_VM`), one whose calls are not self-restoring (under seccomp: the text word of
//! its injected code would be in the child), and one with SysV shared memory attached
//! (the child would attach it once more, and `sysvshm.rs` counts attachments) gets no
//! snapshot child: its memory is copied frozen.
//!
//! The fork's page-table copy is frozen time (~21-24 ms per resident GiB of 4 KiB pages
//! on this project's machines), and it holds the process's mmap lock for writing, so a
//! writer thread waits on it too. Processes with much memory are therefore
//! write-protected before the freeze instead (`protect.rs`, `SnapshotMethod`); a child
//! stays the choice for small processes, for many VMAs, and whenever write protection
//! fails: its image holds whatever the program does meanwhile (`munmap`,
//! `MADV_DONTNEED`, even its exit), which a write-protecting handler can only detect and
//! fail on, not save.
//!
//! What stays in the frozen window is the fork itself. Which pages the child holds is
//! found in the child, after the thaw (a PAGEMAP_SCAN of its page tables, which are the
//! process's at the freeze), and the VmFlags come from the smaps read before the freeze
//! for the pages file's allocation, used when the frozen `maps` (no page walk) shows
//! the same map; a VMA the child lacks is copied frozen, and the child's own smaps,
//! read after the thaw, must agree that it holds the rest (an madvise between the read
//! and the freeze fails the dump). Both walks cost ~10-30 ms per resident GiB here.
//! The pages file is then laid out in address order after the thaw: what was copied
//! frozen waits in a memory file until its offsets are known.
//!
//! What the tree can see: the child is a process of the tree's pid namespace for the
//! duration of the copy (it shows in `/proc` and in the process's `children`; it never
//! runs, and exit signal 0 keeps its death out of the process's `wait()` without
//! `__WALL`/`__WCLONE` and out of its SIGCHLD). Its death leaves a zombie for the
//! process to reap (a parent is only spared that for a child whose exit signal is
//! SIGCHLD and a SIGCHLD it ignores), so after the copy each process's leader is stopped
//! once more, for one injected `wait4` (about a millisecond), and let go. A dumper killed
//! outright during the copy kills the children but cannot reap them: each stays a zombie
//! of its process (no memory, a pid) until that process exits. While children live the
//! memory the program rewrites is held twice (the child's copy and the new page).

use std::io;
use std::time::Duration;

use crate::arch;
use crate::freeze::KillIfTracerDies;
use crate::inject::Injector;
use crate::proc::{MapEntry, ProcDir};
use crate::sys::{self, Pid, WaitStatus};

use super::mm::{Chunk, PageRun};

/// How long a snapshot child may take to stop after its birth, to die after SIGKILL, or
/// a process's leader to stop for the reaping.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A copy-on-write image of one process: its snapshot child.
#[derive(Debug)]
pub struct SnapshotChild {
    /// The process it was cloned from.
    pub parent: Pid,
    /// The parent's thread that made it (its leader), which reaps it.
    leader: Pid,
    /// The child's pid as we number it (for ptrace and process_vm_readv).
    pub pid: Pid,
    /// The child's pid as the parent numbers it (for its wait4).
    pid_in_parent: u64,
    /// Whether its first stop was seen: only then does it hold the snapshot.
    stopped: bool,
}

/// Makes the snapshot child of the process of `leader` through its injector (its calls
/// self-restoring); `options` are the ptrace options the leader keeps.
pub fn clone_snapshot_child(
    inj: &mut Injector,
    parent: Pid,
    leader: Pid,
    options: libc::c_int,
    children: &mut SnapshotChildren,
) -> io::Result<()> {
    let before = thread_children(parent, leader)?;
    sys::ptrace_setoptions(
        leader,
        options | libc::PTRACE_O_TRACECLONE | libc::PTRACE_O_EXITKILL,
    )?;
    // No CLONE_VM: a memory of its own, copy on write; exit signal 0 (the low byte).
    // The fd table and fs are shared, not copied: the child holds no extra reference to
    // any open file (a pipe's reader sees its EOF, a count of users stays as it was).
    let flags = (libc::CLONE_FILES | libc::CLONE_FS) as u64;
    let ret = inj.syscall(libc::SYS_clone, [flags, 0, 0, 0, 0, 0]);
    let reset = sys::ptrace_setoptions(leader, options);
    let pid_in_parent = inj.check_result("clone", ret?)?;
    reset?;
    let after = thread_children(parent, leader)?;
    let mut new = after.into_iter().filter(|c| !before.contains(c));
    let (Some(pid), None) = (new.next(), new.next()) else {
        return Err(io::Error::other(format!(
            "process {parent}: its snapshot child (pid {pid_in_parent} inside) is not \
             found among the children of thread {leader}"
        )));
    };
    // The guard's from here: it is killed and reaped whatever happens next.
    children.push(
        SnapshotChild {
            parent,
            leader,
            pid,
            pid_in_parent,
            stopped: false,
        },
        options,
    );
    // Its first stop: it never runs before it.
    match sys::wait_timeout(pid, STOP_TIMEOUT)? {
        WaitStatus::Stopped { .. } => {
            if let Some(child) = children.children.last_mut() {
                child.stopped = true;
            }
            Ok(())
        }
        other => Err(io::Error::other(format!(
            "snapshot child {pid} of process {parent}: {other:?} instead of its first stop"
        ))),
    }
}

fn thread_children(pid: Pid, tid: Pid) -> io::Result<Vec<Pid>> {
    let text = std::fs::read_to_string(format!("/proc/{}/task/{}/children", pid.0, tid.0))?;
    Ok(text
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .map(Pid)
        .collect())
}

/// The VMAs whose pages the snapshot child holds, from the process's smaps (read with
/// the tree frozen, after the injected calls): private anonymous memory, except what
/// fork(2) does not copy (`MADV_DONTFORK`, VmFlags `dc`: not in the child;
/// `MADV_WIPEONFORK`, `wf`: empty there) and hugetlb memory (`ht`, copied frozen).
pub fn child_holds(maps: &[crate::proc::MapEntry]) -> Vec<(u64, u64)> {
    maps.iter()
        .filter(|m| super::mm::classify(m) == super::mm::Backing::AnonPrivate)
        .filter(|m| !["dc", "wf", "ht"].iter().any(|f| m.has_flag(f)))
        .map(|m| (m.start, m.end))
        .collect()
}

/// `runs` cut into `(start, end, from_child)` pieces, in order: the pages of private
/// anonymous memory (`lazy`, in the image's terms) inside the `held` ranges come from the
/// snapshot child, the rest is copied while frozen. Pages referred to the parent images
/// are left out, as the pages file has none of them.
pub fn split_runs(runs: &[PageRun], held: &[(u64, u64)]) -> Vec<(u64, u64, bool)> {
    use criu_images::flags::page::{PE_LAZY, PE_PARENT};
    let mut held = held.to_vec();
    held.sort_unstable();
    let mut out: Vec<(u64, u64, bool)> = Vec::with_capacity(runs.len());
    let mut push = |s: u64, e: u64, live: bool| {
        if s >= e {
            return;
        }
        match out.last_mut() {
            Some(last) if last.1 == s && last.2 == live => last.1 = e,
            _ => out.push((s, e, live)),
        }
    };
    for r in runs.iter().filter(|r| r.flags & PE_PARENT == 0) {
        if r.flags & PE_LAZY == 0 {
            push(r.start, r.end, false);
            continue;
        }
        let mut at = r.start;
        for &(hs, he) in held.iter().filter(|(hs, he)| *hs < r.end && *he > r.start) {
            let (s, e) = (hs.max(r.start), he.min(r.end));
            push(at, s, false);
            push(s, e, true);
            at = at.max(e);
        }
        push(at, r.end, false);
    }
    out
}

/// Chunks copied after the thaw are cut at 2 MiB-aligned addresses: a write-protected
/// huge page is saved and let go whole (lifting part of its protection splits it).
pub const LIVE_CHUNK: u64 = 2 << 20;

/// The chunks of `pieces` (from `split_runs`) at their offsets in the pages file, as
/// (copied while frozen, at most `mm::CHUNK` each; copied after the thaw, cut at
/// `LIVE_CHUNK`-aligned addresses).
pub fn chunks_of(pieces: &[(u64, u64, bool)]) -> (Vec<Chunk>, Vec<Chunk>) {
    let (mut frozen, mut live) = (Vec::new(), Vec::new());
    let mut offset = 0u64;
    for &(start, end, from_child) in pieces {
        let mut addr = start;
        while addr < end {
            let next = if from_child {
                (addr / LIVE_CHUNK + 1) * LIVE_CHUNK
            } else {
                addr + super::mm::CHUNK as u64
            };
            let len = end.min(next) - addr;
            let c = Chunk { addr, len, offset };
            if from_child {
                live.push(c)
            } else {
                frozen.push(c)
            }
            addr += len;
            offset += len;
        }
    }
    (frozen, live)
}

/// Whether two readings describe the same mapping: bounds, protection, sharing and
/// what backs it (VmFlags and sizes aside, which `maps` does not show).
pub fn same_mapping(a: &MapEntry, b: &MapEntry) -> bool {
    (
        a.start, a.end, a.read, a.write, a.exec, a.shared, a.offset, a.inode,
    ) == (
        b.start, b.end, b.read, b.write, b.exec, b.shared, b.offset, b.inode,
    ) && (a.dev_major, a.dev_minor) == (b.dev_major, b.dev_minor)
        && a.path == b.path
}

/// The VMAs whose pages are scanned and copied in the snapshot child after the thaw:
/// those it holds by `flags` (the smaps read before the freeze, see `child_holds`) that
/// it has, the same, in `child_maps` (read frozen, right after its birth: a VMA made
/// `MADV_DONTFORK` since smaps was read is not there, and is copied frozen instead).
pub fn held_in_child(flags: &[MapEntry], child_maps: &[MapEntry]) -> Vec<(u64, u64)> {
    let held = child_holds(flags);
    flags
        .iter()
        .filter(|m| in_order(&held, (m.start, m.end)))
        .filter(|m| mapping_at(child_maps, m.start).is_some_and(|c| same_mapping(m, c)))
        .map(|m| (m.start, m.end))
        .collect()
}

/// Whether `range` is one of `ranges` (in address order, as maps lists them).
pub fn in_order(ranges: &[(u64, u64)], range: (u64, u64)) -> bool {
    ranges.binary_search(&range).is_ok()
}

/// The mapping of `maps` (in address order) that starts at `start`: a lookup per VMA
/// that stays cheap for tens of thousands of them (this runs while frozen).
fn mapping_at(maps: &[MapEntry], start: u64) -> Option<&MapEntry> {
    maps.binary_search_by_key(&start, |m| m.start)
        .ok()
        .map(|i| &maps[i])
}

/// After the thaw: the child's own VmFlags (`child_smaps`) agree that it holds the pages
/// of each of `held`. A VMA made `MADV_WIPEONFORK` between the smaps read before the
/// freeze and the freeze is empty in the child: its pages are lost to this dump, which
/// fails (the tree runs on; a new dump finds the flag in smaps).
pub fn check_child_flags(child_smaps: &[MapEntry], held: &[(u64, u64)]) -> Result<(), String> {
    for &(start, end) in held {
        match mapping_at(child_smaps, start).filter(|m| m.end == end) {
            Some(m) if !["dc", "wf", "ht"].iter().any(|f| m.has_flag(f)) => {}
            Some(m) => {
                return Err(format!(
                    "mapping {start:#x}-{end:#x} became {} while the tree was being frozen \
                     (its pages are not in the snapshot); dump again",
                    m.vm_flags.join(" ")
                ))
            }
            None => {
                return Err(format!(
                    "mapping {start:#x}-{end:#x} is missing from the snapshot child"
                ))
            }
        }
    }
    Ok(())
}

/// The page runs of one process from its two scans, in address order and merged where
/// they touch with the same flags, as one scan would have found them: `frozen` (the
/// VMAs scanned while frozen) and `child` (the held VMAs, scanned in the snapshot child).
pub fn merge_scans(frozen: &[PageRun], child: &[PageRun]) -> Vec<PageRun> {
    let mut all: Vec<PageRun> = frozen.iter().chain(child).copied().collect();
    all.sort_unstable_by_key(|r| r.start);
    let mut out: Vec<PageRun> = Vec::with_capacity(all.len());
    for r in all {
        match out.last_mut() {
            Some(last)
                if last.end == r.start
                    && last.flags == r.flags
                    && last.releasable == r.releasable =>
            {
                last.end = r.end
            }
            _ => out.push(r),
        }
    }
    out
}

/// The snapshot children of a tree: each one is killed and reaped (also by its parent)
/// when this drops, whatever happened meanwhile. Lives on the tree's tracer thread.
#[derive(Debug, Default)]
pub struct SnapshotChildren {
    children: Vec<SnapshotChild>,
    /// Whether the tree is still frozen (stopped by us); once it runs, a leader is seized
    /// and stopped again for the reaping.
    thawed: bool,
    /// ptrace options the tree's threads are seized with for injection.
    options: Vec<(Pid, libc::c_int)>,
}

impl SnapshotChildren {
    pub fn push(&mut self, child: SnapshotChild, options: libc::c_int) {
        self.options.push((child.leader, options));
        self.children.push(child);
    }

    /// The snapshot child of `parent`, if it has one ready.
    pub fn of(&self, parent: Pid) -> Option<&SnapshotChild> {
        self.children
            .iter()
            .find(|c| c.parent == parent && c.stopped)
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// The tree runs again (detached): reaping needs a new stop from here on.
    pub fn set_thawed(&mut self) {
        self.thawed = true;
    }

    /// Kills and reaps every child; the first error is returned (each child is dealt
    /// with whatever happens to the others).
    pub fn end_all(&mut self) -> io::Result<()> {
        let mut first = Ok(());
        for child in std::mem::take(&mut self.children) {
            let options = self
                .options
                .iter()
                .find(|(t, _)| *t == child.leader)
                .map_or(0, |(_, o)| *o);
            let result = end_child(&child, self.thawed, options);
            if let Err(e) = &result {
                tracing::warn!(child = %child.pid, parent = %child.parent, "ending a snapshot child: {e}");
            }
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

impl Drop for SnapshotChildren {
    fn drop(&mut self) {
        let _ = self.end_all();
    }
}

/// Kills `child`, reaps it as its tracer, then has its parent reap it too (see the
/// module's notes).
fn end_child(child: &SnapshotChild, thawed: bool, options: libc::c_int) -> io::Result<()> {
    let _ = sys::kill(child.pid, libc::SIGKILL);
    loop {
        match sys::wait_timeout(child.pid, STOP_TIMEOUT) {
            Ok(WaitStatus::Exited(_) | WaitStatus::Signaled(_)) => break,
            Ok(WaitStatus::Stopped { .. }) => continue,
            // Reaped already (ECHILD): nothing more of ours to wait for.
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => break,
            Err(e) => return Err(e),
        }
    }
    tracing::debug!(child = %child.pid, parent = %child.parent, "snapshot child killed");
    if thawed {
        reap_in_running_parent(child, options)
    } else {
        reap_in_parent(child, options)
    }
}

/// The parent's `wait4` for the child's zombie, run by its leader (stopped by us) with
/// [`syscall_in_place`].
fn reap_in_parent(child: &SnapshotChild, options: libc::c_int) -> io::Result<()> {
    let args = [
        child.pid_in_parent,
        0,
        (libc::__WALL | libc::WNOHANG) as u64,
        0,
        0,
        0,
    ];
    let ret = syscall_in_place(
        child.parent,
        child.leader,
        options,
        libc::SYS_wait4,
        args,
        "reaping a snapshot child",
    )?;
    match ret {
        r if r == child.pid_in_parent as i64 => Ok(()),
        // Its parent reaped it itself (a wait with __WALL).
        r if r == -(libc::ECHILD as i64) => Ok(()),
        r => Err(io::Error::other(format!(
            "process {}: wait4 for snapshot child {} returned {r}",
            child.parent, child.pid_in_parent
        ))),
    }
}

/// Runs syscall `nr` with `args` in thread `tid` of process `pid` (stopped by us, seized
/// with `options`) at a `syscall` instruction of its own code, and returns what the call
/// returned (a negative errno on failure). Nothing of the process's memory is written, so
/// its other threads may run meanwhile (a word of injected code in its text could be
/// executed by them). Every signal is blocked for the call, so no handler runs on our
/// registers; the thread's own come back with its restart applied, as after injection.
pub(super) fn syscall_in_place(
    pid: Pid,
    tid: Pid,
    options: libc::c_int,
    nr: libc::c_long,
    args: [u64; 6],
    what: &'static str,
) -> io::Result<i64> {
    let options = options | libc::PTRACE_O_TRACESYSGOOD;
    let saved = sys::ptrace_get_regs(tid)?;
    let at = syscall_instruction(pid, &saved)?;
    let sigmask = sys::ptrace_get_sigmask(tid)?;
    // Its registers are not its own until put back: a dying dumper takes it along.
    let window = KillIfTracerDies::arm(tid, what, options)?;
    sys::ptrace_set_sigmask(tid, u64::MAX)?;
    let call = crate::inject::call_regs(&saved, at, nr, args);
    let ran =
        sys::ptrace_set_regs(tid, &call).and_then(|()| crate::inject::step_over_syscall(tid, nr));
    let ret = ran
        .and_then(|()| sys::ptrace_get_regs(tid))
        .map(|r| r.rax as i64);
    let put_back = sys::ptrace_set_regs(tid, &crate::inject::regs_to_put_back(&saved))
        .and_then(|()| sys::ptrace_set_sigmask(tid, sigmask));
    put_back?;
    drop(window);
    ret
}

/// An address of a `syscall` instruction (0f 05) the process can execute: where its
/// leader stopped inside a call (just before its `ip`), or else one in its vDSO.
fn syscall_instruction(pid: Pid, regs: &libc::user_regs_struct) -> io::Result<u64> {
    let read = |addr: u64, len: usize| -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let got = sys::process_vm_readv(pid, &mut buf, &[(addr, len)])?;
        buf.truncate(got);
        Ok(buf)
    };
    if (regs.orig_rax as i64) >= 0
        && regs.rip >= 2
        && arch::syscall_instruction_at(pid, regs.rip - 2)
    {
        return Ok(regs.rip - 2);
    }
    let maps = ProcDir::open(pid)?.maps_plain()?;
    // The vDSO first: two pages to read, against libc's megabytes.
    let text = maps.iter().filter(|m| m.exec && m.read && !m.shared);
    let vdso = text.clone().filter(|m| m.path == "[vdso]");
    for m in vdso.chain(text.filter(|m| m.path.contains("libc"))) {
        let Ok(text) = read(m.start, (m.end - m.start).min(4 << 20) as usize) else {
            continue;
        };
        if let Some(i) = text.windows(2).position(|w| w == arch::SYSCALL_INSTRUCTION) {
            return Ok(m.start + i as u64);
        }
    }
    Err(io::Error::other(format!(
        "process {pid}: no syscall instruction found for an injected call"
    )))
}

/// [`reap_in_parent`] for a parent that runs: its leader is seized and stopped for the
/// call, then let go. A parent that is gone needs nothing (its children went to a
/// reaper).
fn reap_in_running_parent(child: &SnapshotChild, options: libc::c_int) -> io::Result<()> {
    let seized = match seize_stopped(child.leader, options) {
        Ok(Some(seized)) => seized,
        // It exited: its children went to a reaper.
        Ok(None) => return Ok(()),
        Err(_) if gone(child.parent) => return Ok(()),
        Err(e) => return Err(e),
    };
    let reaped = reap_in_parent(child, options);
    drop(seized);
    reaped
}

/// Seizes thread `tid` of a running process (with ptrace `options`) and waits until it
/// stops (a signal on its way in is passed on). None when it exited meanwhile.
pub(super) fn seize_stopped(tid: Pid, options: libc::c_int) -> io::Result<Option<Seized>> {
    sys::ptrace_seize(tid, options)?;
    let seized = Seized(tid);
    sys::ptrace_interrupt(tid)?;
    loop {
        match sys::wait_timeout(tid, STOP_TIMEOUT)? {
            WaitStatus::Stopped { event, .. } if event == libc::PTRACE_EVENT_STOP => break,
            // A signal on its way in: passed on, and the interrupt's stop comes next.
            WaitStatus::Stopped { sig, .. } => sys::ptrace_cont(tid, sig)?,
            _ => {
                std::mem::forget(seized);
                return Ok(None);
            }
        }
    }
    Ok(Some(seized))
}

/// A thread seized and stopped by us, detached (running on) when this drops.
pub(super) struct Seized(Pid);

impl Drop for Seized {
    fn drop(&mut self) {
        let _ = sys::ptrace_detach(self.0, 0);
    }
}

fn gone(pid: Pid) -> bool {
    !matches!(
        ProcDir::open(pid).and_then(|d| d.stat()).map(|s| s.state),
        Ok(s) if s != 'Z' && s != 'X'
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use criu_images::flags::page::{PE_LAZY, PE_PARENT, PE_PRESENT};

    fn run(start: u64, end: u64, flags: u32) -> PageRun {
        PageRun {
            start,
            end,
            flags,
            releasable: false,
        }
    }

    /// Runs that span a held VMA and one that is not (a merged run across two VMAs),
    /// file-backed private copies and pages in the parent images: only the lazy pages
    /// inside held VMAs come from the child, and the offsets follow the pages file.
    #[test]
    fn runs_split_between_child_and_frozen_copy() {
        let lazy = PE_PRESENT | PE_LAZY;
        let runs = [
            run(0x1000, 0x5000, lazy),
            run(0x5000, 0x6000, PE_PRESENT),
            run(0x6000, 0x8000, PE_PARENT),
            run(0x8000, 0xa000, lazy),
        ];
        let held = [(0x3000, 0x6000), (0x9000, 0x20000)];
        let pieces = split_runs(&runs, &held);
        assert_eq!(
            pieces,
            vec![
                (0x1000, 0x3000, false),
                (0x3000, 0x5000, true),
                (0x5000, 0x6000, false),
                (0x8000, 0x9000, false),
                (0x9000, 0xa000, true),
            ]
        );
        let (frozen, live) = chunks_of(&pieces);
        let offsets = |c: &[Chunk]| c.iter().map(|c| (c.addr, c.offset)).collect::<Vec<_>>();
        assert_eq!(
            offsets(&frozen),
            vec![(0x1000, 0), (0x5000, 0x4000), (0x8000, 0x5000)]
        );
        assert_eq!(offsets(&live), vec![(0x3000, 0x2000), (0x9000, 0x6000)]);
    }

    fn mapping(start: u64, end: u64, flags: &str) -> MapEntry {
        MapEntry {
            start,
            end,
            read: true,
            write: true,
            exec: false,
            shared: false,
            offset: 0,
            dev_major: 0,
            dev_minor: 0,
            inode: 0,
            path: String::new(),
            vm_flags: flags.split_whitespace().map(str::to_owned).collect(),
            rss_kb: 0,
            anonymous_kb: 0,
            swap_kb: 0,
            kernel_page_kb: 0,
        }
    }

    /// Held: private anonymous VMAs the child has as they were, not DONTFORK (absent
    /// there), WIPEONFORK (empty there) or hugetlb; one that changed in the child (made
    /// DONTFORK after smaps was read: missing) is copied frozen.
    #[test]
    fn the_child_holds_what_it_has_unchanged() {
        let before = [
            mapping(0x1000, 0x3000, "rd wr mr mw me ac"),
            mapping(0x3000, 0x4000, "rd wr mr mw me dc ac"),
            mapping(0x4000, 0x5000, "rd wr mr mw me wf ac"),
            mapping(0x5000, 0x9000, "rd wr mr mw me ac"),
            mapping(0xa000, 0xb000, "rd wr mr mw me ac"),
        ];
        let child = [
            mapping(0x1000, 0x3000, ""),
            mapping(0x4000, 0x5000, ""),
            mapping(0x5000, 0x9000, ""),
        ];
        assert_eq!(
            held_in_child(&before, &child),
            vec![(0x1000, 0x3000), (0x5000, 0x9000)]
        );
        // After the thaw the child's VmFlags agree, or the dump fails.
        let child_smaps = [
            mapping(0x1000, 0x3000, "rd wr mr mw me ac"),
            mapping(0x5000, 0x9000, "rd wr mr mw me wf ac"),
        ];
        assert!(check_child_flags(&child_smaps, &[(0x1000, 0x3000)]).is_ok());
        let err = check_child_flags(&child_smaps, &[(0x5000, 0x9000)]).unwrap_err();
        assert!(err.contains("0x5000-0x9000"), "{err}");
        assert!(check_child_flags(&child_smaps, &[(0xa000, 0xb000)]).is_err());
    }

    /// The two scans give what one scan would: address order, touching runs of the same
    /// kind merged, different kinds apart.
    #[test]
    fn scans_merge_into_address_order() {
        let lazy = PE_PRESENT | PE_LAZY;
        let frozen = [run(0x1000, 0x2000, PE_PRESENT), run(0x8000, 0x9000, lazy)];
        let child = [
            run(0x2000, 0x4000, lazy),
            run(0x9000, 0xa000, lazy),
            run(0x5000, 0x6000, lazy),
        ];
        assert_eq!(
            merge_scans(&frozen, &child),
            vec![
                run(0x1000, 0x2000, PE_PRESENT),
                run(0x2000, 0x4000, lazy),
                run(0x5000, 0x6000, lazy),
                run(0x8000, 0xa000, lazy),
            ]
        );
    }
}
