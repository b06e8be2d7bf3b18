//! Pipes and FIFOs, and the data sitting in them.
//!
//! The data is copied, not consumed: `tee(2)` from our duplicate of the read end into a
//! pipe of our own as large as the task's, then read from ours. Each pipe's data is
//! saved once, from the first read end met; write-only ends carry none.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use criu_images::pb;

use super::dump::{writer, FileError, OpenFd};
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
