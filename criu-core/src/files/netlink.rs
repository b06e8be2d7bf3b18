//! Netlink sockets, as CRIU records them in a `netlink_sk_entry`.
//!
//! Dump: protocol, bound port id, multicast groups, and the peer it is connected to
//! (port id and group). The groups come from NETLINK_LIST_MEMBERSHIPS, which also
//! answers for a socket that joined groups without being bound; the port, state and
//! peer from netlink_diag, which lists bound sockets only (one it does not list is
//! neither bound nor connected: connecting binds). A socket with messages queued is
//! refused (`Kind::NetlinkQueued`): the kernel's answers and notifications would be
//! lost. So is one with netlink-level options set (`Kind::NetlinkOptions`), which
//! CRIU's entry has no field for.
//!
//! Restore: a new socket of the protocol, bound to its port id with its first 32
//! groups, the others joined one by one, then connected as it was. A port id taken by
//! another socket (the original still running after `--leave-running`) is replaced by
//! one the kernel picks, as CRIU does: netlink port ids are the kernel's to give.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use criu_images::pb;

use super::diag::{header, le32, NetDiag};
use super::dump::{FileError, OpenFd};
use super::kinds::Kind;
use super::restore::{FileRef, Result};
use super::socket::{finish_socket, opt_int, opt_int_maybe, sk_opts, Nets};
use crate::sys;

const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;

/// `netlink_diag_msg.ndiag_state` of a connected socket (also the image's `state`).
const NETLINK_CONNECTED: u32 = 1;

const NDIAG_PROTO_ALL: u8 = 255;
const NDIAG_SHOW_GROUPS: u32 = 2;

/// The netlink-level options a socket may have set that the image cannot hold.
const UNRECORDED_OPTIONS: [(i32, &str); 6] = [
    (3, "NETLINK_PKTINFO"),
    (4, "NETLINK_BROADCAST_ERROR"),
    (5, "NETLINK_NO_ENOBUFS"),
    (10, "NETLINK_CAP_ACK"),
    (11, "NETLINK_EXT_ACK"),
    (12, "NETLINK_GET_STRICT_CHK"),
];

/// What netlink_diag says about one bound netlink socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct NetlinkDiag {
    pub ino: u32,
    pub protocol: u8,
    pub state: u8,
    pub portid: u32,
    pub dst_portid: u32,
    pub dst_group: u32,
}

/// A dump request for every netlink socket of the namespace.
pub(super) fn netlink_request(seq: u32) -> Vec<u8> {
    let mut v = header(16 + 20, seq);
    v.extend_from_slice(&[libc::AF_NETLINK as u8, NDIAG_PROTO_ALL, 0, 0]);
    v.extend_from_slice(&0u32.to_ne_bytes()); // ino
    v.extend_from_slice(&NDIAG_SHOW_GROUPS.to_ne_bytes());
    v.extend_from_slice(&[0xff; 8]); // cookie: none
    v
}

/// Parses one `netlink_diag_msg`; `None` for a short one.
pub(super) fn parse_netlink(msg: &[u8]) -> Option<NetlinkDiag> {
    if msg.len() < 28 {
        return None;
    }
    // (The groups attribute that may follow is not read: NETLINK_LIST_MEMBERSHIPS
    // gives them, for unbound sockets too.)
    Some(NetlinkDiag {
        protocol: msg[2],
        state: msg[3],
        portid: le32(msg, 4)?,
        dst_portid: le32(msg, 8)?,
        dst_group: le32(msg, 12)?,
        ino: le32(msg, 16)?,
    })
}

fn find(diag: &mut NetDiag, ino: u32) -> io::Result<Option<NetlinkDiag>> {
    let mut found = None;
    diag.dump(netlink_request, |m| {
        if let Some(d) = parse_netlink(m).filter(|d| d.ino == ino) {
            found = Some(d);
        }
    })?;
    Ok(found)
}

// --- dump ------------------------------------------------------------------------

/// The socket's multicast groups as 32-bit bitmap words, without trailing zero words.
fn groups(s: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut buf = [0u8; 1024];
    let len = sys::getsockopt_bytes(s, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, &mut buf)?;
    if len > buf.len() {
        return Err(io::Error::other(format!(
            "{len} bytes of multicast groups (at most {} read)",
            buf.len()
        )));
    }
    let mut words: Vec<u32> = buf[..len]
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    while words.last() == Some(&0) {
        words.pop();
    }
    Ok(words)
}

