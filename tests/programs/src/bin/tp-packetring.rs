//! tp-packetring: a packet socket (SOCK_RAW, all protocols, bound to lo, TPACKET_V2)
//! with an RX and a TX ring, both mapped in one shared mapping, as libpcap (and zdtm's
//! packet_sock_mmap, privately) map them.
//!
//! State:
//! - `--close-socket 1`: the socket's fd is closed once the ring is mapped (the socket
//!   lives on through the mapping, with nothing to name it by).
//!
//! `PATH.ring` holds the mapping's address (hex), for a harness.
//!
//! Check: the mapping is at the same address with the same size, and still the
//! socket's (maps shows the inode of our fd); the socket is still TPACKET_V2; and the
//! RX ring is live: a UDP datagram we send over lo shows up in one of its frames
//! (status TP_STATUS_USER, given back to the kernel once read) within 3 s.

use std::io;
use std::net::UdpSocket;
use std::os::raw::c_int;
use std::time::{Duration, Instant};

use criu_testprogs::{cvt, write_atomic, Program, Report};

const SOL_PACKET: c_int = 263;
const PACKET_RX_RING: c_int = 5;
const PACKET_VERSION: c_int = 10;
const PACKET_TX_RING: c_int = 13;
const TPACKET_V2: c_int = 1;
const ETH_P_ALL: u16 = 0x0003;
const TP_STATUS_USER: u32 = 1;

// Each ring: 2 blocks of a page, 2 frames each.
const BLOCK_SIZE: u32 = 4096;
const BLOCK_NR: u32 = 2;
const FRAME_SIZE: u32 = 2048;
const FRAME_NR: u32 = BLOCK_SIZE / FRAME_SIZE * BLOCK_NR;
const RING_BYTES: usize = (BLOCK_SIZE * BLOCK_NR) as usize;
/// The RX ring, then the TX ring.
const MAP_BYTES: usize = 2 * RING_BYTES;

fn setsockopt_raw(fd: c_int, opt: c_int, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is valid for its length for the duration of the call.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            SOL_PACKET,
            opt,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A packet socket on lo with both rings, mapped: (fd, mapping address).
fn make_ring() -> io::Result<(c_int, usize)> {
    // SAFETY: plain socket(2).
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            c_int::from(ETH_P_ALL.to_be()),
        )
    })?;
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ALL.to_be();
    // SAFETY: a NUL-terminated interface name.
    addr.sll_ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) } as c_int;
    // SAFETY: `addr` is a sockaddr_ll of the size given.
    cvt(unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    setsockopt_raw(fd, PACKET_VERSION, &TPACKET_V2.to_ne_bytes())?;
    let req: Vec<u8> = [BLOCK_SIZE, BLOCK_NR, FRAME_SIZE, FRAME_NR]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    setsockopt_raw(fd, PACKET_RX_RING, &req)?;
    setsockopt_raw(fd, PACKET_TX_RING, &req)?;
    // SAFETY: a new shared mapping of the socket's rings, at an address the kernel picks.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MAP_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok((fd, mem as usize))
}

fn packet_version(fd: c_int) -> io::Result<c_int> {
    let mut v: c_int = -1;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for the kernel to write.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            SOL_PACKET,
            PACKET_VERSION,
            (&mut v as *mut c_int).cast(),
            &mut len,
        )
    })?;
    Ok(v)
}

fn socket_inode(fd: c_int) -> io::Result<u64> {
    // SAFETY: stat is plain data; zeroed is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat(2) into a stat of ours.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st.st_ino)
}

