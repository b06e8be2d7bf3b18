//! Files passed in unix sockets' queues (`SCM_RIGHTS`), which no task may hold.
//!
//! Reading a queue with `MSG_PEEK` gives us copies of the descriptors its messages
//! carry (see `unix/queue.rs`); each is dumped here as any open file of ours would be
//! (CRIU's `dump_my_file`): classified and checked as a task's descriptor is, given the
//! `files.img` id of the open file description when a task (or another queue) holds it
//! too (kcmp), a new one otherwise. Our copy stays open until the dump ends, so a later
//! holder is compared with it.
//!
//! Only kinds whose state is the file's own are taken: a file whose meaning depends on
//! the task holding it (an epoll instance's targets are that task's descriptor numbers,
//! a terminal belongs to a session) is refused, naming the socket that carries it.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use super::*;

/// The classes of files a queue may carry in a dump.
fn passable(class: Class, fd: &OpenFd<'_>) -> bool {
    match class {
        Class::Reg | Class::Pipe | Class::Fifo | Class::Eventfd | Class::Memfd => true,
        // Its targets are recorded under the numbers of the task holding the socket.
        Class::Eventpoll => true,
        Class::Socket => unix::unix_netns(fd).is_some(),
        _ => false,
    }
}

/// Our own descriptor `file`, opened for inspection as a task's is; `numbers_of` and
/// `task_fds` say which task's descriptor numbers an epoll instance's targets are
/// looked up among (the task holding the socket whose queue carries it).
fn own_fd<'a>(
    proc: &ProcDir,
    file: OwnedFd,
    numbers_of: Pid,
    task_fds: &'a [i32],
) -> Result<OpenFd<'a>, FileError> {
    let pid = proc.pid();
    let n = file.as_raw_fd();
    let io = |what| {
        move |source| FileError::Io {
            pid,
            fd: n,
            what,
            source,
        }
    };
    let link = proc
        .read_link(&format!("fd/{n}"))
        .map_err(io("read the fd link of a passed file"))?
        .into_os_string();
    let text = proc
        .read_string(&format!("fdinfo/{n}"))
        .map_err(io("read the fdinfo of a passed file"))?;
    let common =
        fdinfo::parse_common(&text).map_err(|source| FileError::Fdinfo { pid, fd: n, source })?;
    let file = File::from(file);
    let meta = file.metadata().map_err(io("stat a passed file"))?;
    Ok(OpenFd {
        pid,
        fd: n,
        link,
        fdinfo: text,
        common,
        file,
        meta,
        task_fds,
        numbers_of,
    })
}

/// Says which socket carried the file a refusal is about, naming the task's
/// descriptor the socket was reached by.
fn carried(e: FileError, pid: Pid, fd: i32, socket_ino: u32) -> FileError {
    match e {
        FileError::Unsupported { kind, .. } => FileError::Unsupported {
            pid,
            fd,
            kind: format!(
                "a file passed in the queue of unix socket {socket_ino} (SCM_RIGHTS): {kind}"
            ),
        },
        other => other,
    }
}

/// Checks a file a queue carries: its class first, then as any descriptor.
fn check_passed_fd(
    fd: &OpenFd<'_>,
    given: Given,
    tree: Option<&TreeChecks>,
    tree_pids: &HashSet<i32>,
) -> Result<Class, FileError> {
    let (kind, class) = classify(&fd.link_str(), &fd.meta, fd.common.flags);
    match class {
        Some(c) if passable(c, fd) => check_fd(fd, given, tree, tree_pids),
        _ => Err(fd.unsupported(format!(
            "{kind} ({}): only regular files, pipes, FIFOs, unix sockets, eventfds, \
             memfds and epoll instances are recorded in a socket's queue",
            fd.link_str()
        ))),
    }
}

fn own_proc() -> Result<ProcDir, FileError> {
    let pid = Pid(std::process::id() as i32);
    ProcDir::open(pid).map_err(task_io(pid, "open our own /proc/PID"))
}

