//! The messages queued on a unix socket, both ways, with the descriptors they carry
//! (`SCM_RIGHTS`).
//!
//! Dump: the queue is read with `MSG_PEEK`, walking it with `SO_PEEK_OFF`, so the task
//! finds every message (and every descriptor) where it was. Peeking at a message that
//! carries descriptors installs copies of them in our own descriptor table: those
//! copies are what the dump records, each as a file of its own (a `files.img` id, as
//! any open file), even when no task holds it; the packet's `scm` entry lists their
//! ids, as CRIU records them.
//!
//! On a stream socket, a peek that reaches a message with descriptors returns them
//! with every byte it read, and with the descriptors of the next such message even
//! when it read none of it: the kernel keeps no boundary a peek could find between
//! the writes before it and that message. So the bytes written before a message with
//! descriptors are recorded in one packet with it, as CRIU records them, and a reader
//! of the restored queue gets the descriptors with the first of those bytes rather
//! than with the message's own. (A peek that fills the buffer with descriptors is done
//! again with a larger one, so no packet ends before the message that carries them.)
//!
//! Restore: each packet is sent again from the socket's peer, in order, with the
//! descriptors of the files its `scm` entry names attached (opened first, as any file
//! of the dump, and kept by the restorer like every other).

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use criu_images::pb;

use super::super::anon;
use super::super::dump::{FileError, OpenFd};
use super::super::restore::{bad, kind_name, EpollItem, FileOpener, FileRef, PassedEpoll, Result};
use super::super::socket::{opt_int, so};
use super::name::NameLookup;
use crate::sys::{self, Pid};

/// Largest buffer used to peek at one message.
const MAX_PEEK: usize = 64 << 20;

