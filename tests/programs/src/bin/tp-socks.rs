//! tp-socks: one socket of each kind beyond unix, TCP and UDP, set up the way a
//! program would, and checked after a restore by what it reports and what it does.
//!
//! - packet: `packet-raw` (SOCK_RAW, ETH_P_ALL, on lo, TPACKET_V2, aux data, reserve,
//!   a promiscuous membership, an RX ring that is not mapped), `packet-dgram`
//!   (SOCK_DGRAM, ETH_P_IP, on lo, original device, a fanout group of its own) and
//!   `packet-spkt` (the old SOCK_PACKET, bound to lo by name). Checked: addresses and
//!   options as at `ready`, and `packet-dgram` still sees an IP packet sent over lo.
//! - netlink: `nl-route` (NETLINK_ROUTE, kernel-picked port id, group
//!   RTMGRP_IPV4_RULE, which nothing on a test machine changes: a link group would
//!   queue the notice of any promiscuous membership, ours or another test's, and a
//!   queued message is refused at dump):
//!   same port id and groups, and it still answers an RTM_GETLINK dump;
//!   `nl-server`/`nl-client` (NETLINK_USERSOCK, the client connected to the server's
//!   port id): the client's message still reaches the server.
//! - raw IP: `raw-udp` (SOCK_RAW, IPPROTO_UDP, bound to 127.0.0.1, IP_TTL and IP_TOS)
//!   sees a UDP datagram sent over loopback; `raw-icmp` (IPPROTO_ICMP, connected to
//!   127.0.0.1, IP_HDRINCL, IP_NODEFRAG, an ICMP type filter); `raw6-icmp` (IPv6,
//!   IPPROTO_ICMPV6, an ICMPv6 type filter). Options checked as at `ready`.
//! - ICMP: `ping` (SOCK_DGRAM, IPPROTO_ICMP, bound to 127.0.0.1 with an id of its own)
//!   keeps its id and gets the reply to an echo it sends; `ping6` the same over ::1.
//!   Needs `net.ipv4.ping_group_range` to take the program's group (the test sets it).
//!
//! `--netlink-queued yes` adds a netlink socket with the kernel's answer unread, which
//! a dump must refuse, leaving the program running.

use std::io;
use std::os::raw::c_int;
use std::time::{Duration, Instant};

use criu_testprogs::{cvt, cvt_size, Program, Report};

const SOL_PACKET: c_int = 263;
const SOCK_PACKET: c_int = 10;
const PACKET_ADD_MEMBERSHIP: c_int = 1;
const PACKET_RX_RING: c_int = 5;
const PACKET_AUXDATA: c_int = 8;
const PACKET_ORIGDEV: c_int = 9;
const PACKET_VERSION: c_int = 10;
const PACKET_RESERVE: c_int = 12;
const PACKET_FANOUT: c_int = 18;
const PACKET_MR_PROMISC: u16 = 1;
const TPACKET_V2: c_int = 1;
const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const SOL_NETLINK: c_int = 270;
const NETLINK_LIST_MEMBERSHIPS: c_int = 9;
const RTMGRP_IPV4_RULE: u32 = 0x80;
const RTM_GETLINK: u16 = 18;
const RTM_NEWLINK: u16 = 16;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const IP_HDRINCL: c_int = 3;
const IP_NODEFRAG: c_int = 22;
const SOL_RAW: c_int = 255;
const SOL_ICMPV6: c_int = 58;
const ICMP_FILTER: c_int = 1;

fn socket(family: c_int, ty: c_int, proto: c_int) -> io::Result<c_int> {
    // SAFETY: plain call with integer arguments; the fd is ours.
    cvt(unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) })
}

fn set_bytes(fd: c_int, level: c_int, name: c_int, value: &[u8]) -> io::Result<()> {
    // SAFETY: the kernel reads value.len() bytes from `value`, borrowed for the call.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn set_int(fd: c_int, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    set_bytes(fd, level, name, &value.to_ne_bytes())
}

fn get_bytes(fd: c_int, level: c_int, name: c_int, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut n = len as libc::socklen_t;
    // SAFETY: the kernel writes at most `n` (= buf.len()) bytes into buf.
    cvt(unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut n) })?;
    buf.truncate((n as usize).min(len));
    Ok(buf)
}

