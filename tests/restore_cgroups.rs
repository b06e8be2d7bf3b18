//! `--manage-cgroups`: tp-cgroups puts itself into cgroups of its own (v1 `cpu` and
//! `pids`, and v2) and its worker thread into a child of its `cpu` cgroup. A dump with
//! cgroups managed records each thread's set in its core entry and the directories with
//! their properties in `cgroup.img` (Debian's crit decodes it); the cgroups are removed,
//! and the restore makes them again, with their properties, and puts the process and
//! its worker back where they were (the program checks its own and its worker's
//! /proc/thread-self/cgroup). Full mode writes the properties of cgroups that exist;
//! soft mode leaves them; strict mode refuses them by name before any task exists; a
//! restore that fails removes the cgroups it made.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criu_core::cgroups::{CgMode, CgroupOptions};
use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{check_restored, crit_decode, debian_crit, Reaper, ScratchDir, TestProcess};

const ROOT: &str = "/sys/fs/cgroup";

/// The cgroups of one test: `cpu/NAME`, `cpu/NAME/worker`, `pids/NAME`,
/// `unified/NAME`. Dropped, it removes them (after the test's processes are gone,
/// as it is declared before them).
struct TestCgroups {
    name: String,
}

impl TestCgroups {
    fn new(name: &str) -> TestCgroups {
        let cg = TestCgroups {
            name: format!("criu-rs-test-{name}"),
        };
        cg.remove();
        for d in cg.dirs() {
            std::fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        cg.set("cpu", "cpu.shares", "517");
        cg.set("cpu/worker", "cpu.shares", "333");
        cg.set("pids", "pids.max", "71");
        cg
    }

    /// Parents first.
    fn dirs(&self) -> Vec<PathBuf> {
        ["cpu", "cpu/worker", "pids", "unified"]
            .iter()
            .map(|d| self.path(d))
            .collect()
    }

    /// `cpu/worker` is the `worker` child of `cpu/NAME`.
    fn path(&self, which: &str) -> PathBuf {
        let (hierarchy, child) = which.split_once('/').unwrap_or((which, ""));
        Path::new(ROOT).join(hierarchy).join(&self.name).join(child)
    }

    fn set(&self, which: &str, prop: &str, value: &str) {
        std::fs::write(self.path(which).join(prop), value).unwrap();
    }

    fn get(&self, which: &str, prop: &str) -> String {
        std::fs::read_to_string(self.path(which).join(prop))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn exist(&self) -> bool {
        self.dirs().iter().any(|d| d.exists())
    }

    /// Children first; a cgroup stays busy a moment after its last task dies.
    fn remove(&self) {
        for d in self.dirs().iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while d.exists() && std::fs::remove_dir(d).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Starts tp-cgroups in them.
    fn start(&self, dir: &Path) -> TestProcess {
        let procs: Vec<String> = ["cpu", "pids", "unified"]
            .iter()
            .map(|d| self.path(d).join("cgroup.procs").display().to_string())
            .collect();
        let worker = self.path("cpu/worker").join("tasks").display().to_string();
        TestProcess::start(
            dir,
            "cgroups",
            &["--join", &procs.join(","), "--worker-join", &worker],
        )
    }

    /// The cgroup paths of thread `tid` of `pid` in cpu, pids and v2.
    fn membership(pid: i32, tid: i32) -> Vec<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/cgroup")).unwrap();
        let mut found: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once(':')?;
                ["cpu:", "pids:", ":"]
                    .iter()
                    .any(|p| rest.starts_with(p))
                    .then(|| rest.to_owned())
            })
            .collect();
        found.sort();
        found
    }

    fn expected(&self, worker: bool) -> Vec<String> {
        let n = &self.name;
        let cpu = if worker {
            format!("cpu:/{n}/worker")
        } else {
            format!("cpu:/{n}")
        };
        let mut v = vec![format!(":/{n}"), cpu, format!("pids:/{n}")];
        v.sort();
        v
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        self.remove();
    }
}

fn managed(mode: CgMode) -> Option<CgroupOptions> {
    Some(CgroupOptions {
        mode,
        roots: Vec::new(),
        yard: None,
    })
}

fn worker_tid(tp: &TestProcess) -> i32 {
    let file = tp.ready_file.with_extension("ready.worker");
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Dumps `tp` (killing it) with cgroups managed in `mode`.
fn dump_managed(tp: &mut TestProcess, images: &Path, mode: CgMode) {
    std::fs::create_dir_all(images).unwrap();
    let opts = DumpOptions {
        cgroups: managed(mode),
        ..DumpOptions::new(Pid(tp.pid), images)
    };
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
}

fn restore_managed(images: &Path, mode: CgMode) -> Result<Reaper, String> {
    let opts = RestoreOptions {
        cgroups: managed(mode),
        ..RestoreOptions::new(images)
    };
    restore(&opts)
        .map(|r| Reaper(r.pid.0))
        .map_err(|e| e.to_string())
}

/// crit reads cgroup.img: the process's and the worker's sets, and the directories
/// with the properties we set.
fn check_image(images: &Path, cg: &TestCgroups) {
    let Some(crit) = debian_crit() else {
        eprintln!("no crit: cgroup.img not decoded");
        return;
    };
    let doc = crit_decode(&crit, &images.join("cgroup.img")).unwrap_or_else(|e| panic!("{e}"));
    let entry = &doc["entries"][0];
    let sets = entry["sets"].as_array().expect("sets");
    let paths: Vec<(String, String)> = sets
        .iter()
        .flat_map(|s| s["ctls"].as_array().unwrap())
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let n = &cg.name;
    for want in [
        ("cpu", format!("/{n}")),
        ("cpu", format!("/{n}/worker")),
        ("pids", format!("/{n}")),
        ("", format!("/{n}")),
    ] {
        assert!(
            paths.contains(&(want.0.to_owned(), want.1.clone())),
            "{want:?} not in {paths:?}"
        );
    }
    let pids = entry["controllers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cnames"][0] == "pids")
        .expect("the pids hierarchy");
    let dir = &pids["dirs"][0];
    assert_eq!(dir["dir_name"], n.as_str());
    let max = dir["properties"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "pids.max")
        .expect("pids.max recorded");
    assert_eq!(max["value"], "71");
}

