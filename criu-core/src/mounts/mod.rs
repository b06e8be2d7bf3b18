//! Mount namespaces: the mounts of a tree's own mount namespace, as CRIU saves them in
//! `mountpoints-ID.img` (one `mnt_entry` each), and the plan that says how each one is
//! made again.
//!
//! Both sides use the same plan: the dump refuses, before anything is frozen, a mount
//! the restore could not make; the restore follows the plan in its order (parents
//! first). Each mount is made in one of four ways:
//! - the namespace's root mount: a bind of the restore's `--root`;
//! - external (`--external mnt[MOUNTPOINT]:KEY` at dump): a bind of the path the restore
//!   maps KEY to;
//! - a bind of part of a mount made before it, of the same filesystem (same device),
//!   whose root holds this one's root (bind mounts, and peers of shared groups);
//! - a new mount of a filesystem the kernel makes anew (proc, sysfs, tmpfs with its
//!   contents, devpts, mqueue, cgroup...); one whose root is not the filesystem's root
//!   is mounted aside first and the part bound in place.

pub mod dump;
pub mod tmpfs;

use criu_images::pb;

/// Per-mount flags of mountinfo's fifth field and propagation, as mount(2) spells them.
pub const MS_RDONLY: u32 = libc::MS_RDONLY as u32;
pub const MS_NOSUID: u32 = libc::MS_NOSUID as u32;
pub const MS_NODEV: u32 = libc::MS_NODEV as u32;
pub const MS_NOEXEC: u32 = libc::MS_NOEXEC as u32;
pub const MS_NOATIME: u32 = libc::MS_NOATIME as u32;
pub const MS_NODIRATIME: u32 = libc::MS_NODIRATIME as u32;
pub const MS_RELATIME: u32 = libc::MS_RELATIME as u32;
pub const MS_SHARED: u32 = libc::MS_SHARED as u32;
pub const MS_SLAVE: u32 = libc::MS_SLAVE as u32;
pub const MS_UNBINDABLE: u32 = libc::MS_UNBINDABLE as u32;
/// The flags a bind remount sets on one mount.
pub const MNT_FLAGS: u32 =
    MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME;

/// CRIU's `fstype` codes (images/mnt.proto) of the filesystems it names.
const FSTYPES: [(&str, u32); 16] = [
    ("proc", 1),
    ("sysfs", 2),
    ("devtmpfs", 3),
    ("binfmt_misc", 4),
    ("tmpfs", 5),
    ("devpts", 6),
    ("simfs", 7),
    ("pstore", 8),
    ("securityfs", 9),
    ("fusectl", 10),
    ("debugfs", 11),
    ("cgroup", 12),
    ("mqueue", 14),
    ("fuse", 15),
    ("tracefs", 19),
    ("cgroup2", 23),
];

pub const FSTYPE_TMPFS: u32 = 5;
/// CRIU's code of devpts.
pub const FSTYPE_DEVPTS: u32 = 6;

/// The code of a filesystem type name (subtypes after a dot ignored); 0 is CRIU's
/// "unsupported", for a filesystem restored only by a bind.
pub fn fstype_code(name: &str) -> u32 {
    let base = name.split('.').next().unwrap_or(name);
    FSTYPES
        .iter()
        .find(|(n, _)| *n == base)
        .map_or(0, |(_, c)| *c)
}

/// The name mount(2) takes for a code of `fstype_code` (None for 0).
pub fn fstype_name(code: u32) -> Option<&'static str> {
    FSTYPES.iter().find(|(_, c)| *c == code).map(|(n, _)| *n)
}

/// Filesystems that a new mount(2) makes as they were: virtual ones with no contents
/// to save, and tmpfs, whose contents are saved.
fn mountable_anew(code: u32) -> bool {
    matches!(code, 1..=6 | 8..=12 | 14 | 19 | 23)
}

/// CRIU's encoding of a device number (`MKKDEV`: major above 20 bits of minor).
pub fn kdev(major: u32, minor: u32) -> u32 {
    (major << 20) | minor
}

#[derive(Debug, thiserror::Error)]
#[error("mount {mountpoint} ({fstype}): {what}")]
pub struct MountError {
    pub mountpoint: String,
    pub fstype: String,
    pub what: String,
}

