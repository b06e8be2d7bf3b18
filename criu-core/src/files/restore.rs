//! The restore's driver for open files.
//!
//! The restorer creates every open file description itself and keeps it, keyed by its
//! `files.img` id; each task then takes a duplicate (`pidfd_getfd`, in the restore's
//! stage 6, `restore/fds.rs`) and puts it at its old number. One id is one open file
//! description: asking for it again gives the same one, so descriptors shared by dup,
//! fork or SCM_RIGHTS are shared again, and data put back into a pipe or a socket is
//! put back once.
//!
//! [`FileOpener::load`] reads `files.img` and the side images, each kind's into that
//! kind's `RestoreState`; [`FileOpener::check`] judges every descriptor of a task before
//! any task exists; [`FileOpener::open`] creates a file the first time it is asked for.
//! Each of them (and `FileOpener::file_kind`, the image's row in the kind table)
//! dispatches on the entry's type to the kind's module, which says what the kind gets
//! back (see [`super`] for the layout and why it is a match). The public methods that
//! belong to one kind are in its module too: [`FileOpener::epoll_items`] (`anon.rs`),
//! [`FileOpener::is_ghost`] (`reg.rs`), [`FileOpener::has_job_terminal`] (`tty.rs`).
//!
//! What it refuses (in [`FileOpener::check`], before any task exists): every kind the
//! kind table ([`kinds`](super::kinds), which the dump's checks read too) says it does
//! not rebuild (terminals other than Unix98 ptys, TCP connections without
//! `--tcp-established` or `--tcp-close`, files of other kinds CRIU knows: fanotify,
//! tun, bpf maps...), and states the table leaves to
//! the code: sockets connected to a peer outside the dump (taken with `--ext-unix-sk`,
//! as the table says, when that peer has a name to connect to), namespace files of a
//! namespace the restorer is not in, a TCP connection whose stream image is missing.
//! Mappings are judged by the same table ([`mapping_refusal`]).
//!
//! Keep the [`FileOpener`] until every task holds its descriptors, then drop it: it
//! holds the other ends of pipes and FIFOs too, so a reader sees end-of-file only once
//! it is gone.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use criu_images::{pb, ImageReader};

use super::kinds::{Given, Kind};
use super::{
    anon, inet, inet_raw, io_uring, lock, memfd, mqueue, netlink, packet, pidfd, pipe, reg, tcp,
    tty, unix,
};
use crate::sys::{self, Pid};

pub use super::anon::{EpollItem, PassedEpoll};
pub use super::tty::ControllingTerminal;

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

/// Rebuilds the open files of a dump, each open file description once.
pub struct FileOpener {
    pub(super) dir: PathBuf,
    pub(super) files: HashMap<u32, pb::FileEntry>,
    /// The dumper's own namespace ids (the inventory's `root_ids`).
    pub(super) root_ids: Option<pb::TaskKobjIdsEntry>,
    /// `--shell-job`.
    pub(super) shell_job: bool,
    /// `--ext-unix-sk`: unix sockets whose peer is outside the dump are connected to
    /// its name again.
    pub(super) ext_unix_sk: bool,
    /// The network namespace of the tree, which it joins on restore (its sockets are
    /// created there, not in ours).
    pub(super) tree_net_ns: Option<u32>,
    /// The namespaces the tree has (`CLONE_NEW*` flag, CRIU's id), each with the image
    /// pid of a task in it: files of those are reopened from that task's
    /// `/proc/PID/ns` once it exists again.
    pub(super) tree_ns: HashMap<(u32, u32), i32>,
    /// Finished open file descriptions, by file id.
    pub(super) given: HashMap<u32, OwnedFd>,

