//! File locks, both ways: `flock`, POSIX (`fcntl`, `lockf`) and OFD locks and
//! `F_SETLEASE` leases held through the tree's open files, recorded in `filelocks.img`
//! (CRIU's `file_lock_entry`: family, type, pid, fd, start, length) and taken again on
//! restore by the same process through the same open file description. Only with
//! `--file-locks`, as CRIU: without it a held lock is refused before the freeze.
//!
//! A lease being broken (an open conflicted with it: the holder got its signal, and the
//! kernel downgrades the lease when its break timer runs out) is recorded as CRIU does,
//! with the type it is being broken to and CRIU's `LEASE_BREAKING` bit, and broken again
//! on restore: the lease is taken with the type the fd's access mode allows, then an
//! open of our own that conflicts with it, without waiting, starts the break anew. The
//! holder is not signalled again (it was, before the dump: its file's signal owner is
//! cleared for that open), and the break timer starts from the beginning. An opener in
//! the tree that was waiting makes its open again after the restore, and waits on.
//!
//! # Who holds a lock
//!
//! The kernel shows on `/proc/PID/fdinfo/N` the locks taken through that fd's open file
//! description: its flock and OFD locks (the description owns them, so every process
//! holding it shows them), and the POSIX locks that the reading process's fd table owns
//! and took through it (a forked child sharing the description shows none of them).
//! Leases are the description's too. Hence one rule, the same as CRIU's: a flock, OFD
//! lock or lease is recorded once per open file description, with the first task and fd
//! the dump meets it on; a POSIX lock once
//! per process (it shows on each of the process's fds of that description), with that
//! process. Unlike CRIU, which drops every lock of a description met before, a POSIX
//! lock of a process that is not the description's first holder is kept: the lock is
//! that process's, whoever else holds the file.
//!
//! Blocked waiters (a task sleeping in `flock` or `F_SETLKW`) are not shown on fdinfo
//! and hold nothing: the freeze interrupts their call, which the restored task makes
//! again (it restarts, see the restart codes in `dump/task.rs`), so it waits on.
//!
//! # Taking them again
//!
//! Every lock is taken by the task the image names, through its fd, by an injected
//! `flock` or `fcntl` (`restore/fds.rs`): a POSIX lock belongs to the fd table of
//! whoever takes it, and flock and OFD locks and leases taken by the task show its pid
//! in /proc/locks as before (the task still has the restorer's credentials then, so a
//! lease on a file of another user is granted, as `CAP_LEASE` allows). It is done in stage 7, once the task's fd table is complete
//! and every descriptor the restore opened in it for its own use is closed again: a
//! process's POSIX locks on a file go when it closes any fd of that file. The calls do
//! not wait (`LOCK_NB`, `F_SETLK`, `F_OFD_SETLK`): a lock someone outside the tree took
//! since the dump fails the restore, which then kills the half-built tree, releasing
//! what it took (CRIU waits for POSIX locks instead, with `F_SETLKW`).
//!
//! Locks of the tree never conflict with each other: they were all held at once. Nor
//! do the restore's opens break a lease: it opens each open file description once, as
//! the tree held it. The dump must not open a leased file either (a read open breaks a
//! write lease, and waits for the frozen holder): `reg.rs` asks [`holds_lease`] first.
//!
//! Processes sharing an fd table (`CLONE_FILES` without `CLONE_THREAD`) are rebuilt one
//! after the other, and the restore's own opens and closes in a later one (its cwd, its
//! exe, the files it maps) would drop a POSIX lock an earlier one took again on the same
//! file: the table's POSIX locks are taken by the last of them (`restore/fds.rs`), the
//! owner the same (the table), only the pid /proc/locks shows differs.

use std::collections::HashSet;
use std::fmt;
use std::os::fd::AsFd;
use std::path::Path;

use criu_images::flags::file_lock::{FL_FLOCK, FL_LEASE, FL_OFD, FL_POSIX};
use criu_images::pb;

use super::dump::{writer, FileError, OpenFd};
use super::fdinfo::{self, FileLock, LockKind, LockType};
use super::kinds::{Given, Kind};
use super::restore::{FileOpener, FileRef, Result};
use crate::sys::{self, Pid};

