//! tp-altstack: SIGUSR1 has an SA_ONSTACK handler, and threads differ in their alternate
//! signal stacks; the check raises SIGUSR1 in each thread and proves the handler ran on the
//! right stack, and that each thread's sigaltstack is exactly the one it set.
//!
//! State (one handler, process-wide: SIGUSR1 with SA_ONSTACK, as language runtimes install
//! every handler):
//! - `main`: the main thread, with no alternate stack (the one Rust's runtime gives it is
//!   disabled): an SA_ONSTACK handler runs on its ordinary stack;
//! - `bare`: a worker without an alternate stack, likewise;
//! - `alt`: a worker with a 64 KiB alternate stack of its own;
//! - `autodisarm`: a worker with an alternate stack and SS_AUTODISARM (the stack is
//!   disarmed while a handler runs on it, and armed again on return);
//! - `parked`: a worker with an alternate stack that is inside a handler on it when the
//!   program says ready: it raised SIGRTMIN+5 (SA_ONSTACK) at itself, and that handler
//!   waits for the check; so a dump finds it on its alternate stack (SS_ONSTACK).
//!
//! Each thread raises SIGUSR1 at itself once during setup (so a broken setup shows before
//! `ready`). `PATH.altstack` lists `NAME TID SP SIZE FLAGS` (hex) per thread: what
//! `sigaltstack(NULL, &old)` reports in the thread (for `parked`, inside its handler), for
//! a harness to compare with images.
//!
//! Check, in every thread: `sigaltstack` reports what it set; SIGUSR1 sent to the thread
//! (`tgkill`) is handled once; a local of the handler lies inside the thread's alternate
//! stack if it has one, else just below the frame that raised the signal (its ordinary
//! stack) and outside every alternate stack of the program; `sigaltstack` inside the
//! handler says SS_ONSTACK (alternate stack), SS_DISABLE (none, or disarmed); and after
//! the handler the thread's sigaltstack is again the one it set. `parked` first leaves its
//! handler, which must have run on its alternate stack, and then does the same.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use criu_testprogs::{
    cvt, gettid, install_handler, sigrt, wait_until, write_atomic, Mapping, Program, Report,
};

/// Not in every libc crate version: the flag of `sigaltstack(2)` (Linux 4.7).
const SS_AUTODISARM: c_int = 1 << 31;
const ALTSTACK_BYTES: usize = 64 << 10;
/// How far below the raising frame a handler on the ordinary stack may be.
const FRAME_REACH: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(10);

/// The threads, in the order of `SLOTS`.
const THREADS: [Kind; 5] = [
    Kind::Main,
    Kind::Bare,
    Kind::Alt,
    Kind::AutoDisarm,
    Kind::Parked,
];
/// The index of `parked` in THREADS.
const PARKED_INDEX: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Main,
    Bare,
    Alt,
    AutoDisarm,
    Parked,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Main => "main",
            Kind::Bare => "bare",
            Kind::Alt => "alt",
            Kind::AutoDisarm => "autodisarm",
            Kind::Parked => "parked",
        }
    }

    fn has_altstack(self) -> bool {
        matches!(self, Kind::Alt | Kind::AutoDisarm | Kind::Parked)
    }

    /// What `sigaltstack` reports inside the handler.
    fn flags_in_handler(self) -> c_int {
        match self {
            Kind::Alt | Kind::Parked => libc::SS_ONSTACK,
            _ => libc::SS_DISABLE,
        }
    }
}

