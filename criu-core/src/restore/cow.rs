//! Pages shared copy-on-write between a parent and its children.
//!
//! After fork(2) a parent and a child share every private page neither has written
//! since; a restore that fills each process on its own gives each a copy, so a tree of
//! pre-forked workers needs many times its memory after a restore. The kernel shares
//! anonymous pages between two processes only through fork, so the sharing is rebuilt
//! the way it came about (as CRIU does):
//!
//! 1. Before a process clones its children (the fork stage), the private mappings it has
//!    exactly like one of its children (same bounds, flags and file) are mapped in it
//!    at their place and filled with its own saved pages (`prefill`).
//! 2. The children inherit them with the clone. When a process is rebuilt, such an
//!    inherited (or prefilled) mapping is kept instead of being unmapped (`kept`); only
//!    its pages that differ from the saved ones are written (`fill_differing`, which
//!    breaks the sharing of exactly those), and its pages that were not saved (never
//!    touched, or still the file's) are dropped (`drop_unsaved`).
//!
//! Pages equal in parent and child are then one page again, whatever the original
//! sharing was: the contents are the same, which is all a program can see besides
//! `/proc/PID/pagemap`. A mapping that collides with the restorer's own in the parent at
//! the fork stage is simply not prefilled: then it is copied, as before.

use std::fs::File;
use std::os::unix::fs::FileExt;

use criu_images::pb;

use super::{fill_pages, open_in_task, FillError, Images, PAGE};
use crate::affinity::Affinity;
use crate::dump::mm::MAP_DROPPABLE;
use crate::inject::Injector;
use crate::proc::MapEntry;
use crate::sys::Pid;
use criu_images::flags::vma::{
    VMA_ANON_PRIVATE, VMA_AREA_MEMFD, VMA_AREA_VDSO, VMA_AREA_VSYSCALL, VMA_AREA_VVAR,
    VMA_FILE_PRIVATE,
};

/// A private mapping as far as sharing its pages goes: where, how mapped, of what file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CowVma {
    pub start: u64,
    pub end: u64,
    flags: u32,
    /// The mapped file and offset (file-backed private mappings).
    file: Option<(std::path::PathBuf, u64)>,
}

/// What a process holds with tree memory before it is rebuilt.
#[derive(Debug, Clone, Default)]
pub(super) struct Held {
    /// Mappings holding tree memory (its own or, inherited, its parent's).
    pub vmas: Vec<CowVma>,
    /// The ranges of `vmas` that hold exactly its own saved memory already (it filled
    /// them itself before cloning its children): nothing to write there.
    pub own: Vec<(u64, u64)>,
}

impl Held {
    /// What a child holds right after being cloned from a process holding `self`.
    pub fn inherited(&self) -> Held {
        Held {
            vmas: self.vmas.clone(),
            own: Vec::new(),
        }
    }
}

/// The `CowVma` of `v` when its pages may be shared copy-on-write (private anonymous
/// memory or a private file mapping), else None.
pub(super) fn cow_vma(img: &Images, v: &pb::VmaEntry) -> Option<CowVma> {
    if v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL | VMA_AREA_MEMFD) != 0 {
        return None;
    }
    // Droppable memory is restored empty (see stage 5 of `rebuild`): nothing to share.
    // Private hugetlb memory is not shared either (as in CRIU): a child's write to an
    // inherited huge page needs a whole free huge page, which the original may not have
    // needed.
    if v.flags & super::MAP_TYPE == MAP_DROPPABLE as u32 || v.flags & libc::MAP_HUGETLB as u32 != 0
    {
        return None;
    }
    let file = if v.status & VMA_ANON_PRIVATE != 0 {
        None
    } else if v.status & VMA_FILE_PRIVATE != 0 {
        let reg = img.files.get(&(v.shmid as u32))?.reg.as_ref()?;
        Some((reg.path().to_path_buf(), v.pgoff))
    } else {
        return None;
    };
    Some(CowVma {
        start: v.start,
        end: v.end,
        flags: v.flags & !(libc::MAP_LOCKED as u32),
        file,
    })
}

/// The mappings of `parent` that one of its live children has exactly alike. Mappings of
/// files `ghost` says are recreated from a ghost image are left out: they have no path
/// to open before the opener recreates them, and are mapped from that file afterwards.
pub(super) fn candidates(
    parent: &Images,
    procs: &[Images],
    ghost: &dyn Fn(&pb::VmaEntry) -> bool,
) -> Vec<CowVma> {
    let children: Vec<Vec<CowVma>> = procs
        .iter()
        .filter(|c| c.entry.ppid == parent.entry.pid && c.pid != parent.pid)
        .map(|c| c.mm.vmas.iter().filter_map(|v| cow_vma(c, v)).collect())
        .collect();
    parent
        .mm
        .vmas
        .iter()
        .filter(|v| !ghost(v))
        .filter_map(|v| cow_vma(parent, v))
        .filter(|m| children.iter().any(|c| c.contains(m)))
        .collect()
}

