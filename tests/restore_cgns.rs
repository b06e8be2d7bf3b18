//! Cgroup namespaces (`--manage-cgroups`): tp-cgroups joins cgroups of its own (v1
//! `cpu` and v2), unshares a cgroup namespace rooted there, then starts a worker
//! thread that joins a child of its `cpu` cgroup. The dump records the namespace as
//! the `cgns_prefix` of the members of both threads' sets (Debian's crit decodes it);
//! the cgroups are removed, and the restore (ours, and CRIU 4.2's; and ours of CRIU's
//! dump) makes them again,
//! puts the root at the namespace's root, unshares a namespace there, and moves both
//! threads back: the program checks that it and its worker see their cgroups as they
//! did (`/` and `/worker`), and we check the paths from outside. Without
//! `--manage-cgroups` the namespace cannot be saved: the dump refuses it and the
//! program runs on.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criu_core::cgroups::{CgMode, CgroupOptions};
use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, clean_command, crit_decode, criu_4_or_skip, debian_crit, task_state,
    wait_until, DetachedTree, Reaper, ScratchDir, TestProcess,
};

const ROOT: &str = "/sys/fs/cgroup";

/// The cgroups of one test, `cpu/NAME`, `cpu/NAME/worker` and `unified/NAME`; dropped
/// (after the test's processes, as it is declared before them), it removes them.
struct TestCgroups {
    name: String,
}

