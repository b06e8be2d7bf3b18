//! The engine's only unsafe code: thin wrappers over the kernel interfaces it uses
//! (ptrace, pidfds, process_vm_readv, the PAGEMAP_SCAN ioctl, kcmp). Each wrapper checks
//! the result and returns `io::Result`; each unsafe block says why it is sound.
//!
//! ptrace requests must come from the thread that attached the tracee (see
//! `freeze.rs`); the other calls work from any thread.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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
    check(unsafe { libc::ptrace(request, tid.0, addr as *mut libc::c_void, data as *mut libc::c_void) })
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
    ptrace(libc::PTRACE_GETEVENTMSG, tid, 0, &mut msg as *mut _ as usize)?;
    Ok(msg)
}

/// The general registers (`NT_PRSTATUS`), including fs_base and gs_base.
pub fn ptrace_get_regs(tid: Pid) -> io::Result<libc::user_regs_struct> {
    // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: &mut regs as *mut _ as *mut libc::c_void, iov_len: size_of_val(&regs) };
    ptrace(libc::PTRACE_GETREGSET, tid, libc::NT_PRSTATUS as usize, &mut iov as *mut _ as usize)?;
    Ok(regs)
}

/// Sets the general registers (`NT_PRSTATUS`).
pub fn ptrace_set_regs(tid: Pid, regs: &libc::user_regs_struct) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: regs as *const _ as *mut libc::c_void, iov_len: size_of_val(regs) };
    ptrace(libc::PTRACE_SETREGSET, tid, libc::NT_PRSTATUS as usize, &mut iov as *mut _ as usize).map(drop)
}

/// NT_X86_XSTATE, the kernel's note type for the xsave area.
const NT_X86_XSTATE: usize = 0x202;

/// The xsave area in the standard (non-compacted) layout, at the size the kernel reports.
pub fn ptrace_get_xstate(tid: Pid) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 16 << 10];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    ptrace(libc::PTRACE_GETREGSET, tid, NT_X86_XSTATE, &mut iov as *mut _ as usize)?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// Sets the xsave area; `xstate` must have the size `ptrace_get_xstate` returned.
pub fn ptrace_set_xstate(tid: Pid, xstate: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: xstate.as_ptr() as *mut libc::c_void, iov_len: xstate.len() };
    ptrace(libc::PTRACE_SETREGSET, tid, NT_X86_XSTATE, &mut iov as *mut _ as usize).map(drop)
}

/// The blocked-signal mask of a stopped tracee (PTRACE_GETSIGMASK, 64 signals).
pub fn ptrace_get_sigmask(tid: Pid) -> io::Result<u64> {
    let mut mask: u64 = 0;
    ptrace(libc::PTRACE_GETSIGMASK, tid, 8, &mut mask as *mut u64 as usize)?;
    Ok(mask)
}

/// Sets the blocked-signal mask of a stopped tracee.
pub fn ptrace_set_sigmask(tid: Pid, mask: u64) -> io::Result<()> {
    ptrace(libc::PTRACE_SETSIGMASK, tid, 8, &mask as *const u64 as usize).map(drop)
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
        let args = PeekArgs { off: out.len() as u64, flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 }, nr: BATCH as i32 };
        let mut buf = [[0u8; SIGINFO_SIZE]; BATCH];
        let n = ptrace(libc::PTRACE_PEEKSIGINFO, tid, &args as *const _ as usize, buf.as_mut_ptr() as usize)? as usize;
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
    ptrace(libc::PTRACE_GET_RSEQ_CONFIGURATION, tid, size_of::<Raw>(), &mut raw as *mut Raw as usize)?;
    Ok(RseqConfig { abi_pointer: raw.rseq_abi_pointer, abi_size: raw.rseq_abi_size, flags: raw.flags, signature: raw.signature })
}

/// Reads one word of tracee memory (PTRACE_PEEKDATA).
pub fn ptrace_peek(tid: Pid, addr: u64) -> io::Result<u64> {
    // PEEKDATA returns the word itself, so -1 is ambiguous: clear errno first.
    // SAFETY: errno is thread-local; writing it is always allowed.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: PEEKDATA reads tracee memory into the return value; no local buffer.
    let word = unsafe { libc::ptrace(libc::PTRACE_PEEKDATA, tid.0, addr as *mut libc::c_void, std::ptr::null_mut::<libc::c_void>()) };
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
    Stopped { sig: i32, event: i32 },
    Exited(i32),
    Signaled(i32),
}

fn decode_status(status: i32) -> WaitStatus {
    if libc::WIFSTOPPED(status) {
        WaitStatus::Stopped { sig: libc::WSTOPSIG(status), event: (status >> 16) & 0xff }
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
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("task {tid} did not stop within {timeout:?}")));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
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

/// process_vm_readv(2): copies `remote` ranges of `pid` into `local`, in order; returns
/// the bytes copied (short when a remote page is not mapped).
pub fn process_vm_readv(pid: Pid, local: &mut [u8], remote: &[(u64, usize)]) -> io::Result<usize> {
    let local_iov = libc::iovec { iov_base: local.as_mut_ptr().cast(), iov_len: local.len() };
    let remote_iov: Vec<libc::iovec> =
        remote.iter().map(|&(addr, len)| libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: len }).collect();
    // SAFETY: the local iovec covers exactly `local`, which we borrow mutably; remote
    // addresses are only interpreted by the kernel in the other process.
    let n = unsafe { libc::process_vm_readv(pid.0, &local_iov, 1, remote_iov.as_ptr(), remote_iov.len() as u64, 0) };
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
pub fn pagemap_scan(pagemap: BorrowedFd<'_>, start: u64, end: u64, any_of: u64, return_mask: u64) -> io::Result<Vec<PageRegion>> {
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
    const PAGEMAP_SCAN: libc::c_ulong = (3 << 30) | ((size_of::<PmScanArg>() as libc::c_ulong) << 16) | ((b'f' as libc::c_ulong) << 8) | 16;
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
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg as *mut PmScanArg) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        out.extend(buf[..n as usize].iter().map(|r| PageRegion { start: r.start, end: r.end, categories: r.categories }));
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

/// The user xsave features this CPU and kernel support (CPUID leaf 0xD, sub-leaf 0).
pub fn xsave_features() -> u64 {
    let r = std::arch::x86_64::__cpuid_count(0xd, 0);
    u64::from(r.eax) | (u64::from(r.edx) << 32)
}

/// tee(2): duplicates up to `len` bytes from pipe `from` into pipe `to` without consuming
/// them.
pub fn tee(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on two fds we borrow.
    let n = unsafe { libc::tee(from.as_raw_fd(), to.as_raw_fd(), len, libc::SPLICE_F_NONBLOCK) };
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
