//! CRIU options that widen what a dump or restore may touch. CRIU's test suite passes
//! them per test (`opts` of a test's `.desc`) to dump and restore alike. criu-rs takes
//! them so that it can answer for itself:
//! - `--file-locks`, as CRIU: the tree's file locks are saved and taken again only with
//!   it, on dump and restore alike (without it a held lock is refused at dump);
//! - taken as CRIU takes them: `--tcp-established`, `--tcp-close` and `--skip-in-flight`
//!   (read by `dump.rs` and `restore.rs`);
//! - `--ext-unix-sk[=INODE,...]` (`-x`), as CRIU's: unix sockets connected to a socket
//!   outside the tree are saved and connected to its name again on restore (a stream
//!   one only when its inode is named); without it they are refused;
//! - taken as CRIU takes them: `--ghost-limit SIZE` (the most data a deleted regular
//!   file may hold to be saved by its contents; 1 MiB by default) and `--link-remap`
//!   (a deleted name of a file with other names is saved by giving the file a name of
//!   its own; refused without); `--ghost-fiemap` and `--no-ghost-fiemap` are accepted
//!   (criu-rs finds a sparse file's data with SEEK_DATA/SEEK_HOLE either way);
//! - `--manage-cgroups[=MODE]`, `--cgroup-root [CTRL:]/PATH` and `--cgroup-yard DIR`, as
//!   CRIU's (see `criu_core::cgroups`): the tree's cgroups are dumped to `cgroup.img`
//!   and restored per MODE (soft by default; `ignore`: nothing). Without any of them
//!   nothing is recorded and a restored tree stays in the restorer's cgroups; a root
//!   or yard alone means the soft mode;
//! - `--action-script PATH`, as CRIU's: the program runs at each point of a dump or a
//!   restore (`criu_core::notify`), told which by its environment; one that fails stops
//!   the work where it still can.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::Args;
use criu_core::notify::{Event, Notifier};
use criu_core::sys::Pid;

#[derive(Args, Debug, Default)]
pub struct CompatArgs {
    /// Save the tree's file locks (flock, POSIX, OFD, leases) on dump and take them
    /// again on restore; without it a held lock is refused at dump.
    #[arg(long = "file-locks")]
    file_locks: bool,
    /// Dump and restore established TCP connections (in TCP repair mode, the network
    /// locked in between).
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Dump TCP connections without repair, restore them closed.
    #[arg(long = "tcp-close")]
    pub tcp_close: bool,
    /// Dump listening sockets whose connections not accepted yet are then dropped.
    #[arg(long = "skip-in-flight")]
    pub skip_in_flight: bool,
    /// Unix sockets whose peer is outside the tree are saved, and connected to the
    /// peer's name again on restore (CRIU's option): datagram ones, and those whose
    /// inodes are listed, stream ones too (a new connection).
    #[arg(
        short = 'x',
        long = "ext-unix-sk",
        value_name = "INODE,...",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = ""
    )]
    ext_unix_sk: Option<String>,
    /// Save a deleted name of a file that has other names by giving the file a name
    /// of its own next to the old one (`link_remap.<id>`, removed by the restore).
    #[arg(long = "link-remap")]
    link_remap: bool,
    /// The most data (allocated bytes; K, M, G suffixes) a deleted regular file may
    /// hold to be saved by its contents (default 1M).
    #[arg(long = "ghost-limit", value_name = "SIZE")]
    ghost_limit: Option<String>,
    /// Accepted (CRIU: save deleted sparse files by their extents).
    #[arg(long = "ghost-fiemap")]
    ghost_fiemap: bool,
    /// Accepted (see --ghost-fiemap).
    #[arg(long = "no-ghost-fiemap")]
    no_ghost_fiemap: bool,
    /// Accepted (CRIU: find inotify watch paths by scanning): criu-rs records watches
    /// its own way.
    #[arg(long = "force-irmap")]
    force_irmap: bool,
    /// Accepted (see --force-irmap).
    #[arg(long = "irmap-scan-path", value_name = "DIR")]
    irmap_scan_path: Vec<String>,
    /// Dump and restore the tree's cgroups: MODE is soft (default), full, strict,
    /// props, none or ignore.
    #[arg(long = "manage-cgroups", value_name = "MODE", num_args = 0..=1,
          require_equals = true, default_missing_value = "soft")]
    manage_cgroups: Option<String>,
    /// The tree's cgroups live under PATH (in CTRL's hierarchy, or every one).
    #[arg(long = "cgroup-root", value_name = "[CTRL:]PATH")]
    cgroup_root: Vec<String>,
    /// A directory with the cgroup hierarchies mounted in it (made and mounted where
    /// missing).
    #[arg(long = "cgroup-yard", value_name = "PATH")]
    cgroup_yard: Option<String>,
    /// Run PATH (no arguments) at each point of the dump or restore, as CRIU runs its
    /// action scripts: `CRTOOLS_SCRIPT_ACTION` names the point (pre-dump,
    /// network-lock, post-dump, network-unlock, pre-restore, setup-namespaces,
    /// post-setup-namespaces, post-restore, pre-resume, post-resume),
    /// `CRTOOLS_IMAGE_DIR` is the images directory and `CRTOOLS_INIT_PID` the tree's root
    /// once it exists. A script that exits non-zero fails the dump (the tree runs on) or
    /// the restore (the tree is killed) up to pre-resume. Repeatable; the last given
    /// runs first, as in CRIU.
    #[arg(long = "action-script", value_name = "PATH")]
    action_script: Vec<PathBuf>,
}

