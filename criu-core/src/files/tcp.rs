//! Connected TCP sockets, both ways, through the kernel's TCP repair mode
//! (`TCP_REPAIR`), with `--tcp-established`.
//!
//! A socket in repair mode sends nothing and lets its state be read and written: the
//! sequence numbers of both queues, their bytes (the send queue's sent-but-unacked part
//! too), the options the handshake settled (MSS, window scale, SACK, timestamps) and
//! the window. A repaired socket also closes silently (no FIN, no reset), which is what
//! lets a dump kill its tree without the peer noticing.
//!
//! Dump ([`DumpState`]): the connection is locked first ([`crate::netlock`]: its
//! packets dropped both ways), then put in repair mode and read: state, queue lengths
//! (`SIOCINQ`, `SIOCOUTQ`, `SIOCOUTQNSD` for the part never sent), the queues' sequence
//! numbers (`TCP_QUEUE_SEQ` of each queue picked with `TCP_REPAIR_QUEUE`) and bytes
//! (peeked, so nothing moves), `TCP_MAXSEG` (the MSS clamp, in repair mode),
//! `TCP_TIMESTAMP`, `TCP_REPAIR_WINDOW`. That is `tcp-stream-<inode>.img`: one
//! `tcp_stream_entry`, then the receive queue's bytes, then the send queue's, as CRIU
//! writes it. When the dump fails or leaves the tree running, the guard takes every
//! socket out of repair mode again (with its SO_REUSEADDR back: repair mode changes it)
//! and lifts the lock; when it kills the tree, sockets and lock stay as they are until
//! the restore ([`DumpState::commit`]). A dumper killed outright runs no guard: a
//! watchdog process ([`sys::TcpWatchdog`]), told of each socket and of how to lift the
//! lock before either changes, does the same when the dumper dies before it is done.
//!
//! Restore ([`FileOpener::open_tcp`]): a new socket in repair mode is bound to the same
//! address (repair mode lets it share the port with a listener or with TIME_WAIT
//! remains), given the queues' sequence numbers, connected (in repair mode that is
//! instant, without a packet), given the options, timestamp, queues and window; the
//! part of the send queue that was never sent is written with repair mode off, as a
//! program writes it. The sockets stay in repair mode until the whole tree is rebuilt;
//! then [`RepairedSockets::release`] lifts the lock and takes them out of repair mode
//! (which sends a window probe: the peer answers, and both sides resume), just before
//! the tasks run. A restore that fails closes them silently, as they are.
//!
//! With `--tcp-close` a connection is recorded without repair (no lock, no queues) and
//! comes back as a closed socket, as CRIU does.
//!
//! States, as CRIU takes them: ESTABLISHED (with a shut-down read side too); SYN_SENT
//! (its SYN is sent again, as `connect` sends it); and the half-closed ones. A FIN
//! takes a sequence number but no byte of a queue: the dump leaves it out of the queue
//! lengths, and the restore rebuilds the queues without it, then replays it. Ours
//! (FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK) by `shutdown(SHUT_WR)`, queued as already
//! sent when it was acknowledged (FIN_WAIT2); the peer's (CLOSE_WAIT, LAST_ACK, CLOSING)
//! by a FIN segment the restore sends the socket in the peer's name, through a raw
//! socket, marked so the lock lets it through; and the peer's acknowledgement of ours
//! (FIN_WAIT2) by such an ACK.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use criu_images::{pb, ImageReader};

use super::dump::{writer, FileError, OpenFd};
use super::inet::{inet_addr, set_ip_opts, set_tcp_opts, show_inet};
use super::restore::{finish, FileOpener, FileRef, Result};
use super::socket::{opt_int, set_sk_opts, shut, so, tcp_state_name, SIOCGSKNS};
use crate::netlock::{Connection, LockError, LockMethod, NetworkLock, REPAIR_MARK};
use crate::sys;

mod namespace_lock;

// The kernel's repair interface (linux/tcp.h).
const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
/// The smallest MSS the kernel takes (`TCP_MIN_MSS`).
const TCP_MIN_MSS: u32 = 88;
/// The largest TCP_MAXSEG the kernel takes (`MAX_TCP_WINDOW`).
const MAX_TCP_MAXSEG: u32 = 32_767;

const REPAIR_ON: i32 = 1;
const REPAIR_OFF: i32 = 0;
/// Off without the window probe that `REPAIR_OFF` sends (Linux 4.15).
const REPAIR_OFF_NO_WP: i32 = -1;

const NO_QUEUE: i32 = 0;
const RECV_QUEUE: i32 = 1;
const SEND_QUEUE: i32 = 2;

// TCP option kinds for TCP_REPAIR_OPTIONS.
const TCPOPT_MAXSEG: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;

// `tcpi_options` bits, as `tcp_stream_entry.opt_mask` keeps them.
const TCPI_OPT_TIMESTAMPS: u32 = 1;
const TCPI_OPT_SACK: u32 = 2;
const TCPI_OPT_WSCALE: u32 = 4;

// Queue lengths: bytes not yet read; bytes not yet acknowledged; bytes never sent.
const SIOCINQ: libc::c_ulong = 0x541B;
const SIOCOUTQ: libc::c_ulong = 0x5411;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;

// TCP states this code rebuilds (as sock_diag numbers them).
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;
const TCP_FIN_WAIT1: u8 = 4;
const TCP_FIN_WAIT2: u8 = 5;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_CLOSING: u8 = 11;

/// Whether a connection in `state` can be taken in repair mode and rebuilt; `Err`
/// says why not.
pub(super) fn repairable(state: u8) -> std::result::Result<(), String> {
    match state {
        TCP_ESTABLISHED | TCP_SYN_SENT | TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSE_WAIT
        | TCP_LAST_ACK | TCP_CLOSING => Ok(()),
        _ => Err(format!(
            "its state {} (connections established, connecting or half closed are \
             rebuilt)",
            tcp_state_name(state)
        )),
    }
}

/// Our FIN is in the send queue (sent, maybe acknowledged).
fn our_fin(state: u8) -> bool {
    matches!(
        state,
        TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSING | TCP_LAST_ACK
    )
}

/// The peer's FIN was received.
fn peer_fin(state: u8) -> bool {
    matches!(state, TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING)
}

/// `tcp-stream-<inode>.img` (CRIU names it by the inode in hex).
fn stream_image(ino: u32) -> String {
    format!("tcp-stream-{ino:x}.img")
}

