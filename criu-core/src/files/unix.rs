//! Unix sockets (stream, datagram, seqpacket); their names are in [`name`].
//!
//! Dump: state, peer, bound name and queue lengths come from sock_diag in the socket's
//! network namespace; queued data is read with `MSG_PEEK` and `SO_PEEK_OFF`, so the
//! task still finds it, with the files its messages carry (`SCM_RIGHTS`; see
//! [`queue`]). A connection a listener has not accepted yet is recorded as its
//! client connected to the listener when exactly one waits and its client, in the dump,
//! sent nothing; otherwise it is refused.
//!
//! A socket connected to one outside the dump (a logging daemon's `/dev/log`, a message
//! bus) is refused, naming both, unless the dump has `--ext-unix-sk` ([`ExternalUnix`]),
//! as in CRIU: then its peer is recorded as CRIU records it, an entry of its own marked
//! external (`USK_EXTERN`) holding its name, and the restore connects the socket to that
//! name again. A datagram socket then talks to whoever is bound there, as before (the
//! datagrams it had not read yet are kept). A stream or seqpacket socket gets a new
//! connection to the listener of that name: the peer sees a new client, and what it knew
//! of the old connection is gone (the old one ended when the dump killed the tree), so,
//! as CRIU, such a socket is taken only when it is named (`--ext-unix-sk=INODE`, or
//! `--external unix[INODE]`), and not with data queued, which only its old peer could
//! send again. A peer without a name, or with a relative one, has nothing to connect to.
//!
//! Restore: mutual peers are both ends of one `socketpair(2)`; a datagram socket is
//! connected to the named one it was connected to; a listener listens again; a client
//! whose connection was not accepted yet connects to its listener again; an end whose
//! peer is gone is one end of a fresh pair whose other end is closed; an end whose peer
//! is external connects to its name (with `--ext-unix-sk`). Queued data is sent again
//! from the peer (so message boundaries are kept), with the files each message carried,
//! then options, shutdown state, flags and owner are set.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use criu_images::{pb, ImageReader};

use super::diag::{NetDiag, UnixDiag};
use super::dump::{writer, FileError, OpenFd};
use super::kinds::{self, Given, Kind};
use super::restore::{bad, optional, FileOpener, FileRef, Result};
use super::socket::{
    finish_socket, in_image, opt_int, sk_opts, so, tcp_state_name, Nets, SIOCGSKNS, TCP_CLOSE,
    TCP_ESTABLISHED, TCP_LISTEN,
};
use crate::sys::{self, Pid};

pub(super) mod external;
pub(super) mod name;
pub(super) mod queue;

use external::external_refusal;
pub use external::ExternalUnix;
pub(super) use external::{check_external, describe_outside};
use name::{bound_file, check_bound_file, show_unix_name};
use queue::peek_queue;
pub(super) use queue::{head_passed_files, PassedFd};

/// CRIU's `uflags` bit of an entry that stands for a socket outside the dump.
pub(super) const USK_EXTERN: u32 = 1;

// --- dump ------------------------------------------------------------------------

/// Formats a unix socket name as sock_diag gives it: `@abstract`, `/path`, or `(unnamed)`.
fn show_diag_name(name: Option<&[u8]>) -> String {
    match name {
        None | Some([]) => "(unnamed)".into(),
        Some([0, rest @ ..]) => format!("@{}", String::from_utf8_lossy(rest)),
        Some(path) => String::from_utf8_lossy(path.strip_suffix(&[0]).unwrap_or(path)).into_owned(),
    }
}

