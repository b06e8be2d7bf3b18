//! io_uring instances: a ring at rest is dumped and made again; any other is refused by
//! name, with what fdinfo shows of it ([`describe`]).
//!
//! # What can be seen of a ring (Linux 6.18, checked on this machine)
//!
//! A ring is a kernel context (`struct io_ring_ctx`) plus two memory regions the
//! program maps from the ring's fd (`IORING_OFF_SQ_RING`/`IORING_OFF_CQ_RING`: head and
//! tail words, masks, flags, the CQEs and the SQ index array; `IORING_OFF_SQES`: the
//! SQEs; `anon_inode:[io_uring]` in `maps`) or hands in (`IORING_SETUP_NO_MMAP`). Of the
//! context, `/proc/PID/fdinfo/N` shows `SqMask`, `SqHead`, `SqTail`, `CachedSqHead`,
//! `CqMask`, `CqHead`, `CqTail`, `CachedCqTail`, the pending SQEs and unreaped CQEs,
//! `SqThread` (SQPOLL), `UserFiles` (slot and name only), `UserBufs`, `PollList` and
//! `CqOverflowList`. What it does not show, and how the dump copes:
//!
//! 1. **Requests in flight.** fdinfo lists poll-armed requests and overflowed CQEs only;
//!    a pending timeout, io-wq work, a linked chain, a futex wait show nowhere, and the
//!    only query (`IORING_REGISTER_SYNC_CANCEL`) cancels what it finds. The dump takes
//!    a ring for **at rest** when the kernel has posted as many completions as it took
//!    submissions (CQ tail = SQ head), its own counters are where their mirrors in the
//!    ring say, and nothing is armed or overflowed ([`RingInfo::in_flight`]). SQEs the
//!    program queued and has not submitted, and CQEs it has not reaped, are in the
//!    saved regions: they come back as they were. A request in flight makes the CQ tail lag
//!    the SQ head, unless one that completed twice (multishot) or silently
//!    (`IOSQE_CQE_SKIP_SUCCESS`) makes up for it exactly: the one case this check
//!    cannot tell. libuv (whose recent versions keep a ring for batching epoll_ctl
//!    calls from the start of every loop, as under uvloop) and liburing programs
//!    waiting for completions are at rest between their calls.
//! 2. **Setup flags.** Nothing returns `io_uring_params` after `io_uring_setup`. The
//!    sizes follow from the masks (`CQSIZE` when the CQ is not twice the SQ); 128-byte
//!    SQEs and 32-byte CQEs show in fdinfo's listing of pending entries (` e0:`,
//!    ` extra1:`), which the dump makes list one of each for a moment
//!    (`sys::ring_entry_sizes`); a ring without an SQ index array (`NO_SQARRAY`) has
//!    zeros or no memory where the array would be, and for such a ring fdinfo lists no
//!    SQE, so the SQE region tells the SQE size ([`sqe128_by_region`]).
//!    `SINGLE_ISSUER` (and `DEFER_TASKRUN`, which needs it) leaks only as EEXIST on a
//!    register from another task: refused ([`single_issuer`]). `SUBMIT_ALL`,
//!    `COOP_TASKRUN`, `TASKRUN_FLAG`, `IOPOLL`, `ATTACH_WQ` are not seen: the ring is
//!    made again without them, which changes when completions are posted, not what
//!    they are (for these kinds of use).
//! 3. **Registered state.** Registered files and buffers show as counts whose files
//!    and pages cannot be identified, personalities as a heading: refused
//!    ([`RingInfo::held_state`]). A registered eventfd shows only as EBUSY on a second
//!    registration: the frozen dump registers one of its own and unregisters it at
//!    once (`sys::ring_has_eventfd`), and refuses a ring that had one. Provided-buffer
//!    rings in user memory, restrictions and registered ring fds show nowhere.
//! 4. **Its threads.** SQPOLL's `iou-sqp-PID` thread is refused (its settings cannot be
//!    read). io-wq's `iou-wrk-PID` workers are left out of the dump
//!    (`ProcDir::user_threads`): a ring at rest gives them nothing to do, and the new
//!    ring starts its own.
//!
//! # How a ring is made again
//!
//! The kernel works from its own copies of the SQ head and CQ tail (`cached_sq_head`,
//! `cached_cq_tail`), which no interface sets: writing the mirrors in the mapping is
//! overwritten at the next submission, and `IORING_REGISTER_RESIZE_RINGS` copies the
//! mirrors only. So the restore consumes as many NOPs as the ring had requests (the
//! counters are u32 and wrap: at most 2^32, about 150 ns each here, batched), then
//! writes the saved bytes of both regions over the new ones (`sys::rebuild_ring`).
//!
//! A ring's own regions cannot be mapped at a chosen address: its `get_unmapped_area`
//! refuses any address (mmap with MAP_FIXED and mremap alike fail with EINVAL). So the
//! new ring is made with `IORING_SETUP_NO_MMAP` on memory of ours, one memfd holding
//! both regions, which each task maps where it had the ring's regions
//! (`restore/memory.rs`), shared: the program's pointers into its ring stay valid and
//! reach the kernel's ring. `maps` then shows `/memfd:criu-rs-io_uring:FLAGS:SQES
//! (deleted)` there; a later dump finds the ring's memory by that name and by the
//! counters in its header ([`saved_from_restored_memory`]), so a restored program can
//! be dumped again. A ring in a program's own memory (`IORING_SETUP_NO_MMAP` by the
//! program) is refused.
//!
//! A thread waiting in `io_uring_enter` for completions returns EINTR when the freeze
//! interrupts it (the kernel does not restart that wait), as on any signal; programs
//! wait again (liburing's callers do).
//!
//! In the images (ours; CRIU has no image for rings): the ring is an `EXT` file whose
//! `ext_file_entry` carries an `io_uring_file_entry` (field 101, `proto/files.proto`),
//! and each mapping of its regions a `VMA_FILE_SHARED` entry naming the ring's id, at
//! the region's mmap offset. Debian's crit decodes both; CRIU refuses the EXT file.

