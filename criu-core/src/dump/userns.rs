//! A tree in a user namespace of its own: which layouts the dump accepts, the maps it
//! saves (`userns-ID.img`, as CRIU writes it) and the credentials in the namespace's
//! terms.
//!
//! Layout: the root's user namespace is a child of the dumper's, and every task of the
//! tree is in it (one level). Each namespace the tree has of its own (UTS, IPC, time,
//! pid) must be owned by it: the restore creates them from inside the new user
//! namespace, so one owned by another would come back owned differently.
//!
//! Credentials: `/proc/PID/status` shows a task's ids as the reader's namespace sees
//! them (the host ids), and CRIU's images hold them as the task sees them (its
//! namespace's, where it sets them again on restore): they are translated through the
//! namespace's maps. Capability sets are relative to the task's own namespace already.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use criu_images::{pb, ImageKind, ImageWriter};

use super::ids;
use super::ns::NsError;
use crate::sys::{self, Pid};

/// What the kernel shows for an id that its namespace does not map
/// (`/proc/sys/kernel/overflowuid`'s default).
const OVERFLOW_ID: u32 = 65534;

/// Namespace kinds the tree may have of its own, which must then be owned by its user
/// namespace.
const OWNED: [&str; 4] = ["uts", "ipc", "time", "pid"];

fn unsupported(pid: Pid, what: String) -> NsError {
    NsError::Unsupported {
        kind: "user",
        pid,
        what,
    }
}

fn read_err(pid: Pid, what: String) -> impl FnOnce(std::io::Error) -> NsError {
    move |source| NsError::Read {
        kind: "user",
        pid,
        what,
        source,
    }
}

fn open_ns(pid: Pid, kind: &str) -> Result<File, NsError> {
    let link = format!("/proc/{}/ns/{kind}", pid.0);
    File::open(&link).map_err(read_err(pid, format!("opening {link}")))
}

/// Whether the tree rooted at `root` has a user namespace of its own (one the dumper's
/// is the parent of, checked with the other namespaces it owns). Refuses deeper
/// nesting and namespaces of the tree owned by another user namespace.
pub fn tree_has_own(root: Pid) -> Result<bool, NsError> {
    let me = Pid(std::process::id() as i32);
    let mine = ids::ns_inode(me, "user").map_err(read_err(me, "reading our own".into()))?;
    let theirs = ids::ns_inode(root, "user").map_err(read_err(root, "reading its link".into()))?;
    if mine == theirs {
        return Ok(false);
    }
    let userns = open_ns(root, "user")?;
    let parent = sys::userns_parent_inode(userns.as_fd()).map_err(read_err(
        root,
        "finding the parent of its user namespace".into(),
    ))?;
    if parent != mine {
        return Err(unsupported(
            root,
            "its user namespace is not a child of the dumper's (nested user namespaces \
             are not supported)"
                .into(),
        ));
    }
    for kind in OWNED {
        if ids::ns_inode(root, kind).ok() == ids::ns_inode(me, kind).ok() {
            continue;
        }
        let ns = open_ns(root, kind)?;
        let owner = sys::ns_owner_inode(ns.as_fd()).map_err(read_err(
            root,
            format!("finding the owner of its {kind} namespace"),
        ))?;
        if owner != theirs {
            return Err(unsupported(
                root,
                format!(
                    "its {kind} namespace is not owned by its user namespace (the restore \
                     creates it inside the new one)"
                ),
            ));
        }
    }
    Ok(true)
}

/// One line of a `/proc/PID/{uid,gid}_map`.
fn parse_extent(line: &str) -> Option<pb::UidGidExtent> {
    let mut fields = line.split_whitespace().map(|f| f.parse::<u32>());
    let extent = pb::UidGidExtent {
        first: fields.next()?.ok()?,
        lower_first: fields.next()?.ok()?,
        count: fields.next()?.ok()?,
    };
    fields.next().is_none().then_some(extent)
}

