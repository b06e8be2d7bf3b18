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
