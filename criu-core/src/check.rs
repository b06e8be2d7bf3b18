//! `check`: which of CRIU's named features this kernel has, and which this engine uses.
//!
//! CRIU's `check --feature NAME` answers whether the kernel has what CRIU needs for one
//! kind of state; test suites (zdtm) skip the tests of a feature that is missing. Two
//! questions, two answers: [`kernel_feature`] is CRIU's (the machine has it), which the
//! command line gives so that a test suite skips exactly what this machine cannot do and
//! runs, and counts, what criu-rs does not handle yet; [`feature`] adds whether criu-rs
//! checkpoints that state, for callers that must not lose work on the answer (the RPC's
//! FEATURE_CHECK, `check --extra`).
//!
//! The names are CRIU 4.2's (`feature_list` in criu/cr-check.c).

use std::fs;
use std::io;
use std::os::fd::AsFd;

use crate::proc::ProcDir;
use crate::sys::{self, Pid};

/// Whether a feature can be used, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    Yes,
    /// The kernel lacks it (the reason names what is missing).
    NoKernel(String),
    /// The kernel may have it, but criu-rs does not checkpoint this state.
    NoEngine(&'static str),
}

impl Support {
    pub fn is_yes(&self) -> bool {
        matches!(self, Support::Yes)
    }
}

