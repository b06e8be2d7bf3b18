//! `criu_opts` of a request mapped onto the engine's options. Every option a caller can
//! set is either honoured, accepted because it cannot change the outcome here (said in
//! the log), or refused by its `rpc.proto` name: nothing is dropped silently.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_core::cgroups::{CgMode, CgroupOptions};
use criu_core::dump::DumpOptions;
use criu_core::files::ExternalUnix;
use criu_core::images::pb::{self, CriuCgMode, CriuNetworkLockMethod, CriuOpts};
use criu_core::images::ImageReader;
use criu_core::netlock::LockMethod;
use criu_core::restore::RestoreOptions;
use criu_core::sys::Pid;

use super::RpcError;

/// Where the images are and where the log and the stats go, as paths we can open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    pub images: PathBuf,
    pub work: PathBuf,
}

/// The caller's fd `fd`, reached through its /proc entry (as CRIU reaches it).
fn peer_fd(peer: i32, fd: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{peer}/fd/{fd}"))
}

/// `images_dir_fd` (or `images_dir`) and `work_dir_fd` (the images dir by default).
pub fn dirs(o: &CriuOpts, peer: i32) -> Result<Dirs, RpcError> {
    let images = if o.images_dir_fd != -1 {
        peer_fd(peer, o.images_dir_fd)
    } else if let Some(dir) = &o.images_dir {
        PathBuf::from(dir)
    } else {
        return Err(RpcError::invalid(
            "neither images_dir_fd nor images_dir was passed",
        ));
    };
    let work = match o.work_dir_fd {
        Some(fd) => peer_fd(peer, fd),
        None => images.clone(),
    };
    Ok(Dirs { images, work })
}

/// The log: `log_file` (a plain name, in the work dir; `criu.log` by default) or
/// stderr (`log_to_stderr`), at `log_level` (CRIU's 0..4, 2 by default).
pub fn log_target(o: &CriuOpts, dirs: &Dirs) -> Result<(Option<PathBuf>, u8), RpcError> {
    let level = o.log_level.unwrap_or(2).clamp(0, 4) as u8;
    if o.log_to_stderr == Some(true) && o.log_file.is_none() {
        return Ok((None, level));
    }
    let name = o.log_file.as_deref().unwrap_or("criu.log");
    if name.contains('/') || name.is_empty() || name == "." || name == ".." {
        return Err(RpcError::invalid(format!(
            "log_file {name:?}: a plain file name is expected (it is created in the work dir)"
        )));
    }
    Ok((Some(dirs.work.join(name)), level))
}

fn refuse(option: &str, why: &str) -> RpcError {
    RpcError::unsupported(format!("option {option} is not supported: {why}"))
}

/// What dump and restore alike cannot honour.
fn check_common(o: &CriuOpts) -> Result<(), RpcError> {
    let set = |b: Option<bool>| b == Some(true);
    if set(o.lazy_pages) {
        return Err(refuse("lazy_pages", "criu-rs has no lazy migration"));
    }
    if o.ps.is_some() {
        return Err(refuse("ps", "criu-rs has no page server"));
    }
    if o.status_fd.is_some() {
        return Err(refuse(
            "status_fd",
            "it reports a page server or lazy pages ready, which criu-rs does not have",
        ));
    }
    let empty_ns = o.empty_ns.unwrap_or(0);
    if empty_ns & !(libc::CLONE_NEWNET as u32) != 0 {
        // CRIU takes the network namespace only, too.
        return Err(refuse(
            &format!("empty_ns {empty_ns:#x}"),
            "only the network namespace (CLONE_NEWNET) can be left empty",
        ));
    }
    for (name, value) in [
        ("lsm_profile", &o.lsm_profile),
        ("lsm_mount_context", &o.lsm_mount_context),
        ("cgroup_props", &o.cgroup_props),
        ("cgroup_props_file", &o.cgroup_props_file),
        ("tls_cacert", &o.tls_cacert),
        ("tls_cert", &o.tls_cert),
    ] {
        if value.is_some() {
            return Err(refuse(name, "criu-rs does not handle it"));
        }
    }
    if set(o.tls) || set(o.unprivileged) || set(o.mntns_compat_mode) {
        return Err(refuse(
            "tls/unprivileged/mntns_compat_mode",
            "criu-rs does not handle it",
        ));
    }
    if !o.exec_cmd.is_empty() {
        return Err(refuse(
            "exec_cmd",
            "criu-rs does not run a command after restore",
        ));
    }
    if !o.cgroup_dump_controller.is_empty() {
        return Err(refuse(
            "cgroup_dump_controller",
            "criu-rs does not dump cgroup controllers",
        ));
    }
    if !o.veths.is_empty() {
        return Err(refuse("veths", "network devices are not restored"));
    }
    cgroup_options(o)?;
    Ok(())
}

