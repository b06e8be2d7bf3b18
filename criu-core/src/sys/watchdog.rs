//! Processes that outlive a dumper killed outright and undo what it changed (released memory, a frozen cgroup).

use super::*;

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
pub(super) unsafe fn release_watchdog(
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
pub(super) unsafe fn watchdog_prologue(keep: &[RawFd]) {
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
        super::fd::close_all_fds_except(keep);
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

/// Sockets a TCP watchdog takes out of repair mode, at most.
pub const TCP_WATCH_SOCKETS: usize = 4096;
/// Bytes of undo commands (NUL-separated argv, absolute program path first) it keeps.
const TCP_WATCH_COMMANDS: usize = 256 << 10;
/// Arguments of one undo command, at most.
const TCP_WATCH_ARGS: usize = 32;
/// Undo commands, at most.
const TCP_WATCH_COMMAND_COUNT: usize = 8192;

/// A process that outlives a dumper killed outright while it holds TCP connections
/// in repair mode under a network lock (see files/tcp.rs): it takes each socket it was
/// given out of repair mode (with its SO_REUSEADDR back), then runs each undo command it
/// was given (the lock's removal), and exits. Told to stand down ([`TcpWatchdog::finish`])
/// it exits without doing anything.
///
/// It is told through a seqpacket socket: a socket to watch (its fd passed along, with
/// SO_REUSEADDR's value), a command to run, or the end. A dumper that dies closes its end.
pub struct TcpWatchdog {
    pid: Pid,
    control: OwnedFd,
}

impl TcpWatchdog {
    /// Forks the watchdog of the dumper `dumper` (a pidfd of it).
    ///
    /// The child runs only raw syscalls on memory allocated before the fork (no
    /// allocation, no locks), so this is safe to call from a multi-threaded process.
    pub fn spawn(dumper: BorrowedFd<'_>) -> io::Result<TcpWatchdog> {
        let (ours, theirs) = super::socketpair(libc::SOCK_SEQPACKET)?;
        // Its whole memory, allocated here: the child must not allocate.
        let mut socks = vec![(0 as RawFd, 0u8); TCP_WATCH_SOCKETS].into_boxed_slice();
        let mut commands = vec![0u8; TCP_WATCH_COMMANDS].into_boxed_slice();
        let mut cmds = vec![(0usize, 0usize); TCP_WATCH_COMMAND_COUNT].into_boxed_slice();
        let mut argv =
            vec![std::ptr::null::<libc::c_char>(); TCP_WATCH_ARGS + 1].into_boxed_slice();
        let (dumper, control) = (dumper.as_raw_fd(), theirs.as_raw_fd());
        let mut keep = [dumper, control];
        keep.sort_unstable();
        // SAFETY: fork has no memory-safety preconditions; the child below only makes
        // async-signal-safe syscalls on memory allocated before the fork, and never
        // returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid > 0 {
            drop(theirs);
            return Ok(TcpWatchdog {
                pid: Pid(pid),
                control: ours,
            });
        }
        // SAFETY: in the child only, on fds open here and buffers it owns.
        unsafe {
            tcp_watchdog(
                &keep,
                dumper,
                control,
                &mut socks,
                &mut commands,
                &mut cmds,
                &mut argv,
            )
        }
    }

    /// Hands it a socket to take out of repair mode (`reuseaddr`: SO_REUSEADDR's value
    /// to give back) if the dumper dies.
    pub fn watch_socket(&self, sock: BorrowedFd<'_>, reuseaddr: bool) -> io::Result<()> {
        let payload = [b'S', u8::from(reuseaddr)];
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        let mut control = [0u64; 4]; // room for one fd, 8-aligned as cmsghdr needs
                                     // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
        // SAFETY: msg_control covers `control`, large enough for one header with one fd;
        // CMSG_FIRSTHDR points into it and CMSG_DATA at its data, which holds an int.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
            libc::CMSG_DATA(cmsg)
                .cast::<RawFd>()
                .write_unaligned(sock.as_raw_fd());
        }
        // SAFETY: msg points at `iov` and `control`, both alive for the call.
        let n = unsafe { libc::sendmsg(self.control.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        check(n as libc::c_long).map(drop)
    }

    /// Hands it a command to run if the dumper dies: `argv[0]` an absolute path.
    pub fn on_death_run(&self, argv: &[&str]) -> io::Result<()> {
        if argv.is_empty() || argv.len() > TCP_WATCH_ARGS {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let mut payload = vec![b'X'];
        for a in argv {
            if a.as_bytes().contains(&0) {
                return Err(io::Error::from(io::ErrorKind::InvalidInput));
            }
            payload.extend_from_slice(a.as_bytes());
            payload.push(0);
        }
        super::send(self.control.as_fd(), &payload, libc::MSG_NOSIGNAL).map(drop)
    }

    /// Tells it to stand down and reaps it: the dumper undid everything itself, or
    /// leaves it on purpose (a tree killed after a complete dump).
    pub fn finish(self) {
        let _ = super::send(self.control.as_fd(), b"E", libc::MSG_NOSIGNAL);
        let _ = wait_all(self.pid);
    }
}

/// The body of the TCP watchdog (see [`TcpWatchdog`]).
///
/// # Safety
/// Only in the child of a fork, with the fds open and the buffers its own.
unsafe fn tcp_watchdog(
    keep: &[RawFd],
    dumper: RawFd,
    control: RawFd,
    socks: &mut [(RawFd, u8)],
    commands: &mut [u8],
    cmds: &mut [(usize, usize)],
    argv: &mut [*const libc::c_char],
) -> ! {
    // SAFETY: raw syscalls on fds open here and on the buffers passed in.
    unsafe {
        watchdog_prologue(keep);
        let (mut nsocks, mut ncmds, mut used) = (0usize, 0usize, 0usize);
        let undo = loop {
            let mut pfds = [
                libc::pollfd {
                    fd: control,
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
            if pfds[0].revents == 0 {
                // Only the dumper's pidfd: it is gone, and told us nothing more.
                break true;
            }
            // Each message lands after the commands kept so far; only a command stays.
            let room = commands.len() - used;
            let mut iov = libc::iovec {
                iov_base: commands.as_mut_ptr().add(used).cast(),
                iov_len: room,
            };
            let mut cbuf = [0u64; 4];
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = size_of_val(&cbuf);
            let n = libc::syscall(libc::SYS_recvmsg, control, &mut msg, 0);
            if n == 0 {
                // The dumper's end closed without the end message: it died.
                break true;
            }
            if n < 0 {
                continue;
            }
            let n = n as usize;
            match commands[used] {
                b'S' => {
                    let cmsg = libc::CMSG_FIRSTHDR(&msg);
                    if !cmsg.is_null() && nsocks < socks.len() {
                        let fd = libc::CMSG_DATA(cmsg).cast::<RawFd>().read_unaligned();
                        let reuse = if n > 1 { commands[used + 1] } else { 0 };
                        socks[nsocks] = (fd, reuse);
                        nsocks += 1;
                    }
                }
                b'X' if n < room && ncmds < cmds.len() => {
                    cmds[ncmds] = (used + 1, n - 1);
                    ncmds += 1;
                    used += n;
                }
                b'E' => break false,
                _ => {}
            }
        };
        if undo {
            const TCP_REPAIR: libc::c_int = 19;
            let len = size_of::<libc::c_int>() as libc::socklen_t;
            for &(fd, reuse) in &socks[..nsocks] {
                let off: libc::c_int = 0;
                let reuse = libc::c_int::from(reuse);
                libc::syscall(
                    libc::SYS_setsockopt,
                    fd,
                    libc::IPPROTO_TCP,
                    TCP_REPAIR,
                    &off as *const libc::c_int,
                    len,
                );
                libc::syscall(
                    libc::SYS_setsockopt,
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_REUSEADDR,
                    &reuse as *const libc::c_int,
                    len,
                );
            }
            for &(off, len) in &cmds[..ncmds] {
                // NUL-terminated arguments, one after the other.
                let mut nargs = 0;
                let mut start = off;
                for i in off..off + len {
                    if commands[i] == 0 {
                        if nargs < argv.len() - 1 {
                            argv[nargs] = commands.as_ptr().add(start).cast();
                            nargs += 1;
                        }
                        start = i + 1;
                    }
                }
                if nargs == 0 {
                    continue;
                }
                argv[nargs] = std::ptr::null();
                let child = libc::syscall(libc::SYS_fork);
                if child == 0 {
                    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
                    libc::syscall(libc::SYS_execve, argv[0], argv.as_ptr(), envp.as_ptr());
                    libc::syscall(libc::SYS_exit_group, 127);
                }
                if child > 0 {
                    let mut status = 0;
                    libc::syscall(
                        libc::SYS_wait4,
                        child,
                        &mut status as *mut libc::c_int,
                        0,
                        std::ptr::null_mut::<libc::rusage>(),
                    );
                }
            }
        }
        libc::syscall(libc::SYS_exit_group, 0);
        #[allow(clippy::empty_loop)]
        loop {}
    }
}
