//! tp-sysvshm: SysV shared memory segments, attached in every way a restore must rebuild,
//! in the program's IPC namespace (`--own-ipc-ns yes`: a new one it makes first, as a
//! container has) or in the one it was started in.
//!
//! Segments (keys `--key-base` + 1..6, so that runs side by side do not meet):
//! - `shared` (key +1): 3 pages + 100 bytes, mode 0640, owner 4321:8765, a pattern; its
//!   second page made read-only by mprotect (one attachment in three VMAs), shared with
//!   a forked child, and attached a second time read-only (SHM_RDONLY) by the parent;
//! - `readonly` (key +2): 2 pages, filled through a first attachment, then attached
//!   read-only (SHM_RDONLY) only, and locked (SHM_LOCK);
//! - `removed` (IPC_PRIVATE): 2 pages, shared with the child, marked removed (IPC_RMID);
//! - `unattached` (key +4, own namespace only): 1 page + 5 bytes with a pattern, attached
//!   by nobody;
//! - `board` (key +5): 1 page through which parent and child talk;
//! - `sparse` (key +6): 16 MiB with only pages 0 and 2048 written.
//!
//! Files: `PATH.shm` (`NAME ID KEY ADDRESS SIZE` per segment; address `-` when not
//! attached).
//!
//! Check: every SysV mapping of the parent is where it was with the same protection,
//! offset and name; each segment's key, size, owner, mode (`SHM_DEST` for `removed`,
//! `SHM_LOCKED` for `readonly`) and attachment count (the VMAs mapping it in parent and
//! child); its id the same in a namespace of its own (elsewhere it may change); the
//! patterns, and zeros elsewhere in `sparse`, which is still sparse (resident < 1 MiB);
//! a write through a SHM_RDONLY attachment is refused (mprotect gives EACCES), through
//! the mprotect-ed part of `shared` it is allowed; a nonce written by the parent through
//! `board` is answered by the child through `shared` and `removed`, and shows through
//! both of the parent's attachments of `shared`; the child's attachments are at the
//! parent's addresses. Then it removes its segments. `--expect criu` leaves out what CRIU
//! 4.2's restore does not keep (SHM_LOCK, removing again, holes, SHM_RDONLY of a second
//! attachment of a segment also attached writable).

use std::os::raw::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criu_testprogs::{
    check_pattern, cvt, fill_pattern, random_seed, wait_until, write_atomic, Program, Report,
};

const PAGE: usize = 4096;
const SHM_DEST: u32 = 0o1000;
const SHM_LOCKED: u32 = 0o2000;
const SPARSE_BYTES: usize = 16 << 20;
const SPARSE_PAGES: [usize; 2] = [0, 2048];

/// One segment of the program.
struct Segment {
    name: &'static str,
    key: i32,
    size: usize,
    /// Its id at `ready`.
    id: c_int,
    /// Its (first) attachment in the parent, if any.
    addr: Option<usize>,
    seed: u64,
    /// Bits the mode must have besides the permissions.
    flags: u32,
    uid: u32,
    gid: u32,
    perm: u32,
}

fn shmget(key: i32, size: usize, mode: c_int) -> std::io::Result<c_int> {
    // SAFETY: shmget has integer arguments only.
    cvt(unsafe { libc::shmget(key, size, libc::IPC_CREAT | libc::IPC_EXCL | mode) })
}

fn shmat(id: c_int, flags: c_int) -> std::io::Result<usize> {
    // SAFETY: the kernel picks a free address, so the attachment aliases nothing of ours.
    let addr = unsafe { libc::shmat(id, std::ptr::null(), flags) };
    if addr as isize == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(addr as usize)
}

fn shmdt(addr: usize) {
    // SAFETY: `addr` is an attachment of ours that nothing refers to any more.
    unsafe { libc::shmdt(addr as *const libc::c_void) };
}

fn shmctl(id: c_int, cmd: c_int) -> std::io::Result<libc::shmid_ds> {
    // SAFETY: shmid_ds is plain integers; all-zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes, IPC_SET reads one shmid_ds; the others read nothing.
    cvt(unsafe { libc::shmctl(id, cmd, &mut ds) })?;
    Ok(ds)
}