use std::os::fd::{AsFd, AsRawFd};

use criu_images::pb;

use super::dump::{file_entry, OpenFd};
use super::restore::{bad, finish, FileRef, Result as RestoreResult};
use super::FileError;
use crate::sys;

/// What fdinfo shows of a ring (Linux 6.18's `io_uring_show_fdinfo`), the fields the
/// dump decides on. Counters are the kernel's, modulo 2^32.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingInfo {
    pub sq_entries: u32,
    pub cq_entries: u32,
    pub sq_head: u32,
    pub sq_tail: u32,
    pub cached_sq_head: u32,
    pub cq_head: u32,
    pub cq_tail: u32,
    pub cached_cq_tail: u32,
    /// `SqThread`: the SQPOLL thread's pid, -1 without.
    pub sq_thread: i64,
    pub user_files: u64,
    pub user_bufs: u64,
    /// Requests armed on a file's wait queue (`PollList:` lines).
    pub polled: usize,
    /// Completions that did not fit the CQ ring (`CqOverflowList:` lines).
    pub overflowed: usize,
    pub personalities: bool,
}

impl RingInfo {
    /// `None` when a field is missing: the kernel leaves the registered state out when
    /// another task holds the ring's lock at that moment.
    pub fn parse(fdinfo: &str) -> Option<RingInfo> {
        let field = |name: &str| {
            fdinfo.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k == name).then(|| v.trim())
            })
        };
        let num = |name: &str| field(name)?.parse::<u64>().ok();
        let counter = |name: &str| num(name).and_then(|n| u32::try_from(n).ok());
        let entries = |mask: &str| {
            let m = field(mask)?;
            u32::from_str_radix(m.trim_start_matches("0x"), 16)
                .ok()?
                .checked_add(1)
        };
        // Lines under a section heading, up to the next heading (a line not indented).
        let section = |heading: &str| {
            fdinfo
                .lines()
                .skip_while(|l| *l != heading)
                .skip(1)
                .take_while(|l| l.starts_with(' ') || l.starts_with('\t'))
                .count()
        };
        let has = |heading: &str| fdinfo.lines().any(|l| l == heading);
        if !has("PollList:") || !has("CqOverflowList:") {
            return None;
        }
        Some(RingInfo {
            sq_entries: entries("SqMask")?,
            cq_entries: entries("CqMask")?,
            sq_head: counter("SqHead")?,
            sq_tail: counter("SqTail")?,
            cached_sq_head: counter("CachedSqHead")?,
            cq_head: counter("CqHead")?,
            cq_tail: counter("CqTail")?,
            cached_cq_tail: counter("CachedCqTail")?,
            sq_thread: field("SqThread")?.parse().ok()?,
            user_files: num("UserFiles")?,
            user_bufs: num("UserBufs")?,
            polled: section("PollList:"),
            overflowed: section("CqOverflowList:"),
            personalities: has("Personalities:"),
        })
    }

    /// What is registered with the ring or runs for it, which a new ring would lack.
    /// These do not come and go with the program's I/O, so they are looked at before the
    /// freeze too.
    fn held_state(&self) -> Option<String> {
        if self.sq_thread != -1 {
            return Some(format!(
                "its SQPOLL thread {} (the thread's settings cannot be read)",
                self.sq_thread
            ));
        }
        if self.user_files != 0 {
            return Some(format!(
                "{} registered files (fdinfo names them but not which open file each is)",
                self.user_files
            ));
        }
        if self.user_bufs != 0 {
            return Some(format!(
                "{} registered buffers (pinned pages, not the memory at their addresses)",
                self.user_bufs
            ));
        }
        self.personalities
            .then(|| "registered personalities (credentials)".to_owned())
    }

    /// What is in flight: a ring at rest has completed every request the kernel took
    /// (as many CQEs posted as SQEs taken: nothing pending in the kernel, which no
    /// interface lists), with the kernel's own counters where its mirrors in the ring
    /// say and nothing armed on a wait queue or overflowed. SQEs the program queued but
    /// has not submitted yet, and CQEs it has not reaped, are the program's, in the
    /// saved regions: its next io_uring_enter submits them, it reaps them.
    fn in_flight(&self) -> Option<String> {
        if self.cached_sq_head != self.sq_head {
            return Some(format!(
                "the kernel is taking its submissions (SQ head {}, the kernel's {})",
                self.sq_head, self.cached_sq_head
            ));
        }
        if self.cached_cq_tail != self.cq_tail {
            return Some(format!(
                "the kernel is posting completions (CQ tail {}, the kernel's {})",
                self.cq_tail, self.cached_cq_tail
            ));
        }
        let queued = self.sq_tail.wrapping_sub(self.sq_head);
        let unreaped = self.cq_tail.wrapping_sub(self.cq_head);
        if queued > self.sq_entries || unreaped > self.cq_entries {
            return Some(format!(
                "its SQ tail {} and CQ head {} are out of its rings",
                self.sq_tail, self.cq_head
            ));
        }
        if self.polled != 0 {
            return Some(format!("{} requests waiting on files", self.polled));
        }
        if self.overflowed != 0 {
            return Some(format!("{} completions overflowed", self.overflowed));
        }
        if self.cq_tail != self.sq_head {
            return Some(format!(
                "requests in flight ({} submitted, {} completed)",
                self.sq_head, self.cq_tail
            ));
        }
        None
    }
}

