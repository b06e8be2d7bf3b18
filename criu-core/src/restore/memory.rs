//! Stages 3 and 5: the work area and the restorer's memory gone (stage 3); every
//! mapping made again and filled with its pages (all cores), shared memory objects,
//! protections, locks and advice (stage 5).

use super::*;

/// The size of a transparent huge page on x86-64.
const HUGE_PAGE: u64 = 2 << 20;

/// Bytes of `start..end` the pagemap (in address order, as images hold it) has saved
/// pages for.
fn saved_bytes(pagemap: &[pb::PagemapEntry], start: u64, end: u64) -> u64 {
    let len = |e: &pb::PagemapEntry| super::chain::nr_pages(e) * PAGE;
    let first = pagemap.partition_point(|e| e.vaddr.saturating_add(len(e)) <= start);
    pagemap[first..]
        .iter()
        .take_while(|e| e.vaddr < end)
        .map(|e| {
            let (from, to) = (e.vaddr.max(start), e.vaddr.saturating_add(len(e)).min(end));
            to.saturating_sub(from)
        })
        .sum()
}

/// Whether this system gives transparent huge pages to all anonymous memory, not only
/// to memory that asks for them (`always` in /sys/kernel/mm/transparent_hugepage/enabled).
fn thp_for_all_memory() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| mode.contains("[always]"))
}

/// madvise(2) advice that installs guard markers (Linux 6.13).
const MADV_GUARD_INSTALL: u64 = 102;

/// The huge page size bits of mmap(2) flags (`MAP_HUGE_MASK << MAP_HUGE_SHIFT`).
const HUGE_SIZE_MASK: u32 = (libc::MAP_HUGE_MASK as u32) << libc::MAP_HUGE_SHIFT;

/// Writes `data` at `addr` in the task. Parts inside ranges registered with the
/// userfaultfd go through UFFDIO_COPY, and only through it: an ordinary write to a missing
/// page there would wait for a fault handler that nobody runs. Everything else goes
/// through process_vm_writev, or /proc/PID/mem where that cannot write.
pub(super) fn write_chunk(
    pid: Pid,
    mem: &File,
    uffd: Option<(&sys::Uffd, &[(u64, u64)])>,
    addr: u64,
    data: &[u8],
) -> Result<(), FillError> {
    let plain = |at: u64, bytes: &[u8]| -> Result<(), FillError> {
        let written = sys::process_vm_writev(pid, bytes, at).unwrap_or(0);
        if written < bytes.len() {
            mem.write_all_at(&bytes[written..], at + written as u64)
                .map_err(FillError::Task)?;
        }
        Ok(())
    };
    let Some((u, ranges)) = uffd else {
        return plain(addr, data);
    };
    let end = addr + data.len() as u64;
    let mut at = addr;
    while at < end {
        let slice = |from: u64, to: u64| &data[(from - addr) as usize..(to - addr) as usize];
        match ranges.iter().find(|&&(s, e)| s <= at && at < e) {
            Some(&(_, range_end)) => {
                let stop = range_end.min(end);
                while at < stop {
                    match u.copy(at, slice(at, stop)) {
                        Ok(n) if n > 0 => at += n as u64,
                        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                        // The page is already there (so writing it cannot fault): one page
                        // the ordinary way, then on with UFFDIO_COPY.
                        Ok(_) => {
                            plain(at, slice(at, (at + PAGE).min(stop)))?;
                            at += PAGE;
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                            plain(at, slice(at, (at + PAGE).min(stop)))?;
                            at += PAGE;
                        }
                        Err(e) => return Err(FillError::Task(e)),
                    }
                }
            }
            None => {
                let next = ranges
                    .iter()
                    .map(|&(s, _)| s)
                    .filter(|&s| s > at)
                    .min()
                    .unwrap_or(end)
                    .min(end);
                plain(at, slice(at, next))?;
                at = next;
            }
        }
    }
    Ok(())
}

/// A userfaultfd created inside the task and taken over by us (best effort: `None`
/// when the kernel refuses, and pages are then written the ordinary way).
pub(super) fn task_userfaultfd(inj: &mut Injector, pid: Pid, features: u64) -> Option<sys::Uffd> {
    let fd = inj
        .syscall_ok(
            "userfaultfd",
            libc::SYS_userfaultfd,
            [libc::O_CLOEXEC as u64, 0, 0, 0, 0, 0],
        )
        .ok()?;
    let ours = sys::pidfd_open(pid)
        .and_then(|p| sys::pidfd_getfd(std::os::fd::AsFd::as_fd(&p), fd as i32));
    let _ = inj.syscall_ok("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
    sys::Uffd::with_features(ours.ok()?, features).ok()
}

pub(super) enum FillError {
    Image(String),
    Task(std::io::Error),
}

/// Bytes one worker copies per step.
pub(super) const FILL_CHUNK: u64 = 4 << 20;

/// Where [`fill_counted`] writes pages: the task, its memory file, its userfaultfd with
/// the ranges registered there, and the ranges to leave alone.
pub(super) struct FillTarget<'a> {
    pub pid: Pid,
    pub mem: &'a File,
    pub uffd: Option<(&'a sys::Uffd, &'a [(u64, u64)])>,
    pub skip: &'a [(u64, u64)],
}

