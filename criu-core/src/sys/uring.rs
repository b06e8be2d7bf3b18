//! io_uring rings: made, probed, read and brought to saved counters (`files/io_uring.rs`
//! says what the dump and the restore do with them).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{check, page_size, process_vm_readv, Pid};

/// mmap offset of the region holding the SQ and CQ rings (and, on this kernel, both in one:
/// IORING_FEAT_SINGLE_MMAP).
pub const IORING_OFF_SQ_RING: u64 = 0;
/// mmap offset of the CQ ring, the same region since IORING_FEAT_SINGLE_MMAP.
pub const IORING_OFF_CQ_RING: u64 = 0x800_0000;
/// mmap offset of the SQE array.
pub const IORING_OFF_SQES: u64 = 0x1000_0000;
/// `cq_entries` is given, not twice `entries`.
pub const IORING_SETUP_CQSIZE: u32 = 1 << 3;
/// The ring has no SQ index array: slot N of the SQEs is taken for index N.
pub const IORING_SETUP_NO_SQARRAY: u32 = 1 << 16;
/// 128-byte SQEs.
pub const IORING_SETUP_SQE128: u32 = 1 << 10;
/// 32-byte CQEs.
pub const IORING_SETUP_CQE32: u32 = 1 << 11;
/// The regions are memory the caller provides (`user_addr` of `sq_off` and `cq_off`).
pub const IORING_SETUP_NO_MMAP: u32 = 1 << 14;

const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_REGISTER_EVENTFD: u32 = 4;
const IORING_UNREGISTER_EVENTFD: u32 = 5;
const IORING_REGISTER_PROBE: u32 = 8;
const SQE_BYTES: usize = 64;
const CQE_BYTES: usize = 16;

/// Where a ring's words are in its rings region, and its sizes: what io_uring_setup
/// returns in `struct io_uring_params` (30 u32 words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    pub sq_entries: u32,
    pub cq_entries: u32,
    pub flags: u32,
    pub sq_head: u32,
    pub sq_tail: u32,
    /// The SQ index array, absent with IORING_SETUP_NO_SQARRAY.
    sq_array: Option<u32>,
    pub cq_head: u32,
    pub cq_tail: u32,
    cqes: u32,
}

impl RingLayout {
    fn from_params(p: &[u32; 30]) -> RingLayout {
        RingLayout {
            sq_entries: p[0],
            cq_entries: p[1],
            flags: p[2],
            sq_head: p[10],
            sq_tail: p[11],
            sq_array: (p[2] & IORING_SETUP_NO_SQARRAY == 0).then_some(p[16]),
            cq_head: p[20],
            cq_tail: p[21],
            cqes: p[25],
        }
    }

    /// The length of the rings region (whole pages), as the kernel sizes it.
    pub fn rings_len(&self) -> usize {
        let cqe_bytes = if self.flags & IORING_SETUP_CQE32 != 0 {
            2 * CQE_BYTES
        } else {
            CQE_BYTES
        };
        let cq_end =
            (self.cqes as usize + self.cq_entries as usize * cqe_bytes).next_multiple_of(64);
        let end = match self.sq_array {
            Some(array) => (array as usize + self.sq_entries as usize * 4).max(cq_end),
            None => cq_end,
        };
        end.next_multiple_of(page_size() as usize)
    }

    /// The length of the SQE region (whole pages).
    pub fn sqes_len(&self) -> usize {
        let sqe_bytes = if self.flags & IORING_SETUP_SQE128 != 0 {
            2 * SQE_BYTES
        } else {
            SQE_BYTES
        };
        (self.sq_entries as usize * sqe_bytes).next_multiple_of(page_size() as usize)
    }

    /// The byte range of the SQ index array in the rings region, if the ring has one.
    pub fn sq_array_range(&self) -> Option<std::ops::Range<usize>> {
        self.sq_array
            .map(|a| a as usize..a as usize + self.sq_entries as usize * 4)
    }

    /// The layout, whatever the flags (a ring in our memory has NO_MMAP on top).
    fn without_flags(self) -> RingLayout {
        RingLayout { flags: 0, ..self }
    }

    /// The same layout without an SQ index array (what a NO_SQARRAY ring has).
    pub fn without_sq_array(self) -> RingLayout {
        RingLayout {
            flags: self.flags | IORING_SETUP_NO_SQARRAY,
            sq_array: None,
            ..self
        }
    }
}