impl CompatArgs {
    /// The `--action-script`s as the engine's notifier (none: nobody is told), for a
    /// dump or restore of `images_dir`; `root` is the tree's root where it is known from
    /// the start (a dump's), else taken from the first point that names it.
    pub fn action_scripts(&self, images_dir: &Path, root: Option<Pid>) -> Notifier {
        if self.action_script.is_empty() {
            return Notifier::default();
        }
        let scripts: Vec<PathBuf> = self.action_script.iter().rev().cloned().collect();
        let images_dir = std::path::absolute(images_dir).unwrap_or_else(|_| images_dir.into());
        let root = Arc::new(Mutex::new(root));
        Notifier::new(move |event: Event| {
            let init_pid = {
                let mut known = root.lock().map_err(|_| "a script runner panicked")?;
                if let Some(pid) = event.pid() {
                    known.get_or_insert(pid);
                }
                *known
            };
            for script in &scripts {
                let mut command = std::process::Command::new(script);
                command
                    .env("CRTOOLS_SCRIPT_ACTION", event.script_name())
                    .env("CRTOOLS_IMAGE_DIR", &images_dir);
                if let Some(pid) = init_pid {
                    command.env("CRTOOLS_INIT_PID", pid.0.to_string());
                }
                let status = command
                    .status()
                    .map_err(|e| format!("action script {}: {e}", script.display()))?;
                if !status.success() {
                    return Err(format!(
                        "action script {} {status} at {}",
                        script.display(),
                        event.script_name()
                    ));
                }
            }
            Ok(())
        })
    }

    /// `--ext-unix-sk[=INODE,...]` as the engine takes it, with the inodes CRIU's
    /// `--external unix[INODE]` adds (`external`: the values of `--external`).
    pub fn ext_unix_sk(
        &self,
        external: &[String],
    ) -> Result<criu_core::files::ExternalUnix, String> {
        let mut ext = criu_core::files::ExternalUnix {
            allowed: self.ext_unix_sk.is_some(),
            inodes: Vec::new(),
        };
        let listed = self.ext_unix_sk.as_deref().unwrap_or("");
        for ino in listed.split(',').filter(|s| !s.is_empty()) {
            ext.inodes.push(
                ino.trim()
                    .parse()
                    .map_err(|_| format!("--ext-unix-sk={listed}: {ino} is no inode"))?,
            );
        }
        for spec in external {
            if let Some(ino) = spec.strip_prefix("unix[").and_then(|r| r.strip_suffix(']')) {
                ext.inodes.push(
                    ino.parse()
                        .map_err(|_| format!("--external {spec}: {ino} is no inode"))?,
                );
            }
        }
        Ok(ext)
    }

    /// `--file-locks`.
    pub fn file_locks(&self) -> bool {
        self.file_locks
    }

    /// `--link-remap`.
    pub fn link_remap(&self) -> bool {
        self.link_remap
    }

