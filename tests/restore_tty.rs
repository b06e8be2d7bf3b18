//! Terminals (issue 12): a terminal server's ptys, the sessions on them and the data
//! queued both ways come back from a dump; what cannot come back is refused before
//! anything changes. tp-pty checks itself; crit decodes the images; CRIU 4.2, where it
//! runs, restores ours and we restore its; tmux and script(1) keep serving.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use criu_core::dump::{dump, DumpError, DumpOptions, Stage};
use criu_core::files::kinds::Kind;
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, clean_command, crit_decode, criu_4_or_skip, criu_dump, criu_restore,
    debian_crit, task_state, tracer_pid, wait_for_file, wait_until, Reaper, ScratchDir,
    TestProcess,
};

/// The tests here one at a time: each dumps ptys and restores them with their numbers,
/// which another test's new ptys would take meanwhile.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `PATH.pty` of a tp-pty run: `NAME VALUE` lines.
fn pty_info(tp: &TestProcess) -> Vec<(String, u32)> {
    let text = wait_for_file(
        &tp.ready_file.with_extension("ready.pty"),
        Duration::from_secs(5),
    )
    .expect("PATH.pty");
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn info(info: &[(String, u32)], key: &str) -> u32 {
    info.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .unwrap()
}

/// Waits (bounded) until none of `pids` exists any more, as pid, group or session
/// (the dumped tree was killed; pid 1 reaps it in its own time).
fn wait_gone(pids: &[u32]) {
    wait_until(
        "the dumped tree to be reaped",
        Duration::from_secs(10),
        || {
            pids.iter()
                .all(|p| !Path::new(&format!("/proc/{p}")).exists())
        },
    );
}

/// Every image the dump wrote decodes with Debian's crit; tty-info holds ptys (and
/// /dev/tty) and tty-data the queued bytes.
fn crit_reads(images: &Path, queued: bool) {
    let Some(crit) = debian_crit() else {
        return;
    };
    for e in std::fs::read_dir(images).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".img") || name.starts_with("pages-") {
            continue;
        }
        let doc = crit_decode(&crit, &e.path()).unwrap_or_else(|err| panic!("{name}: {err}"));
        if name == "tty-info.img" {
            let entries = doc["entries"].as_array().unwrap();
            // The ptys, and the /dev/tty the job holds.
            assert!(
                entries
                    .iter()
                    .all(|e| e["type"] == "PTY" || (e["type"] == "CTTY" && e["id"] == 2012)),
                "{doc}"
            );
            assert!(
                entries.iter().any(|e| e["sid"].as_u64() != Some(0)),
                "{doc}"
            );
        }
        if name == "tty-data.img" {
            assert!(queued, "data queued where none was: {doc}");
            assert_eq!(doc["entries"].as_array().unwrap().len(), 4, "{doc}");
        }
    }
    assert_eq!(images.join("tty-data.img").exists(), queued);
}

/// tp-pty dumped (killing it) and restored by us; it checks itself.
fn round_trip(args: &[&str]) {
    let scratch = ScratchDir::new(&format!("tty-{}", args.join("-")));
    let mut tp = TestProcess::start(scratch.path(), "pty", args);
    let before = pty_info(&tp);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    wait_gone(&[tp.pid as u32, info(&before, "leader"), info(&before, "job")]);
    crit_reads(&images, !args.contains(&"--queued"));
    let restored = restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("{e}"));
    let _reaper = Reaper(restored.pid.0);
    // The session's processes have pty A as their terminal, by its old name.
    let a = info(&before, "a");
    for who in ["leader", "job"] {
        let pid = info(&before, who);
        let link = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
        assert_eq!(link, Path::new(&format!("/dev/pts/{a}")), "{who}");
    }
    assert_eq!(check_restored(restored.pid.0, &tp.ready_file), "pass");
}

#[test]
fn a_terminal_server_comes_back_with_its_ptys_sessions_and_queues() {
    let _serial = serial();
    round_trip(&[]);
}

