//! Live snapshot by write protection: the other way (beside `snapshot.rs`'s
//! copy-on-write child) to save private anonymous memory after the thaw, as it was at the
//! freeze. Chosen for processes with much memory (`SnapshotMethod`), because its frozen
//! cost does not grow with the memory.
//!
//! Why: the snapshot child's fork copies the page tables while the tree is frozen, and
//! takes the process's mmap lock for writing meanwhile (a writer thread waits on it even
//! if we did not freeze it): ~21-24 ms per GiB of 4 KiB pages on this project's machines,
//! whatever else is done. Write-protecting the same memory with a userfaultfd
//! (`UFFDIO_WRITEPROTECT`) is the same walk, but it runs under the read side of the lock,
//! so it can run *before* the freeze, with the tree running:
//!
//! 1. Before the freeze, each process's leader is stopped, briefly (~0.3 ms), for a
//!    `userfaultfd(2)` call run at a `syscall` instruction of its own (nothing of its
//!    memory written), which we take over with `pidfd_getfd` and close in the process
//!    again; its other threads run on (one of them could only notice that an fd number
//!    was taken for that moment). Its private anonymous VMAs, as the smaps read for the
//!    pages file's size shows them, are registered for write protection.
//! 2. The tree running, every registered VMA is write-protected. A write to a protected
//!    page stops its thread on a fault that our handler thread answers by lifting the
//!    protection of that page: the program is slowed (one round trip per page it writes
//!    first), not stopped.
//! 3. The freeze, as for any dump. While frozen, the pages written since step 2 (present
//!    and not protected: PAGEMAP_SCAN's written category) are protected again, ~1 ms per
//!    GiB scanned plus the few thousand pages a writer got to. A VMA whose pages cannot be
//!    protected (not registered: mapped since step 1) is copied frozen instead.
//! 4. After the thaw, workers copy the protected pages (2 MiB at a time, each then let
//!    go); a write to a page not copied yet waits on its fault until the handler has
//!    copied its chunk. The pages are read through `/proc/PID/mem` opened while frozen,
//!    which names the address space of the freeze: after an exec, or the exit, every read
//!    fails instead of reading another memory.
//!
//! What it cannot save, and fails the dump on (the tree runs on; another dump succeeds):
//! memory the process lets go of before it is copied. `MADV_DONTNEED` and friends are
//! reported (`UFFD_EVENT_REMOVE`) before the kernel drops the pages; a chunk not copied
//! by then is lost. An unmapped or moved VMA no longer belongs to our userfaultfd: lifting
//! the protection of a chunk after its copy fails (ENOENT), and that copy may have read
//! another mapping, so it counts as lost. A copy-on-write child keeps all of this (see
//! `snapshot.rs`), which is why small processes, whose fork is short, keep it.
//!
//! Undoing: closing the userfaultfd lifts every protection and wakes every waiting
//! thread (the kernel does it when its last fd closes, so also when the dumper dies).
//! Doing it by closing costs one walk of the memory under the mmap lock's write side
//! (~20-40 ms per GiB here), so after a copy the VMAs are unregistered in 64 MiB steps
//! first.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::proc::{MapEntry, ProcDir};
use crate::progress::Progress;
use crate::sys::{self, page_is, Pid, Uffd, UffdEvent};

use super::mm::{self, Backing, Chunk};

/// How a live snapshot (`dump -R`) saves each process's private anonymous memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotMethod {
    /// Write protection for a process with at least `AUTO_MIN_BYTES` of it, a
    /// copy-on-write child for the others.
    #[default]
    Auto,
    /// A copy-on-write child for every process (`snapshot.rs`).
    Fork,
    /// Write protection wherever it can be set up.
    WriteProtect,
}

