//! Files of `/proc/PID` of a process that has exited (CRIU's "dead pid" remap).
//!
//! A task can hold `/proc/PID` (its cwd, or an fd) of a process that is gone: the kernel
//! unhashed the dir, whose link reads `/proc/67 (deleted)`; files below it (`/proc/67/
//! status`) still read as before, but their path leads nowhere. No path reopens them.
//!
//! Dump: such a file is saved by its path without the suffix, with one entry per dead
//! pid in `remap-fpath.img` (type PROCFS, `remap_id` the pid), as CRIU writes it. A dead
//! pid that is now a task of the dump is refused (`/proc/PID` would name that task).
//!
//! Restore: as CRIU, a short-lived process with that pid stands in for the dead one. We
//! make it with `clone3(set_tid)`; it exits at once and stays our zombie, whose `/proc`
//! dir opens like a live one, while the files are opened; reaping it (when the restore's
//! file opener goes, also on failure) unhashes the dir again. Every file under that pid,
//! with a remap entry or not (CRIU writes one per pid), is opened while it exists. In a
//! pid namespace of the tree's own, the stand-in is made there by a helper thread that
//! joins it, and lives (paused) until the opener goes, as some files of a zombie
//! (mountinfo) do not open; the files are opened through the tree's own `/proc`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use criu_images::pb;

use super::kinds;
use super::restore::{FileOpener, FileRef, Result};
use crate::sys::{self, Pid};

/// What the kernel appends to the path of an unhashed dir.
const DELETED: &[u8] = b" (deleted)";

/// The dead pid behind `link` (a path of a file on procfs, as a `/proc/PID/fd` link or
/// `/proc/PID/cwd` shows it), or `None` when it is no file of `/proc/PID` of a process
/// that has exited. `base` is where the task's paths are, for us (see
/// [`crate::proc::mount_root`]; empty for our own view): a file below a dead process's
/// dir has no suffix, so the dir itself is looked for there, as CRIU does.
pub(super) fn dead_pid(base: &OsStr, link: &[u8]) -> Option<i32> {
    let (path, unhashed) = match link.strip_suffix(DELETED) {
        Some(path) => (path, true),
        None => (link, false),
    };
    if !kinds::is_proc_pid_path(path) {
        return None;
    }
    let pid = kinds::proc_pid_of(path)?;
    if unhashed {
        return Some(pid);
    }
    let mut dir = base.to_os_string();
    dir.push(format!("/proc/{pid}"));
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(pid),
        _ => None,
    }
}

/// The path without the suffix of an unhashed dir.
pub(super) fn strip_deleted(link: &[u8]) -> &[u8] {
    link.strip_suffix(DELETED).unwrap_or(link)
}

/// The stand-ins for dead processes made so far, by pid: zombies of ours, reaped when
/// dropped.
#[derive(Default)]
pub(super) struct StandIns {
    /// Our number of each, by the pid it stands in for; whether it lives (until killed
    /// here) rather than exited at once.
    made: HashMap<i32, (Pid, bool)>,
    /// The tree's own pid namespace, when it has one: stand-ins are made there, with
    /// the pid the tree knew.
    pid_ns: Option<OwnedFd>,
}

impl Drop for StandIns {
    fn drop(&mut self) {
        for (_, (pid, live)) in self.made.drain() {
            if live {
                if let Err(e) = sys::kill(pid, libc::SIGKILL) {
                    tracing::warn!(pid = pid.0, "cannot end a dead process's stand-in: {e}");
                    continue;
                }
            }
            if let Err(e) = sys::wait_child(pid) {
                tracing::warn!(pid = pid.0, "cannot reap a dead process's stand-in: {e}");
            }
        }
    }
}

