//! Consoles (`/dev/console`, 5:1) and virtual terminals (`/dev/ttyN`, 4:1..63): devices
//! the kernel already has, which the restore opens again by path, with the settings they
//! had (as CRIU does: its CONSOLE and VT terminal types).
//!
//! CRIU numbers their `tty_info_entry` by kind, not by device (one id for every console,
//! one for every virtual terminal), so a dump holding two different virtual terminals
//! cannot be told apart in its images: refused. One that is the controlling terminal of
//! a session whose leader holds it is recorded with the session (and its foreground
//! group), and the leader takes it again at restore as it takes a pty (`make.rs`); one
//! that is the controlling terminal of a task that does not lead its session is refused.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use criu_images::pb;

use super::super::dump::{FileError, OpenFd};
use super::super::kinds::Kind;
use super::super::restore::{bad, finish, open_flags, FileOpener, FileRef, Result};
use super::{fill_settings, session_and_tty, termios_from, ControllingTerminal, Ttys, TIOCGEXCL};
use crate::sys::{self, Pid};

/// `TTY_MAJOR`: virtual terminals on minors 1 to 63, serial lines above.
const TTY_MAJOR: u32 = 4;
/// `MAX_NR_CONSOLES` of the kernel.
const MAX_VT: u32 = 63;
/// CRIU's indexes of the two kinds (`tty_info_entry` ids are these shifted by one).
const CONSOLE_INDEX: u32 = 1002;
const VT_INDEX: u32 = 1004;

/// A terminal reopened by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::files) enum SimpleTty {
    Console,
    Vt,
}

impl SimpleTty {
    pub(in crate::files) fn from_rdev(rdev: u64) -> Option<SimpleTty> {
        match (libc::major(rdev), libc::minor(rdev)) {
            (5, 1) => Some(SimpleTty::Console),
            (TTY_MAJOR, 1..=MAX_VT) => Some(SimpleTty::Vt),
            _ => None,
        }
    }

    pub(in crate::files) fn kind(self) -> Kind {
        match self {
            SimpleTty::Console => Kind::Console,
            SimpleTty::Vt => Kind::Vt,
        }
    }

    fn tty_type(self) -> pb::TtyType {
        match self {
            SimpleTty::Console => pb::TtyType::Console,
            SimpleTty::Vt => pb::TtyType::Vt,
        }
    }

    /// The `tty_info_entry` id CRIU gives the kind.
    fn info_id(self) -> u32 {
        match self {
            SimpleTty::Console => CONSOLE_INDEX << 1,
            SimpleTty::Vt => VT_INDEX << 1,
        }
    }
}

impl Ttys {
    pub(in crate::files) fn dump_simple(
        &mut self,
        fd: &OpenFd<'_>,
        which: SimpleTty,
        id: u32,
        regf_id: u32,
    ) -> Result<pb::TtyFileEntry, FileError> {
        let rdev = fd.meta.rdev();
        let name = format!(
            "{} ({}:{})",
            which.kind(),
            libc::major(rdev),
            libc::minor(rdev)
        );
        // The session it is the controlling terminal of, given back by its leader at
        // restore: recorded when the leader holds it (so the leader is in the tree).
        let (sid, pgrp) = match session_and_tty(fd.pid) {
            Some((sid, tty_nr, tpgid)) if tty_nr == rdev => {
                if sid != i64::from(fd.pid.0) {
                    return Err(fd.unsupported(format!(
                        "{name}: it is the controlling terminal of session {sid}, held by \
                         a task that does not lead it (only a leader's is given back)"
                    )));
                }
                (sid as u32, tpgid.max(0) as u32)
            }
            _ => (0, 0),
        };
        let tty_info_id = which.info_id();
        if let Some(other) = self.infos.iter_mut().find(|i| i.id == tty_info_id) {
            if other.sid == 0 {
                (other.sid, other.pgrp) = (sid, pgrp);
            }
            if u64::from(other.rdev) != rdev {
                let o = u64::from(other.rdev);
                return Err(fd.unsupported(format!(
                    "{name} beside {}:{}: the images keep one terminal of this kind",
                    libc::major(o),
                    libc::minor(o)
                )));
            }
        } else {
            let exclusive = sys::ioctl_get_int(fd.raw(), TIOCGEXCL).is_ok_and(|v| v != 0);
            let mut info = pb::TtyInfoEntry {
                id: tty_info_id,
                r#type: which.tty_type() as i32,
                locked: false,
                exclusive,
                packet_mode: false,
                sid,
                pgrp,
                rdev: rdev as u32,
                termios: None,
                termios_locked: None,
                winsize: None,
                pty: None,
                dev: Some(fd.meta.dev() as u32),
                uid: Some(fd.meta.uid()),
                gid: Some(fd.meta.gid()),
            };
            fill_settings(fd, &mut info)?;
            self.infos.push(info);
            self.done.insert(tty_info_id);
        }
        Ok(pb::TtyFileEntry {
            id,
            tty_info_id,
            flags: fd.common.flags,
            fown: fd.fown()?,
            regf_id: Some(regf_id),
        })
    }
}