/// The kinds of file on which a lock is taken again: those reopened by path or
/// recreated from a ghost file, the same inode for everyone after the restore (the dump
/// cannot tell an external file from a regular one before the freeze, the restore can).
fn lockable(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::RegFile | Kind::Directory | Kind::DeletedFile | Kind::ExternalFile
    )
}

/// The row of the kind table for a lock of `kind` (`breaking`: a lease being broken)
/// on a file of `file_kind`.
fn lock_kind(kind: LockKind, breaking: bool, file_kind: Kind) -> Kind {
    match kind {
        LockKind::Other => Kind::FileLockOther,
        _ if !lockable(file_kind) => Kind::FileLockOther,
        LockKind::Lease if breaking => Kind::FileLeaseBreaking,
        LockKind::Lease => Kind::FileLease,
        LockKind::Posix | LockKind::Flock | LockKind::Ofd => Kind::FileLock,
    }
}

/// Whether `fd`'s open file description holds a lease: then nothing may open its file
/// (an open that conflicts with the lease starts breaking it).
pub(super) fn holds_lease(fd: &OpenFd<'_>) -> bool {
    fd.common.has_locks
        && fdinfo::parse_locks(&fd.fdinfo).map_or(true, |locks| {
            locks.iter().any(|l| l.kind == LockKind::Lease)
        })
}

impl fmt::Display for FileLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            LockKind::Posix => "POSIX",
            LockKind::Flock => "flock",
            LockKind::Ofd => "OFD",
            LockKind::Lease => "lease",
            LockKind::Other => "unknown kind of",
        };
        let ty = match self.ty {
            LockType::Read => "read",
            LockType::Write => "write",
            LockType::Unlock => "unlock",
        };
        match (self.kind, self.breaking) {
            (LockKind::Lease, true) => write!(f, "lease being broken to {ty}")?,
            (LockKind::Lease, false) => write!(f, "{ty} lease")?,
            _ => write!(f, "{kind} {ty} lock")?,
        }
        match (self.kind, self.end) {
            (LockKind::Posix | LockKind::Ofd, Some(end)) => {
                write!(f, " on bytes {}-{end}", self.start)
            }
            (LockKind::Posix | LockKind::Ofd, None) => write!(f, " from byte {} on", self.start),
            _ => Ok(()),
        }
    }
}

// -------------------------------------------------------------------------------------
// Dump
// -------------------------------------------------------------------------------------

/// Refuses, before the freeze, the locks held through `fd` (of kind `file_kind`) that
/// the images cannot carry: leases being broken, locks on files that come back as new
/// objects, and any lock without `--file-locks`. The message names the lock and the
/// file.
pub(super) fn check(fd: &OpenFd<'_>, file_kind: Kind, given: Given) -> Result<(), FileError> {
    let mut locks = fdinfo::parse_locks(&fd.fdinfo).map_err(fd.parse_err())?;
    // The most definite refusals first: those whatever the options.
    locks.sort_by_key(|l| {
        matches!(
            lock_kind(l.kind, l.breaking, file_kind),
            Kind::FileLock | Kind::FileLease
        )
    });
    for lock in locks {
        let kind = lock_kind(lock.kind, lock.breaking, file_kind);
        if let Some(why) = kind.dump_refusal(given) {
            return Err(fd.unsupported(format!("{kind} ({lock} on {}): {why}", fd.link_str())));
        }
    }
    Ok(())
}

/// The locks of the tree found so far, each with the task (as we see it) whose fd takes
/// it again.
#[derive(Debug, Default)]
pub(super) struct Locks {
    entries: Vec<(Pid, pb::FileLockEntry)>,
    /// POSIX locks recorded, by process, open file description (`files.img` id), type
    /// and range: a process shows one on each of its fds of the description.
    posix: HashSet<(Pid, u32, u32, u64, Option<u64>)>,
}

