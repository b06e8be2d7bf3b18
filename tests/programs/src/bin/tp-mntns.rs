//! tp-mntns: a process in a mount namespace of its own, rooted at the ready file's
//! directory (its ROOT), with mounts of several kinds:
//!
//! - `/` a bind of ROOT (pivot_root into it; the rest of our mounts are dropped);
//! - `/usr` and the directory of our executable: binds of ours (the code and libraries
//!   it runs), which the test saves as external mounts (keys `usr` and `bin`);
//! - `/proc` a procfs;
//! - `/tmp` a tmpfs (`size=1m,mode=1777`) holding [`TMP_FILE`] and [`DEEP_FILE`];
//! - `/bind` a bind of `/tmp/sub` (part of another mount of the namespace);
//! - `/tmp/over` another tmpfs, unbindable (it cannot be copied, only read through
//!   itself) and holding [`OVER_FILE`], mounted over a directory of the first that holds
//!   [`HIDDEN_FILE`];
//! - `/data` a read-only bind of ROOT's `datasrc` (part of the root mount);
//! - `/dev/pts` a devpts instance of its own (`mode=620,ptmxmode=666`).
//!
//! With `--files 1` it also holds files whose restore depends on the namespaces it is
//! in: a unix stream socket listening on [`LONG_SOCK`] (a name that fits `sun_path` only
//! as the tree sees it, not under a path of its root as seen from outside), a datagram
//! socket bound to the relative name [`REL_SOCK`] in [`REL_DIR`], a pty of its own
//! devpts instance (master and slave), and a pipe whose signal owner (`F_SETOWN`) is
//! itself. The check then also proves a client can connect to the listener by its name
//! and talk, the datagram socket gets a datagram sent to its name, both keep their
//! names, the pty carries a line from master to slave under its old number, and the
//! pipe's owner is still this process (by the number it has in its pid namespace: run
//! it in a new one to prove the owner is numbered there). It also holds its own mount
//! and pid namespaces open (`/proc/self/ns/mnt`, `pid`), and checks they are still the
//! namespaces it is in.
//!
//! It holds [`TMP_FILE`] open at [`TMP_POS`]. The check proves the mounts are the same
//! (mount point, filesystem type, root in the filesystem, per-mount flags, super
//! options), the held file is the one its path names with its contents and
//! offset, the bind shows the tmpfs's file, `/data` refuses writes, `/proc` is this
//! process's pid namespace's, and the devpts instance has its ptmx. The ready and result
//! files are at the new root (ROOT's view of them).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use criu_testprogs::{c_path, cvt, write_atomic, Program, Report};

const TMP_FILE: &str = "/tmp/file.txt";
const TMP_DATA: &[u8] = b"contents of a file on the namespace's tmpfs";
const TMP_POS: u64 = 11;
const DEEP_FILE: &str = "/tmp/sub/deep.txt";
const DEEP_DATA: &[u8] = b"deeper in the tmpfs, also seen at /bind";
const HIDDEN_FILE: &str = "/tmp/over/hidden.txt";
const OVER_FILE: &str = "/tmp/over/on-top.txt";
const OVER_DATA: &[u8] = b"a file of the unbindable tmpfs";
const HIDDEN_DATA: &[u8] = b"under a mount stacked on its directory";
const DATA_FILE: &str = "datasrc/data.txt";
const DATA_TEXT: &[u8] = b"a file of the root filesystem, bound read-only";
/// 97 bytes: with `/proc/PID/root` or a directory of ours in front it no longer fits
/// `sun_path` (108 bytes with the NUL).
const LONG_SOCK: &str = "/socks/a-directory-name-long-enough-that-any-prefix-overflows-sun-path-of-108-bytes/listener.sock";
const REL_DIR: &str = "/socks";
const REL_SOCK: &str = "rel.sock";