impl FileOpener {
    /// The path it is reopened by, and its `tty_info_entry`.
    fn simple_tty_parts(
        &self,
        tty: &pb::TtyFileEntry,
    ) -> Result<(&pb::RegFileEntry, &pb::TtyInfoEntry)> {
        let info = self.ttys.infos.get(&tty.tty_info_id).ok_or_else(|| {
            bad(
                "tty-info.img",
                format!("no terminal {:#x} (file {})", tty.tty_info_id, tty.id),
            )
        })?;
        let regf_id = tty.regf_id.ok_or_else(|| {
            bad(
                "files.img",
                format!("terminal file {} has no path (regf_id)", tty.id),
            )
        })?;
        let reg = self
            .files
            .get(&regf_id)
            .and_then(|f| f.reg.as_ref())
            .ok_or_else(|| {
                bad(
                    "files.img",
                    format!("terminal file {}: no path entry {regf_id}", tty.id),
                )
            })?;
        let short = [&info.termios, &info.termios_locked]
            .into_iter()
            .flatten()
            .any(|t| t.c_cc.len() < 8);
        if short {
            return Err(bad(
                "tty-info.img",
                format!(
                    "terminal {:#x}: its control characters are cut short",
                    info.id
                ),
            ));
        }
        Ok((reg, info))
    }

    /// The consoles and virtual terminals that are a session's controlling terminal,
    /// for its leader (one of `leaders`) to take in the restore's stage 2.
    pub(super) fn simple_terminals(&self, leaders: &[Pid]) -> Result<Vec<ControllingTerminal>> {
        let mut out = Vec::new();
        let mut ids: Vec<u32> = self.files.keys().copied().collect();
        ids.sort_unstable();
        let mut done = Vec::new();
        for id in ids {
            let Some(tty) = self.files[&id].tty else {
                continue;
            };
            if !matches!(self.tty_kind(&tty), Ok((Kind::Console | Kind::Vt, _)))
                || done.contains(&tty.tty_info_id)
            {
                continue;
            }
            done.push(tty.tty_info_id);
            let (reg, info) = self.simple_tty_parts(&tty)?;
            if info.sid == 0 {
                continue;
            }
            let path = self.at_root(reg.path());
            let name = path.display().to_string();
            let sid = Pid(info.sid as i32);
            if !leaders.contains(&sid) {
                return Err(bad(
                    "tty-info.img",
                    format!(
                        "{name} is the controlling terminal of session {sid}, whose leader \
                         is not a live process of the images"
                    ),
                ));
            }
            let at = FileRef {
                id,
                kind: "TTY",
                fd: None,
            };
            let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
            let slave =
                sys::open_path(&path, flags, 0).map_err(at.io(format!("open terminal {name}")))?;
            let pgrp = if info.pgrp != 0 { info.pgrp } else { info.sid };
            out.push(ControllingTerminal {
                sid,
                pgrp: Pid(pgrp as i32),
                slave,
                name,
                dev_tty: Vec::new(),
            });
        }
        Ok(out)
    }

    pub(super) fn check_simple_tty(&self, tty: &pb::TtyFileEntry) -> Result<()> {
        self.simple_tty_parts(tty).map(drop)
    }

