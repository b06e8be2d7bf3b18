//! The file restore (`criu_core::restore::files`) on a dump of tp-fds: every file the
//! program held is rebuilt on the restorer's side, then checked from there (data in
//! place once, peers connected, listeners accepting, timers armed, watches firing).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criu_core::dump::{dump, DumpOptions};
use criu_core::images::{pb, ImageReader};
use criu_core::restore::files::{EpollItem, FileOpener};
use criu_core::sys::{self, Pid};
use criu_rs_suite::{ScratchDir, TestProcess};

const PIPE_DATA: &[u8] = b"hello-pipe";
const FIFO_DATA: &[u8] = b"hello-fifo";
const STREAM_DATA: &[u8] = b"hello-sock";
const DGRAMS: [&[u8]; 2] = [b"dgram-one", b"dgram-number-two"];
const PACKETS: [&[u8]; 2] = [b"seq-1", b"seq-packet-number-2"];
const REGULAR_DATA: &[u8] = b"0123456789abcdef";
const EPOLL_PIPE_DATA: u64 = 0x7069_7065_0000_0001;
const EPOLL_EVENTFD_DATA: u64 = 0x6576_6664_0000_0002;
const MEMFD_BYTES: usize = 3 * 4096 + 100;
const DELETED_BYTES: usize = 8192 + 17;

/// tp-fds' memory pattern (tests/programs: `fill_pattern`, `pattern_bytes`).
fn pattern_bytes(len: usize, seed: u64) -> Vec<u8> {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    let rot = (seed % 64) as u32;
    let mut bytes: Vec<u8> = (0..len.div_ceil(8) as u64)
        .flat_map(|i| {
            (i.wrapping_mul(GOLDEN) ^ seed)
                .rotate_left(rot)
                .to_ne_bytes()
        })
        .collect();
    bytes.truncate(len);
    bytes
}

/// Every entry of an image, as `$ty`.
macro_rules! read_entries {
    ($ty:ty, $path:expr) => {{
        let path: &Path = $path;
        let mut r = ImageReader::open(path).unwrap_or_else(|e| panic!("{e}"));
        let mut out: Vec<$ty> = Vec::new();
        while let Some(e) = r.next_entry::<$ty>().unwrap_or_else(|e| panic!("{e}")) {
            out.push(e);
        }
        out
    }};
}

/// One line of tp-fds' `PATH.fds`: fd, name, F_GETFL, link.
struct Listed {
    name: String,
    fl_flags: u32,
    link: String,
}

fn parse_listing(text: &str) -> BTreeMap<u32, Listed> {
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.splitn(5, '\t').collect();
            let hex = |s: &str| u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            (
                f[0].parse().unwrap(),
                Listed {
                    name: f[1].to_owned(),
                    fl_flags: hex(f[3]),
                    link: f[4].to_owned(),
                },
            )
        })
        .collect()
}

/// The inode number in `pipe:[N]`-style links changes across a restore; the kind may not.
fn link_kind(link: &str) -> &str {
    match link.find(":[") {
        Some(i) if link.ends_with(']') && !link.starts_with("anon_inode:") => &link[..i + 2],
        _ => link,
    }
}

fn link_of(fd: BorrowedFd<'_>) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn getfl(fd: BorrowedFd<'_>) -> u32 {
    sys::fcntl_get(fd, libc::F_GETFL).unwrap() as u32
}

fn dup(fd: BorrowedFd<'_>) -> File {
    File::from(fd.try_clone_to_owned().unwrap())
}

/// One non-blocking receive with its real length (MSG_TRUNC).
fn recv_now(fd: BorrowedFd<'_>) -> io::Result<(Vec<u8>, usize)> {
    let mut buf = vec![0u8; 256];
    let n = sys::recv(fd, &mut buf, libc::MSG_DONTWAIT | libc::MSG_TRUNC)?;
    buf.truncate(n.min(256));
    Ok((buf, n))
}

