//! hugetlb memory: objects on the kernel's hugetlbfs mount (shared `MAP_HUGETLB` memory,
//! `MFD_HUGETLB` memfds), which have no write(2) and take huge pages only.

use super::*;

/// statfs(2) type of hugetlbfs.
pub const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// The huge page size of `object` when it lives on hugetlbfs, `None` otherwise.
pub fn huge_page_size(object: &std::fs::File) -> io::Result<Option<u64>> {
    if fstatfs_type(object.as_fd())? != HUGETLBFS_MAGIC {
        return Ok(None);
    }
    // hugetlbfs gives its files the huge page size as their block size.
    Ok(Some(std::os::unix::fs::MetadataExt::blksize(
        &object.metadata()?,
    )))
}

/// A new shared hugetlb memory object of `len` bytes (a multiple of its page size),
/// the kind `mmap(MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB)` creates and maps show as
/// `/anon_hugepage (deleted)`, as an open file. `size_bits` are the `MAP_HUGE_*` bits
/// of its page size (0: the default size). Like [`shared_anon_object`], it is mapped
/// here only long enough to open it through `/proc/self/map_files`; its huge pages are
/// reserved from then on, as the original's were, unless `noreserve` (MAP_NORESERVE).
pub fn shared_hugetlb_object(
    len: u64,
    size_bits: u32,
    noreserve: bool,
) -> io::Result<std::fs::File> {
    let noreserve = if noreserve { libc::MAP_NORESERVE } else { 0 };
    super::mem::shared_anon_object_with(len, libc::MAP_HUGETLB | size_bits as i32 | noreserve)
}

/// Writes the contents of a shared memory object being rebuilt: with pwrite(2), or for
/// a hugetlbfs object (which has no write(2)) through a shared mapping of all of it.
pub enum ObjectWriter<'a> {
    File(&'a std::fs::File),
    Mapped(memmap2::MmapMut),
}

impl<'a> ObjectWriter<'a> {
    pub fn new(object: &'a std::fs::File) -> io::Result<ObjectWriter<'a>> {
        if huge_page_size(object)?.is_none() {
            return Ok(ObjectWriter::File(object));
        }
        let len = object.metadata()?.len();
        if len == 0 {
            return Ok(ObjectWriter::File(object));
        }
        // SAFETY: the object was just created by this restore and is not mapped by
        // anyone else yet, so nothing changes or truncates it under the mapping while
        // it is written.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(len as usize)
                .map_mut(object)
        }?;
        Ok(ObjectWriter::Mapped(map))
    }

    /// Writes all of `data` at `offset` of the object.
    pub fn write_all_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        match self {
            ObjectWriter::File(f) => std::os::unix::fs::FileExt::write_all_at(*f, data, offset),
            ObjectWriter::Mapped(map) => {
                let end = offset.checked_add(data.len() as u64);
                let Some(to) = end.filter(|&e| e <= map.len() as u64) else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{} bytes at {offset:#x} end past the object's {} bytes",
                            data.len(),
                            map.len()
                        ),
                    ));
                };
                map[offset as usize..to as usize].copy_from_slice(data);
                Ok(())
            }
        }
    }
}
