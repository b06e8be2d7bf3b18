//! Dump tests of ptys and POSIX message queues.

use super::*;

/// A pty pair the tree holds whole is dumped, with or without -j; one end also held by a
/// process outside the tree is refused, naming that process, before anything changes.
#[test]
fn pty_masters_are_dumped_unless_held_outside_the_tree() {
    let Some((master, slave)) = open_pty() else {
        eprintln!("skipped: no /dev/ptmx here");
        return;
    };
    let master_fd = raw(&master);
    let on_master = Child::holding(&[master_fd]);
    let on_slave = Child::holding(&[raw(&slave)]);
    // The dumper holding an end would count as outside the tree too.
    drop((master, slave));
    for shell_job in [false, true] {
        let checks = TreeChecks::new(&[on_master.pid, on_slave.pid], shell_job);
        checks.check(on_master.pid).unwrap();
        checks.check(on_slave.pid).unwrap();
    }
    let mut table = FileTable::new();
    let fdinfo = table.dump_task_fds(on_master.pid).unwrap();
    let (fe, _) = entry_for(&fdinfo, &table, master_fd);
    assert_eq!(fe.r#type, pb::FdTypes::Tty as i32);
    table.dump_task_fds(on_slave.pid).unwrap();
    table.check_complete().unwrap();
    // (It holds a duplicate of the master, as a dump does once frozen.)
    drop(table);
    // The slave's holder outside the tree: the master is refused, naming it.
    let err = TreeChecks::new(&[on_master.pid], false)
        .check(on_master.pid)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, FileError::Unsupported { pid, fd, .. }
            if *pid == on_master.pid && *fd == master_fd),
        "{msg}"
    );
    assert!(
        msg.contains(kinds::Kind::PtyMaster.name())
            && msg.contains("/dev/ptmx")
            && msg.contains(&format!("process {}", on_slave.pid))
            && msg.contains("outside the tree"),
        "{msg}"
    );
    // The master's holder outside: the slave is a shell job's terminal, refused
    // without -j.
    let err = TreeChecks::new(&[on_slave.pid], false)
        .check(on_slave.pid)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(kinds::Kind::PtySlave.name()) && msg.contains("--shell-job"),
        "{msg}"
    );
}

#[test]
fn pty_slave_is_a_shell_jobs_terminal_only_with_shell_job() {
    let Some((_master, slave)) = open_pty() else {
        eprintln!("skipped: no /dev/ptmx here");
        return;
    };
    let child = Child::holding(&[raw(&slave)]);
    let err = FileTable::check_supported(child.pid, false).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("fd {}", raw(&slave)))
            && msg.contains(kinds::Kind::PtySlave.name())
            && msg.contains("--shell-job"),
        "{msg}"
    );
    FileTable::check_supported(child.pid, true).unwrap();
    let mut table = FileTable::new();
    table.set_shell_job(true);
    let fdinfo = table.dump_task_fds(child.pid).unwrap();
    let (fe, _) = entry_for(&fdinfo, &table, raw(&slave));
    assert_eq!(fe.r#type, pb::FdTypes::Tty as i32);
    table.check_complete().unwrap();
}

