//! tp-sharing: state that lives between processes or in a mapping's flags, which a
//! restore must rebuild exactly, not just "with the same bytes". `--mode` picks one:
//!
//! - `shmem`: a 64-page MAP_SHARED|MAP_ANONYMOUS object shared with a forked child. The
//!   parent unmaps its first and last page, moves pages 10..20 elsewhere (mremap) and maps
//!   pages 58..62 a second time through `/proc/self/map_files`; pages 0..56 hold a
//!   pattern. The check: every view shows the pattern at its offset, and a nonce written
//!   by one process through one view is seen by the other process and through the other
//!   view (one object, not copies). Also a 64 GiB MAP_NORESERVE shared object with one
//!   page used (more than the machine's memory, if it were reserved).
//! - `vmflags`: private mappings that are locked (mlock), MAP_NORESERVE, MADV_SEQUENTIAL,
//!   MADV_RANDOM, MADV_DONTFORK, MADV_WIPEONFORK and, where the kernel has it, MAP_DROPPABLE, each with
//!   a pattern; and a 1 TiB reservation without access whose first pages were opened
//!   up and hold a pattern. The check: their smaps VmFlags are the ones recorded at
//!   ready, the patterns are intact, and the rest of the reservation is still one
//!   mapping without access.
//! - `fdtable`: the parent P shares its fd table (clone CLONE_FILES) with child A, and A
//!   with its child G; child B has its own. The check: P opens a file at fd 200; A and G
//!   see it (same inode), B does not.
//! - `siblings`: A shares its fd table with its sibling S (S cloned by A with
//!   CLONE_FILES|CLONE_PARENT) but not with their parent P. The check: both children
//!   still answer on the board (a dump must refuse this tree and leave it running).
//! - `files`: a unix datagram socket bound to a path and connected to itself, with a
//!   datagram queued; an unnamed O_TMPFILE file with content; fds open on
//!   `/proc/CHILD/stat` of a child and on `/proc/SELF/maps`. The check: the queued
//!   datagram is there and the socket still talks to itself, the tmpfile has its content
//!   and no name, the /proc fds name the same tasks.
//! - `deleted`: a file created the way glibc's `shm_open` does (`O_NOFOLLOW`), mapped
//!   MAP_SHARED by the parent and a forked child and MAP_PRIVATE by the parent (which
//!   writes a marker into its private copy), then unlinked while open and mapped: a
//!   POSIX semaphore or Python's multiprocessing state in `/dev/shm`. The check: the
//!   pattern is in every view, the marker only in the private one, the file has no name
//!   and no links, and a nonce written through the parent's shared view is read through
//!   the fd and seen by the child, whose answer the parent sees (one file, not copies).
//!
//! - `cow`: 32 private anonymous pages with a pattern and a private mapping of an 8-page
//!   file (`PATH.cowfile`) whose pages 0..4 are overwritten, all before a fork; the child
//!   then rewrites anonymous pages 16..32. The check: both see their contents, the pages
//!   neither wrote after the fork (anonymous 0..16, file 0..4) are one physical page in
//!   both (same PFN in /proc/PID/pagemap, which needs root), the others are not.
//!
//! - `shmem-private`: a 4-page shared anonymous object with a pattern, mapped a second
//!   time privately through `/proc/self/map_files` from its page 1 (zdtm shmemfd-priv);
//!   the private view writes its first page. The check: that page holds the private
//!   write (the object does not), the other private pages show the object, and a word
//!   written now through the shared view shows in the private one (still the object's
//!   page, not a copy).
//!
//! - `deleted-watch`: `PATH.watched` open read-write at offset 3 with 5 known bytes,
//!   watched by an inotify instance (IN_MODIFY), then unlinked (zdtm inotify00): the
//!   watch and the fd share a deleted inode. The check: the file has no links and its
//!   bytes and offset; a write through the fd gives the watch's IN_MODIFY event.
//!
//! - `epoll`: an epoll instance watching a pipe's read end, shared with a forked child
//!   that then closed its copy of that end (as redis's BGSAVE child closes the listening
//!   sockets its parent's epoll watches): the instance still watches it, through the
//!   parent's descriptor. The check: a byte written into the pipe makes the instance
//!   report the read end's data word, to the parent and to the child, which still does
//!   not hold the read end.
//!
//! Children talk to the parent through a shared board page: the parent posts a nonce,
//! each child checks its part and posts its verdict. Children die with the parent
//! (PR_SET_PDEATHSIG).

use std::os::raw::c_int;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use criu_testprogs::{
    check_pattern, cvt, fill_pattern, random_seed, wait_until, Mapping, Program, Report,
};

const PAGE: usize = 4096;
const WORDS_PER_PAGE: usize = PAGE / 8;
const WAIT: Duration = Duration::from_secs(20);

/// A child's verdict on the board.
const PENDING: u64 = 0;
const PASSED: u64 = 1;
/// Failed: the value is FAILED + a code saying what (see each child).
const FAILED: u64 = 100;

/// The shared page through which the parent asks and the children answer.
#[repr(C)]
struct Board {
    /// The nonce of the current check (0: none yet).
    nonce: AtomicU64,
    /// A value for the children (an inode to compare with...).
    value: AtomicU64,
    /// Per child: pid, and its verdict for `nonce` (`echo` holds the nonce it answered).
    pids: [AtomicI32; 4],
    verdicts: [AtomicU64; 4],
    echo: [AtomicU64; 4],
}

const _: () = assert!(std::mem::size_of::<Board>() <= PAGE);

fn board(map: &Mapping) -> &Board {
    // SAFETY: the mapping is a zeroed, page-aligned shared page that outlives the
    // reference; all-zero is a valid Board and it is only accessed through atomics.
    unsafe { &*map.addr().cast::<Board>() }
}

/// The words of `pages` pages at `addr`.
fn words<'a>(addr: *mut u8, pages: usize) -> &'a mut [u64] {
    // SAFETY: callers pass a readable and writable mapping of at least `pages` pages
    // that stays mapped while the slice is used; any bit pattern is a valid u64.
    unsafe { std::slice::from_raw_parts_mut(addr.cast::<u64>(), pages * WORDS_PER_PAGE) }
}

fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// clone(2) without a new stack (the child runs on a copy of ours, as after fork) with
/// extra `flags`; returns the child's pid in the parent, 0 in the child.
fn clone_with(flags: c_int) -> std::io::Result<libc::pid_t> {
    // SAFETY: with a null stack the child continues on its copy of our stack, exactly as
    // fork(2); no pointer arguments are passed.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(pid as libc::pid_t)
}

/// A child's loop: answers each new nonce with `check(nonce)` (PASSED or FAILED+code).
fn serve(board: &Board, slot: usize, mut check: impl FnMut(u64) -> u64) -> ! {
    board.pids[slot].store(std::process::id() as i32, Ordering::SeqCst);
    loop {
        let nonce = board.nonce.load(Ordering::SeqCst);
        if nonce != 0 && board.echo[slot].load(Ordering::SeqCst) != nonce {
            let verdict = check(nonce);
            board.verdicts[slot].store(verdict, Ordering::SeqCst);
            board.echo[slot].store(nonce, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Posts a new nonce and collects the verdicts of the children in `slots`.
fn ask(board: &Board, slots: &[(usize, &str)], report: &mut Report) -> u64 {
    let nonce = random_seed() | 1;
    for &(slot, _) in slots {
        board.verdicts[slot].store(PENDING, Ordering::SeqCst);
    }
    board.nonce.store(nonce, Ordering::SeqCst);
    for &(slot, name) in slots {
        let answered = wait_until(WAIT, || board.echo[slot].load(Ordering::SeqCst) == nonce);
        let verdict = board.verdicts[slot].load(Ordering::SeqCst);
        if !answered {
            report.fail(format!("{name} did not answer"));
        } else if verdict != PASSED {
            report.fail(format!(
                "{name} failed its check (code {})",
                verdict - FAILED
            ));
        }
    }
    nonce
}

/// Waits until the children in `slots` have posted their pids.
fn wait_children(program: &Program, board: &Board, slots: &[usize]) {
    for &slot in slots {
        if !wait_until(WAIT, || board.pids[slot].load(Ordering::SeqCst) != 0) {
            program.setup_failed(format!("child {slot} did not start"));
        }
    }
}

fn main() {
    let mut program = Program::start(
        "tp-sharing",
        &[(
            "--mode M",
            "shmem, vmflags, fdtable, siblings, files, cow, deleted or epoll (see the doc \
             comment)",
        )],
    );
    let mode: String = program.opt_or("--mode", String::new());
    let board_map = program.must(Mapping::anonymous(PAGE, true), "mmap the board");
    let board = board(&board_map);
    let report = match mode.as_str() {
        "shmem" => shmem(&mut program, board),
        "vmflags" => vmflags(&mut program),
        "fdtable" => fdtable(&mut program, board),
        "siblings" => siblings(&mut program, board),
        "files" => files(&mut program, board),
        "cow" => cow(&mut program, board),
        "shmem-private" => shmem_private(&mut program),
        "deleted-watch" => deleted_watch(&mut program),
        "deleted" => deleted(&mut program, board),
        "epoll" => epoll(&mut program, board),
        other => program.setup_failed(format!("unknown --mode `{other}`")),
    };
    program.finish(&report);
}

// --- shmem -----------------------------------------------------------------------------

const OBJ_PAGES: usize = 64;
/// Pages 0..PATTERN_PAGES hold the pattern; the rest are mailboxes.
const PATTERN_PAGES: usize = 56;
/// The second view: object pages 58..62.
const VIEW_FIRST: usize = 58;
const VIEW_PAGES: usize = 4;
/// Mailboxes: the parent writes at page 60, the child at page 58 (both in the view).
const TO_CHILD: usize = 60;
const TO_PARENT: usize = 58;
/// The sparse MAP_NORESERVE object: 64 GiB, one page used at 40 GiB.
const HUGE_BYTES: usize = 64 << 30;
const HUGE_USED: usize = 40 << 30;
/// Pages 10..20 of the parent's view move elsewhere.
const MOVED_FIRST: usize = 10;
const MOVED_PAGES: usize = 10;

fn shmem(program: &mut Program, board: &Board) -> Report {
    let seed = random_seed();
    let obj = program.must(
        Mapping::anonymous(OBJ_PAGES * PAGE, true),
        "mmap the shared object",
    );
    let base = obj.addr().cast::<u8>();
    fill_pattern(&mut words(base, PATTERN_PAGES)[..], seed, 0);
    // SAFETY: fork(2); the child only runs `serve` and exits with the process.
    match unsafe { libc::fork() } {
        -1 => program.setup_failed("fork failed"),
        0 => {
            die_with_parent();
            // The child keeps the whole object mapped where it was.
            serve(board, 0, |nonce| {
                let all = words(base, OBJ_PAGES);
                if check_pattern(&all[..PATTERN_PAGES * WORDS_PER_PAGE], seed, 0).is_some() {
                    return FAILED + 1;
                }
                if all[TO_CHILD * WORDS_PER_PAGE] != nonce {
                    return FAILED + 2;
                }
                all[TO_PARENT * WORDS_PER_PAGE] = !nonce;
                PASSED
            })
        }
        _ => {}
    }
    wait_children(program, board, &[0]);
    // The parent's views: without the first and last page, pages 10..20 moved, and a
    // second mapping of pages 58..62 through map_files.
    let at = |page: usize| base.wrapping_add(page * PAGE);
    // SAFETY: unmapping pages of our own mapping `obj`, which is never used as a whole
    // again (it is leaked below, not dropped).
    unsafe {
        libc::munmap(at(0).cast(), PAGE);
        libc::munmap(at(OBJ_PAGES - 1).cast(), PAGE);
    }
    std::mem::forget(obj);
    let target = program.must(
        Mapping::anonymous(MOVED_PAGES * PAGE, false),
        "reserve room for the moved pages",
    );
    let moved = target.addr().cast::<u8>();
    std::mem::forget(target);
    // SAFETY: moves pages of our own shared mapping onto the room reserved above.
    let ret = unsafe {
        libc::mremap(
            at(MOVED_FIRST).cast(),
            MOVED_PAGES * PAGE,
            MOVED_PAGES * PAGE,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            moved.cast::<libc::c_void>(),
        )
    };
    if ret == libc::MAP_FAILED {
        program.setup_failed(format!("mremap: {}", std::io::Error::last_os_error()));
    }
    let path = format!(
        "/proc/self/map_files/{:x}-{:x}",
        at(MOVED_FIRST + MOVED_PAGES) as usize,
        at(OBJ_PAGES - 1) as usize
    );
    let file = program.must(
        std::fs::File::options().read(true).write(true).open(&path),
        "open the object through map_files",
    );
    use std::os::fd::AsRawFd;
    // SAFETY: a new shared mapping of the object at an address the kernel picks.
    let view = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            VIEW_PAGES * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            (VIEW_FIRST * PAGE) as libc::off_t,
        )
    };
    if view == libc::MAP_FAILED {
        program.setup_failed(format!(
            "mmap the view: {}",
            std::io::Error::last_os_error()
        ));
    }
    drop(file);
    let view = view.cast::<u8>();
    // A huge sparse one, MAP_NORESERVE: larger than the machine's memory, one page used.
    // SAFETY: a fresh shared mapping at an address the kernel picks, never unmapped.
    let huge = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            HUGE_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if huge == libc::MAP_FAILED {
        program.setup_failed(format!("mmap 64 GiB: {}", std::io::Error::last_os_error()));
    }
    let huge_page = huge.cast::<u8>().wrapping_add(HUGE_USED);
    fill_pattern(words(huge_page, 1), seed ^ 0x4B6E, 0);
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});

    let mut report = Report::new();
    let w = |addr: *mut u8, pages: usize| words(addr, pages);
    // The pattern, view by view, at each one's offset in the object.
    for (what, addr, first, pages) in [
        ("pages 1..10", at(1), 1, MOVED_FIRST - 1),
        ("moved pages 10..20", moved, MOVED_FIRST, MOVED_PAGES),
        (
            "pages 20..56",
            at(MOVED_FIRST + MOVED_PAGES),
            MOVED_FIRST + MOVED_PAGES,
            PATTERN_PAGES - MOVED_FIRST - MOVED_PAGES,
        ),
    ] {
        let base_index = (first * WORDS_PER_PAGE) as u64;
        if let Some(m) = check_pattern(w(addr, pages), seed, base_index) {
            report.fail(format!("shared object {what}: {m}"));
        }
    }
    if let Some(m) = check_pattern(words(huge_page, 1), seed ^ 0x4B6E, 0) {
        report.fail(format!(
            "the used page of the 64 GiB MAP_NORESERVE object: {m}"
        ));
    }
    // One object: a write through the first view shows in the second one and in the
    // child, and the child's answer shows in both views.
    let nonce = random_seed();
    w(at(TO_CHILD), 1)[0] = nonce;
    let through_view = w(view, VIEW_PAGES)[(TO_CHILD - VIEW_FIRST) * WORDS_PER_PAGE];
    report.check_eq(
        "the second view of the object (page 60)",
        through_view,
        nonce,
    );
    // The child compares page 60 with the board's nonce: post the same value.
    board.verdicts[0].store(PENDING, Ordering::SeqCst);
    board.nonce.store(nonce, Ordering::SeqCst);
    let answered = wait_until(WAIT, || board.echo[0].load(Ordering::SeqCst) == nonce);
    let verdict = board.verdicts[0].load(Ordering::SeqCst);
    if !answered {
        report.fail("the child did not answer");
    } else if verdict != PASSED {
        report.fail(format!(
            "the child's check failed (code {}: 1 pattern, 2 the parent's write not seen)",
            verdict - FAILED
        ));
    } else {
        report.check_eq(
            "the child's write, through the first view (page 58)",
            w(at(TO_PARENT), 1)[0],
            !nonce,
        );
        report.check_eq(
            "the child's write, through the second view (page 58)",
            w(view, 1)[0],
            !nonce,
        );
    }
    report
}