impl Locks {
    /// Records the locks `fd` shows, `id` being its open file description's `files.img`
    /// id, `first` whether the dump meets that description for the first time (its
    /// flock and OFD locks were recorded with its first holder otherwise).
    pub(super) fn note(&mut self, fd: &OpenFd<'_>, id: u32, first: bool) -> Result<(), FileError> {
        for lock in fdinfo::parse_locks(&fd.fdinfo).map_err(fd.parse_err())? {
            let flag = match lock.kind {
                LockKind::Posix => {
                    let key = (fd.pid, id, lock.ty as u32, lock.start, lock.end);
                    if !self.posix.insert(key) {
                        continue;
                    }
                    FL_POSIX
                }
                // Refused by `check`, which ran on this very fd.
                LockKind::Other => {
                    return Err(fd.unsupported(format!("a {lock}")));
                }
                LockKind::Flock | LockKind::Ofd | LockKind::Lease if !first => continue,
                LockKind::Flock => FL_FLOCK,
                LockKind::Ofd => FL_OFD,
                LockKind::Lease => FL_LEASE,
            };
            let entry = entry(flag, lock, fd.fd)
                .ok_or_else(|| fd.unsupported(format!("{lock}: a range past 2^63")))?;
            self.entries.push((fd.pid, entry));
        }
        Ok(())
    }

    /// Writes `filelocks.img` when the tree holds a lock; `vpid` gives the number a task
    /// has inside the tree (the image's).
    pub(super) fn write(&self, dir: &Path, vpid: impl Fn(Pid) -> u32) -> Result<(), FileError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let mut w = writer(dir, "FILE_LOCKS", "")?;
        for (pid, e) in &self.entries {
            w.write_entry(&pb::FileLockEntry {
                pid: vpid(*pid) as i32,
                ..*e
            })?;
        }
        w.finish()?;
        Ok(())
    }
}

/// The image's entry for `lock` held through `fd` (the pid is filled when written):
/// type `F_RDLCK` or `F_WRLCK` for every family (a lease's type as `F_GETLEASE` says
/// it), length 0 for "to the end of the file" (flocks and leases: start 0, length 0).
/// A lease being broken: the type it is being broken to (`F_RDLCK` or `F_UNLCK`, what
/// the kernel shows and `F_GETLEASE` says) with `LEASE_BREAKING`, as CRIU writes it.
fn entry(flag: u32, lock: FileLock, fd: i32) -> Option<pb::FileLockEntry> {
    let ty = match (lock.ty, lock.breaking) {
        (LockType::Read, false) => libc::F_RDLCK,
        (LockType::Write, false) => libc::F_WRLCK,
        (LockType::Read, true) => libc::F_RDLCK | LEASE_BREAKING as i32,
        (LockType::Unlock, true) => libc::F_UNLCK | LEASE_BREAKING as i32,
        _ => return None,
    };
    let start = i64::try_from(lock.start).ok()?;
    let len = match lock.end {
        None => 0,
        Some(end) => i64::try_from(end.checked_sub(lock.start)?.checked_add(1)?).ok()?,
    };
    Some(pb::FileLockEntry {
        flag,
        r#type: ty as u32,
        pid: 0,
        fd,
        start,
        len,
    })
}

// -------------------------------------------------------------------------------------
// Restore
// -------------------------------------------------------------------------------------

/// What the restore read of `filelocks.img`.
#[derive(Debug, Default)]
pub(super) struct RestoreState {
    entries: Vec<pb::FileLockEntry>,
    /// `--file-locks`.
    pub(super) enabled: bool,
}

impl RestoreState {
    pub(super) fn load(dir: &Path) -> Result<RestoreState> {
        let entries = match super::restore::optional(dir, "filelocks.img") {
            Some(path) => super::restore::read_entries(&path)?,
            None => Vec::new(),
        };
        Ok(RestoreState {
            entries,
            enabled: false,
        })
    }
}

/// One lock to take again, as the task makes the call: `flock(fd, op)`,
/// `fcntl(fd, cmd, &flock)` with `arg` the bytes of `struct flock`, or
/// `fcntl(fd, F_SETLEASE, type)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockCall {
    /// The task's fd to take it through.
    pub fd: i32,
    pub op: LockOp,
    /// What it is, for messages ("POSIX write lock on bytes 0-99 of /srv/db").
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOp {
    /// `flock(2)` with this operation (`LOCK_NB` included).
    Flock(i32),
    /// `fcntl(2)` with this command and a pointer to these bytes (`struct flock`).
    Fcntl(i32, [u8; FLOCK_SIZE]),
    /// `fcntl(2)` `F_SETLEASE` with this lease type.
    Lease(i32),
    /// A lease being broken: `fcntl(2)` `F_SETLEASE` with `lease`, then
    /// [`FileOpener::break_lease`] of `file` with `break_flags`.
    BreakingLease {
        lease: i32,
        file: u32,
        break_flags: i32,
    },
}

