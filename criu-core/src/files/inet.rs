//! Inet sockets: TCP listeners and unconnected TCP sockets, UDP and UDP-Lite sockets,
//! IPv4 and IPv6; TCP connections are this module's too, their repair is `tcp.rs`'s.
//!
//! Dump: state, addresses, backlog and shutdown from sock_diag (or, for a socket its
//! tables do not list, from the socket itself), with the IP and TCP options. A
//! connection is taken in TCP repair mode (`tcp.rs`) with `--tcp-established`; corked
//! UDP sockets are refused (raw and ping sockets are `inet_raw.rs`'s), and so is a listener with connections not
//! accepted yet unless `--skip-in-flight` drops them (as CRIU).
//!
//! Restore: a new socket with its options, bound to its address (with `IP_FREEBIND` and
//! `SO_REUSEADDR` for the while: the address may not be local yet, and a connection of
//! the tree may hold the port already), then listening or (UDP) connected, and shut
//! down as it was.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use criu_images::pb;

use super::dump::{FileError, OpenFd};
use super::kinds::Kind;
use super::restore::{finish, FileOpener, FileRef, Result};
use super::socket::{
    bound_device, in_image, opt_int, set_sk_opts, shut, sk_opts, so, tcp_state_name, Nets,
    TCP_CLOSE, TCP_LISTEN,
};
use super::{inet_raw, tcp};
use crate::sys::{self, Pid};

// --- dump ------------------------------------------------------------------------

fn family_name(family: i32) -> &'static str {
    if family == libc::AF_INET6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// Formats an address for messages: `127.0.0.1:80`, `[::1]:80`.
pub(super) fn show_addr(family: i32, addr: &[u8; 16], port: u16) -> String {
    if family == libc::AF_INET6 {
        format!("[{}]:{port}", Ipv6Addr::from(*addr))
    } else {
        format!(
            "{}:{port}",
            Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])
        )
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
pub(super) fn socket_addr(s: BorrowedFd<'_>, peer: bool) -> io::Result<([u8; 16], u16)> {
    match sys::socket_address(s, peer) {
        Ok(raw) => Ok(parse_sockaddr(&raw)),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(([0; 16], 0)),
        Err(e) => Err(e),
    }
}

