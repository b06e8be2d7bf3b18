//! Incremental dumps without soft-dirty bits (this kernel has none): which pages were
//! written since the last pre-dump, told by an asynchronous write-protecting
//! userfaultfd (`UFFD_FEATURE_WP_ASYNC`) and PAGEMAP_SCAN's written bit.
//!
//! A pre-dump creates a userfaultfd inside each process (an injected `userfaultfd(2)`,
//! taken out with pidfd_getfd and closed in the task again), registers the private
//! anonymous VMAs with it in write-protect mode and write-protects every page
//! (PAGEMAP_SCAN with `PM_SCAN_WP_MATCHING`), all while the tree is frozen. A write
//! afterwards is let through by the kernel, which clears that page's protection: the
//! written bit. The protection lasts only as long as the userfaultfd is open, so a small
//! process forked for the purpose (`sys::fork_write_tracker`) holds the fds until the
//! next dump takes them over (it is found through the record [`RECORD`] in the pre-dump's
//! images dir, by pid and start time).
//!
//! The next dump (a pre-dump again, or `dump --track-mem`) scans the written bits (and
//! a pre-dump write-protects again in the same call): a page of a tracked VMA that was
//! not written, and that the parent images hold, is saved as `PE_PARENT` (CRIU's
//! reference to the parent images); everything else is saved in full. A VMA is tracked
//! only when the kernel confirms it is registered with an asynchronous write-protecting
//! userfaultfd (`PM_SCAN_CHECK_WPASYNC`): one mapped since, moved, or in a process that
//! exec'ed is not, and is saved in full, as is every page of a process whose fd was not
//! taken over (tracker gone, a process new to the tree). Falling back to a full dump is
//! always correct; the log says why it happened.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use criu_images::flags::page::PE_PARENT;
use criu_images::{pb, ImageReader};

use super::mm::{Backing, PageRun, Vma};
use crate::sys::{self, page_is, Pid, Uffd};

/// The record of a pre-dump's tracker, in its images dir (criu-rs's own; CRIU and crit
/// ignore it). Lines: `tracker PID STARTTIME`, then `task PID STARTTIME FD RANGES` per
/// process, RANGES the VMAs it tracks (`START-END,...` in hex): only those are trusted
/// later, not another VMA the task may have registered with a userfaultfd of its own.
pub const RECORD: &str = "criu-rs-memtrack";

/// How long a tracker waits for the next dump before it lets the protection go.
pub const TRACKER_TIMEOUT_SECS: u64 = 3600;

/// The start time of `pid` (field 22 of /proc/PID/stat, in clock ticks since boot):
/// with the pid, it names one process, never a later one that got the same pid.
pub fn start_time(pid: Pid) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{}/stat", pid.0))?;
    let after = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| io::Error::other("garbled stat"))?;
    after
        .split_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other("garbled stat"))
}

/// A process whose memory is tracked: its userfaultfd, held by us now.
pub struct Tracked {
    pub pid: Pid,
    pub start_time: u64,
    pub uffd: Uffd,
    /// The VMAs registered with `uffd` and write-protected by us.
    pub ranges: Vec<(u64, u64)>,
}

/// The write-tracking userfaultfds of a tree, taken over from the parent's tracker or
/// made by this pre-dump. Dropping them ends the tracking (the kernel unregisters).
#[derive(Default)]
pub struct Tracking {
    pub processes: Vec<Tracked>,
}

impl Tracking {
    /// The tracking of `pid`, when it is the process the fd was made for.
    pub fn of(&self, pid: Pid) -> Option<&Tracked> {
        let now = start_time(pid).ok()?;
        self.processes
            .iter()
            .find(|t| t.pid == pid && t.start_time == now)
    }

    /// Takes over the userfaultfds held by the tracker recorded in `parent_dir`, and
    /// ends that tracker: from now on only this dump may reset the written bits. Any
    /// failure means no tracking (the dump is then full), and is logged.
    pub fn take_over(parent_dir: &Path) -> Tracking {
        match take_over(parent_dir) {
            Ok(t) => {
                tracing::info!(
                    processes = t.processes.len(),
                    "memory tracking taken over from the parent's tracker"
                );
                t
            }
            Err(why) => {
                tracing::info!(
                    parent = %parent_dir.display(),
                    "no memory tracking from the parent ({why}): memory is dumped in full"
                );
                Tracking::default()
            }
        }
    }

