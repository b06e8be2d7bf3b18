//! SysV shared memory (issue 12): tp-sysvshm dumped, killed and restored, checking itself
//! after; in a namespace of its own (as CRIU) and in ours (beyond CRIU: segments only the
//! tree has attached), CRIU 4.2 restoring our images and we CRIU's, crit reading them,
//! and what a restore must not leave behind.
//!
//! Keys are unique per test and run (`key_base`), so the tests run side by side; every
//! segment a test makes under its keys is removed when it ends (`Keys`), also on failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreError, RestoreOptions};
use criu_core::sys::Pid;
use criu_images::{pb, ImageReader};
use criu_rs_suite::{
    check_restored, clean_command, crit_decode, criu_4_or_skip, criu_dump, criu_restore,
    debian_crit, wait_until, Reaper, ScratchDir, TestProcess,
};

/// Keys of tp-sysvshm for test number `n` of this run: `base + 1..=6`.
fn key_base(n: i32) -> i32 {
    0x5e00_0000 | ((std::process::id() as i32 & 0xfff) << 8) | (n << 4)
}

/// Removes, when dropped, every segment of our namespace with one of the keys
/// `base + 1..=6` (the program's, or the restored copies of them).
struct Keys(i32);

impl Drop for Keys {
    fn drop(&mut self) {
        for key in self.0 + 1..=self.0 + 6 {
            if let Some(id) = segment(key) {
                // SAFETY: IPC_RMID reads no buffer.
                unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
            }
        }
    }
}

/// The segment with `key` in our IPC namespace.
fn segment(key: i32) -> Option<i32> {
    // SAFETY: shmget with integer arguments only; without IPC_CREAT it creates nothing.
    let id = unsafe { libc::shmget(key, 0, 0) };
    (id >= 0).then_some(id)
}

/// The pids of the tree rooted at `pid`.
fn tree_pids(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        out.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
        i += 1;
    }
    out
}

fn wait_gone(pids: &[i32]) {
    for p in pids {
        wait_until("the dumped tree to go", Duration::from_secs(10), || {
            !Path::new(&format!("/proc/{p}")).exists()
        });
    }
}

/// Starts tp-sysvshm in `dir` with `args`; returns it and its tree's pids.
fn start(dir: &Path, args: &[&str]) -> (TestProcess, Vec<i32>) {
    let tp = TestProcess::start(dir, "sysvshm", args);
    // The child is forked before `ready`.
    let pids = tree_pids(tp.pid);
    assert_eq!(pids.len(), 2, "tp-sysvshm and its child");
    (tp, pids)
}

/// Dumps `tp` (killing it) into `images`, waits for its tree to go.
fn dump_and_kill(tp: &mut TestProcess, pids: &[i32], images: &Path) {
    std::fs::create_dir_all(images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    wait_gone(pids);
}

fn restore_it(images: &Path) -> Reaper {
    let r = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    Reaper(r.pid.0)
}

/// The `ipcns-shm-*.img` of a dump (there is one).
fn shm_image(images: &Path) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(images)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ipcns-shm-")
        })
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

/// The segment entries of an ipcns-shm image, with the inline contents skipped.
fn shm_entries(image: &Path) -> Vec<pb::IpcShmEntry> {
    let mut r = ImageReader::open(image).unwrap();
    let mut out = Vec::new();
    while let Some(e) = r.next_entry::<pb::IpcShmEntry>().unwrap() {
        if e.in_pagemaps != Some(true) {
            r.skip(e.size.next_multiple_of(4), "contents").unwrap();
        }
        out.push(e);
    }
    out
}

