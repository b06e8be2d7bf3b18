//! Dumps of live processes holding each kind of file.
//!
//! Each test builds files in this process, forks a child that keeps exactly those
//! descriptors (same numbers, same open file descriptions) and sleeps, stops it with
//! SIGSTOP and dumps it. A guard kills and reaps every child, also when a test fails.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use criu_images::{pb, ImageKind, ImageReader};

use super::*;

/// A forked child holding some of our descriptors; killed and reaped on drop.
struct Child {
    pid: Pid,
}

impl Child {
    /// Forks a child keeping `fds`; returns once it has closed the others and stopped.
    fn holding(fds: &[RawFd]) -> Child {
        let child = Child {
            pid: sys::fork_holding_fds(fds).expect("fork"),
        };
        child.wait_state('T');
        child
    }

    /// Waits (at most 5 s) until /proc says the child is in `state`.
    fn wait_state(&self, state: char) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = ProcDir::open(self.pid)
                .and_then(|p| p.stat())
                .map(|s| s.state)
                .unwrap_or('?');
            if now == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "child {} stayed in state {now}, expected {state}",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn cont(&self) {
        sys::kill(self.pid, libc::SIGCONT).expect("SIGCONT");
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = sys::kill(self.pid, libc::SIGKILL);
        let _ = sys::wait_timeout(self.pid, Duration::from_secs(5));
    }
}

use crate::testutil::{raw, TempDir};

fn ino(f: &impl AsFd) -> u64 {
    File::from(f.as_fd().try_clone_to_owned().unwrap())
        .metadata()
        .unwrap()
        .ino()
}

/// The fdinfo entry of descriptor `fd` and the files.img entry it points at.
fn entry_for<'a>(
    fdinfo: &'a [pb::FdinfoEntry],
    table: &'a FileTable,
    fd: RawFd,
) -> (&'a pb::FdinfoEntry, &'a pb::FileEntry) {
    let fe = fdinfo
        .iter()
        .find(|e| e.fd == fd as u32)
        .unwrap_or_else(|| panic!("fd {fd} dumped"));
    let file = table
        .entries()
        .iter()
        .find(|e| e.id == fe.id && e.r#type == fe.r#type)
        .unwrap_or_else(|| panic!("file entry {} for fd {fd}", fe.id));
    (fe, file)
}

/// Reads every (entry, extra bytes) of an image whose entries are followed by data
/// given by `extra_len`.
fn read_with_data<M: prost::Message + Default>(
    path: &Path,
    extra_len: impl Fn(&M) -> usize,
) -> Vec<(M, Vec<u8>)> {
    let mut r = ImageReader::open(path).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    while let Some(m) = r.next_entry::<M>().unwrap() {
        let n = extra_len(&m);
        let data = r.read_extra(n as u64, "data").unwrap();
        out.push((m, data));
    }
    out
}

fn read_entries<M: prost::Message + Default>(path: &Path) -> Vec<M> {
    let mut r = ImageReader::open(path).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    while let Some(m) = r.next_entry::<M>().unwrap() {
        out.push(m);
    }
    out
}

#[test]
fn pipe_data_is_saved_and_left_in_place() {
    let (r, w) = sys::pipe(libc::O_NONBLOCK).unwrap();
    File::from(w.try_clone().unwrap())
        .write_all(b"hello-pipe")
        .unwrap();
    let child = Child::holding(&[raw(&r), raw(&w)]);

    let mut table = FileTable::new();
    FileTable::check_supported(child.pid, false).unwrap();
    let fdinfo = table.dump_task_fds(child.pid).unwrap();
    assert_eq!(fdinfo.len(), 2, "{fdinfo:?}");
    let (rfe, rfile) = entry_for(&fdinfo, &table, raw(&r));
    let (wfe, wfile) = entry_for(&fdinfo, &table, raw(&w));
    assert_eq!(rfe.r#type, pb::FdTypes::Pipe as i32);
    assert_eq!(
        rfe.flags,
        libc::FD_CLOEXEC as u32,
        "pipe2(O_CLOEXEC) shows as FD_CLOEXEC"
    );
    assert_ne!(rfe.id, wfe.id);
    let (rp, wp) = (rfile.pipe.as_ref().unwrap(), wfile.pipe.as_ref().unwrap());
    assert_eq!(rp.pipe_id as u64, ino(&r));
    assert_eq!(rp.pipe_id, wp.pipe_id);
    assert_eq!(rp.flags, libc::O_NONBLOCK as u32);
    assert_eq!(wp.flags, (libc::O_WRONLY | libc::O_NONBLOCK) as u32);

    let dir = TempDir::new("pipe");
    table.write_images(dir.path()).unwrap();
    let data = read_with_data::<pb::PipeDataEntry>(&dir.path().join("pipes-data.img"), |e| {
        e.bytes as usize
    });
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].0.pipe_id, rp.pipe_id);
    assert_eq!(
        data[0].0.size,
        Some(sys::pipe_size(r.as_fd(), None).unwrap() as u32)
    );
    assert_eq!(data[0].1, b"hello-pipe");

    // Still in the pipe: the dump copied it without consuming it.
    child.cont();
    let mut buf = [0u8; 64];
    let n = File::from(r.try_clone().unwrap()).read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello-pipe");
}

