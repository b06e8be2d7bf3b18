//! Deleted files the tree still holds (by a descriptor, as its cwd, by a mapping), saved
//! as CRIU saves them.
//!
//! Dump. A deleted object with no name left (nlink 0) is a *ghost*: its
//! `ghost-file-<id>.img` holds what makes it again: type, owner, mode and times, and by
//! type the contents (regular files: whole, or from 12 KiB up as runs of data, so holes
//! cost nothing and `--ghost-limit` counts the data), the device number (device nodes)
//! or the target (symlinks). A directory and a FIFO need nothing more (a FIFO's queued
//! data goes with the FIFO, in `fifo-data.img`). A deleted name of a file that still has
//! other names is a *linked remap*, with `--link-remap` as CRIU: the dump gives the
//! file one more name next to the old one (`link_remap.<id>`, a reg file entry of its
//! own), which a failed dump takes back (guard). `remap-fpath.img` maps each reg file
//! entry to its ghost or to its linked name.
//!
//! Restore. A ghost is made again at its old path when that is free (so the task's link
//! reads `PATH (deleted)` again, as a cwd compared by name needs), else under a
//! temporary name next to it; opened; and its name removed at once (a directory: rmdir).
//! Until the name is removed a guard owns it, so no failure leaves it behind. Every
//! open of the same ghost reopens that one object. A linked remap is opened through its
//! old name (linked back for the moment of the open) or its remap name; the remap names
//! are removed once every task has its files.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{self, BufWriter, Seek};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{
    DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};

use criu_images::{pb, ImageReader, ImageWriter};

use super::dump::{path_io, writer, FileError, FileTable, OpenFd};
use super::restore::{bad, FileOpener, FileRef, Result};
use super::unix::name::{make_missing_dirs, remove_made_dirs};
use crate::sys;

/// Regular files at least this large are saved as runs of data (holes kept), as CRIU.
const GHOST_CHUNKS_MIN: u64 = 3 * 4096;

/// Whether a deleted object with no name left can be saved as a ghost, and if not why.
pub(super) fn ghost_ok(meta: &Metadata) -> std::result::Result<(), &'static str> {
    if meta.file_type().is_socket() {
        return Err("a socket's file cannot be made again (the socket is not in it)");
    }
    Ok(())
}

// --- dump ------------------------------------------------------------------------

/// A deleted object to save: its `ghost_file_entry` and, for a regular file, a readable
/// handle on it for the contents.
struct Ghost {
    id: u32,
    entry: pb::GhostFileEntry,
    data: Option<File>,
}

/// Deleted-but-open objects, each saved once per inode; the names given to deleted
/// files that have other names; and the remaps that point the reg file entries at them.
pub(super) struct Ghosts {
    /// `--ghost-limit`: the most data (allocated bytes) one ghost may hold.
    pub(super) limit: u64,
    /// `--link-remap`: deleted names of files with other names may be saved.
    pub(super) link_remap: bool,
    files: Vec<Ghost>,
    by_inode: HashMap<(u64, u64), u32>,
    remaps: Vec<pb::RemapFilePathEntry>,
    linked: LinkedNames,
    /// Dead pids remapped already: CRIU's images remap each one once.
    dead_pids: std::collections::HashSet<i32>,
}

impl Ghosts {
    pub(super) fn new(limit: u64) -> Self {
        Ghosts {
            limit,
            link_remap: false,
            files: Vec::new(),
            by_inode: HashMap::new(),
            remaps: Vec::new(),
            linked: LinkedNames::default(),
            dead_pids: std::collections::HashSet::new(),
        }
    }

    /// Records that reg file `orig_id` is the deleted object `meta` describes. A
    /// regular file's contents are read through `reader`; a symlink's target through
    /// `handle` (a descriptor on the link itself). The error says why it cannot be saved.
    pub(super) fn add(
        &mut self,
        orig_id: u32,
        meta: &Metadata,
        reader: Option<&File>,
        handle: Option<BorrowedFd<'_>>,
    ) -> std::result::Result<(), String> {
        ghost_ok(meta).map_err(str::to_owned)?;
        let key = (meta.dev(), meta.ino());
        let ghost_id = match self.by_inode.get(&key) {
            Some(&id) => id,
            None => {
                let id = self.files.len() as u32 + 1;
                let ghost = self.new_ghost(id, meta, reader, handle)?;
                self.files.push(ghost);
                self.by_inode.insert(key, id);
                id
            }
        };
        self.remaps.push(pb::RemapFilePathEntry {
            orig_id,
            remap_id: ghost_id,
            remap_type: Some(pb::RemapType::Ghost as i32),
        });
        Ok(())
    }