fn unrecorded_options(s: BorrowedFd<'_>) -> io::Result<Vec<&'static str>> {
    let mut set = Vec::new();
    for (name, what) in UNRECORDED_OPTIONS {
        if opt_int_maybe(s, SOL_NETLINK, name)?.is_some_and(|v| v != 0) {
            set.push(what);
        }
    }
    Ok(set)
}

fn has_queued(s: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(sys::poll_now(s, libc::POLLIN)? & libc::POLLIN != 0)
}

/// The netlink socket's row in the kind table; works on a running task, changing
/// nothing.
pub(super) fn kind(fd: &OpenFd<'_>) -> Result<Kind, FileError> {
    let s = fd.raw();
    if has_queued(s).map_err(fd.io("poll the netlink socket"))? {
        return Ok(Kind::NetlinkQueued);
    }
    let set = unrecorded_options(s).map_err(fd.io("read the netlink socket's options"))?;
    Ok(if set.is_empty() {
        Kind::Netlink
    } else {
        Kind::NetlinkOptions
    })
}

/// The netlink socket for messages: protocol, port and the options that cannot be
/// recorded, if any.
pub(super) fn describe(fd: &OpenFd<'_>) -> String {
    let s = fd.raw();
    let proto = opt_int(s, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(-1);
    let port = sys::socket_address(s, false)
        .ok()
        .and_then(|a| le32(&a, 4))
        .unwrap_or(0);
    let mut text = format!("{}, protocol {proto}, port id {port}", fd.link_str());
    if let Ok(set) = unrecorded_options(s) {
        if !set.is_empty() {
            text = format!("{text}, with {}", set.join(", "));
        }
    }
    text
}

/// Dumps netlink socket `fd` as file `id` (`net_ids`: CRIU's ids of network namespaces
/// by inode).
pub(super) fn dump(
    nets: &mut Nets,
    fd: &OpenFd<'_>,
    id: u32,
    net_ids: &HashMap<u64, u32>,
) -> Result<pb::NetlinkSkEntry, FileError> {
    let s = fd.raw();
    let ino = fd.meta.ino() as u32;
    let (net, netns) = nets.net_for(fd)?;
    let found = find(net, ino).map_err(fd.io("read the netlink socket table (netlink_diag)"))?;
    let protocol = opt_int(s, libc::SOL_SOCKET, libc::SO_PROTOCOL)
        .map_err(fd.io("read the socket's protocol"))? as u32;
    let d = found.unwrap_or_default();
    Ok(pb::NetlinkSkEntry {
        id,
        ino,
        protocol,
        state: u32::from(d.state),
        flags: fd.common.flags,
        portid: d.portid,
        groups: groups(s).map_err(fd.io("read the multicast groups"))?,
        dst_portid: d.dst_portid,
        dst_group: d.dst_group,
        fown: fd.fown()?,
        opts: sk_opts(s, libc::AF_NETLINK).map_err(fd.io("read socket options"))?,
        ns_id: net_ids.get(&netns).copied(),
    })
}

// --- restore ---------------------------------------------------------------------

/// `struct sockaddr_nl`.
fn sockaddr_nl(portid: u32, groups: u32) -> Vec<u8> {
    let mut v = (libc::AF_NETLINK as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&portid.to_ne_bytes());
    v.extend_from_slice(&groups.to_ne_bytes());
    v
}

/// The group numbers (from 1) of bitmap words `words`.
fn group_numbers(words: &[u32]) -> impl Iterator<Item = u32> + '_ {
    words.iter().enumerate().flat_map(|(i, &w)| {
        (0..32)
            .filter(move |bit| w & (1 << bit) != 0)
            .map(move |bit| i as u32 * 32 + bit + 1)
    })
}

/// A netlink socket as saved.
pub(super) fn open_netlink(at: &FileRef, ne: &pb::NetlinkSkEntry) -> Result<OwnedFd> {
    let proto = ne.protocol as i32;
    let fd = sys::socket(libc::AF_NETLINK, libc::SOCK_RAW, proto)
        .map_err(at.io(format!("create a netlink socket of protocol {proto}")))?;
    let s = fd.as_fd();
    // Bound: the first 32 groups go with the bind; unbound, all are joined below
    // (binding would give it a port id it did not have).
    let first = ne.groups.first().copied().unwrap_or(0);
    let later = if ne.portid != 0 {
        let bound = sys::bind_raw(s, &sockaddr_nl(ne.portid, first));
        match bound {
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                sys::bind_raw(s, &sockaddr_nl(0, first)).map_err(at.io(format!(
                    "bind (port id {} is taken, and a new one failed too)",
                    ne.portid
                )))?
            }
            other => other.map_err(at.io(format!("bind to port id {}", ne.portid)))?,
        }
        ne.groups.get(1..).unwrap_or_default()
    } else {
        &ne.groups[..]
    };
    let skip = if ne.portid != 0 { 32 } else { 0 };
    for group in group_numbers(later) {
        let group = group + skip;
        sys::setsockopt_int(s, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group as i32)
            .map_err(at.io(format!("join multicast group {group}")))?;
    }
    if ne.state == NETLINK_CONNECTED {
        let groups = match ne.dst_group {
            0 => 0,
            g @ 1..=32 => 1u32 << (g - 1),
            g => return Err(at.refused(format!("a connection to multicast group {g} (1 to 32)"))),
        };
        sys::connect_raw(s, &sockaddr_nl(ne.dst_portid, groups)).map_err(at.io(format!(
            "connect to port id {}, group {}",
            ne.dst_portid, ne.dst_group
        )))?;
    }
    finish_socket(at, s, &ne.opts, None, ne.flags, &ne.fown)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netlink_message() {
        let mut m = vec![libc::AF_NETLINK as u8, libc::SOCK_RAW as u8, 15, 1];
        for w in [4242u32, 0, 3, 9999, 0, 0] {
            m.extend_from_slice(&w.to_ne_bytes());
        }
        let d = parse_netlink(&m).unwrap();
        assert_eq!(
            d,
            NetlinkDiag {
                ino: 9999,
                protocol: 15,
                state: 1,
                portid: 4242,
                dst_portid: 0,
                dst_group: 3,
            }
        );
        assert!(parse_netlink(&m[..27]).is_none());
        let r = netlink_request(1);
        assert_eq!(le32(&r, 0), Some(r.len() as u32));
    }

    #[test]
    fn groups_are_numbered_from_one() {
        let g: Vec<u32> = group_numbers(&[0b101, 1 << 31]).collect();
        assert_eq!(g, vec![1, 3, 64]);
        assert_eq!(sockaddr_nl(1, 2).len(), 12);
    }
}
