//! Open files, both ways: the dump records every descriptor of the tree, the restore
//! opens each open file description again and hands it to the tasks that held it.
//!
//! # Layout
//!
//! One module per kind of file holds both its dump and its restore, as CRIU's
//! `files-reg.c`, `pipes.c` or `sk-unix.c` do, so a kind is read, and changed, in one
//! place:
//!
//! | module       | kinds                                                              |
//! |--------------|--------------------------------------------------------------------|
//! | `reg.rs`     | regular files, directories, memory devices, `O_PATH` references,   |
//! |              | `/proc/PID` files, external files                                  |
//! | `ghost.rs`   | deleted files: ghost files (any type, sparse data) and link remaps |
//! | `pipe.rs`    | pipes and FIFOs, with their data                                   |
//! | `socket.rs`  | what every socket shares: options, network namespaces, shutdown    |
//! | `unix.rs`    | unix sockets, their queues and connections (`unix/name.rs`: names; |
//! |              | `unix/external.rs`: peers outside the dump, `--ext-unix-sk`;       |
//! |              | `unix/queue.rs`: queued messages and the files they carry)         |
//! | `inet.rs`    | TCP listeners and unconnected TCP sockets, UDP, UDP-Lite           |
//! | `tcp.rs`     | TCP connections, in TCP repair mode (`--tcp-established`)          |
//! | `anon.rs`    | eventfd, epoll, signalfd, timerfd                                  |
//! | `inotify.rs` | inotify instances and their watches                                |
//! | `fanotify.rs`| fanotify groups with their inode and mount marks                   |
//! | `io_uring.rs`| why io_uring rings are refused, and what the refusal says of one     |
//! | `memfd.rs`   | memfds (and shared anonymous memory, dumped as one)                |
//! | `mqueue.rs`  | POSIX message queues, with their messages (images of our own)      |
//! | `tty.rs`     | Unix98 ptys: pairs with their queued data, controlling terminals;  |
//! |              | a shell job's terminal (`tty/queue.rs`, `tty/holders.rs`,          |
//! |              | `tty/make.rs`); consoles and virtual terminals (`tty/simple.rs`)   |
//! | `ns.rs`      | namespace files                                                    |
//! | `pidfd.rs`   | pidfds of the tree's tasks and of dead processes                   |
//! | `lock.rs`    | file locks (flock, POSIX, OFD) held through regular files          |
//!
//! Each kind module has a `dump` part and a `restore` part. The dump part is free
//! functions called by module (`pipe::check`, `pipe::dump_pipe`...) on an `OpenFd`
//! (the task's descriptor, duplicated with `pidfd_getfd`), plus the dump's state of the
//! kind where it has one (`pipe::PipeData`, `memfd::Memfds`, `unix::DumpState`...). The
//! restore part is methods of [`FileOpener`] (`check_<kind>`, `open_<kind>`,
//! `<kind>_kind`) or free functions where the kind needs nothing of the opener, plus
//! the kind's `RestoreState`: what it read from its side images and what it made so far.
//!
//! Around them:
//! - `kinds.rs`: the kind table, the one list of what the dump records and the restore
//!   rebuilds, read by both sides (and by the mappings' code);
//! - `dump.rs`: the dump's driver ([`FileTable`]): classifies each descriptor, checks
//!   it against the kind table, finds open file descriptions shared between
//!   descriptors and tasks (kcmp), calls the kind's dump, writes `files.img` and the
//!   side images; `dump/passed.rs` dumps the files unix sockets' queues carry
//!   (`SCM_RIGHTS`) as if a task held them;
//! - `restore.rs`: the restore's driver ([`FileOpener`]): loads the images, checks
//!   every descriptor before any task exists, opens each open file description once and
//!   keeps it for every task that takes it (`restore/fds.rs` moves it into the tasks),
//!   sets the flags and signal owner every kind shares;
//! - `fdinfo.rs` and `diag.rs`: parsers of `/proc/PID/fdinfo` and of sock_diag replies,
//!   tested on text and bytes.
//!
//! # Dispatch
//!
//! Each driver dispatches with a `match`: the dump on its classification of the
//! descriptor (`dump::Class`), the restore on the image's file type (`pb::FdTypes`).
//! Each arm is one call into the kind's module. A trait with one implementation per kind
//! (CRIU's `struct fdtype_ops`) was the other way; it would not make a kind more
//! self-contained here, because kinds use each other: a FIFO and a terminal are also a
//! path (`reg.rs`), an inotify watch on a deleted file watches the file `reg.rs`
//! recreates, and a unix socket pair makes two descriptors at once in the driver's
//! table. A match says all of that in plain calls, in one screen per driver.
//!
//! So adding a kind is: its module; its row in `kinds.rs`; a `dump::Class` variant with
//! its arms in `dump::classify`, `check_fd` and `FileTable`'s `dump_new` (the compiler
//! asks for the last, and for `Class::fd_type`); its arms in the opener's `file_kind` (the compiler asks),
//! `check_one` and `create` (the walk of the kind table in the restore's tests fails
//! for a kind the table says is rebuilt that nothing opens); and its `RestoreState` in
//! [`FileOpener`] if it has one.
//!
//! [`FileOpener`]: restore::FileOpener

pub mod fdinfo;
pub mod kinds;

mod anon;
mod diag;
mod dump;
mod fanotify;
mod ghost;
mod inet;
mod inet_raw;
mod inotify;
pub mod io_uring;
mod lock;
mod memfd;
mod mqueue;
mod netlink;
mod ns;
mod packet;
mod pidfd;
mod pipe;
mod procfs;
mod reg;
pub mod restore;
mod socket;
mod tcp;
mod tty;
mod unix;

pub use dump::{FileError, FileTable, TreeChecks, DEFAULT_GHOST_LIMIT};
pub use ghost::WritableMounts;
pub use lock::{LockCall, LockOp};
pub use memfd::MemfdInode;
pub use mqueue::check_namespace as check_mqueue_namespace;
pub use tcp::{RepairedSockets, TcpDumpOptions};
pub use tty::{ControllingTerminal, TtyRefill};
pub use unix::ExternalUnix;
