//! tp-userns: the program in a user namespace of its own with a non-identity map, as a
//! rootless container's init is, with a child whose credentials are not root's there.
//! The check proves the maps, both processes' ids, groups and capabilities, and that the
//! program is still privileged over its own namespaces (it renames its UTS namespace's
//! host).
//!
//! State (needs root): the program (still single-threaded) gives the ready file's
//! directory to the namespace's root-to-be (host uid and gid BASE, from `--base`,
//! default 100000: the only user that can write there from inside), then clones the
//! tree's root into a new user namespace and a new pid namespace (its pid 1), writes
//! the maps `0 BASE 65536` (uids and gids) to its `/proc/PID/{uid,gid}_map` from out
//! here, and waits for it: the program's exit status is the root's (9 when it was
//! killed). The tree is the root's: a harness dumps the program's only child. The root
//! leads a session of its own, becomes uid and gid 0 in the namespace, unshares UTS and IPC namespaces (owned by
//! it), names its host `tp-userns`, then forks a child (dying with it) that takes
//! groups 1000 and 2000, gids 1000 (real, effective, saved) and uids 1000, 1000, 1001
//! (real, effective, saved): an unprivileged user in the namespace, with no
//! capabilities, and makes itself dumpable again (so that the root may read its
//! namespace links). The root writes the ready file (`ready 1`, its pid in its namespace)
//! and, like the child, idles.
//!
//! Check (in the root, which SIGUSR2 goes to): `/proc/self/uid_map` and `gid_map`
//! still read `0 BASE 65536`; the root is pid 1, its ids are 0 and its effective
//! capabilities what they were; its hostname is `tp-userns` and sethostname works in
//! its UTS namespace; the child is alive in the same user, UTS and IPC namespaces, with
//! the ids, groups and (no) capabilities above, as `/proc/CHILD/status` shows them
//! from inside the namespace.

use std::time::Duration;

use criu_testprogs::{cvt, Program, Report};

const HOSTNAME: &str = "tp-userns";
const CHILD_UIDS: [u32; 3] = [1000, 1000, 1001];
const CHILD_GIDS: [u32; 3] = [1000, 1000, 1000];
const CHILD_GROUPS: [u32; 2] = [1000, 2000];
const MAP_SIZE: u32 = 65536;

/// A pipe: (read end, write end).
fn pipe() -> std::io::Result<(std::fs::File, std::fs::File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) writes two fds into the array.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    use std::os::fd::FromRawFd;
    // SAFETY: both fds are new and ours alone.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

