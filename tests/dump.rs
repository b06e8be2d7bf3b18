//! The dump engine against real processes: what it writes is read by Debian's crit and
//! matches what /proc showed; the tree is left running, killed or untouched as asked.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use criu_core::dump::release::ReleaseMemory;
use criu_core::dump::{dump, DumpError, DumpOptions, Stage};
use criu_core::sys::Pid;
use criu_images::crit::ImageDir;
use criu_rs_suite::{
    crit_decode, debian_crit, process_group_of, task_state, tracer_pid, wait_for_file, wait_until,
    ScratchDir, TestProcess,
};

const SHELL_LOOP: &str = "i=0; while true; do echo $i; i=$(expr $i + 1); sleep 1; done";

fn opts(pid: i32, dir: &Path) -> DumpOptions {
    DumpOptions {
        leave_running: true,
        ..DumpOptions::new(Pid(pid), dir)
    }
}

/// Every non-raw image in `dir` decodes with Debian's crit.
fn crit_reads_all(dir: &Path) {
    let Some(crit) = debian_crit() else { return };
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("pages-") || name.ends_with(".log") {
            continue;
        }
        crit_decode(&crit, &path).unwrap_or_else(|e| panic!("{e}"));
        n += 1;
    }
    assert!(n >= 8, "only {n} images in {}", dir.display());
}

/// Every file the dump wrote in `dir` (pages, pagemaps, shared memory, files...) is
/// 0600: images hold the memory and secrets of the tree.
fn images_are_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
}

/// All pids of the tree under `root`, from /proc.
fn proc_tree(root: i32) -> BTreeSet<(i32, i32)> {
    let mut out = BTreeSet::new();
    let mut queue = vec![(root, 0)];
    while let Some((pid, ppid)) = queue.pop() {
        // A child that exits while we look is simply not part of the tree.
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        out.insert((pid, ppid));
        for task in tasks.flatten() {
            let tid = task.file_name().to_string_lossy().into_owned();
            let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
                .unwrap_or_default();
            queue.extend(
                kids.split_whitespace()
                    .map(|k| (k.parse::<i32>().unwrap(), pid)),
            );
        }
    }
    out
}

/// (pid, ppid) pairs from pstree.img (the root's ppid is 0 in images).
fn image_tree(dir: &Path) -> BTreeSet<(i32, i32)> {
    let mut r = criu_images::ImageReader::open(dir.join("pstree.img")).unwrap();
    let mut out = BTreeSet::new();
    while let Some(e) = r.next_entry::<criu_images::pb::PstreeEntry>().unwrap() {
        out.insert((e.pid as i32, e.ppid as i32));
    }
    out
}

/// fd number -> what it points at, from /proc, in crit's words for the kinds both know.
fn proc_fds(pid: i32) -> BTreeSet<(i32, String)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let fd: i32 = e.file_name().to_string_lossy().parse().unwrap();
            let link = std::fs::read_link(e.path())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            // Only regular files, directories and devices print as their path in crit's
            // fds view; FIFOs, memfds and deleted files print by kind and id.
            let plain_path = std::fs::metadata(e.path()).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                let t = m.file_type();
                (t.is_file() || t.is_dir() || t.is_char_device()) && !link.ends_with("(deleted)")
            });
            let link = match link.strip_prefix("pipe:") {
                Some(ino) => format!("pipe{ino}"),
                None if link.starts_with('/') && !plain_path => format!("other:{link}"),
                None => link,
            };
            (fd, link)
        })
        .collect()
}

/// Per pid, the fds `crit x DIR fds` lists (cwd/root left out).
fn image_fds(dir: &Path) -> std::collections::BTreeMap<i32, BTreeSet<(i32, String)>> {
    let text = ImageDir::new(dir).fds().unwrap();
    let mut out = std::collections::BTreeMap::new();
    let mut current = 0;
    for line in text.lines() {
        if !line.starts_with('\t') {
            current = line.trim().parse().unwrap();
            out.insert(current, BTreeSet::new());
            continue;
        }
        let (fd, what) = line.trim().split_once(": ").unwrap();
        if let Ok(fd) = fd.parse::<i32>() {
            out.get_mut(&current).unwrap().insert((fd, what.to_owned()));
        }
    }
    out
}

/// (start, end, perms) of every mapping, with [vvar] + [vvar_vclock] as one area.
fn proc_maps(pid: i32) -> Vec<(u64, u64, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut out: Vec<(u64, u64, String)> = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (s, e) = it.next().unwrap().split_once('-').unwrap();
        let perms = it.next().unwrap()[..3].to_owned();
        let (s, e) = (
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
        );
        if line.ends_with("[vvar_vclock]") {
            if let Some(last) = out.last_mut() {
                if last.1 == s {
                    last.1 = e;
                    continue;
                }
            }
        }
        out.push((s, e, perms));
    }
    out
}

