//! POSIX message queues (issue 12): tp-mqueue holds a queue with messages of mixed
//! priorities open twice (read-write non-blocking, and write-only), a nameless queue,
//! and with `--ipcns yes` lives in an IPC namespace of its own holding a queue no
//! descriptor has. After a dump (which kills it) and a restore, it finds every queue,
//! message, priority and descriptor as it was; a queue of the host's namespace that is
//! gone by then is made again with its messages; one that is there is reopened. A
//! queue with a notification registered is refused by name, the program left running
//! untouched, and so is one holding a queue of an IPC namespace outside the tree; a
//! failed dump and a dump that leaves the program running leave every queue as it was
//! (the dump reads messages by taking them out and putting them back). Debian's crit
//! decodes every image of each dump: a queue's image as a SysV message queue one, with
//! its messages in priority order.

use std::path::Path;

use serde_json::Value as Json;

use criu_core::dump::{dump, DumpOptions, Stage};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::{self, Pid};
use criu_rs_suite::{
    check_restored, clean_command, crit_decode, criu_4_or_skip, debian_crit, task_state,
    tracer_pid, Reaper, ScratchDir, TestProcess,
};

/// Removes the named queues a test program made in our IPC namespace, whatever happens
/// to the test (the program removes them itself after a passing check).
struct Queues(Vec<String>);

impl Queues {
    fn of(ready: &Path) -> Queues {
        let list = std::fs::read_to_string(ready.with_extension("ready.queues")).unwrap();
        Queues(list.lines().map(str::to_owned).collect())
    }

    fn exists(name: &str) -> bool {
        let bare = name.trim_start_matches('/');
        sys::mq_open_name(bare.as_bytes(), libc::O_RDONLY, None).is_ok()
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = sys::mq_unlink_name(name.trim_start_matches('/').as_bytes());
        }
    }
}

fn tag(test: &str) -> String {
    format!("tp-mqueue-{test}-{}", std::process::id())
}

/// Starts tp-mqueue with `args`, dumps it (killing it), runs `between`, restores it and
/// returns its verdict.
fn round_trip(test: &str, args: &[&str], between: impl FnOnce(&Path, &Queues)) -> String {
    let scratch = ScratchDir::new(test);
    let tag = tag(test);
    let mut all = vec!["--tag", &tag];
    all.extend_from_slice(args);
    let mut tp = TestProcess::start(scratch.path(), "mqueue", &all);
    let queues = Queues::of(&tp.ready_file);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    crit_reads_every_image(&images);
    between(&images, &queues);
    let restored =
        restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    check_restored(reaper.0, &tp.ready_file)
}

/// In the host's IPC namespace the queue outlives the program: the restore reopens it.
#[test]
fn a_queue_holder_comes_back_with_its_queues_and_messages() {
    let verdict = round_trip("mq-kept", &[], |_, queues| {
        assert!(
            Queues::exists(&queues.0[0]),
            "the named queue outlives the dump"
        );
    });
    assert_eq!(verdict, "pass");
}

/// Restored where the queue is gone (as on another machine): made again, with its
/// messages, size, mode and owner.
#[test]
fn a_queue_gone_since_the_dump_is_made_again_with_its_messages() {
    let verdict = round_trip("mq-gone", &[], |_, queues| {
        for name in &queues.0 {
            sys::mq_unlink_name(name.trim_start_matches('/').as_bytes()).unwrap();
        }
    });
    assert_eq!(verdict, "pass");
}

/// A tree with its own IPC namespace takes its queues along, also one no descriptor
/// holds; none of them shows in ours.
#[test]
fn a_tree_in_its_own_ipc_namespace_takes_its_queues_along() {
    let verdict = round_trip("mq-ipcns", &["--ipcns", "yes"], |images, queues| {
        for name in &queues.0 {
            assert!(!Queues::exists(name), "{name} leaked into our namespace");
        }
        let names: Vec<String> = queue_images(images)
            .iter()
            .map(|(_, q)| q["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(names.len(), 3, "main, nameless and orphan: {names:?}");
        assert!(names.iter().any(|n| n.ends_with("-orphan")), "{names:?}");
    });
    assert_eq!(verdict, "pass");
}

/// Every image file of a dump but the raw page contents (no image has a magic there),
/// by name.
fn image_files(images: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(images)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                path,
            )
        })
        .filter(|(name, _)| !name.starts_with("pages-") && !name.ends_with(".log"))
        .collect();
    out.sort();
    out
}

