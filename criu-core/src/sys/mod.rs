//! The engine's only unsafe code: thin wrappers over the kernel interfaces it uses, one
//! module per domain (ptrace, processes, memory, fds, sockets, IPC, namespaces,
//! terminals, the watchdogs). Each wrapper checks the result and returns `io::Result`;
//! each unsafe block says why it is sound. Callers name them through `sys::`.
//!
//! ptrace requests must come from the thread that attached the tracee (see
//! `freeze.rs`); the other calls work from any thread.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// A process or thread id in the dumper's pid namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(pub i32);

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

mod cgmount;
mod fd;
mod fs;
mod hugetlb;
mod ipc;
mod mem;
mod mnt;
mod mqueue;
mod ns;
mod pidfd;
mod process;
mod ptrace;
mod socket;
mod tty;
mod uring;
mod userns;
mod watchdog;
pub use cgmount::*;
pub use fd::*;
pub use fs::*;
pub use hugetlb::*;
pub use ipc::*;
pub use mem::*;
pub use mnt::*;
pub use mqueue::*;
pub use ns::*;
pub use pidfd::*;
pub use process::*;
pub use ptrace::*;
pub use socket::*;
pub use tty::*;
pub use uring::*;
pub use userns::*;
pub use watchdog::*;
