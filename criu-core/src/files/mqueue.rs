//! POSIX message queues (`mq_open`): the queue (name, size, mode, owner), its messages
//! with their priorities, and each open file description of it. CRIU 4.2 has no image
//! for them; `proto/mqueue.proto` says what we add, why CRIU cannot misread it and why
//! Debian's crit decodes it: one `criu-rs-mqueue-ID.img` per queue in the layout of a
//! SysV message queue image, and each description an EXT entry of `files.img`.
//!
//! Dump: a queue is judged before the freeze. It must be one of the tree's IPC namespace
//! (its inode on that namespace's mqueue superblock) and have no notification
//! registered (`mq_notify`: the `NOTIFY_PID` of its status text), which the images
//! cannot carry: the registration names a process and a signal or thread of it, and
//! the kernel lets nobody else set it up again. Its messages can only be read by
//! receiving them, so each queue is emptied into memory and at once filled again in the
//! same order (highest priority first, oldest first within one), which leaves it as it
//! was; a guard puts back what was taken if anything fails in between. Queues are read
//! through descriptors of our own (`/proc/self/fd` of the task's, reopened), never
//! through the task's open file descriptions, whose flags and position stay untouched.
//! In a tree with its own IPC namespace, the queues no descriptor holds are saved too
//! (listed on a mount of that namespace's mqueue filesystem attached nowhere), since
//! the namespace goes with the tree.
//!
//! Restore, in the IPC namespace the tree's root is in by then (stage 6, before any
//! file is opened): a named queue that exists there is reopened as it is (a queue of a
//! shared namespace lives on after the dump, and its messages are whatever its other
//! users left); one that does not is created with its size, mode, owner and messages.
//! A queue that had been unlinked is created under a name of ours, filled, and unlinked
//! at once, so the tree holds a nameless queue again. Each open file description is a
//! new open of the queue with its access mode, `O_NONBLOCK`, position and signal owner.
//! Queues this restore created by name are removed again if it fails.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use criu_images::{pb, ImageKind, ImageReader};

use super::dump::{file_entry, self_fd_path, writer, FileError, OpenFd};
use super::kinds::Kind;
use super::restore::{bad, finish, FileOpener, FileRef, Result};
use crate::sys::{self, Pid};

/// What the kernel appends to the link of an unlinked queue.
const DELETED: &[u8] = b" (deleted)";

/// A queued message: priority and text.
type Message = (u32, Vec<u8>);

/// The queue's name (without '/') from its link: the mqueue filesystem is flat, so it is
/// the last component (`/NAME` for `mq_open`, `/dev/mqueue/NAME` for a plain open of a
/// mounted one), without the " (deleted)" of an unlinked queue.
fn name_of(link: &[u8], unlinked: bool) -> Vec<u8> {
    let link = if unlinked {
        link.strip_suffix(DELETED).unwrap_or(link)
    } else {
        link
    };
    let start = link.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    link[start..].to_vec()
}

/// The pid that registered a notification, from a queue's status text (`QSIZE:0
/// NOTIFY:0 SIGNO:0 NOTIFY_PID:0`): `Some(0)` when none is registered, `None` when the
/// text has no such field.
fn notify_pid(status: &str) -> Option<i32> {
    status
        .split_whitespace()
        .find_map(|field| field.strip_prefix("NOTIFY_PID:"))
        .and_then(|v| v.parse().ok())
}

/// The status text of a queue, read through a new open file description of ours (a
/// read(2) on the task's own would move its position).
fn status(file: BorrowedFd<'_>) -> std::io::Result<String> {
    let mut text = String::new();
    File::open(self_fd_path(file))?.read_to_string(&mut text)?;
    Ok(text)
}

/// The `st_dev` of the mqueue superblock of `pid`'s IPC namespace: the device of every
/// queue of that namespace.
fn namespace_dev(pid: Pid) -> std::io::Result<u64> {
    let ns = File::open(format!("/proc/{}/ns/ipc", pid.0))?;
    let mount = sys::in_namespace_thread(ns.as_fd(), libc::CLONE_NEWIPC, sys::mqueue_mount)??;
    Ok(File::from(mount).metadata()?.dev())
}

/// The row of the kind table of a message queue descriptor (one `mq_open` gave, or an
/// open of a file of a mounted mqueue filesystem): a queue of another IPC namespace
/// than its task's (handed over a unix socket, or kept across `unshare`), one with a
/// notification registered, or a plain one.
pub(super) fn kind(fd: &OpenFd<'_>) -> Result<Kind, FileError> {
    let dev =
        namespace_dev(fd.pid).map_err(fd.io("find the mqueue filesystem of its IPC namespace"))?;
    if fd.meta.dev() != dev {
        return Ok(Kind::MqueueForeignNs);
    }
    let text = status(fd.raw()).map_err(fd.io("read the queue's status"))?;
    Ok(match notify_pid(&text) {
        Some(0) => Kind::Mqueue,
        Some(_) => Kind::MqueueNotify,
        None => {
            return Err(fd.io("read the queue's status")(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no NOTIFY_PID in {text:?}"),
            )))
        }
    })
}

