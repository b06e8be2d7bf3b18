//! Stage 2's namespaces: the tree's own UTS and IPC namespaces made anew (with their SysV message queues and semaphore sets) or existing ones joined.

use super::*;

/// A queued SysV message: its type and text.
type QueuedMessage = (u64, Vec<u8>);

/// The tree's own UTS and IPC namespaces (different from the dumper's, and not
/// joined): what the images say they held.
#[derive(Default)]
pub(super) struct OwnNamespaces {
    pub(super) uts: Option<pb::UtsnsEntry>,
    pub(super) ipc: Option<pb::IpcVarEntry>,
    /// The SysV objects of the tree's IPC namespace (own or joined), to create again.
    pub(super) sysv: Option<SysvObjects>,
    /// The tree's own mount namespace, to build (`mounts.rs`).
    pub(super) mounts: Option<super::mounts::MountNamespace>,
}

/// Message queues (with their messages) and semaphore sets (with their values) of an
/// IPC namespace, and its limits and next ids, as the images hold them.
pub(super) struct SysvObjects {
    pub(super) var: pb::IpcVarEntry,
    pub(super) queues: Vec<(pb::IpcMsgEntry, Vec<QueuedMessage>)>,
    pub(super) sems: Vec<(pb::IpcSemEntry, Vec<u16>)>,
}

impl SysvObjects {
    fn load(dir: &Path, id: u32, var: pb::IpcVarEntry) -> Result<SysvObjects, RestoreError> {
        let padded = |n: u64| n.div_ceil(8) * 8;
        let mut queues = Vec::new();
        let path = dir.join(format!("ipcns-msg-{id}.img"));
        if path.exists() {
            let mut r = ImageReader::open(&path)?;
            while let Some(q) = r.next_entry::<pb::IpcMsgEntry>()? {
                let mut messages = Vec::new();
                for _ in 0..q.qnum {
                    let m: pb::IpcMsg = r.next_entry()?.ok_or_else(|| RestoreError::BadImage {
                        image: format!("ipcns-msg-{id}.img"),
                        what: format!("queue {} ends before its {} messages", q.desc.id, q.qnum),
                    })?;
                    let mut text = r.read_extra(padded(u64::from(m.msize)), "message text")?;
                    text.truncate(m.msize as usize);
                    messages.push((m.mtype, text));
                }
                queues.push((q, messages));
            }
        }
        let mut sems = Vec::new();
        let path = dir.join(format!("ipcns-sem-{id}.img"));
        if path.exists() {
            let mut r = ImageReader::open(&path)?;
            while let Some(set) = r.next_entry::<pb::IpcSemEntry>()? {
                let raw = r.read_extra(padded(u64::from(set.nsems) * 2), "semaphore values")?;
                let values = raw
                    .chunks_exact(2)
                    .take(set.nsems as usize)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect();
                sems.push((set, values));
            }
        }
        Ok(SysvObjects { var, queues, sems })
    }

    fn is_empty(&self) -> bool {
        self.queues.is_empty() && self.sems.is_empty()
    }
}

/// Stage 1 for namespaces: reads the tree's own UTS and IPC namespaces. An IPC
/// namespace that held message queues or semaphores is refused: they are saved but not
/// brought back yet.
pub(super) fn load_own_namespaces(
    dir: &Path,
    root: &Images,
    host: Option<&pb::TaskKobjIdsEntry>,
    join_ns: &[(String, PathBuf)],
) -> Result<OwnNamespaces, RestoreError> {
    let mut out = OwnNamespaces::default();
    let Some(host) = host else {
        return Ok(out);
    };
    let joined = |kind: &str| join_ns.iter().any(|(k, _)| k == kind);
    if let Some(id) = root.ids.uts_ns_id.filter(|&id| Some(id) != host.uts_ns_id) {
        if !joined("uts") {
            out.uts = Some(read_one(dir, &format!("utsns-{id}.img"))?);
        }
    }
    if let Some(id) = root.ids.ipc_ns_id.filter(|&id| Some(id) != host.ipc_ns_id) {
        let var: pb::IpcVarEntry = read_one(dir, &format!("ipcns-var-{id}.img"))?;
        if !joined("ipc") {
            out.ipc = Some(var.clone());
        }
        let objects = SysvObjects::load(dir, id, var)?;
        if !objects.is_empty() {
            out.sysv = Some(objects);
        }
    }
    Ok(out)
}