// --- vmflags ---------------------------------------------------------------------------

/// `MAP_DROPPABLE` (Linux 6.11).
const MAP_DROPPABLE: c_int = 0x08;
const FLAG_PAGES: usize = 4;
/// The reservation's size: 1 TiB, more than any machine these tests run on has in memory
/// and swap, so charged to the commit limit it would not fit.
const RESERVATION: usize = 1 << 40;
/// The VmFlags that tell these mappings apart.
const WATCHED: &[&str] = &["lo", "nr", "sr", "rr", "dc", "dp"];

/// The watched VmFlags of the mapping that starts at `addr`.
fn vmflags_of(addr: usize) -> Option<Vec<String>> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, _)) = first.split_once('-') {
            inside = usize::from_str_radix(start, 16) == Ok(addr);
        } else if let Some(flags) = line.strip_prefix("VmFlags:").filter(|_| inside) {
            let mut found: Vec<String> = flags
                .split_whitespace()
                .filter(|f| WATCHED.contains(f))
                .map(str::to_owned)
                .collect();
            found.sort();
            return Some(found);
        }
    }
    None
}

fn vmflags(program: &mut Program) -> Report {
    let seed = random_seed();
    let len = FLAG_PAGES * PAGE;
    let map = |flags: c_int| {
        // SAFETY: a fresh private mapping at an address the kernel picks.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        (addr != libc::MAP_FAILED).then_some(addr.cast::<u8>())
    };
    let advise = |addr: *mut u8, advice: c_int| {
        // SAFETY: madvise on a mapping of ours; no memory is passed.
        cvt(unsafe { libc::madvise(addr.cast(), len, advice) })
    };
    let mut regions: Vec<(&str, *mut u8)> = Vec::new();
    let private = libc::MAP_PRIVATE;
    let locked = map(private).unwrap_or_else(|| program.setup_failed("mmap"));
    // SAFETY: mlock on a mapping of ours.
    program.must(cvt(unsafe { libc::mlock(locked.cast(), len) }), "mlock");
    regions.push(("locked", locked));
    let noreserve =
        map(private | libc::MAP_NORESERVE).unwrap_or_else(|| program.setup_failed("mmap"));
    regions.push(("noreserve", noreserve));
    for (name, advice) in [
        ("sequential", libc::MADV_SEQUENTIAL),
        ("random", libc::MADV_RANDOM),
        ("dontfork", libc::MADV_DONTFORK),
        ("wipeonfork", libc::MADV_WIPEONFORK),
    ] {
        let addr = map(private).unwrap_or_else(|| program.setup_failed("mmap"));
        program.must(advise(addr, advice), name);
        regions.push((name, addr));
    }
    // Older kernels have no droppable mappings: then there is nothing to check.
    if let Some(addr) = map(MAP_DROPPABLE) {
        regions.push(("droppable", addr));
    }
    // An address-space reservation without access, larger than the machine's memory
    // and not MAP_NORESERVE, whose first pages are then opened up and used: what a
    // database reserves for a buffer pool it may grow into (MariaDB: 8 TiB). Only its
    // writable part is charged to the commit limit.
    // SAFETY: a fresh private mapping at an address the kernel picks.
    let reserved = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            RESERVATION,
            libc::PROT_NONE,
            private | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if reserved == libc::MAP_FAILED {
        program.setup_failed("mmap (the reservation)");
    }
    // SAFETY: mprotect on the first pages of the reservation just made.
    let opened = unsafe { libc::mprotect(reserved, len, libc::PROT_READ | libc::PROT_WRITE) };
    program.must(cvt(opened), "mprotect (the reservation's first pages)");
    regions.push(("reservation's used part", reserved.cast()));
    let unused = reserved as usize + len;
    let seeds: Vec<u64> = (0..regions.len() as u64)
        .map(|i| seed ^ (i + 1).wrapping_mul(0x9E37))
        .collect();
    let mut before = Vec::new();
    for ((name, addr), s) in regions.iter().zip(&seeds) {
        fill_pattern(words(*addr, FLAG_PAGES), *s, 0);
        let flags = vmflags_of(*addr as usize)
            .unwrap_or_else(|| program.setup_failed(format!("no smaps entry for {name}")));
        before.push(flags);
    }
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});

    let mut report = Report::new();
    for (((name, addr), s), was) in regions.iter().zip(&seeds).zip(&before) {
        // Droppable pages may be dropped under memory pressure: only flags count there.
        if *name != "droppable" {
            if let Some(m) = check_pattern(words(*addr, FLAG_PAGES), *s, 0) {
                report.fail(format!("{name} mapping: {m}"));
            }
        }
        let now = vmflags_of(*addr as usize);
        report.check_eq(
            &format!("VmFlags of the {name} mapping"),
            now.as_ref(),
            Some(was),
        );
    }
    report.check_eq(
        "the reservation's unused part (end, permissions)",
        mapping_at(unused),
        Some((reserved as usize + RESERVATION, "---p".to_owned())),
    );
    report
}