/// [`fill_counted`] without counting (memory a child shares with its parent, filled
/// while the tree is forked, `cow.rs`).
pub(super) fn fill_pages(
    pid: Pid,
    pagemap: &[pb::PagemapEntry],
    pages: &[u8],
    mem: &File,
    affinity: &Affinity,
    uffd: Option<(&sys::Uffd, &[(u64, u64)])>,
    skip: &[(u64, u64)],
) -> Result<(), FillError> {
    let target = FillTarget {
        pid,
        mem,
        uffd,
        skip,
    };
    fill_counted(&target, pagemap, pages, affinity, None)
}

/// Copies the saved pages into the task, in chunks spread over one worker per core:
/// the floor of filling memory is page allocation in the task, which runs in parallel
/// (page faults take the VMA locks, not one process-wide lock). The bytes to write, and
/// each chunk written, are counted in `progress`.
pub(super) fn fill_counted(
    target: &FillTarget,
    pagemap: &[pb::PagemapEntry],
    pages: &[u8],
    affinity: &Affinity,
    progress: Option<&crate::Progress>,
) -> Result<(), FillError> {
    let FillTarget {
        pid,
        mem,
        uffd,
        skip,
    } = *target;
    // (task address, length, offset in the pages file)
    let mut chunks = Vec::new();
    let mut offset = 0u64;
    for e in pagemap {
        let len = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages)) * PAGE;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(FILL_CHUNK);
            push_outside(&mut chunks, (e.vaddr + done, n, offset + done), skip);
            done += n;
        }
        offset += len;
    }
    let size = pages.len() as u64;
    if offset > size {
        return Err(FillError::Image(format!(
            "holds {size} bytes, the pagemap needs {offset}"
        )));
    }
    if offset == 0 {
        return Ok(());
    }
    if let Some(progress) = progress {
        progress.plan(chunks.iter().map(|&(_, n, _)| n).sum::<usize>() as u64);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed: std::sync::Mutex<Option<FillError>> = std::sync::Mutex::new(None);
    let workers = affinity.cpus().min(chunks.len()).max(1);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                if let Some(cpus) = affinity.original() {
                    // Workers run wherever they can; only injection wants one CPU.
                    let _ = sys::set_affinity(Pid(0), cpus);
                }
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(addr, n, off)) = chunks.get(i) else {
                        break;
                    };
                    let data = &pages[off as usize..off as usize + n];
                    let result = write_chunk(pid, mem, uffd, addr, data);
                    if let Err(e) = result {
                        if let Ok(mut slot) = failed.lock() {
                            slot.get_or_insert(e);
                        }
                        break;
                    }
                    if let Some(progress) = progress {
                        progress.advance(n as u64);
                    }
                }
            });
        }
    });
    match failed.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Adds the parts of chunk (address, length, file offset) outside the `skip` ranges
/// to `chunks`.
pub(super) fn push_outside(
    chunks: &mut Vec<(u64, usize, u64)>,
    chunk: (u64, u64, u64),
    skip: &[(u64, u64)],
) {
    let (addr, len, offset) = chunk;
    let mut at = addr;
    let end = addr + len;
    while at < end {
        match skip.iter().find(|&&(s, e)| s <= at && at < e) {
            Some(&(_, e)) => at = e.min(end),
            None => {
                let next = skip
                    .iter()
                    .map(|&(s, _)| s)
                    .filter(|&s| s > at)
                    .min()
                    .unwrap_or(end)
                    .min(end);
                chunks.push((at, (next - at) as usize, offset + (at - addr)));
                at = next;
            }
        }
    }
}

/// mlock(2)s the mappings that were locked (`MAP_LOCKED` in the image, `lo` in smaps),
/// once their pages are in; before credentials change, while the task may lock memory.
pub(super) fn lock_mappings(inj: &mut Injector, vmas: &[pb::VmaEntry]) -> std::io::Result<()> {
    let calls: Vec<(String, i64, [u64; 6])> = vmas
        .iter()
        .filter(|v| v.flags & libc::MAP_LOCKED as u32 != 0)
        .map(|v| {
            (
                format!("mlock ({:#x})", v.start),
                libc::SYS_mlock,
                [v.start, v.end - v.start, 0, 0, 0, 0],
            )
        })
        .collect();
    inj.syscalls_ok(&calls).map(drop)
}