/// Refuses a ring the dump cannot rebuild, before the freeze: registered state, an SQPOLL
/// thread, or made with IORING_SETUP_SINGLE_ISSUER (whose setup flags can then not be
/// known). In-flight requests are judged frozen ([`dump`]).
pub(super) fn check(fd: &OpenFd<'_>) -> Result<(), FileError> {
    let info = parse(fd)?;
    if let Some(why) = info.held_state() {
        return Err(refusal(fd, &why));
    }
    single_issuer(fd)
}

fn parse(fd: &OpenFd<'_>) -> Result<RingInfo, FileError> {
    RingInfo::parse(&fd.fdinfo).ok_or_else(|| {
        refusal(
            fd,
            "its fdinfo lacks the ring's counters or lists (another task held the ring's lock)",
        )
    })
}

fn refusal(fd: &OpenFd<'_>, why: &str) -> FileError {
    fd.unsupported(format!(
        "{} ({}: {}): {why}",
        super::kinds::Kind::IoUring,
        fd.link_str(),
        describe(fd)
    ))
}

/// Only the task that made a SINGLE_ISSUER ring may register on it (EEXIST for us).
/// Such a ring may also have DEFER_TASKRUN, which changes when completions appear, and
/// no interface tells: refused rather than guessed.
fn single_issuer(fd: &OpenFd<'_>) -> Result<(), FileError> {
    match sys::ring_probe(fd.file.as_fd()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(refusal(
            fd,
            "it was made with IORING_SETUP_SINGLE_ISSUER, maybe with DEFER_TASKRUN too, \
             which nothing shows (only its task may register on it)",
        )),
        Err(e) => Err(fd.io("probe the io_uring ring (IORING_REGISTER_PROBE)")(e)),
    }
}

