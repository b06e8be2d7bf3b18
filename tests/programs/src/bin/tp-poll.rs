//! tp-poll: a thread blocked in poll(2) without a timeout, as `tail -F` waits for its
//! inotify events. poll returns -ERESTART_RESTARTBLOCK when a dump interrupts it; a
//! restore must make it wait on, not return EINTR, which such programs treat as fatal.
//!
//! State: a pipe; a thread with every signal blocked (so no signal of the test protocol
//! can interrupt it) sits in `poll([read end], 1, -1)` and records each return.
//!
//! Check: the poll has not returned before the check; then a byte written into the pipe
//! wakes it with POLLIN exactly once, and it reads that byte.
//!
//! `--main-waits epoll`: the main thread waits for the check signal inside
//! `epoll_wait(-1)` on an empty epoll instance, as an event loop waits for its signals
//! (haproxy's master), instead of sleeping in slices. The signal interrupts that wait
//! (EINTR, whatever SA_RESTART says); a signal that arrives while the tree is restored
//! must do the same once it runs, or the program waits for ever.
//!
//! `--main-waits sigsuspend`: the main thread keeps the check signal blocked and waits
//! for it in `sigsuspend(empty set)`, the classic race-free wait for a signal; the
//! kernel returns -ERESTARTNOHAND there when a dump interrupts it. Checked as well: the
//! mask after the wait is the one before it (the signal blocked), not sigsuspend's
//! temporary one.
//!
//! `--main-waits pause` and `--main-waits poll`: the main thread waits for the check
//! signal in `pause()` (-ERESTARTNOHAND to a freeze) or in `poll(no fds, -1)` (which a
//! restore makes again from its start), the signal unblocked, as programs that wait for
//! their signals without an event loop do.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criu_testprogs::{
    check_requested, cvt, set_thread_sigmask, sigset, thread_sigmask, wait_until, Program, Report,
    CHECK_SIGNAL,
};

/// What the poller saw.
#[derive(Default)]
struct Seen {
    /// Returns of poll (each one, whatever it returned).
    returns: AtomicU32,
    /// The errno of the first failed poll (0: none).
    first_errno: AtomicI32,
    /// The byte read after POLLIN (-1: none yet).
    byte: AtomicI32,
}

const BYTE: u8 = 0x5a;