/// The connection of a socket from image words.
pub(super) fn connection(
    family: i32,
    src: &[u32],
    sport: u32,
    dst: &[u32],
    dport: u32,
) -> Connection {
    let ip = |words: &[u32]| -> IpAddr {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        if family == libc::AF_INET6 {
            let mut a = [0u8; 16];
            let n = bytes.len().min(16);
            a[..n].copy_from_slice(&bytes[..n]);
            IpAddr::V6(Ipv6Addr::from(a))
        } else {
            let mut a = [0u8; 4];
            let n = bytes.len().min(4);
            a[..n].copy_from_slice(&bytes[..n]);
            IpAddr::V4(Ipv4Addr::from(a))
        }
    };
    Connection {
        local: ip(src),
        local_port: sport as u16,
        remote: ip(dst),
        remote_port: dport as u16,
    }
}

fn set_int(s: BorrowedFd<'_>, name: i32, value: i32) -> io::Result<()> {
    sys::setsockopt_int(s, libc::IPPROTO_TCP, name, value)
}

/// `state`, `options`, `snd_wscale` and `rcv_wscale` of TCP_INFO.
fn tcp_info(s: BorrowedFd<'_>) -> io::Result<(u8, u32, u32, u32)> {
    let mut info = [0u8; 104];
    sys::getsockopt_bytes(s, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)?;
    let wscale = info[6];
    Ok((
        info[0],
        u32::from(info[5]),
        u32::from(wscale & 0xf),
        u32::from(wscale >> 4),
    ))
}

/// A socket we put in repair mode, with what to give back when it leaves it.
struct Repaired {
    sock: OwnedFd,
    /// SO_REUSEADDR as the program had it: leaving repair mode clears it.
    reuseaddr: bool,
    conn: Connection,
}

impl Repaired {
    /// Takes the socket out of repair mode (sending a window probe, so the peer answers
    /// and both ends resume at once) and gives SO_REUSEADDR back.
    fn release(&self) -> io::Result<()> {
        let s = self.sock.as_fd();
        set_int(s, TCP_REPAIR, REPAIR_OFF)?;
        sys::setsockopt_int(s, libc::SOL_SOCKET, so::REUSEADDR, self.reuseaddr.into())
    }
}

// --- dump ------------------------------------------------------------------------

/// What a dump was asked for connected TCP sockets.
#[derive(Debug, Clone, Default)]
pub struct TcpDumpOptions {
    /// `--tcp-close`: record connections without repair; they come back closed.
    pub close: bool,
    /// `--network-lock`.
    pub lock: LockMethod,
    /// The dump's run id (`inventory.img`'s `dump_criu_run_id`), which names the lock.
    pub run_id: String,
}

/// One connection read in repair mode, for its image.
struct Stream {
    ino: u32,
    entry: pb::TcpStreamEntry,
    inq: Vec<u8>,
    outq: Vec<u8>,
}

/// The connected TCP sockets of a dump: the network lock, the sockets in repair mode
/// (the guard: see the module doc) and what was read of them.
#[derive(Default)]
pub(super) struct DumpState {
    opts: TcpDumpOptions,
    lock: Option<NetworkLock>,
    /// The network namespace a whole-namespace lock lives in (kept open: the lock
    /// names it by `/proc/<our pid>/fd/<fd>`).
    lock_ns: Option<OwnedFd>,
    repaired: Vec<Repaired>,
    streams: Vec<Stream>,
    committed: bool,
    /// Undoes the lock and repair mode if the dumper dies outright (SIGKILL) before it
    /// finishes: made with the first connection.
    watchdog: Option<sys::TcpWatchdog>,
}

impl DumpState {
    pub(super) fn set_options(&mut self, opts: TcpDumpOptions) {
        self.opts = opts;
    }

    /// Whether connections are recorded without repair (`--tcp-close`).
    pub(super) fn closing(&self) -> bool {
        self.opts.close
    }

    /// Locks the connection of socket `fd` (`conn` as sock_diag showed it), puts the
    /// socket in repair mode and reads it; returns its TCP state (read in repair mode,
    /// where it no longer moves).
    pub(super) fn dump(&mut self, fd: &OpenFd<'_>, conn: Connection) -> Result<u8, FileError> {
        let lock_err = |e: LockError| {
            fd.unsupported(format!(
                "TCP connection {conn}: the network could not be locked: {e}"
            ))
        };
        self.start_watchdog(fd)?;
        self.lock_for(fd)?;
        let watchdog = self.watchdog.as_ref().expect("started");
        if let Some(lock) = self.lock.as_mut() {
            // The watchdog knows how to lift it before it is set.
            for argv in lock.undo_commands(conn) {
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                watchdog
                    .on_death_run(&argv)
                    .map_err(fd.io("tell the TCP watchdog how to lift the lock"))?;
            }
            lock.lock(conn).map_err(lock_err)?;
        }
        let sock = fd
            .file
            .try_clone()
            .map(OwnedFd::from)
            .map_err(fd.io("duplicate the socket"))?;
        let s = sock.as_fd();
        let reuseaddr =
            opt_int(s, libc::SOL_SOCKET, so::REUSEADDR).map_err(fd.io("read SO_REUSEADDR"))? != 0;
        watchdog
            .watch_socket(s, reuseaddr)
            .map_err(fd.io("hand the socket to the TCP watchdog"))?;
        set_int(s, TCP_REPAIR, REPAIR_ON).map_err(fd.io("turn TCP repair mode on"))?;
        self.repaired.push(Repaired {
            sock,
            reuseaddr,
            conn,
        });
        let s = self
            .repaired
            .last()
            .map(|r| r.sock.as_fd())
            .expect("just pushed");
        let stream = read_stream(fd, s, conn)?;
        let state = tcp_info(s).map_err(fd.io("read TCP_INFO"))?.0;
        self.streams.push(stream);
        Ok(state)
    }

    /// Forks the watchdog, on the first connection.
    fn start_watchdog(&mut self, fd: &OpenFd<'_>) -> Result<(), FileError> {
        if self.watchdog.is_none() {
            let me = sys::pidfd_open(sys::Pid(std::process::id() as i32))
                .map_err(fd.io("open a pidfd of the dumper"))?;
            let dog =
                sys::TcpWatchdog::spawn(me.as_fd()).map_err(fd.io("fork the TCP watchdog"))?;
            self.watchdog = Some(dog);
        }
        Ok(())
    }