/// Creates the SysV objects again in the IPC namespace of task `pid` (our number), from
/// a helper thread that enters it: each with its old id (the namespace's next id is set
/// to it first), key, owner, mode and contents; then the namespace's next ids as saved.
pub(super) fn recreate_sysv(pid: Pid, objects: &SysvObjects) -> std::io::Result<()> {
    let ns = File::open(format!("/proc/{}/ns/ipc", pid.0))?;
    let write = |name: &str, value: String| {
        std::fs::write(format!("/proc/sys/kernel/{name}"), value)
            .map_err(|e| std::io::Error::new(e.kind(), format!("kernel.{name}: {e}")))
    };
    let owner = |d: &pb::IpcDescEntry| sys::IpcOwner {
        uid: d.uid,
        gid: d.gid,
        mode: d.mode as u16,
    };
    let same_id = |what: &str, want: u32, got: i32| {
        if got as u32 == want {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "{what} {want} came back as {got}"
            )))
        }
    };
    sys::in_namespace_thread(ns.as_fd(), libc::CLONE_NEWIPC, || -> std::io::Result<()> {
        for (q, messages) in &objects.queues {
            write("msg_next_id", q.desc.id.to_string())?;
            let id = sys::msgget_new(q.desc.key as i32, q.desc.mode as u16)?;
            same_id("message queue", q.desc.id, id)?;
            // The byte limit first: the messages may need more than the default.
            sys::msgctl_set(id, owner(&q.desc), u64::from(q.qbytes))?;
            for (mtype, text) in messages {
                sys::msgsnd_nowait(id, *mtype as i64, text)?;
            }
        }
        for (set, values) in &objects.sems {
            write("sem_next_id", set.desc.id.to_string())?;
            let id = sys::semget_new(set.desc.key as i32, values.len(), set.desc.mode as u16)?;
            same_id("semaphore set", set.desc.id, id)?;
            sys::semctl_restore(id, values, owner(&set.desc))?;
        }
        let v = &objects.var;
        for (name, next) in [
            ("msg_next_id", v.msg_next_id),
            ("sem_next_id", v.sem_next_id),
            ("shm_next_id", v.shm_next_id),
        ] {
            if let Some(n) = next {
                write(name, (n as i32).to_string())?;
            }
        }
        Ok(())
    })?
}