/// `manage_cgroups` and its mode, `cg_root` and `cgroup_yard`, as the engine takes
/// them (see `criu_core::cgroups`); None when cgroups are not managed.
fn cgroup_options(o: &CriuOpts) -> Result<Option<CgroupOptions>, RpcError> {
    let mode = match o.manage_cgroups_mode {
        Some(m) => CriuCgMode::try_from(m)
            .map_err(|_| RpcError::invalid(format!("manage_cgroups_mode {m} is unknown")))?,
        None if o.manage_cgroups == Some(true) => CriuCgMode::Soft,
        None if !o.cg_root.is_empty() || o.cgroup_yard.is_some() => CriuCgMode::Soft,
        None => return Ok(None),
    };
    let mode = match mode {
        CriuCgMode::Ignore => CgMode::Ignore,
        CriuCgMode::CgNone => CgMode::None,
        CriuCgMode::Props => CgMode::Props,
        CriuCgMode::Soft | CriuCgMode::Default => CgMode::Soft,
        CriuCgMode::Full => CgMode::Full,
        CriuCgMode::Strict => CgMode::Strict,
    };
    let mut roots = Vec::new();
    for r in &o.cg_root {
        if !r.path.starts_with('/') {
            return Err(RpcError::invalid(format!(
                "cg_root {}: the path must be absolute",
                r.path
            )));
        }
        roots.push((r.ctrl.clone(), r.path.clone()));
    }
    Ok(Some(CgroupOptions {
        mode,
        roots,
        yard: o.cgroup_yard.as_ref().map(PathBuf::from),
    }))
}

/// `ext_unix_sk`, `unix_sk_ino` and `external unix[INODE]`.
fn external_unix(o: &CriuOpts) -> Result<ExternalUnix, RpcError> {
    let mut ext = ExternalUnix {
        allowed: o.ext_unix_sk == Some(true),
        inodes: o.unix_sk_ino.iter().map(|u| u.inode).collect(),
    };
    for spec in &o.external {
        if let Some(ino) = spec.strip_prefix("unix[").and_then(|r| r.strip_suffix(']')) {
            ext.inodes.push(
                ino.parse().map_err(|_| {
                    RpcError::invalid(format!("external {spec}: {ino} is no inode"))
                })?,
            );
        }
    }
    Ok(ext)
}

/// The namespaces `external` names (`net[INODE]:KEY`), for the dump, and
/// the network namespace when `empty_ns` asks for it empty (runc always does: it
/// leaves the network to the caller): in both cases its contents are not saved.
fn external_namespaces(o: &CriuOpts) -> Result<Vec<String>, RpcError> {
    let mut kinds = Vec::new();
    if o.empty_ns.unwrap_or(0) & libc::CLONE_NEWNET as u32 != 0 {
        kinds.push("net".to_owned());
    }
    let is_mount = |e: &str| external_mount(e).is_some();
    for spec in o
        .external
        .iter()
        .filter(|e| !e.starts_with("unix[") && !is_mount(e))
    {
        match spec.split('[').next().unwrap_or("") {
            kind @ "net" if spec.contains(']') => {
                if !kinds.iter().any(|k| k == kind) {
                    kinds.push(kind.to_owned());
                }
            }
            // CRIU's `mnt[]{:FLAGS}` detects external bind mounts itself.
            "mnt" => {
                return Err(refuse(
                    &format!("external {spec}"),
                    "criu-rs does not detect external mounts itself; name each \
                     (mnt[MOUNTPOINT]:KEY, or ext_mnt)",
                ))
            }
            _ => {
                return Err(refuse(
                    &format!("external {spec}"),
                    "only net[...] namespaces, mnt[MOUNTPOINT]:KEY mounts and unix[...] \
                     sockets can be external",
                ))
            }
        }
    }
    Ok(kinds)
}

