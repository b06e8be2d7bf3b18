//! A tree in a mount namespace of its own (tp-mntns: a root that is a bind of a
//! directory, proc, a tmpfs with files, a bind of part of that tmpfs, a read-only bind
//! of part of the root, a devpts instance): dumped into CRIU's images (read back by
//! Debian's crit: `mountpoints-ID.img`, the tmpfs's tar), killed, restored under
//! `--root`, and its own check passes inside its new mount namespace.

use std::path::Path;
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, crit_decode, debian_crit, task_state, wait_until, Reaper, ScratchDir,
    TestProcess,
};

fn mnt_ns(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The one `mountpoints-*.img` of `images`.
fn mountpoints_image(images: &Path) -> std::path::PathBuf {
    std::fs::read_dir(images)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("mountpoints-"))
        })
        .unwrap_or_else(|| panic!("no mountpoints image in {}", images.display()))
}

#[test]
fn a_mount_namespace_is_dumped_and_built_again() {
    let scratch = ScratchDir::new("mntns");
    let root = scratch.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut tp = TestProcess::start(&root, "mntns", &[]);
    assert_ne!(mnt_ns(tp.pid), mnt_ns(std::process::id() as i32));
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let bin = criu_rs_suite::bin_dir();
    let bin = bin.canonicalize().unwrap();
    let bin_mountpoint = bin.to_string_lossy().into_owned();
    dump(&DumpOptions {
        ext_mounts: vec![
            ("/usr".into(), "usr".into()),
            (bin_mountpoint, "bin".into()),
        ],
        ..DumpOptions::new(Pid(tp.pid), &images)
    })
    .unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();

    let tars: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tmpfs-dev-") && n.ends_with(".tar.gz.img"))
        .collect();
    assert_eq!(tars.len(), 1, "one tmpfs saved: {tars:?}");
    if let Some(crit) = debian_crit() {
        let v = crit_decode(&crit, &mountpoints_image(&images)).unwrap_or_else(|e| panic!("{e}"));
        let entries = v["entries"].as_array().cloned().unwrap_or_default();
        let at = |mp: &str| {
            entries
                .iter()
                .find(|e| e["mountpoint"] == mp)
                .unwrap_or_else(|| panic!("no mount at {mp}: {entries:?}"))
                .clone()
        };
        assert_eq!(at("/")["fstype"], 0, "the root is an ext4 or such bind");
        assert_eq!(at("/proc")["fstype"], 1);
        assert_eq!(at("/tmp")["fstype"], 5);
        assert!(at("/tmp")["options"]
            .as_str()
            .is_some_and(|o| o.starts_with("size=1024k")));
        assert_eq!(at("/bind")["root"], "/sub");
        assert_eq!(at("/dev/pts")["fstype"], 6);
        assert_eq!(at("/usr")["ext_key"], "usr");
        let tar = tars[0]
            .trim_start_matches("tmpfs-dev-")
            .trim_end_matches(".tar.gz.img");
        assert_eq!(
            at("/tmp")["root_dev"].to_string(),
            tar,
            "the tar is named by device"
        );
    }

    let restored = restore(&RestoreOptions {
        root: Some(root.clone()),
        ext_mounts: vec![("usr".into(), "/usr".into()), ("bin".into(), bin.clone())],
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    wait_until("running", Duration::from_secs(10), || {
        matches!(task_state(reaper.0), Some('S') | Some('R'))
    });
    assert_ne!(mnt_ns(reaper.0), mnt_ns(std::process::id() as i32));
    assert_eq!(check_restored(reaper.0, &tp.ready_file), "pass");
}