/// The `len` bytes at `addr` as words (the whole words of them).
fn words<'a>(addr: usize, len: usize) -> &'a [u64] {
    // SAFETY: callers pass an attachment at least `len` bytes long that stays attached
    // while the slice is used; any bit pattern is a valid u64.
    unsafe { std::slice::from_raw_parts(addr as *const u64, len / 8) }
}

fn words_mut<'a>(addr: usize, len: usize) -> &'a mut [u64] {
    // SAFETY: as `words`, and the attachment is writable.
    unsafe { std::slice::from_raw_parts_mut(addr as *mut u64, len / 8) }
}

/// Word `index` of shared memory at `addr`, which another process writes too.
fn cell<'a>(addr: usize, index: usize) -> &'a AtomicU64 {
    // SAFETY: callers pass a writable attachment holding word `index` that stays attached;
    // shared words are only accessed atomically.
    unsafe { &*((addr as *const AtomicU64).add(index)) }
}

/// The board's words: 0 the parent's nonce, 1 the child's answer to it.
const NONCE: usize = 0;
const ANSWER: usize = 1;

/// The words the child writes its answers to: the last whole word of `shared`, the first
/// of `removed` (the patterns leave them out).
fn shared_echo(size: usize) -> usize {
    size / 8 - 1
}
const REMOVED_ECHO: usize = 0;

/// The SysV lines of /proc/PID/maps: (start, end, perms, offset, inode, name).
type MapLine = (u64, u64, String, u64, u64, String);

fn sysv_maps(pid: &str) -> std::io::Result<Vec<MapLine>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(text
        .lines()
        .filter(|l| l.contains("/SYSV"))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms, offset) = (f.next()?, f.next()?, f.next()?);
            let _dev = f.next()?;
            let inode: u64 = f.next()?.parse().ok()?;
            let name = f.collect::<Vec<_>>().join(" ");
            let (s, e) = range.split_once('-')?;
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
                perms.to_owned(),
                u64::from_str_radix(offset, 16).ok()?,
                inode,
                name,
            ))
        })
        .collect())
}

fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// The child: answers each nonce `n` on the board with n+1 in `shared`, n+2 in `removed`,
/// then n on the board.
fn child(board: usize, shared: usize, shared_size: usize, removed: usize) -> ! {
    die_with_parent();
    loop {
        let nonce = cell(board, NONCE).load(Ordering::SeqCst);
        if nonce != 0 && cell(board, ANSWER).load(Ordering::SeqCst) != nonce {
            cell(shared, shared_echo(shared_size)).store(nonce + 1, Ordering::SeqCst);
            cell(removed, REMOVED_ECHO).store(nonce + 2, Ordering::SeqCst);
            cell(board, ANSWER).store(nonce, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Every setup step; returns the segments, the child, and the second (read-only)
/// attachment of `shared`.
/// What `set_up` makes.
struct Options {
    key_base: i32,
    own_ns: bool,
    /// Make `unattached` (own namespace only).
    unattached: bool,
    /// Turn `kernel.shm_rmid_forced` on once all is set up (own namespace only).
    rmid_forced: bool,
}

fn set_up(o: &Options) -> std::io::Result<(Vec<Segment>, libc::pid_t, usize)> {
    let (key_base, own_ns) = (o.key_base, o.own_ns);
    if own_ns {
        // SAFETY: unshare has integer arguments only.
        cvt(unsafe { libc::unshare(libc::CLONE_NEWIPC) })?;
    }
    let mut segs = Vec::new();
    let mut make = |name, key: i32, size: usize, perm: u32| -> std::io::Result<usize> {
        let id = shmget(key, size, perm as c_int)?;
        segs.push(Segment {
            name,
            key,
            size,
            id,
            addr: None,
            seed: random_seed(),
            flags: 0,
            uid: 0,
            gid: 0,
            perm,
        });
        Ok(segs.len() - 1)
    };
    let shared = make("shared", key_base + 1, 3 * PAGE + 100, 0o640)?;
    let readonly = make("readonly", key_base + 2, 2 * PAGE, 0o600)?;
    let removed = make("removed", libc::IPC_PRIVATE, 2 * PAGE, 0o600)?;
    let unattached = if own_ns && o.unattached {
        Some(make("unattached", key_base + 4, PAGE + 5, 0o644)?)
    } else {
        None
    };
    let board = make("board", key_base + 5, PAGE, 0o600)?;
    let sparse = make("sparse", key_base + 6, SPARSE_BYTES, 0o600)?;

    // Contents, each through a writable attachment.
    for s in segs.iter_mut() {
        let addr = shmat(s.id, 0)?;
        let w = words_mut(addr, s.size);
        match s.name {
            "shared" => fill_pattern(&mut w[..shared_echo(s.size)], s.seed, 0),
            "removed" => fill_pattern(&mut w[1..], s.seed, 1),
            "board" => {}
            "sparse" => {
                for page in SPARSE_PAGES {
                    let at = page * PAGE / 8;
                    fill_pattern(&mut w[at..at + PAGE / 8], s.seed, at as u64);
                }
            }
            _ => fill_pattern(w, s.seed, 0),
        }
        if matches!(s.name, "readonly" | "unattached") {
            shmdt(addr);
        } else {
            s.addr = Some(addr);
        }
    }
    // The owner of `shared`; `readonly` attached read-only and locked; `removed` removed.
    let mut ds = shmctl(segs[shared].id, libc::IPC_STAT)?;
    ds.shm_perm.uid = 4321;
    ds.shm_perm.gid = 8765;
    // SAFETY: IPC_SET reads one shmid_ds from `ds`.
    cvt(unsafe { libc::shmctl(segs[shared].id, libc::IPC_SET, &mut ds) })?;
    (segs[shared].uid, segs[shared].gid) = (4321, 8765);
    segs[readonly].addr = Some(shmat(segs[readonly].id, libc::SHM_RDONLY)?);
    shmctl(segs[readonly].id, libc::SHM_LOCK)?;
    segs[readonly].flags |= SHM_LOCKED;
    shmctl(segs[removed].id, libc::IPC_RMID)?;
    segs[removed].flags |= SHM_DEST;
    segs[removed].key = 0;
    // One attachment in three VMAs.
    let shared_addr = segs[shared].addr.unwrap_or(0);
    // SAFETY: the second page of our own attachment; nothing of ours writes it.
    cvt(unsafe {
        libc::mprotect(
            (shared_addr + PAGE) as *mut libc::c_void,
            PAGE,
            libc::PROT_READ,
        )
    })?;
    let _ = (unattached, sparse);
    if own_ns && o.rmid_forced {
        // From here a segment goes as soon as nobody has it attached.
        std::fs::write("/proc/sys/kernel/shm_rmid_forced", "1")?;
    }

    // SAFETY: the child only loops on the attachments it inherits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        child(
            segs[board].addr.unwrap_or(0),
            shared_addr,
            segs[shared].size,
            segs[removed].addr.unwrap_or(0),
        );
    }
    // Parent only: a second, read-only attachment of `shared`.
    let second = shmat(segs[shared].id, libc::SHM_RDONLY)?;
    Ok((segs, pid, second))
}

/// Whether mprotect(PROT_READ | PROT_WRITE) is refused with EACCES at `addr` (a read-only
/// attachment); the protection is put back to read-only either way.
fn write_refused(addr: usize) -> bool {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a page of our own attachment; nothing is written through it.
    let ret = unsafe { libc::mprotect(addr as *mut libc::c_void, PAGE, rw) };
    let refused = ret == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EACCES);
    // SAFETY: as above.
    unsafe { libc::mprotect(addr as *mut libc::c_void, PAGE, libc::PROT_READ) };
    refused
}

fn check(
    report: &mut Report,
    segs: &[Segment],
    child_pid: libc::pid_t,
    second: usize,
    maps_at_ready: &[MapLine],
    own_ns: bool,
    criu: bool,
) {
    let seg = |name: &str| segs.iter().find(|s| s.name == name);
    let Some(maps) = report.ok_or_fail(sysv_maps("self"), "reading maps") else {
        return;
    };
    let child_maps = report
        .ok_or_fail(
            sysv_maps(&child_pid.to_string()),
            "reading the child's maps",
        )
        .unwrap_or_default();
    // Where each mapping is, and how: the same; ids may change outside a namespace of our own.
    let shape = |m: &[MapLine]| -> Vec<(u64, u64, String, u64, String)> {
        m.iter()
            .map(|(s, e, p, o, _, n)| (*s, *e, p.clone(), *o, n.clone()))
            .collect()
    };
    report.check_eq("the SysV mappings", shape(&maps), shape(maps_at_ready));
    for s in segs {
        // Its id now: the inode of its mapping (or, unattached, its key's segment).
        let now = match s.addr {
            Some(addr) => maps
                .iter()
                .find(|m| m.0 == addr as u64)
                .map(|m| m.4 as c_int),
            None => {
                // SAFETY: shmget with integer arguments only; it creates nothing.
                let id = unsafe { libc::shmget(s.key, 0, 0) };
                (id >= 0).then_some(id)
            }
        };
        let Some(id) = now else {
            report.fail(format!("{}: not found", s.name));
            continue;
        };
        if own_ns {
            report.check_eq(&format!("{}: id", s.name), id, s.id);
        }
        let Some(ds) =
            report.ok_or_fail(shmctl(id, libc::IPC_STAT), &format!("{}: IPC_STAT", s.name))
        else {
            continue;
        };
        let mode = u32::from(ds.shm_perm.mode);
        let mut flags = s.flags;
        if criu {
            // CRIU's restore neither locks nor removes again.
            flags &= !(SHM_LOCKED | SHM_DEST);
        }
        report.check_eq(
            &format!("{}: key, size, owner, mode", s.name),
            (
                ds.shm_perm.__key,
                ds.shm_segsz,
                ds.shm_perm.uid,
                ds.shm_perm.gid,
                mode & (0o777 | flags),
            ),
            (s.key, s.size, s.uid, s.gid, s.perm | flags),
        );
        let attached = maps
            .iter()
            .chain(&child_maps)
            .filter(|m| m.4 == id as u64)
            .count();
        report.check_eq(
            &format!("{}: attachments", s.name),
            ds.shm_nattch as usize,
            attached,
        );
        // Holes first: reading a hole of shared memory fills it.
        if s.name == "sparse" && !criu {
            let rss = sysvipc_rss(id).unwrap_or(u64::MAX);
            report.check(rss < 1 << 20, || {
                format!("sparse: {rss} bytes resident (not sparse)")
            });
        }
        // Contents, through a fresh read-only attachment.
        let Some(view) =
            report.ok_or_fail(shmat(id, libc::SHM_RDONLY), &format!("{}: attach", s.name))
        else {
            continue;
        };
        let w = words(view, s.size);
        let bad = match s.name {
            "shared" => check_pattern(&w[..shared_echo(s.size)], s.seed, 0),
            "removed" => check_pattern(&w[1..], s.seed, 1),
            "board" => None,
            "sparse" => SPARSE_PAGES.iter().find_map(|&page| {
                let at = page * PAGE / 8;
                check_pattern(&w[at..at + PAGE / 8], s.seed, at as u64)
            }),
            _ => check_pattern(w, s.seed, 0),
        };
        if let Some(m) = bad {
            report.fail(format!("{}: {m}", s.name));
        }
        if s.name == "sparse" {
            let zeros = w
                .iter()
                .enumerate()
                .filter(|(i, _)| !SPARSE_PAGES.contains(&(i * 8 / PAGE)))
                .all(|(_, &v)| v == 0);
            report.check(zeros, || {
                "sparse: a word outside the written pages is not zero".into()
            });
        }
        shmdt(view);
    }
    // Read-only attachments refuse writes; the mprotect-ed part of a writable one allows them.
    if let Some(addr) = seg("readonly").and_then(|s| s.addr) {
        report.check(write_refused(addr), || {
            "readonly: writable (not SHM_RDONLY)".into()
        });
    }
    if !criu {
        report.check(write_refused(second), || {
            "shared: the second attachment is writable (not SHM_RDONLY)".into()
        });
    }
    if let Some(s) = seg("shared") {
        let page = s.addr.unwrap_or(0) + PAGE;
        report.check(!write_refused(page), || {
            "shared: its read-only part cannot be made writable again".into()
        });
    }
    // The child shares the parent's attachments at the same addresses.
    let at =
        |m: &[MapLine], s: &Segment| m.iter().any(|l| Some(l.0 as usize) == s.addr && l.3 == 0);
    for name in ["shared", "removed", "board"] {
        if let Some(s) = seg(name) {
            report.check(at(&child_maps, s), || {
                format!("{name}: not attached in the child at {:#x?}", s.addr)
            });
        }
    }
    // A write by one process shows in the other, through every attachment.
    let (Some(board), Some(shared), Some(removed)) = (seg("board"), seg("shared"), seg("removed"))
    else {
        return;
    };
    let (Some(b), Some(sh), Some(rm)) = (board.addr, shared.addr, removed.addr) else {
        return;
    };
    let nonce = random_seed() >> 8;
    cell(b, NONCE).store(nonce, Ordering::SeqCst);
    let answered = wait_until(Duration::from_secs(10), || {
        cell(b, ANSWER).load(Ordering::SeqCst) == nonce
    });
    report.check(answered, || "the child did not answer on the board".into());
    if answered {
        let echo = shared_echo(shared.size);
        report.check_eq(
            "the child's write in shared",
            cell(sh, echo).load(Ordering::SeqCst),
            nonce + 1,
        );
        report.check_eq(
            "the child's write in shared, seen through the second attachment",
            words(second, shared.size)[echo],
            nonce + 1,
        );
        report.check_eq(
            "the child's write in removed",
            cell(rm, REMOVED_ECHO).load(Ordering::SeqCst),
            nonce + 2,
        );
    }
}

/// The resident bytes of segment `id` (`/proc/sysvipc/shm`).
fn sysvipc_rss(id: c_int) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").ok()?;
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1)?.parse::<c_int>().ok()? == id).then(|| f.get(14)?.parse().ok())?
    })
}

