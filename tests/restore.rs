//! The restore engine on images our dump wrote: the restored program checks itself.

use std::path::Path;
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, dump_kill_restore, numbers, task_state, wait_for_file, wait_until, Reaper,
    ScratchDir, TestProcess,
};

#[test]
fn memhog_restores_1_gib_with_its_memory() {
    let scratch = ScratchDir::new("restore-memhog");
    let mut tp = TestProcess::start(scratch.path(), "memhog", &["--mib", "1024"]);
    let ready = tp.ready_file.clone();
    let reaper = dump_kill_restore(&mut tp, &scratch.path().join("images"));
    wait_until("running", Duration::from_secs(10), || {
        matches!(task_state(reaper.0), Some('S') | Some('R'))
    });
    assert_eq!(check_restored(reaper.0, &ready), "pass");
}

#[test]
fn looper_counts_on_in_the_same_file() {
    let scratch = ScratchDir::new("restore-looper");
    let mut tp = TestProcess::start(scratch.path(), "looper", &["--interval-ms", "50"]);
    let out = scratch.path().join("looper.out");
    wait_until("some output", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.lines().count() > 3)
    });
    let reaper = dump_kill_restore(&mut tp, &scratch.path().join("images"));
    let before = std::fs::read_to_string(&out).unwrap().lines().count();
    wait_until("more output", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).unwrap().lines().count() > before + 3
    });
    let text = std::fs::read_to_string(&out).unwrap();
    let numbers: Vec<u64> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(
            *n, i as u64,
            "the count goes on without reset or gap: {numbers:?}"
        );
    }
    drop(reaper);
}

#[test]
fn shell_loop_restores_mid_count_and_counts_on() {
    let scratch = ScratchDir::new("restore-shell-loop");
    let out = scratch.path().join("loop.out");
    let mut sh = TestProcess::spawn(
        &[
            "/bin/sh",
            "-c",
            "i=0; while true; do echo $i; i=$(expr $i + 1); sleep 0.2; done",
        ],
        &out,
    );
    wait_until("counting", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.lines().count() >= 3)
    });
    wait_until("the sleep child", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", sh.pid, sh.pid))
            .is_ok_and(|c| !c.trim().is_empty())
    });
    let reaper = dump_kill_restore(&mut sh, &scratch.path().join("images"));
    let before = std::fs::read_to_string(&out).unwrap().lines().count();
    wait_until("more numbers", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).unwrap().lines().count() >= before + 3
    });
    let numbers: Vec<u64> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(*n, i as u64, "numbers carry on with no reset: {numbers:?}");
    }
    drop(reaper);
}

#[test]
fn threads_restore_with_their_own_state() {
    let scratch = ScratchDir::new("restore-threads");
    let mut tp = TestProcess::start(scratch.path(), "threads", &["--threads", "4"]);
    let ready = tp.ready_file.clone();
    let reaper = dump_kill_restore(&mut tp, &scratch.path().join("images"));
    let tasks = std::fs::read_dir(format!("/proc/{}/task", reaper.0))
        .unwrap()
        .count();
    assert_eq!(tasks, 5, "all threads back");
    assert_eq!(check_restored(reaper.0, &ready), "pass");
}

#[test]
fn signals_handlers_and_timers_survive() {
    // Pending signals (private and shared, one with a value), handlers, itimers, a POSIX
    // timer and a sigaltstack: the program checks each after the restore.
    let scratch = ScratchDir::new("restore-signals");
    let mut tp = TestProcess::start(scratch.path(), "signals", &[]);
    let ready = tp.ready_file.clone();
    let reaper = dump_kill_restore(&mut tp, &scratch.path().join("images"));
    assert_eq!(check_restored(reaper.0, &ready), "pass");
}

#[test]
fn a_poll_without_timeout_waits_on_after_a_dump_that_leaves_it_running() {
    // poll(2) returns -ERESTART_RESTARTBLOCK even without a timeout; `tail -F` dies on
    // the EINTR that would become.
    let scratch = ScratchDir::new("restore-poll-left");
    let mut tp = TestProcess::start(scratch.path(), "poll", &[]);
    let left = scratch.path().join("images-left-running");
    std::fs::create_dir_all(&left).unwrap();
    let mut opts = DumpOptions::new(Pid(tp.pid), &left);
    opts.leave_running = true;
    dump(&opts).unwrap_or_else(|e| panic!("dump -R: {e}"));
    assert_eq!(tp.check(), "pass");
}

