//! The restore side: directories and properties before any task exists, then the
//! moves of the rebuilt, still stopped, tasks (see the module's documentation).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criu_images::{pb, ImageReader};

use super::{io_err, CgMode, CgroupOptions, CgroupsError, Yard};
use crate::sys::Pid;

/// The tree's cgroups, ready: dropped before `commit`, it removes the directories it
/// made (deepest first), then unmounts the yard.
pub struct CgroupRestore {
    sets: HashMap<u32, pb::CgSetEntry>,
    root_set: u32,
    /// Where each hierarchy (by its name in the sets) is mounted.
    mounts: HashMap<String, PathBuf>,
    /// Our own cgroup in each hierarchy.
    own: HashMap<String, String>,
    created: Vec<PathBuf>,
    committed: bool,
    _yard: Option<Yard>,
}

/// Reads `cgroup.img` (none: nothing to do) and prepares its directories. The
/// inventory's `root_cg_set` is the dumper's own set: tasks in it stay in ours.
pub fn prepare(
    images_dir: &Path,
    options: &CgroupOptions,
) -> Result<Option<CgroupRestore>, CgroupsError> {
    if options.mode == CgMode::Ignore {
        return Ok(None);
    }
    let file = images_dir.join("cgroup.img");
    if !file.exists() {
        return Ok(None);
    }
    let inventory: Option<pb::InventoryEntry> =
        ImageReader::open(images_dir.join("inventory.img"))?.next_entry()?;
    let root_set = inventory.and_then(|i| i.root_cg_set);
    let mut reader = ImageReader::open(&file)?;
    let mut entry: pb::CgroupEntry = reader
        .next_entry()?
        .ok_or_else(|| CgroupsError::BadImage("has no entry".into()))?;
    remap_roots(&mut entry, &options.roots);
    let mut yard = Yard::new(options.yard.as_deref())?;
    let mut cg = CgroupRestore {
        sets: HashMap::new(),
        root_set: root_set.unwrap_or(0),
        mounts: HashMap::new(),
        own: HashMap::new(),
        created: Vec::new(),
        committed: false,
        _yard: None,
    };
    // Where we are: a member there needs nothing (the tasks inherit it), and a
    // hierarchy nothing needs is not mounted (mounting a named v1 hierarchy that is
    // gone would make it again, and add it to every task's /proc/PID/cgroup).
    let own: HashMap<String, String> = super::read_members(Path::new("/proc/self/cgroup"))?
        .into_iter()
        .collect();
    cg.own = own.clone();
    for ctl in &entry.controllers {
        if ctl.cnames.is_empty() {
            return Err(CgroupsError::BadImage("a controller has no name".into()));
        }
        let name = ctl.cnames.join(",");
        let needed = !ctl.dirs.is_empty()
            || entry
                .sets
                .iter()
                .flat_map(|s| &s.ctls)
                .filter(|m| m.name == name)
                .any(|m| own.get(&name) != Some(&m.path) || cgns_root(m).is_some());
        if !needed {
            continue;
        }
        let mount = yard.hierarchy(&ctl.cnames)?;
        for d in &ctl.dirs {
            cg.make_dir(&mount, d, options.mode)?;
        }
        cg.mounts.insert(ctl.cnames.join(","), mount);
    }
    // Every member path of every set exists (made when the mode allows it).
    for set in &entry.sets {
        if let Some(m) = set.ctls.iter().find(|m| {
            m.cgns_prefix
                .is_some_and(|p| cgns_root(m).is_none() && p > 0)
        }) {
            return Err(CgroupsError::BadImage(format!(
                "set {}: the cgroup namespace prefix {:?} of {:?} is not a part of its path",
                set.id, m.cgns_prefix, m.path
            )));
        }
        for m in set
            .ctls
            .iter()
            .filter(|m| own.get(&m.name) != Some(&m.path))
        {
            let mount = cg.mounts.get(&m.name).ok_or_else(|| {
                CgroupsError::BadImage(format!(
                    "set {} names hierarchy {:?}, not in the image",
                    set.id, m.name
                ))
            })?;
            let dir = mount.join(m.path.trim_start_matches('/'));
            if !dir.is_dir() {
                if !options.mode.creates() {
                    return Err(CgroupsError::Refused {
                        path: dir,
                        why: format!("does not exist (--manage-cgroups mode {:?})", options.mode),
                    });
                }
                cg.make_missing(&dir)?;
            }
        }
    }
    cg.sets = entry.sets.into_iter().map(|s| (s.id, s)).collect();
    cg._yard = Some(yard);
    Ok(Some(cg))
}