/// How a feature is decided.
#[derive(Clone, Copy)]
enum Rule {
    /// criu-rs does not handle this state (the reason); the kernel has it by the
    /// rule given.
    Engine(&'static str, &'static Rule),
    /// Supported when the kernel is at least this version (major, minor).
    Since(u32, u32, &'static str),
    /// Supported when this probe of the running kernel succeeds.
    Probe(fn() -> Result<(), String>),
}

/// Every feature name CRIU 4.2 knows, in its order, with how criu-rs decides it.
const FEATURES: &[(&str, Rule)] = &[
    (
        "mnt_id",
        Rule::Engine(
            "mounts and mount namespaces are not checkpointed",
            &Rule::Since(3, 15, "mnt_id in fdinfo"),
        ),
    ),
    ("mem_dirty_track", Rule::Probe(probe_write_tracking)),
    (
        "aio_remap",
        Rule::Engine(
            "AIO rings are not checkpointed",
            &Rule::Since(3, 19, "mremap of AIO rings"),
        ),
    ),
    ("timerfd", Rule::Probe(probe_timerfd)),
    (
        "tun",
        Rule::Engine("tun devices are not checkpointed", &Rule::Probe(probe_tun)),
    ),
    (
        "tun_ns",
        Rule::Engine("tun devices are not checkpointed", &Rule::Probe(probe_tun)),
    ),
    (
        "userns",
        // One level below the dumper's (dump/userns.rs), found with NS_GET_PARENT.
        Rule::Since(4, 9, "user namespaces with NS_GET_PARENT"),
    ),
    ("fdinfo_lock", Rule::Probe(probe_fdinfo_lock)),
    ("seccomp_suspend", Rule::Probe(probe_seccomp)),
    ("seccomp_filters", Rule::Probe(probe_seccomp)),
    ("loginuid", Rule::Probe(probe_loginuid)),
    (
        "cgroupns",
        Rule::Engine(
            "cgroup namespaces are not checkpointed",
            &Rule::Since(4, 6, "cgroup namespaces"),
        ),
    ),
    (
        "autofs",
        Rule::Engine(
            "autofs mounts are not checkpointed",
            &Rule::Probe(probe_autofs),
        ),
    ),
    ("tcp_half_closed", Rule::Probe(probe_tcp_repair)),
    (
        "compat_cr",
        Rule::Engine(
            "32-bit (compat) tasks are not checkpointed",
            &Rule::Probe(probe_compat),
        ),
    ),
    (
        "uffd",
        Rule::Engine(
            "no lazy restore (lazy-pages, page server)",
            &Rule::Since(4, 3, "userfaultfd()"),
        ),
    ),
    (
        "uffd-noncoop",
        Rule::Engine(
            "no lazy restore (lazy-pages, page server)",
            &Rule::Since(4, 11, "non-cooperative userfaultfd"),
        ),
    ),
    (
        "can_map_vdso",
        Rule::Since(4, 9, "arch_prctl(ARCH_MAP_VDSO_64)"),
    ),
    (
        "sk_ns",
        Rule::Engine(
            "sockets of other network namespaces are not checkpointed",
            &Rule::Since(4, 10, "SIOCGSKNS"),
        ),
    ),
    (
        "sk_unix_file",
        Rule::Engine(
            "unix sockets bound in other mount namespaces are not checkpointed",
            &Rule::Since(5, 4, "SIOCUNIXFILE"),
        ),
    ),
    // Raw sockets are read from /proc/PID/net/raw{,6} (files/inet_raw.rs), not raw_diag.
    ("net_diag_raw", Rule::Probe(probe_raw_socket_table)),
    (
        "nsid",
        Rule::Engine(
            "network namespaces are not checkpointed",
            &Rule::Since(4, 0, "network namespace ids"),
        ),
    ),
    (
        "link_nsid",
        Rule::Engine(
            "network namespaces are not checkpointed",
            &Rule::Since(4, 0, "network namespace ids of links"),
        ),
    ),
    ("kcmp_epoll", Rule::Probe(probe_kcmp_epoll)),
    ("timens", Rule::Probe(probe_timens)),
    ("external_net_ns", Rule::Since(3, 8, "network namespaces")),
    ("clone3_set_tid", Rule::Since(5, 5, "clone3() with set_tid")),
    (
        "newifindex",
        Rule::Engine(
            "network devices are not checkpointed",
            &Rule::Since(5, 2, "IFLA_NEW_IFINDEX"),
        ),
    ),
    (
        "nftables",
        Rule::Engine(
            "netfilter rules are not checkpointed",
            &Rule::Probe(probe_nft),
        ),
    ),
    (
        "has_ipt_legacy",
        Rule::Engine(
            "netfilter rules are not checkpointed",
            &Rule::Probe(probe_ipt_legacy),
        ),
    ),
    (
        "pidfd_store",
        Rule::Engine(
            "no pidfd store (it serves pre-dumps, which criu-rs does not do)",
            &Rule::Since(5, 6, "pidfd_getfd()"),
        ),
    ),
    ("ns_pid", Rule::Probe(probe_ns_pid)),
    (
        "apparmor_stacking",
        Rule::Engine(
            "AppArmor profiles are not checkpointed",
            &Rule::Probe(probe_apparmor),
        ),
    ),
    ("network_lock_nftables", Rule::Probe(probe_nft)),
    ("sockopt_buf_lock", Rule::Probe(probe_sockopt_buf_lock)),
    (
        "memfd_hugetlb",
        Rule::Since(4, 14, "memfd_create(MFD_HUGETLB)"),
    ),
    (
        "move_mount_set_group",
        Rule::Engine(
            "mounts and mount namespaces are not checkpointed",
            &Rule::Since(5, 15, "move_mount(MOVE_MOUNT_SET_GROUP)"),
        ),
    ),
    ("openat2", Rule::Since(5, 6, "openat2()")),
    (
        "get_rseq_conf",
        Rule::Since(5, 13, "PTRACE_GET_RSEQ_CONFIGURATION"),
    ),
    ("ipv6_freebind", Rule::Probe(probe_ipv6_freebind)),
    ("pagemap_scan", Rule::Since(6, 7, "the PAGEMAP_SCAN ioctl")),
    (
        "timer_cr_ids",
        Rule::Since(6, 16, "prctl(PR_TIMER_CREATE_RESTORE_IDS)"),
    ),
    (
        "overlayfs_maps",
        Rule::Engine(
            "overlayfs mappings are not checkpointed",
            &Rule::Since(4, 19, "overlayfs paths in map_files"),
        ),
    ),
    (
        "breakpoints",
        Rule::Engine(
            "hardware breakpoints and watchpoints are not checkpointed",
            &Rule::Since(2, 6, "hardware breakpoints through ptrace"),
        ),
    ),
    (
        "pagemap_scan_guard_pages",
        Rule::Engine(
            "guard pages (MADV_GUARD_INSTALL) are not checkpointed",
            &Rule::Since(6, 14, "PAGE_IS_GUARD in PAGEMAP_SCAN"),
        ),
    ),
];

/// The names of every feature `feature` knows, in CRIU's order.
pub fn feature_names() -> impl Iterator<Item = &'static str> {
    FEATURES.iter().map(|(name, _)| *name)
}

