//! The connection tracking table of a network namespace (`netns-ct-ID.img`) and its
//! expectations (`netns-exp-ID.img`), as CRIU keeps them: raw files holding the
//! ctnetlink messages of a table dump, each whole (header and payload, unpadded). The
//! restore sends each back as a new entry, TCP ones marked "be liberal" (as CRIU does:
//! the restored connection's windows are not known to the tracker yet).

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::sys;

const NETLINK_NETFILTER: libc::c_int = 12;
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NFGENMSG_LEN: usize = 4;
const IPCTNL_MSG_GET: u16 = 1;
/// The sequence number of the dump request, which every saved message carries: CRIU's
/// restore sends them as they are and takes only an answer with this number (its
/// `CR_NLMSG_SEQ`).
const CRIU_SEQ: u32 = 24680;

/// Which ctnetlink table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Table {
    Conntrack,
    Expectations,
}

impl Table {
    /// The netfilter subsystem (`NFNL_SUBSYS_CTNETLINK`, `_EXP`).
    fn subsystem(self) -> u16 {
        match self {
            Table::Conntrack => 1,
            Table::Expectations => 2,
        }
    }

    /// The image file prefix.
    pub(super) fn prefix(self) -> &'static str {
        match self {
            Table::Conntrack => "netns-ct",
            Table::Expectations => "netns-exp",
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("ctnetlink: {what}"))
}

fn socket() -> io::Result<OwnedFd> {
    sys::socket(
        libc::AF_NETLINK,
        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
        NETLINK_NETFILTER,
    )
}

/// The messages of a dump of `table` in the calling thread's namespace, each whole.
/// A kernel without connection tracking has none.
pub(super) fn dump(table: Table) -> io::Result<Vec<u8>> {
    let sock = socket()?;
    let mut req = Vec::with_capacity(NLMSG_HDRLEN + NFGENMSG_LEN);
    req.extend_from_slice(&((NLMSG_HDRLEN + NFGENMSG_LEN) as u32).to_ne_bytes());
    req.extend_from_slice(&((table.subsystem() << 8) | IPCTNL_MSG_GET).to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&CRIU_SEQ.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    sys::send(sock.as_fd(), &req, 0)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = sys::recv(sock.as_fd(), &mut buf, 0)?;
        if n == 0 {
            return Err(bad("the dump ended before its last message"));
        }
        let mut at = 0;
        while at + NLMSG_HDRLEN <= n {
            let len = u32_at(&buf, at).unwrap_or(0) as usize;
            let ty = u16_at(&buf, at + 4).unwrap_or(0);
            if len < NLMSG_HDRLEN || at + len > n {
                return Err(bad("a malformed message in the dump"));
            }
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = u32_at(&buf, at + NLMSG_HDRLEN).map_or(-libc::EIO, |c| c as i32);
                    match -code {
                        0 => {}
                        // No connection tracking in this kernel or namespace.
                        libc::EOPNOTSUPP | libc::ENOENT | libc::EPROTONOSUPPORT => {
                            return Ok(Vec::new())
                        }
                        e => return Err(io::Error::from_raw_os_error(e)),
                    }
                }
                _ if ty >> 8 == table.subsystem() => out.extend_from_slice(&buf[at..at + len]),
                _ => {}
            }
            at += len.next_multiple_of(4);
        }
    }
}

/// The attributes of `b[from..to]`: (type without flags, start of payload, end).
fn attrs(b: &[u8], from: usize, to: usize) -> Vec<(u16, usize, usize)> {
    let mut out = Vec::new();
    let mut at = from;
    while at + 4 <= to {
        let (Some(len), Some(ty)) = (u16_at(b, at), u16_at(b, at + 2)) else {
            break;
        };
        let len = len as usize;
        if len < 4 || at + len > to {
            break;
        }
        out.push((ty & 0x3fff, at + 4, at + len));
        at += len.next_multiple_of(4);
    }
    out
}

const CTA_PROTOINFO: u16 = 4;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;
const IP_CT_TCP_FLAG_BE_LIBERAL: u8 = 0x08;