    /// The lock, made on the first connection: one per connection in our network
    /// namespace, or the whole namespace of the tree when the socket lives in one of
    /// its own.
    fn lock_for(&mut self, fd: &OpenFd<'_>) -> Result<(), FileError> {
        if self.lock.is_some() {
            return Ok(());
        }
        let method = self.opts.lock;
        let run_id = self.opts.run_id.clone();
        let ours = std::fs::metadata("/proc/thread-self/ns/net")
            .map_err(fd.io("stat our network namespace"))?
            .ino();
        // A kernel without SIOCGSKNS: the socket is taken for one of ours.
        let theirs = sys::ioctl_get_fd(fd.raw(), SIOCGSKNS).ok();
        let foreign = match &theirs {
            Some(ns) => {
                std::fs::File::from(ns.try_clone().map_err(fd.io("duplicate a namespace fd"))?)
                    .metadata()
                    .map_err(fd.io("stat the socket's network namespace"))?
                    .ino()
                    != ours
            }
            None => false,
        };
        if foreign {
            let ns = theirs.expect("a foreign namespace was found");
            // The watchdog knows how to lift it before it is made, by a path that
            // outlives us: the namespace of the task that holds the socket.
            let outliving = PathBuf::from(format!("/proc/{}/ns/net", fd.pid));
            if let Some(dog) = &self.watchdog {
                for argv in NetworkLock::namespace_undo_commands(method, &run_id, &outliving) {
                    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                    dog.on_death_run(&argv)
                        .map_err(fd.io("tell the TCP watchdog how to lift the lock"))?;
                }
            }
            let path = PathBuf::from(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                ns.as_raw_fd()
            ));
            let lock = NetworkLock::namespace(method, &run_id, path).map_err(|e| {
                fd.unsupported(format!(
                    "TCP connections in the tree's network namespace: it could not be \
                     locked: {e}"
                ))
            })?;
            self.lock_ns = Some(ns);
            self.lock = Some(lock);
        } else {
            self.lock = Some(NetworkLock::connections(method, &run_id));
        }
        Ok(())
    }

    /// The dump is complete and kills its tree: its sockets stay in repair mode (they
    /// close silently with it) and the network stays locked for the restore.
    pub(super) fn commit(&mut self) {
        self.committed = true;
        if let Some(lock) = self.lock.as_mut() {
            lock.keep();
        }
        // From here the tree dies with the dumper (it is committed to being killed):
        // the lock stays for the restore.
        if let Some(dog) = self.watchdog.take() {
            dog.finish();
        }
    }

    /// Writes each connection's `tcp-stream-<inode>.img` into `dir`.
    pub(super) fn write(&self, dir: &Path) -> Result<(), FileError> {
        for s in &self.streams {
            let mut w = writer(dir, "TCP_STREAM", format!("{:x}", s.ino))?;
            w.write_entry(&s.entry)?;
            w.write_raw(&s.inq)?;
            w.write_raw(&s.outq)?;
            w.finish()?;
        }
        Ok(())
    }
}

impl Drop for DumpState {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // The tree runs on: every socket out of repair mode, then the lock lifted (a
        // window probe sent while still locked is dropped; the peer's next segment
        // gets through once it is lifted).
        for r in &self.repaired {
            if let Err(e) = r.release() {
                tracing::error!(conn = %r.conn, "taking the socket out of TCP repair mode: {e}");
            }
        }
        if let Some(mut lock) = self.lock.take() {
            if let Err(e) = lock.unlock() {
                tracing::error!("lifting the network lock: {e}");
            }
        }
        if let Some(dog) = self.watchdog.take() {
            dog.finish();
        }
    }
}

/// Reads a socket in repair mode: its `tcp_stream_entry` and both queues.
fn read_stream(fd: &OpenFd<'_>, s: BorrowedFd<'_>, conn: Connection) -> Result<Stream, FileError> {
    let (state, options, snd_wscale, rcv_wscale) = tcp_info(s).map_err(fd.io("read TCP_INFO"))?;
    repairable(state).map_err(|why| fd.unsupported(format!("TCP connection {conn}: {why}")))?;
    let ioctl = |req, what| {
        sys::ioctl_get_int(s, req)
            .map(|v| v as u32)
            .map_err(fd.io(what))
    };
    let mut outq_len = ioctl(SIOCOUTQ, "read the send queue's length (SIOCOUTQ)")?;
    let mut unsq_len = ioctl(SIOCOUTQNSD, "read the unsent length (SIOCOUTQNSD)")?;
    if our_fin(state) {
        // Our FIN counts in the lengths but holds no byte. Sent, it is in the first
        // (all data went before it, so nothing is unsent); not yet, in both.
        outq_len = outq_len.saturating_sub(1);
        unsq_len = unsq_len.saturating_sub(1);
    }
    // (The receive queue's length leaves the peer's FIN out already.)
    let inq_len = ioctl(SIOCINQ, "read the receive queue's length (SIOCINQ)")?;
    let mss_clamp = opt_int(s, libc::IPPROTO_TCP, libc::TCP_MAXSEG)
        .map_err(fd.io("read the MSS (TCP_MAXSEG)"))? as u32;
    let timestamp = if options & TCPI_OPT_TIMESTAMPS != 0 {
        Some(
            opt_int(s, libc::IPPROTO_TCP, TCP_TIMESTAMP).map_err(fd.io("read TCP_TIMESTAMP"))?
                as u32,
        )
    } else {
        None
    };
    let mut window = [0u8; 20];
    let window = match sys::getsockopt_bytes(s, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &mut window) {
        Ok(_) => {
            let word = |i: usize| u32::from_ne_bytes(window[i * 4..i * 4 + 4].try_into().unwrap());
            Some(RepairWindow {
                snd_wl1: word(0),
                snd_wnd: word(1),
                max_window: word(2),
                rcv_wnd: word(3),
                rcv_wup: word(4),
            })
        }
        // Before Linux 4.8: the window is learnt again from the peer.
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => None,
        Err(e) => return Err(fd.io("read TCP_REPAIR_WINDOW")(e)),
    };
    let (inq_seq, inq) = peek_queue(fd, s, RECV_QUEUE, inq_len)?;
    let (outq_seq, outq) = peek_queue(fd, s, SEND_QUEUE, outq_len)?;
    // Recorded as the kernel takes it back (CRIU restores our images too). The peer's
    // FIN is in `inq_seq` already and in neither window edge.
    let window = window.map(|w| w.repairable(inq_seq.wrapping_sub(peer_fin(state).into())));
    set_int(s, TCP_REPAIR_QUEUE, NO_QUEUE).map_err(fd.io("select no repair queue"))?;
    let wscale = options & TCPI_OPT_WSCALE != 0;
    Ok(Stream {
        ino: fd.meta.ino() as u32,
        entry: pb::TcpStreamEntry {
            inq_len,
            inq_seq,
            outq_len,
            outq_seq,
            opt_mask: options,
            snd_wscale: if wscale { snd_wscale } else { 0 },
            mss_clamp,
            rcv_wscale: wscale.then_some(rcv_wscale),
            timestamp,
            cork: None,
            nodelay: None,
            unsq_len: Some(unsq_len),
            snd_wl1: window.map(|w| w.snd_wl1),
            snd_wnd: window.map(|w| w.snd_wnd),
            max_window: window.map(|w| w.max_window),
            rcv_wnd: window.map(|w| w.rcv_wnd),
            rcv_wup: window.map(|w| w.rcv_wup),
        },
        inq,
        outq,
    })
}

