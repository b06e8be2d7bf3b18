//! tp-uring: holds an io_uring instance beside 4 MiB of patterned memory. `--ring KIND`
//! says which ring:
//!
//! - `registered` (the default): a ring the dump refuses (see
//!   `criu-core/src/files/io_uring.rs`): 8 submission slots, one registered file (the
//!   read end of a pipe) and an io-wq worker thread (`iou-wrk-PID`: a NOP submitted with
//!   `IOSQE_ASYNC`), so the indexes are not at zero and one completion is left unreaped.
//!   The check reaps that one, submits a NOP and a read of the pipe through the
//!   registered file, and finds both completions with their results.
//! - `rest`: a ring at rest as libuv keeps one (256 slots, flags 0, the SQ index array
//!   written N at N once): `--count` requests (default 100000) pushed through it in
//!   batches, epoll_ctl adds and deletes of a pipe on an epoll instance and NOPs, plus an
//!   async NOP (an io-wq worker thread lingers), every completion reaped and checked; a
//!   thread then waits in `io_uring_enter` for a completion, as a program's completion
//!   thread does, and an epoll instance watches the ring's fd, as event loops that drive
//!   a ring from epoll do. The check wakes that thread with a NOP it reaps, then submits an
//!   epoll_ctl, a write-then-read of the pipe and a NOP and checks their results (and
//!   that epoll reports the ring's fd readable before they are reaped), and
//!   checks that the ring's counters (in the mapping and the kernel's own in fdinfo) are
//!   exactly the requests the program made, before and after the restore.
//! - `nosqarray`: as `rest`, made with IORING_SETUP_NO_SQARRAY (no index array), no
//!   waiting thread.
//! - `cqsize`: as `rest` with 32 slots and 256 completions (IORING_SETUP_CQSIZE).
//! - `wide`: as `rest` with 16 slots of 128-byte SQEs and 32-byte CQEs (SQE128, CQE32),
//!   whose regions are no longer than a ring of 64-byte SQEs would have;
//!   `wide-nosqarray` the same without an SQ index array.
//! - `unreaped`, `queued`: 8 slots, 5 NOPs, then a completion not reaped, or a NOP
//!   queued and not submitted: both the program's, which come back. The check reaps the
//!   one left, or submits the queued one with a new NOP, and finds the completions.
//! - `single-issuer`, `eventfd`, `pending`: rings the dump must refuse (made with
//!   IORING_SETUP_SINGLE_ISSUER; an eventfd registered; a timeout in flight), each after
//!   some NOPs. The check submits a NOP and reaps it.
//!
//! `PATH.fd` gets the ring's descriptor number.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criu_testprogs::{
    check_pattern, cvt, fill_pattern, random_seed, write_atomic, Mapping, Program, Report,
};

const MEMORY_BYTES: usize = 4 << 20;
const IORING_OFF_SQES: i64 = 0x1000_0000;
const IORING_OP_NOP: u8 = 0;
const IORING_OP_TIMEOUT: u8 = 11;
const IORING_OP_READ: u8 = 22;
const IORING_OP_EPOLL_CTL: u8 = 29;
const IOSQE_FIXED_FILE: u8 = 1 << 0;
const IOSQE_ASYNC: u8 = 1 << 4;
const IORING_REGISTER_FILES: u32 = 2;
const IORING_REGISTER_EVENTFD: u32 = 4;
const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_SETUP_CQSIZE: u32 = 1 << 3;
const IORING_SETUP_SQE128: u32 = 1 << 10;
const IORING_SETUP_CQE32: u32 = 1 << 11;
const IORING_SETUP_SINGLE_ISSUER: u32 = 1 << 12;
const IORING_SETUP_NO_SQARRAY: u32 = 1 << 16;
const PIPE_BYTE: u8 = b'u';
/// What the epoll instance watching the ring's fd reports with it.
const RING_WATCH_DATA: u64 = 0x7269_6e67;
/// The user_data of the NOP that wakes the waiting thread.
const WAKE_DATA: u64 = 0x7761_6b65;

/// `struct io_uring_params` as 30 u32 words: sizes, flags and the offsets of `sq_off`
/// and `cq_off`.
mod params {
    pub const CQ_ENTRIES: usize = 1;
    pub const FLAGS: usize = 2;
    pub const SQ_HEAD: usize = 10;
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
    sqe_bytes: usize,
    cqe_bytes: usize,
}

