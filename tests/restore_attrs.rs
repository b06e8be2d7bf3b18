//! Process state that lives only in the kernel (scheduling, parent-death signal,
//! oom_score_adj, loginuid, THP switch, seccomp, a missing vDSO, zombies and stops):
//! after a dump and a restore it is exactly what it was, or the dump refuses and the
//! program runs on untouched.

use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, dump_kill_restore, task_state, tracer_pid, wait_for_file, wait_until,
    ScratchDir, TestProcess,
};

/// One thread as /proc shows it: (tid, nice, rt_priority, policy, Seccomp).
type ThreadAttributes = (String, String, String, String, String);

/// What /proc shows of each thread's attributes, plus the process's oom_score_adj and
/// loginuid.
fn attributes(pid: i32) -> (Vec<ThreadAttributes>, String, String) {
    let mut threads = Vec::new();
    let mut tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    tids.sort();
    for tid in tids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
        let fields: Vec<String> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        // Fields 19 (nice), 40 (rt_priority), 41 (policy); `fields` starts at field 3.
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
        let seccomp = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap_or("")
            .trim()
            .to_owned();
        threads.push((
            tid,
            fields[16].clone(),
            fields[37].clone(),
            fields[38].clone(),
            seccomp,
        ));
    }
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{name}"))
            .unwrap()
            .trim()
            .to_owned()
    };
    (threads, read("oom_score_adj"), read("loginuid"))
}

#[test]
fn kernel_kept_attributes_come_back_exactly() {
    let scratch = ScratchDir::new("attrs-all");
    // Every attribute: threads with different seccomp modes (filter chains saved per
    // thread), a real-time worker, and a child without a vDSO.
    let mut tp = TestProcess::start(scratch.path(), "attrs", &[]);
    let ready = tp.ready_file.clone();
    let before = attributes(tp.pid);
    assert!(before.0.iter().any(|t| t.4 == "1"), "a strict thread");
    assert!(before.0.iter().any(|t| t.3 == libc::SCHED_RR.to_string()));
    assert_eq!((before.1.as_str(), before.2.as_str()), ("345", "4242"));
    let reaper = dump_kill_restore(&mut tp, &scratch.path().join("images"));
    assert_eq!(attributes(reaper.0), before, "attributes seen from outside");
    assert_eq!(check_restored(reaper.0, &ready), "pass");
}

/// zdtm membarrier: the registrations live in the mm, nothing in /proc shows them; the
/// dump asks the task, the restore registers the rebuilt task again (and no more).
#[test]
fn membarrier_registrations_come_back_exactly() {
    let scratch = ScratchDir::new("attrs-membarrier");
    let mut tp = TestProcess::start(scratch.path(), "attrs", &["--with", "membarrier"]);
    let ready = tp.ready_file.clone();
    let reaper = dump_kill_restore(&mut tp, &scratch.path().join("images"));
    assert_eq!(check_restored(reaper.0, &ready), "pass");
}

#[test]
fn a_filter_chain_every_thread_shares_comes_back_on_each() {
    let scratch = ScratchDir::new("attrs-tsync");
    // No strict thread: every thread runs the same chain, which the dump saves once for
    // the leader with TSYNC, and the restore installs on all threads at once.
    let mut tp = TestProcess::start(scratch.path(), "attrs", &["--with", "filter,pdeath,sched"]);
    let ready = tp.ready_file.clone();
    let before = attributes(tp.pid);
    assert!(before.0.iter().all(|t| t.4 == "2"), "{before:?}");
    let reaper = dump_kill_restore(&mut tp, &scratch.path().join("images"));
    assert_eq!(attributes(reaper.0), before, "attributes seen from outside");
    assert_eq!(check_restored(reaper.0, &ready), "pass");
}

#[test]
fn sched_deadline_is_refused_and_the_task_runs_on() {
    let scratch = ScratchDir::new("attrs-deadline");
    let out = scratch.path().join("out");
    let tp = TestProcess::spawn(
        &[
            "chrt",
            "-d",
            "--sched-runtime",
            "1000000",
            "--sched-deadline",
            "10000000",
            "--sched-period",
            "10000000",
            "0",
            "sleep",
            "100",
        ],
        &out,
    );
    wait_until(
        "sleep under SCHED_DEADLINE",
        Duration::from_secs(10),
        || std::fs::read_to_string(format!("/proc/{}/comm", tp.pid)).is_ok_and(|c| c == "sleep\n"),
    );
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let err = dump(&DumpOptions::new(Pid(tp.pid), &images))
        .expect_err("a SCHED_DEADLINE task cannot be restored: the dump refuses");
    assert!(err.to_string().contains("SCHED_DEADLINE"), "{err}");
    wait_until("the task asleep again", Duration::from_secs(10), || {
        task_state(tp.pid) == Some('S')
    });
    assert_eq!(tracer_pid(tp.pid), Some(0));
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

/// Field `n` (1-based, as proc(5) counts) of /proc/PID/stat.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split_whitespace().nth(n - 3).map(str::to_owned)
}

