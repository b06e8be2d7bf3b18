//! Processes and threads: waiting, pidfds, kcmp, signals, clone3, scheduling and CPU affinity.

use super::*;

/// What waitpid(2) said about a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    /// Stopped with this signal; `event` is the ptrace event (status >> 16), 0 if none.
    Stopped {
        sig: i32,
        event: i32,
    },
    Exited(i32),
    Signaled(i32),
}

pub(super) fn decode_status(status: i32) -> WaitStatus {
    if libc::WIFSTOPPED(status) {
        WaitStatus::Stopped {
            sig: libc::WSTOPSIG(status),
            event: (status >> 16) & 0xff,
        }
    } else if libc::WIFEXITED(status) {
        WaitStatus::Exited(libc::WEXITSTATUS(status))
    } else {
        WaitStatus::Signaled(libc::WTERMSIG(status))
    }
}

/// waitpid(tid, __WALL | WNOHANG): `None` while nothing changed.
pub fn wait_nohang(tid: Pid) -> io::Result<Option<WaitStatus>> {
    let mut status = 0;
    // SAFETY: status is a valid out pointer.
    let ret = unsafe { libc::waitpid(tid.0, &mut status, libc::__WALL | libc::WNOHANG) };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        _ => Ok(Some(decode_status(status))),
    }
}

/// How long [`wait_timeout`] yields the CPU between polls before it sleeps.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(200);

/// Waits for a state change of `tid`, giving up with `TimedOut` after `timeout`.
/// Polls, because waitpid has no timeout and a signal-based one would race.
pub fn wait_timeout(tid: Pid, timeout: Duration) -> io::Result<WaitStatus> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut pause = Duration::from_micros(20);
    loop {
        if let Some(status) = wait_nohang(tid)? {
            return Ok(status);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("task {tid} did not stop within {timeout:?}"),
            ));
        }
        // A tracee continued for one injected call stops again within microseconds:
        // yield (to it, when it shares our CPU) rather than sleep at first, as the
        // shortest sleep lasts the timer slack, 50 us by default, and a dump of many
        // threads waits for thousands of such stops.
        if now - start < SPIN_BEFORE_SLEEP {
            std::thread::yield_now();
            continue;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// A pidfd of one thread (`PIDFD_THREAD`, Linux 6.9): waitid through it waits for that
/// very task, whatever task gets its number later.
pub fn pidfd_open_thread(tid: Pid) -> io::Result<OwnedFd> {
    const PIDFD_THREAD: libc::c_long = libc::O_EXCL as libc::c_long;
    // SAFETY: plain syscall with integer arguments.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, tid.0, PIDFD_THREAD) })?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// waitid(P_PIDFD, WNOHANG) for the task of `pidfd`, our child or tracee: its end or
/// stop if there is one to report.
pub fn waitid_pidfd_nohang(pidfd: BorrowedFd<'_>) -> io::Result<Option<WaitStatus>> {
    const P_PIDFD: libc::idtype_t = 3;
    // SAFETY: siginfo_t is plain data; all-zero is valid (si_pid 0 means nothing yet).
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let options = libc::WEXITED | libc::WSTOPPED | libc::WNOHANG | libc::__WALL;
    // SAFETY: waitid writes one siginfo_t into `info`, which we own.
    let ret = unsafe { libc::waitid(P_PIDFD, pidfd.as_raw_fd() as libc::id_t, &mut info, options) };
    check(ret as libc::c_long)?;
    // SAFETY: after a successful waitid, si_pid and si_status are the fields it set.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => WaitStatus::Exited(status),
        libc::CLD_KILLED | libc::CLD_DUMPED => WaitStatus::Signaled(status),
        _ => WaitStatus::Stopped {
            sig: status & 0xff,
            event: status >> 8,
        },
    }))
}

