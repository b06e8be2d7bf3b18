//! Files reopened by path: regular files, directories, memory devices (`/dev/null`...),
//! `O_PATH` references, files of `/proc/PID` of the tree's tasks, and files handed in
//! from outside the tree's mounts (external, given back with `--inherit-fd`).
//!
//! Dump: the path, flags, position, mode and, for regular files, the size and the ELF
//! build-id, after checking that the path still leads to the open file. A deleted one
//! is saved as a ghost file or a linked remap (see `ghost.rs`).
//!
//! Restore: reopened by path (under `--root`) with the saved flags and position; a file
//! whose size changed since the dump is refused. A deleted file is made again from its
//! ghost image, or opened through its linked remap (`ghost.rs`); every open of it, and
//! every mapping of it, shares that one file.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use criu_images::pb;

use super::dump::{self_fd_path, FileError, FileTable, OpenFd};
use super::ghost::{self, ghost_ok};
use super::kinds::{self, Given, Kind};
use super::procfs;
use super::restore::{
    bad, finish, open_flags, optional, read_entries, reopen, FileOpener, FileRef, Result,
};
use crate::sys::{self, Pid};

/// What the kernel appends to the path of a deleted file (bytes: paths need not be UTF-8).
const DELETED: &[u8] = b" (deleted)";

/// The build-id is looked for in the first MiB of an ELF file only.
const BUILD_ID_WINDOW: u64 = 1 << 20;

/// Cheap checks before the dump: a deleted file with no name left must be one we can
/// save (one with other names is the kind table's: a linked remap). Any path is
/// representable: images hold paths as bytes.
pub(super) fn check(fd: &OpenFd<'_>) -> Result<(), FileError> {
    let deleted = fd.link.as_bytes().strip_suffix(DELETED);
    if let Some(path) = deleted.filter(|_| fd.meta.nlink() == 0) {
        ghost_ok(&fd.meta).map_err(|why| {
            fd.unsupported(format!(
                "deleted file {}: {why}",
                String::from_utf8_lossy(path)
            ))
        })?;
    }
    Ok(())
}

/// Filesystem magics (`f_type` of statfs) that change what a path-reopened file is.
const MQUEUE_MAGIC: i64 = 0x1980_0202;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// The sub-kind of a file reopened by path that `kind` (from its type) does not tell:
/// a message queue, a file of `/proc/PID`, or a deleted file.
pub(super) fn refine(fd: &OpenFd<'_>, kind: Kind) -> Result<Kind, FileError> {
    let fs = sys::fstatfs_type(fd.raw()).map_err(fd.io("read the file's filesystem"))?;
    Ok(if fs == MQUEUE_MAGIC {
        Kind::Mqueue
    } else if fs == PROC_SUPER_MAGIC && dead_proc_pid(fd)?.is_some() {
        Kind::ProcDeadPid
    } else if fs == PROC_SUPER_MAGIC && kinds::is_proc_pid_path(fd.link.as_bytes()) {
        Kind::ProcPidFile
    } else if let Some(deleted) = deleted_kind(fd) {
        deleted
    } else {
        kind
    })
}

/// The pid of the exited process whose `/proc/PID` file `fd` is (see `procfs.rs`).
pub(super) fn dead_proc_pid(fd: &OpenFd<'_>) -> Result<Option<i32>, FileError> {
    let link = fd.link.as_bytes();
    if !kinds::is_proc_pid_path(procfs::strip_deleted(link)) {
        return Ok(None);
    }
    if sys::fstatfs_type(fd.raw()).map_err(fd.io("read the file's filesystem"))? != PROC_SUPER_MAGIC
    {
        return Ok(None);
    }
    let base = crate::proc::mount_root(fd.pid).map_err(fd.io("read the task's root"))?;
    Ok(procfs::dead_pid(&base, link))
}

