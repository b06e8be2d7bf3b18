//! tp-clock: CLOCK_MONOTONIC and CLOCK_BOOTTIME in a time namespace of the program's
//! own, read every millisecond by the program and by a child, through the vDSO and by
//! system call; the check proves that neither clock went backwards nor jumped (by the
//! time the program spent dumped, say) between two readings, and that vDSO and kernel
//! agree.
//!
//! State: with `--timens yes` (the default; needs CAP_SYS_ADMIN and CAP_SYS_TIME) the
//! program, still single-threaded, unshares a time namespace, gives it offsets of
//! +1,000,000 s (monotonic) and +2,000,000 s (boottime), and enters it; `--timens no`
//! keeps the caller's. It then forks a child (which dies with it) in the same
//! namespace. Both sample the clocks every millisecond: per sample, for each clock, the
//! vDSO, the system call and the vDSO again, which must be in order and within a
//! second of each other; between samples, each of the four series (two clocks, read by
//! vDSO and by system call) must not go back, nor step forward by more than
//! `--max-step-ms` (default 1000). The child posts what it saw in a shared page.
//!
//! Files: `PATH.clock`, written at the check: `WHO SERIES MAX_STEP_NS MIN_STEP_NS
//! SAMPLES` per series (WHO `parent` or `child`), the largest and smallest step between
//! two readings, for the harness to report the jump it measured.
//!
//! Check: the findings above in both processes (the child sampled again after the
//! check began); the parent, its children and its children's children are in one time
//! namespace (`/proc/self/ns/time`, `time_for_children` and the child's); with
//! `--timens yes`, CLOCK_MONOTONIC is still past the namespace's offset.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use criu_testprogs::{cvt, wait_until, write_atomic, Mapping, Program, Report};

/// Offsets of the program's own namespace: far from anything a host shows after boot.
const MONOTONIC_OFFSET_S: i64 = 1_000_000;
const BOOTTIME_OFFSET_S: i64 = 2_000_000;
const SECOND: i64 = 1_000_000_000;

/// The four series a process samples.
const SERIES: [&str; 4] = [
    "CLOCK_MONOTONIC(vDSO)",
    "CLOCK_MONOTONIC(syscall)",
    "CLOCK_BOOTTIME(vDSO)",
    "CLOCK_BOOTTIME(syscall)",
];

/// What one process saw, in the shared page (all zero is a valid start).
#[repr(C)]
struct Seen {
    samples: AtomicU64,
    /// Largest and smallest step between two consecutive readings, per series (ns).
    max_step: [AtomicI64; 4],
    min_step: [AtomicI64; 4],
    /// Samples whose vDSO and system call readings were out of order or far apart.
    disorder: AtomicU64,
    /// The first such sample, as (vDSO, system call, vDSO) of the clock that was off.
    disorder_example: [AtomicI64; 3],
}

#[repr(C)]
struct Board {
    parent: Seen,
    child: Seen,
}

const _: () = assert!(std::mem::size_of::<Board>() <= 4096);

fn ns(t: &libc::timespec) -> i64 {
    t.tv_sec * SECOND + t.tv_nsec
}

/// clock_gettime through libc, that is the vDSO.
fn vdso_clock(clock: libc::clockid_t) -> i64 {
    // SAFETY: an all-zero timespec is valid for the callee to overwrite.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid place for the result; these clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut t) };
    ns(&t)
}

/// clock_gettime as a system call, bypassing the vDSO.
fn syscall_clock(clock: libc::clockid_t) -> i64 {
    // SAFETY: an all-zero timespec is valid for the kernel to overwrite.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime(2) writes one timespec into `t`.
    unsafe { libc::syscall(libc::SYS_clock_gettime, clock, &mut t) };
    ns(&t)
}

/// The sampling state of one process: its last readings, and where it posts.
struct Sampler<'a> {
    seen: &'a Seen,
    last: Option<[i64; 4]>,
}

