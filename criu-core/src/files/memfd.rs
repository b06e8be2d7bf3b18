//! memfds, and the shared anonymous memory that is dumped as one.
//!
//! Dump: each memfd inode once (`memfd.img`: name, size, owner, mode, seals); its
//! contents are saved by the memory dumper as shared memory (see [`MemfdInode`]). Open
//! memfds and memfd mappings point at their inode.
//!
//! Restore: each inode is made once with its name, contents, size, owner, mode and
//! seals (last); the first open file description with matching flags is the memfd's
//! own (only it can be executed with `execveat`), others are reopened through
//! `/proc/self/fd`.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use criu_images::flags::page::{PE_PARENT, PE_PRESENT};
use criu_images::{pb, ImageReader};

use super::dump::{self_fd_path, writer, FileError, OpenFd};
use super::restore::{
    bad, finish, open_flags, optional, read_entries, reopen, FileOpener, FileRef, Result,
    SETFL_MASK,
};
use crate::sys::{self, Pid};

// --- dump ------------------------------------------------------------------------

/// A memfd (or shared anonymous memory) inode: its contents are saved by the memory
/// dumper as shared memory `shmid`, read through [`MemfdInode::file`].
#[derive(Debug)]
pub struct MemfdInode {
    /// Its `memfd_inode_entry.inode_id`.
    pub inode_id: u32,
    /// The shared memory id its pages are dumped under (the inode number, as CRIU).
    pub shmid: u32,
    /// Bytes: a memfd's name need not be UTF-8.
    pub name: Vec<u8>,
    pub size: u64,
    /// The task and descriptor it was first met through (`None` for a mapping).
    pub holder: Option<(Pid, i32)>,
    file: File,
}

