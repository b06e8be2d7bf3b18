//! Packet sockets (AF_PACKET: SOCK_RAW, SOCK_DGRAM and the old SOCK_PACKET), as CRIU
//! records them in a `packet_sock_entry`.
//!
//! Dump: what the socket is bound to (interface index and protocol), its version,
//! reserve, timestamp source, copy threshold, flags (aux data, original device, virtio
//! header, loss), multicast memberships, fanout group and ring geometry, all from
//! packet_diag, which is the only place that lists memberships and rings. Packets
//! queued on it are dropped, as CRIU drops them: a packet socket is a tap on traffic
//! that goes on without it. A ring the task has mapped is a mapping of its own
//! (`Kind::MapSocket`: the socket's file id, mapped again once the socket is made with
//! its rings; the frames in the ring are not saved); options CRIU's entry has no field
//! for are refused (`Kind::PacketOptions`).
//!
//! Restore: a new socket of the same type and protocol, bound to the same interface,
//! then the options in the order the kernel wants them (the version and reserve
//! before a ring, the ring before the fanout group, which needs a bound socket).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use criu_images::pb;

use super::diag::{attrs, header, le16, le32, NetDiag};
use super::dump::{FileError, OpenFd};
use super::kinds::Kind;
use super::restore::{FileRef, Result};
use super::socket::{finish_socket, opt_int, opt_int_maybe, sk_opts, Nets};
use crate::sys;

const SOL_PACKET: i32 = 263;
/// The old interface (Linux 2.0), still open to programs; libc marks it deprecated.
const SOCK_PACKET: i32 = 10;
const PACKET_ADD_MEMBERSHIP: i32 = 1;
const PACKET_RX_RING: i32 = 5;
const PACKET_COPY_THRESH: i32 = 7;
const PACKET_AUXDATA: i32 = 8;
const PACKET_ORIGDEV: i32 = 9;
const PACKET_VERSION: i32 = 10;
const PACKET_RESERVE: i32 = 12;
const PACKET_TX_RING: i32 = 13;
const PACKET_LOSS: i32 = 14;
const PACKET_VNET_HDR: i32 = 15;
const PACKET_TIMESTAMP: i32 = 17;
const PACKET_FANOUT: i32 = 18;
const PACKET_TX_HAS_OFF: i32 = 19;
const PACKET_QDISC_BYPASS: i32 = 20;
const PACKET_IGNORE_OUTGOING: i32 = 23;
const PACKET_VNET_HDR_SZ: i32 = 24;

/// The size of `struct virtio_net_hdr`, what PACKET_VNET_HDR sets.
const VNET_HDR_DEFAULT: i32 = 10;

// packet_diag_req.pdiag_show bits and the attributes they ask for.
const PACKET_SHOW_INFO: u32 = 1;
const PACKET_SHOW_MCLIST: u32 = 2;
const PACKET_SHOW_RING_CFG: u32 = 4;
const PACKET_SHOW_FANOUT: u32 = 8;
const PACKET_DIAG_INFO: u16 = 0;
const PACKET_DIAG_MCLIST: u16 = 1;
const PACKET_DIAG_RX_RING: u16 = 2;
const PACKET_DIAG_TX_RING: u16 = 3;
const PACKET_DIAG_FANOUT: u16 = 4;

// packet_diag_info.pdi_flags.
const PDI_AUXDATA: u32 = 2;
const PDI_ORIGDEV: u32 = 4;
const PDI_VNETHDR: u32 = 8;
const PDI_LOSS: u32 = 0x10;

// PACKET_FANOUT types that run a program the image cannot hold, and the flag that
// has the kernel pick the group's id (given back as 0 on restore).
const PACKET_FANOUT_CBPF: u32 = 6;
const PACKET_FANOUT_EBPF: u32 = 7;
const PACKET_FANOUT_FLAG_UNIQUEID: u32 = 0x2000;

/// `struct packet_diag_mclist`: index, count, type, address length, 32 address bytes.
const MCLIST_SIZE: usize = 44;