#[test]
fn a_poll_without_timeout_waits_on_after_a_dump_that_leaves_it_running_and_a_restore() {
    // The -R dump resumes the poll; the next dump must know it again.
    let scratch = ScratchDir::new("restore-poll-twice");
    let mut tp = TestProcess::start(scratch.path(), "poll", &[]);
    let ready = tp.ready_file.clone();
    let left = scratch.path().join("images-left-running");
    std::fs::create_dir_all(&left).unwrap();
    let mut opts = DumpOptions::new(Pid(tp.pid), &left);
    opts.leave_running = true;
    dump(&opts).unwrap_or_else(|e| panic!("dump -R: {e}"));
    let reaper = dump_kill_restore(&mut tp, &scratch.path().join("images"));
    assert_eq!(check_restored(reaper.0, &ready), "pass");
}

#[test]
fn a_poll_without_timeout_waits_on_after_restore() {
    let scratch = ScratchDir::new("restore-poll");
    let mut tp = TestProcess::start(scratch.path(), "poll", &[]);
    let ready = tp.ready_file.clone();
    let reaper = dump_kill_restore(&mut tp, &scratch.path().join("images"));
    assert_eq!(check_restored(reaper.0, &ready), "pass");
}

#[test]
fn a_signal_sent_while_the_tree_is_restored_interrupts_the_epoll_wait_it_was_dumped_in() {
    // epoll_wait returns EINTR to a freeze already (it never restarts).
    signal_during_restore_ends_the_wait("epoll", libc::SYS_epoll_wait);
}

#[test]
fn a_signal_sent_while_the_tree_is_restored_interrupts_the_sigsuspend_it_was_dumped_in() {
    // sigsuspend returns -ERESTARTNOHAND to the freeze: the restore makes the call again.
    signal_during_restore_ends_the_wait("sigsuspend", libc::SYS_rt_sigsuspend);
}

#[test]
fn a_signal_sent_while_the_tree_is_restored_interrupts_the_pause_it_was_dumped_in() {
    signal_during_restore_ends_the_wait("pause", libc::SYS_pause);
}

#[test]
fn a_signal_sent_while_the_tree_is_restored_interrupts_the_poll_it_was_dumped_in() {
    signal_during_restore_ends_the_wait("poll", libc::SYS_poll);
}

#[test]
fn a_signal_sent_while_a_dump_leaves_the_tree_running_interrupts_the_pause_it_waits_in() {
    // The dump's injected calls take the restart out of the kernel's hands, as the
    // restore's final registers do: the same lost signal, on the dump's way out.
    for (main_waits, nr) in [("pause", libc::SYS_pause), ("poll", libc::SYS_poll)] {
        use criu_core::notify::{Event, Notifier};
        let scratch = ScratchDir::new(&format!("dump-left-signal-in-{main_waits}"));
        let mut tp = waiting_poll(&scratch, main_waits, nr);
        let (ready, pid) = (tp.ready_file.clone(), tp.pid);
        let images = scratch.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        let mut opts = DumpOptions::new(Pid(pid), &images);
        opts.leave_running = true;
        opts.notify = Notifier::new(move |event| {
            if event == Event::PostDump {
                criu_core::sys::kill(Pid(pid), libc::SIGUSR2).map_err(|e| e.to_string())?;
            }
            Ok(())
        });
        dump(&opts).unwrap_or_else(|e| panic!("dump -R: {e}"));
        let result = wait_for_file(
            &ready.with_extension("ready.result"),
            Duration::from_secs(20),
        );
        assert_eq!(
            result.as_deref(),
            Some("pass"),
            "the signal sent during the dump did not end the wait in {main_waits}"
        );
        let _ = tp.child.wait();
    }
}

/// tp-poll with its main thread waiting for the check signal in `main_waits`, once it
/// is in that call (syscall `nr`).
fn waiting_poll(scratch: &ScratchDir, main_waits: &str, nr: i64) -> TestProcess {
    let tp = TestProcess::start(scratch.path(), "poll", &["--main-waits", main_waits]);
    let pid = tp.pid;
    wait_until(
        "the main thread in its wait",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(format!("/proc/{pid}/syscall"))
                .is_ok_and(|s| s.split(' ').next() == Some(&nr.to_string()))
        },
    );
    tp
}

