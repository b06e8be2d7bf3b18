//! The smaller kinds: eventfd, epoll, signalfd, timerfd, inotify (all read from
//! fdinfo), memfd, and pseudo-terminals.

use std::collections::{HashMap, HashSet};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use criu_images::pb;

use super::dump::{self_fd_path, writer, FileError, OpenFd};
use super::fdinfo;
use super::kinds::{Given, Kind};
use crate::dump::ids::ns_inode;
use crate::proc::MountTable;
use crate::sys::{self, Pid};

/// Whether an eventfd is in semaphore mode (its own row in the kind table).
pub(super) fn eventfd_semaphore(fd: &OpenFd<'_>) -> Result<bool, FileError> {
    Ok(fdinfo::parse_eventfd(&fd.fdinfo)
        .map_err(fd.parse_err())?
        .semaphore)
}

/// Refuses what the eventfd code cannot record (semaphore mode, which the image has no
/// field for; also refused by the kind table).
pub(super) fn check_eventfd(fd: &OpenFd<'_>) -> Result<(), FileError> {
    if eventfd_semaphore(fd)? {
        return Err(fd.unsupported(
            "eventfd in semaphore mode (EFD_SEMAPHORE), which the image cannot record",
        ));
    }
    Ok(())
}

pub(super) fn eventfd(fd: &OpenFd<'_>, id: u32) -> Result<pb::EventfdFileEntry, FileError> {
    let e = fdinfo::parse_eventfd(&fd.fdinfo).map_err(fd.parse_err())?;
    Ok(pb::EventfdFileEntry {
        id,
        flags: fd.common.flags,
        fown: fd.fown()?,
        counter: e.count,
    })
}

/// An epoll instance and what it watches. Each target is recorded under a descriptor
/// number of the same task that holds that very file (checked with kcmp), since restore
/// re-adds targets by fd number.
pub(super) fn eventpoll(fd: &OpenFd<'_>, id: u32) -> Result<pb::EventpollFileEntry, FileError> {
    let targets = fdinfo::parse_epoll(&fd.fdinfo).map_err(fd.parse_err())?;
    let mut tfds = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        // The same number may be registered twice (a closed fd's file, then a new
        // one): kcmp tells them apart by their rank under that number.
        let toff = targets[..i].iter().filter(|o| o.tfd == t.tfd).count() as u32;
        let holds = |n: i32| match sys::kcmp_epoll_tfd(fd.pid, n, fd.pid, fd.fd, t.tfd, toff) {
            Ok(same) => Ok(same),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBADF) | Some(libc::ENOENT)) => {
                Ok(false)
            }
            Err(e) => Err(fd.io("compare an epoll target (kcmp)")(e)),
        };
        let tfd = if fd.task_fds.contains(&t.tfd) && holds(t.tfd)? {
            t.tfd
        } else {
            let mut found = None;
            for &n in fd.task_fds {
                if n != fd.fd && holds(n)? {
                    found = Some(n);
                    break;
                }
            }
            found.ok_or_else(|| {
                fd.unsupported(format!(
                    "epoll watching a file the task no longer holds (added as fd {})",
                    t.tfd
                ))
            })?
        };
        tfds.push(pb::EventpollTfdEntry {
            // CRIU 4.2 leaves the id of targets nested in their epoll entry at 0.
            id: 0,
            tfd: tfd as u32,
            events: t.events,
            data: t.data,
            dev: t.sdev,
            inode: t.ino,
            pos: t.pos,
        });
    }
    Ok(pb::EventpollFileEntry {
        id,
        flags: fd.common.flags,
        fown: fd.fown()?,
        tfd: tfds,
    })
}

pub(super) fn signalfd(fd: &OpenFd<'_>, id: u32) -> Result<pb::SignalfdEntry, FileError> {
    let sigmask = fdinfo::parse_signalfd(&fd.fdinfo).map_err(fd.parse_err())?;
    Ok(pb::SignalfdEntry {
        id,
        flags: fd.common.flags,
        fown: fd.fown()?,
        sigmask,
    })
}

