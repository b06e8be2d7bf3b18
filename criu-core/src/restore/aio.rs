//! Stage 5: AIO rings. The dumped ring's bytes are restored into an ordinary anonymous
//! mapping at the old address (map_one); here the task makes a new context with
//! io_setup, brings its head and tail to the dumped ones, copies the events in, and
//! moves the new ring over the old address, which is then the context's id again.
//!
//! The kernel keeps the tail itself (it is where the next completion goes): it only
//! moves by completing requests, so requests that complete at once (1-byte writes to
//! /dev/null) are submitted until it is where it was; the head is the reader's and is
//! set directly, which frees ring room as io_getevents would.

use super::*;
use crate::dump::aio::{events_in, RingHeader, RING_HEADER};

/// `struct iocb` (linux/aio_abi.h): 64 bytes.
const IOCB_LEN: u64 = 64;
/// IOCB_CMD_PWRITE.
const IOCB_CMD_PWRITE: u16 = 1;

impl Rebuild<'_> {
    /// Rebuilds every AIO context of the image in the task.
    pub(super) fn restore_aio_rings(&mut self) -> Result<(), RestoreError> {
        let img = self.img;
        for ring in &img.mm.aios {
            self.restore_aio_ring(ring)?;
        }
        Ok(())
    }

    fn restore_aio_ring(&mut self, ring: &pb::AioRingEntry) -> Result<(), RestoreError> {
        let (addr, len) = (ring.id, u64::from(ring.ring_len));
        let what = format!("the AIO ring at {addr:#x}");
        let bad = |why: String| RestoreError::BadImage {
            image: format!("mm-{}.img", self.pid.0),
            what: format!("{what}: {why}"),
        };
        if len < RING_HEADER {
            return Err(bad(format!("ring length {len} is shorter than its header")));
        }
        let old = self
            .inj
            .read(addr, len as usize)
            .map_err(self.err("reading the saved AIO ring"))?;
        let mut raw = [0u8; RING_HEADER as usize];
        raw.copy_from_slice(&old[..RING_HEADER as usize]);
        let h = RingHeader::parse(&raw);
        if u64::from(h.nr) != events_in(len) || h.head >= h.nr || h.tail >= h.nr {
            return Err(bad(format!(
                "header nr {} head {} tail {} does not fit a ring of {len} bytes",
                h.nr, h.head, h.tail
            )));
        }
        let scratch = self.scratch();
        self.inj
            .write(scratch, &0u64.to_ne_bytes())
            .map_err(self.err("writing scratch"))?;
        self.inj
            .syscall_ok(
                "io_setup",
                libc::SYS_io_setup,
                [u64::from(ring.nr_req), scratch, 0, 0, 0, 0],
            )
            .map_err(self.err(&format!("io_setup for {what}")))?;
        let ctx = self.read_u64(scratch)?;
        let new_nr = self.read_u32(ctx + 4)?;
        if new_nr != h.nr {
            return Err(self.err(&what)(std::io::Error::other(format!(
                "io_setup({}) made a ring of {new_nr} events, the saved one has {}",
                ring.nr_req, h.nr
            ))));
        }
        if h.head != 0 || h.tail != 0 {
            self.advance_ring(ctx, &h)?;
        }
        self.inj
            .write(ctx + RING_HEADER, &old[RING_HEADER as usize..])
            .map_err(self.err("copying the AIO events"))?;
        let flags = (libc::MREMAP_FIXED | libc::MREMAP_MAYMOVE) as u64;
        let moved = self
            .inj
            .syscall_ok("mremap", libc::SYS_mremap, [ctx, len, len, flags, addr, 0])
            .map_err(self.err(&format!("moving the new ring to {addr:#x}")))?;
        if moved != addr {
            return Err(self.err(&what)(std::io::Error::other(format!(
                "mremap put the ring at {moved:#x}"
            ))));
        }
        Ok(())
    }

    /// Moves the new ring at `ctx` to the saved `h`'s head and tail.
    fn advance_ring(&mut self, ctx: u64, h: &RingHeader) -> Result<(), RestoreError> {
        let scratch = self.scratch();
        // Scratch layout: the byte written at 0, the path at 16, the iocb at 64, the
        // pointer array after it up to the end of the scratch pages.
        let path = scratch + 16;
        let iocb = scratch + 64;
        let array = iocb + IOCB_LEN;
        let room = (scratch + 3 * PAGE - array) / 8;
        self.inj
            .write(path, b"/dev/null\0")
            .map_err(self.err("writing scratch"))?;
        let fd = self
            .inj
            .syscall_ok(
                "openat /dev/null",
                libc::SYS_openat,
                [libc::AT_FDCWD as u64, path, libc::O_WRONLY as u64, 0, 0, 0],
            )
            .map_err(self.err("opening /dev/null for the AIO ring"))?;
        let mut cb = [0u8; IOCB_LEN as usize];
        cb[16..18].copy_from_slice(&IOCB_CMD_PWRITE.to_ne_bytes());
        cb[20..24].copy_from_slice(&(fd as u32).to_ne_bytes());
        cb[24..32].copy_from_slice(&scratch.to_ne_bytes());
        cb[32..40].copy_from_slice(&1u64.to_ne_bytes());
        // A tail behind the head went round the ring once: a full turn first, so that
        // the kernel's count of completions matches.
        let count = u64::from(if h.tail < h.head {
            h.nr + h.tail
        } else {
            h.tail
        });
        let at_once = count.min(u64::from(h.nr) - 1).min(room);
        let pointers: Vec<u8> = (0..at_once).flat_map(|_| iocb.to_ne_bytes()).collect();
        self.inj
            .write(iocb, &cb)
            .and_then(|()| self.inj.write(array, &pointers))
            .map_err(self.err("writing the AIO requests"))?;
        let mut done = 0u64;
        while done < count {
            let n = (count - done).min(at_once);
            let submitted = self
                .inj
                .syscall_ok("io_submit", libc::SYS_io_submit, [ctx, n, array, 0, 0, 0])
                .map_err(self.err("submitting AIO requests"))?;
            if submitted == 0 {
                return Err(self.err("submitting AIO requests")(std::io::Error::other(
                    "io_submit took none",
                )));
            }
            done += submitted;
            // Reading the events as io_getevents would: sets the head, freeing room.
            let head = done.min(u64::from(h.head)) as u32;
            self.inj
                .write(ctx + 8, &head.to_ne_bytes())
                .map_err(self.err("setting the AIO ring's head"))?;
        }
        self.inj
            .syscall_ok("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])
            .map_err(self.err("closing /dev/null"))?;
        Ok(())
    }

    fn read_u64(&self, addr: u64) -> Result<u64, RestoreError> {
        let b = self
            .inj
            .read(addr, 8)
            .map_err(self.err("reading task memory"))?;
        Ok(u64::from_ne_bytes(b[..8].try_into().unwrap_or_default()))
    }

    fn read_u32(&self, addr: u64) -> Result<u32, RestoreError> {
        let b = self
            .inj
            .read(addr, 4)
            .map_err(self.err("reading task memory"))?;
        Ok(u32::from_ne_bytes(b[..4].try_into().unwrap_or_default()))
    }
}
