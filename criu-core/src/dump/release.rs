//! Giving a killed-after-dump task's memory back to the kernel while its pages are saved.
//!
//! Why: on these machines (KVM guests with free page reporting), memory the guest has
//! not touched recently is backed lazily by the host, so the pages file's fresh tmpfs
//! pages cost a host fault each: writing 1 GiB took 2.8-3.8 s with cold memory, against
//! 0.7 s when each saved chunk of the source was dropped right after it was written, so
//! that the next chunks were allocated from the just-freed (still backed) pages. A tree
//! that is killed after the dump loses that memory a moment later anyway. And a machine
//! that could not hold the tree's memory and its copy at once needs it back.
//!
//! When: it costs time where the machine's memory is warm (the madvise calls free pages
//! on the cores the copy needs: ~60 ms of CPU per GiB, dumps 10-15% slower), so by
//! default (`ReleaseMemory::Auto`) a process releases from its first batch on only when
//! its saved pages would take more than half of MemAvailable, and otherwise once the
//! copy finds writing slow against reading (`mm::CopyTiming`); the first release then
//! gives back everything saved so far. `--release-memory always|never` decides it.
//!
//! How: the tracer injects `madvise(MADV_DONTNEED)` into one thread of the frozen
//! process for every saved batch. `PageRelease` is the guard of that change: unless
//! `keep` is called (the dump succeeded and the tree is about to be killed), dropping it
//! writes every released range back from the pages file, so a dump that fails later
//! leaves the task's memory exactly as it was.
//!
//! A dumper that dies (SIGKILL, the OOM killer) runs no guard, and the kernel lets its
//! tracees go: the process would run on with memory missing. So:
//!
//! - Before the first release in a process, a watchdog process is forked
//!   (`sys::fork_release_watchdog`). It shares a log with us: the released ranges, and,
//!   while our code runs in the thread, the thread's registers and the words our code
//!   overwrote. If we die before saying "done", it writes the ranges back through
//!   /proc/PID/mem, attaches to the thread for a moment to put its words and registers
//!   back, and sends the process SIGCONT.
//! - Until then the process must not run: from the first change on it holds a pending
//!   SIGSTOP (sent while it is in a ptrace stop, it stays pending), so a process let go
//!   by a dead tracer enters group stop before it runs an instruction of its own. Our
//!   code cannot run with a stop pending (the thread takes the stop first): on its way
//!   there the thread takes the SIGSTOP, which we drop, and we queue it again at the
//!   syscall-entry stop of the madvise. In between, the code itself stops the thread if
//!   we are gone (`RELEASE_CODE`: after the madvise, `kill(getpid(), SIGSTOP)`), so no
//!   moment is left where a dying dumper lets the process run with memory missing.
//!
//! The SIGCONT that ends the stop (the watchdog's, or ours when a failed dump cancels the
//! pending SIGSTOP) must have no effect of its own: releasing is done only in processes
//! whose SIGCONT is at its default disposition and blocked by no thread, and which have
//! no stop signal pending (it would be cancelled). Elsewhere nothing is released:
//! releasing only saves time. A dumper that dies leaves one visible trace in a released
//! process: its parent is told it stopped and continued (SIGCHLD, CLD_STOPPED then
//! CLD_CONTINUED).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::dump::mm::{self, Chunk, TreeSmaps};
use crate::proc::{MapEntry, ProcDir};
use crate::sys::{self, Pid, SharedReleaseLog, WaitStatus};

/// Processes with fewer bytes of releasable pages keep them: the gain is nothing there.
pub const MIN_BYTES: u64 = 8 << 20;

/// Whether a tree killed after its dump gives its memory back while it is saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReleaseMemory {
    /// Where it pays: from the start in a process whose saved pages would take more than
    /// half of the memory the machine has available (it could not hold them twice), and
    /// in the others once writing the pages file turns out slow against reading the
    /// task's memory (the machine's free memory must first be backed by its host, see
    /// `mm::CopyTiming`). Elsewhere releasing only costs time: the madvise calls free
    /// pages on the cores the copy needs (1 GiB: ~60 ms of CPU, 10-15% of the dump).
    #[default]
    Auto,
    /// From the first batch on, in every process where it is safe.
    Always,
    /// Never: the tree keeps all its memory until it is killed.
    Never,
}

