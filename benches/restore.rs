//! Restore speed: 1 GiB of anonymous memory and the seed's two-process shell loop, each
//! restored again and again from one image set on tmpfs; only the restore is timed (the
//! restored tree is killed and reaped between iterations). The 1 GiB one is also
//! restored lazily (`--lazy-pages`): until it runs, and until every page is in. Each runs as a library call
//! and as the `criu-rs` binary (`restore -d`; lazily, until the command returns, and until
//! the pages server it leaves behind has every page in and exits). When a working CRIU 4.2 is in
//! `$CRIU` (or `criu` on PATH), it restores a 1 GiB process it dumped itself, side by side.
//! With `CRIU_RS_BASELINE=PATH` (another build of `criu-rs`), that build restores the same
//! images as a command too, for before/after comparisons in one run.
//!
//! Needs the release test programs: `cargo build --release --workspace` first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{task_state, wait_until, ScratchDir, TestProcess};

fn kill_tree(root: i32, pids: &[i32]) {
    for p in pids {
        // SAFETY: kill(2) on tasks of the restored tree.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: the restored root is our child; reap it so its pid is free again.
    unsafe { libc::waitpid(root, &mut status, 0) };
    for p in pids {
        wait_until("the tree to go", Duration::from_secs(10), || {
            !Path::new(&format!("/proc/{p}")).exists()
        });
    }
}

fn time_restores(images: &Path, pids: &[i32], iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let r = restore(&RestoreOptions::new(images)).expect("restore");
        total += start.elapsed();
        kill_tree(r.pid.0, pids);
    }
    total
}

/// Lazy restores (`lazy_pages`): the time until the tree runs (`restore` returns), and,
/// separately, until every page is in (the background copy done).
fn time_lazy_restores(images: &Path, pids: &[i32], iters: u64, all_in: bool) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let mut r = restore(&RestoreOptions {
            lazy_pages: true,
            ..RestoreOptions::new(images)
        })
        .expect("lazy restore");
        if all_in {
            if let Some(lazy) = r.lazy.take() {
                lazy.wait().expect("every page in");
            }
        }
        total += start.elapsed();
        kill_tree(r.pid.0, pids);
    }
    total
}

/// Dumps (and so kills) a test process into `images`, reaps it, returns its tree's pids.
fn dump_once(tp: &mut TestProcess, images: &PathBuf, pids: Vec<i32>) -> Vec<i32> {
    std::fs::create_dir_all(images).unwrap();
    dump(&DumpOptions {
        shell_job: true,
        ..DumpOptions::new(Pid(tp.pid), images)
    })
    .expect("dump");
    let _ = tp.child.wait();
    for p in &pids {
        wait_until("the dumped tree to go", Duration::from_secs(10), || {
            !Path::new(&format!("/proc/{p}")).exists()
        });
    }
    pids
}

/// Times `iters` detached restores of `images` by a command (`criu-rs` or CRIU, start-up
/// included; `-j` when the images are of a `shell_job` dump), the tree `pids` not our
/// children: killed, then waited for until their pids are free again.
fn time_detached_restores(
    program: &Path,
    shell_job: bool,
    images: &Path,
    pids: &[i32],
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut cmd = Command::new(program);
        cmd.args(["restore", "-d"]);
        if shell_job {
            cmd.arg("-j");
        }
        let start = Instant::now();
        let st = cmd
            .arg("-D")
            .arg(images)
            .status()
            .expect("run the restorer");
        total += start.elapsed();
        assert!(st.success(), "{} restore failed", program.display());
        for p in pids {
            // SAFETY: kill(2) on the tree the command just restored.
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        for p in pids {
            wait_until("the tree to go", Duration::from_secs(30), || {
                !Path::new(&format!("/proc/{p}")).exists()
            });
        }
    }
    total
}

/// Processes (not zombies) whose command line names `dir`: the lazy pages server a
/// `restore -d --lazy-pages -D dir` leaves behind.
fn servers_of(dir: &Path) -> Vec<i32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
                })
                .filter(|&pid| task_state(pid) != Some('Z'))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (up to a minute) until process `pid`, not our child, has exited: a pidfd
/// polls readable then (no busy watching that would take CPU from the pages server).
fn wait_exit(pid: i32) {
    let Ok(pidfd) = criu_core::sys::pidfd_open(Pid(pid)) else {
        return; // gone already
    };
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&pidfd),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd we own.
    let ready = unsafe { libc::poll(&mut pfd, 1, 60_000) };
    assert!(ready > 0, "the lazy pages server did not end");
}

/// Times `iters` detached lazy restores by `program` (`restore -d --lazy-pages`): until
/// the command returns (the tree runs), or with `all_in` until the pages server it
/// leaves has every page in and exits.
fn time_detached_lazy_restores(
    program: &Path,
    images: &Path,
    pids: &[i32],
    iters: u64,
    all_in: bool,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let st = Command::new(program)
            .args(["restore", "-d", "-j", "--lazy-pages", "-D"])
            .arg(images)
            .status()
            .expect("run the restorer");
        assert!(st.success(), "{} lazy restore failed", program.display());
        if all_in {
            // It said that the tree runs before the command returned: it is there
            // unless it is done already.
            for server in servers_of(images) {
                wait_exit(server);
            }
        }
        total += start.elapsed();
        for p in pids {
            // SAFETY: kill(2) on the tree the command just restored.
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        wait_until("the pages server to go", Duration::from_secs(30), || {
            servers_of(images).is_empty()
        });
        for p in pids {
            wait_until("the tree to go", Duration::from_secs(30), || {
                !Path::new(&format!("/proc/{p}")).exists()
            });
        }
    }
    total
}

