//! Pipes and FIFOs, and the data sitting in them.
//!
//! Dump: the data is copied, not consumed: `tee(2)` from our duplicate of the read end
//! into a pipe of our own as large as the task's, then read from ours. Each pipe's data
//! is saved once, from the first read end met; write-only ends carry none. A FIFO is
//! also recorded by its path (a `reg_file_entry` of its own).
//!
//! Restore: one `pipe(2)` per pipe, both ends from it, with its size and its data; a
//! FIFO is opened by path behind a read-write keeper (so no open blocks), with its
//! data.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use criu_images::{pb, ImageReader};

use super::dump::{writer, FileError, OpenFd};
use super::kinds::Kind;
use super::restore::{
    bad, finish, open_flags, optional, reopen, write_all, FileOpener, FileRef, Result,
};
use crate::sys;

/// Whether a pipe is in packet mode (`O_DIRECT`): its own row in the kind table.
pub(super) fn packet_mode(fd: &OpenFd<'_>) -> bool {
    fd.common.flags & libc::O_DIRECT as u32 != 0
}

/// Refuses pipes in packet mode (`O_DIRECT`), which restore cannot rebuild (the kind
/// table refuses them first).
pub(super) fn check(fd: &OpenFd<'_>) -> Result<(), FileError> {
    if packet_mode(fd) {
        return Err(fd.unsupported(format!("pipe in packet mode (O_DIRECT) {}", fd.link_str())));
    }
    Ok(())
}

/// Captured contents of pipes and of FIFOs.
#[derive(Default)]
pub(super) struct PipeData {
    pipes: Vec<(pb::PipeDataEntry, Vec<u8>)>,
    fifos: Vec<(pb::PipeDataEntry, Vec<u8>)>,
    done: HashSet<u64>,
}

pub(super) fn dump_pipe(
    data: &mut PipeData,
    fd: &OpenFd<'_>,
    id: u32,
) -> Result<pb::PipeEntry, FileError> {
    check(fd)?;
    let pipe_id = fd.meta.ino() as u32;
    let entry = pb::PipeEntry {
        id,
        pipe_id,
        flags: fd.common.flags & !(libc::O_DIRECT as u32),
        fown: fd.fown()?,
    };
    if let Some(captured) = data.capture(fd)? {
        data.pipes.push(captured);
    }
    Ok(entry)
}

pub(super) fn dump_fifo(
    data: &mut PipeData,
    fd: &OpenFd<'_>,
    id: u32,
    regf_id: u32,
) -> Result<pb::FifoEntry, FileError> {
    check(fd)?;
    let entry = pb::FifoEntry {
        id,
        pipe_id: fd.meta.ino() as u32,
        regf_id: Some(regf_id),
    };
    if let Some(captured) = data.capture(fd)? {
        data.fifos.push(captured);
    }
    Ok(entry)
}

impl PipeData {
    /// The pipe's data, if `fd` is a read end of a pipe not captured yet.
    fn capture(
        &mut self,
        fd: &OpenFd<'_>,
    ) -> Result<Option<(pb::PipeDataEntry, Vec<u8>)>, FileError> {
        if fd.common.flags & libc::O_WRONLY as u32 != 0 || self.done.contains(&fd.meta.ino()) {
            return Ok(None);
        }
        let (entry, bytes) = peek_pipe(fd)?;
        self.done.insert(fd.meta.ino());
        Ok(Some((entry, bytes)))
    }

    pub(super) fn write(&self, dir: &Path) -> Result<(), FileError> {
        for (name, list) in [("PIPES_DATA", &self.pipes), ("FIFO_DATA", &self.fifos)] {
            if list.is_empty() {
                continue;
            }
            let mut w = writer(dir, name, "")?;
            for (entry, bytes) in list {
                w.write_entry(entry)?;
                w.write_raw(bytes)?;
            }
            w.finish()?;
        }
        Ok(())
    }
}

/// Copies what is queued in the pipe read by `fd`, leaving it there.
fn peek_pipe(fd: &OpenFd<'_>) -> Result<(pb::PipeDataEntry, Vec<u8>), FileError> {
    let size = sys::pipe_size(fd.raw(), None).map_err(fd.io("read the pipe's size"))?;
    let (ours_r, ours_w) =
        sys::pipe(libc::O_NONBLOCK).map_err(fd.io("create a pipe to copy the data into"))?;
    // Ours must hold everything the task's pipe can hold.
    sys::pipe_size(ours_w.as_fd(), Some(size)).map_err(fd.io("grow the copy pipe"))?;
    let copied = match sys::tee(fd.raw(), ours_w.as_fd(), size) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(fd.io("copy the pipe's data (tee)")(e)),
    };
    drop(ours_w);
    let mut bytes = Vec::with_capacity(copied);
    File::from(ours_r)
        .read_to_end(&mut bytes)
        .map_err(fd.io("read the copied pipe data"))?;
    if bytes.len() != copied {
        return Err(fd.io("read the copied pipe data")(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("tee copied {copied} bytes but {} came out", bytes.len()),
        )));
    }
    let entry = pb::PipeDataEntry {
        pipe_id: fd.meta.ino() as u32,
        bytes: copied as u32,
        size: Some(size as u32),
    };
    Ok((entry, bytes))
}

