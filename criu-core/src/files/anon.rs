//! Anonymous-inode files with a small state: eventfd (its counter), epoll (its interest
//! list), signalfd (its mask) and timerfd (clock, time left, interval, expirations not
//! read yet). The dump reads each from fdinfo; the restore makes a new one and sets it.

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};

use criu_images::pb;

use super::dump::{FileError, OpenFd};
use super::fdinfo;
use super::restore::{finish, write_all, FileOpener, FileRef, Result};
use crate::sys::{self, Pid};

// --- dump ------------------------------------------------------------------------

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
/// re-adds targets by fd number; for an epoll instance a unix socket's queue carries,
/// a number of the task holding that socket (`OpenFd::numbers_of`).
pub(super) fn eventpoll(fd: &OpenFd<'_>, id: u32) -> Result<pb::EventpollFileEntry, FileError> {
    let targets = fdinfo::parse_epoll(&fd.fdinfo).map_err(fd.parse_err())?;
    let mut tfds = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        // The same number may be registered twice (a closed fd's file, then a new
        // one): kcmp tells them apart by their rank under that number.
        let toff = targets[..i].iter().filter(|o| o.tfd == t.tfd).count() as u32;
        let holds = |n: i32| match sys::kcmp_epoll_tfd(fd.numbers_of, n, fd.pid, fd.fd, t.tfd, toff)
        {
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
                if (n != fd.fd || fd.numbers_of != fd.pid) && holds(n)? {
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

// --- restore ---------------------------------------------------------------------

/// `_IOW('T', 0, __u64)` of linux/timerfd.h (CONFIG_CHECKPOINT_RESTORE).
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

/// One item of an epoll interest list, to add from inside the task once its fds are
/// at their numbers: `epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, {events, data})`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EpollItem {
    pub epfd: i32,
    pub tfd: i32,
    pub events: u32,
    pub data: u64,
}

/// An epoll instance no task holds (a unix socket's queue carries it) and its interest
/// list: the task holding that socket registers it with its own descriptor numbers,
/// holding the instance for a moment (the items' `epfd` is unused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassedEpoll {
    pub id: u32,
    pub items: Vec<EpollItem>,
}

pub(super) fn open_eventfd(at: &FileRef, e: &pb::EventfdFileEntry) -> Result<OwnedFd> {
    let fd = sys::eventfd(0, 0).map_err(at.io("create an eventfd"))?;
    if e.counter != 0 {
        write_all(fd.as_fd(), &e.counter.to_ne_bytes())
            .map_err(at.io(format!("set the eventfd counter to {}", e.counter)))?;
    }
    finish(at, fd.as_fd(), e.flags, &e.fown)?;
    Ok(fd)
}

pub(super) fn open_signalfd(at: &FileRef, s: &pb::SignalfdEntry) -> Result<OwnedFd> {
    let fd = sys::signalfd(s.sigmask).map_err(at.io("create a signalfd"))?;
    finish(at, fd.as_fd(), s.flags, &s.fown)?;
    Ok(fd)
}

pub(super) fn open_timerfd(at: &FileRef, t: &pb::TimerfdEntry) -> Result<OwnedFd> {
    const TFD_TIMER_ABSTIME: u32 = 1;
    let clock = t.clockid as libc::clockid_t;
    let fd =
        sys::timerfd_create(clock).map_err(at.io(format!("create a timerfd on clock {clock}")))?;
    let mut value = (t.vsec as i64, t.vnsec as i64);
    let interval = (t.isec as i64, t.insec as i64);
    // The image has the time left; an absolute timer needs it as a time of the clock.
    if t.settime_flags & TFD_TIMER_ABSTIME != 0 && value != (0, 0) {
        let now = sys::clock_gettime(clock).map_err(at.io(format!("read clock {clock}")))?;
        // Saturating: a bogus image gets EINVAL from the kernel, not an overflow here.
        let nsec = now.1.saturating_add(value.1);
        value = (
            now.0
                .saturating_add(value.0)
                .saturating_add(nsec / 1_000_000_000),
            nsec % 1_000_000_000,
        );
    }
    sys::timerfd_settime(fd.as_fd(), t.settime_flags as i32, (value, interval))
        .map_err(at.io("arm the timerfd"))?;
    if t.ticks != 0 {
        sys::ioctl_set_u64(fd.as_fd(), TFD_IOC_SET_TICKS, t.ticks).map_err(at.io(format!(
            "set the timerfd's {} unread expirations (TFD_IOC_SET_TICKS)",
            t.ticks
        )))?;
    }
    finish(at, fd.as_fd(), t.flags, &t.fown)?;
    Ok(fd)
}

/// A new epoll instance; its interest list is registered inside the task, once its fds
/// are at their numbers (see [`FileOpener::epoll_items`]).
pub(super) fn open_epoll(at: &FileRef, ep: &pb::EventpollFileEntry) -> Result<OwnedFd> {
    let fd = sys::epoll_create().map_err(at.io("create an epoll instance"))?;
    finish(at, fd.as_fd(), ep.flags, &ep.fown)?;
    Ok(fd)
}

/// Every file an epoll instance watches must be one of the task's descriptors
/// (`numbers`), as its interest list is registered again by fd number.
pub(super) fn check_epoll(
    pid: Pid,
    at: &FileRef,
    ep: &pb::EventpollFileEntry,
    numbers: &HashSet<u32>,
) -> Result<()> {
    for t in &ep.tfd {
        if !numbers.contains(&t.tfd) {
            return Err(at.unsupported(
                pid,
                format!("epoll watching fd {}, which the task does not hold", t.tfd),
            ));
        }
    }
    Ok(())
}

/// Whether a task with fds `numbers` holds every fd epoll instance `ep` watches.
fn holds_targets(ep: &pb::EventpollFileEntry, numbers: &HashSet<u32>) -> bool {
    ep.tfd.iter().all(|t| numbers.contains(&t.tfd))
}

impl FileOpener {
    /// Refuses, before any task exists, an epoll instance whose interest list no task
    /// holding it can register again: that needs every watched file at its fd number
    /// in one task. A shared instance need not find them in every holder: a child that
    /// inherited it may have closed some (redis's BGSAVE child closes the listening
    /// sockets its parent's epoll watches). `tasks`: every live process (image pid) with
    /// its fdinfo entries.
    pub fn check_epolls(&self, tasks: &[(Pid, &[pb::FdinfoEntry])]) -> Result<()> {
        let numbers: Vec<HashSet<u32>> = tasks
            .iter()
            .map(|(_, fds)| fds.iter().map(|f| f.fd).collect())
            .collect();
        for ((pid, fds), own) in tasks.iter().zip(&numbers) {
            for fdi in fds
                .iter()
                .filter(|f| f.r#type == pb::FdTypes::Eventpoll as i32)
            {
                let Some(ep) = self.files.get(&fdi.id).and_then(|f| f.epfd.as_ref()) else {
                    continue;
                };
                let holds = |i: usize| tasks[i].1.iter().any(|f| f.id == fdi.id);
                if (0..tasks.len()).any(|i| holds(i) && holds_targets(ep, &numbers[i])) {
                    continue;
                }
                let at = FileRef {
                    id: fdi.id,
                    kind: super::restore::kind_name(fdi.r#type),
                    fd: Some(fdi.fd),
                };
                return check_epoll(*pid, &at, ep, own);
            }
        }
        Ok(())
    }

    /// The interest lists of the epoll instances task `task_fds` holds, with the task's
    /// own fd numbers. Each epoll instance's items are returned once, to the first task
    /// asking that holds every fd it watches (`check_epolls` made sure one does): a
    /// shared instance needs them once.
    pub fn epoll_items(&mut self, task_fds: &[pb::FdinfoEntry]) -> Vec<EpollItem> {
        let numbers: HashSet<u32> = task_fds.iter().map(|f| f.fd).collect();
        let mut out = Vec::new();
        for fdi in task_fds {
            if fdi.r#type != pb::FdTypes::Eventpoll as i32 || self.epolls_listed.contains(&fdi.id) {
                continue;
            }
            let Some(ep) = self.files.get(&fdi.id).and_then(|f| f.epfd.as_ref()) else {
                continue;
            };
            if !holds_targets(ep, &numbers) {
                continue;
            }
            self.epolls_listed.insert(fdi.id);
            out.extend(ep.tfd.iter().map(|t| EpollItem {
                epfd: fdi.fd as i32,
                tfd: t.tfd as i32,
                events: t.events,
                data: t.data,
            }));
        }
        out
    }
}
