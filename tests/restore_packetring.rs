//! A packet socket's mapped rings (CRIU's zdtm packet_sock_mmap): tp-packetring maps
//! the RX and TX rings of a TPACKET_V2 socket on lo. The dump records the mapping as
//! CRIU does (a `VMA_AREA_SOCKET` entry whose `shmid` is the socket's file id, no
//! pages) and the ring geometry with the socket; Debian's crit reads both. The restore
//! (ours, and CRIU 4.2's) makes the socket with its rings and maps them at the same
//! address, and we restore CRIU's dump of it: the program checks the mapping is its
//! socket's and that the RX ring captures its datagrams again. A ring whose socket the
//! process closed cannot be mapped again by CRIU: the dump refuses it before the
//! freeze, and the program runs on.

use std::path::Path;
use std::time::Duration;

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, clean_command, crit_decode, criu_4_or_skip, debian_crit, dump_kill_restore,
    wait_until, DetachedTree, Reaper, ScratchDir, TestProcess,
};

/// VMA_AREA_REGULAR | VMA_AREA_SOCKET.
const SOCKET_VMA: u64 = 1 | (1 << 11);

fn ring_address(tp: &TestProcess) -> u64 {
    let text = std::fs::read_to_string(tp.ready_file.with_extension("ready.ring")).unwrap();
    u64::from_str_radix(text.trim(), 16).unwrap()
}

/// crit reads the mapping (a socket mapping naming the packet socket's file id, 16 KiB
/// at `addr`) and the socket's two rings.
fn check_images(images: &Path, pid: i32, addr: u64) {
    let Some(crit) = debian_crit() else {
        eprintln!("crit is not installed: images not cross-checked");
        return;
    };
    let mm =
        crit_decode(&crit, &images.join(format!("mm-{pid}.img"))).unwrap_or_else(|e| panic!("{e}"));
    let vmas = mm["entries"][0]["vmas"].as_array().expect("vmas");
    let hex = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .or_else(|| v.as_u64())
    };
    let vma = vmas
        .iter()
        .find(|v| hex(&v["start"]) == Some(addr))
        .unwrap_or_else(|| panic!("no VMA at {addr:#x}: {vmas:#?}"));
    assert_eq!(hex(&vma["end"]), Some(addr + 16384), "{vma:#?}");
    assert_eq!(hex(&vma["status"]), Some(SOCKET_VMA), "{vma:#?}");
    let shmid = hex(&vma["shmid"]).expect("shmid");

    let files = crit_decode(&crit, &images.join("files.img")).unwrap_or_else(|e| panic!("{e}"));
    let entries = files["entries"].as_array().cloned().unwrap_or_default();
    let socket = entries
        .iter()
        .find(|e| e["type"] == "PACKETSK")
        .unwrap_or_else(|| panic!("no packet socket: {entries:#?}"));
    assert_eq!(hex(&socket["id"]), Some(shmid), "{socket:#?}");
    for ring in ["rx_ring", "tx_ring"] {
        let r = &socket["psk"][ring];
        assert_eq!(r["block_size"].as_u64(), Some(4096), "{ring}: {socket:#?}");
        assert_eq!(r["block_nr"].as_u64(), Some(2), "{ring}: {socket:#?}");
        assert_eq!(r["frame_size"].as_u64(), Some(2048), "{ring}: {socket:#?}");
        assert_eq!(r["frame_nr"].as_u64(), Some(4), "{ring}: {socket:#?}");
    }
}

#[test]
fn a_mapped_packet_ring_comes_back_live_at_its_address() {
    let scratch = ScratchDir::new("packetring");
    let mut tp = TestProcess::start(scratch.path(), "packetring", &[]);
    let addr = ring_address(&tp);
    let images = scratch.path().join("images");
    let restored = dump_kill_restore(&mut tp, &images);
    check_images(&images, tp.pid, addr);
    assert_eq!(check_restored(restored.0, &tp.ready_file), "pass");
}

#[test]
fn a_ring_whose_socket_is_closed_is_refused_and_the_program_runs_on() {
    let scratch = ScratchDir::new("packetring_closed");
    let mut tp = TestProcess::start(scratch.path(), "packetring", &["--close-socket", "1"]);
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let err = dump(&DumpOptions::new(Pid(tp.pid), &images))
        .expect_err("a ring without its socket's fd is refused")
        .to_string();
    assert!(err.contains("not an open packet socket"), "{err}");
    assert_eq!(tp.check(), "pass");
}

#[test]
fn criu_4_2_and_criu_rs_restore_each_others_packet_rings() {
    let Some(criu) = criu_4_or_skip("CRIU's restore of a packet ring") else {
        return;
    };
    let scratch = ScratchDir::new("packetring_criu");

    // Ours, restored by CRIU.
    let mut tp = TestProcess::start(scratch.path(), "packetring", &[]);
    let pid = tp.pid;
    let images = scratch.path().join("ours");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    wait_until("the dumped program to go", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    let out = clean_command(criu.to_str().unwrap())
        .args(["restore", "-d", "-v4", "-o", "restore.log", "-D"])
        .arg(&images)
        .output()
        .expect("run criu");
    let restored = DetachedTree(vec![pid]);
    let log = std::fs::read_to_string(images.join("restore.log")).unwrap_or_default();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("Error")).collect();
    assert!(
        out.status.success(),
        "CRIU could not restore ours: {errors:#?}"
    );
    assert_eq!(check_restored(pid, &tp.ready_file), "pass");
    drop(restored);
    drop(tp);

    // CRIU's, restored by us.
    let mut tp = TestProcess::start(scratch.path(), "packetring", &[]);
    let images = scratch.path().join("criu");
    std::fs::create_dir(&images).unwrap();
    let out = clean_command(criu.to_str().unwrap())
        .args(["dump", "-v4", "-o", "dump.log", "-t"])
        .arg(tp.pid.to_string())
        .arg("-D")
        .arg(&images)
        .output()
        .unwrap();
    let log = std::fs::read_to_string(images.join("dump.log")).unwrap_or_default();
    assert!(out.status.success(), "CRIU dumps it: {log}");
    let _ = tp.child.wait();
    let restored = restore(&RestoreOptions::new(&images))
        .unwrap_or_else(|e| panic!("restore of CRIU's images: {e}"));
    let _reaper = Reaper(restored.pid.0);
    assert_eq!(check_restored(restored.pid.0, &tp.ready_file), "pass");
}