impl Sampler<'_> {
    fn sample(&mut self) {
        let mut now = [0i64; 4];
        for (i, clock) in [libc::CLOCK_MONOTONIC, libc::CLOCK_BOOTTIME]
            .into_iter()
            .enumerate()
        {
            let read = || (vdso_clock(clock), syscall_clock(clock), vdso_clock(clock));
            // A reading a checkpoint stopped in the middle spans the downtime, which a tree
            // restored without a time namespace of its own sees as a jump: read again (a
            // second stop within a few reads is not a thing a test does).
            let (mut before, mut kernel, mut after) = read();
            for _ in 0..3 {
                if after - before < SECOND {
                    break;
                }
                (before, kernel, after) = read();
            }
            let in_order = before <= kernel && kernel <= after && after - before < SECOND;
            if !in_order && self.seen.disorder.fetch_add(1, Ordering::SeqCst) == 0 {
                for (cell, v) in self
                    .seen
                    .disorder_example
                    .iter()
                    .zip([before, kernel, after])
                {
                    cell.store(v, Ordering::SeqCst);
                }
            }
            now[2 * i] = before;
            now[2 * i + 1] = kernel;
        }
        if let Some(last) = self.last {
            for (i, (&n, &l)) in now.iter().zip(&last).enumerate() {
                let step = n - l;
                self.seen.max_step[i].fetch_max(step, Ordering::SeqCst);
                self.seen.min_step[i].fetch_min(step, Ordering::SeqCst);
            }
        } else {
            for i in 0..4 {
                self.seen.max_step[i].store(i64::MIN, Ordering::SeqCst);
                self.seen.min_step[i].store(i64::MAX, Ordering::SeqCst);
            }
        }
        self.last = Some(now);
        self.seen.samples.fetch_add(1, Ordering::SeqCst);
    }
}

/// A new time namespace with the offsets above, entered by the (single-threaded)
/// caller.
fn own_time_namespace() -> std::io::Result<()> {
    // SAFETY: unshare(2) has no memory arguments.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWTIME) })?;
    std::fs::write(
        "/proc/self/timens_offsets",
        format!("monotonic {MONOTONIC_OFFSET_S} 0\nboottime {BOOTTIME_OFFSET_S} 0\n"),
    )?;
    let ns = std::fs::File::open("/proc/self/ns/time_for_children")?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) on an fd we own; the program has no other thread yet.
    cvt(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWTIME) })?;
    Ok(())
}

fn ns_link(path: &str) -> String {
    std::fs::read_link(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("({path}: {e})"))
}

/// Findings about what `who` saw, against the step limit `max_step`.
fn judge(report: &mut Report, who: &str, seen: &Seen, max_step: i64) {
    let samples = seen.samples.load(Ordering::SeqCst);
    if samples < 2 {
        return report.fail(format!("{who}: only {samples} samples"));
    }
    for (i, name) in SERIES.iter().enumerate() {
        let (max, min) = (
            seen.max_step[i].load(Ordering::SeqCst),
            seen.min_step[i].load(Ordering::SeqCst),
        );
        report.check(min >= 0, || {
            format!(
                "{who} {name}: went back by {} ns between two readings",
                -min
            )
        });
        report.check(max <= max_step, || {
            format!(
                "{who} {name}: jumped {:.3} s between two readings (limit {:.3} s)",
                max as f64 / 1e9,
                max_step as f64 / 1e9
            )
        });
    }
    let disorder = seen.disorder.load(Ordering::SeqCst);
    report.check(disorder == 0, || {
        let e: Vec<i64> = seen
            .disorder_example
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect();
        format!(
            "{who}: {disorder} samples where vDSO and system call disagree, e.g. vDSO {} ns, \
             system call {} ns, vDSO {} ns",
            e[0], e[1], e[2]
        )
    });
}

