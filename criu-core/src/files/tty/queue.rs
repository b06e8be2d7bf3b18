//! Data queued in a pty, both ways: what the slave's programs wrote and the master's
//! holder has not read yet (the master's input queue), and what the master's holder wrote
//! and the slave's programs have not read yet (the slave's input queue, after its line
//! discipline: echoed, translated, cut into lines).
//!
//! A terminal has no way to peek at its queues, so the dump reads them out (as CRIU does,
//! always, for a pty with both ends in the dump) and puts them back into a tree that goes
//! on running, with the same code the restore uses ([`refill`]).
//!
//! Putting data back is where a pty is not a pipe: bytes written into one end go through
//! the other end's line discipline again (echo, CR/NL translation, signals, line editing),
//! and a second time through output processing. CRIU writes them into the peer and lets
//! that happen. Here each queue gets its bytes back as they were:
//! - the master's queue: written into a slave with output processing (`OPOST`) off for
//!   that write; the master's own line discipline is always raw (userspace cannot change a
//!   master's settings: `TCSETS` on a master sets the slave's), so they arrive unchanged.
//! - the slave's queue: `TIOCSTI`, byte by byte, with the slave's settings made neutral
//!   for the time (no echo, no signals, no translation, no editing characters; canonical
//!   mode kept, so complete lines come back as lines and a partial line as the line being
//!   typed), then the dumped settings again. `TIOCSTI` runs the line discipline before it
//!   returns, so nothing is processed later under other settings. A line discipline holds
//!   4095 bytes; input beyond that waits in the tty's buffers unprocessed, and is written
//!   into the master, to be processed as typed input again, as it would have been.
//!
//! What is not kept: a pending packet-mode status byte (`TIOCPKT_*` events the master's
//! holder has not read) and the line discipline's editing state (a pending literal-next,
//! the echo column), as with CRIU. A line ended by the EOF character is kept as its text
//! and that character; so an EOF character typed literally (after ^V) into a line not
//! read yet comes back as an end of line.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::sys;

/// More than a pty can hold (a line discipline's 4 KiB and the 64 KiB of buffers behind
/// it); reading on past this means someone keeps writing.
const MAX_QUEUED: usize = 1 << 20;

/// The most one line discipline holds (`N_TTY_BUF_SIZE` - 1).
const LDISC_BYTES: usize = 4095;

/// The two queues of one pty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Queued {
    /// Readable from the master: what the slave side wrote.
    pub(crate) at_master: Vec<u8>,
    /// Readable from a slave: what the master side wrote, after the line discipline.
    pub(crate) at_slave: Vec<u8>,
}

impl Queued {
    pub(crate) fn is_empty(&self) -> bool {
        self.at_master.is_empty() && self.at_slave.is_empty()
    }
}

fn slave_flags() -> libc::c_int {
    libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC
}

/// Reads out both queues of the pty whose master `master` is (a duplicate of the tree's
/// open file description, whose flags are left alone: it is read only when poll says it
/// has data). `slave_open`: some task holds a slave, so the slave's queue is read through
/// a slave of our own (opening one where none is open would change what the master
/// reads, end-of-file instead of nothing).
pub(crate) fn drain(master: BorrowedFd<'_>, slave_open: bool) -> io::Result<Queued> {
    // The slave's queue first: reading it lets its line discipline take what still
    // waited behind it, whose echo then lands in the master's queue, read next.
    let at_slave = if slave_open {
        let slave = open_slave(master)?;
        drain_slave(slave.as_fd())?
    } else {
        Vec::new()
    };
    let at_master = drain_master(master)?;
    Ok(Queued {
        at_master,
        at_slave,
    })
}

