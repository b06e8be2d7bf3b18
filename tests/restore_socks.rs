//! Packet, netlink, raw IP and ICMP (ping) sockets (CRIU's zdtm packet_sock,
//! packet_sock_spkt, sk-netlink, sock_ip_opts00/01, socket_icmp, socket6_icmp): the
//! dump writes them as CRIU's PACKETSK, NETLINKSK and INETSK entries (read back by
//! Debian's crit), and after a restore tp-socks finds each with its address and
//! options, and each still works (a ping gets its reply, a route socket answers a dump,
//! a packet socket on lo sees traffic). A netlink socket with an answer queued is
//! refused at dump, naming it, and the program runs on untouched. CRIU 4.2, where it
//! runs, restores the same dump, and the program passes its check there too, but for
//! what CRIU's restore does not rebuild (see the test).

use std::path::Path;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, clean_command, crit_decode, criu_4_or_skip, criu_restore, debian_crit,
    wait_until, Reaper, ScratchDir, TestProcess,
};

const PING_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";

/// Lets group 0 open ping sockets for the while (the kernel's default lets no group);
/// the last of the tests that run at once puts the old range back.
struct PingGroups;

/// How many tests hold [`PingGroups`], and the range to put back after the last.
static PING_USERS: std::sync::Mutex<(usize, Option<String>)> = std::sync::Mutex::new((0, None));

impl PingGroups {
    fn allow_root() -> PingGroups {
        let mut users = PING_USERS.lock().unwrap_or_else(|e| e.into_inner());
        users.0 += 1;
        if users.0 == 1 {
            users.1 = Self::widen();
        }
        PingGroups
    }

    /// Puts group 0 in the range; the range it replaced, if it did.
    fn widen() -> Option<String> {
        let old = std::fs::read_to_string(PING_RANGE).expect("read ping_group_range");
        let low: i64 = old
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or(1);
        let high: i64 = old
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.parse().ok())
            .unwrap_or(0);
        if low <= 0 && 0 <= high {
            return None;
        }
        std::fs::write(PING_RANGE, "0 0").expect("write ping_group_range");
        Some(old)
    }
}

impl Drop for PingGroups {
    fn drop(&mut self) {
        let mut users = PING_USERS.lock().unwrap_or_else(|e| e.into_inner());
        users.0 -= 1;
        if users.0 == 0 {
            if let Some(old) = users.1.take() {
                let _ = std::fs::write(PING_RANGE, old.trim());
            }
        }
    }
}

/// The entries of files.img, decoded by crit (`None`: crit is not installed).
fn crit_files(images: &Path) -> Option<Vec<serde_json::Value>> {
    let crit = debian_crit()?;
    let files = crit_decode(&crit, &images.join("files.img")).unwrap_or_else(|e| panic!("{e}"));
    Some(files["entries"].as_array().cloned().unwrap_or_default())
}

fn of_type<'a>(entries: &'a [serde_json::Value], ty: &str) -> Vec<&'a serde_json::Value> {
    entries.iter().filter(|e| e["type"] == ty).collect()
}

/// CRIU's reading of the images, as crit shows it: every socket of the program is
/// there, with the fields a restore needs.
fn check_images(images: &Path) {
    let Some(entries) = crit_files(images) else {
        eprintln!("crit is not installed: images not cross-checked");
        return;
    };
    let packets = of_type(&entries, "PACKETSK");
    assert_eq!(packets.len(), 3, "{packets:#?}");
    let lo = std::fs::read_to_string("/sys/class/net/lo/ifindex").unwrap();
    let lo: u64 = lo.trim().parse().unwrap();
    for p in &packets {
        assert_eq!(p["psk"]["ifindex"].as_u64(), Some(lo), "{p:#?}");
    }
    let with_ring: Vec<_> = packets
        .iter()
        .filter(|p| !p["psk"]["rx_ring"].is_null())
        .collect();
    assert_eq!(
        with_ring.len(),
        1,
        "one socket has an RX ring: {packets:#?}"
    );
    assert_eq!(
        with_ring[0]["psk"]["version"].as_u64(),
        Some(1),
        "TPACKET_V2"
    );
    assert_eq!(with_ring[0]["psk"]["aux_data"], true);
    assert_eq!(
        with_ring[0]["psk"]["mclist"].as_array().map(Vec::len),
        Some(1)
    );
    assert!(
        packets
            .iter()
            .any(|p| p["psk"].get("fanout").is_some_and(|f| !f.is_null())),
        "one socket is in a fanout group: {packets:#?}"
    );

    let netlinks = of_type(&entries, "NETLINKSK");
    assert_eq!(netlinks.len(), 3, "{netlinks:#?}");
    let connected: Vec<_> = netlinks
        .iter()
        .filter(|n| n["nlsk"]["state"] == 1)
        .collect();
    assert_eq!(connected.len(), 1, "{netlinks:#?}");
    let server_port = &connected[0]["nlsk"]["dst_portid"];
    assert!(
        netlinks.iter().any(|n| &n["nlsk"]["portid"] == server_port),
        "the client is connected to the server's port id: {netlinks:#?}"
    );
    assert!(
        netlinks.iter().any(|n| n["nlsk"]["groups"][0] == 0x80),
        "the route socket is in RTMGRP_IPV4_RULE: {netlinks:#?}"
    );

    let inets = of_type(&entries, "INETSK");
    // (crit shows these fields as numbers: SOCK_RAW 3, SOCK_DGRAM 2.)
    let raws: Vec<_> = inets
        .iter()
        .filter(|e| e["isk"]["type"] == libc::SOCK_RAW)
        .collect();
    assert_eq!(raws.len(), 3, "{inets:#?}");
    assert!(
        raws.iter()
            .any(|e| e["isk"]["ip_opts"]["raw"]["hdrincl"] == true),
        "{raws:#?}"
    );
    let pings: Vec<_> = inets
        .iter()
        .filter(|e| e["isk"]["type"] == libc::SOCK_DGRAM && e["isk"]["src_port"] != 0)
        .filter(|e| {
            e["isk"]["proto"] == libc::IPPROTO_ICMP || e["isk"]["proto"] == libc::IPPROTO_ICMPV6
        })
        .collect();
    assert!(!pings.is_empty(), "a ping socket with its id: {inets:#?}");
}

