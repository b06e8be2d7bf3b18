//! sock_diag netlink: the kernel's tables of unix and inet sockets of one network
//! namespace (state, peer, bound name, queue lengths, listen backlog). Packet and
//! netlink sockets use the same socket and walker; their requests and messages are
//! their modules' (`packet.rs`, `netlink.rs`).
//!
//! Messages are built and parsed here as plain bytes (host byte order, as netlink is),
//! so the parsers are tested on byte strings.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use crate::sys;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;

// unix_diag_req.udiag_show bits and the attributes they ask for.
const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_ICONS: u32 = 8;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
const INET_DIAG_SHUTDOWN: u16 = 8;

/// What sock_diag says about one unix socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct UnixDiag {
    pub ino: u32,
    /// SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET.
    pub kind: u8,
    /// TCP_* numbering: TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN...
    pub state: u8,
    /// The bound address's `sun_path` bytes (abstract names start with NUL).
    pub name: Option<Vec<u8>>,
    /// Inode of the peer, 0 if none.
    pub peer: u32,
    /// Receive queue: bytes queued, or for a listener, connections waiting.
    pub rqlen: u32,
    /// Send queue bytes, or for a listener, its backlog.
    pub wqlen: u32,
    /// Inodes of connections waiting to be accepted (listeners).
    pub icons: Vec<u32>,
    /// RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    pub shutdown: u8,
}

/// What sock_diag says about one TCP or UDP socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct InetDiag {
    pub family: u8,
    pub state: u8,
    pub sport: u16,
    pub dport: u16,
    /// Addresses in network byte order, as they lie in memory (IPv4 in the first 4).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub rqueue: u32,
    /// Send queue bytes, or for a listener, its backlog.
    pub wqueue: u32,
    pub ino: u32,
    pub shutdown: u8,
}

pub(super) fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The netlink attributes (type, payload) following a fixed header in `msg`.
pub(super) fn attrs(msg: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= msg.len() {
        let (Some(len), Some(ty)) = (le16(msg, at), le16(msg, at + 2)) else {
            break;
        };
        let len = len as usize;
        if len < 4 || at + len > msg.len() {
            break;
        }
        out.push((ty & 0x3fff, &msg[at + 4..at + len]));
        at += len.next_multiple_of(4);
    }
    out
}

pub(super) fn header(len: usize, seq: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&(len as u32).to_ne_bytes());
    v.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    v.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    v.extend_from_slice(&seq.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    v
}

/// A dump request for every unix socket of the namespace, with name, peer, pending
/// connections and queue lengths.
pub(super) fn unix_request(seq: u32) -> Vec<u8> {
    let mut v = header(NLMSG_HDRLEN + 24, seq);
    v.push(libc::AF_UNIX as u8);
    v.push(0);
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    v.extend_from_slice(&0u32.to_ne_bytes()); // ino
    v.extend_from_slice(
        &(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN).to_ne_bytes(),
    );
    v.extend_from_slice(&[0xff; 8]); // cookie: none
    v
}

/// A dump request for every socket of `family` and `protocol` (IPPROTO_TCP/UDP).
pub(super) fn inet_request(seq: u32, family: u8, protocol: u8) -> Vec<u8> {
    let mut v = header(NLMSG_HDRLEN + 56, seq);
    v.extend_from_slice(&[family, protocol, 0, 0]);
    v.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    v.extend_from_slice(&[0; 36]); // ports, addresses
    v.extend_from_slice(&0u32.to_ne_bytes()); // interface
    v.extend_from_slice(&[0xff; 8]); // cookie: none
    v
}

/// Parses one `unix_diag_msg` and its attributes.
pub(super) fn parse_unix(msg: &[u8]) -> Option<UnixDiag> {
    if msg.len() < 16 {
        return None;
    }
    let mut d = UnixDiag {
        kind: msg[1],
        state: msg[2],
        ino: le32(msg, 4)?,
        ..Default::default()
    };
    for (ty, data) in attrs(&msg[16..]) {
        match ty {
            UNIX_DIAG_NAME => d.name = Some(data.to_vec()),
            UNIX_DIAG_PEER => d.peer = le32(data, 0)?,
            UNIX_DIAG_ICONS => d.icons = data.chunks_exact(4).filter_map(|c| le32(c, 0)).collect(),
            UNIX_DIAG_RQLEN => {
                d.rqlen = le32(data, 0)?;
                d.wqlen = le32(data, 4)?;
            }
            UNIX_DIAG_SHUTDOWN => d.shutdown = *data.first()?,
            _ => {}
        }
    }
    Some(d)
}

/// Parses one `inet_diag_msg` and its attributes.
pub(super) fn parse_inet(msg: &[u8]) -> Option<InetDiag> {
    if msg.len() < 72 {
        return None;
    }
    let mut d = InetDiag {
        family: msg[0],
        state: msg[1],
        sport: be16(msg, 4)?,
        dport: be16(msg, 6)?,
        rqueue: le32(msg, 56)?,
        wqueue: le32(msg, 60)?,
        ino: le32(msg, 68)?,
        ..Default::default()
    };
    d.src.copy_from_slice(msg.get(8..24)?);
    d.dst.copy_from_slice(msg.get(24..40)?);
    for (ty, data) in attrs(&msg[72..]) {
        if ty == INET_DIAG_SHUTDOWN {
            d.shutdown = *data.first()?;
        }
    }
    Some(d)
}

