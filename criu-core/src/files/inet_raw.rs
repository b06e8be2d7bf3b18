//! Raw IP sockets (SOCK_RAW of any protocol) and ICMP "ping" sockets (SOCK_DGRAM of
//! IPPROTO_ICMP or IPPROTO_ICMPV6), IPv4 and IPv6, in CRIU's `inet_sk_entry`.
//!
//! Dump: addresses and state from the kernel's `/proc/PID/net/{raw,raw6,icmp,icmp6}`
//! tables (this kernel has no sock_diag for raw sockets, and none exists for ping
//! sockets; getpeername(2) says nothing of a raw socket connected without a port), by
//! the socket's inode. A ping socket that is not bound is not in its table: it has no
//! address and, for the kernel, no peer worth a port either. The IP options are
//! recorded as for other inet sockets, with the raw ones (IP_HDRINCL, IP_NODEFRAG, the
//! ICMP type filter). Queued packets are dropped, as CRIU drops them.
//!
//! Restore: a new socket, the options, bound to its address (its ICMP id for a ping
//! socket; with IP_FREEBIND for the while, as `inet.rs` does) and connected as it was.
//! Unlike CRIU, a ping socket gets its ICMP id back, so replies to echoes sent before
//! the dump still reach it.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use criu_images::pb;

use super::dump::{FileError, OpenFd};
use super::inet::{addr_words, inet_addr, ip_opts, set_ip_opts, show_inet, socket_addr};
use super::restore::{finish, FileRef, Result};
use super::socket::{bound_device, in_image, opt_int, set_sk_opts, sk_opts, Nets, TCP_CLOSE};
use crate::sys::{self, Pid};

const IP_HDRINCL: i32 = 3;
const IP_NODEFRAG: i32 = 22;
const IPV6_HDRINCL: i32 = 36;
const IP_FREEBIND: i32 = 15;
/// ICMP_FILTER at SOL_RAW, and ICMPV6_FILTER at SOL_ICMPV6: type bitmaps of one and
/// eight words.
const SOL_RAW: i32 = 255;
const SOL_ICMPV6: i32 = 58;
const ICMP_FILTER: i32 = 1;

/// Whether this module handles a socket of type `ty` and protocol `proto`.
pub(super) fn handles(ty: i32, proto: i32) -> bool {
    ty == libc::SOCK_RAW || (ty == libc::SOCK_DGRAM && is_icmp(proto))
}

fn is_icmp(proto: i32) -> bool {
    proto == libc::IPPROTO_ICMP || proto == libc::IPPROTO_ICMPV6
}

/// One row of `/proc/net/{raw,raw6,icmp,icmp6}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ProcRow {
    pub src: [u8; 16],
    pub sport: u16,
    pub dst: [u8; 16],
    pub dport: u16,
    pub state: u8,
    pub ino: u64,
}

