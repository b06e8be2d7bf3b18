//! tp-extsk: unix sockets connected to servers outside the program (a logging daemon's
//! datagram socket, a message bus's listener), which a dump takes with `--ext-unix-sk`
//! and a restore connects to the same names again.
//!
//! `--dgram PATH` and `--stream PATH` name the servers, which echo: the datagram server
//! sends each datagram back to its sender prefixed with `echo:`, the stream server each
//! line on the same connection. The program holds:
//! - a datagram socket bound to an abstract name of its own (autobind, so the server
//!   can answer) and connected to `--dgram`; before `ready` it sends `queued` and leaves
//!   the answer unread, in its queue;
//! - a stream socket connected to `--stream`, over which one line went back and forth
//!   before `ready`.
//!
//! Files: `PATH.sockets`, `KIND FD INODE` per socket (`dgram`, `stream`): a harness
//! names the stream socket's inode to `--ext-unix-sk=INODE`.
//!
//! Check: each socket is connected to its server's name (getpeername) and keeps its
//! flags; the datagram socket still holds `echo:queued`, then gets the answer to a new
//! datagram; the stream socket gets the answer to a new line (over whatever connection
//! it has now: a restore makes a new one, which the server sees as a new client).

use std::io;
use std::os::raw::c_int;
use std::time::Duration;

use criu_testprogs::{cvt, cvt_size, fd_flags, write_atomic, Program, Report};

/// A `sockaddr_un` for `path`, and its length.
fn addr(path: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; zero is a valid value.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.len() >= a.sun_path.len() {
        return Err(io::Error::other("socket path too long"));
    }
    for (d, s) in a.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + path.len() + 1;
    Ok((a, len as libc::socklen_t))
}

fn socket(ty: c_int) -> io::Result<c_int> {
    // SAFETY: plain call with integer arguments; the fd is ours.
    cvt(unsafe { libc::socket(libc::AF_UNIX, ty, 0) })
}

fn connect(fd: c_int, path: &[u8]) -> io::Result<()> {
    let (a, len) = addr(path)?;
    // SAFETY: `a` holds a valid sockaddr_un of `len` bytes.
    cvt(unsafe { libc::connect(fd, (&a as *const libc::sockaddr_un).cast(), len) }).map(drop)
}

/// getpeername as the path bytes.
fn peer_name(fd: c_int) -> io::Result<Vec<u8>> {
    // SAFETY: plain data the kernel fills.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `a`.
    cvt(unsafe { libc::getpeername(fd, (&mut a as *mut libc::sockaddr_un).cast(), &mut len) })?;
    let n = (len as usize).saturating_sub(std::mem::size_of::<libc::sa_family_t>());
    let mut out: Vec<u8> = a.sun_path[..n].iter().map(|&c| c as u8).collect();
    while out.last() == Some(&0) {
        out.pop();
    }
    Ok(out)
}

fn send(fd: c_int, data: &[u8]) -> io::Result<()> {
    // SAFETY: `data` is readable for its length.
    let n = cvt_size(unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), 0) })?;
    if n != data.len() {
        return Err(io::Error::other(format!(
            "sent {n} of {} bytes",
            data.len()
        )));
    }
    Ok(())
}

/// One receive, waiting up to `ms` (poll): the bytes, or an error saying it timed out.
fn recv_within(fd: c_int, ms: c_int) -> io::Result<Vec<u8>> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd.
    if cvt(unsafe { libc::poll(&mut p, 1, ms) })? == 0 {
        return Err(io::Error::other(format!("nothing within {ms} ms")));
    }
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its length.
    let n = cvt_size(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) })?;
    Ok(buf[..n].to_vec())
}

/// Bytes queued to read (FIONREAD: a datagram socket gives the next datagram's size).
fn queued(fd: c_int) -> io::Result<c_int> {
    let mut n: c_int = 0;
    // SAFETY: FIONREAD writes one int.
    cvt(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) })?;
    Ok(n)
}

fn inode(fd: c_int) -> io::Result<u64> {
    // SAFETY: plain data the kernel fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid place to write.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st.st_ino)
}

struct Sockets {
    dgram: c_int,
    stream: c_int,
    dgram_server: Vec<u8>,
    stream_server: Vec<u8>,
    flags: Vec<(c_int, (c_int, c_int))>,
}