/// `(A, B)` of `external` `mnt[A]:B` when A is given: at dump, the mount at A is
/// external with key B; at restore, the external mount of key A is a bind of B.
fn external_mount(spec: &str) -> Option<(String, String)> {
    let (a, b) = spec.strip_prefix("mnt[")?.split_once("]:")?;
    (!a.is_empty() && !b.is_empty()).then(|| (a.to_owned(), b.to_owned()))
}

/// The external mounts of `ext_mnt` (key, value) and `external` `mnt[A]:B` pairs, in
/// the order given.
fn external_mounts(o: &CriuOpts) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = o
        .ext_mnt
        .iter()
        .map(|m| (m.key.clone(), m.val.clone()))
        .collect();
    pairs.extend(o.external.iter().filter_map(|e| external_mount(e)));
    pairs
}

fn network_lock(o: &CriuOpts) -> Result<LockMethod, RpcError> {
    // Unset means our default (nftables), as CRIU 4.2 takes it.
    let Some(raw) = o.network_lock else {
        return Ok(LockMethod::default());
    };
    match CriuNetworkLockMethod::try_from(raw) {
        Ok(CriuNetworkLockMethod::Iptables) => Ok(LockMethod::Iptables),
        Ok(CriuNetworkLockMethod::Nftables) => Ok(LockMethod::Nftables),
        Ok(CriuNetworkLockMethod::Skip) => Ok(LockMethod::Skip),
        Err(_) => Err(RpcError::invalid(format!("network_lock {raw} is unknown"))),
    }
}

/// Notes on options accepted without effect, so the log says why.
fn note_accepted(o: &CriuOpts) {
    if o.link_remap == Some(true) || o.ghost_limit.is_some() {
        tracing::info!(
            "link_remap/ghost_limit: deleted files are saved by contents up to criu-rs's own \
             limit, larger ones refused"
        );
    }
    if o.auto_dedup == Some(true) {
        tracing::info!("auto_dedup: there are no parent images to deduplicate");
    }
}

/// The engine's dump options for a DUMP request from the process `peer`.
pub fn dump_options(o: &CriuOpts, peer: i32, dirs: &Dirs) -> Result<DumpOptions, RpcError> {
    check_common(o)?;
    note_accepted(o);
    if o.rst_sibling == Some(true) {
        return Err(RpcError::invalid("rst_sibling is an option of restore"));
    }
    // CRIU dumps the caller itself when no pid is given.
    let pid = o.pid.unwrap_or(peer);
    if pid <= 0 {
        return Err(RpcError::invalid(format!("pid {pid} is no process")));
    }
    let timeout = match o.timeout {
        Some(secs) if secs > 0 => Duration::from_secs(u64::from(secs)),
        _ => Duration::from_secs(10),
    };
    Ok(DumpOptions {
        work_dir: Some(dirs.work.clone()),
        leave_running: o.leave_running == Some(true),
        leave_stopped: o.leave_stopped == Some(true),
        shell_job: o.shell_job == Some(true),
        orphan_pts_master: o.orphan_pts_master == Some(true),
        file_locks: o.file_locks == Some(true),
        freeze_cgroup: o.freeze_cgroup.as_ref().map(PathBuf::from),
        freeze_timeout: timeout,
        external_namespaces: external_namespaces(o)?,
        ext_mounts: external_mounts(o),
        ext_unix_sk: external_unix(o)?,
        tcp_established: o.tcp_established == Some(true),
        tcp_close: o.tcp_close == Some(true),
        skip_in_flight: o.tcp_skip_in_flight == Some(true),
        network_lock: network_lock(o)?,
        cgroups: cgroup_options(o)?,
        // Relative to the images dir, as CRIU takes it.
        prev_images_dir: o.parent_img.as_ref().map(PathBuf::from),
        track_mem: o.track_mem == Some(true),
        ..DumpOptions::new(Pid(pid), dirs.images.clone())
    })
}