/// The entry of a ring at rest (the tree is frozen): its sizes, counters and both
/// memory regions as the program left them.
/// The ring's entry, and the inode of the memfd holding its regions when a restore made
/// it (see [`saved_from_restored_memory`]).
pub(super) fn dump(fd: &OpenFd<'_>, id: u32) -> Result<(pb::FileEntry, Option<u64>), FileError> {
    let info = parse(fd)?;
    if let Some(why) = info.held_state().or_else(|| info.in_flight()) {
        return Err(refusal(fd, &why));
    }
    single_issuer(fd)?;
    let ring = fd.file.as_fd();
    if sys::ring_has_eventfd(ring).map_err(fd.io("probe the io_uring ring's eventfd"))? {
        return Err(refusal(
            fd,
            "an eventfd is registered with it, and nothing shows which one",
        ));
    }
    let page = sys::page_size() as usize;
    let (saved, memory) = match sys::read_ring_region(ring, sys::IORING_OFF_SQ_RING, page) {
        Ok(_) => (saved_from_ring(fd, &info)?, None),
        // A ring whose regions are memory it was given (IORING_SETUP_NO_MMAP) cannot be
        // mapped through its fd.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOMEM)) => {
            let (saved, inode) = saved_from_restored_memory(fd, &info)?;
            (saved, Some(inode))
        }
        Err(e) => return Err(fd.io("map the ring's regions")(e)),
    };
    let fown = fd.fown()?;
    let entry = file_entry(pb::FdTypes::Ext, id, |e| {
        e.ext = Some(pb::ExtFileEntry {
            id,
            fown,
            mqueue: None,
            io_uring: Some(pb::IoUringFileEntry {
                sq_entries: info.sq_entries,
                cq_entries: info.cq_entries,
                setup_flags: saved.flags,
                sq_head: info.sq_head,
                cq_tail: info.cq_tail,
                rings: saved.rings,
                sqes: saved.sqes,
                flags: Some(fd.common.flags),
            }),
        })
    });
    Ok((entry, memory))
}

/// What is saved of a ring: the flags it is made again with, and its two regions.
struct Saved {
    flags: u32,
    rings: Vec<u8>,
    sqes: Vec<u8>,
}

/// The layout of a ring of `info`'s sizes made with `flags` on this kernel: a ring of our
/// own, made and closed.
fn layout_of(fd: &OpenFd<'_>, info: &RingInfo, flags: u32) -> Result<sys::RingLayout, FileError> {
    let mut flags = flags;
    if info.cq_entries != 2 * info.sq_entries {
        flags |= sys::IORING_SETUP_CQSIZE;
    }
    sys::ring_setup(info.sq_entries, info.cq_entries, flags)
        .map(|r| r.layout)
        .map_err(fd.io("make a ring of the same sizes (for its layout)"))
}

/// A ring mapped through its fd: its regions read through a mapping of our own, its
/// setup flags told from what they change.
fn saved_from_ring(fd: &OpenFd<'_>, info: &RingInfo) -> Result<Saved, FileError> {
    let ring = fd.file.as_fd();
    let mut flags = 0;
    if info.cq_entries != 2 * info.sq_entries {
        flags |= sys::IORING_SETUP_CQSIZE;
    }
    let make = |flags| layout_of(fd, info, flags);
    let words = make(flags)?;
    let fdinfo_path = format!("/proc/self/fdinfo/{}", fd.file.as_raw_fd());
    let (sqe128_shown, cqe32) = sys::ring_entry_sizes(ring, words.sq_tail, words.cq_head, || {
        std::fs::read_to_string(&fdinfo_path)
    })
    .map_err(fd.io("look at the ring's entry sizes"))?;
    if cqe32 {
        flags |= sys::IORING_SETUP_CQE32;
    }
    let layout = make(flags)?;
    let mut rings = sys::read_ring_region(ring, sys::IORING_OFF_SQ_RING, layout.rings_len())
        .map_err(fd.io("read the ring's SQ and CQ rings"))?;
    // A ring made with NO_SQARRAY has no index array: its region ends before where
    // the array would be, or has zeros there (the kernel's fresh pages), while a ring
    // with one has its indexes (liburing and libuv write N at N when they set up).
    let without = layout.without_sq_array();
    let array = layout
        .sq_array_range()
        .expect("a ring made without NO_SQARRAY has an array");
    let no_array =
        rings.len() < array.end || (info.sq_entries > 1 && rings[array].iter().all(|&b| b == 0));
    if no_array {
        flags |= sys::IORING_SETUP_NO_SQARRAY;
        rings.truncate(without.rings_len());
    }
    if rings.len() < without.rings_len() {
        return Err(refusal(fd, "its ring region is shorter than its sizes say"));
    }
    // The SQE size: fdinfo lists no SQE of a ring without an index array on this
    // kernel; then the SQE region tells, by its length, or else by bytes written past
    // where 64-byte SQEs end (`sqe128_by_region`).
    let read_sqes = |len| {
        sys::read_ring_region(ring, sys::IORING_OFF_SQES, len)
            .map_err(fd.io("read the ring's SQEs"))
    };
    let (sqe128, wide_region) = match sqe128_shown {
        Some(shown) => (shown, None),
        None if no_array => {
            let region = read_sqes(make(flags | sys::IORING_SETUP_SQE128)?.sqes_len())?;
            let wide = sqe128_by_region(&region, info.sq_entries as usize, layout.sqes_len());
            (wide, Some(region))
        }
        None => {
            return Err(refusal(
                fd,
                "its SQE size cannot be told (its SQ index array names no slot at the tail)",
            ))
        }
    };
    if sqe128 {
        flags |= sys::IORING_SETUP_SQE128;
    }
    let sqes_len = make(flags)?.sqes_len();
    // The region read to tell the size holds the SQEs already (read as far as 128-byte
    // ones would reach): only as much of it as the region has is kept.
    let sqes = match wide_region {
        Some(mut region) => {
            region.truncate(sqes_len);
            region
        }
        None => read_sqes(sqes_len)?,
    };
    if sqes.len() != sqes_len {
        return Err(refusal(fd, "its SQE region is shorter than its size says"));
    }
    Ok(Saved { flags, rings, sqes })
}

