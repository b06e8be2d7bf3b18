//! podman's checkpoint tutorial with criu-rs as the `criu` on PATH: podman asks runc,
//! runc runs `criu swrk 3` and speaks CRIU's RPC to it. `run -d` a counting container
//! on podman's default (bridge) network, `container checkpoint`, `ps -a` says Exited,
//! `container restore`, the counter goes on; then `--leave-running --print-stats`
//! (podman prints criu-rs's statistics, the container runs on), and `--export` of an
//! archive, `rm`, `restore --import` of it: the counter goes on again, with no gap or
//! repeat from its first number. A second test checkpoints and restores a container
//! with `--tcp-established` while the test holds a connection to it, and goes on
//! talking over that connection.
//!
//! The container's mount namespace (runc's layout: the rootfs, /proc with its masked
//! and read-only parts, a /dev tmpfs, /dev/pts, /dev/mqueue, /dev/shm, /sys read-only
//! with the cgroup mounts, the binds of /etc/hosts, /etc/resolv.conf, /etc/hostname
//! and /run/.containerenv) is saved and built again; its network namespace is podman's
//! (`/run/netns/...`), external to the images, which runc hands back on restore as an
//! inherited fd under the key `extRootNetNS`. Skipped, with the reason printed, when
//! podman, runc or busybox is not installed (CI installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use criu_rs_suite::{numbers, wait_until, workspace_bin, ScratchDir};

const NAME: &str = "criu-rs-swrk-counter";

