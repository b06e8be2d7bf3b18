//! Pages of an incremental dump: a pagemap entry flagged `PE_PARENT` (or the older
//! `in_parent`) has its pages in the parent images, the dir the `parent` symlink of the
//! images dir leads to, at the same address of the same process, and maybe further up
//! the chain. Such a pagemap is resolved once at load: the pages of the whole chain are
//! gathered, in pagemap order, into a memfd that the rest of the restore reads as it
//! reads a pages file (through its `/proc/self/fd` path), with a pagemap of plain
//! entries to match. That costs one copy of the pages in memory; a dump without parent
//! is read as before.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use criu_images::flags::page::{PE_PARENT, PE_PRESENT};
use criu_images::{pb, ImageReader};

use super::RestoreError;
use crate::sys;

/// Bytes gathered before each write into the memfd.
const GATHER_BYTES: usize = 8 << 20;

/// How deep a chain of parents may go (a symlink loop ends here).
const MAX_DEPTH: usize = 64;

/// Whether an entry's pages are in the parent images.
pub(super) fn in_parent(e: &pb::PagemapEntry) -> bool {
    e.flags.unwrap_or(0) & PE_PARENT != 0 || e.in_parent == Some(true)
}

/// An entry's page count (`nr_pages`, or for old images `compat_nr_pages`).
pub(super) fn nr_pages(e: &pb::PagemapEntry) -> u64 {
    e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages))
}

/// One level of the chain: a pagemap with the offset of each entry's pages in its
/// pages file (None for entries in the parent).
struct Level {
    dir: PathBuf,
    entries: Vec<(pb::PagemapEntry, Option<u64>)>,
    /// The pages file, mapped (read-only, private).
    pages: memmap2::Mmap,
}

impl Level {
    fn open(dir: &Path, pid: u32) -> Result<Level, RestoreError> {
        let name = format!("pagemap-{pid}.img");
        let mut r = ImageReader::open(dir.join(&name))?;
        let head: pb::PagemapHead = r.next_entry()?.ok_or_else(|| bad(dir, &name, "is empty"))?;
        let mut entries = Vec::new();
        while let Some(e) = r.next_entry::<pb::PagemapEntry>()? {
            entries.push(e);
        }
        Self::with(dir, entries, head.pages_id)
    }

    fn with(
        dir: &Path,
        entries: Vec<pb::PagemapEntry>,
        pages_id: u32,
    ) -> Result<Level, RestoreError> {
        let pages_name = format!("pages-{pages_id}.img");
        let pages = File::open(dir.join(&pages_name))
            .and_then(|f| sys::map_image(&f))
            .map_err(|e| bad(dir, &pages_name, &e.to_string()))?;
        let mut offset = 0;
        let entries = entries
            .into_iter()
            .map(|e| {
                if in_parent(&e) {
                    (e, None)
                } else {
                    let at = offset;
                    offset += nr_pages(&e) * sys::page_size();
                    (e, Some(at))
                }
            })
            .collect::<Vec<_>>();
        // Looked up by address (`read_piece`): sorted, as writers write them anyway.
        let mut entries = entries;
        entries.sort_by_key(|(e, _)| e.vaddr);
        Ok(Level {
            dir: dir.to_owned(),
            entries,
            pages,
        })
    }
}

fn bad(dir: &Path, image: &str, what: &str) -> RestoreError {
    RestoreError::BadImage {
        image: dir.join(image).display().to_string(),
        what: what.into(),
    }
}

/// A pagemap with no entry in a parent, and the memfd holding its pages.
pub(super) type Resolved = (Vec<pb::PagemapEntry>, Arc<OwnedFd>);