/// A ring a restore made (see [`open_ring`]): its regions are in a memfd that the
/// holder maps, named after how the ring was made ([`sys::RING_MEMFD_NAME`]); the one
/// whose ring header has this ring's counters and sizes is its. Returns what is saved
/// and the memfd's inode.
fn saved_from_restored_memory(fd: &OpenFd<'_>, info: &RingInfo) -> Result<(Saved, u64), FileError> {
    use std::os::unix::fs::FileExt;
    let words = layout_of(fd, info, 0)?;
    let maps = crate::proc::ProcDir::open(fd.pid)
        .and_then(|d| d.maps_plain())
        .map_err(fd.io("read the holder's mappings"))?;
    let mut found: Vec<(u64, u32, u64, std::fs::File)> = Vec::new();
    for m in maps.iter().filter(|m| m.shared) {
        let Some((flags, sqes_offset)) = restored_memory_name(&m.path) else {
            continue;
        };
        if found.iter().any(|f| f.0 == m.inode) {
            continue;
        }
        let path = format!("/proc/{}/map_files/{:x}-{:x}", fd.pid.0, m.start, m.end);
        let file = std::fs::File::open(&path).map_err(fd.io("open a ring's memory"))?;
        let mut header = [0u8; 32];
        file.read_exact_at(&mut header, 0)
            .map_err(fd.io("read a ring's memory"))?;
        let word = |off: u32| {
            header
                .get(off as usize..off as usize + 4)
                .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
        };
        let ours = [
            (words.sq_head, info.sq_head),
            (words.sq_tail, info.sq_tail),
            (words.cq_head, info.cq_head),
            (words.cq_tail, info.cq_tail),
        ]
        .iter()
        .all(|&(off, want)| word(off) == Some(want));
        if ours {
            found.push((m.inode, flags, sqes_offset, file));
        }
    }
    let (inode, flags, sqes_offset, file) = match found.len() {
        1 => found.pop().expect("one"),
        0 => {
            return Err(refusal(
                fd,
                "its regions are memory it was given (IORING_SETUP_NO_MMAP), not a ring's \
                 own, and not memory a restore made for it that the holder maps",
            ))
        }
        _ => {
            return Err(refusal(
                fd,
                "the holder maps several memories a restore made for rings with its \
                 counters, and nothing tells which is its",
            ))
        }
    };
    let layout = layout_of(fd, info, flags)?;
    if layout.rings_len() as u64 != sqes_offset {
        return Err(refusal(
            fd,
            &format!(
                "the memory a restore made for it has its SQEs at {sqes_offset:#x}, where \
                 a ring made with flags {flags:#x} has {:#x} bytes of rings",
                layout.rings_len()
            ),
        ));
    }
    let read = |offset: u64, len: usize| {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).map(|()| buf)
    };
    let rings = read(0, layout.rings_len()).map_err(fd.io("read the ring's memory"))?;
    let sqes = read(sqes_offset, layout.sqes_len()).map_err(fd.io("read the ring's memory"))?;
    Ok((Saved { flags, rings, sqes }, inode))
}