/// A message queue is recorded with its messages (images of our own, an EXT entry in
/// files.img), and reading them leaves the queue as it was.
#[test]
fn a_posix_message_queue_is_recorded_with_its_messages_and_left_as_it_was() {
    let name = format!("criu-rs-dump-mq-{}", std::process::id());
    let q = sys::mq_open_name(name.as_bytes(), libc::O_RDWR, Some((0o640, 4, 32))).unwrap();
    sys::mq_unlink_name(name.as_bytes()).unwrap();
    for (prio, text) in [(2, &b"two"[..]), (9, b"nine"), (2, b"two-again")] {
        assert!(sys::mq_send_now(q.as_fd(), prio, text).unwrap());
    }
    let child = Child::holding(&[raw(&q)]);
    FileTable::check_supported(child.pid, false).unwrap();
    let mut table = FileTable::new();
    let fdinfo = table.dump_task_fds(child.pid).unwrap();
    let (fdi, fe) = entry_for(&fdinfo, &table, raw(&q));
    assert_eq!(fdi.r#type, pb::FdTypes::Ext as i32);
    assert_eq!(fe.ext.as_ref().map(|x| x.id), Some(fe.id));
    let dir = TempDir::new("dump-mqueue");
    table.write_images(dir.path()).unwrap();
    let mqueue = fe.ext.as_ref().and_then(|x| x.mqueue).unwrap();
    assert_eq!(mqueue.flags & libc::O_ACCMODE as u32, libc::O_RDWR as u32);
    let image = format!("criu-rs-mqueue-{}.img", mqueue.queue_id);
    let mut r = ImageReader::open(dir.path().join(&image)).unwrap();
    assert_eq!(
        r.kind().name,
        "CRIU_RS_MQUEUE",
        "told from IPCNS_MSG by its name"
    );
    let queue: pb::MqueueEntry = r.next_entry().unwrap().unwrap();
    assert_eq!(queue.name, name.as_bytes());
    assert_eq!(queue.unlinked, Some(true));
    assert_eq!(queue.desc.id, mqueue.queue_id);
    assert_eq!(
        (queue.desc.mode, queue.maxmsg, queue.msgsize),
        (0o640, 4, 32)
    );
    assert_eq!((queue.desc.key, queue.qbytes, queue.qnum), (0, 4 * 32, 3));
    // Each message as a SysV one: its priority and length, its text padded to 8.
    let mut got = Vec::new();
    while let Some(m) = r.next_entry::<pb::IpcMsg>().unwrap() {
        let text = r.read_extra(m.msize.into(), "text").unwrap();
        r.skip(
            text.len().next_multiple_of(8) as u64 - text.len() as u64,
            "pad",
        )
        .unwrap();
        got.push((m.mtype as u32, text));
    }
    let expected: Vec<(u32, Vec<u8>)> = [(9, &b"nine"[..]), (2, b"two"), (2, b"two-again")]
        .iter()
        .map(|(p, t)| (*p, t.to_vec()))
        .collect();
    assert_eq!(got, expected);
    // Still there, in order.
    let mut left = Vec::new();
    while let Some(m) = sys::mq_receive_now(q.as_fd(), 32).unwrap() {
        left.push(m);
    }
    assert_eq!(left, expected);
}

/// A queue a process registered a notification on is refused, naming the queue and
/// the process. (The registration goes when its owner closes any descriptor of the
/// queue, so the owner must be another process than this test, which closes the
/// duplicates it inspects: a python3 one.)
#[test]
fn a_posix_message_queue_with_a_notification_is_refused_by_name() {
    const REGISTER: &str = r#"
import ctypes, os, sys, time
rt = ctypes.CDLL("librt.so.1", use_errno=True)
fd = rt.mq_open(b"/" + sys.argv[1].encode(), os.O_RDONLY)
ev = (ctypes.c_byte * 64)()
ctypes.c_int.from_buffer(ev, 12).value = 1  # sigev_notify = SIGEV_NONE
if fd < 0 or rt.mq_notify(fd, ev) != 0:
    sys.exit("mq_open/mq_notify: errno %d" % ctypes.get_errno())
print(fd, flush=True)
time.sleep(60)
"#;
    let name = format!("criu-rs-notified-{}", std::process::id());
    let q = sys::mq_open_name(name.as_bytes(), libc::O_RDWR, Some((0o600, 2, 8))).unwrap();
    let mut py = match Command::new("python3")
        .args(["-c", REGISTER, &name])
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipped: no python3 ({e})");
            return;
        }
    };
    let mut line = String::new();
    let read = std::io::BufRead::read_line(
        &mut std::io::BufReader::new(py.stdout.take().unwrap()),
        &mut line,
    );
    sys::mq_unlink_name(name.as_bytes()).unwrap();
    drop(q);
    let fd: i32 = match read.ok().and_then(|_| line.trim().parse().ok()) {
        Some(fd) => fd,
        None => {
            let _ = py.kill();
            let _ = py.wait();
            panic!("the python3 helper did not register: {line:?}");
        }
    };
    let pid = Pid(py.id() as i32);
    let err = FileTable::check_supported(pid, false).unwrap_err();
    let _ = py.kill();
    let _ = py.wait();
    let msg = err.to_string();
    assert!(
        matches!(&err, FileError::Unsupported { fd: f, .. } if *f == fd),
        "{msg}"
    );
    assert!(
        msg.contains(kinds::Kind::MqueueNotify.name())
            && msg.contains(&format!("queue /{name}"))
            && msg.contains(&format!("registered by pid {pid}")),
        "{msg}"
    );
}
