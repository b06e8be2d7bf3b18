//! Unix sockets connected to a server outside the dumped tree (issue 12, CRIU's
//! `--ext-unix-sk`): tp-extsk holds a datagram socket connected to an echo server the
//! test runs (with an answer of it still unread) and a stream socket connected to an
//! echo listener. Without the option the dump refuses, naming the socket and its peer,
//! and the program runs on untouched; with it (and the stream socket named by its
//! inode, as CRIU wants for a connection it cannot take along) both are connected to
//! the servers' names again on restore: the datagram socket keeps its unread answer and
//! reaches the server, the stream socket reaches the listener over a new connection,
//! which the server sees as a second client. The restore too wants the option.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::files::ExternalUnix;
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, crit_decode, criu_4_or_skip, criu_dump, criu_restore, debian_crit,
    installed_server, redis_command, task_state, tracer_pid, wait_until, Reaper, ScratchDir,
    TestProcess,
};

/// Echo servers outside the tree: a datagram one and a stream listener, each on a
/// thread of the test; stopped and their files removed on drop.
struct EchoServers {
    dgram: PathBuf,
    stream: PathBuf,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl EchoServers {
    fn start(dir: &Path) -> EchoServers {
        let dgram = dir.join("ext.dgram");
        let stream = dir.join("ext.stream");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let d = UnixDatagram::bind(&dgram).unwrap();
        d.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let l = UnixListener::bind(&stream).unwrap();
        l.set_nonblocking(true).unwrap();
        let mut threads = Vec::new();
        let s = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !s.load(Ordering::SeqCst) {
                if let Ok((n, from)) = d.recv_from(&mut buf) {
                    let mut answer = b"echo:".to_vec();
                    answer.extend_from_slice(&buf[..n]);
                    let _ = d.send_to_addr(&answer, &from);
                }
            }
        }));
        let (s, count) = (stop.clone(), accepted.clone());
        threads.push(std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((conn, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        conn.set_nonblocking(false).unwrap();
                        // Each connection ends when its client goes.
                        std::thread::spawn(move || {
                            let mut out = conn.try_clone().unwrap();
                            for line in BufReader::new(conn).lines() {
                                let Ok(line) = line else { break };
                                if out.write_all(format!("echo:{line}\n").as_bytes()).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
        EchoServers {
            dgram,
            stream,
            accepted,
            stop,
            threads,
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--dgram".into(),
            self.dgram.display().to_string(),
            "--stream".into(),
            self.stream.display().to_string(),
        ]
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.dgram);
        let _ = std::fs::remove_file(&self.stream);
    }
}

/// (fd, inode) of the program's `kind` socket, from `PATH.sockets`.
fn socket_of(tp: &TestProcess, kind: &str) -> (i32, u32) {
    let list = std::fs::read_to_string(tp.ready_file.with_extension("ready.sockets")).unwrap();
    let line = list
        .lines()
        .find(|l| l.starts_with(&format!("{kind} ")))
        .unwrap();
    let mut f = line.split_whitespace().skip(1);
    (
        f.next().unwrap().parse().unwrap(),
        f.next().unwrap().parse().unwrap(),
    )
}

fn start(scratch: &ScratchDir, servers: &EchoServers) -> TestProcess {
    let args = servers.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let before = servers.accepted.load(Ordering::SeqCst);
    let tp = TestProcess::start(scratch.path(), "extsk", &args);
    assert_eq!(servers.accepted.load(Ordering::SeqCst), before + 1);
    tp
}

/// A program a dump refused: running, untraced, and passing its own check.
fn runs_on_intact(tp: &mut TestProcess) {
    assert!(
        matches!(task_state(tp.pid), Some('S') | Some('R')),
        "running"
    );
    assert_eq!(tracer_pid(tp.pid), Some(0), "not traced");
    assert_eq!(tp.check(), "pass");
    let _ = tp.child.wait();
}

#[test]
fn without_the_option_the_dump_refuses_naming_the_peer() {
    let scratch = ScratchDir::new("extsk-refused");
    let servers = EchoServers::start(scratch.path());
    let mut tp = start(&scratch, &servers);
    let (fd, ino) = socket_of(&tp, "dgram");
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let err = dump(&DumpOptions::new(Pid(tp.pid), &images)).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("task {} fd {fd}", tp.pid))
            && msg.contains(&format!("unix socket {ino} "))
            && msg.contains(&servers.dgram.display().to_string())
            && msg.contains("--ext-unix-sk"),
        "names the task, fd, socket, peer and the option: {msg}"
    );
    runs_on_intact(&mut tp);
}

#[test]
fn a_stream_connection_not_named_is_refused_saying_how_to_take_it() {
    let scratch = ScratchDir::new("extsk-stream");
    let servers = EchoServers::start(scratch.path());
    let mut tp = start(&scratch, &servers);
    let (fd, ino) = socket_of(&tp, "stream");
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let opts = DumpOptions {
        ext_unix_sk: ExternalUnix {
            allowed: true,
            inodes: Vec::new(),
        },
        ..DumpOptions::new(Pid(tp.pid), &images)
    };
    let msg = dump(&opts).expect_err("refused").to_string();
    assert!(
        msg.contains(&format!("task {} fd {fd}", tp.pid))
            && msg.contains(&servers.stream.display().to_string())
            && msg.contains(&format!("--ext-unix-sk={ino}")),
        "names the socket, its peer and how to take it: {msg}"
    );
    runs_on_intact(&mut tp);
}

/// Dumps tp-extsk with `--ext-unix-sk=STREAM_INODE` (killing it) into `images`.
fn dump_with_option(tp: &mut TestProcess, images: &Path) {
    let (_, stream_ino) = socket_of(tp, "stream");
    std::fs::create_dir(images).unwrap();
    let opts = DumpOptions {
        ext_unix_sk: ExternalUnix {
            allowed: true,
            inodes: vec![stream_ino],
        },
        ..DumpOptions::new(Pid(tp.pid), images)
    };
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
}

#[test]
fn with_the_option_both_sockets_are_connected_to_the_servers_again() {
    let scratch = ScratchDir::new("extsk-restore");
    let servers = EchoServers::start(scratch.path());
    let mut tp = start(&scratch, &servers);
    let images = scratch.path().join("images");
    dump_with_option(&mut tp, &images);

    // The peers are entries of their own, as CRIU writes them.
    if let Some(crit) = debian_crit() {
        for e in std::fs::read_dir(&images).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with("pages-") {
                crit_decode(&crit, &path).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
    let mut r = criu_images::ImageReader::open(images.join("files.img")).unwrap();
    let mut externals = Vec::new();
    while let Some(f) = r.next_entry::<criu_images::pb::FileEntry>().unwrap() {
        if let Some(u) = f.usk.filter(|u| u.uflags == 1) {
            externals.push((
                u.r#type,
                u.state,
                String::from_utf8_lossy(&u.name).into_owned(),
            ));
        }
    }
    externals.sort();
    let path = |p: &Path| format!("{}", p.display());
    let expect = |p: &Path| (libc::SOCK_DGRAM as u32, 10, path(p));
    let mut expected = vec![expect(&servers.dgram), expect(&servers.stream)];
    expected.sort();
    let trimmed: Vec<_> = externals
        .into_iter()
        .map(|(t, s, n)| (t, s, n.trim_end_matches('\0').to_owned()))
        .collect();
    assert_eq!(trimmed, expected);

    // The restore wants the option too, and refuses before any process exists.
    let err = restore(&RestoreOptions::new(&images)).expect_err("refused without it");
    assert!(err.to_string().contains("--ext-unix-sk"), "{err}");
    let restored = restore(&RestoreOptions {
        ext_unix_sk: true,
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    wait_until("a new connection", Duration::from_secs(10), || {
        servers.accepted.load(Ordering::SeqCst) == 2
    });
    assert_eq!(check_restored(restored.pid.0, &tp.ready_file), "pass");
}

/// The images are CRIU's: CRIU 4.2 restores ours (`-x`), and we restore those CRIU
/// dumps with `--ext-unix-sk=INODE`.
#[test]
fn criu_4_2_and_criu_rs_restore_each_others_external_sockets() {
    let Some(criu) = criu_4_or_skip("the CRIU cross-check of external unix sockets") else {
        return;
    };
    let criu = criu.to_str().unwrap().to_owned();
    let scratch = ScratchDir::new("extsk-criu");
    let servers = EchoServers::start(scratch.path());

    // Ours, restored by CRIU.
    let mut tp = start(&scratch, &servers);
    let pid = tp.pid;
    let images = scratch.path().join("ours");
    dump_with_option(&mut tp, &images);
    let reaper = criu_restore(Path::new(&criu), &images, &["-x"], vec![pid]);
    assert_eq!(check_restored(pid, &tp.ready_file), "pass");
    drop(reaper);
    drop(tp);

    // CRIU's, restored by us.
    let mut tp = start(&scratch, &servers);
    let (_, stream_ino) = socket_of(&tp, "stream");
    let images = scratch.path().join("criu");
    std::fs::create_dir(&images).unwrap();
    criu_dump(
        Path::new(&criu),
        tp.pid,
        &images,
        &[&format!("--ext-unix-sk={stream_ino}")],
    );
    let _ = tp.child.wait();
    let restored = restore(&RestoreOptions {
        ext_unix_sk: true,
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore of CRIU's images: {e}"));
    let _reaper = Reaper(restored.pid.0);
    assert_eq!(check_restored(restored.pid.0, &tp.ready_file), "pass");
}

/// `/dev/log` bound by the test: a syslog daemon that keeps what it receives. `None`
/// when the machine has one of its own (a real daemon's messages must not be taken).
struct Syslog {
    received: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const DEV_LOG: &str = "/dev/log";

impl Syslog {
    fn start() -> Option<Syslog> {
        if Path::new(DEV_LOG).exists() {
            eprintln!("skipping: {DEV_LOG} is this machine's (a syslog daemon runs)");
            return None;
        }
        let sock = match UnixDatagram::bind(DEV_LOG) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("skipping: cannot bind {DEV_LOG}: {e}");
                return None;
            }
        };
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::SeqCst) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                    r.lock().unwrap().push(line);
                }
            }
        });
        Some(Syslog {
            received,
            stop,
            thread: Some(thread),
        })
    }

    fn wait_for(&self, text: &str) {
        wait_until(text, Duration::from_secs(20), || {
            self.received
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(text))
        });
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(DEV_LOG);
    }
}

