//! Guard regions (madvise MADV_GUARD_INSTALL, Linux 6.13): page table markers inside a
//! mapping that fault on any access. They are no VMA of their own and have no pages, so
//! smaps does not show them; PAGEMAP_SCAN reports them (PAGE_IS_GUARD, Linux 6.14).
//!
//! CRIU records each guard region as an extra VMA entry after the real ones, whose
//! status is VMA_AREA_GUARD alone, and installs it again once the memory is restored.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use criu_images::flags::vma::VMA_AREA_GUARD;
use criu_images::pb;

use super::mm::{Backing, Vma};
use crate::sys::{self, page_is, Pid};

/// The guard regions of `pid` inside `vmas`, merged where they touch.
pub fn guard_regions(pid: Pid, vmas: &[Vma]) -> io::Result<Vec<(u64, u64)>> {
    let pagemap = File::open(format!("/proc/{}/pagemap", pid.0))?;
    let mut out: Vec<(u64, u64)> = Vec::new();
    for vma in vmas.iter().filter(|v| may_hold_guards(&v.backing)) {
        let regions = sys::pagemap_scan(
            pagemap.as_fd(),
            vma.map.start,
            vma.map.end,
            page_is::GUARD,
            page_is::GUARD,
        )?;
        for r in regions
            .iter()
            .filter(|r| r.categories & page_is::GUARD != 0)
        {
            match out.last_mut() {
                Some(last) if last.1 == r.start => last.1 = r.end,
                _ => out.push((r.start, r.end)),
            }
        }
    }
    Ok(out)
}

/// The kernel refuses guards in special mappings (VM_PFNMAP, VM_IO, hugetlb...).
fn may_hold_guards(backing: &Backing) -> bool {
    !matches!(
        backing,
        Backing::Vdso
            | Backing::Vvar
            | Backing::Vsyscall
            | Backing::HugetlbPrivate
            | Backing::HugetlbShared { .. }
            | Backing::Socket { .. }
            | Backing::IoUring { .. }
            | Backing::Unsupported(_)
    )
}

/// The image's entry for one guard region, as CRIU writes it.
pub fn guard_entry(&(start, end): &(u64, u64)) -> pb::VmaEntry {
    pb::VmaEntry {
        start,
        end,
        status: VMA_AREA_GUARD,
        fd: -1,
        ..Default::default()
    }
}