impl TreeChecks {
    /// Judges the files the queue of unix socket `fd` carries (and those their own
    /// queues carry) as the dump will, when a look that changes nothing tells them
    /// ([`unix::head_passed_files`]; the frozen stage judges the others); `seen` holds
    /// the sockets already looked into.
    pub(super) fn check_passed(
        &self,
        fd: &OpenFd<'_>,
        seen: &mut HashSet<u64>,
    ) -> Result<(), FileError> {
        let socket_ino = fd.meta.ino() as u32;
        let Some(files) = unix::head_passed_files(fd)? else {
            return Ok(());
        };
        if files.is_empty() {
            return Ok(());
        }
        let proc = own_proc()?;
        // An epoll instance's targets are looked up among the descriptors of the task
        // holding the socket; none holds a socket a queue carries.
        let (numbers_of, task_fds) = if fd.pid == proc.pid() {
            (fd.pid, &[][..])
        } else {
            (fd.pid, fd.task_fds)
        };
        for file in files {
            let passed = own_fd(&proc, file, numbers_of, task_fds)?;
            let class = check_passed_fd(&passed, self.given, Some(self), &self.pids)
                .map_err(|e| carried(e, fd.pid, fd.fd, socket_ino))?;
            if class == Class::Eventpoll {
                // Its targets must be among the holding task's descriptors.
                anon::eventpoll(&passed, 0).map_err(|e| carried(e, fd.pid, fd.fd, socket_ino))?;
            }
            if class == Class::Socket && seen.insert(passed.meta.ino()) {
                self.check_passed(&passed, seen)
                    .map_err(|e| carried(e, fd.pid, fd.fd, socket_ino))?;
            }
        }
        Ok(())
    }
}

/// The unix sockets the queue of unix socket `fd` carries, and those their own queues
/// carry, by inode, as far as a look that changes nothing tells them
/// ([`unix::head_passed_files`]); `false` when some queue carries descriptors it
/// cannot tell (best effort: what cannot be read is reported by the checks).
pub(super) fn passed_sockets(fd: &OpenFd<'_>, out: &mut HashSet<u32>) -> bool {
    let Ok(proc) = own_proc() else {
        return false;
    };
    let mut complete = true;
    let mut look = |fd: &OpenFd<'_>| match unix::head_passed_files(fd) {
        Ok(Some(files)) => files,
        _ => {
            complete = false;
            Vec::new()
        }
    };
    let mut todo = look(fd);
    while let Some(file) = todo.pop() {
        let Ok(passed) = own_fd(&proc, file, proc.pid(), &[]) else {
            continue;
        };
        if unix::unix_netns(&passed).is_some() && out.insert(passed.meta.ino() as u32) {
            todo.extend(look(&passed));
        }
    }
    complete
}

impl FileTable {
    /// Dumps the files the queues read so far carry (and those their own queues carry)
    /// and tells each packet its files' ids.
    pub(super) fn dump_passed(&mut self) -> Result<(), FileError> {
        let mut proc = None;
        while let Some(p) = self.sockets.unix.take_passed() {
            let proc = match &proc {
                Some(proc) => proc,
                None => proc.insert(own_proc()?),
            };
            // The descriptors of the task holding the socket (none when the socket is
            // itself one a queue carries): where an epoll instance's targets are.
            let task_fds = if p.pid == proc.pid() {
                Vec::new()
            } else {
                ProcDir::open(p.pid)
                    .and_then(|d| d.list_numbers("fd"))
                    .map_err(task_io(p.pid, "list /proc/PID/fd"))?
            };
            let fd = own_fd(proc, p.file, p.pid, &task_fds)?;
            let wrap = |e| carried(e, p.pid, p.fd, p.socket_ino);
            let class = check_passed_fd(&fd, self.given, None, &self.tree_pids).map_err(wrap)?;
            let id = match self.find_shared(&fd)? {
                Some(h) => h.id,
                None => {
                    let (id, ty) = self.dump_new(&fd, class).map_err(wrap)?;
                    self.seen
                        .entry((fd.meta.dev(), fd.meta.ino()))
                        .or_default()
                        .push(Holder {
                            pid: fd.pid,
                            fd: fd.fd,
                            id,
                            ty,
                        });
                    id
                }
            };
            self.sockets.unix.set_passed_id(p.packet, p.slot, id);
            // Kept open: kcmp compares a later holder of the same file with it.
            self.passed_files.push(fd.file);
        }
        Ok(())
    }
}
