//! hugetlb memory: tp-hugetlb (private and shared MAP_HUGETLB memory, a hugetlb memfd
//! mapped shared and privately, a child) dumped, killed and restored, checking itself
//! after; the images as CRIU 4.2 records hugetlb memory (crit reads them), CRIU 4.2
//! restoring ours and we CRIU's.
//!
//! Huge pages are a small pool shared by the machine (`/proc/sys/vm/nr_hugepages`): each
//! test skips with a printed reason when too few are free, and the tests of this file
//! run one at a time.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_images::flags::vma::{
    VMA_ANON_PRIVATE, VMA_ANON_SHARED, VMA_AREA_MEMFD, VMA_FILE_PRIVATE, VMA_FILE_SHARED,
};
use criu_images::{pb, ImageReader};
use criu_rs_suite::{
    check_restored, clean_command, crit_decode, criu_4_or_skip, criu_log_errors, debian_crit,
    wait_until, DetachedTree, Reaper, ScratchDir, TestProcess,
};

/// Free 2 MiB huge pages tp-hugetlb needs, restored (see its doc).
const PAGES_NEEDED: u64 = 9;
/// `MAP_HUGE_2MB` (and `MFD_HUGE_2MB`).
const HUGE_2MB: u32 = 21 << 26;

/// One test at a time: each takes most of the pool.
static POOL: Mutex<()> = Mutex::new(());

/// Whether enough 2 MiB huge pages are free (free and not reserved); prints why not.
fn huge_pages_or_skip(test: &str) -> bool {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    let size = field("Hugepagesize:");
    let free = field("HugePages_Free:").unwrap_or(0);
    let reserved = field("HugePages_Rsvd:").unwrap_or(0);
    let available = free.saturating_sub(reserved);
    if size != Some(2048) || available < PAGES_NEEDED {
        eprintln!(
            "{test} skipped: {available} free 2 MiB huge pages (page size {size:?} kB), \
             {PAGES_NEEDED} needed (/proc/sys/vm/nr_hugepages)"
        );
        return false;
    }
    true
}

/// The pids of the tree rooted at `pid`.
fn tree_pids(pid: i32) -> Vec<i32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
        .collect()
}

fn wait_gone(pids: &[i32]) {
    for p in pids {
        wait_until("the dumped tree to go", Duration::from_secs(10), || {
            !Path::new(&format!("/proc/{p}")).exists()
        });
    }
}

fn start(dir: &Path, args: &[&str]) -> (TestProcess, Vec<i32>) {
    let tp = TestProcess::start(dir, "hugetlb", args);
    // The child is forked before `ready`.
    let pids = tree_pids(tp.pid);
    assert_eq!(pids.len(), 2, "tp-hugetlb and its child");
    (tp, pids)
}

