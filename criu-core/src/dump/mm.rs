//! Memory of a frozen process: its VMAs as `vma_entry`s, and the contents of the pages
//! that a restore cannot get back from a file (private pages that are present, or
//! swapped out) as a pagemap plus a raw pages file.
//!
//! The page path: `PAGEMAP_SCAN` lists the pages worth saving per VMA in one call, then
//! worker threads (one per core) copy fixed-size chunks with `process_vm_readv` into a
//! reused buffer and `pwrite` them at their final offset in the pages file, so the
//! dumper's memory stays bounded whatever the dump size. A tree killed after the dump
//! gives saved batches of its memory back meanwhile where that pays (`release.rs`,
//! `CopyTiming`), so that the pages file is allocated from memory the machine has just
//! freed.
//!
//! Measured on this project's machines (2 cores, 1 GiB dumped to tmpfs): writing 1 GiB
//! into one tmpfs file takes ~0.4 s, and no faster with two threads (writes to one file
//! take its inode lock in turn: 0.43-0.49 s); reading it with `process_vm_readv` 0.2-0.35
//! s. Two workers that each read and write overlap the one's reading with the other's
//! writing, and the dump runs at ~1.0-1.1x of the fill alone. A new pages file on tmpfs
//! is filled by UFFDIO_COPY into a mapping of it instead (`sys::ShmemFill`: no inode
//! lock, no zeroing): the two workers then write side by side, ~7% faster in the same
//! runs (1 GiB: 405-411 ms against 432-444 ms, 0.93-0.96x of the fill). Writing through a shared
//! mapping of the pages file skips the lock but pays a fault per page: slower (0.50-0.55
//! s against 0.43-0.50 s). 1 MiB chunks were 2-7% faster than 4 MiB ones (a buffer that
//! stays in the core's cache between its read and its write).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use criu_images::pb;

use crate::files::kinds::{Given, Kind};
use crate::proc::MapEntry;
use crate::progress::Progress;
use crate::sys::{self, page_is, Pid};

// The image's VMA status and pagemap flags (criu-images knows the format).
use criu_images::flags::page::{PE_LAZY, PE_PARENT, PE_PRESENT};
use criu_images::flags::vma::*;

/// What backs a mapping, as far as the dump is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    AnonPrivate,
    /// Shared anonymous memory (`/dev/zero (deleted)`), by its shmem inode.
    AnonShared {
        inode: u64,
    },
    /// Shared anonymous memory mapped privately (through `/proc/PID/map_files`): pages
    /// nobody wrote through this mapping are the object's, the others private copies.
    ShmemPrivate {
        inode: u64,
    },
    FilePrivate {
        path: String,
    },
    FileShared {
        path: String,
    },
    Memfd {
        path: String,
        shared: bool,
    },
    /// A SysV shared memory attachment (or a part of one), by the segment's id (which
    /// maps shows as the inode); the segment itself is saved by `sysvshm`.
    SysvShm {
        shmid: u64,
    },
    Vdso,
    Vvar,
    Vsyscall,
    /// An AIO context's ring: saved whole, rebuilt by io_setup (`aio.rs`).
    AioRing,
    /// Private hugetlb memory (`/anon_hugepage`, MAP_PRIVATE | MAP_HUGETLB): saved as
    /// private anonymous memory is, in whole huge pages, and mapped again with its page
    /// size.
    HugetlbPrivate,
    /// Shared hugetlb memory (`/anon_hugepage`, MAP_SHARED | MAP_HUGETLB), by its inode
    /// on the kernel's hugetlbfs mount: saved and rebuilt as shared anonymous memory is,
    /// one object for all its mappings.
    HugetlbShared {
        inode: u64,
    },
    /// A socket's mapping (`socket:[inode]`): a packet ring, when that inode is a packet
    /// socket the tree holds open; its pages are the ring's, not saved.
    Socket {
        inode: u64,
    },
    /// A mapping of an io_uring ring's regions, saved with the ring's descriptor (its
    /// pages with it): the ring's own (`anon_inode:[io_uring]`; `inode` is the ring's),
    /// or the memfd a restore put a ring's regions in (`sqes_offset` is where the SQEs
    /// are in it; `inode` is the memfd's; see `files/io_uring.rs`).
    IoUring {
        inode: u64,
        sqes_offset: Option<u64>,
    },
    /// Something the dump cannot save (its row in the kind table says why).
    Unsupported(Kind),
}

impl Backing {
    /// The mapping's row in the kind table ([`crate::files::kinds`]). File mappings of
    /// devices are told apart only by [`mapping_kind`], which looks at the file.
    pub fn kind(&self) -> Kind {
        match self {
            Backing::AnonPrivate => Kind::MapAnonPrivate,
            Backing::AnonShared { .. } => Kind::MapAnonShared,
            Backing::ShmemPrivate { .. } => Kind::MapShmemPrivate,
            Backing::FilePrivate { .. } => Kind::MapFilePrivate,
            Backing::FileShared { .. } => Kind::MapFileShared,
            Backing::Memfd { .. } => Kind::MapMemfd,
            Backing::SysvShm { .. } => Kind::MapSysvShm,
            Backing::Vdso => Kind::MapVdso,
            Backing::Vvar => Kind::MapVvar,
            Backing::Vsyscall => Kind::MapVsyscall,
            Backing::AioRing => Kind::MapAioRing,
            Backing::HugetlbPrivate | Backing::HugetlbShared { .. } => Kind::MapHugetlb,
            Backing::Socket { .. } => Kind::MapSocket,
            Backing::IoUring { .. } => Kind::MapIoUring,
            Backing::Unsupported(kind) => *kind,
        }
    }
}

/// The kind of a mapping of `pid`. A file mapping is looked at closer (a stat through
/// `/proc/PID/map_files`, which opens nothing): a device is no file to reopen and map
/// again, except `/dev/zero`, whose private mappings are plain memory; and the restore
/// reopens the file by its path, so that path (in the task's root) must still lead to
/// the mapped inode.
pub fn mapping_kind(pid: Pid, vma: &Vma) -> Kind {
    let kind = vma.backing.kind();
    if let Backing::Socket { inode } = vma.backing {
        return if is_packet_socket(pid, inode)
            && holds_file(pid, &format!("socket:[{inode}]"), inode)
        {
            kind
        } else {
            Kind::MapOtherSocket
        };
    }
    if let Backing::IoUring {
        inode,
        sqes_offset: None,
    } = vma.backing
    {
        return if holds_file(pid, "anon_inode:[io_uring]", inode) {
            kind
        } else {
            Kind::MapIoUringUnheld
        };
    }
    if !matches!(kind, Kind::MapFilePrivate | Kind::MapFileShared) {
        return kind;
    }
    let map_file = format!(
        "/proc/{}/map_files/{:x}-{:x}",
        pid.0, vma.map.start, vma.map.end
    );
    let Ok(meta) = std::fs::metadata(map_file) else {
        return kind;
    };
    let ft = meta.file_type();
    // /dev/zero is 1:5.
    let dev_zero = (libc::major(meta.rdev()), libc::minor(meta.rdev())) == (1, 5);
    if ft.is_block_device() || (ft.is_char_device() && !dev_zero) {
        return Kind::MapDevice;
    }
    // Deleted (a POSIX semaphore or Python's multiprocessing state in /dev/shm...): its
    // contents are saved as a ghost file, as for an open deleted file.
    if vma.map.is_deleted() {
        return if meta.is_file() {
            Kind::MapDeletedFile
        } else if dev_zero {
            kind
        } else {
            Kind::MapDeletedOther
        };
    }
    // A name maps had to escape (`\012` for a newline) or that is not UTF-8 here cannot
    // be looked up as written: the dump's own path checks judge it.
    if vma.map.path.contains(['\\', '\u{fffd}']) {
        return kind;
    }
    // The inode maps shows is the one the task sees (also on overlayfs); its device
    // number is not compared, as btrfs subvolumes show another one in stat.
    let Ok(mut by_path) = crate::proc::mount_root(pid) else {
        return kind;
    };
    by_path.push(&vma.map.path);
    match std::fs::metadata(by_path) {
        Ok(m) if m.ino() != vma.map.inode => Kind::MapUnreachableFile,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Kind::MapUnreachableFile,
        _ => kind,
    }
}