fn table(who: &str, seen: &Seen) -> String {
    let samples = seen.samples.load(Ordering::SeqCst);
    SERIES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!(
                "{who} {name} {} {} {samples}\n",
                seen.max_step[i].load(Ordering::SeqCst),
                seen.min_step[i].load(Ordering::SeqCst)
            )
        })
        .collect()
}

fn main() {
    let mut program = Program::start(
        "tp-clock",
        &[
            (
                "--timens yes|no",
                "run in a time namespace of its own (default yes)",
            ),
            (
                "--max-step-ms MS",
                "largest step allowed between two readings (default 1000)",
            ),
        ],
    );
    let own_ns = match program.opt_or("--timens", "yes".to_owned()).as_str() {
        "yes" => true,
        "no" => false,
        other => program.setup_failed(format!("--timens {other}: expected yes or no")),
    };
    let max_step = program.opt_or("--max-step-ms", 1000i64) * 1_000_000;
    if own_ns {
        let entered = own_time_namespace();
        program.must(entered, "entering a time namespace of its own");
        let mono = syscall_clock(libc::CLOCK_MONOTONIC);
        if mono < MONOTONIC_OFFSET_S * SECOND {
            program.setup_failed(format!("CLOCK_MONOTONIC reads {mono} ns in the namespace"));
        }
    }
    let page = program.must(Mapping::anonymous(4096, true), "mapping the shared page");
    // SAFETY: a fresh zeroed MAP_SHARED page, big enough (asserted above); every field
    // is an atomic, valid when zero, shared with the child after the fork.
    let board: &Board = unsafe { &*(page.addr() as *const Board) };
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the program is single-threaded, so the child may keep running Rust code.
    let child = unsafe { libc::fork() };
    if child < 0 {
        program.setup_failed(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if child == 0 {
        // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory arguments.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            std::process::exit(3);
        }
        let mut sampler = Sampler {
            seen: &board.child,
            last: None,
        };
        loop {
            sampler.sample();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let kill_child = || {
        // SAFETY: kill(2) and waitpid(2) on our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
    };
    let mut sampler = Sampler {
        seen: &board.parent,
        last: None,
    };
    sampler.sample();
    if !wait_until(Duration::from_secs(10), || {
        board.child.samples.load(Ordering::SeqCst) >= 2
    }) {
        kill_child();
        program.setup_failed("the child does not sample");
    }
    program.ready();
    program.work_until_check(Duration::from_millis(1), || sampler.sample());

    // The first sample after the check signal: after a restore, its step from the last
    // one before the dump is the jump the program sees.
    sampler.sample();
    let mut report = Report::new();
    let child_had = board.child.samples.load(Ordering::SeqCst);
    let child_sampled = wait_until(Duration::from_secs(10), || {
        board.child.samples.load(Ordering::SeqCst) >= child_had + 20
    });
    report.check(child_sampled, || {
        format!("the child stopped sampling (at {child_had} samples)")
    });
    judge(&mut report, "parent", &board.parent, max_step);
    judge(&mut report, "child", &board.child, max_step);
    let mine = ns_link("/proc/self/ns/time");
    report.check_eq(
        "time_for_children",
        ns_link("/proc/self/ns/time_for_children"),
        mine.clone(),
    );
    report.check_eq(
        "the child's time namespace",
        ns_link(&format!("/proc/{child}/ns/time")),
        mine,
    );
    if own_ns {
        let mono = syscall_clock(libc::CLOCK_MONOTONIC);
        report.check(mono >= MONOTONIC_OFFSET_S * SECOND, || {
            format!("CLOCK_MONOTONIC reads {mono} ns, below the namespace's offset")
        });
    }
    let text = table("parent", &board.parent) + &table("child", &board.child);
    if let Err(e) = write_atomic(&program.companion(".clock"), text.as_bytes()) {
        report.fail(format!("writing PATH.clock: {e}"));
    }
    kill_child();
    program.finish(&report);
}