/// Runs `script` (Python) with the ready, trigger and result paths; returns the guard,
/// the pids it wrote to the ready file, and the paths.
fn python_tree(scratch: &ScratchDir, script: &str) -> (TestProcess, Vec<i32>) {
    let p = |n: &str| scratch.path().join(n).to_str().unwrap().to_owned();
    let tp = TestProcess::spawn(
        &[
            "python3",
            "-c",
            script,
            &p("ready"),
            &p("trigger"),
            &p("result"),
        ],
        &scratch.path().join("out"),
    );
    let pids = wait_for_file(&scratch.path().join("ready"), Duration::from_secs(30))
        .expect("the tree gets ready")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    (tp, pids)
}

#[test]
fn a_sigkill_zombie_and_a_zombie_in_a_group_without_leader_come_back() {
    let scratch = ScratchDir::new("attrs-zombies");
    // A child killed by SIGKILL; and, as zdtm's zombie01 builds it, a zombie whose
    // process group lost its leader: a middle child leads a group, forks a grandchild
    // into it and exits; we (a subreaper) reap the middle one and inherit the
    // grandchild, which exits unreaped.
    let script = r#"
import ctypes, os, signal, sys, time
ready, trigger, result = sys.argv[1:4]
libc = ctypes.CDLL(None)
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
killed = os.fork()
if killed == 0:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(1000)
r, w = os.pipe()
middle = os.fork()
if middle == 0:
    os.setpgid(0, 0)
    grand = os.fork()
    if grand == 0:
        time.sleep(0.2)
        os._exit(5)
    os.write(w, str(grand).encode() + b"\n")
    os._exit(0)
os.close(w)
grand = int(os.read(r, 32).split()[0])
os.waitpid(middle, 0)
def state(p):
    with open(f"/proc/{p}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
while state(killed) != "Z" or state(grand) != "Z":
    time.sleep(0.01)
with open(ready + ".tmp", "w") as f:
    f.write(f"{killed} {grand} {middle}")
os.rename(ready + ".tmp", ready)
while not os.path.exists(trigger):
    time.sleep(0.02)
s1 = os.waitpid(killed, 0)[1]
s2 = os.waitpid(grand, 0)[1]
with open(result + ".tmp", "w") as f:
    f.write(f"{s1} {s2}")
os.rename(result + ".tmp", result)
time.sleep(1000)
"#;
    let (mut py, pids) = python_tree(&scratch, script);
    let _kill = KillAll(pids.clone());
    let (killed, grand, middle) = (pids[0], pids[1], pids[2]);
    // The grandchild's group is the reaped middle process's.
    assert_eq!(stat_field(grand, 5), Some(middle.to_string()));
    assert_eq!(task_state(middle), None);
    let view = |pid: i32| {
        (
            task_state(pid),
            stat_field(pid, 4),
            stat_field(pid, 5),
            stat_field(pid, 6),
        )
    };
    let before: Vec<_> = [killed, grand].iter().map(|&p| view(p)).collect();
    let _reaper = dump_kill_restore(&mut py, &scratch.path().join("images"));
    let after: Vec<_> = [killed, grand].iter().map(|&p| view(p)).collect();
    assert_eq!(before, after, "state, ppid, pgid and sid of each zombie");
    // The helper that held the group is gone, and nobody took its pid.
    assert_eq!(task_state(middle), None);
    std::fs::write(scratch.path().join("trigger"), b"go").unwrap();
    let statuses = wait_for_file(&scratch.path().join("result"), Duration::from_secs(30))
        .expect("the parent reaps");
    assert_eq!(statuses, format!("{} {}", libc::SIGKILL, 5 << 8));
}

#[test]
fn a_child_stopped_by_sigtstp_is_stopped_by_it_again() {
    let scratch = ScratchDir::new("attrs-sigtstp");
    // The child leads its own group (in the parent's session, so the group is not
    // orphaned and SIGTSTP stops it); the parent has not waited for the stop yet.
    let script = r#"
import os, signal, sys, time
ready, trigger, result = sys.argv[1:4]
child = os.fork()
if child == 0:
    os.setpgid(0, 0)
    while True:
        time.sleep(0.01)
os.setpgid(child, child)
os.kill(child, signal.SIGTSTP)
os.waitid(os.P_PID, child, os.WSTOPPED | os.WNOWAIT)
with open(ready + ".tmp", "w") as f:
    f.write(f"{child}")
os.rename(ready + ".tmp", ready)
while not os.path.exists(trigger):
    time.sleep(0.02)
info = os.waitid(os.P_PID, child, os.WSTOPPED | os.WNOHANG)
line = "none" if info is None else f"{info.si_code} {info.si_status}"
os.kill(child, signal.SIGCONT)
with open(result + ".tmp", "w") as f:
    f.write(line)
os.rename(result + ".tmp", result)
time.sleep(1000)
"#;
    let (mut py, pids) = python_tree(&scratch, script);
    let _kill = KillAll(pids.clone());
    let child = pids[0];
    assert_eq!(task_state(child), Some('T'));
    let _reaper = dump_kill_restore(&mut py, &scratch.path().join("images"));
    assert_eq!(task_state(child), Some('T'), "stopped again");
    assert_eq!(tracer_pid(child), Some(0));
    std::fs::write(scratch.path().join("trigger"), b"go").unwrap();
    let seen = wait_for_file(&scratch.path().join("result"), Duration::from_secs(30))
        .expect("the parent waits");
    // CLD_STOPPED (5) by SIGTSTP: the parent sees the very stop it had not reaped.
    assert_eq!(seen, format!("5 {}", libc::SIGTSTP));
}

/// The inode of the first shared writable mapping of `pid` (`rw-s` in its maps).
fn shared_inode(pid: i32) -> Option<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let line = maps.lines().find(|l| l.contains(" rw-s "))?;
    line.split_whitespace().nth(4).map(str::to_owned)
}

