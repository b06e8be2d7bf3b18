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
//!
//! With `--leader live` the leader L lives on instead (zdtm's
//! child_subreaper_and_reparent): L makes its own session and forks H, H forks C and
//! exits, L reaps H, and C, orphaned, becomes M's child in L's session and group. The
//! check then proves L is still running, and C as above.
//!
//! With `--leader gone` the leader is gone for good, as with a daemon that forks twice
//! (zdtm's session00): L makes its own session, forks C and exits, and M reaps it. C,
//! M's child now, is in the session and group of a process that no longer exists. The
//! check proves L's pid names no process, and C as above.

use std::time::Duration;

use criu_testprogs::{cvt, Program, Report};

const ZOMBIE_STATUS: i32 = 7;

fn main() {
    let mut program = Program::start(
        "tp-zombielead",
        &[(
            "--leader zombie|live|gone",
            "whether the session leader exits, and is reaped (default zombie)",
        )],
    );
    let leader = match program.opt_or("--leader", "zombie".to_owned()).as_str() {
        "live" => Leader::Live,
        "gone" => Leader::Gone,
        _ => Leader::Zombie,
    };
    let (leader_pid, member) =
        program.must(set_up(leader), "make the session leader and its member");
    program.ready();
    program.work_until_check(Duration::from_millis(100), || {});
    let report = check(leader_pid, member, leader);
    // SAFETY: kill(2) and waitpid(2) on our own children.
    unsafe {
        libc::kill(member, libc::SIGKILL);
        libc::waitpid(member, std::ptr::null_mut(), 0);
        if leader != Leader::Gone {
            libc::kill(leader_pid, libc::SIGKILL);
            libc::waitpid(leader_pid, std::ptr::null_mut(), 0);
        }
    }
    program.finish(&report);
}

/// What becomes of the session leader.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leader {
    /// It exits and stays our zombie.
    Zombie,
    /// It lives on.
    Live,
    /// It exits and we reap it.
    Gone,
}

/// Returns the leader's pid and its member's.
fn set_up(leader_fate: Leader) -> std::io::Result<(i32, i32)> {
    let live = leader_fate == Leader::Live;
    let mut ends = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    cvt(unsafe { libc::pipe(ends.as_mut_ptr()) })?;
    // SAFETY: fork in a single-threaded program; the child only makes raw calls.
    let leader = cvt(unsafe { libc::fork() })?;
    if leader == 0 {
        // SAFETY: raw calls in the child, which never returns.
        unsafe {
            libc::setsid();
            // The live leader's helper, or the zombie-to-be itself, forks the member.
            let helper = if live { libc::fork() } else { 0 };
            if helper == 0 {
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
            libc::waitpid(helper, std::ptr::null_mut(), 0);
            loop {
                libc::pause();
            }
        }
    }
    let mut bytes = [0u8; 4];
    // SAFETY: reads at most 4 bytes into the array.
    let n = unsafe { libc::read(ends[0], bytes.as_mut_ptr().cast(), bytes.len()) };
    if n != 4 {
        return Err(std::io::Error::other("the leader did not say its member"));
    }
    // SAFETY: closing our pipe ends.
    unsafe {
        libc::close(ends[0]);
        libc::close(ends[1]);
    }
    let member = i32::from_ne_bytes(bytes);
    if leader_fate == Leader::Gone {
        // SAFETY: waitpid on our child, which exits right after writing.
        cvt(unsafe { libc::waitpid(leader, std::ptr::null_mut(), 0) })?;
    }
    // Until the member is ours (its forker is gone) and a zombie leader is one (WNOWAIT:
    // it stays one). Bounded: both happen at once.
    for _ in 0..1000 {
        let leader_done = match leader_fate {
            Leader::Live | Leader::Gone => true,
            Leader::Zombie => exited_with(leader).is_some(),
        };
        if is_running_child(member) && leader_done {
            return Ok((leader, member));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(std::io::Error::other(
        "the member did not become our child, or the leader did not exit",
    ))
}

/// Whether `pid` is a child of ours that has not exited.
fn is_running_child(pid: i32) -> bool {
    // SAFETY: zeroed siginfo_t is a valid out value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes into `info`.
    let ret = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    };
    // SAFETY: si_pid is zero when no child changed state.
    ret == 0 && unsafe { info.si_pid() } == 0
}

/// The exit status of `pid`, a child of ours that exited and is left unreaped.
fn exited_with(pid: i32) -> Option<i32> {
    // SAFETY: zeroed siginfo_t is a valid out value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes into `info`.
    let ret = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    };
    // SAFETY: filled by waitid for an exited child.
    let (who, status) = unsafe { (info.si_pid(), info.si_status()) };
    (ret == 0 && who == pid).then_some(status)
}

fn check(leader: i32, member: i32, fate: Leader) -> Report {
    let mut report = Report::new();
    match fate {
        Leader::Live => report.check(is_running_child(leader), || {
            "the leader is not our running child".into()
        }),
        Leader::Zombie => {
            report.check_eq("zombie's status", exited_with(leader), Some(ZOMBIE_STATUS))
        }
        Leader::Gone => {
            // SAFETY: kill with signal 0 only checks that the pid names a process.
            let found = unsafe { libc::kill(leader, 0) } == 0;
            report.check(!found, || {
                format!("the gone leader's pid {leader} names a process")
            })
        }
    }
    // SAFETY: getsid/getpgid take a pid.
    let sid = cvt(unsafe { libc::getsid(member) });
    if let Some(sid) = report.ok_or_fail(sid, "getsid of the member") {
        report.check_eq("member's session", sid, leader);
    }
    // SAFETY: as above.
    let pgid = cvt(unsafe { libc::getpgid(member) });
    if let Some(pgid) = report.ok_or_fail(pgid, "getpgid of the member") {
        report.check_eq("member's group", pgid, leader);
    }
    report.check(is_running_child(member), || {
        "the member is not our running child".into()
    });
    report
}