/// What to call a queue descriptor in a refusal: its name, and who registered a
/// notification on it.
pub(super) fn describe(fd: &OpenFd<'_>) -> String {
    let unlinked = fd.meta.nlink() == 0;
    let name = String::from_utf8_lossy(&name_of(fd.link.as_bytes(), unlinked)).into_owned();
    let mut out = format!("queue /{name}");
    if unlinked {
        out.push_str(" (unlinked)");
    }
    if let Some(pid) = status(fd.raw())
        .ok()
        .and_then(|t| notify_pid(&t))
        .filter(|&p| p != 0)
    {
        out.push_str(&format!(", a notification registered by pid {pid}"));
    }
    out
}

/// An error of task `pid` about no descriptor in particular.
fn task_io(pid: Pid, what: &'static str) -> impl FnOnce(std::io::Error) -> FileError {
    move |source| FileError::Io {
        pid,
        fd: -1,
        what,
        source,
    }
}

/// Every queue of `pid`'s IPC namespace, by name, each opened read-write (through a
/// mount of the namespace's mqueue filesystem that is attached nowhere).
fn namespace_queues(pid: Pid) -> Result<Vec<(Vec<u8>, File)>, FileError> {
    let ns = File::open(format!("/proc/{}/ns/ipc", pid.0))
        .map_err(task_io(pid, "open its IPC namespace"))?;
    let mount = sys::in_namespace_thread(ns.as_fd(), libc::CLONE_NEWIPC, sys::mqueue_mount)
        .and_then(|m| m)
        .map_err(task_io(
            pid,
            "mount the mqueue filesystem of its IPC namespace",
        ))?;
    let root = self_fd_path(mount.as_fd());
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(&root)
        .and_then(|dir| {
            dir.map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
                .collect()
        })
        .map_err(task_io(pid, "list its message queues"))?;
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let path = root.join(std::ffi::OsStr::from_bytes(&name));
        match File::options().read(true).write(true).open(&path) {
            Ok(f) => out.push((name, f)),
            // Removed by a process outside the tree since the listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(task_io(pid, "open one of its message queues")(e)),
        }
    }
    Ok(out)
}

/// Refuses queue `name` of `pid`'s IPC namespace if a notification is registered on it.
fn refuse_notified(pid: Pid, name: &[u8], queue: &File) -> Result<(), FileError> {
    let text = status(queue.as_fd()).map_err(task_io(pid, "read a message queue's status"))?;
    match notify_pid(&text) {
        Some(0) => Ok(()),
        notifier => {
            let kind = Kind::MqueueNotify;
            Err(FileError::Unsupported {
                pid,
                fd: -1,
                kind: format!(
                    "{kind} (queue /{} of its IPC namespace, registered by pid {}): {}",
                    String::from_utf8_lossy(name),
                    notifier.map_or("?".into(), |p| p.to_string()),
                    kind.dump_refusal(Default::default()).unwrap_or_default()
                ),
            })
        }
    }
}

/// Checks, before the freeze, the queues no descriptor holds of the IPC namespace of
/// the tree rooted at `root` when it is one of the tree's own (which the dump saves
/// whole): none may have a notification registered.
pub fn check_namespace(root: Pid) -> Result<(), FileError> {
    let ino = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/ipc")).map(|m| m.ino());
    let theirs = ino(&root.0.to_string()).map_err(task_io(root, "look at its IPC namespace"))?;
    if ino("self").ok() == Some(theirs) {
        return Ok(());
    }
    for (name, queue) in namespace_queues(root)? {
        refuse_notified(root, &name, &queue)?;
    }
    Ok(())
}

/// Messages received from a queue that are not back in it yet: dropping it sends them
/// back, so a failure while a queue is read leaves the queue as it was.
struct Taken<'a> {
    queue: BorrowedFd<'a>,
    /// The queue's message size, the buffer a receive needs.
    msgsize: usize,
    messages: Vec<Message>,
    /// How many of `messages` are back in the queue.
    returned: usize,
    /// All of them are back and handed out: nothing to undo.
    done: bool,
}

impl Taken<'_> {
    /// Sends the messages back, in the order they were received, which is the queue's
    /// order; returns them.
    fn put_back(mut self) -> std::io::Result<Vec<Message>> {
        while self.returned < self.messages.len() {
            let (prio, text) = &self.messages[self.returned];
            if !sys::mq_send_now(self.queue, *prio, text)? {
                // Someone outside the tree sent to the queue meanwhile.
                return Err(std::io::Error::other(
                    "the queue filled up while its messages were read",
                ));
            }
            self.returned += 1;
        }
        self.done = true;
        Ok(std::mem::take(&mut self.messages))
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Stopped while receiving: what is still queued goes after what was taken (a
        // message put back behind one of its priority would change their order).
        if self.returned == 0 {
            while let Ok(Some(m)) = sys::mq_receive_now(self.queue, self.msgsize) {
                self.messages.push(m);
            }
        }
        let left = self.messages.len() - self.returned;
        for (prio, text) in &self.messages[self.returned..] {
            if !matches!(sys::mq_send_now(self.queue, *prio, text), Ok(true)) {
                tracing::error!(left, "cannot put messages back into a message queue");
                return;
            }
        }
    }
}

