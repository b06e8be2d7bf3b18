//! Deleted files of every kind (tp-ghosts): a deleted directory as cwd and by a
//! descriptor, a deleted FIFO with data queued, a deleted device node, a deleted
//! symlink held by O_PATH, a sparse deleted file larger than the ghost limit with little
//! data, and a deleted name of a file with another name (a linked remap). The dump saves
//! them in CRIU's images (read back by Debian's crit); the restore brings each back as
//! the same kind of object, still deleted, and leaves no name behind; without
//! `--link-remap` the dump refuses the linked one and leaves the program running.
//! CRIU 4.2 restores our images of them, and we restore CRIU's. A deleted file on a
//! mount made read-only since comes back too, the mount still read-only.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, clean_command, crit_decode, criu_4_or_skip, criu_log_errors, criu_restore,
    debian_crit, dump_kill_restore, task_state, wait_until, Reaper, ScratchDir, TestProcess, Tmpfs,
};

/// The names in `dir` (where tp-ghosts made and removed its objects).
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every fd's link of `pid`, by number.
fn fd_links(pid: i32) -> Vec<(String, PathBuf)> {
    let mut links: Vec<(String, PathBuf)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_link(e.path()).unwrap(),
            )
        })
        .filter(|(_, l)| l.starts_with("/"))
        .collect();
    links.sort();
    links
}

fn start(scratch: &ScratchDir) -> (TestProcess, PathBuf) {
    let work = scratch.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let tp = TestProcess::start(&work, "ghosts", &[]);
    (tp, work.join("ghosts"))
}

/// The entries of one image, as crit prints them.
fn crit_entries(crit: &Path, image: &Path) -> Vec<serde_json::Value> {
    let v = crit_decode(crit, image).unwrap_or_else(|e| panic!("{e}"));
    v["entries"].as_array().cloned().unwrap_or_default()
}

/// Debian's crit reads every image the ghosts went into, and finds in them what each
/// kind needs: the remaps (ghost and linked), the linked name as a reg file, and the
/// ghosts of a directory, a FIFO, a device (its number), a symlink (its target) and a
/// sparse file (its two runs of data only).
fn crit_finds_every_ghost(crit: &Path, images: &Path) {
    let remaps = crit_entries(crit, &images.join("remap-fpath.img"));
    let types: BTreeSet<&str> = remaps
        .iter()
        .filter_map(|r| r["remap_type"].as_str())
        .collect();
    assert_eq!(types, BTreeSet::from(["GHOST", "LINKED"]), "{remaps:?}");
    let files = crit_entries(crit, &images.join("files.img"));
    assert!(
        files.iter().any(|f| f["reg"]["name"]
            .as_str()
            .is_some_and(|n| n.contains("/ghosts/link_remap."))),
        "no reg file for the link remap in files.img"
    );
    let mut kinds = BTreeSet::new();
    for entry in std::fs::read_dir(images).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("ghost-file-") {
            continue;
        }
        let entries = crit_entries(crit, &path);
        let g = &entries[0];
        let mode = g["mode"].as_u64().unwrap() as u32;
        match mode & libc::S_IFMT {
            libc::S_IFDIR => kinds.insert("dir"),
            libc::S_IFIFO => kinds.insert("fifo"),
            libc::S_IFCHR => {
                // Major 1, minor 3, as stat gives it (crit prints "1:3" with --pretty).
                assert_eq!(g["rdev"], 0x103, "{g}");
                kinds.insert("chr")
            }
            libc::S_IFLNK => {
                assert_eq!(g["symlnk_target"], "../somewhere/else", "{g}");
                kinds.insert("lnk")
            }
            libc::S_IFREG => {
                assert_eq!(g["chunks"], true, "{g}");
                assert_eq!(g["size"], 8 << 20, "{g}");
                let runs: Vec<(u64, u64)> = entries[1..]
                    .iter()
                    .map(|c| (c["off"].as_u64().unwrap(), c["len"].as_u64().unwrap()))
                    .collect();
                assert_eq!(runs, [(1 << 20, 4096), (6 << 20, 8192)], "only the data");
                kinds.insert("reg")
            }
            other => panic!("{name}: a ghost of mode {other:o}"),
        };
    }
    assert_eq!(
        kinds,
        BTreeSet::from(["chr", "dir", "fifo", "lnk", "reg"]),
        "one ghost of each kind"
    );
}

