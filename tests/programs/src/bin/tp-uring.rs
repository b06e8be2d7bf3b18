//! tp-uring: holds an io_uring instance, the state the dump refuses (see
//! `criu-core/src/files/io_uring.rs` for why), beside 4 MiB of patterned memory.
//!
//! The ring has 8 submission slots, mapped as liburing maps it (SQ and CQ rings in one
//! mapping, the SQE array in another), one registered file (the read end of a pipe) and
//! an io-wq worker thread (`iou-wrk-PID`: a NOP submitted with `IOSQE_ASYNC`, reaped
//! before `ready`), so the indexes are not at zero and one completion is left unreaped.
//! The check reaps that one, submits a NOP and a read of the pipe through the
//! registered file, and finds both completions with their results: the ring still works
//! and its indexes are where the program left them.
//!
//! `PATH.fd` gets the ring's descriptor number.

use std::os::raw::c_int;
use std::time::Duration;

use criu_testprogs::{
    check_pattern, cvt, fill_pattern, random_seed, write_atomic, Mapping, Program, Report,
};

const MEMORY_BYTES: usize = 4 << 20;
const ENTRIES: u32 = 8;
const IORING_OFF_SQES: i64 = 0x1000_0000;
const IORING_OP_NOP: u8 = 0;
const IORING_OP_READ: u8 = 22;
const IOSQE_FIXED_FILE: u8 = 1 << 0;
const IOSQE_ASYNC: u8 = 1 << 4;
const IORING_REGISTER_FILES: u32 = 2;
const IORING_ENTER_GETEVENTS: u32 = 1;
const PIPE_BYTE: u8 = b'u';

/// `struct io_uring_params` as 30 u32 words: the offsets of `sq_off` and `cq_off`.
mod params {
    pub const SQ_TAIL: usize = 11;
    pub const SQ_MASK: usize = 12;
    pub const SQ_ARRAY: usize = 16;
    pub const CQ_HEAD: usize = 20;
    pub const CQ_TAIL: usize = 21;
    pub const CQ_MASK: usize = 22;
    pub const CQ_CQES: usize = 25;
}

struct Ring {
    fd: c_int,
    p: [u32; 30],
    rings: *mut u8,
    sqes: *mut u8,
    pipe: [c_int; 2],
}

impl Ring {
    fn word(&self, off: usize) -> *mut u32 {
        // SAFETY: offsets the kernel gave, inside the rings mapping.
        unsafe { self.rings.add(self.p[off] as usize).cast::<u32>() }
    }

    fn load(&self, off: usize) -> u32 {
        // SAFETY: an aligned u32 of the rings mapping, shared with the kernel.
        unsafe { std::sync::atomic::AtomicU32::from_ptr(self.word(off)) }
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn store(&self, off: usize, v: u32) {
        // SAFETY: as in `load`.
        unsafe { std::sync::atomic::AtomicU32::from_ptr(self.word(off)) }
            .store(v, std::sync::atomic::Ordering::Release)
    }

    /// Queues one SQE (not submitted yet).
    fn push(&self, opcode: u8, flags: u8, fd: i32, addr: u64, len: u32, user_data: u64) {
        let tail = self.load(params::SQ_TAIL);
        let slot = tail & self.load(params::SQ_MASK);
        let mut sqe = [0u8; 64];
        sqe[0] = opcode;
        sqe[1] = flags;
        sqe[4..8].copy_from_slice(&fd.to_ne_bytes());
        sqe[16..24].copy_from_slice(&addr.to_ne_bytes());
        sqe[24..28].copy_from_slice(&len.to_ne_bytes());
        sqe[32..40].copy_from_slice(&user_data.to_ne_bytes());
        // SAFETY: slot < ENTRIES, and the SQE array holds ENTRIES 64-byte entries.
        unsafe {
            std::ptr::copy_nonoverlapping(sqe.as_ptr(), self.sqes.add(slot as usize * 64), 64);
            *self.word(params::SQ_ARRAY).add(slot as usize) = slot;
        }
        self.store(params::SQ_TAIL, tail.wrapping_add(1));
    }

    fn enter(&self, submit: u32, wait: u32) -> std::io::Result<c_int> {
        // SAFETY: io_uring_enter without a signal mask.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd,
                submit,
                wait,
                IORING_ENTER_GETEVENTS,
                0usize,
                0usize,
            )
        };
        cvt(r as c_int)
    }

    /// Takes the next completion, if any: (user_data, res).
    fn reap(&self) -> Option<(u64, i32)> {
        let head = self.load(params::CQ_HEAD);
        if head == self.load(params::CQ_TAIL) {
            return None;
        }
        let slot = (head & self.load(params::CQ_MASK)) as usize;
        // SAFETY: the CQE array of the rings mapping, 16 bytes an entry.
        let cqe = unsafe { self.rings.add(self.p[params::CQ_CQES] as usize + slot * 16) };
        // SAFETY: as above.
        let (data, res) = unsafe { (cqe.cast::<u64>().read(), cqe.add(8).cast::<i32>().read()) };
        self.store(params::CQ_HEAD, head.wrapping_add(1));
        Some((data, res))
    }
}