/// One queued message as the dump read it: its entry (with an `scm` entry whose file
/// ids are still 0 when it carries descriptors), its bytes, and our copies of the
/// descriptors it carries, in order.
pub(in super::super) struct Queued {
    pub entry: pb::SkPacketEntry,
    pub data: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// A descriptor a queued message carries, whose file is to be dumped.
pub(in super::super) struct PassedFd {
    /// Where its file id goes: the packet (its index among the dump's queued packets)
    /// and its place among the packet's descriptors.
    pub packet: usize,
    pub slot: usize,
    /// Our copy of it.
    pub file: OwnedFd,
    /// The socket whose queue holds it, and the task's descriptor that socket was
    /// reached by (for messages).
    pub socket_ino: u32,
    pub pid: Pid,
    pub fd: i32,
}

/// Reads the socket's receive queue without consuming it: one packet per message (or
/// stream chunk), for the socket with file id `id`; `kind` is its type.
pub(in super::super) fn peek_queue(
    fd: &OpenFd<'_>,
    id: u32,
    kind: u8,
) -> Result<Vec<Queued>, FileError> {
    let s = fd.raw();
    let orig = opt_int(s, libc::SOL_SOCKET, so::PEEK_OFF).map_err(fd.io("read SO_PEEK_OFF"))?;
    sys::setsockopt_int(s, libc::SOL_SOCKET, so::PEEK_OFF, 0).map_err(fd.io("set SO_PEEK_OFF"))?;
    let result = peek_all(fd, id, kind != libc::SOCK_STREAM as u8);
    // Put the task's peek offset back whatever happened.
    let restored = sys::setsockopt_int(s, libc::SOL_SOCKET, so::PEEK_OFF, orig)
        .map_err(fd.io("restore SO_PEEK_OFF"));
    let packets = result?;
    restored?;
    Ok(packets)
}

fn set_peek_off(fd: &OpenFd<'_>, offset: usize) -> Result<(), FileError> {
    sys::setsockopt_int(fd.raw(), libc::SOL_SOCKET, so::PEEK_OFF, offset as i32)
        .map_err(fd.io("set SO_PEEK_OFF"))
}

fn peek_all(fd: &OpenFd<'_>, id: u32, datagrams: bool) -> Result<Vec<Queued>, FileError> {
    let s = fd.raw();
    let ino = fd.meta.ino() as u32;
    let sndbuf = opt_int(s, libc::SOL_SOCKET, so::SNDBUF)
        .map_err(fd.io("read SO_SNDBUF"))?
        .max(0) as usize;
    let rcvbuf = opt_int(s, libc::SOL_SOCKET, so::RCVBUF)
        .map_err(fd.io("read SO_RCVBUF"))?
        .max(0) as usize;
    let mut buf = vec![0u8; sndbuf.max(rcvbuf).clamp(64 << 10, MAX_PEEK)];
    let mut offset = 0usize;
    let mut out = Vec::new();
    let too_big = |len: usize| {
        fd.unsupported(format!(
            "unix socket {ino} with a {len}-byte message queued"
        ))
    };
    while let Some(p) =
        sys::recv_peek(s, &mut buf, datagrams).map_err(fd.io("peek at the socket's queue"))?
    {
        if p.control_truncated {
            return Err(fd.unsupported(format!(
                "unix socket {ino} with a message whose control data (SCM_RIGHTS...) does \
                 not fit in {} descriptors",
                sys::SCM_MAX_FD
            )));
        }
        // A datagram larger than the buffer, or (stream) a message with descriptors
        // that may go on past it: peek at it again, whole.
        let cut = if datagrams {
            p.full_len > p.len
        } else {
            !p.fds.is_empty() && p.len == buf.len()
        };
        if cut {
            let want = if datagrams { p.full_len } else { buf.len() * 2 };
            if want > MAX_PEEK {
                return Err(too_big(want));
            }
            buf.resize(want, 0);
            set_peek_off(fd, offset)?;
            continue;
        }
        if p.len == 0 {
            break;
        }
        let (len, fds) = (p.len, p.fds);
        let scm = if fds.is_empty() {
            Vec::new()
        } else {
            vec![pb::ScmEntry {
                r#type: libc::SCM_RIGHTS as u32,
                rights: vec![0; fds.len()],
            }]
        };
        out.push(Queued {
            entry: pb::SkPacketEntry {
                id_for: id,
                length: len as u32,
                scm,
            },
            data: buf[..len].to_vec(),
            fds,
        });
        offset += len;
        if offset > i32::MAX as usize {
            return Err(fd.unsupported(format!("unix socket {ino} with more than 2 GiB queued")));
        }
    }
    Ok(out)
}

/// Our copies of every descriptor queued on unix socket `fd` of a task that is still
/// running, when one look can tell them all; `None` when it cannot (the frozen stage
/// reads the whole queue). Nothing of the socket changes: the look is one plain
/// `MSG_PEEK` at the head of the queue, without `SO_PEEK_OFF`, which the task's own
/// peeks use (a task with a peek offset set is not looked at). The kernel counts the
/// descriptors queued (`scm_fds` in fdinfo); the look tells them all when the head
/// message carries every one of them, as it does when one message carries
/// descriptors.
pub(in super::super) fn head_passed_files(
    fd: &OpenFd<'_>,
) -> Result<Option<Vec<OwnedFd>>, FileError> {
    let s = fd.raw();
    let Ok(domain) = opt_int(s, libc::SOL_SOCKET, so::DOMAIN) else {
        return Ok(Some(Vec::new()));
    };
    let listening = opt_int(s, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap_or(0) != 0;
    if domain != libc::AF_UNIX || listening {
        return Ok(Some(Vec::new()));
    }
    let queued: Option<usize> = fd
        .fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("scm_fds:"))
        .and_then(|n| n.trim().parse().ok());
    match queued {
        Some(0) => return Ok(Some(Vec::new())),
        None => return Ok(None),
        Some(_) => {}
    }
    let peek_off = opt_int(s, libc::SOL_SOCKET, so::PEEK_OFF).map_err(fd.io("read SO_PEEK_OFF"))?;
    if peek_off >= 0 {
        return Ok(None);
    }
    let ty = opt_int(s, libc::SOL_SOCKET, so::TYPE).map_err(fd.io("read the socket's type"))?;
    let datagrams = ty != libc::SOCK_STREAM;
    let mut buf = vec![0u8; 64 << 10];
    let Some(p) =
        sys::recv_peek(s, &mut buf, datagrams).map_err(fd.io("peek at the socket's queue"))?
    else {
        return Ok(None);
    };
    let whole = !p.control_truncated && (datagrams || p.len < buf.len());
    Ok((whole && Some(p.fds.len()) == queued).then_some(p.fds))
}

// --- restore ---------------------------------------------------------------------

impl FileOpener {
    /// Opens every file the packets queued for socket `id` carry (`SCM_RIGHTS`), so
    /// that [`FileOpener::send_queue`] finds them. The socket itself must be made
    /// already: a queue may carry it, or a socket whose queue carries it.
    pub(in super::super) fn open_passed(&mut self, id: u32) -> Result<()> {
        for passed in self.passed_ids(id) {
            if passed == id || self.given.contains_key(&passed) {
                continue;
            }
            // A unix socket made but not finished (the peer of one finished earlier)
            // is finished now: no task may ever ask for it.
            self.open(passed, &[])?;
        }
        Ok(())
    }

