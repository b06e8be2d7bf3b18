//! AIO contexts (io_setup): each is a ring mapped in the task (`/[aio] (deleted)`), whose
//! address is the context's id. The ring's pages are saved whole with the memory; the
//! image records each ring (`aio_ring_entry`) with the request count to ask io_setup for
//! so that the kernel makes a ring of the same size again.
//!
//! The ring header is the kernel's `struct aio_ring` (fs/aio.c), 32 bytes: id, nr, head,
//! tail, magic, compat_features, incompat_features, header_length; then `nr` io_events
//! of 32 bytes each.

use std::fs::File;
use std::os::unix::fs::FileExt;

use criu_images::pb;

use super::mm::{Backing, Vma};
use crate::sys::{self, Pid};

/// Size of the ring header, and of one io_event.
pub const RING_HEADER: u64 = 32;
pub const IO_EVENT: u64 = 32;
const RING_MAGIC: u32 = 0xa10a_10a1;

/// The ring header fields the dump and the restore look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingHeader {
    pub nr: u32,
    pub head: u32,
    pub tail: u32,
    pub magic: u32,
    pub compat_features: u32,
    pub incompat_features: u32,
    pub header_length: u32,
}

impl RingHeader {
    pub fn parse(b: &[u8; RING_HEADER as usize]) -> RingHeader {
        let word =
            |i: usize| u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        RingHeader {
            nr: word(1),
            head: word(2),
            tail: word(3),
            magic: word(4),
            compat_features: word(5),
            incompat_features: word(6),
            header_length: word(7),
        }
    }
}

/// The number of io_events a ring of `len` bytes holds.
pub fn events_in(len: u64) -> u64 {
    len.saturating_sub(RING_HEADER) / IO_EVENT
}

/// The `nr_events` to pass io_setup for a ring of `len` bytes: the kernel doubles the
/// request (after raising it to 4 per CPU) and adds 2, then rounds the ring up to whole
/// pages, so the ring's capacity maps back to this value.
pub fn estimate_nr_req(len: u64) -> u32 {
    (events_in(len).saturating_sub(2) / 2) as u32
}

/// The image's entries for the AIO rings among `vmas` of `pid`, after checking each ring
/// is one the kernel made (the restore rebuilds only that layout).
pub fn ring_entries(pid: Pid, vmas: &[Vma]) -> Result<Vec<pb::AioRingEntry>, String> {
    let rings: Vec<&Vma> = vmas
        .iter()
        .filter(|v| v.backing == Backing::AioRing)
        .collect();
    if rings.is_empty() {
        return Ok(Vec::new());
    }
    let mem = File::open(format!("/proc/{}/mem", pid.0))
        .map_err(|e| format!("opening the memory of {pid}: {e}"))?;
    let page = sys::page_size();
    let mut out = Vec::with_capacity(rings.len());
    for vma in rings {
        let (start, end) = (vma.map.start, vma.map.end);
        let len = end - start;
        let mut raw = [0u8; RING_HEADER as usize];
        mem.read_exact_at(&mut raw, start)
            .map_err(|e| format!("reading the AIO ring at {start:#x}: {e}"))?;
        let h = RingHeader::parse(&raw);
        let sane = h.magic == RING_MAGIC
            && h.compat_features == 1
            && h.incompat_features == 0
            && u64::from(h.header_length) == RING_HEADER
            && u64::from(h.nr) == events_in(len)
            && len % page == 0;
        if !sane {
            return Err(format!(
                "the AIO ring at {start:#x}-{end:#x} has a header this dump does not know \
                 (magic {:#x}, nr {}, header length {})",
                h.magic, h.nr, h.header_length
            ));
        }
        out.push(pb::AioRingEntry {
            id: start,
            nr_req: estimate_nr_req(len),
            ring_len: len as u32,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nr_req_maps_back_to_the_ring_size() {
        // io_setup(64) with 2 CPUs: max(64, 8) * 2 + 2 = 130 events, 32 + 130 * 32 bytes
        // round up to 2 pages, which hold 255 events; asking for 126 gives 254 events,
        // which round up to the same 2 pages.
        assert_eq!(events_in(8192), 255);
        assert_eq!(estimate_nr_req(8192), 126);
        // io_setup(1): max(1, 8) * 2 + 2 = 18 events: one page, 127 events.
        assert_eq!(estimate_nr_req(4096), 62);
    }
}
