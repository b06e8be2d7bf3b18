//! Giving a killed-after-dump task's memory back to the kernel while its pages are saved.
//!
//! Why: on these machines (KVM guests with free page reporting), memory the guest has
//! not touched recently is backed lazily by the host, so the pages file's fresh tmpfs
//! pages cost a host fault each: writing 1 GiB took 2.8-3.8 s with cold memory, against
//! 0.7 s when each saved chunk of the source was dropped right after it was written, so
//! that the next chunks were allocated from the just-freed (still backed) pages. A tree
//! that is killed after the dump loses that memory a moment later anyway.
//!
//! How: the tracer injects `madvise(MADV_DONTNEED)` into one thread of the frozen
//! process for every saved batch. `PageRelease` is the guard of that change: unless
//! `keep` is called (the dump succeeded and the tree is about to be killed), dropping it
//! writes every released range back from the pages file, so a dump that fails later
//! leaves the task's memory exactly as it was.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::dump::mm::{self, Chunk, TreeSmaps};
use crate::inject::Injector;
use crate::proc::{MapEntry, ProcDir};
use crate::sys::{self, Pid};

/// Processes with fewer bytes of releasable pages keep them: the gain is nothing there.
pub const MIN_BYTES: u64 = 8 << 20;

pub struct PageRelease {
    pid: Pid,
    /// The thread the madvise calls run in.
    tid: Pid,
    /// An executable address of the process for the injected calls.
    gadget: u64,
    /// The pages file, read back if the released ranges must be written back.
    pages: File,
    released: Vec<Chunk>,
    kept: bool,
    smaps: std::sync::Arc<TreeSmaps>,
    /// Address ranges whose VmFlags forbid releasing (from smaps, on first use); `None`
    /// until known. An error reading smaps turns releasing off.
    blocked: Option<Option<Vec<(u64, u64)>>>,
}

impl PageRelease {
    /// `pages` is the path of the pages file the task's pages are copied to.
    pub fn new(
        pid: Pid,
        tid: Pid,
        gadget: u64,
        pages: &Path,
        smaps: std::sync::Arc<TreeSmaps>,
    ) -> io::Result<PageRelease> {
        Ok(PageRelease {
            pid,
            tid,
            gadget,
            // Opened for reading here: the dump's own handle is write-only, and the file
            // may be unlinked by the time it is needed.
            pages: File::open(pages)?,
            released: Vec::new(),
            kept: false,
            smaps,
            blocked: None,
        })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Drops the task's copy of `chunks`, which are saved in the pages file (those whose
    /// VmFlags allow it).
    pub fn release(&mut self, chunks: &[Chunk]) -> io::Result<()> {
        let pid = self.pid;
        let smaps = &self.smaps;
        let blocked = self.blocked.get_or_insert_with(|| {
            // Without locked memory nothing in the VmFlags can stop a release (a
            // userfaultfd needs an fd the dump would have refused); only then is smaps,
            // still being read, needed first.
            let locked = ProcDir::open(pid)
                .and_then(|d| d.status())
                .map_or(1, |s| s.vm_locked_kb);
            if locked == 0 {
                return Some(Vec::new());
            }
            match smaps.of(pid) {
                Ok(maps) => Some(blocked_ranges(maps)),
                Err(e) => {
                    tracing::warn!(%pid, "not releasing memory: {e}");
                    None
                }
            }
        });
        let Some(blocked) = blocked else {
            return Ok(());
        };
        let chunks: Vec<Chunk> = chunks
            .iter()
            .filter(|c| !overlaps(c, blocked))
            .copied()
            .collect();
        if chunks.is_empty() {
            return Ok(());
        }
        let mut inj = Injector::new(self.tid, self.gadget)?;
        let mut i = 0;
        while i < chunks.len() {
            // One call per contiguous stretch of the address space.
            let start = chunks[i].addr;
            let mut end = start + chunks[i].len;
            let mut j = i + 1;
            while j < chunks.len() && chunks[j].addr == end {
                end += chunks[j].len;
                j += 1;
            }
            // Recorded first: writing back a range the call did not drop is harmless.
            self.released.extend_from_slice(&chunks[i..j]);
            let advice = libc::MADV_DONTNEED as u64;
            let call = inj.syscall_ok(
                "madvise",
                libc::SYS_madvise,
                [start, end - start, advice, 0, 0, 0],
            );
            if let Err(e) = call {
                // Puts the registers back before the error travels up.
                let _ = inj.finish();
                return Err(e);
            }
            i = j;
        }
        inj.finish()
    }

    /// The dump succeeded and the task is killed next: its memory stays released.
    pub fn keep(mut self) {
        self.kept = true;
    }

    /// Writes every released range back from the pages file.
    fn write_back(&self) -> io::Result<()> {
        let mem = File::options()
            .write(true)
            .open(format!("/proc/{}/mem", self.pid.0))?;
        // A write into a range registered with userfaultfd (by a monitor outside the
        // tree: the dump refuses userfaultfd fds) would wait for that monitor: such
        // ranges are left out and reported.
        let blocked = blocked_ranges(self.smaps.of(self.pid)?);
        let mut left_out = Vec::new();
        let mut buf = Vec::new();
        for c in &self.released {
            if overlaps(c, &blocked) {
                left_out.push(format!("{:#x}+{:#x}", c.addr, c.len));
                continue;
            }
            buf.resize(c.len as usize, 0);
            self.pages.read_exact_at(&mut buf, c.offset)?;
            let done = sys::process_vm_writev(self.pid, &buf, c.addr).unwrap_or(0);
            if done < buf.len() {
                mem.write_all_at(&buf[done..], c.addr + done as u64)?;
            }
        }
        if !left_out.is_empty() {
            return Err(io::Error::other(format!(
                "ranges registered with userfaultfd not written back: {}",
                left_out.join(", ")
            )));
        }
        Ok(())
    }
}

/// The address ranges of `maps` whose VmFlags rule out releasing (`mm::release_blocked`).
fn blocked_ranges(maps: &[MapEntry]) -> Vec<(u64, u64)> {
    maps.iter()
        .filter(|m| mm::release_blocked(m))
        .map(|m| (m.start, m.end))
        .collect()
}

/// Whether chunk `c` touches any of `ranges`.
fn overlaps(c: &Chunk, ranges: &[(u64, u64)]) -> bool {
    ranges
        .iter()
        .any(|&(start, end)| c.addr < end && start < c.addr + c.len)
}

impl Drop for PageRelease {
    fn drop(&mut self) {
        if self.kept || self.released.is_empty() {
            return;
        }
        let bytes: u64 = self.released.iter().map(|c| c.len).sum();
        match self.write_back() {
            Ok(()) => tracing::info!(pid = %self.pid, bytes, "released memory written back"),
            Err(e) => tracing::error!(
                pid = %self.pid,
                bytes,
                "could not write released memory back, the task's memory is damaged: {e}"
            ),
        }
    }
}
