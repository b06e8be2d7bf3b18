//! io_uring rings at rest (criu-core's `files/io_uring.rs`): tp-uring pushes 100,000
//! requests through a ring (epoll_ctl and NOPs, as libuv batches its epoll_ctl calls),
//! reaps them all and keeps a thread waiting in io_uring_enter. The dump records the
//! ring (its sizes, counters and both regions) and leaves its io-wq worker thread out;
//! the restore makes a ring whose counters are where the program left them, in memory
//! mapped where the program had the ring. The program checks itself: the waiting thread
//! wakes for a NOP, new requests complete with their results, and the counters (in the
//! mapping and the kernel's own) are exactly the requests it made. A restored ring is
//! dumped and restored again; so are completions not reaped and submissions queued.
//! Rings whose state cannot be seen whole (made with SINGLE_ISSUER, an eventfd
//! registered, a request in flight) are refused before anything changed, and run on.
//!
//! A real program that holds a ring: a Python asyncio echo server on uvloop, whose
//! libuv keeps a ring for batching epoll_ctl.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use criu_core::dump::{dump, DumpError, DumpOptions};
use criu_core::files::FileError;
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, crit_decode, debian_crit, dump_kill_restore, installed_server, server_present,
    Reaper, ScratchDir, TestProcess,
};

/// VMA_AREA_REGULAR | VMA_FILE_SHARED.
const FILE_SHARED_VMA: u64 = 1 | (1 << 7);

fn task_names(pid: i32) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(comm) = std::fs::read_to_string(t.path().join("comm")) {
                names.push(comm.trim().to_owned());
            }
        }
    }
    names.sort();
    names
}

fn hex(v: &serde_json::Value) -> Option<u64> {
    v.as_str()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .or_else(|| v.as_u64())
}

/// Debian's crit reads the images: the ring is an EXT file, and the ring's mappings are
/// shared mappings of that file's id; the io-wq worker is no thread of the process.
fn check_images(images: &Path, pid: i32, threads: usize) {
    let Some(crit) = debian_crit() else {
        eprintln!("crit is not installed: images not cross-checked");
        return;
    };
    let files = crit_decode(&crit, &images.join("files.img")).unwrap_or_else(|e| panic!("{e}"));
    let entries = files["entries"].as_array().cloned().unwrap_or_default();
    let ext: Vec<u64> = entries
        .iter()
        .filter(|e| e["type"] == "EXT")
        .filter_map(|e| hex(&e["id"]))
        .collect();
    assert_eq!(ext.len(), 1, "one EXT file (the ring): {entries:#?}");
    let mm =
        crit_decode(&crit, &images.join(format!("mm-{pid}.img"))).unwrap_or_else(|e| panic!("{e}"));
    let vmas = mm["entries"][0]["vmas"].as_array().expect("vmas");
    let ring_vmas: Vec<_> = vmas
        .iter()
        .filter(|v| hex(&v["shmid"]) == Some(ext[0]))
        .collect();
    assert_eq!(ring_vmas.len(), 2, "the rings and SQE regions: {vmas:#?}");
    for v in &ring_vmas {
        assert_eq!(hex(&v["status"]), Some(FILE_SHARED_VMA), "{v:#?}");
    }
    let mut offsets: Vec<u64> = ring_vmas.iter().filter_map(|v| hex(&v["pgoff"])).collect();
    offsets.sort();
    assert_eq!(offsets, vec![0, 0x1000_0000], "{ring_vmas:#?}");
    let pstree = crit_decode(&crit, &images.join("pstree.img")).unwrap_or_else(|e| panic!("{e}"));
    let recorded = pstree["entries"][0]["threads"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(recorded, threads, "{pstree:#?}");
}

fn dump_again_and_restore(reaper: &Reaper, images: &Path) -> Reaper {
    use criu_core::restore::{restore, RestoreOptions};
    std::fs::create_dir_all(images).unwrap();
    dump(&DumpOptions::new(Pid(reaper.0), images)).unwrap_or_else(|e| panic!("second dump: {e}"));
    criu_rs_suite::wait_until("the dumped process to go", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{}", reaper.0)).exists()
    });
    let restored =
        restore(&RestoreOptions::new(images)).unwrap_or_else(|e| panic!("second restore: {e}"));
    assert_eq!(restored.pid.0, reaper.0, "same pid");
    Reaper(restored.pid.0)
}

#[test]
fn a_ring_at_rest_comes_back_with_its_counters_and_its_waiting_thread_twice() {
    let scratch = ScratchDir::new("iouring-rest");
    let mut tp = TestProcess::start(scratch.path(), "uring", &["--ring", "rest"]);
    let names = task_names(tp.pid);
    assert!(
        names.iter().any(|n| n.starts_with("iou-wrk")),
        "an io-wq worker thread: {names:?}"
    );
    let images = scratch.path().join("images");
    let restored = dump_kill_restore(&mut tp, &images);
    // The program's two threads; the worker is the kernel's.
    check_images(&images, tp.pid, 2);
    assert_eq!(
        task_names(restored.0).len(),
        2,
        "{:?}",
        task_names(restored.0)
    );
    // The restored ring's regions are memory the restore made: dumped and restored again.
    let again = dump_again_and_restore(&restored, &scratch.path().join("images2"));
    std::mem::forget(restored);
    assert_eq!(check_restored(again.0, &tp.ready_file), "pass");
}