/// The tree's shared anonymous memory objects by shmid, each created here as large as
/// the furthest any task maps it and filled with its saved pages, so that every task
/// maps the same object at its offset.
pub(super) fn shared_anon_objects(
    procs: &[Images],
    dir: &Path,
) -> Result<HashMap<u64, File>, RestoreError> {
    // shmid -> (size, whether it was mapped without swap reservation, the MAP_HUGETLB
    // and page size bits of hugetlb memory)
    let mut sizes: BTreeMap<u64, (u64, bool, Option<u32>)> = BTreeMap::new();
    // SysV segments are shared anonymous memory too, made by `sysvshm`.
    let anon_shared = |v: &&pb::VmaEntry| {
        v.status & VMA_ANON_SHARED != 0 && v.status & (VMA_AREA_MEMFD | VMA_AREA_SYSVIPC) == 0
    };
    for v in procs.iter().flat_map(|p| &p.mm.vmas).filter(anon_shared) {
        let end = v.pgoff.checked_add(v.end.saturating_sub(v.start));
        let end = end
            .filter(|e| e % PAGE == 0)
            .ok_or_else(|| RestoreError::BadImage {
                image: "mm".into(),
                what: format!(
                    "shared memory {} at {:#x} has offset {:#x}",
                    v.shmid, v.start, v.pgoff
                ),
            })?;
        let noreserve = v.flags & libc::MAP_NORESERVE as u32 != 0;
        let (size, object_noreserve, huge) = sizes.entry(v.shmid).or_default();
        *size = (*size).max(end);
        *object_noreserve |= noreserve;
        if v.flags & libc::MAP_HUGETLB as u32 != 0 {
            *huge = Some(v.flags & HUGE_SIZE_MASK);
        }
    }
    let mut objects = HashMap::new();
    for (shmid, (size, noreserve, huge)) in sizes {
        let object = match huge {
            Some(size_bits) => sys::shared_hugetlb_object(size, size_bits, noreserve),
            None => sys::shared_anon_object(size, noreserve),
        };
        let object = object.map_err(|source| RestoreError::Task {
            pid: Pid(std::process::id() as i32),
            what: format!("creating shared memory {shmid} of {size} bytes"),
            source,
        })?;
        fill_shmem(dir, shmid, &object)?;
        objects.insert(shmid, object);
    }
    Ok(objects)
}

/// Writes the saved pages of shared memory object `shmid` (pagemap-shmem-<shmid>.img,
/// addresses are offsets into the object) into `object`.
pub(super) fn fill_shmem(dir: &Path, shmid: u64, object: &File) -> Result<(), RestoreError> {
    let name = format!("pagemap-shmem-{shmid}.img");
    if !dir.join(&name).exists() {
        return Ok(());
    }
    let mut pm = ImageReader::open(dir.join(&name))?;
    let head: pb::PagemapHead = pm.next_entry()?.ok_or_else(|| RestoreError::BadImage {
        image: name.clone(),
        what: "is empty".into(),
    })?;
    let pages_name = format!("pages-{}.img", head.pages_id);
    let pages = File::open(dir.join(&pages_name)).map_err(|e| RestoreError::BadImage {
        image: pages_name.clone(),
        what: e.to_string(),
    })?;
    // hugetlbfs has no write(2): its objects are written through a mapping.
    let mut writer = sys::ObjectWriter::new(object).map_err(|e| RestoreError::BadImage {
        image: name.clone(),
        what: format!("its object cannot be mapped to be filled: {e}"),
    })?;
    let mut offset = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while let Some(e) = pm.next_entry::<pb::PagemapEntry>()? {
        let mut left = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages)) * PAGE;
        let mut at = e.vaddr;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            pages
                .read_exact_at(&mut buf[..n], offset)
                .map_err(|e| RestoreError::BadImage {
                    image: pages_name.clone(),
                    what: format!("ends early: {e}"),
                })?;
            writer
                .write_all_at(&buf[..n], at)
                .map_err(|e| RestoreError::BadImage {
                    image: name.clone(),
                    what: format!("does not fit its object: {e}"),
                })?;
            offset += n as u64;
            at += n as u64;
            left -= n as u64;
        }
    }
    Ok(())
}

/// A page-aligned address range of `len` bytes free in both the dumped layout and
/// `current` maps, below the usual mmap base.
pub(super) fn free_area(
    vmas: &[pb::VmaEntry],
    current: &[crate::proc::MapEntry],
    len: u64,
) -> Option<u64> {
    let busy: Vec<(u64, u64)> = vmas
        .iter()
        .map(|v| (v.start, v.end))
        .chain(current.iter().map(|m| (m.start, m.end)))
        .collect();
    let mut candidate = 0x1000_0000_0000u64;
    while candidate < 0x7000_0000_0000 {
        if busy
            .iter()
            .all(|&(s, e)| candidate + len <= s || e <= candidate)
        {
            return Some(candidate);
        }
        candidate += 0x10_0000_0000;
    }
    None
}

