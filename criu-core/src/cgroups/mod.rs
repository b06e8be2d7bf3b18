//! `--manage-cgroups`: a tree's cgroups in CRIU's format (`cgroup.img`, each thread's
//! `cg_set` in its core entry), dumped and restored.
//!
//! Each thread's `/proc/PID/task/TID/cgroup` is a "set" (one membership per hierarchy);
//! equal sets share an id. The set criu-rs itself is in gets an id too, written as
//! the inventory's `root_cg_set` and not in `cgroup.img`: a task in it stays in the
//! restorer's cgroups, as with CRIU. For the other sets the cgroup directories
//! (from each member path down, with their permissions and the properties of
//! `PROPERTIES`) are recorded per hierarchy.
//!
//! Both sides see every hierarchy through a "yard": a private directory with each
//! hierarchy mounted on a subdirectory named after its controllers (`cpu,cpuacct`,
//! `zdtmtst` for `name=zdtmtst`, `unified` for v2), unmounted when done. With
//! `--cgroup-yard DIR`, DIR is that yard, prepared by the caller: a subdirectory
//! that exists is used as is, a missing one is made and mounted (as CRIU does).
//!
//! Restore (`restore.rs`), before any task exists: the sets are remapped by
//! `--cgroup-root`, the directories made where missing (and, by mode, their
//! properties written), all undone by a guard if the restore fails. Once every task
//! and thread is rebuilt, and still stopped, each process is moved into its set
//! (`cgroup.procs`), and each thread whose set differs from its leader's into its own
//! (`tasks` on v1, `cgroup.threads` on v2). Memory the restore filled is charged to
//! the restorer's memory cgroup (v1 does not move charges).
//!
//! Cgroup namespace: a tree whose root has a cgroup namespace of its own has its
//! members recorded with `cgns_prefix`, the part of the path (as we see it) that is
//! the namespace's root, found by reading the task's view from inside the namespace.
//! On restore the root, before it clones anyone, is moved to those roots and unshares
//! a new namespace there (`restore/cgns.rs`); every task inherits it.

pub mod dump;
pub mod restore;

use std::io;
use std::path::{Path, PathBuf};

use crate::sys;

/// `--manage-cgroups` modes, as CRIU's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgMode {
    /// Nothing is dumped or restored: the tree takes the restorer's cgroups.
    Ignore,
    /// The directories must exist; no property is written.
    None,
    /// The directories must exist; their properties are written.
    Props,
    /// Missing directories are made, with their properties; existing ones kept as is.
    Soft,
    /// Directories made where missing; properties written on every one.
    Full,
    /// As full, but a directory that exists already is refused.
    Strict,
}

impl std::str::FromStr for CgMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "ignore" => CgMode::Ignore,
            "none" => CgMode::None,
            "props" => CgMode::Props,
            "soft" | "" => CgMode::Soft,
            "full" => CgMode::Full,
            "strict" => CgMode::Strict,
            other => return Err(format!("--manage-cgroups mode {other:?} is unknown")),
        })
    }
}

impl CgMode {
    /// Missing directories may be made.
    fn creates(self) -> bool {
        matches!(self, CgMode::Soft | CgMode::Full | CgMode::Strict)
    }
    /// Properties are written on directories that existed before the restore.
    fn writes_existing(self) -> bool {
        matches!(self, CgMode::Props | CgMode::Full)
    }
}

