//! Namespaces of the dumped tree: which layouts the dump accepts, and the contents of
//! the UTS and IPC namespaces it saves.
//!
//! Layout: a tree either shares a namespace with the dumper (nothing to save, the
//! restored tree inherits the restorer's), or its root lives in a namespace of its own
//! that every task of the tree shares (saved, and created anew on restore). UTS, IPC,
//! mount (`crate::mounts`), network (`crate::netns`) and time namespaces can be
//! recreated, a pid namespace whose init is the root, a user namespace one level below
//! the dumper's (`userns.rs`), and a cgroup namespace with the tree's cgroups
//! (`--manage-cgroups`). (A time namespace has no contents to read here: its clocks are
//! written with the other images, `dump/mod.rs`; a network namespace's are read by
//! `netns`.)
//!
//! Contents are read from inside the namespace by a short-lived helper thread that joins
//! it with setns(2). setns changes the namespaces of the calling thread only, and they go
//! away with the thread when it ends, so the dumper's own namespaces never change.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use criu_images::{pb, ImageKind, ImageWriter};

use super::ids;
use crate::sys::{self, Pid};

/// Namespace kinds whose contents the restore cannot recreate yet: a tree must share
/// these with the dumper.
pub const MUST_SHARE: [&str; 3] = ["pid", "user", "cgroup"];

/// Namespace kinds a tree may have of its own (one per kind, entered by its root).
/// (A mount namespace is saved by `crate::mounts::dump`, a network one by
/// `crate::netns`.)
pub const SAVED: [&str; 5] = ["uts", "ipc", "time", "mnt", "net"];

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("process {pid}: cannot dump its {kind} namespace: {what}")]
    Unsupported {
        kind: &'static str,
        pid: Pid,
        what: String,
    },
    #[error("process {pid}: {kind} namespace: {what}: {source}")]
    Read {
        kind: &'static str,
        pid: Pid,
        what: String,
        source: io::Error,
    },
    #[error(transparent)]
    Image(#[from] criu_images::Error),
}

fn read_err(
    kind: &'static str,
    pid: Pid,
    what: impl Into<String>,
) -> impl FnOnce(io::Error) -> NsError {
    let what = what.into();
    move |source| NsError::Read {
        kind,
        pid,
        what,
        source,
    }
}

fn gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH))
}

/// Refuses namespace layouts the dump cannot save, before anything is frozen. `tree`
/// holds the tasks of the tree, its root first. Every task must share the dumper's pid,
/// mnt, user and cgroup namespaces, and the root's UTS, IPC, time and network namespaces
/// (which may differ from the dumper's); no task may have unshared a time namespace it
/// has not entered (`check_time_for_children`). Tasks other than the root that exit
/// meanwhile are skipped: the freeze stage looks at the tree again.
pub fn check_namespaces(tree: &[Pid]) -> Result<(), NsError> {
    check_namespaces_with(tree, &[])
}

/// Namespace kinds a caller may declare external (`DumpOptions::external_namespaces`):
/// it recreates them on restore, so their contents are not saved.
pub const EXTERNAL_OK: [&str; 2] = ["net", "mnt"];

/// A tree's own cgroup namespace is saved by the cgroup code (as a prefix of its
/// paths, `cgroups/dump.rs`), so only when the tree's cgroups are dumped: the caller
/// then lists this kind with the external ones.
pub const SAVED_WITH_CGROUPS: &str = "cgroup";

