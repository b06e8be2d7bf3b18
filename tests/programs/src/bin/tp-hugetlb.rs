//! tp-hugetlb: hugetlb memory (2 MiB pages) of every kind a restore must rebuild.
//!
//! - `private`: 4 MiB `MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB`, a pattern in the first
//!   64 KiB of each of its two huge pages; a forked child inherits it;
//! - `shared`: 4 MiB `MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB`, a pattern in its first
//!   64 KiB; parent and child talk through two words of its second huge page;
//! - `memfd`: a 2 MiB `memfd_create(MFD_HUGETLB)` (descriptor kept open), a pattern in its
//!   first 64 KiB written through a shared mapping, and also mapped privately (never
//!   written, so it keeps following the memfd).
//!
//! Needs 9 free huge pages of 2 MiB (6 in the parent, 3 more after a restore, which
//! gives the child its own copy of `private`); a setup failure says so.
//!
//! Check: each mapping is where it was, with the same protection, device and (with
//! `--same-names yes`) name, still hugetlb with 2 MiB pages (smaps); the patterns in
//! parent and child (the child answers the parent's nonce only when its own copy of
//! `private` is intact); the memfd is still a hugetlb memfd of 2 MiB with its pattern
//! read through `pread`, and a word written through its shared mapping shows through the
//! private one and `pread`.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criu_testprogs::{check_pattern, cvt, fill_pattern, random_seed, wait_until, Program, Report};

const HUGE: usize = 2 << 20;
/// The part of a huge page that gets a pattern.
const PATTERN_BYTES: usize = 64 << 10;
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
/// `MAP_HUGE_2MB`.
const MAP_HUGE_2MB: c_int = 21 << libc::MAP_HUGE_SHIFT;

/// The shared words parent and child talk through (in `shared`'s second huge page).
const NONCE: usize = HUGE / 8;
const ANSWER: usize = HUGE / 8 + 1;

/// One hugetlb mapping of the program.
struct Region {
    name: &'static str,
    addr: usize,
    len: usize,
}

fn map(len: usize, flags: c_int, fd: c_int) -> std::io::Result<usize> {
    // SAFETY: a fresh mapping at an address the kernel picks aliases nothing of ours.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(addr as usize)
}

/// The `len` bytes at `addr` as words.
fn words<'a>(addr: usize, len: usize) -> &'a [u64] {
    // SAFETY: callers pass a readable mapping of ours at least `len` bytes long that is
    // never unmapped; any bit pattern is a valid u64.
    unsafe { std::slice::from_raw_parts(addr as *const u64, len / 8) }
}

fn words_mut<'a>(addr: usize, len: usize) -> &'a mut [u64] {
    // SAFETY: as `words`, and the mapping is writable; set-up writes happen before the
    // child exists, and each region is written through one slice at a time.
    unsafe { std::slice::from_raw_parts_mut(addr as *mut u64, len / 8) }
}

/// Word `index` of shared memory at `addr`, which the child writes too.
fn cell<'a>(addr: usize, index: usize) -> &'a AtomicU64 {
    // SAFETY: callers pass the `shared` mapping, which holds word `index` and is never
    // unmapped; the words shared with the child are only accessed atomically.
    unsafe { &*((addr as *const AtomicU64).add(index)) }
}

/// The pattern words of `private`, `shared` or `memfd` at ready: the first 64 KiB of
/// each huge page of `private`, of the first one of the others.
fn pattern_pages(r: &Region) -> Vec<usize> {
    if r.name == "private" {
        (0..r.len / HUGE).collect()
    } else {
        vec![0]
    }
}

fn seed_of(seed: u64, r: &Region, page: usize) -> u64 {
    seed ^ ((r.name.len() as u64) << 32) ^ page as u64
}

fn fill(seed: u64, r: &Region) {
    for page in pattern_pages(r) {
        let at = r.addr + page * HUGE;
        fill_pattern(words_mut(at, PATTERN_BYTES), seed_of(seed, r, page), 0);
    }
}

fn pattern_intact(seed: u64, r: &Region) -> Result<(), String> {
    for page in pattern_pages(r) {
        let at = r.addr + page * HUGE;
        if let Some(m) = check_pattern(words(at, PATTERN_BYTES), seed_of(seed, r, page), 0) {
            return Err(format!("{} huge page {page}: {m}", r.name));
        }
    }
    Ok(())
}

