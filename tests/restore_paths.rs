//! Paths that are not UTF-8 (Linux paths are bytes): tp-paths, run from an executable
//! whose name is not UTF-8, holds an open file, a shared and a private file mapping and a
//! working directory with such names. Dump, kill and restore bring each back at the same
//! path bytes, the program passes its own check, and images holding such names go both
//! ways between criu-rs and CRIU 4.2.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_images::crit::{self, DecodeOptions};
use criu_rs_suite::{
    check_restored, criu_4_or_skip, criu_dump, criu_restore, debian_crit, task_state,
    wait_for_file, wait_until, workspace_bin, Reaper, ScratchDir, TestProcess,
};

/// The name tp-paths runs from (tp-paths' own names are in its source).
const EXE: &[u8] = b"tp-paths-\xff\xfe.bin";

/// Starts tp-paths from a copy of itself named [`EXE`], its files under `dir`.
fn start(dir: &Path) -> TestProcess {
    let exe = dir.join(OsStr::from_bytes(EXE));
    std::fs::copy(workspace_bin("tp-paths"), &exe).unwrap();
    let ready_file = dir.join("paths.ready");
    let out = std::fs::File::create(dir.join("paths.out")).unwrap();
    // argv[0] stays UTF-8 (Rust's std::env::args would panic on it); the exe link is
    // the odd name all the same. A session of its own, and only fds 0-2, as
    // TestProcess::start gives the other programs.
    let mut command = std::process::Command::new(&exe);
    command.arg0("tp-paths");
    // SAFETY: runs in the forked child before exec and only calls close_range(2) and
    // setsid(2), which are async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            libc::setsid();
            Ok(())
        });
    }
    let child = command
        .arg("--ready-file")
        .arg(&ready_file)
        .arg("--dir")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut tp = TestProcess {
        child,
        ready_file,
        pid,
    };
    let text = wait_for_file(&tp.ready_file, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("tp-paths did not get ready: {:?}", tp.child.try_wait()));
    assert!(text.starts_with("ready"), "{text}");
    tp
}

/// What the kernel shows of the process's names, as bytes: its comm (cut from the exe's
/// name), cwd, exe, every fd's link to a named file, and every file mapping's range and
/// path.
#[derive(Debug, PartialEq, Eq)]
struct Names {
    comm: Vec<u8>,
    cwd: Vec<u8>,
    exe: Vec<u8>,
    fds: BTreeSet<Vec<u8>>,
    file_maps: BTreeSet<(String, Vec<u8>)>,
}

fn link(path: PathBuf) -> Vec<u8> {
    std::fs::read_link(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_os_string()
        .into_encoded_bytes()
}

fn names(pid: i32) -> Names {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    // Named files only: `socket:[INODE]` and the like get new inodes.
    let fds = std::fs::read_dir(proc.join("fd"))
        .unwrap()
        .map(|e| link(e.unwrap().path()))
        .filter(|l| l.starts_with(b"/"))
        .collect();
    let maps = std::fs::read(proc.join("maps")).unwrap();
    let file_maps = maps
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let range = line.split(|&b| b == b' ').next()?;
            let slash = line.iter().position(|&b| b == b'/')?;
            Some((
                String::from_utf8_lossy(range).into_owned(),
                line[slash..].to_vec(),
            ))
        })
        .collect();
    Names {
        comm: std::fs::read(proc.join("comm")).unwrap(),
        cwd: link(proc.join("cwd")),
        exe: link(proc.join("exe")),
        fds,
        file_maps,
    }
}

/// The names a healthy tp-paths shows: each of its four not UTF-8, and the exe's.
fn assert_odd_names(n: &Names, dir: &Path) {
    let odd = |b: &[u8]| std::str::from_utf8(b).is_err();
    assert_eq!(n.comm, b"tp-paths-\xff\xfe.bin\n");
    assert!(
        odd(&n.cwd) && n.cwd.starts_with(dir.as_os_str().as_bytes()),
        "{n:?}"
    );
    assert_eq!(
        n.exe,
        dir.join(OsStr::from_bytes(EXE)).as_os_str().as_bytes()
    );
    // The open file and the memfd.
    assert_eq!(n.fds.iter().filter(|l| odd(l)).count(), 2, "{n:?}");
    let odd_maps: BTreeSet<&Vec<u8>> = n
        .file_maps
        .iter()
        .map(|(_, p)| p)
        .filter(|p| odd(p))
        .collect();
    // The exe (several mappings of one name), the shared and the private file, the memfd.
    assert_eq!(odd_maps.len(), 4, "{n:?}");
}