fn main() {
    let mut program = Program::start(
        "tp-sysvshm",
        &[
            ("--key-base N", "keys are N+1..N+6 (default: from the pid)"),
            (
                "--own-ipc-ns yes|no",
                "make a new IPC namespace first (default no)",
            ),
            (
                "--unattached yes|no",
                "with --own-ipc-ns: make the unattached segment (default yes)",
            ),
            (
                "--rmid-forced yes|no",
                "with --own-ipc-ns: kernel.shm_rmid_forced on once set up (default no)",
            ),
            (
                "--expect criu-rs|criu",
                "which restore (criu: skip what CRIU 4.2 does not keep)",
            ),
        ],
    );
    let key_base: i32 = program.opt_or(
        "--key-base",
        0x5f00_0000 | ((std::process::id() as i32 & 0xffff) << 4),
    );
    let own_ns = program.opt_or("--own-ipc-ns", String::from("no")) == "yes";
    let criu = program.opt_or("--expect", String::from("criu-rs")) == "criu";
    let yes = |flag: &str, default: &str| program.opt_or(flag, String::from(default)) == "yes";
    let options = Options {
        key_base,
        own_ns,
        unattached: yes("--unattached", "yes"),
        rmid_forced: yes("--rmid-forced", "no"),
    };
    let (segs, child_pid, second) = program.must(set_up(&options), "SysV segments");
    let listing: String = segs
        .iter()
        .map(|s| {
            let addr = s.addr.map_or("-".into(), |a| format!("{a:#x}"));
            format!("{} {} {:#x} {addr} {}\n", s.name, s.id, s.key, s.size)
        })
        .collect();
    program.must(
        write_atomic(&program.companion(".shm"), listing.as_bytes()),
        "write the segment list",
    );
    let maps_at_ready = program.must(sysv_maps("self"), "read maps");
    program.ready();
    program.work_until_check(Duration::from_millis(50), || {});

    let mut report = Report::new();
    check(
        &mut report,
        &segs,
        child_pid,
        second,
        &maps_at_ready,
        own_ns,
        criu,
    );
    // Nothing left behind: the keyed segments go (the removed one with the processes).
    for s in &segs {
        let id = match s.addr {
            Some(addr) => sysv_maps("self")
                .ok()
                .and_then(|m| m.iter().find(|l| l.0 == addr as u64).map(|l| l.4 as c_int)),
            // SAFETY: shmget with integer arguments only; it creates nothing.
            None => Some(unsafe { libc::shmget(s.key, 0, 0) }).filter(|&id| id >= 0),
        };
        if let Some(id) = id {
            let _ = shmctl(id, libc::IPC_RMID);
        }
    }
    // SAFETY: kill and waitpid on our own child.
    unsafe {
        libc::kill(child_pid, libc::SIGKILL);
        libc::waitpid(child_pid, std::ptr::null_mut(), 0);
    }
    program.finish(&report);
}