    /// Opens the terminal's node again (never as a controlling terminal), checks it is
    /// the same device, and gives it the saved settings where they differ.
    pub(super) fn open_simple_tty(
        &mut self,
        at: &FileRef,
        tty: &pb::TtyFileEntry,
    ) -> Result<OwnedFd> {
        let (reg, info) = self.simple_tty_parts(tty)?;
        let (reg, info) = (reg.clone(), info.clone());
        let path = self.at_root(reg.path());
        let flags = open_flags(tty.flags) | libc::O_NOCTTY | libc::O_CLOEXEC;
        let fd = sys::open_path(&path, flags, 0)
            .map_err(at.io(format!("open terminal {}", path.display())))?;
        let meta = std::fs::File::from(fd.try_clone().map_err(at.io("duplicate a terminal"))?)
            .metadata()
            .map_err(at.io(format!("stat {}", path.display())))?;
        if meta.rdev() as u32 != info.rdev {
            let want = u64::from(info.rdev);
            return Err(at.refused(format!(
                "{} is device {}:{}, the dumped terminal was {}:{}",
                path.display(),
                libc::major(meta.rdev()),
                libc::minor(meta.rdev()),
                libc::major(want),
                libc::minor(want)
            )));
        }
        set_settings(at, fd.as_fd(), &info)?;
        finish(at, fd.as_fd(), tty.flags, &tty.fown)?;
        Ok(fd)
    }
}

/// Settings, locked settings and window size as saved, each set only where it differs
/// from what the terminal has (the device is shared with the rest of the system).
fn set_settings(
    at: &FileRef,
    fd: std::os::fd::BorrowedFd<'_>,
    info: &pb::TtyInfoEntry,
) -> Result<()> {
    let settings = [
        (
            &info.termios_locked,
            libc::TIOCGLCKTRMIOS,
            libc::TIOCSLCKTRMIOS,
            "locked settings",
        ),
        (&info.termios, libc::TCGETS, libc::TCSETS, "settings"),
    ];
    for (saved, get, set, what) in settings {
        let Some(saved) = saved else { continue };
        let want = termios_from(saved);
        let have = sys::tty_termios(fd, get as libc::c_ulong)
            .map_err(at.io(format!("read the terminal's {what}")))?;
        if !same_termios(&want, &have) {
            sys::tty_set_termios(fd, set as libc::c_ulong, &want)
                .map_err(at.io(format!("set the terminal's {what}")))?;
        }
    }
    if let Some(w) = &info.winsize {
        let want = libc::winsize {
            ws_row: w.ws_row as u16,
            ws_col: w.ws_col as u16,
            ws_xpixel: w.ws_xpixel as u16,
            ws_ypixel: w.ws_ypixel as u16,
        };
        let have = sys::tty_winsize(fd).map_err(at.io("read the terminal's window size"))?;
        let differs = (want.ws_row, want.ws_col, want.ws_xpixel, want.ws_ypixel)
            != (have.ws_row, have.ws_col, have.ws_xpixel, have.ws_ypixel);
        if differs {
            sys::tty_set_winsize(fd, &want).map_err(at.io("set the terminal's window size"))?;
        }
    }
    Ok(())
}

fn same_termios(a: &libc::termios, b: &libc::termios) -> bool {
    (a.c_iflag, a.c_oflag, a.c_cflag, a.c_lflag, a.c_line, a.c_cc)
        == (b.c_iflag, b.c_oflag, b.c_cflag, b.c_lflag, b.c_line, b.c_cc)
        && (a.c_ispeed, a.c_ospeed) == (b.c_ispeed, b.c_ospeed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consoles_and_virtual_terminals() {
        let of = |maj, min| SimpleTty::from_rdev(libc::makedev(maj, min));
        assert_eq!(of(5, 1), Some(SimpleTty::Console));
        assert_eq!(of(4, 1), Some(SimpleTty::Vt));
        assert_eq!(of(4, 63), Some(SimpleTty::Vt));
        // tty0 (the current VT), serial lines, /dev/tty, ptmx.
        assert_eq!(of(4, 0), None);
        assert_eq!(of(4, 64), None);
        assert_eq!(of(5, 0), None);
        assert_eq!(of(5, 2), None);
        assert_eq!(SimpleTty::Console.info_id(), 2004);
        assert_eq!(SimpleTty::Vt.info_id(), 2008);
    }
}