/// `--cgroup-root`: a hierarchy's top directory of the tree is renamed to the new
/// root, and the members below it follow.
fn remap_roots(entry: &mut pb::CgroupEntry, roots: &[(Option<String>, String)]) {
    for ctl in &mut entry.controllers {
        let Some(newroot) = super::root_for(roots, &ctl.cnames) else {
            continue;
        };
        let name = ctl.cnames.join(",");
        for d in &mut ctl.dirs {
            let old = format!("/{}", d.dir_name.trim_start_matches('/'));
            for set in &mut entry.sets {
                for m in set.ctls.iter_mut().filter(|m| m.name == name) {
                    if m.path != old && !m.path.starts_with(&format!("{old}/")) {
                        continue;
                    }
                    let newroot = newroot.trim_end_matches('/');
                    // In a cgroup namespace, the new root takes the place of the
                    // namespace's root (as CRIU does it), and is its root from now on.
                    match cgns_root(m).map(str::len) {
                        Some(prefix) => {
                            m.path = format!("{newroot}{}", &m.path[prefix..]);
                            m.cgns_prefix = Some(newroot.len() as u32).filter(|&p| p > 0);
                        }
                        None => m.path = format!("{newroot}{}", &m.path[old.len()..]),
                    }
                }
            }
            d.dir_name = newroot.trim_start_matches('/').to_owned();
        }
    }
}

impl CgroupRestore {
    /// Makes `dir` (below `parent`) per `mode`, its properties, then its children.
    fn make_dir(
        &mut self,
        parent: &Path,
        dir: &pb::CgroupDirEntry,
        mode: CgMode,
    ) -> Result<(), CgroupsError> {
        let path = parent.join(dir.dir_name.trim_start_matches('/'));
        let write_props = if path.is_dir() {
            if mode == CgMode::Strict {
                return Err(CgroupsError::Refused {
                    path,
                    why: "exists already (--manage-cgroups strict)".into(),
                });
            }
            mode.writes_existing()
        } else {
            if !mode.creates() {
                return Err(CgroupsError::Refused {
                    path,
                    why: format!("does not exist (--manage-cgroups mode {mode:?})"),
                });
            }
            self.make_missing(&path)?;
            if let Some(p) = &dir.dir_perms {
                set_perms(&path, p)?;
            }
            true
        };
        if write_props && mode != CgMode::None {
            for prop in &dir.properties {
                write_property(&path, prop)?;
            }
        }
        for child in &dir.children {
            self.make_dir(&path, child, mode)?;
        }
        Ok(())
    }

    /// `mkdir -p`, each directory made remembered for the guard.
    fn make_missing(&mut self, dir: &Path) -> Result<(), CgroupsError> {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.is_dir() {
            missing.push(d.to_owned());
            d = match d.parent() {
                Some(p) => p,
                None => break,
            };
        }
        for m in missing.into_iter().rev() {
            std::fs::create_dir(&m).map_err(io_err(&m, "making the cgroup"))?;
            self.created.push(m);
        }
        Ok(())
    }

    /// Moves process `pid` (our number) and its `threads` (image core, our number)
    /// into their sets. `leader_set` is the leader's (0: none recorded).
    pub fn move_process(
        &self,
        pid: Pid,
        leader_set: u32,
        threads: &[(u32, Pid)],
    ) -> Result<(), CgroupsError> {
        self.move_task(pid, leader_set, "cgroup.procs", "cgroup.procs")?;
        for &(set, tid) in threads {
            if set != leader_set {
                self.move_task(tid, set, "tasks", "cgroup.threads")?;
            }
        }
        Ok(())
    }

    fn move_task(&self, tid: Pid, set: u32, v1: &str, v2: &str) -> Result<(), CgroupsError> {
        if set == 0 || set == self.root_set {
            return Ok(());
        }
        let entry = self
            .sets
            .get(&set)
            .ok_or_else(|| CgroupsError::BadImage(format!("set {set} is not in the image")))?;
        for m in entry
            .ctls
            .iter()
            .filter(|m| self.own.get(&m.name) != Some(&m.path))
        {
            let mount = self.mounts.get(&m.name).ok_or_else(|| {
                CgroupsError::BadImage(format!("hierarchy {:?} is not in the image", m.name))
            })?;
            let file = mount
                .join(m.path.trim_start_matches('/'))
                .join(if m.name.is_empty() { v2 } else { v1 });
            std::fs::write(&file, tid.0.to_string())
                .map_err(io_err(&file, "moving a task into the cgroup"))?;
        }
        Ok(())
    }

    /// The cgroup namespace of the tree's root, whose set is `set`: when its members
    /// record a namespace prefix, moves task `pid` into each prefix directory, where
    /// the namespace's root must be when the task unshares it (the kernel roots a new
    /// cgroup namespace at the cgroups of the task that makes it). Returns whether the
    /// task must now unshare one. Its final cgroups, below, come with `move_process`.
    pub fn enter_cgns_roots(&self, pid: Pid, set: u32) -> Result<bool, CgroupsError> {
        if set == 0 || set == self.root_set {
            return Ok(false);
        }
        let entry = self
            .sets
            .get(&set)
            .ok_or_else(|| CgroupsError::BadImage(format!("set {set} is not in the image")))?;
        let mut unshare = false;
        for m in &entry.ctls {
            let Some(root) = cgns_root(m) else {
                continue;
            };
            unshare = true;
            if self.own.get(&m.name).map(String::as_str) == Some(root) {
                continue;
            }
            let mount = self.mounts.get(&m.name).ok_or_else(|| {
                CgroupsError::BadImage(format!("hierarchy {:?} is not in the image", m.name))
            })?;
            let file = mount
                .join(root.trim_start_matches('/'))
                .join("cgroup.procs");
            std::fs::write(&file, pid.0.to_string()).map_err(io_err(
                &file,
                "moving the root into its cgroup namespace's root",
            ))?;
        }
        Ok(unshare)
    }