/// In the freshly cloned root, before it clones the others: new UTS and IPC namespaces
/// with the saved host and domain names and IPC limits.
pub(super) fn recreate_namespaces(inj: &mut Injector, own: &OwnNamespaces) -> std::io::Result<()> {
    let scratch = inj.scratch(4096)?;
    let mut flags = 0;
    if own.uts.is_some() {
        flags |= libc::CLONE_NEWUTS;
    }
    if own.ipc.is_some() {
        flags |= libc::CLONE_NEWIPC;
    }
    inj.syscall_ok("unshare", libc::SYS_unshare, [flags as u64, 0, 0, 0, 0, 0])?;
    if let Some(uts) = &own.uts {
        for (call, nr, name) in [
            ("sethostname", libc::SYS_sethostname, &uts.nodename),
            ("setdomainname", libc::SYS_setdomainname, &uts.domainname),
        ] {
            inj.write(scratch, name.as_bytes())?;
            inj.syscall_ok(call, nr, [scratch, name.len() as u64, 0, 0, 0, 0])?;
        }
    }
    if let Some(v) = &own.ipc {
        let sem = v
            .sem_ctls
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let mut settings = vec![
            ("/proc/sys/kernel/sem", sem),
            ("/proc/sys/kernel/msgmax", v.msg_ctlmax.to_string()),
            ("/proc/sys/kernel/msgmnb", v.msg_ctlmnb.to_string()),
            ("/proc/sys/kernel/msgmni", v.msg_ctlmni.to_string()),
            ("/proc/sys/kernel/shmmax", v.shm_ctlmax.to_string()),
            ("/proc/sys/kernel/shmall", v.shm_ctlall.to_string()),
            ("/proc/sys/kernel/shmmni", v.shm_ctlmni.to_string()),
            (
                "/proc/sys/kernel/shm_rmid_forced",
                v.shm_rmid_forced.to_string(),
            ),
            (
                "/proc/sys/fs/mqueue/queues_max",
                v.mq_queues_max.to_string(),
            ),
            ("/proc/sys/fs/mqueue/msg_max", v.mq_msg_max.to_string()),
            (
                "/proc/sys/fs/mqueue/msgsize_max",
                v.mq_msgsize_max.to_string(),
            ),
        ];
        let optional = [
            ("/proc/sys/fs/mqueue/msg_default", v.mq_msg_default),
            ("/proc/sys/fs/mqueue/msgsize_default", v.mq_msgsize_default),
            ("/proc/sys/kernel/msg_next_id", v.msg_next_id),
            ("/proc/sys/kernel/sem_next_id", v.sem_next_id),
            ("/proc/sys/kernel/shm_next_id", v.shm_next_id),
        ];
        settings.extend(optional.iter().filter_map(|(p, v)| {
            // Next ids are ints, -1 (none set) saved as u32.
            let v = (*v)?;
            let text = if p.ends_with("_next_id") {
                (v as i32).to_string()
            } else {
                v.to_string()
            };
            Some((*p, text))
        }));
        for (path, value) in settings {
            if value.is_empty() {
                continue;
            }
            // The task writes them: these files are those of the writer's IPC namespace.
            let fd = open_in_task(inj, scratch, Path::new(path), libc::O_WRONLY)?;
            inj.write(scratch + 2048, value.as_bytes())?;
            let wrote = inj.syscall_ok(
                "write",
                libc::SYS_write,
                [fd, scratch + 2048, value.len() as u64, 0, 0, 0],
            );
            inj.syscall_ok("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
            wrote.map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
        }
    }
    Ok(())
}

/// The setns(2) type of a namespace kind `--join-ns` may name (the pid namespace is
/// always a new one, so is the time namespace; user and cgroup ones are not restored).
pub(super) fn ns_type(kind: &str) -> Option<libc::c_int> {
    matches!(kind, "net" | "mnt" | "uts" | "ipc")
        .then(|| crate::dump::ids::clone_flag(kind) as libc::c_int)
}

/// Makes the freshly cloned root enter the namespaces `join` (fds it inherited from us
/// at the same numbers; the mount namespace last, since entering it also moves its root
/// and cwd there), then mounts the procfs of its new pid namespace at `proc_mount`.
/// Its children, cloned from it next, inherit all of it.
pub(super) fn enter_namespaces(
    root: Pid,
    gadget: u64,
    join: &[(libc::c_int, File)],
    proc_mount: Option<&Path>,
) -> std::io::Result<()> {
    let mut inj = Injector::new(root, gadget)?;
    let mut ordered: Vec<&(libc::c_int, File)> = join.iter().collect();
    ordered.sort_by_key(|(t, _)| *t == libc::CLONE_NEWNS);
    for (nstype, fd) in ordered {
        let fd = fd.as_raw_fd() as u64;
        inj.syscall_ok("setns", libc::SYS_setns, [fd, *nstype as u64, 0, 0, 0, 0])?;
    }
    if let Some(target) = proc_mount {
        use std::os::unix::ffi::OsStrExt;
        let scratch = inj.scratch(4096)?;
        let mut strings = b"proc\0".to_vec();
        strings.extend_from_slice(target.as_os_str().as_bytes());
        strings.push(0);
        inj.write(scratch, &strings)?;
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        // source and type are both "proc".
        inj.syscall_ok(
            "mount(proc)",
            libc::SYS_mount,
            [scratch, scratch + 5, scratch, flags, 0, 0],
        )?;
    }
    inj.finish()
}

/// Mounts the procfs of the pid namespace of task `pid` (our number) at `target` in
/// the task's mount namespace, from a thread of ours that enters that mount namespace:
/// for a task in a user namespace of its own, which has no privileges over a mount
/// namespace ours owns (`sys::mount_proc` needs no process in the pid namespace).
pub(super) fn mount_proc_of(pid: Pid, target: &Path) -> std::io::Result<()> {
    let pidns = File::open(format!("/proc/{}/ns/pid", pid.0))?;
    let mntns = File::open(format!("/proc/{}/ns/mnt", pid.0))?;
    sys::in_namespace_thread(mntns.as_fd(), libc::CLONE_NEWNS, || {
        sys::mount_proc(pidns.as_fd(), target)
    })?
}
