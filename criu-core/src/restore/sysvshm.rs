//! SysV shared memory: the segments of `ipcns-shm-ID.img` made again (stage 2, once the
//! root is in its IPC namespace), attached by each task at its dumped address (stage 5),
//! and removed again (`IPC_RMID`) at the end when they had been.
//!
//! In a new IPC namespace of the tree's own each segment gets its old id, as CRIU does
//! it: `kernel.shm_next_id` of that namespace is set to it before the shmget. In the
//! restorer's own (host) namespace, or one the tree joins, the old id is asked for the
//! same way when it is free there, and another one is taken when it is not (or when a
//! shmget elsewhere on the machine used the setting first): the tasks attach by the new
//! id, at the same address; a program that kept the number finds another there.
//!
//! Contents come inline after the entry (what our dump writes, and CRIU before 3.x) or
//! from `pagemap-shmem-ID.img` (`in_pagemaps`, what CRIU 4.2 writes). Pages of zeros are
//! not written, so a sparse segment stays sparse.
//!
//! A segment that was removed (`SHM_DEST` in its mode) is created under key 0
//! (`IPC_PRIVATE`, the key a removed segment has), attached, and removed again once
//! every task is rebuilt; it then goes when the last task detaches it, as before. Its
//! name in maps (`/SYSV<key at creation>`) then shows key 0 whatever key it was created
//! with: the image does not keep that key. Owner and group come back; the creator ids
//! (`cuid`, `cgid`) are the restorer's, as with CRIU.
//!
//! The restorer keeps an attachment of each segment until every task has attached its
//! own: where `kernel.shm_rmid_forced` is on, a segment goes as soon as nobody has it
//! attached. A segment nobody had attached cannot come back there: made by a helper
//! thread of the restorer, it has no creator left, and goes when that attachment does.
//! (CRIU's restore loses every segment there: it detaches each after filling it.)
//!
//! Until the commit the guard (`Created`) removes every segment it made, so a failed
//! restore leaves none behind, in the host namespace too.

use super::*;

use crate::dump::sysvshm::{SHM_DEST, SHM_LOCKED};

/// Where a segment's contents are in the images.
#[derive(Debug, Clone, Copy)]
enum Contents {
    /// At this offset of the `ipcns-shm` image, the segment's size padded to 4.
    Inline(u64),
    /// In `pagemap-shmem-<id>.img` and its pages.
    Pagemaps,
}

/// One segment of the images.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    entry: pb::IpcShmEntry,
    contents: Contents,
}

impl Segment {
    fn old_id(&self) -> u32 {
        self.entry.desc.id
    }

    fn removed(&self) -> bool {
        self.entry.desc.mode & SHM_DEST != 0
    }
}

/// The segments of the tree's IPC namespace, as stage 1 read them.
#[derive(Debug, Clone)]
pub(super) struct Segments {
    /// The `ipcns-shm` image.
    image: PathBuf,
    segments: Vec<Segment>,
}

fn bad(image: &Path, what: impl Into<String>) -> RestoreError {
    RestoreError::BadImage {
        image: image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        what: what.into(),
    }
}

