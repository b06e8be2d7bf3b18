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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The signals that stop the work.
const STOP_SIGNALS: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

pub struct Signals {
    interrupt: Interrupt,
    finished: Arc<AtomicBool>,
}

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise and fill it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in STOP_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

impl Signals {
    /// Blocks the stop signals in the calling thread and starts the thread that takes
    /// them. Call it from `main` before any other thread is started.
    pub fn catch() -> Signals {
        let set = stop_set();
        // SAFETY: pthread_sigmask reads `set` and changes only this thread's mask.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        let signals = Signals {
            interrupt: Interrupt::new(),
            finished: Arc::new(AtomicBool::new(false)),
        };
        let interrupt = signals.interrupt.clone();
        let finished = signals.finished.clone();
        let started = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: sigwait reads `set` and writes one int into `sig`.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                if finished.load(Ordering::SeqCst) {
                    default_effect(sig);
                }
                tracing::warn!(
                    "{} received: stopping and undoing what was done",
                    criu_core::interrupt::signal_name(sig)
                );
                interrupt.raise(sig);
            });
        if started.is_err() {
            // Without the thread, the signals must not stay blocked for nothing.
            // SAFETY: as above.
            unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
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
            default_effect(sig);
        }
    }
}

/// Lets `sig` do what it does by default (end the process): its default disposition,
/// unblocked in this thread, sent to this thread.
fn default_effect(sig: libc::c_int) {
    // SAFETY: sigset_t is plain data; the calls change this thread's mask and the
    // process's disposition of `sig`, then signal this very thread.
    unsafe {
        let mut one: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut one);
        libc::sigaddset(&mut one, sig);
        libc::signal(sig, libc::SIG_DFL);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
        libc::raise(sig);
    }
}
