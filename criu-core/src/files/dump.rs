//! The dump's driver for open files: every descriptor of a task becomes an fdinfo
//! entry that points at one `files.img` entry (one per open file description, shared
//! by every task and descriptor that holds it, found with kcmp), plus side images for
//! what a file holds (pipe and fifo data, socket queues, ghost files, memfd inodes, tty
//! state). Each kind's own code is in its module (see [`super`]).
//!
//! The files are reached through `pidfd_getfd` duplicates, so nothing is read or changed
//! through the task itself: pipe data is copied with `tee`, socket queues are read with
//! `MSG_PEEK`. What the dump records and what it refuses is decided by the kind table
//! ([`kinds`]) that the restore reads too: kinds that cannot be restored faithfully are
//! refused with [`FileError::Unsupported`], naming the task, the descriptor and what it
//! is, before the freeze ([`FileTable::check_supported`]).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use criu_images::{pb, ImageKind, ImageWriter};

use super::kinds::{self, Given, Kind};
use super::{
    anon, fanotify, fdinfo, ghost, inotify, io_uring, lock, memfd, mqueue, ns, pidfd, pipe, reg,
    socket, tty, unix,
};
use crate::proc::ProcDir;
use crate::sys::{self, Pid};

use super::memfd::MemfdInode;
use super::tty::TtyRefill;

