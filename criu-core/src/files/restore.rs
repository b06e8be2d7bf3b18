//! Rebuilding open files on restore.
//!
//! The restorer creates every open file description itself and keeps it, keyed by its
//! `files.img` id; each task then takes a duplicate (`pidfd_getfd`) and puts it at its
//! old number. One id is one open file description: asking for it again gives the same
//! one, so descriptors shared by dup, fork or SCM_RIGHTS are shared again, and data put
//! back into a pipe or a socket is put back once.
//!
//! What each kind gets back:
//! - regular files, directories, devices and `O_PATH` references: reopened by path with
//!   the saved flags and position; a file whose size changed since the dump is refused.
//!   Deleted files are recreated from their ghost image (at their old path when it is
//!   free, so the link reads `PATH (deleted)` again), opened, and unlinked.
//! - pipes: one `pipe(2)` per pipe, both ends from it, its size and its data; FIFOs are
//!   opened by path behind a read-write keeper (so no open blocks), with their data.
//! - unix sockets: socket pairs (both ends from one `socketpair(2)`), dgram sockets
//!   connected to a named one, listeners, bound names (paths, relative paths in their
//!   directory, abstract names, and names whose file was deleted: bound in directories
//!   made for the while, then unlinked, and reached by their peers through the file
//!   held open), a connection not accepted yet (its client connected to the listener
//!   again), shutdown state, options, and their queued data, sent again from the peer
//!   so message boundaries are kept.
//! - TCP listeners and unconnected TCP sockets, UDP sockets (bound, connected), IPv4 and
//!   IPv6, with their options.
//! - eventfd (counter), signalfd (mask), timerfd (clock, remaining time, interval,
//!   expirations not read yet), inotify (each watch on the same inode, by file handle,
//!   with the same watch descriptor), epoll (the instance; its interest list must be
//!   registered inside the task, see [`FileOpener::epoll_items`]), memfd (name,
//!   contents, size, owner, mode, seals), namespace files of the restorer's own
//!   namespaces.
//!
//! What it refuses (in [`FileOpener::check`], before any task exists): every kind the
//! kind table ([`kinds`], which the dump's checks read too) says it does not rebuild
//! (terminals other than a shell job's, established TCP connections, files of other
//! kinds CRIU knows: fanotify, netlink, packet sockets, tun, bpf maps, pidfds...), and
//! states the table leaves to the code: sockets connected to a peer outside the dump,
//! namespace files of a namespace the restorer is not in. Mappings are judged by the
//! same table ([`mapping_refusal`]).
//!
//! Keep the [`FileOpener`] until every task holds its descriptors, then drop it: it
//! holds the other ends of pipes and FIFOs too, so a reader sees end-of-file only once
//! it is gone.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use criu_images::{pb, ImageReader};

use super::kinds::{self, Given, Kind};
use super::{anon, memfd, pipe, reg, tty};
use crate::sys::{self, Pid};

pub use super::anon::EpollItem;

/// The file an error is about: its `files.img` id, its kind, and the task's descriptor
/// number when one is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    pub id: u32,
    pub kind: &'static str,
    pub fd: Option<u32>,
}

impl fmt::Display for FileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.fd {
            Some(fd) => write!(f, "fd {fd} ({} file {})", self.kind, self.id),
            None => write!(f, "{} file {}", self.kind, self.id),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FileRestoreError {
    #[error(transparent)]
    Image(#[from] criu_images::Error),
    /// An image that is inconsistent: a missing entry, a wrong length, a duplicate.
    #[error("{image}: {what}")]
    BadImage { image: String, what: String },
    /// Found by [`FileOpener::check`]: a descriptor this restore cannot rebuild.
    #[error("task {pid} {file}: cannot restore {what}")]
    Unsupported {
        pid: Pid,
        file: FileRef,
        what: String,
    },
    /// Found while opening: something this restore cannot rebuild.
    #[error("{file}: cannot restore {what}")]
    Refused { file: FileRef, what: String },
    /// A file that is not what it was at dump time (gone, or another size).
    #[error("{file}: {what}")]
    Changed { file: FileRef, what: String },
    #[error("{file}: {what}")]
    Io {
        file: FileRef,
        what: String,
        #[source]
        source: io::Error,
    },
}

/// The restore's results. The error type has a default so that the kind modules, which
/// hold dump code too, can name both: `Result<T>` on restore, `Result<T, FileError>` on
/// dump.
pub(super) type Result<T, E = FileRestoreError> = std::result::Result<T, E>;

pub(super) fn bad(image: &str, what: impl Into<String>) -> FileRestoreError {
    FileRestoreError::BadImage {
        image: image.to_owned(),
        what: what.into(),
    }
}

impl FileRef {
    pub(super) fn io(&self, what: impl Into<String>) -> impl FnOnce(io::Error) -> FileRestoreError {
        let file = self.clone();
        let what = what.into();
        move |source| FileRestoreError::Io { file, what, source }
    }

    pub(super) fn refused(&self, what: impl Into<String>) -> FileRestoreError {
        FileRestoreError::Refused {
            file: self.clone(),
            what: what.into(),
        }
    }

    pub(super) fn changed(&self, what: impl Into<String>) -> FileRestoreError {
        FileRestoreError::Changed {
            file: self.clone(),
            what: what.into(),
        }
    }

    pub(super) fn unsupported(&self, pid: Pid, what: impl Into<String>) -> FileRestoreError {
        FileRestoreError::Unsupported {
            pid,
            file: self.clone(),
            what: what.into(),
        }
    }
}

/// CRIU's name of a file kind (`REG`, `PIPE`, `UNIXSK`...).
pub(super) fn kind_name(ty: i32) -> &'static str {
    pb::FdTypes::try_from(ty).map_or("UNKNOWN", |t| t.as_str_name())
}

/// File status flags that `F_SETFL` can change.
pub(super) const SETFL_MASK: u32 =
    (libc::O_APPEND | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME) as u32;

/// The flags to reopen a file with: what `open(2)` keeps in the open file description,
/// without the flags that would create or truncate it.
///
/// A file made with `O_TMPFILE` keeps that flag (`__O_TMPFILE | O_DIRECTORY`) in its open
/// file description; it is restored from its ghost file as a plain file, so it goes too.
pub(super) fn open_flags(flags: u32) -> i32 {
    let mut flags =
        flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32);
    if flags & libc::O_TMPFILE as u32 == libc::O_TMPFILE as u32 {
        flags &= !(libc::O_TMPFILE as u32);
    }
    flags as i32
}

// TCP states, as sock_diag numbers them (unix sockets borrow them).
const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;

const SO_BUF_LOCK: i32 = 72;
/// Opens a unix socket's bound file with `O_PATH` (linux/sockios.h, SIOCPROTOPRIVATE).
const SIOCUNIXFILE: libc::c_ulong = 0x89e0;

/// A queued socket packet: its entry and its bytes.
type Packet = (pb::SkPacketEntry, Vec<u8>);

/// Rebuilds the open files of a dump, each open file description once.
pub struct FileOpener {
    pub(super) dir: PathBuf,
    pub(super) files: HashMap<u32, pb::FileEntry>,
    /// Queued packets by the id of the socket they wait in, in order.
    pub(super) queues: HashMap<u32, Vec<Packet>>,
    pub(super) ttys: tty::RestoreState,
    /// The dumper's own namespace ids (the inventory's `root_ids`).
    pub(super) root_ids: Option<pb::TaskKobjIdsEntry>,
    /// Unix sockets' file ids by inode.
    pub(super) unix_by_ino: HashMap<u32, u32>,

    /// Finished open file descriptions, by file id.
    pub(super) given: HashMap<u32, OwnedFd>,
    pub(super) pipes: pipe::RestoreState,
    pub(super) reg: reg::RestoreState,
    pub(super) memfds: memfd::RestoreState,
    /// Unix sockets created and bound, not connected or filled yet.
    pub(super) unix_pending: HashMap<u32, OwnedFd>,
    /// `O_PATH` descriptors of the files of unix sockets bound to a name whose file was
    /// deleted (by socket file id): the one way left to reach such a socket.
    pub(super) unix_ghosts: HashMap<u32, OwnedFd>,
    /// Epoll instances whose items were handed out.
    pub(super) epolls_listed: HashSet<u32>,
    pub(super) shell_job: bool,
    /// The network namespace of the tree, which it joins on restore (its sockets are
    /// created there, not in ours).
    pub(super) tree_net_ns: Option<u32>,
}