/// The end and permissions of the mapping that starts at `addr`, from /proc/self/maps.
fn mapping_at(addr: usize) -> Option<(usize, String)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?;
        (usize::from_str_radix(start, 16) == Ok(addr))
            .then(|| Some((usize::from_str_radix(end, 16).ok()?, perms.to_owned())))
            .flatten()
    })
}

// --- fd tables ---------------------------------------------------------------------------

const SHARED_FD: c_int = 200;
const SLOT_A: usize = 0;
const SLOT_G: usize = 1;
const SLOT_B: usize = 2;

/// The inode of fd `fd`, or None when it is not open.
fn inode_of(fd: c_int) -> Option<u64> {
    // SAFETY: fstat writes one struct stat into our local.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` outlives the call.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_ino)
}

/// A child's check: fd SHARED_FD is (or is not) the file the parent opened.
fn sees_parent_fd(board: &Board, expect_shared: bool) -> u64 {
    let ino = inode_of(SHARED_FD);
    let parents = board.value.load(Ordering::SeqCst);
    match (expect_shared, ino) {
        (true, Some(i)) if i == parents => PASSED,
        (true, _) => FAILED + 1,
        (false, None) => PASSED,
        (false, Some(_)) => FAILED + 2,
    }
}

fn fdtable(program: &mut Program, board: &Board) -> Report {
    if program.must(clone_with(libc::CLONE_FILES), "clone A") == 0 {
        die_with_parent();
        match clone_with(libc::CLONE_FILES) {
            Ok(0) => {
                die_with_parent();
                serve(board, SLOT_G, |_| sees_parent_fd(board, true))
            }
            Ok(_) => serve(board, SLOT_A, |_| sees_parent_fd(board, true)),
            Err(_) => std::process::exit(3),
        }
    }
    // SAFETY: fork(2); the child only runs `serve`.
    if unsafe { libc::fork() } == 0 {
        die_with_parent();
        serve(board, SLOT_B, |_| sees_parent_fd(board, false));
    }
    wait_children(program, board, &[SLOT_A, SLOT_G, SLOT_B]);
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});

    let mut report = Report::new();
    // A file opened now, after the restore, lands in the one table A and G share.
    let file = program.must(std::fs::File::open("/dev/null"), "open /dev/null");
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 onto a number this program does not otherwise use.
    program.must(
        cvt(unsafe { libc::dup2(file.as_raw_fd(), SHARED_FD) }),
        "dup2",
    );
    board
        .value
        .store(inode_of(SHARED_FD).unwrap_or(0), Ordering::SeqCst);
    ask(
        board,
        &[
            (SLOT_A, "child A (shares the table)"),
            (SLOT_G, "grandchild G (shares the table)"),
            (SLOT_B, "child B (a table of its own)"),
        ],
        &mut report,
    );
    report
}

fn siblings(program: &mut Program, board: &Board) -> Report {
    if program.must(clone_with(0), "fork A") == 0 {
        die_with_parent();
        // S: a sibling of A (same parent) sharing A's table.
        match clone_with(libc::CLONE_FILES | libc::CLONE_PARENT) {
            Ok(0) => serve(board, 1, |_| PASSED),
            Ok(_) => serve(board, 0, |_| PASSED),
            Err(_) => std::process::exit(3),
        }
    }
    wait_children(program, board, &[0, 1]);
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});
    let mut report = Report::new();
    ask(board, &[(0, "child A"), (1, "its sibling S")], &mut report);
    report
}

