//! tp-pidfd: pidfds (pidfd_open(2)) of the program itself, of a child, and of processes
//! that are dead.
//!
//! State:
//! - `self`: a pidfd of the program, without `FD_CLOEXEC`;
//! - `child`: a pidfd (`PIDFD_NONBLOCK`) of a child that sleeps until killed, and
//!   `child-dup`, a dup of it (the same open file description);
//! - `dead-a1`, `dead-a2`: two pidfds, each from its own pidfd_open, of one child that
//!   was then killed and reaped;
//! - `dead-b`: a pidfd (`PIDFD_NONBLOCK`) of another child, killed and reaped too;
//! - `zombie` (unless `--zombie no`): a pidfd of a child that exited with status 7 and
//!   is not reaped yet;
//! - `--outside yes`: `outside`, a pidfd of the program's parent (outside its tree): a
//!   state a dump must refuse;
//! - `--thread yes`: `thread`, a `PIDFD_THREAD` pidfd of a thread of the program (which
//!   sleeps): refused too.
//!
//! Files: `PATH.pidfds`, one `NAME FD PID` line per pidfd (PID: the process it named
//! when it was opened).
//!
//! Check: each pidfd is at its number with its flags (`O_NONBLOCK`, `FD_CLOEXEC`);
//! `self` and `child` name their process (fdinfo `Pid:`), pidfd_send_signal(0) through
//! them works and they do not poll readable; `child-dup` is the same open file
//! description as `child` (kcmp); the dead ones show `Pid: -1`, poll readable, fail
//! pidfd_send_signal with ESRCH and waitid with ECHILD; `dead-a1` and `dead-a2` share
//! their inode (one process), which `dead-b`'s is not. `zombie` shows its pid, polls
//! readable, and waitid on it reaps the zombie with its pid and status 7. Last, the
//! child is killed through its pidfd and waitid on that pidfd reaps it, with its pid.

use std::io;
use std::os::raw::c_int;
use std::time::Duration;

use criu_testprogs::{cvt, fd_flags, wait_until, write_atomic, Program, Report};

const PIDFD_NONBLOCK: u32 = libc::O_NONBLOCK as u32;
const P_PIDFD: libc::idtype_t = 3;

fn pidfd_open(pid: libc::pid_t, flags: u32) -> io::Result<c_int> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    cvt(fd as c_int)
}

fn pidfd_send_signal(pidfd: c_int, sig: c_int) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments and no siginfo.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, sig, 0, 0) };
    cvt(ret as c_int).map(drop)
}

/// Whether `pidfd` polls readable now (its process has exited).
fn readable(pidfd: c_int) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd of ours, without waiting.
    let n = cvt(unsafe { libc::poll(&mut pfd, 1, 0) })?;
    Ok(n == 1 && pfd.revents & libc::POLLIN != 0)
}

/// waitid(P_PIDFD, pidfd, WEXITED | `extra`): (si_pid, si_code).
fn waitid_pidfd(pidfd: c_int, extra: c_int) -> io::Result<(libc::pid_t, c_int)> {
    // SAFETY: siginfo_t is plain data; all-zero is valid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes one siginfo_t into `info`, which we own.
    cvt(unsafe {
        libc::waitid(
            P_PIDFD,
            pidfd as libc::id_t,
            &mut info,
            libc::WEXITED | extra,
        )
    })?;
    // SAFETY: after a successful waitid, si_pid is the field it set.
    Ok((unsafe { info.si_pid() }, info.si_code))
}

/// The `Pid:` line of our fdinfo of `fd`.
fn fdinfo_pid(fd: c_int) -> io::Result<i32> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Pid: line"))
}

fn inode(fd: c_int) -> io::Result<u64> {
    // SAFETY: stat is plain data the call fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid place to write.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st.st_ino)
}

/// kcmp(KCMP_FILE) of two of our fds: whether they are one open file description.
fn same_description(a: c_int, b: c_int) -> io::Result<bool> {
    const KCMP_FILE: c_int = 0;
    let me = std::process::id() as libc::pid_t;
    // SAFETY: plain syscall with integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_kcmp, me, me, KCMP_FILE, a, b) };
    Ok(cvt(ret as c_int)? == 0)
}

/// Forks a child that sleeps until it is killed, or its parent dies.
fn sleeper() -> io::Result<libc::pid_t> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: fork; the child only calls async-signal-safe functions.
    let pid = cvt(unsafe { libc::fork() })?;
    if pid == 0 {
        // SAFETY: raw syscalls with integer arguments only.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            loop {
                libc::pause();
            }
        }
    }
    Ok(pid)
}

/// Forks a child that exits at once with status 7.
fn exiting_child() -> io::Result<libc::pid_t> {
    // SAFETY: fork; the child only calls _exit.
    let pid = cvt(unsafe { libc::fork() })?;
    if pid == 0 {
        // SAFETY: _exit(2) has no preconditions.
        unsafe { libc::_exit(7) };
    }
    Ok(pid)
}