/// getsockname(2) (`peer` false) or getpeername(2), as bytes.
fn name_of(fd: c_int, peer: bool) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 128];
    let mut len = buf.len() as libc::socklen_t;
    let ptr = buf.as_mut_ptr().cast::<libc::sockaddr>();
    // SAFETY: the kernel writes at most `len` bytes into `buf` and updates len.
    cvt(unsafe {
        if peer {
            libc::getpeername(fd, ptr, &mut len)
        } else {
            libc::getsockname(fd, ptr, &mut len)
        }
    })?;
    Ok(buf[..(len as usize).min(buf.len())].to_vec())
}

fn bind(fd: c_int, addr: &[u8]) -> io::Result<()> {
    // SAFETY: the kernel copies addr.len() bytes from `addr`.
    cvt(unsafe { libc::bind(fd, addr.as_ptr().cast(), addr.len() as libc::socklen_t) }).map(drop)
}

fn connect(fd: c_int, addr: &[u8]) -> io::Result<()> {
    // SAFETY: the kernel copies addr.len() bytes from `addr`.
    cvt(unsafe { libc::connect(fd, addr.as_ptr().cast(), addr.len() as libc::socklen_t) }).map(drop)
}

fn send_to(fd: c_int, data: &[u8], addr: Option<&[u8]>) -> io::Result<usize> {
    let (ptr, len) = addr.map_or((std::ptr::null(), 0), |a| (a.as_ptr(), a.len()));
    // SAFETY: the kernel reads data.len() bytes of `data` and `len` bytes of the address.
    cvt_size(unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            0,
            ptr.cast(),
            len as libc::socklen_t,
        )
    })
}

/// Receives until `wanted` says yes or `timeout` passes; false on timeout.
fn recv_until(fd: c_int, timeout: Duration, mut wanted: impl FnMut(&[u8]) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        // SAFETY: the kernel writes at most buf.len() bytes into buf.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            if wanted(&buf[..n as usize]) {
                return true;
            }
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    false
}

fn lo_index() -> io::Result<u32> {
    let text = std::fs::read_to_string("/sys/class/net/lo/ifindex")?;
    text.trim().parse().map_err(io::Error::other)
}