fn main() {
    let program = Program::start(
        "tp-mntns",
        &[(
            "--files 0|1",
            "also hold unix sockets bound to names, a pty and a pipe with a signal owner",
        )],
    );
    let with_files = program.opt_or("--files", 0u32) == 1;
    let root = program.must(std::fs::canonicalize(program.ready_dir()), "resolve ROOT");
    let at_root = |path: &Path| Path::new("/").join(path.file_name().unwrap_or_default());
    let (ready, result) = (
        at_root(program.ready_file()),
        at_root(&program.result_file()),
    );
    let held = program.must(set_up(&root), "set up the mount namespace");
    let files = with_files.then(|| program.must(NsFiles::open(), "open the namespace's files"));
    let mounts = program.must(mounts(), "read mountinfo");
    let line = format!("ready {}\n", std::process::id());
    program.must(
        write_atomic(&ready, line.as_bytes()),
        "write the ready file",
    );
    program.work_until_check(Duration::from_millis(100), || {});
    let mut report = check(&held, &mounts);
    if let Some(files) = &files {
        report.absorb("files: ", files.check());
    }
    let line = report.summary();
    if let Err(e) = write_atomic(&result, format!("{line}\n").as_bytes()) {
        eprintln!("tp-mntns: cannot write {}: {e}", result.display());
        std::process::exit(2);
    }
    std::process::exit(if report.passed() { 0 } else { 1 });
}

fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let c = |s: Option<&str>| s.map(|s| c_path(Path::new(s))).transpose();
    let (source, target, fstype, data) = (c(source)?, c(Some(target))?, c(fstype)?, c(data)?);
    let ptr = |s: &Option<std::ffi::CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null.
    let ret = unsafe {
        libc::mount(
            ptr(&source),
            ptr(&target),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    cvt(ret).map(drop).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "mount {}: {e}",
                target
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        )
    })
}

struct Held {
    file: File,
}

fn set_up(root: &Path) -> io::Result<Held> {
    for dir in ["proc", "tmp", "bind", "data", "datasrc", "dev/pts", "old"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::write(root.join(DATA_FILE), DATA_TEXT)?;
    // SAFETY: unshare(2) with a flag, no pointers.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
    mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    let root_str = root.to_str().unwrap_or("/");
    mount(Some(root_str), root_str, None, libc::MS_BIND, None)?;
    // The tmpfs first, so that our binaries' directory, bound below, stays in sight
    // when it is itself under /tmp (a checkout in /tmp): the bind then sits on the tmpfs.
    let tmp = root.join("tmp");
    mount(
        Some("tmp"),
        tmp.to_str().unwrap_or("/"),
        Some("tmpfs"),
        0,
        Some("size=1m,mode=1777"),
    )?;
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe_dir = exe.parent().unwrap_or(Path::new("/"));
    for ours in [Path::new("/usr"), exe_dir] {
        let at = root.join(ours.strip_prefix("/").unwrap_or(ours));
        std::fs::create_dir_all(&at)?;
        let (from, to) = (ours.to_str().unwrap_or("/"), at.to_str().unwrap_or("/"));
        mount(Some(from), to, None, libc::MS_BIND, None)?;
    }
    for lib in ["lib", "lib64"] {
        if let Ok(to) = std::fs::read_link(Path::new("/").join(lib)) {
            let _ = std::os::unix::fs::symlink(to, root.join(lib));
        }
    }
    std::env::set_current_dir(root)?;
    let (dot, old) = (c_path(Path::new("."))?, c_path(Path::new("old"))?);
    // SAFETY: two NUL-terminated paths.
    cvt(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), old.as_ptr()) } as i32)?;
    let old = c_path(Path::new("/old"))?;
    // SAFETY: a NUL-terminated path.
    cvt(unsafe { libc::umount2(old.as_ptr(), libc::MNT_DETACH) })?;
    std::fs::remove_dir("/old")?;
    std::env::set_current_dir("/")?;
    // Our stdin (/dev/null) and output (opened through the old root's mount) are out of
    // reach from the new root: the output is opened again through it.
    // SAFETY: closing fd 0, which nothing of ours holds.
    unsafe { libc::close(0) };
    let out = OpenOptions::new()
        .append(true)
        .create(true)
        .open("/mntns.out")?;
    for fd in [1, 2] {
        // SAFETY: dup2 of an open fd onto our stdout/stderr.
        cvt(unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&out), fd) })?;
    }
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(Some("proc"), "/proc", Some("proc"), nodev, None)?;
    std::fs::create_dir("/tmp/sub")?;
    std::fs::write(DEEP_FILE, DEEP_DATA)?;
    mount(Some("/tmp/sub"), "/bind", None, libc::MS_BIND, None)?;
    std::fs::create_dir("/tmp/over")?;
    std::fs::write(HIDDEN_FILE, HIDDEN_DATA)?;
    mount(
        Some("over"),
        "/tmp/over",
        Some("tmpfs"),
        0,
        Some("size=64k"),
    )?;
    mount(None, "/tmp/over", None, libc::MS_UNBINDABLE, None)?;
    std::fs::write(OVER_FILE, OVER_DATA)?;
    mount(Some("/datasrc"), "/data", None, libc::MS_BIND, None)?;
    mount(
        None,
        "/data",
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
        None,
    )?;
    mount(
        Some("pts"),
        "/dev/pts",
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,mode=620,ptmxmode=666"),
    )?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(TMP_FILE)?;
    file.write_all(TMP_DATA)?;
    file.seek(SeekFrom::Start(TMP_POS))?;
    Ok(Held { file })
}

