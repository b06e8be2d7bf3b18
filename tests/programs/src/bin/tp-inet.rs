//! tp-inet: IP socket states a restore must rebuild exactly, beyond those of tp-fds.
//!
//! `--with LIST` (comma-separated; default `freebind,tcp-closed`) picks them:
//! - `freebind`: UDP sockets bound to addresses this machine does not have (TEST-NET
//!   192.0.2.77, and 2001:db8::77 where IPv6 works), which needs IP_FREEBIND at bind
//!   time: one keeps IP_FREEBIND on, the other clears it after binding. The check: each
//!   is bound where it was at `ready`, with the same IP_FREEBIND.
//! - `tcp-closed`: a TCP connection over loopback that both ends shut down for writing
//!   and that then ended (both sockets in TCP_CLOSE, the listener closed). The check:
//!   both are still TCP_CLOSE, a read returns end-of-file at once and a write fails with
//!   EPIPE, on each.
//!
//! Files: `PATH.inet`, one line per socket: `NAME FD ADDRESS` as getsockname showed it at
//! `ready` (`[v6]:port` or `v4:port`).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::raw::c_int;
use std::time::Duration;

use criu_testprogs::{cvt, write_atomic, Program, Report};

const ALL: &str = "freebind,tcp-closed";
const IP_FREEBIND: c_int = 15;
const TCP_CLOSE: u8 = 7;

fn socket(family: c_int, ty: c_int) -> io::Result<c_int> {
    // SAFETY: plain call with integer arguments; the fd is ours.
    cvt(unsafe { libc::socket(family, ty, 0) })
}

