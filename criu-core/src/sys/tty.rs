//! Terminals: the controlling terminal, termios and window size.

use super::*;

/// A duplicate (close-on-exec) of our stdin when it is a terminal.
pub fn stdin_terminal() -> Option<OwnedFd> {
    // SAFETY: isatty takes an integer argument only.
    if unsafe { libc::isatty(0) } != 1 {
        return None;
    }
    dup_fd(0).ok()
}

/// Makes `pgid` the foreground process group of terminal `fd` (`TIOCSPGRP`). SIGTTOU is
/// blocked in this thread meanwhile: a restorer running in the background may still
/// hand the terminal to the job it restored, as a shell does.
pub fn set_foreground_group(fd: BorrowedFd<'_>, pgid: Pid) -> io::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut ttou: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: an all-zero sigset_t is valid for the kernel to overwrite.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sigset pointers; pthread_sigmask only changes this thread's mask,
    // which is put back below.
    unsafe {
        libc::sigemptyset(&mut ttou);
        libc::sigaddset(&mut ttou, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &ttou, &mut old);
    }
    let value: libc::pid_t = pgid.0;
    // SAFETY: TIOCSPGRP reads one pid_t through the pointer.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSPGRP as _, &value) };
    let result = check(ret as libc::c_long).map(drop);
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    result
}

/// A terminal's settings: `TCGETS`, or `TIOCGLCKTRMIOS` for the locked ones.
pub fn tty_termios(fd: BorrowedFd<'_>, request: libc::c_ulong) -> io::Result<libc::termios> {
    // SAFETY: termios is plain integers; all-zero is valid.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: both requests write one struct termios into `t`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &mut t as *mut libc::termios) };
    check(ret as libc::c_long)?;
    Ok(t)
}

/// A terminal's window size (`TIOCGWINSZ`).
pub fn tty_winsize(fd: BorrowedFd<'_>) -> io::Result<libc::winsize> {
    let mut w = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one struct winsize into `w`.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCGWINSZ as _,
            &mut w as *mut libc::winsize,
        )
    } as libc::c_long)?;
    Ok(w)
}

/// Sets a terminal's settings: `TCSETS` (at once) or `TIOCSLCKTRMIOS` (the locked ones,
/// CAP_SYS_ADMIN). ioctl_tty(2).
pub fn tty_set_termios(
    fd: BorrowedFd<'_>,
    request: libc::c_ulong,
    t: &libc::termios,
) -> io::Result<()> {
    // SAFETY: both requests read one struct termios (the kernel's, a prefix of libc's)
    // from `t`, which outlives the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, t as *const libc::termios) };
    check(ret as libc::c_long).map(drop)
}

/// Sets a terminal's window size (`TIOCSWINSZ`). ioctl_tty(2).
pub fn tty_set_winsize(fd: BorrowedFd<'_>, w: &libc::winsize) -> io::Result<()> {
    // SAFETY: TIOCSWINSZ reads one struct winsize from `w`.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCSWINSZ as _,
            w as *const libc::winsize,
        )
    };
    check(ret as libc::c_long).map(drop)
}

/// An ioctl(2) that reads one int through its pointer argument (`TIOCSPTLCK`, `TIOCPKT`).
pub fn ioctl_set_int(fd: BorrowedFd<'_>, request: libc::c_ulong, value: i32) -> io::Result<()> {
    let value: libc::c_int = value;
    // SAFETY: the requests callers use read exactly one int from `value`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &value as *const libc::c_int) };
    check(ret as libc::c_long).map(drop)
}

/// An ioctl(2) without argument and result (`TIOCEXCL`).
pub fn ioctl_none(fd: BorrowedFd<'_>, request: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the requests callers use take no argument and write no memory.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, 0) };
    check(ret as libc::c_long).map(drop)
}

/// `TIOCGPTPEER`: opens the slave of the pty whose master `fd` is, with open(2) `flags`,
/// whatever path its devpts has for us (since Linux 4.13). ioctl_tty(2).
pub fn pty_peer(fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<OwnedFd> {
    const TIOCGPTPEER: libc::c_ulong = 0x5441;
    // SAFETY: TIOCGPTPEER takes the open flags by value and returns a new fd.
    let ret =
        check(unsafe { libc::ioctl(fd.as_raw_fd(), TIOCGPTPEER as _, flags) } as libc::c_long)?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// `TIOCSTI`: `byte` arrives in the terminal's input as if typed, through its line
/// discipline, before the call returns (CAP_SYS_ADMIN unless it is our controlling
/// terminal). ioctl_tty(2).
pub fn tty_inject(fd: BorrowedFd<'_>, byte: u8) -> io::Result<()> {
    // SAFETY: TIOCSTI reads one byte through the pointer.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSTI as _, &byte as *const u8) };
    check(ret as libc::c_long).map(drop)
}
