//! File locks (issue 12, `--file-locks`): tp-locks (flock, POSIX ranges, OFD locks,
//! leases, a flock shared by two processes through one description, tasks waiting for
//! locks)
//! dumped and restored by criu-rs, and across with CRIU 4.2 both ways; the refusal
//! without the flag; a lock taken by someone else since the dump failing the restore
//! cleanly; and SQLite in WAL mode with a read transaction open.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::files::kinds::Kind;
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_images::flags::file_lock::{FL_FLOCK, FL_LEASE, FL_OFD, FL_POSIX};
use criu_images::pb;
use criu_rs_suite::{
    check_restored, clean_command, crit_decode, criu_4_or_skip, criu_log_errors, debian_crit,
    task_state, tracer_pid, wait_for_file, wait_until, DetachedTree, Reaper, ScratchDir,
    TestProcess,
};

fn dump_opts(pid: i32, images: &Path) -> DumpOptions {
    DumpOptions {
        file_locks: true,
        ..DumpOptions::new(Pid(pid), images)
    }
}

fn restore_opts(images: &Path) -> RestoreOptions {
    RestoreOptions {
        file_locks: true,
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(images)
    }
}

/// `ROLE PID` lines of tp-locks' PATH.pids.
fn pids(tp: &TestProcess) -> Vec<(String, i32)> {
    let text = std::fs::read_to_string(tp.ready_file.with_extension("ready.pids")).unwrap();
    text.lines()
        .map(|l| {
            let (role, pid) = l.split_once(' ').unwrap();
            (role.to_owned(), pid.parse().unwrap())
        })
        .collect()
}

fn gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// The `lock:` lines of every fd of `pid`, without their ids: `FD KIND ... END`.
fn fdinfo_locks(pid: i32) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let text =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{name}")).unwrap_or_default();
        for line in text.lines().filter_map(|l| l.strip_prefix("lock:")) {
            let fields: Vec<&str> = line.split_whitespace().skip(1).collect();
            out.push(format!("{name} {}", fields.join(" ")));
        }
    }
    out.sort();
    out
}

fn read_locks(images: &Path) -> Vec<pb::FileLockEntry> {
    let mut r = criu_images::ImageReader::open(images.join("filelocks.img")).unwrap();
    let mut out = Vec::new();
    while let Some(e) = r.next_entry::<pb::FileLockEntry>().unwrap() {
        out.push(e);
    }
    out
}

