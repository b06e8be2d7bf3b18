//! tp-scm: descriptors waiting in unix sockets' queues (`SCM_RIGHTS`), which no task
//! holds any more: the situations of CRIU's zdtm tests `scm00`..`scm09`, on stream,
//! seqpacket and datagram sockets.
//!
//! State (a scratch file `DIR/tp-scm.file` holding `file-contents`, opened read-write
//! at offset 5; a pipe):
//! - `stream`: a stream socketpair; one end sent `file` with the scratch file, then
//!   `pipe` with the pipe's write end, then `tail` without descriptors. The receiver
//!   gets each message apart, with its descriptors, when it asks for 4 bytes at a time.
//!   (Bytes written before a message with descriptors are not sent here: a dump cannot
//!   tell them from the message, see `unix/queue.rs`.)
//! - `seqpacket`: a seqpacket socketpair; one end sent `two` with two descriptors: one
//!   end of a datagram socketpair whose other end the task keeps, and the scratch file
//!   again (the same open file description as the stream's).
//! - `dgram`: a datagram socketpair; one end sent `sock` with one end of a stream
//!   socketpair whose other end the task keeps, then `plain` without descriptors, then
//!   `self` with the receiving socket itself.
//!
//! - with `--epoll yes` also `epoll` (zdtm's `scm05`): a datagram socketpair; one end
//!   sent `epoll`, then `again`, each with an epoll instance watching the receiving end
//!   (as data 7).
//! - with `--inotify yes` also `inotify`: a datagram socketpair; one end sent `inotify`
//!   with an inotify instance. No dump records that in a queue: a dump must refuse it.
//!   With `--inotify late`, `first` with the scratch file goes before it (so a look at
//!   the head of the queue does not show it).
//!
//! The task then closes the file, the pipe's write end and the sent socket ends: the
//! queues are the only holders.
//!
//! Check: each message comes with its bytes and as many descriptors as were sent, in
//! order, and each descriptor works: the file reads `file-contents`, is the file at its
//! path and still at offset 5, and both copies share their offset; the pipe's write end
//! reaches the kept read end; each sent socket end reaches its kept peer both ways; the
//! socket sent to itself is the receiving socket (same inode).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_testprogs::{cvt, cvt_size, Program, Report};

const CONTENTS: &[u8] = b"file-contents";
const OFFSET: i64 = 5;

fn pair(ty: libc::c_int) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is an out array of two ints.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    // SAFETY: the kernel just gave us these two descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends `data` with `fds` attached (one SCM_RIGHTS message).
fn send_fds(via: &OwnedFd, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; all-zero is an empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let len = std::mem::size_of_val(fds) as u32;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(len) } as usize;
        // SAFETY: `control` (128 bytes) holds the header and up to 8 ints; the header
        // pointer lies in it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(len) as usize;
            let data = libc::CMSG_DATA(c).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(*fd);
            }
        }
    }
    // SAFETY: msg points at iov and control, alive for the call.
    let n = cvt_size(unsafe { libc::sendmsg(via.as_raw_fd(), &msg, 0) })?;
    if n != data.len() {
        return Err(std::io::Error::other("short send"));
    }
    Ok(())
}

/// One received message: its bytes and the descriptors it carried; `None` when nothing
/// waits.
fn recv_fds(via: &OwnedFd, max: usize) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; max];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; all-zero is an empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    // SAFETY: msg points at buf and control, borrowed mutably for the call.
    let n = cvt_size(unsafe { libc::recvmsg(via.as_raw_fd(), &mut msg, flags) }).ok()?;
    buf.truncate(n);
    let mut fds = Vec::new();
    // SAFETY: the CMSG helpers stay within msg_control/msg_controllen.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` points at a header inside `control`.
        let (level, ty, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len) };
        if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
            // SAFETY: pure computation.
            let count = (len - unsafe { libc::CMSG_LEN(0) } as usize) / 4;
            // SAFETY: the data holds `count` ints inside `control`.
            let data = unsafe { libc::CMSG_DATA(c) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: i < count; the kernel installed each fd for us.
                fds.push(unsafe { OwnedFd::from_raw_fd(data.add(i).read_unaligned()) });
            }
        }
        // SAFETY: as above.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    Some((buf, fds))
}