/// A ring of our own, made by [`ring_setup`].
pub struct Ring {
    fd: OwnedFd,
    pub layout: RingLayout,
}

/// io_uring_setup(2) with `sq_entries` slots, `cq_entries` completions (with
/// IORING_SETUP_CQSIZE in `flags`; otherwise the kernel's twice) and `flags`.
pub fn ring_setup(sq_entries: u32, cq_entries: u32, flags: u32) -> io::Result<Ring> {
    let mut p = [0u32; 30];
    p[1] = cq_entries;
    p[2] = flags;
    // SAFETY: the kernel reads and writes one io_uring_params (120 bytes) in `p`.
    let fd = check(unsafe { libc::syscall(libc::SYS_io_uring_setup, sq_entries, p.as_mut_ptr()) })?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    Ok(Ring {
        fd,
        layout: RingLayout::from_params(&p),
    })
}

/// io_uring_setup(2) with default parameters and `entries` submission slots (tests make
/// rings with it).
pub fn io_uring_setup(entries: u32) -> io::Result<OwnedFd> {
    ring_setup(entries, 0, 0).map(Ring::into_fd)
}

fn register(fd: BorrowedFd<'_>, opcode: u32, arg: *const libc::c_void, nr: u32) -> io::Result<i64> {
    // SAFETY: every caller passes `arg` pointing at `nr` elements of what `opcode` reads
    // or writes, alive for the call.
    check(unsafe { libc::syscall(libc::SYS_io_uring_register, fd.as_raw_fd(), opcode, arg, nr) })
}

