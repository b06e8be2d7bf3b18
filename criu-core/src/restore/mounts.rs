//! Stage 1 and 2 for a tree's own mount namespace (`crate::mounts`): the mounts of
//! `mountpoints-ID.img`, planned and checked before any process exists; then made in a
//! new mount namespace of the freshly cloned root, before it clones anyone.
//!
//! The root (still a copy of the restorer) unshares its mount namespace and makes every
//! mount itself, by injected calls: so proc, mqueue and sysfs are those of the
//! namespaces it is already in (its new pid and IPC ones). The copy of our mounts it
//! starts with is made a slave of ours first, so nothing it mounts shows here. The
//! tree's mounts are built in a yard directory (the root mount a bind of `--root`
//! there), parents first,
//! tmpfs contents unpacked right after each tmpfs is mounted (by us, through
//! `/proc/ROOT/root`), per-mount flags and propagation set as each is made; then the
//! root pivots into it and drops the rest. From then on the restorer opens the tree's
//! files through `/proc/ROOT/root`, which is that new namespace.

use std::collections::HashMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::*;
use crate::mounts::dump::tmpfs_image_name;
use crate::mounts::{
    ext_key, fstype_name, plan, Planned, Source, FSTYPE_DEVPTS, FSTYPE_TMPFS, MNT_FLAGS, MS_RDONLY,
    MS_UNBINDABLE,
};

/// The tree's mount namespace, as stage 1 checked it.
#[derive(Debug)]
pub(super) struct MountNamespace {
    /// Parents first.
    planned: Vec<Planned>,
    /// `--root`, as an absolute path of ours.
    root: PathBuf,
    /// Key of an external mount -> our path to bind there.
    external: HashMap<String, PathBuf>,
    images_dir: PathBuf,
}

/// Stage 1: the mounts of the root's mount namespace when it is not the dumper's (and
/// not one the tree joins), planned; refuses what cannot be made before any process
/// exists.
pub(super) fn load(
    opts: &RestoreOptions,
    root: &Images,
    host: Option<&pb::TaskKobjIdsEntry>,
) -> Result<Option<MountNamespace>, RestoreError> {
    let Some(host) = host else {
        return Ok(None);
    };
    let Some(id) = root.ids.mnt_ns_id.filter(|&id| Some(id) != host.mnt_ns_id) else {
        return Ok(None);
    };
    if opts.join_ns.iter().any(|(k, _)| k == "mnt") {
        return Ok(None);
    }
    let name = format!("mountpoints-{id}.img");
    let entries: Vec<pb::MntEntry> = load::read_all(&opts.images_dir, &name)?;
    let planned = plan(&entries).map_err(|e| RestoreError::BadImage {
        image: name.clone(),
        what: e.to_string(),
    })?;
    let root_dir = opts.root.as_ref().ok_or_else(|| {
        unsupported("a tree with a mount namespace of its own without --root (its root mount)")
    })?;
    let root_dir = std::fs::canonicalize(root_dir).map_err(|e| RestoreError::BadImage {
        image: name.clone(),
        what: format!("--root {}: {e}", root_dir.display()),
    })?;
    let mut external = HashMap::new();
    for p in &planned {
        if let Some(key) = ext_key(&p.entry) {
            let path = opts
                .ext_mounts
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, path)| path.clone())
                .ok_or_else(|| RestoreError::BadImage {
                    image: name.clone(),
                    what: format!(
                        "the external mount {} (key {key}) has no path: give --external \
                         mnt[{key}]:PATH",
                        p.entry.mountpoint
                    ),
                })?;
            external.insert(key.to_owned(), path);
        }
        if let Source::New { .. } = p.source {
            if fstype_name(p.entry.fstype).is_none() {
                return Err(RestoreError::BadImage {
                    image: name.clone(),
                    what: format!(
                        "mount {}: unknown fstype {}",
                        p.entry.mountpoint, p.entry.fstype
                    ),
                });
            }
        }
    }
    Ok(Some(MountNamespace {
        planned,
        root: root_dir,
        external,
        images_dir: opts.images_dir.clone(),
    }))
}