    /// Hands the userfaultfds to a new tracker process and records it in `dir`, for the
    /// next dump. The tracker ends when the tracked processes are all gone.
    pub fn hand_over(&self, dir: &Path) -> io::Result<Pid> {
        let pidfds: Vec<OwnedFd> = self
            .processes
            .iter()
            .filter_map(|t| sys::pidfd_open(t.pid).ok())
            .collect();
        let keep: Vec<i32> = self
            .processes
            .iter()
            .map(|t| t.uffd.as_fd().as_raw_fd())
            .collect();
        let raw_pidfds: Vec<i32> = pidfds.iter().map(|p| p.as_raw_fd()).collect();
        let tracker = sys::fork_write_tracker(&keep, &raw_pidfds, TRACKER_TIMEOUT_SECS)?;
        // Its pidfd first: a tracker nobody can find must not hold the tracking on.
        let tracker_fd = sys::pidfd_open(tracker)?;
        let recorded = self.record(dir, tracker);
        if recorded.is_err() {
            let _ = sys::pidfd_send_signal(tracker_fd.as_fd(), libc::SIGKILL);
        }
        recorded.map(|()| tracker)
    }

    /// Writes the record of `tracker` into `dir`.
    fn record(&self, dir: &Path, tracker: Pid) -> io::Result<()> {
        let mut text = format!("tracker {} {}\n", tracker.0, start_time(tracker)?);
        for t in &self.processes {
            let ranges: Vec<String> = t
                .ranges
                .iter()
                .map(|(s, e)| format!("{s:x}-{e:x}"))
                .collect();
            text.push_str(&format!(
                "task {} {} {} {}\n",
                t.pid.0,
                t.start_time,
                t.uffd.as_fd().as_raw_fd(),
                ranges.join(",")
            ));
        }
        let tmp = dir.join(format!(".{RECORD}.tmp"));
        std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, dir.join(RECORD)))
    }
}

fn take_over(parent_dir: &Path) -> Result<Tracking, String> {
    let record = parent_dir.join(RECORD);
    let text = std::fs::read_to_string(&record)
        .map_err(|e| format!("no tracker record {}: {e}", record.display()))?;
    let mut lines = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    let num = |s: Option<&&str>| s.and_then(|s| s.parse::<i64>().ok());
    let head = lines.next().unwrap_or_default();
    let (Some(&"tracker"), Some(pid), Some(started)) =
        (head.first(), num(head.get(1)), num(head.get(2)))
    else {
        return Err("a garbled tracker record".into());
    };
    let tracker = Pid(pid as i32);
    // The pidfd first: once it is open, a start time that matches is that process's.
    let pidfd = sys::pidfd_open(tracker).map_err(|e| format!("its tracker {tracker}: {e}"))?;
    if start_time(tracker).ok() != Some(started as u64) {
        return Err(format!("its tracker {tracker} is gone"));
    }
    let mut out = Tracking::default();
    for l in lines {
        let (Some(&"task"), Some(pid), Some(started), Some(fd)) =
            (l.first(), num(l.get(1)), num(l.get(2)), num(l.get(3)))
        else {
            continue;
        };
        let fd = sys::pidfd_getfd(pidfd.as_fd(), fd as i32)
            .map_err(|e| format!("taking fd {fd} of tracker {tracker}: {e}"))?;
        let kind = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        if !kind.is_ok_and(|k| k.as_os_str() == "anon_inode:[userfaultfd]") {
            return Err(format!(
                "fd {} of tracker {tracker} is no userfaultfd",
                l[3]
            ));
        }
        let ranges = l.get(4).map_or_else(Vec::new, |r| parse_ranges(r));
        out.processes.push(Tracked {
            pid: Pid(pid as i32),
            start_time: started as u64,
            // The handshake was done when it was made: the fd is one already.
            uffd: Uffd::from_handshaken(fd),
            ranges,
        });
    }
    // The fds are ours now; a tracker left running could outlive a later reset and
    // hand a stale state to a dump that names the old images as parent.
    let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
    Ok(out)
}