pub(super) fn timerfd(fd: &OpenFd<'_>, id: u32) -> Result<pb::TimerfdEntry, FileError> {
    let t = fdinfo::parse_timerfd(&fd.fdinfo).map_err(fd.parse_err())?;
    Ok(pb::TimerfdEntry {
        id,
        flags: fd.common.flags,
        fown: fd.fown()?,
        clockid: t.clockid,
        ticks: t.ticks,
        settime_flags: t.settime_flags,
        vsec: t.value.0,
        vnsec: t.value.1,
        isec: t.interval.0,
        insec: t.interval.1,
    })
}

/// Refuses watches the kernel could not give a file handle for, and watches on deleted
/// inodes the restore cannot find again. The restore reopens a watched inode by its
/// file handle, and a deleted inode is gone once the tree is killed, except one this
/// process holds open as a regular file: that one is saved as a ghost file, and the
/// restore watches the recreated file (matched by device and inode).
pub(super) fn check_inotify(fd: &OpenFd<'_>) -> Result<(), FileError> {
    let watches = fdinfo::parse_inotify(&fd.fdinfo).map_err(fd.parse_err())?;
    let mut mounts = None;
    for w in watches {
        let Some((bytes, kind, handle)) = &w.handle else {
            return Err(fd.unsupported(format!(
                "inotify watch {} on inode {} without a file handle",
                w.wd, w.ino
            )));
        };
        let Some(handle) = handle.get(..*bytes as usize) else {
            continue;
        };
        if mounts.is_none() {
            mounts = Some(MountTable::read_self().map_err(fd.io("read /proc/self/mountinfo"))?);
        }
        let Some(mounts) = &mounts else { continue };
        let deleted = match mounts.open_by_handle(w.sdev, *kind as i32, handle, libc::O_PATH) {
            Ok((opened, _)) => {
                File::from(opened)
                    .metadata()
                    .map_err(fd.io("stat the inode of an inotify watch"))?
                    .nlink()
                    == 0
            }
            // The handle names an inode that no longer exists on disk.
            Err(e) => e.raw_os_error() == Some(libc::ESTALE),
        };
        if deleted && !holds_open_file(fd.pid, w.sdev, w.ino) {
            return Err(fd.unsupported(format!(
                "inotify watch {} on inode {} of device {:#x}, which is deleted and not open \
                 as a regular file in this process: the restore reopens a watched inode by \
                 its file handle, and a deleted inode is gone once the tree is killed",
                w.wd, w.ino, w.sdev
            )));
        }
    }
    Ok(())
}

/// Whether `pid` has a regular file open on inode `ino` of the device the kernel calls
/// `kernel_dev` (the `MKDEV` encoding inotify's fdinfo shows: major << 20 | minor).
fn holds_open_file(pid: Pid, kernel_dev: u32, ino: u64) -> bool {
    let (major, minor) = (kernel_dev >> 20, kernel_dev & 0xf_ffff);
    let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", pid.0)) else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::metadata(e.path()).is_ok_and(|m| {
            m.is_file()
                && m.ino() == ino
                && (libc::major(m.dev()), libc::minor(m.dev())) == (major, minor)
        })
    })
}

pub(super) fn inotify(fd: &OpenFd<'_>, id: u32) -> Result<pb::InotifyFileEntry, FileError> {
    check_inotify(fd)?;
    let min_words = pb::FhEntrySizes::MinEntries as usize;
    let watches = fdinfo::parse_inotify(&fd.fdinfo).map_err(fd.parse_err())?;
    let mounts = if !watches.is_empty() && in_our_mount_ns(fd.pid) {
        MountTable::read_self().map_err(fd.io("read /proc/self/mountinfo"))?
    } else {
        MountTable::default()
    };
    let wd = watches
        .into_iter()
        .map(|w| {
            let hint = watched_path(&mounts, &w);
            let (bytes, kind, handle) = w.handle.unwrap_or_default();
            let mut padded = handle;
            padded.resize(padded.len().next_multiple_of(8).max(min_words * 8), 0);
            pb::InotifyWdEntry {
                id,
                i_ino: w.ino,
                mask: w.mask,
                ignored_mask: w.ignored_mask,
                s_dev: w.sdev,
                wd: w.wd,
                f_handle: pb::FhEntry {
                    bytes,
                    r#type: kind,
                    handle: padded
                        .chunks_exact(8)
                        .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
                        .collect(),
                    mnt_id: hint.as_ref().map(|(_, mnt_id)| *mnt_id),
                    path: hint.map(|(path, _)| path),
                },
            }
        })
        .collect();
    Ok(pb::InotifyFileEntry {
        id,
        flags: fd.common.flags,
        fown: fd.fown()?,
        wd,
    })
}