    /// `--ghost-limit` in bytes (CRIU's sizes: a number, with K, M or G for powers of
    /// 1024), or the default.
    pub fn ghost_limit(&self) -> Result<u64, String> {
        let Some(text) = self.ghost_limit.as_deref() else {
            return Ok(criu_core::files::DEFAULT_GHOST_LIMIT);
        };
        let bad = || format!("--ghost-limit {text}: not a size (a number, with K, M or G)");
        let (digits, shift) = match text.char_indices().last() {
            Some((i, 'k' | 'K')) => (&text[..i], 10),
            Some((i, 'm' | 'M')) => (&text[..i], 20),
            Some((i, 'g' | 'G')) => (&text[..i], 30),
            _ => (text, 0),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(1 << shift).ok_or_else(bad)
    }

    /// The cgroup options, or None when the tree's cgroups are not managed.
    pub fn cgroups(&self) -> Result<Option<criu_core::cgroups::CgroupOptions>, String> {
        if self.manage_cgroups.is_none()
            && self.cgroup_root.is_empty()
            && self.cgroup_yard.is_none()
        {
            return Ok(None);
        }
        let mode = self.manage_cgroups.as_deref().unwrap_or("soft").parse()?;
        let roots = self
            .cgroup_root
            .iter()
            .map(|r| criu_core::cgroups::parse_root(r))
            .collect::<Result<_, _>>()?;
        Ok(Some(criu_core::cgroups::CgroupOptions {
            mode,
            roots,
            yard: self.cgroup_yard.as_ref().map(Into::into),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `-x`, `--ext-unix-sk=INODE,...` and `--external unix[INODE]`, as CRIU takes them.
    #[test]
    fn external_unix_sockets_as_criu_names_them() {
        let none = CompatArgs::default().ext_unix_sk(&[]).unwrap();
        assert!(!none.allowed && none.inodes.is_empty());
        let bare = CompatArgs {
            ext_unix_sk: Some(String::new()),
            ..Default::default()
        };
        let ext = bare
            .ext_unix_sk(&["unix[42]".into(), "net[1]:x".into()])
            .unwrap();
        assert!(ext.allowed);
        assert_eq!(ext.inodes, [42]);
        let listed = CompatArgs {
            ext_unix_sk: Some("7,8".into()),
            ..Default::default()
        };
        assert_eq!(listed.ext_unix_sk(&[]).unwrap().inodes, [7, 8]);
        let bad = CompatArgs {
            ext_unix_sk: Some("x".into()),
            ..Default::default()
        };
        assert!(bad.ext_unix_sk(&[]).is_err());
    }

    #[test]
    fn ghost_limits_as_criu_writes_them() {
        let limit = |s: &str| {
            CompatArgs {
                ghost_limit: Some(s.into()),
                ..Default::default()
            }
            .ghost_limit()
        };
        assert_eq!(
            CompatArgs::default().ghost_limit(),
            Ok(criu_core::files::DEFAULT_GHOST_LIMIT)
        );
        assert_eq!(limit("8M"), Ok(8 << 20));
        assert_eq!(limit("16k"), Ok(16 << 10));
        assert_eq!(limit("1G"), Ok(1 << 30));
        assert_eq!(limit("4096"), Ok(4096));
        for bad in ["", "M", "8X", "-1", "99999999999999G"] {
            assert!(limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cgroup_options() {
        assert!(CompatArgs::default().cgroups().unwrap().is_none());
        let full = CompatArgs {
            manage_cgroups: Some("full".into()),
            cgroup_root: vec!["name=zdtmtst:/prefix".into(), "/newroot".into()],
            ..Default::default()
        };
        let o = full.cgroups().unwrap().unwrap();
        assert_eq!(o.mode, criu_core::cgroups::CgMode::Full);
        assert_eq!(
            o.roots,
            vec![
                (Some("name=zdtmtst".into()), "/prefix".into()),
                (None, "/newroot".into())
            ]
        );
        let bad = CompatArgs {
            manage_cgroups: Some("sloppy".into()),
            ..Default::default()
        };
        assert!(bad.cgroups().is_err());
        let relative = CompatArgs {
            cgroup_root: vec!["x".into()],
            ..Default::default()
        };
        assert!(relative.cgroups().is_err());
    }
}