/// Addresses in the image: one u32 word for IPv4, four for IPv6, network byte order
/// as in memory.
pub(super) fn addr_words(family: i32, addr: &[u8; 16]) -> Vec<u32> {
    let n = if family == libc::AF_INET6 { 4 } else { 1 };
    addr.chunks_exact(4)
        .take(n)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// IPPROTO_IP / IPPROTO_IPV6 options; each recorded only when set.
pub(super) fn ip_opts(s: BorrowedFd<'_>, family: i32) -> io::Result<pb::IpOptsEntry> {
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
pub(super) fn tcp_info(s: BorrowedFd<'_>) -> io::Result<(u8, u8)> {
    let mut info = [0u8; 8];
    sys::getsockopt_bytes(s, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)?;
    Ok((info[0], info[4]))
}

/// A listener's connections waiting to be accepted (`tcpi_unacked` of TCP_INFO, which
/// for a listener is its accept queue's length).
fn accept_queue(s: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = [0u8; 32];
    sys::getsockopt_bytes(s, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)?;
    Ok(u32::from_ne_bytes([info[24], info[25], info[26], info[27]]))
}

/// The row of the kind table of a TCP socket in `state` (`in_flight`: a listener's
/// connections not accepted yet).
pub(super) fn tcp_kind(state: u8, in_flight: bool) -> Kind {
    match state {
        TCP_LISTEN if in_flight => Kind::TcpListenInFlight,
        TCP_LISTEN => Kind::TcpListen,
        TCP_CLOSE => Kind::TcpClosed,
        s if tcp::repairable(s).is_ok() => Kind::TcpConnected,
        _ => Kind::TcpOtherState,
    }
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
pub(super) struct InetKind {
    ty: i32,
    proto: i32,
}

/// The inet socket's row in the kind table, from its type, protocol and (TCP) state;
/// works on a running task, changing nothing.
pub(super) fn kind(fd: &OpenFd<'_>) -> Result<Kind, FileError> {
    let s = fd.raw();
    let proto =
        opt_int(s, libc::SOL_SOCKET, so::PROTOCOL).map_err(fd.io("read the socket's protocol"))?;
    let ty = opt_int(s, libc::SOL_SOCKET, so::TYPE).map_err(fd.io("read the socket's type"))?;
    Ok(match (ty, proto) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => {
            let state = tcp_info(s).map_err(fd.io("read TCP_INFO"))?.0;
            let in_flight = state == TCP_LISTEN
                && accept_queue(s).map_err(fd.io("read the accept queue (TCP_INFO)"))? != 0;
            tcp_kind(state, in_flight)
        }
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => Kind::Udp,
        (libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) => Kind::UdpLite,
        (libc::SOCK_RAW, _) => Kind::InetRaw,
        (libc::SOCK_DGRAM, libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6) => Kind::InetIcmp,
        _ => Kind::InetOther,
    })
}

/// Refuses an inet socket we cannot dump (corked UDP, raw...); the kind we can.
/// (Connected TCP sockets and listeners with connections waiting are judged by the kind
/// table, under the dump's options.)
pub(super) fn check(fd: &OpenFd<'_>, family: i32) -> Result<InetKind, FileError> {
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
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => {}
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) | (libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) => {
            const UDP_CORK: i32 = 1;
            if opt_int(s, proto, UDP_CORK).map_err(fd.io("read UDP_CORK"))? != 0 {
                return Err(fd.unsupported(format!("corked {fam} UDP socket {}", addrs()?)));
            }
        }
        (ty, proto) if inet_raw::handles(ty, proto) => inet_raw::check(fd, family, ty, proto)?,
        _ => return Err(fd.unsupported(format!("{fam} socket of type {ty} and protocol {proto}"))),
    }
    Ok(InetKind { ty, proto })
}

/// Dumps inet socket `fd` of `family` as file `id` (`nets`: the sock_diag tables by
/// network namespace; `tcp`: the connections taken in repair mode; `net_ids`: CRIU's
/// ids of network namespaces by inode).
pub(super) fn dump(
    nets: &mut Nets,
    tcp: &mut tcp::DumpState,
    fd: &OpenFd<'_>,
    id: u32,
    family: i32,
    net_ids: &HashMap<u64, u32>,
) -> Result<pb::InetSkEntry, FileError> {
    let kind = check(fd, family)?;
    if inet_raw::handles(kind.ty, kind.proto) {
        return inet_raw::dump(nets, fd, id, (family, kind.ty, kind.proto), net_ids);
    }
    let s = fd.raw();
    let ino = fd.meta.ino() as u32;
    let is_tcp = kind.proto == libc::IPPROTO_TCP;
    let (net, netns) = nets.net_for(fd)?;
    let found = net
        .inet(family as u8, kind.proto as u8)
        .map_err(fd.io("read the inet socket table (sock_diag)"))?
        .get(&ino)
        .cloned();
    let (mut state, src, sport, dst, dport, backlog, shutdown) = match found {
        Some(d) => (
            d.state, d.src, d.sport, d.dst, d.dport, d.wqueue, d.shutdown,
        ),
        None => {
            // Not in the kernel's tables: neither bound nor connected.
            let (src, sport) = socket_addr(s, false).map_err(fd.io("read the socket's address"))?;
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
            )
        }
    };
    let fam = family_name(family);
    // (A listener's connections not accepted yet were judged by the kind table: with
    // --skip-in-flight they are left behind, as CRIU leaves them.)
    if is_tcp && state != TCP_LISTEN && state != TCP_CLOSE && !tcp.closing() {
        // The kind table let it through: --tcp-established. Locked and read in repair
        // mode; its state is the one read there, where it no longer moves.
        let conn = tcp::connection(
            family,
            &addr_words(family, &src),
            sport.into(),
            &addr_words(family, &dst),
            dport.into(),
        );
        state = tcp.dump(fd, conn)?;
        tracing::debug!(pid = %fd.pid, fd = fd.fd, %conn, state = tcp_state_name(state), "TCP connection dumped");
    }
    let mut ifname = None;
    let mut v6only = None;
    if family == libc::AF_INET6 {
        v6only = Some(
            opt_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).map_err(fd.io("read IPV6_V6ONLY"))?
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
        // Also for a connection with --tcp-close: its state, as CRIU records it.
        shutdown: (shutdown != 0).then_some(i32::from(shutdown & 3)),
        tcp_opts: Some(if is_tcp {
            tcp_opts(s).map_err(fd.io("read TCP options"))?
        } else {
            pb::TcpOptsEntry::default()
        }),
    })
}