/// Clones the tree's root into a new user namespace and a new pid namespace (its pid 1
/// there) and gives the namespace its maps from out here, where we have the privileges
/// to; the root waits for them on a pipe. Returns the root's pid (ours for it) in the
/// caller, and never returns in the root, which runs `root_main`. The caller must be
/// single-threaded.
fn clone_root(program: &mut Program, base: u32) -> Result<libc::pid_t, String> {
    use std::io::{Read, Write};
    let (go_r, mut go_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let args = CloneArgs {
        flags: (libc::CLONE_NEWUSER | libc::CLONE_NEWPID) as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork: the child gets a copy of our memory,
    // and we are single-threaded, so it may go on running Rust code.
    let root = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if root < 0 {
        return Err(format!("clone3: {}", std::io::Error::last_os_error()));
    }
    if root == 0 {
        drop(go_w);
        let mut byte = [0u8];
        let mut go = go_r;
        if go.read_exact(&mut byte).is_err() {
            std::process::exit(EXIT_NO_MAPS);
        }
        root_main(program, base);
    }
    drop(go_r);
    let root = root as libc::pid_t;
    for file in ["uid_map", "gid_map"] {
        let map = format!("0 {base} {MAP_SIZE}\n");
        if let Err(e) = std::fs::write(format!("/proc/{root}/{file}"), map) {
            // SAFETY: kill(2) and waitpid(2) on our own child.
            unsafe {
                libc::kill(root, libc::SIGKILL);
                libc::waitpid(root, std::ptr::null_mut(), 0);
            }
            return Err(format!("writing /proc/{root}/{file}: {e}"));
        }
    }
    go_w.write_all(b"g")
        .map_err(|e| format!("telling the root: {e}"))?;
    Ok(root)
}

/// clone3(2)'s argument (the fields up to `set_tid_size`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
}

/// The root's exit status when it never got its maps.
const EXIT_NO_MAPS: i32 = 5;

/// setresgid/setgroups/setresuid, in that order (the gids while still privileged).
fn set_ids(uids: [u32; 3], gids: [u32; 3], groups: &[u32]) -> std::io::Result<()> {
    // SAFETY: setgroups(2) reads `groups.len()` gids from the slice.
    cvt(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
    // SAFETY: the id calls take integers only.
    unsafe {
        cvt(libc::setresgid(gids[0], gids[1], gids[2]))?;
        cvt(libc::setresuid(uids[0], uids[1], uids[2]))?;
    }
    Ok(())
}

fn set_hostname(name: &str) -> std::io::Result<()> {
    // SAFETY: sethostname(2) reads `name.len()` bytes.
    cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim_end().to_owned())
        .unwrap_or_else(|e| format!("(hostname: {e})"))
}

fn link(path: &str) -> String {
    std::fs::read_link(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("({path}: {e})"))
}

/// The numbers of a `/proc/PID/status` line (`Uid:`, `Groups:`...), or the hex mask
/// of a `Cap*:` line as one number.
fn status_field(pid: &str, field: &str) -> Vec<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with(&format!("{field}:"))) else {
        return Vec::new();
    };
    let values = line[field.len() + 1..].split_whitespace();
    if field.starts_with("Cap") {
        values
            .filter_map(|v| u64::from_str_radix(v, 16).ok())
            .collect()
    } else {
        values.filter_map(|v| v.parse().ok()).collect()
    }
}