/// Debian's crit decodes every image of `images`; the ipcns-shm one with `n` segments.
fn crit_reads(images: &Path, n: usize) {
    let Some(crit) = debian_crit() else { return };
    for e in std::fs::read_dir(images).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("pages-") || name.ends_with(".log") {
            continue;
        }
        let json = crit_decode(&crit, &p).unwrap_or_else(|e| panic!("{e}"));
        if name.starts_with("ipcns-shm-") {
            let entries = json["entries"].as_array().unwrap();
            assert_eq!(entries.len(), n, "{name}");
            for e in entries {
                let size = e["size"].as_u64().unwrap();
                assert!(e["extra"].is_string() && size > 0, "{name}: {e:?}");
            }
        }
    }
}

/// Segment modes as IPC_STAT gives them (SHM_DEST 0o1000, SHM_LOCKED 0o2000), by key;
/// `removed` is the one with key 0.
fn modes_by_key(entries: &[pb::IpcShmEntry]) -> Vec<(u32, u32, u64)> {
    let mut v: Vec<(u32, u32, u64)> = entries
        .iter()
        .map(|e| (e.desc.key, e.desc.mode, e.size))
        .collect();
    v.sort();
    v
}

#[test]
fn segments_of_its_own_ipc_namespace_come_back_with_their_ids() {
    let scratch = ScratchDir::new("sysvshm-own");
    let base = key_base(1);
    let (mut tp, pids) = start(
        scratch.path(),
        &["--own-ipc-ns", "yes", "--key-base", &base.to_string()],
    );
    let images = scratch.path().join("images");
    dump_and_kill(&mut tp, &pids, &images);
    let entries = shm_entries(&shm_image(&images));
    // Every segment of the namespace, the unattached one too, with ids 0..6 as made.
    let mut ids: Vec<u32> = entries.iter().map(|e| e.desc.id).collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2, 3, 4, 5]);
    let k = |n: i32| (base + n) as u32;
    assert_eq!(
        modes_by_key(&entries),
        vec![
            (0, 0o1600, 8192),
            (k(1), 0o640, 3 * 4096 + 100),
            (k(2), 0o2600, 8192),
            (k(4), 0o644, 4096 + 5),
            (k(5), 0o600, 4096),
            (k(6), 0o600, 16 << 20),
        ]
    );
    crit_reads(&images, 6);
    let restored = restore_it(&images);
    assert_eq!(restored.0, tp.pid);
    assert_eq!(check_restored(restored.0, &tp.ready_file), "pass");
}

#[test]
fn segments_only_the_tree_attached_in_our_namespace_come_back() {
    let scratch = ScratchDir::new("sysvshm-host");
    let base = key_base(2);
    let _keys = Keys(base);
    let (mut tp, pids) = start(scratch.path(), &["--key-base", &base.to_string()]);
    let images = scratch.path().join("images");
    dump_and_kill(&mut tp, &pids, &images);
    // Saved, and gone with the tree: their keys are free for the restore.
    for n in [1, 2, 5, 6] {
        assert_eq!(
            segment(base + n),
            None,
            "key {:#x} after the dump",
            base + n
        );
    }
    let entries = shm_entries(&shm_image(&images));
    assert_eq!(entries.len(), 5, "no unattached segment in our namespace");
    assert!(entries.iter().all(|e| e.in_pagemaps == Some(false)));
    crit_reads(&images, 5);
    let restored = restore_it(&images);
    assert_eq!(check_restored(restored.0, &tp.ready_file), "pass");
}