/// The sequence number (`TCP_QUEUE_SEQ`: the next byte to arrive for the receive
/// queue, the next to be written for the send queue) and the `len` bytes of `queue`,
/// peeked: nothing leaves it.
fn peek_queue(
    fd: &OpenFd<'_>,
    s: BorrowedFd<'_>,
    queue: i32,
    len: u32,
) -> Result<(u32, Vec<u8>), FileError> {
    let name = if queue == RECV_QUEUE {
        "receive"
    } else {
        "send"
    };
    set_int(s, TCP_REPAIR_QUEUE, queue).map_err(fd.io("select a repair queue"))?;
    let seq = opt_int(s, libc::IPPROTO_TCP, TCP_QUEUE_SEQ)
        .map_err(fd.io("read a queue's sequence number (TCP_QUEUE_SEQ)"))? as u32;
    if len == 0 {
        return Ok((seq, Vec::new()));
    }
    // One byte more than the queue should hold: a longer queue is caught, not cut.
    let mut buf = vec![0u8; len as usize + 1];
    let n = sys::recv(s, &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        .map_err(fd.io("peek at a TCP queue"))?;
    if n != len as usize {
        return Err(fd.unsupported(format!(
            "TCP connection whose {name} queue holds {n} bytes where its length says {len}"
        )));
    }
    buf.truncate(n);
    Ok((seq, buf))
}

// --- restore ---------------------------------------------------------------------

/// What the restore was asked for connected TCP sockets, and the sockets it left in
/// repair mode.
#[derive(Default)]
pub(super) struct RestoreState {
    /// `--tcp-established`.
    pub(super) established: bool,
    /// `--tcp-close`: connections come back closed.
    pub(super) close: bool,
    repaired: Vec<Repaired>,
}

/// A connection as the images describe it, loaded.
struct LoadedStream {
    entry: pb::TcpStreamEntry,
    inq: Vec<u8>,
    outq: Vec<u8>,
}

fn load_stream(dir: &Path, at: &FileRef, ino: u32) -> Result<LoadedStream> {
    let path = dir.join(stream_image(ino));
    let mut r = ImageReader::open(&path)?;
    let entry: pb::TcpStreamEntry = r
        .next_entry()?
        .ok_or_else(|| at.changed(format!("{} holds no tcp_stream_entry", path.display())))?;
    let inq = r.read_extra(entry.inq_len.into(), "tcp receive queue")?;
    let outq = r.read_extra(entry.outq_len.into(), "tcp send queue")?;
    let unsent = entry.unsq_len.ok_or_else(|| {
        at.refused(format!(
            "{}: no unsent length (unsq_len), which images before CRIU 2.x lack",
            path.display()
        ))
    })?;
    if unsent > entry.outq_len {
        return Err(at.changed(format!(
            "{}: {unsent} unsent bytes in a send queue of {}",
            path.display(),
            entry.outq_len
        )));
    }
    let options = entry.opt_mask;
    if options & TCPI_OPT_WSCALE != 0 && entry.rcv_wscale.is_none() {
        return Err(at.changed(format!(
            "{}: window scaling without rcv_wscale",
            path.display()
        )));
    }
    if options & TCPI_OPT_TIMESTAMPS != 0 && entry.timestamp.is_none() {
        return Err(at.changed(format!(
            "{}: timestamps without a timestamp",
            path.display()
        )));
    }
    Ok(LoadedStream { entry, inq, outq })
}

/// The sockets a restore left in repair mode, until the tree is complete.
#[derive(Default)]
pub struct RepairedSockets {
    sockets: Vec<Repaired>,
}

impl RepairedSockets {
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The tree is rebuilt: takes every socket out of repair mode (the lock must be
    /// lifted first, so the window probes this sends go out).
    pub fn release(self) -> io::Result<()> {
        for r in &self.sockets {
            r.release().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("TCP connection {}: leaving repair mode: {e}", r.conn),
                )
            })?;
        }
        Ok(())
    }
}

impl FileOpener {
    /// `--tcp-established` / `--tcp-close` of the restore.
    pub fn set_tcp(&mut self, established: bool, close: bool) {
        self.tcp.established = established;
        self.tcp.close = close;
    }

    /// The connections of the images (the iptables lock names each), each once (both
    /// ends of a connection in the tree are two).
    pub fn tcp_connections(&self) -> Vec<Connection> {
        let mut out: Vec<Connection> = self
            .files
            .values()
            .filter_map(|f| f.isk.as_ref())
            .filter(|ie| is_connection(ie))
            .map(|ie| {
                connection(
                    ie.family as i32,
                    &ie.src_addr,
                    ie.src_port,
                    &ie.dst_addr,
                    ie.dst_port,
                )
            })
            .collect();
        out.sort_by_key(|c| c.to_string());
        out.dedup();
        out
    }

    /// Hands over the sockets left in repair mode (the restore takes them out of it
    /// once the tree is rebuilt).
    pub fn take_repaired(&mut self) -> RepairedSockets {
        RepairedSockets {
            sockets: std::mem::take(&mut self.tcp.repaired),
        }
    }

