//! Stage 5: filling the recreated mappings with their pages (all cores), shared memory objects, locking, and moving the vDSO.

use super::*;

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
pub(super) fn task_userfaultfd(inj: &mut Injector, pid: Pid) -> Option<sys::Uffd> {
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
    sys::Uffd::new(ours.ok()?).ok()
}

pub(super) enum FillError {
    Image(String),
    Task(std::io::Error),
}

/// Bytes one worker copies per step.
pub(super) const FILL_CHUNK: u64 = 4 << 20;

/// Copies the saved pages into the task, in chunks spread over one worker per core:
/// the floor of filling memory is page allocation in the task, which runs in parallel
/// (page faults take the VMA locks, not one process-wide lock).
pub(super) fn fill_pages(
    pid: Pid,
    pagemap: &[pb::PagemapEntry],
    pages: &File,
    mem: &File,
    affinity: &Affinity,
    uffd: Option<(&sys::Uffd, &[(u64, u64)])>,
    skip: &[(u64, u64)],
) -> Result<(), FillError> {
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
    let size = pages.metadata().map_err(FillError::Task)?.len();
    if offset > size {
        return Err(FillError::Image(format!(
            "holds {size} bytes, the pagemap needs {offset}"
        )));
    }
    if offset == 0 {
        return Ok(());
    }
    let map = sys::map_image(pages).map_err(FillError::Task)?;
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
                    let data = &map[off as usize..off as usize + n];
                    let result = write_chunk(pid, mem, uffd, addr, data);
                    if let Err(e) = result {
                        if let Ok(mut slot) = failed.lock() {
                            slot.get_or_insert(e);
                        }
                        break;
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
    // shmid -> (size, whether it was mapped without swap reservation)
    let mut sizes: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
    let anon_shared =
        |v: &&pb::VmaEntry| v.status & VMA_ANON_SHARED != 0 && v.status & VMA_AREA_MEMFD == 0;
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
        let (size, object_noreserve) = sizes.entry(v.shmid).or_default();
        *size = (*size).max(end);
        *object_noreserve |= noreserve;
    }
    let mut objects = HashMap::new();
    for (shmid, (size, noreserve)) in sizes {
        let object =
            sys::shared_anon_object(size, noreserve).map_err(|source| RestoreError::Task {
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
            object
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

/// Turns the dumped vDSO's bytes at `proxy.start` into a proxy: each old entry point
/// jumps to the same symbol of this kernel's vDSO at `live`; then it becomes read-only
/// code, as a vDSO is.
pub(super) fn redirect_vdso(
    inj: &mut Injector,
    proxy: &vdso::Proxy,
    live: u64,
) -> std::io::Result<()> {
    for &(old, new) in &proxy.entries {
        inj.write(proxy.start + old, &vdso::trampoline(live + new))?;
    }
    let rx = (libc::PROT_READ | libc::PROT_EXEC) as u64;
    inj.syscall_ok(
        "mprotect (vDSO proxy)",
        libc::SYS_mprotect,
        [proxy.start, proxy.end - proxy.start, rx, 0, 0, 0],
    )?;
    Ok(())
}

/// mremap(2)s the special mappings `block` (at `from`) so that it starts at `to`.
pub(super) fn move_block(
    inj: &mut Injector,
    block: &[&crate::proc::MapEntry],
    from: u64,
    to: u64,
) -> std::io::Result<()> {
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    let base = block.iter().map(|m| m.start).min().unwrap_or(from);
    for m in block {
        let old = from + (m.start - base);
        let new = to + (m.start - base);
        let len = m.end - m.start;
        inj.syscall_ok("mremap", libc::SYS_mremap, [old, len, len, flags, new, 0])?;
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