/// Marks the TCP tracking flags of conntrack message `msg` (whole) "be liberal", both
/// directions, in place.
fn be_liberal(msg: &mut [u8]) {
    let family = msg.get(NLMSG_HDRLEN).copied().unwrap_or(0);
    if family != libc::AF_INET as u8 && family != libc::AF_INET6 as u8 {
        return;
    }
    let mut flags_at = Vec::new();
    for (ty, from, to) in attrs(msg, NLMSG_HDRLEN + NFGENMSG_LEN, msg.len()) {
        if ty != CTA_PROTOINFO {
            continue;
        }
        for (ty, from, to) in attrs(msg, from, to) {
            if ty != CTA_PROTOINFO_TCP {
                continue;
            }
            for (ty, from, to) in attrs(msg, from, to) {
                let is_flags =
                    ty == CTA_PROTOINFO_TCP_FLAGS_ORIGINAL || ty == CTA_PROTOINFO_TCP_FLAGS_REPLY;
                if is_flags && to >= from + 2 {
                    flags_at.push(from);
                }
            }
        }
    }
    for at in flags_at {
        msg[at] |= IP_CT_TCP_FLAG_BE_LIBERAL;
        msg[at + 1] |= IP_CT_TCP_FLAG_BE_LIBERAL;
    }
}

/// Creates the entries of `image` (a dump of `table`) in the calling thread's
/// namespace. Returns how many.
pub(super) fn restore(table: Table, image: &[u8]) -> io::Result<usize> {
    if image.is_empty() {
        return Ok(0);
    }
    let sock = socket()?;
    let mut at = 0;
    let mut count = 0;
    let mut reply = vec![0u8; 8192];
    while at < image.len() {
        let len = u32_at(image, at)
            .map(|l| l as usize)
            .filter(|&l| l >= NLMSG_HDRLEN && at + l <= image.len())
            .ok_or_else(|| bad(&format!("a truncated message at byte {at} of the image")))?;
        let mut msg = image[at..at + len].to_vec();
        at += len;
        count += 1;
        msg[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE).to_ne_bytes());
        msg[8..12].copy_from_slice(&(count as u32).to_ne_bytes());
        if table == Table::Conntrack {
            be_liberal(&mut msg);
        }
        sys::send(sock.as_fd(), &msg, 0)?;
        let n = sys::recv(sock.as_fd(), &mut reply, 0)?;
        if n >= NLMSG_HDRLEN + 4 && u16_at(&reply, 4) == Some(NLMSG_ERROR) {
            let code = u32_at(&reply, NLMSG_HDRLEN).map_or(-libc::EIO, |c| c as i32);
            if code != 0 {
                let e = io::Error::from_raw_os_error(-code);
                return Err(io::Error::new(
                    e.kind(),
                    format!("creating entry {count} of {}: {e}", table.prefix()),
                ));
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A conntrack message with TCP protoinfo flags (original 0x03/0x03, reply 0/0).
    fn tcp_message() -> Vec<u8> {
        let attr = |ty: u16, payload: &[u8]| {
            let mut v = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
            v.extend_from_slice(&ty.to_ne_bytes());
            v.extend_from_slice(payload);
            v.resize(v.len().next_multiple_of(4), 0);
            v
        };
        let mut tcp = attr(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &[3, 3]);
        tcp.extend(attr(CTA_PROTOINFO_TCP_FLAGS_REPLY, &[0, 0]));
        let proto = attr(
            CTA_PROTOINFO | 0x8000,
            &attr(CTA_PROTOINFO_TCP | 0x8000, &tcp),
        );
        let mut msg = vec![0u8; NLMSG_HDRLEN];
        msg.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        msg.extend(proto);
        let len = msg.len() as u32;
        msg[..4].copy_from_slice(&len.to_ne_bytes());
        msg
    }

    #[test]
    fn tcp_entries_come_back_liberal() {
        let mut msg = tcp_message();
        let before = msg.clone();
        be_liberal(&mut msg);
        let changed: Vec<(u8, u8)> = before
            .iter()
            .zip(&msg)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| (*a, *b))
            .collect();
        assert_eq!(changed, [(3, 11), (3, 11), (0, 8), (0, 8)]);
    }

    #[test]
    fn dumps_our_own_table() {
        // Whatever it holds, every message is whole, of the conntrack subsystem, and
        // numbered as CRIU's restore expects.
        let image = dump(Table::Conntrack).unwrap();
        let mut at = 0;
        while at < image.len() {
            let len = u32_at(&image, at).unwrap() as usize;
            assert_eq!(u16_at(&image, at + 4).unwrap() >> 8, 1);
            assert_eq!(u32_at(&image, at + 8), Some(CRIU_SEQ));
            at += len;
        }
        assert_eq!(at, image.len());
    }
}
