//! Restore tests of mappings by the kind table, datagram ends, POSIX message queues and
//! file locks.

use super::*;

#[test]
fn mappings_are_read_and_refused_as_the_kind_table_says() {
    use criu_images::flags::vma::{
        VMA_ANON_PRIVATE, VMA_ANON_SHARED, VMA_AREA_MEMFD, VMA_AREA_REGULAR, VMA_AREA_SYSVIPC,
        VMA_AREA_VDSO, VMA_FILE_PRIVATE, VMA_FILE_SHARED,
    };
    let mut files = HashMap::new();
    let reg = |id: u32, name: &str, mode: u32| {
        entry(pb::FdTypes::Reg, id, |e| {
            e.reg = Some(pb::RegFileEntry {
                id,
                name: name.into(),
                mode: Some(mode),
                ..Default::default()
            })
        })
    };
    files.insert(1, reg(1, "/usr/lib/libc.so.6", libc::S_IFREG | 0o755));
    files.insert(2, reg(2, "/dev/zero", libc::S_IFCHR | 0o666));
    files.insert(3, reg(3, "/dev/fb0", libc::S_IFCHR | 0o660));
    files.insert(
        9,
        entry(pb::FdTypes::Packetsk, 9, |e| {
            e.psk = Some(pb::PacketSockEntry::default())
        }),
    );
    files.insert(
        10,
        entry(pb::FdTypes::Ext, 10, |e| {
            e.ext = Some(pb::ExtFileEntry {
                id: 10,
                io_uring: Some(pb::IoUringFileEntry::default()),
                ..Default::default()
            })
        }),
    );
    let vma = |status: u32, shmid: u64| pb::VmaEntry {
        start: 0x1000,
        end: 0x2000,
        status: VMA_AREA_REGULAR | status,
        shmid,
        ..Default::default()
    };
    let cases = [
        (vma(VMA_ANON_PRIVATE, 0), Kind::MapAnonPrivate),
        (vma(VMA_ANON_SHARED, 77), Kind::MapAnonShared),
        (vma(VMA_AREA_MEMFD, 5), Kind::MapMemfd),
        (vma(VMA_AREA_VDSO | VMA_ANON_PRIVATE, 0), Kind::MapVdso),
        (vma(VMA_FILE_PRIVATE, 1), Kind::MapFilePrivate),
        (vma(VMA_FILE_SHARED, 1), Kind::MapFileShared),
        (vma(VMA_FILE_PRIVATE, 2), Kind::MapFilePrivate),
        (vma(VMA_FILE_SHARED, 3), Kind::MapDevice),
        (
            vma(VMA_AREA_SYSVIPC | VMA_ANON_SHARED, 123),
            Kind::MapSysvShm,
        ),
        (vma(1 << 13, 0), Kind::MapAioRing),
        // A packet ring: VMA_AREA_SOCKET (with the file bits or not), the socket's id.
        (vma(1 << 11, 9), Kind::MapSocket),
        (vma((1 << 11) | VMA_FILE_SHARED, 9), Kind::MapSocket),
        // A socket mapping naming no packet socket.
        (vma(1 << 11, 1), Kind::MapOtherSocket),
        (vma(1 << 11, 40), Kind::MapOtherSocket),
        // An io_uring ring's region: a shared mapping of the ring's file.
        (vma(VMA_FILE_SHARED, 10), Kind::MapIoUring),
    ];
    for (v, kind) in cases {
        assert_eq!(mapping_kind(&files, &v), kind, "{v:?}");
        match kind.restore_refusal(Given::default()) {
            Some(why) => {
                let what = mapping_refusal(&files, &v).unwrap_or_else(|| panic!("{kind:?}"));
                assert!(what.contains(kind.name()) && what.contains(&why), "{what}");
            }
            None => assert_eq!(mapping_refusal(&files, &v), None),
        }
    }
}

/// A datagram end whose peer closed after sending (zdtm's socket_close_data) comes back
/// with its datagrams, still pointing at a dead peer: the next send without an address
/// fails with ECONNREFUSED, as it would have, and then it is unconnected.
#[test]
fn a_datagram_end_whose_peer_closed_keeps_its_data_and_dead_peer() {
    let dir = TempDir::new("dgram-closed");
    let (gone, left) = std::os::unix::net::UnixDatagram::pair().unwrap();
    gone.send(b"one").unwrap();
    gone.send(b"two-two").unwrap();
    drop(gone);
    let left = OwnedFd::from(left);
    let held = [raw(&left)];
    let fdinfo = dump_fds(&held, dir.path());
    drop(left);

    let mut opener = FileOpener::load(dir.path()).unwrap();
    let fds = open_all(&mut opener, &fdinfo);
    drop(opener);
    let left = &fds[&held[0]];
    assert_eq!(recv_now(left).unwrap(), b"one");
    assert_eq!(recv_now(left).unwrap(), b"two-two");
    assert_eq!(recv_now(left), None);
    let e = sys::send(left.as_fd(), b"x", libc::MSG_DONTWAIT).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");
    let e = sys::send(left.as_fd(), b"x", libc::MSG_DONTWAIT).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
}