/// Each queue's image as our own decoder reads it: its file name and its entry.
fn queue_images(images: &Path) -> Vec<(String, Json)> {
    image_files(images)
        .into_iter()
        .filter(|(name, _)| name.starts_with("criu-rs-mqueue-"))
        .map(|(name, path)| {
            let mut r = criu_images::ImageReader::open(&path).unwrap();
            let doc = criu_images::crit::decode(&mut r, Default::default()).unwrap();
            assert_eq!(doc["magic"], "CRIU_RS_MQUEUE", "{name}: {doc}");
            let entries = doc["entries"].as_array().unwrap();
            assert_eq!(entries.len(), 1, "{name}: one queue: {doc}");
            (name, entries[0].clone())
        })
        .collect()
}

/// Debian's crit decodes every image of the dump in `images` (and explores the
/// directory): a queue's image as CRIU's SysV message queue image, whose entry and
/// messages are those our own decoder reads, less our fields; files.img's EXT entries
/// as CRIU's, less our description of the queue.
fn crit_reads_every_image(images: &Path) {
    let queues = queue_images(images);
    assert!(!queues.is_empty(), "a dump of queues writes their images");
    let Some(crit) = debian_crit() else {
        return;
    };
    for (name, path) in image_files(images) {
        let doc = crit_decode(&crit, &path).unwrap_or_else(|e| panic!("{e}"));
        assert!(doc["entries"].is_array(), "{name}: {doc}");
    }
    for (name, ours) in &queues {
        let doc = crit_decode(&crit, &images.join(name)).unwrap();
        assert_eq!(doc["magic"], "IPCNS_MSG", "{name}: {doc}");
        let theirs = &doc["entries"][0];
        for field in ["desc", "qbytes", "qnum", "extra"] {
            assert_eq!(theirs[field], ours[field], "{name}: {field}");
        }
        assert!(
            theirs.get("name").is_none(),
            "{name}: crit knows none of our fields"
        );
        // The priorities, as SysV message types, in the order a receiver gets them.
        let extra = theirs["extra"].as_array().unwrap();
        let prios: Vec<u64> = extra
            .iter()
            .step_by(2)
            .map(|m| m["mtype"].as_u64().unwrap())
            .collect();
        assert_eq!(
            prios.len() as u64,
            theirs["qnum"].as_u64().unwrap(),
            "{name}"
        );
        assert!(prios.windows(2).all(|w| w[0] >= w[1]), "{name}: {prios:?}");
        let desc = &theirs["desc"];
        assert_eq!(
            (&desc["key"], &desc["cuid"], &desc["cgid"]),
            (&Json::from(0), &desc["uid"], &desc["gid"]),
            "{name}"
        );
    }
    let files = crit_decode(&crit, &images.join("files.img")).unwrap();
    let ext: Vec<&Json> = files["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["type"] == "EXT")
        .collect();
    assert!(!ext.is_empty(), "queue descriptions are EXT files: {files}");
    for f in ext {
        assert_eq!(f["ext"]["id"], f["id"], "{f}");
        assert!(f["ext"].get("mqueue").is_none(), "{f}");
    }
    for what in ["ps", "fds"] {
        let out = clean_command(crit.to_str().unwrap())
            .arg("x")
            .arg(images)
            .arg(what)
            .output()
            .expect("run crit");
        assert!(
            out.status.success(),
            "crit x {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A program a dump refused: running, untraced, and passing its own check.
fn runs_on_intact(tp: &mut TestProcess) {
    assert!(
        matches!(task_state(tp.pid), Some('S') | Some('R')),
        "running"
    );
    assert_eq!(tracer_pid(tp.pid), Some(0), "not traced");
    assert_eq!(tp.check(), "pass");
    let _ = tp.child.wait();
}

#[test]
fn a_registered_notification_is_refused_by_name_and_the_tree_left_running() {
    let scratch = ScratchDir::new("mq-notify");
    let tag = tag("notify");
    let mut tp = TestProcess::start(
        scratch.path(),
        "mqueue",
        &["--tag", &tag, "--notify", "yes"],
    );
    let _queues = Queues::of(&tp.ready_file);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let opts = DumpOptions::new(Pid(tp.pid), &images);
    let err = dump(&opts).expect_err("a registered notification must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("task {} fd ", tp.pid))
            && msg.contains(&format!("queue /{tag}-notify"))
            && msg.contains("notification registered")
            && msg.contains(&format!("by pid {}", tp.pid)),
        "the message names the task, the fd, the queue and who registered: {msg}"
    );
    assert!(
        std::fs::read_dir(&images).unwrap().next().is_none(),
        "a refused dump writes nothing"
    );
    // Its check sends to the empty queue and expects the notification.
    runs_on_intact(&mut tp);
}

/// A queue the program holds from the IPC namespace it started in, which it has left
/// for one of its own, cannot be made again in the tree's: refused by name before
/// anything of the tree is touched, its message still in it.
#[test]
fn a_queue_of_an_ipc_namespace_outside_the_tree_is_refused_by_name() {
    let scratch = ScratchDir::new("mq-foreign");
    let tag = tag("foreign");
    let mut tp = TestProcess::start(
        scratch.path(),
        "mqueue",
        &["--tag", &tag, "--foreign", "yes"],
    );
    let _queues = Queues::of(&tp.ready_file);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let opts = DumpOptions::new(Pid(tp.pid), &images);
    let err = dump(&opts).expect_err("a queue of another IPC namespace must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("task {} fd ", tp.pid))
            && msg.contains(&format!("queue /{tag}-foreign"))
            && msg.contains("IPC namespace outside the dump"),
        "the message names the task, the fd, the queue and why: {msg}"
    );
    assert!(
        std::fs::read_dir(&images).unwrap().next().is_none(),
        "a refused dump writes nothing"
    );
    // Its messages were not read (taken out and put back): the one it had is there.
    let name = format!("{tag}-foreign");
    let q = sys::mq_open_name(name.as_bytes(), libc::O_RDONLY | libc::O_CLOEXEC, None)
        .expect("the queue is in our namespace");
    assert_eq!(
        sys::mq_getattr(std::os::fd::AsFd::as_fd(&q))
            .unwrap()
            .curmsgs,
        1
    );
    runs_on_intact(&mut tp);
}

/// Reading the messages takes them out of the queues: a dump that fails after that,
/// and one that leaves the program running, must have put them all back in order.
#[test]
fn a_failed_dump_and_a_leave_running_dump_leave_the_queues_as_they_were() {
    let scratch = ScratchDir::new("mq-intact");
    let tag = tag("intact");
    let mut tp = TestProcess::start(scratch.path(), "mqueue", &["--tag", &tag]);
    let _queues = Queues::of(&tp.ready_file);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let failing = DumpOptions {
        fail_after: Some(Stage::Files),
        ..DumpOptions::new(Pid(tp.pid), &images)
    };
    dump(&failing).expect_err("the failure hook stops the dump");
    let _ = std::fs::remove_dir_all(&images);
    std::fs::create_dir(&images).unwrap();
    let running = DumpOptions {
        leave_running: true,
        ..DumpOptions::new(Pid(tp.pid), &images)
    };
    dump(&running).unwrap_or_else(|e| panic!("dump -R: {e}"));
    runs_on_intact(&mut tp);
}

/// CRIU 4.2 has no image for message queues: it takes our EXT entry for a file one of
/// its plugins dumped and, having none, refuses to restore it, naming the file, instead
/// of misreading anything.
#[test]
fn criu_4_2_refuses_our_queue_images_by_name() {
    let Some(criu) = criu_4_or_skip("the CRIU cross-check of message queues") else {
        return;
    };
    let scratch = ScratchDir::new("mq-criu");
    let tag = tag("criu");
    let mut tp = TestProcess::start(scratch.path(), "mqueue", &["--tag", &tag]);
    let _queues = Queues::of(&tp.ready_file);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let pid = tp.pid;
    let _ = tp.child.wait();
    let out = clean_command(criu.to_str().unwrap())
        .args(["restore", "-d", "-v4", "-o", "restore.log", "-D"])
        .arg(&images)
        .output()
        .expect("run criu");
    // Nothing may be left if it got further than expected.
    let _reaper = Reaper(pid);
    let log = std::fs::read_to_string(images.join("restore.log")).unwrap_or_default();
    assert!(
        !out.status.success(),
        "CRIU restored a queue it has no image for"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("Error") && l.contains("Unable to restore")),
        "CRIU names the file it cannot restore: {log}"
    );
}

/// A job worker written against `posix_ipc` (PyPI), the module of CRIU's own report of
/// this gap (its issue 2285): it waits in a blocking receive on a control queue and, on
/// `drain`, takes every job of its job queue (highest priority first) into its output.
const WORKER: &str = r#"
import sys, posix_ipc
jobs_name, control_name = sys.argv[1], sys.argv[2]
jobs = posix_ipc.MessageQueue(jobs_name, posix_ipc.O_CREAT, mode=0o600,
                              max_messages=8, max_message_size=128)
control = posix_ipc.MessageQueue(control_name, posix_ipc.O_CREAT, mode=0o600,
                                 max_messages=4, max_message_size=16)
print("ready", flush=True)
while True:
    command, _ = control.receive()
    if command == b"drain":
        while jobs.current_messages:
            job, prio = jobs.receive()
            print("job", prio, job.decode(), flush=True)
        print("drained", flush=True)
"#;

/// Debian's python3 when it has `posix_ipc` (`None`, with the reason, otherwise; CI
/// installs it, see .ci/run).
fn python_with_posix_ipc() -> Option<&'static str> {
    let python = "/usr/bin/python3";
    let has = std::process::Command::new(python)
        .args(["-c", "import posix_ipc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has {
        return Some(python);
    }
    assert!(
        std::env::var_os("CRIU_RS_REQUIRE_SERVERS").is_none(),
        "python3's posix_ipc is required but not installed"
    );
    eprintln!(
        "skipping: python3 has no posix_ipc (python3 -m pip install --break-system-packages \
         posix-ipc)"
    );
    None
}

/// The worker's output lines once `last` is among them.
fn output_until(out: &Path, last: &str) -> Vec<String> {
    let mut lines = Vec::new();
    criu_rs_suite::wait_until(last, std::time::Duration::from_secs(20), || {
        lines = std::fs::read_to_string(out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.iter().any(|l| l == last)
    });
    lines
}

/// The real program: jobs a producer outside the tree queued while the worker waited
/// on its control queue are saved, and after a restore on a machine where the queues
/// are gone (they are removed after the dump) the worker, still in its blocking
/// receive, drains them in priority order and takes new ones.
#[test]
fn a_posix_ipc_job_worker_keeps_its_queued_jobs() {
    let Some(python) = python_with_posix_ipc() else {
        return;
    };
    let scratch = ScratchDir::new("mq-worker");
    let jobs = format!("/criu-rs-jobs-{}", std::process::id());
    let control = format!("/criu-rs-control-{}", std::process::id());
    let _queues = Queues(vec![jobs.clone(), control.clone()]);
    let out = scratch.path().join("worker.out");
    let mut worker = TestProcess::spawn(&[python, "-c", WORKER, &jobs, &control], &out);
    output_until(&out, "ready");
    let open = |name: &str| {
        let bare = name.trim_start_matches('/').as_bytes();
        sys::mq_open_name(bare, libc::O_WRONLY | libc::O_CLOEXEC, None).unwrap()
    };
    let queued = [(1, "low"), (9, "urgent"), (5, "normal-1"), (5, "normal-2")];
    let producer = open(&jobs);
    for (prio, job) in queued {
        assert!(
            sys::mq_send_now(std::os::fd::AsFd::as_fd(&producer), prio, job.as_bytes()).unwrap()
        );
    }
    drop(producer);

    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(worker.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = worker.child.wait();
    for name in [&jobs, &control] {
        sys::mq_unlink_name(name.trim_start_matches('/').as_bytes()).unwrap();
    }
    let restored =
        restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);

    let send = |name: &str, prio: u32, text: &str| {
        let q = open(name);
        assert!(sys::mq_send_now(std::os::fd::AsFd::as_fd(&q), prio, text.as_bytes()).unwrap());
    };
    send(&control, 0, "drain");
    let lines = output_until(&out, "drained");
    assert_eq!(
        lines[1..],
        [
            "job 9 urgent",
            "job 5 normal-1",
            "job 5 normal-2",
            "job 1 low",
            "drained"
        ],
        "the jobs queued before the dump, in priority order"
    );
    send(&jobs, 3, "after-restore");
    send(&control, 0, "drain");
    criu_rs_suite::wait_until("the new job", std::time::Duration::from_secs(20), || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("job 3 after-restore\ndrained\n")
    });
}