impl ReleaseMemory {
    /// Whether a process with `bytes` of releasable pages releases them from the start.
    pub fn release_at_once(self, bytes: u64) -> bool {
        match self {
            ReleaseMemory::Always => true,
            ReleaseMemory::Never => false,
            ReleaseMemory::Auto => crate::proc::mem_available()
                .ok()
                .flatten()
                .is_some_and(|free| bytes > free / 2),
        }
    }
}

/// The code a release runs in the task, 24 bytes (three words):
/// `syscall` (the madvise we load), then, reached only if we die before its exit stop:
/// `getpid`, `kill(pid, SIGSTOP)` (the thread stops by itself for the watchdog), `int3`.
const RELEASE_CODE: [u8; 24] = [
    0x0f, 0x05, // syscall
    0xb8, 0x27, 0x00, 0x00, 0x00, // mov eax, SYS_getpid
    0x0f, 0x05, // syscall
    0x89, 0xc7, // mov edi, eax
    0xbe, 0x13, 0x00, 0x00, 0x00, // mov esi, SIGSTOP
    0xb8, 0x3e, 0x00, 0x00, 0x00, // mov eax, SYS_kill
    0x0f, 0x05, // syscall
    0xcc, // int3
];

/// How long one injected madvise may take.
const RELEASE_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct PageRelease {
    pid: Pid,
    /// The thread the madvise calls run in.
    tid: Pid,
    /// An executable address of the process for the injected calls.
    gadget: u64,
    /// The pages file, read back if the released ranges must be written back.
    pages: File,
    released: Vec<Chunk>,
    kept: bool,
    smaps: std::sync::Arc<TreeSmaps>,
    /// Address ranges whose VmFlags forbid releasing (from smaps, on first use); `None`
    /// until known. An error reading smaps turns releasing off.
    blocked: Option<Option<Vec<(u64, u64)>>>,
    /// The watchdog, from the first release on.
    watchdog: Option<Watchdog>,
    /// Releasing was found unsafe or impossible here: nothing (more) is released.
    off: bool,
    /// Whether we left a SIGSTOP pending in the process.
    stop_queued: bool,
    /// Whether the other threads got their own SIGSTOP (`hold_other_threads`).
    others_held: bool,
    /// The thread's ptrace options between releases (seccomp stays suspended for
    /// injection, see `seccomp::injection_options`), read once.
    base_options: libc::c_int,
    /// Release from the first saved batch on, whatever the copy's speed.
    release_at_once: bool,
}

/// The process that outlives a killed dumper to give the memory back (see the top).
struct Watchdog {
    pid: Pid,
    log: SharedReleaseLog,
    /// Our end of the pipe that wakes it up.
    wake: File,
}

impl Watchdog {
    fn start(pid: Pid, pages: &File) -> io::Result<Watchdog> {
        let log = SharedReleaseLog::new()?;
        let dumper = sys::pidfd_open(Pid(std::process::id() as i32))?;
        let target = sys::pidfd_open(pid)?;
        let mem = File::options()
            .write(true)
            .open(format!("/proc/{}/mem", pid.0))?;
        let (wake_read, wake) = sys::pipe(libc::O_CLOEXEC)?;
        let fds = sys::WatchdogFds {
            dumper: dumper.as_fd(),
            target: target.as_fd(),
            mem: mem.as_fd(),
            pages: pages.as_fd(),
            wake: wake_read.as_fd(),
        };
        let watchdog = sys::fork_release_watchdog(&log, &fds)?;
        tracing::debug!(%pid, watchdog = %watchdog, "page release watchdog started");
        Ok(Watchdog {
            pid: watchdog,
            log,
            wake: wake.into(),
        })
    }

