//! Baseline runs of every test program, without any checkpoint: start it, wait for
//! `ready`, send SIGUSR2, and expect `pass`. A check that fails on an untouched process
//! would make every checkpoint/restore test built on it meaningless. A few runs also
//! tamper with a program to prove its check notices.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const RESULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A directory of its own for one test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tp-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A started program, in its own process group. Dropping it (also on panic) kills the whole
/// group and reaps the program, then removes the scratch dir.
struct Running {
    child: Child,
    pid: i32,
    ready: PathBuf,
    dir: Scratch,
}

impl Running {
    /// Starts `bin --ready-file DIR/ready ARGS`; an argument `{dir}` stands for DIR.
    fn start(bin: &str, test: &str, args: &[&str]) -> Running {
        let dir = Scratch::new(test);
        let ready = dir.0.join("ready");
        let args = args.iter().map(|a| {
            if *a == "{dir}" {
                dir.0.clone()
            } else {
                PathBuf::from(a)
            }
        });
        let child = Command::new(bin)
            .arg("--ready-file")
            .arg(&ready)
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(dir.0.join("stdout")).expect("create stdout file"))
            .stderr(File::create(dir.0.join("stderr")).expect("create stderr file"))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let pid = child.id() as i32;
        Running {
            child,
            pid,
            ready,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    fn companion(&self, suffix: &str) -> PathBuf {
        self.path(&format!("ready{suffix}"))
    }

    /// What the program said on stderr, and its result file if any, for failure messages.
    fn diagnostics(&self) -> String {
        let stderr = std::fs::read_to_string(self.path("stderr")).unwrap_or_default();
        let result = std::fs::read_to_string(self.companion(".result")).unwrap_or_default();
        format!("stderr: {stderr:?}, result: {result:?}")
    }

    /// Waits for `ready <pid>`; fails fast if the program exits instead.
    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.ready) {
                assert_eq!(text, format!("ready {}\n", self.pid), "ready file content");
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited before ready ({status}); {}", self.diagnostics());
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "not ready within {READY_TIMEOUT:?}; {}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn signal(&self, signo: i32) {
        // SAFETY: kill has no memory arguments; `pid` is our unreaped child.
        let rc = unsafe { libc::kill(self.pid, signo) };
        assert_eq!(
            rc,
            0,
            "kill({}, {signo}): {}",
            self.pid,
            std::io::Error::last_os_error()
        );
    }

