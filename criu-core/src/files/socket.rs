//! Unix and inet (TCP, UDP) sockets.
//!
//! State, peer, bound name and queue lengths come from sock_diag; socket options from
//! getsockopt on our duplicate; queued unix data is read with `MSG_PEEK` and
//! `SO_PEEK_OFF`, so the task still finds it. Connected TCP sockets are refused: they
//! need TCP repair mode, which this dumper does not do. So is a unix socket whose bound
//! file was renamed or moved since the bind: the images keep only its name. One whose
//! file was deleted is recorded as such (the restore binds and deletes it again). A
//! connection a listener has not accepted yet is recorded as its client connected to
//! the listener (the restore connects it again) when exactly one waits and its client,
//! in the dump, sent nothing; otherwise it is refused.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use criu_images::pb;

use super::diag::{NetDiag, UnixDiag};
use super::dump::{file_entry, writer, FileError, OpenFd};
use super::kinds::{self, Given, Kind};
use crate::sys::{self, Pid};

/// SOL_SOCKET options (asm-generic/socket.h, which x86-64 uses).
mod so {
    pub const REUSEADDR: i32 = 2;
    pub const TYPE: i32 = 3;
    pub const DONTROUTE: i32 = 5;
    pub const BROADCAST: i32 = 6;
    pub const SNDBUF: i32 = 7;
    pub const RCVBUF: i32 = 8;
    pub const KEEPALIVE: i32 = 9;
    pub const OOBINLINE: i32 = 10;
    pub const NO_CHECK: i32 = 11;
    pub const PRIORITY: i32 = 12;
    pub const LINGER: i32 = 13;
    pub const REUSEPORT: i32 = 15;
    pub const PASSCRED: i32 = 16;
    pub const RCVLOWAT: i32 = 18;
    pub const RCVTIMEO: i32 = 20;
    pub const SNDTIMEO: i32 = 21;
    pub const BINDTODEVICE: i32 = 25;
    pub const PASSSEC: i32 = 34;
    pub const MARK: i32 = 36;
    pub const PROTOCOL: i32 = 38;
    pub const DOMAIN: i32 = 39;
    pub const PEEK_OFF: i32 = 42;
    pub const BUF_LOCK: i32 = 72;
}

const SIOCGSKNS: libc::c_ulong = 0x894c;
const SIOCUNIXFILE: libc::c_ulong = 0x89e0;

// TCP states, as sock_diag and TCP_INFO number them (unix sockets borrow them).
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;

fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "UNKNOWN",
    }
}

fn family_name(family: i32) -> &'static str {
    if family == libc::AF_INET6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// Formats an address for messages: `127.0.0.1:80`, `[::1]:80`.
fn show_addr(family: i32, addr: &[u8; 16], port: u16) -> String {
    if family == libc::AF_INET6 {
        format!("[{}]:{port}", Ipv6Addr::from(*addr))
    } else {
        format!(
            "{}:{port}",
            Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])
        )
    }
}

/// Formats a unix socket name: `@abstract`, `/path`, or `(unnamed)`.
fn show_unix_name(name: Option<&[u8]>) -> String {
    match name {
        None | Some([]) => "(unnamed)".into(),
        Some([0, rest @ ..]) => format!("@{}", String::from_utf8_lossy(rest)),
        Some(path) => String::from_utf8_lossy(path.strip_suffix(&[0]).unwrap_or(path)).into_owned(),
    }
}

/// (address, port) of a raw `sockaddr_in`/`sockaddr_in6`; zeros for anything else.
fn parse_sockaddr(raw: &[u8]) -> ([u8; 16], u16) {
    let mut addr = [0u8; 16];
    let family = raw
        .get(..2)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]) as i32);
    let port = raw
        .get(2..4)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .unwrap_or(0);
    match family {
        Some(libc::AF_INET) if raw.len() >= 8 => addr[..4].copy_from_slice(&raw[4..8]),
        Some(libc::AF_INET6) if raw.len() >= 24 => addr.copy_from_slice(&raw[8..24]),
        _ => return (addr, 0),
    }
    (addr, port)
}

/// Local or peer address of a socket; zeros when it has none (ENOTCONN).
fn socket_addr(s: BorrowedFd<'_>, peer: bool) -> io::Result<([u8; 16], u16)> {
    match sys::socket_address(s, peer) {
        Ok(raw) => Ok(parse_sockaddr(&raw)),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(([0; 16], 0)),
        Err(e) => Err(e),
    }
}