// --- files -------------------------------------------------------------------------------

const QUEUED: &[u8] = b"queued before the dump";
const TMP_BYTES: usize = 3 * PAGE + 123;

fn unix_addr(path: &std::path::Path) -> (libc::sockaddr_un, libc::socklen_t) {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + path.as_os_str().len() + 1;
    (addr, len as libc::socklen_t)
}

fn recv_now(fd: c_int) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    // SAFETY: recv into our buffer of buf.len() bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

fn link_of(fd: c_int) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn files(program: &mut Program, board: &Board) -> Report {
    use std::os::unix::ffi::OsStrExt;
    let seed = random_seed();
    // A datagram socket bound to a path and connected to that same path: itself.
    let sock_path = program.companion(".sock");
    let _ = std::fs::remove_file(&sock_path);
    // SAFETY: socket(2) with constant arguments.
    let sock = program.must(
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0) }),
        "socket",
    );
    let (addr, len) = unix_addr(&sock_path);
    let sa = (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>();
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes for both calls.
    program.must(cvt(unsafe { libc::bind(sock, sa, len) }), "bind");
    // SAFETY: as above.
    program.must(cvt(unsafe { libc::connect(sock, sa, len) }), "connect");
    // SAFETY: send from our constant buffer.
    let sent = unsafe { libc::send(sock, QUEUED.as_ptr().cast(), QUEUED.len(), 0) };
    if sent != QUEUED.len() as isize {
        program.setup_failed("send the queued datagram");
    }
    // An unnamed temporary file with content.
    let dir = std::ffi::CString::new(program.ready_dir().as_os_str().as_bytes())
        .unwrap_or_else(|_| program.setup_failed("directory name"));
    // SAFETY: open(2) of a NUL-terminated path.
    let tmp = program.must(
        cvt(unsafe { libc::open(dir.as_ptr(), libc::O_TMPFILE | libc::O_RDWR, 0o600) }),
        "open O_TMPFILE",
    );
    let mut content = vec![0u64; TMP_BYTES.div_ceil(8)];
    fill_pattern(&mut content, seed, 0);
    let bytes: Vec<u8> = content.iter().flat_map(|w| w.to_le_bytes()).collect();
    // SAFETY: pwrite from our buffer.
    let wrote = unsafe { libc::pwrite(tmp, bytes.as_ptr().cast(), TMP_BYTES, 0) };
    if wrote != TMP_BYTES as isize {
        program.setup_failed("write the tmpfile");
    }
    // A child, and fds on its /proc/PID/stat and on our own /proc/PID/maps.
    // SAFETY: fork(2); the child only runs `serve`.
    let child = unsafe { libc::fork() };
    if child == 0 {
        die_with_parent();
        serve(board, 0, |_| PASSED);
    }
    wait_children(program, board, &[0]);
    let child_stat = format!("/proc/{child}/stat");
    let own_maps = format!("/proc/{}/maps", std::process::id());
    let open = |path: &str| {
        let c = std::ffi::CString::new(path).unwrap_or_default();
        // SAFETY: open(2) of a NUL-terminated path.
        cvt(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) })
    };
    let stat_fd = program.must(open(&child_stat), "open the child's stat");
    let maps_fd = program.must(open(&own_maps), "open our maps");
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});

    let mut report = Report::new();
    report.check_eq(
        "the datagram queued before the dump",
        recv_now(sock).as_deref(),
        Some(QUEUED),
    );
    // SAFETY: send from our constant buffer.
    let sent = unsafe { libc::send(sock, b"after".as_ptr().cast(), 5, libc::MSG_DONTWAIT) };
    report.check_eq("sending to itself", sent, 5);
    report.check_eq(
        "the datagram sent to itself",
        recv_now(sock).as_deref(),
        Some(&b"after"[..]),
    );
    let mut back = vec![0u8; TMP_BYTES];
    // SAFETY: pread into our buffer.
    let got = unsafe { libc::pread(tmp, back.as_mut_ptr().cast(), TMP_BYTES, 0) };
    report.check_eq("bytes read from the tmpfile", got, TMP_BYTES as isize);
    report.check(back == bytes[..TMP_BYTES], || {
        "the tmpfile's content differs".into()
    });
    // SAFETY: fstat into our local.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let stat_ok = unsafe { libc::fstat(tmp, &mut st) } == 0;
    report.check(stat_ok && st.st_nlink == 0, || {
        format!("the tmpfile has {} links (expected none)", st.st_nlink)
    });
    report.check_eq("the child's stat fd", link_of(stat_fd), child_stat.clone());
    report.check_eq("our maps fd", link_of(maps_fd), own_maps);
    let mut text = vec![0u8; 64];
    // SAFETY: pread into our buffer.
    let n = unsafe { libc::pread(stat_fd, text.as_mut_ptr().cast(), text.len(), 0) };
    let starts = format!("{child} (");
    report.check(n > 0 && text.starts_with(starts.as_bytes()), || {
        "the child's stat fd reads another task".into()
    });
    ask(board, &[(0, "the child")], &mut report);
    let _ = std::fs::remove_file(&sock_path);
    report
}

// --- copy-on-write -------------------------------------------------------------------------

const COW_PAGES: usize = 32;
/// Anonymous pages the child rewrites after the fork: COW_SPLIT..COW_PAGES.
const COW_SPLIT: usize = 16;
const FILE_PAGES: usize = 8;
/// File pages overwritten in memory before the fork: 0..FILE_DIRTY.
const FILE_DIRTY: usize = 4;

/// The pagemap entry of `addr` in process `pid`.
fn pagemap_entry(pid: libc::pid_t, addr: usize) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(format!("/proc/{pid}/pagemap")).ok()?;
    let mut raw = [0u8; 8];
    file.read_exact_at(&mut raw, (addr / PAGE * 8) as u64)
        .ok()?;
    Some(u64::from_le_bytes(raw))
}

