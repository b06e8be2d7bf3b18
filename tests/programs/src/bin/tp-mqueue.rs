//! tp-mqueue: POSIX message queues (mq_overview(7)) and their queued messages.
//!
//! State, the queues named `TAG-...` (`--tag`, default `tp-mqueue-PID`):
//! - `main`: 8 messages of 64 bytes at most, mode 0640, owner 4321:8765 (needs root),
//!   holding six messages of mixed priorities (one empty, one with every byte value
//!   class); open twice: read-write and non-blocking (its status text read 10 bytes
//!   into, so the description has a position), and write-only, blocking, close-on-exec;
//! - `nameless`: 2 messages of 16 bytes, mode 0600, unlinked right after it was made,
//!   holding two messages, open read-only;
//! - `--ipcns yes`: the program first moves into an IPC namespace of its own (needs
//!   root) and leaves there `orphan`, a queue with three messages that no descriptor
//!   holds (the namespace keeps it);
//! - `--notify yes`: `notify`, an empty queue on which the program registered for a
//!   notification (mq_notify, SIGEV_SIGNAL with SIGUSR1): a state the dump must refuse;
//! - `--foreign yes`: `foreign`, a queue of 2 messages of 16 bytes holding one, made
//!   and kept open in the IPC namespace the program starts in, before it moves into one
//!   of its own (needs root; the other queues are made there): a queue of a namespace
//!   outside the tree, which the dump must refuse too.
//!
//! Files: `PATH.queues`, the names of the queues it made (one per line, with their '/').
//!
//! Check: each descriptor's link, access mode, O_NONBLOCK, FD_CLOEXEC and position;
//! each queue's size (mq_getattr), mode and owner; both `main` descriptors on one queue,
//! which its name still opens; every message comes back in priority order (oldest
//! first within a priority) with its priority, then the non-blocking receive says
//! EAGAIN; a message sent on the write-only descriptor arrives on the other one. With
//! `--ipcns yes`, `orphan` is opened by name and holds its messages. With `--notify
//! yes`, the registration is still ours and a message sent to the empty queue raises
//! SIGUSR1 with SI_MESGQ. With `--foreign yes`, `foreign` still holds its message. Last,
//! the named queues are removed, so nothing is left (`foreign` but by whoever started
//! the program: its name is not in the program's namespace any more).

use std::ffi::CString;
use std::io;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use criu_testprogs::{
    cvt, cvt_size, fd_flags, fd_link, install_siginfo_handler, write_atomic, Program, Report,
};

const MAIN_MAXMSG: i64 = 8;
const MAIN_MSGSIZE: i64 = 64;
const MAIN_MODE: u32 = 0o640;
const MAIN_OWNER: (u32, u32) = (4321, 8765);
/// Bytes of `main`'s status text read before `ready`: its description's position.
const STATUS_READ: usize = 10;

/// (priority, text), in the order they are sent.
fn main_messages() -> Vec<(u32, Vec<u8>)> {
    vec![
        (3, b"three-first".to_vec()),
        (0, Vec::new()),
        (7, b"seven".to_vec()),
        (3, b"three-second".to_vec()),
        (31, (0u8..64).collect()),
        (3, b"three-third\n\0\xff".to_vec()),
    ]
}

fn nameless_messages() -> Vec<(u32, Vec<u8>)> {
    vec![(1, b"nameless-a".to_vec()), (1, b"nameless-b".to_vec())]
}

fn orphan_messages() -> Vec<(u32, Vec<u8>)> {
    vec![
        (2, b"orphan-low".to_vec()),
        (9, b"orphan-high".to_vec()),
        (2, b"orphan-low-2".to_vec()),
    ]
}

/// Messages as a receiver gets them: highest priority first, oldest first within one.
fn in_receive_order(mut messages: Vec<(u32, Vec<u8>)>) -> Vec<(u32, Vec<u8>)> {
    messages.sort_by_key(|(prio, _)| std::cmp::Reverse(*prio));
    messages
}

fn c_name(name: &str) -> CString {
    CString::new(name).expect("queue names have no NUL")
}

