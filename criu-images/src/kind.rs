//! The table of image kinds: for every file CRIU writes, its name pattern, its magic pair
//! and how its body is laid out.
//!
//! Every image file starts with two little-endian u32 magics: a "first" magic that says
//! which family the file belongs to (common images, or service files such as stats), and
//! the magic of the kind itself. Two exceptions: `inventory.img` carries only its own
//! magic, and raw files (`pages-*.img`, tarballs, `ip` dumps) carry none at all.

/// First magic of ordinary image files.
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// First magic of service files (`stats-*`, `irmap-cache`).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;

/// The prefix of the names, and of the files, of criu-rs's own image kinds.
const EXTENSION_PREFIX: &str = "CRIU_RS_";

/// Which first magic precedes the kind's own magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `inventory.img`: the kind magic alone.
    Bare,
    /// Ordinary images: `IMG_COMMON_MAGIC`, then the kind magic.
    Common,
    /// Service files: `IMG_SERVICE_MAGIC`, then the kind magic.
    Service,
    /// No magic at all (page contents, tarballs).
    Raw,
}

/// Data that follows an entry's protobuf payload in the same file, and which field of the
/// entry gives its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    /// `bytes` raw bytes (pipe and fifo contents).
    PipeData,
    /// `length` raw bytes (queued socket packets).
    SocketQueue,
    /// `inq_len` then `outq_len` raw bytes (TCP send and receive queues).
    TcpQueues,
    /// `keys_bytes + values_bytes` raw bytes (BPF map contents).
    BpfMapData,
    /// `size` bytes padded to 4 (a SysV shared memory segment).
    IpcShm,
    /// `nsems` u16 values padded to 8 (a SysV semaphore set).
    IpcSem,
    /// `qnum` framed `ipc_msg` entries, each followed by its text padded to 8 (SysV
    /// messages, and criu-rs's POSIX ones).
    IpcMsg,
}

/// How the body of an image file is organised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// A sequence of framed entries of one message type, each maybe followed by extra data.
    Entries {
        message: &'static str,
        extra: Option<Extra>,
    },
    /// A `pagemap_head` entry, then `pagemap_entry` entries.
    Pagemap,
    /// A `ghost_file_entry`, then either the whole file contents, or (when it says
    /// `chunks`) `ghost_chunk_entry` entries each followed by its data.
    GhostFile,
    /// Not protobuf at all.
    Raw,
}

/// One kind of image file.
#[derive(Debug, PartialEq, Eq)]
pub struct ImageKind {
    /// The name crit prints as `"magic"` (CRIU's `*_MAGIC` without the suffix).
    pub name: &'static str,
    /// The kind's own magic (0 for raw files).
    pub magic: u32,
    pub family: Family,
    /// File name pattern: `{}` stands for an id (decimal, or hex for `ghost-file` and
    /// `tcp-stream`); `*` for a free-form suffix.
    pub file_pattern: &'static str,
    pub body: Body,
}

const fn entries(message: &'static str) -> Body {
    Body::Entries {
        message,
        extra: None,
    }
}

const fn with_extra(message: &'static str, extra: Extra) -> Body {
    Body::Entries {
        message,
        extra: Some(extra),
    }
}

macro_rules! kinds {
    ($($name:literal, $magic:literal, $family:ident, $pattern:literal, $body:expr;)*) => {
        /// Every image kind CRIU 4.2 knows, then criu-rs's own ones (see
        /// [`ImageKind::is_extension`]), in one table.
        pub static KINDS: &[ImageKind] = &[
            $(ImageKind { name: $name, magic: $magic, family: Family::$family, file_pattern: $pattern, body: $body },)*
        ];
    };
}

