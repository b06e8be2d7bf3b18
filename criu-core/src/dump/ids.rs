//! Ids of the kernel objects tasks may share (address space, fd table, fs info, signal
//! handlers) and of the namespaces they live in. Two tasks get the same id exactly when
//! they share the object; the dumper itself is numbered first, so the inventory's
//! `root_ids` describe it and a task in the dumper's namespaces gets the same ids.

use std::collections::HashMap;
use std::io;

use criu_images::pb;

use crate::sys::{self, KcmpType, Pid};

/// Namespace kinds in the order their ids are handed out.
pub const NAMESPACES: [&str; 8] = ["pid", "net", "ipc", "uts", "time", "mnt", "user", "cgroup"];

#[derive(Default)]
pub struct IdAllocator {
    /// Per shared-object kind: (representative task, id).
    objects: HashMap<u8, Vec<(Pid, u32)>>,
    /// (namespace kind, inode) -> id; one counter for all namespaces.
    namespaces: HashMap<(&'static str, u64), u32>,
    /// Namespace inodes per id, for images that describe a namespace.
    pub ns_inodes: Vec<(&'static str, u64, u32)>,
}

/// The inode of a task's namespace of `kind` (`net:[4026531840]`).
pub fn ns_inode(pid: Pid, kind: &str) -> io::Result<u64> {
    let link = std::fs::read_link(format!("/proc/{}/ns/{kind}", pid.0))?;
    let text = link.to_string_lossy();
    text.rsplit_once('[')
        .and_then(|(_, rest)| rest.trim_end_matches(']').parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("odd namespace link {text}"),
            )
        })
}

impl IdAllocator {
    fn object_id(&mut self, pid: Pid, kind: KcmpType) -> io::Result<u32> {
        let known = self.objects.entry(kind as u8).or_default();
        for (other, id) in known.iter() {
            if *other == pid || sys::kcmp_same(pid, *other, kind)? {
                return Ok(*id);
            }
        }
        let id = known.len() as u32 + 1;
        known.push((pid, id));
        Ok(id)
    }

    fn ns_id(&mut self, pid: Pid, kind: &'static str) -> io::Result<Option<u32>> {
        let inode = match ns_inode(pid, kind) {
            Ok(i) => i,
            // A kernel without this namespace kind.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let next = self.namespaces.len() as u32 + 1;
        let id = *self.namespaces.entry((kind, inode)).or_insert(next);
        if id == next {
            self.ns_inodes.push((kind, inode, id));
        }
        Ok(Some(id))
    }

    /// The ids of `pid`'s objects and namespaces.
    pub fn ids(&mut self, pid: Pid) -> io::Result<pb::TaskKobjIdsEntry> {
        let mut ns = [None; 8];
        for (i, kind) in NAMESPACES.iter().enumerate() {
            ns[i] = self.ns_id(pid, kind)?;
        }
        Ok(pb::TaskKobjIdsEntry {
            vm_id: self.object_id(pid, KcmpType::Vm)?,
            files_id: self.object_id(pid, KcmpType::Files)?,
            fs_id: self.object_id(pid, KcmpType::Fs)?,
            sighand_id: self.object_id(pid, KcmpType::Sighand)?,
            pid_ns_id: ns[0],
            net_ns_id: ns[1],
            ipc_ns_id: ns[2],
            uts_ns_id: ns[3],
            time_ns_id: ns[4],
            mnt_ns_id: ns[5],
            user_ns_id: ns[6],
            cgroup_ns_id: ns[7],
        })
    }
}

/// Namespace kinds (as /proc/PID/ns names them) with their CLONE_NEW* bits (the image
/// format's, in criu-images).
pub use criu_images::flags::NS_KINDS;

/// The CLONE_NEW* flag of a namespace kind (0 for an unknown kind).
pub fn clone_flag(kind: &str) -> u32 {
    NS_KINDS
        .iter()
        .find(|(n, _)| *n == kind)
        .map_or(0, |(_, f)| *f)
}

#[cfg(test)]
mod tests {
    #[test]
    fn namespace_kinds_carry_the_kernels_clone_bits() {
        let libc_bits = [
            ("cgroup", libc::CLONE_NEWCGROUP),
            ("ipc", libc::CLONE_NEWIPC),
            ("mnt", libc::CLONE_NEWNS),
            ("net", libc::CLONE_NEWNET),
            ("pid", libc::CLONE_NEWPID),
            ("time", libc::CLONE_NEWTIME),
            ("user", libc::CLONE_NEWUSER),
            ("uts", libc::CLONE_NEWUTS),
        ];
        for (name, bit) in libc_bits {
            assert_eq!(super::clone_flag(name), bit as u32, "{name}");
        }
    }
}