/// The kind of a deleted file (`None` when the file is not deleted): one with other
/// names (a linked remap), else a ghost: a regular file, or another kind of node.
fn deleted_kind(fd: &OpenFd<'_>) -> Option<Kind> {
    fd.link.as_bytes().strip_suffix(DELETED)?;
    Some(if fd.meta.nlink() != 0 {
        Kind::DeletedLinked
    } else if fd.meta.is_file() {
        Kind::DeletedFile
    } else {
        Kind::DeletedOther
    })
}

/// The `reg_file_entry` for a task's descriptor (also the path part of fifos and ttys).
///
/// `verify` checks that the path still names the open file in the task's root (not for
/// terminals, whose device nodes devpts manages).
pub(super) fn from_fd(
    table: &mut FileTable,
    fd: &OpenFd<'_>,
    id: u32,
    verify: bool,
) -> Result<pb::RegFileEntry, FileError> {
    if verify {
        check(fd)?;
    }
    let link = fd.link.as_bytes().to_vec();
    // Only regular files are reopened (for build-ids and ghost contents): reopening a
    // fifo could block and reopening a terminal could change the session's terminal;
    // reopening a file with a lease would start breaking it (see lock.rs).
    let readable = if fd.meta.is_file() && !super::lock::holds_lease(fd) {
        File::open(self_fd_path(fd.raw())).ok()
    } else {
        None
    };
    let mut external = false;
    // A file of /proc/PID of an exited process: a dead-pid remap (procfs.rs).
    let dead = if verify { dead_proc_pid(fd)? } else { None };
    let name = match link.strip_suffix(DELETED) {
        _ if dead.is_some() => {
            table.ghosts.add_dead_pid(id, dead.unwrap_or_default());
            procfs::strip_deleted(&link).to_vec()
        }
        // A terminal's node devpts removed (its pty's master closed): nothing to save.
        Some(path) if !verify => path.to_vec(),
        Some(path) if fd.meta.nlink() != 0 => {
            ghost::link_remap(table, fd, id, path)?;
            path.to_vec()
        }
        Some(path) => {
            let shown = String::from_utf8_lossy(path);
            table
                .ghosts
                .add(id, &fd.meta, readable.as_ref(), Some(fd.raw()))
                .map_err(|why| fd.unsupported(format!("deleted file {shown}: {why}")))?;
            path.to_vec()
        }
        None => {
            // The file must still be the one its path names in the task's root, or
            // restore would open something else.
            // A file on a mount outside the task's mount namespace (one its parent
            // gave it, as a container's log) has no path inside the tree: it is saved
            // as external (the path as we see it is its key), for the restore to be
            // handed (CRIU's --inherit-fd).
            if verify && outside_task_mounts(fd)? {
                external = true;
            } else if verify {
                verify_path(fd, &link)?;
            }
            link
        }
    };
    let fown = fd.fown()?;
    let mut e = entry(
        id,
        name,
        fd.common.flags,
        fd.common.pos,
        fown,
        &fd.meta,
        readable.as_ref(),
    );
    if external {
        e.ext = Some(true);
    }
    Ok(e)
}

/// Whether the file's mount is not one of the task's mount namespace.
fn outside_task_mounts(fd: &OpenFd<'_>) -> Result<bool, FileError> {
    // A chrooted task's mountinfo shows only the mounts under its root: one that shares
    // our mount namespace is judged by ours, which shows them all.
    let ns = |pid: String| std::fs::metadata(format!("/proc/{pid}/ns/mnt")).map(|m| m.ino());
    let ours = matches!((ns(fd.pid.to_string()), ns("self".into())), (Ok(a), Ok(b)) if a == b);
    let whose = if ours {
        "self".to_string()
    } else {
        fd.pid.to_string()
    };
    // Bytes: mount points need not be UTF-8 (only the ids are compared here).
    let mountinfo = if ours {
        let text = std::fs::read(format!("/proc/{whose}/mountinfo"))
            .map_err(fd.io("read the task's mountinfo"))?;
        String::from_utf8_lossy(&text).into_owned()
    } else {
        // Another namespace: all its mounts, as its root sees them (a chrooted task
        // sees only those under its root).
        crate::mounts::dump::namespace_mountinfo(fd.pid)
            .map_err(fd.io("read the mounts of the task's namespace"))?
    };
    let mine = fd.common.mnt_id.to_string();
    Ok(!mountinfo
        .lines()
        .any(|l| l.split_whitespace().next() == Some(mine.as_str())))
}