impl MountNamespace {
    /// The mount points of every mount but the root.
    pub(super) fn mountpoints_off_root(&self) -> Vec<PathBuf> {
        let off_root = self.planned.iter().filter(|p| p.source != Source::Root);
        off_root
            .map(|p| PathBuf::from(&p.entry.mountpoint))
            .collect()
    }
}

/// A directory of ours, seen by the root's new mount namespace as it was copied from
/// ours: `root/` is where the tree's mounts are built (a bind of `--root` first; a
/// path of its own, so that lookups go through the mounts stacked there even when
/// `--root` is `/`), `aside/` where a filesystem whose mount shows only part of it is
/// mounted whole before that part is bound in place. Removed when dropped.
struct Yard(PathBuf);

impl Yard {
    fn new() -> std::io::Result<Yard> {
        // One per restore: a process may run several at once (threads).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("criu-rs-yard-{}-{n}", std::process::id());
        let path = std::env::temp_dir().join(name);
        let yard = Yard(path);
        std::fs::create_dir_all(yard.root())?;
        std::fs::create_dir_all(yard.aside())?;
        Ok(yard)
    }

    fn root(&self) -> PathBuf {
        self.0.join("root")
    }

    fn aside(&self) -> PathBuf {
        self.0.join("aside")
    }
}

impl Drop for Yard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.root());
        let _ = std::fs::remove_dir(self.aside());
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The mount(2) calls of one task, with their strings in its scratch memory.
struct Mounter<'a> {
    inj: &'a mut Injector,
    scratch: u64,
}

const SLOT: u64 = 4096;

impl Mounter<'_> {
    fn strings(&self, strings: [Option<&[u8]>; 4]) -> std::io::Result<[u64; 4]> {
        let mut addrs = [0u64; 4];
        for (i, s) in strings.iter().enumerate() {
            if let Some(s) = s {
                if s.len() >= SLOT as usize {
                    return Err(std::io::Error::other("a path longer than PATH_MAX"));
                }
                let at = self.scratch + SLOT * i as u64;
                let mut text = s.to_vec();
                text.push(0);
                self.inj.write(at, &text)?;
                addrs[i] = at;
            }
        }
        Ok(addrs)
    }

    fn mount(
        &mut self,
        source: Option<&[u8]>,
        target: &[u8],
        fstype: Option<&[u8]>,
        flags: u64,
        data: Option<&[u8]>,
    ) -> std::io::Result<()> {
        let [s, t, f, d] = self.strings([source, Some(target), fstype, data])?;
        self.inj
            .syscall_ok("mount", libc::SYS_mount, [s, t, f, flags, d, 0])
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "mount({}, {}, {}, {flags:#x}): {e}",
                        String::from_utf8_lossy(source.unwrap_or(b"NULL")),
                        String::from_utf8_lossy(target),
                        String::from_utf8_lossy(fstype.unwrap_or(b"NULL")),
                    ),
                )
            })?;
        Ok(())
    }

    fn path_call(&mut self, name: &str, nr: i64, path: &[u8], arg: u64) -> std::io::Result<()> {
        let [p, ..] = self.strings([Some(path), None, None, None])?;
        self.inj
            .syscall_ok(name, nr, [p, arg, 0, 0, 0, 0])
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("{name}({}): {e}", String::from_utf8_lossy(path)),
                )
            })?;
        Ok(())
    }

    /// move_mount(2) with MOVE_MOUNT_SET_GROUP: `to` joins the peer group of `from`
    /// (and gets its master).
    fn set_group(&mut self, from: &[u8], to: &[u8]) -> std::io::Result<()> {
        const MOVE_MOUNT_SET_GROUP: u64 = 0x100;
        let [f, t, ..] = self.strings([Some(from), Some(to), None, None])?;
        let at_fdcwd = libc::AT_FDCWD as u64;
        let args = [at_fdcwd, f, at_fdcwd, t, MOVE_MOUNT_SET_GROUP, 0];
        self.inj
            .syscall_ok("move_mount", libc::SYS_move_mount, args)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "move_mount({}, {}, SET_GROUP): {e}",
                        String::from_utf8_lossy(from),
                        String::from_utf8_lossy(to)
                    ),
                )
            })?;
        Ok(())
    }

    fn propagation(&mut self, target: &[u8], flag: libc::c_ulong) -> std::io::Result<()> {
        self.mount(None, target, None, flag, None)
    }
}

