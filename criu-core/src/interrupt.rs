//! Asking a running dump or restore to stop early, and cleanly.
//!
//! A front-end that catches SIGTERM, SIGINT, SIGHUP or SIGQUIT (a timeout, Ctrl-C, a
//! closed terminal) raises the `Interrupt` it passed in the options. The engine looks
//! at it between stages and inside its long loops (page copies) and then fails with
//! `Interrupted`: every guard runs as for any other error, so a dump resumes its tree
//! untouched (released memory written back) and a restore kills what it had built.
//! The engine itself never installs signal handlers: that is the front-end's policy.

use std::fmt;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

/// A request to stop, shared between the front-end (which raises it) and the engine
/// (which looks at it). Clones share the same state.
#[derive(Clone, Default)]
pub struct Interrupt(Arc<AtomicI32>);

impl Interrupt {
    pub fn new() -> Interrupt {
        Interrupt::default()
    }

    /// Asks the work to stop because of signal `signal` (the first request wins).
    pub fn raise(&self, signal: i32) {
        let _ = self
            .0
            .compare_exchange(0, signal.max(1), Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The signal that asked to stop, if any.
    pub fn signal(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            sig => Some(sig),
        }
    }

    /// `Err` once a stop was asked for.
    pub fn check(&self) -> Result<(), Interrupted> {
        self.signal().map_or(Ok(()), |sig| Err(Interrupted(sig)))
    }
}

impl fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Interrupt({:?})", self.signal())
    }
}

/// The work stopped because the front-end asked it to, on this signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted by {}", signal_name(*.0))]
pub struct Interrupted(pub i32);

impl From<Interrupted> for std::io::Error {
    fn from(e: Interrupted) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::Interrupted, e)
    }
}

impl Interrupted {
    /// The `Interrupted` an io::Error made by `From` above carries, if it is one.
    pub fn from_io(e: &std::io::Error) -> Option<Interrupted> {
        e.get_ref()?.downcast_ref::<Interrupted>().copied()
    }
}

/// The usual name of a signal (`SIGTERM`), or `signal N`.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_signal_is_kept_and_named() {
        let i = Interrupt::new();
        assert!(i.check().is_ok());
        let shared = i.clone();
        shared.raise(libc::SIGTERM);
        i.raise(libc::SIGINT);
        assert_eq!(i.check(), Err(Interrupted(libc::SIGTERM)));
        assert_eq!(i.check().unwrap_err().to_string(), "interrupted by SIGTERM");
        let io: std::io::Error = Interrupted(libc::SIGHUP).into();
        assert_eq!(Interrupted::from_io(&io), Some(Interrupted(libc::SIGHUP)));
        assert_eq!(signal_name(40), "signal 40");
    }
}