fn bad_data(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Splits a buffer of netlink messages: calls `each(type, payload)`; returns true at
/// NLMSG_DONE. A NLMSG_ERROR becomes the error it carries.
pub(super) fn walk(buf: &[u8], seq: u32, mut each: impl FnMut(&[u8])) -> io::Result<bool> {
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = le32(buf, at).unwrap_or(0) as usize;
        let ty = le16(buf, at + 4).unwrap_or(0);
        let msg_seq = le32(buf, at + 8).unwrap_or(0);
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(bad_data(format!(
                "sock_diag: netlink message of length {len} at {at} in a {}-byte reply",
                buf.len()
            )));
        }
        let payload = &buf[at + NLMSG_HDRLEN..at + len];
        if msg_seq == seq {
            match ty {
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR => {
                    let code = le32(payload, 0).map(|c| c as i32).unwrap_or(-libc::EIO);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                SOCK_DIAG_BY_FAMILY => each(payload),
                _ => {}
            }
        }
        at += len.next_multiple_of(4);
    }
    Ok(false)
}

/// A sock_diag socket in one network namespace, with the tables read so far.
pub(super) struct NetDiag {
    sock: OwnedFd,
    seq: u32,
    unix: Option<HashMap<u32, UnixDiag>>,
    inet: HashMap<(u8, u8), HashMap<u32, InetDiag>>,
}

impl NetDiag {
    /// Opens a sock_diag socket in the network namespace `netns` (an nsfs fd), or in
    /// ours when it is ours. Joining another namespace happens on a short-lived thread,
    /// so the dumper itself never changes namespace; the socket stays in that namespace.
    pub(super) fn open(netns: Option<BorrowedFd<'_>>) -> io::Result<Self> {
        let open_here = || sys::socket(libc::AF_NETLINK, libc::SOCK_DGRAM, NETLINK_SOCK_DIAG);
        let sock = match netns {
            Some(ns) if !is_current_netns(ns)? => {
                let ns = ns.try_clone_to_owned()?;
                std::thread::scope(|s| {
                    s.spawn(move || {
                        sys::setns(ns.as_fd(), libc::CLONE_NEWNET)?;
                        open_here()
                    })
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("sock_diag helper thread panicked")))
                })?
            }
            _ => open_here()?,
        };
        Ok(NetDiag {
            sock,
            seq: 0,
            unix: None,
            inet: HashMap::new(),
        })
    }

    /// Sends the dump request `request(seq)` and calls `each` with the payload of every
    /// reply message (the other families' modules parse their own).
    pub(super) fn dump(
        &mut self,
        request: impl FnOnce(u32) -> Vec<u8>,
        mut each: impl FnMut(&[u8]),
    ) -> io::Result<()> {
        self.seq += 1;
        let seq = self.seq;
        let req = request(seq);
        sys::send(self.sock.as_fd(), &req, 0)?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = sys::recv(self.sock.as_fd(), &mut buf, 0)?;
            if n == 0 {
                return Err(bad_data(
                    "sock_diag: the reply ended before NLMSG_DONE".into(),
                ));
            }
            if walk(&buf[..n], seq, &mut each)? {
                return Ok(());
            }
        }
    }

    /// Every unix socket of the namespace, by inode.
    pub(super) fn unix(&mut self) -> io::Result<&HashMap<u32, UnixDiag>> {
        if self.unix.is_none() {
            let mut table = HashMap::new();
            self.dump(unix_request, |m| {
                if let Some(d) = parse_unix(m) {
                    table.insert(d.ino, d);
                }
            })?;
            self.unix = Some(table);
        }
        Ok(self.unix.get_or_insert_with(HashMap::new))
    }

    /// Forgets the unix table, so the next [`NetDiag::unix`] reads it again (for
    /// sockets created after it was read).
    pub(super) fn forget_unix(&mut self) {
        self.unix = None;
    }

    /// Every socket of `family` and `protocol` in the namespace's tables, by inode.
    pub(super) fn inet(&mut self, family: u8, protocol: u8) -> io::Result<&HashMap<u32, InetDiag>> {
        if !self.inet.contains_key(&(family, protocol)) {
            let mut table = HashMap::new();
            self.dump(
                |seq| inet_request(seq, family, protocol),
                |m| {
                    if let Some(d) = parse_inet(m) {
                        if d.ino != 0 {
                            table.insert(d.ino, d);
                        }
                    }
                },
            )?;
            self.inet.insert((family, protocol), table);
        }
        Ok(self.inet.entry((family, protocol)).or_default())
    }
}

