//! Helpers shared by the integration tests: where the fixtures are, scratch directories
//! that clean up after themselves, and the independent image reader (Debian's `crit`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The CRIU 4.2 golden images (`CRIU_RS_FIXTURES` overrides the copy in tests/fixtures).
pub fn fixtures() -> PathBuf {
    std::env::var_os("CRIU_RS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/criu-4.2"))
}

/// Names of the fixture dumps (`fds`, `looper`...).
pub fn fixture_dumps() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join("images"))
        .expect("fixture images directory")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

/// The protobuf image files of one dump (everything but raw pages and the log), as
/// (file name, crit-json base name).
pub fn fixture_images(dump: &str) -> Vec<(PathBuf, String)> {
    let dir = fixtures().join("images").join(dump);
    let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .expect("fixture dump directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            !name.starts_with("pages-") && name != "dump.log"
        })
        .map(|p| {
            let base = p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches(".img")
                .to_owned();
            (p, base)
        })
        .collect();
    files.sort();
    files
}

/// A directory under the system temp dir, unique to this test, removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("criu-rs-test-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        ScratchDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A working CRIU 4.x to compare with: `$CRIU`, or `criu` on PATH, if it passes
/// `criu check` and says it is version 4 (Debian's criu 3.17 does not run on this kernel).
pub fn criu_4() -> Option<PathBuf> {
    let path = std::env::var_os("CRIU").map_or_else(|| PathBuf::from("criu"), PathBuf::from);
    let version = Command::new(&path).arg("--version").output().ok()?;
    let works = Command::new(&path)
        .arg("check")
        .output()
        .is_ok_and(|o| o.status.success());
    let text = String::from_utf8_lossy(&version.stdout).into_owned();
    (works && text.contains("Version: 4.")).then_some(path)
}

/// Another build of criu-rs to compare with (`$CRIU_RS_BASELINE`, e.g. a release build of
/// an earlier commit), when that file exists.
pub fn baseline_criu_rs() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("CRIU_RS_BASELINE")?);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("CRIU_RS_BASELINE={}: no such file", path.display());
        None
    }
}

/// `criu_4()`, saying what is `skipped` when there is none.
pub fn criu_4_or_skip(skipped: &str) -> Option<PathBuf> {
    let criu = criu_4();
    if criu.is_none() {
        eprintln!("no working CRIU 4.x ($CRIU or criu on PATH): {skipped} skipped");
    }
    criu
}

/// Debian's crit (CRIU 3.17), the independent reader. `None` (with a printed reason) when
/// it is not installed, unless `CRIU_RS_REQUIRE_CRIT` is set, as in CI: then it must be.
pub fn debian_crit() -> Option<PathBuf> {
    let found = ["/usr/bin/crit", "/usr/sbin/crit", "/usr/local/bin/crit"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CRIU_RS_REQUIRE_CRIT").is_none(),
            "CRIU_RS_REQUIRE_CRIT is set but crit is not installed (apt-get install criu)"
        );
        eprintln!("skipping the crit cross-check: crit is not installed (apt-get install criu)");
    }
    found
}

/// `crit decode -i FILE` parsed as JSON.
pub fn crit_decode(crit: &Path, image: &Path) -> Result<serde_json::Value, String> {
    let out = Command::new(crit)
        .args(["decode", "-i"])
        .arg(image)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "crit failed on {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("crit printed no JSON for {}: {e}", image.display()))
}

/// The directory cargo puts this build's binaries in (the test executable lives in its
/// `deps/` subdirectory).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("exe dir");
    if deps.ends_with("deps") {
        deps.parent().expect("target dir").to_owned()
    } else {
        deps.to_owned()
    }
}

