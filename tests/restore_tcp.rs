//! Established TCP connections across a checkpoint (issue 12): tp-tcp holds connections
//! with both ends in the tree and, to this test, connections whose other end stays
//! outside it; data waits in both directions (unread receive queues, unsent and
//! unacknowledged send queues). After a dump that kills it and a restore, every stream
//! goes on byte for byte, and this test's own ends never saw a reset. The network lock
//! is on from the dump until the restore and gone afterwards; a failed dump, a dump that
//! leaves the tree running and a refused one leave the connections working.
//!
//! Needs root (TCP repair mode, nftables, iptables). Every test takes its own ports
//! (the kernel's ephemeral ones), and names its own nft tables, so tests run in parallel.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions, Stage};
use criu_core::netlock::LockMethod;
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, crit_decode, criu_4_or_skip, debian_crit, wait_until, Reaper, ScratchDir,
    TestProcess,
};
use criu_testprogs::{check_stream, fill_stream};

// The streams of tp-tcp's peer connections (see its doc).
const TO_PEER4: u64 = 0x7470_7463_7034_0001;
const TO_PEER6: u64 = 0x7470_7463_7036_0003;
const FROM_PEER4: u64 = 0x7470_7463_7034_0005;
const FROM_PEER6: u64 = 0x7470_7463_7036_0007;
/// What tp-tcp writes to a peer in all (before `ready`, and at the check).
const FROM_PROGRAM: u64 = 60_000 + 40_000;
/// What this test writes to each of its peer connections in all.
const TO_PROGRAM: u64 = 100_000;

/// Our end of one of tp-tcp's peer connections.
struct PeerEnd {
    sock: TcpStream,
    /// The program's stream to us, and ours to it.
    seed_in: u64,
    seed_out: u64,
    sent: u64,
}

impl PeerEnd {
    fn write(&mut self, n: u64) {
        let mut buf = vec![0u8; n as usize];
        fill_stream(&mut buf, self.seed_out, self.sent);
        self.sock
            .set_write_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        self.sock.write_all(&buf).expect("write to the program");
        self.sent += n;
    }

    /// Reads, on a thread of its own, everything the program writes to us (`total`
    /// bytes, then end-of-file when `eof`), and checks it.
    fn read_all_in_background(
        &self,
        total: u64,
        eof: bool,
    ) -> std::thread::JoinHandle<Result<(), String>> {
        let mut sock = self.sock.try_clone().unwrap();
        let seed = self.seed_in;
        std::thread::spawn(move || {
            sock.set_read_timeout(Some(Duration::from_secs(60)))
                .map_err(|e| e.to_string())?;
            let mut got = 0u64;
            let mut buf = vec![0u8; 64 << 10];
            while got < total {
                let len = ((total - got) as usize).min(buf.len());
                let n = sock
                    .read(&mut buf[..len])
                    .map_err(|e| format!("read at byte {got}: {e}"))?;
                if n == 0 {
                    return Err(format!("end of stream at byte {got}"));
                }
                if let Some((at, found, expected)) = check_stream(&buf[..n], seed, got) {
                    return Err(format!(
                        "byte {} is {found:#04x}, not {expected:#04x}",
                        got + at as u64
                    ));
                }
                got += n as u64;
            }
            if eof {
                match sock.read(&mut buf[..1]) {
                    Ok(0) => {}
                    other => return Err(format!("after {got} bytes: {other:?}, not end-of-file")),
                }
            }
            Ok(())
        })
    }
}

/// This test's listeners for tp-tcp's peer connections, IPv4 and IPv6.
struct Peers {
    l4: TcpListener,
    l6: TcpListener,
}

impl Peers {
    fn new() -> Peers {
        Peers {
            l4: TcpListener::bind("127.0.0.1:0").unwrap(),
            l6: TcpListener::bind("[::1]:0").unwrap(),
        }
    }

    fn ports(&self) -> (u16, u16) {
        (
            self.l4.local_addr().unwrap().port(),
            self.l6.local_addr().unwrap().port(),
        )
    }

