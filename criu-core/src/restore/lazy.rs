//! Lazy restore (`--lazy-pages`): the tree runs before its private anonymous memory is
//! in. Stage 5 registers that memory with a userfaultfd of each process (missing-page
//! mode) instead of filling it, and hands the userfaultfd to the server here, which from
//! then on answers every fault with the saved page (`UFFDIO_COPY`), or a zero page where
//! nothing was saved. Once the tree runs, workers on every core copy the rest in order,
//! 2 MiB per step (`WORKER_SPAN`), at a low priority until the caller waits for them
//! (`LoweredWorkers`); when every saved page is in, the ranges are unregistered and the
//! server ends.
//!
//! The tree must never run on with a page that was not restored: if the userfaultfd
//! closed with the restorer, the kernel would map zero pages in place of the missing
//! ones. So a watchdog process (`sys::fork_lazy_watchdog`) holds a duplicate of each
//! userfaultfd and a pidfd of each process; if the restorer dies before every page is in,
//! the watchdog kills the tree (as CRIU does when its lazy-pages daemon fails), and a
//! fault still waiting then ends with the process.
//!
//! What the processes do meanwhile is followed through the userfaultfd's events: a
//! range unmapped or emptied by madvise(2) is not filled again (its missing pages are
//! zero), an mremap(2) moves where its pages go, and a child forked before its pages
//! are in gets them too (served like its parent from then on).

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::*;

/// Where saved pages come from: the local pages image now, a page server later.
pub trait PageSource: Send + Sync {
    /// Calls `put` with the `len` saved bytes at `offset` of the pages image.
    fn with_bytes(
        &self,
        offset: u64,
        len: usize,
        put: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()>;
}

/// A pages image on local storage, mapped once (no copy before `UFFDIO_COPY`).
pub struct LocalPages {
    pages: std::sync::Arc<super::chain::PagesImage>,
}

impl LocalPages {
    pub(crate) fn new(pages: std::sync::Arc<super::chain::PagesImage>) -> LocalPages {
        LocalPages { pages }
    }
}

impl PageSource for LocalPages {
    fn with_bytes(
        &self,
        offset: u64,
        len: usize,
        put: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| std::io::Error::other("offset"))?;
        let bytes = super::chain::pages_at(self.pages.bytes(), start, len)?;
        // A worker's step: its source pages mapped in one call first. Otherwise
        // UFFDIO_COPY meets them unmapped, drops its locks, faults them in (16 at a
        // time) and starts again: 16,000 faults for 1 GiB. Best effort: it only saves
        // time (MADV_POPULATE_READ, Linux 5.14).
        if len > FAULT_PAGES * PAGE as usize {
            self.pages.populate(start, len);
        }
        put(bytes)
    }
}

/// Pages a fault claims together (aligned, around the faulting one): few, so the
/// faulting thread waits for little more than its own page.
const FAULT_PAGES: usize = 16;

/// The most a background worker copies in one step (one UFFDIO_COPY when nothing is
/// in the way): a page table's reach, aligned, so that workers on different cores fill
/// different page tables instead of taking turns at one lock, and the cost of each
/// ioctl is spread over 512 pages.
const WORKER_SPAN: u64 = 2 << 20;

/// A saved page's state.
const PENDING: u8 = 0;
/// Copied in, or being copied by someone.
const CLAIMED: u8 = 1;
/// Unmapped or emptied by the process: missing means zero now.
const REMOVED: u8 = 2;

/// A run of saved pages: their address at the dump, their offset in the pages image,
/// and the index of their first page in `LazyMm::states`.
#[derive(Clone, Copy)]
struct Run {
    addr: u64,
    pages: usize,
    offset: u64,
    first: usize,
}

