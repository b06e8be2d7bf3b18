//! Live snapshots (`dump -R`): the tree is frozen while its state is collected, its
//! private memory copied afterwards, from a copy-on-write image (`snapshot.rs`) or
//! write-protected (`protect.rs`). tp-snapshot rewrites its memory page by page all the
//! time and checks that the image is one moment of it; the original runs on intact; no
//! snapshot child and no write protection is left behind, also when the dump fails while
//! the tree is frozen or the dumper is killed during the copy.

use std::path::Path;
use std::time::Duration;

use criu_core::dump::protect::SnapshotMethod;
use criu_core::dump::{dump, DumpError, DumpOptions, Stage};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{check_restored, wait_until, workspace_bin, Reaper, ScratchDir, TestProcess};

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

fn snapshot_options(tp: &TestProcess, images: &Path, method: SnapshotMethod) -> DumpOptions {
    std::fs::create_dir_all(images).unwrap();
    DumpOptions {
        leave_running: true,
        snapshot_method: method,
        ..DumpOptions::new(Pid(tp.pid), images)
    }
}

/// The mappings of `pid` still registered with a userfaultfd for write protection
/// (VmFlags `uw`): none once a dump is over, whatever happened.
fn write_protected(pid: i32) -> Vec<String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    smaps
        .lines()
        .filter(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "uw"))
        .map(str::to_owned)
        .collect()
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
    writer_restores_to_one_moment("snapshot-writer", SnapshotMethod::Fork);
}

#[test]
fn a_write_protected_snapshot_of_a_writer_restores_to_one_moment() {
    writer_restores_to_one_moment("snapshot-writer-wp", SnapshotMethod::WriteProtect);
}

/// The same in transparent huge pages: a huge page is protected, saved and let go
/// whole, or split where the writer's first writes lift the protection of one page.
#[test]
fn a_write_protected_snapshot_of_huge_pages_restores_to_one_moment() {
    writer_restores_to_one_moment_with(
        "snapshot-writer-wp-thp",
        SnapshotMethod::WriteProtect,
        &["--mib", "256", "--thp", "1"],
    );
}

fn writer_restores_to_one_moment(test: &str, method: SnapshotMethod) {
    writer_restores_to_one_moment_with(test, method, &["--mib", "256"]);
}

fn writer_restores_to_one_moment_with(test: &str, method: SnapshotMethod, args: &[&str]) {
    let scratch = ScratchDir::new(test);
    let images = scratch.path().join("images");
    let mut tp = TestProcess::start(scratch.path(), "snapshot", args);
    let stats =
        dump(&snapshot_options(&tp, &images, method)).unwrap_or_else(|e| panic!("dump: {e}"));
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
    assert_eq!(
        write_protected(tp.pid),
        Vec::<String>::new(),
        "protection left"
    );
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
    let saved = snapshots_of_churn("snapshot-churn", "32", SnapshotMethod::Auto);
    assert_eq!(saved, 3);
}

/// The same with write protection (`auto` picks it for 96 MiB): a dump whose program
/// unmapped memory before it was copied is done again with snapshot children, so every
/// dump succeeds.
#[test]
fn write_protected_snapshots_of_a_program_changing_its_memory_map() {
    let saved = snapshots_of_churn("snapshot-churn-auto", "96", SnapshotMethod::Auto);
    assert_eq!(saved, 3);
}

/// Write protection alone: a dump either succeeds, and restores to one moment, or fails
/// because the program let go of memory not copied yet, and the program runs on intact.
#[test]
fn write_protected_snapshots_fail_cleanly_when_memory_is_unmapped() {
    let saved = snapshots_of_churn("snapshot-churn-wp", "32", SnapshotMethod::WriteProtect);
    eprintln!("{saved} of 3 write-protected snapshots saved");
}