/// Rings made with other setup flags: without an SQ index array (what libuv and liburing
/// use where the kernel has it), with 128-byte SQEs and 32-byte CQEs (in regions no
/// longer than 64-byte ones would take), with a larger CQ.
#[test]
fn rings_without_index_array_with_wide_entries_or_a_larger_cq_come_back() {
    for kind in ["nosqarray", "cqsize", "wide", "wide-nosqarray"] {
        let scratch = ScratchDir::new(&format!("iouring-{kind}"));
        let mut tp = TestProcess::start(
            scratch.path(),
            "uring",
            &["--ring", kind, "--count", "20000"],
        );
        let images = scratch.path().join("images");
        let restored = dump_kill_restore(&mut tp, &images);
        assert_eq!(check_restored(restored.0, &tp.ready_file), "pass", "{kind}");
    }
}

/// A completion the program has not reaped, and a submission it queued without
/// submitting, are the program's: they come back, and it reaps and submits them.
#[test]
fn completions_not_reaped_and_submissions_not_made_come_back() {
    for kind in ["unreaped", "queued"] {
        let scratch = ScratchDir::new(&format!("iouring-{kind}"));
        let mut tp = TestProcess::start(scratch.path(), "uring", &["--ring", kind]);
        let images = scratch.path().join("images");
        let restored = dump_kill_restore(&mut tp, &images);
        assert_eq!(check_restored(restored.0, &tp.ready_file), "pass", "{kind}");
    }
}

/// Rings whose state the dump cannot see whole are refused by name, with the reason,
/// and the program's ring works on (its check submits and reaps).
#[test]
fn rings_with_hidden_state_or_requests_in_flight_are_refused_and_run_on() {
    for (kind, why) in [
        ("single-issuer", "IORING_SETUP_SINGLE_ISSUER"),
        ("eventfd", "an eventfd is registered"),
        ("pending", "requests in flight (6 submitted, 5 completed)"),
    ] {
        let scratch = ScratchDir::new(&format!("iouring-refused-{kind}"));
        let mut tp = TestProcess::start(scratch.path(), "uring", &["--ring", kind]);
        let images = scratch.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let err = dump(&DumpOptions::new(Pid(tp.pid), &images)).expect_err(kind);
        let msg = err.to_string();
        assert!(
            matches!(&err, DumpError::Files(FileError::Unsupported { pid, .. }) if *pid == Pid(tp.pid)),
            "{kind}: {msg}"
        );
        assert!(
            msg.contains("io_uring") && msg.contains(why),
            "{kind}: {msg}"
        );
        assert_eq!(tp.check().trim(), "pass", "{kind}");
    }
}

/// `/usr/bin/python3` when it can import uvloop (`.ci/run` installs it from PyPI).
fn python_with_uvloop() -> Option<&'static str> {
    let python = installed_server("/usr/bin/python3")?;
    let ok = std::process::Command::new(python)
        .args(["-c", "import uvloop"])
        .status()
        .is_ok_and(|s| s.success());
    server_present("uvloop (PyPI) for /usr/bin/python3", ok).then_some(python)
}

const UVLOOP_ECHO: &str = r#"
import asyncio, sys, uvloop

async def handle(reader, writer):
    while line := await reader.readline():
        writer.write(b"echo " + line)
        await writer.drain()
    writer.close()

async def main(port):
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()

uvloop.run(main(int(sys.argv[1])))
"#;

fn echo(port: u16, line: &str) -> String {
    let mut last = None;
    for _ in 0..500 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(format!("{line}\n").as_bytes()).unwrap();
                let mut answer = String::new();
                BufReader::new(s).read_line(&mut answer).unwrap();
                return answer.trim_end().to_owned();
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no echo server on port {port}: {last:?}");
}

fn holds_a_ring(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|dir| {
        dir.flatten().any(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[io_uring]")
        })
    })
}

/// A Python asyncio server on uvloop: libuv keeps an io_uring ring for its epoll_ctl
/// calls from the loop's start. It echoes after the restore, and after a second
/// checkpoint of the restored server.
#[test]
fn a_uvloop_server_answers_after_restore_and_after_a_second_checkpoint() {
    let Some(python) = python_with_uvloop() else {
        return;
    };
    let scratch = ScratchDir::new("iouring-uvloop");
    let port = 31000 + (std::process::id() % 2000) as u16;
    let script = scratch.path().join("echo.py");
    std::fs::write(&script, UVLOOP_ECHO).unwrap();
    let port_arg = port.to_string();
    let mut srv = TestProcess::spawn(
        &[python, script.to_str().unwrap(), &port_arg],
        &scratch.path().join("echo.out"),
    );
    assert_eq!(echo(port, "one"), "echo one");
    assert!(holds_a_ring(srv.pid), "uvloop made no io_uring ring here");
    let restored = dump_kill_restore(&mut srv, &scratch.path().join("images"));
    assert_eq!(echo(port, "two"), "echo two");
    assert_eq!(echo(port, "three"), "echo three");
    let again = dump_again_and_restore(&restored, &scratch.path().join("images2"));
    std::mem::forget(restored);
    assert_eq!(echo(port, "four"), "echo four");
    assert!(holds_a_ring(again.0));
}