/// mq_open(3) creating `name` exclusively with `flags`, `mode` and its size.
fn create(name: &str, flags: c_int, mode: u32, maxmsg: i64, msgsize: i64) -> io::Result<c_int> {
    // SAFETY: mq_attr is plain data; zero is a valid value.
    let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
    attr.mq_maxmsg = maxmsg;
    attr.mq_msgsize = msgsize;
    let c = c_name(name);
    // SAFETY: `c` is NUL-terminated and `attr` initialised; both outlive the call.
    cvt(unsafe {
        libc::mq_open(
            c.as_ptr(),
            flags | libc::O_CREAT | libc::O_EXCL,
            mode as libc::mode_t,
            &attr as *const libc::mq_attr,
        )
    })
}

/// mq_open(3) of an existing queue.
fn open(name: &str, flags: c_int) -> io::Result<c_int> {
    let c = c_name(name);
    // SAFETY: `c` is NUL-terminated and outlives the call.
    cvt(unsafe { libc::mq_open(c.as_ptr(), flags) })
}

fn unlink(name: &str) -> io::Result<()> {
    let c = c_name(name);
    // SAFETY: as above.
    cvt(unsafe { libc::mq_unlink(c.as_ptr()) }).map(drop)
}

fn send(fd: c_int, prio: u32, text: &[u8]) -> io::Result<()> {
    // SAFETY: `text` is readable for its length.
    cvt(unsafe { libc::mq_send(fd, text.as_ptr().cast(), text.len(), prio) }).map(drop)
}

/// mq_receive(3) on `fd` with a buffer of `msgsize`: (priority, text).
fn receive(fd: c_int, msgsize: i64) -> io::Result<(u32, Vec<u8>)> {
    let mut buf = vec![0u8; msgsize as usize];
    let mut prio = 0u32;
    // SAFETY: `buf` is writable for its length, which is the queue's message size.
    let n =
        cvt_size(unsafe { libc::mq_receive(fd, buf.as_mut_ptr().cast(), buf.len(), &mut prio) })?;
    buf.truncate(n);
    Ok((prio, buf))
}

fn getattr(fd: c_int) -> io::Result<libc::mq_attr> {
    // SAFETY: mq_attr is plain data the call fills.
    let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
    // SAFETY: `attr` is a valid place to write.
    cvt(unsafe { libc::mq_getattr(fd, &mut attr) })?;
    Ok(attr)
}

fn fstat(fd: c_int) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data the call fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid place to write.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// The queue's status text (`QSIZE:... NOTIFY_PID:...`), read with pread: neither the
/// description's position moves nor (as a new descriptor's close would do for the
/// process that registered) the notification goes.
fn status(fd: c_int) -> io::Result<String> {
    let mut buf = [0u8; 128];
    // SAFETY: `buf` is writable for its length.
    let n = cvt_size(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) })?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn notify_pid(fd: c_int) -> io::Result<i32> {
    let text = status(fd)?;
    text.split_whitespace()
        .find_map(|f| f.strip_prefix("NOTIFY_PID:"))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no NOTIFY_PID in {text:?}")))
}

static NOTIFIED: AtomicI32 = AtomicI32::new(0);
static NOTIFY_CODE: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_notify(_: c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    NOTIFY_CODE.store(code, Ordering::SeqCst);
    NOTIFIED.fetch_add(1, Ordering::SeqCst);
}

/// Registers this process for `fd`'s notification: SIGUSR1.
fn register_notification(fd: c_int) -> io::Result<()> {
    install_siginfo_handler(libc::SIGUSR1, on_notify, libc::SA_RESTART, &[])?;
    // SAFETY: sigevent is plain data; zero is a valid value.
    let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
    ev.sigev_notify = libc::SIGEV_SIGNAL;
    ev.sigev_signo = libc::SIGUSR1;
    // SAFETY: the call reads one sigevent, which outlives it.
    cvt(unsafe { libc::mq_notify(fd, &ev) }).map(drop)
}

