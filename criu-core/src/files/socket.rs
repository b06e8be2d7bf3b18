//! What every socket shares, both ways; each family's own code is in `unix.rs`,
//! `inet.rs` (with `tcp.rs` and `inet_raw.rs`), `netlink.rs` and `packet.rs`.
//!
//! The dump reads a socket through our duplicate of it: its family, type and state
//! decide its row in the kind table ([`kind`]); its SOL_SOCKET options come from
//! getsockopt ([`sk_opts`]); what the kernel's tables say of it (state, peer, bound
//! name, queues) from sock_diag in its own network namespace ([`Nets`]). A socket of a
//! network namespace that is neither the tree's nor the dumper's is refused: the
//! restore makes sockets in the tree's. The restore sets the same options again
//! ([`set_sk_opts`]), then the shutdown state, flags and owner ([`finish_socket`]).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use criu_images::pb;

use super::diag::NetDiag;
use super::dump::{file_entry, FileError, OpenFd};
use super::inet::{show_addr, socket_addr, tcp_info};
use super::kinds::{Given, Kind};
use super::restore::{finish, FileOpener, FileRef, Result};
use super::{inet, netlink, packet, tcp, unix};
use crate::sys::{self, Pid};

/// SOL_SOCKET options (asm-generic/socket.h, which x86-64 uses).
pub(super) mod so {
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

pub(super) const SIOCGSKNS: libc::c_ulong = 0x894c;

// TCP states, as sock_diag and TCP_INFO number them (unix sockets borrow them).
pub(super) const TCP_ESTABLISHED: u8 = 1;
// (TCP_ESTABLISHED is also what a connected UDP socket shows.)
pub(super) const TCP_CLOSE: u8 = 7;
pub(super) const TCP_LISTEN: u8 = 10;

/// The same states as the images keep them (`u32` fields).
pub(super) mod in_image {
    pub(in crate::files) const TCP_ESTABLISHED: u32 = super::TCP_ESTABLISHED as u32;
    pub(in crate::files) const TCP_CLOSE: u32 = super::TCP_CLOSE as u32;
    pub(in crate::files) const TCP_LISTEN: u32 = super::TCP_LISTEN as u32;
}

pub(super) fn opt_int(s: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    sys::getsockopt_int(s, level, name)
}

/// An int option that may not exist on this kernel (ENOPROTOOPT): `None` then.
pub(super) fn opt_int_maybe(s: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<Option<i32>> {
    match sys::getsockopt_int(s, level, name) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A `struct timeval` option as (seconds, microseconds).
pub(super) fn opt_timeval(s: BorrowedFd<'_>, name: i32) -> io::Result<(u64, u64)> {
    let mut buf = [0u8; 16];
    sys::getsockopt_bytes(s, libc::SOL_SOCKET, name, &mut buf)?;
    let sec = i64::from_ne_bytes(buf[..8].try_into().unwrap_or_default());
    let usec = i64::from_ne_bytes(buf[8..].try_into().unwrap_or_default());
    Ok((sec as u64, usec as u64))
}

/// The interface a socket is bound to (`SO_BINDTODEVICE`), if any.
pub(super) fn bound_device(s: BorrowedFd<'_>) -> io::Result<Option<String>> {
    let mut buf = [0u8; libc::IFNAMSIZ];
    let len =
        sys::getsockopt_bytes(s, libc::SOL_SOCKET, so::BINDTODEVICE, &mut buf)?.min(buf.len());
    let name = buf[..len].split(|&b| b == 0).next().unwrap_or_default();
    Ok((!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned()))
}

/// SOL_SOCKET options, as CRIU records them.
pub(super) fn sk_opts(s: BorrowedFd<'_>, family: i32) -> io::Result<pb::SkOptsEntry> {
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
    match family {
        libc::AF_NETLINK => return netlink::describe(fd),
        libc::AF_PACKET => return packet::describe(fd),
        _ => {}
    }
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

pub(super) fn tcp_state_name(state: u8) -> &'static str {
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

/// The socket's row in the kind table, from its family, type, protocol and (TCP)
/// state; works on a running task, changing nothing.
pub(super) fn kind(fd: &OpenFd<'_>) -> Result<Kind, FileError> {
    let domain = opt_int(fd.raw(), libc::SOL_SOCKET, so::DOMAIN)
        .map_err(fd.io("read the socket's family"))?;
    Ok(match domain {
        libc::AF_UNIX => unix::kind(fd)?,
        libc::AF_INET | libc::AF_INET6 => inet::kind(fd)?,
        libc::AF_NETLINK => netlink::kind(fd)?,
        libc::AF_PACKET => packet::kind(fd)?,
        _ => Kind::OtherSocket,
    })
}

/// Refuses what we cannot dump; works on a running task, changing nothing.
pub(super) fn check(fd: &OpenFd<'_>) -> Result<(), FileError> {
    let s = fd.raw();
    let domain =
        opt_int(s, libc::SOL_SOCKET, so::DOMAIN).map_err(fd.io("read the socket's family"))?;
    match domain {
        libc::AF_UNIX => unix::check(fd),
        libc::AF_INET | libc::AF_INET6 => inet::check(fd, domain).map(drop),
        // The kind table judged them.
        libc::AF_NETLINK | libc::AF_PACKET => Ok(()),
        other => Err(fd.unsupported(format!(
            "socket of address family {other} ({})",
            fd.link_str()
        ))),
    }
}

/// The sock_diag tables of each network namespace the dump met, by the namespace's
/// inode (0: ours, when the socket's cannot be found).
#[derive(Default)]
pub(super) struct Nets(HashMap<u64, NetDiag>);

impl Nets {
    /// The sock_diag tables of the socket's network namespace, and that namespace's inode.
    pub(super) fn net_for(&mut self, fd: &OpenFd<'_>) -> Result<(&mut NetDiag, u64), FileError> {
        let ns = sys::ioctl_get_fd(fd.raw(), SIOCGSKNS).ok();
        let ino = match &ns {
            Some(ns) => File::from(ns.try_clone().map_err(fd.io("duplicate a namespace fd"))?)
                .metadata()
                .map_err(fd.io("stat the socket's network namespace"))?
                .ino(),
            None => 0,
        };
        let diag = match self.0.entry(ino) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(
                NetDiag::open(ns.as_ref().map(|n| n.as_fd()))
                    .map_err(fd.io("open a sock_diag socket in the socket's network namespace"))?,
            ),
        };
        Ok((diag, ino))
    }
}

/// The sockets part of a dump: sock_diag tables per network namespace, the unix
/// sockets dumped with their queued data, and the TCP connections taken in repair mode.
#[derive(Default)]
pub(super) struct Sockets {
    nets: Nets,
    pub(super) unix: unix::DumpState,
    pub(super) tcp: tcp::DumpState,
}

impl Sockets {
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
        let (_, netns) = self.nets.net_for(fd)?;
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
            let usk = self.unix.dump(&mut self.nets, fd, id, net_ids)?;
            Ok(file_entry(pb::FdTypes::Unixsk, id, |e| e.usk = Some(usk)))
        } else if domain == libc::AF_NETLINK {
            let nlsk = netlink::dump(&mut self.nets, fd, id, net_ids)?;
            Ok(file_entry(pb::FdTypes::Netlinksk, id, |e| {
                e.nlsk = Some(nlsk)
            }))
        } else if domain == libc::AF_PACKET {
            let psk = packet::dump(&mut self.nets, fd, id, net_ids)?;
            Ok(file_entry(pb::FdTypes::Packetsk, id, |e| e.psk = Some(psk)))
        } else {
            let isk = inet::dump(&mut self.nets, &mut self.tcp, fd, id, domain, net_ids)?;
            Ok(file_entry(pb::FdTypes::Inetsk, id, |e| e.isk = Some(isk)))
        }
    }

    /// Every connected unix socket's peer must be in the dump as well.
    pub(super) fn check_peers(&self) -> Result<(), FileError> {
        self.unix.check_peers()
    }

    /// Which unix sockets may have their peer outside the dump (`--ext-unix-sk`).
    pub(super) fn set_external_unix(&mut self, ext: unix::ExternalUnix) {
        self.unix.external = ext;
    }

    /// The entries of the unix peers outside the dump, with ids from `first_id` on.
    pub(super) fn external_unix_peers(&self, first_id: u32) -> Vec<pb::FileEntry> {
        self.unix
            .external_peers(first_id)
            .into_iter()
            .map(|e| file_entry(pb::FdTypes::Unixsk, e.id, |f| f.usk = Some(e)))
            .collect()
    }

    pub(super) fn write(&self, dir: &Path) -> Result<(), FileError> {
        self.unix.write(dir)?;
        self.tcp.write(dir)
    }
}

// --- restore ---------------------------------------------------------------------

impl FileOpener {
    /// Whether a socket's network namespace is the restorer's: `Err` says why not.
    pub(super) fn same_netns(&self, ns_id: Option<u32>) -> std::result::Result<(), String> {
        if ns_id.is_some() && ns_id == self.tree_net_ns {
            return Ok(());
        }
        match (ns_id, self.root_ids.as_ref().and_then(|r| r.net_ns_id)) {
            (Some(theirs), Some(ours)) if theirs != ours => Err(format!(
                "it lives in network namespace {theirs}, not the restorer's ({ours})"
            )),
            _ => Ok(()),
        }
    }
}

impl FileOpener {
    /// Refuses a netlink or packet socket of another network namespace than the
    /// restorer's (it would be created in the wrong one).
    pub(super) fn check_sk_netns(
        &self,
        pid: Pid,
        at: &FileRef,
        kind: Kind,
        ns_id: Option<u32>,
    ) -> Result<()> {
        self.same_netns(ns_id)
            .map_err(|why| at.unsupported(pid, format!("{kind}: {why}")))
    }
}

/// SOL_SOCKET options, as saved; buffers first, then their lock bits.
pub(super) fn set_sk_opts(at: &FileRef, s: BorrowedFd<'_>, o: &pb::SkOptsEntry) -> Result<()> {
    let int = |name: i32, value: i32, what: &str| {
        sys::setsockopt_int(s, libc::SOL_SOCKET, name, value).map_err(at.io(format!("set {what}")))
    };
    // The kernel doubles what it is given.
    int(libc::SO_SNDBUFFORCE, (o.so_sndbuf / 2) as i32, "SO_SNDBUF")?;
    int(libc::SO_RCVBUFFORCE, (o.so_rcvbuf / 2) as i32, "SO_RCVBUF")?;
    if let Some(lock) = o.so_buf_lock {
        int(so::BUF_LOCK, lock as i32, "so::BUF_LOCK")?;
    }
    let timeval = |sec: u64, usec: u64| {
        let mut v = (sec as i64).to_ne_bytes().to_vec();
        v.extend_from_slice(&(usec as i64).to_ne_bytes());
        v
    };
    for (name, sec, usec, what) in [
        (
            libc::SO_SNDTIMEO,
            o.so_snd_tmo_sec,
            o.so_snd_tmo_usec,
            "SO_SNDTIMEO",
        ),
        (
            libc::SO_RCVTIMEO,
            o.so_rcv_tmo_sec,
            o.so_rcv_tmo_usec,
            "SO_RCVTIMEO",
        ),
    ] {
        if sec != 0 || usec != 0 {
            sys::setsockopt_bytes(s, libc::SOL_SOCKET, name, &timeval(sec, usec))
                .map_err(at.io(format!("set {what}")))?;
        }
    }
    for (name, on, what) in [
        (libc::SO_REUSEADDR, o.reuseaddr, "SO_REUSEADDR"),
        (libc::SO_REUSEPORT, o.so_reuseport, "SO_REUSEPORT"),
        (libc::SO_PASSCRED, o.so_passcred, "SO_PASSCRED"),
        (libc::SO_PASSSEC, o.so_passsec, "SO_PASSSEC"),
        (libc::SO_DONTROUTE, o.so_dontroute, "SO_DONTROUTE"),
        (libc::SO_NO_CHECK, o.so_no_check, "SO_NO_CHECK"),
        (libc::SO_BROADCAST, o.so_broadcast, "SO_BROADCAST"),
        (libc::SO_KEEPALIVE, o.so_keepalive, "SO_KEEPALIVE"),
        (
            libc::SO_OOBINLINE,
            o.so_oobinline.map(|v| v != 0),
            "SO_OOBINLINE",
        ),
    ] {
        if on == Some(true) {
            int(name, 1, what)?;
        }
    }
    if let Some(p) = o.so_priority {
        int(libc::SO_PRIORITY, p as i32, "SO_PRIORITY")?;
    }
    if let Some(l) = o.so_rcvlowat {
        int(libc::SO_RCVLOWAT, l as i32, "SO_RCVLOWAT")?;
    }
    if let Some(m) = o.so_mark {
        int(libc::SO_MARK, m as i32, "SO_MARK")?;
    }
    if let Some(t) = o.so_linger {
        let mut v = 1i32.to_ne_bytes().to_vec();
        v.extend_from_slice(&(t as i32).to_ne_bytes());
        sys::setsockopt_bytes(s, libc::SOL_SOCKET, libc::SO_LINGER, &v)
            .map_err(at.io("set SO_LINGER"))?;
    }
    if let Some(dev) = o.so_bound_dev.as_deref().filter(|d| !d.is_empty()) {
        sys::setsockopt_bytes(s, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_bytes())
            .map_err(at.io(format!("bind to device {dev}")))?;
    }
    if !o.so_filter.is_empty() {
        let prog: Vec<[u8; 8]> = o
            .so_filter
            .iter()
            .map(|&w| {
                let mut insn = [0u8; 8];
                insn[..2].copy_from_slice(&((w >> 48) as u16).to_ne_bytes());
                insn[2] = (w >> 40) as u8;
                insn[3] = (w >> 32) as u8;
                insn[4..].copy_from_slice(&(w as u32).to_ne_bytes());
                insn
            })
            .collect();
        sys::attach_socket_filter(s, &prog).map_err(at.io("attach the socket filter"))?;
    }
    for (name, v, what) in [
        (libc::TCP_KEEPCNT, o.tcp_keepcnt, "TCP_KEEPCNT"),
        (libc::TCP_KEEPIDLE, o.tcp_keepidle, "TCP_KEEPIDLE"),
        (libc::TCP_KEEPINTVL, o.tcp_keepintvl, "TCP_KEEPINTVL"),
    ] {
        if let Some(v) = v {
            sys::setsockopt_int(s, libc::IPPROTO_TCP, name, v as i32)
                .map_err(at.io(format!("set {what}")))?;
        }
    }
    Ok(())
}

/// Options, shutdown, file flags and owner of a socket whose data is in place.
pub(super) fn finish_socket(
    at: &FileRef,
    s: BorrowedFd<'_>,
    opts: &pb::SkOptsEntry,
    shutdown: Option<i32>,
    flags: u32,
    fown: &pb::FownEntry,
) -> Result<()> {
    set_sk_opts(at, s, opts)?;
    shut(at, s, shutdown)?;
    finish(at, s, flags, fown)
}

/// shutdown(2) as saved (`sk_shutdown` READ, WRITE, BOTH); an unconnected socket
/// takes the state but answers ENOTCONN.
pub(super) fn shut(at: &FileRef, s: BorrowedFd<'_>, shutdown: Option<i32>) -> Result<()> {
    let how = match shutdown {
        Some(1) => libc::SHUT_RD,
        Some(2) => libc::SHUT_WR,
        Some(3) => libc::SHUT_RDWR,
        _ => return Ok(()),
    };
    match sys::shutdown(s, how) {
        Err(e) if e.raw_os_error() != Some(libc::ENOTCONN) => Err(at.io("shut the socket down")(e)),
        _ => Ok(()),
    }
}
