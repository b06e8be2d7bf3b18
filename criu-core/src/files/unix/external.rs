//! Unix sockets connected to a socket outside the dump (`--ext-unix-sk`, as CRIU): which
//! the dump may take, and the refusals naming the peer when it may not.

use super::*;

/// Which unix sockets connected to a socket outside the dump may be saved, as CRIU's
/// options say (see the module's doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalUnix {
    /// `--ext-unix-sk`: datagram sockets whose peer has a name.
    pub allowed: bool,
    /// `--ext-unix-sk=INODE,...` or `--external unix[INODE]`: these sockets (by inode),
    /// of any type.
    pub inodes: Vec<u32>,
}

impl ExternalUnix {
    /// Whether socket `ino` may have its peer outside the dump, as far as the options go.
    pub(in crate::files) fn allows(&self, ino: u32) -> bool {
        self.allowed || self.inodes.contains(&ino)
    }
}

/// Why unix socket `ino` (of sock_diag type `kind`, `rqlen` bytes queued), whose peer
/// `peer` named `peer_name` is outside the dump, cannot be saved even though the
/// options allow it (`None`: it is, connected to that name again on restore).
pub(super) fn external_refusal(
    ino: u32,
    kind: u8,
    rqlen: u32,
    peer: u32,
    peer_name: Option<&[u8]>,
    ext: &ExternalUnix,
) -> Option<String> {
    let shown = show_diag_name(peer_name);
    let name = peer_name.unwrap_or_default();
    if name.is_empty() {
        return Some(format!(
            "its peer {peer} outside the dump has no name to connect to again"
        ));
    }
    if name[0] != b'/' && name[0] != 0 {
        return Some(format!(
            "its peer {peer} outside the dump has a relative name, {shown}, which says \
             nothing of where it is"
        ));
    }
    if kind == libc::SOCK_DGRAM as u8 {
        return None;
    }
    if !ext.inodes.contains(&ino) {
        return Some(format!(
            "a connection to {peer} {shown} outside the dump cannot be taken along: the \
             restore makes a new connection to {shown}, and the peer loses the old one; \
             name it with --ext-unix-sk={ino} (or --external unix[{ino}]) to accept that"
        ));
    }
    if rqlen != 0 {
        return Some(format!(
            "connected to {peer} {shown} outside the dump with {rqlen} bytes queued that \
             only its peer could send again"
        ));
    }
    None
}

/// What to call unix socket `fd` connected to `peer` outside the dump: both inodes and
/// names, as sock_diag shows them.
pub(in crate::files) fn describe_outside(fd: &OpenFd<'_>, peer: u32) -> String {
    let ino = fd.meta.ino() as u32;
    let ns = sys::ioctl_get_fd(fd.raw(), SIOCGSKNS).ok();
    let mut net = NetDiag::open(ns.as_ref().map(|n| n.as_fd())).ok();
    let table = net.as_mut().and_then(|n| n.unix().ok());
    let name_of = |i: u32| {
        show_diag_name(
            table
                .and_then(|t| t.get(&i))
                .and_then(|d| d.name.as_deref()),
        )
    };
    format!(
        "unix socket {ino} {} connected to socket {peer} {} outside the dump",
        name_of(ino),
        name_of(peer)
    )
}

/// Refuses, before the freeze, unix socket `fd` connected to `peer` outside the dump
/// when the options allow its kind but it cannot be saved ([`external_refusal`]).
pub(in crate::files) fn check_external(
    fd: &OpenFd<'_>,
    peer: u32,
    ext: &ExternalUnix,
) -> Result<(), FileError> {
    let ns = sys::ioctl_get_fd(fd.raw(), SIOCGSKNS).ok();
    let mut net = NetDiag::open(ns.as_ref().map(|n| n.as_fd()))
        .map_err(fd.io("open a sock_diag socket in the socket's network namespace"))?;
    let table = net
        .unix()
        .map_err(fd.io("read the unix socket table (sock_diag)"))?;
    let ino = fd.meta.ino() as u32;
    let (Some(d), p) = (table.get(&ino), table.get(&peer)) else {
        return Ok(());
    };
    let peer_name = p.and_then(|p| p.name.as_deref());
    match external_refusal(ino, d.kind, d.rqlen, peer, peer_name, ext) {
        Some(why) => Err(fd.unsupported(format!(
            "{} ({}): {why}",
            Kind::UnixPeerOutside,
            describe_outside(fd, peer)
        ))),
        None => Ok(()),
    }
}