    /// The ids of the files the packets queued for socket `id` carry.
    fn passed_ids(&self, id: u32) -> Vec<u32> {
        self.unix
            .queues
            .get(&id)
            .into_iter()
            .flatten()
            .flat_map(|(p, _)| p.scm.iter().flat_map(|s| s.rights.iter().copied()))
            .collect()
    }

    /// Judges, before any task exists, every file the queue of socket `at` carries,
    /// and the files their own queues carry (task `pid` holds the socket).
    pub(in super::super) fn check_passed(
        &self,
        pid: Pid,
        at: &FileRef,
        numbers: &HashSet<u32>,
    ) -> Result<()> {
        let mut seen = HashSet::from([at.id]);
        // (file id, whether the queue of `at` itself carries it)
        let mut todo: Vec<(u32, bool)> = self
            .passed_ids(at.id)
            .into_iter()
            .map(|id| (id, true))
            .collect();
        while let Some((id, direct)) = todo.pop() {
            if !seen.insert(id) {
                continue;
            }
            let file = self.files.get(&id).ok_or_else(|| {
                bad(
                    "sk-queues.img",
                    format!("names file {id}, passed to {at}, which files.img lacks"),
                )
            })?;
            let passed = FileRef {
                id,
                kind: kind_name(file.r#type),
                fd: None,
            };
            use pb::FdTypes as T;
            match T::try_from(file.r#type).unwrap_or(T::Und) {
                // Its targets are registered by task `pid`, with its own numbers.
                T::Eventpoll if direct => {
                    self.check_kind(pid, &passed, file)?;
                    let ep = self.member(id, |f| f.epfd.as_ref())?;
                    anon::check_epoll(pid, &passed, ep, numbers)?;
                }
                // Their state belongs to the task holding them (the epoll's targets
                // are its descriptor numbers; a terminal's session), which no task is.
                T::Eventpoll | T::Tty => {
                    return Err(passed.unsupported(
                        pid,
                        format!(
                            "{} file {id} passed in the queue of {at} (SCM_RIGHTS): only                              a task holding it could set it up",
                            passed.kind
                        ),
                    ))
                }
                T::Unixsk => {
                    self.check_kind(pid, &passed, file)?;
                    let ue = self.member(id, |f| f.usk.as_ref())?;
                    self.check_unix_socket(pid, &passed, ue)?;
                }
                _ => self.check_one(pid, &passed, file, &HashSet::new())?,
            }
            todo.extend(self.passed_ids(id).into_iter().map(|id| (id, false)));
        }
        Ok(())
    }

    /// The epoll instances the queues of the unix sockets task `task_fds` holds carry
    /// (directly), each with its interest list, for that task to register; each is
    /// returned once, and none whose list a task holding it registered already
    /// ([`FileOpener::epoll_items`]).
    pub fn passed_epolls(&mut self, task_fds: &[pb::FdinfoEntry]) -> Vec<PassedEpoll> {
        let mut out = Vec::new();
        for fdi in task_fds {
            if fdi.r#type != pb::FdTypes::Unixsk as i32 {
                continue;
            }
            for id in self.passed_ids(fdi.id) {
                if self.epolls_listed.contains(&id) {
                    continue;
                }
                let Some(ep) = self.files.get(&id).and_then(|f| f.epfd.as_ref()) else {
                    continue;
                };
                let items = ep
                    .tfd
                    .iter()
                    .map(|t| EpollItem {
                        epfd: -1,
                        tfd: t.tfd as i32,
                        events: t.events,
                        data: t.data,
                    })
                    .collect();
                self.epolls_listed.insert(id);
                out.push(PassedEpoll { id, items });
            }
        }
        out
    }