/// What the SIGUSR1 handler records for one thread (found by tid).
struct Slot {
    tid: AtomicI32,
    hits: AtomicU32,
    local: AtomicUsize,
    flags: AtomicI32,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    tid: AtomicI32::new(0),
    hits: AtomicU32::new(0),
    local: AtomicUsize::new(0),
    flags: AtomicI32::new(0),
};
static SLOTS: [Slot; THREADS.len()] = [EMPTY_SLOT; THREADS.len()];
/// Handler runs in a thread that has no slot.
static STRAY: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_usr1(_signo: c_int) {
    let marker = 0u8;
    let local = std::hint::black_box(&marker) as *const u8 as usize;
    // SAFETY: an all-zero stack_t is valid for the kernel to overwrite.
    let mut current: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: a null new stack only queries; sigaltstack is async-signal-safe.
    let queried = unsafe { libc::sigaltstack(std::ptr::null(), &mut current) } == 0;
    // SAFETY: gettid is async-signal-safe and has no preconditions.
    let tid = unsafe { libc::gettid() };
    match SLOTS.iter().find(|s| s.tid.load(Ordering::SeqCst) == tid) {
        Some(slot) => {
            slot.local.store(local, Ordering::SeqCst);
            slot.flags.store(
                if queried { current.ss_flags } else { -1 },
                Ordering::SeqCst,
            );
            slot.hits.fetch_add(1, Ordering::SeqCst);
        }
        None => {
            STRAY.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// What the SIGRTMIN+5 handler of `parked` saw, and when it may return.
static PARKED: AtomicBool = AtomicBool::new(false);
static RELEASE: AtomicBool = AtomicBool::new(false);
static PARKED_LOCAL: AtomicUsize = AtomicUsize::new(0);
static PARKED_SP: AtomicUsize = AtomicUsize::new(0);
static PARKED_SIZE: AtomicUsize = AtomicUsize::new(0);
static PARKED_FLAGS: AtomicI32 = AtomicI32::new(0);

fn park_signal() -> c_int {
    sigrt(5)
}

/// Stays on the alternate stack until the check releases it.
extern "C" fn on_park(_signo: c_int) {
    let marker = 0u8;
    PARKED_LOCAL.store(
        std::hint::black_box(&marker) as *const u8 as usize,
        Ordering::SeqCst,
    );
    // SAFETY: an all-zero stack_t is valid for the kernel to overwrite.
    let mut current: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: a null new stack only queries; sigaltstack is async-signal-safe.
    if unsafe { libc::sigaltstack(std::ptr::null(), &mut current) } == 0 {
        PARKED_SP.store(current.ss_sp as usize, Ordering::SeqCst);
        PARKED_SIZE.store(current.ss_size, Ordering::SeqCst);
        PARKED_FLAGS.store(current.ss_flags, Ordering::SeqCst);
    }
    PARKED.store(true, Ordering::SeqCst);
    let pause = libc::timespec {
        tv_sec: 0,
        tv_nsec: 1_000_000,
    };
    while !RELEASE.load(Ordering::SeqCst) {
        // SAFETY: nanosleep is async-signal-safe; `pause` is valid, the rest not asked.
        unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
    }
}

/// A thread's alternate stack as `sigaltstack` reports it: (sp, size, flags).
type Altstack = (usize, usize, c_int);

fn query_altstack() -> std::io::Result<Altstack> {
    // SAFETY: an all-zero stack_t is valid for the kernel to overwrite.
    let mut current: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: a null new stack only queries.
    cvt(unsafe { libc::sigaltstack(std::ptr::null(), &mut current) })?;
    Ok((current.ss_sp as usize, current.ss_size, current.ss_flags))
}

/// Gives the calling thread the alternate stack of `kind`; returns what it must report.
fn set_altstack(kind: Kind, memory: Option<(usize, usize)>) -> Result<Altstack, String> {
    let (sp, size, flags) = match (kind.has_altstack(), memory) {
        (true, Some((addr, len))) => {
            let flags = if kind == Kind::AutoDisarm {
                SS_AUTODISARM
            } else {
                0
            };
            (addr, len, flags)
        }
        (true, None) => return Err(format!("{}: no memory for the altstack", kind.name())),
        (false, _) => (0, 0, libc::SS_DISABLE),
    };
    let stack = libc::stack_t {
        ss_sp: sp as *mut libc::c_void,
        ss_flags: flags,
        ss_size: size,
    };
    // SAFETY: `stack` is either SS_DISABLE or describes a mapping that lives until the
    // program exits (the mappings are kept in `main`).
    cvt(unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) })
        .map_err(|e| format!("{}: sigaltstack: {e}", kind.name()))?;
    Ok((sp, size, flags))
}

/// Raises SIGUSR1 at the calling thread and checks where and how it was handled.
#[inline(never)]
fn probe(kind: Kind, slot: &Slot, expected: Altstack, all: &[(usize, usize)]) -> Report {
    let mut report = Report::new();
    if let Some(now) = report.ok_or_fail(query_altstack(), "sigaltstack before the signal") {
        report.check_eq("sigaltstack (sp, size, flags)", now, expected);
    }
    let frame = 0u8;
    let frame = std::hint::black_box(&frame) as *const u8 as usize;
    let before = slot.hits.load(Ordering::SeqCst);
    // SAFETY: tgkill(2) on our own thread; the handler is installed and SIGUSR1 unblocked,
    // so it runs before the call returns.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), gettid(), libc::SIGUSR1) };
    if rc != 0 {
        report.fail(format!("tgkill: {}", std::io::Error::last_os_error()));
        return report;
    }
    report.check_eq(
        "SIGUSR1 deliveries",
        slot.hits.load(Ordering::SeqCst),
        before + 1,
    );
    let local = slot.local.load(Ordering::SeqCst);
    let (sp, size, _) = expected;
    if kind.has_altstack() {
        report.check(sp <= local && local < sp + size, || {
            format!("handler ran at {local:#x}, outside its altstack {sp:#x}+{size:#x}")
        });
    } else {
        report.check(local < frame && frame - local < FRAME_REACH, || {
            format!("handler ran at {local:#x}, not on the stack of its frame at {frame:#x}")
        });
        for &(start, len) in all {
            report.check(!(start <= local && local < start + len), || {
                format!("handler ran at {local:#x}, on an altstack {start:#x}+{len:#x}")
            });
        }
    }
    report.check_eq(
        "sigaltstack flags in the handler",
        slot.flags.load(Ordering::SeqCst),
        kind.flags_in_handler(),
    );
    if let Some(now) = report.ok_or_fail(query_altstack(), "sigaltstack after the signal") {
        report.check_eq("sigaltstack after the handler", now, expected);
    }
    report
}

/// What the threads share.
struct Shared {
    check: AtomicBool,
    /// (start, length) of every alternate stack of the program.
    altstacks: Vec<(usize, usize)>,
}

/// One thread's part: set up, probe once, report, wait for the check, probe again.
fn run_thread(
    index: usize,
    memory: Option<(usize, usize)>,
    shared: &Shared,
    started: &mpsc::Sender<Result<(usize, i32, Altstack), String>>,
) -> Option<Report> {
    let kind = THREADS[index];
    let slot = &SLOTS[index];
    slot.tid.store(gettid(), Ordering::SeqCst);
    let expected = match set_altstack(kind, memory) {
        Ok(expected) => expected,
        Err(e) => {
            let _ = started.send(Err(e));
            return None;
        }
    };
    let first = probe(kind, slot, expected, &shared.altstacks);
    if !first.passed() {
        let _ = started.send(Err(format!(
            "{} at setup: {}",
            kind.name(),
            first.summary()
        )));
        return None;
    }
    let reported = query_altstack().map_err(|e| e.to_string());
    let _ = started.send(reported.map(|now| (index, gettid(), now)));
    if kind == Kind::Main {
        return Some(Report::new());
    }
    let mut report = Report::new();
    if kind == Kind::Parked {
        // SAFETY: tgkill(2) on our own thread; the handler returns once released.
        let rc =
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), gettid(), park_signal()) };
        report.check(rc == 0, || {
            format!("tgkill (park): {}", std::io::Error::last_os_error())
        });
        let (sp, size, _) = expected;
        let local = PARKED_LOCAL.load(Ordering::SeqCst);
        report.check(sp <= local && local < sp + size, || {
            format!("parked handler ran at {local:#x}, outside its altstack {sp:#x}+{size:#x}")
        });
    }
    while !shared.check.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    report.absorb("probe", probe(kind, slot, expected, &shared.altstacks));
    Some(report)
}