impl TestCgroups {
    fn new(name: &str) -> TestCgroups {
        let cg = TestCgroups {
            name: format!("criu-rs-cgns-{name}"),
        };
        cg.remove();
        for d in cg.dirs() {
            std::fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        cg
    }

    /// Parents first.
    fn dirs(&self) -> Vec<PathBuf> {
        let n = &self.name;
        [
            format!("cpu/{n}"),
            format!("cpu/{n}/worker"),
            format!("unified/{n}"),
        ]
        .iter()
        .map(|d| Path::new(ROOT).join(d))
        .collect()
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

    /// Starts tp-cgroups in them, in a cgroup namespace of its own.
    fn start(&self, dir: &Path) -> TestProcess {
        let d = self.dirs();
        let procs = format!(
            "{},{}",
            d[0].join("cgroup.procs").display(),
            d[2].join("cgroup.procs").display()
        );
        let worker = d[1].join("tasks").display().to_string();
        TestProcess::start(
            dir,
            "cgroups",
            &[
                "--join",
                &procs,
                "--worker-join",
                &worker,
                "--unshare-cgns",
                "1",
            ],
        )
    }

    /// Thread `tid`'s paths in cpu and v2, as we see them.
    fn membership(pid: i32, tid: i32) -> Vec<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/cgroup")).unwrap();
        let mut found: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once(':')?;
                (rest.starts_with("cpu:") || rest.starts_with(':')).then(|| rest.to_owned())
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
        vec![format!(":/{n}"), cpu]
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        self.remove();
    }
}

fn soft() -> Option<CgroupOptions> {
    Some(CgroupOptions {
        mode: CgMode::Soft,
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

fn cgroup_ns(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).unwrap()
}

/// Starts the program, checks it is where it should be, dumps it with cgroups managed
/// (killing it), checks the image, and removes the cgroups. Returns the program (for
/// its ready file) and its worker's tid.
fn start_and_dump(cg: &TestCgroups, scratch: &Path, images: &Path) -> (TestProcess, i32) {
    let mut tp = cg.start(scratch);
    let worker = worker_tid(&tp);
    assert_ne!(cgroup_ns(tp.pid), cgroup_ns(std::process::id() as i32));
    assert_eq!(TestCgroups::membership(tp.pid, tp.pid), cg.expected(false));
    assert_eq!(TestCgroups::membership(tp.pid, worker), cg.expected(true));
    std::fs::create_dir_all(images).unwrap();
    let opts = DumpOptions {
        cgroups: soft(),
        ..DumpOptions::new(Pid(tp.pid), images)
    };
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    check_image(images, cg);
    cg.remove();
    assert!(!cg.exist(), "the cgroups are gone before the restore");
    (tp, worker)
}

/// crit reads cgroup.img: the members of the process's and the worker's sets in cpu
/// and v2 carry the namespace's root, `/NAME`, as their prefix.
fn check_image(images: &Path, cg: &TestCgroups) {
    let Some(crit) = debian_crit() else {
        eprintln!("no crit: cgroup.img not decoded");
        return;
    };
    let doc = crit_decode(&crit, &images.join("cgroup.img")).unwrap_or_else(|e| panic!("{e}"));
    let members: Vec<(String, String, u64)> = doc["entries"][0]["sets"]
        .as_array()
        .expect("sets")
        .iter()
        .flat_map(|s| s["ctls"].as_array().unwrap())
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["path"].as_str().unwrap().to_owned(),
                c["cgns_prefix"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let n = &cg.name;
    let prefix = n.len() as u64 + 1;
    for want in [
        ("cpu", format!("/{n}")),
        ("cpu", format!("/{n}/worker")),
        ("", format!("/{n}")),
    ] {
        let found = (want.0.to_owned(), want.1.clone(), prefix);
        assert!(members.contains(&found), "{found:?} not in {members:?}");
    }
}

/// The restored program `pid` is back in its cgroups, in a cgroup namespace of its
/// own rooted where it was, and passes its own check.
fn check_back(cg: &TestCgroups, pid: i32, worker: i32, ready_file: &Path) {
    assert_ne!(cgroup_ns(pid), cgroup_ns(std::process::id() as i32));
    assert_eq!(TestCgroups::membership(pid, pid), cg.expected(false));
    assert_eq!(TestCgroups::membership(pid, worker), cg.expected(true));
    assert_eq!(check_restored(pid, ready_file), "pass");
}

#[test]
fn cgroup_namespace_is_saved_as_a_prefix_and_made_again() {
    let scratch = ScratchDir::new("cgns_restore");
    let cg = TestCgroups::new("ours");
    let images = scratch.path().join("images");
    let (tp, worker) = start_and_dump(&cg, scratch.path(), &images);
    let restored = restore(&RestoreOptions {
        cgroups: soft(),
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let restored = Reaper(restored.pid.0);
    check_back(&cg, restored.0, worker, &tp.ready_file);
}

#[test]
fn cgroup_namespace_without_managed_cgroups_is_refused_and_the_program_runs_on() {
    let scratch = ScratchDir::new("cgns_refused");
    let cg = TestCgroups::new("refused");
    let mut tp = cg.start(scratch.path());
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let err = dump(&DumpOptions::new(Pid(tp.pid), &images))
        .expect_err("a cgroup namespace needs --manage-cgroups")
        .to_string();
    assert!(
        err.contains("cgroup namespace") && err.contains("--manage-cgroups"),
        "{err}"
    );
    assert_eq!(tp.check(), "pass");
}

#[test]
fn criu_4_2_and_criu_rs_restore_each_others_cgroup_namespaces() {
    let Some(criu) = criu_4_or_skip("CRIU's restore of a cgroup namespace") else {
        return;
    };
    let scratch = ScratchDir::new("cgns_criu");
    let cg = TestCgroups::new("criu");
    let images = scratch.path().join("images");
    let (tp, worker) = start_and_dump(&cg, scratch.path(), &images);
    let pid = tp.pid;
    wait_until("the dumped program to go", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    let out = clean_command(criu.to_str().unwrap())
        .args([
            "restore",
            "-d",
            "-v4",
            "-o",
            "restore.log",
            "--manage-cgroups=soft",
        ])
        .arg("-D")
        .arg(&images)
        .output()
        .expect("run criu");
    let restored = DetachedTree(vec![pid]);
    let log = std::fs::read_to_string(images.join("restore.log")).unwrap_or_default();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("Error")).collect();
    assert!(out.status.success(), "CRIU could not restore: {errors:#?}");
    check_back(&cg, pid, worker, &tp.ready_file);
    drop(restored);
    drop(tp);

    // CRIU's dump, restored by us.
    cg.remove();
    let cg = TestCgroups::new("criu");
    let mut tp = cg.start(scratch.path());
    let worker = worker_tid(&tp);
    let images = scratch.path().join("criu");
    std::fs::create_dir(&images).unwrap();
    let out = clean_command(criu.to_str().unwrap())
        .args([
            "dump",
            "-v4",
            "-o",
            "dump.log",
            "--manage-cgroups=soft",
            "-t",
        ])
        .arg(tp.pid.to_string())
        .arg("-D")
        .arg(&images)
        .output()
        .unwrap();
    let log = std::fs::read_to_string(images.join("dump.log")).unwrap_or_default();
    assert!(out.status.success(), "CRIU dumps it: {log}");
    let _ = tp.child.wait();
    check_image(&images, &cg);
    cg.remove();
    let restored = restore(&RestoreOptions {
        cgroups: soft(),
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore of CRIU's images: {e}"));
    let restored = Reaper(restored.pid.0);
    check_back(&cg, restored.0, worker, &tp.ready_file);
}

/// A zombie has no namespace links left: with cgroups managed, its set is read without
/// a namespace prefix, and the tree dumps and comes back with its zombie.
#[test]
fn a_zombie_in_a_tree_with_managed_cgroups_dumps_and_comes_back() {
    let scratch = ScratchDir::new("cgns_zombie");
    let pid_file = scratch.path().join("pid");
    let script = format!("echo $$ > {}; true & exec sleep 1000", pid_file.display());
    let mut tp = TestProcess::spawn(&["sh", "-c", &script], &scratch.path().join("out"));
    let zombie = || {
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", tp.pid, tp.pid))
            .ok()
            .and_then(|c| c.trim().parse::<i32>().ok())
            .filter(|&z| task_state(z) == Some('Z'))
    };
    wait_until("a zombie child", Duration::from_secs(10), || {
        zombie().is_some()
    });
    let z = zombie().unwrap();
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let opts = DumpOptions {
        cgroups: soft(),
        ..DumpOptions::new(Pid(tp.pid), &images)
    };
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    wait_until("the dumped tree to go", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{z}")).exists()
    });
    let restored = restore(&RestoreOptions {
        cgroups: soft(),
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let _restored = Reaper(restored.pid.0);
    assert_eq!(task_state(z), Some('Z'), "the zombie is back");
}
