//! tp-fds: one open file descriptor of every kind, most with data in flight; the check
//! proves each is still at its number, with its flags, its data and its behaviour.
//!
//! Files go to `--dir DIR` (default: the ready file's directory), all named `tp-fds.*`.
//! `PATH.fds` lists the whole fd table at `ready`, one `FD<TAB>NAME<TAB>FD_FLAGS<TAB>FL_FLAGS<TAB>LINK`
//! line per fd (flags in hex, NAME `-` for fds the program did not open itself), and
//! `PATH.ports` the `tcp4`, `tcp6` and `udp4` ports.
//!
//! See README.md for the list of fds and what the check does with each.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::raw::c_int;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use criu_testprogs::{
    c_path, cvt, cvt_size, fd_flags, fd_link, fill_pattern, handler_addr, install_handler,
    query_action, set_thread_sigmask, thread_sigmask, write_atomic, Program, Report,
};

const PIPE_DATA: &[u8] = b"hello-pipe";
const FIFO_DATA: &[u8] = b"hello-fifo";
const STREAM_DATA: &[u8] = b"hello-sock";
const DGRAMS: [&[u8]; 2] = [b"dgram-one", b"dgram-number-two"];
const PACKETS: [&[u8]; 2] = [b"seq-1", b"seq-packet-number-2"];
const EVENTFD_COUNT: u64 = 42;
const REGULAR_DATA: &[u8] = b"0123456789abcdef";
const REGULAR_OFFSET: i64 = 4;
const EPOLL_PIPE_DATA: u64 = 0x7069_7065_0000_0001;
const EPOLL_EVENTFD_DATA: u64 = 0x6576_6664_0000_0002;
const MEMFD_BYTES: usize = 3 * 4096 + 100;
const DELETED_BYTES: usize = 8192 + 17;
const DEVNULL_FD: c_int = 100;
/// How long the check waits for something that should be immediate (a connection, a
/// datagram, an inotify event).
const PROMPT_MS: c_int = 2000;

/// Counts SIGUSR1 deliveries to the handler.
static USR1_HANDLED: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_usr1(_signo: c_int) {
    USR1_HANDLED.fetch_add(1, Ordering::SeqCst);
}

/// Everything the program holds open.
struct Fds {
    dir: PathBuf,
    pipe_r: OwnedFd,
    pipe_w: OwnedFd,
    fifo_r: File,
    fifo_w: File,
    stream_a: UnixStream,
    stream_b: UnixStream,
    dgram_a: UnixDatagram,
    dgram_b: UnixDatagram,
    seq_a: OwnedFd,
    seq_b: OwnedFd,
    unix_listener: UnixListener,
    tcp4: TcpListener,
    tcp4_port: u16,
    /// None when this machine has no IPv6 loopback.
    tcp6: Option<(TcpListener, u16)>,
    udp4: UdpSocket,
    udp4_port: u16,
    eventfd: OwnedFd,
    epoll: OwnedFd,
    signalfd: OwnedFd,
    timerfd: OwnedFd,
    inotify: OwnedFd,
    memfd: OwnedFd,
    memfd_data: Vec<u8>,
    regular: File,
    deleted: File,
    deleted_data: Vec<u8>,
    devnull: OwnedFd,
    netns: File,
}

fn main() {
    let mut program = Program::start(
        "tp-fds",
        &[(
            "--dir DIR",
            "where the FIFO, sockets and files go (default: the ready file's directory)",
        )],
    );
    let dir: PathBuf = program.opt("--dir").unwrap_or_else(|| program.ready_dir());
    // Absolute, to compare with the links in /proc/self/fd.
    let dir = program.must(std::fs::canonicalize(&dir), "resolve --dir");
    let fds = match Fds::open(dir) {
        Ok(fds) => fds,
        Err(e) => program.setup_failed(e),
    };
    let table = program.must(fd_table(), "list /proc/self/fd");
    program.must(
        write_atomic(&program.companion(".fds"), fds.describe(&table).as_bytes()),
        "write PATH.fds",
    );
    let ports = format!(
        "tcp4 {}\ntcp6 {}\nudp4 {}\n",
        fds.tcp4_port,
        fds.tcp6
            .as_ref()
            .map_or("-".to_owned(), |(_, port)| port.to_string()),
        fds.udp4_port
    );
    program.must(
        write_atomic(&program.companion(".ports"), ports.as_bytes()),
        "write PATH.ports",
    );

    program.ready();
    program.work_until_check(Duration::from_millis(10), || {});

    let mut report = Report::new();
    match fd_table() {
        Ok(now) => compare_tables(&mut report, &table, &now),
        Err(e) => report.fail(format!("list /proc/self/fd: {e}")),
    }
    fds.check(&mut report);
    program.finish(&report);
}

/// A step of setup, named for the error message.
fn step<T>(what: &str, result: io::Result<T>) -> Result<T, String> {
    result.map_err(|e| format!("{what}: {e}"))
}

/// Wraps a new fd returned by a libc call.
fn owned(ret: c_int) -> io::Result<OwnedFd> {
    let fd = cvt(ret)?;
    // SAFETY: the kernel just returned `fd`; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_cloexec(fd: &impl AsRawFd, on: bool) -> io::Result<()> {
    let value = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD only changes the close-on-exec flag of an fd we own.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, value) })?;
    Ok(())
}

