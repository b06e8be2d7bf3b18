//! Open namespace files (`/proc/PID/ns/*`). Files of the dumper's own namespaces are
//! reopened from the restorer's `/proc/self/ns`; files of a namespace the holder is in
//! (which the restore makes again) from the `/proc/PID/ns` of a restored task in it, as
//! CRIU does. A file of any other namespace is refused by both sides.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;

use criu_images::flags::NS_KINDS;
use criu_images::pb;

use super::dump::{FileError, OpenFd};
use super::kinds::Kind;
use super::restore::{open_flags, FileOpener, FileRef, Result};
use crate::dump::ids::ns_inode;
use crate::sys::{self, Pid};

// --- dump ------------------------------------------------------------------------

/// Parses `kind:[inode]` as shown for namespace files.
pub(super) fn parse_link(link: &str) -> Option<(u32, u64)> {
    let (name, rest) = link.split_once(":[")?;
    let kid = rest.strip_suffix(']')?.parse().ok()?;
    let cflag = NS_KINDS.iter().find(|(n, _)| *n == name)?.1;
    Some((cflag, kid))
}

/// The row of the kind table of a file of namespace `kid` (a `CLONE_NEW*` `cflag`)
/// held by task `holder`.
pub(super) fn kind(holder: Pid, cflag: u32, kid: u64) -> Kind {
    let Some(name) = NS_KINDS
        .iter()
        .find(|(_, flag)| *flag == cflag)
        .map(|(name, _)| *name)
    else {
        return Kind::NsFileForeign;
    };
    // The restore reopens its own namespaces (the dumper's), and those the tree has and
    // the restore makes again: the holder's own are among them.
    let is = |pid: Pid| ns_inode(pid, name).ok() == Some(kid);
    if is(Pid(std::process::id() as i32)) || is(holder) {
        Kind::NsFile
    } else {
        Kind::NsFileForeign
    }
}

/// The entry of a namespace file as file `id`; `ns_ids` holds CRIU's ids of the dump's
/// namespaces (by `CLONE_NEW*` flag and inode).
pub(super) fn dump(
    fd: &OpenFd<'_>,
    id: u32,
    cflag: u32,
    kid: u64,
    ns_ids: &HashMap<(u32, u64), u32>,
) -> Result<pb::NsFileEntry, FileError> {
    let ns_id = *ns_ids.get(&(cflag, kid)).ok_or_else(|| {
        fd.unsupported(format!(
            "namespace file {} of a namespace outside the dump",
            fd.link_str()
        ))
    })?;
    Ok(pb::NsFileEntry {
        id,
        ns_id,
        ns_cflag: cflag,
        flags: fd.common.flags,
    })
}

// --- restore ---------------------------------------------------------------------

impl FileOpener {
    /// Where a namespace file is reopened: `/proc/self/ns/KIND` for one of the
    /// restorer's own namespaces, `/proc/PID/ns/KIND` of a restored task for one the
    /// tree has (PID as we see it: known once the tree exists); `Err` says why not.
    fn ns_path(&self, nsf: &pb::NsFileEntry) -> std::result::Result<String, String> {
        let kind = NS_KINDS
            .iter()
            .find(|(_, flag)| *flag == nsf.ns_cflag)
            .map(|(k, _)| *k)
            .ok_or_else(|| format!("a namespace file of unknown kind {:#x}", nsf.ns_cflag))?;
        let ours = self.root_ids.as_ref().and_then(|r| match kind {
            "cgroup" => r.cgroup_ns_id,
            "ipc" => r.ipc_ns_id,
            "mnt" => r.mnt_ns_id,
            "net" => r.net_ns_id,
            "pid" => r.pid_ns_id,
            "time" => r.time_ns_id,
            "user" => r.user_ns_id,
            _ => r.uts_ns_id,
        });
        if ours == Some(nsf.ns_id) {
            return Ok(format!("/proc/self/ns/{kind}"));
        }
        match self.tree_ns.get(&(nsf.ns_cflag, nsf.ns_id)) {
            Some(pid) => {
                let host = self.reg.tree_pids.get(pid).copied().unwrap_or(*pid);
                Ok(format!("/proc/{host}/ns/{kind}"))
            }
            None => Err(format!(
                "a file of {kind} namespace {}, neither the restorer's nor one the tree has",
                nsf.ns_id
            )),
        }
    }

    /// The row of the kind table of a namespace file in the images, and what to call it.
    pub(super) fn ns_kind(&self, nsf: &pb::NsFileEntry) -> (Kind, String) {
        match self.ns_path(nsf) {
            Ok(path) => (Kind::NsFile, path),
            Err(what) => (Kind::NsFileForeign, what),
        }
    }

    pub(super) fn check_ns(&self, pid: Pid, at: &FileRef, nsf: &pb::NsFileEntry) -> Result<()> {
        self.ns_path(nsf)
            .map(drop)
            .map_err(|what| at.unsupported(pid, what))
    }

    pub(super) fn open_ns(&self, at: &FileRef, nsf: &pb::NsFileEntry) -> Result<OwnedFd> {
        let path = self.ns_path(nsf).map_err(|what| at.refused(what))?;
        sys::open_path(Path::new(&path), open_flags(nsf.flags), 0)
            .map_err(at.io(format!("open {path}")))
    }
}