/// waitid(P_PIDFD, pidfd, WEXITED | WNOHANG): (si_pid, si_code, si_status).
fn waitid_status(pidfd: c_int) -> io::Result<(libc::pid_t, c_int, c_int)> {
    // SAFETY: siginfo_t is plain data; all-zero is valid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let options = libc::WEXITED | libc::WNOHANG;
    // SAFETY: waitid writes one siginfo_t into `info`, which we own.
    cvt(unsafe { libc::waitid(P_PIDFD, pidfd as libc::id_t, &mut info, options) })?;
    // SAFETY: after a successful waitid, si_pid and si_status are the fields it set.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    Ok((pid, info.si_code, status))
}

/// Kills `pid` (our child) through `pidfd` and reaps it.
fn kill_and_reap(pidfd: c_int, pid: libc::pid_t) -> io::Result<()> {
    pidfd_send_signal(pidfd, libc::SIGKILL)?;
    let mut status = 0;
    // SAFETY: waitpid on our own child into our status word.
    cvt(unsafe { libc::waitpid(pid, &mut status, 0) }).map(drop)
}

/// One pidfd of the program: its name, number, the pid it named, its flags.
struct Held {
    name: &'static str,
    fd: c_int,
    pid: libc::pid_t,
    nonblock: bool,
    cloexec: bool,
}

fn check_flags(report: &mut Report, h: &Held) {
    let Some((fdf, flf)) = report.ok_or_fail(fd_flags(h.fd), h.name) else {
        return;
    };
    report.check_eq(
        &format!("{} FD_CLOEXEC", h.name),
        fdf & libc::FD_CLOEXEC != 0,
        h.cloexec,
    );
    report.check_eq(
        &format!("{} O_NONBLOCK", h.name),
        flf & libc::O_NONBLOCK != 0,
        h.nonblock,
    );
    report.check_eq(
        &format!("{} access mode", h.name),
        flf & libc::O_ACCMODE,
        libc::O_RDWR,
    );
}

fn check_live(report: &mut Report, h: &Held) {
    check_flags(report, h);
    if let Some(pid) = report.ok_or_fail(fdinfo_pid(h.fd), &format!("{} fdinfo", h.name)) {
        report.check_eq(&format!("{} fdinfo Pid", h.name), pid, h.pid);
    }
    report.ok_or_fail(
        pidfd_send_signal(h.fd, 0),
        &format!("{} pidfd_send_signal(0)", h.name),
    );
    let open = readable(h.fd);
    report.check(matches!(open, Ok(false)), || {
        format!("{} polls {open:?} while its process lives", h.name)
    });
}

fn check_dead(report: &mut Report, h: &Held) {
    check_flags(report, h);
    if let Some(pid) = report.ok_or_fail(fdinfo_pid(h.fd), &format!("{} fdinfo", h.name)) {
        report.check_eq(&format!("{} fdinfo Pid", h.name), pid, -1);
    }
    let polled = readable(h.fd);
    report.check(matches!(polled, Ok(true)), || {
        format!("{} polls {polled:?}, not readable", h.name)
    });
    let sent = pidfd_send_signal(h.fd, 0).map_err(|e| e.raw_os_error());
    report.check_eq(
        &format!("{} pidfd_send_signal(0)", h.name),
        sent,
        Err(Some(libc::ESRCH)),
    );
    let waited = waitid_pidfd(h.fd, libc::WNOHANG).map_err(|e| e.raw_os_error());
    report.check_eq(
        &format!("{} waitid", h.name),
        waited,
        Err(Some(libc::ECHILD)),
    );
}

/// A zombie child: its pid, exited, and waitid on its pidfd reaps it with status 7.
fn check_zombie(report: &mut Report, z: &Held) {
    check_flags(report, z);
    if let Some(pid) = report.ok_or_fail(fdinfo_pid(z.fd), "zombie fdinfo") {
        report.check_eq("zombie fdinfo Pid", pid, z.pid);
    }
    let polled = readable(z.fd);
    report.check(matches!(polled, Ok(true)), || {
        format!("zombie polls {polled:?}, not readable")
    });
    let reaped = waitid_status(z.fd);
    report.check_eq(
        "waitid on the zombie's pidfd",
        reaped.map_err(|e| e.raw_os_error()),
        Ok((z.pid, libc::CLD_EXITED, 7)),
    );
}