#[test]
fn socketpair_peers_and_queues() {
    let (a, b) = UnixStream::pair().unwrap();
    (&a).write_all(b"hello-sock").unwrap();
    (&a).write_all(b"-more").unwrap();
    let (da, db) = UnixDatagram::pair().unwrap();
    da.send(b"one").unwrap();
    da.send(b"two!").unwrap();
    let child = Child::holding(&[raw(&a), raw(&b), raw(&da), raw(&db)]);

    let mut table = FileTable::new();
    let fdinfo = table.dump_task_fds(child.pid).unwrap();
    let (_, fa) = entry_for(&fdinfo, &table, raw(&a));
    let (_, fb) = entry_for(&fdinfo, &table, raw(&b));
    let (ua, ub) = (fa.usk.as_ref().unwrap(), fb.usk.as_ref().unwrap());
    assert_eq!(ua.ino as u64, ino(&a));
    assert_eq!(ua.peer, ub.ino, "each end points at the other");
    assert_eq!(ub.peer, ua.ino);
    assert_eq!((ua.r#type, ua.state), (libc::SOCK_STREAM as u32, 1));
    assert_eq!(ua.flags, libc::O_RDWR as u32);
    assert!(ua.name.is_empty());
    assert_eq!(ua.opts.so_rcvlowat, Some(1));
    let (_, fdb) = entry_for(&fdinfo, &table, raw(&db));
    let udb = fdb.usk.as_ref().unwrap();
    assert_eq!(udb.r#type, libc::SOCK_DGRAM as u32);

    let dir = TempDir::new("sockets");
    table.write_images(dir.path()).unwrap();
    let queues = read_with_data::<pb::SkPacketEntry>(&dir.path().join("sk-queues.img"), |e| {
        e.length as usize
    });
    let stream: Vec<u8> = queues
        .iter()
        .filter(|(e, _)| e.id_for == fb.id)
        .flat_map(|(_, d)| d.clone())
        .collect();
    assert_eq!(stream, b"hello-sock-more");
    let dgrams: Vec<&[u8]> = queues
        .iter()
        .filter(|(e, _)| e.id_for == fdb.id)
        .map(|(_, d)| d.as_slice())
        .collect();
    assert_eq!(
        dgrams,
        vec![&b"one"[..], b"two!"],
        "one entry per datagram, in order"
    );
    assert!(queues.iter().all(|(e, d)| e.length as usize == d.len()));

    // Nothing consumed, and the peek offset is back to "off".
    assert_eq!(
        sys::getsockopt_int(b.as_fd(), libc::SOL_SOCKET, 42).unwrap(),
        -1
    );
    b.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let n = (&b).read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello-sock-more");
    let n = db.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"one");
    drop(child);
}

#[test]
fn shared_open_files_get_one_id() {
    let dir = TempDir::new("shared");
    let path = dir.path().join("data.txt");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.write_all(b"0123456789").unwrap();
    f.seek(SeekFrom::Start(4)).unwrap();
    let dup = f.try_clone().unwrap(); // same open file description
    let other = File::open(&path).unwrap(); // another one on the same inode
    let fds = [raw(&f), raw(&dup), raw(&other)];
    let c1 = Child::holding(&fds);
    let c2 = Child::holding(&fds);

    let mut table = FileTable::new();
    let t1 = table.dump_task_fds(c1.pid).unwrap();
    let t2 = table.dump_task_fds(c2.pid).unwrap();
    let id = |t: &[pb::FdinfoEntry], fd: RawFd| t.iter().find(|e| e.fd == fd as u32).unwrap().id;
    assert_eq!(id(&t1, raw(&f)), id(&t1, raw(&dup)), "dup shares the id");
    assert_ne!(
        id(&t1, raw(&f)),
        id(&t1, raw(&other)),
        "a second open() is another file"
    );
    for fd in fds {
        assert_eq!(id(&t1, fd), id(&t2, fd), "fork shares the ids");
    }
    let regs: Vec<&pb::RegFileEntry> = table
        .entries()
        .iter()
        .filter_map(|e| e.reg.as_ref())
        .collect();
    assert_eq!(regs.len(), 2, "{regs:?}");
    let shared = regs.iter().find(|r| r.id == id(&t1, raw(&f))).unwrap();
    assert_eq!(shared.path(), path);
    assert_eq!(shared.pos, 4);
    assert_eq!(shared.size, Some(10));
    assert_eq!(shared.flags & libc::O_ACCMODE as u32, libc::O_RDWR as u32);
    assert_eq!(shared.mode, Some(f.metadata().unwrap().mode()));
}

/// A ring at rest with nothing registered passes the checks before the freeze; one with
/// a registered file is refused by name, with what fdinfo shows and why.
#[test]
fn io_uring_with_a_registered_file_is_refused_by_name() {
    let (ring, registered) = match (sys::io_uring_setup(4), sys::io_uring_setup(4)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("skipped: io_uring_setup failed here ({e})");
            return;
        }
    };
    let (r, _w) = sys::pipe(0).unwrap();
    sys::ring_register_files(registered.as_fd(), &[raw(&r)]).unwrap();
    let child = Child::holding(&[raw(&ring)]);
    FileTable::check_supported(child.pid, false).unwrap();
    drop(child);
    let child = Child::holding(&[raw(&r), raw(&registered)]);
    let err = FileTable::check_supported(child.pid, false).unwrap_err();
    match &err {
        FileError::Unsupported { pid, fd, kind } => {
            assert_eq!(*pid, child.pid);
            assert_eq!(*fd, raw(&registered));
            assert!(kind.contains("io_uring"), "{kind}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&child.pid.to_string())
            && msg.contains(&format!("fd {}", raw(&registered)))
            && msg.contains("4 SQ / 8 CQ entries")
            && msg.contains("1 registered files (fdinfo names them"),
        "{msg}"
    );
    assert!(matches!(
        FileTable::new().dump_task_fds(child.pid),
        Err(FileError::Unsupported { .. })
    ));
}

#[test]
fn connected_tcp_is_refused_with_addresses() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let child = Child::holding(&[raw(&server)]);
    let err = FileTable::check_supported(child.pid, false).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, FileError::Unsupported { fd, .. } if fd == raw(&server)),
        "{msg}"
    );
    assert!(msg.contains("ESTABLISHED"), "{msg}");
    assert!(
        msg.contains(&listener.local_addr().unwrap().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains(&client.local_addr().unwrap().to_string()),
        "{msg}"
    );
    assert!(msg.contains("--tcp-established"), "{msg}");
}

#[test]
fn a_connection_is_refused_before_the_freeze_when_the_lock_tool_is_missing() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let child = Child::holding(&[raw(&server)]);
    let mut checks = TreeChecks::new(&[child.pid], false);
    checks.set_tcp(true, false);
    // Installed here: the connection passes.
    checks.missing_lock_tool = None;
    checks.check(child.pid).unwrap();
    // As set_network_lock finds it on a machine without nftables.
    checks.missing_lock_tool = Some("nft");
    let msg = checks.check(child.pid).unwrap_err().to_string();
    assert!(
        msg.contains("`nft`") && msg.contains("--network-lock"),
        "{msg}"
    );
    // --tcp-close takes no lock (set_network_lock is not called for it).
    let mut closing = TreeChecks::new(&[child.pid], false);
    closing.set_tcp(true, false);
    closing.check(child.pid).unwrap();
}