/// Message queues come back with their size, mode, messages and each open file
/// description's flags: a named one that still exists is reopened as it is, one that is
/// gone is created again with its messages, an unlinked one is made nameless again.
#[test]
fn message_queues_are_made_again_or_reopened() {
    let pid = std::process::id();
    let kept = format!("criu-rs-restore-kept-{pid}");
    let gone = format!("criu-rs-restore-gone-{pid}");
    let nameless = format!("criu-rs-restore-nameless-{pid}");
    let open_new = |name: &str, flags: i32| {
        sys::mq_open_name(name.as_bytes(), flags, Some((0o604, 3, 16))).unwrap()
    };
    let kept_q = open_new(&kept, libc::O_RDWR | libc::O_NONBLOCK);
    let gone_q = open_new(&gone, libc::O_WRONLY);
    let nameless_q = open_new(&nameless, libc::O_RDONLY);
    sys::mq_unlink_name(nameless.as_bytes()).unwrap();
    let send = |q: &OwnedFd, prio: u32, text: &[u8]| {
        let rw = reopen(q.as_fd(), libc::O_RDWR).unwrap();
        assert!(sys::mq_send_now(rw.as_fd(), prio, text).unwrap());
    };
    send(&kept_q, 1, b"kept-1");
    send(&gone_q, 1, b"gone-low");
    send(&gone_q, 5, b"gone-high");
    send(&nameless_q, 0, b"nameless");
    let dir = TempDir::new("restore-mqueues");
    let fds = [raw(&kept_q), raw(&gone_q), raw(&nameless_q)];
    let fdinfo = dump_fds(&fds, dir.path());
    // After the dump: the kept queue gets one more message, the gone one goes.
    send(&kept_q, 1, b"kept-2");
    sys::mq_unlink_name(gone.as_bytes()).unwrap();
    drop((kept_q, gone_q, nameless_q));

    let mut opener = FileOpener::load(dir.path()).unwrap();
    opener.make_mqueues(Pid(pid as i32)).unwrap();
    let restored = open_all(&mut opener, &fdinfo);
    opener.keep_mqueues();
    drop(opener);
    let receive_all = |fd: &OwnedFd| {
        let rw = reopen(fd.as_fd(), libc::O_RDWR).unwrap();
        let mut out = Vec::new();
        while let Some((prio, text)) = sys::mq_receive_now(rw.as_fd(), 16).unwrap() {
            out.push((prio, String::from_utf8(text).unwrap()));
        }
        out
    };
    let (k, g, n) = (&restored[&fds[0]], &restored[&fds[1]], &restored[&fds[2]]);
    let flags = |fd: &OwnedFd| sys::fcntl_get(fd.as_fd(), libc::F_GETFL).unwrap();
    assert_eq!(
        flags(k) & (libc::O_ACCMODE | libc::O_NONBLOCK),
        libc::O_RDWR | libc::O_NONBLOCK
    );
    assert_eq!(
        flags(g) & (libc::O_ACCMODE | libc::O_NONBLOCK),
        libc::O_WRONLY
    );
    assert_eq!(
        flags(n) & (libc::O_ACCMODE | libc::O_NONBLOCK),
        libc::O_RDONLY
    );
    for fd in [k, g, n] {
        let a = sys::mq_getattr(fd.as_fd()).unwrap();
        assert_eq!((a.maxmsg, a.msgsize), (3, 16));
        let meta = file(fd).metadata().unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o604);
    }
    assert_eq!(link(k), format!("/{kept}"));
    assert_eq!(link(g), format!("/{gone}"));
    // Made again at its old name, which it has let go of again.
    assert_eq!(link(n), format!("/{nameless} (deleted)"));
    assert_eq!(
        receive_all(k),
        [(1, "kept-1".into()), (1, "kept-2".into())],
        "reopened as it is"
    );
    assert_eq!(
        receive_all(g),
        [(5, "gone-high".into()), (1, "gone-low".into())],
        "made again with its messages"
    );
    assert_eq!(receive_all(n), [(0, "nameless".into())]);
    for name in [&kept, &gone] {
        sys::mq_unlink_name(name.as_bytes()).unwrap();
    }
}

/// A queue made by name is removed again when the restore fails (the opener goes
/// before `keep_mqueues`).
#[test]
fn message_queues_made_by_a_failed_restore_are_removed() {
    let pid = std::process::id();
    let name = format!("criu-rs-restore-failed-{pid}");
    let q = sys::mq_open_name(name.as_bytes(), libc::O_RDWR, Some((0o600, 2, 8))).unwrap();
    let dir = TempDir::new("restore-mqueue-failed");
    dump_fds(&[raw(&q)], dir.path());
    drop(q);
    sys::mq_unlink_name(name.as_bytes()).unwrap();
    let mut opener = FileOpener::load(dir.path()).unwrap();
    opener.make_mqueues(Pid(pid as i32)).unwrap();
    assert!(sys::mq_open_name(name.as_bytes(), libc::O_RDONLY, None).is_ok());
    drop(opener);
    let gone = sys::mq_open_name(name.as_bytes(), libc::O_RDONLY, None).unwrap_err();
    assert_eq!(gone.raw_os_error(), Some(libc::ENOENT));
}