fn image_maps(dir: &Path) -> std::collections::BTreeMap<i32, Vec<(u64, u64, String)>> {
    let text = ImageDir::new(dir).mems().unwrap();
    let mut out = std::collections::BTreeMap::new();
    let mut current = 0;
    for line in text.lines() {
        if !line.starts_with('\t') {
            current = line.trim().parse().unwrap();
            out.insert(current, Vec::new());
            continue;
        }
        let mut it = line.split_whitespace();
        let range = it.next().unwrap();
        if range == "exe" {
            continue;
        }
        let (s, e) = range.split_once('-').unwrap();
        let perms = it.next().unwrap().to_owned();
        out.get_mut(&current).unwrap().push((
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
            perms,
        ));
    }
    out
}

/// Private pages a dump must save, from smaps (an independent count): anonymous and
/// swapped pages of every mapping, plus the whole vDSO (CRIU always saves it, resident or
/// not: its restore reads it); not [vvar]/[vsyscall].
fn resident_private_pages(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut total_kb = 0;
    let mut name = String::new();
    let mut shared = false;
    for line in text.lines() {
        let first = line.split(' ').next().unwrap_or("");
        if first.contains('-') && first.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            let cols: Vec<&str> = line.split_whitespace().collect();
            shared = cols[1].ends_with('s');
            name = cols.get(5).map(|s| s.to_string()).unwrap_or_default();
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let kb: u64 = value.trim().trim_end_matches(" kB").parse().unwrap_or(0);
        match key {
            _ if shared || name == "[vvar]" || name == "[vvar_vclock]" || name == "[vsyscall]" => {}
            "Size" if name == "[vdso]" => total_kb += kb,
            "Anonymous" | "Swap" if name != "[vdso]" => total_kb += kb,
            _ => {}
        }
    }
    total_kb / 4
}

/// Whether the images record `pid` as a zombie (core task_state 6): it has no memory
/// or files images.
fn is_zombie_in_images(dir: &Path, pid: i32) -> bool {
    let mut r = criu_images::ImageReader::open(dir.join(format!("core-{pid}.img"))).unwrap();
    let core: criu_images::pb::CoreEntry = r.next_entry().unwrap().unwrap();
    core.tc
        .is_some_and(|tc| tc.task_state == criu_core::dump::task::TASK_ZOMBIE)
}

fn pages_in_pagemaps(dir: &Path, pids: &[i32]) -> u64 {
    pids.iter()
        .filter(|pid| !is_zombie_in_images(dir, **pid))
        .map(|pid| {
            let mut r =
                criu_images::ImageReader::open(dir.join(format!("pagemap-{pid}.img"))).unwrap();
            let _head: criu_images::pb::PagemapHead = r.next_entry().unwrap().unwrap();
            let mut n = 0;
            while let Some(e) = r.next_entry::<criu_images::pb::PagemapEntry>().unwrap() {
                n += e.nr_pages.unwrap_or(0);
            }
            n
        })
        .sum()
}

