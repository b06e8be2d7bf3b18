//! pidfds made for a restore: of a live task with the flags a dumped one had, and of a
//! process that is already dead (for a dumped pidfd whose process had exited).

use super::*;

/// pidfd_open(2) with `flags` (`PIDFD_NONBLOCK`, which is `O_NONBLOCK`, or 0).
pub fn pidfd_open_with(pid: Pid, flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.0, flags) })?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Kills and reaps a child of ours when it drops.
struct ChildGuard(libc::pid_t);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // SAFETY: plain syscalls with integer arguments; the pid is our unreaped child,
        // so it names no other process.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
        }
        let mut status = 0;
        loop {
            // SAFETY: status is a valid out pointer.
            let ret = unsafe { libc::waitpid(self.0, &mut status, libc::__WALL) };
            if ret >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
    }
}

/// pidfds of one process that is dead by the time this returns: a child forked for
/// the purpose, one pidfd opened on it per entry of `flags` (each its own open file
/// description, all of the same process, so they share their pidfs inode), then
/// killed and reaped. Such a pidfd reports the process as exited (poll gives POLLIN,
/// pidfd_send_signal ESRCH), as one whose process died does.
///
/// The child runs only raw syscalls (no allocation, no locks), so this is safe to call
/// from a multi-threaded process.
pub fn pidfds_of_dead_process(flags: &[u32]) -> io::Result<Vec<OwnedFd>> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: fork has no memory-safety preconditions; the child below only calls
    // async-signal-safe syscalls.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: raw syscalls with integer arguments only; no allocation, no locks.
        unsafe {
            // Gone with us too, should we die before killing it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            loop {
                libc::pause();
            }
        }
    }
    let child = ChildGuard(pid);
    let fds = flags
        .iter()
        .map(|&f| pidfd_open_with(Pid(pid), f))
        .collect::<io::Result<Vec<_>>>()?;
    // Killed and reaped here, before the pidfds are handed out.
    drop(child);
    Ok(fds)
}

/// Whether the process of `pidfd` has exited: its pidfd polls readable.
pub fn pidfd_exited(pidfd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, owned by us, for the length given; timeout 0.
    let n = check(unsafe { libc::poll(&mut pfd, 1, 0) } as libc::c_long)?;
    Ok(n == 1 && pfd.revents & libc::POLLIN != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_pidfds_share_one_dead_process() {
        let fds = pidfds_of_dead_process(&[0, libc::O_NONBLOCK as u32]).unwrap();
        assert_eq!(fds.len(), 2);
        for fd in &fds {
            assert!(pidfd_exited(fd.as_fd()).unwrap());
        }
        let ino = |fd: &OwnedFd| {
            let f = std::fs::File::from(fd.try_clone().unwrap());
            std::os::unix::fs::MetadataExt::ino(&f.metadata().unwrap())
        };
        assert_eq!(ino(&fds[0]), ino(&fds[1]));
        let flags = fcntl_get(fds[1].as_fd(), libc::F_GETFL).unwrap();
        assert_ne!(flags & libc::O_NONBLOCK, 0);
    }

    #[test]
    fn a_live_pidfd_does_not_poll_readable() {
        let me = pidfd_open_with(Pid(std::process::id() as i32), 0).unwrap();
        assert!(!pidfd_exited(me.as_fd()).unwrap());
    }
}
