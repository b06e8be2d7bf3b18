//! Tests of the file restore: refusals and broken images on hand-made image sets, and
//! rebuilds of files that forked children held and the file dumper saved.
//!
//! A child holding files is killed and reaped by a guard, also when a test fails; each
//! test has its own scratch directory.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use criu_images::{pb, ImageKind, ImageWriter};

use super::*;
use crate::files::inet::inet_addr;
use crate::files::kinds;
use crate::files::socket::so;
use crate::files::unix::name::{in_dir, unix_addr};
use crate::files::FileTable;
use crate::proc::ProcDir;

/// A forked child holding some of our descriptors; killed and reaped on drop.
struct Child {
    pid: Pid,
}

impl Child {
    fn holding(fds: &[RawFd]) -> Child {
        let child = Child {
            pid: sys::fork_holding_fds(fds).expect("fork"),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while ProcDir::open(child.pid)
            .and_then(|p| p.stat())
            .map(|s| s.state)
            .unwrap_or('?')
            != 'T'
        {
            assert!(
                Instant::now() < deadline,
                "child {} did not stop",
                child.pid
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        child
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = sys::kill(self.pid, libc::SIGKILL);
        let _ = sys::wait_timeout(self.pid, Duration::from_secs(5));
    }
}

use crate::testutil::{raw, TempDir};

/// Dumps the files of a child holding `fds` into `dir` (the child is gone after).
fn dump_fds(fds: &[RawFd], dir: &Path) -> Vec<pb::FdinfoEntry> {
    let child = Child::holding(fds);
    let mut table = FileTable::new();
    let fdinfo = table.dump_task_fds(child.pid).expect("dump the fds");
    table.write_images(dir).expect("write the images");
    fdinfo
}

/// Opens every fd of `fdinfo`; returns our duplicate of each, by the task's number.
fn open_all(
    opener: &mut FileOpener,
    fdinfo: &[pb::FdinfoEntry],
) -> std::collections::HashMap<RawFd, OwnedFd> {
    opener
        .check(Pid(1), fdinfo)
        .unwrap_or_else(|e| panic!("check: {e}"));
    fdinfo
        .iter()
        .map(|f| {
            let fd = opener
                .open(f.id, fdinfo)
                .unwrap_or_else(|e| panic!("open fd {}: {e}", f.fd));
            (f.fd as RawFd, fd.try_clone_to_owned().unwrap())
        })
        .collect()
}

fn file(fd: &OwnedFd) -> File {
    File::from(fd.try_clone().unwrap())
}

fn link(fd: &OwnedFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// One receive, not waiting (MSG_DONTWAIT); `None` when nothing is queued.
fn recv_now(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    match sys::recv(fd.as_fd(), &mut buf, libc::MSG_DONTWAIT) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("recv: {e}"),
    }
}

/// A unix socket's own or peer name, without the family.
fn unix_name(fd: &OwnedFd, peer: bool) -> Vec<u8> {
    let raw = sys::socket_address(fd.as_fd(), peer).unwrap();
    let mut name = raw[2..].to_vec();
    if name.first() != Some(&0) {
        while name.last() == Some(&0) {
            name.pop();
        }
    }
    name
}

// -------------------------------------------------------------------------------------
// Hand-made images
// -------------------------------------------------------------------------------------

fn writer(dir: &Path, kind: &str) -> ImageWriter<std::io::BufWriter<File>> {
    let k = ImageKind::by_name(kind).unwrap();
    ImageWriter::create(dir.join(k.file_name("")), k).unwrap()
}

fn write_files(dir: &Path, files: &[pb::FileEntry]) {
    let mut w = writer(dir, "FILES");
    for f in files {
        w.write_entry(f).unwrap();
    }
    w.finish().unwrap();
}

fn entry(ty: pb::FdTypes, id: u32, fill: impl FnOnce(&mut pb::FileEntry)) -> pb::FileEntry {
    let mut e = pb::FileEntry {
        r#type: ty as i32,
        id,
        ..Default::default()
    };
    fill(&mut e);
    e
}

fn fdi(fd: u32, id: u32, ty: pb::FdTypes) -> pb::FdinfoEntry {
    pb::FdinfoEntry {
        id,
        flags: 0,
        r#type: ty as i32,
        fd,
        xattr_security_selinux: None,
    }
}

fn inet(id: u32, ty: i32, proto: i32, state: u32, ns_id: Option<u32>) -> pb::FileEntry {
    entry(pb::FdTypes::Inetsk, id, |e| {
        e.isk = Some(pb::InetSkEntry {
            id,
            ino: 100 + id,
            family: libc::AF_INET as u32,
            r#type: ty as u32,
            proto: proto as u32,
            state,
            src_port: 8080,
            dst_port: 40000,
            src_addr: vec![u32::from_ne_bytes([127, 0, 0, 1])],
            dst_addr: vec![u32::from_ne_bytes([127, 0, 0, 1])],
            ns_id,
            ..Default::default()
        })
    })
}

#[test]
fn refusals_name_the_task_the_fd_and_the_kind() {
    let dir = TempDir::new("refusals");
    let files = vec![
        entry(pb::FdTypes::Tty, 1, |e| {
            e.tty = Some(pb::TtyFileEntry {
                id: 1,
                tty_info_id: 7,
                flags: 2,
                regf_id: Some(2),
                ..Default::default()
            })
        }),
        inet(3, libc::SOCK_STREAM, libc::IPPROTO_TCP, 1, None),
        entry(pb::FdTypes::Unixsk, 4, |e| {
            e.usk = Some(pb::UnixSkEntry {
                id: 4,
                ino: 444,
                r#type: libc::SOCK_STREAM as u32,
                state: 1,
                peer: 999,
                ..Default::default()
            })
        }),
        entry(pb::FdTypes::Ns, 5, |e| {
            e.nsf = Some(pb::NsFileEntry {
                id: 5,
                ns_id: 77,
                ns_cflag: libc::CLONE_NEWNET as u32,
                flags: 0,
            })
        }),
        entry(pb::FdTypes::Eventpoll, 6, |e| {
            e.epfd = Some(pb::EventpollFileEntry {
                id: 6,
                tfd: vec![pb::EventpollTfdEntry {
                    tfd: 42,
                    events: 1,
                    ..Default::default()
                }],
                ..Default::default()
            })
        }),
        entry(pb::FdTypes::Packetsk, 7, |e| {
            e.psk = Some(pb::PacketSockEntry {
                id: 7,
                ns_id: Some(5),
                ..Default::default()
            })
        }),
        inet(8, libc::SOCK_DGRAM, libc::IPPROTO_UDP, 7, Some(5)),
        inet(9, libc::SOCK_RAW, libc::IPPROTO_ICMP, 10, None),
    ];
    write_files(dir.path(), &files);
    let mut inv = writer(dir.path(), "INVENTORY");
    inv.write_entry(&pb::InventoryEntry {
        root_ids: Some(pb::TaskKobjIdsEntry {
            net_ns_id: Some(2),
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    inv.finish().unwrap();
    let opener = FileOpener::load(dir.path()).unwrap();
    let cases: &[(u32, pb::FdTypes, &str)] = &[
        (
            3,
            pb::FdTypes::Inetsk,
            "a connected TCP socket (family 2, type 1, protocol 6, state 1, \
             127.0.0.1:8080 -> 127.0.0.1:40000): it needs --tcp-established (or --tcp-close)",
        ),
        (
            4,
            pb::FdTypes::Unixsk,
            "connected to socket 999 outside the dump",
        ),
        (
            5,
            pb::FdTypes::Ns,
            "net namespace 77, neither the restorer's nor one the tree has",
        ),
        (
            7,
            pb::FdTypes::Packetsk,
            "a packet socket: it lives in network namespace 5, not the restorer's (2)",
        ),
        (
            8,
            pb::FdTypes::Inetsk,
            "network namespace 5, not the restorer's (2)",
        ),
        (
            9,
            pb::FdTypes::Inetsk,
            "IPv4 raw or ICMP socket 127.0.0.1:8080 in state 10",
        ),
    ];
    // A terminal whose tty-info is missing is a broken image, named.
    let err = opener
        .check(Pid(1234), &[fdi(11, 1, pb::FdTypes::Tty)])
        .expect_err("no tty-info");
    assert!(
        matches!(&err, FileRestoreError::BadImage { image, what }
            if image == "tty-info.img" && what.contains("no tty-info 7")),
        "{err}"
    );
    for &(id, ty, why) in cases {
        let fd = 10 + id;
        let err = opener
            .check(Pid(1234), &[fdi(fd, id, ty)])
            .expect_err(why)
            .to_string();
        let head = format!(
            "task 1234 fd {fd} ({} file {id}): cannot restore",
            ty.as_str_name()
        );
        assert!(err.starts_with(&head) && err.contains(why), "{err}");
    }
    // An epoll instance's interest list needs one task holding it and every fd it
    // watches (42): not necessarily each of its holders.
    let epoll = fdi(16, 6, pb::FdTypes::Eventpoll);
    let (alone, beside) = (
        [epoll.clone()],
        [epoll.clone(), fdi(42, 3, pb::FdTypes::Inetsk)],
    );
    let err = opener
        .check_epolls(&[(Pid(1234), &alone[..])])
        .expect_err("nobody holds fd 42")
        .to_string();
    assert!(
        err.starts_with("task 1234 fd 16 (EVENTPOLL file 6): cannot restore")
            && err.contains("epoll watching fd 42, which the task does not hold"),
        "{err}"
    );
    opener
        .check_epolls(&[(Pid(1234), &alone[..]), (Pid(1235), &beside[..])])
        .expect("its parent holds fd 42");
    // The same refusals when opening without a check (no fd known: the file is named).
    let mut opener = opener;
    let err = opener.open(1, &[]).err().unwrap().to_string();
    assert_eq!(err, "tty-info.img: terminal with no tty-info 7");
    let err = opener.open(3, &[]).err().unwrap().to_string();
    assert!(
        err.starts_with("INETSK file 3: cannot restore a TCP connection"),
        "{err}"
    );
}

#[test]
fn broken_images_are_errors_not_panics() {
    let dir = TempDir::new("broken");
    let d = dir.path();
    write_files(
        d,
        &[
            entry(pb::FdTypes::Pipe, 1, |_| {}),
            entry(pb::FdTypes::Memfd, 2, |e| {
                e.memfd = Some(pb::MemfdFileEntry {
                    id: 2,
                    flags: 2,
                    inode_id: 5,
                    ..Default::default()
                })
            }),
            entry(pb::FdTypes::Reg, 3, |e| {
                e.reg = Some(pb::RegFileEntry {
                    id: 3,
                    name: "/tmp/gone".into(),
                    flags: 2,
                    ..Default::default()
                })
            }),
        ],
    );
    let mut remap = writer(d, "REMAP_FPATH");
    remap
        .write_entry(&pb::RemapFilePathEntry {
            orig_id: 3,
            remap_id: 9,
            remap_type: Some(pb::RemapType::Ghost as i32),
        })
        .unwrap();
    remap.finish().unwrap();
    let mut opener = FileOpener::load(d).unwrap();
    let check = |fd: pb::FdinfoEntry| opener.check(Pid(7), &[fd]).unwrap_err().to_string();
    assert_eq!(
        check(fdi(3, 44, pb::FdTypes::Reg)),
        "files.img: has no file 44 for task 7 fd 3"
    );
    assert_eq!(
        check(fdi(3, 1, pb::FdTypes::Reg)),
        "files.img: task 7 fd 3 is of type REG but file 1 is PIPE"
    );
    assert_eq!(
        check(fdi(3, 1, pb::FdTypes::Pipe)),
        "files.img: file 1 of type PIPE lacks its entry"
    );
    assert_eq!(
        check(fdi(4, 2, pb::FdTypes::Memfd)),
        "memfd.img: has no inode 5 for memfd file 2"
    );
    assert_eq!(
        check(fdi(5, 3, pb::FdTypes::Reg)),
        "ghost-file-9.img: is missing (deleted file /tmp/gone of file 3)"
    );
    for id in [1, 2, 3, 99] {
        assert!(opener.open(id, &[]).is_err(), "file {id}");
    }

    // Side images that lie about their lengths, or end early.
    let pipe_data = |bytes: u32, size: Option<u32>, data: &[u8]| {
        let mut w = writer(d, "PIPES_DATA");
        w.write_entry(&pb::PipeDataEntry {
            pipe_id: 1,
            bytes,
            size,
        })
        .unwrap();
        w.write_raw(data).unwrap();
        w.finish().unwrap();
        FileOpener::load(d).err().map(|e| e.to_string())
    };
    let err = pipe_data(100, None, b"short").unwrap();
    assert!(
        err.contains("pipes-data.img") && err.contains("pipe data"),
        "{err}"
    );
    let err = pipe_data(5, Some(4), b"12345").unwrap();
    assert_eq!(
        err,
        "pipes-data.img: pipe 1 holds 5 bytes but its size is 4"
    );
    assert_eq!(pipe_data(5, Some(4096), b"12345"), None);
    let mut w = writer(d, "SK_QUEUES");
    w.write_entry(&pb::SkPacketEntry {
        id_for: 1,
        length: 1 << 20,
        scm: Vec::new(),
    })
    .unwrap();
    w.finish().unwrap();
    let err = FileOpener::load(d).err().unwrap().to_string();
    assert!(err.contains("sk-queues.img"), "{err}");
    std::fs::remove_file(d.join("sk-queues.img")).unwrap();

    // Every truncation of every image: an error or a load, never a panic.
    let names = ["files.img", "pipes-data.img", "remap-fpath.img"];
    for name in names {
        let whole = std::fs::read(d.join(name)).unwrap();
        for cut in 0..whole.len() {
            std::fs::write(d.join(name), &whole[..cut]).unwrap();
            let _ = FileOpener::load(d);
        }
        for i in 8..whole.len() {
            let mut bad = whole.clone();
            bad[i] ^= 0xff;
            std::fs::write(d.join(name), &bad).unwrap();
            if let Ok(mut o) = FileOpener::load(d) {
                for id in 0..5 {
                    let _ = o.check(Pid(1), &[fdi(3, id, pb::FdTypes::Pipe)]);
                    let _ = o.open(id, &[]);
                }
            }
        }
        std::fs::write(d.join(name), &whole).unwrap();
    }
    assert!(FileOpener::load(&d.join("nowhere")).is_err());
}

// -------------------------------------------------------------------------------------
// Files held by a child, dumped by the file dumper, rebuilt here
// -------------------------------------------------------------------------------------

#[test]
fn a_sparse_deleted_file_comes_back_once_for_two_opens() {
    let dir = TempDir::new("ghost");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let path = dir.path().join("sparse");
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    f.write_all_at(&[0xa5; 4096], 0).unwrap();
    f.write_all_at(b"tail", 1 << 20).unwrap();
    let size = (1 << 20) + 4;
    let ro = File::open(&path).unwrap();
    (&f).seek(std::io::SeekFrom::Start(10)).unwrap();
    std::fs::remove_file(&path).unwrap();
    let held = [raw(&f), raw(&ro)];
    let fdinfo = dump_fds(&held, &images);
    drop((f, ro));

    let mut opener = FileOpener::load(&images).unwrap();
    let fds = open_all(&mut opener, &fdinfo);
    let [rw, ro] = held.map(|n| &fds[&n]);
    let deleted = format!("{} (deleted)", path.display());
    assert_eq!((link(rw), link(ro)), (deleted.clone(), deleted));
    let (mrw, mro) = (file(rw).metadata().unwrap(), file(ro).metadata().unwrap());
    assert_eq!(mrw.ino(), mro.ino(), "one inode for both");
    assert_eq!((mrw.nlink(), mrw.len()), (0, size));
    assert!(
        mrw.blocks() * 512 < size / 2,
        "holes kept: {} blocks",
        mrw.blocks()
    );
    assert_eq!(sys::lseek(rw.as_fd(), 0, libc::SEEK_CUR).unwrap(), Some(10));
    assert_eq!(sys::lseek(ro.as_fd(), 0, libc::SEEK_CUR).unwrap(), Some(0));
    let mut head = [0u8; 4096];
    file(ro).read_exact_at(&mut head, 0).unwrap();
    assert!(head.iter().all(|&b| b == 0xa5));
    let mut tail = [0u8; 4];
    file(ro).read_exact_at(&mut tail, 1 << 20).unwrap();
    assert_eq!(&tail, b"tail");
    assert_eq!(
        sys::fcntl_get(ro.as_fd(), libc::F_GETFL).unwrap() & libc::O_ACCMODE,
        libc::O_RDONLY
    );
    assert!(!path.exists(), "the name is gone again");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only images/"
    );
}

/// Waits (at most 5 s) until the abstract unix socket name `name` can be bound.
fn wait_name_free(name: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let probe = sys::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0).unwrap();
        if sys::bind_raw(probe.as_fd(), &unix_addr(name)).is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "{name:?} stayed bound");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn unix_sockets_get_their_names_peers_and_queues_back() {
    let dir = TempDir::new("unix");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let d = dir.path().to_str().unwrap().to_owned();
    let abstract_cli = format!("\0criu-rs-test-{}-cli", std::process::id());
    let abstract_lsn = format!("\0criu-rs-test-{}-lsn", std::process::id());

    // A datagram server bound to a relative name, and a client with an abstract name
    // connected to it; each has datagrams from the other waiting.
    let server = sys::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0).unwrap();
    in_dir(Some(Path::new(&d)), || {
        sys::bind_raw(server.as_fd(), &unix_addr(b"srv.sock"))
    })
    .unwrap();
    let client = sys::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0).unwrap();
    sys::bind_raw(client.as_fd(), &unix_addr(abstract_cli.as_bytes())).unwrap();
    in_dir(Some(Path::new(&d)), || {
        sys::connect_raw(client.as_fd(), &unix_addr(b"srv.sock"))
    })
    .unwrap();
    for m in [&b"c1"[..], b"c-two"] {
        sys::send(client.as_fd(), m, 0).unwrap();
    }
    sys::sendto_raw(
        server.as_fd(),
        b"s1",
        0,
        &unix_addr(abstract_cli.as_bytes()),
    )
    .unwrap();
    // An abstract listener.
    let listener = sys::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0).unwrap();
    sys::bind_raw(listener.as_fd(), &unix_addr(abstract_lsn.as_bytes())).unwrap();
    sys::listen(listener.as_fd(), 7).unwrap();
    // A stream end whose peer is gone after sending, shut down both ways.
    let (lone, gone) = UnixStream::pair().unwrap();
    (&gone).write_all(b"bye").unwrap();
    drop(gone);
    lone.shutdown(std::net::Shutdown::Both).unwrap();
    // A seqpacket pair, one end shut for writing after one packet.
    let (sa, sb) = sys::socketpair(libc::SOCK_SEQPACKET).unwrap();
    sys::send(sa.as_fd(), b"p1", 0).unwrap();
    sys::shutdown(sa.as_fd(), libc::SHUT_WR).unwrap();
    let held = [
        raw(&server),
        raw(&client),
        raw(&listener),
        raw(&lone),
        raw(&sa),
        raw(&sb),
    ];
    let fdinfo = dump_fds(&held, &images);
    drop((server, client, listener, lone, sa, sb));
    // A child another test forks meanwhile holds copies of every fd of ours until it
    // closes those it does not keep (`fork_holding_fds`): the names are free once it
    // has.
    for name in [&abstract_cli, &abstract_lsn] {
        wait_name_free(name.as_bytes());
    }

    let mut opener = FileOpener::load(&images).unwrap();
    let fds = open_all(&mut opener, &fdinfo);
    let [server, client, listener, lone, sa, sb] = held.map(|n| &fds[&n]);

    assert_eq!(unix_name(server, false), b"srv.sock", "relative name kept");
    assert!(std::fs::symlink_metadata(dir.path().join("srv.sock"))
        .unwrap()
        .file_type()
        .is_socket());
    assert_eq!(recv_now(server).unwrap(), b"c1");
    assert_eq!(recv_now(server).unwrap(), b"c-two");
    assert_eq!(recv_now(server), None);
    assert_eq!(unix_name(client, false), abstract_cli.as_bytes());
    assert_eq!(
        unix_name(client, true),
        b"srv.sock",
        "connected to the server"
    );
    assert_eq!(recv_now(client).unwrap(), b"s1");
    assert_eq!(recv_now(client), None);
    sys::send(client.as_fd(), b"again", 0).unwrap();
    assert_eq!(recv_now(server).unwrap(), b"again");

    assert_eq!(unix_name(listener, false), abstract_lsn.as_bytes());
    assert_eq!(
        sys::getsockopt_int(listener.as_fd(), libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap(),
        1
    );
    let c = sys::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0).unwrap();
    sys::connect_raw(c.as_fd(), &unix_addr(abstract_lsn.as_bytes())).unwrap();

    assert_eq!(recv_now(lone).unwrap(), b"bye");
    assert_eq!(recv_now(lone).unwrap(), b"", "then the stream ends");
    assert_eq!(recv_now(sb).unwrap(), b"p1");
    assert_eq!(
        recv_now(sb).unwrap(),
        b"",
        "shut for writing on the other side"
    );
    let e = sys::send(sa.as_fd(), b"x", libc::MSG_NOSIGNAL).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
}

#[test]
fn a_lone_pipe_read_end_ends_once_the_opener_is_gone() {
    let dir = TempDir::new("pipe");
    let (r, w) = sys::pipe(0).unwrap();
    sys::pipe_size(w.as_fd(), Some(1 << 17)).unwrap();
    file(&w).write_all(b"last words").unwrap();
    // Two numbers for one read end; the write end stays with us.
    let r2 = r.try_clone().unwrap();
    let held = [raw(&r), raw(&r2)];
    let fdinfo = dump_fds(&held, dir.path());
    assert_eq!(fdinfo[0].id, fdinfo[1].id, "one open file description");
    drop((r, r2, w));

    let mut opener = FileOpener::load(dir.path()).unwrap();
    let fds = open_all(&mut opener, &fdinfo);
    let ours = fds[&held[0]].try_clone().unwrap();
    assert_eq!(sys::pipe_size(ours.as_fd(), None).unwrap(), 1 << 17);
    drop(fds);
    drop(opener);
    let mut all = Vec::new();
    file(&ours).read_to_end(&mut all).unwrap();
    assert_eq!(all, b"last words", "the data once, then end-of-file");
}

#[test]
fn counters_timers_and_watches_keep_their_state() {
    let dir = TempDir::new("misc");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let efd = sys::eventfd(0, libc::EFD_NONBLOCK).unwrap();
    file(&efd).write_all(&(1u64 << 40).to_ne_bytes()).unwrap();
    // Expired and not read: one tick.
    let expired = sys::timerfd_create(libc::CLOCK_MONOTONIC).unwrap();
    sys::timerfd_settime(expired.as_fd(), 0, ((0, 1_000_000), (0, 0))).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // Absolute, on the wall clock, 100 s from now.
    let wall = sys::timerfd_create(libc::CLOCK_REALTIME).unwrap();
    let now = sys::clock_gettime(libc::CLOCK_REALTIME).unwrap();
    sys::timerfd_settime(wall.as_fd(), 1, ((now.0 + 100, now.1), (0, 0))).unwrap();
    // Watch descriptors 2 and 3 (1 fired once and went away).
    let ify = sys::inotify_init().unwrap();
    let sub = |n: &str| {
        let p = dir.path().join(n);
        std::fs::create_dir(&p).unwrap();
        p
    };
    let (d1, d2, d3) = (sub("d1"), sub("d2"), sub("d3"));
    let oneshot = libc::IN_CREATE | libc::IN_ONESHOT;
    assert_eq!(
        sys::inotify_add_watch(ify.as_fd(), &d1, oneshot).unwrap(),
        1
    );
    std::fs::write(d1.join("x"), b"").unwrap();
    let mut drain = [0u8; 4096];
    let _ = file(&ify).read(&mut drain).unwrap();
    assert_eq!(
        sys::inotify_add_watch(ify.as_fd(), &d2, libc::IN_DELETE).unwrap(),
        2
    );
    assert_eq!(
        sys::inotify_add_watch(ify.as_fd(), &d3, libc::IN_CREATE).unwrap(),
        3
    );
    let held = [raw(&efd), raw(&expired), raw(&wall), raw(&ify)];
    let fdinfo = dump_fds(&held, &images);

    let mut opener = FileOpener::load(&images).unwrap();
    let fds = open_all(&mut opener, &fdinfo);
    let [efd2, expired2, wall2, ify2] = held.map(|n| &fds[&n]);
    let mut word = [0u8; 8];
    file(efd2).read_exact(&mut word).unwrap();
    assert_eq!(u64::from_ne_bytes(word), 1 << 40);

    file(expired2).read_exact(&mut word).unwrap();
    assert_eq!(u64::from_ne_bytes(word), 1, "the unread expiration");
    assert_eq!(
        sys::timerfd_gettime(expired2.as_fd()).unwrap(),
        ((0, 0), (0, 0))
    );
    let ((left, _), _) = sys::timerfd_gettime(wall2.as_fd()).unwrap();
    assert!((95..=100).contains(&left), "{left} s left");
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", raw(wall2))).unwrap();
    assert!(info.contains("settime flags: 01"), "{info}");
    assert!(info.contains("clockid: 0"), "{info}");

    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", raw(ify2))).unwrap();
    let mut wds: Vec<&str> = info
        .lines()
        .filter_map(|l| l.strip_prefix("inotify wd:")?.split(' ').next())
        .collect();
    wds.sort_unstable();
    assert_eq!(wds, ["2", "3"], "{info}");
    std::fs::write(d3.join("new"), b"").unwrap();
    let n = file(ify2).read(&mut drain).unwrap();
    assert!(n >= 16);
    assert_eq!(i32::from_ne_bytes(drain[..4].try_into().unwrap()), 3);
    drop((efd, expired, wall, ify));
}

#[test]
fn udp_and_tcp_sockets_are_bound_connected_and_listening_again() {
    let dir = TempDir::new("inet");
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.connect(peer.local_addr().unwrap()).unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let tcp6 = sys::socket(libc::AF_INET6, libc::SOCK_STREAM, 0).unwrap();
    sys::setsockopt_int(tcp6.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1).unwrap();
    sys::setsockopt_int(tcp6.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).unwrap();
    let v6 = sys::bind_raw(
        tcp6.as_fd(),
        &inet_addr(
            libc::AF_INET6,
            &[0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])],
            0,
            0,
        ),
    )
    .is_ok();
    let mut held = vec![raw(&udp)];
    if v6 {
        sys::listen(tcp6.as_fd(), 3).unwrap();
        held.push(raw(&tcp6));
    } else {
        eprintln!("no IPv6 loopback: the IPv6 part is skipped");
    }
    let unbound = sys::socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
    held.push(raw(&unbound));
    let tcp6_addr = sys::socket_address(tcp6.as_fd(), false).unwrap();
    let fdinfo = dump_fds(&held, dir.path());
    drop((udp, tcp6, unbound));
    // A child forked by a test running alongside holds copies of every fd of ours until
    // its close_range or exec; under load that lasts long enough to keep the ports
    // taken. The restore below must find them free, as it would on a real restore.
    let free = |probe: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !probe() {
            assert!(
                Instant::now() < deadline,
                "the dumped sockets' ports stay taken"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    free(&|| std::net::UdpSocket::bind(udp_addr).is_ok());
    if v6 {
        free(&|| {
            let probe = sys::socket(libc::AF_INET6, libc::SOCK_STREAM, 0).unwrap();
            sys::setsockopt_int(probe.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1).unwrap();
            sys::bind_raw(probe.as_fd(), &tcp6_addr).is_ok()
        });
    }

    let mut opener = FileOpener::load(dir.path()).unwrap();
    let fds = open_all(&mut opener, &fdinfo);
    let udp = std::net::UdpSocket::from(fds[&held[0]].try_clone().unwrap());
    assert_eq!(udp.local_addr().unwrap(), udp_addr);
    assert_eq!(udp.peer_addr().unwrap(), peer.local_addr().unwrap());
    // Setting the buffers locks them; the saved lock bits (none) are put back.
    let lock = sys::getsockopt_int(fds[&held[0]].as_fd(), libc::SOL_SOCKET, so::BUF_LOCK);
    assert_eq!(lock.unwrap(), 0, "so::BUF_LOCK");
    udp.send(b"hi").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 8];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"hi"[..], udp_addr));
    if v6 {
        let l = &fds[&held[1]];
        assert_eq!(sys::socket_address(l.as_fd(), false).unwrap(), tcp6_addr);
        let v6only = sys::getsockopt_int(l.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
        assert_eq!(v6only.unwrap(), 1);
        let reuse = sys::getsockopt_int(l.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT);
        assert_eq!(reuse.unwrap(), 1);
        assert_eq!(
            sys::getsockopt_int(l.as_fd(), libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap(),
            1
        );
    }
    let unbound = &fds[held.last().unwrap()];
    let addr = sys::socket_address(unbound.as_fd(), false).unwrap();
    assert_eq!(&addr[2..4], &[0, 0], "still unbound");
}

/// A `files.img` entry of `kind` as images (ours or CRIU's) hold it, with the side
/// images it needs; `None` for kinds that images cannot describe (the dump refuses them
/// from what it sees: a message queue, a semaphore eventfd...) and for mappings.
/// Every kind must be answered here: a new kind needs a decision.
fn sample(kind: Kind, id: u32) -> Option<pb::FileEntry> {
    use pb::FdTypes as T;
    let reg = |name: &str, mode: u32, flags: u32, ext: bool| {
        entry(T::Reg, id, |e| {
            e.reg = Some(pb::RegFileEntry {
                id,
                name: name.into(),
                mode: Some(mode),
                flags,
                ext: ext.then_some(true),
                ..Default::default()
            })
        })
    };
    let tty = |info: u32| {
        entry(T::Tty, id, |e| {
            e.tty = Some(pb::TtyFileEntry {
                id,
                tty_info_id: info,
                ..Default::default()
            })
        })
    };
    // A console or virtual terminal is reopened by the path of file 999 (see the test).
    let simple_tty = |info: u32| {
        entry(T::Tty, id, |e| {
            e.tty = Some(pb::TtyFileEntry {
                id,
                tty_info_id: info,
                regf_id: Some(999),
                ..Default::default()
            })
        })
    };
    Some(match kind {
        Kind::RegFile => reg("/etc/hostname", libc::S_IFREG | 0o644, 0, false),
        Kind::Directory => reg("/", libc::S_IFDIR | 0o755, 0, false),
        Kind::PathRef => reg("/", libc::S_IFDIR | 0o755, libc::O_PATH as u32, false),
        Kind::MemDevice => reg("/dev/null", libc::S_IFCHR | 0o666, 2, false),
        // Told apart by the remap image written beside (see the test).
        Kind::DeletedFile => reg("/tmp/ghost", libc::S_IFREG | 0o600, 2, false),
        Kind::DeletedLinked => reg("/tmp/linked", libc::S_IFREG | 0o600, 2, false),
        Kind::ExternalFile => reg("/outside/log", libc::S_IFREG | 0o600, 1, true),
        Kind::ProcPidFile => reg("/proc/1/status", libc::S_IFREG | 0o444, 0, false),
        // Told apart by its PROCFS remap (see the test): the pid of our parent, which
        // exists, so no stand-in can be made for it.
        Kind::ProcDeadPid => reg(
            &format!("/proc/{}", std::os::unix::process::parent_id()),
            libc::S_IFDIR | 0o555,
            0,
            false,
        ),
        Kind::ProcTreeFile => reg(
            &format!("/proc/{}/status", std::process::id()),
            libc::S_IFREG | 0o444,
            0,
            false,
        ),
        Kind::BlockDevice => reg("/dev/sda", libc::S_IFBLK | 0o600, 0, false),
        Kind::Pipe | Kind::PacketPipe => entry(T::Pipe, id, |e| {
            e.pipe = Some(pb::PipeEntry {
                id,
                pipe_id: 900 + id,
                flags: if kind == Kind::PacketPipe {
                    libc::O_DIRECT as u32
                } else {
                    0
                },
                ..Default::default()
            })
        }),
        Kind::Fifo => entry(T::Fifo, id, |e| {
            e.fifo = Some(pb::FifoEntry {
                id,
                pipe_id: 900 + id,
                regf_id: Some(999),
            })
        }),
        Kind::UnixStream
        | Kind::UnixDgram
        | Kind::UnixSeqpacket
        | Kind::UnixOther
        | Kind::UnixOrphanQueued
        | Kind::UnixPeerOutside
        | Kind::TcpListen
        | Kind::TcpClosed
        | Kind::TcpConnected
        | Kind::TcpOtherState
        | Kind::Udp
        | Kind::UdpLite
        | Kind::InetRaw
        | Kind::InetIcmp
        | Kind::InetOther
        | Kind::OtherSocket
        | Kind::SocketForeignNetns
        | Kind::Netlink
        | Kind::Packet => socket_sample(kind, id),
        Kind::Eventfd => entry(T::Eventfd, id, |e| e.efd = Some(Default::default())),
        Kind::Eventpoll => entry(T::Eventpoll, id, |e| e.epfd = Some(Default::default())),
        Kind::Signalfd => entry(T::Signalfd, id, |e| e.sgfd = Some(Default::default())),
        Kind::Timerfd => entry(T::Timerfd, id, |e| e.tfd = Some(Default::default())),
        Kind::Inotify => entry(T::Inotify, id, |e| e.ify = Some(Default::default())),
        Kind::Fanotify => entry(T::Fanotify, id, |e| e.ffy = Some(Default::default())),
        Kind::Memfd => entry(T::Memfd, id, |e| e.memfd = Some(Default::default())),
        Kind::Bpf => entry(T::Bpfmap, id, |e| e.bpf = Some(Default::default())),
        // Of this test process, the one task of the tree (see the test).
        Kind::Pidfd | Kind::PidfdThread => entry(T::Pidfd, id, |e| {
            e.pidfd = Some(pb::PidfdEntry {
                id,
                nspid: std::process::id() as i32,
                flags: if kind == Kind::PidfdThread {
                    libc::O_EXCL as u32
                } else {
                    0
                },
                ..Default::default()
            })
        }),
        // The inventory says the restorer's network namespace is 2.
        Kind::NsFile | Kind::NsFileForeign => entry(T::Ns, id, |e| {
            e.nsf = Some(pb::NsFileEntry {
                id,
                ns_id: if kind == Kind::NsFile { 2 } else { 77 },
                ns_cflag: libc::CLONE_NEWNET as u32,
                flags: 0,
            })
        }),
        // tty-info 6 is /dev/pts/3 alone, 8 and 9 the slave and master of /dev/pts/4
        // (session 77's terminal), 10 /dev/pts/5 hung up, 30 /dev/tty of session 77, 31
        // /dev/tty of session 55.
        Kind::PtySlave => tty(6),
        Kind::PtySlaveHungUp => tty(10),
        Kind::PtySlavePaired => tty(8),
        Kind::PtyMaster => tty(9),
        Kind::DevTty => tty(30),
        Kind::DevTtyJob => tty(31),
        Kind::OtherTty => tty(20),
        Kind::Console => simple_tty(21),
        Kind::Vt => simple_tty(22),
        Kind::Tun => entry(T::Tunf, id, |e| e.tunf = Some(Default::default())),
        Kind::OtherFile => entry(T::Ext, id, |e| e.ext = Some(Default::default())),
        // Only the dump tells it (images hold a plain listener).
        Kind::TcpListenInFlight => return None,
        // Its queue is in criu-rs-mqueue-1.img, written beside (see the test).
        Kind::Mqueue => entry(T::Ext, id, |e| {
            e.ext = Some(pb::ExtFileEntry {
                id,
                fown: Default::default(),
                mqueue: Some(pb::MqueueFileEntry {
                    queue_id: 1,
                    flags: libc::O_RDWR as u32,
                    pos: None,
                }),
                io_uring: None,
            })
        }),
        Kind::IoUring => entry(T::Ext, id, |e| {
            e.ext = Some(pb::ExtFileEntry {
                id,
                io_uring: Some(pb::IoUringFileEntry {
                    sq_entries: 4,
                    cq_entries: 8,
                    ..Default::default()
                }),
                ..Default::default()
            })
        }),
        Kind::MqueueNotify
        | Kind::MqueueForeignNs
        | Kind::PidfdOutside
        | Kind::EventfdSemaphore
        | Kind::HugetlbMemfd
        | Kind::Secretmem
        | Kind::PerfEvent
        | Kind::Userfaultfd
        | Kind::OtherAnonInode
        | Kind::CharDevice
        | Kind::DeletedOther => return None,
        Kind::MapAnonPrivate
        | Kind::MapAnonShared
        | Kind::MapShmemPrivate
        | Kind::MapFilePrivate
        | Kind::MapFileShared
        | Kind::MapMemfd
        | Kind::MapVdso
        | Kind::MapVvar
        | Kind::MapVsyscall
        | Kind::MapSysvShm
        | Kind::MapDeletedFile
        | Kind::MapUnreachableFile
        | Kind::MapDeletedOther
        | Kind::MapHugetlb
        | Kind::MapDevice
        | Kind::MapSocket
        | Kind::MapOtherSocket
        | Kind::MapAioRing
        | Kind::MapIoUring
        | Kind::MapIoUringUnheld
        | Kind::MapOther => return None,
        // Only the dump tells them (the images hold a plain socket).
        Kind::NetlinkQueued | Kind::NetlinkOptions | Kind::PacketOptions => return None,
        // Not files but what is held through them: walked by
        // `the_restore_takes_or_refuses_locks_as_the_kind_table_says`.
        Kind::FileLock | Kind::FileLockOther | Kind::FileLease | Kind::FileLeaseBreaking => {
            return None
        }
    })
}

/// [`sample`] of the socket kinds.
fn socket_sample(kind: Kind, id: u32) -> pb::FileEntry {
    use pb::FdTypes as T;
    let unix = |ty: i32| {
        entry(T::Unixsk, id, |e| {
            e.usk = Some(pb::UnixSkEntry {
                id,
                ino: 5000 + id,
                r#type: ty as u32,
                state: 7,
                ..Default::default()
            })
        })
    };
    // Port 0: the test opens the samples it may, and nothing should take a fixed port.
    let inet = |id: u32, ty: i32, proto: i32, state: u32, ns_id: Option<u32>| {
        let mut e = inet(id, ty, proto, state, ns_id);
        if let Some(isk) = e.isk.as_mut() {
            isk.src_port = 0;
            isk.dst_port = 0;
        }
        e
    };
    match kind {
        Kind::UnixStream => unix(libc::SOCK_STREAM),
        Kind::UnixDgram => unix(libc::SOCK_DGRAM),
        Kind::UnixSeqpacket => unix(libc::SOCK_SEQPACKET),
        Kind::UnixOther => unix(libc::SOCK_RAW),
        // With a packet queued in sk-queues.img (see the test).
        Kind::UnixOrphanQueued => unix(libc::SOCK_DGRAM),
        Kind::UnixPeerOutside => {
            let mut e = unix(libc::SOCK_DGRAM);
            if let Some(u) = e.usk.as_mut() {
                u.peer = 4242;
                u.state = 1;
            }
            e
        }
        Kind::TcpListen => inet(id, libc::SOCK_STREAM, libc::IPPROTO_TCP, 10, None),
        Kind::TcpClosed => inet(id, libc::SOCK_STREAM, libc::IPPROTO_TCP, 7, None),
        Kind::TcpConnected => inet(id, libc::SOCK_STREAM, libc::IPPROTO_TCP, 1, None),
        Kind::TcpOtherState => inet(id, libc::SOCK_STREAM, libc::IPPROTO_TCP, 6, None),
        Kind::Udp => inet(id, libc::SOCK_DGRAM, libc::IPPROTO_UDP, 7, None),
        Kind::UdpLite => inet(id, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE, 7, None),
        Kind::InetRaw => inet(id, libc::SOCK_RAW, libc::IPPROTO_ICMP, 7, None),
        Kind::InetIcmp => inet(id, libc::SOCK_DGRAM, libc::IPPROTO_ICMP, 7, None),
        Kind::InetOther => inet(id, libc::SOCK_STREAM, libc::IPPROTO_SCTP, 10, None),
        Kind::OtherSocket => {
            let mut e = inet(id, libc::SOCK_DGRAM, 0, 7, None);
            if let Some(isk) = e.isk.as_mut() {
                isk.family = libc::AF_APPLETALK as u32;
            }
            e
        }
        // The inventory says the restorer's network namespace is 2.
        Kind::SocketForeignNetns => inet(id, libc::SOCK_DGRAM, libc::IPPROTO_UDP, 7, Some(77)),
        Kind::Netlink => entry(T::Netlinksk, id, |e| {
            e.nlsk = Some(pb::NetlinkSkEntry {
                id,
                ..Default::default()
            })
        }),
        Kind::Packet => entry(T::Packetsk, id, |e| {
            e.psk = Some(pb::PacketSockEntry {
                id,
                r#type: libc::SOCK_RAW as u32,
                ..Default::default()
            })
        }),
        _ => unreachable!("{kind:?} is not a socket"),
    }
}

/// Walks the kind table: the restore's reading of the images finds each kind the
/// images can describe, and refuses, naming it, each kind the table says it does not
/// rebuild (with the options that would make a conditional kind pass absent).
#[test]
fn the_restore_reads_every_kind_and_refuses_as_the_kind_table_says() {
    let dir = TempDir::new("restore-kind-table");
    let samples: Vec<(Kind, pb::FileEntry)> = kinds::TABLE
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((e.kind, sample(e.kind, i as u32 + 1)?)))
        .collect();
    let mut files: Vec<pb::FileEntry> = samples.iter().map(|(_, f)| f.clone()).collect();
    files.push(entry(pb::FdTypes::Reg, 999, |e| {
        e.reg = Some(pb::RegFileEntry {
            id: 999,
            name: "/tmp/criu-rs-no-such-fifo".into(),
            ..Default::default()
        })
    }));
    write_files(dir.path(), &files);
    let id_of = |kind: Kind| samples.iter().find(|(k, _)| *k == kind).unwrap().1.id;
    let mut remaps = writer(dir.path(), "REMAP_FPATH");
    for (kind, ty, remap_id) in [
        (Kind::DeletedFile, pb::RemapType::Ghost, 1),
        (Kind::DeletedLinked, pb::RemapType::Linked, 1),
        (
            Kind::ProcDeadPid,
            pb::RemapType::Procfs,
            std::os::unix::process::parent_id(),
        ),
    ] {
        remaps
            .write_entry(&pb::RemapFilePathEntry {
                orig_id: id_of(kind),
                remap_id,
                remap_type: Some(ty as i32),
            })
            .unwrap();
    }
    remaps.finish().unwrap();
    let mut queues = writer(dir.path(), "SK_QUEUES");
    queues
        .write_entry(&pb::SkPacketEntry {
            id_for: id_of(Kind::UnixOrphanQueued),
            length: 4,
            ..Default::default()
        })
        .unwrap();
    queues.write_raw(b"left").unwrap();
    queues.finish().unwrap();
    let mq = ImageKind::by_name("CRIU_RS_MQUEUE").unwrap();
    let mut mq = ImageWriter::create(dir.path().join(mq.file_name(1)), mq).unwrap();
    mq.write_entry(&pb::MqueueEntry {
        desc: pb::IpcDescEntry {
            mode: 0o600,
            id: 1,
            ..Default::default()
        },
        qbytes: 8,
        name: b"criu-rs-sample".to_vec(),
        unlinked: Some(true),
        maxmsg: 1,
        msgsize: 8,
        ..Default::default()
    })
    .unwrap();
    mq.finish().unwrap();
    let mut infos = writer(dir.path(), "TTY_INFO");
    let pty = |id: u32, rdev: u64, index: u32| pb::TtyInfoEntry {
        id,
        r#type: pb::TtyType::Pty as i32,
        rdev: rdev as u32,
        pty: Some(pb::TtyPtyEntry { index }),
        ..Default::default()
    };
    let dev_tty = |id: u32, sid: u32| pb::TtyInfoEntry {
        id,
        r#type: pb::TtyType::Ctty as i32,
        rdev: libc::makedev(5, 0) as u32,
        sid,
        ..Default::default()
    };
    for info in [
        pb::TtyInfoEntry {
            termios: Some(pb::TermiosEntry {
                c_cc: vec![0; 19],
                ..Default::default()
            }),
            ..pty(6, libc::makedev(136, 3), 3)
        },
        pty(10, libc::makedev(136, 5), 5),
        pty(8, libc::makedev(136, 4), 4),
        pb::TtyInfoEntry {
            sid: 77,
            ..pty(9, libc::makedev(5, 2), 4)
        },
        dev_tty(30, 77),
        dev_tty(31, 55),
        pb::TtyInfoEntry {
            id: 20,
            r#type: pb::TtyType::Serial as i32,
            rdev: libc::makedev(4, 64) as u32,
            ..Default::default()
        },
        pb::TtyInfoEntry {
            id: 21,
            r#type: pb::TtyType::Console as i32,
            rdev: libc::makedev(5, 1) as u32,
            ..Default::default()
        },
        pb::TtyInfoEntry {
            id: 22,
            r#type: pb::TtyType::Vt as i32,
            rdev: libc::makedev(4, 5) as u32,
            ..Default::default()
        },
    ] {
        infos.write_entry(&info).unwrap();
    }
    infos.finish().unwrap();
    let mut inv = writer(dir.path(), "INVENTORY");
    inv.write_entry(&pb::InventoryEntry {
        root_ids: Some(pb::TaskKobjIdsEntry {
            net_ns_id: Some(2),
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    inv.finish().unwrap();
    let mut opener = FileOpener::load(dir.path()).unwrap();
    // This test process stands for the one task of the tree.
    let me = std::process::id() as i32;
    opener.set_tree_pids([(me, me)]);
    assert!(samples.len() > 30, "{} samples", samples.len());
    for (kind, file) in &samples {
        let (found, _) = opener.file_kind(file).unwrap();
        assert_eq!(found, *kind, "{file:?}");
        let at = FileRef {
            id: file.id,
            kind: kind_name(file.r#type),
            fd: Some(3),
        };
        let judged = opener.check_kind(Pid(7), &at, file);
        match kind.restore_refusal(Given::default()) {
            Some(why) => {
                let err = judged.expect_err(kind.name()).to_string();
                assert!(
                    err.starts_with("task 7 fd 3 (")
                        && err.contains(kind.name())
                        && err.contains(&why),
                    "{err}"
                );
            }
            None => judged.unwrap_or_else(|e| panic!("{kind:?}: {e}")),
        }
    }
    // Every kind the table says the restore rebuilds (given every option) has code that
    // opens it: opening a sample may fail on the sample's made-up contents, but never
    // because the restore has no way to open files of its type.
    let mut opener = opener;
    let everything = Given {
        shell_job: true,
        inherit_fd: true,
        ext_unix_sk: true,
        file_locks: true,
        tcp_established: true,
        skip_in_flight: true,
        link_remap: true,
    };
    for (kind, file) in &samples {
        if kind.restore_refusal(everything).is_some() {
            continue;
        }
        if let Err(e) = opener.open(file.id, &[]) {
            let msg = e.to_string();
            assert!(
                !msg.contains(NO_OPENER),
                "{kind:?} has no restore path: {msg}"
            );
        }
    }
}

mod ghosts;
mod later_kinds;
