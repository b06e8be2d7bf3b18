//! inotify instances and their watches.
//!
//! Dump: each watch from fdinfo (inode, device, mask, and the file handle the kernel
//! gives), with the path it can be reached by as a hint, as CRIU records it. A watch on
//! an inode the restore could not find again (no handle; deleted and not held open) is
//! refused.
//!
//! Restore: a new instance, and each watch on the same inode (opened by its path hint or
//! by file handle; a deleted one saved as a ghost file is the recreated file) with the
//! same watch descriptor (`INOTIFY_IOC_SETNEXTWD`).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use criu_images::{pb, ImageReader};

use super::dump::{self_fd_path, FileError, OpenFd};
use super::fdinfo;
use super::restore::{bad, finish, FileOpener, FileRef, Result};
use crate::dump::ids::ns_inode;
use crate::proc::MountTable;
use crate::sys::{self, Pid};

// --- dump ------------------------------------------------------------------------

/// Refuses watches the kernel could not give a file handle for, and watches on deleted
/// inodes the restore cannot find again. The restore reopens a watched inode by its
/// file handle, and a deleted inode is gone once the tree is killed, except one this
/// process holds open as a regular file: that one is saved as a ghost file, and the
/// restore watches the recreated file (matched by device and inode).
pub(super) fn check(fd: &OpenFd<'_>) -> Result<(), FileError> {
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
pub(super) fn holds_open_file(pid: Pid, kernel_dev: u32, ino: u64) -> bool {
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

pub(super) fn dump(fd: &OpenFd<'_>, id: u32) -> Result<pb::InotifyFileEntry, FileError> {
    check(fd)?;
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
pub(super) fn in_our_mount_ns(pid: Pid) -> bool {
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
pub(super) fn watched_path(
    mounts: &MountTable,
    w: &fdinfo::InotifyWatch,
) -> Option<(Vec<u8>, u32)> {
    let (bytes, kind, handle) = w.handle.as_ref()?;
    let handle = handle.get(..*bytes as usize)?;
    let (opened, mount) = mounts
        .open_by_handle(w.sdev, *kind as i32, handle, libc::O_PATH)
        .ok()?;
    let path = std::fs::read_link(self_fd_path(opened.as_fd())).ok()?;
    let meta = std::fs::symlink_metadata(&path).ok()?;
    (meta.ino() == w.ino).then(|| (criu_images::path_bytes(&path), mount.mnt_id))
}

// --- restore ---------------------------------------------------------------------

/// `_IOW('I', 0, __s32)` of linux/inotify.h (CONFIG_CHECKPOINT_RESTORE).
const INOTIFY_IOC_SETNEXTWD: libc::c_ulong = 0x4004_4900;
/// What an inotify watch mask may hold: the events, and the flags the kernel shows.
const INOTIFY_MASK: u32 = libc::IN_ALL_EVENTS | libc::IN_EXCL_UNLINK | libc::IN_ONESHOT;

impl FileOpener {
    /// Every watch's handle must fit its words, and every watched inode must still be
    /// there (or be a deleted file saved as a ghost, which is recreated).
    pub(super) fn check_inotify(&self, at: &FileRef, ify: &pb::InotifyFileEntry) -> Result<()> {
        for w in &ify.wd {
            let fh = &w.f_handle;
            if fh.path.is_none() && fh.bytes as usize > fh.handle.len() * 8 {
                return Err(bad(
                    "files.img",
                    format!(
                        "inotify file {} watch {} has a {}-byte handle in {} words",
                        at.id,
                        w.wd,
                        fh.bytes,
                        fh.handle.len()
                    ),
                ));
            }
        }
        // The watched inodes must still be there.
        let mounts = if ify.wd.is_empty() {
            MountTable::default()
        } else {
            MountTable::read_self().map_err(at.io("read /proc/self/mountinfo"))?
        };
        for w in &ify.wd {
            // A deleted inode saved as a ghost file is recreated, not reopened.
            if self.watched_ghost(w)?.is_none() {
                open_watched(at, w, &mounts)?;
            }
        }
        Ok(())
    }

    /// The ghost file (id, original path) of the deleted inode an inotify watch was on,
    /// if the dump saved that inode as one (a deleted file the process held open):
    /// matched by the device and inode the ghost image records. The watch's file handle
    /// names an inode that is gone; the restore watches the recreated file instead.
    fn watched_ghost(&self, w: &pb::InotifyWdEntry) -> Result<Option<(u32, PathBuf)>> {
        // inotify shows the kernel's device encoding: major << 20 | minor.
        let watched = (w.s_dev >> 20, w.s_dev & 0xf_ffff);
        let ghost_type = Some(pb::RemapType::Ghost as i32);
        let mut ghosts: Vec<(u32, u32)> = self
            .reg
            .remaps
            .iter()
            .filter(|(_, r)| r.remap_type == ghost_type)
            .map(|(&orig, r)| (orig, r.remap_id))
            .collect();
        ghosts.sort_unstable();
        for (orig, ghost_id) in ghosts {
            let image = format!("ghost-file-{ghost_id:x}.img");
            let g: pb::GhostFileEntry = ImageReader::open(self.dir.join(&image))?
                .next_entry()?
                .ok_or_else(|| bad(&image, "has no ghost_file_entry"))?;
            let (Some(dev), Some(ino)) = (g.dev, g.ino) else {
                continue;
            };
            // The kernel's encoding, as CRIU records it; older criu-rs dumps recorded the
            // C library's: either may match.
            let kernel = (dev >> 20, dev & 0xf_ffff);
            let libc_dev = u64::from(dev);
            let user = (libc::major(libc_dev), libc::minor(libc_dev));
            if ino != w.i_ino || (kernel != watched && user != watched) {
                continue;
            }
            let path = self
                .files
                .values()
                .filter_map(|f| f.reg.as_ref())
                .find(|r| r.id == orig)
                .map(|r| r.path().to_owned())
                .ok_or_else(|| bad("remap-fpath.img", format!("ghost {ghost_id} of no file")))?;
            return Ok(Some((ghost_id, path)));
        }
        Ok(None)
    }

    pub(super) fn open_inotify(
        &mut self,
        at: &FileRef,
        ify: &pb::InotifyFileEntry,
    ) -> Result<OwnedFd> {
        let fd = sys::inotify_init().map_err(at.io("create an inotify instance"))?;
        let mut watches: Vec<&pb::InotifyWdEntry> = ify.wd.iter().collect();
        watches.sort_by_key(|w| w.wd);
        let mounts = if watches.is_empty() {
            MountTable::default()
        } else {
            MountTable::read_self().map_err(at.io("read /proc/self/mountinfo"))?
        };
        for w in watches {
            let target = match self.watched_ghost(w)? {
                Some((ghost_id, path)) => self
                    .ghost(at, ghost_id, &path)?
                    .try_clone_to_owned()
                    .map_err(at.io("duplicate a recreated deleted file"))?,
                None => open_watched(at, w, &mounts)?,
            };
            let wd = i32::try_from(w.wd)
                .ok()
                .filter(|&wd| wd >= 1)
                .ok_or_else(|| bad("files.img", format!("inotify watch descriptor {}", w.wd)))?;
            sys::ioctl_set_value(fd.as_fd(), INOTIFY_IOC_SETNEXTWD, wd as u64).map_err(at.io(
                format!("ask for watch descriptor {wd} (INOTIFY_IOC_SETNEXTWD)"),
            ))?;
            let path = format!("/proc/self/fd/{}", target.as_raw_fd());
            let got = sys::inotify_add_watch(fd.as_fd(), Path::new(&path), w.mask & INOTIFY_MASK)
                .map_err(at.io(format!("watch inode {} with mask {:#x}", w.i_ino, w.mask)))?;
            if got != wd {
                return Err(at.refused(format!(
                    "inotify watch {wd}: the kernel gave watch descriptor {got}"
                )));
            }
        }
        finish(at, fd.as_fd(), ify.flags, &ify.fown)?;
        Ok(fd)
    }
}

/// Opens (`O_PATH`) the inode an inotify watch was on: by its path hint when the image
/// has one, else by file handle on a mount of its filesystem.
fn open_watched(at: &FileRef, w: &pb::InotifyWdEntry, mounts: &MountTable) -> Result<OwnedFd> {
    let fh = &w.f_handle;
    if let Some(path) = fh.path.as_deref().map(criu_images::path_of) {
        return sys::open_path(path, libc::O_PATH, 0)
            .map_err(at.io(format!("open watched {}", path.display())));
    }
    let bytes: Vec<u8> = fh.handle.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let handle = bytes.get(..fh.bytes as usize).ok_or_else(|| {
        bad(
            "files.img",
            format!("inotify watch {} has a short file handle", w.wd),
        )
    })?;
    mounts
        .open_by_handle(w.s_dev, fh.r#type as i32, handle, libc::O_PATH)
        .map(|(fd, _)| fd)
        .map_err(at.io(format!(
            "open watched inode {} of device {:#x} by its file handle",
            w.i_ino, w.s_dev
        )))
}
