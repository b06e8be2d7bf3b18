//! Namespaces and seccomp filters of dumped trees, against real processes: the UTS and
//! IPC namespace images hold what was set inside the namespace, seccomp chains are read
//! in CRIU's layout, Debian's crit reads all of it, and trees in namespaces the dump
//! cannot save are refused with the namespace named.

use std::path::Path;
use std::time::Duration;

use criu_core::dump::ids::{ns_inode, IdAllocator};
use criu_core::dump::ns::{check_namespaces, write_namespace_images, NsError};
use criu_core::dump::seccomp::{SeccompTable, ThreadSeccomp};
use criu_core::freeze::FrozenTree;
use criu_core::sys::Pid;
use criu_images::{pb, ImageKind, ImageReader, ImageWriter};
use criu_rs_suite::{crit_decode, debian_crit, wait_for_file, wait_until, ScratchDir, TestProcess};

const WAIT: Duration = Duration::from_secs(20);

fn me() -> Pid {
    Pid(std::process::id() as i32)
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// Waits until `pid` runs `sleep` (its setup is done and it has exec'ed).
fn wait_for_sleep(pid: i32) {
    wait_until(&format!("process {pid} to run sleep"), WAIT, || {
        comm(pid) == "sleep"
    });
}

/// Waits for the one child of `pid` to run `sleep`; returns it.
fn sleeping_child(pid: i32) -> i32 {
    wait_until(&format!("a child of {pid}"), WAIT, || {
        children(pid).len() == 1
    });
    let child = children(pid)[0];
    wait_for_sleep(child);
    child
}

/// The namespaces of the dumper and of one task, numbered as the dump does.
struct Numbered {
    /// The dumper's ids (the inventory's `root_ids`).
    host: pb::TaskKobjIdsEntry,
    /// The task's ids.
    task: pb::TaskKobjIdsEntry,
    /// (kind, inode, id, a task living in it), for `write_namespace_images`.
    list: Vec<(&'static str, u64, u32, Pid)>,
}

/// Numbers the namespaces as the dump does: the dumper first, then `pid`.
fn number_namespaces(pid: i32) -> Numbered {
    let mut ids = IdAllocator::default();
    let host = ids.ids(me()).unwrap();
    let task = ids.ids(Pid(pid)).unwrap();
    let list = ids
        .ns_inodes
        .iter()
        .map(|&(kind, inode, id)| {
            let owner = if ns_inode(me(), kind).ok() == Some(inode) {
                me()
            } else {
                Pid(pid)
            };
            (kind, inode, id, owner)
        })
        .collect();
    Numbered { host, task, list }
}

/// Every entry of type `$ty` in the image at `$path`.
macro_rules! read_all {
    ($path:expr, $ty:ty) => {{
        let mut r = ImageReader::open($path).unwrap_or_else(|e| panic!("{e}"));
        let mut out: Vec<$ty> = Vec::new();
        while let Some(e) = r.next_entry::<$ty>().unwrap() {
            out.push(e);
        }
        out
    }};
}

fn image_path(dir: &Path, kind: &str, id: u32) -> std::path::PathBuf {
    dir.join(ImageKind::by_name(kind).unwrap().file_name(id))
}

#[test]
fn saves_uts_and_ipc_namespaces() {
    let scratch = ScratchDir::new("ns-uts-ipc");
    let dir = scratch.path();
    // unshare(1) and sh exec in place: the pid we get is the sleep, inside both
    // namespaces, with the values set from inside.
    let setup = "hostname criu-rs-test && domainname criu-rs-dom \
                 && echo 4321 > /proc/sys/kernel/msgmax \
                 && echo '251 32001 33 129' > /proc/sys/kernel/sem \
                 && echo 77 > /proc/sys/kernel/msg_next_id \
                 && echo 1 > /proc/sys/kernel/shm_rmid_forced \
                 && echo 20 > /proc/sys/fs/mqueue/msg_max \
                 && exec sleep 100";
    let tp = TestProcess::spawn(
        &["unshare", "-u", "-i", "sh", "-c", setup],
        &dir.join("ns.out"),
    );
    wait_for_sleep(tp.pid);
    let target = Pid(tp.pid);
    check_namespaces(&[target]).expect("own UTS and IPC namespaces are supported");

    let Numbered { host, task, list } = number_namespaces(tp.pid);
    let uts_id = task.uts_ns_id.unwrap();
    let ipc_id = task.ipc_ns_id.unwrap();
    assert_ne!(Some(uts_id), host.uts_ns_id);
    assert_ne!(Some(ipc_id), host.ipc_ns_id);
    write_namespace_images(dir, &list, &host).unwrap_or_else(|e| panic!("{e}"));

    // Only the tree's own namespaces are saved, not the dumper's.
    for kind in ["UTSNS", "IPC_VAR"] {
        let host_id = if kind == "UTSNS" {
            host.uts_ns_id
        } else {
            host.ipc_ns_id
        };
        assert!(!image_path(dir, kind, host_id.unwrap()).exists());
    }

    let uts = read_all!(&image_path(dir, "UTSNS", uts_id), pb::UtsnsEntry);
    assert_eq!(
        uts,
        vec![pb::UtsnsEntry {
            nodename: "criu-rs-test".into(),
            domainname: "criu-rs-dom".into(),
        }]
    );
    let var = read_all!(&image_path(dir, "IPC_VAR", ipc_id), pb::IpcVarEntry);
    assert_eq!(var.len(), 1);
    let var = &var[0];
    assert_eq!(var.msg_ctlmax, 4321);
    assert_eq!(var.sem_ctls, vec![251, 32001, 33, 129]);
    assert_eq!(var.msg_next_id, Some(77));
    assert_eq!(var.sem_next_id, None, "-1 (never set) is left out");
    assert_eq!(var.shm_rmid_forced, 1);
    assert_eq!(var.mq_msg_max, 20);
    // Untouched values are the namespace's defaults, not ours where we changed them.
    let host_msgmni: u32 = std::fs::read_to_string("/proc/sys/kernel/msgmni")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(var.msg_ctlmni > 0 && host_msgmni > 0);
    // (IPCNS_SHM is written with the tree frozen, by dump::sysvshm: see
    // saves_sysv_shared_memory_of_its_namespace.)
    for kind in ["IPCNS_MSG", "IPCNS_SEM"] {
        let path = image_path(dir, kind, ipc_id);
        let mut r = ImageReader::open(&path).unwrap();
        assert!(
            r.next_payload().unwrap().is_none(),
            "{} is not empty",
            path.display()
        );
    }

    // The dumper was never moved.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        "criu-rs-test"
    );

    let Some(crit) = debian_crit() else { return };
    let json = crit_decode(&crit, &image_path(dir, "UTSNS", uts_id)).unwrap();
    assert_eq!(json["entries"][0]["nodename"], "criu-rs-test");
    assert_eq!(json["entries"][0]["domainname"], "criu-rs-dom");
    let json = crit_decode(&crit, &image_path(dir, "IPC_VAR", ipc_id)).unwrap();
    assert_eq!(json["entries"][0]["msg_ctlmax"], 4321);
    assert_eq!(
        json["entries"][0]["sem_ctls"],
        serde_json::json!([251, 32001, 33, 129])
    );
    assert_eq!(json["entries"][0]["msg_next_id"], 77);
    for kind in ["IPCNS_MSG", "IPCNS_SEM"] {
        let json = crit_decode(&crit, &image_path(dir, kind, ipc_id)).unwrap();
        assert_eq!(json["entries"], serde_json::json!([]));
    }
}

/// Creates a message queue holding two messages and a semaphore set of three, then
/// sleeps.
const SYSV_PROGRAM: &str = r#"
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
class Msg(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("text", ctypes.c_char * 16)]
q = libc.msgget(0x1234, 0o1600)
if q < 0:
    sys.exit("msgget: errno %d" % ctypes.get_errno())
for mtype, text in ((5, b"hello"), (7, b"criu-rs!!")):
    m = Msg(mtype, text)
    if libc.msgsnd(q, ctypes.byref(m), len(text), 0) != 0:
        sys.exit("msgsnd: errno %d" % ctypes.get_errno())
s = libc.semget(0x4321, 3, 0o1640)
if s < 0:
    sys.exit("semget: errno %d" % ctypes.get_errno())
for num, value in enumerate((3, 0, 42)):
    if libc.semctl(s, num, 16, value) != 0:
        sys.exit("semctl SETVAL: errno %d" % ctypes.get_errno())
print("ready", flush=True)
time.sleep(100)
"#;

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

#[test]
fn saves_sysv_message_queues_and_semaphores() {
    let scratch = ScratchDir::new("ns-sysv");
    let dir = scratch.path();
    let out = dir.join("sysv.out");
    let tp = TestProcess::spawn(&["unshare", "-i", python(), "-c", SYSV_PROGRAM], &out);
    let said = wait_for_file(&out, WAIT).unwrap_or_default();
    assert_eq!(said, "ready", "the SysV program failed: {said}");
    let Numbered { host, task, list } = number_namespaces(tp.pid);
    write_namespace_images(dir, &list, &host).unwrap_or_else(|e| panic!("{e}"));
    let ipc_id = task.ipc_ns_id.unwrap();

    let mut r = ImageReader::open(image_path(dir, "IPCNS_MSG", ipc_id)).unwrap();
    let queue = r.next_entry::<pb::IpcMsgEntry>().unwrap().expect("a queue");
    assert_eq!(queue.desc.key, 0x1234);
    assert_eq!(queue.desc.mode, 0o600);
    assert_eq!(queue.qnum, 2);
    assert!(queue.qbytes > 0);
    for (mtype, text) in [(5u64, &b"hello"[..]), (7, b"criu-rs!!")] {
        let m = r.next_entry::<pb::IpcMsg>().unwrap().expect("a message");
        assert_eq!((m.mtype, m.msize as usize), (mtype, text.len()));
        let padded = r
            .read_extra(text.len().next_multiple_of(8) as u64, "text")
            .unwrap();
        assert_eq!(&padded[..text.len()], text);
        assert!(padded[text.len()..].iter().all(|&b| b == 0));
    }
    assert!(r.next_payload().unwrap().is_none(), "one queue only");

    let mut r = ImageReader::open(image_path(dir, "IPCNS_SEM", ipc_id)).unwrap();
    let set = r.next_entry::<pb::IpcSemEntry>().unwrap().expect("a set");
    assert_eq!((set.desc.key, set.desc.mode, set.nsems), (0x4321, 0o640, 3));
    let values = r.read_extra(8, "values").unwrap();
    assert_eq!(values, [3, 0, 0, 0, 42, 0, 0, 0]);
    assert!(r.next_payload().unwrap().is_none(), "one set only");

    // The messages were copied, not received: a second pass saves the same.
    let again = dir.join("again");
    std::fs::create_dir(&again).unwrap();
    write_namespace_images(&again, &list, &host).unwrap_or_else(|e| panic!("{e}"));
    for kind in ["IPCNS_MSG", "IPCNS_SEM"] {
        assert_eq!(
            std::fs::read(image_path(dir, kind, ipc_id)).unwrap(),
            std::fs::read(image_path(&again, kind, ipc_id)).unwrap(),
            "{kind}"
        );
    }

    let Some(crit) = debian_crit() else { return };
    let json = crit_decode(&crit, &image_path(dir, "IPCNS_MSG", ipc_id)).unwrap();
    assert_eq!(json["entries"][0]["qnum"], 2, "{json}");
    assert_eq!(json["entries"][0]["desc"]["key"], 0x1234, "{json}");
    let json = crit_decode(&crit, &image_path(dir, "IPCNS_SEM", ipc_id)).unwrap();
    assert_eq!(json["entries"][0]["nsems"], 3, "{json}");
    assert_eq!(
        json["entries"][0]["extra"],
        serde_json::json!([3, 0, 42]),
        "{json}"
    );
}

/// A segment of the tree's own IPC namespace that nobody attached is saved (as CRIU
/// does), with its key, mode and size; the tree, left running, keeps it.
#[test]
fn saves_sysv_shared_memory_of_its_namespace() {
    use criu_core::dump::{dump, DumpOptions};
    let scratch = ScratchDir::new("ns-shm");
    let dir = scratch.path();
    let tp = TestProcess::spawn(
        &[
            "unshare",
            "-i",
            "sh",
            "-c",
            "ipcmk -M 4096 -p 0640 >/dev/null && exec sleep 100",
        ],
        &dir.join("ns.out"),
    );
    wait_for_sleep(tp.pid);
    let Numbered { task, .. } = number_namespaces(tp.pid);
    let images = dir.join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions {
        leave_running: true,
        ..DumpOptions::new(Pid(tp.pid), &images)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // The dump numbers namespaces as number_namespaces does: the dumper's first.
    let ipc_id = task.ipc_ns_id.unwrap();
    let path = image_path(&images, "IPCNS_SHM", ipc_id);
    let mut r = ImageReader::open(&path).unwrap();
    let seg = r
        .next_entry::<pb::IpcShmEntry>()
        .unwrap()
        .expect("a segment");
    assert_eq!((seg.size, seg.desc.mode, seg.desc.id), (4096, 0o640, 0));
    assert_ne!(seg.desc.key, 0);
    assert_eq!(seg.in_pagemaps, Some(false), "contents inline");
    let zeros = r.read_extra(4096, "contents").unwrap();
    assert!(zeros.iter().all(|&b| b == 0));
    assert!(r.next_payload().unwrap().is_none(), "one segment only");
    assert_eq!(comm(tp.pid), "sleep", "left running");
    let Some(crit) = debian_crit() else { return };
    let json = crit_decode(&crit, &path).unwrap();
    assert_eq!(json["entries"][0]["size"], 4096, "{json}");
    assert_eq!(json["entries"][0]["desc"]["mode"], 0o640, "{json}");
}

/// Instructions as (code, jt, jf, k), in the kernel's `struct sock_filter` layout.
fn sock_filter(insns: &[(u16, u8, u8, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(code, jt, jf, k) in insns {
        out.extend_from_slice(&code.to_le_bytes());
        out.extend([jt, jf]);
        out.extend_from_slice(&k.to_le_bytes());
    }
    out
}

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

/// Installs two allow-all filters (the second with SECCOMP_FILTER_FLAG_LOG), forks a child
/// that inherits them, starts a thread, then sleeps.
const SECCOMP_PROGRAM: &str = r#"
import ctypes, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
class F(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]
class P(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(F))]
def install(insns, flags):
    arr = (F * len(insns))(*[F(*i) for i in insns])
    prog = P(len(insns), arr)
    if libc.syscall(317, 1, flags, ctypes.byref(prog)) != 0:
        sys.exit("seccomp failed: errno %d" % ctypes.get_errno())
if libc.prctl(38, 1, 0, 0, 0) != 0:
    sys.exit("PR_SET_NO_NEW_PRIVS failed")
install([(0x20, 0, 0, 4), (0x06, 0, 0, 0x7fff0000)], 0)
install([(0x06, 0, 0, 0x7fff0000)], 2)
if os.fork() == 0:
    time.sleep(100)
    os._exit(0)
threading.Thread(target=time.sleep, args=(100,), daemon=True).start()
print("ready", flush=True)
time.sleep(100)
"#;

#[test]
fn reads_seccomp_chains() {
    let scratch = ScratchDir::new("seccomp");
    let dir = scratch.path();
    let out = dir.join("seccomp.out");
    let tp = TestProcess::spawn(&[python(), "-c", SECCOMP_PROGRAM], &out);
    let said = wait_for_file(&out, WAIT).unwrap_or_default();
    assert_eq!(said, "ready", "the seccomp program failed: {said}");
    wait_until("the program's thread", WAIT, || {
        std::fs::read_dir(format!("/proc/{}/task", tp.pid))
            .map(|d| d.count() == 2)
            .unwrap_or(false)
    });

    // Seized on this thread, so the ptrace requests below come from the tracer.
    let tree = FrozenTree::freeze(Pid(tp.pid), WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tree.processes.len(), 2, "the program and its child");
    let root = &tree.processes[0];
    let child = &tree.processes[1];
    assert_eq!(root.threads.len(), 2);

    let oldest = sock_filter(&[(0x20, 0, 0, 4), (0x06, 0, 0, SECCOMP_RET_ALLOW)]);
    let newest = sock_filter(&[(0x06, 0, 0, SECCOMP_RET_ALLOW)]);

    // Thread by thread: one chain of two, stored once for all four tasks, in CRIU's
    // layout: newest first, `prev` pointing to the filter installed after, each thread
    // pointing at the filter it installed first.
    let mut per_thread = SeccompTable::new();
    for &tid in root.threads.iter().chain(&child.threads) {
        assert_eq!(per_thread.add_thread(tid).unwrap(), Some(1), "thread {tid}");
    }
    assert_eq!(
        per_thread.entry(),
        pb::SeccompEntry {
            seccomp_filters: vec![
                pb::SeccompFilter {
                    filter: newest.clone(),
                    prev: None,
                    flags: Some(2), // SECCOMP_FILTER_FLAG_LOG, from the kernel's metadata
                },
                pb::SeccompFilter {
                    filter: oldest.clone(),
                    prev: Some(0),
                    flags: Some(0),
                },
            ],
        }
    );

    // Process by process, as CRIU: a chain shared by all threads is saved for the leader
    // with TSYNC, the other threads have seccomp off; both processes share it.
    let mut table = SeccompTable::new();
    let root_fields = table.add_process(&root.threads).unwrap();
    let child_fields = table.add_process(&child.threads).unwrap();
    let leader = ThreadSeccomp {
        seccomp_mode: Some(pb::SeccompMode::Filter as i32),
        seccomp_filter: Some(1),
    };
    assert_eq!(root_fields, vec![leader, ThreadSeccomp::default()]);
    assert_eq!(child_fields, vec![leader]);
    let entry = table.entry();
    let flags: Vec<_> = entry.seccomp_filters.iter().map(|f| f.flags).collect();
    assert_eq!(flags, vec![Some(3), Some(1)], "TSYNC|LOG, and TSYNC");
    drop(tree);

    // The entry round-trips through an image.
    let kind = ImageKind::by_name("SECCOMP").unwrap();
    let path = dir.join(kind.file_name(""));
    let mut w = ImageWriter::create(&path, kind).unwrap();
    w.write_entry(&entry).unwrap();
    w.finish().unwrap();
    assert_eq!(read_all!(&path, pb::SeccompEntry), vec![entry]);

    let Some(crit) = debian_crit() else { return };
    let json = crit_decode(&crit, &path).unwrap();
    let filters = &json["entries"][0]["seccomp_filters"];
    assert_eq!(filters.as_array().map(Vec::len), Some(2), "{json}");
    assert!(filters[0].get("prev").is_none(), "{json}");
    assert_eq!(filters[1]["prev"], 0, "{json}");
    assert_eq!(filters[0]["flags"], 3, "{json}");
    assert_eq!(filters[1]["flags"], 1, "{json}");
    assert!(filters[0]["filter"].is_string(), "{json}");
}

#[test]
fn refuses_a_net_namespace_with_a_link_it_cannot_make() {
    let scratch = ScratchDir::new("ns-net");
    let tp = TestProcess::spawn(
        &[
            "unshare",
            "-n",
            "sh",
            "-c",
            "ip link add tpvx0 type vxlan id 5 dstport 4789 && exec sleep 100",
        ],
        &scratch.path().join("out"),
    );
    wait_for_sleep(tp.pid);
    // The namespace itself can be saved; its vxlan link cannot be made again.
    check_namespaces(&[Pid(tp.pid)]).unwrap();
    let err = criu_core::netns::dump::check(Pid(tp.pid)).unwrap_err();
    assert!(
        matches!(err, criu_core::netns::NetnsError::Unsupported(_)),
        "{err}"
    );
    assert!(err.to_string().contains("tpvx0"), "{err}");
    assert!(err.to_string().contains("vxlan"), "{err}");
}

#[test]
fn refuses_a_child_in_its_own_pid_namespace() {
    let scratch = ScratchDir::new("ns-pid");
    // unshare(1) stays in our pid namespace and forks the sleep into the new one.
    let tp = TestProcess::spawn(
        &["unshare", "-p", "-f", "sleep", "100"],
        &scratch.path().join("out"),
    );
    let child = sleeping_child(tp.pid);
    let err = check_namespaces(&[Pid(tp.pid), Pid(child)]).unwrap_err();
    assert!(
        matches!(err, NsError::Unsupported { kind: "pid", pid, .. } if pid == Pid(child)),
        "{err}"
    );
    assert!(err.to_string().contains("pid namespace"), "{err}");
}

#[test]
fn refuses_a_nested_uts_namespace() {
    let scratch = ScratchDir::new("ns-nested");
    let tp = TestProcess::spawn(
        &["sh", "-c", "unshare -u sleep 100 & wait"],
        &scratch.path().join("out"),
    );
    let child = sleeping_child(tp.pid);
    let err = check_namespaces(&[Pid(tp.pid), Pid(child)]).unwrap_err();
    assert!(
        matches!(err, NsError::Unsupported { kind: "uts", pid, .. } if pid == Pid(child)),
        "{err}"
    );
    assert!(err.to_string().contains("nested"), "{err}");
}

/// The whole dump of a tree in its own UTS and IPC namespaces and of a tree with seccomp
/// filters: the images say so, crit reads them, and the trees run on.
#[test]
fn full_dumps_with_namespaces_and_seccomp() {
    use criu_core::dump::{dump, DumpOptions};
    let scratch = ScratchDir::new("ns-full-dump");
    let dir = scratch.path();
    let ns = TestProcess::spawn(
        &[
            "unshare",
            "-u",
            "-i",
            "sh",
            "-c",
            "hostname criu-rs-full && exec sleep 100",
        ],
        &dir.join("ns.out"),
    );
    wait_for_sleep(ns.pid);
    let images = dir.join("ns-images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions {
        leave_running: true,
        ..DumpOptions::new(Pid(ns.pid), &images)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let uts: Vec<_> = std::fs::read_dir(&images)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("utsns-")
        })
        .collect();
    assert_eq!(uts.len(), 1, "one utsns image");
    let mut r = criu_images::ImageReader::open(&uts[0]).unwrap();
    let e: criu_images::pb::UtsnsEntry = r.next_entry().unwrap().unwrap();
    assert_eq!(e.nodename, "criu-rs-full");
    if let Some(crit) = debian_crit() {
        for e in std::fs::read_dir(&images).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with("pages-") && !name.ends_with(".log") {
                crit_decode(&crit, &p).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }

    let out = dir.join("seccomp.out");
    let sc = TestProcess::spawn(&[python(), "-c", SECCOMP_PROGRAM], &out);
    assert_eq!(wait_for_file(&out, WAIT).unwrap_or_default(), "ready");
    let images = dir.join("seccomp-images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions {
        leave_running: true,
        ..DumpOptions::new(Pid(sc.pid), &images)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut r = criu_images::ImageReader::open(images.join("seccomp.img")).unwrap();
    let e: criu_images::pb::SeccompEntry = r.next_entry().unwrap().unwrap();
    assert_eq!(
        e.seccomp_filters.len(),
        2,
        "the chain of two filters, stored once"
    );
    let mut r =
        criu_images::ImageReader::open(images.join(format!("core-{}.img", sc.pid))).unwrap();
    let core: criu_images::pb::CoreEntry = r.next_entry().unwrap().unwrap();
    assert_eq!(core.thread_core.unwrap().seccomp_filter, Some(1));
    let status = std::fs::read_to_string(format!("/proc/{}/status", sc.pid)).unwrap();
    assert!(
        status.contains("TracerPid:\t0"),
        "still traced after the dump"
    );
}
