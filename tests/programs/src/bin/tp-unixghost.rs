//! tp-unixghost: unix sockets bound to names whose files were unlinked after the bind
//! ("ghost" names), the situations CRIU's zdtm tests `fifo_upon_unix_socket00/01`,
//! `sk-unix-dgram-ghost` and `sk-unix01` build. Such a socket keeps its name, but no
//! path reaches it any more; its connected peers still send to it.
//!
//! State, in DIR (files named `tp-unixghost.*`):
//! - `fifo`: a datagram server bound to `DIR/tp-unixghost.fifo` and a client connected
//!   to it; the name is unlinked and a FIFO made at the same path, held open read-write.
//! - `rel`: a datagram server bound to the relative name `tp-unixghost.rel` (from DIR)
//!   and a client connected by that name; unlinked; the working directory becomes `/`.
//! - `gone`: in `DIR/tp-unixghost.gone/dg`, a datagram server bound to `sk` with two
//!   clients, one datagram from the first queued on the server; unlinked; a second
//!   server bound to the same name with a client of its own; unlinked. In
//!   `DIR/tp-unixghost.gone/st`, a stream listener bound to `sk` with one connection
//!   accepted (data queued both ways); unlinked. Then both directories and `gone` are
//!   removed.
//! - `same`: a datagram server bound to `DIR/tp-unixghost.same` with a client, unlinked;
//!   a second server bound at the same path (which stays) with a client of its own.
//! - `pair`: a datagram socketpair whose ends were bound, one after the other, to
//!   `DIR/tp-unixghost.pair`, unlinked after each bind.
//! - with `--renamed yes` also `renamed`: a datagram server bound to
//!   `DIR/tp-unixghost.ren-tmp` whose file was then renamed to `DIR/tp-unixghost.ren`
//!   (a server putting its socket in place atomically, as haproxy does). With
//!   `--renamed over`, a regular file is then made at `DIR/tp-unixghost.ren-tmp`: the
//!   name leads to another file, so a dump must refuse this one.
//! - with `--pending yes` also `pending`: a stream listener at `DIR/tp-unixghost.pending`
//!   with a client connected, not accepted yet, that sent `early`. Connections in
//!   flight are not rebuilt, so a dump must refuse this one too.
//! - with `--inflight yes` also `inflight`: a stream listener at
//!   `DIR/tp-unixghost.inflight` with a client connected, not accepted yet, that sent
//!   nothing. The restore connects it again.
//! - with `--closed-peer yes` also `closed-peer`: one end of a datagram socketpair whose
//!   other end sent two datagrams and was closed (zdtm's `socket_close_data`).
//!
//! Check: every socket's name and every client's peer name are as set up; the queued
//! datagram comes first; a datagram from each client reaches its own server and no
//! other; the stream connection carries data both ways and the listener still listens;
//! the pair works; the FIFO is still at its path (the same inode as the open one) and
//! carries data; `tp-unixghost.same` is still the second server's (a new client reaches
//! it); nothing else is in DIR under `tp-unixghost.*` (no moved-aside leftovers), the
//! removed directories are still gone, and the working directory is `/`. With
//! `--renamed yes`: the renamed server keeps its first name, and a client sending to
//! `tp-unixghost.ren` reaches it. With `--pending yes`: the listener accepts the waiting
//! connection and reads `early` from it. With `--inflight yes`: the listener accepts the
//! waiting connection, which then carries data both ways. With `--closed-peer yes`: both
//! datagrams, then a send fails with ECONNREFUSED (the dead peer) and then ENOTCONN.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_testprogs::{c_path, cvt, Program, Report};

const PREFIX: &str = "tp-unixghost.";
const QUEUED: &[u8] = b"queued-before-the-dump";

/// A datagram server and the clients connected to it.
struct Group {
    what: &'static str,
    name: PathBuf,
    server: UnixDatagram,
    clients: Vec<UnixDatagram>,
}

