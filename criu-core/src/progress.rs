//! How far the long part of a dump or restore has come: the bytes of memory it has to
//! copy and has copied so far.
//!
//! The engine only counts, with one relaxed atomic add per copied chunk (megabytes), so
//! counting costs nothing measurable on the copy path. Whoever wants to show the counts
//! reads them from another thread (criu-rs draws a progress bar on a terminal); the
//! engine knows nothing of terminals.
//!
//! Bytes are planned copy by copy, as each process's pages are about to be copied: in a
//! tree of several processes the total grows as the copy reaches each of them.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// What the counts are about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No page copied yet: freezing and collecting state, or forking the tree.
    Preparing,
    /// Pages copied by the dump while the tree is frozen (or by a pre-dump while it
    /// runs), or filled into the tree by a restore.
    Pages,
    /// A live snapshot's pages, copied after the tree runs again (`dump -R`).
    Snapshot,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            1 => Phase::Pages,
            2 => Phase::Snapshot,
            _ => Phase::Preparing,
        }
    }
}

/// The counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressNow {
    pub phase: Phase,
    /// Bytes to copy in this phase, as far as they are known yet.
    pub planned: u64,
    /// Bytes copied in this phase.
    pub done: u64,
}

/// Counts shared between the engine (which adds to them) and a front-end (which reads
/// them). Clones share the same counts.
#[derive(Clone, Default)]
pub struct Progress(Arc<Counts>);

#[derive(Default)]
struct Counts {
    phase: AtomicU8,
    planned: AtomicU64,
    done: AtomicU64,
}

impl Progress {
    pub fn new() -> Progress {
        Progress::default()
    }

    /// Adds `bytes` to the bytes to copy; the first copy ends the preparing phase.
    pub fn plan(&self, bytes: u64) {
        self.0.planned.fetch_add(bytes, Ordering::Relaxed);
        // After the bytes: whoever sees the page phase sees what it has to copy.
        let _ = self.0.phase.compare_exchange(
            Phase::Preparing as u8,
            Phase::Pages as u8,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }

    /// Counts `bytes` copied.
    pub fn advance(&self, bytes: u64) {
        self.0.done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Starts `phase`, with nothing planned or copied in it yet.
    pub fn begin(&self, phase: Phase) {
        self.0.planned.store(0, Ordering::Relaxed);
        self.0.done.store(0, Ordering::Relaxed);
        self.0.phase.store(phase as u8, Ordering::Release);
    }

    /// The counts now (each read on its own: `done` may run a chunk ahead of `planned`
    /// for a moment when a new copy starts).
    pub fn now(&self) -> ProgressNow {
        let phase = Phase::from_u8(self.0.phase.load(Ordering::Acquire));
        ProgressNow {
            phase,
            planned: self.0.planned.load(Ordering::Relaxed),
            done: self.0.done.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Progress({:?})", self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_phase() {
        let progress = Progress::new();
        let seen = progress.clone();
        assert_eq!(seen.now().phase, Phase::Preparing);
        progress.plan(8 << 20);
        progress.advance(4 << 20);
        progress.plan(2 << 20);
        assert_eq!(
            seen.now(),
            ProgressNow {
                phase: Phase::Pages,
                planned: 10 << 20,
                done: 4 << 20
            }
        );
        progress.begin(Phase::Snapshot);
        progress.plan(1 << 20);
        assert_eq!(
            seen.now(),
            ProgressNow {
                phase: Phase::Snapshot,
                planned: 1 << 20,
                done: 0
            }
        );
    }
}
