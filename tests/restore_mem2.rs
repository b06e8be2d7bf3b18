//! AIO contexts and guard regions (tp-mem2): dumped, killed, restored, and checking
//! themselves after; crit reads the images (the aio_ring_entry, the VMA_AREA_AIORING and
//! VMA_AREA_GUARD entries); CRIU 4.2 restores our images. And memory backed by
//! transparent huge pages (tp-snapshot --thp) comes back backed by them.

use std::path::Path;
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, crit_decode, criu_4_or_skip, criu_dump, criu_restore, debian_crit, Reaper,
    ScratchDir, TestProcess,
};

const VMA_AREA_AIORING: u64 = 1 << 13;
const VMA_AREA_GUARD: u64 = 1 << 16;

/// The hex address tp-mem2 wrote to `PATH<suffix>`.
fn companion_addr(tp: &TestProcess, suffix: &str) -> u64 {
    let mut path = tp.ready_file.clone().into_os_string();
    path.push(suffix);
    let text = std::fs::read_to_string(&path).unwrap();
    u64::from_str_radix(text.trim(), 16).unwrap()
}

fn dump_and_kill(tp: &mut TestProcess, images: &Path) {
    std::fs::create_dir_all(images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), images)).unwrap_or_else(|e| panic!("dump: {e}"));
    tp.wait_gone();
}

/// A VMA entry as crit shows it: start, end, status bits.
type VmaBounds = (u64, u64, u64);

/// What crit decodes of the mm image: the status and bounds of each VMA entry, and the
/// AIO rings.
fn crit_mm(images: &Path, pid: i32) -> Option<(Vec<VmaBounds>, Vec<serde_json::Value>)> {
    let crit = debian_crit()?;
    let json = crit_decode(&crit, &images.join(format!("mm-{pid}.img"))).unwrap();
    let mm = &json["entries"][0];
    let hex = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .or_else(|| v.as_u64())
            .unwrap_or_else(|| panic!("not an address: {v}"))
    };
    let status = |v: &serde_json::Value| -> u64 {
        // crit prints the status as flag names joined by " | ".
        v.as_str()
            .map(|s| {
                s.split(" | ")
                    .map(|f| match f.trim() {
                        "VMA_AREA_AIORING" => VMA_AREA_AIORING,
                        "VMA_AREA_GUARD" => VMA_AREA_GUARD,
                        _ => 0,
                    })
                    .fold(0, |a, b| a | b)
            })
            .or_else(|| v.as_u64())
            .unwrap_or(0)
    };
    let vmas = mm["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (hex(&v["start"]), hex(&v["end"]), status(&v["status"])))
        .collect();
    let aios = mm["aios"].as_array().cloned().unwrap_or_default();
    Some((vmas, aios))
}

#[test]
fn aio_context_and_guard_region_come_back() {
    let scratch = ScratchDir::new("mem2");
    let mut tp = TestProcess::start(scratch.path(), "mem2", &[]);
    let ring = companion_addr(&tp, ".aio");
    let guard_map = companion_addr(&tp, ".guard");
    let images = scratch.path().join("images");
    dump_and_kill(&mut tp, &images);
    if let Some((vmas, aios)) = crit_mm(&images, tp.pid) {
        let guards: Vec<_> = vmas.iter().filter(|v| v.2 & VMA_AREA_GUARD != 0).collect();
        assert_eq!(
            guards,
            vec![&(guard_map + 3 * 4096, guard_map + 5 * 4096, VMA_AREA_GUARD)],
            "one guard region, pages 3 and 4"
        );
        assert!(
            vmas.iter()
                .any(|v| v.0 == ring && v.2 & VMA_AREA_AIORING != 0),
            "the ring's VMA: {vmas:x?}"
        );
        assert_eq!(aios.len(), 1, "{aios:?}");
        assert_eq!(aios[0]["nr_req"].as_u64(), Some(126), "{aios:?}");
        assert_eq!(aios[0]["ring_len"].as_u64(), Some(8192), "{aios:?}");
    }
    let r = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let restored = Reaper(r.pid.0);
    assert_eq!(check_restored(restored.0, &tp.ready_file), "pass");
}

/// CRIU 4.2 restores our images of both.
#[test]
fn criu_4_2_restores_our_aio_ring_and_guards() {
    let Some(criu) = criu_4_or_skip("CRIU's restore of our AIO ring and guard region") else {
        return;
    };
    let scratch = ScratchDir::new("mem2-criu-restores");
    let mut tp = TestProcess::start(scratch.path(), "mem2", &[]);
    let images = scratch.path().join("images");
    dump_and_kill(&mut tp, &images);
    let _restored = criu_restore(&criu, &images, &[], vec![tp.pid]);
    assert_eq!(tp.check(), "pass", "restored by CRIU");
}

/// We restore CRIU 4.2's dump of both (its guard entries follow the mappings).
#[test]
fn criu_4_2_dumps_of_aio_ring_and_guards_restore() {
    let Some(criu) = criu_4_or_skip("restoring CRIU's dump of an AIO ring and guard region") else {
        return;
    };
    let scratch = ScratchDir::new("mem2-criu-dumps");
    let mut tp = TestProcess::start(scratch.path(), "mem2", &[]);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    criu_dump(&criu, tp.pid, &images, &[]);
    tp.wait_gone();
    let r = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let restored = Reaper(r.pid.0);
    assert_eq!(check_restored(restored.0, &tp.ready_file), "pass");
}

/// AnonHugePages of `pid` (smaps_rollup), in KiB.
fn anon_huge_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Memory the program asked transparent huge pages for (MADV_HUGEPAGE) and had them:
/// restored, it has them again, not 512 small pages each for khugepaged to collapse
/// minutes later; and its data is intact (the program checks every word).
#[test]
fn huge_page_memory_comes_back_in_huge_pages() {
    let scratch = ScratchDir::new("mem2-thp");
    let images = scratch.path().join("images");
    let mut tp = TestProcess::start(scratch.path(), "snapshot", &["--mib", "64", "--thp", "1"]);
    let before = anon_huge_kib(tp.pid);
    if before < 16 << 10 {
        eprintln!(
            "skipping: the program got {before} KiB of huge pages (THP off or memory fragmented)"
        );
        return;
    }
    dump_and_kill(&mut tp, &images);
    let r = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let restored = Reaper(r.pid.0);
    let after = anon_huge_kib(restored.0);
    assert!(
        after * 2 >= before,
        "huge pages: {before} KiB before the dump, {after} KiB after the restore"
    );
    assert_eq!(check_restored(restored.0, &tp.ready_file), "pass");
}