/// One address space of the tree being served.
struct LazyMm {
    /// Our number of a process using it (0 for a forked one until its first fault).
    pid: Mutex<Pid>,
    uffd: sys::Uffd,
    source: Arc<dyn PageSource>,
    runs: Arc<Vec<Run>>,
    /// What the workers copy, step by step: ranges of `states` indices, each inside
    /// one run and one `WORKER_SPAN` of the address space, in address order.
    steps: Arc<Vec<(usize, usize)>>,
    states: Vec<AtomicU8>,
    /// mremap(2)s seen, in order: (from, to, len).
    remaps: Mutex<Vec<(u64, u64, u64)>>,
    /// Whether `remaps` holds any (read without its lock on every copy).
    remapped: AtomicBool,
    /// The ranges registered, at their dump addresses.
    registered: Arc<Vec<(u64, u64)>>,
    /// The next of `steps` the workers take.
    next_step: AtomicUsize,
    /// The address space is gone (every process using it exited or exec'd).
    gone: AtomicBool,
}

impl LazyMm {
    /// Where a dump address is now.
    fn current(&self, mut addr: u64) -> u64 {
        if !self.remapped.load(Ordering::Acquire) {
            return addr;
        }
        for &(from, to, len) in self
            .remaps
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
            .iter()
        {
            if from <= addr && addr < from + len {
                addr = to + (addr - from);
            }
        }
        addr
    }

    /// The dump address of what is now at `addr`.
    fn original(&self, mut addr: u64) -> u64 {
        if !self.remapped.load(Ordering::Acquire) {
            return addr;
        }
        let remaps = self.remaps.lock().map(|r| r.clone()).unwrap_or_default();
        for &(from, to, len) in remaps.iter().rev() {
            if to <= addr && addr < to + len {
                addr = from + (addr - to);
            }
        }
        addr
    }

    /// The saved page at dump address `addr`: its index in `states`, and its run.
    fn page_at(&self, addr: u64) -> Option<(usize, Run)> {
        let i = self
            .runs
            .partition_point(|r| r.addr <= addr)
            .checked_sub(1)?;
        let run = self.runs[i];
        let n = ((addr - run.addr) / PAGE) as usize;
        (n < run.pages).then_some((run.first + n, run))
    }

    /// Records an mremap(2) of `[from, from + len)` to `to`.
    fn remap(&self, from: u64, to: u64, len: u64) {
        if let Ok(mut r) = self.remaps.lock() {
            r.push((from, to, len));
            self.remapped.store(true, Ordering::Release);
        }
    }

    /// Claims the pending pages of `states[first..last]` and copies them in, each run
    /// of claimed pages in one go.
    ///
    /// `wait`: retry while an event is being reported (workers); the fault thread, which
    /// must read that event first, gets `WouldBlock` instead.
    fn fill(&self, first: usize, last: usize, wait: bool) -> std::io::Result<()> {
        let last = last.min(self.states.len());
        let mut i = first;
        while i < last {
            if !self.claim(i) {
                i += 1;
                continue;
            }
            // A run of claimed pages, inside one saved run.
            let run = self.run_of(i);
            let run_end = run.first + run.pages;
            let mut j = i + 1;
            while j < last && j < run_end && self.claim(j) {
                j += 1;
            }
            self.copy(run, i, j - i, wait)?;
            i = j;
        }
        Ok(())
    }

