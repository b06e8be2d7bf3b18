//! User namespaces: which user namespace owns a namespace, and which is a user
//! namespace's parent (the nsfs ioctls).

use super::*;

/// `_IO(0xb7, 0x1)`: a new fd of the user namespace that owns the namespace.
const NS_GET_USERNS: libc::c_ulong = 0xb701;
/// `_IO(0xb7, 0x2)`: a new fd of the parent of a user (or pid) namespace.
const NS_GET_PARENT: libc::c_ulong = 0xb702;

fn ns_ioctl_inode(ns: BorrowedFd<'_>, request: libc::c_ulong) -> io::Result<u64> {
    // SAFETY: the nsfs ioctls take no argument and return a new fd (or -1); `ns` is a
    // valid open fd for the duration of the call.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), request) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd, and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(owned);
    Ok(std::os::unix::fs::MetadataExt::ino(&file.metadata()?))
}

/// `_IO(0xb7, 0x3)`: the CLONE_NEW* type of the namespace.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The kind of namespace the fd `ns` is (its CLONE_NEW* flag), or an error when it is
/// no namespace (ENOTTY). Unlike its `/proc/self/fd` link, which reads `net:[INODE]`
/// only when the namespace was opened through `/proc/PID/ns`, this also tells a
/// namespace opened through a bind mount of it (`/run/netns/NAME`).
pub fn ns_type(ns: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the type (or -1); `ns` is a
    // valid open fd for the duration of the call.
    let ty = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_NSTYPE) };
    if ty < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ty)
}

/// The inode of the user namespace owning the namespace `ns` (an nsfs fd).
pub fn ns_owner_inode(ns: BorrowedFd<'_>) -> io::Result<u64> {
    ns_ioctl_inode(ns, NS_GET_USERNS)
}

/// The inode of the parent of the user namespace `ns`. EPERM when the parent is
/// outside the caller's own user namespace.
pub fn userns_parent_inode(ns: BorrowedFd<'_>) -> io::Result<u64> {
    ns_ioctl_inode(ns, NS_GET_PARENT)
}

/// Sends our fd number `fd` over the unix socket `sock` (one byte, with `fd` as an
/// SCM_RIGHTS message), for a process that cannot take it with pidfd_getfd.
pub fn send_fd(sock: BorrowedFd<'_>, fd: RawFd) -> io::Result<()> {
    // SAFETY: the borrow lasts for this one call only, and the kernel checks the number
    // (EBADF for one that is not open): nothing of ours is closed or aliased.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    send_with_fds(sock, b"f", &[borrowed], 0, None).map(drop)
}