/// Whether `pid` sees the mounts this process sees, so that paths read here are its paths.
fn in_our_mount_ns(pid: Pid) -> bool {
    let ours = Pid(std::process::id() as i32);
    match (ns_inode(pid, "mnt"), ns_inode(ours, "mnt")) {
        (Ok(theirs), Ok(ours)) => theirs == ours,
        _ => false,
    }
}

/// The path of a watched inode and the id of the mount it was reached through, which
/// CRIU records beside the file handle (`f_handle.path`, `mnt_id`): CRIU's restore
/// reopens a watch by that path, as it can look a device up only in mountpoints
/// images. `None` when `mounts` is empty (another mount namespace) or the inode has no
/// path that still leads to it (unlinked, or renamed over).
fn watched_path(mounts: &MountTable, w: &fdinfo::InotifyWatch) -> Option<(Vec<u8>, u32)> {
    let (bytes, kind, handle) = w.handle.as_ref()?;
    let handle = handle.get(..*bytes as usize)?;
    let (opened, mount) = mounts
        .open_by_handle(w.sdev, *kind as i32, handle, libc::O_PATH)
        .ok()?;
    let path = std::fs::read_link(self_fd_path(opened.as_fd())).ok()?;
    let meta = std::fs::symlink_metadata(&path).ok()?;
    (meta.ino() == w.ino).then(|| (criu_images::path_bytes(&path), mount.mnt_id))
}

/// A memfd (or shared anonymous memory) inode: its contents are saved by the memory
/// dumper as shared memory `shmid`, read through [`MemfdInode::file`].
#[derive(Debug)]
pub struct MemfdInode {
    /// Its `memfd_inode_entry.inode_id`.
    pub inode_id: u32,
    /// The shared memory id its pages are dumped under (the inode number, as CRIU).
    pub shmid: u32,
    /// Bytes: a memfd's name need not be UTF-8.
    pub name: Vec<u8>,
    pub size: u64,
    /// The task and descriptor it was first met through (`None` for a mapping).
    pub holder: Option<(Pid, i32)>,
    file: File,
}

