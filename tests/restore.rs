//! The restore engine on images our dump wrote: the restored program checks itself.

use std::path::Path;
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{task_state, wait_for_file, wait_until, ScratchDir, TestProcess};

/// Kills and reaps a restored process (our child) when the test ends.
struct Reaper(i32);

impl Drop for Reaper {
    fn drop(&mut self) {
        // SAFETY: kill(2) and waitpid(2) on our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(self.0, &mut status, 0);
        }
    }
}

/// Dumps the program (killing it), reaps it, and restores it from the images.
fn dump_kill_restore(tp: &mut TestProcess, images: &Path) -> Reaper {
    std::fs::create_dir_all(images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    let restored = restore(&RestoreOptions::new(images)).unwrap_or_else(|e| panic!("restore: {e}"));
    assert_eq!(restored.pid.0, tp.pid, "same pid");
    Reaper(restored.pid.0)
}

fn check_restored(pid: i32, ready_file: &Path) -> String {
    // SAFETY: kill(2) on the restored child.
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    wait_for_file(
        &ready_file.with_extension("ready.result"),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|| "fail: no result".into())
}

#[test]
fn memhog_restores_with_its_memory() {
    let scratch = ScratchDir::new("restore-memhog");
    let mut tp = TestProcess::start(scratch.path(), "memhog", &["--mib", "64"]);
    let ready = tp.ready_file.clone();
    let reaper = dump_kill_restore(&mut tp, &scratch.path().join("images"));
    wait_until("running", Duration::from_secs(10), || {
        matches!(task_state(reaper.0), Some('S') | Some('R'))
    });
    assert_eq!(check_restored(reaper.0, &ready), "pass");
}

#[test]
fn looper_counts_on_in_the_same_file() {
    let scratch = ScratchDir::new("restore-looper");
    let mut tp = TestProcess::start(scratch.path(), "looper", &["--interval-ms", "50"]);
    let out = scratch.path().join("looper.out");
    wait_until("some output", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.lines().count() > 3)
    });
    let reaper = dump_kill_restore(&mut tp, &scratch.path().join("images"));
    let before = std::fs::read_to_string(&out).unwrap().lines().count();
    wait_until("more output", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).unwrap().lines().count() > before + 3
    });
    let text = std::fs::read_to_string(&out).unwrap();
    let numbers: Vec<u64> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(
            *n, i as u64,
            "the count goes on without reset or gap: {numbers:?}"
        );
    }
    drop(reaper);
}