/// Stage 2: the root (our number `child`, stopped, not yet cloning) gets a new mount
/// namespace holding the tree's mounts, and pivots into it. Returns the masters of the
/// ptys whose slave node a mount binds elsewhere (a container's `/dev/console`), by
/// number: made in the namespace's devpts before that bind, for the opener to take as
/// those ptys' masters.
pub(super) fn build(
    child: Pid,
    gadget: u64,
    ns: &MountNamespace,
) -> std::io::Result<Vec<(u32, OwnedFd)>> {
    let yard = Yard::new()?;
    let mut inj = Injector::new(child, gadget)?;
    let scratch = inj.scratch(SLOT * 4)?;
    let mut masters = Vec::new();
    let built = build_in(
        &mut Mounter {
            inj: &mut inj,
            scratch,
        },
        child,
        ns,
        &yard,
        &mut masters,
    );
    let finished = inj.finish();
    built.and(finished).map(|()| masters)
}

fn build_in(
    m: &mut Mounter<'_>,
    child: Pid,
    ns: &MountNamespace,
    yard: &Yard,
    masters: &mut Vec<(u32, OwnedFd)>,
) -> std::io::Result<()> {
    m.inj.syscall_ok(
        "unshare",
        libc::SYS_unshare,
        [libc::CLONE_NEWNS as u64, 0, 0, 0, 0, 0],
    )?;
    // Nothing mounted from here on shows in our namespace.
    m.propagation(b"/", libc::MS_REC | libc::MS_SLAVE)?;
    let built = yard.root().into_os_string().into_vec();
    let target_of = |p: &Planned| -> Vec<u8> {
        let mut t = built.clone();
        let rest = p.entry.mountpoint.trim_start_matches('/');
        if !rest.is_empty() {
            t.push(b'/');
            t.extend_from_slice(rest.as_bytes());
        }
        t
    };
    let targets: Vec<Vec<u8>> = ns.planned.iter().map(target_of).collect();
    let leaders = group_leaders(&ns.planned);
    for (p, target) in ns.planned.iter().zip(&targets) {
        if let Some(master) = slave_to_bind(child, ns, p, &targets)? {
            masters.push(master);
        }
        make_one(m, child, ns, yard, p, target, &targets)?;
        // Private until every mount exists, so that nothing propagates while the tree
        // is built; a slave of a group outside the namespace (a bind of one of ours)
        // stays one.
        let master = group(p.entry.master_id);
        if master.is_none() || master.is_some_and(|g| leaders.contains_key(&g)) {
            m.propagation(target, libc::MS_PRIVATE)?;
        }
    }
    set_groups(m, &ns.planned, &targets, &leaders)?;
    for (p, target) in ns.planned.iter().zip(&targets) {
        if p.entry.flags & MS_UNBINDABLE != 0 {
            m.propagation(target, libc::MS_UNBINDABLE)?;
        }
    }
    // Into the new root; the old one, stacked over it by pivot_root(".", "."), goes.
    m.path_call("chdir", libc::SYS_chdir, &built, 0)?;
    let [dot, ..] = m.strings([Some(b"."), None, None, None])?;
    m.inj
        .syscall_ok("pivot_root", libc::SYS_pivot_root, [dot, dot, 0, 0, 0, 0])?;
    m.path_call("umount2", libc::SYS_umount2, b".", libc::MNT_DETACH as u64)?;
    m.path_call("chdir", libc::SYS_chdir, b"/", 0)?;
    Ok(())
}

