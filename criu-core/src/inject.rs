//! Running system calls inside a stopped tracee, for the state that has no /proc or
//! ptrace interface (signal handlers, itimers, brk, sigaltstack, clear_child_tid).
//!
//! How: save the thread's registers and one word of an executable mapping, write
//! `syscall; int3` there, point `ip` at it with the call's arguments, continue, and wait
//! for the SIGTRAP of the `int3`. Results the kernel writes to memory land in a scratch
//! mapping made the same way. `Injector` is a guard: dropping it puts the word and the
//! registers back and unmaps the scratch area.
//!
//! A tracer that dies leaves its tracee running wherever it stands. The dump's
//! state-reading calls therefore run self-restoring (see `make_self_restoring`): from
//! code in a mapping of their own that ends in rt_sigreturn(2) through a signal frame
//! holding the thread's own registers, signal mask and FPU state (the way CRIU's
//! parasite returns). They are stepped from syscall stop to syscall stop, never stopped
//! at an `int3`, so a thread let go at any of those stops finishes the call and puts
//! itself back into its own context. Only the call that maps that code (run from the
//! task's own text) and the one that unmaps it need the tracer to live through them.

use std::io;
use std::time::Duration;

use crate::arch;
use crate::freeze::KillIfTracerDies;
use crate::sys::{self, Pid, WaitStatus};

/// `syscall` (0f 05) then `int3` (cc).
const GADGET: [u8; 3] = [0x0f, 0x05, 0xcc];

/// How long one injected call may take before the tracee is considered stuck.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Room for batch code past the caller's part of the scratch area (see `syscalls`).
const BATCH_ROOM: u64 = 16 << 10;

/// Bytes of code one call of a batch takes: seven `movabs reg, imm64`, `syscall`, and
/// `movabs [imm64], rax` storing its result.
const BATCH_CALL_BYTES: u64 = 7 * 10 + 2 + 10;

pub struct Injector {
    tid: Pid,
    saved_regs: libc::user_regs_struct,
    gadget: u64,
    saved_word: u64,
    scratch: Option<(u64, u64)>,
    /// Where batch code may go: the end of an executable scratch area, past the
    /// caller's bytes. `None` when the scratch area could not be made executable.
    batch_room: Option<(u64, u64)>,
    /// A scratch area the caller manages (never unmapped here).
    fixed_scratch: Option<(u64, u64)>,
    done: bool,
    /// The message of the last ptrace event an injected call raised (the new task's
    /// pid, as we number it, for a fork or clone).
    event_msg: Option<u64>,
    /// Set while calls run from a self-restoring area (see `make_self_restoring`).
    way_back: Option<WayBack>,
    /// The ptrace options the thread keeps, PTRACE_O_EXITKILL added while it could not
    /// put itself back.
    options: libc::c_int,
}

/// The mapping that holds self-restoring code, its signal frame and the callers' scratch,
/// and the signal mask the thread had (every signal is blocked meanwhile).
#[derive(Debug, Clone, Copy)]
struct WayBack {
    area: u64,
    size: u64,
    sigmask: u64,
    /// The signal frame rt_sigreturn(2) takes back (the thread's `sp` must be 8 past it).
    frame_at: u64,
}

/// A self-restoring area one thread's injection leaves mapped for the next thread of
/// the same process (`Injector::finish_keeping_area`, `Injector::in_area`): mapping and
/// unmapping it are the two costly moments of a thread's injection (a call each from the
/// task's text, with the tracer's death fatal meanwhile), so a process's threads share
/// one. If it is dropped without being handed on, it is unmapped through `last_tid`
/// (stopped by this tracer), so no failure leaves it in the process.
pub struct SharedArea {
    /// The thread that used it last (stopped), which unmaps it if nobody takes it.
    last_tid: Pid,
    area: u64,
    size: u64,
    frame_at: u64,
    options: libc::c_int,
    handed_on: bool,
}

impl Drop for SharedArea {
    fn drop(&mut self) {
        if self.handed_on {
            return;
        }
        self.handed_on = true;
        let (tid, options) = (self.last_tid, self.options);
        let area = SharedArea {
            handed_on: false,
            ..*self
        };
        // The injector takes it over and unmaps it when it drops.
        if let Err(e) = Injector::in_area(tid, area, options) {
            tracing::warn!(%tid, "unmapping a shared injection area: {e}");
        }
    }
}