/// The pagemap of process `pid` (read from `dir`, whose pages are `pages-<pages_id>`)
/// with every `PE_PARENT` entry resolved through the chain of parents: returns the
/// plain pagemap and the memfd holding its pages, or None when nothing is in a parent.
pub(super) fn resolve(
    dir: &Path,
    pid: u32,
    pagemap: &[pb::PagemapEntry],
    pages_id: u32,
) -> Result<Option<Resolved>, RestoreError> {
    if !pagemap.iter().any(in_parent) {
        return Ok(None);
    }
    let mut levels = vec![Level::with(dir, pagemap.to_vec(), pages_id)?];
    let memfd = File::from(
        sys::memfd_create(format!("criu-rs-pages-{pid}"), 0)
            .map_err(|e| bad(dir, "pages", &format!("a memfd for the chain's pages: {e}")))?,
    );
    let page = sys::page_size();
    let mut out: Vec<pb::PagemapEntry> = Vec::new();
    let mut written = 0u64;
    // Pieces are often single pages (the pages written between pre-dumps): they are
    // gathered in `buf` and written out in large steps.
    let mut buf: Vec<u8> = Vec::with_capacity(GATHER_BYTES);
    let flush = |buf: &mut Vec<u8>, written: &mut u64| {
        memfd
            .write_all_at(buf, *written)
            .map_err(|e| bad(dir, "pages", &format!("writing the chain's pages: {e}")))?;
        *written += buf.len() as u64;
        buf.clear();
        Ok::<(), RestoreError>(())
    };
    let top: Vec<(pb::PagemapEntry, Option<u64>)> = levels[0].entries.clone();
    for (e, _) in &top {
        let (start, end) = (e.vaddr, e.vaddr + nr_pages(e) * page);
        // (address, end, flags) pieces, each read from the level that holds it.
        let mut at = start;
        while at < end {
            let (piece_end, flags) = read_piece(&mut levels, 0, pid, at, end, &mut buf)?;
            if buf.len() >= GATHER_BYTES {
                flush(&mut buf, &mut written)?;
            }
            match out.last_mut() {
                Some(last)
                    if last.flags == Some(flags) && last.vaddr + nr_pages(last) * page == at =>
                {
                    last.nr_pages = Some(nr_pages(last) + (piece_end - at) / page)
                }
                _ => out.push(pb::PagemapEntry {
                    vaddr: at,
                    compat_nr_pages: 0,
                    in_parent: None,
                    flags: Some(flags),
                    nr_pages: Some((piece_end - at) / page),
                }),
            }
            at = piece_end;
        }
    }
    flush(&mut buf, &mut written)?;
    tracing::debug!(
        pid,
        bytes = written,
        levels = levels.len(),
        "pages of the parent chain gathered"
    );
    Ok(Some((out, Arc::new(OwnedFd::from(memfd)))))
}

/// Appends to `buf` the pages from `at` (up to `end`) that level `depth` holds, going
/// to its parent for those it refers there; returns where the piece read ends and the
/// flags of the entry that held it.
fn read_piece(
    levels: &mut Vec<Level>,
    depth: usize,
    pid: u32,
    at: u64,
    end: u64,
    buf: &mut Vec<u8>,
) -> Result<(u64, u32), RestoreError> {
    let page = sys::page_size();
    let level = &levels[depth];
    // Entries are in address order: the last one starting at or below `at`.
    let i = level.entries.partition_point(|(e, _)| e.vaddr <= at);
    let found = i
        .checked_sub(1)
        .map(|i| &level.entries[i])
        .filter(|(e, _)| at < e.vaddr + nr_pages(e) * page);
    let Some((e, offset)) = found.cloned() else {
        return Err(bad(
            &level.dir,
            &format!("pagemap-{pid}.img"),
            &format!("has no page at {at:#x}, which its child refers to"),
        ));
    };
    let piece_end = end.min(e.vaddr + nr_pages(&e) * page);
    match offset {
        Some(offset) => {
            let from = (offset + (at - e.vaddr)) as usize;
            let to = from + (piece_end - at) as usize;
            let bytes = level.pages.get(from..to).ok_or_else(|| {
                bad(
                    &level.dir,
                    "pages",
                    &format!("holds {} bytes, the pagemap needs {to}", level.pages.len()),
                )
            })?;
            buf.extend_from_slice(bytes);
            let flags = (e.flags.unwrap_or(PE_PRESENT) & !PE_PARENT) | PE_PRESENT;
            Ok((piece_end, flags))
        }
        None => {
            if depth + 1 >= MAX_DEPTH {
                return Err(bad(
                    &level.dir,
                    "parent",
                    "a chain of parents too deep (a loop?)",
                ));
            }
            if levels.len() == depth + 1 {
                let parent = level.dir.join("parent");
                let next = Level::open(&parent, pid)?;
                levels.push(next);
            }
            read_piece(levels, depth + 1, pid, at, piece_end, buf)
        }
    }
}

/// The path a resolved chain's pages are read through.
pub(super) fn memfd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}
