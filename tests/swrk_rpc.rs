//! `criu-rs swrk FD` spoken to as runc and go-criu speak to CRIU: a SOCK_SEQPACKET
//! socket pair, one `criu_req` per packet (CRIU's rpc.proto), NOTIFY round trips
//! answered by the caller, one `criu_resp` back. Every server process is killed and
//! reaped by its guard; every wait is bounded.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use criu_core::images::pb::{CriuCgMode, CriuFeatures, CriuOpts, CriuReq, CriuReqType, CriuResp};
use criu_core::sys;
use criu_rs_suite::{
    check_restored, crit_decode, debian_crit, numbers, task_state, tracer_pid, wait_until,
    workspace_bin, DetachedTree, ScratchDir, TestProcess,
};
use prost::Message;

/// How long any one answer may take (a dump of tp-looper takes well under a second).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The notifications a server sent: script name and pid, in order.
type Notified = Vec<(String, Option<i32>)>;

/// One `criu-rs swrk 3` process and our end of its socket.
struct Server {
    child: Child,
    sock: OwnedFd,
}

impl Server {
    fn start() -> Server {
        Server::start_with_fd(None)
    }

    /// A server that also inherits our fd `extra` as its fd 4 (as runc passes the
    /// container's network namespace).
    fn start_with_fd(extra: Option<i32>) -> Server {
        let (ours, theirs) = sys::socketpair(libc::SOCK_SEQPACKET).unwrap();
        let raw = theirs.as_raw_fd();
        let mut cmd = Command::new(workspace_bin("criu-rs"));
        cmd.args(["swrk", "3"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: the closure runs in the forked child before exec and calls only
        // fcntl(2), dup2(2) and close_range(2), which are async-signal-safe. Both fds
        // are first copied above any target (one may be 3 or 4 already); the dup2
        // copies at 3 and 4 have no close-on-exec flag; every fd above them is closed.
        unsafe {
            cmd.pre_exec(move || {
                let wanted = [Some(raw), extra];
                for (target, fd) in (3..).zip(wanted) {
                    let Some(fd) = fd else { continue };
                    let high = libc::fcntl(fd, libc::F_DUPFD, 100 + target);
                    if high < 0 || libc::dup2(high, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                let first_closed = if extra.is_some() { 5u32 } else { 4 };
                libc::syscall(libc::SYS_close_range, first_closed, u32::MAX, 0u32);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start criu-rs swrk");
        drop(theirs);
        // Bounded reads: a server that never answers fails the test instead of hanging.
        let mut tv = [0u8; 16];
        tv[..8].copy_from_slice(&(ANSWER_TIMEOUT.as_secs() as i64).to_ne_bytes());
        sys::setsockopt_bytes(ours.as_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv).unwrap();
        Server { child, sock: ours }
    }

    fn send_raw(&self, bytes: &[u8]) {
        let n = sys::send(self.sock.as_fd(), bytes, libc::MSG_NOSIGNAL).unwrap();
        assert_eq!(n, bytes.len());
    }

    fn send(&self, req: &CriuReq) {
        self.send_raw(&req.encode_to_vec());
    }

    /// The next response; panics when none comes in time or the server hung up.
    fn recv(&self) -> CriuResp {
        let mut buf = vec![0u8; 1 << 20];
        let n = sys::recv(self.sock.as_fd(), &mut buf, 0).expect("no answer in time");
        assert!(n > 0, "the server hung up without answering");
        CriuResp::decode(&buf[..n]).expect("the answer is a criu_resp")
    }

    /// Answers NOTIFY messages with `answer(script, pid)` until the final response
    /// comes; returns it with the scripts seen. `answer` returning `None` hangs up.
    fn serve_notifications(
        self,
        mut answer: impl FnMut(&str, Option<i32>) -> Option<bool>,
    ) -> (Option<CriuResp>, Notified, Server) {
        let mut seen = Vec::new();
        loop {
            let resp = self.recv();
            if resp.r#type != CriuReqType::Notify as i32 {
                return (Some(resp), seen, self);
            }
            let notify = resp
                .notify
                .clone()
                .expect("a NOTIFY response carries notify");
            let script = notify.script.clone().unwrap_or_default();
            seen.push((script.clone(), notify.pid));
            match answer(&script, notify.pid) {
                Some(ok) => self.send(&CriuReq {
                    r#type: CriuReqType::Notify as i32,
                    notify_success: Some(ok),
                    ..Default::default()
                }),
                None => return (None, seen, self.hang_up()),
            }
        }
    }

    /// Closes our end of the socket (the server keeps running until it notices).
    fn hang_up(mut self) -> Server {
        // Replacing our end closes it; the stand-in is connected to nothing we use.
        self.sock = sys::socketpair(libc::SOCK_SEQPACKET).unwrap().0;
        self
    }

    /// Waits (bounded) for the server to exit.
    fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "criu-rs swrk did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn request(ty: CriuReqType) -> CriuReq {
    CriuReq {
        r#type: ty as i32,
        ..Default::default()
    }
}

/// A directory of ours, open, as runc passes images_dir_fd and work_dir_fd.
fn open_dir(path: &Path) -> File {
    std::fs::create_dir_all(path).unwrap();
    File::open(path).unwrap()
}

fn opts_with_dirs(images: &File, work: &File) -> CriuOpts {
    CriuOpts {
        images_dir_fd: images.as_raw_fd(),
        work_dir_fd: Some(work.as_raw_fd()),
        log_level: Some(4),
        notify_scripts: Some(true),
        ..Default::default()
    }
}

#[test]
fn version_is_criu_4_2_and_says_criu_rs() {
    let mut server = Server::start();
    server.send(&request(CriuReqType::Version));
    let resp = server.recv();
    assert!(resp.success, "{resp:?}");
    assert_eq!(resp.r#type, CriuReqType::Version as i32);
    let v = resp.version.expect("version");
    assert_eq!((v.major_number, v.minor_number), (4, 2));
    assert!(
        v.gitid.as_deref().unwrap_or("").contains("criu-rs"),
        "{v:?}"
    );
    // go-criu's arithmetic (a gitid adds a minor), against podman's and runc's minimums.
    let mut number = v.major_number * 10000 + v.minor_number * 100 + v.sublevel.unwrap_or(0);
    if v.gitid.is_some() {
        number = number - number % 100 + 100;
    }
    assert!(number >= 31600, "{number}");
    // As CRIU 4.2: one request, then the process exits.
    assert!(server.exit_status().success());
}

#[test]
fn keep_open_serves_version_then_feature_check_honestly() {
    let mut server = Server::start();
    server.send(&CriuReq {
        keep_open: Some(true),
        ..request(CriuReqType::Version)
    });
    assert!(server.recv().success);
    server.send(&CriuReq {
        features: Some(CriuFeatures {
            mem_track: Some(true),
            lazy_pages: Some(true),
            pidfd_store: Some(true),
        }),
        ..request(CriuReqType::FeatureCheck)
    });
    let resp = server.recv();
    assert!(resp.success, "{resp:?}");
    assert_eq!(resp.r#type, CriuReqType::FeatureCheck as i32);
    let f = resp.features.expect("features");
    // Memory tracking by userfaultfd write protection: yes; criu-rs has no lazy pages
    // or pidfd store: each is false.
    assert_eq!(
        (f.mem_track, f.lazy_pages, f.pidfd_store),
        (Some(true), Some(false), Some(false))
    );
    assert!(server.exit_status().success());
}

#[test]
fn check_answers_for_this_kernel() {
    let mut server = Server::start();
    server.send(&request(CriuReqType::Check));
    let resp = server.recv();
    let expected = criu_core::check::basic().iter().all(|(_, r)| r.is_ok());
    assert_eq!(resp.success, expected, "{resp:?}");
    assert_eq!(resp.r#type, CriuReqType::Check as i32);
    assert_eq!(server.exit_status().success(), expected);
}

#[test]
fn unsupported_requests_are_refused_with_enotsup() {
    for ty in [CriuReqType::PageServer, CriuReqType::WaitPid] {
        let mut server = Server::start();
        server.send(&request(ty));
        let resp = server.recv();
        assert!(!resp.success, "{ty:?}: {resp:?}");
        assert_eq!(resp.r#type, ty as i32);
        assert_eq!(resp.cr_errno, Some(libc::ENOTSUP), "{ty:?}");
        assert!(resp.cr_errmsg.is_some(), "{ty:?}");
        assert!(!server.exit_status().success());
    }
}

/// A PRE_DUMP, then on the same socket (as CRIU serves it) a DUMP with `parent_img`
/// and `track_mem`: the dump refers to the pre-dump's pages, and the chain restores.
#[test]
fn pre_dump_then_dump_with_parent_on_one_socket() {
    let scratch = ScratchDir::new("swrk-pre-dump");
    let first = open_dir(&scratch.path().join("1"));
    let last = open_dir(&scratch.path().join("2"));
    let mut tp = TestProcess::start(scratch.path(), "looper", &["--interval-ms", "20"]);
    let server = Server::start();
    server.send(&CriuReq {
        opts: Some(CriuOpts {
            pid: Some(tp.pid),
            log_file: Some("pre-dump.log".into()),
            track_mem: Some(true),
            ..opts_with_dirs(&first, &first)
        }),
        ..request(CriuReqType::PreDump)
    });
    let resp = server.recv();
    assert!(resp.success, "{resp:?}");
    assert_eq!(resp.r#type, CriuReqType::PreDump as i32);
    server.send(&CriuReq {
        opts: Some(CriuOpts {
            pid: Some(tp.pid),
            log_file: Some("dump.log".into()),
            parent_img: Some("../1".into()),
            track_mem: Some(true),
            ..opts_with_dirs(&last, &last)
        }),
        ..request(CriuReqType::Dump)
    });
    let (resp, _, mut server) = server.serve_notifications(|_, _| Some(true));
    let resp = resp.unwrap();
    let log = std::fs::read_to_string(scratch.path().join("2/dump.log")).unwrap_or_default();
    assert!(resp.success, "{resp:?}\n{log}");
    assert!(server.exit_status().success());
    assert!(log.contains("refer to the parent"), "{log}");
    assert_eq!(
        std::fs::read_link(scratch.path().join("2/parent")).unwrap(),
        Path::new("../1")
    );
    let _ = tp.child.wait();
    let r = criu_core::restore::restore(&criu_core::restore::RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..criu_core::restore::RestoreOptions::new(scratch.path().join("2"))
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let _tree = DetachedTree(vec![r.pid.0]);
    assert_eq!(check_restored(tp.pid, &tp.ready_file), "pass");
}

/// Garbage, a cut request, an unknown type, an unasked NOTIFY, a dump without options
/// and keep_open on a dump: each gets an error response and the server exits.
#[test]
fn bad_packets_get_an_error_response_and_no_process_stays() {
    let dump = CriuReq {
        opts: Some(CriuOpts {
            images_dir_fd: 3,
            pid: Some(1),
            ..Default::default()
        }),
        ..request(CriuReqType::Dump)
    }
    .encode_to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", vec![0xff; 64]),
        ("cut request", dump[..dump.len() / 2].to_vec()),
        ("unknown type", {
            let mut r = request(CriuReqType::Version);
            r.r#type = 99;
            r.encode_to_vec()
        }),
        ("notify", request(CriuReqType::Notify).encode_to_vec()),
        ("empty", request(CriuReqType::Empty).encode_to_vec()),
        (
            "dump without opts",
            request(CriuReqType::Dump).encode_to_vec(),
        ),
        (
            "keep_open dump",
            CriuReq {
                keep_open: Some(true),
                ..CriuReq::decode(dump.as_slice()).unwrap()
            }
            .encode_to_vec(),
        ),
    ];
    for (what, bytes) in cases {
        let mut server = Server::start();
        if bytes.is_empty() {
            continue;
        }
        server.send_raw(&bytes);
        let resp = server.recv();
        assert!(!resp.success, "{what}: {resp:?}");
        assert!(
            resp.cr_errmsg.as_deref().is_some_and(|m| !m.is_empty()),
            "{what}: {resp:?}"
        );
        let status = server.exit_status();
        assert!(!status.success(), "{what}: {status}");
        // A crash would show as a signal (a panic aborts or exits 101).
        assert_eq!(status.code(), Some(1), "{what}: {status}");
    }
}

#[test]
fn a_caller_that_hangs_up_before_asking_ends_the_server() {
    let mut server = Server::start().hang_up();
    assert_eq!(server.exit_status().code(), Some(1));
}

/// A full round trip as runc does it: DUMP with notifications (the tree is killed),
/// then RESTORE with notifications; the counter goes on where it stopped.
#[test]
fn dump_and_restore_with_notifications() {
    let scratch = ScratchDir::new("swrk-roundtrip");
    let images = open_dir(&scratch.path().join("images"));
    let work = open_dir(&scratch.path().join("work"));
    let mut tp = TestProcess::start(scratch.path(), "looper", &["--interval-ms", "20"]);
    let out = scratch.path().join("looper.out");
    wait_until("a few lines", Duration::from_secs(10), || {
        numbers(&std::fs::read_to_string(&out).unwrap_or_default()).len() > 3
    });

    let server = Server::start();
    server.send(&CriuReq {
        opts: Some(CriuOpts {
            pid: Some(tp.pid),
            log_file: Some("dump.log".into()),
            manage_cgroups: Some(true),
            manage_cgroups_mode: Some(CriuCgMode::Default as i32),
            orphan_pts_master: Some(true),
            ..opts_with_dirs(&images, &work)
        }),
        ..request(CriuReqType::Dump)
    });
    let (resp, seen, mut server) = server.serve_notifications(|_, _| Some(true));
    let resp = resp.unwrap();
    let log = scratch.path().join("work/dump.log");
    assert!(
        resp.success,
        "{resp:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(resp.r#type, CriuReqType::Dump as i32);
    assert_eq!(resp.dump.and_then(|d| d.restored), Some(false));
    let scripts: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(scripts, ["pre-dump", "post-dump"]);
    assert!(server.exit_status().success());
    assert!(log.exists(), "the log is in the work dir");
    assert!(scratch.path().join("work/stats-dump").exists());
    // The images are CRIU's: the independent decoder reads them.
    if let Some(crit) = debian_crit() {
        for image in [
            "inventory.img",
            "pstree.img",
            &format!("core-{}.img", tp.pid),
        ] {
            let path = scratch.path().join("images").join(image);
            crit_decode(&crit, &path).unwrap_or_else(|e| panic!("{image}: {e}"));
        }
    }
    let _ = tp.child.wait();
    let before = numbers(&std::fs::read_to_string(&out).unwrap());

    let server = Server::start();
    server.send(&CriuReq {
        opts: Some(CriuOpts {
            log_file: Some("restore.log".into()),
            rst_sibling: Some(true),
            evasive_devices: Some(true),
            ..opts_with_dirs(&images, &work)
        }),
        ..request(CriuReqType::Restore)
    });
    let (resp, seen, mut server) = server.serve_notifications(|_, _| Some(true));
    let resp = resp.unwrap();
    let _tree = DetachedTree(vec![tp.pid]);
    let log = scratch.path().join("work/restore.log");
    assert!(
        resp.success,
        "{resp:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(resp.restore.map(|r| r.pid), Some(tp.pid));
    let expected = [
        ("pre-restore", None),
        ("setup-namespaces", Some(tp.pid)),
        ("post-setup-namespaces", None),
        ("post-restore", Some(tp.pid)),
        ("pre-resume", None),
        ("post-resume", None),
    ];
    let seen: Vec<(&str, Option<i32>)> = seen.iter().map(|(s, p)| (s.as_str(), *p)).collect();
    assert_eq!(seen, expected);
    assert!(server.exit_status().success());
    assert!(scratch.path().join("work/stats-restore").exists());
    // The restored counter goes on from where it stopped.
    wait_until("new lines", Duration::from_secs(10), || {
        numbers(&std::fs::read_to_string(&out).unwrap_or_default()).len() > before.len() + 3
    });
    let after = numbers(&std::fs::read_to_string(&out).unwrap());
    let expected: Vec<u64> = (0..after.len() as u64).collect();
    assert_eq!(after, expected, "no reset, gap or repeat");
    assert_eq!(check_restored(tp.pid, &tp.ready_file), "pass");
}

/// The tree after a dump that failed: running, untraced, counting on (tp-looper's
/// output, in `dir`), and passing its own check (which ends the counting).
fn assert_intact(tp: &mut TestProcess, dir: &Path) {
    wait_until("the tree to be let go", Duration::from_secs(10), || {
        tracer_pid(tp.pid) == Some(0) && matches!(task_state(tp.pid), Some('S' | 'R'))
    });
    let out = dir.join("looper.out");
    let count = numbers(&std::fs::read_to_string(&out).unwrap()).len();
    wait_until("the counter to go on", Duration::from_secs(10), || {
        numbers(&std::fs::read_to_string(&out).unwrap_or_default()).len() > count + 3
    });
    assert_eq!(tp.check(), "pass");
}

#[test]
fn a_refused_post_dump_leaves_the_tree_running() {
    let scratch = ScratchDir::new("swrk-refused");
    let images = open_dir(&scratch.path().join("images"));
    let mut tp = TestProcess::start(scratch.path(), "looper", &["--interval-ms", "20"]);
    let server = Server::start();
    server.send(&CriuReq {
        opts: Some(CriuOpts {
            pid: Some(tp.pid),
            log_file: Some("dump.log".into()),
            ..opts_with_dirs(&images, &images)
        }),
        ..request(CriuReqType::Dump)
    });
    let (resp, seen, mut server) =
        server.serve_notifications(|script, _| Some(script != "post-dump"));
    let resp = resp.unwrap();
    assert!(!resp.success, "{resp:?}");
    assert!(
        resp.cr_errmsg
            .as_deref()
            .unwrap_or("")
            .contains("post-dump"),
        "{resp:?}"
    );
    assert_eq!(seen.last().map(|(s, _)| s.as_str()), Some("post-dump"));
    assert_eq!(server.exit_status().code(), Some(1));
    assert_intact(&mut tp, scratch.path());
    // runc quotes the lines of the log that hold "Error".
    let log = std::fs::read_to_string(scratch.path().join("images/dump.log")).unwrap();
    assert!(log.contains("Error"), "{log}");
}

#[test]
fn a_caller_that_hangs_up_mid_dump_leaves_the_tree_running() {
    let scratch = ScratchDir::new("swrk-hangup");
    let images = open_dir(&scratch.path().join("images"));
    let mut tp = TestProcess::start(scratch.path(), "looper", &["--interval-ms", "20"]);
    let server = Server::start();
    server.send(&CriuReq {
        opts: Some(CriuOpts {
            pid: Some(tp.pid),
            ..opts_with_dirs(&images, &images)
        }),
        ..request(CriuReqType::Dump)
    });
    // The tree is frozen and its images written when post-dump comes: hang up then.
    let (resp, seen, mut server) =
        server.serve_notifications(|script, _| (script != "post-dump").then_some(true));
    assert!(resp.is_none());
    assert_eq!(seen.last().map(|(s, _)| s.as_str()), Some("post-dump"));
    assert_eq!(server.exit_status().code(), Some(1));
    assert_intact(&mut tp, scratch.path());
}

#[test]
fn an_option_criu_rs_cannot_honour_is_refused_by_name_before_anything() {
    let scratch = ScratchDir::new("swrk-cgroups");
    let images = open_dir(&scratch.path().join("images"));
    let mut tp = TestProcess::start(scratch.path(), "looper", &["--interval-ms", "20"]);
    let server = Server::start();
    server.send(&CriuReq {
        opts: Some(CriuOpts {
            pid: Some(tp.pid),
            cgroup_props: Some("\"cpu\": {}".into()),
            ..opts_with_dirs(&images, &images)
        }),
        ..request(CriuReqType::Dump)
    });
    let (resp, seen, mut server) = server.serve_notifications(|_, _| Some(true));
    let resp = resp.unwrap();
    assert!(!resp.success);
    assert_eq!(resp.cr_errno, Some(libc::ENOTSUP));
    assert!(
        resp.cr_errmsg
            .as_deref()
            .unwrap_or("")
            .contains("cgroup_props"),
        "{resp:?}"
    );
    assert!(seen.is_empty(), "refused before the dump starts: {seen:?}");
    assert_eq!(server.exit_status().code(), Some(1));
    assert_intact(&mut tp, scratch.path());
    let log = std::fs::read_to_string(scratch.path().join("images/criu.log")).unwrap();
    assert!(log.contains("Error"), "{log}");
}

#[test]
fn a_failed_restore_answers_and_leaves_no_process() {
    let scratch = ScratchDir::new("swrk-badrestore");
    let images = open_dir(&scratch.path().join("images"));
    let mut server = Server::start();
    server.send(&CriuReq {
        opts: Some(CriuOpts {
            notify_scripts: Some(false),
            ..opts_with_dirs(&images, &images)
        }),
        ..request(CriuReqType::Restore)
    });
    let resp = server.recv();
    assert!(!resp.success, "{resp:?}");
    assert_eq!(resp.r#type, CriuReqType::Restore as i32);
    assert!(resp.cr_errmsg.is_some());
    assert_eq!(server.exit_status().code(), Some(1));
}

/// The network as runc hands it over: the tree in a network namespace of its own, which
/// the caller keeps; DUMP with `empty_ns` and `external net[INODE]:extRootNetNS`, then
/// RESTORE with that namespace inherited under the same key. Without it the restore
/// is refused rather than put the tree in our network.
#[test]
fn a_tree_in_its_own_network_goes_back_into_it() {
    let scratch = ScratchDir::new("swrk-netns");
    let images = open_dir(&scratch.path().join("images"));
    let out = scratch.path().join("looper.out");
    let looper = workspace_bin("tp-looper");
    let ready = scratch.path().join("looper.ready");
    let mut tp = TestProcess::spawn(
        &[
            "unshare",
            "--net",
            "--",
            looper.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
            "--interval-ms",
            "20",
        ],
        &out,
    );
    tp.ready_file = ready.clone();
    wait_until("tp-looper ready", Duration::from_secs(30), || {
        ready.exists()
    });
    let netns = File::open(format!("/proc/{}/ns/net", tp.pid)).unwrap();
    let netns_link = std::fs::read_link(format!("/proc/{}/ns/net", tp.pid)).unwrap();
    assert_ne!(netns_link, std::fs::read_link("/proc/self/ns/net").unwrap());
    let ino = std::fs::metadata(format!("/proc/{}/ns/net", tp.pid))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();

    let server = Server::start();
    server.send(&CriuReq {
        opts: Some(CriuOpts {
            pid: Some(tp.pid),
            empty_ns: Some(libc::CLONE_NEWNET as u32),
            external: vec![format!("net[{ino}]:extRootNetNS")],
            ..opts_with_dirs(&images, &images)
        }),
        ..request(CriuReqType::Dump)
    });
    let (resp, seen, mut server) = server.serve_notifications(|_, _| Some(true));
    let resp = resp.unwrap();
    assert!(resp.success, "{resp:?}");
    let scripts: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(scripts, ["pre-dump", "network-lock", "post-dump"]);
    assert!(server.exit_status().success());
    let _ = tp.child.wait();

    // Without the namespace to go back into: refused, and nothing is left running.
    let mut server = Server::start();
    server.send(&CriuReq {
        opts: Some(CriuOpts {
            empty_ns: Some(libc::CLONE_NEWNET as u32),
            ..opts_with_dirs(&images, &images)
        }),
        ..request(CriuReqType::Restore)
    });
    let resp = server.recv();
    assert!(!resp.success);
    assert!(
        resp.cr_errmsg.as_deref().unwrap_or("").contains("empty_ns"),
        "{resp:?}"
    );
    assert_eq!(server.exit_status().code(), Some(1));
    assert!(!Path::new(&format!("/proc/{}", tp.pid)).exists());

    let server = Server::start_with_fd(Some(netns.as_raw_fd()));
    server.send(&CriuReq {
        opts: Some(CriuOpts {
            empty_ns: Some(libc::CLONE_NEWNET as u32),
            rst_sibling: Some(true),
            inherit_fd: vec![criu_core::images::pb::InheritFd {
                key: "extRootNetNS".into(),
                fd: 4,
            }],
            ..opts_with_dirs(&images, &images)
        }),
        ..request(CriuReqType::Restore)
    });
    let (resp, seen, mut server) = server.serve_notifications(|_, _| Some(true));
    let resp = resp.unwrap();
    let _tree = DetachedTree(vec![tp.pid]);
    assert!(resp.success, "{resp:?}");
    let scripts: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        scripts,
        [
            "pre-restore",
            "setup-namespaces",
            "post-setup-namespaces",
            "post-restore",
            "network-unlock",
            "pre-resume",
            "post-resume"
        ]
    );
    assert!(server.exit_status().success());
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/ns/net", tp.pid)).unwrap(),
        netns_link,
        "back in its own network namespace"
    );
    assert_eq!(check_restored(tp.pid, &ready), "pass");
}

/// Installed as `criu` (a link, as runc and podman look it up on PATH), `--version`
/// answers in CRIU's form and says it is criu-rs.
#[test]
fn as_criu_version_has_criu_form() {
    let scratch = ScratchDir::new("swrk-link");
    let link = scratch.path().join("criu");
    std::os::unix::fs::symlink(workspace_bin("criu-rs"), &link).unwrap();
    let out = Command::new(&link).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "Version: 4.2", "{text}");
    assert!(lines[1].starts_with("GitID: criu-rs-"), "{text}");
}

/// A caller that does not answer a notification holds the tree frozen, as with CRIU;
/// a stop signal to criu-rs then ends the dump, and the tree runs on.
#[test]
fn a_stop_signal_while_the_caller_does_not_answer_leaves_the_tree_running() {
    let scratch = ScratchDir::new("swrk-sigterm");
    let images = open_dir(&scratch.path().join("images"));
    let mut tp = TestProcess::start(scratch.path(), "looper", &["--interval-ms", "20"]);
    let mut server = Server::start();
    server.send(&CriuReq {
        opts: Some(CriuOpts {
            pid: Some(tp.pid),
            ..opts_with_dirs(&images, &images)
        }),
        ..request(CriuReqType::Dump)
    });
    loop {
        let resp = server.recv();
        assert_eq!(resp.r#type, CriuReqType::Notify as i32, "{resp:?}");
        let script = resp.notify.and_then(|n| n.script).unwrap_or_default();
        if script == "post-dump" {
            break;
        }
        server.send(&CriuReq {
            notify_success: Some(true),
            ..request(CriuReqType::Notify)
        });
    }
    // The tree is frozen now; we do not answer.
    assert_eq!(tracer_pid(tp.pid).map(|t| t != 0), Some(true));
    sys::kill(sys::Pid(server.child.id() as i32), libc::SIGTERM).unwrap();
    let resp = server.recv();
    assert_eq!(resp.r#type, CriuReqType::Dump as i32);
    assert!(!resp.success);
    assert!(
        resp.cr_errmsg.as_deref().unwrap_or("").contains("SIGTERM"),
        "{resp:?}"
    );
    assert_eq!(server.exit_status().code(), Some(1));
    assert_intact(&mut tp, scratch.path());
}

/// runc names `/etc/criu/runc.conf` in `config_file`; its options override the
/// request's, as CRIU applies them.
#[test]
fn the_requests_config_file_overrides_its_options() {
    let scratch = ScratchDir::new("swrk-config");
    let images = open_dir(&scratch.path().join("images"));
    let conf = scratch.path().join("runc.conf");
    std::fs::write(
        &conf,
        "# as runc.conf\nleave-running\nlog-file from-conf.log\n",
    )
    .unwrap();
    let mut tp = TestProcess::start(scratch.path(), "looper", &["--interval-ms", "20"]);
    let server = Server::start();
    server.send(&CriuReq {
        opts: Some(CriuOpts {
            pid: Some(tp.pid),
            log_file: Some("dump.log".into()),
            leave_running: Some(false),
            notify_scripts: Some(false),
            config_file: Some(conf.to_str().unwrap().into()),
            ..opts_with_dirs(&images, &images)
        }),
        ..request(CriuReqType::Dump)
    });
    let resp = server.recv();
    assert!(resp.success, "{resp:?}");
    assert!(scratch.path().join("images/from-conf.log").exists());
    assert!(!scratch.path().join("images/dump.log").exists());
    assert_eq!(tracer_pid(tp.pid), Some(0), "left running");

    // An option with no meaning under the RPC is refused with its place.
    std::fs::write(&conf, "tcp-established\npage-server\n").unwrap();
    let server = Server::start();
    server.send(&CriuReq {
        opts: Some(CriuOpts {
            pid: Some(tp.pid),
            config_file: Some(conf.to_str().unwrap().into()),
            ..opts_with_dirs(&images, &images)
        }),
        ..request(CriuReqType::Dump)
    });
    let resp = server.recv();
    assert!(!resp.success, "{resp:?}");
    let msg = resp.cr_errmsg.unwrap_or_default();
    assert!(msg.contains("runc.conf:2: option page-server"), "{msg}");
    assert_intact(&mut tp, scratch.path());
}

/// A pty pair of ours on the host's devpts: (master, slave, number).
fn open_pty() -> (OwnedFd, OwnedFd, u32) {
    const TIOCSPTLCK: libc::c_ulong = 0x4004_5431;
    let master = sys::open_path(
        Path::new("/dev/ptmx"),
        libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        0,
    )
    .unwrap();
    sys::ioctl_set_int(master.as_fd(), TIOCSPTLCK, 0).unwrap();
    let index = sys::ioctl_get_int(master.as_fd(), libc::TIOCGPTN as libc::c_ulong).unwrap();
    let slave = sys::pty_peer(master.as_fd(), libc::O_RDWR | libc::O_NOCTTY).unwrap();
    (master, slave, index as u32)
}

/// Reads everything `master` gives into a shared buffer, in a thread, until EIO/EOF.
fn drain_pty(master: OwnedFd) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::Read;
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let shared = text.clone();
    std::thread::spawn(move || {
        let mut f = File::from(master);
        let mut buf = [0u8; 4096];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            shared
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// runc's console: the container's init has a pty slave as its controlling terminal
/// and stdio, whose master its monitor holds. Dumped with `orphan_pts_master` (as runc
/// always asks), restored with it: a new pty with the same number is made, its master
/// comes to the caller with the `orphan-pts-master` notification (SCM_RIGHTS), and the
/// program's output goes on there.
#[test]
fn a_console_whose_master_is_the_callers_comes_back_to_the_caller() {
    let scratch = ScratchDir::new("swrk-orphan-pts");
    let images = open_dir(&scratch.path().join("images"));
    let (master, slave, index) = open_pty();
    let ready_file = scratch.path().join("looper.ready");
    // `setsid -c`: a session of its own whose controlling terminal is the slave.
    let child = Command::new("setsid")
        .arg("-c")
        .arg(workspace_bin("tp-looper"))
        .args([
            "--ready-file",
            ready_file.to_str().unwrap(),
            "--interval-ms",
            "20",
        ])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut tp = TestProcess {
        child,
        ready_file: ready_file.clone(),
        pid,
    };
    let shown = drain_pty(master);
    criu_rs_suite::wait_for_file(&ready_file, ANSWER_TIMEOUT).expect("tp-looper ready");
    let lines = |t: &std::sync::Mutex<String>| numbers(&t.lock().unwrap().replace('\r', ""));
    wait_until("a few lines on the pty", Duration::from_secs(10), || {
        lines(&shown).len() > 3
    });

    let server = Server::start();
    server.send(&CriuReq {
        opts: Some(CriuOpts {
            pid: Some(tp.pid),
            log_file: Some("dump.log".into()),
            orphan_pts_master: Some(true),
            notify_scripts: Some(false),
            ..opts_with_dirs(&images, &images)
        }),
        ..request(CriuReqType::Dump)
    });
    let resp = server.recv();
    let log = |name: &str| {
        std::fs::read_to_string(scratch.path().join("images").join(name)).unwrap_or_default()
    };
    assert!(resp.success, "{resp:?}\n{}", log("dump.log"));
    let _ = tp.child.wait();
    // The monitor lets go of the old pty (its number is free again).
    wait_until(
        "the old pty's reader to end",
        Duration::from_secs(10),
        || std::sync::Arc::strong_count(&shown) == 1,
    );
    let before = lines(&shown);

    let server = Server::start();
    server.send(&CriuReq {
        opts: Some(CriuOpts {
            log_file: Some("restore.log".into()),
            orphan_pts_master: Some(true),
            ..opts_with_dirs(&images, &images)
        }),
        ..request(CriuReqType::Restore)
    });
    // Answer every notification; keep the fd that comes with orphan-pts-master.
    let mut new_master = None;
    let resp = loop {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut buf = vec![0u8; 1 << 16];
        let peeked = loop {
            if let Some(p) = sys::recv_peek(server.sock.as_fd(), &mut buf, false).unwrap() {
                break p;
            }
            assert!(Instant::now() < deadline, "no answer in time");
            std::thread::sleep(Duration::from_millis(5));
        };
        let resp = server.recv();
        if resp.r#type != CriuReqType::Notify as i32 {
            break resp;
        }
        let script = resp.notify.and_then(|n| n.script).unwrap_or_default();
        if script == "orphan-pts-master" {
            assert_eq!(peeked.fds.len(), 1, "one fd with {script}");
            new_master = peeked.fds.into_iter().next();
        } else {
            assert!(peeked.fds.is_empty(), "no fd with {script}");
        }
        server.send(&CriuReq {
            r#type: CriuReqType::Notify as i32,
            notify_success: Some(true),
            ..Default::default()
        });
    };
    let _tree = DetachedTree(vec![tp.pid]);
    assert!(resp.success, "{resp:?}\n{}", log("restore.log"));
    let new_master = new_master.expect("the orphan-pts-master notification with an fd");
    let shown = drain_pty(new_master);
    wait_until("new lines on the new pty", Duration::from_secs(10), || {
        lines(&shown).len() > 3
    });
    let after = lines(&shown);
    assert_eq!(
        after[0],
        before.last().unwrap() + 1,
        "{before:?} then {after:?}"
    );
    // The same name as before, and still the session's controlling terminal.
    let tty = std::fs::read_link(format!("/proc/{}/fd/1", tp.pid)).unwrap();
    assert_eq!(tty, Path::new(&format!("/dev/pts/{index}")));
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", tp.pid)).unwrap();
    let tty_nr: u64 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(4)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        libc::minor(tty_nr as libc::dev_t),
        index,
        "controlling terminal"
    );
    assert_eq!(check_restored(tp.pid, &tp.ready_file), "pass");
}