    /// Checks, before any task exists, a connection of the images: its stream image
    /// is there and whole, and its state one this code rebuilds.
    pub(super) fn check_tcp(&self, at: &FileRef, ie: &pb::InetSkEntry) -> Result<()> {
        if self.tcp.close || !self.tcp.established {
            // Closed, or refused by the kind table.
            return Ok(());
        }
        let family = ie.family as i32;
        let src = show_inet(family, &ie.src_addr, ie.src_port);
        let dst = show_inet(family, &ie.dst_addr, ie.dst_port);
        let state = u8::try_from(ie.state).unwrap_or(u8::MAX);
        repairable(state)
            .map_err(|why| at.refused(format!("TCP connection {src} -> {dst}: {why}")))?;
        if !self.dir.join(stream_image(ie.ino)).exists() {
            return Err(at.refused(format!(
                "TCP connection {src} -> {dst}: {} is missing (dumped with --tcp-close? \
                 then restore with --tcp-close too)",
                stream_image(ie.ino)
            )));
        }
        load_stream(&self.dir, at, ie.ino).map(drop)
    }

    /// A connected TCP socket: rebuilt in repair mode (left in it until the tree is
    /// complete), or with `--tcp-close` a closed socket.
    pub(super) fn open_tcp(&mut self, at: &FileRef, ie: &pb::InetSkEntry) -> Result<OwnedFd> {
        let family = ie.family as i32;
        let conn = connection(family, &ie.src_addr, ie.src_port, &ie.dst_addr, ie.dst_port);
        if !self.tcp.established && !self.tcp.close {
            return Err(at.refused(format!(
                "a TCP connection ({conn}) without --tcp-established or --tcp-close"
            )));
        }
        let fd = sys::socket(family, libc::SOCK_STREAM, libc::IPPROTO_TCP)
            .map_err(at.io("create a socket"))?;
        let s = fd.as_fd();
        if self.tcp.close {
            // As CRIU: a closed socket, as if the connection had ended. shutdown(2) of
            // both sides answers ENOTCONN, but the socket keeps them shut: reads see
            // end-of-file, writes EPIPE, poll POLLHUP.
            set_sk_opts(at, s, &ie.opts)?;
            match sys::shutdown(s, libc::SHUT_RDWR) {
                Err(e) if e.raw_os_error() != Some(libc::ENOTCONN) => {
                    return Err(at.io("shut the closed socket down")(e))
                }
                _ => {}
            }
            finish(at, s, ie.flags, &ie.fown)?;
            return Ok(fd);
        }
        let stream = load_stream(&self.dir, at, ie.ino)?;
        if family == libc::AF_INET6 {
            if let Some(v6only) = ie.v6only {
                sys::setsockopt_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v6only.into())
                    .map_err(at.io("set IPV6_V6ONLY"))?;
            }
        }
        set_int(s, TCP_REPAIR, REPAIR_ON).map_err(at.io("turn TCP repair mode on"))?;
        // From here a failure closes the socket as it is: in repair mode, silently.
        rebuild_connection(at, s, ie, &stream, conn)?;
        self.tcp.repaired.push(Repaired {
            sock: fd.try_clone().map_err(at.io("duplicate the socket"))?,
            reuseaddr: ie.opts.reuseaddr == Some(true),
            conn,
        });
        Ok(fd)
    }
}

/// Whether an image's inet socket is a TCP connection (CRIU's test: a TCP socket with a
/// peer port).
pub(super) fn is_connection(ie: &pb::InetSkEntry) -> bool {
    ie.proto == libc::IPPROTO_TCP as u32
        && ie.r#type == libc::SOCK_STREAM as u32
        && ie.dst_port != 0
        && ie.state != u32::from(super::socket::TCP_LISTEN)
        && ie.state != u32::from(super::socket::TCP_CLOSE)
}