    /// The program's exit status and its result line.
    fn wait_result(&mut self) -> (ExitStatus, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let result =
                    std::fs::read_to_string(self.companion(".result")).unwrap_or_else(|e| {
                        panic!(
                            "exited ({status}) without a result: {e}; {}",
                            self.diagnostics()
                        )
                    });
                return (status, result.trim_end().to_owned());
            }
            assert!(
                start.elapsed() < RESULT_TIMEOUT,
                "no exit within {RESULT_TIMEOUT:?}; {}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends the check signal and expects `pass` and exit status 0.
    fn check_passes(&mut self) {
        self.signal(libc::SIGUSR2);
        let (status, result) = self.wait_result();
        assert_eq!(result, "pass", "{}", self.diagnostics());
        assert_eq!(status.code(), Some(0), "exit status with a pass");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill has no memory arguments; the group is the one the child leads.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Start, wait for ready, ask for the check, expect pass.
fn baseline(bin: &str, test: &str, args: &[&str]) -> Running {
    let mut program = Running::start(bin, test, args);
    program.wait_ready();
    program.check_passes();
    program
}

#[test]
fn memhog_passes() {
    baseline(env!("CARGO_BIN_EXE_tp-memhog"), "memhog", &["--mib", "64"]);
}

#[test]
fn attrs_pass() {
    baseline(env!("CARGO_BIN_EXE_tp-attrs"), "attrs", &[]);
}

#[test]
fn memhog_check_after_without_signal() {
    let mut program = Running::start(
        env!("CARGO_BIN_EXE_tp-memhog"),
        "memhog-after",
        &["--mib", "8", "--check-after", "0.2"],
    );
    program.wait_ready();
    let (status, result) = program.wait_result();
    assert_eq!(
        (result.as_str(), status.code()),
        ("pass", Some(0)),
        "{}",
        program.diagnostics()
    );
}

/// One word changed behind the program's back (through /proc/PID/mem) must fail its check.
#[test]
fn memhog_notices_a_changed_word() {
    let mut program = Running::start(
        env!("CARGO_BIN_EXE_tp-memhog"),
        "memhog-corrupt",
        &["--mib", "8"],
    );
    program.wait_ready();
    let layout = std::fs::read_to_string(program.companion(".layout")).expect("PATH.layout");
    let anon = layout
        .lines()
        .find_map(|l| l.strip_prefix("anon "))
        .expect("anon line");
    let address =
        u64::from_str_radix(anon.split(' ').next().unwrap().trim_start_matches("0x"), 16).unwrap();
    let mem = OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/mem", program.pid));
    let written = mem.and_then(|mem| {
        mem.write_all_at(&0x0BAD_0BAD_0BAD_0BADu64.to_ne_bytes(), address + 8 * 1000)
    });
    if let Err(e) = written {
        eprintln!("skipping: cannot write /proc/PID/mem here: {e}");
        return;
    }
    program.signal(libc::SIGUSR2);
    let (status, result) = program.wait_result();
    assert!(result.starts_with("fail: anonymous region"), "{result}");
    assert!(
        result.contains("1 words differ, first at word 1000"),
        "{result}"
    );
    assert_eq!(status.code(), Some(1));
}

#[test]
fn threads_pass() {
    let program = baseline(
        env!("CARGO_BIN_EXE_tp-threads"),
        "threads",
        &["--threads", "8"],
    );
    let listing = std::fs::read_to_string(program.companion(".threads")).expect("PATH.threads");
    assert_eq!(listing.lines().count(), 8);
}

#[test]
fn fds_pass() {
    let mut program = Running::start(env!("CARGO_BIN_EXE_tp-fds"), "fds", &["--dir", "{dir}"]);
    program.wait_ready();
    let table = std::fs::read_to_string(program.companion(".fds")).expect("PATH.fds");
    for name in [
        "pipe-r",
        "fifo-w",
        "seqpacket-b",
        "tcp4-listen",
        "timerfd",
        "memfd",
        "deleted",
        "netns",
    ] {
        assert!(
            table.lines().any(|l| l.split('\t').nth(1) == Some(name)),
            "{name} missing in PATH.fds:\n{table}"
        );
    }
    assert!(
        table.lines().any(|l| l.starts_with("100\tdevnull\t")),
        "{table}"
    );
    program.check_passes();
}

#[test]
fn paths_pass() {
    baseline(env!("CARGO_BIN_EXE_tp-paths"), "paths", &["--dir", "{dir}"]);
}

/// A working directory renamed behind the program's back must fail its check.
#[test]
fn paths_notice_another_cwd() {
    let mut program = Running::start(env!("CARGO_BIN_EXE_tp-paths"), "paths-cwd", &[]);
    program.wait_ready();
    // Renamed: the path the kernel shows changes while the inode stays.
    let dir = program.path("tp-paths-dir-\u{fffd}");
    let odd = std::fs::read_dir(program.path(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().is_some_and(|n| n.to_str().is_none()))
        .expect("the non-UTF-8 directory");
    std::fs::rename(&odd, &dir).unwrap();
    program.signal(libc::SIGUSR2);
    let (status, result) = program.wait_result();
    assert_eq!(status.code(), Some(1), "{result}");
    assert!(result.contains("working directory's path"), "{result}");
}

/// Data taken out of the pipe behind the program's back must fail its check.
#[test]
fn fds_notice_a_drained_pipe() {
    let mut program = Running::start(env!("CARGO_BIN_EXE_tp-fds"), "fds-drained", &[]);
    program.wait_ready();
    let table = std::fs::read_to_string(program.companion(".fds")).expect("PATH.fds");
    let fd = table
        .lines()
        .find(|l| l.split('\t').nth(1) == Some("pipe-r"))
        .and_then(|l| l.split('\t').next())
        .unwrap();
    // Opening /proc/PID/fd/N of a pipe opens the same pipe.
    let pipe = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{}/fd/{fd}", program.pid));
    let mut buf = [0u8; 64];
    match pipe.and_then(|p| std::io::Read::read(&mut &p, &mut buf)) {
        Ok(n) => assert_eq!(&buf[..n], b"hello-pipe"),
        Err(e) => {
            eprintln!("skipping: cannot open the program's pipe: {e}");
            return;
        }
    }
    program.signal(libc::SIGUSR2);
    let (status, result) = program.wait_result();
    assert!(result.contains("epoll_wait reported"), "{result}");
    assert!(result.contains("pipe: read"), "{result}");
    assert_eq!(status.code(), Some(1));
}

#[test]
fn mqueue_passes() {
    baseline(env!("CARGO_BIN_EXE_tp-mqueue"), "mqueue", &[]);
    baseline(
        env!("CARGO_BIN_EXE_tp-mqueue"),
        "mqueue-ipcns",
        &["--ipcns", "yes", "--notify", "yes"],
    );
}

/// A message received behind the program's back must fail its check.
#[test]
fn mqueue_notices_a_taken_message() {
    let mut program = Running::start(env!("CARGO_BIN_EXE_tp-mqueue"), "mqueue-taken", &[]);
    program.wait_ready();
    let queues = std::fs::read_to_string(program.companion(".queues")).expect("PATH.queues");
    let main = std::ffi::CString::new(queues.lines().next().unwrap()).unwrap();
    // SAFETY: `main` is NUL-terminated; no O_CREAT, so no further argument is read.
    let q = unsafe { libc::mq_open(main.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
    assert!(q >= 0, "mq_open: {}", std::io::Error::last_os_error());
    let mut buf = [0u8; 64];
    let mut prio = 0u32;
    // SAFETY: `buf` is as long as the queue's messages may be.
    let n = unsafe { libc::mq_receive(q, buf.as_mut_ptr().cast(), buf.len(), &mut prio) };
    assert_eq!((n, prio), (64, 31), "{}", std::io::Error::last_os_error());
    // SAFETY: closing the descriptor just opened.
    unsafe { libc::close(q) };
    program.signal(libc::SIGUSR2);
    let (status, result) = program.wait_result();
    assert!(
        result.contains("main (maxmsg, msgsize, curmsgs)"),
        "{result}"
    );
    assert!(
        result.contains("main: messages in priority order"),
        "{result}"
    );
    assert_eq!(status.code(), Some(1));
}

#[test]
fn altstack_passes() {
    baseline(env!("CARGO_BIN_EXE_tp-altstack"), "altstack", &[]);
}

#[test]
fn inet_passes() {
    baseline(env!("CARGO_BIN_EXE_tp-inet"), "inet", &[]);
}

#[test]
fn uring_passes() {
    baseline(env!("CARGO_BIN_EXE_tp-uring"), "uring", &[]);
}

#[test]
fn tcp_passes() {
    baseline(env!("CARGO_BIN_EXE_tp-tcp"), "tcp", &["--fill", "yes"]);
}

#[test]
fn sharing_shmem_private_passes() {
    baseline(
        env!("CARGO_BIN_EXE_tp-sharing"),
        "shmem-private",
        &["--mode", "shmem-private"],
    );
}

#[test]
fn sharing_deleted_watch_passes() {
    baseline(
        env!("CARGO_BIN_EXE_tp-sharing"),
        "deleted-watch",
        &["--mode", "deleted-watch"],
    );
}

#[test]
fn sysvshm_passes() {
    baseline(env!("CARGO_BIN_EXE_tp-sysvshm"), "sysvshm", &[]);
    baseline(
        env!("CARGO_BIN_EXE_tp-sysvshm"),
        "sysvshm-own-ns",
        &["--own-ipc-ns", "yes", "--rmid-forced", "yes"],
    );
}

/// A word of a segment changed behind the program's back (through an attachment of the
/// harness, gone again before the check) must fail its check.
#[test]
fn sysvshm_notices_a_changed_segment() {
    let mut program = Running::start(env!("CARGO_BIN_EXE_tp-sysvshm"), "sysvshm-corrupt", &[]);
    program.wait_ready();
    let listing = std::fs::read_to_string(program.companion(".shm")).expect("PATH.shm");
    let id: i32 = listing
        .lines()
        .find_map(|l| l.strip_prefix("shared "))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .expect("the shared segment");
    // SAFETY: a fresh attachment where the kernel chooses; one word written, detached.
    unsafe {
        let at = libc::shmat(id, std::ptr::null(), 0);
        assert_ne!(at as isize, -1, "{}", std::io::Error::last_os_error());
        *(at as *mut u64).add(100) = 0x0BAD_0BAD_0BAD_0BAD;
        libc::shmdt(at);
    }
    program.signal(libc::SIGUSR2);
    let (status, result) = program.wait_result();
    assert!(
        result.contains("shared: 1 words differ, first at word 100"),
        "{result}"
    );
    assert_eq!(status.code(), Some(1));
}

#[test]
fn holds_zdtm_kinds_pass() {
    for kind in ["sigtrap", "deleted-watch", "lease"] {
        baseline(env!("CARGO_BIN_EXE_tp-holds"), kind, &["--hold", kind]);
    }
}

#[test]
fn pty_passes() {
    baseline(env!("CARGO_BIN_EXE_tp-pty"), "pty", &[]);
    baseline(
        env!("CARGO_BIN_EXE_tp-pty"),
        "pty-packet",
        &["--packet", "yes"],
    );
    baseline(
        env!("CARGO_BIN_EXE_tp-pty"),
        "pty-nothing-queued",
        &["--queued", "no", "--session-ctty", "no"],
    );
}

/// Typed input read away behind the job's back (as a restore that lost it would leave
/// it) fails the job's check.
#[test]
fn pty_notices_lost_input() {
    let mut program = Running::start(env!("CARGO_BIN_EXE_tp-pty"), "pty-lost", &[]);
    program.wait_ready();
    let info = std::fs::read_to_string(program.companion(".pty")).unwrap();
    let a: u32 = info
        .lines()
        .find_map(|l| l.strip_prefix("a "))
        .and_then(|n| n.parse().ok())
        .unwrap();
    let mut slave = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(format!("/dev/pts/{a}"))
        .unwrap();
    let mut line = [0u8; 64];
    let n = std::io::Read::read(&mut slave, &mut line).unwrap();
    assert_eq!(&line[..n], b"first line\n");
    program.signal(libc::SIGUSR2);
    let (status, result) = program.wait_result();
    assert!(result.contains("job read"), "{result}");
    assert_eq!(status.code(), Some(1));
}

#[test]
fn vdso_passes() {
    baseline(env!("CARGO_BIN_EXE_tp-vdso"), "vdso", &[]);
}

#[test]
fn clock_passes_in_its_own_time_namespace_and_in_ours() {
    baseline(env!("CARGO_BIN_EXE_tp-clock"), "clock", &[]);
    baseline(
        env!("CARGO_BIN_EXE_tp-clock"),
        "clock-ours",
        &["--timens", "no"],
    );
}

/// A program stopped for longer than the allowed step sees its clocks jump.
#[test]
fn clock_notices_a_jump() {
    let bin = env!("CARGO_BIN_EXE_tp-clock");
    let mut program = Running::start(bin, "clock-jump", &["--max-step-ms", "200"]);
    program.wait_ready();
    program.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(600));
    program.signal(libc::SIGCONT);
    program.signal(libc::SIGUSR2);
    let (status, result) = program.wait_result();
    assert!(result.contains("jumped"), "{result}");
    assert_eq!(status.code(), Some(1));
}

#[test]
fn signals_pass() {
    baseline(env!("CARGO_BIN_EXE_tp-signals"), "signals", &[]);
}

/// A second SIGRTMIN+1 queued from outside must show up as a duplicate delivery.
#[test]
fn signals_notice_an_extra_signal() {
    let mut program = Running::start(env!("CARGO_BIN_EXE_tp-signals"), "signals-extra", &[]);
    program.wait_ready();
    program.signal(criu_testprogs::sigrt(1));
    program.signal(libc::SIGUSR2);
    let (status, result) = program.wait_result();
    assert!(
        result.contains("SIGRTMIN+1 deliveries: found 2, expected 1"),
        "{result}"
    );
    assert_eq!(status.code(), Some(1));
}

#[test]
fn tree_passes_and_leaves_no_process() {
    let program = baseline(env!("CARGO_BIN_EXE_tp-tree"), "tree", &[]);
    let pids = std::fs::read_to_string(program.companion(".pids")).expect("PATH.pids");
    let roles: Vec<&str> = pids.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(roles, ["parent", "child-A", "child-B", "grandchild"]);
    for line in pids.lines() {
        let pid: i32 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let gone = wait_gone(pid);
        assert!(gone, "{line} is still there after the check");
    }
}

/// Whether /proc/PID disappears within a few seconds (the grandchild is reaped by A, the
/// children by the parent, the parent by this test).
fn wait_gone(pid: i32) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    (0..3000).any(|_| {
        let gone = !proc_dir.exists() || status_is_other_process(&proc_dir);
        if !gone {
            std::thread::sleep(Duration::from_millis(1));
        }
        gone
    })
}

/// A recycled pid now belongs to some other program.
fn status_is_other_process(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("comm"))
        .map(|c| c.trim() != "tp-tree")
        .unwrap_or(true)
}

#[test]
fn looper_passes_and_counts() {
    let mut program = Running::start(
        env!("CARGO_BIN_EXE_tp-looper"),
        "looper",
        &["--interval-ms", "20"],
    );
    program.wait_ready();
    let out = program.path("stdout");
    let start = Instant::now();
    while std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .count()
        < 5
    {
        assert!(
            start.elapsed() < READY_TIMEOUT,
            "fewer than 5 lines within {READY_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    program.check_passes();
    let text = std::fs::read_to_string(&out).unwrap();
    let numbers: Vec<u64> = text
        .lines()
        .map(|l| l.parse().expect("a number per line"))
        .collect();
    assert!(numbers.len() >= 5);
    assert!(
        numbers.iter().enumerate().all(|(i, &n)| n == i as u64),
        "{numbers:?}"
    );
}

#[test]
fn bad_arguments_exit_2() {
    for bin in [
        env!("CARGO_BIN_EXE_tp-memhog"),
        env!("CARGO_BIN_EXE_tp-threads"),
        env!("CARGO_BIN_EXE_tp-fds"),
        env!("CARGO_BIN_EXE_tp-signals"),
        env!("CARGO_BIN_EXE_tp-tree"),
        env!("CARGO_BIN_EXE_tp-looper"),
    ] {
        let out = Command::new(bin)
            .arg("--no-such-option")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{bin}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage:"),
            "{bin}"
        );
    }
}

#[test]
fn unixghost_passes() {
    baseline(
        env!("CARGO_BIN_EXE_tp-unixghost"),
        "unixghost",
        &["--dir", "{dir}"],
    );
}

#[test]
fn unixghost_with_every_option_passes() {
    baseline(
        env!("CARGO_BIN_EXE_tp-unixghost"),
        "unixghost-all",
        &[
            "--dir",
            "{dir}",
            "--renamed",
            "yes",
            "--pending",
            "yes",
            "--inflight",
            "yes",
            "--closed-peer",
            "yes",
        ],
    );
}

/// A file left at a deleted name (as a restore that forgot to unlink it would) must
/// fail the check.
#[test]
fn unixghost_notices_a_file_at_a_deleted_name() {
    let mut program = Running::start(
        env!("CARGO_BIN_EXE_tp-unixghost"),
        "unixghost-left",
        &["--dir", "{dir}"],
    );
    program.wait_ready();
    std::fs::write(program.path("tp-unixghost.pair"), b"").unwrap();
    program.signal(libc::SIGUSR2);
    let (status, result) = program.wait_result();
    assert_eq!(status.code(), Some(1), "{result}");
    assert!(result.contains("left in the directory"), "{result}");
}

#[test]
fn locks_pass() {
    baseline(env!("CARGO_BIN_EXE_tp-locks"), "locks", &[]);
}

/// A flock released from outside (through a duplicate of the description, which owns it)
/// must show up in the lines and in the prober's findings.
#[test]
fn locks_notice_a_released_flock() {
    let mut program = Running::start(env!("CARGO_BIN_EXE_tp-locks"), "locks-released", &[]);
    program.wait_ready();
    let listing = std::fs::read_to_string(program.companion(".locks")).expect("PATH.locks");
    let fd: i32 = listing
        .lines()
        .find_map(|l| l.strip_prefix("data-flock "))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .expect("the data-flock line");
    // SAFETY: plain syscalls on our own child; the fds they return are ours to close.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, program.pid, 0) as i32;
        assert!(pidfd >= 0, "pidfd_open");
        let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        assert!(dup >= 0, "pidfd_getfd");
        assert_eq!(libc::flock(dup, libc::LOCK_UN), 0);
        libc::close(dup);
        libc::close(pidfd);
    }
    program.signal(libc::SIGUSR2);
    let (status, result) = program.wait_result();
    assert!(
        result.contains("the lock lines") && result.contains("data flock(LOCK_SH) by another"),
        "{result}"
    );
    assert_eq!(status.code(), Some(1));
}

#[test]
fn pidfd_passes() {
    baseline(env!("CARGO_BIN_EXE_tp-pidfd"), "pidfd", &[]);
}

#[test]
fn fsroot_procfile_and_deadcwd_pass() {
    let bin = env!("CARGO_BIN_EXE_tp-fsroot");
    baseline(bin, "fsroot-procfile", &["--mode", "procfile"]);
    baseline(bin, "fsroot-deadcwd", &["--mode", "deadcwd"]);
}
