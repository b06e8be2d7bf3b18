//! The cgroup freezer, v1 (`freezer.state`) and v2 (`cgroup.freeze`), to stop a whole
//! container at once. `CgroupFreezer` is a guard: dropping it thaws the cgroup if this
//! process froze it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sys::Pid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezerVersion {
    /// `freezer.state`: THAWED / FREEZING / FROZEN.
    V1,
    /// `cgroup.freeze` (0/1) and `frozen 0/1` in `cgroup.events`.
    V2,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path} is neither a v1 freezer cgroup nor a v2 cgroup that can be frozen")]
    NotAFreezer { path: PathBuf },
    #[error("cgroup {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("cgroup {path} did not freeze within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
}

pub struct CgroupFreezer {
    path: PathBuf,
    version: FreezerVersion,
    /// Whether we froze it (and so must thaw it).
    frozen_by_us: bool,
}

impl CgroupFreezer {
    /// Opens the cgroup directory `path`, detecting which freezer it has.
    pub fn open(path: &Path) -> Result<CgroupFreezer, CgroupError> {
        let version = if path.join("freezer.state").exists() {
            FreezerVersion::V1
        } else if path.join("cgroup.freeze").exists() {
            FreezerVersion::V2
        } else {
            return Err(CgroupError::NotAFreezer {
                path: path.to_owned(),
            });
        };
        Ok(CgroupFreezer {
            path: path.to_owned(),
            version,
            frozen_by_us: false,
        })
    }

    pub fn version(&self) -> FreezerVersion {
        self.version
    }

    fn io(&self, what: &'static str) -> impl FnOnce(io::Error) -> CgroupError + '_ {
        move |source| CgroupError::Io {
            path: self.path.clone(),
            what,
            source,
        }
    }

    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        Ok(match self.version {
            FreezerVersion::V1 => {
                let state = std::fs::read_to_string(self.path.join("freezer.state"))
                    .map_err(self.io("reading freezer.state"))?;
                state.trim() == "FROZEN"
            }
            FreezerVersion::V2 => {
                let events = std::fs::read_to_string(self.path.join("cgroup.events"))
                    .map_err(self.io("reading cgroup.events"))?;
                events.lines().any(|l| l.trim() == "frozen 1")
            }
        })
    }

    /// Freezes the cgroup and waits (bounded) until every task in it is frozen.
    pub fn freeze(&mut self, timeout: Duration) -> Result<(), CgroupError> {
        if self.is_frozen()? {
            // Somebody else froze it; leave it as we found it.
            return Ok(());
        }
        self.write_state(true)?;
        self.frozen_by_us = true;
        let deadline = Instant::now() + timeout;
        while !self.is_frozen()? {
            if Instant::now() >= deadline {
                return Err(CgroupError::Timeout {
                    path: self.path.clone(),
                    timeout,
                });
            }
            if self.version == FreezerVersion::V1 {
                // v1 may stay FREEZING when a task was busy; asking again retries it.
                self.write_state(true)?;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Thaws the cgroup if this guard froze it.
    pub fn thaw(&mut self) -> Result<(), CgroupError> {
        if self.frozen_by_us {
            self.write_state(false)?;
            self.frozen_by_us = false;
        }
        Ok(())
    }

    /// The file that freezes and thaws this cgroup, and what thaws it.
    pub fn thaw_file(&self) -> (PathBuf, &'static [u8]) {
        match self.version {
            FreezerVersion::V1 => (self.path.join("freezer.state"), b"THAWED"),
            FreezerVersion::V2 => (self.path.join("cgroup.freeze"), b"0"),
        }
    }

    fn write_state(&self, frozen: bool) -> Result<(), CgroupError> {
        let (file, value) = match (self.version, frozen) {
            (FreezerVersion::V1, true) => ("freezer.state", "FROZEN"),
            (FreezerVersion::V1, false) => ("freezer.state", "THAWED"),
            (FreezerVersion::V2, true) => ("cgroup.freeze", "1"),
            (FreezerVersion::V2, false) => ("cgroup.freeze", "0"),
        };
        std::fs::write(self.path.join(file), value).map_err(self.io("writing the freezer state"))
    }

    /// Every process in the cgroup and its descendant cgroups.
    pub fn processes(&self) -> Result<Vec<Pid>, CgroupError> {
        let mut out = Vec::new();
        let mut dirs = vec![self.path.clone()];
        while let Some(dir) = dirs.pop() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
                .map_err(self.io("reading cgroup.procs"))?;
            out.extend(
                procs
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .map(Pid),
            );
            for e in std::fs::read_dir(&dir)
                .map_err(self.io("listing the cgroup"))?
                .flatten()
            {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    dirs.push(e.path());
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl Drop for CgroupFreezer {
    fn drop(&mut self) {
        let _ = self.thaw();
    }
}
