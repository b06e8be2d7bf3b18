//! Dump speed on real processes: 1 GiB of touched anonymous memory dumped to tmpfs, and
//! the seed's two-process shell loop, into a fresh directory under /dev/shm; only the
//! dump itself is timed. The default dump kills its process, so that case starts a new
//! one per iteration; the others dump with --leave-running. Each case runs the library
//! call, the `criu-rs` binary (timed as a command, start-up included, as CRIU is), and,
//! when a working CRIU 4.2 is on PATH or in `$CRIU`, CRIU for a side-by-side ratio. With
//! `CRIU_RS_BASELINE=PATH` (another build of `criu-rs`), that build is timed the same way,
//! for before/after comparisons in one run.
//!
//! `snapshot_frozen` times how long a live snapshot (`-R`) of a 1 GiB process whose
//! writer rewrites its memory keeps it frozen: criu-rs's default (write protection for
//! a process this big), its snapshot child (`fork`), and CRIU.
//!
//! Needs the release test programs: `cargo build --release --workspace` first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use criu_core::dump::protect::SnapshotMethod;
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

/// Who dumps: criu-core as a library call in this process, the `criu-rs` binary (what a
/// user types, with its start-up, as CRIU is timed), or CRIU itself.
#[derive(Clone, Copy)]
enum Dumper<'a> {
    Library,
    Binary(&'a Path),
    Criu(&'a Path),
}

impl Dumper<'_> {
    /// One dump of `pid` into `dir` (`-R` when `leave_running`); returns its time.
    fn time(self, pid: i32, dir: &Path, leave_running: bool) -> Duration {
        let program = match self {
            Dumper::Library => {
                let start = Instant::now();
                dump(&DumpOptions {
                    leave_running,
                    ..DumpOptions::new(Pid(pid), dir)
                })
                .expect("dump");
                return start.elapsed();
            }
            Dumper::Binary(p) | Dumper::Criu(p) => p,
        };
        let mut cmd = Command::new(program);
        cmd.args(["dump", "-j", "-t", &pid.to_string(), "-D"])
            .arg(dir);
        if leave_running {
            cmd.arg("-R");
        }
        let start = Instant::now();
        let st = cmd.status().expect("run the dumper");
        let took = start.elapsed();
        assert!(st.success(), "{} dump failed", program.display());
        took
    }
}

/// Times `iters` dumps of `pid` with --leave-running, each into a fresh directory.
fn time_dumps(dumper: Dumper<'_>, pid: i32, base: &Path, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for i in 0..iters {
        let dir = fresh_dir(base, i % 2);
        total += dumper.time(pid, &dir, true);
        let _ = std::fs::remove_dir_all(&dir);
    }
    total
}

/// Times `iters` default (killing) dumps of a fresh 1 GiB process each; the process is
/// started and filled outside the timed part, then left `idle` before the dump.
fn time_killing_dumps(
    dumper: Dumper<'_>,
    scratch: &Path,
    shm: &Path,
    idle: Duration,
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    for i in 0..iters {
        let mut hog = TestProcess::start(scratch, "memhog", &["--mib", "1024"]);
        let dir = fresh_dir(shm, i % 2);
        std::thread::sleep(idle);
        total += dumper.time(hog.pid, &dir, false);
        let _ = hog.child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
    total
}

fn bench_dump(c: &mut Criterion) {
    let scratch = ScratchDir::new("bench-dump");
    let shm = PathBuf::from(format!("/dev/shm/criu-rs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&shm).unwrap();
    let criu = criu_rs_suite::criu_4_or_skip("the side-by-side runs");
    let binary = criu_rs_suite::bin_dir().join("criu-rs");
    let mut dumpers = vec![("criu-rs", Dumper::Library)];
    if binary.exists() {
        dumpers.push(("criu-rs-binary", Dumper::Binary(&binary)));
    }
    let baseline = criu_rs_suite::baseline_criu_rs();
    if let Some(baseline) = &baseline {
        dumpers.push(("criu-rs-baseline", Dumper::Binary(baseline)));
    }
    if let Some(criu) = &criu {
        dumpers.push(("criu-4.2", Dumper::Criu(criu)));
    }

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
        for &(tool, dumper) in &dumpers {
            group.bench_function(format!("1gib_to_tmpfs{name}/{tool}"), |b| {
                b.iter_custom(|n| time_killing_dumps(dumper, scratch.path(), &shm, idle, n))
            });
        }
    }
    {
        let hog = TestProcess::start(scratch.path(), "memhog", &["--mib", "1024"]);
        for &(tool, dumper) in &dumpers {
            group.bench_function(format!("1gib_to_tmpfs_leave_running/{tool}"), |b| {
                b.iter_custom(|n| time_dumps(dumper, hog.pid, &shm, n))
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
        for &(tool, dumper) in &dumpers {
            group.bench_function(format!("shell_loop/{tool}"), |b| {
                b.iter_custom(|n| time_dumps(dumper, sh.pid, &shm, n))
            });
        }
    }
    group.finish();

    // Downtime of a live snapshot: 1 GiB rewritten all the time by tp-snapshot's writer,
    // dumped with -R; what is timed is how long the tree was frozen (the dump's own
    // stats-dump, CRIU's too), not the dump's wall time.
    let mut frozen = c.benchmark_group("snapshot_frozen");
    frozen
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(2));
    {
        let writer = TestProcess::start(scratch.path(), "snapshot", &["--mib", "1024"]);
        let mut cases: Vec<(&str, Frozen)> = vec![
            ("criu-rs", Frozen::Library(SnapshotMethod::Auto)),
            ("criu-rs-fork", Frozen::Library(SnapshotMethod::Fork)),
        ];
        if let Some(criu) = &criu {
            cases.push(("criu-4.2", Frozen::Criu(criu)));
        }
        for (tool, case) in cases {
            frozen.bench_function(format!("1gib_writer/{tool}"), |b| {
                b.iter_custom(|n| {
                    (0..n)
                        .map(|i| case.frozen(writer.pid, &fresh_dir(&shm, i % 2)))
                        .sum()
                })
            });
        }
    }
    frozen.finish();
    let _ = std::fs::remove_dir_all(&shm);
}

/// Who takes a live snapshot whose frozen time is measured.
#[derive(Clone, Copy)]
enum Frozen<'a> {
    Library(SnapshotMethod),
    Criu(&'a Path),
}

impl Frozen<'_> {
    /// One `-R` dump of `pid` into `dir`; returns how long the tree was frozen.
    fn frozen(self, pid: i32, dir: &Path) -> Duration {
        let us = match self {
            Frozen::Library(method) => {
                let stats = dump(&DumpOptions {
                    leave_running: true,
                    snapshot_method: method,
                    ..DumpOptions::new(Pid(pid), dir)
                })
                .expect("dump");
                u64::from(stats.frozen_time)
            }
            Frozen::Criu(criu) => {
                let st = Command::new(criu)
                    .args(["dump", "-j", "-R", "-t", &pid.to_string(), "-D"])
                    .arg(dir)
                    .status()
                    .expect("run CRIU");
                assert!(st.success(), "CRIU's dump failed");
                let mut r = criu_images::ImageReader::open(dir.join("stats-dump")).unwrap();
                let entry: criu_images::pb::StatsEntry = r.next_entry().unwrap().unwrap();
                u64::from(entry.dump.unwrap().frozen_time)
            }
        };
        let _ = std::fs::remove_dir_all(dir);
        Duration::from_micros(us)
    }
}

criterion_group!(benches, bench_dump);
criterion_main!(benches);