// --- restore ---------------------------------------------------------------------

impl FileOpener {
    /// The row of the kind table of an inet socket in the images, and what to call it.
    pub(super) fn inet_kind(&self, ie: &pb::InetSkEntry) -> (Kind, String) {
        let family = ie.family as i32;
        let netns = self.same_netns(ie.ns_id);
        let src = show_inet(family, &ie.src_addr, ie.src_port);
        let dst = show_inet(family, &ie.dst_addr, ie.dst_port);
        let kind = match (family, ie.r#type as i32, ie.proto as i32) {
            _ if netns.is_err() => Kind::SocketForeignNetns,
            (f, _, _) if f != libc::AF_INET && f != libc::AF_INET6 => Kind::OtherSocket,
            (_, libc::SOCK_STREAM, libc::IPPROTO_TCP) => {
                tcp_kind(u8::try_from(ie.state).unwrap_or(u8::MAX), false)
            }
            (_, libc::SOCK_DGRAM, libc::IPPROTO_UDP) => Kind::Udp,
            (_, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) => Kind::UdpLite,
            (_, libc::SOCK_RAW, _) => Kind::InetRaw,
            (_, libc::SOCK_DGRAM, libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6) => Kind::InetIcmp,
            _ => Kind::InetOther,
        };
        let mut what = format!(
            "family {family}, type {}, protocol {}, state {}, {src} -> {dst}",
            ie.r#type, ie.proto, ie.state
        );
        if let Err(why) = netns {
            what = format!("{what}: {why}");
        }
        (kind, what)
    }

    pub(super) fn check_inet(&self, pid: Pid, at: &FileRef, ie: &pb::InetSkEntry) -> Result<()> {
        let family = ie.family as i32;
        let fam = if family == libc::AF_INET6 {
            "IPv6"
        } else {
            "IPv4"
        };
        let src = show_inet(family, &ie.src_addr, ie.src_port);
        let no = |what: String| Err(at.unsupported(pid, what));
        if family != libc::AF_INET && family != libc::AF_INET6 {
            return no(format!("socket of address family {family}"));
        }
        if let Err(what) = self.same_netns(ie.ns_id) {
            return no(format!("{fam} socket {src}: {what}"));
        }
        match (ie.r#type as i32, ie.proto as i32) {
            (libc::SOCK_STREAM, libc::IPPROTO_TCP) => {
                if tcp::is_connection(ie) {
                    // The kind table judged the state and the options.
                    return self.check_tcp(at, ie);
                }
            }
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP) | (libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) => {
                if ie.state != in_image::TCP_CLOSE && ie.state != in_image::TCP_ESTABLISHED {
                    return no(format!("{fam} UDP socket {src} in state {}", ie.state));
                }
            }
            (ty, proto) if inet_raw::handles(ty, proto) => {
                if ie.state != in_image::TCP_CLOSE && ie.state != in_image::TCP_ESTABLISHED {
                    return no(format!(
                        "{fam} raw or ICMP socket {src} in state {}",
                        ie.state
                    ));
                }
            }
            (ty, proto) => return no(format!("{fam} socket of type {ty} and protocol {proto}")),
        }
        Ok(())
    }
}