/// The engine's restore options for a RESTORE request.
pub fn restore_options(o: &CriuOpts, dirs: &Dirs) -> Result<RestoreOptions, RpcError> {
    check_common(o)?;
    note_accepted(o);
    if o.pid.is_some() {
        tracing::info!("pid is an option of dump: ignored on restore, as CRIU does");
    }
    if o.leave_stopped == Some(true) {
        return Err(refuse("leave_stopped", "a restored tree always runs"));
    }
    if o.rst_sibling == Some(true) {
        tracing::info!(
            "rst_sibling: the root is restored as our child, and goes to the caller's \
             subreaper when criu-rs exits after answering"
        );
    }
    if o.evasive_devices == Some(true) {
        tracing::info!("evasive_devices: device files are opened by their dumped paths");
    }
    for spec in &o.external {
        if !spec.starts_with("unix[") {
            tracing::info!("external {spec}: nothing to do on restore");
        }
    }
    let mut join_ns = Vec::new();
    for j in &o.join_ns {
        // CRIU also takes a pid: that task's namespace.
        let path = match j.ns_file.parse::<u32>() {
            Ok(pid) => PathBuf::from(format!("/proc/{pid}/ns/{}", j.ns)),
            Err(_) => PathBuf::from(&j.ns_file),
        };
        if j.extra_opt.is_some() {
            return Err(refuse(
                &format!("join_ns {} extra_opt", j.ns),
                "no user namespace credentials are set on join",
            ));
        }
        join_ns.push((j.ns.clone(), path));
    }
    // An inherited namespace (runc passes the container's network namespace this way,
    // under the key it named it by at dump: `extRootNetNS`) is joined; other inherited
    // fds stand in for the files of their key.
    let mut inherit_fds = Vec::new();
    for i in &o.inherit_fd {
        match namespace_kind(i.fd) {
            Some(kind) if kind == "net" => {
                if !join_ns.iter().any(|(k, _)| k == "net") {
                    let path = format!("/proc/{}/fd/{}", std::process::id(), i.fd);
                    join_ns.push((kind, PathBuf::from(path)));
                }
            }
            Some(kind) => {
                return Err(refuse(
                    &format!("inherit_fd {} ({kind} namespace)", i.key),
                    "only a network namespace can be inherited",
                ))
            }
            None => inherit_fds.push((i.key.clone(), i.fd)),
        }
    }
    let joins_net = join_ns.iter().any(|(k, _)| k == "net");
    if !joins_net && had_own_network(&dirs.images) {
        // The dump did not save it (external). CRIU would make an empty one (empty_ns)
        // or fail; criu-rs makes none, and the tree must not land in ours unnoticed.
        return Err(refuse(
            "empty_ns",
            "the tree had a network namespace of its own and criu-rs cannot create an \
             empty one: pass the namespace to join (inherit_fd of it, or join_ns net)",
        ));
    }
    let orphan_pts_master = o.orphan_pts_master == Some(true);
    if orphan_pts_master && o.notify_scripts != Some(true) {
        return Err(refuse(
            "orphan_pts_master without notify_scripts",
            "the new pty's master is sent with the orphan-pts-master notification",
        ));
    }
    Ok(RestoreOptions {
        shell_job: o.shell_job == Some(true),
        orphan_pts_master,
        file_locks: o.file_locks == Some(true),
        join_ns,
        root: o.root.as_ref().map(PathBuf::from),
        inherit_fds,
        ext_mounts: external_mounts(o)
            .into_iter()
            .map(|(key, path)| (key, PathBuf::from(path)))
            .collect(),
        tcp_established: o.tcp_established == Some(true),
        tcp_close: o.tcp_close == Some(true),
        ext_unix_sk: external_unix(o)?.allowed,
        cgroups: cgroup_options(o)?,
        ..RestoreOptions::new(dirs.images.clone())
    })
}