/// A podman of its own (storage, run dir and configuration under a scratch dir) with
/// criu-rs first on PATH as `criu`; its containers are removed when it drops.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Option<Podman> {
        for tool in ["podman", "runc"] {
            if !on_path(tool) {
                eprintln!("skipping: {tool} is not installed (.ci/run installs it)");
                return None;
            }
        }
        let Some(busybox) = ["/usr/bin/busybox", "/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        else {
            eprintln!("skipping: busybox-static is not installed");
            return None;
        };
        let bin = dir.join("bin");
        let rootfs = dir.join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&rootfs).unwrap();
        std::os::unix::fs::symlink(workspace_bin("criu-rs"), bin.join("criu")).unwrap();
        std::fs::copy(busybox, rootfs.join("busybox")).unwrap();
        for applet in ["sh", "sleep", "echo", "nc"] {
            std::os::unix::fs::symlink("busybox", rootfs.join(applet)).unwrap();
        }
        // runc's setrlimit of podman's default ulimits fails without CAP_SYS_RESOURCE.
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .unwrap();
        let podman = Podman {
            dir: dir.to_owned(),
        };
        let tar = Command::new("tar")
            .arg("-C")
            .arg(dir.join("rootfs"))
            .args(["-cf", "rootfs.tar", "."])
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(tar.success());
        let import = podman.run(&["import", "rootfs.tar", "localhost/criu-rs-busybox"]);
        assert!(import.status.success(), "{}", text(&import));
        Some(podman)
    }

    /// The log `name` (dump.log, restore.log) criu-rs wrote in the container's work
    /// dir, or why there is none.
    fn work_log(&self, name: &str) -> String {
        let found = self
            .dir
            .join("storage/vfs-containers")
            .read_dir()
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("userdata").join(name))
            .find(|p| p.exists());
        match found {
            Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
            None => format!("no {name} in the work dir"),
        }
    }

    /// One podman command, bounded by a timeout.
    fn run(&self, args: &[&str]) -> Output {
        let path = format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("timeout")
            .arg("120")
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .args(args)
            .current_dir(&self.dir)
            .env("PATH", path)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .output()
            .unwrap()
    }

    /// One podman command that must succeed; on failure the message holds what podman
    /// said and criu-rs's log `log` (dump.log, restore.log) from the work dir.
    fn run_ok(&self, args: &[&str], log: &str) {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{}\n{}",
            text(&out),
            self.work_log(log)
        );
    }

    /// `ps -a` lists container `name` with a status starting with `status`.
    fn assert_status(&self, name: &str, status: &str) {
        let ps = self.run(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
        assert!(
            text(&ps).contains(&format!("{name} {status}")),
            "{}",
            text(&ps)
        );
    }

    fn counter(&self) -> Vec<u64> {
        numbers(&String::from_utf8_lossy(&self.run(&["logs", NAME]).stdout))
    }

    fn wait_for_count_above(&self, n: usize) {
        wait_until("the counter to go on", Duration::from_secs(30), || {
            self.counter().len() > n
        });
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Every container of this podman's own storage: only this test's.
        let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join(tool).exists())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn podman_checkpoint_tutorial() {
    let scratch = ScratchDir::new("swrk-podman");
    let Some(podman) = Podman::new(scratch.path()) else {
        return;
    };
    let started = podman.run(&[
        "run",
        "-d",
        "--name",
        NAME,
        "localhost/criu-rs-busybox",
        "/bin/sh",
        "-c",
        "i=0; while true; do echo $i; i=$((i+1)); sleep 0.2; done",
    ]);
    assert!(started.status.success(), "{}", text(&started));
    podman.wait_for_count_above(3);

    podman.run_ok(&["container", "checkpoint", NAME], "dump.log");
    podman.assert_status(NAME, "Exited");
    let before = podman.counter();

    podman.run_ok(&["container", "restore", NAME], "restore.log");
    podman.assert_status(NAME, "Up");
    podman.wait_for_count_above(before.len() + 3);
    let after = podman.counter();
    let expected: Vec<u64> = (0..after.len() as u64).collect();
    assert_eq!(
        after, expected,
        "the counter goes on with no reset, gap or repeat"
    );

    // A checkpoint that leaves it running, with podman's statistics of it.
    let stats = podman.run(&[
        "container",
        "checkpoint",
        "--leave-running",
        "--print-stats",
        NAME,
    ]);
    assert!(stats.status.success(), "{}", text(&stats));
    let printed: serde_json::Value = serde_json::from_slice(&stats.stdout)
        .unwrap_or_else(|e| panic!("--print-stats printed no JSON ({e}): {}", text(&stats)));
    let criu = &printed["container_statistics"][0]["criu_statistics"];
    for field in [
        "freezing_time",
        "memdump_time",
        "pages_scanned",
        "pages_written",
    ] {
        assert!(
            criu[field].as_u64().is_some_and(|v| v > 0),
            "{field} in {printed}"
        );
    }
    podman.assert_status(NAME, "Up");
    let count = podman.counter().len();
    podman.wait_for_count_above(count + 2);

    // Exported to an archive, removed, and imported from it.
    let archive = podman.dir.join("counter.tar.gz");
    let archive = archive.to_str().unwrap();
    let export = podman.run(&["container", "checkpoint", "--export", archive, NAME]);
    assert!(export.status.success(), "{}", text(&export));
    let before = podman.counter();
    let rm = podman.run(&["rm", "-f", NAME]);
    assert!(rm.status.success(), "{}", text(&rm));
    podman.run_ok(
        &["container", "restore", "--import", archive],
        "restore.log",
    );
    podman.wait_for_count_above(before.len() + 3);
    let after = podman.counter();
    let expected: Vec<u64> = (0..after.len() as u64).collect();
    assert_eq!(
        after, expected,
        "the imported counter goes on with no reset, gap or repeat"
    );
}

/// `--tcp-established` through podman: a container reading an established connection
/// from the test is checkpointed and restored with it; what the test sends before and
/// after reaches it over the same connection.
#[test]
fn podman_keeps_an_established_connection() {
    use std::io::Write;
    const LISTENER: &str = "criu-rs-swrk-listener";
    let scratch = ScratchDir::new("swrk-podman-tcp");
    let Some(podman) = Podman::new(scratch.path()) else {
        return;
    };
    let started = podman.run(&[
        "run",
        "-d",
        "--name",
        LISTENER,
        "localhost/criu-rs-busybox",
        "/bin/nc",
        "-l",
        "-p",
        "7000",
    ]);
    assert!(started.status.success(), "{}", text(&started));
    let inspect = podman.run(&[
        "inspect",
        LISTENER,
        "--format",
        "{{.NetworkSettings.IPAddress}}",
    ]);
    let ip = String::from_utf8_lossy(&inspect.stdout).trim().to_owned();
    let mut conn = None;
    wait_until("the listener to accept", Duration::from_secs(30), || {
        conn = std::net::TcpStream::connect((ip.as_str(), 7000)).ok();
        conn.is_some()
    });
    let mut conn = conn.unwrap();
    conn.write_all(b"before\n").unwrap();
    let logs = || String::from_utf8_lossy(&podman.run(&["logs", LISTENER]).stdout).into_owned();
    wait_until("the first line to arrive", Duration::from_secs(30), || {
        logs().contains("before")
    });

    podman.run_ok(
        &["container", "checkpoint", "--tcp-established", LISTENER],
        "dump.log",
    );
    podman.assert_status(LISTENER, "Exited");
    podman.run_ok(
        &["container", "restore", "--tcp-established", LISTENER],
        "restore.log",
    );
    conn.write_all(b"after\n").unwrap();
    wait_until("the second line to arrive", Duration::from_secs(30), || {
        logs().contains("after")
    });
    assert_eq!(logs().lines().collect::<Vec<_>>(), ["before", "after"]);
}
