//! The engine's only unsafe code: thin wrappers over the kernel interfaces it uses
//! (ptrace, pidfds, process_vm_readv, the PAGEMAP_SCAN ioctl, kcmp). Each wrapper checks
//! the result and returns `io::Result`; each unsafe block says why it is sound.
//!
//! ptrace requests must come from the thread that attached the tracee (see
//! `freeze.rs`); the other calls work from any thread.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// A process or thread id in the dumper's pid namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(pub i32);

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// One ptrace request with integer-like arguments.
fn ptrace(request: libc::c_uint, tid: Pid, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: callers pass either plain integers or pointers to buffers they own that are
    // large enough for the request (see each wrapper); the kernel validates the tid.
    check(unsafe {
        libc::ptrace(
            request,
            tid.0,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    })
}

/// ptrace(2) PTRACE_SEIZE: attach without stopping the task.
pub fn ptrace_seize(tid: Pid, options: libc::c_int) -> io::Result<()> {
    ptrace(libc::PTRACE_SEIZE, tid, 0, options as usize).map(drop)
}

/// ptrace(2) PTRACE_INTERRUPT: stop a seized task (it reports PTRACE_EVENT_STOP).
pub fn ptrace_interrupt(tid: Pid) -> io::Result<()> {
    ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0).map(drop)
}

/// ptrace(2) PTRACE_DETACH, delivering `sig` (0 for none).
pub fn ptrace_detach(tid: Pid, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_DETACH, tid, 0, sig as usize).map(drop)
}

/// ptrace(2) PTRACE_CONT, delivering `sig` (0 for none).
pub fn ptrace_cont(tid: Pid, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_CONT, tid, 0, sig as usize).map(drop)
}

/// ptrace(2) PTRACE_GETEVENTMSG.
pub fn ptrace_geteventmsg(tid: Pid) -> io::Result<u64> {
    let mut msg: libc::c_ulong = 0;
    ptrace(
        libc::PTRACE_GETEVENTMSG,
        tid,
        0,
        &mut msg as *mut _ as usize,
    )?;
    Ok(msg)
}

/// The general registers (`NT_PRSTATUS`), including fs_base and gs_base.
pub fn ptrace_get_regs(tid: Pid) -> io::Result<libc::user_regs_struct> {
    // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: &mut regs as *mut _ as *mut libc::c_void,
        iov_len: size_of_val(&regs),
    };
    ptrace(
        libc::PTRACE_GETREGSET,
        tid,
        libc::NT_PRSTATUS as usize,
        &mut iov as *mut _ as usize,
    )?;
    Ok(regs)
}

/// Sets the general registers (`NT_PRSTATUS`).
pub fn ptrace_set_regs(tid: Pid, regs: &libc::user_regs_struct) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: regs as *const _ as *mut libc::c_void,
        iov_len: size_of_val(regs),
    };
    ptrace(
        libc::PTRACE_SETREGSET,
        tid,
        libc::NT_PRSTATUS as usize,
        &mut iov as *mut _ as usize,
    )
    .map(drop)
}

/// NT_X86_XSTATE, the kernel's note type for the xsave area.
const NT_X86_XSTATE: usize = 0x202;

/// The xsave area in the standard (non-compacted) layout, at the size the kernel reports.
pub fn ptrace_get_xstate(tid: Pid) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 16 << 10];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    ptrace(
        libc::PTRACE_GETREGSET,
        tid,
        NT_X86_XSTATE,
        &mut iov as *mut _ as usize,
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// Sets the xsave area; `xstate` must have the size `ptrace_get_xstate` returned.
pub fn ptrace_set_xstate(tid: Pid, xstate: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: xstate.as_ptr() as *mut libc::c_void,
        iov_len: xstate.len(),
    };
    ptrace(
        libc::PTRACE_SETREGSET,
        tid,
        NT_X86_XSTATE,
        &mut iov as *mut _ as usize,
    )
    .map(drop)
}

/// The blocked-signal mask of a stopped tracee (PTRACE_GETSIGMASK, 64 signals).
pub fn ptrace_get_sigmask(tid: Pid) -> io::Result<u64> {
    let mut mask: u64 = 0;
    ptrace(
        libc::PTRACE_GETSIGMASK,
        tid,
        8,
        &mut mask as *mut u64 as usize,
    )?;
    Ok(mask)
}

/// Sets the blocked-signal mask of a stopped tracee.
pub fn ptrace_set_sigmask(tid: Pid, mask: u64) -> io::Result<()> {
    ptrace(
        libc::PTRACE_SETSIGMASK,
        tid,
        8,
        &mask as *const u64 as usize,
    )
    .map(drop)
}

/// Size of a kernel siginfo.
pub const SIGINFO_SIZE: usize = 128;

/// Pending signals without dequeuing them: the thread's private queue, or the process's
/// shared queue (PTRACE_PEEKSIGINFO). Each is the raw 128-byte siginfo.
pub fn ptrace_peek_siginfo(tid: Pid, shared: bool) -> io::Result<Vec<[u8; SIGINFO_SIZE]>> {
    #[repr(C)]
    struct PeekArgs {
        off: u64,
        flags: u32,
        nr: i32,
    }
    const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
    const BATCH: usize = 32;
    let mut out = Vec::new();
    loop {
        let args = PeekArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: BATCH as i32,
        };
        let mut buf = [[0u8; SIGINFO_SIZE]; BATCH];
        let n = ptrace(
            libc::PTRACE_PEEKSIGINFO,
            tid,
            &args as *const _ as usize,
            buf.as_mut_ptr() as usize,
        )? as usize;
        out.extend_from_slice(&buf[..n.min(BATCH)]);
        if n < BATCH {
            return Ok(out);
        }
    }
}

/// A thread's rseq registration (PTRACE_GET_RSEQ_CONFIGURATION).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RseqConfig {
    pub abi_pointer: u64,
    pub abi_size: u32,
    pub flags: u32,
    pub signature: u32,
}

pub fn ptrace_get_rseq(tid: Pid) -> io::Result<RseqConfig> {
    #[repr(C)]
    #[derive(Default)]
    struct Raw {
        rseq_abi_pointer: u64,
        rseq_abi_size: u32,
        signature: u32,
        flags: u32,
        pad: u32,
    }
    let mut raw = Raw::default();
    ptrace(
        libc::PTRACE_GET_RSEQ_CONFIGURATION,
        tid,
        size_of::<Raw>(),
        &mut raw as *mut Raw as usize,
    )?;
    Ok(RseqConfig {
        abi_pointer: raw.rseq_abi_pointer,
        abi_size: raw.rseq_abi_size,
        flags: raw.flags,
        signature: raw.signature,
    })
}