/// An address column: 8 hex digits (IPv4) or 32 (IPv6), each group of 8 one 32-bit
/// word as the kernel holds it in memory, then `:` and the port in hex.
fn parse_addr(col: &str) -> Option<([u8; 16], u16)> {
    let (hex, port) = col.split_once(':')?;
    if hex.len() != 8 && hex.len() != 32 {
        return None;
    }
    let mut addr = [0u8; 16];
    for (i, chunk) in hex.as_bytes().chunks(8).enumerate() {
        let word = u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
        addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Some((addr, u16::from_str_radix(port, 16).ok()?))
}

/// Parses the rows of a `/proc/net/raw`-style table (the header line is skipped:
/// it does not parse).
pub(super) fn parse_table(text: &str) -> Vec<ProcRow> {
    text.lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (src, sport) = parse_addr(cols.get(1)?)?;
            let (dst, dport) = parse_addr(cols.get(2)?)?;
            Some(ProcRow {
                src,
                sport,
                dst,
                dport,
                state: u8::from_str_radix(cols.get(3)?, 16).ok()?,
                ino: cols.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The row of socket `ino` in its task's table (`None`: not listed).
fn proc_row(pid: Pid, family: i32, ty: i32, ino: u64) -> io::Result<Option<ProcRow>> {
    let table = match (ty == libc::SOCK_RAW, family == libc::AF_INET6) {
        (true, false) => "raw",
        (true, true) => "raw6",
        (false, false) => "icmp",
        (false, true) => "icmp6",
    };
    let text = std::fs::read_to_string(format!("/proc/{}/net/{table}", pid.0))?;
    Ok(parse_table(&text).into_iter().find(|r| r.ino == ino))
}

// --- dump ------------------------------------------------------------------------

/// Refuses a raw IPv6 socket whose IPV6_CHECKSUM is not the one a new socket of its
/// protocol gets (CRIU's entry has no field for it; the kernel sets it for ICMPv6, at
/// offset 2, and for the mobility header, at 4). Works on a running task.
pub(super) fn check(fd: &OpenFd<'_>, family: i32, ty: i32, proto: i32) -> Result<(), FileError> {
    const IPV6_CHECKSUM: i32 = 7;
    const IPPROTO_MH: i32 = 135;
    if family != libc::AF_INET6 || ty != libc::SOCK_RAW {
        return Ok(());
    }
    let default = match proto {
        libc::IPPROTO_ICMPV6 => 2,
        IPPROTO_MH => 4,
        _ => -1,
    };
    let offset = opt_int(fd.raw(), SOL_RAW, IPV6_CHECKSUM).map_err(fd.io("read IPV6_CHECKSUM"))?;
    if offset != default {
        return Err(fd.unsupported(format!(
            "raw IPv6 socket of protocol {proto} with IPV6_CHECKSUM at offset {offset} ({}): \
             the image has no field for it",
            fd.link_str()
        )));
    }
    Ok(())
}

/// IP_HDRINCL, IP_NODEFRAG and the ICMP filter of a raw socket.
fn raw_opts(s: BorrowedFd<'_>, family: i32, proto: i32) -> io::Result<pb::IpOptsRawEntry> {
    let mut r = pb::IpOptsRawEntry::default();
    let filter = |level: i32, words: usize| -> io::Result<Vec<u32>> {
        let mut buf = vec![0u8; words * 4];
        sys::getsockopt_bytes(s, level, ICMP_FILTER, &mut buf)?;
        Ok(buf
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    if family == libc::AF_INET6 {
        r.hdrincl = Some(opt_int(s, libc::IPPROTO_IPV6, IPV6_HDRINCL)? != 0);
        if proto == libc::IPPROTO_ICMPV6 {
            r.icmpv_filter = filter(SOL_ICMPV6, 8)?;
        }
    } else {
        r.hdrincl = Some(opt_int(s, libc::IPPROTO_IP, IP_HDRINCL)? != 0);
        r.nodefrag = Some(opt_int(s, libc::IPPROTO_IP, IP_NODEFRAG)? != 0);
        if proto == libc::IPPROTO_ICMP {
            r.icmpv_filter = filter(SOL_RAW, 1)?;
        }
    }
    Ok(r)
}

/// Dumps raw or ping socket `fd` of `family`, type `ty` and protocol `proto` as file
/// `id` (`net_ids`: CRIU's ids of network namespaces by inode).
pub(super) fn dump(
    nets: &mut Nets,
    fd: &OpenFd<'_>,
    id: u32,
    (family, ty, proto): (i32, i32, i32),
    net_ids: &HashMap<u64, u32>,
) -> Result<pb::InetSkEntry, FileError> {
    let s = fd.raw();
    let (_, netns) = nets.net_for(fd)?;
    let row = proc_row(fd.pid, family, ty, fd.meta.ino())
        .map_err(fd.io("read the task's raw or ICMP socket table (/proc/PID/net)"))?;
    let row = match row {
        Some(r) => r,
        None => {
            let (src, sport) = socket_addr(s, false).map_err(fd.io("read the socket's address"))?;
            ProcRow {
                src,
                sport,
                state: TCP_CLOSE,
                ..Default::default()
            }
        }
    };
    let mut ip = ip_opts(s, family).map_err(fd.io("read IP options"))?;
    if ty == libc::SOCK_RAW {
        ip.raw = Some(raw_opts(s, family, proto).map_err(fd.io("read raw socket options"))?);
    }
    let mut ifname = None;
    let mut v6only = None;
    if family == libc::AF_INET6 {
        v6only = Some(
            opt_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).map_err(fd.io("read IPV6_V6ONLY"))?
                != 0,
        );
        let link_local = row.src[0] == 0xfe && row.src[1] & 0xc0 == 0x80;
        if link_local {
            ifname = bound_device(s).map_err(fd.io("read SO_BINDTODEVICE"))?;
            if ifname.is_none() {
                return Err(fd.unsupported(format!(
                    "{} bound to a link-local address without a bound interface",
                    fd.link_str()
                )));
            }
        }
    }
    Ok(pb::InetSkEntry {
        id,
        ino: fd.meta.ino() as u32,
        family: family as u32,
        r#type: ty as u32,
        proto: proto as u32,
        state: row.state.into(),
        src_port: row.sport.into(),
        dst_port: row.dport.into(),
        flags: fd.common.flags,
        backlog: 0,
        src_addr: addr_words(family, &row.src),
        dst_addr: addr_words(family, &row.dst),
        fown: fd.fown()?,
        opts: sk_opts(s, family).map_err(fd.io("read socket options"))?,
        v6only,
        ip_opts: Some(ip),
        ifname,
        ns_id: net_ids.get(&netns).copied(),
        shutdown: None,
        tcp_opts: None,
    })
}

// --- restore ---------------------------------------------------------------------

fn set_raw_opts(at: &FileRef, s: BorrowedFd<'_>, ie: &pb::InetSkEntry) -> Result<()> {
    let Some(r) = ie.ip_opts.as_ref().and_then(|o| o.raw.as_ref()) else {
        return Ok(());
    };
    let (family, proto) = (ie.family as i32, ie.proto as i32);
    let int = |level: i32, name: i32, on: bool, what: &str| {
        sys::setsockopt_int(s, level, name, on.into()).map_err(at.io(format!("set {what}")))
    };
    if family == libc::AF_INET6 {
        if let Some(on) = r.hdrincl {
            int(libc::IPPROTO_IPV6, IPV6_HDRINCL, on, "IPV6_HDRINCL")?;
        }
    } else {
        if let Some(on) = r.hdrincl {
            int(libc::IPPROTO_IP, IP_HDRINCL, on, "IP_HDRINCL")?;
        }
        if let Some(on) = r.nodefrag {
            int(libc::IPPROTO_IP, IP_NODEFRAG, on, "IP_NODEFRAG")?;
        }
    }
    if !r.icmpv_filter.is_empty() && is_icmp(proto) {
        let level = if family == libc::AF_INET6 {
            SOL_ICMPV6
        } else {
            SOL_RAW
        };
        let bytes: Vec<u8> = r
            .icmpv_filter
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        sys::setsockopt_bytes(s, level, ICMP_FILTER, &bytes)
            .map_err(at.io("set the ICMP type filter"))?;
    }
    Ok(())
}

/// Binds to the saved address (a raw socket's port is its protocol, which bind does
/// not take; a ping socket's is its ICMP id), with IP_FREEBIND on for the while: the
/// address may not be local (yet).
fn bind_saved(at: &FileRef, s: BorrowedFd<'_>, ie: &pb::InetSkEntry) -> Result<()> {
    let family = ie.family as i32;
    let any_addr = ie.src_addr.iter().all(|&w| w == 0);
    let port = if ie.r#type as i32 == libc::SOCK_RAW {
        0
    } else {
        ie.src_port
    };
    if any_addr && port == 0 {
        return Ok(());
    }
    let src = show_inet(family, &ie.src_addr, ie.src_port);
    let scope = match ie.ifname.as_deref() {
        Some(name) if family == libc::AF_INET6 => {
            sys::if_index(s, name).map_err(at.io(format!("find interface {name}")))?
        }
        _ => 0,
    };
    let saved = ie.ip_opts.as_ref().and_then(|o| o.freebind) == Some(true);
    sys::setsockopt_int(s, libc::IPPROTO_IP, IP_FREEBIND, 1)
        .map_err(at.io(format!("set IP_FREEBIND to bind to {src}")))?;
    sys::bind_raw(s, &inet_addr(family, &ie.src_addr, port, scope))
        .map_err(at.io(format!("bind to {src}")))?;
    if !saved {
        sys::setsockopt_int(s, libc::IPPROTO_IP, IP_FREEBIND, 0)
            .map_err(at.io(format!("clear IP_FREEBIND after binding to {src}")))?;
    }
    Ok(())
}

/// A raw or ping socket as saved.
pub(super) fn open_raw(at: &FileRef, ie: &pb::InetSkEntry) -> Result<OwnedFd> {
    let (family, ty, proto) = (ie.family as i32, ie.r#type as i32, ie.proto as i32);
    if ie.state != in_image::TCP_CLOSE && ie.state != in_image::TCP_ESTABLISHED {
        return Err(at.refused(format!(
            "a raw or ICMP socket in state {} (unconnected or connected only)",
            ie.state
        )));
    }
    let fd = sys::socket(family, ty, proto).map_err(at.io(format!(
        "create a socket of family {family}, type {ty}, protocol {proto}"
    )))?;
    let s = fd.as_fd();
    if let Some(v6only) = ie.v6only.filter(|_| family == libc::AF_INET6) {
        // Fixed for raw sockets once made (they count as bound to their protocol), and
        // on for ping sockets from the start: set only when it differs.
        let now = opt_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
            .map_err(at.io("read IPV6_V6ONLY"))?
            != 0;
        if now != v6only {
            sys::setsockopt_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v6only.into())
                .map_err(at.io("set IPV6_V6ONLY"))?;
        }
    }
    set_sk_opts(at, s, &ie.opts)?;
    if let Some(ip) = &ie.ip_opts {
        set_ip_opts(at, s, family, ip)?;
    }
    set_raw_opts(at, s, ie)?;
    bind_saved(at, s, ie)?;
    if ie.state == in_image::TCP_ESTABLISHED {
        let dst = show_inet(family, &ie.dst_addr, ie.dst_port);
        sys::connect_raw(s, &inet_addr(family, &ie.dst_addr, ie.dst_port, 0))
            .map_err(at.io(format!("connect to {dst}")))?;
    }
    finish(at, s, ie.flags, &ie.fown)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  17: 0100007F:0011 0200007F:0000 01 00000000:00000000 00:00000000 00000000     0        0 123456 2 0000000000000000 0
  1: 00000000:0001 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 0
";

    #[test]
    fn proc_tables_parse() {
        let rows = parse_table(RAW);
        assert_eq!(rows.len(), 2);
        let r = &rows[0];
        assert_eq!(&r.src[..4], &[127, 0, 0, 1]);
        assert_eq!(&r.dst[..4], &[127, 0, 0, 2]);
        assert_eq!((r.sport, r.dport, r.state, r.ino), (17, 0, 1, 123456));
        assert_eq!((rows[1].state, rows[1].ino), (7, 99));
        let v6 = "  5: 00000000000000000000000001000000:003A 00000000000000000000000000000000:0000 07 0:0 0:0 0 0 0 77 2 0 0";
        let rows = parse_table(v6);
        assert_eq!(rows[0].src, std::net::Ipv6Addr::LOCALHOST.octets());
        assert_eq!((rows[0].sport, rows[0].ino), (58, 77));
        // Broken lines are skipped, not a panic.
        assert!(parse_table("  1: 0100:zz 0:0 07").is_empty());
        assert!(parse_table("").is_empty());
    }

    #[test]
    fn raw_and_ping_sockets_are_ours() {
        assert!(handles(libc::SOCK_RAW, libc::IPPROTO_UDP));
        assert!(handles(libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6));
        assert!(!handles(libc::SOCK_DGRAM, libc::IPPROTO_UDP));
    }
}