/// IORING_REGISTER_FILES: `files` become the ring's registered files (tests make rings
/// the dump refuses with it).
pub fn ring_register_files(fd: BorrowedFd<'_>, files: &[RawFd]) -> io::Result<()> {
    const IORING_REGISTER_FILES: u32 = 2;
    let nr =
        u32::try_from(files.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    register(fd, IORING_REGISTER_FILES, files.as_ptr().cast(), nr).map(drop)
}

/// IORING_REGISTER_PROBE, which changes nothing: fails with EEXIST on a ring made with
/// IORING_SETUP_SINGLE_ISSUER once its task has submitted (only that task may register).
pub fn ring_probe(fd: BorrowedFd<'_>) -> io::Result<()> {
    // struct io_uring_probe (16 bytes) and room for 64 ops of 8 bytes.
    let mut probe = [0u64; 2 + 64];
    register(fd, IORING_REGISTER_PROBE, probe.as_mut_ptr().cast(), 64).map(drop)
}

/// Whether the ring has an eventfd registered: registering one of ours fails with EBUSY
/// when it has. When it had none, ours is unregistered again at once, so the ring is
/// left as it was.
pub fn ring_has_eventfd(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let efd = super::eventfd(0, libc::EFD_CLOEXEC)?;
    let raw: i32 = efd.as_raw_fd();
    match register(fd, IORING_REGISTER_EVENTFD, (&raw as *const i32).cast(), 1) {
        Ok(_) => register(fd, IORING_UNREGISTER_EVENTFD, std::ptr::null(), 0).map(|_| false),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Maps `len` bytes of a ring's region at `offset`, shared.
fn map_region(fd: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<memmap2::MmapMut> {
    let file = File::from(fd.try_clone_to_owned()?);
    // SAFETY: a new shared mapping of a ring's region (or of a memfd to be one); the
    // kernel reads and writes it too, but only inside io_uring_enter and only words it
    // owns, while the bytes are copied here around those calls or read through
    // process_vm_readv; the head and tail words go through atomics.
    unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map_mut(&file)
    }
}

/// Reads the first `len` bytes of the region at `offset` of someone's ring (through
/// `fd`, a duplicate of their descriptor), page by page, stopping at the first page the
/// region does not have (a mapping longer than its region has holes where access
/// would fault, and the kernel does not say how long the region is). Returns what was
/// read: `len` bytes, or fewer when the region is shorter.
pub fn read_ring_region(fd: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let map = map_region(fd, offset, len)?;
    let page = page_size() as usize;
    let mut out = vec![0u8; len];
    let me = Pid(std::process::id() as i32);
    let base = map.as_ptr() as u64;
    let mut done = 0;
    while done < len {
        let n = page.min(len - done);
        match process_vm_readv(me, &mut out[done..done + n], &[(base + done as u64, n)]) {
            Ok(got) if got == n => done += n,
            Ok(_) => break,
            Err(e) if e.raw_os_error() == Some(libc::EFAULT) => break,
            Err(e) => return Err(e),
        }
    }
    out.truncate(done);
    Ok(out)
}

/// Whether someone's ring at rest has 128-byte SQEs and 32-byte CQEs, which only
/// fdinfo's listing of pending entries shows (` e0:` past an SQE's fields, ` extra1:`
/// past a CQE's). The ring has none pending, so for the time `fdinfo` reads it, one of
/// each is made to show by moving the SQ tail one ahead and the CQ head one back (words
/// the program owns; the kernel acts on them only in io_uring_enter, which nobody calls
/// on a frozen tree), and both are put back before this returns. `sq_tail` and
/// `cq_head` are the words' offsets (any ring's layout has them). `None` for the SQEs
/// when fdinfo lists no SQE (the SQ index array names no slot there).
pub fn ring_entry_sizes(
    fd: BorrowedFd<'_>,
    sq_tail: u32,
    cq_head: u32,
    fdinfo: impl FnOnce() -> io::Result<String>,
) -> io::Result<(Option<bool>, bool)> {
    let mut map = map_region(fd, IORING_OFF_SQ_RING, page_size() as usize)?;
    let base = map.as_mut_ptr();
    let word = |off: u32| {
        // SAFETY: offsets of aligned u32s in the first page of the rings region (the
        // header, which `map` maps); the kernel reads them atomically too.
        unsafe { AtomicU32::from_ptr(base.add(off as usize).cast::<u32>()) }
    };
    struct PutBack<'a> {
        tail: &'a AtomicU32,
        head: &'a AtomicU32,
        was: (u32, u32),
    }
    impl Drop for PutBack<'_> {
        fn drop(&mut self) {
            self.tail.store(self.was.0, Ordering::Release);
            self.head.store(self.was.1, Ordering::Release);
        }
    }
    let (tail, head) = (word(sq_tail), word(cq_head));
    let was = (tail.load(Ordering::Acquire), head.load(Ordering::Acquire));
    let put_back = PutBack { tail, head, was };
    tail.store(was.0.wrapping_add(1), Ordering::Release);
    head.store(was.1.wrapping_sub(1), Ordering::Release);
    let text = fdinfo();
    drop(put_back);
    let text = text?;
    let entry_after = |heading: &str| {
        text.lines()
            .skip_while(|l| !l.starts_with(heading))
            .nth(1)
            .filter(|l| l.starts_with(' '))
            .map(str::to_owned)
    };
    let sqe = entry_after("SQEs:");
    let cqe = entry_after("CQEs:").unwrap_or_default();
    Ok((sqe.map(|l| l.contains(" e0:")), cqe.contains(" extra1:")))
}

impl Ring {
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

/// The start of the name of the memfd holding a ring's regions that [`rebuild_ring`]
/// made, followed by `:FLAGS:SQES` (the setup flags, and where the SQEs are in it, in
/// hex; maps shows `/memfd:NAME (deleted)`): the rings region at offset 0, the SQEs
/// after it.
pub const RING_MEMFD_NAME: &str = "criu-rs-io_uring";

/// A ring made again from saved state ([`rebuild_ring`]): its descriptor and the memfd
/// holding its regions (the SQE region at `sqes_offset`), which tasks map where they had
/// the ring's regions.
pub struct RebuiltRing {
    pub fd: OwnedFd,
    pub memory: File,
    pub sqes_offset: u64,
}

/// Makes a ring with `sq_entries`, `cq_entries` and setup `flags` whose counters are
/// `count` (submissions taken, completions posted and reaped) and whose regions hold
/// `rings` and `sqes`: the saved state of a ring at rest.
///
/// A ring's own regions cannot be mapped at a chosen address (its `get_unmapped_area`
/// refuses any address, for mmap with MAP_FIXED and mremap alike), so the regions of
/// the new ring are memory we provide (IORING_SETUP_NO_MMAP): one memfd
/// ([`RING_MEMFD_NAME`]), mapped here for the kernel to pin, and by the tasks where they
/// had the regions. The counters are reached by submitting that many NOPs (modulo 2^32:
/// they wrap), each completed and reaped; the saved bytes are written last, with the
/// program's own words (SQ tail, CQ head, index array, SQEs, CQEs not reaped).
/// `progress` is told how many NOPs are done, now and then.
pub fn rebuild_ring(
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    count: u32,
    rings: &[u8],
    sqes: &[u8],
    mut progress: impl FnMut(u64),
) -> io::Result<RebuiltRing> {
    // Where the words are for these sizes and flags: a ring of our own, made and closed.
    let layout = ring_setup(sq_entries, cq_entries, flags)?.layout;
    if rings.len() > layout.rings_len() || sqes.len() > layout.sqes_len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "saved regions of {} and {} bytes do not fit a ring's {} and {}",
                rings.len(),
                sqes.len(),
                layout.rings_len(),
                layout.sqes_len()
            ),
        ));
    }
    // The name says how the ring was made and where its SQEs are, for a later dump.
    let name = format!("{RING_MEMFD_NAME}:{flags:x}:{:x}", layout.rings_len());
    let memory = File::from(super::memfd_create(name, libc::MFD_CLOEXEC)?);
    memory.set_len((layout.rings_len() + layout.sqes_len()) as u64)?;
    let mut whole = map_region(memory.as_fd(), 0, layout.rings_len() + layout.sqes_len())?;
    let (ring_map, sqe_map) = whole.split_at_mut(layout.rings_len());
    // Every slot a NOP (opcode 0, all zero), and index N for slot N.
    if let Some(range) = layout.sq_array_range() {
        for (i, word) in ring_map[range].chunks_exact_mut(4).enumerate() {
            word.copy_from_slice(&(i as u32).to_ne_bytes());
        }
    }
    let mut p = [0u32; 30];
    p[1] = cq_entries;
    p[2] = flags | IORING_SETUP_NO_MMAP;
    let user_addr = |p: &mut [u32; 30], word: usize, addr: *mut u8| {
        let addr = addr as u64;
        p[word] = addr as u32;
        p[word + 1] = (addr >> 32) as u32;
    };
    user_addr(&mut p, 18, sqe_map.as_mut_ptr());
    user_addr(&mut p, 28, ring_map.as_mut_ptr());
    // SAFETY: the kernel reads and writes one io_uring_params (120 bytes) in `p`, and
    // pins the pages of the two mappings, which stay mapped until it has.
    let fd = check(unsafe { libc::syscall(libc::SYS_io_uring_setup, sq_entries, p.as_mut_ptr()) })?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let made = RingLayout::from_params(&p);
    if made.without_flags() != layout.without_flags() {
        return Err(io::Error::other(format!(
            "a ring in our memory is laid out as {made:?}, not as {layout:?}"
        )));
    }
    let l = layout;
    let base = ring_map.as_mut_ptr();
    let word = |off: u32| {
        // SAFETY: `off` is an offset io_uring_setup gave for an aligned u32 of the rings
        // region, which `ring_map` maps whole; the kernel reads and writes it atomically
        // too.
        unsafe { AtomicU32::from_ptr(base.add(off as usize).cast::<u32>()) }
    };
    let batch_max = l.sq_entries.min(l.cq_entries);
    let mut left = count;
    let mut done = 0u64;
    while left > 0 {
        let batch = left.min(batch_max);
        let tail = word(l.sq_tail).load(Ordering::Acquire);
        word(l.sq_tail).store(tail.wrapping_add(batch), Ordering::Release);
        // SAFETY: io_uring_enter on our ring, without a signal mask.
        let taken = check(unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                fd.as_raw_fd(),
                batch,
                batch,
                IORING_ENTER_GETEVENTS,
                0usize,
                0usize,
            )
        })?;
        let cq_tail = word(l.cq_tail).load(Ordering::Acquire);
        let completed = cq_tail.wrapping_sub(word(l.cq_head).load(Ordering::Acquire));
        if taken != i64::from(batch) || completed != batch {
            return Err(io::Error::other(format!(
                "{batch} NOPs submitted, the kernel took {taken} and completed {completed}"
            )));
        }
        word(l.cq_head).store(cq_tail, Ordering::Release);
        left -= batch;
        done += u64::from(batch);
        if done % (1 << 22) < u64::from(batch) {
            progress(done);
        }
    }
    let sq_head = word(l.sq_head).load(Ordering::Acquire);
    let cq_tail = word(l.cq_tail).load(Ordering::Acquire);
    if sq_head != count || cq_tail != count {
        return Err(io::Error::other(format!(
            "after the NOPs the ring's SQ head is {sq_head} and CQ tail {cq_tail}, not {count}"
        )));
    }
    ring_map[..rings.len()].copy_from_slice(rings);
    sqe_map[..sqes.len()].copy_from_slice(sqes);
    Ok(RebuiltRing {
        fd,
        memory,
        sqes_offset: layout.rings_len() as u64,
    })
}
