//! tp-locks: file locks of every family held by a small tree, and tasks waiting for
//! locks; the check proves each lock is still held by the same process and open file
//! description, still excludes a second locker, and that the waiters still wait and get
//! their lock once it is released.
//!
//! Files (next to the ready file): `PATH.data` (8 KiB), `PATH.shared`, `PATH.wait`; and
//! the ready file's directory itself.
//!
//! The parent holds:
//! - `data-flock`: `PATH.data` read-write, `flock(LOCK_EX)`;
//! - `data-posix` (and `data-posix-dup`, a dup of it): POSIX write lock on bytes 0-99,
//!   read lock on 200-299, write lock from 4096 to the end;
//! - `data-ofd`: OFD read lock on 400-499 and write lock on 600-699;
//! - `dir`: the directory, `flock(LOCK_SH)`;
//! - `shared`: `PATH.shared`, `flock(LOCK_EX)` taken before the fork of child S, which
//!   holds the same open file description: one lock for both;
//! - `wait`: `PATH.wait`, `flock(LOCK_EX)`, which child W1 waits for (a blocking
//!   `flock` on a description of its own), while child W2 waits in `F_SETLKW` for a
//!   write lock on data bytes 0-99;
//! - `lease-read`: `PATH.rlease` read-only with a read lease, `lease-write`:
//!   `PATH.wlease` write-only with a write lease (`F_SETLEASE`); SIGIO, which a lease
//!   break sends, is counted;
//! - leases being broken: `breaking-read`, `PATH.brlease` read-only with a read lease
//!   that a write open (non-blocking, which fails) started breaking to nothing, and
//!   `breaking-write`, `PATH.bwlease` write-only with a write lease that a read open
//!   started breaking to a read lease; each break sent one SIGIO before `ready`.
//!
//! Child S holds a POSIX write lock of its own on data bytes 2000-2099.
//!
//! `PATH.locks`: the lock lines of every fd above at `ready` (`ROLE FD KIND TYPE START
//! END`, from /proc/PID/fdinfo), and `PATH.pids` (`ROLE PID`).
//!
//! Check (SIGUSR2 to the parent): the fdinfo lock lines of the parent's fds are those of
//! `ready`, POSIX ones with the parent's pid (the breaking leases still `BREAKING`);
//! `F_GETLEASE` gives both leases, and what the breaking ones are broken to; no lease
//! break signalled anything after `ready` (two SIGIOs, the breaks before it); once the
//! parent gives up the lease being broken to nothing, a write open of its file does
//! not conflict any more; /proc/locks has one flock on `PATH.shared`,
//! not one per process; a prober (a new child, with descriptions of its own) finds every
//! lock with `F_GETLK`/`F_OFD_GETLK` (type and owner) and fails to take a conflicting one
//! (`EWOULDBLOCK`/`EAGAIN`), while the gaps between ranges are free; S checks its own
//! lines; W1 and W2 are still waiting, and each gets its lock once the parent releases
//! it. Children die with the parent and leave if orphaned.

use std::collections::BTreeMap;
use std::os::raw::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use criu_testprogs::{
    c_path, cvt, install_handler, wait_until, write_atomic, Mapping, Program, Report,
};

const DATA_BYTES: usize = 8192;
const MESSAGE_BYTES: usize = 600;
const WAIT: Duration = Duration::from_secs(10);
const EXIT_ORPHANED: i32 = 3;
/// Lease breaks started before `ready`, each signalled once.
const BREAKS: u32 = 2;

/// One child's part of the board.
#[repr(C)]
struct Slot {
    pid: AtomicI32,
    /// 1 once set up (S: its lock taken; W1, W2: about to block).
    ready: AtomicU32,
    /// W1, W2: 1 once they got their lock.
    got: AtomicU32,
    /// S: the nonce of the last check it answered.
    echo: AtomicU64,
    message_len: AtomicU32,
    message: [AtomicU8; MESSAGE_BYTES],
}