#[test]
fn a_pty_in_packet_mode_comes_back_in_packet_mode() {
    let _serial = serial();
    round_trip(&["--packet", "yes"]);
}

/// The queues are read out by the dump; a tree that runs on gets them back, and so does
/// one whose dump failed after reading them.
#[test]
fn a_tree_that_runs_on_gets_its_queued_data_back() {
    let _serial = serial();
    for (what, leave_running, fail_after) in [
        ("leave-running", true, None),
        ("failed", false, Some(Stage::Images)),
    ] {
        let scratch = ScratchDir::new(&format!("tty-{what}"));
        let mut tp = TestProcess::start(scratch.path(), "pty", &[]);
        let images = scratch.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let opts = DumpOptions {
            leave_running,
            fail_after,
            ..DumpOptions::new(Pid(tp.pid), &images)
        };
        let result = dump(&opts);
        match fail_after {
            Some(_) => assert!(matches!(result, Err(DumpError::Injected(_))), "{result:?}"),
            None => {
                result.unwrap();
                assert!(images.join("tty-data.img").exists());
            }
        }
        assert_eq!(tracer_pid(tp.pid), Some(0), "{what}: still traced");
        assert_eq!(tp.check(), "pass", "{what}");
    }
}

/// Opens `/dev/pts/N` with O_NOCTTY for a child to hold.
fn open_slave(index: u32) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(format!("/dev/pts/{index}"))
        .unwrap()
}

/// A child of ours (outside the tree) that holds `file` as its stdin.
struct Holder(std::process::Child);

impl Holder {
    fn new(file: std::fs::File) -> Holder {
        Holder(
            clean_command("sleep")
                .arg("1000")
                .stdin(Stdio::from(file))
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pty whose slave a process outside the tree holds would leave that process with
/// the old pty: refused at dump, naming it, with the tree untouched.
#[test]
fn a_pty_also_held_outside_the_tree_is_refused_and_left_running() {
    let _serial = serial();
    let scratch = ScratchDir::new("tty-held-outside");
    let mut tp = TestProcess::start(scratch.path(), "pty", &[]);
    let a = info(&pty_info(&tp), "a");
    let outside = Holder::new(open_slave(a));
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let err = dump(&DumpOptions::new(Pid(tp.pid), &images)).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("task {} fd", tp.pid))
            && msg.contains(Kind::PtyMaster.name())
            && msg.contains(&format!("process {}", outside.0.id()))
            && msg.contains("outside the tree"),
        "{msg}"
    );
    assert!(matches!(task_state(tp.pid), Some('S') | Some('R')));
    assert_eq!(tracer_pid(tp.pid), Some(0));
    drop(outside);
    // Untouched: its queues and sessions are as they were.
    assert_eq!(tp.check(), "pass");
}

/// A pty number taken on this system when the restore runs: the restore fails naming it
/// (and who holds it) before any task exists; once it is free, the restore works.
#[test]
fn a_taken_pty_number_fails_the_restore_before_any_task_exists() {
    let _serial = serial();
    let scratch = ScratchDir::new("tty-number-taken");
    let mut tp = TestProcess::start(scratch.path(), "pty", &[]);
    let before = pty_info(&tp);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap();
    let _ = tp.child.wait();
    let pids = [tp.pid as u32, info(&before, "leader"), info(&before, "job")];
    wait_gone(&pids);
    // Take pty B's number (others may come and go: take it when it is free).
    let b = info(&before, "b");
    let mut taker = None;
    wait_until("pty B's number to be free", Duration::from_secs(10), || {
        let mut held = Vec::new();
        loop {
            let m = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/ptmx")
                .unwrap();
            let mut n: libc::c_int = 0;
            // SAFETY: TIOCGPTN writes one int.
            unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCGPTN, &mut n) };
            match (n as u32).cmp(&b) {
                std::cmp::Ordering::Less => held.push(m),
                std::cmp::Ordering::Equal => {
                    taker = Some(Holder::new(m));
                    return true;
                }
                std::cmp::Ordering::Greater => return false,
            }
        }
    });
    let taker = taker.unwrap();
    let opts = RestoreOptions {
        pid_wait: Duration::from_millis(300),
        ..RestoreOptions::new(&images)
    };
    let err = restore(&opts).expect_err("the number is taken");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("pty {b} (/dev/pts/{b})"))
            && msg.contains("taken")
            && msg.contains(&format!("process {}", taker.0.id())),
        "{msg}"
    );
    for p in pids {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "{p} left behind"
        );
    }
    drop(taker);
    let restored = restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("{e}"));
    let _reaper = Reaper(restored.pid.0);
    assert_eq!(check_restored(restored.pid.0, &tp.ready_file), "pass");
}

