//! SysV shared memory of the tree: the attachments (VMAs that map a segment), and the
//! segments themselves with their contents, in `ipcns-shm-ID.img`.
//!
//! Which segments: in the tree's own IPC namespace, every segment, attached or not (as
//! CRIU); in the dumper's (host) namespace, only those the tree has attached, provided
//! nobody else has (beyond CRIU, which refuses every attachment there). "Nobody else" is
//! the kernel's attachment count: `shm_nattch` counts VMAs (one per shmat, one more per
//! fork, one more per split of a VMA by mprotect), so it must equal the number of VMAs
//! mapping the segment in the tree, each memory counted once however many tasks share
//! it. A segment marked removed (`IPC_RMID`: key 0, `SHM_DEST` in its mode) is still
//! attachable by id and is saved like the others; its mode says it was removed.
//!
//! An attachment is a first VMA at offset 0 and the VMAs that continue it (mprotect
//! splits one). One whose start was unmapped or moved, or that no longer covers the
//! whole segment, cannot be made again by shmat(2) and is refused.
//!
//! Contents: inline after each entry (the segment's size, padded to 4 bytes), not in
//! `pagemap-shmem-ID.img` with `in_pagemaps` as CRIU 4.2 writes them. CRIU 4.2 restores
//! both; crit (3.17 and 4.2) ignores `in_pagemaps` and always reads inline data, so it
//! misreads every image of CRIU's with more than one segment, and decodes ours. The image
//! keeps the holes of a sparse segment as holes of the file, so a big sparse segment
//! costs no more disk than its data.
//!
//! Segments are read while the tree is frozen. The segments of the host namespace that
//! were saved and not already removed are removed after a dump that kills the tree
//! (`remove_saved`): the images hold them, the tree that held them is gone, and a restore
//! makes them again under their keys, which a leftover would still hold.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use criu_images::{pb, ImageKind};

use super::mm;
use crate::proc::{MapEntry, ProcDir};
use crate::sys::{self, KcmpType, Pid};

/// `SHM_DEST` in a segment's mode: removed (`IPC_RMID`) while still attached.
pub const SHM_DEST: u32 = 0o1000;
/// `SHM_LOCKED` in a segment's mode: its pages are locked in memory (`SHM_LOCK`).
pub const SHM_LOCKED: u32 = 0o2000;
/// statfs(2) type of hugetlbfs, where `SHM_HUGETLB` segments live.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error(
        "process {pid}: the SysV shared memory segment {shmid} (key {key:#x}) attached at \
         {addr:#x} is also attached outside the tree ({nattch} attachments, {ours} of them \
         in the tree): a restore could not share it with the others again"
    )]
    AttachedOutside {
        pid: Pid,
        addr: u64,
        shmid: i32,
        key: u32,
        nattch: u64,
        ours: u64,
    },
    #[error(
        "process {pid}: the SysV shared memory attachment at {addr:#x} (segment {shmid}): {what}"
    )]
    Unsupported {
        pid: Pid,
        addr: u64,
        shmid: i32,
        what: String,
    },
    #[error(
        "process {pid}: the SysV shared memory segment {shmid} of its IPC namespace (attached \
         by nobody): {what}"
    )]
    Unattached { pid: Pid, shmid: i32, what: String },
    #[error("process {pid}: SysV shared memory: {what}: {source}")]
    Read {
        pid: Pid,
        what: String,
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: io::Error,
    },
}

fn read_err(pid: Pid, what: impl Into<String>) -> impl FnOnce(io::Error) -> ShmError {
    let what = what.into();
    move |source| ShmError::Read { pid, what, source }
}

/// Whether a mapping is a SysV shared memory attachment (maps names them
/// `/SYSV<key at creation> (deleted)`; the inode column is the segment's id).
pub fn is_sysv(map: &MapEntry) -> bool {
    map.path.starts_with("/SYSV")
}

/// The mappings of one shmat(2) in one task: `[start, end)`, made of `vmas` VMAs (the
/// first one ends at `first_end`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub shmid: i32,
    pub start: u64,
    pub end: u64,
    pub first_end: u64,
    pub vmas: u64,
}