impl MemfdInode {
    /// A readable descriptor on the memfd, for `pread` of its contents.
    pub fn file(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The memfd inodes of a dump, each once, and their `memfd.img` entries.
#[derive(Default)]
pub(super) struct Memfds {
    inodes: Vec<MemfdInode>,
    entries: Vec<pb::MemfdInodeEntry>,
    by_inode: HashMap<(u64, u64), u32>,
}

/// The memfd name shown in a link: `/memfd:NAME (deleted)` is NAME; others (such as
/// `/dev/zero (deleted)` for shared anonymous memory) are kept whole, as CRIU does.
fn memfd_name(link: &[u8]) -> Vec<u8> {
    let link = link.strip_suffix(b" (deleted)").unwrap_or(link);
    link.strip_prefix(b"/memfd:").unwrap_or(link).to_vec()
}

impl Memfds {
    pub(super) fn inodes(&self) -> &[MemfdInode] {
        &self.inodes
    }

    /// The inode id of the memfd `file` (which `meta` describes), recording it if new.
    fn inode(
        &mut self,
        name: Vec<u8>,
        file: BorrowedFd<'_>,
        meta: &Metadata,
        holder: Option<(Pid, i32)>,
    ) -> io::Result<u32> {
        if let Some(&id) = self.by_inode.get(&(meta.dev(), meta.ino())) {
            return Ok(id);
        }
        let inode_id = self.inodes.len() as u32 + 1;
        let seals = match sys::fcntl_get(file, libc::F_GET_SEALS) {
            Ok(s) => s as u32,
            // Files that do not support sealing at all count as sealed against sealing.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => libc::F_SEAL_SEAL as u32,
            Err(e) => return Err(e),
        };
        // A handle of our own that can always be read, whatever the task opened it for.
        let reader = match File::open(self_fd_path(file)) {
            Ok(f) => f,
            Err(_) => File::from(file.try_clone_to_owned()?),
        };
        self.entries.push(pb::MemfdInodeEntry {
            name: name.clone(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            shmid: meta.ino() as u32,
            seals,
            inode_id: inode_id.into(),
            hugetlb_flag: None,
            mode: Some(meta.mode()),
        });
        self.inodes.push(MemfdInode {
            inode_id,
            shmid: meta.ino() as u32,
            name,
            size: meta.size(),
            holder,
            file: reader,
        });
        self.by_inode.insert((meta.dev(), meta.ino()), inode_id);
        Ok(inode_id)
    }

    pub(super) fn dump_fd(
        &mut self,
        fd: &OpenFd<'_>,
        id: u32,
    ) -> Result<pb::MemfdFileEntry, FileError> {
        let name = memfd_name(fd.link.as_bytes());
        let inode_id = self
            .inode(name, fd.raw(), &fd.meta, Some((fd.pid, fd.fd)))
            .map_err(fd.io("read the memfd's seals"))?;
        Ok(pb::MemfdFileEntry {
            id,
            flags: fd.common.flags,
            pos: fd.common.pos,
            fown: fd.fown()?,
            inode_id,
        })
    }

    pub(super) fn dump_mapping(
        &mut self,
        link: &Path,
        file: BorrowedFd<'_>,
        id: u32,
        flags: u32,
        pos: u64,
    ) -> Result<pb::MemfdFileEntry, FileError> {
        let path = link.to_owned();
        let meta = File::from(
            file.try_clone_to_owned()
                .map_err(super::dump::path_io(&path, "duplicate the fd"))?,
        )
        .metadata()
        .map_err(super::dump::path_io(&path, "stat"))?;
        let inode_id = self
            .inode(memfd_name(link.as_os_str().as_bytes()), file, &meta, None)
            .map_err(super::dump::path_io(&path, "read the memfd's seals"))?;
        Ok(pb::MemfdFileEntry {
            id,
            flags,
            pos,
            fown: pb::FownEntry::default(),
            inode_id,
        })
    }

    pub(super) fn write(&self, dir: &Path) -> Result<(), FileError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let mut w = writer(dir, "MEMFD_INODE", "")?;
        for e in &self.entries {
            w.write_entry(e)?;
        }
        w.finish()?;
        Ok(())
    }
}

/// A Unix98 pseudo-terminal end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pty {
    pub master: bool,
    /// The pty number, when the device number tells it (slaves); masters opened
    /// through `/dev/ptmx` say it in fdinfo.
    pub index: Option<u32>,
}

const TTYAUX_MAJOR: u32 = 5;
const UNIX98_PTY_MASTER_MAJOR: u32 = 128;
const UNIX98_PTY_SLAVE_MAJOR: u32 = 136;
const UNIX98_PTY_MAJOR_COUNT: u32 = 8;

impl Pty {
    pub(super) fn from_rdev(rdev: u64) -> Option<Pty> {
        let (maj, min) = (libc::major(rdev), libc::minor(rdev));
        let index = |base: u32| (maj - base) * 256 + min;
        match maj {
            TTYAUX_MAJOR if min == 2 => Some(Pty {
                master: true,
                index: None,
            }),
            m if (UNIX98_PTY_MASTER_MAJOR..UNIX98_PTY_MASTER_MAJOR + UNIX98_PTY_MAJOR_COUNT)
                .contains(&m) =>
            {
                Some(Pty {
                    master: true,
                    index: Some(index(UNIX98_PTY_MASTER_MAJOR)),
                })
            }
            m if (UNIX98_PTY_SLAVE_MAJOR..UNIX98_PTY_SLAVE_MAJOR + UNIX98_PTY_MAJOR_COUNT)
                .contains(&m) =>
            {
                Some(Pty {
                    master: false,
                    index: Some(index(UNIX98_PTY_SLAVE_MAJOR)),
                })
            }
            _ => None,
        }
    }
}

/// The number of a pty end: from its device number (slaves), or for a master opened
/// through `/dev/ptmx` from fdinfo (or TIOCGPTN on older kernels).
pub(super) fn pty_index(fd: &OpenFd<'_>, pty: Pty) -> Result<u32, FileError> {
    Ok(match pty.index {
        Some(i) => i,
        None => match fdinfo::parse_tty_index(&fd.fdinfo) {
            Some(i) => i,
            None => sys::ioctl_get_int(fd.raw(), libc::TIOCGPTN as libc::c_ulong)
                .map_err(fd.io("read the pty number (TIOCGPTN)"))? as u32,
        },
    })
}

/// Terminal devices other than Unix98 ptys (consoles, virtual terminals, serial lines,
/// `/dev/tty`, BSD ptys): refused by name.
pub(super) fn is_tty_major(maj: u32, _min: u32) -> bool {
    matches!(maj, 2 | 3 | 4 | TTYAUX_MAJOR | 188 | 204)
        || (UNIX98_PTY_MASTER_MAJOR..UNIX98_PTY_SLAVE_MAJOR + UNIX98_PTY_MAJOR_COUNT).contains(&maj)
}

/// The terminals of a dump: one `tty_info_entry` per terminal end.
#[derive(Default)]
pub(super) struct Ttys {
    infos: Vec<pb::TtyInfoEntry>,
    done: HashSet<u32>,
    /// Every pty slave fd dumped: task, fd, pty number.
    slaves: Vec<(Pid, i32, u32)>,
}

/// `session`, `tty_nr` and `tpgid` of a task (fields 6 to 8 of `/proc/PID/stat`).
fn session_and_tty(pid: Pid) -> Option<(i64, u64, i64)> {
    // Bytes: the comm in it need not be UTF-8.
    let text =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/stat")).ok()?).into_owned();
    let rest: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    Some((
        rest.get(3)?.parse().ok()?,
        rest.get(4)?.parse::<i64>().ok()? as u64,
        rest.get(5)?.parse().ok()?,
    ))
}

fn termios_entry(t: &libc::termios) -> pb::TermiosEntry {
    // The kernel's struct termios has 19 control characters; glibc's has room for 32.
    const KERNEL_NCCS: usize = 19;
    pb::TermiosEntry {
        c_iflag: t.c_iflag,
        c_oflag: t.c_oflag,
        c_cflag: t.c_cflag,
        c_lflag: t.c_lflag,
        c_line: t.c_line.into(),
        c_ispeed: t.c_ispeed,
        c_ospeed: t.c_ospeed,
        c_cc: t.c_cc.iter().take(KERNEL_NCCS).map(|&c| c.into()).collect(),
    }
}

impl Ttys {
    pub(super) fn dump(
        &mut self,
        fd: &OpenFd<'_>,
        pty: Pty,
        id: u32,
        regf_id: u32,
    ) -> Result<pb::TtyFileEntry, FileError> {
        let index = pty_index(fd, pty)?;
        let tty_info_id = (index << 1) | u32::from(pty.master);
        if !pty.master {
            self.slaves.push((fd.pid, fd.fd, index));
        }
        if self.done.insert(tty_info_id) {
            let info = self.info(fd, pty, index, tty_info_id)?;
            self.infos.push(info);
        }
        Ok(pb::TtyFileEntry {
            id,
            tty_info_id,
            flags: fd.common.flags,
            fown: fd.fown()?,
            regf_id: Some(regf_id),
        })
    }