/// Addresses in the image: one u32 word for IPv4, four for IPv6, network byte order
/// as in memory.
fn addr_words(family: i32, addr: &[u8; 16]) -> Vec<u32> {
    let n = if family == libc::AF_INET6 { 4 } else { 1 };
    addr.chunks_exact(4)
        .take(n)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn opt_int(s: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    sys::getsockopt_int(s, level, name)
}

/// An int option that may not exist on this kernel (ENOPROTOOPT): `None` then.
fn opt_int_maybe(s: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<Option<i32>> {
    match sys::getsockopt_int(s, level, name) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A `struct timeval` option as (seconds, microseconds).
fn opt_timeval(s: BorrowedFd<'_>, name: i32) -> io::Result<(u64, u64)> {
    let mut buf = [0u8; 16];
    sys::getsockopt_bytes(s, libc::SOL_SOCKET, name, &mut buf)?;
    let sec = i64::from_ne_bytes(buf[..8].try_into().unwrap_or_default());
    let usec = i64::from_ne_bytes(buf[8..].try_into().unwrap_or_default());
    Ok((sec as u64, usec as u64))
}

/// The interface a socket is bound to (`SO_BINDTODEVICE`), if any.
fn bound_device(s: BorrowedFd<'_>) -> io::Result<Option<String>> {
    let mut buf = [0u8; libc::IFNAMSIZ];
    let len =
        sys::getsockopt_bytes(s, libc::SOL_SOCKET, so::BINDTODEVICE, &mut buf)?.min(buf.len());
    let name = buf[..len].split(|&b| b == 0).next().unwrap_or_default();
    Ok((!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned()))
}

/// SOL_SOCKET options, as CRIU records them.
fn sk_opts(s: BorrowedFd<'_>, family: i32) -> io::Result<pb::SkOptsEntry> {
    let int = |name| opt_int(s, libc::SOL_SOCKET, name);
    let flag = |name| int(name).map(|v| Some(v != 0));
    let (snd_sec, snd_usec) = opt_timeval(s, so::SNDTIMEO)?;
    let (rcv_sec, rcv_usec) = opt_timeval(s, so::RCVTIMEO)?;
    let mark = int(so::MARK)? as u32;
    let mut linger = [0u8; 8];
    sys::getsockopt_bytes(s, libc::SOL_SOCKET, so::LINGER, &mut linger)?;
    let linger_on = i32::from_ne_bytes([linger[0], linger[1], linger[2], linger[3]]) != 0;
    let linger_time = i32::from_ne_bytes([linger[4], linger[5], linger[6], linger[7]]) as u32;
    let unix_like = family == libc::AF_UNIX || family == libc::AF_NETLINK;
    let filter = sys::socket_filter(s)?;
    Ok(pb::SkOptsEntry {
        so_sndbuf: int(so::SNDBUF)? as u32,
        so_rcvbuf: int(so::RCVBUF)? as u32,
        so_snd_tmo_sec: snd_sec,
        so_snd_tmo_usec: snd_usec,
        so_rcv_tmo_sec: rcv_sec,
        so_rcv_tmo_usec: rcv_usec,
        reuseaddr: flag(so::REUSEADDR)?,
        so_priority: Some(int(so::PRIORITY)? as u32),
        so_rcvlowat: Some(int(so::RCVLOWAT)? as u32),
        so_mark: (mark != 0).then_some(mark),
        so_passcred: if unix_like { flag(so::PASSCRED)? } else { None },
        so_passsec: if unix_like { flag(so::PASSSEC)? } else { None },
        so_dontroute: flag(so::DONTROUTE)?,
        so_no_check: flag(so::NO_CHECK)?,
        so_bound_dev: bound_device(s)?,
        so_filter: filter
            .iter()
            .map(|f| {
                let code = u16::from_ne_bytes([f[0], f[1]]) as u64;
                let k = u32::from_ne_bytes([f[4], f[5], f[6], f[7]]) as u64;
                (code << 48) | ((f[2] as u64) << 40) | ((f[3] as u64) << 32) | k
            })
            .collect(),
        so_reuseport: flag(so::REUSEPORT)?,
        so_broadcast: flag(so::BROADCAST)?,
        so_keepalive: flag(so::KEEPALIVE)?,
        tcp_keepcnt: None,
        tcp_keepidle: None,
        tcp_keepintvl: None,
        so_oobinline: Some((int(so::OOBINLINE)? != 0) as u32),
        so_linger: linger_on.then_some(linger_time),
        so_buf_lock: opt_int_maybe(s, libc::SOL_SOCKET, so::BUF_LOCK)?.map(|v| v as u32),
    })
}

/// IPPROTO_IP / IPPROTO_IPV6 options; each recorded only when set.
fn ip_opts(s: BorrowedFd<'_>, family: i32) -> io::Result<pb::IpOptsEntry> {
    const IP_TOS: i32 = 1;
    const IP_TTL: i32 = 2;
    const IP_PKTINFO: i32 = 8;
    const IP_FREEBIND: i32 = 15;
    const IPV6_RECVPKTINFO: i32 = 49;
    const IPV6_FREEBIND: i32 = 78;
    let nonzero = |v: i32| (v != 0).then_some(v as u32);
    let mut o = pb::IpOptsEntry::default();
    if family == libc::AF_INET6 {
        o.freebind = (opt_int(s, libc::IPPROTO_IPV6, IPV6_FREEBIND)? != 0).then_some(true);
        o.pktinfo = (opt_int(s, libc::IPPROTO_IPV6, IPV6_RECVPKTINFO)? != 0).then_some(true);
    } else {
        o.freebind = (opt_int(s, libc::IPPROTO_IP, IP_FREEBIND)? != 0).then_some(true);
        o.pktinfo = (opt_int(s, libc::IPPROTO_IP, IP_PKTINFO)? != 0).then_some(true);
        o.tos = nonzero(opt_int(s, libc::IPPROTO_IP, IP_TOS)?);
        o.ttl = nonzero(opt_int(s, libc::IPPROTO_IP, IP_TTL)?);
    }
    Ok(o)
}

/// IPPROTO_TCP options; each recorded only when set.
fn tcp_opts(s: BorrowedFd<'_>) -> io::Result<pb::TcpOptsEntry> {
    let get = |name| opt_int(s, libc::IPPROTO_TCP, name);
    let nonzero = |v: i32| (v != 0).then_some(v as u32);
    Ok(pb::TcpOptsEntry {
        nodelay: (get(libc::TCP_NODELAY)? != 0).then_some(true),
        cork: (get(libc::TCP_CORK)? != 0).then_some(true),
        keepcnt: nonzero(get(libc::TCP_KEEPCNT)?),
        keepidle: nonzero(get(libc::TCP_KEEPIDLE)?),
        keepintvl: nonzero(get(libc::TCP_KEEPINTVL)?),
    })
}

/// `tcpi_state` and `tcpi_backoff` from TCP_INFO.
fn tcp_info(s: BorrowedFd<'_>) -> io::Result<(u8, u8)> {
    let mut info = [0u8; 8];
    sys::getsockopt_bytes(s, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)?;
    Ok((info[0], info[4]))
}

/// Whether sock_diag lists TCP sockets that are bound and nothing else (Linux 6.8,
/// the TCP_BOUND_INACTIVE pseudo-state our requests' "every state" includes).
fn lists_bound_only_tcp() -> bool {
    crate::check::kernel_version().is_ok_and(|v| v >= (6, 8))
}

/// The shutdown bits of a TCP socket in TCP_CLOSE, which sock_diag does not list (no
/// table holds it): a closed socket always polls POLLHUP, and POLLRDHUP says its read
/// side is shut (a connection that ended: reads return end-of-file). Its write side
/// needs no record: writes to an unconnected TCP socket fail with EPIPE anyway.
fn closed_tcp_shutdown(s: BorrowedFd<'_>) -> io::Result<u8> {
    let revents = sys::poll_now(s, libc::POLLRDHUP | libc::POLLHUP)?;
    Ok(u8::from(
        revents & libc::POLLHUP != 0 && revents & libc::POLLRDHUP != 0,
    ))
}

/// Type and protocol of an inet socket we can dump.
struct InetKind {
    ty: i32,
    proto: i32,
}

/// The socket's row in the kind table, from its family, type, protocol and (TCP)
/// state; works on a running task, changing nothing.
pub(super) fn kind(fd: &OpenFd<'_>) -> Result<Kind, FileError> {
    let s = fd.raw();
    let domain =
        opt_int(s, libc::SOL_SOCKET, so::DOMAIN).map_err(fd.io("read the socket's family"))?;
    let ty = || opt_int(s, libc::SOL_SOCKET, so::TYPE).map_err(fd.io("read the socket's type"));
    Ok(match domain {
        libc::AF_UNIX => match ty()? {
            _ if unix_orphan_with_data(fd)? => Kind::UnixOrphanQueued,
            libc::SOCK_STREAM => Kind::UnixStream,
            libc::SOCK_DGRAM => Kind::UnixDgram,
            libc::SOCK_SEQPACKET => Kind::UnixSeqpacket,
            _ => Kind::UnixOther,
        },
        libc::AF_INET | libc::AF_INET6 => {
            let proto = opt_int(s, libc::SOL_SOCKET, so::PROTOCOL)
                .map_err(fd.io("read the socket's protocol"))?;
            match (ty()?, proto) {
                (libc::SOCK_STREAM, libc::IPPROTO_TCP) => {
                    match tcp_info(s).map_err(fd.io("read TCP_INFO"))?.0 {
                        TCP_LISTEN => Kind::TcpListen,
                        TCP_CLOSE => Kind::TcpClosed,
                        _ => Kind::TcpConnected,
                    }
                }
                (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => Kind::Udp,
                (libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) => Kind::UdpLite,
                (libc::SOCK_RAW, _) => Kind::InetRaw,
                _ => Kind::InetOther,
            }
        }
        libc::AF_NETLINK => Kind::Netlink,
        libc::AF_PACKET => Kind::Packet,
        _ => Kind::OtherSocket,
    })
}

/// The inode of a unix socket's network namespace (0 when the kernel cannot tell);
/// `None` for other sockets.
pub(super) fn unix_netns(fd: &OpenFd<'_>) -> Option<u64> {
    let domain = opt_int(fd.raw(), libc::SOL_SOCKET, so::DOMAIN).ok()?;
    if domain != libc::AF_UNIX {
        return None;
    }
    Some(
        sys::ioctl_get_fd(fd.raw(), SIOCGSKNS)
            .ok()
            .and_then(|ns| File::from(ns).metadata().ok())
            .map_or(0, |m| m.ino()),
    )
}

/// (inode, peer inode) of every unix socket in the network namespace of the unix
/// socket `sock`; empty when sock_diag cannot be read (the frozen stage checks again).
pub(super) fn unix_peers(sock: BorrowedFd<'_>) -> Vec<(u32, u32)> {
    let ns = sys::ioctl_get_fd(sock, SIOCGSKNS).ok();
    let Ok(mut net) = NetDiag::open(ns.as_ref().map(|n| n.as_fd())) else {
        return Vec::new();
    };
    net.unix()
        .map(|t| t.values().map(|d| (d.ino, d.peer)).collect())
        .unwrap_or_default()
}

/// Whether a unix socket has data queued that no peer could send again (see
/// [`kinds::unix_orphan_with_data`]). Only a socket with data queued costs a look at
/// the sock_diag table of its network namespace.
fn unix_orphan_with_data(fd: &OpenFd<'_>) -> Result<bool, FileError> {
    // FIONREAD: bytes queued (stream) or the next datagram's size; an error (a
    // listener) means nothing is queued.
    let queued = sys::ioctl_get_int(fd.raw(), libc::FIONREAD as libc::c_ulong).unwrap_or(0);
    if queued <= 0 {
        return Ok(false);
    }
    let ns = sys::ioctl_get_fd(fd.raw(), SIOCGSKNS).ok();
    let mut net = NetDiag::open(ns.as_ref().map(|n| n.as_fd()))
        .map_err(fd.io("open a sock_diag socket in the socket's network namespace"))?;
    let table = net
        .unix()
        .map_err(fd.io("read the unix socket table (sock_diag)"))?;
    let Some(d) = table.get(&(fd.meta.ino() as u32)) else {
        return Ok(false);
    };
    Ok(kinds::unix_orphan_with_data(
        d.peer,
        d.state.into(),
        d.kind != libc::SOCK_DGRAM as u8,
        d.name.as_deref().is_none_or(<[u8]>::is_empty),
    ))
}

/// Whether the socket lives in a network namespace that is neither its task's nor the
/// dumper's (made after a setns): the restore would make it in the tree's. (The frozen
/// stage judges the same against every namespace of the dump.)
pub(super) fn foreign_netns(fd: &OpenFd<'_>) -> Result<bool, FileError> {
    let Ok(ns) = sys::ioctl_get_fd(fd.raw(), SIOCGSKNS) else {
        // A kernel without SIOCGSKNS: nothing to judge by.
        return Ok(false);
    };
    let ino = File::from(ns)
        .metadata()
        .map_err(fd.io("stat the socket's network namespace"))?
        .ino();
    let ours = Pid(std::process::id() as i32);
    let known = [fd.pid, ours]
        .iter()
        .filter_map(|&pid| crate::dump::ids::ns_inode(pid, "net").ok())
        .any(|net| net == ino);
    Ok(!known)
}

/// The socket's addresses and state for messages (`ESTABLISHED 127.0.0.1:80 ->
/// 127.0.0.1:41000`), best effort: the link text when they cannot be read.
pub(super) fn describe(fd: &OpenFd<'_>) -> String {
    let s = fd.raw();
    let family = opt_int(s, libc::SOL_SOCKET, so::DOMAIN).unwrap_or(0);
    if family != libc::AF_INET && family != libc::AF_INET6 {
        return fd.link_str().into_owned();
    }
    let (Ok((src, sport)), Ok((dst, dport))) = (socket_addr(s, false), socket_addr(s, true)) else {
        return fd.link_str().into_owned();
    };
    let state = match tcp_info(s) {
        Ok((state, _)) => format!("{} ", tcp_state_name(state)),
        Err(_) => String::new(),
    };
    format!(
        "{state}{} -> {}",
        show_addr(family, &src, sport),
        show_addr(family, &dst, dport)
    )
}

/// Refuses what we cannot dump; works on a running task, changing nothing.
pub(super) fn check(fd: &OpenFd<'_>) -> Result<(), FileError> {
    let s = fd.raw();
    let domain =
        opt_int(s, libc::SOL_SOCKET, so::DOMAIN).map_err(fd.io("read the socket's family"))?;
    match domain {
        libc::AF_UNIX => {
            let ty =
                opt_int(s, libc::SOL_SOCKET, so::TYPE).map_err(fd.io("read the socket's type"))?;
            if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&ty) {
                return Err(fd.unsupported(format!("unix socket of type {ty} ({})", fd.link_str())));
            }
            check_bound_file(fd)
        }
        libc::AF_INET | libc::AF_INET6 => check_inet(fd, domain).map(drop),
        libc::AF_NETLINK => Err(fd.unsupported(format!("netlink socket ({})", fd.link_str()))),
        libc::AF_PACKET => Err(fd.unsupported(format!("packet socket ({})", fd.link_str()))),
        other => Err(fd.unsupported(format!(
            "socket of address family {other} ({})",
            fd.link_str()
        ))),
    }
}

/// Refuses, before the freeze, what the frozen stage would refuse of a unix stream or
/// seqpacket socket's connection: a listener with a connection not accepted yet that
/// the restore cannot make again ([`in_flight_refusal`]), and a connected socket whose
/// peer sock_diag does not show (`peer` is `Some(0)`, as the tree's checks read it):
/// the client of such a connection, or an end whose peer is gone and that is not shut
/// down. `in_tree` tells whether a unix socket inode is held by the tree. The sock_diag
/// table is read only for those (a listener is readable exactly when a connection
/// waits). The frozen stage judges again: a connection may arrive in between.
pub(super) fn check_connection(
    fd: &OpenFd<'_>,
    peer: Option<u32>,
    in_tree: impl Fn(u32) -> bool,
) -> Result<(), FileError> {
    let s = fd.raw();
    if opt_int(s, libc::SOL_SOCKET, so::TYPE).map_err(fd.io("read the socket's type"))?
        == libc::SOCK_DGRAM
    {
        return Ok(());
    }
    let listening = opt_int(s, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)
        .map_err(fd.io("read SO_ACCEPTCONN"))?
        != 0;
    if listening {
        if sys::poll_now(s, libc::POLLIN).map_err(fd.io("poll the listening socket"))? == 0 {
            return Ok(());
        }
    } else if peer != Some(0) {
        return Ok(());
    }
    let ns = sys::ioctl_get_fd(s, SIOCGSKNS).ok();
    let mut net = NetDiag::open(ns.as_ref().map(|n| n.as_fd()))
        .map_err(fd.io("open a sock_diag socket in the socket's network namespace"))?;
    let table = net
        .unix()
        .map_err(fd.io("read the unix socket table (sock_diag)"))?;
    let ino = fd.meta.ino() as u32;
    let Some(d) = table.get(&ino) else {
        return Ok(());
    };
    let what = |why: String| {
        fd.unsupported(format!(
            "unix socket {ino} {}: {why}",
            show_unix_name(d.name.as_deref())
        ))
    };
    if listening {
        return in_flight_refusal(d, table, in_tree).map_or(Ok(()), |why| Err(what(why)));
    }
    if d.state != TCP_ESTABLISHED || d.peer != 0 {
        return Ok(());
    }
    match table
        .values()
        .find(|l| l.state == TCP_LISTEN && l.icons.contains(&ino))
    {
        Some(l) if !in_tree(l.ino) => Err(what(format!(
            "connected to listener {} {} outside the dump, which has not accepted it yet",
            l.ino,
            show_unix_name(l.name.as_deref())
        ))),
        Some(l) => in_flight_refusal(l, table, in_tree).map_or(Ok(()), |why| {
            Err(what(format!("the client of a listener {why}")))
        }),
        None if d.shutdown != 3 => Err(what(
            "connected but its peer is gone and it is not shut down".into(),
        )),
        None => Ok(()),
    }
}

/// Why the connections waiting on listener `d` cannot be made again on restore (`None`:
/// none waits, or the one that does can). The restore connects the client to the
/// listener again, which makes exactly one such connection; it cannot put back data
/// the client sent before the accept (it waits in a socket no task holds), a client
/// already closed, one outside the dump, or the order of several.
fn in_flight_refusal(
    d: &UnixDiag,
    table: &HashMap<u32, UnixDiag>,
    in_tree: impl Fn(u32) -> bool,
) -> Option<String> {
    if d.state != TCP_LISTEN || (d.rqlen == 0 && d.icons.is_empty()) {
        return None;
    }
    let not_yet = "connections not accepted yet";
    let one = "connection not accepted yet";
    if d.icons.len() != 1 || d.rqlen > 1 {
        return Some(format!(
            "listening with {} {not_yet} (the order they are accepted in is not recorded)",
            d.rqlen.max(d.icons.len() as u32)
        ));
    }
    let client = d.icons[0];
    if client == 0 {
        return Some(format!("listening with a {one} whose client is closed"));
    }
    if !in_tree(client) {
        return Some(format!(
            "listening with a {one} from socket {client} outside the dump"
        ));
    }
    match table.get(&client) {
        Some(c) if c.wqlen == 0 => None,
        Some(_) => Some(format!(
            "listening with a {one} whose client {client} sent data (it waits in \
             a socket no task holds, which the restore cannot fill)"
        )),
        None => Some(format!(
            "listening with a {one} whose client {client} is not in sock_diag"
        )),
    }
}

/// Refuses a unix socket whose bound file is no longer at its name: renamed or moved
/// since the bind (a server that binds a temporary name and renames it into place), or
/// covered by a mount. The images keep the name only, so the restore would make the
/// file at the name, where clients no longer look, and not where they do. A file that
/// was deleted is fine: the restore binds and deletes it again. Changes nothing.
fn check_bound_file(fd: &OpenFd<'_>) -> Result<(), FileError> {
    let raw = sys::socket_address(fd.raw(), false).map_err(fd.io("read the socket's name"))?;
    let name = raw.get(2..).unwrap_or_default();
    // Unnamed, or abstract (a leading NUL): no file.
    let name = name.split(|&b| b == 0).next().unwrap_or_default();
    if name.is_empty() {
        return Ok(());
    }
    // Without SIOCUNIXFILE (old kernel, no CAP_NET_ADMIN) the frozen stage says why.
    let Ok(file) = sys::ioctl_get_fd(fd.raw(), SIOCUNIXFILE) else {
        return Ok(());
    };
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(fd.io("read the path of the socket's bound file"))?;
    let link = criu_images::path_bytes(&link);
    if link.ends_with(b" (deleted)") {
        return Ok(());
    }
    let shown = String::from_utf8_lossy(name);
    let now = String::from_utf8_lossy(&link);
    let ino = fd.meta.ino();
    let moved = |how: &str| {
        fd.unsupported(format!(
            "unix socket {ino} bound to {shown}: {how} (its file is at {now}); the images \
             keep only the name, so the restore would make the file at the name"
        ))
    };
    if name.first() != Some(&b'/') {
        // Relative: the file's path must end with the name (the frozen stage takes the
        // directory from there).
        let mut tail = b"/".to_vec();
        tail.extend_from_slice(name);
        return if link.ends_with(&tail) {
            Ok(())
        } else {
            Err(moved("its file was renamed or moved since the bind"))
        };
    }
    let meta = File::from(file)
        .metadata()
        .map_err(fd.io("stat the socket's bound file"))?;
    let mut by_path = std::ffi::OsString::from(format!("/proc/{}/root", fd.pid));
    by_path.push(std::ffi::OsStr::from_bytes(name));
    match std::fs::symlink_metadata(&by_path) {
        Ok(m) if (m.dev(), m.ino()) == (meta.dev(), meta.ino()) => Ok(()),
        Ok(_) => Err(moved(
            "its name now leads to another file (renamed over, moved, or covered by a mount)",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(moved("its file was renamed or moved since the bind"))
        }
        // Unreadable here (permissions): nothing to judge by.
        Err(_) => Ok(()),
    }
}

fn check_inet(fd: &OpenFd<'_>, family: i32) -> Result<InetKind, FileError> {
    let s = fd.raw();
    let ty = opt_int(s, libc::SOL_SOCKET, so::TYPE).map_err(fd.io("read the socket's type"))?;
    let proto =
        opt_int(s, libc::SOL_SOCKET, so::PROTOCOL).map_err(fd.io("read the socket's protocol"))?;
    let fam = family_name(family);
    let addrs = || -> Result<String, FileError> {
        let (src, sport) = socket_addr(s, false).map_err(fd.io("read the socket's address"))?;
        let (dst, dport) = socket_addr(s, true).map_err(fd.io("read the socket's peer address"))?;
        Ok(format!(
            "{} -> {}",
            show_addr(family, &src, sport),
            show_addr(family, &dst, dport)
        ))
    };
    match (ty, proto) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => {
            let (state, _) = tcp_info(s).map_err(fd.io("read TCP_INFO"))?;
            if state != TCP_LISTEN && state != TCP_CLOSE {
                return Err(fd.unsupported(format!(
                    "{} {fam} TCP socket {} (connected TCP sockets need TCP repair)",
                    tcp_state_name(state),
                    addrs()?
                )));
            }
        }
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) | (libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) => {
            const UDP_CORK: i32 = 1;
            if opt_int(s, proto, UDP_CORK).map_err(fd.io("read UDP_CORK"))? != 0 {
                return Err(fd.unsupported(format!("corked {fam} UDP socket {}", addrs()?)));
            }
        }
        (libc::SOCK_RAW, _) => {
            return Err(fd.unsupported(format!("raw {fam} socket (protocol {proto})")))
        }
        _ => return Err(fd.unsupported(format!("{fam} socket of type {ty} and protocol {proto}"))),
    }
    Ok(InetKind { ty, proto })
}

/// A dumped unix socket, for the check that its peer was dumped too.
struct UnixRecord {
    pid: Pid,
    fd: i32,
    ino: u32,
    peer: u32,
    peer_name: Option<Vec<u8>>,
}

/// The sockets part of a dump: sock_diag tables per network namespace, dumped unix
/// sockets, and queued data.
#[derive(Default)]
pub(super) struct Sockets {
    /// By network namespace inode (0: ours, when the socket's cannot be found).
    nets: HashMap<u64, NetDiag>,
    unix: Vec<UnixRecord>,
    /// Dumped listeners (`ino`) with a connection not accepted yet from `peer`.
    in_flight: Vec<UnixRecord>,
    unix_inodes: HashSet<u32>,
    queues: Vec<(pb::SkPacketEntry, Vec<u8>)>,
}

impl Sockets {
    /// The sock_diag tables of the socket's network namespace, and that namespace's inode.
    fn net_for(&mut self, fd: &OpenFd<'_>) -> Result<(&mut NetDiag, u64), FileError> {
        let ns = sys::ioctl_get_fd(fd.raw(), SIOCGSKNS).ok();
        let ino = match &ns {
            Some(ns) => File::from(ns.try_clone().map_err(fd.io("duplicate a namespace fd"))?)
                .metadata()
                .map_err(fd.io("stat the socket's network namespace"))?
                .ino(),
            None => 0,
        };
        let diag = match self.nets.entry(ino) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(
                NetDiag::open(ns.as_ref().map(|n| n.as_fd()))
                    .map_err(fd.io("open a sock_diag socket in the socket's network namespace"))?,
            ),
        };
        Ok((diag, ino))
    }

    /// Dumps a socket met for the first time as file `id`. `net_ids` gives CRIU's ids
    /// of network namespaces by inode, when known.
    pub(super) fn dump(
        &mut self,
        fd: &OpenFd<'_>,
        id: u32,
        net_ids: &HashMap<u64, u32>,
    ) -> Result<pb::FileEntry, FileError> {
        let domain = opt_int(fd.raw(), libc::SOL_SOCKET, so::DOMAIN)
            .map_err(fd.io("read the socket's family"))?;
        // The restore creates sockets in the tree's network namespace (or its own, the
        // dumper's): a socket of any other one (made after a setns) would come back in
        // the wrong one. Judged when the dump knows its namespaces' ids.
        let (_, netns) = self.net_for(fd)?;
        if netns != 0 && !net_ids.is_empty() && !net_ids.contains_key(&netns) {
            let kind = Kind::SocketForeignNetns;
            if let Some(why) = kind.dump_refusal(Given::default()) {
                return Err(fd.unsupported(format!(
                    "{kind} ({}, network namespace {netns}): {why}",
                    describe(fd)
                )));
            }
        }
        if domain == libc::AF_UNIX {
            let usk = self.dump_unix(fd, id, net_ids)?;
            Ok(file_entry(pb::FdTypes::Unixsk, id, |e| e.usk = Some(usk)))
        } else {
            let isk = self.dump_inet(fd, id, domain, net_ids)?;
            Ok(file_entry(pb::FdTypes::Inetsk, id, |e| e.isk = Some(isk)))
        }
    }

    fn dump_unix(
        &mut self,
        fd: &OpenFd<'_>,
        id: u32,
        net_ids: &HashMap<u64, u32>,
    ) -> Result<pb::UnixSkEntry, FileError> {
        let ino = fd.meta.ino() as u32;
        let (net, netns) = self.net_for(fd)?;
        let read_err = || fd.io("read the unix socket table (sock_diag)");
        if !net.unix().map_err(read_err())?.contains_key(&ino) {
            // Read before this socket existed (a table used across dumps): read it again.
            net.forget_unix();
        }
        let table = net.unix().map_err(read_err())?;
        let d: UnixDiag = table.get(&ino).cloned().ok_or_else(|| {
            fd.io("find the unix socket in the sock_diag table")(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no unix socket {ino}"),
            ))
        })?;
        let peer = (d.peer != 0).then(|| table.get(&d.peer).cloned()).flatten();
        let name = show_unix_name(d.name.as_deref());
        let what = |s: String| fd.unsupported(format!("unix socket {ino} {name}: {s}"));

        if ![TCP_LISTEN, TCP_ESTABLISHED, TCP_CLOSE].contains(&d.state) {
            return Err(what(format!("state {}", tcp_state_name(d.state))));
        }
        // Whether the client of a connection in flight is dumped too: `check_peers`.
        if let Some(why) = in_flight_refusal(&d, table, |_| true) {
            return Err(what(why));
        }
        // A client whose connection is not accepted yet is connected to a socket no
        // task holds (sock_diag shows no peer): it is recorded as connected to the
        // listener, to which the restore connects it again.
        let listener = (d.peer == 0 && d.state == TCP_ESTABLISHED)
            .then(|| {
                table
                    .values()
                    .find(|l| l.state == TCP_LISTEN && l.icons.contains(&ino))
            })
            .flatten()
            .cloned();
        if let Some(l) = &listener {
            if let Some(why) = in_flight_refusal(l, table, |_| true) {
                return Err(what(format!("the client of a listener {why}")));
            }
        }
        if listener.is_some() {
            // Connected again to the listener on restore (judged above).
        } else if d.peer != 0 {
            match &peer {
                None => {
                    return Err(what(format!(
                        "connected to socket {} that is not accepted yet or gone",
                        d.peer
                    )))
                }
                Some(p) if p.peer != ino && p.name.as_deref().is_none_or(|n| n.is_empty()) => {
                    return Err(what(format!(
                        "connected to socket {} that has no name and another peer",
                        d.peer
                    )))
                }
                Some(_) => {}
            }
        } else if d.state == TCP_ESTABLISHED && d.kind != libc::SOCK_DGRAM as u8 && d.shutdown != 3
        {
            return Err(what(
                "connected but its peer is gone and it is not shut down".into(),
            ));
        }

        let s = fd.raw();
        let mut entry = pb::UnixSkEntry {
            id,
            ino,
            r#type: d.kind.into(),
            state: d.state.into(),
            flags: fd.common.flags,
            uflags: 0,
            backlog: d.wqlen,
            peer: listener.as_ref().map_or(d.peer, |l| l.ino),
            fown: fd.fown()?,
            opts: sk_opts(s, libc::AF_UNIX).map_err(fd.io("read socket options"))?,
            name: d.name.clone().unwrap_or_default(),
            shutdown: (d.shutdown != 0).then_some(i32::from(d.shutdown & 3)),
            file_perms: None,
            name_dir: None,
            deleted: None,
            ns_id: net_ids.get(&netns).copied(),
            mnt_id: None,
        };
        if let Some(path) = d
            .name
            .as_deref()
            .filter(|n| n.first().is_some_and(|&b| b != 0))
        {
            bound_file(fd, path, &mut entry)?;
        }
        if d.rqlen != 0 && d.state != TCP_LISTEN {
            let packets = peek_queue(fd, id, d.kind)?;
            let stream_like = d.kind != libc::SOCK_DGRAM as u8;
            let unnamed = d.name.as_deref().is_none_or(|n| n.is_empty());
            if !packets.is_empty()
                && kinds::unix_orphan_with_data(d.peer, d.state.into(), stream_like, unnamed)
            {
                let kind = Kind::UnixOrphanQueued;
                if let Some(why) = kind.dump_refusal(Given::default()) {
                    return Err(fd.unsupported(format!("{kind} ({ino} {name}): {why}")));
                }
            }
            self.queues.extend(packets);
        }
        let (peer_ino, peer_name) = match &listener {
            Some(l) => (l.ino, l.name.clone()),
            None => (d.peer, peer.and_then(|p| p.name)),
        };
        self.unix.push(UnixRecord {
            pid: fd.pid,
            fd: fd.fd,
            ino,
            peer: peer_ino,
            peer_name,
        });
        if d.state == TCP_LISTEN {
            for &client in &d.icons {
                self.in_flight.push(UnixRecord {
                    pid: fd.pid,
                    fd: fd.fd,
                    ino,
                    peer: client,
                    peer_name: d.name.clone(),
                });
            }
        }
        self.unix_inodes.insert(ino);
        Ok(entry)
    }

    fn dump_inet(
        &mut self,
        fd: &OpenFd<'_>,
        id: u32,
        family: i32,
        net_ids: &HashMap<u64, u32>,
    ) -> Result<pb::InetSkEntry, FileError> {
        let kind = check_inet(fd, family)?;
        let s = fd.raw();
        let ino = fd.meta.ino() as u32;
        let is_tcp = kind.proto == libc::IPPROTO_TCP;
        let (net, netns) = self.net_for(fd)?;
        let found = net
            .inet(family as u8, kind.proto as u8)
            .map_err(fd.io("read the inet socket table (sock_diag)"))?
            .get(&ino)
            .cloned();
        let (state, src, sport, dst, dport, backlog, shutdown, rqueue) = match found {
            Some(d) => (
                d.state, d.src, d.sport, d.dst, d.dport, d.wqueue, d.shutdown, d.rqueue,
            ),
            None => {
                // Not in the kernel's tables: neither bound nor connected.
                let (src, sport) =
                    socket_addr(s, false).map_err(fd.io("read the socket's address"))?;
                let (dst, dport) =
                    socket_addr(s, true).map_err(fd.io("read the socket's peer address"))?;
                let (mut src, mut sport) = (src, sport);
                let (backoff, shutdown) = if is_tcp {
                    if sport != 0 && lists_bound_only_tcp() {
                        // Linux >= 6.8 lists bound-only TCP sockets: one it does not
                        // list holds no port. Such a socket was connected and is closed
                        // now (its port went back with the connection): it still shows
                        // its old name, but binding it again at restore would take a
                        // port it does not hold (and fail while its TIME_WAIT holds it).
                        (src, sport) = ([0; 16], 0);
                    }
                    (
                        tcp_info(s).map_err(fd.io("read TCP_INFO"))?.1,
                        closed_tcp_shutdown(s).map_err(fd.io("poll the closed socket"))?,
                    )
                } else {
                    (0, 0)
                };
                (
                    TCP_CLOSE,
                    src,
                    sport,
                    dst,
                    dport,
                    u32::from(backoff),
                    shutdown,
                    0,
                )
            }
        };
        let fam = family_name(family);
        if is_tcp && state == TCP_LISTEN && rqueue != 0 {
            return Err(fd.unsupported(format!(
                "listening {fam} TCP socket {} with {rqueue} connections not accepted yet",
                show_addr(family, &src, sport)
            )));
        }
        if is_tcp && state != TCP_LISTEN && state != TCP_CLOSE {
            return Err(fd.unsupported(format!(
                "{} {fam} TCP socket {} -> {} (connected TCP sockets need TCP repair)",
                tcp_state_name(state),
                show_addr(family, &src, sport),
                show_addr(family, &dst, dport)
            )));
        }
        let mut ifname = None;
        let mut v6only = None;
        if family == libc::AF_INET6 {
            v6only = Some(
                opt_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
                    .map_err(fd.io("read IPV6_V6ONLY"))?
                    != 0,
            );
            let link_local = src[0] == 0xfe && src[1] & 0xc0 == 0x80;
            if link_local && sport != 0 {
                ifname = bound_device(s).map_err(fd.io("read SO_BINDTODEVICE"))?;
                if ifname.is_none() {
                    return Err(fd.unsupported(format!(
                        "{fam} socket bound to link-local {} without a bound interface",
                        show_addr(family, &src, sport)
                    )));
                }
            }
        }
        Ok(pb::InetSkEntry {
            id,
            ino,
            family: family as u32,
            r#type: kind.ty as u32,
            proto: kind.proto as u32,
            state: state.into(),
            src_port: sport.into(),
            dst_port: dport.into(),
            flags: fd.common.flags,
            backlog,
            src_addr: addr_words(family, &src),
            dst_addr: addr_words(family, &dst),
            fown: fd.fown()?,
            opts: sk_opts(s, family).map_err(fd.io("read socket options"))?,
            v6only,
            ip_opts: Some(ip_opts(s, family).map_err(fd.io("read IP options"))?),
            ifname,
            ns_id: net_ids.get(&netns).copied(),
            shutdown: (shutdown != 0).then_some(i32::from(shutdown & 3)),
            tcp_opts: Some(if is_tcp {
                tcp_opts(s).map_err(fd.io("read TCP options"))?
            } else {
                pb::TcpOptsEntry::default()
            }),
        })
    }

    /// Every connected unix socket's peer must be in the dump as well.
    pub(super) fn check_peers(&self) -> Result<(), FileError> {
        let kind = Kind::UnixPeerOutside;
        for r in &self.unix {
            if r.peer != 0 && !self.unix_inodes.contains(&r.peer) {
                let Some(why) = kind.dump_refusal(Given::default()) else {
                    continue;
                };
                return Err(FileError::Unsupported {
                    pid: r.pid,
                    fd: r.fd,
                    kind: format!(
                        "{kind} (unix socket {} connected to socket {} {} outside the \
                         dumped tree): {why}",
                        r.ino,
                        r.peer,
                        show_unix_name(r.peer_name.as_deref())
                    ),
                });
            }
        }
        for r in &self.in_flight {
            if !self.unix_inodes.contains(&r.peer) {
                return Err(FileError::Unsupported {
                    pid: r.pid,
                    fd: r.fd,
                    kind: format!(
                        "unix socket {} {}: listening with a connection not accepted \
                         yet from socket {} outside the dump",
                        r.ino,
                        show_unix_name(r.peer_name.as_deref()),
                        r.peer
                    ),
                });
            }
        }
        Ok(())
    }

    pub(super) fn write(&self, dir: &Path) -> Result<(), FileError> {
        if self.queues.is_empty() {
            return Ok(());
        }
        let mut w = writer(dir, "SK_QUEUES", "")?;
        for (entry, data) in &self.queues {
            w.write_entry(entry)?;
            w.write_raw(data)?;
        }
        w.finish()?;
        Ok(())
    }
}

