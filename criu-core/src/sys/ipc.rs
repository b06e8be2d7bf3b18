//! SysV message queues, semaphores and shared memory, and POSIX message queues.

use super::*;

/// A new POSIX message queue, open read-write, whose name `/name` is removed at once
/// (the queue lives on as long as a descriptor holds it). For tests of refusals.
pub fn mq_open_unlinked(name: &str) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(format!("/{name}"))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call; a null
    // attribute pointer asks for the default queue size.
    let fd = check(unsafe {
        libc::mq_open(
            name.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
            0o600 as libc::mode_t,
            std::ptr::null_mut::<libc::mq_attr>(),
        )
    } as libc::c_long)?;
    // SAFETY: the kernel just returned this new descriptor to us; nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::mq_unlink(name.as_ptr()) } as libc::c_long)?;
    Ok(fd)
}

/// msgctl(2) `IPC_STAT`: the state of the calling thread's IPC namespace's message
/// queue `id`.
pub fn msgctl_stat(id: i32) -> io::Result<libc::msqid_ds> {
    // SAFETY: msqid_ds is plain integers; all-zero is a valid value.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one struct msqid_ds into `ds`, which we own.
    check(unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) } as libc::c_long)?;
    Ok(ds)
}

/// `MSG_COPY` of linux/msg.h (needs CONFIG_CHECKPOINT_RESTORE).
pub(super) const MSG_COPY: libc::c_int = 0o40000;

/// msgrcv(2) with `MSG_COPY | IPC_NOWAIT`: a copy of message number `index` (0 is the
/// oldest) of queue `id`, left queued; `max_len` bounds its text. Returns (type, text).
/// ENOMSG past the last message; E2BIG when the text is longer than `max_len`.
pub fn msgrcv_copy(id: i32, index: usize, max_len: usize) -> io::Result<(i64, Vec<u8>)> {
    // struct msgbuf: a long type, then the text; u64 words keep the long aligned.
    let words = 1 + max_len.div_ceil(8);
    let mut buf = vec![0u64; words];
    // SAFETY: `buf` holds the type word plus at least `max_len` bytes of text, and the
    // kernel writes at most `max_len` text bytes after the type.
    let n = unsafe {
        libc::msgrcv(
            id,
            buf.as_mut_ptr().cast(),
            max_len,
            index as libc::c_long,
            MSG_COPY | libc::IPC_NOWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes: Vec<u8> = buf[1..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok((buf[0] as i64, bytes[..n as usize].to_vec()))
}

/// semctl(2) `IPC_STAT`: the state of semaphore set `id` of the calling thread's IPC
/// namespace.
pub fn semctl_stat(id: i32) -> io::Result<libc::semid_ds> {
    // SAFETY: semid_ds is plain integers; all-zero is a valid value.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    let ptr: *mut libc::semid_ds = &mut ds;
    // SAFETY: IPC_STAT takes a `struct semid_ds *` (the semun argument) and writes one
    // struct into `ds`, which we own.
    let ret = unsafe { libc::semctl(id, 0, libc::IPC_STAT, ptr) };
    check(ret as libc::c_long)?;
    Ok(ds)
}

/// semctl(2) `GETVAL`: the value of semaphore `num` of set `id`. (One call per
/// semaphore rather than `GETALL`, whose write into our buffer is sized by whatever set
/// holds the id at the time of the call, not by the caller.)
pub fn semctl_getval(id: i32, num: usize) -> io::Result<u16> {
    // SAFETY: GETVAL takes no pointer; the value comes back as the result.
    let v = check(unsafe { libc::semctl(id, num as libc::c_int, libc::GETVAL) } as libc::c_long)?;
    Ok(v as u16)
}

/// Owner, group and mode of a SysV object, as `IPC_SET` takes them.
#[derive(Debug, Clone, Copy)]
pub struct IpcOwner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u16,
}

/// msgget(2) with `IPC_CREAT | IPC_EXCL`: a new message queue of the calling thread's
/// IPC namespace.
pub fn msgget_new(key: i32, mode: u16) -> io::Result<i32> {
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | i32::from(mode & 0o777);
    // SAFETY: msgget has integer arguments only.
    check(unsafe { libc::msgget(key, flags) } as libc::c_long).map(|id| id as i32)
}

/// msgsnd(2) without waiting: one message of type `mtype` onto queue `id`.
pub fn msgsnd_nowait(id: i32, mtype: i64, text: &[u8]) -> io::Result<()> {
    // struct msgbuf: a long type, then the text; u64 words keep the long aligned.
    let mut buf = vec![0u64; 1 + text.len().div_ceil(8)];
    buf[0] = mtype as u64;
    // SAFETY: `buf` has room for the type word and `text.len()` bytes after it; the
    // bytes copied are `text`'s own.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf[1..].as_mut_ptr().cast(), text.len())
    };
    // SAFETY: msgsnd reads the type and `text.len()` bytes of text from `buf`.
    let ret = unsafe { libc::msgsnd(id, buf.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) };
    check(ret as libc::c_long).map(drop)
}

/// msgctl(2) `IPC_SET`: owner, mode and byte limit of queue `id`.
pub fn msgctl_set(id: i32, owner: IpcOwner, qbytes: u64) -> io::Result<()> {
    let mut ds = msgctl_stat(id)?;
    ds.msg_perm.uid = owner.uid;
    ds.msg_perm.gid = owner.gid;
    ds.msg_perm.mode = owner.mode;
    ds.msg_qbytes = qbytes as _;
    // SAFETY: IPC_SET reads one struct msqid_ds from `ds`, which we own.
    check(unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) } as libc::c_long).map(drop)
}