#[test]
fn deleted_objects_of_every_kind_come_back_deleted() {
    let scratch = ScratchDir::new("restore-ghosts");
    let (mut tp, ghosts) = start(&scratch);
    let before_links = fd_links(tp.pid);
    let before_names = names(&ghosts);
    assert_eq!(
        before_names,
        BTreeSet::from(["linked.other".into(), "mapped.name".into()])
    );
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", tp.pid)).unwrap();

    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    // A ghost limit below the sparse file's size but above its data: the limit counts
    // data.
    let opts = DumpOptions {
        link_remap: true,
        ghost_limit: 1 << 20,
        ..DumpOptions::new(Pid(tp.pid), &images)
    };
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    // The linked file has a name of its own now, for the restore.
    let linked: Vec<String> = names(&ghosts)
        .into_iter()
        .filter(|n| n.starts_with("link_remap."))
        .collect();
    assert_eq!(linked.len(), 1, "{:?}", names(&ghosts));
    if let Some(crit) = debian_crit() {
        crit_finds_every_ghost(&crit, &images);
    }

    let restored =
        restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    wait_until("running", Duration::from_secs(10), || {
        matches!(task_state(reaper.0), Some('S') | Some('R'))
    });
    // Nothing left: no temporary name of a ghost, no link remap.
    assert_eq!(names(&ghosts), before_names, "names left in ghosts/");
    assert_eq!(
        names(&scratch.path().join("work")),
        BTreeSet::from(["ghosts".into(), "ghosts.out".into(), "ghosts.ready".into()]),
        "names left next to ghosts/"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/cwd", reaper.0)).unwrap(),
        cwd,
        "the cwd is the same deleted directory, by name"
    );
    // dir.d is gone too: its subdirectory comes back under a temporary name (removed).
    let sub_fd = before_links
        .iter()
        .find(|(_, l)| l.to_string_lossy().contains("dir.d/sub (deleted)"))
        .map(|(fd, _)| fd.clone())
        .expect("tp-ghosts holds dir.d/sub");
    let (mut after_links, mut before_links) = (fd_links(reaper.0), before_links);
    let sub_after = after_links
        .iter()
        .position(|(fd, _)| *fd == sub_fd)
        .unwrap();
    let sub_after = after_links.remove(sub_after).1;
    assert!(
        sub_after.starts_with(&ghosts) && sub_after.to_string_lossy().ends_with(" (deleted)"),
        "{sub_after:?}"
    );
    before_links.retain(|(fd, _)| *fd != sub_fd);
    assert_eq!(after_links, before_links, "fd links");
    assert_eq!(check_restored(reaper.0, &tp.ready_file), "pass");
}

#[test]
fn a_deleted_name_with_other_names_needs_link_remap() {
    let scratch = ScratchDir::new("ghosts-no-link-remap");
    let (mut tp, ghosts) = start(&scratch);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let err = dump(&DumpOptions::new(Pid(tp.pid), &images))
        .expect_err("a linked remap without --link-remap");
    let err = err.to_string();
    assert!(
        err.contains("ghosts/linked") && err.contains("--link-remap"),
        "{err}"
    );
    // Refused before the freeze: the program runs on, with nothing added next to it.
    assert_eq!(
        names(&ghosts),
        BTreeSet::from(["linked.other".into(), "mapped.name".into()])
    );
    assert!(matches!(task_state(tp.pid), Some('S') | Some('R')));
    assert_eq!(tp.check(), "pass");
}

/// A dump that fails after it gave the linked file its name takes the name back.
#[test]
fn a_failed_dump_removes_the_link_remap_it_made() {
    let scratch = ScratchDir::new("ghosts-failed-dump");
    let (mut tp, ghosts) = start(&scratch);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let opts = DumpOptions {
        link_remap: true,
        fail_after: Some(criu_core::dump::Stage::Images),
        ..DumpOptions::new(Pid(tp.pid), &images)
    };
    dump(&opts).expect_err("the test hook fails the dump");
    assert_eq!(
        names(&ghosts),
        BTreeSet::from(["linked.other".into(), "mapped.name".into()])
    );
    assert_eq!(tp.check(), "pass");
}