/// The unix socket's row in the kind table, from its type and queue; works on a
/// running task, changing nothing.
pub(super) fn kind(fd: &OpenFd<'_>) -> Result<Kind, FileError> {
    let ty =
        opt_int(fd.raw(), libc::SOL_SOCKET, so::TYPE).map_err(fd.io("read the socket's type"))?;
    Ok(match ty {
        _ if unix_orphan_with_data(fd)? => Kind::UnixOrphanQueued,
        libc::SOCK_STREAM => Kind::UnixStream,
        libc::SOCK_DGRAM => Kind::UnixDgram,
        libc::SOCK_SEQPACKET => Kind::UnixSeqpacket,
        _ => Kind::UnixOther,
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

/// Refuses a unix socket of a type we cannot dump, or whose bound file moved.
pub(super) fn check(fd: &OpenFd<'_>) -> Result<(), FileError> {
    let ty =
        opt_int(fd.raw(), libc::SOL_SOCKET, so::TYPE).map_err(fd.io("read the socket's type"))?;
    if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&ty) {
        return Err(fd.unsupported(format!("unix socket of type {ty} ({})", fd.link_str())));
    }
    check_bound_file(fd)
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
            show_diag_name(d.name.as_deref())
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
            show_diag_name(l.name.as_deref())
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

/// A dumped unix socket, for the check that its peer was dumped too.
struct UnixRecord {
    pid: Pid,
    fd: i32,
    ino: u32,
    /// Its name and type, and bytes queued, as sock_diag shows them.
    name: Option<Vec<u8>>,
    kind: u8,
    rqlen: u32,
    peer: u32,
    peer_name: Option<Vec<u8>>,
}

/// The unix part of a dump: the sockets dumped (for the check that their peers were
/// dumped too) and their queued data.
#[derive(Default)]
pub(super) struct DumpState {
    records: Vec<UnixRecord>,
    /// Dumped listeners (`ino`) with a connection not accepted yet from `peer`.
    in_flight: Vec<UnixRecord>,
    inodes: HashSet<u32>,
    queues: Vec<(pb::SkPacketEntry, Vec<u8>)>,
    /// Our copies of the descriptors the queues carry, whose files are not dumped yet
    /// ([`DumpState::take_passed`]).
    passed: VecDeque<PassedFd>,
    /// Which sockets may have their peer outside the dump.
    pub(super) external: ExternalUnix,
}

impl DumpState {
    /// Dumps unix socket `fd` as file `id` (`nets`: the sock_diag tables by network
    /// namespace; `net_ids`: CRIU's ids of network namespaces by inode, when known).
    pub(super) fn dump(
        &mut self,
        nets: &mut Nets,
        fd: &OpenFd<'_>,
        id: u32,
        net_ids: &HashMap<u64, u32>,
    ) -> Result<pb::UnixSkEntry, FileError> {
        let ino = fd.meta.ino() as u32;
        let (net, netns) = nets.net_for(fd)?;
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
        let name = show_diag_name(d.name.as_deref());
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
            moved_to: None,
        };
        if let Some(path) = d
            .name
            .as_deref()
            .filter(|n| n.first().is_some_and(|&b| b != 0))
        {
            bound_file(fd, path, &mut entry)?;
        }
        if d.rqlen != 0 && d.state != TCP_LISTEN {
            self.dump_queue(fd, id, &d, &name)?;
        }
        let (peer_ino, peer_name) = match &listener {
            Some(l) => (l.ino, l.name.clone()),
            None => (d.peer, peer.and_then(|p| p.name)),
        };
        self.records.push(UnixRecord {
            pid: fd.pid,
            fd: fd.fd,
            ino,
            name: d.name.clone(),
            kind: d.kind,
            rqlen: d.rqlen,
            peer: peer_ino,
            peer_name,
        });
        if d.state == TCP_LISTEN {
            for &client in &d.icons {
                self.in_flight.push(UnixRecord {
                    pid: fd.pid,
                    fd: fd.fd,
                    ino,
                    name: d.name.clone(),
                    kind: d.kind,
                    rqlen: d.rqlen,
                    peer: client,
                    peer_name: d.name.clone(),
                });
            }
        }
        self.inodes.insert(ino);
        Ok(entry)
    }

    /// Reads the queue of socket `d` (file `id`) without consuming it: its packets, and
    /// the descriptors they carry, to be dumped as files of their own.
    fn dump_queue(
        &mut self,
        fd: &OpenFd<'_>,
        id: u32,
        d: &UnixDiag,
        name: &str,
    ) -> Result<(), FileError> {
        let ino = d.ino;
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
        for q in packets {
            let packet = self.queues.len();
            self.passed
                .extend(q.fds.into_iter().enumerate().map(|(slot, file)| PassedFd {
                    packet,
                    slot,
                    file,
                    socket_ino: ino,
                    pid: fd.pid,
                    fd: fd.fd,
                }));
            self.queues.push((q.entry, q.data));
        }
        Ok(())
    }

    /// The next descriptor the queues read so far carry whose file is not dumped yet:
    /// the caller dumps it as any open file and tells its id ([`Self::set_passed_id`]).
    pub(super) fn take_passed(&mut self) -> Option<PassedFd> {
        self.passed.pop_front()
    }

    /// The file id of the descriptor `slot` of queued packet `packet` carries.
    pub(super) fn set_passed_id(&mut self, packet: usize, slot: usize, id: u32) {
        if let Some(right) = self
            .queues
            .get_mut(packet)
            .and_then(|(p, _)| p.scm.first_mut())
            .and_then(|scm| scm.rights.get_mut(slot))
        {
            *right = id;
        }
    }

    /// The records of sockets whose peer is outside the dump.
    fn outside(&self) -> impl Iterator<Item = &UnixRecord> {
        self.records
            .iter()
            .filter(|r| r.peer != 0 && !self.inodes.contains(&r.peer))
    }

    /// Every connected unix socket's peer must be in the dump as well, or be allowed
    /// outside it ([`ExternalUnix`]).
    pub(super) fn check_peers(&self) -> Result<(), FileError> {
        let kind = Kind::UnixPeerOutside;
        for r in self.outside() {
            let given = Given {
                ext_unix_sk: self.external.allows(r.ino),
                ..Given::default()
            };
            let why = kind.dump_refusal(given).or_else(|| {
                external_refusal(
                    r.ino,
                    r.kind,
                    r.rqlen,
                    r.peer,
                    r.peer_name.as_deref(),
                    &self.external,
                )
            });
            if let Some(why) = why {
                return Err(FileError::Unsupported {
                    pid: r.pid,
                    fd: r.fd,
                    kind: format!(
                        "{kind} (unix socket {} {} connected to socket {} {} outside the \
                         dumped tree): {why}",
                        r.ino,
                        show_diag_name(r.name.as_deref()),
                        r.peer,
                        show_diag_name(r.peer_name.as_deref())
                    ),
                });
            }
        }
        for r in &self.in_flight {
            if !self.inodes.contains(&r.peer) {
                return Err(FileError::Unsupported {
                    pid: r.pid,
                    fd: r.fd,
                    kind: format!(
                        "unix socket {} {}: listening with a connection not accepted \
                         yet from socket {} outside the dump",
                        r.ino,
                        show_diag_name(r.peer_name.as_deref()),
                        r.peer
                    ),
                });
            }
        }
        Ok(())
    }

    /// The entries that stand for the peers outside the dump of the sockets allowed to
    /// have one (after [`DumpState::check_peers`]), each once, with ids from `first_id`
    /// on: as CRIU writes them, a datagram socket listening under the peer's name,
    /// marked `USK_EXTERN`, that no descriptor holds.
    pub(super) fn external_peers(&self, first_id: u32) -> Vec<pb::UnixSkEntry> {
        let mut out: Vec<pb::UnixSkEntry> = Vec::new();
        for r in self.outside() {
            if out.iter().any(|e| e.ino == r.peer) {
                continue;
            }
            out.push(pb::UnixSkEntry {
                id: first_id + out.len() as u32,
                ino: r.peer,
                r#type: libc::SOCK_DGRAM as u32,
                state: TCP_LISTEN.into(),
                flags: 0,
                uflags: USK_EXTERN,
                backlog: 0,
                peer: 0,
                fown: pb::FownEntry::default(),
                opts: pb::SkOptsEntry::default(),
                name: r.peer_name.clone().unwrap_or_default(),
                shutdown: None,
                file_perms: None,
                name_dir: None,
                deleted: None,
                ns_id: None,
                mnt_id: None,
                moved_to: None,
            });
        }
        out
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

// --- restore ---------------------------------------------------------------------

/// A queued socket packet: its entry and its bytes.
type Packet = (pb::SkPacketEntry, Vec<u8>);

/// The restore's unix sockets: where they are by inode, their saved queues, and the
/// ones made so far but not finished.
pub(super) struct RestoreState {
    /// Unix sockets' file ids by inode.
    by_ino: HashMap<u32, u32>,
    /// Queued packets by the id of the socket they wait in, in order.
    queues: HashMap<u32, Vec<Packet>>,
    /// Unix sockets created and bound, not connected or filled yet.
    pending: HashMap<u32, OwnedFd>,
    /// `O_PATH` descriptors of the files of unix sockets bound to a name whose file was
    /// deleted (by socket file id): the one way left to reach such a socket.
    ghosts: HashMap<u32, OwnedFd>,
}

impl RestoreState {
    /// Reads `sk-queues.img` from `dir`; `by_ino` is [`by_inode`] of `files.img`.
    pub(super) fn load(dir: &Path, by_ino: HashMap<u32, u32>) -> Result<RestoreState> {
        Ok(RestoreState {
            by_ino,
            queues: read_queues(dir)?,
            pending: HashMap::new(),
            ghosts: HashMap::new(),
        })
    }
}

/// The file id of every unix socket of `files.img`, by inode; an inode twice is an
/// error.
pub(super) fn by_inode(files: &HashMap<u32, pb::FileEntry>) -> Result<HashMap<u32, u32>> {
    let mut unix_by_ino = HashMap::new();
    for f in files.values() {
        if let Some(u) = &f.usk {
            if unix_by_ino.insert(u.ino, f.id).is_some() {
                return Err(bad(
                    "files.img",
                    format!("has unix socket inode {} twice", u.ino),
                ));
            }
        }
    }
    Ok(unix_by_ino)
}

/// `sk-queues.img`: each packet entry is followed by its bytes.
fn read_queues(dir: &Path) -> Result<HashMap<u32, Vec<Packet>>> {
    let mut out: HashMap<u32, Vec<_>> = HashMap::new();
    let Some(path) = optional(dir, "sk-queues.img") else {
        return Ok(out);
    };
    let mut r = ImageReader::open(&path)?;
    while let Some(e) = r.next_entry::<pb::SkPacketEntry>()? {
        let data = r.read_extra(e.length.into(), "queued socket data")?;
        out.entry(e.id_for).or_default().push((e, data));
    }
    Ok(out)
}

impl FileOpener {
    /// The row of the kind table of unix socket file `id` in the images, and what to
    /// call it.
    pub(super) fn unix_kind(&self, id: u32, ue: &pb::UnixSkEntry) -> (Kind, String) {
        let netns = self.same_netns(ue.ns_id);
        let queued = self.unix.queues.get(&id).is_some_and(|q| !q.is_empty());
        let stream_like = ue.r#type as i32 != libc::SOCK_DGRAM;
        let orphan = queued
            && kinds::unix_orphan_with_data(ue.peer, ue.state, stream_like, ue.name.is_empty());
        let kind = match ue.r#type as i32 {
            _ if netns.is_err() => Kind::SocketForeignNetns,
            _ if ue.peer != 0 && self.external_peer(ue).is_none_or(|e| e.is_some()) => {
                Kind::UnixPeerOutside
            }
            _ if orphan => Kind::UnixOrphanQueued,
            libc::SOCK_STREAM => Kind::UnixStream,
            libc::SOCK_DGRAM => Kind::UnixDgram,
            libc::SOCK_SEQPACKET => Kind::UnixSeqpacket,
            _ => Kind::UnixOther,
        };
        let mut what = format!("{} {}", ue.ino, show_unix_name(&ue.name));
        if kind == Kind::UnixPeerOutside {
            let peer_name = match self.external_peer(ue) {
                Some(Some(pe)) => format!(" {}", show_unix_name(&pe.name)),
                _ => String::new(),
            };
            what = format!(
                "{what} connected to socket {}{peer_name} outside the dump",
                ue.peer
            );
        }
        if let Err(why) = netns {
            what = format!("{what}: {why}");
        }
        (kind, what)
    }

    /// The entry of a unix socket's peer when it stands for a socket outside the dump
    /// (CRIU's `USK_EXTERN`): `None` when the images hold no entry of the peer at all,
    /// `Some(None)` when the peer is one of the dump.
    fn external_peer(&self, ue: &pb::UnixSkEntry) -> Option<Option<&pb::UnixSkEntry>> {
        let id = self.unix.by_ino.get(&ue.peer)?;
        let pe = self.file(*id).ok()?.usk.as_ref()?;
        Some((pe.uflags & USK_EXTERN != 0).then_some(pe))
    }

    /// Judges a unix socket of the images, and every file its queue carries (and
    /// theirs, in turn); `numbers` are the descriptor numbers of task `pid`, which
    /// holds it.
    pub(super) fn check_unix(
        &self,
        pid: Pid,
        at: &FileRef,
        ue: &pb::UnixSkEntry,
        numbers: &HashSet<u32>,
    ) -> Result<()> {
        self.check_unix_socket(pid, at, ue)?;
        self.check_passed(pid, at, numbers)
    }

    /// Judges a unix socket of the images, without the files its queue carries.
    fn check_unix_socket(&self, pid: Pid, at: &FileRef, ue: &pb::UnixSkEntry) -> Result<()> {
        let no = |what: String| Err(at.unsupported(pid, what));
        let ty = ue.r#type as i32;
        let name = show_unix_name(&ue.name);
        if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&ty) {
            return no(format!("unix socket {} of type {ty}", ue.ino));
        }
        if ![
            in_image::TCP_LISTEN,
            in_image::TCP_ESTABLISHED,
            in_image::TCP_CLOSE,
        ]
        .contains(&ue.state)
        {
            return no(format!("unix socket {} in state {}", ue.ino, ue.state));
        }
        if ue.uflags != 0 {
            return no(format!(
                "unix socket {} {name} with CRIU markers {:#x} (external or inherited)",
                ue.ino, ue.uflags
            ));
        }
        if let Err(what) = self.same_netns(ue.ns_id) {
            return no(format!("unix socket {} {name}: {what}", ue.ino));
        }
        let queued = self.unix.queues.get(&at.id).map_or(&[][..], Vec::as_slice);
        let stream_like = ty != libc::SOCK_DGRAM;
        if let Some(Some(pe)) = (ue.peer != 0).then(|| self.external_peer(ue)).flatten() {
            // Connected to its name again (the kind table wants --ext-unix-sk).
            if pe.name.is_empty() || pe.name[0] != b'/' && pe.name[0] != 0 {
                return no(format!(
                    "unix socket {} {name} connected to socket {} outside the dump, whose \
                     name {} cannot be connected to",
                    ue.ino,
                    ue.peer,
                    show_unix_name(&pe.name)
                ));
            }
            if stream_like && !queued.is_empty() {
                return no(format!(
                    "unix socket {} {name} connected to socket {} {} outside the dump, with \
                     data queued that only that peer could send again",
                    ue.ino,
                    ue.peer,
                    show_unix_name(&pe.name)
                ));
            }
        } else if ue.peer != 0 {
            let Some(pe) = self
                .unix
                .by_ino
                .get(&ue.peer)
                .and_then(|p| self.file(*p).ok()?.usk.as_ref())
            else {
                return no(format!(
                    "unix socket {} {name} connected to socket {} outside the dump",
                    ue.ino, ue.peer
                ));
            };
            let mutual = pe.peer == ue.ino;
            // A connection the listener had not accepted yet: connected to it again.
            let in_flight = stream_like
                && ue.state == in_image::TCP_ESTABLISHED
                && pe.state == in_image::TCP_LISTEN;
            if in_flight && !queued.is_empty() {
                return no(format!(
                    "unix socket {} {name} with data queued on a connection its listener {} \
                     had not accepted yet",
                    ue.ino, ue.peer
                ));
            }
            if !mutual && stream_like && !in_flight {
                return no(format!(
                    "unix socket {} {name} connected to socket {} that is connected elsewhere",
                    ue.ino, ue.peer
                ));
            }
            if !mutual && pe.name.is_empty() {
                return no(format!(
                    "unix socket {} {name} connected to unnamed socket {} that has another peer",
                    ue.ino, ue.peer
                ));
            }
            if !mutual && !queued.is_empty() && ue.name.is_empty() {
                return no(format!(
                    "unnamed unix socket {} with queued data whose sender cannot be rebuilt",
                    ue.ino
                ));
            }
        } else if stream_like && ue.state == in_image::TCP_ESTABLISHED {
            if ue.shutdown != Some(pb::SkShutdown::Both as i32) {
                return no(format!(
                    "unix socket {} {name} whose peer is gone but which is not shut down",
                    ue.ino
                ));
            }
        } else if !queued.is_empty()
            && ue.state != in_image::TCP_ESTABLISHED
            && (stream_like || ue.name.is_empty())
        {
            return no(format!(
                "unix socket {} {name} with queued data but no peer to send it again",
                ue.ino
            ));
        }
        Ok(())
    }

    fn usk(&self, id: u32) -> Result<&pb::UnixSkEntry> {
        self.member(id, |f| f.usk.as_ref())
    }

    /// The file id of a unix socket's peer, which must be in the dump.
    fn unix_peer(&self, at: &FileRef, ue: &pb::UnixSkEntry) -> Result<Option<u32>> {
        if ue.peer == 0 {
            return Ok(None);
        }
        match self.unix.by_ino.get(&ue.peer) {
            Some(&id) => Ok(Some(id)),
            None => Err(at.refused(format!(
                "unix socket {} connected to socket {} outside the dump",
                ue.ino, ue.peer
            ))),
        }
    }

    pub(super) fn open_unix(&mut self, at: &FileRef) -> Result<()> {
        self.create_unix(at, at.id)?;
        match self.unix.pending.remove(&at.id) {
            Some(fd) => self.finish_unix(at, fd),
            None => Ok(()),
        }
    }

    /// Creates unix socket `id` and binds it to its name (pairs are finished at once;
    /// others wait in `unix_pending` for [`Self::finish_unix`]).
    fn create_unix(&mut self, at: &FileRef, id: u32) -> Result<()> {
        if self.given.contains_key(&id) || self.unix.pending.contains_key(&id) {
            return Ok(());
        }
        let at = &FileRef {
            id,
            kind: at.kind,
            fd: if id == at.id { at.fd } else { None },
        };
        let ue = self.usk(id)?.clone();
        let ty = ue.r#type as i32;
        let peer = self.unix_peer(at, &ue)?;
        let peer_entry = match peer {
            Some(p) => Some(self.usk(p)?.clone()),
            None => None,
        };
        match (peer, peer_entry) {
            // A peer outside the dump: connected to its name (`finish_unix`). A datagram
            // socket gets its queue first, from the other end of a pair, after it let go
            // of that end as its peer (a connect to AF_UNSPEC, which the other end's
            // sends survive): its own peer is to be the outside one.
            (Some(_), Some(pe)) if pe.uflags & USK_EXTERN != 0 => {
                let queued = self.unix.queues.get(&id).is_some_and(|q| !q.is_empty());
                let (s, sender) = if ty == libc::SOCK_DGRAM && queued {
                    let (a, b) = sys::socketpair(ty).map_err(at.io("create a socket pair"))?;
                    sys::connect_raw(a.as_fd(), &(libc::AF_UNSPEC as u16).to_ne_bytes())
                        .map_err(at.io("let go of the pair's other end"))?;
                    (a, Some(b))
                } else {
                    let s = sys::socket(libc::AF_UNIX, ty, 0).map_err(at.io("create a socket"))?;
                    (s, None)
                };
                self.bind_unix(at, s.as_fd(), &ue)?;
                // Made before the files its queue carries, which may include itself.
                self.unix.pending.insert(id, s);
                if let Some(b) = sender {
                    self.open_passed(id)?;
                    self.send_queue(at, b.as_fd(), None)?;
                }
            }
            // Mutual peers are a pair; a datagram socket connected to itself (its own
            // name) is not: it is one socket, connected once bound (`finish_unix`).
            (Some(pid), Some(pe)) if pe.peer == ue.ino && pid != id => {
                if pe.r#type != ue.r#type {
                    return Err(bad(
                        "files.img",
                        format!(
                            "unix sockets {} and {} are peers of different types",
                            ue.ino, pe.ino
                        ),
                    ));
                }
                let peer_at = FileRef {
                    id: pid,
                    kind: at.kind,
                    fd: None,
                };
                let (a, b) = sys::socketpair(ty).map_err(at.io("create a socket pair"))?;
                self.bind_unix(at, a.as_fd(), &ue)?;
                self.bind_unix(&peer_at, b.as_fd(), &pe)?;
                // Both ends are made before the files their queues carry, which may
                // include either of them.
                self.given.insert(id, a);
                self.given.insert(pid, b);
                self.open_passed(id)?;
                self.open_passed(pid)?;
                let (a, b) = (self.unix_fd(id)?, self.unix_fd(pid)?);
                self.send_queue(at, b, None)?;
                self.send_queue(&peer_at, a, None)?;
                finish_socket(at, a, &ue.opts, ue.shutdown, ue.flags, &ue.fown)?;
                finish_socket(&peer_at, b, &pe.opts, pe.shutdown, pe.flags, &pe.fown)?;
            }
            // Established without a peer: a named datagram socket is one others
            // connected to (the kernel marks both ends), made as any other; an unnamed
            // one, or a stream end, had a peer that is gone.
            (None, _)
                if ue.state == in_image::TCP_ESTABLISHED
                    && (ty != libc::SOCK_DGRAM || ue.name.is_empty()) =>
            {
                // One end of a fresh pair, the other closed, so what was queued can
                // still be read and then the stream ends; a datagram end keeps pointing
                // at its dead peer, as it did (the next send without an address fails
                // with ECONNREFUSED and disconnects it).
                let (a, b) = sys::socketpair(ty).map_err(at.io("create a socket pair"))?;
                self.given.insert(id, a);
                self.open_passed(id)?;
                self.send_queue(at, b.as_fd(), None)?;
                drop(b);
                let a = self.unix_fd(id)?;
                finish_socket(at, a, &ue.opts, ue.shutdown, ue.flags, &ue.fown)?;
            }
            _ => {
                let s = sys::socket(libc::AF_UNIX, ty, 0).map_err(at.io("create a socket"))?;
                self.bind_unix(at, s.as_fd(), &ue)?;
                self.unix.pending.insert(id, s);
            }
        }
        Ok(())
    }

    /// Listens, connects to a named peer, refills the queue, and sets the rest of a
    /// unix socket made by [`Self::create_unix`].
    fn finish_unix(&mut self, at: &FileRef, fd: OwnedFd) -> Result<()> {
        let ue = self.usk(at.id)?.clone();
        let s = fd.as_fd();
        let peer = self.unix_peer(at, &ue)?;
        if ue.state == in_image::TCP_LISTEN {
            sys::listen(s, ue.backlog.min(i32::MAX as u32) as i32)
                .map_err(at.io(format!("listen on {}", show_unix_name(&ue.name))))?;
        } else if let Some(pid) = peer {
            // A datagram socket connected to a named one (possibly itself), or a stream
            // one whose connection its listener had not accepted yet; or one whose peer
            // is outside the dump, connected to its name.
            let pe = self.usk(pid)?.clone();
            let external = pe.uflags & USK_EXTERN != 0;
            if pid != at.id && !external {
                self.create_unix(at, pid)?;
            }
            if pe.state == in_image::TCP_LISTEN && !external {
                // Listening before it is finished, so the connection has one to wait in.
                if let Some(l) = self.unix.pending.get(&pid) {
                    sys::listen(l.as_fd(), pe.backlog.min(i32::MAX as u32) as i32)
                        .map_err(at.io(format!("listen on {}", show_unix_name(&pe.name))))?;
                }
            }
            let (addr, lookup) = self.unix_target(pid, &pe);
            let deleted = if self.unix.ghosts.contains_key(&pid) {
                "deleted "
            } else {
                ""
            };
            lookup
                .run(|| sys::connect_raw(s, &addr))
                .map_err(at.io(format!("connect to {deleted}{}", show_unix_name(&pe.name))))?;
        }
        let external = match peer {
            Some(pid) => self.usk(pid)?.uflags & USK_EXTERN != 0,
            None => false,
        };
        // Made before the files its queue carries, which may include itself.
        self.given.insert(at.id, fd);
        // A socket whose peer is outside got its queue when it was made.
        if self.unix.queues.contains_key(&at.id) && !external {
            self.open_passed(at.id)?;
            let s = self.unix_fd(at.id)?;
            let (to, lookup) = self.unix_target(at.id, &ue);
            match peer {
                Some(pid) if pid == at.id => self.send_queue(at, s, Some((&to, &lookup)))?,
                Some(pid) => {
                    let sender = self.unix_fd(pid)?;
                    self.send_queue(at, sender, Some((&to, &lookup)))?;
                }
                None => {
                    let tmp = sys::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0)
                        .map_err(at.io("create a socket to refill the queue"))?;
                    self.send_queue(at, tmp.as_fd(), Some((&to, &lookup)))?;
                }
            }
        }
        let s = self.unix_fd(at.id)?;
        finish_socket(at, s, &ue.opts, ue.shutdown, ue.flags, &ue.fown)?;
        Ok(())
    }

    /// A unix socket already created (finished or not).
    fn unix_fd(&self, id: u32) -> Result<BorrowedFd<'_>> {
        self.given
            .get(&id)
            .or_else(|| self.unix.pending.get(&id))
            .map(|fd| fd.as_fd())
            .ok_or_else(|| {
                bad(
                    "files.img",
                    format!("unix socket file {id} was not created"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As CRIU: a datagram socket is taken with the option alone, a stream one only
    /// when named; never one whose peer has no usable name, nor a stream one with data
    /// from its old peer queued.
    #[test]
    fn which_sockets_with_a_peer_outside_are_taken() {
        let dgram = libc::SOCK_DGRAM as u8;
        let stream = libc::SOCK_STREAM as u8;
        let seqpacket = libc::SOCK_SEQPACKET as u8;
        let flag = ExternalUnix {
            allowed: true,
            inodes: Vec::new(),
        };
        let named = ExternalUnix {
            allowed: false,
            inodes: vec![7],
        };
        let log: Option<&[u8]> = Some(b"/dev/log\0");
        assert_eq!(external_refusal(7, dgram, 0, 9, log, &flag), None);
        assert_eq!(external_refusal(7, dgram, 40, 9, log, &flag), None);
        assert_eq!(
            external_refusal(7, dgram, 0, 9, Some(b"\0bus"), &flag),
            None
        );
        assert_eq!(external_refusal(7, stream, 0, 9, log, &named), None);
        let why = external_refusal(7, stream, 0, 9, log, &flag).unwrap();
        assert!(
            why.contains("--ext-unix-sk=7") && why.contains("/dev/log"),
            "{why}"
        );
        let why = external_refusal(7, seqpacket, 0, 9, log, &flag).unwrap();
        assert!(why.contains("--ext-unix-sk=7"), "{why}");
        let why = external_refusal(7, stream, 5, 9, log, &named).unwrap();
        assert!(why.contains("5 bytes queued"), "{why}");
        let why = external_refusal(7, dgram, 0, 9, None, &flag).unwrap();
        assert!(why.contains("no name"), "{why}");
        let why = external_refusal(7, dgram, 0, 9, Some(b"log.sock"), &flag).unwrap();
        assert!(why.contains("relative"), "{why}");
        assert!(flag.allows(1) && named.allows(7) && !named.allows(8));
    }

    #[test]
    fn names_print_readably() {
        assert_eq!(show_diag_name(None), "(unnamed)");
        assert_eq!(show_diag_name(Some(b"\0abc")), "@abc");
        assert_eq!(show_diag_name(Some(b"/run/x.sock\0")), "/run/x.sock");
    }
}