/// pidfd_open(2).
pub fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.0, 0) })?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// pidfd_getfd(2): a duplicate of the task's fd `target` (same open file description).
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, target: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) })?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// kcmp(2) KCMP_FILE: whether two fds (of two tasks) are the same open file description.
pub fn kcmp_same_file(pid1: Pid, fd1: RawFd, pid2: Pid, fd2: RawFd) -> io::Result<bool> {
    const KCMP_FILE: libc::c_int = 0;
    // SAFETY: plain syscall with integer arguments.
    let ret = check(unsafe { libc::syscall(libc::SYS_kcmp, pid1.0, pid2.0, KCMP_FILE, fd1, fd2) })?;
    Ok(ret == 0)
}

/// Kernel objects kcmp(2) can compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KcmpType {
    Vm = 1,
    Files = 2,
    Fs = 3,
    Sighand = 4,
}

/// kcmp(2): whether two tasks share the given kernel object.
pub fn kcmp_same(pid1: Pid, pid2: Pid, what: KcmpType) -> io::Result<bool> {
    // SAFETY: plain syscall with integer arguments.
    let ret =
        check(unsafe { libc::syscall(libc::SYS_kcmp, pid1.0, pid2.0, what as libc::c_int, 0, 0) })?;
    Ok(ret == 0)
}

/// get_robust_list(2) of thread `tid`: the head of its robust futex list and its length.
pub fn get_robust_list(tid: Pid) -> io::Result<(u64, usize)> {
    let (mut head, mut len) = (0u64, 0usize);
    // SAFETY: the kernel writes one pointer and one size_t into our locals.
    check(unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid.0,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    })?;
    Ok((head, len))
}

/// waitpid(pid, __WALL) once, for a child or tracee that is known to end: its raw
/// status, or the error (ECHILD for a task that is neither).
pub fn wait_all(pid: Pid) -> io::Result<i32> {
    let mut status = 0;
    // SAFETY: waitpid with a status pointer to our local.
    check(unsafe { libc::waitpid(pid.0, &mut status, libc::__WALL) } as libc::c_long)?;
    Ok(status)
}

/// Our session id and process group id.
pub fn own_session_and_group() -> (Pid, Pid) {
    // SAFETY: getsid(0) and getpgid(0) have no memory arguments and cannot fail for us.
    unsafe { (Pid(libc::getsid(0)), Pid(libc::getpgid(0))) }
}

/// The process group of our parent.
pub fn parent_group() -> io::Result<Pid> {
    // SAFETY: getppid and getpgid have no memory arguments.
    let pgid = unsafe { libc::getpgid(libc::getppid()) };
    check(pgid as libc::c_long).map(|p| Pid(p as i32))
}

/// kcmp(2) `KCMP_EPOLL_TFD`: whether fd `fd1` of `pid1` is the file registered in the
/// epoll instance `efd` of `pid2` as target `tfd` (its `toff`-th registration under
/// that number).
pub fn kcmp_epoll_tfd(
    pid1: Pid,
    fd1: RawFd,
    pid2: Pid,
    efd: RawFd,
    tfd: RawFd,
    toff: u32,
) -> io::Result<bool> {
    const KCMP_EPOLL_TFD: libc::c_int = 7;
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = Slot {
        efd: efd as u32,
        tfd: tfd as u32,
        toff,
    };
    // SAFETY: the kernel reads one kcmp_epoll_slot from `slot`, which lives across the call.
    let ret = check(unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1.0,
            pid2.0,
            KCMP_EPOLL_TFD,
            fd1,
            &slot as *const Slot,
        )
    })?;
    Ok(ret == 0)
}

/// kill(2).
pub fn kill(pid: Pid, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::kill(pid.0, sig) } as libc::c_long).map(drop)
}

/// tgkill(2): signal `sig` to thread `tid` of process `pid` alone.
pub fn tgkill(pid: Pid, tid: Pid, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::syscall(libc::SYS_tgkill, pid.0, tid.0, sig) }).map(drop)
}