/// The MAP_SHARED page; all zero is a valid board.
#[repr(C)]
struct Board {
    nonce: AtomicU64,
    /// W1, W2: 1 once the parent checked they still wait (they then report what they
    /// get).
    release: AtomicU32,
    s: Slot,
    w1: Slot,
    w2: Slot,
}

const _: () = assert!(std::mem::size_of::<Board>() <= 4096);

impl Slot {
    fn post(&self, report: &Report, nonce: u64) {
        let text = report.summary();
        let bytes = &text.as_bytes()[..text.len().min(MESSAGE_BYTES)];
        for (cell, &b) in self.message.iter().zip(bytes) {
            cell.store(b, Ordering::Relaxed);
        }
        self.message_len
            .store(bytes.len() as u32, Ordering::Relaxed);
        self.echo.store(nonce, Ordering::SeqCst);
    }

    fn message(&self) -> String {
        let len = self.message_len.load(Ordering::SeqCst) as usize;
        let bytes: Vec<u8> = self.message[..len.min(MESSAGE_BYTES)]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// SIGIO deliveries: a lease break notice.
static SIGIOS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_sigio(_: c_int) {
    SIGIOS.fetch_add(1, Ordering::SeqCst);
}

fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

fn getppid() -> libc::pid_t {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() }
}

fn open(path: &Path, flags: c_int) -> std::io::Result<c_int> {
    let c = c_path(path)?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) })
}

fn flock(fd: c_int, op: c_int) -> std::io::Result<()> {
    // SAFETY: plain call on our own fd.
    cvt(unsafe { libc::flock(fd, op) }).map(drop)
}

/// fcntl with a `struct flock` of `ty` over `len` bytes from `start`; returns the struct
/// as the kernel left it (the conflicting lock for the GETLK commands).
fn fcntl_lock(
    fd: c_int,
    cmd: c_int,
    ty: c_int,
    start: i64,
    len: i64,
) -> std::io::Result<libc::flock> {
    let mut l = libc::flock {
        l_type: ty as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: start,
        l_len: len,
        l_pid: 0,
    };
    // SAFETY: `l` is a valid struct flock, ours for the call, which may write it.
    cvt(unsafe { libc::fcntl(fd, cmd, &mut l as *mut libc::flock) })?;
    Ok(l)
}

/// The `lock:` lines of `/proc/PID/fdinfo/FD` as `KIND TYPE START END` (id, owner and
/// inode left out), with the owner's pid beside.
fn lock_lines(pid: &str, fd: c_int) -> std::io::Result<Vec<(String, i32)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("lock:") else {
            continue;
        };
        let t: Vec<&str> = rest.split_whitespace().collect();
        if t.len() != 8 {
            return Err(std::io::Error::other(format!("odd lock line {line:?}")));
        }
        out.push((
            format!("{} {} {} {}", t[1], t[3], t[6], t[7]),
            t[4].parse().unwrap_or(0),
        ));
    }
    Ok(out)
}

/// The inode of `fd`.
fn ino(fd: c_int) -> u64 {
    // SAFETY: stat is plain data the kernel fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid place to write.
    unsafe { libc::fstat(fd, &mut st) };
    st.st_ino
}

/// /proc/locks lines (`ID: [->] KIND MODE TYPE PID DEV:INO START END`) on inode `ino`:
/// (blocked, kind, pid).
fn proc_locks(ino: u64) -> Vec<(bool, String, i32)> {
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut t: Vec<&str> = line.split_whitespace().collect();
        let blocked = t.get(1) == Some(&"->");
        if blocked {
            t.remove(1);
        }
        if t.len() != 8 || !t[5].ends_with(&format!(":{ino}")) {
            continue;
        }
        out.push((blocked, t[1].to_owned(), t[4].parse().unwrap_or(0)));
    }
    out
}

/// Forks a child that runs `body` (which returns its exit status); it dies with us.
fn fork_child(parent: libc::pid_t, body: impl FnOnce() -> i32) -> std::io::Result<libc::pid_t> {
    // SAFETY: the child only runs `body`, written for a freshly forked single thread, and
    // leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: plain prctl; the parent may be gone already, checked right after.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        let status = if getppid() != parent {
            EXIT_ORPHANED
        } else {
            body()
        };
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe { libc::_exit(status) };
    }
    Ok(pid)
}

