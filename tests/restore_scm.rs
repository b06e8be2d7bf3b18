//! Descriptors waiting in unix sockets' queues (SCM_RIGHTS; CRIU's zdtm `scm00`..`scm09`).
//! tp-scm queues a regular file, a pipe's write end and socket ends (one the receiving
//! socket itself) on stream, seqpacket and datagram sockets, and closes them all: the
//! queues are their only holders. A dump records each as a file of the dump, named by
//! its packet's scm entry as CRIU writes it (crit reads the images); after a restore
//! the program receives every message with its bytes and working descriptors. A dump
//! that leaves the program running leaves every message and descriptor in place; one
//! that meets a file it cannot record in a queue (an inotify instance) refuses, naming
//! it, and leaves the program as it was. An epoll instance in a queue comes back
//! watching what it watched, registered again by the task holding the socket.

use std::collections::HashMap;
use std::path::Path;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, crit_decode, debian_crit, task_state, tracer_pid, Reaper, ScratchDir,
    TestProcess,
};

/// Starts tp-scm (with `args`) in a scratch directory of its own.
fn start(scratch: &ScratchDir, args: &[&str]) -> TestProcess {
    let dir = scratch.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let mut all = vec!["--dir", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    TestProcess::start(scratch.path(), "scm", &all)
}

fn images(scratch: &ScratchDir) -> std::path::PathBuf {
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    images
}

#[test]
fn queued_descriptors_come_back_with_their_messages() {
    let scratch = ScratchDir::new("scm-round-trip");
    let images = images(&scratch);
    let mut tp = start(&scratch, &[]);
    let ready = tp.ready_file.clone();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    check_images(&images);

    let restored =
        restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    assert_eq!(check_restored(restored.pid.0, &ready), "pass");
}

#[test]
fn a_dump_that_leaves_the_program_running_leaves_the_queues_in_place() {
    let scratch = ScratchDir::new("scm-leave-running");
    let images = images(&scratch);
    let mut tp = start(&scratch, &[]);
    let mut opts = DumpOptions::new(Pid(tp.pid), &images);
    opts.leave_running = true;
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    check_images(&images);
    runs_on_intact(&mut tp);
}

/// An epoll instance only queues hold (zdtm's scm05): its targets are registered
/// again by the task holding the socket that carries it.
#[test]
fn an_epoll_instance_in_a_queue_comes_back_watching() {
    let scratch = ScratchDir::new("scm-epoll");
    let images = images(&scratch);
    let mut tp = start(&scratch, &["--epoll", "yes"]);
    let ready = tp.ready_file.clone();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    let restored =
        restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    assert_eq!(check_restored(restored.pid.0, &ready), "pass");
}

/// Refused before the freeze: the head of the queue shows it.
#[test]
fn an_inotify_instance_in_a_queue_is_refused_and_the_program_left_running() {
    refused_inotify("scm-inotify", "yes");
}

/// Refused once the tree is frozen, after the queue was read: every message and
/// descriptor is still in place.
#[test]
fn an_inotify_instance_deeper_in_a_queue_is_refused_and_the_queue_left_intact() {
    refused_inotify("scm-inotify-late", "late");
}

fn refused_inotify(test: &str, mode: &str) {
    let scratch = ScratchDir::new(test);
    let images = images(&scratch);
    let mut tp = start(&scratch, &["--inotify", mode]);
    let err = dump(&DumpOptions::new(Pid(tp.pid), &images))
        .expect_err("an inotify instance in a queue must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("inotify")
            && msg.contains("queue of unix socket")
            && msg.contains("SCM_RIGHTS"),
        "the message names the file, the socket and why: {msg}"
    );
    runs_on_intact(&mut tp);
}

/// The images as crit reads them: every queued packet carrying descriptors has one
/// SCM_RIGHTS entry whose file ids are files of the dump of the kinds tp-scm sent.
fn check_images(images: &Path) {
    let Some(crit) = debian_crit() else {
        return;
    };
    let decode =
        |name: &str| crit_decode(&crit, &images.join(name)).unwrap_or_else(|e| panic!("{e}"));
    let files = decode("files.img");
    let kinds: HashMap<u64, String> = files["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_u64().unwrap(),
                e["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let queues = decode("sk-queues.img");
    let mut carried: Vec<(u64, Vec<String>)> = Vec::new();
    for p in queues["entries"].as_array().unwrap() {
        let length = p["length"].as_u64().unwrap();
        let Some(scm) = p["scm"].as_array() else {
            continue;
        };
        assert_eq!(scm.len(), 1, "one control message per packet: {p}");
        assert_eq!(scm[0]["type"].as_u64(), Some(1), "SCM_RIGHTS: {p}");
        let rights: Vec<String> = scm[0]["rights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| {
                let id = id.as_u64().unwrap();
                kinds
                    .get(&id)
                    .unwrap_or_else(|| panic!("file {id} of a packet is not in files.img"))
                    .clone()
            })
            .collect();
        carried.push((length, rights));
    }
    carried.sort();
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        carried,
        vec![
            (3, s(&["UNIXSK", "REG"])),
            (4, s(&["PIPE"])),
            (4, s(&["REG"])),
            (4, s(&["UNIXSK"])),
            (4, s(&["UNIXSK"])),
        ],
        "the packets with descriptors (length, kinds of the files)"
    );
    // The two copies of the file are one open file description.
    let reg_ids: Vec<u64> = queues["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["scm"].as_array())
        .flat_map(|scm| scm[0]["rights"].as_array().unwrap().clone())
        .filter_map(|id| id.as_u64())
        .filter(|id| kinds.get(id).is_some_and(|k| k == "REG"))
        .collect();
    assert_eq!(reg_ids.len(), 2);
    assert_eq!(reg_ids[0], reg_ids[1], "the file sent twice is one file");
}

/// A program a dump left running or refused: running, untraced, passing its own check.
fn runs_on_intact(tp: &mut TestProcess) {
    assert!(
        matches!(task_state(tp.pid), Some('S') | Some('R')),
        "running"
    );
    assert_eq!(tracer_pid(tp.pid), Some(0), "not traced");
    assert_eq!(check_restored(tp.pid, &tp.ready_file), "pass");
    let _ = tp.child.wait();
}
