//! crpod end to end: real containers (namespaces, overlay root, cgroup) on the built-in
//! `host` image, each test under its own `--root`, removed by a guard also on failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use criu_rs_suite::{numbers, wait_until};

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
        let mut crpod = Command::new(env!("CARGO_BIN_EXE_crpod"));
        crpod.arg("--root").arg(&self.root).args(args);
        output_within(crpod, Duration::from_secs(120))
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

/// Runs `cmd` to its end with its output captured, as `Command::output`, but kills and
/// reaps it (failing the test) if it has not ended within `timeout`.
fn output_within(mut cmd: Command, timeout: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "-a", "-f"]);
        let _ = std::fs::remove_dir_all(&self.root);
    }
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

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
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
    // The container's init is pid 1 again, in its own namespaces.
    let inside = pod.ok(&[
        "exec",
        "looper",
        "sh",
        "-c",
        "tr '\\0' ' ' </proc/1/cmdline; echo; hostname",
    ]);
    let lines: Vec<&str> = inside.lines().collect();
    assert!(lines[0].starts_with("/bin/sh -c i=0"), "{inside}");
    assert_eq!(lines[1], &id[..12]);

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

/// `--export` compresses as the name says (zstd, podman's default, and gzip), the
/// system `tar` reads what it writes, and `restore --import` brings the container back
/// from each, finding the compression from the bytes, not the name.
#[test]
fn compressed_exports_are_read_by_tar_and_restore_elsewhere() {
    let pod = Pod::new("compressed");
    let _archives = Cleanup(pod.root.with_extension("archives"));
    let dir = &_archives.0;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    pod.ok(&[
        "run", "-d", "--name", "looper", "host", "/bin/sh", "-c", LOOP,
    ]);
    wait_until("output", Duration::from_secs(10), || {
        numbers(&pod.ok(&["logs", "looper"])).len() >= 2
    });
    // (extension, the magic at its start, tar's flag for it)
    let formats: [(&str, &[u8], &str); 2] = [
        ("tar.zst", &[0x28, 0xb5, 0x2f, 0xfd], "--zstd"),
        ("tar.gz", &[0x1f, 0x8b], "-z"),
    ];
    for (ext, magic, flag) in formats {
        let archive = dir.join(format!("looper.{ext}"));
        pod.ok(&[
            "container",
            "checkpoint",
            "--export",
            archive.to_str().unwrap(),
            "looper",
        ]);
        assert_eq!(
            mode_of(&archive),
            0o600,
            "{ext}: the archive holds the images"
        );
        let bytes = std::fs::read(&archive).unwrap();
        assert!(bytes.starts_with(magic), "{ext} is compressed");
        let mut tar = Command::new("tar");
        tar.arg(flag).arg("-tf").arg(&archive);
        let listing = output_within(tar, Duration::from_secs(60));
        assert!(
            listing.status.success(),
            "tar {flag} -tf {ext}: {}",
            String::from_utf8_lossy(&listing.stderr)
        );
        let listing = String::from_utf8_lossy(&listing.stdout);
        for member in ["config.json", "checkpoint/pstree.img", "upper"] {
            assert!(
                listing.lines().any(|l| l.trim_end_matches('/') == member),
                "{ext}: no {member} in {listing}"
            );
        }
        let last = *numbers(&pod.ok(&["logs", "looper"])).last().unwrap();
        // Under another name that says nothing (or lies) about the compression.
        let renamed = dir.join(format!("renamed-{ext}.tar"));
        std::fs::copy(&archive, &renamed).unwrap();
        for (n, from) in [&archive, &renamed].into_iter().enumerate() {
            let other = Pod::new(&format!("compressed-{n}-{}", ext.replace('.', "-")));
            other.ok(&[
                "container",
                "restore",
                "--import",
                from.to_str().unwrap(),
                "--name",
                "moved",
            ]);
            wait_until(
                "output of the imported container",
                Duration::from_secs(10),
                || numbers(&other.ok(&["logs", "moved"])).len() >= 2,
            );
            let moved = numbers(&other.ok(&["logs", "moved"]));
            assert_eq!(moved[0], last + 1, "{ext}: {moved:?}");
            assert!(moved.windows(2).all(|w| w[1] == w[0] + 1), "{moved:?}");
        }
        // The original comes back from its own checkpoint for the next format.
        pod.ok(&["container", "restore", "looper"]);
        wait_until("counting on", Duration::from_secs(10), || {
            numbers(&pod.ok(&["logs", "looper"])).len() > (last + 2) as usize
        });
    }
    // Names of compressions crpod does not write are refused before anything runs.
    let xz = dir.join("looper.tar.xz");
    let err = pod.fails(&["checkpoint", "--export", xz.to_str().unwrap(), "looper"]);
    assert!(err.contains(".xz"), "{err}");
    assert!(!xz.exists());
    assert_eq!(state_of(&pod, "looper")["Status"], "running");
}

