//! A frozen task writes its own pages into the pages file, through calls we inject.
//!
//! Why: copying from the dumper costs two copies per byte, process_vm_readv(2) into our
//! buffer and pwrite(2) out of it, and the writes into one tmpfs file take its inode
//! lock in turn, so both cores cannot share them. A pwrite(2) the task makes from its
//! own memory is one copy under that lock. Measured on 1 GiB (2 cores, tmpfs): the task
//! writing itself 400-436 ms, our two-copy workers 465-546 ms, and filling the file from
//! a buffer with every core (the floor of a dump) 408-495 ms.
//!
//! How: the task gets the pages file through a socket pair it makes itself: we take
//! one end with pidfd_getfd(2), send the file over it (SCM_RIGHTS), and the task
//! receives it; then it runs one pwrite64(2) per contiguous piece, and closes the file.
//! The calls run self-restoring (`Injector::make_self_restoring`): a dumper that dies
//! meanwhile leaves the task going on in its own context, holding at most the file (and
//! the socket pair), each close-on-exec: it loses no memory and no state.
//!
//! Only in a tree killed after its dump (a tree that runs on gets no calls it need not).
//! Not in a task under seccomp (its calls could not be self-restoring), one with a file
//! size limit (a write past it queues SIGXFSZ), one that refuses a call (a full fd
//! table), nor in one whose memory cgroup is not the dumper's:
//! the pages a task writes into tmpfs are charged to its own cgroup, and a container
//! near its memory limit would be pushed over it (its OOM killer would pick the task).
//! Pages the task cannot read itself (PROT_NONE) fail its pwrite: those, and
//! everything after them, are copied by the dumper.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use crate::inject::Injector;
use crate::sys::{self, Pid};

/// Scratch bytes: msghdr (56) at 0, iovec (16) at 64, cmsg buffer (24) at 96, one
/// data byte at 128, the socket pair's two ints at 136.
const SCRATCH: u64 = 256;
const IOV_AT: u64 = 64;
const CONTROL_AT: u64 = 96;
const CONTROL_LEN: u64 = 24;
const DATA_AT: u64 = 128;
const PAIR_AT: u64 = 136;

/// Bytes of one pwrite the task makes at most: between two calls the dumper looks at
/// interrupts and progress.
pub const MAX_WRITE: u64 = 16 << 20;

/// A task that holds the pages file and writes into it for us (see the top).
pub struct TaskWriter {
    inj: Option<Injector>,
    tid: Pid,
    /// The pages file's fd in the task, while it holds it.
    fd: Option<i32>,
}

