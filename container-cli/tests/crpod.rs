//! crpod end to end: real containers (namespaces, overlay root, cgroup) on the built-in
//! `host` image, each test under its own `--root`, removed by a guard also on failure.
//! Images and archives (import, load, export, hostile input) are in `archives.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{mode_of, state_of, Pod, LOOP};
use criu_rs_suite::{numbers, wait_until};

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
    no_cgroup_left(&id);
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
    // logs --tail, and start runs the command again, appending to the same log.
    assert_eq!(pod.ok(&["logs", "--tail", "1", "seven"]), "hi\n");
    pod.ok(&["start", "seven"]);
    wait_until("the second run", Duration::from_secs(10), || {
        pod.ok(&["logs", "seven"]) == "hi\nhi\n"
    });
    // logs -f follows until the container ends.
    pod.ok(&[
        "run",
        "-d",
        "--name",
        "follow",
        "host",
        "/bin/sh",
        "-c",
        "echo a; sleep 0.5; echo b",
    ]);
    assert_eq!(pod.ok(&["logs", "-f", "follow"]), "a\nb\n");
    pod.ok(&["rm", "follow"]);
    // A command that does not exist: the init's reason reaches `run`.
    let err = pod.fails(&["run", "-d", "host", "/no/such/command"]);
    assert!(err.contains("/no/such/command"), "{err}");
    assert_eq!(pod.ok(&["ps", "-a", "-q"]).lines().count(), 1);
}

#[test]
fn ps_cuts_multi_byte_commands_between_characters() {
    let pod = Pod::new("utf8");
    // Byte 17 of the joined command falls inside the first 'é'.
    let out = pod.cmd(&[
        "run",
        "--name",
        "accents",
        "host",
        "/bin/sh",
        "-c",
        "echo ééééééé",
    ]);
    assert_eq!(out.status.code(), Some(0));
    pod.ok(&[
        "run",
        "-d",
        "--name",
        "wide",
        "host",
        "/bin/sh",
        "-c",
        ": 日本語のテキスト; sleep 60",
    ]);
    let ps = pod.ok(&["ps", "-a"]);
    let row = |name: &str| {
        ps.lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {ps}"))
            .to_owned()
    };
    // The COMMAND cell: 20 columns from column 38, as in the header.
    let command_cell = |line: &str| line.chars().skip(38).take(22).collect::<String>();
    assert_eq!(
        command_cell(ps.lines().next().unwrap()),
        format!("{:<22}", "COMMAND")
    );
    assert_eq!(
        command_cell(&row("accents")),
        "/bin/sh -c echo é...  ",
        "{ps}"
    );
    // Wide characters take two columns each: 13 + 2 + 2 + 3 columns, no padding.
    assert!(row("wide").contains("  /bin/sh -c : 日本...  "), "{ps}");
    pod.ok(&["rm", "-f", "wide"]);
}

/// Whether the numbers are 0, 1, 2, ... with no reset, gap or repeat.
fn counts_from_zero(n: &[u64]) -> bool {
    n.iter().enumerate().all(|(i, &v)| v == i as u64)
}

fn inspect_pid(pod: &Pod, name: &str) -> i64 {
    state_of(pod, name)["Pid"].as_i64().unwrap()
}

