//! The dump side: each thread's set, and the directories of the sets that are not
//! ours (see the module's documentation).

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use criu_images::pb;

use super::{io_err, read_members, CgroupOptions, CgroupsError, Member, Yard, PROPERTIES};
use crate::sys::{self, Pid};

/// The sets found so far, by content; id 1 is criu-rs's own. Each member comes with
/// its cgroup namespace prefix: how much of its path (as we see it) is the root of the
/// task's cgroup namespace (0: none, the task sees the path as we do). Equal paths
/// under different prefixes are different sets, as in CRIU.
pub struct CgroupDump {
    sets: Vec<Vec<(Member, u32)>>,
    options: CgroupOptions,
    /// Our own cgroup namespace (its inode).
    own_cgns: std::fs::Metadata,
}

impl CgroupDump {
    /// Starts with our own set (`/proc/self/cgroup`).
    pub fn new(options: CgroupOptions) -> Result<CgroupDump, CgroupsError> {
        let ours = read_members(Path::new("/proc/self/cgroup"))?;
        let link = Path::new("/proc/self/ns/cgroup");
        let own_cgns = std::fs::metadata(link).map_err(io_err(link, "reading"))?;
        Ok(CgroupDump {
            sets: vec![ours.into_iter().map(|m| (m, 0)).collect()],
            options,
            own_cgns,
        })
    }

    /// The inventory's `root_cg_set`: our own set.
    pub fn own_set(&self) -> u32 {
        1
    }

    /// The set id of thread `tid` of process `pid`.
    pub fn thread_set(&mut self, pid: Pid, tid: Pid) -> Result<u32, CgroupsError> {
        let file = format!("/proc/{}/task/{}/cgroup", pid.0, tid.0);
        let members = read_members(Path::new(&file))?;
        let members = self.with_cgns_prefixes(pid, tid, members)?;
        if let Some(i) = self.sets.iter().position(|s| *s == members) {
            return Ok(i as u32 + 1);
        }
        self.sets.push(members);
        Ok(self.sets.len() as u32)
    }

    /// `members` (as we see them) of thread `tid`, each with its cgroup namespace
    /// prefix. A thread in another cgroup namespace sees its paths from that
    /// namespace's root: a helper thread of ours joins the namespace to read them the
    /// way the task does, and what our path has more is the prefix.
    fn with_cgns_prefixes(
        &self,
        pid: Pid,
        tid: Pid,
        members: Vec<Member>,
    ) -> Result<Vec<(Member, u32)>, CgroupsError> {
        let link = format!("/proc/{}/task/{}/ns/cgroup", pid.0, tid.0);
        let link = Path::new(&link);
        let ns = match std::fs::File::open(link) {
            Ok(ns) => ns,
            // A zombie has no namespaces left, and nothing to restore in one.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(members.into_iter().map(|m| (m, 0)).collect())
            }
            Err(e) => return Err(io_err(link, "opening")(e)),
        };
        let meta = ns.metadata().map_err(io_err(link, "reading"))?;
        if (meta.dev(), meta.ino()) == (self.own_cgns.dev(), self.own_cgns.ino()) {
            return Ok(members.into_iter().map(|m| (m, 0)).collect());
        }
        let file = format!("/proc/{}/task/{}/cgroup", pid.0, tid.0);
        let file = Path::new(&file);
        let inside =
            sys::in_namespace_thread(ns.as_fd(), libc::CLONE_NEWCGROUP, || read_members(file))
                .map_err(io_err(link, "joining the cgroup namespace"))??;
        members
            .into_iter()
            .map(|(name, path)| {
                let seen = inside
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|m| m.1.as_str());
                let prefix = seen
                    .map(|inner| cgns_prefix(&path, inner))
                    .unwrap_or(Some(0))
                    .ok_or_else(|| CgroupsError::Refused {
                        path: file.to_owned(),
                        why: format!(
                            "hierarchy {name:?}: the task's path {:?} in its cgroup \
                             namespace is not the end of ours, {path:?} (a task outside \
                             its cgroup namespace's root)",
                            seen.unwrap_or_default()
                        ),
                    })?;
                Ok(((name, path), prefix))
            })
            .collect()
    }

    /// `cgroup.img`'s entry, or None when every task is in our own set.
    pub fn entry(&self) -> Result<Option<pb::CgroupEntry>, CgroupsError> {
        if self.sets.len() == 1 {
            return Ok(None);
        }
        let sets = self.sets[1..]
            .iter()
            .enumerate()
            .map(|(i, s)| pb::CgSetEntry {
                id: i as u32 + 2,
                ctls: s
                    .iter()
                    .map(|((name, path), prefix)| pb::CgMemberEntry {
                        name: name.clone(),
                        path: path.clone(),
                        cgns_prefix: (*prefix > 0).then_some(*prefix),
                    })
                    .collect(),
            })
            .collect::<Vec<_>>();
        // Each hierarchy the tree's sets name, with the member paths to walk.
        let mut paths: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for ((name, path), _) in self.sets[1..].iter().flatten() {
            paths.entry(name).or_default().push(path);
        }
        let mut yard = Yard::new(self.options.yard.as_deref())?;
        let mut controllers = Vec::new();
        for (name, mut heads) in paths {
            let cnames = super::cnames(name);
            heads.sort();
            heads.dedup();
            // A path under another one is part of its walk. Our own cgroup in the
            // hierarchy (the root "/" among them) is not walked: it is the
            // restorer's, not the tree's, and a restore leaves it as it is.
            let ours = self.sets[0]
                .iter()
                .find(|((n, _), _)| n == name)
                .map(|m| &m.0 .1);
            let mut walked: Vec<&str> = Vec::new();
            for h in heads {
                let own = h == "/" || ours.is_some_and(|o| o == h);
                if !own && !walked.iter().any(|w| under(h, w)) {
                    walked.push(h);
                }
            }
            // `--cgroup-root` on dump: the tree's directories are those below it.
            if let Some(root) = super::root_for(&self.options.roots, &cnames) {
                walked = vec![root];
            }
            let mut dirs = Vec::new();
            if !walked.is_empty() {
                let mount = yard.hierarchy(&cnames)?;
                for h in walked {
                    let full = mount.join(h.trim_start_matches('/'));
                    dirs.push(walk(&full, h.trim_start_matches('/'))?);
                }
            }
            // CRIU moves a thread into a cgroup of its own only in a hierarchy marked
            // threaded, as it marks every v1 one (whose cgroups have `tasks`).
            let is_threaded = dirs.iter().any(has_tasks_file);
            controllers.push(pb::CgControllerEntry {
                cnames,
                dirs,
                is_threaded: Some(is_threaded),
            });
        }
        Ok(Some(pb::CgroupEntry { sets, controllers }))
    }
}