/// The maps line at `addr`: (size, inode, path).
fn mapping_at(addr: usize) -> Result<(usize, u64, String), String> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
    let line = maps
        .lines()
        .find(|l| l.starts_with(&format!("{addr:x}-")))
        .ok_or_else(|| format!("no mapping at {addr:#x}"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (start, end) = fields[0].split_once('-').ok_or("odd maps line")?;
    let size =
        usize::from_str_radix(end, 16).unwrap_or(0) - usize::from_str_radix(start, 16).unwrap_or(0);
    let inode = fields.get(4).and_then(|i| i.parse().ok()).unwrap_or(0);
    Ok((size, inode, fields.get(5).unwrap_or(&"").to_string()))
}

/// Whether a datagram carrying `payload`, sent over lo until it shows, lands in a
/// frame of the RX ring at `base` within 3 s. Every frame handed to us is read and
/// given back to the kernel.
fn ring_sees(base: usize, payload: &[u8]) -> Result<bool, String> {
    let sender = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        // Port 9 (discard): nobody needs to listen, the datagram crosses lo all the same.
        sender
            .send_to(payload, "127.0.0.1:9")
            .map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(20));
        let mut found = false;
        for i in 0..FRAME_NR as usize {
            let frame = base + i * FRAME_SIZE as usize;
            let status = frame as *mut u32;
            // SAFETY: the frame header is in the mapped RX ring; the kernel writes the
            // status word, so it is read (and given back) volatile.
            if unsafe { std::ptr::read_volatile(status) } & TP_STATUS_USER == 0 {
                continue;
            }
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            // SAFETY: tpacket2_hdr: tp_snaplen at 8, tp_mac at 12, inside the frame.
            let (snaplen, mac) = unsafe {
                (
                    std::ptr::read_volatile((frame + 8) as *const u32) as usize,
                    std::ptr::read_volatile((frame + 12) as *const u16) as usize,
                )
            };
            let len = snaplen.min((FRAME_SIZE as usize).saturating_sub(mac));
            // SAFETY: the captured bytes lie inside the frame (bounded above).
            let data = unsafe { std::slice::from_raw_parts((frame + mac) as *const u8, len) };
            found |= data.windows(payload.len()).any(|w| w == payload);
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            // SAFETY: as above; TP_STATUS_KERNEL (0) gives the frame back.
            unsafe { std::ptr::write_volatile(status, 0) };
        }
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

fn main() {
    let mut program = Program::start(
        "tp-packetring",
        &[("--close-socket 1", "close the socket's fd once mapped")],
    );
    let close_socket = program.opt_or("--close-socket", 0) == 1;
    let (fd, base) = program.must(make_ring(), "making the packet ring");
    let inode = program.must(socket_inode(fd), "fstat of the socket");
    let payload = format!("tp-packetring {} at {base:#x}", std::process::id());
    let live = program.must(ring_sees(base, payload.as_bytes()), "using the ring");
    if !live {
        program.setup_failed("the RX ring saw nothing of our datagrams");
    }
    if close_socket {
        // SAFETY: our own fd, not used after this.
        program.must(cvt(unsafe { libc::close(fd) }), "closing the socket");
    }
    program.must(
        write_atomic(
            &program.companion(".ring"),
            format!("{base:x}\n").as_bytes(),
        ),
        "writing the ring's address",
    );
    program.ready();
    program.work_until_check(Duration::from_millis(50), || {});

    let mut report = Report::new();
    match mapping_at(base) {
        Ok((size, ino, path)) => {
            report.check_eq("mapping size", size, MAP_BYTES);
            report.check(path.starts_with("socket:["), || {
                format!("the mapping at {base:#x} is {path:?}")
            });
            report.check_eq(
                "mapped socket's inode",
                ino,
                inode_now(fd, close_socket, inode),
            );
        }
        Err(e) => report.fail(e),
    }
    if !close_socket {
        match packet_version(fd) {
            Ok(v) => report.check_eq("packet version", v, TPACKET_V2),
            Err(e) => report.fail(format!("PACKET_VERSION: {e}")),
        }
    }
    let payload = format!("tp-packetring {} checked", std::process::id());
    match ring_sees(base, payload.as_bytes()) {
        Ok(seen) => report.check(seen, || "the RX ring saw nothing of our datagrams".into()),
        Err(e) => report.fail(format!("using the ring: {e}")),
    }
    program.finish(&report);
}

/// The inode the mapping must show: our fd's now (a restored socket has a new one), or
/// the one at the start when the fd is closed.
fn inode_now(fd: c_int, closed: bool, at_start: u64) -> u64 {
    if closed {
        at_start
    } else {
        socket_inode(fd).unwrap_or(0)
    }
}
