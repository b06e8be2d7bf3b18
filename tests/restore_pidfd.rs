//! pidfds: tp-pidfd (pidfds of itself, of a child, of two dead processes) dumped and
//! restored by criu-rs, its images read by crit; CRIU 4.2 restoring our images and
//! criu-rs restoring CRIU's; and the refusal of a pidfd of a process outside the tree.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::files::kinds::Kind;
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_images::{pb, ImageReader};
use criu_rs_suite::{
    check_restored, crit_decode, criu_4_or_skip, criu_dump, criu_restore, debian_crit, task_state,
    tracer_pid, wait_until, DetachedTree, Reaper, ScratchDir, TestProcess,
};

/// tp-pidfd's `PATH.pidfds`: name -> (fd, pid).
fn listing(tp: &TestProcess) -> HashMap<String, (u32, i32)> {
    let text = std::fs::read_to_string(tp.ready_file.with_extension("ready.pidfds")).unwrap();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_owned(),
                (f[1].parse().unwrap(), f[2].parse().unwrap()),
            )
        })
        .collect()
}

/// The program, its live child and its zombie if it has one (the dead ones are no part
/// of the tree).
fn tree_of(tp: &TestProcess, pidfds: &HashMap<String, (u32, i32)>) -> Vec<i32> {
    let zombie = pidfds.get("zombie").map(|&(_, pid)| pid);
    [tp.pid, pidfds["child"].1]
        .into_iter()
        .chain(zombie)
        .collect()
}

fn gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn wait_gone(pids: &[i32]) {
    for &p in pids {
        wait_until("the dumped tree to go", Duration::from_secs(10), || gone(p));
    }
}

/// The PIDFD entries of `files.img`, by id.
fn pidfd_entries(images: &Path) -> HashMap<u32, pb::PidfdEntry> {
    let mut r = ImageReader::open(images.join("files.img")).unwrap();
    let mut out = HashMap::new();
    while let Some(e) = r.next_entry::<pb::FileEntry>().unwrap() {
        if let Some(p) = e.pidfd {
            assert_eq!(e.r#type, pb::FdTypes::Pidfd as i32);
            assert_eq!(e.id, p.id);
            out.insert(p.id, p);
        }
    }
    out
}

/// The root task's fdinfo entries (fd -> file id).
fn root_fds(images: &Path, pid: i32) -> HashMap<u32, u32> {
    let mut r = ImageReader::open(images.join(format!("ids-{pid}.img"))).unwrap();
    let ids = r.next_entry::<pb::TaskKobjIdsEntry>().unwrap().unwrap();
    let path = images.join(format!("fdinfo-{}.img", ids.files_id));
    let mut r = ImageReader::open(path).unwrap();
    let mut out = HashMap::new();
    while let Some(e) = r.next_entry::<pb::FdinfoEntry>().unwrap() {
        out.insert(e.fd, e.id);
    }
    out
}

/// What the images say of each pidfd of the program: the one entry per open file
/// description, the process it names (its pid, or -1 for the dead ones), its flags,
/// dead pidfds of one process with one inode; and crit reads them as CRIU's.
fn check_images(images: &Path, tp: &TestProcess, pidfds: &HashMap<String, (u32, i32)>) {
    let entries = pidfd_entries(images);
    let fds = root_fds(images, tp.pid);
    let entry = |name: &str| {
        let id = fds[&pidfds[name].0];
        entries
            .get(&id)
            .unwrap_or_else(|| panic!("{name}: file {id} is no pidfd"))
    };
    let zombie = pidfds.get("zombie");
    assert_eq!(entries.len(), 5 + zombie.iter().count(), "{entries:#?}");
    assert_eq!(entry("self").nspid, tp.pid);
    assert_eq!(entry("self").flags, 0);
    assert_eq!(entry("child").nspid, pidfds["child"].1);
    assert_eq!(entry("child").flags, libc::O_NONBLOCK as u32);
    assert_eq!(entry("child").id, entry("child-dup").id, "one description");
    if let Some(&(_, pid)) = zombie {
        assert_eq!(entry("zombie").nspid, pid);
    }
    for name in ["dead-a1", "dead-a2", "dead-b"] {
        assert_eq!(entry(name).nspid, -1, "{name}");
    }
    assert_ne!(entry("dead-a1").id, entry("dead-a2").id);
    assert_eq!(entry("dead-a1").ino, entry("dead-a2").ino);
    assert_ne!(entry("dead-a1").ino, entry("dead-b").ino);
    assert_eq!(entry("dead-b").flags, libc::O_NONBLOCK as u32);
    // Debian's crit (CRIU 3.17) predates pidfds: it reads the whole image, every other
    // entry with its contents, and shows each pidfd entry by its id alone.
    if let Some(crit) = debian_crit() {
        let json = crit_decode(&crit, &images.join("files.img")).unwrap();
        assert_eq!(json["magic"], "FILES");
        let decoded = json["entries"].as_array().unwrap();
        let mut bare: Vec<u64> = decoded
            .iter()
            .filter(|e| e.as_object().is_some_and(|o| o.len() == 1))
            .map(|e| e["id"].as_u64().unwrap())
            .collect();
        bare.sort_unstable();
        let mut ids: Vec<u64> = entries.keys().map(|&id| u64::from(id)).collect();
        ids.sort_unstable();
        assert_eq!(bare, ids, "{json:#}");
        assert!(decoded.iter().any(|e| e["type"] == "REG"), "{json:#}");
    }
}

#[test]
fn pidfds_of_the_tree_and_of_dead_processes_come_back() {
    let scratch = ScratchDir::new("pidfd-round-trip");
    let mut tp = TestProcess::start(scratch.path(), "pidfd", &[]);
    let pidfds = listing(&tp);
    let tree = tree_of(&tp, &pidfds);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    wait_gone(&tree);
    check_images(&images, &tp, &pidfds);

    let restored =
        restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    let _children = DetachedTree(tree[1..].to_vec());
    assert_eq!(restored.pid.0, tp.pid);
    assert_eq!(check_restored(restored.pid.0, &tp.ready_file), "pass");
}

/// A pidfd of the program's parent (outside the tree): the dump refuses it, naming the
/// task, the fd and the process, before touching the tree; the program runs on.
#[test]
fn a_pidfd_of_a_process_outside_the_tree_is_refused() {
    let scratch = ScratchDir::new("pidfd-outside");
    let mut tp = TestProcess::start(scratch.path(), "pidfd", &["--outside", "yes"]);
    let (fd, parent) = listing(&tp)["outside"];
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let err = dump(&DumpOptions::new(Pid(tp.pid), &images)).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("task {} fd {fd}", tp.pid))
            && msg.contains(Kind::PidfdOutside.name())
            && msg.contains(&format!("of process {parent}")),
        "{msg}"
    );
    assert!(matches!(task_state(tp.pid), Some('S') | Some('R')));
    assert_eq!(tracer_pid(tp.pid), Some(0), "not traced");
    assert_eq!(tp.check(), "pass");
}