fn poller(read_end: c_int, seen: &Seen) {
    let all: Vec<c_int> = (1..=64)
        .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
        .collect();
    let _ = set_thread_sigmask(libc::SIG_SETMASK, &all);
    loop {
        let mut pfd = libc::pollfd {
            fd: read_end,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one pollfd of ours.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        seen.returns.fetch_add(1, Ordering::SeqCst);
        if n < 0 {
            let _ = seen
                .first_errno
                .compare_exchange(0, errno, Ordering::SeqCst, Ordering::SeqCst);
            continue;
        }
        if pfd.revents & libc::POLLIN != 0 {
            let mut b = [0u8; 1];
            // SAFETY: read one byte into our buffer.
            let got = unsafe { libc::read(read_end, b.as_mut_ptr().cast(), 1) };
            seen.byte.store(
                if got == 1 { i32::from(b[0]) } else { -2 },
                Ordering::SeqCst,
            );
            return;
        }
    }
}

fn main() {
    let mut program = Program::start(
        "tp-poll",
        &[(
            "--main-waits sleep|epoll|sigsuspend|pause|poll",
            "how the main thread waits for the check signal (default sleep)",
        )],
    );
    let main_waits: String = program.opt_or("--main-waits", "sleep".to_owned());
    if !["sleep", "epoll", "sigsuspend", "pause", "poll"].contains(&main_waits.as_str()) {
        program.setup_failed(format!("unknown --main-waits `{main_waits}`"));
    }
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe(2) into our two-int array.
    program.must(cvt(unsafe { libc::pipe(fds.as_mut_ptr()) }), "pipe");
    let seen = Arc::new(Seen {
        byte: AtomicI32::new(-1),
        ..Default::default()
    });
    let theirs = Arc::clone(&seen);
    let read_end = fds[0];
    let thread = std::thread::spawn(move || poller(read_end, &theirs));
    // Ready once the thread is asleep in poll.
    let asleep = wait_until(Duration::from_secs(10), poller_in_poll);
    if !asleep {
        program.setup_failed("the poller did not block in poll");
    }
    let mut report = Report::new();
    match main_waits.as_str() {
        "epoll" => {
            // SAFETY: epoll_create1(2) makes a new fd of ours.
            let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            let epoll = program.must(cvt(epoll), "epoll_create1");
            program.ready();
            wait_in_epoll_for_check(epoll);
        }
        "sigsuspend" => {
            let blocked = set_thread_sigmask(libc::SIG_BLOCK, &[CHECK_SIGNAL]);
            program.must(blocked, "blocking the check signal");
            program.ready();
            wait_in_sigsuspend_for_check();
            let mask = thread_sigmask().map(|m| {
                // SAFETY: `m` is an initialised sigset_t.
                unsafe { libc::sigismember(&m, CHECK_SIGNAL) }
            });
            report.check(matches!(mask, Ok(1)), || {
                format!("the check signal is not blocked after sigsuspend returned: {mask:?}")
            });
        }
        "pause" => {
            program.ready();
            while !check_requested() {
                // SAFETY: pause(2) takes nothing.
                unsafe { libc::pause() };
            }
        }
        "poll" => {
            program.ready();
            while !check_requested() {
                // SAFETY: poll(2) on no fds: only a signal ends it.
                unsafe { libc::poll(std::ptr::null_mut(), 0, -1) };
            }
        }
        _ => {
            program.ready();
            program.work_until_check(Duration::from_millis(20), || {});
        }
    }

    report.check_eq(
        "poll returns before the check (EINTR from the restore?)",
        seen.returns.load(Ordering::SeqCst),
        0,
    );
    report.check_eq(
        "errno of a failed poll",
        seen.first_errno.load(Ordering::SeqCst),
        0,
    );
    // SAFETY: write one byte from our constant.
    let wrote = unsafe { libc::write(fds[1], [BYTE].as_ptr().cast(), 1) };
    report.check_eq("bytes written into the pipe", wrote, 1);
    let woke = wait_until(Duration::from_secs(10), || {
        seen.byte.load(Ordering::SeqCst) != -1
    });
    report.check(woke, || "the poller did not wake up".into());
    if woke {
        let _ = thread.join();
        report.check_eq(
            "the byte the poller read",
            seen.byte.load(Ordering::SeqCst),
            i32::from(BYTE),
        );
        report.check_eq(
            "poll returns in all",
            seen.returns.load(Ordering::SeqCst),
            1,
        );
    }
    program.finish(&report);
}

/// Waits for the check signal in `epoll_wait(epoll, .., -1)`: only the signal's
/// interruption ends a wait (the instance watches nothing).
fn wait_in_epoll_for_check(epoll: c_int) {
    while !check_requested() {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: epoll_wait(2) writes at most one event into `event`.
        unsafe { libc::epoll_wait(epoll, &mut event, 1, -1) };
    }
}

/// Waits for the check signal (blocked outside the wait) in `sigsuspend(empty set)`.
fn wait_in_sigsuspend_for_check() {
    let none = sigset(&[]);
    while !check_requested() {
        // SAFETY: sigsuspend(2) with an initialised empty set.
        unsafe { libc::sigsuspend(&none) };
    }
}

/// Whether a thread other than this one is in poll(2) (syscall 7 in /proc/.../syscall).
fn poller_in_poll() -> bool {
    let me = std::process::id();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    tasks.flatten().any(|t| {
        t.file_name().to_str() != Some(&me.to_string())
            && std::fs::read_to_string(t.path().join("syscall"))
                .is_ok_and(|s| s.split(' ').next() == Some(&libc::SYS_poll.to_string()))
    })
}