struct State {
    dir: PathBuf,
    groups: Vec<Group>,
    listener: UnixListener,
    listener_name: PathBuf,
    stream_client: UnixStream,
    stream_server: UnixStream,
    pair: (UnixDatagram, UnixDatagram),
    fifo: std::fs::File,
    /// `--renamed yes`: the server whose file was renamed.
    renamed: Option<UnixDatagram>,
    /// `--renamed over`: a file was made at the renamed server's first name.
    renamed_over: bool,
    /// `--pending yes`: a listener and its client whose connection waits to be accepted.
    pending: Option<(UnixListener, UnixStream)>,
    /// `--inflight yes`: the same without data.
    inflight: Option<(UnixListener, UnixStream)>,
    /// `--closed-peer yes`: a datagram end whose peer sent and closed.
    closed_peer: Option<UnixDatagram>,
}

fn group(what: &'static str, name: &Path, clients: usize) -> std::io::Result<Group> {
    let server = UnixDatagram::bind(name)?;
    server.set_nonblocking(true)?;
    let mut group = Group {
        what,
        name: name.to_owned(),
        server,
        clients: Vec::new(),
    };
    for _ in 0..clients {
        let c = UnixDatagram::unbound()?;
        c.connect(name)?;
        c.set_nonblocking(true)?;
        group.clients.push(c);
    }
    Ok(group)
}

/// The optional states.
struct Options {
    renamed: bool,
    /// A file made at the renamed server's first name.
    renamed_over: bool,
    pending: bool,
    inflight: bool,
    closed_peer: bool,
}

fn setup(dir: &Path, options: &Options) -> std::io::Result<State> {
    let Options {
        renamed,
        renamed_over,
        pending,
        inflight,
        closed_peer,
    } = *options;
    let at = |name: &str| dir.join(format!("{PREFIX}{name}"));
    let mut groups = Vec::new();

    // fifo: the name is a FIFO now.
    let fifo_path = at("fifo");
    let g = group("fifo", &fifo_path, 1)?;
    std::fs::remove_file(&fifo_path)?;
    let c = c_path(&fifo_path)?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    cvt(unsafe { libc::mkfifo(c.as_ptr(), 0o600) })?;
    let fifo = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo_path)?;
    groups.push(g);

    // rel: a relative name, bound and connected from DIR.
    std::env::set_current_dir(dir)?;
    let rel = PathBuf::from(format!("{PREFIX}rel"));
    groups.push(group("rel", &rel, 1)?);
    std::fs::remove_file(&rel)?;

    // gone: names in directories removed after the unlink; one name deleted twice.
    let gone = at("gone");
    let dg = gone.join("dg");
    let st = gone.join("st");
    std::fs::create_dir_all(&dg)?;
    std::fs::create_dir_all(&st)?;
    let dg_sk = dg.join("sk");
    let g = group("gone-1", &dg_sk, 2)?;
    g.clients[0].send(QUEUED)?;
    std::fs::remove_file(&dg_sk)?;
    groups.push(g);
    groups.push(group("gone-2", &dg_sk, 1)?);
    std::fs::remove_file(&dg_sk)?;
    let listener_name = st.join("sk");
    let listener = UnixListener::bind(&listener_name)?;
    let mut stream_client = UnixStream::connect(&listener_name)?;
    let (mut stream_server, _) = listener.accept()?;
    stream_client.write_all(b"to-server")?;
    stream_server.write_all(b"to-client")?;
    std::fs::remove_file(&listener_name)?;
    std::fs::remove_dir(&dg)?;
    std::fs::remove_dir(&st)?;
    std::fs::remove_dir(&gone)?;

    // same: a deleted name that a live socket holds again.
    let same = at("same");
    groups.push(group("same-deleted", &same, 1)?);
    std::fs::remove_file(&same)?;
    groups.push(group("same-live", &same, 1)?);

    // pair: both ends bound to one name, unlinked after each bind.
    let pair_path = at("pair");
    let pair = UnixDatagram::pair()?;
    bind_existing(&pair.0, &pair_path)?;
    std::fs::remove_file(&pair_path)?;
    bind_existing(&pair.1, &pair_path)?;
    std::fs::remove_file(&pair_path)?;
    pair.0.set_nonblocking(true)?;

    // renamed: bound at one name, its file then moved to another.
    let renamed = if renamed {
        let s = UnixDatagram::bind(at("ren-tmp"))?;
        s.set_nonblocking(true)?;
        std::fs::rename(at("ren-tmp"), at("ren"))?;
        if renamed_over {
            std::fs::write(at("ren-tmp"), b"not the socket")?;
        }
        Some(s)
    } else {
        None
    };

    // pending: a connection waiting to be accepted, with data.
    let pending = if pending {
        let l = UnixListener::bind(at("pending"))?;
        let mut c = UnixStream::connect(at("pending"))?;
        c.write_all(b"early")?;
        Some((l, c))
    } else {
        None
    };

    // inflight: a connection waiting to be accepted, without data.
    let inflight = if inflight {
        let l = UnixListener::bind(at("inflight"))?;
        let c = UnixStream::connect(at("inflight"))?;
        Some((l, c))
    } else {
        None
    };

    // closed-peer: the other end of a pair sent and went away.
    let closed_peer = if closed_peer {
        let (left, gone) = UnixDatagram::pair()?;
        gone.send(b"first")?;
        gone.send(b"second-one")?;
        drop(gone);
        left.set_nonblocking(true)?;
        Some(left)
    } else {
        None
    };

    std::env::set_current_dir("/")?;
    Ok(State {
        dir: dir.to_owned(),
        groups,
        listener,
        listener_name,
        stream_client,
        stream_server,
        pair,
        fifo,
        renamed,
        renamed_over,
        pending,
        inflight,
        closed_peer,
    })
}

