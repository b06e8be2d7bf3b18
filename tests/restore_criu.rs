//! Images written by real CRIU 4.2 (tests/fixtures/criu-4.2) restore with criu-rs and keep
//! running. The fixtures' README says what to lay out first: the programs and files at
//! the paths recorded in the images, and the recorded pids free.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::{self, Pid};
use criu_rs_suite::{fixtures, task_state, wait_until};

const ROOT: &str = "/tmp/criu-fixtures";

/// Lays out /tmp/criu-fixtures as the fixtures' README asks.
fn lay_out() {
    let root = Path::new(ROOT);
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("out")).unwrap();
    for e in std::fs::read_dir(fixtures().join("bin")).unwrap().flatten() {
        let to = root.join("bin").join(e.file_name());
        std::fs::copy(e.path(), &to).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(root.join("data.txt"), "0123456789").unwrap();
    std::fs::write(root.join("out/looper.log"), "0\n1\n2\n").unwrap();
    std::fs::write(root.join("out/memhog.log"), "ready\n").unwrap();
    std::fs::write(root.join("out/fds.log"), "").unwrap();
    std::fs::write(root.join("out/threads.log"), "").unwrap();
}

/// Kills and reaps a restored tree (the root is our child).
struct Restored(Vec<i32>);

impl Drop for Restored {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = sys::kill(Pid(*p), libc::SIGKILL);
        }
        let mut status = 0;
        // SAFETY: the root is our child; the others are its children and go with it.
        unsafe { libc::waitpid(self.0[0], &mut status, 0) };
    }
}

fn pids_of(dump: &str) -> Vec<i32> {
    let mut r = criu_images::ImageReader::open(images(dump).join("pstree.img")).unwrap();
    let mut out = Vec::new();
    while let Some(e) = r.next_entry::<criu_images::pb::PstreeEntry>().unwrap() {
        out.push(e.pid as i32);
    }
    out
}

fn images(dump: &str) -> PathBuf {
    fixtures().join("images").join(dump)
}

/// Restores one fixture and checks that every process is alive and running afterwards.
/// `None` when this CPU lacks xsave features the fixture's threads had (the fixtures
/// were dumped on a CPU with AVX-512; a program whose libc chose AVX-512 code there
/// would fault here): the restore refuses that by name, and the test says it skips.
fn restore_fixture(dump: &str) -> Option<Restored> {
    let pids = pids_of(dump);
    for p in &pids {
        // Another test's short-lived process may hold a recorded pid for a moment.
        wait_until(
            &format!("pid {p} of the {dump} fixture to be free"),
            Duration::from_secs(30),
            || !Path::new(&format!("/proc/{p}")).exists(),
        );
    }
    // The image directory is read-only in spirit: restore into a copy (stats-restore is
    // written next to the images).
    let dir = std::env::temp_dir().join(format!("criu-rs-fixture-{dump}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(images(dump)).unwrap().flatten() {
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let r = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&dir)
    });
    let _ = std::fs::remove_dir_all(&dir);
    let r = match r {
        Ok(r) => r,
        Err(e) if e.to_string().contains("which this CPU lacks") => {
            let msg = e.to_string();
            assert!(msg.contains("--cpu-cap=none"), "{msg}");
            eprintln!("skipped: the {dump} fixture needs what this CPU lacks: {msg}");
            return None;
        }
        Err(e) => panic!("restoring the {dump} fixture: {e}"),
    };
    assert_eq!(r.pid.0, pids[0]);
    let guard = Restored(pids.clone());
    std::thread::sleep(Duration::from_millis(300));
    for p in &pids {
        let state = task_state(*p);
        assert!(
            matches!(state, Some('S') | Some('R')),
            "{dump}: process {p} is {state:?} after restore"
        );
    }
    Some(guard)
}

#[test]
fn criu_written_images_restore_and_keep_running() {
    lay_out();
    {
        let Some(_looper) = restore_fixture("looper") else {
            return;
        };
        // The loop goes on counting in its log, from where CRIU stopped it.
        let log = Path::new(ROOT).join("out/looper.log");
        wait_until("the loop to count on", Duration::from_secs(5), || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() > 3)
        });
        let numbers: Vec<u64> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        for (i, n) in numbers.iter().enumerate() {
            assert_eq!(*n, i as u64, "{numbers:?}");
        }
    }
    {
        let Some(threads) = restore_fixture("threads") else {
            return;
        };
        let n = std::fs::read_dir(format!("/proc/{}/task", threads.0[0]))
            .unwrap()
            .count();
        assert_eq!(n, 5);
    }
    {
        let Some(_memhog) = restore_fixture("memhog16") else {
            return;
        };
    }
    {
        let Some(fds) = restore_fixture("fds") else {
            return;
        };
        let pid = Pid(fds.0[0]);
        let pidfd = sys::pidfd_open(pid).unwrap();
        use std::os::fd::AsFd;
        // fd 3 is the pipe's read end, fd 6 the socketpair end with the queued data.
        let pipe = sys::pidfd_getfd(pidfd.as_fd(), 3).unwrap();
        let mut buf = [0u8; 32];
        // SAFETY: recv/read into our own buffer from a duplicate we own.
        let n = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&pipe),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(&buf[..n.max(0) as usize], b"hello-pipe");
        let sock = sys::pidfd_getfd(pidfd.as_fd(), 6).unwrap();
        // SAFETY: as above.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        assert_eq!(&buf[..n.max(0) as usize], b"hello-sock");
    }
    let _ = std::fs::remove_dir_all(ROOT);
}
