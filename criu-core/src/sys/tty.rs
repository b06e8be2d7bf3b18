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