/// Directory entries `other_name` looks through at most.
const OTHER_NAME_MAX_ENTRIES: usize = 10_000;

/// Another name of a deleted file that still has links (`meta`), found in the directory
/// its deleted name `deleted` was in, as task `pid` sees it; the path as the task sees
/// it. glibc's sem_open makes a named semaphore as a temporary file in /dev/shm, links
/// it under the semaphore's name and unlinks the temporary name, which is the one its
/// mapping shows (Python's multiprocessing semaphores, with the forkserver and spawn
/// start methods). Restore maps the file by the name found: the same file, without
/// the extra name a linked remap would make (for mappings, which have none; an open
/// descriptor gets one with `--link-remap`, which brings back its deleted name too).
/// `None` when the directory holds no other name of it (or too many entries to look
/// through).
fn other_name(pid: Pid, deleted: &[u8], meta: &Metadata) -> Option<Vec<u8>> {
    let deleted = Path::new(std::ffi::OsStr::from_bytes(deleted));
    let dir = deleted.parent()?;
    let mut in_root = PathBuf::from(crate::proc::mount_root(pid).ok()?);
    in_root.push(dir.strip_prefix("/").unwrap_or(dir));
    for entry in std::fs::read_dir(&in_root)
        .ok()?
        .take(OTHER_NAME_MAX_ENTRIES)
    {
        let Ok(entry) = entry else { continue };
        let Ok(st) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if st.dev() == meta.dev() && st.ino() == meta.ino() && st.is_file() {
            return Some(dir.join(entry.file_name()).as_os_str().as_bytes().to_vec());
        }
    }
    None
}