fn main() {
    let mut program = Program::start("tp-altstack", &[]);
    program.must(
        install_handler(libc::SIGUSR1, on_usr1, libc::SA_ONSTACK, &[]),
        "install the SIGUSR1 handler",
    );
    program.must(
        install_handler(park_signal(), on_park, libc::SA_ONSTACK, &[]),
        "install the SIGRTMIN+5 handler",
    );
    let memory: Vec<Option<Mapping>> = THREADS
        .iter()
        .map(|k| {
            k.has_altstack()
                .then(|| program.must(Mapping::anonymous(ALTSTACK_BYTES, false), "mmap"))
        })
        .collect();
    // Kept until the program exits: the threads' alternate stacks.
    let ranges: Vec<Option<(usize, usize)>> = memory
        .iter()
        .map(|m| m.as_ref().map(|m| (m.addr() as usize, m.len())))
        .collect();
    let shared = Arc::new(Shared {
        check: AtomicBool::new(false),
        altstacks: ranges.iter().flatten().copied().collect(),
    });

    let (started_tx, started_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    for index in 1..THREADS.len() {
        let (shared, memory) = (Arc::clone(&shared), ranges[index]);
        let (started, done) = (started_tx.clone(), done_tx.clone());
        let spawned = std::thread::Builder::new()
            .name(THREADS[index].name().to_owned())
            .spawn(move || {
                if let Some(report) = run_thread(index, memory, &shared, &started) {
                    let _ = done.send((index, report));
                }
            });
        program.must(spawned, "spawn a thread");
    }
    run_thread(0, None, &shared, &started_tx);
    let mut listing = vec![String::new(); THREADS.len()];
    for _ in 0..THREADS.len() {
        match started_rx.recv_timeout(WAIT) {
            Ok(Ok((index, tid, (sp, size, flags)))) => {
                listing[index] = format!(
                    "{} {tid} {sp:x} {size:x} {:x}\n",
                    THREADS[index].name(),
                    flags as u32
                );
            }
            Ok(Err(e)) => program.setup_failed(e),
            Err(_) => program.setup_failed("a thread did not start within 10 s"),
        }
    }
    // `parked` is in its handler, on its alternate stack: what a dump finds there.
    if !wait_until(WAIT, || PARKED.load(Ordering::SeqCst)) {
        program.setup_failed("the parked thread did not enter its handler within 10 s");
    }
    let parked_tid = SLOTS[PARKED_INDEX].tid.load(Ordering::SeqCst);
    listing[PARKED_INDEX] = format!(
        "parked {parked_tid} {:x} {:x} {:x}\n",
        PARKED_SP.load(Ordering::SeqCst),
        PARKED_SIZE.load(Ordering::SeqCst),
        PARKED_FLAGS.load(Ordering::SeqCst) as u32
    );
    program.must(
        write_atomic(&program.companion(".altstack"), listing.concat().as_bytes()),
        "write PATH.altstack",
    );
    program.ready();
    program.work_until_check(Duration::from_millis(10), || {});

    let mut report = Report::new();
    RELEASE.store(true, Ordering::SeqCst);
    shared.check.store(true, Ordering::SeqCst);
    let (main_expected, main_slot) = ((0, 0, libc::SS_DISABLE), &SLOTS[0]);
    report.absorb(
        "main",
        probe(Kind::Main, main_slot, main_expected, &shared.altstacks),
    );
    for _ in 1..THREADS.len() {
        match done_rx.recv_timeout(WAIT) {
            Ok((index, r)) => report.absorb(THREADS[index].name(), r),
            Err(_) => {
                report.fail("a thread did not report within 10 s");
                break;
            }
        }
    }
    report.check_eq(
        "handler runs in unknown threads",
        STRAY.load(Ordering::SeqCst),
        0,
    );
    drop(memory);
    program.finish(&report);
}