    fn claim(&self, page: usize) -> bool {
        self.states[page]
            .compare_exchange(PENDING, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn run_of(&self, page: usize) -> Run {
        let i = self.runs.partition_point(|r| r.first <= page) - 1;
        self.runs[i]
    }

    /// Copies `count` saved pages from index `page` (all in `run`) to where they are
    /// now. A page that is there already, or whose memory is gone, is skipped.
    fn copy(&self, run: Run, page: usize, count: usize, wait: bool) -> std::io::Result<()> {
        let n = page - run.first;
        let addr = run.addr + n as u64 * PAGE;
        let offset = run.offset + n as u64 * PAGE;
        let len = count as u64 * PAGE;
        let at = self.current(addr);
        if self.current(addr + len - PAGE) != at + len - PAGE {
            // Split by an mremap: page by page.
            for k in 0..count {
                self.copy(run, page + k, 1, wait)?;
            }
            return Ok(());
        }
        self.source
            .with_bytes(offset, len as usize, &mut |bytes| self.put(at, bytes, wait))
    }

    /// UFFDIO_COPY of `bytes` to `at`, page by page past pages that exist.
    fn put(&self, at: u64, bytes: &[u8], wait: bool) -> std::io::Result<()> {
        let mut done = 0usize;
        let mut again = 0u32;
        while done < bytes.len() && !self.gone.load(Ordering::Relaxed) {
            let dst = at + done as u64;
            match self.uffd.copy(dst, &bytes[done..]) {
                Ok(n) if n > 0 => done += n,
                // The page exists (the process wrote it, or another copy won): wake
                // any thread waiting there, go on after it.
                Ok(_) => done += PAGE as usize,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EEXIST) => {
                        let _ = self.uffd.wake(dst, PAGE);
                        done += PAGE as usize;
                    }
                    // An event (fork, mremap, munmap) is being reported: once the fault
                    // thread has read it, the copy goes through.
                    Some(libc::EAGAIN) if !wait => {
                        return Err(std::io::ErrorKind::WouldBlock.into())
                    }
                    Some(libc::EAGAIN) => {
                        again += 1;
                        std::thread::sleep(Duration::from_micros(50.min(u64::from(again))));
                    }
                    // No longer registered (unmapped, or mapped anew): nothing to fill.
                    Some(libc::ENOENT) | Some(libc::EINVAL) => done += PAGE as usize,
                    Some(libc::ESRCH) => self.gone.store(true, Ordering::Relaxed),
                    _ => return Err(e),
                },
            }
        }
        Ok(())
    }

    /// A fault at `addr` (where the process sees it).
    fn fault(&self, addr: u64) -> std::io::Result<()> {
        let addr = addr & !(PAGE - 1);
        let original = self.original(addr);
        let Some((page, run)) = self.page_at(original) else {
            return self.zero(addr);
        };
        match self.states[page].load(Ordering::Acquire) {
            PENDING => {
                let first = page - page % FAULT_PAGES;
                self.fill(first, first + FAULT_PAGES, false)?;
                // Someone else claimed it in between: copy it again (harmless, EEXIST
                // and a wake if theirs came first).
                self.copy(run, page, 1, false)
            }
            // Being copied by a worker, or in before a fork/madvise we raced with.
            CLAIMED => self.copy(run, page, 1, false),
            _ => self.zero(addr),
        }
    }

    fn zero(&self, addr: u64) -> std::io::Result<()> {
        match self.uffd.zeropage(addr, PAGE) {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                Some(libc::EEXIST) => self.uffd.wake(addr, PAGE),
                Some(libc::ENOENT) | Some(libc::EINVAL) | Some(libc::EAGAIN) => Ok(()),
                Some(libc::ESRCH) => {
                    self.gone.store(true, Ordering::Relaxed);
                    Ok(())
                }
                _ => Err(e),
            },
        }
    }

    /// `[start, end)` (as the process sees it) was unmapped or emptied.
    fn removed(&self, start: u64, end: u64) {
        let mut at = start & !(PAGE - 1);
        while at < end {
            if let Some((page, _)) = self.page_at(self.original(at)) {
                self.states[page].store(REMOVED, Ordering::Release);
            }
            at += PAGE;
        }
    }
}

/// The restorer's page server: fault threads (one per address space) from the moment
/// memory is registered, background workers once the tree runs.
pub(super) struct LazyServer {
    shared: Arc<Shared>,
    faults: Mutex<Vec<std::thread::JoinHandle<()>>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    watchdog: Option<(Pid, OwnedFd)>,
}

struct Shared {
    mms: Mutex<Vec<Arc<LazyMm>>>,
    stop: AtomicBool,
    /// Readable once `stop` is set: wakes the fault threads from their wait.
    stop_fd: File,
    /// Threads serving faults, to be joined; also the watchdog channel for new fds.
    channel: Mutex<Option<OwnedFd>>,
    failed: Mutex<Option<String>>,
    /// Every page is in (or every process is gone).
    finished: AtomicBool,
    /// The CPUs the restorer had before it pinned itself: our threads run on all.
    cpus: Option<libc::cpu_set_t>,
    new_faults: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// The background workers while they yield to the rest.
    lowered: Mutex<LoweredWorkers>,
    /// When the workers started (for the log).
    started: Mutex<Option<Instant>>,
}

