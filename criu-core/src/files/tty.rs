//! Pseudo-terminals (Unix98 ptys). The dump records each end with its settings; the
//! restore rebuilds a shell job's terminal only (a pty slave whose master is not in the
//! dump, with `--shell-job`), as the restorer's own terminal.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use criu_images::pb;

use super::dump::{writer, FileError, OpenFd};
use super::fdinfo;
use super::kinds::{Given, Kind};
use super::restore::{bad, optional, read_entries, FileOpener, FileRef, Result, NO_OPENER};
use crate::sys::{self, Pid};

// --- dump ------------------------------------------------------------------------

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

// --- restore ---------------------------------------------------------------------

/// The major numbers of pty slaves (`/dev/pts/N`, UNIX98_PTY_SLAVE_MAJOR and the 7 after).
fn is_pty_slave(rdev: u32) -> bool {
    (136..=143).contains(&libc::major(u64::from(rdev)))
}

/// The restore's terminals: what `tty-info.img` says of each, and the restorer's own
/// terminal that a shell job's becomes.
#[derive(Default)]
pub(super) struct RestoreState {
    pub(super) infos: HashMap<u32, pb::TtyInfoEntry>,
    /// `--shell-job`: the restorer's own terminal, which the job's terminal fds become.
    pub(super) inherited_terminal: Option<OwnedFd>,
}

impl RestoreState {
    /// Reads `tty-info.img` from `dir`, if there is one.
    pub(super) fn load(dir: &Path) -> Result<RestoreState> {
        let mut infos = HashMap::new();
        if let Some(path) = optional(dir, "tty-info.img") {
            for t in read_entries::<pb::TtyInfoEntry>(&path)? {
                infos.insert(t.id, t);
            }
        }
        Ok(RestoreState {
            infos,
            inherited_terminal: None,
        })
    }
}

impl FileOpener {
    /// Whether some fd of the dump is a terminal that `--shell-job` replaces.
    pub fn has_job_terminal(&self) -> bool {
        self.files
            .values()
            .any(|f| f.tty.as_ref().is_some_and(|t| self.job_terminal(t).is_ok()))
    }

    /// Ok when `tty` is a pty slave whose master is not in the dump (a shell job's
    /// terminal); otherwise what it is.
    fn job_terminal(&self, tty: &pb::TtyFileEntry) -> std::result::Result<(), String> {
        match self.tty_kind(tty)? {
            (Kind::PtySlave, _) => Ok(()),
            (kind, name) => Err(format!("{kind} ({name})")),
        }
    }

    /// The kind of a terminal file and its name (`/dev/pts/3`); `Err` when its
    /// tty-info is missing.
    pub(super) fn tty_kind(
        &self,
        tty: &pb::TtyFileEntry,
    ) -> std::result::Result<(Kind, String), String> {
        let Some(info) = self.ttys.infos.get(&tty.tty_info_id) else {
            return Err(format!("terminal with no tty-info {}", tty.tty_info_id));
        };
        let index = info.pty.map(|p| p.index);
        let name = index.map_or("a terminal".to_owned(), |i| format!("/dev/pts/{i}"));
        if info.r#type != pb::TtyType::Pty as i32 {
            return Ok((Kind::OtherTty, name));
        }
        if !is_pty_slave(info.rdev) {
            return Ok((Kind::PtyMaster, format!("/dev/ptmx, {name}")));
        }
        let master_here = self.ttys.infos.values().any(|t| {
            t.r#type == pb::TtyType::Pty as i32
                && !is_pty_slave(t.rdev)
                && t.pty.map(|p| p.index) == index
        });
        if master_here {
            return Ok((Kind::PtySlavePaired, name));
        }
        Ok((Kind::PtySlave, name))
    }

    /// The kind table judged the kind; a shell job's terminal also needs ours.
    pub(super) fn check_tty(&self, pid: Pid, at: &FileRef, tty: &pb::TtyFileEntry) -> Result<()> {
        if self.job_terminal(tty).is_ok() && self.ttys.inherited_terminal.is_none() {
            return Err(at.unsupported(
                pid,
                "a shell job's terminal: --shell-job needs a terminal on stdin",
            ));
        }
        Ok(())
    }

    /// A shell job's terminal becomes ours; no other terminal is rebuilt.
    pub(super) fn open_tty(&self, at: &FileRef, tty: &pb::TtyFileEntry) -> Result<OwnedFd> {
        match self.tty_kind(tty) {
            Ok((Kind::PtySlave, _)) => match &self.ttys.inherited_terminal {
                // The same open file description as ours, as CRIU's shell jobs get.
                Some(t) => t.try_clone().map_err(at.io("duplicate our terminal")),
                None => Err(at.refused("a shell job's terminal without --shell-job")),
            },
            Ok((kind, name)) => Err(at.refused(format!("{kind} ({name}) {NO_OPENER}"))),
            Err(what) => Err(bad("tty-info.img", what)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