    /// The restore succeeded: the directories stay.
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for CgroupRestore {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // The tasks were killed before this runs; a cgroup stays busy until its last
        // task is gone, so each removal is retried for a moment.
        for dir in self.created.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The root of the cgroup namespace a member records (its path's first `cgns_prefix`
/// bytes), if it records one.
fn cgns_root(m: &pb::CgMemberEntry) -> Option<&str> {
    let prefix = m.cgns_prefix.filter(|&p| p > 0)? as usize;
    m.path.get(..prefix).filter(|root| root.starts_with('/'))
}

/// The set a task's core entry names (0: none recorded).
pub fn set_of(core: &pb::CoreEntry) -> u32 {
    core.thread_core
        .as_ref()
        .and_then(|t| t.cg_set)
        .or(core.tc.as_ref().and_then(|tc| tc.cg_set))
        .unwrap_or(0)
}

fn set_perms(path: &Path, p: &pb::CgroupPerms) -> Result<(), CgroupsError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(p.mode & 0o7777))
        .map_err(io_err(path, "setting its mode"))?;
    std::os::unix::fs::chown(path, Some(p.uid), Some(p.gid))
        .map_err(io_err(path, "setting its owner"))
}

/// Writes one property, unless it already has that value. `net_prio.ifpriomap` is
/// written a line at a time (only the priorities that were set).
fn write_property(dir: &Path, prop: &pb::CgroupPropEntry) -> Result<(), CgroupsError> {
    let file = dir.join(&prop.name);
    if !file.exists() {
        tracing::warn!(file = %file.display(), "cgroup property not on this kernel, skipped");
        return Ok(());
    }
    if let Some(p) = &prop.perms {
        set_perms(&file, p)?;
    }
    if super::perms_only(&prop.name) {
        return Ok(());
    }
    let current = std::fs::read_to_string(&file).map_err(io_err(&file, "reading the property"))?;
    if current.trim_end_matches('\n') == prop.value {
        return Ok(());
    }
    if prop.name == "devices.list" {
        // Read-only: the list is made by denying everything, then allowing each entry.
        let deny = dir.join("devices.deny");
        std::fs::write(&deny, "a").map_err(io_err(&deny, "writing the property"))?;
        let allow = dir.join("devices.allow");
        for line in prop.value.lines().filter(|l| !l.is_empty()) {
            std::fs::write(&allow, line).map_err(io_err(&allow, "writing the property"))?;
        }
        return Ok(());
    }
    if prop.name == "net_prio.ifpriomap" {
        for line in prop.value.lines().filter(|l| !l.ends_with(" 0")) {
            std::fs::write(&file, line).map_err(io_err(&file, "writing the property"))?;
        }
    } else {
        std::fs::write(&file, &prop.value).map_err(io_err(&file, "writing the property"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(path: &str, cgns_prefix: Option<u32>) -> pb::CgMemberEntry {
        pb::CgMemberEntry {
            name: "cpu".into(),
            path: path.into(),
            cgns_prefix,
        }
    }

    #[test]
    fn cgroup_root_replaces_the_cgroup_namespace_root() {
        let mut entry = pb::CgroupEntry {
            sets: vec![pb::CgSetEntry {
                id: 2,
                ctls: vec![member("/ct/a", Some(3)), member("/other", None)],
            }],
            controllers: vec![pb::CgControllerEntry {
                cnames: vec!["cpu".into()],
                dirs: vec![pb::CgroupDirEntry {
                    dir_name: "ct".into(),
                    ..Default::default()
                }],
                is_threaded: None,
            }],
        };
        remap_roots(&mut entry, &[(None, "/new/root".into())]);
        let ctls = &entry.sets[0].ctls;
        assert_eq!(ctls[0].path, "/new/root/a");
        assert_eq!(ctls[0].cgns_prefix, Some(9));
        assert_eq!(cgns_root(&ctls[0]), Some("/new/root"));
        // Not under the tree's root: left alone.
        assert_eq!(ctls[1].path, "/other");
        assert_eq!(entry.controllers[0].dirs[0].dir_name, "new/root");
    }

    #[test]
    fn a_prefix_outside_the_path_is_no_namespace_root() {
        assert_eq!(cgns_root(&member("/a", Some(5))), None);
        assert_eq!(cgns_root(&member("/a/b", Some(0))), None);
        assert_eq!(cgns_root(&member("/a/b", Some(2))), Some("/a"));
    }
}