    fn info(
        &self,
        fd: &OpenFd<'_>,
        pty: Pty,
        index: u32,
        id: u32,
    ) -> Result<pb::TtyInfoEntry, FileError> {
        let s = fd.raw();
        let flag = |req: libc::Ioctl| -> Result<bool, FileError> {
            match sys::ioctl_get_int(s, req as libc::c_ulong) {
                Ok(v) => Ok(v != 0),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOTTY) | Some(libc::EINVAL) | Some(libc::EIO)
                    ) =>
                {
                    Ok(false)
                }
                Err(e) => Err(fd.io("read the terminal's state")(e)),
            }
        };
        let (sid, pgrp) = if pty.master {
            let get = |req: libc::Ioctl| {
                sys::ioctl_get_int(s, req as libc::c_ulong)
                    .unwrap_or(0)
                    .max(0) as u32
            };
            (get(libc::TIOCGSID), get(libc::TIOCGPGRP))
        } else {
            match session_and_tty(fd.pid) {
                Some((sid, tty_nr, tpgid)) if tty_nr == fd.meta.rdev() => {
                    (sid.max(0) as u32, tpgid.max(0) as u32)
                }
                _ => (0, 0),
            }
        };
        let mut info = pb::TtyInfoEntry {
            id,
            r#type: pb::TtyType::Pty as i32,
            locked: pty.master && flag(libc::TIOCGPTLCK)?,
            exclusive: flag(libc::TIOCGEXCL)?,
            packet_mode: pty.master && flag(libc::TIOCGPKT)?,
            sid,
            pgrp,
            rdev: fd.meta.rdev() as u32,
            termios: None,
            termios_locked: None,
            winsize: None,
            pty: Some(pb::TtyPtyEntry { index }),
            dev: Some(fd.meta.dev() as u32),
            uid: Some(fd.meta.uid()),
            gid: Some(fd.meta.gid()),
        };
        // A hung-up terminal answers EIO: only the above can be recorded.
        match sys::tty_termios(s, libc::TCGETS as libc::c_ulong) {
            Ok(t) => info.termios = Some(termios_entry(&t)),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(info),
            Err(e) => return Err(fd.io("read the terminal's settings (TCGETS)")(e)),
        }
        let locked = sys::tty_termios(s, libc::TIOCGLCKTRMIOS as libc::c_ulong)
            .map_err(fd.io("read the terminal's locked settings"))?;
        info.termios_locked = Some(termios_entry(&locked));
        let w = sys::tty_winsize(s).map_err(fd.io("read the terminal's window size"))?;
        info.winsize = Some(pb::WinsizeEntry {
            ws_row: w.ws_row.into(),
            ws_col: w.ws_col.into(),
            ws_xpixel: w.ws_xpixel.into(),
            ws_ypixel: w.ws_ypixel.into(),
        });
        Ok(info)
    }

    /// Judges every pty slave dumped, as the kind table says: one whose master is in the
    /// dump too is half of a pty pair, one whose master is not a shell job's terminal.
    /// Only known once every task is dumped (the checks before the freeze knew it from
    /// the whole tree, see [`super::TreeChecks`]).
    pub(super) fn check_pairs(&self, given: Given) -> Result<(), FileError> {
        for &(pid, fd, index) in &self.slaves {
            let kind = if self.done.contains(&((index << 1) | 1)) {
                Kind::PtySlavePaired
            } else {
                Kind::PtySlave
            };
            if let Some(why) = kind.dump_refusal(given) {
                return Err(FileError::Unsupported {
                    pid,
                    fd,
                    kind: format!("{kind} (/dev/pts/{index}): {why}"),
                });
            }
        }
        Ok(())
    }

    pub(super) fn write(&self, dir: &Path) -> Result<(), FileError> {
        if self.infos.is_empty() {
            return Ok(());
        }
        let mut w = writer(dir, "TTY_INFO", "")?;
        for e in &self.infos {
            w.write_entry(e)?;
        }
        w.finish()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_names() {
        assert_eq!(memfd_name(b"/memfd:hello (deleted)"), b"hello");
        assert_eq!(memfd_name(b"/dev/zero (deleted)"), b"/dev/zero");
        assert_eq!(memfd_name(b"/memfd:a b"), b"a b");
        assert_eq!(memfd_name(b"/memfd:\xff\xfe (deleted)"), b"\xff\xfe");
    }

    #[test]
    fn pty_devices() {
        assert_eq!(
            Pty::from_rdev(libc::makedev(5, 2)),
            Some(Pty {
                master: true,
                index: None
            })
        );
        assert_eq!(
            Pty::from_rdev(libc::makedev(136, 3)),
            Some(Pty {
                master: false,
                index: Some(3)
            })
        );
        assert_eq!(
            Pty::from_rdev(libc::makedev(137, 1)),
            Some(Pty {
                master: false,
                index: Some(257)
            })
        );
        assert_eq!(Pty::from_rdev(libc::makedev(4, 1)), None);
        assert!(is_tty_major(4, 1));
        assert!(!is_tty_major(1, 3));
    }
}
