//! Pseudo-terminals (Unix98 ptys): a terminal server's (tmux, screen, script, sshd)
//! masters and the slaves its children run on, with everything the pair holds, and a
//! shell job's terminal.
//!
//! # What is saved
//!
//! Every end the tree holds (`tty_file_entry`, with the path in a `reg_file_entry`), and
//! per end one `tty_info_entry` (ids `index << 1`, plus 1 for a master, as CRIU numbers
//! them): the slave's settings (termios and the locked termios, which a master reads and
//! sets for its slave), the window size, packet mode and the lock (masters), exclusive
//! mode, the owner of the slave's node, and the session whose controlling terminal the
//! pty is with its foreground group. The data queued both ways goes to `tty-data.img`
//! (`queue.rs`), always, as CRIU does (CRIU has no option for it).
//!
//! # What is refused at dump, before the freeze
//!
//! A pty whose master the tree holds comes back as a new pty, so nobody outside the
//! tree may hold either end (`holders.rs` looks at every other process's fds), nor may it
//! be the controlling terminal of a session whose leader is outside the tree. A slave
//! whose master is outside is a shell job's terminal: dumped and restored with
//! `--shell-job`, where it becomes the restorer's own terminal; or a container's
//! console (its monitor holds the master): with CRIU's `orphan_pts_master` (runc asks
//! for it over the RPC) it comes back as the slave of a new pty with its number, made
//! with the slave's settings, whose master goes to the caller with the
//! `orphan-pts-master` notification. Other terminals
//! (serial lines, BSD ptys) are refused; consoles and virtual terminals are reopened by
//! path (`simple.rs`). CRIU's `--external tty[...]` and
//! `--inherit-fd` for a terminal are not supported.
//!
//! An fd of `/dev/tty` stands for the terminal its opener had (`TIOCGDEV` says which);
//! CRIU records it as one CTTY `tty_info_entry` (fixed id) with its session, and so do
//! we, refusing a second one for another terminal. On restore the session's leader
//! opens `/dev/tty` again right after it takes its terminal; for a shell job's terminal
//! the restorer opens its own.
//!
//! A slave whose master was closed (hung up: EIO to everything but close) is recorded
//! without settings, as CRIU does, and comes back as a slave of a new pty whose master
//! the restorer closes at once (its number is not kept: devpts removed its name).
//!
//! # Restore
//!
//! Before any task exists (`FileOpener::make_ptys`, `make.rs`), every pty is made again
//! in the devpts of the path its master was opened through (under `--root`), with its
//! number: devpts hands out the lowest free number, so `/dev/ptmx` is opened until it
//! gives that one, the lower ones held meanwhile. When the number is taken by a pty
//! outside the tree it is waited for as long as a busy pid (`pid_wait`), then the
//! restore fails, naming the number and who holds it, before any task exists: another
//! number would do for the kernel, but not for programs that kept the name `/dev/pts/N`
//! (tmux shows it, script and login record it in utmp, a shell's `tty` printed it).
//! Then: settings, window size, the queued data, each slave file of the tree (opened
//! through the master, `TIOCGPTPEER`, so it is the pty's own whatever the paths), owner
//! and mode of the slave's node, packet mode, exclusive mode, the lock. A master none of
//! whose slaves the tree held comes back with its slave closed (reads give EIO once the
//! queue is read, as after its last slave closed).
//!
//! The controlling terminals are given in the restore's stage 2 (`restore/tree.rs`): the
//! session's leader takes it (`TIOCSCTTY`) right after `setsid()` and before it clones
//! anyone, so every task cloned into its session has it too (a process gets one from its
//! parent at fork, or as a session leader by that call: CRIU gives it to the leader
//! alone, after its children exist, so they come back without one); once every process
//! group exists, the leader makes the dumped group the foreground one (`TIOCSPGRP`).

mod holders;
mod make;
mod queue;
mod simple;

pub(super) use simple::SimpleTty;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use criu_images::pb;

