//! tp-cgroups: a process and one worker thread in cgroups of their own; the check proves
//! both are still in the cgroups they were in at `ready` (as /proc/thread-self/cgroup
//! shows them), and that the worker still runs.
//!
//! State:
//! - `--join FILES` (comma-separated): the process writes `0` to each (a `cgroup.procs`
//!   file: the whole process moves into that cgroup).
//! - `--worker-join FILES` (comma-separated): the worker thread writes its tid to each
//!   (a v1 `tasks` file: only the worker moves).
//! - `--unshare-cgns 1`: once in those cgroups, and before the worker starts (which
//!   inherits it), the process unshares a cgroup namespace rooted there: it then sees
//!   its cgroups as `/` and the worker's as `/worker`.
//!
//! `PATH.worker` holds the worker's tid, for a harness.
//!
//! Check: the main thread's and the worker's /proc/thread-self/cgroup equal what they
//! were at `ready`; the worker's counter grows again within 2 s.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use criu_testprogs::{cvt, gettid, wait_until, write_atomic, Program, Report};

fn own_cgroups() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/thread-self/cgroup")
}

fn join_all(files: &str, what: &str) -> Result<(), String> {
    for f in files.split(',').filter(|f| !f.is_empty()) {
        std::fs::write(f, what).map_err(|e| format!("writing {what} to {f}: {e}"))?;
    }
    Ok(())
}

fn main() {
    let mut program = Program::start(
        "tp-cgroups",
        &[
            ("--join FILES", "cgroup.procs files the process joins"),
            ("--worker-join FILES", "tasks files the worker thread joins"),
            ("--unshare-cgns 1", "unshare a cgroup namespace once joined"),
        ],
    );
    let join: String = program.opt_or("--join", String::new());
    let worker_join: String = program.opt_or("--worker-join", String::new());
    program.must(join_all(&join, "0"), "joining the process's cgroups");
    if program.opt_or("--unshare-cgns", 0) == 1 {
        // SAFETY: unshare(2) with a flag that changes only this thread's namespaces.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWCGROUP) };
        program.must(cvt(ret), "unsharing a cgroup namespace");
    }

    let counter = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = mpsc::channel();
    let (report_tx, report_rx) = mpsc::channel();
    let worker = {
        let (counter, stop) = (counter.clone(), stop.clone());
        std::thread::spawn(move || {
            let tid = gettid();
            let joined = join_all(&worker_join, &tid.to_string())
                .and_then(|_| own_cgroups().map_err(|e| e.to_string()));
            let _ = started_tx.send((tid, joined.clone()));
            while !stop.load(Ordering::Relaxed) {
                counter.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = report_tx.send(own_cgroups().map_err(|e| e.to_string()));
        })
    };
    let (tid, worker_at_start) = program.must(
        started_rx.recv_timeout(Duration::from_secs(10)),
        "waiting for the worker",
    );
    let worker_at_start = program.must(worker_at_start, "the worker's cgroups");
    let main_at_start = program.must(own_cgroups(), "reading our cgroups");
    program.must(
        write_atomic(&program.companion(".worker"), format!("{tid}\n").as_bytes()),
        "writing the worker's tid",
    );
    program.ready();
    program.work_until_check(Duration::from_millis(50), || {});

    let mut report = Report::new();
    match own_cgroups() {
        Ok(now) => report.check_eq("main thread's cgroups", now, main_at_start),
        Err(e) => report.fail(format!("reading our cgroups: {e}")),
    }
    let before = counter.load(Ordering::Relaxed);
    let grew = wait_until(Duration::from_secs(2), || {
        counter.load(Ordering::Relaxed) > before
    });
    report.check(grew, || "the worker stopped counting".into());
    stop.store(true, Ordering::Relaxed);
    match report_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(now)) => report.check_eq("worker's cgroups", now, worker_at_start),
        Ok(Err(e)) => report.fail(format!("worker reading its cgroups: {e}")),
        Err(_) => report.fail("the worker did not answer"),
    }
    let _ = worker.join();
    program.finish(&report);
}