/// Stage 3, first: the work area, free in both the dumped layout and the restorer's
/// (whose copy the new task still is): the gadget page, three scratch pages, and room
/// for batches of injected calls (`Injector::syscalls`). Injection moves there from the
/// restorer's code, which is about to go. Returns the injector, and where the area is.
pub(super) fn map_work_area(
    img: &Images,
    pid: Pid,
    gadget: u64,
) -> Result<(Injector, u64), RestoreError> {
    let mut inj = Injector::new(pid, gadget).map_err(terr(pid, "starting injection"))?;
    let my_maps = ProcDir::open(pid)
        .and_then(|d| d.maps_plain())
        .map_err(terr(pid, "reading the new task's maps"))?;
    let work = free_area(&img.mm.vmas, &my_maps, WORK_AREA)
        .ok_or_else(|| terr(pid, "finding room")(std::io::Error::other("no free area")))?;
    let rwx = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
    inj.syscall_ok(
        "mmap work area",
        libc::SYS_mmap,
        [work, WORK_AREA, rwx, anon, u64::MAX, 0],
    )
    .map_err(terr(pid, "mapping the work area"))?;
    inj.retarget(work, false)
        .map_err(terr(pid, "moving the gadget"))?;
    inj.set_scratch(work + PAGE, 3 * PAGE);
    inj.set_batch_room(work + 4 * PAGE, WORK_AREA - 4 * PAGE);
    Ok((inj, work))
}

/// The mappings being made in stage 5, in the order of the dumped ones: what goes in
/// batches of injected calls once the others are mapped.
#[derive(Default)]
struct Mappings {
    /// mmap and mprotect calls of anonymous memory (and kept memory), in one batch.
    calls: Vec<(String, i64, [u64; 6])>,
    /// Files to open in the task and map: path, open mode, mmap arguments (the fd
    /// filled in once open).
    files: Vec<(PathBuf, i32, [u64; 6])>,
}