kinds! {
    "INVENTORY",      0x5831_3116, Bare,    "inventory.img",          entries("inventory_entry");
    "PSTREE",         0x5027_3030, Common,  "pstree.img",             entries("pstree_entry");
    "FDINFO",         0x5621_3732, Common,  "fdinfo-{}.img",          entries("fdinfo_entry");
    "PAGEMAP",        0x5608_4025, Common,  "pagemap-{}.img",         Body::Pagemap;
    "CORE",           0x5505_3847, Common,  "core-{}.img",            entries("core_entry");
    "IDS",            0x5443_2030, Common,  "ids-{}.img",             entries("task_kobj_ids_entry");
    "VMAS",           0x5412_3737, Common,  "vmas-{}.img",            entries("vma_entry");
    "PIPES",          0x5651_3555, Common,  "pipes.img",              entries("pipe_entry");
    "PIPES_DATA",     0x5645_3709, Common,  "pipes-data.img",         with_extra("pipe_data_entry", Extra::PipeData);
    "FIFO",           0x5836_4939, Common,  "fifo.img",               entries("fifo_entry");
    "FIFO_DATA",      0x5933_3054, Common,  "fifo-data.img",          with_extra("pipe_data_entry", Extra::PipeData);
    "SIGACT",         0x5534_4201, Common,  "sigacts-{}.img",         entries("sa_entry");
    "UNIXSK",         0x5437_3943, Common,  "unixsk.img",             entries("unix_sk_entry");
    "INETSK",         0x5644_3851, Common,  "inetsk.img",             entries("inet_sk_entry");
    "PACKETSK",       0x6045_4618, Common,  "packetsk.img",           entries("packet_sock_entry");
    "ITIMERS",        0x5746_4056, Common,  "itimers-{}.img",         entries("itimer_entry");
    "POSIX_TIMERS",   0x5260_3957, Common,  "posix-timers-{}.img",    entries("posix_timer_entry");
    "SK_QUEUES",      0x5626_4026, Common,  "sk-queues.img",          with_extra("sk_packet_entry", Extra::SocketQueue);
    "UTSNS",          0x5447_3203, Common,  "utsns-{}.img",           entries("utsns_entry");
    "CREDS",          0x5402_3547, Common,  "creds-{}.img",           entries("creds_entry");
    "IPC_VAR",        0x5311_5007, Common,  "ipcns-var-{}.img",       entries("ipc_var_entry");
    "IPCNS_SHM",      0x4628_3044, Common,  "ipcns-shm-{}.img",       with_extra("ipc_shm_entry", Extra::IpcShm);
    "IPCNS_MSG",      0x5545_3737, Common,  "ipcns-msg-{}.img",       with_extra("ipc_msg_entry", Extra::IpcMsg);
    "IPCNS_SEM",      0x5957_3019, Common,  "ipcns-sem-{}.img",       with_extra("ipc_sem_entry", Extra::IpcSem);
    "REG_FILES",      0x5036_3636, Common,  "reg-files.img",          entries("reg_file_entry");
    "EXT_FILES",      0x5925_5641, Common,  "ext-files.img",          entries("ext_file_entry");
    "FS",             0x5140_3912, Common,  "fs-{}.img",              entries("fs_entry");
    "MM",             0x5749_2820, Common,  "mm-{}.img",              entries("mm_entry");
    "REMAP_FPATH",    0x5913_3954, Common,  "remap-fpath.img",        entries("remap_file_path_entry");
    "GHOST_FILE",     0x5258_3605, Common,  "ghost-file-{}.img",      Body::GhostFile;
    "TCP_STREAM",     0x5146_5506, Common,  "tcp-stream-{}.img",      with_extra("tcp_stream_entry", Extra::TcpQueues);
    "EVENTFD_FILE",   0x4452_3722, Common,  "eventfd.img",            entries("eventfd_file_entry");
    "EVENTPOLL_FILE", 0x4502_3858, Common,  "eventpoll.img",          entries("eventpoll_file_entry");
    "EVENTPOLL_TFD",  0x4443_3746, Common,  "eventpoll-tfd.img",      entries("eventpoll_tfd_entry");
    "SIGNALFD",       0x5732_3820, Common,  "signalfd.img",           entries("signalfd_entry");
    "INOTIFY_FILE",   0x4842_4431, Common,  "inotify.img",            entries("inotify_file_entry");
    "INOTIFY_WD",     0x5456_2009, Common,  "inotify-wd.img",         entries("inotify_wd_entry");
    "MNTS",           0x5556_3928, Common,  "mountpoints-{}.img",     entries("mnt_entry");
    // Before NETNS, whose pattern their names match too (the first match wins).
    "NETNF_CT",       0,           Raw,     "netns-ct-{}.img",        Body::Raw;
    "NETNF_EXP",      0,           Raw,     "netns-exp-{}.img",       Body::Raw;
    "NETDEV",         0x5737_3951, Common,  "netdev-{}.img",          entries("net_device_entry");
    "NETNS",          0x5593_3752, Common,  "netns-{}.img",           entries("netns_entry");
    "TTY_FILES",      0x5943_3025, Common,  "tty.img",                entries("tty_file_entry");
    "TTY_INFO",       0x5945_3036, Common,  "tty-info.img",           entries("tty_info_entry");
    "TTY_DATA",       0x5941_3026, Common,  "tty-data.img",           entries("tty_data_entry");
    "FILE_LOCKS",     0x5432_3616, Common,  "filelocks.img",          entries("file_lock_entry");
    "RLIMIT",         0x5711_3925, Common,  "rlimit-{}.img",          entries("rlimit_entry");
    "FANOTIFY_FILE",  0x5509_6122, Common,  "fanotify.img",           entries("fanotify_file_entry");
    "FANOTIFY_MARK",  0x5650_6035, Common,  "fanotify-mark.img",      entries("fanotify_mark_entry");
    // Shared (signal-s) and private (signal-p) pending signals use the same magic.
    "SIGNAL",         0x5925_5647, Common,  "signal-{}.img",          entries("siginfo_entry");
    "NETLINK_SK",     0x5800_5614, Common,  "netlinksk.img",          entries("netlink_sk_entry");
    "NS_FILES",       0x6139_4011, Common,  "ns-files.img",           entries("ns_file_entry");
    "TUNFILE",        0x5714_3751, Common,  "tunfile.img",            entries("tunfile_entry");
    "CGROUP",         0x5938_3330, Common,  "cgroup.img",             entries("cgroup_entry");
    "TIMERFD",        0x5049_3712, Common,  "timerfd.img",            entries("timerfd_entry");
    "CPUINFO",        0x6140_4013, Common,  "cpuinfo.img",            entries("cpuinfo_entry");
    "USERNS",         0x5547_4906, Common,  "userns-{}.img",          entries("userns_entry");
    "SECCOMP",        0x6441_3049, Common,  "seccomp.img",            entries("seccomp_entry");
    "BINFMT_MISC",    0x6734_3323, Common,  "binfmt-misc*.img",       entries("binfmt_misc_entry");
    "AUTOFS",         0x4935_3943, Common,  "autofs-{}.img",          entries("autofs_entry");
    "FILES",          0x5630_3138, Common,  "files.img",              entries("file_entry");
    "MEMFD_INODE",    0x4845_3499, Common,  "memfd.img",              entries("memfd_inode_entry");
    "TIMENS",         0x4311_4433, Common,  "timens-{}.img",          entries("timens_entry");
    "PIDNS",          0x6115_7326, Common,  "pidns-{}.img",           entries("pidns_entry");
    "BPFMAP_FILE",    0x5750_6142, Common,  "bpfmap-file.img",        entries("bpfmap_file_entry");
    "BPFMAP_DATA",    0x6432_4033, Common,  "bpfmap-data.img",        with_extra("bpfmap_data_entry", Extra::BpfMapData);
    "APPARMOR",       0x5942_3047, Common,  "apparmor.img",           entries("apparmor_entry");
    "PIDFD",          0x5443_5556, Common,  "pidfd.img",              entries("pidfd_entry");
    "STATS",          0x5709_3306, Service, "stats-*",                entries("stats_entry");
    "IRMAP_CACHE",    0x5700_4059, Service, "irmap-cache",            entries("irmap_cache_entry");
    "PAGES",          0,           Raw,     "pages-{}.img",           Body::Raw;
    // A network namespace's tool outputs (`ip ... save`, `iptables-save`, `nft`), raw.
    "IFADDR",         0,           Raw,     "ifaddr-{}.img",          Body::Raw;
    "ROUTE",          0,           Raw,     "route-{}.img",           Body::Raw;
    "ROUTE6",         0,           Raw,     "route6-{}.img",          Body::Raw;
    "RULE",           0,           Raw,     "rule-{}.img",            Body::Raw;
    "IPTABLES",       0,           Raw,     "iptables-{}.img",        Body::Raw;
    "IP6TABLES",      0,           Raw,     "ip6tables-{}.img",       Body::Raw;
    "NFTABLES",       0,           Raw,     "nftables-{}.img",        Body::Raw;
    // criu-rs's own kinds, for what CRIU has no image for, after CRIU's: names
    // `CRIU_RS_*`, files `criu-rs-*`, which CRIU never opens. Each wears the magic and
    // layout of a CRIU kind its entry is wire-compatible with, so that Debian's crit
    // decodes it (proto/mqueue.proto says how); the file name tells them apart.
    "CRIU_RS_MQUEUE", 0x5545_3737, Common, "criu-rs-mqueue-{}.img", with_extra("mqueue_entry", Extra::IpcMsg);
}