/// A binary of the workspace (`criu-rs`, `tp-memhog`...). `cargo test --workspace` builds
/// them all; a narrower run may not, hence the hint.
pub fn workspace_bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` (or `cargo test --workspace`)",
        path.display()
    );
    path
}

/// A test program started in a session of its own with a ready file; the guard kills
/// the whole group and reaps the child when it drops, also when the test fails.
pub struct TestProcess {
    pub child: std::process::Child,
    pub ready_file: PathBuf,
    pub pid: i32,
}

impl TestProcess {
    /// Starts `tp-NAME --ready-file DIR/NAME.ready ARGS...` and waits (bounded) until it
    /// is ready. stdout goes to `DIR/NAME.out`.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> TestProcess {
        let ready_file = dir.join(format!("{name}.ready"));
        // A ready file left by an earlier run would be taken for this one's.
        let _ = std::fs::remove_file(&ready_file);
        let _ = std::fs::remove_file(ready_file.with_extension("ready.result"));
        let out =
            std::fs::File::create(dir.join(format!("{name}.out"))).expect("create output file");
        // setsid(1) makes it a session (and group) leader, as a daemon or a container
        // init is; it execs in place (same pid) because our child is no group leader.
        let child = clean_command("setsid")
            .arg(workspace_bin(&format!("tp-{name}")))
            .arg("--ready-file")
            .arg(&ready_file)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("start test program");
        let pid = child.id() as i32;
        let mut tp = TestProcess {
            child,
            ready_file,
            pid,
        };
        let text = wait_for_file(&tp.ready_file, std::time::Duration::from_secs(60))
            .unwrap_or_else(|| panic!("tp-{name} did not get ready; {:?}", tp.child.try_wait()));
        assert!(text.starts_with("ready"), "{text}");
        tp.pid = pid;
        tp
    }

    /// Starts an arbitrary command in a session of its own (stdout to `out`).
    pub fn spawn(argv: &[&str], out: &Path) -> TestProcess {
        let file = std::fs::File::create(out).expect("create output file");
        let child = clean_command("setsid")
            .args(argv)
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("spawn");
        let pid = child.id() as i32;
        let tp = TestProcess {
            child,
            ready_file: out.to_owned(),
            pid,
        };
        // Until setsid(1) has run, the child is still in our session.
        wait_until(
            "the child's own session",
            std::time::Duration::from_secs(10),
            || session_of(pid) == Some(pid),
        );
        tp
    }

    /// Asks the program to check itself and returns its verdict (`pass` or `fail: ...`).
    pub fn check(&mut self) -> String {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid, libc::SIGUSR2) };
        let result = self.ready_file.with_extension("ready.result");
        wait_for_file(&result, std::time::Duration::from_secs(60))
            .unwrap_or_else(|| "fail: no result file".into())
    }

    /// After a dump that kills the program: reaps it and waits (at most 10 s) until its
    /// pid is free for the restore.
    pub fn wait_gone(&mut self) {
        let _ = self.child.wait();
        let pid = self.pid;
        wait_until(
            "the dumped process to go",
            std::time::Duration::from_secs(10),
            || !Path::new(&format!("/proc/{pid}")).exists(),
        );
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's process group.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Dumps the program (killing it), reaps it, and restores it from the images; the
/// restored program has the dumped pid.
pub fn dump_kill_restore(tp: &mut TestProcess, images: &Path) -> Reaper {
    use criu_core::dump::{dump, DumpOptions};
    use criu_core::restore::{restore, RestoreOptions};
    std::fs::create_dir_all(images).unwrap();
    dump(&DumpOptions::new(criu_core::sys::Pid(tp.pid), images))
        .unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    let restored = restore(&RestoreOptions::new(images)).unwrap_or_else(|e| panic!("restore: {e}"));
    assert_eq!(restored.pid.0, tp.pid, "same pid");
    Reaper(restored.pid.0)
}

/// Asks the program `pid` whose ready file is `ready_file` (a restored one, or our own
/// child) to check itself, and returns its verdict ("pass", or why not).
pub fn check_restored(pid: i32, ready_file: &Path) -> String {
    // SAFETY: kill(2) on a program the calling test started or restored.
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    wait_for_file(
        &ready_file.with_extension("ready.result"),
        std::time::Duration::from_secs(60),
    )
    .unwrap_or_else(|| "fail: no result".into())
}

/// Waits (bounded) for a file to exist and returns its contents.
pub fn wait_for_file(path: &Path, timeout: std::time::Duration) -> Option<String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.is_empty() {
                return Some(text.trim_end().to_owned());
            }
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Waits (bounded) until `cond` is true.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Field `n` of `/proc/PID/stat` counted from the state (0) after the comm, or `None`
/// if the task is gone.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    // Bytes: the comm in it need not be UTF-8.
    let text =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/stat")).ok()?).into_owned();
    text.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(n)
        .map(str::to_owned)
}

/// The one-letter state of a task (`S`, `R`, `t`, `Z`), or `None` if it is gone.
pub fn task_state(pid: i32) -> Option<char> {
    stat_field(pid, 0)?.chars().next()
}

/// The TracerPid of a task.
pub fn tracer_pid(pid: i32) -> Option<i32> {
    // Bytes: the Name line need not be UTF-8.
    let text =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/status")).ok()?).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The process group of `pid`, `None` when it is gone.
pub fn process_group_of(pid: i32) -> Option<i32> {
    stat_field(pid, 2)?.parse().ok()
}

/// The session id of a task.
pub fn session_of(pid: i32) -> Option<i32> {
    stat_field(pid, 3)?.parse().ok()
}

/// A command whose child keeps only stdin, stdout and stderr: whatever else the test
/// runner's environment leaves open (a CI agent's pipe...) would otherwise end up in
/// every dump.
pub fn clean_command(program: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // close_range(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    cmd
}

/// Kills and reaps a restored process (a child of the test, as restore makes it) when
/// the test ends, also when it fails.
pub struct Reaper(pub i32);

impl Drop for Reaper {
    fn drop(&mut self) {
        // SAFETY: kill(2) and waitpid(2) on our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(self.0, &mut status, 0);
        }
    }
}

/// The lines of `text` that are numbers (a counter's output), in order.
pub fn numbers(text: &str) -> Vec<u64> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// A server binary a test checkpoints (`/usr/bin/redis-server`...), or `None` with a
/// printed reason; required when CRIU_RS_REQUIRE_SERVERS is set, as in CI.
pub fn installed_server(path: &str) -> Option<&str> {
    server_present(path, Path::new(path).exists()).then_some(path)
}

/// Whether a real program a test needs (`what`) is `present`; when it is not, prints
/// that the test is skipped, or fails when CRIU_RS_REQUIRE_SERVERS is set, as in CI.
pub fn server_present(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    assert!(
        std::env::var_os("CRIU_RS_REQUIRE_SERVERS").is_none(),
        "{what} is required but not installed"
    );
    eprintln!("skipping: {what} is not installed (.ci/run installs it)");
    false
}

/// Sends one redis command (RESP array of bulk strings) on `c` and reads its reply
/// through `r` (a reader on the same connection): a bulk string's contents, or the
/// status/error/integer line without its line end.
pub fn redis_command(
    c: &mut std::net::TcpStream,
    r: &mut std::io::BufReader<std::net::TcpStream>,
    args: &[&str],
) -> String {
    use std::io::{BufRead, Read, Write};
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    c.write_all(out.as_bytes()).unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    if let Some(len) = line.strip_prefix('$') {
        let len: usize = len.trim().parse().unwrap();
        let mut data = vec![0u8; len + 2];
        r.read_exact(&mut data).unwrap();
        return String::from_utf8_lossy(&data[..len]).into_owned();
    }
    line.trim_end().to_owned()
}

/// Kills a tree restored detached (CRIU's `restore -d` or ours: not our children) and
/// waits, bounded, until its pids are free again.
pub struct DetachedTree(pub Vec<i32>);

impl Drop for DetachedTree {
    fn drop(&mut self) {
        for p in &self.0 {
            // SAFETY: kill(2) on the processes the test restored.
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        for p in &self.0 {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while Path::new(&format!("/proc/{p}")).exists() && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// The lines of a CRIU log (`-o LOG`) that report an error, to show when a CRIU run
/// fails; none when the log cannot be read.
pub fn criu_log_errors(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Error"))
        .map(str::to_owned)
        .collect()
}

/// Dumps the tree of `pid` with CRIU: `criu dump -v4 -o dump.log -t PID -D IMAGES
/// EXTRA...` (IMAGES is made here). Panics with the log's error lines when CRIU fails.
pub fn criu_dump(criu: &Path, pid: i32, images: &Path, extra: &[&str]) {
    std::fs::create_dir_all(images).unwrap();
    let out = clean_command(criu.to_str().unwrap())
        .args(["dump", "-v4", "-o", "dump.log", "-t"])
        .arg(pid.to_string())
        .arg("-D")
        .arg(images)
        .args(extra)
        .output()
        .expect("run criu");
    assert!(
        out.status.success(),
        "CRIU could not dump process {pid}: {:#?}",
        criu_log_errors(&images.join("dump.log"))
    );
}

