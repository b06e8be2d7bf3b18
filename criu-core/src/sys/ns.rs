//! Namespaces: setns, unshare, and running code in another namespace.

use super::*;

/// setns(2): moves the calling thread into the namespace `fd` refers to.
pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    let nstype = nix::sched::CloneFlags::from_bits_retain(nstype);
    Ok(nix::sched::setns(fd, nstype)?)
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
                // A thread joins a mount namespace only with an fs_struct (root, cwd)
                // of its own.
                if nstype == libc::CLONE_NEWNS {
                    unshare(libc::CLONE_FS)?;
                }
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

/// unshare(2) for the calling thread (`CLONE_FS` gives it a cwd of its own).
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    Ok(nix::sched::unshare(
        nix::sched::CloneFlags::from_bits_retain(flags),
    )?)
}