/// Reads one word of tracee memory (PTRACE_PEEKDATA).
pub fn ptrace_peek(tid: Pid, addr: u64) -> io::Result<u64> {
    // PEEKDATA returns the word itself, so -1 is ambiguous: clear errno first.
    // SAFETY: errno is thread-local; writing it is always allowed.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: PEEKDATA reads tracee memory into the return value; no local buffer.
    let word = unsafe {
        libc::ptrace(
            libc::PTRACE_PEEKDATA,
            tid.0,
            addr as *mut libc::c_void,
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    let err = io::Error::last_os_error();
    if word == -1 && err.raw_os_error() != Some(0) {
        return Err(err);
    }
    Ok(word as u64)
}

/// Writes one word of tracee memory (PTRACE_POKEDATA); works on read-only text too.
pub fn ptrace_poke(tid: Pid, addr: u64, word: u64) -> io::Result<()> {
    ptrace(libc::PTRACE_POKEDATA, tid, addr as usize, word as usize).map(drop)
}

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

fn decode_status(status: i32) -> WaitStatus {
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

/// Waits for a state change of `tid`, giving up with `TimedOut` after `timeout`.
/// Polls, because waitpid has no timeout and a signal-based one would race.
pub fn wait_timeout(tid: Pid, timeout: Duration) -> io::Result<WaitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(20);
    loop {
        if let Some(status) = wait_nohang(tid)? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("task {tid} did not stop within {timeout:?}"),
            ));
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

/// process_vm_readv(2): copies `remote` ranges of `pid` into `local`, in order; returns
/// the bytes copied (short when a remote page is not mapped).
pub fn process_vm_readv(pid: Pid, local: &mut [u8], remote: &[(u64, usize)]) -> io::Result<usize> {
    let local_iov = libc::iovec {
        iov_base: local.as_mut_ptr().cast(),
        iov_len: local.len(),
    };
    let remote_iov: Vec<libc::iovec> = remote
        .iter()
        .map(|&(addr, len)| libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        })
        .collect();
    // SAFETY: the local iovec covers exactly `local`, which we borrow mutably; remote
    // addresses are only interpreted by the kernel in the other process.
    let n = unsafe {
        libc::process_vm_readv(
            pid.0,
            &local_iov,
            1,
            remote_iov.as_ptr(),
            remote_iov.len() as u64,
            0,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Page categories reported by PAGEMAP_SCAN (linux/fs.h).
pub mod page_is {
    pub const WPALLOWED: u64 = 1 << 0;
    pub const WRITTEN: u64 = 1 << 1;
    pub const FILE: u64 = 1 << 2;
    pub const PRESENT: u64 = 1 << 3;
    pub const SWAPPED: u64 = 1 << 4;
    pub const PFNZERO: u64 = 1 << 5;
    pub const HUGE: u64 = 1 << 6;
    pub const SOFT_DIRTY: u64 = 1 << 7;
    pub const GUARD: u64 = 1 << 8;
}

/// One run of pages with the same categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// PAGEMAP_SCAN (Linux 6.7) over `[start, end)` of the task whose `/proc/PID/pagemap` is
/// `pagemap`: the runs of pages having any of `any_of` categories, with the
/// `return_mask` categories reported. Debian 12's headers predate the ioctl, so the
/// structures are declared here.
pub fn pagemap_scan(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    any_of: u64,
    return_mask: u64,
) -> io::Result<Vec<PageRegion>> {
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct RawRegion {
        start: u64,
        end: u64,
        categories: u64,
    }
    #[repr(C)]
    struct PmScanArg {
        size: u64,
        flags: u64,
        start: u64,
        end: u64,
        walk_end: u64,
        vec: u64,
        vec_len: u64,
        max_pages: u64,
        category_inverted: u64,
        category_mask: u64,
        category_anyof_mask: u64,
        return_mask: u64,
    }
    // _IOWR('f', 16, struct pm_scan_arg)
    const PAGEMAP_SCAN: libc::c_ulong = (3 << 30)
        | ((size_of::<PmScanArg>() as libc::c_ulong) << 16)
        | ((b'f' as libc::c_ulong) << 8)
        | 16;
    let mut out = Vec::new();
    let mut buf = vec![RawRegion::default(); 1024];
    let mut pos = start;
    while pos < end {
        let mut arg = PmScanArg {
            size: size_of::<PmScanArg>() as u64,
            flags: 0,
            start: pos,
            end,
            walk_end: 0,
            vec: buf.as_mut_ptr() as u64,
            vec_len: buf.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: 0,
            category_anyof_mask: any_of,
            return_mask,
        };
        // SAFETY: `arg` is a correctly sized pm_scan_arg whose `vec` points at `buf`,
        // which has room for `vec_len` regions and outlives the call.
        let n = unsafe {
            libc::ioctl(
                pagemap.as_raw_fd(),
                PAGEMAP_SCAN,
                &mut arg as *mut PmScanArg,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        out.extend(buf[..n as usize].iter().map(|r| PageRegion {
            start: r.start,
            end: r.end,
            categories: r.categories,
        }));
        if arg.walk_end <= pos {
            break;
        }
        pos = arg.walk_end;
    }
    Ok(out)
}

/// CPUID leaf 0xD sub-leaf `component`: (size, offset) of that xsave component in the
/// standard layout.
pub fn xsave_component(component: u32) -> (u32, u32) {
    let r = std::arch::x86_64::__cpuid_count(0xd, component);
    (r.eax, r.ebx)
}

/// XCR0: the xsave components the kernel enabled for user space; 0 without OSXSAVE.
pub fn xcr0() -> u64 {
    const OSXSAVE: u32 = 1 << 27;
    if std::arch::x86_64::__cpuid(1).ecx & OSXSAVE == 0 {
        return 0;
    }
    // SAFETY: CPUID says the OS enabled XSAVE (OSXSAVE), so XGETBV exists and reading
    // XCR0 (register 0) is allowed at any privilege level.
    unsafe { std::arch::x86_64::_xgetbv(0) }
}

/// The user xsave features this CPU and kernel support (CPUID leaf 0xD, sub-leaf 0).
pub fn xsave_features() -> u64 {
    let r = std::arch::x86_64::__cpuid_count(0xd, 0);
    u64::from(r.eax) | (u64::from(r.edx) << 32)
}

/// tee(2): duplicates up to `len` bytes from pipe `from` into pipe `to` without consuming
/// them.
pub fn tee(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on two fds we borrow.
    let n = unsafe {
        libc::tee(
            from.as_raw_fd(),
            to.as_raw_fd(),
            len,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// pipe2(2) with O_CLOEXEC (and extra `flags`).
pub fn pipe(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid out array of two ints.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | flags) } as libc::c_long)?;
    // SAFETY: the kernel returned two new fds that only we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// fcntl(F_SETPIPE_SZ) / F_GETPIPE_SZ.
pub fn pipe_size(fd: BorrowedFd<'_>, set: Option<usize>) -> io::Result<usize> {
    // SAFETY: fcntl with integer arguments on a borrowed fd.
    let ret = unsafe {
        match set {
            Some(n) => libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, n as libc::c_int),
            None => libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ),
        }
    };
    check(ret as libc::c_long).map(|n| n as usize)
}

/// The system page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as u64
}

// ---------------------------------------------------------------------------
// Open files: fcntl, sockets, ttys, namespaces, and the fd kinds restore creates.
// ---------------------------------------------------------------------------

/// fcntl(2) with a command that takes no argument and returns an int (`F_GETSIG`,
/// `F_GET_SEALS`, `F_GETFD`, `F_GETPIPE_SZ`...).
pub fn fcntl_get(fd: BorrowedFd<'_>, cmd: libc::c_int) -> io::Result<i32> {
    // SAFETY: the commands callers use take no argument; the kernel ignores the missing one.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), cmd) };
    check(ret as libc::c_long).map(|n| n as i32)
}

/// fcntl(2) `F_GETOWN_EX`: who receives the file's I/O signals, as
/// (`F_OWNER_TID`/`F_OWNER_PID`/`F_OWNER_PGRP`, id); id 0 when nobody does.
pub fn fcntl_owner(fd: BorrowedFd<'_>) -> io::Result<(i32, i32)> {
    const F_GETOWN_EX: libc::c_int = 16;
    #[repr(C)]
    struct OwnerEx {
        kind: libc::c_int,
        pid: libc::pid_t,
    }
    let mut owner = OwnerEx { kind: 0, pid: 0 };
    // SAFETY: F_GETOWN_EX writes one struct f_owner_ex (two ints) into `owner`.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWN_EX, &mut owner as *mut OwnerEx) };
    check(ret as libc::c_long)?;
    Ok((owner.kind, owner.pid))
}

/// fcntl(2) `F_GETOWNER_UIDS` (CONFIG_CHECKPOINT_RESTORE): the (uid, euid) recorded when
/// the file's owner was set.
pub fn fcntl_owner_uids(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    const F_GETOWNER_UIDS: libc::c_int = 17;
    let mut uids = [0 as libc::uid_t; 2];
    // SAFETY: F_GETOWNER_UIDS writes two uid_t values into `uids`.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWNER_UIDS, uids.as_mut_ptr()) };
    check(ret as libc::c_long)?;
    Ok((uids[0], uids[1]))
}

/// lseek(2); `None` when `SEEK_DATA`/`SEEK_HOLE` find nothing past `offset` (ENXIO).
pub fn lseek(fd: BorrowedFd<'_>, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: plain syscall on a borrowed fd.
    let ret = unsafe { libc::lseek(fd.as_raw_fd(), offset as libc::off_t, whence) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(err)
        };
    }
    Ok(Some(ret as u64))
}

/// socket(2) with `SOCK_CLOEXEC`.
pub fn socket(domain: libc::c_int, ty: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd =
        check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) } as libc::c_long)?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// send(2) of one buffer; returns the bytes sent.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: the kernel reads at most buf.len() bytes from buf, which we borrow.
    let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
    check(n as libc::c_long).map(|n| n as usize)
}

/// recv(2) into one buffer; returns the bytes received.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into buf, which we borrow mutably.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    check(n as libc::c_long).map(|n| n as usize)
}