/// Every message of `queue` (a descriptor of ours, open for reading and writing), in
/// the order a receiver gets them; the queue holds them again when this returns.
fn read_messages(queue: BorrowedFd<'_>, msgsize: usize) -> std::io::Result<Vec<Message>> {
    let mut taken = Taken {
        queue,
        msgsize,
        messages: Vec::new(),
        returned: 0,
        done: false,
    };
    while let Some(m) = sys::mq_receive_now(queue, msgsize)? {
        taken.messages.push(m);
    }
    taken.put_back()
}

/// The dump's message queues: each queue once (by inode), with its messages.
#[derive(Default)]
pub(super) struct Mqueues {
    queues: Vec<(pb::MqueueEntry, Vec<Message>)>,
    by_inode: HashMap<(u64, u64), u32>,
}

/// The 8 bytes of padding a message text of `len` bytes is followed by in its image.
fn padding(len: usize) -> usize {
    len.next_multiple_of(8) - len
}

impl Mqueues {
    /// Records, the first time, `fd`'s queue; returns the `files.img` entry of its
    /// open file description (file `id`): CRIU's entry for an external file, with
    /// ours in it.
    pub(super) fn dump_fd(
        &mut self,
        fd: &OpenFd<'_>,
        id: u32,
        ipc_ns_id: u32,
    ) -> Result<pb::FileEntry, FileError> {
        let queue_id = match self.by_inode.get(&(fd.meta.dev(), fd.meta.ino())) {
            Some(&q) => q,
            None => {
                let unlinked = fd.meta.nlink() == 0;
                let name = name_of(fd.link.as_bytes(), unlinked);
                let ours = File::options()
                    .read(true)
                    .write(true)
                    .open(self_fd_path(fd.raw()))
                    .map_err(fd.io("open the queue to read its messages"))?;
                self.add_queue(&ours, &fd.meta, name, unlinked, ipc_ns_id)
                    .map_err(fd.io("read the queue's messages"))?
            }
        };
        // The description's own flags: fdinfo's add O_CLOEXEC for a close-on-exec
        // descriptor, where mq_open keeps the O_CLOEXEC it was given in them.
        let flags = sys::fcntl_get(fd.raw(), libc::F_GETFL)
            .map_err(fd.io("read the queue descriptor's flags"))?;
        let mqueue = pb::MqueueFileEntry {
            queue_id,
            flags: flags as u32,
            pos: Some(fd.common.pos).filter(|&p| p != 0),
        };
        let fown = fd.fown()?;
        Ok(file_entry(pb::FdTypes::Ext, id, |e| {
            e.ext = Some(pb::ExtFileEntry {
                id,
                fown,
                mqueue: Some(mqueue),
                io_uring: None,
            })
        }))
    }

    /// Saves the queues of `pid`'s IPC namespace that no descriptor of the tree holds:
    /// for a tree with an IPC namespace of its own, which goes with it.
    pub(super) fn dump_namespace(&mut self, pid: Pid, ipc_ns_id: u32) -> Result<(), FileError> {
        for (name, queue) in namespace_queues(pid)? {
            let meta = queue
                .metadata()
                .map_err(task_io(pid, "stat a message queue"))?;
            if self.by_inode.contains_key(&(meta.dev(), meta.ino())) {
                continue;
            }
            refuse_notified(pid, &name, &queue)?;
            self.add_queue(&queue, &meta, name, false, ipc_ns_id)
                .map_err(task_io(pid, "read a message queue's messages"))?;
        }
        Ok(())
    }

    /// Reads queue `queue` (ours, read-write) and records it; returns its id.
    fn add_queue(
        &mut self,
        queue: &File,
        meta: &Metadata,
        name: Vec<u8>,
        unlinked: bool,
        ipc_ns_id: u32,
    ) -> std::io::Result<u32> {
        let attr = sys::mq_getattr(queue.as_fd())?;
        let messages = read_messages(queue.as_fd(), attr.msgsize as usize)?;
        let id = self.queues.len() as u32 + 1;
        let (maxmsg, msgsize) = (attr.maxmsg as u64, attr.msgsize as u64);
        let entry = pb::MqueueEntry {
            // What a SysV queue would say (crit shows it): no key, created by its owner.
            desc: pb::IpcDescEntry {
                key: 0,
                uid: meta.uid(),
                gid: meta.gid(),
                cuid: meta.uid(),
                cgid: meta.gid(),
                mode: meta.mode() & 0o7777,
                id,
            },
            qbytes: u32::try_from(maxmsg.saturating_mul(msgsize)).unwrap_or(u32::MAX),
            qnum: messages.len() as u32,
            ipc_ns_id,
            name,
            unlinked: unlinked.then_some(true),
            maxmsg,
            msgsize,
        };
        self.queues.push((entry, messages));
        self.by_inode.insert((meta.dev(), meta.ino()), id);
        Ok(id)
    }