    fn new_ghost(
        &self,
        id: u32,
        meta: &Metadata,
        reader: Option<&File>,
        handle: Option<BorrowedFd<'_>>,
    ) -> std::result::Result<Ghost, String> {
        let ft = meta.file_type();
        let data = if ft.is_file() {
            let allocated = meta.blocks() * 512;
            if allocated > self.limit {
                return Err(format!(
                    "{allocated} bytes of data is more than the ghost file limit of {} bytes \
                     (--ghost-limit)",
                    self.limit
                ));
            }
            let reader = reader.ok_or("it cannot be reopened for reading")?;
            Some(
                reader
                    .try_clone()
                    .map_err(|e| format!("duplicate it: {e}"))?,
            )
        } else {
            None
        };
        let symlnk_target = if ft.is_symlink() {
            let handle = handle.ok_or("no descriptor to read the symlink's target through")?;
            let target = sys::readlink_fd(handle).map_err(|e| format!("read its target: {e}"))?;
            Some(target)
        } else {
            None
        };
        let rdev = if ft.is_char_device() || ft.is_block_device() {
            // CRIU's image keeps the number stat gives in 32 bits (mknod takes it back).
            Some(u32::try_from(meta.rdev()).map_err(|_| {
                format!(
                    "its device number {:#x} does not fit the image",
                    meta.rdev()
                )
            })?)
        } else {
            None
        };
        let chunks = ft.is_file() && meta.size() >= GHOST_CHUNKS_MIN;
        let timeval = |sec: i64, nsec: i64| pb::Timeval {
            tv_sec: sec as u64,
            tv_usec: (nsec / 1000) as u64,
        };
        let entry = pb::GhostFileEntry {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode(),
            // CRIU records the kernel's encoding (MKKDEV: major << 20 | minor).
            dev: Some((libc::major(meta.dev()) << 20) | (libc::minor(meta.dev()) & 0xf_ffff)),
            ino: Some(meta.ino()),
            rdev,
            atim: Some(timeval(meta.atime(), meta.atime_nsec())),
            mtim: Some(timeval(meta.mtime(), meta.mtime_nsec())),
            chunks: chunks.then_some(true),
            size: chunks.then(|| meta.size()),
            symlnk_target,
        };
        Ok(Ghost { id, entry, data })
    }

    /// Records that reg file `orig_id` is a file of `/proc/PID` of process `pid`, which
    /// has exited (see `procfs.rs`): one remap per pid, as CRIU writes them.
    pub(super) fn add_dead_pid(&mut self, orig_id: u32, pid: i32) {
        if self.dead_pids.insert(pid) {
            self.remaps.push(pb::RemapFilePathEntry {
                orig_id,
                remap_id: pid as u32,
                remap_type: Some(pb::RemapType::Procfs as i32),
            });
        }
    }

    /// Keeps the names given to deleted files (the dump succeeded: the images need them).
    pub(super) fn keep_linked(&mut self) {
        self.linked.kept = true;
    }

    /// Writes `remap-fpath.img` and one `ghost-file-<hex id>.img` per ghost.
    pub(super) fn write(&self, dir: &Path) -> std::result::Result<(), FileError> {
        if self.remaps.is_empty() {
            return Ok(());
        }
        let mut remaps = writer(dir, "REMAP_FPATH", "")?;
        for r in &self.remaps {
            remaps.write_entry(r)?;
        }
        remaps.finish()?;
        for g in &self.files {
            let path = dir.join(super::dump::kind("GHOST_FILE").file_name(format!("{:x}", g.id)));
            let mut w = writer(dir, "GHOST_FILE", format!("{:x}", g.id))?;
            w.write_entry(&g.entry)?;
            if let Some(file) = &g.data {
                let size = file
                    .metadata()
                    .map_err(path_io(&path, "stat the ghost file"))?
                    .len();
                if g.entry.chunks == Some(true) {
                    write_chunks(&mut w, file, size, &path)?;
                } else {
                    copy_range(&mut w, file, 0, size, &path)?;
                }
            }
            w.finish()?;
        }
        Ok(())
    }
}