/// What packet_diag says about one packet socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct PacketDiag {
    pub ino: u32,
    pub ty: u8,
    /// The protocol as socket(2) takes it (network byte order, in a host integer).
    pub protocol: u16,
    pub ifindex: u32,
    pub version: u32,
    pub reserve: u32,
    pub copy_thresh: u32,
    pub tstamp: u32,
    pub flags: u32,
    /// (interface index, type, address, how many times it was added).
    pub mclist: Vec<(u32, u16, Vec<u8>, u32)>,
    /// PACKET_FANOUT's value (id | type << 16 | flags << 24), when in a group.
    pub fanout: Option<u32>,
    pub rx_ring: Option<pb::PacketRing>,
    pub tx_ring: Option<pb::PacketRing>,
}

/// A dump request for every packet socket of the namespace, with what CRIU records.
pub(super) fn packet_request(seq: u32) -> Vec<u8> {
    let mut v = header(16 + 20, seq);
    v.extend_from_slice(&[libc::AF_PACKET as u8, 0, 0, 0]);
    v.extend_from_slice(&0u32.to_ne_bytes()); // ino
    let show = PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG | PACKET_SHOW_FANOUT;
    v.extend_from_slice(&show.to_ne_bytes());
    v.extend_from_slice(&[0xff; 8]); // cookie: none
    v
}

fn parse_ring(data: &[u8]) -> Option<pb::PacketRing> {
    let w = |i: usize| le32(data, i * 4);
    Some(pb::PacketRing {
        block_size: w(0)?,
        block_nr: w(1)?,
        frame_size: w(2)?,
        frame_nr: w(3)?,
        retire_tmo: w(4)?,
        sizeof_priv: w(5)?,
        features: w(6)?,
    })
}

/// Parses one `packet_diag_msg` and its attributes; `None` for a short or broken one.
pub(super) fn parse_packet(msg: &[u8]) -> Option<PacketDiag> {
    if msg.len() < 16 {
        return None;
    }
    let mut d = PacketDiag {
        ty: msg[1],
        // pdiag_num is in host order: socket(2) wants it in network order.
        protocol: le16(msg, 2)?.to_be(),
        ino: le32(msg, 4)?,
        ..Default::default()
    };
    for (ty, data) in attrs(&msg[16..]) {
        match ty {
            PACKET_DIAG_INFO => {
                d.ifindex = le32(data, 0)?;
                d.version = le32(data, 4)?;
                d.reserve = le32(data, 8)?;
                d.copy_thresh = le32(data, 12)?;
                d.tstamp = le32(data, 16)?;
                d.flags = le32(data, 20)?;
            }
            PACKET_DIAG_MCLIST => {
                for m in data.chunks_exact(MCLIST_SIZE) {
                    let alen = (le16(m, 10)? as usize).min(32);
                    d.mclist.push((
                        le32(m, 0)?,
                        le16(m, 8)?,
                        m[12..12 + alen].to_vec(),
                        le32(m, 4)?,
                    ));
                }
            }
            PACKET_DIAG_RX_RING => d.rx_ring = Some(parse_ring(data)?),
            PACKET_DIAG_TX_RING => d.tx_ring = Some(parse_ring(data)?),
            PACKET_DIAG_FANOUT => d.fanout = Some(le32(data, 0)?),
            _ => {}
        }
    }
    Some(d)
}

/// The packet socket `ino` as packet_diag lists it.
fn find(diag: &mut NetDiag, ino: u32) -> io::Result<Option<PacketDiag>> {
    let mut found = None;
    diag.dump(packet_request, |m| {
        if let Some(d) = parse_packet(m).filter(|d| d.ino == ino) {
            found = Some(d);
        }
    })?;
    Ok(found)
}

// --- dump ------------------------------------------------------------------------

