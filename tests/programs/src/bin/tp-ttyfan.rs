//! tp-ttyfan: a console and a virtual terminal opened through device nodes of its own,
//! and a fanotify group with an inode mark and a mount mark.
//!
//! State, in the directory of the ready file:
//! - `console`, a node made with mknod for 5:1 (`/dev/console`), open read-only;
//! - `vt`, a node for 4:5 (`/dev/tty5`, a virtual terminal), open read-write and
//!   non-blocking, close-on-exec, without O_NOCTTY: the program leads its session
//!   (started by setsid) and has no controlling terminal, so the VT becomes it. Neither
//!   terminal's settings are changed: they are the machine's own devices;
//! - a fanotify group (`FAN_CLASS_NOTIF | FAN_NONBLOCK`, events opened `O_RDONLY |
//!   O_LARGEFILE`) with an inode mark on `MOUNT/marked` (`FAN_MODIFY | FAN_CLOSE_WRITE`)
//!   and a mount mark on the mount at `MOUNT` (`--mount`, a mount of its own the caller
//!   made, so no one else's files make events): `FAN_OPEN | FAN_ONDIR`, with an ignored
//!   mask `FAN_ACCESS` that survives modification (`FAN_MARK_IGNORED_SURV_MODIFY`).
//!
//! Check: each terminal descriptor is still a terminal of the same device number, with
//! its access mode, O_NONBLOCK and FD_CLOEXEC; the VT is still the controlling terminal
//! (`tty_nr` of /proc/self/stat); the group's fdinfo shows the same flags
//! and marks (the `fanotify` lines, in any order); no event is queued; then opening,
//! writing and closing `MOUNT/marked` brings an open, a modify and a close-write event,
//! each with a descriptor of that very file.

use std::collections::BTreeSet;
use std::io;
use std::os::raw::c_int;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criu_testprogs::{c_path, cvt, fd_flags, Program, Report};

const FAN_CLASS_NOTIF: u32 = 0;
const FAN_NONBLOCK: u32 = 0x2;
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_ACCESS: u64 = 0x1;
const FAN_MODIFY: u64 = 0x2;
const FAN_CLOSE_WRITE: u64 = 0x8;
const FAN_OPEN: u64 = 0x20;
const FAN_ONDIR: u64 = 0x4000_0000;

const CONSOLE: (u32, u32) = (5, 1);
const VT: (u32, u32) = (4, 5);

struct Terminal {
    name: &'static str,
    fd: c_int,
    dev: (u32, u32),
    flags: c_int,
    cloexec: bool,
}

fn fstat(fd: c_int) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data the call fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid place to write.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// Makes the node `dir/name` for device `dev` and opens it with `flags`.
fn open_node(dir: &Path, name: &'static str, dev: (u32, u32), flags: c_int) -> io::Result<c_int> {
    let path = c_path(&dir.join(name))?;
    // SAFETY: `path` is NUL-terminated and outlives the calls.
    unsafe {
        let _ = libc::unlink(path.as_ptr());
        cvt(libc::mknod(
            path.as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(dev.0, dev.1),
        ))?;
        cvt(libc::open(path.as_ptr(), flags))
    }
}

fn fanotify_mark(fd: c_int, flags: u32, mask: u64, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: `path` is NUL-terminated and outlives the call.
    cvt(unsafe { libc::fanotify_mark(fd, flags, mask, libc::AT_FDCWD, path.as_ptr()) }).map(drop)
}

/// The `fanotify` lines of the group's fdinfo, sorted.
fn fanotify_lines(fd: c_int) -> io::Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("fanotify "))
        .map(|l| l.trim_end().to_owned())
        .collect())
}

/// The events queued now: (mask, inode of the event's file).
fn read_events(fd: c_int) -> io::Result<Vec<(u64, u64)>> {
    let mut buf = vec![0u8; 8192];
    let mut out = Vec::new();
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                return Ok(out);
            }
            return Err(e);
        }
        let mut at = 0usize;
        let size = std::mem::size_of::<libc::fanotify_event_metadata>();
        while at + size <= n as usize {
            // SAFETY: the kernel wrote a whole event here; read_unaligned copes with
            // the byte buffer's alignment.
            let ev: libc::fanotify_event_metadata =
                unsafe { std::ptr::read_unaligned(buf.as_ptr().add(at).cast()) };
            let ino = if ev.fd >= 0 {
                let ino = fstat(ev.fd).map(|s| s.st_ino).unwrap_or(0);
                // SAFETY: the event's descriptor is ours to close.
                unsafe { libc::close(ev.fd) };
                ino
            } else {
                0
            };
            out.push((ev.mask, ino));
            at += (ev.event_len as usize).max(size);
        }
    }
}

/// `tty_nr` of /proc/self/stat: the controlling terminal's device (0: none).
fn controlling_terminal() -> io::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_comm
        .split_whitespace()
        .nth(4)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other(format!("tty_nr in {stat}")))
}