/// Names the dump gave to deleted files with other names: removed again when dropped,
/// unless the dump succeeded.
#[derive(Default)]
struct LinkedNames {
    made: Vec<PathBuf>,
    kept: bool,
}

impl Drop for LinkedNames {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for path in &self.made {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), "cannot remove a link remap: {e}");
            }
        }
    }
}

/// Saves reg file `orig_id`, the deleted name `path` of a file that still has other
/// names, as a linked remap: the file gets the name `link_remap.<id>` in the directory
/// of `path` (or the nearest one above it that still exists), saved as a reg file
/// entry of its own.
pub(super) fn link_remap(
    table: &mut FileTable,
    fd: &OpenFd<'_>,
    orig_id: u32,
    path: &[u8],
) -> std::result::Result<(), FileError> {
    let shown = String::from_utf8_lossy(path).into_owned();
    if !table.ghosts.link_remap {
        return Err(fd.unsupported(format!(
            "deleted file {shown} that still has other links: dump with --link-remap to \
             give it a name of its own next to the old one (removed by the restore)"
        )));
    }
    let remap_id = table.alloc_id();
    let in_root = crate::proc::mount_root(fd.pid).map_err(fd.io("read the task's root"))?;
    let mut dir = Path::new(std::ffi::OsStr::from_bytes(path))
        .parent()
        .unwrap_or(Path::new("/"))
        .to_owned();
    let name = loop {
        let name = dir.join(format!("link_remap.{remap_id}"));
        let ours = Path::new(&in_root).join(name.strip_prefix("/").unwrap_or(&name));
        match sys::link_fd(fd.raw(), &ours) {
            Ok(()) => {
                table.ghosts.linked.made.push(ours);
                break name;
            }
            // The directory is gone too: the nearest one above it.
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir.parent().is_some() => {
                dir = dir.parent().unwrap_or(Path::new("/")).to_owned();
            }
            Err(e) => {
                return Err(FileError::Path {
                    path: name,
                    what: "give a deleted file a name (link remap)",
                    source: e,
                })
            }
        }
    };
    let reg = pb::RegFileEntry {
        id: remap_id,
        flags: 0,
        pos: 0,
        fown: pb::FownEntry::default(),
        name: name.as_os_str().as_bytes().to_vec(),
        mode: Some(fd.meta.mode()),
        ..Default::default()
    };
    table.push(super::dump::file_entry(pb::FdTypes::Reg, remap_id, |e| {
        e.reg = Some(reg)
    }));
    table.ghosts.remaps.push(pb::RemapFilePathEntry {
        orig_id,
        remap_id,
        remap_type: Some(pb::RemapType::Linked as i32),
    });
    Ok(())
}