struct State {
    path: PathBuf,
    stream: OwnedFd,
    seqpacket: OwnedFd,
    dgram: OwnedFd,
    pipe_r: OwnedFd,
    /// The kept peers of the sent socket ends (datagram, stream).
    kept_dgram: OwnedFd,
    kept_stream: OwnedFd,
    /// `--epoll yes`: the socket an epoll instance waits in, which it watches.
    epoll: Option<OwnedFd>,
    /// `--inotify yes|late`: the socket an inotify instance waits in, and whether a
    /// message with the file goes before it.
    inotify: Option<(OwnedFd, bool)>,
}

fn setup(dir: &Path, epoll: bool, inotify: Option<bool>) -> std::io::Result<State> {
    let path = dir.join("tp-scm.file");
    std::fs::write(&path, CONTENTS)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)?;
    // SAFETY: plain syscall on our descriptor.
    cvt(unsafe { libc::lseek(file.as_raw_fd(), OFFSET, libc::SEEK_SET) } as i32)?;
    let mut p = [0 as RawFd; 2];
    // SAFETY: `p` is an out array of two ints.
    cvt(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: the kernel just gave us these two descriptors.
    let (pipe_r, pipe_w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };

    let (stream_tx, stream) = pair(libc::SOCK_STREAM)?;
    send_fds(&stream_tx, b"file", &[file.as_raw_fd()])?;
    send_fds(&stream_tx, b"pipe", &[pipe_w.as_raw_fd()])?;
    send_fds(&stream_tx, b"tail", &[])?;

    let (sent_dgram, kept_dgram) = pair(libc::SOCK_DGRAM)?;
    let (seq_tx, seqpacket) = pair(libc::SOCK_SEQPACKET)?;
    send_fds(&seq_tx, b"two", &[sent_dgram.as_raw_fd(), file.as_raw_fd()])?;

    let (sent_stream, kept_stream) = pair(libc::SOCK_STREAM)?;
    let (dgram_tx, dgram) = pair(libc::SOCK_DGRAM)?;
    send_fds(&dgram_tx, b"sock", &[sent_stream.as_raw_fd()])?;
    send_fds(&dgram_tx, b"plain", &[])?;
    send_fds(&dgram_tx, b"self", &[dgram.as_raw_fd()])?;
    // The senders stay open (a stream end whose peer closed would see its end of file
    // too); everything sent is closed here.
    std::mem::forget(stream_tx);
    std::mem::forget(seq_tx);
    std::mem::forget(dgram_tx);
    let epoll = if epoll {
        // SAFETY: plain syscall.
        let ep = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: the kernel just gave us this descriptor.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        let (tx, rx) = pair(libc::SOCK_DGRAM)?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 7,
        };
        // SAFETY: `ev` is a valid event for the call.
        cvt(unsafe {
            libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, rx.as_raw_fd(), &mut ev)
        })?;
        send_fds(&tx, b"epoll", &[ep.as_raw_fd()])?;
        send_fds(&tx, b"again", &[ep.as_raw_fd()])?;
        std::mem::forget(tx);
        Some(rx)
    } else {
        None
    };
    let inotify = match inotify {
        Some(late) => {
            // SAFETY: plain syscall.
            let ino = cvt(unsafe { libc::inotify_init1(libc::IN_CLOEXEC) })?;
            // SAFETY: the kernel just gave us this descriptor.
            let ino = unsafe { OwnedFd::from_raw_fd(ino) };
            let (tx, rx) = pair(libc::SOCK_DGRAM)?;
            if late {
                send_fds(&tx, b"first", &[file.as_raw_fd()])?;
            }
            send_fds(&tx, b"inotify", &[ino.as_raw_fd()])?;
            std::mem::forget(tx);
            Some((rx, late))
        }
        None => None,
    };
    drop((file, pipe_w, sent_dgram, sent_stream));
    Ok(State {
        epoll,
        inotify,
        path,
        stream,
        seqpacket,
        dgram,
        pipe_r,
        kept_dgram,
        kept_stream,
    })
}