/// Whether socket `inode` is a packet socket of `pid`'s network namespace (listed in its
/// `/proc/PID/net/packet`, whose last column is the inode).
fn is_packet_socket(pid: Pid, inode: u64) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{}/net/packet", pid.0)) else {
        return false;
    };
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .any(|i| i == inode)
}

/// Whether `pid` holds an fd whose link is `link` and whose inode is `inode`: a socket
/// (`socket:[INODE]`; CRIU's restore maps a packet ring through the mapping process's
/// own fd of the socket), or an io_uring ring (`anon_inode:[io_uring]`, each ring with
/// an inode of its own).
fn holds_file(pid: Pid, link: &str, inode: u64) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", pid.0)) else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == link)
            && std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == inode)
    })
}

/// Why the dump must refuse a mapping of `pid` (`None`: it is saved): the kind table
/// decides, so a mapping the restore cannot map again is refused before the freeze.
pub fn refusal(pid: Pid, vma: &Vma) -> Option<String> {
    let kind = mapping_kind(pid, vma);
    let why = kind.dump_refusal(Given::default())?;
    Some(format!(
        "{kind} ({}) at {:#x}-{:#x}: {why}",
        vma.map.path, vma.map.start, vma.map.end
    ))
}

/// One VMA to dump: the parsed map line and what backs it.
#[derive(Debug, Clone)]
pub struct Vma {
    pub map: MapEntry,
    pub backing: Backing,
}

pub fn classify(map: &MapEntry) -> Backing {
    let path = map.path.as_str();
    match path {
        "[vdso]" => return Backing::Vdso,
        "[vvar]" | "[vvar_vclock]" => return Backing::Vvar,
        "[vsyscall]" => return Backing::Vsyscall,
        _ => {}
    }
    if let Some(sqes_offset) = crate::files::io_uring::restored_memory(path).filter(|_| map.shared)
    {
        return Backing::IoUring {
            inode: map.inode,
            sqes_offset: Some(sqes_offset),
        };
    }
    if path.starts_with("/memfd:") {
        return Backing::Memfd {
            path: path.to_owned(),
            shared: map.shared,
        };
    }
    if path.starts_with("/SYSV") {
        return Backing::SysvShm { shmid: map.inode };
    }
    if path.starts_with("/[aio]") && map.shared {
        return Backing::AioRing;
    }
    if path.starts_with("/anon_hugepage") {
        return if map.shared {
            Backing::HugetlbShared { inode: map.inode }
        } else {
            Backing::HugetlbPrivate
        };
    }
    if map.inode == 0 || path.starts_with('[') {
        return if map.shared {
            Backing::AnonShared { inode: map.inode }
        } else {
            Backing::AnonPrivate
        };
    }
    if map.shared && path.starts_with("/dev/zero") {
        return Backing::AnonShared { inode: map.inode };
    }
    // A private mapping of /dev/zero itself is plain anonymous memory (no path in maps):
    // `/dev/zero (deleted)` mapped privately is a shared anonymous object.
    if !map.shared && path == "/dev/zero (deleted)" {
        return Backing::ShmemPrivate { inode: map.inode };
    }
    if path.starts_with("socket:[") {
        return Backing::Socket { inode: map.inode };
    }
    if path == "anon_inode:[io_uring]" && map.shared {
        return Backing::IoUring {
            inode: map.inode,
            sqes_offset: None,
        };
    }
    if !path.starts_with('/') {
        return Backing::Unsupported(Kind::MapOther);
    }
    if map.shared {
        Backing::FileShared {
            path: path.to_owned(),
        }
    } else {
        Backing::FilePrivate {
            path: path.to_owned(),
        }
    }
}

/// Reads the VMAs of a process, merging `[vvar]` and `[vvar_vclock]` into one VVAR area
/// the way CRIU 4.2 records it on Linux >= 6.13.
pub fn vmas(maps: Vec<MapEntry>) -> Vec<Vma> {
    let mut out: Vec<Vma> = Vec::with_capacity(maps.len());
    for map in maps {
        let backing = classify(&map);
        if let Some(last) = out.last_mut() {
            if backing == Backing::Vvar
                && last.backing == Backing::Vvar
                && last.map.end == map.start
            {
                last.map.end = map.end;
                continue;
            }
        }
        out.push(Vma { map, backing });
    }
    out
}

/// MADV_* advice bits (as `1 << advice`) that show in smaps VmFlags.
fn madv_bits(map: &MapEntry) -> u64 {
    const TABLE: &[(&str, u32)] = &[
        ("sr", libc::MADV_SEQUENTIAL as u32),
        ("rr", libc::MADV_RANDOM as u32),
        ("dc", libc::MADV_DONTFORK as u32),
        ("mg", libc::MADV_MERGEABLE as u32),
        ("hg", libc::MADV_HUGEPAGE as u32),
        ("nh", libc::MADV_NOHUGEPAGE as u32),
        ("dd", libc::MADV_DONTDUMP as u32),
        ("wf", libc::MADV_WIPEONFORK as u32),
    ];
    TABLE
        .iter()
        .filter(|(f, _)| map.has_flag(f))
        .fold(0, |acc, (_, a)| acc | (1u64 << a))
}

/// `MAP_DROPPABLE` (Linux 6.11): a mapping type of its own, in place of MAP_PRIVATE.
pub const MAP_DROPPABLE: i32 = 0x08;

/// The `MAP_HUGE_*` bits of mmap(2) (and `MFD_HUGE_*` of memfd_create(2)) naming a
/// huge page size: its log2 at bit 26 (`MAP_HUGE_SHIFT`).
pub fn huge_size_bits(page_bytes: u64) -> u32 {
    page_bytes.trailing_zeros() << libc::MAP_HUGE_SHIFT
}

/// mmap(2) flags that show in smaps VmFlags, as CRIU records them in `vma_entry.flags`:
/// locked (`lo`), no swap reservation (`nr`), droppable (`dp`, which replaces the
/// sharing type), hugetlb (`ht`, with the size bits of its page size, which smaps
/// shows as `KernelPageSize`).
fn vmflag_mmap_bits(map: &MapEntry, flags: i32) -> i32 {
    let mut flags = flags;
    if map.has_flag("ht") {
        flags |= libc::MAP_HUGETLB;
        if map.kernel_page_kb > 4 {
            flags |= huge_size_bits(map.kernel_page_kb * 1024) as i32;
        }
    }
    if map.has_flag("lo") {
        flags |= libc::MAP_LOCKED;
    }
    if map.has_flag("nr") {
        flags |= libc::MAP_NORESERVE;
    }
    if map.has_flag("dp") {
        flags = (flags & !libc::MAP_PRIVATE) | MAP_DROPPABLE;
    }
    flags
}

