//! fanotify groups and their marks.
//!
//! Dump: the group's `fanotify_init()` flags and event flags, and each mark from fdinfo
//! as CRIU records it: an inode mark by the inode's file handle (with the path it can be
//! reached by as a hint, as for inotify watches), a mount mark by its mount id and the
//! mount point the task sees. Marks on a whole filesystem (`FAN_MARK_FILESYSTEM`) have
//! no entry in CRIU's format and are refused, as are inode marks on an inode the restore
//! could not find again (no handle, or deleted). Events queued and not read yet are not
//! saved (as CRIU): the restored group starts with an empty queue.
//!
//! Restore: a new group with the same flags, and each mark again on the same inode
//! (opened by its path hint or its file handle) or on the mount of the same mount point,
//! with its mask, its ignored mask and its flags.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use criu_images::pb;

use super::dump::{FileError, OpenFd};
use super::fdinfo::{self, FanotifyTarget};
use super::inotify::{in_our_mount_ns, watched_path};
use super::restore::{bad, finish, FileOpener, FileRef, Result};
use crate::proc::MountTable;
use crate::sys;

/// `FAN_MARK_*` flags of linux/fanotify.h.
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_EVICTABLE: u32 = 0x200;
/// The newer way to set an ignore mask (since 6.0), which fdinfo shows in `mflags`.
const FAN_MARK_IGNORE: u32 = 0x400;
/// The mark flags fdinfo shows and fanotify_mark() takes back.
const KEPT_MARK_FLAGS: u32 = FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE | FAN_MARK_IGNORE;

// --- dump ------------------------------------------------------------------------

pub(super) fn dump(fd: &OpenFd<'_>, id: u32) -> Result<pb::FanotifyFileEntry, FileError> {
    let group = fdinfo::parse_fanotify(&fd.fdinfo).map_err(fd.parse_err())?;
    let ours = in_our_mount_ns(fd.pid);
    let mounts = if ours {
        MountTable::read_self().map_err(fd.io("read /proc/self/mountinfo"))?
    } else {
        MountTable::default()
    };
    let mut task_mounts = None;
    let min_words = pb::FhEntrySizes::MinEntries as usize;
    let mut marks = Vec::with_capacity(group.marks.len());
    for m in group.marks {
        let (kind, s_dev, ie, me) = match m.target {
            FanotifyTarget::Filesystem { sdev } => {
                return Err(fd.unsupported(format!(
                    "fanotify mark on the whole filesystem of device {sdev:#x} \
                     (FAN_MARK_FILESYSTEM): CRIU's images have no entry for it"
                )))
            }
            FanotifyTarget::Inode { ino, sdev, handle } => {
                let Some((bytes, kind, handle)) = handle else {
                    return Err(fd.unsupported(format!(
                        "fanotify mark on inode {ino} without a file handle"
                    )));
                };
                check_inode(fd, &mounts, ours, ino, sdev, kind, &handle[..])?;
                let watch = fdinfo::InotifyWatch {
                    wd: 0,
                    ino,
                    sdev,
                    mask: m.mask,
                    ignored_mask: m.ignored_mask,
                    handle: Some((bytes, kind, handle.clone())),
                };
                let hint = watched_path(&mounts, &watch);
                let mut padded = handle;
                padded.resize(padded.len().next_multiple_of(8).max(min_words * 8), 0);
                let ie = pb::FanotifyInodeMarkEntry {
                    i_ino: ino,
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
                };
                (pb::MarkType::Inode, sdev, Some(ie), None)
            }
            FanotifyTarget::Mount { mnt_id } => {
                if task_mounts.is_none() {
                    let path = format!("/proc/{}/mountinfo", fd.pid.0);
                    let text = std::fs::read(&path).map_err(fd.io("read the task's mountinfo"))?;
                    let table = MountTable::parse(text)
                        .map_err(|e| fd.unsupported(format!("{path} could not be read: {e}")))?;
                    task_mounts = Some(table);
                }
                let mount = task_mounts
                    .iter()
                    .flat_map(|t| t.0.iter())
                    .find(|mount| mount.mnt_id == mnt_id)
                    .ok_or_else(|| {
                        fd.unsupported(format!(
                            "fanotify mark on mount {mnt_id}, which the task's mountinfo lacks"
                        ))
                    })?;
                let me = pb::FanotifyMountMarkEntry {
                    mnt_id,
                    path: Some(criu_images::path_bytes(&mount.mountpoint)),
                };
                (pb::MarkType::Mount, mount.s_dev, None, Some(me))
            }
        };
        marks.push(pb::FanotifyMarkEntry {
            id,
            r#type: kind as i32,
            mflags: m.mflags,
            mask: m.mask,
            ignored_mask: m.ignored_mask,
            s_dev,
            ie,
            me,
        });
    }
    Ok(pb::FanotifyFileEntry {
        id,
        flags: fd.common.flags,
        fown: fd.fown()?,
        faflags: group.flags,
        evflags: group.event_flags,
        mark: marks,
    })
}

