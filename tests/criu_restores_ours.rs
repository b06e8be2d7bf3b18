//! The other direction of image compatibility: CRIU 4.2 restores what criu-rs dumps, and
//! the restored programs pass their own self-checks.
//!
//! Needs a working CRIU 4.2 (`$CRIU`, or `criu` on PATH passing `criu check`). Debian's
//! criu 3.17, what CI installs, does not run on this kernel, so there the test says so
//! and passes without checking anything; on a machine with CRIU 4.2 it runs for real.

use std::path::Path;
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{criu_4_or_skip, criu_restore, wait_until, ScratchDir, TestProcess};

/// The pids of the tree rooted at `pid`, from /proc.
fn tree_pids(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        out.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
        i += 1;
    }
    out
}

/// Dumps tp-`name` with criu-rs (killing it), restores it with CRIU, asks it to check itself.
fn criu_restores(criu: &Path, name: &str, args: &[&str]) {
    let scratch = ScratchDir::new(&format!("criu-restores-{name}"));
    let mut tp = TestProcess::start(scratch.path(), name, args);
    let pids = tree_pids(tp.pid);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump {name}: {e}"));
    let _ = tp.child.wait();
    for p in &pids {
        wait_until("the dumped tree to go", Duration::from_secs(10), || {
            !Path::new(&format!("/proc/{p}")).exists()
        });
    }
    let _restored = criu_restore(criu, &images, &[], pids);
    assert_eq!(tp.check(), "pass", "tp-{name} restored by CRIU");
}

#[test]
fn criu_4_2_restores_our_dumps() {
    let Some(criu) = criu_4_or_skip("every check of this test") else {
        return;
    };
    criu_restores(&criu, "memhog", &["--mib", "64"]);
    criu_restores(&criu, "threads", &[]);
    criu_restores(&criu, "signals", &[]);
    // SA_ONSTACK handlers in threads with and without an alternate stack.
    criu_restores(&criu, "altstack", &[]);
    criu_restores(&criu, "tree", &[]);
    // Every fd kind, inotify among them: CRIU reopens a watch by the path hint we record.
    criu_restores(&criu, "fds", &[]);
    // Shared anonymous memory at offsets, mapping flags, shared fd tables, copy-on-write
    // pages, a self-connected socket, O_TMPFILE and /proc fds of the tree.
    for mode in ["shmem", "vmflags", "fdtable", "cow", "files"] {
        criu_restores(&criu, "sharing", &["--mode", mode]);
    }
    // Scheduling, seccomp filters and strict mode, loginuid, a child without a vDSO...
    criu_restores(&criu, "attrs", &[]);
    // Descriptors queued in unix sockets (SCM_RIGHTS), which no task holds.
    criu_restores(&criu, "scm", &[]);
}