fn setup() -> std::io::Result<Ring> {
    let mut p = [0u32; 30];
    // SAFETY: the kernel reads and writes one io_uring_params (120 bytes) in `p`.
    let fd =
        cvt(unsafe { libc::syscall(libc::SYS_io_uring_setup, ENTRIES, p.as_mut_ptr()) } as c_int)?;
    let sq_end = p[params::SQ_ARRAY] as usize + ENTRIES as usize * 4;
    let cq_end = p[params::CQ_CQES] as usize + p[1] as usize * 16;
    let map = |len: usize, off: i64| {
        // SAFETY: a new shared mapping of the ring; nothing else is at that address.
        let a = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                off,
            )
        };
        if a == libc::MAP_FAILED {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(a.cast::<u8>())
        }
    };
    let rings = map(sq_end.max(cq_end), 0)?;
    let sqes = map(ENTRIES as usize * 64, IORING_OFF_SQES)?;
    let mut pipe = [0; 2];
    // SAFETY: pipe writes two fds into `pipe`.
    cvt(unsafe { libc::pipe(pipe.as_mut_ptr()) })?;
    let files = [pipe[0]];
    // SAFETY: the kernel reads one int from `files`.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd,
            IORING_REGISTER_FILES,
            files.as_ptr(),
            1,
        )
    } as c_int)?;
    let ring = Ring {
        fd,
        p,
        rings,
        sqes,
        pipe,
    };
    // Three NOPs, the first through io-wq (a worker thread), two reaped.
    ring.push(IORING_OP_NOP, IOSQE_ASYNC, -1, 0, 0, 1);
    ring.push(IORING_OP_NOP, 0, -1, 0, 0, 2);
    ring.push(IORING_OP_NOP, 0, -1, 0, 0, 3);
    ring.enter(3, 3)?;
    for _ in 0..2 {
        ring.reap();
    }
    Ok(ring)
}

fn check_ring(ring: &Ring, report: &mut Report) {
    // The async NOP usually completes last, but nothing orders the three.
    let left = ring.reap();
    report.check(matches!(left, Some((1..=3, 0))), || {
        format!("the completion left unreaped: {left:?}")
    });
    // SAFETY: one byte, readable.
    let sent = unsafe { libc::write(ring.pipe[1], [PIPE_BYTE].as_ptr().cast(), 1) };
    report.check_eq("bytes written to the pipe", sent, 1);
    let mut byte = [0u8; 1];
    ring.push(IORING_OP_NOP, 0, -1, 0, 0, 10);
    ring.push(
        IORING_OP_READ,
        IOSQE_FIXED_FILE,
        0,
        byte.as_mut_ptr() as u64,
        1,
        11,
    );
    match ring.enter(2, 2) {
        Ok(n) => report.check_eq("SQEs submitted", n, 2),
        Err(e) => report.fail(format!("io_uring_enter: {e}")),
    }
    let mut got = vec![ring.reap(), ring.reap()];
    got.sort();
    report.check_eq("the completions", got, vec![Some((10, 0)), Some((11, 1))]);
    report.check_eq(
        "the byte read through the registered file",
        byte[0],
        PIPE_BYTE,
    );
}

fn main() {
    let mut program = Program::start("tp-uring", &[]);
    let ring = program.must(setup(), "set up an io_uring");
    let mut memory = program.must(Mapping::anonymous(MEMORY_BYTES, false), "map memory");
    let seed = random_seed();
    fill_pattern(memory.words_mut(), seed, 0);
    program.must(
        write_atomic(
            &program.companion(".fd"),
            format!("{}\n", ring.fd).as_bytes(),
        ),
        "write the fd number",
    );
    program.ready();
    program.work_until_check(Duration::from_millis(50), || {});

    let mut report = Report::new();
    if let Some(m) = check_pattern(memory.words(), seed, 0) {
        report.fail(format!("memory: {m}"));
    }
    check_ring(&ring, &mut report);
    program.finish(&report);
}