/// `check_namespaces`, where the tree may also have of its own (entered by its root and
/// shared by every task): a pid namespace whose init is the root (saved as the tree's
/// pids inside it, and created anew on restore), and the `external` kinds.
pub fn check_namespaces_with(tree: &[Pid], external: &[String]) -> Result<(), NsError> {
    let Some(&root) = tree.first() else {
        return Ok(());
    };
    let me = Pid(std::process::id() as i32);
    let mut tree_own: Vec<&'static str> = SAVED.to_vec();
    for kind in EXTERNAL_OK.into_iter().chain([SAVED_WITH_CGROUPS]) {
        if external.iter().any(|e| e == kind) && !tree_own.contains(&kind) {
            tree_own.push(kind);
        }
    }
    if root_is_pid_ns_init(root).map_err(read_err("pid", root, "reading its status"))? {
        tree_own.push("pid");
    }
    if super::userns::tree_has_own(root)? {
        tree_own.push("user");
    }
    let must_share: Vec<&'static str> = MUST_SHARE
        .iter()
        .copied()
        .filter(|k| !tree_own.contains(k))
        .collect();
    let mut own = Vec::with_capacity(must_share.len());
    for kind in &must_share {
        own.push(ns_inode(me, kind).map_err(read_err(
            kind,
            me,
            "reading the dumper's own namespace",
        ))?);
    }
    let mut root_ns = Vec::with_capacity(tree_own.len());
    for kind in &tree_own {
        root_ns.push(ns_inode(root, kind).map_err(read_err(
            kind,
            root,
            "reading the namespace link",
        ))?);
    }
    for &pid in tree {
        let checked = check_task(pid, root, (&must_share, &own), (&tree_own, &root_ns))
            .and_then(|()| check_time_for_children(pid));
        match checked {
            Err(NsError::Read { source, .. }) if pid != root && gone(&source) => {}
            other => other?,
        }
    }
    let time = tree_own.iter().position(|k| *k == "time");
    if let Some(i) = time.filter(|&i| root_ns[i].is_some()) {
        let mine =
            ns_inode(me, "time").map_err(read_err("time", me, "reading the dumper's own"))?;
        if root_ns[i] != mine {
            check_own_time_ns(me)?;
        }
    }
    Ok(())
}

/// A task that unshared a time namespace but has not entered it (its children would)
/// is refused, as CRIU refuses it: the images hold one time namespace per tree, and
/// `/proc/PID/timens_offsets` would show the other one's offsets.
fn check_time_for_children(pid: Pid) -> Result<(), NsError> {
    let own = ns_inode(pid, "time").map_err(read_err("time", pid, "reading the namespace link"))?;
    let children = ns_inode(pid, "time_for_children").map_err(read_err(
        "time",
        pid,
        "reading the time_for_children link",
    ))?;
    if own != children {
        return Err(NsError::Unsupported {
            kind: "time",
            pid,
            what: "it unshared a time namespace it has not entered (its time_for_children \
                   differs from its time namespace; nested time namespaces are not supported)"
                .into(),
        });
    }
    Ok(())
}

/// The clocks of a tree's own time namespace are computed from ours and the two
/// namespaces' offsets (a multi-threaded dumper cannot enter another time namespace),
/// and ours can be read only while our time namespace is the one our children get.
fn check_own_time_ns(me: Pid) -> Result<(), NsError> {
    match check_time_for_children(me) {
        Err(NsError::Unsupported { .. }) => Err(NsError::Unsupported {
            kind: "time",
            pid: me,
            what: "the dumper itself unshared a time namespace it has not entered, so the \
                   offsets of its own cannot be read to compute the tree's clocks"
                .into(),
        }),
        other => other,
    }
}

/// Whether `pid` is pid 1 of a pid namespace other than ours (a container's init).
pub fn root_is_pid_ns_init(pid: Pid) -> io::Result<bool> {
    let nspid = crate::proc::ProcDir::open(pid)?.status()?.ns_pid;
    Ok(nspid.len() > 1 && nspid.last() == Some(&1))
}