    /// Writes `criu-rs-mqueue-ID.img` for each queue: its entry, then each message
    /// as a SysV one (an `ipc_msg` with its priority and length, then its text padded
    /// to 8 bytes), in the order a receiver gets them.
    pub(super) fn write(&self, dir: &Path) -> Result<(), FileError> {
        for (q, msgs) in &self.queues {
            let mut w = writer(dir, "CRIU_RS_MQUEUE", q.desc.id)?;
            w.write_entry(q)?;
            for (prio, text) in msgs {
                w.write_entry(&pb::IpcMsg {
                    mtype: u64::from(*prio),
                    msize: text.len() as u32,
                })?;
                w.write_raw(text)?;
                w.write_raw(&[0; 8][..padding(text.len())])?;
            }
            w.finish()?;
        }
        Ok(())
    }
}

// --- restore ---------------------------------------------------------------------

/// Queues this restore created by name in an IPC namespace that outlives a failed
/// restore: removed on drop unless [`Created::keep`] was called.
struct Created {
    ns: File,
    names: Vec<Vec<u8>>,
}

impl Created {
    fn keep(&mut self) {
        self.names.clear();
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let names = std::mem::take(&mut self.names);
        let removed = sys::in_namespace_thread(self.ns.as_fd(), libc::CLONE_NEWIPC, || {
            names.iter().try_for_each(|n| sys::mq_unlink_name(n))
        });
        if let Err(e) = removed.and_then(|r| r) {
            tracing::error!("cannot remove the message queues a failed restore made: {e}");
        }
    }
}

/// The restore's message queues: what the images hold, and the open file descriptions
/// made so far.
#[derive(Default)]
pub(super) struct RestoreState {
    queues: BTreeMap<u32, pb::MqueueEntry>,
    messages: HashMap<u32, Vec<Message>>,
    /// Open file descriptions by their `files.img` id.
    files: BTreeMap<u32, pb::MqueueFileEntry>,
    /// Each open file description, made by [`FileOpener::make_mqueues`], until it is
    /// handed out.
    made: HashMap<u32, OwnedFd>,
    created: Option<Created>,
}

/// A reference to a queue itself (not to one of its open file descriptions) in errors.
fn queue_ref(q: &pb::MqueueEntry) -> FileRef {
    FileRef {
        id: q.desc.id,
        kind: "message queue",
        fd: None,
    }
}

fn shown(q: &pb::MqueueEntry) -> String {
    format!("/{}", String::from_utf8_lossy(&q.name))
}

/// The file name of queue `id`'s image.
fn image_name(id: u32) -> String {
    format!("criu-rs-mqueue-{id}.img")
}

/// Reads one queue's image: its entry, then its `qnum` messages, each an `ipc_msg`
/// (priority, length) and its text padded to 8 bytes; nothing may follow.
fn read_queue(path: &Path, file: &str) -> Result<(pb::MqueueEntry, Vec<Message>)> {
    let mut r = ImageReader::open(path)?;
    if r.kind().name != "CRIU_RS_MQUEUE" {
        return Err(bad(file, format!("is a {} image", r.kind().name)));
    }
    let q: pb::MqueueEntry = r
        .next_entry()?
        .ok_or_else(|| bad(file, "has no queue entry"))?;
    if file != image_name(q.desc.id) {
        return Err(bad(file, format!("holds queue {}", q.desc.id)));
    }
    // What a SysV image, or ours rewritten by a tool that drops unknown fields, lacks.
    if q.name.is_empty() || q.maxmsg == 0 || q.msgsize == 0 {
        return Err(bad(
            file,
            format!(
                "gives queue {:?} {} messages of {} bytes (criu-rs's fields 100 and up \
                 missing?)",
                shown(&q),
                q.maxmsg,
                q.msgsize
            ),
        ));
    }
    if u64::from(q.qnum) > q.maxmsg {
        return Err(bad(
            file,
            format!("holds {} messages, more than its {}", q.qnum, q.maxmsg),
        ));
    }
    let mut messages = Vec::with_capacity(q.qnum as usize);
    for n in 0..q.qnum {
        let m: pb::IpcMsg = r
            .next_entry()?
            .ok_or_else(|| bad(file, format!("ends at message {n} of {}", q.qnum)))?;
        let prio = u32::try_from(m.mtype)
            .map_err(|_| bad(file, format!("message {n} has priority {}", m.mtype)))?;
        if u64::from(m.msize) > q.msgsize {
            return Err(bad(
                file,
                format!("message {n} has {} bytes, more than {}", m.msize, q.msgsize),
            ));
        }
        let text = r.read_extra(u64::from(m.msize), "message text")?;
        r.skip(padding(text.len()) as u64, "message padding")?;
        messages.push((prio, text));
    }
    if r.next_payload()?.is_some() {
        return Err(bad(file, format!("has more than its {} messages", q.qnum)));
    }
    Ok((q, messages))
}

