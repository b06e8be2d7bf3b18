//! Where a task's paths start, and `/proc` files that name processes (tp-fsroot):
//! a chrooted task (its root and cwd inside a jail, a file and a mapping in the jail, a
//! file outside it), a task holding `/proc/1/status`, and one whose cwd is the `/proc`
//! dir of a process that has exited. Each is dumped into CRIU's images (read back by
//! Debian's crit: the root in fs-PID.img, the dead pid's PROCFS remap), restored, and
//! passes its own check; the links the kernel shows are the same as before.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, crit_decode, criu_4_or_skip, criu_dump, criu_restore, debian_crit, task_state,
    wait_until, Reaper, ScratchDir, TestProcess,
};

/// The entries of one image, as crit prints them.
fn crit_entries(crit: &Path, image: &Path) -> Vec<serde_json::Value> {
    let v = crit_decode(crit, image).unwrap_or_else(|e| panic!("{e}"));
    v["entries"].as_array().cloned().unwrap_or_default()
}

/// The reg file name crit finds in files.img for id `id`.
fn crit_reg_name(crit: &Path, images: &Path, id: &serde_json::Value) -> String {
    crit_entries(crit, &images.join("files.img"))
        .iter()
        .find(|f| f["id"] == *id)
        .and_then(|f| f["reg"]["name"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no reg file {id} in files.img"))
}

/// The root and cwd links of `pid`.
fn fs_links(pid: i32) -> (PathBuf, PathBuf) {
    let link = |name: &str| std::fs::read_link(format!("/proc/{pid}/{name}")).unwrap();
    (link("root"), link("cwd"))
}

fn start(scratch: &ScratchDir, dir: &str, mode: &str) -> TestProcess {
    let work = scratch.path().join(dir);
    std::fs::create_dir(&work).unwrap();
    TestProcess::start(&work, "fsroot", &["--mode", mode])
}

fn dump_to(tp: &mut TestProcess, images: &Path) {
    std::fs::create_dir(images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
}

fn restore_from(images: &Path) -> Reaper {
    let restored = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    wait_until("running", Duration::from_secs(10), || {
        matches!(task_state(reaper.0), Some('S') | Some('R'))
    });
    reaper
}

#[test]
fn a_chrooted_task_keeps_its_root_cwd_and_files() {
    let scratch = ScratchDir::new("fsroot-chroot");
    let mut tp = start(&scratch, "jail", "chroot");
    let jail = scratch.path().join("jail").canonicalize().unwrap();
    let before = fs_links(tp.pid);
    assert_eq!(before, (jail.clone(), jail.join("sub")));

    let images = scratch.path().join("images");
    dump_to(&mut tp, &images);
    if let Some(crit) = debian_crit() {
        let fs = &crit_entries(&crit, &images.join(format!("fs-{}.img", tp.pid)))[0];
        let root = crit_reg_name(&crit, &images, &fs["root_id"]);
        assert_eq!(Path::new(&root), jail, "the root recorded in fs.img");
        let cwd = crit_reg_name(&crit, &images, &fs["cwd_id"]);
        assert_eq!(
            Path::new(&cwd),
            jail.join("sub"),
            "the cwd recorded in fs.img"
        );
    }
    let reaper = restore_from(&images);
    assert_eq!(fs_links(reaper.0), before, "root and cwd");
    assert_eq!(check_restored(reaper.0, &tp.ready_file), "pass");
}

#[test]
fn a_file_of_pid_1_is_reopened_by_its_path() {
    let scratch = ScratchDir::new("fsroot-procfile");
    let mut tp = start(&scratch, "work", "procfile");
    let images = scratch.path().join("images");
    dump_to(&mut tp, &images);
    if let Some(crit) = debian_crit() {
        let files = crit_entries(&crit, &images.join("files.img"));
        assert!(
            files.iter().any(|f| f["reg"]["name"] == "/proc/1/status"),
            "{files:?}"
        );
    }
    let reaper = restore_from(&images);
    assert_eq!(check_restored(reaper.0, &tp.ready_file), "pass");
}

/// The pid whose /proc dir `link` (`/proc/PID (deleted)`) is.
fn dead_pid(link: &Path) -> i32 {
    let text = link.to_string_lossy();
    text.strip_prefix("/proc/")
        .and_then(|t| t.strip_suffix(" (deleted)"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("not a dead process's /proc dir: {text}"))
}

#[test]
fn a_cwd_in_a_dead_process_proc_dir_comes_back() {
    let scratch = ScratchDir::new("fsroot-deadcwd");
    let mut tp = start(&scratch, "work", "deadcwd");
    let (_, cwd) = fs_links(tp.pid);
    let dead = dead_pid(&cwd);

    let images = scratch.path().join("images");
    dump_to(&mut tp, &images);
    if let Some(crit) = debian_crit() {
        let remaps = crit_entries(&crit, &images.join("remap-fpath.img"));
        assert!(
            remaps
                .iter()
                .any(|r| r["remap_type"] == "PROCFS" && r["remap_id"] == dead),
            "{remaps:?}"
        );
        let fs = &crit_entries(&crit, &images.join(format!("fs-{}.img", tp.pid)))[0];
        let name = crit_reg_name(&crit, &images, &fs["cwd_id"]);
        assert_eq!(name, format!("/proc/{dead}"));
    }
    let reaper = restore_from(&images);
    assert_eq!(fs_links(reaper.0).1, cwd, "the cwd, unhashed again");
    // The process that stood in for the dead one is gone.
    assert!(!Path::new(&format!("/proc/{dead}")).exists());
    assert_eq!(check_restored(reaper.0, &tp.ready_file), "pass");
}

/// CRIU 4.2 restores our images of a chrooted task.
#[test]
fn criu_4_2_restores_our_chrooted_task() {
    let Some(criu) = criu_4_or_skip("CRIU's restore of our chrooted task") else {
        return;
    };
    let scratch = ScratchDir::new("fsroot-criu-restores");
    let mut tp = start(&scratch, "jail", "chroot");
    let before = fs_links(tp.pid);
    let images = scratch.path().join("images");
    dump_to(&mut tp, &images);
    wait_until("the dumped pid to go", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{}", tp.pid)).exists()
    });
    let restored = criu_restore(&criu, &images, &[], vec![tp.pid]);
    assert_eq!(fs_links(restored.0[0]), before, "root and cwd");
    assert_eq!(check_restored(restored.0[0], &tp.ready_file), "pass");
}

/// We restore CRIU 4.2's images of a task whose cwd is a dead process's /proc dir.
#[test]
fn criu_4_2_dead_cwd_restores() {
    let Some(criu) = criu_4_or_skip("restoring CRIU's dead pid remap") else {
        return;
    };
    let scratch = ScratchDir::new("fsroot-criu-dumps");
    let mut tp = start(&scratch, "work", "deadcwd");
    let (_, cwd) = fs_links(tp.pid);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    criu_dump(&criu, tp.pid, &images, &[]);
    let _ = tp.child.wait();
    let reaper = restore_from(&images);
    assert_eq!(fs_links(reaper.0).1, cwd, "the cwd, unhashed again");
    assert_eq!(check_restored(reaper.0, &tp.ready_file), "pass");
}
