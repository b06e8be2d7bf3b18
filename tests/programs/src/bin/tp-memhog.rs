//! tp-memhog: lots of private anonymous memory, a heap buffer, a modified file-backed
//! private mapping and a region that keeps changing; the check verifies every word.
//!
//! State (all patterns derive from one random seed chosen at start):
//! - `--mib N` MiB of MAP_PRIVATE|MAP_ANONYMOUS memory, every u64 = pattern(seed, index);
//! - a heap `Vec<u64>` (512 KiB) with its own pattern;
//! - `PATH.map`, a 16-page file written with a pattern and mapped MAP_PRIVATE; the odd
//!   pages are then overwritten in memory (copy-on-write), the even ones are left clean;
//! - a 1 MiB "churn" region rewritten as a whole every 10 ms with the pattern of an
//!   increasing generation number, so memory keeps changing after `ready`.
//!
//! With `--below-binary true` the region is mapped below the binary, so a dump copies
//! its pages before those of the program's text.
//!
//! With `--ticker-us N`, a SIGALRM interval timer fires every N us and its handler checks
//! one word of the anonymous region per tick (a program whose timers fire while it is
//! dumped: a handler run while the dump has released memory would see it missing). The
//! handler's state lives in a shared page at a fixed address, which no dump releases.
//!
//! `PATH.layout` tells a harness where the regions are (`NAME ADDRESS LENGTH` lines, hex).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use criu_testprogs::{
    check_pattern, fill_pattern, pattern_word, random_seed, write_atomic, Mapping, Program, Report,
};

const PAGE: usize = 4096;
const HEAP_WORDS: usize = 64 * 1024;
const FILE_PAGES: usize = 16;
const CHURN_BYTES: usize = 1 << 20;
/// Where `--below-binary` asks for the anonymous region: far below where the kernel puts
/// position-independent binaries (0x55..., 0x56...) and the mmap area (0x7f...).
const BELOW_BINARY: usize = 0x10_0000_0000;

/// The seeds of the regions, all derived from the one chosen at start.
struct Seeds {
    anon: u64,
    heap: u64,
    file: u64,
    dirty: u64,
    churn: u64,
}

impl Seeds {
    fn from(seed: u64) -> Seeds {
        Seeds {
            anon: seed,
            heap: (seed.rotate_left(13) ^ 0x5EED_0000_0000_0001) | 1,
            file: (seed.rotate_left(29) ^ 0x0F11_E000_0000_0001) | 1,
            dirty: (seed.rotate_left(41) ^ 0xD127_0000_0000_0001) | 1,
            churn: (seed.rotate_left(53) ^ 0xC4C4_0000_0000_0001) | 1,
        }
    }

    /// The seed of the churn region at `generation`.
    fn churn_at(&self, generation: u64) -> u64 {
        (self.churn ^ generation.wrapping_mul(0x1000_0000_0000_0002)) | 1
    }
}

/// Where the ticker's state is mapped (MAP_SHARED: never released by a dump).
const TICKER_AT: usize = 0x6f00_0000_0000;

/// What the SIGALRM handler reads and counts.
#[repr(C)]
struct Ticker {
    ticks: AtomicU64,
    bad: AtomicU64,
    seed: u64,
    base: u64,
    words: u64,
}

extern "C" fn on_tick(_signo: libc::c_int) {
    // SAFETY: the ticker page is mapped at TICKER_AT before the timer is armed and stays
    // mapped for the life of the process.
    let t = unsafe { &*(TICKER_AT as *const Ticker) };
    let n = t.ticks.fetch_add(1, Ordering::SeqCst);
    let index = n.wrapping_mul(7919) % t.words;
    // SAFETY: index < words, inside the anonymous region, which stays mapped.
    let word = unsafe { std::ptr::read_volatile((t.base as *const u64).add(index as usize)) };
    if word != pattern_word(t.seed, index) {
        t.bad.fetch_add(1, Ordering::SeqCst);
    }
}

/// Arms a SIGALRM every `us` microseconds whose handler checks words of `words`.
fn start_ticker(program: &Program, us: u64, words: &[u64], seed: u64) -> &'static Ticker {
    // SAFETY: a fresh shared anonymous page at an address nothing else uses (NOREPLACE).
    let addr = unsafe {
        libc::mmap(
            TICKER_AT as *mut libc::c_void,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if addr as usize != TICKER_AT {
        program.setup_failed("mmap the ticker page at its fixed address");
    }
    // SAFETY: the page is ours, zeroed, and large enough for a Ticker.
    unsafe {
        std::ptr::write(
            addr.cast::<Ticker>(),
            Ticker {
                ticks: AtomicU64::new(0),
                bad: AtomicU64::new(0),
                seed,
                base: words.as_ptr() as u64,
                words: words.len() as u64,
            },
        );
    }
    // SAFETY: an all-zero sigaction is valid; the handler only touches the ticker page
    // and the anonymous region.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_tick as extern "C" fn(libc::c_int) as usize;
        act.sa_flags = libc::SA_RESTART;
        if libc::sigaction(libc::SIGALRM, &act, std::ptr::null_mut()) != 0 {
            program.setup_failed("sigaction SIGALRM");
        }
        let interval = libc::timeval {
            tv_sec: (us / 1_000_000) as libc::time_t,
            tv_usec: (us % 1_000_000) as libc::suseconds_t,
        };
        let timer = libc::itimerval {
            it_interval: interval,
            it_value: interval,
        };
        if libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) != 0 {
            program.setup_failed("setitimer");
        }
        &*(TICKER_AT as *const Ticker)
    }
}

