//! tp-poll: a thread blocked in poll(2) without a timeout, as `tail -F` waits for its
//! inotify events. poll returns -ERESTART_RESTARTBLOCK when a dump interrupts it; a
//! restore must make it wait on, not return EINTR, which such programs treat as fatal.
//!
//! State: a pipe; a thread with every signal blocked (so no signal of the test protocol
//! can interrupt it) sits in `poll([read end], 1, -1)` and records each return.
//!
//! Check: the poll has not returned before the check; then a byte written into the pipe
//! wakes it with POLLIN exactly once, and it reads that byte.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criu_testprogs::{cvt, set_thread_sigmask, wait_until, Program, Report};

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
    let mut program = Program::start("tp-poll", &[]);
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
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});

    let mut report = Report::new();
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