/// The nice value of background workers until the caller waits for them: a tenth of a
/// normal thread's share of a busy CPU.
const WORKER_NICE: i32 = 10;

/// Background workers run at a low priority (`WORKER_NICE`) until the caller waits for
/// them: until then, every CPU they take is one the restore's last steps, the caller's
/// own return and the tree itself do not get, and on a machine with two cores that
/// took `restore -d` from 13 to 20 ms (medians of 12). Faults are served at normal
/// priority throughout. Not SCHED_IDLE, which was no faster: a worker starved inside
/// UFFDIO_COPY holds its mapping's lock, which an munmap(2) or mprotect(2) of the tree
/// then waits for. A worker that starts after the caller waits runs at normal priority.
#[derive(Default)]
struct LoweredWorkers {
    /// The caller waits: no worker is lowered any more.
    raised: bool,
    /// Each lowered worker and the scheduling it had before.
    tids: Vec<(Pid, sys::Sched)>,
}

/// Features a lazy restore needs of the userfaultfd.
pub(super) const LAZY_FEATURES: u64 = sys::UFFD_FEATURE_EVENT_FORK
    | sys::UFFD_FEATURE_EVENT_REMAP
    | sys::UFFD_FEATURE_EVENT_REMOVE
    | sys::UFFD_FEATURE_EVENT_UNMAP
    | sys::UFFD_FEATURE_THREAD_ID;

impl LazyServer {
    /// Starts serving, with the watchdog forked.
    pub(super) fn start(cpus: Option<libc::cpu_set_t>) -> std::io::Result<LazyServer> {
        let (ours, theirs) = std::os::unix::net::UnixDatagram::pair()?;
        let me = sys::pidfd_open(Pid(std::process::id() as i32))?;
        let theirs = OwnedFd::from(theirs);
        let watchdog = sys::fork_lazy_watchdog(me.as_fd(), theirs.as_fd())?;
        drop(theirs);
        let ours = OwnedFd::from(ours);
        Ok(LazyServer {
            shared: Arc::new(Shared {
                mms: Mutex::new(Vec::new()),
                stop: AtomicBool::new(false),
                stop_fd: File::from(sys::eventfd(0, 0)?),
                channel: Mutex::new(Some(ours.try_clone()?)),
                failed: Mutex::new(None),
                finished: AtomicBool::new(false),
                new_faults: Mutex::new(Vec::new()),
                lowered: Mutex::new(LoweredWorkers::default()),
                started: Mutex::new(None),
                cpus,
            }),
            faults: Mutex::new(Vec::new()),
            workers: Vec::new(),
            watchdog: Some((watchdog, ours)),
        })
    }

