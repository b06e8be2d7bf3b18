//! Alternate signal stacks across dump and restore: every thread gets back exactly the
//! sigaltstack it had (none included), whatever the restorer ran on while rebuilding it,
//! and SA_ONSTACK handlers run on the right stack afterwards.

use std::path::Path;
use std::time::{Duration, Instant};

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_images::{pb, ImageReader};
use criu_rs_suite::{wait_for_file, Reaper, ScratchDir, TestProcess};

/// One line of tp-altstack's `PATH.altstack`: (name, tid, sp, size, flags).
type Reported = (String, u32, u64, u64, u32);

fn reported_altstacks(ready_file: &Path) -> Vec<Reported> {
    let text = std::fs::read_to_string(ready_file.with_extension("ready.altstack")).unwrap();
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
            (
                f[0].to_owned(),
                f[1].parse().unwrap(),
                hex(f[2]),
                hex(f[3]),
                hex(f[4]) as u32,
            )
        })
        .collect()
}

/// The sigaltstack the dump recorded for thread `tid`, read with our own decoder.
fn image_altstack(images: &Path, tid: u32) -> pb::ThreadSasEntry {
    let mut r = ImageReader::open(images.join(format!("core-{tid}.img"))).unwrap();
    let core: pb::CoreEntry = r.next_entry().unwrap().expect("a core entry");
    core.thread_core
        .and_then(|t| t.sas)
        .unwrap_or_else(|| panic!("core-{tid}.img has no sigaltstack"))
}

/// How our child `pid` ended, if it did (`CLD_KILLED` and the signal, ...), left
/// unreaped for its Reaper.
fn death_of(pid: i32) -> Option<(i32, i32)> {
    // SAFETY: siginfo_t is plain data; zero is a valid start for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: waitid(2) on our own child into a valid siginfo_t; WNOWAIT leaves it unreaped.
    let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
    // SAFETY: waitid filled `info` (si_pid stays 0 when nothing changed).
    let (who, status) = unsafe { (info.si_pid(), info.si_status()) };
    (rc == 0 && who == pid).then_some((info.si_code, status))
}

#[test]
fn every_thread_gets_its_own_sigaltstack_back() {
    let scratch = ScratchDir::new("restore-altstack");
    let mut tp = TestProcess::start(scratch.path(), "altstack", &[]);
    let ready = tp.ready_file.clone();
    let threads = reported_altstacks(&ready);
    assert_eq!(threads.len(), 5, "{threads:?}");
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();

    for (name, tid, sp, size, flags) in &threads {
        let sas = image_altstack(&images, *tid);
        assert_eq!(
            (sas.ss_sp, sas.ss_size, sas.ss_flags),
            (*sp, *size, *flags),
            "thread {name} ({tid}): the image's sigaltstack is not what the thread had"
        );
    }

    let restored =
        restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    // SAFETY: kill(2) on the restored child: the check raises SIGUSR1 in every thread.
    unsafe { libc::kill(reaper.0, libc::SIGUSR2) };
    // The result, or the restored program's death (a handler on a bad stack kills it).
    let result_file = ready.with_extension("ready.result");
    let mut result = None;
    let mut died = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while result.is_none() && died.is_none() && Instant::now() < deadline {
        result = wait_for_file(&result_file, Duration::from_millis(100));
        died = death_of(reaper.0);
    }
    assert_eq!(
        result.as_deref(),
        Some("pass"),
        "restored tp-altstack; ended by: {died:?}"
    );
}