/// Why a file could not be dumped.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A kind of file (or a state of one) that the images cannot carry or that restore
    /// could not rebuild faithfully.
    #[error("task {pid} fd {fd}: cannot dump {kind}")]
    Unsupported { pid: Pid, fd: i32, kind: String },
    /// A file named by path (cwd, exe, a mapping) that cannot be dumped.
    #[error("{}: cannot dump {kind}", path.display())]
    UnsupportedPath { path: PathBuf, kind: String },
    #[error("task {pid} fd {fd}: {what}")]
    Io {
        pid: Pid,
        fd: i32,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{}: {what}", path.display())]
    Path {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// `/proc/PID/fdinfo/N` did not have the expected shape.
    #[error("task {pid} fd {fd}: unexpected /proc/{pid}/fdinfo/{fd}")]
    Fdinfo {
        pid: Pid,
        fd: i32,
        #[source]
        source: fdinfo::ParseError,
    },
    #[error(transparent)]
    Image(#[from] criu_images::Error),
}

/// Task-wide errors (opening `/proc/PID`, a pidfd) carry fd -1.
const NO_FD: i32 = -1;

fn task_io(pid: Pid, what: &'static str) -> impl FnOnce(io::Error) -> FileError {
    move |source| FileError::Io {
        pid,
        fd: NO_FD,
        what,
        source,
    }
}

pub(super) fn path_io(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> FileError {
    let path = path.to_owned();
    move |source| FileError::Path { path, what, source }
}

/// Largest deleted-but-open file saved whole (allocated bytes), as CRIU's default
/// `--ghost-limit`.
pub const DEFAULT_GHOST_LIMIT: u64 = 1 << 20;

/// What kind of file a descriptor holds, decided from its `/proc/PID/fd` link and stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Regular files, directories, symlinks (O_PATH) and memory devices (/dev/null...).
    Reg,
    Pipe,
    Fifo,
    Socket,
    Eventfd,
    Eventpoll,
    Signalfd,
    Timerfd,
    Inotify,
    Fanotify,
    Memfd,
    Ns {
        cflag: u32,
        kid: u64,
    },
    Tty(tty::Pty),
    /// A console or virtual terminal, reopened by path.
    SimpleTty(tty::SimpleTty),
    /// A POSIX message queue (told from a regular file by its filesystem).
    Mqueue,
    /// `/dev/tty`: the controlling terminal of whoever opened it.
    DevTty,
    Pidfd,
    /// An io_uring ring at rest (see `io_uring.rs`).
    IoUring,
}

impl Class {
    fn fd_type(self) -> pb::FdTypes {
        match self {
            Class::Reg => pb::FdTypes::Reg,
            Class::Pipe => pb::FdTypes::Pipe,
            Class::Fifo => pb::FdTypes::Fifo,
            // Refined to INETSK by the socket code.
            Class::Socket => pb::FdTypes::Unixsk,
            Class::Eventfd => pb::FdTypes::Eventfd,
            Class::Eventpoll => pb::FdTypes::Eventpoll,
            Class::Signalfd => pb::FdTypes::Signalfd,
            Class::Timerfd => pb::FdTypes::Timerfd,
            Class::Inotify => pb::FdTypes::Inotify,
            Class::Fanotify => pb::FdTypes::Fanotify,
            Class::Memfd => pb::FdTypes::Memfd,
            Class::Ns { .. } => pb::FdTypes::Ns,
            Class::Tty(_) | Class::SimpleTty(_) | Class::DevTty => pb::FdTypes::Tty,
            // CRIU's entry for a file of a kind it does not know (see `mqueue.rs`).
            Class::Mqueue | Class::IoUring => pb::FdTypes::Ext,
            Class::Pidfd => pb::FdTypes::Pidfd,
        }
    }
}

/// The device of the kernel's internal shmem mount, where memfds and shared anonymous
/// memory live: found by creating a memfd of our own.
fn shmem_dev() -> Option<u64> {
    static DEV: OnceLock<Option<u64>> = OnceLock::new();
    *DEV.get_or_init(|| {
        let fd = sys::memfd_create("criu-rs-shmem-probe", 0).ok()?;
        File::from(fd).metadata().ok().map(|m| m.dev())
    })
}

fn major(dev: u64) -> u32 {
    libc::major(dev)
}

fn minor(dev: u64) -> u32 {
    libc::minor(dev)
}

/// Classifies a descriptor by its link, stat and flags: its row in the kind table (see
/// [`kinds`]), and the dump code for it (`None` for kinds the dump has no code for).
/// Sub-kinds that need a closer look (socket types and states, deleted files, message
/// queues...) are refined by [`check_fd`].
fn classify(link: &str, meta: &Metadata, flags: u32) -> (Kind, Option<Class>) {
    let ft = meta.file_type();
    if flags & libc::O_PATH as u32 != 0 {
        // A path reference only (even to a socket, fifo or device node): reopened by
        // path with O_PATH.
        return if link.starts_with('/') {
            (Kind::PathRef, Some(Class::Reg))
        } else {
            (Kind::OtherFile, None)
        };
    }
    if ft.is_socket() {
        // Refined by family, type and state in `check_fd`.
        return (Kind::UnixStream, Some(Class::Socket));
    }
    if ft.is_char_device() {
        let (maj, min) = (major(meta.rdev()), minor(meta.rdev()));
        return match maj {
            // /dev/null, /dev/zero, /dev/urandom, /dev/kmsg...: reopened by path.
            1 => (Kind::MemDevice, Some(Class::Reg)),
            // /dev/tty: refined by the terminal it stands for in `check_fd`.
            5 if min == 0 => (Kind::DevTty, Some(Class::DevTty)),
            _ => match tty::Pty::from_rdev(meta.rdev()) {
                Some(pty) if pty.master => (Kind::PtyMaster, Some(Class::Tty(pty))),
                Some(pty) => (Kind::PtySlave, Some(Class::Tty(pty))),
                None => match tty::SimpleTty::from_rdev(meta.rdev()) {
                    Some(t) => (t.kind(), Some(Class::SimpleTty(t))),
                    None if tty::is_tty_major(maj, min) => (Kind::OtherTty, None),
                    // /dev/net/tun (MISC_MAJOR, TUN_MINOR).
                    None if (maj, min) == (10, 200) => (Kind::Tun, None),
                    None => (Kind::CharDevice, None),
                },
            },
        };
    }
    if ft.is_block_device() {
        return (Kind::BlockDevice, None);
    }
    if let Some(kind) = kinds::anon_inode_kind(link) {
        let class = match kind {
            Kind::Eventfd => Class::Eventfd,
            Kind::Eventpoll => Class::Eventpoll,
            Kind::Signalfd => Class::Signalfd,
            Kind::Timerfd => Class::Timerfd,
            Kind::Inotify => Class::Inotify,
            Kind::Fanotify => Class::Fanotify,
            Kind::Pidfd => Class::Pidfd,
            Kind::IoUring => Class::IoUring,
            _ => return (kind, None),
        };
        return (kind, Some(class));
    }
    if ft.is_fifo() {
        return if link.starts_with("pipe:[") {
            (Kind::Pipe, Some(Class::Pipe))
        } else {
            (Kind::Fifo, Some(Class::Fifo))
        };
    }
    if ft.is_file() || ft.is_dir() || ft.is_symlink() {
        if Some(meta.dev()) == shmem_dev() {
            return (Kind::Memfd, Some(Class::Memfd));
        }
        // Not on the shmem mount: a hugetlb memfd (on the kernel's hugetlbfs mount).
        if link.starts_with("/memfd:") && link.ends_with(" (deleted)") {
            return (Kind::HugetlbMemfd, Some(Class::Memfd));
        }
        if link.starts_with("/secretmem") && link.ends_with(" (deleted)") {
            return (Kind::Secretmem, None);
        }
        if link.starts_with('/') {
            let kind = if ft.is_dir() {
                Kind::Directory
            } else {
                Kind::RegFile
            };
            return (kind, Some(Class::Reg));
        }
        if let Some((cflag, kid)) = ns::parse_link(link) {
            return (Kind::NsFile, Some(Class::Ns { cflag, kid }));
        }
    }
    if link.starts_with("pidfd:") {
        return (Kind::Pidfd, Some(Class::Pidfd));
    }
    (Kind::OtherFile, None)
}

/// One descriptor of a task, opened for inspection.
pub(crate) struct OpenFd<'a> {
    pub(super) pid: Pid,
    pub(super) fd: i32,
    /// The `/proc/PID/fd/N` link text, as bytes.
    pub(super) link: OsString,
    /// The whole fdinfo text, for the kind-specific lines.
    pub(super) fdinfo: String,
    pub(super) common: fdinfo::Common,
    /// A `pidfd_getfd` duplicate: the same open file description as the task's fd.
    pub(super) file: File,
    pub(super) meta: Metadata,
    /// Every descriptor number of the task (for epoll targets).
    pub(super) task_fds: &'a [i32],
    /// The task `task_fds` are the numbers of: the holder itself, or, for a file a
    /// unix socket's queue carries, the task holding that socket.
    pub(super) numbers_of: Pid,
}

impl OpenFd<'_> {
    pub(super) fn link_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.link.as_bytes())
    }

    pub(super) fn io(&self, what: &'static str) -> impl FnOnce(io::Error) -> FileError {
        let (pid, fd) = (self.pid, self.fd);
        move |source| FileError::Io {
            pid,
            fd,
            what,
            source,
        }
    }

    pub(super) fn unsupported(&self, kind: impl Into<String>) -> FileError {
        FileError::Unsupported {
            pid: self.pid,
            fd: self.fd,
            kind: kind.into(),
        }
    }

    pub(super) fn parse_err(&self) -> impl FnOnce(fdinfo::ParseError) -> FileError {
        let (pid, fd) = (self.pid, self.fd);
        move |source| FileError::Fdinfo { pid, fd, source }
    }

    pub(super) fn raw(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The owner of the file's I/O signals, numbered as the task sees it.
    pub(super) fn fown(&self) -> Result<pb::FownEntry, FileError> {
        let mut fown =
            fown(self.raw(), self.common.flags).map_err(self.io("read the file's signal owner"))?;
        if fown.pid != 0 {
            fown.pid = owner_in_task_ns(self.pid, fown.pid as i32)
                .map_err(self.io("number the file's signal owner in the task's pid namespace"))?
                as u32;
            if fown.pid == 0 {
                // Outside the task's pid namespace: the task sees no owner either.
                fown.uid = 0;
                fown.euid = 0;
            }
        }
        Ok(fown)
    }
}

/// The number that `owner` (ours: a pid, tid or process group, all numbered alike) has
/// in `task`'s pid namespace: what `F_GETOWN_EX` says inside the task, and what CRIU's
/// images hold. 0 when the task's namespace does not see it (as the kernel says there).
fn owner_in_task_ns(task: Pid, owner: i32) -> io::Result<i32> {
    let depth = crate::proc::ProcDir::open(task)?.status()?.ns_pid.len();
    if depth <= 1 {
        return Ok(owner);
    }
    // A process group is numbered as its leader; a group whose leader is gone has no
    // /proc entry to read its numbers from.
    let nspid = crate::proc::ProcDir::open(Pid(owner))
        .and_then(|p| p.status())
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading the numbers of owner {owner} (its /proc status): {e}"),
            )
        })?
        .ns_pid;
    // Levels are counted from ours down: the task's namespace is level `depth - 1`.
    Ok(nspid.get(depth - 1).copied().unwrap_or(0))
}

