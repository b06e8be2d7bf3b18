//! Objects the restore cannot rebuild are refused by the dump before it changes anything
//! (issue 10, "the dump succeeds, kills the tree, then the restore refuses"): a pty whose
//! other end a process outside the tree holds, and a SysV shared memory segment also
//! attached outside the tree (and, from CRIU's own test suite, a pending SIGTRAP and an
//! inotify watch on a deleted file no fd holds), dumped in the default mode (which kills
//! the tree after a dump), get an error naming the fd (or the mapping) and the kind, and
//! keep running untouched: not stopped, not traced, their memory, fds and the held object
//! intact (the program checks itself).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use criu_core::dump::sysvshm::ShmError;
use criu_core::dump::{dump, DumpError, DumpOptions};
use criu_core::files::kinds::Kind;
use criu_core::files::FileError;
use criu_core::sys::Pid;
use criu_rs_suite::{task_state, tracer_pid, wait_for_file, ScratchDir, TestProcess};

/// The fd table of `pid` from /proc: number to link.
fn fds_of(pid: i32) -> BTreeMap<i32, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let n: i32 = e.unwrap().file_name().to_string_lossy().parse().unwrap();
        if let Ok(link) = std::fs::read_link(format!("/proc/{pid}/fd/{n}")) {
            out.insert(n, link.to_string_lossy().into_owned());
        }
    }
    out
}

/// A process outside the tree (our child) holding a file as its stdin.
struct Outside(std::process::Child);