/// Child S: a POSIX lock of its own, then it answers each nonce with a check of its
/// lines.
fn child_s(board: &Board, data: &Path, shared_fd: c_int, parent: libc::pid_t) -> i32 {
    let Ok(fd) = open(data, libc::O_RDWR) else {
        return 2;
    };
    if fcntl_lock(fd, libc::F_SETLK, libc::F_WRLCK, 2000, 100).is_err() {
        return 2;
    }
    board.s.pid.store(getpid(), Ordering::SeqCst);
    board.s.ready.store(1, Ordering::SeqCst);
    let mut answered = 0;
    loop {
        if getppid() != parent {
            return EXIT_ORPHANED;
        }
        let nonce = board.nonce.load(Ordering::SeqCst);
        if nonce != answered && nonce != u64::MAX {
            let mut report = Report::new();
            match lock_lines("self", shared_fd) {
                Ok(lines) => report.check_eq(
                    "S: the shared description's lock",
                    lines.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>(),
                    vec!["FLOCK WRITE 0 EOF"],
                ),
                Err(e) => report.fail(format!("S: fdinfo of the shared fd: {e}")),
            }
            match lock_lines("self", fd) {
                Ok(lines) => report.check_eq(
                    "S: its own POSIX lock",
                    lines,
                    vec![("POSIX WRITE 2000 2099".to_owned(), getpid())],
                ),
                Err(e) => report.fail(format!("S: fdinfo of its fd: {e}")),
            }
            board.s.post(&report, nonce);
            answered = nonce;
        }
        if nonce == u64::MAX {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A waiter: says it is about to block, takes its lock (waiting), says so, and stays
/// until the parent has read that.
fn waiter(slot: &Slot, take: impl FnOnce() -> std::io::Result<()>, parent: libc::pid_t) -> i32 {
    slot.pid.store(getpid(), Ordering::SeqCst);
    slot.ready.store(1, Ordering::SeqCst);
    if take().is_err() {
        return 2;
    }
    slot.got.store(1, Ordering::SeqCst);
    while slot.got.load(Ordering::SeqCst) != 2 {
        if getppid() != parent {
            return EXIT_ORPHANED;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    0
}

/// The parent's locked fds, by role.
struct Held {
    fds: Vec<(&'static str, c_int)>,
}

impl Held {
    fn fd(&self, role: &str) -> c_int {
        self.fds
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, fd)| *fd)
            .unwrap_or(-1)
    }

    /// Every role's lock lines (`KIND TYPE START END`), and the owner's pid of each.
    fn lines(&self) -> std::io::Result<BTreeMap<&'static str, Vec<(String, i32)>>> {
        let mut out = BTreeMap::new();
        for &(role, fd) in &self.fds {
            out.insert(role, lock_lines("self", fd)?);
        }
        Ok(out)
    }
}

/// The prober's findings (a new process, with open file descriptions of its own).
fn probe(data: &Path, shared: &Path, wait: &Path, dir: &Path, parent: i32, s: i32) -> Report {
    let mut r = Report::new();
    let would_block = |e: &std::io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::EWOULDBLOCK) | Some(libc::EACCES)
        )
    };
    let Ok(fd) = open(data, libc::O_RDWR) else {
        r.fail("prober: open the data file");
        return r;
    };
    // flock: the parent's LOCK_EX excludes even a shared lock.
    match flock(fd, libc::LOCK_SH | libc::LOCK_NB) {
        Err(e) if would_block(&e) => {}
        other => r.fail(format!("data flock(LOCK_SH) by another: {other:?}")),
    }
    // POSIX: who holds what, as F_GETLK sees it for a write lock over the range.
    for (what, start, len, want) in [
        ("bytes 0-99", 0, 100, Some((libc::F_WRLCK, parent))),
        ("bytes 100-199", 100, 100, None),
        ("bytes 200-299", 200, 100, Some((libc::F_RDLCK, parent))),
        ("bytes 300-399", 300, 100, None),
        ("bytes 2000-2099", 2000, 100, Some((libc::F_WRLCK, s))),
        ("bytes 4096-", 4096, 0, Some((libc::F_WRLCK, parent))),
        ("bytes 7000-7009", 7000, 10, Some((libc::F_WRLCK, parent))),
    ] {
        match fcntl_lock(fd, libc::F_GETLK, libc::F_WRLCK, start, len) {
            Ok(l) => {
                let found =
                    (l.l_type != libc::F_UNLCK as i16).then_some((l.l_type as c_int, l.l_pid));
                r.check_eq(&format!("F_GETLK on {what}"), found, want);
            }
            Err(e) => r.fail(format!("F_GETLK on {what}: {e}")),
        }
    }
    // A second locker is excluded; a reader may share the read range.
    match fcntl_lock(fd, libc::F_SETLK, libc::F_WRLCK, 50, 10) {
        Err(e) if would_block(&e) => {}
        other => r.fail(format!("F_SETLK write on bytes 50-59: {other:?}")),
    }
    if let Err(e) = fcntl_lock(fd, libc::F_SETLK, libc::F_RDLCK, 250, 10) {
        r.fail(format!("F_SETLK read on bytes 250-259 (shared): {e}"));
    }
    // OFD locks: no owner pid (-1), and they exclude too.
    for (what, start, want) in [
        ("bytes 400-499", 400, libc::F_RDLCK),
        ("bytes 600-699", 600, libc::F_WRLCK),
    ] {
        match fcntl_lock(fd, libc::F_OFD_GETLK, libc::F_WRLCK, start, 100) {
            Ok(l) => r.check_eq(
                &format!("F_OFD_GETLK on {what}"),
                (l.l_type as c_int, l.l_pid),
                (want, -1),
            ),
            Err(e) => r.fail(format!("F_OFD_GETLK on {what}: {e}")),
        }
    }
    match fcntl_lock(fd, libc::F_OFD_SETLK, libc::F_RDLCK, 650, 10) {
        Err(e) if would_block(&e) => {}
        other => r.fail(format!("F_OFD_SETLK read on bytes 650-659: {other:?}")),
    }
    for (what, path, flags, op, excluded) in [
        ("the shared file", shared, libc::O_RDWR, libc::LOCK_SH, true),
        ("the waited file", wait, libc::O_RDWR, libc::LOCK_SH, true),
        ("the directory", dir, libc::O_RDONLY, libc::LOCK_EX, true),
        ("the directory", dir, libc::O_RDONLY, libc::LOCK_SH, false),
    ] {
        let Ok(other) = open(path, flags) else {
            r.fail(format!("prober: open {what}"));
            continue;
        };
        match (flock(other, op | libc::LOCK_NB), excluded) {
            (Err(e), true) if would_block(&e) => {}
            (Ok(()), false) => {}
            (got, _) => r.fail(format!("flock({op}) on {what} by another: {got:?}")),
        }
    }
    r
}

