//! pidfds (`pidfd_open`, `clone(CLONE_PIDFD)`), both ways, in CRIU's format: a
//! `files.img` entry of type `PIDFD` with the process's pid in its own pid namespace
//! (`nspid`), the pidfd's inode and its flags.
//!
//! A pidfd names a process, not a file: the dump records which task of the tree it
//! names, and the restore opens a pidfd of that task once it exists again. What it
//! refuses:
//! - a pidfd of a process outside the tree: after a restore no process of the tree is
//!   that one (CRIU refuses it too);
//! - a pidfd of one thread (`PIDFD_THREAD`, kept as `O_EXCL` in the file's flags), which
//!   CRIU 4.2 refuses as well.
//!
//! A pidfd whose process is dead (fdinfo `Pid: -1`) is recorded with `nspid` -1, as CRIU
//! does, and comes back as a pidfd of a process that is dead too: the restorer forks a
//! child, opens the pidfds on it, kills and reaps it. Pidfds that named one dead process
//! (the same pidfs inode at dump time) get one such process between them, so they still
//! share an inode; pidfds of two dead processes get two. A dead pidfd reports what the
//! original did: poll readable, `pidfd_send_signal` ESRCH, `Pid: -1`.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};

use criu_images::pb;

use super::dump::{FileError, OpenFd};
use super::fdinfo::ParseError;
use super::kinds::Kind;
use super::restore::{bad, finish, FileOpener, FileRef, Result};
use crate::sys::{self, Pid};

/// `PIDFD_THREAD` (Linux 6.9), which the kernel keeps in the file's flags.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// `nspid` of a pidfd whose process is dead.
const DEAD: i32 = -1;

// ---------------------------------------------------------------------------------
// Dump
// ---------------------------------------------------------------------------------

/// What a pidfd's fdinfo says of its process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Target {
    /// Its pid in the pid namespace of the `/proc` read (`Pid:`): -1 once it is dead,
    /// 0 when that namespace does not see it.
    pub pid: i32,
    /// Its pid in its own (innermost) pid namespace: the last number of `NSpid:`, or
    /// `pid` when there is no such line.
    pub nspid: i32,
}

/// Reads the `Pid:` and `NSpid:` lines of a pidfd's fdinfo.
pub(super) fn parse_target(text: &str) -> std::result::Result<Target, ParseError> {
    let bad = |what, line: &str| ParseError {
        what,
        line: line.to_owned(),
    };
    let (mut pid, mut nspid) = (None, None);
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Pid:") {
            pid = Some(v.trim().parse::<i32>().map_err(|_| bad("Pid", line))?);
        } else if let Some(v) = line.strip_prefix("NSpid:") {
            let last = v
                .split_whitespace()
                .last()
                .ok_or_else(|| bad("NSpid", line))?;
            nspid = Some(last.parse::<i32>().map_err(|_| bad("NSpid", line))?);
        }
    }
    let pid = pid.ok_or_else(|| bad("Pid", ""))?;
    Ok(Target {
        pid,
        nspid: nspid.unwrap_or(pid),
    })
}

fn target(fd: &OpenFd<'_>) -> Result<Target, FileError> {
    parse_target(&fd.fdinfo).map_err(fd.parse_err())
}

/// The row of the kind table of a pidfd: of a task of the tree (`tree_pids`, as the
/// dumper sees them, zombies included) or of a dead process, of one thread, or of a
/// process outside the tree.
pub(super) fn kind(fd: &OpenFd<'_>, tree_pids: &HashSet<i32>) -> Result<Kind, FileError> {
    if fd.common.flags & PIDFD_THREAD != 0 {
        return Ok(Kind::PidfdThread);
    }
    let t = target(fd)?;
    Ok(if t.pid == DEAD || tree_pids.contains(&t.pid) {
        Kind::Pidfd
    } else {
        Kind::PidfdOutside
    })
}

/// What a refusal says of the pidfd (of `kind`): the process or thread it names.
pub(super) fn describe(fd: &OpenFd<'_>, kind: Kind) -> String {
    let task = if kind == Kind::PidfdThread {
        "thread"
    } else {
        "process"
    };
    match target(fd) {
        Ok(t) if t.pid == DEAD => format!("of a dead {task}"),
        Ok(t) if t.pid == 0 => format!("of a {task} of a pid namespace we do not see"),
        Ok(t) => format!("of {task} {}", t.pid),
        Err(_) => fd.link_str().into_owned(),
    }
}

/// The `files.img` member of a pidfd the checks accepted.
pub(super) fn dump(fd: &OpenFd<'_>, id: u32) -> Result<pb::PidfdEntry, FileError> {
    let t = target(fd)?;
    Ok(pb::PidfdEntry {
        id,
        // CRIU's images hold 32 bits of it; it only groups pidfds of one process.
        ino: std::os::unix::fs::MetadataExt::ino(&fd.meta) as u32,
        // As CRIU: the flags pidfd_open takes (PIDFD_NONBLOCK is O_NONBLOCK), without
        // the access mode every pidfd has.
        flags: fd.common.flags & !(libc::O_ACCMODE as u32),
        nspid: if t.pid == DEAD { DEAD } else { t.nspid },
        fown: fd.fown()?,
    })
}

// ---------------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------------

/// pidfds of dead processes opened ahead, by file id: the pidfds that named one dead
/// process are all opened on one stand-in, before it is reaped.
#[derive(Default)]
pub(super) struct RestoreState {
    dead: HashMap<u32, OwnedFd>,
}

