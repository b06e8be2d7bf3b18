//! tp-mem2: memory a restore rebuilds with system calls rather than by mapping it again:
//! an AIO context (io_setup) and a guard region (MADV_GUARD_INSTALL); and pages with
//! data the process cannot read (PROT_NONE).
//!
//! State:
//! - an AIO context of 64 requests: 1-byte writes to /dev/null submitted and some of
//!   their events reaped, so that the ring's head and tail are apart and not at zero;
//!   its address goes to `PATH.aio` (hex);
//! - an anonymous mapping of 8 pages with a pattern, whose pages 3 and 4 are a guard
//!   region; its address goes to `PATH.guard` (hex);
//! - an anonymous mapping of 4 pages with a pattern, whose pages 1 and 2 are made
//!   PROT_NONE once written (memory the process itself cannot read, which
//!   process_vm_readv cannot read either).
//!
//! Check: the ring is at the same address with the same nr, head and tail; io_submit on
//! the context works, moves the tail by one, and io_getevents reaps the old events and
//! the new one; the pattern around the guard region is intact; touching either guarded
//! page faults (a forked child writing there dies of SIGSEGV), and process_vm_readv of
//! it fails with EFAULT, while the pages beside it read; the PROT_NONE pages are still
//! unreadable (process_vm_readv: EFAULT) and, made readable again, hold their pattern,
//! as do the pages beside them.

use std::os::raw::c_long;
use std::time::Duration;

use criu_testprogs::{check_pattern, fill_pattern, random_seed, write_atomic, Program, Report};

const PAGE: usize = 4096;
const GUARD_MAP_PAGES: usize = 8;
const GUARDED: [usize; 2] = [3, 4];
const MADV_GUARD_INSTALL: i32 = 102;
const IOCB_CMD_PWRITE: u16 = 1;

/// `struct iocb` of linux/aio_abi.h.
#[repr(C)]
#[derive(Default)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: u32,
    opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}

/// `struct io_event`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

/// The ring header words: nr, head, tail.
fn ring_state(ctx: u64) -> (u32, u32, u32) {
    let words = ctx as *const u32;
    // SAFETY: `ctx` is our AIO ring, mapped readable for the context's life; the kernel
    // writes the tail concurrently, hence volatile reads of whole words.
    unsafe {
        (
            words.add(1).read_volatile(),
            words.add(2).read_volatile(),
            words.add(3).read_volatile(),
        )
    }
}

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

struct Aio {
    ctx: u64,
    iocb: Box<Iocb>,
    _buf: Box<[u8; 1]>,
}

impl Aio {
    fn submit(&self) -> std::io::Result<()> {
        let list = [&*self.iocb as *const Iocb];
        // SAFETY: io_submit reads one pointer to a valid iocb, whose buffer (`_buf`)
        // lives as long as `self`.
        let n = unsafe { libc::syscall(libc::SYS_io_submit, self.ctx, 1 as c_long, list.as_ptr()) };
        if n != 1 {
            return Err(std::io::Error::other(format!(
                "io_submit gave {n}: {}",
                last_error()
            )));
        }
        Ok(())
    }

    /// Reaps up to `max` events without waiting.
    fn reap(&self, max: usize) -> std::io::Result<usize> {
        let mut events = vec![IoEvent::default(); max];
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: the kernel writes at most `max` events into `events`.
        let n = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                self.ctx,
                0 as c_long,
                max as c_long,
                events.as_mut_ptr(),
                &zero as *const libc::timespec,
            )
        };
        if n < 0 {
            return Err(last_error());
        }
        if let Some(e) = events[..n as usize].iter().find(|e| e.res != 1) {
            return Err(std::io::Error::other(format!(
                "an event with result {}",
                e.res
            )));
        }
        Ok(n as usize)
    }
}