fn main() {
    let mut program = Program::start("tp-locks", &[]);
    let data = program.companion(".data");
    let shared = program.companion(".shared");
    let wait = program.companion(".wait");
    let dir = program.ready_dir();
    let parent = getpid();
    let mut board_map = program.must(Mapping::anonymous(4096, true), "mmap the board");
    board_map.words_mut().fill(0);
    // SAFETY: the page is zeroed, 4096 bytes, page aligned and outlives `board`; all-zero
    // is a valid Board, only ever accessed through atomics.
    let board: &Board = unsafe { &*board_map.addr().cast::<Board>() };

    let rlease = program.companion(".rlease");
    let wlease = program.companion(".wlease");
    let brlease = program.companion(".brlease");
    let bwlease = program.companion(".bwlease");
    let setup = || -> std::io::Result<(Held, [libc::pid_t; 3])> {
        install_handler(libc::SIGIO, on_sigio, libc::SA_RESTART, &[])?;
        std::fs::write(&data, vec![0x5a; DATA_BYTES])?;
        std::fs::write(&rlease, b"read lease")?;
        std::fs::write(&wlease, b"write lease")?;
        let lease_read = open(&rlease, libc::O_RDONLY)?;
        // SAFETY: plain fcntl with an int argument on our own fd.
        cvt(unsafe { libc::fcntl(lease_read, libc::F_SETLEASE, libc::F_RDLCK) })?;
        let lease_write = open(&wlease, libc::O_WRONLY)?;
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(lease_write, libc::F_SETLEASE, libc::F_WRLCK) })?;
        // Leases being broken: taken, then an open that conflicts and does not wait.
        let breaking = |path: &Path, mode: c_int, lease: c_int, breaker: c_int| {
            std::fs::write(path, b"breaking lease")?;
            let fd = open(path, mode)?;
            // SAFETY: as above.
            cvt(unsafe { libc::fcntl(fd, libc::F_SETLEASE, lease) })?;
            match open(path, breaker | libc::O_NONBLOCK) {
                Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(fd),
                Err(e) => Err(e),
                Ok(_) => Err(std::io::Error::other("the open did not break the lease")),
            }
        };
        let breaking_read = breaking(&brlease, libc::O_RDONLY, libc::F_RDLCK, libc::O_WRONLY)?;
        let breaking_write = breaking(&bwlease, libc::O_WRONLY, libc::F_WRLCK, libc::O_RDONLY)?;
        if !wait_until(WAIT, || SIGIOS.load(Ordering::SeqCst) == BREAKS) {
            return Err(std::io::Error::other("no SIGIO for the lease breaks"));
        }
        std::fs::write(&shared, b"shared")?;
        std::fs::write(&wait, b"wait")?;
        let rw = libc::O_RDWR;
        let data_flock = open(&data, rw)?;
        flock(data_flock, libc::LOCK_EX | libc::LOCK_NB)?;
        let data_posix = open(&data, rw)?;
        fcntl_lock(data_posix, libc::F_SETLK, libc::F_WRLCK, 0, 100)?;
        fcntl_lock(data_posix, libc::F_SETLK, libc::F_RDLCK, 200, 100)?;
        fcntl_lock(data_posix, libc::F_SETLK, libc::F_WRLCK, 4096, 0)?;
        // SAFETY: plain call on our own fd.
        let data_posix_dup = cvt(unsafe { libc::fcntl(data_posix, libc::F_DUPFD_CLOEXEC, 0) })?;
        let data_ofd = open(&data, rw)?;
        fcntl_lock(data_ofd, libc::F_OFD_SETLK, libc::F_RDLCK, 400, 100)?;
        fcntl_lock(data_ofd, libc::F_OFD_SETLK, libc::F_WRLCK, 600, 100)?;
        let dir_fd = open(&dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
        flock(dir_fd, libc::LOCK_SH | libc::LOCK_NB)?;
        let shared_fd = open(&shared, rw)?;
        flock(shared_fd, libc::LOCK_EX | libc::LOCK_NB)?;
        let wait_fd = open(&wait, rw)?;
        flock(wait_fd, libc::LOCK_EX | libc::LOCK_NB)?;
        let s = fork_child(parent, || child_s(board, &data, shared_fd, parent))?;
        let w1 = fork_child(parent, || {
            waiter(
                &board.w1,
                || {
                    let fd = open(&wait, rw)?;
                    flock(fd, libc::LOCK_EX)
                },
                parent,
            )
        })?;
        let w2 = fork_child(parent, || {
            waiter(
                &board.w2,
                || {
                    let fd = open(&data, rw)?;
                    fcntl_lock(fd, libc::F_SETLKW, libc::F_WRLCK, 0, 100).map(drop)
                },
                parent,
            )
        })?;
        let held = Held {
            fds: vec![
                ("data-flock", data_flock),
                ("data-posix", data_posix),
                ("data-posix-dup", data_posix_dup),
                ("data-ofd", data_ofd),
                ("dir", dir_fd),
                ("shared", shared_fd),
                ("wait", wait_fd),
                ("lease-read", lease_read),
                ("lease-write", lease_write),
                ("breaking-read", breaking_read),
                ("breaking-write", breaking_write),
            ],
        };
        Ok((held, [s, w1, w2]))
    };
    let (held, [s, w1, w2]) = program.must(setup(), "take the locks");
    // Ready once S holds its lock and both waiters sleep on theirs (/proc/locks shows
    // them blocked).
    let data_ino = ino(held.fd("data-posix"));
    let wait_ino = ino(held.fd("wait"));
    let blocked = |ino: u64, pid: i32| proc_locks(ino).iter().any(|l| l.0 && l.2 == pid);
    let up = wait_until(WAIT, || {
        board.s.ready.load(Ordering::SeqCst) == 1 && blocked(wait_ino, w1) && blocked(data_ino, w2)
    });
    if !up {
        program.setup_failed(format_args!(
            "children not set up: S ready {}, W1 blocked {}, W2 blocked {}",
            board.s.ready.load(Ordering::SeqCst),
            blocked(wait_ino, w1),
            blocked(data_ino, w2)
        ));
    }
    let at_ready = program.must(held.lines(), "read the lock lines");
    let mut listing = String::new();
    for (role, lines) in &at_ready {
        for (line, _) in lines {
            listing.push_str(&format!("{role} {} {line}\n", held.fd(role)));
        }
    }
    program.must(
        write_atomic(&program.companion(".locks"), listing.as_bytes()),
        "write the lock list",
    );
    let pids = format!("parent {parent}\nS {s}\nW1 {w1}\nW2 {w2}\n");
    program.must(
        write_atomic(&program.companion(".pids"), pids.as_bytes()),
        "write the pids",
    );
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});

    let mut report = Report::new();
    // 1. The parent's own lines, as at ready; POSIX ones owned by the parent.
    match held.lines() {
        Ok(now) => {
            let strip = |m: &BTreeMap<&str, Vec<(String, i32)>>| -> BTreeMap<String, Vec<String>> {
                m.iter()
                    .map(|(r, ls)| (r.to_string(), ls.iter().map(|l| l.0.clone()).collect()))
                    .collect()
            };
            report.check_eq("the lock lines", strip(&now), strip(&at_ready));
            for (role, lines) in &now {
                for (line, pid) in lines {
                    if line.starts_with("POSIX") {
                        report.check_eq(&format!("{role}: owner of {line}"), *pid, parent);
                    }
                }
            }
        }
        Err(e) => report.fail(format!("read the lock lines: {e}")),
    }
    // The leases, and what the breaking ones are being broken to.
    for (role, want) in [
        ("lease-read", libc::F_RDLCK),
        ("lease-write", libc::F_WRLCK),
        ("breaking-read", libc::F_UNLCK),
        ("breaking-write", libc::F_RDLCK),
    ] {
        // SAFETY: plain fcntl on our own fd.
        let lease = unsafe { libc::fcntl(held.fd(role), libc::F_GETLEASE) };
        report.check_eq(&format!("{role}: F_GETLEASE"), lease, want);
    }
    report.check_eq(
        "lease breaks (SIGIO): those before ready only",
        SIGIOS.load(Ordering::SeqCst),
        BREAKS,
    );
    // Given up, the lease being broken to nothing lets a write open through.
    // SAFETY: as above.
    let gave_up = unsafe { libc::fcntl(held.fd("breaking-read"), libc::F_SETLEASE, libc::F_UNLCK) };
    report.ok_or_fail(cvt(gave_up), "give up the lease being broken");
    match open(&brlease, libc::O_WRONLY | libc::O_NONBLOCK) {
        // SAFETY: closing the fd just opened.
        Ok(fd) => drop(unsafe { libc::close(fd) }),
        Err(e) => report.fail(format!("write open once the lease was given up: {e}")),
    }
    // 2. One flock on the shared file, whoever holds its description.
    let shared_ino = ino(held.fd("shared"));
    let flocks: Vec<_> = proc_locks(shared_ino)
        .into_iter()
        .filter(|l| !l.0 && l.1 == "FLOCK")
        .collect();
    report.check_eq("flocks on the shared file", flocks.len(), 1);
    // 3. A prober with descriptions of its own.
    let (pr, pw) = {
        let mut p = [-1; 2];
        // SAFETY: `p` has room for two fds.
        match cvt(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }) {
            Ok(_) => (p[0], p[1]),
            Err(e) => {
                report.fail(format!("pipe: {e}"));
                program.finish(&report);
            }
        }
    };
    let prober = fork_child(parent, || {
        let r = probe(&data, &shared, &wait, &dir, parent, s);
        let text = r.summary();
        // SAFETY: `text` is readable for its length.
        unsafe { libc::write(pw, text.as_ptr().cast(), text.len()) };
        0
    });
    // SAFETY: our copy of the write end; the prober has its own.
    unsafe { libc::close(pw) };
    match prober {
        Ok(pid) => {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            let mut pfd = libc::pollfd {
                fd: pr,
                events: libc::POLLIN,
                revents: 0,
            };
            loop {
                // SAFETY: one pollfd.
                if unsafe { libc::poll(&mut pfd, 1, 10_000) } <= 0 {
                    report.fail("the prober did not answer");
                    break;
                }
                // SAFETY: `buf` is writable for its length.
                let n = unsafe { libc::read(pr, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n as usize]);
            }
            reap(pid, &mut report, "the prober");
            let text = String::from_utf8_lossy(&out).into_owned();
            if text != "pass" {
                report.fail(format!("prober: {text}"));
            }
        }
        Err(e) => report.fail(format!("fork the prober: {e}")),
    }
    // 4. S's own view.
    let nonce = 0x5eed_0000 + u64::from(getpid() as u32);
    board.nonce.store(nonce, Ordering::SeqCst);
    if wait_until(WAIT, || board.s.echo.load(Ordering::SeqCst) == nonce) {
        let text = board.s.message();
        if text != "pass" {
            report.fail(text);
        }
    } else {
        report.fail("S did not answer");
    }
    // 5. The waiters still wait; each gets its lock once it is released.
    report.check_eq(
        "W1 got its lock early",
        board.w1.got.load(Ordering::SeqCst),
        0,
    );
    report.check_eq(
        "W2 got its lock early",
        board.w2.got.load(Ordering::SeqCst),
        0,
    );
    if let Err(e) = flock(held.fd("wait"), libc::LOCK_UN) {
        report.fail(format!("release the waited flock: {e}"));
    }
    if !wait_until(WAIT, || board.w1.got.load(Ordering::SeqCst) == 1) {
        report.fail("W1 did not get the flock once released");
    }
    if let Err(e) = fcntl_lock(held.fd("data-posix"), libc::F_SETLK, libc::F_UNLCK, 0, 100) {
        report.fail(format!("release bytes 0-99: {e}"));
    }
    if !wait_until(WAIT, || board.w2.got.load(Ordering::SeqCst) == 1) {
        report.fail("W2 did not get bytes 0-99 once released");
    }
    board.w1.got.store(2, Ordering::SeqCst);
    board.w2.got.store(2, Ordering::SeqCst);
    board.nonce.store(u64::MAX, Ordering::SeqCst);
    for (pid, name) in [(s, "S"), (w1, "W1"), (w2, "W2")] {
        reap(pid, &mut report, name);
    }
    program.finish(&report);
}

/// Waits (bounded) for child `pid` to exit 0.
fn reap(pid: libc::pid_t, report: &mut Report, name: &str) {
    let mut status = 0;
    let done = wait_until(WAIT, || {
        // SAFETY: our own child; `status` is a valid place to write.
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) == pid }
    });
    if !done {
        report.fail(format!("{name} did not exit"));
        // SAFETY: our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        return;
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    report.check_eq(&format!("{name}'s exit"), code, Some(0));
}