/// The setup flags and SQE offset in a mapping's path when it is the memory a restore
/// made for a ring (`/memfd:criu-rs-io_uring:FLAGS:SQES (deleted)`).
fn restored_memory_name(path: &str) -> Option<(u32, u64)> {
    let rest = path
        .strip_prefix("/memfd:")?
        .strip_prefix(sys::RING_MEMFD_NAME)?
        .strip_prefix(':')?
        .strip_suffix(" (deleted)")?;
    let (flags, sqes) = rest.split_once(':')?;
    Some((
        u32::from_str_radix(flags, 16).ok()?,
        u64::from_str_radix(sqes, 16).ok()?,
    ))
}

/// Where the SQEs are in a mapping when it is the memory a restore made for a ring.
pub fn restored_memory(path: &str) -> Option<u64> {
    restored_memory_name(path).map(|(_, sqes)| sqes)
}

/// Whether the SQE region `region` (read as far as 128-byte SQEs would reach) of a ring
/// of `entries` slots holds 128-byte SQEs, when fdinfo cannot say: longer than the
/// `narrow_len` a region of 64-byte SQEs has, or, when both fit the same pages, with a
/// byte written past where 64-byte SQEs end (a ring of 64-byte SQEs never writes
/// there; one of 128-byte SQEs whose upper half of slots was never used, or only with
/// SQEs of zeros, is taken for 64-byte ones).
fn sqe128_by_region(region: &[u8], entries: usize, narrow_len: usize) -> bool {
    if region.len() > narrow_len {
        return true;
    }
    region
        .get(entries * 64..)
        .is_some_and(|past| past.iter().any(|&b| b != 0))
}

/// The restorer's ring for a saved one (see [`dump`]): the same sizes and setup flags,
/// its counters brought to the saved ones, the saved bytes in its regions, which are
/// memfds of ours (`sys::rebuild_ring` says why); tasks map them where they had the
/// ring's regions (`restore/memory.rs`, through [`RingRegions`]).
pub(super) fn open_ring(
    at: &FileRef,
    r: &pb::IoUringFileEntry,
    fown: &pb::FownEntry,
) -> RestoreResult<(std::os::fd::OwnedFd, RingRegions)> {
    let known = sys::IORING_SETUP_CQSIZE
        | sys::IORING_SETUP_NO_SQARRAY
        | sys::IORING_SETUP_SQE128
        | sys::IORING_SETUP_CQE32;
    if r.setup_flags & !known != 0 || r.sq_head != r.cq_tail {
        return Err(bad(
            "files.img",
            format!(
                "io_uring file {}: setup flags {:#x}, SQ head {} and CQ tail {} are not \
                 those of a ring at rest",
                at.id, r.setup_flags, r.sq_head, r.cq_tail
            ),
        ));
    }
    let count = r.sq_head;
    let ring = sys::rebuild_ring(
        r.sq_entries,
        r.cq_entries,
        r.setup_flags,
        count,
        &r.rings,
        &r.sqes,
        |done| tracing::info!("io_uring file {}: {done} of {count} NOPs consumed", at.id),
    )
    .map_err(at.io(format!(
        "make an io_uring ring of {} SQ / {} CQ entries (setup flags {:#x}) with \
         {count} requests submitted and completed",
        r.sq_entries, r.cq_entries, r.setup_flags
    )))?;
    finish(
        at,
        ring.fd.as_fd(),
        r.flags.unwrap_or(libc::O_RDWR as u32),
        fown,
    )?;
    Ok((
        ring.fd,
        RingRegions {
            memory: ring.memory,
            sqes_offset: ring.sqes_offset,
        },
    ))
}

/// The memfd holding a restored ring's regions: the rings region, then the SQEs.
pub struct RingRegions {
    memory: std::fs::File,
    sqes_offset: u64,
}

impl RingRegions {
    /// The memfd and the offset in it that a mapping of the ring at mmap offset `pgoff`
    /// maps.
    pub fn region_at(&self, pgoff: u64) -> (&std::fs::File, u64) {
        (&self.memory, memory_offset(pgoff, self.sqes_offset))
    }
}

