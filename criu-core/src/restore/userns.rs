//! The tree's own user namespace: loaded in stage 1, made in stage 2.
//!
//! A tree whose root lived in a user namespace of its own (`userns-ID.img`: the uid and
//! gid maps as its parent, the restorer's namespace, saw them) gets a new one, as CRIU
//! does: the root is cloned with CLONE_NEWUSER, so the pid namespace it may start in
//! the same clone, and every namespace it creates afterwards (time, UTS, IPC), are
//! owned by the new user namespace, and a restored task may do in them what its
//! namespace lets it (sethostname in its UTS namespace, ...). We write the maps from
//! outside (a write to `/proc/PID/uid_map` by a process with CAP_SETUID in the parent
//! namespace may map any ids), then the root becomes root of its namespace (uid and gid
//! 0 there), so what it creates belongs to the namespace's root. The tasks' credentials
//! are in the namespace's terms in the images (`dump/userns.rs`) and are set last, from
//! inside, like any task's (`state.rs`).
//!
//! A tree in the dumper's pid namespace can come back only when it is one task: the
//! others would be cloned with their pids from inside the new user namespace, which has
//! no privileges over the dumper's pid namespace. (With a pid namespace of its own,
//! made in the same clone, it owns that one.)
//!
//! One level only: every task of the tree in the root's user namespace, whose parent
//! was the dumper's. Existing mount and network namespaces (`join_ns`, owned by ours, as
//! a container runtime builds them) are joined before the root is made, by a "nest"
//! that clones it there (tree.rs, `clone_root_in_nest`), and its procfs is mounted from
//! outside: from inside the new user namespace it has no privileges over them. Joining
//! UTS or IPC namespaces is refused (the tree's must be owned by its user namespace),
//! and so is a network namespace of the tree's own (made anew, ours would own it).

use super::*;

/// The tree's user namespace as the images describe it.
pub(super) struct UserNs {
    pub(super) id: u32,
    pub(super) maps: pb::UsernsEntry,
}

/// Stage 1: the tree's own user namespace, or `None` when it shares the dumper's
/// (an image without the dumper's ids, an old CRIU's, has none of its own).
pub(super) fn load(
    dir: &Path,
    procs: &[Images],
    zombies: usize,
    host: Option<&pb::TaskKobjIdsEntry>,
    join_ns: &[(String, PathBuf)],
) -> Result<Option<UserNs>, RestoreError> {
    let root = &procs[0];
    let Some(host) = host else {
        return Ok(None);
    };
    let Some(id) = root
        .ids
        .user_ns_id
        .filter(|&id| Some(id) != host.user_ns_id)
    else {
        return Ok(None);
    };
    if let Some(p) = procs.iter().find(|p| p.ids.user_ns_id != Some(id)) {
        return Err(unsupported(format!(
            "process {}: a user namespace other than the root's (nested user namespaces)",
            p.pid
        )));
    }
    let tasks = procs
        .iter()
        .map(|p| p.entry.threads.len().max(1))
        .sum::<usize>()
        + zombies;
    if root.pid != Pid(1) && tasks > 1 {
        // clone3's set_tid needs privileges over the pid namespace the pid is set in,
        // which a task inside the new user namespace has only over one it owns.
        return Err(unsupported(
            "a tree of several tasks in a user namespace of its own but in the dumper's              pid namespace (its tasks cannot be created with their pids from inside the              new user namespace; a tree with a pid namespace of its own can)",
        ));
    }
    // Mount and network namespaces ours owns are entered before the root is made
    // (tree.rs, `clone_root_in_nest`); UTS and IPC ones must be owned by the tree's
    // user namespace, which the restore makes.
    if let Some((kind, _)) = join_ns.iter().find(|(k, _)| k != "mnt" && k != "net") {
        return Err(unsupported(format!(
            "joining a {kind} namespace with a tree in a user namespace of its own (only \
             mnt and net ones can be joined; it gets UTS and IPC namespaces of its own)"
        )));
    }
    let image = format!("userns-{id}.img");
    let maps: pb::UsernsEntry = read_one(dir, &image)?;
    check_extents(&image, "uid_map", &maps.uid_map)?;
    check_extents(&image, "gid_map", &maps.gid_map)?;
    Ok(Some(UserNs { id, maps }))
}