/// Runs `commands` on a connection of its own, then QUIT: the server closes its end
/// first, so no connected TCP socket is left in it (that would need TCP repair).
fn redis_session(port: u16, commands: &[&[&str]]) -> Vec<String> {
    let mut c = None;
    for _ in 0..500 {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            c = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut c = c.unwrap_or_else(|| panic!("no redis on port {port}"));
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let replies = commands
        .iter()
        .map(|args| redis_command(&mut c, &mut r, args))
        .collect();
    assert_eq!(redis_command(&mut c, &mut r, &["QUIT"]), "+OK");
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut c, &mut rest);
    replies
}

/// The descriptor of `pid` connected to /dev/log, and its socket's inode.
fn dev_log_socket(pid: i32) -> Option<(i32, u64)> {
    use criu_core::sys;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let pidfd = sys::pidfd_open(Pid(pid)).ok()?;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let Ok(fd) = e.ok()?.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(dup) = sys::pidfd_getfd(pidfd.as_fd(), fd) else {
            continue;
        };
        let Ok(peer) = sys::socket_address(dup.as_fd(), true) else {
            continue;
        };
        let path = peer.get(2..).unwrap_or_default();
        if path.split(|&b| b == 0).next() == Some(DEV_LOG.as_bytes()) {
            let ino = std::fs::File::from(dup).metadata().ok()?.ino();
            return Some((fd, ino));
        }
    }
    None
}

