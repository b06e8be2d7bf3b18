//! Lazy restore (`--lazy-pages`): the tree runs before its memory is in; the restored
//! programs check every word of it, and a restorer killed with pages missing takes the
//! tree with it (its watchdog kills it) instead of leaving it to run on zero pages.

use std::path::Path;
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, clean_command, task_state, wait_for_file, wait_until, workspace_bin,
    DetachedTree, Reaper, ScratchDir, TestProcess,
};

/// Dumps the program (killing it) into `images` and reaps it.
fn dump_and_kill(tp: &mut TestProcess, images: &Path) {
    std::fs::create_dir_all(images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
}

/// The start of region `name` in tp-memhog's layout file.
fn region(ready: &Path, name: &str) -> u64 {
    let layout = std::fs::read_to_string(ready.with_extension("ready.layout")).unwrap();
    let line = layout
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {layout}"));
    let addr = line.split_whitespace().nth(1).unwrap();
    u64::from_str_radix(addr.trim_start_matches("0x"), 16).unwrap()
}

/// The /proc/PID/maps line of the mapping holding `addr`.
fn maps_line(pid: i32, addr: u64) -> String {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .find(|l| {
            let range = l.split_whitespace().next().unwrap();
            let (s, e) = range.split_once('-').unwrap();
            let (s, e) = (
                u64::from_str_radix(s, 16).unwrap(),
                u64::from_str_radix(e, 16).unwrap(),
            );
            s <= addr && addr < e
        })
        .unwrap_or_else(|| panic!("nothing mapped at {addr:#x}"))
        .to_owned()
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Processes whose command line names `dir` (a restorer or its watchdog).
fn processes_naming(dir: &Path) -> Vec<i32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .filter(|&pid| task_state(pid) != Some('Z'))
        .collect()
}

#[test]
fn a_lazily_restored_program_checks_every_word_and_its_memory_stays_anonymous() {
    let scratch = ScratchDir::new("lazy-memhog");
    let images = scratch.path().join("images");
    let mut tp = TestProcess::start(scratch.path(), "memhog", &["--mib", "384"]);
    let ready = tp.ready_file.clone();
    dump_and_kill(&mut tp, &images);
    let mut restored = restore(&RestoreOptions {
        lazy_pages: true,
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    let lazy = restored.lazy.take().expect("a lazy restore serves pages");
    // No file stands in for the memory: it is anonymous, as it was.
    let anon = maps_line(reaper.0, region(&ready, "anon"));
    let fields: Vec<&str> = anon.split_whitespace().collect();
    assert_eq!(fields[4], "0", "anonymous memory has no inode: {anon}");
    assert_eq!(fields.len(), 5, "anonymous memory has no path: {anon}");
    // Checked while the pages may still be coming in, and once they all are.
    assert_eq!(check_restored(reaper.0, &ready), "pass");
    lazy.wait().expect("every page in");
}

#[test]
fn pages_that_only_come_on_fault_are_the_saved_ones() {
    let scratch = ScratchDir::new("lazy-faults");
    let images = scratch.path().join("images");
    let mut tp = TestProcess::start(scratch.path(), "memhog", &["--mib", "128"]);
    let ready = tp.ready_file.clone();
    dump_and_kill(&mut tp, &images);
    let mut restored = restore(&RestoreOptions {
        lazy_pages: true,
        lazy_background: false,
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    // Without the background copy, the region is not in until the check reads it.
    assert!(
        rss_kib(reaper.0) < 64 * 1024,
        "pages came in before any fault"
    );
    assert_eq!(check_restored(reaper.0, &ready), "pass");
    drop(restored.lazy.take());
    drop(reaper);
}

#[test]
fn a_lazily_restored_tree_of_processes_checks_itself() {
    let scratch = ScratchDir::new("lazy-tree");
    let images = scratch.path().join("images");
    let mut tp = TestProcess::start(scratch.path(), "tree", &[]);
    let ready = tp.ready_file.clone();
    dump_and_kill(&mut tp, &images);
    let mut restored = restore(&RestoreOptions {
        lazy_pages: true,
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    let lazy = restored.lazy.take().expect("a lazy restore serves pages");
    assert_eq!(check_restored(reaper.0, &ready), "pass");
    lazy.wait().expect("every page in");
}

/// The documented outcome of a restorer killed while pages are missing: its watchdog
/// kills the tree, and then exits; nothing runs on with pages that never came.
#[test]
fn a_restorer_killed_with_pages_missing_takes_the_tree_along() {
    let scratch = ScratchDir::new("lazy-killed");
    let images = scratch.path().join("images");
    let mut tp = TestProcess::start(scratch.path(), "memhog", &["--mib", "128"]);
    dump_and_kill(&mut tp, &images);
    let pidfile = scratch.path().join("restored.pid");
    let mut restorer = clean_command(workspace_bin("criu-rs").to_str().unwrap())
        .args(["restore", "--lazy-pages", "--lazy-no-background", "-D"])
        .arg(&images)
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("-o")
        .arg(scratch.path().join("restore.log"))
        .spawn()
        .expect("criu-rs restore");
    let root: i32 = wait_for_file(&pidfile, Duration::from_secs(60))
        .unwrap_or_else(|| {
            let _ = restorer.kill();
            let _ = restorer.wait();
            panic!("no pidfile")
        })
        .parse()
        .unwrap();
    // Kills the tree if the test fails before the restorer's death does.
    let _tree = DetachedTree(vec![root]);
    assert!(rss_kib(root) < 64 * 1024, "pages came in before any fault");
    let _ = restorer.kill();
    let _ = restorer.wait();
    // The root was the restorer's child: orphaned, it is killed and reaped by pid 1.
    wait_until("the tree to be killed", Duration::from_secs(20), || {
        matches!(task_state(root), None | Some('Z'))
    });
    wait_until("the watchdog to exit", Duration::from_secs(20), || {
        processes_naming(&images).is_empty()
    });
}

/// `restore -d --lazy-pages` returns once the tree runs; a criu-rs of its own serves
/// the pages, then exits.
#[test]
fn a_detached_lazy_restore_returns_while_pages_are_served() {
    let scratch = ScratchDir::new("lazy-detached");
    let images = scratch.path().join("images");
    let mut tp = TestProcess::start(scratch.path(), "memhog", &["--mib", "256"]);
    let ready = tp.ready_file.clone();
    dump_and_kill(&mut tp, &images);
    let pidfile = scratch.path().join("restored.pid");
    let status = clean_command(workspace_bin("criu-rs").to_str().unwrap())
        .args(["restore", "-d", "--lazy-pages", "-D"])
        .arg(&images)
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("-o")
        .arg(scratch.path().join("restore.log"))
        .status()
        .expect("criu-rs restore");
    let root: i32 = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid; criu-rs said {status}"));
    let _tree = DetachedTree(vec![root]);
    assert!(status.success(), "{status}");
    assert_eq!(check_restored(root, &ready), "pass");
    wait_until("the pages server to exit", Duration::from_secs(60), || {
        processes_naming(&images).is_empty()
    });
}
