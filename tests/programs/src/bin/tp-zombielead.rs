//! tp-zombielead: a session whose leader is a zombie, with a live member that is not the
//! leader's child (zdtm's zombie_leader, for a tree in its own pid namespace):
//!
//! ```text
//! main (M) ── zombie Z (made its own session, forked C, exited with 7: M does not reap it)
//!          └─ C (forked by Z in Z's session and group; M's child since Z exited)
//! ```
//!
//! Run it as the init of a pid namespace (`unshare --pid --fork`): orphans go to the
//! namespace's init, so C becomes M's child when Z exits. The check proves Z is still M's
//! zombie with its status, C is M's child, alive, in Z's session and group. Only
//! namespace-aware calls (waitid, getsid, getpgid) are used, so it needs no procfs of its
//! namespace.

use std::time::Duration;

use criu_testprogs::{cvt, Program, Report};

const ZOMBIE_STATUS: i32 = 7;

fn main() {
    let mut program = Program::start("tp-zombielead", &[]);
    let (zombie, member) = program.must(set_up(), "make the zombie leader and its member");
    program.ready();
    program.work_until_check(Duration::from_millis(100), || {});
    let report = check(zombie, member);
    // SAFETY: kill(2) and waitpid(2) on our own children.
    unsafe {
        libc::kill(member, libc::SIGKILL);
        libc::waitpid(member, std::ptr::null_mut(), 0);
        libc::waitpid(zombie, std::ptr::null_mut(), 0);
    }
    program.finish(&report);
}

/// Returns the zombie's pid and its member's.
fn set_up() -> std::io::Result<(i32, i32)> {
    let mut ends = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    cvt(unsafe { libc::pipe(ends.as_mut_ptr()) })?;
    // SAFETY: fork in a single-threaded program; the child only makes raw calls.
    let zombie = cvt(unsafe { libc::fork() })?;
    if zombie == 0 {
        // SAFETY: raw calls in the child, which exits without returning.
        unsafe {
            libc::setsid();
            let member = libc::fork();
            if member == 0 {
                loop {
                    libc::pause();
                }
            }
            let bytes = member.to_ne_bytes();
            libc::write(ends[1], bytes.as_ptr().cast(), bytes.len());
            libc::_exit(ZOMBIE_STATUS);
        }
    }
    let mut bytes = [0u8; 4];
    // SAFETY: reads at most 4 bytes into the array.
    let n = unsafe { libc::read(ends[0], bytes.as_mut_ptr().cast(), bytes.len()) };
    if n != 4 {
        return Err(std::io::Error::other(
            "the zombie-to-be did not say its member",
        ));
    }
    // SAFETY: closing our pipe ends.
    unsafe {
        libc::close(ends[0]);
        libc::close(ends[1]);
    }
    let member = i32::from_ne_bytes(bytes);
    // Until it is a zombie (WNOWAIT: it stays one).
    // SAFETY: zeroed siginfo_t is a valid out value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes into `info`.
    cvt(unsafe {
        libc::waitid(
            libc::P_PID,
            zombie as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        )
    })?;
    Ok((zombie, member))
}

fn check(zombie: i32, member: i32) -> Report {
    let mut report = Report::new();
    // SAFETY: zeroed siginfo_t is a valid out value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes into `info`.
    let waited = cvt(unsafe {
        libc::waitid(
            libc::P_PID,
            zombie as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    });
    if report.ok_or_fail(waited, "waitid on the zombie").is_some() {
        // SAFETY: filled by waitid for an exited child.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        report.check_eq(
            "zombie (pid, status)",
            (pid, status),
            (zombie, ZOMBIE_STATUS),
        );
    }
    // SAFETY: getsid/getpgid take a pid.
    let sid = cvt(unsafe { libc::getsid(member) });
    if let Some(sid) = report.ok_or_fail(sid, "getsid of the member") {
        report.check_eq("member's session", sid, zombie);
    }
    // SAFETY: as above.
    let pgid = cvt(unsafe { libc::getpgid(member) });
    if let Some(pgid) = report.ok_or_fail(pgid, "getpgid of the member") {
        report.check_eq("member's group", pgid, zombie);
    }
    // Our child and alive: waitid finds it (ECHILD otherwise) with nothing to report.
    // SAFETY: zeroed siginfo_t is a valid out value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes into `info`.
    let waited = cvt(unsafe {
        libc::waitid(
            libc::P_PID,
            member as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    });
    if report
        .ok_or_fail(waited, "waitid on the member (our child)")
        .is_some()
    {
        // SAFETY: zero when no child changed state.
        report.check_eq("member still running", unsafe { info.si_pid() }, 0);
    }
    report
}
