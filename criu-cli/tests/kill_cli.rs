//! Stopping `criu-rs dump` or `criu-rs restore` at any moment never loses the program
//! (issue 10, "Stopping the dumper kills the target").
//!
//! A self-checking program with 256 MiB is dumped (default mode, where the dump releases
//! saved memory as it goes, and `-R`), and the dumper is sent SIGTERM, SIGINT, SIGHUP,
//! SIGQUIT or SIGKILL at known moments: paused after a stage (the dumper's test hook
//! `CRIU_RS_TEST_PAUSE_AFTER`), right after a batch of memory was released, or after a
//! delay. Afterwards the program must run, untraced and not stopped, and pass its
//! word-by-word check. Then the restorer is stopped or killed at moments of its own:
//! either nothing of the tree is left, or the tree is complete and passes its check, and
//! the image directory is unchanged.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criu_rs_suite::{task_state, tracer_pid, wait_for_file, ScratchDir, TestProcess};

const MIB: &str = "256";

/// The tests of this file run one at a time: each kills dumpers and restorers at
/// moments measured in microseconds, and runs alongside each other (several 256 MiB
/// programs, 60-process trees, restores) made those moments drift. In such parallel runs
/// a program killed with its dumper at the pages or images stage was seen to die of a
/// SIGSEGV (3 runs in about 15); the cause is not found yet (see the issue notes).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// When the signal is sent.
#[derive(Debug, Clone, Copy)]
enum At {
    /// The dumper paused after this stage (its test hook).
    Pause(&'static str),
    /// This many ms after the first log line holding this text.
    Log(&'static str, u64),
}

fn criu_rs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_criu-rs"))
}

/// Waits (bounded) until the log file holds `text`; `false` if `child` ended first.
fn wait_for_log(log: &Path, text: &str, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::fs::read_to_string(log).is_ok_and(|l| l.contains(text)) {
            return true;
        }
        if child.try_wait().ok().flatten().is_some() {
            return std::fs::read_to_string(log).is_ok_and(|l| l.contains(text));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Sends `sig` to `child` at `at` (its log is `log`), waits for it (bounded) and
/// returns its exit status and stderr.
fn stop_at(
    mut child: Child,
    log: &Path,
    at: At,
    sig: i32,
) -> (std::process::ExitStatus, String, bool) {
    let text = match at {
        At::Pause(_) => "pausing on request of the test hook",
        At::Log(text, _) => text,
    };
    let reached = wait_for_log(log, text, &mut child);
    if let At::Log(_, ms) = at {
        std::thread::sleep(Duration::from_millis(ms));
    }
    // SAFETY: kill(2) on our own child (not reaped yet, so the pid is still its).
    unsafe { libc::kill(child.id() as i32, sig) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for criu-rs") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("criu-rs did not end within 60 s of {sig}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    (status, stderr, reached)
}

/// Waits (bounded) until `pid` runs on its own: untraced, not stopped. Returns its state
/// and tracer as last seen.
fn settle_running(pid: i32) -> (Option<char>, Option<i32>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (state, tracer) = (task_state(pid), tracer_pid(pid));
        let settled = tracer == Some(0) && matches!(state, Some('S' | 'R' | 'D'));
        if settled || Instant::now() > deadline {
            return (state, tracer);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How `pid`'s state, tracer and pending signals change during `time` (with the time
/// each change was seen), and when it was first seen running on its own: a program that
/// dies after its dumper was killed shows whether it was held stopped while its memory
/// was put back.
fn state_changes(pid: i32, time: Duration) -> (Vec<String>, Option<Duration>) {
    let start = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    let mut running_after = None;
    while start.elapsed() < time {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let now: Vec<&str> = status
            .lines()
            .filter(|l| {
                ["State", "TracerPid", "SigPnd", "ShdPnd"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .collect();
        let now = now.join(" ").replace('\t', " ");
        let on_its_own = now.contains("TracerPid: 0")
            && ["(sleeping)", "(running)", "(disk sleep)"]
                .iter()
                .any(|s| now.contains(s));
        if on_its_own && running_after.is_none() {
            running_after = Some(start.elapsed());
        }
        if seen.last().is_none_or(|last| !last.ends_with(&now)) {
            seen.push(format!("{:?} {now}", start.elapsed()));
        }
    }
    (seen, running_after)
}

/// Whether the dump's log ends inside a kill-if-dumper-dies window (its last window
/// line says "opened").
fn in_kill_window(log: &Path) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| l.contains("kill-if-dumper-dies window"))
        .is_some_and(|l| l.contains("window opened"))
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGKILL => "SIGKILL",
        _ => "?",
    }
}

/// What a catchable signal must make of criu-rs: a failure naming the signal.
fn assert_reported(what: &str, sig: i32, status: std::process::ExitStatus, stderr: &str) {
    use std::os::unix::process::ExitStatusExt;
    if sig == libc::SIGKILL {
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{what}: {stderr}");
        return;
    }
    assert_eq!(status.code(), Some(1), "{what}: {status:?} {stderr}");
    assert!(
        stderr.contains(&format!("interrupted by {}", signal_name(sig))),
        "{what}: {stderr}"
    );
}

/// One dump stopped at `at` with `sig`; the program must come out intact.
fn dump_and_stop(scratch: &Path, extra: &[&str], at: At, sig: i32) {
    dump_and_stop_program(scratch, ("memhog", &["--mib", MIB]), extra, at, sig);
}

/// The same for test program `tp-NAME ARGS`.
fn dump_and_stop_program(
    scratch: &Path,
    (name, args): (&str, &[&str]),
    extra: &[&str],
    at: At,
    sig: i32,
) {
    let what = format!(
        "dump {extra:?} of tp-{name} {args:?} stopped with {} at {at:?}",
        signal_name(sig)
    );
    let mut tp = TestProcess::start(scratch, name, args);
    let images = scratch.join("images");
    let _ = std::fs::remove_dir_all(&images);
    std::fs::create_dir(&images).unwrap();
    let log = images.join("dump.log");
    let mut cmd = criu_rs();
    cmd.args(["dump", "-t", &tp.pid.to_string(), "-D"])
        .arg(&images)
        .args(["-v4", "-o", "dump.log"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let At::Pause(stage) = at {
        cmd.env("CRIU_RS_TEST_PAUSE_AFTER", stage);
    }
    let started = Instant::now();
    let child = cmd.spawn().expect("start criu-rs dump");
    let (status, stderr, reached) = stop_at(child, &log, at, sig);
    assert!(reached, "{what}: the dump never got there: {stderr}");
    let took = started.elapsed();
    // A signal that comes once the engine is done has its usual effect (signals.rs):
    // after a dump that finished, that is the end of the dump too.
    let after_the_end = {
        use std::os::unix::process::ExitStatusExt;
        status.signal() == Some(sig)
            && std::fs::read_to_string(&log).is_ok_and(|l| l.contains("dump finished"))
    };
    if (status.success() || after_the_end) && matches!(at, At::Log(_, ms) if ms > 0) {
        // A fast machine finished the dump within the delay: the program was killed
        // as a dump without -R does. The moment was after the end, not a failure.
        assert!(
            !extra.contains(&"-R") || task_state(tp.pid).is_some(),
            "{what}"
        );
        eprintln!("{what}: the dump ended before the signal ({took:?}): moment skipped");
        return;
    }
    assert_reported(&what, sig, status, &stderr);
    let ended = Instant::now();
    if sig == libc::SIGKILL && in_kill_window(&log) {
        // Killed inside one of the documented windows where a dying dumper takes the
        // thread along (mapping or unmapping injected code): gone, never running on
        // with foreign code or registers. (The window is logged before it opens: a
        // dumper killed in between leaves the program running, checked below.)
        let gone = || matches!(task_state(tp.pid), None | Some('Z' | 'X'));
        criu_rs_suite::wait_until(&what, Duration::from_secs(10), || {
            gone()
                || (tracer_pid(tp.pid) == Some(0)
                    && matches!(task_state(tp.pid), Some('S' | 'R' | 'D')))
        });
        // A task killed by its dying tracer is untraced too while it exits (freeing
        // 256 MiB takes a moment): only one that is still there after that is taken
        // for running on.
        let exiting_until = Instant::now() + Duration::from_secs(2);
        while !gone() && Instant::now() < exiting_until {
            std::thread::sleep(Duration::from_millis(10));
        }
        if gone() {
            eprintln!(
                "{what}: killed inside a kill-if-dumper-dies window: the program went with it"
            );
            return;
        }
    }
    let (states, running_after) = state_changes(tp.pid, Duration::from_millis(200));
    let (state, tracer) = settle_running(tp.pid);
    // When it was first seen running on its own (the sampling above takes 200 ms).
    let settled = running_after.unwrap_or_else(|| ended.elapsed());
    assert_eq!(tracer, Some(0), "{what}: still traced (state {state:?})");
    assert!(
        matches!(state, Some('S' | 'R' | 'D')),
        "{what}: the program is not running: state {state:?}"
    );
    let verdict = tp.check();
    let released = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("memory released")
        .count();
    eprintln!(
        "{what}: criu-rs ended after {took:?} ({released} release batches), program \
         running again {settled:?} later, {verdict}"
    );
    if verdict != "pass" {
        let status = tp.child.try_wait();
        let out = std::fs::read_to_string(scratch.join(format!("{name}.out"))).unwrap_or_default();
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "{what}: {verdict}; program {status:?}, state {:?}; its states after the \
             dumper ended: {}; its output: {out}\n\
             the dump's log, last lines first:\n{}",
            task_state(tp.pid),
            states.join(" | "),
            tail.join("\n")
        );
    }
}

#[test]
fn stopping_or_killing_the_dumper_leaves_the_program_intact() {
    let _serial = one_at_a_time();
    let scratch = ScratchDir::new("kill-dumper");
    let (term, int, kill) = (libc::SIGTERM, libc::SIGINT, libc::SIGKILL);
    // Default mode, memory released as it is saved from the first page batch on (by
    // default only where the machine is short of memory or slow to back it).
    let release = ["--release-memory", "always"];
    let default_points: &[(At, &[i32])] = &[
        (At::Pause("Freeze"), &[kill, term]),
        // Inside the tasks stage, the first thread's injected calls set up: killed, the
        // thread returns into its own context by itself (see inject.rs).
        (At::Pause("Injected"), &[kill, kill, term]),
        (At::Log("stage done stage=Memory", 0), &[kill, kill]),
        (At::Pause("Tasks"), &[kill, int]),
        (At::Log("memory released", 0), &[kill, term]),
        (At::Log("memory released", 40), &[kill, kill, int]),
        (At::Log("memory released", 120), &[kill, term]),
        (At::Pause("Pages"), &[kill, libc::SIGHUP]),
        (At::Pause("Images"), &[kill, libc::SIGQUIT]),
    ];
    for (at, signals) in default_points {
        for &sig in *signals {
            dump_and_stop(scratch.path(), &release, *at, sig);
        }
    }
    // Default options (memory released only where it pays): stopped while the pages
    // are copied, before any release.
    let copying: &[(At, &[i32])] = &[
        (At::Log("stage done stage=Tasks", 0), &[kill, term]),
        (At::Log("stage done stage=Tasks", 30), &[kill, kill, term]),
    ];
    for (at, signals) in copying {
        for &sig in *signals {
            dump_and_stop(scratch.path(), &[], *at, sig);
        }
    }
    let running_points: &[(At, &[i32])] = &[
        (At::Pause("Injected"), &[kill]),
        (At::Pause("Tasks"), &[kill]),
        (At::Log("stage done stage=Tasks", 30), &[kill, term]),
        (At::Pause("Images"), &[kill, int]),
    ];
    for (at, signals) in running_points {
        for &sig in *signals {
            dump_and_stop(scratch.path(), &["-R"], *at, sig);
        }
    }
}

#[test]
fn killing_the_dumper_while_it_injects_leaves_every_thread_intact() {
    let _serial = one_at_a_time();
    // Threads with their own signal masks, thread-local values and stacks; a program whose
    // timer fires every 300 us (its handler checks memory). Killed while the injected
    // calls are set up, or at once after the memory stage (somewhere in the injection).
    let scratch = ScratchDir::new("kill-dumper-injecting");
    let kill = libc::SIGKILL;
    let programs: [(&str, &[&str]); 2] = [
        ("threads", &["--threads", "4"]),
        ("memhog", &["--mib", "64", "--ticker-us", "300"]),
    ];
    for program in programs {
        for at in [At::Pause("Injected"), At::Log("stage done stage=Memory", 0)] {
            dump_and_stop_program(scratch.path(), program, &[], at, kill);
            dump_and_stop_program(scratch.path(), program, &["-R"], at, kill);
        }
    }
    // The threads after the first share its self-restoring area (inject.rs): killed
    // once one of them runs its calls from it.
    let at = At::Log("calls from the shared injection area", 0);
    for _ in 0..3 {
        dump_and_stop_program(scratch.path(), programs[0], &[], at, kill);
    }
}

/// Every file of the image directory with its contents (stats-restore, which a restore
/// that completes writes there as CRIU's does, left out).
fn image_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "stats-restore")
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// Whether `pid` is (still) a task of this test: the test program (its ready file is in
/// `dir`) or a copy of the restorer (its image directory is).
fn holds(pid: i32, dir: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let dir = dir.as_os_str().as_encoded_bytes();
    cmdline.windows(dir.len()).any(|w| w == dir)
}

/// Waits (bounded) until no task of ours holds `pid` (reaped, or another task's now).
fn wait_pid_free(pid: i32, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}")).exists() && holds(pid, dir) {
        assert!(Instant::now() < deadline, "pid {pid} still in use");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The restored program's verdict (it is not our child: criu-rs was its parent).
fn check_restored(ready: &Path, pid: i32) -> String {
    let result = ready.with_extension("ready.result");
    let _ = std::fs::remove_file(&result);
    // SAFETY: kill(2) on the restored program, which the test owns.
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    wait_for_file(&result, Duration::from_secs(20)).unwrap_or_else(|| "fail: no result".into())
}

#[test]
fn stopping_or_killing_the_restorer_leaves_nothing_half_restored() {
    let _serial = one_at_a_time();
    let scratch = ScratchDir::new("kill-restorer");
    let dir = scratch.path();
    let images = dir.join("images");
    let work = dir.join("work");
    std::fs::create_dir(&images).unwrap();
    std::fs::create_dir(&work).unwrap();
    let tp = TestProcess::start(dir, "memhog", &["--mib", MIB]);
    let pid = tp.pid;
    let ready = tp.ready_file.clone();
    let out = criu_rs()
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(&images)
        .output()
        .expect("run criu-rs dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(tp);
    wait_pid_free(pid, dir);
    let before = image_files(&images);
    let (term, kill) = (libc::SIGTERM, libc::SIGKILL);
    let points: &[(At, i32)] = &[
        (At::Log("restore starts", 0), kill),
        (At::Log("tree forked", 0), kill),
        (At::Log("tree forked", 0), term),
        (At::Log("tree forked", 60), kill),
        (At::Log("pages filled", 0), kill),
        (At::Log("pages filled", 0), libc::SIGINT),
        (At::Log("before stage 8", 0), kill),
        (At::Log("restore committed", 0), kill),
    ];
    for &(at, sig) in points {
        let what = format!("restore stopped with {} at {at:?}", signal_name(sig));
        let log = work.join("restore.log");
        let _ = std::fs::remove_file(&log);
        let child = criu_rs()
            .args(["restore", "-d", "-D"])
            .arg(&images)
            .arg("-W")
            .arg(&work)
            .args(["-v4", "-o", "restore.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start criu-rs restore");
        let (status, stderr, reached) = stop_at(child, &log, at, sig);
        assert!(reached, "{what}: the restore never got there: {stderr}");
        let committed = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("restore committed");
        // Settled: either gone (or a zombie on its way out), or running on its own. (A
        // task that got the pid after ours was gone is not ours: pids wrap here.)
        let deadline = Instant::now() + Duration::from_secs(10);
        let outcome = loop {
            let state = task_state(pid);
            if matches!(state, None | Some('Z' | 'X')) || !holds(pid, dir) {
                break "nothing left".to_owned();
            }
            let on_its_own = |pid| {
                tracer_pid(pid) == Some(0) && matches!(task_state(pid), Some('S' | 'R' | 'D'))
            };
            // A task killed by its dying tracer is untraced too while it exits (freeing
            // 256 MiB takes a moment): only one that stays is taken for restored.
            if on_its_own(pid) && {
                std::thread::sleep(Duration::from_millis(300));
                on_its_own(pid)
            } {
                let verdict = check_restored(&ready, pid);
                // SAFETY: kill(2) on the restored program, which the test owns.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                break format!("restored whole, program {verdict}");
            }
            assert!(
                Instant::now() < deadline,
                "{what}: pid {pid} neither gone nor running: {state:?}, tracer {:?}",
                tracer_pid(pid)
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        eprintln!("{what}: {status:?}, {outcome}, committed: {committed}");
        if outcome == "nothing left" {
            assert!(
                !committed || sig == kill,
                "{what}: a committed restore was undone"
            );
            if !committed {
                assert_reported(&what, sig, status, &stderr);
            }
        } else {
            // (Killed between the commit and its log line, the tree runs, rightly.)
            assert_eq!(outcome, "restored whole, program pass", "{what}");
        }
        wait_pid_free(pid, dir);
        assert!(
            image_files(&images) == before,
            "{what}: the image directory changed"
        );
    }
}

/// A v2 cgroup made for one test, removed (once its tasks are gone) on drop.
struct TestCgroup(std::path::PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn killing_the_dumper_never_leaves_the_cgroup_frozen() {
    let _serial = one_at_a_time();
    let root = Path::new("/sys/fs/cgroup/unified");
    let cg = TestCgroup(root.join(format!("criu-rs-test-kill-{}", std::process::id())));
    if let Err(e) = std::fs::create_dir(&cg.0) {
        eprintln!("skipping: cannot create cgroup {}: {e}", cg.0.display());
        return;
    }
    let scratch = ScratchDir::new("kill-dumper-cgroup");
    // Enough processes that seizing them all, with the cgroup frozen, takes a while.
    for delay_ms in [0, 1, 2, 4] {
        let tp = TestProcess::spawn(
            &[
                "/bin/sh",
                "-c",
                "for i in $(seq 60); do sleep 1000 & done; wait",
            ],
            &scratch.path().join("sh.out"),
        );
        let children = || {
            std::fs::read_to_string(format!("/proc/{}/task/{}/children", tp.pid, tp.pid))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .collect::<Vec<_>>()
        };
        criu_rs_suite::wait_until("60 children", Duration::from_secs(20), || {
            children().len() == 60
        });
        let tree: Vec<i32> = std::iter::once(tp.pid).chain(children()).collect();
        for pid in &tree {
            std::fs::write(cg.0.join("cgroup.procs"), pid.to_string()).unwrap();
        }
        let images = scratch.path().join("images");
        let _ = std::fs::remove_dir_all(&images);
        std::fs::create_dir(&images).unwrap();
        let child = criu_rs()
            .args(["dump", "-R", "-t", &tp.pid.to_string(), "-D"])
            .arg(&images)
            .arg("--freeze-cgroup")
            .arg(&cg.0)
            .args(["-v4", "-o", "dump.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start criu-rs dump");
        let at = At::Log("stage done stage=Check", delay_ms);
        let (_, stderr, reached) = stop_at(child, &images.join("dump.log"), at, libc::SIGKILL);
        assert!(reached, "the dump never got to its freeze: {stderr}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = std::fs::read_to_string(cg.0.join("cgroup.events")).unwrap();
            let running = tree
                .iter()
                .all(|&p| tracer_pid(p) == Some(0) && task_state(p) == Some('S'));
            if events.contains("frozen 0") && running {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "killed {delay_ms} ms after its checks, the dumper left the cgroup {events:?} \
                 or a task traced or stopped"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = std::fs::read_to_string(images.join("dump.log")).unwrap_or_default();
        eprintln!(
            "killed {delay_ms} ms after the checks, {}: cgroup thawed, tree running",
            if log.contains("tree frozen") {
                "after the freeze"
            } else {
                "while freezing"
            }
        );
        drop(tp);
    }
}