/// The image entry of a VMA; `shmid` is the file id (file mappings), the shmem inode
/// (shared anonymous), the segment's id (SysV shared memory) or 0.
pub fn vma_entry(vma: &Vma, shmid: u64) -> pb::VmaEntry {
    let m = &vma.map;
    let prot = (if m.read { libc::PROT_READ } else { 0 })
        | (if m.write { libc::PROT_WRITE } else { 0 })
        | (if m.exec { libc::PROT_EXEC } else { 0 });
    let sharing = if m.shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    let growsdown = if m.has_flag("gd") {
        libc::MAP_GROWSDOWN
    } else {
        0
    };
    let (status, flags, fdflags) = match &vma.backing {
        Backing::AnonPrivate => {
            let heap = if m.path == "[heap]" { VMA_AREA_HEAP } else { 0 };
            (
                VMA_AREA_REGULAR | VMA_ANON_PRIVATE | heap,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | growsdown,
                None,
            )
        }
        Backing::AnonShared { .. } => (
            VMA_AREA_REGULAR | VMA_ANON_SHARED,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | growsdown,
            None,
        ),
        // The object is saved and rebuilt as shared anonymous memory is (by its inode,
        // one object for all its mappings), and this mapping made of it privately again
        // (MAP_PRIVATE); its private copies are saved as a private mapping's.
        Backing::ShmemPrivate { .. } => (
            VMA_AREA_REGULAR | VMA_ANON_SHARED,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | growsdown,
            None,
        ),
        Backing::FilePrivate { .. } => (
            VMA_AREA_REGULAR | VMA_FILE_PRIVATE,
            sharing | growsdown,
            Some(libc::O_RDONLY),
        ),
        Backing::FileShared { .. } => {
            let mode = if m.has_flag("mw") {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            };
            (
                VMA_AREA_REGULAR | VMA_FILE_SHARED,
                sharing | growsdown,
                Some(mode),
            )
        }
        Backing::Memfd { shared, .. } => {
            let kind = if *shared {
                VMA_FILE_SHARED
            } else {
                VMA_FILE_PRIVATE
            };
            let mode = if m.has_flag("mw") {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            };
            (
                VMA_AREA_REGULAR | kind | VMA_AREA_MEMFD,
                sharing,
                Some(mode),
            )
        }
        // As CRIU records an attachment: shared anonymous memory of the segment's id,
        // read-only (SHM_RDONLY) when the mapping may not be made writable.
        Backing::SysvShm { .. } => {
            let mode = if m.has_flag("mw") {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            };
            (
                VMA_AREA_REGULAR | VMA_ANON_SHARED | VMA_AREA_SYSVIPC,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                Some(mode),
            )
        }
        Backing::Vdso => (
            VMA_AREA_REGULAR | VMA_AREA_VDSO | VMA_ANON_PRIVATE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            None,
        ),
        Backing::Vvar => (
            VMA_AREA_REGULAR | VMA_ANON_PRIVATE | VMA_AREA_VVAR,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            None,
        ),
        Backing::Vsyscall => (
            VMA_AREA_VSYSCALL | VMA_ANON_PRIVATE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            None,
        ),
        // CRIU writes the status alone and the flags of maps.
        Backing::AioRing => (VMA_AREA_AIORING, libc::MAP_SHARED, None),
        // MAP_HUGETLB and the page size come from the VmFlags (`vmflag_mmap_bits`).
        Backing::HugetlbPrivate => (
            VMA_AREA_REGULAR | VMA_ANON_PRIVATE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            None,
        ),
        Backing::HugetlbShared { .. } => (
            VMA_AREA_REGULAR | VMA_ANON_SHARED,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            None,
        ),
        // As CRIU records a packet ring: the socket's file id in `shmid`, no file bits.
        Backing::Socket { .. } => (VMA_AREA_REGULAR | VMA_AREA_SOCKET, sharing, None),
        // A shared mapping of a file: the ring's file id in `shmid`, at its offset.
        Backing::IoUring { .. } => (
            VMA_AREA_REGULAR | VMA_FILE_SHARED,
            sharing,
            Some(libc::O_RDWR),
        ),
        Backing::Unsupported(_) => (0, sharing, None),
    };
    let madv = madv_bits(m);
    let flags = match vma.backing {
        Backing::Vdso | Backing::Vvar | Backing::Vsyscall => flags,
        _ => vmflag_mmap_bits(m, flags),
    };
    pb::VmaEntry {
        start: m.start,
        end: m.end,
        // Shared anonymous memory has an offset too: a mapping of part of the object
        // (the rest unmapped, or mremapped, or mapped through map_files).
        pgoff: if let Backing::IoUring {
            sqes_offset: Some(sqes_offset),
            ..
        } = vma.backing
        {
            crate::files::io_uring::ring_offset(m.offset, sqes_offset)
        } else if matches!(
            vma.backing,
            Backing::FilePrivate { .. }
                | Backing::FileShared { .. }
                | Backing::Memfd { .. }
                | Backing::AnonShared { .. }
                | Backing::ShmemPrivate { .. }
                | Backing::SysvShm { .. }
                | Backing::HugetlbShared { .. }
                | Backing::Socket { .. }
                | Backing::IoUring { .. }
        ) {
            m.offset
        } else {
            0
        },
        shmid,
        prot: prot as u32,
        flags: flags as u32,
        status,
        fd: -1,
        madv: (madv != 0).then_some(madv),
        fdflags: fdflags.map(|f| f as u32),
    }
}

/// A run of pages to save: `[start, end)` of the task's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    pub start: u64,
    pub end: u64,
    pub flags: u32,
    /// Whether the task's copy of these pages may be given back to the kernel once they
    /// are saved (see `release.rs`), as far as `maps` tells (`release_candidate`).
    pub releasable: bool,
}

/// Whether a VMA's private pages are saved at all.
fn dumps_private_pages(backing: &Backing) -> bool {
    matches!(
        backing,
        Backing::AnonPrivate
            | Backing::FilePrivate { .. }
            | Backing::ShmemPrivate { .. }
            | Backing::Vdso
            | Backing::AioRing
            | Backing::HugetlbPrivate
    ) || matches!(backing, Backing::Memfd { shared: false, .. })
}

/// Whether the pages of a VMA may be dropped with MADV_DONTNEED and written back through
/// `process_vm_writev` unchanged, as far as `maps` tells: private anonymous read-write
/// memory. Its VmFlags (smaps) may still rule it out: see `release_blocked`.
fn release_candidate(vma: &Vma) -> bool {
    vma.backing == Backing::AnonPrivate && vma.map.read && vma.map.write
}

/// VmFlags that rule out releasing a mapping's pages: locked (`lo`, DONTNEED fails
/// there), hugetlb (`ht`), registered with userfaultfd (`um`, `uw`: its monitor would see
/// the removal, and writing back could wait for it), device memory (`io`, `pf`).
pub fn release_blocked(map: &MapEntry) -> bool {
    ["lo", "ht", "um", "uw", "io", "pf"]
        .iter()
        .any(|f| map.has_flag(f))
}