#[test]
fn soft_mode_makes_the_cgroups_again_and_moves_every_thread() {
    let scratch = ScratchDir::new("cgroups_soft");
    let cg = TestCgroups::new("soft");
    let mut tp = cg.start(scratch.path());
    let worker = worker_tid(&tp);
    assert_eq!(TestCgroups::membership(tp.pid, tp.pid), cg.expected(false));
    assert_eq!(TestCgroups::membership(tp.pid, worker), cg.expected(true));
    let images = scratch.path().join("images");
    dump_managed(&mut tp, &images, CgMode::Soft);
    check_image(&images, &cg);
    cg.remove();
    assert!(!cg.exist(), "the cgroups are gone before the restore");

    let restored = restore_managed(&images, CgMode::Soft).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        TestCgroups::membership(restored.0, restored.0),
        cg.expected(false)
    );
    assert_eq!(
        TestCgroups::membership(restored.0, worker),
        cg.expected(true)
    );
    // Made by the restore: with their properties.
    assert_eq!(cg.get("cpu", "cpu.shares"), "517");
    assert_eq!(cg.get("cpu/worker", "cpu.shares"), "333");
    assert_eq!(cg.get("pids", "pids.max"), "71");
    assert_eq!(check_restored(restored.0, &tp.ready_file), "pass");
}

#[test]
fn full_mode_writes_properties_of_existing_cgroups_and_soft_leaves_them() {
    let scratch = ScratchDir::new("cgroups_full");
    let cg = TestCgroups::new("full");
    let mut tp = cg.start(scratch.path());
    let images = scratch.path().join("images");
    dump_managed(&mut tp, &images, CgMode::Full);
    // The cgroups stay, their properties changed.
    cg.set("pids", "pids.max", "55");
    cg.set("cpu", "cpu.shares", "600");

    let restored = restore_managed(&images, CgMode::Full).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cg.get("pids", "pids.max"), "71");
    assert_eq!(cg.get("cpu", "cpu.shares"), "517");
    assert_eq!(
        TestCgroups::membership(restored.0, restored.0),
        cg.expected(false)
    );
    assert_eq!(check_restored(restored.0, &tp.ready_file), "pass");
    drop(restored);

    // Soft: an existing cgroup keeps what it has.
    cg.set("pids", "pids.max", "55");
    let _ = std::fs::remove_file(tp.ready_file.with_extension("ready.result"));
    let restored = restore_managed(&images, CgMode::Soft).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cg.get("pids", "pids.max"), "55");
    assert_eq!(check_restored(restored.0, &tp.ready_file), "pass");
}

#[test]
fn strict_mode_refuses_existing_cgroups_and_a_failed_restore_removes_what_it_made() {
    let scratch = ScratchDir::new("cgroups_strict");
    let cg = TestCgroups::new("strict");
    let mut tp = cg.start(scratch.path());
    let pid = tp.pid;
    let images = scratch.path().join("images");
    dump_managed(&mut tp, &images, CgMode::Soft);

    let err = restore_managed(&images, CgMode::Strict)
        .err()
        .expect("strict mode refuses cgroups that exist");
    assert!(err.contains(&cg.name) && err.contains("exists"), "{err}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "no task was made"
    );

    // A restore whose pid is busy fails after it made the cgroups: they go again.
    let first = restore_managed(&images, CgMode::Soft).unwrap_or_else(|e| panic!("{e}"));
    for hierarchy in ["cpu", "pids", "unified"] {
        let procs = Path::new(ROOT).join(hierarchy).join("cgroup.procs");
        std::fs::write(&procs, first.0.to_string()).unwrap();
    }
    cg.remove();
    assert!(!cg.exist(), "the cgroups are empty and gone");
    let busy = restore(&RestoreOptions {
        cgroups: managed(CgMode::Soft),
        pid_wait: Duration::from_millis(200),
        ..RestoreOptions::new(&images)
    });
    assert!(busy.is_err(), "the pid is busy");
    assert!(
        !cg.exist(),
        "the failed restore removed the cgroups it made"
    );
    drop(first);

    // Mode none needs the cgroups to exist, and says which one is missing.
    let err = restore_managed(&images, CgMode::None)
        .err()
        .expect("mode none refuses missing cgroups");
    assert!(
        err.contains(&cg.name) && err.contains("does not exist"),
        "{err}"
    );
    assert!(!cg.exist());
}