/// Reads the entries of an `ipcns-shm` image (without its contents: their offsets).
fn read_image(path: &Path) -> Result<Vec<Segment>, RestoreError> {
    let file = File::open(path).map_err(|e| bad(path, e.to_string()))?;
    let len = file.metadata().map_err(|e| bad(path, e.to_string()))?.len();
    let kind = criu_images::ImageKind::by_name("IPCNS_SHM")
        .ok_or_else(|| unsupported("a schema without IPCNS_SHM"))?;
    let header = kind.header();
    let mut magic = vec![0u8; header.len()];
    file.read_exact_at(&mut magic, 0)
        .map_err(|e| bad(path, format!("no header: {e}")))?;
    if magic != header {
        return Err(bad(path, "is not an ipcns-shm image (wrong magic)"));
    }
    let mut pos = header.len() as u64;
    let mut out = Vec::new();
    while pos < len {
        let mut word = [0u8; 4];
        file.read_exact_at(&mut word, pos)
            .map_err(|e| bad(path, format!("entry {} at {pos}: {e}", out.len())))?;
        let size = u64::from(u32::from_le_bytes(word));
        // An entry is a few dozen bytes; anything far larger is a corrupt length.
        if size > 4096 || pos + 4 + size > len {
            return Err(bad(
                path,
                format!("entry {} at {pos}: length {size}", out.len()),
            ));
        }
        let mut payload = vec![0u8; size as usize];
        file.read_exact_at(&mut payload, pos + 4)
            .map_err(|e| bad(path, format!("entry {} at {pos}: {e}", out.len())))?;
        let entry = <pb::IpcShmEntry as prost::Message>::decode(payload.as_slice())
            .map_err(|e| bad(path, format!("entry {} at {pos}: {e}", out.len())))?;
        pos += 4 + size;
        if entry.hugetlb_flag.is_some_and(|f| f != 0) {
            return Err(unsupported(format!(
                "the huge-page SysV shared memory segment {}",
                entry.desc.id
            )));
        }
        let contents = if entry.in_pagemaps == Some(true) {
            Contents::Pagemaps
        } else {
            let at = pos;
            pos += entry.size.next_multiple_of(4);
            if pos > len {
                return Err(bad(
                    path,
                    format!(
                        "segment {} ends before its {} bytes",
                        entry.desc.id, entry.size
                    ),
                ));
            }
            Contents::Inline(at)
        };
        out.push(Segment { entry, contents });
    }
    Ok(out)
}

/// Stage 1: the SysV shared memory segments of the root's IPC namespace (`None` when
/// there are none), checked against the attachments of every process: each names a
/// segment of the images and covers it whole, as one shmat(2) makes it. In the
/// restorer's own namespace a segment's key must be free.
pub(super) fn load(
    dir: &Path,
    procs: &[Images],
    host_ids: Option<&pb::TaskKobjIdsEntry>,
) -> Result<Option<Segments>, RestoreError> {
    let Some(ns_id) = procs[0].ids.ipc_ns_id else {
        return Ok(None);
    };
    let image = dir.join(format!("ipcns-shm-{ns_id}.img"));
    let segments = if image.exists() {
        read_image(&image)?
    } else {
        Vec::new()
    };
    for p in procs {
        check_attachments(p, &segments)?;
    }
    if segments.is_empty() {
        return Ok(None);
    }
    let host = host_ids.is_none_or(|h| h.ipc_ns_id == Some(ns_id));
    if host {
        for s in segments.iter().filter(|s| s.entry.desc.key != 0) {
            let key = s.entry.desc.key;
            let held = sys::shmget_existing(key as i32)
                .map_err(|e| terr(Pid(std::process::id() as i32), "looking up a SysV key")(e))?;
            if let Some(id) = held {
                return Err(unsupported(format!(
                    "the SysV shared memory segment {} again: its key {key:#x} is taken by \
                     segment {id} of this IPC namespace (remove it with `ipcrm -m {id}` if \
                     it is a leftover of the dumped tree)",
                    s.old_id()
                )));
            }
        }
    }
    Ok(Some(Segments { image, segments }))
}