/// The cgroup namespace prefix of a member: the length of the part of `outer` (our
/// view of its path) that is the namespace's root, given `inner` (the task's view).
/// `None` when `inner` is not how `outer` looks from a root above it.
fn cgns_prefix(outer: &str, inner: &str) -> Option<u32> {
    if outer == inner {
        return Some(0);
    }
    let root = if inner == "/" {
        outer
    } else {
        outer.strip_suffix(inner)?
    };
    (root.starts_with('/') && !root.ends_with('/')).then_some(root.len() as u32)
}

/// Whether a recorded directory, or one below it, has a `tasks` file (v1).
fn has_tasks_file(dir: &pb::CgroupDirEntry) -> bool {
    dir.properties.iter().any(|p| p.name == "tasks") || dir.children.iter().any(has_tasks_file)
}

/// Whether cgroup path `p` is `dir` or below it.
fn under(p: &str, dir: &str) -> bool {
    p == dir || (p.starts_with(dir) && (dir == "/" || p.as_bytes().get(dir.len()) == Some(&b'/')))
}

/// The directory `full`, named `name` in its entry, with its subdirectories.
fn walk(full: &Path, name: &str) -> Result<pb::CgroupDirEntry, CgroupsError> {
    let meta = std::fs::metadata(full).map_err(io_err(full, "reading the directory"))?;
    let mut properties = Vec::new();
    for prop in PROPERTIES {
        let file = full.join(prop);
        let value = if super::perms_only(prop) && file.exists() {
            Ok(String::new())
        } else {
            std::fs::read_to_string(&file)
        };
        if let Ok(value) = value {
            let perms = std::fs::metadata(&file).ok().map(|m| pb::CgroupPerms {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
            });
            properties.push(pb::CgroupPropEntry {
                name: (*prop).to_owned(),
                value: value.trim_end_matches('\n').to_owned(),
                perms,
            });
        }
    }
    let mut children = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(full)
        .map_err(io_err(full, "listing the directory"))?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.file_name())
        .collect();
    entries.sort();
    for child in entries {
        let child = child.to_string_lossy().into_owned();
        children.push(walk(&full.join(&child), &child)?);
    }
    Ok(pb::CgroupDirEntry {
        dir_name: name.to_owned(),
        children,
        properties,
        dir_perms: Some(pb::CgroupPerms {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_others() {
        assert!(under("/a/b", "/a"));
        assert!(under("/a", "/a"));
        assert!(!under("/ab", "/a"));
        assert!(under("/x", "/"));
    }

    #[test]
    fn cgns_prefixes() {
        // Unshared at /test, still there.
        assert_eq!(cgns_prefix("/test", "/"), Some(5));
        // Unshared at /test, then moved below it.
        assert_eq!(cgns_prefix("/test/a", "/a"), Some(5));
        // No namespace of its own, or one rooted at /.
        assert_eq!(cgns_prefix("/a/b", "/a/b"), Some(0));
        // Moved out of its namespace's root: the inner path climbs up.
        assert_eq!(cgns_prefix("/other", "/../other"), None);
        assert_eq!(cgns_prefix("/ab", "/b"), None);
    }
}