impl ImageKind {
    /// The kind of a file named `file_name` (its last component; empty when unknown,
    /// as for standard input) whose own magic is `magic`. Where one of criu-rs's kinds
    /// shares its magic with one of CRIU's, the file name tells which; a name of
    /// neither gives CRIU's. Raw kinds have no magic and are never found.
    pub fn by_magic(magic: u32, file_name: &str) -> Option<&'static ImageKind> {
        let mut with_magic = KINDS
            .iter()
            .filter(|k| k.magic == magic && k.family != Family::Raw);
        // CRIU's kinds come first in the table.
        let first = with_magic.next()?;
        Some(
            std::iter::once(first)
                .chain(with_magic)
                .find(|k| pattern_matches(k.file_pattern, file_name))
                .unwrap_or(first),
        )
    }

    /// Whether this kind is one of criu-rs's own, which CRIU does not know: CRIU never
    /// opens its files (named `criu-rs-*`), and Debian's crit decodes one as the CRIU
    /// kind whose magic it wears.
    pub fn is_extension(&self) -> bool {
        self.name.starts_with(EXTENSION_PREFIX)
    }

    /// The kind crit calls `name` (`"CORE"`, `"PAGEMAP"`...).
    pub fn by_name(name: &str) -> Option<&'static ImageKind> {
        KINDS.iter().find(|k| k.name == name)
    }

    /// The kind a file name belongs to, by its pattern (`core-42.img` is CORE).
    pub fn by_file_name(file_name: &str) -> Option<&'static ImageKind> {
        KINDS
            .iter()
            .find(|k| pattern_matches(k.file_pattern, file_name))
    }

    /// The file name of this kind for `id` (`core-42.img`). Kinds without `{}` ignore it.
    pub fn file_name(&self, id: impl std::fmt::Display) -> String {
        self.file_pattern.replacen("{}", &id.to_string(), 1)
    }

    /// The magic bytes a file of this kind starts with.
    pub fn header(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8);
        match self.family {
            Family::Raw => {}
            Family::Bare => out.extend_from_slice(&self.magic.to_le_bytes()),
            Family::Common | Family::Service => {
                let first = if self.family == Family::Common {
                    IMG_COMMON_MAGIC
                } else {
                    IMG_SERVICE_MAGIC
                };
                out.extend_from_slice(&first.to_le_bytes());
                out.extend_from_slice(&self.magic.to_le_bytes());
            }
        }
        out
    }
}

