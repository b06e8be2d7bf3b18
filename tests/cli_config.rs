//! CRIU's configuration files on the command line: `--config FILE`, `$CRIU_CONFIG_FILE`,
//! options the command line overrides, and errors that name the file and line.

use std::process::Output;

use criu_rs_suite::{clean_command, workspace_bin, ScratchDir, TestProcess};

fn criu_rs(args: &[&str], env: &[(&str, &str)]) -> Output {
    clean_command(workspace_bin("criu-rs").to_str().unwrap())
        .args(args)
        .envs(env.iter().copied())
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

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn a_config_file_sets_options_the_command_line_can_override() {
    let scratch = ScratchDir::new("cli-config");
    let dir = scratch.path();
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let conf = dir.join("dump.conf");
    std::fs::write(
        &conf,
        "# a dump that leaves the tree running\nleave-running\nlog-file \"conf.log\" # quoted\n\
         restore-detached   # a restore option: this dump has no use for it\n",
    )
    .unwrap();
    let mut tp = TestProcess::start(dir, "looper", &["--interval-ms", "20"]);
    let pid = tp.pid.to_string();
    let o = criu_rs(
        &[
            "dump",
            "--config",
            conf.to_str().unwrap(),
            "-t",
            &pid,
            "-D",
            images.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(alive(tp.pid), "--leave-running from the file");
    assert!(images.join("conf.log").exists(), "log-file from the file");

    // The command line wins over the file; $CRIU_CONFIG_FILE is read too.
    let o = criu_rs(
        &[
            "dump",
            "-t",
            &pid,
            "-D",
            images.to_str().unwrap(),
            "-o",
            "argv.log",
        ],
        &[("CRIU_CONFIG_FILE", conf.to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(alive(tp.pid));
    assert!(images.join("argv.log").exists());
    assert_eq!(tp.check(), "pass");
}

#[test]
fn a_bad_config_file_is_refused_with_its_place() {
    let scratch = ScratchDir::new("cli-config-bad");
    let conf = scratch.path().join("bad.conf");
    std::fs::write(&conf, "leave-running\nno-such-option 3\n").unwrap();
    let o = criu_rs(
        &["dump", "--config", conf.to_str().unwrap(), "-t", "1"],
        &[],
    );
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.conf:2: unknown option \"no-such-option\""),
        "{}",
        text(&o)
    );

    std::fs::write(&conf, "leave-running yes\n").unwrap();
    let o = criu_rs(
        &["dump", "--config", conf.to_str().unwrap(), "-t", "1"],
        &[],
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bad.conf:1"),
        "{}",
        text(&o)
    );

    let missing = scratch.path().join("missing.conf");
    let o = criu_rs(&["check", "--config", missing.to_str().unwrap()], &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not exist"),
        "{}",
        text(&o)
    );
}

#[test]
fn action_scripts_run_at_each_point_and_a_failing_one_stops_the_dump() {
    use criu_rs_suite::{wait_for_file, Reaper};
    use std::os::unix::fs::PermissionsExt;
    let scratch = ScratchDir::new("cli-action-script");
    let dir = scratch.path();
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let (log, refuse, script) = (dir.join("actions"), dir.join("refuse"), dir.join("act.sh"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$CRTOOLS_SCRIPT_ACTION ${{CRTOOLS_INIT_PID:-none}} $CRTOOLS_IMAGE_DIR\" >> {}\n\
             [ \"$CRTOOLS_SCRIPT_ACTION\" = pre-dump ] && [ -e {} ] && exit 3\n\
             [ \"$CRTOOLS_SCRIPT_ACTION\" = post-restore ] && kill -USR2 $CRTOOLS_INIT_PID\n\
             exit 0\n",
            log.display(),
            refuse.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Its main thread waits for the check signal in pause(): the script's signal at
    // post-restore must end that wait once the tree runs.
    let mut tp = TestProcess::start(dir, "poll", &["--main-waits", "pause"]);
    let pid = tp.pid.to_string();
    let ready = tp.ready_file.clone();
    let (images_arg, script_arg) = (images.to_str().unwrap(), script.to_str().unwrap());
    let dump_args = [
        "dump",
        "-t",
        &pid,
        "-D",
        images_arg,
        "--action-script",
        script_arg,
    ];
    std::fs::write(&refuse, "").unwrap();
    let o = criu_rs(&dump_args, &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("pre-dump"), "{}", text(&o));
    assert!(alive(tp.pid), "a refused dump leaves the tree running");
    std::fs::remove_file(&refuse).unwrap();
    std::fs::remove_file(&log).unwrap();

    let o = criu_rs(&dump_args, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let _ = tp.child.wait();
    let o = criu_rs(
        &[
            "restore",
            "-d",
            "-D",
            images_arg,
            "--action-script",
            script_arg,
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let _reaper = Reaper(tp.pid);
    let result = wait_for_file(
        &ready.with_extension("ready.result"),
        std::time::Duration::from_secs(20),
    );
    assert_eq!(
        result.as_deref(),
        Some("pass"),
        "the signal of post-restore"
    );
    let seen = std::fs::read_to_string(&log).unwrap();
    let expected: Vec<String> = [
        "pre-dump",
        "post-dump",
        "pre-restore",
        "setup-namespaces",
        "post-setup-namespaces",
        "post-restore",
        "pre-resume",
        "post-resume",
    ]
    .iter()
    .map(|action| {
        let init = if *action == "pre-restore" {
            "none"
        } else {
            &pid
        };
        format!("{action} {init} {images_arg}")
    })
    .collect();
    assert_eq!(seen.lines().collect::<Vec<_>>(), expected, "{seen}");
}