impl super::TreeDump<'_> {
    /// In an incremental dump with tracking, `runs` of `pid` with the pages not written
    /// since the parent pre-dump referred to the parent; otherwise `runs` as they are.
    pub(super) fn refer_to_parent(
        &mut self,
        pid: Pid,
        vmas: &[Vma],
        runs: Vec<PageRun>,
    ) -> Result<Vec<PageRun>, super::DumpError> {
        let Some((parent_dir, tracking)) = &self.incremental else {
            return Ok(runs);
        };
        if tracking.processes.is_empty() {
            return Ok(runs);
        }
        let Some(tracked) = tracking.of(pid) else {
            tracing::info!(%pid, "not tracked by the parent pre-dump: dumped in full");
            return Ok(runs);
        };
        let vpid = virtual_pid(pid);
        let Some(parent) = parent_coverage(parent_dir, vpid) else {
            tracing::info!(%pid, "no pagemap-{vpid}.img in the parent images: dumped in full");
            return Ok(runs);
        };
        let (runs, stats) = split_unchanged(pid, vmas, runs, &parent, &tracked.ranges, false)
            .map_err(super::task_err(pid, "scanning written pages"))?;
        tracing::info!(%pid, in_parent = stats.in_parent, untracked_vmas = stats.untracked_vmas, "pages not written since the pre-dump refer to the parent");
        self.stats.pages_skipped_parent += stats.in_parent;
        Ok(runs)
    }
}

/// The pid `pid` has in its own pid namespace (the last of NSpid), which names its
/// images.
pub fn virtual_pid(pid: Pid) -> u32 {
    crate::proc::ProcDir::open(pid)
        .and_then(|d| d.status())
        .ok()
        .and_then(|s| s.ns_pid.last().copied())
        .unwrap_or(pid.0) as u32
}

/// `START-END,...` (hex) of a tracker record; a garbled range is left out.
fn parse_ranges(text: &str) -> Vec<(u64, u64)> {
    text.split(',')
        .filter_map(|r| {
            let (s, e) = r.split_once('-')?;
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            ))
        })
        .collect()
}

/// Whether `[start, end)` lies inside `ranges`, which may be adjacent pieces of it (a
/// VMA registered whole, split since by mprotect, or merged from registered ones).
fn inside(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    inside_sorted(&sorted, start, end)
}

/// [`inside`] for `ranges` already in address order.
pub(super) fn inside_sorted(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    let mut at = start;
    for &(s, e) in ranges {
        if s <= at && at < e {
            at = e;
        }
        if at >= end {
            return true;
        }
    }
    false
}

/// Makes a write-tracking userfaultfd inside the stopped process `pid` (through
/// `inj`), takes it over and closes it in the task.
pub fn new_userfaultfd(inj: &mut crate::inject::Injector, pid: Pid) -> io::Result<Uffd> {
    let fd = inj.syscall_ok(
        "userfaultfd",
        libc::SYS_userfaultfd,
        [libc::O_CLOEXEC as u64, 0, 0, 0, 0, 0],
    )?;
    let ours = sys::pidfd_open(pid).and_then(|p| sys::pidfd_getfd(p.as_fd(), fd as i32));
    let closed = inj.syscall_ok("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
    let uffd = Uffd::new_write_tracking(ours?)?;
    closed?;
    Ok(uffd)
}

/// Whether the pages of a VMA can be tracked: private anonymous memory (not hugetlb,
/// which the tracking does not cover here).
fn trackable(vma: &Vma) -> bool {
    vma.backing == Backing::AnonPrivate && !vma.map.has_flag("ht")
}

/// The address ranges a process's parent images hold pages for (`pagemap-VPID.img`).
pub fn parent_coverage(parent_dir: &Path, vpid: u32) -> Option<Vec<(u64, u64)>> {
    let path = parent_dir.join(format!("pagemap-{vpid}.img"));
    let mut r = ImageReader::open(&path).ok()?;
    r.next_entry::<pb::PagemapHead>().ok()??;
    let page = sys::page_size();
    let mut out = Vec::new();
    while let Ok(Some(e)) = r.next_entry::<pb::PagemapEntry>() {
        let n = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages));
        out.push((e.vaddr, e.vaddr + n * page));
    }
    out.sort_unstable();
    Some(out)
}

/// What the scan of one process's written bits found.
#[derive(Debug, Default, Clone, Copy)]
pub struct SplitStats {
    /// Pages saved as references to the parent images.
    pub in_parent: u64,
    /// VMAs saved in full because they were not tracked.
    pub untracked_vmas: usize,
}

