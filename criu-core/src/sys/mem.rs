//! Memory of other processes and of our own: process_vm_readv/writev, PAGEMAP_SCAN, memfds, userfaultfd.

use super::*;

/// process_vm_readv(2): copies `remote` ranges of `pid` into `local`, in order; returns
/// the bytes copied (short when a remote page is not mapped).
pub fn process_vm_readv(pid: Pid, local: &mut [u8], remote: &[(u64, usize)]) -> io::Result<usize> {
    let remote: Vec<nix::sys::uio::RemoteIoVec> = remote
        .iter()
        .map(|&(base, len)| nix::sys::uio::RemoteIoVec {
            base: base as usize,
            len,
        })
        .collect();
    let mut local = [io::IoSliceMut::new(local)];
    Ok(nix::sys::uio::process_vm_readv(
        nix::unistd::Pid::from_raw(pid.0),
        &mut local,
        &remote,
    )?)
}

/// Page categories reported by PAGEMAP_SCAN (linux/fs.h).
pub mod page_is {
    pub const WPALLOWED: u64 = 1 << 0;
    pub const WRITTEN: u64 = 1 << 1;
    pub const FILE: u64 = 1 << 2;
    pub const PRESENT: u64 = 1 << 3;
    pub const SWAPPED: u64 = 1 << 4;
    pub const PFNZERO: u64 = 1 << 5;
    pub const HUGE: u64 = 1 << 6;
    pub const SOFT_DIRTY: u64 = 1 << 7;
    pub const GUARD: u64 = 1 << 8;
}

/// One run of pages with the same categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// PAGEMAP_SCAN (Linux 6.7) over `[start, end)` of the task whose `/proc/PID/pagemap` is
/// `pagemap`: the runs of pages having any of `any_of` categories, with the
/// `return_mask` categories reported. Debian 12's headers predate the ioctl, so the
/// structures are declared here.
pub fn pagemap_scan(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    any_of: u64,
    return_mask: u64,
) -> io::Result<Vec<PageRegion>> {
    pagemap_scan_with(pagemap, start, end, 0, any_of, return_mask)
}

/// PAGEMAP_SCAN flag: write-protect the pages that match (pages of a range registered
/// with an asynchronous write-protecting userfaultfd, whose written bits this resets).
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// PAGEMAP_SCAN flag: fail with EPERM unless every VMA of the range is registered with
/// an asynchronous write-protecting userfaultfd (so the written bits mean something).
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// [`pagemap_scan`] with PAGEMAP_SCAN's `flags` (`PM_SCAN_*`).
pub fn pagemap_scan_with(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    flags: u64,
    any_of: u64,
    return_mask: u64,
) -> io::Result<Vec<PageRegion>> {
    pagemap_scan_masked(pagemap, start, end, flags, 0, any_of, return_mask)
}

/// [`pagemap_scan`] of the pages having every category of `all_of` and any of `any_of`
/// (PAGE_IS_WRITTEN alone also matches page-table entries with no page: nothing
/// protects them).
pub fn pagemap_scan_all_of(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    all_of: u64,
    any_of: u64,
    return_mask: u64,
) -> io::Result<Vec<PageRegion>> {
    pagemap_scan_masked(pagemap, start, end, 0, all_of, any_of, return_mask)
}

