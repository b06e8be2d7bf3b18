//! Progress bars (issue 15): `criu-rs dump`, `pre-dump` and `restore` draw one on stderr
//! when it is a terminal, and nothing with `--no-progress` (on the command line or in a
//! configuration file) or when stderr is not a terminal. The program dumped under the
//! bar restores intact.
//!
//! The bar shows after a second; `CRIU_RS_PROGRESS_AFTER_MS=0` shows it at once, so the
//! tests need no command that is slow on purpose. What a bar says first ("dumping") is
//! drawn as soon as it shows; the page phases' frames depend on how long the copy takes
//! and are not asserted.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use criu_rs_suite::{check_restored, DetachedTree, ScratchDir, TestProcess};
use nix::pty::{openpty, Winsize};

const SHOW_AFTER_ENV: &str = "CRIU_RS_PROGRESS_AFTER_MS";

/// Kills and reaps a criu-rs the test started, also when the test fails.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// Waits (bounded) for it to end.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().expect("waiting for criu-rs") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "criu-rs did not end in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn criu_rs<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_criu-rs"));
    cmd.args(args)
        .env(SHOW_AFTER_ENV, "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// Runs criu-rs with its stderr on a new pseudo-terminal (100 columns) and returns its
/// exit status and all it wrote there.
fn on_pty<S: AsRef<OsStr>>(args: &[S]) -> (ExitStatus, String) {
    let size = Winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).expect("openpty");
    let master = File::from(pty.master);
    let slave: OwnedFd = pty.slave;
    // The command (and with it our copy of the slave) is gone once spawned: when criu-rs
    // ends, nothing holds the slave and reading the master ends.
    let mut running = Running(
        criu_rs(args)
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("start criu-rs"),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut master = master;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once no process holds the slave any more.
        while let Ok(n @ 1..) = master.read(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(out);
    });
    let status = running.wait(Duration::from_secs(120));
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the terminal closed once criu-rs ended");
    (status, String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn a_terminal_shows_the_bar_and_the_program_restores_intact() {
    let scratch = ScratchDir::new("progress-tty");
    let mut tp = TestProcess::start(scratch.path(), "memhog", &["--mib", "256"]);
    let pid = tp.pid.to_string();
    let pre = scratch.path().join("pre");
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&pre).unwrap();
    std::fs::create_dir_all(&images).unwrap();

    let (status, out) = on_pty(&[
        "pre-dump",
        "--no-default-config",
        "-t",
        &pid,
        "-D",
        pre.to_str().unwrap(),
    ]);
    assert!(status.success(), "pre-dump: {out}");
    assert!(out.contains("pre-dumping"), "no bar: {out:?}");

    let (status, out) = on_pty(&[
        "dump",
        "--no-default-config",
        "-t",
        &pid,
        "-D",
        images.to_str().unwrap(),
    ]);
    assert!(status.success(), "dump: {out}");
    assert!(out.contains("dumping"), "no bar: {out:?}");
    // Cleared at the end: the last thing written erases the bar's line.
    assert!(out.ends_with("\x1b[2K"), "not cleared: {out:?}");
    println!("dump's terminal output: {out:?}");
    // Dumped and killed: reaped before its pid is taken again.
    let _ = tp.child.wait();

    let pidfile = scratch.path().join("restored.pid");
    let (status, out) = on_pty(&[
        "restore",
        "--no-default-config",
        "-d",
        "-D",
        images.to_str().unwrap(),
        "--pidfile",
        pidfile.to_str().unwrap(),
    ]);
    let _restored = DetachedTree(vec![tp.pid]);
    assert!(status.success(), "restore: {out}");
    assert!(out.contains("restoring"), "no bar: {out:?}");
    assert!(out.ends_with("\x1b[2K"), "not cleared: {out:?}");
    println!("restore's terminal output: {out:?}");
    assert_eq!(check_restored(tp.pid, &tp.ready_file), "pass");
}

#[test]
fn no_bar_with_no_progress_or_without_a_terminal() {
    let scratch = ScratchDir::new("progress-none");
    let mut tp = TestProcess::start(scratch.path(), "memhog", &["--mib", "64"]);
    let pid = tp.pid.to_string();
    let images = |name: &str| {
        let dir = scratch.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir.to_str().unwrap().to_owned()
    };
    let dump = |dir: &str, extra: &[&str]| -> Vec<String> {
        let mut args = vec!["dump", "-R", "-t", &pid, "-D", dir];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect()
    };

    // --no-progress on the command line.
    let args = dump(&images("flag"), &["--no-default-config", "--no-progress"]);
    let (status, out) = on_pty(&args);
    assert!(status.success(), "dump: {out}");
    assert_eq!(out, "", "drawn with --no-progress");

    // --no-progress in a configuration file (CRIU's form: the option without dashes).
    let config = scratch.path().join("criu.conf");
    std::fs::write(&config, "no-progress\n").unwrap();
    let config_arg = format!("--config={}", config.display());
    let args = dump(&images("config"), &[&config_arg]);
    let (status, out) = on_pty(&args);
    assert!(status.success(), "dump: {out}");
    assert_eq!(out, "", "drawn with no-progress in {}", config.display());

    // stderr not a terminal.
    let args = dump(&images("pipe"), &["--no-default-config"]);
    let mut running = Running(
        criu_rs(&args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start criu-rs"),
    );
    let mut stderr = running.0.stderr.take().expect("piped stderr");
    let status = running.wait(Duration::from_secs(120));
    let mut out = String::new();
    stderr.read_to_string(&mut out).unwrap();
    assert!(status.success(), "dump: {out}");
    assert_eq!(out, "", "drawn on a pipe");

    // Left running by each dump, and intact.
    assert_eq!(tp.check(), "pass");
}
