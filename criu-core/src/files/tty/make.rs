//! Making the tree's ptys again, before any task exists (see the parent module's doc):
//! each with its number, settings, queued data, slave files, owner and modes; the
//! hung-up slaves; and the controlling terminals the restore's stage 2 gives.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use criu_images::pb;

use super::super::kinds::Kind;
use super::super::restore::{bad, open_flags, FileOpener, FileRef, Result};
use super::{holders, info_id, queue, termios_from, ControllingTerminal, TIOCSPTLCK};
use crate::sys::{self, Pid};

/// The tty files of one pty whose master is in the images.
#[derive(Default)]
struct PtyFiles {
    master: Option<(u32, pb::TtyFileEntry)>,
    slaves: Vec<(u32, pb::TtyFileEntry)>,
    /// Files of `/dev/tty` standing for it: id, open flags.
    dev_tty: Vec<(u32, i32)>,
}

/// Lower numbers held while looking for a pty's: devpts numbers no more ptys than this
/// by default (`/proc/sys/kernel/pty/max` is 4096).
const MAX_HELD: usize = 4096;

impl FileOpener {
    /// The number of a pty end.
    fn pty_number(&self, tty: &pb::TtyFileEntry) -> u32 {
        self.ttys
            .infos
            .get(&tty.tty_info_id)
            .and_then(|i| i.pty)
            .map_or(tty.tty_info_id >> 1, |p| p.index)
    }