/// semget(2) with `IPC_CREAT | IPC_EXCL`: a new set of `nsems` semaphores.
pub fn semget_new(key: i32, nsems: usize, mode: u16) -> io::Result<i32> {
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | i32::from(mode & 0o777);
    // SAFETY: semget has integer arguments only.
    check(unsafe { libc::semget(key, nsems as libc::c_int, flags) } as libc::c_long)
        .map(|id| id as i32)
}

/// semctl(2) `SETALL` then `IPC_SET`: the values, owner and mode of set `id`.
pub fn semctl_restore(id: i32, values: &[u16], owner: IpcOwner) -> io::Result<()> {
    let stat = semctl_stat(id)?;
    if stat.sem_nsems as usize != values.len() {
        return Err(io::Error::other(format!(
            "semaphore set {id} has {} semaphores, {} values given",
            stat.sem_nsems,
            values.len()
        )));
    }
    // SAFETY: SETALL reads sem_nsems u16 values through the pointer: `values` has
    // exactly that many (checked above) and outlives the call.
    check(unsafe { libc::semctl(id, 0, libc::SETALL, values.as_ptr()) } as libc::c_long)?;
    let mut ds = stat;
    ds.sem_perm.uid = owner.uid;
    ds.sem_perm.gid = owner.gid;
    ds.sem_perm.mode = owner.mode;
    let ptr: *mut libc::semid_ds = &mut ds;
    // SAFETY: IPC_SET reads one struct semid_ds through the pointer, which is ours.
    check(unsafe { libc::semctl(id, 0, libc::IPC_SET, ptr) } as libc::c_long).map(drop)
}

/// shmctl(2) `IPC_STAT`: the state of shared memory segment `id` of the calling
/// thread's IPC namespace (also one marked removed, while attached).
pub fn shmctl_stat(id: i32) -> io::Result<libc::shmid_ds> {
    // SAFETY: shmid_ds is plain integers; all-zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one struct shmid_ds into `ds`, which we own.
    check(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } as libc::c_long)?;
    Ok(ds)
}