#[test]
fn packet_netlink_raw_and_ping_sockets_come_back_and_work() {
    let _ping = PingGroups::allow_root();
    let scratch = ScratchDir::new("socks");
    let mut tp = TestProcess::start(scratch.path(), "socks", &[]);
    let ready = tp.ready_file.clone();
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    check_images(&images);
    let restored =
        restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    assert_eq!(check_restored(reaper.0, &ready).trim(), "pass");
}

#[test]
fn a_netlink_socket_with_an_answer_queued_is_refused_and_left_running() {
    let _ping = PingGroups::allow_root();
    let scratch = ScratchDir::new("socks-queued");
    let mut tp = TestProcess::start(scratch.path(), "socks", &["--netlink-queued", "yes"]);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let err = match dump(&DumpOptions::new(Pid(tp.pid), &images)) {
        Ok(_) => panic!("the dump took a netlink socket with messages queued"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("netlink socket with messages queued")
            && err.contains(&format!("{}", tp.pid))
            && err.contains("fd "),
        "{err}"
    );
    assert_eq!(tp.check().trim(), "pass", "the program runs on as it was");
}

/// The other direction: CRIU 4.2 restores our dump of the same sockets (skipped, saying
/// so, where no working CRIU 4.2 is installed).
#[test]
fn criu_4_2_restores_our_dump_of_these_sockets() {
    let Some(criu) = criu_4_or_skip("the CRIU restore of our socket images") else {
        return;
    };
    let _ping = PingGroups::allow_root();
    let scratch = ScratchDir::new("socks-by-criu");
    let mut tp = TestProcess::start(scratch.path(), "socks", &[]);
    let pid = tp.pid;
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    wait_until(
        "the dumped program to go",
        std::time::Duration::from_secs(10),
        || !Path::new(&format!("/proc/{pid}")).exists(),
    );
    let _restored = criu_restore(&criu, &images, &[], vec![pid]);
    let verdict = tp.check();
    // Where CRIU's restore itself differs from the dumped state (the images hold it):
    // it connects a netlink socket whose peer has no group to group 32 (1 << -1), does
    // not connect a raw socket whose peer has no port, and never binds a ping socket
    // (which takes another id at its first send). Everything else must pass.
    let known = [
        "nl-client: peer:",
        "raw-icmp: address:",
        "ping: address:",
        "ping6: address:",
    ];
    let unexpected: Vec<&str> = verdict
        .trim()
        .strip_prefix("fail: ")
        .map(|list| list.split("; ").collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|f| !known.iter().any(|k| f.starts_with(k)))
        .collect();
    assert!(
        verdict.trim() == "pass" || (verdict.starts_with("fail: ") && unexpected.is_empty()),
        "tp-socks restored by CRIU: {verdict}"
    );
}

/// And the first direction: CRIU 4.2 dumps the same sockets, and we restore its images
/// (skipped, saying so, where no working CRIU 4.2 is installed).
#[test]
fn our_restore_takes_criu_4_2_dump_of_these_sockets() {
    let Some(criu) = criu_4_or_skip("the restore of CRIU's socket images") else {
        return;
    };
    let _ping = PingGroups::allow_root();
    let scratch = ScratchDir::new("socks-from-criu");
    let mut tp = TestProcess::start(scratch.path(), "socks", &[]);
    let pid = tp.pid;
    let ready = tp.ready_file.clone();
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let out = clean_command(criu.to_str().unwrap())
        .args([
            "dump",
            "-v4",
            "-o",
            "dump.log",
            "-t",
            &pid.to_string(),
            "-D",
        ])
        .arg(&images)
        .output()
        .expect("run criu");
    let log = std::fs::read_to_string(images.join("dump.log")).unwrap_or_default();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("Error")).collect();
    assert!(
        out.status.success(),
        "CRIU could not dump tp-socks: {errors:#?}"
    );
    let _ = tp.child.wait();
    wait_until(
        "the dumped program to go",
        std::time::Duration::from_secs(10),
        || !Path::new(&format!("/proc/{pid}")).exists(),
    );
    let restored =
        restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    assert_eq!(check_restored(reaper.0, &ready).trim(), "pass");
}