    /// Makes every pty whose master is in the images, before any task exists (see the
    /// module's doc), and returns the controlling terminals to give. `leaders`: the live
    /// processes of the images that lead their session. What it made waits for its
    /// tasks in the opener (dropping the opener closes it: nothing outlives a failed
    /// restore).
    ///
    /// A number taken by a pty outside the tree is waited for up to `wait` (another
    /// program's pty may be on its way out, as a pid may), then refused.
    pub fn make_ptys(
        &mut self,
        leaders: &[Pid],
        wait: std::time::Duration,
    ) -> Result<Vec<ControllingTerminal>> {
        let mut ptys: BTreeMap<u32, PtyFiles> = BTreeMap::new();
        let mut hung: BTreeMap<u32, Vec<(u32, pb::TtyFileEntry)>> = BTreeMap::new();
        // Slaves whose master was outside the tree, with `orphan_pts_master`.
        let mut orphans: BTreeMap<u32, Vec<(u32, pb::TtyFileEntry)>> = BTreeMap::new();
        let mut orphan_dev_tty: BTreeMap<u32, Vec<(u32, i32)>> = BTreeMap::new();
        let mut ids: Vec<u32> = self.files.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(tty) = self.files[&id].tty else {
                continue;
            };
            let index = self.pty_number(&tty);
            match self.tty_kind(&tty) {
                Ok((Kind::PtyMaster, _)) => {
                    let p = ptys.entry(index).or_default();
                    if p.master.is_some() {
                        return Err(bad("files.img", format!("two open masters of pty {index}")));
                    }
                    p.master = Some((id, tty));
                }
                Ok((Kind::PtySlavePaired, _)) => {
                    ptys.entry(index).or_default().slaves.push((id, tty));
                }
                Ok((Kind::PtySlaveHungUp, _)) => hung.entry(index).or_default().push((id, tty)),
                Ok((Kind::PtySlave, _)) if self.ttys.orphan_pts => {
                    orphans.entry(index).or_default().push((id, tty));
                }
                Ok((Kind::DevTty, _)) => {
                    let sid = self.ttys.infos[&tty.tty_info_id].sid;
                    if let Some(i) = self.session_pty(sid) {
                        let flags = open_flags(tty.flags);
                        if self.ttys.infos.contains_key(&info_id(i, true)) {
                            ptys.entry(i).or_default().dev_tty.push((id, flags));
                        } else {
                            orphan_dev_tty.entry(i).or_default().push((id, flags));
                        }
                    }
                }
                _ => {}
            }
        }
        // The lower numbers taken on the way to a pty's, released at the end.
        let mut held = Vec::new();
        let mut terminals = Vec::new();
        for (&index, files) in &ptys {
            let Some((id, tfe)) = &files.master else {
                // A slave is paired only when its master's info is there, which comes
                // with the master's file.
                return Err(bad(
                    "files.img",
                    format!("pty {index} has a master's tty-info but no master file"),
                ));
            };
            let at = FileRef {
                id: *id,
                kind: "TTY",
                fd: None,
            };
            let ptmx = tfe
                .regf_id
                .and_then(|r| self.files.get(&r))
                .and_then(|f| f.reg.as_ref())
                .map_or_else(|| PathBuf::from("/dev/ptmx"), |r| r.path().to_owned());
            let flags = open_flags(tfe.flags);
            let master = self.open_ptmx(&at, &ptmx, flags, index, &mut held, wait)?;
            let settings = self.ttys.infos[&info_id(index, true)].clone();
            let terminal =
                self.set_up_pty(&at, index, master.as_fd(), settings, &files.slaves, leaders)?;
            match (terminal, files.dev_tty.is_empty()) {
                (Some(mut t), _) => {
                    t.dev_tty.clone_from(&files.dev_tty);
                    terminals.push(t);
                }
                (None, true) => {}
                (None, false) => {
                    return Err(bad(
                        "tty-info.img",
                        format!("/dev/tty of /dev/pts/{index}, which is no session's terminal"),
                    ))
                }
            }
            self.ttys.made.insert(*id, master);
        }
        for (&index, slaves) in &orphans {
            if let Some(mut t) = self.make_orphan(index, slaves, leaders, &mut held, wait)? {
                t.dev_tty = orphan_dev_tty.remove(&index).unwrap_or_default();
                terminals.push(t);
            }
        }
        // Last: they take any number, and must not take one of the above.
        for (index, files) in &hung {
            self.make_hung_up(*index, files)?;
        }
        terminals.extend(self.simple_terminals(leaders)?);
        Ok(terminals)
    }

    /// A pty for slaves whose master was outside the tree (`orphan_pts_master`): made
    /// with their number in their devpts, with the slave's settings; its master is kept
    /// for the caller (`take_orphan_masters`).
    fn make_orphan(
        &mut self,
        index: u32,
        slaves: &[(u32, pb::TtyFileEntry)],
        leaders: &[Pid],
        held: &mut Vec<OwnedFd>,
        wait: std::time::Duration,
    ) -> Result<Option<ControllingTerminal>> {
        let Some((first, tfe)) = slaves.first() else {
            return Ok(None);
        };
        let at = FileRef {
            id: *first,
            kind: "TTY",
            fd: None,
        };
        // The devpts of the slave's node: its own `ptmx`, or /dev/ptmx for /dev/pts.
        let slave_path = tfe
            .regf_id
            .and_then(|r| self.files.get(&r))
            .and_then(|f| f.reg.as_ref())
            .map(|r| r.path().to_owned());
        let ptmx = match slave_path.as_deref().and_then(Path::parent) {
            Some(dir) if dir != Path::new("/dev/pts") => dir.join("ptmx"),
            _ => PathBuf::from("/dev/ptmx"),
        };
        let master = self.open_ptmx(&at, &ptmx, libc::O_RDWR, index, held, wait)?;
        // The slave's own info holds the settings the master would have read.
        let mut settings = self.ttys.infos[&info_id(index, false)].clone();
        settings.packet_mode = false;
        settings.locked = false;
        settings.exclusive = false;
        let terminal = self.set_up_pty(&at, index, master.as_fd(), settings, slaves, leaders)?;
        self.ttys.orphan_masters.push((index, master));
        Ok(terminal)
    }

    /// The slave files of a pty whose master was closed (`index` at dump): slaves of a new
    /// pty, of whatever number (their node is gone), whose master is closed at once.
    fn make_hung_up(&mut self, index: u32, files: &[(u32, pb::TtyFileEntry)]) -> Result<()> {
        let Some((first, _)) = files.first() else {
            return Ok(());
        };
        let at = FileRef {
            id: *first,
            kind: "TTY",
            fd: None,
        };
        let path = self.at_root(Path::new("/dev/ptmx"));
        let master = sys::open_path(&path, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC, 0)
            .map_err(at.io(format!(
                "open {} for hung-up /dev/pts/{index}",
                path.display()
            )))?;
        sys::ioctl_set_int(master.as_fd(), TIOCSPTLCK, 0).map_err(at.io("unlock a pty"))?;
        for (id, tfe) in files {
            let flags = open_flags(tfe.flags) | libc::O_NOCTTY | libc::O_CLOEXEC;
            let fd = sys::pty_peer(master.as_fd(), flags).map_err(at.io("open a pty slave"))?;
            self.ttys.made.insert(*id, fd);
        }
        // Closing the master hangs its slaves up.
        drop(master);
        Ok(())
    }

    /// Opens the master of pty `index` through `ptmx` (the path its file was opened
    /// through, under `--root`) until devpts gives that number, holding the lower
    /// ones in `held`.
    fn open_ptmx(
        &mut self,
        at: &FileRef,
        ptmx: &Path,
        flags: i32,
        index: u32,
        held: &mut Vec<OwnedFd>,
        wait: std::time::Duration,
    ) -> Result<OwnedFd> {
        if let Some(master) = self.ttys.premade.remove(&index) {
            // Made unlocked and blocking, read-write: the dumped status flags.
            let status = flags & (libc::O_NONBLOCK | libc::O_APPEND | libc::O_ASYNC);
            sys::fcntl_set(master.as_fd(), libc::F_SETFL, status)
                .map_err(at.io(format!("set the flags of pty {index}'s master")))?;
            sys::ioctl_set_int(master.as_fd(), TIOCSPTLCK, 1)
                .map_err(at.io("lock a pty until it is set up"))?;
            return Ok(master);
        }
        let deadline = std::time::Instant::now() + wait;
        let path = self.at_root(ptmx);
        let flags = flags | libc::O_NOCTTY | libc::O_CLOEXEC;
        loop {
            let m = sys::open_path(&path, flags, 0)
                .map_err(at.io(format!("open {} for pty {index}", path.display())))?;
            let got = sys::ioctl_get_int(m.as_fd(), libc::TIOCGPTN as libc::c_ulong)
                .map_err(at.io("read a new pty's number (TIOCGPTN)"))? as u32;
            if got == index {
                return Ok(m);
            }
            if got > index && std::time::Instant::now() < deadline {
                // Taken: this one goes back, the lower ones stay held.
                drop(m);
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            if got > index || held.len() >= MAX_HELD {
                return Err(at.refused(format!(
                    "pty {index} (/dev/pts/{index}): that number is taken on this system{} \
                     (a new pty would have another name, which programs such as tmux, \
                     script and login keep)",
                    taken_by(&path, index)
                )));
            }
            held.push(m);
        }
    }

    /// Settings, queued data, slave files, controlling terminal, modes and lock of the
    /// new pty `index` whose master is `m`; `minfo` is the master's info (the slave's
    /// for a pty whose master was not dumped).
    fn set_up_pty(
        &mut self,
        at: &FileRef,
        index: u32,
        m: BorrowedFd<'_>,
        minfo: pb::TtyInfoEntry,
        slaves: &[(u32, pb::TtyFileEntry)],
        leaders: &[Pid],
    ) -> Result<Option<ControllingTerminal>> {
        let name = format!("/dev/pts/{index}");
        let sinfo = self.ttys.infos.get(&info_id(index, false)).cloned();
        sys::ioctl_set_int(m, TIOCSPTLCK, 0).map_err(at.io("unlock the pty"))?;
        // A master reads and sets its slave's settings: the master's info has them.
        let termios = minfo
            .termios
            .as_ref()
            .map(termios_from)
            .ok_or_else(|| bad("tty-info.img", format!("{name} has no settings")))?;
        sys::tty_set_termios(m, libc::TCSETS as libc::c_ulong, &termios)
            .map_err(at.io(format!("set the settings of {name}")))?;
        if let Some(w) = &minfo.winsize {
            let w = libc::winsize {
                ws_row: w.ws_row as u16,
                ws_col: w.ws_col as u16,
                ws_xpixel: w.ws_xpixel as u16,
                ws_ypixel: w.ws_ypixel as u16,
            };
            sys::tty_set_winsize(m, &w).map_err(at.io(format!("set the window size of {name}")))?;
        }
        let queued = queue::Queued {
            at_master: self
                .ttys
                .data
                .remove(&info_id(index, true))
                .unwrap_or_default(),
            at_slave: self
                .ttys
                .data
                .remove(&info_id(index, false))
                .unwrap_or_default(),
        };
        queue::refill(m, &termios, &queued)
            .map_err(at.io(format!("put back the data queued in {name}")))?;
        if let Some(locked) = &minfo.termios_locked {
            set_locked_termios(m, &termios_from(locked))
                .map_err(at.io(format!("set the locked settings of {name}")))?;
        }
        // The tree's slave files, each its own open file description.
        let mut first_slave = None;
        for (id, tfe) in slaves {
            let flags = open_flags(tfe.flags) | libc::O_NOCTTY | libc::O_CLOEXEC;
            let fd = sys::pty_peer(m, flags).map_err(at.io(format!("open {name}")))?;
            if first_slave.is_none() {
                first_slave = Some(fd.try_clone().map_err(at.io("duplicate a pty slave"))?);
            }
            self.ttys.made.insert(*id, fd);
        }
        let sid = if minfo.sid != 0 {
            minfo.sid
        } else {
            sinfo.as_ref().map_or(0, |s| s.sid)
        };
        let terminal = if sid != 0 {
            if !leaders.contains(&Pid(sid as i32)) {
                return Err(bad(
                    "tty-info.img",
                    format!(
                        "{name} is the controlling terminal of session {sid}, whose leader \
                         is not a live process of the images"
                    ),
                ));
            }
            let pgrp = [minfo.pgrp, sinfo.as_ref().map_or(0, |s| s.pgrp), sid]
                .into_iter()
                .find(|&g| g != 0)
                .unwrap_or(sid);
            let slave = sys::pty_peer(m, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)
                .map_err(at.io(format!("open {name}")))?;
            Some(ControllingTerminal {
                sid: Pid(sid as i32),
                pgrp: Pid(pgrp as i32),
                slave,
                name: name.clone(),
                dev_tty: Vec::new(),
            })
        } else {
            None
        };
        // The slave's node, as it was (the restorer made it its own).
        let slave_mode = slaves
            .first()
            .and_then(|(_, t)| t.regf_id)
            .and_then(|r| self.files.get(&r))
            .and_then(|f| f.reg.as_ref())
            .and_then(|r| r.mode);
        let node = first_slave.as_ref().or(terminal.as_ref().map(|t| &t.slave));
        if let Some(node) = node {
            let file = File::from(node.try_clone().map_err(at.io("duplicate a pty slave"))?);
            if let Some(s) = &sinfo {
                if let (Some(uid), Some(gid)) = (s.uid, s.gid) {
                    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                        .map_err(at.io(format!("give {name} to {uid}:{gid}")))?;
                }
            }
            if let Some(mode) = slave_mode {
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(at.io(format!("set the mode of {name}")))?;
            }
        }
        if slaves.is_empty() && !minfo.locked {
            // No task held a slave: the master reads EIO, as once its last slave closed
            // (a slave that is opened and closed leaves it so).
            drop(sys::pty_peer(
                m,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            ));
        }
        if minfo.packet_mode {
            sys::ioctl_set_int(m, libc::TIOCPKT as libc::c_ulong, 1)
                .map_err(at.io(format!("put the master of {name} in packet mode")))?;
        }
        if minfo.exclusive {
            sys::ioctl_none(m, libc::TIOCEXCL as libc::c_ulong)
                .map_err(at.io("make the master exclusive"))?;
        }
        if sinfo.as_ref().is_some_and(|s| s.exclusive) {
            if let Some(node) = node {
                sys::ioctl_none(node.as_fd(), libc::TIOCEXCL as libc::c_ulong)
                    .map_err(at.io(format!("make {name} exclusive")))?;
            }
        }
        if minfo.locked {
            sys::ioctl_set_int(m, TIOCSPTLCK, 1).map_err(at.io(format!("lock {name}")))?;
        }
        Ok(terminal)
    }
}