// SAFETY: the mappings live as long as the process; threads touch disjoint words of them
// (the waiting thread only the CQ head, after the main thread is done with it).
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    fn word(&self, off: usize) -> *mut u32 {
        // SAFETY: offsets the kernel gave, inside the rings mapping.
        unsafe { self.rings.add(self.p[off] as usize).cast::<u32>() }
    }

    fn load(&self, off: usize) -> u32 {
        // SAFETY: an aligned u32 of the rings mapping, shared with the kernel.
        unsafe { std::sync::atomic::AtomicU32::from_ptr(self.word(off)) }.load(Ordering::Acquire)
    }

    fn store(&self, off: usize, v: u32) {
        // SAFETY: as in `load`.
        unsafe { std::sync::atomic::AtomicU32::from_ptr(self.word(off)) }
            .store(v, Ordering::Release)
    }

    fn has_array(&self) -> bool {
        self.p[params::FLAGS] & IORING_SETUP_NO_SQARRAY == 0
    }

    /// Queues one SQE (not submitted yet); the arguments are the SQE's fields.
    #[allow(clippy::too_many_arguments)]
    fn push(&self, opcode: u8, flags: u8, fd: i32, addr: u64, len: u32, off: u64, user_data: u64) {
        let tail = self.load(params::SQ_TAIL);
        let slot = tail & self.load(params::SQ_MASK);
        let mut sqe = [0u8; 64];
        sqe[0] = opcode;
        sqe[1] = flags;
        sqe[4..8].copy_from_slice(&fd.to_ne_bytes());
        sqe[8..16].copy_from_slice(&off.to_ne_bytes());
        sqe[16..24].copy_from_slice(&addr.to_ne_bytes());
        sqe[24..28].copy_from_slice(&len.to_ne_bytes());
        sqe[32..40].copy_from_slice(&user_data.to_ne_bytes());
        // SAFETY: slot <= the SQ mask, and the SQE array holds that many entries of
        // `sqe_bytes`; the index array (when there is one) as many words.
        unsafe {
            std::ptr::write_bytes(
                self.sqes.add(slot as usize * self.sqe_bytes),
                0,
                self.sqe_bytes,
            );
            std::ptr::copy_nonoverlapping(
                sqe.as_ptr(),
                self.sqes.add(slot as usize * self.sqe_bytes),
                64,
            );
            if self.has_array() {
                *self.word(params::SQ_ARRAY).add(slot as usize) = slot;
            }
        }
        self.store(params::SQ_TAIL, tail.wrapping_add(1));
    }

    fn enter(&self, submit: u32, wait: u32) -> std::io::Result<c_int> {
        let flags = if wait > 0 { IORING_ENTER_GETEVENTS } else { 0 };
        // SAFETY: io_uring_enter without a signal mask.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd,
                submit,
                wait,
                flags,
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
        // SAFETY: the CQE array of the rings mapping, `cqe_bytes` an entry.
        let cqe = unsafe {
            self.rings
                .add(self.p[params::CQ_CQES] as usize + slot * self.cqe_bytes)
        };
        // SAFETY: as above.
        let (data, res) = unsafe { (cqe.cast::<u64>().read(), cqe.add(8).cast::<i32>().read()) };
        self.store(params::CQ_HEAD, head.wrapping_add(1));
        Some((data, res))
    }

    /// The kernel's own counters, from fdinfo: (CachedSqHead, CachedCqTail).
    fn kernel_counters(&self) -> Option<(u32, u32)> {
        let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.fd)).ok()?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u32>().ok())
        };
        Some((field("CachedSqHead:")?, field("CachedCqTail:")?))
    }
}