fn pagemap_scan_masked(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    flags: u64,
    all_of: u64,
    any_of: u64,
    return_mask: u64,
) -> io::Result<Vec<PageRegion>> {
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct RawRegion {
        start: u64,
        end: u64,
        categories: u64,
    }
    #[repr(C)]
    struct PmScanArg {
        size: u64,
        flags: u64,
        start: u64,
        end: u64,
        walk_end: u64,
        vec: u64,
        vec_len: u64,
        max_pages: u64,
        category_inverted: u64,
        category_mask: u64,
        category_anyof_mask: u64,
        return_mask: u64,
    }
    // _IOWR('f', 16, struct pm_scan_arg)
    const PAGEMAP_SCAN: libc::c_ulong = (3 << 30)
        | ((size_of::<PmScanArg>() as libc::c_ulong) << 16)
        | ((b'f' as libc::c_ulong) << 8)
        | 16;
    let mut out = Vec::new();
    let mut buf = vec![RawRegion::default(); 1024];
    let mut pos = start;
    while pos < end {
        let mut arg = PmScanArg {
            size: size_of::<PmScanArg>() as u64,
            flags,
            start: pos,
            end,
            walk_end: 0,
            vec: buf.as_mut_ptr() as u64,
            vec_len: buf.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: all_of,
            category_anyof_mask: any_of,
            return_mask,
        };
        // SAFETY: `arg` is a correctly sized pm_scan_arg whose `vec` points at `buf`,
        // which has room for `vec_len` regions and outlives the call.
        let n = unsafe {
            libc::ioctl(
                pagemap.as_raw_fd(),
                PAGEMAP_SCAN,
                &mut arg as *mut PmScanArg,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        out.extend(buf[..n as usize].iter().map(|r| PageRegion {
            start: r.start,
            end: r.end,
            categories: r.categories,
        }));
        if arg.walk_end <= pos {
            break;
        }
        pos = arg.walk_end;
    }
    Ok(out)
}

/// The system page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as u64
}

/// A new shared anonymous memory object of `len` bytes (page aligned), the kind
/// `mmap(MAP_SHARED | MAP_ANONYMOUS)` creates and maps show as `/dev/zero (deleted)`, as
/// an open file: mapped here (see mmap(2)) only long enough to open it through
/// `/proc/self/map_files`, which needs CAP_SYS_ADMIN. With `noreserve` it is not
/// charged against the commit limit (MAP_NORESERVE), as a huge sparse one was not.
pub fn shared_anon_object(len: u64, noreserve: bool) -> io::Result<std::fs::File> {
    let noreserve = if noreserve { libc::MAP_NORESERVE } else { 0 };
    shared_anon_object_with(len, noreserve)
}

/// A shared anonymous memory object of `len` bytes made by an mmap(2) with
/// `MAP_SHARED | MAP_ANONYMOUS | extra_flags`, opened through `/proc/self/map_files`
/// and unmapped again (shared by [`shared_anon_object`] and `shared_hugetlb_object`).
pub(super) fn shared_anon_object_with(len: u64, extra_flags: i32) -> io::Result<std::fs::File> {
    let size = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a fresh mapping at an address the kernel picks aliases nothing of ours; it
    // is never accessed and is unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | extra_flags,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = addr as u64;
    let opened = std::fs::File::options()
        .read(true)
        .write(true)
        .open(format!(
            "/proc/self/map_files/{:x}-{:x}",
            start,
            start + len
        ));
    // SAFETY: the mapping made above, which nothing else knows of.
    unsafe { libc::munmap(addr, size) };
    opened
}

/// memfd_create(2) with `MFD_CLOEXEC` (and extra `flags`).
pub fn memfd_create(name: impl AsRef<[u8]>, flags: libc::c_uint) -> io::Result<OwnedFd> {
    use nix::sys::memfd::MemFdCreateFlag;
    let name = std::ffi::CString::new(name.as_ref())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let flags = MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::from_bits_retain(flags);
    Ok(nix::sys::memfd::memfd_create(&name, flags)?)
}

/// fallocate(2): allocates the first `len` bytes of `file` up front.
pub fn fallocate(file: &std::fs::File, len: u64) -> io::Result<()> {
    use nix::fcntl::FallocateFlags;
    Ok(nix::fcntl::fallocate(
        file.as_raw_fd(),
        FallocateFlags::empty(),
        0,
        len as libc::off_t,
    )?)
}

/// process_vm_writev(2): copies `local` into `pid` at `addr`; returns the bytes copied
/// (short when a remote page is missing or not writable).
pub fn process_vm_writev(pid: Pid, local: &[u8], addr: u64) -> io::Result<usize> {
    let remote = [nix::sys::uio::RemoteIoVec {
        base: addr as usize,
        len: local.len(),
    }];
    Ok(nix::sys::uio::process_vm_writev(
        nix::unistd::Pid::from_raw(pid.0),
        &[io::IoSlice::new(local)],
        &remote,
    )?)
}

/// Maps an image file read-only, so its pages can be handed to process_vm_writev without
/// first copying them into a buffer.
pub fn map_image(file: &std::fs::File) -> io::Result<memmap2::Mmap> {
    // SAFETY: the mapping is read-only and private to this process; the file is an image
    // being restored that nothing is expected to truncate meanwhile (if something did,
    // reads past the new end would fault, as for any mapped file).
    unsafe { memmap2::MmapOptions::new().map(file) }
}

/// A userfaultfd of another process (created inside it, taken with pidfd_getfd): its
/// UFFDIO_COPY allocates a page in that process and fills it in one step, without first
/// zeroing it, which is what makes it the fastest way to fill fresh anonymous memory.
pub struct Uffd(OwnedFd);

pub(super) const UFFD_API: u64 = 0xAA;
impl Uffd {
    /// Performs the API handshake on a userfaultfd.
    pub fn new(fd: OwnedFd) -> io::Result<Uffd> {
        Uffd::with_features(fd, 0)
    }

    /// Performs the API handshake asking for `features` (`uffd_feature`); fails when the
    /// kernel lacks one.
    pub fn with_features(fd: OwnedFd, features: u64) -> io::Result<Uffd> {
        let mut api = [UFFD_API, features, 0];
        // SAFETY: UFFDIO_API reads and writes one struct uffdio_api (3 x u64) in `api`.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), uffd_iowr(0x3F, 24), api.as_mut_ptr()) };
        check(ret as libc::c_long)?;
        Ok(Uffd(fd))
    }

    /// Performs the API handshake asking for asynchronous write protection
    /// (`UFFD_FEATURE_WP_ASYNC`, Linux 6.7): a write to a protected page is let through
    /// by the kernel, which only clears the page's write-protect bit, so PAGEMAP_SCAN
    /// can tell the pages written since the last reset. The kernel drops the protection
    /// when the last fd of the userfaultfd closes.
    pub fn new_write_tracking(fd: OwnedFd) -> io::Result<Uffd> {
        const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
        Uffd::with_features(fd, UFFD_FEATURE_WP_ASYNC)
    }

    /// A userfaultfd whose API handshake was done already (one taken over from the
    /// process that kept it open).
    pub fn from_handshaken(fd: OwnedFd) -> Uffd {
        Uffd(fd)
    }

    /// The userfaultfd itself (to hand it to a process that keeps it open).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// Registers `[start, start + len)` for write protection (`UFFDIO_REGISTER_MODE_WP`).
    pub fn register_wp(&self, start: u64, len: u64) -> io::Result<()> {
        let mut reg = [start, len, 2 /* UFFDIO_REGISTER_MODE_WP */, 0];
        // SAFETY: UFFDIO_REGISTER reads and writes one struct uffdio_register (4 x u64).
        let ret = unsafe { libc::ioctl(self.0.as_raw_fd(), uffd_iowr(0x00, 32), reg.as_mut_ptr()) };
        check(ret as libc::c_long).map(drop)
    }

    /// The userfaultfd a fork event brought (its handshake was the parent's).
    pub fn from_event(fd: OwnedFd) -> Uffd {
        Uffd(fd)
    }

    /// UFFDIO_ZEROPAGE: maps zero pages at `[dst, dst + len)` in the other process and
    /// wakes whoever waits there; returns the bytes mapped.
    pub fn zeropage(&self, dst: u64, len: u64) -> io::Result<usize> {
        let mut args = [dst, len, 0, 0];
        // SAFETY: UFFDIO_ZEROPAGE reads a struct uffdio_zeropage (range, mode) and writes
        // its last field (4 x 64 bits, all in `args`).
        let ret =
            unsafe { libc::ioctl(self.0.as_raw_fd(), uffd_iowr(0x04, 32), args.as_mut_ptr()) };
        let mapped = args[3] as i64;
        if ret < 0 && mapped <= 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(mapped.max(0) as usize)
    }

    /// UFFDIO_WAKE: wakes the threads waiting on a fault in `[start, start + len)`.
    pub fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let range = [start, len];
        // SAFETY: UFFDIO_WAKE reads one struct uffdio_range (2 x u64).
        let ret = unsafe { libc::ioctl(self.0.as_raw_fd(), uffd_ior(0x02, 16), range.as_ptr()) };
        check(ret as libc::c_long).map(drop)
    }

    /// Waits up to `timeout_ms` for events, then reads those queued (at most
    /// `UFFD_EVENTS_PER_READ`); none when the wait timed out, or at once when `stop`
    /// (an eventfd, say) is readable.
    pub fn read_events(&self, timeout_ms: i32, stop: BorrowedFd<'_>) -> io::Result<Vec<UffdEvent>> {
        // A userfaultfd without O_NONBLOCK polls as an error at once, whatever is
        // queued (fs/userfaultfd.c, userfaultfd_poll): set it before the first wait, or
        // every wait returns at once and says nothing. The flag is the open file's, so
        // once set it stays for every duplicate.
        // SAFETY: fcntl(2) on our fd with integer arguments.
        unsafe {
            let flags = libc::fcntl(self.0.as_raw_fd(), libc::F_GETFL);
            if flags >= 0 && flags & libc::O_NONBLOCK == 0 {
                libc::fcntl(self.0.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        let mut pfds = [self.0.as_raw_fd(), stop.as_raw_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: poll(2) on two pollfds we own.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(Vec::new())
            } else {
                Err(e)
            };
        }
        let [pfd, stopped] = pfds;
        if n == 0 || stopped.revents != 0 || pfd.revents == 0 {
            return Ok(Vec::new());
        }
        // struct uffd_msg: event (u8), 7 reserved bytes, a 24-byte argument.
        let mut raw = [[0u64; 4]; UFFD_EVENTS_PER_READ];
        // SAFETY: read(2) into `raw`, which we own, at most its size.
        let got = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                raw.as_mut_ptr().cast(),
                std::mem::size_of_val(&raw),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                // Woken for a fault another reader took, or one already woken: wait
                // again at once. Only a userfaultfd that polls as an error or hangup
                // (an address space that is gone) would spin: wait out the timeout.
                Some(libc::EAGAIN) => {
                    if pfd.revents & libc::POLLIN == 0 {
                        let pause = timeout_ms.clamp(0, 20) as u64;
                        std::thread::sleep(Duration::from_millis(pause));
                    }
                    Ok(Vec::new())
                }
                Some(libc::EINTR) => Ok(Vec::new()),
                _ => Err(e),
            };
        }
        let mut out = Vec::new();
        for m in &raw[..got as usize / 32] {
            let event = (m[0] & 0xff) as u8;
            out.push(match event {
                0x12 => UffdEvent::PageFault {
                    addr: m[2],
                    tid: (m[3] & 0xffff_ffff) as i32,
                },
                0x13 => {
                    let raw_fd = (m[1] & 0xffff_ffff) as RawFd;
                    // SAFETY: the kernel installed this new uffd in our table with the
                    // event, for us alone.
                    UffdEvent::Fork(unsafe { OwnedFd::from_raw_fd(raw_fd) })
                }
                0x14 => UffdEvent::Remap {
                    from: m[1],
                    to: m[2],
                    len: m[3],
                },
                0x15 | 0x16 => UffdEvent::Remove {
                    start: m[1],
                    end: m[2],
                    unmapped: event == 0x16,
                },
                other => UffdEvent::Other(other),
            });
        }
        Ok(out)
    }

    /// Registers `[start, start + len)` for missing-page handling.
    pub fn register_missing(&self, start: u64, len: u64) -> io::Result<()> {
        let mut reg = [start, len, 1 /* UFFDIO_REGISTER_MODE_MISSING */, 0];
        // SAFETY: UFFDIO_REGISTER reads and writes one struct uffdio_register (4 x u64).
        let ret = unsafe { libc::ioctl(self.0.as_raw_fd(), uffd_iowr(0x00, 32), reg.as_mut_ptr()) };
        check(ret as libc::c_long).map(drop)
    }

    /// UFFDIO_WRITEPROTECT: write-protects `[start, start + len)` (`protect`), or lifts
    /// the protection and wakes the threads waiting to write there. The range must lie in
    /// VMAs registered for write protection with this userfaultfd (ENOENT otherwise).
    pub fn write_protect(&self, start: u64, len: u64, protect: bool) -> io::Result<()> {
        // struct uffdio_writeprotect: a uffdio_range and a mode (MODE_WP = 1).
        let mut args = [start, len, u64::from(protect)];
        // SAFETY: UFFDIO_WRITEPROTECT reads and writes one struct uffdio_writeprotect
        // (3 x u64), all in `args`.
        let ret =
            unsafe { libc::ioctl(self.0.as_raw_fd(), uffd_iowr(0x06, 24), args.as_mut_ptr()) };
        check(ret as libc::c_long).map(drop)
    }

    pub fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        let range = [start, len];
        // SAFETY: UFFDIO_UNREGISTER reads one struct uffdio_range (2 x u64).
        let ret = unsafe { libc::ioctl(self.0.as_raw_fd(), uffd_ior(0x01, 16), range.as_ptr()) };
        check(ret as libc::c_long).map(drop)
    }

    /// UFFDIO_COPY of `src` to `dst` in the other process; returns the bytes copied
    /// (short when a page there already exists).
    pub fn copy(&self, dst: u64, src: &[u8]) -> io::Result<usize> {
        let mut args = [dst, src.as_ptr() as u64, src.len() as u64, 0, 0];
        // SAFETY: UFFDIO_COPY reads `len` bytes at `src` (which we borrow) and writes the
        // result into the last field of `args` (struct uffdio_copy, 5 x 64 bits).
        let ret =
            unsafe { libc::ioctl(self.0.as_raw_fd(), uffd_iowr(0x03, 40), args.as_mut_ptr()) };
        let copied = args[4] as i64;
        if ret < 0 && copied <= 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(copied.max(0) as usize)
    }
}