/// Stats `path` in the task's mount tree and compares it with the open file.
fn verify_path(fd: &OpenFd<'_>, path_bytes: &[u8]) -> Result<(), FileError> {
    let path = String::from_utf8_lossy(path_bytes);
    let mut in_root = crate::proc::mount_root(fd.pid).map_err(fd.io("read the task's root"))?;
    in_root.push(std::ffi::OsStr::from_bytes(path_bytes));
    let st = if fd.meta.file_type().is_symlink() {
        std::fs::symlink_metadata(&in_root)
    } else {
        std::fs::metadata(&in_root)
    };
    match st {
        Ok(st) if st.dev() == fd.meta.dev() && st.ino() == fd.meta.ino() => Ok(()),
        Ok(_) => Err(fd.unsupported(format!("file {path} whose path now names another file"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(fd.unsupported(format!("file {path} that cannot be reached by its path")))
        }
        Err(e) => Err(fd.io("stat the file by its path")(e)),
    }
}

/// The `reg_file_entry` for a path (cwd, root, exe, mappings) of task `task`.
#[allow(clippy::too_many_arguments)]
pub(super) fn from_path(
    table: &mut FileTable,
    task: Pid,
    path: &Path,
    file: Option<BorrowedFd<'_>>,
    meta: &Metadata,
    id: u32,
    flags: u32,
    pos: u64,
) -> Result<pb::RegFileEntry, FileError> {
    let unsupported = |kind: String| FileError::UnsupportedPath {
        path: path.to_owned(),
        kind,
    };
    let name = path.as_os_str().as_bytes();
    let readable = match file {
        Some(f) if meta.is_file() => File::open(self_fd_path(f)).ok(),
        None if meta.is_file() => File::open(path).ok(),
        _ => None,
    };
    // A dir or file of /proc/PID of an exited process (a cwd there): a dead-pid remap.
    let on_proc = || file.is_some_and(|f| sys::fstatfs_type(f).ok() == Some(PROC_SUPER_MAGIC));
    let dead = procfs::dead_pid(std::ffi::OsStr::new(""), name).filter(|_| on_proc());
    if dead.is_some_and(|pid| table.tree_pids.contains(&pid)) {
        // As CRIU: /proc/PID would name that task at restore, not the dead process.
        return Err(unsupported(format!(
            "{} whose pid is now a task of the dump",
            Kind::ProcDeadPid
        )));
    }
    let name = match name.strip_suffix(DELETED) {
        _ if dead.is_some() => {
            table.ghosts.add_dead_pid(id, dead.unwrap_or_default());
            procfs::strip_deleted(name).to_vec()
        }
        Some(stripped) if meta.nlink() == 0 => {
            table
                .ghosts
                .add(id, meta, readable.as_ref(), file)
                .map_err(|why| unsupported(format!("deleted file: {why}")))?;
            stripped.to_vec()
        }
        Some(deleted) => other_name(task, deleted, meta).ok_or_else(|| {
            unsupported(
                "deleted file that still has other links, none of them in its directory \
                 (linked remaps are made for open descriptors only)"
                    .into(),
            )
        })?,
        None => name.to_vec(),
    };
    Ok(entry(
        id,
        name,
        flags,
        pos,
        pb::FownEntry::default(),
        meta,
        readable.as_ref(),
    ))
}

/// Fills a `reg_file_entry`. Regular files record their size (except append-only
/// write-only ones, such as logs, that grow) and, for ELF files, the GNU build-id, so
/// restore can tell a changed file.
fn entry(
    id: u32,
    name: Vec<u8>,
    flags: u32,
    pos: u64,
    fown: pb::FownEntry,
    meta: &Metadata,
    reader: Option<&File>,
) -> pb::RegFileEntry {
    let append_only = flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32
        && flags & libc::O_APPEND as u32 != 0;
    let check_size = meta.is_file() && !append_only;
    let build_id = match reader {
        Some(r) if check_size => elf_build_id(r, meta.size())
            .map(|id| words(&id))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    pb::RegFileEntry {
        id,
        flags,
        pos,
        fown,
        name,
        mnt_id: None,
        size: check_size.then(|| meta.size()),
        ext: None,
        mode: Some(meta.mode()),
        build_id,
        checksum: None,
        checksum_config: None,
        checksum_parameter: None,
    }
}

/// Bytes packed into native-endian u32 words, the last one zero-padded.
fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_ne_bytes(w)
        })
        .collect()
}

/// Reads `len` bytes at `off`, all within the first `limit` bytes of the file.
fn read_exact_at(file: &File, off: u64, len: usize, limit: u64) -> Option<Vec<u8>> {
    if off.checked_add(len as u64)? > limit {
        return None;
    }
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, off).ok()?;
    Some(buf)
}

fn u16_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?).into())
}