/// Whether the feature `name` can be used here, by this kernel and by criu-rs; `None`
/// for a name CRIU does not know.
pub fn feature(name: &str) -> Option<Support> {
    let (_, rule) = FEATURES.iter().find(|(n, _)| *n == name)?;
    Some(match *rule {
        Rule::Engine(why, kernel) => match decide(kernel) {
            Support::Yes => Support::NoEngine(why),
            missing => missing,
        },
        _ => decide(rule),
    })
}

/// Whether this kernel has the feature `name`, whatever criu-rs makes of it: CRIU's
/// own question (`check --feature`), which test suites ask to skip the tests this
/// machine cannot run. `None` for a name CRIU does not know.
pub fn kernel_feature(name: &str) -> Option<Support> {
    let (_, rule) = FEATURES.iter().find(|(n, _)| *n == name)?;
    Some(match rule {
        Rule::Engine(_, kernel) => decide(kernel),
        _ => decide(rule),
    })
}

fn decide(rule: &Rule) -> Support {
    match *rule {
        Rule::Engine(why, _) => Support::NoEngine(why),
        Rule::Since(major, minor, what) => match kernel_version() {
            Ok(v) if v >= (major, minor) => Support::Yes,
            Ok((a, b)) => Support::NoKernel(format!(
                "{what} needs Linux {major}.{minor}, this is {a}.{b}"
            )),
            Err(e) => Support::NoKernel(format!("reading the kernel version: {e}")),
        },
        Rule::Probe(probe) => match probe() {
            Ok(()) => Support::Yes,
            Err(why) => Support::NoKernel(why),
        },
    }
}

/// What every dump and restore needs, checked without a feature name (CRIU's category
/// 1): each entry is (what, result).
pub fn basic() -> Vec<(&'static str, Result<(), String>)> {
    let since = |major, minor| -> Result<(), String> {
        let v = kernel_version().map_err(|e| format!("reading the kernel version: {e}"))?;
        if v >= (major, minor) {
            Ok(())
        } else {
            Err(format!(
                "needs Linux {major}.{minor}, this is {}.{}",
                v.0, v.1
            ))
        }
    };
    vec![
        ("/proc/PID/map_files", probe_map_files()),
        ("writable /proc/sys/kernel/ns_last_pid", probe_ns_last_pid()),
        ("pidfd_open and pidfd_getfd", since(5, 6)),
        ("clone3() with set_tid", since(5, 5)),
        ("PTRACE_GET_RSEQ_CONFIGURATION", since(5, 13)),
        ("capabilities to trace and rebuild tasks", probe_caps()),
    ]
}

/// (major, minor) of the running kernel.
pub(crate) fn kernel_version() -> io::Result<(u32, u32)> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")?;
    parse_version(&release).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected release {:?}", release.trim()),
        )
    })
}

fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn own_status() -> Result<crate::proc::Status, String> {
    ProcDir::open(Pid(std::process::id() as i32))
        .and_then(|d| d.status())
        .map_err(|e| format!("reading /proc/self/status: {e}"))
}

fn probe_map_files() -> Result<(), String> {
    fs::read_dir("/proc/self/map_files")
        .map(drop)
        .map_err(|e| format!("/proc/self/map_files: {e}"))
}

fn probe_ns_last_pid() -> Result<(), String> {
    fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/kernel/ns_last_pid")
        .map(drop)
        .map_err(|e| format!("/proc/sys/kernel/ns_last_pid: {e}"))
}

/// Whether this process holds capability `cap` in its effective set (capget(2), through
/// the `caps` crate: the kernel's answer, not a parse of /proc/self/status).
fn has_cap(cap: caps::Capability) -> Result<bool, String> {
    caps::has_cap(None, caps::CapSet::Effective, cap).map_err(|e| format!("capget: {e}"))
}

fn probe_caps() -> Result<(), String> {
    use caps::Capability::{CAP_SYS_ADMIN, CAP_SYS_PTRACE};
    let missing: Vec<String> = [CAP_SYS_ADMIN, CAP_SYS_PTRACE]
        .into_iter()
        .filter_map(|cap| match has_cap(cap) {
            Ok(true) => None,
            Ok(false) => Some(Ok(cap.to_string())),
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} missing: CAP_SYS_ADMIN and CAP_SYS_PTRACE are needed (run as root)",
            missing.join(" and ")
        ))
    }
}