/// Below this much private anonymous memory, the snapshot child's fork costs less
/// frozen time than write protection's extra stop (~2 ms per 64 MiB here).
pub const AUTO_MIN_BYTES: u64 = 64 << 20;
/// Above this many VMAs to protect, `auto` takes the snapshot child: registering costs
/// ~6 us per VMA in the extra stop and sealing ~13 us per VMA frozen (10,000 VMAs of
/// 256 MiB: 193 ms frozen in all, against 114 ms with the fork).
pub const AUTO_MAX_VMAS: usize = 512;

const PAGE: u64 = 4096;
/// Unregistering takes the mmap lock's write side: in steps, each short.
const UNREGISTER_STEP: u64 = 64 << 20;

const UNSAVED: u8 = 0;
const CLAIMED: u8 = 1;
const SAVED: u8 = 2;
const LOST: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the freeze: a fault lifts the protection of its page.
    Running,
    /// Frozen, the written pages protected again: nothing may write.
    Sealed,
    /// After the thaw: a fault waits for its chunk to be copied.
    Copying,
}

/// What the copy of one process works from, set while frozen.
struct Copy {
    /// `/proc/PID/mem`, opened while frozen.
    mem: File,
    /// The pages file, at the chunks' offsets.
    file: File,
    /// Its size once written.
    file_len: u64,
    /// In address order.
    chunks: Vec<Chunk>,
    states: Vec<AtomicU8>,
}

/// One protected process, shared with its fault handler thread.
struct Shared {
    pid: Pid,
    uffd: Uffd,
    /// An eventfd that stops the handler's wait.
    stop: OwnedFd,
    stopping: AtomicBool,
    phase: Mutex<Phase>,
    /// The ranges registered, in address order.
    registered: Vec<(u64, u64)>,
    /// The VMAs whose pages are copied after the thaw, set while frozen.
    held: OnceLock<Vec<(u64, u64)>>,
    copy: OnceLock<Copy>,
    /// The first reason the copy is not the memory of the freeze.
    conflict: Mutex<Option<String>>,
    faults: AtomicUsize,
}

struct Protected {
    shared: Arc<Shared>,
    handler: Option<std::thread::JoinHandle<()>>,
}

/// The write-protected processes of a tree. Dropping it lifts every protection.
#[derive(Default)]
pub struct Protection {
    processes: Vec<Protected>,
    /// How long the processes' leaders were stopped to set it up (besides the dump's
    /// freeze), together.
    pub stop_us: u64,
}

/// The VMAs of `maps` that can be write-protected: private anonymous memory, not
/// hugetlb (copied frozen, as the snapshot child leaves it).
pub fn protectable<'a>(maps: impl IntoIterator<Item = &'a MapEntry>) -> Vec<(u64, u64)> {
    maps.into_iter()
        .filter(|m| mm::classify(m) == Backing::AnonPrivate)
        .filter(|m| !m.has_flag("ht"))
        .map(|m| (m.start, m.end))
        .collect()
}

/// The index of the chunk of `chunks` (address order) holding `addr`.
fn chunk_at(chunks: &[Chunk], addr: u64) -> Option<usize> {
    let i = chunks.partition_point(|c| c.addr <= addr);
    (i > 0 && addr < chunks[i - 1].addr + chunks[i - 1].len).then(|| i - 1)
}