/// Maps the `candidates` in the task `host` (still a copy of the restorer, about to clone
/// its children) and fills them with its saved pages: the ones it `inherited` already
/// there (a grandparent's), the others where nothing of the restorer is. Returns what it
/// holds now.
pub(super) fn prefill(
    inj: &mut Injector,
    host: Pid,
    img: &Images,
    candidates: &[CowVma],
    inherited: &Held,
    affinity: &Affinity,
) -> std::io::Result<Held> {
    let inherited = &inherited.vmas;
    // The scratch area first: it lands where the kernel likes, so the maps read after
    // it show it.
    let scratch = inj.scratch(PAGE)?;
    let current = crate::proc::ProcDir::open(host)?.maps_plain()?;
    let mut held = Vec::new();
    let (mut fresh, mut reused) = (Vec::new(), Vec::new());
    let mut previous_end = 0;
    let mut alternate = false;
    for m in candidates {
        let len = m.end - m.start;
        if inherited.contains(m) && current.iter().any(|c| (c.start, c.end) == (m.start, m.end)) {
            reused.push((m.start, m.end));
            held.push(m.clone());
            continue;
        }
        if current.iter().any(|c| c.start < m.end && m.start < c.end) {
            tracing::debug!(
                pid = %host,
                start = m.start,
                end = m.end,
                "not shared with the children: the restorer has memory there"
            );
            continue;
        }
        // Neighbours differ in PROT_EXEC meanwhile, so the kernel keeps them apart (see
        // stage 5 of `rebuild`).
        alternate = m.start == previous_end && !alternate;
        previous_end = m.end;
        let prot = libc::PROT_READ | libc::PROT_WRITE | if alternate { libc::PROT_EXEC } else { 0 };
        let flags = u64::from(m.flags) | libc::MAP_FIXED_NOREPLACE as u64;
        match &m.file {
            None => {
                inj.syscall_ok(
                    "mmap (copy-on-write memory)",
                    libc::SYS_mmap,
                    [m.start, len, prot as u64, flags, u64::MAX, 0],
                )?;
            }
            Some((path, pgoff)) => {
                let fd = open_in_task(inj, scratch, path, libc::O_RDONLY)?;
                let mapped = inj.syscall_ok(
                    "mmap (copy-on-write file memory)",
                    libc::SYS_mmap,
                    [m.start, len, prot as u64, flags, fd, *pgoff],
                );
                inj.syscall_ok("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
                mapped?;
            }
        }
        fresh.push((m.start, m.end));
        held.push(m.clone());
    }
    let pages = img.pages.bytes();
    fill_differing(host, &img.pagemap, pages, &reused, true)?;
    drop_unsaved(inj, &img.pagemap, &reused)?;
    // Fresh mappings are empty and writable: filled on every CPU.
    let mem = File::options()
        .read(true)
        .write(true)
        .open(format!("/proc/{}/mem", host.0))?;
    fill_pages(
        host,
        &img.pagemap,
        pages,
        &mem,
        affinity,
        None,
        &complement(&fresh),
    )
    .map_err(|e| match e {
        FillError::Image(what) => {
            std::io::Error::other(format!("pages-{}.img {what}", img.pages_id))
        }
        FillError::Task(e) => e,
    })?;
    let mut own = fresh;
    own.extend(reused);
    Ok(Held { vmas: held, own })
}

/// The address space outside `ranges`.
fn complement(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for (a, b) in sorted {
        if a > at {
            out.push((at, a));
        }
        at = at.max(b);
    }
    if at < u64::MAX {
        out.push((at, u64::MAX));
    }
    out
}

/// The mappings of the image that the task holds already with tree memory (`held`,
/// prefilled or inherited, still at exactly their bounds in `current`): kept as they are.
pub(super) fn kept(img: &Images, held: &[CowVma], current: &[MapEntry]) -> Vec<(u64, u64)> {
    img.mm
        .vmas
        .iter()
        .filter_map(|v| cow_vma(img, v))
        .filter(|m| held.contains(m))
        .filter(|m| current.iter().any(|c| (c.start, c.end) == (m.start, m.end)))
        .map(|m| (m.start, m.end))
        .collect()
}

/// The saved runs of `pagemap` inside `ranges`: (task address, length, offset in the
/// pages file).
fn saved_runs(pagemap: &[pb::PagemapEntry], ranges: &[(u64, u64)]) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    for e in pagemap {
        let len = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages)) * PAGE;
        let (start, end) = (e.vaddr, e.vaddr + len);
        for &(a, b) in ranges {
            let (from, to) = (start.max(a), end.min(b));
            if from < to {
                out.push((from, to - from, offset + (from - start)));
            }
        }
        offset += len;
    }
    out
}

