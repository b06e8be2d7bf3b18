//! Time namespaces: a tree in a time namespace of its own is dumped with its clocks and
//! restored into a new one where CLOCK_MONOTONIC and CLOCK_BOOTTIME go on from the
//! dumped values; so is a tree in ours (as CRIU does), unless the restore opts out.
//! tp-clock reads the clocks every millisecond (vDSO and system call, in two processes)
//! and fails on any backward step or jump; the dump sits idle for a few seconds before
//! each restore, so a jump by the downtime cannot hide in the noise.

use std::io::{BufReader, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criu_core::dump::ns::{check_namespaces, NsError};
use criu_core::dump::{dump, DumpError, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_core::timens::{Clocks, NSEC_PER_SEC};
use criu_images::{pb, ImageReader};
use criu_rs_suite::{
    check_restored, clean_command, crit_decode, criu_4_or_skip, debian_crit, installed_server,
    redis_command, wait_for_file, wait_until, workspace_bin, DetachedTree, Reaper, ScratchDir,
    TestProcess,
};

/// Time between dump and restore: a jump by this much is what the namespace hides.
const DOWNTIME: Duration = Duration::from_secs(3);
/// The largest step tp-clock may see between two readings: well above the restore's
/// own duration and a loaded machine's scheduling delays, well below `DOWNTIME`.
const MAX_STEP_MS: &str = "1500";
/// tp-clock's offsets in its own namespace (see the program).
const TP_MONOTONIC_OFFSET: i128 = 1_000_000 * NSEC_PER_SEC;
const WAIT: Duration = Duration::from_secs(20);

fn ns_link(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/time"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn ours() -> String {
    ns_link(std::process::id() as i32)
}

fn image_files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    out.sort();
    out
}

/// The first entry of type `$ty` of the image at `$path`.
macro_rules! read_one {
    ($path:expr, $ty:ty) => {{
        let mut r = ImageReader::open($path).unwrap_or_else(|e| panic!("{e}"));
        r.next_entry::<$ty>().unwrap().expect("an entry")
    }};
}

/// The one timens image of a dump, with its id and clocks.
fn timens_image(images: &Path) -> (u32, Clocks) {
    let files = image_files(images, "timens-");
    assert_eq!(files.len(), 1, "one timens image: {files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    let id = name["timens-".len()..name.len() - ".img".len()]
        .parse()
        .unwrap();
    let entry = read_one!(&files[0], pb::TimensEntry);
    (id, Clocks::from_entry(&entry).unwrap())
}

/// The time namespace ids of the dumper (inventory) and of the tree's root.
fn time_ns_ids(images: &Path, root: i32) -> (Option<u32>, Option<u32>) {
    let inv = read_one!(images.join("inventory.img"), pb::InventoryEntry);
    let ids = read_one!(images.join(format!("ids-{root}.img")), pb::TaskKobjIdsEntry);
    (inv.root_ids.and_then(|r| r.time_ns_id), ids.time_ns_id)
}

/// Debian's crit reads the timens image; returns its monotonic seconds.
fn crit_monotonic_secs(images: &Path) -> Option<u64> {
    let crit = debian_crit()?;
    let path = &image_files(images, "timens-")[0];
    let json = crit_decode(&crit, path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json["magic"], "TIMENS", "{json}");
    json["entries"][0]["monotonic"]["tv_sec"].as_u64()
}

/// tp-clock's `PATH.clock`, and the largest forward step of all its series (ns).
fn clock_report(ready_file: &Path) -> (String, i64) {
    let text =
        std::fs::read_to_string(ready_file.with_extension("ready.clock")).unwrap_or_default();
    let max = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<i64>().ok())
        .max()
        .unwrap_or(0);
    (text, max)
}

fn start_clock(dir: &Path, timens: &str, max_step_ms: &str) -> TestProcess {
    TestProcess::start(
        dir,
        "clock",
        &["--timens", timens, "--max-step-ms", max_step_ms],
    )
}

/// Dumps `pid` (killing it), reaps `tp`'s child, waits `DOWNTIME`, restores with `opts`.
fn dump_wait_restore(tp: &mut TestProcess, images: &Path, opts: RestoreOptions) -> Reaper {
    std::fs::create_dir_all(images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    std::thread::sleep(DOWNTIME);
    let started = Instant::now();
    let r = restore(&opts).unwrap_or_else(|e| panic!("restore: {e}"));
    eprintln!("restored in {:?}", started.elapsed());
    assert_eq!(r.pid.0, tp.pid);
    Reaper(r.pid.0)
}

#[test]
fn own_time_namespace_clocks_go_on_across_dump_and_restore() {
    let scratch = ScratchDir::new("timens-own");
    let mut tp = start_clock(scratch.path(), "yes", MAX_STEP_MS);
    let before = ns_link(tp.pid);
    assert_ne!(before, ours(), "tp-clock made a time namespace of its own");
    let images = scratch.path().join("images");
    let reaper = dump_wait_restore(&mut tp, &images, RestoreOptions::new(&images));

    // The images: the tree's own namespace, as CRIU records it (timens-ID.img, ID the
    // root's time_ns_id, not the dumper's), with the namespace's clocks.
    let (dumper, tree) = time_ns_ids(&images, tp.pid);
    assert!(tree.is_some() && tree != dumper, "{tree:?} {dumper:?}");
    let (id, clocks) = timens_image(&images);
    assert_eq!(Some(id), tree);
    assert!(clocks.monotonic > TP_MONOTONIC_OFFSET, "{clocks:?}");
    assert!(clocks.boottime > 2 * TP_MONOTONIC_OFFSET, "{clocks:?}");
    if let Some(secs) = crit_monotonic_secs(&images) {
        assert_eq!(i128::from(secs), clocks.monotonic / NSEC_PER_SEC);
    }

    // A new namespace, not ours, whose offsets are the old ones less the downtime.
    assert_ne!(ns_link(reaper.0), ours());
    let offsets = Clocks::offsets_of(Pid(reaper.0)).unwrap();
    let downtime = DOWNTIME.as_nanos() as i128;
    assert!(
        offsets.monotonic <= TP_MONOTONIC_OFFSET - downtime
            && offsets.monotonic > TP_MONOTONIC_OFFSET - 120 * NSEC_PER_SEC,
        "{offsets:?}"
    );
    let verdict = check_restored(reaper.0, &tp.ready_file);
    let (table, max) = clock_report(&tp.ready_file);
    eprintln!(
        "own namespace, largest step {:.3} s:\n{table}",
        max as f64 / 1e9
    );
    assert_eq!(verdict, "pass");
}

/// A tree we restored (in the time namespace we made) is dumped and restored again,
/// and its clocks still go on.
#[test]
fn a_tree_we_restored_is_dumped_and_restored_again() {
    let scratch = ScratchDir::new("timens-twice");
    let mut tp = start_clock(scratch.path(), "no", MAX_STEP_MS);
    let first = scratch.path().join("first");
    let reaper = dump_wait_restore(&mut tp, &first, RestoreOptions::new(&first));
    // A tree in our namespace: timens-0.img with our clocks, as CRIU writes it.
    let (dumper, tree) = time_ns_ids(&first, tp.pid);
    assert_eq!(tree, dumper);
    assert_eq!(timens_image(&first).0, 0);
    crit_monotonic_secs(&first);
    // CRIU's behaviour: it gets a new one all the same.
    let made = ns_link(reaper.0);
    assert_ne!(made, ours());

    let second = scratch.path().join("second");
    std::fs::create_dir_all(&second).unwrap();
    dump(&DumpOptions::new(Pid(reaper.0), &second)).unwrap_or_else(|e| panic!("dump: {e}"));
    drop(reaper);
    std::thread::sleep(DOWNTIME);
    let r = restore(&RestoreOptions::new(&second)).unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(r.pid.0);
    let (dumper, tree) = time_ns_ids(&second, tp.pid);
    assert_ne!(tree, dumper, "the second dump found the namespace we made");
    assert_ne!(timens_image(&second).0, 0);
    assert_ne!(ns_link(reaper.0), ours());
    let verdict = check_restored(reaper.0, &tp.ready_file);
    let (table, max) = clock_report(&tp.ready_file);
    eprintln!(
        "restored twice, largest step {:.3} s:\n{table}",
        max as f64 / 1e9
    );
    assert_eq!(verdict, "pass");
}

/// `--no-timens`: the tree shares our namespace and sees the host's clocks: a jump by
/// the downtime (tree in ours), or a leap back by its offsets (tree in its own).
#[test]
fn without_a_new_namespace_the_clocks_jump() {
    let scratch = ScratchDir::new("timens-optout");
    let opt_out = |images: &Path| RestoreOptions {
        new_time_ns: false,
        ..RestoreOptions::new(images)
    };
    let mut tp = start_clock(scratch.path(), "no", "1000");
    let images = scratch.path().join("ours");
    let reaper = dump_wait_restore(&mut tp, &images, opt_out(&images));
    assert_eq!(ns_link(reaper.0), ours());
    let verdict = check_restored(reaper.0, &tp.ready_file);
    let (table, max) = clock_report(&tp.ready_file);
    eprintln!(
        "--no-timens, largest step {:.3} s:\n{table}",
        max as f64 / 1e9
    );
    assert!(verdict.contains("jumped"), "{verdict}");
    assert!(i128::from(max) >= DOWNTIME.as_nanos() as i128, "{table}");
    drop(reaper);

    let dir = scratch.path().join("own");
    std::fs::create_dir_all(&dir).unwrap();
    let mut tp = start_clock(&dir, "yes", "1000");
    let images = dir.join("images");
    let reaper = dump_wait_restore(&mut tp, &images, opt_out(&images));
    assert_eq!(ns_link(reaper.0), ours());
    let verdict = check_restored(reaper.0, &tp.ready_file);
    assert!(verdict.contains("went back"), "{verdict}");
}

/// `criu-rs restore` makes the new namespace by default; `--no-timens` (in its help)
/// leaves the tree in ours.
#[test]
fn cli_restore_and_no_timens() {
    let bin = workspace_bin("criu-rs");
    let help = clean_command(bin.to_str().unwrap())
        .args(["restore", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--no-timens"));
    let scratch = ScratchDir::new("timens-cli");
    for (flags, new_ns) in [(&[][..], true), (&["--no-timens"][..], false)] {
        let dir = scratch
            .path()
            .join(if new_ns { "default" } else { "opt-out" });
        std::fs::create_dir_all(&dir).unwrap();
        let mut tp = start_clock(&dir, "no", "60000");
        let images = dir.join("images");
        std::fs::create_dir(&images).unwrap();
        dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
        let _ = tp.child.wait();
        let out = clean_command(bin.to_str().unwrap())
            .args(["restore", "-d", "-D"])
            .arg(&images)
            .args(flags)
            .output()
            .unwrap();
        let restored = DetachedTree(vec![tp.pid]);
        assert!(out.status.success(), "{flags:?}: {out:?}");
        assert_eq!(ns_link(restored.0[0]) != ours(), new_ns, "{flags:?}");
        assert_eq!(check_restored(restored.0[0], &tp.ready_file), "pass");
    }
}

/// Waits until `pid` runs `comm` (its setup is done and it has exec'ed).
fn wait_for_comm(pid: i32, comm: &str) {
    wait_until(&format!("process {pid} to run {comm}"), WAIT, || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
    });
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// Unshares a time namespace without entering it (no exec), then sleeps.
const HALF_UNSHARED: &str = r#"
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x80) != 0:
    sys.exit("unshare: errno %d" % ctypes.get_errno())
print("ready", flush=True)
time.sleep(100)
"#;

/// Refused before the tree is touched, naming the process: a task whose children would
/// get another time namespace than its own, and a child in a time namespace of its own
/// under a root in ours (CRIU refuses both: zdtm's timens_for_kids, timens_nested).
#[test]
fn refuses_half_unshared_and_nested_time_namespaces() {
    let scratch = ScratchDir::new("timens-refusals");
    let out = scratch.path().join("half.out");
    let half = TestProcess::spawn(&["python3", "-c", HALF_UNSHARED], &out);
    assert_eq!(wait_for_file(&out, WAIT).unwrap_or_default(), "ready");
    let err = check_namespaces(&[Pid(half.pid)]).unwrap_err();
    assert!(
        matches!(err, NsError::Unsupported { kind: "time", pid, .. } if pid == Pid(half.pid)),
        "{err}"
    );
    assert!(err.to_string().contains("time_for_children"), "{err}");
    // The whole dump refuses it too, and leaves it running untraced.
    let images = scratch.path().join("half-images");
    std::fs::create_dir(&images).unwrap();
    let err = dump(&DumpOptions {
        leave_running: true,
        ..DumpOptions::new(Pid(half.pid), &images)
    })
    .unwrap_err();
    assert!(matches!(err, DumpError::Namespace(_)), "{err}");
    assert!(err.to_string().contains(&half.pid.to_string()), "{err}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", half.pid)).unwrap();
    assert!(status.contains("TracerPid:\t0"), "{status}");

    // exec enters the namespace unshare(1) made: the sleep is in it, its parent is not.
    let nested = TestProcess::spawn(
        &["sh", "-c", "unshare --time sleep 100 & wait"],
        &scratch.path().join("nested.out"),
    );
    wait_until("the nested child", WAIT, || children(nested.pid).len() == 1);
    let child = children(nested.pid)[0];
    wait_for_comm(child, "sleep");
    let err = check_namespaces(&[Pid(nested.pid), Pid(child)]).unwrap_err();
    assert!(
        matches!(err, NsError::Unsupported { kind: "time", pid, .. } if pid == Pid(child)),
        "{err}"
    );
    assert!(err.to_string().contains("nested"), "{err}");
}

/// Runs CRIU with `args`; panics with the errors of its log (`log` in `images`).
fn run_criu(criu: &Path, args: &[&str], images: &Path, log: &str) {
    let out = clean_command(criu.to_str().unwrap())
        .args(args)
        .args(["-v4", "-o", log, "-D"])
        .arg(images)
        .output()
        .expect("run criu");
    let text = std::fs::read_to_string(images.join(log)).unwrap_or_default();
    assert!(
        out.status.success(),
        "criu {args:?} failed: {:#?}",
        text.lines()
            .filter(|l| l.contains("Error"))
            .collect::<Vec<_>>()
    );
}

/// CRIU 4.2 restores our dump of a tree in its own time namespace into a new one whose
/// clocks go on from ours.
#[test]
fn criu_4_2_restores_our_time_namespace() {
    let Some(criu) = criu_4_or_skip("CRIU's restore of our timens images") else {
        return;
    };
    let scratch = ScratchDir::new("timens-criu-restores");
    let mut tp = start_clock(scratch.path(), "yes", MAX_STEP_MS);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    wait_until("the dumped pid to go", WAIT, || {
        !Path::new(&format!("/proc/{}", tp.pid)).exists()
    });
    std::thread::sleep(DOWNTIME);
    run_criu(&criu, &["restore", "-d"], &images, "restore.log");
    let restored = DetachedTree(vec![tp.pid]);
    assert_ne!(ns_link(restored.0[0]), ours());
    let verdict = check_restored(restored.0[0], &tp.ready_file);
    let (table, max) = clock_report(&tp.ready_file);
    eprintln!(
        "restored by CRIU, largest step {:.3} s:\n{table}",
        max as f64 / 1e9
    );
    assert_eq!(verdict, "pass");
}

/// A tree CRIU restored lives in the time namespace CRIU made for it: we dump it (once
/// refused) and restore it, and its clocks went on across both.
#[test]
fn we_dump_and_restore_a_tree_criu_restored() {
    let Some(criu) = criu_4_or_skip("dumping a tree CRIU restored") else {
        return;
    };
    let scratch = ScratchDir::new("timens-criu-dumps");
    let mut tp = start_clock(scratch.path(), "no", MAX_STEP_MS);
    let by_criu = scratch.path().join("by-criu");
    std::fs::create_dir(&by_criu).unwrap();
    let pid = tp.pid.to_string();
    run_criu(&criu, &["dump", "-t", &pid], &by_criu, "dump.log");
    let _ = tp.child.wait();
    wait_until("the dumped pid to go", WAIT, || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    std::thread::sleep(DOWNTIME);
    run_criu(&criu, &["restore", "-d"], &by_criu, "restore.log");
    let restored = DetachedTree(vec![tp.pid]);
    assert_ne!(ns_link(restored.0[0]), ours(), "CRIU made a time namespace");

    let ours_dir = scratch.path().join("by-us");
    std::fs::create_dir(&ours_dir).unwrap();
    dump(&DumpOptions::new(Pid(restored.0[0]), &ours_dir)).unwrap_or_else(|e| panic!("dump: {e}"));
    drop(restored);
    let (dumper, tree) = time_ns_ids(&ours_dir, tp.pid);
    assert_ne!(tree, dumper);
    std::thread::sleep(DOWNTIME);
    let r = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&ours_dir)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(r.pid.0);
    let verdict = check_restored(reaper.0, &tp.ready_file);
    let (table, max) = clock_report(&tp.ready_file);
    eprintln!(
        "CRIU, then us, largest step {:.3} s:\n{table}",
        max as f64 / 1e9
    );
    assert_eq!(verdict, "pass");
}

fn connect(port: u16) -> TcpStream {
    let mut last = None;
    for _ in 0..500 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no server on port {port}: {last:?}");
}

/// redis-server under `unshare --time --fork` (offsets of 500000 s), dumped and
/// restored: it serves its keys again, in a new time namespace whose clocks went on
/// from the old one's.
#[test]
fn redis_in_its_own_time_namespace_keeps_serving() {
    let Some(bin) = installed_server("/usr/bin/redis-server") else {
        return;
    };
    let scratch = ScratchDir::new("timens-redis");
    let port = 27000 + (std::process::id() % 2000) as u16;
    let dir = scratch.path().to_str().unwrap().to_owned();
    let port_s = port.to_string();
    let log = format!("{dir}/redis.log");
    // unshare stays outside (it waits for its child); setsid makes the server lead a
    // session of its own, so it is a tree by itself.
    let wrapper = TestProcess::spawn(
        &[
            "unshare",
            "--time",
            "--monotonic",
            "500000",
            "--boottime",
            "600000",
            "--fork",
            "setsid",
            bin,
            "--port",
            &port_s,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
            "--logfile",
            &log,
        ],
        // Not a file: unshare(1), outside the tree, writes to its output when the dump
        // kills its child ("sigprocmask unblock failed"), and a regular file the tree
        // holds must keep the size it was dumped with. The server logs to its own file.
        Path::new("/dev/null"),
    );
    wait_until("redis under unshare", WAIT, || {
        children(wrapper.pid).len() == 1
    });
    let srv = children(wrapper.pid)[0];
    wait_for_comm(srv, "redis-server");
    assert_ne!(ns_link(srv), ours());
    {
        let mut c = connect(port);
        let mut r = BufReader::new(c.try_clone().unwrap());
        for i in 0..200 {
            let (k, v) = (format!("key{i}"), format!("value-{i}"));
            assert_eq!(redis_command(&mut c, &mut r, &["SET", &k, &v]), "+OK");
        }
        // QUIT: the server closes its end first, so no connection is left to dump.
        assert_eq!(redis_command(&mut c, &mut r, &["QUIT"]), "+OK");
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
    }
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(srv), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    drop(wrapper);
    let (_, clocks) = timens_image(&images);
    assert!(clocks.monotonic > 500_000 * NSEC_PER_SEC, "{clocks:?}");
    std::thread::sleep(DOWNTIME);
    let r = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(r.pid.0);
    assert_eq!(reaper.0, srv);
    let offsets = Clocks::offsets_of(Pid(srv)).unwrap();
    assert!(
        offsets.monotonic <= 500_000 * NSEC_PER_SEC - DOWNTIME.as_nanos() as i128
            && offsets.monotonic > 499_000 * NSEC_PER_SEC,
        "{offsets:?}"
    );
    let mut c = connect(port);
    let mut r = BufReader::new(c.try_clone().unwrap());
    for i in 0..200 {
        assert_eq!(
            redis_command(&mut c, &mut r, &["GET", &format!("key{i}")]),
            format!("value-{i}")
        );
    }
}