/// A mapping as smaps shows it: (start, end, perms, device, name, hugetlb, page kB).
type Shape = (u64, u64, String, String, String, bool, u64);

fn smaps_shapes(pid: &str) -> std::io::Result<Vec<Shape>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut out: Vec<Shape> = Vec::new();
    for line in text.lines() {
        let first = line.split(' ').next().unwrap_or("");
        if first.contains('-') && first.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            let mut f = line.split_whitespace();
            let range = f.next().unwrap_or("");
            let perms = f.next().unwrap_or("").to_owned();
            let _offset = f.next();
            let dev = f.next().unwrap_or("").to_owned();
            let _inode = f.next();
            let name = f.collect::<Vec<_>>().join(" ");
            let (s, e) = range.split_once('-').unwrap_or(("0", "0"));
            let hex = |t: &str| u64::from_str_radix(t, 16).unwrap_or(0);
            out.push((hex(s), hex(e), perms, dev, name, false, 0));
        } else if let (Some(flags), Some(last)) = (line.strip_prefix("VmFlags:"), out.last_mut()) {
            last.5 = flags.split_whitespace().any(|f| f == "ht");
        } else if let (Some(size), Some(last)) =
            (line.strip_prefix("KernelPageSize:"), out.last_mut())
        {
            last.6 = size
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
        }
    }
    Ok(out)
}

/// The shapes of our regions, names left out unless `names`.
fn shapes(all: &[Shape], regions: &[Region], names: bool) -> Vec<Shape> {
    regions
        .iter()
        .filter_map(|r| all.iter().find(|s| s.0 == r.addr as u64).cloned())
        .map(|mut s| {
            if !names {
                s.4.clear();
            }
            s
        })
        .collect()
}

fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// The child: answers each nonce with itself when its copy of `private` is intact, with
/// its complement when not.
fn child(seed: u64, private: &Region, shared: usize) -> ! {
    die_with_parent();
    loop {
        let nonce = cell(shared, NONCE).load(Ordering::SeqCst);
        if nonce != 0 && cell(shared, ANSWER).load(Ordering::SeqCst) != nonce {
            let answer = if pattern_intact(seed, private).is_ok() {
                nonce
            } else {
                !nonce
            };
            cell(shared, ANSWER).store(answer, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The memfd's contents through `pread`, `len` bytes from 0.
fn pread_all(fd: c_int, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    // SAFETY: pread writes at most `len` bytes into `buf`, which has that many.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), len, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// (filesystem type, block size, size) of the memfd.
fn memfd_stat(fd: c_int) -> std::io::Result<(i64, i64, i64)> {
    // SAFETY: statfs and stat are plain integers; all-zero is a valid value.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes one struct statfs into `sfs`.
    cvt(unsafe { libc::fstatfs(fd, &mut sfs) })?;
    // SAFETY: as above.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one struct stat into `st`.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok((sfs.f_type, st.st_blksize, st.st_size))
}

struct SetUp {
    regions: Vec<Region>,
    memfd: c_int,
    /// The private mapping of the memfd.
    memfd_private: usize,
    child: libc::pid_t,
}

fn set_up(seed: u64) -> std::io::Result<SetUp> {
    let anon = libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | MAP_HUGE_2MB;
    let private = Region {
        name: "private",
        addr: map(2 * HUGE, libc::MAP_PRIVATE | anon, -1)?,
        len: 2 * HUGE,
    };
    let shared = Region {
        name: "shared",
        addr: map(2 * HUGE, libc::MAP_SHARED | anon, -1)?,
        len: 2 * HUGE,
    };
    let name = c"tp-hugetlb";
    // SAFETY: memfd_create reads the NUL-terminated name.
    let memfd = cvt(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_HUGETLB) })?;
    // SAFETY: ftruncate on our own descriptor.
    cvt(unsafe { libc::ftruncate(memfd, HUGE as libc::off_t) })?;
    let memfd_shared = Region {
        name: "memfd",
        addr: map(HUGE, libc::MAP_SHARED, memfd)?,
        len: HUGE,
    };
    let memfd_private = map(HUGE, libc::MAP_PRIVATE, memfd)?;
    for r in [&private, &shared, &memfd_shared] {
        fill(seed, r);
    }
    // SAFETY: the child only runs `child`, which touches no lock the parent may hold.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        child(seed, &private, shared.addr);
    }
    Ok(SetUp {
        regions: vec![private, shared, memfd_shared],
        memfd,
        memfd_private,
        child: pid,
    })
}

fn check(report: &mut Report, s: &SetUp, seed: u64, at_ready: &[Shape], names: bool) {
    match smaps_shapes("self") {
        Ok(all) => {
            let now = shapes(&all, &s.regions, names);
            report.check_eq(
                "the hugetlb mappings",
                now,
                shapes(at_ready, &s.regions, names),
            );
            let private_memfd = all.iter().find(|m| m.0 == s.memfd_private as u64);
            report.check(private_memfd.is_some_and(|m| m.5 && m.6 == 2048), || {
                format!("the memfd's private mapping: {private_memfd:?}")
            });
        }
        Err(e) => report.fail(format!("reading smaps: {e}")),
    }
    for r in &s.regions {
        if let Err(e) = pattern_intact(seed, r) {
            report.fail(e);
        }
    }
    let memfd = &s.regions[2];
    let private_view = Region {
        name: "memfd",
        addr: s.memfd_private,
        len: HUGE,
    };
    if let Err(e) = pattern_intact(seed, &private_view) {
        report.fail(format!("through the private mapping: {e}"));
    }
    match memfd_stat(s.memfd) {
        Ok(found) => report.check_eq(
            "the memfd's filesystem, block size and size",
            found,
            (HUGETLBFS_MAGIC, HUGE as i64, HUGE as i64),
        ),
        Err(e) => report.fail(format!("stat of the memfd: {e}")),
    }
    if let Some(bytes) = report.ok_or_fail(pread_all(s.memfd, PATTERN_BYTES), "pread the memfd") {
        let read: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
            .collect();
        if let Some(m) = check_pattern(&read, seed_of(seed, memfd, 0), 0) {
            report.fail(format!("the memfd read with pread: {m}"));
        }
    }
    // A write through the shared mapping reaches the private one (never written) and
    // the file.
    let marker = seed.rotate_left(7) | 1;
    cell(memfd.addr, 100).store(marker, Ordering::SeqCst);
    report.check_eq(
        "a word written through the memfd's shared mapping, seen privately",
        words(s.memfd_private, 1024)[100],
        marker,
    );
    let read = pread_all(s.memfd, 808).ok().map(|b| b[800..808].to_vec());
    report.check_eq(
        "the same word through pread",
        read,
        Some(marker.to_ne_bytes().to_vec()),
    );
    let shared = s.regions[1].addr;
    let nonce = random_seed() | 1;
    cell(shared, NONCE).store(nonce, Ordering::SeqCst);
    let answered = wait_until(Duration::from_secs(10), || {
        cell(shared, ANSWER).load(Ordering::SeqCst) == nonce
            || cell(shared, ANSWER).load(Ordering::SeqCst) == !nonce
    });
    let answer = cell(shared, ANSWER).load(Ordering::SeqCst);
    report.check(answered, || {
        "the child did not answer through the shared mapping".into()
    });
    report.check(!answered || answer == nonce, || {
        "the child's copy of the private mapping differs".into()
    });
}

fn main() {
    let mut program = Program::start(
        "tp-hugetlb",
        &[(
            "--same-names yes|no",
            "check the mappings' names too (default yes; CRIU remakes shared hugetlb memory as a memfd)",
        )],
    );
    let names = program.opt_or("--same-names", String::from("yes")) == "yes";
    let seed = random_seed();
    let s = program.must(
        set_up(seed),
        "hugetlb memory (9 free 2 MiB huge pages needed)",
    );
    let at_ready = program.must(smaps_shapes("self"), "read smaps");
    program.ready();
    program.work_until_check(Duration::from_millis(50), || {});
    let mut report = Report::new();
    check(&mut report, &s, seed, &at_ready, names);
    // SAFETY: kill and waitpid on our own child.
    unsafe {
        libc::kill(s.child, libc::SIGKILL);
        libc::waitpid(s.child, std::ptr::null_mut(), 0);
    }
    program.finish(&report);
}