/// bind(2) on a socket that exists already (std binds only new ones).
fn bind_existing(s: &UnixDatagram, path: &Path) -> std::io::Result<()> {
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: a zeroed sockaddr_un is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &b) in addr.sun_path.iter_mut().zip(bytes) {
        *d = b as libc::c_char;
    }
    // SAFETY: `addr` is a sockaddr_un of the size given, alive across the call.
    cvt(unsafe {
        libc::bind(
            s.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// The next datagram on a non-blocking socket, waiting up to a second.
fn recv_soon(s: &UnixDatagram) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    for _ in 0..1000 {
        match s.recv(&mut buf) {
            Ok(n) => return Some(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(_) => return None,
        }
    }
    None
}

fn nothing_queued(s: &UnixDatagram) -> bool {
    let mut buf = [0u8; 256];
    matches!(s.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn check(state: &mut State, report: &mut Report) {
    // Names first, before anything is sent.
    for g in &state.groups {
        let name = g
            .server
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_owned));
        report.check_eq(
            &format!("{}: the server's name", g.what),
            name,
            Some(g.name.clone()),
        );
        for (i, c) in g.clients.iter().enumerate() {
            let peer = c
                .peer_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_owned));
            report.check_eq(
                &format!("{}: client {i}'s peer name", g.what),
                peer,
                Some(g.name.clone()),
            );
        }
    }
    let gone_1 = state.groups.iter().find(|g| g.what == "gone-1");
    if let Some(g) = gone_1 {
        report.check_eq(
            "gone-1: the datagram queued before the dump",
            recv_soon(&g.server),
            Some(QUEUED.to_vec()),
        );
    }
    // Every client reaches its own server, and nothing else arrives anywhere.
    for g in &state.groups {
        for (i, c) in g.clients.iter().enumerate() {
            let msg = format!("{} client {i}", g.what).into_bytes();
            if let Err(e) = c.send(&msg) {
                report.fail(format!("{}: client {i} cannot send: {e}", g.what));
                continue;
            }
            report.check_eq(
                &format!("{}: what client {i} sent", g.what),
                recv_soon(&g.server),
                Some(msg),
            );
        }
    }
    for g in &state.groups {
        report.check(nothing_queued(&g.server), || {
            format!("{}: the server has datagrams it should not", g.what)
        });
    }

    // The stream connection through the deleted listener name, and the listener.
    let mut buf = [0u8; 9];
    let got = state.stream_server.read_exact(&mut buf).map(|()| buf);
    report.check_eq("the accepted stream's data", got.ok(), Some(*b"to-server"));
    let got = state.stream_client.read_exact(&mut buf).map(|()| buf);
    report.check_eq("the connected stream's data", got.ok(), Some(*b"to-client"));
    let sent = state
        .stream_client
        .write_all(b"after-one")
        .and_then(|()| state.stream_server.read_exact(&mut buf));
    report.check_eq(
        "a new message on the stream",
        sent.ok().map(|()| buf),
        Some(*b"after-one"),
    );
    let name = state
        .listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_owned));
    report.check_eq(
        "the listener's name",
        name,
        Some(state.listener_name.clone()),
    );
    let listening = {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_ACCEPTCONN writes one int into `v`, whose size `len` gives.
        let r = unsafe {
            libc::getsockopt(
                state.listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (r, v)
    };
    report.check_eq("the listener listens (SO_ACCEPTCONN)", listening, (0, 1));

    // The pair.
    let (a, b) = &state.pair;
    for (end, s) in [("first", a), ("second", b)] {
        let name = s
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_owned));
        report.check_eq(
            &format!("the pair's {end} end's name"),
            name,
            Some(state.dir.join(format!("{PREFIX}pair"))),
        );
    }
    match b.send(b"pair") {
        Ok(_) => report.check_eq("the pair's datagram", recv_soon(a), Some(b"pair".to_vec())),
        Err(e) => report.fail(format!("the pair cannot send: {e}")),
    }

    // The FIFO at the first server's old path.
    let fifo_path = state.dir.join(format!("{PREFIX}fifo"));
    match (std::fs::symlink_metadata(&fifo_path), state.fifo.metadata()) {
        (Ok(on_disk), Ok(open)) => {
            report.check(on_disk.file_type().is_fifo(), || {
                format!("{} is no longer a FIFO", fifo_path.display())
            });
            report.check_eq(
                "the FIFO at the path is the open one (dev, inode)",
                (on_disk.dev(), on_disk.ino()),
                (open.dev(), open.ino()),
            );
        }
        (a, b) => report.fail(format!("stat the FIFO: {:?} {:?}", a.err(), b.err())),
    }
    let mut fb = [0u8; 4];
    let through = state
        .fifo
        .write_all(b"fifo")
        .and_then(|()| state.fifo.read_exact(&mut fb));
    report.check_eq(
        "data through the FIFO",
        through.ok().map(|()| fb),
        Some(*b"fifo"),
    );

    // The live name still leads to the live server.
    let same = state.dir.join(format!("{PREFIX}same"));
    if let Some(live) = state.groups.iter().find(|g| g.what == "same-live") {
        let reached = UnixDatagram::unbound()
            .and_then(|c| c.send_to(b"new-client", &same))
            .ok()
            .and_then(|_| recv_soon(&live.server));
        report.check_eq(
            "a new client at the live name reaches the live server",
            reached,
            Some(b"new-client".to_vec()),
        );
    }

    // The filesystem: only the FIFO and the live name are left, and cwd is `/`.
    let mut left: Vec<String> = std::fs::read_dir(&state.dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(PREFIX))
                .collect()
        })
        .unwrap_or_default();
    left.sort();
    let mut expected = vec![format!("{PREFIX}fifo"), format!("{PREFIX}same")];
    if let Some(s) = &state.renamed {
        let name = s
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_owned));
        report.check_eq(
            "renamed: the server's name",
            name,
            Some(state.dir.join(format!("{PREFIX}ren-tmp"))),
        );
        let reached = UnixDatagram::unbound()
            .and_then(|c| c.send_to(b"renamed", state.dir.join(format!("{PREFIX}ren"))))
            .ok()
            .and_then(|_| recv_soon(s));
        report.check_eq(
            "renamed: a client at the file's new path reaches the server",
            reached,
            Some(b"renamed".to_vec()),
        );
        expected.push(format!("{PREFIX}ren"));
        if state.renamed_over {
            expected.push(format!("{PREFIX}ren-tmp"));
        }
    }
    if let Some((listener, _client)) = &state.pending {
        let mut early = [0u8; 5];
        let got = listener
            .accept()
            .and_then(|(mut conn, _)| conn.read_exact(&mut early));
        report.check_eq(
            "pending: the waiting connection and its data",
            got.ok().map(|()| early),
            Some(*b"early"),
        );
        expected.push(format!("{PREFIX}pending"));
    }
    if let Some(left) = &state.closed_peer {
        let got = (recv_soon(left), recv_soon(left));
        report.check_eq(
            "closed-peer: the datagrams its peer sent",
            got,
            (Some(b"first".to_vec()), Some(b"second-one".to_vec())),
        );
        let errno = |r: std::io::Result<usize>| r.err().and_then(|e| e.raw_os_error());
        report.check_eq(
            "closed-peer: sends fail as to a dead peer, then as unconnected",
            (errno(left.send(b"x")), errno(left.send(b"x"))),
            (Some(libc::ECONNREFUSED), Some(libc::ENOTCONN)),
        );
    }
    if let Some((listener, client)) = &mut state.inflight {
        let mut buf = [0u8; 4];
        let got = listener.accept().and_then(|(mut conn, _)| {
            client.write_all(b"late")?;
            conn.read_exact(&mut buf)?;
            let there = buf;
            conn.write_all(b"back")?;
            client.read_exact(&mut buf)?;
            Ok((there, buf))
        });
        report.check_eq(
            "inflight: the waiting connection, accepted, carries data both ways",
            got.ok(),
            Some((*b"late", *b"back")),
        );
        expected.push(format!("{PREFIX}inflight"));
    }
    expected.sort();
    report.check_eq("what is left in the directory", left, expected);
    report.check_eq(
        "the working directory",
        std::env::current_dir().ok(),
        Some(PathBuf::from("/")),
    );
}