/// CRIU 4.2 restores our dump of tp-pty and we restore its. Without queued data: CRIU
/// writes queued bytes back through the line discipline (echoed and translated again)
/// and reads only whole lines; CRIU gives the controlling terminal to the session
/// leader alone, so the job is not asked about its own; and without the job's
/// /dev/tty, which CRIU's dump refuses when the foreground group is not the session
/// leader's ("ctty inheritance detected") and its restore cannot open in a task that
/// is not the leader.
#[test]
fn criu_4_2_and_we_restore_each_others_ptys() {
    let _serial = serial();
    let Some(criu) = criu_4_or_skip("the pty exchange with CRIU") else {
        return;
    };
    // Ours, restored by CRIU.
    let scratch = ScratchDir::new("tty-criu-restores");
    let mut tp = TestProcess::start(
        scratch.path(),
        "pty",
        &["--queued", "no", "--session-ctty", "no", "--dev-tty", "no"],
    );
    let before = pty_info(&tp);
    let pids = vec![tp.pid as u32, info(&before, "leader"), info(&before, "job")];
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap();
    let _ = tp.child.wait();
    wait_gone(&pids);
    let _restored = criu_restore(
        &criu,
        &images,
        &[],
        pids.iter().map(|&p| p as i32).collect(),
    );
    assert_eq!(tp.check(), "pass", "ours restored by CRIU");
    drop(_restored);

    // CRIU's, restored by us (the job gets its terminal from us, so it is asked).
    let scratch = ScratchDir::new("tty-we-restore-criu");
    let mut tp = TestProcess::start(
        scratch.path(),
        "pty",
        &["--queued", "no", "--dev-tty", "no"],
    );
    let before = pty_info(&tp);
    let pids = vec![tp.pid as u32, info(&before, "leader"), info(&before, "job")];
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    criu_dump(&criu, tp.pid, &images, &[]);
    let _ = tp.child.wait();
    wait_gone(&pids);
    let restored = restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("{e}"));
    let _reaper = Reaper(restored.pid.0);
    assert_eq!(check_restored(restored.pid.0, &tp.ready_file), "pass");
}