/// The page frame of a present page (bits 0..55 of a pagemap entry with bit 63 set).
fn frame(entry: Option<u64>) -> Option<u64> {
    entry.filter(|e| e >> 63 == 1).map(|e| e & ((1 << 55) - 1))
}

/// The contents every process expects: (anonymous seed, child's seed, file seed, dirty seed).
fn cow_check(
    anon: *mut u8,
    file: *mut u8,
    seeds: (u64, u64, u64, u64),
    child: bool,
    report: &mut Report,
) {
    let (anon_seed, child_seed, file_seed, dirty_seed) = seeds;
    let all = words(anon, COW_PAGES);
    let (shared, own) = all.split_at(COW_SPLIT * WORDS_PER_PAGE);
    if let Some(m) = check_pattern(shared, anon_seed, 0) {
        report.fail(format!("anonymous pages 0..16: {m}"));
    }
    let own_seed = if child { child_seed } else { anon_seed };
    let base = (COW_SPLIT * WORDS_PER_PAGE) as u64;
    if let Some(m) = check_pattern(own, own_seed, base) {
        report.fail(format!("anonymous pages 16..32: {m}"));
    }
    let mapped = words(file, FILE_PAGES);
    let (dirty, clean) = mapped.split_at(FILE_DIRTY * WORDS_PER_PAGE);
    if let Some(m) = check_pattern(dirty, dirty_seed, 0) {
        report.fail(format!("overwritten file pages: {m}"));
    }
    let base = (FILE_DIRTY * WORDS_PER_PAGE) as u64;
    if let Some(m) = check_pattern(clean, file_seed, base) {
        report.fail(format!("clean file pages: {m}"));
    }
}

fn cow(program: &mut Program, board: &Board) -> Report {
    use std::os::fd::AsRawFd;
    let seed = random_seed();
    let seeds = (seed, seed ^ 0xC41D, seed ^ 0xF11E, seed ^ 0xD127);
    let anon_map = program.must(
        Mapping::anonymous(COW_PAGES * PAGE, false),
        "mmap the anonymous pages",
    );
    let anon = anon_map.addr().cast::<u8>();
    fill_pattern(words(anon, COW_PAGES), seeds.0, 0);
    let mut content = vec![0u64; FILE_PAGES * WORDS_PER_PAGE];
    fill_pattern(&mut content, seeds.2, 0);
    let bytes: Vec<u8> = content.iter().flat_map(|w| w.to_le_bytes()).collect();
    let path = program.companion(".cowfile");
    program.must(std::fs::write(&path, &bytes), "write the file");
    let file = program.must(std::fs::File::open(&path), "open the file");
    let file_map = program.must(
        Mapping::file_private(file.as_raw_fd(), FILE_PAGES * PAGE),
        "mmap the file",
    );
    drop(file);
    let mapped = file_map.addr().cast::<u8>();
    fill_pattern(
        &mut words(mapped, FILE_PAGES)[..FILE_DIRTY * WORDS_PER_PAGE],
        seeds.3,
        0,
    );
    // SAFETY: fork(2); the child only rewrites its half and runs `serve`.
    let child = unsafe { libc::fork() };
    if child == 0 {
        die_with_parent();
        let own = &mut words(anon, COW_PAGES)[COW_SPLIT * WORDS_PER_PAGE..];
        fill_pattern(own, seeds.1, (COW_SPLIT * WORDS_PER_PAGE) as u64);
        serve(board, 0, |_| {
            let mut report = Report::new();
            cow_check(anon, mapped, seeds, true, &mut report);
            if report.passed() {
                PASSED
            } else {
                FAILED + 1
            }
        });
    }
    if child < 0 {
        program.setup_failed("fork");
    }
    wait_children(program, board, &[0]);
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});

    let mut report = Report::new();
    cow_check(anon, mapped, seeds, false, &mut report);
    ask(board, &[(0, "the child")], &mut report);
    let me = std::process::id() as libc::pid_t;
    let page = |base: *mut u8, i: usize| base as usize + i * PAGE;
    let shared: Vec<usize> = (0..COW_SPLIT)
        .map(|i| page(anon, i))
        .chain((0..FILE_DIRTY).map(|i| page(mapped, i)))
        .collect();
    let not_shared = shared
        .iter()
        .filter(|&&a| {
            let ours = frame(pagemap_entry(me, a));
            ours.is_none() || ours != frame(pagemap_entry(child, a))
        })
        .count();
    report.check(not_shared == 0, || {
        format!(
            "{not_shared} of {} pages written before the fork are no longer shared",
            shared.len()
        )
    });
    let split = (COW_SPLIT..COW_PAGES)
        .map(|i| page(anon, i))
        .filter(|&a| frame(pagemap_entry(me, a)) == frame(pagemap_entry(child, a)))
        .count();
    report.check(split == 0, || {
        format!("{split} pages the child rewrote are shared with the parent")
    });
    report
}

// --- deleted ---------------------------------------------------------------------------

const DEL_PAGES: usize = 8;
/// Pages 0..DEL_PATTERN_PAGES hold the pattern; the last page is the mailbox.
const DEL_PATTERN_PAGES: usize = DEL_PAGES - 1;
/// The word of page 1 that the parent's private view changes.
const MARKER: u64 = 0x5052_4956_4154_4521;

/// Maps `pages` pages of `fd` at an address the kernel picks.
fn map_fd(fd: c_int, pages: usize, flags: c_int) -> std::io::Result<*mut u8> {
    // SAFETY: a new mapping of our own fd at an address the kernel picks.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pages * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    if at == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(at.cast())
}

/// Word `index` of the file read through `fd`.
fn pread_word(fd: c_int, index: usize) -> Option<u64> {
    let mut word = [0u8; 8];
    // SAFETY: pread into our 8-byte buffer.
    let n = unsafe { libc::pread(fd, word.as_mut_ptr().cast(), 8, (index * 8) as libc::off_t) };
    (n == 8).then(|| u64::from_le_bytes(word))
}