/// The smaps of every process of a frozen tree, read when first needed or ahead on a
/// thread of its own. The page walk behind smaps' sizes costs ~30 ms per resident GiB,
/// and only the VmFlags are needed, late (image VMA entries, and which pages may be
/// released). They are read while the pages are copied, except in a tree whose memory
/// is released from the start of the copy: that one reads them after, when the walk
/// finds next to nothing.
pub struct TreeSmaps {
    pending: Mutex<Option<PendingSmaps>>,
    read: std::sync::OnceLock<SmapsByPid>,
}

type SmapsByPid = Vec<(Pid, io::Result<Vec<MapEntry>>)>;

enum PendingSmaps {
    Reading(std::thread::JoinHandle<SmapsByPid>),
    NotRead(Vec<Pid>),
}

fn read_smaps(pids: Vec<Pid>) -> SmapsByPid {
    pids.into_iter()
        .map(|pid| (pid, crate::proc::ProcDir::open(pid).and_then(|d| d.maps())))
        .collect()
}

impl TreeSmaps {
    pub fn new(pids: Vec<Pid>, read_ahead: bool) -> std::sync::Arc<TreeSmaps> {
        let pending = if read_ahead {
            PendingSmaps::Reading(std::thread::spawn(move || {
                off_the_tracers_cpu();
                read_smaps(pids)
            }))
        } else {
            PendingSmaps::NotRead(pids)
        };
        std::sync::Arc::new(TreeSmaps {
            pending: Mutex::new(Some(pending)),
            read: std::sync::OnceLock::new(),
        })
    }

    /// The smaps of every process, read already (a live snapshot reads each one beside
    /// its page scan).
    pub fn already_read(read: Vec<(Pid, io::Result<Vec<MapEntry>>)>) -> std::sync::Arc<TreeSmaps> {
        std::sync::Arc::new(TreeSmaps {
            pending: Mutex::new(None),
            read: std::sync::OnceLock::from(read),
        })
    }

    /// The smaps of `pid`, read now or waited for if not done yet.
    pub fn of(&self, pid: Pid) -> io::Result<&[MapEntry]> {
        let all =
            self.read.get_or_init(
                || match self.pending.lock().ok().and_then(|mut p| p.take()) {
                    Some(PendingSmaps::Reading(reader)) => reader.join().unwrap_or_default(),
                    Some(PendingSmaps::NotRead(pids)) => read_smaps(pids),
                    None => Vec::new(),
                },
            );
        match all.iter().find(|(p, _)| *p == pid) {
            Some((_, Ok(maps))) => Ok(maps),
            Some((_, Err(e))) => Err(io::Error::new(e.kind(), e.to_string())),
            None => Err(io::Error::other(format!("no smaps read for {pid}"))),
        }
    }
}

/// Lets the calling thread run on every CPU the dumper may use: a thread started by the
/// tree's tracer inherits its pin to one CPU, and a page walk should run beside the
/// tracer's work, not after it (the process's main thread has the dumper's own
/// affinity).
fn off_the_tracers_cpu() {
    let me = Pid(std::process::id() as i32);
    if let Ok(all) = sys::get_affinity(me) {
        let _ = sys::set_affinity(Pid(0), &all);
    }
}

/// [`scan_pages`] of `vmas` in `pid` while a second thread reads its smaps: both walk its
/// page tables under the read side of its mmap lock, so they run side by side.
#[allow(clippy::type_complexity)]
pub fn scan_pages_beside_smaps(
    pid: Pid,
    vmas: &[Vma],
) -> (io::Result<(Vec<PageRun>, u64)>, io::Result<Vec<MapEntry>>) {
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            off_the_tracers_cpu();
            crate::proc::ProcDir::open(pid).and_then(|d| d.maps())
        });
        let scanned = scan_pages(pid, vmas);
        let smaps = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (scanned, smaps)
    })
}

/// Finds the pages of `vmas` worth saving: present or swapped, not the shared zero page,
/// and for file-backed private mappings only the privately modified (anonymous) copies.
/// Returns the runs and the number of pages scanned.
pub fn scan_pages(pid: Pid, vmas: &[Vma]) -> io::Result<(Vec<PageRun>, u64)> {
    let pagemap = File::open(format!("/proc/{}/pagemap", pid.0))?;
    let mut runs: Vec<PageRun> = Vec::new();
    let mut scanned = 0;
    let page = sys::page_size();
    for vma in vmas.iter().filter(|v| dumps_private_pages(&v.backing)) {
        scanned += (vma.map.end - vma.map.start) / page;
        let file_backed = !matches!(
            vma.backing,
            Backing::AnonPrivate | Backing::Vdso | Backing::HugetlbPrivate
        );
        let releasable = release_candidate(vma);
        // Hugetlb pages are never lazy (as in CRIU): a userfaultfd fills them only in
        // whole huge pages.
        let eager =
            matches!(vma.backing, Backing::Vdso | Backing::AioRing) || vma.map.has_flag("ht");
        let flags = if file_backed || eager {
            PE_PRESENT
        } else {
            PE_PRESENT | PE_LAZY
        };
        // The vDSO is saved whole, present or not, as CRIU does: CRIU's restore reads the
        // dumped vDSO's ELF header (for its proxy), and a forked child that never called
        // into it has none of its pages present.
        if matches!(vma.backing, Backing::Vdso | Backing::AioRing) {
            runs.push(PageRun {
                start: vma.map.start,
                end: vma.map.end,
                flags,
                releasable: false,
            });
            continue;
        }
        // Telling the page cache's pages apart costs a look at each page (~25 ms per
        // GiB here, against ~4 ms without): only asked where it matters.
        let file_pages = if file_backed { page_is::FILE } else { 0 };
        let regions = sys::pagemap_scan(
            pagemap.as_fd(),
            vma.map.start,
            vma.map.end,
            page_is::PRESENT | page_is::SWAPPED,
            page_is::PRESENT | page_is::SWAPPED | file_pages | page_is::PFNZERO | page_is::GUARD,
        )?;
        for r in regions {
            // A guard marker reads as swapped but has no page (reading it is EIO): the
            // region is recorded as a guard VMA entry instead (guards.rs).
            if r.categories & page_is::GUARD != 0 {
                continue;
            }
            let swapped = r.categories & page_is::SWAPPED != 0;
            let zero = r.categories & page_is::PFNZERO != 0;
            let page_cache = r.categories & page_is::FILE != 0;
            if !swapped && (zero || (file_backed && page_cache)) {
                continue;
            }
            match runs.last_mut() {
                Some(last)
                    if last.end == r.start
                        && last.flags == flags
                        && last.releasable == releasable =>
                {
                    last.end = r.end
                }
                _ => runs.push(PageRun {
                    start: r.start,
                    end: r.end,
                    flags,
                    releasable,
                }),
            }
        }
    }
    Ok((runs, scanned))
}

/// Whether the page at `addr` of `pid` is a private copy that a dump saves (present or
/// swapped, not the page cache's, not the zero page), as `scan_pages` judges it.
pub fn is_private_copy(pid: Pid, addr: u64) -> io::Result<bool> {
    let pagemap = File::open(format!("/proc/{}/pagemap", pid.0))?;
    let regions = sys::pagemap_scan(
        pagemap.as_fd(),
        addr,
        addr + sys::page_size(),
        page_is::PRESENT | page_is::SWAPPED,
        page_is::SWAPPED | page_is::FILE | page_is::PFNZERO,
    )?;
    Ok(regions.iter().any(|r| {
        r.categories & page_is::SWAPPED != 0
            || r.categories & (page_is::FILE | page_is::PFNZERO) == 0
    }))
}