/// Fills the bound file's permissions, whether it was deleted, and for a relative name
/// the directory it was bound in.
fn bound_file(fd: &OpenFd<'_>, name: &[u8], entry: &mut pb::UnixSkEntry) -> Result<(), FileError> {
    let file = sys::ioctl_get_fd(fd.raw(), SIOCUNIXFILE)
        .map_err(fd.io("open the socket's bound file (SIOCUNIXFILE)"))?;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(fd.io("read the bound file's path"))?;
    let meta = File::from(file)
        .metadata()
        .map_err(fd.io("stat the socket's bound file"))?;
    entry.file_perms = Some(pb::FilePermsEntry {
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
    });
    // Bytes: a path need not be UTF-8.
    let mut path = criu_images::path_bytes(&link);
    if let Some(stripped) = path.strip_suffix(b" (deleted)") {
        entry.deleted = Some(true);
        path = stripped.to_vec();
    }
    let name = name.strip_suffix(&[0]).unwrap_or(name);
    if name.first() != Some(&b'/') {
        let dir = path
            .strip_suffix(name)
            .and_then(|d| d.strip_suffix(b"/"))
            .ok_or_else(|| {
                fd.unsupported(format!(
                    "unix socket bound to relative name {} whose file is now {}",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(&path)
                ))
            })?;
        entry.name_dir = Some(if dir.is_empty() {
            b"/".to_vec()
        } else {
            dir.to_vec()
        });
    }
    Ok(())
}