impl TaskWriter {
    /// Gives `file` to thread `tid` of `pid` (stopped by this thread; `gadget` is the
    /// start of an executable mapping of it). None where the task cannot write for us
    /// (see the top), with the reason logged.
    pub fn open(pid: Pid, tid: Pid, gadget: u64, file: &File) -> Option<TaskWriter> {
        match Self::try_open(pid, tid, gadget, file) {
            Ok(Some(w)) => Some(w),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(%pid, "the dumper copies the pages: the task could not take the pages file ({e})");
                None
            }
        }
    }

    fn try_open(pid: Pid, tid: Pid, gadget: u64, file: &File) -> io::Result<Option<TaskWriter>> {
        if !same_cgroups(pid)? {
            tracing::debug!(%pid, "the dumper copies the pages: the task's cgroups are not ours");
            return Ok(None);
        }
        // A write past the file size limit would also queue SIGXFSZ for the task.
        let fsize = crate::proc::ProcDir::open(pid)?.limits()?;
        if fsize
            .get(libc::RLIMIT_FSIZE as usize)
            .is_none_or(|l| l.0 != u64::MAX)
        {
            tracing::debug!(%pid, "the dumper copies the pages: the task has a file size limit");
            return Ok(None);
        }
        let options = super::seccomp::injection_options(tid);
        if options != 0 {
            tracing::debug!(%pid, "the dumper copies the pages: the task is under seccomp");
            return Ok(None);
        }
        let mut inj = Injector::new(tid, gadget)?;
        if !inj.make_self_restoring(options | libc::PTRACE_O_TRACESYSGOOD)? {
            inj.finish()?;
            tracing::debug!(%pid, "the dumper copies the pages: no self-restoring calls");
            return Ok(None);
        }
        let mut writer = TaskWriter {
            inj: Some(inj),
            tid,
            fd: None,
        };
        // On any failure from here, dropping the writer closes what the task holds.
        writer.fd = Some(writer.receive(pid, file)?);
        Ok(Some(writer))
    }

    fn inj(&mut self) -> io::Result<&mut Injector> {
        self.inj
            .as_mut()
            .ok_or_else(|| io::Error::other("the task writer is closed"))
    }

    /// Sends `file` into the task: returns its fd there.
    fn receive(&mut self, pid: Pid, file: &File) -> io::Result<i32> {
        let inj = self.inj()?;
        let at = inj.scratch(SCRATCH)?;
        let flags = (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64;
        inj.syscall_ok(
            "socketpair",
            libc::SYS_socketpair,
            [libc::AF_UNIX as u64, flags, 0, at + PAIR_AT, 0, 0],
        )?;
        let pair = inj.read(at + PAIR_AT, 8)?;
        let ends = [
            i32::from_le_bytes(pair[..4].try_into().unwrap_or_default()),
            i32::from_le_bytes(pair[4..].try_into().unwrap_or_default()),
        ];
        let received = Self::pass_file(inj, pid, file, at, ends);
        let closed = inj.syscalls(&[
            (libc::SYS_close, [ends[0] as u64, 0, 0, 0, 0, 0]),
            (libc::SYS_close, [ends[1] as u64, 0, 0, 0, 0, 0]),
        ]);
        let fd = received?;
        if let Err(e) = closed {
            self.fd = Some(fd);
            return Err(e);
        }
        Ok(fd)
    }

    /// The file over the task's socket pair `ends`: we send on our copy of the second
    /// end, the task receives on the first.
    fn pass_file(
        inj: &mut Injector,
        pid: Pid,
        file: &File,
        at: u64,
        ends: [i32; 2],
    ) -> io::Result<i32> {
        let pidfd = sys::pidfd_open(pid)?;
        let ours = sys::pidfd_getfd(pidfd.as_fd(), ends[1])?;
        sys::send_with_fds(ours.as_fd(), b"p", &[file.as_fd()], 0, None)?;
        // struct msghdr, iovec and the control buffer, x86-64 layout.
        let mut msg = [0u8; 56];
        msg[16..24].copy_from_slice(&(at + IOV_AT).to_le_bytes());
        msg[24..32].copy_from_slice(&1u64.to_le_bytes());
        msg[32..40].copy_from_slice(&(at + CONTROL_AT).to_le_bytes());
        msg[40..48].copy_from_slice(&CONTROL_LEN.to_le_bytes());
        let mut iov = [0u8; 16];
        iov[..8].copy_from_slice(&(at + DATA_AT).to_le_bytes());
        iov[8..].copy_from_slice(&1u64.to_le_bytes());
        inj.write(at, &msg)?;
        inj.write(at + IOV_AT, &iov)?;
        inj.write(at + CONTROL_AT, &[0u8; CONTROL_LEN as usize])?;
        let flags = (libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) as u64;
        inj.syscall_ok(
            "recvmsg",
            libc::SYS_recvmsg,
            [ends[0] as u64, at, flags, 0, 0, 0],
        )?;
        // struct cmsghdr: len (8), level (4), type (4), then the fd.
        let control = inj.read(at + CONTROL_AT, CONTROL_LEN as usize)?;
        let word = |r: std::ops::Range<usize>| {
            control[r]
                .iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        };
        let (len, level, kind) = (word(0..8), word(8..12), word(12..16));
        if len != 20 || level != libc::SOL_SOCKET as u64 || kind != libc::SCM_RIGHTS as u64 {
            return Err(io::Error::other(format!(
                "task {pid} received no file (cmsg len {len}, level {level}, type {kind})"
            )));
        }
        Ok(word(16..20) as i32)
    }

    /// One pwrite64(2) by the task: `len` bytes of its memory at `addr` to `offset` of
    /// the pages file. Returns the bytes written, fewer than `len` when the task could
    /// not read some of them.
    pub fn write(&mut self, addr: u64, len: u64, offset: u64) -> io::Result<u64> {
        let fd = self
            .fd
            .ok_or_else(|| io::Error::other("the task holds no pages file"))?;
        let ret = self
            .inj()?
            .long_syscall(libc::SYS_pwrite64, [fd as u64, addr, len, offset, 0, 0])?;
        // A refused write (EFAULT: memory the task cannot read; EFBIG: its file size
        // limit) leaves the rest to the dumper, which meets the same file errors.
        if (-4095..0).contains(&ret) {
            tracing::debug!(tid = %self.tid, addr, len, errno = -ret, "the task's pwrite refused");
            return Ok(0);
        }
        Ok(ret as u64)
    }

    /// The task closes the file, and every trace of the calls goes.
    pub fn close(mut self) -> io::Result<()> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> io::Result<()> {
        let Some(mut inj) = self.inj.take() else {
            return Ok(());
        };
        let closed = match self.fd.take() {
            Some(fd) => inj
                .syscall_ok("close", libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0])
                .map(drop),
            None => Ok(()),
        };
        let finished = inj.finish();
        closed.and(finished)
    }
}

impl Drop for TaskWriter {
    fn drop(&mut self) {
        if let Err(e) = self.close_inner() {
            tracing::warn!(tid = %self.tid, "taking the pages file back from the task: {e}");
        }
    }
}

/// Whether `pid` is in the dumper's cgroups, every hierarchy (see the top).
fn same_cgroups(pid: Pid) -> io::Result<bool> {
    let theirs = std::fs::read(format!("/proc/{}/cgroup", pid.0))?;
    let ours = std::fs::read("/proc/self/cgroup")?;
    Ok(theirs == ours)
}