/// `runs` without the pages of `[start, end)`.
pub fn without_range(runs: Vec<PageRun>, start: u64, end: u64) -> Vec<PageRun> {
    let mut out = Vec::with_capacity(runs.len() + 1);
    for r in runs {
        if r.end <= start || end <= r.start {
            out.push(r);
            continue;
        }
        if r.start < start {
            out.push(PageRun { end: start, ..r });
        }
        if end < r.end {
            out.push(PageRun { start: end, ..r });
        }
    }
    out
}

/// Bytes copied per step by one worker.
pub(super) const CHUNK: usize = 1 << 20;

/// A piece of a page run copied in one step: `len` bytes at `addr` in the task, at
/// `offset` in the pages file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub addr: u64,
    pub len: u64,
    pub offset: u64,
}

/// What takes saved memory back from the task while its pages are copied (`release.rs`
/// implements it; the copy needs nothing else of it).
pub trait ReleaseSaved {
    /// Drops the task's copy of `chunks`, already saved in the pages file.
    fn release(&mut self, chunks: &[Chunk]) -> io::Result<()>;

    /// The task's addresses `[start, end)` that releasing writes code over for a moment
    /// (and puts back). A page of them that is saved at all must be saved before the
    /// first release, or the pages file could hold our code instead of the task's.
    fn overwrites(&self) -> (u64, u64);

    /// Whether to release from the first saved batch on; otherwise releasing starts only
    /// once writing the pages file turns out slow (`CopyTiming::writes_slow`).
    fn release_at_once(&self) -> bool;
}

