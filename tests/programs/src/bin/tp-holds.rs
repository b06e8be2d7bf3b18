//! tp-holds: holds one object of a kind the dump must refuse (`--hold ptmx` once its
//! slave is also held outside the tree, `mqueue` or `sysv-shm`) beside 4 MiB of patterned
//! memory; the check proves the object, the memory
//! and the whole fd table are as they were at `ready`.
//!
//! - `ptmx`: a pty master (posix_openpt, grantpt, unlockpt, as a terminal server does)
//!   and its slave; the check sends a line through the slave and reads it on the master.
//! - `mqueue`: a POSIX message queue (mq_open, then mq_unlink so nothing is left behind)
//!   holding one message; the check finds it there, receives it and sends it back.
//! - `sysv-shm`: a SysV shared memory segment attached (and marked for removal, so it
//!   goes when the program does) filled with a pattern; the check reads it back. The
//!   dump saves such a segment; it refuses it once someone outside the tree attaches it
//!   too, which the refusal test does.
//!
//! - `sigtrap`: a SIGTRAP sent to itself (kill) while blocked, so it stays pending for
//!   the process; the check finds it pending, takes it (sigtimedwait: sent by itself)
//!   and finds its own SIGTRAP handler still installed.
//! - `deleted-watch`: `PATH.watched` mapped MAP_SHARED (its fd closed), watched by an
//!   inotify instance (IN_MODIFY), then unlinked: a watch on a deleted inode that no
//!   open file of the process holds; the check writes to it (through map_files) and
//!   reads the event.
//! - `lease`: a read lease (`F_SETLEASE`) on `PATH.lease`, open read-only; the check
//!   finds it with `F_GETLEASE`. `lease-breaking`: the same, then broken by an open of
//!   its own for writing (O_NONBLOCK: it fails, and the lease is being broken until the
//!   kernel's lease-break-time passes); the check finds it so (`F_GETLEASE`: `F_UNLCK`).
//!
//! `PATH.fd` gets the descriptor number of the held object (the master for `ptmx`, the
//! inotify for `deleted-watch`; `-1` for `sysv-shm` and `sigtrap`, which hold no fd) and `PATH.fds` the fd table at `ready`.

use std::collections::BTreeMap;
use std::os::raw::c_int;
use std::time::Duration;

use criu_testprogs::{
    c_path, check_pattern, cvt, fd_link, fill_pattern, handler_addr, install_handler, query_action,
    random_seed, sigset, write_atomic, Mapping, Program, Report,
};

const MEMORY_BYTES: usize = 4 << 20;
const SHM_BYTES: usize = 1 << 20;
const MESSAGE: &[u8] = b"tp-holds message";
const LINE: &[u8] = b"tp-holds-line\n";

/// What the program holds.
enum Held {
    Pty {
        master: c_int,
        slave: c_int,
        index: c_int,
    },
    Mqueue {
        mq: c_int,
    },
    Shm {
        addr: *mut libc::c_void,
        seed: u64,
    },
    Sigtrap,
    DeletedWatch {
        inotify: c_int,
        /// Where the deleted file is mapped (its only holder).
        addr: usize,
        wd: c_int,
    },
    Lease {
        fd: c_int,
        /// Broken by our own open for writing (`lease-breaking`).
        breaking: bool,
    },
}

const WATCHED_BYTES: usize = 4096;

extern "C" fn on_sigtrap(_: c_int) {}

fn hold_sigtrap() -> std::io::Result<Held> {
    install_handler(libc::SIGTRAP, on_sigtrap, 0, &[])?;
    let set = sigset(&[libc::SIGTRAP]);
    // SAFETY: `set` is a valid sigset; the old mask is not asked for.
    cvt(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) })?;
    // SAFETY: a signal to this very process, blocked: it stays pending.
    cvt(unsafe { libc::kill(libc::getpid(), libc::SIGTRAP) })?;
    Ok(Held::Sigtrap)
}