fn dump_and_kill(tp: &mut TestProcess, pids: &[i32], images: &Path) {
    std::fs::create_dir_all(images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    wait_gone(pids);
}

/// The hugetlb VMAs of `pid`'s mm image: (status, flags).
fn hugetlb_vmas(images: &Path, pid: i32) -> Vec<(u32, u32)> {
    let mut r = ImageReader::open(images.join(format!("mm-{pid}.img"))).unwrap();
    let mm: pb::MmEntry = r.next_entry().unwrap().expect("an mm entry");
    mm.vmas
        .iter()
        .filter(|v| v.flags & libc::MAP_HUGETLB as u32 != 0)
        .map(|v| (v.status, v.flags))
        .collect()
}

#[test]
fn hugetlb_memory_comes_back_recorded_as_criu_does() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if !huge_pages_or_skip("hugetlb_memory_comes_back_recorded_as_criu_does") {
        return;
    }
    let scratch = ScratchDir::new("hugetlb-ours");
    let (mut tp, pids) = start(scratch.path(), &[]);
    let images = scratch.path().join("images");
    dump_and_kill(&mut tp, &pids, &images);

    let huge = libc::MAP_HUGETLB as u32 | HUGE_2MB;
    let private = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32 | huge;
    let shared = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u32 | huge;
    let mut found = hugetlb_vmas(&images, tp.pid);
    found.iter_mut().for_each(|(status, _)| *status &= !1); // VMA_AREA_REGULAR
    found.sort();
    let mut expected = vec![
        (VMA_ANON_PRIVATE, private),
        (VMA_ANON_SHARED, shared),
        (
            VMA_FILE_PRIVATE | VMA_AREA_MEMFD,
            libc::MAP_PRIVATE as u32 | huge,
        ),
        (
            VMA_FILE_SHARED | VMA_AREA_MEMFD,
            libc::MAP_SHARED as u32 | huge,
        ),
    ];
    expected.sort();
    assert_eq!(found, expected, "the parent's hugetlb VMAs (status, flags)");

    let mut r = ImageReader::open(images.join("memfd.img")).unwrap();
    let memfd: pb::MemfdInodeEntry = r.next_entry().unwrap().expect("a memfd inode");
    assert_eq!(memfd.name, b"tp-hugetlb");
    assert_eq!(memfd.size, 2 << 20);
    assert_eq!(memfd.hugetlb_flag, Some(libc::MFD_HUGETLB | HUGE_2MB));

    if let Some(crit) = debian_crit() {
        for e in std::fs::read_dir(&images).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("pages-") || name.ends_with(".log") {
                continue;
            }
            crit_decode(&crit, &p).unwrap_or_else(|e| panic!("crit on {name}: {e}"));
        }
    }

    let restored = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let restored = Reaper(restored.pid.0);
    assert_eq!(restored.0, tp.pid);
    assert_eq!(check_restored(restored.0, &tp.ready_file), "pass");
}

/// CRIU 4.2 restores our images (it remakes shared hugetlb memory as a memfd, whose
/// name maps shows: names are not compared).
#[test]
fn criu_4_2_restores_our_hugetlb_memory() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(criu) = criu_4_or_skip("CRIU's restore of our hugetlb memory") else {
        return;
    };
    if !huge_pages_or_skip("criu_4_2_restores_our_hugetlb_memory") {
        return;
    }
    let scratch = ScratchDir::new("hugetlb-criu-restores");
    let (mut tp, pids) = start(scratch.path(), &["--same-names", "no"]);
    let images = scratch.path().join("images");
    dump_and_kill(&mut tp, &pids, &images);
    let out = clean_command(criu.to_str().unwrap())
        .args(["restore", "-d", "-v4", "-o", "restore.log", "-D"])
        .arg(&images)
        .output()
        .unwrap();
    let _restored = DetachedTree(pids);
    assert!(
        out.status.success(),
        "CRIU could not restore our hugetlb memory: {:#?}",
        criu_log_errors(&images.join("restore.log"))
    );
    assert_eq!(tp.check(), "pass", "restored by CRIU");
}

/// We restore CRIU 4.2's dump (shared hugetlb memory recorded as a memfd).
#[test]
fn criu_4_2_dumps_of_hugetlb_memory_restore() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(criu) = criu_4_or_skip("restoring CRIU's dump of hugetlb memory") else {
        return;
    };
    if !huge_pages_or_skip("criu_4_2_dumps_of_hugetlb_memory_restore") {
        return;
    }
    let scratch = ScratchDir::new("hugetlb-criu-dumps");
    let (mut tp, pids) = start(scratch.path(), &["--same-names", "no"]);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let out = clean_command(criu.to_str().unwrap())
        .args(["dump", "-v4", "-o", "dump.log", "-t"])
        .arg(tp.pid.to_string())
        .arg("-D")
        .arg(&images)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "CRIU could not dump tp-hugetlb: {:#?}",
        criu_log_errors(&images.join("dump.log"))
    );
    let _ = tp.child.wait();
    wait_gone(&pids);
    let restored = restore(&RestoreOptions {
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let restored = Reaper(restored.pid.0);
    assert_eq!(check_restored(restored.0, &tp.ready_file), "pass");
}