use super::dump::{writer, FileError, OpenFd};
use super::fdinfo;
use super::kinds::{Given, Kind};
use super::restore::{bad, finish, optional, read_entries, FileOpener, FileRef, Result, NO_OPENER};
use crate::sys::{self, Pid};

const TIOCGPKT: libc::c_ulong = 0x8004_5438;
const TIOCGPTLCK: libc::c_ulong = 0x8004_5439;
const TIOCSPTLCK: libc::c_ulong = 0x4004_5431;
const TIOCGEXCL: libc::c_ulong = 0x8004_5440;

/// CRIU's id of a pty end's `tty_info_entry`.
fn info_id(index: u32, master: bool) -> u32 {
    (index << 1) | u32::from(master)
}

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

/// CRIU's `tty_info_entry` id of `/dev/tty` (its CTTY_INDEX, 1006, shifted as every id).
const DEV_TTY_INFO_ID: u32 = 1006 << 1;

/// The device number of the terminal an fd of `/dev/tty` stands for (`TIOCGDEV`; it is
/// the opener's controlling terminal, fixed at open).
fn real_tty(fd: &OpenFd<'_>) -> Result<u64, FileError> {
    const TIOCGDEV: libc::c_ulong = 0x8004_5432;
    let dev = sys::ioctl_get_int(fd.raw(), TIOCGDEV)
        .map_err(fd.io("read which terminal /dev/tty is (TIOCGDEV)"))? as u32;
    // The kernel's new_encode_dev: minor's low byte, major, then minor's high bits.
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    Ok(libc::makedev(major, minor))
}

/// The kind of an fd of `/dev/tty` (see [`Kind::DevTty`]), given the ptys whose master
/// the tree holds.
pub(super) fn dev_tty_kind(fd: &OpenFd<'_>, masters: &HashSet<u32>) -> Result<Kind, FileError> {
    let real = match real_tty(fd) {
        Ok(r) => r,
        // A terminal that hung up.
        Err(FileError::Io { source, .. }) if source.raw_os_error() == Some(libc::EIO) => {
            return Ok(Kind::OtherTty)
        }
        Err(e) => return Err(e),
    };
    Ok(match Pty::from_rdev(real) {
        Some(Pty {
            master: false,
            index: Some(i),
        }) if masters.contains(&i) => Kind::DevTty,
        Some(Pty { master: false, .. }) => Kind::DevTtyJob,
        _ => Kind::OtherTty,
    })
}

/// Whether the terminal `fd` is on hung up (its pty's master closed): it answers EIO.
pub(super) fn hung_up(fd: &OpenFd<'_>) -> bool {
    sys::tty_termios(fd.raw(), libc::TCGETS as libc::c_ulong)
        .is_err_and(|e| e.raw_os_error() == Some(libc::EIO))
}

