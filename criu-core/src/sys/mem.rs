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
            category_mask: 0,
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
    let size = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a fresh mapping at an address the kernel picks aliases nothing of ours; it
    // is never accessed and is unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED
                | libc::MAP_ANONYMOUS
                | if noreserve { libc::MAP_NORESERVE } else { 0 },
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
        let mut api = [UFFD_API, 0, 0];
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
        let mut api = [UFFD_API, UFFD_FEATURE_WP_ASYNC, 0];
        // SAFETY: UFFDIO_API reads and writes one struct uffdio_api (3 x u64) in `api`.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), uffd_iowr(0x3F, 24), api.as_mut_ptr()) };
        check(ret as libc::c_long)?;
        Ok(Uffd(fd))
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

    /// Registers `[start, start + len)` for missing-page handling.
    pub fn register_missing(&self, start: u64, len: u64) -> io::Result<()> {
        let mut reg = [start, len, 1 /* UFFDIO_REGISTER_MODE_MISSING */, 0];
        // SAFETY: UFFDIO_REGISTER reads and writes one struct uffdio_register (4 x u64).
        let ret = unsafe { libc::ioctl(self.0.as_raw_fd(), uffd_iowr(0x00, 32), reg.as_mut_ptr()) };
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
        let mut next: libc::c_uint = 0;
        for &fd in keep {
            if fd < 0 {
                continue;
            }
            if (fd as libc::c_uint) > next {
                libc::syscall(libc::SYS_close_range, next, fd as libc::c_uint - 1, 0);
            }
            next = fd as libc::c_uint + 1;
        }
        libc::syscall(libc::SYS_close_range, next, libc::c_uint::MAX, 0);
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