/// Stage 1 for the SysV attachments of process `p`: each a first mapping at offset 0 and
/// the ones continuing it, together exactly as long as the segment (pages rounded up).
fn check_attachments(p: &Images, segments: &[Segment]) -> Result<(), RestoreError> {
    let image = format!("mm-{}.img", p.pid.0);
    let bad = |what: String| RestoreError::BadImage {
        image: image.clone(),
        what,
    };
    // (segment, start, end) of the attachment being followed.
    let mut open: Option<(u64, u64, u64)> = None;
    let close = |att: Option<(u64, u64, u64)>| -> Result<(), RestoreError> {
        let Some((shmid, start, end)) = att else {
            return Ok(());
        };
        let seg = segments
            .iter()
            .find(|s| u64::from(s.old_id()) == shmid)
            .ok_or_else(|| {
                bad(format!(
                    "the SysV attachment at {start:#x} names segment {shmid}, which the \
                     images lack"
                ))
            })?;
        let whole = seg.entry.size.next_multiple_of(PAGE);
        if end - start != whole {
            return Err(unsupported(format!(
                "process {}: the SysV attachment at {start:#x} covers {:#x} bytes of \
                 segment {shmid}, which has {whole:#x}",
                p.pid,
                end - start
            )));
        }
        Ok(())
    };
    for v in
        p.mm.vmas
            .iter()
            .filter(|v| v.status & VMA_AREA_SYSVIPC != 0)
    {
        match open {
            Some((shmid, start, end))
                if v.pgoff != 0 && v.shmid == shmid && v.start == end && v.pgoff == end - start =>
            {
                open = Some((shmid, start, v.end));
            }
            _ if v.pgoff != 0 => {
                return Err(unsupported(format!(
                    "process {}: the SysV mapping at {:#x} of segment {} from offset {:#x} \
                     (not a whole attachment)",
                    p.pid, v.start, v.shmid, v.pgoff
                )))
            }
            _ => {
                close(open.take())?;
                open = Some((v.shmid, v.start, v.end));
            }
        }
    }
    close(open)
}

/// Writes `kernel.shm_next_id` of the calling thread's IPC namespace.
fn set_next_id(id: i64) -> std::io::Result<()> {
    std::fs::write("/proc/sys/kernel/shm_next_id", id.to_string())
        .map_err(|e| std::io::Error::new(e.kind(), format!("kernel.shm_next_id: {e}")))
}

/// The restorer's segments made in the host namespace take turns with `shm_next_id`,
/// which is one setting for everyone there (tests restore several trees at once).
static NEXT_ID: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The segments made for the tree: old id to new one. Until `commit`, dropping it
/// removes them all (a restore that failed).
pub(super) struct Created {
    /// The IPC namespace they are in (none made: `None`).
    ns: Option<File>,
    /// (old id, new id, removed at dump time).
    made: Vec<(u32, i32, bool)>,
    /// Our own attachment of each, kept until the tasks have theirs: a segment whose
    /// count of attachments falls to 0 goes at once where `kernel.shm_rmid_forced` is set
    /// (and, made by a helper thread that is gone, it has no creator to keep it).
    held: Vec<sys::ShmAttachment>,
    armed: bool,
}

impl Created {
    fn none() -> Created {
        Created {
            ns: None,
            made: Vec::new(),
            held: Vec::new(),
            armed: false,
        }
    }

    /// The id of the segment that had `old` at dump time.
    fn new_id(&self, old: u64) -> Option<i32> {
        self.made
            .iter()
            .find(|(o, _, _)| u64::from(*o) == old)
            .map(|&(_, new, _)| new)
    }

    /// Runs `work` on each of `ids` from a thread in the segments' IPC namespace.
    fn in_ns(&self, ids: Vec<i32>, work: fn(i32) -> std::io::Result<()>) -> std::io::Result<()> {
        let Some(ns) = &self.ns else {
            return Ok(());
        };
        sys::in_namespace_thread(ns.as_fd(), libc::CLONE_NEWIPC, || {
            ids.into_iter().try_for_each(work)
        })?
    }

    /// Once every task has attached its segments: removes again (`IPC_RMID`) those that
    /// had been removed at dump time (each goes when its last task detaches it), and
    /// detaches ours.
    pub(super) fn remove_again(&mut self) -> Result<(), RestoreError> {
        let ids: Vec<i32> = self.made.iter().filter(|m| m.2).map(|m| m.1).collect();
        self.in_ns(ids, sys::shmctl_rmid).map_err(terr(
            Pid(std::process::id() as i32),
            "removing SysV segments again",
        ))?;
        self.held.clear();
        Ok(())
    }

