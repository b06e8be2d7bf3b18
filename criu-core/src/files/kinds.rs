//! The one table of what a process can hold (kinds of open files and of mappings, down to
//! the sub-kinds that matter: pty master or slave, TCP listener or connection, SysV shared
//! memory...), saying for each whether the dump records it and whether the restore
//! rebuilds it, and under which options.
//!
//! Both sides read it: the dump's checks (before the freeze) map what they see to a
//! [`Kind`] and ask [`Kind::dump_refusal`]; the restore's checks (before any task exists)
//! map the images to a [`Kind`] and ask [`Kind::restore_refusal`]. A kind the dump records
//! but the restore cannot rebuild is refused by the dump, so a dump that kills its tree
//! never leaves images the restore then turns down. Making a kind round-trip, once both
//! sides have the code, is a change of its one line here.
//!
//! It lives in the engine, not in `criu-images`: which objects this dumper and this
//! restorer handle is the engine's policy, while the image crate knows formats only
//! (CRIU's images can describe kinds neither side here handles). It sits beside the
//! dump's file code but imports nothing from the dump or the restore, so both can use it.
//!
//! Finer conditions of a state inside a kind that both sides handle (a unix socket with
//! connections not accepted yet, a deleted file above the ghost limit...) stay with the
//! code that handles the kind; the dump refuses those itself.

use std::fmt;

/// What the dump does with a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dump {
    /// The dump has the code to record it in the images.
    Records,
    /// The dump cannot record it; why.
    Refuses(&'static str),
}

/// What the restore does with a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    /// Rebuilt from the images alone.
    Rebuilds,
    /// Rebuilt when the user gives what it needs.
    RebuildsWith(Needs),
    /// Not rebuilt; why.
    Never(&'static str),
}

/// What a kind needs from the user to be rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// `-j`/`--shell-job` on both dump and restore: the job's terminal is the restorer's.
    ShellJob,
    /// `--inherit-fd` on restore: the caller hands the file in (CRIU's way for files
    /// outside what is dumped). The dump records it; the user promises the restore gets it.
    InheritFd,
    /// `--ext-unix-sk` on dump and restore (CRIU's): a unix socket whose peer is outside
    /// the dump is connected again to that peer's name.
    ExtUnixSk,
    /// `--file-locks` on both dump and restore, as CRIU asks: a lock is shared state with
    /// whoever else uses the file, so the user says the tree may take it again.
    FileLocks,
    /// `--tcp-established` (or `--tcp-close`) on both dump and restore: the connection is
    /// taken in TCP repair mode, with the network locked until it runs again (or it comes
    /// back closed).
    TcpEstablished,
    /// `--skip-in-flight` on dump: the connections not accepted yet are dropped.
    SkipInFlight,
    /// `--link-remap` on dump (CRIU's): a deleted name of a file that has other names
    /// is kept by giving the file one more name next to the old one, which the restore
    /// opens and removes.
    LinkRemap,
}

/// The options of a dump or restore that decide conditional kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Given {
    /// `-j`/`--shell-job`.
    pub shell_job: bool,
    /// On restore: the caller handed this very file with `--inherit-fd`.
    pub inherit_fd: bool,
    /// `--ext-unix-sk` (on dump: given for this very socket, which a stream one needs).
    pub ext_unix_sk: bool,
    /// `--file-locks`.
    pub file_locks: bool,
    /// `--tcp-established` or `--tcp-close`.
    pub tcp_established: bool,
    /// `--skip-in-flight`.
    pub skip_in_flight: bool,
    /// `--link-remap`.
    pub link_remap: bool,
}

/// One row of the table.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// What it is, for messages ("a pty master").
    pub name: &'static str,
    pub dump: Dump,
    pub restore: Restore,
}

use Dump::{Records, Refuses};
use Needs::{ExtUnixSk, FileLocks, InheritFd, LinkRemap, ShellJob, SkipInFlight, TcpEstablished};
use Restore::{Never, Rebuilds, RebuildsWith};

