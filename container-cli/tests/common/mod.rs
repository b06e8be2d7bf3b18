//! What the crpod end-to-end tests share: a crpod state directory per test (`Pod`),
//! removed with every container in it by a guard also on failure, and commands run
//! with a bound on their time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A crpod state directory for one test; dropping it removes every container in it
/// (killing what runs) and the directory.
pub struct Pod {
    pub root: PathBuf,
}

impl Pod {
    pub fn new(name: &str) -> Pod {
        let root = std::env::temp_dir().join(format!("crpod-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        Pod { root }
    }

    pub fn cmd(&self, args: &[&str]) -> Output {
        let mut crpod = Command::new(env!("CARGO_BIN_EXE_crpod"));
        crpod.arg("--root").arg(&self.root).args(args);
        output_within(crpod, Duration::from_secs(120))
    }

    /// Runs crpod and returns its stdout, failing the test with stderr if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
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
    pub fn fails(&self, args: &[&str]) -> String {
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
pub fn output_within(mut cmd: Command, timeout: Duration) -> Output {
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

pub const LOOP: &str = "i=0; while true; do echo $i; i=$(expr $i + 1); sleep 0.2; done";

pub fn state_of(pod: &Pod, name: &str) -> serde_json::Value {
    let text = pod.ok(&["inspect", name]);
    let v: serde_json::Value = serde_json::from_str(&text).expect("inspect prints JSON");
    v[0]["State"].clone()
}

pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}
