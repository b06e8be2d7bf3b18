//! A tree in a mount namespace of its own (tp-mntns: a root that is a bind of a
//! directory, two external binds of ours, proc, a tmpfs with files, a tmpfs stacked on
//! one of its directories, a bind of part of that tmpfs, a read-only bind of part of
//! the root, a devpts instance): dumped into CRIU's images (read back by Debian's
//! crit: `mountpoints-ID.img`, the tmpfs's tar),
//! killed, restored under `--root`, and its own check passes inside its new mount
//! namespace; CRIU 4.2 restores the same images.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, clean_command, crit_decode, criu_4_or_skip, criu_log_errors, debian_crit,
    task_state, wait_until, DetachedTree, Reaper, ScratchDir, TestProcess,
};

fn mnt_ns(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The one `mountpoints-*.img` of `images`.
fn mountpoints_image(images: &Path) -> PathBuf {
    std::fs::read_dir(images)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("mountpoints-"))
        })
        .unwrap_or_else(|| panic!("no mountpoints image in {}", images.display()))
}

/// tp-mntns, dumped (and so killed) into `images`; with the directory of our binaries,
/// which it has as the external mount `bin` (and /usr as `usr`).
struct Dumped {
    tp: TestProcess,
    root: PathBuf,
    images: PathBuf,
    bin: PathBuf,
}

fn start_and_dump(scratch: &ScratchDir) -> Dumped {
    let root = scratch.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut tp = TestProcess::start(&root, "mntns", &[]);
    assert_ne!(mnt_ns(tp.pid), mnt_ns(std::process::id() as i32));
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let bin = criu_rs_suite::bin_dir().canonicalize().unwrap();
    dump(&DumpOptions {
        ext_mounts: vec![
            ("/usr".into(), "usr".into()),
            (bin.to_string_lossy().into_owned(), "bin".into()),
        ],
        ..DumpOptions::new(Pid(tp.pid), &images)
    })
    .unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    Dumped {
        tp,
        root,
        images,
        bin,
    }
}

#[test]
fn a_mount_namespace_is_dumped_and_built_again() {
    let scratch = ScratchDir::new("mntns");
    let d = start_and_dump(&scratch);
    let tars: Vec<String> = std::fs::read_dir(&d.images)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tmpfs-dev-") && n.ends_with(".tar.gz.img"))
        .collect();
    assert_eq!(tars.len(), 2, "two tmpfs saved: {tars:?}");
    if let Some(crit) = debian_crit() {
        let v = crit_decode(&crit, &mountpoints_image(&d.images)).unwrap_or_else(|e| panic!("{e}"));
        let entries = v["entries"].as_array().cloned().unwrap_or_default();
        let at = |mp: &str| {
            entries
                .iter()
                .find(|e| e["mountpoint"] == mp)
                .unwrap_or_else(|| panic!("no mount at {mp}: {entries:?}"))
                .clone()
        };
        assert_eq!(
            at("/")["fstype"],
            0,
            "the root is a bind of a disk's directory"
        );
        assert_eq!(at("/proc")["fstype"], 1);
        assert_eq!(at("/tmp")["fstype"], 5);
        let options = at("/tmp")["options"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(options.starts_with("size=1024k"), "{options}");
        assert_eq!(at("/bind")["root"], "/sub");
        assert_eq!(at("/dev/pts")["fstype"], 6);
        assert_eq!(at("/usr")["ext_key"], "usr");
        let tar = format!("tmpfs-dev-{}.tar.gz.img", at("/tmp")["root_dev"]);
        assert!(tars.contains(&tar), "the tar is named by device: {tars:?}");
    }

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
    assert_ne!(mnt_ns(reaper.0), mnt_ns(std::process::id() as i32));
    assert_eq!(check_restored(reaper.0, &d.tp.ready_file), "pass");
}

#[test]
fn a_restore_without_the_external_mounts_path_is_refused_before_any_process() {
    let scratch = ScratchDir::new("mntns-noext");
    let d = start_and_dump(&scratch);
    let err = restore(&RestoreOptions {
        root: Some(d.root.clone()),
        ext_mounts: vec![("usr".into(), "/usr".into())],
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&d.images)
    })
    .unwrap_err();
    assert!(err.to_string().contains("mnt[bin]"), "{err}");
    assert!(!Path::new(&format!("/proc/{}", d.tp.pid)).exists());
}

#[test]
fn criu_4_2_restores_our_mount_namespace() {
    let Some(criu) = criu_4_or_skip("CRIU's restore of our mount namespace") else {
        return;
    };
    let scratch = ScratchDir::new("mntns-criu");
    let d = start_and_dump(&scratch);
    let out = clean_command(criu.to_str().unwrap())
        .args(["restore", "-d", "-v4", "-o", "restore.log", "--root"])
        .arg(&d.root)
        .args(["--external", "mnt[usr]:/usr", "--external"])
        .arg(format!("mnt[bin]:{}", d.bin.display()))
        .arg("-D")
        .arg(&d.images)
        .output()
        .unwrap();
    let restored = DetachedTree(vec![d.tp.pid]);
    assert!(
        out.status.success(),
        "CRIU could not restore our mount namespace: {:#?}",
        criu_log_errors(&d.images.join("restore.log"))
    );
    assert_eq!(check_restored(restored.0[0], &d.tp.ready_file), "pass");
}