    fn set(&self, state: u64) {
        self.log.set_state(state);
        let _ = io::Write::write(&mut &self.wake, b"x");
    }

    /// Nothing is left for the watchdog to do: it exits, and is reaped.
    fn finish(self) {
        self.set(sys::RELEASE_DONE);
        drop(self.wake);
        if let Err(e) = sys::wait_child(self.pid) {
            tracing::warn!(watchdog = %self.pid, "reaping the page release watchdog: {e}");
        }
    }
}

/// Whether a SIGCONT we send to `pid` has no effect but cancelling a pending stop: it is
/// at its default disposition, no thread blocks it, and no stop signal is pending.
fn sigcont_is_harmless(pid: Pid) -> io::Result<bool> {
    const STOPS: u64 = 1 << (libc::SIGSTOP - 1)
        | 1 << (libc::SIGTSTP - 1)
        | 1 << (libc::SIGTTIN - 1)
        | 1 << (libc::SIGTTOU - 1);
    let cont = 1u64 << (libc::SIGCONT - 1);
    let dir = ProcDir::open(pid)?;
    let process = dir.status()?;
    if (process.sig_caught | process.sig_ignored) & cont != 0 || process.shd_pending & STOPS != 0 {
        return Ok(false);
    }
    for tid in dir.threads()? {
        let thread = ProcDir::open_thread(pid, tid)?.status()?;
        if thread.sig_blocked & cont != 0 || thread.sig_pending & STOPS != 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

impl PageRelease {
    /// `pages` is the path of the pages file the task's pages are copied to.
    pub fn new(
        pid: Pid,
        tid: Pid,
        gadget: u64,
        pages: &Path,
        smaps: std::sync::Arc<TreeSmaps>,
        release_at_once: bool,
    ) -> io::Result<PageRelease> {
        Ok(PageRelease {
            pid,
            tid,
            gadget,
            // Opened for reading here: the dump's own handle is write-only, and the file
            // may be unlinked by the time it is needed.
            pages: File::open(pages)?,
            released: Vec::new(),
            kept: false,
            smaps,
            blocked: None,
            watchdog: None,
            off: false,
            stop_queued: false,
            others_held: false,
            base_options: super::seccomp::injection_options(tid),
            release_at_once,
        })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Drops the task's copy of `chunks`, which are saved in the pages file (those whose
    /// VmFlags allow it).
    pub fn release_chunks(&mut self, chunks: &[Chunk]) -> io::Result<()> {
        if self.off {
            return Ok(());
        }
        let pid = self.pid;
        let smaps = &self.smaps;
        let blocked = self.blocked.get_or_insert_with(|| {
            // Without locked memory nothing in the VmFlags can stop a release (a
            // userfaultfd needs an fd the dump would have refused); only then is smaps,
            // still being read, needed first.
            let locked = ProcDir::open(pid)
                .and_then(|d| d.status())
                .map_or(1, |s| s.vm_locked_kb);
            if locked == 0 {
                return Some(Vec::new());
            }
            match smaps.of(pid) {
                Ok(maps) => Some(blocked_ranges(maps)),
                Err(e) => {
                    tracing::warn!(%pid, "not releasing memory: {e}");
                    None
                }
            }
        });
        let Some(blocked) = blocked else {
            return Ok(());
        };
        let chunks: Vec<Chunk> = chunks
            .iter()
            .filter(|c| !overlaps(c, blocked))
            .copied()
            .collect();
        if chunks.is_empty() {
            return Ok(());
        }
        if self.watchdog.is_none() && !self.start_watchdog() {
            return Ok(());
        }
        // One call per contiguous stretch of the address space (and of the pages file),
        // logged for the watchdog before anything is released: writing back a range the
        // call did not drop is harmless.
        let mut stretches = Vec::new();
        let mut i = 0;
        while i < chunks.len() {
            let (start, offset) = (chunks[i].addr, chunks[i].offset);
            let mut len = chunks[i].len;
            let mut j = i + 1;
            while j < chunks.len()
                && chunks[j].addr == start + len
                && chunks[j].offset == offset + len
            {
                len += chunks[j].len;
                j += 1;
            }
            let logged = self
                .watchdog
                .as_ref()
                .is_some_and(|w| w.log.push(start, len, offset));
            if !logged {
                tracing::debug!(%pid, "the release log is full: no more releases");
                self.off = true;
                break;
            }
            stretches.push((start, len, i..j));
            i = j;
        }
        if stretches.is_empty() {
            return Ok(());
        }
        // From the first change on, the process holds a stop for a dumper that dies.
        if !self.others_held {
            self.hold_other_threads()?;
        }
        if !self.stop_queued {
            sys::kill(pid, libc::SIGSTOP)?;
            self.stop_queued = true;
        }
        let result = self.inject_releases(&chunks, &stretches);
        if let Some(w) = &self.watchdog {
            if result.is_ok() {
                w.log.injected();
            }
        }
        let bytes: u64 = stretches.iter().map(|s| s.1).sum();
        tracing::debug!(%pid, bytes, ok = result.is_ok(), "memory released");
        // The options the state-reading stage left (seccomp stays suspended).
        let _ = sys::ptrace_setoptions(self.tid, self.base_options);
        result
    }

    /// One madvise per stretch, run by code of ours written over the start of an
    /// executable mapping (see `RELEASE_CODE`), stepping from syscall stop to syscall
    /// stop. What the watchdog needs to put the thread back (its three words there and
    /// its registers) is logged before either changes.
    fn inject_releases(
        &mut self,
        chunks: &[Chunk],
        stretches: &[(u64, u64, std::ops::Range<usize>)],
    ) -> io::Result<()> {
        let (tid, gadget) = (self.tid, self.gadget);
        let regs = sys::ptrace_get_regs(tid)?;
        let resume = crate::inject::regs_for_resume(&regs);
        let mut words = [0u64; 3];
        for (i, w) in words.iter_mut().enumerate() {
            *w = sys::ptrace_peek(tid, gadget + 8 * i as u64)?;
        }
        // Every signal stays blocked (pending, with its siginfo) while our code runs: a
        // handler run now would find the memory released so far missing.
        let sigmask = sys::ptrace_get_sigmask(tid)?;
        if let Some(w) = &self.watchdog {
            w.log.injecting(tid, gadget, words, &resume, sigmask);
        }
        sys::ptrace_set_sigmask(tid, u64::MAX)?;
        sys::ptrace_setoptions(tid, libc::PTRACE_O_TRACESYSGOOD | self.base_options)?;
        let mut result = Ok(());
        for (i, code) in RELEASE_CODE.chunks_exact(8).enumerate() {
            let word = u64::from_le_bytes(code.try_into().unwrap_or_default());
            result = result.and_then(|()| sys::ptrace_poke(tid, gadget + 8 * i as u64, word));
        }
        for (start, len, range) in stretches {
            if result.is_err() {
                break;
            }
            self.released.extend_from_slice(&chunks[range.clone()]);
            result = self.one_release(&regs, *start, *len);
        }
        // The thread's own words, registers and signal mask, whatever happened.
        for (i, &word) in words.iter().enumerate() {
            let put = sys::ptrace_poke(tid, gadget + 8 * i as u64, word);
            result = result.and(put);
        }
        result = result.and(sys::ptrace_set_sigmask(tid, sigmask));
        result.and(sys::ptrace_set_regs(
            tid,
            &crate::inject::regs_to_put_back(&regs),
        ))
    }

    /// Runs one madvise(MADV_DONTNEED) of `RELEASE_CODE` in syscall steps. On its way
    /// to the `syscall` instruction the thread takes the pending SIGSTOP, which we see
    /// and drop; at the syscall-entry stop it is queued again. In between, the thread
    /// holds no stop, but if we die then, the code stops the thread by itself right
    /// after the madvise. Either way the watchdog finds it stopped.
    fn one_release(
        &mut self,
        regs: &libc::user_regs_struct,
        start: u64,
        len: u64,
    ) -> io::Result<()> {
        const SYSCALL_STOP: i32 = libc::SIGTRAP | 0x80;
        let (pid, tid) = (self.pid, self.tid);
        let mut call = *regs;
        call.rip = self.gadget;
        call.rax = libc::SYS_madvise as u64;
        // No syscall-restart logic may rewrite ip/ax behind our back.
        call.orig_rax = u64::MAX;
        call.rdi = start;
        call.rsi = len;
        call.rdx = libc::MADV_DONTNEED as u64;
        sys::ptrace_set_regs(tid, &call)?;
        let mut sig = 0;
        loop {
            sys::ptrace_syscall(tid, sig)?;
            match sys::wait_timeout(tid, RELEASE_CALL_TIMEOUT)? {
                WaitStatus::Stopped {
                    sig: SYSCALL_STOP, ..
                } => break,
                WaitStatus::Stopped {
                    sig: libc::SIGSTOP, ..
                } => {
                    // Ours, taken out: queued again at the entry stop.
                    self.stop_queued = false;
                    sig = 0;
                }
                // A ptrace event stop: nothing to deliver.
                WaitStatus::Stopped {
                    sig: libc::SIGTRAP, ..
                } => sig = 0,
                // Every other signal is blocked (see `inject_releases`): none arrives.
                WaitStatus::Stopped { sig: other, .. } => {
                    return Err(io::Error::other(format!(
                        "task {tid}: signal {other} taken while releasing memory"
                    )))
                }
                other => {
                    return Err(io::Error::other(format!(
                        "task {tid} ended while releasing memory: {other:?}"
                    )))
                }
            }
        }
        sys::kill(pid, libc::SIGSTOP)?;
        self.stop_queued = true;
        sys::ptrace_syscall(tid, 0)?;
        match sys::wait_timeout(tid, RELEASE_CALL_TIMEOUT)? {
            WaitStatus::Stopped {
                sig: SYSCALL_STOP, ..
            } => {}
            other => {
                return Err(io::Error::other(format!(
                    "task {tid}: unexpected {other:?} at the end of madvise"
                )))
            }
        }
        let ret = sys::ptrace_get_regs(tid)?.rax as i64;
        if (-4095..0).contains(&ret) {
            let err = io::Error::from_raw_os_error(-ret as i32);
            return Err(io::Error::new(
                err.kind(),
                format!("madvise in task {tid}: {err}"),
            ));
        }
        Ok(())
    }

    /// Gives every thread but the releasing one a SIGSTOP of its own (queued to it
    /// alone), for good: they never run while we dump, and a dead tracer lets them go all
    /// at once, so each must stop by itself before its first instruction. The releasing
    /// thread takes the process-wide one, which it drops and gets back around each call
    /// (it would never see theirs).
    fn hold_other_threads(&mut self) -> io::Result<()> {
        self.others_held = true;
        for tid in ProcDir::open(self.pid)?.user_threads()? {
            if tid != self.tid {
                sys::tgkill(self.pid, tid, libc::SIGSTOP)?;
            }
        }
        Ok(())
    }

    /// Starts the watchdog before the first release; `false` (and releasing off) where
    /// that is not safe or not possible.
    fn start_watchdog(&mut self) -> bool {
        let pid = self.pid;
        match sigcont_is_harmless(pid) {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(%pid, "SIGCONT is caught, ignored or blocked, or a stop is pending: not releasing memory");
                self.off = true;
                return false;
            }
            Err(e) => {
                tracing::warn!(%pid, "not releasing memory: reading signal state: {e}");
                self.off = true;
                return false;
            }
        }
        match Watchdog::start(pid, &self.pages) {
            Ok(w) => {
                self.watchdog = Some(w);
                true
            }
            Err(e) => {
                tracing::warn!(%pid, "not releasing memory: no watchdog: {e}");
                self.off = true;
                false
            }
        }
    }

    /// The dump succeeded and the task is killed next (a dying dumper kills it too,
    /// see `commit_to_kill`): its memory stays released.
    pub fn keep(mut self) {
        self.kept = true;
        if let Some(w) = self.watchdog.take() {
            w.finish();
        }
    }

    /// Writes every released range back from the pages file.
    fn write_back(&self) -> io::Result<()> {
        let mem = File::options()
            .write(true)
            .open(format!("/proc/{}/mem", self.pid.0))?;
        // A write into a range registered with userfaultfd (by a monitor outside the
        // tree: the dump refuses userfaultfd fds) would wait for that monitor: such
        // ranges are left out and reported.
        let blocked = blocked_ranges(self.smaps.of(self.pid)?);
        let mut left_out = Vec::new();
        let mut buf = Vec::new();
        for c in &self.released {
            if overlaps(c, &blocked) {
                left_out.push(format!("{:#x}+{:#x}", c.addr, c.len));
                continue;
            }
            buf.resize(c.len as usize, 0);
            self.pages.read_exact_at(&mut buf, c.offset)?;
            let done = sys::process_vm_writev(self.pid, &buf, c.addr).unwrap_or(0);
            if done < buf.len() {
                mem.write_all_at(&buf[done..], c.addr + done as u64)?;
            }
        }
        if !left_out.is_empty() {
            return Err(io::Error::other(format!(
                "ranges registered with userfaultfd not written back: {}",
                left_out.join(", ")
            )));
        }
        Ok(())
    }
}

/// The address ranges of `maps` whose VmFlags rule out releasing (`mm::release_blocked`).
fn blocked_ranges(maps: &[MapEntry]) -> Vec<(u64, u64)> {
    maps.iter()
        .filter(|m| mm::release_blocked(m))
        .map(|m| (m.start, m.end))
        .collect()
}

/// Whether chunk `c` touches any of `ranges`.
fn overlaps(c: &Chunk, ranges: &[(u64, u64)]) -> bool {
    ranges
        .iter()
        .any(|&(start, end)| c.addr < end && start < c.addr + c.len)
}

impl mm::ReleaseSaved for PageRelease {
    fn release(&mut self, chunks: &[Chunk]) -> io::Result<()> {
        self.release_chunks(chunks)
    }

    fn overwrites(&self) -> (u64, u64) {
        (self.gadget, self.gadget + RELEASE_CODE.len() as u64)
    }

    fn release_at_once(&self) -> bool {
        self.release_at_once
    }
}

impl Drop for PageRelease {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let bytes: u64 = self.released.iter().map(|c| c.len).sum();
        let written = bytes == 0
            || match self.write_back() {
                Ok(()) => {
                    tracing::info!(pid = %self.pid, bytes, "released memory written back");
                    true
                }
                Err(e) => {
                    tracing::error!(
                        pid = %self.pid,
                        bytes,
                        "could not write released memory back, the task's memory is damaged \
                         (it is left stopped): {e}"
                    );
                    false
                }
            };
        if let Some(w) = self.watchdog.take() {
            if written {
                // A dumper that dies from here on leaves the watchdog only the SIGSTOP
                // to cancel; once it is cancelled nothing is left to undo.
                w.set(sys::RELEASE_WRITTEN_BACK);
                if self.stop_queued || self.others_held {
                    if let Err(e) = sys::kill(self.pid, libc::SIGCONT) {
                        tracing::warn!(pid = %self.pid, "cancelling the pending SIGSTOP: {e}");
                    }
                    self.stop_queued = false;
                }
            }
            w.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_releases_at_once_only_what_the_machine_could_not_hold_twice() {
        let available = crate::proc::mem_available()
            .unwrap()
            .expect("MemAvailable in /proc/meminfo");
        assert!(!ReleaseMemory::Auto.release_at_once(8 << 20));
        assert!(ReleaseMemory::Auto.release_at_once(available));
        assert!(ReleaseMemory::Always.release_at_once(8 << 20));
        assert!(!ReleaseMemory::Never.release_at_once(available));
    }
}