macro_rules! kinds {
    ($($(#[$doc:meta])* $kind:ident, $name:literal, $dump:expr, $restore:expr;)*) => {
        /// Every kind of object a process can hold that the dump or the restore tells
        /// apart (file descriptors and mappings).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $($(#[$doc])* $kind,)*
        }

        /// The table, in the order of [`Kind`].
        pub static TABLE: &[Entry] = &[
            $(Entry { kind: Kind::$kind, name: $name, dump: $dump, restore: $restore },)*
        ];
    };
}

const NO_TCP_STATE: &str = "TCP repair rebuilds connections established, connecting or half \
                            closed (as CRIU)";
const NO_SOCKET_KIND: &str = "sockets of this kind are not recorded";
const NO_NETLINK_OPTS: &str = "CRIU's image has no field for netlink-level options";
const NO_PACKET_OPTS: &str = "CRIU's image has no field for these packet options";
kinds! {
    // --- files reopened by path -----------------------------------------------------
    RegFile,        "a regular file",                               Records, Rebuilds;
    Directory,      "a directory",                                  Records, Rebuilds;
    /// An `O_PATH` descriptor (of anything that has a path).
    PathRef,        "an O_PATH reference",                          Records, Rebuilds;
    /// Character devices of the memory major (`/dev/null`, `/dev/zero`, `/dev/urandom`),
    /// which hold no state of the process.
    MemDevice,      "a memory device",                              Records, Rebuilds;
    /// Unlinked but open: saved whole as a ghost file and recreated.
    DeletedFile,    "a deleted regular file",                       Records, Rebuilds;
    /// A deleted name of a file that has other names: saved as a linked remap (a name
    /// of its own, given at dump time), as CRIU does with `--link-remap`.
    DeletedLinked,  "a deleted file that still has other links",    Records, RebuildsWith(LinkRemap);
    /// Saved as a ghost file (its type, owner, mode, and the device number or the
    /// symlink's target; a FIFO's data goes with the FIFO) and made again.
    DeletedOther,   "a deleted directory, FIFO, device node or symlink", Records, Rebuilds;
    /// On a mount outside the tree's mount namespace (handed in by a parent).
    ExternalFile,   "a file outside the tree's mounts",             Records, RebuildsWith(InheritFd);
    /// `/proc/PID/...` of a live process outside the dump (`/proc/1/status`): reopened by
    /// its path, as CRIU does; its images hold nothing more to tell that process from
    /// another that has its pid at restore. What would silently name a wrong process
    /// is refused where it can be seen: by the dump when the path now leads to
    /// another file than the open one (the pid was reused), by the restore when the
    /// path leads nowhere (the process is gone), and a dead process's file is a
    /// [`Kind::ProcDeadPid`].
    ProcPidFile,    "a file of /proc/PID of a process outside the dump", Records, Rebuilds;
    /// `/proc/PID` (or a file below it) of a process that has exited: the dir is
    /// unhashed (`/proc/67 (deleted)`). Recorded as CRIU's dead-pid remap
    /// (`remap-fpath.img`, PROCFS); the restore makes a process of that pid that exits
    /// at once, opens its `/proc` files while it is a zombie, and reaps it. Its pid must
    /// be free at restore, and it must not be a task of the dump (the dump refuses that,
    /// as CRIU: `/proc/PID` would name the task).
    ProcDeadPid,    "a file of /proc/PID of a process that has exited", Records, Rebuilds;
    /// `/proc/PID/...` of a task of the dump: reopened once that task exists again, under
    /// its pid as the restorer sees it.
    ProcTreeFile,   "a file of /proc/PID of a task in the dump",    Records, Rebuilds;
    /// A POSIX message queue (`mq_open`) of the tree's IPC namespace: saved with its
    /// messages in images of our own (CRIU 4.2 has none; see `mqueue.rs`).
    Mqueue,         "a POSIX message queue",                        Records, Rebuilds;
    /// A queue someone registered a notification on (`mq_notify`): the registration
    /// names a process and a signal or thread, and only that process could make it again.
    MqueueNotify,   "a POSIX message queue with a notification registered (mq_notify)",
        Refuses("the notification registration is not recorded"),
        Never("notification registrations are not rebuilt");
    /// A queue of another IPC namespace than the tree's (handed over a socket, or kept
    /// across unshare).
    MqueueForeignNs, "a POSIX message queue of an IPC namespace outside the dump",
        Refuses("only queues of the tree's IPC namespace are recorded"),
        Never("queues are made in the tree's IPC namespace");
    // --- pipes ----------------------------------------------------------------------
    Pipe,           "a pipe",                                       Records, Rebuilds;
    PacketPipe,     "a pipe in packet mode (O_DIRECT)",
        Refuses("packet boundaries are not recorded"),
        Never("packet-mode pipes are not rebuilt");
    Fifo,           "a FIFO",                                       Records, Rebuilds;
    // --- sockets --------------------------------------------------------------------
    UnixStream,     "a unix stream socket",                         Records, Rebuilds;
    UnixDgram,      "a unix datagram socket",                       Records, Rebuilds;
    UnixSeqpacket,  "a unix seqpacket socket",                      Records, Rebuilds;
    /// Data queued on a socket whose sender is gone for good (no peer, and unnamed or
    /// stream-like): the restore sends queued data again from the sender.
    UnixOrphanQueued, "a unix socket with data queued whose peer is gone",
        Records, Never("queued data is sent again by the socket's peer, which is gone");
    /// Connected to a socket no task of the dump holds (a service's /dev/log, a
    /// journal stream...): with `--ext-unix-sk`, recorded as CRIU does (the peer as an
    /// external entry with its name) and connected to that name again on restore.
    UnixPeerOutside, "a unix socket connected to a socket outside the dump",
        Records, RebuildsWith(ExtUnixSk);
    UnixOther,      "a unix socket of another type",                Refuses(NO_SOCKET_KIND), Never(NO_SOCKET_KIND);
    TcpListen,      "a listening TCP socket",                       Records, Rebuilds;
    /// With connections in its accept queue, which no descriptor holds: CRIU drops them
    /// when asked to (their clients see the connection reset once the tree is gone).
    TcpListenInFlight, "a listening TCP socket with connections not accepted yet",
        Records, RebuildsWith(SkipInFlight);
    /// Neither listening nor connected (created, maybe bound).
    TcpClosed,      "an unconnected TCP socket",                    Records, Rebuilds;
    /// ESTABLISHED, connecting (SYN_SENT) or half closed (FIN_WAIT1, FIN_WAIT2,
    /// CLOSE_WAIT, LAST_ACK, CLOSING).
    TcpConnected,   "a connected TCP socket",                       Records, RebuildsWith(TcpEstablished);
    /// SYN_RECV (a fast-open connection not yet acknowledged) and TIME_WAIT, which no
    /// descriptor normally holds.
    TcpOtherState,  "a TCP socket in SYN_RECV or TIME_WAIT",
        Refuses(NO_TCP_STATE), Never(NO_TCP_STATE);
    Udp,            "a UDP socket",                                 Records, Rebuilds;
    UdpLite,        "a UDP-Lite socket",                            Records, Rebuilds;
    /// SOCK_RAW of any protocol, IPv4 or IPv6: its queued packets are dropped (as CRIU).
    InetRaw,        "a raw IP socket",                              Records, Rebuilds;
    /// SOCK_DGRAM of IPPROTO_ICMP or IPPROTO_ICMPV6: queued replies are dropped.
    InetIcmp,       "an ICMP (ping) socket",                        Records, Rebuilds;
    InetOther,      "an IP socket of another protocol",             Refuses(NO_SOCKET_KIND), Never(NO_SOCKET_KIND);
    /// A socket of a network namespace that is neither the tree's nor the dumper's.
    SocketForeignNetns, "a socket of a network namespace outside the dump",
        Records, Never("sockets are created in the tree's network namespace");
    Netlink,        "a netlink socket",                             Records, Rebuilds;
    /// Messages the kernel queued for it would be lost (CRIU refuses it too).
    NetlinkQueued,  "a netlink socket with messages queued",
        Refuses("queued netlink messages are not saved"),
        Never("queued netlink messages are not saved");
    /// NETLINK_PKTINFO, NETLINK_EXT_ACK, NETLINK_CAP_ACK...: CRIU's image has no field
    /// for them.
    NetlinkOptions, "a netlink socket with netlink-level options set",
        Refuses(NO_NETLINK_OPTS), Never(NO_NETLINK_OPTS);
    /// Bound interface and protocol, options, memberships, fanout and ring geometry
    /// (a mapped ring is a [`Kind::MapSocket`] of its own); its queued packets
    /// are dropped (as CRIU).
    Packet,         "a packet socket",                              Records, Rebuilds;
    /// PACKET_QDISC_BYPASS, PACKET_IGNORE_OUTGOING, PACKET_TX_HAS_OFF, a virtio header
    /// of another size than the default, or a BPF fanout program.
    PacketOptions,  "a packet socket with options the image cannot hold",
        Refuses(NO_PACKET_OPTS), Never(NO_PACKET_OPTS);
    OtherSocket,    "a socket of another address family",           Refuses(NO_SOCKET_KIND), Never(NO_SOCKET_KIND);
    // --- anonymous-inode files ------------------------------------------------------
    Eventfd,        "an eventfd",                                   Records, Rebuilds;
    EventfdSemaphore, "an eventfd in semaphore mode (EFD_SEMAPHORE)",
        Refuses("the image has no room for the semaphore flag"),
        Never("the image has no room for the semaphore flag");
    Eventpoll,      "an epoll instance",                            Records, Rebuilds;
    Signalfd,       "a signalfd",                                   Records, Rebuilds;
    Timerfd,        "a timerfd",                                    Records, Rebuilds;
    Inotify,        "an inotify instance",                          Records, Rebuilds;
    /// Its flags and marks (inode and mount marks); queued events are not saved.
    Fanotify,       "a fanotify instance",                          Records, Rebuilds;
    Memfd,          "a memfd",                                      Records, Rebuilds;
    /// memfd_create(MFD_HUGETLB): saved as a memfd is, made again with its page size.
    HugetlbMemfd,   "a hugetlb memfd",                              Records, Rebuilds;
    Secretmem,      "memfd_secret memory",
        Refuses("secret memory cannot be read"), Never("secret memory is not rebuilt");
    Bpf,            "a BPF object (map, program or link)",
        Refuses("BPF objects are not recorded"), Never("BPF objects are not rebuilt");
    PerfEvent,      "a perf event",
        Refuses("perf events are not recorded"), Never("perf events are not rebuilt");
    /// A ring at rest, with nothing registered (`io_uring.rs` says what the dump checks
    /// and how the restore brings a new ring to the saved counters).
    IoUring,        "an io_uring instance",                         Records, Rebuilds;
    /// Of a task of the tree (opened again on it) or of a dead process (opened on a
    /// stand-in that dies at once; `pidfd.rs`).
    Pidfd,          "a pidfd",                                      Records, Rebuilds;
    /// Of a process outside the tree, which no restored process is.
    PidfdOutside,   "a pidfd of a process outside the dump",
        Refuses("after a restore no process of the tree is that process"),
        Never("only pidfds of the tree's tasks are opened again");
    /// `PIDFD_THREAD` (Linux 6.9): of one thread. CRIU 4.2 refuses it too.
    PidfdThread,    "a pidfd of a thread (PIDFD_THREAD)",
        Refuses("thread pidfds are not recorded"), Never("thread pidfds are not rebuilt");
    Userfaultfd,    "a userfaultfd",
        Refuses("userfaultfds are not recorded"), Never("userfaultfds are not rebuilt");
    OtherAnonInode, "an anonymous-inode file of another kind",
        Refuses("unknown kind"), Never("unknown kind");
    // --- namespaces -----------------------------------------------------------------
    /// An open `/proc/PID/ns/*` file of one of the dumper's own namespaces (which the
    /// restorer is in too), or of one of the holder's own (which the restore makes
    /// again, and reopens through a restored task's `/proc/PID/ns`).
    NsFile,         "a file of the dumper's or the holder's namespace", Records, Rebuilds;
    /// A namespace file of any other namespace (another task's, or one outside the tree).
    NsFileForeign,  "a file of another namespace",                  Records,
        Never("namespace files are reopened only for the restorer's namespaces and \
               those the tree has");
    // --- terminals ------------------------------------------------------------------
    /// A pty slave whose master is outside the dump: a shell job's terminal.
    PtySlave,       "a pty slave of a master outside the dump",     Records, RebuildsWith(ShellJob);
    /// Made again with its master, as the pty's own slave.
    PtySlavePaired, "a pty slave whose master is in the dump",      Records, Rebuilds;
    /// A pty slave whose master was closed (a `nohup` job after its ssh session ended):
    /// it only fails reads and writes now, and comes back as a slave of a new pty whose
    /// master the restorer closes.
    PtySlaveHungUp, "a pty slave whose master was closed",         Records, Rebuilds;
    /// Made again with its number, settings, queued data and sessions (`tty.rs`); the
    /// dump refuses one that a process outside the tree also holds.
    PtyMaster,      "a pty master",                                 Records, Rebuilds;
    /// `/dev/tty` opened by a task of a session whose terminal is a pty of the dump: the
    /// session's leader opens it again once it has its terminal back.
    DevTty,         "an fd of /dev/tty (the controlling terminal)",  Records, Rebuilds;
    /// `/dev/tty` of a shell job's terminal: the restorer's own `/dev/tty`.
    DevTtyJob,      "an fd of /dev/tty of a terminal outside the dump",
        Records, RebuildsWith(ShellJob);
    /// `/dev/console` (5:1): reopened by path with its settings (`tty/simple.rs`).
    Console,        "a console",                                    Records, Rebuilds;
    /// A virtual terminal (4:1 to 4:63): reopened by path with its settings.
    Vt,             "a virtual terminal",                           Records, Rebuilds;
    /// Serial lines, BSD ptys, `/dev/tty` of a terminal other than a pty.
    OtherTty,       "a terminal other than a Unix98 pty, console or virtual terminal",
        Refuses("only Unix98 ptys, consoles and virtual terminals are recorded"),
        Never("only Unix98 ptys, consoles and virtual terminals are rebuilt");
    // --- other devices and files ----------------------------------------------------
    CharDevice,     "a character device",
        Refuses("a device's state is its driver's, which is not saved"),
        Never("devices other than memory devices are not reopened");
    BlockDevice,    "a block device",
        Refuses("a device's state is its driver's, which is not saved"),
        Never("block devices are not reopened");
    Tun,            "a tun/tap device",
        Refuses("tun devices are not recorded"), Never("tun devices are not rebuilt");
    /// Anything else (CRIU's plugin-made external files, unknown types).
    OtherFile,      "a file of another kind",
        Refuses("unknown kind"), Never("unknown kind");
    // --- file locks (held through an open file; `lock.rs`) ---------------------------
    /// A `flock`, POSIX (`fcntl`, `lockf`) or OFD lock on a regular file or directory,
    /// taken again by the same process through the same open file description.
    FileLock,       "a file lock (flock, POSIX or OFD)",            Records, RebuildsWith(FileLocks);
    /// An `F_SETLEASE` lease that nobody is breaking, taken again like a flock.
    FileLease,      "a file lease (F_SETLEASE)",                    Records, RebuildsWith(FileLocks);
    /// A lease someone is breaking: taken again and broken anew on restore, as CRIU
    /// does (the break timer starts from the beginning; `lock.rs`).
    FileLeaseBreaking, "a file lease being broken",             Records, RebuildsWith(FileLocks);
    /// A lock on a pipe, socket, device or memfd (their files are new objects on
    /// restore, with nothing of the old one's locks to keep excluding), or a kind of
    /// lock the kernel shows that is none of the above (an NFS delegation...).
    FileLockOther,  "a lock of another kind, or on a file other than a regular file or directory",
        Refuses("locks are recorded on regular files and directories only, and of the \
                 flock, POSIX, OFD and lease kinds"),
        Never("locks are taken again on regular files and directories only");
    // --- mappings -------------------------------------------------------------------
    MapAnonPrivate, "private anonymous memory",                     Records, Rebuilds;
    MapAnonShared,  "shared anonymous memory",                      Records, Rebuilds;
    /// A private mapping of a shared anonymous memory object (opened through
    /// `/proc/PID/map_files`, shown as `/dev/zero (deleted)`): its pages nobody wrote
    /// privately are the object's current pages, and must keep following it.
    MapShmemPrivate, "a private mapping of shared anonymous memory", Records, Rebuilds;
    /// A private mapping of a regular file (or of `/dev/zero`).
    MapFilePrivate, "a private file mapping",                       Records, Rebuilds;
    MapFileShared,  "a shared file mapping",                        Records, Rebuilds;
    MapMemfd,       "a memfd mapping",                              Records, Rebuilds;
    MapVdso,        "the vDSO",                                     Records, Rebuilds;
    MapVvar,        "the vDSO data ([vvar])",                       Records, Rebuilds;
    MapVsyscall,    "the vsyscall page",                            Records, Rebuilds;
    /// The segment is saved with its namespace's (or, in the dumper's namespace, when
    /// only the tree has it attached); attached again at its address.
    MapSysvShm,     "a SysV shared memory attachment",             Records, Rebuilds;
    /// A mapping of a deleted regular file: saved as a ghost file, as an open one is,
    /// and mapped from the recreated file.
    MapDeletedFile, "a mapping of a deleted file",                  Records, Rebuilds;
    MapDeletedOther, "a mapping of a deleted file that is not a regular file",
        Refuses("only regular files are saved as ghost files"),
        Never("only regular files are recreated from ghost files");
    /// A mapped file whose path (in the task's root) no longer leads to it: renamed
    /// over, or on a mount the task does not see.
    MapUnreachableFile, "a mapping of a file its path no longer names",
        Records, Never("mapped files are reopened by path");
    /// Anonymous MAP_HUGETLB memory, private or shared: mapped again with its page size
    /// (which must have free huge pages on the restoring machine).
    MapHugetlb,     "a hugetlb mapping",                            Records, Rebuilds;
    /// A mapping of a device other than `/dev/zero` (GPU, framebuffer, `/dev/mem`...).
    MapDevice,      "a mapping of a device",
        Refuses("device memory is its driver's state, which is not saved"),
        Never("device mappings are not rebuilt");
    /// A packet socket's ring (PACKET_RX_RING / PACKET_TX_RING), mapped whole: its
    /// geometry is saved with the socket, which the restore sets up again and maps at
    /// the same address. The frames in the ring are not saved (as CRIU does not).
    MapSocket,      "a packet socket's mapped ring",                Records, Rebuilds;
    /// A mapping of another socket (TCP zero-copy receive...), or of a packet socket
    /// the mapping process does not hold open (CRIU maps a ring through that fd).
    MapOtherSocket, "a mapping of a socket that is not an open packet socket",
        Refuses("only the rings of packet sockets the mapping process holds open are saved"),
        Never("only packet rings are mapped again");
    /// A region of an io_uring ring the mapping process holds a descriptor of: mapped
    /// again from the restored ring, whose regions hold the saved bytes.
    MapIoUring,     "an io_uring ring's mapped region",             Records, Rebuilds;
    /// A ring whose descriptors the process closed: nothing says how it was made.
    MapIoUringUnheld, "an io_uring ring mapped without its descriptor",
        Refuses("only rings the mapping process holds a descriptor of are saved"),
        Never("only rings with a descriptor are made again");
    /// An AIO context's ring (io_setup): `/[aio] (deleted)`, rebuilt by io_setup.
    MapAioRing,     "an AIO ring",                                  Records, Rebuilds;
    /// A mapping of a kernel object without a path (perf buffer...).
    MapOther,       "a mapping of a kernel object",
        Refuses("unknown kind"), Never("unknown kind");
}

impl Kind {
    /// The row of the table for this kind.
    pub fn entry(self) -> &'static Entry {
        &TABLE[self as usize]
    }

    /// What it is, for messages ("a pty master").
    pub fn name(self) -> &'static str {
        self.entry().name
    }

    /// Why the dump must refuse this kind (`None`: it records it). A kind the restore
    /// cannot rebuild is refused even when the dump could record it: the dump then fails
    /// with the tree untouched, instead of killing it for images no restore takes.
    pub fn dump_refusal(self, given: Given) -> Option<String> {
        let e = self.entry();
        if let Refuses(why) = e.dump {
            return Some(format!("the dump cannot record it: {why}"));
        }
        match e.restore {
            Rebuilds | RebuildsWith(InheritFd) => None,
            RebuildsWith(ShellJob) if given.shell_job => None,
            RebuildsWith(ShellJob) => Some(
                "it is restored only as a shell job's terminal: dump and restore with \
                 -j/--shell-job"
                    .into(),
            ),
            RebuildsWith(ExtUnixSk) if given.ext_unix_sk => None,
            RebuildsWith(ExtUnixSk) => Some(
                "its peer is not in the dump: dump and restore with --ext-unix-sk to have \
                 it connected to its peer's name again"
                    .into(),
            ),
            RebuildsWith(FileLocks) if given.file_locks => None,
            RebuildsWith(FileLocks) => {
                Some("locks are dumped only when asked: dump and restore with --file-locks".into())
            }
            RebuildsWith(TcpEstablished) if given.tcp_established => None,
            RebuildsWith(TcpEstablished) => Some(
                "a TCP connection is dumped only when asked to: dump and restore with \
                 --tcp-established (or --tcp-close)"
                    .into(),
            ),
            RebuildsWith(LinkRemap) if given.link_remap => None,
            RebuildsWith(LinkRemap) => Some(
                "its other names are not in the dump: dump with --link-remap to give it \
                 a name of its own next to the old one (removed by the restore)"
                    .into(),
            ),
            RebuildsWith(SkipInFlight) if given.skip_in_flight => None,
            RebuildsWith(SkipInFlight) => Some(
                "the connections it has not accepted would be lost: dump with \
                 --skip-in-flight to drop them"
                    .into(),
            ),
            Never(why) => Some(format!("restore cannot rebuild it: {why}")),
        }
    }

    /// Why the restore must refuse this kind (`None`: it rebuilds it with `given`).
    pub fn restore_refusal(self, given: Given) -> Option<String> {
        match self.entry().restore {
            Rebuilds => None,
            RebuildsWith(ShellJob) if given.shell_job => None,
            RebuildsWith(ShellJob) => Some("it needs --shell-job (-j)".into()),
            RebuildsWith(InheritFd) if given.inherit_fd => None,
            RebuildsWith(InheritFd) => Some("it needs --inherit-fd for it".into()),
            RebuildsWith(ExtUnixSk) if given.ext_unix_sk => None,
            RebuildsWith(ExtUnixSk) => {
                Some("it needs --ext-unix-sk (its peer is outside the dump)".into())
            }
            RebuildsWith(FileLocks) if given.file_locks => None,
            RebuildsWith(FileLocks) => Some("it needs --file-locks".into()),
            RebuildsWith(TcpEstablished) if given.tcp_established => None,
            RebuildsWith(TcpEstablished) => {
                Some("it needs --tcp-established (or --tcp-close)".into())
            }
            // Only the dump meets these: the images hold a plain listener, or a name
            // of the file to open.
            RebuildsWith(SkipInFlight) | RebuildsWith(LinkRemap) => None,
            Never(why) => Some(why.into()),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether `path` (as the task sees it) is under `/proc/PID`, `/proc/self` or
/// `/proc/thread-self`: a file that names a process.
pub fn is_proc_pid_path(path: &[u8]) -> bool {
    let Some(rest) = path.strip_prefix(b"/proc/") else {
        return false;
    };
    let first = rest.split(|&b| b == b'/').next().unwrap_or(b"");
    first == b"self"
        || first == b"thread-self"
        || (!first.is_empty() && first.iter().all(|b| b.is_ascii_digit()))
}

/// Whether a unix socket with data queued is one whose sender is gone for good: no
/// peer, and unnamed (no one can address it) or stream-like (only a peer sends to it),
/// except an established end, whose peer closed after sending (a stream end shut down,
/// as the dump makes sure; a datagram end still pointing at its dead peer): the restore
/// makes it one end of a fresh pair whose other end sends the data and is closed. Such
/// a socket is a [`Kind::UnixOrphanQueued`]; both sides judge with this function
/// (`state` as sock_diag numbers it).
pub fn unix_orphan_with_data(peer: u32, state: u32, stream_like: bool, unnamed: bool) -> bool {
    const TCP_ESTABLISHED: u32 = 1;
    peer == 0 && state != TCP_ESTABLISHED && (stream_like || unnamed)
}

/// The PID of a `/proc/PID/...` path (`None` for any other path, and for `self` and
/// `thread-self`, which a file's link never shows: the kernel resolves them).
pub fn proc_pid_of(path: &[u8]) -> Option<i32> {
    let rest = path.strip_prefix(b"/proc/")?;
    let first = rest.split(|&b| b == b'/').next()?;
    std::str::from_utf8(first).ok()?.parse().ok()
}

/// The kind of an anonymous-inode file from its link (`anon_inode:[eventfd]`): `None`
/// when it is not one.
pub fn anon_inode_kind(link: &str) -> Option<Kind> {
    let name = link.strip_prefix("anon_inode:")?;
    let name = name.trim_start_matches('[').trim_end_matches(']');
    Some(match name {
        "eventfd" => Kind::Eventfd,
        "eventpoll" => Kind::Eventpoll,
        "signalfd" => Kind::Signalfd,
        "timerfd" => Kind::Timerfd,
        "inotify" => Kind::Inotify,
        "fanotify" => Kind::Fanotify,
        "bpf-map" | "bpf-prog" | "bpf_link" | "bpf_iter" => Kind::Bpf,
        "perf_event" => Kind::PerfEvent,
        "io_uring" => Kind::IoUring,
        "pidfd" => Kind::Pidfd,
        "userfaultfd" => Kind::Userfaultfd,
        _ => Kind::OtherAnonInode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_given() -> Vec<Given> {
        let mut out = Vec::new();
        for bits in 0..128u32 {
            out.push(Given {
                shell_job: bits & 1 != 0,
                inherit_fd: bits & 2 != 0,
                tcp_established: bits & 4 != 0,
                skip_in_flight: bits & 8 != 0,
                file_locks: bits & 16 != 0,
                ext_unix_sk: bits & 32 != 0,
                link_remap: bits & 64 != 0,
            });
        }
        out
    }

    #[test]
    fn the_table_is_in_kind_order() {
        for (i, e) in TABLE.iter().enumerate() {
            assert_eq!(e.kind as usize, i, "{:?}", e.kind);
            assert_eq!(e.kind.entry(), e);
        }
        let mut names: Vec<_> = TABLE.iter().map(|e| e.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), TABLE.len(), "names are unique");
    }

    /// The rule the table exists for: whatever options the dump was given, a kind the
    /// dump accepts is one the restore rebuilds (with the same options, and with the
    /// files the user must hand in for external ones).
    #[test]
    fn every_kind_the_dump_accepts_is_one_the_restore_rebuilds() {
        for e in TABLE {
            for given in every_given() {
                if e.kind.dump_refusal(given).is_some() {
                    continue;
                }
                let at_restore = Given {
                    inherit_fd: true,
                    ..given
                };
                assert_eq!(
                    e.kind.restore_refusal(at_restore),
                    None,
                    "{:?} ({}) is accepted by the dump with {given:?} but the restore \
                     refuses it",
                    e.kind,
                    e.name
                );
            }
        }
    }

    /// A kind the dump cannot record is not one the restore claims to rebuild either
    /// (it could only come from foreign images, and then both columns must say why).
    #[test]
    fn refusals_say_why() {
        for e in TABLE {
            if let Refuses(why) = e.dump {
                assert!(!why.is_empty(), "{:?}", e.kind);
                assert!(
                    matches!(e.restore, Never(w) if !w.is_empty()),
                    "{:?} is refused by the dump but said to be rebuilt",
                    e.kind
                );
            }
            if let Never(why) = e.restore {
                assert!(!why.is_empty(), "{:?}", e.kind);
                assert!(e.kind.dump_refusal(Given::default()).is_some());
                assert!(e.kind.restore_refusal(Given::default()).is_some());
            }
        }
    }

    #[test]
    fn the_kinds_of_the_issue_are_refused_by_both_sides() {
        let kind = Kind::MqueueNotify;
        let why = kind.dump_refusal(Given::default()).unwrap();
        assert!(why.contains("cannot"), "{kind:?}: {why}");
        assert!(kind.restore_refusal(Given::default()).is_some());
        assert!(Kind::PtySlave.dump_refusal(Given::default()).is_some());
        let job = Given {
            shell_job: true,
            ..Given::default()
        };
        assert_eq!(Kind::PtySlave.dump_refusal(job), None);
        assert_eq!(Kind::PtySlave.restore_refusal(job), None);
        for kind in [Kind::PtyMaster, Kind::PtySlavePaired] {
            assert_eq!(kind.dump_refusal(Given::default()), None);
            assert_eq!(kind.restore_refusal(Given::default()), None);
        }
        assert_eq!(Kind::ExternalFile.dump_refusal(Given::default()), None);
        assert!(Kind::ExternalFile
            .restore_refusal(Given::default())
            .unwrap()
            .contains("--inherit-fd"));
        let ext = Given {
            ext_unix_sk: true,
            ..Given::default()
        };
        let outside = Kind::UnixPeerOutside;
        assert!(outside
            .dump_refusal(Given::default())
            .unwrap()
            .contains("--ext-unix-sk"));
        assert!(outside
            .restore_refusal(Given::default())
            .unwrap()
            .contains("--ext-unix-sk"));
        assert_eq!(outside.dump_refusal(ext), None);
        assert_eq!(outside.restore_refusal(ext), None);
    }

    /// Locks and leases need `--file-locks` on both sides, as with CRIU; leases being
    /// broken and locks on files that come back as new objects are refused whatever the
    /// options.
    #[test]
    fn file_locks_need_the_flag_and_locks_on_other_files_are_refused() {
        let locks = Given {
            file_locks: true,
            ..Given::default()
        };
        let why = Kind::FileLock.dump_refusal(Given::default()).unwrap();
        assert!(why.contains("--file-locks"), "{why}");
        assert!(Kind::FileLock
            .restore_refusal(Given::default())
            .unwrap()
            .contains("--file-locks"));
        assert_eq!(Kind::FileLock.dump_refusal(locks), None);
        assert_eq!(Kind::FileLock.restore_refusal(locks), None);
        for lease in [Kind::FileLease, Kind::FileLeaseBreaking] {
            assert_eq!(lease.dump_refusal(locks), None);
            assert_eq!(lease.restore_refusal(locks), None);
            assert!(lease.dump_refusal(Given::default()).is_some());
        }
        assert!(Kind::FileLockOther.dump_refusal(locks).is_some());
        assert!(Kind::FileLockOther.restore_refusal(locks).is_some());
    }

    #[test]
    fn tcp_connections_need_the_flag_on_both_sides() {
        let tcp = Given {
            tcp_established: true,
            ..Given::default()
        };
        let why = Kind::TcpConnected.dump_refusal(Given::default()).unwrap();
        assert!(why.contains("--tcp-established"), "{why}");
        assert_eq!(Kind::TcpConnected.dump_refusal(tcp), None);
        assert!(Kind::TcpConnected
            .restore_refusal(Given::default())
            .unwrap()
            .contains("--tcp-established"));
        assert_eq!(Kind::TcpConnected.restore_refusal(tcp), None);
        let why = Kind::TcpListenInFlight
            .dump_refusal(Given::default())
            .unwrap();
        assert!(why.contains("--skip-in-flight"), "{why}");
        let skip = Given {
            skip_in_flight: true,
            ..Given::default()
        };
        assert_eq!(Kind::TcpListenInFlight.dump_refusal(skip), None);
    }

    #[test]
    fn proc_pid_paths() {
        assert!(is_proc_pid_path(b"/proc/12/status"));
        assert!(is_proc_pid_path(b"/proc/self/maps"));
        assert!(is_proc_pid_path(b"/proc/thread-self/comm"));
        assert!(is_proc_pid_path(b"/proc/1"));
        assert!(!is_proc_pid_path(b"/proc/sys/kernel/pid_max"));
        assert!(!is_proc_pid_path(b"/proc/meminfo"));
        assert!(!is_proc_pid_path(b"/proc/"));
        assert!(!is_proc_pid_path(b"/home/proc/1/x"));
        assert_eq!(proc_pid_of(b"/proc/12/status"), Some(12));
        assert_eq!(proc_pid_of(b"/proc/1"), Some(1));
        assert_eq!(proc_pid_of(b"/proc/self/maps"), None);
        assert_eq!(proc_pid_of(b"/proc/meminfo"), None);
    }

    #[test]
    fn anon_inode_links() {
        assert_eq!(anon_inode_kind("anon_inode:[eventfd]"), Some(Kind::Eventfd));
        assert_eq!(anon_inode_kind("anon_inode:inotify"), Some(Kind::Inotify));
        assert_eq!(anon_inode_kind("anon_inode:bpf-map"), Some(Kind::Bpf));
        assert_eq!(anon_inode_kind("anon_inode:[pidfd]"), Some(Kind::Pidfd));
        assert_eq!(
            anon_inode_kind("anon_inode:[kvm-vm]"),
            Some(Kind::OtherAnonInode)
        );
        assert_eq!(anon_inode_kind("/dev/null"), None);
    }
}