/// The options of a packet socket CRIU's entry has no field for, by name.
fn unrecorded_options(s: BorrowedFd<'_>) -> io::Result<Vec<&'static str>> {
    let mut set = Vec::new();
    // The old interface has no packet-level options at all (getsockopt fails).
    if opt_int(s, libc::SOL_SOCKET, libc::SO_TYPE)? == SOCK_PACKET {
        return Ok(set);
    }
    for (name, what) in [
        (PACKET_QDISC_BYPASS, "PACKET_QDISC_BYPASS"),
        (PACKET_IGNORE_OUTGOING, "PACKET_IGNORE_OUTGOING"),
        (PACKET_TX_HAS_OFF, "PACKET_TX_HAS_OFF"),
    ] {
        if opt_int_maybe(s, SOL_PACKET, name)?.is_some_and(|v| v != 0) {
            set.push(what);
        }
    }
    // (PACKET_VNET_HDR_SZ is Linux 6.2's: older kernels only have the default size.)
    let vnet = opt_int_maybe(s, SOL_PACKET, PACKET_VNET_HDR_SZ)?.unwrap_or(0);
    if vnet != 0 && vnet != VNET_HDR_DEFAULT {
        set.push("PACKET_VNET_HDR_SZ (not the default size)");
    }
    let fanout = opt_int(s, SOL_PACKET, PACKET_FANOUT)? as u32;
    let fanout_type = (fanout >> 16) & 0xff;
    if fanout_type == PACKET_FANOUT_CBPF || fanout_type == PACKET_FANOUT_EBPF {
        set.push("PACKET_FANOUT with a BPF program");
    }
    Ok(set)
}

/// The packet socket's row in the kind table; works on a running task, changing nothing.
pub(super) fn kind(fd: &OpenFd<'_>) -> Result<Kind, FileError> {
    let set = unrecorded_options(fd.raw()).map_err(fd.io("read the packet socket's options"))?;
    Ok(if set.is_empty() {
        Kind::Packet
    } else {
        Kind::PacketOptions
    })
}

/// The packet socket for messages: type, protocol, interface and the options that
/// cannot be recorded, if any.
pub(super) fn describe(fd: &OpenFd<'_>) -> String {
    let s = fd.raw();
    let ty = opt_int(s, libc::SOL_SOCKET, libc::SO_TYPE).unwrap_or(0);
    let proto = opt_int(s, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0);
    let mut text = format!(
        "{}, type {ty}, protocol {:#06x}",
        fd.link_str(),
        u16::from_be(proto as u16)
    );
    if let Ok(set) = unrecorded_options(s) {
        if !set.is_empty() {
            text = format!("{text}, with {}", set.join(", "));
        }
    }
    text
}

/// Dumps packet socket `fd` as file `id` (`net_ids`: CRIU's ids of network namespaces
/// by inode).
pub(super) fn dump(
    nets: &mut Nets,
    fd: &OpenFd<'_>,
    id: u32,
    net_ids: &HashMap<u64, u32>,
) -> Result<pb::PacketSockEntry, FileError> {
    let s = fd.raw();
    let ino = fd.meta.ino() as u32;
    let (net, netns) = nets.net_for(fd)?;
    let d = find(net, ino)
        .map_err(fd.io("read the packet socket table (packet_diag)"))?
        .ok_or_else(|| {
            fd.unsupported(format!(
                "packet socket ({}) that packet_diag does not list",
                fd.link_str()
            ))
        })?;
    let mut mclist = Vec::new();
    for (index, ty, addr, count) in &d.mclist {
        // The kernel counts a membership added twice: the image holds it twice.
        for _ in 0..*count {
            mclist.push(pb::PacketMclist {
                index: *index,
                r#type: u32::from(*ty),
                addr: addr.clone(),
            });
        }
    }
    Ok(pb::PacketSockEntry {
        id,
        r#type: u32::from(d.ty),
        protocol: u32::from(d.protocol),
        flags: fd.common.flags,
        ifindex: d.ifindex,
        fown: fd.fown()?,
        opts: sk_opts(s, libc::AF_PACKET).map_err(fd.io("read socket options"))?,
        version: d.version,
        reserve: d.reserve,
        aux_data: d.flags & PDI_AUXDATA != 0,
        orig_dev: d.flags & PDI_ORIGDEV != 0,
        vnet_hdr: d.flags & PDI_VNETHDR != 0,
        loss: d.flags & PDI_LOSS != 0,
        timestamp: d.tstamp,
        copy_thresh: d.copy_thresh,
        mclist,
        fanout: d.fanout,
        rx_ring: d.rx_ring,
        tx_ring: d.tx_ring,
        ns_id: net_ids.get(&netns).copied(),
    })
}

// --- restore ---------------------------------------------------------------------

/// `struct sockaddr_ll` bound to interface `ifindex`, protocol 0 (which keeps the
/// socket's own).
fn sockaddr_ll(ifindex: u32) -> Vec<u8> {
    let mut v = (libc::AF_PACKET as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(&[0, 0]); // protocol: the socket's
    v.extend_from_slice(&ifindex.to_ne_bytes());
    v.extend_from_slice(&[0; 12]); // hatype, pkttype, halen, addr
    v
}

/// `struct packet_mreq` with room for a 32-byte address (what the kernel reads at most).
fn packet_mreq(m: &pb::PacketMclist) -> Option<Vec<u8>> {
    if m.addr.len() > 32 {
        return None;
    }
    let mut v = m.index.to_ne_bytes().to_vec();
    v.extend_from_slice(&(m.r#type as u16).to_ne_bytes());
    v.extend_from_slice(&(m.addr.len() as u16).to_ne_bytes());
    let mut addr = [0u8; 32];
    addr[..m.addr.len()].copy_from_slice(&m.addr);
    v.extend_from_slice(&addr);
    Some(v)
}

/// `struct tpacket_req3`, which the kernel reads for every version (the first four
/// words are `struct tpacket_req`).
fn tpacket_req(r: &pb::PacketRing) -> Vec<u8> {
    [
        r.block_size,
        r.block_nr,
        r.frame_size,
        r.frame_nr,
        r.retire_tmo,
        r.sizeof_priv,
        r.features,
    ]
    .iter()
    .flat_map(|w| w.to_ne_bytes())
    .collect()
}

/// Binds a SOCK_PACKET socket to its interface, which it names (`struct sockaddr`
/// with the name in `sa_data`).
fn bind_spkt(at: &FileRef, s: BorrowedFd<'_>, ifindex: u32) -> Result<()> {
    if ifindex == 0 {
        return Ok(());
    }
    let name = sys::interface_name(ifindex)
        .map_err(at.io(format!("find the name of interface {ifindex} to bind to")))?;
    let mut addr = (libc::AF_PACKET as u16).to_ne_bytes().to_vec();
    let mut data = [0u8; 14];
    let n = name.len().min(13);
    data[..n].copy_from_slice(&name.as_bytes()[..n]);
    addr.extend_from_slice(&data);
    sys::bind_raw(s, &addr).map_err(at.io(format!("bind to interface {name}")))
}

/// A packet socket as saved.
pub(super) fn open_packet(at: &FileRef, pe: &pb::PacketSockEntry) -> Result<OwnedFd> {
    let (ty, proto) = (pe.r#type as i32, pe.protocol as i32);
    let fd = sys::socket(libc::AF_PACKET, ty, proto).map_err(at.io(format!(
        "create a packet socket of type {ty}, protocol {:#06x}",
        u16::from_be(pe.protocol as u16)
    )))?;
    let s = fd.as_fd();
    if ty == SOCK_PACKET {
        bind_spkt(at, s, pe.ifindex)?;
        finish_socket(at, s, &pe.opts, None, pe.flags, &pe.fown)?;
        return Ok(fd);
    }
    sys::bind_raw(s, &sockaddr_ll(pe.ifindex))
        .map_err(at.io(format!("bind to interface {}", pe.ifindex)))?;
    let set = |name: i32, value: &[u8], what: &str| {
        sys::setsockopt_bytes(s, SOL_PACKET, name, value).map_err(at.io(format!("set {what}")))
    };
    let int = |v: u32| v.to_ne_bytes();
    set(PACKET_VERSION, &int(pe.version), "PACKET_VERSION")?;
    set(PACKET_RESERVE, &int(pe.reserve), "PACKET_RESERVE")?;
    set(PACKET_TIMESTAMP, &int(pe.timestamp), "PACKET_TIMESTAMP")?;
    set(
        PACKET_COPY_THRESH,
        &int(pe.copy_thresh),
        "PACKET_COPY_THRESH",
    )?;
    for (on, name, what) in [
        (pe.aux_data, PACKET_AUXDATA, "PACKET_AUXDATA"),
        (pe.orig_dev, PACKET_ORIGDEV, "PACKET_ORIGDEV"),
        (pe.vnet_hdr, PACKET_VNET_HDR, "PACKET_VNET_HDR"),
        (pe.loss, PACKET_LOSS, "PACKET_LOSS"),
    ] {
        if on {
            set(name, &int(1), what)?;
        }
    }
    for m in &pe.mclist {
        let mreq = packet_mreq(m).ok_or_else(|| {
            at.refused(format!(
                "a multicast membership with a {}-byte address (at most 32)",
                m.addr.len()
            ))
        })?;
        set(PACKET_ADD_MEMBERSHIP, &mreq, "PACKET_ADD_MEMBERSHIP")?;
    }
    if let Some(r) = &pe.rx_ring {
        set(PACKET_RX_RING, &tpacket_req(r), "PACKET_RX_RING")?;
    }
    if let Some(r) = &pe.tx_ring {
        set(PACKET_TX_RING, &tpacket_req(r), "PACKET_TX_RING")?;
    }
    if let Some(fanout) = pe.fanout.filter(|&f| f != u32::MAX) {
        // A group whose id the kernel picked: join it by id, not by asking for a new one.
        let fanout = fanout & !(PACKET_FANOUT_FLAG_UNIQUEID << 16);
        set(PACKET_FANOUT, &int(fanout), "PACKET_FANOUT")?;
    }
    finish_socket(at, s, &pe.opts, None, pe.flags, &pe.fown)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut v = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    #[test]
    fn packet_message() {
        let mut m = vec![libc::AF_PACKET as u8, libc::SOCK_DGRAM as u8];
        m.extend_from_slice(&0x0800u16.to_ne_bytes());
        m.extend_from_slice(&777u32.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        let info: Vec<u8> = [1u32, 1, 16, 0, 0, PDI_ORIGDEV | 1]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        m.extend(attr(PACKET_DIAG_INFO, &info));
        let mut mc = 1u32.to_ne_bytes().to_vec();
        mc.extend_from_slice(&2u32.to_ne_bytes());
        mc.extend_from_slice(&3u16.to_ne_bytes());
        mc.extend_from_slice(&6u16.to_ne_bytes());
        mc.extend_from_slice(&[0xaa; 32]);
        m.extend(attr(PACKET_DIAG_MCLIST, &mc));
        m.extend(attr(PACKET_DIAG_FANOUT, &0x1_0005u32.to_ne_bytes()));
        let ring: Vec<u8> = (1..=7u32).flat_map(|w| w.to_ne_bytes()).collect();
        m.extend(attr(PACKET_DIAG_TX_RING, &ring));
        let d = parse_packet(&m).unwrap();
        assert_eq!((d.ino, d.ty, d.protocol), (777, 2, 0x0800u16.to_be()));
        assert_eq!((d.ifindex, d.version, d.reserve), (1, 1, 16));
        assert_eq!(d.mclist, vec![(1, 3, vec![0xaa; 6], 2)]);
        assert_eq!(d.fanout, Some(0x1_0005));
        assert_eq!(d.rx_ring, None);
        assert_eq!(d.tx_ring.as_ref().map(|r| r.features), Some(7));
        assert!(parse_packet(&m[..10]).is_none());
        // A short ring is an error, not a panic.
        let mut bad = m[..16].to_vec();
        bad.extend(attr(PACKET_DIAG_RX_RING, &[0; 8]));
        assert!(parse_packet(&bad).is_none());
    }

    #[test]
    fn request_and_addresses_have_the_kernel_sizes() {
        let r = packet_request(3);
        assert_eq!(le32(&r, 0), Some(r.len() as u32));
        assert_eq!(r.len(), 36);
        assert_eq!(sockaddr_ll(1).len(), 20);
        let m = pb::PacketMclist {
            index: 1,
            r#type: 1,
            addr: vec![0; 6],
        };
        assert_eq!(packet_mreq(&m).map(|v| v.len()), Some(40));
        let long = pb::PacketMclist {
            addr: vec![0; 33],
            ..m
        };
        assert_eq!(packet_mreq(&long), None);
        assert_eq!(tpacket_req(&pb::PacketRing::default()).len(), 28);
    }
}