/// Signal owner of an open file (`F_GETSIG`, `F_GETOWN_EX`, `F_GETOWNER_UIDS`).
fn fown(file: BorrowedFd<'_>, flags: u32) -> io::Result<pb::FownEntry> {
    let mut fown = pb::FownEntry::default();
    if flags & libc::O_PATH as u32 != 0 {
        return Ok(fown);
    }
    const F_GETSIG: i32 = 11;
    fown.signum = sys::fcntl_get(file, F_GETSIG)? as u32;
    let (kind, pid) = sys::fcntl_owner(file)?;
    if pid != 0 {
        fown.pid_type = kind as u32;
        fown.pid = pid as u32;
        let (uid, euid) = sys::fcntl_owner_uids(file)?;
        fown.uid = uid;
        fown.euid = euid;
    }
    Ok(fown)
}

/// Opens descriptor `fd` of the task; `None` if it was closed meanwhile.
fn open_fd<'a>(
    proc: &ProcDir,
    pidfd: BorrowedFd<'_>,
    fd: i32,
    task_fds: &'a [i32],
) -> Result<Option<OpenFd<'a>>, FileError> {
    let pid = proc.pid();
    let gone = |e: &io::Error| matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EBADF));
    let io = |what| {
        move |source| FileError::Io {
            pid,
            fd,
            what,
            source,
        }
    };
    let link = match proc.read_link(&format!("fd/{fd}")) {
        Ok(l) => l.into_os_string(),
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(io("read the fd link")(e)),
    };
    let text = match proc.read_string(&format!("fdinfo/{fd}")) {
        Ok(t) => t,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(io("read fdinfo")(e)),
    };
    let common =
        fdinfo::parse_common(&text).map_err(|source| FileError::Fdinfo { pid, fd, source })?;
    let file = match sys::pidfd_getfd(pidfd, fd) {
        Ok(f) => File::from(f),
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(io("duplicate the fd (pidfd_getfd)")(e)),
    };
    let meta = file.metadata().map_err(io("stat the file"))?;
    Ok(Some(OpenFd {
        pid,
        fd,
        link,
        fdinfo: text,
        common,
        file,
        meta,
        task_fds,
        numbers_of: pid,
    }))
}

/// Checks that can be made on one descriptor without the dump's state: refuses, before
/// anything is changed, what we cannot dump and what the restore could not rebuild (the
/// kind table decides), then the states the kind's own code cannot handle.
///
/// `tree` is what the checks before the freeze know of the whole tree (the ptys whose
/// master it holds, its unix sockets' peers); without it (frozen stage) pty slaves and
/// unix peers are judged once the whole tree is dumped ([`FileTable::check_complete`]).
fn check_fd(
    fd: &OpenFd<'_>,
    mut given: Given,
    tree: Option<&TreeChecks>,
    tree_pids: &HashSet<i32>,
) -> Result<Class, FileError> {
    let pty_masters = tree.map(|t| &t.pty_masters);
    let (kind, class) = classify(&fd.link_str(), &fd.meta, fd.common.flags);
    let mut kind = refine(fd, kind, class)?;
    if kind == Kind::ProcPidFile
        && kinds::proc_pid_of(fd.link.as_bytes()).is_some_and(|p| tree_pids.contains(&p))
    {
        kind = Kind::ProcTreeFile;
    }
    if class == Some(Class::Pidfd) {
        kind = pidfd::kind(fd, tree_pids)?;
    }
    if kind == Kind::ProcDeadPid && reg::dead_proc_pid(fd)?.is_some_and(|p| tree_pids.contains(&p))
    {
        // As CRIU: /proc/PID would name that task at restore, not the dead process.
        return Err(fd.unsupported(format!(
            "{kind} ({}) whose pid is now a task of the dump",
            fd.link_str()
        )));
    }
    // A message queue is no file to reopen by path: its own code records it.
    let class = match kind {
        Kind::Mqueue | Kind::MqueueNotify | Kind::MqueueForeignNs => Some(Class::Mqueue),
        _ => class,
    };
    let mut judged_later = false;
    if let (Kind::PtySlave, Some(Class::Tty(pty))) = (kind, class) {
        match pty_masters {
            Some(masters) if masters.contains(&tty::pty_index(fd, pty)?) => {
                kind = Kind::PtySlavePaired;
            }
            Some(_) if tty::hung_up(fd) => kind = Kind::PtySlaveHungUp,
            Some(_) => {}
            None => judged_later = true,
        }
    }
    if let (Kind::DevTty, Some(t)) = (kind, tree) {
        kind = tty::dev_tty_kind(fd, &t.pty_masters)?;
    }
    // A pty made again at restore: nobody else may hold it (see tty.rs).
    if let (Some(t), Kind::PtyMaster | Kind::PtySlavePaired, Some(Class::Tty(pty))) =
        (tree, kind, class)
    {
        if let Some(why) = t.pty_problems.get(&tty::pty_index(fd, pty)?) {
            return Err(fd.unsupported(format!("{kind} ({}): {why}", fd.link_str())));
        }
    }
    if matches!(
        kind,
        Kind::UnixStream | Kind::UnixDgram | Kind::UnixSeqpacket
    ) {
        if let Some(t) = tree {
            let ino = fd.meta.ino() as u32;
            let peer = t.unix_peers.get(&ino).copied();
            let outside = peer.filter(|&p| p != 0 && !t.unix_peers.contains_key(&p));
            if let Some(outside) = outside.filter(|_| !t.unix_queues_unseen) {
                kind = Kind::UnixPeerOutside;
                given.ext_unix_sk = t.external_unix.allows(ino);
                if given.ext_unix_sk {
                    unix::check_external(fd, outside, &t.external_unix)?;
                }
            }
            unix::check_connection(fd, peer, |ino| {
                t.unix_queues_unseen || t.unix_peers.contains_key(&ino)
            })?;
        }
    }
    if let (Kind::TcpConnected, Some(tool)) = (kind, tree.and_then(|t| t.missing_lock_tool)) {
        if given.tcp_established {
            return Err(fd.unsupported(format!(
                "{kind} ({}): the network lock needs `{tool}`, which is not installed \
                 (install it, or choose another --network-lock)",
                fd.link_str()
            )));
        }
    }
    if let Some(why) = kind.dump_refusal(given).filter(|_| !judged_later) {
        let what = match class {
            Some(Class::Socket) if kind == Kind::UnixPeerOutside => {
                let ino = fd.meta.ino() as u32;
                let peer = tree.and_then(|t| t.unix_peers.get(&ino)).copied();
                unix::describe_outside(fd, peer.unwrap_or(0))
            }
            Some(Class::Socket) => socket::describe(fd),
            Some(Class::Mqueue) => mqueue::describe(fd),
            Some(Class::Pidfd) => pidfd::describe(fd, kind),
            Some(Class::IoUring) => format!("{}: {}", fd.link_str(), io_uring::describe(fd)),
            _ => fd.link_str().into_owned(),
        };
        return Err(fd.unsupported(format!("{kind} ({what}): {why}")));
    }
    // The table said the dump records it, so the dump has code for it.
    let class = class.ok_or_else(|| {
        fd.unsupported(format!("{kind} ({}): no dump code for it", fd.link_str()))
    })?;
    if fd.common.has_locks {
        lock::check(fd, kind, given)?;
    }
    match class {
        Class::Reg => reg::check(fd)?,
        Class::Pipe | Class::Fifo => pipe::check(fd)?,
        Class::Socket => socket::check(fd)?,
        Class::Eventfd => anon::check_eventfd(fd)?,
        Class::Inotify => inotify::check(fd)?,
        Class::IoUring => io_uring::check(fd)?,
        _ => {}
    }
    Ok(class)
}