/// userfaultfd features a lazy restore asks for (linux/userfaultfd.h): fork, mremap,
/// madvise(MADV_DONTNEED/REMOVE) and munmap are reported, and faults carry the tid.
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
/// Write-protect faults are reported (with UFFD_PAGEFAULT_FLAG_WP).
pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;

/// Messages one `Uffd::read_events` takes at most.
pub const UFFD_EVENTS_PER_READ: usize = 64;

/// One message of a userfaultfd.
#[derive(Debug)]
pub enum UffdEvent {
    /// A thread (`tid`) waits for the page at `addr`.
    PageFault { addr: u64, tid: i32 },
    /// The process forked: the child's memory is registered with this new userfaultfd.
    Fork(OwnedFd),
    /// mremap(2) moved `[from, from + len)` to `to`.
    Remap { from: u64, to: u64, len: u64 },
    /// `[start, end)` was unmapped (`unmapped`) or emptied by madvise(2): missing pages
    /// there are zero from now on.
    Remove {
        start: u64,
        end: u64,
        unmapped: bool,
    },
    /// An event this code does not ask for.
    Other(u8),
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// What the lazy-pages watchdog is told on its channel (one byte, with fds).
pub mod lazy_watch {
    /// A restored process: its pidfd and its userfaultfd.
    pub const TASK: u8 = b'T';
    /// A userfaultfd only (of a process forked in the tree).
    pub const UFFD: u8 = b'U';
    /// A pidfd only (a process forked in the tree, learnt from its fault).
    pub const PIDFD: u8 = b'P';
    /// Every page is in: let go of everything and exit.
    pub const DONE: u8 = b'D';
    /// Kill the tree now, then exit.
    pub const KILL: u8 = b'K';
}

/// Most fds the lazy-pages watchdog holds (pidfds and userfaultfds together).
pub const LAZY_WATCH_FDS: usize = 4096;

/// Forks the lazy-pages watchdog: a process that holds a duplicate of every
/// userfaultfd of a lazily restored tree and a pidfd of each of its processes (sent on
/// `channel`, a SOCK_SEQPACKET socket, see `lazy_watch`). While it holds them, a
/// userfaultfd stays open even if the restorer (`restorer`, a pidfd of it) dies, so a
/// missing page waits instead of being mapped as zeros. If the restorer dies, or
/// closes the channel, before saying `DONE`, the watchdog kills every process it knows,
/// waits (bounded, 10 s) until they are gone, and exits: the tree never runs on with
/// pages that were not restored. The caller reaps it.
///
/// The child runs only raw syscalls on its stack (no allocation, no locks), so this is
/// safe to call from a multi-threaded process.
pub fn fork_lazy_watchdog(restorer: BorrowedFd<'_>, channel: BorrowedFd<'_>) -> io::Result<Pid> {
    let mut keep = [restorer.as_raw_fd(), channel.as_raw_fd()];
    keep.sort_unstable();
    let (restorer, channel) = (restorer.as_raw_fd(), channel.as_raw_fd());
    // SAFETY: fork has no memory-safety preconditions; the child below only makes
    // async-signal-safe syscalls on its own stack and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(Pid(pid));
    }
    // SAFETY: in the child only, with the fds in `keep` open.
    unsafe { lazy_watchdog(&keep, restorer, channel) }
}