/// Capabilities that dump and restore work without, each with what its absence limits
/// (printed by `check` as warnings). CAP_SYS_RESOURCE is missing on this project's
/// machines: root in a container that dropped it.
pub fn missing_optional_caps() -> Vec<(&'static str, &'static str)> {
    use caps::Capability::{CAP_NET_ADMIN, CAP_SYS_RESOURCE};
    let optional = [
        (
            CAP_SYS_RESOURCE,
            "CAP_SYS_RESOURCE",
            "a hard resource limit above criu-rs's own is restored as criu-rs's (with a \
             warning in the restore log), and dump refuses an oom_score_adj below criu-rs's own",
        ),
        (
            CAP_NET_ADMIN,
            "CAP_NET_ADMIN",
            "sockets in TCP repair mode and the network lock around a dump need it",
        ),
    ];
    optional
        .into_iter()
        .filter(|(cap, _, _)| has_cap(*cap) == Ok(false))
        .map(|(_, name, why)| (name, why))
        .collect()
}

/// Time namespaces: a tree in one is dumped with its clocks, and every restore makes one.
fn probe_timens() -> Result<(), String> {
    if crate::timens::kernel_has_time_ns() {
        Ok(())
    } else {
        Err("no /proc/self/timens_offsets (CONFIG_TIME_NS)".into())
    }
}

fn probe_raw_socket_table() -> Result<(), String> {
    fs::read_to_string("/proc/self/net/raw")
        .map(drop)
        .map_err(|e| format!("/proc/self/net/raw, where raw sockets are listed: {e}"))
}

fn probe_timerfd() -> Result<(), String> {
    let fd = sys::timerfd_create(libc::CLOCK_MONOTONIC).map_err(|e| format!("timerfd: {e}"))?;
    let fdinfo = fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .map_err(|e| format!("timerfd fdinfo: {e}"))?;
    if fdinfo.contains("it_value") {
        Ok(())
    } else {
        Err("timerfd fdinfo shows no timer state".into())
    }
}

/// File locks and leases (`--file-locks`) are found on the `lock:` lines of fdinfo: a
/// flock of our own must show there.
fn probe_fdinfo_lock() -> Result<(), String> {
    let fd = sys::memfd_create("criu-rs-lock-probe", 0).map_err(|e| format!("memfd: {e}"))?;
    sys::flock(fd.as_fd(), libc::LOCK_EX | libc::LOCK_NB).map_err(|e| format!("flock: {e}"))?;
    let fdinfo = fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .map_err(|e| format!("fdinfo: {e}"))?;
    if fdinfo.lines().any(|l| l.starts_with("lock:")) {
        Ok(())
    } else {
        Err("fdinfo shows no lock: lines".into())
    }
}

/// Filters are read with PTRACE_SECCOMP_GET_FILTER and injection runs with
/// PTRACE_O_SUSPEND_SECCOMP: both need CAP_SYS_ADMIN and a tracer without seccomp of its
/// own.
fn probe_seccomp() -> Result<(), String> {
    let text = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    if !text.lines().any(|l| l.starts_with("Seccomp:")) {
        return Err("the kernel has no seccomp (no Seccomp: in /proc/PID/status)".into());
    }
    let status = own_status()?;
    if status.seccomp != 0 {
        return Err("criu-rs itself runs under seccomp".into());
    }
    if !has_cap(caps::Capability::CAP_SYS_ADMIN)? {
        return Err("reading seccomp filters needs CAP_SYS_ADMIN".into());
    }
    Ok(())
}

fn probe_loginuid() -> Result<(), String> {
    fs::read_to_string("/proc/self/loginuid")
        .map(drop)
        .map_err(|e| format!("/proc/self/loginuid (audit support): {e}"))
}