fn check_task(
    pid: Pid,
    root: Pid,
    (must_share, own): (&[&'static str], &[Option<u64>]),
    (tree_own, root_ns): (&[&'static str], &[Option<u64>]),
) -> Result<(), NsError> {
    for (kind, mine) in must_share.iter().zip(own) {
        let theirs =
            ns_inode(pid, kind).map_err(read_err(kind, pid, "reading the namespace link"))?;
        if theirs != *mine {
            return Err(NsError::Unsupported {
                kind,
                pid,
                what: if *kind == SAVED_WITH_CGROUPS {
                    "it differs from the dumper's (a cgroup namespace is saved with the \
                     tree's cgroups: dump with --manage-cgroups)"
                        .into()
                } else {
                    format!(
                        "it differs from the dumper's ({kind} namespaces cannot be restored yet)"
                    )
                },
            });
        }
    }
    for (kind, roots) in tree_own.iter().zip(root_ns) {
        let theirs =
            ns_inode(pid, kind).map_err(read_err(kind, pid, "reading the namespace link"))?;
        if theirs != *roots {
            return Err(NsError::Unsupported {
                kind,
                pid,
                what: format!(
                    "it differs from the {kind} namespace of the tree's root {root} \
                     (nested {kind} namespaces are not supported)"
                ),
            });
        }
    }
    Ok(())
}

/// Whether the tree has a network namespace of its own whose contents the images keep
/// (not one the caller declared external).
pub(super) fn saves_network_namespace(opts: &super::DumpOptions) -> bool {
    !opts.external_namespaces.iter().any(|k| k == "net")
        && own_network_namespace(opts.pid).unwrap_or(false)
}

/// The tree's own network namespace, with the tree frozen: locked whole (with
/// `--tcp-established`), then read, as CRIU does: the restore gets the lock back with
/// the firewall, before any connection is rebuilt, and lifts it once the tree runs.
/// `None` for a tree in ours or in one declared external.
pub(super) fn lock_and_read_network(
    opts: &super::DumpOptions,
    files: &mut crate::files::FileTable,
) -> Result<Option<crate::netns::dump::NetnsContents>, super::DumpError> {
    if !saves_network_namespace(opts) {
        return Ok(None);
    }
    if opts.tcp_established {
        files.lock_network_namespace(opts.pid)?;
    }
    Ok(Some(crate::netns::dump::read(opts.pid)?))
}

/// Whether `pid` is in another network namespace than ours.
pub fn own_network_namespace(pid: Pid) -> io::Result<bool> {
    let me = Pid(std::process::id() as i32);
    Ok(ns_inode(pid, "net")? != ns_inode(me, "net")?)
}

/// The inode of `pid`'s namespace of `kind`; `None` when the kernel lacks the kind.
fn ns_inode(pid: Pid, kind: &str) -> io::Result<Option<u64>> {
    match ids::ns_inode(pid, kind) {
        Ok(inode) => Ok(Some(inode)),
        // A kernel without this kind has the link for nobody: all tasks compare equal.
        // (A task that is gone has none either, while the dumper has it.)
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                && !Path::new(&format!("/proc/self/ns/{kind}")).exists() =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Writes the images describing the namespaces of the tree that differ from the
/// dumper's (`host`: the dumper's ids, the inventory's `root_ids`). `namespaces` lists
/// (kind, inode, id, a task living in it), as the id allocator numbered them. UTS
/// namespaces get `utsns-ID.img`; IPC namespaces `ipcns-var-ID.img` (the sysctls),
/// `ipcns-msg-ID.img` (message queues with their messages), `ipcns-sem-ID.img`
/// (semaphore sets with their values); its SysV shared memory goes to `ipcns-shm-ID.img`
/// by `sysvshm::save`, with the tree frozen. Other kinds are left to `check_namespaces`,
/// which refuses them.
pub fn write_namespace_images(
    dir: &Path,
    namespaces: &[(&'static str, u64, u32, Pid)],
    host: &pb::TaskKobjIdsEntry,
) -> Result<(), NsError> {
    for &(kind, inode, id, pid) in namespaces {
        match kind {
            "uts" if Some(id) != host.uts_ns_id => {
                let entry = in_namespace(kind, inode, pid, || read_uts(pid))??;
                write_image(dir, "UTSNS", id, &entry)?;
            }
            "ipc" if Some(id) != host.ipc_ns_id => {
                let ipc = in_namespace(kind, inode, pid, || read_ipc(pid))??;
                write_image(dir, "IPC_VAR", id, &ipc.var)?;
                write_ipc_objects(dir, id, &ipc)?;
            }
            "user" if Some(id) != host.user_ns_id => {
                super::userns::write_image(dir, id, &super::userns::read_maps(pid)?)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn kind_named(name: &str) -> &'static ImageKind {
    // The names are spelled in this file only and all are in the static table.
    ImageKind::by_name(name)
        .unwrap_or_else(|| panic!("image kind {name} is missing from the table"))
}

fn write_image<M: prost::Message>(
    dir: &Path,
    kind: &str,
    id: u32,
    entry: &M,
) -> Result<(), NsError> {
    let k = kind_named(kind);
    let mut w = ImageWriter::create(dir.join(k.file_name(id)), k)?;
    w.write_entry(entry)?;
    w.finish()?;
    Ok(())
}

/// The CLONE_NEW* flag setns(2) expects for a namespace kind.
fn nstype(kind: &str) -> libc::c_int {
    ids::clone_flag(kind) as libc::c_int
}

/// Runs `read` on a helper thread that has joined `pid`'s namespace of `kind` (which
/// must still be the one with `inode`). The thread ends right after, taking its
/// namespace membership with it: the dumper's own threads are never moved.
///
/// Joining an IPC namespace also drops the helper's reference to the process's SysV
/// semaphore undo list (the kernel's `exit_sem`); the list itself stays with the other
/// threads, and the dumper holds no semaphore adjustments anyway.
fn in_namespace<T: Send>(
    kind: &'static str,
    inode: u64,
    pid: Pid,
    read: impl FnOnce() -> T + Send,
) -> Result<T, NsError> {
    let link = format!("/proc/{}/ns/{kind}", pid.0);
    let ns = File::open(&link).map_err(read_err(kind, pid, format!("opening {link}")))?;
    let found = ns
        .metadata()
        .map_err(read_err(kind, pid, format!("looking at {link}")))?
        .ino();
    if found != inode {
        return Err(NsError::Unsupported {
            kind,
            pid,
            what: format!("it changed during the dump (inode {found}, expected {inode})"),
        });
    }
    sys::in_namespace_thread(ns.as_fd(), nstype(kind), read).map_err(read_err(
        kind,
        pid,
        "entering the namespace from a helper thread",
    ))
}

/// Host and domain name of the calling thread's UTS namespace.
fn read_uts(pid: Pid) -> Result<pb::UtsnsEntry, NsError> {
    let names = sys::uname().map_err(read_err("uts", pid, "uname"))?;
    let text = |bytes: Vec<u8>, what: &str| {
        String::from_utf8(bytes).map_err(|_| NsError::Unsupported {
            kind: "uts",
            pid,
            what: format!("its {what} is not UTF-8"),
        })
    };
    Ok(pb::UtsnsEntry {
        nodename: text(names.nodename, "host name")?,
        domainname: text(names.domainname, "domain name")?,
    })
}

/// A SysV message queue and the messages it holds.
struct MsgQueue {
    entry: pb::IpcMsgEntry,
    /// (type, text), oldest first.
    messages: Vec<(i64, Vec<u8>)>,
}

/// A SysV semaphore set and its values.
struct SemSet {
    entry: pb::IpcSemEntry,
    values: Vec<u16>,
}

/// What an IPC namespace holds.
struct IpcContents {
    var: pb::IpcVarEntry,
    queues: Vec<MsgQueue>,
    sems: Vec<SemSet>,
}

fn ipc_desc(id: i32, perm: &libc::ipc_perm) -> pb::IpcDescEntry {
    pb::IpcDescEntry {
        key: perm.__key as u32,
        uid: perm.uid,
        gid: perm.gid,
        cuid: perm.cuid,
        cgid: perm.cgid,
        mode: u32::from(perm.mode),
        id: id as u32,
    }
}

/// Everything the calling thread's IPC namespace holds: its sysctls, message queues and
/// semaphore sets (read without changing them).
fn read_ipc(pid: Pid) -> Result<IpcContents, NsError> {
    let read = |path: &str| -> Result<String, NsError> {
        let text = if path.starts_with("/proc/sys/") {
            crate::proc::read_sysctl(path)
        } else {
            std::fs::read_to_string(path)
        };
        text.map_err(read_err("ipc", pid, format!("reading {path}")))
    };
    let var = read_ipc_var(pid, read)?;
    let ids = |file: &str| -> Result<Vec<i32>, NsError> {
        Ok(sysvipc_ids(&read(&format!("/proc/sysvipc/{file}"))?))
    };

    let mut queues = Vec::new();
    for id in ids("msg")? {
        let err = |what: String| read_err("ipc", pid, what);
        let ds = sys::msgctl_stat(id).map_err(err(format!("reading message queue {id}")))?;
        // No message is longer than all the queue's bytes together.
        let max_len = ds.__msg_cbytes as usize;
        let mut messages = Vec::with_capacity(ds.msg_qnum as usize);
        for index in 0..ds.msg_qnum as usize {
            let copy = sys::msgrcv_copy(id, index, max_len)
                .map_err(err(format!("copying message {index} of queue {id}")))?;
            messages.push(copy);
        }
        queues.push(MsgQueue {
            entry: pb::IpcMsgEntry {
                desc: ipc_desc(id, &ds.msg_perm),
                qbytes: ds.msg_qbytes as u32,
                qnum: messages.len() as u32,
            },
            messages,
        });
    }

    let mut sems = Vec::new();
    for id in ids("sem")? {
        let err = |what: String| read_err("ipc", pid, what);
        let ds = sys::semctl_stat(id).map_err(err(format!("reading semaphore set {id}")))?;
        let values = (0..ds.sem_nsems as usize)
            .map(|n| sys::semctl_getval(id, n))
            .collect::<io::Result<Vec<u16>>>()
            .map_err(err(format!("reading the values of semaphore set {id}")))?;
        sems.push(SemSet {
            entry: pb::IpcSemEntry {
                desc: ipc_desc(id, &ds.sem_perm),
                nsems: values.len() as u32,
            },
            values,
        });
    }

    Ok(IpcContents { var, queues, sems })
}

/// The IPC sysctls of the calling thread's IPC namespace.
fn read_ipc_var(
    pid: Pid,
    read: impl Fn(&str) -> Result<String, NsError>,
) -> Result<pb::IpcVarEntry, NsError> {
    let parse = |path: &str| -> Result<Vec<i128>, NsError> {
        let text = read(path)?;
        text.split_whitespace()
            .map(|v| v.parse::<i128>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| NsError::Read {
                kind: "ipc",
                pid,
                what: format!("parsing {path}"),
                source: io::Error::new(io::ErrorKind::InvalidData, format!("odd value {text:?}")),
            })
    };
    let one = |path: &str| -> Result<i128, NsError> {
        let values = parse(path)?;
        match values.as_slice() {
            [v] => Ok(*v),
            _ => Err(NsError::Read {
                kind: "ipc",
                pid,
                what: format!("parsing {path}"),
                source: io::Error::new(io::ErrorKind::InvalidData, "expected one number"),
            }),
        }
    };
    let u32_of = |path: &str| one(path).map(|v| v as u32);
    let u64_of = |path: &str| one(path).map(|v| v as u64);
    // The *_next_id sysctls read -1 until set, and -1 cannot be written back: leave unset.
    let next_id = |path: &str| one(path).map(|v| (v >= 0).then_some(v as u32));
    let sem_ctls: Vec<u32> = parse("/proc/sys/kernel/sem")?
        .into_iter()
        .map(|v| v as u32)
        .collect();
    if sem_ctls.len() != 4 {
        return Err(NsError::Read {
            kind: "ipc",
            pid,
            what: "parsing /proc/sys/kernel/sem".into(),
            source: io::Error::new(io::ErrorKind::InvalidData, "expected four numbers"),
        });
    }
    Ok(pb::IpcVarEntry {
        sem_ctls,
        msg_ctlmax: u32_of("/proc/sys/kernel/msgmax")?,
        msg_ctlmnb: u32_of("/proc/sys/kernel/msgmnb")?,
        msg_ctlmni: u32_of("/proc/sys/kernel/msgmni")?,
        auto_msgmni: u32_of("/proc/sys/kernel/auto_msgmni")?,
        shm_ctlmax: u64_of("/proc/sys/kernel/shmmax")?,
        shm_ctlall: u64_of("/proc/sys/kernel/shmall")?,
        shm_ctlmni: u32_of("/proc/sys/kernel/shmmni")?,
        shm_rmid_forced: u32_of("/proc/sys/kernel/shm_rmid_forced")?,
        mq_queues_max: u32_of("/proc/sys/fs/mqueue/queues_max")?,
        mq_msg_max: u32_of("/proc/sys/fs/mqueue/msg_max")?,
        mq_msgsize_max: u32_of("/proc/sys/fs/mqueue/msgsize_max")?,
        mq_msg_default: Some(u32_of("/proc/sys/fs/mqueue/msg_default")?),
        mq_msgsize_default: Some(u32_of("/proc/sys/fs/mqueue/msgsize_default")?),
        msg_next_id: next_id("/proc/sys/kernel/msg_next_id")?,
        sem_next_id: next_id("/proc/sys/kernel/sem_next_id")?,
        shm_next_id: next_id("/proc/sys/kernel/shm_next_id")?,
    })
}

/// Writes `ipcns-msg-ID.img` and `ipcns-sem-ID.img`. As in
/// CRIU, each queue's entry is followed by its messages (an `ipc_msg` entry, then the text
/// padded to 8 bytes), and each semaphore set's entry by its values (u16 each, padded to
/// 8 bytes).
fn write_ipc_objects(dir: &Path, id: u32, ipc: &IpcContents) -> Result<(), NsError> {
    let k = kind_named("IPCNS_MSG");
    let mut w = ImageWriter::create(dir.join(k.file_name(id)), k)?;
    for q in &ipc.queues {
        w.write_entry(&q.entry)?;
        for (mtype, text) in &q.messages {
            w.write_entry(&pb::IpcMsg {
                mtype: *mtype as u64,
                msize: text.len() as u32,
            })?;
            w.write_raw(&padded(text.clone(), 8))?;
        }
    }
    w.finish()?;

    let k = kind_named("IPCNS_SEM");
    let mut w = ImageWriter::create(dir.join(k.file_name(id)), k)?;
    for set in &ipc.sems {
        w.write_entry(&set.entry)?;
        let bytes = set.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_raw(&padded(bytes, 8))?;
    }
    w.finish()?;
    Ok(())
}

/// `data` with zeros added up to a multiple of `align`.
fn padded(mut data: Vec<u8>, align: usize) -> Vec<u8> {
    data.resize(data.len().next_multiple_of(align), 0);
    data
}

/// The ids of the objects listed in a `/proc/sysvipc/*` table (a header line, then one
/// line per object: key, id, ...).
pub(super) fn sysvipc_ids(table: &str) -> Vec<i32> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_sysvipc_objects() {
        let shm = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n\
                   1234      5 666 4096 10 0 0 0 0 0 0 0 0 0 0 0\n\
                   -1  32769 600 4096 10 0 0 0 0 0 0 0 0 0 0 0\n";
        assert_eq!(sysvipc_ids(shm), vec![5, 32769]);
        let empty = "       key      msqid perms      cbytes       qnum lspid lrpid   uid   gid  cuid  cgid      stime      rtime      ctime\n";
        assert!(sysvipc_ids(empty).is_empty());
    }

    #[test]
    fn pads_payloads() {
        assert_eq!(padded(vec![1, 2, 3], 8), vec![1, 2, 3, 0, 0, 0, 0, 0]);
        assert_eq!(padded(vec![1; 8], 8), vec![1; 8]);
        assert!(padded(vec![], 8).is_empty());
    }

    #[test]
    fn the_dumpers_own_namespaces_pass() {
        let me = Pid(std::process::id() as i32);
        check_namespaces(&[me]).unwrap();
    }

    #[test]
    fn reads_the_dumpers_own_uts_and_ipc() {
        let me = Pid(std::process::id() as i32);
        let inode = ids::ns_inode(me, "uts").unwrap();
        let uts = in_namespace("uts", inode, me, || read_uts(me))
            .unwrap()
            .unwrap();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(uts.nodename, host.trim_end_matches('\n'));
        let inode = ids::ns_inode(me, "ipc").unwrap();
        let var = in_namespace("ipc", inode, me, || read_ipc(me))
            .unwrap()
            .unwrap()
            .var;
        let msgmax = std::fs::read_to_string("/proc/sys/kernel/msgmax").unwrap();
        assert_eq!(var.msg_ctlmax.to_string(), msgmax.trim());
        assert_eq!(var.sem_ctls.len(), 4);
    }

    #[test]
    fn refuses_a_namespace_that_changed() {
        let me = Pid(std::process::id() as i32);
        let err = in_namespace("uts", 1, me, || ()).unwrap_err();
        assert!(
            matches!(err, NsError::Unsupported { kind: "uts", .. }),
            "{err}"
        );
    }
}