/// Whether the images' tree had another network namespace than its dumper, one whose
/// contents they do not hold (declared external at dump). Images that cannot be read
/// say no here: the restore reports them, naming what is wrong.
fn had_own_network(images: &Path) -> bool {
    fn first<M: prost::Message + Default>(dir: &Path, name: &str) -> Option<M> {
        ImageReader::open(dir.join(name))
            .ok()?
            .next_entry::<M>()
            .ok()?
    }
    let Some(inventory) = first::<pb::InventoryEntry>(images, "inventory.img") else {
        return false;
    };
    let Some(root) = first::<pb::PstreeEntry>(images, "pstree.img") else {
        return false;
    };
    let Some(ids) = first::<pb::TaskKobjIdsEntry>(images, &format!("ids-{}.img", root.pid)) else {
        return false;
    };
    let dumper = inventory.root_ids.and_then(|r| r.net_ns_id);
    let theirs = ids.net_ns_id;
    // A namespace whose contents the images keep is made again by the restore.
    let saved = theirs.is_some_and(|id| images.join(format!("netns-{id}.img")).exists());
    dumper.is_some() && theirs.is_some() && dumper != theirs && !saved
}

/// The kind of namespace our fd `fd` is (`net`, ...), if it is one: asked of the
/// kernel, since runc opens the network namespace through its bind mount
/// (`/run/netns/NAME`), whose fd link reads as that path.
fn namespace_kind(fd: i32) -> Option<String> {
    let file = std::fs::File::open(format!("/proc/self/fd/{fd}")).ok()?;
    let ty = criu_core::sys::ns_type(std::os::fd::AsFd::as_fd(&file)).ok()?;
    let kinds = [
        (libc::CLONE_NEWNET, "net"),
        (libc::CLONE_NEWPID, "pid"),
        (libc::CLONE_NEWNS, "mnt"),
        (libc::CLONE_NEWUTS, "uts"),
        (libc::CLONE_NEWIPC, "ipc"),
        (libc::CLONE_NEWUSER, "user"),
        (libc::CLONE_NEWCGROUP, "cgroup"),
        (libc::CLONE_NEWTIME, "time"),
    ];
    kinds
        .iter()
        .find(|(flag, _)| *flag == ty)
        .map(|(_, kind)| (*kind).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use criu_core::images::pb::{InheritFd, JoinNamespace};

    fn opts() -> CriuOpts {
        CriuOpts {
            images_dir_fd: 5,
            ..Default::default()
        }
    }

    #[test]
    fn namespace_fds_are_told_by_the_kernel() {
        use std::os::fd::AsRawFd;
        let net = std::fs::File::open("/proc/self/ns/net").unwrap();
        assert_eq!(namespace_kind(net.as_raw_fd()).as_deref(), Some("net"));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(namespace_kind(file.as_raw_fd()), None);
    }

    #[test]
    fn dirs_are_the_callers_fds() {
        let mut o = opts();
        let d = dirs(&o, 77).unwrap();
        assert_eq!(d.images, PathBuf::from("/proc/77/fd/5"));
        assert_eq!(d.work, d.images);
        o.work_dir_fd = Some(6);
        assert_eq!(dirs(&o, 77).unwrap().work, PathBuf::from("/proc/77/fd/6"));
        o.images_dir_fd = -1;
        assert!(dirs(&o, 77).is_err());
        o.images_dir = Some("/tmp/x".into());
        assert_eq!(dirs(&o, 77).unwrap().images, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn log_file_is_a_name_in_the_work_dir() {
        let mut o = opts();
        let d = dirs(&o, 1).unwrap();
        assert_eq!(
            log_target(&o, &d).unwrap(),
            (Some(PathBuf::from("/proc/1/fd/5/criu.log")), 2)
        );
        o.log_file = Some("dump.log".into());
        o.log_level = Some(4);
        assert_eq!(
            log_target(&o, &d).unwrap(),
            (Some(PathBuf::from("/proc/1/fd/5/dump.log")), 4)
        );
        o.log_file = Some("../x".into());
        assert!(log_target(&o, &d).is_err());
    }

    #[test]
    fn what_runc_sends_on_dump_is_taken() {
        let o = CriuOpts {
            log_level: Some(4),
            log_file: Some("dump.log".into()),
            root: Some("/var/lib/x/rootfs".into()),
            manage_cgroups: Some(true),
            manage_cgroups_mode: Some(CriuCgMode::Default as i32),
            notify_scripts: Some(true),
            pid: Some(4242),
            shell_job: Some(false),
            leave_running: Some(true),
            tcp_established: Some(true),
            ext_unix_sk: Some(false),
            file_locks: Some(true),
            orphan_pts_master: Some(true),
            auto_dedup: Some(false),
            lazy_pages: Some(false),
            external: vec!["net[4026532000]:extRootNetNS".into()],
            // runc always leaves the network to its caller.
            empty_ns: Some(libc::CLONE_NEWNET as u32),
            freeze_cgroup: Some("/sys/fs/cgroup/freezer/x".into()),
            config_file: Some("/nonexistent/criu-rs/runc.conf".into()),
            ..opts()
        };
        let d = dirs(&o, 9).unwrap();
        let dump = dump_options(&o, 9, &d).unwrap();
        assert_eq!(dump.pid, Pid(4242));
        assert!(dump.leave_running && dump.tcp_established && dump.file_locks);
        assert_eq!(dump.external_namespaces, ["net"]);
        assert_eq!(
            dump.freeze_cgroup,
            Some(PathBuf::from("/sys/fs/cgroup/freezer/x"))
        );
        // No pid: the caller itself.
        let me = CriuOpts { pid: None, ..o };
        assert_eq!(dump_options(&me, 9, &d).unwrap().pid, Pid(9));
    }

    #[test]
    fn what_runc_sends_on_restore_is_taken() {
        use std::os::fd::AsRawFd;
        // runc's container network namespace, inherited under the key of the dump.
        let netns = std::fs::File::open("/proc/self/ns/net").unwrap();
        let o = CriuOpts {
            empty_ns: Some(libc::CLONE_NEWNET as u32),
            rst_sibling: Some(true),
            evasive_devices: Some(true),
            root: Some("/run/x/criu-root".into()),
            inherit_fd: vec![
                InheritFd {
                    key: "pipe:[123]".into(),
                    fd: 1,
                },
                InheritFd {
                    key: "extRootNetNS".into(),
                    fd: netns.as_raw_fd(),
                },
            ],
            join_ns: vec![JoinNamespace {
                ns: "uts".into(),
                ns_file: "77".into(),
                extra_opt: None,
            }],
            ..opts()
        };
        let r = restore_options(&o, &dirs(&o, 9).unwrap()).unwrap();
        assert_eq!(r.root, Some(PathBuf::from("/run/x/criu-root")));
        assert_eq!(r.inherit_fds, [("pipe:[123]".to_owned(), 1)]);
        let joined_net = format!("/proc/{}/fd/{}", std::process::id(), netns.as_raw_fd());
        assert_eq!(
            r.join_ns,
            [
                ("uts".to_owned(), PathBuf::from("/proc/77/ns/uts")),
                ("net".to_owned(), PathBuf::from(joined_net)),
            ]
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let d = dirs(&opts(), 1).unwrap();
        let cases: Vec<(CriuOpts, &str)> = vec![
            (
                CriuOpts {
                    lazy_pages: Some(true),
                    ..opts()
                },
                "lazy_pages",
            ),
            (
                CriuOpts {
                    external: vec!["pid[4026531836]:extRootPidNS".into()],
                    ..opts()
                },
                "external pid[",
            ),
            (
                CriuOpts {
                    external: vec!["mnt[]:sm".into()],
                    ..opts()
                },
                "external mnt[]",
            ),
            (
                CriuOpts {
                    status_fd: Some(7),
                    ..opts()
                },
                "status_fd",
            ),
            (
                CriuOpts {
                    lsm_profile: Some("apparmor:x".into()),
                    ..opts()
                },
                "lsm_profile",
            ),
            (
                CriuOpts {
                    empty_ns: Some((libc::CLONE_NEWNET | libc::CLONE_NEWUTS) as u32),
                    ..opts()
                },
                "empty_ns",
            ),
        ];
        for (o, name) in cases {
            let err = dump_options(&o, 1, &d).unwrap_err();
            assert!(err.msg.contains(name), "{name}: {}", err.msg);
            assert_eq!(err.errno, Some(libc::ENOTSUP), "{name}");
        }
    }
}
