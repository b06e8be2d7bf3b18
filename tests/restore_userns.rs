//! User namespaces (issue 14): tp-userns, whose tree lives in a user namespace of its own
//! with a non-identity map (0 in it is host uid 100000 + n) and a child with non-root
//! credentials there, dumped, killed and restored: the program checks its maps, ids,
//! groups and capabilities and that it can still rename its UTS namespace's host; the
//! images hold the maps and the credentials in the namespace's terms, as crit reads
//! them; the restored tree is dumped and restored again, and once more into mount and
//! network namespaces of ours it joins (as crpod's). Deeper layouts, namespaces of
//! the tree its user namespace does not own, and a multi-task tree in our pid namespace
//! are refused by name.
//!
//! Each test maps its own host ids (`base`), so tests running side by side never share
//! an owner; each gets its own scratch directory (which tp-userns gives to the
//! namespace's root, the only user that can write there from inside).

use std::path::Path;
use std::time::Duration;

use criu_core::dump::ns::NsError;
use criu_core::dump::{dump, DumpError, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_images::{pb, ImageReader};
use criu_rs_suite::{
    check_restored, clean_command, crit_decode, debian_crit, wait_until, Reaper, ScratchDir,
    TestProcess,
};

/// Host ids of the namespace's root for test `n`: 65536 ids each, far above any user.
fn base(n: u32) -> u32 {
    200_000 + n * 65_536
}

fn ns_link(pid: i32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

fn status_line(pid: i32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .map(|l| {
            l[field.len() + 1..]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn first_entry<M: prost::Message + Default>(path: &Path) -> M {
    let mut r = ImageReader::open(path).unwrap_or_else(|e| panic!("{e}"));
    r.next_entry::<M>().unwrap().expect("an entry")
}

fn have_user_namespaces() -> bool {
    let here = Path::new("/proc/self/ns/user").exists();
    if !here {
        eprintln!("no user namespaces on this kernel: skipped");
    }
    here
}

/// What the host sees of the tree: the root's maps, and the child's host ids.
fn host_view(root: i32, base: u32) {
    let map = format!("0 {base} 65536");
    for file in ["uid_map", "gid_map"] {
        let text = std::fs::read_to_string(format!("/proc/{root}/{file}")).unwrap();
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(lines, vec![map.clone()], "{file}");
    }
    assert_ne!(
        ns_link(root, "user"),
        ns_link(std::process::id() as i32, "user")
    );
    let child = children(root);
    assert_eq!(child.len(), 1, "one child: {child:?}");
    let (u, g) = (base + 1000, base + 1001);
    assert_eq!(status_line(child[0], "Uid"), format!("{u} {u} {g} {u}"));
    assert_eq!(
        status_line(child[0], "Groups"),
        format!("{} {}", base + 1000, base + 2000)
    );
    assert_eq!(ns_link(child[0], "user"), ns_link(root, "user"));
    assert_eq!(ns_link(child[0], "uts"), ns_link(root, "uts"));
}

/// The user namespace's image and the credentials, in the namespace's terms.
fn check_images(images: &Path, base: u32) {
    let root = 1;
    let inv: pb::InventoryEntry = first_entry(&images.join("inventory.img"));
    let ids: pb::TaskKobjIdsEntry = first_entry(&images.join(format!("ids-{root}.img")));
    let host_user = inv.root_ids.and_then(|r| r.user_ns_id);
    let user = ids.user_ns_id.expect("a user namespace id");
    assert_ne!(
        Some(user),
        host_user,
        "the tree's user namespace is its own"
    );
    let userns: pb::UsernsEntry = first_entry(&images.join(format!("userns-{user}.img")));
    let extent = pb::UidGidExtent {
        first: 0,
        lower_first: base,
        count: 65536,
    };
    assert_eq!(userns.uid_map, vec![extent]);
    assert_eq!(userns.gid_map, vec![extent]);
    let core: pb::CoreEntry = first_entry(&images.join(format!("core-{root}.img")));
    let creds = core.thread_core.unwrap().creds.unwrap();
    assert_eq!((creds.uid, creds.euid, creds.gid), (0, 0, 0));
    let Some(crit) = debian_crit() else { return };
    for e in std::fs::read_dir(images).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".img") && !name.starts_with("pages-") {
            crit_decode(&crit, &p).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let json = crit_decode(&crit, &images.join(format!("userns-{user}.img"))).unwrap();
    let e = &json["entries"][0];
    assert_eq!(
        e["uid_map"][0]["lower_first"].as_u64(),
        Some(u64::from(base))
    );
    assert_eq!(e["gid_map"][0]["count"].as_u64(), Some(65536));
    let pstree = crit_decode(&crit, &images.join("pstree.img")).unwrap();
    let child = pstree["entries"][1]["pid"].as_u64().expect("the child");
    assert_eq!(child, 2, "the child's pid in the tree's namespace");
    let core = crit_decode(&crit, &images.join(format!("core-{child}.img"))).unwrap();
    let c = &core["entries"][0]["thread_core"]["creds"];
    assert_eq!(c["uid"].as_u64(), Some(1000), "{c}");
    assert_eq!(c["suid"].as_u64(), Some(1001), "{c}");
    assert_eq!(c["groups"], serde_json::json!([1000, 2000]), "{c}");
}

#[test]
fn tree_in_own_user_namespace_round_trips() {
    if !have_user_namespaces() {
        return;
    }
    let dir = ScratchDir::new("restore_userns_round_trip");
    let base = base(1);
    let arg = base.to_string();
    let mut tp = TestProcess::start(dir.path(), "userns", &["--base", &arg]);
    // The program waits for its child, the tree's root (pid 1 in its namespace).
    let root = children(tp.pid)[0];
    wait_until("the root's child", Duration::from_secs(10), || {
        children(root).len() == 1
    });
    host_view(root, base);
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    dump(&DumpOptions::new(Pid(root), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    check_images(&images, base);
    let restored =
        restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    host_view(restored.pid.0, base);
    // Once more: the restored tree (now also in a time namespace of its own, made in
    // its user namespace) is dumped and restored again.
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    dump(&DumpOptions::new(restored.pid, &again)).unwrap_or_else(|e| panic!("dump again: {e}"));
    drop(reaper); // reaps the killed root, so its pid is free
    let restored =
        restore(&RestoreOptions::new(&again)).unwrap_or_else(|e| panic!("restore again: {e}"));
    let _reaper = Reaper(restored.pid.0);
    host_view(restored.pid.0, base);
    assert_eq!(check_restored(restored.pid.0, &tp.ready_file), "pass");
}

/// Starts `argv` in a session of its own and waits until its pid runs `comm`.
fn spawn_until(dir: &Path, argv: &[&str], comm: &str) -> TestProcess {
    let tp = TestProcess::spawn(argv, &dir.join("out"));
    wait_until(&format!("{comm} to run"), Duration::from_secs(10), || {
        let pids = std::iter::once(tp.pid).chain(children(tp.pid));
        pids.into_iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim_end() == comm)
        })
    });
    tp
}

fn refused_user_ns(tp: &TestProcess, images: &Path) -> String {
    std::fs::create_dir_all(images).unwrap();
    match dump(&DumpOptions::new(Pid(tp.pid), images)) {
        Err(DumpError::Namespace(e @ NsError::Unsupported { kind: "user", .. })) => e.to_string(),
        other => panic!("expected a refusal of the user namespace, got {other:?}"),
    }
}

#[test]
fn nested_and_foreign_owned_layouts_are_refused() {
    if !have_user_namespaces() || clean_command("unshare").arg("--help").output().is_err() {
        return;
    }
    let dir = ScratchDir::new("restore_userns_nested");
    // A root two levels down: unshare(1) execs in place each time.
    let tp = spawn_until(
        dir.path(),
        &["unshare", "-U", "-r", "unshare", "-U", "-r", "sleep", "100"],
        "sleep",
    );
    let why = refused_user_ns(&tp, &dir.path().join("deep"));
    assert!(why.contains("nested user namespaces"), "{why}");
    assert!(tp.pid > 0 && Path::new(&format!("/proc/{}", tp.pid)).exists());
    drop(tp);
    // A child in a user namespace below the root's.
    let tp = spawn_until(
        dir.path(),
        &[
            "unshare",
            "-U",
            "-r",
            "sh",
            "-c",
            "unshare -U -r sleep 100; :",
        ],
        "sleep",
    );
    let why = refused_user_ns(&tp, &dir.path().join("child"));
    assert!(why.contains("nested user namespaces"), "{why}");
    drop(tp);
    // A UTS namespace of the tree's own that its user namespace does not own (made
    // before it): the restore would make one it owns.
    let tp = spawn_until(
        dir.path(),
        &["unshare", "-u", "unshare", "-U", "-r", "sleep", "100"],
        "sleep",
    );
    let why = refused_user_ns(&tp, &dir.path().join("owner"));
    assert!(
        why.contains("uts namespace is not owned by its user namespace"),
        "{why}"
    );
}

/// A one-task tree in its own user (and UTS) namespace but in our pid namespace comes
/// back (nothing is cloned from inside the namespace); one of several tasks is refused
/// by the restore, before any task exists, saying why.
#[test]
fn trees_in_our_pid_namespace() {
    if !have_user_namespaces() {
        return;
    }
    let dir = ScratchDir::new("restore_userns_our_pidns");
    let mut tp = spawn_until(
        dir.path(),
        &[
            "unshare",
            "-U",
            "-r",
            "-u",
            "sh",
            "-c",
            "hostname tp-userns-one && exec sleep 100",
        ],
        "sleep",
    );
    let images = dir.path().join("one");
    std::fs::create_dir_all(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    let restored =
        restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    assert_eq!(restored.pid.0, tp.pid);
    let uid_map = std::fs::read_to_string(format!("/proc/{}/uid_map", tp.pid)).unwrap();
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "1"]
    );
    assert_ne!(
        ns_link(tp.pid, "user"),
        ns_link(std::process::id() as i32, "user")
    );
    assert_eq!(status_line(tp.pid, "Uid"), "0 0 0 0");

    let two = spawn_until(
        dir.path(),
        &["unshare", "-U", "-r", "sh", "-c", "sleep 100 & wait"],
        "sleep",
    );
    let images = dir.path().join("two");
    std::fs::create_dir_all(&images).unwrap();
    dump(&DumpOptions {
        leave_running: true,
        ..DumpOptions::new(Pid(two.pid), &images)
    })
    .unwrap_or_else(|e| panic!("dump: {e}"));
    let err = restore(&RestoreOptions::new(&images)).expect_err("refused");
    assert!(
        err.to_string().contains("pid namespace of its own"),
        "{err}"
    );
}

/// A tree in its own user namespace restored into existing mount and network
/// namespaces that ours owns (as crpod's holder builds them): the root is made in them
/// (by a nest that enters them first) with its new user and pid namespaces, and the
/// procfs of its pid namespace is mounted in the joined mount namespace from outside.
#[test]
fn tree_in_own_user_namespace_joins_our_mount_and_network_namespaces() {
    if !have_user_namespaces() || clean_command("unshare").arg("--help").output().is_err() {
        return;
    }
    let dir = ScratchDir::new("restore_userns_join");
    let base = base(2);
    let arg = base.to_string();
    let mut tp = TestProcess::start(dir.path(), "userns", &["--base", &arg]);
    let root = children(tp.pid)[0];
    wait_until("the root's child", Duration::from_secs(10), || {
        children(root).len() == 1
    });
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    dump(&DumpOptions::new(Pid(root), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    // The namespaces to join, held by a process of ours (made after the scratch
    // directory, so its files are there too).
    let holder = spawn_until(
        dir.path(),
        &[
            "unshare",
            "--mount",
            "--net",
            "--propagation",
            "private",
            "sleep",
            "100",
        ],
        "sleep",
    );
    let me = std::process::id() as i32;
    wait_until("the holder's namespaces", Duration::from_secs(10), || {
        ns_link(holder.pid, "mnt") != ns_link(me, "mnt")
            && ns_link(holder.pid, "net") != ns_link(me, "net")
    });
    let ns = |kind: &str| {
        (
            kind.to_owned(),
            Path::new(&format!("/proc/{}/ns/{kind}", holder.pid)).to_owned(),
        )
    };
    let opts = RestoreOptions {
        join_ns: vec![ns("mnt"), ns("net")],
        proc_mount: Some("/proc".into()),
        ..RestoreOptions::new(&images)
    };
    let restored = restore(&opts).unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    let pid = restored.pid.0;
    host_view(pid, base);
    for kind in ["mnt", "net"] {
        assert_eq!(ns_link(pid, kind), ns_link(holder.pid, kind), "{kind}");
    }
    // The joined mount namespace's /proc is the procfs of the tree's pid namespace:
    // its pid 1 is the root, in the root's user namespace.
    let proc_root = format!("/proc/{pid}/root/proc/1");
    assert_eq!(
        std::fs::read_link(format!("{proc_root}/ns/user")).unwrap(),
        std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap()
    );
    assert_eq!(check_restored(pid, &tp.ready_file), "pass");

    // UTS and IPC namespaces cannot be joined by such a tree: refused before any
    // process exists.
    let opts = RestoreOptions {
        join_ns: vec![ns("mnt"), ("uts".into(), "/proc/self/ns/uts".into())],
        ..RestoreOptions::new(&images)
    };
    let err = restore(&opts).expect_err("refused").to_string();
    assert!(err.contains("joining a uts namespace"), "{err}");
}
