//! ptrace(2) requests, the xsave layout they read, and the seccomp filters they fetch.

use super::*;

/// The same id as nix names it.
pub(super) fn nix_pid(tid: Pid) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(tid.0)
}

// Requests that pass a signal on (PTRACE_CONT, PTRACE_SYSCALL, PTRACE_DETACH) stay on the
// raw call below: nix's `Signal` cannot hold a real-time signal, and a tracee may be
// stopped with one. So do the register sets, the sigmask and PEEKSIGINFO, which nix
// does not wrap.

/// One ptrace request with integer-like arguments.
pub(super) fn ptrace(
    request: libc::c_uint,
    tid: Pid,
    addr: usize,
    data: usize,
) -> io::Result<libc::c_long> {
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
    let options = nix::sys::ptrace::Options::from_bits_retain(options);
    Ok(nix::sys::ptrace::seize(nix_pid(tid), options)?)
}

/// ptrace(2) PTRACE_INTERRUPT: stop a seized task (it reports PTRACE_EVENT_STOP).
pub fn ptrace_interrupt(tid: Pid) -> io::Result<()> {
    Ok(nix::sys::ptrace::interrupt(nix_pid(tid))?)
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
    Ok(nix::sys::ptrace::getevent(nix_pid(tid))? as u64)
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
pub(super) const NT_X86_XSTATE: usize = 0x202;

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
    // nix tells a word of all ones from an error (PEEKDATA returns the word itself).
    Ok(nix::sys::ptrace::read(nix_pid(tid), addr as nix::sys::ptrace::AddressType)? as u64)
}

/// Writes one word of tracee memory (PTRACE_POKEDATA); works on read-only text too.
pub fn ptrace_poke(tid: Pid, addr: u64, word: u64) -> io::Result<()> {
    Ok(nix::sys::ptrace::write(
        nix_pid(tid),
        addr as nix::sys::ptrace::AddressType,
        word as libc::c_long,
    )?)
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

/// A `user_regs_struct` of zeros (a starting point for tests and register images).
pub fn zeroed_regs() -> libc::user_regs_struct {
    // SAFETY: user_regs_struct is plain integers; all zeros is a valid value.
    unsafe { std::mem::zeroed() }
}

/// ptrace requests of linux/ptrace.h that the libc crate lacks for Linux.
pub(super) const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
pub(super) const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;

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

/// ptrace(2) PTRACE_SETOPTIONS.
pub fn ptrace_setoptions(tid: Pid, options: libc::c_int) -> io::Result<()> {
    let options = nix::sys::ptrace::Options::from_bits_retain(options);
    Ok(nix::sys::ptrace::setoptions(nix_pid(tid), options)?)
}

/// ptrace(2) PTRACE_SYSCALL: run to the next syscall entry or exit.
pub fn ptrace_syscall(tid: Pid, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_SYSCALL, tid, 0, sig as usize).map(drop)
}

/// ptrace(2) option of linux/ptrace.h that the libc crate lacks for Linux: while set, the
/// tracee's seccomp filters and strict mode are not enforced (CAP_SYS_ADMIN needed).
pub const PTRACE_O_SUSPEND_SECCOMP: libc::c_int = 0x0020_0000;