/// Rebuilds the connection on socket `s`, in repair mode.
fn rebuild_connection(
    at: &FileRef,
    s: BorrowedFd<'_>,
    ie: &pb::InetSkEntry,
    stream: &LoadedStream,
    conn: Connection,
) -> Result<()> {
    let family = ie.family as i32;
    let e = &stream.entry;
    let io = |what: &str| at.io(format!("TCP connection {conn}: {what}"));
    let state = u8::try_from(ie.state).unwrap_or(u8::MAX);
    // The FINs take sequence numbers but no byte: the queues are rebuilt without them,
    // and they are replayed last.
    let inq_seq = e.inq_seq.wrapping_sub(peer_fin(state).into());
    let outq_seq = e.outq_seq.wrapping_sub(our_fin(state).into());
    let snd_una = outq_seq.wrapping_sub(e.outq_len);
    // The largest buffers before anything else, as CRIU does: room for the queues
    // whatever the buffers were (they are set as saved at the end), and `connect`
    // sizes the window clamp from the receive buffer. Connected with the default
    // buffer, a socket whose peer sends 64 KiB segments could clamp its window
    // below one segment and advertise a zero window for good (seen: both ends of a
    // loopback connection stalled after restore, 2 runs in 8).
    for (opt, what) in [
        (libc::SO_RCVBUFFORCE, "make room for the receive queue"),
        (libc::SO_SNDBUFFORCE, "make room for the send queue"),
    ] {
        sys::setsockopt_int(s, libc::SOL_SOCKET, opt, i32::MAX / 2).map_err(io(what))?;
    }
    // The address may not be local yet (a namespace whose addresses come later):
    // bind with IP_FREEBIND on, then put the saved value back.
    const IP_FREEBIND: i32 = 15;
    sys::setsockopt_int(s, libc::IPPROTO_IP, IP_FREEBIND, 1).map_err(io("set IP_FREEBIND"))?;
    sys::bind_raw(s, &inet_addr(family, &ie.src_addr, ie.src_port, 0))
        .map_err(io("bind to its address"))?;
    let freebind = ie.ip_opts.as_ref().and_then(|o| o.freebind) == Some(true);
    if !freebind {
        sys::setsockopt_int(s, libc::IPPROTO_IP, IP_FREEBIND, 0)
            .map_err(io("clear IP_FREEBIND"))?;
    }
    // The queues start where their bytes start: writing the bytes moves them on to
    // the dumped sequence numbers.
    let queue_seq = |queue: i32, seq: u32, what: &str| -> Result<()> {
        set_int(s, TCP_REPAIR_QUEUE, queue).map_err(io("select a repair queue"))?;
        set_int(s, TCP_QUEUE_SEQ, seq as i32).map_err(io(what))
    };
    queue_seq(
        RECV_QUEUE,
        inq_seq.wrapping_sub(e.inq_len),
        "set the receive sequence",
    )?;
    // A SYN takes the sequence number before the first byte.
    let syn = u32::from(state == TCP_SYN_SENT);
    queue_seq(
        SEND_QUEUE,
        snd_una.wrapping_sub(syn),
        "set the send sequence",
    )?;
    let peer = inet_addr(family, &ie.dst_addr, ie.dst_port, 0);
    if state == TCP_SYN_SENT {
        // Connecting: the SYN goes out again as `connect` sends it (held back by the
        // lock until the tree runs; its timer sends it again then). Without waiting.
        let flags = sys::fcntl_get(s, libc::F_GETFL).map_err(io("read the file flags"))?;
        sys::fcntl_set(s, libc::F_SETFL, flags | libc::O_NONBLOCK).map_err(io("set O_NONBLOCK"))?;
        set_int(s, TCP_REPAIR, REPAIR_OFF_NO_WP).map_err(io("leave repair mode"))?;
        let sent = match sys::connect_raw(s, &peer) {
            Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => Err(e),
            _ => Ok(()),
        };
        set_int(s, TCP_REPAIR, REPAIR_ON).map_err(io("turn TCP repair mode on again"))?;
        sent.map_err(io("send the SYN again (connect)"))?;
    } else {
        // In repair mode: established at once, without a packet. `connect` fixes the
        // segment size from the MSS clamp it finds, and TCP_REPAIR_OPTIONS below sets
        // the clamp without sizing segments again: without a clamp of ours here the
        // connection would send 524-byte segments for good (the kernel's default
        // clamp of 536), slow, and costing the peer's receive buffer more than its
        // window allows for. TCP_MAXSEG takes at most 32,767 (loopback's 65,483-byte
        // segments come back as 32,755 until the kernel sizes them again). The
        // program's TCP_MAXSEG is not ours to keep: put back to none right after.
        let clamp = e.mss_clamp.clamp(TCP_MIN_MSS, MAX_TCP_MAXSEG) as i32;
        set_int(s, libc::TCP_MAXSEG, clamp).map_err(io("set the MSS for connect (TCP_MAXSEG)"))?;
        sys::connect_raw(s, &peer).map_err(io("connect to its peer"))?;
        set_int(s, libc::TCP_MAXSEG, 0).map_err(io("clear TCP_MAXSEG"))?;
        set_repair_options(s, e).map_err(io("set the TCP options (TCP_REPAIR_OPTIONS)"))?;
        if let Some(ts) = e
            .timestamp
            .filter(|_| e.opt_mask & TCPI_OPT_TIMESTAMPS != 0)
        {
            set_int(s, TCP_TIMESTAMP, ts as i32).map_err(io("set TCP_TIMESTAMP"))?;
        }
    }
    if !stream.inq.is_empty() {
        set_int(s, TCP_REPAIR_QUEUE, RECV_QUEUE).map_err(io("select the receive queue"))?;
        send_all(s, &stream.inq).map_err(io("fill the receive queue"))?;
    }
    let unsent = e.unsq_len.unwrap_or(0) as usize;
    let (sent, never_sent) = stream.outq.split_at(stream.outq.len() - unsent);
    if !sent.is_empty() {
        // Sent already: queued as sent and unacknowledged (retransmitted as needed).
        set_int(s, TCP_REPAIR_QUEUE, SEND_QUEUE).map_err(io("select the send queue"))?;
        send_all(s, sent).map_err(io("fill the send queue"))?;
    }
    set_int(s, TCP_REPAIR_QUEUE, NO_QUEUE).map_err(io("select no repair queue"))?;
    if !never_sent.is_empty() {
        // Never sent: written as the program wrote it (the lock holds it back for now).
        set_int(s, TCP_REPAIR, REPAIR_OFF_NO_WP).map_err(io("leave repair mode"))?;
        let written = send_all(s, never_sent);
        set_int(s, TCP_REPAIR, REPAIR_ON).map_err(io("turn TCP repair mode on again"))?;
        written.map_err(io("write the unsent data"))?;
    }
    if state != TCP_SYN_SENT {
        // (A connection still connecting learns its window from the handshake.)
        set_window(s, e, state, inq_seq, conn).map_err(io("set the window (TCP_REPAIR_WINDOW)"))?;
    }
    replay_fins(s, state, e, conn, inq_seq, outq_seq, snd_una)
        .map_err(io("replay the FINs of a half-closed connection"))?;
    set_sk_opts(at, s, &ie.opts)?;
    if let Some(ip) = &ie.ip_opts {
        set_ip_opts(at, s, family, ip)?;
    }
    if let Some(t) = &ie.tcp_opts {
        set_tcp_opts(at, s, t)?;
    }
    // A read side shut by the program (its write side is the state's). Not while
    // connecting: shutdown(2) would abort the connection.
    if state != TCP_SYN_SENT {
        shut(at, s, ie.shutdown.filter(|&h| h & 1 != 0).map(|_| 1))?;
    }
    finish(at, s, ie.flags, &ie.fown)
}

/// The FINs of a half-closed connection, in the order they came (see the module doc):
/// `inq_seq` and `outq_seq` are the queues' ends without them, `snd_una` the first
/// byte not acknowledged.
fn replay_fins(
    s: BorrowedFd<'_>,
    state: u8,
    e: &pb::TcpStreamEntry,
    conn: Connection,
    inq_seq: u32,
    outq_seq: u32,
    snd_una: u32,
) -> io::Result<()> {
    // The window the peer offers, in the units of its segments' window field.
    let scale = if e.opt_mask & TCPI_OPT_WSCALE != 0 {
        e.snd_wscale.min(14)
    } else {
        0
    };
    let window = (e.snd_wnd.unwrap_or(65535) >> scale).min(65535) as u16;
    let ours_first = matches!(state, TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSING);
    if ours_first {
        our_fin_into_queue(s, state == TCP_FIN_WAIT2)?;
    }
    if peer_fin(state) {
        // Acknowledging what the peer had acknowledged: not our FIN (CLOSING, LAST_ACK).
        send_peer_segment(conn, inq_seq, snd_una, TH_FIN | TH_ACK, window)?;
    }
    if state == TCP_LAST_ACK {
        our_fin_into_queue(s, false)?;
    }
    if state == TCP_FIN_WAIT2 {
        // The peer's acknowledgement of our FIN.
        send_peer_segment(conn, inq_seq, outq_seq.wrapping_add(1), TH_ACK, window)?;
    }
    Ok(())
}