/// A `PIDFD_THREAD` pidfd of a thread of the program: refused by name, as CRIU does.
#[test]
fn a_pidfd_of_a_thread_is_refused() {
    let scratch = ScratchDir::new("pidfd-thread");
    let mut tp = TestProcess::start(scratch.path(), "pidfd", &["--thread", "yes"]);
    let (fd, tid) = listing(&tp)["thread"];
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let err = dump(&DumpOptions::new(Pid(tp.pid), &images)).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("task {} fd {fd}", tp.pid))
            && msg.contains(Kind::PidfdThread.name())
            && msg.contains(&format!("of thread {tid}")),
        "{msg}"
    );
    assert_eq!(tracer_pid(tp.pid), Some(0), "not traced");
    assert_eq!(tp.check(), "pass");
}

#[test]
fn criu_4_2_restores_our_pidfds() {
    let Some(criu) = criu_4_or_skip("CRIU's restore of our pidfds") else {
        return;
    };
    let scratch = ScratchDir::new("pidfd-criu-restores");
    // Without the zombie: CRIU 4.2 does not restore our zombies (see the report).
    let mut tp = TestProcess::start(scratch.path(), "pidfd", &["--zombie", "no"]);
    let pidfds = listing(&tp);
    let tree = tree_of(&tp, &pidfds);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    wait_gone(&tree);
    let _restored = criu_restore(&criu, &images, &[], tree);
    assert_eq!(tp.check(), "pass");
}

#[test]
fn criu_4_2_pidfds_restore_with_criu_rs() {
    let Some(criu) = criu_4_or_skip("restoring CRIU's pidfds") else {
        return;
    };
    let scratch = ScratchDir::new("pidfd-criu-dumps");
    // Without the zombie: criu-rs does not restore CRIU's zombies.
    let mut tp = TestProcess::start(scratch.path(), "pidfd", &["--zombie", "no"]);
    let pidfds = listing(&tp);
    let tree = tree_of(&tp, &pidfds);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    criu_dump(&criu, tp.pid, &images, &[]);
    let _ = tp.child.wait();
    wait_gone(&tree);
    check_images(&images, &tp, &pidfds);
    let restored =
        restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restoring CRIU's: {e}"));
    let _reaper = Reaper(restored.pid.0);
    let _children = DetachedTree(tree[1..].to_vec());
    assert_eq!(check_restored(restored.pid.0, &tp.ready_file), "pass");
}
