//! POSIX message queues (mq_overview(7)), and a mount of the mqueue filesystem that is
//! attached nowhere, to list a namespace's queues.
//!
//! Plain libc calls rather than nix's `mqueue` module: its `MqdT` neither borrows nor
//! owns a descriptor, so each call on one of our `OwnedFd`s would need an unsafe
//! conversion; on Linux a queue descriptor is a file descriptor and libc takes it as is.
//!
//! Receiving and sending here never wait, whatever the descriptor's `O_NONBLOCK`: they
//! pass an absolute timeout of 0 (the epoch), long past, so a full or empty queue
//! answers at once (ETIMEDOUT, or EAGAIN for a non-blocking descriptor).

use super::*;
use std::ffi::CString;

/// The attributes of a queue (mq_getattr(3)); `flags` is the descriptor's `O_NONBLOCK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqAttr {
    pub flags: i64,
    pub maxmsg: i64,
    pub msgsize: i64,
    pub curmsgs: i64,
}

/// `/name` as glibc's mq_open and mq_unlink take it (they drop the slash).
fn queue_path(name: &[u8]) -> io::Result<CString> {
    let mut path = Vec::with_capacity(name.len() + 1);
    path.push(b'/');
    path.extend_from_slice(name);
    CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// mq_open(3) of queue `name` (without its leading '/') of the calling thread's IPC
/// namespace, with exactly `flags` (the open file description keeps them, `O_CLOEXEC`
/// included, as `F_GETFL` shows). With `create` (mode, maxmsg, msgsize), `O_CREAT |
/// O_EXCL` make a new queue of that size; the mode is then subject to the umask, as for
/// any file.
pub fn mq_open_name(
    name: &[u8],
    flags: libc::c_int,
    create: Option<(u32, i64, i64)>,
) -> io::Result<OwnedFd> {
    let path = queue_path(name)?;
    let fd = match create {
        Some((mode, maxmsg, msgsize)) => {
            // SAFETY: mq_attr is plain integers; all-zero is a valid value.
            let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
            attr.mq_maxmsg = maxmsg as _;
            attr.mq_msgsize = msgsize as _;
            // SAFETY: `path` is NUL-terminated and `attr` initialised; both outlive the
            // call, which reads them only.
            unsafe {
                libc::mq_open(
                    path.as_ptr(),
                    flags | libc::O_CREAT | libc::O_EXCL,
                    mode as libc::mode_t,
                    &attr as *const libc::mq_attr,
                )
            }
        }
        // SAFETY: `path` is NUL-terminated and outlives the call; without O_CREAT no
        // further argument is read.
        None => unsafe { libc::mq_open(path.as_ptr(), flags) },
    };
    check(fd as libc::c_long)?;
    // SAFETY: the kernel just returned this new descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// mq_unlink(3): removes queue `name` (without its leading '/') from the calling
/// thread's IPC namespace; whoever holds it open keeps it.
pub fn mq_unlink_name(name: &[u8]) -> io::Result<()> {
    let path = queue_path(name)?;
    // SAFETY: `path` is NUL-terminated and outlives the call.
    check(unsafe { libc::mq_unlink(path.as_ptr()) } as libc::c_long).map(drop)
}

/// mq_getattr(3) of queue descriptor `fd`.
pub fn mq_getattr(fd: BorrowedFd<'_>) -> io::Result<MqAttr> {
    // SAFETY: mq_attr is plain integers; all-zero is a valid value.
    let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the call writes one mq_attr into `attr`, which we own.
    check(unsafe { libc::mq_getattr(fd.as_raw_fd(), &mut attr) } as libc::c_long)?;
    Ok(MqAttr {
        flags: attr.mq_flags as i64,
        maxmsg: attr.mq_maxmsg as i64,
        msgsize: attr.mq_msgsize as i64,
        curmsgs: attr.mq_curmsgs as i64,
    })
}

/// The absolute timeout that is over before the call: the epoch.
const NO_WAIT: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: 0,
};

/// Whether an error of a timed call means "the queue was empty (full)".
fn would_wait(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ETIMEDOUT))
}

/// mq_timedreceive(3) without waiting: the oldest message of the highest priority, as
/// (priority, text), or `None` when the queue is empty. `msgsize` is the queue's
/// message size (a smaller buffer is refused by the kernel).
pub fn mq_receive_now(fd: BorrowedFd<'_>, msgsize: usize) -> io::Result<Option<(u32, Vec<u8>)>> {
    let mut buf = vec![0u8; msgsize.max(1)];
    let mut prio: libc::c_uint = 0;
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf` and one uint into
    // `prio`, both ours; the timeout is a valid timespec that outlives the call.
    let n = unsafe {
        libc::mq_timedreceive(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut prio,
            &NO_WAIT,
        )
    };
    match check(n as libc::c_long) {
        Ok(n) => {
            buf.truncate(n as usize);
            Ok(Some((prio, buf)))
        }
        Err(e) if would_wait(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// mq_timedsend(3) without waiting: one message; `false` when the queue is full.
pub fn mq_send_now(fd: BorrowedFd<'_>, prio: u32, text: &[u8]) -> io::Result<bool> {
    // SAFETY: the kernel reads `text.len()` bytes from `text` and the timeout, both of
    // which outlive the call.
    let ret = unsafe {
        libc::mq_timedsend(
            fd.as_raw_fd(),
            text.as_ptr().cast(),
            text.len(),
            prio,
            &NO_WAIT,
        )
    };
    match check(ret as libc::c_long) {
        Ok(_) => Ok(true),
        Err(e) if would_wait(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

// linux/mount.h (newer than Debian 12's headers in places): the new mount API.
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

/// A mount of the mqueue filesystem of the calling thread's IPC namespace that is
/// attached to no mount tree (fsopen(2), fsconfig(2), fsmount(2)): a directory
/// descriptor whose entries are the namespace's queues. It is the namespace's own
/// superblock, so its `st_dev` is that of every queue of the namespace. Nothing is
/// mounted anywhere; the mount goes with the descriptor.
pub fn mqueue_mount() -> io::Result<OwnedFd> {
    // SAFETY: the name is a NUL-terminated literal; the call returns a new descriptor.
    let fs = check(unsafe { libc::syscall(libc::SYS_fsopen, c"mqueue".as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: the kernel just returned this new descriptor to us; nobody else owns it.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: CMD_CREATE takes no key, value or aux argument (null, null, 0).
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            null,
            null,
            0,
        )
    })?;
    // SAFETY: integer arguments only; the call returns a new descriptor.
    let mnt =
        check(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) })?;
    // SAFETY: as above, a descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(mnt as RawFd) })
}

/// mq_notify(3) with `SIGEV_NONE`: registers the calling process for the queue's
/// notification without any signal or thread to come of it (for tests of refusals).
pub fn mq_notify_none(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: sigevent is plain data; all-zero is a valid value, then made SIGEV_NONE.
    let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
    ev.sigev_notify = libc::SIGEV_NONE;
    // SAFETY: the call reads one sigevent from `ev`, which outlives it.
    check(unsafe { libc::mq_notify(fd.as_raw_fd(), &ev) } as libc::c_long).map(drop)
}