#[test]
fn locks_of_every_family_come_back_held_by_the_same_tasks_and_descriptions() {
    let scratch = ScratchDir::new("locks-round-trip");
    let mut tp = TestProcess::start(scratch.path(), "locks", &[]);
    let roles = pids(&tp);
    let before: Vec<(i32, Vec<String>)> =
        roles.iter().map(|(_, p)| (*p, fdinfo_locks(*p))).collect();
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&dump_opts(tp.pid, &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();

    // The parent's 13 locks (flock on the data file, the directory, the shared and the
    // waited file; 3 POSIX ranges, recorded once although two fds show them; 2 OFD; 2
    // leases and 2 being broken), S's POSIX lock; nothing for the waiters, nothing twice for the shared
    // flock.
    let locks = read_locks(&images);
    let count = |pid: i32, flag: u32| {
        locks
            .iter()
            .filter(|l| l.pid == pid && l.flag == flag)
            .count()
    };
    let pid_of = |role: &str| roles.iter().find(|(r, _)| r == role).unwrap().1;
    let (parent, s) = (pid_of("parent"), pid_of("S"));
    assert_eq!(count(parent, FL_FLOCK), 4, "{locks:#?}");
    assert_eq!(count(parent, FL_POSIX), 3, "{locks:#?}");
    assert_eq!(count(parent, FL_OFD), 2, "{locks:#?}");
    assert_eq!(count(parent, FL_LEASE), 4, "{locks:#?}");
    assert_eq!(count(s, FL_POSIX), 1, "{locks:#?}");
    assert_eq!(locks.len(), 14, "{locks:#?}");
    // The leases being broken, as CRIU writes them: LEASE_BREAKING (4) over the type
    // they are broken to (F_UNLCK 2, F_RDLCK 0).
    let breaking: Vec<u32> = locks
        .iter()
        .filter(|l| l.flag == FL_LEASE && l.r#type & 4 != 0)
        .map(|l| l.r#type)
        .collect();
    assert_eq!(breaking, [2 | 4, 4], "{locks:#?}");
    if let Some(crit) = debian_crit() {
        let json = crit_decode(&crit, &images.join("filelocks.img")).unwrap();
        assert_eq!(json["magic"], "FILE_LOCKS");
        let entries = json["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 14);
        assert!(entries
            .iter()
            .any(|e| e["flag"] == 1 && e["type"] == 1 && e["start"] == 4096 && e["len"] == 0));
    }

    for (_, p) in &roles {
        wait_until("the dumped tree to go", Duration::from_secs(10), || {
            gone(*p)
        });
    }
    let restored = restore(&restore_opts(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    // The same lines from outside, fd by fd and owner by owner (the waiters' too: none).
    let after: Vec<(i32, Vec<String>)> =
        roles.iter().map(|(_, p)| (*p, fdinfo_locks(*p))).collect();
    assert_eq!(after, before);
    assert_eq!(check_restored(restored.pid.0, &tp.ready_file), "pass");
}

/// Without `--file-locks` the dump refuses, naming the task, the fd, the lock and the
/// flag, before the tree is touched; the program then passes its own check.
#[test]
fn a_held_lock_is_refused_without_the_flag_and_the_tree_runs_on() {
    let scratch = ScratchDir::new("locks-refused");
    let mut tp = TestProcess::start(scratch.path(), "locks", &[]);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let err = dump(&DumpOptions::new(Pid(tp.pid), &images)).expect_err("refused");
    let msg = err.to_string();
    // The first fd with a lock: a lease, before the flock on the data file.
    assert!(
        msg.contains(&format!("task {} fd ", tp.pid))
            && msg.contains(Kind::FileLease.name())
            && msg.contains("--file-locks")
            && msg.contains("read lease on")
            && msg.contains("locks.ready.rlease"),
        "{msg}"
    );
    assert!(matches!(task_state(tp.pid), Some('S') | Some('R')));
    assert_eq!(tracer_pid(tp.pid), Some(0), "not traced");
    assert!(
        std::fs::read_dir(&images).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".img")),
        "a refused dump writes no image"
    );
    assert_eq!(tp.check(), "pass");
}

/// A lock someone outside the tree took since the dump: the restore fails naming the
/// lock and leaves no process of the tree behind; once it is released, the restore
/// works. Without `--file-locks` the restore refuses images that hold locks.
#[test]
fn a_lock_taken_since_the_dump_fails_the_restore_cleanly() {
    let scratch = ScratchDir::new("locks-conflict");
    let mut tp = TestProcess::start(scratch.path(), "locks", &[]);
    let roles = pids(&tp);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&dump_opts(tp.pid, &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    for (_, p) in &roles {
        wait_until("the dumped tree to go", Duration::from_secs(10), || {
            gone(*p)
        });
    }

    let err = restore(&RestoreOptions {
        file_locks: false,
        ..restore_opts(&images)
    })
    .expect_err("images with locks need --file-locks");
    let msg = err.to_string();
    assert!(
        msg.contains(Kind::FileLease.name()) && msg.contains("--file-locks"),
        "{msg}"
    );
    for (_, p) in &roles {
        assert!(gone(*p), "a refused restore made {p}");
    }

    // A read lock on the data file's bytes 0-9, which the parent held for writing.
    let data = tp.ready_file.with_extension("ready.data");
    let outsider = std::fs::File::open(&data).unwrap();
    let mut l = libc::flock {
        l_type: libc::F_RDLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 10,
        l_pid: 0,
    };
    // SAFETY: `l` is a valid struct flock for the call.
    let rc = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&outsider),
            libc::F_OFD_SETLK,
            &mut l,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let err = restore(&restore_opts(&images)).expect_err("the lock is taken");
    let msg = err.to_string();
    assert!(
        msg.contains("POSIX write lock on bytes 0-99")
            && msg.contains("outside the tree")
            && msg.contains(&data.display().to_string()),
        "{msg}"
    );
    for (_, p) in &roles {
        wait_until(
            "the half-restored tree to go",
            Duration::from_secs(10),
            || gone(*p),
        );
    }
    drop(outsider);
    let restored = restore(&restore_opts(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    assert_eq!(check_restored(restored.pid.0, &tp.ready_file), "pass");
}

#[test]
fn criu_4_2_restores_our_locks() {
    let Some(criu) = criu_4_or_skip("CRIU's restore of our file locks") else {
        return;
    };
    let scratch = ScratchDir::new("locks-criu-restores");
    let mut tp = TestProcess::start(scratch.path(), "locks", &[]);
    let roles = pids(&tp);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&dump_opts(tp.pid, &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    for (_, p) in &roles {
        wait_until("the dumped tree to go", Duration::from_secs(10), || {
            gone(*p)
        });
    }
    let out = clean_command(criu.to_str().unwrap())
        .args([
            "restore",
            "-d",
            "--file-locks",
            "-v4",
            "-o",
            "restore.log",
            "-D",
        ])
        .arg(&images)
        .output()
        .unwrap();
    let _restored = DetachedTree(roles.iter().map(|(_, p)| *p).collect());
    assert!(
        out.status.success(),
        "CRIU could not restore our tp-locks: {:#?}",
        criu_log_errors(&images.join("restore.log"))
    );
    assert_eq!(tp.check(), "pass");
}

#[test]
fn criu_4_2_locks_restore_with_criu_rs() {
    let Some(criu) = criu_4_or_skip("restoring CRIU's file locks") else {
        return;
    };
    let scratch = ScratchDir::new("locks-criu-dumps");
    let mut tp = TestProcess::start(scratch.path(), "locks", &[]);
    let roles = pids(&tp);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let out = clean_command(criu.to_str().unwrap())
        .args(["dump", "--file-locks", "-v4", "-o", "dump.log", "-t"])
        .arg(tp.pid.to_string())
        .arg("-D")
        .arg(&images)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "CRIU could not dump tp-locks: {:#?}",
        criu_log_errors(&images.join("dump.log"))
    );
    let _ = tp.child.wait();
    for (_, p) in &roles {
        wait_until("the dumped tree to go", Duration::from_secs(10), || {
            gone(*p)
        });
    }
    assert!(!read_locks(&images).is_empty(), "CRIU recorded the locks");
    let restored =
        restore(&restore_opts(&images)).unwrap_or_else(|e| panic!("restoring CRIU's: {e}"));
    let _reaper = Reaper(restored.pid.0);
    assert_eq!(check_restored(restored.pid.0, &tp.ready_file), "pass");
}

// -------------------------------------------------------------------------------------
// SQLite
// -------------------------------------------------------------------------------------

/// A Python program holding a SQLite database in WAL mode with a read transaction open
/// (a shared lock on the database and a read mark in the -shm file). On SIGUSR2 it
/// checks its snapshot still reads 100 rows, ends the transaction, writes 50 rows more,
/// reads them back with an integrity check, and writes `pass` or what failed.
const SQLITE_HOLDER: &str = r#"
import os, signal, sqlite3, sys, time
db, ready = sys.argv[1], sys.argv[2]
con = sqlite3.connect(db, isolation_level=None)
con.execute("PRAGMA journal_mode=WAL")
con.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)")
con.execute("BEGIN")
for i in range(100):
    con.execute("INSERT INTO t VALUES (?, ?)", (i, "value-%d" % i))
con.execute("COMMIT")
con.execute("BEGIN")
snapshot = con.execute("SELECT count(*) FROM t").fetchone()[0]
checked = []
signal.signal(signal.SIGUSR2, lambda *a: checked.append(1))
with open(ready + ".tmp", "w") as f:
    f.write("ready %d\n" % os.getpid())
os.rename(ready + ".tmp", ready)
while not checked:
    time.sleep(0.01)
try:
    found = []
    n = con.execute("SELECT count(*) FROM t").fetchone()[0]
    if n != snapshot:
        found.append("the snapshot reads %d rows, not %d" % (n, snapshot))
    con.execute("COMMIT")
    n = con.execute("SELECT count(*) FROM t").fetchone()[0]
    con.execute("BEGIN")
    for i in range(1000, 1050):
        con.execute("INSERT INTO t VALUES (?, ?)", (i, "after-%d" % i))
    con.execute("COMMIT")
    m = con.execute("SELECT count(*) FROM t").fetchone()[0]
    if m != n + 50:
        found.append("%d rows after 50 inserts on %d" % (m, n))
    ok = con.execute("PRAGMA integrity_check").fetchone()[0]
    if ok != "ok":
        found.append("integrity: " + ok)
    result = "pass" if not found else "fail: " + "; ".join(found)
except Exception as e:
    result = "fail: %r" % e
with open(ready + ".result.tmp", "w") as f:
    f.write(result + "\n")
os.rename(ready + ".result.tmp", ready + ".result")
"#;

/// Another process using the database: `python3 -c` on `db`, returning its stdout.
fn sqlite_client(db: &Path, code: &str) -> String {
    let out = clean_command("python3")
        .args([
            "-c",
            &format!(
                "import sqlite3, sys\ncon = sqlite3.connect(sys.argv[1], timeout=5, \
                 isolation_level=None)\n{code}"
            ),
        ])
        .arg(db)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether python3 with `module` is installed (the test is skipped, saying so, if not).
fn python3_with(module: &str) -> bool {
    let ok = clean_command("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: python3 with {module} is not installed");
    }
    ok
}

/// SQLite keeps its locks (POSIX, on the database and its -shm file) across the dump
/// and restore: the same lock lines, a writer outside still works beside the restored
/// reader, the reader's snapshot holds, and it goes on writing.
#[test]
fn sqlite_in_wal_mode_keeps_its_locks_and_its_data() {
    if !python3_with("sqlite3") {
        return;
    }
    let scratch = ScratchDir::new("locks-sqlite");
    let db: PathBuf = scratch.path().join("test.db");
    let ready = scratch.path().join("sqlite.ready");
    let mut holder = TestProcess::spawn(
        &[
            "python3",
            "-c",
            SQLITE_HOLDER,
            db.to_str().unwrap(),
            ready.to_str().unwrap(),
        ],
        &scratch.path().join("sqlite.out"),
    );
    let text = wait_for_file(&ready, Duration::from_secs(30)).expect("the holder got ready");
    assert_eq!(text, format!("ready {}", holder.pid));
    // A shared lock on the database, the read mark and the "in use" byte of -shm.
    let before = fdinfo_locks(holder.pid);
    assert!(
        before.iter().filter(|l| l.contains("POSIX")).count() >= 2,
        "SQLite holds POSIX locks: {before:?}"
    );
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let refused = dump(&DumpOptions::new(Pid(holder.pid), &images)).expect_err("no flag");
    assert!(refused.to_string().contains("--file-locks"), "{refused}");
    dump(&dump_opts(holder.pid, &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = holder.child.wait();
    wait_until("the holder to go", Duration::from_secs(10), || {
        gone(holder.pid)
    });
    // Nobody holds a lock on it now: a writer could come in meanwhile; none does, as a
    // database with its owner checkpointed would be left alone.
    let restored = restore(&restore_opts(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    assert_eq!(fdinfo_locks(holder.pid), before, "the same locks");
    // Another process writes beside the open read transaction, as WAL allows.
    let written = sqlite_client(
        &db,
        "con.execute(\"INSERT INTO t VALUES (500, 'outside')\")\n\
         print(con.execute('SELECT count(*) FROM t').fetchone()[0])",
    );
    assert_eq!(written, "101");
    // ... but cannot take the database for itself while the reader's lock is there.
    let exclusive = sqlite_client(
        &db,
        "con.execute('PRAGMA busy_timeout=0')\n\
         try:\n    con.execute('PRAGMA journal_mode=DELETE')\n    print(con.execute('PRAGMA journal_mode').fetchone()[0])\n\
         except sqlite3.OperationalError as e:\n    print('busy:', e)",
    );
    assert!(
        exclusive.starts_with("busy:"),
        "leaving WAL mode under a reader: {exclusive}"
    );
    assert_eq!(check_restored(restored.pid.0, &ready), "pass");
    let total = sqlite_client(
        &db,
        "print(con.execute('SELECT count(*) FROM t').fetchone()[0])",
    );
    assert_eq!(total, "151");
}

/// Two processes sharing one fd table (`clone(CLONE_FILES)`, not a thread), both mapping
/// the file the table holds a POSIX lock on: rebuilding the second maps the file again
/// (an open and a close in the shared table, which drops the table's POSIX locks on
/// it), so the lock must be taken after that, and still be there once restored.
const CLONE_FILES_HOLDER: &str = r#"
import ctypes, fcntl, mmap, os, sys, time
path, ready = sys.argv[1], sys.argv[2]
f = open(path, "w+b")
f.write(b"\0" * 4096)
f.flush()
m = mmap.mmap(f.fileno(), 4096)
fcntl.lockf(f.fileno(), fcntl.LOCK_EX, 100, 0)
libc = ctypes.CDLL(None, use_errno=True)
CLONE_FILES, SIGCHLD, SYS_clone = 0x400, 17, 56
child = libc.syscall(SYS_clone, CLONE_FILES | SIGCHLD, 0, 0, 0, 0)
if child == 0:
    while True:
        time.sleep(1)
with open(ready + ".tmp", "w") as r:
    r.write("ready %d %d\n" % (os.getpid(), child))
os.rename(ready + ".tmp", ready)
while True:
    time.sleep(1)
"#;

/// Who holds a write lock over bytes 0-99 of `path`, as F_GETLK tells another process.
fn posix_holder(path: &Path) -> Option<(i32, i32)> {
    let f = std::fs::File::open(path).unwrap();
    let mut l = libc::flock {
        l_type: libc::F_RDLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 100,
        l_pid: 0,
    };
    // SAFETY: `l` is a valid struct flock the call may write.
    let rc = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_GETLK, &mut l) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    (l.l_type != libc::F_UNLCK as i16).then_some((i32::from(l.l_type), l.l_pid))
}

#[test]
fn a_posix_lock_of_an_fd_table_shared_by_two_processes_survives_their_rebuild() {
    if !python3_with("ctypes") {
        return;
    }
    let scratch = ScratchDir::new("locks-clone-files");
    let path = scratch.path().join("mapped");
    let ready = scratch.path().join("clone.ready");
    let mut holder = TestProcess::spawn(
        &[
            "python3",
            "-c",
            CLONE_FILES_HOLDER,
            path.to_str().unwrap(),
            ready.to_str().unwrap(),
        ],
        &scratch.path().join("clone.out"),
    );
    let text = wait_for_file(&ready, Duration::from_secs(30)).expect("the holder got ready");
    let pids: Vec<i32> = text
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids[0], holder.pid);
    assert_eq!(posix_holder(&path), Some((libc::F_WRLCK, holder.pid)));
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&dump_opts(holder.pid, &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = holder.child.wait();
    for p in &pids {
        wait_until("the dumped tree to go", Duration::from_secs(10), || {
            gone(*p)
        });
    }
    let restored = restore(&restore_opts(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    let _child = DetachedTree(vec![pids[1]]);
    // Held by the table again; /proc/locks names the process that took it, the last
    // of the table to be rebuilt.
    let held = posix_holder(&path);
    assert!(
        matches!(held, Some((ty, pid)) if ty == libc::F_WRLCK && pids.contains(&pid)),
        "{held:?}"
    );
    assert!(
        fdinfo_locks(holder.pid)
            .iter()
            .any(|l| l.contains("POSIX") && l.ends_with(" 0 99")),
        "{:?}",
        fdinfo_locks(holder.pid)
    );
}