impl Protection {
    /// Sets up write protection for the processes of `candidates` (pid and the smaps
    /// read before the freeze) that have at least `min_bytes` of protectable memory
    /// resident in at most `max_vmas` VMAs: stops each one's leader for its userfaultfd
    /// and registers its VMAs, then, the tree running, protects their memory. Best
    /// effort: a process it cannot set up for is left out (the snapshot child copies
    /// it), and any failure leaves the tree as it was.
    pub fn prepare(
        candidates: &[(Pid, Vec<MapEntry>)],
        min_bytes: u64,
        max_vmas: usize,
    ) -> Protection {
        let wanted: Vec<(Pid, Vec<(u64, u64)>)> = candidates
            .iter()
            .filter_map(|(pid, maps)| {
                let ranges = protectable(maps);
                let resident: u64 = maps
                    .iter()
                    .filter(|m| ranges.binary_search(&(m.start, m.end)).is_ok())
                    .map(|m| m.anonymous_kb * 1024)
                    .sum();
                let wanted = resident >= min_bytes.max(1) && ranges.len() <= max_vmas;
                wanted.then_some((*pid, ranges))
            })
            .collect();
        let mut out = Protection::default();
        if wanted.is_empty() {
            return out;
        }
        let mut stopped = Duration::ZERO;
        for (pid, ranges) in wanted {
            match set_up(pid, &ranges, &mut stopped) {
                Ok(Some(shared)) => out.processes.push(Protected {
                    shared: Arc::new(shared),
                    handler: None,
                }),
                Ok(None) => {}
                Err(e) => {
                    tracing::info!(%pid, "no write-protected snapshot (a copy-on-write child instead): {e}")
                }
            }
        }
        // Handlers first: a registered range's madvise waits for them from now on.
        for p in &mut out.processes {
            let shared = p.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("criu-rs-wp".into())
                .spawn(move || serve(&shared));
            match spawned {
                Ok(handle) => p.handler = Some(handle),
                Err(e) => record(&p.shared, format!("starting its fault handler: {e}")),
            }
        }
        out.processes.retain(|p| p.handler.is_some());
        out.stop_us = stopped.as_micros() as u64;
        // The tree runs: the walk slows its writes, it does not stop them.
        let protecting = Instant::now();
        for p in &out.processes {
            for &(start, end) in &p.shared.registered {
                if let Err(e) = p.shared.uffd.write_protect(start, end - start, true) {
                    // Unmapped since: its pages (if mapped again) are copied frozen.
                    tracing::debug!(pid = %p.shared.pid, "write-protecting {start:#x}-{end:#x}: {e}");
                }
            }
        }
        tracing::info!(
            processes = out.processes.len(),
            stop_us = out.stop_us,
            protect_us = protecting.elapsed().as_micros() as u64,
            "memory write-protected before the freeze"
        );
        out
    }

    /// Whether `pid`'s memory is write-protected.
    pub fn has(&self, pid: Pid) -> bool {
        self.of(pid).is_some()
    }

    fn of(&self, pid: Pid) -> Option<&Arc<Shared>> {
        self.processes
            .iter()
            .map(|p| &p.shared)
            .find(|s| s.pid == pid)
    }

    /// While frozen, once no injected call writes its memory any more: protects again
    /// the pages of `pid` written since they were protected, and keeps the VMAs of
    /// `vmas` (the frozen map) whose pages are then all protected, to be copied after
    /// the thaw (`held`).
    pub fn seal(&self, pid: Pid, vmas: &[mm::Vma]) -> io::Result<()> {
        let Some(shared) = self.of(pid) else {
            return Ok(());
        };
        let mut phase = lock(&shared.phase);
        *phase = Phase::Sealed;
        let pagemap = File::open(format!("/proc/{}/pagemap", pid.0))?;
        let mut held = Vec::new();
        let mut written = 0u64;
        for (start, end) in protectable(vmas.iter().map(|v| &v.map)) {
            // `registered` is in address order, as maps lists the VMAs.
            if !super::track::inside_sorted(&shared.registered, start, end) {
                continue;
            }
            // Present or swapped pages without their write-protect bit.
            let regions = sys::pagemap_scan_all_of(
                pagemap.as_fd(),
                start,
                end,
                page_is::WRITTEN,
                page_is::PRESENT | page_is::SWAPPED,
                page_is::WRITTEN,
            )?;
            let mut protected = true;
            for r in &regions {
                written += r.end - r.start;
                if let Err(e) = shared.uffd.write_protect(r.start, r.end - r.start, true) {
                    // Not ours (mapped since the registration): copied frozen.
                    tracing::debug!(%pid, "protecting {:#x}-{:#x} again: {e}", r.start, r.end);
                    protected = false;
                    break;
                }
            }
            if protected {
                held.push((start, end));
            }
        }
        drop(phase);
        tracing::debug!(%pid, held = held.len(), written_kib = written / 1024, "written pages protected again");
        let _ = shared.held.set(held);
        Ok(())
    }