fn check_terminal(report: &mut Report, t: &Terminal) {
    let Some(st) = report.ok_or_fail(fstat(t.fd), &format!("fstat {}", t.name)) else {
        return;
    };
    report.check_eq(
        &format!("{} is a character device", t.name),
        st.st_mode & libc::S_IFMT,
        libc::S_IFCHR,
    );
    report.check_eq(
        &format!("{} device number", t.name),
        (libc::major(st.st_rdev), libc::minor(st.st_rdev)),
        t.dev,
    );
    // SAFETY: isatty(3) on our descriptor.
    let tty = unsafe { libc::isatty(t.fd) } == 1;
    report.check(tty, || format!("{} is no terminal any more", t.name));
    match fd_flags(t.fd) {
        Ok((fd_flags, flags)) => {
            let cloexec = fd_flags & libc::FD_CLOEXEC != 0;
            let mask = libc::O_ACCMODE | libc::O_NONBLOCK;
            report.check_eq(
                &format!("{} access mode and O_NONBLOCK", t.name),
                flags & mask,
                t.flags & mask,
            );
            report.check_eq(&format!("{} FD_CLOEXEC", t.name), cloexec, t.cloexec);
        }
        Err(e) => report.fail(format!("flags of {}: {e}", t.name)),
    }
}

fn check_fanotify(report: &mut Report, fd: c_int, before: &BTreeSet<String>, marked: &Path) {
    match fanotify_lines(fd) {
        Ok(now) => report.check_eq("fanotify fdinfo lines", &now, before),
        Err(e) => report.fail(format!("fdinfo of the fanotify group: {e}")),
    }
    match read_events(fd) {
        Ok(queued) => report.check_eq("events queued at the check", queued, Vec::new()),
        Err(e) => report.fail(format!("read the fanotify group: {e}")),
    }
    let Some(st) = report.ok_or_fail(std::fs::metadata(marked), "stat the marked file") else {
        return;
    };
    let ino = std::os::unix::fs::MetadataExt::ino(&st);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(marked)
        .and_then(|mut f| io::Write::write_all(&mut f, b"after the restore"));
    report.ok_or_fail(written, "write the marked file");
    let want = FAN_OPEN | FAN_MODIFY | FAN_CLOSE_WRITE;
    let mut seen = 0u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen & want != want && Instant::now() < deadline {
        match read_events(fd) {
            Ok(events) => {
                for (mask, on) in events {
                    report.check_eq("inode of an event's file", on, ino);
                    seen |= mask;
                }
            }
            Err(e) => {
                report.fail(format!("read the fanotify group: {e}"));
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    report.check_eq("events after a write of the marked file", seen & want, want);
}

fn main() {
    let mut program = Program::start(
        "tp-ttyfan",
        &[(
            "--mount DIR",
            "a mount of its own for the mount mark (required)",
        )],
    );
    let mount: PathBuf = program
        .opt::<String>("--mount")
        .map(PathBuf::from)
        .unwrap_or_else(|| program.setup_failed("--mount DIR is required"));
    let dir = program.ready_dir();
    let console = Terminal {
        name: "console",
        fd: program.must(
            open_node(&dir, "console", CONSOLE, libc::O_RDONLY | libc::O_NOCTTY),
            "open a console node",
        ),
        dev: CONSOLE,
        flags: libc::O_RDONLY,
        cloexec: false,
    };
    let vt_flags = libc::O_RDWR | libc::O_NONBLOCK;
    let vt = Terminal {
        name: "vt",
        fd: program.must(
            open_node(&dir, "vt", VT, vt_flags | libc::O_CLOEXEC),
            "open a virtual terminal node",
        ),
        dev: VT,
        flags: vt_flags,
        cloexec: true,
    };
    let marked = mount.join("marked");
    program.must(std::fs::write(&marked, b"before"), "make the marked file");
    // SAFETY: fanotify_init(2) with integer arguments.
    let fan = program.must(
        cvt(unsafe {
            libc::fanotify_init(
                FAN_CLASS_NOTIF | FAN_NONBLOCK,
                (libc::O_RDONLY | libc::O_LARGEFILE) as u32,
            )
        }),
        "fanotify_init",
    );
    program.must(
        fanotify_mark(fan, FAN_MARK_ADD, FAN_MODIFY | FAN_CLOSE_WRITE, &marked),
        "add the inode mark",
    );
    program.must(
        fanotify_mark(
            fan,
            FAN_MARK_ADD | FAN_MARK_MOUNT,
            FAN_OPEN | FAN_ONDIR,
            &mount,
        ),
        "add the mount mark",
    );
    program.must(
        fanotify_mark(
            fan,
            FAN_MARK_ADD | FAN_MARK_MOUNT | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
            FAN_ACCESS,
            &mount,
        ),
        "add the mount mark's ignored mask",
    );
    let before = program.must(fanotify_lines(fan), "read the group's fdinfo");
    if before.len() != 3 {
        program.setup_failed(format!(
            "fdinfo shows {before:?}, not a group and two marks"
        ));
    }
    program.must(read_events(fan), "empty the queue");
    let ctty = program.must(controlling_terminal(), "read the controlling terminal");
    if ctty == 0 {
        program.setup_failed("the VT did not become the controlling terminal");
    }
    program.ready();
    program.work_until_check(Duration::from_millis(50), || {});

    let mut report = Report::new();
    check_terminal(&mut report, &console);
    check_terminal(&mut report, &vt);
    if let Some(now) = report.ok_or_fail(controlling_terminal(), "read the controlling terminal") {
        report.check_eq("the controlling terminal (tty_nr)", now, ctty);
    }
    check_fanotify(&mut report, fan, &before, &marked);
    program.finish(&report);
}