fn u32_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?).into())
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// The GNU build-id note of a little-endian ELF file, looked for in the PT_NOTE
/// segments within the first MiB. `None` for anything else, or any inconsistency.
pub(super) fn elf_build_id(file: &File, size: u64) -> Option<Vec<u8>> {
    const PT_NOTE: u64 = 4;
    const NT_GNU_BUILD_ID: u64 = 3;
    let limit = size.min(BUILD_ID_WINDOW);
    let ident = read_exact_at(file, 0, 16, limit)?;
    if ident[..4] != *b"\x7fELF" || ident[5] != 1 {
        return None;
    }
    let is64 = match ident[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let header = read_exact_at(file, 0, if is64 { 64 } else { 52 }, limit)?;
    let (phoff, phentsize, phnum) = if is64 {
        (
            u64_at(&header, 32)?,
            u16_at(&header, 54)?,
            u16_at(&header, 56)?,
        )
    } else {
        (
            u32_at(&header, 28)?,
            u16_at(&header, 42)?,
            u16_at(&header, 44)?,
        )
    };
    let min_entsize = if is64 { 56 } else { 32 };
    if phnum == 0 || phentsize < min_entsize {
        return None;
    }
    let table = read_exact_at(file, phoff, (phentsize * phnum) as usize, limit)?;
    for ph in table.chunks_exact(phentsize as usize) {
        if u32_at(ph, 0)? != PT_NOTE {
            continue;
        }
        let (offset, filesz) = if is64 {
            (u64_at(ph, 8)?, u64_at(ph, 32)?)
        } else {
            (u32_at(ph, 4)?, u32_at(ph, 16)?)
        };
        let filesz = filesz.min(limit.saturating_sub(offset));
        let Some(notes) = read_exact_at(file, offset, filesz as usize, limit) else {
            continue;
        };
        let mut at = 0usize;
        while at + 12 <= notes.len() {
            let namesz = u32_at(&notes, at)? as usize;
            let descsz = u32_at(&notes, at + 4)? as usize;
            let kind = u32_at(&notes, at + 8)?;
            let desc_at = at + 12 + namesz.next_multiple_of(4);
            if kind == NT_GNU_BUILD_ID {
                if descsz == 0 || descsz > 512 {
                    return None;
                }
                return notes.get(desc_at..desc_at + descsz).map(<[u8]>::to_vec);
            }
            at = desc_at.checked_add(descsz.next_multiple_of(4))?;
        }
    }
    None
}

// --- restore ---------------------------------------------------------------------

/// The restore's files reopened by path: how deleted ones were saved, the ones
/// recreated, and what the options say of paths (`--root`, `--inherit-fd`, the tree's
/// pids for its `/proc` files).
#[derive(Default)]
pub(super) struct RestoreState {
    /// `remap-fpath.img`, by the id of the file remapped.
    pub(super) remaps: HashMap<u32, pb::RemapFilePathEntry>,
    /// Deleted files made again, by ghost id.
    pub(super) ghosts: HashMap<u32, OwnedFd>,
    /// Read-only mounts made writable to make ghosts on (declared after `ghosts`: a
    /// mount cannot be made read-only while a file on it is open for writing).
    pub(super) writable_for_now: Vec<super::ghost::ReadOnlyAgain>,
    /// Link remap names (ours) opened so far: removed once every task has its files.
    pub(super) linked: Vec<PathBuf>,
    /// `--root`: where the tree's paths are, as we see them.
    pub(super) root: Option<PathBuf>,
    /// Mount points of the tree's own mount namespace other than its root: files
    /// under them cannot be looked at before the namespace exists (stage 2), so stage
    /// 1 leaves them to the opening.
    pub(super) unchecked: Vec<PathBuf>,
    /// `--inherit-fd`: files given by the caller, by the path the dump saved.
    /// By the dumped path, as bytes (a path need not be UTF-8).
    pub(super) inherited: HashMap<Vec<u8>, OwnedFd>,
    /// The tree's tasks: image pid -> our pid of it. Their `/proc/PID/...` files can
    /// only be opened once they exist again (see `tree_proc_path`).
    pub(super) tree_pids: HashMap<i32, i32>,
    /// Processes standing in for dead ones while their `/proc` files are opened.
    pub(super) stand_ins: super::procfs::StandIns,
}

impl RestoreState {
    /// Reads `remap-fpath.img` from `dir`, if there is one.
    pub(super) fn load(dir: &Path) -> Result<RestoreState> {
        let mut remaps = HashMap::new();
        if let Some(path) = optional(dir, "remap-fpath.img") {
            for r in read_entries::<pb::RemapFilePathEntry>(&path)? {
                let id = r.orig_id;
                if remaps.insert(id, r).is_some() {
                    return Err(bad("remap-fpath.img", format!("remaps file {id} twice")));
                }
            }
        }
        Ok(RestoreState {
            remaps,
            ..RestoreState::default()
        })
    }
}

impl FileOpener {
    /// Whether file `id` is a deleted file recreated from its ghost image: a mapping of
    /// it maps that recreated file (through [`FileOpener::open`]), as no path leads to it.
    pub fn is_ghost(&self, id: u32) -> bool {
        let reg = self.files.get(&id).and_then(|f| f.reg.as_ref());
        reg.is_some_and(|r| {
            self.reg.remaps.contains_key(&r.id) || self.dead_pid_of(r.path()).is_some()
        })
    }

    /// Our path of `/proc/PID/REST` when PID is a task of the tree.
    fn tree_proc_path(&self, path: &Path) -> Option<PathBuf> {
        let rest = path.strip_prefix("/proc").ok()?;
        let mut parts = rest.components();
        let pid = parts.next()?.as_os_str().to_str()?.parse::<i32>().ok()?;
        let ours = self.reg.tree_pids.get(&pid)?;
        Some(
            Path::new("/proc")
                .join(ours.to_string())
                .join(parts.as_path()),
        )
    }

    /// Whether the tree's `path` is under a mount of its own mount namespace, which
    /// stage 1 cannot look into (see `RestoreState::unchecked`).
    fn is_unchecked(&self, path: &Path) -> bool {
        self.reg.unchecked.iter().any(|m| path.starts_with(m))
    }

    /// Where a path of the tree is, for us.
    pub(super) fn at_root(&self, path: &Path) -> PathBuf {
        match &self.reg.root {
            Some(r) => r.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_owned(),
        }
    }

    /// The row of the kind table of a file reopened by path, and its path.
    pub(super) fn reg_kind(&self, reg: &pb::RegFileEntry) -> (Kind, String) {
        let kind = match self.reg.remaps.get(&reg.id).map(|r| r.remap_type) {
            Some(Some(t)) if t == pb::RemapType::Ghost as i32 => Kind::DeletedFile,
            Some(Some(t)) if t == pb::RemapType::Procfs as i32 => Kind::ProcDeadPid,
            Some(_) => Kind::DeletedLinked,
            None if reg.ext == Some(true) => Kind::ExternalFile,
            None if self.dead_pid_of(reg.path()).is_some() => Kind::ProcDeadPid,
            None if self.tree_proc_path(reg.path()).is_some() => Kind::ProcTreeFile,
            None if kinds::is_proc_pid_path(&reg.name) => Kind::ProcPidFile,
            None if reg.flags & libc::O_PATH as u32 != 0 => Kind::PathRef,
            None => match reg.mode.map(|m| m & libc::S_IFMT) {
                Some(libc::S_IFDIR) => Kind::Directory,
                Some(libc::S_IFBLK) => Kind::BlockDevice,
                // Told apart from other devices by the node found at restore.
                Some(libc::S_IFCHR) => Kind::MemDevice,
                _ => Kind::RegFile,
            },
        };
        (kind, reg.path().display().to_string())
    }

    pub(super) fn check_reg(&self, pid: Pid, at: &FileRef, reg: &pb::RegFileEntry) -> Result<()> {
        if let Some(remap) = self.reg.remaps.get(&reg.id) {
            return match remap.remap_type {
                Some(t) if t == pb::RemapType::Ghost as i32 => {
                    let name = format!("ghost-file-{:x}.img", remap.remap_id);
                    if optional(&self.dir, &name).is_none() {
                        return Err(bad(
                            &name,
                            format!(
                                "is missing (deleted file {} of file {})",
                                reg.path().display(),
                                at.id
                            ),
                        ));
                    }
                    Ok(())
                }
                Some(t) if t == pb::RemapType::Procfs as i32 => {
                    self.check_dead_pid(pid, at, remap.remap_id as i32)
                }
                Some(t) if t == pb::RemapType::Linked as i32 => {
                    let linked = self.linked_path(remap)?;
                    let target = self.member(remap.remap_id, |f| f.reg.as_ref())?;
                    if self.is_unchecked(target.path()) {
                        // In a mount of the tree's namespace, which does not exist yet.
                        return Ok(());
                    }
                    match std::fs::symlink_metadata(&linked) {
                        Ok(_) => Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(at.changed(format!(
                            "{} (the name the dump gave deleted file {}) no longer exists",
                            linked.display(),
                            reg.path().display()
                        ))),
                        Err(e) => Err(at.io(format!("stat {}", linked.display()))(e)),
                    }
                }
                _ => Err(at.unsupported(
                    pid,
                    format!(
                        "deleted file {} saved as a remap of type {:?}",
                        reg.path().display(),
                        remap.remap_type
                    ),
                )),
            };
        }
        if self.reg.inherited.contains_key(&reg.name) {
            return Ok(());
        }
        if reg.ext == Some(true) {
            return Err(at.unsupported(
                pid,
                format!(
                    "external file {} without --inherit-fd for it",
                    reg.path().display()
                ),
            ));
        }
        if let Some(dead) = self.dead_pid_of(reg.path()) {
            // Another file of a dead pid (CRIU remaps each pid once): opened through the
            // same stand-in.
            return self.check_dead_pid(pid, at, dead);
        }
        if self.tree_proc_path(reg.path()).is_some() {
            // A /proc file of a task of the tree: it exists once the tree does.
            return Ok(());
        }
        if self.is_unchecked(reg.path()) {
            return Ok(());
        }
        let nofollow = reg.flags & libc::O_NOFOLLOW as u32 != 0;
        let path = self.at_root(reg.path());
        let meta = if nofollow {
            std::fs::symlink_metadata(&path)
        } else {
            std::fs::metadata(&path)
        };
        match meta {
            Ok(m) => {
                // Only memory devices (/dev/null...) are reopened; which one a device node
                // is shows only here.
                if m.file_type().is_char_device() && libc::major(m.rdev()) != 1 {
                    let kind = Kind::CharDevice;
                    if let Some(why) = kind.restore_refusal(Given::default()) {
                        return Err(at.unsupported(
                            pid,
                            format!("{kind} ({}): {why}", reg.path().display()),
                        ));
                    }
                }
                check_size(at, reg, &m)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(at.changed(format!("{} no longer exists", reg.path().display())))
            }
            Err(e) => Err(at.io(format!("stat {}", reg.path().display()))(e)),
        }
    }

    pub(super) fn open_reg(&mut self, at: &FileRef, reg: &pb::RegFileEntry) -> Result<OwnedFd> {
        if let Some(fd) = self.reg.inherited.get(&reg.name) {
            return fd
                .try_clone()
                .map_err(at.io(format!("duplicate inherited {}", reg.path().display())));
        }
        if reg.ext == Some(true) {
            return Err(at.refused(format!("external file {}", reg.path().display())));
        }
        let flags = open_flags(reg.flags);
        let fd = if let Some(dead) = self.dead_pid_of(reg.path()) {
            self.open_dead(at, reg.path(), dead, flags)?
        } else if let Some(remap) = self.reg.remaps.get(&reg.id).cloned() {
            if remap.remap_type == Some(pb::RemapType::Linked as i32) {
                self.open_linked(at, reg, &remap, flags)?
            } else if remap.remap_type != Some(pb::RemapType::Ghost as i32) {
                return Err(at.refused(format!(
                    "deleted file {} saved as a remap of type {:?}",
                    reg.path().display(),
                    remap.remap_type
                )));
            } else {
                let orig = self.at_root(reg.path());
                let ghost = self.ghost(at, remap.remap_id, &orig)?;
                reopen(ghost, flags)
                    .map_err(at.io(format!("reopen deleted file {}", reg.path().display())))?
            }
        } else {
            let path = match self.tree_proc_path(reg.path()) {
                // In a mount namespace of the tree's own, its procfs (of its pid
                // namespace) gives the very file the tree opened, as the tree sees it
                // (the same inode); ours only when it has none there.
                Some(ours) if self.reg.root.is_none() || !self.at_root(reg.path()).exists() => ours,
                _ => self.at_root(reg.path()),
            };
            let fd = sys::open_path(&path, flags, 0)
                .map_err(at.io(format!("open {}", reg.path().display())))?;
            if reg.flags & libc::O_PATH as u32 == 0 {
                let meta = File::from(fd.try_clone().map_err(at.io("duplicate a file"))?)
                    .metadata()
                    .map_err(at.io(format!("stat {}", reg.path().display())))?;
                check_size(at, reg, &meta)?;
            }
            fd
        };
        if reg.pos != 0 && reg.flags & libc::O_PATH as u32 == 0 {
            sys::lseek(fd.as_fd(), reg.pos, libc::SEEK_SET).map_err(at.io(format!(
                "seek {} to {}",
                reg.path().display(),
                reg.pos
            )))?;
        }
        finish(at, fd.as_fd(), reg.flags, &reg.fown)?;
        Ok(fd)
    }
}

/// Refuses a regular file whose size is not the one recorded at dump time.
fn check_size(at: &FileRef, reg: &pb::RegFileEntry, meta: &std::fs::Metadata) -> Result<()> {
    match reg.size {
        Some(size) if meta.is_file() && meta.size() != size => Err(at.changed(format!(
            "{} is now {} bytes, it was {size} at dump time (the file changed)",
            reg.path().display(),
            meta.size()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(bytes: &[u8]) -> File {
        let fd = crate::sys::memfd_create("elf-test", 0).unwrap();
        let f = File::from(fd);
        f.write_all_at(bytes, 0).unwrap();
        f
    }

    /// A minimal ELF64 with one PT_NOTE holding a build-id note.
    fn elf64_with_build_id(id: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 64];
        v[..4].copy_from_slice(b"\x7fELF");
        v[4] = 2; // 64-bit
        v[5] = 1; // little endian
        v[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        v[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        v[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
        let notes_at = 64 + 2 * 56;
        // A PT_LOAD, then the PT_NOTE.
        let mut load = vec![0u8; 56];
        load[..4].copy_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&load);
        let mut note = vec![0u8; 56];
        note[..4].copy_from_slice(&4u32.to_le_bytes());
        note[8..16].copy_from_slice(&(notes_at as u64).to_le_bytes());
        // An ABI tag note first, then the build-id.
        let mut notes = Vec::new();
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&16u32.to_le_bytes());
        notes.extend_from_slice(&1u32.to_le_bytes());
        notes.extend_from_slice(b"GNU\0");
        notes.extend_from_slice(&[0u8; 16]);
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&(id.len() as u32).to_le_bytes());
        notes.extend_from_slice(&3u32.to_le_bytes());
        notes.extend_from_slice(b"GNU\0");
        notes.extend_from_slice(id);
        note[32..40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        v.extend_from_slice(&note);
        v.extend_from_slice(&notes);
        v
    }

    #[test]
    fn build_id_of_a_small_elf() {
        let id: Vec<u8> = (1..=20).collect();
        let elf = elf64_with_build_id(&id);
        let f = temp_file(&elf);
        assert_eq!(elf_build_id(&f, elf.len() as u64), Some(id.clone()));
        // Packed as CRIU does: native-endian words.
        assert_eq!(words(&id)[0], u32::from_ne_bytes([1, 2, 3, 4]));
        assert_eq!(
            words(&[1, 2, 3, 4, 5]),
            vec![
                u32::from_ne_bytes([1, 2, 3, 4]),
                u32::from_ne_bytes([5, 0, 0, 0])
            ]
        );
    }

    #[test]
    fn build_id_survives_garbage() {
        let id: Vec<u8> = (1..=20).collect();
        let elf = elf64_with_build_id(&id);
        // Every truncation and every single-byte corruption is handled without panic.
        for cut in 0..elf.len() {
            let f = temp_file(&elf[..cut]);
            let _ = elf_build_id(&f, cut as u64);
        }
        for i in 0..elf.len() {
            let mut bad = elf.clone();
            bad[i] = 0xff;
            let f = temp_file(&bad);
            let _ = elf_build_id(&f, bad.len() as u64);
        }
        assert_eq!(elf_build_id(&temp_file(b"#!/bin/sh\n"), 10), None);
    }

    #[test]
    fn build_id_of_a_real_binary() {
        let exe = File::open("/proc/self/exe").unwrap();
        let size = exe.metadata().unwrap().len();
        // Rust test binaries are linked with a build-id on Debian's toolchain; either
        // way the parser must not fail on a real ELF file.
        if let Some(id) = elf_build_id(&exe, size) {
            assert!(!id.is_empty() && id.len() <= 512);
        }
    }
}