/// For a bind of a pty's slave node (`N` of a devpts mount, which exists only while
/// its pty does): makes pty `N` through that devpts's `ptmx` (seen through the root's
/// `/proc/PID/root`, in its namespace) and returns its master, unlocked.
fn slave_to_bind(
    child: Pid,
    ns: &MountNamespace,
    p: &Planned,
    targets: &[Vec<u8>],
) -> std::io::Result<Option<(u32, OwnedFd)>> {
    let Source::Bind { from, subpath } = &p.source else {
        return Ok(None);
    };
    let Ok(index) = subpath.parse::<u32>() else {
        return Ok(None);
    };
    if ns.planned[*from].entry.fstype != FSTYPE_DEVPTS {
        return Ok(None);
    }
    let mut ptmx = std::ffi::OsString::from(format!("/proc/{}/root", child.0));
    ptmx.push(std::ffi::OsStr::from_bytes(&targets[*from]));
    ptmx.push("/ptmx");
    let ptmx = PathBuf::from(ptmx);
    let mut lower = Vec::new();
    loop {
        let master = sys::open_path(&ptmx, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC, 0)
            .map_err(|e| std::io::Error::new(e.kind(), format!("open {}: {e}", ptmx.display())))?;
        let got = sys::ioctl_get_int(master.as_fd(), libc::TIOCGPTN as libc::c_ulong)? as u32;
        if got == index {
            sys::ioctl_set_int(master.as_fd(), libc::TIOCSPTLCK as libc::c_ulong, 0)?;
            return Ok(Some((index, master)));
        }
        if got > index || lower.len() > index as usize {
            return Err(std::io::Error::other(format!(
                "pty {index} of the devpts at {}, bound to {}, is taken",
                ns.planned[*from].entry.mountpoint, p.entry.mountpoint
            )));
        }
        // Held until that number comes.
        lower.push(master);
    }
}

/// A peer group id of the images (0 is none).
fn group(id: Option<u32>) -> Option<u32> {
    id.filter(|&g| g != 0)
}

/// The first mount (in the order they are made) of each peer group of the namespace.
fn group_leaders(planned: &[Planned]) -> HashMap<u32, usize> {
    let mut leaders = HashMap::new();
    for (i, p) in planned.iter().enumerate() {
        if let Some(g) = group(p.entry.shared_id) {
            leaders.entry(g).or_insert(i);
        }
    }
    leaders
}

/// Makes mount `p` at `target` (`targets`: of every mount, for binds), with its
/// contents when it is a tmpfs, and its per-mount flags.
fn make_one(
    m: &mut Mounter<'_>,
    child: Pid,
    ns: &MountNamespace,
    yard: &Yard,
    p: &Planned,
    target: &[u8],
    targets: &[Vec<u8>],
) -> std::io::Result<()> {
    let e = &p.entry;
    match &p.source {
        Source::Root => {
            let root = ns.root.as_os_str().as_bytes();
            m.mount(Some(root), target, None, libc::MS_BIND, None)?;
        }
        Source::External(key) => {
            let path = ns.external.get(key).ok_or_else(|| {
                std::io::Error::other(format!("no path for external mount {key}"))
            })?;
            let path = path.as_os_str().as_bytes();
            m.mount(Some(path), target, None, libc::MS_BIND, None)?;
        }
        Source::Bind { from, subpath } => {
            let mut path = targets[*from].clone();
            if !subpath.is_empty() {
                path.push(b'/');
                path.extend_from_slice(subpath.as_bytes());
            }
            m.mount(Some(&path), target, None, libc::MS_BIND, None)?;
        }
        Source::New { whole } => {
            mount_new(m, p, target, *whole, yard)?;
            if *whole && e.fstype == FSTYPE_TMPFS {
                unpack_tmpfs(child, ns, e, target)?;
            }
        }
    }
    // Per-mount flags: a new whole mount got them from mount(2), but for read-only.
    let flags = u64::from(e.flags & MNT_FLAGS);
    let new_whole = p.source == (Source::New { whole: true });
    if !new_whole || e.flags & MS_RDONLY != 0 {
        let remount = libc::MS_BIND | libc::MS_REMOUNT | flags;
        m.mount(None, target, None, remount, None)?;
    }
    Ok(())
}