fn hold_deleted_watch(path: &std::path::Path) -> std::io::Result<Held> {
    let c = c_path(path)?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    let file = cvt(unsafe { libc::open(c.as_ptr(), libc::O_CREAT | libc::O_RDWR, 0o600) })?;
    // SAFETY: plain call on our own fd.
    cvt(unsafe { libc::ftruncate(file, WATCHED_BYTES as libc::off_t) })?;
    // SAFETY: a fresh shared mapping of our file at an address the kernel picks.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            WATCHED_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file,
            0,
        )
    };
    // SAFETY: the mapping keeps the file; the fd is ours.
    unsafe { libc::close(file) };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: plain call with integer arguments.
    let inotify = cvt(unsafe { libc::inotify_init1(libc::IN_NONBLOCK) })?;
    // SAFETY: as above, `c` outlives the call.
    let wd = cvt(unsafe { libc::inotify_add_watch(inotify, c.as_ptr(), libc::IN_MODIFY) })?;
    // Deleted, kept only by the mapping (and so is the watch).
    std::fs::remove_file(path)?;
    Ok(Held::DeletedWatch {
        inotify,
        addr: addr as usize,
        wd,
    })
}

extern "C" fn on_sigio(_: c_int) {}

/// A read lease (`F_SETLEASE`) on `PATH.lease`, a file of ours opened read-only; with
/// `breaking`, then broken by an open of ours for writing (which fails at once,
/// O_NONBLOCK, and leaves the lease being broken until the kernel's lease-break-time).
fn hold_lease(path: &std::path::Path, breaking: bool) -> std::io::Result<Held> {
    // The break notice (SIGIO) comes to us.
    install_handler(libc::SIGIO, on_sigio, libc::SA_RESTART, &[])?;
    std::fs::write(path, b"leased")?;
    let c = c_path(path)?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) })?;
    // SAFETY: plain call on our own fd.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) })?;
    if breaking {
        // SAFETY: as above; the open is expected to fail.
        let broke = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK) };
        let err = std::io::Error::last_os_error();
        if broke >= 0 || err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(std::io::Error::other(format!(
                "breaking the lease: {broke} {err}"
            )));
        }
    }
    Ok(Held::Lease { fd, breaking })
}

fn check_sigtrap(report: &mut Report) {
    // SAFETY: sigset_t is plain data the kernel fills.
    let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `pending` is a valid place to write.
    unsafe { libc::sigpending(&mut pending) };
    // SAFETY: `pending` is a valid sigset.
    let is_pending = unsafe { libc::sigismember(&pending, libc::SIGTRAP) };
    report.check_eq("SIGTRAP pending", is_pending, 1);
    let set = sigset(&[libc::SIGTRAP]);
    // SAFETY: siginfo_t is plain data the kernel fills.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: all pointers are to locals that outlive the call; a zero timeout does not
    // wait.
    let got = unsafe { libc::sigtimedwait(&set, &mut info, &zero) };
    report.check_eq("the pending signal taken", got, libc::SIGTRAP);
    // SAFETY: si_pid is the union member kill(2)-sent signals fill.
    let sender = unsafe { info.si_pid() };
    // SAFETY: plain call.
    let me = unsafe { libc::getpid() };
    report.check_eq(
        "SIGTRAP's sender and code",
        (sender, info.si_code),
        (me, libc::SI_USER),
    );
    match query_action(libc::SIGTRAP) {
        Ok(act) => report.check_eq(
            "the SIGTRAP handler",
            act.sa_sigaction,
            handler_addr(on_sigtrap),
        ),
        Err(e) => report.fail(format!("sigaction(SIGTRAP): {e}")),
    }
}

fn check_deleted_watch(report: &mut Report, inotify: c_int, addr: usize, wd: c_int) {
    // The mapping's file, opened again through map_files: a write makes IN_MODIFY.
    let path = format!("/proc/self/map_files/{:x}-{:x}", addr, addr + WATCHED_BYTES);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| std::os::unix::fs::FileExt::write_at(&f, b"x", 0));
    report.check_eq(
        "bytes written to the deleted file",
        written.map_err(|e| e.to_string()),
        Ok(1),
    );
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::read(inotify, buf.as_mut_ptr().cast(), buf.len()) };
    let event = (n >= 16).then(|| {
        (
            i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]),
            u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]),
        )
    });
    report.check_eq("the watch's event", event, Some((wd, libc::IN_MODIFY)));
}

/// The fd table: number to link.
fn fd_table() -> std::io::Result<BTreeMap<c_int, String>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc/self/fd")? {
        let Ok(n) = e?.file_name().to_string_lossy().parse::<c_int>() else {
            continue;
        };
        // The directory listing's own fd is gone by the time we read its link.
        if let Ok(link) = fd_link(n) {
            out.insert(n, link);
        }
    }
    Ok(out)
}

