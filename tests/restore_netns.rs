//! A tree in a network namespace of its own (tp-netns: links, addresses, routes, a rule,
//! sysctls, a firewall rule, TCP connections over it) dumped, killed and restored: the
//! namespace comes back as it was, the connections go on, and the images are CRIU's
//! (Debian's crit decodes them, CRIU 4.2 restores them).
//!
//! Needs root (network namespaces, TCP repair mode, nftables). Each program has a
//! network namespace of its own, so fixed addresses and ports do not collide.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, crit_decode, criu_4_or_skip, debian_crit, wait_until, Reaper, ScratchDir,
    TestProcess,
};

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

/// Dumps tp-netns (which dies with the dump) and waits for its pid to be free.
fn dump_and_kill(tp: &mut TestProcess, images: &Path) -> DumpOptions {
    let opts = dump_opts(tp.pid, images);
    dump(&opts).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    let pid = tp.pid;
    wait_until("the dumped pid to go", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    opts
}

/// The id of the tree's network namespace in the images (from its ids image).
fn netns_id(images: &Path, pid: i32) -> u32 {
    let ids: criu_images::pb::TaskKobjIdsEntry =
        criu_images::ImageReader::open(images.join(format!("ids-{pid}.img")))
            .unwrap()
            .next_entry()
            .unwrap()
            .unwrap();
    ids.net_ns_id.expect("a network namespace id")
}

fn host_nft_tables() -> String {
    let out = Command::new("nft").args(["list", "tables"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn a_tree_in_its_own_network_namespace_comes_back() {
    let scratch = ScratchDir::new("netns-nft");
    let mut tp = TestProcess::start(scratch.path(), "netns", &["--firewall", "nft"]);
    let images = scratch.path().join("images");
    let opts = dump_and_kill(&mut tp, &images);
    let id = netns_id(&images, tp.pid);
    for raw in ["ifaddr", "route", "route6", "rule"] {
        let len = std::fs::metadata(images.join(format!("{raw}-{id}.img")))
            .unwrap_or_else(|e| panic!("{raw}-{id}.img: {e}"))
            .len();
        assert!(len > 0, "{raw}-{id}.img is empty");
    }
    let nft = std::fs::read_to_string(images.join(format!("nftables-{id}.img"))).unwrap();
    assert!(nft.contains("table inet tpnetns"), "{nft}");
    // Read under the lock, as CRIU does: the restore gets it back with the rest.
    let table = criu_core::netlock::table_name(&opts.run_id);
    assert!(nft.contains(&table), "{nft}");
    let tracked = std::fs::metadata(images.join(format!("netns-ct-{id}.img"))).unwrap();
    assert!(
        tracked.len() > 0,
        "the conntrack table holds the connections"
    );
    if let Some(crit) = debian_crit() {
        let netdev = crit_decode(&crit, &images.join(format!("netdev-{id}.img"))).unwrap();
        let entries = netdev["entries"].as_array().unwrap();
        let nv0 = entries.iter().find(|e| e["name"] == "nv0").expect("nv0");
        assert_eq!(nv0["type"], "VETH", "{nv0}");
        assert_eq!(nv0["mtu"], 1400, "{nv0}");
        let lo = entries.iter().find(|e| e["name"] == "lo").expect("lo");
        assert_eq!(lo["type"], "LOOPBACK", "{lo}");
        let netns = crit_decode(&crit, &images.join(format!("netns-{id}.img"))).unwrap();
        assert_eq!(netns["entries"][0]["unix_conf"][0]["iarg"], 313, "{netns}");
    }
    let restored = restore(&restore_opts(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    assert_eq!(restored.pid.0, tp.pid);
    assert_eq!(check_restored(tp.pid, &tp.ready_file), "pass");
    assert!(
        !host_nft_tables().contains(&table),
        "no lock table is left in our namespace"
    );
}

#[test]
fn legacy_iptables_rules_come_back() {
    if criu_core::netlock::find_tool("iptables-legacy").is_none() {
        eprintln!("skipped: iptables-legacy is not installed");
        return;
    }
    let scratch = ScratchDir::new("netns-ipt");
    let mut tp = TestProcess::start(scratch.path(), "netns", &["--firewall", "iptables"]);
    let images = scratch.path().join("images");
    dump_and_kill(&mut tp, &images);
    let id = netns_id(&images, tp.pid);
    let rules = std::fs::read_to_string(images.join(format!("iptables-{id}.img"))).unwrap();
    assert!(rules.contains("--dport 9 -j DROP"), "{rules}");
    let restored = restore(&restore_opts(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    assert_eq!(check_restored(tp.pid, &tp.ready_file), "pass");
}

/// CRIU 4.2 restores the namespace and connections we dumped, and we restore those it
/// dumped (its firewall image holds its lock, which the restore lifts).
#[test]
fn criu_4_2_and_we_restore_each_others_network_namespaces() {
    let Some(criu) = criu_4_or_skip("a network namespace dumped by criu-rs") else {
        return;
    };
    let scratch = ScratchDir::new("netns-criu");
    let mut tp = TestProcess::start(scratch.path(), "netns", &["--firewall", "nft"]);
    let images = scratch.path().join("images");
    dump_and_kill(&mut tp, &images);
    // Bounded: a CRIU that waits for an answer it does not recognise would hang here.
    let out = criu_rs_suite::clean_command("timeout")
        .args(["-s", "KILL", "120"])
        .arg(&criu)
        .args([
            "restore",
            "-d",
            "--tcp-established",
            "-v4",
            "-o",
            "restore.log",
            "-D",
        ])
        .arg(&images)
        .output()
        .expect("run criu");
    let log = std::fs::read_to_string(images.join("restore.log")).unwrap_or_default();
    let _reaper = Reaper(tp.pid);
    assert!(
        out.status.success(),
        "criu restore failed: {:#?}",
        log.lines()
            .filter(|l| l.contains("Error"))
            .collect::<Vec<_>>()
    );
    assert_eq!(check_restored(tp.pid, &tp.ready_file), "pass");
    drop(_reaper);

    let scratch = ScratchDir::new("netns-criu-dumps");
    let mut tp = TestProcess::start(scratch.path(), "netns", &["--firewall", "nft"]);
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let pid = tp.pid.to_string();
    let out = criu_rs_suite::clean_command("timeout")
        .args(["-s", "KILL", "120"])
        .arg(&criu)
        .args([
            "dump",
            "-t",
            &pid,
            "--tcp-established",
            "-v4",
            "-o",
            "dump.log",
            "-D",
        ])
        .arg(&images)
        .output()
        .expect("run criu");
    assert!(out.status.success(), "criu dump failed");
    let _ = tp.child.wait();
    let restored = restore(&restore_opts(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    assert_eq!(check_restored(tp.pid, &tp.ready_file), "pass");
}