#[test]
fn shared_anonymous_memory_stays_one_object_for_parent_and_child() {
    let scratch = ScratchDir::new("attrs-shared-anon");
    // zdtm's stopped03 and pthread00 synchronize their processes through such a page.
    let script = r#"
import mmap, os, sys, time
ready, trigger, result = sys.argv[1:4]
m = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
m[0] = 42
child = os.fork()
if child == 0:
    while True:
        m[2] = m[1]
        time.sleep(0.005)
with open(ready + ".tmp", "w") as f:
    f.write(f"{child}")
os.rename(ready + ".tmp", ready)
while not os.path.exists(trigger):
    time.sleep(0.02)
m[1] = 7
for _ in range(1000):
    if m[2] == 7:
        break
    time.sleep(0.01)
with open(result + ".tmp", "w") as f:
    f.write(f"{m[0]} {m[2]}")
os.rename(result + ".tmp", result)
time.sleep(1000)
"#;
    let (mut py, pids) = python_tree(&scratch, script);
    let _kill = KillAll(pids.clone());
    let child = pids[0];
    let parent = py.pid;
    assert_eq!(shared_inode(parent), shared_inode(child));
    let _reaper = dump_kill_restore(&mut py, &scratch.path().join("images"));
    let (p, c) = (shared_inode(parent), shared_inode(child));
    assert!(
        p.is_some() && p == c,
        "one object after restore: {p:?} {c:?}"
    );
    std::fs::write(scratch.path().join("trigger"), b"go").unwrap();
    let seen = wait_for_file(&scratch.path().join("result"), Duration::from_secs(30))
        .expect("the parent reports");
    // The saved contents, and the child's echo through the page.
    assert_eq!(seen, "42 7");
}

#[test]
fn a_session_whose_leader_is_gone_is_refused_at_dump_and_the_tree_runs_on() {
    let scratch = ScratchDir::new("attrs-lost-session");
    // A middle child makes its own session, forks a grandchild into it and exits; we (a
    // subreaper) reap it and inherit the grandchild. No task can enter that session
    // again, so the restore could not rebuild it: the dump must refuse, not kill.
    let script = r#"
import ctypes, os, sys, time
ready, trigger, result = sys.argv[1:4]
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
r, w = os.pipe()
middle = os.fork()
if middle == 0:
    os.setsid()
    grand = os.fork()
    if grand == 0:
        time.sleep(1000)
        os._exit(0)
    os.write(w, str(grand).encode() + b"\n")
    os._exit(0)
grand = int(os.read(r, 32).split()[0])
os.waitpid(middle, 0)
with open(ready + ".tmp", "w") as f:
    f.write(f"{grand} {middle}")
os.rename(ready + ".tmp", ready)
time.sleep(1000)
"#;
    let (py, pids) = python_tree(&scratch, script);
    let _kill = KillAll(pids.clone());
    let (grand, middle) = (pids[0], pids[1]);
    assert_eq!(stat_field(grand, 6), Some(middle.to_string()), "session");
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let err = dump(&DumpOptions::new(Pid(py.pid), &images)).expect_err("refused");
    assert!(
        err.to_string()
            .contains(&format!("session {middle}, whose leader is gone")),
        "{err}"
    );
    for pid in [py.pid, grand] {
        assert_eq!(task_state(pid), Some('S'), "{pid} runs on");
        assert_eq!(tracer_pid(pid), Some(0));
    }
}

#[test]
fn a_dump_that_leaves_it_running_leaves_seccomp_as_it_was() {
    let scratch = ScratchDir::new("attrs-seccomp-left-running");
    // The dump injects into the strict thread and the filtered ones (with seccomp
    // suspended for the tracer only); afterwards both modes hold again.
    let mut tp = TestProcess::start(scratch.path(), "attrs", &["--with", "filter,strict"]);
    let before = attributes(tp.pid);
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut opts = DumpOptions::new(Pid(tp.pid), &images);
    opts.leave_running = true;
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    assert_eq!(tracer_pid(tp.pid), Some(0));
    assert_eq!(attributes(tp.pid), before);
    assert_eq!(tp.check(), "pass");
}