/// (mount point, fs type, root, per-mount options, super options) of each mount,
/// sorted (ids, device numbers and the order of siblings may differ after a restore).
fn mounts() -> io::Result<Vec<String>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut mounts: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let f: Vec<&str> = head.split(' ').collect();
            let t: Vec<&str> = tail.split(' ').collect();
            Some(format!(
                "{} {} {} {} {}",
                f.get(4)?,
                t.first()?,
                f.get(3)?,
                f.get(5)?,
                t.get(2)?
            ))
        })
        .collect();
    mounts.sort();
    Ok(mounts)
}

fn check(held: &Held, before: &[String]) -> Report {
    let mut report = Report::new();
    if let Some(now) = report.ok_or_fail(mounts(), "read mountinfo") {
        report.check_eq("mounts", now.as_slice(), before);
    }
    // (A tmpfs unpacked again numbers its inodes anew.)
    let by_path = std::fs::metadata(TMP_FILE).map(|m| (m.dev(), m.ino()));
    let held_id = held.file.metadata().map(|m| (m.dev(), m.ino()));
    if let (Some(path_id), Some(held_id)) = (
        report.ok_or_fail(by_path, "stat the tmpfs file"),
        report.ok_or_fail(held_id, "fstat the held file"),
    ) {
        report.check_eq("held file is the one at its path", held_id, path_id);
    }
    let mut f = &held.file;
    if let Some(pos) = report.ok_or_fail(f.stream_position(), "offset") {
        report.check_eq("offset", pos, TMP_POS);
    }
    let mut data = Vec::new();
    let read = f
        .seek(SeekFrom::Start(0))
        .and_then(|_| f.read_to_end(&mut data));
    if report.ok_or_fail(read, "read the held file").is_some() {
        report.check_eq("held file data", data.as_slice(), TMP_DATA);
    }
    let deep = std::fs::read("/bind/deep.txt");
    if let Some(deep) = report.ok_or_fail(deep, "read /bind/deep.txt") {
        report.check_eq("bind shows the tmpfs", deep.as_slice(), DEEP_DATA);
    }
    let data = std::fs::read("/data/data.txt");
    if let Some(data) = report.ok_or_fail(data, "read /data/data.txt") {
        report.check_eq("read-only bind", data.as_slice(), DATA_TEXT);
    }
    let write = OpenOptions::new().write(true).open("/data/data.txt");
    report.check(
        matches!(&write, Err(e) if e.raw_os_error() == Some(libc::EROFS)),
        || format!("writing into /data: {write:?}, expected EROFS"),
    );
    let me = std::fs::read_link("/proc/self").map(|p| p.to_string_lossy().into_owned());
    if let Some(me) = report.ok_or_fail(me, "read /proc/self") {
        report.check_eq("/proc/self", me, std::process::id().to_string());
    }
    report.check(Path::new("/dev/pts/ptmx").exists(), || {
        "/dev/pts/ptmx is missing".into()
    });
    let on_top = std::fs::read(OVER_FILE);
    if let Some(on_top) = report.ok_or_fail(on_top, "read the file of the unbindable tmpfs") {
        report.check_eq("unbindable tmpfs file", on_top.as_slice(), OVER_DATA);
    }
    let unbindable = std::fs::read_to_string("/proc/self/mountinfo").map(|text| {
        text.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4) == Some(&"/tmp/over") && f.contains(&"unbindable")
        })
    });
    if let Some(unbindable) = report.ok_or_fail(unbindable, "read mountinfo") {
        report.check(unbindable, || "/tmp/over is no longer unbindable".into());
    }
    // Last: the stacked tmpfs goes, showing the file under it.
    let over = c_path(Path::new("/tmp/over"));
    // SAFETY: a NUL-terminated path.
    let gone = over.and_then(|p| cvt(unsafe { libc::umount2(p.as_ptr(), 0) }));
    if report.ok_or_fail(gone, "unmount /tmp/over").is_some() {
        let hidden = std::fs::read(HIDDEN_FILE);
        if let Some(hidden) = report.ok_or_fail(hidden, "read the file under /tmp/over") {
            report.check_eq("file under a stacked mount", hidden.as_slice(), HIDDEN_DATA);
        }
    }
    report
}