/// The body of the lazy-pages watchdog (see `fork_lazy_watchdog`).
///
/// # Safety
/// Only in the child of a fork, with the fds open.
unsafe fn lazy_watchdog(keep: &[RawFd; 2], restorer: RawFd, channel: RawFd) -> ! {
    // SAFETY: raw syscalls on integers and on memory of this process only.
    unsafe {
        super::watchdog::watchdog_prologue(keep);
        // The pidfds, -1 where a slot holds a userfaultfd (only kept open).
        let mut pidfds = [-1 as RawFd; LAZY_WATCH_FDS];
        let mut held = 0usize;
        let mut pfds = [
            libc::pollfd {
                fd: restorer,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: channel,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let kill = loop {
            let n = libc::syscall(libc::SYS_poll, pfds.as_mut_ptr(), 2, -1);
            if n <= 0 {
                continue;
            }
            // The channel first: a DONE sent just before the restorer exited counts.
            let mut verdict = None;
            loop {
                let mut tag = 0u8;
                let mut iov = libc::iovec {
                    iov_base: (&mut tag as *mut u8).cast(),
                    iov_len: 1,
                };
                let mut control = [0u64; 8];
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = std::mem::size_of_val(&control);
                let got = libc::syscall(
                    libc::SYS_recvmsg,
                    channel,
                    &mut msg as *mut libc::msghdr,
                    libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
                );
                if got == 0 {
                    // The restorer closed the channel without DONE.
                    verdict = Some(true);
                    break;
                }
                if got < 0 {
                    break;
                }
                let mut fds = [-1 as RawFd; 2];
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                if !cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for (i, slot) in fds.iter_mut().enumerate().take(count.min(2)) {
                        *slot = data.add(i).read_unaligned();
                    }
                }
                match tag {
                    lazy_watch::DONE => verdict = Some(false),
                    lazy_watch::KILL => verdict = Some(true),
                    _ => {}
                }
                // A pidfd is kept to kill with; a userfaultfd only to be held open.
                let pidfd = match tag {
                    lazy_watch::TASK | lazy_watch::PIDFD => fds[0],
                    _ => -1,
                };
                for fd in fds.into_iter().filter(|&fd| fd >= 0) {
                    if held < LAZY_WATCH_FDS {
                        pidfds[held] = if fd == pidfd { fd } else { -1 };
                        held += 1;
                    }
                    // Beyond the table the fd stays open, unnamed, until we exit.
                }
                if verdict.is_some() {
                    break;
                }
            }
            if verdict.is_some() {
                break verdict == Some(true);
            }
            if pfds[0].revents != 0 {
                // The restorer is gone without DONE.
                break true;
            }
        };
        if kill {
            for &fd in pidfds[..held].iter().filter(|&&fd| fd >= 0) {
                libc::syscall(libc::SYS_pidfd_send_signal, fd, libc::SIGKILL, 0, 0);
            }
            // The userfaultfds stay open until the processes are gone: one closing
            // earlier would let a fault still in flight map a zero page.
            for &fd in pidfds[..held].iter().filter(|&&fd| fd >= 0) {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                libc::syscall(libc::SYS_poll, &mut pfd as *mut libc::pollfd, 1, 10_000);
            }
        }
        libc::syscall(libc::SYS_exit_group, 0);
        // exit_group does not return.
        #[allow(clippy::empty_loop)]
        loop {}
    }
}

pub(super) const fn uffd_iowr(nr: u64, size: u64) -> libc::c_ulong {
    ((3 << 30) | (size << 16) | (0xAA << 8) | nr) as libc::c_ulong
}
pub(super) const fn uffd_ior(nr: u64, size: u64) -> libc::c_ulong {
    ((2 << 30) | (size << 16) | (0xAA << 8) | nr) as libc::c_ulong
}

/// Starts the keeper of write-tracking userfaultfds (`dump/track.rs`): a process of its
/// own (forked twice, so that nobody has to reap it, in a session of its own) that holds
/// the fds in `keep` at the same numbers and nothing else, so the kernel keeps the
/// tracked memory write-protected after the dumper exits. It exits when every process
/// of `pidfds` (pidfds, also kept) has exited, or after `timeout_secs`; the next dump
/// takes the fds over with pidfd_getfd and kills it. Returns its pid.
///
/// The children run only raw syscalls on data prepared before the fork (no allocation,
/// no locks), so this is safe to call from a multi-threaded process.
pub fn fork_write_tracker(keep: &[RawFd], pidfds: &[RawFd], timeout_secs: u64) -> io::Result<Pid> {
    let mut keep: Vec<RawFd> = keep.iter().chain(pidfds).copied().collect();
    keep.sort_unstable();
    keep.dedup();
    let mut polled: Vec<libc::pollfd> = pidfds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut pipe = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    check(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long)?;
    // SAFETY: the pipe's fds, ours alone from here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    // SAFETY: fork has no memory-safety preconditions; the children below only make
    // async-signal-safe syscalls on data prepared before the fork and never return.
    let first = unsafe { libc::fork() };
    if first < 0 {
        return Err(io::Error::last_os_error());
    }
    if first == 0 {
        // SAFETY: in the first child only; raw syscalls on prepared data.
        unsafe { tracker_first_child(write_end.as_raw_fd(), &keep, &mut polled, timeout_secs) }
    }
    drop(write_end);
    let mut pid_bytes = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        // SAFETY: reads at most the rest of `pid_bytes`.
        let n = unsafe {
            libc::read(
                read_end.as_raw_fd(),
                pid_bytes[got..].as_mut_ptr().cast(),
                4 - got,
            )
        };
        if n <= 0 {
            if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        got += n as usize;
    }
    let _ = wait_child(Pid(first));
    if got < 4 {
        return Err(io::Error::other("the memory tracker did not start"));
    }
    Ok(Pid(i32::from_ne_bytes(pid_bytes)))
}

/// The first child of `fork_write_tracker`: forks the tracker, reports its pid through
/// `report` and exits.
///
/// # Safety
/// Only in the child of a fork, with the fds open.
unsafe fn tracker_first_child(
    report: RawFd,
    keep: &[RawFd],
    polled: &mut [libc::pollfd],
    timeout_secs: u64,
) -> ! {
    // SAFETY: raw syscalls on data prepared before the fork.
    unsafe {
        let pid = libc::fork();
        if pid != 0 {
            let bytes = pid.to_ne_bytes();
            libc::write(report, bytes.as_ptr().cast(), 4);
            libc::_exit(if pid < 0 { 1 } else { 0 });
        }
        libc::setsid();
        super::fd::close_all_fds_except(keep);
        // Each loop waits at most a second; a process that exited is polled no more.
        let mut waited = 0u64;
        let mut alive = polled.len();
        while alive > 0 && waited < timeout_secs {
            let n = libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, 1000);
            if n > 0 {
                for p in polled.iter_mut() {
                    if p.fd >= 0 && p.revents != 0 {
                        p.fd = -1;
                        alive -= 1;
                    }
                }
            } else {
                waited += 1;
            }
        }
        libc::_exit(0)
    }
}