/// Lets SIGPIPE end the process quietly, as it does C tools (Rust starts with it
/// ignored, so printing into a closed pipe, as `| head` makes, would be an error).
pub fn default_sigpipe() {
    // SAFETY: installing the default disposition touches no memory of ours.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Blocks `signals` in the calling thread (threads it starts afterwards inherit the mask).
pub fn block_signals(signals: &[libc::c_int]) -> io::Result<()> {
    thread_mask(libc::SIG_BLOCK, signals)
}

/// Unblocks `signals` in the calling thread.
pub fn unblock_signals(signals: &[libc::c_int]) -> io::Result<()> {
    thread_mask(libc::SIG_UNBLOCK, signals)
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset and sigaddset initialise and fill it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

fn thread_mask(how: libc::c_int, signals: &[libc::c_int]) -> io::Result<()> {
    let set = signal_set(signals);
    // SAFETY: pthread_sigmask reads `set` and changes only this thread's mask.
    match unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Waits until one of `signals` (blocked in every thread) is pending and takes it.
pub fn wait_for_signal(signals: &[libc::c_int]) -> io::Result<libc::c_int> {
    let set = signal_set(signals);
    let mut sig: libc::c_int = 0;
    // SAFETY: sigwait reads `set` and writes one int into `sig`.
    match unsafe { libc::sigwait(&set, &mut sig) } {
        0 => Ok(sig),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Lets `sig` do what it does by default (for the stop signals: end the process): its
/// default disposition, unblocked in this thread, sent to this thread.
pub fn default_effect(sig: libc::c_int) {
    // SAFETY: installing the default disposition touches no memory of ours; raise
    // signals this very thread.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
    let _ = unblock_signals(&[sig]);
    // SAFETY: as above.
    unsafe { libc::raise(sig) };
}

/// Waits for our child `pid` to end (not for stops); its status as std reports one.
pub fn wait_child(pid: Pid) -> io::Result<std::process::ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    loop {
        // SAFETY: waitpid with a valid status pointer.
        let ret = unsafe { libc::waitpid(pid.0, &mut status, 0) };
        if ret >= 0 {
            return Ok(std::process::ExitStatus::from_raw(status));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Forks a child that keeps only the fds in `keep` (at the same numbers, sharing the
/// same open file descriptions), closes every other fd, stops itself with SIGSTOP, and
/// after a SIGCONT sleeps until it is killed (it also dies with its parent). Wait for
/// the stop (state `T` in /proc) before looking at its fds. For tests that need a task
/// holding a given set of files. The caller must reap it.
///
/// The child runs only raw syscalls (no allocation, no locks), so this is safe to call
/// from a multi-threaded process.
pub fn fork_holding_fds(keep: &[RawFd]) -> io::Result<Pid> {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    keep.dedup();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: fork has no memory-safety preconditions; the child below only calls
    // async-signal-safe syscalls on data prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(Pid(pid));
    }
    // In the child now.
    // SAFETY: raw syscalls with integer arguments only; no allocation, no locks.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
        super::fd::close_all_fds_except(&keep);
        libc::kill(libc::getpid(), libc::SIGSTOP);
        loop {
            libc::pause();
        }
    }
}

/// The node and domain names of the calling thread's UTS namespace (uname(2)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UtsNames {
    pub nodename: Vec<u8>,
    pub domainname: Vec<u8>,
}

/// uname(2): the names of the calling thread's UTS namespace, as raw bytes (the kernel
/// accepts any bytes in a host name).
pub fn uname() -> io::Result<UtsNames> {
    // SAFETY: utsname is arrays of c_char; all-zero is a valid value.
    let mut buf: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes one struct utsname into `buf`, which we own.
    check(unsafe { libc::uname(&mut buf) } as libc::c_long)?;
    // Each field is NUL-terminated within its array; stop at the first NUL (or the end).
    let field = |chars: &[libc::c_char]| -> Vec<u8> {
        chars
            .iter()
            .map(|&c| c as u8)
            .take_while(|&b| b != 0)
            .collect()
    };
    Ok(UtsNames {
        nodename: field(&buf.nodename),
        domainname: field(&buf.domainname),
    })
}

/// `struct clone_args` of clone3(2), up to `cgroup` (Linux 5.7).
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
    cgroup: u64,
}

/// Creates a child with pid (and tid) `pid` in our pid namespace with clone3(2) and
/// `set_tid` (any free pid when `None`); the child asks to be traced by us and stops
/// itself with SIGSTOP before it does anything else. Returns once the child exists (the
/// caller waits for its stop).
///
/// The child is a copy of this process that runs no Rust code of its own: after clone3
/// returns 0 in it, it only makes raw system calls (no allocation, no locks, no libc
/// state that assumes the parent's thread ids), and the tracer replaces its registers
/// before it ever resumes.
///
/// `ns_flags`: CLONE_NEWPID and CLONE_NEWUSER, for a child that starts new ones (a pid
/// namespace made with a user namespace is owned by it).
pub fn clone3_stopped_child(pid: Option<Pid>, ns_flags: libc::c_int) -> io::Result<Pid> {
    let tids = [pid.map_or(0, |p| p.0)];
    let parent = libc::c_long::from(std::process::id() as i32);
    let new_pid_ns = ns_flags & libc::CLONE_NEWPID != 0;
    let args = CloneArgs {
        flags: (ns_flags & (libc::CLONE_NEWPID | libc::CLONE_NEWUSER)) as u64,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: if pid.is_some() {
            tids.as_ptr() as u64
        } else {
            0
        },
        set_tid_size: u64::from(pid.is_some()),
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM gives the child its own copy of our memory, so
    // nothing of ours is shared; `args` and `tids` outlive the call. In the child the
    // branch below only issues raw syscalls and never returns from this function.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        // SAFETY: raw syscalls with integer arguments, in the new child only.
        unsafe {
            // Until the tracer sets PTRACE_O_EXITKILL, a restorer killed right now
            // must not leave this copy of itself holding the pid: it dies with its
            // parent (the tracer clears this once EXITKILL holds).
            libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if !new_pid_ns && libc::syscall(libc::SYS_getppid) != parent {
                libc::syscall(libc::SYS_exit_group, 1);
            }
            libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0);
            let me = libc::syscall(libc::SYS_getpid);
            libc::syscall(libc::SYS_kill, me, libc::SIGSTOP);
            // The tracer replaces the registers before resuming it: getting here means
            // the tracer let go of a half-built task. It must not live on.
            libc::syscall(libc::SYS_exit_group, 1);
        }
    }
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Pid(ret as i32))
}

/// Creates a child with pid `pid` in our pid namespace (clone3(2) with `set_tid`) that
/// exits at once: a zombie of ours until reaped, whose `/proc/PID` can be opened until
/// then (and reads as unhashed after). For files of a dead process's `/proc` dir.
/// Fails with EEXIST when `pid` is taken.
pub fn clone3_exiting_child(pid: Pid) -> io::Result<Pid> {
    clone3_child_with_pid(pid, ChildEnd::Exit)
}

/// Creates a child with pid `pid` in the pid namespace our calling thread's children go
/// to (clone3(2) with `set_tid`: the innermost number only), that waits in pause(2)
/// until it is killed: a live process, whose `/proc/PID` files open also where a
/// zombie's do not (mountinfo: a zombie has no namespaces left). It does not die with
/// the calling thread (a helper thread may make it): the caller kills and reaps it.
/// Fails with EEXIST when `pid` is taken.
pub fn clone3_pausing_child(pid: Pid) -> io::Result<Pid> {
    clone3_child_with_pid(pid, ChildEnd::Pause)
}

/// What a stand-in child made by `clone3_child_with_pid` does.
#[derive(Clone, Copy)]
enum ChildEnd {
    /// exit_group(0) at once.
    Exit,
    /// pause(2) until killed.
    Pause,
}

fn clone3_child_with_pid(pid: Pid, end: ChildEnd) -> io::Result<Pid> {
    let tids = [pid.0];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM gives the child its own copy of our memory;
    // `args` and `tids` outlive the call. The child only makes the raw calls below.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        match end {
            // SAFETY: a raw syscall with an integer argument, in the new child only;
            // it does not return.
            ChildEnd::Exit => unsafe {
                libc::syscall(libc::SYS_exit_group, 0);
            },
            ChildEnd::Pause => loop {
                // SAFETY: a raw syscall without arguments, in the new child only.
                unsafe { libc::syscall(libc::SYS_pause) };
            },
        }
    }
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Pid(ret as i32))
}

