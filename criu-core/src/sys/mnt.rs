//! Mounts: a detached copy of one mount, to read what it holds without what is mounted
//! over parts of it; a procfs of a given pid namespace.

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

/// mount_setattr(2) on the mount whose root is `path` (of the calling thread's mount
/// namespace): sets or clears its read-only flag, and nothing else. The superblock's
/// own read-only state is not the mount's: a mount of a read-only superblock stays
/// unwritable.
pub fn mount_set_readonly(path: &std::path::Path, readonly: bool) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    /// struct mount_attr of linux/mount.h.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let (attr_set, attr_clr) = if readonly {
        (libc::MOUNT_ATTR_RDONLY, 0)
    } else {
        (0, libc::MOUNT_ATTR_RDONLY)
    };
    let attr = MountAttr {
        attr_set,
        attr_clr,
        propagation: 0,
        userns_fd: 0,
    };
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: mount_setattr reads `size` bytes of `attr` and the NUL-terminated path,
    // both of which outlive the call; it writes nothing of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            0 as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new fd the kernel returned (or the error of a negative result).
fn new_fd(ret: libc::c_long) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd returned by the kernel, owned here only.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// Mounts a procfs of the pid namespace `pidns` (an nsfs fd) at `target` in the calling
/// thread's mount namespace, nosuid, nodev and noexec: the new mount API with procfs's
/// `pidns` parameter (Linux 6.15), so the caller needs no process inside that pid
/// namespace, only CAP_SYS_ADMIN over it and over the mount namespace (a host root
/// mounting the /proc of a container whose pid namespace its own user namespace owns).
/// See proc(5), fsopen(2), fsconfig(2), fsmount(2), move_mount(2).
pub fn mount_proc(pidns: BorrowedFd<'_>, target: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_target = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: fsopen reads the NUL-terminated name and returns a new fd.
    let context = new_fd(unsafe {
        libc::syscall(
            libc::SYS_fsopen,
            c"proc".as_ptr(),
            libc::FSOPEN_CLOEXEC as libc::c_uint,
        )
    })?;
    let fsconfig = |cmd: libc::c_uint, key: *const libc::c_char, aux: libc::c_int| {
        // SAFETY: `context` is our open fs context; `key` is null or a NUL-terminated
        // string that outlives the call; no value pointer is passed (these commands
        // take an fd in `aux`, or nothing).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                context.as_raw_fd(),
                cmd,
                key,
                std::ptr::null::<libc::c_void>(),
                aux,
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    fsconfig(
        libc::FSCONFIG_SET_FD as libc::c_uint,
        c"pidns".as_ptr(),
        pidns.as_raw_fd(),
    )
    .map_err(|e| io::Error::new(e.kind(), format!("proc's pidns parameter: {e}")))?;
    fsconfig(
        libc::FSCONFIG_CMD_CREATE as libc::c_uint,
        std::ptr::null(),
        0,
    )?;
    let attrs = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC;
    // SAFETY: fsmount takes our fs context fd and integer flags, and returns a new fd.
    let mount = new_fd(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            context.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC as libc::c_uint,
            attrs as libc::c_uint,
        )
    })?;
    // SAFETY: move_mount reads two NUL-terminated paths that outlive the call (the
    // empty one with MOVE_MOUNT_F_EMPTY_PATH names the detached mount `mount` itself).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c_target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
