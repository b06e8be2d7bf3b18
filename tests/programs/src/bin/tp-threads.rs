//! tp-threads: K threads, each counting every ~1 ms with its own signal mask, thread-local
//! value and stack buffer; the check proves each thread survived with all three intact and
//! still runs.
//!
//! State:
//! - `--threads K` (default 4) worker threads. Worker `i` blocks exactly the real-time
//!   signals SIGRTMIN+4+j for each bit j of i+1 (16 bits: distinct masks for K < 65536),
//!   holds `tls(i)` in a `thread_local!` and a 4 KiB stack buffer with its own pattern, and
//!   bumps its counter (shared atomic and a private copy on its stack) every ~1 ms.
//! - The main thread blocks SIGWINCH and SIGRTMIN+3 and holds its own TLS value.
//!
//! `PATH.threads` lists `INDEX TID SIGBLK` (mask in hex as /proc prints it) for a harness.
//!
//! Check: main thread's mask and TLS; /proc/self/task has K+1 entries; every counter is at
//! least what it was at `ready` and grows again within 2 s; then each worker checks its own
//! SigBlk in /proc/self/task/TID/status and pthread_sigmask, its TLS value, its stack
//! buffer and that its private count equals the shared counter.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use criu_testprogs::{
    check_pattern, fill_pattern, gettid, proc_status_hex, random_seed, set_thread_sigmask,
    signal_bits, sigrt, sigset_bits, thread_sigmask, wait_until, write_atomic, Program, Report,
};

thread_local! {
    /// The value each thread stores in its TLS at start and expects at the check.
    static TLS_VALUE: Cell<u64> = const { Cell::new(0) };
}

const STACK_WORDS: usize = 512;
/// How long workers and the check wait for each other.
const WAIT: Duration = Duration::from_secs(10);

/// What all threads share.
struct Shared {
    seed: u64,
    counters: Vec<AtomicU64>,
    /// Set by the main thread: workers check themselves and end.
    check: AtomicBool,
}

impl Shared {
    fn tls_value(&self, index: usize) -> u64 {
        self.seed ^ (index as u64 + 1).wrapping_mul(0x7115_0000_0000_0001)
    }

    fn stack_seed(&self, index: usize) -> u64 {
        (self.seed.rotate_left(23) ^ (index as u64).wrapping_mul(0x5ACC_0000_0000_0003)) | 1
    }
}

/// The signals worker `index` blocks.
fn worker_mask(index: usize) -> Vec<i32> {
    let bits = index + 1;
    (0..16)
        .filter(|j| bits & (1 << j) != 0)
        .map(|j| sigrt(4 + j))
        .collect()
}

fn main_mask() -> Vec<i32> {
    vec![libc::SIGWINCH, sigrt(3)]
}

/// Reported by a worker once its state is set up.
struct Started {
    index: usize,
    tid: libc::pid_t,
}

fn worker(index: usize, shared: Arc<Shared>, started: mpsc::Sender<Started>) -> Report {
    let mask = worker_mask(index);
    let mut report = Report::new();
    if let Err(e) = set_thread_sigmask(libc::SIG_SETMASK, &mask) {
        report.fail(format!("pthread_sigmask at start: {e}"));
    }
    TLS_VALUE.with(|v| v.set(shared.tls_value(index)));
    let mut stack_buffer = [0u64; STACK_WORDS];
    fill_pattern(&mut stack_buffer, shared.stack_seed(index), 0);
    let stack_buffer = std::hint::black_box(stack_buffer);
    let mut own_count = 0u64;
    let _ = started.send(Started {
        index,
        tid: gettid(),
    });

    while !shared.check.load(Ordering::SeqCst) {
        own_count += 1;
        shared.counters[index].store(own_count, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1));
    }

    let tid = gettid();
    let expected_bits = signal_bits(&mask);
    let status = format!("/proc/self/task/{tid}/status");
    if let Some(bits) = report.ok_or_fail(proc_status_hex(status.as_ref(), "SigBlk"), "read SigBlk")
    {
        report.check(bits == expected_bits, || {
            format!("SigBlk in {status} is {bits:016x}, expected {expected_bits:016x}")
        });
    }
    if let Some(set) = report.ok_or_fail(thread_sigmask(), "pthread_sigmask query") {
        report.check_eq("pthread_sigmask", sigset_bits(&set), expected_bits);
    }
    report.check_eq(
        "TLS value",
        TLS_VALUE.with(Cell::get),
        shared.tls_value(index),
    );
    if let Some(m) = check_pattern(&stack_buffer, shared.stack_seed(index), 0) {
        report.fail(format!("stack buffer: {m}"));
    }
    report.check_eq(
        "private count vs shared counter",
        own_count,
        shared.counters[index].load(Ordering::SeqCst),
    );
    report
}