fn main() {
    let mut program = Program::start(
        "tp-unixghost",
        &[
            (
                "--dir DIR",
                "where the sockets go (default: the ready file's directory)",
            ),
            (
                "--renamed yes|over|no",
                "also a server whose file was renamed after the bind, with `over` a \
                 file made at its first name (default: no)",
            ),
            (
                "--pending yes|no",
                "also a listener with a connection not accepted yet (default: no)",
            ),
            (
                "--closed-peer yes|no",
                "also a datagram end whose peer sent and closed (default: no)",
            ),
            (
                "--inflight yes|no",
                "also a listener with a connection not accepted yet, without data \
                 (default: no)",
            ),
        ],
    );
    let dir: PathBuf = program.opt("--dir").unwrap_or_else(|| program.ready_dir());
    let dir = program.must(std::fs::canonicalize(&dir), "resolve --dir");
    let yes = |flag: &str| match program.opt_or(flag, String::from("no")).as_str() {
        "yes" => true,
        "no" => false,
        other => program.setup_failed(format_args!("{flag}: `{other}` is not yes or no")),
    };
    let renamed = program.opt_or("--renamed", String::from("no"));
    if !["yes", "over", "no"].contains(&renamed.as_str()) {
        program.setup_failed(format_args!(
            "--renamed: `{renamed}` is not yes, over or no"
        ));
    }
    let options = Options {
        renamed: renamed != "no",
        renamed_over: renamed == "over",
        pending: yes("--pending"),
        inflight: yes("--inflight"),
        closed_peer: yes("--closed-peer"),
    };
    let mut state = program.must(setup(&dir, &options), "set up the sockets");
    program.ready();
    program.work_until_check(Duration::from_millis(50), || {});
    let mut report = Report::new();
    check(&mut state, &mut report);
    program.finish(&report);
}
