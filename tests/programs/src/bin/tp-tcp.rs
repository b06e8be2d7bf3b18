//! tp-tcp: established TCP connections with data in flight both ways, inside the
//! program (both ends) and to a peer outside it.
//!
//! Every direction of every connection carries the byte stream of its own seed
//! (`stream_byte`), so the reader tells any byte lost, repeated or reordered:
//! - pairs (`--pairs yes`, the default): over 127.0.0.1 and, where IPv6 works, [::1],
//!   a listener (kept open) and a connection to it, both ends held. Each end writes
//!   PAIR_BEFORE bytes the other does not read before the check (unread receive
//!   queues). The IPv4 client has TCP_NODELAY, the IPv4 server SO_KEEPALIVE with
//!   TCP_KEEPIDLE 77, the IPv6 client O_NONBLOCK. With `--fill yes` the IPv4 client then
//!   writes, without blocking, until the kernel takes no more: the server's receive
//!   queue is full and the client's send queue holds bytes never sent (zero window).
//! - peers (`--peer4 PORT`, `--peer6 PORT`): a connection to 127.0.0.1:PORT or
//!   [::1]:PORT, where the harness listens. The program writes PEER_BEFORE bytes
//!   before `ready` and PEER_AFTER more at the check, and reads `--peer-bytes N` bytes
//!   at the check (the peer sends them when it likes: before the dump they wait in the
//!   program's receive queue, or in the peer's send queue when the harness holds its
//!   packets back).
//!
//! `--half-closed yes` shuts one end of each pair for writing after its bytes: the
//! IPv4 client (FIN_WAIT2, or FIN_WAIT1 behind a filled queue; the server in
//! CLOSE_WAIT) and the IPv6 server (the client in CLOSE_WAIT). `--peer-shutdown yes`
//! shuts the peer connections for writing after PEER_BEFORE (FIN_WAIT1 while the peer
//! holds its ACKs back); the program then writes nothing more to them.
//!
//! `--connect-to PORT` starts a connection to 127.0.0.1:PORT without waiting; it stays
//! SYN_SENT while the harness drops its SYNs. At the check it must be made (60 s at
//! most): the program writes 10000 bytes (seed 0x747074637379_6e01) and reads 10000
//! (seed 0x747074637379_6e03).
//!
//! Files: `PATH.tcp`, one line per connected socket at `ready`: `NAME LOCAL PEER`
//! (`client4`, `server4`, `client6`, `server6`, `peer4`, `peer6`), then one per
//! listener: `listen4 ADDRESS -`, `listen6 ADDRESS -`.
//!
//! Check: each socket still connects the same addresses in the TCP state it had at
//! `ready` (a FIN_WAIT1 may have become FIN_WAIT2), with its options and file flags,
//! sending segments of the size it sent then (up to the 32,000 bytes repair mode sets);
//! each pair end reads exactly what the other wrote (the whole filled queue too, and
//! end-of-file after a shut end's bytes), then the ends still open for writing write
//! PAIR_AFTER more, which the other end reads; each
//! listener accepts a new connection that carries data; each peer connection yields
//! its `--peer-bytes`, then takes PEER_AFTER more. Reads and writes wait at most 60 s
//! in all (counted in 10 ms slices: retransmissions after a restore take seconds).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::raw::c_int;
use std::time::Duration;

use criu_testprogs::{check_stream, cvt, fill_stream, write_atomic, Program, Report};

/// Bytes each pair end writes before `ready`, and at the check.
const PAIR_BEFORE: u64 = 30_000;
const PAIR_AFTER: u64 = 20_000;
/// Bytes the program writes to a peer before `ready`, and at the check.
const PEER_BEFORE: u64 = 60_000;
const PEER_AFTER: u64 = 40_000;