/// Where `kernel.shm_rmid_forced` is on, a segment goes as soon as nobody has it
/// attached: reading one that nobody attached must not destroy it (the dump turns the
/// setting off meanwhile), and the restore holds every segment until the tasks have
/// attached theirs.
#[test]
fn segments_survive_dump_and_restore_where_rmid_is_forced() {
    let scratch = ScratchDir::new("sysvshm-forced");
    let base = key_base(7);
    let (mut tp, _pids) = start(
        scratch.path(),
        &[
            "--own-ipc-ns",
            "yes",
            "--rmid-forced",
            "yes",
            "--key-base",
            &base.to_string(),
        ],
    );
    let images = scratch.path().join("images-running");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions {
        leave_running: true,
        ..DumpOptions::new(Pid(tp.pid), &images)
    })
    .unwrap_or_else(|e| panic!("dump: {e}"));
    assert_eq!(shm_entries(&shm_image(&images)).len(), 6);
    assert_eq!(
        tp.check(),
        "pass",
        "the tree left running, its unattached segment too"
    );
    drop(tp);

    // A segment nobody attached cannot come back there: made by the restorer, it has no
    // creator left to keep it (see restore/sysvshm.rs). The others do.
    let scratch = ScratchDir::new("sysvshm-forced-restore");
    let (mut tp, pids) = start(
        scratch.path(),
        &[
            "--own-ipc-ns",
            "yes",
            "--rmid-forced",
            "yes",
            "--unattached",
            "no",
            "--key-base",
            &base.to_string(),
        ],
    );
    let images = scratch.path().join("images");
    dump_and_kill(&mut tp, &pids, &images);
    let restored = restore_it(&images);
    assert_eq!(check_restored(restored.0, &tp.ready_file), "pass");
}

/// A restore that fails once the segments are made removes them again.
#[test]
fn a_failed_restore_leaves_no_segment_behind() {
    let scratch = ScratchDir::new("sysvshm-fail");
    let base = key_base(3);
    let _keys = Keys(base);
    let (mut tp, pids) = start(scratch.path(), &["--key-base", &base.to_string()]);
    let images = scratch.path().join("images");
    dump_and_kill(&mut tp, &pids, &images);
    // The root's pages end early: its memory (stage 5) fails, after the segments were made.
    let pages = images.join("pages-1.img");
    let len = std::fs::metadata(&pages).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&images)
    })
    .expect_err("the restore must fail");
    assert!(
        matches!(err, RestoreError::BadImage { ref image, .. } if image == "pages-1.img"),
        "{err}"
    );
    for n in [1, 2, 5, 6] {
        assert_eq!(
            segment(base + n),
            None,
            "key {:#x} after the failure",
            base + n
        );
    }
    for p in &pids {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "{p} left behind"
        );
    }
}

/// A tree left running keeps its segments: a restore next to it would need their keys,
/// and refuses before it makes anything, naming the key.
#[test]
fn a_restore_refuses_keys_that_are_taken() {
    let scratch = ScratchDir::new("sysvshm-taken");
    let base = key_base(4);
    let _keys = Keys(base);
    let (tp, _pids) = start(scratch.path(), &["--key-base", &base.to_string()]);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions {
        leave_running: true,
        ..DumpOptions::new(Pid(tp.pid), &images)
    })
    .unwrap_or_else(|e| panic!("dump: {e}"));
    let err = restore(&RestoreOptions::new(&images)).expect_err("the keys are taken");
    let msg = err.to_string();
    assert!(
        matches!(err, RestoreError::Unsupported { .. })
            && msg.contains("key 0x")
            && msg.contains("ipcrm"),
        "{msg}"
    );
    // Nothing was made: one segment per key, the program's own.
    let listing = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    let ours = listing
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .and_then(|k| k.parse::<i32>().ok())
                .is_some_and(|k| k > base && k <= base + 6)
        })
        .count();
    assert_eq!(ours, 4);
    let mut tp = tp;
    assert_eq!(tp.check(), "pass", "the tree left running");
}

/// CRIU 4.2 restores our dump of a tree with its own IPC namespace (as it restores its
/// own), and the program passes the checks of what CRIU keeps.
#[test]
fn criu_4_2_restores_our_segments() {
    let Some(criu) = criu_4_or_skip("CRIU's restore of our SysV segments") else {
        return;
    };
    let scratch = ScratchDir::new("sysvshm-criu-restores");
    let base = key_base(5);
    let (mut tp, pids) = start(
        scratch.path(),
        &[
            "--own-ipc-ns",
            "yes",
            "--key-base",
            &base.to_string(),
            "--expect",
            "criu",
        ],
    );
    let images = scratch.path().join("images");
    dump_and_kill(&mut tp, &pids, &images);
    let _restored = criu_restore(&criu, &images, &[], pids);
    assert_eq!(tp.check(), "pass", "restored by CRIU");
}