/// Which side of [`fork_into_namespaces`] the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkedInto {
    /// In the new child, in the new namespaces.
    Child,
    /// In the caller; the child's pid as we see it.
    Parent(Pid),
}

/// Like fork(2), but the child starts in the new namespaces `ns_flags` (any of
/// CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS,
/// CLONE_NEWCGROUP; those made with a new user namespace are owned by it) and, with
/// `sibling`, is a child of our parent instead of ours (CLONE_PARENT), so our parent can
/// wait for it after we are gone. Both sides return: the child goes on running this
/// program's code.
///
/// Refused (EDEADLK) unless this process has one thread: a child forked from several
/// threads may find a lock (the allocator's) held forever by a thread it does not have.
/// The child should exec or exit soon: the C library's record of the thread id still
/// holds ours (glibc uses it only for pthread_kill and the owner of recursive and
/// error-checking mutexes).
pub fn fork_into_namespaces(ns_flags: libc::c_int, sibling: bool) -> io::Result<ForkedInto> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(io::Error::new(
            io::ErrorKind::Deadlock,
            format!("forking into namespaces from a process of {threads} threads"),
        ));
    }
    let namespaces = libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWCGROUP;
    let mut flags = (ns_flags & namespaces) as u64;
    if sibling {
        flags |= libc::CLONE_PARENT as u64;
    }
    let args = CloneArgs {
        flags,
        // With CLONE_PARENT the child takes our own exit signal, and clone3 wants 0.
        exit_signal: if sibling { 0 } else { libc::SIGCHLD as u64 },
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM gives the child its own copy of our memory, with
    // no stack argument it runs on (its copy of) our stack, and `args` outlives the
    // call. We checked above that we are the only thread, so no lock of ours is held by
    // a thread the child lacks: the child may run any code a forked child may.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            size_of::<CloneArgs>(),
        )
    };
    match ret {
        0 => Ok(ForkedInto::Child),
        r if r < 0 => Err(io::Error::last_os_error()),
        r => Ok(ForkedInto::Parent(Pid(r as i32))),
    }
}

