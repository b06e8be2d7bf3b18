//! Stage 6: every fd of a task, opened by the restorer and taken by the task with
//! pidfd_getfd at its old number; then its cwd and umask.

use super::*;

/// Fills the fd table of `pid`: closes what it inherited from us, moves our pidfd
/// (`restorer_pidfd` in it) above every fd to restore, installs the process's fds and
/// epoll interest lists. Returns where our pidfd is now.
pub(super) fn restore_fd_table(
    inj: &mut Injector,
    img: &Images,
    pid: Pid,
    restorer_pidfd: u64,
    scratch: u64,
    opener: &mut FileOpener,
) -> Result<u64, RestoreError> {
    let terr = |what: &str| {
        let what = what.to_owned();
        move |source| RestoreError::Task { pid, what, source }
    };
    let fds = ProcDir::open(pid)
        .and_then(|d| d.list_numbers("fd"))
        .map_err(terr("listing inherited fds"))?;
    for fd in fds.into_iter().filter(|&fd| fd as u64 != restorer_pidfd) {
        inj.syscall_ok("close", libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0])
            .map_err(terr("closing inherited fds"))?;
    }
    let low = restorer_pidfd;
    // Above every fd to restore, so placing them never lands on it.
    let above = img
        .fdinfo
        .iter()
        .map(|f| u64::from(f.fd))
        .max()
        .map_or(0, |m| m + 1);
    let pidfd = inj
        .syscall_ok(
            "fcntl(F_DUPFD)",
            libc::SYS_fcntl,
            [low, libc::F_DUPFD_CLOEXEC as u64, above, 0, 0, 0],
        )
        .map_err(terr("moving the pidfd"))?;
    inj.syscall_ok("close", libc::SYS_close, [low, 0, 0, 0, 0, 0])
        .map_err(terr("moving the pidfd"))?;
    for fdi in &img.fdinfo {
        let ours = opener.open(fdi.id, &img.fdinfo)?.as_raw_fd();
        let theirs = give_fd(inj, pidfd, ours).map_err(terr("taking a file"))?;
        let cloexec = if fdi.flags & libc::FD_CLOEXEC as u32 != 0 {
            libc::O_CLOEXEC as u64
        } else {
            0
        };
        if theirs != u64::from(fdi.fd) {
            inj.syscall_ok(
                "dup3",
                libc::SYS_dup3,
                [theirs, u64::from(fdi.fd), cloexec, 0, 0, 0],
            )
            .map_err(terr("placing a file"))?;
            inj.syscall_ok("close", libc::SYS_close, [theirs, 0, 0, 0, 0, 0])
                .map_err(terr("placing a file"))?;
        } else {
            // pidfd_getfd always sets close-on-exec; put the saved flag back.
            let fd_flags = if cloexec != 0 {
                libc::FD_CLOEXEC as u64
            } else {
                0
            };
            inj.syscall_ok(
                "fcntl",
                libc::SYS_fcntl,
                [theirs, libc::F_SETFD as u64, fd_flags, 0, 0, 0],
            )
            .map_err(terr("placing a file"))?;
        }
    }
    // Epoll interest lists, registered by the task itself with its own fd numbers.
    for item in opener.epoll_items(&img.fdinfo) {
        watch(inj, scratch, item.epfd as u64, &item).map_err(terr(&format!(
            "watching fd {} in epoll {}",
            item.tfd, item.epfd
        )))?;
    }
    // Those of epoll instances its sockets' queues carry: held for the moment it takes.
    for passed in opener.passed_epolls(&img.fdinfo) {
        let ours = opener.open(passed.id, &img.fdinfo)?.as_raw_fd();
        let held =
            give_fd(inj, pidfd, ours).map_err(terr("taking an epoll instance a queue carries"))?;
        let watched = passed.items.iter().try_for_each(|item| {
            watch(inj, scratch, held, item).map_err(terr(&format!(
                "watching fd {} in the epoll instance (file {}) a queue carries",
                item.tfd, passed.id
            )))
        });
        let closed = inj
            .syscall_ok("close", libc::SYS_close, [held, 0, 0, 0, 0, 0])
            .map_err(terr("letting go of an epoll instance a queue carries"));
        watched?;
        closed?;
    }
    Ok(pidfd)
}