/// CRIU's bit for a lease being broken in `FileLockEntry.type` (its `LEASE_BREAKING`).
const LEASE_BREAKING: u32 = 4;

/// `sizeof(struct flock)` on x86-64: `l_type` and `l_whence` (2 bytes each), padding,
/// `l_start` and `l_len` (8 each), `l_pid` (4), padding.
pub const FLOCK_SIZE: usize = 32;

/// `struct flock` for a lock of `ty` from `start`, `len` bytes long (0: to the end),
/// counted from the start of the file; `l_pid` 0, as `F_SETLK` and `F_OFD_SETLK` want.
fn flock_bytes(ty: i16, start: i64, len: i64) -> [u8; FLOCK_SIZE] {
    let mut b = [0u8; FLOCK_SIZE];
    b[0..2].copy_from_slice(&ty.to_ne_bytes());
    b[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_ne_bytes());
    b[8..16].copy_from_slice(&start.to_ne_bytes());
    b[16..24].copy_from_slice(&len.to_ne_bytes());
    b
}

/// The call that takes `e` again, or why the entry is not one this restore takes.
fn lock_call(e: &pb::FileLockEntry) -> std::result::Result<LockOp, String> {
    let ty = match e.r#type as i32 {
        libc::F_RDLCK => libc::F_RDLCK,
        libc::F_WRLCK => libc::F_WRLCK,
        other => return Err(format!("lock type {other}")),
    };
    if e.start < 0 || e.len < 0 {
        return Err(format!("lock range {} + {}", e.start, e.len));
    }
    Ok(match e.flag {
        FL_FLOCK => {
            let op = if ty == libc::F_RDLCK {
                libc::LOCK_SH
            } else {
                libc::LOCK_EX
            };
            LockOp::Flock(op | libc::LOCK_NB)
        }
        FL_POSIX => LockOp::Fcntl(libc::F_SETLK, flock_bytes(ty as i16, e.start, e.len)),
        FL_OFD => LockOp::Fcntl(libc::F_OFD_SETLK, flock_bytes(ty as i16, e.start, e.len)),
        FL_LEASE => LockOp::Lease(ty),
        other => return Err(format!("lock family {other:#x}")),
    })
}

/// Whether `e` is a lease being broken (CRIU's `LEASE_BREAKING` over its type).
fn is_breaking(e: &pb::FileLockEntry) -> bool {
    e.flag == FL_LEASE && e.r#type & LEASE_BREAKING != 0
}

/// The call that takes entry `e` again through file `file` (open flags `flags`, which a
/// lease being broken needs), or why the entry is not one this restore takes.
fn entry_call(e: &pb::FileLockEntry, file: u32, flags: u32) -> std::result::Result<LockOp, String> {
    if is_breaking(e) {
        breaking_lease_call(e, file, flags)
    } else {
        lock_call(e)
    }
}

/// The calls that break lease `e` again (`LEASE_BREAKING` set) on file `file`, whose
/// open flags are `flags`: the lease it was before the break (one broken to a read
/// lease was a write lease; one broken to nothing, a read lease on a file opened
/// read-only and a write lease otherwise, as CRIU takes it: the image does not say, and
/// either ends the same), and an open that conflicts with it and makes it break to the
/// saved type (for writing: to nothing; for reading: to a read lease).
fn breaking_lease_call(
    e: &pb::FileLockEntry,
    file: u32,
    flags: u32,
) -> std::result::Result<LockOp, String> {
    let break_flags = match (e.r#type & !LEASE_BREAKING) as i32 {
        libc::F_UNLCK => libc::O_WRONLY,
        libc::F_RDLCK => libc::O_RDONLY,
        other => return Err(format!("lease being broken to type {other}")),
    };
    let read_only = flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32;
    let lease = if break_flags == libc::O_WRONLY && read_only {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    };
    Ok(LockOp::BreakingLease {
        lease,
        file,
        break_flags,
    })
}