/// CRIU 4.2 restores our images of every kind of deleted object (its own way: a ghost
/// directory whose parent is gone leaves that parent made again, so only the program's
/// own check is asked for).
#[test]
fn criu_4_2_restores_our_ghosts() {
    let Some(criu) = criu_4_or_skip("CRIU's restore of our ghost files") else {
        return;
    };
    let scratch = ScratchDir::new("ghosts-criu-restores");
    let (mut tp, _ghosts) = start(&scratch);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let opts = DumpOptions {
        link_remap: true,
        ..DumpOptions::new(Pid(tp.pid), &images)
    };
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    wait_until("the dumped pid to go", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{}", tp.pid)).exists()
    });
    let restored = criu_restore(&criu, &images, &[], vec![tp.pid]);
    assert_eq!(check_restored(restored.0[0], &tp.ready_file), "pass");
}

/// We restore CRIU 4.2's images of every kind of deleted object.
#[test]
fn criu_4_2_ghosts_restore() {
    let Some(criu) = criu_4_or_skip("restoring CRIU's ghost files") else {
        return;
    };
    let scratch = ScratchDir::new("ghosts-criu-dumps");
    let (mut tp, ghosts) = start(&scratch);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let out = clean_command(criu.to_str().unwrap())
        .args(["dump", "--link-remap", "-v4", "-o", "dump.log", "-t"])
        .arg(tp.pid.to_string())
        .arg("-D")
        .arg(&images)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "CRIU could not dump tp-ghosts: {:#?}",
        criu_log_errors(&images.join("dump.log"))
    );
    let _ = tp.child.wait();
    let restored = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restoring CRIU's images: {e}"));
    let reaper = Reaper(restored.pid.0);
    wait_until("running", Duration::from_secs(10), || {
        matches!(task_state(reaper.0), Some('S') | Some('R'))
    });
    assert_eq!(
        names(&ghosts),
        BTreeSet::from(["linked.other".into(), "mapped.name".into()])
    );
    assert_eq!(check_restored(reaper.0, &tp.ready_file), "pass");
}

/// A shell holding a deleted file on a mount made read-only since (its tmpfs still
/// writable, as zdtm's ghost_on_rofs builds it): the restore makes the file again
/// through a writable copy of that mount, which the tree never sees. The restored shell
/// holds it deleted, with its data; the mount is still read-only and holds no name.
#[test]
fn a_deleted_file_on_a_mount_made_read_only_comes_back() {
    let scratch = ScratchDir::new("restore-ghost-rofs");
    let mnt = Tmpfs::mount(&scratch.path().join("ro"));
    let file = mnt.0.join("held");
    const DATA: &[u8] = b"held on a mount made read-only";
    std::fs::write(&file, DATA).unwrap();
    let held = file.to_str().unwrap();
    let mut tp = TestProcess::spawn(
        &[
            "sh",
            "-c",
            "exec 3<\"$0\"; rm \"$0\"; while :; do sleep 0.1; done",
            held,
        ],
        &scratch.path().join("sh.out"),
    );
    wait_until("the file deleted", Duration::from_secs(10), || {
        !file.exists()
    });
    mnt.make_read_only();
    let fd3 = |pid: i32| std::fs::read_link(format!("/proc/{pid}/fd/3")).ok();
    let deleted = PathBuf::from(format!("{held} (deleted)"));
    assert_eq!(fd3(tp.pid), Some(deleted.clone()));

    let reaper = dump_kill_restore(&mut tp, &scratch.path().join("images"));
    assert_eq!(fd3(reaper.0), Some(deleted));
    let data = std::fs::read(format!("/proc/{}/fd/3", reaper.0)).unwrap();
    assert_eq!(data, DATA);
    assert!(names(&mnt.0).is_empty(), "{:?}", names(&mnt.0));
    let still_read_only = std::fs::write(mnt.0.join("probe"), b"x").unwrap_err();
    assert_eq!(still_read_only.raw_os_error(), Some(libc::EROFS));
}