/// The uid and gid maps of `pid`'s user namespace, as the dumper's namespace (its
/// parent) sees them.
pub fn read_maps(pid: Pid) -> Result<pb::UsernsEntry, NsError> {
    let read = |file: &str| -> Result<Vec<pb::UidGidExtent>, NsError> {
        let path = format!("/proc/{}/{file}", pid.0);
        let text =
            std::fs::read_to_string(&path).map_err(read_err(pid, format!("reading {path}")))?;
        text.lines()
            .map(|line| {
                parse_extent(line)
                    .ok_or_else(|| unsupported(pid, format!("{path} has an odd line {line:?}")))
            })
            .collect()
    };
    Ok(pb::UsernsEntry {
        uid_map: read("uid_map")?,
        gid_map: read("gid_map")?,
    })
}

/// `host`, an id as the parent namespace sees it, as the namespace with `map` sees it.
pub fn inside_id(map: &[pb::UidGidExtent], host: u32) -> u32 {
    map.iter()
        .find(|e| host >= e.lower_first && host - e.lower_first < e.count)
        .map_or(OVERFLOW_ID, |e| e.first + (host - e.lower_first))
}

/// Credentials read from the host's `/proc` put in the terms of the task's namespace.
pub fn creds_inside(c: &mut pb::CredsEntry, maps: &pb::UsernsEntry) {
    let uid = |id: &mut u32| *id = inside_id(&maps.uid_map, *id);
    for id in [&mut c.uid, &mut c.euid, &mut c.suid, &mut c.fsuid] {
        uid(id);
    }
    let gid = |id: &mut u32| *id = inside_id(&maps.gid_map, *id);
    for id in [&mut c.gid, &mut c.egid, &mut c.sgid, &mut c.fsgid] {
        gid(id);
    }
    c.groups.iter_mut().for_each(gid);
}

/// Writes `userns-ID.img` for the user namespace `pid` lives in.
pub fn write_image(dir: &Path, id: u32, maps: &pb::UsernsEntry) -> Result<(), NsError> {
    let kind = ImageKind::by_name("USERNS").ok_or_else(|| NsError::Unsupported {
        kind: "user",
        pid: Pid(0),
        what: "the image table lacks USERNS".into(),
    })?;
    let mut w = ImageWriter::create(dir.join(kind.file_name(id)), kind)?;
    w.write_entry(maps)?;
    w.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(first: u32, lower_first: u32, count: u32) -> pb::UidGidExtent {
        pb::UidGidExtent {
            first,
            lower_first,
            count,
        }
    }

    #[test]
    fn parses_map_lines() {
        assert_eq!(
            parse_extent("         0     100000      65536"),
            Some(ext(0, 100000, 65536))
        );
        assert_eq!(parse_extent("0 1"), None);
        assert_eq!(parse_extent("0 1 2 3"), None);
        assert_eq!(parse_extent("x 1 2"), None);
    }

    #[test]
    fn translates_ids_into_the_namespace() {
        let map = [ext(0, 100000, 1000), ext(1000, 5000, 10)];
        assert_eq!(inside_id(&map, 100000), 0);
        assert_eq!(inside_id(&map, 100999), 999);
        assert_eq!(inside_id(&map, 5003), 1003);
        assert_eq!(inside_id(&map, 0), OVERFLOW_ID);
        let maps = pb::UsernsEntry {
            uid_map: map.to_vec(),
            gid_map: vec![ext(0, 200000, 100)],
        };
        let mut c = pb::CredsEntry {
            uid: 101000 - 1000 + 7,
            euid: 100000,
            gid: 200050,
            groups: vec![200001, 7],
            ..Default::default()
        };
        creds_inside(&mut c, &maps);
        assert_eq!((c.uid, c.euid), (7, 0));
        assert_eq!(c.gid, 50);
        assert_eq!(c.groups, vec![1, OVERFLOW_ID]);
    }

    #[test]
    fn the_dumpers_own_user_namespace_is_not_the_trees() {
        let me = Pid(std::process::id() as i32);
        assert!(!tree_has_own(me).unwrap());
    }
}