fn add_status_flags(fd: &impl AsRawFd, flags: c_int) -> io::Result<()> {
    let (_, current) = fd_flags(fd.as_raw_fd())?;
    // SAFETY: F_SETFL only changes the status flags of an fd we own.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, current | flags) })?;
    Ok(())
}

/// write(2) that must take all of `data` at once.
fn write_all_once(fd: &impl AsRawFd, data: &[u8]) -> io::Result<()> {
    // SAFETY: `data` is valid for `data.len()` bytes of reading.
    let n = cvt_size(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })?;
    if n != data.len() {
        return Err(io::Error::other(format!(
            "short write: {n} of {} bytes",
            data.len()
        )));
    }
    Ok(())
}

/// One read(2) of at most `max` bytes.
fn read_once(fd: &impl AsRawFd, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max];
    // SAFETY: `buf` is valid for `max` bytes of writing.
    let n = cvt_size(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), max) })?;
    buf.truncate(n);
    Ok(buf)
}

/// One read(2) of at most `max` bytes once `fd` is readable, waiting at most `timeout_ms`.
fn read_within(fd: &impl AsRawFd, max: usize, timeout_ms: c_int) -> io::Result<Vec<u8>> {
    if !poll_readable(fd, timeout_ms)? {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("nothing to read within {timeout_ms} ms"),
        ));
    }
    read_once(fd, max)
}

/// One non-blocking recv(2) with MSG_TRUNC: the message (cut to `max`) and its real length.
fn recv_message(fd: &impl AsRawFd, max: usize) -> io::Result<(Vec<u8>, usize)> {
    let mut buf = vec![0u8; max];
    let flags = libc::MSG_DONTWAIT | libc::MSG_TRUNC;
    // SAFETY: `buf` is valid for `max` bytes of writing.
    let n = cvt_size(unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), max, flags) })?;
    buf.truncate(n.min(max));
    Ok((buf, n))
}