/// The attachments among the mappings `maps` of `pid` (in address order, as maps lists
/// them). Refuses a SysV mapping that does not start an attachment (offset 0) nor
/// continue the one before it.
pub fn attachments(pid: Pid, maps: &[MapEntry]) -> Result<Vec<Attachment>, ShmError> {
    let mut out: Vec<Attachment> = Vec::new();
    for m in maps.iter().filter(|m| is_sysv(m)) {
        let shmid = m.inode as i32;
        if let Some(last) = out.last_mut() {
            let continues = last.shmid == shmid
                && last.end == m.start
                && m.offset != 0
                && m.offset == last.end - last.start;
            if continues {
                last.end = m.end;
                last.vmas += 1;
                continue;
            }
        }
        if m.offset != 0 {
            return Err(ShmError::Unsupported {
                pid,
                addr: m.start,
                shmid,
                what: format!(
                    "it maps the segment from offset {:#x}: the start of its attachment was \
                     unmapped or it was moved (shmat can only attach a whole segment)",
                    m.offset
                ),
            });
        }
        out.push(Attachment {
            shmid,
            start: m.start,
            end: m.end,
            first_end: m.end,
            vmas: 1,
        });
    }
    Ok(out)
}

/// What `verify` needs of a segment's state (`IPC_STAT`).
#[derive(Debug, Clone, Copy)]
struct Counted {
    size: u64,
    nattch: u64,
    key: u32,
}

impl From<&libc::shmid_ds> for Counted {
    fn from(ds: &libc::shmid_ds) -> Counted {
        Counted {
            size: ds.shm_segsz as u64,
            nattch: ds.shm_nattch,
            key: ds.shm_perm.__key as u32,
        }
    }
}

/// What the tree has attached of one segment.
#[derive(Debug, Clone)]
struct Attached {
    /// A task that has it attached, and its first attachment there.
    pid: Pid,
    first: Attachment,
    /// Every attachment seen, by task, to check each covers the whole segment.
    all: Vec<(Pid, Attachment)>,
    /// VMAs mapping it, each memory (mm) counted once: what `shm_nattch` must be.
    vmas: u64,
}

/// The tree's attachments, by segment id.
#[derive(Debug, Default)]
pub struct TreeAttachments {
    segments: BTreeMap<i32, Attached>,
}

impl TreeAttachments {
    /// Adds the attachments of `pid`; `count` is false for a task whose memory (mm) was
    /// already added through another task (CLONE_VM), whose VMAs the kernel counts once.
    pub fn add(&mut self, pid: Pid, atts: Vec<Attachment>, count: bool) {
        for a in atts {
            let seg = self.segments.entry(a.shmid).or_insert_with(|| Attached {
                pid,
                first: a.clone(),
                all: Vec::new(),
                vmas: 0,
            });
            if count {
                seg.vmas += a.vmas;
            }
            seg.all.push((pid, a));
        }
    }