/// Whether `ns` is the network namespace of the calling thread.
fn is_current_netns(ns: BorrowedFd<'_>) -> io::Result<bool> {
    let theirs = File::from(ns.try_clone_to_owned()?).metadata()?;
    let ours = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok(theirs.ino() == ours.ino() && theirs.dev() == ours.dev())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn nlmsg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&2u16.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn unix_msg() -> Vec<u8> {
        let mut m = vec![1, 1, 1, 0];
        m.extend_from_slice(&29545u32.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend(attr(UNIX_DIAG_NAME, b"\0abstract"));
        m.extend(attr(UNIX_DIAG_PEER, &29546u32.to_ne_bytes()));
        let mut rq = 10u32.to_ne_bytes().to_vec();
        rq.extend_from_slice(&768u32.to_ne_bytes());
        m.extend(attr(UNIX_DIAG_RQLEN, &rq));
        m.extend(attr(UNIX_DIAG_SHUTDOWN, &[3]));
        m.extend(attr(UNIX_DIAG_ICONS, &[]));
        m
    }

    #[test]
    fn unix_message() {
        let d = parse_unix(&unix_msg()).unwrap();
        assert_eq!(
            d,
            UnixDiag {
                ino: 29545,
                kind: 1,
                state: 1,
                name: Some(b"\0abstract".to_vec()),
                peer: 29546,
                rqlen: 10,
                wqlen: 768,
                icons: vec![],
                shutdown: 3
            }
        );
        assert!(parse_unix(&[1, 2, 3]).is_none());
        // Truncated and lying attributes are dropped, not read past the end.
        let mut m = unix_msg();
        m.truncate(m.len() - 3);
        let _ = parse_unix(&m);
        let mut m = unix_msg();
        m[16] = 0xff;
        let _ = parse_unix(&m);
    }

    #[test]
    fn inet_message() {
        let mut m = vec![libc::AF_INET as u8, 10, 0, 0];
        m.extend_from_slice(&8080u16.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[127, 0, 0, 1]);
        m.extend_from_slice(&src);
        m.extend_from_slice(&[0; 16]);
        m.extend_from_slice(&[0; 4 + 8]); // if, cookie
        m.extend_from_slice(&0u32.to_ne_bytes()); // expires
        m.extend_from_slice(&0u32.to_ne_bytes()); // rqueue
        m.extend_from_slice(&128u32.to_ne_bytes()); // wqueue
        m.extend_from_slice(&0u32.to_ne_bytes()); // uid
        m.extend_from_slice(&4242u32.to_ne_bytes()); // inode
        m.extend(attr(INET_DIAG_SHUTDOWN, &[1]));
        let d = parse_inet(&m).unwrap();
        assert_eq!(
            (d.family, d.state, d.sport, d.dport),
            (libc::AF_INET as u8, 10, 8080, 0)
        );
        assert_eq!(&d.src[..4], &[127, 0, 0, 1]);
        assert_eq!((d.wqueue, d.ino, d.shutdown), (128, 4242, 1));
        assert!(parse_inet(&m[..71]).is_none());
    }

    #[test]
    fn walking_replies() {
        let mut buf = nlmsg(SOCK_DIAG_BY_FAMILY, 7, &unix_msg());
        buf.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 6, &unix_msg())); // another request's
        let mut n = 0;
        assert!(!walk(&buf, 7, |_| n += 1).unwrap());
        assert_eq!(n, 1);
        buf.extend(nlmsg(NLMSG_DONE, 7, &0u32.to_ne_bytes()));
        assert!(walk(&buf, 7, |_| {}).unwrap());
        let err = walk(
            &nlmsg(NLMSG_ERROR, 7, &(-libc::EPERM).to_ne_bytes()),
            7,
            |_| {},
        )
        .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        // A length running past the buffer is an error, not a panic.
        let mut bad = nlmsg(SOCK_DIAG_BY_FAMILY, 7, &unix_msg());
        bad[0] = 0xff;
        assert!(walk(&bad, 7, |_| {}).is_err());
        let mut tiny = nlmsg(SOCK_DIAG_BY_FAMILY, 7, &[]);
        tiny[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(walk(&tiny, 7, |_| {}).is_err());
    }

    #[test]
    fn requests_have_their_declared_length() {
        let u = unix_request(1);
        assert_eq!(u.len(), 16 + 24);
        assert_eq!(le32(&u, 0), Some(u.len() as u32));
        let i = inet_request(1, libc::AF_INET6 as u8, libc::IPPROTO_TCP as u8);
        assert_eq!(i.len(), 16 + 56);
        assert_eq!(le32(&i, 0), Some(i.len() as u32));
    }

    #[test]
    fn reads_this_namespace_unix_table() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let ino = File::from(a.as_fd().try_clone_to_owned().unwrap())
            .metadata()
            .unwrap()
            .ino() as u32;
        let mut diag = NetDiag::open(None).unwrap();
        let table = diag.unix().unwrap();
        let d = table.get(&ino).expect("our socketpair is in the table");
        assert_eq!(d.kind, libc::SOCK_STREAM as u8);
        assert_ne!(d.peer, 0);
    }
}
