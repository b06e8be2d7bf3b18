//! Containers' cgroups: `crpod/<id>` in the cgroup v2 hierarchy, whose `cgroup.freeze`
//! freezes a whole container for a checkpoint.
//!
//! Where that hierarchy is mounted depends on the host, so it is read from
//! /proc/self/mountinfo rather than assumed: at `/sys/fs/cgroup` on a pure v2 host,
//! at `/sys/fs/cgroup/unified` in the hybrid layout (v1 controllers beside a
//! controller-less v2 tree), elsewhere if someone mounted it so.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::Error;

/// The cgroup v2 hierarchy's mount point (found once per process).
pub fn hierarchy() -> Result<&'static Path, Error> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let path = "/proc/self/mountinfo";
            let text = std::fs::read(path).map_err(|e| format!("{path}: cannot read: {e}"))?;
            v2_mount_point(&text).ok_or_else(|| {
                "no cgroup v2 hierarchy is mounted (none in /proc/self/mountinfo): \
                 crpod needs one to freeze containers"
                    .to_owned()
            })
        })
        .as_deref()
        .map_err(|why| Error::Msg(why.clone()))
}

/// Where every crpod container's cgroup is (`crpod` in the v2 hierarchy).
pub fn base() -> Result<PathBuf, Error> {
    Ok(hierarchy()?.join("crpod"))
}

/// Container `id`'s cgroup.
pub fn dir(id: &str) -> Result<PathBuf, Error> {
    Ok(base()?.join(id))
}

/// Moves us into (or, with `None`, out of, to the root of the hierarchy) a container's
/// cgroup; the tasks we create meanwhile start there.
pub fn move_self(id: Option<&str>) -> Result<(), Error> {
    let dir = match id {
        Some(id) => dir(id)?,
        None => hierarchy()?.to_owned(),
    };
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .map_err(|e| Error::io(&procs, "write", e))
}

/// Removes container `id`'s cgroup, waiting (bounded) for its last tasks to leave: they
/// may take a moment after the init died.
pub fn remove(id: &str) {
    let Ok(cg) = dir(id) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while cg.exists() && std::fs::remove_dir(&cg).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The mount point of the cgroup2 file system in a mountinfo text: `/sys/fs/cgroup`
/// (pure v2) first, then `/sys/fs/cgroup/unified` (hybrid), then any other.
fn v2_mount_point(mountinfo: &[u8]) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    for line in mountinfo.split(|&b| b == b'\n') {
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER"
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        if dash < 5 || fields.get(dash + 1) != Some(&&b"cgroup2"[..]) {
            continue;
        }
        found.push(PathBuf::from(OsString::from_vec(unescape(fields[4]))));
    }
    for preferred in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if let Some(p) = found.iter().find(|p| p.as_os_str() == preferred) {
            return Some(p.clone());
        }
    }
    found.into_iter().next()
}

/// A mountinfo field with its octal escapes (`\040` for a space...) decoded.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0')));
        match octal.and_then(|n| u8::try_from(n).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/freezer rw,nosuid shared:11 - cgroup cgroup rw,freezer
";

    const PURE_V2: &str = "\
25 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn finds_the_v2_hierarchy_of_each_layout() {
        assert_eq!(
            v2_mount_point(HYBRID.as_bytes()),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            v2_mount_point(PURE_V2.as_bytes()),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        // Only v1 hierarchies: none to use.
        let v1_only = HYBRID.replace("cgroup2 cgroup2", "tmpfs tmpfs");
        assert_eq!(v2_mount_point(v1_only.as_bytes()), None);
        // /sys/fs/cgroup wins over another mount of the same hierarchy.
        let both =
            format!("40 25 0:26 / /mnt/cg\\040two rw shared:20 - cgroup2 cgroup2 rw\n{PURE_V2}");
        assert_eq!(
            v2_mount_point(both.as_bytes()),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        // Optional fields of any number, and an escaped mount point elsewhere.
        let elsewhere = "40 25 0:26 / /mnt/cg\\040two rw shared:20 master:3 - cgroup2 none rw\n";
        assert_eq!(
            v2_mount_point(elsewhere.as_bytes()),
            Some(PathBuf::from("/mnt/cg two"))
        );
        assert_eq!(v2_mount_point(b"garbage\n- cgroup2\n\n"), None);
    }

    #[test]
    fn the_real_host_has_one() {
        // This machine (and CI's) mounts cgroup v2: crpod's tests need it.
        let found = hierarchy().expect("a cgroup v2 hierarchy");
        assert!(found.join("cgroup.procs").exists(), "{}", found.display());
    }
}