    /// Serves the registered `ranges` of process `pid` through `uffd`, with its saved
    /// pages from `pagemap` in `source`; the watchdog gets a pidfd and the uffd.
    pub(super) fn add(
        &self,
        pid: Pid,
        uffd: sys::Uffd,
        ranges: Vec<(u64, u64)>,
        pagemap: &[pb::PagemapEntry],
        source: Arc<dyn PageSource>,
    ) -> std::io::Result<()> {
        let pidfd = sys::pidfd_open(pid)?;
        self.shared
            .tell(sys::lazy_watch::TASK, &[pidfd.as_fd(), uffd.as_fd()])?;
        let mut runs = Vec::new();
        let mut offset = 0u64;
        let mut first = 0usize;
        for e in pagemap {
            let len = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages)) * PAGE;
            // The parts inside registered ranges.
            for &(s, end) in &ranges {
                let (from, to) = (e.vaddr.max(s), (e.vaddr + len).min(end));
                if from < to {
                    let pages = ((to - from) / PAGE) as usize;
                    runs.push(Run {
                        addr: from,
                        pages,
                        offset: offset + (from - e.vaddr),
                        first: 0,
                    });
                }
            }
            offset += len;
        }
        runs.sort_by_key(|r| r.addr);
        for r in &mut runs {
            r.first = first;
            first += r.pages;
        }
        let steps = worker_steps(&runs);
        let mm = Arc::new(LazyMm {
            pid: Mutex::new(pid),
            uffd,
            source,
            runs: Arc::new(runs),
            steps: Arc::new(steps),
            states: (0..first).map(|_| AtomicU8::new(PENDING)).collect(),
            remaps: Mutex::new(Vec::new()),
            remapped: AtomicBool::new(false),
            registered: Arc::new(ranges),
            next_step: AtomicUsize::new(0),
            gone: AtomicBool::new(false),
        });
        let handle = serve_faults(&self.shared, mm)?;
        if let Ok(mut f) = self.faults.lock() {
            f.push(handle);
        }
        Ok(())
    }

    /// The tree runs: workers on every core copy the rest in, at a low priority until
    /// the caller waits for them (`LoweredWorkers`).
    pub(super) fn go(&mut self, cpus: usize) -> std::io::Result<()> {
        if let Ok(mut started) = self.shared.started.lock() {
            *started = Some(Instant::now());
        }
        for _ in 0..cpus.max(1) {
            let shared = self.shared.clone();
            self.workers.push(
                std::thread::Builder::new()
                    .name("lazy-pages".into())
                    .spawn(move || {
                        shared.unpin();
                        shared.lower_until_waited();
                        shared.fill_all();
                        shared.forget_lowered();
                    })?,
            );
        }
        Ok(())
    }

    /// Waits until every page is in (or every process gone), then lets the watchdog go.
    /// An error if serving failed: the tree was then killed.
    fn finish(&mut self) -> Result<(), String> {
        self.shared.raise_workers();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        // Children forked after the workers ended.
        self.shared.fill_all();
        let failed = self.shared.failed.lock().ok().and_then(|mut f| f.take());
        if failed.is_none() {
            // Every saved page is in: the rest of the registered memory is zero pages
            // the kernel maps by itself from now on.
            for mm in self.shared.mms() {
                for &(s, e) in mm.registered.iter() {
                    let _ = mm.uffd.unregister(mm.current(s), e - s);
                }
            }
        }
        if let Some(started) = self.shared.started.lock().ok().and_then(|s| *s) {
            tracing::debug!(took = ?started.elapsed(), "lazy pages: every page in");
        }
        self.shared.finished.store(true, Ordering::Release);
        self.shared.halt();
        let tag = if failed.is_none() {
            sys::lazy_watch::DONE
        } else {
            sys::lazy_watch::KILL
        };
        let _ = self.shared.tell(tag, &[]);
        join_all(&self.faults);
        join_all(&self.shared.new_faults);
        if let Some((pid, _channel)) = self.watchdog.take() {
            let _ = sys::wait_child(pid);
        }
        failed.map_or(Ok(()), Err)
    }
}

impl Drop for LazyServer {
    /// Unless every page is in: the restore failed or the caller gave up, and the
    /// watchdog kills the tree (a tree being killed by the restore's guard anyway).
    fn drop(&mut self) {
        if self.shared.finished.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut f) = self.shared.failed.lock() {
            f.get_or_insert_with(|| "the restore failed".into());
        }
        self.shared.halt();
        for mm in self.shared.mms() {
            mm.gone.store(true, Ordering::Relaxed);
        }
        let _ = self.finish();
    }
}

/// Joins the threads in `threads` (taken out of it).
fn join_all(threads: &Mutex<Vec<std::thread::JoinHandle<()>>>) {
    let taken = threads
        .lock()
        .map(|mut t| std::mem::take(&mut *t))
        .unwrap_or_default();
    for t in taken {
        let _ = t.join();
    }
}