/// Walks the lock rows of the kind table: a lock in `filelocks.img` is refused, naming
/// its row, exactly when the table says the restore does not take it again (with and
/// without `--file-locks`); entries that name no fd of the tree are bad images; and the
/// accepted ones become calls that do not wait.
#[test]
fn the_restore_takes_or_refuses_locks_as_the_kind_table_says() {
    use criu_images::flags::file_lock::{FL_FLOCK, FL_LEASE, FL_OFD, FL_POSIX};
    let dir = TempDir::new("restore-lock-rows");
    let reg = sample(Kind::RegFile, 1).unwrap();
    let pipe = sample(Kind::Pipe, 2).unwrap();
    write_files(dir.path(), &[reg, pipe]);
    let fdinfo = [
        pb::FdinfoEntry {
            id: 1,
            fd: 3,
            r#type: pb::FdTypes::Reg as i32,
            ..Default::default()
        },
        pb::FdinfoEntry {
            id: 2,
            fd: 4,
            r#type: pb::FdTypes::Pipe as i32,
            ..Default::default()
        },
    ];
    let lock = |flag: u32, fd: i32, pid: i32| pb::FileLockEntry {
        flag,
        r#type: libc::F_WRLCK as u32,
        pid,
        fd,
        start: 10,
        len: 5,
    };
    let me = 7;
    let cases = [
        (lock(FL_POSIX, 3, me), Some(Kind::FileLock)),
        (lock(FL_FLOCK, 3, me), Some(Kind::FileLock)),
        (lock(FL_OFD, 3, me), Some(Kind::FileLock)),
        (lock(FL_FLOCK, 4, me), Some(Kind::FileLockOther)),
        (lock(FL_LEASE, 3, me), Some(Kind::FileLease)),
        (
            pb::FileLockEntry {
                // CRIU's LEASE_BREAKING bit, over the type it is broken to.
                r#type: libc::F_UNLCK as u32 | 4,
                ..lock(FL_LEASE, 3, me)
            },
            Some(Kind::FileLeaseBreaking),
        ),
        // Broken to a read lease: a write lease (on fd 3, read-only) before.
        (
            pb::FileLockEntry {
                r#type: libc::F_RDLCK as u32 | 4,
                ..lock(FL_LEASE, 3, me)
            },
            Some(Kind::FileLeaseBreaking),
        ),
        // Broken to a write lease: no break does that.
        (
            pb::FileLockEntry {
                r#type: libc::F_WRLCK as u32 | 4,
                ..lock(FL_LEASE, 3, me)
            },
            None,
        ),
        // Not a fd of the task, not a task of the tree, not a family.
        (lock(FL_POSIX, 9, me), None),
        (lock(FL_POSIX, 3, 8), None),
        (lock(FL_POSIX | FL_OFD, 3, me), None),
    ];
    let mut walked = std::collections::HashSet::new();
    for (entry, kind) in &cases {
        let mut w = writer(dir.path(), "FILE_LOCKS");
        w.write_entry(entry).unwrap();
        w.finish().unwrap();
        for file_locks in [false, true] {
            let mut opener = FileOpener::load(dir.path()).unwrap();
            opener.set_file_locks(file_locks);
            let judged = opener.check_locks(&[(Pid(me), &fdinfo[..])]);
            let given = Given {
                file_locks,
                ..Given::default()
            };
            match kind.map(|k| (k, k.restore_refusal(given))) {
                None => {
                    let err = judged.expect_err("a bad entry").to_string();
                    assert!(err.starts_with("filelocks.img: "), "{err}");
                }
                Some((kind, Some(why))) => {
                    walked.insert(kind);
                    let err = judged.expect_err(kind.name()).to_string();
                    assert!(
                        err.starts_with(&format!("task {me} fd {} (", entry.fd))
                            && err.contains(kind.name())
                            && err.contains(&why),
                        "{err}"
                    );
                }
                Some((kind, None)) => {
                    walked.insert(kind);
                    judged.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
                    let calls = opener.lock_calls(Pid(me), &fdinfo).unwrap();
                    assert_eq!(calls.len(), 1);
                    assert_eq!(calls[0].fd, 3);
                    assert!(calls[0].what.contains("/etc/hostname"), "{:?}", calls[0]);
                    assert!(opener.lock_calls(Pid(me + 1), &fdinfo).unwrap().is_empty());
                }
            }
        }
    }
    let rows: std::collections::HashSet<Kind> = kinds::TABLE
        .iter()
        .map(|e| e.kind)
        .filter(|k| {
            matches!(
                k,
                Kind::FileLock | Kind::FileLockOther | Kind::FileLease | Kind::FileLeaseBreaking
            )
        })
        .collect();
    assert_eq!(walked, rows, "every lock row is walked");
}