/// What [`FileOpener::open`] says of a kind it has no code for.
pub(super) const NO_OPENER: &str = "(no code opens it)";

/// The row of the kind table (see [`kinds`]) of a mapping, from its status bits and,
/// for file mappings, the file it maps (`files`: every `files.img` entry by id).
pub fn mapping_kind(files: &HashMap<u32, pb::FileEntry>, vma: &pb::VmaEntry) -> Kind {
    use criu_images::flags::vma::{
        VMA_ANON_PRIVATE, VMA_ANON_SHARED, VMA_AREA_MEMFD, VMA_AREA_SYSVIPC, VMA_AREA_VDSO,
        VMA_AREA_VSYSCALL, VMA_AREA_VVAR, VMA_FILE_PRIVATE, VMA_FILE_SHARED,
    };
    let st = vma.status;
    if st & VMA_AREA_SYSVIPC != 0 {
        Kind::MapSysvShm
    } else if st & VMA_AREA_VDSO != 0 {
        Kind::MapVdso
    } else if st & VMA_AREA_VVAR != 0 {
        Kind::MapVvar
    } else if st & VMA_AREA_VSYSCALL != 0 {
        Kind::MapVsyscall
    } else if st & VMA_AREA_MEMFD != 0 {
        Kind::MapMemfd
    } else if st & VMA_ANON_SHARED != 0 {
        Kind::MapAnonShared
    } else if st & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 {
        let reg = files.get(&(vma.shmid as u32)).and_then(|f| f.reg.as_ref());
        let device = reg.is_some_and(|r| {
            let fmt = r.mode.unwrap_or(0) & libc::S_IFMT;
            (fmt == libc::S_IFCHR && r.name != b"/dev/zero") || fmt == libc::S_IFBLK
        });
        if device {
            Kind::MapDevice
        } else if st & VMA_FILE_SHARED != 0 {
            Kind::MapFileShared
        } else {
            Kind::MapFilePrivate
        }
    } else if st & VMA_ANON_PRIVATE != 0 {
        Kind::MapAnonPrivate
    } else {
        Kind::MapOther
    }
}

/// Why the restore cannot map `vma` again (`None`: it can), as the kind table says.
pub fn mapping_refusal(files: &HashMap<u32, pb::FileEntry>, vma: &pb::VmaEntry) -> Option<String> {
    let kind = mapping_kind(files, vma);
    let why = kind.restore_refusal(Given::default())?;
    Some(format!(
        "{kind} at {:#x}-{:#x} (status {:#x}): {why}",
        vma.start, vma.end, vma.status
    ))
}

/// Every entry of an image.
pub(super) fn read_entries<M: prost::Message + Default>(path: &Path) -> Result<Vec<M>> {
    let mut r = ImageReader::open(path)?;
    let mut out = Vec::new();
    while let Some(e) = r.next_entry::<M>()? {
        out.push(e);
    }
    Ok(out)
}

/// `dir/name` if it exists: the side images are only written when they have entries.
pub(super) fn optional(dir: &Path, name: &str) -> Option<PathBuf> {
    let path = dir.join(name);
    std::fs::symlink_metadata(&path).is_ok().then_some(path)
}

/// `sk-queues.img`: each packet entry is followed by its bytes.
fn read_queues(dir: &Path) -> Result<HashMap<u32, Vec<Packet>>> {
    let mut out: HashMap<u32, Vec<_>> = HashMap::new();
    let Some(path) = optional(dir, "sk-queues.img") else {
        return Ok(out);
    };
    let mut r = ImageReader::open(&path)?;
    while let Some(e) = r.next_entry::<pb::SkPacketEntry>()? {
        let data = r.read_extra(e.length.into(), "queued socket data")?;
        out.entry(e.id_for).or_default().push((e, data));
    }
    Ok(out)
}

impl FileOpener {
    /// Loads `files.img` and the side images (pipes-data, fifo-data, sk-queues,
    /// memfd.img, remap-fpath, tty-info, and the inventory's namespace ids) from `dir`.
    /// Ghost files and memfd contents are read when their file is opened.
    pub fn load(dir: &Path) -> Result<FileOpener> {
        let mut files = HashMap::new();
        for f in read_entries::<pb::FileEntry>(&dir.join("files.img"))? {
            let id = f.id;
            if files.insert(id, f).is_some() {
                return Err(bad("files.img", format!("has file {id} twice")));
            }
        }
        let mut unix_by_ino = HashMap::new();
        for f in files.values() {
            if let Some(u) = &f.usk {
                if unix_by_ino.insert(u.ino, f.id).is_some() {
                    return Err(bad(
                        "files.img",
                        format!("has unix socket inode {} twice", u.ino),
                    ));
                }
            }
        }
        let memfds = memfd::RestoreState::load(dir)?;
        let reg = reg::RestoreState::load(dir)?;
        let ttys = tty::RestoreState::load(dir)?;
        let root_ids = match optional(dir, "inventory.img") {
            Some(path) => read_entries::<pb::InventoryEntry>(&path)?
                .into_iter()
                .next()
                .and_then(|i| i.root_ids),
            None => None,
        };
        let pipes = pipe::RestoreState::load(dir)?;
        Ok(FileOpener {
            dir: dir.to_owned(),
            files,
            queues: read_queues(dir)?,
            ttys,
            root_ids,
            unix_by_ino,
            given: HashMap::new(),
            pipes,
            reg,
            memfds,
            unix_pending: HashMap::new(),
            unix_ghosts: HashMap::new(),
            epolls_listed: HashSet::new(),
            shell_job: false,
            tree_net_ns: None,
        })
    }

    /// The dumper's own namespace ids (the inventory's `root_ids`), if the images say.
    pub fn root_ids(&self) -> Option<&pb::TaskKobjIdsEntry> {
        self.root_ids.as_ref()
    }

    /// `--root`: the tree's paths are looked up under `root`.
    pub fn set_root(&mut self, root: Option<PathBuf>) {
        self.reg.root = root;
    }

    /// `--inherit-fd fd[N]:KEY`: the dumped file named `key` is our fd `fd` (taken as a
    /// duplicate; the caller keeps its own).
    pub fn inherit(&mut self, key: &str, fd: i32) -> Result<()> {
        let file = FileRef {
            id: 0,
            kind: "inherited",
            fd: Some(fd as u32),
        };
        let dup = sys::dup_fd(fd).map_err(file.io(format!("take inherited fd {fd} for {key}")))?;
        self.reg.inherited.insert(key.as_bytes().to_vec(), dup);
        Ok(())
    }

    /// Sockets of network namespace `ns` are accepted: the tree joins it on restore and
    /// the restorer creates them inside it.
    pub fn accept_net_ns(&mut self, ns: Option<u32>) {
        self.tree_net_ns = ns;
    }

    /// The tasks of the tree (image pid -> our pid; the same numbers unless the tree has
    /// a pid namespace of its own): files under `/proc/PID` of one of them are not
    /// checked before the tree exists, and are opened in our `/proc` under our pid.
    pub fn set_tree_pids(&mut self, pids: impl IntoIterator<Item = (i32, i32)>) {
        self.reg.tree_pids = pids.into_iter().collect();
    }

    /// `--shell-job`, as CRIU does it: the job's terminal (a pty slave whose master is not
    /// in the dump) is replaced by `terminal`, the restorer's own (None when the
    /// restorer has no terminal: such a job is then refused).
    pub fn inherit_terminal(&mut self, terminal: Option<OwnedFd>) {
        self.shell_job = true;
        self.ttys.inherited_terminal = terminal;
    }