/// A tmux server, its socket and one session in `dir`; killed when dropped.
struct Tmux {
    socket: std::path::PathBuf,
    server: Option<i32>,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        clean_command("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .env("TERM", "xterm")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn out(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The numbers the pane's loop printed so far.
    fn ticks(&self) -> Vec<u64> {
        self.out(&["capture-pane", "-p", "-S", "-1000"])
            .lines()
            .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
            .collect()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
        if let Some(pid) = self.server {
            // SAFETY: kill(2) on the server this test started or restored.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A real terminal multiplexer: a tmux server with a session whose pane runs a shell
/// loop, dumped and restored; the pane goes on counting where it was, on the same pty,
/// and tmux's clients work with it (capture-pane, send-keys reaching the shell).
#[test]
fn a_tmux_server_and_its_pane_go_on() {
    let _serial = serial();
    if !have("tmux") {
        assert!(
            std::env::var_os("CRIU_RS_REQUIRE_SERVERS").is_none(),
            "tmux is not installed"
        );
        eprintln!("skipped: tmux is not installed (apt-get install tmux)");
        return;
    }
    let scratch = ScratchDir::new("tty-tmux");
    let mut tmux = Tmux {
        socket: scratch.path().join("tmux.sock"),
        server: None,
    };
    // The pane: counts, and answers what it reads.
    let pane = "i=0; while :; do if read -t 0.2 l; then echo \"got $l\"; fi; \
                echo \"tick $i\"; i=$((i+1)); done";
    tmux.out(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-x",
        "100",
        "-y",
        "30",
        "bash",
        "-c",
        pane,
    ]);
    let server: i32 = tmux
        .out(&["display", "-p", "#{pid}"])
        .trim()
        .parse()
        .unwrap();
    tmux.server = Some(server);
    let pane_pid: i32 = tmux
        .out(&["display", "-p", "#{pane_pid}"])
        .trim()
        .parse()
        .unwrap();
    let pane_tty = tmux
        .out(&["display", "-p", "#{pane_tty}"])
        .trim()
        .to_owned();
    wait_until("the pane to count", Duration::from_secs(10), || {
        tmux.ticks().len() >= 3
    });
    // (Read while it runs: it counts on a little before the dump stops it.)
    let last = *tmux.ticks().last().unwrap();
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(server), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    wait_gone(&[server as u32, pane_pid as u32]);
    crit_reads_tmux(&images);
    let restored = restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("{e}"));
    let _reaper = Reaper(restored.pid.0);
    assert_eq!(restored.pid.0, server);
    // The pane goes on from where it was, on the same pty.
    wait_until("the pane to count on", Duration::from_secs(10), || {
        tmux.ticks().last().is_some_and(|&t| t > last + 3)
    });
    let ticks = tmux.ticks();
    for w in ticks.windows(2) {
        assert_eq!(w[1], w[0] + 1, "the count jumped: {ticks:?}");
    }
    assert_eq!(tmux.out(&["display", "-p", "#{pane_tty}"]).trim(), pane_tty);
    assert_eq!(
        std::fs::read_link(format!("/proc/{pane_pid}/fd/0")).unwrap(),
        Path::new(&pane_tty)
    );
    // Keys typed by a client reach the shell through the restored pty.
    tmux.out(&["send-keys", "hello-after-restore", "Enter"]);
    wait_until("the pane to answer", Duration::from_secs(10), || {
        tmux.out(&["capture-pane", "-p", "-S", "-1000"])
            .contains("got hello-after-restore")
    });
}

fn crit_reads_tmux(images: &Path) {
    let Some(crit) = debian_crit() else {
        return;
    };
    for name in ["tty-info.img", "files.img", "pstree.img"] {
        crit_decode(&crit, &images.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// script(1): the master in script, its child's shell loop on the slave, the log file
/// written as the loop goes; script's own input ended (so an EOF is queued for the
/// child); dumped and restored, the loop goes on in the log.
#[test]
fn a_script_session_goes_on() {
    let _serial = serial();
    let scratch = ScratchDir::new("tty-script");
    let log = scratch.path().join("typescript");
    let script = TestProcess::spawn(
        &[
            "script",
            "-qfc",
            "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done",
            log.to_str().unwrap(),
        ],
        &scratch.path().join("out"),
    );
    let ticks = || -> Vec<u64> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("tick ")?.parse().ok())
            .collect()
    };
    wait_until("script's loop to count", Duration::from_secs(10), || {
        ticks().len() >= 3
    });
    let mut tree = vec![script.pid as u32];
    let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", script.pid))
        .unwrap_or_default();
    tree.extend(
        kids.split_whitespace()
            .filter_map(|k| k.parse::<u32>().ok()),
    );
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(script.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let at_dump = ticks().len();
    let mut script = script;
    let _ = script.child.wait();
    wait_gone(&tree);
    let restored = restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("{e}"));
    let _reaper = Reaper(restored.pid.0);
    wait_until(
        "the loop to go on in the log",
        Duration::from_secs(10),
        || ticks().len() > at_dump + 3,
    );
    let t = ticks();
    for w in t.windows(2) {
        assert_eq!(w[1], w[0] + 1, "the count jumped: {t:?}");
    }
}
