//! `criu-rs` takes the command lines CRIU's test suite (zdtm.py, host flavor) passes:
//! `check --feature`, `--no-default-config`, `--verbosity=N` and its `-verbosity=0`
//! spelling, dump's `--pidfile` and `--pre-dump-mode`, and refuses pre-dump.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use criu_rs_suite::{clean_command, wait_for_file, workspace_bin, ScratchDir, TestProcess};

fn criu_rs(args: &[&str]) -> Output {
    clean_command(workspace_bin("criu-rs").to_str().unwrap())
        .args(args)
        .output()
        .expect("run criu-rs")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// As zdtm.py asks: exit 0 when the feature is usable.
fn feature(name: &str) -> Output {
    criu_rs(&[
        "check",
        "--no-default-config",
        "--no-default-config",
        "-verbosity=0",
        "--feature",
        name,
    ])
}

#[test]
fn check_answers_features_as_zdtm_asks_for_them() {
    // Kernel features criu-rs uses on this machine kind.
    for name in [
        "seccomp_filters",
        "seccomp_suspend",
        "get_rseq_conf",
        "ns_pid",
        "timens",
        "userns",
    ] {
        let o = feature(name);
        assert!(o.status.success(), "{name}: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("is supported"));
    }
    // The kernel has it, criu-rs does not checkpoint it: CRIU's answer is the
    // kernel's (zdtm runs those tests, as it does for CRIU), with a warning.
    for name in ["mnt_id", "uffd"] {
        let o = feature(name);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("is supported") && out.contains("does not use it yet"),
            "{out}"
        );
    }
    // No soft-dirty in this kernel (CONFIG_MEM_SOFT_DIRTY), but criu-rs tracks memory
    // with userfaultfd write protection: pre-dump and --track-mem work.
    let o = feature("mem_dirty_track");
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("is supported"));
    let o = feature("no_such_feature");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown feature no_such_feature"));
    let o = criu_rs(&["check", "--no-default-config"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Looks good."));
    // A capability the engine works without, when missing, is named with what it limits
    // (the kernel's answer through capget, compared with the status file's CapEff).
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    const CAP_SYS_RESOURCE: u32 = 24;
    let has_sys_resource = cap_eff & (1 << CAP_SYS_RESOURCE) != 0;
    assert_eq!(
        out.contains("Warn: CAP_SYS_RESOURCE missing: "),
        !has_sys_resource,
        "{out}"
    );
}

/// zdtm's pre-dump command line is taken; a pre-dump of a process that is not there
/// fails with the reason.
#[test]
fn pre_dump_takes_zdtms_command_line() {
    let dir = std::env::temp_dir().join(format!("criu-rs-cli-pre-dump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let o = criu_rs(&[
        "pre-dump",
        "--no-default-config",
        "-t",
        "2147483646",
        "-D",
        dir.to_str().unwrap(),
        "-o",
        "-",
        "--track-mem",
        "--pre-dump-mode=splice",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not exist"),
        "{}",
        text(&o)
    );
}

#[test]
fn dump_and_restore_take_zdtms_command_lines() {
    let scratch = ScratchDir::new("cli-zdtm");
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let images = images.to_str().unwrap().to_owned();
    let pidfile = scratch.path().join("test.pid");
    let pidfile = pidfile.to_str().unwrap();
    let mut tp = TestProcess::start(scratch.path(), "looper", &["--interval-ms", "20"]);
    std::fs::write(pidfile, format!("{}\n", tp.pid)).unwrap();
    let pid = tp.pid.to_string();
    // zdtm.py: __criu_act + dump(), in its order.
    let o = criu_rs(&[
        "dump",
        "--no-default-config",
        "--log-file",
        "dump.log",
        "--images-dir",
        &images,
        "--verbosity=4",
        "--tree",
        &pid,
        "--pidfile",
        pidfile,
        "--timeout",
        "10",
        "--pre-dump-mode",
        "splice",
    ]);
    assert!(o.status.success(), "dump: {}", text(&o));
    let log = std::fs::read_to_string(format!("{images}/dump.log")).expect("dump.log");
    assert!(log.contains("dump finished"), "level 4 logs info: {log}");
    let _ = tp.child.wait();
    // A dump does not write the pid file (restore does): it is as the test wrote it.
    assert_eq!(
        std::fs::read_to_string(pidfile).unwrap(),
        format!("{pid}\n")
    );
    std::fs::remove_file(pidfile).unwrap();
    let o = criu_rs(&[
        "restore",
        "--no-default-config",
        "--log-file",
        "restore.log",
        "--images-dir",
        &images,
        "--verbosity=4",
        "--pidfile",
        pidfile,
        "--restore-detached",
    ]);
    assert!(o.status.success(), "restore: {}", text(&o));
    let written = wait_for_file(Path::new(pidfile), Duration::from_secs(5)).expect("pid file");
    assert_eq!(written, pid);
    assert!(std::fs::metadata(format!("{images}/restore.log")).is_ok());
    // The restored program (no longer our child) checks itself; the guard kills its
    // group at the end.
    assert_eq!(tp.check(), "pass");
}

#[test]
fn per_test_options_are_taken_and_an_unknown_cgroup_mode_refused_with_a_log() {
    let scratch = ScratchDir::new("cli-zdtm-opts");
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let images = images.to_str().unwrap().to_owned();
    let mut tp = TestProcess::start(scratch.path(), "looper", &["--interval-ms", "20"]);
    let pid = tp.pid.to_string();
    let dump = |extra: &[&str]| {
        let mut args = vec![
            "dump",
            "--no-default-config",
            "--log-file",
            "dump.log",
            "--images-dir",
            &images,
            "--verbosity=4",
            "--tree",
            &pid,
            "-R",
        ];
        args.extend_from_slice(extra);
        criu_rs(&args)
    };
    // An unknown mode is refused before anything is touched, and the log (which zdtm
    // reads) says why.
    let o = dump(&["--manage-cgroups=sloppy"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let log = std::fs::read_to_string(format!("{images}/dump.log")).expect("dump.log");
    assert!(log.contains("cgroups"), "{log}");
    assert_eq!(criu_rs_suite::tracer_pid(tp.pid), Some(0));
    // Options that only widen what CRIU may save: taken, and the tree has nothing they
    // are about.
    let o = dump(&[
        "--file-locks",
        "--tcp-established",
        "--link-remap",
        "--ext-unix-sk",
        "--ghost-limit",
        "8M",
        "--manage-cgroups=ignore",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(tp.check(), "pass");
}