/// Copies `len` bytes at `off` of `file` into the image as raw data.
fn copy_range(
    w: &mut ImageWriter<BufWriter<File>>,
    file: &File,
    off: u64,
    len: u64,
    path: &Path,
) -> std::result::Result<(), FileError> {
    let mut buf = vec![0u8; 64 << 10];
    let mut done = 0u64;
    while done < len {
        let n = buf.len().min((len - done) as usize);
        file.read_exact_at(&mut buf[..n], off + done)
            .map_err(path_io(path, "read the ghost file's contents"))?;
        w.write_raw(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// Writes each run of data of a sparse file as a `ghost_chunk_entry` and its bytes.
fn write_chunks(
    w: &mut ImageWriter<BufWriter<File>>,
    file: &File,
    size: u64,
    path: &Path,
) -> std::result::Result<(), FileError> {
    let fd = file.as_fd();
    let mut off = 0u64;
    while off < size {
        let seek = |at, whence| {
            sys::lseek(fd, at, whence).map_err(path_io(path, "find the ghost file's data"))
        };
        let Some(start) = seek(off, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        if end <= start {
            break;
        }
        w.write_entry(&pb::GhostChunkEntry {
            len: end - start,
            off: start,
        })?;
        copy_range(w, file, start, end - start, path)?;
        off = end;
    }
    Ok(())
}

// --- restore ---------------------------------------------------------------------

impl FileOpener {
    /// The object made again for ghost `ghost_id` (made once, then shared), first
    /// needed by reg file `orig`'s path.
    pub(super) fn ghost(
        &mut self,
        at: &FileRef,
        ghost_id: u32,
        orig: &Path,
    ) -> Result<BorrowedFd<'_>> {
        if !self.reg.ghosts.contains_key(&ghost_id) {
            let fd = match make_ghost(&self.dir, at, ghost_id, orig) {
                Err(super::restore::FileRestoreError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::EROFS) =>
                {
                    // A read-only mount of a writable filesystem (a deleted file whose
                    // mount was made read-only since): writable for the while, as
                    // CRIU remounts it, and read-only again once the restore holds no
                    // file on it for writing ([`FileOpener::take_writable_mounts`]).
                    let writable = self.writable_for_a_while(at, orig)?;
                    self.reg.writable_for_now.push(writable);
                    make_ghost(&self.dir, at, ghost_id, orig)?
                }
                made => made?,
            };
            self.reg.ghosts.insert(ghost_id, fd);
        }
        self.reg
            .ghosts
            .get(&ghost_id)
            .map(|fd| fd.as_fd())
            .ok_or_else(|| bad("remap-fpath.img", format!("ghost {ghost_id} vanished")))
    }

    /// Makes the mount that holds the directory of `orig` (a path of ours to a tree's
    /// file) writable, in the tree's mount namespace (ours when the tree has none), until
    /// [`ReadOnlyAgain::read_only_again`] or the guard's drop. Only the mount's
    /// read-only flag changes.
    fn writable_for_a_while(&self, at: &FileRef, orig: &Path) -> Result<ReadOnlyAgain> {
        let mut dir = orig.parent().unwrap_or(Path::new("/"));
        while !dir.is_dir() {
            dir = dir.parent().unwrap_or(Path::new("/"));
        }
        // A tree in a mount namespace of its own is reached through /proc/ROOT/root.
        let (ns, mountinfo, inside) = match &self.reg.root {
            Some(root) if root.starts_with("/proc") && root.ends_with("root") => {
                let pid_dir = root.parent().unwrap_or(root);
                let inside = Path::new("/").join(dir.strip_prefix(root).unwrap_or(dir));
                (
                    Some(pid_dir.join("ns/mnt")),
                    pid_dir.join("mountinfo"),
                    inside,
                )
            }
            _ => (None, PathBuf::from("/proc/self/mountinfo"), dir.to_owned()),
        };
        let err = |what: &str| at.io(format!("{what} {} for a deleted file", dir.display()));
        let text = std::fs::read_to_string(&mountinfo).map_err(err("read the mounts of"))?;
        // The last of the longest mount points above it: the mount it is on.
        let mount = text
            .lines()
            .filter_map(crate::mounts::parse_mountinfo_line)
            .map(|m| PathBuf::from(m.mountpoint))
            .filter(|m| inside.starts_with(m))
            .fold(None::<PathBuf>, |best, m| match best {
                Some(b) if b.components().count() > m.components().count() => Some(b),
                _ => Some(m),
            })
            .ok_or_else(|| at.refused(format!("no mount holds {}", dir.display())))?;
        let ns = match ns {
            Some(path) => Some(File::open(path).map_err(err("open the mount namespace of"))?),
            None => None,
        };
        let guard = ReadOnlyAgain {
            ns,
            mount,
            done: false,
        };
        guard
            .set(false)
            .map_err(err("make the read-only mount writable, which holds"))?;
        Ok(guard)
    }

    /// The path (ours) of the name a linked remap gave reg file `orig`.
    pub(super) fn linked_path(&self, remap: &pb::RemapFilePathEntry) -> Result<PathBuf> {
        let target = self
            .member(remap.remap_id, |f| f.reg.as_ref())
            .map_err(|_| {
                bad(
                    "remap-fpath.img",
                    format!(
                        "links file {} to file {}, which is not a regular file entry",
                        remap.orig_id, remap.remap_id
                    ),
                )
            })?;
        Ok(self.at_root(target.path()))
    }

    /// Opens deleted file `reg` through the name its linked remap gave it: linked to its
    /// old name for the moment of the open when that is free (so the task's link reads
    /// `PATH (deleted)` as before), else through the remap name itself.
    pub(super) fn open_linked(
        &mut self,
        at: &FileRef,
        reg: &pb::RegFileEntry,
        remap: &pb::RemapFilePathEntry,
        flags: i32,
    ) -> Result<OwnedFd> {
        let remap_path = self.linked_path(remap)?;
        let orig = self.at_root(reg.path());
        let shown = reg.path().display();
        // The old name's directories may be gone too (removed after the unlink): made
        // for the moment of the open, and removed again.
        let made = match std::fs::symlink_metadata(orig.parent().unwrap_or(&orig)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => make_missing_dirs(&orig)
                .map_err(at.io(format!("make the directories of deleted file {shown}")))?,
            _ => Vec::new(),
        };
        let opened = match std::fs::hard_link(&remap_path, &orig) {
            Ok(()) => {
                let opened = sys::open_path(&orig, flags, 0);
                let removed = std::fs::remove_file(&orig);
                opened
                    .map_err(at.io(format!("open deleted file {shown}")))
                    .and_then(|fd| {
                        removed.map_err(at.io(format!("remove {shown} again")))?;
                        Ok(fd)
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                sys::open_path(&remap_path, flags, 0).map_err(at.io(format!(
                    "open deleted file {shown} by its link remap {}",
                    remap_path.display()
                )))
            }
            Err(e) => Err(at.io(format!(
                "link {} to deleted file {shown}",
                remap_path.display()
            ))(e)),
        };
        let removed = remove_made_dirs(&made);
        let fd = opened?;
        removed.map_err(at.io(format!(
            "remove the directories made to open deleted file {shown}"
        )))?;
        if !self.reg.linked.contains(&remap_path) {
            self.reg.linked.push(remap_path);
        }
        Ok(fd)
    }

    /// The read-only mounts made writable for ghosts, to make read-only again with
    /// [`WritableMounts::read_only_again`] once the restore's own descriptors are closed
    /// (drop the opener first): a mount with a file open for writing cannot be.
    pub fn take_writable_mounts(&mut self) -> WritableMounts {
        WritableMounts(std::mem::take(&mut self.reg.writable_for_now))
    }

    /// Removes the names the dump gave deleted files with other names (linked remaps),
    /// once every task holds its files: only the restore's own opens needed them.
    pub fn remove_link_remaps(&mut self) {
        for path in self.reg.linked.drain(..) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), "cannot remove a link remap: {e}");
            }
        }
    }
}

/// A name made for a ghost, removed when dropped unless [`MadeName::remove`] took it
/// away already: no failure between making and removing leaves it behind.
struct MadeName {
    path: PathBuf,
    dir: bool,
    removed: bool,
}

impl MadeName {
    fn remove(mut self) -> io::Result<()> {
        self.removed = true;
        if self.dir {
            std::fs::remove_dir(&self.path)
        } else {
            std::fs::remove_file(&self.path)
        }
    }
}

impl Drop for MadeName {
    fn drop(&mut self) {
        if !self.removed {
            let _ = if self.dir {
                std::fs::remove_dir(&self.path)
            } else {
                std::fs::remove_file(&self.path)
            };
        }
    }
}

/// Where a ghost of `orig` may be made, in order: its own path when its directory still
/// exists, then temporary names in that directory (or in the nearest one above it that
/// exists).
fn candidate_names(orig: &Path, ghost_id: u32) -> Vec<PathBuf> {
    let mut dir = orig.parent().unwrap_or(Path::new("/"));
    let mut names = Vec::new();
    if dir.is_dir() {
        names.push(orig.to_owned());
    }
    while !dir.is_dir() {
        match dir.parent() {
            Some(up) => dir = up,
            None => break,
        }
    }
    let me = std::process::id();
    names.extend((0..16).map(|n| dir.join(format!(".criu-rs-ghost-{ghost_id:x}-{me}-{n}"))));
    names
}

/// Makes the first free name of [`candidate_names`] with `create`.
fn make_name(
    at: &FileRef,
    orig: &Path,
    ghost_id: u32,
    dir: bool,
    mut create: impl FnMut(&Path) -> io::Result<()>,
) -> Result<MadeName> {
    for path in candidate_names(orig, ghost_id) {
        match create(&path) {
            Ok(()) => {
                return Ok(MadeName {
                    path,
                    dir,
                    removed: false,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(at.io(format!("create deleted file {}", path.display()))(e)),
        }
    }
    Err(at.refused(format!(
        "deleted file {}: no free name next to it",
        orig.display()
    )))
}

/// Makes ghost `ghost_id` again from `ghost-file-<id>.img`, for reg file path `orig`.
/// Returns a descriptor on it to reopen with any flags: read-write for a regular file
/// and a FIFO (a FIFO open for writing never blocks the opens after it), read-only for a
/// directory, `O_PATH` for device nodes (opening a device may act) and symlinks.
fn make_ghost(dir: &Path, at: &FileRef, ghost_id: u32, orig: &Path) -> Result<OwnedFd> {
    let image = format!("ghost-file-{ghost_id:x}.img");
    let mut r = ImageReader::open(dir.join(&image))?;
    let g: pb::GhostFileEntry = r
        .next_entry()?
        .ok_or_else(|| bad(&image, "has no ghost_file_entry"))?;
    match g.mode & libc::S_IFMT {
        libc::S_IFREG => make_regular(at, ghost_id, orig, &g, &mut r),
        libc::S_IFDIR | libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK | libc::S_IFLNK => {
            make_node(at, ghost_id, orig, &g, &image)
        }
        _ => Err(at.refused(format!(
            "deleted file {} of a type no ghost is made of (mode {:o})",
            orig.display(),
            g.mode
        ))),
    }
}

/// The (seconds, nanoseconds) of a saved time.
fn timespec(t: &pb::Timeval) -> (i64, i64) {
    (t.tv_sec as i64, (t.tv_usec % 1_000_000) as i64 * 1000)
}

/// A directory, FIFO, device node or symlink, made at a free name, opened, given its
/// owner, mode and times, and its name removed.
fn make_node(
    at: &FileRef,
    ghost_id: u32,
    orig: &Path,
    g: &pb::GhostFileEntry,
    image: &str,
) -> Result<OwnedFd> {
    let kind = g.mode & libc::S_IFMT;
    let rdev = match (kind, g.rdev) {
        (libc::S_IFCHR | libc::S_IFBLK, None) => {
            return Err(bad(image, "has a device node without its device number"))
        }
        (_, rdev) => rdev.unwrap_or(0),
    };
    let target = match (kind, &g.symlnk_target) {
        (libc::S_IFLNK, None) => return Err(bad(image, "has a symlink without its target")),
        (_, target) => target.clone().unwrap_or_default(),
    };
    let is_dir = kind == libc::S_IFDIR;
    let perms = g.mode & 0o7777;
    let name = make_name(at, orig, ghost_id, is_dir, |path| match kind {
        libc::S_IFDIR => std::fs::DirBuilder::new().mode(perms).create(path),
        libc::S_IFLNK => std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), path),
        _ => sys::mknod(path, g.mode, rdev.into()),
    })?;
    let shown = orig.display();
    let flags = match kind {
        libc::S_IFDIR => libc::O_RDONLY | libc::O_DIRECTORY,
        libc::S_IFIFO => libc::O_RDWR | libc::O_NONBLOCK,
        libc::S_IFLNK => libc::O_PATH | libc::O_NOFOLLOW,
        _ => libc::O_PATH,
    };
    let fd = sys::open_path(&name.path, flags, 0)
        .map_err(at.io(format!("open the remade deleted file {shown}")))?;
    let meta_err = at.io(format!(
        "set the owner, mode and times of deleted file {shown}"
    ));
    let applied = std::os::unix::fs::lchown(&name.path, Some(g.uid), Some(g.gid))
        .and_then(|()| {
            if kind == libc::S_IFLNK {
                Ok(())
            } else {
                std::fs::set_permissions(&name.path, std::fs::Permissions::from_mode(perms))
            }
        })
        .and_then(|()| match (&g.atim, &g.mtim) {
            (Some(a), Some(m)) => sys::set_times_nofollow(&name.path, timespec(a), timespec(m)),
            _ => Ok(()),
        });
    applied.map_err(meta_err)?;
    name.remove()
        .map_err(at.io(format!("remove the name of remade deleted file {shown}")))?;
    Ok(fd)
}

/// A regular file, made at a free name and unlinked at once (from then on it lives
/// through our descriptor only), then filled and given its owner, mode and times.
fn make_regular(
    at: &FileRef,
    ghost_id: u32,
    orig: &Path,
    g: &pb::GhostFileEntry,
    r: &mut ImageReader<impl io::Read>,
) -> Result<OwnedFd> {
    let mut created = None;
    let name = make_name(at, orig, ghost_id, false, |path| {
        created = Some(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)?,
        );
        Ok(())
    })?;
    let path = name.path.clone();
    name.remove()
        .map_err(at.io(format!("unlink {}", path.display())))?;
    let mut file = created.ok_or_else(|| bad("remap-fpath.img", "ghost file not created"))?;
    let data_err = at.io(format!("write deleted file {}", orig.display()));
    if g.chunks == Some(true) {
        while let Some(c) = r.next_entry::<pb::GhostChunkEntry>()? {
            if let Err(e) = file.seek(io::SeekFrom::Start(c.off)) {
                return Err(data_err(e));
            }
            r.copy_extra(c.len, "ghost file data", &mut file)?;
        }
        if let Some(size) = g.size {
            file.set_len(size)
                .map_err(at.io(format!("size deleted file {}", orig.display())))?;
        }
    } else {
        let data = r.read_to_end("ghost file data")?;
        file.write_all_at(&data, 0).map_err(data_err)?;
    }
    std::os::unix::fs::fchown(&file, Some(g.uid), Some(g.gid))
        .map_err(at.io(format!("chown deleted file {}", orig.display())))?;
    file.set_permissions(std::fs::Permissions::from_mode(g.mode & 0o7777))
        .map_err(at.io(format!("chmod deleted file {}", orig.display())))?;
    let time = |t: &pb::Timeval| {
        let (sec, nsec) = timespec(t);
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(sec as u64, nsec as u32))
    };
    let mut times = std::fs::FileTimes::new();
    if let Some(a) = g.atim.as_ref().and_then(time) {
        times = times.set_accessed(a);
    }
    if let Some(m) = g.mtim.as_ref().and_then(time) {
        times = times.set_modified(m);
    }
    file.set_times(times)
        .map_err(at.io(format!("set the times of deleted file {}", orig.display())))?;
    Ok(OwnedFd::from(file))
}