#[test]
fn non_utf8_file_mappings_cwd_and_exe_round_trip() {
    let scratch = ScratchDir::new("restore-paths");
    let work = scratch.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut tp = start(&work);
    let before = names(tp.pid);
    assert_odd_names(&before, &work);

    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();

    // Debian's crit reads the names as it reads CRIU's own such images, and prints them
    // as we do, byte for byte (the whole of files.img; the comm of core.img, whose other
    // fields Debian's older schema partly lacks).
    if let Some(debian) = debian_crit() {
        let decode = |image: &str| {
            let path = images.join(image);
            let out = std::process::Command::new(&debian)
                .args(["decode", "-i"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(out.status.success(), "{image}");
            let mut r = criu_images::ImageReader::open(&path).unwrap();
            let ours = crit::decode(&mut r, DecodeOptions::default()).unwrap();
            let theirs = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
            (ours, theirs)
        };
        let (ours, theirs) = decode("files.img");
        let text = crit::to_python_json(&ours, false);
        assert_eq!(text, theirs, "files.img");
        assert!(
            text.contains(r"tp-paths-dir-\\xff\\xfe/file-\\xfe\\x80"),
            "{text}"
        );
        let (ours, theirs) = decode(&format!("core-{}.img", tp.pid));
        let theirs: serde_json::Value = serde_json::from_str(&theirs).unwrap();
        for field in ["/entries/0/tc/comm", "/entries/0/thread_core/comm"] {
            assert_eq!(ours.pointer(field), theirs.pointer(field), "{field}");
        }
        assert_eq!(
            ours.pointer("/entries/0/tc/comm").and_then(|c| c.as_str()),
            Some(r"b'tp-paths-\xff\xfe.bin'")
        );
    }

    let restored =
        restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    assert_eq!(reaper.0, tp.pid, "same pid");
    wait_until("running", Duration::from_secs(10), || {
        matches!(task_state(reaper.0), Some('S') | Some('R'))
    });
    assert_eq!(names(reaper.0), before, "the same names, byte for byte");
    assert_eq!(check_restored(reaper.0, &tp.ready_file), "pass");
}

/// CRIU 4.2 writes `string` fields holding these bytes (paths, and the task's comm,
/// cut from the exe's name): we restore its images.
#[test]
fn criu_4_2_images_with_non_utf8_names_restore() {
    let Some(criu) = criu_4_or_skip("restoring CRIU's images with non-UTF-8 names") else {
        return;
    };
    let scratch = ScratchDir::new("paths-criu-dumps");
    let work = scratch.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut tp = start(&work);
    let before = names(tp.pid);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    criu_dump(&criu, tp.pid, &images, &[]);
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
    assert_eq!(names(reaper.0), before, "CRIU's images: the same names");
    assert_eq!(check_restored(reaper.0, &tp.ready_file), "pass");
}

/// CRIU 4.2 restores our images holding such names.
#[test]
fn criu_4_2_restores_our_non_utf8_names() {
    let Some(criu) = criu_4_or_skip("CRIU's restore of our non-UTF-8 names") else {
        return;
    };
    let scratch = ScratchDir::new("paths-criu-restores");
    let work = scratch.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut tp = start(&work);
    let before = names(tp.pid);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    wait_until("the dumped pid to go", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{}", tp.pid)).exists()
    });
    let restored = criu_restore(&criu, &images, &[], vec![tp.pid]);
    assert_eq!(
        names(restored.0[0]),
        before,
        "restored by CRIU: the same names"
    );
    assert_eq!(check_restored(restored.0[0], &tp.ready_file), "pass");
}
