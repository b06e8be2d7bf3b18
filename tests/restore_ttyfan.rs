//! Consoles, virtual terminals and fanotify: tp-ttyfan holds a console and a virtual
//! terminal opened through device nodes it made itself (mknod 5:1 and 4:5), and a
//! fanotify group with an inode mark and a mount mark (with an ignored mask) on a tmpfs
//! mounted for the test. After a dump (which kills it) and a restore, it finds both
//! terminals with their device numbers and flags, the group with the same marks as its
//! fdinfo shows them, and a write of the marked file brings its events. Debian's crit
//! decodes the images: the terminals as CRIU's CONSOLE and VT terminals (CRIU's ids),
//! the group as a FANOTIFY file with an INODE and a MOUNT mark. The VT is the program's
//! controlling terminal (it leads its session), and is again after the restore.

use std::path::Path;
use std::time::Duration;

use serde_json::Value as Json;

use criu_core::dump::{dump, DumpOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{
    check_restored, crit_decode, criu_4_or_skip, criu_restore, debian_crit, dump_kill_restore,
    wait_until, ScratchDir, TestProcess, Tmpfs,
};

/// The VT (4:5) can be the controlling terminal of one session at a time: the tests
/// whose programs take it run one after the other.
static VT_TAKEN: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn terminals_and_fanotify_marks_come_back() {
    let _vt = VT_TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = ScratchDir::new("ttyfan");
    let mnt = Tmpfs::mount(&scratch.path().join("mnt"));
    let mount = mnt.0.to_str().unwrap().to_owned();
    let mut tp = TestProcess::start(scratch.path(), "ttyfan", &["--mount", &mount]);
    let images = scratch.path().join("images");
    let reaper = dump_kill_restore(&mut tp, &images);
    crit_sees_criu_terminals_and_marks(&images, &mnt.0, tp.pid);
    assert_eq!(check_restored(reaper.0, &tp.ready_file), "pass");
}

/// CRIU 4.2 restores our dump of the same state, and the program passes its check: CRIU
/// reads our terminal and fanotify entries as its own.
#[test]
fn criu_4_2_restores_our_dump_of_terminals_and_marks() {
    let Some(criu) = criu_4_or_skip("the CRIU restore of tp-ttyfan") else {
        return;
    };
    let _vt = VT_TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = ScratchDir::new("ttyfan-criu");
    let mnt = Tmpfs::mount(&scratch.path().join("mnt"));
    let mount = mnt.0.to_str().unwrap().to_owned();
    let mut tp = TestProcess::start(scratch.path(), "ttyfan", &["--mount", &mount]);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    let pid = tp.pid;
    // CRIU needs the pid free (not even a zombie's group or session).
    wait_until("the dumped program to go", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    let _restored = criu_restore(&criu, &images, &[], vec![pid]);
    assert_eq!(tp.check(), "pass", "tp-ttyfan restored by CRIU");
}

/// The terminal and fanotify entries of a dump, as Debian's crit decodes them.
fn crit_sees_criu_terminals_and_marks(images: &Path, mount: &Path, pid: i32) {
    let Some(crit) = debian_crit() else {
        return;
    };
    let infos = crit_decode(&crit, &images.join("tty-info.img")).unwrap();
    let infos = infos["entries"].as_array().unwrap();
    let of_type = |ty: &str| -> &Json {
        infos
            .iter()
            .find(|i| i["type"] == ty)
            .unwrap_or_else(|| panic!("no {ty} terminal in {infos:?}"))
    };
    // CRIU's ids: its CONSOLE_INDEX and VT_INDEX, shifted.
    assert_eq!(of_type("CONSOLE")["id"], 2004);
    assert_eq!(of_type("VT")["id"], 2008);
    // The VT is the controlling terminal of the program's session, which it leads.
    assert_eq!(of_type("VT")["sid"], pid);
    assert_eq!(of_type("CONSOLE")["sid"], 0);
    for ty in ["CONSOLE", "VT"] {
        let info = of_type(ty);
        assert!(info.get("pty").is_none(), "{info}");
        assert!(info["termios"].is_object(), "{ty}: settings saved: {info}");
        assert!(
            info["winsize"].is_object(),
            "{ty}: window size saved: {info}"
        );
    }
    let files = crit_decode(&crit, &images.join("files.img")).unwrap();
    let entries = files["entries"].as_array().unwrap();
    let ttys: Vec<&Json> = entries.iter().filter(|e| e["type"] == "TTY").collect();
    for id in [2004, 2008] {
        let tty = ttys
            .iter()
            .find(|e| e["tty"]["tty_info_id"] == id)
            .unwrap_or_else(|| panic!("no file of terminal {id}: {ttys:?}"));
        let regf = &tty["tty"]["regf_id"];
        let reg = entries
            .iter()
            .find(|e| e["type"] == "REG" && e["id"] == *regf)
            .unwrap_or_else(|| panic!("no path entry {regf}"));
        let name = reg["reg"]["name"].as_str().unwrap();
        assert!(
            name.ends_with("/console") || name.ends_with("/vt"),
            "{name}"
        );
    }
    let ffy = entries
        .iter()
        .find(|e| e["type"] == "FANOTIFY")
        .unwrap_or_else(|| panic!("no FANOTIFY file in {entries:?}"))["ffy"]
        .clone();
    let marks = ffy["mark"].as_array().unwrap();
    assert_eq!(marks.len(), 2, "{ffy}");
    let inode = marks.iter().find(|m| m["type"] == "INODE").unwrap();
    let marked = mount.join("marked");
    assert_eq!(
        inode["ie"]["f_handle"]["path"],
        marked.to_str().unwrap(),
        "{inode}"
    );
    let mnt = marks.iter().find(|m| m["type"] == "MOUNT").unwrap();
    assert_eq!(mnt["me"]["path"], mount.to_str().unwrap(), "{mnt}");
    // FAN_ACCESS ignored, FAN_MARK_IGNORED_SURV_MODIFY kept.
    assert_eq!(mnt["ignored_mask"], 1, "{mnt}");
    assert_eq!(mnt["mflags"], 0x40, "{mnt}");
}