/// How long the copy's workers took reading the task's memory and writing the pages
/// file, over the same bytes.
///
/// Why it matters: on these machines (KVM guests with free page reporting) memory the
/// guest has not touched lately must first be backed by the host again, a fault per
/// page, and the pages file is allocated from it: writing 1 GiB took 2.8-3.8 s then,
/// against 0.7 s when each saved batch of the task's memory was released right away, so
/// the file was allocated from the pages just freed (`release.rs`). Writing takes longer
/// than reading the same bytes from the task, whose memory is backed for sure: 2-3 times
/// with warm memory, 4.5-29 times with cold (16 MiB windows, see the constants below).
#[derive(Default)]
struct CopyTiming {
    read_ns: std::sync::atomic::AtomicU64,
    write_ns: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

/// Writes are judged over at least this many bytes at a time.
const SLOW_WRITE_WINDOW: u64 = 16 << 20;
/// Writing counts as slow from this many times the time reading took on...
const SLOW_WRITE_RATIO: u64 = 4;
/// ...over this many windows in a row: a single window of a busy machine reaches 6-9x
/// now and then (warm memory: 2-3x most of the time, 3.7x at most in six dumps of
/// 1 GiB; a dump into cold memory: 4.5-29x for its first 300 MiB).
const SLOW_WINDOWS_IN_A_ROW: u32 = 3;

impl CopyTiming {
    fn add(&self, read: std::time::Duration, write: std::time::Duration, bytes: u64) {
        self.read_ns
            .fetch_add(read.as_nanos() as u64, Ordering::Relaxed);
        self.write_ns
            .fetch_add(write.as_nanos() as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Totals so far: (read ns, write ns, bytes).
    fn totals(&self) -> (u64, u64, u64) {
        (
            self.read_ns.load(Ordering::Relaxed),
            self.write_ns.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Whether writing was slow over the bytes copied since `mark` (the totals of the
    /// last judgement); `None` until at least `SLOW_WRITE_WINDOW` bytes are there to
    /// judge, when `mark` moves on.
    fn writes_slow(&self, mark: &mut (u64, u64, u64)) -> Option<bool> {
        let now = self.totals();
        let (read, write, bytes) = (now.0 - mark.0, now.1 - mark.1, now.2 - mark.2);
        if bytes < SLOW_WRITE_WINDOW {
            return None;
        }
        *mark = now;
        Some(write > read.saturating_mul(SLOW_WRITE_RATIO))
    }
}

/// Saved chunks are handed to the release in batches: each costs one injected madvise
/// per contiguous range, and memory given back early is what the rest of the copy
/// allocates from. Batches start small (the first chunks land in memory the machine may
/// have to fetch from its host) and double up to the largest.
const RELEASE_BATCH_FIRST: u64 = 4 << 20;
const RELEASE_BATCH_MAX: u64 = 32 << 20;

/// Copies the pages of `runs` from `pid` into the pages `file`, in run order, with up to
/// `workers` threads, counting them in `progress`. Returns the bytes written.
///
/// With `release`, the calling thread (the tree's tracer) hands the chunks of releasable
/// runs to it as soon as all chunks before them are saved, while the workers go on.
/// Once `interrupt` is raised the workers stop and the copy fails with an `Interrupted`
/// io error.
pub fn copy_pages(
    pid: Pid,
    runs: &[PageRun],
    file: &File,
    workers: usize,
    release: Option<&mut dyn ReleaseSaved>,
    interrupt: &crate::interrupt::Interrupt,
    progress: &Progress,
) -> io::Result<u64> {
    let copy = CopyControl {
        interrupt,
        progress,
        zeroed_if_unreadable: None,
    };
    copy_pages_with(pid, runs, file, workers, release, &copy)
}

/// [`copy_pages`] from a task that runs meanwhile (a pre-dump's, `predump.rs`): a
/// chunk it unmapped or left (it exited) is saved as zeros and counted in the second
/// number returned, and the copy goes on. That is safe there: the next dump saves again
/// any page the task wrote, and a page it unmapped is in no tracked VMA any more.
pub fn copy_pages_running(
    pid: Pid,
    runs: &[PageRun],
    file: &File,
    workers: usize,
    interrupt: &crate::interrupt::Interrupt,
    progress: &Progress,
) -> io::Result<(u64, u64)> {
    let unreadable = AtomicUsize::new(0);
    let copy = CopyControl {
        interrupt,
        progress,
        zeroed_if_unreadable: Some(&unreadable),
    };
    let bytes = copy_pages_with(pid, runs, file, workers, None, &copy)?;
    Ok((bytes, unreadable.into_inner() as u64))
}

/// What a page copy answers to besides the pages: the request to stop, the progress
/// counts, and (a running task's copy) the count of bytes saved as zeros because the
/// task no longer had them.
struct CopyControl<'a> {
    interrupt: &'a crate::interrupt::Interrupt,
    progress: &'a Progress,
    zeroed_if_unreadable: Option<&'a AtomicUsize>,
}

fn copy_pages_with(
    pid: Pid,
    runs: &[PageRun],
    file: &File,
    workers: usize,
    release: Option<&mut dyn ReleaseSaved>,
    copy: &CopyControl,
) -> io::Result<u64> {
    // Pages the parent images hold (incremental dumps, `track.rs`) are not copied.
    let runs: Vec<&PageRun> = runs.iter().filter(|r| r.flags & PE_PARENT == 0).collect();
    let total: u64 = runs.iter().map(|r| r.end - r.start).sum();
    // Exactly the pages' size: trims a preallocated file that was estimated too big.
    file.set_len(total)?;
    if total == 0 {
        return Ok(0);
    }
    // Chunks never cross a run, so each is releasable or not as a whole.
    let mut chunks: Vec<(Chunk, bool)> = Vec::new();
    let mut offset = 0u64;
    for r in runs {
        let mut addr = r.start;
        while addr < r.end {
            let len = (r.end - addr).min(CHUNK as u64);
            chunks.push((Chunk { addr, len, offset }, r.releasable));
            addr += len;
            offset += len;
        }
    }
    copy_chunk_list(pid, &chunks, file, workers, release, copy)?;
    Ok(total)
}

/// Copies `chunks` of `pid`'s memory into the pages `file` at their offsets, with up to
/// `workers` threads (the live snapshot's two halves, `snapshot.rs`), counting them in
/// `progress`. Returns the bytes written.
pub fn copy_chunks(
    pid: Pid,
    chunks: &[Chunk],
    file: &File,
    workers: usize,
    interrupt: &crate::interrupt::Interrupt,
    progress: &Progress,
) -> io::Result<u64> {
    let listed: Vec<(Chunk, bool)> = chunks.iter().map(|c| (*c, false)).collect();
    let copy = CopyControl {
        interrupt,
        progress,
        zeroed_if_unreadable: None,
    };
    copy_chunk_list(pid, &listed, file, workers, None, &copy)?;
    Ok(chunks.iter().map(|c| c.len).sum())
}

fn copy_chunk_list(
    pid: Pid,
    chunks: &[(Chunk, bool)],
    file: &File,
    workers: usize,
    release: Option<&mut dyn ReleaseSaved>,
    copy: &CopyControl,
) -> io::Result<()> {
    if chunks.is_empty() {
        return Ok(());
    }
    let (interrupt, progress, zeroed_if_unreadable) =
        (copy.interrupt, copy.progress, copy.zeroed_if_unreadable);
    progress.plan(chunks.iter().map(|(c, _)| c.len).sum());
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<io::Error>> = Mutex::new(None);
    let record = |e: io::Error| {
        if let Ok(mut slot) = first_error.lock() {
            slot.get_or_insert(e);
        }
    };
    let mem = match File::open(format!("/proc/{}/mem", pid.0)) {
        Ok(mem) => mem,
        // A running task that exited: every read fails, and is saved as zeros.
        Err(_) if zeroed_if_unreadable.is_some() => File::open("/dev/null")?,
        Err(e) => return Err(e),
    };
    let timing = CopyTiming::default();
    // Chunks are at most `CHUNK` long, or `snapshot::LIVE_CHUNK` after a thaw.
    let longest = chunks
        .iter()
        .map(|(c, _)| c.len as usize)
        .max()
        .unwrap_or(0);
    // A new pages file on tmpfs is filled without write(2)'s inode lock (`ShmemFill`).
    let file_end = chunks
        .iter()
        .map(|(c, _)| c.offset + c.len)
        .max()
        .unwrap_or(0);
    let fill = sys::ShmemFill::new(file, file_end);
    let (saved_tx, saved_rx) = std::sync::mpsc::channel::<usize>();
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, chunks.len()) {
            let saved_tx = saved_tx.clone();
            let (next, first_error, mem, record) = (&next, &first_error, &mem, &record);
            let (timing, fill) = (&timing, &fill);
            s.spawn(move || {
                let mut buf = vec![0u8; longest];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(c, _)) = chunks.get(i) else {
                        break;
                    };
                    if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        break;
                    }
                    if let Err(e) = interrupt.check() {
                        record(e.into());
                        break;
                    }
                    let buf = &mut buf[..c.len as usize];
                    let started = std::time::Instant::now();
                    let read = match (read_remote(pid, mem, c.addr, buf), zeroed_if_unreadable) {
                        (Err(_), Some(count)) => {
                            buf.fill(0);
                            count.fetch_add(buf.len(), Ordering::Relaxed);
                            Ok(())
                        }
                        (read, _) => read,
                    };
                    let read_at = std::time::Instant::now();
                    let result = read.and_then(|()| {
                        let copied = fill.as_ref().map_or(0, |f| f.copy(buf, c.offset));
                        file.write_all_at(&buf[copied..], c.offset + copied as u64)
                    });
                    if let Err(e) = result {
                        record(e);
                        break;
                    }
                    timing.add(read_at - started, read_at.elapsed(), c.len);
                    progress.advance(c.len);
                    let _ = saved_tx.send(i);
                }
            });
        }
        drop(saved_tx);
        let Some(release) = release else {
            return;
        };
        // Chunks saved so far, and how far the saved prefix reaches.
        let mut saved = vec![false; chunks.len()];
        let (mut prefix, mut released) = (0, 0);
        // Nothing is released before the chunks holding the words a release overwrites
        // are saved (a page of the task's text is saved once a dump has written our
        // code into it: it is a private copy from then on).
        let (code_start, code_end) = release.overwrites();
        let saved_first = chunks
            .iter()
            .rposition(|(c, _)| c.addr < code_end && code_start < c.addr + c.len)
            .map_or(0, |i| i + 1);
        // Bytes of chunks[released..prefix].
        let mut pending = 0u64;
        let mut batch_bytes = RELEASE_BATCH_FIRST;
        // Until releasing starts, the saved chunks wait in chunks[released..prefix]: the
        // first release gives back all of them.
        let mut releasing = release.release_at_once();
        let (mut judged, mut slow_windows) = ((0, 0, 0), 0);
        loop {
            let more = match saved_rx.recv() {
                Ok(i) => {
                    saved[i] = true;
                    true
                }
                Err(_) => false,
            };
            while prefix < chunks.len() && saved[prefix] {
                pending += chunks[prefix].0.len;
                prefix += 1;
            }
            if prefix < saved_first && more {
                continue;
            }
            if !releasing {
                match timing.writes_slow(&mut judged) {
                    Some(true) => slow_windows += 1,
                    Some(false) => slow_windows = 0,
                    None => {}
                }
            }
            if !releasing && slow_windows >= SLOW_WINDOWS_IN_A_ROW {
                let (read_ns, write_ns, bytes) = timing.totals();
                tracing::debug!(%pid, read_ns, write_ns, bytes, "writing pages is slow: releasing memory as it is saved");
                releasing = true;
            }
            if !releasing {
                if !more {
                    return;
                }
                continue;
            }
            if pending >= batch_bytes || (!more && pending > 0) {
                batch_bytes = (batch_bytes * 2).min(RELEASE_BATCH_MAX);
                let batch: Vec<Chunk> = chunks[released..prefix]
                    .iter()
                    .filter(|(_, releasable)| *releasable)
                    .map(|(c, _)| *c)
                    .collect();
                released = prefix;
                pending = 0;
                // Releasing only saves time: on failure the copy goes on without it.
                if let Err(e) = release.release(&batch) {
                    tracing::warn!(%pid, "releasing saved memory stopped: {e}");
                    return;
                }
            }
            if !more {
                return;
            }
        }
    });
    let (read_ns, write_ns, bytes) = timing.totals();
    tracing::debug!(%pid, read_ns, write_ns, bytes, "pages copied");
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    Ok(())
}

/// Reads task memory: process_vm_readv first; pages it cannot read (PROT_NONE, guard
/// pages) come through /proc/PID/mem, which reads anything the task may read.
fn read_remote(pid: Pid, mem: &File, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let got = sys::process_vm_readv(pid, buf, &[(addr, buf.len())]).unwrap_or(0);
    if got < buf.len() {
        mem.read_exact_at(&mut buf[got..], addr + got as u64)?;
    }
    Ok(())
}