fn setup(entries: u32, flags: u32, cq_entries: u32) -> std::io::Result<Ring> {
    let mut p = [0u32; 30];
    p[params::FLAGS] = flags;
    p[params::CQ_ENTRIES] = cq_entries;
    // SAFETY: the kernel reads and writes one io_uring_params (120 bytes) in `p`.
    let fd =
        cvt(unsafe { libc::syscall(libc::SYS_io_uring_setup, entries, p.as_mut_ptr()) } as c_int)?;
    let sqe_bytes = if flags & IORING_SETUP_SQE128 != 0 {
        128
    } else {
        64
    };
    let cqe_bytes = if flags & IORING_SETUP_CQE32 != 0 {
        32
    } else {
        16
    };
    let sq_end = if flags & IORING_SETUP_NO_SQARRAY != 0 {
        0
    } else {
        p[params::SQ_ARRAY] as usize + entries as usize * 4
    };
    let cq_end = p[params::CQ_CQES] as usize + p[params::CQ_ENTRIES] as usize * cqe_bytes;
    let map = |len: usize, off: i64| {
        // SAFETY: a new shared mapping of the ring; nothing else is at that address.
        let a = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
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
    let sqes = map(entries as usize * sqe_bytes, IORING_OFF_SQES)?;
    let ring = Ring {
        fd,
        p,
        rings,
        sqes,
        sqe_bytes,
        cqe_bytes,
    };
    if ring.has_array() {
        // As libuv does once: index N names slot N.
        for i in 0..entries as usize {
            // SAFETY: the index array has `entries` words.
            unsafe { *ring.word(params::SQ_ARRAY).add(i) = i as u32 };
        }
    }
    Ok(ring)
}

fn pipe() -> std::io::Result<[c_int; 2]> {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into `fds`.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) })?;
    Ok(fds)
}