/// Largest buffer used to peek at one message.
const MAX_PEEK: usize = 64 << 20;

/// Reads the socket's receive queue without consuming it: one `sk_packet_entry` per
/// message (or stream chunk), for the socket with file id `id`.
fn peek_queue(
    fd: &OpenFd<'_>,
    id: u32,
    kind: u8,
) -> Result<Vec<(pb::SkPacketEntry, Vec<u8>)>, FileError> {
    let s = fd.raw();
    let orig = opt_int(s, libc::SOL_SOCKET, so::PEEK_OFF).map_err(fd.io("read SO_PEEK_OFF"))?;
    sys::setsockopt_int(s, libc::SOL_SOCKET, so::PEEK_OFF, 0).map_err(fd.io("set SO_PEEK_OFF"))?;
    let result = peek_all(fd, id, kind != libc::SOCK_STREAM as u8);
    // Put the task's peek offset back whatever happened.
    let restored = sys::setsockopt_int(s, libc::SOL_SOCKET, so::PEEK_OFF, orig)
        .map_err(fd.io("restore SO_PEEK_OFF"));
    let packets = result?;
    restored?;
    Ok(packets)
}

fn peek_all(
    fd: &OpenFd<'_>,
    id: u32,
    datagrams: bool,
) -> Result<Vec<(pb::SkPacketEntry, Vec<u8>)>, FileError> {
    let s = fd.raw();
    let sndbuf = opt_int(s, libc::SOL_SOCKET, so::SNDBUF)
        .map_err(fd.io("read SO_SNDBUF"))?
        .max(0) as usize;
    let rcvbuf = opt_int(s, libc::SOL_SOCKET, so::RCVBUF)
        .map_err(fd.io("read SO_RCVBUF"))?
        .max(0) as usize;
    let mut buf = vec![0u8; sndbuf.max(rcvbuf).clamp(64 << 10, MAX_PEEK)];
    let mut offset = 0usize;
    let mut out = Vec::new();
    while let Some(p) =
        sys::recv_peek(s, &mut buf, datagrams).map_err(fd.io("peek at the socket's queue"))?
    {
        if p.cmsgs
            .iter()
            .any(|&(level, ty)| level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS)
            || p.control_truncated
        {
            return Err(fd.unsupported(format!(
                "unix socket {} with file descriptors in its queue (SCM_RIGHTS)",
                fd.meta.ino()
            )));
        }
        if p.full_len > p.len {
            // A datagram larger than the buffer: peek at it again, whole.
            if p.full_len > MAX_PEEK {
                return Err(fd.unsupported(format!(
                    "unix socket {} with a {}-byte message queued",
                    fd.meta.ino(),
                    p.full_len
                )));
            }
            buf.resize(p.full_len, 0);
            sys::setsockopt_int(s, libc::SOL_SOCKET, so::PEEK_OFF, offset as i32)
                .map_err(fd.io("set SO_PEEK_OFF"))?;
            continue;
        }
        if p.len == 0 {
            break;
        }
        out.push((
            pb::SkPacketEntry {
                id_for: id,
                length: p.len as u32,
                scm: Vec::new(),
            },
            buf[..p.len].to_vec(),
        ));
        offset += p.len;
        if offset > i32::MAX as usize {
            return Err(fd.unsupported(format!(
                "unix socket {} with more than 2 GiB queued",
                fd.meta.ino()
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_print_readably() {
        assert_eq!(show_unix_name(None), "(unnamed)");
        assert_eq!(show_unix_name(Some(b"\0abc")), "@abc");
        assert_eq!(show_unix_name(Some(b"/run/x.sock\0")), "/run/x.sock");
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(show_addr(libc::AF_INET, &a, 80), "10.0.0.1:80");
        assert_eq!(
            show_addr(libc::AF_INET6, &Ipv6Addr::LOCALHOST.octets(), 443),
            "[::1]:443"
        );
    }

    #[test]
    fn sockaddr_parsing() {
        let mut raw = vec![0u8; 16];
        raw[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        raw[2..4].copy_from_slice(&8080u16.to_be_bytes());
        raw[4..8].copy_from_slice(&[127, 0, 0, 1]);
        let (addr, port) = parse_sockaddr(&raw);
        assert_eq!((&addr[..4], port), (&[127, 0, 0, 1][..], 8080));
        assert_eq!(
            addr_words(libc::AF_INET, &addr),
            vec![u32::from_ne_bytes([127, 0, 0, 1])]
        );
        assert_eq!(parse_sockaddr(&raw[..5]), ([0; 16], 0));
        assert_eq!(parse_sockaddr(&[]), ([0; 16], 0));
    }
}