    /// The VMAs of `pid` whose pages are copied after the thaw (see `seal`).
    pub fn held(&self, pid: Pid) -> Option<&[(u64, u64)]> {
        self.of(pid)?.held.get().map(Vec::as_slice)
    }

    /// While frozen: the chunks of `pid` to copy into `file` after the thaw, which is
    /// then cut to `file_len`.
    pub fn add_pages(
        &self,
        pid: Pid,
        file: File,
        file_len: u64,
        chunks: Vec<Chunk>,
    ) -> io::Result<()> {
        let Some(shared) = self.of(pid) else {
            return Ok(());
        };
        let mem = File::open(format!("/proc/{}/mem", pid.0))?;
        let states = chunks.iter().map(|_| AtomicU8::new(UNSAVED)).collect();
        let copy = Copy {
            mem,
            file,
            file_len,
            chunks,
            states,
        };
        if shared.copy.set(copy).is_err() {
            return Err(io::Error::other("its pages were added twice"));
        }
        Ok(())
    }

    /// Right before the thaw: from now on a fault waits for its chunk.
    pub fn ready(&self) {
        for p in &self.processes {
            *lock(&p.shared.phase) = Phase::Copying;
        }
    }

    /// After the thaw: copies every chunk (`workers` threads), lifting each one's
    /// protection after its copy, then lets go of the processes. Returns the bytes
    /// copied, or the first process whose memory changed under the copy and why.
    pub fn finish(
        mut self,
        workers: usize,
        interrupt: &crate::interrupt::Interrupt,
        progress: &Progress,
    ) -> Result<u64, (Pid, String)> {
        let mut jobs: Vec<(&Shared, &Copy, usize)> = self
            .processes
            .iter()
            .filter_map(|p| Some((&*p.shared, p.shared.copy.get()?)))
            .flat_map(|(s, c)| (0..c.chunks.len()).map(move |i| (s, c, i)))
            .collect();
        // Small VMAs first: buffers a program maps and unmaps again soon (malloc's
        // large blocks) are copied in the first moments, before it lets go of them.
        jobs.sort_by_key(|&(s, c, i)| (s.held_len(c.chunks[i].addr), c.chunks[i].addr));
        let total: u64 = jobs.iter().map(|(_, c, i)| c.chunks[*i].len).sum();
        progress.plan(total);
        let next = AtomicUsize::new(0);
        let bytes = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..workers.clamp(1, jobs.len().max(1)) {
                s.spawn(|| {
                    let mut buf = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let Some(&(shared, copy, i)) =
                            jobs.get(next.fetch_add(1, Ordering::Relaxed))
                        else {
                            break;
                        };
                        if let Err(e) = interrupt.check() {
                            record(shared, format!("interrupted: {e:?}"));
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                        let c = copy.chunks[i];
                        match save(copy, i, &mut buf) {
                            Ok(true) => {
                                bytes.fetch_add(c.len as usize, Ordering::Relaxed);
                                progress.advance(c.len);
                            }
                            Ok(false) => {}
                            Err(e) => record(shared, e),
                        }
                        let_go(shared, c);
                        if lock(&shared.conflict).is_some() {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let shared: Vec<Arc<Shared>> = self.processes.iter().map(|p| p.shared.clone()).collect();
        self.end();
        for s in &shared {
            if let Some(why) = lock(&s.conflict).clone() {
                return Err((s.pid, why));
            }
            if let Some(copy) = s.copy.get() {
                copy.file
                    .set_len(copy.file_len)
                    .map_err(|e| (s.pid, format!("sizing the pages file: {e}")))?;
            }
            tracing::debug!(pid = %s.pid, faults = s.faults.load(Ordering::Relaxed), "write-protected snapshot copied");
        }
        // Every chunk is in: the rest was copied by the fault handlers (the bar ends
        // full).
        progress.advance(total - bytes.into_inner() as u64);
        Ok(total)
    }

    /// Lets go of every process: handlers stopped, VMAs unregistered in steps, then
    /// the userfaultfds closed (which lifts whatever protection is left).
    fn end(&mut self) {
        for p in &self.processes {
            p.shared.stopping.store(true, Ordering::Relaxed);
            let _ = sys::eventfd_signal(p.shared.stop.as_fd());
        }
        for p in &mut self.processes {
            if let Some(handle) = p.handler.take() {
                let _ = handle.join();
            }
            for &(start, end) in &p.shared.registered {
                let mut at = start;
                while at < end {
                    let len = (end - at).min(UNREGISTER_STEP);
                    if p.shared.uffd.unregister(at, len).is_err() {
                        // Changed since: closing the userfaultfd undoes the rest.
                        break;
                    }
                    at += len;
                }
            }
        }
        // The last references to the userfaultfds go with the handlers' (joined).
        self.processes.clear();
    }
}

impl Drop for Protection {
    fn drop(&mut self) {
        self.end();
    }
}

impl Shared {
    /// The size of the held VMA holding `addr`.
    fn held_len(&self, addr: u64) -> u64 {
        let held = self.held.get().map_or(&[][..], Vec::as_slice);
        let i = held.partition_point(|&(start, _)| start <= addr);
        i.checked_sub(1)
            .map(|i| held[i])
            .filter(|&(_, end)| addr < end)
            .map_or(0, |(start, end)| end - start)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn record(shared: &Shared, why: String) {
    let mut conflict = lock(&shared.conflict);
    if conflict.is_none() {
        tracing::warn!(pid = %shared.pid, "write-protected snapshot: {why}");
        *conflict = Some(why);
    }
}

/// Makes the userfaultfd of process `pid` through its leader, stopped for it alone
/// (its other threads run on), and registers `ranges` (those that are still VMAs as
/// they were) for write protection. None when nothing could be registered.
fn set_up(
    pid: Pid,
    ranges: &[(u64, u64)],
    stopped_for: &mut Duration,
) -> io::Result<Option<Shared>> {
    let leader = pid;
    let since = Instant::now();
    let Some(stopped) = super::snapshot::seize_stopped(leader, 0)? else {
        return Ok(None);
    };
    let options = super::seccomp::injection_options(leader);
    let made = super::snapshot::syscall_in_place(
        pid,
        leader,
        options,
        libc::SYS_userfaultfd,
        [(libc::O_CLOEXEC | libc::O_NONBLOCK) as u64, 0, 0, 0, 0, 0],
        "making a userfaultfd",
    )?;
    if made < 0 {
        return Err(io::Error::from_raw_os_error(-made as i32));
    }
    let ours = sys::pidfd_open(pid).and_then(|p| sys::pidfd_getfd(p.as_fd(), made as i32));
    let closed = super::snapshot::syscall_in_place(
        pid,
        leader,
        options,
        libc::SYS_close,
        [made as u64, 0, 0, 0, 0, 0],
        "closing the userfaultfd it made",
    );
    drop(stopped);
    *stopped_for += since.elapsed();
    let ours = ours?;
    match closed? {
        0 => {}
        r => {
            return Err(io::Error::other(format!(
                "close of its fd {made} returned {r}"
            )))
        }
    }
    let uffd = Uffd::with_features(
        ours,
        sys::UFFD_FEATURE_PAGEFAULT_FLAG_WP | sys::UFFD_FEATURE_EVENT_REMOVE,
    )?;
    let now = ProcDir::open(pid)?.maps_plain()?;
    let mut registered = Vec::new();
    for &(start, end) in ranges {
        // Still the VMA it was when smaps was read.
        let same = now.iter().find(|m| m.start == start && m.end == end);
        if !same.is_some_and(|m| mm::classify(m) == Backing::AnonPrivate) {
            continue;
        }
        match uffd.register_wp(start, end - start) {
            Ok(()) => registered.push((start, end)),
            // Registered with a userfaultfd of the program's own (EBUSY): copied frozen.
            Err(e) => tracing::debug!(%pid, "registering {start:#x}-{end:#x}: {e}"),
        }
    }
    if registered.is_empty() {
        return Ok(None);
    }
    Ok(Some(Shared {
        pid,
        uffd,
        stop: sys::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK)?,
        stopping: AtomicBool::new(false),
        phase: Mutex::new(Phase::Running),
        registered,
        held: OnceLock::new(),
        copy: OnceLock::new(),
        conflict: Mutex::new(None),
        faults: AtomicUsize::new(0),
    }))
}

/// The fault handler of one process, until told to stop.
fn serve(shared: &Shared) {
    let mut buf = Vec::new();
    loop {
        let events = match shared.uffd.read_events(100, shared.stop.as_fd()) {
            Ok(events) => events,
            Err(e) => {
                record(shared, format!("reading its userfaultfd: {e}"));
                return;
            }
        };
        if events.is_empty() {
            if shared.stopping.load(Ordering::Relaxed) {
                return;
            }
            continue;
        }
        for event in events {
            handle(shared, event, &mut buf);
        }
    }
}

fn handle(shared: &Shared, event: UffdEvent, buf: &mut Vec<u8>) {
    match event {
        UffdEvent::PageFault { addr, .. } => {
            shared.faults.fetch_add(1, Ordering::Relaxed);
            let page = addr & !(PAGE - 1);
            // Held while the protection is lifted: sealing waits for it.
            let phase = lock(&shared.phase);
            match *phase {
                Phase::Running => unprotect_page(shared, page),
                Phase::Sealed => {
                    record(
                        shared,
                        format!("a write at {page:#x} while the tree was frozen"),
                    );
                    unprotect_page(shared, page);
                }
                Phase::Copying => {
                    drop(phase);
                    let Some(copy) = shared.copy.get() else {
                        return unprotect_page(shared, page);
                    };
                    let Some(i) = chunk_at(&copy.chunks, page) else {
                        // Not saved (not present at the freeze): nothing to wait for.
                        return unprotect_page(shared, page);
                    };
                    if let Err(e) = save(copy, i, buf) {
                        record(shared, e);
                    }
                    let_go(shared, copy.chunks[i]);
                }
            }
        }
        UffdEvent::Remove { start, end, .. } => {
            let phase = *lock(&shared.phase);
            if phase == Phase::Running {
                return;
            }
            // The pages of [start, end) go once this event is read: those not saved
            // by now are lost to the snapshot.
            let Some(copy) = shared.copy.get() else {
                return record(
                    shared,
                    format!("memory {start:#x}-{end:#x} released while frozen"),
                );
            };
            let first = copy.chunks.partition_point(|c| c.addr + c.len <= start);
            for (c, state) in copy.chunks[first..].iter().zip(&copy.states[first..]) {
                if c.addr >= end {
                    break;
                }
                let was = state.swap(LOST, Ordering::AcqRel);
                if was == SAVED {
                    state.store(SAVED, Ordering::Release);
                } else {
                    record(
                        shared,
                        format!(
                            "it released memory {start:#x}-{end:#x} (madvise) before its snapshot \
                             was copied; dump again"
                        ),
                    );
                }
            }
        }
        _ => {}
    }
}

fn unprotect_page(shared: &Shared, page: u64) {
    if let Err(e) = shared.uffd.write_protect(page, PAGE, false) {
        // Unmapped meanwhile: its thread is woken by the unmap.
        tracing::debug!(pid = %shared.pid, "lifting the protection of {page:#x}: {e}");
        let _ = shared.uffd.wake(page, PAGE);
    }
}

/// Lifts the protection of a saved chunk (waking its waiting threads). It fails
/// (ENOENT) when the chunk is no longer all in VMAs registered with us: unmapped or
/// moved, so what was read there may be another mapping's.
fn let_go(shared: &Shared, c: Chunk) {
    if let Err(e) = shared.uffd.write_protect(c.addr, c.len, false) {
        let _ = shared.uffd.wake(c.addr, c.len);
        record(
            shared,
            format!(
                "its memory at {:#x}-{:#x} was unmapped or moved before its snapshot was copied \
                 ({e}); dump again",
                c.addr,
                c.addr + c.len
            ),
        );
    }
}

/// Copies chunk `i` unless it is copied or being copied (then waits for it). True when
/// this call copied it.
fn save(copy: &Copy, i: usize, buf: &mut Vec<u8>) -> Result<bool, String> {
    let c = copy.chunks[i];
    loop {
        match copy.states[i].compare_exchange(UNSAVED, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => break,
            Err(CLAIMED) => std::thread::sleep(Duration::from_micros(20)),
            Err(_) => return Ok(false),
        }
    }
    buf.resize(c.len as usize, 0);
    let copied = copy
        .mem
        .read_exact_at(buf, c.addr)
        .map_err(|e| {
            format!(
                "reading its memory at {:#x} (did it exit or exec?): {e}",
                c.addr
            )
        })
        .and_then(|()| {
            copy.file
                .write_all_at(buf, c.offset)
                .map_err(|e| format!("writing the pages file: {e}"))
        });
    if let Err(e) = copied {
        copy.states[i].store(LOST, Ordering::Release);
        return Err(e);
    }
    match copy.states[i].compare_exchange(CLAIMED, SAVED, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Ok(true),
        // Released meanwhile (recorded by the handler).
        Err(_) => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_chunks_are_cut_at_huge_page_bounds() {
        let pieces = [
            (0x1000, 0x3000, false),
            (0x1ff000, 0x402000, true),
            (0x500000, 0x501000, true),
        ];
        let (frozen, live) = super::super::snapshot::chunks_of(&pieces);
        assert_eq!(frozen.len(), 1);
        assert_eq!(
            (frozen[0].addr, frozen[0].len, frozen[0].offset),
            (0x1000, 0x2000, 0)
        );
        let cut: Vec<(u64, u64, u64)> = live.iter().map(|c| (c.addr, c.len, c.offset)).collect();
        assert_eq!(
            cut,
            vec![
                (0x1ff000, 0x1000, 0x2000),
                (0x200000, 0x200000, 0x3000),
                (0x400000, 0x2000, 0x203000),
                (0x500000, 0x1000, 0x205000),
            ]
        );
        assert_eq!(chunk_at(&live, 0x1ff000), Some(0));
        assert_eq!(chunk_at(&live, 0x3fffff), Some(1));
        assert_eq!(chunk_at(&live, 0x402000), None);
        assert_eq!(chunk_at(&live, 0x500fff), Some(3));
        assert_eq!(chunk_at(&live, 0x1000), None);
    }

    #[test]
    fn inside_follows_adjacent_ranges() {
        use super::super::track::inside_sorted as inside;
        let ranges = [(0x1000, 0x3000), (0x3000, 0x5000), (0x8000, 0x9000)];
        assert!(inside(&ranges, 0x2000, 0x5000));
        assert!(!inside(&ranges, 0x2000, 0x6000));
        assert!(inside(&ranges, 0x8000, 0x9000));
        assert!(!inside(&ranges, 0x7000, 0x9000));
    }
}