struct Queues {
    tag: String,
    main_rw: c_int,
    main_wo: c_int,
    nameless: c_int,
    nameless_link: String,
    orphan: bool,
    notify: Option<c_int>,
    /// `foreign`'s descriptor, of the namespace the program started in.
    foreign: Option<c_int>,
    /// (fd, F_GETFD, F_GETFL) at `ready`.
    flags: Vec<(c_int, c_int, c_int)>,
}

impl Queues {
    fn name(&self, what: &str) -> String {
        format!("/{}-{what}", self.tag)
    }
}

fn set_up(tag: &str, orphan: bool, notify: bool) -> io::Result<Queues> {
    let name = |what: &str| format!("/{tag}-{what}");
    let main = name("main");
    let main_rw = create(
        &main,
        libc::O_RDWR | libc::O_NONBLOCK,
        MAIN_MODE,
        MAIN_MAXMSG,
        MAIN_MSGSIZE,
    )?;
    // SAFETY: plain call on our own descriptor.
    cvt(unsafe { libc::fchown(main_rw, MAIN_OWNER.0, MAIN_OWNER.1) })?;
    for (prio, text) in main_messages() {
        send(main_rw, prio, &text)?;
    }
    let mut head = [0u8; STATUS_READ];
    // SAFETY: `head` is writable for its length.
    let n = cvt_size(unsafe { libc::read(main_rw, head.as_mut_ptr().cast(), head.len()) })?;
    if n != STATUS_READ {
        return Err(io::Error::other(format!("read {n} bytes of the status")));
    }
    let main_wo = open(&main, libc::O_WRONLY | libc::O_CLOEXEC)?;

    let nameless_name = name("nameless");
    let nameless = create(&nameless_name, libc::O_RDWR, 0o600, 2, 16)?;
    for (prio, text) in nameless_messages() {
        send(nameless, prio, &text)?;
    }
    unlink(&nameless_name)?;
    // Read-only from here: a second open is not possible without the name, so the
    // read-write one is moved onto a read-only reopen through /proc.
    let ro = std::fs::File::open(format!("/proc/self/fd/{nameless}"))?;
    // SAFETY: dup2 onto our own descriptor number, then the extra one is ours to drop.
    cvt(unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&ro), nameless) })?;
    drop(ro);
    let nameless_link = fd_link(nameless)?;

    if orphan {
        let o = create(&name("orphan"), libc::O_WRONLY, 0o620, 4, 32)?;
        // Past the umask: a mode a restore could not get from its own.
        // SAFETY: plain call on our own descriptor.
        cvt(unsafe { libc::fchmod(o, 0o620) })?;
        for (prio, text) in orphan_messages() {
            send(o, prio, &text)?;
        }
        // SAFETY: closing our own descriptor; the namespace keeps the queue.
        unsafe { libc::close(o) };
    }
    let notify = if notify {
        let n = create(
            &name("notify"),
            libc::O_RDWR | libc::O_NONBLOCK,
            0o600,
            2,
            16,
        )?;
        register_notification(n)?;
        Some(n)
    } else {
        None
    };
    let mut flags = Vec::new();
    for fd in [main_rw, main_wo, nameless].into_iter().chain(notify) {
        let (fdf, fl) = fd_flags(fd)?;
        flags.push((fd, fdf, fl));
    }
    Ok(Queues {
        tag: tag.to_owned(),
        main_rw,
        main_wo,
        nameless,
        nameless_link,
        orphan,
        notify,
        foreign: None,
        flags,
    })
}

/// Receives everything `fd` holds, then expects EAGAIN (the descriptor must be
/// non-blocking, or the queue is read through a non-blocking reopen).
fn drain(report: &mut Report, what: &str, fd: c_int, msgsize: i64) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        match receive(fd, msgsize) {
            Ok(m) => out.push(m),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return out,
            Err(e) => {
                report.fail(format!("{what}: receive: {e}"));
                return out;
            }
        }
        if out.len() > 64 {
            report.fail(format!("{what}: more messages than it can hold"));
            return out;
        }
    }
}