impl Outside {
    /// Holds the pty slave `link` (`/dev/pts/N`) without making it its terminal.
    fn holding_slave(link: &str) -> Outside {
        use std::os::unix::fs::OpenOptionsExt;
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(link)
            .unwrap();
        Outside(
            criu_rs_suite::clean_command("sleep")
                .arg("1000")
                .stdin(slave)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tp-holds --hold KIND`, dumps it in the default (kill) mode, and returns the
/// error, after checking that the tree is exactly as before and passes its self-check.
/// `None` when this machine cannot make such an object (the test is then skipped).
fn refused_dump(kind: &str) -> Option<(DumpError, i32, i32)> {
    refused_dump_after(kind, |_| ())
}

/// [`refused_dump`], with `outside` started (given the program's pid) before the dump.
fn refused_dump_with(
    kind: &str,
    outside: impl FnOnce(i32) -> Option<Outside>,
) -> Option<(DumpError, i32, i32)> {
    refused_dump_after(kind, outside)
}

/// `refused_dump`, with `before(pid)` run once the program is ready (what it returns is
/// dropped after the dump).
fn refused_dump_after<T>(
    kind: &str,
    before: impl FnOnce(i32) -> T,
) -> Option<(DumpError, i32, i32)> {
    let scratch = ScratchDir::new(&format!("refuse-{kind}"));
    let ready = scratch.path().join("holds.ready");
    let mut tp = TestProcess::start(scratch.path(), "holds", &["--hold", kind]);
    let held = before(tp.pid);
    let fd: i32 = wait_for_file(&ready.with_extension("ready.fd"), Duration::from_secs(10))
        .expect("the fd file")
        .trim()
        .parse()
        .unwrap();
    let fds_before = fds_of(tp.pid);
    let maps_before = std::fs::read_to_string(format!("/proc/{}/maps", tp.pid)).unwrap();
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    // Default mode: a dump that succeeded would kill the tree.
    let opts = DumpOptions::new(Pid(tp.pid), &images);
    assert!(!opts.leave_running && !opts.leave_stopped);
    let err = dump(&opts).expect_err("the dump must refuse");
    drop(held);
    // Untouched: alive, not stopped, not traced, same fds and mappings, and it checks
    // itself (memory pattern, fd table, the held object still working).
    let state = task_state(tp.pid);
    assert!(
        matches!(state, Some('S') | Some('R')),
        "task state {state:?} after the refused dump"
    );
    assert_eq!(tracer_pid(tp.pid), Some(0), "still traced");
    assert_eq!(fds_of(tp.pid), fds_before);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/maps", tp.pid)).unwrap(),
        maps_before
    );
    assert!(
        std::fs::read_dir(&images).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".img")),
        "a refused dump writes no image"
    );
    assert_eq!(tp.check().trim(), "pass");
    Some((err, tp.pid, fd))
}

/// A pty whose slave a process outside the tree also holds: a restore would make a new
/// pty, and leave that process on the old one.
#[test]
fn a_pty_also_held_outside_the_tree_is_refused_and_left_running() {
    if !Path::new("/dev/ptmx").exists() {
        eprintln!("skipped: no /dev/ptmx");
        return;
    }
    let mut outside_pid = 0;
    let Some((err, pid, fd)) = refused_dump_with("ptmx", |pid| {
        let slave = fds_of(pid)
            .into_values()
            .find(|l| l.starts_with("/dev/pts/"))
            .expect("tp-holds holds the slave");
        let o = Outside::holding_slave(&slave);
        outside_pid = o.0.id();
        Some(o)
    }) else {
        return;
    };
    let msg = err.to_string();
    assert!(
        matches!(&err, DumpError::Files(FileError::Unsupported { pid: p, fd: f, .. })
            if *p == Pid(pid) && *f == fd),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("task {pid} fd {fd}"))
            && msg.contains(Kind::PtyMaster.name())
            && msg.contains("/dev/ptmx")
            && msg.contains(&format!("process {outside_pid}")),
        "{msg}"
    );
}

/// A SysV segment of ours (the test's) attached, detached when dropped.
struct Attached(usize);

impl Drop for Attached {
    fn drop(&mut self) {
        // SAFETY: our own attachment, which nothing refers to.
        unsafe { libc::shmdt(self.0 as *const libc::c_void) };
    }
}

/// Beyond CRIU, a segment of the dumper's IPC namespace attached by the tree alone is
/// saved (tests/restore_sysvshm.rs); one that someone outside the tree (here, the test)
/// has attached too is refused by name.
#[test]
fn a_sysv_segment_attached_outside_the_tree_is_refused_and_left_running() {
    let mut seen = (0, 0);
    let Some((err, pid, _)) = refused_dump_after("sysv-shm", |pid| {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let line = maps
            .lines()
            .find(|l| l.contains("/SYSV"))
            .expect("a SysV mapping");
        let start = u64::from_str_radix(line.split('-').next().unwrap(), 16).unwrap();
        let shmid: i32 = line.split_whitespace().nth(4).unwrap().parse().unwrap();
        seen = (start, shmid);
        // SAFETY: attaching where the kernel chooses aliases nothing of ours; the segment
        // (marked removed, still attachable by id) is detached by the guard.
        let at = unsafe { libc::shmat(shmid, std::ptr::null(), libc::SHM_RDONLY) };
        assert_ne!(at as isize, -1, "{}", std::io::Error::last_os_error());
        Attached(at as usize)
    }) else {
        return;
    };
    let msg = err.to_string();
    let (start, shmid) = seen;
    assert!(
        matches!(&err, DumpError::SysvShm(ShmError::AttachedOutside { pid: p, addr, shmid: s, nattch: 2, ours: 1, .. })
            if *p == Pid(pid) && *addr == start && *s == shmid),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("process {pid}"))
            && msg.contains(&format!("{start:#x}"))
            && msg.contains(&format!("segment {shmid}"))
            && msg.contains("key 0x0")
            && msg.contains("outside the tree"),
        "{msg}"
    );
}

/// zdtm sigtrap: a SIGTRAP pending for the process (kill while blocked).
#[test]
fn a_pending_sigtrap_is_refused_and_left_running() {
    let Some((err, pid, _)) = refused_dump("sigtrap") else {
        return;
    };
    let msg = err.to_string();
    assert!(
        matches!(&err, DumpError::Unsupported { pid: p, .. } if *p == Pid(pid)),
        "{msg}"
    );
    assert!(msg.contains("pending SIGTRAP"), "{msg}");
}

/// Like zdtm inotify00, but the deleted file is kept only by a mapping: no ghost file of
/// an open fd to watch again at restore.
#[test]
fn an_inotify_watch_on_a_deleted_file_is_refused_and_left_running() {
    let Some((err, pid, fd)) = refused_dump("deleted-watch") else {
        return;
    };
    let msg = err.to_string();
    assert!(
        matches!(&err, DumpError::Files(FileError::Unsupported { pid: p, fd: f, .. })
            if *p == Pid(pid) && *f == fd),
        "{msg}"
    );
    assert!(
        msg.contains("inotify watch") && msg.contains("deleted"),
        "{msg}"
    );
}

/// A lease, being broken or not, is refused without `--file-locks`, by name; the holder
/// is left untouched and its lease as it was (a lease being broken still breaking).
#[test]
fn leases_without_the_flag_are_refused_and_left_running() {
    for (kind, row) in [
        ("lease", Kind::FileLease),
        ("lease-breaking", Kind::FileLeaseBreaking),
    ] {
        let scratch = ScratchDir::new(&format!("refuse-{kind}"));
        let ready = scratch.path().join("holds.ready");
        let mut tp = TestProcess::start(scratch.path(), "holds", &["--hold", kind]);
        let fd: i32 = wait_for_file(&ready.with_extension("ready.fd"), Duration::from_secs(10))
            .expect("the fd file")
            .trim()
            .parse()
            .unwrap();
        let images = scratch.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let err = dump(&DumpOptions::new(Pid(tp.pid), &images)).expect_err("the dump must refuse");
        let msg = err.to_string();
        assert!(
            matches!(&err, DumpError::Files(FileError::Unsupported { pid: p, fd: f, .. })
                if *p == Pid(tp.pid) && *f == fd),
            "{msg}"
        );
        assert!(
            msg.contains(row.name()) && msg.contains("holds.ready.lease"),
            "{msg}"
        );
        assert!(matches!(task_state(tp.pid), Some('S') | Some('R')));
        assert_eq!(tracer_pid(tp.pid), Some(0), "still traced");
        assert_eq!(tp.check().trim(), "pass", "{kind}");
    }
}

/// One task as /proc shows it: pid, state, tracer, fd table.
type TaskSnapshot = (i32, Option<char>, Option<i32>, BTreeMap<i32, String>);

/// Every task of the tree under `root`, from /proc.
fn tree_snapshot(root: i32) -> Vec<TaskSnapshot> {
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        let kids =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        queue.extend(kids.split_whitespace().map(|k| k.parse::<i32>().unwrap()));
        out.push((pid, task_state(pid), tracer_pid(pid), fds_of(pid)));
    }
    out.sort();
    out
}

/// script(1) is a real pty server: it holds the master, its child runs on the slave;
/// with the slave also open in a process outside the tree, the dump refuses it and
/// leaves both processes exactly as they were.
#[test]
fn a_script_session_whose_pty_is_also_held_outside_is_refused_and_left_running() {
    let scratch = ScratchDir::new("refuse-script");
    let script = TestProcess::spawn(
        &["script", "-qfc", "exec sleep 1000", "/dev/null"],
        &scratch.path().join("out"),
    );
    let mut before = Vec::new();
    criu_rs_suite::wait_until("script's child on the pty", Duration::from_secs(10), || {
        before = tree_snapshot(script.pid);
        before.len() == 2
            && before.iter().all(|(_, state, _, _)| *state == Some('S'))
            && before
                .iter()
                .any(|(_, _, _, fds)| fds.get(&0).is_some_and(|l| l.starts_with("/dev/pts/")))
    });
    let master = before
        .iter()
        .find(|(pid, ..)| *pid == script.pid)
        .and_then(|(_, _, _, fds)| fds.iter().find(|(_, l)| *l == "/dev/ptmx"))
        .map(|(n, _)| *n)
        .expect("script holds /dev/ptmx");
    let slave = before
        .iter()
        .find_map(|(_, _, _, fds)| fds.get(&0).filter(|l| l.starts_with("/dev/pts/")))
        .cloned()
        .expect("script's child on the slave");
    let outside = Outside::holding_slave(&slave);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let err = dump(&DumpOptions::new(Pid(script.pid), &images)).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("task {} fd {master}", script.pid))
            && msg.contains(Kind::PtyMaster.name())
            && msg.contains(&format!("process {}", outside.0.id())),
        "{msg}"
    );
    assert_eq!(tree_snapshot(script.pid), before, "the tree changed");
}

/// A program whose own binary is hidden by a mount over its directory: the restore
/// would reopen the mapped file by a path that now leads elsewhere, so the dump refuses
/// the mapping before the freeze. (The program, the mount and the dumper share a mount
/// namespace of their own, so nothing of the test's is covered.)
#[test]
fn a_mapping_its_path_no_longer_names_is_refused_and_left_running() {
    let scratch = ScratchDir::new("refuse-hidden-map");
    let hidden = scratch.path().join("hidden");
    std::fs::create_dir(&hidden).unwrap();
    let exe = hidden.join("tp-looper");
    std::fs::copy(criu_rs_suite::workspace_bin("tp-looper"), &exe).unwrap();
    let ready = scratch.path().join("looper.ready");
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let script = format!(
        "setsid {exe} --ready-file {ready} --interval-ms 20 </dev/null >/dev/null 2>&1 &
         i=0; while [ ! -s {ready} ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done
         mount -t tmpfs hide {hidden} || exit 90
         {dumper} dump -t $(cut -d' ' -f2 {ready}) -D {images}",
        exe = exe.display(),
        ready = ready.display(),
        hidden = hidden.display(),
        images = images.display(),
        dumper = criu_rs_suite::workspace_bin("criu-rs").display(),
    );
    let out = criu_rs_suite::clean_command("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let pid: i32 = std::fs::read_to_string(&ready)
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse().ok())
        .expect("the looper got ready");
    let _reaper = criu_rs_suite::Reaper(pid);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(90) {
        eprintln!("skipped: cannot mount here: {stderr}");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(Kind::MapUnreachableFile.name()) && stderr.contains("tp-looper"),
        "{stderr}"
    );
    let state = task_state(pid);
    assert!(matches!(state, Some('S') | Some('R')), "state {state:?}");
    assert_eq!(tracer_pid(pid), Some(0));
    // SAFETY: kill(2) on the looper this test started.
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    let result = wait_for_file(
        &ready.with_extension("ready.result"),
        Duration::from_secs(30),
    );
    assert_eq!(result.as_deref().map(str::trim), Some("pass"));
}

/// An io_uring ring with a registered file (and an io-wq worker thread and a
/// completion not reaped) is refused by name, with what fdinfo shows of it, and the
/// program's next submissions complete: nothing of the ring moved (criu-core's
/// `files/io_uring.rs` says which rings are dumped; tests/restore_iouring.rs has them).
#[test]
fn an_io_uring_holder_is_refused_and_left_running() {
    let scratch = ScratchDir::new("refuse-io-uring");
    let ready = scratch.path().join("uring.ready");
    let mut tp = TestProcess::start(scratch.path(), "uring", &[]);
    let fd: i32 = match wait_for_file(&ready.with_extension("ready.fd"), Duration::from_secs(10)) {
        Some(text) => text.trim().parse().unwrap(),
        None => {
            eprintln!("skipped: tp-uring could not set up a ring here");
            return;
        }
    };
    let fds_before = fds_of(tp.pid);
    let maps_before = std::fs::read_to_string(format!("/proc/{}/maps", tp.pid)).unwrap();
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let err = dump(&DumpOptions::new(Pid(tp.pid), &images)).expect_err("the dump must refuse");
    let msg = err.to_string();
    assert!(
        matches!(&err, DumpError::Files(FileError::Unsupported { pid: p, fd: f, .. })
            if *p == Pid(tp.pid) && *f == fd),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("task {} fd {fd}", tp.pid))
            && msg.contains(Kind::IoUring.name())
            && msg.contains("8 SQ / 16 CQ entries")
            && msg.contains("1 registered files (fdinfo names them but not which open file"),
        "{msg}"
    );
    assert!(matches!(task_state(tp.pid), Some('S') | Some('R')));
    assert_eq!(tracer_pid(tp.pid), Some(0), "still traced");
    assert_eq!(fds_of(tp.pid), fds_before);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/maps", tp.pid)).unwrap(),
        maps_before
    );
    assert_eq!(tp.check().trim(), "pass");
}