/// Settings, locked settings and window size of a terminal (none of a hung-up one, which
/// answers EIO).
fn fill_settings(fd: &OpenFd<'_>, info: &mut pb::TtyInfoEntry) -> Result<(), FileError> {
    let s = fd.raw();
    match sys::tty_termios(s, libc::TCGETS as libc::c_ulong) {
        Ok(t) => info.termios = Some(termios_entry(&t)),
        Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(()),
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
    Ok(())
}

/// The terminals of a dump: one `tty_info_entry` per terminal end.
#[derive(Default)]
pub(super) struct Ttys {
    infos: Vec<pb::TtyInfoEntry>,
    done: HashSet<u32>,
    /// Every pty slave fd dumped: task, fd, pty number, hung up.
    slaves: Vec<(Pid, i32, u32, bool)>,
    /// A duplicate of each pty master dumped, by pty number, with the first task and fd
    /// holding it: the pty's queues are read through it.
    masters: BTreeMap<u32, (Pid, i32, File)>,
    /// `tty-data.img`: what [`Ttys::drain`] read out.
    data: Vec<pb::TtyDataEntry>,
    /// Every `/dev/tty` fd dumped: task, fd, the number of the pty it stands for.
    dev_ttys: Vec<(Pid, i32, u32)>,
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

/// How many `c_cc` entries CRIU writes (`TERMIOS_NCC`, the kernel's NCCS) and requires.
const IMAGE_NCC: usize = 19;

/// A termios as CRIU's images hold it. `c_cc` is not one control character per entry,
/// whatever the schema suggests: CRIU copies glibc's 32-byte `c_cc` array byte for byte
/// into the entry's array of 32-bit words (`termios_copy` is a memcpy), so the first 8
/// words hold 4 characters each, little-endian, and CRIU leaves the other 11 of its 19
/// words as its allocator found them (we write zeros). CRIU's restore copies the same
/// 32 bytes back, so that is the format both sides must use.
fn termios_entry(t: &libc::termios) -> pb::TermiosEntry {
    let mut c_cc = vec![0u32; IMAGE_NCC];
    for (word, chars) in c_cc.iter_mut().zip(t.c_cc.chunks(4)) {
        let mut b = [0u8; 4];
        b[..chars.len()].copy_from_slice(chars);
        *word = u32::from_le_bytes(b);
    }
    pb::TermiosEntry {
        c_iflag: t.c_iflag,
        c_oflag: t.c_oflag,
        c_cflag: t.c_cflag,
        c_lflag: t.c_lflag,
        c_line: t.c_line.into(),
        c_ispeed: t.c_ispeed,
        c_ospeed: t.c_ospeed,
        c_cc,
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
        let tty_info_id = info_id(index, pty.master);
        if pty.master {
            if let std::collections::btree_map::Entry::Vacant(e) = self.masters.entry(index) {
                let dup = fd
                    .file
                    .try_clone()
                    .map_err(fd.io("duplicate a pty master"))?;
                e.insert((fd.pid, fd.fd, dup));
            }
        } else {
            self.slaves.push((fd.pid, fd.fd, index, hung_up(fd)));
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
        let flag = |req: libc::c_ulong| -> Result<bool, FileError> {
            match sys::ioctl_get_int(s, req) {
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
        // The session whose controlling terminal the pty is, and its foreground group:
        // a master tells them for its slave; a slave only to a task it is the
        // controlling terminal of, which /proc says. Our numbers here; the images get the
        // tree's (`write`).
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
            locked: pty.master && flag(TIOCGPTLCK)?,
            exclusive: flag(TIOCGEXCL)?,
            packet_mode: pty.master && flag(TIOCGPKT)?,
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
        fill_settings(fd, &mut info)?;
        Ok(info)
    }

    /// An fd of `/dev/tty`, as CRIU records one: a `tty_info_entry` of type CTTY (one
    /// for the whole dump, CRIU's fixed id) with the session of the terminal it stands
    /// for, which the restore finds the pty by.
    pub(super) fn dump_dev_tty(
        &mut self,
        fd: &OpenFd<'_>,
        id: u32,
        regf_id: u32,
    ) -> Result<pb::TtyFileEntry, FileError> {
        let real = real_tty(fd)?;
        let index = match Pty::from_rdev(real) {
            Some(Pty {
                master: false,
                index: Some(i),
            }) => i,
            _ => {
                return Err(fd.unsupported(format!(
                    "{} (/dev/tty of terminal {}:{}): only /dev/tty of a pty is recorded",
                    Kind::OtherTty,
                    libc::major(real),
                    libc::minor(real)
                )))
            }
        };
        match self.dev_ttys.first() {
            Some(&(_, _, first)) if first != index => {
                return Err(fd.unsupported(format!(
                    "{} of /dev/pts/{index} beside one of /dev/pts/{first}: the images \
                     keep one controlling terminal for /dev/tty",
                    Kind::DevTty
                )));
            }
            _ => {}
        }
        // The session it is the terminal of: its holder's, which /proc tells.
        let (sid, pgrp) = match session_and_tty(fd.pid) {
            Some((sid, tty_nr, tpgid)) if tty_nr == real => {
                (sid.max(0) as u32, tpgid.max(0) as u32)
            }
            _ => {
                return Err(fd.unsupported(format!(
                    "{} of /dev/pts/{index}, which is not its holder's controlling \
                     terminal any more",
                    Kind::DevTty
                )))
            }
        };
        self.dev_ttys.push((fd.pid, fd.fd, index));
        if self.done.insert(DEV_TTY_INFO_ID) {
            let mut info = pb::TtyInfoEntry {
                id: DEV_TTY_INFO_ID,
                r#type: pb::TtyType::Ctty as i32,
                locked: false,
                exclusive: false,
                packet_mode: false,
                sid,
                pgrp,
                rdev: fd.meta.rdev() as u32,
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
        }
        Ok(pb::TtyFileEntry {
            id,
            tty_info_id: DEV_TTY_INFO_ID,
            flags: fd.common.flags,
            fown: fd.fown()?,
            regf_id: Some(regf_id),
        })
    }

    /// Judges every pty slave dumped, as the kind table says: one whose master is in the
    /// dump too is half of a pty pair, one whose master is not a shell job's terminal.
    /// Only known once every task is dumped (the checks before the freeze knew it from
    /// the whole tree, see [`super::TreeChecks`]).
    pub(super) fn check_pairs(&self, given: Given) -> Result<(), FileError> {
        for &(pid, fd, index, hung) in &self.slaves {
            let kind = if self.masters.contains_key(&index) {
                Kind::PtySlavePaired
            } else if hung {
                Kind::PtySlaveHungUp
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
        for &(pid, fd, index) in &self.dev_ttys {
            let kind = if self.masters.contains_key(&index) {
                Kind::DevTty
            } else {
                Kind::DevTtyJob
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

    /// Reads out the data queued in every pty whose master the tree holds (the tree is
    /// frozen), for `tty-data.img`. The returned guard puts it back unless told the
    /// tree is gone ([`TtyRefill::keep`]): a failed dump, or a tree that runs on, finds
    /// its ptys as they were.
    pub(super) fn drain(&mut self) -> Result<TtyRefill, FileError> {
        let mut refill = TtyRefill { ptys: Vec::new() };
        for (&index, (pid, fd, master)) in &self.masters {
            let io = |what| {
                let (pid, fd) = (*pid, *fd);
                move |source| FileError::Io {
                    pid,
                    fd,
                    what,
                    source,
                }
            };
            let termios = match sys::tty_termios(master.as_fd(), libc::TCGETS as libc::c_ulong) {
                Ok(t) => t,
                // Hung up: nothing can be read or written any more.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => continue,
                Err(e) => return Err(io("read the pty's settings")(e)),
            };
            let slave_open = self.slaves.iter().any(|s| s.2 == index);
            let queued =
                queue::drain(master.as_fd(), slave_open).map_err(io("read the pty's queues"))?;
            if queued.is_empty() {
                continue;
            }
            tracing::debug!(
                index,
                at_master = queued.at_master.len(),
                at_slave = queued.at_slave.len(),
                "pty queues read"
            );
            // The id of the end the data is read from, as CRIU's tty-data says.
            for (data, master_end) in [(&queued.at_master, true), (&queued.at_slave, false)] {
                if !data.is_empty() {
                    self.data.push(pb::TtyDataEntry {
                        tty_id: info_id(index, master_end),
                        data: data.clone(),
                    });
                }
            }
            let dup = master.try_clone().map_err(io("duplicate a pty master"))?;
            refill.ptys.push((dup, termios, queued));
        }
        Ok(refill)
    }

    /// Writes `tty-info.img` and `tty-data.img` into `dir`; `vpid` numbers a task as the
    /// tree's pid namespace does.
    pub(super) fn write(&self, dir: &Path, vpid: &dyn Fn(Pid) -> u32) -> Result<(), FileError> {
        if !self.infos.is_empty() {
            let mut w = writer(dir, "TTY_INFO", "")?;
            for e in &self.infos {
                let mut e = e.clone();
                for n in [&mut e.sid, &mut e.pgrp] {
                    if *n != 0 {
                        *n = vpid(Pid(*n as i32));
                    }
                }
                w.write_entry(&e)?;
            }
            w.finish()?;
        }
        if !self.data.is_empty() {
            let mut w = writer(dir, "TTY_DATA", "")?;
            for e in &self.data {
                w.write_entry(e)?;
            }
            w.finish()?;
        }
        Ok(())
    }
}

/// The data read out of the tree's ptys by a dump, put back when this drops (see
/// [`Ttys::drain`]).
pub struct TtyRefill {
    ptys: Vec<(File, libc::termios, queue::Queued)>,
}

impl TtyRefill {
    /// The tree is killed: nothing goes back.
    pub fn keep(mut self) {
        self.ptys.clear();
    }
}

impl Drop for TtyRefill {
    fn drop(&mut self) {
        for (master, termios, queued) in self.ptys.drain(..) {
            if let Err(e) = queue::refill(master.as_fd(), &termios, &queued) {
                tracing::warn!("the data queued in a pty could not all be put back: {e}");
            }
        }
    }
}

/// What the checks before the freeze find of the tree's ptys: for each pty whose master
/// the tree holds, why it cannot be dumped, if it cannot (another process holds an end,
/// or it is the controlling terminal of a session led outside the tree).
#[derive(Debug, Clone, Default)]
pub(super) struct PtySurvey {
    ptys: Vec<holders::PtyIdent>,
    /// The session (our numbers) of each pty that is a controlling terminal.
    sessions: HashMap<u32, i32>,
}

impl PtySurvey {
    /// A master of the tree, pty `index`.
    pub(super) fn master(&mut self, fd: &OpenFd<'_>, index: u32) {
        if self.ptys.iter().any(|p| p.index == index) {
            return;
        }
        // The slave's node without opening the slave (an O_PATH open is no open of the
        // terminal: nothing changes for the master).
        let slave = sys::pty_peer(fd.raw(), libc::O_PATH | libc::O_CLOEXEC)
            .and_then(|s| File::from(s).metadata())
            .map_or((0, 0), |m| (m.dev(), m.ino()));
        self.ptys.push(holders::PtyIdent {
            index,
            ptmx: (fd.meta.dev(), fd.meta.ino()),
            slave,
        });
        if let Ok(sid) = sys::ioctl_get_int(fd.raw(), libc::TIOCGSID as libc::c_ulong) {
            if sid > 0 {
                self.sessions.insert(index, sid);
            }
        }
    }

    /// Why each pty of the tree (`tree`: its tasks) cannot be dumped, by pty number.
    pub(super) fn problems(&self, tree: &HashSet<i32>) -> HashMap<u32, String> {
        let mut out = HashMap::new();
        if self.ptys.is_empty() {
            return out;
        }
        for h in holders::outside_holders(tree, &self.ptys) {
            let end = if h.master {
                "its master".to_owned()
            } else {
                format!("its slave /dev/pts/{}", h.index)
            };
            out.entry(h.index).or_insert(format!(
                "{end} is also open in process {} (fd {}), outside the tree, which would \
                 be left with the old pty",
                h.pid, h.fd
            ));
        }
        for (&index, &sid) in &self.sessions {
            let led_here = tree.contains(&sid)
                && session_and_tty(Pid(sid)).is_some_and(|(s, _, _)| s == i64::from(sid));
            if !led_here {
                out.entry(index).or_insert(format!(
                    "it is the controlling terminal of session {sid}, whose leader is \
                     outside the tree"
                ));
            }
        }
        out
    }
}

// --- restore ---------------------------------------------------------------------

/// The major numbers of pty slaves (`/dev/pts/N`, UNIX98_PTY_SLAVE_MAJOR and the 7 after).
fn is_pty_slave(rdev: u32) -> bool {
    (136..=143).contains(&libc::major(u64::from(rdev)))
}

/// The controlling terminal of a session of the tree, made by [`FileOpener::make_ptys`]
/// and given in the restore's stage 2 (see the module's doc).
pub struct ControllingTerminal {
    /// The session, and so its leader (the images' numbers).
    pub sid: Pid,
    /// Its foreground process group.
    pub pgrp: Pid,
    /// A slave of the pty, ours: the leader takes a duplicate of it.
    pub slave: OwnedFd,
    /// `/dev/pts/N`, for messages.
    pub name: String,
    /// The files of `/dev/tty` bound to this terminal (file id, open flags): the leader
    /// opens each once it has the terminal, for [`FileOpener::add_dev_ttys`].
    pub dev_tty: Vec<(u32, i32)>,
}

/// The restore's terminals: what `tty-info.img` and `tty-data.img` say, the ptys made
/// ahead of the tasks, and the restorer's own terminal that a shell job's becomes.
#[derive(Default)]
pub(super) struct RestoreState {
    pub(super) infos: HashMap<u32, pb::TtyInfoEntry>,
    /// `--shell-job`: the restorer's own terminal, which the job's terminal fds become.
    pub(super) inherited_terminal: Option<OwnedFd>,
    /// Queued data, by the id of the end it is read from.
    data: HashMap<u32, Vec<u8>>,
    /// Pty ends made by `make_ptys`, by file id, until their task takes them.
    made: HashMap<u32, OwnedFd>,
    /// `orphan_pts_master`: a pty slave whose master was outside the tree gets a new
    /// pty, whose master goes to the caller.
    pub(super) orphan_pts: bool,
    /// The masters of those ptys (with their numbers), for the caller.
    orphan_masters: Vec<(u32, OwnedFd)>,
    /// Masters of ptys made before the opener makes the rest (a mount of the tree's
    /// namespace binds their slave node), by number: taken as those ptys' masters.
    pub(super) premade: HashMap<u32, OwnedFd>,
}

impl RestoreState {
    /// Reads `tty-info.img` and `tty-data.img` from `dir`, if there are.
    pub(super) fn load(dir: &Path) -> Result<RestoreState> {
        let mut infos = HashMap::new();
        if let Some(path) = optional(dir, "tty-info.img") {
            for t in read_entries::<pb::TtyInfoEntry>(&path)? {
                infos.insert(t.id, t);
            }
        }
        let mut data = HashMap::new();
        if let Some(path) = optional(dir, "tty-data.img") {
            for d in read_entries::<pb::TtyDataEntry>(&path)? {
                if !infos.contains_key(&d.tty_id) {
                    return Err(bad(
                        "tty-data.img",
                        format!("data of terminal {:#x}, which tty-info.img lacks", d.tty_id),
                    ));
                }
                if data.insert(d.tty_id, d.data).is_some() {
                    return Err(bad(
                        "tty-data.img",
                        format!("terminal {:#x} twice", d.tty_id),
                    ));
                }
            }
        }
        Ok(RestoreState {
            infos,
            inherited_terminal: None,
            data,
            made: HashMap::new(),
            orphan_pts: false,
            orphan_masters: Vec::new(),
            premade: HashMap::new(),
        })
    }
}

/// The termios a `termios_entry` holds (see [`termios_entry`] for its `c_cc`).
fn termios_from(e: &pb::TermiosEntry) -> libc::termios {
    let mut t = libc::termios {
        c_iflag: e.c_iflag,
        c_oflag: e.c_oflag,
        c_cflag: e.c_cflag,
        c_lflag: e.c_lflag,
        c_line: e.c_line as libc::cc_t,
        c_cc: [0; libc::NCCS],
        c_ispeed: e.c_ispeed,
        c_ospeed: e.c_ospeed,
    };
    let bytes = e
        .c_cc
        .iter()
        .take(libc::NCCS / 4)
        .flat_map(|w| w.to_le_bytes());
    for (to, from) in t.c_cc.iter_mut().zip(bytes) {
        *to = from;
    }
    t
}

impl FileOpener {
    /// CRIU's `orphan_pts_master`: a pty slave whose master was outside the dump (a
    /// container's console) comes back as the slave of a new pty with its number,
    /// whose master [`FileOpener::take_orphan_masters`] hands out.
    pub fn make_orphan_ptys(&mut self) {
        self.ttys.orphan_pts = true;
    }

    /// The masters of the ptys made for orphan slaves, with their numbers (taken once).
    pub fn take_orphan_masters(&mut self) -> Vec<(u32, OwnedFd)> {
        std::mem::take(&mut self.ttys.orphan_masters)
    }

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
        if info.r#type == pb::TtyType::Ctty as i32 {
            // Which pty: the one whose session it belongs to.
            return Ok(match self.session_pty(info.sid) {
                Some(i) => (Kind::DevTty, format!("/dev/tty, /dev/pts/{i}")),
                None => (Kind::DevTtyJob, "/dev/tty".to_owned()),
            });
        }
        if info.r#type == pb::TtyType::Console as i32 {
            return Ok((Kind::Console, "the console".to_owned()));
        }
        if info.r#type == pb::TtyType::Vt as i32 {
            return Ok((Kind::Vt, "a virtual terminal".to_owned()));
        }
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
        if info.termios.is_none() {
            return Ok((Kind::PtySlaveHungUp, format!("{name} (hung up)")));
        }
        Ok((Kind::PtySlave, name))
    }

    /// The number of the pty of the images whose master says it is the controlling
    /// terminal of session `sid`.
    fn session_pty(&self, sid: u32) -> Option<u32> {
        if sid == 0 {
            return None;
        }
        let master = self.ttys.infos.values().find_map(|t| {
            let master = t.r#type == pb::TtyType::Pty as i32 && !is_pty_slave(t.rdev);
            (master && t.sid == sid).then_some(t.pty?.index)
        });
        // With `orphan_pts_master`, a slave whose master was outside makes a pty too.
        master.or_else(|| {
            self.ttys.infos.values().find_map(|t| {
                let slave = t.r#type == pb::TtyType::Pty as i32 && is_pty_slave(t.rdev);
                (self.ttys.orphan_pts && slave && t.sid == sid && t.termios.is_some())
                    .then_some(t.pty?.index)
            })
        })
    }

    /// The kind table judged the kind; a shell job's terminal also needs ours, and a
    /// pty made again needs its number and (for a master) its settings.
    pub(super) fn check_tty(&self, pid: Pid, at: &FileRef, tty: &pb::TtyFileEntry) -> Result<()> {
        let kind = self
            .tty_kind(tty)
            .map_err(|what| bad("tty-info.img", what))?;
        match kind {
            (Kind::PtySlave, _) if self.ttys.orphan_pts => Ok(()),
            (Kind::PtySlave | Kind::DevTtyJob, _) if self.ttys.inherited_terminal.is_none() => {
                Err(at.unsupported(
                    pid,
                    "a shell job's terminal: --shell-job needs a terminal on stdin",
                ))
            }
            (k @ (Kind::PtyMaster | Kind::PtySlavePaired), name) => {
                let info = &self.ttys.infos[&tty.tty_info_id];
                if info.pty.is_none() {
                    return Err(bad(
                        "tty-info.img",
                        format!("pty {:#x} has no number", info.id),
                    ));
                }
                let short = [&info.termios, &info.termios_locked]
                    .into_iter()
                    .flatten()
                    .any(|t| t.c_cc.len() < 8);
                if short {
                    return Err(bad(
                        "tty-info.img",
                        format!("pty {:#x}: its control characters are cut short", info.id),
                    ));
                }
                if k == Kind::PtyMaster && (info.termios.is_none() || info.winsize.is_none()) {
                    return Err(at.unsupported(
                        pid,
                        format!("{name}: a pty master whose settings were not saved (hung up)"),
                    ));
                }
                Ok(())
            }
            (Kind::Console | Kind::Vt, _) => self.check_simple_tty(tty),
            _ => Ok(()),
        }
    }

    /// The file of a pty end: a shell job's terminal becomes ours; the ends of ptys
    /// whose master is in the images were made by [`FileOpener::make_ptys`].
    pub(super) fn open_tty(&mut self, at: &FileRef, tty: &pb::TtyFileEntry) -> Result<OwnedFd> {
        match self.tty_kind(tty) {
            Ok((Kind::PtySlave, _)) if self.ttys.orphan_pts => {
                let fd = self.ttys.made.remove(&tty.id).ok_or_else(|| {
                    at.refused("a pty slave whose master was outside: no pty was made for it")
                })?;
                finish(at, fd.as_fd(), tty.flags, &tty.fown)?;
                Ok(fd)
            }
            Ok((Kind::PtySlave, _)) => match &self.ttys.inherited_terminal {
                // The same open file description as ours, as CRIU's shell jobs get.
                Some(t) => t.try_clone().map_err(at.io("duplicate our terminal")),
                None => Err(at.refused("a shell job's terminal without --shell-job")),
            },
            Ok((Kind::DevTtyJob, _)) => {
                // Ours stands for the shell's terminal, which the job's is.
                let flags =
                    super::restore::open_flags(tty.flags) | libc::O_NOCTTY | libc::O_CLOEXEC;
                let fd = sys::open_path(Path::new("/dev/tty"), flags, 0)
                    .map_err(at.io("open our /dev/tty"))?;
                finish(at, fd.as_fd(), tty.flags, &tty.fown)?;
                Ok(fd)
            }
            Ok((
                Kind::PtyMaster | Kind::PtySlavePaired | Kind::PtySlaveHungUp | Kind::DevTty,
                name,
            )) => {
                let fd = self.ttys.made.remove(&tty.id).ok_or_else(|| {
                    at.refused(format!("{name}: the pty was not made before the tasks"))
                })?;
                finish(at, fd.as_fd(), tty.flags, &tty.fown)?;
                Ok(fd)
            }
            Ok((Kind::Console | Kind::Vt, _)) => self.open_simple_tty(at, tty),
            Ok((kind, name)) => Err(at.refused(format!("{kind} ({name}) {NO_OPENER}"))),
            Err(what) => Err(bad("tty-info.img", what)),
        }
    }

    /// The files of `/dev/tty` the session leaders opened in the restore's stage 2 (see
    /// [`ControllingTerminal::dev_tty`]), by file id, for their tasks to take.
    /// Masters of ptys made already, by number (see `RestoreState::premade`):
    /// [`FileOpener::make_ptys`] takes them instead of making those ptys.
    pub fn add_premade_ptys(&mut self, masters: impl IntoIterator<Item = (u32, OwnedFd)>) {
        self.ttys.premade.extend(masters);
    }

    pub fn add_dev_ttys(&mut self, files: impl IntoIterator<Item = (u32, OwnedFd)>) {
        self.ttys.made.extend(files);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words of a CRIU 4.2 dump of a cooked terminal (`crit decode`): VINTR ^C,
    /// VQUIT ^\\, VERASE DEL, VKILL ^U in the first word; the words after the eighth
    /// were CRIU's heap.
    #[test]
    fn control_characters_are_packed_as_criu_packs_them() {
        let words = [
            0x157f_1c03,
            0x0001_0004,
            0x401a_1311,
            0,
            0,
            0,
            0,
            0,
            799_582_736,
            22066,
        ];
        let entry = pb::TermiosEntry {
            c_cc: words.to_vec(),
            ..Default::default()
        };
        let t = termios_from(&entry);
        assert_eq!(
            &t.c_cc[..12],
            &[3, 0x1c, 0x7f, 0x15, 4, 0, 1, 0, 0x11, 0x13, 0x1a, b'@']
        );
        let back = termios_entry(&t);
        assert_eq!(back.c_cc.len(), IMAGE_NCC);
        assert_eq!(&back.c_cc[..8], &words[..8]);
        assert!(back.c_cc[8..].iter().all(|&w| w == 0));
    }

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