/// clock_gettime(2) of `clockid`, as (seconds, nanoseconds).
pub fn clock_gettime(clockid: libc::clockid_t) -> io::Result<(i64, i64)> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the kernel writes one timespec into `ts`, which we own.
    check(unsafe { libc::clock_gettime(clockid, &mut ts) } as libc::c_long)?;
    Ok((ts.tv_sec, ts.tv_nsec))
}

/// A task's CPU affinity (sched_getaffinity(2)); pid 0 is the calling thread.
pub fn get_affinity(pid: Pid) -> io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes into `set`.
    let ret = unsafe { libc::sched_getaffinity(pid.0, size_of::<libc::cpu_set_t>(), &mut set) };
    check(ret as libc::c_long)?;
    Ok(set)
}

/// sched_setaffinity(2); pid 0 is the calling thread.
pub fn set_affinity(pid: Pid, set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: the kernel reads one cpu_set_t from `set`.
    let ret = unsafe { libc::sched_setaffinity(pid.0, size_of::<libc::cpu_set_t>(), set) };
    check(ret as libc::c_long).map(drop)
}

/// How many CPUs a set holds.
pub fn cpu_count(set: &libc::cpu_set_t) -> usize {
    // SAFETY: CPU_COUNT only reads the set it borrows.
    unsafe { libc::CPU_COUNT(set) as usize }
}

/// A set holding only `cpu`.
pub fn one_cpu(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET only sets a bit of the set; it is unsafe because an index past the
    // set would write out of bounds, which the modulo rules out.
    unsafe { libc::CPU_SET(cpu % (8 * size_of::<libc::cpu_set_t>()), &mut set) };
    set
}