// --- restore ---------------------------------------------------------------------

/// A pipe's data as saved: the pipe's capacity and what it held.
struct SavedData {
    size: Option<u32>,
    data: Vec<u8>,
}

/// Both ends of a pipe we created, and whether each was given out already.
struct PipeObj {
    read: OwnedFd,
    write: OwnedFd,
    read_given: bool,
    write_given: bool,
}

/// The restore's pipes and FIFOs: what the images saved in them, and what was made of
/// them so far.
pub(super) struct RestoreState {
    pipe_data: HashMap<u32, SavedData>,
    fifo_data: HashMap<u32, SavedData>,
    pipes: HashMap<u32, PipeObj>,
    /// A read-write descriptor per FIFO (by pipe id): keeps it open so no open blocks.
    fifos: HashMap<u32, OwnedFd>,
}

impl RestoreState {
    /// Reads `pipes-data.img` and `fifo-data.img` from `dir`.
    pub(super) fn load(dir: &Path) -> Result<RestoreState> {
        Ok(RestoreState {
            pipe_data: read_pipe_data(dir, "pipes-data.img")?,
            fifo_data: read_pipe_data(dir, "fifo-data.img")?,
            pipes: HashMap::new(),
            fifos: HashMap::new(),
        })
    }
}

/// `pipes-data.img` or `fifo-data.img`: each entry is followed by the pipe's bytes.
fn read_pipe_data(dir: &Path, name: &str) -> Result<HashMap<u32, SavedData>> {
    let mut out = HashMap::new();
    let Some(path) = optional(dir, name) else {
        return Ok(out);
    };
    let mut r = ImageReader::open(&path)?;
    while let Some(e) = r.next_entry::<pb::PipeDataEntry>()? {
        let data = r.read_extra(e.bytes.into(), "pipe data")?;
        if let Some(size) = e.size {
            if data.len() > size as usize {
                return Err(bad(
                    name,
                    format!(
                        "pipe {} holds {} bytes but its size is {size}",
                        e.pipe_id,
                        data.len()
                    ),
                ));
            }
        }
        let old = out.insert(e.pipe_id, SavedData { size: e.size, data });
        if old.is_some() {
            return Err(bad(name, format!("has pipe {} twice", e.pipe_id)));
        }
    }
    Ok(out)
}

/// The row of the kind table of a pipe in the images, and its name for messages.
pub(super) fn pipe_kind(p: &pb::PipeEntry) -> (Kind, String) {
    let kind = if p.flags & libc::O_DIRECT as u32 != 0 {
        Kind::PacketPipe
    } else {
        Kind::Pipe
    };
    (kind, format!("pipe:[{}]", p.pipe_id))
}