    /// A file already made (finished, or a unix socket not finished yet).
    pub(in super::super) fn made(&self, id: u32) -> Option<BorrowedFd<'_>> {
        self.given
            .get(&id)
            .or_else(|| self.unix.pending.get(&id))
            .map(|fd| fd.as_fd())
    }

    /// Puts the saved queue of socket `at` back into its receive queue: one send per
    /// saved packet from `sender`, its peer (to the address `to` when given, relative
    /// to its directory), with the files it carries ([`FileOpener::open_passed`] first).
    pub(in super::super) fn send_queue(
        &self,
        at: &FileRef,
        sender: BorrowedFd<'_>,
        to: Option<(&[u8], &NameLookup)>,
    ) -> Result<()> {
        let Some(packets) = self.unix.queues.get(&at.id) else {
            return Ok(());
        };
        let mut attached: Vec<Vec<BorrowedFd<'_>>> = Vec::with_capacity(packets.len());
        for (p, _) in packets {
            let mut fds = Vec::new();
            for scm in &p.scm {
                if scm.r#type != libc::SCM_RIGHTS as u32 {
                    return Err(bad(
                        "sk-queues.img",
                        format!("control message of type {} queued", scm.r#type),
                    ));
                }
                for &id in &scm.rights {
                    fds.push(self.made(id).ok_or_else(|| {
                        bad(
                            "sk-queues.img",
                            format!("file {id} passed to socket {} was not made", at.id),
                        )
                    })?);
                }
            }
            if fds.len() > sys::SCM_MAX_FD {
                return Err(bad(
                    "sk-queues.img",
                    format!("a packet carries {} descriptors", fds.len()),
                ));
            }
            attached.push(fds);
        }
        let datagrams = sys::getsockopt_int(sender, libc::SOL_SOCKET, libc::SO_TYPE)
            .map_err(at.io("read the socket's type"))?
            != libc::SOCK_STREAM;
        // Room in the sender for the whole queue (each packet costs its bytes plus
        // the kernel's bookkeeping), put back as it was afterwards.
        let total: usize = packets.iter().map(|(_, d)| d.len() + 1024).sum();
        let old_sndbuf = sys::getsockopt_int(sender, libc::SOL_SOCKET, libc::SO_SNDBUF)
            .map_err(at.io("read SO_SNDBUF"))?;
        let old_lock = sys::getsockopt_int(sender, libc::SOL_SOCKET, so::BUF_LOCK).ok();
        let want = (total.saturating_mul(2)).min(i32::MAX as usize / 2) as i32;
        if want > old_sndbuf {
            sys::setsockopt_int(sender, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want)
                .map_err(at.io("grow the sender's buffer to refill the queue"))?;
        }
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        let send_all = || -> io::Result<()> {
            for (i, ((_, data), fds)) in packets.iter().zip(&attached).enumerate() {
                let mut done = 0;
                loop {
                    // The descriptors go with the first bytes only.
                    let with = if done == 0 { &fds[..] } else { &[] };
                    let addr = to.map(|(addr, _)| addr);
                    let n = sys::send_with_fds(sender, &data[done..], with, flags, addr)?;
                    done += n;
                    if done == data.len() {
                        break;
                    }
                    if datagrams || n == 0 {
                        return Err(io::Error::other(format!(
                            "packet {i} went out short: {done} of {} bytes",
                            data.len()
                        )));
                    }
                }
            }
            Ok(())
        };
        let sent = match to {
            Some((_, lookup)) => lookup.run(send_all),
            None => send_all(),
        };
        if want > old_sndbuf {
            sys::setsockopt_int(
                sender,
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                old_sndbuf / 2,
            )
            .map_err(at.io("shrink the sender's buffer back"))?;
            if let Some(lock) = old_lock {
                sys::setsockopt_int(sender, libc::SOL_SOCKET, so::BUF_LOCK, lock)
                    .map_err(at.io("restore the sender's so::BUF_LOCK"))?;
            }
        }
        sent.map_err(at.io(format!("refill the queue ({} packets)", packets.len())))
    }
}