/// shmget(2) of an existing segment by `key` (never `IPC_PRIVATE`): its id, or `None`
/// when no segment of the calling thread's IPC namespace has that key.
pub fn shmget_existing(key: i32) -> io::Result<Option<i32>> {
    // SAFETY: shmget has integer arguments only; size 0 and no flags create nothing.
    match check(unsafe { libc::shmget(key, 0, 0) } as libc::c_long) {
        Ok(id) => Ok(Some(id as i32)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// shmget(2) with `IPC_CREAT | IPC_EXCL`: a new segment of `size` bytes with the
/// permission bits of `mode`.
pub fn shmget_new(key: i32, size: u64, mode: u16) -> io::Result<i32> {
    let size = usize::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | i32::from(mode & 0o777);
    // SAFETY: shmget has integer arguments only.
    check(unsafe { libc::shmget(key, size, flags) } as libc::c_long).map(|id| id as i32)
}

/// shmctl(2) `IPC_SET`: owner, group and permission bits of segment `id`.
pub fn shmctl_set(id: i32, owner: IpcOwner) -> io::Result<()> {
    let mut ds = shmctl_stat(id)?;
    ds.shm_perm.uid = owner.uid;
    ds.shm_perm.gid = owner.gid;
    ds.shm_perm.mode = owner.mode & 0o777;
    // SAFETY: IPC_SET reads one struct shmid_ds from `ds`, which we own.
    check(unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) } as libc::c_long).map(drop)
}

/// shmctl(2) `IPC_RMID`: segment `id` goes once nobody has it attached (at once when
/// nobody does); its key is free from now on.
pub fn shmctl_rmid(id: i32) -> io::Result<()> {
    // SAFETY: IPC_RMID reads no buffer.
    check(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) } as libc::c_long)
        .map(drop)
}

/// shmctl(2) `SHM_LOCK`: the pages of segment `id` stay in memory.
pub fn shmctl_lock(id: i32) -> io::Result<()> {
    // SAFETY: SHM_LOCK reads no buffer.
    check(unsafe { libc::shmctl(id, libc::SHM_LOCK, std::ptr::null_mut()) } as libc::c_long)
        .map(drop)
}

/// A SysV shared memory segment attached to this process where the kernel chooses
/// (shmat(2)), never accessed through its address: it exists to open the segment as a
/// file (`object`). Detached when dropped.
pub struct ShmAttachment {
    addr: u64,
    len: u64,
}

impl ShmAttachment {
    /// Attaches segment `id` (of the calling thread's IPC namespace) of `size` bytes,
    /// read-only unless `write`.
    pub fn new(id: i32, size: u64, write: bool) -> io::Result<ShmAttachment> {
        let flags = if write { 0 } else { libc::SHM_RDONLY };
        // SAFETY: a null address lets the kernel pick a free range, so the mapping aliases
        // nothing of ours; it is never dereferenced, and unmapped on drop.
        let addr = unsafe { libc::shmat(id, std::ptr::null(), flags) };
        if addr as isize == -1 {
            return Err(io::Error::last_os_error());
        }
        let attachment = ShmAttachment {
            addr: addr as u64,
            len: size.next_multiple_of(page_size()),
        };
        // Not inherited by tasks cloned from us meanwhile (a restore clones every task
        // from the restorer, and a process may run several at once): each copy would
        // count as an attachment of the segment until that task unmapped it.
        // SAFETY: the range is our own attachment; the advice changes only whether fork
        // copies it.
        let advised = unsafe { libc::madvise(addr, attachment.len as usize, libc::MADV_DONTFORK) };
        check(advised as libc::c_long)?;
        Ok(attachment)
    }

    /// The segment as an open file (through `/proc/self/map_files`, which needs
    /// CAP_SYS_ADMIN), read-write with `write`: it stays usable after the detach.
    pub fn object(&self, write: bool) -> io::Result<std::fs::File> {
        std::fs::File::options()
            .read(true)
            .write(write)
            .open(format!(
                "/proc/self/map_files/{:x}-{:x}",
                self.addr,
                self.addr + self.len
            ))
    }
}

impl Drop for ShmAttachment {
    fn drop(&mut self) {
        // SAFETY: `addr` is the start of an attachment this value made and owns; nothing
        // refers to its memory.
        unsafe { libc::shmdt(self.addr as *const libc::c_void) };
    }
}