fn counters(shared: &Shared) -> Vec<u64> {
    shared
        .counters
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .collect()
}

fn task_count() -> std::io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

fn main() {
    let mut program = Program::start(
        "tp-threads",
        &[("--threads K", "worker threads (default 4)")],
    );
    let threads: usize = program.opt_or("--threads", 4);

    let main_tls = random_seed();
    TLS_VALUE.with(|v| v.set(main_tls));
    program.must(
        set_thread_sigmask(libc::SIG_SETMASK, &main_mask()),
        "main thread mask",
    );

    let shared = Arc::new(Shared {
        seed: random_seed(),
        counters: (0..threads).map(|_| AtomicU64::new(0)).collect(),
        check: AtomicBool::new(false),
    });
    let (started_tx, started_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    for index in 0..threads {
        let shared = Arc::clone(&shared);
        let started = started_tx.clone();
        let done = done_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || {
                let report = worker(index, shared, started);
                let _ = done.send((index, report));
            });
        program.must(spawned, "spawn a worker");
    }
    let mut tids = vec![0; threads];
    for _ in 0..threads {
        match started_rx.recv_timeout(WAIT) {
            Ok(Started { index, tid }) => tids[index] = tid,
            Err(_) => program.setup_failed("a worker did not start within 10 s"),
        }
    }
    if !wait_until(WAIT, || counters(&shared).iter().all(|&c| c > 0)) {
        program.setup_failed("a worker did not count within 10 s");
    }
    let listing: String = tids
        .iter()
        .enumerate()
        .map(|(i, tid)| format!("{i} {tid} {:016x}\n", signal_bits(&worker_mask(i))))
        .collect();
    program.must(
        write_atomic(&program.companion(".threads"), listing.as_bytes()),
        "write PATH.threads",
    );

    let at_ready = counters(&shared);
    program.ready();
    program.work_until_check(Duration::from_millis(5), || {});

    let mut report = Report::new();
    if let Some(set) = report.ok_or_fail(thread_sigmask(), "main pthread_sigmask query") {
        report.check_eq(
            "main thread mask",
            sigset_bits(&set),
            signal_bits(&main_mask()),
        );
    }
    report.check_eq("main thread TLS value", TLS_VALUE.with(Cell::get), main_tls);
    if let Some(count) = report.ok_or_fail(task_count(), "list /proc/self/task") {
        report.check_eq("threads in /proc/self/task", count, threads + 1);
    }
    let at_check = counters(&shared);
    for (i, (&now, &then)) in at_check.iter().zip(&at_ready).enumerate() {
        report.check(now >= then, || {
            format!("worker {i}: counter went back from {then} to {now}")
        });
    }
    let growing = wait_until(Duration::from_secs(2), || {
        counters(&shared)
            .iter()
            .zip(&at_check)
            .all(|(now, then)| now > then)
    });
    if !growing {
        let stuck: Vec<usize> = counters(&shared)
            .iter()
            .zip(&at_check)
            .enumerate()
            .filter(|(_, (now, then))| now <= then)
            .map(|(i, _)| i)
            .collect();
        report.fail(format!("workers {stuck:?} stopped counting"));
    }

    shared.check.store(true, Ordering::SeqCst);
    let mut reported = vec![false; threads];
    for _ in 0..threads {
        match done_rx.recv_timeout(WAIT) {
            Ok((index, worker_report)) => {
                reported[index] = true;
                report.absorb(&format!("worker {index}"), worker_report);
            }
            Err(_) => break,
        }
    }
    let silent: Vec<usize> = (0..threads).filter(|&i| !reported[i]).collect();
    report.check(silent.is_empty(), || {
        format!("workers {silent:?} did not report within 10 s")
    });
    // Exiting does not wait for silent workers.
    program.finish(&report);
}