#[test]
fn unix_peer_outside_the_tree_is_refused() {
    let (a, b) = UnixStream::pair().unwrap();
    // Both ends in the tree: fine.
    let both = Child::holding(&[raw(&a), raw(&b)]);
    FileTable::check_supported(both.pid, false).unwrap();
    drop(both);
    let child = Child::holding(&[raw(&a)]);
    // Refused before the freeze, naming the kind...
    let err = FileTable::check_supported(child.pid, false).unwrap_err();
    assert!(
        matches!(&err, FileError::Unsupported { fd, kind, .. }
            if *fd == raw(&a) && kind.contains(kinds::Kind::UnixPeerOutside.name())),
        "{err}"
    );
    // ...and by the frozen stage once every task is dumped.
    let mut table = FileTable::new();
    table.dump_task_fds(child.pid).unwrap();
    let err = table.check_complete().unwrap_err();
    assert!(
        matches!(&err, FileError::Unsupported { pid, fd, kind } if *pid == child.pid && *fd == raw(&a) && kind.contains("outside")),
        "{err}"
    );
    let dir = TempDir::new("peer");
    assert!(table.write_images(dir.path()).is_err());
}

#[test]
fn deleted_files_become_ghosts() {
    let dir = TempDir::new("ghost");
    let small_path = dir.path().join("small");
    let big_path = dir.path().join("big");
    let small = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&small_path)
        .unwrap();
    (&small).write_all(b"ghost data").unwrap();
    // A sparse file: data, a hole, data.
    let big = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&big_path)
        .unwrap();
    big.set_len(64 << 10).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&big, b"head", 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&big, b"tail", (64 << 10) - 4).unwrap();
    std::fs::remove_file(&small_path).unwrap();
    std::fs::remove_file(&big_path).unwrap();
    let wronly = OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}", raw(&small)))
        .unwrap();
    let child = Child::holding(&[raw(&small), raw(&big), raw(&wronly)]);

    let mut table = FileTable::new();
    FileTable::check_supported(child.pid, false).unwrap();
    let fdinfo = table.dump_task_fds(child.pid).unwrap();
    let (_, fs) = entry_for(&fdinfo, &table, raw(&small));
    assert_eq!(
        fs.reg.as_ref().unwrap().path(),
        small_path,
        "the \" (deleted)\" suffix is dropped"
    );
    let out = TempDir::new("ghost-out");
    table.write_images(out.path()).unwrap();
    let remaps = read_entries::<pb::RemapFilePathEntry>(&out.path().join("remap-fpath.img"));
    assert_eq!(remaps.len(), 3, "{remaps:?}");
    assert!(remaps
        .iter()
        .all(|r| r.remap_type == Some(pb::RemapType::Ghost as i32)));
    let small_ghost = remaps.iter().find(|r| r.orig_id == fs.id).unwrap().remap_id;

    let mut r =
        ImageReader::open(out.path().join(format!("ghost-file-{small_ghost:x}.img"))).unwrap();
    let g: pb::GhostFileEntry = r.next_entry().unwrap().unwrap();
    assert_eq!(g.chunks, None);
    assert_eq!(r.read_extra(10, "data").unwrap(), b"ghost data");

    let (_, fbig) = entry_for(&fdinfo, &table, raw(&big));
    let big_ghost = remaps
        .iter()
        .find(|r| r.orig_id == fbig.id)
        .unwrap()
        .remap_id;
    let mut r =
        ImageReader::open(out.path().join(format!("ghost-file-{big_ghost:x}.img"))).unwrap();
    let g: pb::GhostFileEntry = r.next_entry().unwrap().unwrap();
    assert_eq!((g.chunks, g.size), (Some(true), Some(64 << 10)));
    let mut rebuilt = vec![0u8; 64 << 10];
    while let Some(c) = r.next_entry::<pb::GhostChunkEntry>().unwrap() {
        let data = r.read_extra(c.len, "data").unwrap();
        rebuilt[c.off as usize..(c.off + c.len) as usize].copy_from_slice(&data);
    }
    assert_eq!(&rebuilt[..4], b"head");
    assert_eq!(&rebuilt[(64 << 10) - 4..], b"tail");

    let mut limited = FileTable::new();
    limited.set_ghost_limit(4);
    let err = limited.dump_task_fds(child.pid).unwrap_err();
    assert!(err.to_string().contains("ghost file limit"), "{err}");
}