#[test]
fn tutorial_checkpoint_and_restore_count_on() {
    let pod = Pod::new("tutorial");
    let id = pod.ok(&[
        "run", "-d", "--name", "looper", "host", "/bin/sh", "-c", LOOP,
    ]);
    let id = id.trim().to_owned();
    wait_until("output", Duration::from_secs(10), || {
        numbers(&pod.ok(&["logs", "-l"])).len() >= 3
    });
    assert!(pod.ok(&["ps", "-a"]).contains("Up "));
    let first_pid = inspect_pid(&pod, "looper");

    assert_eq!(pod.ok(&["container", "checkpoint", "-l"]).trim(), id);
    let ps = pod.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited (0)"), "{ps}");
    let state = state_of(&pod, "looper");
    assert_eq!(state["Checkpointed"], true);
    assert!(!Path::new(&format!("/proc/{first_pid}")).exists());
    // The images hold the container's memory: only root may read them.
    let images = pod.root.join("containers").join(&id).join("checkpoint");
    assert_eq!(mode_of(&images), 0o700);
    let files: Vec<PathBuf> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.iter().any(|f| f.ends_with("pstree.img")), "{files:?}");
    for f in &files {
        assert_eq!(mode_of(f), 0o600, "{}", f.display());
    }
    let stopped_at = numbers(&pod.ok(&["logs", "-l"]));
    assert!(counts_from_zero(&stopped_at), "{stopped_at:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        numbers(&pod.ok(&["logs", "-l"])),
        stopped_at,
        "no output while checkpointed"
    );

    assert_eq!(pod.ok(&["container", "restore", "-l"]).trim(), id);
    assert!(pod.ok(&["ps", "-a"]).contains("Up "));
    wait_until("more output", Duration::from_secs(10), || {
        numbers(&pod.ok(&["logs", "-l"])).len() >= stopped_at.len() + 3
    });
    let all = numbers(&pod.ok(&["logs", "-l"]));
    assert!(
        counts_from_zero(&all),
        "counts on with no reset or gap: {all:?}"
    );
    // The container's init is pid 1 again, in its own namespaces; a command run in it
    // shares its time namespace, the new one the restore made.
    let inside = pod.ok(&[
        "exec",
        "looper",
        "sh",
        "-c",
        "tr '\\0' ' ' </proc/1/cmdline; echo; hostname; readlink /proc/1/ns/time /proc/self/ns/time",
    ]);
    let lines: Vec<&str> = inside.lines().collect();
    assert!(lines[0].starts_with("/bin/sh -c i=0"), "{inside}");
    assert_eq!(lines[1], &id[..12]);
    assert_eq!(lines[2], lines[3], "{inside}");
    let ours = std::fs::read_link("/proc/self/ns/time").unwrap();
    assert_ne!(lines[2], ours.to_string_lossy(), "{inside}");

    let pid = inspect_pid(&pod, "looper");
    pod.ok(&["kill", "-a"]);
    pod.ok(&["rm", "-a"]);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "no process");
    no_cgroup_left(&id);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&pod.root.display().to_string()),
        "no mount"
    );
    assert_eq!(
        std::fs::read_dir(pod.root.join("containers"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn leave_running_ten_rounds_and_export_import_elsewhere() {
    let pod = Pod::new("rounds");
    pod.ok(&[
        "run", "-d", "--name", "looper", "host", "/bin/sh", "-c", LOOP,
    ]);
    wait_until("output", Duration::from_secs(10), || {
        numbers(&pod.ok(&["logs", "looper"])).len() >= 2
    });
    // -R: it keeps running, and keeps counting.
    let pid = inspect_pid(&pod, "looper");
    pod.ok(&["container", "checkpoint", "-R", "looper"]);
    assert_eq!(inspect_pid(&pod, "looper"), pid);
    let n = numbers(&pod.ok(&["logs", "looper"])).len();
    wait_until("counting on after -R", Duration::from_secs(10), || {
        numbers(&pod.ok(&["logs", "looper"])).len() > n + 1
    });
    for round in 0..10 {
        pod.ok(&["checkpoint", "looper"]);
        let out = pod.cmd(&["restore", "looper"]);
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let n = numbers(&pod.ok(&["logs", "looper"])).len();
    wait_until("counting after ten rounds", Duration::from_secs(10), || {
        numbers(&pod.ok(&["logs", "looper"])).len() > n + 1
    });
    let all = numbers(&pod.ok(&["logs", "looper"]));
    assert!(counts_from_zero(&all), "{all:?}");

    // Export, remove, import under another root: it counts on from where it stopped.
    let archive = pod.root.with_extension("tar");
    let _ = std::fs::remove_file(&archive);
    pod.ok(&[
        "container",
        "checkpoint",
        "--export",
        archive.to_str().unwrap(),
        "looper",
    ]);
    assert_eq!(mode_of(&archive), 0o600, "the archive holds the images");
    let last = *numbers(&pod.ok(&["logs", "looper"])).last().unwrap();
    pod.ok(&["rm", "looper"]);
    let other = Pod::new("rounds-elsewhere");
    pod.fails(&["restore", "-l"]);
    let restored = other.ok(&[
        "container",
        "restore",
        "--import",
        archive.to_str().unwrap(),
        "--name",
        "moved",
    ]);
    assert_eq!(restored.trim().len(), 64);
    wait_until(
        "output of the imported container",
        Duration::from_secs(10),
        || numbers(&other.ok(&["logs", "moved"])).len() >= 2,
    );
    let moved = numbers(&other.ok(&["logs", "moved"]));
    assert_eq!(moved[0], last + 1, "{moved:?}");
    assert!(moved.windows(2).all(|w| w[1] == w[0] + 1), "{moved:?}");
    let _ = std::fs::remove_file(&archive);
}

#[test]
fn mistakes_get_a_message_and_change_nothing() {
    let pod = Pod::new("mistakes");
    pod.fails(&["container", "checkpoint", "nobody"]);
    pod.ok(&[
        "run", "-d", "--name", "looper", "host", "/bin/sh", "-c", LOOP,
    ]);
    // Restore of a running container; a second container with the same name.
    let err = pod.fails(&["container", "restore", "looper"]);
    assert!(err.contains("running"), "{err}");
    pod.fails(&["run", "-d", "--name", "looper", "host", "true"]);
    assert_eq!(state_of(&pod, "looper")["Status"], "running");
    // Checkpoint of a stopped container.
    pod.ok(&["kill", "looper"]);
    wait_until("exited", Duration::from_secs(10), || {
        state_of(&pod, "looper")["Status"] == "exited"
    });
    let err = pod.fails(&["container", "checkpoint", "looper"]);
    assert!(err.contains("not running"), "{err}");
    let err = pod.fails(&["container", "restore", "looper"]);
    assert!(err.contains("no checkpoint"), "{err}");
    // Corrupt and truncated archives.
    let junk = pod.root.join("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive at all").unwrap();
    pod.fails(&["container", "restore", "--import", junk.to_str().unwrap()]);
    pod.ok(&[
        "run", "-d", "--name", "second", "host", "/bin/sh", "-c", LOOP,
    ]);
    let good = pod.root.join("good.tar");
    pod.ok(&[
        "container",
        "checkpoint",
        "--export",
        good.to_str().unwrap(),
        "second",
    ]);
    let bytes = std::fs::read(&good).unwrap();
    let cut = pod.root.join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    pod.fails(&[
        "container",
        "restore",
        "--import",
        cut.to_str().unwrap(),
        "--name",
        "third",
    ]);
    let names = pod.ok(&["ps", "-a"]);
    assert!(!names.contains("third"), "{names}");
    assert_eq!(pod.ok(&["ps", "-a", "-q"]).lines().count(), 2);
}

#[test]
fn memcached_keeps_its_keys_across_checkpoint_and_restore() {
    if !Path::new("/usr/bin/memcached").exists() {
        assert!(
            std::env::var_os("CRIU_RS_REQUIRE_SERVERS").is_none(),
            "memcached is required here"
        );
        eprintln!("memcached not installed: skipped");
        return;
    }
    let pod = Pod::new("memcached");
    pod.ok(&[
        "run",
        "-d",
        "--name",
        "mc",
        "host",
        "/usr/bin/memcached",
        "-u",
        "root",
        "-l",
        "127.0.0.1",
        "-p",
        "11211",
        "-U",
        "0",
    ]);
    let client = r#"
import socket, sys, time
def conn():
    for _ in range(100):
        try:
            return socket.create_connection(("127.0.0.1", 11211), timeout=5)
        except OSError:
            time.sleep(0.05)
    raise SystemExit("no memcached")
s = conn()
f = s.makefile("rwb")
n = 500
if sys.argv[1] == "set":
    for i in range(n):
        v = b"value-%d" % i
        f.write(b"set key%d 0 0 %d\r\n%s\r\n" % (i, len(v), v))
    f.flush()
    for i in range(n):
        assert f.readline() == b"STORED\r\n"
    print("stored", n)
else:
    ok = 0
    for i in range(n):
        f.write(b"get key%d\r\n" % i); f.flush()
        line = f.readline()
        if line.startswith(b"VALUE"):
            data = f.readline().strip()
            f.readline()
            ok += data == b"value-%d" % i
        else:
            pass
    print("found", ok)
"#;
    assert_eq!(
        pod.ok(&["exec", "mc", "python3", "-c", client, "set"])
            .trim(),
        "stored 500"
    );
    pod.ok(&["container", "checkpoint", "mc"]);
    pod.ok(&["container", "restore", "mc"]);
    assert_eq!(
        pod.ok(&["exec", "mc", "python3", "-c", client, "get"])
            .trim(),
        "found 500"
    );
}

#[test]
fn files_of_the_container_and_network_host_come_back() {
    let pod = Pod::new("files");
    // An fd kept open on a file of the container's own (writable) layer, and a pipe.
    let script = "exec 3>>/var/tmp/counter; i=0; while true; do echo $i >&3; echo $i; \
                  i=$(expr $i + 1); sleep 0.2; done";
    pod.ok(&[
        "run",
        "-d",
        "--name",
        "files",
        "--network",
        "host",
        "-w",
        "/var",
        "host",
        "/bin/sh",
        "-c",
        script,
    ]);
    wait_until("output", Duration::from_secs(10), || {
        numbers(&pod.ok(&["logs", "files"])).len() >= 2
    });
    // --network host: the host's interfaces are there.
    let nets = pod.ok(&["exec", "files", "ls", "/sys/class/net"]);
    assert!(nets.lines().count() > 1, "{nets}");
    assert_eq!(pod.ok(&["exec", "files", "pwd"]).trim(), "/var");
    pod.ok(&["checkpoint", "files"]);
    pod.ok(&["restore", "files"]);
    let n = numbers(&pod.ok(&["logs", "files"])).len();
    wait_until("more output", Duration::from_secs(10), || {
        numbers(&pod.ok(&["logs", "files"])).len() > n + 2
    });
    pod.ok(&["stop", "-t", "1", "files"]);
    // The file in the container's layer went on in the same file, from where it was.
    let counter = std::fs::read_to_string(
        std::fs::read_dir(pod.root.join("containers"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join("upper/var/tmp/counter"),
    )
    .unwrap();
    let all = numbers(&counter);
    assert!(all.len() > n && counts_from_zero(&all), "{all:?}");
    assert!(
        !Path::new("/var/tmp/counter").exists(),
        "the host's /var/tmp is untouched"
    );
}

/// No cgroup hierarchy (v2 at /sys/fs/cgroup or below it, or any v1 one) has a cgroup
/// of the container.
fn no_cgroup_left(id: &str) {
    let top = Path::new("/sys/fs/cgroup");
    let below = std::fs::read_dir(top).unwrap().flatten().map(|h| h.path());
    for hierarchy in std::iter::once(top.to_owned()).chain(below) {
        let cg = hierarchy.join("crpod").join(id);
        assert!(!cg.exists(), "cgroup left: {}", cg.display());
    }
}

/// A client outside the container (the test itself, through `--network host`) keeps
/// its connection to the container's memcached across `checkpoint --tcp-established` and `restore`; without
/// the flag the checkpoint is refused and the container serves on.
#[test]
fn an_outside_client_keeps_its_connection_with_tcp_established() {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;
    if !Path::new("/usr/bin/memcached").exists() {
        assert!(
            std::env::var_os("CRIU_RS_REQUIRE_SERVERS").is_none(),
            "memcached is required here"
        );
        eprintln!("memcached not installed: skipped");
        return;
    }
    // A port of this test's own (memcached_keeps_its_keys... uses 11211).
    const PORT: &str = "11342";
    let pod = Pod::new("tcpest");
    pod.ok(&[
        "run",
        "-d",
        "--name",
        "mc",
        "--network",
        "host",
        "host",
        "/usr/bin/memcached",
        "-u",
        "root",
        "-l",
        "127.0.0.1",
        "-p",
        PORT,
        "-U",
        "0",
    ]);
    let addr = format!("127.0.0.1:{PORT}");
    let mut client = None;
    wait_until("memcached listens", Duration::from_secs(10), || {
        client = TcpStream::connect(&addr).ok();
        client.is_some()
    });
    let client = client.expect("memcached answers");
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut w = client;
    let mut ask = |req: &str, lines: usize| -> Vec<String> {
        w.write_all(req.as_bytes()).unwrap();
        (0..lines)
            .map(|_| {
                let mut l = String::new();
                reader.read_line(&mut l).unwrap();
                l.trim_end().to_owned()
            })
            .collect()
    };
    assert_eq!(ask("set k 0 0 5\r\nhello\r\n", 1), ["STORED"]);
    // Refused by name, and the container serves on, the connection too.
    let err = pod.fails(&["container", "checkpoint", "mc"]);
    assert!(err.contains("--tcp-established"), "{err}");
    assert_eq!(ask("get k\r\n", 3), ["VALUE k 0 5", "hello", "END"]);
    pod.ok(&["container", "checkpoint", "--tcp-established", "mc"]);
    assert_eq!(state_of(&pod, "mc")["Status"], "exited");
    pod.ok(&["container", "restore", "mc"]);
    // The same connection, after the restore, both ways.
    assert_eq!(ask("get k\r\n", 3), ["VALUE k 0 5", "hello", "END"]);
    assert_eq!(ask("set k2 0 0 2\r\nok\r\n", 1), ["STORED"]);
    assert_eq!(ask("get k2\r\n", 3), ["VALUE k2 0 2", "ok", "END"]);
}

/// A container's /dev/shm is a tmpfs of its own mount namespace, which the images do
/// not hold: crpod saves its contents with the checkpoint. Python's multiprocessing
/// keeps its locks and queues' semaphores there, mapped; the restored program maps
/// them again by name and goes on checking every batch its workers return.
#[test]
fn python_multiprocessing_keeps_its_dev_shm_semaphores_across_checkpoint_and_restore() {
    let Some(python) = criu_rs_suite::installed_server("/usr/bin/python3") else {
        return;
    };
    let pod = Pod::new("devshm");
    std::fs::create_dir_all(&pod.root).unwrap();
    let script = pod.root.join("mp.py");
    std::fs::write(&script, criu_rs_suite::PYTHON_MP_FORKSERVER).unwrap();
    let script = script.to_str().unwrap();
    pod.ok(&[
        "run", "-d", "--name", "mp", "host", python, "-u", script, "/no-stop",
    ]);
    let batches = |pod: &Pod| {
        let logs = pod.ok(&["logs", "mp"]);
        assert!(
            !logs.contains("Traceback") && !logs.contains("BAD"),
            "{logs}"
        );
        logs.lines().filter(|l| l.starts_with("batch ")).count()
    };
    wait_until("batches", Duration::from_secs(30), || batches(&pod) >= 3);
    let shm = pod.ok(&["exec", "mp", "ls", "/dev/shm"]);
    assert!(shm.contains("sem.mp-"), "{shm}");
    pod.ok(&["container", "checkpoint", "mp"]);
    let before = batches(&pod);
    pod.ok(&["container", "restore", "mp"]);
    wait_until("batches after the restore", Duration::from_secs(30), || {
        batches(&pod) >= before + 5
    });
    pod.ok(&["rm", "-f", "mp"]);
}

/// A Python one-liner that tries io_uring_setup(2) and prints its result and errno.
const TRY_IO_URING: &str = "import ctypes; libc = ctypes.CDLL(None, use_errno=True); \
     params = ctypes.create_string_buffer(120); \
     print('io_uring_setup', libc.syscall(425, 8, params), ctypes.get_errno(), flush=True)";

/// As podman's default seccomp profile, crpod's containers get ENOSYS from io_uring
/// (programs fall back to other I/O, which a checkpoint records; a ring it refuses),
/// in their command and in `exec`, and still after a checkpoint and restore.
#[test]
fn io_uring_fails_with_enosys_in_containers_also_after_a_restore() {
    let Some(python) = criu_rs_suite::installed_server("/usr/bin/python3") else {
        return;
    };
    let pod = Pod::new("nouring");
    let denied = format!("io_uring_setup -1 {}", libc::ENOSYS);
    let looping = format!("{TRY_IO_URING}\nimport time\nwhile True: time.sleep(1)");
    pod.ok(&["run", "-d", "--name", "u", "host", python, "-c", &looping]);
    wait_until("the first try", Duration::from_secs(20), || {
        pod.ok(&["logs", "u"]).contains("io_uring_setup")
    });
    assert!(pod.ok(&["logs", "u"]).contains(&denied));
    assert!(pod
        .ok(&["exec", "u", python, "-c", TRY_IO_URING])
        .contains(&denied));
    pod.ok(&["container", "checkpoint", "u"]);
    pod.ok(&["container", "restore", "u"]);
    let status = pod.ok(&["exec", "u", "cat", "/proc/1/status"]);
    assert!(status.contains("Seccomp_filters:\t1"), "{status}");
    assert!(pod
        .ok(&["exec", "u", python, "-c", TRY_IO_URING])
        .contains(&denied));
    pod.ok(&["rm", "-f", "u"]);
}