/// We restore CRIU 4.2's dump (contents in pagemap-shmem, `in_pagemaps`).
#[test]
fn criu_4_2_dumps_of_segments_restore() {
    let Some(criu) = criu_4_or_skip("restoring CRIU's dump of SysV segments") else {
        return;
    };
    let scratch = ScratchDir::new("sysvshm-criu-dumps");
    let base = key_base(6);
    let (mut tp, pids) = start(
        scratch.path(),
        &["--own-ipc-ns", "yes", "--key-base", &base.to_string()],
    );
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    criu_dump(&criu, tp.pid, &images, &[]);
    let _ = tp.child.wait();
    wait_gone(&pids);
    let entries = shm_entries(&shm_image(&images));
    assert!(
        entries.iter().all(|e| e.in_pagemaps == Some(true)),
        "CRIU 4.2's layout"
    );
    let restored = restore_it(&images);
    assert_eq!(check_restored(restored.0, &tp.ready_file), "pass");
}

/// The PostgreSQL server binary and the `postgres` user (uid, gid), or `None` with a
/// printed reason (required when CRIU_RS_REQUIRE_SERVERS is set, as in CI).
fn postgres() -> Option<(PathBuf, u32, u32)> {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .find(|b| b.join("postgres").exists() && b.join("initdb").exists());
    let user = std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres"))
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
    });
    match (bin, user) {
        (Some(bin), Some((uid, gid))) => Some((bin, uid, gid)),
        _ => {
            assert!(
                std::env::var_os("CRIU_RS_REQUIRE_SERVERS").is_none(),
                "PostgreSQL is required but not installed"
            );
            eprintln!("skipping: PostgreSQL is not installed (apt-get install postgresql)");
            None
        }
    }
}

/// A command run as the `postgres` user, with only stdin, stdout and stderr open.
fn as_postgres(program: &Path, uid: u32, gid: u32) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = clean_command(program.to_str().unwrap());
    // Setting the uid as root also drops the supplementary groups.
    cmd.uid(uid).gid(gid);
    cmd
}

/// Kills the server's process group and removes the SysV segments it held, when the
/// test ends (also on failure).
struct Server {
    pgid: i32,
    keys: Vec<i32>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of the server this test started.
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        let pid = self.pgid;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
            // SAFETY: reaps our child if it is one; WNOHANG never blocks.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
            std::thread::sleep(Duration::from_millis(10));
        }
        for &key in &self.keys {
            if let Some(id) = segment(key) {
                // SAFETY: IPC_RMID reads no buffer.
                unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
            }
        }
    }
}