fn stop_ticker() {
    // SAFETY: setitimer with a zero value disarms the timer.
    unsafe {
        let zero: libc::itimerval = std::mem::zeroed();
        libc::setitimer(libc::ITIMER_REAL, &zero, std::ptr::null_mut());
    }
}

fn main() {
    let mut program = Program::start(
        "tp-memhog",
        &[
            (
                "--mib N",
                "MiB of private anonymous memory to map and fill (default 64)",
            ),
            (
                "--below-binary true",
                "map the region below the program's binary (default false: where mmap puts it)",
            ),
            (
                "--ticker-us N",
                "a SIGALRM every N us checks a word of the region (default 0: none)",
            ),
        ],
    );
    let mib: usize = program.opt_or("--mib", 64);
    let ticker_us: u64 = program.opt_or("--ticker-us", 0);
    let seeds = Seeds::from(random_seed());

    // Below the binary, the region's pages come first in address order, before the
    // pages of the program's text (a dump's page copy goes in that order).
    let region = if program.opt_or("--below-binary", false) {
        Mapping::anonymous_near(BELOW_BINARY, mib << 20)
    } else {
        Mapping::anonymous(mib << 20, false)
    };
    let mut anon = program.must(region, "mmap the anonymous region");
    fill_pattern(anon.words_mut(), seeds.anon, 0);

    let mut heap = vec![0u64; HEAP_WORDS];
    fill_pattern(&mut heap, seeds.heap, 0);

    let map_path = program.companion(".map");
    let mut file_words = vec![0u64; FILE_PAGES * PAGE / 8];
    fill_pattern(&mut file_words, seeds.file, 0);
    let file_bytes: Vec<u8> = file_words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let file = program.must(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&map_path),
        "create the mapped file",
    );
    program.must((&file).write_all(&file_bytes), "write the mapped file");
    let mut filemap = program.must(
        Mapping::file_private(file.as_raw_fd(), FILE_PAGES * PAGE),
        "mmap the file privately",
    );
    drop(file); // the mapping alone keeps the file in use
    for page in (1..FILE_PAGES).step_by(2) {
        let words = &mut filemap.words_mut()[page * PAGE / 8..(page + 1) * PAGE / 8];
        fill_pattern(words, seeds.dirty, (page * PAGE / 8) as u64);
    }

    let mut churn = program.must(
        Mapping::anonymous(CHURN_BYTES, false),
        "mmap the churn region",
    );
    let mut generation = 0u64;
    fill_pattern(churn.words_mut(), seeds.churn_at(generation), 0);

    let layout = format!(
        "anon {:#x} {:#x}\nheap {:#x} {:#x}\nfile {:#x} {:#x}\nchurn {:#x} {:#x}\n",
        anon.addr() as usize,
        anon.len(),
        heap.as_ptr() as usize,
        heap.len() * 8,
        filemap.addr() as usize,
        filemap.len(),
        churn.addr() as usize,
        churn.len(),
    );
    program.must(
        write_atomic(&program.companion(".layout"), layout.as_bytes()),
        "write PATH.layout",
    );

    let ticker =
        (ticker_us > 0).then(|| start_ticker(&program, ticker_us, anon.words(), seeds.anon));

    program.ready();
    let generation_at_ready = generation;
    program.work_until_check(Duration::from_millis(10), || {
        generation += 1;
        fill_pattern(churn.words_mut(), seeds.churn_at(generation), 0);
    });

    let mut report = Report::new();
    if let Some(t) = ticker {
        stop_ticker();
        report.check_eq(
            "ticks that saw a wrong word",
            t.bad.load(Ordering::SeqCst),
            0,
        );
        report.check(t.ticks.load(Ordering::SeqCst) > 0, || {
            "the ticker never ticked".into()
        });
    }
    if let Some(m) = check_pattern(anon.words(), seeds.anon, 0) {
        report.fail(format!("anonymous region ({mib} MiB): {m}"));
    }
    if let Some(m) = check_pattern(&heap, seeds.heap, 0) {
        report.fail(format!("heap buffer: {m}"));
    }
    report.check_eq("heap buffer length", heap.len(), HEAP_WORDS);
    for page in 0..FILE_PAGES {
        let base = page * PAGE / 8;
        let words = &filemap.words()[base..base + PAGE / 8];
        let (seed, what) = if page % 2 == 1 {
            (seeds.dirty, "modified")
        } else {
            (seeds.file, "clean")
        };
        if let Some(m) = check_pattern(words, seed, base as u64) {
            report.fail(format!("file mapping, {what} page {page}: {m}"));
        }
    }
    // Copy-on-write must not have reached the file.
    let mut on_disk = vec![0u8; file_bytes.len()];
    let read_back = std::fs::File::open(&map_path).and_then(|f| f.read_exact_at(&mut on_disk, 0));
    if report.ok_or_fail(read_back, "read PATH.map back").is_some() {
        report.check(on_disk == file_bytes, || {
            "PATH.map on disk changed (private writes leaked into the file?)".to_owned()
        });
    }
    report.check(generation > generation_at_ready, || {
        format!("churn generation did not advance past {generation_at_ready}")
    });
    if let Some(m) = check_pattern(churn.words(), seeds.churn_at(generation), 0) {
        report.fail(format!("churn region at generation {generation}: {m}"));
    }
    program.finish(&report);
}