/// (name, type, link target) of an entry with a raw name: the tar crate's setters
/// refuse the `..` and absolute names a hostile archive has.
type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8]);

fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, link) in entries {
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(*kind);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1);
        header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        let data: &[u8] = if kind.is_file() { b"pwned\n" } else { b"" };
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(bytes).unwrap();
    z.finish().unwrap()
}

/// Hostile archives, as an image (`import`, `load`) or a checkpoint (`restore
/// --import`), are refused with the entry named, and nothing is unpacked outside.
#[test]
fn hostile_archives_are_refused_and_leave_nothing_outside() {
    use tar::EntryType as T;
    let pod = Pod::new("hostile");
    let work = Cleanup(pod.root.with_extension("work"));
    let _ = std::fs::remove_dir_all(&work.0);
    let outside = work.0.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let out = outside.as_os_str().as_encoded_bytes();
    let abs = outside.join("abs");
    // From images/NAME/rootfs (or the import's staging directory) up to `outside`.
    let dots = format!(
        "../../../../{}/outside/dots",
        work.0.file_name().unwrap().to_str().unwrap()
    );
    let cases: Vec<(Vec<RawEntry>, &str)> = vec![
        (
            vec![(abs.as_os_str().as_encoded_bytes(), T::Regular, b"")],
            "absolute path",
        ),
        (vec![(dots.as_bytes(), T::Regular, b"")], "`..` in the path"),
        (
            vec![(b"esc", T::Symlink, out), (b"esc/pwned", T::Regular, b"")],
            r#"entry "esc/pwned": it lies below the symlink "esc""#,
        ),
        (
            vec![(b"nl\n", T::Symlink, out), (b"nl\n/pwned", T::Regular, b"")],
            r#"entry "nl\n/pwned": it lies below the symlink "nl\n""#,
        ),
        (
            vec![(b"\xff", T::Symlink, out), (b"\xff/pwned", T::Regular, b"")],
            r#"entry "\xff/pwned": it lies below the symlink "\xff""#,
        ),
        (
            vec![(b"lib/up", T::Symlink, b"../../..")],
            r#"entry "lib/up": a symlink to "../../.." escapes the root"#,
        ),
        (
            vec![(b"hard", T::Link, b"../../../../etc/passwd")],
            r#"entry "hard": a hard link to "../../../../etc/passwd""#,
        ),
    ];
    for (n, (entries, expected)) in cases.iter().enumerate() {
        let bytes = raw_tar(entries);
        // Plain and compressed: the checks do not depend on how the bytes came.
        for (kind, data) in [("tar", bytes.clone()), ("tar.gz", gzip(&bytes))] {
            let archive = work.0.join(format!("case{n}.{kind}"));
            std::fs::write(&archive, &data).unwrap();
            let name = format!("hostile{n}");
            let err = pod.fails(&["import", archive.to_str().unwrap(), &name]);
            assert!(err.contains(expected), "case {n} {kind} import: {err}");
            assert!(err.contains(archive.to_str().unwrap()), "{err}");
            assert!(!pod.root.join("images").join(&name).exists(), "case {n}");
            let err = pod.fails(&[
                "container",
                "restore",
                "--import",
                archive.to_str().unwrap(),
                "--name",
                &name,
            ]);
            assert!(err.contains(expected), "case {n} {kind} restore: {err}");
            assert_eq!(
                std::fs::read_dir(&outside).unwrap().count(),
                0,
                "case {n} {kind}: written outside"
            );
        }
        // As the second layer of a docker-archive, over a harmless first one.
        let layers = work.0.join(format!("layers{n}"));
        std::fs::create_dir_all(&layers).unwrap();
        std::fs::write(
            layers.join("1.tar"),
            raw_tar(&[(b"etc", T::Directory, b"")]),
        )
        .unwrap();
        std::fs::write(layers.join("2.tar"), &bytes).unwrap();
        std::fs::write(
            layers.join("manifest.json"),
            format!(r#"[{{"RepoTags":["hostile{n}:latest"],"Layers":["1.tar","2.tar"]}}]"#),
        )
        .unwrap();
        let loaded = work.0.join(format!("load{n}.tar"));
        tar_dir(&layers, &loaded, &[]);
        let err = pod.fails(&["load", "-i", loaded.to_str().unwrap()]);
        assert!(
            err.contains("layer 2 of 2") && err.contains(expected),
            "case {n} load: {err}"
        );
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "case {n} load"
        );
    }
    assert_eq!(
        pod.ok(&["images"]).lines().count(),
        2,
        "only the built-in image"
    );
    assert_eq!(
        pod.ok(&["ps", "-a", "-q"]).lines().count(),
        0,
        "no container"
    );
    // Nothing left behind in the store either (staging directories are removed).
    let left: Vec<_> = std::fs::read_dir(&pod.root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");

    // Odd names are names, not attacks: a rootfs with them is imported byte for byte.
    let odd: [&[u8]; 3] = [b"etc/new\nline", b"etc/caf\xe9", "etc/日本".as_bytes()];
    let mut entries: Vec<RawEntry> = vec![(b"etc", T::Directory, b"")];
    entries.extend(odd.iter().map(|n| (*n, T::Regular, &b""[..])));
    let archive = work.0.join("odd.tar");
    std::fs::write(&archive, raw_tar(&entries)).unwrap();
    pod.ok(&["import", archive.to_str().unwrap(), "odd"]);
    let rootfs = pod.root.join("images/odd/rootfs");
    for name in odd {
        use std::os::unix::ffi::OsStrExt;
        let path = rootfs.join(std::ffi::OsStr::from_bytes(name));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"pwned\n",
            "{}",
            path.display()
        );
    }
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

/// A minimal root filesystem from the host's dash and libc, with /etc/marker and
/// /etc/gone.
fn mini_rootfs(dir: &Path, marker: &str) {
    for (from, to) in [
        ("/bin/dash", "bin/sh"),
        (
            "/lib/x86_64-linux-gnu/libc.so.6",
            "lib/x86_64-linux-gnu/libc.so.6",
        ),
        ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
    ] {
        let to = dir.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap();
    }
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/marker"), format!("{marker}\n")).unwrap();
    std::fs::write(dir.join("etc/gone"), "bye").unwrap();
}

fn tar_dir(dir: &Path, out: &Path, extra: &[&str]) {
    let mut tar = Command::new("tar");
    tar.arg("-C")
        .arg(dir)
        .args(extra)
        .arg("-cf")
        .arg(out)
        .arg(".");
    let done = output_within(tar, Duration::from_secs(60));
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(std::fs::read(path).unwrap());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stores `bytes` as a blob of an OCI layout; returns its descriptor's digest and size.
fn oci_blob(blobs: &Path, file: &Path) -> (String, u64) {
    let digest = sha256(file);
    std::fs::copy(file, blobs.join(&digest)).unwrap();
    (digest, std::fs::metadata(file).unwrap().len())
}

#[test]
fn import_load_images_and_rmi() {
    let pod = Pod::new("images");
    let work = pod.root.with_extension("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let _cleanup = Cleanup(work.clone());

    // import: a rootfs tarball.
    let base = work.join("base");
    mini_rootfs(&base, "marker-1");
    let base_tar = work.join("base.tar");
    tar_dir(&base, &base_tar, &[]);
    pod.ok(&["import", base_tar.to_str().unwrap(), "mini"]);
    assert!(pod.ok(&["images"]).contains("localhost/mini"));
    let out = pod.ok(&[
        "run",
        "--name",
        "m",
        "mini",
        "/bin/sh",
        "-c",
        "read m </etc/marker; echo $m; echo $$",
    ]);
    assert_eq!(out, "marker-1\n1\n");

    // load: a docker-archive with a second layer that changes a file and whites one out.
    let top = work.join("top");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::write(top.join("etc/marker"), "marker-2\n").unwrap();
    std::fs::write(top.join("etc/.wh.gone"), "").unwrap();
    let docker = work.join("docker");
    std::fs::create_dir_all(docker.join("l1")).unwrap();
    std::fs::create_dir_all(docker.join("l2")).unwrap();
    std::fs::copy(&base_tar, docker.join("l1/layer.tar")).unwrap();
    tar_dir(&top, &docker.join("l2/layer.tar"), &[]);
    std::fs::write(
        docker.join("manifest.json"),
        r#"[{"Config":"config.json","RepoTags":["docker.io/library/tiny:latest"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#,
    )
    .unwrap();
    std::fs::write(docker.join("config.json"), "{}").unwrap();
    let docker_tar = work.join("docker.tar");
    tar_dir(&docker, &docker_tar, &[]);
    assert_eq!(
        pod.ok(&["load", "-i", docker_tar.to_str().unwrap()]).trim(),
        "Loaded image: localhost/tiny"
    );
    let out = pod.ok(&[
        "run",
        "tiny",
        "/bin/sh",
        "-c",
        "read m </etc/marker; echo $m; test -e /etc/gone || echo gone",
    ]);
    assert_eq!(out, "marker-2\ngone\n");

    // load: an OCI layout with a compressed layer.
    let oci = work.join("oci");
    let blobs = oci.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer = work.join("layer.tar.gz");
    tar_dir(&base, &layer, &["-z"]);
    // Descriptors as the OCI image spec has them (podman save writes them so): media
    // type, digest and size each, and a config.
    let (layer_digest, layer_size) = oci_blob(&blobs, &layer);
    let config_path = work.join("config");
    std::fs::write(
        &config_path,
        r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
    )
    .unwrap();
    let (config_digest, config_size) = oci_blob(&blobs, &config_path);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{layer_digest}","size":{layer_size}}}]}}"#
    );
    let manifest_path = work.join("manifest");
    std::fs::write(&manifest_path, &manifest).unwrap();
    let (manifest_digest, manifest_size) = oci_blob(&blobs, &manifest_path);
    std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        oci.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_digest}","size":{manifest_size},"annotations":{{"org.opencontainers.image.ref.name":"ocitiny"}}}}]}}"#
        ),
    )
    .unwrap();
    let oci_tar = work.join("oci.tar");
    tar_dir(&oci, &oci_tar, &[]);
    pod.ok(&["load", "-i", oci_tar.to_str().unwrap()]);
    assert_eq!(
        pod.ok(&[
            "run",
            "ocitiny",
            "/bin/sh",
            "-c",
            "read m </etc/marker; echo $m"
        ]),
        "marker-1\n"
    );

    // An OCI blob that does not match its digest.
    std::fs::write(blobs.join(&layer_digest), b"tampered").unwrap();
    let bad_oci = work.join("bad-oci.tar");
    tar_dir(&oci, &bad_oci, &[]);
    let err = pod.fails(&["load", "-i", bad_oci.to_str().unwrap()]);
    assert!(err.contains("digest"), "{err}");

    // A hostile archive: a layer's file below a lower layer's symlink to outside.
    let outside = work.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let evil = work.join("evil");
    let (l1, l2) = (evil.join("l1"), evil.join("l2"));
    std::fs::create_dir_all(&l1).unwrap();
    std::fs::create_dir_all(l2.join("escape")).unwrap();
    std::os::unix::fs::symlink(&outside, l1.join("escape")).unwrap();
    std::fs::write(l2.join("escape/pwned"), "x").unwrap();
    let layers = evil.join("layers");
    std::fs::create_dir_all(&layers).unwrap();
    tar_dir(&l1, &layers.join("1.tar"), &[]);
    tar_dir(&l2, &layers.join("2.tar"), &[]);
    std::fs::write(
        layers.join("manifest.json"),
        r#"[{"RepoTags":["evil:latest"],"Layers":["1.tar","2.tar"]}]"#,
    )
    .unwrap();
    let evil_tar = work.join("evil.tar");
    tar_dir(&layers, &evil_tar, &[]);
    let err = pod.fails(&["load", "-i", evil_tar.to_str().unwrap()]);
    assert!(err.contains("symlink"), "{err}");
    assert!(
        !outside.join("pwned").exists(),
        "nothing written outside the image"
    );
    assert!(!pod.ok(&["images"]).contains("localhost/evil"));

    // Mistakes: a broken archive, a name taken, an image in use, the built-in one.
    let junk = work.join("junk.tar");
    std::fs::write(&junk, b"junk").unwrap();
    pod.fails(&["load", "-i", junk.to_str().unwrap()]);
    pod.fails(&["import", base_tar.to_str().unwrap(), "mini"]);
    let err = pod.fails(&["rmi", "mini"]);
    assert!(err.contains("in use"), "{err}");
    pod.fails(&["rmi", "host"]);
    pod.ok(&["rmi", "-f", "mini"]);
    assert!(!pod.ok(&["images"]).contains("localhost/mini"));
    assert!(!pod.ok(&["ps", "-a"]).contains(" m\n"));
    pod.fails(&["run", "mini", "/bin/sh"]);
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