fn hold_pty() -> std::io::Result<Held> {
    // SAFETY: plain calls with integer arguments; the returned fd is ours.
    let master = cvt(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) })?;
    // SAFETY: as above, on the fd just opened.
    cvt(unsafe { libc::grantpt(master) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::unlockpt(master) })?;
    let mut index: c_int = 0;
    // SAFETY: TIOCGPTN writes one int into `index`.
    cvt(unsafe { libc::ioctl(master, libc::TIOCGPTN, &mut index) })?;
    let path = std::ffi::CString::new(format!("/dev/pts/{index}")).expect("no NUL");
    // SAFETY: `path` is NUL-terminated and outlives the call.
    let slave = cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) })?;
    // Raw mode: the line comes out on the master as written.
    // SAFETY: `t` is a termios the kernel fills, then reads back.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        cvt(libc::tcgetattr(slave, &mut t))?;
        libc::cfmakeraw(&mut t);
        cvt(libc::tcsetattr(slave, libc::TCSANOW, &t))?;
    }
    Ok(Held::Pty {
        master,
        slave,
        index,
    })
}

fn hold_mqueue() -> std::io::Result<Held> {
    let name = std::ffi::CString::new(format!("/tp-holds-{}", std::process::id())).expect("no NUL");
    // SAFETY: `name` is NUL-terminated; a null attribute pointer asks for the defaults.
    let mq = cvt(unsafe {
        libc::mq_open(
            name.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NONBLOCK,
            0o600 as libc::mode_t,
            std::ptr::null_mut::<libc::mq_attr>(),
        )
    })?;
    // Nameless from here on: the queue lives as long as the descriptor.
    // SAFETY: as above.
    cvt(unsafe { libc::mq_unlink(name.as_ptr()) })?;
    // SAFETY: MESSAGE is readable for its length.
    cvt(unsafe { libc::mq_send(mq, MESSAGE.as_ptr().cast(), MESSAGE.len(), 3) })?;
    Ok(Held::Mqueue { mq })
}

fn hold_shm() -> std::io::Result<Held> {
    // SAFETY: plain call with integer arguments.
    let id = cvt(unsafe { libc::shmget(libc::IPC_PRIVATE, SHM_BYTES, libc::IPC_CREAT | 0o600) })?;
    // SAFETY: attaching a fresh segment at an address the kernel picks aliases nothing.
    let addr = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if addr as isize == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // Removed once detached: nothing is left behind when the program goes.
    // SAFETY: IPC_RMID takes no buffer.
    cvt(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) })?;
    let seed = random_seed();
    // SAFETY: the segment is SHM_BYTES long, page aligned and ours alone.
    let words = unsafe { std::slice::from_raw_parts_mut(addr.cast::<u64>(), SHM_BYTES / 8) };
    fill_pattern(words, seed, 0);
    Ok(Held::Shm { addr, seed })
}