    /// The row of the kind table (see [`kinds`]) of a file entry, and what to call it in
    /// messages; `Err` for an inconsistent image.
    fn file_kind(&self, file: &pb::FileEntry) -> Result<(Kind, String)> {
        use pb::FdTypes as T;
        let id = file.id;
        let ty = T::try_from(file.r#type).unwrap_or(T::Und);
        Ok(match ty {
            T::Reg => self.reg_kind(self.member(id, |f| f.reg.as_ref())?),
            T::Pipe => pipe::pipe_kind(self.member(id, |f| f.pipe.as_ref())?),
            T::Fifo => (Kind::Fifo, format!("file {id}")),
            T::Unixsk => {
                let ue = self.member(id, |f| f.usk.as_ref())?;
                let netns = self.same_netns(ue.ns_id);
                let queued = self.queues.get(&id).is_some_and(|q| !q.is_empty());
                let stream_like = ue.r#type as i32 != libc::SOCK_DGRAM;
                let orphan = queued
                    && kinds::unix_orphan_with_data(
                        ue.peer,
                        ue.state,
                        stream_like,
                        ue.name.is_empty(),
                    );
                let kind = match ue.r#type as i32 {
                    _ if netns.is_err() => Kind::SocketForeignNetns,
                    _ if ue.peer != 0 && !self.unix_by_ino.contains_key(&ue.peer) => {
                        Kind::UnixPeerOutside
                    }
                    _ if orphan => Kind::UnixOrphanQueued,
                    libc::SOCK_STREAM => Kind::UnixStream,
                    libc::SOCK_DGRAM => Kind::UnixDgram,
                    libc::SOCK_SEQPACKET => Kind::UnixSeqpacket,
                    _ => Kind::UnixOther,
                };
                let mut what = format!("{} {}", ue.ino, show_unix_name(&ue.name));
                if kind == Kind::UnixPeerOutside {
                    what = format!("{what} connected to socket {} outside the dump", ue.peer);
                }
                if let Err(why) = netns {
                    what = format!("{what}: {why}");
                }
                (kind, what)
            }
            T::Inetsk => {
                let ie = self.member(id, |f| f.isk.as_ref())?;
                let family = ie.family as i32;
                let netns = self.same_netns(ie.ns_id);
                let src = show_inet(family, &ie.src_addr, ie.src_port);
                let dst = show_inet(family, &ie.dst_addr, ie.dst_port);
                let kind = match (family, ie.r#type as i32, ie.proto as i32) {
                    _ if netns.is_err() => Kind::SocketForeignNetns,
                    (f, _, _) if f != libc::AF_INET && f != libc::AF_INET6 => Kind::OtherSocket,
                    (_, libc::SOCK_STREAM, libc::IPPROTO_TCP) => match ie.state {
                        TCP_LISTEN => Kind::TcpListen,
                        TCP_CLOSE => Kind::TcpClosed,
                        _ => Kind::TcpConnected,
                    },
                    (_, libc::SOCK_DGRAM, libc::IPPROTO_UDP) => Kind::Udp,
                    (_, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) => Kind::UdpLite,
                    (_, libc::SOCK_RAW, _) => Kind::InetRaw,
                    _ => Kind::InetOther,
                };
                let mut what = format!(
                    "family {family}, type {}, protocol {}, state {}, {src} -> {dst}",
                    ie.r#type, ie.proto, ie.state
                );
                if let Err(why) = netns {
                    what = format!("{what}: {why}");
                }
                (kind, what)
            }
            T::Eventfd => (Kind::Eventfd, format!("file {id}")),
            T::Eventpoll => (Kind::Eventpoll, format!("file {id}")),
            T::Signalfd => (Kind::Signalfd, format!("file {id}")),
            T::Timerfd => (Kind::Timerfd, format!("file {id}")),
            T::Inotify => (Kind::Inotify, format!("file {id}")),
            T::Memfd => (Kind::Memfd, format!("file {id}")),
            T::Ns => self.ns_kind(self.member(id, |f| f.nsf.as_ref())?),
            T::Tty => {
                let tty = self.member(id, |f| f.tty.as_ref())?;
                self.tty_kind(tty)
                    .map_err(|what| bad("tty-info.img", what))?
            }
            T::Fanotify => (Kind::Fanotify, format!("file {id}")),
            T::Netlinksk => (Kind::Netlink, format!("file {id}")),
            T::Packetsk => (Kind::Packet, format!("file {id}")),
            T::Tunf => (Kind::Tun, format!("file {id}")),
            T::Bpfmap => (Kind::Bpf, format!("file {id}")),
            T::Pidfd => (Kind::Pidfd, format!("file {id}")),
            T::Und | T::Ext | T::CtlTty | T::AutofsPipe => {
                (Kind::OtherFile, format!("{} file {id}", ty.as_str_name()))
            }
        })
    }

    /// Refuses, as the kind table says, a file of a kind this restore does not rebuild
    /// (with the options it was given).
    fn check_kind(&self, pid: Pid, at: &FileRef, file: &pb::FileEntry) -> Result<()> {
        let (kind, what) = self.file_kind(file)?;
        let inherit_fd = file
            .reg
            .as_ref()
            .is_some_and(|r| self.reg.inherited.contains_key(&r.name));
        let given = Given {
            shell_job: self.shell_job,
            inherit_fd,
        };
        match kind.restore_refusal(given) {
            Some(why) => Err(at.unsupported(pid, format!("{kind} ({what}): {why}"))),
            None => Ok(()),
        }
    }

    /// The `files.img` entry of `id`.
    pub fn entry(&self, id: u32) -> Option<&pb::FileEntry> {
        self.files.get(&id)
    }