    /// tp-tcp's arguments to connect to us.
    fn args(&self) -> Vec<String> {
        let (p4, p6) = self.ports();
        vec![
            "--peer4".into(),
            p4.to_string(),
            "--peer6".into(),
            p6.to_string(),
            "--peer-bytes".into(),
            TO_PROGRAM.to_string(),
        ]
    }

    fn accept(&self) -> Vec<PeerEnd> {
        let (s4, _) = self.l4.accept().unwrap();
        let (s6, _) = self.l6.accept().unwrap();
        vec![
            PeerEnd {
                sock: s4,
                seed_in: TO_PEER4,
                seed_out: FROM_PEER4,
                sent: 0,
            },
            PeerEnd {
                sock: s6,
                seed_in: TO_PEER6,
                seed_out: FROM_PEER6,
                sent: 0,
            },
        ]
    }
}

fn start(scratch: &ScratchDir, extra: &[String]) -> TestProcess {
    let args: Vec<&str> = extra.iter().map(String::as_str).collect();
    TestProcess::start(scratch.path(), "tcp", &args)
}

fn dump_opts(pid: i32, images: &Path) -> DumpOptions {
    std::fs::create_dir_all(images).unwrap();
    DumpOptions {
        tcp_established: true,
        ..DumpOptions::new(Pid(pid), images)
    }
}

fn restore_opts(images: &Path) -> RestoreOptions {
    RestoreOptions {
        tcp_established: true,
        pid_wait: Duration::from_secs(30),
        ..RestoreOptions::new(images)
    }
}

fn nft_tables() -> String {
    let out = Command::new("nft").args(["list", "tables"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn lock_table_exists(run_id: &str) -> bool {
    let table = criu_core::netlock::table_name(run_id);
    nft_tables()
        .lines()
        .any(|l| l.trim() == format!("table inet {table}"))
}

/// A table of this test's own whose output chain drops what `rule` matches; deleted on
/// drop.
struct NftDrop(String);

impl NftDrop {
    fn new(test: &str, rule: &str) -> NftDrop {
        let name = format!("criu-rs-test-{test}-{}", std::process::id());
        let script = format!(
            "table inet {name} {{ chain output {{ type filter hook output priority 0; \
             {rule} drop; }}\n}}\n"
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft refused {script}");
        NftDrop(name)
    }
}

/// Drops what the peer ports send, except the SYN-ACKs of their handshakes: the
/// program's data then stays unacknowledged.
fn hold_back_acks(test: &str, ports: (u16, u16)) -> NftDrop {
    NftDrop::new(
        test,
        &format!(
            "tcp sport {{ {}, {} }} tcp flags & syn == 0",
            ports.0, ports.1
        ),
    )
}

impl Drop for NftDrop {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.0])
            .status();
    }
}

/// Every image of the dump that crit must read: the connections' streams, files and the
/// inventory.
fn crit_reads(images: &Path) {
    let Some(crit) = debian_crit() else {
        return;
    };
    let mut streams = 0;
    for e in std::fs::read_dir(images).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("tcp-stream-") || name == "files.img" || name == "inventory.img" {
            let json = crit_decode(&crit, &e.path()).unwrap_or_else(|e| panic!("{e}"));
            if name.starts_with("tcp-stream-") {
                streams += 1;
                let entry = &json["entries"][0];
                assert!(entry["inq_seq"].is_u64(), "{name}: {entry}");
            }
        }
    }
    assert!(streams > 0, "no tcp-stream image in {}", images.display());
}

/// The streams of a tcp-stream image: (inq_len, outq_len, unsq_len).
fn queue_lengths(images: &Path) -> Vec<(u32, u32, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(images).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("tcp-stream-") {
            let mut r = criu_images::ImageReader::open(e.path()).unwrap();
            let s: criu_images::pb::TcpStreamEntry = r.next_entry().unwrap().unwrap();
            out.push((s.inq_len, s.outq_len, s.unsq_len.unwrap_or(0)));
        }
    }
    out
}

/// After a restore: the program's check, with our ends reading what it writes and
/// writing the rest of our streams.
fn check_with_peers(pid: i32, ready: &Path, peers: &mut [PeerEnd]) {
    check_with_peers_then(pid, ready, peers, FROM_PROGRAM, false)
}