/// Bytes a block of `syscalls` takes past its calls: an int3, or the self-restoring
/// tail (flag, sleep, way back).
const BATCH_TAIL: u64 = 128;

/// How long a self-restoring block sleeps once done, waiting to be interrupted (a thread
/// whose tracer died goes back into its own context after it).
const BLOCK_SLEEP_NS: u64 = 200_000_000;

/// The self-restoring area: the callers' scratch first, then code, frame and xsave area.
const WAY_BACK_SIZE: u64 = 1 << 20;
const CALLER_ROOM: u64 = WAY_BACK_SIZE - (64 << 10);

/// The code every self-restoring call runs (at the start of the area past the callers'
/// part): `syscall`, then, if the tracer is gone, `movabs rsp, FRAME + 8`,
/// `mov eax, SYS_rt_sigreturn`, `syscall`.
fn way_back_code(frame_at: u64) -> Vec<u8> {
    let mut code = vec![0x0f, 0x05, 0x48, 0xbc];
    code.extend_from_slice(&(frame_at + 8).to_le_bytes());
    code.push(0xb8);
    code.extend_from_slice(&(libc::SYS_rt_sigreturn as u32).to_le_bytes());
    code.extend_from_slice(&[0x0f, 0x05]);
    code
}

/// The registers a thread resumes with after injection: an injected call consumed the
/// original restart context, so the restart is applied by hand, and `orig_ax = -1` keeps
/// the kernel from applying it a second time.
pub fn regs_for_resume(regs: &libc::user_regs_struct) -> libc::user_regs_struct {
    let mut out = arch::restart_interrupted_syscall(regs, arch::RestartBlock::Continue);
    out.orig_rax = u64::MAX;
    out
}

/// The registers a thread gets back once the injected calls are done, while it is still
/// in its ptrace stop: the restart of the call it was in is left to the kernel
/// (`arch::kernel_restart`), so that a signal arriving as it goes on ends that call as
/// it would have ended it without us.
pub fn regs_to_put_back(regs: &libc::user_regs_struct) -> libc::user_regs_struct {
    arch::kernel_restart(regs, arch::RestartBlock::Continue)
}

/// `regs` pointed at `at` (a `syscall` instruction) with syscall `nr` and its arguments
/// loaded.
pub(crate) fn call_regs(
    regs: &libc::user_regs_struct,
    at: u64,
    nr: i64,
    args: [u64; 6],
) -> libc::user_regs_struct {
    let mut regs = *regs;
    regs.rip = at;
    regs.rax = nr as u64;
    // orig_rax = -1: no syscall-restart logic may rewrite ip/ax behind our back.
    regs.orig_rax = u64::MAX;
    regs.rdi = args[0];
    regs.rsi = args[1];
    regs.rdx = args[2];
    regs.r10 = args[3];
    regs.r8 = args[4];
    regs.r9 = args[5];
    regs
}