impl Shared {
    /// The address spaces served so far (a forked child's joins them).
    fn mms(&self) -> Vec<Arc<LazyMm>> {
        self.mms.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn unpin(&self) {
        if let Some(cpus) = &self.cpus {
            let _ = sys::set_affinity(Pid(0), cpus);
        }
    }

    /// Lowers the calling worker's priority, unless the caller waits already.
    fn lower_until_waited(&self) {
        let Ok(mut lowered) = self.lowered.lock() else {
            return;
        };
        if lowered.raised {
            return;
        }
        let me = sys::current_tid();
        let Ok(before) = sys::sched_get(me) else {
            return;
        };
        let low = sys::Sched {
            policy: libc::SCHED_OTHER,
            priority: 0,
            nice: WORKER_NICE.max(before.nice),
        };
        if sys::sched_set(me, low).is_ok() {
            lowered.tids.push((me, before));
        }
    }

    /// A worker ends: its thread id must not be raised once it may be another's.
    fn forget_lowered(&self) {
        let me = sys::current_tid();
        if let Ok(mut lowered) = self.lowered.lock() {
            lowered.tids.retain(|&(tid, _)| tid != me);
        }
    }

    /// The caller waits for the workers: they get their normal priority back.
    fn raise_workers(&self) {
        let Ok(mut lowered) = self.lowered.lock() else {
            return;
        };
        lowered.raised = true;
        for (tid, before) in lowered.tids.drain(..) {
            // Workers that ended took themselves off the list.
            let _ = sys::sched_set(tid, before);
        }
    }

    /// Stops every thread of the server.
    fn halt(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = std::io::Write::write_all(&mut &self.stop_fd, &1u64.to_ne_bytes());
    }

    fn tell(&self, tag: u8, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        let channel = self
            .channel
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        let channel = channel
            .as_ref()
            .ok_or_else(|| std::io::Error::other("closed"))?;
        sys::send_with_fds(channel.as_fd(), &[tag], fds, 0, None).map(drop)
    }

    /// Copies blocks of every address space until none is left.
    fn fill_all(&self) {
        loop {
            let mms = self.mms();
            let mut worked = false;
            for mm in &mms {
                while !mm.gone.load(Ordering::Relaxed) && !self.stop.load(Ordering::Relaxed) {
                    let step = mm.next_step.fetch_add(1, Ordering::Relaxed);
                    let Some(&(first, last)) = mm.steps.get(step) else {
                        break;
                    };
                    worked = true;
                    if let Err(e) = mm.fill(first, last, true) {
                        self.fail(format!("copying pages: {e}"));
                        return;
                    }
                }
            }
            if !worked || self.stop.load(Ordering::Relaxed) {
                return;
            }
        }
    }

    /// Serving failed: the tree must not run on without its pages.
    fn fail(&self, why: String) {
        tracing::error!("lazy pages: {why}; the tree is killed");
        if let Ok(mut f) = self.failed.lock() {
            f.get_or_insert(why);
        }
        let _ = self.tell(sys::lazy_watch::KILL, &[]);
        self.halt();
    }
}

/// The steps of the background copy of `runs`: each run cut where the address crosses
/// a `WORKER_SPAN` boundary, as ranges of page indices.
fn worker_steps(runs: &[Run]) -> Vec<(usize, usize)> {
    let mut steps = Vec::new();
    for r in runs {
        let end = r.addr + r.pages as u64 * PAGE;
        let mut at = r.addr;
        while at < end {
            let next = ((at / WORKER_SPAN + 1) * WORKER_SPAN).min(end);
            let first = r.first + ((at - r.addr) / PAGE) as usize;
            steps.push((first, first + ((next - at) / PAGE) as usize));
            at = next;
        }
    }
    steps
}

/// Starts the thread that reads `mm`'s events and answers its faults.
fn serve_faults(
    shared: &Arc<Shared>,
    mm: Arc<LazyMm>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    if let Ok(mut mms) = shared.mms.lock() {
        mms.push(mm.clone());
    }
    let shared = shared.clone();
    std::thread::Builder::new()
        .name("lazy-faults".into())
        .spawn(move || {
            shared.unpin();
            // Faults to answer again once the event holding them up is read.
            let mut retry: Vec<(u64, i32)> = Vec::new();
            while !shared.stop.load(Ordering::Acquire) && !mm.gone.load(Ordering::Relaxed) {
                let timeout = if retry.is_empty() { 20 } else { 1 };
                let events = match mm.uffd.read_events(timeout, shared.stop_fd.as_fd()) {
                    Ok(e) => e,
                    Err(e) => return shared.fail(format!("reading faults: {e}")),
                };
                // Events that change the layout first, so the faults read with them are
                // answered where the pages now are.
                let mut faults = std::mem::take(&mut retry);
                for event in events {
                    match event {
                        sys::UffdEvent::PageFault { addr, tid } => faults.push((addr, tid)),
                        sys::UffdEvent::Remap { from, to, len } => mm.remap(from, to, len),
                        sys::UffdEvent::Remove { start, end, .. } => mm.removed(start, end),
                        sys::UffdEvent::Fork(fd) => {
                            if let Err(e) = forked(&shared, &mm, fd) {
                                return shared.fail(format!("serving a forked child: {e}"));
                            }
                        }
                        sys::UffdEvent::Other(_) => {}
                    }
                }
                for (addr, tid) in faults {
                    learn_pid(&shared, &mm, tid);
                    match mm.fault(addr) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            retry.push((addr, tid))
                        }
                        Err(e) => {
                            return shared.fail(format!("answering a fault at {addr:#x}: {e}"))
                        }
                    }
                }
            }
        })
}