/// Stream seeds (odd): to and from the IPv4 and IPv6 peers, and of each pair end.
const TO_PEER4: u64 = 0x7470_7463_7034_0001;
const TO_PEER6: u64 = 0x7470_7463_7036_0003;
const FROM_PEER4: u64 = 0x7470_7463_7034_0005;
const FROM_PEER6: u64 = 0x7470_7463_7036_0007;
/// Streams of the connection still connecting at `ready` (`--connect-to`), and their
/// length each way.
const TO_CONNECTED: u64 = 0x7470_7463_7379_6e01;
const FROM_CONNECTED: u64 = 0x7470_7463_7379_6e03;
const CONNECTED_BYTES: u64 = 10_000;
const PAIR_SEEDS: [(u64, u64); 2] = [
    (0x7061_6972_3400_0011, 0x7061_6972_3400_0013),
    (0x7061_6972_3600_0015, 0x7061_6972_3600_0017),
];

/// 10 ms slices of waiting allowed for one read or write of the check.
const SLICES: u32 = 6000;
const SLICE: Duration = Duration::from_millis(10);

/// One end of a connection, with the streams it writes and reads.
struct End {
    name: String,
    sock: TcpStream,
    seed_out: u64,
    sent: u64,
    seed_in: u64,
    received: u64,
    local: SocketAddr,
    peer: SocketAddr,
    nonblocking: bool,
    /// Its write side was shut down (`--half-closed`, `--peer-shutdown`).
    shut: bool,
    /// Its TCP state at `ready`.
    state: u8,
}

impl End {
    fn new(name: &str, sock: TcpStream, seed_out: u64, seed_in: u64) -> io::Result<End> {
        Ok(End {
            name: name.to_owned(),
            local: sock.local_addr()?,
            peer: sock.peer_addr()?,
            sock,
            seed_out,
            sent: 0,
            seed_in,
            received: 0,
            nonblocking: false,
            shut: false,
            state: 0,
        })
    }

    /// Shuts its write side down: the other end reads end-of-file after its bytes.
    fn shut_write(&mut self) -> io::Result<()> {
        self.sock.shutdown(std::net::Shutdown::Write)?;
        self.shut = true;
        Ok(())
    }

