//! Dump tests of file locks and leases.

use super::*;

/// A `struct flock` of `ty` over `len` bytes from `start` (0: to the end).
fn flock_of(ty: i32, start: i64, len: i64) -> libc::flock {
    libc::flock {
        l_type: ty as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: start,
        l_len: len,
        l_pid: 0,
    }
}

/// Locks the children hold through descriptions they share with us and each other (a
/// flock and OFD locks, which the description owns, taken before the fork) are recorded
/// once, with the first child met; a POSIX lock of ours, a process outside the tree, is
/// not theirs. Without `--file-locks` the first locked fd is refused, naming the lock.
#[test]
fn locks_are_recorded_once_per_description_and_refused_without_the_flag() {
    use criu_images::flags::file_lock::{FL_FLOCK, FL_OFD};
    let dir = TempDir::new("locks");
    let path = dir.path().join("locked");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap()
    };
    let flocked = open();
    sys::flock(flocked.as_fd(), libc::LOCK_EX | libc::LOCK_NB).unwrap();
    let ofd = open();
    sys::fcntl_lock(
        ofd.as_fd(),
        libc::F_OFD_SETLK,
        &mut flock_of(libc::F_RDLCK, 100, 10),
    )
    .unwrap();
    sys::fcntl_lock(
        ofd.as_fd(),
        libc::F_OFD_SETLK,
        &mut flock_of(libc::F_WRLCK, 1000, 0),
    )
    .unwrap();
    let ours = open();
    sys::fcntl_lock(
        ours.as_fd(),
        libc::F_SETLK,
        &mut flock_of(libc::F_WRLCK, 0, 10),
    )
    .unwrap();
    let fds = [raw(&flocked), raw(&ofd), raw(&ours)];
    let c1 = Child::holding(&fds);
    let c2 = Child::holding(&fds);

    let err = FileTable::check_supported(c1.pid, false).unwrap_err();
    match &err {
        FileError::Unsupported { pid, fd, kind } => {
            assert_eq!((*pid, *fd), (c1.pid, raw(&flocked)), "{err}");
            assert!(
                kind.contains(Kind::FileLock.name())
                    && kind.contains("flock write lock")
                    && kind.contains("--file-locks")
                    && kind.contains(&path.display().to_string()),
                "{kind}"
            );
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(TreeChecks::new(&[c1.pid], false)
        .with_file_locks(true)
        .check(c1.pid)
        .is_ok());

    let mut table = FileTable::new();
    table.set_file_locks(true);
    let t1 = table.dump_task_fds(c1.pid).unwrap();
    table.dump_task_fds(c2.pid).unwrap();
    let out = TempDir::new("locks-images");
    table.write_locks(out.path(), |p| p.0 as u32 + 1).unwrap();
    let mut locks: Vec<pb::FileLockEntry> = read_entries(&out.path().join("filelocks.img"));
    locks.sort_by_key(|l| (l.fd, l.start));
    let lock = |flag, ty: i32, fd: RawFd, start, len| pb::FileLockEntry {
        flag,
        r#type: ty as u32,
        // The number the task has inside the tree, as `write_locks` was told.
        pid: c1.pid.0 + 1,
        fd,
        start,
        len,
    };
    assert_eq!(
        locks,
        [
            lock(FL_FLOCK, libc::F_WRLCK, raw(&flocked), 0, 0),
            lock(FL_OFD, libc::F_RDLCK, raw(&ofd), 100, 10),
            lock(FL_OFD, libc::F_WRLCK, raw(&ofd), 1000, 0),
        ]
    );
    // The shared descriptions kept one id each.
    assert!(t1.iter().any(|e| e.fd == raw(&flocked) as u32));
}

/// A lock on a pipe (its restore is a new pipe) is refused by its row whatever the
/// options; a lease nobody breaks is recorded with the flag, and its file is not
/// reopened by the dump (a read open would break a write lease); a lease being broken is
/// recorded as CRIU writes it: the type it is broken to, with `LEASE_BREAKING`.
#[test]
fn leases_are_recorded_being_broken_or_not_and_locks_on_pipes_refused() {
    use criu_images::flags::file_lock::FL_LEASE;
    const F_SETLEASE: i32 = 1024;
    const F_SETSIG: i32 = 10;
    let dir = TempDir::new("lease");
    let (r, _w) = sys::pipe(0).unwrap();
    sys::flock(r.as_fd(), libc::LOCK_SH | libc::LOCK_NB).unwrap();
    let write_leased = dir.path().join("write-leased");
    std::fs::write(&write_leased, b"x").unwrap();
    let wl = OpenOptions::new().write(true).open(&write_leased).unwrap();
    sys::fcntl_set(wl.as_fd(), F_SETLEASE, libc::F_WRLCK).unwrap();
    // Broken by our own open for writing (which fails at once: O_NONBLOCK); the break
    // signals the lease's owner, us: with SIGWINCH, which does nothing here.
    let breaking = dir.path().join("breaking");
    std::fs::write(&breaking, b"x").unwrap();
    let bl = File::open(&breaking).unwrap();
    sys::fcntl_set(bl.as_fd(), F_SETSIG, libc::SIGWINCH).unwrap();
    sys::fcntl_set(bl.as_fd(), F_SETLEASE, libc::F_RDLCK).unwrap();
    let broke = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&breaking)
        .unwrap_err();
    assert_eq!(broke.raw_os_error(), Some(libc::EWOULDBLOCK), "{broke}");
    let fd = raw(&r);
    let child = Child::holding(&[fd]);
    let err = TreeChecks::new(&[child.pid], false)
        .with_file_locks(true)
        .check(child.pid)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("fd {fd}")) && err.contains(Kind::FileLockOther.name()),
        "{err}"
    );
    let breaker = Child::holding(&[raw(&bl)]);
    let err = FileTable::check_supported(breaker.pid, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(Kind::FileLeaseBreaking.name()) && err.contains("--file-locks"),
        "{err}"
    );
    TreeChecks::new(&[breaker.pid], false)
        .with_file_locks(true)
        .check(breaker.pid)
        .unwrap();
    let broken_dir = TempDir::new("lease-breaking");
    let mut table = FileTable::new();
    table.set_file_locks(true);
    table.dump_task_fds(breaker.pid).unwrap();
    table
        .write_locks(broken_dir.path(), |p| p.0 as u32)
        .unwrap();
    let locks: Vec<pb::FileLockEntry> = read_entries(&broken_dir.path().join("filelocks.img"));
    assert_eq!(
        locks,
        [pb::FileLockEntry {
            flag: FL_LEASE,
            // CRIU's LEASE_BREAKING bit over the type it is broken to.
            r#type: libc::F_UNLCK as u32 | 4,
            pid: breaker.pid.0,
            fd: raw(&bl),
            start: 0,
            len: 0,
        }]
    );
    let child = Child::holding(&[raw(&wl)]);
    let err = FileTable::check_supported(child.pid, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(Kind::FileLease.name()) && err.contains("write lease on"),
        "{err}"
    );
    let mut table = FileTable::new();
    table.set_file_locks(true);
    table.dump_task_fds(child.pid).unwrap();
    table.write_locks(dir.path(), |p| p.0 as u32).unwrap();
    let locks: Vec<pb::FileLockEntry> = read_entries(&dir.path().join("filelocks.img"));
    assert_eq!(
        locks,
        [pb::FileLockEntry {
            flag: FL_LEASE,
            r#type: libc::F_WRLCK as u32,
            pid: child.pid.0,
            fd: raw(&wl),
            start: 0,
            len: 0,
        }]
    );
    // Still the write lease, not being broken by the dump.
    assert_eq!(
        sys::fcntl_get(wl.as_fd(), 1025 /* F_GETLEASE */).unwrap(),
        libc::F_WRLCK
    );
}