impl Rebuild<'_> {
    /// Stage 3: every signal blocked, and the rseq registration inherited from the
    /// restorer dropped (its area is in the restorer's TLS).
    pub(super) fn block_signals_and_rseq(&mut self) -> Result<(), RestoreError> {
        let scratch = self.scratch();
        let all_signals = [u64::MAX];
        self.inj
            .write(scratch, &all_signals[0].to_le_bytes())
            .map_err(self.err("writing scratch"))?;
        self.inj
            .syscall_ok(
                "rt_sigprocmask",
                libc::SYS_rt_sigprocmask,
                [libc::SIG_SETMASK as u64, scratch, 0, 8, 0, 0],
            )
            .map_err(self.err("blocking signals"))?;
        let rseq = sys::ptrace_get_rseq(self.pid).map_err(self.err("reading rseq"))?;
        if rseq.abi_pointer != 0 {
            self.inj
                .syscall_ok(
                    "rseq unregister",
                    libc::SYS_rseq,
                    [
                        rseq.abi_pointer,
                        u64::from(rseq.abi_size),
                        1,
                        u64::from(rseq.signature),
                        0,
                        0,
                    ],
                )
                .map_err(self.err("unregistering rseq"))?;
        }
        Ok(())
    }

    /// The task's maps as they are now.
    pub(super) fn maps(&self) -> Result<Vec<MapEntry>, RestoreError> {
        ProcDir::open(self.pid)
            .and_then(|d| d.maps_plain())
            .map_err(self.err("reading the new task's maps"))
    }

    /// Stage 3: unmaps the restorer's memory (its maps `current`) from the task, all but
    /// the work area, the kernel's special mappings (stage 4 places them) and mappings
    /// that hold its memory already, shared with its parent (cow.rs). Returns the
    /// bounds of those kept.
    pub(super) fn unmap_restorer(
        &mut self,
        current: &[MapEntry],
    ) -> Result<Vec<(u64, u64)>, RestoreError> {
        let kept = cow::kept(self.img, &self.cow_held.vmas, current);
        for m in current {
            let special = matches!(
                m.path.as_str(),
                "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]"
            );
            if m.start == self.work || special || kept.contains(&(m.start, m.end)) {
                continue;
            }
            self.inj
                .syscall_ok(
                    "munmap",
                    libc::SYS_munmap,
                    [m.start, m.end - m.start, 0, 0, 0, 0],
                )
                .map_err(self.err("unmapping the restorer"))?;
        }
        Ok(kept)
    }

    /// Stage 5: every mapping at its address (but the vDSO's and its data's, stage 4),
    /// writable while its pages are copied in; `kept` ones (cow.rs) are there already.
    ///
    /// Adjacent private anonymous mappings that were separate VMAs must stay separate
    /// (the /proc view is part of what is restored), but the kernel merges a new mapping
    /// into a compatible neighbour. So while filling, every other one also gets
    /// PROT_EXEC, which keeps them apart; once each holds its own pages (its own
    /// anon_vma) the final mprotect cannot merge them either.
    pub(super) fn map_memory(&mut self, kept: &[(u64, u64)]) -> Result<(), RestoreError> {
        let img = self.img;
        let mut batched = Mappings::default();
        let mut previous_end = 0;
        let mut alternate = false;
        for v in &img.mm.vmas {
            if v.status & VMA_AREA_VDSO != 0 && img.vdso_proxy.is_some() {
                // The dumped vDSO's bytes, as ordinary memory, writable until its entry
                // points are redirected.
                let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
                let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED) as u64;
                batched.calls.push((
                    format!("mmap (vDSO proxy at {:#x})", v.start),
                    libc::SYS_mmap,
                    [v.start, v.end - v.start, rw, anon, u64::MAX, 0],
                ));
                continue;
            }
            if v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL) != 0 {
                continue;
            }
            alternate = v.start == previous_end && !alternate;
            previous_end = v.end;
            let apart = if alternate { libc::PROT_EXEC as u64 } else { 0 };
            // Write access only where pages are written in: a private mapping made or
            // made writable is charged to the commit limit, and a reservation without
            // access (MariaDB's 8 TiB buffer pool address range) would not fit in it.
            let fill_prot = if v.prot & libc::PROT_WRITE as u32 == 0
                && saved_bytes(&img.pagemap, v.start, v.end) == 0
            {
                u64::from(v.prot) | apart
            } else {
                u64::from(v.prot) | (libc::PROT_READ | libc::PROT_WRITE) as u64 | apart
            };
            self.map_one(v, fill_prot, kept, &mut batched)?;
        }
        // The private anonymous mappings in one batch of injected calls; then the file
        // mappings in rounds.
        self.inj
            .syscalls_ok(&batched.calls)
            .map_err(self.err("mapping memory"))?;
        self.map_files(&batched.files)
    }

    /// Stage 5 for mapping `v`, with protection `fill_prot` while it is filled: mapped
    /// at once when it is a memfd or shared memory, or added to the batches.
    fn map_one(
        &mut self,
        v: &pb::VmaEntry,
        fill_prot: u64,
        kept: &[(u64, u64)],
        batched: &mut Mappings,
    ) -> Result<(), RestoreError> {
        let len = v.end - v.start;
        // File and memfd mappings: shared ones get their final protection at once (their
        // pages are never filled), private ones stay writable while their pages are.
        let file_prot = if v.status & VMA_FILE_SHARED != 0 {
            u64::from(v.prot)
        } else {
            fill_prot
        };
        if kept.contains(&(v.start, v.end)) {
            // Already there: only its protection for the filling, in turn with the
            // others so that neighbours stay apart.
            batched.calls.push((
                format!("mprotect (kept memory at {:#x})", v.start),
                libc::SYS_mprotect,
                [v.start, len, fill_prot, 0, 0, 0],
            ));
            return Ok(());
        }
        let writable = v.fdflags.unwrap_or(0) & libc::O_ACCMODE as u32 == libc::O_RDWR as u32;
        // Locked mappings are locked once filled (below): MAP_LOCKED would populate
        // them now, before their pages are copied in.
        let flags = u64::from(v.flags & !(libc::MAP_LOCKED as u32)) | libc::MAP_FIXED as u64;
        // A deleted file is recreated from its ghost image by the opener, as a memfd is.
        let ghost = v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0
            && self.opener.is_ghost(v.shmid as u32);
        if v.status & VMA_AREA_SOCKET != 0 {
            self.map_packet_ring(v, flags)?;
        } else if v.status & VMA_FILE_SHARED != 0
            && self
                .img
                .files
                .get(&(v.shmid as u32))
                .is_some_and(|f| files::io_uring_of(f).is_some())
        {
            self.map_io_uring(v, flags)?;
        } else if v.status & VMA_AREA_MEMFD != 0 || ghost {
            self.map_memfd(v, file_prot, flags, writable)?;
        } else if v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 {
            let path = self.img.files[&(v.shmid as u32)]
                .reg
                .as_ref()
                .map(|r| r.path().to_owned())
                .unwrap_or_default();
            let mode = if writable {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            };
            // Opened once per mapping: two neighbouring mappings of one open file with
            // consecutive offsets would merge into one VMA.
            let args = [v.start, len, file_prot, flags, 0, v.pgoff];
            batched.files.push((path, mode, args));
        } else if v.status & VMA_AREA_SYSVIPC != 0 {
            self.attach_sysv(v)?;
        } else if v.status & VMA_ANON_SHARED != 0 {
            self.map_shared_anon(v, flags)?;
        } else if v.status & VMA_AREA_AIORING != 0 {
            // The saved ring's bytes, in plain memory until aio.rs moves a new ring here.
            let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED) as u64;
            batched.calls.push((
                format!("mmap (AIO ring at {:#x})", v.start),
                libc::SYS_mmap,
                [v.start, len, fill_prot, anon, u64::MAX, 0],
            ));
        } else {
            batched.calls.push((
                format!("mmap (anonymous at {:#x})", v.start),
                libc::SYS_mmap,
                [v.start, len, fill_prot, flags, u64::MAX, 0],
            ));
        }
        Ok(())
    }

    /// A memfd (or shared anonymous memory CRIU saved as one, or a deleted file): the
    /// opener rebuilds the object with its contents; every task maps that one object.
    fn map_memfd(
        &mut self,
        v: &pb::VmaEntry,
        prot: u64,
        flags: u64,
        writable: bool,
    ) -> Result<(), RestoreError> {
        let object = self.opener.open(v.shmid as u32, &[])?.as_raw_fd();
        // The mapping needs the access mode it was mapped with (a writable shared
        // mapping needs O_RDWR), which the file entry's own open may not have: map
        // through a fresh open of the same object.
        let reopened = File::options()
            .read(true)
            .write(writable)
            .open(format!("/proc/self/fd/{object}"))
            .map_err(self.err("reopening a memfd"))?;
        let fd = give_fd(&mut self.inj, self.restorer_pidfd, reopened.as_raw_fd())
            .map_err(self.err("passing a memfd"))?;
        map_task_fd(&mut self.inj, v, prot, flags, fd)
            .map_err(self.err(&format!("mapping a memfd at {:#x}", v.start)))
    }

    /// A packet socket's ring: the socket, which the opener makes with its rings (the
    /// one the task's fd table gets later), mapped again with its final protection;
    /// the frames in the ring are not saved.
    fn map_packet_ring(&mut self, v: &pb::VmaEntry, flags: u64) -> Result<(), RestoreError> {
        let socket = self.opener.open(v.shmid as u32, &[])?.as_raw_fd();
        let fd = give_fd(&mut self.inj, self.restorer_pidfd, socket)
            .map_err(self.err("passing a packet socket"))?;
        map_task_fd(&mut self.inj, v, u64::from(v.prot), flags, fd)
            .map_err(self.err(&format!("mapping a packet ring at {:#x}", v.start)))
    }

    /// A region of an io_uring ring: the memfd holding that region of the ring the
    /// opener made (a ring's own regions cannot be mapped at a chosen address), mapped
    /// shared at the same offset in the region, with its final protection.
    fn map_io_uring(&mut self, v: &pb::VmaEntry, flags: u64) -> Result<(), RestoreError> {
        let (region, offset) = self.opener.ring_region(v.shmid as u32, v.pgoff)?;
        let region = region.as_raw_fd();
        let fd = give_fd(&mut self.inj, self.restorer_pidfd, region)
            .map_err(self.err("passing an io_uring ring's memory"))?;
        let at_offset = pb::VmaEntry {
            pgoff: offset,
            ..*v
        };
        map_task_fd(&mut self.inj, &at_offset, u64::from(v.prot), flags, fd)
            .map_err(self.err(&format!("mapping an io_uring region at {:#x}", v.start)))
    }

    /// Shared anonymous memory: every task maps the one object made and filled
    /// beforehand (`shared_anon_objects`), at the mapping's offset in it.
    fn map_shared_anon(&mut self, v: &pb::VmaEntry, flags: u64) -> Result<(), RestoreError> {
        let prot = u64::from(v.prot);
        let object = self
            .shared
            .get(&v.shmid)
            .ok_or_else(|| RestoreError::BadImage {
                image: format!("mm-{}.img", self.img.pid.0),
                what: format!(
                    "shared memory {} at {:#x} was not prepared",
                    v.shmid, v.start
                ),
            })?;
        let fd = give_fd(&mut self.inj, self.restorer_pidfd, object.as_raw_fd())
            .map_err(self.err("passing shared memory"))?;
        let through_fd = flags & !(libc::MAP_ANONYMOUS as u64);
        map_task_fd(&mut self.inj, v, prot, through_fd, fd)
            .map_err(self.err(&format!("mapping shared memory at {:#x}", v.start)))
    }

    /// Stage 5's file mappings, in rounds: one batch opens the files (paths side by side
    /// in the scratch area, and few enough to stay within any fd limit), one maps and
    /// closes them.
    fn map_files(&mut self, files: &[(PathBuf, i32, [u64; 6])]) -> Result<(), RestoreError> {
        let scratch = self.scratch();
        let mut rest = files;
        while !rest.is_empty() {
            let (paths, opens) = open_round(rest, scratch).map_err(|path| {
                self.err(&format!("opening {path}"))(std::io::Error::from_raw_os_error(
                    libc::ENAMETOOLONG,
                ))
            })?;
            self.inj
                .write(scratch, &paths)
                .map_err(self.err("writing the paths of mapped files"))?;
            let fds = self
                .inj
                .syscalls_ok(&opens)
                .map_err(self.err("opening mapped files"))?;
            let (round, later) = rest.split_at(fds.len());
            let mut calls = Vec::with_capacity(2 * fds.len());
            for ((path, _, args), &fd) in round.iter().zip(&fds) {
                let mut args = *args;
                args[4] = fd;
                let what = format!("mmap ({} at {:#x})", path.display(), args[0]);
                calls.push((what, libc::SYS_mmap, args));
            }
            for &fd in &fds {
                let what = "close (a mapped file)".to_string();
                calls.push((what, libc::SYS_close, [fd, 0, 0, 0, 0, 0]));
            }
            self.inj
                .syscalls_ok(&calls)
                .map_err(self.err("mapping files"))?;
            rest = later;
        }
        Ok(())
    }

    /// Stage 5: the saved pages into the new mappings, by workers on every CPU; into
    /// `kept` ones (cow.rs) only those that differ.
    pub(super) fn fill_memory(&mut self, kept: &[(u64, u64)]) -> Result<(), RestoreError> {
        let (img, pid) = (self.img, self.pid);
        let pages = img.pages.bytes();
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{}/mem", pid.0))
            .map_err(self.err("opening task memory"))?;
        // Fresh anonymous memory is filled through a userfaultfd of the task: UFFDIO_COPY
        // allocates and fills each page in one step (a plain write first zeroes it).
        // A lazy restore (lazy.rs) needs the events that tell what the tree does with
        // its memory before every page is in.
        let features = if self.lazy.is_some() {
            lazy::LAZY_FEATURES
        } else {
            0
        };
        let uffd = task_userfaultfd(&mut self.inj, pid, features);
        if self.lazy.is_some() && uffd.is_none() {
            return Err(self.err("creating a userfaultfd for lazy pages")(
                std::io::Error::from_raw_os_error(libc::ENOSYS),
            ));
        }
        // Memory that gets transparent huge pages where it is touched (MADV_HUGEPAGE: a
        // JVM's heap, say; or any of 2 MiB or more when the system gives them to all
        // memory) is written through /proc/PID/mem, whose faults allocate huge pages,
        // the advice given first: UFFDIO_COPY would install small ones, and the program
        // would run with 512 times the TLB entries until khugepaged collapsed them,
        // minutes later. Not for a lazy restore, which serves faults.
        // Only where at least half the VMA has saved pages: a huge page is allocated
        // whole wherever one page of it is written, and a sparse VMA (a malloc arena
        // its program gave back in pieces with MADV_DONTNEED) would grow up to 512
        // times, which a container near its memory limit may not hold.
        // Fresh private anonymous memory (not kept, not the kernel's special areas);
        // UFFDIO_COPY fills hugetlb memory only in whole huge pages, so not that either.
        let fresh_anon = |v: &pb::VmaEntry| {
            v.status & VMA_ANON_PRIVATE != 0
                && v.flags & libc::MAP_HUGETLB as u32 == 0
                && v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL) == 0
                && !kept.contains(&(v.start, v.end))
        };
        let huge: Vec<&pb::VmaEntry> = if self.lazy.is_some() {
            Vec::new()
        } else {
            let thp_always = thp_for_all_memory();
            img.mm
                .vmas
                .iter()
                .filter(|v| {
                    let madv = v.madv.unwrap_or(0);
                    let wants = madv & (1 << libc::MADV_HUGEPAGE) != 0
                        || (thp_always
                            && madv & (1 << libc::MADV_NOHUGEPAGE) == 0
                            && v.end - v.start >= HUGE_PAGE);
                    fresh_anon(v)
                        && wants
                        && saved_bytes(&img.pagemap, v.start, v.end) * 2 >= v.end - v.start
                })
                .collect()
        };
        let advice: Vec<(String, i64, [u64; 6])> = huge
            .iter()
            .filter(|v| v.madv.unwrap_or(0) & (1 << libc::MADV_HUGEPAGE) != 0)
            .map(|v| {
                (
                    format!("madvise (huge pages at {:#x})", v.start),
                    libc::SYS_madvise,
                    [
                        v.start,
                        v.end - v.start,
                        libc::MADV_HUGEPAGE as u64,
                        0,
                        0,
                        0,
                    ],
                )
            })
            .collect();
        self.inj
            .syscalls_ok(&advice)
            .map_err(self.err("asking huge pages for its memory"))?;
        let mut registered = Vec::new();
        if let Some(u) = &uffd {
            let fill_by_uffd = img
                .mm
                .vmas
                .iter()
                .filter(|v| fresh_anon(v) && !huge.iter().any(|h| h.start == v.start));
            for v in fill_by_uffd {
                if u.register_missing(v.start, v.end - v.start).is_ok() {
                    registered.push((v.start, v.end));
                }
            }
        }
        let filling = Instant::now();
        // Not written: kept memory (filled below), and droppable memory, which the kernel
        // may empty at any time and a restore empties as CRIU's does (it saves none of it).
        let mut skip: Vec<(u64, u64)> = img
            .mm
            .vmas
            .iter()
            .filter(|v| v.flags & MAP_TYPE == crate::dump::mm::MAP_DROPPABLE as u32)
            .map(|v| (v.start, v.end))
            .chain(kept.iter().copied())
            .collect();
        // Lazily: the registered memory goes to the server, which answers its faults
        // from now on (the rest of the restore may touch it too); the rest is filled now.
        let mut uffd = uffd;
        if let Some(server) = self.lazy {
            if let Some(u) = uffd.take() {
                let source = lazy::LocalPages::new(std::sync::Arc::clone(&img.pages));
                server
                    .add(
                        pid,
                        u,
                        registered.clone(),
                        &img.pagemap,
                        std::sync::Arc::new(source),
                    )
                    .map_err(self.err("serving lazy pages"))?;
                skip.append(&mut registered);
            }
        }
        let target = FillTarget {
            pid,
            mem: &mem,
            uffd: uffd.as_ref().map(|u| (u, registered.as_slice())),
            skip: &skip,
        };
        let progress = Some(self.progress);
        fill_counted(&target, &img.pagemap, pages, self.affinity, progress).map_err(
            |e| match e {
                FillError::Image(what) => RestoreError::BadImage {
                    image: format!("pages-{}.img", img.pages_id),
                    what,
                },
                FillError::Task(source) => self.err("filling pages")(source),
            },
        )?;
        // Kept memory that is not its own yet (inherited) gets its differing pages.
        let inherited: Vec<(u64, u64)> = kept
            .iter()
            .filter(|r| !self.cow_held.own.contains(r))
            .copied()
            .collect();
        cow::fill_differing(pid, &img.pagemap, pages, &inherited, true)
            .and_then(|()| cow::drop_unsaved(&mut self.inj, &img.pagemap, &inherited))
            .map_err(self.err("filling memory shared with its parent"))?;
        tracing::debug!(%pid, took = ?filling.elapsed(), "pages filled");
        if let Some(u) = &uffd {
            for &(start, end) in &registered {
                u.unregister(start, end - start)
                    .map_err(self.err("unregistering the userfaultfd"))?;
            }
        }
        Ok(())
    }

    /// Stage 5, last: the final protections (a page that is not writable cannot be
    /// filled later), the vDSO proxy's jumps into this kernel's vDSO at `live_vdso`,
    /// locks and madvise(2) advice.
    pub(super) fn protect_memory(&mut self, live_vdso: Option<u64>) -> Result<(), RestoreError> {
        let img = self.img;
        // In batches of injected calls: one stop per batch instead of one per VMA (10,000
        // VMAs took 240 ms one by one).
        let protections: Vec<(String, i64, [u64; 6])> = img
            .mm
            .vmas
            .iter()
            .filter(|v| {
                v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL | VMA_FILE_SHARED)
                    == 0
            })
            .map(|v| {
                (
                    format!("mprotect ({:#x})", v.start),
                    libc::SYS_mprotect,
                    [v.start, v.end - v.start, u64::from(v.prot), 0, 0, 0],
                )
            })
            .collect();
        self.inj
            .syscalls_ok(&protections)
            .map_err(self.err("protecting its memory"))?;
        if let (Some(proxy), Some(live)) = (&img.vdso_proxy, live_vdso) {
            vdso::redirect(&mut self.inj, proxy, live)
                .map_err(self.err("redirecting the old vDSO"))?;
        }
        for &(start, end) in &img.guards {
            self.inj
                .syscall_ok(
                    "madvise",
                    libc::SYS_madvise,
                    [start, end - start, MADV_GUARD_INSTALL, 0, 0, 0],
                )
                .map_err(self.err(&format!("installing the guard region at {start:#x}")))?;
        }
        lock_mappings(&mut self.inj, &img.mm.vmas).map_err(self.err("locking memory"))?;
        // madvise(2) advice recorded per VMA (MADV_DONTFORK, DONTDUMP, HUGEPAGE...): it
        // is part of the VMA, and VMAs differing in it were separate ones.
        let mut advice_calls: Vec<(String, i64, [u64; 6])> = Vec::new();
        for v in &img.mm.vmas {
            let madv = v.madv.unwrap_or(0);
            if madv == 0 || v.status & (VMA_AREA_VVAR | VMA_AREA_VSYSCALL | VMA_AREA_VDSO) != 0 {
                continue;
            }
            for advice in (0..64u64).filter(|a| madv & (1 << a) != 0) {
                advice_calls.push((
                    format!("madvise advice {advice} ({:#x})", v.start),
                    libc::SYS_madvise,
                    [v.start, v.end - v.start, advice, 0, 0, 0],
                ));
            }
        }
        self.inj
            .syscalls_ok(&advice_calls)
            .map_err(self.err("giving its memory its madvise advice"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(vaddr: u64, pages: u64) -> pb::PagemapEntry {
        pb::PagemapEntry {
            vaddr,
            nr_pages: Some(pages),
            ..Default::default()
        }
    }

    #[test]
    fn saved_bytes_counts_the_pages_inside_the_range() {
        let pagemap = [entry(0x1000, 2), entry(0x10000, 16), entry(0x30000, 1)];
        assert_eq!(saved_bytes(&pagemap, 0, 0x40000), 19 * PAGE);
        // Cut at both ends: two pages of the second entry, none of the others.
        assert_eq!(saved_bytes(&pagemap, 0x1e000, 0x30000), 2 * PAGE);
        assert_eq!(saved_bytes(&pagemap, 0x3000, 0x10000), 0);
        assert_eq!(saved_bytes(&[], 0, u64::MAX), 0);
    }
}