/// The sub-kind of what [`classify`] found, where that takes a closer look: socket
/// family, type and state; deleted files; message queues and /proc/PID files among
/// files reopened by path; packet-mode pipes; semaphore eventfds.
fn refine(fd: &OpenFd<'_>, kind: Kind, class: Option<Class>) -> Result<Kind, FileError> {
    Ok(match class {
        Some(Class::Socket) if socket::foreign_netns(fd)? => Kind::SocketForeignNetns,
        Some(Class::Socket) => socket::kind(fd)?,
        Some(Class::Pipe) if pipe::packet_mode(fd) => Kind::PacketPipe,
        Some(Class::Eventfd) if anon::eventfd_semaphore(fd)? => Kind::EventfdSemaphore,
        Some(Class::Ns { cflag, kid }) => ns::kind(fd.pid, cflag, kid),
        Some(Class::Reg) => match reg::refine(fd, kind)? {
            // An O_PATH descriptor of a file of a mounted mqueue filesystem is only a
            // path, reopened as such.
            Kind::Mqueue if fd.common.flags & libc::O_PATH as u32 != 0 => kind,
            Kind::Mqueue => mqueue::kind(fd)?,
            refined => refined,
        },
        _ => kind,
    })
}

/// The checks before the freeze, with what they need to know of the whole tree: which
/// ptys have their master in it (a slave of such a pty is half of a pair, not a shell
/// job's terminal) and why one of those cannot be dumped.
#[derive(Debug, Clone)]
pub struct TreeChecks {
    given: Given,
    pty_masters: HashSet<u32>,
    /// Why a pty whose master the tree holds cannot be dumped, by pty number.
    pty_problems: HashMap<u32, String>,
    /// Every unix socket the tree holds, by inode, with its peer's inode (0: none)
    /// when sock_diag told it.
    unix_peers: HashMap<u32, u32>,
    /// Some unix socket's queue carries descriptors that the checks could not see
    /// without changing the socket (see `dump/passed.rs`): a socket among them may be
    /// the peer of one of the tree's, so a peer not held by the tree is left to the
    /// frozen stage, which reads every queue.
    unix_queues_unseen: bool,
    /// The tree's tasks (a `/proc/PID` file of one of them is rebuilt).
    pids: HashSet<i32>,
    /// Which unix sockets may have their peer outside the tree (`--ext-unix-sk`).
    external_unix: unix::ExternalUnix,
    /// The tool the network lock of `--tcp-established` runs, when it is not
    /// installed: a connection is then refused before the freeze, not after it.
    missing_lock_tool: Option<&'static str>,
}