/// userfaultfd(2) in this process (`O_CLOEXEC | flags`).
pub fn userfaultfd(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall returning a new fd (or -1).
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | flags) };
    check(fd)?;
    // SAFETY: the kernel just returned this fd, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// pidfd_send_signal(2): `sig` to the process of `pidfd` (never to a later one that got
/// the same pid).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: a plain syscall with a null siginfo (the kernel fills one in).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check(ret).map(drop)
}

/// A pages file on tmpfs filled by UFFDIO_COPY into a shared mapping of it: each copy
/// allocates the file's page and fills it in one step. write(2) takes the file's inode
/// lock, so two workers writing one file write one at a time (the dump's floor), and a
/// fault through a plain mapping zeroes each page before it is written; this does
/// neither (measured here: 1 GiB by two threads in 0.22-0.33 s, against 0.36-0.56 s by
/// pwrite). The mapping's pages are dropped from it as they are copied (they stay in
/// the file), so that the dumper's memory does not grow with the file.
pub struct ShmemFill {
    map: *mut u8,
    len: usize,
    uffd: Uffd,
}

// SAFETY: the mapping is only written through UFFDIO_COPY and dropped with
// MADV_DONTNEED, both of which the kernel serialises; nothing reads it.
unsafe impl Send for ShmemFill {}
// SAFETY: as above.
unsafe impl Sync for ShmemFill {}

