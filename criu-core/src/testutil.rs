//! Helpers for tests that start real processes: every child runs in its own process
//! group and is killed and reaped when the guard drops, also when the test fails.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::proc::ProcDir;
use crate::sys::Pid;

pub struct Spawned {
    pub child: Child,
}

impl Spawned {
    /// Starts `argv` in a new process group with stdio on /dev/null.
    pub fn start(argv: &[&str]) -> Spawned {
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn test process");
        Spawned { child }
    }

    pub fn pid(&self) -> Pid {
        Pid(self.child.id() as i32)
    }

    /// Waits (bounded) until `cond` holds for this process's /proc view.
    pub fn wait_until(&self, what: &str, mut cond: impl FnMut(&ProcDir) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(dir) = ProcDir::open(self.pid()) {
                if cond(&dir) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Our own child's process group.
        let _ = crate::sys::kill(crate::sys::Pid(-(self.child.id() as i32)), libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The one-letter state of a task from /proc (`S`, `R`, `t`...).
pub fn task_state(pid: Pid) -> char {
    ProcDir::open(pid)
        .and_then(|d| d.stat())
        .map(|s| s.state)
        .unwrap_or('?')
}

/// Waits (bounded) until `pid` is in `state`; returns the last state seen.
pub fn settle_state(pid: Pid, state: char) -> char {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = task_state(pid);
        if now == state || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A scratch directory (its canonical path) removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("criu-rs-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        TempDir(std::fs::canonicalize(dir).expect("canonical scratch path"))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The raw number of an fd, for calls that take one.
pub fn raw(f: &impl std::os::fd::AsFd) -> std::os::fd::RawFd {
    use std::os::fd::AsRawFd;
    f.as_fd().as_raw_fd()
}
