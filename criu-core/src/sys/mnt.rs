//! Mounts: a detached copy of one mount, to read what it holds without what is mounted
//! over parts of it.

use super::*;

/// open_tree(2) with OPEN_TREE_CLONE of the mount at `path` under the directory `dir`
/// (a mount of the calling thread's mount namespace): a detached copy of that one
/// mount, without the mounts below it, gone when the fd closes. Its files are reached
/// through `/proc/self/fd/N/...`.
pub fn open_tree_clone(dir: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: open_tree reads the NUL-terminated path, which outlives the call, and
    // returns a new fd that nothing else owns.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir.as_raw_fd(),
            c_path.as_ptr(),
            (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd returned by the kernel, owned here only.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
