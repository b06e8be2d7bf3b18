//! Who else holds a pty of the tree. A pty whose master the tree holds comes back as a
//! new pty: a process outside the tree that holds either end would be left with the old
//! one, talking to nobody, and the tree would not hear from it either. The kernel keeps
//! no list of a tty's openers, so every other process's fds are looked at (only when
//! the tree holds a pty master, before the freeze).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

/// One pty of the tree, by what identifies its ends in another process's fds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PtyIdent {
    pub(crate) index: u32,
    /// The `/dev/ptmx` node the master was opened through (device, inode): with the
    /// index it names the pty (each devpts instance numbers its own).
    pub(crate) ptmx: (u64, u64),
    /// The slave's devpts inode (device, inode).
    pub(crate) slave: (u64, u64),
}

/// An fd of a process outside the tree on a pty of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutsideHolder {
    pub(crate) index: u32,
    pub(crate) pid: i32,
    pub(crate) fd: i32,
    pub(crate) master: bool,
}

/// Every fd of a process not in `tree` on an end of one of `ptys`. That includes us:
/// a dumper running on a pty of the tree it dumps (in a tmux pane, dumping that tmux)
/// would lose its own terminal. (Callers hold no duplicate of a pty while they ask.)
pub(crate) fn outside_holders(tree: &HashSet<i32>, ptys: &[PtyIdent]) -> Vec<OutsideHolder> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if tree.contains(&pid) {
            continue;
        }
        // A process that exits meanwhile, or a kernel thread, has nothing to read.
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(n) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(h) = holder(pid, n, ptys) {
                out.push(h);
            }
        }
    }
    out
}

/// The pty end fd `n` of `pid` holds, if it is one of `ptys`.
fn holder(pid: i32, n: i32, ptys: &[PtyIdent]) -> Option<OutsideHolder> {
    let path = format!("/proc/{pid}/fd/{n}");
    // Only files with a path can be a terminal; stat(2) on the rest (sockets, pipes,
    // anonymous inodes) tells nothing, and on a FUSE file could wait for its server.
    let link = std::fs::read_link(&path).ok()?;
    if !link.as_os_str().as_encoded_bytes().starts_with(b"/") {
        return None;
    }
    let meta = std::fs::metadata(&path).ok()?;
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_char_device() {
        return None;
    }
    let node = (meta.dev(), meta.ino());
    if let Some(p) = ptys.iter().find(|p| p.slave == node) {
        return Some(OutsideHolder {
            index: p.index,
            pid,
            fd: n,
            master: false,
        });
    }
    if ptys.iter().any(|p| p.ptmx == node) {
        // Which pty a /dev/ptmx fd is: its fdinfo says (tty-index, Linux 4.20+).
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")).ok()?;
        let index = super::super::fdinfo::parse_tty_index(&info)?;
        return ptys
            .iter()
            .find(|p| p.ptmx == node && p.index == index)
            .map(|p| OutsideHolder {
                index: p.index,
                pid,
                fd: n,
                master: true,
            });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};

    #[test]
    fn a_pty_held_by_another_process_is_found() {
        let Ok(master) = crate::sys::open_path(
            std::path::Path::new("/dev/ptmx"),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            0,
        ) else {
            eprintln!("skipped: no /dev/ptmx");
            return;
        };
        let index = crate::sys::ioctl_get_int(master.as_fd(), libc::TIOCGPTN as libc::c_ulong)
            .unwrap() as u32;
        let ptmx = std::fs::metadata(format!("/proc/self/fd/{}", master.as_raw_fd())).unwrap();
        let slave = crate::sys::pty_peer(master.as_fd(), libc::O_PATH | libc::O_CLOEXEC).unwrap();
        let slave = std::fs::metadata(format!("/proc/self/fd/{}", slave.as_raw_fd())).unwrap();
        let ident = PtyIdent {
            index,
            ptmx: (ptmx.dev(), ptmx.ino()),
            slave: (slave.dev(), slave.ino()),
        };
        // A child that inherits the master holds it; so do we.
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .stdin(std::fs::File::from(master.try_clone().unwrap()))
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let me = std::process::id() as i32;
        let found = outside_holders(&HashSet::new(), &[ident]);
        let in_tree = outside_holders(&HashSet::from([pid, me]), &[ident]);
        let _ = child.kill();
        let _ = child.wait();
        let child_holds = OutsideHolder {
            index,
            pid,
            fd: 0,
            master: true,
        };
        assert!(found.contains(&child_holds), "{found:?}");
        assert!(found.iter().any(|h| h.pid == me && h.master), "{found:?}");
        assert!(in_tree.is_empty(), "{in_tree:?}");
    }
}