/// `epoll_ctl(epfd, EPOLL_CTL_ADD, item.tfd, {events, data})` in the task, the event
/// written at `scratch`.
fn watch(
    inj: &mut Injector,
    scratch: u64,
    epfd: u64,
    item: &crate::files::restore::EpollItem,
) -> std::io::Result<()> {
    let mut event = item.events.to_le_bytes().to_vec();
    event.extend_from_slice(&item.data.to_le_bytes());
    inj.write(scratch, &event)?;
    let args = [
        epfd,
        libc::EPOLL_CTL_ADD as u64,
        item.tfd as u64,
        scratch,
        0,
        0,
    ];
    inj.syscall_ok("epoll_ctl", libc::SYS_epoll_ctl, args)
        .map(drop)
}

/// mmap(2)s the task's `fd` for VMA `v` at its place, then closes the fd in any case.
pub(super) fn map_task_fd(
    inj: &mut Injector,
    v: &pb::VmaEntry,
    prot: u64,
    flags: u64,
    fd: u64,
) -> std::io::Result<()> {
    // The dumped flags of shared anonymous memory say MAP_ANONYMOUS, with which mmap
    // ignores the fd and makes new, unshared, empty memory.
    let flags = flags & !(libc::MAP_ANONYMOUS as u64);
    let mapped = inj.syscall_ok(
        "mmap",
        libc::SYS_mmap,
        [v.start, v.end - v.start, prot, flags, fd, v.pgoff],
    );
    let closed = inj.syscall_ok("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
    mapped.and(closed).map(drop)
}

/// The next round of opening the files of file mappings `(path, mode, mmap args)`: the
/// paths as they go into the scratch area at `scratch`, and one `openat` each; at least
/// one file, at most FILES_PER_ROUND, and paths within SCRATCH_BYTES. Fails with the
/// path that can never fit.
#[allow(clippy::type_complexity)]
pub(super) fn open_round(
    files: &[(PathBuf, i32, [u64; 6])],
    scratch: u64,
) -> Result<(Vec<u8>, Vec<(String, i64, [u64; 6])>), String> {
    use std::os::unix::ffi::OsStrExt;
    let mut paths = Vec::new();
    let mut opens = Vec::new();
    for (path, mode, _) in files.iter().take(FILES_PER_ROUND) {
        let bytes = path.as_os_str().as_bytes();
        if bytes.len() + 1 > SCRATCH_BYTES || bytes.contains(&0) {
            return Err(path.display().to_string());
        }
        if paths.len() + bytes.len() + 1 > SCRATCH_BYTES {
            break;
        }
        let at = scratch + paths.len() as u64;
        paths.extend_from_slice(bytes);
        paths.push(0);
        let flags = (mode | libc::O_CLOEXEC) as u64;
        opens.push((
            format!("openat ({})", path.display()),
            libc::SYS_openat,
            [libc::AT_FDCWD as u64, at, flags, 0, 0, 0],
        ));
    }
    Ok((paths, opens))
}

/// Gives the task a duplicate of the restorer's fd `ours` (same open file description);
/// returns the task's fd number.
/// (In a tree in its own user namespace, `restorer_pidfd` is the courier socket:
/// `userns.rs`.)
pub(super) fn give_fd(inj: &mut Injector, restorer_pidfd: u64, ours: i32) -> std::io::Result<u64> {
    if let Some(given) = super::userns::give_by_courier(inj, restorer_pidfd, ours) {
        return given;
    }
    inj.syscall_ok(
        "pidfd_getfd",
        libc::SYS_pidfd_getfd,
        [restorer_pidfd, ours as u64, 0, 0, 0, 0],
    )
}

/// Opens `path` inside the task (its own view of the filesystem); returns the fd.
pub(super) fn open_in_task(
    inj: &mut Injector,
    scratch: u64,
    path: &Path,
    flags: i32,
) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut c = path.as_os_str().as_bytes().to_vec();
    if c.contains(&0) {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    c.push(0);
    inj.write(scratch, &c)?;
    inj.syscall_ok(
        "openat",
        libc::SYS_openat,
        [
            libc::AT_FDCWD as u64,
            scratch,
            (flags | libc::O_CLOEXEC) as u64,
            0,
            0,
            0,
        ],
    )
}

impl Rebuild<'_> {
    /// Stage 6: the fd table (unless another process sharing it filled it already),
    /// the cwd and the umask. Returns the task's fd number of our pidfd when no process
    /// still to be rebuilt needs it in this fd table: stage 7 closes it.
    pub(super) fn restore_files(&mut self) -> Result<Option<u64>, RestoreError> {
        let (img, scratch) = (self.img, self.scratch());
        let pidfd = match self.fd_table.pidfd {
            Some(pidfd) => pidfd,
            None => {
                let pidfd = restore_fd_table(
                    &mut self.inj,
                    img,
                    self.pid,
                    self.restorer_pidfd,
                    scratch,
                    self.opener,
                )?;
                self.fd_table.pidfd = Some(pidfd);
                pidfd
            }
        };
        self.fd_table.left = self.fd_table.left.saturating_sub(1);
        let last_of_table = self.fd_table.left == 0;
        let cwd_name = img
            .files
            .get(&img.fs.cwd_id)
            .and_then(|f| f.reg.as_ref())
            .map(|r| r.path().to_owned())
            .unwrap_or_else(|| "/".into());
        let cwd = if self.opener.is_ghost(img.fs.cwd_id) {
            // A deleted directory: no path leads to it; made again by the opener and
            // handed over.
            let ours = self.opener.open(img.fs.cwd_id, &[])?.as_raw_fd();
            give_fd(&mut self.inj, pidfd, ours)
        } else {
            open_in_task(
                &mut self.inj,
                scratch,
                &cwd_name,
                libc::O_RDONLY | libc::O_DIRECTORY,
            )
        }
        .map_err(self.err(&format!("opening cwd {}", cwd_name.display())))?;
        self.inj
            .syscall_ok("fchdir", libc::SYS_fchdir, [cwd, 0, 0, 0, 0, 0])
            .map_err(self.err("changing directory"))?;
        self.inj
            .syscall_ok("close", libc::SYS_close, [cwd, 0, 0, 0, 0, 0])
            .map_err(self.err("changing directory"))?;
        if let Some(umask) = img.fs.umask {
            self.inj
                .syscall_ok("umask", libc::SYS_umask, [u64::from(umask), 0, 0, 0, 0, 0])
                .map_err(self.err("umask"))?;
        }
        Ok(last_of_table.then_some(pidfd))
    }

    /// Stage 7, once nothing more is opened in the task by path: a chrooted task's root,
    /// with chroot(2) on its path (as we, and the dump, name it), which keeps the cwd that
    /// stage 6 set. It comes after the fds, the cwd and the exe link, whose paths are
    /// read from our root, as CRIU restores the root after opening files.
    pub(super) fn change_root(&mut self) -> Result<(), RestoreError> {
        use std::os::unix::ffi::OsStrExt;
        let (img, scratch) = (self.img, self.scratch());
        let Some(root) = img.files.get(&img.fs.root_id).and_then(|f| f.reg.as_ref()) else {
            return Ok(());
        };
        let root = root.path();
        if root == Path::new("/") {
            return Ok(());
        }
        let mut c = root.as_os_str().as_bytes().to_vec();
        if c.contains(&0) {
            return Err(self.err(&format!("chroot to {}", root.display()))(
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        c.push(0);
        self.inj
            .write(scratch, &c)
            .and_then(|()| {
                self.inj
                    .syscall_ok("chroot", libc::SYS_chroot, [scratch, 0, 0, 0, 0, 0])
            })
            .map(drop)
            .map_err(self.err(&format!("chroot to {}", root.display())))
    }
}

impl Rebuild<'_> {
    /// Stage 7: the file locks the images give this process (`--file-locks`), each taken
    /// by the task through its own fd (see `files/lock.rs`), without waiting: a lock
    /// someone outside the tree holds now fails the restore. Called once the task has
    /// closed every fd the restore opened in it: a close drops the process's POSIX locks
    /// on that file. For the same reason, in an fd table that processes rebuilt later
    /// share (`CLONE_FILES`), whose own opens and closes would drop them, the POSIX locks
    /// wait for the last of those processes, which takes them for the table (its pid is
    /// the one /proc/locks then shows).
    pub(super) fn take_file_locks(&mut self) -> Result<(), RestoreError> {
        use crate::files::LockOp;
        let mut calls = self.opener.lock_calls(self.img.pid, &self.img.fdinfo)?;
        let is_posix = |c: &crate::files::LockCall| matches!(c.op, LockOp::Fcntl(libc::F_SETLK, _));
        if self.fd_table.left > 0 {
            let (posix, others): (Vec<_>, Vec<_>) = calls.into_iter().partition(is_posix);
            self.fd_table.posix_locks.extend(posix);
            calls = others;
        } else {
            calls.append(&mut self.fd_table.posix_locks);
        }
        let scratch = self.scratch();
        for call in calls {
            let fd = call.fd as u64;
            let taken = match &call.op {
                LockOp::Flock(op) => {
                    self.inj
                        .syscall_ok("flock", libc::SYS_flock, [fd, *op as u64, 0, 0, 0, 0])
                }
                LockOp::Lease(ty) | LockOp::BreakingLease { lease: ty, .. } => self.inj.syscall_ok(
                    "fcntl (F_SETLEASE)",
                    libc::SYS_fcntl,
                    [fd, libc::F_SETLEASE as u64, *ty as u64, 0, 0, 0],
                ),
                LockOp::Fcntl(cmd, arg) => self.inj.write(scratch, arg).and_then(|()| {
                    self.inj.syscall_ok(
                        "fcntl (lock)",
                        libc::SYS_fcntl,
                        [fd, *cmd as u64, scratch, 0, 0, 0],
                    )
                }),
            };
            if let Err(source) = taken {
                let conflict = matches!(
                    source.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::PermissionDenied
                );
                let mut what = format!("taking the {} again on fd {}", call.what, call.fd);
                if conflict {
                    what.push_str(
                        " (a process outside the tree holds a conflicting lock, or has the \
                         file open, for a lease)",
                    );
                }
                return Err(RestoreError::Task {
                    pid: self.pid,
                    what,
                    source,
                });
            }
            if let LockOp::BreakingLease {
                file, break_flags, ..
            } = call.op
            {
                self.opener.break_lease(file, break_flags)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> (PathBuf, i32, [u64; 6]) {
        (PathBuf::from(path), libc::O_RDONLY, [0; 6])
    }

    #[test]
    fn file_mappings_are_opened_in_rounds_that_fit() {
        let scratch = 0x10_0000;
        // Many short paths: a round stops at FILES_PER_ROUND files.
        let many: Vec<_> = (0..150).map(|i| file(&format!("/lib/x{i}.so"))).collect();
        let (paths, opens) = open_round(&many, scratch).unwrap();
        assert_eq!(opens.len(), FILES_PER_ROUND);
        let first = paths.iter().position(|&b| b == 0).unwrap();
        assert_eq!(&paths[..first], b"/lib/x0.so");
        assert_eq!(
            opens[1].2[1],
            scratch + first as u64 + 1,
            "paths side by side"
        );
        assert_eq!(opens[0].1, libc::SYS_openat);
        // Long paths: a round stops before the scratch area overflows.
        let long = "/".to_string() + &"d".repeat(4000);
        let big = vec![file(&long), file(&long), file(&long), file(&long)];
        let (paths, opens) = open_round(&big, scratch).unwrap();
        assert_eq!(opens.len(), 3);
        assert!(paths.len() <= SCRATCH_BYTES);
        // A path that can never fit is named.
        let huge = "/".to_string() + &"d".repeat(SCRATCH_BYTES);
        assert_eq!(open_round(&[file(&huge)], scratch).unwrap_err(), huge);
        // A path that is not UTF-8 is opened by its bytes.
        use std::os::unix::ffi::OsStrExt;
        let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/dir-\xff\xfe/lib.so"));
        let (paths, _) = open_round(&[(odd, libc::O_RDONLY, [0; 6])], scratch).unwrap();
        assert_eq!(paths, b"/dir-\xff\xfe/lib.so\0");
    }
}