impl ShmemFill {
    /// For `file` (on tmpfs, nothing allocated in it yet: a copy fails on a page the
    /// file has) to be filled up to `len` bytes: None where that does not hold or the
    /// kernel refuses, and the caller writes the file instead. Grows the file to `len`
    /// (a copy needs its page inside the file).
    pub fn new(file: &std::fs::File, len: u64) -> Option<ShmemFill> {
        use std::os::unix::fs::MetadataExt;
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        let meta = file.metadata().ok()?;
        let tmpfs = super::fstatfs_type(file.as_fd()).is_ok_and(|t| t == TMPFS_MAGIC);
        if meta.blocks() != 0 || !tmpfs || len == 0 || !len.is_multiple_of(page_size()) {
            return None;
        }
        let uffd = userfaultfd(0).and_then(Uffd::new).ok()?;
        if meta.len() < len {
            file.set_len(len).ok()?;
        }
        // SAFETY: a new shared mapping of our own file at an address the kernel picks.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return None;
        }
        let fill = ShmemFill {
            map: map.cast(),
            len: len as usize,
            uffd,
        };
        if fill.uffd.register_missing(map as u64, len).is_err() {
            return None;
        }
        Some(fill)
    }

    /// Copies `bytes` to `offset` of the file (page-aligned); returns how many were
    /// copied, the rest (a page already in the file, say) left to the caller.
    pub fn copy(&self, bytes: &[u8], offset: u64) -> usize {
        let end = offset.checked_add(bytes.len() as u64);
        if !offset.is_multiple_of(page_size()) || end.is_none_or(|e| e > self.len as u64) {
            return 0;
        }
        let dst = self.map as u64 + offset;
        let copied = self.uffd.copy(dst, bytes).unwrap_or(0);
        let mapped = copied / page_size() as usize * page_size() as usize;
        if mapped > 0 {
            // SAFETY: advice on a range of our own mapping; the pages stay in the file.
            unsafe {
                libc::madvise(
                    self.map.add(offset as usize).cast(),
                    mapped,
                    libc::MADV_DONTNEED,
                )
            };
        }
        copied
    }
}