/// Our FIN, by shutdown(SHUT_WR): queued as already sent when the peer had
/// acknowledged it (nothing goes out), else sent (the lock holds it back; its timer
/// sends it again once the tree runs).
fn our_fin_into_queue(s: BorrowedFd<'_>, acked: bool) -> io::Result<()> {
    if acked {
        set_int(s, TCP_REPAIR_QUEUE, SEND_QUEUE)?;
    }
    let shut = sys::shutdown(s, libc::SHUT_WR);
    set_int(s, TCP_REPAIR_QUEUE, NO_QUEUE)?;
    shut
}

const TH_FIN: u8 = 0x01;
const TH_ACK: u8 = 0x10;

/// Sends socket `conn` a TCP segment in its peer's name (no data, no options): from
/// the peer's address and port, with `seq`, `ack`, `flags` and `window`, through a raw
/// socket whose packets carry [`REPAIR_MARK`], which the network lock lets through.
fn send_peer_segment(
    conn: Connection,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
) -> io::Result<()> {
    let c = conn.on_the_wire();
    let packet = peer_segment(c, seq, ack, flags, window);
    let (family, to) = match c.local {
        IpAddr::V4(a) => {
            let mut sa = (libc::AF_INET as u16).to_ne_bytes().to_vec();
            sa.extend_from_slice(&[0, 0]);
            sa.extend_from_slice(&a.octets());
            sa.extend_from_slice(&[0; 8]);
            (libc::AF_INET, sa)
        }
        IpAddr::V6(a) => {
            let mut sa = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
            sa.extend_from_slice(&[0; 6]);
            sa.extend_from_slice(&a.octets());
            sa.extend_from_slice(&[0; 4]);
            (libc::AF_INET6, sa)
        }
    };
    // IPPROTO_RAW: the packet carries its own IP header (the peer's address as source).
    let raw = sys::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
    sys::setsockopt_int(
        raw.as_fd(),
        libc::SOL_SOCKET,
        libc::SO_MARK,
        REPAIR_MARK as i32,
    )?;
    sys::sendto_raw(raw.as_fd(), &packet, 0, &to).map(drop)
}

/// The bytes of the segment [`send_peer_segment`] sends: IP header (the kernel fills
/// an IPv4 header's checksum), then a 20-byte TCP header with its checksum.
fn peer_segment(c: Connection, seq: u32, ack: u32, flags: u8, window: u16) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&c.remote_port.to_be_bytes());
    tcp.extend_from_slice(&c.local_port.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.push(5 << 4); // header length: 5 words, no options
    tcp.push(flags);
    tcp.extend_from_slice(&window.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    let (src, dst): (Vec<u8>, Vec<u8>) = match (c.remote, c.local) {
        (IpAddr::V4(r), IpAddr::V4(l)) => (r.octets().to_vec(), l.octets().to_vec()),
        (r, l) => (v6_octets(r).to_vec(), v6_octets(l).to_vec()),
    };
    // The pseudo-header: addresses, protocol, TCP length.
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    if src.len() == 4 {
        pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8]);
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    } else {
        pseudo.extend_from_slice(&(tcp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, libc::IPPROTO_TCP as u8]);
    }
    pseudo.extend_from_slice(&tcp);
    let sum = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut out = Vec::with_capacity(60);
    if src.len() == 4 {
        out.extend_from_slice(&[0x45, 0]);
        out.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_TCP as u8, 0, 0]);
    } else {
        out.extend_from_slice(&[0x60, 0, 0, 0]);
        out.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        out.extend_from_slice(&[libc::IPPROTO_TCP as u8, 64]);
    }
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&tcp);
    out
}

fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(v6) => v6.octets(),
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
    }
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP_REPAIR_WINDOW as dumped, on a socket whose receive queue ends at `inq_seq` (the
/// peer's FIN left out), when the images have a window.
fn set_window(
    s: BorrowedFd<'_>,
    e: &pb::TcpStreamEntry,
    state: u8,
    inq_seq: u32,
    conn: Connection,
) -> io::Result<()> {
    let window = (e.snd_wl1, e.snd_wnd, e.max_window, e.rcv_wnd, e.rcv_wup);
    let (Some(snd_wl1), Some(snd_wnd), Some(max_window), Some(rcv_wnd), Some(rcv_wup)) = window
    else {
        return Ok(());
    };
    // Before the peer's FIN is replayed, the window starts one earlier.
    let fin = u32::from(peer_fin(state));
    let saved = RepairWindow {
        snd_wl1,
        snd_wnd,
        max_window,
        rcv_wnd: rcv_wnd.wrapping_add(fin),
        rcv_wup: rcv_wup.wrapping_sub(fin),
    };
    // Images of CRIU, or of a criu-rs before this check, may hold a window the kernel
    // refuses.
    let w = saved.repairable(inq_seq);
    if w != saved {
        tracing::debug!(%conn, ?saved, taken = ?w, "window outside what repair mode takes");
    }
    sys::setsockopt_bytes(s, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &w.to_bytes()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{e} ({w:?} with the receive queue ending at {inq_seq})"),
        )
    })
}

/// `struct tcp_repair_window`: the send window and the receive window's edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RepairWindow {
    /// The sequence number (of the peer's) of the segment that last updated the send
    /// window.
    snd_wl1: u32,
    snd_wnd: u32,
    max_window: u32,
    rcv_wnd: u32,
    /// Where the receive queue ended when the window was last advertised.
    rcv_wup: u32,
}

impl RepairWindow {
    /// The window as `TCP_REPAIR_WINDOW` accepts it on a socket whose receive queue
    /// ends at `rcv_nxt`: the kernel refuses `snd_wl1` past the receive window's right
    /// edge, `rcv_wup` past `rcv_nxt`, and `max_window` below `snd_wnd`.
    ///
    /// A live socket can hold such values: a receiver short of memory drops segments
    /// past `rcv_nxt` after their ACK part has moved `snd_wl1` (seen with both ends
    /// filling their buffers over loopback, 1 dump in 10). Taking `rcv_nxt` for
    /// `snd_wl1` then only lets the peer's next segment update the window, which it
    /// does anyway; the dropped bytes are still in the peer's send queue and are sent
    /// again.
    fn repairable(self, rcv_nxt: u32) -> RepairWindow {
        let after = |a: u32, b: u32| (a.wrapping_sub(b) as i32) > 0;
        let mut w = self;
        if after(w.snd_wl1, rcv_nxt.wrapping_add(w.rcv_wnd)) {
            w.snd_wl1 = rcv_nxt;
        }
        if after(w.rcv_wup, rcv_nxt) {
            w.rcv_wup = rcv_nxt;
        }
        w.max_window = w.max_window.max(w.snd_wnd);
        w
    }