/// Waits (at most 2 s) for a non-blocking read to give something.
fn read_soon(fd: BorrowedFd<'_>, max: usize) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = vec![0u8; max];
    loop {
        match sys::recv(fd, &mut buf, libc::MSG_DONTWAIT).or_else(|e| {
            if e.raw_os_error() == Some(libc::ENOTSOCK) {
                dup(fd).read(&mut buf)
            } else {
                Err(e)
            }
        }) {
            Ok(n) => {
                buf.truncate(n);
                return buf;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Accepts one connection (at most 2 s), whatever the listener's blocking mode.
fn accept_soon<T>(mut accept: impl FnMut() -> io::Result<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match accept() {
            Ok(s) => return s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A dump of tp-fds (which the dump ends), with what the program said about its fds.
struct Dumped {
    _scratch: ScratchDir,
    work: PathBuf,
    images: PathBuf,
    pid: i32,
    fdinfo: Vec<pb::FdinfoEntry>,
    listing: BTreeMap<u32, Listed>,
    ports: BTreeMap<String, Option<u16>>,
}

fn dump_tp_fds(test: &str) -> Dumped {
    let scratch = ScratchDir::new(test);
    let work = scratch.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let work = std::fs::canonicalize(work).unwrap();
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let mut tp = TestProcess::start(scratch.path(), "fds", &["--dir", work.to_str().unwrap()]);
    let companion = |suffix: &str| {
        let mut p = tp.ready_file.clone().into_os_string();
        p.push(suffix);
        std::fs::read_to_string(PathBuf::from(p)).unwrap()
    };
    let listing = parse_listing(&companion(".fds"));
    let ports = companion(".ports")
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_owned(), v.parse().ok())
        })
        .collect();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    let pid = tp.pid;
    drop(tp);
    let tree = read_entries!(pb::PstreeEntry, &images.join("pstree.img"));
    assert_eq!(tree[0].pid as i32, pid);
    let ids = read_entries!(pb::TaskKobjIdsEntry, &images.join(format!("ids-{pid}.img")));
    let fdinfo = read_entries!(
        pb::FdinfoEntry,
        &images.join(format!("fdinfo-{}.img", ids[0].files_id))
    );
    Dumped {
        _scratch: scratch,
        work,
        images,
        pid,
        fdinfo,
        listing,
        ports,
    }
}

#[test]
fn every_file_of_tp_fds_is_rebuilt() {
    let d = dump_tp_fds("restore-files-fds");
    let mut opener = FileOpener::load(&d.images).unwrap_or_else(|e| panic!("load: {e}"));
    opener
        .check(Pid(d.pid), &d.fdinfo)
        .unwrap_or_else(|e| panic!("check: {e}"));

    // Every fd, opened by the restorer; the same id gives the same descriptor again.
    let mut ours: BTreeMap<u32, OwnedFd> = BTreeMap::new();
    for fdi in &d.fdinfo {
        let first = opener
            .open(fdi.id, &d.fdinfo)
            .unwrap_or_else(|e| panic!("open fd {}: {e}", fdi.fd))
            .as_raw_fd();
        let again = opener.open(fdi.id, &d.fdinfo).unwrap();
        assert_eq!(again.as_raw_fd(), first, "fd {} opened twice", fdi.fd);
        ours.insert(fdi.fd, again.try_clone_to_owned().unwrap());
    }
    let fd = |name: &str| -> BorrowedFd<'_> {
        let (n, _) = d
            .listing
            .iter()
            .find(|(_, l)| l.name == name)
            .unwrap_or_else(|| panic!("tp-fds has no {name}"));
        ours[n].as_fd()
    };
    let number =
        |name: &str| -> i32 { *d.listing.iter().find(|(_, l)| l.name == name).unwrap().0 as i32 };

    // The fd table: each descriptor is the same kind of file, with the same status flags.
    assert_eq!(
        ours.keys().collect::<BTreeSet<_>>(),
        d.listing.keys().collect::<BTreeSet<_>>()
    );
    for (n, l) in &d.listing {
        let ours = ours[n].as_fd();
        assert_eq!(getfl(ours), l.fl_flags, "F_GETFL of fd {n} ({})", l.name);
        let link = link_of(ours);
        assert_eq!(link_kind(&link), link_kind(&l.link), "fd {n} ({})", l.name);
    }

    // Epoll: the interest list, with the task's numbers, once.
    let items: BTreeSet<EpollItem> = opener.epoll_items(&d.fdinfo).into_iter().collect();
    let ep = number("epoll");
    let want: BTreeSet<EpollItem> = [
        (number("pipe-r"), EPOLL_PIPE_DATA),
        (number("eventfd"), EPOLL_EVENTFD_DATA),
    ]
    .into_iter()
    .map(|(tfd, data)| EpollItem {
        epfd: ep,
        tfd,
        // The kernel adds EPOLLERR and EPOLLHUP to every item.
        events: (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32,
        data,
    })
    .collect();
    assert_eq!(items, want);
    assert!(opener.epoll_items(&d.fdinfo).is_empty(), "items given once");
    // Registered as the task would, both sources are ready.
    for i in &items {
        sys::epoll_add(fd("epoll"), ours[&(i.tfd as u32)].as_fd(), i.events, i.data).unwrap();
    }
    let mut ready = sys::epoll_wait(fd("epoll"), 8, 0).unwrap();
    ready.sort();
    let mut expected = vec![
        (libc::EPOLLIN as u32, EPOLL_PIPE_DATA),
        (libc::EPOLLIN as u32, EPOLL_EVENTFD_DATA),
    ];
    expected.sort();
    assert_eq!(ready, expected);

    // Pipe and FIFO: the data is there once.
    assert_eq!(read_soon(fd("pipe-r"), 64), PIPE_DATA);
    let mut buf = [0u8; 16];
    let again = dup(fd("pipe-r")).read(&mut buf);
    assert_eq!(again.unwrap_err().kind(), io::ErrorKind::WouldBlock);
    let ino = |f: BorrowedFd<'_>| dup(f).metadata().unwrap().ino();
    assert_eq!(ino(fd("pipe-r")), ino(fd("pipe-w")), "one pipe");
    dup(fd("pipe-w")).write_all(b"x").unwrap();
    assert_eq!(read_soon(fd("pipe-r"), 8), b"x");
    assert_eq!(read_soon(fd("fifo-r"), 64), FIFO_DATA);
    assert_eq!(
        link_of(fd("fifo-r")),
        d.work.join("tp-fds.fifo").to_string_lossy()
    );

    // Unix sockets: the queued data with its boundaries, the peers still paired.
    assert_eq!(read_soon(fd("stream-b"), 64), STREAM_DATA);
    for (from, to) in [("stream-a", "stream-b"), ("stream-b", "stream-a")] {
        sys::send(fd(from), b"ping", 0).unwrap();
        assert_eq!(read_soon(fd(to), 64), b"ping", "{from} -> {to}");
    }
    for (a, b, expected) in [
        ("dgram-a", "dgram-b", &DGRAMS),
        ("seqpacket-a", "seqpacket-b", &PACKETS),
    ] {
        for want in expected {
            let (data, len) = recv_now(fd(b)).unwrap_or_else(|e| panic!("{b}: {e}"));
            assert_eq!((data.as_slice(), len), (*want, want.len()), "{b}");
        }
        assert_eq!(
            recv_now(fd(b)).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        sys::send(fd(a), b"more", 0).unwrap();
        assert_eq!(recv_now(fd(b)).unwrap().0, b"more", "{a} -> {b}");
    }
    let sock_path = d.work.join("tp-fds.sock");
    let listener = UnixListener::from(OwnedFd::from(dup(fd("unix-listen"))));
    assert_eq!(
        listener.local_addr().unwrap().as_pathname(),
        Some(sock_path.as_path())
    );
    listener.set_nonblocking(true).unwrap();
    let mut client = UnixStream::connect(&sock_path).unwrap();
    let (server, _) = accept_soon(|| listener.accept());
    client.write_all(b"u").unwrap();
    assert_eq!(read_soon(server.as_fd(), 8), b"u");

    // Inet: the listeners accept on their old ports, UDP receives on its port.
    let mut listeners = vec![("tcp4-listen", SocketAddr::from(([127, 0, 0, 1], 0)), "tcp4")];
    if d.ports["tcp6"].is_some() {
        listeners.push((
            "tcp6-listen",
            SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
            "tcp6",
        ));
    }
    for (name, mut addr, port) in listeners {
        addr.set_port(d.ports[port].unwrap());
        let l = TcpListener::from(OwnedFd::from(dup(fd(name))));
        assert_eq!(l.local_addr().unwrap(), addr, "{name}");
        let reuse = sys::getsockopt_int(fd(name), libc::SOL_SOCKET, libc::SO_REUSEADDR);
        assert_eq!(reuse.unwrap(), 1, "{name} SO_REUSEADDR");
        l.set_nonblocking(true).unwrap();
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        let (s, _) = accept_soon(|| l.accept());
        c.write_all(b"t").unwrap();
        assert_eq!(read_soon(s.as_fd(), 8), b"t", "{name}");
    }
    let udp = UdpSocket::from(OwnedFd::from(dup(fd("udp4"))));
    let udp_port = d.ports["udp4"].unwrap();
    assert_eq!(udp.local_addr().unwrap().port(), udp_port);
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"udp-probe", ("127.0.0.1", udp_port))
        .unwrap();
    assert_eq!(read_soon(fd("udp4"), 64), b"udp-probe");

    // eventfd, signalfd, timerfd, inotify.
    assert_eq!(read_soon(fd("eventfd"), 8), 42u64.to_ne_bytes());
    let sigfd_info =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd("signalfd").as_raw_fd()))
            .unwrap();
    let usr1 = 1u64 << (libc::SIGUSR1 - 1);
    assert!(
        sigfd_info.contains(&format!("sigmask:\t{usr1:016x}")),
        "{sigfd_info}"
    );
    let (value, interval) = sys::timerfd_gettime(fd("timerfd")).unwrap();
    assert_eq!(interval, (1, 0));
    assert!(value != (0, 0) && value.0 <= 1, "armed: {value:?}");
    let _ = dup(fd("inotify")).read(&mut [0u8; 4096]);
    std::fs::write(d.work.join("tp-fds.probe"), b"probe").unwrap();
    let event = read_soon(fd("inotify"), 4096);
    let wd = i32::from_ne_bytes(event[..4].try_into().unwrap());
    let mask = u32::from_ne_bytes(event[4..8].try_into().unwrap());
    assert_eq!(wd, 1, "the watch keeps its descriptor");
    assert_ne!(mask & libc::IN_CREATE, 0);

    // memfd: name, contents, size, seals.
    let memfd = dup(fd("memfd"));
    assert!(link_of(fd("memfd")).starts_with("/memfd:tp-fds"));
    assert_eq!(memfd.metadata().unwrap().len(), MEMFD_BYTES as u64);
    let mut contents = vec![0u8; MEMFD_BYTES];
    memfd.read_exact_at(&mut contents, 0).unwrap();
    assert!(
        contents == pattern_bytes(MEMFD_BYTES, 0x3E3F_D000_0000_0001),
        "memfd contents"
    );
    assert_eq!(
        sys::fcntl_get(fd("memfd"), libc::F_GET_SEALS).unwrap(),
        libc::F_SEAL_SHRINK
    );

    // Regular, deleted, device and namespace files.
    assert_eq!(
        sys::lseek(fd("regular"), 0, libc::SEEK_CUR).unwrap(),
        Some(4)
    );
    let mut regular = vec![0u8; REGULAR_DATA.len()];
    dup(fd("regular")).read_exact_at(&mut regular, 0).unwrap();
    assert_eq!(regular, REGULAR_DATA);
    assert_eq!(
        link_of(fd("deleted")),
        format!("{} (deleted)", d.work.join("tp-fds.deleted").display())
    );
    let deleted = dup(fd("deleted"));
    assert_eq!(deleted.metadata().unwrap().nlink(), 0);
    let mut contents = vec![0u8; DELETED_BYTES];
    deleted.read_exact_at(&mut contents, 0).unwrap();
    assert!(contents == pattern_bytes(DELETED_BYTES, 0xDE1E_7ED0_0000_0001));
    assert!(
        !d.work.join("tp-fds.deleted").exists(),
        "no file left behind"
    );
    assert_eq!(link_of(fd("devnull")), "/dev/null");
    assert_eq!(
        dup(fd("netns")).metadata().unwrap().ino(),
        std::fs::metadata("/proc/self/ns/net").unwrap().ino()
    );
}

#[test]
fn a_changed_file_is_refused_before_anything_exists() {
    let d = dump_tp_fds("restore-files-changed");
    std::fs::write(d.work.join("tp-fds.regular"), b"longer than it was").unwrap();
    let opener = FileOpener::load(&d.images).unwrap();
    let err = opener.check(Pid(d.pid), &d.fdinfo).unwrap_err().to_string();
    let regular = d
        .listing
        .iter()
        .find(|(_, l)| l.name == "regular")
        .unwrap()
        .0;
    assert!(
        err.contains(&format!("fd {regular} (REG file"))
            && err.contains("tp-fds.regular is now 18 bytes, it was 16"),
        "{err}"
    );
}