/// The CPU the calling thread runs on (sched_getcpu(3)).
pub fn current_cpu() -> usize {
    // SAFETY: no arguments, no memory effects.
    let cpu = unsafe { libc::sched_getcpu() };
    cpu.max(0) as usize
}

/// The calling thread's id (gettid(2)).
pub fn current_tid() -> Pid {
    // SAFETY: no arguments, no memory effects.
    Pid(unsafe { libc::gettid() })
}

/// sched_setscheduler(2) flag: children start with the default policy and nice 0.
pub const SCHED_RESET_ON_FORK: i32 = 0x4000_0000;

/// A thread's scheduling: policy (with `SCHED_RESET_ON_FORK`), real-time priority and
/// nice value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sched {
    pub policy: i32,
    pub priority: i32,
    pub nice: i32,
}

/// sched_getscheduler(2), sched_getparam(2) and getpriority(2) of thread `tid`.
pub fn sched_get(tid: Pid) -> io::Result<Sched> {
    // SAFETY: plain syscall with an integer argument.
    let policy = check(unsafe { libc::syscall(libc::SYS_sched_getscheduler, tid.0) })? as i32;
    let mut priority: libc::c_int = 0;
    // SAFETY: the kernel writes one struct sched_param (a single int) into `priority`.
    check(unsafe {
        libc::syscall(
            libc::SYS_sched_getparam,
            tid.0,
            &mut priority as *mut libc::c_int,
        )
    })?;
    // The raw syscall answers 20 - nice (1..=40), so that no answer looks like an error.
    // SAFETY: plain syscall with integer arguments.
    let raw = check(unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, tid.0) })?;
    Ok(Sched {
        policy,
        priority,
        nice: 20 - raw as i32,
    })
}

impl Sched {
    /// SCHED_FIFO or SCHED_RR, the policies with a priority.
    pub fn realtime(&self) -> bool {
        let base = self.policy & !SCHED_RESET_ON_FORK;
        base == libc::SCHED_FIFO || base == libc::SCHED_RR
    }
}

/// setpriority(2) then sched_setscheduler(2) of thread `tid` (nice first: it is kept by
/// a real-time policy, which ignores it until the thread leaves that policy).
pub fn sched_set(tid: Pid, sched: Sched) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::syscall(libc::SYS_setpriority, libc::PRIO_PROCESS, tid.0, sched.nice) })?;
    let priority: libc::c_int = sched.priority;
    // SAFETY: the kernel reads one struct sched_param (a single int) from `priority`.
    check(unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            tid.0,
            sched.policy,
            &priority as *const libc::c_int,
        )
    })
    .map(drop)
}

/// Makes the syscalls numbered `numbers` fail with `errno` in this thread and every
/// process it starts from now on, as a seccomp filter (x86-64 numbers; calls of other
/// ABIs pass). Needs CAP_SYS_ADMIN in the current user namespace; no_new_privs is left
/// as it is, so set-user-id programs keep working. The filter stays for good.
pub fn deny_syscalls(numbers: &[u32], errno: u16) -> io::Result<()> {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    // Offsets into struct seccomp_data.
    const NR_AT: u32 = 0;
    const ARCH_AT: u32 = 4;
    let len = numbers.len();
    if len > 200 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    // arch == x86-64, else allow; then each number jumps to the deny at the end.
    let mut program = vec![
        stmt(load, ARCH_AT),
        jump(AUDIT_ARCH_X86_64, 0, len as u8 + 1),
    ];
    program.push(stmt(load, NR_AT));
    for (i, &nr) in numbers.iter().enumerate() {
        program.push(jump(nr, (len - i) as u8, 0));
    }
    program.push(stmt(ret, SECCOMP_RET_ALLOW));
    program.push(stmt(ret, SECCOMP_RET_ERRNO | u32::from(errno)));
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: seccomp(2) reads the `fprog.len` instructions `fprog.filter` points to,
    // which `program` holds for the whole call; it writes nothing of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
