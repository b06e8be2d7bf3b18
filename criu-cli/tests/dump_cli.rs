//! `criu-rs dump` as a user runs it: exit codes, one-line errors, the log and stats.

use std::process::{Command, Output};

use criu_rs_suite::{wait_until, ScratchDir, TestProcess};

fn criu_rs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_criu-rs"))
        .args(args)
        .output()
        .expect("run criu-rs")
}

fn assert_one_line_error(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "one error line expected: {stderr}"
    );
    assert!(stderr.contains(what), "{what:?} not in: {stderr}");
}

#[test]
fn bad_targets_and_directories() {
    let scratch = ScratchDir::new("cli-dump-bad");
    let dir = scratch.path().to_str().unwrap();
    assert_one_line_error(
        &criu_rs(&["dump", "-t", "2147483000", "-D", dir]),
        "does not exist",
    );
    assert_one_line_error(&criu_rs(&["dump", "-t", "1", "-D", dir]), "init process");
    let tp = TestProcess::spawn(&["sleep", "100"], &scratch.path().join("out"));
    let pid = tp.pid.to_string();
    assert_one_line_error(
        &criu_rs(&["dump", "-t", &pid, "-D", "/proc/nonexistent"]),
        "/proc/nonexistent",
    );
    assert!(std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .contains("TracerPid:\t0"));
}

#[test]
fn dump_writes_log_and_prints_stats() {
    let scratch = ScratchDir::new("cli-dump-ok");
    let out_file = scratch.path().join("out");
    let tp = TestProcess::spawn(
        &["/bin/sh", "-c", "while true; do sleep 1; done"],
        &out_file,
    );
    wait_until("a child", std::time::Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", tp.pid, tp.pid))
            .is_ok_and(|c| !c.trim().is_empty())
    });
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let out = criu_rs(&[
        "dump",
        "-t",
        &tp.pid.to_string(),
        "-D",
        images.to_str().unwrap(),
        "-R",
        "-v4",
        "-o",
        "dump.log",
        "--display-stats",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Frozen time:") && stdout.contains("Memory pages written:"),
        "{stdout}"
    );
    let log = std::fs::read_to_string(images.join("dump.log")).unwrap();
    assert!(
        log.contains("tree frozen") && log.contains("dumping process"),
        "{log}"
    );
    assert!(images.join("stats-dump").exists());
    assert!(images.join("pstree.img").exists());
    // Images and the log hold the tree's memory, paths and addresses: owner only.
    for e in std::fs::read_dir(&images).unwrap() {
        use std::os::unix::fs::PermissionsExt;
        let path = e.unwrap().path();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
}

#[test]
fn container_options_are_checked() {
    let scratch = ScratchDir::new("cli-container-options");
    let dir = scratch.path().to_str().unwrap();
    let tp = TestProcess::spawn(&["sleep", "100"], &scratch.path().join("out"));
    let pid = tp.pid.to_string();
    assert_one_line_error(
        &criu_rs(&["dump", "-t", &pid, "-D", dir, "--external", "dev[1]:x"]),
        "only net[...] namespaces, mnt[MOUNTPOINT]:KEY mounts",
    );
    // CRIU's `mnt[]` detects external mounts; it is refused, not taken for "do not
    // save the mount namespace" (a dump that then killed a tree nothing restores).
    for auto in ["mnt[]", "mnt[]:s"] {
        assert_one_line_error(
            &criu_rs(&["dump", "-t", &pid, "-D", dir, "--external", auto]),
            "does not detect external mounts itself",
        );
    }
    assert_one_line_error(
        &criu_rs(&["restore", "-D", dir, "--inherit-fd", "fd3:key"]),
        "expected fd[N]:KEY",
    );
    assert_one_line_error(
        &criu_rs(&["restore", "-D", dir, "--join-ns", "net"]),
        "expected NS:PATH",
    );
    assert!(std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .contains("TracerPid:\t0"));
}

/// `--file-locks` on the command line, as CRIU: without it a held lock is a one-line
/// refusal of the dump (and of a restore of images holding locks); with it the locks
/// come back and the program passes its check.
#[test]
fn file_locks_need_the_flag_on_both_command_lines() {
    let scratch = ScratchDir::new("cli-file-locks");
    let mut tp = TestProcess::start(scratch.path(), "locks", &[]);
    let pid = tp.pid.to_string();
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let dir = images.to_str().unwrap();
    assert_one_line_error(
        &criu_rs(&["dump", "-t", &pid, "-D", dir]),
        "dump and restore with --file-locks",
    );
    let out = criu_rs(&["dump", "--file-locks", "-t", &pid, "-D", dir]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = tp.child.wait();
    assert_one_line_error(&criu_rs(&["restore", "-d", "-D", dir]), "--file-locks");
    let out = criu_rs(&["restore", "-d", "--file-locks", "-D", dir]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tp.check(), "pass");
}