/// The real program: redis-server logging to syslog (`syslog-enabled`: glibc's
/// openlog connects a datagram socket to /dev/log at start and keeps it), /dev/log
/// being a daemon outside the tree (here, the test). Dumped with `--ext-unix-sk`,
/// killed and restored, it still logs to the daemon and still serves its keys.
#[test]
fn redis_logging_to_syslog_logs_on_after_a_restore() {
    let Some(bin) = installed_server("/usr/bin/redis-server") else {
        return;
    };
    let Some(syslog) = Syslog::start() else {
        return;
    };
    let scratch = ScratchDir::new("extsk-redis");
    let port = 27000 + (std::process::id() % 2000) as u16;
    let ident = format!("criu-rs-redis-{}", std::process::id());
    let dir = scratch.path().display().to_string();
    let port_s = port.to_string();
    let mut srv = TestProcess::spawn(
        &[
            bin,
            "--port",
            &port_s,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
            "--syslog-enabled",
            "yes",
            "--syslog-ident",
            &ident,
            "--enable-debug-command",
            "local",
        ],
        &scratch.path().join("redis.out"),
    );
    syslog.wait_for("Ready to accept connections");
    let replies = redis_session(
        port,
        &[
            &["SET", "kept", "across-the-restore"],
            &["DEBUG", "LOG", "before-the-dump"],
        ],
    );
    assert_eq!(replies, ["+OK", "+OK"]);
    syslog.wait_for(&format!("{ident}[{}]", srv.pid));
    syslog.wait_for("before-the-dump");

    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let err = dump(&DumpOptions::new(Pid(srv.pid), &images)).expect_err("refused");
    assert!(err.to_string().contains(DEV_LOG), "{err}");
    let opts = DumpOptions {
        ext_unix_sk: ExternalUnix {
            allowed: true,
            inodes: Vec::new(),
        },
        ..DumpOptions::new(Pid(srv.pid), &images)
    };
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = srv.child.wait();
    let restored = restore(&RestoreOptions {
        ext_unix_sk: true,
        ..RestoreOptions::new(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    // Connected again by the restore (glibc's syslog would make a new socket if a send
    // failed: the same one must still be there after the log line).
    let before = dev_log_socket(restored.pid.0).expect("a socket connected to /dev/log");
    let replies = redis_session(
        port,
        &[&["GET", "kept"], &["DEBUG", "LOG", "after-the-restore"]],
    );
    assert_eq!(replies, ["across-the-restore", "+OK"]);
    syslog.wait_for("after-the-restore");
    assert_eq!(dev_log_socket(restored.pid.0), Some(before));
}