/// Bytes of `runs` whose pages a release may give back (`PageRun::releasable`).
pub fn releasable_bytes<'a>(runs: impl IntoIterator<Item = &'a PageRun>) -> u64 {
    runs.into_iter()
        .filter(|r| r.releasable)
        .map(|r| r.end - r.start)
        .sum()
}

/// The pagemap entries for `runs`.
pub fn pagemap_entries(runs: &[PageRun]) -> Vec<pb::PagemapEntry> {
    let page = sys::page_size();
    runs.iter()
        .map(|r| pb::PagemapEntry {
            vaddr: r.start,
            compat_nr_pages: 0,
            in_parent: None,
            flags: Some(r.flags),
            nr_pages: Some((r.end - r.start) / page),
        })
        .collect()
}

/// The populated ranges of a shared memory object (shared anonymous memory or a memfd),
/// as (offset, length) pairs, found with SEEK_DATA/SEEK_HOLE on the object itself.
pub fn shmem_data_ranges(object: &File) -> io::Result<Vec<(u64, u64)>> {
    if let Some(huge) = sys::huge_page_size(object)? {
        return hugetlb_data_ranges(object, huge);
    }
    let size = object.metadata()?.len();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let Some(data) = sys::lseek(object.as_fd(), pos, libc::SEEK_DATA)? else {
            break;
        };
        let hole = sys::lseek(object.as_fd(), data, libc::SEEK_HOLE)?.unwrap_or(size);
        let hole = hole.min(size);
        if hole > data {
            out.push((data, hole - data));
        }
        pos = hole.max(data + 1);
    }
    Ok(out)
}

/// The huge pages of a hugetlbfs object that hold anything but zeros, as (offset,
/// length) runs. hugetlbfs has no SEEK_DATA of its own (the whole file is data to
/// lseek), and reading a page nobody wrote gives zeros without allocating it; saving
/// only written pages keeps a restore from taking huge pages the task never had.
fn hugetlb_data_ranges(object: &File, huge: u64) -> io::Result<Vec<(u64, u64)>> {
    let size = object.metadata()?.len();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; CHUNK.min(huge as usize)];
    let mut page = 0u64;
    while page < size {
        let len = huge.min(size - page);
        let mut written = false;
        let mut at = 0u64;
        while at < len && !written {
            let n = (buf.len() as u64).min(len - at) as usize;
            object.read_exact_at(&mut buf[..n], page + at)?;
            written = buf[..n].iter().any(|&b| b != 0);
            at += n as u64;
        }
        if written {
            match out.last_mut() {
                Some(last) if last.0 + last.1 == page => last.1 += len,
                _ => out.push((page, len)),
            }
        }
        page += len;
    }
    Ok(out)
}