/// Steps `tid` over the `syscall` its registers point at (call number `expected`, which
/// `call_regs` put there): to its entry stop, then to its exit stop
/// (PTRACE_O_TRACESYSGOOD marks both with 0x80). Every signal but SIGSTOP is blocked
/// meanwhile; a SIGSTOP sent to the frozen tree is passed on, as `run_to_trap` does.
pub(crate) fn step_over_syscall(tid: Pid, expected: i64) -> io::Result<()> {
    let expected = expected as u64;
    let mut entered = false;
    let mut sig = 0;
    loop {
        sys::ptrace_syscall(tid, sig)?;
        sig = 0;
        match sys::wait_timeout(tid, CALL_TIMEOUT)? {
            WaitStatus::Stopped { sig: s, .. } if s == libc::SIGTRAP | 0x80 => {
                if entered {
                    return Ok(());
                }
                // Only the entry of our call counts (a signal handler's rt_sigreturn,
                // were one ever let run, would stop here too).
                let nr = sys::ptrace_get_regs(tid)?.orig_rax;
                if nr != expected {
                    return Err(io::Error::other(format!(
                        "task {tid}: stopped entering syscall {nr}, not the injected {expected}"
                    )));
                }
                entered = true;
            }
            // A ptrace event stop (a group stop of that SIGSTOP): nothing to deliver.
            WaitStatus::Stopped { event, .. } if event != 0 => {}
            WaitStatus::Stopped { sig: s, .. } => sig = s,
            other => {
                return Err(io::Error::other(format!(
                    "task {tid} ended during an injected call: {other:?}"
                )))
            }
        }
    }
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
            batch_room: None,
            fixed_scratch: None,
            done: false,
            event_msg: None,
            way_back: None,
            options: 0,
        })
    }

    /// Makes every later call self-restoring: maps a private area (one call from the
    /// text gadget, the only one whose tracer must live through it), writes into it the
    /// code of `way_back_code` and a signal frame of the thread's own state (its
    /// registers as they resume, with an interrupted call set up to restart; its signal
    /// mask; its xsave area), puts the text back, and blocks every signal while our
    /// calls run, so no handler runs on our stack or registers. From here until
    /// `finish` (whose unmapping the tracer must live through again), a thread whose
    /// tracer dies returns into its own context by itself; the area is left mapped.
    ///
    /// Returns false, mapping nothing, where it cannot be done: a thread under seccomp
    /// (a filter may kill it for a writable executable mapping), or one refused such a
    /// mapping (memory-deny-write-execute). Calls then go on as before.
    ///
    /// `options` are the thread's ptrace options (they must hold PTRACE_O_TRACESYSGOOD:
    /// a thread let go at a syscall stop without it would take a SIGTRAP); while the
    /// area is being mapped and while it is being unmapped, PTRACE_O_EXITKILL is added.
    pub fn make_self_restoring(&mut self, options: libc::c_int) -> io::Result<bool> {
        self.options = options;
        if self.way_back.is_some() {
            return Ok(true);
        }
        if self.under_seccomp() || self.scratch.is_some() || self.fixed_scratch.is_some() {
            return Ok(false);
        }
        let xstate = sys::ptrace_get_xstate(self.tid)?;
        let sigmask = sys::ptrace_get_sigmask(self.tid)?;
        // From the blocked mask to the thread resting at the way back, a dying tracer
        // takes it along.
        let _window = KillIfTracerDies::arm(self.tid, "mapping injected code", self.options)?;
        // No handler may run on our registers from the first call on (see `restore`
        // for the way back).
        sys::ptrace_set_sigmask(self.tid, u64::MAX)?;
        let set_up = self.set_up_way_back(xstate, sigmask);
        if !matches!(set_up, Ok(true)) {
            sys::ptrace_set_sigmask(self.tid, sigmask)?;
        }
        set_up
    }

    fn set_up_way_back(&mut self, xstate: Vec<u8>, sigmask: u64) -> io::Result<bool> {
        let rwx = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        // Stepped, not run to the `int3`: a thread left at an int3 stop by a dying
        // tracer would take that SIGTRAP and die.
        self.load_call(libc::SYS_mmap, [0, WAY_BACK_SIZE, rwx, flags, u64::MAX, 0])?;
        self.step_over_syscall(libc::SYS_mmap)?;
        let ret = sys::ptrace_get_regs(self.tid)?.rax as i64;
        if (-4095..0).contains(&ret) {
            return Ok(false);
        }
        let area = ret as u64;
        let code_at = area + CALLER_ROOM;
        let frame_at = code_at + 64;
        let fpstate_at = (frame_at + arch::SIGFRAME_SIZE as u64).next_multiple_of(64);
        let resume = regs_for_resume(&self.saved_regs);
        let (frame, fpstate) =
            arch::sigreturn_frame(&resume, sigmask, &xstate, fpstate_at, sys::xcr0());
        let fits = fpstate_at + fpstate.len() as u64 <= area + WAY_BACK_SIZE;
        let written = fits
            && self.write(code_at, &way_back_code(frame_at)).is_ok()
            && self.write(frame_at, &frame).is_ok()
            && self.write(fpstate_at, &fpstate).is_ok();
        if !written {
            self.syscall_ok(
                "munmap",
                libc::SYS_munmap,
                [area, WAY_BACK_SIZE, 0, 0, 0, 0],
            )?;
            return Ok(false);
        }
        // The text is the task's own again: every call runs from the area now.
        sys::ptrace_poke(self.tid, self.gadget, self.saved_word)?;
        self.gadget = code_at;
        self.way_back = Some(WayBack {
            area,
            size: WAY_BACK_SIZE,
            sigmask,
            frame_at,
        });
        // The callers' scratch, then the room for the code of `syscalls`.
        self.fixed_scratch = Some((area, CALLER_ROOM - BATCH_ROOM));
        self.batch_room = Some((area + CALLER_ROOM - BATCH_ROOM, BATCH_ROOM));
        // Resting at this syscall-exit stop, the thread would go on at the way back.
        let mut rest = self.saved_regs;
        rest.rip = code_at + 2;
        rest.orig_rax = u64::MAX;
        sys::ptrace_set_regs(self.tid, &rest)?;
        Ok(true)
    }

    /// Like [`Self::new`] then [`Self::make_self_restoring`], for a thread of a process
    /// whose other thread's injection left its area mapped (`finish_keeping_area`):
    /// nothing is mapped and the task's text is not touched; the thread's own signal
    /// frame goes into the area, the thread rests at its way back, and then every
    /// signal is blocked (a dying tracer between the two leaves it at the way back with
    /// its own mask, which takes it home all the same).
    pub fn in_area(tid: Pid, mut shared: SharedArea, options: libc::c_int) -> io::Result<Injector> {
        shared.handed_on = true;
        // Read first: nothing changes in the thread until the injector owns the area.
        let read = sys::ptrace_get_regs(tid).and_then(|regs| {
            Ok((
                regs,
                sys::ptrace_get_xstate(tid)?,
                sys::ptrace_get_sigmask(tid)?,
            ))
        });
        let (saved_regs, xstate, sigmask) = match read {
            Ok(read) => read,
            Err(e) => {
                // Unmapped through the thread that had it last, unless that is this one
                // (`SharedArea::drop` trying to unmap it): no second try then.
                shared.handed_on = shared.last_tid == tid;
                return Err(e);
            }
        };
        let code_at = shared.frame_at - 64;
        let inj = Injector {
            tid,
            saved_regs,
            gadget: code_at,
            saved_word: 0,
            // The callers' scratch, then the room for the code of `syscalls`.
            scratch: None,
            batch_room: Some((shared.area + CALLER_ROOM - BATCH_ROOM, BATCH_ROOM)),
            fixed_scratch: Some((shared.area, CALLER_ROOM - BATCH_ROOM)),
            done: false,
            event_msg: None,
            // Owned from here: dropped on a failure, the injector unmaps the area.
            way_back: Some(WayBack {
                area: shared.area,
                size: shared.size,
                sigmask,
                frame_at: shared.frame_at,
            }),
            options,
        };
        let fpstate_at = (shared.frame_at + arch::SIGFRAME_SIZE as u64).next_multiple_of(64);
        let resume = regs_for_resume(&saved_regs);
        let (frame, fpstate) =
            arch::sigreturn_frame(&resume, sigmask, &xstate, fpstate_at, sys::xcr0());
        if fpstate_at + fpstate.len() as u64 > shared.area + shared.size {
            return Err(io::Error::other(
                "its xsave area does not fit the shared area",
            ));
        }
        inj.write(shared.frame_at, &frame)?;
        inj.write(fpstate_at, &fpstate)?;
        let mut rest = saved_regs;
        rest.rip = code_at + 2;
        rest.orig_rax = u64::MAX;
        sys::ptrace_set_regs(tid, &rest)?;
        sys::ptrace_set_sigmask(tid, u64::MAX)?;
        tracing::debug!(%tid, area = shared.area, "calls from the shared injection area");
        Ok(inj)
    }

    /// [`Self::finish`] that leaves the self-restoring area mapped for the next thread of
    /// the process ([`Self::in_area`]): the thread gets its mask back, then its
    /// registers (so a tracer dying in between leaves it at the way back with its own
    /// mask). None, and a plain finish, for a thread whose calls were not self-restoring.
    pub fn finish_keeping_area(mut self) -> io::Result<Option<SharedArea>> {
        let Some(way_back) = self.way_back else {
            self.restore()?;
            return Ok(None);
        };
        sys::ptrace_set_sigmask(self.tid, way_back.sigmask)?;
        sys::ptrace_set_regs(self.tid, &regs_to_put_back(&self.saved_regs))?;
        // Handed on: nothing more to undo here.
        self.way_back = None;
        self.done = true;
        Ok(Some(SharedArea {
            last_tid: self.tid,
            area: way_back.area,
            size: way_back.size,
            frame_at: way_back.frame_at,
            options: self.options,
            handed_on: false,
        }))
    }

    /// Whether calls run self-restoring (see `make_self_restoring`).
    pub fn is_self_restoring(&self) -> bool {
        self.way_back.is_some()
    }

    /// The registers the thread had when it was frozen.
    pub fn saved_regs(&self) -> &libc::user_regs_struct {
        &self.saved_regs
    }

    /// Points the thread at the gadget with syscall `nr` and its arguments loaded.
    fn load_call(&self, nr: i64, args: [u64; 6]) -> io::Result<()> {
        let regs = call_regs(&self.saved_regs, self.gadget, nr, args);
        sys::ptrace_set_regs(self.tid, &regs)
    }

    /// Runs syscall `nr` with `args` in the tracee; returns its raw result (a negative
    /// errno on failure, as the kernel returns it).
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> io::Result<i64> {
        self.load_call(nr, args)?;
        if self.way_back.is_some() {
            self.step_over_syscall(nr)?;
        } else {
            self.run_to_trap()?;
        }
        let after = sys::ptrace_get_regs(self.tid)?;
        Ok(after.rax as i64)
    }

    /// [`step_over_syscall`] of the call `load_call` set up.
    fn step_over_syscall(&mut self, expected: i64) -> io::Result<()> {
        self.event_msg = None;
        step_over_syscall(self.tid, expected)
    }

    /// Continues the thread through a self-restoring block (see `syscalls`) until its
    /// done flag at `done_at` is up, then interrupts it in its sleep.
    fn run_block_to_flag(&mut self, done_at: u64) -> io::Result<()> {
        self.event_msg = None;
        sys::ptrace_cont(self.tid, 0)?;
        let deadline = std::time::Instant::now() + CALL_TIMEOUT;
        let done = loop {
            let flag = self.read(done_at, 8)?;
            if flag.iter().any(|&b| b != 0) {
                break true;
            }
            // Every signal but SIGKILL and SIGSTOP is blocked: a stop now is one of those,
            // or the group stop of a stopped process (or an interrupt) that a thread's
            // first resume after its freeze reports again: passed on, as
            // `step_over_syscall` does.
            match sys::wait_nohang(self.tid)? {
                None => {}
                Some(WaitStatus::Stopped { event, .. }) if event == libc::PTRACE_EVENT_STOP => {
                    sys::ptrace_cont(self.tid, 0)?;
                    continue;
                }
                Some(WaitStatus::Stopped { sig, event: 0 }) => {
                    sys::ptrace_cont(self.tid, sig)?;
                    continue;
                }
                Some(status) => {
                    return Err(io::Error::other(format!(
                        "task {}: {status:?} during injected calls",
                        self.tid
                    )))
                }
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
            std::thread::yield_now();
        };
        sys::ptrace_interrupt(self.tid)?;
        loop {
            match sys::wait_timeout(self.tid, CALL_TIMEOUT)? {
                WaitStatus::Stopped { event, .. } if event == libc::PTRACE_EVENT_STOP => break,
                // A SIGSTOP sent to the frozen tree: passed on, as elsewhere.
                WaitStatus::Stopped { sig, .. } => sys::ptrace_cont(self.tid, sig)?,
                other => {
                    return Err(io::Error::other(format!(
                        "task {} ended during injected calls: {other:?}",
                        self.tid
                    )))
                }
            }
        }
        if !done {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("task {}: injected calls did not finish", self.tid),
            ));
        }
        Ok(())
    }

    /// Continues the thread until the `int3` that ends injected code.
    fn run_to_trap(&mut self) -> io::Result<()> {
        self.event_msg = None;
        sys::ptrace_cont(self.tid, 0)?;
        loop {
            match sys::wait_timeout(self.tid, CALL_TIMEOUT)? {
                WaitStatus::Stopped {
                    sig: libc::SIGTRAP,
                    event: 0,
                } => return Ok(()),
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
                        "task {} ended during injected code: {other:?}",
                        self.tid
                    )))
                }
            }
        }
    }

    /// Runs `calls` in order and returns each one's raw result (a negative errno on
    /// failure), going on after a failed call. Where the scratch area is executable the
    /// calls run as one block of code in one stop of the thread (two context switches
    /// instead of two per call: reading a process's 64 signal handlers this way is
    /// milliseconds faster); otherwise, one by one.
    pub fn syscalls(&mut self, calls: &[(i64, [u64; 6])]) -> io::Result<Vec<i64>> {
        let mut results = Vec::with_capacity(calls.len());
        // Room past the calls: the end of a block (an int3, or the self-restoring tail
        // with its flag and sleep), at most BATCH_TAIL bytes.
        let per_block = self
            .batch_room
            .map(|(_, size)| (size.saturating_sub(BATCH_TAIL) / (BATCH_CALL_BYTES + 8)) as usize)
            .unwrap_or(0);
        if calls.len() < 3 || per_block == 0 {
            for &(nr, args) in calls {
                results.push(self.syscall(nr, args)?);
            }
            return Ok(results);
        }
        let (room, _) = self.batch_room.unwrap_or_default();
        // Each block: one result slot per call at the start of the room, then its code.
        for block in calls.chunks(per_block) {
            let slots = room;
            // A self-restoring block also has a done flag and a timespec (see below).
            let done_at = slots + 8 * block.len() as u64;
            let sleep_at = done_at + 8;
            let code_at = sleep_at + 16;
            let mut code = Vec::with_capacity(block.len() * BATCH_CALL_BYTES as usize + 1);
            for (i, &(nr, args)) in block.iter().enumerate() {
                // movabs rax/rdi/rsi/rdx/r10/r8/r9, imm64
                let loads: [([u8; 2], u64); 7] = [
                    ([0x48, 0xb8], nr as u64),
                    ([0x48, 0xbf], args[0]),
                    ([0x48, 0xbe], args[1]),
                    ([0x48, 0xba], args[2]),
                    ([0x49, 0xba], args[3]),
                    ([0x49, 0xb8], args[4]),
                    ([0x49, 0xb9], args[5]),
                ];
                for (op, imm) in loads {
                    code.extend_from_slice(&op);
                    code.extend_from_slice(&imm.to_le_bytes());
                }
                code.extend_from_slice(&[0x0f, 0x05]); // syscall
                code.extend_from_slice(&[0x48, 0xa3]); // movabs [imm64], rax
                code.extend_from_slice(&(slots + 8 * i as u64).to_le_bytes());
            }
            let self_restoring = self.way_back.map(|w| w.frame_at);
            match self_restoring {
                // No int3 (a thread left at one by a dying tracer would die of its
                // SIGTRAP): the block raises a flag we poll, sleeps a bounded time in
                // which we interrupt it, and, if we are gone, returns into its own
                // context by itself.
                Some(frame_at) => {
                    code.extend_from_slice(&[0xb8, 1, 0, 0, 0]); // mov eax, 1
                    code.extend_from_slice(&[0x48, 0xa3]); // movabs [done], rax
                    code.extend_from_slice(&done_at.to_le_bytes());
                    // ppoll(NULL, 0, &timespec, NULL, 8): interrupted, it leaves the
                    // thread's restart block alone (nanosleep would overwrite the one
                    // of the call the thread was frozen in).
                    code.extend_from_slice(&[0x31, 0xff]); // xor edi, edi
                    code.extend_from_slice(&[0x31, 0xf6]); // xor esi, esi
                    code.extend_from_slice(&[0x48, 0xba]); // movabs rdx, &timespec
                    code.extend_from_slice(&sleep_at.to_le_bytes());
                    code.extend_from_slice(&[0x45, 0x31, 0xd2]); // xor r10d, r10d
                    code.extend_from_slice(&[0x41, 0xb8, 8, 0, 0, 0]); // mov r8d, 8
                    code.push(0xb8); // mov eax, SYS_ppoll
                    code.extend_from_slice(&(libc::SYS_ppoll as u32).to_le_bytes());
                    code.extend_from_slice(&[0x0f, 0x05]); // syscall
                    code.extend_from_slice(&way_back_code(frame_at)[2..]);
                    let mut flag_and_sleep = [0u8; 24];
                    flag_and_sleep[16..24].copy_from_slice(&BLOCK_SLEEP_NS.to_le_bytes());
                    self.write(done_at, &flag_and_sleep)?;
                }
                None => code.push(0xcc), // int3
            }
            self.write(code_at, &code)?;
            let mut regs = self.saved_regs;
            regs.rip = code_at;
            regs.orig_rax = u64::MAX;
            sys::ptrace_set_regs(self.tid, &regs)?;
            if self_restoring.is_some() {
                self.run_block_to_flag(done_at)?;
            } else {
                self.run_to_trap()?;
            }
            let raw = self.read(slots, 8 * block.len())?;
            results.extend(
                raw.chunks_exact(8)
                    .map(|w| i64::from_le_bytes(w.try_into().unwrap_or_default())),
            );
        }
        Ok(results)
    }

    /// Like `syscalls`, failing with the name of the first call that failed.
    pub fn syscalls_ok<S: AsRef<str>>(
        &mut self,
        calls: &[(S, i64, [u64; 6])],
    ) -> io::Result<Vec<u64>> {
        let raw: Vec<(i64, [u64; 6])> = calls.iter().map(|(_, nr, a)| (*nr, *a)).collect();
        let results = self.syscalls(&raw)?;
        calls
            .iter()
            .zip(results)
            .map(|((name, _, _), ret)| self.check_result(name.as_ref(), ret))
            .collect()
    }

    /// A raw result as `syscall_ok` gives it: a negative errno becomes an error naming
    /// the call.
    pub fn check_result(&self, name: &str, ret: i64) -> io::Result<u64> {
        if (-4095..0).contains(&ret) {
            let err = io::Error::from_raw_os_error(-ret as i32);
            return Err(io::Error::new(
                err.kind(),
                format!("{name} in task {}: {err}", self.tid),
            ));
        }
        Ok(ret as u64)
    }

    /// The message of the ptrace event the last injected call raised, if any: for
    /// clone3 and fork, our pid of the new task.
    pub fn last_event_msg(&self) -> Option<u64> {
        self.event_msg
    }

    /// Like `syscall`, mapping a negative result to an error naming the call.
    pub fn syscall_ok(&mut self, name: &str, nr: i64, args: [u64; 6]) -> io::Result<u64> {
        let ret = self.syscall(nr, args)?;
        self.check_result(name, ret)
    }

    /// A private read-write scratch area of at least `len` bytes in the tracee. It is
    /// also executable, with room for the code of `syscalls` past `len`, unless the
    /// tracee may not have writable code (memory-deny-write-execute, an LSM).
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
        let page = sys::page_size();
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let own = len.next_multiple_of(16);
        let size = (own + BATCH_ROOM).div_ceil(page) * page;
        let rwx = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        // A seccomp filter may kill the task for a writable executable mapping instead
        // of refusing it, so a filtered task gets the plain area.
        let ret = if self.under_seccomp() {
            -i64::from(libc::EPERM)
        } else {
            self.syscall(libc::SYS_mmap, [0, size, rwx, flags, u64::MAX, 0])?
        };
        if !(-4095..0).contains(&ret) {
            let addr = ret as u64;
            self.scratch = Some((addr, size));
            self.batch_room = Some((addr + own, size - own));
            return Ok(addr);
        }
        let size = len.div_ceil(page) * page;
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
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

    /// Whether the thread runs under seccomp (mode 1 or 2), or its status is unreadable.
    fn under_seccomp(&self) -> bool {
        // Unsure (an unreadable status) counts as "under seccomp": the careful path works
        // either way.
        crate::proc::seccomp_mode(self.tid).is_none_or(|mode| mode != 0)
    }

    fn unmap_scratch(&mut self) -> io::Result<()> {
        self.batch_room = None;
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
        self.batch_room = None;
        self.fixed_scratch = Some((addr, size));
    }

    /// Uses `[addr, addr + size)`, a writable and executable mapping the caller owns, as
    /// the room for the code of `syscalls` (after `set_scratch`, which clears it).
    pub fn set_batch_room(&mut self, addr: u64, size: u64) {
        self.batch_room = Some((addr, size));
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
        if let Some(way_back) = self.way_back.take() {
            // The area goes first (the call returns into no code: the thread stops at
            // its exit and gets its registers before it runs again), then its mask: a
            // signal unblocked earlier would be taken on our way there.
            let _window = KillIfTracerDies::arm(self.tid, "unmapping injected code", self.options)?;
            self.load_call(libc::SYS_munmap, [way_back.area, way_back.size, 0, 0, 0, 0])?;
            self.step_over_syscall(libc::SYS_munmap)?;
            let ret = sys::ptrace_get_regs(self.tid)?.rax as i64;
            self.check_result("munmap of the injected code", ret)?;
            sys::ptrace_set_sigmask(self.tid, way_back.sigmask)?;
            return sys::ptrace_set_regs(self.tid, &regs_to_put_back(&self.saved_regs));
        }
        let unmapped = self.unmap_scratch();
        sys::ptrace_poke(self.tid, self.gadget, self.saved_word)?;
        sys::ptrace_set_regs(self.tid, &regs_to_put_back(&self.saved_regs))?;
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

    /// A `sleep` frozen while sleeping, with its maps before the injection.
    fn frozen_sleeper() -> (Spawned, FrozenTree, String) {
        let sleeper = Spawned::start(&["sleep", "100"]);
        sleeper.wait_until("sleeping", |d| {
            d.stat().map(|s| s.state == 'S').unwrap_or(false)
        });
        let maps = ProcDir::open(sleeper.pid())
            .unwrap()
            .read_string("maps")
            .unwrap();
        let tree = FrozenTree::freeze(sleeper.pid(), Duration::from_secs(5)).unwrap();
        (sleeper, tree, maps)
    }

    /// The sleeper sleeps on, with no scratch mapping left behind.
    fn assert_resumed_unchanged(sleeper: &Spawned, maps_before: &str) {
        assert_eq!(settle_state(sleeper.pid(), 'S'), 'S');
        let maps_after = ProcDir::open(sleeper.pid())
            .unwrap()
            .read_string("maps")
            .unwrap();
        assert_eq!(maps_before, maps_after, "scratch mapping left behind");
    }

    #[test]
    fn getpid_and_memory_results_then_clean_resume() {
        let (sleeper, tree, maps_before) = frozen_sleeper();
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
        assert_resumed_unchanged(&sleeper, &maps_before);
    }

    #[test]
    fn a_batch_of_calls_runs_in_one_stop_with_each_result() {
        let (sleeper, tree, maps_before) = frozen_sleeper();
        let mut inj = Injector::new(sleeper.pid(), exec_start(sleeper.pid())).unwrap();
        let scratch = inj.scratch(64 * 32).unwrap();
        assert!(
            inj.batch_room.is_some(),
            "an unfiltered task gets room for code"
        );
        let pid = i64::from(sleeper.pid().0);
        // More calls than one block of code holds, so it runs in several blocks.
        let mut calls = vec![(libc::SYS_getpid, [0; 6]); 300];
        calls[7] = (libc::SYS_close, [9999, 0, 0, 0, 0, 0]);
        calls[8] = (
            libc::SYS_rt_sigaction,
            [libc::SIGINT as u64, 0, scratch + 32, 8, 0, 0],
        );
        let got = inj.syscalls(&calls).unwrap();
        assert_eq!(got.len(), 300);
        assert_eq!(
            got[7],
            -i64::from(libc::EBADF),
            "a failed call, and the rest go on"
        );
        assert_eq!(got[8], 0);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, &r)| i == 7 || i == 8 || r == pid));
        let err = inj
            .syscalls_ok(&[
                ("getpid", libc::SYS_getpid, [0; 6]),
                ("close", libc::SYS_close, [9999, 0, 0, 0, 0, 0]),
                ("getpid", libc::SYS_getpid, [0; 6]),
            ])
            .unwrap_err();
        assert!(err.to_string().contains("close"), "{err}");
        // Without room for code (a scratch area the caller owns), the same calls run
        // one by one.
        let mapped = inj.scratch;
        inj.set_scratch(scratch, 64 * 32);
        assert_eq!(
            inj.syscalls(&calls[..10]).unwrap(),
            got[..10].to_vec(),
            "one by one"
        );
        // Hand the mapping back, so that finish() unmaps it.
        inj.fixed_scratch = None;
        inj.scratch = mapped;
        inj.finish().unwrap();
        tree.resume();
        assert_resumed_unchanged(&sleeper, &maps_before);
    }
}