    pub(super) fn file_ref(&self, id: u32, task_fds: &[pb::FdinfoEntry]) -> FileRef {
        FileRef {
            id,
            kind: self
                .files
                .get(&id)
                .map_or("UNKNOWN", |f| kind_name(f.r#type)),
            fd: task_fds.iter().find(|f| f.id == id).map(|f| f.fd),
        }
    }

    pub(super) fn file(&self, id: u32) -> Result<&pb::FileEntry> {
        self.files
            .get(&id)
            .ok_or_else(|| bad("files.img", format!("has no file {id}")))
    }

    /// A member of a file entry that its type says must be there.
    pub(super) fn member<'a, T>(
        &'a self,
        id: u32,
        get: impl FnOnce(&'a pb::FileEntry) -> Option<&'a T>,
    ) -> Result<&'a T> {
        let f = self.file(id)?;
        get(f).ok_or_else(|| {
            bad(
                "files.img",
                format!("file {id} of type {} lacks its entry", kind_name(f.r#type)),
            )
        })
    }

    // -----------------------------------------------------------------------------
    // Checks before anything is created
    // -----------------------------------------------------------------------------

    /// Refuses, before any task exists, the descriptors of task `pid` (its fdinfo
    /// entries) that this restore cannot rebuild; the error names the fd, the task and
    /// the kind. Also checks that every regular file is still there with its size.
    pub fn check(&self, pid: Pid, fdinfo: &[pb::FdinfoEntry]) -> Result<()> {
        let numbers: HashSet<u32> = fdinfo.iter().map(|f| f.fd).collect();
        for fdi in fdinfo {
            let file = self.files.get(&fdi.id).ok_or_else(|| {
                bad(
                    "files.img",
                    format!("has no file {} for task {pid} fd {}", fdi.id, fdi.fd),
                )
            })?;
            let at = FileRef {
                id: fdi.id,
                kind: kind_name(file.r#type),
                fd: Some(fdi.fd),
            };
            if file.r#type != fdi.r#type {
                return Err(bad(
                    "files.img",
                    format!(
                        "task {pid} fd {} is of type {} but file {} is {}",
                        fdi.fd,
                        kind_name(fdi.r#type),
                        fdi.id,
                        at.kind
                    ),
                ));
            }
            self.check_one(pid, &at, file, &numbers)?;
        }
        Ok(())
    }

    fn check_one(
        &self,
        pid: Pid,
        at: &FileRef,
        file: &pb::FileEntry,
        numbers: &HashSet<u32>,
    ) -> Result<()> {
        use pb::FdTypes as T;
        self.check_kind(pid, at, file)?;
        let id = file.id;
        let ty = T::try_from(file.r#type).unwrap_or(T::Und);
        match ty {
            T::Reg => self.check_reg(pid, at, self.member(id, |f| f.reg.as_ref())?),
            T::Pipe => self.member(id, |f| f.pipe.as_ref()).map(drop),
            T::Fifo => self.check_fifo(at, self.member(id, |f| f.fifo.as_ref())?),
            T::Unixsk => self.check_unix(pid, at, self.member(id, |f| f.usk.as_ref())?),
            T::Inetsk => self.check_inet(pid, at, self.member(id, |f| f.isk.as_ref())?),
            T::Eventfd => self.member(id, |f| f.efd.as_ref()).map(drop),
            T::Signalfd => self.member(id, |f| f.sgfd.as_ref()).map(drop),
            T::Timerfd => self.member(id, |f| f.tfd.as_ref()).map(drop),
            T::Inotify => self.check_inotify(at, self.member(id, |f| f.ify.as_ref())?),
            T::Eventpoll => {
                anon::check_epoll(pid, at, self.member(id, |f| f.epfd.as_ref())?, numbers)
            }
            T::Memfd => self.check_memfd(at, self.member(id, |f| f.memfd.as_ref())?),
            T::Ns => self.check_ns(pid, at, self.member(id, |f| f.nsf.as_ref())?),
            T::Tty => self.check_tty(pid, at, self.member(id, |f| f.tty.as_ref())?),
            other => Err(at.unsupported(pid, format!("files of kind {}", other.as_str_name()))),
        }
    }

    fn check_unix(&self, pid: Pid, at: &FileRef, ue: &pb::UnixSkEntry) -> Result<()> {
        let no = |what: String| Err(at.unsupported(pid, what));
        let ty = ue.r#type as i32;
        let name = show_unix_name(&ue.name);
        if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&ty) {
            return no(format!("unix socket {} of type {ty}", ue.ino));
        }
        if ![TCP_LISTEN, TCP_ESTABLISHED, TCP_CLOSE].contains(&ue.state) {
            return no(format!("unix socket {} in state {}", ue.ino, ue.state));
        }
        if ue.uflags != 0 {
            return no(format!(
                "unix socket {} {name} with CRIU markers {:#x} (external or inherited)",
                ue.ino, ue.uflags
            ));
        }
        if let Err(what) = self.same_netns(ue.ns_id) {
            return no(format!("unix socket {} {name}: {what}", ue.ino));
        }
        let queued = self.queues.get(&at.id).map_or(&[][..], Vec::as_slice);
        if queued.iter().any(|(p, _)| !p.scm.is_empty()) {
            return no(format!(
                "unix socket {} {name} with control messages (SCM_RIGHTS...) queued",
                ue.ino
            ));
        }
        let stream_like = ty != libc::SOCK_DGRAM;
        if ue.peer != 0 {
            let Some(pe) = self
                .unix_by_ino
                .get(&ue.peer)
                .and_then(|p| self.file(*p).ok()?.usk.as_ref())
            else {
                return no(format!(
                    "unix socket {} {name} connected to socket {} outside the dump",
                    ue.ino, ue.peer
                ));
            };
            let mutual = pe.peer == ue.ino;
            // A connection the listener had not accepted yet: connected to it again.
            let in_flight = stream_like && ue.state == TCP_ESTABLISHED && pe.state == TCP_LISTEN;
            if in_flight && !queued.is_empty() {
                return no(format!(
                    "unix socket {} {name} with data queued on a connection its listener {} \
                     had not accepted yet",
                    ue.ino, ue.peer
                ));
            }
            if !mutual && stream_like && !in_flight {
                return no(format!(
                    "unix socket {} {name} connected to socket {} that is connected elsewhere",
                    ue.ino, ue.peer
                ));
            }
            if !mutual && pe.name.is_empty() {
                return no(format!(
                    "unix socket {} {name} connected to unnamed socket {} that has another peer",
                    ue.ino, ue.peer
                ));
            }
            if !mutual && !queued.is_empty() && ue.name.is_empty() {
                return no(format!(
                    "unnamed unix socket {} with queued data whose sender cannot be rebuilt",
                    ue.ino
                ));
            }
        } else if stream_like && ue.state == TCP_ESTABLISHED {
            if ue.shutdown != Some(pb::SkShutdown::Both as i32) {
                return no(format!(
                    "unix socket {} {name} whose peer is gone but which is not shut down",
                    ue.ino
                ));
            }
        } else if !queued.is_empty()
            && ue.state != TCP_ESTABLISHED
            && (stream_like || ue.name.is_empty())
        {
            return no(format!(
                "unix socket {} {name} with queued data but no peer to send it again",
                ue.ino
            ));
        }
        Ok(())
    }

    fn check_inet(&self, pid: Pid, at: &FileRef, ie: &pb::InetSkEntry) -> Result<()> {
        let family = ie.family as i32;
        let fam = if family == libc::AF_INET6 {
            "IPv6"
        } else {
            "IPv4"
        };
        let src = show_inet(family, &ie.src_addr, ie.src_port);
        let no = |what: String| Err(at.unsupported(pid, what));
        if family != libc::AF_INET && family != libc::AF_INET6 {
            return no(format!("socket of address family {family}"));
        }
        if let Err(what) = self.same_netns(ie.ns_id) {
            return no(format!("{fam} socket {src}: {what}"));
        }
        match (ie.r#type as i32, ie.proto as i32) {
            (libc::SOCK_STREAM, libc::IPPROTO_TCP) => {
                if ie.state != TCP_LISTEN && ie.state != TCP_CLOSE {
                    let dst = show_inet(family, &ie.dst_addr, ie.dst_port);
                    return no(format!(
                        "{fam} TCP connection {src} -> {dst} in state {} (established TCP \
                         connections need TCP repair)",
                        ie.state
                    ));
                }
            }
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP) | (libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) => {
                if ie.state != TCP_CLOSE && ie.state != TCP_ESTABLISHED {
                    return no(format!("{fam} UDP socket {src} in state {}", ie.state));
                }
            }
            (ty, proto) => return no(format!("{fam} socket of type {ty} and protocol {proto}")),
        }
        Ok(())
    }

    /// Whether a socket's network namespace is the restorer's: `Err` says why not.
    fn same_netns(&self, ns_id: Option<u32>) -> std::result::Result<(), String> {
        if ns_id.is_some() && ns_id == self.tree_net_ns {
            return Ok(());
        }
        match (ns_id, self.root_ids.as_ref().and_then(|r| r.net_ns_id)) {
            (Some(theirs), Some(ours)) if theirs != ours => Err(format!(
                "it lives in network namespace {theirs}, not the restorer's ({ours})"
            )),
            _ => Ok(()),
        }
    }

    // -----------------------------------------------------------------------------
    // Opening
    // -----------------------------------------------------------------------------

    /// The restorer's descriptor of file `id`: created the first time, the same open
    /// file description every later time. `task_fds` is the fdinfo list of the task
    /// being rebuilt (for the fd numbers in errors).
    pub fn open(&mut self, id: u32, task_fds: &[pb::FdinfoEntry]) -> Result<BorrowedFd<'_>> {
        if !self.given.contains_key(&id) {
            let at = self.file_ref(id, task_fds);
            self.create(&at)?;
        }
        self.given
            .get(&id)
            .map(|fd| fd.as_fd())
            .ok_or_else(|| bad("files.img", format!("file {id} was not created")))
    }

    fn create(&mut self, at: &FileRef) -> Result<()> {
        use pb::FdTypes as T;
        let id = at.id;
        let file = self.file(id)?.clone();
        let ty = T::try_from(file.r#type).unwrap_or(T::Und);
        let fd = match ty {
            T::Reg => {
                let reg = self.member(id, |f| f.reg.as_ref())?.clone();
                self.open_reg(at, &reg)?
            }
            T::Pipe => {
                let p = *self.member(id, |f| f.pipe.as_ref())?;
                self.open_pipe(at, &p)?
            }
            T::Fifo => {
                let f = *self.member(id, |f| f.fifo.as_ref())?;
                self.open_fifo(at, &f)?
            }
            T::Unixsk => return self.open_unix(at),
            T::Inetsk => {
                let ie = self.member(id, |f| f.isk.as_ref())?.clone();
                open_inet(at, &ie)?
            }
            T::Eventfd => anon::open_eventfd(at, self.member(id, |f| f.efd.as_ref())?)?,
            T::Signalfd => anon::open_signalfd(at, self.member(id, |f| f.sgfd.as_ref())?)?,
            T::Timerfd => anon::open_timerfd(at, self.member(id, |f| f.tfd.as_ref())?)?,
            T::Inotify => {
                let ify = self.member(id, |f| f.ify.as_ref())?.clone();
                self.open_inotify(at, &ify)?
            }
            T::Eventpoll => anon::open_epoll(at, self.member(id, |f| f.epfd.as_ref())?)?,
            T::Memfd => {
                let m = *self.member(id, |f| f.memfd.as_ref())?;
                self.open_memfd(at, &m)?
            }
            T::Ns => self.open_ns(at, self.member(id, |f| f.nsf.as_ref())?)?,
            T::Tty => self.open_tty(at, self.member(id, |f| f.tty.as_ref())?)?,
            other => {
                return Err(
                    at.refused(format!("files of kind {} {NO_OPENER}", other.as_str_name()))
                );
            }
        };
        self.given.insert(id, fd);
        Ok(())
    }

    // --- unix sockets -----------------------------------------------------------

    fn usk(&self, id: u32) -> Result<&pb::UnixSkEntry> {
        self.member(id, |f| f.usk.as_ref())
    }

    /// The file id of a unix socket's peer, which must be in the dump.
    fn unix_peer(&self, at: &FileRef, ue: &pb::UnixSkEntry) -> Result<Option<u32>> {
        if ue.peer == 0 {
            return Ok(None);
        }
        match self.unix_by_ino.get(&ue.peer) {
            Some(&id) => Ok(Some(id)),
            None => Err(at.refused(format!(
                "unix socket {} connected to socket {} outside the dump",
                ue.ino, ue.peer
            ))),
        }
    }

    fn open_unix(&mut self, at: &FileRef) -> Result<()> {
        self.create_unix(at, at.id)?;
        match self.unix_pending.remove(&at.id) {
            Some(fd) => self.finish_unix(at, fd),
            None => Ok(()),
        }
    }

    /// Creates unix socket `id` and binds it to its name (pairs are finished at once;
    /// others wait in `unix_pending` for [`Self::finish_unix`]).
    fn create_unix(&mut self, at: &FileRef, id: u32) -> Result<()> {
        if self.given.contains_key(&id) || self.unix_pending.contains_key(&id) {
            return Ok(());
        }
        let at = &FileRef {
            id,
            kind: at.kind,
            fd: if id == at.id { at.fd } else { None },
        };
        let ue = self.usk(id)?.clone();
        let ty = ue.r#type as i32;
        let peer = self.unix_peer(at, &ue)?;
        let peer_entry = match peer {
            Some(p) => Some(self.usk(p)?.clone()),
            None => None,
        };
        match (peer, peer_entry) {
            // Mutual peers are a pair; a datagram socket connected to itself (its own
            // name) is not: it is one socket, connected once bound (`finish_unix`).
            (Some(pid), Some(pe)) if pe.peer == ue.ino && pid != id => {
                if pe.r#type != ue.r#type {
                    return Err(bad(
                        "files.img",
                        format!(
                            "unix sockets {} and {} are peers of different types",
                            ue.ino, pe.ino
                        ),
                    ));
                }
                let peer_at = FileRef {
                    id: pid,
                    kind: at.kind,
                    fd: None,
                };
                let (a, b) = sys::socketpair(ty).map_err(at.io("create a socket pair"))?;
                self.bind_unix(at, a.as_fd(), &ue)?;
                self.bind_unix(&peer_at, b.as_fd(), &pe)?;
                self.send_queue(at, b.as_fd(), None)?;
                self.send_queue(&peer_at, a.as_fd(), None)?;
                finish_socket(at, a.as_fd(), &ue.opts, ue.shutdown, ue.flags, &ue.fown)?;
                finish_socket(
                    &peer_at,
                    b.as_fd(),
                    &pe.opts,
                    pe.shutdown,
                    pe.flags,
                    &pe.fown,
                )?;
                self.given.insert(id, a);
                self.given.insert(pid, b);
            }
            // Established without a peer: a named datagram socket is one others
            // connected to (the kernel marks both ends), made as any other; an unnamed
            // one, or a stream end, had a peer that is gone.
            (None, _)
                if ue.state == TCP_ESTABLISHED
                    && (ty != libc::SOCK_DGRAM || ue.name.is_empty()) =>
            {
                // One end of a fresh pair, the other closed, so what was queued can
                // still be read and then the stream ends; a datagram end keeps pointing
                // at its dead peer, as it did (the next send without an address fails
                // with ECONNREFUSED and disconnects it).
                let (a, b) = sys::socketpair(ty).map_err(at.io("create a socket pair"))?;
                self.send_queue(at, b.as_fd(), None)?;
                drop(b);
                finish_socket(at, a.as_fd(), &ue.opts, ue.shutdown, ue.flags, &ue.fown)?;
                self.given.insert(id, a);
            }
            _ => {
                let s = sys::socket(libc::AF_UNIX, ty, 0).map_err(at.io("create a socket"))?;
                self.bind_unix(at, s.as_fd(), &ue)?;
                self.unix_pending.insert(id, s);
            }
        }
        Ok(())
    }

    /// Listens, connects to a named peer, refills the queue, and sets the rest of a
    /// unix socket made by [`Self::create_unix`].
    fn finish_unix(&mut self, at: &FileRef, fd: OwnedFd) -> Result<()> {
        let ue = self.usk(at.id)?.clone();
        let s = fd.as_fd();
        let peer = self.unix_peer(at, &ue)?;
        if ue.state == TCP_LISTEN {
            sys::listen(s, ue.backlog.min(i32::MAX as u32) as i32)
                .map_err(at.io(format!("listen on {}", show_unix_name(&ue.name))))?;
        } else if let Some(pid) = peer {
            // A datagram socket connected to a named one (possibly itself), or a stream
            // one whose connection its listener had not accepted yet.
            if pid != at.id {
                self.create_unix(at, pid)?;
            }
            let pe = self.usk(pid)?.clone();
            if pe.state == TCP_LISTEN {
                // Listening before it is finished, so the connection has one to wait in.
                if let Some(l) = self.unix_pending.get(&pid) {
                    sys::listen(l.as_fd(), pe.backlog.min(i32::MAX as u32) as i32)
                        .map_err(at.io(format!("listen on {}", show_unix_name(&pe.name))))?;
                }
            }
            let (addr, dir) = self.unix_target(pid, &pe);
            let deleted = if self.unix_ghosts.contains_key(&pid) {
                "deleted "
            } else {
                ""
            };
            in_dir(dir, || sys::connect_raw(s, &addr))
                .map_err(at.io(format!("connect to {deleted}{}", show_unix_name(&pe.name))))?;
        }
        if self.queues.contains_key(&at.id) {
            let (to, dir) = self.unix_target(at.id, &ue);
            match peer {
                Some(pid) if pid == at.id => self.send_queue(at, s, Some((&to, dir)))?,
                Some(pid) => {
                    let sender = self.unix_fd(pid)?;
                    self.send_queue(at, sender, Some((&to, dir)))?;
                }
                None => {
                    let tmp = sys::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0)
                        .map_err(at.io("create a socket to refill the queue"))?;
                    self.send_queue(at, tmp.as_fd(), Some((&to, dir)))?;
                }
            }
        }
        finish_socket(at, s, &ue.opts, ue.shutdown, ue.flags, &ue.fown)?;
        self.given.insert(at.id, fd);
        Ok(())
    }

    /// A unix socket already created (finished or not).
    fn unix_fd(&self, id: u32) -> Result<BorrowedFd<'_>> {
        self.given
            .get(&id)
            .or_else(|| self.unix_pending.get(&id))
            .map(|fd| fd.as_fd())
            .ok_or_else(|| {
                bad(
                    "files.img",
                    format!("unix socket file {id} was not created"),
                )
            })
    }