    /// The attachments among `vmas` of `pid` (the dump's VMAs of a frozen task).
    pub fn add_vmas(&mut self, pid: Pid, vmas: &[mm::Vma], count: bool) -> Result<(), ShmError> {
        let maps: Vec<MapEntry> = vmas
            .iter()
            .filter(|v| is_sysv(&v.map))
            .map(|v| v.map.clone())
            .collect();
        if !maps.is_empty() {
            self.add(pid, attachments(pid, &maps)?, count);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Checks each attached segment against its state `ds` in the tree's IPC namespace
    /// (`None`: there is no such segment there): attached by the tree alone, and
    /// every attachment covering the whole segment.
    fn verify(&self, stats: &BTreeMap<i32, Option<Counted>>) -> Result<(), ShmError> {
        for (&shmid, seg) in &self.segments {
            let (pid, addr) = (seg.pid, seg.first.start);
            let Some(ds) = stats.get(&shmid).copied().flatten() else {
                return Err(ShmError::Unsupported {
                    pid,
                    addr,
                    shmid,
                    what: "it is not a segment of the tree's IPC namespace (attached before \
                           the process changed its IPC namespace?)"
                        .into(),
                });
            };
            let nattch = ds.nattch;
            if nattch != seg.vmas {
                return Err(ShmError::AttachedOutside {
                    pid,
                    addr,
                    shmid,
                    key: ds.key,
                    nattch,
                    ours: seg.vmas,
                });
            }
            let whole = ds.size.next_multiple_of(sys::page_size());
            for (pid, a) in &seg.all {
                if a.end - a.start != whole {
                    return Err(ShmError::Unsupported {
                        pid: *pid,
                        addr: a.start,
                        shmid,
                        what: format!(
                            "it maps {:#x} bytes of a segment of {:#x} (its end was \
                             unmapped; shmat can only attach a whole segment)",
                            a.end - a.start,
                            whole
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The segment attached in the tree at `first`, as an open file (through the task's
    /// `map_files`, without attaching it anywhere); refused when it is a hugetlb one.
    fn open(&self, shmid: i32) -> Result<File, ShmError> {
        let seg = &self.segments[&shmid];
        let (pid, a) = (seg.pid, &seg.first);
        let path = format!("/proc/{}/map_files/{:x}-{:x}", pid.0, a.start, a.first_end);
        let file = File::open(&path).map_err(read_err(pid, format!("opening {path}")))?;
        refuse_hugetlb(&file, pid, a.start, shmid)?;
        Ok(file)
    }
}

/// Why a segment (open as `file`) cannot be saved: a huge-page one.
fn hugetlb(file: &File, pid: Pid) -> Result<Option<String>, ShmError> {
    let fs = sys::fstatfs_type(file.as_fd()).map_err(read_err(pid, "statfs of a segment"))?;
    Ok((fs == HUGETLBFS_MAGIC)
        .then(|| "it is a huge-page segment (SHM_HUGETLB), whose pages are not saved".into()))
}

fn refuse_hugetlb(file: &File, pid: Pid, addr: u64, shmid: i32) -> Result<(), ShmError> {
    match hugetlb(file, pid)? {
        Some(what) => Err(ShmError::Unsupported {
            pid,
            addr,
            shmid,
            what,
        }),
        None => Ok(()),
    }
}

/// The state of segments `ids` in the IPC namespace of `root`, read from a helper thread
/// inside it (`None` for an id that names no segment there).
fn stat_in_ns(root: Pid, ids: Vec<i32>) -> Result<BTreeMap<i32, Option<Counted>>, ShmError> {
    let ns = File::open(format!("/proc/{}/ns/ipc", root.0))
        .map_err(read_err(root, "opening its IPC namespace"))?;
    let stats = sys::in_namespace_thread(ns.as_fd(), libc::CLONE_NEWIPC, || {
        ids.into_iter()
            .map(|id| match sys::shmctl_stat(id) {
                Ok(ds) => Ok((id, Some(Counted::from(&ds)))),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EIDRM)) => {
                    Ok((id, None))
                }
                Err(e) => Err(e),
            })
            .collect::<io::Result<BTreeMap<_, _>>>()
    })
    .map_err(read_err(root, "entering its IPC namespace"))?;
    stats.map_err(read_err(root, "reading the state of its segments"))
}

/// Stage 1 (nothing frozen yet): refuses SysV shared memory the dump could not save or
/// a restore could not attach again, in the tree `tree` (root first). Tasks other than
/// the root that are gone meanwhile are skipped: the frozen stage checks again.
pub fn check_tree(tree: &[Pid]) -> Result<(), ShmError> {
    let Some(&root) = tree.first() else {
        return Ok(());
    };
    let mut found = TreeAttachments::default();
    // One task per memory (mm) counted so far.
    let mut memories: Vec<Pid> = Vec::new();
    for &pid in tree {
        let maps = match ProcDir::open(pid).and_then(|d| d.maps_plain()) {
            Ok(maps) => maps,
            Err(_) if pid != root => continue,
            Err(e) => return Err(read_err(pid, "reading maps")(e)),
        };
        if !maps.iter().any(is_sysv) {
            continue;
        }
        let atts = attachments(pid, &maps)?;
        let counted = memories
            .iter()
            .any(|&other| sys::kcmp_same(pid, other, KcmpType::Vm).unwrap_or(false));
        if !counted {
            memories.push(pid);
        }
        found.add(pid, atts, !counted);
    }
    if found.is_empty() {
        return Ok(());
    }
    let stats = stat_in_ns(root, found.segments.keys().copied().collect())?;
    found.verify(&stats)?;
    for &shmid in found.segments.keys() {
        found.open(shmid)?;
    }
    Ok(())
}

/// What `save` wrote.
#[derive(Debug, Default)]
pub struct Saved {
    /// Segments of the host IPC namespace saved and not marked removed (`remove_saved`).
    pub host_ids: Vec<i32>,
    /// Bytes of contents saved (holes not counted).
    pub bytes: u64,
}

/// A segment to save: its state, and the segment as an open file.
struct Segment {
    id: i32,
    ds: libc::shmid_ds,
    object: File,
}

/// With the tree frozen: saves the SysV shared memory of the IPC namespace of the root
/// `root`, numbered `ns_id`, into `dir`/ipcns-shm-`ns_id`.img. `host`: that namespace
/// is the dumper's, where only the segments the tree attached (`attached`) are saved,
/// and an empty image is not written; in a namespace of the tree's own, every segment.
pub fn save(
    dir: &Path,
    attached: &TreeAttachments,
    root: Pid,
    ns_id: u32,
    host: bool,
) -> Result<Saved, ShmError> {
    if host && attached.is_empty() {
        return Ok(Saved::default());
    }
    let ns = File::open(format!("/proc/{}/ns/ipc", root.0))
        .map_err(read_err(root, "opening its IPC namespace"))?;
    let attached_ids: Vec<i32> = attached.segments.keys().copied().collect();
    // In the namespace: the state of every segment to save, and the unattached ones (own
    // namespace only) opened through a short read-only attachment of the helper's.
    type Found = (i32, Option<libc::shmid_ds>, Option<File>);
    let found = sys::in_namespace_thread(
        ns.as_fd(),
        libc::CLONE_NEWIPC,
        || -> io::Result<Vec<Found>> {
            let mut ids = attached_ids.clone();
            if !host {
                let table = std::fs::read_to_string("/proc/sysvipc/shm")?;
                for id in super::ns::sysvipc_ids(&table) {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
            let mut out = Vec::with_capacity(ids.len());
            let mut forced_off = None;
            for id in ids {
                let ds = match sys::shmctl_stat(id) {
                    Ok(ds) => ds,
                    Err(e)
                        if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EIDRM)) =>
                    {
                        out.push((id, None, None));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let object = if attached_ids.contains(&id) {
                    None
                } else {
                    if forced_off.is_none() {
                        forced_off = Some(RmidForcedOff::new()?);
                    }
                    let a = sys::ShmAttachment::new(id, ds.shm_segsz as u64, false)?;
                    Some(a.object(false)?)
                };
                out.push((id, Some(ds), object));
            }
            Ok(out)
        },
    )
    .map_err(read_err(root, "entering its IPC namespace"))?
    .map_err(read_err(root, "reading its segments"))?;
    let stats: BTreeMap<i32, Option<Counted>> = found
        .iter()
        .map(|(id, ds, _)| (*id, ds.as_ref().map(Counted::from)))
        .collect();
    attached.verify(&stats)?;
    let mut segments = Vec::with_capacity(found.len());
    for (id, ds, object) in found {
        // A segment removed between the listing and its stat is gone: nothing to save.
        let Some(ds) = ds else { continue };
        let object = match object {
            Some(object) => {
                if let Some(what) = hugetlb(&object, root)? {
                    return Err(ShmError::Unattached {
                        pid: root,
                        shmid: id,
                        what,
                    });
                }
                object
            }
            None => attached.open(id)?,
        };
        segments.push(Segment { id, ds, object });
    }
    segments.sort_by_key(|s| s.id);
    let path = dir.join(kind().file_name(ns_id));
    let bytes = write_image(&path, &segments).map_err(|source| ShmError::Write {
        path: path.clone(),
        source,
    })?;
    let host_ids = if host {
        segments
            .iter()
            .filter(|s| u32::from(s.ds.shm_perm.mode) & SHM_DEST == 0)
            .map(|s| s.id)
            .collect()
    } else {
        Vec::new()
    };
    Ok(Saved { host_ids, bytes })
}

/// `kernel.shm_rmid_forced` of the calling thread's IPC namespace, turned off until
/// dropped. Where it is on, a segment goes as soon as its count of attachments falls to 0:
/// the short attachment through which an unattached segment is read would destroy it.
/// Turning it on again destroys only segments with no attachment and no creator left,
/// and where it was on there are none (they went when their count fell to 0).
struct RmidForcedOff(bool);

const RMID_FORCED: &str = "/proc/sys/kernel/shm_rmid_forced";

impl RmidForcedOff {
    fn new() -> io::Result<RmidForcedOff> {
        let on = std::fs::read_to_string(RMID_FORCED)?.trim() != "0";
        if on {
            std::fs::write(RMID_FORCED, "0")?;
        }
        Ok(RmidForcedOff(on))
    }
}

impl Drop for RmidForcedOff {
    fn drop(&mut self) {
        if self.0 {
            if let Err(e) = std::fs::write(RMID_FORCED, "1") {
                tracing::error!(
                    "cannot turn kernel.shm_rmid_forced back on in the tree's IPC namespace: {e}"
                );
            }
        }
    }
}

fn kind() -> &'static ImageKind {
    // The table is static and holds this kind.
    ImageKind::by_name("IPCNS_SHM").expect("IPCNS_SHM is in the image table")
}

/// The image entry of a segment (its mode with `SHM_DEST` and `SHM_LOCKED`, as IPC_STAT
/// gives it); contents inline.
fn entry(s: &Segment) -> pb::IpcShmEntry {
    let perm = &s.ds.shm_perm;
    pb::IpcShmEntry {
        desc: pb::IpcDescEntry {
            key: perm.__key as u32,
            uid: perm.uid,
            gid: perm.gid,
            cuid: perm.cuid,
            cgid: perm.cgid,
            mode: u32::from(perm.mode),
            id: s.id as u32,
        },
        size: s.ds.shm_segsz as u64,
        in_pagemaps: Some(false),
        hugetlb_flag: None,
    }
}

/// Writes `ipcns-shm` at `path`: each entry followed by the segment's bytes padded to
/// 4, the segment's holes left as holes of the file. Returns the bytes of data copied.
fn write_image(path: &Path, segments: &[Segment]) -> io::Result<u64> {
    let out = criu_images::create_image_file(path)?;
    let header = kind().header();
    out.write_all_at(&header, 0)?;
    let mut pos = header.len() as u64;
    let mut copied = 0;
    let mut buf = vec![0u8; 1 << 20];
    for s in segments {
        let payload = prost::Message::encode_to_vec(&entry(s));
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&payload);
        out.write_all_at(&frame, pos)?;
        pos += frame.len() as u64;
        let size = s.ds.shm_segsz as u64;
        for (off, len) in mm::shmem_data_ranges(&s.object)? {
            let end = (off + len).min(size);
            let mut at = off;
            while at < end {
                let n = ((end - at) as usize).min(buf.len());
                s.object.read_exact_at(&mut buf[..n], at)?;
                out.write_all_at(&buf[..n], pos + at)?;
                at += n as u64;
                copied += n as u64;
            }
        }
        pos += size.next_multiple_of(4);
    }
    // A hole at the end still counts: the file is as long as its contents say.
    out.set_len(pos)?;
    Ok(copied)
}

/// After a dump that killed the tree: removes the segments of the host IPC namespace
/// that were saved (`Saved::host_ids`). Each goes once the dying tree has detached it;
/// its key is free at once, for the restore to create it again. Best effort: a segment
/// someone removed meanwhile is skipped.
pub fn remove_saved(ids: &[i32]) {
    for &id in ids {
        if let Err(e) = sys::shmctl_rmid(id) {
            tracing::warn!(id, "removing a saved SysV shared memory segment: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::parse_smaps;

    fn maps(text: &str) -> Vec<MapEntry> {
        parse_smaps(text).unwrap()
    }

    #[test]
    fn attachments_group_split_vmas() {
        let m = maps(
            "\
7f0000000000-7f0000004000 r--s 00000000 00:01 28                         /SYSV00007777 (deleted)
7f0000004000-7f0000005000 rw-s 00000000 00:01 28                         /SYSV00007777 (deleted)
7f0000005000-7f0000006000 r--s 00001000 00:01 28                         /SYSV00007777 (deleted)
7f0000006000-7f0000008000 rw-s 00002000 00:01 28                         /SYSV00007777 (deleted)
7f0000010000-7f0000011000 rw-p 00000000 00:00 0 
7f0000020000-7f0000022000 r--s 00000000 00:01 29                         /SYSV00000000 (deleted)
",
        );
        let a = attachments(Pid(1), &m).unwrap();
        assert_eq!(a.len(), 3);
        // Two attachments of segment 28 side by side: the second starts at offset 0.
        assert_eq!(
            (a[0].shmid, a[0].start, a[0].end, a[0].vmas),
            (28, 0x7f0000000000, 0x7f0000004000, 1)
        );
        assert_eq!(
            (a[1].start, a[1].end, a[1].first_end, a[1].vmas),
            (0x7f0000004000, 0x7f0000008000, 0x7f0000005000, 3)
        );
        assert_eq!((a[2].shmid, a[2].vmas), (29, 1));

        let mut t = TreeAttachments::default();
        t.add(Pid(1), a.clone(), true);
        // A second task with the same memory (CLONE_VM) is not counted again.
        t.add(Pid(2), a, false);
        assert_eq!(t.segments[&28].vmas, 4);
        assert_eq!(t.segments[&29].vmas, 1);
    }

    fn stat(size: u64, nattch: u64, key: u32) -> Counted {
        Counted { size, nattch, key }
    }

    /// The count of attachments decides who else has a segment, and each attachment
    /// must cover the segment whole.
    #[test]
    fn verify_counts_attachments_and_their_length() {
        let m = maps(
            "\
7f0000004000-7f0000005000 rw-s 00000000 00:01 28                         /SYSV00007777 (deleted)
7f0000005000-7f0000006000 r--s 00001000 00:01 28                         /SYSV00007777 (deleted)
",
        );
        let mut t = TreeAttachments::default();
        t.add(Pid(5), attachments(Pid(5), &m).unwrap(), true);
        let with = |ds: Option<Counted>| BTreeMap::from([(28, ds)]);
        t.verify(&with(Some(stat(8192, 2, 0x7777)))).unwrap();
        // A third attachment nobody in the tree has.
        let err = t.verify(&with(Some(stat(8192, 3, 0x7777)))).unwrap_err();
        assert!(
            matches!(
                err,
                ShmError::AttachedOutside {
                    pid: Pid(5),
                    addr: 0x7f0000004000,
                    shmid: 28,
                    key: 0x7777,
                    nattch: 3,
                    ours: 2
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("process 5")
                && msg.contains("0x7f0000004000")
                && msg.contains("key 0x7777"),
            "{msg}"
        );
        // A segment of three pages of which the attachment maps two: its end was unmapped.
        let err = t
            .verify(&with(Some(stat(3 * 4096, 2, 0x7777))))
            .unwrap_err();
        assert!(
            matches!(err, ShmError::Unsupported { shmid: 28, .. }),
            "{err}"
        );
        // No such segment in the tree's namespace.
        let err = t.verify(&with(None)).unwrap_err();
        assert!(
            err.to_string()
                .contains("not a segment of the tree's IPC namespace"),
            "{err}"
        );
    }

    #[test]
    fn a_headless_attachment_is_refused() {
        let m = maps(
            "7f0000005000-7f0000006000 r--s 00001000 00:01 28                         /SYSV00007777 (deleted)\n",
        );
        let err = attachments(Pid(7), &m).unwrap_err();
        assert!(
            matches!(
                err,
                ShmError::Unsupported {
                    pid: Pid(7),
                    addr: 0x7f0000005000,
                    shmid: 28,
                    ..
                }
            ),
            "{err}"
        );
    }
}