/// The row of the kind table of an image's pidfd.
pub(super) fn restore_kind(id: u32, e: &pb::PidfdEntry) -> (Kind, String) {
    let kind = if e.flags & PIDFD_THREAD != 0 {
        Kind::PidfdThread
    } else {
        Kind::Pidfd
    };
    let what = match e.nspid {
        DEAD => format!("file {id}, of a dead process"),
        pid => format!("file {id}, of process {pid}"),
    };
    (kind, what)
}

/// The flags given to pidfd_open: the other flags are set as every file's are.
fn open_flags(e: &pb::PidfdEntry) -> u32 {
    e.flags & libc::O_NONBLOCK as u32
}

impl FileOpener {
    /// A pidfd of a live process must name a task of the tree.
    pub(super) fn check_pidfd(&self, pid: Pid, at: &FileRef, e: &pb::PidfdEntry) -> Result<()> {
        if e.nspid == DEAD || self.reg.tree_pids.contains_key(&e.nspid) {
            return Ok(());
        }
        Err(at.unsupported(
            pid,
            format!(
                "a pidfd of process {}, which is not a task of the dump",
                e.nspid
            ),
        ))
    }

    /// Opens the pidfd of file `at` (once the tree's tasks exist): of the task it named,
    /// or of a dead process.
    pub(super) fn open_pidfd(&mut self, at: &FileRef, e: &pb::PidfdEntry) -> Result<OwnedFd> {
        let fd = if e.nspid == DEAD {
            self.open_dead_pidfd(at, e)?
        } else {
            let ours = self.reg.tree_pids.get(&e.nspid).copied().ok_or_else(|| {
                at.refused(format!(
                    "a pidfd of process {}, which is not a task of the dump",
                    e.nspid
                ))
            })?;
            sys::pidfd_open_with(Pid(ours), open_flags(e))
                .map_err(at.io(format!("open a pidfd of process {} (ours {ours})", e.nspid)))?
        };
        finish(at, fd.as_fd(), e.flags, &e.fown)?;
        Ok(fd)
    }

    /// A pidfd of a dead process: every pidfd of the images that named the same dead
    /// process (same inode) and is not open yet is opened now, on one stand-in.
    fn open_dead_pidfd(&mut self, at: &FileRef, e: &pb::PidfdEntry) -> Result<OwnedFd> {
        if let Some(fd) = self.pidfds.dead.remove(&at.id) {
            return Ok(fd);
        }
        let mut group: Vec<(u32, u32)> = self
            .files
            .values()
            .filter_map(|f| f.pidfd.as_ref())
            .filter(|p| p.nspid == DEAD && p.ino == e.ino && p.id != at.id)
            .filter(|p| !self.given.contains_key(&p.id))
            .map(|p| (p.id, open_flags(p)))
            .collect();
        group.sort_unstable();
        group.insert(0, (at.id, open_flags(e)));
        let flags: Vec<u32> = group.iter().map(|&(_, f)| f).collect();
        let mut fds = sys::pidfds_of_dead_process(&flags)
            .map_err(at.io("open pidfds of a process that is dead"))?
            .into_iter();
        let mine = fds
            .next()
            .ok_or_else(|| bad("files.img", format!("no pidfd made for file {}", at.id)))?;
        for (&(id, _), fd) in group[1..].iter().zip(fds) {
            self.pidfds.dead.insert(id, fd);
        }
        Ok(mine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_of_a_live_and_a_dead_pidfd() {
        let live = "pos:\t0\nflags:\t02004002\nmnt_id:\t4\nino:\t1370925\nPid:\t30653\n\
                    NSpid:\t30653\t12\n";
        assert_eq!(
            parse_target(live).unwrap(),
            Target {
                pid: 30653,
                nspid: 12
            }
        );
        let dead = "pos:\t0\nflags:\t02\nmnt_id:\t4\nino:\t9\nPid:\t-1\nNSpid:\t-1\n";
        assert_eq!(parse_target(dead).unwrap(), Target { pid: -1, nspid: -1 });
        let no_ns = "pos:\t0\nflags:\t02\nPid:\t7\n";
        assert_eq!(parse_target(no_ns).unwrap(), Target { pid: 7, nspid: 7 });
    }

    #[test]
    fn bad_fdinfo_is_named() {
        let err = parse_target("pos:\t0\nflags:\t02\n").unwrap_err();
        assert_eq!(err.what, "Pid");
        let err = parse_target("Pid:\tx\n").unwrap_err();
        assert_eq!(err.what, "Pid");
        let err = parse_target("Pid:\t3\nNSpid:\t3\tq\n").unwrap_err();
        assert_eq!(err.what, "NSpid");
    }

    #[test]
    fn image_kinds() {
        let e = pb::PidfdEntry {
            id: 4,
            nspid: DEAD,
            ..Default::default()
        };
        assert_eq!(restore_kind(4, &e).0, Kind::Pidfd);
        assert!(restore_kind(4, &e).1.contains("dead"));
        let thread = pb::PidfdEntry {
            flags: PIDFD_THREAD,
            nspid: 9,
            ..e
        };
        assert_eq!(restore_kind(4, &thread).0, Kind::PidfdThread);
        let nonblock = pb::PidfdEntry {
            flags: (libc::O_NONBLOCK | libc::O_CLOEXEC) as u32,
            ..e
        };
        assert_eq!(open_flags(&nonblock), libc::O_NONBLOCK as u32);
    }
}