/// A lock entry described for messages.
fn describe(e: &pb::FileLockEntry) -> String {
    let family = match e.flag {
        FL_POSIX => "POSIX",
        FL_FLOCK => "flock",
        FL_OFD => "OFD",
        FL_LEASE => "lease",
        _ => "unknown",
    };
    let ty = match e.r#type as i32 {
        libc::F_RDLCK => "read",
        libc::F_WRLCK => "write",
        _ => "unknown",
    };
    let range = match (e.flag, e.len) {
        (FL_POSIX | FL_OFD, 0) => format!(" from byte {} on", e.start),
        (FL_POSIX | FL_OFD, len) => {
            format!(" on bytes {}-{}", e.start, e.start.saturating_add(len - 1))
        }
        _ => String::new(),
    };
    if is_breaking(e) {
        let to = match (e.r#type & !LEASE_BREAKING) as i32 {
            libc::F_RDLCK => "read",
            _ => "nothing",
        };
        return format!("lease being broken to {to}");
    }
    if e.flag == FL_LEASE {
        return format!("{ty} lease");
    }
    format!("{family} {ty} lock{range}")
}

impl FileOpener {
    /// Starts breaking the lease just taken through file `file` again: an open of our
    /// own with `break_flags` that conflicts with it and does not wait (EWOULDBLOCK: the
    /// break has started). The file's signal owner is cleared for that open and put back
    /// after, so the holder gets no second signal for a break it was told of.
    pub fn break_lease(&mut self, file: u32, break_flags: i32) -> Result<()> {
        let at = FileRef {
            id: file,
            kind: "REG",
            fd: None,
        };
        let fown = self
            .file(file)?
            .reg
            .as_ref()
            .map(|r| r.fown)
            .unwrap_or_default();
        let ours = self
            .open(file, &[])?
            .try_clone_to_owned()
            .map_err(at.io("duplicate the leased file"))?;
        const F_OWNER_PID: i32 = 1;
        sys::fcntl_set_owner(ours.as_fd(), F_OWNER_PID, 0)
            .map_err(at.io("clear the owner of the file's signals"))?;
        let opened = super::restore::reopen(
            ours.as_fd(),
            break_flags | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        let broken = match opened {
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(()),
            Err(e) => Err(at.io("open the file to break its lease again")(e)),
            Ok(_) => {
                Err(at.changed("an open that should break its lease did not conflict with one"))
            }
        };
        super::restore::set_fown(&at, ours.as_fd(), &fown)?;
        broken
    }

    /// `--file-locks`: the locks of the images are taken again (without it, images that
    /// hold locks are refused, as the kind table says).
    pub fn set_file_locks(&mut self, on: bool) {
        self.locks.enabled = on;
    }

    /// Refuses, before any task exists, the locks of `filelocks.img` that this restore
    /// does not take again (leases, locks on files that are not reopened by path, any
    /// lock without `--file-locks`), and entries that name no fd of a live process of
    /// the tree. `tasks`: every live process (image pid) with its fdinfo entries.
    pub fn check_locks(&self, tasks: &[(Pid, &[pb::FdinfoEntry])]) -> Result<()> {
        const IMAGE: &str = "filelocks.img";
        for e in &self.locks.entries {
            let bad_entry = |what: String| super::restore::bad(IMAGE, what);
            let (pid, fdinfo) = tasks.iter().find(|(p, _)| p.0 == e.pid).ok_or_else(|| {
                bad_entry(format!(
                    "has a lock of {}, no live process of the tree",
                    e.pid
                ))
            })?;
            let fdi = fdinfo
                .iter()
                .find(|f| i64::from(f.fd) == i64::from(e.fd))
                .ok_or_else(|| {
                    bad_entry(format!(
                        "has a lock of process {} on fd {}, which it does not have",
                        e.pid, e.fd
                    ))
                })?;
            let file = self.file(fdi.id)?;
            let at = FileRef {
                id: fdi.id,
                kind: super::restore::kind_name(file.r#type),
                fd: Some(fdi.fd),
            };
            let (file_kind, name) = self.file_kind(file)?;
            let breaking = is_breaking(e);
            entry_call(e, fdi.id, file.reg.as_ref().map_or(0, |r| r.flags))
                .map_err(|what| bad_entry(format!("process {} fd {}: {what}", e.pid, e.fd)))?;
            let family = if e.flag == FL_LEASE {
                LockKind::Lease
            } else {
                LockKind::Posix
            };
            let kind = lock_kind(family, breaking, file_kind);
            let given = Given {
                file_locks: self.locks.enabled,
                ..Given::default()
            };
            if let Some(why) = kind.restore_refusal(given) {
                return Err(at.unsupported(
                    *pid,
                    format!("{kind} ({} on {file_kind} {name}): {why}", describe(e)),
                ));
            }
        }
        Ok(())
    }

    /// The locks process `pid` (the image's number) takes again, in the image's order.
    /// Checked by [`FileOpener::check_locks`] before.
    pub fn lock_calls(&self, pid: Pid, fdinfo: &[pb::FdinfoEntry]) -> Result<Vec<LockCall>> {
        let mut out = Vec::new();
        for e in self.locks.entries.iter().filter(|e| e.pid == pid.0) {
            let fdi = fdinfo.iter().find(|f| i64::from(f.fd) == i64::from(e.fd));
            let reg = fdi
                .and_then(|f| self.files.get(&f.id))
                .and_then(|f| f.reg.as_ref());
            let op = entry_call(e, fdi.map_or(0, |f| f.id), reg.map_or(0, |r| r.flags))
                .map_err(|what| super::restore::bad("filelocks.img", what))?;
            let name = reg
                .map(|r| r.path().display().to_string())
                .unwrap_or_default();
            out.push(LockCall {
                fd: e.fd,
                op,
                what: format!("{} of {name}", describe(e)),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(kind: LockKind, ty: LockType, start: u64, end: Option<u64>) -> FileLock {
        FileLock {
            kind,
            ty,
            pid: 7,
            start,
            end,
            breaking: false,
        }
    }

    #[test]
    fn entries_hold_criu_numbers() {
        let e = entry(
            FL_POSIX,
            lock(LockKind::Posix, LockType::Write, 5, Some(14)),
            3,
        )
        .unwrap();
        assert_eq!((e.flag, e.r#type, e.fd, e.start, e.len), (1, 1, 3, 5, 10));
        let e = entry(FL_OFD, lock(LockKind::Ofd, LockType::Read, 80, None), 4).unwrap();
        assert_eq!((e.flag, e.r#type, e.start, e.len), (4, 0, 80, 0));
        let e = entry(FL_FLOCK, lock(LockKind::Flock, LockType::Write, 0, None), 5).unwrap();
        assert_eq!((e.flag, e.r#type, e.start, e.len), (2, 1, 0, 0));
        // Offsets the image's signed fields cannot hold.
        assert!(entry(
            FL_POSIX,
            lock(LockKind::Posix, LockType::Read, 1 << 63, None),
            3
        )
        .is_none());
        assert!(entry(
            FL_POSIX,
            lock(LockKind::Posix, LockType::Unlock, 0, None),
            3
        )
        .is_none());
    }

    #[test]
    fn calls_do_not_wait() {
        let e = |flag, ty: i32, start, len| pb::FileLockEntry {
            flag,
            r#type: ty as u32,
            pid: 1,
            fd: 3,
            start,
            len,
        };
        assert_eq!(
            lock_call(&e(FL_FLOCK, libc::F_WRLCK, 0, 0)),
            Ok(LockOp::Flock(libc::LOCK_EX | libc::LOCK_NB))
        );
        assert_eq!(
            lock_call(&e(FL_FLOCK, libc::F_RDLCK, 0, 0)),
            Ok(LockOp::Flock(libc::LOCK_SH | libc::LOCK_NB))
        );
        let LockOp::Fcntl(cmd, arg) = lock_call(&e(FL_POSIX, libc::F_WRLCK, 5, 10)).unwrap() else {
            panic!("POSIX locks are fcntl calls");
        };
        assert_eq!(cmd, libc::F_SETLK);
        assert_eq!(arg, flock_bytes(libc::F_WRLCK as i16, 5, 10));
        let LockOp::Fcntl(cmd, _) = lock_call(&e(FL_OFD, libc::F_RDLCK, 0, 0)).unwrap() else {
            panic!("OFD locks are fcntl calls");
        };
        assert_eq!(cmd, libc::F_OFD_SETLK);
        assert_eq!(
            lock_call(&e(FL_LEASE, libc::F_WRLCK, 0, 0)),
            Ok(LockOp::Lease(libc::F_WRLCK))
        );
        let breaking = libc::F_RDLCK | LEASE_BREAKING as i32;
        assert!(lock_call(&e(FL_LEASE, breaking, 0, 0)).is_err());
        assert!(lock_call(&e(FL_POSIX, 2, 0, 0)).is_err());
        assert!(lock_call(&e(FL_POSIX, libc::F_RDLCK, -1, 0)).is_err());
        assert!(lock_call(&e(FL_POSIX | FL_OFD, libc::F_RDLCK, 0, 0)).is_err());
    }

    /// The bytes are libc's `struct flock`, field by field.
    #[test]
    fn flock_bytes_are_struct_flock() {
        assert_eq!(std::mem::size_of::<libc::flock>(), FLOCK_SIZE);
        let b = flock_bytes(libc::F_WRLCK as i16, 0x1122_3344, 0x55);
        let field = |at: usize, n: usize| &b[at..at + n];
        assert_eq!(
            field(std::mem::offset_of!(libc::flock, l_type), 2),
            &(libc::F_WRLCK as i16).to_ne_bytes()
        );
        assert_eq!(
            field(std::mem::offset_of!(libc::flock, l_whence), 2),
            &(libc::SEEK_SET as i16).to_ne_bytes()
        );
        assert_eq!(
            field(std::mem::offset_of!(libc::flock, l_start), 8),
            &0x1122_3344i64.to_ne_bytes()
        );
        assert_eq!(
            field(std::mem::offset_of!(libc::flock, l_len), 8),
            &0x55i64.to_ne_bytes()
        );
        assert_eq!(field(std::mem::offset_of!(libc::flock, l_pid), 4), &[0; 4]);
    }

    #[test]
    fn leases_and_other_files_are_their_own_rows() {
        let row = |kind, file| lock_kind(kind, false, file);
        assert_eq!(row(LockKind::Posix, Kind::RegFile), Kind::FileLock);
        assert_eq!(row(LockKind::Flock, Kind::Directory), Kind::FileLock);
        assert_eq!(row(LockKind::Ofd, Kind::DeletedFile), Kind::FileLock);
        assert_eq!(row(LockKind::Flock, Kind::Pipe), Kind::FileLockOther);
        assert_eq!(row(LockKind::Flock, Kind::MemDevice), Kind::FileLockOther);
        assert_eq!(row(LockKind::Lease, Kind::RegFile), Kind::FileLease);
        assert_eq!(row(LockKind::Other, Kind::RegFile), Kind::FileLockOther);
        assert_eq!(
            lock_kind(LockKind::Lease, true, Kind::RegFile),
            Kind::FileLeaseBreaking
        );
    }

    #[test]
    fn locks_read_well_in_messages() {
        let l = lock(LockKind::Posix, LockType::Write, 5, Some(14));
        assert_eq!(l.to_string(), "POSIX write lock on bytes 5-14");
        let l = lock(LockKind::Ofd, LockType::Read, 80, None);
        assert_eq!(l.to_string(), "OFD read lock from byte 80 on");
        let l = lock(LockKind::Flock, LockType::Read, 0, None);
        assert_eq!(l.to_string(), "flock read lock");
        let e = entry(
            FL_POSIX,
            lock(LockKind::Posix, LockType::Write, 5, Some(14)),
            3,
        )
        .unwrap();
        assert_eq!(describe(&e), "POSIX write lock on bytes 5-14");
        let l = lock(LockKind::Lease, LockType::Read, 0, None);
        assert_eq!(l.to_string(), "read lease");
        assert_eq!(describe(&entry(FL_LEASE, l, 3).unwrap()), "read lease");
        let l = FileLock {
            breaking: true,
            ..lock(LockKind::Lease, LockType::Unlock, 0, None)
        };
        assert_eq!(l.to_string(), "lease being broken to unlock");
    }
}