#[test]
fn epoll_targets_follow_dups() {
    let (r, w) = sys::pipe(0).unwrap();
    let r2 = r.try_clone().unwrap();
    let ep = sys::epoll_create().unwrap();
    sys::epoll_add(ep.as_fd(), r.as_fd(), libc::EPOLLIN as u32, 0x1234).unwrap();
    sys::epoll_add(ep.as_fd(), w.as_fd(), libc::EPOLLOUT as u32, 7).unwrap();
    // The child keeps the epoll, a dup of the read end (not the fd it was added under)
    // and the write end.
    let child = Child::holding(&[raw(&ep), raw(&r2), raw(&w)]);
    let mut table = FileTable::new();
    let fdinfo = table.dump_task_fds(child.pid).unwrap();
    let (_, fe) = entry_for(&fdinfo, &table, raw(&ep));
    let epfd = fe.epfd.as_ref().unwrap();
    let mut tfds: Vec<(u32, u64)> = epfd.tfd.iter().map(|t| (t.tfd, t.data)).collect();
    tfds.sort();
    let mut expected = vec![(raw(&r2) as u32, 0x1234), (raw(&w) as u32, 7)];
    expected.sort();
    assert_eq!(tfds, expected);
    assert!(epfd.tfd.iter().all(|t| t.inode == Some(ino(&r))));

    // Without any fd on the read end, the epoll watches a file the task cannot name.
    let lost = Child::holding(&[raw(&ep), raw(&w)]);
    let err = FileTable::new().dump_task_fds(lost.pid).unwrap_err();
    assert!(err.to_string().contains("no longer holds"), "{err}");
}

/// The files of one child holding every supported kind, dumped and written.
struct Everything {
    _child: Child,
    table: FileTable,
    fdinfo: Vec<pb::FdinfoEntry>,
    out: TempDir,
    fds: Vec<(&'static str, RawFd)>,
    _keep: Vec<OwnedFd>,
    /// Removed last, after the child is gone (it holds the socket file and a watch).
    _scratch: TempDir,
}

fn dump_everything(name: &str) -> Everything {
    let scratch = TempDir::new(&format!("{name}-scratch"));
    let mut keep: Vec<OwnedFd> = Vec::new();
    let mut fds = Vec::new();
    let mut add = |label: &'static str, fd: OwnedFd| {
        fds.push((label, fd.as_raw_fd()));
        keep.push(fd);
    };
    let (r, w) = sys::pipe(0).unwrap();
    File::from(w.try_clone().unwrap())
        .write_all(b"hello-pipe")
        .unwrap();
    let ep = sys::epoll_create().unwrap();
    sys::epoll_add(ep.as_fd(), r.as_fd(), libc::EPOLLIN as u32, 7).unwrap();
    add("pipe-r", r);
    add("pipe-w", w);
    add("epoll", ep);
    let (a, b) = UnixStream::pair().unwrap();
    (&a).write_all(b"hello-sock").unwrap();
    add("sk-a", a.into());
    add("sk-b", b.into());
    add("eventfd", sys::eventfd(42, 0).unwrap());
    add(
        "timerfd",
        sys::timerfd(
            libc::CLOCK_MONOTONIC,
            Duration::from_secs(100),
            Duration::from_secs(1),
        )
        .unwrap(),
    );
    add("signalfd", sys::signalfd(1 << (libc::SIGUSR2 - 1)).unwrap());
    let inotify = sys::inotify_init().unwrap();
    sys::inotify_add_watch(
        inotify.as_fd(),
        scratch.path(),
        libc::IN_CREATE | libc::IN_DELETE,
    )
    .unwrap();
    add("inotify", inotify);
    let memfd = sys::memfd_create("criu-rs-test", libc::MFD_ALLOW_SEALING).unwrap();
    File::from(memfd.try_clone().unwrap())
        .write_all(b"memfd contents")
        .unwrap();
    add("memfd", memfd);
    let data = scratch.path().join("data.txt");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&data)
        .unwrap();
    f.write_all(b"0123456789").unwrap();
    f.seek(SeekFrom::Start(4)).unwrap();
    add("file", f.into());
    add("devnull", File::open("/dev/null").unwrap().into());
    add("dir", File::open(scratch.path()).unwrap().into());
    add(
        "tcp-listen",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().into(),
    );
    add(
        "tcp6-listen",
        std::net::TcpListener::bind("[::1]:0")
            .map(OwnedFd::from)
            .unwrap_or_else(|_| File::open("/dev/null").unwrap().into()),
    );
    add(
        "udp",
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap().into(),
    );
    {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(format!(
            "criu-rs-test-{}-{name}",
            std::process::id()
        ))
        .unwrap();
        add(
            "unix-listen",
            UnixListener::bind_addr(&addr).unwrap().into(),
        );
    }
    add(
        "unix-path-dgram",
        UnixDatagram::bind(scratch.path().join("sock"))
            .unwrap()
            .into(),
    );
    let ns = File::open("/proc/self/ns/net").unwrap();
    let ns_ino = ns.metadata().unwrap().ino();
    add("netns", ns.into());
    let raws: Vec<RawFd> = fds.iter().map(|&(_, fd)| fd).collect();
    let child = Child::holding(&raws);

    FileTable::check_supported(child.pid, false).unwrap();
    let mut table = FileTable::new();
    table.set_ns_id(libc::CLONE_NEWNET as u32, ns_ino, 2);
    let fdinfo = table.dump_task_fds(child.pid).unwrap();
    assert_eq!(fdinfo.len(), fds.len(), "{fdinfo:?}");
    let out = TempDir::new(name);
    table.write_images(out.path()).unwrap();
    let kind = ImageKind::by_name("FDINFO").unwrap();
    let mut w = criu_images::ImageWriter::create(out.path().join(kind.file_name(1)), kind).unwrap();
    for e in &fdinfo {
        w.write_entry(e).unwrap();
    }
    w.finish().unwrap();
    Everything {
        _child: child,
        table,
        fdinfo,
        out,
        fds,
        _keep: keep,
        _scratch: scratch,
    }
}