/// The kernel takes at most 340 lines per map, each non-empty and not wrapping around.
fn check_extents(image: &str, map: &str, extents: &[pb::UidGidExtent]) -> Result<(), RestoreError> {
    let bad = |what: String| RestoreError::BadImage {
        image: image.to_owned(),
        what,
    };
    if extents.is_empty() || extents.len() > 340 {
        return Err(bad(format!(
            "its {map} has {} lines (1 to 340 can be written)",
            extents.len()
        )));
    }
    for e in extents {
        let fits = |start: u32| start.checked_add(e.count).is_some();
        if e.count == 0 || !fits(e.first) || !fits(e.lower_first) {
            return Err(bad(format!(
                "its {map} line {} {} {} is not a range of ids",
                e.first, e.lower_first, e.count
            )));
        }
    }
    Ok(())
}

/// The text written to a `/proc/PID/{uid,gid}_map` (in one write, as the kernel wants).
pub(super) fn map_text(extents: &[pb::UidGidExtent]) -> String {
    extents
        .iter()
        .map(|e| format!("{} {} {}\n", e.first, e.lower_first, e.count))
        .collect()
}

/// Stage 2, in the root (our number `child`) freshly cloned into a new user namespace,
/// before anything else happens in it: the namespace's maps, then the root's ids set to
/// 0 in it (when 0 is mapped), so that it owns what it creates as the namespace's root
/// would. Its capabilities there stay full (a change to uid 0 keeps them).
pub(super) fn set_up(child: Pid, gadget: u64, user_ns: &UserNs) -> std::io::Result<()> {
    for (file, extents) in [
        ("uid_map", &user_ns.maps.uid_map),
        ("gid_map", &user_ns.maps.gid_map),
    ] {
        let path = format!("/proc/{}/{file}", child.0);
        let text = map_text(extents);
        std::fs::write(&path, &text).map_err(|e| {
            std::io::Error::new(e.kind(), format!("writing {text:?} to {path}: {e}"))
        })?;
    }
    tracing::debug!(id = user_ns.id, "new user namespace");
    let zero_mapped = |extents: &[pb::UidGidExtent]| extents.iter().any(|e| e.first == 0);
    let mut inj = Injector::new(child, gadget)?;
    if zero_mapped(&user_ns.maps.gid_map) {
        inj.syscall_ok("setresgid", libc::SYS_setresgid, [0, 0, 0, 0, 0, 0])?;
        inj.syscall_ok("setgroups", libc::SYS_setgroups, [0, 0, 0, 0, 0, 0])?;
    }
    if zero_mapped(&user_ns.maps.uid_map) {
        inj.syscall_ok("setresuid", libc::SYS_setresuid, [0, 0, 0, 0, 0, 0])?;
    }
    // A change of ids makes the task undumpable, and its /proc files root's (the host's):
    // it could no longer open its own /proc/self files the restore uses.
    inj.syscall_ok(
        "prctl(PR_SET_DUMPABLE)",
        libc::SYS_prctl,
        [libc::PR_SET_DUMPABLE as u64, 1, 0, 0, 0, 0],
    )?;
    inj.finish()
}

// Handing files to tasks inside the new user namespace.
//
// Elsewhere a task takes a duplicate of our fd with pidfd_getfd(2) through a pidfd of
// ours. That needs ptrace rights over us, which a task in a user namespace below ours
// never has, whatever its capabilities there. So for such a tree the fd every task
// inherits at that number is one end of a socket pair instead, the "courier": we send
// the fd on our end (SCM_RIGHTS) and the task receives it with an injected recvmsg(2).
// Our end lives in a thread-local for the restore's duration: every injection runs on
// the one tracer thread, and restores on other threads have their own.