    /// Binds a unix socket to its saved name: removes a stale socket file at the path,
    /// binds (relative names in their directory), and sets the file's owner and mode;
    /// a name whose file was deleted is bound and unlinked again ([`Self::bind_deleted`]).
    /// Established stream sockets keep no name (as CRIU: their name is their listener's).
    fn bind_unix(&mut self, at: &FileRef, s: BorrowedFd<'_>, ue: &pb::UnixSkEntry) -> Result<()> {
        if ue.name.is_empty()
            || (ue.r#type as i32 != libc::SOCK_DGRAM && ue.state == TCP_ESTABLISHED)
        {
            return Ok(());
        }
        let shown = show_unix_name(&ue.name);
        let addr = unix_addr(&ue.name);
        let Some(path) = unix_path(ue) else {
            // Abstract.
            return sys::bind_raw(s, &addr).map_err(at.io(format!("bind to {shown}")));
        };
        if ue.deleted == Some(true) {
            let held = self.bind_deleted(at, s, ue, &path)?;
            self.unix_ghosts.insert(at.id, held);
            return Ok(());
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path)
                .map_err(at.io(format!("remove stale socket {}", path.display())))?,
            Ok(_) => {
                return Err(at.changed(format!(
                    "{} is in the way of the socket's name and is not a socket",
                    path.display()
                )))
            }
            Err(_) => {}
        }
        in_dir(relative_dir(ue), || sys::bind_raw(s, &addr))
            .map_err(at.io(format!("bind to {shown}")))?;
        set_bound_perms(at, &path, ue)
    }

