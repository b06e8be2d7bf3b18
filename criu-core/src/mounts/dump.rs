//! Dump of a tree's own mount namespace: its mounts from the root task's mountinfo,
//! checked against the restore's plan before anything is frozen, then written to
//! `mountpoints-ID.img`, with each tmpfs's contents in `tmpfs-dev-DEV.tar.gz.img` (a
//! gzipped tar made by the `tar` tool, with CRIU's options, so CRIU can read it).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use criu_images::{pb, ImageKind, ImageWriter};

use super::{parse_mountinfo_line, plan, MountError, Planned, Source, FSTYPE_TMPFS, MS_UNBINDABLE};
use crate::sys::Pid;

#[derive(Debug, thiserror::Error)]
pub enum MountDumpError {
    #[error("process {pid}: cannot dump its mount namespace: {0}", pid = .1)]
    Refused(MountError, Pid),
    #[error("mount namespace of process {pid}: {what}: {source}")]
    Read {
        pid: Pid,
        what: String,
        source: io::Error,
    },
    #[error(transparent)]
    Image(#[from] criu_images::Error),
}

/// Whether the tree rooted at `root` has a mount namespace other than ours that the
/// dump saves (not one the caller declared external).
pub fn saves_mount_namespace(root: Pid, external_namespaces: &[String]) -> io::Result<bool> {
    if external_namespaces.iter().any(|k| k == "mnt") {
        return Ok(false);
    }
    let me = Pid(std::process::id() as i32);
    Ok(crate::dump::ids::ns_inode(root, "mnt")? != crate::dump::ids::ns_inode(me, "mnt")?)
}

/// The mounts of `root`'s mount namespace, as its root sees them, parents first, with
/// how the restore makes each; `external` pairs a mount point with its key
/// (`--external mnt[MOUNTPOINT]:KEY`). Refuses a mount the restore cannot make.
pub fn read(root: Pid, external: &[(String, String)]) -> Result<Vec<Planned>, MountDumpError> {
    let path = format!("/proc/{}/mountinfo", root.0);
    let text = std::fs::read_to_string(&path).map_err(|source| MountDumpError::Read {
        pid: root,
        what: format!("reading {path}"),
        source,
    })?;
    let mut entries: Vec<pb::MntEntry> = text.lines().filter_map(parse_mountinfo_line).collect();
    for (mountpoint, key) in external {
        let wanted = normalized(mountpoint);
        // The top one of mounts stacked at that point. As in CRIU, the pairs are a map
        // looked up by mount point: one that names no mount is not used (runc passes
        // one for every device node, which its containers have as nodes, not binds).
        match entries.iter_mut().rev().find(|m| m.mountpoint == wanted) {
            Some(m) => m.ext_key = Some(key.clone()),
            None => tracing::debug!(mountpoint, key, "external mount names no mount"),
        }
    }
    plan(&entries).map_err(|e| MountDumpError::Refused(e, root))
}

/// `/dev/` and `dev` as mountinfo spells them (`/dev`).
fn normalized(mountpoint: &str) -> String {
    let trimmed = mountpoint.trim_matches('/');
    format!("/{trimmed}")
}

/// Writes `mountpoints-ID.img` and the contents of each tmpfs, read through the
/// frozen root's view (`/proc/ROOT/root`).
pub fn write(dir: &Path, ns_id: u32, root: Pid, planned: &[Planned]) -> Result<(), MountDumpError> {
    let kind = ImageKind::by_name("MNTS").ok_or_else(|| MountDumpError::Read {
        pid: root,
        what: "the MNTS image kind".into(),
        source: io::Error::other("missing from the table"),
    })?;
    let mut w = ImageWriter::create(dir.join(kind.file_name(ns_id)), kind)?;
    for p in planned {
        // CRIU takes a file system name only with its `auto` type: the type code says.
        let entry = pb::MntEntry {
            fsname: None,
            ..p.entry.clone()
        };
        w.write_entry(&entry)?;
    }
    w.finish()?;
    let mut saved = Vec::new();
    for p in planned {
        let m = &p.entry;
        if m.fstype != FSTYPE_TMPFS
            || p.source != (Source::New { whole: true })
            || saved.contains(&m.root_dev)
        {
            continue;
        }
        saved.push(m.root_dev);
        let image = dir.join(tmpfs_image_name(m.root_dev));
        let err = |what: &str| {
            let what = format!("{what} the tmpfs at {}", m.mountpoint);
            move |source| MountDumpError::Read {
                pid: root,
                what,
                source,
            }
        };
        // A copy of the mount alone, as CRIU reads it: files under mounts stacked on
        // its directories are saved too.
        let copy = match detached_copy(root, &m.mountpoint) {
            // An unbindable mount cannot be copied: its contents are read through
            // the mount itself (files under mounts stacked on its directories hidden).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && m.flags & MS_UNBINDABLE != 0 => {
                mount_itself(root, &m.mountpoint).map_err(err("opening"))?
            }
            copy => copy.map_err(err("copying"))?,
        };
        // Our fd, which tar (our child, without it) reaches by our pid.
        let at = Path::new("/proc")
            .join(std::process::id().to_string())
            .join("fd")
            .join(copy.as_raw_fd().to_string());
        super::tmpfs::save(&at, &image).map_err(err("saving the contents of"))?;
    }
    Ok(())
}

/// A detached copy of the mount at `mountpoint` of `root`'s mount namespace (taken by
/// a helper thread that joins it).
fn detached_copy(root: Pid, mountpoint: &str) -> io::Result<OwnedFd> {
    let ns = File::open(format!("/proc/{}/ns/mnt", root.0))?;
    // Opened here: inside, /proc is the namespace's own. setns puts the thread at the
    // namespace's root, and the root task's may be another.
    let root_dir = File::open(format!("/proc/{}/root", root.0))?;
    let rest = mountpoint.trim_start_matches('/');
    let rest = Path::new(if rest.is_empty() { "." } else { rest });
    crate::sys::in_namespace_thread(ns.as_fd(), libc::CLONE_NEWNS, || {
        crate::sys::open_tree_clone(root_dir.as_fd(), rest)
    })?
}

/// The directory of the mount at `mountpoint` of `root`'s mount namespace, opened
/// through the namespace's root as we see it (`/proc/ROOT/root`, climbing out of a
/// chroot).
fn mount_itself(root: Pid, mountpoint: &str) -> io::Result<OwnedFd> {
    let mut path = PathBuf::from(crate::proc::mount_root(root)?);
    path.push(mountpoint.trim_start_matches('/'));
    Ok(File::open(path)?.into())
}

/// `/proc/PID/mountinfo` as the root of `pid`'s mount namespace sees it: every mount of
/// the namespace, also those a chrooted `pid` does not see. Read by a helper thread
/// that joins the namespace, through our own procfs (opened before: the namespace's
/// `/proc` may be of another pid namespace).
pub fn namespace_mountinfo(pid: Pid) -> io::Result<String> {
    use std::io::Read;
    let ns = File::open(format!("/proc/{}/ns/mnt", pid.0))?;
    let proc = File::open("/proc")?;
    crate::sys::in_namespace_thread(ns.as_fd(), libc::CLONE_NEWNS, || -> io::Result<String> {
        let mut text = String::new();
        crate::sys::openat_read(proc.as_fd(), c"thread-self/mountinfo")?
            .read_to_string(&mut text)?;
        Ok(text)
    })?
}

/// CRIU's name of the image holding a tmpfs's contents (by its device number).
pub fn tmpfs_image_name(dev: u32) -> String {
    format!("tmpfs-dev-{dev}.tar.gz.img")
}