impl RestoreState {
    /// Reads criu-rs's queue images (`criu-rs-mqueue-ID.img`) from `dir`, and takes the
    /// open file descriptions of queues from `files` (the EXT entries of `files.img`
    /// that carry one).
    pub(super) fn load(dir: &Path, files: &HashMap<u32, pb::FileEntry>) -> Result<RestoreState> {
        let mut out = RestoreState::default();
        let unlisted = |e| {
            let at = criu_images::Location {
                path: dir.to_owned(),
                entry: None,
                offset: 0,
            };
            criu_images::Error::new(at, criu_images::ErrorKind::Io(e))
        };
        for entry in std::fs::read_dir(dir).map_err(unlisted)? {
            let entry = entry.map_err(unlisted)?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if ImageKind::by_file_name(&file).map(|k| k.name) != Some("CRIU_RS_MQUEUE") {
                continue;
            }
            let (q, messages) = read_queue(&entry.path(), &file)?;
            out.messages.insert(q.desc.id, messages);
            out.queues.insert(q.desc.id, q);
        }
        for f in files.values() {
            let Some(ext) = f.ext.as_ref() else { continue };
            let Some(m) = ext.mqueue.as_ref() else {
                continue;
            };
            if f.r#type != pb::FdTypes::Ext as i32 || ext.id != f.id {
                return Err(bad(
                    "files.img",
                    format!(
                        "file {} holds a message queue description of file {}",
                        f.id, ext.id
                    ),
                ));
            }
            if !out.queues.contains_key(&m.queue_id) {
                return Err(bad(
                    "files.img",
                    format!(
                        "file {} is of message queue {}, which has no {}",
                        f.id,
                        m.queue_id,
                        image_name(m.queue_id)
                    ),
                ));
            }
            if m.flags & libc::O_CREAT as u32 != 0 {
                return Err(bad(
                    "files.img",
                    format!("file {} has O_CREAT in its flags {:#o}", f.id, m.flags),
                ));
            }
            out.files.insert(f.id, *m);
        }
        Ok(out)
    }
}

/// Why an open queue is not the one the images describe (`None`: it has their size).
fn other_size(fd: BorrowedFd<'_>, q: &pb::MqueueEntry) -> std::io::Result<Option<String>> {
    let a = sys::mq_getattr(fd)?;
    Ok(
        (a.maxmsg as u64 != q.maxmsg || a.msgsize as u64 != q.msgsize).then(|| {
            format!(
                "message queue {} exists with {} messages of {} bytes, it had {} of {} at \
                 dump time",
                shown(q),
                a.maxmsg,
                a.msgsize,
                q.maxmsg,
                q.msgsize
            )
        }),
    )
}

/// A queue made in the calling thread's IPC namespace: its open file descriptions by
/// file id, and whether it was created under its own name (to remove on failure).
struct Made {
    descriptions: Vec<(u32, OwnedFd)>,
    created_by_name: bool,
}