/// Writes the saved pages of `pagemap` that fall in `ranges` into task `pid`; with
/// `compare`, only those that differ from what the task has (so pages it shares with
/// its parent stay shared). Writes go through /proc/PID/mem, which reaches read-only
/// and PROT_NONE pages too and breaks the sharing of exactly the pages written.
pub(super) fn fill_differing(
    pid: Pid,
    pagemap: &[pb::PagemapEntry],
    pages: &[u8],
    ranges: &[(u64, u64)],
    compare: bool,
) -> std::io::Result<()> {
    if ranges.is_empty() {
        return Ok(());
    }
    let mem = File::options()
        .read(true)
        .write(true)
        .open(format!("/proc/{}/mem", pid.0))?;
    const STEP: u64 = 1 << 20;
    let mut theirs = vec![0u8; STEP as usize];
    for (addr, len, offset) in saved_runs(pagemap, ranges) {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(STEP) as usize;
            let at = addr + done;
            let saved = super::chain::pages_at(pages, (offset + done) as usize, n)?;
            if !compare {
                mem.write_all_at(saved, at)?;
            } else {
                mem.read_exact_at(&mut theirs[..n], at)?;
                for p in (0..n).step_by(PAGE as usize) {
                    let q = (p + PAGE as usize).min(n);
                    if saved[p..q] != theirs[p..q] {
                        mem.write_all_at(&saved[p..q], at + p as u64)?;
                    }
                }
            }
            done += n as u64;
        }
    }
    Ok(())
}

/// Drops the pages of the kept `ranges` that were not saved (MADV_DONTNEED): the
/// process never had them (anonymous memory reads zero again) or had the file's.
pub(super) fn drop_unsaved(
    inj: &mut Injector,
    pagemap: &[pb::PagemapEntry],
    ranges: &[(u64, u64)],
) -> std::io::Result<()> {
    let mut saved: Vec<(u64, u64)> = saved_runs(pagemap, ranges)
        .into_iter()
        .map(|(a, len, _)| (a, a + len))
        .collect();
    saved.sort_unstable();
    let mut calls = Vec::new();
    for &(start, end) in ranges {
        let mut at = start;
        for &(a, b) in saved.iter().filter(|&&(a, b)| a < end && start < b) {
            if a > at {
                calls.push((at, a - at));
            }
            at = at.max(b);
        }
        if at < end {
            calls.push((at, end - at));
        }
    }
    let calls: Vec<(String, i64, [u64; 6])> = calls
        .into_iter()
        .map(|(a, len)| {
            (
                format!("madvise (dropping unsaved pages at {a:#x})"),
                libc::SYS_madvise,
                [a, len, libc::MADV_DONTNEED as u64, 0, 0, 0],
            )
        })
        .collect();
    inj.syscalls_ok(&calls).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(vaddr: u64, pages: u64) -> pb::PagemapEntry {
        pb::PagemapEntry {
            vaddr,
            compat_nr_pages: 0,
            in_parent: None,
            flags: None,
            nr_pages: Some(pages),
        }
    }

    #[test]
    fn saved_runs_are_clipped_to_the_ranges_with_their_file_offsets() {
        // Two runs: 4 pages at 0x10000 (file 0..4), 2 pages at 0x20000 (file 4..6).
        let pm = [entry(0x10000, 4), entry(0x20000, 2)];
        let runs = saved_runs(&pm, &[(0x11000, 0x13000), (0x20000, 0x30000)]);
        assert_eq!(
            runs,
            vec![(0x11000, 0x2000, 0x1000), (0x20000, 0x2000, 0x4000)]
        );
        assert!(saved_runs(&pm, &[(0x30000, 0x40000)]).is_empty());
    }

    #[test]
    fn the_complement_covers_everything_else() {
        assert_eq!(
            complement(&[(0x5000, 0x6000), (0x1000, 0x2000)]),
            vec![(0, 0x1000), (0x2000, 0x5000), (0x6000, u64::MAX)]
        );
        assert_eq!(complement(&[]), vec![(0, u64::MAX)]);
    }
}