/// Copies the `ranges` of a shared memory object into `pages_file`; returns the pagemap
/// entries (addresses are offsets into the object) and the bytes written.
pub fn copy_shmem(
    object: &File,
    ranges: &[(u64, u64)],
    pages_file: &Path,
) -> io::Result<(Vec<pb::PagemapEntry>, u64)> {
    let out = criu_images::create_image_file(pages_file)?;
    let page = sys::page_size();
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0u64;
    let mut entries = Vec::new();
    for &(off, len) in ranges {
        let (start, end) = (off / page * page, (off + len).div_ceil(page) * page);
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(CHUNK);
            object.read_exact_at(&mut buf[..n], pos).or_else(|e| {
                // The object may end inside its last page: the rest reads as zeros.
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    buf[..n].fill(0);
                    let got = object.read_at(&mut buf[..n], pos)?;
                    let _ = got;
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            out.write_all_at(&buf[..n], written)?;
            written += n as u64;
            pos += n as u64;
        }
        entries.push(pb::PagemapEntry {
            vaddr: start,
            compat_nr_pages: 0,
            in_parent: None,
            flags: Some(PE_PRESENT),
            nr_pages: Some((end - start) / page),
        });
    }
    Ok((entries, written))
}

/// Bytes of private pages a dump of these VMAs will save, estimated from smaps before
/// freezing (anonymous and swapped pages, plus the vDSO).
pub fn estimate_private_bytes(vmas: &[Vma]) -> u64 {
    vmas.iter()
        .filter(|v| dumps_private_pages(&v.backing))
        .map(|v| {
            if v.backing == Backing::Vdso {
                v.map.rss_kb
            } else {
                v.map.anonymous_kb + v.map.swap_kb
            }
        })
        .sum::<u64>()
        * 1024
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::parse_smaps;

    #[test]
    fn classifies_and_merges_vvar() {
        let text = "\
7f0000000000-7f0000004000 r--p 00000000 00:00 0                          [vvar]
7f0000004000-7f0000006000 r--p 00000000 00:00 0                          [vvar_vclock]
7f0000006000-7f0000008000 r-xp 00000000 00:00 0                          [vdso]
7f0000010000-7f0000020000 rw-s 00000000 00:01 37                         /dev/zero (deleted)
7f0000020000-7f0000030000 r-xp 00001000 fe:00 12                         /usr/lib/libc.so.6
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";
        let v = vmas(parse_smaps(text).unwrap());
        assert_eq!(v.len(), 5);
        assert_eq!(v[0].backing, Backing::Vvar);
        assert_eq!(v[0].map.end, 0x7f0000006000);
        assert_eq!(v[1].backing, Backing::Vdso);
        assert_eq!(v[2].backing, Backing::AnonShared { inode: 37 });
        assert!(matches!(v[3].backing, Backing::FilePrivate { .. }));
        let e = vma_entry(&v[3], 3);
        assert_eq!(
            (e.pgoff, e.shmid, e.status),
            (0x1000, 3, VMA_AREA_REGULAR | VMA_FILE_PRIVATE)
        );
        assert_eq!(
            vma_entry(&v[4], 0).status,
            VMA_AREA_VSYSCALL | VMA_ANON_PRIVATE
        );
    }

    #[test]
    fn a_mapped_packet_ring_is_a_socket_mapping() {
        let text = "\
7f0000000000-7f0000004000 rw-s 00000000 00:08 5739269                    socket:[5739269]
";
        let v = vmas(parse_smaps(text).unwrap());
        assert_eq!(v[0].backing, Backing::Socket { inode: 5739269 });
        let e = vma_entry(&v[0], 12);
        assert_eq!(e.status, VMA_AREA_REGULAR | VMA_AREA_SOCKET);
        assert_eq!((e.shmid, e.fdflags), (12, None));
        assert_eq!(e.flags, libc::MAP_SHARED as u32);
    }

    /// A release that writes code over the task's last chunk for a moment: nothing is
    /// released before that chunk is in the pages file, so the file never holds the code.
    #[test]
    fn writes_are_judged_slow_over_a_window_against_reads() {
        let timing = CopyTiming::default();
        let ms = std::time::Duration::from_millis;
        let mut mark = (0, 0, 0);
        // Too few bytes to judge: the window does not move on.
        timing.add(ms(1), ms(10), 4 << 20);
        assert_eq!(timing.writes_slow(&mut mark), None);
        assert_eq!(mark, (0, 0, 0));
        // 16 MiB, writing 10x reading: slow.
        timing.add(ms(3), ms(30), 12 << 20);
        assert_eq!(timing.writes_slow(&mut mark), Some(true));
        assert_eq!(mark.2, 16 << 20);
        // The next window is judged alone: writing 2x reading is not slow.
        timing.add(ms(10), ms(20), 16 << 20);
        assert_eq!(timing.writes_slow(&mut mark), Some(false));
        assert_eq!(mark.2, 32 << 20);
    }

    #[test]
    fn no_release_before_the_overwritten_chunk_is_saved() {
        struct Recorder<'a> {
            file: &'a File,
            code: (u64, u64),
            code_offset: u64,
            calls: usize,
            saved_before_each: Vec<bool>,
        }
        impl ReleaseSaved for Recorder<'_> {
            fn release(&mut self, _chunks: &[Chunk]) -> io::Result<()> {
                let mut word = [0u8; 8];
                let saved = self.file.read_exact_at(&mut word, self.code_offset).is_ok()
                    && word != [0u8; 8];
                self.saved_before_each.push(saved);
                self.calls += 1;
                Ok(())
            }
            fn overwrites(&self) -> (u64, u64) {
                self.code
            }
            fn release_at_once(&self) -> bool {
                true
            }
        }
        const LEN: usize = 12 * CHUNK;
        let mut memory = memmap2::MmapMut::map_anon(LEN).unwrap();
        for (i, word) in memory.chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(&(i as u64 | 1 << 63).to_le_bytes());
        }
        let start = memory.as_ptr() as u64;
        let runs = [PageRun {
            start,
            end: start + LEN as u64,
            flags: 0,
            releasable: true,
        }];
        let dir = std::env::temp_dir().join(format!("criu-rs-mm-release-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pages.img");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let code_at = start + LEN as u64 - 4096;
        let mut recorder = Recorder {
            file: &file,
            code: (code_at, code_at + 24),
            code_offset: LEN as u64 - 4096,
            calls: 0,
            saved_before_each: Vec::new(),
        };
        let me = Pid(std::process::id() as i32);
        let interrupt = crate::interrupt::Interrupt::new();
        let progress = Progress::new();
        let copied = copy_pages(
            me,
            &runs,
            &file,
            4,
            Some(&mut recorder),
            &interrupt,
            &progress,
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(copied.unwrap(), LEN as u64);
        let counted = progress.now();
        assert_eq!((counted.planned, counted.done), (LEN as u64, LEN as u64));
        assert!(recorder.calls > 0);
        assert!(
            recorder.saved_before_each.iter().all(|&s| s),
            "released before the overwritten chunk was saved: {:?}",
            recorder.saved_before_each
        );
    }

    /// A SysV attachment split by mprotect: each part is recorded as CRIU does, with its
    /// offset into the segment, the segment's id, and whether it may be written.
    #[test]
    fn sysv_attachments_as_criu_records_them() {
        let text = "\
7f0000004000-7f0000005000 rw-s 00000000 00:01 28                         /SYSV00007777 (deleted)
VmFlags: rd wr sh mr mw me ms sd
7f0000005000-7f0000006000 r--s 00001000 00:01 28                         /SYSV00007777 (deleted)
VmFlags: rd sh mr mw me ms sd
7f0000020000-7f0000022000 r--s 00000000 00:01 29                         /SYSV00000000 (deleted)
VmFlags: rd sh mr me ms sd
";
        let v = vmas(parse_smaps(text).unwrap());
        assert_eq!(v[0].backing, Backing::SysvShm { shmid: 28 });
        assert_eq!(v[0].backing.kind(), Kind::MapSysvShm);
        assert!(!dumps_private_pages(&v[0].backing));
        let status = VMA_AREA_REGULAR | VMA_ANON_SHARED | VMA_AREA_SYSVIPC;
        let shared_anon = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u32;
        let e = vma_entry(&v[1], 28);
        assert_eq!(
            (e.pgoff, e.shmid, e.status, e.flags),
            (0x1000, 28, status, shared_anon)
        );
        assert_eq!(e.prot, libc::PROT_READ as u32);
        // Made read-only by mprotect, but attached writable.
        assert_eq!(e.fdflags, Some(libc::O_RDWR as u32));
        // Attached with SHM_RDONLY: it may never be written.
        assert_eq!(vma_entry(&v[2], 29).fdflags, Some(libc::O_RDONLY as u32));
    }

    /// Shared anonymous memory mapped privately (through map_files): the same object by
    /// its inode, mapped MAP_PRIVATE at its offset, its private copies saved.
    #[test]
    fn shared_anonymous_memory_mapped_privately() {
        let text = "\
7f0000010000-7f0000013000 rw-p 00001000 00:01 37                         /dev/zero (deleted)
";
        let v = vmas(parse_smaps(text).unwrap());
        assert_eq!(v[0].backing, Backing::ShmemPrivate { inode: 37 });
        assert_eq!(v[0].backing.kind(), Kind::MapShmemPrivate);
        assert!(dumps_private_pages(&v[0].backing));
        let e = vma_entry(&v[0], 37);
        assert_eq!(
            (e.pgoff, e.shmid, e.status),
            (0x1000, 37, VMA_AREA_REGULAR | VMA_ANON_SHARED)
        );
        assert_eq!(
            e.flags & (libc::MAP_PRIVATE | libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u32,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32
        );
    }

    /// Hugetlb memory as CRIU 4.2 records it: anonymous, private or shared (by inode),
    /// with MAP_HUGETLB and the size bits of its page size (smaps KernelPageSize).
    #[test]
    fn hugetlb_memory_as_criu_records_it() {
        let text = "\
7f0000000000-7f0000400000 rw-p 00000000 00:11 7274118                    /anon_hugepage (deleted)
KernelPageSize:     2048 kB
VmFlags: rd wr mr mw me de ht sd
7f0000400000-7f0000800000 rw-s 00200000 00:11 7274117                    /anon_hugepage (deleted)
KernelPageSize:     2048 kB
VmFlags: rd wr sh mr mw me ms de ht sd
7f0040000000-7f0080000000 rw-p 00000000 00:12 7274119                    /memfd:big (deleted)
KernelPageSize:  1048576 kB
VmFlags: rd wr mr mw me ht sd
";
        let v = vmas(parse_smaps(text).unwrap());
        assert_eq!(v[0].backing, Backing::HugetlbPrivate);
        assert_eq!(v[1].backing, Backing::HugetlbShared { inode: 7274117 });
        assert_eq!(v[0].backing.kind(), Kind::MapHugetlb);
        assert!(dumps_private_pages(&v[0].backing));
        assert!(!dumps_private_pages(&v[1].backing));
        let huge_2mb = (libc::MAP_HUGETLB as u32) | (21 << 26);
        let e = vma_entry(&v[0], 0);
        assert_eq!(
            (e.status, e.flags, e.pgoff, e.shmid),
            (
                VMA_AREA_REGULAR | VMA_ANON_PRIVATE,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32 | huge_2mb,
                0,
                0
            )
        );
        let e = vma_entry(&v[1], 7274117);
        assert_eq!(
            (e.status, e.flags, e.pgoff, e.shmid),
            (
                VMA_AREA_REGULAR | VMA_ANON_SHARED,
                (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u32 | huge_2mb,
                0x200000,
                7274117
            )
        );
        // A 1 GiB hugetlb memfd mapping: MAP_HUGE_1GB.
        let e = vma_entry(&v[2], 5);
        assert_eq!(
            e.flags,
            libc::MAP_PRIVATE as u32 | libc::MAP_HUGETLB as u32 | (30 << 26)
        );
        assert_eq!(huge_size_bits(2 << 20), 21 << 26);
    }
}