/// Where a ring's mmap offset `pgoff` is in a memfd holding its regions (the SQEs at
/// `sqes_offset`). The SQ and CQ ring offsets are one region since
/// IORING_FEAT_SINGLE_MMAP.
pub fn memory_offset(pgoff: u64, sqes_offset: u64) -> u64 {
    if pgoff >= sys::IORING_OFF_SQES {
        sqes_offset + (pgoff - sys::IORING_OFF_SQES)
    } else if pgoff >= sys::IORING_OFF_CQ_RING {
        pgoff - sys::IORING_OFF_CQ_RING
    } else {
        pgoff
    }
}

/// The ring's mmap offset of `offset` in a memfd holding its regions (the SQEs at
/// `sqes_offset`): what [`memory_offset`] undoes.
pub fn ring_offset(offset: u64, sqes_offset: u64) -> u64 {
    if offset >= sqes_offset {
        sys::IORING_OFF_SQES + (offset - sqes_offset)
    } else {
        offset
    }
}

/// What fdinfo shows of the ring behind `fd`, for a refusal.
pub(super) fn describe(fd: &OpenFd<'_>) -> String {
    summary(&fd.fdinfo)
}

/// The summary of an io_uring fdinfo text: sizes, indexes, pending entries, SQPOLL
/// thread, registered files and buffers. Fields missing from the text are left out.
pub fn summary(fdinfo: &str) -> String {
    let field = |name: &str| {
        fdinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == name).then(|| v.trim())
        })
    };
    let entries = |mask: &str| {
        field(mask)
            .and_then(|m| u32::from_str_radix(m.trim_start_matches("0x"), 16).ok())
            .map(|m| u64::from(m) + 1)
    };
    let mut out = Vec::new();
    if let (Some(sq), Some(cq)) = (entries("SqMask"), entries("CqMask")) {
        out.push(format!("{sq} SQ / {cq} CQ entries"));
    }
    if let (Some(h), Some(t)) = (field("SqHead"), field("SqTail")) {
        out.push(format!("SQ head {h} tail {t}"));
    }
    if let (Some(h), Some(t)) = (field("CqHead"), field("CqTail")) {
        out.push(format!("CQ head {h} tail {t}"));
    }
    for (name, what) in [
        ("SQEs", "SQEs not submitted"),
        ("CQEs", "CQEs not reaped"),
        ("UserFiles", "registered files"),
        ("UserBufs", "registered buffers"),
    ] {
        if let Some(n) = field(name).filter(|n| *n != "0") {
            out.push(format!("{n} {what}"));
        }
    }
    if let Some(t) = field("SqThread").filter(|t| *t != "-1") {
        out.push(format!("SQPOLL thread {t}"));
    }
    if fdinfo.lines().any(|l| l == "Personalities:") {
        out.push("personalities".into());
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fdinfo of a ring on Linux 6.18: 3 NOPs submitted, 2 reaped, a pipe and a file
    /// registered, one buffer.
    const FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t4209739\n\
SqMask:\t0x3\nSqHead:\t3\nSqTail:\t3\nCachedSqHead:\t3\nCqMask:\t0x7\nCqHead:\t2\n\
CqTail:\t3\nCachedCqTail:\t3\nSQEs:\t0\nCQEs:\t1\n    2: user_data:2, res:0, flag:0\n\
SqThread:\t-1\nSqThreadCpu:\t-1\nSqTotalTime:\t0\nSqWorkTime:\t0\nUserFiles:\t3\n\
    0: pipe:[4209740]\n    1: /etc/hostname\nUserBufs:\t1\n    0: 0x55bf5574d0c0/4096\n\
PollList:\nCqOverflowList:\nNAPI:\tdisabled\n";

    #[test]
    fn fdinfo_is_read_into_counters_and_lists() {
        let info = RingInfo::parse(FDINFO).unwrap();
        assert_eq!((info.sq_entries, info.cq_entries), (4, 8));
        assert_eq!((info.sq_head, info.cq_head, info.cq_tail), (3, 2, 3));
        assert_eq!(
            (info.user_files, info.user_bufs, info.sq_thread),
            (3, 1, -1)
        );
        assert_eq!((info.polled, info.overflowed), (0, 0));
        assert!(info.held_state().unwrap().starts_with("3 registered files"));
        // A completion not reaped is the program's, in the saved CQ ring.
        assert_eq!(info.in_flight(), None);
        // Without its lists, fdinfo was cut short (another task held the ring's lock).
        assert_eq!(RingInfo::parse(&FDINFO.replace("PollList:\n", "")), None);
        let polled = FDINFO.replace(
            "PollList:\n",
            "PollList:\n  op=6, task_works=0\n  op=6, task_works=0\n",
        );
        assert_eq!(RingInfo::parse(&polled).unwrap().polled, 2);
    }

    #[test]
    fn a_ring_is_at_rest_when_every_request_the_kernel_took_completed() {
        let at = |sq_head, sq_tail, cq_head, cq_tail| RingInfo {
            sq_entries: 4,
            cq_entries: 8,
            sq_head,
            sq_tail,
            cached_sq_head: sq_head,
            cq_head,
            cq_tail,
            cached_cq_tail: cq_tail,
            sq_thread: -1,
            ..Default::default()
        };
        assert_eq!(at(7, 7, 7, 7).in_flight(), None);
        assert_eq!(at(u32::MAX, u32::MAX, u32::MAX, u32::MAX).in_flight(), None);
        // Queued but not submitted, completed but not reaped: the program's.
        assert_eq!(at(7, 9, 5, 7).in_flight(), None);
        assert_eq!(at(u32::MAX, 1, u32::MAX - 1, u32::MAX).in_flight(), None);
        assert_eq!(
            at(8, 8, 7, 7).in_flight().as_deref(),
            Some("requests in flight (8 submitted, 7 completed)")
        );
        assert_eq!(
            at(7, 20, 7, 7).in_flight().as_deref(),
            Some("its SQ tail 20 and CQ head 7 are out of its rings")
        );
        let kernel_behind = RingInfo {
            cached_sq_head: 6,
            ..at(7, 7, 7, 7)
        };
        assert!(kernel_behind.in_flight().is_some());
        let posting = RingInfo {
            cached_cq_tail: 8,
            ..at(7, 7, 7, 7)
        };
        assert!(posting.in_flight().is_some());
    }

    #[test]
    fn restored_memory_is_told_by_its_name_and_offsets_map_both_ways() {
        assert_eq!(
            restored_memory_name("/memfd:criu-rs-io_uring:10000:3000 (deleted)"),
            Some((0x10000, 0x3000))
        );
        assert_eq!(restored_memory("/memfd:criu-rs-io_uring:0:3000"), None);
        assert_eq!(
            restored_memory("/memfd:something-else:0:3000 (deleted)"),
            None
        );
        assert_eq!(restored_memory("anon_inode:[io_uring]"), None);
        let sqes = 0x3000;
        for pgoff in [
            0,
            0x1000,
            sys::IORING_OFF_SQES,
            sys::IORING_OFF_SQES + 0x2000,
        ] {
            assert_eq!(ring_offset(memory_offset(pgoff, sqes), sqes), pgoff);
        }
        // The CQ ring's offset is the same region as the SQ ring's.
        assert_eq!(
            memory_offset(sys::IORING_OFF_CQ_RING + 0x1000, sqes),
            0x1000
        );
        assert_eq!(memory_offset(sys::IORING_OFF_SQES + 0x40, sqes), 0x3040);
    }

    #[test]
    fn the_sqe_size_of_a_ring_without_index_array_is_told_by_its_region() {
        // 256 slots: 16 KiB of 64-byte SQEs, 32 KiB of 128-byte ones.
        assert!(sqe128_by_region(&vec![0; 32768], 256, 16384));
        assert!(!sqe128_by_region(&vec![0; 16384], 256, 16384));
        // 16 slots: one page either way; bytes past 16 * 64 were written by 128-byte SQEs.
        let mut page = vec![0u8; 4096];
        page[64] = 1;
        assert!(!sqe128_by_region(&page, 16, 4096));
        page[16 * 64 + 32] = 7;
        assert!(sqe128_by_region(&page, 16, 4096));
    }

    #[test]
    fn the_summary_says_what_the_ring_holds() {
        assert_eq!(
            summary(FDINFO),
            "4 SQ / 8 CQ entries, SQ head 3 tail 3, CQ head 2 tail 3, 1 CQEs not reaped, \
             3 registered files, 1 registered buffers"
        );
        let sqpoll = FDINFO.replace("SqThread:\t-1", "SqThread:\t77");
        assert!(
            summary(&sqpoll).ends_with("SQPOLL thread 77"),
            "{}",
            summary(&sqpoll)
        );
        assert_eq!(summary("pos:\t0\n"), "");
    }
}