/// The keys of the SysV segments a process has attached (from its maps' names).
fn sysv_keys(pid: i32) -> Vec<i32> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut keys: Vec<i32> = maps
        .lines()
        .filter_map(|l| l.split("/SYSV").nth(1))
        .filter_map(|k| u32::from_str_radix(k.get(..8)?, 16).ok())
        .map(|k| k as i32)
        .filter(|&k| k != 0)
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The command lines of the children of `pid`.
fn children_cmdlines(pid: i32) -> Vec<String> {
    tree_pids(pid)
        .into_iter()
        .skip(1)
        .map(|c| {
            std::fs::read(format!("/proc/{c}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default()
        })
        .collect()
}

/// A real program that keeps its data in SysV shared memory: PostgreSQL with
/// `shared_memory_type=sysv` (its buffer pool, ~25 MiB here) and
/// `dynamic_shared_memory_type=sysv` (its dynamic segments), run as the `postgres` user
/// in our IPC namespace. Rows are written (dirty in the buffer pool, not checkpointed),
/// the server is dumped (killed) and restored: the rows read back, new connections (new
/// backends attaching the segments) work, and a fast shutdown checkpoints the buffers
/// and removes the segments, as PostgreSQL does.
#[test]
fn postgresql_keeps_its_shared_buffers() {
    let Some((bin, uid, gid)) = postgres() else {
        return;
    };
    let scratch = ScratchDir::new("sysvshm-postgres");
    let dir = scratch.path().to_owned();
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    let data = dir.join("data");
    let out = as_postgres(&bin.join("initdb"), uid, gid)
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only a unix socket, in our directory: the port names it and nothing else.
    let port = (50000 + std::process::id() % 10000).to_string();
    let log = std::fs::File::create(dir.join("postgres.log")).unwrap();
    std::os::unix::fs::chown(dir.join("postgres.log"), Some(uid), Some(gid)).unwrap();
    let mut cmd = as_postgres(&bin.join("postgres"), uid, gid);
    cmd.arg("-D").arg(&data);
    for setting in [
        "shared_memory_type=sysv",
        "dynamic_shared_memory_type=sysv",
        "huge_pages=off",
        "shared_buffers=16MB",
        "listen_addresses=",
        "autovacuum=off",
        "fsync=off",
        &format!("unix_socket_directories={}", dir.display()),
        &format!("port={port}"),
    ] {
        cmd.args(["-c", setting]);
    }
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid(2) in the forked child before exec is async-signal-safe; the
        // server leads its own session, as a daemon does.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut server = Server {
        pgid: pid,
        keys: Vec::new(),
    };
    let psql = |sql: &str| -> Result<String, String> {
        let out = as_postgres(&bin.join("psql"), uid, gid)
            .arg("-h")
            .arg(&dir)
            .args(["-p", &port, "-U", "postgres", "-qAt", "-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let log_text = || std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
    wait_until(
        "PostgreSQL to accept connections",
        Duration::from_secs(60),
        || psql("select 1").is_ok(),
    );
    server.keys = sysv_keys(pid);
    assert!(!server.keys.is_empty(), "no SysV segment: {}", log_text());
    psql(
        "create table kv(k int primary key, v text); \
         insert into kv select i, md5(i::text) from generate_series(1, 20000) i; \
         update kv set v = v || '!' where k % 3 = 0;",
    )
    .unwrap();
    let digest = "select count(*), md5(string_agg(v, ',' order by k)) from kv";
    let before = psql(digest).unwrap();
    // Only the server's own processes, no backend of a connection that is ending.
    wait_until("the backends to go", Duration::from_secs(20), || {
        children_cmdlines(pid)
            .iter()
            .all(|c| !c.contains("postgres postgres") && !c.contains("[local]"))
    });
    let pids = tree_pids(pid);
    let images = dir.join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = child.wait();
    wait_gone(&pids);
    let segments = shm_entries(&shm_image(&images));
    assert!(
        segments.iter().any(|s| s.size >= 16 << 20),
        "the buffer pool is saved: {segments:?}"
    );
    for &key in &server.keys {
        assert_eq!(segment(key), None, "key {key:#x} after the dump");
    }
    let restored = restore_it(&images);
    assert_eq!(restored.0, pid);
    assert_eq!(psql(digest).unwrap(), before, "the rows after the restore");
    psql("insert into kv values (20001, 'after the restore')").unwrap();
    assert_eq!(
        psql("select v from kv where k = 20001").unwrap(),
        "after the restore"
    );
    // Fast shutdown: the checkpoint writes the restored buffers, the segments go.
    // SAFETY: kill(2) on the restored server, our child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    wait_until("PostgreSQL to shut down", Duration::from_secs(60), || {
        log_text().contains("database system is shut down")
    });
    drop(restored);
    for &key in &server.keys {
        assert_eq!(segment(key), None, "key {key:#x} after the shutdown");
    }
}