    /// Binds to a name whose file was unlinked after the bind, and unlinks it again, so
    /// the socket keeps its name with no file behind it, as dumped. Directories of the
    /// name that are gone (removed after the unlink) are made for the while and removed
    /// again, deepest first; whatever holds the name now (another socket, a FIFO...) is
    /// moved aside for the while and put back. Returns an `O_PATH` descriptor of the
    /// unlinked file: peers connect through it (see [`Self::unix_target`]), as nothing
    /// else can reach the socket any more.
    fn bind_deleted(
        &self,
        at: &FileRef,
        s: BorrowedFd<'_>,
        ue: &pb::UnixSkEntry,
        path: &Path,
    ) -> Result<OwnedFd> {
        let made = make_missing_dirs(path)
            .map_err(at.io(format!("make the directories of {}", path.display())))?;
        let held = self.bind_moving_aside(at, s, ue, path);
        let removed = remove_made_dirs(&made);
        let held = held?;
        removed.map_err(at.io(format!(
            "remove the directories made to bind to {}",
            path.display()
        )))?;
        Ok(held)
    }

    /// [`Self::bind_deleted`] once the name's directory exists.
    fn bind_moving_aside(
        &self,
        at: &FileRef,
        s: BorrowedFd<'_>,
        ue: &pb::UnixSkEntry,
        path: &Path,
    ) -> Result<OwnedFd> {
        let shown = show_unix_name(&ue.name);
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".criu-rs-aside-{}", std::process::id()));
        let aside = PathBuf::from(aside);
        let moved = std::fs::symlink_metadata(path).is_ok();
        if moved {
            std::fs::rename(path, &aside)
                .map_err(at.io(format!("move {} aside", path.display())))?;
        }
        let addr = unix_addr(&ue.name);
        let held = in_dir(relative_dir(ue), || sys::bind_raw(s, &addr))
            .map_err(at.io(format!("bind to deleted {shown}")))
            .and_then(|()| {
                // The file is ours from the bind on: whatever fails, it goes again.
                let held = set_bound_perms(at, path, ue).and_then(|()| {
                    sys::ioctl_get_fd(s, SIOCUNIXFILE)
                        .map_err(at.io("hold the bound file (SIOCUNIXFILE)"))
                });
                let unlinked = std::fs::remove_file(path)
                    .map_err(at.io(format!("unlink {} again", path.display())));
                let held = held?;
                unlinked?;
                Ok(held)
            });
        if moved {
            std::fs::rename(&aside, path).map_err(at.io(format!(
                "move {} back to {}",
                aside.display(),
                path.display()
            )))?;
        }
        held
    }

    /// The address (and directory, for relative names) by which socket `id`, whose
    /// entry is `ue`, is reached: its name, or for a name whose file was deleted the
    /// descriptor that holds the file (`/proc/self/fd/N`: the kernel finds a socket by
    /// the inode a path leads to, and that link leads to the unlinked one).
    fn unix_target<'a>(&self, id: u32, ue: &'a pb::UnixSkEntry) -> (Vec<u8>, Option<&'a Path>) {
        match self.unix_ghosts.get(&id) {
            Some(held) => (
                unix_addr(format!("/proc/self/fd/{}", held.as_raw_fd()).as_bytes()),
                None,
            ),
            None => (unix_addr(&ue.name), relative_dir(ue)),
        }
    }

    /// Puts the saved queue of socket `at` back into its receive queue: one send per
    /// saved packet from `sender`, its peer (to the address `to` when given, relative
    /// to its directory).
    fn send_queue(
        &self,
        at: &FileRef,
        sender: BorrowedFd<'_>,
        to: Option<(&[u8], Option<&Path>)>,
    ) -> Result<()> {
        let Some(packets) = self.queues.get(&at.id) else {
            return Ok(());
        };
        let datagrams = sys::getsockopt_int(sender, libc::SOL_SOCKET, libc::SO_TYPE)
            .map_err(at.io("read the socket's type"))?
            != libc::SOCK_STREAM;
        // Room in the sender for the whole queue (each packet costs its bytes plus
        // the kernel's bookkeeping), put back as it was afterwards.
        let total: usize = packets.iter().map(|(_, d)| d.len() + 1024).sum();
        let old_sndbuf = sys::getsockopt_int(sender, libc::SOL_SOCKET, libc::SO_SNDBUF)
            .map_err(at.io("read SO_SNDBUF"))?;
        let old_lock = sys::getsockopt_int(sender, libc::SOL_SOCKET, SO_BUF_LOCK).ok();
        let want = (total.saturating_mul(2)).min(i32::MAX as usize / 2) as i32;
        if want > old_sndbuf {
            sys::setsockopt_int(sender, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want)
                .map_err(at.io("grow the sender's buffer to refill the queue"))?;
        }
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        let send_all = || -> io::Result<()> {
            for (i, (_, data)) in packets.iter().enumerate() {
                let mut done = 0;
                loop {
                    let n = match to {
                        Some((addr, _)) => sys::sendto_raw(sender, &data[done..], flags, addr)?,
                        None => sys::send(sender, &data[done..], flags)?,
                    };
                    done += n;
                    if done == data.len() {
                        break;
                    }
                    if datagrams || n == 0 {
                        return Err(io::Error::other(format!(
                            "packet {i} went out short: {done} of {} bytes",
                            data.len()
                        )));
                    }
                }
            }
            Ok(())
        };
        let sent = in_dir(to.and_then(|(_, dir)| dir), send_all);
        if want > old_sndbuf {
            sys::setsockopt_int(
                sender,
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                old_sndbuf / 2,
            )
            .map_err(at.io("shrink the sender's buffer back"))?;
            if let Some(lock) = old_lock {
                sys::setsockopt_int(sender, libc::SOL_SOCKET, SO_BUF_LOCK, lock)
                    .map_err(at.io("restore the sender's SO_BUF_LOCK"))?;
            }
        }
        sent.map_err(at.io(format!("refill the queue ({} packets)", packets.len())))
    }
}

// -------------------------------------------------------------------------------------
// Helpers per kind
// -------------------------------------------------------------------------------------

/// A new open file description of the file `fd` is open on, with `flags`.
///
/// Without `O_NOFOLLOW`: `/proc/self/fd/N` is a link, which that flag refuses to follow
/// (ELOOP), and glibc's `shm_open` opens every POSIX shared memory object with it. The
/// flag only ever acts on the path of an open, which is done here; the reopened file
/// does not show it in `F_GETFL` (the one difference from the dumped file).
pub(super) fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    sys::open_path(Path::new(&path), flags & !libc::O_NOFOLLOW, 0)
}

/// Sets the file status flags (`O_NONBLOCK`, `O_APPEND`...) and the signal owner.
pub(super) fn finish(
    at: &FileRef,
    fd: BorrowedFd<'_>,
    flags: u32,
    fown: &pb::FownEntry,
) -> Result<()> {
    if flags & libc::O_PATH as u32 != 0 {
        return Ok(());
    }
    set_fown(at, fd, fown)?;
    let current = sys::fcntl_get(fd, libc::F_GETFL).map_err(at.io("read the file's flags"))? as u32;
    let wanted = (current & !SETFL_MASK) | (flags & SETFL_MASK);
    if wanted != current {
        sys::fcntl_set(fd, libc::F_SETFL, wanted as i32)
            .map_err(at.io(format!("set the file's flags to {wanted:#o}")))?;
    }
    Ok(())
}

/// `F_SETSIG` and `F_SETOWN_EX` as saved; the owner's pid must exist.
pub(super) fn set_fown(at: &FileRef, fd: BorrowedFd<'_>, fown: &pb::FownEntry) -> Result<()> {
    const F_SETSIG: i32 = 10;
    if fown.signum != 0 {
        sys::fcntl_set(fd, F_SETSIG, fown.signum as i32)
            .map_err(at.io(format!("set the I/O signal to {}", fown.signum)))?;
    }
    if fown.pid != 0 {
        sys::fcntl_set_owner(fd, fown.pid_type as i32, fown.pid as i32).map_err(at.io(format!(
            "make {} (type {}) the owner of the file's signals",
            fown.pid, fown.pid_type
        )))?;
    }
    Ok(())
}