fn read_fd(fd: &OwnedFd, max: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; max];
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    let n =
        cvt_size(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn write_fd(fd: &OwnedFd, data: &[u8]) -> bool {
    // SAFETY: the kernel reads data.len() bytes from data.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    n == data.len() as isize
}

fn offset(fd: &OwnedFd) -> i64 {
    // SAFETY: plain syscall on a descriptor we hold.
    unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_CUR) }
}

/// A socket end that was sent and its kept peer carry data both ways.
fn talks(report: &mut Report, what: &str, sent: &OwnedFd, kept: &OwnedFd) {
    let there = write_fd(sent, b"there")
        .then(|| read_fd(kept, 16))
        .flatten();
    let back = write_fd(kept, b"back").then(|| read_fd(sent, 16)).flatten();
    report.check_eq(
        &format!("{what}: data both ways"),
        (there, back),
        (Some(b"there".to_vec()), Some(b"back".to_vec())),
    );
}

/// The scratch file received: its contents, its identity and its offset.
fn file_works(report: &mut Report, what: &str, fd: &OwnedFd, path: &Path) {
    report.check_eq(&format!("{what}: offset"), offset(fd), OFFSET);
    let mut buf = [0u8; 32];
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    report.check_eq(
        &format!("{what}: contents"),
        buf.get(..n.max(0) as usize).map(<[u8]>::to_vec),
        Some(CONTENTS.to_vec()),
    );
    // SAFETY: fstat into a zeroed stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out buffer.
    let ok = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0;
    let on_disk = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    report.check_eq(
        &format!("{what}: the file at its path"),
        ok.then_some((st.st_dev, st.st_ino)),
        on_disk,
    );
}