impl Drop for ShmemFill {
    fn drop(&mut self) {
        // SAFETY: our own mapping; unmapping it also ends its registration.
        unsafe { libc::munmap(self.map.cast(), self.len) };
    }
}

/// Pages laid out at consecutive offsets from pieces of several image files, without
/// copying the pieces: one reserved private anonymous mapping, over which each file
/// piece is mapped (read-only, private) at its place; small pieces are copied into the
/// reservation instead, so that a chain of single pages does not cost one mapping each.
/// Read-only once built.
pub struct ComposedPages {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by the value and only read through `bytes` once built
// (`map_file` and `write` take `&mut self`).
unsafe impl Send for ComposedPages {}
// SAFETY: as above: shared references only read.
unsafe impl Sync for ComposedPages {}

impl ComposedPages {
    /// Reserves `len` bytes (a multiple of the page size, not zero).
    pub fn reserve(len: usize) -> io::Result<ComposedPages> {
        if len == 0 || !len.is_multiple_of(page_size() as usize) {
            return Err(io::Error::other(format!("composed pages of {len} bytes")));
        }
        // SAFETY: a new private anonymous mapping at an address the kernel picks; nothing
        // else refers to it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(ComposedPages {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Maps `len` bytes of `file` from `offset` at `at` (all page-aligned, inside).
    /// Ok(false) when the kernel would not map it (the limit of mappings reached): the
    /// range is then plain reserved memory for `write`.
    pub fn map_file(
        &mut self,
        at: usize,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> io::Result<bool> {
        let page = page_size() as usize;
        if !at.is_multiple_of(page)
            || !len.is_multiple_of(page)
            || !offset.is_multiple_of(page as u64)
        {
            return Err(io::Error::other("a file piece not page-aligned"));
        }
        if at.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(io::Error::other("a file piece past the composed pages"));
        }
        // SAFETY: MAP_FIXED replaces pages of our own reservation only (checked inside
        // it above); the file piece is mapped read-only and private.
        let got = unsafe {
            libc::mmap(
                self.ptr.add(at).cast(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if got != libc::MAP_FAILED {
            return Ok(true);
        }
        // A failed MAP_FIXED may have unmapped the range: reserved memory there again.
        // SAFETY: as above, inside our reservation, anonymous and private.
        let again = unsafe {
            libc::mmap(
                self.ptr.add(at).cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if again == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(false)
    }

    /// Copies `bytes` to `at` (a part not mapped from a file).
    pub fn write(&mut self, at: usize, bytes: &[u8]) -> io::Result<()> {
        if at.checked_add(bytes.len()).is_none_or(|end| end > self.len) {
            return Err(io::Error::other("bytes past the composed pages"));
        }
        // SAFETY: inside our writable reservation (checked above); `bytes` cannot overlap
        // it, as `&mut self` excludes any borrow of ours.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(at), bytes.len()) };
        Ok(())
    }

    /// Maps `len` bytes from `start` in at once (MADV_POPULATE_READ; best effort).
    pub fn populate(&self, start: usize, len: usize) {
        let page = page_size() as usize;
        let (from, to) = (start / page * page, start.saturating_add(len).min(self.len));
        if from >= to {
            return;
        }
        // SAFETY: advice on a range inside our own mapping; it changes no contents.
        unsafe {
            libc::madvise(
                self.ptr.add(from).cast(),
                to - from,
                libc::MADV_POPULATE_READ,
            )
        };
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes mapped readable for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for ComposedPages {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no borrow of it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod composed_tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn composed_pages_read_mapped_and_copied_pieces_in_place() {
        let page = page_size() as usize;
        let path = std::env::temp_dir().join(format!("composed-{}", std::process::id()));
        let mut file = std::fs::File::create(&path).unwrap();
        let content: Vec<u8> = (0..4 * page).map(|i| (i / page) as u8 + 1).collect();
        file.write_all(&content).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut c = ComposedPages::reserve(3 * page).unwrap();
        // The file's pages 2-3 first, then a copied page of 0x77.
        assert!(c.map_file(0, &file, 2 * page as u64, 2 * page).unwrap());
        c.write(2 * page, &vec![0x77; page]).unwrap();
        let b = c.bytes();
        assert!(b[..page].iter().all(|&x| x == 3));
        assert!(b[page..2 * page].iter().all(|&x| x == 4));
        assert!(b[2 * page..].iter().all(|&x| x == 0x77));
        c.populate(0, 3 * page);
        // A file the kernel will not map (procfs): Ok(false), the range writable again.
        let unmappable = std::fs::File::open("/proc/self/status").unwrap();
        assert!(!c.map_file(page, &unmappable, 0, page).unwrap());
        c.write(page, &vec![0x55; page]).unwrap();
        assert!(c.bytes()[page..2 * page].iter().all(|&x| x == 0x55));
        assert!(
            c.bytes()[..page].iter().all(|&x| x == 3),
            "the rest untouched"
        );
        // Outside the reservation, or not aligned: refused, nothing mapped.
        assert!(c.map_file(2 * page, &file, 0, 2 * page).is_err());
        assert!(c.map_file(1, &file, 0, page).is_err());
        assert!(c.write(3 * page - 1, &[0, 0]).is_err());
        assert!(ComposedPages::reserve(0).is_err());
        drop(file);
        let _ = std::fs::remove_file(&path);
    }
}

#[cfg(test)]
mod shmem_fill_tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_tmpfs_file_is_filled_by_copies_and_reads_back() {
        let page = page_size() as usize;
        let path = format!("/dev/shm/criu-rs-shmem-fill-{}", std::process::id());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        let Some(fill) = ShmemFill::new(&file, 3 * page as u64) else {
            // No userfaultfd for shmem here: the caller writes instead (nothing to test).
            return;
        };
        assert_eq!(fill.copy(&vec![1u8; page], 0), page);
        assert_eq!(fill.copy(&vec![3u8; page], 2 * page as u64), page);
        // Past the end, or not page-aligned: nothing copied, left to the caller.
        assert_eq!(fill.copy(&vec![4u8; page], 3 * page as u64), 0);
        assert_eq!(fill.copy(&vec![4u8; page], 1), 0);
        // A page the file has already: not copied again.
        assert_eq!(fill.copy(&vec![5u8; page], 0), 0);
        drop(fill);
        let mut back = vec![0u8; 3 * page];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..page].iter().all(|&b| b == 1));
        assert!(
            back[page..2 * page].iter().all(|&b| b == 0),
            "the hole reads as zeros"
        );
        assert!(back[2 * page..].iter().all(|&b| b == 3));
        // A file with pages already allocated is written by the caller.
        assert!(ShmemFill::new(&file, 3 * page as u64).is_none());
    }
}
