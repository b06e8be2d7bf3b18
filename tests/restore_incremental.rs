//! Incremental dumps (tp-memtrack): pre-dumps while the program runs and rewrites known
//! pages between them, then a final dump that saves only the pages written since the
//! last pre-dump; the chain restores and the program checks every word. crit decodes
//! every pagemap of the chain; CRIU 4.2 restores it too. A tracker killed between the
//! pre-dump and the dump makes a full dump, which restores as well.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_core::dump::predump::pre_dump;
use criu_core::dump::{dump, DumpOptions, DumpStats};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::{self, Pid};
use criu_rs_suite::{
    check_restored, crit_decode, criu_4_or_skip, criu_restore, debian_crit, wait_for_file,
    wait_until, Reaper, ScratchDir, TestProcess,
};

const MIB: &str = "32";

/// Kills the trackers the pre-dumps left (they are no children of ours: they run in a
/// session of their own), by pidfd, also when the test fails.
#[derive(Default)]
struct Trackers(Vec<OwnedFd>);

impl Trackers {
    fn add(&mut self, tracker: Option<Pid>) {
        if let Some(fd) = tracker.and_then(|p| sys::pidfd_open(p).ok()) {
            self.0.push(fd);
        }
    }
}

impl Drop for Trackers {
    fn drop(&mut self) {
        for fd in &self.0 {
            let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
        }
    }
}

/// Asks tp-memtrack for round `round` (its SIGUSR1) and waits until it is done.
fn next_round(tp: &TestProcess, round: u32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(tp.pid, libc::SIGUSR1) };
    let mut file = tp.ready_file.clone().into_os_string();
    file.push(".round");
    wait_until(&format!("round {round}"), Duration::from_secs(30), || {
        wait_for_file(Path::new(&file), Duration::from_millis(10)).as_deref()
            == Some(&round.to_string())
    });
}

fn pre_dump_into(
    tp: &TestProcess,
    dir: &Path,
    prev: Option<&str>,
    trackers: &mut Trackers,
) -> DumpStats {
    std::fs::create_dir_all(dir).unwrap();
    let report = pre_dump(&DumpOptions {
        prev_images_dir: prev.map(PathBuf::from),
        ..DumpOptions::new(Pid(tp.pid), dir)
    })
    .unwrap_or_else(|e| panic!("pre-dump into {}: {e}", dir.display()));
    trackers.add(report.tracker);
    assert!(report.tracker.is_some(), "the pre-dump left no tracker");
    report.stats
}

/// The final dump (the program is killed), then waits until it is gone.
fn final_dump(tp: &mut TestProcess, dir: &Path, prev: &str) -> DumpStats {
    std::fs::create_dir_all(dir).unwrap();
    let stats = dump(&DumpOptions {
        prev_images_dir: Some(prev.into()),
        track_mem: true,
        ..DumpOptions::new(Pid(tp.pid), dir)
    })
    .unwrap_or_else(|e| panic!("dump: {e}"));
    tp.wait_gone();
    stats
}

fn pages_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("pages-1.img")).unwrap().len()
}

/// Whether each entry of `pagemap-PID.img` in `dir` refers to the parent, as crit
/// decodes it (flags by name with --pretty, as a number without).
fn crit_pagemap_flags(crit: &Path, dir: &Path, pid: i32) -> Vec<bool> {
    let json = crit_decode(crit, &dir.join(format!("pagemap-{pid}.img")))
        .unwrap_or_else(|e| panic!("{e}"));
    json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|e| {
            let flags = &e["flags"];
            flags.as_str().is_some_and(|f| f.contains("PE_PARENT"))
                || flags.as_u64().is_some_and(|f| f & 1 != 0)
        })
        .collect()
}

#[test]
fn chain_of_three_pre_dumps_and_a_dump_restores_intact() {
    let scratch = ScratchDir::new("incremental-chain");
    let mut trackers = Trackers::default();
    let mut tp = TestProcess::start(scratch.path(), "memtrack", &["--mib", MIB]);
    let dirs: Vec<PathBuf> = (1..=4)
        .map(|i| scratch.path().join(i.to_string()))
        .collect();

    let first = pre_dump_into(&tp, &dirs[0], None, &mut trackers);
    assert_eq!(first.pages_skipped_parent, 0);
    next_round(&tp, 1);
    let second = pre_dump_into(&tp, &dirs[1], Some("../1"), &mut trackers);
    next_round(&tp, 2);
    let third = pre_dump_into(&tp, &dirs[2], Some("../2"), &mut trackers);
    next_round(&tp, 3);
    let last = final_dump(&mut tp, &dirs[3], "../3");
    eprintln!(
        "pre-dumps: {} / {} / {} pages written, frozen {} / {} / {} us; dump: {} pages written, {} in parent, frozen {} us",
        first.pages_written,
        second.pages_written,
        third.pages_written,
        first.frozen_time,
        second.frozen_time,
        third.frozen_time,
        last.pages_written,
        last.pages_skipped_parent,
        last.frozen_time
    );
    for s in [&second, &third, &last] {
        assert!(s.pages_skipped_parent > 0, "{s:?}");
    }
    // A round rewrites 1/8 of the region: the later images hold little more than that.
    let full = pages_bytes(&dirs[0]);
    for dir in &dirs[1..] {
        let size = pages_bytes(dir);
        assert!(
            size * 4 < full,
            "{}: {size} bytes, the full pre-dump {full}",
            dir.display()
        );
    }
    assert_eq!(
        std::fs::read_link(dirs[3].join("parent")).unwrap(),
        PathBuf::from("../3")
    );
    if let Some(crit) = debian_crit() {
        for (i, dir) in dirs.iter().enumerate() {
            let flags = crit_pagemap_flags(&crit, dir, tp.pid);
            assert!(!flags.is_empty(), "{}: no pagemap entries", dir.display());
            let refers = flags.iter().any(|&parent| parent);
            assert_eq!(refers, i > 0, "{}: {flags:?}", dir.display());
        }
    }
    let r = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&dirs[3])
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let restored = Reaper(r.pid.0);
    assert_eq!(check_restored(restored.0, &tp.ready_file), "pass");
}

