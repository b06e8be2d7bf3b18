//! What the numbers in image fields mean: the flag sets and task states CRIU's images
//! hold (CRIU's `criu/include/image.h` and compel's task states). One definition each,
//! read by the dump that writes them, the restore that reads them and crit, which prints
//! their names.
//!
//! Each flag set is a `bitflags` type (for code that works with sets) and, with the same
//! names, a module of plain `u32` constants (for arithmetic on raw protobuf fields).

/// Defines a flag set as a `bitflags` type and a module of its bits as `u32` constants.
macro_rules! image_flags {
    ($(#[doc = $doc:literal])* $name:ident in $module:ident {
        $($(#[doc = $fdoc:literal])* $flag:ident = $value:expr;)*
    }) => {
        bitflags::bitflags! {
            $(#[doc = $doc])*
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
            pub struct $name: u32 {
                $($(#[doc = $fdoc])* const $flag = $value;)*
            }
        }

        #[doc = concat!("The bits of [`", stringify!($name), "`] as plain numbers.")]
        pub mod $module {
            $($(#[doc = $fdoc])* pub const $flag: u32 = $value;)*
        }
    };
}

image_flags! {
    /// `VmaEntry.status`: what a mapping is, as the dumper classified it.
    VmaStatus in vma {
        VMA_AREA_REGULAR = 1 << 0;
        VMA_AREA_STACK = 1 << 1;
        VMA_AREA_VSYSCALL = 1 << 2;
        VMA_AREA_VDSO = 1 << 3;
        VMA_AREA_HEAP = 1 << 5;
        VMA_FILE_PRIVATE = 1 << 6;
        VMA_FILE_SHARED = 1 << 7;
        VMA_ANON_SHARED = 1 << 8;
        VMA_ANON_PRIVATE = 1 << 9;
        VMA_AREA_SYSVIPC = 1 << 10;
        VMA_AREA_SOCKET = 1 << 11;
        VMA_AREA_VVAR = 1 << 12;
        VMA_AREA_AIORING = 1 << 13;
        VMA_AREA_MEMFD = 1 << 14;
        VMA_AREA_SHSTK = 1 << 15;
        VMA_AREA_GUARD = 1 << 16;
        VMA_AREA_UPROBES = 1 << 17;
        VMA_UNSUPP = 1 << 31;
    }
}

image_flags! {
    /// `PagemapEntry.flags`: where a run of pages is.
    PageFlags in page {
        /// In the parent images (an incremental dump).
        PE_PARENT = 1 << 0;
        /// Restored on demand (lazy pages).
        PE_LAZY = 1 << 1;
        /// In this image's pages file.
        PE_PRESENT = 1 << 2;
    }
}

image_flags! {
    /// `FileLockEntry.flag`: the family of a lock (CRIU's `criu/include/file-lock.h`).
    /// One bit per entry; `FileLockEntry.type` is then `F_RDLCK` (0) or `F_WRLCK` (1),
    /// for flock locks too.
    FileLockFlags in file_lock {
        /// `fcntl(F_SETLK)`/`lockf`: owned by the process.
        FL_POSIX = 1 << 0;
        /// `flock(2)`: owned by the open file description.
        FL_FLOCK = 1 << 1;
        /// `F_OFD_SETLK`: owned by the open file description.
        FL_OFD = 1 << 2;
        /// `F_SETLEASE`.
        FL_LEASE = 1 << 3;
    }
}

/// `TaskCoreEntry.task_state` (compel's task states; CRIU keeps these values fixed).
pub mod task_state {
    /// A running (or sleeping) task.
    pub const ALIVE: u32 = 0x01;
    /// A task that is gone (CRIU never writes it into an image).
    pub const DEAD: u32 = 0x02;
    /// A task stopped by a stop signal.
    pub const STOPPED: u32 = 0x03;
    /// A zombie: exited, not yet reaped.
    pub const ZOMBIE: u32 = 0x06;
}

/// Namespace kinds as /proc/PID/ns names them, with the CLONE_NEW* bit that
/// `NsFileEntry.ns_cflag` holds for each.
pub const NS_KINDS: &[(&str, u32)] = &[
    ("cgroup", 0x0200_0000),
    ("ipc", 0x0800_0000),
    ("mnt", 0x0002_0000),
    ("net", 0x4000_0000),
    ("pid", 0x2000_0000),
    ("time", 0x0000_0080),
    ("user", 0x1000_0000),
    ("uts", 0x0400_0000),
];

/// The names crit prints for a flag set, in bit order (`VMA_AREA_NONE` is what crit
/// prints for a `status` of 0).
pub fn vma_status_names() -> Vec<(&'static str, u64)> {
    std::iter::once(("VMA_AREA_NONE", 0))
        .chain(
            VmaStatus::all()
                .iter_names()
                .map(|(n, f)| (n, u64::from(f.bits()))),
        )
        .collect()
}

/// See `vma_status_names`.
pub fn page_flag_names() -> Vec<(&'static str, u64)> {
    PageFlags::all()
        .iter_names()
        .map(|(n, f)| (n, u64::from(f.bits())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_and_sets_agree() {
        assert_eq!(vma::VMA_FILE_PRIVATE, VmaStatus::VMA_FILE_PRIVATE.bits());
        assert_eq!(page::PE_PRESENT, 4);
        let names = vma_status_names();
        assert_eq!(names[0], ("VMA_AREA_NONE", 0));
        assert_eq!(names[1], ("VMA_AREA_REGULAR", 1));
        assert_eq!(names.last(), Some(&("VMA_UNSUPP", 1 << 31)));
        assert_eq!(
            page_flag_names(),
            [("PE_PARENT", 1), ("PE_LAZY", 2), ("PE_PRESENT", 4)]
        );
    }
}