/// Formats an inet address for messages from its image words.
pub(super) fn show_inet(family: i32, words: &[u32], port: u32) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    if family == libc::AF_INET6 {
        let mut a = [0u8; 16];
        let n = bytes.len().min(16);
        a[..n].copy_from_slice(&bytes[..n]);
        format!("[{}]:{port}", std::net::Ipv6Addr::from(a))
    } else {
        let mut a = [0u8; 4];
        let n = bytes.len().min(4);
        a[..n].copy_from_slice(&bytes[..n]);
        format!("{}:{port}", std::net::Ipv4Addr::from(a))
    }
}

/// The `sockaddr_in`/`sockaddr_in6` bytes of an address saved as image words.
pub(super) fn inet_addr(family: i32, words: &[u32], port: u32, scope_id: u32) -> Vec<u8> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mut out = (family as u16).to_ne_bytes().to_vec();
    out.extend_from_slice(&(port as u16).to_be_bytes());
    if family == libc::AF_INET6 {
        out.extend_from_slice(&[0; 4]); // flow info
        let mut a = [0u8; 16];
        let n = bytes.len().min(16);
        a[..n].copy_from_slice(&bytes[..n]);
        out.extend_from_slice(&a);
        out.extend_from_slice(&scope_id.to_ne_bytes());
    } else {
        let mut a = [0u8; 4];
        let n = bytes.len().min(4);
        a[..n].copy_from_slice(&bytes[..n]);
        out.extend_from_slice(&a);
        out.extend_from_slice(&[0; 8]);
    }
    out
}

/// IPPROTO_IP / IPPROTO_IPV6 options as saved.
pub(super) fn set_ip_opts(
    at: &FileRef,
    s: BorrowedFd<'_>,
    family: i32,
    ip: &pb::IpOptsEntry,
) -> Result<()> {
    const IP_FREEBIND: i32 = 15;
    const IPV6_FREEBIND: i32 = 78;
    const IPV6_RECVPKTINFO: i32 = 49;
    let (level, freebind, pktinfo) = if family == libc::AF_INET6 {
        (libc::IPPROTO_IPV6, IPV6_FREEBIND, IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, IP_FREEBIND, libc::IP_PKTINFO)
    };
    let set = |name: i32, v: i32, what: &str| {
        sys::setsockopt_int(s, level, name, v).map_err(at.io(format!("set {what}")))
    };
    if ip.freebind == Some(true) {
        set(freebind, 1, "IP_FREEBIND")?;
    }
    if ip.pktinfo == Some(true) {
        set(pktinfo, 1, "IP_PKTINFO")?;
    }
    if let Some(tos) = ip.tos {
        set(libc::IP_TOS, tos as i32, "IP_TOS")?;
    }
    if let Some(ttl) = ip.ttl {
        set(libc::IP_TTL, ttl as i32, "IP_TTL")?;
    }
    Ok(())
}

/// IPPROTO_TCP options as saved.
pub(super) fn set_tcp_opts(at: &FileRef, s: BorrowedFd<'_>, t: &pb::TcpOptsEntry) -> Result<()> {
    let set = |name: i32, v: i32, what: &str| {
        sys::setsockopt_int(s, libc::IPPROTO_TCP, name, v).map_err(at.io(format!("set {what}")))
    };
    if t.nodelay == Some(true) {
        set(libc::TCP_NODELAY, 1, "TCP_NODELAY")?;
    }
    if t.cork == Some(true) {
        set(libc::TCP_CORK, 1, "TCP_CORK")?;
    }
    for (name, v, what) in [
        (libc::TCP_KEEPCNT, t.keepcnt, "TCP_KEEPCNT"),
        (libc::TCP_KEEPIDLE, t.keepidle, "TCP_KEEPIDLE"),
        (libc::TCP_KEEPINTVL, t.keepintvl, "TCP_KEEPINTVL"),
    ] {
        if let Some(v) = v {
            set(name, v as i32, what)?;
        }
    }
    Ok(())
}

