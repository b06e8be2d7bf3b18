//! crpod end to end: real containers (namespaces, overlay root, cgroup) on the built-in
//! `host` image, each test under its own `--root`, removed by a guard also on failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A crpod state directory for one test; dropping it removes every container in it
/// (killing what runs) and the directory.
struct Pod {
    root: PathBuf,
}

impl Pod {
    fn new(name: &str) -> Pod {
        let root = std::env::temp_dir().join(format!("crpod-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        Pod { root }
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_crpod"))
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .output()
            .expect("run crpod")
    }

    /// Runs crpod and returns its stdout, failing the test with stderr if it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "crpod {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs crpod expecting failure: exit code non-zero and one "Error: " line on
    /// stderr, which is returned.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "crpod {args:?} should fail");
        assert!(
            err.starts_with("Error: ") && err.lines().count() == 1,
            "{err}"
        );
        err
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "-a", "-f"]);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn numbers(text: &str) -> Vec<u64> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

const LOOP: &str = "i=0; while true; do echo $i; i=$(expr $i + 1); sleep 0.2; done";

fn state_of(pod: &Pod, name: &str) -> serde_json::Value {
    let text = pod.ok(&["inspect", name]);
    let v: serde_json::Value = serde_json::from_str(&text).expect("inspect prints JSON");
    v[0]["State"].clone()
}

#[test]
fn run_logs_exec_kill_rm_leave_nothing_behind() {
    let pod = Pod::new("basic");
    let id = pod.ok(&[
        "run", "-d", "--name", "looper", "host", "/bin/sh", "-c", LOOP,
    ]);
    let id = id.trim().to_owned();
    assert_eq!(id.len(), 64, "{id}");
    wait_until("output", Duration::from_secs(10), || {
        numbers(&pod.ok(&["logs", "-l"])).len() >= 3
    });
    let ps = pod.ok(&["ps"]);
    assert!(ps.contains("looper") && ps.contains("Up "), "{ps}");
    assert_eq!(pod.ok(&["ps", "-q"]).trim(), &id[..12]);

    // Inside: pid 1 is the command, the hostname is the short id, only loopback.
    let inside = pod.ok(&[
        "exec",
        "looper",
        "sh",
        "-c",
        "tr '\\0' ' ' </proc/1/cmdline; echo; hostname; ls /sys/class/net",
    ]);
    let lines: Vec<&str> = inside.lines().collect();
    assert!(lines[0].starts_with("/bin/sh -c i=0"), "{inside}");
    assert_eq!(lines[1], &id[..12]);
    assert_eq!(lines[2..], ["lo"]);

    let state = state_of(&pod, "looper");
    assert_eq!(state["Status"], "running");
    let pid = state["Pid"].as_i64().unwrap();
    let root_line = format!("{}", pod.root.display());

    // Mistakes change nothing.
    pod.fails(&["run", "-d", "--name", "looper", "host", "true"]);
    pod.fails(&["run", "-d", "--name", "other", "no-such-image", "true"]);
    pod.fails(&["rm", "looper"]);
    pod.fails(&["logs", "nobody"]);
    assert_eq!(state_of(&pod, "looper")["Status"], "running");

    assert_eq!(pod.ok(&["kill", "-a"]).trim(), id);
    wait_until("exited", Duration::from_secs(10), || {
        state_of(&pod, "looper")["Status"] == "exited"
    });
    let ps = pod.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited (137)"), "{ps}");
    assert_eq!(pod.ok(&["ps"]).lines().count(), 1, "only the header");

    assert_eq!(pod.ok(&["rm", "-a"]).trim(), id);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "no process");
    assert!(
        !Path::new("/sys/fs/cgroup/unified/crpod").join(&id).exists(),
        "no cgroup"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&root_line), "no mount");
    assert_eq!(
        std::fs::read_dir(pod.root.join("containers"))
            .unwrap()
            .count(),
        0,
        "no state directory"
    );
}

#[test]
fn exit_code_and_attached_run() {
    let pod = Pod::new("exit");
    let out = pod.cmd(&[
        "run",
        "--name",
        "seven",
        "host",
        "/bin/sh",
        "-c",
        "echo hi; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    let ps = pod.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited (7)"), "{ps}");
    // A command that does not exist: the init's reason reaches `run`.
    let err = pod.fails(&["run", "-d", "host", "/no/such/command"]);
    assert!(err.contains("/no/such/command"), "{err}");
    assert_eq!(pod.ok(&["ps", "-a", "-q"]).lines().count(), 1);
}