fn set_up_aio() -> std::io::Result<Aio> {
    let mut ctx: u64 = 0;
    // SAFETY: io_setup writes the context id into `ctx`.
    if unsafe { libc::syscall(libc::SYS_io_setup, 64 as c_long, &mut ctx as *mut u64) } != 0 {
        return Err(last_error());
    }
    // The fd stays open for the program's life: the restored requests name it.
    // SAFETY: a constant NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY) };
    if fd < 0 {
        return Err(last_error());
    }
    let buf = Box::new([b'x']);
    let iocb = Box::new(Iocb {
        opcode: IOCB_CMD_PWRITE,
        fildes: fd as u32,
        buf: buf.as_ptr() as u64,
        nbytes: 1,
        ..Default::default()
    });
    let aio = Aio {
        ctx,
        iocb,
        _buf: buf,
    };
    // 10 requests, 6 events reaped: head 6, tail 10.
    for _ in 0..10 {
        aio.submit()?;
    }
    let mut reaped = 0;
    while reaped < 6 {
        reaped += aio.reap(6 - reaped)?;
    }
    Ok(aio)
}

/// A new private anonymous mapping of `pages` pages filled with the pattern of `seed`.
fn map_with_pattern(pages: usize, seed: u64) -> std::io::Result<usize> {
    let len = pages * PAGE;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    // SAFETY: a new anonymous mapping aliases nothing.
    let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
    if addr == libc::MAP_FAILED {
        return Err(last_error());
    }
    let addr = addr as usize;
    fill_pattern(words_mut(addr, len), seed, 0);
    Ok(addr)
}

fn set_up_guard(seed: u64) -> std::io::Result<usize> {
    let addr = map_with_pattern(GUARD_MAP_PAGES, seed)?;
    let guard = addr + GUARDED[0] * PAGE;
    // SAFETY: the guarded pages are ours and nothing refers to them.
    if unsafe { libc::madvise(guard as *mut _, GUARDED.len() * PAGE, MADV_GUARD_INSTALL) } != 0 {
        return Err(last_error());
    }
    Ok(addr)
}

const HIDDEN_MAP_PAGES: usize = 4;
const HIDDEN: std::ops::Range<usize> = 1..3;

fn set_up_hidden(seed: u64) -> std::io::Result<usize> {
    let addr = map_with_pattern(HIDDEN_MAP_PAGES, seed ^ 0x5a5a)?;
    protect_hidden(addr, libc::PROT_NONE)?;
    Ok(addr)
}

fn protect_hidden(addr: usize, prot: i32) -> std::io::Result<()> {
    let at = addr + HIDDEN.start * PAGE;
    // SAFETY: the pages are ours; while they are PROT_NONE nothing of ours reads them.
    if unsafe { libc::mprotect(at as *mut _, HIDDEN.len() * PAGE, prot) } != 0 {
        return Err(last_error());
    }
    Ok(())
}

fn check_hidden(report: &mut Report, addr: usize, seed: u64) {
    for page in HIDDEN {
        let read = self_read(addr + page * PAGE);
        report.check(read == Err(libc::EFAULT), || {
            format!("process_vm_readv of PROT_NONE page {page}: {read:?}, not EFAULT")
        });
    }
    if let Err(e) = protect_hidden(addr, libc::PROT_READ) {
        report.fail(format!("making the PROT_NONE pages readable: {e}"));
        return;
    }
    let len = HIDDEN_MAP_PAGES * PAGE;
    if let Some(m) = check_pattern(words(addr, len), seed ^ 0x5a5a, 0) {
        report.fail(format!("the mapping with PROT_NONE pages: {m:?}"));
    }
    if let Err(e) = protect_hidden(addr, libc::PROT_NONE) {
        report.fail(format!("making the pages PROT_NONE again: {e}"));
    }
}

fn words_mut<'a>(addr: usize, len: usize) -> &'a mut [u64] {
    // SAFETY: callers pass a private read-write mapping of ours of at least `len` bytes.
    unsafe { std::slice::from_raw_parts_mut(addr as *mut u64, len / 8) }
}

fn words<'a>(addr: usize, len: usize) -> &'a [u64] {
    // SAFETY: callers pass readable memory of ours of at least `len` bytes.
    unsafe { std::slice::from_raw_parts(addr as *const u64, len / 8) }
}