/// A TCP listener or unconnected TCP socket, or a UDP socket, bound and set as saved
/// (connections are `tcp.rs`'s).
///
/// `shared_port`: another TCP socket of the images (not a connection) is bound to the
/// same port, such as a second listener with SO_REUSEPORT. Both options are then on
/// while it is made, and put back as saved only once every socket exists
/// ([`PortsLater`]): a listener that cleared SO_REUSEPORT after the other bound beside
/// it could not be bound again otherwise (CRIU does the same).
pub(super) fn open_inet(
    at: &FileRef,
    ie: &pb::InetSkEntry,
    shared_port: bool,
    later: &mut PortsLater,
) -> Result<OwnedFd> {
    let family = ie.family as i32;
    let (ty, proto) = (ie.r#type as i32, ie.proto as i32);
    let tcp = proto == libc::IPPROTO_TCP;
    let src = show_inet(family, &ie.src_addr, ie.src_port);
    let restorable = if tcp {
        [in_image::TCP_LISTEN, in_image::TCP_CLOSE].contains(&ie.state)
    } else {
        [in_image::TCP_CLOSE, in_image::TCP_ESTABLISHED].contains(&ie.state)
    };
    if !restorable {
        return Err(at.refused(format!(
            "socket {src} in state {} (not a listener, an unconnected TCP socket or a UDP \
             socket)",
            ie.state
        )));
    }
    let fd = sys::socket(family, ty, proto).map_err(at.io("create a socket"))?;
    let s = fd.as_fd();
    if family == libc::AF_INET6 {
        if let Some(v6only) = ie.v6only {
            sys::setsockopt_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v6only.into())
                .map_err(at.io("set IPV6_V6ONLY"))?;
        }
    }
    set_sk_opts(at, s, &ie.opts)?;
    if let Some(ip) = &ie.ip_opts {
        set_ip_opts(at, s, family, ip)?;
    }
    if let Some(t) = ie.tcp_opts.as_ref().filter(|_| tcp) {
        set_tcp_opts(at, s, t)?;
    }
    // A connection of the tree may hold the port already (a server's accepted
    // connections share its port): with SO_REUSEADDR the listener binds and listens
    // beside it, as the original did before it accepted them. Put back after listen.
    let shared_port = tcp && shared_port;
    let reuse_for_now = tcp && !shared_port && ie.opts.reuseaddr != Some(true);
    if reuse_for_now || shared_port {
        sys::setsockopt_int(s, libc::SOL_SOCKET, so::REUSEADDR, 1)
            .map_err(at.io("set SO_REUSEADDR to bind"))?;
    }
    if shared_port {
        sys::setsockopt_int(s, libc::SOL_SOCKET, so::REUSEPORT, 1)
            .map_err(at.io("set SO_REUSEPORT to bind"))?;
    }
    let any_addr = ie.src_addr.iter().all(|&w| w == 0);
    if ie.src_port != 0 || !any_addr {
        let scope = match ie.ifname.as_deref() {
            Some(name) if family == libc::AF_INET6 => {
                sys::if_index(s, name).map_err(at.io(format!("find interface {name}")))?
            }
            _ => 0,
        };
        let addr = inet_addr(family, &ie.src_addr, ie.src_port, scope);
        // The address may not be local (any more, or yet: IPv6 addresses are tentative
        // for a while after they are added, and the socket may have been bound with
        // IP_FREEBIND that was cleared later): bind with IP_FREEBIND on, then put the
        // saved value back. IP_FREEBIND at IPPROTO_IP is the one flag for both families.
        const IP_FREEBIND: i32 = 15;
        let saved = ie.ip_opts.as_ref().and_then(|o| o.freebind) == Some(true);
        sys::setsockopt_int(s, libc::IPPROTO_IP, IP_FREEBIND, 1)
            .map_err(at.io(format!("set IP_FREEBIND to bind to {src}")))?;
        sys::bind_raw(s, &addr).map_err(at.io(format!("bind to {src}")))?;
        if !saved {
            sys::setsockopt_int(s, libc::IPPROTO_IP, IP_FREEBIND, 0)
                .map_err(at.io(format!("clear IP_FREEBIND after binding to {src}")))?;
        }
    }
    if ie.state == in_image::TCP_LISTEN {
        sys::listen(s, ie.backlog.min(i32::MAX as u32) as i32)
            .map_err(at.io(format!("listen on {src}")))?;
    } else if !tcp && ie.state == in_image::TCP_ESTABLISHED {
        let dst = show_inet(family, &ie.dst_addr, ie.dst_port);
        let addr = inet_addr(family, &ie.dst_addr, ie.dst_port, 0);
        sys::connect_raw(s, &addr).map_err(at.io(format!("connect to {dst}")))?;
    }
    if reuse_for_now {
        sys::setsockopt_int(s, libc::SOL_SOCKET, so::REUSEADDR, 0)
            .map_err(at.io("clear SO_REUSEADDR after binding"))?;
    }
    if shared_port {
        later.0.push((
            at.clone(),
            fd.try_clone().map_err(at.io("duplicate the socket"))?,
            ie.opts.reuseaddr == Some(true),
            ie.opts.so_reuseport == Some(true),
        ));
    }
    shut(at, s, ie.shutdown)?;
    finish(at, s, ie.flags, &ie.fown)?;
    Ok(fd)
}