fn main() {
    let mut program = Program::start(
        "tp-pidfd",
        &[
            (
                "--outside yes|no",
                "also hold a pidfd of the parent (default no)",
            ),
            (
                "--zombie yes|no",
                "hold a pidfd of a zombie child (default yes)",
            ),
            (
                "--thread yes|no",
                "also hold a PIDFD_THREAD pidfd of a thread (default no)",
            ),
        ],
    );
    let outside = program.opt_or("--outside", String::from("no")) == "yes";
    let thread = program.opt_or("--thread", String::from("no")) == "yes";
    let with_zombie = program.opt_or("--zombie", String::from("yes")) == "yes";
    let me = std::process::id() as libc::pid_t;
    let mut held = Vec::new();

    let fd = program.must(pidfd_open(me, 0), "pidfd_open(self)");
    // SAFETY: F_SETFD on our own fd.
    program.must(
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }),
        "clear FD_CLOEXEC",
    );
    held.push(Held {
        name: "self",
        fd,
        pid: me,
        nonblock: false,
        cloexec: false,
    });

    let child = program.must(sleeper(), "fork the child");
    let fd = program.must(pidfd_open(child, PIDFD_NONBLOCK), "pidfd_open(child)");
    // SAFETY: dup(2) of our own fd.
    let dup = program.must(cvt(unsafe { libc::dup(fd) }), "dup the child's pidfd");
    for (name, fd, cloexec) in [("child", fd, true), ("child-dup", dup, false)] {
        held.push(Held {
            name,
            fd,
            pid: child,
            nonblock: true,
            cloexec,
        });
    }

    let a = program.must(sleeper(), "fork dead child a");
    for name in ["dead-a1", "dead-a2"] {
        let fd = program.must(pidfd_open(a, 0), "pidfd_open(dead child a)");
        held.push(Held {
            name,
            fd,
            pid: a,
            nonblock: false,
            cloexec: true,
        });
    }
    program.must(kill_and_reap(held[3].fd, a), "kill dead child a");
    let b = program.must(sleeper(), "fork dead child b");
    let fd = program.must(pidfd_open(b, PIDFD_NONBLOCK), "pidfd_open(dead child b)");
    program.must(kill_and_reap(fd, b), "kill dead child b");
    held.push(Held {
        name: "dead-b",
        fd,
        pid: b,
        nonblock: true,
        cloexec: true,
    });
    if with_zombie {
        let zombie = program.must(exiting_child(), "fork the zombie");
        let fd = program.must(pidfd_open(zombie, 0), "pidfd_open(zombie)");
        held.push(Held {
            name: "zombie",
            fd,
            pid: zombie,
            nonblock: false,
            cloexec: true,
        });
        let exited = wait_until(Duration::from_secs(10), || readable(fd).unwrap_or(false));
        if !exited {
            program.setup_failed("the zombie child did not exit");
        }
    }
    if thread {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(criu_testprogs::gettid());
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let tid = program.must(rx.recv(), "learn the thread's id");
        let fd = program.must(
            pidfd_open(tid, libc::O_EXCL as u32),
            "pidfd_open(thread, PIDFD_THREAD)",
        );
        held.push(Held {
            name: "thread",
            fd,
            pid: tid,
            nonblock: false,
            cloexec: true,
        });
    }
    if outside {
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        let fd = program.must(pidfd_open(parent, 0), "pidfd_open(parent)");
        held.push(Held {
            name: "outside",
            fd,
            pid: parent,
            nonblock: false,
            cloexec: true,
        });
    }
    let listing: String = held
        .iter()
        .map(|h| format!("{} {} {}\n", h.name, h.fd, h.pid))
        .collect();
    let written = write_atomic(&program.companion(".pidfds"), listing.as_bytes());
    program.must(written, "write PATH.pidfds");
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});

    let mut report = Report::new();
    let by_name = |name: &str| held.iter().find(|h| h.name == name).expect("held");
    for name in ["self", "child", "child-dup"] {
        check_live(&mut report, by_name(name));
    }
    let (c, cdup) = (by_name("child").fd, by_name("child-dup").fd);
    let shared = same_description(c, cdup);
    report.check(matches!(shared, Ok(true)), || {
        format!("child and child-dup are one open file description: {shared:?}")
    });
    for name in ["dead-a1", "dead-a2", "dead-b"] {
        check_dead(&mut report, by_name(name));
    }
    let ino = |name: &str| inode(by_name(name).fd).ok();
    report.check(
        ino("dead-a1").is_some() && ino("dead-a1") == ino("dead-a2"),
        || {
            format!(
                "dead-a1 and dead-a2 name one process: inodes {:?} and {:?}",
                ino("dead-a1"),
                ino("dead-a2")
            )
        },
    );
    report.check(ino("dead-a1") != ino("dead-b"), || {
        format!(
            "dead-a1 and dead-b name two processes: inodes {:?}",
            ino("dead-b")
        )
    });
    if let Some(z) = held.iter().find(|h| h.name == "zombie") {
        check_zombie(&mut report, z);
    }
    // The child goes through its pidfd, and waitid on that pidfd reaps our child.
    report.ok_or_fail(
        pidfd_send_signal(c, libc::SIGKILL),
        "kill the child by pidfd",
    );
    let exited = wait_until(Duration::from_secs(10), || readable(c).unwrap_or(false));
    report.check(exited, || "the child's pidfd did not poll readable".into());
    let reaped = waitid_pidfd(c, 0);
    report.check(
        matches!(reaped, Ok((pid, libc::CLD_KILLED)) if pid == child),
        || format!("waitid on the child's pidfd: {reaped:?}, child {child}"),
    );
    program.finish(&report);
}