fn deleted(program: &mut Program, board: &Board) -> Report {
    use std::os::unix::ffi::OsStrExt;
    let seed = random_seed();
    let path = program.companion(".shm");
    let _ = std::fs::remove_file(&path);
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .unwrap_or_else(|_| program.setup_failed("file name"));
    // As glibc's shm_open opens its objects.
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: open(2) of a NUL-terminated path.
    let fd = program.must(
        cvt(unsafe { libc::open(name.as_ptr(), flags, 0o600) }),
        "open",
    );
    // SAFETY: ftruncate(2) of our own fd.
    let sized = unsafe { libc::ftruncate(fd, (DEL_PAGES * PAGE) as libc::off_t) };
    program.must(cvt(sized), "ftruncate");
    let shared = program.must(map_fd(fd, DEL_PAGES, libc::MAP_SHARED), "mmap shared");
    fill_pattern(&mut words(shared, DEL_PATTERN_PAGES)[..], seed, 0);
    let private = program.must(map_fd(fd, DEL_PAGES, libc::MAP_PRIVATE), "mmap private");
    words(private, DEL_PAGES)[WORDS_PER_PAGE] = MARKER;
    let mailbox = DEL_PATTERN_PAGES * WORDS_PER_PAGE;
    // SAFETY: fork(2); the child only runs `serve` and exits with the process.
    match unsafe { libc::fork() } {
        -1 => program.setup_failed("fork failed"),
        0 => {
            die_with_parent();
            serve(board, 0, |nonce| {
                let all = words(shared, DEL_PAGES);
                if check_pattern(&all[..mailbox], seed, 0).is_some() {
                    return FAILED + 1;
                }
                if all[mailbox] != nonce {
                    return FAILED + 2;
                }
                all[mailbox + 1] = !nonce;
                PASSED
            })
        }
        _ => {}
    }
    wait_children(program, board, &[0]);
    program.must(std::fs::remove_file(&path), "unlink the file");
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});

    let mut report = Report::new();
    if let Some(m) = check_pattern(&words(shared, DEL_PAGES)[..mailbox], seed, 0) {
        report.fail(format!("the shared view: {m}"));
    }
    let mut pattern = vec![0u64; mailbox];
    fill_pattern(&mut pattern, seed, 0);
    let mut expected = pattern.clone();
    expected[WORDS_PER_PAGE] = MARKER;
    let private_words = &words(private, DEL_PAGES)[..mailbox];
    report.check(private_words == &expected[..], || {
        "the private view lost its marker or its pattern".into()
    });
    report.check_eq(
        "the marker's word read through the fd (the private copy is not the file)",
        pread_word(fd, WORDS_PER_PAGE),
        Some(pattern[WORDS_PER_PAGE]),
    );
    // SAFETY: fstat into our local.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let stat_ok = unsafe { libc::fstat(fd, &mut st) } == 0;
    report.check(stat_ok && st.st_nlink == 0, || {
        format!("the file has {} links (expected none)", st.st_nlink)
    });
    report.check(link_of(fd).ends_with(" (deleted)"), || {
        format!("the fd names {} (expected a deleted file)", link_of(fd))
    });
    report.check(!path.exists(), || {
        "the deleted file has a name again".into()
    });
    // One file: the parent's write through its view is read through the fd and seen by
    // the child, whose answer shows in the parent's view.
    let nonce = ask_with(board, shared, mailbox, &mut report);
    report.check_eq(
        "the nonce read through the fd",
        pread_word(fd, mailbox),
        Some(nonce),
    );
    report.check_eq(
        "the child's answer in the shared view",
        words(shared, DEL_PAGES)[mailbox + 1],
        !nonce,
    );
    report
}

/// Writes a nonce into the mailbox of the shared view, posts it, and collects the
/// child's verdict (1: the pattern, 2: the parent's write not seen).
fn ask_with(board: &Board, shared: *mut u8, mailbox: usize, report: &mut Report) -> u64 {
    let nonce = random_seed() | 1;
    words(shared, DEL_PAGES)[mailbox] = nonce;
    board.verdicts[0].store(PENDING, Ordering::SeqCst);
    board.nonce.store(nonce, Ordering::SeqCst);
    let answered = wait_until(WAIT, || board.echo[0].load(Ordering::SeqCst) == nonce);
    let verdict = board.verdicts[0].load(Ordering::SeqCst);
    if !answered {
        report.fail("the child did not answer");
    } else if verdict != PASSED {
        report.fail(format!(
            "the child's check failed (code {})",
            verdict - FAILED
        ));
    }
    nonce
}

const SHMEM_PRIVATE_PAGES: usize = 4;
const PRIVATE_WORD: u64 = 0x7072_6976_6174_6521;

fn shmem_private(program: &mut Program) -> Report {
    let len = SHMEM_PRIVATE_PAGES * PAGE;
    let mut shared = program.must(Mapping::anonymous(len, true), "shared memory");
    let seed = random_seed();
    fill_pattern(shared.words_mut(), seed, 0);
    let start = shared.addr() as usize;
    let path = format!("/proc/self/map_files/{:x}-{:x}", start, start + len);
    let path = std::ffi::CString::new(path).expect("no NUL");
    // SAFETY: `path` is NUL-terminated and outlives the call.
    let fd = program.must(
        cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDWR) }),
        "map_files",
    );
    // SAFETY: a fresh private mapping of the object from its page 1, at an address the
    // kernel picks: it aliases nothing of ours.
    let private = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len - PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            fd,
            PAGE as libc::off_t,
        )
    };
    // SAFETY: the mapping holds its own reference to the object.
    unsafe { libc::close(fd) };
    if private == libc::MAP_FAILED {
        program.setup_failed("mmap of map_files");
    }
    let private = private.cast::<u64>();
    // SAFETY: word 0 of the private mapping's first page: a copy-on-write write.
    unsafe { private.write_volatile(PRIVATE_WORD) };
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});

    let mut report = Report::new();
    let words_per_page = PAGE / 8;
    // SAFETY: the private mapping stays for the program's life, 3 pages long.
    let private_words = unsafe { std::slice::from_raw_parts(private, (len - PAGE) / 8) };
    report.check_eq("the private write", private_words[0], PRIVATE_WORD);
    // Object pages 2 and 3, as the private view shows them.
    if let Some(m) = check_pattern(
        &private_words[words_per_page..],
        seed,
        2 * words_per_page as u64,
    ) {
        report.fail(format!("the private view's untouched pages: {m}"));
    }
    if let Some(m) = check_pattern(shared.words(), seed, 0) {
        report.fail(format!("the shared object: {m}"));
    }
    // A word written to the object now shows in the private view's untouched page.
    let at = 3 * words_per_page + 5;
    let fresh = !shared.words()[at];
    shared.words_mut()[at] = fresh;
    // SAFETY: the same object word through the private view (its page 0 is the object's
    // page 1); volatile: the compiler cannot know the two views alias.
    let seen = unsafe { private.add(at - words_per_page).read_volatile() };
    report.check_eq("a new word of the object in the private view", seen, fresh);
    report
}