thread_local! {
    static COURIER: std::cell::RefCell<Option<OwnedFd>> = const { std::cell::RefCell::new(None) };
}

/// Our end of the courier of this thread's restore; dropping it ends the courier.
pub(super) struct Courier;

impl Courier {
    /// A new courier for this thread's restore, and the tasks' end of it (to be
    /// inherited by every task at one number, as the restorer's pidfd otherwise is).
    pub(super) fn start() -> std::io::Result<(Courier, OwnedFd)> {
        let (ours, theirs) = sys::socketpair(libc::SOCK_SEQPACKET)?;
        COURIER.with(|c| *c.borrow_mut() = Some(ours));
        Ok((Courier, theirs))
    }
}

impl Drop for Courier {
    fn drop(&mut self) {
        COURIER.with(|c| c.borrow_mut().take());
    }
}

/// Gives the task behind `inj` a duplicate of our fd `ours` through the courier (whose
/// end in the task is `task_end`): `None` when this thread's restore has no courier.
/// Returns the task's new fd (close-on-exec, as pidfd_getfd's are).
pub(super) fn give_by_courier(
    inj: &mut Injector,
    task_end: u64,
    ours: i32,
) -> Option<std::io::Result<u64>> {
    let sent = COURIER.with(|c| {
        let c = c.borrow();
        Some(sys::send_fd(c.as_ref()?.as_fd(), ours))
    })?;
    Some(sent.and_then(|()| receive_in_task(inj, task_end)))
}

/// recvmsg(2) of one SCM_RIGHTS message on the task's fd `task_end`, with the message
/// header, buffer and control area at the end of the task's scratch area.
fn receive_in_task(inj: &mut Injector, task_end: u64) -> std::io::Result<u64> {
    const AREA: u64 = 128;
    let base = inj.scratch(4096)? + 4096 - AREA;
    let (iov, buf, control) = (base + 64, base + 80, base + 96);
    const CONTROL_LEN: u64 = 24; // CMSG_SPACE(sizeof(int))
    let mut area = Vec::with_capacity(AREA as usize);
    // struct msghdr: name, namelen (+pad), iov, iovlen, control, controllen, flags (+pad).
    for word in [0, 0, iov, 1, control, CONTROL_LEN, 0, 0] {
        area.extend_from_slice(&u64::to_le_bytes(word));
    }
    // struct iovec, then the byte's buffer and a cleared control area.
    for word in [buf, 1, 0, 0, 0, 0] {
        area.extend_from_slice(&u64::to_le_bytes(word));
    }
    inj.write(base, &area)?;
    inj.syscall_ok(
        "recvmsg",
        libc::SYS_recvmsg,
        [
            task_end,
            base,
            (libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) as u64,
            0,
            0,
            0,
        ],
    )?;
    let raw = inj.read(control, CONTROL_LEN as usize)?;
    let int = |at: usize| i32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    let len = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
    if len < 20 || int(8) != libc::SOL_SOCKET || int(12) != libc::SCM_RIGHTS {
        return Err(std::io::Error::other(
            "the courier's message came without its file",
        ));
    }
    Ok(int(16) as u64)
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
    fn writes_maps_as_the_kernel_reads_them() {
        let text = map_text(&[ext(0, 100000, 65536), ext(65536, 1000, 1)]);
        assert_eq!(text, "0 100000 65536\n65536 1000 1\n");
    }

    #[test]
    fn refuses_maps_that_cannot_be_written() {
        assert!(check_extents("userns-1.img", "uid_map", &[]).is_err());
        assert!(check_extents("userns-1.img", "uid_map", &[ext(0, u32::MAX, 2)]).is_err());
        assert!(check_extents("userns-1.img", "uid_map", &[ext(0, 1, 0)]).is_err());
        check_extents("userns-1.img", "uid_map", &[ext(0, 100000, 65536)]).unwrap();
    }
}
