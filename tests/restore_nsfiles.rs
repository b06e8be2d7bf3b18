//! Files of a tree restored in namespaces of its own, as CRIU's zdtm runs its tests in
//! its `ns` flavor and as a container runtime restores a container: tp-mntns with
//! `--files 1`, started as pid 1 of a new pid namespace (`unshare --pid --fork`), the
//! leader of its own session, in a
//! mount namespace of its own, holds a unix listener bound to a name that fits
//! `sun_path` only as the tree sees it, a datagram socket bound to a relative name, a
//! pty of its own devpts instance, and a pipe whose signal owner is itself (pid 1
//! there). Dumped, killed, restored under `--root`: the restored program connects a
//! client to its listener by name, sends a datagram to the other's, passes a line
//! through the pty and finds itself the pipe's owner.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, task_state, wait_for_file, wait_until, workspace_bin, Reaper, ScratchDir,
    TestProcess,
};

fn ns_link(pid: i32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The one child of `parent` (unshare's: the program, pid 1 of the new namespace).
fn only_child(parent: i32) -> i32 {
    let mut child = None;
    wait_until("the program's process", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        child = text.split_whitespace().next().and_then(|p| p.parse().ok());
        child.is_some()
    });
    child.unwrap_or_default()
}

#[test]
fn sockets_ptys_and_signal_owners_of_a_tree_with_its_own_pid_and_mount_namespaces() {
    let scratch = ScratchDir::new("nsfiles");
    let root = scratch.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let ready_file = root.join("mntns.ready");
    let tp = workspace_bin("tp-mntns");
    let argv = [
        "unshare",
        "--pid",
        "--fork",
        // A session of its own, as a container's init: setsid(1) execs in place, as pid
        // 1 of the new namespace leads no group yet.
        "setsid",
        tp.to_str().unwrap(),
        "--ready-file",
        ready_file.to_str().unwrap(),
        "--files",
        "1",
    ];
    let mut unshare = TestProcess::spawn(&argv, &scratch.path().join("unshare.out"));
    let text = wait_for_file(&ready_file, Duration::from_secs(60)).unwrap_or_else(|| {
        let out = std::fs::read_to_string(root.join("mntns.out")).unwrap_or_default();
        panic!("tp-mntns did not get ready: {out}")
    });
    assert_eq!(text.trim(), "ready 1", "pid 1 of its own pid namespace");
    let pid = only_child(unshare.pid);
    let me = std::process::id() as i32;
    assert_ne!(ns_link(pid, "pid"), ns_link(me, "pid"));
    assert_ne!(ns_link(pid, "mnt"), ns_link(me, "mnt"));

    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let bin: PathBuf = criu_rs_suite::bin_dir().canonicalize().unwrap();
    dump(&DumpOptions {
        ext_mounts: vec![
            ("/usr".into(), "usr".into()),
            (bin.to_string_lossy().into_owned(), "bin".into()),
        ],
        ..DumpOptions::new(Pid(pid), &images)
    })
    .unwrap_or_else(|e| panic!("dump: {e}"));
    // unshare ends with its child.
    let _ = unshare.child.wait();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());

    let restored = restore(&RestoreOptions {
        root: Some(root.clone()),
        ext_mounts: vec![("usr".into(), "/usr".into()), ("bin".into(), bin)],
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    wait_until("running", Duration::from_secs(10), || {
        matches!(task_state(reaper.0), Some('S') | Some('R'))
    });
    assert_ne!(ns_link(reaper.0, "pid"), ns_link(me, "pid"));
    assert_ne!(ns_link(reaper.0, "mnt"), ns_link(me, "mnt"));
    assert_eq!(check_restored(reaper.0, &ready_file), "pass");
}