fn probe_kcmp_epoll() -> Result<(), String> {
    let me = Pid(std::process::id() as i32);
    let ep = sys::epoll_create().map_err(|e| format!("epoll: {e}"))?;
    let ev = sys::eventfd(0, 0).map_err(|e| format!("eventfd: {e}"))?;
    let (epfd, evfd) = (
        std::os::fd::AsRawFd::as_raw_fd(&ep),
        std::os::fd::AsRawFd::as_raw_fd(&ev),
    );
    sys::epoll_add(ep.as_fd(), ev.as_fd(), libc::EPOLLIN as u32, 0)
        .map_err(|e| format!("epoll: {e}"))?;
    match sys::kcmp_epoll_tfd(me, evfd, me, epfd, evfd, 0) {
        Ok(true) => Ok(()),
        Ok(false) => Err("kcmp(KCMP_EPOLL_TFD) does not match a registered fd".into()),
        Err(e) => Err(format!("kcmp(KCMP_EPOLL_TFD): {e}")),
    }
}

fn probe_ns_pid() -> Result<(), String> {
    let text = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    if text.lines().any(|l| l.starts_with("NSpid:")) {
        Ok(())
    } else {
        Err("/proc/PID/status has no NSpid".into())
    }
}

fn probe_sockopt_buf_lock() -> Result<(), String> {
    const SO_BUF_LOCK: i32 = 72;
    let s = sys::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0).map_err(|e| format!("socket: {e}"))?;
    sys::getsockopt_int(s.as_fd(), libc::SOL_SOCKET, SO_BUF_LOCK)
        .map(drop)
        .map_err(|e| format!("SO_BUF_LOCK: {e}"))
}

/// TCP repair mode (connections established, connecting and half closed, files/tcp.rs).
fn probe_tcp_repair() -> Result<(), String> {
    const TCP_REPAIR: i32 = 19;
    let s = sys::socket(libc::AF_INET, libc::SOCK_STREAM, 0).map_err(|e| format!("socket: {e}"))?;
    sys::setsockopt_int(s.as_fd(), libc::IPPROTO_TCP, TCP_REPAIR, 1)
        .map_err(|e| format!("TCP_REPAIR: {e}"))
}

/// The nftables network lock: the `nft` tool it runs.
fn probe_nft() -> Result<(), String> {
    if crate::netlock::tool_available(crate::netlock::LockMethod::Nftables) {
        Ok(())
    } else {
        Err("nft is not installed (apt-get install nftables)".into())
    }
}

/// What pre-dump and `dump --track-mem` need: CRIU's soft-dirty bits, or (what
/// criu-rs uses, `dump/track.rs`) an asynchronous write-protecting userfaultfd and
/// PAGEMAP_SCAN's written bits (Linux 6.7).
fn probe_write_tracking() -> Result<(), String> {
    let Err(soft_dirty) = probe_soft_dirty() else {
        return Ok(());
    };
    let uffd = crate::sys::userfaultfd(0)
        .and_then(crate::sys::Uffd::new_write_tracking)
        .map_err(|e| {
            format!(
                "{soft_dirty}, and no write-protecting userfaultfd (UFFD_FEATURE_WP_ASYNC): {e}"
            )
        })?;
    drop(uffd);
    let pagemap =
        fs::File::open("/proc/self/pagemap").map_err(|e| format!("/proc/self/pagemap: {e}"))?;
    let probe = vec![0u8; 4096];
    let at = probe.as_ptr() as u64 & !4095;
    crate::sys::pagemap_scan(
        std::os::fd::AsFd::as_fd(&pagemap),
        at,
        at + 4096,
        crate::sys::page_is::WRITTEN,
        0,
    )
    .map(drop)
    .map_err(|e| format!("{soft_dirty}, and no PAGEMAP_SCAN (Linux 6.7): {e}"))
}

/// Soft-dirty bits: after clearing them (`4` to clear_refs), a page written again
/// shows bit 55 in /proc/self/pagemap. A kernel without CONFIG_MEM_SOFT_DIRTY takes
/// the write to clear_refs but never sets the bit.
fn probe_soft_dirty() -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    const PAGE: usize = 4096;
    const SOFT_DIRTY: u64 = 1 << 55;
    let missing = || "soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY) is not in this kernel";
    let mut area = vec![0u8; 2 * PAGE];
    let at = area.as_ptr() as usize;
    let page = at.div_ceil(PAGE) * PAGE;
    let offset = page - at;
    area[offset] = 1;
    fs::write("/proc/self/clear_refs", "4").map_err(|_| missing().to_owned())?;
    // Written after the clear: the kernel marks it again where it tracks.
    area[offset] = 2;
    std::hint::black_box(&area);
    let mut pagemap =
        fs::File::open("/proc/self/pagemap").map_err(|e| format!("/proc/self/pagemap: {e}"))?;
    let mut entry = [0u8; 8];
    pagemap
        .seek(SeekFrom::Start((page / PAGE * 8) as u64))
        .and_then(|_| pagemap.read_exact(&mut entry))
        .map_err(|e| format!("/proc/self/pagemap: {e}"))?;
    if u64::from_ne_bytes(entry) & SOFT_DIRTY != 0 {
        Ok(())
    } else {
        Err(missing().into())
    }
}