/// getsockopt(2) into `buf`; returns the option length the kernel reported (which may
/// exceed `buf.len()` for options that say how much room they need).
pub fn getsockopt_bytes(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` (= buf.len()) bytes into buf and updates len.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    } as libc::c_long)?;
    Ok(len as usize)
}

/// getsockopt(2) of an int-valued option.
pub fn getsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<i32> {
    let mut buf = [0u8; 4];
    getsockopt_bytes(fd, level, name, &mut buf)?;
    Ok(i32::from_ne_bytes(buf))
}

/// setsockopt(2) of an int-valued option.
pub fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: i32,
) -> io::Result<()> {
    // SAFETY: the kernel reads one int from `value`, which lives across the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    } as libc::c_long)
    .map(drop)
}

/// The classic BPF program attached to a socket (`SO_GET_FILTER`), one raw
/// `struct sock_filter` (code u16, jt u8, jf u8, k u32) per element; empty when none.
pub fn socket_filter(fd: BorrowedFd<'_>) -> io::Result<Vec<[u8; 8]>> {
    const SO_GET_FILTER: libc::c_int = 26;
    // For this option the length is counted in instructions, not bytes: a first call
    // with length 0 asks how many there are.
    let mut count: libc::socklen_t = 0;
    // SAFETY: with a zero length the kernel only writes `count`; the null buffer is unused.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_GET_FILTER,
            std::ptr::null_mut(),
            &mut count,
        )
    } as libc::c_long)?;
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut prog = vec![[0u8; 8]; count as usize];
    // SAFETY: `prog` holds `count` 8-byte instructions, the most the kernel copies for
    // this length; it fails with EINVAL rather than overflow if the filter grew meanwhile.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_GET_FILTER,
            prog.as_mut_ptr().cast(),
            &mut count,
        )
    } as libc::c_long)?;
    prog.truncate(count as usize);
    Ok(prog)
}

/// getsockname(2) (`peer` false) or getpeername(2) (`peer` true): the raw address bytes.
pub fn socket_address(fd: BorrowedFd<'_>, peer: bool) -> io::Result<Vec<u8>> {
    // SAFETY: sockaddr_storage is plain bytes; all-zero is valid.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ptr = (&mut addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: the kernel writes at most `len` bytes into `addr` and updates len.
    let ret = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), ptr, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), ptr, &mut len)
        }
    };
    check(ret as libc::c_long)?;
    let len = (len as usize).min(size_of::<libc::sockaddr_storage>());
    // SAFETY: `addr` is a live, initialised sockaddr_storage of at least `len` bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts((&addr as *const libc::sockaddr_storage).cast::<u8>(), len)
    };
    Ok(bytes.to_vec())
}

/// What one `recv_peek` returned.
#[derive(Debug)]
pub struct Peeked {
    /// Bytes copied into the buffer (0 at end of stream).
    pub len: usize,
    /// The message's whole length when `trunc` was asked (datagrams); else `len`.
    pub full_len: usize,
    /// The control data did not fit (`MSG_CTRUNC`).
    pub control_truncated: bool,
    /// Descriptors that came with the message (`SCM_RIGHTS`, `SCM_PIDFD`): peeking
    /// installs copies in this process; they close when dropped.
    pub fds: Vec<OwnedFd>,
    /// (level, type) of every control message.
    pub cmsgs: Vec<(i32, i32)>,
}

/// recvmsg(2) with `MSG_PEEK | MSG_DONTWAIT`: copies the next queued message (or stream
/// bytes) without dequeuing it. With `SO_PEEK_OFF` set, each call moves on past what it
/// returned. `trunc` adds `MSG_TRUNC` so a datagram's real length is reported (never
/// use it on stream sockets, where it means "discard"). `Ok(None)` when the queue is
/// empty (EAGAIN).
pub fn recv_peek(fd: BorrowedFd<'_>, buf: &mut [u8], trunc: bool) -> io::Result<Option<Peeked>> {
    let mut control = [0u64; 64]; // 512 bytes, 8-aligned as cmsghdr needs
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    let mut flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    if trunc {
        flags |= libc::MSG_TRUNC;
    }
    // SAFETY: iov covers `buf` and msg_control covers `control`, both borrowed mutably for
    // the call; the kernel writes no more than their lengths.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(err)
        };
    }
    let mut out = Peeked {
        len: (n as usize).min(buf.len()),
        full_len: n as usize,
        control_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        fds: Vec::new(),
        cmsgs: Vec::new(),
    };
    const SCM_PIDFD: libc::c_int = 0x04;
    // SAFETY: msg was filled by the kernel; the CMSG_* helpers stay within
    // msg_control/msg_controllen, which describe our `control` buffer.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR returned a header lying inside `control`.
        let (level, kind, len) =
            unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
        out.cmsgs.push((level, kind));
        if level == libc::SOL_SOCKET && (kind == libc::SCM_RIGHTS || kind == SCM_PIDFD) {
            // SAFETY: CMSG_LEN(0) is a pure computation.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = len.saturating_sub(header) / size_of::<RawFd>();
            // SAFETY: the header is inside `control` and its data holds `count` ints.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: i < count, so the read stays inside this control message; the
                // value may be unaligned, hence read_unaligned.
                let raw = unsafe { data.add(i).read_unaligned() };
                if raw >= 0 {
                    // SAFETY: the kernel installed this fd in our table for us alone.
                    out.fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        // SAFETY: as above; returns null after the last header.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Some(out))
}

/// An ioctl(2) that writes one int through its pointer argument (`TIOCGPTN`,
/// `TIOCGPTLCK`, `TIOCGPKT`, `TIOCGEXCL`, `TIOCGSID`, `TIOCGPGRP`...).
pub fn ioctl_get_int(fd: BorrowedFd<'_>, request: libc::c_ulong) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    // SAFETY: the requests callers use write exactly one int into `value`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &mut value as *mut libc::c_int) };
    check(ret as libc::c_long)?;
    Ok(value)
}

/// An ioctl(2) without argument that returns a new fd: `SIOCGSKNS` (the socket's
/// network namespace), `SIOCUNIXFILE` (an `O_PATH` fd on a unix socket's bound file).
pub fn ioctl_get_fd(fd: BorrowedFd<'_>, request: libc::c_ulong) -> io::Result<OwnedFd> {
    // SAFETY: these requests take no argument and return a new fd.
    let ret = check(unsafe { libc::ioctl(fd.as_raw_fd(), request as _, 0) } as libc::c_long)?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// A duplicate (close-on-exec) of our stdin when it is a terminal.
pub fn stdin_terminal() -> Option<OwnedFd> {
    // SAFETY: isatty takes an integer argument only.
    if unsafe { libc::isatty(0) } != 1 {
        return None;
    }
    dup_fd(0).ok()
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

/// Makes `pgid` the foreground process group of terminal `fd` (`TIOCSPGRP`). SIGTTOU is
/// blocked in this thread meanwhile: a restorer running in the background may still
/// hand the terminal to the job it restored, as a shell does.
pub fn set_foreground_group(fd: BorrowedFd<'_>, pgid: Pid) -> io::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut ttou: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: an all-zero sigset_t is valid for the kernel to overwrite.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sigset pointers; pthread_sigmask only changes this thread's mask,
    // which is put back below.
    unsafe {
        libc::sigemptyset(&mut ttou);
        libc::sigaddset(&mut ttou, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &ttou, &mut old);
    }
    let value: libc::pid_t = pgid.0;
    // SAFETY: TIOCSPGRP reads one pid_t through the pointer.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSPGRP as _, &value) };
    let result = check(ret as libc::c_long).map(drop);
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    result
}

/// A terminal's settings: `TCGETS`, or `TIOCGLCKTRMIOS` for the locked ones.
pub fn tty_termios(fd: BorrowedFd<'_>, request: libc::c_ulong) -> io::Result<libc::termios> {
    // SAFETY: termios is plain integers; all-zero is valid.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: both requests write one struct termios into `t`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &mut t as *mut libc::termios) };
    check(ret as libc::c_long)?;
    Ok(t)
}

/// A terminal's window size (`TIOCGWINSZ`).
pub fn tty_winsize(fd: BorrowedFd<'_>) -> io::Result<libc::winsize> {
    let mut w = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one struct winsize into `w`.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCGWINSZ as _,
            &mut w as *mut libc::winsize,
        )
    } as libc::c_long)?;
    Ok(w)
}

/// setns(2): moves the calling thread into the namespace `fd` refers to.
pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd.
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) } as libc::c_long).map(drop)
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

/// A new shared anonymous memory object of `len` bytes (page aligned), the kind
/// `mmap(MAP_SHARED | MAP_ANONYMOUS)` creates and maps show as `/dev/zero (deleted)`, as
/// an open file: mapped here (see mmap(2)) only long enough to open it through
/// `/proc/self/map_files`, which needs CAP_SYS_ADMIN. With `noreserve` it is not
/// charged against the commit limit (MAP_NORESERVE), as a huge sparse one was not.
pub fn shared_anon_object(len: u64, noreserve: bool) -> io::Result<std::fs::File> {
    let size = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a fresh mapping at an address the kernel picks aliases nothing of ours; it
    // is never accessed and is unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED
                | libc::MAP_ANONYMOUS
                | if noreserve { libc::MAP_NORESERVE } else { 0 },
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = addr as u64;
    let opened = std::fs::File::options()
        .read(true)
        .write(true)
        .open(format!(
            "/proc/self/map_files/{:x}-{:x}",
            start,
            start + len
        ));
    // SAFETY: the mapping made above, which nothing else knows of.
    unsafe { libc::munmap(addr, size) };
    opened
}

/// memfd_create(2) with `MFD_CLOEXEC` (and extra `flags`).
pub fn memfd_create(name: impl AsRef<[u8]>, flags: libc::c_uint) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(name.as_ref())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let fd = check(
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | flags) } as libc::c_long,
    )?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The filesystem type (`f_type` of fstatfs(2)) of the file `fd` is open on.
pub fn fstatfs_type(fd: BorrowedFd<'_>) -> io::Result<i64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs writes one struct statfs into `st`, which is large enough.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) } as libc::c_long)?;
    // SAFETY: the call succeeded, so the kernel filled the struct (it was zeroed anyway).
    Ok(unsafe { st.assume_init() }.f_type)
}

/// A new POSIX message queue, open read-write, whose name `/name` is removed at once
/// (the queue lives on as long as a descriptor holds it). For tests of refusals.
pub fn mq_open_unlinked(name: &str) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(format!("/{name}"))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call; a null
    // attribute pointer asks for the default queue size.
    let fd = check(unsafe {
        libc::mq_open(
            name.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
            0o600 as libc::mode_t,
            std::ptr::null_mut::<libc::mq_attr>(),
        )
    } as libc::c_long)?;
    // SAFETY: the kernel just returned this new descriptor to us; nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::mq_unlink(name.as_ptr()) } as libc::c_long)?;
    Ok(fd)
}

/// eventfd(2) with `EFD_CLOEXEC` (and extra `flags`).
pub fn eventfd(initval: u32, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = check(unsafe { libc::eventfd(initval, libc::EFD_CLOEXEC | flags) } as libc::c_long)?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// epoll_create1(2) with `EPOLL_CLOEXEC`.
pub fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) } as libc::c_long)?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// epoll_ctl(2) `EPOLL_CTL_ADD` of `target` with `events` and user `data`.
pub fn epoll_add(
    epoll: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    events: u32,
    data: u64,
) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: the kernel reads one epoll_event from `ev`.
    check(unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            target.as_raw_fd(),
            &mut ev,
        )
    } as libc::c_long)
    .map(drop)
}

/// timerfd_create(2) with `TFD_CLOEXEC`, armed with timerfd_settime(2): first expiry
/// after `value`, then every `interval` (zero: one-shot).
pub fn timerfd(
    clockid: libc::clockid_t,
    value: Duration,
    interval: Duration,
) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = check(unsafe { libc::timerfd_create(clockid, libc::TFD_CLOEXEC) } as libc::c_long)?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let ts = |d: Duration| libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    let spec = libc::itimerspec {
        it_interval: ts(interval),
        it_value: ts(value),
    };
    // SAFETY: the kernel reads one itimerspec from `spec`; the old value pointer is null.
    let ret = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    check(ret as libc::c_long)?;
    Ok(fd)
}

/// signalfd(2) with `SFD_CLOEXEC` for the signals in `mask` (bit n-1 = signal n).
pub fn signalfd(mask: u64) -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data; sigemptyset below initialises it properly.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t we own.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in 1..=64 {
        if mask & (1u64 << (sig - 1)) != 0 {
            // SAFETY: as above; invalid numbers only make sigaddset fail.
            unsafe { libc::sigaddset(&mut set, sig) };
        }
    }
    // SAFETY: the kernel reads the sigset from `set`.
    let fd = check(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) } as libc::c_long)?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// inotify_init1(2) with `IN_CLOEXEC`.
pub fn inotify_init() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = check(unsafe { libc::inotify_init1(libc::IN_CLOEXEC) } as libc::c_long)?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// inotify_add_watch(2); returns the watch descriptor.
pub fn inotify_add_watch(fd: BorrowedFd<'_>, path: &std::path::Path, mask: u32) -> io::Result<i32> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } as libc::c_long)
        .map(|n| n as i32)
}

/// io_uring_setup(2) with default parameters and `entries` submission slots. The
/// engine cannot dump io_uring; this exists so tests can check that it refuses one.
pub fn io_uring_setup(entries: u32) -> io::Result<OwnedFd> {
    // struct io_uring_params is 120 bytes; all zero asks for the defaults.
    let mut params = [0u64; 15];
    // SAFETY: the kernel reads and writes one io_uring_params in `params`.
    let fd =
        check(unsafe { libc::syscall(libc::SYS_io_uring_setup, entries, params.as_mut_ptr()) })?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
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

/// Runs `work` on a helper thread that first joins namespace `ns` (an nsfs fd) of type
/// `nstype`. setns changes the calling thread only, and the membership ends with the
/// thread: no other thread of ours ever moves. Errors of joining and of starting the
/// thread come back as `Err`; a panic in `work` goes on in the caller.
pub fn in_namespace_thread<T: Send>(
    ns: BorrowedFd<'_>,
    nstype: libc::c_int,
    work: impl FnOnce() -> T + Send,
) -> io::Result<T> {
    std::thread::scope(|s| {
        let helper = std::thread::Builder::new()
            .name("criu-rs-setns".into())
            .spawn_scoped(s, || -> io::Result<T> {
                setns(ns, nstype)?;
                Ok(work())
            })?;
        match helper.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Puts the calling thread into another network namespace until dropped, then back
/// into the one it had (setns(2) changes only the calling thread's).
pub struct NetnsGuard {
    original: OwnedFd,
}

impl NetnsGuard {
    pub fn enter(ns: BorrowedFd<'_>) -> io::Result<NetnsGuard> {
        let original: OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")?.into();
        setns(ns, libc::CLONE_NEWNET)?;
        Ok(NetnsGuard { original })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.original.as_fd(), libc::CLONE_NEWNET) {
            tracing::error!("cannot return to our network namespace: {e}");
        }
    }
}

/// Marks every fd from `first` on close-on-exec (close_range(2) with
/// CLOSE_RANGE_CLOEXEC): what a process leaves open by accident does not reach the
/// program it execs.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    close_range(first, CLOSE_RANGE_CLOEXEC)
}

/// close_range(2) from `first` to the last fd.
fn close_range(first: u32, flags: u32) -> io::Result<()> {
    // SAFETY: close_range with integer arguments; callers own no fd in the range they
    // close, or only mark them close-on-exec.
    check(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, flags) }).map(drop)
}

/// Closes every fd from `first` on (close_range(2)). For a process's very start only,
/// before it opened anything of its own: a daemon drops what its starter leaked to it.
pub fn close_from(first: u32) -> io::Result<()> {
    close_range(first, 0)
}

/// A close-on-exec duplicate of our fd `fd` (fails if it is not open).
pub fn dup_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) with integer arguments.
    let new = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) } as libc::c_long)?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new as RawFd) })
}

/// Lets SIGPIPE end the process quietly, as it does C tools (Rust starts with it
/// ignored, so printing into a closed pipe, as `| head` makes, would be an error).
pub fn default_sigpipe() {
    // SAFETY: installing the default disposition touches no memory of ours.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Takes ownership of fd `fd` that our parent left open for us (its number came by
/// environment or argument), after checking it is open; it becomes close-on-exec.
pub fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: fcntl with integer arguments; F_SETFD fails for a closed fd.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } as libc::c_long)?;
    // SAFETY: the fd is open (checked above) and nothing else in this process owns it:
    // it was inherited for exactly this use.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Brings the loopback interface of our network namespace up (`SIOCSIFFLAGS` on `lo`).
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) with integer arguments.
    let raw = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }
            as libc::c_long,
    )?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `req`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } as libc::c_long)?;
    // SAFETY: ifru_flags is the union member SIOCGIFFLAGS just filled.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } as libc::c_long)
        .map(drop)
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
        let mut next: libc::c_uint = 0;
        for &fd in &keep {
            if fd < 0 {
                continue;
            }
            if (fd as libc::c_uint) > next {
                libc::syscall(libc::SYS_close_range, next, fd as libc::c_uint - 1, 0);
            }
            next = fd as libc::c_uint + 1;
        }
        libc::syscall(libc::SYS_close_range, next, libc::c_uint::MAX, 0);
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

/// ptrace requests of linux/ptrace.h that the libc crate lacks for Linux.
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;

/// Size of one classic BPF instruction (`struct sock_filter`).
pub const SOCK_FILTER_SIZE: usize = 8;

/// ptrace(2) PTRACE_SECCOMP_GET_FILTER: the classic BPF program of the tracee's seccomp
/// filter number `index`, as raw `struct sock_filter` bytes. Index 0 is the FIRST filter
/// the tracee installed (kernel `get_nth_filter`; the man page has it backwards), ENOENT
/// comes past the most recent one; EINVAL when the tracee is not
/// in filter mode; EACCES when the caller lacks CAP_SYS_ADMIN or is itself under seccomp.
pub fn ptrace_seccomp_get_filter(tid: Pid, index: u64) -> io::Result<Vec<u8>> {
    // With a null buffer the kernel only returns the number of instructions.
    let count = ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index as usize, 0)? as usize;
    let mut buf = vec![0u8; count * SOCK_FILTER_SIZE];
    // The program is immutable once installed, so the second call copies the same `count`
    // instructions into `buf`, which has room for exactly that many.
    let again = ptrace(
        PTRACE_SECCOMP_GET_FILTER,
        tid,
        index as usize,
        buf.as_mut_ptr() as usize,
    )? as usize;
    if again != count {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("seccomp filter {index} of task {tid} changed size while being read"),
        ));
    }
    Ok(buf)
}

/// ptrace(2) PTRACE_SECCOMP_GET_METADATA: the `SECCOMP_FILTER_FLAG_*` flags the kernel
/// remembers for the tracee's filter number `index` (today only `SECCOMP_FILTER_FLAG_LOG`).
/// EIO on kernels older than 4.16, which lack the request.
pub fn ptrace_seccomp_get_metadata(tid: Pid, index: u64) -> io::Result<u64> {
    /// struct seccomp_metadata of linux/ptrace.h.
    #[repr(C)]
    struct Metadata {
        filter_off: u64,
        flags: u64,
    }
    let mut meta = Metadata {
        filter_off: index,
        flags: 0,
    };
    // The kernel reads `filter_off` and writes back at most `size_of::<Metadata>()` bytes.
    ptrace(
        PTRACE_SECCOMP_GET_METADATA,
        tid,
        size_of::<Metadata>(),
        &mut meta as *mut Metadata as usize,
    )?;
    Ok(meta.flags)
}

/// fallocate(2): allocates the first `len` bytes of `file` up front.
pub fn fallocate(file: &std::fs::File, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd.
    let ret = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    check(ret as libc::c_long).map(drop)
}

/// msgctl(2) `IPC_STAT`: the state of the calling thread's IPC namespace's message
/// queue `id`.
pub fn msgctl_stat(id: i32) -> io::Result<libc::msqid_ds> {
    // SAFETY: msqid_ds is plain integers; all-zero is a valid value.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one struct msqid_ds into `ds`, which we own.
    check(unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) } as libc::c_long)?;
    Ok(ds)
}

/// `MSG_COPY` of linux/msg.h (needs CONFIG_CHECKPOINT_RESTORE).
const MSG_COPY: libc::c_int = 0o40000;

/// msgrcv(2) with `MSG_COPY | IPC_NOWAIT`: a copy of message number `index` (0 is the
/// oldest) of queue `id`, left queued; `max_len` bounds its text. Returns (type, text).
/// ENOMSG past the last message; E2BIG when the text is longer than `max_len`.
pub fn msgrcv_copy(id: i32, index: usize, max_len: usize) -> io::Result<(i64, Vec<u8>)> {
    // struct msgbuf: a long type, then the text; u64 words keep the long aligned.
    let words = 1 + max_len.div_ceil(8);
    let mut buf = vec![0u64; words];
    // SAFETY: `buf` holds the type word plus at least `max_len` bytes of text, and the
    // kernel writes at most `max_len` text bytes after the type.
    let n = unsafe {
        libc::msgrcv(
            id,
            buf.as_mut_ptr().cast(),
            max_len,
            index as libc::c_long,
            MSG_COPY | libc::IPC_NOWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes: Vec<u8> = buf[1..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok((buf[0] as i64, bytes[..n as usize].to_vec()))
}

/// semctl(2) `IPC_STAT`: the state of semaphore set `id` of the calling thread's IPC
/// namespace.
pub fn semctl_stat(id: i32) -> io::Result<libc::semid_ds> {
    // SAFETY: semid_ds is plain integers; all-zero is a valid value.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    let ptr: *mut libc::semid_ds = &mut ds;
    // SAFETY: IPC_STAT takes a `struct semid_ds *` (the semun argument) and writes one
    // struct into `ds`, which we own.
    let ret = unsafe { libc::semctl(id, 0, libc::IPC_STAT, ptr) };
    check(ret as libc::c_long)?;
    Ok(ds)
}

/// semctl(2) `GETVAL`: the value of semaphore `num` of set `id`. (One call per
/// semaphore rather than `GETALL`, whose write into our buffer is sized by whatever set
/// holds the id at the time of the call, not by the caller.)
pub fn semctl_getval(id: i32, num: usize) -> io::Result<u16> {
    // SAFETY: GETVAL takes no pointer; the value comes back as the result.
    let v = check(unsafe { libc::semctl(id, num as libc::c_int, libc::GETVAL) } as libc::c_long)?;
    Ok(v as u16)
}

/// Owner, group and mode of a SysV object, as `IPC_SET` takes them.
#[derive(Debug, Clone, Copy)]
pub struct IpcOwner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u16,
}

/// msgget(2) with `IPC_CREAT | IPC_EXCL`: a new message queue of the calling thread's
/// IPC namespace.
pub fn msgget_new(key: i32, mode: u16) -> io::Result<i32> {
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | i32::from(mode & 0o777);
    // SAFETY: msgget has integer arguments only.
    check(unsafe { libc::msgget(key, flags) } as libc::c_long).map(|id| id as i32)
}

/// msgsnd(2) without waiting: one message of type `mtype` onto queue `id`.
pub fn msgsnd_nowait(id: i32, mtype: i64, text: &[u8]) -> io::Result<()> {
    // struct msgbuf: a long type, then the text; u64 words keep the long aligned.
    let mut buf = vec![0u64; 1 + text.len().div_ceil(8)];
    buf[0] = mtype as u64;
    // SAFETY: `buf` has room for the type word and `text.len()` bytes after it; the
    // bytes copied are `text`'s own.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf[1..].as_mut_ptr().cast(), text.len())
    };
    // SAFETY: msgsnd reads the type and `text.len()` bytes of text from `buf`.
    let ret = unsafe { libc::msgsnd(id, buf.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) };
    check(ret as libc::c_long).map(drop)
}

/// msgctl(2) `IPC_SET`: owner, mode and byte limit of queue `id`.
pub fn msgctl_set(id: i32, owner: IpcOwner, qbytes: u64) -> io::Result<()> {
    let mut ds = msgctl_stat(id)?;
    ds.msg_perm.uid = owner.uid;
    ds.msg_perm.gid = owner.gid;
    ds.msg_perm.mode = owner.mode;
    ds.msg_qbytes = qbytes as _;
    // SAFETY: IPC_SET reads one struct msqid_ds from `ds`, which we own.
    check(unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) } as libc::c_long).map(drop)
}

/// semget(2) with `IPC_CREAT | IPC_EXCL`: a new set of `nsems` semaphores.
pub fn semget_new(key: i32, nsems: usize, mode: u16) -> io::Result<i32> {
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | i32::from(mode & 0o777);
    // SAFETY: semget has integer arguments only.
    check(unsafe { libc::semget(key, nsems as libc::c_int, flags) } as libc::c_long)
        .map(|id| id as i32)
}

/// semctl(2) `SETALL` then `IPC_SET`: the values, owner and mode of set `id`.
pub fn semctl_restore(id: i32, values: &[u16], owner: IpcOwner) -> io::Result<()> {
    let stat = semctl_stat(id)?;
    if stat.sem_nsems as usize != values.len() {
        return Err(io::Error::other(format!(
            "semaphore set {id} has {} semaphores, {} values given",
            stat.sem_nsems,
            values.len()
        )));
    }
    // SAFETY: SETALL reads sem_nsems u16 values through the pointer: `values` has
    // exactly that many (checked above) and outlives the call.
    check(unsafe { libc::semctl(id, 0, libc::SETALL, values.as_ptr()) } as libc::c_long)?;
    let mut ds = stat;
    ds.sem_perm.uid = owner.uid;
    ds.sem_perm.gid = owner.gid;
    ds.sem_perm.mode = owner.mode;
    let ptr: *mut libc::semid_ds = &mut ds;
    // SAFETY: IPC_SET reads one struct semid_ds through the pointer, which is ours.
    check(unsafe { libc::semctl(id, 0, libc::IPC_SET, ptr) } as libc::c_long).map(drop)
}

/// ptrace(2) PTRACE_SETOPTIONS.
pub fn ptrace_setoptions(tid: Pid, options: libc::c_int) -> io::Result<()> {
    ptrace(libc::PTRACE_SETOPTIONS, tid, 0, options as usize).map(drop)
}

/// ptrace(2) PTRACE_SYSCALL: run to the next syscall entry or exit.
pub fn ptrace_syscall(tid: Pid, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_SYSCALL, tid, 0, sig as usize).map(drop)
}

/// process_vm_writev(2): copies `local` into `pid` at `addr`; returns the bytes copied
/// (short when a remote page is missing or not writable).
pub fn process_vm_writev(pid: Pid, local: &[u8], addr: u64) -> io::Result<usize> {
    let local_iov = libc::iovec {
        iov_base: local.as_ptr() as *mut libc::c_void,
        iov_len: local.len(),
    };
    let remote_iov = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: local.len(),
    };
    // SAFETY: the local iovec covers exactly `local`, which the kernel only reads; the
    // remote one is interpreted in the other process.
    let n = unsafe { libc::process_vm_writev(pid.0, &local_iov, 1, &remote_iov, 1, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Creates a child with pid (and tid) `pid` in our pid namespace with clone3(2) and
/// `set_tid`; the child asks to be traced by us and stops itself with SIGSTOP before it
/// does anything else. Returns once the child exists (the caller waits for its stop).
///
/// The child is a copy of this process that runs no Rust code of its own: after clone3
/// returns 0 in it, it only makes raw system calls (no allocation, no locks, no libc
/// state that assumes the parent's thread ids), and the tracer replaces its registers
/// before it ever resumes.
pub fn clone3_stopped_child(pid: Pid, new_pid_ns: bool) -> io::Result<Pid> {
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
    let tids = [pid.0];
    let parent = libc::c_long::from(std::process::id() as i32);
    let args = CloneArgs {
        flags: if new_pid_ns {
            libc::CLONE_NEWPID as u64
        } else {
            0
        },
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
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

// ---------------------------------------------------------------------------
// Restoring open files: the calls `restore/files.rs` needs to rebuild each kind.
// ---------------------------------------------------------------------------

/// openat(2) relative to the cwd, with `O_CLOEXEC` added (on our side only: it is not a
/// file status flag, so the open file description is the same as without it).
pub fn open_path(path: &std::path::Path, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call; the mode is
    // passed as the variadic argument openat reads when O_CREAT is set.
    let fd = check(unsafe {
        libc::openat(
            libc::AT_FDCWD,
            path.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    } as libc::c_long)?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// fcntl(2) with one int argument (`F_SETFL`, `F_SETFD`, `F_SETSIG`, `F_ADD_SEALS`...);
/// returns what the kernel returned.
pub fn fcntl_set(fd: BorrowedFd<'_>, cmd: libc::c_int, arg: libc::c_int) -> io::Result<i32> {
    // SAFETY: the commands callers use take an int by value; no memory is passed.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, arg) };
    check(ret as libc::c_long).map(|n| n as i32)
}

/// fcntl(2) `F_SETOWN_EX`: who receives the file's I/O signals (`kind` is
/// `F_OWNER_TID`, `F_OWNER_PID` or `F_OWNER_PGRP`).
pub fn fcntl_set_owner(fd: BorrowedFd<'_>, kind: i32, pid: i32) -> io::Result<()> {
    const F_SETOWN_EX: libc::c_int = 15;
    #[repr(C)]
    struct OwnerEx {
        kind: libc::c_int,
        pid: libc::pid_t,
    }
    let owner = OwnerEx { kind, pid };
    // SAFETY: F_SETOWN_EX reads one struct f_owner_ex (two ints) from `owner`.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), F_SETOWN_EX, &owner as *const OwnerEx) };
    check(ret as libc::c_long).map(drop)
}

/// socketpair(2) of `AF_UNIX` sockets of type `ty`, with `SOCK_CLOEXEC`.
pub fn socketpair(ty: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    let ty = ty | libc::SOCK_CLOEXEC;
    // SAFETY: fds is a valid out array of two ints.
    let ret = unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) };
    check(ret as libc::c_long)?;
    // SAFETY: the kernel returned two new fds that only we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// bind(2) to a raw socket address (a `sockaddr_un`, `sockaddr_in` or `sockaddr_in6`
/// laid out in bytes, exactly as long as the kernel should read).
pub fn bind_raw(fd: BorrowedFd<'_>, addr: &[u8]) -> io::Result<()> {
    // SAFETY: the kernel copies `addr.len()` bytes from `addr`, which we borrow; it does
    // not need the buffer aligned (it copies it into its own sockaddr_storage).
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
        )
    } as libc::c_long)
    .map(drop)
}

/// connect(2) to a raw socket address (see [`bind_raw`]).
pub fn connect_raw(fd: BorrowedFd<'_>, addr: &[u8]) -> io::Result<()> {
    // SAFETY: as in bind_raw: the kernel copies `addr.len()` bytes from `addr`.
    check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
        )
    } as libc::c_long)
    .map(drop)
}

/// sendto(2) of one buffer to a raw socket address (see [`bind_raw`]).
pub fn sendto_raw(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    flags: libc::c_int,
    addr: &[u8],
) -> io::Result<usize> {
    // SAFETY: the kernel reads buf.len() bytes from `buf` and addr.len() bytes from
    // `addr`, both borrowed for the call.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            flags,
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
        )
    };
    check(n as libc::c_long).map(|n| n as usize)
}

/// listen(2).
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd.
    check(unsafe { libc::listen(fd.as_raw_fd(), backlog) } as libc::c_long).map(drop)
}

/// shutdown(2) with `SHUT_RD`, `SHUT_WR` or `SHUT_RDWR`.
pub fn shutdown(fd: BorrowedFd<'_>, how: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), how) } as libc::c_long).map(drop)
}

/// setsockopt(2) of an option given as raw bytes (`struct linger`, `struct timeval`,
/// an interface name...).
pub fn setsockopt_bytes(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    // SAFETY: the kernel reads value.len() bytes from `value`, borrowed for the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    } as libc::c_long)
    .map(drop)
}

/// `SO_ATTACH_FILTER`: attaches a classic BPF program, one raw `struct sock_filter`
/// (code u16, jt u8, jf u8, k u32) per element.
pub fn attach_socket_filter(fd: BorrowedFd<'_>, prog: &[[u8; 8]]) -> io::Result<()> {
    #[repr(C)]
    struct SockFprog {
        len: libc::c_ushort,
        filter: *const [u8; 8],
    }
    let len = libc::c_ushort::try_from(prog.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fprog = SockFprog {
        len,
        filter: prog.as_ptr(),
    };
    // SAFETY: the kernel reads one struct sock_fprog from `fprog` and `len` 8-byte
    // instructions from `prog`, which outlives the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const SockFprog).cast(),
            size_of::<SockFprog>() as libc::socklen_t,
        )
    } as libc::c_long)
    .map(drop)
}

/// timerfd_create(2) with `TFD_CLOEXEC`, not armed.
pub fn timerfd_create(clockid: libc::clockid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = check(unsafe { libc::timerfd_create(clockid, libc::TFD_CLOEXEC) } as libc::c_long)?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A timer setting as ((value seconds, nanoseconds), (interval seconds, nanoseconds)).
pub type TimerSpec = ((i64, i64), (i64, i64));

/// timerfd_settime(2) with `flags` (`TFD_TIMER_ABSTIME`, `TFD_TIMER_CANCEL_ON_SET`).
pub fn timerfd_settime(fd: BorrowedFd<'_>, flags: libc::c_int, spec: TimerSpec) -> io::Result<()> {
    let ts = |(sec, nsec): (i64, i64)| libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as libc::c_long,
    };
    let new = libc::itimerspec {
        it_value: ts(spec.0),
        it_interval: ts(spec.1),
    };
    // SAFETY: the kernel reads one itimerspec from `new`; the old value pointer is null.
    let ret = unsafe { libc::timerfd_settime(fd.as_raw_fd(), flags, &new, std::ptr::null_mut()) };
    check(ret as libc::c_long).map(drop)
}

/// timerfd_gettime(2): time to the next expiry and the interval.
pub fn timerfd_gettime(fd: BorrowedFd<'_>) -> io::Result<TimerSpec> {
    // SAFETY: itimerspec is plain integers; all-zero is a valid value.
    let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes one itimerspec into `cur`, which we own.
    check(unsafe { libc::timerfd_gettime(fd.as_raw_fd(), &mut cur) } as libc::c_long)?;
    Ok((
        (cur.it_value.tv_sec, cur.it_value.tv_nsec),
        (cur.it_interval.tv_sec, cur.it_interval.tv_nsec),
    ))
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

/// An ioctl(2) that reads one u64 through its pointer argument (`TFD_IOC_SET_TICKS`).
pub fn ioctl_set_u64(fd: BorrowedFd<'_>, request: libc::c_ulong, value: u64) -> io::Result<()> {
    // SAFETY: the requests callers use read exactly one u64 from `value`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &value as *const u64) };
    check(ret as libc::c_long).map(drop)
}

/// An ioctl(2) that takes an integer by value (`INOTIFY_IOC_SETNEXTWD`).
pub fn ioctl_set_value(fd: BorrowedFd<'_>, request: libc::c_ulong, value: u64) -> io::Result<()> {
    // SAFETY: the requests callers use take their argument by value; no memory is passed.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, value as libc::c_ulong) };
    check(ret as libc::c_long).map(drop)
}

/// The events of `events` that `fd` reports right now (poll(2) with a zero timeout).
pub fn poll_now(fd: BorrowedFd<'_>, events: libc::c_short) -> io::Result<libc::c_short> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one pollfd on the stack, valid for the call; the fd is borrowed open.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pfd.revents)
}

/// open_by_handle_at(2): opens the inode a file handle (`handle_type`, `handle` bytes)
/// names, on the filesystem `mount_fd` is on. Needs CAP_DAC_READ_SEARCH.
pub fn open_by_handle_at(
    mount_fd: BorrowedFd<'_>,
    handle_type: i32,
    handle: &[u8],
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    // MAX_HANDLE_SZ in linux/exportfs.h.
    const MAX_HANDLE_SZ: usize = 128;
    if handle.len() > MAX_HANDLE_SZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // struct file_handle: handle_bytes (u32), handle_type (int), then the bytes; u32
    // words keep the header aligned.
    let mut raw = [0u32; 2 + MAX_HANDLE_SZ / 4];
    raw[0] = handle.len() as u32;
    raw[1] = handle_type as u32;
    for (i, b) in handle.iter().enumerate() {
        let word = &mut raw[2 + i / 4];
        let mut bytes = word.to_ne_bytes();
        bytes[i % 4] = *b;
        *word = u32::from_ne_bytes(bytes);
    }
    // SAFETY: `raw` holds a struct file_handle whose handle_bytes (at most
    // MAX_HANDLE_SZ) fit in the buffer; the kernel only reads it.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            raw.as_ptr(),
            flags | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// unshare(2) for the calling thread (`CLONE_FS` gives it a cwd of its own).
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::unshare(flags) } as libc::c_long).map(drop)
}

/// epoll_wait(2) without blocking longer than `timeout_ms`: (events, data) of up to
/// `max` ready items.
pub fn epoll_wait(
    epoll: BorrowedFd<'_>,
    max: usize,
    timeout_ms: i32,
) -> io::Result<Vec<(u32, u64)>> {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; max.max(1)];
    // SAFETY: `events` has room for `events.len()` entries, the most the kernel writes.
    let n = check(unsafe {
        libc::epoll_wait(
            epoll.as_raw_fd(),
            events.as_mut_ptr(),
            events.len() as libc::c_int,
            timeout_ms,
        )
    } as libc::c_long)?;
    Ok(events[..n as usize]
        .iter()
        .map(|e| (e.events, e.u64))
        .collect())
}

/// Maps an image file read-only, so its pages can be handed to process_vm_writev without
/// first copying them into a buffer.
pub fn map_image(file: &std::fs::File) -> io::Result<memmap2::Mmap> {
    // SAFETY: the mapping is read-only and private to this process; the file is an image
    // being restored that nothing is expected to truncate meanwhile (if something did,
    // reads past the new end would fault, as for any mapped file).
    unsafe { memmap2::MmapOptions::new().map(file) }
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

/// A userfaultfd of another process (created inside it, taken with pidfd_getfd): its
/// UFFDIO_COPY allocates a page in that process and fills it in one step, without first
/// zeroing it, which is what makes it the fastest way to fill fresh anonymous memory.
pub struct Uffd(OwnedFd);

const UFFD_API: u64 = 0xAA;
const fn uffd_iowr(nr: u64, size: u64) -> libc::c_ulong {
    ((3 << 30) | (size << 16) | (0xAA << 8) | nr) as libc::c_ulong
}
const fn uffd_ior(nr: u64, size: u64) -> libc::c_ulong {
    ((2 << 30) | (size << 16) | (0xAA << 8) | nr) as libc::c_ulong
}

impl Uffd {
    /// Performs the API handshake on a userfaultfd.
    pub fn new(fd: OwnedFd) -> io::Result<Uffd> {
        let mut api = [UFFD_API, 0, 0];
        // SAFETY: UFFDIO_API reads and writes one struct uffdio_api (3 x u64) in `api`.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), uffd_iowr(0x3F, 24), api.as_mut_ptr()) };
        check(ret as libc::c_long)?;
        Ok(Uffd(fd))
    }

    /// Registers `[start, start + len)` for missing-page handling.
    pub fn register_missing(&self, start: u64, len: u64) -> io::Result<()> {
        let mut reg = [start, len, 1 /* UFFDIO_REGISTER_MODE_MISSING */, 0];
        // SAFETY: UFFDIO_REGISTER reads and writes one struct uffdio_register (4 x u64).
        let ret = unsafe { libc::ioctl(self.0.as_raw_fd(), uffd_iowr(0x00, 32), reg.as_mut_ptr()) };
        check(ret as libc::c_long).map(drop)
    }

    pub fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        let range = [start, len];
        // SAFETY: UFFDIO_UNREGISTER reads one struct uffdio_range (2 x u64).
        let ret = unsafe { libc::ioctl(self.0.as_raw_fd(), uffd_ior(0x01, 16), range.as_ptr()) };
        check(ret as libc::c_long).map(drop)
    }

    /// UFFDIO_COPY of `src` to `dst` in the other process; returns the bytes copied
    /// (short when a page there already exists).
    pub fn copy(&self, dst: u64, src: &[u8]) -> io::Result<usize> {
        let mut args = [dst, src.as_ptr() as u64, src.len() as u64, 0, 0];
        // SAFETY: UFFDIO_COPY reads `len` bytes at `src` (which we borrow) and writes the
        // result into the last field of `args` (struct uffdio_copy, 5 x 64 bits).
        let ret =
            unsafe { libc::ioctl(self.0.as_raw_fd(), uffd_iowr(0x03, 40), args.as_mut_ptr()) };
        let copied = args[4] as i64;
        if ret < 0 && copied <= 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(copied.max(0) as usize)
    }
}

/// ptrace(2) option of linux/ptrace.h that the libc crate lacks for Linux: while set, the
/// tracee's seccomp filters and strict mode are not enforced (CAP_SYS_ADMIN needed).
pub const PTRACE_O_SUSPEND_SECCOMP: libc::c_int = 0x0020_0000;

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

// ---------------------------------------------------------------------------
// The page-release watchdog (dump/release.rs): a process that outlives a killed dumper
// and writes the memory it had released back into the tree.
// ---------------------------------------------------------------------------

/// Where a release stands, as the watchdog reads it (`ReleaseLog::state`).
pub const RELEASE_ARMED: u64 = 0;
/// Released memory is written back by the dumper: a dumper that dies now only leaves
/// the pending SIGSTOP to cancel.
pub const RELEASE_WRITTEN_BACK: u64 = 1;
/// Nothing is left to undo (the tree was killed, or it is intact and holds no stop).
pub const RELEASE_DONE: u64 = 2;

/// Ranges the release log holds at most; a release that would need more stops.
pub const RELEASE_LOG_RANGES: usize = 32 * 1024;

/// The record a dumper shares with its watchdog: a state word and the released ranges
/// (address, length, offset in the pages file). Lives in a `MAP_SHARED` anonymous
/// mapping made before the fork, so both processes see the same memory.
#[repr(C)]
pub struct ReleaseLog {
    state: std::sync::atomic::AtomicU64,
    count: std::sync::atomic::AtomicU64,
    /// Non-zero while the thread below runs injected code: its word at `gadget` and its
    /// registers are then not its own, and the watchdog puts them back.
    injecting: std::sync::atomic::AtomicU64,
    tid: u64,
    gadget: u64,
    words: [u64; 3],
    regs: libc::user_regs_struct,
    /// The thread's own blocked-signal mask (all are blocked while our code runs).
    sigmask: u64,
    ranges: [[u64; 3]; RELEASE_LOG_RANGES],
}

/// A `ReleaseLog` in an anonymous shared mapping, unmapped on drop.
pub struct SharedReleaseLog {
    log: std::ptr::NonNull<ReleaseLog>,
}

impl SharedReleaseLog {
    pub fn new() -> io::Result<SharedReleaseLog> {
        let len = size_of::<ReleaseLog>();
        // SAFETY: a fresh anonymous mapping; nothing of ours is at the address it gets.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Zero-filled memory is a valid ReleaseLog: state ARMED, no ranges.
        let log = std::ptr::NonNull::new(addr.cast::<ReleaseLog>())
            .ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(SharedReleaseLog { log })
    }

    fn get(&self) -> &ReleaseLog {
        // SAFETY: the mapping is live and sized for a ReleaseLog until drop; shared
        // access goes through atomics, and the ranges are only written by `push` below
        // (through a raw pointer) before `count` publishes them.
        unsafe { self.log.as_ref() }
    }

    pub fn set_state(&self, state: u64) {
        self.get()
            .state
            .store(state, std::sync::atomic::Ordering::SeqCst);
    }

    /// Records that thread `tid` is about to run injected code: the `words` at `gadget`
    /// and the registers `regs` (as it must resume) are what the watchdog puts back.
    pub fn injecting(
        &self,
        tid: Pid,
        gadget: u64,
        words: [u64; 3],
        regs: &libc::user_regs_struct,
        sigmask: u64,
    ) {
        let log = self.log.as_ptr();
        // SAFETY: the fields are inside the mapping; only this process writes them, and
        // the watchdog reads them only after `injecting` publishes them (and only once
        // we are gone).
        unsafe {
            std::ptr::addr_of_mut!((*log).tid).write_volatile(tid.0 as u64);
            std::ptr::addr_of_mut!((*log).gadget).write_volatile(gadget);
            std::ptr::addr_of_mut!((*log).words).write_volatile(words);
            std::ptr::addr_of_mut!((*log).regs).write_volatile(*regs);
            std::ptr::addr_of_mut!((*log).sigmask).write_volatile(sigmask);
        }
        self.get()
            .injecting
            .store(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The thread's word and registers are its own again.
    pub fn injected(&self) {
        self.get()
            .injecting
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// Records a range; `false` when the log is full (nothing recorded).
    pub fn push(&self, addr: u64, len: u64, offset: u64) -> bool {
        let log = self.get();
        let n = log.count.load(std::sync::atomic::Ordering::SeqCst) as usize;
        if n >= RELEASE_LOG_RANGES {
            return false;
        }
        // SAFETY: slot `n` is inside the mapping and not yet published; only this
        // process writes ranges, and the watchdog reads only the first `count`.
        unsafe {
            let slot = std::ptr::addr_of_mut!((*self.log.as_ptr()).ranges[n]);
            slot.write_volatile([addr, len, offset]);
        }
        log.count
            .store(n as u64 + 1, std::sync::atomic::Ordering::SeqCst);
        true
    }
}

impl Drop for SharedReleaseLog {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no reference outlives self.
        unsafe { libc::munmap(self.log.as_ptr().cast(), size_of::<ReleaseLog>()) };
    }
}

/// The fds a release watchdog keeps; every other fd is closed in it.
pub struct WatchdogFds<'a> {
    /// A pidfd of the dumper: readable once the dumper is gone.
    pub dumper: BorrowedFd<'a>,
    /// A pidfd of the process whose memory was released.
    pub target: BorrowedFd<'a>,
    /// That process's /proc/PID/mem, open for writing.
    pub mem: BorrowedFd<'a>,
    /// The pages file the released ranges are saved in, open for reading.
    pub pages: BorrowedFd<'a>,
    /// A pipe's read end: a byte (or EOF) tells the watchdog to look at the state.
    pub wake: BorrowedFd<'a>,
}

/// Forks the watchdog of one page release (see dump/release.rs). It blocks every
/// signal, keeps only `fds`, and waits. If the state becomes `RELEASE_DONE` it exits.
/// If the dumper dies first, it holds a thread that was running injected code
/// (attaching to it), writes every logged range back from the pages file (state
/// `RELEASE_ARMED`), puts the held thread's words and registers back, and sends the
/// target SIGCONT, which ends the stop the dumper's pending SIGSTOP put it in; then it
/// exits. The caller reaps it.
///
/// The child runs only raw syscalls on data prepared before the fork (no allocation, no
/// locks), so this is safe to call from a multi-threaded process.
pub fn fork_release_watchdog(log: &SharedReleaseLog, fds: &WatchdogFds<'_>) -> io::Result<Pid> {
    let mut keep = [
        fds.dumper.as_raw_fd(),
        fds.target.as_raw_fd(),
        fds.mem.as_raw_fd(),
        fds.pages.as_raw_fd(),
        fds.wake.as_raw_fd(),
    ];
    keep.sort_unstable();
    let raw = (
        fds.dumper.as_raw_fd(),
        fds.target.as_raw_fd(),
        fds.mem.as_raw_fd(),
        fds.pages.as_raw_fd(),
        fds.wake.as_raw_fd(),
    );
    let log = log.log.as_ptr() as *const ReleaseLog;
    // SAFETY: fork has no memory-safety preconditions; the child below only makes
    // async-signal-safe syscalls on data prepared before the fork and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(Pid(pid));
    }
    // SAFETY: in the child only; `log` points into the shared mapping, which the fork
    // copied into this process; the fds in `keep` are open here.
    unsafe { release_watchdog(log, &keep, raw) }
}

/// The body of the watchdog process (see `fork_release_watchdog`).
///
/// # Safety
/// Only in the child of a fork, with `log` a mapped `ReleaseLog` and the fds open.
unsafe fn release_watchdog(
    log: *const ReleaseLog,
    keep: &[RawFd; 5],
    (dumper, target, mem, pages, wake): (RawFd, RawFd, RawFd, RawFd, RawFd),
) -> ! {
    use std::sync::atomic::Ordering::SeqCst;
    const BUF: usize = 1 << 20;
    // SAFETY: raw syscalls on integers and on memory of this process only.
    unsafe {
        watchdog_prologue(keep);
        let state = || (*log).state.load(SeqCst);
        let mut pfds = [
            libc::pollfd {
                fd: dumper,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            if state() == RELEASE_DONE {
                libc::syscall(libc::SYS_exit_group, 0);
            }
            let n = libc::syscall(libc::SYS_poll, pfds.as_mut_ptr(), 2, 1000);
            if n > 0 && pfds[1].revents != 0 {
                let mut byte = 0u8;
                if libc::syscall(libc::SYS_read, wake, &mut byte as *mut u8, 1) <= 0 {
                    // EOF: the dumper is exiting (its fds close before it is gone);
                    // from now on only its pidfd tells.
                    pfds[1].fd = -1;
                }
            }
            if n > 0 && pfds[0].revents != 0 {
                break;
            }
        }
        // The dumper is gone: its tracees were let go and stop on the pending SIGSTOP
        // before running any instruction of theirs (or were killed, if it died while
        // their code or registers were not their own).
        if state() == RELEASE_DONE {
            libc::syscall(libc::SYS_exit_group, 0);
        }
        // The thread first, if it was running our code: a madvise it has not made yet
        // would undo the memory written back. Held in a ptrace stop, it runs no more of
        // our code; its words and registers are put back once the memory is.
        let mut held = None;
        if (*log).injecting.load(SeqCst) != 0 {
            let tid = std::ptr::addr_of!((*log).tid).read_volatile() as libc::pid_t;
            // Until the kernel has let go of it for the dead dumper, attaching fails.
            for _ in 0..2000 {
                if libc::syscall(libc::SYS_ptrace, libc::PTRACE_SEIZE, tid, 0, 0) == 0 {
                    libc::syscall(libc::SYS_ptrace, libc::PTRACE_INTERRUPT, tid, 0, 0);
                    let mut status = 0;
                    let waited = libc::syscall(
                        libc::SYS_wait4,
                        tid,
                        &mut status as *mut libc::c_int,
                        libc::__WALL,
                        0,
                    );
                    if waited == tid as libc::c_long && libc::WIFSTOPPED(status) {
                        held = Some((tid, status));
                    }
                    break;
                }
                let pause = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 500_000,
                };
                libc::syscall(libc::SYS_nanosleep, &pause as *const libc::timespec, 0);
            }
        }
        if state() == RELEASE_ARMED {
            let buf = libc::syscall(
                libc::SYS_mmap,
                0,
                BUF,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if buf >= 0 {
                let count = ((*log).count.load(SeqCst) as usize).min(RELEASE_LOG_RANGES);
                for i in 0..count {
                    let [addr, len, offset] = std::ptr::addr_of!((*log).ranges[i]).read_volatile();
                    let mut done = 0u64;
                    while done < len {
                        let n = (len - done).min(BUF as u64);
                        // A short read would write garbage: that part stays missing
                        // (it cannot happen with the file we wrote these pages to).
                        let got = libc::syscall(libc::SYS_pread64, pages, buf, n, offset + done);
                        if got == n as libc::c_long {
                            libc::syscall(libc::SYS_pwrite64, mem, buf, n, addr + done);
                        }
                        done += n;
                    }
                }
            }
        }
        if let Some((tid, status)) = held {
            let gadget = std::ptr::addr_of!((*log).gadget).read_volatile();
            let words = std::ptr::addr_of!((*log).words).read_volatile();
            let regs = std::ptr::addr_of!((*log).regs);
            for (i, word) in words.into_iter().enumerate() {
                let at = gadget + 8 * i as u64;
                libc::syscall(libc::SYS_ptrace, libc::PTRACE_POKEDATA, tid, at, word);
            }
            libc::syscall(libc::SYS_ptrace, libc::PTRACE_SETREGS, tid, 0, regs);
            let sigmask = std::ptr::addr_of!((*log).sigmask);
            libc::syscall(libc::SYS_ptrace, libc::PTRACE_SETSIGMASK, tid, 8, sigmask);
            // Back into the group stop of the pending SIGSTOP; a signal it was about to
            // take (that SIGSTOP, if we came first) is passed on.
            let sig = if status >> 16 == 0 {
                libc::WSTOPSIG(status)
            } else {
                0
            };
            libc::syscall(libc::SYS_ptrace, libc::PTRACE_DETACH, tid, 0, sig);
        }
        libc::syscall(libc::SYS_pidfd_send_signal, target, libc::SIGCONT, 0, 0);
        libc::syscall(libc::SYS_exit_group, 0);
        // exit_group does not return.
        #[allow(clippy::empty_loop)]
        loop {}
    }
}

/// What every watchdog does first: block every signal (those for the dumper's process
/// group, Ctrl-C, must not end it), and close every fd but `keep` (sorted).
///
/// # Safety
/// Only in the child of a fork, before anything else.
unsafe fn watchdog_prologue(keep: &[RawFd]) {
    // SAFETY: raw syscalls on integers and on memory of this process only.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const libc::sigset_t,
            std::ptr::null_mut::<libc::sigset_t>(),
            8,
        );
        let mut next: libc::c_uint = 0;
        for &fd in keep {
            if (fd as libc::c_uint) > next {
                libc::syscall(libc::SYS_close_range, next, fd as libc::c_uint - 1, 0);
            }
            next = fd as libc::c_uint + 1;
        }
        libc::syscall(libc::SYS_close_range, next, libc::c_uint::MAX, 0);
    }
}

/// Forks a watchdog that writes `value` into `file` (a cgroup's freezer state, open for
/// writing) if the dumper (`dumper`, a pidfd) dies before a byte arrives on `done` (a
/// pipe's read end; EOF on it without the byte means the dumper is exiting), then
/// exits. The caller writes that byte and reaps it.
///
/// The child runs only raw syscalls on data prepared before the fork, so this is safe
/// to call from a multi-threaded process.
pub fn fork_thaw_watchdog(
    dumper: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    value: &'static [u8],
    done: BorrowedFd<'_>,
) -> io::Result<Pid> {
    let (dumper, file, done) = (dumper.as_raw_fd(), file.as_raw_fd(), done.as_raw_fd());
    let mut keep = [dumper, file, done];
    keep.sort_unstable();
    // SAFETY: fork has no memory-safety preconditions; the child below only makes
    // async-signal-safe syscalls on data prepared before the fork and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(Pid(pid));
    }
    // SAFETY: in the child only, on fds open here and a static byte string.
    unsafe {
        watchdog_prologue(&keep);
        loop {
            let mut pfds = [
                libc::pollfd {
                    fd: done,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: dumper,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if libc::syscall(libc::SYS_poll, pfds.as_mut_ptr(), 2, -1) <= 0 {
                continue;
            }
            let mut byte = 0u8;
            if pfds[0].revents != 0
                && libc::syscall(libc::SYS_read, done, &mut byte as *mut u8, 1) == 1
            {
                break;
            }
            // The dumper is gone, or exiting: its fds (our pipe's far end) close before
            // its pidfd says so, and it writes the byte before it ever closes the pipe.
            if pfds[1].revents != 0 || pfds[0].revents != 0 {
                libc::syscall(libc::SYS_pwrite64, file, value.as_ptr(), value.len(), 0);
                break;
            }
        }
        libc::syscall(libc::SYS_exit_group, 0);
        #[allow(clippy::empty_loop)]
        loop {}
    }
}