/// Sockets sharing a port, whose SO_REUSEADDR and SO_REUSEPORT are put back as saved
/// once every socket of the tree exists (see [`open_inet`]).
#[derive(Default)]
pub(super) struct PortsLater(Vec<(FileRef, OwnedFd, bool, bool)>);

impl PortsLater {
    pub(super) fn put_back(&mut self) -> Result<()> {
        for (at, fd, reuseaddr, reuseport) in self.0.drain(..) {
            let s = fd.as_fd();
            sys::setsockopt_int(s, libc::SOL_SOCKET, so::REUSEADDR, reuseaddr.into())
                .map_err(at.io("put SO_REUSEADDR back"))?;
            sys::setsockopt_int(s, libc::SOL_SOCKET, so::REUSEPORT, reuseport.into())
                .map_err(at.io("put SO_REUSEPORT back"))?;
        }
        Ok(())
    }
}

impl FileOpener {
    /// Whether another TCP socket of the images that is not a connection is bound to
    /// the port of `ie` (see [`open_inet`]).
    pub(super) fn shares_port(&self, ie: &pb::InetSkEntry) -> bool {
        let tcp_bound = |i: &pb::InetSkEntry| {
            i.proto == libc::IPPROTO_TCP as u32 && i.src_port != 0 && !tcp::is_connection(i)
        };
        tcp_bound(ie)
            && self
                .files
                .values()
                .filter_map(|f| f.isk.as_ref())
                .any(|o| o.id != ie.id && tcp_bound(o) && o.src_port == ie.src_port)
    }

    /// Every socket exists: the options of those sharing a port go back as saved.
    pub fn finish_sockets(&mut self) -> Result<()> {
        self.ports_later.put_back()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_print_readably() {
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

    #[test]
    fn image_addresses_parse() {
        let v4 = inet_addr(libc::AF_INET, &[u32::from_ne_bytes([10, 0, 0, 1])], 80, 0);
        assert_eq!(v4.len(), 16);
        assert_eq!(&v4[2..8], &[0, 80, 10, 0, 0, 1]);
        assert_eq!(inet_addr(libc::AF_INET6, &[], 1, 7).len(), 28);
        assert_eq!(
            show_inet(
                libc::AF_INET6,
                &[0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])],
                5
            ),
            "[::1]:5"
        );
    }
}
