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
//! Files: `PATH.tcp`, one line per connected socket at `ready`: `NAME LOCAL PEER`
//! (`client4`, `server4`, `client6`, `server6`, `peer4`, `peer6`), then one per
//! listener: `listen4 ADDRESS -`, `listen6 ADDRESS -`.
//!
//! Check: each socket still connects the same addresses in ESTABLISHED, with its
//! options and file flags; each pair end reads exactly what the other wrote (the whole
//! filled queue too), then both write PAIR_AFTER more, which the other end reads; each
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
        })
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

/// Each end of a pair reads what the other wrote before the check, then both write
/// more and read it.
fn exchange(client: &mut End, server: &mut End) -> Result<(), String> {
    let (c_sent, s_sent) = (client.sent, server.sent);
    server.read_stream(c_sent)?;
    client.read_stream(s_sent)?;
    client.write_stream(PAIR_AFTER)?;
    server.write_stream(PAIR_AFTER)?;
    server.read_stream(PAIR_AFTER)?;
    client.read_stream(PAIR_AFTER)
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
        ],
    );
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
    let flags: Vec<c_int> = pairs
        .iter()
        .flat_map(|(c, s)| [c, s])
        .chain(&peers)
        .map(|e| file_flags(e.sock.as_raw_fd()).unwrap_or(-1))
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
    for (e, &flags) in ends.iter().zip(&flags) {
        let fd = e.sock.as_raw_fd();
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
        report.check_eq(
            &format!("{} TCP state", e.name),
            tcp_state(fd).ok(),
            Some(1),
        );
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
    for p in &mut peers {
        if let Err(e) = p.read_stream(peer_bytes) {
            report.fail(e);
        }
        if let Err(e) = p.write_stream(PEER_AFTER) {
            report.fail(e);
        }
    }
    program.finish(&report);
}