fn sockaddr_ll(ifindex: u32, proto: u16) -> Vec<u8> {
    let mut v = (libc::AF_PACKET as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(&proto.to_be_bytes());
    v.extend_from_slice(&ifindex.to_ne_bytes());
    v.extend_from_slice(&[0; 12]);
    v
}

fn sockaddr_nl(pid: u32, groups: u32) -> Vec<u8> {
    let mut v = (libc::AF_NETLINK as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&pid.to_ne_bytes());
    v.extend_from_slice(&groups.to_ne_bytes());
    v
}

fn sockaddr_in(ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut v = (libc::AF_INET as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&ip);
    v.extend_from_slice(&[0; 8]);
    v
}

fn sockaddr_in6_loopback(port: u16) -> Vec<u8> {
    let mut v = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    v.extend_from_slice(&[0; 4]);
    v
}

/// A socket and what to compare after the restore: its name, its peer's, and options
/// as (what, level, name, length, value).
struct Held {
    what: &'static str,
    fd: c_int,
    name: Vec<u8>,
    peer: Option<Vec<u8>>,
    opts: Vec<(&'static str, c_int, c_int, usize, Vec<u8>)>,
}

impl Held {
    fn new(
        what: &'static str,
        fd: c_int,
        opts: &[(&'static str, c_int, c_int, usize)],
    ) -> io::Result<Held> {
        let mut held = Held {
            what,
            fd,
            name: name_of(fd, false)?,
            peer: name_of(fd, true).ok(),
            opts: Vec::new(),
        };
        for &(name, level, opt, len) in opts {
            held.opts
                .push((name, level, opt, len, get_bytes(fd, level, opt, len)?));
        }
        Ok(held)
    }

    fn check(&self, report: &mut Report) {
        let what = self.what;
        if let Some(name) =
            report.ok_or_fail(name_of(self.fd, false), &format!("{what}: getsockname"))
        {
            report.check_eq(&format!("{what}: address"), name, self.name.clone());
        }
        report.check_eq(
            &format!("{what}: peer"),
            name_of(self.fd, true).ok(),
            self.peer.clone(),
        );
        for (name, level, opt, len, value) in &self.opts {
            let got = get_bytes(self.fd, *level, *opt, *len);
            if let Some(got) = report.ok_or_fail(got, &format!("{what}: {name}")) {
                report.check_eq(&format!("{what}: {name}"), &got, value);
            }
        }
    }
}

struct Sockets {
    held: Vec<Held>,
    packet_dgram: c_int,
    nl_route: c_int,
    nl_server: c_int,
    nl_client: c_int,
    raw_udp: c_int,
    pings: Vec<(&'static str, c_int, bool)>,
}

fn packet_sockets(held: &mut Vec<Held>) -> io::Result<c_int> {
    let lo = lo_index()?;
    let raw = socket(libc::AF_PACKET, libc::SOCK_RAW, ETH_P_ALL.to_be() as c_int)?;
    bind(raw, &sockaddr_ll(lo, ETH_P_ALL))?;
    set_int(raw, SOL_PACKET, PACKET_VERSION, TPACKET_V2)?;
    set_int(raw, SOL_PACKET, PACKET_RESERVE, 64)?;
    set_int(raw, SOL_PACKET, PACKET_AUXDATA, 1)?;
    let mut mreq = lo.to_ne_bytes().to_vec();
    mreq.extend_from_slice(&PACKET_MR_PROMISC.to_ne_bytes());
    mreq.extend_from_slice(&[0; 10]);
    set_bytes(raw, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq)?;
    // 4 blocks of 4 KiB, 2 KiB frames: a ring the program never maps.
    let ring: Vec<u8> = [4096u32, 4, 2048, 8]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    set_bytes(raw, SOL_PACKET, PACKET_RX_RING, &ring)?;
    held.push(Held::new(
        "packet-raw",
        raw,
        &[
            ("PACKET_VERSION", SOL_PACKET, PACKET_VERSION, 4),
            ("PACKET_RESERVE", SOL_PACKET, PACKET_RESERVE, 4),
            ("PACKET_AUXDATA", SOL_PACKET, PACKET_AUXDATA, 4),
        ],
    )?);

    let dgram = socket(libc::AF_PACKET, libc::SOCK_DGRAM, ETH_P_IP.to_be() as c_int)?;
    bind(dgram, &sockaddr_ll(lo, ETH_P_IP))?;
    set_int(dgram, SOL_PACKET, PACKET_ORIGDEV, 1)?;
    // A group of its own: the id from the pid, type hash (0).
    set_int(
        dgram,
        SOL_PACKET,
        PACKET_FANOUT,
        (std::process::id() & 0xffff) as c_int,
    )?;
    held.push(Held::new(
        "packet-dgram",
        dgram,
        &[
            ("PACKET_ORIGDEV", SOL_PACKET, PACKET_ORIGDEV, 4),
            ("PACKET_FANOUT", SOL_PACKET, PACKET_FANOUT, 4),
        ],
    )?);

    let spkt = socket(libc::AF_PACKET, SOCK_PACKET, ETH_P_ALL.to_be() as c_int)?;
    let mut addr = (libc::AF_PACKET as u16).to_ne_bytes().to_vec();
    addr.extend_from_slice(b"lo\0\0\0\0\0\0\0\0\0\0\0\0");
    bind(spkt, &addr)?;
    held.push(Held::new("packet-spkt", spkt, &[])?);
    Ok(dgram)
}

fn netlink_sockets(held: &mut Vec<Held>) -> io::Result<(c_int, c_int, c_int)> {
    let route = socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
    bind(route, &sockaddr_nl(0, RTMGRP_IPV4_RULE))?;
    let groups = (
        "NETLINK_LIST_MEMBERSHIPS",
        SOL_NETLINK,
        NETLINK_LIST_MEMBERSHIPS,
        8,
    );
    held.push(Held::new("nl-route", route, &[groups])?);

    let server = socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_USERSOCK)?;
    bind(server, &sockaddr_nl(0, 0))?;
    let port = u32::from_ne_bytes(name_of(server, false)?[4..8].try_into().unwrap_or_default());
    let client = socket(libc::AF_NETLINK, libc::SOCK_DGRAM, libc::NETLINK_USERSOCK)?;
    connect(client, &sockaddr_nl(port, 0))?;
    held.push(Held::new("nl-server", server, &[])?);
    held.push(Held::new("nl-client", client, &[])?);
    Ok((route, server, client))
}

fn raw_sockets(held: &mut Vec<Held>) -> io::Result<c_int> {
    let udp = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP)?;
    set_int(udp, libc::IPPROTO_IP, libc::IP_TTL, 33)?;
    set_int(udp, libc::IPPROTO_IP, libc::IP_TOS, 0x10)?;
    bind(udp, &sockaddr_in([127, 0, 0, 1], 0))?;
    held.push(Held::new(
        "raw-udp",
        udp,
        &[
            ("IP_TTL", libc::IPPROTO_IP, libc::IP_TTL, 4),
            ("IP_TOS", libc::IPPROTO_IP, libc::IP_TOS, 4),
        ],
    )?);

    let icmp = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
    set_int(icmp, libc::IPPROTO_IP, IP_HDRINCL, 1)?;
    set_int(icmp, libc::IPPROTO_IP, IP_NODEFRAG, 1)?;
    // Filter out every type but echo reply (0).
    set_bytes(icmp, SOL_RAW, ICMP_FILTER, &(!1u32).to_ne_bytes())?;
    connect(icmp, &sockaddr_in([127, 0, 0, 1], 0))?;
    held.push(Held::new(
        "raw-icmp",
        icmp,
        &[
            ("IP_HDRINCL", libc::IPPROTO_IP, IP_HDRINCL, 4),
            ("IP_NODEFRAG", libc::IPPROTO_IP, IP_NODEFRAG, 4),
            ("ICMP_FILTER", SOL_RAW, ICMP_FILTER, 4),
        ],
    )?);

    let icmp6 = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?;
    let filter: Vec<u8> = (0..8u32)
        .flat_map(|i| (0x0101_0000u32 + i).to_ne_bytes())
        .collect();
    set_bytes(icmp6, SOL_ICMPV6, ICMP_FILTER, &filter)?;
    held.push(Held::new(
        "raw6-icmp",
        icmp6,
        &[("ICMPV6_FILTER", SOL_ICMPV6, ICMP_FILTER, 32)],
    )?);
    Ok(udp)
}

fn ping_sockets(held: &mut Vec<Held>) -> io::Result<Vec<(&'static str, c_int, bool)>> {
    let id = 20000 + (std::process::id() % 20000) as u16;
    let ping = socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP)?;
    bind(ping, &sockaddr_in([127, 0, 0, 1], id))?;
    held.push(Held::new("ping", ping, &[])?);
    let mut out = vec![("ping", ping, false)];
    let ping6 = socket(libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6)?;
    if bind(ping6, &sockaddr_in6_loopback(id)).is_ok() {
        held.push(Held::new("ping6", ping6, &[])?);
        out.push(("ping6", ping6, true));
    }
    Ok(out)
}

fn setup() -> io::Result<Sockets> {
    let mut held = Vec::new();
    let packet_dgram = packet_sockets(&mut held)?;
    let (nl_route, nl_server, nl_client) = netlink_sockets(&mut held)?;
    let raw_udp = raw_sockets(&mut held)?;
    let pings = ping_sockets(&mut held)?;
    Ok(Sockets {
        held,
        packet_dgram,
        nl_route,
        nl_server,
        nl_client,
        raw_udp,
        pings,
    })
}

/// Sends a UDP datagram carrying `marker` to 127.0.0.1:9 (discard: nobody listens).
fn send_udp(marker: &[u8]) -> io::Result<()> {
    let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let sent = send_to(fd, marker, Some(&sockaddr_in([127, 0, 0, 1], 9)));
    // SAFETY: our own fd, closed once.
    unsafe { libc::close(fd) };
    sent.map(drop)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn check_traffic(report: &mut Report, s: &Sockets) {
    let marker = format!("tp-socks-{}", std::process::id()).into_bytes();
    let _ = report.ok_or_fail(send_udp(&marker), "send a UDP datagram over lo");
    report.check(
        recv_until(s.packet_dgram, Duration::from_secs(5), |p| {
            contains(p, &marker)
        }),
        || "packet-dgram: no IP packet with the datagram seen on lo".into(),
    );
    report.check(
        recv_until(s.raw_udp, Duration::from_secs(5), |p| contains(p, &marker)),
        || "raw-udp: the UDP datagram did not reach the raw socket".into(),
    );

    // An RTM_GETLINK dump: NEWLINK messages, then DONE.
    let mut req = 32u32.to_ne_bytes().to_vec();
    req.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&7u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[0; 16]); // struct ifinfomsg
    let sent = send_to(s.nl_route, &req, Some(&sockaddr_nl(0, 0)));
    if report
        .ok_or_fail(sent, "nl-route: send RTM_GETLINK")
        .is_some()
    {
        let (mut links, mut done) = (0, false);
        recv_until(s.nl_route, Duration::from_secs(5), |buf| {
            let mut at = 0;
            while at + 16 <= buf.len() {
                let len =
                    u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
                let ty = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap_or_default());
                if seq == 7 && ty == RTM_NEWLINK {
                    links += 1;
                }
                if seq == 7 && ty == NLMSG_DONE {
                    done = true;
                }
                if len < 16 {
                    break;
                }
                at += len.next_multiple_of(4);
            }
            done
        });
        report.check(done && links > 0, || {
            format!("nl-route: RTM_GETLINK answered {links} links, done: {done}")
        });
    }

    let mut msg = 20u32.to_ne_bytes().to_vec();
    msg.extend_from_slice(&[0x42, 0, 0, 0]); // type, flags
    msg.extend_from_slice(&[0; 8]);
    msg.extend_from_slice(b"tpsk");
    if report
        .ok_or_fail(send_to(s.nl_client, &msg, None), "nl-client: send")
        .is_some()
    {
        report.check(
            recv_until(s.nl_server, Duration::from_secs(5), |p| {
                contains(p, b"tpsk")
            }),
            || "nl-server: the client's message did not arrive".into(),
        );
    }

    for &(what, fd, v6) in &s.pings {
        // An echo request: type 8 (128 for ICMPv6); the kernel sets the id and checksum.
        let mut echo = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 0, 0, 1];
        echo.extend_from_slice(b"tp-socks-echo");
        let to = if v6 {
            sockaddr_in6_loopback(0)
        } else {
            sockaddr_in([127, 0, 0, 1], 0)
        };
        if report
            .ok_or_fail(
                send_to(fd, &echo, Some(&to)),
                &format!("{what}: send an echo"),
            )
            .is_some()
        {
            let reply_type = if v6 { 129 } else { 0 };
            report.check(
                recv_until(fd, Duration::from_secs(5), |p| {
                    p.first() == Some(&reply_type) && contains(p, b"tp-socks-echo")
                }),
                || format!("{what}: no echo reply"),
            );
        }
    }
}

/// A NETLINK_ROUTE socket with the kernel's answer to a request left unread.
fn netlink_with_answer_queued() -> io::Result<c_int> {
    let fd = socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
    let mut req = 32u32.to_ne_bytes().to_vec();
    req.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&[0; 24]);
    send_to(fd, &req, Some(&sockaddr_nl(0, 0)))?;
    Ok(fd)
}

fn main() {
    let mut program = Program::start(
        "tp-socks",
        &[(
            "--netlink-queued yes",
            "also hold a netlink socket with an answer queued (which the dump refuses)",
        )],
    );
    let sockets = program.must(setup(), "sockets");
    if program.opt::<String>("--netlink-queued").as_deref() == Some("yes") {
        program.must(
            netlink_with_answer_queued(),
            "netlink socket with an answer queued",
        );
    }
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});
    let mut report = Report::new();
    for held in &sockets.held {
        held.check(&mut report);
    }
    check_traffic(&mut report, &sockets);
    program.finish(&report);
}