/// Three live snapshots in a row of tp-snapshot with `--churn-kib 256` and `mib`; each
/// one saved restores to one moment, the original passes its check. Returns how many
/// were saved (a failed one must be a `SnapshotChanged`).
fn snapshots_of_churn(test: &str, mib: &str, method: SnapshotMethod) -> usize {
    let scratch = ScratchDir::new(test);
    let mut tp = TestProcess::start(
        scratch.path(),
        "snapshot",
        &["--mib", mib, "--churn-kib", "256"],
    );
    let mut dirs = Vec::new();
    for i in 0..3 {
        let images = scratch.path().join(format!("images-{i}"));
        match dump(&snapshot_options(&tp, &images, method)) {
            Ok(stats) => {
                assert!(stats.pages_written_live > 0, "{stats:?}");
                dirs.push(images);
            }
            Err(e @ DumpError::SnapshotChanged { .. })
                if method == SnapshotMethod::WriteProtect =>
            {
                eprintln!("dump {i}: {e}");
            }
            Err(e) => panic!("dump {i}: {e}"),
        }
        assert_eq!(children_of(tp.pid), Vec::<String>::new(), "children left");
        assert_eq!(
            write_protected(tp.pid),
            Vec::<String>::new(),
            "protection left"
        );
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
    dirs.len()
}

#[test]
fn no_snapshot_child_is_left_when_the_dump_fails_frozen() {
    fails_frozen("snapshot-fails", SnapshotMethod::Fork);
}

#[test]
fn no_write_protection_is_left_when_the_dump_fails_frozen() {
    fails_frozen("snapshot-fails-wp", SnapshotMethod::WriteProtect);
}

fn fails_frozen(test: &str, method: SnapshotMethod) {
    let scratch = ScratchDir::new(test);
    let mut tp = TestProcess::start(scratch.path(), "snapshot", &["--mib", "16"]);
    for stage in [
        Stage::Check,
        Stage::Freeze,
        Stage::Tasks,
        Stage::Pages,
        Stage::Images,
    ] {
        let images = scratch.path().join(format!("{stage:?}"));
        let opts = DumpOptions {
            fail_after: Some(stage),
            ..snapshot_options(&tp, &images, method)
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
        assert_eq!(
            write_protected(tp.pid),
            Vec::<String>::new(),
            "protection left after a failure after {stage:?}"
        );
    }
    assert_eq!(check_and_end(&mut tp), "pass");
}

/// `criu-rs dump -R --snapshot-method write-protect` killed outright (SIGKILL) while it
/// copies the pages: the kernel lifts the protection with the dumper's last fd of the
/// userfaultfd, every waiting writer goes on, and the program is intact.
#[test]
fn a_dumper_killed_during_a_write_protected_copy_leaves_the_program_intact() {
    let scratch = ScratchDir::new("snapshot-wp-killed");
    let mut tp = TestProcess::start(scratch.path(), "snapshot", &["--mib", "512"]);
    for (round, delay_ms) in [0u64, 5, 20, 60].into_iter().enumerate() {
        let images = scratch.path().join(format!("images-{round}"));
        std::fs::create_dir_all(&images).unwrap();
        let mut dumper = std::process::Command::new(workspace_bin("criu-rs"))
            .args(["dump", "-t", &tp.pid.to_string(), "-D"])
            .arg(&images)
            .args(["-R", "--snapshot-method", "write-protect", "--no-progress"])
            .spawn()
            .unwrap();
        // The pages file appears while frozen; the copy follows the thaw.
        let pages = images.join("pages-1.img");
        wait_until("the pages file", Duration::from_secs(20), || pages.exists());
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = dumper.kill();
        let _ = dumper.wait();
        wait_until(
            "the protection to be lifted",
            Duration::from_secs(10),
            || write_protected(tp.pid).is_empty(),
        );
        assert_eq!(children_of(tp.pid), Vec::<String>::new(), "children left");
    }
    assert_eq!(check_and_end(&mut tp), "pass");
}

/// A live snapshot of tp-sharing in `mode` (the original killed after it), restored;
/// returns the restored program's verdict.
fn snapshot_kill_restore(test: &str, mode: &str, method: SnapshotMethod) -> String {
    let scratch = ScratchDir::new(test);
    let images = scratch.path().join("images");
    let tp = TestProcess::start(scratch.path(), "sharing", &["--mode", mode]);
    let stats =
        dump(&snapshot_options(&tp, &images, method)).unwrap_or_else(|e| panic!("dump: {e}"));
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
    let fork = SnapshotMethod::Fork;
    assert_eq!(
        snapshot_kill_restore("snapshot-vmflags", "vmflags", fork),
        "pass"
    );
}

/// The same write-protected: DONTFORK and WIPEONFORK mappings are protected too.
#[test]
fn a_write_protected_snapshot_keeps_flagged_mappings() {
    let wp = SnapshotMethod::WriteProtect;
    assert_eq!(
        snapshot_kill_restore("snapshot-vmflags-wp", "vmflags", wp),
        "pass"
    );
}

/// Two processes sharing pages copy-on-write: each gets its snapshot child.
#[test]
fn a_live_snapshot_of_two_processes_sharing_pages() {
    let fork = SnapshotMethod::Fork;
    assert_eq!(snapshot_kill_restore("snapshot-cow", "cow", fork), "pass");
}

/// The same write-protected: each process has its own userfaultfd.
#[test]
fn a_write_protected_snapshot_of_two_processes_sharing_pages() {
    let wp = SnapshotMethod::WriteProtect;
    assert_eq!(snapshot_kill_restore("snapshot-cow-wp", "cow", wp), "pass");
}

/// CRIU 4.2 restores a write-protected snapshot of the writer to one moment too: the
/// images are CRIU's format whichever way the pages were saved.
#[test]
fn criu_restores_a_write_protected_snapshot() {
    let Some(criu) = criu_rs_suite::criu_4_or_skip("restoring with CRIU") else {
        return;
    };
    let scratch = ScratchDir::new("snapshot-wp-criu");
    let images = scratch.path().join("images");
    let mut tp = TestProcess::start(scratch.path(), "snapshot", &["--mib", "128"]);
    let pid = tp.pid;
    dump(&snapshot_options(
        &tp,
        &images,
        SnapshotMethod::WriteProtect,
    ))
    .unwrap_or_else(|e| panic!("dump: {e}"));
    assert_eq!(check_and_end(&mut tp), "pass", "the original");
    let _restored = criu_rs_suite::criu_restore(&criu, &images, &[], vec![pid]);
    assert_eq!(
        check_restored(pid, &tp.ready_file),
        "pass",
        "restored by CRIU"
    );
}
