//! SIGTERM, SIGINT, SIGHUP and SIGQUIT during a dump or a restore: the work stops
//! cleanly instead of the process dying in the middle of it.
//!
//! The signals are blocked before any thread exists (every thread inherits the mask)
//! and one thread takes them with sigwait(2) and raises the engine's `Interrupt`. The
//! engine then fails with its `Interrupted` error after undoing what it changed: the
//! dumped tree resumes as it was, a half-restored tree is killed. Once the engine has
//! returned (`Signals::finish`), a signal has its usual effect again. Tasks the engine
//! creates get their signal masks set explicitly, never this one.

use criu_core::interrupt::Interrupt;
use criu_core::sys;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The signals that stop the work.
const STOP_SIGNALS: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

pub struct Signals {
    interrupt: Interrupt,
    finished: Arc<AtomicBool>,
}

impl Signals {
    /// Blocks the stop signals in the calling thread and starts the thread that takes
    /// them. Call it from `main` before any other thread is started.
    pub fn catch() -> Signals {
        let blocked = sys::block_signals(&STOP_SIGNALS);
        let signals = Signals {
            interrupt: Interrupt::new(),
            finished: Arc::new(AtomicBool::new(false)),
        };
        if let Err(e) = blocked {
            tracing::warn!("blocking the stop signals: {e}; they end criu-rs at once");
            return signals;
        }
        let interrupt = signals.interrupt.clone();
        let finished = signals.finished.clone();
        let started = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let Ok(sig) = sys::wait_for_signal(&STOP_SIGNALS) else {
                    continue;
                };
                if finished.load(Ordering::SeqCst) {
                    sys::default_effect(sig);
                }
                tracing::warn!(
                    "{} received: stopping and undoing what was done",
                    criu_core::interrupt::signal_name(sig)
                );
                interrupt.raise(sig);
            });
        if started.is_err() {
            // Without the thread, the signals must not stay blocked for nothing.
            let _ = sys::unblock_signals(&STOP_SIGNALS);
        }
        signals
    }

    /// The interrupt to hand to the engine.
    pub fn interrupt(&self) -> Interrupt {
        self.interrupt.clone()
    }

    /// The engine returned: from now on the signals act as they usually do (a restore
    /// that waits for its tree ends on them). A signal that came too late to stop work
    /// that `succeeded` has that effect now; after a failure the caller reports it.
    pub fn finish(&self, succeeded: bool) {
        self.finished.store(true, Ordering::SeqCst);
        if let (true, Some(sig)) = (succeeded, self.interrupt.signal()) {
            sys::default_effect(sig);
        }
    }
}
