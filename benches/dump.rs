//! Dump speed on real processes: 1 GiB of touched anonymous memory dumped to tmpfs, and
//! the seed's two-process shell loop, into a fresh directory under /dev/shm; only the
//! dump itself is timed. The default dump kills its process, so that case starts a new
//! one per iteration; the others dump with --leave-running. When a working `criu`
//! (CRIU 4.2) is on PATH, the same dumps run through it for a side-by-side ratio.
//!
//! Needs the release test programs: `cargo build --release --workspace` first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use criu_core::dump::{dump, DumpOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{wait_until, ScratchDir, TestProcess};

/// Long enough for the guest to hand its free memory back (free page reporting waits 2 s).
const IDLE: Duration = Duration::from_secs(3);

const SHELL_LOOP: &str = "i=0; while true; do echo $i; i=$(expr $i + 1); sleep 1; done";

fn fresh_dir(base: &Path, i: u64) -> PathBuf {
    let dir = base.join(format!("d{i}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Times `iters` dumps of `pid`, each into a fresh directory under `base`.
fn time_dumps(pid: i32, base: &Path, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for i in 0..iters {
        let dir = fresh_dir(base, i % 2);
        let start = Instant::now();
        dump(&DumpOptions {
            leave_running: true,
            ..DumpOptions::new(Pid(pid), &dir)
        })
        .expect("dump");
        total += start.elapsed();
        let _ = std::fs::remove_dir_all(&dir);
    }
    total
}

/// CRIU 4.2 for the side-by-side runs, if this machine has a working one.
fn working_criu() -> Option<PathBuf> {
    let criu = criu_rs_suite::criu_4();
    if criu.is_none() {
        eprintln!("no working criu (CRIU 4.2) on PATH or in $CRIU: side-by-side runs skipped");
    }
    criu
}

/// One `criu dump` of `pid` into `dir` (`-R` when `leave_running`); returns its time.
fn time_criu_dump(criu: &Path, pid: i32, dir: &Path, leave_running: bool) -> Duration {
    let mut cmd = Command::new(criu);
    cmd.args(["dump", "-j", "-t", &pid.to_string(), "-D"])
        .arg(dir);
    if leave_running {
        cmd.arg("-R");
    }
    let start = Instant::now();
    let st = cmd.status().expect("run criu");
    let took = start.elapsed();
    assert!(st.success(), "criu dump failed");
    took
}

fn time_criu_dumps(criu: &Path, pid: i32, base: &Path, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for i in 0..iters {
        let dir = fresh_dir(base, i % 2);
        total += time_criu_dump(criu, pid, &dir, true);
        let _ = std::fs::remove_dir_all(&dir);
    }
    total
}

/// Times `iters` default (killing) dumps of a fresh 1 GiB process each, with criu-rs or
/// with CRIU; the process is started and filled outside the timed part, then left `idle`
/// before the dump.
fn time_killing_dumps(
    scratch: &Path,
    shm: &Path,
    criu: Option<&Path>,
    idle: Duration,
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    for i in 0..iters {
        let mut hog = TestProcess::start(scratch, "memhog", &["--mib", "1024"]);
        let dir = fresh_dir(shm, i % 2);
        std::thread::sleep(idle);
        total += match criu {
            Some(criu) => time_criu_dump(criu, hog.pid, &dir, false),
            None => {
                let start = Instant::now();
                dump(&DumpOptions::new(Pid(hog.pid), &dir)).expect("dump");
                start.elapsed()
            }
        };
        let _ = hog.child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
    total
}

fn bench_dump(c: &mut Criterion) {
    let scratch = ScratchDir::new("bench-dump");
    let shm = PathBuf::from(format!("/dev/shm/criu-rs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&shm).unwrap();
    let criu = working_criu();

    let mut group = c.benchmark_group("dump");
    group
        .sample_size(10)
        // One iteration per sample for the slow cases instead of 1, 2, ... 10.
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(30))
        .warm_up_time(Duration::from_secs(3));
    // The default dump kills the tree: a fresh 1 GiB process per iteration, started and
    // filled outside the timed part.
    // Right after the process filled its memory, and after it sat idle for a while, as a
    // long-running server does: on these VMs (free page reporting) the machine's free
    // memory is then handed back to the host, and every page a dump writes costs a host
    // fault unless it reuses memory freed just before.
    for (name, idle) in [("", Duration::ZERO), ("_after_idle", IDLE)] {
        let tools = [("criu-rs", None), ("criu-4.2", criu.as_deref())];
        for (tool, criu) in tools {
            if tool != "criu-rs" && criu.is_none() {
                continue;
            }
            group.bench_function(format!("1gib_to_tmpfs{name}/{tool}"), |b| {
                b.iter_custom(|n| time_killing_dumps(scratch.path(), &shm, criu, idle, n))
            });
        }
    }
    {
        let hog = TestProcess::start(scratch.path(), "memhog", &["--mib", "1024"]);
        group.bench_function("1gib_to_tmpfs_leave_running/criu-rs", |b| {
            b.iter_custom(|n| time_dumps(hog.pid, &shm, n))
        });
        if let Some(criu) = &criu {
            group.bench_function("1gib_to_tmpfs_leave_running/criu-4.2", |b| {
                b.iter_custom(|n| time_criu_dumps(criu, hog.pid, &shm, n))
            });
        }
    }
    {
        let out = scratch.path().join("loop.out");
        let sh = TestProcess::spawn(&["/bin/sh", "-c", SHELL_LOOP], &out);
        wait_until("the loop's sleep child", Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{}/task/{}/children", sh.pid, sh.pid))
                .map(|c| !c.trim().is_empty())
                .unwrap_or(false)
        });
        group.bench_function("shell_loop/criu-rs", |b| {
            b.iter_custom(|n| time_dumps(sh.pid, &shm, n))
        });
        if let Some(criu) = &criu {
            group.bench_function("shell_loop/criu-4.2", |b| {
                b.iter_custom(|n| time_criu_dumps(criu, sh.pid, &shm, n))
            });
        }
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&shm);
}

criterion_group!(benches, bench_dump);
criterion_main!(benches);