/// Whether `fd` becomes readable within `timeout_ms`.
fn poll_readable(fd: &impl AsRawFd, timeout_ms: c_int) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one valid pollfd.
        match cvt(unsafe { libc::poll(&mut pfd, 1, timeout_ms) }) {
            Ok(n) => return Ok(n == 1 && pfd.revents & libc::POLLIN != 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn int_sockopt(fd: &impl AsRawFd, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` describe a writable int, as these options return.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

fn set_int_sockopt(fd: &impl AsRawFd, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    let len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `value` is a readable int of `len` bytes.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const c_int).cast(),
            len,
        )
    })?;
    Ok(())
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut pair = [-1; 2];
    // SAFETY: `pair` has room for the two fds socketpair writes.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    })?;
    // SAFETY: both fds were just created for us.
    Ok(unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) })
}

fn itimerspec(value: Duration, interval: Duration) -> libc::itimerspec {
    let ts = |d: Duration| libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as _,
    };
    libc::itimerspec {
        it_interval: ts(interval),
        it_value: ts(value),
    }
}

fn epoll_add(epoll: &OwnedFd, fd: &impl AsRawFd, data: u64) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: data,
    };
    // SAFETY: `event` is a valid epoll_event; both fds are open.
    cvt(unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd.as_raw_fd(),
            &mut event,
        )
    })?;
    Ok(())
}

impl Fds {
    fn open(dir: PathBuf) -> Result<Fds, String> {
        let file = |name: &str| dir.join(format!("tp-fds.{name}"));
        for name in ["fifo", "sock", "regular", "deleted", "probe"] {
            let _ = std::fs::remove_file(file(name));
        }

        let mut pipe = [-1; 2];
        // SAFETY: `pipe` has room for the two fds pipe2 writes.
        let rc = unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) };
        step("pipe2", cvt(rc))?;
        // SAFETY: both fds were just created for us.
        let (pipe_r, pipe_w) =
            unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
        step("pipe flags", add_status_flags(&pipe_r, libc::O_NONBLOCK))?;
        step("pipe flags", set_cloexec(&pipe_w, false))?;
        step("fill the pipe", write_all_once(&pipe_w, PIPE_DATA))?;

        let fifo_path = file("fifo");
        let fifo_c = step("fifo path", c_path(&fifo_path))?;
        // SAFETY: `fifo_c` is a NUL-terminated path.
        let rc = unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) };
        step("mkfifo", cvt(rc))?;
        let fifo_r = step(
            "open the FIFO for reading",
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo_path),
        )?;
        let fifo_w = step(
            "open the FIFO for writing",
            OpenOptions::new().write(true).open(&fifo_path),
        )?;
        step("fill the FIFO", (&fifo_w).write_all(FIFO_DATA))?;

        let (stream_a, stream_b) = step("stream socketpair", UnixStream::pair())?;
        step("stream flags", set_cloexec(&stream_b, false))?;
        step(
            "queue on the stream pair",
            (&stream_a).write_all(STREAM_DATA),
        )?;

        let (dgram_a, dgram_b) = step("datagram socketpair", UnixDatagram::pair())?;
        step("datagram flags", dgram_b.set_nonblocking(true))?;
        for dgram in DGRAMS {
            step("queue a datagram", dgram_a.send(dgram).map(drop))?;
        }

        let (seq_a, seq_b) = step("seqpacket socketpair", seqpacket_pair())?;
        step(
            "seqpacket flags",
            add_status_flags(&seq_b, libc::O_NONBLOCK),
        )?;
        for packet in PACKETS {
            step("queue a packet", write_all_once(&seq_a, packet))?;
        }

        let unix_listener = step(
            "bind and listen on DIR/tp-fds.sock",
            UnixListener::bind(file("sock")),
        )?;

        let tcp4 = step("listen on 127.0.0.1:0", TcpListener::bind("127.0.0.1:0"))?;
        step(
            "SO_REUSEADDR",
            set_int_sockopt(&tcp4, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1),
        )?;
        step("tcp4 flags", set_cloexec(&tcp4, false))?;
        let tcp4_port = step("tcp4 address", tcp4.local_addr())?.port();
        let tcp6 = match TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) {
            Ok(listener) => {
                step(
                    "SO_REUSEADDR",
                    set_int_sockopt(&listener, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1),
                )?;
                let port = step("tcp6 address", listener.local_addr())?.port();
                Some((listener, port))
            }
            Err(e) => {
                eprintln!("tp-fds: no IPv6 loopback, skipping the [::1] listener: {e}");
                None
            }
        };
        let udp4 = step("bind UDP 127.0.0.1:0", UdpSocket::bind("127.0.0.1:0"))?;
        step("udp flags", udp4.set_nonblocking(true))?;
        let udp4_port = step("udp address", udp4.local_addr())?.port();

        // SAFETY: eventfd has no memory arguments.
        let eventfd = step(
            "eventfd",
            owned(unsafe { libc::eventfd(EVENTFD_COUNT as u32, libc::EFD_NONBLOCK) }),
        )?;

        // SAFETY: epoll_create1 has no memory arguments.
        let epoll = step(
            "epoll_create1",
            owned(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }),
        )?;
        step(
            "watch the pipe",
            epoll_add(&epoll, &pipe_r, EPOLL_PIPE_DATA),
        )?;
        step(
            "watch the eventfd",
            epoll_add(&epoll, &eventfd, EPOLL_EVENTFD_DATA),
        )?;

        step(
            "SIGUSR1 handler",
            install_handler(libc::SIGUSR1, on_usr1, libc::SA_RESTART, &[]),
        )?;
        step(
            "block SIGUSR1",
            set_thread_sigmask(libc::SIG_BLOCK, &[libc::SIGUSR1]),
        )?;
        let usr1 = criu_testprogs::sigset(&[libc::SIGUSR1]);
        // SAFETY: `usr1` is an initialised sigset_t.
        let signalfd = step(
            "signalfd",
            owned(unsafe { libc::signalfd(-1, &usr1, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) }),
        )?;
        // SAFETY: raise has no memory arguments; SIGUSR1 is blocked, so it stays pending.
        step("raise SIGUSR1", cvt(unsafe { libc::raise(libc::SIGUSR1) }))?;

        // SAFETY: timerfd_create has no memory arguments.
        let timerfd = step(
            "timerfd_create",
            owned(unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            }),
        )?;
        let spec = itimerspec(Duration::from_secs(1), Duration::from_secs(1));
        let fd = timerfd.as_raw_fd();
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
        let rc = unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) };
        step("timerfd_settime", cvt(rc))?;

        // SAFETY: inotify_init1 has no memory arguments.
        let inotify = step(
            "inotify_init1",
            owned(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) }),
        )?;
        let dir_c = step("dir path", c_path(&dir))?;
        let mask = libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_TO;
        // SAFETY: `dir_c` is a NUL-terminated path.
        let rc = unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), dir_c.as_ptr(), mask) };
        step("inotify_add_watch", cvt(rc))?;

        // SAFETY: the name is a NUL-terminated literal.
        let memfd = step(
            "memfd_create",
            owned(unsafe { libc::memfd_create(c"tp-fds".as_ptr(), libc::MFD_ALLOW_SEALING) }),
        )?;
        let memfd_data = pattern_bytes(MEMFD_BYTES, 0x3E3F_D000_0000_0001);
        step("fill the memfd", write_all_once(&memfd, &memfd_data))?;
        // SAFETY: F_ADD_SEALS takes an int of seal bits.
        let rc = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        step("seal the memfd", cvt(rc))?;

        step(
            "write DIR/tp-fds.regular",
            std::fs::write(file("regular"), REGULAR_DATA),
        )?;
        let regular = step(
            "open DIR/tp-fds.regular",
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(file("regular")),
        )?;
        step("regular flags", set_cloexec(&regular, false))?;
        // SAFETY: lseek has no memory arguments.
        let offset = unsafe { libc::lseek(regular.as_raw_fd(), REGULAR_OFFSET, libc::SEEK_SET) };
        step("seek", cvt_off(offset))?;

        let deleted_data = pattern_bytes(DELETED_BYTES, 0xDE1E_7ED0_0000_0001);
        let mut deleted = step(
            "create DIR/tp-fds.deleted",
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(file("deleted")),
        )?;
        step("fill DIR/tp-fds.deleted", deleted.write_all(&deleted_data))?;
        step(
            "unlink DIR/tp-fds.deleted",
            std::fs::remove_file(file("deleted")),
        )?;

        let null = step(
            "open /dev/null",
            OpenOptions::new().read(true).write(true).open("/dev/null"),
        )?;
        // SAFETY: dup2 onto a number we do not use; the result is owned by `devnull`.
        let devnull = step(
            "dup2 /dev/null",
            owned(unsafe { libc::dup2(null.as_raw_fd(), DEVNULL_FD) }),
        )?;
        drop(null);

        let netns = step("open /proc/self/ns/net", File::open("/proc/self/ns/net"))?;

        Ok(Fds {
            dir,
            pipe_r,
            pipe_w,
            fifo_r,
            fifo_w,
            stream_a,
            stream_b,
            dgram_a,
            dgram_b,
            seq_a,
            seq_b,
            unix_listener,
            tcp4,
            tcp4_port,
            tcp6,
            udp4,
            udp4_port,
            eventfd,
            epoll,
            signalfd,
            timerfd,
            inotify,
            memfd,
            memfd_data,
            regular,
            deleted,
            deleted_data,
            devnull,
            netns,
        })
    }

    /// (name, fd) of every fd the program opened.
    fn named(&self) -> Vec<(&'static str, c_int)> {
        let mut named = vec![
            ("pipe-r", self.pipe_r.as_raw_fd()),
            ("pipe-w", self.pipe_w.as_raw_fd()),
            ("fifo-r", self.fifo_r.as_raw_fd()),
            ("fifo-w", self.fifo_w.as_raw_fd()),
            ("stream-a", self.stream_a.as_raw_fd()),
            ("stream-b", self.stream_b.as_raw_fd()),
            ("dgram-a", self.dgram_a.as_raw_fd()),
            ("dgram-b", self.dgram_b.as_raw_fd()),
            ("seqpacket-a", self.seq_a.as_raw_fd()),
            ("seqpacket-b", self.seq_b.as_raw_fd()),
            ("unix-listen", self.unix_listener.as_raw_fd()),
            ("tcp4-listen", self.tcp4.as_raw_fd()),
            ("udp4", self.udp4.as_raw_fd()),
            ("eventfd", self.eventfd.as_raw_fd()),
            ("epoll", self.epoll.as_raw_fd()),
            ("signalfd", self.signalfd.as_raw_fd()),
            ("timerfd", self.timerfd.as_raw_fd()),
            ("inotify", self.inotify.as_raw_fd()),
            ("memfd", self.memfd.as_raw_fd()),
            ("regular", self.regular.as_raw_fd()),
            ("deleted", self.deleted.as_raw_fd()),
            ("devnull", self.devnull.as_raw_fd()),
            ("netns", self.netns.as_raw_fd()),
        ];
        if let Some((listener, _)) = &self.tcp6 {
            named.push(("tcp6-listen", listener.as_raw_fd()));
        }
        named
    }

    /// The text of PATH.fds.
    fn describe(&self, table: &FdTable) -> String {
        let names: BTreeMap<c_int, &str> = self
            .named()
            .into_iter()
            .map(|(name, fd)| (fd, name))
            .collect();
        table
            .iter()
            .map(|(fd, entry)| {
                let name = names.get(fd).copied().unwrap_or("-");
                format!(
                    "{fd}\t{name}\t{:#x}\t{:#x}\t{}\n",
                    entry.fd_flags, entry.fl_flags, entry.link
                )
            })
            .collect()
    }

    fn check(&self, report: &mut Report) {
        self.check_links(report);
        // Before anything is read: epoll must see both sources ready.
        self.check_epoll(report);
        check_stream(report, "pipe", &self.pipe_r, &self.pipe_w, PIPE_DATA);
        check_stream(report, "FIFO", &self.fifo_r, &self.fifo_w, FIFO_DATA);
        self.check_stream_pair(report);
        check_messages(
            report,
            "datagram pair",
            &self.dgram_a,
            &self.dgram_b,
            &DGRAMS,
        );
        check_messages(report, "seqpacket pair", &self.seq_a, &self.seq_b, &PACKETS);
        self.check_unix_listener(report);
        check_tcp_listener(
            report,
            "tcp4 listener",
            &self.tcp4,
            SocketAddr::from(([127, 0, 0, 1], self.tcp4_port)),
        );
        if let Some((listener, port)) = &self.tcp6 {
            check_tcp_listener(
                report,
                "tcp6 listener",
                listener,
                SocketAddr::from((Ipv6Addr::LOCALHOST, *port)),
            );
        }
        self.check_udp(report);
        self.check_eventfd(report);
        self.check_signals(report);
        self.check_timerfd(report);
        self.check_inotify(report);
        self.check_memfd(report);
        self.check_files(report);
    }

    /// Each fd points to the right kind of object (the table comparison checks that
    /// nothing changed; this checks it was right to begin with and still is).
    fn check_links(&self, report: &mut Report) {
        let expect =
            |name: &str, fd: c_int, ok: &dyn Fn(&str) -> bool, report: &mut Report| match fd_link(
                fd,
            ) {
                Ok(link) => {
                    report.check(ok(&link), || format!("{name} (fd {fd}) points to `{link}`"))
                }
                Err(e) => report.fail(format!("{name} (fd {fd}): readlink: {e}")),
            };
        let starts = |prefix: &'static str| move |link: &str| link.starts_with(prefix);
        for (name, fd) in self.named() {
            let path_of = |leaf: &str| self.dir.join(leaf).to_string_lossy().into_owned();
            let ok: Box<dyn Fn(&str) -> bool> = match name {
                "pipe-r" | "pipe-w" => Box::new(starts("pipe:[")),
                "fifo-r" | "fifo-w" => {
                    let path = path_of("tp-fds.fifo");
                    Box::new(move |link: &str| link == path)
                }
                "eventfd" => Box::new(|link: &str| link == "anon_inode:[eventfd]"),
                "epoll" => Box::new(|link: &str| link == "anon_inode:[eventpoll]"),
                "signalfd" => Box::new(|link: &str| link == "anon_inode:[signalfd]"),
                "timerfd" => Box::new(|link: &str| link == "anon_inode:[timerfd]"),
                "inotify" => Box::new(|link: &str| link == "anon_inode:inotify"),
                "memfd" => Box::new(starts("/memfd:tp-fds")),
                "regular" => {
                    let path = path_of("tp-fds.regular");
                    Box::new(move |link: &str| link == path)
                }
                "deleted" => {
                    let path = format!("{} (deleted)", path_of("tp-fds.deleted"));
                    Box::new(move |link: &str| link == path)
                }
                "devnull" => Box::new(|link: &str| link == "/dev/null"),
                "netns" => Box::new(starts("net:[")),
                _ => Box::new(starts("socket:[")),
            };
            expect(name, fd, &*ok, report);
        }
        report.check(self.devnull.as_raw_fd() == DEVNULL_FD, || {
            "/dev/null is not at fd 100".to_owned()
        });
        match (
            fd_link(self.pipe_r.as_raw_fd()),
            fd_link(self.pipe_w.as_raw_fd()),
        ) {
            (Ok(r), Ok(w)) => report.check(r == w, || format!("pipe ends differ: `{r}` vs `{w}`")),
            _ => report.fail("pipe ends: readlink failed"),
        }
        if let (Ok(fd_ns), Ok(own_ns)) = (
            fd_link(self.netns.as_raw_fd()),
            std::fs::read_link("/proc/self/ns/net"),
        ) {
            let own_ns = own_ns.to_string_lossy().into_owned();
            report.check(fd_ns == own_ns, || {
                format!("netns fd is `{fd_ns}`, own net namespace `{own_ns}`")
            });
        }
    }

    fn check_epoll(&self, report: &mut Report) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
        // SAFETY: `events` has room for the 8 events the kernel may write.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 8, 0) };
        let Some(n) = report.ok_or_fail(cvt(n), "epoll_wait") else {
            return;
        };
        let mut seen: Vec<(u64, u32)> = events[..n as usize]
            .iter()
            .map(|e| (e.u64, e.events))
            .collect();
        seen.sort_unstable();
        let mut expected = vec![
            (EPOLL_PIPE_DATA, libc::EPOLLIN as u32),
            (EPOLL_EVENTFD_DATA, libc::EPOLLIN as u32),
        ];
        expected.sort_unstable();
        report.check(seen == expected, || {
            let fmt = |v: &[(u64, u32)]| {
                v.iter()
                    .map(|(d, e)| format!("{d:#x}/{e:#x}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            format!(
                "epoll_wait reported [{}], expected [{}] (data/events)",
                fmt(&seen),
                fmt(&expected)
            )
        });
    }

    fn check_stream_pair(&self, report: &mut Report) {
        match read_within(&self.stream_b, 64, 0) {
            Ok(data) => report.check(data == STREAM_DATA, || {
                format!(
                    "stream pair held {:?}, expected {:?}",
                    String::from_utf8_lossy(&data),
                    "hello-sock"
                )
            }),
            Err(e) => report.fail(format!("stream pair: recv: {e}")),
        }
        // And the two ends are still connected, both ways.
        for (from, to, what) in [
            (&self.stream_b, &self.stream_a, "b->a"),
            (&self.stream_a, &self.stream_b, "a->b"),
        ] {
            let sent = write_all_once(from, b"ping");
            let back = sent.and_then(|_| read_within(to, 64, PROMPT_MS));
            match back {
                Ok(data) => report.check(data == b"ping", || {
                    format!("stream pair {what}: got {data:?}")
                }),
                Err(e) => report.fail(format!("stream pair {what}: {e}")),
            }
        }
    }

    fn check_unix_listener(&self, report: &mut Report) {
        let path = self.dir.join("tp-fds.sock");
        match self.unix_listener.local_addr() {
            Ok(addr) => report.check(addr.as_pathname() == Some(path.as_path()), || {
                format!(
                    "unix listener bound to {addr:?}, expected {}",
                    path.display()
                )
            }),
            Err(e) => report.fail(format!("unix listener: getsockname: {e}")),
        }
        check_listening(report, "unix listener", &self.unix_listener);
        let client = match UnixStream::connect(&path) {
            Ok(client) => client,
            Err(e) => {
                return report.fail(format!("unix listener: connect to {}: {e}", path.display()))
            }
        };
        match accept_within(&self.unix_listener, || {
            self.unix_listener.accept().map(|(s, _)| s)
        }) {
            Ok(server) => check_connected(report, "unix listener", &client, &server),
            Err(e) => report.fail(format!("unix listener: accept: {e}")),
        }
    }

    fn check_udp(&self, report: &mut Report) {
        match self.udp4.local_addr() {
            Ok(addr) => report.check_eq("udp4 port", addr.port(), self.udp4_port),
            Err(e) => report.fail(format!("udp4: getsockname: {e}")),
        }
        let sent = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.send_to(b"udp-probe", ("127.0.0.1", self.udp4_port)));
        if let Err(e) = sent {
            return report.fail(format!("udp4: send a probe: {e}"));
        }
        let got = poll_readable(&self.udp4, PROMPT_MS).and_then(|_| recv_message(&self.udp4, 64));
        match got {
            Ok((data, _)) => {
                report.check(data == b"udp-probe", || format!("udp4 received {data:?}"))
            }
            Err(e) => report.fail(format!("udp4: receive the probe: {e}")),
        }
    }

    fn check_eventfd(&self, report: &mut Report) {
        match read_once(&self.eventfd, 8) {
            Ok(bytes) if bytes.len() == 8 => {
                let count = u64::from_ne_bytes(bytes.try_into().unwrap_or_default());
                report.check_eq("eventfd counter", count, EVENTFD_COUNT);
            }
            Ok(bytes) => report.fail(format!("eventfd: read {} bytes", bytes.len())),
            Err(e) => report.fail(format!("eventfd: read: {e}")),
        }
    }

    /// The pending SIGUSR1 comes out of the signalfd; the handler is still installed and
    /// runs once SIGUSR1 is unblocked.
    fn check_signals(&self, report: &mut Report) {
        match thread_sigmask() {
            // SAFETY: `mask` is an initialised sigset_t.
            Ok(mask) => report.check(
                unsafe { libc::sigismember(&mask, libc::SIGUSR1) } == 1,
                || "SIGUSR1 is no longer blocked".to_owned(),
            ),
            Err(e) => report.fail(format!("sigprocmask: {e}")),
        }
        match read_once(
            &self.signalfd,
            std::mem::size_of::<libc::signalfd_siginfo>(),
        ) {
            Ok(bytes) if bytes.len() == std::mem::size_of::<libc::signalfd_siginfo>() => {
                // SAFETY: the kernel wrote a whole signalfd_siginfo; it is plain data and
                // read_unaligned copes with the Vec's alignment.
                let info: libc::signalfd_siginfo =
                    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
                report.check_eq("signalfd signal", info.ssi_signo, libc::SIGUSR1 as u32);
            }
            Ok(bytes) => report.fail(format!("signalfd: read {} bytes", bytes.len())),
            Err(e) => report.fail(format!("signalfd: no pending SIGUSR1: {e}")),
        }
        report.check_eq(
            "SIGUSR1 handler runs before unblocking",
            USR1_HANDLED.load(Ordering::SeqCst),
            0,
        );
        match query_action(libc::SIGUSR1) {
            Ok(action) => {
                report.check(action.sa_sigaction == handler_addr(on_usr1), || {
                    "SIGUSR1 handler changed".to_owned()
                });
                report.check(action.sa_flags & libc::SA_RESTART != 0, || {
                    "SIGUSR1 lost SA_RESTART".to_owned()
                });
            }
            Err(e) => report.fail(format!("sigaction(SIGUSR1): {e}")),
        }
        let delivered = set_thread_sigmask(libc::SIG_UNBLOCK, &[libc::SIGUSR1])
            // SAFETY: raise has no memory arguments; the handler only bumps an atomic.
            .and_then(|_| cvt(unsafe { libc::raise(libc::SIGUSR1) }));
        match delivered {
            Ok(_) => report.check_eq(
                "SIGUSR1 handler runs",
                USR1_HANDLED.load(Ordering::SeqCst),
                1,
            ),
            Err(e) => report.fail(format!("unblock and raise SIGUSR1: {e}")),
        }
    }

    fn check_timerfd(&self, report: &mut Report) {
        let mut current = itimerspec(Duration::ZERO, Duration::ZERO);
        // SAFETY: `current` is a valid itimerspec to write.
        match cvt(unsafe { libc::timerfd_gettime(self.timerfd.as_raw_fd(), &mut current) }) {
            Ok(_) => report.check_eq(
                "timerfd interval (s, ns)",
                (current.it_interval.tv_sec, current.it_interval.tv_nsec),
                (1, 0),
            ),
            Err(e) => report.fail(format!("timerfd_gettime: {e}")),
        }
        let expirations =
            poll_readable(&self.timerfd, 2500).and_then(|_| read_once(&self.timerfd, 8));
        match expirations {
            Ok(bytes) if bytes.len() == 8 => {
                let n = u64::from_ne_bytes(bytes.try_into().unwrap_or_default());
                report.check(n >= 1, || "timerfd: zero expirations".to_owned());
            }
            Ok(bytes) => report.fail(format!("timerfd: read {} bytes", bytes.len())),
            Err(e) => report.fail(format!("timerfd: no expiration within 2.5 s: {e}")),
        }
    }

    fn check_inotify(&self, report: &mut Report) {
        while matches!(read_once(&self.inotify, 4096), Ok(bytes) if !bytes.is_empty()) {}
        let probe = self.dir.join("tp-fds.probe");
        if let Err(e) = std::fs::write(&probe, b"probe") {
            return report.fail(format!("inotify: create {}: {e}", probe.display()));
        }
        let mut found = false;
        for _ in 0..PROMPT_MS / 100 {
            if let Ok(bytes) = read_within(&self.inotify, 4096, 100) {
                found = inotify_names(&bytes)
                    .any(|(mask, name)| mask & libc::IN_CREATE != 0 && name == b"tp-fds.probe");
            }
            if found {
                break;
            }
        }
        let _ = std::fs::remove_file(&probe);
        report.check(found, || {
            "inotify: no IN_CREATE event for tp-fds.probe within 2 s".to_owned()
        });
    }

    fn check_memfd(&self, report: &mut Report) {
        let fd = self.memfd.as_raw_fd();
        let mut data = vec![0u8; self.memfd_data.len() + 1];
        // SAFETY: `data` is valid for its length of writing.
        match cvt_size(unsafe { libc::pread(fd, data.as_mut_ptr().cast(), data.len(), 0) }) {
            Ok(n) => {
                data.truncate(n);
                report.check(data == self.memfd_data, || {
                    format!("memfd content differs ({n} bytes read)")
                });
            }
            Err(e) => report.fail(format!("memfd: pread: {e}")),
        }
        // SAFETY: lseek and F_GET_SEALS have no memory arguments.
        let offset = cvt_off(unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) });
        if let Some(offset) = report.ok_or_fail(offset, "memfd: lseek") {
            report.check_eq("memfd offset", offset, self.memfd_data.len() as i64);
        }
        // SAFETY: F_GET_SEALS takes no argument.
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
        if let Some(seals) = report.ok_or_fail(cvt(seals), "memfd: F_GET_SEALS") {
            report.check_eq("memfd seals", seals, libc::F_SEAL_SHRINK);
        }
    }

    fn check_files(&self, report: &mut Report) {
        // SAFETY: lseek has no memory arguments.
        let offset = cvt_off(unsafe { libc::lseek(self.regular.as_raw_fd(), 0, libc::SEEK_CUR) });
        if let Some(offset) = report.ok_or_fail(offset, "regular file: lseek") {
            report.check_eq("regular file offset", offset, REGULAR_OFFSET);
        }
        match read_once(&self.regular, 64) {
            Ok(data) => report.check(data == REGULAR_DATA[REGULAR_OFFSET as usize..], || {
                format!(
                    "regular file from the offset reads {:?}",
                    String::from_utf8_lossy(&data)
                )
            }),
            Err(e) => report.fail(format!("regular file: read: {e}")),
        }

        let mut data = vec![0u8; self.deleted_data.len()];
        match self.deleted.read_exact_at(&mut data, 0) {
            Ok(()) => report.check(data == self.deleted_data, || {
                "deleted file content differs".to_owned()
            }),
            Err(e) => report.fail(format!("deleted file: read: {e}")),
        }
        match self.deleted.metadata() {
            Ok(meta) => {
                report.check_eq("deleted file links", meta.nlink(), 0);
                report.check_eq(
                    "deleted file size",
                    meta.len(),
                    self.deleted_data.len() as u64,
                );
            }
            Err(e) => report.fail(format!("deleted file: fstat: {e}")),
        }

        match write_all_once(&self.devnull, b"gone") {
            Ok(()) => {}
            Err(e) => report.fail(format!("/dev/null: write: {e}")),
        }
    }
}

fn cvt_off(ret: libc::off_t) -> io::Result<i64> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn pattern_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut words = vec![0u64; len.div_ceil(8)];
    fill_pattern(&mut words, seed, 0);
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    bytes.truncate(len);
    bytes
}

/// (mask, name) of each event in a buffer read from an inotify fd.
fn inotify_names(bytes: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    const HEADER: usize = 16; // wd, mask, cookie, len
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.len() < HEADER {
            return None;
        }
        let mask = u32::from_ne_bytes(rest[4..8].try_into().ok()?);
        let len = u32::from_ne_bytes(rest[12..16].try_into().ok()?) as usize;
        let name = rest.get(HEADER..HEADER + len)?;
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(len)];
        rest = &rest[HEADER + len..];
        Some((mask, name))
    })
}

/// Data queued at `ready` is read back exactly, then nothing more; a new write goes through.
fn check_stream(
    report: &mut Report,
    what: &str,
    reader: &impl AsRawFd,
    writer: &impl AsRawFd,
    expected: &[u8],
) {
    match read_once(reader, 256) {
        Ok(data) => report.check(data == expected, || {
            format!(
                "{what} held {:?}, expected {:?}",
                String::from_utf8_lossy(&data),
                String::from_utf8_lossy(expected)
            )
        }),
        Err(e) => report.fail(format!("{what}: read: {e}")),
    }
    match read_once(reader, 256) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => report.fail(format!("{what}: more after the queued data: {other:?}")),
    }
    match write_all_once(writer, b"again").and_then(|_| read_once(reader, 256)) {
        Ok(data) => report.check(data == b"again", || {
            format!("{what}: wrote `again`, read {data:?}")
        }),
        Err(e) => report.fail(format!("{what}: write and read back: {e}")),
    }
}

/// Messages queued at `ready` come out one by one with their boundaries, then nothing.
fn check_messages(
    report: &mut Report,
    what: &str,
    sender: &impl AsRawFd,
    receiver: &impl AsRawFd,
    expected: &[&[u8]],
) {
    for (i, want) in expected.iter().enumerate() {
        match recv_message(receiver, 256) {
            Ok((data, len)) => report.check(data == *want && len == want.len(), || {
                format!(
                    "{what}: message {i} is {:?} ({len} bytes), expected {:?}",
                    String::from_utf8_lossy(&data),
                    String::from_utf8_lossy(want)
                )
            }),
            Err(e) => report.fail(format!("{what}: message {i}: {e}")),
        }
    }
    match recv_message(receiver, 256) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => report.fail(format!("{what}: more than the queued messages: {other:?}")),
    }
    let round_trip = write_all_once(sender, b"more").and_then(|_| recv_message(receiver, 256));
    match round_trip {
        Ok((data, _)) => report.check(data == b"more", || {
            format!("{what}: sent `more`, received {data:?}")
        }),
        Err(e) => report.fail(format!("{what}: send and receive: {e}")),
    }
}

fn check_listening(report: &mut Report, what: &str, socket: &impl AsRawFd) {
    match int_sockopt(socket, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) {
        Ok(listening) => report.check(listening == 1, || format!("{what} is not listening")),
        Err(e) => report.fail(format!("{what}: SO_ACCEPTCONN: {e}")),
    }
}

/// accept() once the listener is readable, so a lost connection fails instead of hanging.
fn accept_within<S>(
    listener: &impl AsRawFd,
    accept: impl FnOnce() -> io::Result<S>,
) -> io::Result<S> {
    if !poll_readable(listener, PROMPT_MS)? {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no connection to accept within 2 s",
        ));
    }
    accept()
}

/// A byte sent on one end of a fresh connection arrives at the other.
fn check_connected(report: &mut Report, what: &str, client: &impl AsRawFd, server: &impl AsRawFd) {
    let echoed = write_all_once(client, b"x").and_then(|_| read_within(server, 8, PROMPT_MS));
    match echoed {
        Ok(data) => report.check(data == b"x", || {
            format!("{what}: accepted connection carried {data:?}")
        }),
        Err(e) => report.fail(format!("{what}: accepted connection: {e}")),
    }
}

fn check_tcp_listener(
    report: &mut Report,
    what: &str,
    listener: &TcpListener,
    address: SocketAddr,
) {
    match listener.local_addr() {
        Ok(found) => report.check_eq(&format!("{what} address"), found, address),
        Err(e) => report.fail(format!("{what}: getsockname: {e}")),
    }
    check_listening(report, what, listener);
    match int_sockopt(listener, libc::SOL_SOCKET, libc::SO_REUSEADDR) {
        Ok(on) => report.check(on != 0, || format!("{what} lost SO_REUSEADDR")),
        Err(e) => report.fail(format!("{what}: SO_REUSEADDR: {e}")),
    }
    let client = match TcpStream::connect_timeout(&address, Duration::from_millis(PROMPT_MS as u64))
    {
        Ok(client) => client,
        Err(e) => return report.fail(format!("{what}: connect to {address}: {e}")),
    };
    match accept_within(listener, || listener.accept().map(|(s, _)| s)) {
        Ok(server) => check_connected(report, what, &client, &server),
        Err(e) => report.fail(format!("{what}: accept: {e}")),
    }
}

/// Flags and target of one fd.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FdEntry {
    fd_flags: c_int,
    fl_flags: c_int,
    link: String,
}

type FdTable = BTreeMap<c_int, FdEntry>;

/// The whole fd table, read from /proc/self/fd.
fn fd_table() -> io::Result<FdTable> {
    let numbers: Vec<c_int> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The directory's own fd is closed now, so it drops out below.
    let mut table = FdTable::new();
    for fd in numbers {
        if let (Ok((fd_flags, fl_flags)), Ok(link)) = (fd_flags(fd), fd_link(fd)) {
            table.insert(
                fd,
                FdEntry {
                    fd_flags,
                    fl_flags,
                    link,
                },
            );
        }
    }
    Ok(table)
}

/// The inode number in `pipe:[N]`-style links may change across a restore; the kind may not.
fn link_kind(link: &str) -> &str {
    match link.find(":[") {
        Some(i) if link.ends_with(']') && !link.starts_with("anon_inode:") => &link[..i + 2],
        _ => link,
    }
}

fn compare_tables(report: &mut Report, then: &FdTable, now: &FdTable) {
    for (fd, before) in then {
        let Some(after) = now.get(fd) else {
            report.fail(format!("fd {fd} ({}) is gone", before.link));
            continue;
        };
        report.check(link_kind(&after.link) == link_kind(&before.link), || {
            format!("fd {fd} points to `{}`, was `{}`", after.link, before.link)
        });
        report.check(after.fd_flags == before.fd_flags, || {
            format!(
                "fd {fd} ({}) F_GETFD {:#x}, was {:#x}",
                before.link, after.fd_flags, before.fd_flags
            )
        });
        report.check(after.fl_flags == before.fl_flags, || {
            format!(
                "fd {fd} ({}) F_GETFL {:#x}, was {:#x}",
                before.link, after.fl_flags, before.fl_flags
            )
        });
    }
    for (fd, extra) in now.iter().filter(|(fd, _)| !then.contains_key(fd)) {
        report.fail(format!("unexpected fd {fd} (`{}`)", extra.link));
    }
}