fn check(state: &State, report: &mut Report) {
    let shape = |m: &Option<(Vec<u8>, Vec<OwnedFd>)>| m.as_ref().map(|(d, f)| (d.clone(), f.len()));
    // First: the seqpacket check moves the file's shared offset.
    if let Some((rx, late)) = &state.inotify {
        if *late {
            let first = recv_fds(rx, 64);
            report.check_eq(
                "inotify: the message before it",
                shape(&first),
                Some((b"first".to_vec(), 1)),
            );
            if let Some(f) = first.as_ref().and_then(|(_, fds)| fds.first()) {
                file_works(
                    report,
                    "the file before the inotify instance",
                    f,
                    &state.path,
                );
            }
        }
        report.check_eq(
            "inotify: the message",
            shape(&recv_fds(rx, 64)),
            Some((b"inotify".to_vec(), 1)),
        );
    }
    // stream: `file` with the file, `pipe` with the pipe, `tail` alone.
    let file_msg = recv_fds(&state.stream, 4);
    let pipe_msg = recv_fds(&state.stream, 4);
    let tail = recv_fds(&state.stream, 64);
    report.check_eq(
        "stream: the messages",
        (shape(&file_msg), shape(&pipe_msg), shape(&tail)),
        (
            Some((b"file".to_vec(), 1)),
            Some((b"pipe".to_vec(), 1)),
            Some((b"tail".to_vec(), 0)),
        ),
    );
    if let Some((_, fds)) = &file_msg {
        if let Some(f) = fds.first() {
            file_works(report, "stream's file", f, &state.path);
        }
    }
    if let Some((_, fds)) = &pipe_msg {
        if let Some(w) = fds.first() {
            let got = write_fd(w, b"ping")
                .then(|| read_fd(&state.pipe_r, 16))
                .flatten();
            report.check_eq("the pipe's write end", got, Some(b"ping".to_vec()));
        }
    }

    // seqpacket: `two` with a datagram socket end and the file.
    let two = recv_fds(&state.seqpacket, 64);
    report.check_eq(
        "seqpacket: the message",
        shape(&two),
        Some((b"two".to_vec(), 2)),
    );
    if let Some((_, fds)) = &two {
        if let [sock, file] = &fds[..] {
            talks(report, "the datagram socket end", sock, &state.kept_dgram);
            file_works(report, "seqpacket's file", file, &state.path);
            if let Some((_, stream_fds)) = &file_msg {
                if let Some(other) = stream_fds.first() {
                    // SAFETY: plain syscall on a descriptor we hold.
                    unsafe { libc::lseek(file.as_raw_fd(), 2, libc::SEEK_SET) };
                    report.check_eq(
                        "both copies of the file share their offset",
                        offset(other),
                        2,
                    );
                }
            }
        }
    }

    // dgram: `sock` with a stream socket end, `plain`, `self` with itself.
    let sock = recv_fds(&state.dgram, 64);
    let plain = recv_fds(&state.dgram, 64);
    let own = recv_fds(&state.dgram, 64);
    report.check_eq(
        "dgram: the messages",
        (shape(&sock), shape(&plain), shape(&own)),
        (
            Some((b"sock".to_vec(), 1)),
            Some((b"plain".to_vec(), 0)),
            Some((b"self".to_vec(), 1)),
        ),
    );
    if let Some((_, fds)) = &sock {
        if let Some(s) = fds.first() {
            talks(report, "the stream socket end", s, &state.kept_stream);
        }
    }
    if let Some((_, fds)) = &own {
        if let Some(s) = fds.first() {
            let ino = |fd: &OwnedFd| {
                // SAFETY: fstat into a zeroed stat.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: `st` is a valid out buffer.
                (unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0).then_some(st.st_ino)
            };
            report.check_eq(
                "the socket sent to itself is the receiving socket",
                ino(s),
                ino(&state.dgram),
            );
        }
    }
    report.check(recv_fds(&state.dgram, 64).is_none(), || {
        "dgram: more messages than were sent".into()
    });
    if let Some(rx) = &state.epoll {
        let first = recv_fds(rx, 64);
        // The second message still waits: the instance sees the socket readable.
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        let ready = first.as_ref().and_then(|(_, fds)| fds.first()).map(|ep| {
            // SAFETY: `ev` is room for one event.
            let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), &mut ev, 1, 0) };
            (n, { ev.u64 })
        });
        let second = recv_fds(rx, 64);
        report.check_eq(
            "epoll: the messages",
            (shape(&first), shape(&second)),
            (Some((b"epoll".to_vec(), 1)), Some((b"again".to_vec(), 1))),
        );
        report.check_eq(
            "epoll: the instance reports its socket readable",
            ready,
            Some((1, 7)),
        );
    }
}

fn main() {
    let mut program = Program::start(
        "tp-scm",
        &[
            (
                "--dir DIR",
                "where the scratch file goes (default: the ready file's directory)",
            ),
            (
                "--epoll yes|no",
                "also an epoll instance in a queue (default: no)",
            ),
            (
                "--inotify yes|late|no",
                "also an inotify instance in a queue, late: after a message with the file \
                 (default: no)",
            ),
        ],
    );
    let dir: PathBuf = program.opt("--dir").unwrap_or_else(|| program.ready_dir());
    let yes = |flag: &str| match program.opt_or(flag, String::from("no")).as_str() {
        "yes" => true,
        "no" => false,
        other => program.setup_failed(format_args!("{flag}: `{other}` is not yes or no")),
    };
    let epoll = yes("--epoll");
    let inotify = match program.opt_or("--inotify", String::from("no")).as_str() {
        "yes" => Some(false),
        "late" => Some(true),
        "no" => None,
        other => program.setup_failed(format_args!("--inotify: `{other}` is not yes, late or no")),
    };
    let state = program.must(setup(&dir, epoll, inotify), "set up the queues");
    program.ready();
    program.work_until_check(Duration::from_millis(50), || {});
    let mut report = Report::new();
    check(&state, &mut report);
    program.finish(&report);
}