impl Everything {
    fn file(&self, label: &str) -> &pb::FileEntry {
        let fd = self
            .fds
            .iter()
            .find(|(l, _)| *l == label)
            .unwrap_or_else(|| panic!("no {label}"))
            .1;
        entry_for(&self.fdinfo, &self.table, fd).1
    }
}

#[test]
fn every_supported_kind_is_dumped() {
    let e = dump_everything("kinds");
    let efd = e.file("eventfd").efd.as_ref().unwrap();
    assert_eq!(efd.counter, 42);
    assert_eq!(efd.flags, libc::O_RDWR as u32);
    let tfd = e.file("timerfd").tfd.as_ref().unwrap();
    assert_eq!(
        (tfd.clockid, tfd.isec, tfd.insec),
        (libc::CLOCK_MONOTONIC as u32, 1, 0)
    );
    assert!(tfd.vsec >= 90 && tfd.vsec <= 100, "{tfd:?}");
    assert_eq!(
        e.file("signalfd").sgfd.as_ref().unwrap().sigmask,
        1 << (libc::SIGUSR2 - 1)
    );
    let ify = e.file("inotify").ify.as_ref().unwrap();
    assert_eq!(ify.wd.len(), 1);
    assert_eq!(
        ify.wd[0].mask & (libc::IN_CREATE | libc::IN_DELETE),
        libc::IN_CREATE | libc::IN_DELETE
    );
    assert!(ify.wd[0].f_handle.handle.len() >= 16 && ify.wd[0].f_handle.bytes > 0);
    // The path hint CRIU's restore reopens the watch by, and the mount it came through.
    assert_eq!(
        ify.wd[0].f_handle.path.as_deref().map(criu_images::path_of),
        Some(e._scratch.path().canonicalize().unwrap().as_path())
    );
    assert!(ify.wd[0].f_handle.mnt_id.is_some());
    let ep = e.file("epoll").epfd.as_ref().unwrap();
    let pipe_r = e.fds.iter().find(|(l, _)| *l == "pipe-r").unwrap().1;
    assert_eq!(
        (ep.tfd.len(), ep.tfd[0].tfd, ep.tfd[0].data),
        (1, pipe_r as u32, 7)
    );
    let memfd = e.file("memfd").memfd.as_ref().unwrap();
    let inodes = e.table.memfds();
    assert_eq!(inodes.len(), 1);
    assert_eq!(
        (
            inodes[0].inode_id,
            inodes[0].name.as_slice(),
            inodes[0].size
        ),
        (memfd.inode_id, &b"criu-rs-test"[..], 14)
    );
    let mut contents = [0u8; 14];
    std::os::unix::fs::FileExt::read_exact_at(
        &File::from(inodes[0].file().try_clone_to_owned().unwrap()),
        &mut contents,
        0,
    )
    .unwrap();
    assert_eq!(&contents, b"memfd contents");
    let file = e.file("file").reg.as_ref().unwrap();
    assert_eq!((file.pos, file.size), (4, Some(10)));
    let devnull = e.file("devnull").reg.as_ref().unwrap();
    assert_eq!(
        (devnull.name.as_slice(), devnull.size),
        (&b"/dev/null"[..], None)
    );
    let dir = e.file("dir").reg.as_ref().unwrap();
    assert_eq!(dir.mode.map(|m| m & libc::S_IFMT), Some(libc::S_IFDIR));
    let tcp = e.file("tcp-listen").isk.as_ref().unwrap();
    assert_eq!(
        (tcp.state, tcp.proto, tcp.family),
        (10, libc::IPPROTO_TCP as u32, libc::AF_INET as u32)
    );
    assert_eq!(tcp.src_addr, vec![u32::from_ne_bytes([127, 0, 0, 1])]);
    assert_ne!(tcp.src_port, 0);
    assert_eq!(tcp.backlog, 128, "std listens with a backlog of 128");
    let udp = e.file("udp").isk.as_ref().unwrap();
    assert_eq!(
        (udp.proto, udp.r#type),
        (libc::IPPROTO_UDP as u32, libc::SOCK_DGRAM as u32)
    );
    let ul = e.file("unix-listen").usk.as_ref().unwrap();
    assert_eq!((ul.state, ul.name.first()), (10, Some(&0u8)));
    assert_eq!(ul.ns_id, Some(2), "the socket's network namespace id");
    let ud = e.file("unix-path-dgram").usk.as_ref().unwrap();
    assert!(ud.name.starts_with(b"/"));
    assert!(ud.file_perms.is_some());
    let nsf = e.file("netns").nsf.as_ref().unwrap();
    assert_eq!((nsf.ns_id, nsf.ns_cflag), (2, libc::CLONE_NEWNET as u32));
    let memfds = read_entries::<pb::MemfdInodeEntry>(&e.out.path().join("memfd.img"));
    assert_eq!(memfds.len(), 1);
    assert_eq!(
        memfds[0].seals, 0,
        "created with MFD_ALLOW_SEALING and never sealed"
    );
    // Every fdinfo entry points at a files.img entry of its type.
    for fe in &e.fdinfo {
        assert!(
            e.table
                .entries()
                .iter()
                .any(|f| f.id == fe.id && f.r#type == fe.r#type),
            "{fe:?}"
        );
    }
    // Ids are unique in files.img.
    let mut ids: Vec<u32> = e.table.entries().iter().map(|f| f.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), e.table.entries().len());
}

/// Debian's `crit` (CRIU 3.17), an independent reader, decodes what we write.
#[test]
fn debian_crit_decodes_our_images() {
    let crit = Path::new("/usr/bin/crit");
    if !crit.exists() {
        eprintln!("skipped: /usr/bin/crit is not installed");
        return;
    }
    let e = dump_everything("crit");
    let decode = |name: &str| -> String {
        let out = Command::new(crit)
            .args(["decode", "-i"])
            .arg(e.out.path().join(name))
            .output()
            .expect("run crit");
        assert!(
            out.status.success(),
            "crit decode {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let files = decode("files.img");
    for ty in [
        "\"REG\"",
        "\"PIPE\"",
        "\"UNIXSK\"",
        "\"INETSK\"",
        "\"EVENTFD\"",
        "\"EVENTPOLL\"",
        "\"SIGNALFD\"",
        "\"TIMERFD\"",
        "\"INOTIFY\"",
        "\"MEMFD\"",
        "\"NS\"",
    ] {
        assert!(
            files.contains(ty),
            "{ty} missing from crit's files.img output"
        );
    }
    assert!(files.contains("\"magic\": \"FILES\""), "{files}");
    assert!(decode("fdinfo-1.img").contains("\"magic\": \"FDINFO\""));
    let pipes = decode("pipes-data.img");
    assert!(pipes.contains("\"bytes\": 10"), "{pipes}");
    let queues = decode("sk-queues.img");
    assert!(queues.contains("\"length\": 10"), "{queues}");
    assert!(decode("memfd.img").contains("criu-rs-test"));
    if e.out.path().join("tty-info.img").exists() {
        assert!(decode("tty-info.img").contains("\"PTY\""));
    }
}

fn me() -> Pid {
    Pid(std::process::id() as i32)
}

/// The regular file entry `table` holds under `id`.
fn reg_entry(table: &FileTable, id: u32) -> pb::RegFileEntry {
    let entry = table.entries().iter().find(|e| e.id == id).unwrap();
    entry.reg.clone().unwrap()
}

/// A file mapped by a name since unlinked, that has another name in the same directory
/// (as glibc's sem_open leaves a semaphore): saved under that other name. One whose
/// other name is elsewhere is still refused.
#[test]
fn a_deleted_file_with_another_name_in_its_directory_is_saved_under_it() {
    let dir = std::env::temp_dir().join(format!("criu-rs-othername-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
    let deleted_with = |name: &str, other: &Path| {
        let temporary = dir.join(name);
        std::fs::write(&temporary, [0u8; 32]).unwrap();
        let file = File::open(&temporary).unwrap();
        std::fs::hard_link(&temporary, other).unwrap();
        std::fs::remove_file(&temporary).unwrap();
        (file, format!("{} (deleted)", temporary.display()))
    };
    let (sem, shown) = deleted_with("sem.XyZ123", &dir.join("sem.mp-name"));
    let (moved, moved_shown) = deleted_with("moved.tmp", &dir.join("elsewhere/moved"));
    let mut table = FileTable::new();
    let found = table.reg_file(me(), Path::new(&shown), Some(sem.as_fd()), 0, 0);
    let refused = table.reg_file(me(), Path::new(&moved_shown), Some(moved.as_fd()), 0, 0);
    std::fs::remove_dir_all(&dir).unwrap();
    let reg = reg_entry(&table, found.unwrap());
    assert_eq!(reg.name, dir.join("sem.mp-name").as_os_str().as_bytes());
    assert!(
        matches!(refused, Err(FileError::UnsupportedPath { .. })),
        "{refused:?}"
    );
}

#[test]
fn reg_file_by_path_reuses_entries() {
    let mut table = FileTable::new();
    let a = table.reg_file(me(), Path::new("/"), None, 0, 0).unwrap();
    let b = table.reg_file(me(), Path::new("/"), None, 0, 0).unwrap();
    let c = table
        .reg_file(me(), Path::new("/dev/null"), None, libc::O_RDWR as u32, 0)
        .unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let exe = File::open("/proc/self/exe").unwrap();
    let path = std::fs::read_link("/proc/self/exe").unwrap();
    let id = table
        .reg_file(me(), &path, Some(exe.as_fd()), 0, 0)
        .unwrap();
    let reg = reg_entry(&table, id);
    assert_eq!(reg.size, Some(exe.metadata().unwrap().len()));
    assert!(matches!(
        table.reg_file(me(), Path::new("/no/such/file"), None, 0, 0),
        Err(FileError::Path { .. })
    ));
}

#[test]
fn a_table_serves_several_tasks_and_new_sockets() {
    let (a, b) = UnixStream::pair().unwrap();
    let c1 = Child::holding(&[raw(&a), raw(&b)]);
    let mut table = FileTable::new();
    table.dump_task_fds(c1.pid).unwrap();
    // Created after the table read the kernel's unix socket list.
    let (c, d) = UnixStream::pair().unwrap();
    let c2 = Child::holding(&[raw(&c), raw(&d)]);
    let t2 = table.dump_task_fds(c2.pid).unwrap();
    let (_, fc) = entry_for(&t2, &table, raw(&c));
    assert_eq!(fc.usk.as_ref().unwrap().peer as u64, ino(&d));
    table.check_complete().unwrap();
}

#[test]
fn o_path_files_are_paths() {
    let dir = TempDir::new("opath");
    let fifo = dir.path().join("fifo");
    // A FIFO opened O_PATH is no pipe: it is only a reference to the node.
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let opath = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&fifo)
        .unwrap();
    let child = Child::holding(&[raw(&opath)]);
    let mut table = FileTable::new();
    let t = table.dump_task_fds(child.pid).unwrap();
    let (fe, file) = entry_for(&t, &table, raw(&opath));
    assert_eq!(fe.r#type, pb::FdTypes::Reg as i32);
    let reg = file.reg.as_ref().unwrap();
    assert_eq!(reg.path(), fifo);
    assert_ne!(reg.flags & libc::O_PATH as u32, 0);
}

#[test]
fn semaphore_eventfd_is_refused() {
    let efd = sys::eventfd(3, libc::EFD_SEMAPHORE).unwrap();
    let child = Child::holding(&[raw(&efd)]);
    let err = FileTable::check_supported(child.pid, false).unwrap_err();
    assert!(err.to_string().contains("semaphore"), "{err}");
}

#[test]
fn proc_pid_files_of_processes_outside_the_tree_are_reopened_by_path() {
    // Of a live process (ours, outside the child's tree), as CRIU: by its path.
    let status = File::open("/proc/self/status").unwrap();
    let meminfo = File::open("/proc/meminfo").unwrap();
    let child = Child::holding(&[raw(&meminfo), raw(&status)]);
    FileTable::check_supported(child.pid, false).unwrap();
    drop(child);
    // Of a process that has exited: a dead-pid remap.
    let dead = Child::holding(&[]);
    let dead_status = File::open(format!("/proc/{}/status", dead.pid.0)).unwrap();
    drop(dead);
    let child = Child::holding(&[raw(&dead_status)]);
    FileTable::check_supported(child.pid, false).unwrap();
}

#[test]
fn a_slave_whose_master_is_in_the_tree_is_half_of_a_pair() {
    let Some((master, slave)) = open_pty() else {
        eprintln!("skipped: no /dev/ptmx here");
        return;
    };
    let on_slave = Child::holding(&[raw(&slave)]);
    let on_master = Child::holding(&[raw(&master)]);
    drop((master, slave));
    // With the master's holder in the tree, the slave is not a shell job's terminal
    // (so -j is not needed): it is half of a pty pair, made again with its master.
    for shell_job in [false, true] {
        let checks = TreeChecks::new(&[on_slave.pid, on_master.pid], shell_job);
        checks.check(on_slave.pid).unwrap();
    }
    // Without it, the slave is a shell job's terminal.
    TreeChecks::new(&[on_slave.pid], true)
        .check(on_slave.pid)
        .unwrap();
}

/// Data queued on a socket whose sender is gone: an established end (a datagram pair
/// whose other end closed after sending) is dumped, the restore sends it again from a
/// fresh pair's other end; so is a named socket, which anyone can send to again. What
/// no restore can send again (no peer, not established, unnamed or stream-like) is
/// [`kinds::Kind::UnixOrphanQueued`], which both sides refuse.
#[test]
fn queued_data_whose_sender_is_gone() {
    let (gone, left) = UnixDatagram::pair().unwrap();
    gone.send(b"left behind").unwrap();
    drop(gone);
    let child = Child::holding(&[raw(&left)]);
    FileTable::check_supported(child.pid, false).unwrap();
    FileTable::new().dump_task_fds(child.pid).unwrap();
    let scratch = TempDir::new("orphan-named");
    let path = scratch.path().join("named");
    let named = UnixDatagram::bind(&path).unwrap();
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"to a name", &path)
        .unwrap();
    let child = Child::holding(&[raw(&named)]);
    FileTable::check_supported(child.pid, false).unwrap();
    FileTable::new().dump_task_fds(child.pid).unwrap();
    // (peer, state, stream-like, unnamed): only what has no sender left is an orphan.
    const EST: u32 = 1;
    const CLOSE: u32 = 7;
    assert!(kinds::unix_orphan_with_data(0, CLOSE, true, false));
    assert!(kinds::unix_orphan_with_data(0, CLOSE, false, true));
    assert!(!kinds::unix_orphan_with_data(0, CLOSE, false, false));
    assert!(!kinds::unix_orphan_with_data(0, EST, false, true));
    assert!(!kinds::unix_orphan_with_data(0, EST, true, true));
    assert!(!kinds::unix_orphan_with_data(9, CLOSE, true, true));
}

#[test]
fn a_socket_of_another_network_namespace_is_refused() {
    // A thread of our own enters a new network namespace and makes a socket there (as
    // a program does after setns); the process stays in ours.
    let made = std::thread::spawn(|| -> std::io::Result<(OwnedFd, u64)> {
        sys::unshare(libc::CLONE_NEWNET)?;
        let ns = File::open("/proc/thread-self/ns/net")?.metadata()?.ino();
        Ok((sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?, ns))
    })
    .join()
    .unwrap();
    let (sock, foreign) = match made {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skipped: cannot make a network namespace here ({e})");
            return;
        }
    };
    let ours = File::open("/proc/self/ns/net")
        .unwrap()
        .metadata()
        .unwrap()
        .ino();
    assert_ne!(ours, foreign);
    let child = Child::holding(&[raw(&sock)]);
    // Before the freeze: neither the task's namespace nor ours.
    let err = FileTable::check_supported(child.pid, false).unwrap_err();
    assert!(
        err.to_string()
            .contains(kinds::Kind::SocketForeignNetns.name()),
        "{err}"
    );
    // And when the tree is frozen, against every namespace of the dump.
    let mut table = FileTable::new();
    table.set_ns_id(libc::CLONE_NEWNET as u32, ours, 1);
    let err = table.dump_task_fds(child.pid).unwrap_err();
    assert!(
        matches!(&err, FileError::Unsupported { fd, kind, .. }
            if *fd == raw(&sock) && kind.contains(kinds::Kind::SocketForeignNetns.name())),
        "{err}"
    );
    // The same socket in our namespace is dumped.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let child = Child::holding(&[raw(&udp)]);
    table.dump_task_fds(child.pid).unwrap();
}

/// A connection not accepted yet is judged before the freeze: its client is connected
/// to the listener again on restore when both are in the tree and the client sent
/// nothing; a client whose listener is outside the tree, or one that sent data, is
/// refused.
#[test]
fn connections_not_accepted_yet_are_judged_before_the_freeze() {
    let scratch = TempDir::new("in-flight");
    let path = scratch.path().join("listener");
    let listener = UnixListener::bind(&path).unwrap();
    let client = UnixStream::connect(&path).unwrap();
    // Both in the tree: dumped, the client as connected to the listener.
    let both = Child::holding(&[raw(&listener), raw(&client)]);
    TreeChecks::new(&[both.pid], false).check(both.pid).unwrap();
    let mut table = FileTable::new();
    table.dump_task_fds(both.pid).unwrap();
    table.check_complete().unwrap();
    let usk = |ino: u64| {
        table
            .entries()
            .iter()
            .find_map(|e| e.usk.as_ref().filter(|u| u64::from(u.ino) == ino))
            .cloned()
            .unwrap()
    };
    assert_eq!(u64::from(usk(ino_of(&client)).peer), ino_of(&listener));
    drop(both);
    // The client alone: its listener is outside the tree.
    let alone = Child::holding(&[raw(&client)]);
    let err = TreeChecks::new(&[alone.pid], false)
        .check(alone.pid)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("outside the dump, which has not accepted it yet"),
        "{err}"
    );
    drop(alone);
    // The listener with a client that sent data.
    (&client).write_all(b"early").unwrap();
    let both = Child::holding(&[raw(&listener), raw(&client)]);
    let err = TreeChecks::new(&[both.pid], false)
        .check(both.pid)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sent data"), "{err}");
}

/// A new pty: its master (unlocked, as `unlockpt` leaves it) and its slave.
fn open_pty() -> Option<(File, File)> {
    let master = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ptmx")
        .ok()?;
    // unlockpt(3): TIOCSPTLCK reads an int (0: unlocked) through its pointer.
    sys::ioctl_set_u64(master.as_fd(), libc::TIOCSPTLCK as libc::c_ulong, 0).ok()?;
    let index = sys::ioctl_get_int(master.as_fd(), libc::TIOCGPTN as libc::c_ulong).ok()?;
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(format!("/dev/pts/{index}"))
        .ok()?;
    Some((master, slave))
}

/// The inode of an open file or socket.
fn ino_of(fd: &impl AsFd) -> u64 {
    File::from(fd.as_fd().try_clone_to_owned().unwrap())
        .metadata()
        .unwrap()
        .ino()
}

mod locks;
mod ptys_and_queues;