impl MemfdInode {
    /// A readable descriptor on the memfd, for `pread` of its contents.
    pub fn file(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The memfd inodes of a dump, each once, and their `memfd.img` entries.
#[derive(Default)]
pub(super) struct Memfds {
    inodes: Vec<MemfdInode>,
    entries: Vec<pb::MemfdInodeEntry>,
    by_inode: HashMap<(u64, u64), u32>,
}

/// The memfd name shown in a link: `/memfd:NAME (deleted)` is NAME; others (such as
/// `/dev/zero (deleted)` for shared anonymous memory) are kept whole, as CRIU does.
fn memfd_name(link: &[u8]) -> Vec<u8> {
    let link = link.strip_suffix(b" (deleted)").unwrap_or(link);
    link.strip_prefix(b"/memfd:").unwrap_or(link).to_vec()
}

impl Memfds {
    pub(super) fn inodes(&self) -> &[MemfdInode] {
        &self.inodes
    }

    /// The inode id of the memfd `file` (which `meta` describes), recording it if new.
    fn inode(
        &mut self,
        name: Vec<u8>,
        file: BorrowedFd<'_>,
        meta: &Metadata,
        holder: Option<(Pid, i32)>,
    ) -> io::Result<u32> {
        if let Some(&id) = self.by_inode.get(&(meta.dev(), meta.ino())) {
            return Ok(id);
        }
        let inode_id = self.inodes.len() as u32 + 1;
        let seals = match sys::fcntl_get(file, libc::F_GET_SEALS) {
            Ok(s) => s as u32,
            // Files that do not support sealing at all count as sealed against sealing.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => libc::F_SEAL_SEAL as u32,
            Err(e) => return Err(e),
        };
        // A handle of our own that can always be read, whatever the task opened it for.
        let reader = match File::open(self_fd_path(file)) {
            Ok(f) => f,
            Err(_) => File::from(file.try_clone_to_owned()?),
        };
        // A hugetlb memfd is made again with its page size (MFD_HUGETLB and the size
        // bits, as CRIU records them).
        let hugetlb_flag = (sys::fstatfs_type(file)? == sys::HUGETLBFS_MAGIC)
            .then(|| libc::MFD_HUGETLB | crate::dump::mm::huge_size_bits(meta.blksize()));
        self.entries.push(pb::MemfdInodeEntry {
            name: name.clone(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            shmid: meta.ino() as u32,
            seals,
            inode_id: inode_id.into(),
            hugetlb_flag,
            mode: Some(meta.mode()),
        });
        self.inodes.push(MemfdInode {
            inode_id,
            shmid: meta.ino() as u32,
            name,
            size: meta.size(),
            holder,
            file: reader,
        });
        self.by_inode.insert((meta.dev(), meta.ino()), inode_id);
        Ok(inode_id)
    }

    pub(super) fn dump_fd(
        &mut self,
        fd: &OpenFd<'_>,
        id: u32,
    ) -> Result<pb::MemfdFileEntry, FileError> {
        let name = memfd_name(fd.link.as_bytes());
        let inode_id = self
            .inode(name, fd.raw(), &fd.meta, Some((fd.pid, fd.fd)))
            .map_err(fd.io("read the memfd's seals"))?;
        Ok(pb::MemfdFileEntry {
            id,
            flags: fd.common.flags,
            pos: fd.common.pos,
            fown: fd.fown()?,
            inode_id,
        })
    }

    pub(super) fn dump_mapping(
        &mut self,
        link: &Path,
        file: BorrowedFd<'_>,
        id: u32,
        flags: u32,
        pos: u64,
    ) -> Result<pb::MemfdFileEntry, FileError> {
        let path = link.to_owned();
        let meta = File::from(
            file.try_clone_to_owned()
                .map_err(super::dump::path_io(&path, "duplicate the fd"))?,
        )
        .metadata()
        .map_err(super::dump::path_io(&path, "stat"))?;
        let inode_id = self
            .inode(memfd_name(link.as_os_str().as_bytes()), file, &meta, None)
            .map_err(super::dump::path_io(&path, "read the memfd's seals"))?;
        Ok(pb::MemfdFileEntry {
            id,
            flags,
            pos,
            fown: pb::FownEntry::default(),
            inode_id,
        })
    }

    pub(super) fn write(&self, dir: &Path) -> Result<(), FileError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let mut w = writer(dir, "MEMFD_INODE", "")?;
        for e in &self.entries {
            w.write_entry(e)?;
        }
        w.finish()?;
        Ok(())
    }
}

// --- restore ---------------------------------------------------------------------

const PAGE: u64 = 4096;

/// A memfd inode we created; `given` once its own open file description was used.
struct MemfdObj {
    fd: OwnedFd,
    given: bool,
}

/// The restore's memfds: the inodes `memfd.img` describes, and those made so far.
#[derive(Default)]
pub(super) struct RestoreState {
    inodes: HashMap<u64, pb::MemfdInodeEntry>,
    made: HashMap<u64, MemfdObj>,
}

impl RestoreState {
    /// Reads `memfd.img` from `dir`, if there is one.
    pub(super) fn load(dir: &Path) -> Result<RestoreState> {
        let mut inodes = HashMap::new();
        if let Some(path) = optional(dir, "memfd.img") {
            for m in read_entries::<pb::MemfdInodeEntry>(&path)? {
                let id = m.inode_id;
                if inodes.insert(id, m).is_some() {
                    return Err(bad("memfd.img", format!("has inode {id} twice")));
                }
            }
        }
        Ok(RestoreState {
            inodes,
            made: HashMap::new(),
        })
    }
}

impl FileOpener {
    /// A memfd's inode must be in `memfd.img`, and its contents in the images.
    pub(super) fn check_memfd(&self, at: &FileRef, m: &pb::MemfdFileEntry) -> Result<()> {
        let mie = self
            .memfds
            .inodes
            .get(&u64::from(m.inode_id))
            .ok_or_else(|| {
                bad(
                    "memfd.img",
                    format!("has no inode {} for memfd file {}", m.inode_id, at.id),
                )
            })?;
        let name = format!("pagemap-shmem-{}.img", mie.shmid);
        if optional(&self.dir, &name).is_none() {
            return Err(bad(&name, format!("is missing (memfd file {})", at.id)));
        }
        Ok(())
    }

    pub(super) fn open_memfd(&mut self, at: &FileRef, m: &pb::MemfdFileEntry) -> Result<OwnedFd> {
        let inode_id = u64::from(m.inode_id);
        if !self.memfds.made.contains_key(&inode_id) {
            let mie = self.memfds.inodes.get(&inode_id).ok_or_else(|| {
                bad(
                    "memfd.img",
                    format!("has no inode {inode_id} for memfd file {}", at.id),
                )
            })?;
            let fd = make_memfd(&self.dir, at, mie)?;
            self.memfds
                .made
                .insert(inode_id, MemfdObj { fd, given: false });
        }
        let Some(obj) = self.memfds.made.get_mut(&inode_id) else {
            return Err(bad("memfd.img", format!("inode {inode_id} vanished")));
        };
        let current = sys::fcntl_get(obj.fd.as_fd(), libc::F_GETFL)
            .map_err(at.io("read the memfd's flags"))? as u32;
        // The memfd's own open file description, once, when the flags match (it alone
        // can be executed with execveat); other ones are reopened through /proc.
        let fd = if !obj.given && current & !SETFL_MASK == m.flags & !SETFL_MASK {
            obj.given = true;
            obj.fd.try_clone().map_err(at.io("duplicate a memfd"))?
        } else {
            reopen(obj.fd.as_fd(), open_flags(m.flags)).map_err(at.io("reopen a memfd"))?
        };
        if m.pos != 0 {
            sys::lseek(fd.as_fd(), m.pos, libc::SEEK_SET)
                .map_err(at.io(format!("seek the memfd to {}", m.pos)))?;
        }
        finish(at, fd.as_fd(), m.flags, &m.fown)?;
        Ok(fd)
    }
}

/// Creates a memfd with its name, contents (`pagemap-shmem-<shmid>.img`), size,
/// owner, mode and seals (last).
fn make_memfd(dir: &Path, at: &FileRef, mie: &pb::MemfdInodeEntry) -> Result<OwnedFd> {
    let sealed_shut = mie.seals == libc::F_SEAL_SEAL as u32;
    let mut flags = if sealed_shut {
        0
    } else {
        libc::MFD_ALLOW_SEALING
    };
    flags |= mie.hugetlb_flag.unwrap_or(0);
    // Bytes: a memfd's name need not be UTF-8.
    let shown = String::from_utf8_lossy(&mie.name);
    let fd = sys::memfd_create(&mie.name, flags).map_err(at.io(format!("create memfd {shown}")))?;
    let file = File::from(fd);
    file.set_len(mie.size)
        .map_err(at.io(format!("size memfd {shown} to {}", mie.size)))?;
    fill_shmem(dir, at, mie.shmid, &file, mie.size)?;
    std::os::unix::fs::fchown(&file, Some(mie.uid), Some(mie.gid))
        .map_err(at.io(format!("chown memfd {shown}")))?;
    if let Some(mode) = mie.mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(at.io(format!("chmod memfd {shown}")))?;
    }
    let fd = OwnedFd::from(file);
    if !sealed_shut && mie.seals != 0 {
        sys::fcntl_set(fd.as_fd(), libc::F_ADD_SEALS, mie.seals as i32)
            .map_err(at.io(format!("seal memfd {shown} with {:#x}", mie.seals)))?;
    }
    Ok(fd)
}

/// Writes the saved pages of shared memory `shmid` into `file`, within `size` bytes.
fn fill_shmem(dir: &Path, at: &FileRef, shmid: u32, file: &File, size: u64) -> Result<()> {
    let name = format!("pagemap-shmem-{shmid}.img");
    let path = dir.join(&name);
    let mut r = ImageReader::open(&path)?;
    let head: pb::PagemapHead = r.next_entry()?.ok_or_else(|| bad(&name, "is empty"))?;
    let pages_name = format!("pages-{}.img", head.pages_id);
    let pages = File::open(dir.join(&pages_name)).map_err(at.io(format!("open {pages_name}")))?;
    // hugetlbfs has no write(2): its objects are written through a mapping.
    let mut object = sys::ObjectWriter::new(file).map_err(at.io("map a hugetlb memfd"))?;
    let mut offset = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while let Some(e) = r.next_entry::<pb::PagemapEntry>()? {
        let flags = e.flags.unwrap_or(PE_PRESENT);
        if flags & PE_PARENT != 0 || e.in_parent == Some(true) {
            return Err(at.refused(format!(
                "memory of shmid {shmid} in a parent image (pre-dump)"
            )));
        }
        if flags & PE_PRESENT == 0 {
            continue;
        }
        let len = e
            .nr_pages
            .unwrap_or(u64::from(e.compat_nr_pages))
            .checked_mul(PAGE)
            .ok_or_else(|| bad(&name, format!("entry at {:#x} is too long", e.vaddr)))?;
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            pages
                .read_exact_at(&mut buf[..n], offset + done)
                .map_err(|err| bad(&pages_name, format!("ends early: {err}")))?;
            let at_off = e.vaddr.saturating_add(done);
            if at_off < size {
                let keep = ((size - at_off) as usize).min(n);
                object
                    .write_all_at(&buf[..keep], at_off)
                    .map_err(at.io(format!("fill memfd contents at {at_off:#x}")))?;
            }
            done += n as u64;
        }
        offset += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_names() {
        assert_eq!(memfd_name(b"/memfd:hello (deleted)"), b"hello");
        assert_eq!(memfd_name(b"/dev/zero (deleted)"), b"/dev/zero");
        assert_eq!(memfd_name(b"/memfd:a b"), b"a b");
        assert_eq!(memfd_name(b"/memfd:\xff\xfe (deleted)"), b"\xff\xfe");
    }
}