const WATCHED_BYTES: &[u8] = b"abcde";

fn deleted_watch(program: &mut Program) -> Report {
    let path = program.companion(".watched");
    let c = program.must(criu_testprogs::c_path(&path), "path");
    // SAFETY: `c` is NUL-terminated and outlives the call.
    let file = program.must(
        cvt(unsafe { libc::open(c.as_ptr(), libc::O_CREAT | libc::O_RDWR, 0o600) }),
        "create the watched file",
    );
    // SAFETY: WATCHED_BYTES is readable for its length.
    let n = unsafe { libc::write(file, WATCHED_BYTES.as_ptr().cast(), WATCHED_BYTES.len()) };
    if n != WATCHED_BYTES.len() as isize {
        program.setup_failed("write the watched file");
    }
    // SAFETY: plain call on our own fd.
    unsafe { libc::lseek(file, 3, libc::SEEK_SET) };
    // SAFETY: plain call with integer arguments.
    let inotify = program.must(
        cvt(unsafe { libc::inotify_init1(libc::IN_NONBLOCK) }),
        "inotify",
    );
    // SAFETY: `c` outlives the call.
    let wd = program.must(
        cvt(unsafe { libc::inotify_add_watch(inotify, c.as_ptr(), libc::IN_MODIFY) }),
        "watch",
    );
    program.must(std::fs::remove_file(&path), "unlink the watched file");
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});

    let mut report = Report::new();
    // SAFETY: fstat fills one stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let got = unsafe { libc::fstat(file, &mut st) };
    report.check_eq(
        "links and size of the deleted file",
        (got, st.st_nlink, st.st_size),
        (0, 0, WATCHED_BYTES.len() as i64),
    );
    // SAFETY: plain call on our own fd.
    let at = unsafe { libc::lseek(file, 0, libc::SEEK_CUR) };
    report.check_eq("the deleted file's offset", at, 3);
    let mut bytes = [0u8; 8];
    // SAFETY: `bytes` is writable for its length.
    let n = unsafe { libc::pread(file, bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    report.check(
        n == WATCHED_BYTES.len() as isize && bytes[..WATCHED_BYTES.len()] == *WATCHED_BYTES,
        || format!("the deleted file holds {:?}", &bytes[..n.max(0) as usize]),
    );
    // SAFETY: one byte from a static.
    let n = unsafe { libc::write(file, b"x".as_ptr().cast(), 1) };
    report.check_eq("bytes written to the deleted file", n, 1);
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::read(inotify, buf.as_mut_ptr().cast(), buf.len()) };
    let event = (n >= 16).then(|| {
        (
            i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]),
            u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]),
        )
    });
    report.check_eq("the watch's event", event, Some((wd, libc::IN_MODIFY)));
    report
}

// --- epoll ---------------------------------------------------------------------------------

/// The data word the epoll instance reports for the pipe's read end.
const EPOLL_PIPE_WORD: u64 = 0x5e_ed0f_9a7e;

/// The data word of the first event `epoll` reports within `timeout_ms`, if any.
fn epoll_word(epoll: c_int, timeout_ms: c_int) -> Option<u64> {
    let mut event = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: epoll_wait writes at most one event into `event`.
    let n = unsafe { libc::epoll_wait(epoll, &mut event, 1, timeout_ms) };
    (n == 1).then_some(event.u64)
}

fn epoll(program: &mut Program, board: &Board) -> Report {
    let mut ends = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    program.must(cvt(unsafe { libc::pipe(ends.as_mut_ptr()) }), "pipe");
    let [read_end, write_end] = ends;
    // SAFETY: epoll_create1 has no memory arguments.
    let epoll = program.must(cvt(unsafe { libc::epoll_create1(0) }), "epoll_create1");
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: EPOLL_PIPE_WORD,
    };
    // SAFETY: `event` is a valid epoll_event; both fds are open.
    program.must(
        cvt(unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, read_end, &mut event) }),
        "epoll_ctl",
    );
    // SAFETY: fork(2); the child only makes raw calls and runs `serve`.
    if unsafe { libc::fork() } == 0 {
        die_with_parent();
        // SAFETY: closing the child's copies of the pipe's ends.
        unsafe {
            libc::close(read_end);
            libc::close(write_end);
        }
        serve(board, 0, |_| {
            // SAFETY: F_GETFD on a number; it only reports whether it is open.
            let holds_read_end = unsafe { libc::fcntl(read_end, libc::F_GETFD) } >= 0;
            match epoll_word(epoll, 1000) {
                _ if holds_read_end => FAILED + 1,
                Some(EPOLL_PIPE_WORD) => PASSED,
                Some(_) => FAILED + 2,
                None => FAILED + 3,
            }
        });
    }
    wait_children(program, board, &[0]);
    program.ready();
    program.work_until_check(Duration::from_millis(20), || {});
    let mut report = Report::new();
    report.check(epoll_word(epoll, 0).is_none(), || {
        "the epoll instance reports an event before the byte".into()
    });
    // SAFETY: writes one byte from a static.
    let wrote = unsafe { libc::write(write_end, b"x".as_ptr().cast(), 1) };
    report.check_eq("bytes written into the pipe", wrote, 1);
    report.check_eq(
        "the parent's event",
        epoll_word(epoll, 1000),
        Some(EPOLL_PIPE_WORD),
    );
    ask(
        board,
        &[(0, "the child (its read end closed)")],
        &mut report,
    );
    report
}
