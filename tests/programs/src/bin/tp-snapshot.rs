//! tp-snapshot: memory rewritten all the time, for live snapshots (`dump -R` copying
//! pages while the program runs): the image must be one moment of it.
//!
//! State: `--mib N` MiB of private anonymous memory (heap). A writer thread goes over
//! its pages in order, round after round: it writes the round's generation into the
//! first word of page `p`, then the same number into entry `p` of a side table (other
//! heap memory). The other words of every page hold a fixed pattern from a random seed.
//!
//! The writer checks each page before it rewrites it: it must hold the previous round's
//! generation, and so must its table entry (pages and table restored from different
//! moments fail this at once, before the writer could cover it up). The check stops the
//! writer, reports what it found, and verifies one consistent cut: the pages' generations
//! are `G + 1` up to some page and `G` from there on (one boundary, or none); the side
//! table matches every page, except that the last page written may be one generation
//! ahead of its entry (the writer stopped between the two writes); every pattern word
//! is intact. Pages saved at different moments (copied while the writer ran on) break
//! the single boundary or the side table.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criu_testprogs::{random_seed, Program, Report};

const PAGE_WORDS: usize = 4096 / 8;

/// The fixed word `i` of the region (never the first word of a page).
fn pattern(seed: u64, i: usize) -> u64 {
    let x = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x.rotate_left(23) ^ (x >> 7)
}

fn main() {
    let mut program = Program::start(
        "tp-snapshot",
        &[
            (
                "--mib N",
                "MiB of private anonymous memory a thread rewrites page by page (default 64)",
            ),
            (
                "--thp 1",
                "back the rewritten memory with transparent huge pages (MADV_HUGEPAGE)",
            ),
            (
                "--churn-kib N",
                "also a thread that maps N KiB, fills, checks and unmaps them again and again \
                 (the memory map changes all the time; default 0: none)",
            ),
        ],
    );
    let mib: usize = program.opt_or("--mib", 64);
    let churn_kib: usize = program.opt_or("--churn-kib", 0);
    let pages = (mib << 20) / 4096;
    let seed = random_seed();
    let mut words: Vec<AtomicU64> = Vec::with_capacity(pages * PAGE_WORDS);
    if program.opt_or("--thp", 0u32) != 0 {
        // Advised before the first touch, so the pages come as huge pages at once.
        let (start, len) = (words.as_ptr() as usize, pages * PAGE_WORDS * 8);
        let aligned = start.next_multiple_of(2 << 20);
        let usable = (start + len).saturating_sub(aligned) / (2 << 20) * (2 << 20);
        // SAFETY: madvise on memory this Vec owns (allocated, not yet initialised); no
        // contents change.
        unsafe { libc::madvise(aligned as *mut _, usable, libc::MADV_HUGEPAGE) };
    }
    words.extend((0..pages * PAGE_WORDS).map(|i| {
        AtomicU64::new(if i % PAGE_WORDS == 0 {
            0
        } else {
            pattern(seed, i)
        })
    }));
    let region: Arc<Vec<AtomicU64>> = Arc::new(words);
    let side: Arc<Vec<AtomicU64>> = Arc::new((0..pages).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (region, side, stop) = (region.clone(), side.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut generation = 1u64;
            loop {
                for p in 0..pages {
                    if stop.load(Ordering::Relaxed) {
                        return None;
                    }
                    // What the round before left here: a restored image that is not
                    // one moment shows at the first page the writer reaches after it.
                    let before = region[p * PAGE_WORDS].load(Ordering::Relaxed);
                    let entry = side[p].load(Ordering::Relaxed);
                    if before + 1 != generation || entry + 1 != generation {
                        return Some(format!(
                            "writing generation {generation} into page {p}: it held {before}, \
                             its table entry {entry} (expected {} in both)",
                            generation - 1
                        ));
                    }
                    region[p * PAGE_WORDS].store(generation, Ordering::Relaxed);
                    side[p].store(generation, Ordering::Relaxed);
                }
                generation += 1;
            }
        })
    };

    let churn = (churn_kib > 0).then(|| {
        let stop = stop.clone();
        std::thread::spawn(move || churn_map(churn_kib << 10, &stop))
    });

    program.ready();
    program.work_until_check(Duration::from_millis(10), || {});
    stop.store(true, Ordering::SeqCst);
    let mut report = Report::new();
    match writer.join() {
        Ok(None) => {}
        Ok(Some(found)) => report.fail(format!("the writer stopped: {found}")),
        Err(_) => report.fail("the writer thread panicked"),
    }
    match churn.map(|c| c.join()) {
        None | Some(Ok(None)) => {}
        Some(Ok(Some(found))) => report.fail(format!("the mapping churn: {found}")),
        Some(Err(_)) => report.fail("the churn thread panicked"),
    }

    let generation = |p: usize| region[p * PAGE_WORDS].load(Ordering::Relaxed);
    let high = generation(0);
    let boundary = (0..pages).find(|&p| generation(p) != high).unwrap_or(pages);
    if let Some(p) = (boundary..pages).find(|&p| generation(p) + 1 != high) {
        report.fail(format!(
            "not one moment: pages 0..{boundary} hold generation {high}, page {p} holds {} \
             (expected {})",
            generation(p),
            high.wrapping_sub(1)
        ));
    }
    let mismatched: Vec<usize> = (0..pages)
        .filter(|&p| {
            let (page, entry) = (generation(p), side[p].load(Ordering::Relaxed));
            page != entry && !(p + 1 == boundary.max(1) && page == entry + 1)
        })
        .collect();
    if let Some(&first) = mismatched.first() {
        report.fail(format!(
            "{} pages differ from the side table; first: page {first} holds {}, the table says {}",
            mismatched.len(),
            generation(first),
            side[first].load(Ordering::Relaxed)
        ));
    }
    let torn = (0..pages * PAGE_WORDS)
        .filter(|i| i % PAGE_WORDS != 0)
        .find(|&i| region[i].load(Ordering::Relaxed) != pattern(seed, i));
    if let Some(i) = torn {
        report.fail(format!(
            "pattern word {i} (page {}) differs",
            i / PAGE_WORDS
        ));
    }
    program.finish(&report);
}

/// The word `i` of churn round `round`.
fn churn_word(round: u64, i: usize) -> u64 {
    round.rotate_left(17) ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Maps `len` bytes, fills them, waits a moment, checks them and unmaps them, round
/// after round until `stop`: a snapshot taken meanwhile finds the map changed since any
/// earlier look, and a restored mapping must hold its round's words. Returns what was
/// wrong, if anything.
fn churn_map(len: usize, stop: &AtomicBool) -> Option<String> {
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        // SAFETY: a fresh private mapping at an address the kernel picks: it aliases
        // nothing, only this thread uses it, and it is unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Some(format!("round {round}: mmap failed"));
        }
        let words = addr.cast::<u64>();
        let count = len / 8;
        for i in 0..count {
            // SAFETY: `i` is inside the mapping of `len` bytes made above.
            unsafe { words.add(i).write_volatile(churn_word(round, i)) };
        }
        std::thread::sleep(Duration::from_micros(500));
        // SAFETY: as above; volatile, so the check reads the memory as it is now.
        let bad =
            (0..count).find(|&i| unsafe { words.add(i).read_volatile() } != churn_word(round, i));
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(addr, len) };
        if let Some(i) = bad {
            return Some(format!("round {round}: word {i} of its mapping changed"));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    None
}