/// Makes queue `q` in the calling thread's IPC namespace and opens each of `files`
/// (its open file descriptions) with `mq_open` and their flags, so each has exactly
/// the flags it had (`mq_open` keeps `O_CLOEXEC` in them, an open of `/proc/self/fd`
/// would add `O_LARGEFILE`).
///
/// A named queue that exists is reopened as it is, its messages those it holds now; one
/// that does not is created with its size, mode, owner and messages. An unlinked queue
/// is created likewise, at its old name when that is free (its descriptors' links then
/// read as before) or else at a name of ours, and removed once its descriptions are
/// open.
fn make_queue(
    q: &pb::MqueueEntry,
    messages: &[Message],
    files: &[(u32, &pb::MqueueFileEntry)],
) -> std::io::Result<Made> {
    let rw = libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let size = (q.desc.mode, q.maxmsg as i64, q.msgsize as i64);
    let unlinked = q.unlinked == Some(true);
    let mut names = vec![q.name.clone()];
    if unlinked {
        names.extend(
            (0..16).map(|n| {
                format!("criu-rs-restore-{}-{}-{n}", std::process::id(), q.desc.id).into()
            }),
        );
    }
    let mut made = None;
    for name in &names {
        match sys::mq_open_name(name, rw, Some(size)) {
            Ok(fd) => {
                made = Some((name, fd));
                break;
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && !unlinked => {
                let fd = sys::mq_open_name(name, rw, None)?;
                if let Some(why) = other_size(fd.as_fd(), q)? {
                    return Err(std::io::Error::other(why));
                }
                let descriptions = open_descriptions(name, files)?;
                return Ok(Made {
                    descriptions,
                    created_by_name: false,
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    let (name, fd) = made.ok_or_else(|| std::io::Error::from_raw_os_error(libc::EEXIST))?;
    let filled = fill(q, messages, fd).and_then(|()| open_descriptions(name, files));
    if unlinked || filled.is_err() {
        let removed = sys::mq_unlink_name(name);
        let descriptions = filled?;
        removed?;
        return Ok(Made {
            descriptions,
            created_by_name: false,
        });
    }
    Ok(Made {
        descriptions: filled?,
        created_by_name: true,
    })
}

/// Gives a queue just created its mode (which went through our umask), its owner and
/// its messages.
fn fill(q: &pb::MqueueEntry, messages: &[Message], fd: OwnedFd) -> std::io::Result<()> {
    let file = File::from(fd);
    file.set_permissions(std::fs::Permissions::from_mode(q.desc.mode))?;
    std::os::unix::fs::fchown(&file, Some(q.desc.uid), Some(q.desc.gid))?;
    for (prio, text) in messages {
        if !sys::mq_send_now(file.as_fd(), *prio, text)? {
            return Err(std::io::Error::other(format!(
                "the new queue is full after {} messages",
                q.maxmsg
            )));
        }
    }
    Ok(())
}

/// Opens each of `files` on queue `name` with its flags.
fn open_descriptions(
    name: &[u8],
    files: &[(u32, &pb::MqueueFileEntry)],
) -> std::io::Result<Vec<(u32, OwnedFd)>> {
    files
        .iter()
        .map(|(id, f)| Ok((*id, sys::mq_open_name(name, f.flags as i32, None)?)))
        .collect()
}

impl FileOpener {
    /// The row of the kind table of an EXT file that is a message queue's open file
    /// description (`None`: it is not one of ours), and what to call it.
    pub(super) fn mqueue_kind(&self, id: u32) -> Option<(Kind, String)> {
        let f = self.mqueues.files.get(&id)?;
        let q = self.mqueues.queues.get(&f.queue_id)?;
        Some((Kind::Mqueue, format!("queue {}", shown(q))))
    }

    /// A queue of the restorer's own IPC namespace that exists by its name must have
    /// its size of dump time (it is reopened as it is); one that is gone is created.
    pub(super) fn check_mqueue(&self, pid: Pid, at: &FileRef) -> Result<()> {
        let f = self.mqueues.files.get(&at.id).ok_or_else(|| {
            bad(
                "files.img",
                format!("file {} is no message queue description", at.id),
            )
        })?;
        let Some(q) = self.mqueues.queues.get(&f.queue_id) else {
            return Err(bad(&image_name(f.queue_id), "is missing"));
        };
        let ours = self.root_ids.as_ref().and_then(|r| r.ipc_ns_id);
        if q.unlinked == Some(true) || ours != Some(q.ipc_ns_id) {
            return Ok(());
        }
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC;
        match sys::mq_open_name(&q.name, flags, None) {
            Ok(fd) => {
                match other_size(fd.as_fd(), q).map_err(at.io(format!("look at {}", shown(q))))? {
                    Some(why) => Err(at.unsupported(pid, why)),
                    None => Ok(()),
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(at.io(format!("open message queue {}", shown(q)))(e)),
        }
    }

    /// Makes every saved queue, and opens each of its open file descriptions, in the
    /// IPC namespace of `root` (our number of the tree's root, in its namespaces
    /// already): reopened where it exists by name, created otherwise. Call before any
    /// descriptor is handed out, and [`FileOpener::keep_mqueues`] once the tree is
    /// restored (until then, dropping the opener removes the queues it created).
    pub fn make_mqueues(&mut self, root: Pid) -> Result<()> {
        if self.mqueues.queues.is_empty() {
            return Ok(());
        }
        let anywhere = FileRef {
            id: 0,
            kind: "message queue",
            fd: None,
        };
        let ns = File::open(format!("/proc/{}/ns/ipc", root.0))
            .map_err(anywhere.io(format!("open the IPC namespace of task {root}")))?;
        let state = &self.mqueues;
        let made = sys::in_namespace_thread(ns.as_fd(), libc::CLONE_NEWIPC, || {
            let mut made = Vec::new();
            for q in state.queues.values() {
                let id = q.desc.id;
                let messages = state.messages.get(&id).map_or(&[][..], Vec::as_slice);
                let files: Vec<(u32, &pb::MqueueFileEntry)> = state
                    .files
                    .iter()
                    .filter(|(_, f)| f.queue_id == id)
                    .map(|(file, f)| (*file, f))
                    .collect();
                match make_queue(q, messages, &files) {
                    Ok(m) => made.push((id, m)),
                    Err(e) => return (made, Some((id, e))),
                }
            }
            (made, None)
        })
        .map_err(anywhere.io("enter the tree's IPC namespace"))?;
        let (made, failed) = made;
        let mut created = Created {
            ns,
            names: Vec::new(),
        };
        for (id, m) in made {
            if m.created_by_name {
                if let Some(q) = self.mqueues.queues.get(&id) {
                    created.names.push(q.name.clone());
                }
            }
            self.mqueues.made.extend(m.descriptions);
        }
        self.mqueues.created = Some(created);
        if let Some((id, e)) = failed {
            let q = &self.mqueues.queues[&id];
            return Err(queue_ref(q).io(format!("make message queue {}", shown(q)))(
                e,
            ));
        }
        Ok(())
    }

    /// The tree is restored: the queues made by name stay.
    pub fn keep_mqueues(&mut self) {
        if let Some(c) = self.mqueues.created.as_mut() {
            c.keep();
        }
    }

    /// Open file description `at.id` of a queue, made by [`FileOpener::make_mqueues`],
    /// with its position and signal owner.
    pub(super) fn open_mqueue(&mut self, at: &FileRef, fown: &pb::FownEntry) -> Result<OwnedFd> {
        let f = self.mqueues.files.get(&at.id).ok_or_else(|| {
            bad(
                "files.img",
                format!("file {} is no message queue description", at.id),
            )
        })?;
        let (flags, pos) = (f.flags, f.pos);
        let fd = self.mqueues.made.remove(&at.id).ok_or_else(|| {
            at.refused(format!("message queue {} was not made first", f.queue_id))
        })?;
        if let Some(pos) = pos.filter(|&p| p != 0) {
            sys::lseek(fd.as_fd(), pos, libc::SEEK_SET)
                .map_err(at.io(format!("seek the queue's status to {pos}")))?;
        }
        finish(at, fd.as_fd(), flags, fown)?;
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    /// Writes queue image `file` in `dir`: entry `q`, then `messages` (priority, text),
    /// each padded to 8 bytes as the dump does.
    fn write_queue(dir: &Path, file: &str, q: &pb::MqueueEntry, messages: &[Message]) {
        let kind = ImageKind::by_name("CRIU_RS_MQUEUE").unwrap();
        let mut w = criu_images::ImageWriter::create(dir.join(file), kind).unwrap();
        w.write_entry(q).unwrap();
        for (prio, text) in messages {
            w.write_entry(&pb::IpcMsg {
                mtype: u64::from(*prio),
                msize: text.len() as u32,
            })
            .unwrap();
            w.write_raw(text).unwrap();
            w.write_raw(&[0; 8][..padding(text.len())]).unwrap();
        }
        w.finish().unwrap();
    }

    /// A queue's image reads back whole; one that disagrees with its name or with
    /// itself is refused, naming the file and what is wrong.
    #[test]
    fn queue_images_read_back_or_are_refused_by_name() {
        let dir = TempDir::new("mqueue-images");
        let q = pb::MqueueEntry {
            desc: pb::IpcDescEntry {
                mode: 0o600,
                id: 4,
                ..Default::default()
            },
            qbytes: 2 * 16,
            qnum: 2,
            name: b"q".to_vec(),
            maxmsg: 2,
            msgsize: 16,
            ..Default::default()
        };
        let messages: Vec<Message> = vec![(9, b"nine-nine".to_vec()), (1, Vec::new())];
        let read = |file: &str| read_queue(&dir.path().join(file), file);
        write_queue(dir.path(), "criu-rs-mqueue-4.img", &q, &messages);
        let (back, got) = read("criu-rs-mqueue-4.img").unwrap();
        assert_eq!((back, got), (q.clone(), messages.clone()));

        let refused = |file: &str, q: &pb::MqueueEntry, messages: &[Message]| {
            write_queue(dir.path(), file, q, messages);
            read(file).unwrap_err().to_string()
        };
        let e = refused("criu-rs-mqueue-5.img", &q, &messages);
        assert_eq!(e, "criu-rs-mqueue-5.img: holds queue 4");
        let e = refused("criu-rs-mqueue-4.img", &q, &messages[..1]);
        assert!(
            e.contains("criu-rs-mqueue-4.img") && e.contains("message"),
            "{e}"
        );
        let e = refused(
            "criu-rs-mqueue-4.img",
            &pb::MqueueEntry {
                qnum: 1,
                ..q.clone()
            },
            &messages,
        );
        assert_eq!(e, "criu-rs-mqueue-4.img: has more than its 1 messages");
        let long = [(1, vec![b'x'; 17])];
        let one = pb::MqueueEntry {
            qnum: 1,
            ..q.clone()
        };
        let e = refused("criu-rs-mqueue-4.img", &one, &long);
        assert_eq!(
            e,
            "criu-rs-mqueue-4.img: message 0 has 17 bytes, more than 16"
        );
        let e = refused(
            "criu-rs-mqueue-4.img",
            &pb::MqueueEntry {
                qnum: 3,
                ..q.clone()
            },
            &messages,
        );
        assert_eq!(e, "criu-rs-mqueue-4.img: holds 3 messages, more than its 2");
        // A SysV queue image under our name is read as ours: its entry lacks our fields.
        let kind = ImageKind::by_name("IPCNS_MSG").unwrap();
        let path = dir.path().join("criu-rs-mqueue-6.img");
        let mut w = criu_images::ImageWriter::create(&path, kind).unwrap();
        w.write_entry(&pb::IpcMsgEntry::default()).unwrap();
        w.finish().unwrap();
        let e = read("criu-rs-mqueue-6.img").unwrap_err().to_string();
        assert_eq!(e, "criu-rs-mqueue-6.img: holds queue 0");
        let sysv = pb::MqueueEntry {
            name: Vec::new(),
            maxmsg: 0,
            msgsize: 0,
            ..q.clone()
        };
        let e = refused("criu-rs-mqueue-4.img", &sysv, &messages);
        assert!(e.contains("fields 100 and up missing"), "{e}");
    }

    /// files.img's EXT entries with a queue description must name a saved queue, and
    /// flags an open of it can take; those without one are not ours.
    #[test]
    fn descriptions_in_files_img_must_name_a_saved_queue() {
        let dir = TempDir::new("mqueue-descriptions");
        let q = pb::MqueueEntry {
            desc: pb::IpcDescEntry {
                id: 1,
                ..Default::default()
            },
            name: b"q".to_vec(),
            maxmsg: 1,
            msgsize: 8,
            ..Default::default()
        };
        write_queue(dir.path(), "criu-rs-mqueue-1.img", &q, &[]);
        let ext = |id: u32, queue_id: u32, flags: i32| pb::FileEntry {
            r#type: pb::FdTypes::Ext as i32,
            id,
            ext: Some(pb::ExtFileEntry {
                id,
                fown: Default::default(),
                mqueue: (queue_id != 0).then_some(pb::MqueueFileEntry {
                    queue_id,
                    flags: flags as u32,
                    pos: None,
                }),
                io_uring: None,
            }),
            ..Default::default()
        };
        let load = |files: Vec<pb::FileEntry>| {
            let files = files.into_iter().map(|f| (f.id, f)).collect();
            RestoreState::load(dir.path(), &files)
        };
        let refused = |files| load(files).err().expect("refused").to_string();
        let ok = load(vec![ext(3, 1, libc::O_RDWR), ext(4, 0, 0)]).unwrap();
        assert_eq!(ok.files.keys().copied().collect::<Vec<_>>(), [3]);
        assert_eq!(ok.queues[&1].name, b"q");
        let e = refused(vec![ext(3, 2, libc::O_RDWR)]);
        assert_eq!(
            e,
            "files.img: file 3 is of message queue 2, which has no criu-rs-mqueue-2.img"
        );
        let e = refused(vec![ext(3, 1, libc::O_RDWR | libc::O_CREAT)]);
        assert!(e.starts_with("files.img: file 3 has O_CREAT"), "{e}");
    }

    #[test]
    fn names_from_links() {
        assert_eq!(name_of(b"/jobs", false), b"jobs");
        assert_eq!(name_of(b"/jobs (deleted)", true), b"jobs");
        assert_eq!(name_of(b"/dev/mqueue/jobs", false), b"jobs");
        // Only an unlinked queue's suffix is the kernel's.
        assert_eq!(name_of(b"/x (deleted)", false), b"x (deleted)");
        assert_eq!(name_of(b"/\xff\xfe", false), b"\xff\xfe");
    }

    #[test]
    fn notification_pid_from_the_status_text() {
        let none = "QSIZE:0          NOTIFY:0     SIGNO:0     NOTIFY_PID:0     \n";
        assert_eq!(notify_pid(none), Some(0));
        let some = "QSIZE:12         NOTIFY:0     SIGNO:10    NOTIFY_PID:4242  \n";
        assert_eq!(notify_pid(some), Some(4242));
        assert_eq!(notify_pid("garbage"), None);
    }

    /// A queue's messages come back in order and stay in the queue; a guard dropped
    /// half way puts back what it took.
    #[test]
    fn reading_a_queue_leaves_it_as_it_was() {
        let name = format!("criu-rs-unit-read-{}", std::process::id());
        let rw = libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC;
        let q = sys::mq_open_name(name.as_bytes(), rw, Some((0o600, 8, 64))).unwrap();
        sys::mq_unlink_name(name.as_bytes()).unwrap();
        let sent: [Message; 5] = [
            (1, b"low".to_vec()),
            (7, b"high-a".to_vec()),
            (0, Vec::new()),
            (7, b"high-b".to_vec()),
            (3, vec![0, 255, 10]),
        ];
        for (p, t) in &sent {
            assert!(sys::mq_send_now(q.as_fd(), *p, t).unwrap());
        }
        let order = |v: &[Message]| -> Vec<Message> {
            let mut v = v.to_vec();
            // Highest priority first; stable, so the oldest first within one.
            v.sort_by_key(|m| std::cmp::Reverse(m.0));
            v
        };
        let expected = order(&sent);
        assert_eq!(read_messages(q.as_fd(), 64).unwrap(), expected);
        assert_eq!(sys::mq_getattr(q.as_fd()).unwrap().curmsgs, 5);
        {
            let mut taken = Taken {
                queue: q.as_fd(),
                msgsize: 64,
                messages: Vec::new(),
                returned: 0,
                done: false,
            };
            // Stopped after the first of two messages of one priority.
            for _ in 0..1 {
                taken
                    .messages
                    .push(sys::mq_receive_now(q.as_fd(), 64).unwrap().unwrap());
            }
            assert_eq!(sys::mq_getattr(q.as_fd()).unwrap().curmsgs, 4);
        }
        assert_eq!(read_messages(q.as_fd(), 64).unwrap(), expected);
    }
}