/// The files of `--files 1` (see the module's doc).
struct NsFiles {
    listener: UnixListener,
    datagrams: UnixDatagram,
    master: File,
    slave: File,
    /// The pty's number at setup.
    index: u32,
    /// The read end of a pipe whose signal owner is this process, and its write end.
    owned: File,
    _write_end: File,
    /// Its own namespaces, open: (kind, file of `/proc/self/ns/KIND`).
    own_ns: Vec<(&'static str, File)>,
}

impl NsFiles {
    fn open() -> io::Result<NsFiles> {
        let long_dir = Path::new(LONG_SOCK).parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(long_dir)?;
        let listener = UnixListener::bind(LONG_SOCK)?;
        std::env::set_current_dir(REL_DIR)?;
        let datagrams = UnixDatagram::bind(REL_SOCK);
        std::env::set_current_dir("/")?;
        let datagrams = datagrams?;
        let master = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open("/dev/pts/ptmx")?;
        let mut index: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes one unsigned int to the pointer, which outlives it.
        cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut index) })?;
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK reads one int from the pointer, which outlives it.
        cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(format!("/dev/pts/{index}"))?;
        let mut ends = [0; 2];
        // SAFETY: pipe2 writes two fds into the array.
        cvt(unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) })?;
        // SAFETY: both fds were just made by pipe2 and are owned by nothing else.
        let (owned, write_end) =
            unsafe { (File::from_raw_fd(ends[0]), File::from_raw_fd(ends[1])) };
        // SAFETY: F_SETOWN takes an integer.
        cvt(unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETOWN, libc::getpid()) })?;
        let own_ns = ["mnt", "pid"]
            .into_iter()
            .map(|kind| Ok((kind, File::open(format!("/proc/self/ns/{kind}"))?)))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(NsFiles {
            own_ns,
            listener,
            datagrams,
            master,
            slave,
            index,
            owned,
            _write_end: write_end,
        })
    }

    fn check(&self) -> Report {
        let mut report = Report::new();
        // The listener: its name, and a client that connects to it by that name.
        let name = self
            .listener
            .local_addr()
            .map(|a| a.as_pathname().map(Path::to_owned));
        if let Some(name) = report.ok_or_fail(name, "the listener's name") {
            report.check_eq("listener name", name.as_deref(), Some(Path::new(LONG_SOCK)));
        }
        let talk = UnixStream::connect(LONG_SOCK).and_then(|mut client| {
            let (mut server, _) = self.listener.accept()?;
            client.write_all(b"hello")?;
            let mut got = [0u8; 5];
            server.read_exact(&mut got)?;
            Ok(got)
        });
        if let Some(got) = report.ok_or_fail(talk, "connect to the listener and talk") {
            report.check_eq("what the listener's client sent", &got, b"hello");
        }
        // The datagram socket: its relative name, and a datagram sent to it.
        let name = self
            .datagrams
            .local_addr()
            .map(|a| a.as_pathname().map(Path::to_owned));
        if let Some(name) = report.ok_or_fail(name, "the datagram socket's name") {
            report.check_eq("datagram name", name.as_deref(), Some(Path::new(REL_SOCK)));
        }
        let sent = UnixDatagram::unbound().and_then(|s| {
            s.send_to(b"datagram", Path::new(REL_DIR).join(REL_SOCK))?;
            let mut got = [0u8; 16];
            let n = self.datagrams.recv(&mut got)?;
            Ok(got[..n].to_vec())
        });
        if let Some(got) = report.ok_or_fail(sent, "send a datagram to its name") {
            report.check_eq("datagram", got.as_slice(), b"datagram");
        }
        // The pty: its number, the slave's name, a line from master to slave.
        let mut index: libc::c_uint = u32::MAX;
        // SAFETY: TIOCGPTN writes one unsigned int to the pointer, which outlives it.
        let got = cvt(unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCGPTN, &mut index) });
        if report.ok_or_fail(got, "TIOCGPTN").is_some() {
            report.check_eq("pty number", index, self.index);
        }
        let link = std::fs::read_link(format!("/proc/self/fd/{}", self.slave.as_raw_fd()));
        if let Some(link) = report.ok_or_fail(link, "the slave's name") {
            report.check_eq(
                "slave name",
                link,
                Path::new("/dev/pts").join(self.index.to_string()),
            );
        }
        let line = (&self.master).write_all(b"ping\n").and_then(|()| {
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            // Bounded: the line is there at once, or the pty is broken.
            for _ in 0..500 {
                match (&self.slave).read(&mut buf) {
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if got.ends_with(b"\n") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(got)
        });
        if let Some(got) = report.ok_or_fail(line, "a line through the pty") {
            report.check_eq("line through the pty", got.as_slice(), b"ping\n");
        }
        // The namespace files: still those of the namespaces it is in.
        for (kind, file) in &self.own_ns {
            let held = file.metadata().map(|m| m.ino());
            let now = std::fs::metadata(format!("/proc/self/ns/{kind}")).map(|m| m.ino());
            if let (Some(held), Some(now)) = (
                report.ok_or_fail(held, &format!("stat of the held {kind} namespace file")),
                report.ok_or_fail(now, &format!("stat of /proc/self/ns/{kind}")),
            ) {
                report.check_eq(&format!("held {kind} namespace"), held, now);
            }
        }
        // The pipe's signal owner: this process, by its number here.
        // SAFETY: F_GETOWN takes no argument.
        let owner = cvt(unsafe { libc::fcntl(self.owned.as_raw_fd(), libc::F_GETOWN) });
        if let Some(owner) = report.ok_or_fail(owner, "F_GETOWN") {
            // SAFETY: getpid has no arguments.
            report.check_eq("signal owner", owner, unsafe { libc::getpid() });
        }
        report
    }
}