/// Puts every mount in its peer group and under its master group (those of the
/// namespace), once all exist: the first mount of a group is made shared, the others
/// join it with move_mount(MOVE_MOUNT_SET_GROUP), which also gives them its master; a
/// slave first joins its master group, then becomes a slave of it. A mount waits
/// until the first of its group and of its master group are done.
fn set_groups(
    m: &mut Mounter<'_>,
    planned: &[Planned],
    targets: &[Vec<u8>],
    leaders: &HashMap<u32, usize>,
) -> std::io::Result<()> {
    let mut done = vec![false; planned.len()];
    loop {
        let mut progress = false;
        for (i, p) in planned.iter().enumerate() {
            let shared = group(p.entry.shared_id);
            let master = group(p.entry.master_id).and_then(|g| leaders.get(&g).copied());
            let leader = shared.and_then(|g| leaders.get(&g).copied());
            if done[i] || (shared.is_none() && master.is_none()) {
                continue;
            }
            match (leader, master) {
                (Some(l), _) if l != i => {
                    if !done[l] {
                        continue;
                    }
                    m.set_group(&targets[l], &targets[i])?;
                }
                (_, Some(ms)) => {
                    if !done[ms] {
                        continue;
                    }
                    m.set_group(&targets[ms], &targets[i])?;
                    m.propagation(&targets[i], libc::MS_SLAVE)?;
                    if leader == Some(i) {
                        m.propagation(&targets[i], libc::MS_SHARED)?;
                    }
                }
                _ => m.propagation(&targets[i], libc::MS_SHARED)?,
            }
            done[i] = true;
            progress = true;
        }
        if !progress {
            break;
        }
    }
    Ok(())
}

/// A new mount of `p`'s filesystem at `target` (read-only comes later, once a tmpfs is
/// filled); when it shows part of the filesystem, mounted whole in the yard first.
fn mount_new(
    m: &mut Mounter<'_>,
    p: &Planned,
    target: &[u8],
    whole: bool,
    yard: &Yard,
) -> std::io::Result<()> {
    let e = &p.entry;
    let fstype = fstype_name(e.fstype).unwrap_or("none");
    let flags = u64::from(e.flags & MNT_FLAGS & !MS_RDONLY);
    let source = if e.source.is_empty() {
        fstype
    } else {
        &e.source
    };
    let data = (!e.options.is_empty()).then_some(e.options.as_bytes());
    if whole {
        return m.mount(
            Some(source.as_bytes()),
            target,
            Some(fstype.as_bytes()),
            flags,
            data,
        );
    }
    let aside = yard.aside().into_os_string().into_vec();
    let aside = aside.as_slice();
    m.mount(
        Some(source.as_bytes()),
        aside,
        Some(fstype.as_bytes()),
        flags,
        data,
    )?;
    let mut part = aside.to_vec();
    part.extend_from_slice(e.root.as_bytes());
    let bound = m.mount(Some(&part), target, None, libc::MS_BIND, None);
    m.path_call("umount2", libc::SYS_umount2, aside, libc::MNT_DETACH as u64)?;
    bound
}

/// Unpacks the saved contents of a tmpfs into its new mount at `target` (a path in the
/// root's namespace), as CRIU does: with `tar`, from `tmpfs-dev-DEV.tar.gz.img`.
fn unpack_tmpfs(
    child: Pid,
    ns: &MountNamespace,
    e: &pb::MntEntry,
    target: &[u8],
) -> std::io::Result<()> {
    let image = ns.images_dir.join(tmpfs_image_name(e.root_dev));
    let Ok(input) = File::open(&image) else {
        // A tmpfs CRIU saved by mount id (older images), or none at all: empty.
        tracing::warn!(mountpoint = %e.mountpoint, "no contents saved for this tmpfs");
        return Ok(());
    };
    let mut dir = std::ffi::OsString::from(format!("/proc/{}/root", child.0));
    dir.push(std::ffi::OsStr::from_bytes(target));
    crate::mounts::tmpfs::unpack(&input, Path::new(&dir)).map_err(|err| {
        std::io::Error::other(format!(
            "unpacking {} into {}: {err}",
            image.display(),
            e.mountpoint
        ))
    })
}