/// Splits `runs` (what a full dump of `pid` saves) into pages written since the last
/// pre-dump, saved, and the rest, referred to the parent (`PE_PARENT`), for the VMAs the
/// kernel says are tracked among `tracked` (what we registered); `reprotect`
/// write-protects the written pages again (a pre-dump: the next dump counts from now).
/// `parent` is what the parent images hold.
pub fn split_unchanged(
    pid: Pid,
    vmas: &[Vma],
    runs: Vec<PageRun>,
    parent: &[(u64, u64)],
    tracked: &[(u64, u64)],
    reprotect: bool,
) -> io::Result<(Vec<PageRun>, SplitStats)> {
    let pagemap = std::fs::File::open(format!("/proc/{}/pagemap", pid.0))?;
    let page = sys::page_size();
    let mut stats = SplitStats::default();
    // Ranges whose pages were not written since the last reset.
    let mut unchanged: Vec<(u64, u64)> = Vec::new();
    let flags = sys::PM_SCAN_CHECK_WPASYNC
        | if reprotect {
            sys::PM_SCAN_WP_MATCHING
        } else {
            0
        };
    for vma in vmas.iter().filter(|v| trackable(v)) {
        let (start, end) = (vma.map.start, vma.map.end);
        if !inside(tracked, start, end) {
            stats.untracked_vmas += 1;
            tracing::info!(%pid, "VMA {start:#x}-{end:#x} was not tracked by the pre-dump: dumped in full");
            continue;
        }
        match sys::pagemap_scan_with(
            pagemap.as_fd(),
            start,
            end,
            flags,
            page_is::WRITTEN,
            page_is::WRITTEN,
        ) {
            Ok(written) => {
                let mut at = start;
                for w in written {
                    if w.start > at {
                        unchanged.push((at, w.start));
                    }
                    at = at.max(w.end);
                }
                if at < end {
                    unchanged.push((at, end));
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                stats.untracked_vmas += 1;
                tracing::info!(%pid, "VMA {start:#x}-{end:#x} is not tracked (mapped, moved or exec'ed since the pre-dump): dumped in full");
            }
            Err(e) => return Err(e),
        }
    }
    // Unchanged pages the parent holds: PE_PARENT.
    let parent_refs = intersect(&unchanged, parent);
    let mut out = Vec::with_capacity(runs.len());
    for r in runs {
        // The pages written in a tracked VMA lie scattered between pages in the parent:
        // too many small pieces to give back one by one (`release.rs`), and few bytes.
        let split = parent_refs.iter().any(|&(s, e)| s < r.end && e > r.start);
        let r = PageRun {
            releasable: r.releasable && !split,
            ..r
        };
        let mut at = r.start;
        for &(s, e) in parent_refs
            .iter()
            .filter(|&&(s, e)| s < r.end && e > r.start)
        {
            let (s, e) = (s.max(r.start), e.min(r.end));
            if s > at {
                out.push(PageRun {
                    end: s,
                    start: at,
                    ..r
                });
            }
            out.push(PageRun {
                start: s,
                end: e,
                flags: PE_PARENT,
                releasable: false,
            });
            stats.in_parent += (e - s) / page;
            at = e;
        }
        if at < r.end {
            out.push(PageRun { start: at, ..r });
        }
    }
    Ok((out, stats))
}

/// The intersection of two sorted lists of disjoint ranges.
fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let (s, e) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if s < e {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Tracks the trackable VMAs of `pid` with `uffd` from now on: those it tracked
/// already (inside `known`, and registered still) have their written bits reset, the
/// others are registered and write-protected. A VMA the kernel refuses (registered by
/// the task's own userfaultfd, or of a kind it cannot protect) stays untracked.
/// Returns the VMAs now tracked.
pub fn start_tracking(
    pid: Pid,
    vmas: &[Vma],
    uffd: &Uffd,
    known: &[(u64, u64)],
) -> io::Result<Vec<(u64, u64)>> {
    let pagemap = std::fs::File::open(format!("/proc/{}/pagemap", pid.0))?;
    let mut tracked = Vec::new();
    // Write-protects every page of the range (a freshly registered one reads as all
    // written), failing unless it is registered for asynchronous write protection.
    let reset = |start: u64, end: u64| {
        sys::pagemap_scan_with(
            pagemap.as_fd(),
            start,
            end,
            sys::PM_SCAN_WP_MATCHING | sys::PM_SCAN_CHECK_WPASYNC,
            page_is::WRITTEN,
            0,
        )
    };
    for vma in vmas.iter().filter(|v| trackable(v)) {
        let (start, end) = (vma.map.start, vma.map.end);
        if inside(known, start, end) && reset(start, end).is_ok() {
            tracked.push((start, end));
            continue;
        }
        match uffd.register_wp(start, end - start) {
            Ok(()) => {}
            // The memory the userfaultfd was made for is gone (an exec): none of the
            // process's VMAs can be registered with it. The kernel says ENOMEM then (it
            // cannot take a reference on that memory; seen here on Linux 6.18), EINVAL
            // for an address not mapped in memory that is still there.
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => return Err(e),
            Err(e) => {
                tracing::info!(%pid, "VMA {start:#x}-{end:#x} cannot be tracked: {e}");
                continue;
            }
        }
        reset(start, end)?;
        tracked.push((start, end));
    }
    Ok(tracked)
}

/// Makes the `parent` symlink of `images_dir` to `prev` (as given: CRIU takes a relative
/// one as relative to the images dir), replacing an old one, and returns the parent's
/// directory.
pub fn link_parent(images_dir: &Path, prev: &Path) -> io::Result<PathBuf> {
    let link = images_dir.join("parent");
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(&link)?,
        _ => {}
    }
    std::os::unix::fs::symlink(prev, &link)?;
    Ok(images_dir.join(prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersects_sorted_ranges() {
        let a = [(0, 10), (20, 30), (40, 50)];
        let b = [(5, 25), (45, 100)];
        assert_eq!(intersect(&a, &b), vec![(5, 10), (20, 25), (45, 50)]);
        assert!(intersect(&a, &[]).is_empty());
    }

    /// Our own memory, tracked as a pre-dump tracks a task's: the pages written since
    /// are saved, the others refer to the parent where it holds them.
    #[test]
    fn unwritten_pages_of_a_tracked_vma_refer_to_the_parent() {
        use criu_images::flags::page::PE_PRESENT;
        const PAGE: u64 = 4096;
        let mut mem = memmap2::MmapMut::map_anon(16 * PAGE as usize).unwrap();
        mem.fill(1);
        let start = mem.as_ptr() as u64;
        let end = start + 16 * PAGE;
        let line = format!("{start:x}-{end:x} rw-p 00000000 00:00 0\n");
        let vmas = super::super::mm::vmas(crate::proc::parse_smaps(&line).unwrap());
        let me = Pid(std::process::id() as i32);
        let uffd = Uffd::new_write_tracking(sys::userfaultfd(0).unwrap()).unwrap();
        let tracked = start_tracking(me, &vmas, &uffd, &[]).unwrap();
        assert_eq!(tracked, vec![(start, end)]);
        mem[3 * PAGE as usize] = 2;
        mem[9 * PAGE as usize] = 2;
        let runs = vec![PageRun {
            start,
            end,
            flags: PE_PRESENT,
            releasable: true,
        }];
        // The parent holds pages 0-11.
        let parent = [(start, start + 12 * PAGE)];
        let (out, stats) = split_unchanged(me, &vmas, runs, &parent, &tracked, false).unwrap();
        let pages = |r: &PageRun| ((r.start - start) / PAGE, (r.end - start) / PAGE, r.flags);
        assert_eq!(
            out.iter().map(pages).collect::<Vec<_>>(),
            vec![
                (0, 3, PE_PARENT),
                (3, 4, PE_PRESENT),
                (4, 9, PE_PARENT),
                (9, 10, PE_PRESENT),
                (10, 12, PE_PARENT),
                (12, 16, PE_PRESENT),
            ]
        );
        assert_eq!((stats.in_parent, stats.untracked_vmas), (10, 0));
        assert!(out.iter().all(|r| !r.releasable));
        // Not among the VMAs recorded as ours: saved in full.
        let runs = vec![PageRun {
            start,
            end,
            flags: PE_PRESENT,
            releasable: true,
        }];
        let (out, stats) = split_unchanged(me, &vmas, runs, &parent, &[], false).unwrap();
        assert_eq!((out.len(), stats.untracked_vmas), (1, 1));
    }

    #[test]
    fn a_vma_is_trusted_inside_the_recorded_ranges_only() {
        let recorded = parse_ranges("3000-5000,1000-3000,9000-a000");
        assert_eq!(
            recorded,
            vec![(0x3000, 0x5000), (0x1000, 0x3000), (0x9000, 0xa000)]
        );
        assert!(inside(&recorded, 0x1000, 0x5000));
        assert!(inside(&recorded, 0x2000, 0x4000));
        assert!(!inside(&recorded, 0x4000, 0x6000));
        assert!(!inside(&recorded, 0x8000, 0x9800));
        assert!(parse_ranges("").is_empty());
    }
}