fn set_int(fd: c_int, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: the kernel reads one int from `value`, which outlives the call.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const c_int).cast(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn get_int(fd: c_int, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`.
    cvt(unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut c_int).cast(), &mut len) })?;
    Ok(value)
}

/// A sockaddr for `addr`, as bytes and length.
fn raw_addr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for a sockaddr_in.
            let sin = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for a sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn bind(fd: c_int, addr: &SocketAddr) -> io::Result<()> {
    let (ss, len) = raw_addr(addr);
    // SAFETY: `ss` holds a valid sockaddr of `len` bytes.
    cvt(unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) }).map(drop)
}

fn connect(fd: c_int, addr: &SocketAddr) -> io::Result<()> {
    let (ss, len) = raw_addr(addr);
    // SAFETY: as in `bind`.
    cvt(unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) }).map(drop)
}

/// getsockname as a SocketAddr.
fn local_addr(fd: c_int) -> io::Result<SocketAddr> {
    // SAFETY: plain data the kernel fills.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `ss`.
    cvt(unsafe {
        libc::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    })?;
    match ss.ss_family as c_int {
        libc::AF_INET => {
            // SAFETY: the family says a sockaddr_in was written.
            let sin =
                unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says a sockaddr_in6 was written.
            let sin6 =
                unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                0,
                0,
            )))
        }
        other => Err(io::Error::other(format!("address family {other}"))),
    }
}

/// One freebind socket: its fd, where it is bound and whether IP_FREEBIND stays on.
struct Freebind {
    name: String,
    fd: c_int,
    addr: SocketAddr,
    keep: bool,
}

fn freebind_socket(name: &str, ip: std::net::IpAddr, keep: bool) -> io::Result<Freebind> {
    let family = if ip.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = socket(family, libc::SOCK_DGRAM)?;
    set_int(fd, libc::IPPROTO_IP, IP_FREEBIND, 1)?;
    bind(fd, &SocketAddr::new(ip, 0))?;
    if !keep {
        set_int(fd, libc::IPPROTO_IP, IP_FREEBIND, 0)?;
    }
    Ok(Freebind {
        name: name.to_owned(),
        fd,
        addr: local_addr(fd)?,
        keep,
    })
}

fn freebind_sockets() -> io::Result<Vec<Freebind>> {
    let v4: std::net::IpAddr = Ipv4Addr::new(192, 0, 2, 77).into();
    let mut out = vec![
        freebind_socket("freebind4-kept", v4, true)?,
        freebind_socket("freebind4-cleared", v4, false)?,
    ];
    let v6: std::net::IpAddr = "2001:db8::77"
        .parse::<Ipv6Addr>()
        .expect("an address")
        .into();
    // No IPv6 at all here: the v4 pair still tests the option.
    if socket(libc::AF_INET6, libc::SOCK_DGRAM)
        .map(|fd| {
            // SAFETY: closing the probe socket just made.
            unsafe { libc::close(fd) }
        })
        .is_ok()
    {
        out.push(freebind_socket("freebind6-kept", v6, true)?);
        out.push(freebind_socket("freebind6-cleared", v6, false)?);
    }
    Ok(out)
}

fn check_freebind(report: &mut Report, sockets: &[Freebind]) {
    for s in sockets {
        match local_addr(s.fd) {
            Ok(now) => report.check_eq(&format!("{} bound to", s.name), now, s.addr),
            Err(e) => report.fail(format!("{}: getsockname: {e}", s.name)),
        }
        match get_int(s.fd, libc::IPPROTO_IP, IP_FREEBIND) {
            Ok(v) => report.check_eq(&format!("{} IP_FREEBIND", s.name), v, c_int::from(s.keep)),
            Err(e) => report.fail(format!("{}: IP_FREEBIND: {e}", s.name)),
        }
    }
}

fn tcp_state(fd: c_int) -> io::Result<u8> {
    let mut info = [0u8; 232];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    Ok(info[0])
}

/// A loopback TCP connection both ends shut down for writing, then ended: (client,
/// server end), both in TCP_CLOSE.
fn closed_pair() -> io::Result<(c_int, c_int)> {
    let listener = socket(libc::AF_INET, libc::SOCK_STREAM)?;
    bind(listener, &SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0))?;
    // SAFETY: plain call with integer arguments.
    cvt(unsafe { libc::listen(listener, 1) })?;
    let at = local_addr(listener)?;
    let client = socket(libc::AF_INET, libc::SOCK_STREAM)?;
    connect(client, &at)?;
    // SAFETY: no address asked for.
    let server =
        cvt(unsafe { libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut()) })?;
    // SAFETY: closing our own listener.
    unsafe { libc::close(listener) };
    // SAFETY: plain calls on our own sockets.
    cvt(unsafe { libc::shutdown(client, libc::SHUT_WR) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::shutdown(server, libc::SHUT_WR) })?;
    // The FINs and their ACKs cross the loopback at once; bounded wait all the same.
    for _ in 0..500 {
        if tcp_state(client)? == TCP_CLOSE && tcp_state(server)? == TCP_CLOSE {
            return Ok((client, server));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(io::Error::other(format!(
        "the connection did not end: states {} and {}",
        tcp_state(client)?,
        tcp_state(server)?
    )))
}

fn check_closed(report: &mut Report, name: &str, fd: c_int) {
    report.check_eq(
        &format!("{name} TCP state"),
        tcp_state(fd).ok(),
        Some(TCP_CLOSE),
    );
    let mut byte = 0u8;
    // SAFETY: one byte into a local; MSG_DONTWAIT: a socket that is not shut would
    // answer EAGAIN instead of blocking.
    let n = unsafe { libc::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_DONTWAIT) };
    let err = io::Error::last_os_error().raw_os_error();
    report.check(n == 0, || {
        format!("{name}: read returned {n} ({err:?}), not end-of-file")
    });
    // SAFETY: one byte from a local; MSG_NOSIGNAL: EPIPE without SIGPIPE.
    let n = unsafe { libc::send(fd, (&byte as *const u8).cast(), 1, libc::MSG_NOSIGNAL) };
    let err = io::Error::last_os_error().raw_os_error();
    report.check(n == -1 && err == Some(libc::EPIPE), || {
        format!("{name}: write returned {n} ({err:?}), not EPIPE")
    });
}

fn main() {
    let mut program = Program::start(
        "tp-inet",
        &[("--with LIST", "states to set up (default: all of them)")],
    );
    let with_list: String = program.opt_or("--with", ALL.to_string());
    let with: Vec<&str> = with_list.split(',').map(str::trim).collect();
    for w in &with {
        if !ALL.split(',').any(|a| a == *w) {
            program.setup_failed(format!("unknown state `{w}` (known: {ALL})"));
        }
    }
    let on = |name: &str| with.contains(&name);
    let freebind = if on("freebind") {
        program.must(freebind_sockets(), "freebind sockets")
    } else {
        Vec::new()
    };
    let closed = on("tcp-closed").then(|| program.must(closed_pair(), "closed TCP pair"));

    let mut listing: String = freebind
        .iter()
        .map(|s| format!("{} {} {}\n", s.name, s.fd, s.addr))
        .collect();
    if let Some((client, server)) = closed {
        for (name, fd) in [("tcp-closed-client", client), ("tcp-closed-server", server)] {
            let addr = local_addr(fd).map_or_else(|e| format!("({e})"), |a| a.to_string());
            listing.push_str(&format!("{name} {fd} {addr}\n"));
        }
    }
    program.must(
        write_atomic(&program.companion(".inet"), listing.as_bytes()),
        "write the socket list",
    );
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});

    let mut report = Report::new();
    check_freebind(&mut report, &freebind);
    if let Some((client, server)) = closed {
        check_closed(&mut report, "client", client);
        check_closed(&mut report, "server", server);
    }
    program.finish(&report);
}