fn drain_master(master: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    const TIOCGPKT: libc::c_ulong = 0x8004_5438;
    const TIOCPKT_DATA: u8 = 0;
    let packet = sys::ioctl_get_int(master, TIOCGPKT).is_ok_and(|p| p != 0);
    let mut file = File::from(master.try_clone_to_owned()?);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    // poll also pushes input still on its way into the line discipline before it says
    // there is none (n_tty_poll), so the loop ends with the queue empty.
    while sys::poll_now(master, libc::POLLIN)? & libc::POLLIN != 0 {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // The slave side is closed and nothing is left.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        };
        let data = match (packet, buf[..n].split_first()) {
            // Packet mode: each read starts with a status byte; data comes after a zero.
            (true, Some((&TIOCPKT_DATA, data))) => data,
            (true, _) => {
                tracing::debug!(status = buf[0], "a pty's packet-mode status is not kept");
                &[]
            }
            (false, _) => &buf[..n],
        };
        out.extend_from_slice(data);
        if out.len() > MAX_QUEUED {
            return Err(io::Error::other("more than 1 MiB queued on a pty master"));
        }
    }
    Ok(out)
}

/// Reads the slave's queue through `slave`, our own non-blocking one: whole lines as a
/// reader in canonical mode gets them, then the line being typed, made readable by
/// leaving canonical mode for the time.
///
/// A line ended by the EOF character (what `script` sends its child when its own input
/// ends) reads without its end; it is written with the terminal's EOF character after
/// it, which [`refill`] (and CRIU's restore, which writes the data into the master)
/// turns into the same end again.
fn drain_slave(slave: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let t = sys::tty_termios(slave, libc::TCGETS as libc::c_ulong)?;
    if t.c_lflag & libc::ICANON == 0 {
        read_until_empty(slave, &mut out)?;
        return Ok(out);
    }
    let ends = line_ends(&t);
    let mut file = File::from(slave.try_clone_to_owned()?);
    let mut buf = vec![0u8; 8192];
    loop {
        // One line per read.
        match file.read(&mut buf) {
            // Without an EOF character nothing reads empty but a hung-up terminal.
            Ok(0) if t.c_cc[libc::VEOF] == 0 => break,
            Ok(n) => {
                let line = &buf[..n];
                out.extend_from_slice(line);
                if !line.last().is_some_and(|b| ends.contains(b)) {
                    out.push(t.c_cc[libc::VEOF]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => return Err(e),
        }
        if out.len() > MAX_QUEUED {
            return Err(io::Error::other("more than 1 MiB queued on a pty slave"));
        }
    }
    // The line being typed.
    let mut raw = t;
    raw.c_lflag &= !libc::ICANON;
    raw.c_cc[libc::VMIN] = 0;
    raw.c_cc[libc::VTIME] = 0;
    sys::tty_set_termios(slave, libc::TCSETS as libc::c_ulong, &raw)?;
    let read = read_until_empty(slave, &mut out);
    sys::tty_set_termios(slave, libc::TCSETS as libc::c_ulong, &t)?;
    read?;
    Ok(out)
}

/// The characters that end a line in canonical mode (besides EOF, which is not read).
fn line_ends(t: &libc::termios) -> Vec<u8> {
    let mut ends = vec![b'\n'];
    for cc in [libc::VEOL, libc::VEOL2] {
        if t.c_cc[cc] != 0 {
            ends.push(t.c_cc[cc]);
        }
    }
    ends
}

fn read_until_empty(fd: BorrowedFd<'_>, out: &mut Vec<u8>) -> io::Result<()> {
    let mut file = File::from(fd.try_clone_to_owned()?);
    let mut buf = vec![0u8; 8192];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(()),
            Err(e) => return Err(e),
        }
        if out.len() > MAX_QUEUED {
            return Err(io::Error::other("more than 1 MiB queued on a pty slave"));
        }
    }
}

/// A slave of our own, non-blocking, that does not become anyone's controlling terminal.
/// A locked pty (its master's holder has not called unlockpt) is unlocked for the open
/// and locked again: only opening is refused while it is locked.
pub(crate) fn open_slave(master: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    open_slave_with(master, slave_flags())
}

/// [`open_slave`] with other open flags.
pub(crate) fn open_slave_with(master: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<OwnedFd> {
    const TIOCGPTLCK: libc::c_ulong = 0x8004_5439;
    const TIOCSPTLCK: libc::c_ulong = 0x4004_5431;
    match sys::pty_peer(master, flags) {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {
            if sys::ioctl_get_int(master, TIOCGPTLCK)? == 0 {
                return Err(e);
            }
            sys::ioctl_set_int(master, TIOCSPTLCK, 0)?;
            let slave = sys::pty_peer(master, flags);
            sys::ioctl_set_int(master, TIOCSPTLCK, 1)?;
            slave
        }
        other => other,
    }
}

/// Puts `q` back into the pty whose master `master` is, whose slave's settings are
/// `termios` (they are set again at the end).
pub(crate) fn refill(
    master: BorrowedFd<'_>,
    termios: &libc::termios,
    q: &Queued,
) -> io::Result<()> {
    if q.is_empty() {
        return Ok(());
    }
    let slave = open_slave(master)?;
    let slave = slave.as_fd();
    let set = |t: &libc::termios| sys::tty_set_termios(slave, libc::TCSETS as libc::c_ulong, t);
    let done = (|| {
        if !q.at_slave.is_empty() {
            let (typed, rest) = q.at_slave.split_at(q.at_slave.len().min(LDISC_BYTES));
            set(&neutral(termios, typed))?;
            for &b in typed {
                sys::tty_inject(slave, b)?;
            }
            set(termios)?;
            if !rest.is_empty() {
                write_all(master, rest)?;
            }
        }
        if !q.at_master.is_empty() {
            let mut raw_out = *termios;
            raw_out.c_oflag &= !libc::OPOST;
            set(&raw_out)?;
            write_all(slave, &q.at_master)?;
        }
        Ok(())
    })();
    // The dumped settings in any case.
    let reset = set(termios);
    done.and(reset)
}

/// Settings under which bytes injected into the slave's input land in its queue as they
/// are: canonical mode as dumped (so lines stay lines), and nothing else of the line
/// discipline at work (no echo, signals, translations or editing characters; flow
/// control only when `data` holds no start or stop character, as switching it would
/// tell a packet-mode master).
fn neutral(t: &libc::termios, data: &[u8]) -> libc::termios {
    let mut n = *t;
    n.c_lflag &= libc::ICANON | libc::EXTPROC | libc::NOFLSH | libc::TOSTOP;
    let flow = t.c_cc[libc::VSTART];
    let stop = t.c_cc[libc::VSTOP];
    let keep_ixon = !data.iter().any(|&b| b == flow || b == stop);
    n.c_iflag &= libc::IUTF8 | if keep_ixon { libc::IXON } else { 0 };
    // VEOF stays: the queue holds it where a line ended with it (`drain_slave`).
    for cc in [
        libc::VERASE,
        libc::VKILL,
        libc::VWERASE,
        libc::VREPRINT,
        libc::VLNEXT,
        libc::VDISCARD,
    ] {
        // _POSIX_VDISABLE: the line discipline treats no byte as this character.
        n.c_cc[cc] = 0;
    }
    n
}

/// Writes all of `data` into a non-blocking or blocking terminal end, waiting (bounded)
/// while the other end's buffers are full.
fn write_all(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<()> {
    let mut file = File::from(fd.try_clone_to_owned()?);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rest = data;
    while !rest.is_empty() {
        match file.write(rest) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh unlocked pty of our own: master, and its slave's number.
    fn pty() -> Option<OwnedFd> {
        const TIOCSPTLCK: libc::c_ulong = 0x4004_5431;
        let m = sys::open_path(
            std::path::Path::new("/dev/ptmx"),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            0,
        )
        .ok()?;
        sys::ioctl_set_int(m.as_fd(), TIOCSPTLCK, 0).ok()?;
        Some(m)
    }

    fn cooked(fd: BorrowedFd<'_>) -> libc::termios {
        let mut t = sys::tty_termios(fd, libc::TCGETS as libc::c_ulong).unwrap();
        t.c_lflag |= libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN;
        t.c_iflag |= libc::ICRNL;
        t.c_oflag |= libc::OPOST | libc::ONLCR;
        sys::tty_set_termios(fd, libc::TCSETS as libc::c_ulong, &t).unwrap();
        t
    }

    /// Both queues read out and put back into another pty come back byte for byte,
    /// without a second echo, translation or signal, lines still lines.
    #[test]
    fn queues_round_trip_exactly() {
        let (Some(a), Some(b)) = (pty(), pty()) else {
            eprintln!("skipped: no /dev/ptmx");
            return;
        };
        let slave_a = open_slave(a.as_fd()).unwrap();
        let t = cooked(a.as_fd());
        // Typed: two lines and a partial one, with a tab and a carriage return the line
        // discipline turns into a newline.
        write_all(a.as_fd(), b"one\rtwo\tx\neof\x04\x04part").unwrap();
        // The line discipline takes the input (and echoes it) on its own time.
        std::thread::sleep(Duration::from_millis(50));
        write_all(slave_a.as_fd(), b"out\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let q = drain(a.as_fd(), true).unwrap();
        // Two lines ended by EOF, "eof" and an empty one: each keeps its EOF.
        assert_eq!(q.at_slave, b"one\ntwo\tx\neof\x04\x04part");
        assert_eq!(q.at_master, b"one\r\ntwo\tx\r\neofpartout\r\n");
        assert!(drain(a.as_fd(), true).unwrap().is_empty(), "read out");

        let slave_b = open_slave(b.as_fd()).unwrap();
        let tb = cooked(b.as_fd());
        assert_eq!(tb.c_lflag, t.c_lflag);
        refill(b.as_fd(), &tb, &q).unwrap();
        // The settings are the dumped ones again.
        let now = sys::tty_termios(b.as_fd(), libc::TCGETS as libc::c_ulong).unwrap();
        assert_eq!(
            (now.c_lflag, now.c_iflag, now.c_oflag, now.c_cc),
            (tb.c_lflag, tb.c_iflag, tb.c_oflag, tb.c_cc)
        );
        std::thread::sleep(Duration::from_millis(50));
        // The slave reads the lines one by one, the partial line is not readable yet.
        let mut lines = Vec::new();
        let mut file = File::from(slave_b.try_clone().unwrap());
        let mut buf = [0u8; 64];
        for _ in 0..4 {
            let n = file.read(&mut buf).unwrap();
            lines.push(buf[..n].to_vec());
        }
        let want: [&[u8]; 4] = [b"one\n", b"two\tx\n", b"eof", b""];
        assert_eq!(lines, want);
        assert_eq!(
            file.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        // ...and is finished by what comes next, with the cooked settings at work.
        write_all(b.as_fd(), b"!\r").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut more = Vec::new();
        read_until_empty(slave_b.as_fd(), &mut more).unwrap();
        assert_eq!(more, b"part!\n");
        let again = drain(b.as_fd(), false).unwrap();
        assert_eq!(again.at_master, b"one\r\ntwo\tx\r\neofpartout\r\n!\r\n");
    }

    #[test]
    fn neutral_settings_keep_only_what_shapes_the_queue() {
        let mut t: libc::termios = zeroed_termios();
        t.c_lflag = libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN;
        t.c_iflag = libc::ICRNL | libc::IXON | libc::IUTF8;
        t.c_cc[libc::VSTART] = 0x11;
        t.c_cc[libc::VSTOP] = 0x13;
        t.c_cc[libc::VERASE] = 0x7f;
        t.c_cc[libc::VEOF] = 4;
        t.c_cc[libc::VEOL] = b'@';
        let n = neutral(&t, b"abc");
        assert_eq!(n.c_lflag, libc::ICANON);
        assert_eq!(n.c_iflag, libc::IXON | libc::IUTF8);
        assert_eq!(n.c_cc[libc::VERASE], 0);
        assert_eq!(n.c_cc[libc::VEOF], 4, "lines ended by EOF stay so");
        assert_eq!(n.c_cc[libc::VEOL], b'@', "line ends stay line ends");
        assert_eq!(neutral(&t, b"a\x13").c_iflag, libc::IUTF8);
    }

    fn zeroed_termios() -> libc::termios {
        libc::termios {
            c_iflag: 0,
            c_oflag: 0,
            c_cflag: 0,
            c_lflag: 0,
            c_line: 0,
            c_cc: [0; libc::NCCS],
            c_ispeed: 0,
            c_ospeed: 0,
        }
    }
}
