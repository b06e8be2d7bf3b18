//! Running system calls inside a stopped tracee, for the state that has no /proc or
//! ptrace interface (signal handlers, itimers, brk, sigaltstack, clear_child_tid).
//!
//! How: save the thread's registers and one word of an executable mapping, write
//! `syscall; int3` there, point `ip` at it with the call's arguments, continue, and wait
//! for the SIGTRAP of the `int3`. Results the kernel writes to memory land in a scratch
//! mapping made the same way. `Injector` is a guard: dropping it puts the word and the
//! registers back and unmaps the scratch area.

use std::io;
use std::time::Duration;

use crate::arch;
use crate::sys::{self, Pid, WaitStatus};

/// `syscall` (0f 05) then `int3` (cc).
const GADGET: [u8; 3] = [0x0f, 0x05, 0xcc];

/// How long one injected call may take before the tracee is considered stuck.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Injector {
    tid: Pid,
    saved_regs: libc::user_regs_struct,
    gadget: u64,
    saved_word: u64,
    scratch: Option<(u64, u64)>,
    /// A scratch area the caller manages (never unmapped here).
    fixed_scratch: Option<(u64, u64)>,
    done: bool,
    /// The message of the last ptrace event an injected call raised (the new task's
    /// pid, as we number it, for a fork or clone).
    event_msg: Option<u64>,
}

/// The registers a thread resumes with after injection: an injected call consumed the
/// original restart context, so the restart is applied by hand, and `orig_ax = -1` keeps
/// the kernel from applying it a second time.
pub fn regs_for_resume(regs: &libc::user_regs_struct) -> libc::user_regs_struct {
    let mut out = arch::restart_interrupted_syscall(regs, arch::RestartBlock::Continue);
    out.orig_rax = u64::MAX;
    out
}

impl Injector {
    /// Prepares injection into `tid`, which must be ptrace-stopped by this thread.
    /// `gadget` is the start of an executable mapping of the tracee.
    pub fn new(tid: Pid, gadget: u64) -> io::Result<Injector> {
        let saved_regs = sys::ptrace_get_regs(tid)?;
        let saved_word = sys::ptrace_peek(tid, gadget)?;
        let mut word = saved_word.to_le_bytes();
        word[..GADGET.len()].copy_from_slice(&GADGET);
        sys::ptrace_poke(tid, gadget, u64::from_le_bytes(word))?;
        Ok(Injector {
            tid,
            saved_regs,
            gadget,
            saved_word,
            scratch: None,
            fixed_scratch: None,
            done: false,
            event_msg: None,
        })
    }

    /// The registers the thread had when it was frozen.
    pub fn saved_regs(&self) -> &libc::user_regs_struct {
        &self.saved_regs
    }

    /// Points the thread at the gadget with syscall `nr` and its arguments loaded.
    fn load_call(&self, nr: i64, args: [u64; 6]) -> io::Result<()> {
        let mut regs = self.saved_regs;
        regs.rip = self.gadget;
        regs.rax = nr as u64;
        // orig_rax = -1: no syscall-restart logic may rewrite ip/ax behind our back.
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        sys::ptrace_set_regs(self.tid, &regs)
    }

    /// Runs syscall `nr` with `args` in the tracee; returns its raw result (a negative
    /// errno on failure, as the kernel returns it).
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> io::Result<i64> {
        self.load_call(nr, args)?;
        self.event_msg = None;
        sys::ptrace_cont(self.tid, 0)?;
        loop {
            match sys::wait_timeout(self.tid, CALL_TIMEOUT)? {
                WaitStatus::Stopped {
                    sig: libc::SIGTRAP,
                    event: 0,
                } => break,
                // A ptrace event of the call itself (fork/clone reported to us with
                // PTRACE_O_TRACEFORK/TRACECLONE): go on to the int3.
                WaitStatus::Stopped {
                    sig: libc::SIGTRAP, ..
                } => {
                    self.event_msg = sys::ptrace_geteventmsg(self.tid).ok();
                    sys::ptrace_cont(self.tid, 0)?
                }
                // Another stop (a signal sent to the frozen tree) before the int3: it stays
                // pending in the task's queue only if not delivered, so pass it on.
                WaitStatus::Stopped { sig, .. } => sys::ptrace_cont(self.tid, sig)?,
                other => {
                    return Err(io::Error::other(format!(
                        "task {} ended during an injected syscall: {other:?}",
                        self.tid
                    )))
                }
            }
        }
        let after = sys::ptrace_get_regs(self.tid)?;
        Ok(after.rax as i64)
    }