fn check_attr(report: &mut Report, what: &str, fd: c_int, size: (i64, i64), curmsgs: i64) {
    match getattr(fd) {
        Ok(a) => report.check_eq(
            &format!("{what} (maxmsg, msgsize, curmsgs)"),
            (a.mq_maxmsg, a.mq_msgsize, a.mq_curmsgs),
            (size.0, size.1, curmsgs),
        ),
        Err(e) => report.fail(format!("{what}: mq_getattr: {e}")),
    }
}

fn check_mode(report: &mut Report, what: &str, fd: c_int, mode: u32, owner: (u32, u32)) {
    match fstat(fd) {
        Ok(st) => report.check_eq(
            &format!("{what} (mode, uid, gid)"),
            (st.st_mode & 0o7777, st.st_uid, st.st_gid),
            (mode, owner.0, owner.1),
        ),
        Err(e) => report.fail(format!("{what}: fstat: {e}")),
    }
}

/// A non-blocking read-only reopen of `fd`'s queue (for queues held read-only or
/// blocking, whose own descriptor must not be used to drain).
fn reopen_nonblocking(fd: c_int) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{fd}"))
}

fn check(q: &Queues, report: &mut Report) {
    use std::os::fd::AsRawFd;
    for &(fd, fdf, fl) in &q.flags {
        match fd_flags(fd) {
            Ok(now) => report.check_eq(&format!("fd {fd} (F_GETFD, F_GETFL)"), now, (fdf, fl)),
            Err(e) => report.fail(format!("fd {fd}: {e}")),
        }
    }
    let main = q.name("main");
    for (fd, what) in [(q.main_rw, "main"), (q.main_wo, "main write-only")] {
        report.check_eq(
            &format!("{what} link"),
            fd_link(fd).ok(),
            Some(main.clone()),
        );
    }
    let messages = in_receive_order(main_messages());
    check_attr(
        report,
        "main",
        q.main_rw,
        (MAIN_MAXMSG, MAIN_MSGSIZE),
        messages.len() as i64,
    );
    check_attr(
        report,
        "main write-only",
        q.main_wo,
        (MAIN_MAXMSG, MAIN_MSGSIZE),
        messages.len() as i64,
    );
    check_mode(report, "main", q.main_rw, MAIN_MODE, MAIN_OWNER);
    match (
        fstat(q.main_rw),
        fstat(q.main_wo),
        open(&main, libc::O_RDONLY),
    ) {
        (Ok(a), Ok(b), Ok(by_name)) => {
            let c = fstat(by_name).map(|s| s.st_ino).unwrap_or(0);
            // SAFETY: closing the descriptor just opened.
            unsafe { libc::close(by_name) };
            report.check_eq(
                "main: one queue for both descriptors and its name",
                (b.st_ino, c),
                (a.st_ino, a.st_ino),
            );
        }
        (a, b, c) => report.fail(format!(
            "main: fstat/open by name: {:?} {:?} {:?}",
            a.err(),
            b.err(),
            c.err()
        )),
    }
    // SAFETY: SEEK_CUR with offset 0 only reads the position.
    let pos = unsafe { libc::lseek(q.main_rw, 0, libc::SEEK_CUR) };
    report.check_eq("main: status position", pos, STATUS_READ as libc::off_t);
    let got = drain(report, "main", q.main_rw, MAIN_MSGSIZE);
    report.check_eq("main: messages in priority order", got, messages);
    match send(q.main_wo, 5, b"after-restore").and_then(|()| receive(q.main_rw, MAIN_MSGSIZE)) {
        Ok(m) => report.check_eq(
            "main: a message sent after",
            m,
            (5, b"after-restore".to_vec()),
        ),
        Err(e) => report.fail(format!("main: send and receive after: {e}")),
    }

    report.check_eq(
        "nameless link",
        fd_link(q.nameless).ok(),
        Some(q.nameless_link.clone()),
    );
    report.check(q.nameless_link.ends_with(" (deleted)"), || {
        format!(
            "nameless link {} is not that of an unlinked queue",
            q.nameless_link
        )
    });
    check_attr(report, "nameless", q.nameless, (2, 16), 2);
    check_mode(report, "nameless", q.nameless, 0o600, (0, 0));
    match reopen_nonblocking(q.nameless) {
        Ok(f) => {
            let got = drain(report, "nameless", f.as_raw_fd(), 16);
            report.check_eq(
                "nameless: messages",
                got,
                in_receive_order(nameless_messages()),
            );
        }
        Err(e) => report.fail(format!("nameless: reopen: {e}")),
    }

    if q.orphan {
        match open(&q.name("orphan"), libc::O_RDONLY | libc::O_NONBLOCK) {
            Ok(o) => {
                check_attr(report, "orphan", o, (4, 32), 3);
                check_mode(report, "orphan", o, 0o620, (0, 0));
                let got = drain(report, "orphan", o, 32);
                report.check_eq("orphan: messages", got, in_receive_order(orphan_messages()));
                // SAFETY: closing our own descriptor.
                unsafe { libc::close(o) };
            }
            Err(e) => report.fail(format!("orphan: open by name: {e}")),
        }
    }

    if let Some(n) = q.notify {
        // SAFETY: getpid has no arguments.
        let me = unsafe { libc::getpid() };
        match notify_pid(n) {
            Ok(pid) => report.check_eq("notify: registered by", pid, me),
            Err(e) => report.fail(format!("notify: status: {e}")),
        }
        match send(n, 1, b"wake") {
            Ok(()) => {
                for _ in 0..200 {
                    if NOTIFIED.load(Ordering::SeqCst) > 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                report.check_eq(
                    "notify: SIGUSR1 (count, si_code)",
                    (
                        NOTIFIED.load(Ordering::SeqCst),
                        NOTIFY_CODE.load(Ordering::SeqCst),
                    ),
                    (1, libc::SI_MESGQ),
                );
            }
            Err(e) => report.fail(format!("notify: send: {e}")),
        }
    }
    if let Some(f) = q.foreign {
        check_attr(report, "foreign", f, (2, 16), 1);
    }
    for what in ["main", "orphan", "notify"] {
        let _ = unlink(&q.name(what));
    }
}

fn main() {
    let mut program = Program::start(
        "tp-mqueue",
        &[
            ("--tag NAME", "queue name prefix (default tp-mqueue-PID)"),
            (
                "--ipcns yes|no",
                "move into an IPC namespace of its own first (default no)",
            ),
            (
                "--notify yes|no",
                "register a notification on an empty queue (default no)",
            ),
            (
                "--foreign yes|no",
                "hold a queue of the IPC namespace it starts in, then move into one of \
                 its own (default no)",
            ),
        ],
    );
    let tag: String = program.opt_or("--tag", format!("tp-mqueue-{}", std::process::id()));
    let yes = |flag: &str| match program.opt_or(flag, "no".to_string()).as_str() {
        "yes" => true,
        "no" => false,
        other => program.setup_failed(format!("{flag} takes yes or no, not {other}")),
    };
    let (ipcns, notify, foreign) = (yes("--ipcns"), yes("--notify"), yes("--foreign"));
    let foreign_name = format!("/{tag}-foreign");
    let foreign_fd = foreign.then(|| {
        program.must(
            create(&foreign_name, libc::O_RDWR | libc::O_NONBLOCK, 0o600, 2, 16)
                .and_then(|fd| send(fd, 4, b"foreign").map(|()| fd)),
            "make the queue of the first namespace",
        )
    });
    if ipcns || foreign {
        // SAFETY: plain call; the program is still single-threaded.
        program.must(
            cvt(unsafe { libc::unshare(libc::CLONE_NEWIPC) }),
            "unshare an IPC namespace",
        );
    }
    let mut queues = program.must(set_up(&tag, ipcns, notify), "make the queues");
    queues.foreign = foreign_fd;
    let mut names: Vec<String> = vec![queues.name("main")];
    if foreign {
        names.push(foreign_name);
    }
    if ipcns {
        names.push(queues.name("orphan"));
    }
    if notify {
        names.push(queues.name("notify"));
    }
    let listing: String = names.iter().map(|n| format!("{n}\n")).collect();
    program.must(
        write_atomic(&program.companion(".queues"), listing.as_bytes()),
        "write the queue list",
    );
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});
    let mut report = Report::new();
    check(&queues, &mut report);
    program.finish(&report);
}