fn map_lines(file: &str) -> Vec<Vec<u64>> {
    std::fs::read_to_string(format!("/proc/self/{file}"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .collect()
}

fn child_main(parent: libc::pid_t) -> ! {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        std::process::exit(3);
    }
    if set_ids(CHILD_UIDS, CHILD_GIDS, &CHILD_GROUPS).is_err() {
        std::process::exit(4);
    }
    // The id change made it undumpable; dumpable again, the root (privileged in the
    // namespace) may read its /proc/PID/ns links.
    // SAFETY: PR_SET_DUMPABLE takes an integer.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1 as libc::c_ulong) };
    loop {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn check_child(report: &mut Report, pid: &str) {
    let wide = |ids: &[u32]| ids.iter().map(|&i| u64::from(i)).collect::<Vec<_>>();
    let mut uids = wide(&CHILD_UIDS);
    uids.push(u64::from(CHILD_UIDS[1])); // the fs uid follows the effective one
    let mut gids = wide(&CHILD_GIDS);
    gids.push(u64::from(CHILD_GIDS[1]));
    report.check_eq("the child's uids", status_field(pid, "Uid"), uids);
    report.check_eq("the child's gids", status_field(pid, "Gid"), gids);
    report.check_eq(
        "the child's groups",
        status_field(pid, "Groups"),
        wide(&CHILD_GROUPS),
    );
    report.check_eq("the child's CapEff", status_field(pid, "CapEff"), vec![0]);
    report.check_eq("the child's CapPrm", status_field(pid, "CapPrm"), vec![0]);
    for kind in ["user", "uts", "ipc"] {
        report.check_eq(
            &format!("the child's {kind} namespace"),
            link(&format!("/proc/{pid}/ns/{kind}")),
            link(&format!("/proc/self/ns/{kind}")),
        );
    }
}

/// Our pid in the host's pid namespace, which `/proc` shows (we are 1 in our own).
fn host_pid() -> String {
    std::fs::read_link("/proc/self")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The tree's root: pid 1 of its pid namespace, in its user namespace.
fn root_main(program: &mut Program, base: u32) -> ! {
    // Its own session, as a container's init has.
    // SAFETY: setsid(2) has no arguments.
    program.must(cvt(unsafe { libc::setsid() }), "setsid");
    program.must(
        set_ids([0; 3], [0; 3], &[]),
        "becoming root in the namespace",
    );
    // SAFETY: unshare(2) has no memory arguments; we are single-threaded.
    let unshared = cvt(unsafe { libc::unshare(libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) });
    program.must(unshared, "unsharing UTS and IPC namespaces");
    program.must(set_hostname(HOSTNAME), "naming the host");
    let cap_eff = status_field("self", "CapEff");
    let me = std::process::id() as libc::pid_t;
    // SAFETY: single-threaded, so the child may keep running Rust code.
    let child = unsafe { libc::fork() };
    if child < 0 {
        program.setup_failed(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if child == 0 {
        child_main(me);
    }
    let kill_child = || {
        // SAFETY: kill(2) and waitpid(2) on our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
    };
    // `/proc` is the host's: the child is there under its host pid.
    let child_host = || {
        let me = host_pid();
        std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let child_ready = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        status_field(&child_host(), "Uid").first() == Some(&u64::from(CHILD_UIDS[0]))
    });
    if !child_ready {
        kill_child();
        program.setup_failed("the child did not take its ids");
    }
    program.ready();
    program.work_until_check(Duration::from_millis(50), || {});

    let mut report = Report::new();
    let map = vec![vec![0, u64::from(base), u64::from(MAP_SIZE)]];
    report.check_eq("uid_map", map_lines("uid_map"), map.clone());
    report.check_eq("gid_map", map_lines("gid_map"), map);
    report.check_eq("uids", status_field("self", "Uid"), vec![0; 4]);
    report.check_eq("gids", status_field("self", "Gid"), vec![0; 4]);
    report.check_eq("groups", status_field("self", "Groups"), vec![]);
    report.check_eq("CapEff", status_field("self", "CapEff"), cap_eff);
    report.check_eq("pid", std::process::id(), 1);
    report.check_eq("hostname", hostname(), HOSTNAME.to_owned());
    let renamed = set_hostname("tp-userns-renamed").and_then(|()| set_hostname(HOSTNAME));
    if let Err(e) = renamed {
        report.fail(format!("sethostname in its own UTS namespace: {e}"));
    }
    // SAFETY: waitpid(2) with WNOHANG on our own child, no status wanted.
    let gone = unsafe { libc::waitpid(child, std::ptr::null_mut(), libc::WNOHANG) };
    if gone != 0 {
        report.fail(format!("the child is gone (waitpid: {gone})"));
    } else {
        check_child(&mut report, &child_host());
    }
    kill_child();
    program.finish(&report);
}

fn main() {
    let mut program = Program::start(
        "tp-userns",
        &[(
            "--base ID",
            "host uid and gid of the namespace's root (default 100000)",
        )],
    );
    let base: u32 = program.opt_or("--base", 100_000);
    let dir = program.ready_dir();
    let given = std::os::unix::fs::chown(&dir, Some(base), Some(base));
    program.must(
        given,
        "giving the ready file's directory to the namespace's root",
    );
    let root = clone_root(&mut program, base);
    let root = program.must(root, "starting the root in its namespaces");
    // We only wait: the tree is the root's. Its end (a dump kills it) is ours.
    let mut status = 0;
    // SAFETY: waitpid(2) on our own child, into a local.
    unsafe { libc::waitpid(root, &mut status, 0) };
    std::process::exit(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        EXIT_SETUP_OR_KILLED
    });
}

/// Our exit status when the root was killed (as a dump that kills the tree does).
const EXIT_SETUP_OR_KILLED: i32 = 9;
