//! File descriptors: fcntl, pipes, lseek, epoll/timerfd/signalfd/inotify/eventfd, ioctls, opening by path or handle.

use super::*;

/// tee(2): duplicates up to `len` bytes from pipe `from` into pipe `to` without consuming
/// them.
pub fn tee(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    let flags = nix::fcntl::SpliceFFlags::SPLICE_F_NONBLOCK;
    Ok(nix::fcntl::tee(from, to, len, flags)?)
}

/// pipe2(2) with O_CLOEXEC (and extra `flags`).
pub fn pipe(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::from_bits_retain(flags);
    Ok(nix::unistd::pipe2(flags)?)
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

/// openat(2) of `name` below directory `dir`, read-only and close-on-exec.
pub fn openat_read(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> io::Result<std::fs::File> {
    // SAFETY: openat on a borrowed directory fd with a NUL-terminated name.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    } as libc::c_long)?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { std::fs::File::from_raw_fd(fd as RawFd) })
}

/// lseek(2); `None` when `SEEK_DATA`/`SEEK_HOLE` find nothing past `offset` (ENXIO).
pub fn lseek(fd: BorrowedFd<'_>, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    use nix::unistd::Whence;
    let whence = match whence {
        libc::SEEK_SET => Whence::SeekSet,
        libc::SEEK_CUR => Whence::SeekCur,
        libc::SEEK_END => Whence::SeekEnd,
        libc::SEEK_DATA => Whence::SeekData,
        libc::SEEK_HOLE => Whence::SeekHole,
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    match nix::unistd::lseek(fd.as_raw_fd(), offset as libc::off_t, whence) {
        Ok(at) => Ok(Some(at as u64)),
        Err(nix::errno::Errno::ENXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
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

/// poll(2) on one fd without waiting: the events of `events` that are ready now.
pub fn poll_now(fd: BorrowedFd<'_>, events: libc::c_short) -> io::Result<libc::c_short> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one pollfd, ours, for the length of the call; a zero timeout never blocks.
    let ret = unsafe { libc::poll(&mut pfd, 1, 0) };
    check(ret as libc::c_long)?;
    Ok(pfd.revents & events)
}

/// An ioctl(2) without argument that returns a new fd: `SIOCGSKNS` (the socket's
/// network namespace), `SIOCUNIXFILE` (an `O_PATH` fd on a unix socket's bound file).
pub fn ioctl_get_fd(fd: BorrowedFd<'_>, request: libc::c_ulong) -> io::Result<OwnedFd> {
    // SAFETY: these requests take no argument and return a new fd.
    let ret = check(unsafe { libc::ioctl(fd.as_raw_fd(), request as _, 0) } as libc::c_long)?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// The filesystem type (`f_type` of fstatfs(2)) of the file `fd` is open on.
pub fn fstatfs_type(fd: BorrowedFd<'_>) -> io::Result<i64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs writes one struct statfs into `st`, which is large enough.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) } as libc::c_long)?;
    // SAFETY: the call succeeded, so the kernel filled the struct (it was zeroed anyway).
    Ok(unsafe { st.assume_init() }.f_type)
}

/// eventfd(2) with `EFD_CLOEXEC` (and extra `flags`).
pub fn eventfd(initval: u32, flags: libc::c_int) -> io::Result<OwnedFd> {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::from_bits_retain(flags);
    Ok(EventFd::from_value_and_flags(initval, flags)?.into())
}

/// Adds one to an eventfd's counter, which makes it readable (wakes its pollers).
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    nix::unistd::write(fd, &1u64.to_ne_bytes())?;
    Ok(())
}

/// epoll_create1(2) with `EPOLL_CLOEXEC`.
pub fn epoll_create() -> io::Result<OwnedFd> {
    use nix::sys::epoll::{Epoll, EpollCreateFlags};
    Ok(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?.0)
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

/// fanotify_init(2): a new fanotify group with `flags` (`FAN_CLASS_*`, `FAN_NONBLOCK`...)
/// and `event_f_flags` (the open flags of the fds its events carry).
pub fn fanotify_init(flags: u32, event_f_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = check(unsafe { libc::fanotify_init(flags, event_f_flags) } as libc::c_long)?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// fanotify_mark(2) on the object `path` names (followed from the current directory).
pub fn fanotify_mark(
    fd: BorrowedFd<'_>,
    flags: u32,
    mask: u64,
    path: &std::path::Path,
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call; the rest are
    // integers.
    let ret =
        unsafe { libc::fanotify_mark(fd.as_raw_fd(), flags, mask, libc::AT_FDCWD, path.as_ptr()) };
    check(ret as libc::c_long).map(drop)
}

/// Marks every fd from `first` on close-on-exec (close_range(2) with
/// CLOSE_RANGE_CLOEXEC): what a process leaves open by accident does not reach the
/// program it execs.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    close_range(first, CLOSE_RANGE_CLOEXEC)
}

/// Closes every fd but those in `keep` (ascending; negative entries are skipped) with
/// raw close_range(2) calls only: for a freshly forked child, where nothing may
/// allocate or take a lock.
///
/// # Safety
/// Only in a child of a fork, which owns every fd it closes (nothing else of the
/// process uses them).
pub(super) unsafe fn close_all_fds_except(keep: &[RawFd]) {
    let mut next: libc::c_uint = 0;
    for &fd in keep.iter().filter(|&&fd| fd >= 0) {
        if (fd as libc::c_uint) > next {
            // SAFETY: close_range with integer arguments, on fds this child owns.
            unsafe { libc::syscall(libc::SYS_close_range, next, fd as libc::c_uint - 1, 0) };
        }
        next = fd as libc::c_uint + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, next, libc::c_uint::MAX, 0) };
}

/// close_range(2) from `first` to the last fd.
pub(super) fn close_range(first: u32, flags: u32) -> io::Result<()> {
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

/// flock(2): `op` is `LOCK_SH`, `LOCK_EX` or `LOCK_UN`, with `LOCK_NB` not to wait.
pub fn flock(fd: BorrowedFd<'_>, op: libc::c_int) -> io::Result<()> {
    // SAFETY: plain call on a borrowed fd; no memory is passed.
    let ret = unsafe { libc::flock(fd.as_raw_fd(), op) };
    check(ret as libc::c_long).map(drop)
}

/// fcntl(2) with a `struct flock` (`F_SETLK`, `F_GETLK`, `F_OFD_SETLK`, `F_OFD_GETLK`);
/// the `GETLK` commands write the conflicting lock back into `lock`.
pub fn fcntl_lock(fd: BorrowedFd<'_>, cmd: libc::c_int, lock: &mut libc::flock) -> io::Result<()> {
    // SAFETY: these commands read, and the GETLK ones write, one `struct flock` at the
    // pointer, which is valid and exclusively ours for the call.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, lock as *mut libc::flock) };
    check(ret as libc::c_long).map(drop)
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