/// Writes all of `data` to a descriptor, failing instead of blocking.
pub(super) fn write_all(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<()> {
    let mut f = File::from(fd.try_clone_to_owned()?);
    f.write_all(data)
}

// --- sockets ------------------------------------------------------------------------

/// Formats a unix socket name: `@abstract`, `/path`, or `(unnamed)`.
fn show_unix_name(name: &[u8]) -> String {
    match name {
        [] => "(unnamed)".into(),
        [0, rest @ ..] => format!("@{}", String::from_utf8_lossy(rest)),
        path => {
            String::from_utf8_lossy(path.split(|&b| b == 0).next().unwrap_or_default()).into_owned()
        }
    }
}

/// The `sockaddr_un` bytes of a name: abstract names exactly as saved, paths with
/// their terminating NUL.
fn unix_addr(name: &[u8]) -> Vec<u8> {
    let mut addr = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    if name.first() == Some(&0) {
        addr.extend_from_slice(name);
    } else {
        addr.extend_from_slice(name.split(|&b| b == 0).next().unwrap_or_default());
        addr.push(0);
    }
    addr
}

/// The filesystem path of a socket's name (relative names joined to their directory);
/// `None` for abstract names.
fn unix_path(ue: &pb::UnixSkEntry) -> Option<PathBuf> {
    if ue.name.first().is_none_or(|&b| b == 0) {
        return None;
    }
    let name = std::ffi::OsStr::from_bytes(ue.name.split(|&b| b == 0).next().unwrap_or_default());
    Some(match relative_dir(ue) {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    })
}

/// Sets a bound socket file's owner and mode as saved.
fn set_bound_perms(at: &FileRef, path: &Path, ue: &pb::UnixSkEntry) -> Result<()> {
    if let Some(p) = &ue.file_perms {
        std::os::unix::fs::chown(path, Some(p.uid), Some(p.gid))
            .map_err(at.io(format!("chown {}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(p.mode & 0o7777))
            .map_err(at.io(format!("chmod {}", path.display())))?;
    }
    Ok(())
}

/// Makes the directories of `path`'s parent that do not exist (mode 0700: they live only
/// while a socket is bound in them), outermost first, and returns them in that order.
/// On an error the ones made are removed again.
fn make_missing_dirs(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::symlink_metadata(d) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(d.to_owned()),
            Err(e) => return Err(e),
        }
        dir = d.parent();
    }
    missing.reverse();
    let mut made = Vec::new();
    for d in missing {
        if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&d) {
            let _ = remove_made_dirs(&made);
            return Err(io::Error::new(
                e.kind(),
                format!("mkdir {}: {e}", d.display()),
            ));
        }
        made.push(d);
    }
    Ok(made)
}

/// Removes directories [`make_missing_dirs`] made, deepest first; tries them all and
/// returns the first error.
fn remove_made_dirs(made: &[PathBuf]) -> io::Result<()> {
    let mut first = Ok(());
    for d in made.iter().rev() {
        if let Err(e) = std::fs::remove_dir(d) {
            if first.is_ok() {
                first = Err(io::Error::new(
                    e.kind(),
                    format!("rmdir {}: {e}", d.display()),
                ));
            }
        }
    }
    first
}

/// The directory a relative socket name was bound in.
fn relative_dir(ue: &pb::UnixSkEntry) -> Option<&Path> {
    if ue.name.first().is_some_and(|&b| b != 0 && b != b'/') {
        ue.name_dir.as_deref().map(criu_images::path_of)
    } else {
        None
    }
}

/// Runs `f` with `dir` as the working directory, in a thread of its own that does not
/// share the process's (so other threads keep theirs); directly when `dir` is `None`.
fn in_dir<T: Send>(dir: Option<&Path>, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let Some(dir) = dir else {
        return f();
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                sys::unshare(libc::CLONE_FS)?;
                std::env::set_current_dir(dir)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the helper thread panicked")))
    })
}

/// SOL_SOCKET options, as saved; buffers first, then their lock bits.
fn set_sk_opts(at: &FileRef, s: BorrowedFd<'_>, o: &pb::SkOptsEntry) -> Result<()> {
    let int = |name: i32, value: i32, what: &str| {
        sys::setsockopt_int(s, libc::SOL_SOCKET, name, value).map_err(at.io(format!("set {what}")))
    };
    // The kernel doubles what it is given.
    int(libc::SO_SNDBUFFORCE, (o.so_sndbuf / 2) as i32, "SO_SNDBUF")?;
    int(libc::SO_RCVBUFFORCE, (o.so_rcvbuf / 2) as i32, "SO_RCVBUF")?;
    if let Some(lock) = o.so_buf_lock {
        int(SO_BUF_LOCK, lock as i32, "SO_BUF_LOCK")?;
    }
    let timeval = |sec: u64, usec: u64| {
        let mut v = (sec as i64).to_ne_bytes().to_vec();
        v.extend_from_slice(&(usec as i64).to_ne_bytes());
        v
    };
    for (name, sec, usec, what) in [
        (
            libc::SO_SNDTIMEO,
            o.so_snd_tmo_sec,
            o.so_snd_tmo_usec,
            "SO_SNDTIMEO",
        ),
        (
            libc::SO_RCVTIMEO,
            o.so_rcv_tmo_sec,
            o.so_rcv_tmo_usec,
            "SO_RCVTIMEO",
        ),
    ] {
        if sec != 0 || usec != 0 {
            sys::setsockopt_bytes(s, libc::SOL_SOCKET, name, &timeval(sec, usec))
                .map_err(at.io(format!("set {what}")))?;
        }
    }
    for (name, on, what) in [
        (libc::SO_REUSEADDR, o.reuseaddr, "SO_REUSEADDR"),
        (libc::SO_REUSEPORT, o.so_reuseport, "SO_REUSEPORT"),
        (libc::SO_PASSCRED, o.so_passcred, "SO_PASSCRED"),
        (libc::SO_PASSSEC, o.so_passsec, "SO_PASSSEC"),
        (libc::SO_DONTROUTE, o.so_dontroute, "SO_DONTROUTE"),
        (libc::SO_NO_CHECK, o.so_no_check, "SO_NO_CHECK"),
        (libc::SO_BROADCAST, o.so_broadcast, "SO_BROADCAST"),
        (libc::SO_KEEPALIVE, o.so_keepalive, "SO_KEEPALIVE"),
        (
            libc::SO_OOBINLINE,
            o.so_oobinline.map(|v| v != 0),
            "SO_OOBINLINE",
        ),
    ] {
        if on == Some(true) {
            int(name, 1, what)?;
        }
    }
    if let Some(p) = o.so_priority {
        int(libc::SO_PRIORITY, p as i32, "SO_PRIORITY")?;
    }
    if let Some(l) = o.so_rcvlowat {
        int(libc::SO_RCVLOWAT, l as i32, "SO_RCVLOWAT")?;
    }
    if let Some(m) = o.so_mark {
        int(libc::SO_MARK, m as i32, "SO_MARK")?;
    }
    if let Some(t) = o.so_linger {
        let mut v = 1i32.to_ne_bytes().to_vec();
        v.extend_from_slice(&(t as i32).to_ne_bytes());
        sys::setsockopt_bytes(s, libc::SOL_SOCKET, libc::SO_LINGER, &v)
            .map_err(at.io("set SO_LINGER"))?;
    }
    if let Some(dev) = o.so_bound_dev.as_deref().filter(|d| !d.is_empty()) {
        sys::setsockopt_bytes(s, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_bytes())
            .map_err(at.io(format!("bind to device {dev}")))?;
    }
    if !o.so_filter.is_empty() {
        let prog: Vec<[u8; 8]> = o
            .so_filter
            .iter()
            .map(|&w| {
                let mut insn = [0u8; 8];
                insn[..2].copy_from_slice(&((w >> 48) as u16).to_ne_bytes());
                insn[2] = (w >> 40) as u8;
                insn[3] = (w >> 32) as u8;
                insn[4..].copy_from_slice(&(w as u32).to_ne_bytes());
                insn
            })
            .collect();
        sys::attach_socket_filter(s, &prog).map_err(at.io("attach the socket filter"))?;
    }
    for (name, v, what) in [
        (libc::TCP_KEEPCNT, o.tcp_keepcnt, "TCP_KEEPCNT"),
        (libc::TCP_KEEPIDLE, o.tcp_keepidle, "TCP_KEEPIDLE"),
        (libc::TCP_KEEPINTVL, o.tcp_keepintvl, "TCP_KEEPINTVL"),
    ] {
        if let Some(v) = v {
            sys::setsockopt_int(s, libc::IPPROTO_TCP, name, v as i32)
                .map_err(at.io(format!("set {what}")))?;
        }
    }
    Ok(())
}