/// Whether writing the byte at `addr` kills a forked child with SIGSEGV.
fn write_faults(addr: usize) -> std::io::Result<bool> {
    // SAFETY: the child only writes one byte and exits; it runs no destructors.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last_error());
    }
    if pid == 0 {
        // SAFETY: `addr` is inside our mapping; if it is a guard page the write faults,
        // which is what is being tested.
        unsafe {
            (addr as *mut u8).write_volatile(1);
            libc::_exit(0)
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(last_error());
    }
    Ok(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV)
}

/// process_vm_readv of one page of our own memory at `addr`: Ok, or the errno.
fn self_read(addr: usize) -> Result<(), i32> {
    let mut buf = vec![0u8; PAGE];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: PAGE,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut _,
        iov_len: PAGE,
    };
    // SAFETY: reads into `buf`, which has room for one page.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n == PAGE as isize {
        Ok(())
    } else {
        Err(last_error().raw_os_error().unwrap_or(0))
    }
}

fn check_guard(report: &mut Report, addr: usize, seed: u64) {
    for page in 0..GUARD_MAP_PAGES {
        let at = addr + page * PAGE;
        if GUARDED.contains(&page) {
            match write_faults(at) {
                Ok(faults) => report.check(faults, || format!("guard page {page} did not fault")),
                Err(e) => report.fail(format!("fork for guard page {page}: {e}")),
            }
            let read = self_read(at);
            report.check(read == Err(libc::EFAULT), || {
                format!("process_vm_readv of guard page {page}: {read:?}, not EFAULT")
            });
        } else {
            let base = (page * PAGE / 8) as u64;
            if let Some(m) = check_pattern(words(at, PAGE), seed, base) {
                report.fail(format!("page {page} beside the guard: {m:?}"));
            }
            report.check(self_read(at).is_ok(), || {
                format!("page {page} does not read")
            });
        }
    }
}

fn check_aio(report: &mut Report, aio: &Aio, before: (u32, u32, u32)) {
    report.check_eq("ring nr, head, tail", ring_state(aio.ctx), before);
    if let Err(e) = aio.submit() {
        return report.fail(format!("io_submit after restore: {e}"));
    }
    let (nr, head, tail) = before;
    report.check_eq(
        "ring after io_submit",
        ring_state(aio.ctx),
        (nr, head, (tail + 1) % nr),
    );
    // The 4 events left unreaped and the new one.
    let mut reaped = 0;
    for _ in 0..100 {
        match aio.reap(16) {
            Ok(n) => reaped += n,
            Err(e) => return report.fail(format!("io_getevents after restore: {e}")),
        }
        if reaped >= 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    report.check_eq("events reaped after restore", reaped, 5);
}

fn main() {
    let mut program = Program::start("tp-mem2", &[]);
    let seed = random_seed();
    let aio = program.must(set_up_aio(), "set up the AIO context");
    let guard = program.must(set_up_guard(seed), "set up the guard region");
    let hidden = program.must(set_up_hidden(seed), "set up the PROT_NONE pages");
    let before = ring_state(aio.ctx);
    let mut baseline = Report::new();
    check_guard(&mut baseline, guard, seed);
    check_hidden(&mut baseline, hidden, seed);
    if !baseline.passed() {
        program.setup_failed(baseline.summary());
    }
    program.must(
        write_atomic(
            &program.companion(".aio"),
            format!("{:x}\n", aio.ctx).as_bytes(),
        ),
        "write PATH.aio",
    );
    program.must(
        write_atomic(
            &program.companion(".guard"),
            format!("{guard:x}\n").as_bytes(),
        ),
        "write PATH.guard",
    );
    program.ready();
    program.work_until_check(Duration::from_millis(10), || {});
    let mut report = Report::new();
    check_aio(&mut report, &aio, before);
    check_guard(&mut report, guard, seed);
    check_hidden(&mut report, hidden, seed);
    program.finish(&report);
}