impl TreeChecks {
    /// Reads what the checks need from the tasks `pids` (`shell_job` is `-j`), without
    /// changing anything. Best effort: a task or fd that cannot be read is left to
    /// [`TreeChecks::check`], which reports it.
    pub fn new(pids: &[Pid], shell_job: bool) -> TreeChecks {
        let mut pty_masters = HashSet::new();
        let mut ptys = tty::PtySurvey::default();
        let mut unix_peers = HashMap::new();
        let mut unix_queues_unseen = false;
        // One duplicate of a unix socket per network namespace, to read its table by.
        let mut unix_nets: HashMap<u64, File> = HashMap::new();
        for &pid in pids {
            let Ok(proc) = ProcDir::open(pid) else {
                continue;
            };
            let Ok(pidfd) = sys::pidfd_open(pid) else {
                continue;
            };
            let Ok(fds) = proc.list_numbers("fd") else {
                continue;
            };
            for &n in &fds {
                let Ok(Some(fd)) = open_fd(&proc, pidfd.as_fd(), n, &fds) else {
                    continue;
                };
                match classify(&fd.link_str(), &fd.meta, fd.common.flags) {
                    (_, Some(Class::Tty(pty))) => {
                        if let (true, Ok(index)) = (pty.master, tty::pty_index(&fd, pty)) {
                            pty_masters.insert(index);
                            ptys.master(&fd, index);
                        }
                    }
                    (_, Some(Class::Socket)) => {
                        if let Some(netns) = unix::unix_netns(&fd) {
                            unix_peers.insert(fd.meta.ino() as u32, 0);
                            // The sockets its queue carries are the tree's too.
                            let mut carried = HashSet::new();
                            if !passed::passed_sockets(&fd, &mut carried) {
                                unix_queues_unseen = true;
                            }
                            for ino in carried {
                                unix_peers.entry(ino).or_insert(0);
                            }
                            if let Ok(dup) = fd.file.try_clone() {
                                unix_nets.entry(netns).or_insert(dup);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        for sock in unix_nets.values() {
            for (ino, peer) in unix::unix_peers(sock.as_fd()) {
                if let Some(p) = unix_peers.get_mut(&ino) {
                    *p = peer;
                }
            }
        }
        let pids: HashSet<i32> = pids.iter().map(|p| p.0).collect();
        TreeChecks {
            given: Given {
                shell_job,
                ..Given::default()
            },
            pty_masters,
            pty_problems: ptys.problems(&pids),
            unix_peers,
            unix_queues_unseen,
            pids,
            external_unix: unix::ExternalUnix::default(),
            missing_lock_tool: None,
        }
    }

    /// The network lock connections will take (`--network-lock`; not called with
    /// `--tcp-close`, which takes none).
    pub fn set_network_lock(&mut self, method: crate::netlock::LockMethod) {
        self.missing_lock_tool = method
            .tool()
            .filter(|_| !crate::netlock::tool_available(method));
    }

    /// `--ext-unix-sk` (and the sockets it names): which unix sockets connected to a
    /// socket outside the tree are saved, to be connected to its name again.
    pub fn allow_external_unix(&mut self, ext: unix::ExternalUnix) {
        self.external_unix = ext;
    }

    /// `--file-locks`: locks held through the tree's files are accepted (see
    /// `lock.rs`); without it a file with a lock is refused.
    pub fn with_file_locks(mut self, file_locks: bool) -> TreeChecks {
        self.given.file_locks = file_locks;
        self
    }

    /// `--link-remap`: deleted names of files with other names are accepted.
    pub fn with_link_remap(mut self, link_remap: bool) -> TreeChecks {
        self.given.link_remap = link_remap;
        self
    }

    /// `--tcp-established` or `--tcp-close` (`established`), and `--skip-in-flight`:
    /// which TCP sockets the dump may take (see [`FileTable::set_tcp`]).
    pub fn set_tcp(&mut self, established: bool, skip_in_flight: bool) {
        self.given.tcp_established = established;
        self.given.skip_in_flight = skip_in_flight;
    }

    /// Checks every fd of `pid` without changing anything (reads /proc/PID/fd and
    /// fdinfo, and inspects `pidfd_getfd` duplicates); the error names the first fd we
    /// cannot dump, or that the restore could not rebuild (the [`kinds`] table decides).
    /// Called before freezing so a dump refuses before touching the tree.
    pub fn check(&self, pid: Pid) -> Result<(), FileError> {
        let proc = ProcDir::open(pid).map_err(task_io(pid, "open /proc/PID"))?;
        let pidfd = sys::pidfd_open(pid).map_err(task_io(pid, "open a pidfd"))?;
        let fds = proc
            .list_numbers("fd")
            .map_err(task_io(pid, "list /proc/PID/fd"))?;
        let mut looked_into = HashSet::new();
        for &n in &fds {
            if let Some(fd) = open_fd(&proc, pidfd.as_fd(), n, &fds)? {
                if check_fd(&fd, self.given, Some(self), &self.pids)? == Class::Socket
                    && looked_into.insert(fd.meta.ino())
                {
                    self.check_passed(&fd, &mut looked_into)?;
                }
            }
        }
        Ok(())
    }
}

/// Who holds an already dumped open file description.
#[derive(Debug, Clone, Copy)]
struct Holder {
    pid: Pid,
    fd: i32,
    id: u32,
    ty: pb::FdTypes,
}

/// Identity of a file entered by path, for reuse.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PathKey {
    dev: u64,
    ino: u64,
    flags: u32,
    pos: u64,
    /// The path's bytes (a path need not be UTF-8).
    name: Vec<u8>,
}

/// A ring in `files.img`: its id and the lengths of its saved regions.
#[derive(Debug, Clone, Copy)]
pub struct DumpedRing {
    pub id: u32,
    pub rings_len: usize,
    pub sqes_len: usize,
}

/// The id space of `files.img` and everything dumped into it.
pub struct FileTable {
    last_id: u32,
    entries: Vec<pb::FileEntry>,
    /// Dumped open file descriptions by (dev, ino): candidates for kcmp.
    seen: HashMap<(u64, u64), Vec<Holder>>,
    by_path: HashMap<PathKey, u32>,
    pipes: pipe::PipeData,
    sockets: socket::Sockets,
    memfds: memfd::Memfds,
    mqueues: mqueue::Mqueues,
    pub(super) ghosts: ghost::Ghosts,
    ttys: tty::Ttys,
    locks: lock::Locks,
    /// CRIU's namespace ids by (CLONE_NEW* flag, namespace inode).
    ns_ids: HashMap<(u32, u64), u32>,
    /// The dump's options that decide conditional kinds (`-j`).
    given: Given,
    /// See [`FileTable::set_tree_pids`].
    pub(super) tree_pids: HashSet<i32>,
    /// Our copies of the files unix sockets' queues carry (see `dump/passed.rs`).
    passed_files: Vec<File>,
    /// The io_uring rings whose regions are in a memfd a restore made: the memfd's
    /// inode and the ring's id.
    ring_memory: HashMap<u64, u32>,
}

impl Default for FileTable {
    fn default() -> Self {
        Self::new()
    }
}

impl FileTable {
    pub fn new() -> Self {
        FileTable {
            last_id: 0,
            entries: Vec::new(),
            seen: HashMap::new(),
            by_path: HashMap::new(),
            pipes: pipe::PipeData::default(),
            sockets: socket::Sockets::default(),
            memfds: memfd::Memfds::default(),
            mqueues: mqueue::Mqueues::default(),
            ghosts: ghost::Ghosts::new(DEFAULT_GHOST_LIMIT),
            ttys: tty::Ttys::default(),
            locks: lock::Locks::default(),
            ns_ids: HashMap::new(),
            given: Given::default(),
            tree_pids: HashSet::new(),
            passed_files: Vec::new(),
            ring_memory: HashMap::new(),
        }
    }

    /// `-j`/`--shell-job`: a pty slave whose master is outside the dump is the job's
    /// terminal, which the restore replaces with its own; without it such fds are
    /// refused (see [`kinds`]).
    pub fn set_shell_job(&mut self, shell_job: bool) {
        self.given.shell_job = shell_job;
    }

    /// `--ext-unix-sk` (and the sockets it names): which unix sockets connected to a
    /// socket outside the tree are saved (see [`unix::ExternalUnix`]).
    pub fn allow_external_unix(&mut self, ext: unix::ExternalUnix) {
        self.sockets.set_external_unix(ext);
    }

    /// `--file-locks`: the locks held through the tree's files are recorded (see
    /// `lock.rs`); without it a file with a lock is refused.
    pub fn set_file_locks(&mut self, file_locks: bool) {
        self.given.file_locks = file_locks;
    }

    /// The tasks (threads included) of the dumped tree: a `/proc/PID` file of one of them
    /// is recorded, one of any other process refused (see [`kinds`]).
    pub fn set_tree_pids(&mut self, pids: impl IntoIterator<Item = Pid>) {
        self.tree_pids = pids.into_iter().map(|p| p.0).collect();
    }

    /// `--tcp-established` (or `--tcp-close`, with `tcp.close`) and `--skip-in-flight`:
    /// connections are taken in TCP repair mode under the network lock `tcp` names
    /// (or recorded to come back closed), and listeners' connections not accepted yet
    /// are left behind. Without them such sockets are refused (see [`kinds`]).
    pub fn set_tcp(&mut self, established: bool, skip_in_flight: bool, tcp: super::TcpDumpOptions) {
        self.given.tcp_established = established || tcp.close;
        self.given.skip_in_flight = skip_in_flight;
        self.sockets.tcp.set_options(tcp);
    }

    /// The dump is complete and kills its tree: the TCP connections stay in repair mode
    /// and the network stays locked, for the restore to lift (see `tcp.rs`). Without
    /// this, dropping the table takes them out of repair mode and lifts the lock.
    pub fn commit_tcp(&mut self) {
        self.sockets.tcp.commit();
    }

    /// Locks the whole network namespace of `pid` (the tree's own), as CRIU does for
    /// a tree with a network namespace of its own, whether or not it has connections;
    /// its connections then need no lock of their own. Lifted like theirs.
    pub fn lock_network_namespace(&mut self, pid: Pid) -> Result<(), FileError> {
        self.sockets.tcp.lock_namespace(pid)
    }

    /// Largest deleted-but-open file (allocated bytes) saved whole into a ghost image.
    pub fn set_ghost_limit(&mut self, bytes: u64) {
        self.ghosts.limit = bytes;
    }

    /// `--link-remap`: a deleted name of a file that has other names is saved by giving
    /// the file a name of its own next to the old one (see `ghost.rs`); refused without.
    pub fn set_link_remap(&mut self, link_remap: bool) {
        self.given.link_remap = link_remap;
        self.ghosts.link_remap = link_remap;
    }

    /// The dump succeeded: the names given to deleted files stay, for the restore.
    /// Without this, dropping the table removes them again.
    pub fn keep_link_remaps(&mut self) {
        self.ghosts.keep_linked();
    }

    /// Tells the table CRIU's id of a namespace (`cflag` a `CLONE_NEW*` bit, `kid` the
    /// namespace's inode). Open namespace files need it (they are refused when their
    /// namespace has no id); sockets record their network namespace's id when known.
    pub fn set_ns_id(&mut self, cflag: u32, kid: u64, id: u32) {
        self.ns_ids.insert((cflag, kid), id);
    }

    /// Every `files.img` entry so far, in id order of creation.
    pub fn entries(&self) -> &[pb::FileEntry] {
        &self.entries
    }

    /// The memfd inodes met so far (fds and mappings), each once: the memory dumper
    /// saves their contents as shared memory `shmid`.
    pub fn memfds(&self) -> &[MemfdInode] {
        self.memfds.inodes()
    }

    pub(super) fn alloc_id(&mut self) -> u32 {
        self.last_id += 1;
        self.last_id
    }

    pub(super) fn push(&mut self, entry: pb::FileEntry) {
        self.entries.push(entry);
    }

    /// Checks every fd of `pid` without changing anything, as [`TreeChecks::check`] does
    /// for a tree of that one task (`shell_job` is `-j`).
    pub fn check_supported(pid: Pid, shell_job: bool) -> Result<(), FileError> {
        TreeChecks::new(&[pid], shell_job).check(pid)
    }

    /// Dumps every fd of a (stopped) task; returns the entries of its
    /// `fdinfo-<files_id>.img`. Open file descriptions shared between descriptors and
    /// tasks (dup, fork, SCM_RIGHTS) get one `files.img` id, found with kcmp.
    pub fn dump_task_fds(&mut self, pid: Pid) -> Result<Vec<pb::FdinfoEntry>, FileError> {
        let proc = ProcDir::open(pid).map_err(task_io(pid, "open /proc/PID"))?;
        let pidfd = sys::pidfd_open(pid).map_err(task_io(pid, "open a pidfd"))?;
        let fds = proc
            .list_numbers("fd")
            .map_err(task_io(pid, "list /proc/PID/fd"))?;
        let mut out = Vec::with_capacity(fds.len());
        for &n in &fds {
            let fd = open_fd(&proc, pidfd.as_fd(), n, &fds)?.ok_or_else(|| FileError::Io {
                pid,
                fd: n,
                what: "the fd was closed while the task was stopped",
                source: io::Error::from_raw_os_error(libc::EBADF),
            })?;
            // Pty slaves are judged by `check_complete`, which knows every master.
            let class = check_fd(&fd, self.given, None, &self.tree_pids)?;
            let shared = self.find_shared(&fd)?;
            let (id, ty) = match shared {
                Some(h) => (h.id, h.ty),
                None => {
                    let (id, ty) = self.dump_new(&fd, class)?;
                    let key = (fd.meta.dev(), fd.meta.ino());
                    self.seen
                        .entry(key)
                        .or_default()
                        .push(Holder { pid, fd: n, id, ty });
                    (id, ty)
                }
            };
            if fd.common.has_locks {
                self.locks.note(&fd, id, shared.is_none())?;
            }
            out.push(pb::FdinfoEntry {
                id,
                flags: if fd.common.cloexec {
                    libc::FD_CLOEXEC as u32
                } else {
                    0
                },
                r#type: ty as i32,
                fd: n as u32,
                xattr_security_selinux: None,
            });
        }
        self.dump_passed()?;
        Ok(out)
    }

    /// The dumped open file descriptions of the file whose inode is `ino`.
    fn holders_of_inode(&self, ino: u64) -> impl Iterator<Item = &Holder> {
        self.seen
            .iter()
            .filter(move |((_, i), _)| *i == ino)
            .flat_map(|(_, holders)| holders)
    }

    /// The id of the dumped packet socket whose inode is `ino` (a mapped ring's socket).
    pub fn packet_socket_id(&self, ino: u64) -> Option<u32> {
        self.holders_of_inode(ino)
            .find(|h| h.ty == pb::FdTypes::Packetsk)
            .map(|h| h.id)
    }

    /// The dumped io_uring ring whose inode is `ino` (a mapped region's ring), or, with
    /// `in_memory`, whose regions are in the memfd whose inode is `ino` (a ring a
    /// restore made).
    pub fn io_uring_ring(&self, ino: u64, in_memory: bool) -> Option<DumpedRing> {
        let ring = |id: u32| {
            let entry = self.entries.iter().find(|e| e.id == id)?;
            let ring = entry.ext.as_ref()?.io_uring.as_ref()?;
            Some(DumpedRing {
                id,
                rings_len: ring.rings.len(),
                sqes_len: ring.sqes.len(),
            })
        };
        if in_memory {
            self.ring_memory.get(&ino).and_then(|&id| ring(id))
        } else {
            self.holders_of_inode(ino).find_map(|h| ring(h.id))
        }
    }

    /// The id of an already dumped open file description that `fd` also refers to.
    fn find_shared(&self, fd: &OpenFd<'_>) -> Result<Option<Holder>, FileError> {
        let Some(holders) = self.seen.get(&(fd.meta.dev(), fd.meta.ino())) else {
            return Ok(None);
        };
        for h in holders {
            match sys::kcmp_same_file(fd.pid, fd.fd, h.pid, h.fd) {
                Ok(true) => return Ok(Some(*h)),
                Ok(false) => {}
                // The other holder is gone (a task that exited, in tests): not shared.
                Err(e)
                    if e.raw_os_error() == Some(libc::ESRCH)
                        || e.raw_os_error() == Some(libc::EBADF) => {}
                Err(e) => return Err(fd.io("compare open files (kcmp)")(e)),
            }
        }
        Ok(None)
    }

    /// Dumps an open file description met for the first time; returns its id and type.
    fn dump_new(&mut self, fd: &OpenFd<'_>, class: Class) -> Result<(u32, pb::FdTypes), FileError> {
        let id = self.alloc_id();
        let mut ty = class.fd_type();
        match class {
            Class::Reg => {
                let reg = reg::from_fd(self, fd, id, true)?;
                self.push(file_entry(pb::FdTypes::Reg, id, |e| e.reg = Some(reg)));
            }
            Class::Pipe => {
                let pipe = pipe::dump_pipe(&mut self.pipes, fd, id)?;
                self.push(file_entry(ty, id, |e| e.pipe = Some(pipe)));
            }
            Class::Fifo => {
                let regf_id = self.alloc_id();
                let reg = reg::from_fd(self, fd, regf_id, true)?;
                self.push(file_entry(pb::FdTypes::Reg, regf_id, |e| e.reg = Some(reg)));
                let fifo = pipe::dump_fifo(&mut self.pipes, fd, id, regf_id)?;
                self.push(file_entry(ty, id, |e| e.fifo = Some(fifo)));
            }
            Class::Socket => {
                let net_ids: HashMap<u64, u32> = self
                    .ns_ids
                    .iter()
                    .filter(|((cflag, _), _)| *cflag == libc::CLONE_NEWNET as u32)
                    .map(|((_, kid), id)| (*kid, *id))
                    .collect();
                let entry = self.sockets.dump(fd, id, &net_ids)?;
                ty = pb::FdTypes::try_from(entry.r#type).unwrap_or(pb::FdTypes::Unixsk);
                self.push(entry);
            }
            Class::Eventfd => {
                let efd = anon::eventfd(fd, id)?;
                self.push(file_entry(ty, id, |e| e.efd = Some(efd)));
            }
            Class::Eventpoll => {
                let epfd = anon::eventpoll(fd, id)?;
                self.push(file_entry(ty, id, |e| e.epfd = Some(epfd)));
            }
            Class::Signalfd => {
                let sgfd = anon::signalfd(fd, id)?;
                self.push(file_entry(ty, id, |e| e.sgfd = Some(sgfd)));
            }
            Class::Timerfd => {
                let tfd = anon::timerfd(fd, id)?;
                self.push(file_entry(ty, id, |e| e.tfd = Some(tfd)));
            }
            Class::Inotify => {
                let ify = inotify::dump(fd, id)?;
                self.push(file_entry(ty, id, |e| e.ify = Some(ify)));
            }
            Class::Fanotify => {
                let ffy = fanotify::dump(fd, id)?;
                self.push(file_entry(ty, id, |e| e.ffy = Some(ffy)));
            }
            Class::Memfd => {
                let memfd = self.memfds.dump_fd(fd, id)?;
                self.push(file_entry(ty, id, |e| e.memfd = Some(memfd)));
            }
            Class::Ns { cflag, kid } => {
                let nsf = ns::dump(fd, id, cflag, kid, &self.ns_ids)?;
                self.push(file_entry(ty, id, |e| e.nsf = Some(nsf)));
            }
            Class::Tty(pty) => {
                let regf_id = self.alloc_id();
                let reg = reg::from_fd(self, fd, regf_id, false)?;
                self.push(file_entry(pb::FdTypes::Reg, regf_id, |e| e.reg = Some(reg)));
                let tty = self.ttys.dump(fd, pty, id, regf_id)?;
                self.push(file_entry(ty, id, |e| e.tty = Some(tty)));
            }
            Class::Mqueue => {
                let ipc_ns_id = self.ipc_ns_id(fd.pid);
                let entry = self.mqueues.dump_fd(fd, id, ipc_ns_id)?;
                self.push(entry);
            }
            Class::SimpleTty(which) => {
                let regf_id = self.alloc_id();
                let reg = reg::from_fd(self, fd, regf_id, false)?;
                self.push(file_entry(pb::FdTypes::Reg, regf_id, |e| e.reg = Some(reg)));
                let tty = self.ttys.dump_simple(fd, which, id, regf_id)?;
                self.push(file_entry(ty, id, |e| e.tty = Some(tty)));
            }
            Class::DevTty => {
                let regf_id = self.alloc_id();
                let reg = reg::from_fd(self, fd, regf_id, false)?;
                self.push(file_entry(pb::FdTypes::Reg, regf_id, |e| e.reg = Some(reg)));
                let tty = self.ttys.dump_dev_tty(fd, id, regf_id)?;
                self.push(file_entry(ty, id, |e| e.tty = Some(tty)));
            }
            Class::Pidfd => {
                let entry = pidfd::dump(fd, id)?;
                self.push(file_entry(ty, id, |e| e.pidfd = Some(entry)));
            }
            Class::IoUring => {
                let (entry, memory) = io_uring::dump(fd, id)?;
                if let Some(ino) = memory {
                    self.ring_memory.insert(ino, id);
                }
                self.push(entry);
            }
        }
        Ok((id, ty))
    }

    /// A regular file entry for a path (cwd, root, exe, a file-backed mapping) of task
    /// `task`; returns
    /// its `files.img` id. `file` is an fd open on it when the caller has one (for
    /// example from `/proc/PID/map_files/...`): it is used for stat, and to save the
    /// contents of a deleted file. Entries for the same inode, name, flags and position
    /// are reused.
    pub fn reg_file(
        &mut self,
        task: Pid,
        path: &Path,
        file: Option<BorrowedFd<'_>>,
        flags: u32,
        pos: u64,
    ) -> Result<u32, FileError> {
        let meta = match file {
            Some(f) => {
                let dup = f
                    .try_clone_to_owned()
                    .map_err(path_io(path, "duplicate the fd"))?;
                File::from(dup).metadata()
            }
            None => std::fs::metadata(path),
        }
        .map_err(path_io(path, "stat"))?;
        let key = PathKey {
            dev: meta.dev(),
            ino: meta.ino(),
            flags,
            pos,
            name: path.as_os_str().as_bytes().to_vec(),
        };
        if let Some(&id) = self.by_path.get(&key) {
            return Ok(id);
        }
        let id = self.alloc_id();
        let reg = reg::from_path(self, task, path, file, &meta, id, flags, pos)?;
        self.push(file_entry(pb::FdTypes::Reg, id, |e| e.reg = Some(reg)));
        self.by_path.insert(key, id);
        Ok(id)
    }

    /// A memfd (or shared anonymous memory) entry for a mapping: `file` is the mapped
    /// object (from `/proc/PID/map_files/...`), `link` what `/proc/PID/maps` names it
    /// (`/memfd:NAME (deleted)`, `/dev/zero (deleted)`). Returns the `files.img` id; the
    /// inode joins [`FileTable::memfds`].
    pub fn memfd_file(
        &mut self,
        link: &Path,
        file: BorrowedFd<'_>,
        flags: u32,
        pos: u64,
    ) -> Result<u32, FileError> {
        let id = self.alloc_id();
        let memfd = self.memfds.dump_mapping(link, file, id, flags, pos)?;
        self.push(file_entry(pb::FdTypes::Memfd, id, |e| {
            e.memfd = Some(memfd)
        }));
        Ok(id)
    }

    /// CRIU's id of `pid`'s IPC namespace (0 when it was not told: [`set_ns_id`]).
    ///
    /// [`set_ns_id`]: FileTable::set_ns_id
    fn ipc_ns_id(&self, pid: Pid) -> u32 {
        std::fs::metadata(format!("/proc/{}/ns/ipc", pid.0))
            .ok()
            .and_then(|m| {
                self.ns_ids
                    .get(&(libc::CLONE_NEWIPC as u32, m.ino()))
                    .copied()
            })
            .unwrap_or(0)
    }

    /// Saves the message queues of `pid`'s IPC namespace that no descriptor holds: for
    /// a tree with an IPC namespace of its own, which the restore makes anew. Call
    /// once every task's descriptors are dumped.
    pub fn dump_mqueue_namespace(&mut self, pid: Pid) -> Result<(), FileError> {
        let ipc_ns_id = self.ipc_ns_id(pid);
        self.mqueues.dump_namespace(pid, ipc_ns_id)
    }

    /// Reads out the data queued in the tree's ptys (both ends in the dump), for
    /// `tty-data.img`; the guard puts it back when it drops, unless told the tree is
    /// killed ([`TtyRefill::keep`]). Call with the tree frozen, once every task is dumped.
    pub fn drain_tty_queues(&mut self) -> Result<TtyRefill, FileError> {
        self.ttys.drain()
    }

    /// Checks what can only be checked once every task is dumped: each connected unix
    /// socket's peer must be in the dump too, and a pty slave whose master is in the
    /// dump is a pty pair (its own row in [`kinds`]).
    pub fn check_complete(&self) -> Result<(), FileError> {
        self.sockets.check_peers()?;
        self.ttys.check_pairs(self.given)
    }

    /// Writes `files.img` and every side image that has entries (`pipes-data.img`,
    /// `fifo-data.img`, `sk-queues.img`, `memfd.img`, `remap-fpath.img`,
    /// `ghost-file-N.img`, `tty-info.img`) into `dir`, after [`check_complete`].
    ///
    /// [`check_complete`]: FileTable::check_complete
    pub fn write_images(&self, dir: &Path) -> Result<(), FileError> {
        self.write_images_numbered(dir, &|p| p.0 as u32)
    }

    /// [`write_images`](FileTable::write_images) for a tree in a pid namespace of its
    /// own: `vpid` gives a task's number in it (terminals record sessions and groups).
    pub fn write_images_numbered(
        &self,
        dir: &Path,
        vpid: &dyn Fn(Pid) -> u32,
    ) -> Result<(), FileError> {
        self.check_complete()?;
        let mut files = writer(dir, "FILES", "")?;
        // The peers outside the tree of the unix sockets allowed one, with ids past the
        // last, each just before the first socket connected to it: CRIU's restore finds
        // a socket's peer among the entries read before it (its own dump writes them in
        // that order).
        let mut externals = self.sockets.external_unix_peers(self.last_id + 1);
        for e in &self.entries {
            let peer = e.usk.as_ref().map_or(0, |u| u.peer);
            if let Some(i) = externals
                .iter()
                .position(|x| peer != 0 && x.usk.as_ref().is_some_and(|u| u.ino == peer))
            {
                files.write_entry(&externals.swap_remove(i))?;
            }
            files.write_entry(e)?;
        }
        for e in &externals {
            files.write_entry(e)?;
        }
        files.finish()?;
        self.pipes.write(dir)?;
        self.sockets.write(dir)?;
        self.memfds.write(dir)?;
        self.ghosts.write(dir)?;
        self.ttys.write(dir, vpid)?;
        self.mqueues.write(dir)?;
        Ok(())
    }
}

impl FileTable {
    /// Writes `filelocks.img` when the tree holds locks (recorded with `--file-locks`);
    /// `vpid` gives the number a task of the tree has inside its pid namespace.
    pub fn write_locks(&self, dir: &Path, vpid: impl Fn(Pid) -> u32) -> Result<(), FileError> {
        self.locks.write(dir, vpid)
    }
}

/// A `file_entry` of `ty` with `id`; `fill` sets the kind's member.
pub(super) fn file_entry(
    ty: pb::FdTypes,
    id: u32,
    fill: impl FnOnce(&mut pb::FileEntry),
) -> pb::FileEntry {
    let mut e = pb::FileEntry {
        r#type: ty as i32,
        id,
        ..Default::default()
    };
    fill(&mut e);
    e
}

/// The image kind named `name` (a fixed table; a missing name is a programming error).
pub(super) fn kind(name: &str) -> &'static ImageKind {
    ImageKind::by_name(name).unwrap_or_else(|| panic!("image kind {name} is in the kind table"))
}

/// Creates the image `name` (for `id`, when its file name has one) in `dir`.
pub(super) fn writer(
    dir: &Path,
    name: &str,
    id: impl std::fmt::Display,
) -> Result<ImageWriter<std::io::BufWriter<File>>, FileError> {
    let k = kind(name);
    Ok(ImageWriter::create(dir.join(k.file_name(id)), k)?)
}

/// `/proc/self/fd/N` of one of our own descriptors: reopening it gives a new open file
/// description on the same file (deleted files included).
pub(super) fn self_fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

mod passed;

#[cfg(test)]
#[path = "dump_tests/mod.rs"]
mod tests;