/// Restores IMAGES with CRIU, detached: `criu restore -d -v4 -o restore.log -D IMAGES
/// EXTRA...`. The returned guard kills `restored` (the pids the tree comes back with)
/// when dropped, also when the restore fails halfway. Panics with the log's error
/// lines when CRIU fails.
pub fn criu_restore(
    criu: &Path,
    images: &Path,
    extra: &[&str],
    restored: Vec<i32>,
) -> DetachedTree {
    let out = clean_command(criu.to_str().unwrap())
        .args(["restore", "-d", "-v4", "-o", "restore.log", "-D"])
        .arg(images)
        .args(extra)
        .output()
        .expect("run criu");
    let guard = DetachedTree(restored);
    assert!(
        out.status.success(),
        "CRIU could not restore {}: {:#?}",
        images.display(),
        criu_log_errors(&images.join("restore.log"))
    );
    guard
}

/// A Python program running a multiprocessing pool with the forkserver start method
/// (the default from Python 3.14 on Linux): a forkserver, a resource tracker, two
/// workers fed through queues, and a lock and a shared counter, which are named POSIX
/// semaphores and shared memory mapped from /dev/shm. It prints `batch N` for each
/// batch its workers got right, `BAD` (and stops) for one they did not; ends, printing
/// `stopped`, once the file its argument names exists.
pub const PYTHON_MP_FORKSERVER: &str = r#"
import hashlib, multiprocessing as mp, os, sys, time