fn probe_tun() -> Result<(), String> {
    fs::metadata("/dev/net/tun")
        .map(drop)
        .map_err(|e| format!("/dev/net/tun: {e}"))
}

fn probe_autofs() -> Result<(), String> {
    let filesystems =
        fs::read_to_string("/proc/filesystems").map_err(|e| format!("/proc/filesystems: {e}"))?;
    filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("autofs"))
        .then_some(())
        .ok_or_else(|| "no autofs in /proc/filesystems".into())
}

/// 32-bit tasks: the kernel runs them when it has IA32 emulation.
fn probe_compat() -> Result<(), String> {
    fs::metadata("/proc/sys/abi/vsyscall32")
        .map(drop)
        .map_err(|_| "no IA32 emulation (/proc/sys/abi/vsyscall32)".into())
}

/// The legacy iptables tool (CRIU's test: `iptables-legacy` can be run).
fn probe_ipt_legacy() -> Result<(), String> {
    crate::netlock::find_tool("iptables-legacy")
        .map(drop)
        .ok_or_else(|| "iptables-legacy is not installed".into())
}

fn probe_apparmor() -> Result<(), String> {
    let stacking = fs::read_to_string("/sys/kernel/security/apparmor/features/domain/stack")
        .map_err(|_| "no AppArmor stacking in /sys/kernel/security".to_owned())?;
    (stacking.trim() == "yes")
        .then_some(())
        .ok_or_else(|| "AppArmor without stacking".into())
}

fn probe_ipv6_freebind() -> Result<(), String> {
    const IPV6_FREEBIND: i32 = 78;
    let s = sys::socket(libc::AF_INET6, libc::SOCK_DGRAM, 0)
        .map_err(|e| format!("IPv6 socket: {e}"))?;
    sys::setsockopt_int(s.as_fd(), libc::IPPROTO_IPV6, IPV6_FREEBIND, 1)
        .map_err(|e| format!("IPV6_FREEBIND: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_releases() {
        assert_eq!(parse_version("6.18.0\n"), Some((6, 18)));
        assert_eq!(parse_version("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(parse_version("6.1+debian"), Some((6, 1)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn every_criu_feature_has_an_answer_and_unknown_names_none() {
        for name in feature_names() {
            assert!(feature(name).is_some(), "{name}");
        }
        assert_eq!(feature_names().count(), 45);
        assert!(feature("no_such_feature").is_none());
    }

    /// Kernels since 4.1 show locks on fdinfo; `--file-locks` works wherever they do.
    #[test]
    fn file_locks_are_probed_on_fdinfo() {
        assert_eq!(feature("fdinfo_lock"), Some(Support::Yes));
    }

    #[test]
    fn features_criu_rs_does_not_handle_are_never_reported() {
        for name in ["mnt_id", "uffd"] {
            assert!(!feature(name).is_some_and(|s| s.is_yes()), "{name}");
        }
    }

    /// CRIU's question is the kernel's: what this kernel (6.18) has is answered yes
    /// whether criu-rs uses it or not; memory tracking yes, by userfaultfd write
    /// protection (this kernel has no soft-dirty bits).
    #[test]
    fn the_kernel_answer_leaves_the_engine_out() {
        for name in ["mnt_id", "uffd", "aio_remap", "cgroupns"] {
            assert_eq!(kernel_feature(name), Some(Support::Yes), "{name}");
            assert!(
                matches!(feature(name), Some(Support::NoEngine(_))),
                "{name}"
            );
        }
        assert_eq!(kernel_feature("mem_dirty_track"), Some(Support::Yes));
        assert!(
            probe_soft_dirty().is_err(),
            "this kernel has no soft-dirty bits"
        );
        assert!(kernel_feature("no_such_feature").is_none());
    }
}