#[test]
fn a_killed_tracker_makes_a_full_dump() {
    let scratch = ScratchDir::new("incremental-no-tracker");
    let mut trackers = Trackers::default();
    let mut tp = TestProcess::start(scratch.path(), "memtrack", &["--mib", MIB]);
    let (one, two) = (scratch.path().join("1"), scratch.path().join("2"));
    pre_dump_into(&tp, &one, None, &mut trackers);
    for fd in &trackers.0 {
        sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL).unwrap();
    }
    wait_until("the tracker to let go", Duration::from_secs(10), || {
        trackers
            .0
            .iter()
            .all(|fd| sys::pidfd_exited(fd.as_fd()).unwrap_or(true))
    });
    next_round(&tp, 1);
    let stats = final_dump(&mut tp, &two, "../1");
    assert_eq!(stats.pages_skipped_parent, 0, "{stats:?}");
    assert!(pages_bytes(&two) * 2 > pages_bytes(&one));
    let r = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&two)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let restored = Reaper(r.pid.0);
    assert_eq!(check_restored(restored.0, &tp.ready_file), "pass");
}

/// A process that exec'ed between the pre-dumps: its memory is tracked anew by the
/// second pre-dump, the final dump refers to that one, and the chain restores.
#[test]
fn a_process_that_execs_between_pre_dumps_is_tracked_anew() {
    let scratch = ScratchDir::new("incremental-exec");
    let mut trackers = Trackers::default();
    let go = scratch.path().join("go");
    let ready_file = scratch.path().join("memtrack.ready");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; exec {} --ready-file {} --mib 8",
        go.display(),
        criu_rs_suite::workspace_bin("tp-memtrack").display(),
        ready_file.display()
    );
    let mut tp = TestProcess::spawn(&["sh", "-c", &script], &scratch.path().join("sh.out"));
    let (one, two, three) = (
        scratch.path().join("1"),
        scratch.path().join("2"),
        scratch.path().join("3"),
    );
    pre_dump_into(&tp, &one, None, &mut trackers);
    std::fs::write(&go, b"").unwrap();
    wait_for_file(&ready_file, Duration::from_secs(30)).expect("tp-memtrack ready");
    tp.ready_file = ready_file.clone();
    pre_dump_into(&tp, &two, Some("../1"), &mut trackers);
    next_round(&tp, 1);
    let stats = final_dump(&mut tp, &three, "../2");
    assert!(stats.pages_skipped_parent > 0, "{stats:?}");
    let r = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&three)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let restored = Reaper(r.pid.0);
    assert_eq!(check_restored(restored.0, &ready_file), "pass");
}

/// CRIU 4.2 restores our chain (it follows the `parent` links and PE_PARENT entries).
#[test]
fn criu_4_2_restores_our_chain() {
    let Some(criu) = criu_4_or_skip("CRIU's restore of our incremental chain") else {
        return;
    };
    let scratch = ScratchDir::new("incremental-criu-restores");
    let mut trackers = Trackers::default();
    let mut tp = TestProcess::start(scratch.path(), "memtrack", &["--mib", "8"]);
    let (one, two, three) = (
        scratch.path().join("1"),
        scratch.path().join("2"),
        scratch.path().join("3"),
    );
    pre_dump_into(&tp, &one, None, &mut trackers);
    next_round(&tp, 1);
    pre_dump_into(&tp, &two, Some("../1"), &mut trackers);
    next_round(&tp, 2);
    let stats = final_dump(&mut tp, &three, "../2");
    assert!(stats.pages_skipped_parent > 0, "{stats:?}");
    let _restored = criu_restore(&criu, &three, &[], vec![tp.pid]);
    assert_eq!(tp.check(), "pass", "restored by CRIU");
}