    /// After the other end's bytes: end-of-file, at once or within 60 s.
    fn expect_eof(&mut self) -> Result<(), String> {
        self.set_slices()
            .map_err(|e| format!("{}: timeouts: {e}", self.name))?;
        let mut byte = [0u8; 1];
        for _ in 0..SLICES {
            match self.sock.read(&mut byte) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    return Err(format!(
                        "{}: a byte after the {} of the stream, not end-of-file",
                        self.name, self.received
                    ))
                }
                Err(e) if waiting(&e) => {
                    if self.nonblocking {
                        std::thread::sleep(SLICE);
                    }
                }
                Err(e) => return Err(format!("{}: read, not end-of-file: {e}", self.name)),
            }
        }
        Err(format!("{}: no end-of-file for 60 s", self.name))
    }

    /// Waits of one slice: a blocking socket times out, a non-blocking one is slept for.
    fn set_slices(&self) -> io::Result<()> {
        if !self.nonblocking {
            self.sock.set_read_timeout(Some(SLICE))?;
            self.sock.set_write_timeout(Some(SLICE))?;
        }
        Ok(())
    }

    /// Writes the next `n` bytes of its stream, waiting (bounded) for room.
    fn write_stream(&mut self, n: u64) -> Result<(), String> {
        self.set_slices()
            .map_err(|e| format!("{}: timeouts: {e}", self.name))?;
        let end = self.sent + n;
        let mut buf = vec![0u8; 64 << 10];
        let mut idle = 0;
        while self.sent < end {
            let len = ((end - self.sent) as usize).min(buf.len());
            fill_stream(&mut buf[..len], self.seed_out, self.sent);
            match self.sock.write(&buf[..len]) {
                Ok(0) => return Err(format!("{}: write returned 0", self.name)),
                Ok(k) => {
                    self.sent += k as u64;
                    idle = 0;
                }
                Err(e) if waiting(&e) => {
                    idle += 1;
                    if idle > SLICES {
                        return Err(format!(
                            "{}: no room to write for 60 s at byte {} of {end}",
                            self.name, self.sent
                        ));
                    }
                    if self.nonblocking {
                        std::thread::sleep(SLICE);
                    }
                }
                Err(e) => return Err(format!("{}: write at byte {}: {e}", self.name, self.sent)),
            }
        }
        Ok(())
    }

    /// Reads exactly `n` more bytes and checks them against its incoming stream.
    fn read_stream(&mut self, n: u64) -> Result<(), String> {
        self.set_slices()
            .map_err(|e| format!("{}: timeouts: {e}", self.name))?;
        let end = self.received + n;
        let mut buf = vec![0u8; 64 << 10];
        let mut idle = 0;
        while self.received < end {
            let len = ((end - self.received) as usize).min(buf.len());
            match self.sock.read(&mut buf[..len]) {
                Ok(0) => {
                    return Err(format!(
                        "{}: end of stream at byte {} of {end}",
                        self.name, self.received
                    ))
                }
                Ok(k) => {
                    if let Some((at, found, expected)) =
                        check_stream(&buf[..k], self.seed_in, self.received)
                    {
                        return Err(format!(
                            "{}: byte {} of the stream is {found:#04x}, not {expected:#04x}",
                            self.name,
                            self.received + at as u64
                        ));
                    }
                    self.received += k as u64;
                    idle = 0;
                }
                Err(e) if waiting(&e) => {
                    idle += 1;
                    if idle > SLICES {
                        return Err(format!(
                            "{}: nothing to read for 60 s at byte {} of {end}",
                            self.name, self.received
                        ));
                    }
                    if self.nonblocking {
                        std::thread::sleep(SLICE);
                    }
                }
                Err(e) => {
                    return Err(format!(
                        "{}: read at byte {}: {e}",
                        self.name, self.received
                    ))
                }
            }
        }
        Ok(())
    }

    /// Writes without blocking until the kernel takes no more (at most 64 MiB).
    fn fill(&mut self) -> io::Result<()> {
        self.sock.set_nonblocking(true)?;
        let mut buf = vec![0u8; 64 << 10];
        // Twice in a row: room freed by the receiver's ACK of the first attempt.
        let mut full = 0;
        while self.sent < (64 << 20) && full < 2 {
            fill_stream(&mut buf, self.seed_out, self.sent);
            match self.sock.write(&buf) {
                Ok(k) => {
                    self.sent += k as u64;
                    full = 0;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    full += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
        self.sock.set_nonblocking(false)
    }
}

fn waiting(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn get_int(fd: c_int, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`.
    cvt(unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut c_int).cast(), &mut len) })?;
    Ok(value)
}

fn set_int(fd: c_int, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: the kernel reads one int from `value`, which outlives the call.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const c_int).cast(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn tcp_state(fd: c_int) -> io::Result<u8> {
    let mut info = [0u8; 104];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    Ok(info[0])
}

fn file_flags(fd: c_int) -> io::Result<c_int> {
    // SAFETY: F_GETFL takes no argument.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })
}

/// A listener on `ip` and both ends of a connection to it; (listener, client, server).
fn pair(ip: &str, index: usize) -> io::Result<(TcpListener, End, End)> {
    let listener = TcpListener::bind((ip, 0))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    let fam = if index == 0 { "4" } else { "6" };
    let (to_server, to_client) = PAIR_SEEDS[index];
    Ok((
        listener,
        End::new(&format!("client{fam}"), client, to_server, to_client)?,
        End::new(&format!("server{fam}"), server, to_client, to_server)?,
    ))
}

/// A connection to the harness's listener.
fn peer(addr: SocketAddr, name: &str, seed_out: u64, seed_in: u64) -> io::Result<End> {
    let sock = TcpStream::connect(addr)?;
    End::new(name, sock, seed_out, seed_in)
}

/// Each end of a pair reads what the other wrote before the check (and end-of-file
/// from an end that shut its write side), then the ends that may write more do, and
/// the other reads it.
fn exchange(client: &mut End, server: &mut End) -> Result<(), String> {
    let (c_sent, s_sent) = (client.sent, server.sent);
    server.read_stream(c_sent)?;
    if client.shut {
        server.expect_eof()?;
    }
    client.read_stream(s_sent)?;
    if server.shut {
        client.expect_eof()?;
    }
    if !client.shut {
        client.write_stream(PAIR_AFTER)?;
        server.read_stream(PAIR_AFTER)?;
    }
    if !server.shut {
        server.write_stream(PAIR_AFTER)?;
        client.read_stream(PAIR_AFTER)?;
    }
    Ok(())
}

/// Whether a TCP state found at the check is the one of `ready`: a FIN not yet
/// acknowledged then may be by now, a connection then connecting may be made.
fn same_state(ready: u8, now: u8) -> bool {
    const FIN_WAIT1: u8 = 4;
    const FIN_WAIT2: u8 = 5;
    const ESTABLISHED: u8 = 1;
    const SYN_SENT: u8 = 2;
    now == ready
        || (ready == FIN_WAIT1 && now == FIN_WAIT2)
        || (ready == SYN_SENT && now == ESTABLISHED)
}

/// Waits (bounded) until the FINs of the shut ends are where they go at once over
/// loopback (the peer's end in CLOSE_WAIT), so `ready` finds stable states.
fn settle(ends: &[&End]) {
    for _ in 0..200 {
        let settled = ends.iter().all(|e| {
            let st = tcp_state(e.sock.as_raw_fd()).unwrap_or(0);
            !matches!(st, 4 | 9 | 11) || !e.shut
        });
        if settled {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A connection to `addr` started without waiting: SYN_SENT while nobody answers.
fn connecting(addr: SocketAddr) -> io::Result<End> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        return Err(io::Error::other("IPv4 only"));
    };
    // SAFETY: plain call with integer arguments; the fd is ours.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) })?;
    // SAFETY: the kernel just gave us this fd; the TcpStream owns it from here.
    let sock = unsafe { TcpStream::from_raw_fd(fd) };
    // SAFETY: sockaddr_in is plain data; zero is a valid value.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_port = v4.port().to_be();
    sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
    // SAFETY: `sin` is a valid sockaddr_in of its size.
    let r = unsafe {
        libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
        return Err(io::Error::last_os_error());
    }
    Ok(End {
        name: "connecting".into(),
        local: sock.local_addr()?,
        peer: addr,
        sock,
        seed_out: TO_CONNECTED,
        sent: 0,
        seed_in: FROM_CONNECTED,
        received: 0,
        nonblocking: true,
        shut: false,
        state: 0,
    })
}

/// Waits (60 s at most) until a connection started without waiting is made.
fn wait_connected(e: &End) -> Result<(), String> {
    let fd = e.sock.as_raw_fd();
    for _ in 0..SLICES {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one pollfd of ours for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, SLICE.as_millis() as c_int) };
        if n == 1 {
            return match get_int(fd, libc::SOL_SOCKET, libc::SO_ERROR) {
                Ok(0) => Ok(()),
                Ok(err) => Err(format!("connecting: {}", io::Error::from_raw_os_error(err))),
                Err(err) => Err(format!("connecting: SO_ERROR: {err}")),
            };
        }
    }
    Err("connecting: not connected after 60 s".into())
}

fn ipv6_works() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

fn main() {
    let mut program = Program::start(
        "tp-tcp",
        &[
            (
                "--pairs yes|no",
                "connections with both ends here (default yes)",
            ),
            ("--fill yes|no", "fill the IPv4 pair's queues (default no)"),
            ("--peer4 PORT", "connect to a peer at 127.0.0.1:PORT"),
            ("--peer6 PORT", "connect to a peer at [::1]:PORT"),
            ("--peer-bytes N", "bytes each peer sends in all (default 0)"),
            (
                "--half-closed yes|no",
                "shut one end of each pair for writing (default no)",
            ),
            (
                "--peer-shutdown yes|no",
                "shut the peer connections for writing (default no)",
            ),
            (
                "--connect-to PORT",
                "connect to 127.0.0.1:PORT without waiting (SYN_SENT)",
            ),
            (
                "--segment-size yes|no",
                "check the segment size after the restore (default yes)",
            ),
        ],
    );
    // CRIU 4.2's restore leaves the kernel's default 536-byte segments: its round trip
    // turns this check off.
    let check_mss = program.opt_or("--segment-size", "yes".to_string()) == "yes";
    let connect_to: u16 = program.opt_or("--connect-to", 0);
    let half_closed = program.opt_or("--half-closed", "no".to_string()) == "yes";
    let peer_shutdown = program.opt_or("--peer-shutdown", "no".to_string()) == "yes";
    let with_pairs = program.opt_or("--pairs", "yes".to_string()) == "yes";
    let fill = program.opt_or("--fill", "no".to_string()) == "yes";
    let peer4: u16 = program.opt_or("--peer4", 0);
    let peer6: u16 = program.opt_or("--peer6", 0);
    let peer_bytes: u64 = program.opt_or("--peer-bytes", 0);

    let mut listeners = Vec::new();
    let mut pairs: Vec<(End, End)> = Vec::new();
    if with_pairs {
        let families: &[&str] = if ipv6_works() {
            &["127.0.0.1", "::1"]
        } else {
            eprintln!("tp-tcp: no IPv6 loopback: the IPv6 pair is left out");
            &["127.0.0.1"]
        };
        for (i, ip) in families.iter().enumerate() {
            let (listener, mut client, mut server) =
                program.must(pair(ip, i), &format!("connection over {ip}"));
            let s = server.sock.as_raw_fd();
            if i == 0 {
                program.must(client.sock.set_nodelay(true), "TCP_NODELAY");
                program.must(
                    set_int(s, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
                    "SO_KEEPALIVE",
                );
                program.must(
                    set_int(s, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 77),
                    "TCP_KEEPIDLE",
                );
            } else {
                program.must(client.sock.set_nonblocking(true), "O_NONBLOCK");
                client.nonblocking = true;
            }
            program.must(client.write_stream(PAIR_BEFORE), "write to the server");
            program.must(server.write_stream(PAIR_BEFORE), "write to the client");
            if fill && i == 0 {
                program.must(client.fill(), "fill the queues");
            }
            if half_closed {
                // IPv4: the client closes its half (FIN_WAIT2, or FIN_WAIT1 behind a
                // filled queue; the server in CLOSE_WAIT); IPv6: the server does.
                let shutter = if i == 0 { &mut client } else { &mut server };
                program.must(shutter.shut_write(), "shut the write side");
            }
            listeners.push(listener);
            pairs.push((client, server));
        }
    }
    let mut peers = Vec::new();
    for (port, ip, name, out, inc) in [
        (peer4, "127.0.0.1", "peer4", TO_PEER4, FROM_PEER4),
        (peer6, "::1", "peer6", TO_PEER6, FROM_PEER6),
    ] {
        if port == 0 {
            continue;
        }
        let addr = SocketAddr::new(ip.parse().expect("an address"), port);
        let mut end = program.must(peer(addr, name, out, inc), &format!("connect to {addr}"));
        program.must(end.write_stream(PEER_BEFORE), "write to the peer");
        if peer_shutdown {
            program.must(end.shut_write(), "shut the write side");
        }
        peers.push(end);
    }
    let mut listing: String = pairs
        .iter()
        .flat_map(|(c, s)| [c, s])
        .chain(&peers)
        .map(|e| format!("{} {} {}\n", e.name, e.local, e.peer))
        .collect();
    for (i, l) in listeners.iter().enumerate() {
        let at = program.must(l.local_addr(), "listener address");
        listing.push_str(&format!("listen{} {at} -\n", if i == 0 { 4 } else { 6 }));
    }
    program.must(
        write_atomic(&program.companion(".tcp"), listing.as_bytes()),
        "write the connection list",
    );
    let mut connect = (connect_to != 0).then(|| {
        let addr = SocketAddr::new([127, 0, 0, 1].into(), connect_to);
        program.must(connecting(addr), &format!("connect to {addr}"))
    });
    settle(&pairs.iter().flat_map(|(c, s)| [c, s]).collect::<Vec<_>>());
    if let Some(c) = connect.as_mut() {
        c.state = tcp_state(c.sock.as_raw_fd()).unwrap_or(0);
    }
    for e in pairs.iter_mut().flat_map(|(c, s)| [c, s]).chain(&mut peers) {
        e.state = tcp_state(e.sock.as_raw_fd()).unwrap_or(0);
    }
    let flags: Vec<c_int> = pairs
        .iter()
        .flat_map(|(c, s)| [c, s])
        .chain(&peers)
        .map(|e| file_flags(e.sock.as_raw_fd()).unwrap_or(-1))
        .collect();
    // The segment size each socket sends with (TCP_MAXSEG of a connected socket).
    let mss: Vec<c_int> = pairs
        .iter()
        .flat_map(|(c, s)| [c, s])
        .chain(&peers)
        .map(|e| get_int(e.sock.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_MAXSEG).unwrap_or(0))
        .collect();
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});

    let mut report = Report::new();
    // What every socket is.
    let ends: Vec<&End> = pairs
        .iter()
        .flat_map(|(c, s)| [c, s])
        .chain(&peers)
        .collect();
    for ((e, &flags), &mss) in ends.iter().zip(&flags).zip(&mss) {
        let fd = e.sock.as_raw_fd();
        // Over loopback segments are 64 KiB; a restore that leaves the kernel's
        // default (536, 524 with timestamps) crawls, and makes the peer's receive
        // buffer overflow inside its window. 32 KiB is what repair mode can set.
        let now = get_int(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG).unwrap_or(0);
        report.check(!check_mss || now >= mss.min(32_000), || {
            format!(
                "{} sends {now}-byte segments, not {mss} as at ready",
                e.name
            )
        });
        report.check_eq(
            &format!("{} local address", e.name),
            e.sock.local_addr().ok(),
            Some(e.local),
        );
        report.check_eq(
            &format!("{} peer address", e.name),
            e.sock.peer_addr().ok(),
            Some(e.peer),
        );
        let state = tcp_state(fd).unwrap_or(0);
        report.check(same_state(e.state, state), || {
            format!("{} TCP state: {state}, not {} as at ready", e.name, e.state)
        });
        report.check_eq(
            &format!("{} file flags", e.name),
            file_flags(fd).ok(),
            Some(flags),
        );
    }
    if let Some((client, server)) = pairs.first() {
        let (c, s) = (client.sock.as_raw_fd(), server.sock.as_raw_fd());
        report.check_eq(
            "client4 TCP_NODELAY",
            get_int(c, libc::IPPROTO_TCP, libc::TCP_NODELAY).ok(),
            Some(1),
        );
        report.check_eq(
            "server4 SO_KEEPALIVE",
            get_int(s, libc::SOL_SOCKET, libc::SO_KEEPALIVE).ok(),
            Some(1),
        );
        report.check_eq(
            "server4 TCP_KEEPIDLE",
            get_int(s, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE).ok(),
            Some(77),
        );
    }
    // The streams, byte for byte.
    for (client, server) in &mut pairs {
        if let Err(e) = exchange(client, server) {
            report.fail(e);
        }
    }
    for listener in &listeners {
        let at = listener.local_addr().ok();
        let carried = listener.local_addr().and_then(|at| {
            let mut c = TcpStream::connect(at)?;
            let (mut s, _) = listener.accept()?;
            c.write_all(b"new")?;
            let mut got = [0u8; 3];
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.read_exact(&mut got)?;
            Ok(got == *b"new")
        });
        report.check(matches!(carried, Ok(true)), || {
            format!("listener {at:?}: a new connection did not carry data: {carried:?}")
        });
    }
    if let Some(c) = connect.as_mut() {
        let state = tcp_state(c.sock.as_raw_fd()).unwrap_or(0);
        report.check(same_state(c.state, state), || {
            format!("connecting TCP state: {state}, not {} as at ready", c.state)
        });
        let done = wait_connected(c)
            .and_then(|()| c.write_stream(CONNECTED_BYTES))
            .and_then(|()| c.read_stream(CONNECTED_BYTES));
        if let Err(e) = done {
            report.fail(e);
        }
    }
    for p in &mut peers {
        if let Err(e) = p.read_stream(peer_bytes) {
            report.fail(e);
        }
        if !p.shut {
            if let Err(e) = p.write_stream(PEER_AFTER) {
                report.fail(e);
            }
        }
    }
    program.finish(&report);
}