/// tp-poll's main thread waits for its check signal in `main_waits` (syscall `nr`). The
/// signal is sent when the tree is rebuilt and still stopped (post-restore): it must end
/// the wait once the tree runs, as it would have ended it had the program never been
/// dumped, not run its handler just before the wait starts again.
fn signal_during_restore_ends_the_wait(main_waits: &str, nr: i64) {
    use criu_core::notify::{Event, Notifier};
    let scratch = ScratchDir::new(&format!("restore-signal-in-{main_waits}"));
    let mut tp = waiting_poll(&scratch, main_waits, nr);
    let (ready, pid) = (tp.ready_file.clone(), tp.pid);
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    dump(&DumpOptions::new(Pid(pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    let mut opts = RestoreOptions::new(&images);
    opts.notify = Notifier::new(|event| {
        if let Event::PostRestore(root) = event {
            criu_core::sys::kill(root, libc::SIGUSR2).map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    let restored = restore(&opts).unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    let result = wait_for_file(
        &ready.with_extension("ready.result"),
        Duration::from_secs(20),
    );
    assert_eq!(
        result.as_deref(),
        Some("pass"),
        "the signal sent during the restore did not end the wait in {main_waits}"
    );
}

/// Children of this test process right now (to prove a failed restore leaves none).
fn our_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid == Some(me) {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// Damages a copied image directory.
type Spoiler<'a> = Box<dyn Fn(&Path) + 'a>;

#[test]
fn bad_images_give_one_clear_error_and_leave_nothing_behind() {
    let scratch = ScratchDir::new("restore-bad");
    let mut tp = TestProcess::start(scratch.path(), "memhog", &["--mib", "8"]);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    // Leave it running: its pid stays taken, which is one of the failures below.
    dump(&DumpOptions {
        leave_running: true,
        ..DumpOptions::new(Pid(tp.pid), &images)
    })
    .unwrap();
    let quick = |dir: &Path| RestoreOptions {
        pid_wait: Duration::from_millis(200),
        ..RestoreOptions::new(dir)
    };

    // The pid is in use.
    let err = restore(&quick(&images)).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("pid {} is still in use", tp.pid)),
        "{err}"
    );
    tp.child.kill().unwrap();
    tp.child.wait().unwrap();
    let before = our_children();

    let copy = |name: &str| {
        let dir = scratch.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        for e in std::fs::read_dir(&images).unwrap().flatten() {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        dir
    };
    let core = format!("core-{}.img", tp.pid);
    let cases: Vec<(&str, Spoiler<'_>, String)> = vec![
        (
            "truncated",
            Box::new(|d: &Path| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join(&core))
                    .unwrap();
                f.set_len(f.metadata().unwrap().len() / 2).unwrap();
            }),
            format!("{core}: entry 0"),
        ),
        (
            "corrupt",
            Box::new(|d: &Path| {
                // The first payload byte becomes a tag of wire type 7, which does not exist.
                let mut bytes = std::fs::read(d.join("pstree.img")).unwrap();
                bytes[12] = 0xff;
                std::fs::write(d.join("pstree.img"), bytes).unwrap();
            }),
            "pstree.img: entry 0".to_string(),
        ),
        (
            "missing-pages",
            Box::new(|d: &Path| {
                std::fs::remove_file(d.join("pages-1.img")).unwrap();
            }),
            "pages".to_string(),
        ),
        (
            "missing-file",
            Box::new(|d: &Path| {
                // The program's map file is gone from the disk.
                let _ = d;
            }),
            "map".to_string(),
        ),
    ];
    for (name, spoil, what) in cases {
        let dir = copy(name);
        if name == "missing-file" {
            std::fs::rename(
                tp.ready_file.with_extension("ready.map"),
                scratch.path().join("moved-away"),
            )
            .unwrap();
        }
        spoil(&dir);
        let err = match restore(&quick(&dir)) {
            Err(e) => e,
            Ok(r) => {
                drop(Reaper(r.pid.0));
                panic!("{name}: restore of a spoilt image succeeded");
            }
        };
        let text = err.to_string();
        assert_eq!(text.lines().count(), 1, "{name}: {text}");
        assert!(
            text.contains(&what),
            "{name}: {text:?} should mention {what:?}"
        );
        // Only the dumped pid can hold a half-restored process: other tests running at
        // the same time start and end children of this process too.
        assert!(
            !Path::new(&format!("/proc/{}", tp.pid)).exists(),
            "{name}: a half-restored process was left behind (pid {} exists; our children \
             before: {before:?}, now: {:?})",
            tp.pid,
            our_children()
        );
    }
}

#[test]
fn twenty_dump_restore_cycles_keep_it_intact() {
    let scratch = ScratchDir::new("restore-cycles");
    let mut tp = TestProcess::start(scratch.path(), "memhog", &["--mib", "16"]);
    let ready = tp.ready_file.clone();
    let mut reaper = dump_kill_restore(&mut tp, &scratch.path().join("images-0"));
    for i in 1..20 {
        let images = scratch.path().join(format!("images-{i}"));
        std::fs::create_dir_all(&images).unwrap();
        dump(&DumpOptions::new(Pid(reaper.0), &images)).unwrap_or_else(|e| panic!("dump {i}: {e}"));
        // SAFETY: waitpid on our own (restored) child, which the dump killed.
        unsafe {
            let mut status = 0;
            libc::waitpid(reaper.0, &mut status, 0);
        }
        let pid = reaper.0;
        std::mem::forget(reaper);
        let restored =
            restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restore {i}: {e}"));
        assert_eq!(restored.pid.0, pid);
        reaper = Reaper(restored.pid.0);
    }
    assert_eq!(check_restored(reaper.0, &ready), "pass");
}

#[test]
fn every_fd_kind_comes_back_and_passes_its_check() {
    let scratch = ScratchDir::new("restore-fds");
    let work = scratch.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut tp = TestProcess::start(scratch.path(), "fds", &["--dir", work.to_str().unwrap()]);
    let ready = tp.ready_file.clone();
    let reaper = dump_kill_restore(&mut tp, &scratch.path().join("images"));
    assert_eq!(check_restored(reaper.0, &ready), "pass");
}

/// What /proc shows of a process that a restore must reproduce: every mapping (range,
/// permissions, offset, name), every fd (number, kind of target, flags), and the signal
/// and credential lines of status.
fn proc_view(pid: i32) -> Vec<String> {
    let mut out = Vec::new();
    for line in std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
    {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Inode and device numbers of recreated objects differ; the rest may not.
        let name = cols.get(5..).map(|c| c.join(" ")).unwrap_or_default();
        out.push(format!("map {} {} {} {}", cols[0], cols[1], cols[2], name));
    }
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    for fd in fds {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let kind = link.split(":[").next().unwrap_or("").to_owned();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        let flags = info
            .lines()
            .find(|l| l.starts_with("flags:"))
            .unwrap_or("")
            .to_owned();
        out.push(format!("fd {fd} {kind} {flags}"));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let keys = [
        "Uid",
        "Gid",
        "Groups",
        "SigPnd",
        "ShdPnd",
        "SigBlk",
        "SigIgn",
        "SigCgt",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
        "Umask",
        "Threads",
    ];
    for line in status.lines() {
        if keys.iter().any(|k| line.starts_with(&format!("{k}:"))) {
            out.push(without_timer_signals(line));
        }
    }
    out
}

/// A pending-signal line with the bits of the signals program's timer signals (SIGALRM
/// and SIGRTMIN+2) cleared: their timers keep firing while the process is stopped, so
/// whether one is pending depends on when /proc is read, not on the restore.
fn without_timer_signals(line: &str) -> String {
    let Some((key, hex)) = line.split_once(":\t") else {
        return line.to_owned();
    };
    if key != "SigPnd" && key != "ShdPnd" {
        return line.to_owned();
    }
    let Ok(bits) = u64::from_str_radix(hex.trim(), 16) else {
        return line.to_owned();
    };
    let sigrtmin = libc::SIGRTMIN();
    let timers = (1u64 << (libc::SIGALRM - 1)) | (1u64 << (sigrtmin + 2 - 1));
    format!("{key}:\t{:016x}", bits & !timers)
}

fn same_view_after_restore(
    tp: &mut TestProcess,
    images: &Path,
) -> (Reaper, Vec<String>, Vec<String>) {
    // Stopped, so the view holds still while it is read and dumped.
    // SAFETY: kill(2) on our own test program.
    unsafe { libc::kill(tp.pid, libc::SIGSTOP) };
    wait_until("stopped", Duration::from_secs(10), || {
        task_state(tp.pid) == Some('T')
    });
    let before = proc_view(tp.pid);
    let reaper = dump_kill_restore(tp, images);
    wait_until("restored stopped", Duration::from_secs(10), || {
        task_state(reaper.0) == Some('T')
    });
    let after = proc_view(reaper.0);
    // SAFETY: as above, on the restored child.
    unsafe { libc::kill(reaper.0, libc::SIGCONT) };
    (reaper, before, after)
}

#[test]
fn the_proc_view_is_the_same_after_restore() {
    let scratch = ScratchDir::new("restore-proc-view");
    let work = scratch.path().join("work");
    std::fs::create_dir(&work).unwrap();
    for (name, args) in [
        ("signals", vec![]),
        ("fds", vec!["--dir", work.to_str().unwrap()]),
        ("threads", vec!["--threads", "3"]),
    ] {
        let mut tp = TestProcess::start(scratch.path(), name, &args);
        let ready = tp.ready_file.clone();
        let (reaper, before, after) =
            same_view_after_restore(&mut tp, &scratch.path().join(format!("images-{name}")));
        let differ: Vec<_> = before.iter().zip(&after).filter(|(a, b)| a != b).collect();
        assert!(
            before.len() == after.len() && differ.is_empty(),
            "{name}: /proc differs: {differ:#?}\nbefore {} lines, after {}",
            before.len(),
            after.len()
        );
        assert_eq!(check_restored(reaper.0, &ready), "pass", "{name}");
    }
}

#[test]
fn credentials_of_an_unprivileged_process_come_back() {
    let scratch = ScratchDir::new("restore-creds");
    let out = scratch.path().join("out");
    let mut tp = TestProcess::spawn(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--groups=65534,100",
            "--inh-caps=-all",
            "sleep",
            "100",
        ],
        &out,
    );
    wait_until("running as nobody", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{}/status", tp.pid))
            .is_ok_and(|s| s.contains("Uid:\t65534"))
    });
    let (_reaper, before, after) = same_view_after_restore(&mut tp, &scratch.path().join("images"));
    assert!(before.iter().any(|l| l.starts_with("Uid:\t65534")));
    assert_eq!(before, after);
}

/// Field `n` (1-based, as proc(5) counts) of /proc/PID/stat.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split_whitespace().nth(n - 3).map(str::to_owned)
}

fn status_line(pid: i32, key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .map(str::to_owned)
}

/// Kills every pid it holds when the test ends, also when it fails.
struct KillAll(Vec<i32>);

impl Drop for KillAll {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill(2) on processes this test started or restored.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn zombies_come_back_as_zombies_of_the_same_parent() {
    let scratch = ScratchDir::new("restore-zombies");
    let ready = scratch.path().join("ready");
    let trigger = scratch.path().join("trigger");
    let result = scratch.path().join("result");
    // A parent with two unreaped children, one exited with 7 (and leading a process group
    // a live sibling belongs to), one killed by SIGTERM; once told to, it reaps both and
    // writes their wait statuses.
    let script = r#"
import os, signal, sys, time
ready, trigger, result = sys.argv[1:4]
z1 = os.fork()
if z1 == 0:
    os.setpgid(0, 0)
    time.sleep(0.3)
    os._exit(7)
try:
    os.setpgid(z1, z1)
except OSError:
    pass
live = os.fork()
if live == 0:
    os.setpgid(0, z1)
    time.sleep(1000)
    os._exit(0)
z2 = os.fork()
if z2 == 0:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(1000)
def state(p):
    with open(f"/proc/{p}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
while state(z1) != "Z" or state(z2) != "Z":
    time.sleep(0.01)
with open(ready + ".tmp", "w") as f:
    f.write(f"{z1} {live} {z2}")
os.rename(ready + ".tmp", ready)
while not os.path.exists(trigger):
    time.sleep(0.02)
s1 = os.waitpid(z1, 0)[1]
s2 = os.waitpid(z2, 0)[1]
with open(result + ".tmp", "w") as f:
    f.write(f"{s1} {s2}")
os.rename(result + ".tmp", result)
time.sleep(1000)
"#;
    let mut py = TestProcess::spawn(
        &[
            "python3",
            "-c",
            script,
            ready.to_str().unwrap(),
            trigger.to_str().unwrap(),
            result.to_str().unwrap(),
        ],
        &scratch.path().join("out"),
    );
    let pids: Vec<i32> = wait_for_file(&ready, Duration::from_secs(30))
        .expect("the tree gets ready")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let _kill = KillAll(pids.clone());
    let (z1, live, z2) = (pids[0], pids[1], pids[2]);
    let view = |pid: i32| {
        (
            task_state(pid),
            stat_field(pid, 4),
            stat_field(pid, 5),
            stat_field(pid, 6),
            std::fs::read_to_string(format!("/proc/{pid}/comm")).ok(),
        )
    };
    let before: Vec<_> = [z1, live, z2].iter().map(|&p| view(p)).collect();
    let reaper = dump_kill_restore(&mut py, &scratch.path().join("images"));
    // The live child runs for a moment after the restore, until its sleep resumes.
    wait_until(
        "the live child asleep again",
        Duration::from_secs(10),
        || task_state(live) == Some('S'),
    );
    let after: Vec<_> = [z1, live, z2].iter().map(|&p| view(p)).collect();
    assert_eq!(
        before, after,
        "state, ppid, pgid, sid and comm of each child"
    );
    assert_eq!(after[0].0, Some('Z'));
    assert_eq!(after[2].0, Some('Z'));
    // The zombies' SIGCHLD was not queued to the parent a second time.
    for key in ["SigPnd", "ShdPnd"] {
        assert_eq!(
            status_line(reaper.0, key),
            Some(format!("{key}:\t0000000000000000")),
            "parent's {key}"
        );
    }
    std::fs::write(&trigger, b"go").unwrap();
    let statuses = wait_for_file(&result, Duration::from_secs(30)).expect("the parent reaps");
    assert_eq!(statuses, format!("{} {}", 7 << 8, libc::SIGTERM));
}

#[test]
fn a_shell_job_comes_back_on_the_restorers_terminal() {
    let scratch = ScratchDir::new("restore-shell-job");
    let ready = scratch.path().join("looper.ready");
    let looper = criu_rs_suite::workspace_bin("tp-looper");
    // script(1) gives the shell a terminal; the shell runs the looper as its job (in the
    // shell's group: `sh -c` does no job control), writing to the terminal.
    let job = format!(
        "{} --ready-file {} --interval-ms 50; true",
        looper.display(),
        ready.display()
    );
    let out1 = scratch.path().join("out1");
    let mut shell = TestProcess::spawn(&["script", "-q", "-c", &job, "/dev/null"], &out1);
    let pid: i32 = wait_for_file(&ready, Duration::from_secs(30))
        .expect("the job gets ready")
        .trim_start_matches("ready ")
        .trim()
        .parse()
        .unwrap();
    let _kill = KillAll(vec![pid]);
    wait_until("some numbers", Duration::from_secs(10), || {
        numbers(&std::fs::read_to_string(&out1).unwrap_or_default()).len() > 3
    });
    assert!(std::fs::read_link(format!("/proc/{pid}/fd/1"))
        .unwrap()
        .starts_with("/dev/pts/"));
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions {
        shell_job: true,
        ..DumpOptions::new(Pid(pid), &images)
    })
    .unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = shell.child.wait();
    let before = numbers(&std::fs::read_to_string(&out1).unwrap());

    // Without -j the terminal is refused, naming it.
    let refused =
        criu_rs_suite::clean_command(criu_rs_suite::workspace_bin("criu-rs").to_str().unwrap())
            .args(["restore", "-d", "-D"])
            .arg(&images)
            .output()
            .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("--shell-job"),
        "{err}"
    );

    // With -j, from another terminal: the job joins it.
    let restorer = format!(
        "{} restore -j -d -D {} -o {}; sleep 100",
        criu_rs_suite::workspace_bin("criu-rs").display(),
        images.display(),
        scratch.path().join("restore.log").display()
    );
    let out2 = scratch.path().join("out2");
    let _terminal = TestProcess::spawn(&["script", "-q", "-c", &restorer, "/dev/null"], &out2);
    wait_until(
        "numbers on the new terminal",
        Duration::from_secs(20),
        || numbers(&std::fs::read_to_string(&out2).unwrap_or_default()).len() > 3,
    );
    let after = numbers(&std::fs::read_to_string(&out2).unwrap());
    let last = *before.last().unwrap();
    // A line still in the old terminal's buffer when it was killed is lost, as with CRIU.
    assert!(
        after[0] > last && after[0] <= last + 2,
        "before ended at {last}, after starts at {}",
        after[0]
    );
    assert!(
        after.windows(2).all(|w| w[1] == w[0] + 1),
        "counts on: {after:?}"
    );
    let tty = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
    assert!(tty.starts_with("/dev/pts/"), "{tty:?}");
    assert_ne!(
        stat_field(pid, 7).as_deref(),
        Some("0"),
        "has a controlling terminal"
    );
    assert_ne!(
        stat_field(pid, 6),
        Some(pid.to_string()),
        "not a session leader"
    );
}

#[test]
fn own_uts_and_ipc_namespaces_come_back() {
    let scratch = ScratchDir::new("restore-uts-ipc");
    let mut tp = TestProcess::spawn(
        &[
            "unshare",
            "--uts",
            "--ipc",
            "sh",
            "-c",
            "hostname crhost; domainname crdomain; echo 12345 > /proc/sys/kernel/msgmax; \
             exec sleep 1000",
        ],
        &scratch.path().join("out"),
    );
    wait_until(
        "sleeping in its namespaces",
        Duration::from_secs(10),
        || std::fs::read_to_string(format!("/proc/{}/comm", tp.pid)).is_ok_and(|c| c == "sleep\n"),
    );
    let ns = |pid: i32, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    assert_ne!(ns(tp.pid, "uts"), ns(std::process::id() as i32, "uts"));
    let reaper = dump_kill_restore(&mut tp, &scratch.path().join("images"));
    let me = std::process::id() as i32;
    assert_ne!(
        ns(reaper.0, "uts"),
        ns(me, "uts"),
        "a UTS namespace of its own"
    );
    assert_ne!(
        ns(reaper.0, "ipc"),
        ns(me, "ipc"),
        "an IPC namespace of its own"
    );
    let inside = |args: &[&str]| {
        let out = criu_rs_suite::clean_command("nsenter")
            .arg("-t")
            .arg(reaper.0.to_string())
            .args(["-u", "-i"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(inside(&["hostname"]), "crhost");
    assert_eq!(inside(&["domainname"]), "crdomain");
    assert_eq!(inside(&["cat", "/proc/sys/kernel/msgmax"]), "12345");
}

/// Python with ctypes, for SysV IPC calls the standard library lacks.
const SYSV_PY: &str = r#"
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
class Msg(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("text", ctypes.c_char * 64)]
if sys.argv[1] == "make":
    q = libc.msgget(0x1234, 0o1640)
    for t, text in [(1, b"hello"), (7, b"world!")]:
        m = Msg(t, text)
        assert libc.msgsnd(q, ctypes.byref(m), len(text), 0) == 0
    s = libc.semget(0x5678, 3, 0o1600)
    for n, v in enumerate([3, 1, 4]):
        assert libc.semctl(s, n, 16, v) == 0   # SETVAL
    with open(sys.argv[2], "w") as f:
        f.write("%d %d" % (q, s))
    time.sleep(1000)
else:
    q, s = int(sys.argv[2]), int(sys.argv[3])
    got = []
    for _ in range(2):
        m = Msg()
        n = libc.msgrcv(q, ctypes.byref(m), 64, 0, 0o4000)   # IPC_NOWAIT
        got.append("%d:%s" % (m.mtype, m.text[:n].decode()))
    vals = [libc.semctl(s, n, 12) for n in range(3)]   # GETVAL
    print(" ".join(got), *vals)
"#;

#[test]
fn sysv_message_queues_and_semaphores_come_back() {
    let scratch = ScratchDir::new("restore-sysv");
    let ids_file = scratch.path().join("ids");
    let mut tp = TestProcess::spawn(
        &[
            "unshare",
            "--ipc",
            "python3",
            "-c",
            SYSV_PY,
            "make",
            ids_file.to_str().unwrap(),
        ],
        &scratch.path().join("out"),
    );
    let ids = wait_for_file(&ids_file, Duration::from_secs(20)).expect("the objects exist");
    let ids: Vec<&str> = ids.split_whitespace().collect();
    let reaper = dump_kill_restore(&mut tp, &scratch.path().join("images"));
    let out = criu_rs_suite::clean_command("nsenter")
        .arg("-t")
        .arg(reaper.0.to_string())
        .arg("-i")
        .args(["python3", "-c", SYSV_PY, "read", ids[0], ids[1]])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1:hello 7:world! 3 1 4",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_root_that_is_not_there_is_refused_before_any_process_exists() {
    use criu_images::{pb, ImageKind, ImageReader, ImageWriter};
    let scratch = ScratchDir::new("restore-root");
    let mut tp = TestProcess::start(scratch.path(), "looper", &["--interval-ms", "10"]);
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    // The dumped root is a regular-file entry naming "/": name a directory that does not
    // exist instead (a chrooted task's root is restored with chroot, see
    // restore_fsroot.rs; one that cannot be is refused before anything runs).
    let mut fs_reader = ImageReader::open(images.join(format!("fs-{}.img", tp.pid))).unwrap();
    let fs: pb::FsEntry = fs_reader.next_entry().unwrap().expect("an fs entry");
    let files_path = images.join("files.img");
    let mut entries: Vec<pb::FileEntry> = Vec::new();
    let mut r = ImageReader::open(&files_path).unwrap();
    while let Some(e) = r.next_entry().unwrap() {
        entries.push(e);
    }
    let root = entries
        .iter_mut()
        .find(|e| e.id == fs.root_id)
        .and_then(|e| e.reg.as_mut())
        .expect("the root's file entry");
    let missing = scratch.path().join("no-such-root");
    root.name = missing.as_os_str().as_encoded_bytes().to_vec();
    let mut w = ImageWriter::create(&files_path, ImageKind::by_name("FILES").unwrap()).unwrap();
    for e in &entries {
        w.write_entry(e).unwrap();
    }
    w.finish().unwrap();
    let err = match restore(&RestoreOptions::new(&images)) {
        Err(e) => e.to_string(),
        Ok(r) => {
            drop(Reaper(r.pid.0));
            panic!("a restore with a missing root succeeded");
        }
    };
    assert!(err.contains("no-such-root"), "{err}");
    assert!(
        !Path::new(&format!("/proc/{}", tp.pid)).exists(),
        "the refused restore left process {}",
        tp.pid
    );
}

#[test]
fn bad_handlers_and_unjoinable_namespaces_are_refused_before_any_process_exists() {
    use criu_images::{pb, ImageKind, ImageReader, ImageWriter};
    let scratch = ScratchDir::new("restore-stage1");
    let mut tp = TestProcess::start(scratch.path(), "looper", &["--interval-ms", "10"]);
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    let refused = |opts: &RestoreOptions| match restore(opts) {
        Err(e) => {
            assert!(
                !Path::new(&format!("/proc/{}", tp.pid)).exists(),
                "the refused restore left process {}",
                tp.pid
            );
            e.to_string()
        }
        Ok(r) => {
            drop(Reaper(r.pid.0));
            panic!("the restore succeeded");
        }
    };

    // A namespace kind that cannot be joined (the pid namespace is always a new one).
    let mut opts = RestoreOptions::new(&images);
    opts.join_ns = vec![("pid".into(), "/proc/self/ns/pid".into())];
    let err = refused(&opts);
    assert!(err.contains("joining a pid namespace"), "{err}");

    // A handler for more signals than there are (62: all but SIGKILL and SIGSTOP).
    let core_path = images.join(format!("core-{}.img", tp.pid));
    let mut core: pb::CoreEntry = ImageReader::open(&core_path)
        .unwrap()
        .next_entry()
        .unwrap()
        .expect("a core entry");
    let tc = core.tc.as_mut().expect("a task core");
    let handler = tc.sigactions.first().cloned().unwrap_or_default();
    tc.sigactions.resize(63, handler);
    let mut w = ImageWriter::create(&core_path, ImageKind::by_name("CORE").unwrap()).unwrap();
    w.write_entry(&core).unwrap();
    w.finish().unwrap();
    let err = refused(&RestoreOptions::new(&images));
    assert!(err.contains("more than 62 signal handlers"), "{err}");
}