fn refuse(m: &pb::MntEntry, what: impl Into<String>) -> MountError {
    MountError {
        mountpoint: m.mountpoint.clone(),
        fstype: m
            .fsname
            .clone()
            .or_else(|| fstype_name(m.fstype).map(str::to_owned))
            .unwrap_or_else(|| format!("fstype {}", m.fstype)),
        what: what.into(),
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits.iter().fold(0u32, |a, d| a * 8 + u32::from(d - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Per-mount flags of mountinfo's options field (`rw,nosuid,relatime`).
fn mount_flags(opts: &str) -> u32 {
    opts.split(',')
        .map(|o| match o {
            "ro" => MS_RDONLY,
            "nosuid" => MS_NOSUID,
            "nodev" => MS_NODEV,
            "noexec" => MS_NOEXEC,
            "noatime" => MS_NOATIME,
            "nodiratime" => MS_NODIRATIME,
            "relatime" => MS_RELATIME,
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

/// Superblock flags of the super options, and the other options as text (as CRIU
/// keeps them: those that are no flag, in their order).
fn sb_flags(opts: &str) -> (u32, String) {
    let mut flags = 0;
    let mut rest = Vec::new();
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "rw" => {}
            "ro" => flags |= MS_RDONLY,
            "sync" => flags |= libc::MS_SYNCHRONOUS as u32,
            "dirsync" => flags |= libc::MS_DIRSYNC as u32,
            "mad" => flags |= libc::MS_MANDLOCK as u32,
            other => rest.push(other),
        }
    }
    (flags, rest.join(","))
}

/// One line of /proc/PID/mountinfo as a `mnt_entry` (mount point as the reader sees
/// it); None for a line that does not parse.
pub fn parse_mountinfo_line(line: &str) -> Option<pb::MntEntry> {
    let (head, tail) = line.split_once(" - ")?;
    let mut f = head.split(' ');
    let mnt_id = f.next()?.parse().ok()?;
    let parent_mnt_id = f.next()?.parse().ok()?;
    let (major, minor) = f.next()?.split_once(':')?;
    let mut root = unescape(f.next()?);
    // The kernel marks a root that was unlinked.
    let deleted = root.ends_with("//deleted");
    if deleted {
        root.truncate(root.len() - "//deleted".len());
    }
    let mountpoint = unescape(f.next()?);
    let mut flags = mount_flags(f.next()?);
    let (mut shared_id, mut master_id) = (None, None);
    for tag in f {
        if let Some(id) = tag.strip_prefix("shared:") {
            flags |= MS_SHARED;
            shared_id = id.parse().ok();
        } else if let Some(id) = tag.strip_prefix("master:") {
            flags |= MS_SLAVE;
            master_id = id.parse().ok();
        } else if tag == "unbindable" {
            flags |= MS_UNBINDABLE;
        }
    }
    let mut t = tail.splitn(3, ' ');
    let fsname = t.next()?.to_owned();
    let source = unescape(t.next()?);
    let (sb, options) = sb_flags(t.next().unwrap_or(""));
    let root_dev = kdev(major.parse().ok()?, minor.parse().ok()?);
    Some(pb::MntEntry {
        fstype: fstype_code(&fsname),
        mnt_id,
        root_dev,
        parent_mnt_id,
        flags,
        root,
        mountpoint,
        source,
        options,
        shared_id: Some(shared_id.unwrap_or(0)),
        master_id: Some(master_id.unwrap_or(0)),
        fsname: Some(fsname),
        sb_flags: Some(sb),
        deleted: deleted.then_some(true),
        ..Default::default()
    })
}

/// How one mount is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The namespace's root: a bind of `--root`.
    Root,
    /// A bind of the path the restore maps this key to.
    External(String),
    /// A bind of `subpath` (relative, maybe empty) under the mount planned at `from`.
    Bind { from: usize, subpath: String },
    /// A new mount of its filesystem; `whole` is false when the mount shows only part
    /// of it (mounted aside first, then that part bound in place).
    New { whole: bool },
}

/// A mount and how it is made, in the order they are made.
#[derive(Debug, Clone)]
pub struct Planned {
    pub entry: pb::MntEntry,
    pub source: Source,
}

/// The key of an external mount: CRIU 4.2 writes `ext_key`; older images set
/// `ext_mount` and keep the key in `root`.
pub fn ext_key(m: &pb::MntEntry) -> Option<&str> {
    match (&m.ext_key, m.ext_mount) {
        (Some(k), _) => Some(k),
        (None, Some(true)) => Some(&m.root),
        _ => None,
    }
}

/// `sub` relative to `base`, when `base` holds it (`/a` holds `/a` and `/a/b`).
fn under<'a>(sub: &'a str, base: &str) -> Option<&'a str> {
    if base == "/" {
        return Some(sub.trim_start_matches('/'));
    }
    let rest = sub.strip_prefix(base)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

/// Orders the mounts parents first and says how each is made, refusing (by mount
/// point) one that cannot be. The root is the mount at `/` whose parent is not in the
/// namespace's list (the reader's root).
pub fn plan(entries: &[pb::MntEntry]) -> Result<Vec<Planned>, MountError> {
    let known: std::collections::HashSet<u32> = entries.iter().map(|m| m.mnt_id).collect();
    let roots: Vec<&pb::MntEntry> = entries
        .iter()
        .filter(|m| !known.contains(&m.parent_mnt_id))
        .collect();
    let root = match roots.as_slice() {
        [r] if r.mountpoint == "/" => *r,
        [] => {
            return Err(MountError {
                mountpoint: "/".into(),
                fstype: "?".into(),
                what: "the namespace has no root mount".into(),
            })
        }
        [r] => return Err(refuse(r, "the namespace's root mount is not at /")),
        [_, r, ..] => {
            return Err(refuse(
                r,
                "its parent is not in the namespace (more than one root mount)",
            ))
        }
    };
    // Parents first; siblings as listed (mounts stacked on one mount point too), except
    // that one a sibling covers (mounted on the parent below the sibling's mount point:
    // a propagated copy, or one mounted before the sibling) goes before that sibling,
    // while its mount point is still reachable.
    let mut order = vec![root];
    let mut i = 0;
    while i < order.len() {
        let parent = order[i].mnt_id;
        let mut children: Vec<&pb::MntEntry> = Vec::new();
        for m in entries
            .iter()
            .filter(|m| m.parent_mnt_id == parent && m.mnt_id != parent)
        {
            let covered_by = children.iter().position(|c| {
                c.mountpoint != m.mountpoint
                    && under(&m.mountpoint, &c.mountpoint).is_some_and(|rest| !rest.is_empty())
            });
            match covered_by {
                Some(at) => children.insert(at, m),
                None => children.push(m),
            }
        }
        order.extend(children);
        i += 1;
    }
    let mut planned: Vec<Planned> = Vec::with_capacity(order.len());
    for m in order {
        if m.deleted == Some(true) {
            return Err(refuse(m, "its root was deleted"));
        }
        // Its mount point must lead into its parent when it is made.
        if let Some(parent) = planned
            .iter()
            .position(|p| p.entry.mnt_id == m.parent_mnt_id)
        {
            let reached = resolves_to(&planned, &m.mountpoint);
            if reached != parent {
                return Err(refuse(
                    m,
                    format!(
                        "its mount point is covered by the mount at {} (an overmount): the \
                         restore could not mount it there",
                        planned[reached].entry.mountpoint
                    ),
                ));
            }
        }
        let source = if planned.is_empty() {
            if ext_key(m).is_some() {
                return Err(refuse(m, "the root mount cannot be external"));
            }
            Source::Root
        } else if let Some(key) = ext_key(m) {
            Source::External(key.to_owned())
        } else if let Some(source) = bind_source(&planned, m).map_err(|why| refuse(m, why))? {
            source
        } else if mountable_anew(m.fstype) {
            if m.fstype == FSTYPE_TMPFS && m.root != "/" {
                return Err(refuse(
                    m,
                    format!(
                        "it shows {} of a tmpfs mounted nowhere else in the namespace, \
                         whose contents cannot be saved",
                        m.root
                    ),
                ));
            }
            Source::New {
                whole: m.root == "/",
            }
        } else {
            return Err(refuse(
                m,
                format!(
                    "the engine cannot mount this filesystem anew and no other mount of the \
                     namespace holds its root {}; declare it external \
                     (--external mnt[{}]:KEY)",
                    m.root, m.mountpoint
                ),
            ));
        };
        planned.push(Planned {
            entry: m.clone(),
            source,
        });
    }
    // Peer and master groups are set once every mount exists, through each mount's
    // path: a mount in one must still be reachable then.
    for (i, p) in planned.iter().enumerate() {
        let grouped = p.entry.shared_id.unwrap_or(0) != 0 || p.entry.master_id.unwrap_or(0) != 0;
        if !grouped {
            continue;
        }
        let reached = resolves_to(&planned, &p.entry.mountpoint);
        if reached != i {
            return Err(refuse(
                &p.entry,
                format!(
                    "it is in a peer or master group and the mount at {} covers it (an \
                     overmount): the restore could not set its group",
                    planned[reached].entry.mountpoint
                ),
            ));
        }
    }
    Ok(planned)
}

/// The mount that `path` leads to once `planned` are made, in their order: the walk
/// from the root mount, component by component, into the topmost mount on each mount
/// point of the mount it is in (a mount stacked on another hides it, and the mounts on
/// it).
fn resolves_to(planned: &[Planned], path: &str) -> usize {
    let topmost = |cur: usize, at: &str| {
        let mut cur = cur;
        while let Some(j) = (0..planned.len()).rev().find(|&j| {
            j != cur
                && planned[j].entry.mountpoint == at
                && planned[j].entry.parent_mnt_id == planned[cur].entry.mnt_id
        }) {
            cur = j;
        }
        cur
    };
    let mut cur = topmost(0, "/");
    let mut at = String::new();
    for part in path.split('/').filter(|c| !c.is_empty()) {
        at.push('/');
        at.push_str(part);
        cur = topmost(cur, &at);
    }
    cur
}

/// A mount made before `m`, of the same filesystem, whose root holds `m`'s: a peer of
/// `m`'s shared group first, then one of its master group, then any. Not one whose
/// path to `m`'s root is covered by a mount made since (an overmount): the bind would
/// take what covers it.
fn bind_source(planned: &[Planned], m: &pb::MntEntry) -> Result<Option<Source>, String> {
    let shared = m.shared_id.unwrap_or(0);
    let master = m.master_id.unwrap_or(0);
    let reachable = |from: usize, p: &Planned| {
        let sub = under(&m.root, &p.entry.root).unwrap_or("");
        let path = format!("{}/{sub}", p.entry.mountpoint);
        resolves_to(planned, &path) == from
    };
    let holders = || {
        planned.iter().enumerate().filter(|(_, p)| {
            p.entry.root_dev == m.root_dev
                && ext_key(&p.entry).is_none()
                && under(&m.root, &p.entry.root).is_some()
        })
    };
    let candidates = || holders().filter(|&(from, p)| reachable(from, p));
    if candidates().next().is_none() {
        if let Some((_, p)) = holders().next() {
            return Err(format!(
                "it shows {} of the filesystem mounted at {}, whose path there is covered \
                 by another mount (an overmount): the restore could not bind it",
                m.root, p.entry.mountpoint
            ));
        }
    }
    let group = |p: &Planned| p.entry.shared_id.unwrap_or(0);
    let best = candidates()
        .find(|(_, p)| shared != 0 && group(p) == shared)
        .or_else(|| candidates().find(|(_, p)| master != 0 && group(p) == master))
        .or_else(|| candidates().next());
    let Some(best) = best else {
        return Ok(None);
    };
    let (from, p) = best;
    Ok(Some(Source::Bind {
        from,
        subpath: under(&m.root, &p.entry.root).unwrap_or("").to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
100 50 8:1 /srv/root / rw,relatime master:1 - ext4 /dev/sda1 rw,errors=remount-ro
101 100 0:22 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
102 100 0:40 / /dev/pts rw,nosuid,noexec,relatime - devpts pts rw,gid=5,mode=620,ptmxmode=666
103 100 0:41 / /run rw,relatime shared:7 - tmpfs zdtm_run rw,size=100k,inode64
104 100 0:41 /sub /mnt/my\\040dir ro,relatime shared:7 - tmpfs zdtm_run rw,size=100k,inode64
105 100 8:1 /srv/root/data /data rw - ext4 /dev/sda1 rw
106 100 8:1 /elsewhere /other rw - ext4 /dev/sda1 rw
";

    fn entries() -> Vec<pb::MntEntry> {
        INFO.lines().filter_map(parse_mountinfo_line).collect()
    }

    #[test]
    fn parses_mountinfo() {
        let e = entries();
        assert_eq!(e.len(), 7);
        assert_eq!(e[0].root, "/srv/root");
        assert_eq!(e[0].master_id, Some(1));
        assert_eq!(e[0].flags, MS_RELATIME | MS_SLAVE);
        assert_eq!(e[0].root_dev, kdev(8, 1));
        assert_eq!(e[1].fstype, 1);
        assert_eq!(e[1].flags, MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME);
        assert_eq!(e[2].options, "gid=5,mode=620,ptmxmode=666");
        assert_eq!(e[2].source, "pts");
        assert_eq!(e[4].mountpoint, "/mnt/my dir");
        assert_eq!(e[4].flags & MS_RDONLY, MS_RDONLY);
        assert_eq!(e[3].shared_id, Some(7));
        assert_eq!(e[3].options, "size=100k,inode64");
        assert_eq!(e[0].sb_flags, Some(0));
        assert_eq!(e[0].options, "errors=remount-ro");
    }

    #[test]
    fn plans_binds_and_new_mounts_and_refuses_the_unreachable() {
        let mut e = entries();
        let err = plan(&e).unwrap_err();
        assert_eq!(err.mountpoint, "/other", "{err}");
        e[6].ext_key = Some("KEY".into());
        let p = plan(&e).unwrap();
        assert_eq!(p[0].source, Source::Root);
        assert_eq!(p[1].source, Source::New { whole: true });
        assert_eq!(
            p[4].source,
            Source::Bind {
                from: 3,
                subpath: "sub".into()
            }
        );
        assert_eq!(
            p[5].source,
            Source::Bind {
                from: 0,
                subpath: "data".into()
            }
        );
        assert_eq!(p[6].source, Source::External("KEY".into()));
    }

    #[test]
    fn a_bind_source_covered_by_an_overmount_is_not_used() {
        // /a is a tmpfs, covered by a bind of its own /b; under that, binds of its /c
        // (out of reach once /a is covered) and of its /b/x (reached through the cover).
        let text = "\
1 0 0:1 / / rw - tmpfs t rw
2 1 0:2 / /a rw - tmpfs t rw
3 2 0:2 /b /a rw - tmpfs t rw
4 3 0:2 /b/x /a/v rw - tmpfs t rw
5 3 0:2 /c /a/w rw - tmpfs t rw
";
        let e: Vec<_> = text.lines().filter_map(parse_mountinfo_line).collect();
        let err = plan(&e).unwrap_err();
        assert_eq!(err.mountpoint, "/a/w", "{err}");
        assert!(err.to_string().contains("covered"), "{err}");
        let p = plan(&e[..4]).unwrap();
        assert_eq!(
            p[3].source,
            Source::Bind {
                from: 2,
                subpath: "x".into()
            }
        );
    }

    #[test]
    fn a_mount_a_sibling_covers_is_made_before_it() {
        // zdtm's overmount_with_shared_parent: /t bound to itself and shared, its a/b
        // bound on /t/a, then /t/d bound on /t/a/c, which propagates a copy to /t's
        // a/b/c: under the mount at /t/a, out of reach once that is made.
        let text = "\
1 0 0:1 / / rw - tmpfs t rw
2 1 0:1 /t /t rw shared:1 - tmpfs t rw
3 2 0:1 /t/a/b /t/a rw shared:1 - tmpfs t rw
4 3 0:1 /t/d /t/a/c rw shared:1 - tmpfs t rw
5 2 0:1 /t/d /t/a/b/c rw shared:1 - tmpfs t rw
";
        // Shared, the hidden copy's group could not be set through its path: refused.
        let e: Vec<_> = text.lines().filter_map(parse_mountinfo_line).collect();
        let err = plan(&e).unwrap_err();
        assert_eq!(err.mountpoint, "/t/a/b/c", "{err}");
        assert!(err.to_string().contains("peer or master group"), "{err}");
        // Private, the hidden one is made first, while /t/a/b/c is reachable.
        let private = text.replace(" shared:1", "");
        let e: Vec<_> = private.lines().filter_map(parse_mountinfo_line).collect();
        let p = plan(&e).unwrap();
        let order: Vec<&str> = p.iter().map(|p| p.entry.mountpoint.as_str()).collect();
        assert_eq!(order, ["/", "/t", "/t/a/b/c", "/t/a", "/t/a/c"]);
    }

    #[test]
    fn orders_parents_first() {
        let text = "\
1 0 0:1 / / rw - tmpfs t rw
3 2 0:3 / /a/b rw - proc proc rw
2 1 0:2 / /a rw - tmpfs t rw
";
        let e: Vec<_> = text.lines().filter_map(parse_mountinfo_line).collect();
        let p = plan(&e).unwrap();
        let order: Vec<&str> = p.iter().map(|p| p.entry.mountpoint.as_str()).collect();
        assert_eq!(order, ["/", "/a", "/a/b"]);
    }
}
