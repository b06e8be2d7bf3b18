//! The checkpoint/restore engine.
//!
//! It knows processes: it freezes a tree, reads its state from /proc and ptrace, and
//! writes it as CRIU images through `criu-images`; restore goes the other way. It returns
//! typed errors and never prints; the front-ends (`criu-rs`, `crpod`) own output, policy
//! and exit codes.
//!
//! Every system call that needs `unsafe` is wrapped in `sys`, the one module allowed to
//! hold unsafe code.
#![deny(unsafe_code)]

pub mod affinity;
pub mod arch;
pub mod cgroup;
pub mod cgroups;
pub mod check;
pub mod dump;
pub mod fdtable;
pub mod files;
pub mod freeze;
pub mod inject;
pub mod interrupt;
pub mod mounts;
pub mod netlock;
pub mod netns;
pub mod notify;
pub mod proc;
pub mod progress;
pub mod restore;
pub mod sessions;
#[allow(unsafe_code)]
pub mod sys;
#[cfg(test)]
mod testutil;
pub mod timens;

pub use criu_images as images;
pub use progress::Progress;