/// `TIOCSLCKTRMIOS` needs CAP_SYS_ADMIN; without it, settings locked as wanted already
/// (a fresh pty locks nothing) are no failure.
fn set_locked_termios(m: BorrowedFd<'_>, want: &libc::termios) -> std::io::Result<()> {
    match sys::tty_set_termios(m, libc::TIOCSLCKTRMIOS as libc::c_ulong, want) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let now = sys::tty_termios(m, libc::TIOCGLCKTRMIOS as libc::c_ulong)?;
            let same = (now.c_iflag, now.c_oflag, now.c_cflag, now.c_lflag, now.c_cc)
                == (
                    want.c_iflag,
                    want.c_oflag,
                    want.c_cflag,
                    want.c_lflag,
                    want.c_cc,
                );
            if same {
                Ok(())
            } else {
                Err(e)
            }
        }
        other => other,
    }
}

/// Who holds pty `index` of the devpts behind `ptmx`, for a message (best effort).
fn taken_by(ptmx: &Path, index: u32) -> String {
    let Ok(node) = std::fs::metadata(ptmx) else {
        return String::new();
    };
    let ident = holders::PtyIdent {
        index,
        ptmx: (node.dev(), node.ino()),
        slave: (0, 0),
    };
    let found = holders::outside_holders(&HashSet::new(), &[ident]);
    if found.is_empty() {
        return String::new();
    }
    let list: Vec<String> = found
        .iter()
        .map(|h| format!("process {} fd {}", h.pid, h.fd))
        .collect();
    format!(" (its master is open in {})", list.join(", "))
}