/// Dumps with --leave-running and checks the images against /proc taken while frozen.
fn dump_and_compare(pid: i32, dir: &Path) -> criu_core::dump::DumpStats {
    // SAFETY: kill(2) on a process group of our own test: freeze it so /proc holds still
    // for the comparison (the dump sees it stopped, as it would a stopped job).
    unsafe { libc::kill(-pid, libc::SIGSTOP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while task_state(pid) != Some('T') {
        if std::time::Instant::now() > deadline {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
            panic!(
                "{pid} did not stop: state {:?}, wchan {wchan}\n{status}",
                task_state(pid)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
        // A stop that raced with a fork (the new child was not yet in the group) is
        // simply asked for again. One that caught a vfork child before its exec leaves
        // the parent waiting for it in the kernel: let the group run on a moment first.
        if task_state(pid) == Some('D') {
            // SAFETY: kill(2) on our own test's process group.
            unsafe { libc::kill(-pid, libc::SIGCONT) };
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: kill(2) on our own test's process group.
        unsafe { libc::kill(-pid, libc::SIGSTOP) };
    }
    // Every member of the group stopped, not only its leader: a child in the middle of
    // its exec takes the stop only once the exec is done, and until then its maps change
    // (the loader maps libc) under the comparison. (Members of other groups never get
    // the SIGSTOP.)
    wait_until(
        "every process of the group stopped",
        Duration::from_secs(10),
        || {
            proc_tree(pid)
                .iter()
                .filter(|(p, _)| process_group_of(*p) == Some(pid))
                .all(|(p, _)| matches!(task_state(*p), Some('T') | Some('Z') | None))
        },
    );
    let tree = proc_tree(pid);
    let pids: Vec<i32> = tree.iter().map(|(p, _)| *p).collect();
    let fds: Vec<_> = pids.iter().map(|p| (*p, proc_fds(*p))).collect();
    let maps: Vec<_> = pids.iter().map(|p| (*p, proc_maps(*p))).collect();
    let expected_pages: u64 = pids.iter().map(|p| resident_private_pages(*p)).sum();

    let stats = dump(&opts(pid, dir)).unwrap_or_else(|e| panic!("dump failed: {e}"));
    crit_reads_all(dir);
    images_are_private(dir);
    assert_eq!(image_tree(dir), tree, "pstree.img against /proc");
    let img_fds = image_fds(dir);
    for (p, proc) in fds {
        let img = &img_fds[&p];
        let numbers = |s: &BTreeSet<(i32, String)>| s.iter().map(|(fd, _)| *fd).collect::<Vec<_>>();
        assert_eq!(numbers(img), numbers(&proc), "fd numbers of {p}");
        for (fd, link) in &proc {
            if link.starts_with('/') || link.starts_with("pipe[") {
                assert!(
                    img.contains(&(*fd, link.clone())),
                    "fd {fd} of {p}: /proc says {link}, images say {img:?}"
                );
            }
        }
    }
    let img_maps = image_maps(dir);
    for (p, proc) in maps {
        assert_eq!(img_maps[&p], proc, "memory map of {p}");
    }
    assert_eq!(
        pages_in_pagemaps(dir, &pids),
        expected_pages,
        "pages in pagemaps vs resident private pages"
    );
    assert_eq!(
        stats.pages_written, expected_pages,
        "pages written vs resident private pages"
    );
    // SAFETY: as above: let the group run again.
    unsafe { libc::kill(-pid, libc::SIGCONT) };
    stats
}

#[test]
fn shell_loop_dump_matches_proc_and_keeps_running() {
    let scratch = ScratchDir::new("dump-shell-loop");
    let out = scratch.path().join("loop.out");
    let sh = TestProcess::spawn(&["/bin/sh", "-c", SHELL_LOOP], &out);
    wait_until("two lines of output", Duration::from_secs(10), || {
        std::fs::read_to_string(&out)
            .map(|t| t.lines().count() >= 2)
            .unwrap_or(false)
    });
    // The loop has a child only while `sleep` (or `expr`) runs: a stop that lands
    // between two children finds the shell alone, and that dump is taken again (each
    // is still compared with /proc) until one holds both processes.
    let mut stats = None;
    for attempt in 0..5 {
        wait_until("the sleep child", Duration::from_secs(10), || {
            proc_tree(sh.pid).len() == 2
        });
        let images = scratch.path().join(format!("images-{attempt}"));
        std::fs::create_dir(&images).unwrap();
        let s = dump_and_compare(sh.pid, &images);
        if s.processes == 2 {
            stats = Some(s);
            break;
        }
    }
    assert_eq!(
        stats.map(|s| s.processes),
        Some(2),
        "no dump found the sleep child"
    );
    // --leave-running: it counts on, untraced.
    let before = std::fs::read_to_string(&out).unwrap().lines().count();
    wait_until("the loop to count on", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).unwrap().lines().count() > before
    });
    assert_eq!(tracer_pid(sh.pid), Some(0));
}

#[test]
fn default_dump_kills_the_tree() {
    let scratch = ScratchDir::new("dump-kills");
    let sh = TestProcess::spawn(&["/bin/sh", "-c", SHELL_LOOP], &scratch.path().join("out"));
    wait_until("the sleep child", Duration::from_secs(10), || {
        proc_tree(sh.pid).len() == 2
    });
    let pids: Vec<i32> = proc_tree(sh.pid).iter().map(|(p, _)| *p).collect();
    dump(&DumpOptions::new(Pid(sh.pid), scratch.path())).unwrap();
    for pid in pids {
        wait_until("the tree to die", Duration::from_secs(10), || {
            matches!(task_state(pid), None | Some('Z'))
        });
    }
    assert!(scratch.path().join("inventory.img").exists());
}

#[test]
fn multithreaded_program_dumps_every_thread() {
    let scratch = ScratchDir::new("dump-threads");
    let mut tp = TestProcess::start(scratch.path(), "threads", &["--threads", "4"]);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let stats = dump_and_compare(tp.pid, &images);
    assert_eq!(stats.threads, 5);
    let mut r = criu_images::ImageReader::open(images.join("pstree.img")).unwrap();
    let e: criu_images::pb::PstreeEntry = r.next_entry().unwrap().unwrap();
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{}/task", tp.pid))
        .unwrap()
        .map(|t| t.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    tids.sort();
    let mut image_tids = e.threads.clone();
    image_tids.sort();
    assert_eq!(image_tids, tids);
    for tid in &tids {
        assert!(
            images.join(format!("core-{tid}.img")).exists(),
            "core image of thread {tid}"
        );
    }
    assert_eq!(tp.check(), "pass");
}

#[test]
fn one_gib_of_memory_is_saved_page_for_page() {
    let scratch = ScratchDir::new("dump-1gib");
    let mut tp = TestProcess::start(scratch.path(), "memhog", &["--mib", "1024"]);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let stats = dump_and_compare(tp.pid, &images);
    assert!(
        stats.pages_written >= 262_144,
        "{} pages written",
        stats.pages_written
    );
    assert_eq!(tp.check(), "pass");
}

#[test]
fn tree_sharing_a_pipe_and_shared_memory() {
    let scratch = ScratchDir::new("dump-tree");
    let mut tp = TestProcess::start(scratch.path(), "tree", &[]);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump_and_compare(tp.pid, &images);
    // The shared anonymous region is saved once, and every process maps the same object.
    let shmem: Vec<_> = std::fs::read_dir(&images)
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()
                .filter(|n| n.starts_with("pagemap-shmem-"))
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(shmem.len(), 1, "{shmem:?}");
    assert_eq!(tp.check(), "pass");
}

#[test]
fn failure_at_every_stage_leaves_the_target_intact() {
    for stage in [
        Stage::Check,
        Stage::Freeze,
        Stage::Files,
        Stage::Memory,
        Stage::Injected,
        Stage::Tasks,
        Stage::Pages,
        Stage::Images,
    ] {
        let scratch = ScratchDir::new(&format!("dump-fail-{stage:?}"));
        // 16 MiB is above the size from which a killed-after-dump process's saved memory
        // is released during the copy: failing at Pages or Images proves it comes back.
        let mut tp = TestProcess::start(scratch.path(), "memhog", &["--mib", "16"]);
        let err = dump(&DumpOptions {
            fail_after: Some(stage),
            release_memory: ReleaseMemory::Always,
            ..DumpOptions::new(Pid(tp.pid), scratch.path())
        })
        .unwrap_err();
        assert!(matches!(err, DumpError::Injected(s) if s == stage), "{err}");
        assert!(err.to_string().contains(&format!("{stage:?}")), "{err}");
        assert_eq!(
            tracer_pid(tp.pid),
            Some(0),
            "still traced after failing at {stage:?}"
        );
        wait_until("running again", Duration::from_secs(10), || {
            matches!(task_state(tp.pid), Some('S') | Some('R'))
        });
        assert_eq!(
            tp.check(),
            "pass",
            "self-check after a dump failing at {stage:?}"
        );
    }
}

#[test]
fn a_timer_firing_while_memory_is_released_finds_it_intact() {
    // A SIGALRM every 500 us: its handler, run during the dump, would read the memory the
    // dump has released so far (the release keeps every signal blocked while it runs).
    // The dump fails after the pages stage, so the memory is written back and the
    // program goes on.
    let scratch = ScratchDir::new("dump-release-ticker");
    let mut tp = TestProcess::start(
        scratch.path(),
        "memhog",
        &["--mib", "64", "--ticker-us", "500"],
    );
    let err = dump(&DumpOptions {
        fail_after: Some(Stage::Pages),
        release_memory: ReleaseMemory::Always,
        ..DumpOptions::new(Pid(tp.pid), scratch.path())
    })
    .unwrap_err();
    assert!(matches!(err, DumpError::Injected(Stage::Pages)), "{err}");
    wait_until("running again", Duration::from_secs(10), || {
        matches!(task_state(tp.pid), Some('S') | Some('R'))
    });
    assert_eq!(tp.check(), "pass");
}

/// The first executable file mapping of `pid` (where the dump writes its injected code
/// for a moment): its address and the file's bytes of its first page.
fn first_text_page(pid: i32) -> (u64, Vec<u8>) {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line = maps
        .lines()
        .find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 6 && f[1].contains('x') && f[1].ends_with('p') && f[5].starts_with('/')
        })
        .expect("an executable file mapping");
    let f: Vec<&str> = line.split_whitespace().collect();
    let start = u64::from_str_radix(f[0].split('-').next().unwrap(), 16).unwrap();
    let offset = u64::from_str_radix(f[2], 16).unwrap();
    let mut page = vec![0u8; 4096];
    std::fs::File::open(f[5])
        .unwrap()
        .read_exact_at(&mut page, offset)
        .unwrap();
    (start, page)
}

/// A text page that a first dump wrote its injected code into (and put back) is a
/// private copy from then on, saved with the program's pages. A second, default dump
/// releases memory while it copies, writing its own code over the same words for a
/// moment (releasing forced: by default it happens only where it pays): the pages file
/// must hold the program's bytes there. The program's region lies below its binary, so
/// the text is copied late, while releases run.
#[test]
fn a_second_dump_saves_the_program_text_not_ours() {
    use std::os::unix::fs::FileExt;
    let scratch = ScratchDir::new("dump-text-twice");
    let mut tp = TestProcess::start(
        scratch.path(),
        "memhog",
        &["--mib", "128", "--below-binary", "true"],
    );
    let (text_at, text) = first_text_page(tp.pid);
    let first = scratch.path().join("first");
    std::fs::create_dir_all(&first).unwrap();
    dump(&opts(tp.pid, &first)).unwrap_or_else(|e| panic!("dump -R: {e}"));
    let second = scratch.path().join("second");
    std::fs::create_dir_all(&second).unwrap();
    dump(&DumpOptions {
        release_memory: ReleaseMemory::Always,
        ..DumpOptions::new(Pid(tp.pid), &second)
    })
    .unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    let restored = criu_core::restore::restore(&criu_core::restore::RestoreOptions::new(&second))
        .unwrap_or_else(|e| panic!("restore: {e}"));
    assert_eq!(restored.pid.0, tp.pid, "same pid");
    let restored = criu_rs_suite::Reaper(restored.pid.0);
    let mut page = vec![0u8; 4096];
    std::fs::File::open(format!("/proc/{}/mem", restored.0))
        .unwrap()
        .read_exact_at(&mut page, text_at)
        .unwrap();
    assert!(
        page == text,
        "the restored program's text at {text_at:#x} differs from its file"
    );
    assert_eq!(
        criu_rs_suite::check_restored(tp.pid, &tp.ready_file),
        "pass"
    );
}

#[test]
fn bad_targets_give_one_clear_error_and_change_nothing() {
    let scratch = ScratchDir::new("dump-bad");
    let err = dump(&DumpOptions::new(Pid(i32::MAX - 7), scratch.path())).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let err = dump(&DumpOptions::new(Pid(1), scratch.path())).unwrap_err();
    assert!(err.to_string().contains("init process"), "{err}");
    let mut tp = TestProcess::start(scratch.path(), "looper", &["--interval-ms", "10"]);
    for bad in ["/proc/no-such-dir", "/proc"] {
        let err = dump(&DumpOptions::new(Pid(tp.pid), bad)).unwrap_err();
        assert!(err.to_string().contains(bad), "{err}");
        assert_eq!(tracer_pid(tp.pid), Some(0));
    }
    assert_eq!(tp.check(), "pass");
    assert!(wait_for_file(&scratch.path().join("looper.out"), Duration::from_secs(1)).is_some());
}

#[test]
fn every_fd_kind_is_saved_with_its_data() {
    let scratch = ScratchDir::new("dump-fds");
    let work = scratch.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut tp = TestProcess::start(scratch.path(), "fds", &["--dir", work.to_str().unwrap()]);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump_and_compare(tp.pid, &images);
    let decoded = |name: &str| {
        let mut r =
            criu_images::ImageReader::open(images.join(name)).unwrap_or_else(|e| panic!("{e}"));
        let doc = criu_images::crit::decode(&mut r, Default::default()).unwrap();
        doc.to_string()
    };
    let b64 = |s: &[u8]| criu_images::json::encode_base64(s).trim_end().to_owned();
    assert!(
        decoded("pipes-data.img").contains(&b64(b"hello-pipe")),
        "pipe data"
    );
    assert!(
        decoded("sk-queues.img").contains(&b64(b"hello-sock")),
        "socket queue"
    );
    let files = decoded("files.img");
    for kind in [
        "PIPE",
        "FIFO",
        "UNIXSK",
        "INETSK",
        "EVENTFD",
        "EVENTPOLL",
        "SIGNALFD",
        "TIMERFD",
        "INOTIFY",
        "MEMFD",
        "NS",
        "REG",
    ] {
        assert!(
            files.contains(&format!("\"type\":\"{kind}\"")),
            "no {kind} in files.img"
        );
    }
    assert!(images.join("memfd.img").exists());
    assert_eq!(tp.check(), "pass");
}

#[test]
fn tree_forking_all_the_time_dumps_reliably() {
    // Children appear and exit constantly: the dump must cope with tasks that vanish,
    // turn into zombies or are born while it looks.
    let scratch = ScratchDir::new("dump-forking");
    let sh = TestProcess::spawn(
        &["/bin/sh", "-c", "while true; do /bin/true; done"],
        &scratch.path().join("out"),
    );
    for i in 0..10 {
        let dir = scratch.path().join(format!("images-{i}"));
        std::fs::create_dir(&dir).unwrap();
        dump(&opts(sh.pid, &dir)).unwrap_or_else(|e| panic!("dump {i}: {e}"));
        assert_eq!(tracer_pid(sh.pid), Some(0));
    }
    crit_reads_all(&scratch.path().join("images-9"));
}

#[test]
fn signals_timers_and_handlers_are_saved() {
    let scratch = ScratchDir::new("dump-signals");
    let mut tp = TestProcess::start(scratch.path(), "signals", &[]);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump_and_compare(tp.pid, &images);
    let mut r =
        criu_images::ImageReader::open(images.join(format!("core-{}.img", tp.pid))).unwrap();
    let core: criu_images::pb::CoreEntry = r.next_entry().unwrap().unwrap();
    let tc = core.tc.expect("task core");
    let timers = tc.timers.expect("timers");
    assert_eq!(
        timers.real.isec * 1_000_000 + timers.real.iusec,
        100_000,
        "ITIMER_REAL interval"
    );
    assert_eq!(timers.posix.len(), 2, "{:?}", timers.posix);
    let monotonic = libc::CLOCK_MONOTONIC as u32;
    let posix = timers
        .posix
        .iter()
        .find(|t| t.clock_id == monotonic)
        .unwrap();
    assert_eq!(posix.si_signo as i32, libc::SIGRTMIN() + 2);
    assert_eq!(posix.isec * 1_000_000_000 + posix.insec, 50_000_000);
    // The main thread's CPU-time clock: negative, the thread id inverted above the
    // three kind bits (CPUCLOCK_PERTHREAD | CPUCLOCK_SCHED), as the kernel shows it.
    let cpu = timers
        .posix
        .iter()
        .find(|t| t.clock_id != monotonic)
        .unwrap();
    let clock = cpu.clock_id as i32;
    assert_eq!((!(clock >> 3), clock & 7), (tp.pid, 6), "{cpu:?}");
    assert_eq!(cpu.isec, 3600);
    let usr1 = &tc.sigactions[libc::SIGUSR1 as usize - 1];
    assert!(usr1.sigaction > 1, "SIGUSR1 handler saved: {usr1:?}");
    assert_ne!(usr1.flags & libc::SA_SIGINFO as u64, 0);
    let private = core
        .thread_core
        .as_ref()
        .unwrap()
        .signals_p
        .as_ref()
        .unwrap();
    let shared = tc.signals_s.as_ref().unwrap();
    let signo =
        |s: &criu_images::pb::SiginfoEntry| i32::from_le_bytes(s.siginfo[..4].try_into().unwrap());
    assert!(
        private.signals.iter().any(|s| signo(s) == libc::SIGUSR1),
        "private pending SIGUSR1"
    );
    assert!(
        shared
            .signals
            .iter()
            .any(|s| signo(s) == libc::SIGRTMIN() + 1),
        "shared pending SIGRTMIN+1"
    );
    assert_ne!(
        core.thread_core.as_ref().unwrap().sas.unwrap().ss_sp,
        0,
        "sigaltstack"
    );
    assert_eq!(tp.check(), "pass");
}

#[test]
fn shell_jobs_need_the_shell_job_option() {
    // A child of ours in its own process group but in our session: a shell job.
    let scratch = ScratchDir::new("dump-shell-job");
    let mut child = std::process::Command::new("sleep")
        .arg("100")
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    wait_until("sleeping", Duration::from_secs(10), || {
        task_state(pid) == Some('S')
    });
    let err = dump(&DumpOptions::new(Pid(pid), scratch.path())).unwrap_err();
    assert!(err.to_string().contains("--shell-job"), "{err}");
    assert_eq!(task_state(pid), Some('S'), "refusal changed nothing");
    let result = dump(&DumpOptions {
        shell_job: true,
        leave_running: true,
        ..DumpOptions::new(Pid(pid), scratch.path())
    });
    let _ = child.kill();
    let _ = child.wait();
    result.unwrap();
}

#[test]
fn zombies_and_stopped_tasks_are_recorded() {
    let scratch = ScratchDir::new("dump-zombie");
    // A parent that never reaps its exited child, and a stopped child.
    let script = "import os, signal, time\nz = os.fork()\nif z == 0: os._exit(7)\ns = os.fork()\nif s == 0:\n    os.kill(os.getpid(), signal.SIGSTOP)\n    time.sleep(100)\n    os._exit(0)\ntime.sleep(100)\n";
    let py = TestProcess::spawn(&["python3", "-c", script], &scratch.path().join("out"));
    wait_until(
        "a zombie and a stopped child",
        Duration::from_secs(30),
        || {
            let kids: Vec<i32> = proc_tree(py.pid)
                .iter()
                .map(|(p, _)| *p)
                .filter(|p| *p != py.pid)
                .collect();
            kids.len() == 2
                && kids.iter().any(|k| task_state(*k) == Some('Z'))
                && kids.iter().any(|k| task_state(*k) == Some('T'))
        },
    );
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&opts(py.pid, &images)).unwrap();
    crit_reads_all(&images);
    let tree = image_tree(&images);
    assert_eq!(tree.len(), 3);
    let mut states = Vec::new();
    for (pid, _) in tree {
        let mut r = criu_images::ImageReader::open(images.join(format!("core-{pid}.img"))).unwrap();
        let core: criu_images::pb::CoreEntry = r.next_entry().unwrap().unwrap();
        let tc = core.tc.unwrap();
        states.push((tc.task_state, tc.exit_code));
    }
    states.sort();
    assert_eq!(
        states,
        vec![(1, 0), (3, 0), (6, 7 << 8)],
        "alive, stopped, zombie with wait status of exit(7) (CRIU's task states 1, 3, 6)"
    );
    // The explorers list the zombie, which has no files or memory images, with nothing
    // under it.
    let zombie = image_tree(&images)
        .into_iter()
        .map(|(p, _)| p)
        .find(|p| is_zombie_in_images(&images, *p))
        .unwrap();
    assert!(image_fds(&images)[&zombie].is_empty());
    assert!(image_maps(&images)[&zombie].is_empty());
    let rss = ImageDir::new(&images).rss().unwrap();
    assert!(rss.lines().any(|l| l == zombie.to_string()), "{rss}");
    for (pid, _) in proc_tree(py.pid) {
        let expect = match pid {
            p if p == py.pid => 'S',
            _ => task_state(pid).unwrap(),
        };
        assert!(matches!(task_state(pid), Some(s) if s == expect || s == 'Z' || s == 'T'));
    }
}

#[test]
fn leave_stopped_leaves_the_tree_stopped() {
    let scratch = ScratchDir::new("dump-leave-stopped");
    let mut tp = TestProcess::start(scratch.path(), "looper", &["--interval-ms", "10"]);
    dump(&DumpOptions {
        leave_stopped: true,
        ..DumpOptions::new(Pid(tp.pid), scratch.path())
    })
    .unwrap();
    wait_until("stopped", Duration::from_secs(10), || {
        task_state(tp.pid) == Some('T')
    });
    assert_eq!(tracer_pid(tp.pid), Some(0));
    // SAFETY: kill(2) on our own test program.
    unsafe { libc::kill(tp.pid, libc::SIGCONT) };
    assert_eq!(tp.check(), "pass");
}

/// A cgroup made for one test, removed (after its tasks are gone) on drop.
struct TestCgroup(std::path::PathBuf);

impl TestCgroup {
    fn new(root: &str, name: &str) -> Option<TestCgroup> {
        let path = Path::new(root).join(format!("criu-rs-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&path);
        match std::fs::create_dir(&path) {
            Ok(()) => Some(TestCgroup(path)),
            Err(e) => {
                eprintln!("skipping: cannot create cgroup {}: {e}", path.display());
                None
            }
        }
    }

    fn add(&self, pid: i32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The test's processes are killed by their guards first; wait for them to leave.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.0).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn dump_with_freezer(cgroup_root: &str, name: &str) {
    let Some(cg) = TestCgroup::new(cgroup_root, name) else {
        return;
    };
    let scratch = ScratchDir::new(&format!("dump-cgroup-{name}"));
    {
        let out = scratch.path().join("loop.out");
        let sh = TestProcess::spawn(&["/bin/sh", "-c", SHELL_LOOP], &out);
        cg.add(sh.pid);
        wait_until("two lines", Duration::from_secs(10), || {
            std::fs::read_to_string(&out)
                .map(|t| t.lines().count() >= 2)
                .unwrap_or(false)
        });
        // A freeze that lands between two of the loop's children finds the shell alone:
        // that dump is taken again (each is still read back by crit) until one holds both.
        let mut tree = Default::default();
        for attempt in 0..5 {
            wait_until("the sleep child", Duration::from_secs(10), || {
                proc_tree(sh.pid).len() == 2
            });
            let images = scratch.path().join(format!("images-{attempt}"));
            std::fs::create_dir(&images).unwrap();
            let o = DumpOptions {
                freeze_cgroup: Some(cg.0.clone()),
                ..opts(sh.pid, &images)
            };
            dump(&o).unwrap_or_else(|e| panic!("dump with the {name} freezer: {e}"));
            crit_reads_all(&images);
            tree = image_tree(&images);
            if tree.len() == 2 {
                break;
            }
        }
        assert!(tree.contains(&(sh.pid, 0)) && tree.len() == 2, "{tree:?}");
        // Thawed and untraced afterwards: it counts on.
        let before = std::fs::read_to_string(&out).unwrap().lines().count();
        wait_until("the loop to count on", Duration::from_secs(10), || {
            std::fs::read_to_string(&out).unwrap().lines().count() > before
        });
        assert_eq!(tracer_pid(sh.pid), Some(0));
        let state = cg.0.join(if name == "v1" {
            "freezer.state"
        } else {
            "cgroup.freeze"
        });
        let state = std::fs::read_to_string(state).unwrap();
        assert!(
            matches!(state.trim(), "THAWED" | "0"),
            "cgroup left as {state}"
        );
    }
}

/// Starts tp-vfork (in `cg` if given) and waits until its parent sits in vfork(): the
/// child exists and has not exec'd yet.
fn parent_in_vfork(dir: &Path, cg: Option<&TestCgroup>, stop_child: bool) -> (TestProcess, i32) {
    let go = dir.join("go");
    let stop = if stop_child { "1" } else { "0" };
    let tp = TestProcess::start(
        dir,
        "vfork",
        &[
            "--window-ms",
            "4000",
            "--stop-child",
            stop,
            "--go-file",
            go.to_str().unwrap(),
        ],
    );
    if let Some(cg) = cg {
        cg.add(tp.pid);
    }
    std::fs::write(&go, "").unwrap();
    let mut child = 0;
    wait_until("the vfork child", Duration::from_secs(10), || {
        child = proc_tree(tp.pid)
            .iter()
            .map(|(p, _)| *p)
            .find(|p| *p != tp.pid)
            .unwrap_or(0);
        child != 0
            && std::fs::read_to_string(format!("/proc/{child}/comm"))
                .is_ok_and(|c| c.trim() == "tp-vfork")
    });
    (tp, child)
}

#[test]
fn a_parent_waiting_in_vfork_is_frozen_once_its_child_execs() {
    // Both freezers: ptrace alone, and the v2 cgroup freezer, which freezes the child
    // before its exec (its parent then counts as frozen, but cannot be interrupted).
    for cgroup in [false, true] {
        let name = if cgroup { "vfork-cgroup" } else { "vfork" };
        let cg = if cgroup {
            match TestCgroup::new("/sys/fs/cgroup/unified", name) {
                Some(cg) => Some(cg),
                None => continue,
            }
        } else {
            None
        };
        let scratch = ScratchDir::new(&format!("dump-{name}"));
        let (mut tp, child) = parent_in_vfork(scratch.path(), cg.as_ref(), false);
        let images = scratch.path().join("images");
        std::fs::create_dir(&images).unwrap();
        dump(&DumpOptions {
            freeze_cgroup: cg.as_ref().map(|c| c.0.clone()),
            ..opts(tp.pid, &images)
        })
        .unwrap_or_else(|e| panic!("dump of a parent in vfork ({name}): {e}"));
        crit_reads_all(&images);
        let tree = image_tree(&images);
        assert!(tree.contains(&(tp.pid, 0)) && tree.len() == 2, "{tree:?}");
        assert_eq!(tracer_pid(tp.pid), Some(0));
        assert_eq!(tracer_pid(child), Some(0));
        assert_eq!(tp.check(), "pass", "{name}");
    }
}

#[test]
fn a_parent_whose_vfork_child_is_stopped_is_refused_by_name() {
    let scratch = ScratchDir::new("dump-vfork-stopped");
    let (mut tp, child) = parent_in_vfork(scratch.path(), None, true);
    wait_until("the child to stop", Duration::from_secs(10), || {
        task_state(child) == Some('T')
    });
    let err = dump(&DumpOptions {
        freeze_timeout: Duration::from_secs(1),
        ..opts(tp.pid, scratch.path())
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("vfork()") && text.contains(&child.to_string()),
        "{text}"
    );
    assert_eq!(tracer_pid(tp.pid), Some(0));
    assert_eq!(tracer_pid(child), Some(0));
    assert_eq!(task_state(child), Some('T'), "the child stays stopped");
    // SAFETY: kill(2) on the test program's own child.
    unsafe { libc::kill(child, libc::SIGCONT) };
    assert_eq!(tp.check(), "pass");
}

#[test]
fn freeze_cgroup_v1() {
    dump_with_freezer("/sys/fs/cgroup/freezer", "v1");
}

#[test]
fn freeze_cgroup_v2() {
    dump_with_freezer("/sys/fs/cgroup/unified", "v2");
}

#[test]
fn a_job_on_a_pty_saves_its_terminal() {
    // script(1) runs the command as a session leader on a fresh pty, like a login shell.
    let scratch = ScratchDir::new("dump-pty");
    let script = TestProcess::spawn(
        &["script", "-q", "-c", "exec sleep 100", "/dev/null"],
        &scratch.path().join("out"),
    );
    let mut job = 0;
    wait_until("the job on the pty", Duration::from_secs(10), || {
        job = proc_tree(script.pid)
            .iter()
            .map(|(p, _)| *p)
            .find(|p| *p != script.pid)
            .unwrap_or(0);
        job != 0
            && task_state(job) == Some('S')
            && std::fs::read_link(format!("/proc/{job}/fd/0"))
                .is_ok_and(|l| l.starts_with("/dev/pts/"))
    });
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions {
        shell_job: true,
        ..opts(job, &images)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    crit_reads_all(&images);
    assert!(images.join("tty-info.img").exists());
    let mut r = criu_images::ImageReader::open(images.join("files.img")).unwrap();
    let mut kinds = Vec::new();
    while let Some(e) = r.next_entry::<criu_images::pb::FileEntry>().unwrap() {
        kinds.push(e.r#type);
    }
    assert!(
        kinds.contains(&(criu_images::pb::FdTypes::Tty as i32)),
        "{kinds:?}"
    );
    assert_eq!(tracer_pid(job), Some(0));
}