    /// The tree runs with its segments: they are its own from now on.
    pub(super) fn commit(mut self) {
        self.armed = false;
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let ids = self.made.iter().map(|m| m.1).collect();
        if let Err(e) = self.in_ns(ids, sys::shmctl_rmid) {
            tracing::warn!("removing the SysV segments of a failed restore: {e}");
        }
    }
}

/// Stage 2: makes the segments `segments` again in the IPC namespace of `root` (our
/// number of the root task), with their contents, owner and mode. `fresh`: that
/// namespace was just created for the tree, where every segment must get its old id;
/// `next_id` is the `shm_next_id` it had, put back afterwards.
pub(super) fn create(
    dir: &Path,
    segments: Option<&Segments>,
    root: Pid,
    fresh: bool,
    next_id: Option<u32>,
) -> Result<Created, RestoreError> {
    let Some(segs) = segments else {
        return Ok(Created::none());
    };
    let me = Pid(std::process::id() as i32);
    let ns = File::open(format!("/proc/{}/ns/ipc", root.0))
        .map_err(terr(root, "opening its IPC namespace"))?;
    let mut created = Created {
        ns: Some(ns),
        made: Vec::new(),
        held: Vec::new(),
        armed: true,
    };
    let image = File::open(&segs.image).map_err(|e| bad(&segs.image, e.to_string()))?;
    let _turn = (!fresh).then(|| NEXT_ID.lock().unwrap_or_else(|p| p.into_inner()));
    let ns_fd = created.ns.as_ref().map(|f| f.as_fd()).ok_or_else(|| {
        terr(root, "opening its IPC namespace")(std::io::Error::from(std::io::ErrorKind::NotFound))
    })?;
    // Made one by one; those made before an error are in `made`, for the guard.
    let (mut made, mut held) = (Vec::new(), Vec::new());
    let result = sys::in_namespace_thread(ns_fd, libc::CLONE_NEWIPC, || {
        for s in &segs.segments {
            let id = make_one(s, fresh)?;
            made.push((s.old_id(), id, s.removed()));
            held.push(fill(dir, &image, s, id)?);
        }
        if let Some(n) = next_id.filter(|_| fresh) {
            set_next_id(i64::from(n as i32))
                .map_err(|e| FillFailure::Io("restoring kernel.shm_next_id".into(), e))?;
        }
        Ok::<(), FillFailure>(())
    });
    (created.made, created.held) = (made, held);
    match result {
        Ok(Ok(())) => {}
        Ok(Err(FillFailure::Io(what, e))) => return Err(terr(root, &what)(e)),
        Ok(Err(FillFailure::Image(e))) => return Err(e),
        Err(e) => return Err(terr(me, "entering the tree's IPC namespace")(e)),
    }
    for &(old, new, _) in &created.made {
        if new as u32 != old {
            tracing::info!(old, new, "a SysV shared memory segment has a new id");
        }
    }
    Ok(created)
}

/// Why making a segment failed.
enum FillFailure {
    Io(String, std::io::Error),
    Image(RestoreError),
}