fn check_held(held: &Held, report: &mut Report) {
    match *held {
        Held::Sigtrap => check_sigtrap(report),
        Held::Lease { fd, breaking } => {
            // SAFETY: plain call on our own fd.
            let lease = unsafe { libc::fcntl(fd, libc::F_GETLEASE) };
            // Being broken, it says what it is broken to.
            let want = if breaking {
                libc::F_UNLCK
            } else {
                libc::F_RDLCK
            };
            report.check_eq("the lease", lease, want);
        }
        Held::DeletedWatch { inotify, addr, wd } => check_deleted_watch(report, inotify, addr, wd),
        Held::Pty {
            master,
            slave,
            index,
        } => {
            let mut now: c_int = -1;
            // SAFETY: TIOCGPTN writes one int into `now`.
            let got = unsafe { libc::ioctl(master, libc::TIOCGPTN, &mut now) };
            report.check_eq("the master's pty number", (got, now), (0, index));
            // SAFETY: LINE is readable for its length.
            let sent = unsafe { libc::write(slave, LINE.as_ptr().cast(), LINE.len()) };
            report.check_eq("bytes written to the slave", sent, LINE.len() as isize);
            let mut pfd = libc::pollfd {
                fd: master,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, 2000) };
            report.check_eq("the master readable", ready, 1);
            let mut buf = [0u8; 64];
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::read(master, buf.as_mut_ptr().cast(), buf.len()) };
            report.check(
                n == LINE.len() as isize && buf[..LINE.len()] == *LINE,
                || format!("the master read {n} bytes: {:?}", &buf[..n.max(0) as usize]),
            );
        }
        Held::Mqueue { mq } => {
            // SAFETY: mq_getattr fills one mq_attr.
            let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let got = unsafe { libc::mq_getattr(mq, &mut attr) };
            report.check_eq("queued messages", (got, attr.mq_curmsgs), (0, 1));
            let mut buf = vec![0u8; attr.mq_msgsize.max(1) as usize];
            let mut prio = 0u32;
            // SAFETY: `buf` is writable for mq_msgsize bytes, as mq_receive needs.
            let n = unsafe { libc::mq_receive(mq, buf.as_mut_ptr().cast(), buf.len(), &mut prio) };
            report.check(
                n == MESSAGE.len() as isize && buf[..MESSAGE.len()] == *MESSAGE,
                || format!("received {n} bytes at priority {prio}"),
            );
            report.check_eq("the message's priority", prio, 3);
            // SAFETY: MESSAGE is readable for its length.
            unsafe { libc::mq_send(mq, MESSAGE.as_ptr().cast(), MESSAGE.len(), 3) };
        }
        Held::Shm { addr, seed } => {
            // SAFETY: the segment stays attached for the program's life.
            let words = unsafe { std::slice::from_raw_parts(addr.cast::<u64>(), SHM_BYTES / 8) };
            if let Some(m) = check_pattern(words, seed, 0) {
                report.fail(format!("the SysV segment: {m}"));
            }
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
            report.check(maps.contains("/SYSV"), || "no /SYSV mapping".into());
        }
    }
}

fn main() {
    let mut program = Program::start(
        "tp-holds",
        &[(
            "--hold KIND",
            "ptmx, mqueue, sysv-shm, sigtrap, deleted-watch, lease or lease-breaking (required)",
        )],
    );
    let kind: String = program.opt("--hold").unwrap_or_default();
    let held = match kind.as_str() {
        "ptmx" => program.must(hold_pty(), "open a pty"),
        "mqueue" => program.must(hold_mqueue(), "open a message queue"),
        "sysv-shm" => program.must(hold_shm(), "attach a SysV segment"),
        "sigtrap" => program.must(hold_sigtrap(), "queue a SIGTRAP"),
        "deleted-watch" => program.must(
            hold_deleted_watch(&program.companion(".watched")),
            "watch a deleted file",
        ),
        "lease" => program.must(
            hold_lease(&program.companion(".lease"), false),
            "take a lease",
        ),
        "lease-breaking" => program.must(
            hold_lease(&program.companion(".lease"), true),
            "take and break a lease",
        ),
        other => program.setup_failed(format_args!("--hold: unknown kind `{other}`")),
    };
    let fd = match held {
        Held::Pty { master, .. } => master,
        Held::Mqueue { mq } => mq,
        Held::DeletedWatch { inotify, .. } => inotify,
        Held::Lease { fd, .. } => fd,
        Held::Shm { .. } | Held::Sigtrap => -1,
    };
    let mut memory = program.must(Mapping::anonymous(MEMORY_BYTES, false), "map memory");
    let seed = random_seed();
    fill_pattern(memory.words_mut(), seed, 0);
    let fds = program.must(fd_table(), "list the fds");
    let listing: String = fds.iter().map(|(n, l)| format!("{n}\t{l}\n")).collect();
    program.must(
        write_atomic(&program.companion(".fds"), listing.as_bytes()),
        "write the fd list",
    );
    program.must(
        write_atomic(&program.companion(".fd"), format!("{fd}\n").as_bytes()),
        "write the fd number",
    );
    program.ready();
    program.work_until_check(Duration::from_millis(50), || {});

    let mut report = Report::new();
    if let Some(m) = check_pattern(memory.words(), seed, 0) {
        report.fail(format!("memory: {m}"));
    }
    match fd_table() {
        Ok(now) => report.check_eq("the fd table", now, fds),
        Err(e) => report.fail(format!("list the fds: {e}")),
    }
    check_held(&held, &mut report);
    program.finish(&report);
}