fn children(pid: i32) -> Vec<i32> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn bench_restore(c: &mut Criterion) {
    let scratch = ScratchDir::new("bench-restore");
    let shm = PathBuf::from(format!(
        "/dev/shm/criu-rs-bench-restore-{}",
        std::process::id()
    ));
    // What a user types, timed as a command with its start-up, as CRIU is.
    let binary = criu_rs_suite::bin_dir().join("criu-rs");
    // Another build of criu-rs restoring the same images, for before/after comparisons.
    let baseline = criu_rs_suite::baseline_criu_rs();
    let mut group = c.benchmark_group("restore");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(2));
    {
        let mut hog = TestProcess::start(scratch.path(), "memhog", &["--mib", "1024"]);
        let images = shm.join("hog");
        let hog_pid = hog.pid;
        let pids = dump_once(&mut hog, &images, vec![hog_pid]);
        group.bench_function("1gib_from_tmpfs/criu-rs", |b| {
            b.iter_custom(|n| time_restores(&images, &pids, n))
        });
        group.bench_function("1gib_lazy_until_running/criu-rs", |b| {
            b.iter_custom(|n| time_lazy_restores(&images, &pids, n, false))
        });
        group.bench_function("1gib_lazy_until_all_pages_in/criu-rs", |b| {
            b.iter_custom(|n| time_lazy_restores(&images, &pids, n, true))
        });
        if binary.exists() {
            group.bench_function("1gib_from_tmpfs/criu-rs-binary", |b| {
                b.iter_custom(|n| time_detached_restores(&binary, true, &images, &pids, n))
            });
        }
        if let Some(baseline) = &baseline {
            group.bench_function("1gib_from_tmpfs/criu-rs-baseline", |b| {
                b.iter_custom(|n| time_detached_restores(baseline, true, &images, &pids, n))
            });
        }
        // The lazy restores as commands, this build's and the baseline's in one run.
        let lazy_programs = [(
            "criu-rs-binary",
            Some(binary.clone()).filter(|b| b.exists()),
        )]
        .into_iter()
        .chain([("criu-rs-baseline", baseline.clone())]);
        for (name, program) in lazy_programs {
            let Some(program) = program else { continue };
            for (what, all_in) in [("until_running", false), ("until_all_pages_in", true)] {
                group.bench_function(format!("1gib_lazy_{what}/{name}"), |b| {
                    b.iter_custom(|n| {
                        time_detached_lazy_restores(&program, &images, &pids, n, all_in)
                    })
                });
            }
        }
    }
    if let Some(criu) = criu_rs_suite::criu_4_or_skip("the side-by-side runs") {
        let mut hog = TestProcess::start(scratch.path(), "memhog", &["--mib", "1024"]);
        let images = shm.join("hog-criu");
        std::fs::create_dir_all(&images).unwrap();
        let st = Command::new(&criu)
            .args(["dump", "-t", &hog.pid.to_string(), "-D"])
            .arg(&images)
            .status()
            .expect("run criu");
        assert!(st.success(), "criu dump failed");
        let _ = hog.child.wait();
        let pids = vec![hog.pid];
        wait_until("the dumped hog to go", Duration::from_secs(30), || {
            !Path::new(&format!("/proc/{}", hog.pid)).exists()
        });
        group.bench_function("1gib_from_tmpfs/criu-4.2", |b| {
            b.iter_custom(|n| time_detached_restores(&criu, false, &images, &pids, n))
        });
    }
    {
        let out = scratch.path().join("loop.out");
        let mut sh = TestProcess::spawn(
            &[
                "/bin/sh",
                "-c",
                "i=0; while true; do echo $i; i=$(expr $i + 1); sleep 1; done",
            ],
            &out,
        );
        wait_until("the sleep child", Duration::from_secs(10), || {
            !children(sh.pid).is_empty()
        });
        let mut pids = vec![sh.pid];
        pids.extend(children(sh.pid));
        let images = shm.join("loop");
        let pids = dump_once(&mut sh, &images, pids);
        group.bench_function("shell_loop/criu-rs", |b| {
            b.iter_custom(|n| time_restores(&images, &pids, n))
        });
        if binary.exists() {
            group.bench_function("shell_loop/criu-rs-binary", |b| {
                b.iter_custom(|n| time_detached_restores(&binary, true, &images, &pids, n))
            });
        }
        if let Some(baseline) = &baseline {
            group.bench_function("shell_loop/criu-rs-baseline", |b| {
                b.iter_custom(|n| time_detached_restores(baseline, true, &images, &pids, n))
            });
        }
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&shm);
}

criterion_group!(benches, bench_restore);
criterion_main!(benches);