/// Refuses a mark on an inode the restore could not open again: one that is deleted
/// (its handle is stale, or it has no links left). Only checked when the task sees our
/// mounts (the handle is opened through them).
fn check_inode(
    fd: &OpenFd<'_>,
    mounts: &MountTable,
    ours: bool,
    ino: u64,
    sdev: u32,
    kind: u32,
    handle: &[u8],
) -> Result<(), FileError> {
    if !ours {
        return Ok(());
    }
    let deleted = match mounts.open_by_handle(sdev, kind as i32, handle, libc::O_PATH) {
        Ok((opened, _)) => {
            File::from(opened)
                .metadata()
                .map_err(fd.io("stat the inode of a fanotify mark"))?
                .nlink()
                == 0
        }
        Err(e) => e.raw_os_error() == Some(libc::ESTALE),
    };
    if deleted {
        return Err(fd.unsupported(format!(
            "fanotify mark on inode {ino} of device {sdev:#x}, which is deleted: the \
             restore reopens a marked inode by its file handle"
        )));
    }
    Ok(())
}

// --- restore ---------------------------------------------------------------------

impl FileOpener {
    /// Every mark must be of a known type with its entry, and its object must be there.
    pub(super) fn check_fanotify(&self, at: &FileRef, ffy: &pb::FanotifyFileEntry) -> Result<()> {
        let mounts = if ffy.mark.is_empty() {
            MountTable::default()
        } else {
            MountTable::read_self().map_err(at.io("read /proc/self/mountinfo"))?
        };
        for m in &ffy.mark {
            mark_target(at, m, &mounts)?;
        }
        Ok(())
    }

    pub(super) fn open_fanotify(
        &mut self,
        at: &FileRef,
        ffy: &pb::FanotifyFileEntry,
    ) -> Result<OwnedFd> {
        // The flags exactly as dumped (fdinfo shows them): no FAN_CLOEXEC added, the
        // descriptor flag is set apart.
        let fd = sys::fanotify_init(ffy.faflags, ffy.evflags).map_err(at.io(format!(
            "create a fanotify group (flags {:#x}, event flags {:#x})",
            ffy.faflags, ffy.evflags
        )))?;
        sys::fcntl_set(fd.as_fd(), libc::F_SETFD, libc::FD_CLOEXEC)
            .map_err(at.io("make the fanotify group close-on-exec"))?;
        let mounts = if ffy.mark.is_empty() {
            MountTable::default()
        } else {
            MountTable::read_self().map_err(at.io("read /proc/self/mountinfo"))?
        };
        for m in &ffy.mark {
            let target = mark_target(at, m, &mounts)?;
            let path = format!("/proc/self/fd/{}", target.as_raw_fd());
            let path = Path::new(&path);
            let mut flags = FAN_MARK_ADD | (m.mflags & KEPT_MARK_FLAGS & !FAN_MARK_IGNORE);
            if m.r#type == pb::MarkType::Mount as i32 {
                flags |= FAN_MARK_MOUNT;
            }
            if m.mask != 0 {
                sys::fanotify_mark(fd.as_fd(), flags, m.mask.into(), path).map_err(at.io(
                    format!("add fanotify mask {:#x} (flags {flags:#x})", m.mask),
                ))?;
            }
            if m.ignored_mask != 0 {
                let how = if m.mflags & FAN_MARK_IGNORE != 0 {
                    FAN_MARK_IGNORE
                } else {
                    FAN_MARK_IGNORED_MASK
                };
                sys::fanotify_mark(fd.as_fd(), flags | how, m.ignored_mask.into(), path).map_err(
                    at.io(format!(
                        "add fanotify ignored mask {:#x} (flags {:#x})",
                        m.ignored_mask,
                        flags | how
                    )),
                )?;
            }
        }
        finish(at, fd.as_fd(), ffy.flags, &ffy.fown)?;
        Ok(fd)
    }
}

/// Opens (`O_PATH`) what a mark is on: the inode by its path hint or file handle, or the
/// mount point of a mount mark.
fn mark_target(at: &FileRef, m: &pb::FanotifyMarkEntry, mounts: &MountTable) -> Result<OwnedFd> {
    let what = |detail: &str| {
        bad(
            "files.img",
            format!("fanotify file {} mark {detail}", at.id),
        )
    };
    match pb::MarkType::try_from(m.r#type) {
        Ok(pb::MarkType::Mount) => {
            let me =
                m.me.as_ref()
                    .ok_or_else(|| what("of a mount without its entry"))?;
            let path = me
                .path
                .as_deref()
                .map(criu_images::path_of)
                .ok_or_else(|| what("of a mount without its mount point"))?;
            sys::open_path(path, libc::O_PATH | libc::O_CLOEXEC, 0)
                .map_err(at.io(format!("open marked mount {}", path.display())))
        }
        Ok(pb::MarkType::Inode) => {
            let ie =
                m.ie.as_ref()
                    .ok_or_else(|| what("of an inode without its entry"))?;
            let fh = &ie.f_handle;
            if let Some(path) = fh.path.as_deref().map(criu_images::path_of) {
                return sys::open_path(path, libc::O_PATH | libc::O_CLOEXEC, 0)
                    .map_err(at.io(format!("open marked {}", path.display())));
            }
            let bytes: Vec<u8> = fh.handle.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let handle = bytes
                .get(..fh.bytes as usize)
                .ok_or_else(|| what("with a short file handle"))?;
            mounts
                .open_by_handle(m.s_dev, fh.r#type as i32, handle, libc::O_PATH)
                .map(|(fd, _)| fd)
                .map_err(at.io(format!(
                    "open marked inode {} of device {:#x} by its file handle",
                    ie.i_ino, m.s_dev
                )))
        }
        Err(_) => Err(what(&format!("of unknown type {}", m.r#type))),
    }
}