impl FileOpener {
    /// The pids `remap-fpath.img` says are dead processes.
    fn dead_pids(&self) -> impl Iterator<Item = i32> + '_ {
        self.reg
            .remaps
            .values()
            .filter(|r| r.remap_type == Some(pb::RemapType::Procfs as i32))
            .map(|r| r.remap_id as i32)
    }

    /// The dead pid `path` is a file of, when `remap-fpath.img` says it is one.
    pub(super) fn dead_pid_of(&self, path: &Path) -> Option<i32> {
        let pid = kinds::proc_pid_of(path.as_os_str().as_bytes())?;
        self.dead_pids().any(|p| p == pid).then_some(pid)
    }

    /// Refuses a dead pid that is a task of the tree: its `/proc/PID` names that task.
    pub(super) fn check_dead_pid(&self, pid: Pid, at: &FileRef, dead: i32) -> Result<()> {
        if self.reg.tree_pids.contains_key(&dead) {
            return Err(at.unsupported(
                pid,
                format!("a file of /proc/{dead} of a process that has exited, whose pid is a task of the tree"),
            ));
        }
        Ok(())
    }

    /// Opens `path` (a file of `/proc/DEAD`) through a stand-in process of pid `dead`,
    /// made the first time.
    pub(super) fn open_dead(
        &mut self,
        at: &FileRef,
        path: &Path,
        dead: i32,
        flags: i32,
    ) -> Result<OwnedFd> {
        let renumbered = self.reg.tree_pids.iter().any(|(img, ours)| img != ours);
        // In a pid namespace of the tree's own, the stand-in is made there, and the file
        // opened through the procfs the tree sees, which is that namespace's (its mount
        // namespace's /proc).
        let in_tree_ns = match &self.reg.stand_ins.pid_ns {
            Some(ns) if renumbered && self.reg.root.is_some() => Some(ns),
            _ if renumbered => {
                return Err(at.refused(format!(
                    "{} (a file of a process that has exited) in a tree restored in a new \
                     pid namespace without a mount namespace of its own (no procfs of that \
                     namespace to open it in)",
                    path.display()
                )))
            }
            _ => None,
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = self.reg.stand_ins.made.entry(dead)
        {
            // In the tree's namespace a live one, made by a helper thread that joins it
            // (a zombie's mountinfo does not open, and one of ours there would die only
            // with the tree's init, not with us: it is killed when the opener goes).
            let made = match in_tree_ns {
                Some(ns) => sys::in_namespace_thread(ns.as_fd(), libc::CLONE_NEWPID, || {
                    sys::clone3_pausing_child(Pid(dead))
                })
                .and_then(|made| made)
                .map(|pid| (pid, true)),
                None => sys::clone3_exiting_child(Pid(dead)).map(|pid| (pid, false)),
            }
            .map_err(at.io(format!(
                "make a process of pid {dead} for {} (a file of a process that has exited)",
                path.display()
            )))?;
            slot.insert(made);
        }
        let in_tree_ns = in_tree_ns.is_some();
        let ours = if in_tree_ns {
            self.at_root(path)
        } else {
            path.to_owned()
        };
        sys::open_path(&ours, flags, 0).map_err(at.io(format!("open {}", path.display())))
    }

    /// The tree's own pid namespace (it was renumbered): stand-ins for its dead
    /// processes are made there.
    pub fn set_tree_pid_ns(&mut self, ns: OwnedFd) {
        self.reg.stand_ins.pid_ns = Some(ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_pids_are_told_from_live_ones_and_from_other_proc_files() {
        let ours = OsStr::new("");
        assert_eq!(dead_pid(ours, b"/proc/67 (deleted)"), Some(67));
        // A file below a dead process's dir has no suffix: its dir is looked for.
        assert_eq!(dead_pid(ours, b"/proc/2147483647/status"), Some(i32::MAX));
        let me = std::process::id();
        assert_eq!(
            dead_pid(ours, format!("/proc/{me}/status").as_bytes()),
            None
        );
        assert_eq!(dead_pid(ours, b"/proc/self/status"), None);
        assert_eq!(dead_pid(ours, b"/proc/meminfo"), None);
        assert_eq!(dead_pid(ours, b"/tmp/proc/67 (deleted)"), None);
        assert_eq!(strip_deleted(b"/proc/67 (deleted)"), b"/proc/67");
    }
}