    /// The message of the ptrace event the last injected call raised, if any: for
    /// clone3 and fork, our pid of the new task.
    pub fn last_event_msg(&self) -> Option<u64> {
        self.event_msg
    }

    /// Like `syscall`, mapping a negative result to an error naming the call.
    pub fn syscall_ok(&mut self, name: &str, nr: i64, args: [u64; 6]) -> io::Result<u64> {
        let ret = self.syscall(nr, args)?;
        if (-4095..0).contains(&ret) {
            let err = io::Error::from_raw_os_error(-ret as i32);
            return Err(io::Error::new(
                err.kind(),
                format!("{name} in task {}: {err}", self.tid),
            ));
        }
        Ok(ret as u64)
    }

    /// A private read-write scratch area of at least `len` bytes in the tracee.
    pub fn scratch(&mut self, len: u64) -> io::Result<u64> {
        if let Some((addr, size)) = self.fixed_scratch {
            if size >= len {
                return Ok(addr);
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{len} bytes do not fit the scratch area"),
            ));
        }
        if let Some((addr, size)) = self.scratch {
            if size >= len {
                return Ok(addr);
            }
        }
        self.unmap_scratch()?;
        let size = len.div_ceil(sys::page_size()) * sys::page_size();
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let addr = self.syscall_ok("mmap", libc::SYS_mmap, [0, size, prot, flags, u64::MAX, 0])?;
        self.scratch = Some((addr, size));
        Ok(addr)
    }

    /// Reads `len` bytes of tracee memory.
    pub fn read(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let n = sys::process_vm_readv(self.tid, &mut buf, &[(addr, len)])?;
        if n != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read of task {} memory", self.tid),
            ));
        }
        Ok(buf)
    }

    fn unmap_scratch(&mut self) -> io::Result<()> {
        if let Some((addr, size)) = self.scratch.take() {
            self.syscall_ok("munmap", libc::SYS_munmap, [addr, size, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    /// Removes every trace of the injection: scratch area, gadget bytes, registers (with
    /// the interrupted syscall set up to restart).
    pub fn finish(mut self) -> io::Result<()> {
        self.restore()
    }

    /// Moves the gadget to `gadget` (an executable page of the tracee), putting back the
    /// bytes at the old place if `restore_old`. Restore uses it to leave the restorer's
    /// own code, which it is about to unmap.
    pub fn retarget(&mut self, gadget: u64, restore_old: bool) -> io::Result<()> {
        if restore_old {
            sys::ptrace_poke(self.tid, self.gadget, self.saved_word)?;
        }
        let saved_word = sys::ptrace_peek(self.tid, gadget)?;
        let mut word = saved_word.to_le_bytes();
        word[..GADGET.len()].copy_from_slice(&GADGET);
        sys::ptrace_poke(self.tid, gadget, u64::from_le_bytes(word))?;
        self.gadget = gadget;
        self.saved_word = saved_word;
        Ok(())
    }

    /// Stops injecting without putting anything back: the caller sets the thread's
    /// final state itself (restore).
    pub fn abandon(mut self) {
        self.done = true;
    }

    /// Uses `[addr, addr + size)`, a mapping the caller owns, as the scratch area.
    pub fn set_scratch(&mut self, addr: u64, size: u64) {
        self.scratch = None;
        self.fixed_scratch = Some((addr, size));
    }

    /// Writes `data` into tracee memory at `addr` (a writable mapping).
    pub fn write(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        let n = sys::process_vm_writev(self.tid, data, addr)?;
        if n != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short write to task {} memory", self.tid),
            ));
        }
        Ok(())
    }

    /// Runs a last syscall (the unmapping of the gadget itself) and stops at its exit
    /// instead of at an `int3` that would no longer exist; then hands the thread over
    /// without restoring anything: the caller sets the final registers.
    pub fn last_syscall(mut self, nr: i64, args: [u64; 6]) -> io::Result<i64> {
        self.done = true;
        self.load_call(nr, args)?;
        // Entry stop, then exit stop (PTRACE_O_TRACESYSGOOD marks both with 0x80).
        for _ in 0..2 {
            sys::ptrace_syscall(self.tid, 0)?;
            match sys::wait_timeout(self.tid, CALL_TIMEOUT)? {
                WaitStatus::Stopped { sig, .. } if sig == libc::SIGTRAP | 0x80 => {}
                other => {
                    return Err(io::Error::other(format!(
                        "task {}: unexpected {other:?} around its last syscall",
                        self.tid
                    )))
                }
            }
        }
        Ok(sys::ptrace_get_regs(self.tid)?.rax as i64)
    }

    /// Runs a call that ends the task (exit_group, or a signal it sends itself), passing
    /// on every signal it stops with, and returns how the task ended as its tracer sees
    /// it. Nothing of the injection is undone: the task is gone.
    pub fn exit_with(mut self, nr: i64, args: [u64; 6]) -> io::Result<WaitStatus> {
        self.done = true;
        self.load_call(nr, args)?;
        sys::ptrace_cont(self.tid, 0)?;
        loop {
            match sys::wait_timeout(self.tid, CALL_TIMEOUT)? {
                WaitStatus::Stopped {
                    sig: libc::SIGTRAP, ..
                } => sys::ptrace_cont(self.tid, 0)?,
                WaitStatus::Stopped { sig, .. } => sys::ptrace_cont(self.tid, sig)?,
                ended => return Ok(ended),
            }
        }
    }

    fn restore(&mut self) -> io::Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let unmapped = self.unmap_scratch();
        sys::ptrace_poke(self.tid, self.gadget, self.saved_word)?;
        sys::ptrace_set_regs(self.tid, &regs_for_resume(&self.saved_regs))?;
        unmapped
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::freeze::FrozenTree;
    use crate::proc::ProcDir;
    use crate::testutil::{settle_state, Spawned};

    fn exec_start(pid: Pid) -> u64 {
        let maps = ProcDir::open(pid).unwrap().maps().unwrap();
        maps.iter()
            .find(|m| m.exec && !m.path.starts_with('['))
            .unwrap()
            .start
    }

    #[test]
    fn getpid_and_memory_results_then_clean_resume() {
        let sleeper = Spawned::start(&["sleep", "100"]);
        sleeper.wait_until("sleeping", |d| {
            d.stat().map(|s| s.state == 'S').unwrap_or(false)
        });
        let maps_before = ProcDir::open(sleeper.pid())
            .unwrap()
            .read_string("maps")
            .unwrap();
        let tree = FrozenTree::freeze(sleeper.pid(), Duration::from_secs(5)).unwrap();
        let mut inj = Injector::new(sleeper.pid(), exec_start(sleeper.pid())).unwrap();
        assert_eq!(
            inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(),
            i64::from(sleeper.pid().0)
        );
        // rt_sigaction(SIGINT, NULL, &old, 8): sleep's handler table, read via scratch.
        let scratch = inj.scratch(64).unwrap();
        inj.syscall_ok(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            [libc::SIGINT as u64, 0, scratch, 8, 0, 0],
        )
        .unwrap();
        assert_eq!(inj.read(scratch, 32).unwrap().len(), 32);
        let bad = inj
            .syscall_ok("close", libc::SYS_close, [9999, 0, 0, 0, 0, 0])
            .unwrap_err();
        assert!(bad.to_string().contains("close"), "{bad}");
        inj.finish().unwrap();
        tree.resume();
        assert_eq!(settle_state(sleeper.pid(), 'S'), 'S');
        let maps_after = ProcDir::open(sleeper.pid())
            .unwrap()
            .read_string("maps")
            .unwrap();
        assert_eq!(maps_before, maps_after, "scratch mapping left behind");
    }
}