/// Submits what is queued and reaps as many completions, checking each result.
fn run_batch(ring: &Ring, n: u32, what: &str) -> std::io::Result<()> {
    let taken = ring.enter(n, n)?;
    if taken != n as c_int {
        return Err(std::io::Error::other(format!(
            "{what}: {taken} of {n} SQEs taken"
        )));
    }
    for _ in 0..n {
        match ring.reap() {
            Some((_, 0)) => {}
            other => {
                return Err(std::io::Error::other(format!(
                    "{what}: completion {other:?}"
                )));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// `registered`: the ring the dump refuses for its registered file
// ---------------------------------------------------------------------------------

struct Registered {
    ring: Ring,
    pipe: [c_int; 2],
}

fn setup_registered() -> std::io::Result<Registered> {
    let ring = setup(8, 0, 0)?;
    let pipe = pipe()?;
    let files = [pipe[0]];
    // SAFETY: the kernel reads one int from `files`.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.fd,
            IORING_REGISTER_FILES,
            files.as_ptr(),
            1,
        )
    } as c_int)?;
    // Three NOPs, the first through io-wq (a worker thread), two reaped.
    ring.push(IORING_OP_NOP, IOSQE_ASYNC, -1, 0, 0, 0, 1);
    ring.push(IORING_OP_NOP, 0, -1, 0, 0, 0, 2);
    ring.push(IORING_OP_NOP, 0, -1, 0, 0, 0, 3);
    ring.enter(3, 3)?;
    for _ in 0..2 {
        ring.reap();
    }
    Ok(Registered { ring, pipe })
}

fn check_registered(r: &Registered, report: &mut Report) {
    let ring = &r.ring;
    // The async NOP usually completes last, but nothing orders the three.
    let left = ring.reap();
    report.check(matches!(left, Some((1..=3, 0))), || {
        format!("the completion left unreaped: {left:?}")
    });
    // SAFETY: one byte, readable.
    let sent = unsafe { libc::write(r.pipe[1], [PIPE_BYTE].as_ptr().cast(), 1) };
    report.check_eq("bytes written to the pipe", sent, 1);
    let mut byte = [0u8; 1];
    ring.push(IORING_OP_NOP, 0, -1, 0, 0, 0, 10);
    ring.push(
        IORING_OP_READ,
        IOSQE_FIXED_FILE,
        0,
        byte.as_mut_ptr() as u64,
        1,
        0,
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

// ---------------------------------------------------------------------------------
// `rest`, `nosqarray`, `cqsize`: rings at rest, which come back
// ---------------------------------------------------------------------------------

struct AtRest {
    ring: Arc<Ring>,
    epoll: c_int,
    pipe: [c_int; 2],
    /// Requests submitted (and completed, and reaped) so far.
    requests: u32,
    waiter: Option<Waiter>,
    /// An epoll instance watching the ring's fd (readable when it has completions to
    /// reap), as event loops that drive a ring from epoll do.
    ring_watch: c_int,
}

/// A thread waiting in io_uring_enter for one completion, which it reaps (again after
/// each EINTR).
struct Waiter {
    thread: std::thread::JoinHandle<()>,
    /// io_uring_enter returns it saw (it should see one, after the check's NOP).
    returns: Arc<AtomicU32>,
    /// The user_data it reaped (-1: none), or -errno of a failed enter.
    reaped: Arc<AtomicI64>,
    started: Arc<AtomicBool>,
}

fn setup_at_rest(
    entries: u32,
    flags: u32,
    cq_entries: u32,
    count: u32,
    waiter: bool,
) -> std::io::Result<AtRest> {
    let ring = setup(entries, flags, cq_entries)?;
    let pipe = pipe()?;
    // SAFETY: plain syscall.
    let epoll = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 42,
    };
    // An async NOP: an io-wq worker thread starts and lingers for a while.
    ring.push(IORING_OP_NOP, IOSQE_ASYNC, -1, 0, 0, 0, 1);
    run_batch(&ring, 1, "the async NOP")?;
    let mut requests = 1u32;
    // epoll_ctl ADD and DEL of the pipe in turn (as libuv batches them), and NOPs.
    let batch_max = entries.min(64);
    let mut added = false;
    while requests < count {
        let n = (count - requests).min(batch_max);
        for _ in 0..n {
            if requests.is_multiple_of(3) {
                ring.push(IORING_OP_NOP, 0, -1, 0, 0, 0, u64::from(requests));
            } else {
                let op = if added {
                    libc::EPOLL_CTL_DEL
                } else {
                    libc::EPOLL_CTL_ADD
                };
                added = !added;
                ring.push(
                    IORING_OP_EPOLL_CTL,
                    0,
                    epoll,
                    &mut event as *mut libc::epoll_event as u64,
                    op as u32,
                    pipe[0] as u64,
                    u64::from(requests),
                );
            }
            requests += 1;
        }
        run_batch(&ring, n, "a batch")?;
    }
    if !added {
        ring.push(
            IORING_OP_EPOLL_CTL,
            0,
            epoll,
            &mut event as *mut libc::epoll_event as u64,
            libc::EPOLL_CTL_ADD as u32,
            pipe[0] as u64,
            0,
        );
        run_batch(&ring, 1, "the last add")?;
        requests += 1;
    }
    // SAFETY: plain syscalls; the kernel reads one epoll_event.
    let ring_watch = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    let mut watch = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: RING_WATCH_DATA,
    };
    // SAFETY: as above.
    cvt(unsafe { libc::epoll_ctl(ring_watch, libc::EPOLL_CTL_ADD, ring.fd, &mut watch) })?;
    let ring = Arc::new(ring);
    let waiter = waiter.then(|| {
        let returns = Arc::new(AtomicU32::new(0));
        let reaped = Arc::new(AtomicI64::new(-1));
        let started = Arc::new(AtomicBool::new(false));
        let (r, n, d, s) = (
            ring.clone(),
            returns.clone(),
            reaped.clone(),
            started.clone(),
        );
        let thread = std::thread::spawn(move || {
            s.store(true, Ordering::SeqCst);
            // As programs wait for completions (liburing's io_uring_wait_cqe): again
            // after EINTR, which a wait in io_uring_enter returns whenever the thread
            // is interrupted, a freeze included.
            let got = loop {
                match r.enter(0, 1) {
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    other => break other,
                }
            };
            n.fetch_add(1, Ordering::SeqCst);
            match got {
                Ok(_) => d.store(
                    r.reap().map_or(-1, |(data, _)| data as i64),
                    Ordering::SeqCst,
                ),
                Err(e) => d.store(-i64::from(e.raw_os_error().unwrap_or(1)), Ordering::SeqCst),
            }
        });
        Waiter {
            thread,
            returns,
            reaped,
            started,
        }
    });
    if let Some(w) = &waiter {
        let until = Instant::now() + Duration::from_secs(5);
        while !w.started.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Long enough to be inside io_uring_enter.
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(AtRest {
        ring_watch,
        ring,
        epoll,
        pipe,
        requests,
        waiter,
    })
}

fn check_counters(r: &AtRest, report: &mut Report, when: &str) {
    let ring = &r.ring;
    report.check_eq(
        &format!("{when}: SQ head, SQ tail, CQ head, CQ tail in the mapping"),
        [
            ring.load(params::SQ_HEAD),
            ring.load(params::SQ_TAIL),
            ring.load(params::CQ_HEAD),
            ring.load(params::CQ_TAIL),
        ],
        [r.requests; 4],
    );
    report.check_eq(
        &format!("{when}: the kernel's SQ head and CQ tail (fdinfo)"),
        ring.kernel_counters(),
        Some((r.requests, r.requests)),
    );
}

fn check_at_rest(mut r: AtRest, report: &mut Report) {
    check_counters(&r, report, "before");
    let ring = r.ring.clone();
    if let Some(w) = r.waiter.take() {
        report.check_eq(
            "returns of the waiting io_uring_enter before the check",
            w.returns.load(Ordering::SeqCst),
            0,
        );
        ring.push(IORING_OP_NOP, 0, -1, 0, 0, 0, WAKE_DATA);
        match ring.enter(1, 0) {
            Ok(n) => report.check_eq("the waking NOP taken", n, 1),
            Err(e) => report.fail(format!("io_uring_enter (the waking NOP): {e}")),
        }
        r.requests += 1;
        let until = Instant::now() + Duration::from_secs(10);
        while !w.thread.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        if w.thread.is_finished() {
            let _ = w.thread.join();
            report.check_eq(
                "returns of the waiting io_uring_enter",
                w.returns.load(Ordering::SeqCst),
                1,
            );
            report.check_eq(
                "what the waiting thread reaped",
                w.reaped.load(Ordering::SeqCst),
                WAKE_DATA as i64,
            );
        } else {
            report.fail("the thread waiting in io_uring_enter did not wake up for the NOP");
            return;
        }
    }
    // A byte into the pipe, read back through the ring; an epoll_ctl MOD of the pipe
    // (it is in the interest list, so 0); and a NOP.
    // SAFETY: one byte, readable.
    let sent = unsafe { libc::write(r.pipe[1], [PIPE_BYTE].as_ptr().cast(), 1) };
    report.check_eq("bytes written to the pipe", sent, 1);
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: 43,
    };
    let mut byte = [0u8; 1];
    ring.push(
        IORING_OP_EPOLL_CTL,
        0,
        r.epoll,
        &mut event as *mut libc::epoll_event as u64,
        libc::EPOLL_CTL_MOD as u32,
        r.pipe[0] as u64,
        20,
    );
    ring.push(
        IORING_OP_READ,
        0,
        r.pipe[0],
        byte.as_mut_ptr() as u64,
        1,
        u64::MAX,
        21,
    );
    ring.push(IORING_OP_NOP, 0, -1, 0, 0, 0, 22);
    match ring.enter(3, 3) {
        Ok(n) => report.check_eq("SQEs submitted", n, 3),
        Err(e) => report.fail(format!("io_uring_enter: {e}")),
    }
    r.requests += 3;
    // The ring's fd is readable now (completions to reap), and epoll says so.
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
    // SAFETY: the kernel writes at most 2 events into `events`.
    let n = unsafe { libc::epoll_wait(r.ring_watch, events.as_mut_ptr(), 2, 5000) };
    report.check_eq(
        "epoll's events on the ring's fd (completions to reap)",
        (n, events[0].u64),
        (1, RING_WATCH_DATA),
    );
    let mut got = vec![ring.reap(), ring.reap(), ring.reap()];
    got.sort();
    report.check_eq(
        "the completions (epoll_ctl MOD, read, NOP)",
        got,
        vec![Some((20, 0)), Some((21, 1)), Some((22, 0))],
    );
    report.check_eq("the byte read through the ring", byte[0], PIPE_BYTE);
    check_counters(&r, report, "after");
}

// ---------------------------------------------------------------------------------
// Rings the dump refuses
// ---------------------------------------------------------------------------------

fn setup_small(kind: &str) -> std::io::Result<Ring> {
    let flags = match kind {
        "single-issuer" => IORING_SETUP_SINGLE_ISSUER,
        _ => 0,
    };
    let ring = setup(8, flags, 0)?;
    for i in 0..5 {
        ring.push(IORING_OP_NOP, 0, -1, 0, 0, 0, i);
    }
    run_batch(&ring, 5, "NOPs")?;
    match kind {
        "eventfd" => {
            // SAFETY: plain syscall.
            let efd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
            // SAFETY: the kernel reads one int.
            cvt(unsafe {
                libc::syscall(
                    libc::SYS_io_uring_register,
                    ring.fd,
                    IORING_REGISTER_EVENTFD,
                    &efd,
                    1,
                )
            } as c_int)?;
        }
        "pending" => {
            // A timeout of an hour (struct __kernel_timespec), which stays in flight.
            let ts: &'static [i64; 2] = Box::leak(Box::new([3600, 0]));
            ring.push(IORING_OP_TIMEOUT, 0, -1, ts.as_ptr() as u64, 1, 0, 100);
            ring.enter(1, 0)?;
        }
        "unreaped" => {
            ring.push(IORING_OP_NOP, 0, -1, 0, 0, 0, 100);
            ring.enter(1, 1)?;
        }
        // Queued, not submitted: the SQ tail is one past the head.
        "queued" => ring.push(IORING_OP_NOP, 0, -1, 0, 0, 0, 100),
        _ => {}
    }
    Ok(ring)
}

fn check_small(ring: &Ring, kind: &str, report: &mut Report) {
    if kind == "unreaped" {
        report.check_eq("the completion left unreaped", ring.reap(), Some((100, 0)));
    }
    // A queued NOP (100) goes in with this one.
    let submit = if kind == "queued" { 2 } else { 1 };
    ring.push(IORING_OP_NOP, 0, -1, 0, 0, 0, 200);
    match ring.enter(submit, submit) {
        Ok(n) => report.check_eq("SQEs submitted", n, submit as c_int),
        Err(e) => report.fail(format!("io_uring_enter: {e}")),
    }
    let mut got: Vec<_> = (0..submit).map(|_| ring.reap()).collect();
    got.sort();
    let expected = if kind == "queued" {
        vec![Some((100, 0)), Some((200, 0))]
    } else {
        vec![Some((200, 0))]
    };
    report.check_eq("the completions", got, expected);
    report.check_eq("completions left", ring.reap(), None);
}

enum Held {
    Registered(Registered),
    AtRest(AtRest),
    Small(Ring, String),
}

impl Held {
    fn fd(&self) -> c_int {
        match self {
            Held::Registered(r) => r.ring.fd,
            Held::AtRest(r) => r.ring.fd,
            Held::Small(r, _) => r.fd,
        }
    }
}

fn main() {
    let mut program = Program::start(
        "tp-uring",
        &[
            ("--ring KIND", "registered (default), rest, nosqarray, cqsize, wide, wide-nosqarray, unreaped, queued, single-issuer, eventfd, pending"),
            ("--count N", "requests through a ring at rest before the dump (default 100000)"),
        ],
    );
    let kind: String = program.opt_or("--ring", "registered".to_owned());
    let count: u32 = program.opt_or("--count", 100_000);
    let held = match kind.as_str() {
        "registered" => setup_registered().map(Held::Registered),
        "rest" => setup_at_rest(256, 0, 0, count, true).map(Held::AtRest),
        "nosqarray" => {
            setup_at_rest(256, IORING_SETUP_NO_SQARRAY, 0, count, false).map(Held::AtRest)
        }
        "cqsize" => setup_at_rest(32, IORING_SETUP_CQSIZE, 256, count, false).map(Held::AtRest),
        "wide" => setup_at_rest(
            16,
            IORING_SETUP_SQE128 | IORING_SETUP_CQE32,
            0,
            count,
            false,
        )
        .map(Held::AtRest),
        "wide-nosqarray" => {
            let flags = IORING_SETUP_SQE128 | IORING_SETUP_CQE32 | IORING_SETUP_NO_SQARRAY;
            setup_at_rest(16, flags, 0, count, false).map(Held::AtRest)
        }
        "single-issuer" | "eventfd" | "pending" | "unreaped" | "queued" => {
            setup_small(&kind).map(|r| Held::Small(r, kind.clone()))
        }
        other => program.setup_failed(format!("unknown --ring {other}")),
    };
    let held = program.must(held, "set up an io_uring");
    let mut memory = program.must(Mapping::anonymous(MEMORY_BYTES, false), "map memory");
    let seed = random_seed();
    fill_pattern(memory.words_mut(), seed, 0);
    program.must(
        write_atomic(
            &program.companion(".fd"),
            format!("{}\n", held.fd()).as_bytes(),
        ),
        "write the fd number",
    );
    program.ready();
    program.work_until_check(Duration::from_millis(50), || {});

    let mut report = Report::new();
    if let Some(m) = check_pattern(memory.words(), seed, 0) {
        report.fail(format!("memory: {m}"));
    }
    match held {
        Held::Registered(r) => check_registered(&r, &mut report),
        Held::AtRest(r) => check_at_rest(r, &mut report),
        Held::Small(r, kind) => check_small(&r, &kind, &mut report),
    }
    program.finish(&report);
}