def work(q, r):
    for x in iter(q.get, None):
        r.put((x, hashlib.sha256(str(x).encode()).hexdigest()))

if __name__ == "__main__":
    ctx = mp.get_context("forkserver")
    q, r = ctx.Queue(), ctx.Queue()
    lock, count = ctx.Lock(), ctx.Value("i", 0)
    workers = [ctx.Process(target=work, args=(q, r), daemon=True) for _ in range(2)]
    for w in workers:
        w.start()
    n = 0
    while not os.path.exists(sys.argv[1]):
        for x in range(n, n + 20):
            q.put(x)
        got = sorted(r.get(timeout=30) for _ in range(20))
        want = [(x, hashlib.sha256(str(x).encode()).hexdigest()) for x in range(n, n + 20)]
        with lock:
            count.value += 1
        if got != want or count.value != n // 20 + 1:
            print("BAD", n, count.value, flush=True)
            break
        print("batch", n // 20, flush=True)
        n += 20
        time.sleep(0.05)
    for w in workers:
        q.put(None)
    for w in workers:
        w.join()
    print("stopped", flush=True)
"#;

/// A tmpfs mounted for one test (1 MiB), detached when the test ends (whatever happens).
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let target =
            std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(at.as_os_str())).unwrap();
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let ret = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=1m".as_ptr().cast(),
            )
        };
        assert_eq!(ret, 0, "mount a tmpfs: {}", std::io::Error::last_os_error());
        Tmpfs(at.to_owned())
    }

    /// Makes this mount read-only (a bind remount: the filesystem itself stays writable,
    /// through any other mount of it).
    pub fn make_read_only(&self) {
        let target =
            std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(self.0.as_os_str()))
                .unwrap();
        let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
        // SAFETY: mount(2) remounting the mount this guard made; no data is passed.
        let ret = unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        };
        assert_eq!(
            ret,
            0,
            "remount read-only: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target =
            std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(self.0.as_os_str()))
                .unwrap();
        // SAFETY: umount2(2) of the mount this guard made.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}