/// A child forked with memory still missing: served like its parent, from the
/// parent's saved pages, with the parent's state at the fork.
fn forked(shared: &Arc<Shared>, parent: &LazyMm, fd: OwnedFd) -> std::io::Result<()> {
    let uffd = sys::Uffd::from_event(fd);
    shared.tell(sys::lazy_watch::UFFD, &[uffd.as_fd()])?;
    let child = Arc::new(LazyMm {
        pid: Mutex::new(Pid(0)),
        uffd,
        source: parent.source.clone(),
        runs: parent.runs.clone(),
        steps: parent.steps.clone(),
        states: parent
            .states
            .iter()
            .map(|s| AtomicU8::new(s.load(Ordering::Acquire)))
            .collect(),
        remaps: Mutex::new(parent.remaps.lock().map(|r| r.clone()).unwrap_or_default()),
        remapped: AtomicBool::new(parent.remapped.load(Ordering::Acquire)),
        registered: parent.registered.clone(),
        next_step: AtomicUsize::new(0),
        gone: AtomicBool::new(false),
    });
    let handle = serve_faults(shared, child)?;
    if let Ok(mut f) = shared.new_faults.lock() {
        f.push(handle);
    }
    Ok(())
}

/// A forked child's first fault names it: the watchdog gets a pidfd to kill it with.
fn learn_pid(shared: &Shared, mm: &LazyMm, tid: i32) {
    let Ok(mut pid) = mm.pid.lock() else {
        return;
    };
    if pid.0 != 0 || tid <= 0 {
        return;
    }
    *pid = Pid(tid);
    if let Ok(pidfd) = sys::pidfd_open_thread(Pid(tid)) {
        let _ = shared.tell(sys::lazy_watch::PIDFD, &[pidfd.as_fd()]);
    }
}

/// What a lazy restore hands its caller: the server, still copying pages into the
/// running tree. Dropping it waits until every page is in.
pub struct LazyPages {
    server: Option<LazyServer>,
}

impl LazyPages {
    pub(super) fn new(server: LazyServer) -> LazyPages {
        LazyPages {
            server: Some(server),
        }
    }

    /// Waits until every saved page is in the tree (or its processes are gone). An
    /// error says why serving failed; the tree was then killed.
    pub fn wait(mut self) -> Result<(), String> {
        self.server.take().map_or(Ok(()), |mut s| s.finish())
    }
}

impl Drop for LazyPages {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.finish();
        }
    }
}

impl std::fmt::Debug for LazyPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LazyPages")
    }
}
