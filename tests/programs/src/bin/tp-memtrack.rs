//! tp-memtrack: memory that changes in known places between checkpoints, for incremental
//! dumps (pre-dumps, then a dump that saves only what was written since).
//!
//! State (all patterns derive from one random seed chosen at start):
//! - `--mib N` MiB of MAP_PRIVATE|MAP_ANONYMOUS memory; page `p` holds the pattern of
//!   its generation `g[p]` (seed mixed with `g`, word index from the region's start);
//!   every page starts at generation 0;
//! - on each SIGUSR1 (a "round" `r`, counted from 1) the pages `p` with `p % 8 == r % 8`
//!   are rewritten with generation `r`, and in round 2 a new 1 MiB region is mapped and
//!   filled (memory a pre-dump before it cannot have tracked); then `PATH.round` says `r`;
//! - the generations are kept in a heap vector, itself checked against the rounds done.
//!
//! The check verifies every word of both regions against the generation of its page.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criu_testprogs::{
    check_pattern, fill_pattern, install_handler, random_seed, write_atomic, Mapping, Program,
    Report,
};

const PAGE_WORDS: usize = 4096 / 8;
const LATE_BYTES: usize = 1 << 20;

static ROUND_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_round(_signo: libc::c_int) {
    ROUND_REQUESTED.store(true, Ordering::SeqCst);
}

/// The seed of generation `g`.
fn seed_at(seed: u64, g: u64) -> u64 {
    (seed ^ g.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1
}

/// The seed of the late region (mapped in round 2).
fn late_seed(seed: u64) -> u64 {
    (seed.rotate_left(17) ^ 0x1A7E_0000_0000_0001) | 1
}

fn main() {
    let mut program = Program::start(
        "tp-memtrack",
        &[(
            "--mib N",
            "MiB of private anonymous memory (default 16); SIGUSR1 rewrites 1/8 of its pages",
        )],
    );
    let mib: usize = program.opt_or("--mib", 16);
    let seed = random_seed();
    program.must(
        install_handler(libc::SIGUSR1, on_round, libc::SA_RESTART, &[]),
        "install the SIGUSR1 handler",
    );
    let mut region = program.must(
        Mapping::anonymous(mib << 20, false),
        "mmap the tracked region",
    );
    let pages = (mib << 20) / 4096;
    let mut generation = vec![0u64; pages];
    fill_pattern(region.words_mut(), seed_at(seed, 0), 0);
    let mut late: Option<Mapping> = None;
    let mut round = 0u64;
    let round_file = program.companion(".round");
    program.must(write_atomic(&round_file, b"0\n"), "write PATH.round");

    program.ready();
    program.work_until_check(Duration::from_millis(10), || {
        if !ROUND_REQUESTED.swap(false, Ordering::SeqCst) {
            return;
        }
        round += 1;
        let words = region.words_mut();
        for p in (0..pages).filter(|p| p % 8 == (round % 8) as usize) {
            let range = p * PAGE_WORDS..(p + 1) * PAGE_WORDS;
            fill_pattern(
                &mut words[range],
                seed_at(seed, round),
                (p * PAGE_WORDS) as u64,
            );
            generation[p] = round;
        }
        if round == 2 {
            let mut m = program.must(
                Mapping::anonymous(LATE_BYTES, false),
                "mmap the late region",
            );
            fill_pattern(m.words_mut(), late_seed(seed), 0);
            late = Some(m);
        }
        let written = write_atomic(&round_file, format!("{round}\n").as_bytes());
        program.must(written, "write PATH.round");
    });

    let mut report = Report::new();
    let words = region.words();
    let mut bad_pages = 0usize;
    let mut first_bad = None;
    for (p, &g) in generation.iter().enumerate() {
        let range = p * PAGE_WORDS..(p + 1) * PAGE_WORDS;
        if let Some(m) = check_pattern(&words[range], seed_at(seed, g), (p * PAGE_WORDS) as u64) {
            bad_pages += 1;
            first_bad.get_or_insert(format!("page {p} (generation {g}): {m}"));
        }
        // The generation table itself: what the rounds done wrote.
        let expected = (1..=round)
            .rev()
            .find(|r| p % 8 == (r % 8) as usize)
            .unwrap_or(0);
        if g != expected {
            report.fail(format!(
                "generation table: page {p} says {g}, rounds say {expected}"
            ));
            break;
        }
    }
    if let Some(first) = first_bad {
        report.fail(format!(
            "{bad_pages} pages of the {mib} MiB region differ; first: {first}"
        ));
    }
    match (&late, round >= 2) {
        (Some(m), true) => {
            if let Some(m) = check_pattern(m.words(), late_seed(seed), 0) {
                report.fail(format!("late region: {m}"));
            }
        }
        (None, true) => report.fail("the late region is missing"),
        _ => {}
    }
    program.finish(&report);
}