fn set_up(dgram_server: &str, stream_server: &str) -> io::Result<Sockets> {
    let dgram = socket(libc::SOCK_DGRAM)?;
    // Autobind: an abstract name of our own the server can answer to.
    let family = libc::sockaddr {
        sa_family: libc::AF_UNIX as libc::sa_family_t,
        sa_data: [0; 14],
    };
    // SAFETY: binding to just the family asks the kernel for an abstract name.
    cvt(unsafe {
        libc::bind(
            dgram,
            &family,
            std::mem::size_of::<libc::sa_family_t>() as libc::socklen_t,
        )
    })?;
    connect(dgram, dgram_server.as_bytes())?;
    send(dgram, b"queued")?;
    // The answer is left in the queue: wait until it is there.
    let mut waited = 0;
    while queued(dgram)? == 0 {
        if waited > 500 {
            return Err(io::Error::other("the datagram server did not answer"));
        }
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
    }
    let stream = socket(libc::SOCK_STREAM | libc::SOCK_CLOEXEC)?;
    connect(stream, stream_server.as_bytes())?;
    send(stream, b"hello\n")?;
    let answer = recv_within(stream, 5000)?;
    if answer != b"echo:hello\n" {
        return Err(io::Error::other(format!(
            "the stream server answered {:?}",
            String::from_utf8_lossy(&answer)
        )));
    }
    let mut flags = Vec::new();
    for fd in [dgram, stream] {
        flags.push((fd, fd_flags(fd)?));
    }
    Ok(Sockets {
        dgram,
        stream,
        dgram_server: dgram_server.as_bytes().to_vec(),
        stream_server: stream_server.as_bytes().to_vec(),
        flags,
    })
}

fn check(s: &Sockets, report: &mut Report) {
    for &(fd, flags) in &s.flags {
        match fd_flags(fd) {
            Ok(now) => report.check_eq(&format!("fd {fd} (F_GETFD, F_GETFL)"), now, flags),
            Err(e) => report.fail(format!("fd {fd}: {e}")),
        }
    }
    for (what, fd, server) in [
        ("datagram", s.dgram, &s.dgram_server),
        ("stream", s.stream, &s.stream_server),
    ] {
        report.check_eq(
            &format!("{what} socket's peer"),
            peer_name(fd)
                .ok()
                .map(|n| String::from_utf8_lossy(&n).into_owned()),
            Some(String::from_utf8_lossy(server).into_owned()),
        );
    }
    match recv_within(s.dgram, 0) {
        Ok(m) => report.check_eq("the queued answer", m, b"echo:queued".to_vec()),
        Err(e) => report.fail(format!("the queued answer: {e}")),
    }
    match send(s.dgram, b"after").and_then(|()| recv_within(s.dgram, 5000)) {
        Ok(m) => report.check_eq("the datagram server's answer", m, b"echo:after".to_vec()),
        Err(e) => report.fail(format!("datagram to the server: {e}")),
    }
    match send(s.stream, b"after\n").and_then(|()| recv_within(s.stream, 5000)) {
        Ok(m) => report.check_eq("the stream server's answer", m, b"echo:after\n".to_vec()),
        Err(e) => report.fail(format!("line to the stream server: {e}")),
    }
}

fn main() {
    let mut program = Program::start(
        "tp-extsk",
        &[
            ("--dgram PATH", "the datagram server's socket (required)"),
            (
                "--stream PATH",
                "the stream server's listening socket (required)",
            ),
        ],
    );
    let (Some(dgram), Some(stream)) = (
        program.opt::<String>("--dgram"),
        program.opt::<String>("--stream"),
    ) else {
        program.setup_failed("--dgram and --stream are required");
    };
    let sockets = program.must(set_up(&dgram, &stream), "connect to the servers");
    let listing = format!(
        "dgram {} {}\nstream {} {}\n",
        sockets.dgram,
        program.must(inode(sockets.dgram), "stat the datagram socket"),
        sockets.stream,
        program.must(inode(sockets.stream), "stat the stream socket"),
    );
    program.must(
        write_atomic(&program.companion(".sockets"), listing.as_bytes()),
        "write the socket list",
    );
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});
    let mut report = Report::new();
    check(&sockets, &mut report);
    program.finish(&report);
}