/// Options, shutdown, file flags and owner of a socket whose data is in place.
fn finish_socket(
    at: &FileRef,
    s: BorrowedFd<'_>,
    opts: &pb::SkOptsEntry,
    shutdown: Option<i32>,
    flags: u32,
    fown: &pb::FownEntry,
) -> Result<()> {
    set_sk_opts(at, s, opts)?;
    shut(at, s, shutdown)?;
    finish(at, s, flags, fown)
}

/// shutdown(2) as saved (`sk_shutdown` READ, WRITE, BOTH); an unconnected socket
/// takes the state but answers ENOTCONN.
fn shut(at: &FileRef, s: BorrowedFd<'_>, shutdown: Option<i32>) -> Result<()> {
    let how = match shutdown {
        Some(1) => libc::SHUT_RD,
        Some(2) => libc::SHUT_WR,
        Some(3) => libc::SHUT_RDWR,
        _ => return Ok(()),
    };
    match sys::shutdown(s, how) {
        Err(e) if e.raw_os_error() != Some(libc::ENOTCONN) => Err(at.io("shut the socket down")(e)),
        _ => Ok(()),
    }
}

/// Formats an inet address for messages from its image words.
fn show_inet(family: i32, words: &[u32], port: u32) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    if family == libc::AF_INET6 {
        let mut a = [0u8; 16];
        let n = bytes.len().min(16);
        a[..n].copy_from_slice(&bytes[..n]);
        format!("[{}]:{port}", std::net::Ipv6Addr::from(a))
    } else {
        let mut a = [0u8; 4];
        let n = bytes.len().min(4);
        a[..n].copy_from_slice(&bytes[..n]);
        format!("{}:{port}", std::net::Ipv4Addr::from(a))
    }
}

/// The `sockaddr_in`/`sockaddr_in6` bytes of an address saved as image words.
fn inet_addr(family: i32, words: &[u32], port: u32, scope_id: u32) -> Vec<u8> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mut out = (family as u16).to_ne_bytes().to_vec();
    out.extend_from_slice(&(port as u16).to_be_bytes());
    if family == libc::AF_INET6 {
        out.extend_from_slice(&[0; 4]); // flow info
        let mut a = [0u8; 16];
        let n = bytes.len().min(16);
        a[..n].copy_from_slice(&bytes[..n]);
        out.extend_from_slice(&a);
        out.extend_from_slice(&scope_id.to_ne_bytes());
    } else {
        let mut a = [0u8; 4];
        let n = bytes.len().min(4);
        a[..n].copy_from_slice(&bytes[..n]);
        out.extend_from_slice(&a);
        out.extend_from_slice(&[0; 8]);
    }
    out
}

/// The index of network interface `name`.
fn ifindex(name: &str) -> io::Result<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("ifindex {text:?}")))
}

/// A TCP listener or unconnected TCP socket, or a UDP socket, bound and set as saved.
fn open_inet(at: &FileRef, ie: &pb::InetSkEntry) -> Result<OwnedFd> {
    let family = ie.family as i32;
    let (ty, proto) = (ie.r#type as i32, ie.proto as i32);
    let tcp = proto == libc::IPPROTO_TCP;
    let src = show_inet(family, &ie.src_addr, ie.src_port);
    let restorable = if tcp {
        [TCP_LISTEN, TCP_CLOSE].contains(&ie.state)
    } else {
        [TCP_CLOSE, TCP_ESTABLISHED].contains(&ie.state)
    };
    if !restorable {
        return Err(at.refused(format!(
            "socket {src} in state {} (connected TCP sockets need TCP repair)",
            ie.state
        )));
    }
    let fd = sys::socket(family, ty, proto).map_err(at.io("create a socket"))?;
    let s = fd.as_fd();
    if family == libc::AF_INET6 {
        if let Some(v6only) = ie.v6only {
            sys::setsockopt_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v6only.into())
                .map_err(at.io("set IPV6_V6ONLY"))?;
        }
    }
    set_sk_opts(at, s, &ie.opts)?;
    if let Some(ip) = &ie.ip_opts {
        const IP_FREEBIND: i32 = 15;
        const IPV6_FREEBIND: i32 = 78;
        const IPV6_RECVPKTINFO: i32 = 49;
        let (level, freebind, pktinfo) = if family == libc::AF_INET6 {
            (libc::IPPROTO_IPV6, IPV6_FREEBIND, IPV6_RECVPKTINFO)
        } else {
            (libc::IPPROTO_IP, IP_FREEBIND, libc::IP_PKTINFO)
        };
        let set = |name: i32, v: i32, what: &str| {
            sys::setsockopt_int(s, level, name, v).map_err(at.io(format!("set {what}")))
        };
        if ip.freebind == Some(true) {
            set(freebind, 1, "IP_FREEBIND")?;
        }
        if ip.pktinfo == Some(true) {
            set(pktinfo, 1, "IP_PKTINFO")?;
        }
        if let Some(tos) = ip.tos {
            set(libc::IP_TOS, tos as i32, "IP_TOS")?;
        }
        if let Some(ttl) = ip.ttl {
            set(libc::IP_TTL, ttl as i32, "IP_TTL")?;
        }
    }
    if let Some(t) = ie.tcp_opts.as_ref().filter(|_| tcp) {
        let set = |name: i32, v: i32, what: &str| {
            sys::setsockopt_int(s, libc::IPPROTO_TCP, name, v).map_err(at.io(format!("set {what}")))
        };
        if t.nodelay == Some(true) {
            set(libc::TCP_NODELAY, 1, "TCP_NODELAY")?;
        }
        if t.cork == Some(true) {
            set(libc::TCP_CORK, 1, "TCP_CORK")?;
        }
        for (name, v, what) in [
            (libc::TCP_KEEPCNT, t.keepcnt, "TCP_KEEPCNT"),
            (libc::TCP_KEEPIDLE, t.keepidle, "TCP_KEEPIDLE"),
            (libc::TCP_KEEPINTVL, t.keepintvl, "TCP_KEEPINTVL"),
        ] {
            if let Some(v) = v {
                set(name, v as i32, what)?;
            }
        }
    }
    let any_addr = ie.src_addr.iter().all(|&w| w == 0);
    if ie.src_port != 0 || !any_addr {
        let scope = match ie.ifname.as_deref() {
            Some(name) if family == libc::AF_INET6 => {
                ifindex(name).map_err(at.io(format!("find interface {name}")))?
            }
            _ => 0,
        };
        let addr = inet_addr(family, &ie.src_addr, ie.src_port, scope);
        // The address may not be local (any more, or yet: IPv6 addresses are tentative
        // for a while after they are added, and the socket may have been bound with
        // IP_FREEBIND that was cleared later): bind with IP_FREEBIND on, then put the
        // saved value back. IP_FREEBIND at IPPROTO_IP is the one flag for both families.
        const IP_FREEBIND: i32 = 15;
        let saved = ie.ip_opts.as_ref().and_then(|o| o.freebind) == Some(true);
        sys::setsockopt_int(s, libc::IPPROTO_IP, IP_FREEBIND, 1)
            .map_err(at.io(format!("set IP_FREEBIND to bind to {src}")))?;
        sys::bind_raw(s, &addr).map_err(at.io(format!("bind to {src}")))?;
        if !saved {
            sys::setsockopt_int(s, libc::IPPROTO_IP, IP_FREEBIND, 0)
                .map_err(at.io(format!("clear IP_FREEBIND after binding to {src}")))?;
        }
    }
    if ie.state == TCP_LISTEN {
        sys::listen(s, ie.backlog.min(i32::MAX as u32) as i32)
            .map_err(at.io(format!("listen on {src}")))?;
    } else if !tcp && ie.state == TCP_ESTABLISHED {
        let dst = show_inet(family, &ie.dst_addr, ie.dst_port);
        let addr = inet_addr(family, &ie.dst_addr, ie.dst_port, 0);
        sys::connect_raw(s, &addr).map_err(at.io(format!("connect to {dst}")))?;
    }
    shut(at, s, ie.shutdown)?;
    finish(at, s, ie.flags, &ie.fown)?;
    Ok(fd)
}

#[cfg(test)]
#[path = "restore_tests.rs"]
mod tests;