/// Read-only mounts made writable for ghosts ([`FileOpener::take_writable_mounts`]).
#[must_use = "the mounts stay writable until read_only_again (or the drop, which ignores errors)"]
pub struct WritableMounts(Vec<ReadOnlyAgain>);

impl WritableMounts {
    /// Makes each mount read-only again.
    pub fn read_only_again(self) -> std::io::Result<()> {
        for mut m in self.0 {
            m.done = true;
            m.set(true).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("making {} read-only again: {e}", m.mount.display()),
                )
            })?;
        }
        Ok(())
    }
}

/// A mount made writable for the while by [`FileOpener::writable_for_a_while`]: made
/// read-only again by [`WritableMounts::read_only_again`], or when dropped.
pub(super) struct ReadOnlyAgain {
    /// The tree's mount namespace, when it is not ours.
    ns: Option<File>,
    /// The mount's root, inside that namespace.
    mount: PathBuf,
    done: bool,
}

impl ReadOnlyAgain {
    fn set(&self, readonly: bool) -> io::Result<()> {
        let mount = &self.mount;
        match &self.ns {
            Some(ns) => sys::in_namespace_thread(ns.as_fd(), libc::CLONE_NEWNS, || {
                sys::mount_set_readonly(mount, readonly)
            })
            .and_then(|r| r),
            None => sys::mount_set_readonly(mount, readonly),
        }
    }
}

impl Drop for ReadOnlyAgain {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.set(true);
        }
    }
}
