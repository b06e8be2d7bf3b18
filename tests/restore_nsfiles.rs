//! Files of a tree restored in namespaces of its own, as CRIU's zdtm runs its tests in
//! its `ns` flavor and as a container runtime restores a container: tp-mntns with
//! `--files 1`, started as pid 1 of a new pid namespace (`unshare --pid --fork`), the
//! leader of its own session, in a
//! mount namespace of its own, holds a unix listener bound to a name that fits
//! `sun_path` only as the tree sees it, a datagram socket bound to a relative name, a
//! pty of its own devpts instance, and a pipe whose signal owner is itself (pid 1
//! there). Dumped, killed, restored under `--root`: the restored program connects a
//! client to its listener by name, sends a datagram to the other's, passes a line
//! through the pty, finds itself the pipe's owner and its held mount and pid namespace
//! files those it is in. CRIU 4.2 restores the same images.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, clean_command, criu_4_or_skip, criu_log_errors, task_state, wait_for_file,
    wait_until, workspace_bin, DetachedTree, Reaper, ScratchDir, TestProcess,
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

/// The program, dumped (and so killed) into `images`, as pid 1 of its own pid
/// namespace; with the directory of our binaries, its external mount `bin`.
struct Dumped {
    root: PathBuf,
    ready_file: PathBuf,
    images: PathBuf,
    bin: PathBuf,
}

fn start_and_dump(scratch: &ScratchDir) -> Dumped {
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
    Dumped {
        root,
        ready_file,
        images,
        bin,
    }
}

#[test]
fn sockets_ptys_and_signal_owners_of_a_tree_with_its_own_pid_and_mount_namespaces() {
    let scratch = ScratchDir::new("nsfiles");
    let d = start_and_dump(&scratch);
    let restored = restore(&RestoreOptions {
        root: Some(d.root.clone()),
        ext_mounts: vec![("usr".into(), "/usr".into()), ("bin".into(), d.bin.clone())],
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&d.images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    wait_until("running", Duration::from_secs(10), || {
        matches!(task_state(reaper.0), Some('S') | Some('R'))
    });
    let me = std::process::id() as i32;
    assert_ne!(ns_link(reaper.0, "pid"), ns_link(me, "pid"));
    assert_ne!(ns_link(reaper.0, "mnt"), ns_link(me, "mnt"));
    assert_eq!(check_restored(reaper.0, &d.ready_file), "pass");
}

/// CRIU 4.2 restores the same images: the signal owner is saved as CRIU saves it (the
/// number the task has in its pid namespace), the sockets' names and the pty as CRIU
/// reads them.
#[test]
fn criu_4_2_restores_them() {
    let Some(criu) = criu_4_or_skip("CRIU's restore of a tree with its own namespaces") else {
        return;
    };
    let scratch = ScratchDir::new("nsfiles-criu");
    let d = start_and_dump(&scratch);
    let pidfile = scratch.path().join("restored.pid");
    let out = clean_command(criu.to_str().unwrap())
        .args(["restore", "-d", "-v4", "-o", "restore.log", "--root"])
        .arg(&d.root)
        .args(["--external", "mnt[usr]:/usr", "--external"])
        .arg(format!("mnt[bin]:{}", d.bin.display()))
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("-D")
        .arg(&d.images)
        .output()
        .unwrap();
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let restored = DetachedTree(if pid > 0 { vec![pid] } else { vec![] });
    assert!(
        out.status.success() && pid > 0,
        "CRIU could not restore our images: {:#?}",
        criu_log_errors(&d.images.join("restore.log"))
    );
    assert_eq!(check_restored(restored.0[0], &d.ready_file), "pass");
}

/// tp-zombielead (`--leader LEADER`) as pid 1 of its own pid namespace, dumped, killed and
/// restored; its check passes.
fn session_member_of_init(leader: &str) {
    let scratch = ScratchDir::new(&format!("nsfiles-{leader}lead"));
    let ready_file = scratch.path().join("zombielead.ready");
    let tp = workspace_bin("tp-zombielead");
    let out = scratch.path().join("zombielead.out");
    // Its output a file of its own: unshare writes to its own after the dump.
    let exec = format!("exec \"$0\" \"$@\" >{} 2>&1", out.display());
    let argv = [
        "unshare",
        "--pid",
        "--fork",
        "setsid",
        "sh",
        "-c",
        &exec,
        tp.to_str().unwrap(),
        "--ready-file",
        ready_file.to_str().unwrap(),
        "--leader",
        leader,
    ];
    let mut unshare = TestProcess::spawn(&argv, &scratch.path().join("unshare.out"));
    let text = wait_for_file(&ready_file, Duration::from_secs(60)).unwrap_or_else(|| {
        let out = std::fs::read_to_string(&out).unwrap_or_default();
        panic!("tp-zombielead did not get ready: {out}")
    });
    assert_eq!(text.trim(), "ready 1", "pid 1 of its own pid namespace");
    let pid = only_child(unshare.pid);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = unshare.child.wait();
    let restored = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    let me = std::process::id() as i32;
    assert_ne!(ns_link(reaper.0, "pid"), ns_link(me, "pid"));
    assert_eq!(check_restored(reaper.0, &ready_file), "pass");
}

/// A session whose leader is a zombie holds a live process that is the init's child:
/// the restore has the zombie fork it into its session before it dies, so the zombie's
/// death hands it to the init.
#[test]
fn a_session_led_by_a_zombie_keeps_its_member_in_a_new_pid_namespace() {
    session_member_of_init("zombie");
}

/// A live session leader's session holds the init's child (orphaned when the leader's
/// helper exited): the leader forks a helper that forks it and is ended.
#[test]
fn a_live_leaders_session_keeps_the_inits_child_in_a_new_pid_namespace() {
    session_member_of_init("live");
}

/// A daemon that forked twice: its session's leader exited and was reaped, and the
/// init's child is in a session and group no process leads. A helper of the root with
/// the session's number makes it again, forks the member and is ended.
#[test]
fn a_gone_leaders_session_keeps_the_inits_child_in_a_new_pid_namespace() {
    session_member_of_init("gone");
}