/// `check_with_peers`, where the program writes `from_program` bytes to each of our
/// ends, then end-of-file when `eof`.
fn check_with_peers_then(
    pid: i32,
    ready: &Path,
    peers: &mut [PeerEnd],
    from_program: u64,
    eof: bool,
) {
    let readers: Vec<_> = peers
        .iter()
        .map(|p| p.read_all_in_background(from_program, eof))
        .collect();
    for p in peers.iter_mut() {
        let rest = TO_PROGRAM - p.sent;
        p.write(rest);
    }
    assert_eq!(check_restored(pid, ready), "pass");
    for (i, r) in readers.into_iter().enumerate() {
        let got = r.join().unwrap();
        assert_eq!(got, Ok(()), "peer connection {i}: the program's stream");
    }
}

#[test]
fn connections_inside_the_tree_and_to_an_outside_peer_go_on_byte_for_byte() {
    let scratch = ScratchDir::new("tcp-round-trip");
    let peers = Peers::new();
    let mut args = peers.args();
    args.extend(["--fill".into(), "yes".into()]);
    let mut tp = start(&scratch, &args);
    let mut ends = peers.accept();
    // Part of our streams waits unread in the program's receive queues.
    for e in &mut ends {
        e.write(60_000);
    }
    let images = scratch.path().join("images");
    let opts = dump_opts(tp.pid, &images);
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    assert!(
        lock_table_exists(&opts.run_id),
        "the connections stay locked until the restore: {}",
        nft_tables()
    );
    let lengths = queue_lengths(&images);
    assert!(
        lengths.iter().any(|&(_, _, unsent)| unsent > 0),
        "a filled send queue holds bytes never sent: {lengths:?}"
    );
    assert!(
        lengths.iter().any(|&(inq, _, _)| inq >= 60_000),
        "our bytes wait in a receive queue: {lengths:?}"
    );
    crit_reads(&images);
    let restored = restore(&restore_opts(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    assert!(
        !lock_table_exists(&opts.run_id),
        "the lock is lifted once the tree runs: {}",
        nft_tables()
    );
    check_with_peers(reaper.0, &tp.ready_file, &mut ends);
}

#[test]
fn unacknowledged_data_to_a_peer_is_sent_again_after_the_restore() {
    let scratch = ScratchDir::new("tcp-unacked");
    let peers = Peers::new();
    // Our ACKs (and data) are held back from the start: what the program writes
    // before `ready` stays unacknowledged in its send queue.
    let hold = hold_back_acks("unacked", peers.ports());
    let mut tp = start(&scratch, &peers.args());
    let mut ends = peers.accept();
    let images = scratch.path().join("images");
    let opts = dump_opts(tp.pid, &images);
    // Until the program has written its first bytes, they are not all in flight.
    std::thread::sleep(Duration::from_millis(300));
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    let lengths = queue_lengths(&images);
    assert!(
        lengths
            .iter()
            .any(|&(_, outq, unsent)| outq >= 60_000 && unsent < outq),
        "sent but unacknowledged bytes in a send queue: {lengths:?}"
    );
    let restored = restore(&restore_opts(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    drop(hold);
    check_with_peers(reaper.0, &tp.ready_file, &mut ends);
}

#[test]
fn half_closed_connections_come_back_half_closed() {
    let scratch = ScratchDir::new("tcp-half-closed");
    let peers = Peers::new();
    // The program's FINs to us stay unacknowledged: its ends are in FIN_WAIT1.
    let hold = hold_back_acks("half-closed", peers.ports());
    let mut args = peers.args();
    for a in [
        "--fill",
        "yes",
        "--half-closed",
        "yes",
        "--peer-shutdown",
        "yes",
    ] {
        args.push(a.into());
    }
    let mut tp = start(&scratch, &args);
    let mut ends = peers.accept();
    let listing = std::fs::read_to_string(tp.ready_file.with_extension("ready.tcp")).unwrap();
    let images = scratch.path().join("images");
    let opts = dump_opts(tp.pid, &images);
    std::thread::sleep(Duration::from_millis(300));
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    // The states the images hold: FIN_WAIT1 (4), FIN_WAIT2 (5), CLOSE_WAIT (8).
    let mut files = criu_images::ImageReader::open(images.join("files.img")).unwrap();
    let mut states = Vec::new();
    while let Some(f) = files.next_entry::<criu_images::pb::FileEntry>().unwrap() {
        if let Some(isk) = f.isk.filter(|i| i.dst_port != 0) {
            states.push(isk.state);
        }
    }
    states.sort();
    for s in [4, 5, 8] {
        assert!(states.contains(&s), "state {s} among {states:?}\n{listing}");
    }
    crit_reads(&images);
    let restored = restore(&restore_opts(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    drop(hold);
    check_with_peers_then(reaper.0, &tp.ready_file, &mut ends, 60_000, true);
}

#[test]
fn a_connection_still_connecting_is_made_after_the_restore() {
    let scratch = ScratchDir::new("tcp-syn-sent");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Its SYNs get no answer: it is SYN_SENT at the dump.
    let syns = NftDrop::new("syn-sent", &format!("tcp dport {port}"));
    let mut tp = start(
        &scratch,
        &[
            "--pairs".into(),
            "no".into(),
            "--connect-to".into(),
            port.to_string(),
        ],
    );
    let images = scratch.path().join("images");
    dump(&dump_opts(tp.pid, &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    let mut files = criu_images::ImageReader::open(images.join("files.img")).unwrap();
    let mut states = Vec::new();
    while let Some(f) = files.next_entry::<criu_images::pb::FileEntry>().unwrap() {
        states.extend(f.isk.map(|i| i.state));
    }
    assert_eq!(states, vec![2], "SYN_SENT");
    let restored = restore(&restore_opts(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    drop(syns);
    // The SYN goes out again (its timer: a second or so), we answer.
    let server = std::thread::spawn(move || -> Result<(), String> {
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut sock = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(format!("no connection: {e}")),
            }
        };
        sock.set_nonblocking(false).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 10_000];
        sock.read_exact(&mut buf).map_err(|e| e.to_string())?;
        if let Some(at) = check_stream(&buf, 0x7470_7463_7379_6e01, 0) {
            return Err(format!("the program's bytes: {at:?}"));
        }
        fill_stream(&mut buf, 0x7470_7463_7379_6e03, 0);
        sock.write_all(&buf).map_err(|e| e.to_string())
    });
    assert_eq!(check_restored(reaper.0, &tp.ready_file), "pass");
    assert_eq!(server.join().unwrap(), Ok(()));
}

#[test]
fn the_iptables_lock_works_the_same_and_leaves_no_rule() {
    let scratch = ScratchDir::new("tcp-iptables");
    let peers = Peers::new();
    let mut tp = start(&scratch, &peers.args());
    let mut ends = peers.accept();
    for e in &mut ends {
        e.write(10_000);
    }
    let images = scratch.path().join("images");
    let opts = DumpOptions {
        network_lock: LockMethod::Iptables,
        ..dump_opts(tp.pid, &images)
    };
    let (p4, p6) = peers.ports();
    let rules = || {
        let mut text = String::new();
        for tool in ["iptables", "ip6tables"] {
            let out = Command::new(tool).args(["-w", "-S"]).output().unwrap();
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        text.lines()
            .filter(|l| {
                l.contains(&format!("--sport {p4} "))
                    || l.contains(&format!("--dport {p4} "))
                    || l.contains(&format!("--sport {p6} "))
                    || l.contains(&format!("--dport {p6} "))
            })
            .count()
    };
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    // Two rules (in and out) per peer connection.
    assert_eq!(rules(), 4, "the peer connections are locked");
    let restored = restore(&restore_opts(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    assert_eq!(rules(), 0, "no rule is left");
    check_with_peers(reaper.0, &tp.ready_file, &mut ends);
}

#[test]
fn a_failed_dump_and_a_dump_that_leaves_the_tree_running_keep_the_connections() {
    let scratch = ScratchDir::new("tcp-failed");
    let peers = Peers::new();
    let tp = start(&scratch, &peers.args());
    let mut ends = peers.accept();
    for e in &mut ends {
        e.write(20_000);
    }
    let images = scratch.path().join("images");
    let failed = DumpOptions {
        fail_after: Some(Stage::Images),
        ..dump_opts(tp.pid, &images)
    };
    let err = dump(&failed).expect_err("the hook fails the dump");
    assert!(err.to_string().contains("Images"), "{err}");
    assert!(!lock_table_exists(&failed.run_id), "{}", nft_tables());
    let running = DumpOptions {
        leave_running: true,
        ..dump_opts(tp.pid, &scratch.path().join("images-running"))
    };
    dump(&running).unwrap_or_else(|e| panic!("dump -R: {e}"));
    assert!(!lock_table_exists(&running.run_id), "{}", nft_tables());
    // The program was never restored: the same process, its sockets out of repair mode.
    check_with_peers(tp.pid, &tp.ready_file, &mut ends);
}

#[test]
fn without_the_flag_a_connection_is_refused_by_name_before_anything_is_touched() {
    let scratch = ScratchDir::new("tcp-refused");
    let peers = Peers::new();
    let tp = start(&scratch, &peers.args());
    let mut ends = peers.accept();
    let images = scratch.path().join("images");
    let opts = DumpOptions {
        tcp_established: false,
        ..dump_opts(tp.pid, &images)
    };
    let err = dump(&opts).expect_err("refused").to_string();
    let listing = std::fs::read_to_string(tp.ready_file.with_extension("ready.tcp")).unwrap();
    let client4 = listing.lines().find(|l| l.starts_with("client4")).unwrap();
    let local: SocketAddr = client4.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        err.contains(&format!("task {} fd ", tp.pid))
            && err.contains("ESTABLISHED")
            && err.contains(&local.to_string())
            && err.contains("--tcp-established"),
        "{err}"
    );
    assert!(!lock_table_exists(&opts.run_id));
    check_with_peers(tp.pid, &tp.ready_file, &mut ends);
}

#[test]
fn connections_not_accepted_yet_are_refused_or_dropped_with_skip_in_flight() {
    let scratch = ScratchDir::new("tcp-in-flight");
    let mut tp = start(&scratch, &[]);
    let listing = std::fs::read_to_string(tp.ready_file.with_extension("ready.tcp")).unwrap();
    let at: SocketAddr = listing
        .lines()
        .find(|l| l.starts_with("listen4"))
        .and_then(|l| l.split(' ').nth(1))
        .unwrap()
        .parse()
        .unwrap();
    let mut waiting = TcpStream::connect(at).unwrap();
    let images = scratch.path().join("images");
    let err = dump(&dump_opts(tp.pid, &images))
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("not accepted yet") && err.contains("--skip-in-flight"),
        "{err}"
    );
    let opts = DumpOptions {
        skip_in_flight: true,
        ..dump_opts(tp.pid, &images)
    };
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    let restored = restore(&restore_opts(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    // The program's listener accepts its own new connection, not ours.
    assert_eq!(check_restored(reaper.0, &tp.ready_file), "pass");
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    let read = waiting.read(&mut byte);
    assert!(
        matches!(&read, Ok(0)) || read.is_err(),
        "the connection left behind is gone: {read:?}"
    );
}

#[test]
fn with_tcp_close_connections_come_back_closed() {
    let scratch = ScratchDir::new("tcp-close");
    let peers = Peers::new();
    let mut tp = start(&scratch, &peers.args());
    let mut ends = peers.accept();
    let images = scratch.path().join("images");
    let opts = DumpOptions {
        tcp_established: false,
        tcp_close: true,
        ..dump_opts(tp.pid, &images)
    };
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    assert!(!lock_table_exists(&opts.run_id));
    assert!(queue_lengths(&images).is_empty(), "no stream is saved");
    // Our ends see the connection end with the program.
    for e in &mut ends {
        e.sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        let end = e.sock.read_to_end(&mut rest);
        assert!(
            !matches!(&end, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "the connection ended: {end:?}"
        );
    }
    // Without --tcp-close the restore refuses the connections, before anything exists.
    let err = restore(&RestoreOptions {
        tcp_established: false,
        ..restore_opts(&images)
    })
    .expect_err("refused")
    .to_string();
    assert!(err.contains("--tcp-established"), "{err}");
    let restored = restore(&RestoreOptions {
        tcp_established: false,
        tcp_close: true,
        ..restore_opts(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    let verdict = check_restored(reaper.0, &tp.ready_file);
    assert!(
        verdict.starts_with("fail") && verdict.contains("client4 TCP state"),
        "closed sockets, not connections: {verdict}"
    );
}

/// Kills a tree CRIU restored (detached: not our child) and waits until it is gone.
struct CriuRestored(i32);

impl Drop for CriuRestored {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process this test had CRIU restore.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
        let p = self.0;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{p}")).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn run_criu(criu: &Path, images: &Path, log: &str, args: &[&str]) {
    let out = criu_rs_suite::clean_command(criu.to_str().unwrap())
        .args(args)
        .args(["-v4", "-o", log, "-D"])
        .arg(images)
        .output()
        .expect("run criu");
    let text = std::fs::read_to_string(images.join(log)).unwrap_or_default();
    assert!(
        out.status.success(),
        "criu {args:?} failed: {:#?}",
        text.lines()
            .filter(|l| l.contains("Error") || l.contains("rror "))
            .collect::<Vec<_>>()
    );
}

#[test]
fn criu_4_2_restores_our_connections_and_we_restore_its() {
    let Some(criu) = criu_4_or_skip("TCP connections between criu-rs and CRIU") else {
        return;
    };
    // Ours, restored by CRIU (which lifts our nftables lock by the run id we recorded).
    // CRIU 4.2 connects its repaired sockets before it sets their MSS clamp, so they
    // send 524-byte segments from then on (see files/tcp.rs): the program does not
    // check the segment size after CRIU's restore.
    let scratch = ScratchDir::new("tcp-criu-restores");
    let peers = Peers::new();
    let mut args = peers.args();
    args.extend(["--segment-size".to_owned(), "no".to_owned()]);
    let mut tp = start(&scratch, &args);
    let mut ends = peers.accept();
    for e in &mut ends {
        e.write(30_000);
    }
    let images = scratch.path().join("images");
    let opts = dump_opts(tp.pid, &images);
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    wait_until("the dumped pid to go", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{}", tp.pid)).exists()
    });
    run_criu(
        &criu,
        &images,
        "restore.log",
        &["restore", "-d", "--tcp-established"],
    );
    let _restored = CriuRestored(tp.pid);
    assert!(!lock_table_exists(&opts.run_id), "{}", nft_tables());
    check_with_peers(tp.pid, &tp.ready_file, &mut ends);
    drop(_restored);

    // CRIU's, with each of its lock methods, restored by us.
    for method in ["iptables", "nftables"] {
        let scratch = ScratchDir::new(&format!("tcp-criu-dumps-{method}"));
        let peers = Peers::new();
        let mut tp = start(&scratch, &peers.args());
        let mut ends = peers.accept();
        for e in &mut ends {
            e.write(30_000);
        }
        let images = scratch.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        let pid = tp.pid.to_string();
        run_criu(
            &criu,
            &images,
            "dump.log",
            &[
                "dump",
                "-t",
                &pid,
                "--tcp-established",
                "--network-lock",
                method,
            ],
        );
        let _ = tp.child.wait();
        let inventory: criu_images::pb::InventoryEntry =
            criu_images::ImageReader::open(images.join("inventory.img"))
                .unwrap()
                .next_entry()
                .unwrap()
                .unwrap();
        let run_id = inventory.dump_criu_run_id.unwrap_or_default();
        let restored =
            restore(&restore_opts(&images)).unwrap_or_else(|e| panic!("restore ({method}): {e}"));
        let reaper = Reaper(restored.pid.0);
        assert!(
            !lock_table_exists(&run_id),
            "{method}: CRIU's lock is lifted: {}",
            nft_tables()
        );
        check_with_peers(reaper.0, &tp.ready_file, &mut ends);
    }
}

/// A network namespace of the test's own that outlives the tree (as a container
/// runtime's does), deleted on drop.
struct Netns(String);

impl Netns {
    fn new(test: &str) -> Netns {
        let name = format!("criu-rs-{test}-{}", std::process::id());
        let ok = |args: &[&str]| Command::new("ip").args(args).status().unwrap().success();
        assert!(ok(&["netns", "add", &name]), "ip netns add {name}");
        let ns = Netns(name);
        assert!(ok(&["-n", &ns.0, "link", "set", "lo", "up"]));
        ns
    }

    fn path(&self) -> std::path::PathBuf {
        Path::new("/run/netns").join(&self.0)
    }

    /// `nft list tables` inside it.
    fn nft_tables(&self) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .args(["nft", "list", "tables"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

#[test]
fn a_tree_in_its_own_network_namespace_is_locked_inside_it() {
    let scratch = ScratchDir::new("tcp-netns");
    let netns = Netns::new("tcp");
    let ready = scratch.path().join("tcp.ready");
    let tp_bin = criu_rs_suite::workspace_bin("tp-tcp");
    let mut tp = TestProcess::spawn(
        &[
            "nsenter",
            &format!("--net={}", netns.path().display()),
            tp_bin.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
            "--half-closed",
            "yes",
        ],
        &scratch.path().join("tcp.out"),
    );
    criu_rs_suite::wait_for_file(&ready, Duration::from_secs(60)).expect("tp-tcp ready");
    let images = scratch.path().join("images");
    let opts = DumpOptions {
        external_namespaces: vec!["net".into()],
        ..dump_opts(tp.pid, &images)
    };
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    let table = criu_core::netlock::table_name(&opts.run_id);
    assert!(
        netns.nft_tables().contains(&table),
        "the namespace is locked inside: {}",
        netns.nft_tables()
    );
    assert!(!lock_table_exists(&opts.run_id), "and only there");
    let restored = restore(&RestoreOptions {
        join_ns: vec![("net".into(), netns.path())],
        ..restore_opts(&images)
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    assert!(
        !netns.nft_tables().contains(&table),
        "lifted: {}",
        netns.nft_tables()
    );
    assert_eq!(check_restored(reaper.0, &ready), "pass");
}

#[test]
fn a_failed_restore_lifts_the_lock_and_leaves_no_process() {
    let scratch = ScratchDir::new("tcp-failed-restore");
    let peers = Peers::new();
    let mut tp = start(&scratch, &peers.args());
    let _ends = peers.accept();
    let images = scratch.path().join("images");
    let opts = dump_opts(tp.pid, &images);
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    assert!(lock_table_exists(&opts.run_id));
    // Interrupted as a signal would: it fails once the images are checked and the
    // tree is being made.
    let failing = restore_opts(&images);
    failing.interrupt.raise(libc::SIGINT);
    let err = restore(&failing).expect_err("interrupted").to_string();
    assert!(err.contains("nothing of the tree was left behind"), "{err}");
    assert!(
        !lock_table_exists(&opts.run_id),
        "lifted on failure: {}",
        nft_tables()
    );
    wait_until("the half-made tree to go", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{}", tp.pid)).exists()
    });
}

#[test]
fn a_dumper_killed_while_it_holds_the_connections_leaves_them_working() {
    let scratch = ScratchDir::new("tcp-dumper-killed");
    let peers = Peers::new();
    let tp = start(&scratch, &peers.args());
    let mut ends = peers.accept();
    for e in &mut ends {
        e.write(20_000);
    }
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    // Paused after the files: every connection locked and in repair mode.
    let mut dumper =
        criu_rs_suite::clean_command(criu_rs_suite::workspace_bin("criu-rs").to_str().unwrap())
            .args(["dump", "--tcp-established", "-v4", "-o", "dump.log", "-t"])
            .arg(tp.pid.to_string())
            .arg("-D")
            .arg(&images)
            .env("CRIU_RS_TEST_PAUSE_AFTER", "Files")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    let log = images.join("dump.log");
    wait_until("the dumper to pause", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("pausing on request"))
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let run_id = text
        .split("run_id=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the run id in the log")
        .to_owned();
    assert!(lock_table_exists(&run_id), "locked: {}", nft_tables());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(dumper.id() as i32, libc::SIGKILL) };
    let _ = dumper.wait();
    // Its watchdog takes the sockets out of repair mode and lifts the lock.
    wait_until("the lock to be lifted", Duration::from_secs(30), || {
        !lock_table_exists(&run_id)
    });
    wait_until(
        "the program to run untraced",
        Duration::from_secs(30),
        || criu_rs_suite::tracer_pid(tp.pid) == Some(0),
    );
    check_with_peers(tp.pid, &tp.ready_file, &mut ends);
}