    fn to_bytes(self) -> [u8; 20] {
        let mut b = [0u8; 20];
        let words = [
            self.snd_wl1,
            self.snd_wnd,
            self.max_window,
            self.rcv_wnd,
            self.rcv_wup,
        ];
        for (chunk, v) in b.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

/// TCP_REPAIR_OPTIONS: what the handshake settled (SACK, window scales, timestamps,
/// MSS), as `struct tcp_repair_opt { u32 code; u32 value; }` pairs.
fn set_repair_options(s: BorrowedFd<'_>, e: &pb::TcpStreamEntry) -> io::Result<()> {
    let mut opts: Vec<(u32, u32)> = Vec::new();
    if e.opt_mask & TCPI_OPT_SACK != 0 {
        opts.push((TCPOPT_SACK_PERM, 0));
    }
    if e.opt_mask & TCPI_OPT_WSCALE != 0 {
        let rcv = e.rcv_wscale.unwrap_or(0);
        opts.push((TCPOPT_WINDOW, e.snd_wscale | (rcv << 16)));
    }
    if e.opt_mask & TCPI_OPT_TIMESTAMPS != 0 {
        opts.push((TCPOPT_TIMESTAMP, 0));
    }
    opts.push((TCPOPT_MAXSEG, e.mss_clamp));
    let bytes: Vec<u8> = opts
        .iter()
        .flat_map(|&(code, value)| code.to_ne_bytes().into_iter().chain(value.to_ne_bytes()))
        .collect();
    sys::setsockopt_bytes(s, libc::IPPROTO_TCP, TCP_REPAIR_OPTIONS, &bytes)
}

/// Writes all of `data` to a socket without blocking. The kernel queues what repair
/// mode writes as one buffer per call, which it may refuse to allocate (ENOMEM) when
/// large: the pieces then get smaller.
fn send_all(s: BorrowedFd<'_>, data: &[u8]) -> io::Result<()> {
    let mut chunk = 256 << 10;
    let mut off = 0;
    while off < data.len() {
        let end = (off + chunk).min(data.len());
        match sys::send(s, &data[off..end], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => off += n,
            Err(e)
                if chunk > 1024
                    && matches!(e.raw_os_error(), Some(libc::ENOMEM) | Some(libc::EAGAIN)) =>
            {
                chunk /= 2;
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{e} after {off} of {} bytes", data.len()),
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_images_are_named_in_hex() {
        assert_eq!(stream_image(0x1f3a), "tcp-stream-1f3a.img");
    }

    #[test]
    fn image_words_make_connections() {
        let c = connection(
            libc::AF_INET,
            &[u32::from_ne_bytes([127, 0, 0, 1])],
            80,
            &[u32::from_ne_bytes([10, 0, 0, 2])],
            4000,
        );
        assert_eq!(c.to_string(), "127.0.0.1:80 -> 10.0.0.2:4000");
        let one = u32::from_ne_bytes([0, 0, 0, 1]);
        let c6 = connection(libc::AF_INET6, &[0, 0, 0, one], 1, &[0, 0, 0, one], 2);
        assert_eq!(c6.to_string(), "[::1]:1 -> [::1]:2");
    }

    #[test]
    fn established_connecting_and_half_closed_connections_are_repaired() {
        for s in [1, 2, 4, 5, 8, 9, 11] {
            assert!(repairable(s).is_ok(), "{s}");
        }
        let why = repairable(6).unwrap_err();
        assert!(why.contains("TIME_WAIT"), "{why}");
        assert!(our_fin(TCP_LAST_ACK) && peer_fin(TCP_LAST_ACK));
        assert!(our_fin(TCP_FIN_WAIT2) && !peer_fin(TCP_FIN_WAIT2));
    }

    #[test]
    fn windows_are_taken_back_as_repair_mode_accepts_them() {
        // Seen in a dump: a segment 327,415 bytes past the receive queue's end (beyond
        // the 131,072-byte window) had moved snd_wl1 before it was dropped.
        let seen = RepairWindow {
            snd_wl1: 473_720_795,
            snd_wnd: 31_744,
            max_window: 65_536,
            rcv_wnd: 131_072,
            rcv_wup: 473_393_380,
        };
        let taken = seen.repairable(473_393_380);
        assert_eq!(taken.snd_wl1, 473_393_380);
        assert_eq!(
            (taken.snd_wnd, taken.rcv_wnd, taken.rcv_wup),
            (31_744, 131_072, 473_393_380)
        );
        // A window the kernel accepts stays as it is, across the wrap of the numbers.
        let fine = RepairWindow {
            snd_wl1: 10,
            snd_wnd: 100,
            max_window: 200,
            rcv_wnd: 1_000,
            rcv_wup: u32::MAX - 5,
        };
        assert_eq!(fine.repairable(20), fine);
        // rcv_wup past the queue's end, and a max_window below the send window.
        let odd = RepairWindow {
            rcv_wup: 30,
            max_window: 50,
            ..fine
        };
        let taken = odd.repairable(20);
        assert_eq!((taken.rcv_wup, taken.max_window), (20, 100));
    }

    #[test]
    fn peer_segments_have_valid_checksums() {
        // RFC 1071's example: the sum of these words is 0xddf2, its complement 0x220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        let c = connection(
            libc::AF_INET,
            &[u32::from_ne_bytes([127, 0, 0, 1])],
            80,
            &[u32::from_ne_bytes([127, 0, 0, 2])],
            4000,
        );
        let p = peer_segment(c, 7, 9, TH_FIN | TH_ACK, 512);
        assert_eq!(p.len(), 40);
        assert_eq!(&p[12..16], &[127, 0, 0, 2], "from the peer");
        assert_eq!(&p[16..20], &[127, 0, 0, 1], "to the socket");
        assert_eq!(&p[20..24], &[0x0f, 0xa0, 0, 80], "ports");
        // Summed with its pseudo-header, a segment with its checksum sums to zero.
        let mut pseudo = p[12..20].to_vec();
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&p[20..]);
        assert_eq!(checksum(&pseudo), 0);
        let one = u32::from_ne_bytes([0, 0, 0, 1]);
        let c6 = connection(libc::AF_INET6, &[0, 0, 0, one], 80, &[0, 0, 0, one], 4000);
        let p6 = peer_segment(c6, 1, 2, TH_ACK, 1);
        assert_eq!((p6.len(), p6[0] >> 4, p6[6]), (60, 6, 6));
    }
}