/// What the front-end asked for.
#[derive(Debug, Clone)]
pub struct CgroupOptions {
    pub mode: CgMode,
    /// `--cgroup-root [CONTROLLER:]/PATH` (restore): a hierarchy's (or, without a
    /// controller, every hierarchy's) root directory of the tree becomes PATH.
    pub roots: Vec<(Option<String>, String)>,
    /// `--cgroup-yard DIR`.
    pub yard: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupsError {
    #[error("cgroup {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("cgroup.img: {0}")]
    BadImage(String),
    #[error("cgroup {path}: {why}")]
    Refused { path: PathBuf, why: String },
    #[error(transparent)]
    Image(#[from] criu_images::Error),
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> CgroupsError + 'a {
    move |source| CgroupsError::Io {
        path: path.to_owned(),
        what,
        source,
    }
}

/// Properties recorded for each directory, when the file exists there. Order
/// matters on restore: limits that bound others come first.
pub const PROPERTIES: &[&str] = &[
    "cpuset.cpus",
    "cpuset.mems",
    "devices.list",
    "cpu.shares",
    "cpu.cfs_period_us",
    "cpu.cfs_quota_us",
    "cpu.rt_period_us",
    "cpu.rt_runtime_us",
    "memory.limit_in_bytes",
    "memory.soft_limit_in_bytes",
    "memory.swappiness",
    "memory.use_hierarchy",
    "pids.max",
    "blkio.weight",
    "net_cls.classid",
    "net_prio.ifpriomap",
    "notify_on_release",
    "cgroup.clone_children",
    // Permissions only (their value is the member list, recorded empty).
    "cgroup.procs",
    "tasks",
];

/// Properties whose permissions alone are kept.
fn perms_only(name: &str) -> bool {
    name == "cgroup.procs" || name == "tasks"
}

/// A hierarchy's controller names as /proc/PID/cgroup gives them (`cpu,cpuacct`,
/// `name=x`, empty for v2).
pub fn cnames(name: &str) -> Vec<String> {
    name.split(',').map(str::to_owned).collect()
}

/// The yard subdirectory and mount options of a hierarchy.
fn yard_dir_and_options(cnames: &[String]) -> (String, String) {
    let mut dir = Vec::new();
    let mut opts = Vec::new();
    if cnames.iter().any(|n| n.starts_with("name=")) {
        opts.push("none".to_owned());
    }
    for n in cnames {
        let short = n.strip_prefix("name=").unwrap_or(n);
        dir.push(if short.is_empty() { "unified" } else { short }.to_owned());
        opts.push(n.clone());
    }
    (dir.join(","), opts.join(","))
}

/// The hierarchies, mounted: dropped, it unmounts what it mounted and removes the
/// directories it made.
pub struct Yard {
    root: PathBuf,
    own_root: bool,
    mounted: Vec<PathBuf>,
}

impl Yard {
    pub fn new(given: Option<&Path>) -> Result<Yard, CgroupsError> {
        match given {
            Some(dir) => Ok(Yard {
                root: dir.to_owned(),
                own_root: false,
                mounted: Vec::new(),
            }),
            None => {
                // Threads of one process (a test binary, an RPC server) make yards at
                // the same time, within one tick of a coarse clock: a counter keeps
                // their names apart, and a name left by a killed run is skipped.
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let mut attempt = 0;
                let root = loop {
                    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let root = std::env::temp_dir().join(format!(
                        ".criu-rs.cgyard.{}.{stamp}.{n}",
                        std::process::id()
                    ));
                    match std::fs::create_dir(&root) {
                        Ok(()) => break root,
                        Err(e)
                            if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 =>
                        {
                            attempt += 1;
                        }
                        Err(e) => return Err(io_err(&root, "making the yard")(e)),
                    }
                };
                Ok(Yard {
                    root,
                    own_root: true,
                    mounted: Vec::new(),
                })
            }
        }
    }

    /// The directory where the hierarchy of `cnames` is mounted, mounting it first.
    pub fn hierarchy(&mut self, cnames: &[String]) -> Result<PathBuf, CgroupsError> {
        let (dir, options) = yard_dir_and_options(cnames);
        let path = self.root.join(&dir);
        if self.mounted.contains(&path) || (!self.own_root && path.exists()) {
            return Ok(path);
        }
        std::fs::create_dir(&path).map_err(io_err(&path, "making a yard directory"))?;
        let v2 = cnames.len() == 1 && cnames[0].is_empty();
        if let Err(e) = sys::mount_cgroup(&path, v2, &options) {
            let _ = std::fs::remove_dir(&path);
            return Err(CgroupsError::Io {
                path,
                what: "mounting the hierarchy",
                source: e,
            });
        }
        self.mounted.push(path.clone());
        Ok(path)
    }
}

impl Drop for Yard {
    fn drop(&mut self) {
        for m in self.mounted.iter().rev() {
            let _ = sys::umount_detach(m);
            let _ = std::fs::remove_dir(m);
        }
        if self.own_root {
            let _ = std::fs::remove_dir(&self.root);
        }
    }
}

/// The `--cgroup-root` that applies to the hierarchy of `cnames`: the one naming one
/// of its controllers, else the one naming none.
fn root_for<'a>(roots: &'a [(Option<String>, String)], cnames: &[String]) -> Option<&'a str> {
    roots
        .iter()
        .find(|(c, _)| c.as_ref().is_some_and(|c| cnames.contains(c)))
        .or_else(|| roots.iter().find(|(c, _)| c.is_none()))
        .map(|(_, r)| r.as_str())
}

/// Parses `--cgroup-root [CONTROLLER:]/PATH`.
pub fn parse_root(arg: &str) -> Result<(Option<String>, String), String> {
    let (ctl, path) = match arg.rfind(":/") {
        Some(i) => (Some(arg[..i].to_owned()), &arg[i + 1..]),
        None => (None, arg),
    };
    if !path.starts_with('/') {
        return Err(format!("--cgroup-root {arg:?}: the path must be absolute"));
    }
    Ok((ctl, path.to_owned()))
}

/// One line of /proc/PID/cgroup: hierarchy name and path.
pub type Member = (String, String);

/// A thread's memberships, sorted by hierarchy name (as CRIU keeps them).
pub fn read_members(file: &Path) -> Result<Vec<Member>, CgroupsError> {
    let text = std::fs::read_to_string(file).map_err(io_err(file, "reading"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, name, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => {
                return Err(CgroupsError::Refused {
                    path: file.to_owned(),
                    why: format!("cannot parse line {line:?}"),
                })
            }
        };
        out.push((name.to_owned(), path.to_owned()));
    }
    out.sort();
    Ok(out)
}