/// Matches `name` against a pattern where `{}` is one or more id characters (hex digits,
/// plus `s`/`p`/`shmem-` style prefixes) and `*` is anything.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    if let Some((pre, post)) = pattern.split_once("{}") {
        name.len() > pre.len() + post.len()
            && name.starts_with(pre)
            && name.ends_with(post)
            && name[pre.len()..name.len() - post.len()]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
    } else if let Some((pre, post)) = pattern.split_once('*') {
        name.len() >= pre.len() + post.len() && name.starts_with(pre) && name.ends_with(post)
    } else {
        pattern == name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRIU's magics are unique among its kinds; one of ours may only share the magic
    /// of a CRIU kind, never of another of ours.
    #[test]
    fn magics_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for k in KINDS.iter().filter(|k| k.family != Family::Raw) {
            if !k.is_extension() {
                assert!(seen.insert(k.magic), "{} reuses a magic", k.name);
            }
        }
        let mut ours = std::collections::HashSet::new();
        for k in KINDS.iter().filter(|k| k.is_extension()) {
            assert!(ours.insert(k.magic), "{} reuses a magic of ours", k.name);
        }
    }

    /// Our own kinds cannot be taken for CRIU's: their names and files say whose they
    /// are, no CRIU pattern matches their files, and where a magic is shared the file
    /// name picks the kind.
    #[test]
    fn extension_kinds_cannot_collide_with_criu_ones() {
        for k in KINDS.iter().filter(|k| k.is_extension()) {
            assert!(k.file_pattern.starts_with("criu-rs-"), "{}", k.name);
            let file = k.file_name(7);
            assert!(
                !KINDS
                    .iter()
                    .any(|c| !c.is_extension() && pattern_matches(c.file_pattern, &file)),
                "{file} matches a CRIU kind"
            );
            assert_eq!(ImageKind::by_file_name(&file), Some(k));
            assert_eq!(ImageKind::by_magic(k.magic, &file), Some(k));
        }
        let name = |magic: u32, file: &str| ImageKind::by_magic(magic, file).map(|k| k.name);
        let msg = ImageKind::by_name("IPCNS_MSG").unwrap().magic;
        assert_eq!(name(msg, "criu-rs-mqueue-3.img"), Some("CRIU_RS_MQUEUE"));
        assert_eq!(name(msg, "ipcns-msg-11.img"), Some("IPCNS_MSG"));
        assert_eq!(name(msg, ""), Some("IPCNS_MSG"));
        assert_eq!(name(msg, "copy.img"), Some("IPCNS_MSG"));
        assert_eq!(name(0x5505_3847, "criu-rs-mqueue-3.img"), Some("CORE"));
        assert_eq!(name(0x1234_5678, "criu-rs-mqueue-3.img"), None);
    }

    #[test]
    fn file_names_map_to_kinds() {
        let name = |f: &str| ImageKind::by_file_name(f).map(|k| k.name);
        assert_eq!(name("core-15238.img"), Some("CORE"));
        assert_eq!(name("pagemap-shmem-37.img"), Some("PAGEMAP"));
        assert_eq!(name("pagemap-15238.img"), Some("PAGEMAP"));
        assert_eq!(name("pages-1.img"), Some("PAGES"));
        assert_eq!(name("stats-dump"), Some("STATS"));
        assert_eq!(name("signal-s-12.img"), Some("SIGNAL"));
        assert_eq!(name("inventory.img"), Some("INVENTORY"));
        assert_eq!(name("fdinfo-2.img"), Some("FDINFO"));
        assert_eq!(name("netns-9.img"), Some("NETNS"));
        assert_eq!(name("netns-ct-9.img"), Some("NETNF_CT"));
        assert_eq!(name("route6-9.img"), Some("ROUTE6"));
        assert_eq!(name("dump.log"), None);
    }

    #[test]
    fn headers_follow_the_family() {
        assert_eq!(ImageKind::by_name("INVENTORY").unwrap().header().len(), 4);
        assert_eq!(
            ImageKind::by_name("STATS").unwrap().header()[..4],
            IMG_SERVICE_MAGIC.to_le_bytes()
        );
        assert_eq!(
            ImageKind::by_name("CORE").unwrap().header()[..4],
            IMG_COMMON_MAGIC.to_le_bytes()
        );
        assert!(ImageKind::by_name("PAGES").unwrap().header().is_empty());
    }
}