    // What each kind read from the images and made so far.
    pub(super) reg: reg::RestoreState,
    pub(super) pipes: pipe::RestoreState,
    pub(super) unix: unix::RestoreState,
    pub(super) memfds: memfd::RestoreState,
    pub(super) ttys: tty::RestoreState,
    pub(super) mqueues: mqueue::RestoreState,
    pub(super) locks: lock::RestoreState,
    pub(super) tcp: tcp::RestoreState,
    pub(super) pidfds: pidfd::RestoreState,
    pub(super) ports_later: inet::PortsLater,
    /// Epoll instances whose items were handed out.
    pub(super) epolls_listed: HashSet<u32>,
    /// The memory of the io_uring rings made, by file id.
    rings: HashMap<u32, io_uring::RingRegions>,
}

/// The ring of an `EXT` file that is an io_uring instance (ours: see `io_uring.rs`).
pub fn io_uring_of(file: &pb::FileEntry) -> Option<&pb::IoUringFileEntry> {
    file.ext.as_ref()?.io_uring.as_ref()
}

/// What [`FileOpener::open`] says of a kind it has no code for.
pub(super) const NO_OPENER: &str = "(no code opens it)";

/// The row of the kind table (see [`kinds`](super::kinds)) of a mapping, from its status
/// bits and, for file mappings, the file it maps (`files`: every `files.img` entry by id).
pub fn mapping_kind(files: &HashMap<u32, pb::FileEntry>, vma: &pb::VmaEntry) -> Kind {
    use criu_images::flags::vma::{
        VMA_ANON_PRIVATE, VMA_ANON_SHARED, VMA_AREA_AIORING, VMA_AREA_MEMFD, VMA_AREA_SOCKET,
        VMA_AREA_SYSVIPC, VMA_AREA_VDSO, VMA_AREA_VSYSCALL, VMA_AREA_VVAR, VMA_FILE_PRIVATE,
        VMA_FILE_SHARED,
    };
    let st = vma.status;
    if st & VMA_FILE_SHARED != 0
        && files
            .get(&(vma.shmid as u32))
            .is_some_and(|f| io_uring_of(f).is_some())
    {
        Kind::MapIoUring
    } else if st & VMA_AREA_SYSVIPC != 0 {
        Kind::MapSysvShm
    } else if st & VMA_AREA_SOCKET != 0 {
        // A packet ring (its `shmid` is the socket's file id).
        let file = files.get(&(vma.shmid as u32));
        if file.is_some_and(|f| f.r#type == pb::FdTypes::Packetsk as i32 && f.psk.is_some()) {
            Kind::MapSocket
        } else {
            Kind::MapOtherSocket
        }
    } else if st & VMA_AREA_VDSO != 0 {
        Kind::MapVdso
    } else if st & VMA_AREA_VVAR != 0 {
        Kind::MapVvar
    } else if st & VMA_AREA_VSYSCALL != 0 {
        Kind::MapVsyscall
    } else if st & VMA_AREA_AIORING != 0 {
        Kind::MapAioRing
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
        let unix_by_ino = unix::by_inode(&files)?;
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
        let unix = unix::RestoreState::load(dir, unix_by_ino)?;
        let mqueues = mqueue::RestoreState::load(dir, &files)?;
        let locks = lock::RestoreState::load(dir)?;
        Ok(FileOpener {
            dir: dir.to_owned(),
            files,
            root_ids,
            shell_job: false,
            ext_unix_sk: false,
            tree_net_ns: None,
            tree_ns: HashMap::new(),
            given: HashMap::new(),
            reg,
            pipes,
            unix,
            memfds,
            ttys,
            mqueues,
            locks,
            tcp: tcp::RestoreState::default(),
            pidfds: pidfd::RestoreState::default(),
            ports_later: inet::PortsLater::default(),
            epolls_listed: HashSet::new(),
            rings: HashMap::new(),
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

    /// Paths under these mount points (of the tree's own mount namespace, made in
    /// stage 2) are not checked before they exist.
    pub fn skip_checks_under(&mut self, mountpoints: Vec<PathBuf>) {
        self.reg.unchecked = mountpoints;
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

    /// `--ext-unix-sk`: a unix socket whose peer was outside the dump (an entry CRIU
    /// marks external) is connected to that peer's name again; without it, refused.
    pub fn set_ext_unix_sk(&mut self, allowed: bool) {
        self.ext_unix_sk = allowed;
    }

    /// Sockets of network namespace `ns` are accepted: the tree joins it on restore and
    /// the restorer creates them inside it.
    pub fn accept_net_ns(&mut self, ns: Option<u32>) {
        self.tree_net_ns = ns;
    }

    /// The namespaces of the tree's tasks (`tasks`: image pid and its ids), which the
    /// restore makes again (or joins): open files of them are reopened from a restored
    /// task in each.
    pub fn set_tree_namespaces<'a>(
        &mut self,
        tasks: impl IntoIterator<Item = (i32, &'a pb::TaskKobjIdsEntry)>,
    ) {
        use libc::{
            CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWTIME,
            CLONE_NEWUSER, CLONE_NEWUTS,
        };
        for (pid, ids) in tasks {
            for (flag, id) in [
                (CLONE_NEWCGROUP, ids.cgroup_ns_id),
                (CLONE_NEWIPC, ids.ipc_ns_id),
                (CLONE_NEWNET, ids.net_ns_id),
                (CLONE_NEWNS, ids.mnt_ns_id),
                (CLONE_NEWPID, ids.pid_ns_id),
                (CLONE_NEWTIME, ids.time_ns_id),
                (CLONE_NEWUSER, ids.user_ns_id),
                (CLONE_NEWUTS, ids.uts_ns_id),
            ] {
                if let Some(id) = id {
                    self.tree_ns.entry((flag as u32, id)).or_insert(pid);
                }
            }
        }
    }

    /// The tasks of the tree (image pid -> our pid; the same numbers unless the tree has
    /// a pid namespace of its own): files under `/proc/PID` of one of them are not
    /// checked before the tree exists, and are opened in our `/proc` under our pid.
    pub fn set_tree_pids(&mut self, pids: impl IntoIterator<Item = (i32, i32)>) {
        self.reg.tree_pids = pids.into_iter().collect();
    }

    /// The tree was renumbered (a new pid namespace; `pids`: image pid -> our pid): the
    /// owners of the files' signals, saved as the tree numbers them (as CRIU saves them),
    /// become ours, as the restorer sets them from outside the tree's namespace. An
    /// owner that is no task of the tree keeps its number. Call once.
    pub fn renumber_owners(&mut self, pids: &HashMap<i32, i32>) {
        for file in self.files.values_mut() {
            let Some(fown) = fown_of_mut(file) else {
                continue;
            };
            if let Some(&ours) = i32::try_from(fown.pid).ok().and_then(|p| pids.get(&p)) {
                fown.pid = ours as u32;
            }
        }
    }

    /// `--shell-job`, as CRIU does it: the job's terminal (a pty slave whose master is not
    /// in the dump) is replaced by `terminal`, the restorer's own (None when the
    /// restorer has no terminal: such a job is then refused).
    pub fn inherit_terminal(&mut self, terminal: Option<OwnedFd>) {
        self.shell_job = true;
        self.ttys.inherited_terminal = terminal;
    }

    /// The row of the kind table (see [`kinds`](super::kinds)) of a file entry, and what
    /// to call it in messages; `Err` for an inconsistent image.
    pub(super) fn file_kind(&self, file: &pb::FileEntry) -> Result<(Kind, String)> {
        use pb::FdTypes as T;
        let id = file.id;
        let ty = T::try_from(file.r#type).unwrap_or(T::Und);
        Ok(match ty {
            T::Reg => self.reg_kind(self.member(id, |f| f.reg.as_ref())?),
            T::Pipe => pipe::pipe_kind(self.member(id, |f| f.pipe.as_ref())?),
            T::Fifo => (Kind::Fifo, format!("file {id}")),
            T::Unixsk => self.unix_kind(id, self.member(id, |f| f.usk.as_ref())?),
            T::Inetsk => self.inet_kind(self.member(id, |f| f.isk.as_ref())?),
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
            T::Pidfd => pidfd::restore_kind(id, self.member(id, |f| f.pidfd.as_ref())?),
            // CRIU's entry for a file a plugin dumped: ours for message queues.
            T::Ext if io_uring_of(file).is_some() => (Kind::IoUring, format!("ring {id}")),
            T::Ext => self
                .mqueue_kind(id)
                .unwrap_or_else(|| (Kind::OtherFile, format!("{} file {id}", ty.as_str_name()))),
            T::Und | T::CtlTty | T::AutofsPipe => {
                (Kind::OtherFile, format!("{} file {id}", ty.as_str_name()))
            }
        })
    }

    /// Refuses, as the kind table says, a file of a kind this restore does not rebuild
    /// (with the options it was given).
    pub(super) fn check_kind(&self, pid: Pid, at: &FileRef, file: &pb::FileEntry) -> Result<()> {
        let (kind, what) = self.file_kind(file)?;
        let inherit_fd = file
            .reg
            .as_ref()
            .is_some_and(|r| self.reg.inherited.contains_key(&r.name));
        let given = Given {
            shell_job: self.shell_job || self.ttys.orphan_pts,
            inherit_fd,
            ext_unix_sk: self.ext_unix_sk,
            file_locks: self.locks.enabled,
            tcp_established: self.tcp.established || self.tcp.close,
            ..Given::default()
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

    pub(super) fn check_one(
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
            T::Unixsk => self.check_unix(pid, at, self.member(id, |f| f.usk.as_ref())?, numbers),
            T::Inetsk => self.check_inet(pid, at, self.member(id, |f| f.isk.as_ref())?),
            T::Netlinksk => {
                let ns_id = self.member(id, |f| f.nlsk.as_ref())?.ns_id;
                self.check_sk_netns(pid, at, Kind::Netlink, ns_id)
            }
            T::Packetsk => {
                let ns_id = self.member(id, |f| f.psk.as_ref())?.ns_id;
                self.check_sk_netns(pid, at, Kind::Packet, ns_id)
            }
            T::Eventfd => self.member(id, |f| f.efd.as_ref()).map(drop),
            T::Signalfd => self.member(id, |f| f.sgfd.as_ref()).map(drop),
            T::Timerfd => self.member(id, |f| f.tfd.as_ref()).map(drop),
            T::Inotify => self.check_inotify(at, self.member(id, |f| f.ify.as_ref())?),
            T::Fanotify => self.check_fanotify(at, self.member(id, |f| f.ffy.as_ref())?),
            // Its interest list: `check_epolls`, over every task holding it.
            T::Eventpoll => self.member(id, |f| f.epfd.as_ref()).map(drop),
            T::Memfd => self.check_memfd(at, self.member(id, |f| f.memfd.as_ref())?),
            T::Ns => self.check_ns(pid, at, self.member(id, |f| f.nsf.as_ref())?),
            T::Tty => self.check_tty(pid, at, self.member(id, |f| f.tty.as_ref())?),
            T::Ext if self.mqueue_kind(id).is_some() => self.check_mqueue(pid, at),
            T::Ext if io_uring_of(self.file(id)?).is_some() => Ok(()),
            T::Pidfd => self.check_pidfd(pid, at, self.member(id, |f| f.pidfd.as_ref())?),
            other => Err(at.unsupported(pid, format!("files of kind {}", other.as_str_name()))),
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

    /// The memfd holding the region that a task's mapping of ring `id` at mmap offset
    /// `pgoff` maps, and the offset in it; the ring is made first if it is not yet.
    pub fn ring_region(&mut self, id: u32, pgoff: u64) -> Result<(BorrowedFd<'_>, u64)> {
        self.open(id, &[])?;
        let regions = self
            .rings
            .get(&id)
            .ok_or_else(|| bad("files.img", format!("file {id} is no io_uring ring")))?;
        let (file, offset) = regions.region_at(pgoff);
        Ok((file.as_fd(), offset))
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
                if inet_raw::handles(ie.r#type as i32, ie.proto as i32) {
                    inet_raw::open_raw(at, &ie)?
                } else if tcp::is_connection(&ie) {
                    self.open_tcp(at, &ie)?
                } else {
                    let shared = self.shares_port(&ie);
                    inet::open_inet(at, &ie, shared, &mut self.ports_later)?
                }
            }
            T::Netlinksk => netlink::open_netlink(at, self.member(id, |f| f.nlsk.as_ref())?)?,
            T::Packetsk => packet::open_packet(at, self.member(id, |f| f.psk.as_ref())?)?,
            T::Eventfd => anon::open_eventfd(at, self.member(id, |f| f.efd.as_ref())?)?,
            T::Signalfd => anon::open_signalfd(at, self.member(id, |f| f.sgfd.as_ref())?)?,
            T::Timerfd => anon::open_timerfd(at, self.member(id, |f| f.tfd.as_ref())?)?,
            T::Inotify => {
                let ify = self.member(id, |f| f.ify.as_ref())?.clone();
                self.open_inotify(at, &ify)?
            }
            T::Fanotify => {
                let ffy = self.member(id, |f| f.ffy.as_ref())?.clone();
                self.open_fanotify(at, &ffy)?
            }
            T::Eventpoll => anon::open_epoll(at, self.member(id, |f| f.epfd.as_ref())?)?,
            T::Memfd => {
                let m = *self.member(id, |f| f.memfd.as_ref())?;
                self.open_memfd(at, &m)?
            }
            T::Ns => self.open_ns(at, self.member(id, |f| f.nsf.as_ref())?)?,
            T::Tty => {
                let tty = *self.member(id, |f| f.tty.as_ref())?;
                self.open_tty(at, &tty)?
            }
            T::Ext if self.mqueue_kind(id).is_some() => {
                let fown = self.member(id, |f| f.ext.as_ref())?.fown;
                self.open_mqueue(at, &fown)?
            }
            T::Ext if io_uring_of(&file).is_some() => {
                let ext = file.ext.as_ref().expect("io_uring_of found it");
                let ring = ext.io_uring.as_ref().expect("io_uring_of found it");
                let (fd, regions) = io_uring::open_ring(at, ring, &ext.fown)?;
                self.rings.insert(id, regions);
                fd
            }
            T::Pidfd => {
                let e = *self.member(id, |f| f.pidfd.as_ref())?;
                self.open_pidfd(at, &e)?
            }
            other => {
                return Err(
                    at.refused(format!("files of kind {} {NO_OPENER}", other.as_str_name()))
                );
            }
        };
        self.given.insert(id, fd);
        Ok(())
    }
}

// -------------------------------------------------------------------------------------
// Helpers every kind uses
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

/// The owner of a file's signals, in whichever entry of its kind holds it.
fn fown_of_mut(file: &mut pb::FileEntry) -> Option<&mut pb::FownEntry> {
    let f = file;
    let fown = if let Some(e) = &mut f.reg {
        &mut e.fown
    } else if let Some(e) = &mut f.isk {
        &mut e.fown
    } else if let Some(e) = &mut f.psk {
        &mut e.fown
    } else if let Some(e) = &mut f.nlsk {
        &mut e.fown
    } else if let Some(e) = &mut f.efd {
        &mut e.fown
    } else if let Some(e) = &mut f.epfd {
        &mut e.fown
    } else if let Some(e) = &mut f.sgfd {
        &mut e.fown
    } else if let Some(e) = &mut f.tfd {
        &mut e.fown
    } else if let Some(e) = &mut f.ify {
        &mut e.fown
    } else if let Some(e) = &mut f.ffy {
        &mut e.fown
    } else if let Some(e) = &mut f.ext {
        &mut e.fown
    } else if let Some(e) = &mut f.usk {
        &mut e.fown
    } else if let Some(e) = &mut f.pipe {
        &mut e.fown
    } else if let Some(e) = &mut f.tty {
        &mut e.fown
    } else if let Some(e) = &mut f.memfd {
        &mut e.fown
    } else if let Some(e) = &mut f.bpf {
        &mut e.fown
    } else if let Some(e) = &mut f.pidfd {
        &mut e.fown
    } else {
        return None;
    };
    Some(fown)
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

#[cfg(test)]
#[path = "restore_tests/mod.rs"]
mod tests;
