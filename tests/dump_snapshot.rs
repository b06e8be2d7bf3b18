//! Live snapshots (`dump -R`): the tree is frozen while its state is collected, its
//! private memory copied afterwards from a copy-on-write image (`snapshot.rs`). tp-snapshot
//! rewrites its memory page by page all the time and checks that the image is one moment
//! of it; the original runs on intact; no snapshot child is left behind, also when the
//! dump fails while the tree is frozen.

use std::path::Path;
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions, Stage};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{check_restored, wait_until, Reaper, ScratchDir, TestProcess};

/// The children of every thread of `pid`, zombies included (a snapshot child not reaped
/// by its parent stays listed as one).
fn children_of(pid: i32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn snapshot_options(tp: &TestProcess, images: &Path) -> DumpOptions {
    std::fs::create_dir_all(images).unwrap();
    DumpOptions {
        leave_running: true,
        ..DumpOptions::new(Pid(tp.pid), images)
    }
}

/// Ends the original (its check makes it exit) and waits until its pid is free.
fn check_and_end(tp: &mut TestProcess) -> String {
    let verdict = tp.check();
    let _ = tp.child.wait();
    let pid = tp.pid;
    wait_until(
        "the original's pid to be free",
        Duration::from_secs(10),
        || !Path::new(&format!("/proc/{pid}")).exists(),
    );
    let _ = std::fs::remove_file(tp.ready_file.with_extension("ready.result"));
    verdict
}

#[test]
fn a_live_snapshot_of_a_writer_restores_to_one_moment() {
    let scratch = ScratchDir::new("snapshot-writer");
    let images = scratch.path().join("images");
    let mut tp = TestProcess::start(scratch.path(), "snapshot", &["--mib", "256"]);
    let stats = dump(&snapshot_options(&tp, &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    eprintln!(
        "live snapshot of 256 MiB: frozen {} us, pages copied {} us ({} of {} pages after the thaw)",
        stats.frozen_time, stats.memwrite_time, stats.pages_written_live, stats.pages_written
    );
    // Most of the memory came from the snapshot child, after the thaw.
    assert!(
        stats.pages_written_live * 2 > stats.pages_written,
        "{stats:?}"
    );
    assert_eq!(children_of(tp.pid), Vec::<String>::new(), "children left");
    // The original ran on through the copy and is intact.
    assert_eq!(check_and_end(&mut tp), "pass", "the original");
    let r = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let restored = Reaper(r.pid.0);
    assert_eq!(
        check_restored(restored.0, &tp.ready_file),
        "pass",
        "the restored"
    );
}

/// A program whose memory map changes all the time (a thread maps, fills, checks and
/// unmaps a region, round after round) beside the writer: smaps read before the freeze
/// may or may not describe the frozen map, so a dump takes either path (VmFlags from
/// that read, or smaps read frozen). Three snapshots in a row succeed, the original runs
/// on intact, and each snapshot restores to one moment.
#[test]
fn live_snapshots_of_a_program_changing_its_memory_map() {
    let scratch = ScratchDir::new("snapshot-churn");
    let mut tp = TestProcess::start(
        scratch.path(),
        "snapshot",
        &["--mib", "32", "--churn-kib", "256"],
    );
    let dirs: Vec<_> = (0..3)
        .map(|i| scratch.path().join(format!("images-{i}")))
        .collect();
    for images in &dirs {
        let stats = dump(&snapshot_options(&tp, images)).unwrap_or_else(|e| panic!("dump: {e}"));
        assert!(stats.pages_written_live > 0, "{stats:?}");
        assert_eq!(children_of(tp.pid), Vec::<String>::new(), "children left");
    }
    assert_eq!(check_and_end(&mut tp), "pass", "the original");
    for images in &dirs {
        let r = restore(&RestoreOptions {
            pid_wait: Duration::from_secs(30),
            ..RestoreOptions::new(images)
        })
        .unwrap_or_else(|e| panic!("restore of {}: {e}", images.display()));
        let restored = Reaper(r.pid.0);
        assert_eq!(
            check_restored(restored.0, &tp.ready_file),
            "pass",
            "restored from {}",
            images.display()
        );
        let pid = restored.0;
        drop(restored);
        wait_until(
            "the restored pid to be free",
            Duration::from_secs(10),
            || !Path::new(&format!("/proc/{pid}")).exists(),
        );
    }
}

#[test]
fn no_snapshot_child_is_left_when_the_dump_fails_frozen() {
    let scratch = ScratchDir::new("snapshot-fails");
    let mut tp = TestProcess::start(scratch.path(), "snapshot", &["--mib", "16"]);
    for stage in [Stage::Tasks, Stage::Pages, Stage::Images] {
        let images = scratch.path().join(format!("{stage:?}"));
        let opts = DumpOptions {
            fail_after: Some(stage),
            ..snapshot_options(&tp, &images)
        };
        match dump(&opts) {
            Err(e) => eprintln!("failed after {stage:?} as asked: {e}"),
            Ok(_) => panic!("the dump did not fail after {stage:?}"),
        }
        assert_eq!(
            children_of(tp.pid),
            Vec::<String>::new(),
            "children left after a failure after {stage:?}"
        );
    }
    assert_eq!(check_and_end(&mut tp), "pass");
}

/// A live snapshot of tp-sharing in `mode` (the original killed after it), restored;
/// returns the restored program's verdict.
fn snapshot_kill_restore(test: &str, mode: &str) -> String {
    let scratch = ScratchDir::new(test);
    let images = scratch.path().join("images");
    let tp = TestProcess::start(scratch.path(), "sharing", &["--mode", mode]);
    let stats = dump(&snapshot_options(&tp, &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    assert!(stats.pages_written_live > 0, "{stats:?}");
    let tree: Vec<String> = std::iter::once(tp.pid.to_string())
        .chain(children_of(tp.pid))
        .collect();
    drop(tp);
    wait_until(
        "the original tree to be gone",
        Duration::from_secs(10),
        || {
            tree.iter()
                .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        },
    );
    let r = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let restored = Reaper(r.pid.0);
    check_restored(restored.0, &scratch.path().join("sharing.ready"))
}

/// Locked, MADV_DONTFORK (not in the snapshot child: copied frozen) and other flagged
/// private mappings.
#[test]
fn a_live_snapshot_keeps_mappings_fork_does_not_copy() {
    assert_eq!(snapshot_kill_restore("snapshot-vmflags", "vmflags"), "pass");
}

/// Two processes sharing pages copy-on-write: each gets its snapshot child.
#[test]
fn a_live_snapshot_of_two_processes_sharing_pages() {
    assert_eq!(snapshot_kill_restore("snapshot-cow", "cow"), "pass");
}