impl FileOpener {
    /// A FIFO must still be one at its path.
    pub(super) fn check_fifo(&self, at: &FileRef, fifo: &pb::FifoEntry) -> Result<()> {
        let regf = fifo.regf_id.unwrap_or(0);
        let reg = self.member(regf, |f| f.reg.as_ref())?;
        if self.reg.remaps.contains_key(&regf) {
            // A deleted FIFO: made again from its ghost image (reg.rs, ghost.rs).
            return Ok(());
        }
        if self.reg.unchecked.iter().any(|m| reg.path().starts_with(m)) {
            // Under a mount of the tree's own namespace, made in stage 2.
            return Ok(());
        }
        match std::fs::metadata(self.at_root(reg.path())) {
            Ok(m) if m.file_type().is_fifo() => Ok(()),
            Ok(_) => Err(at.changed(format!("{} is no longer a FIFO", reg.path().display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(at.changed(format!("FIFO {} no longer exists", reg.path().display())))
            }
            Err(e) => Err(at.io(format!("stat {}", reg.path().display()))(e)),
        }
    }

    pub(super) fn open_pipe(&mut self, at: &FileRef, p: &pb::PipeEntry) -> Result<OwnedFd> {
        // `--inherit-fd fd[N]:pipe:[INODE]` (runc gives the new stdio pipes of a
        // container so): the caller's pipe stands in for the dumped one.
        let key = format!("pipe:[{}]", p.pipe_id);
        if let Some(fd) = self.reg.inherited.get(key.as_bytes()) {
            return fd
                .try_clone()
                .map_err(at.io(format!("duplicate inherited {key}")));
        }
        if !self.pipes.pipes.contains_key(&p.pipe_id) {
            let (read, write) = sys::pipe(0).map_err(at.io("create a pipe"))?;
            if let Some(d) = self.pipes.pipe_data.get(&p.pipe_id) {
                fill_pipe(at, write.as_fd(), d)?;
            }
            self.pipes.pipes.insert(
                p.pipe_id,
                PipeObj {
                    read,
                    write,
                    read_given: false,
                    write_given: false,
                },
            );
        }
        let Some(obj) = self.pipes.pipes.get_mut(&p.pipe_id) else {
            return Err(bad("files.img", format!("pipe {} vanished", p.pipe_id)));
        };
        let access = p.flags & libc::O_ACCMODE as u32;
        let (end, given) = if access == libc::O_WRONLY as u32 {
            (&obj.write, &mut obj.write_given)
        } else {
            (&obj.read, &mut obj.read_given)
        };
        let fd = if !*given && access != libc::O_RDWR as u32 {
            *given = true;
            end.try_clone().map_err(at.io("duplicate a pipe end"))?
        } else {
            // Another open file description of the same pipe (opened through /proc).
            reopen(end.as_fd(), open_flags(p.flags)).map_err(at.io("reopen a pipe"))?
        };
        finish(at, fd.as_fd(), p.flags, &p.fown)?;
        Ok(fd)
    }

    pub(super) fn open_fifo(&mut self, at: &FileRef, f: &pb::FifoEntry) -> Result<OwnedFd> {
        let regf = f.regf_id.unwrap_or(0);
        let reg = self.member(regf, |e| e.reg.as_ref())?.clone();
        // Under --root (or the tree's own mount namespace), as regular files.
        let path = &self.at_root(reg.path());
        if self.reg.remaps.contains_key(&regf) {
            return self.open_deleted_fifo(at, f, &reg);
        }
        if !self.pipes.fifos.contains_key(&f.pipe_id) {
            // Read-write never blocks, and with it open neither does any other open.
            let keeper = sys::open_path(path, libc::O_RDWR | libc::O_NONBLOCK, 0)
                .map_err(at.io(format!("open FIFO {}", reg.path().display())))?;
            let meta = File::from(keeper.try_clone().map_err(at.io("duplicate a FIFO"))?)
                .metadata()
                .map_err(at.io(format!("stat {}", reg.path().display())))?;
            if !meta.file_type().is_fifo() {
                return Err(at.changed(format!("{} is no longer a FIFO", reg.path().display())));
            }
            if let Some(d) = self.pipes.fifo_data.get(&f.pipe_id) {
                fill_pipe(at, keeper.as_fd(), d)?;
            }
            self.pipes.fifos.insert(f.pipe_id, keeper);
        }
        let fd = sys::open_path(path, open_flags(reg.flags), 0)
            .map_err(at.io(format!("open FIFO {}", reg.path().display())))?;
        finish(at, fd.as_fd(), reg.flags, &reg.fown)?;
        Ok(fd)
    }

    /// A FIFO deleted at dump time: its reg file (made again from its ghost, read-write,
    /// so no open blocks) is the keeper that gets its data back; each end reopens it.
    fn open_deleted_fifo(
        &mut self,
        at: &FileRef,
        f: &pb::FifoEntry,
        reg: &pb::RegFileEntry,
    ) -> Result<OwnedFd> {
        if !self.pipes.fifos.contains_key(&f.pipe_id) {
            let keeper = self.open_reg(
                at,
                &pb::RegFileEntry {
                    flags: (libc::O_RDWR | libc::O_NONBLOCK) as u32,
                    pos: 0,
                    fown: pb::FownEntry::default(),
                    ..reg.clone()
                },
            )?;
            if let Some(d) = self.pipes.fifo_data.get(&f.pipe_id) {
                fill_pipe(at, keeper.as_fd(), d)?;
            }
            self.pipes.fifos.insert(f.pipe_id, keeper);
        }
        self.open_reg(at, reg)
    }
}

/// Sizes a pipe as saved and puts its data back through the write end `w`.
fn fill_pipe(at: &FileRef, w: BorrowedFd<'_>, d: &SavedData) -> Result<()> {
    if let Some(size) = d.size {
        let current = sys::pipe_size(w, None).map_err(at.io("read the pipe's size"))?;
        if size as usize != current {
            if let Err(e) = sys::pipe_size(w, Some(size as usize)) {
                if d.data.len() > current {
                    return Err(at.io(format!("resize the pipe to {size} bytes"))(e));
                }
                tracing::warn!(file = %at, size, "pipe keeps its default size: {e}");
            }
        }
    }
    if d.data.is_empty() {
        return Ok(());
    }
    let flags = sys::fcntl_get(w, libc::F_GETFL).map_err(at.io("read the pipe's flags"))?;
    sys::fcntl_set(w, libc::F_SETFL, flags | libc::O_NONBLOCK)
        .map_err(at.io("make the pipe non-blocking"))?;
    let wrote = write_all(w, &d.data);
    sys::fcntl_set(w, libc::F_SETFL, flags).map_err(at.io("set the pipe's flags back"))?;
    wrote.map_err(at.io(format!("put {} bytes back into the pipe", d.data.len())))
}