/// Creates segment `s` in the calling thread's IPC namespace, with owner and mode, and
/// locked if it was; returns its id. `fresh`: it must get its old id.
fn make_one(s: &Segment, fresh: bool) -> Result<i32, FillFailure> {
    let d = &s.entry.desc;
    let io = |what: String| move |e| FillFailure::Io(what, e);
    // A free old id is asked for; in a fresh namespace every id is free.
    let free = fresh
        || matches!(
            sys::shmctl_stat(d.id as i32).map_err(|e| e.raw_os_error()),
            Err(Some(libc::EINVAL))
        );
    if free {
        set_next_id(i64::from(d.id)).map_err(io(format!("asking for id {}", d.id)))?;
    }
    // A removed segment has key 0 (IPC_PRIVATE), and gets the same.
    let key = if s.removed() { 0 } else { d.key as i32 };
    let made = sys::shmget_new(key, s.entry.size, d.mode as u16);
    if made.is_err() && free {
        // The setting would give the next segment anyone makes here this id.
        let _ = set_next_id(-1);
    }
    let id = made.map_err(io(format!(
        "creating SysV shared memory segment {} (key {:#x}, {} bytes)",
        d.id, d.key, s.entry.size
    )))?;
    if fresh && id as u32 != d.id {
        return Err(FillFailure::Io(
            format!("creating SysV shared memory segment {}", d.id),
            std::io::Error::other(format!("it came back as {id}")),
        ));
    }
    let owner = sys::IpcOwner {
        uid: d.uid,
        gid: d.gid,
        mode: d.mode as u16,
    };
    sys::shmctl_set(id, owner).map_err(io(format!("setting the owner of segment {id}")))?;
    if d.mode & SHM_LOCKED != 0 {
        sys::shmctl_lock(id).map_err(io(format!("locking segment {id}")))?;
    }
    Ok(id)
}

/// Fills segment `id` (the images' `s`) with its saved contents, through an attachment
/// of our own, which it returns; pages of zeros are skipped (the segment is all zeros,
/// holes).
fn fill(dir: &Path, image: &File, s: &Segment, id: i32) -> Result<sys::ShmAttachment, FillFailure> {
    let what = || format!("filling SysV shared memory segment {id}");
    let attachment =
        sys::ShmAttachment::new(id, s.entry.size, true).map_err(|e| FillFailure::Io(what(), e))?;
    let object = attachment
        .object(true)
        .map_err(|e| FillFailure::Io(what(), e))?;
    match s.contents {
        Contents::Pagemaps => {
            fill_shmem(dir, u64::from(s.old_id()), &object).map_err(FillFailure::Image)?;
        }
        Contents::Inline(at) => {
            let mut buf = vec![0u8; 1 << 20];
            let size = s.entry.size;
            let mut done = 0u64;
            while done < size {
                let n = ((size - done) as usize).min(buf.len());
                image
                    .read_exact_at(&mut buf[..n], at + done)
                    .map_err(|e| FillFailure::Io(format!("reading segment {}", s.old_id()), e))?;
                for (i, page) in buf[..n].chunks(PAGE as usize).enumerate() {
                    if page.iter().any(|&b| b != 0) {
                        let off = done + i as u64 * PAGE;
                        object
                            .write_all_at(page, off)
                            .map_err(|e| FillFailure::Io(what(), e))?;
                    }
                }
                done += n as u64;
            }
        }
    }
    Ok(attachment)
}

impl Rebuild<'_> {
    /// Stage 5 for a SysV mapping `v`: the first mapping of an attachment attaches the
    /// whole segment at its address (read-only when it was attached so), the mappings
    /// continuing it are covered by that one (their protections come with the others').
    pub(super) fn attach_sysv(&mut self, v: &pb::VmaEntry) -> Result<(), RestoreError> {
        if v.pgoff != 0 {
            return Ok(());
        }
        let id = self
            .sysv
            .new_id(v.shmid)
            .ok_or_else(|| RestoreError::BadImage {
                image: format!("mm-{}.img", self.img.pid.0),
                what: format!(
                    "the SysV attachment at {:#x} names segment {}, which was not made",
                    v.start, v.shmid
                ),
            })?;
        // As CRIU decides: writable unless the mapping's file mode says read-only.
        let read_only = v
            .fdflags
            .is_some_and(|f| f & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32);
        let flags = if read_only { libc::SHM_RDONLY } else { 0 };
        let what = format!("attaching SysV segment {id} at {:#x}", v.start);
        let at = self
            .inj
            .syscall_ok(
                "shmat",
                libc::SYS_shmat,
                [id as u64, v.start, flags as u64, 0, 0, 0],
            )
            .map_err(self.err(&what))?;
        if at != v.start {
            return Err(self.err(&what)(std::io::Error::other(format!(
                "attached at {at:#x}"
            ))));
        }
        Ok(())
    }
}
