//! tp-ghosts: deleted objects of every kind a process can hold. The check proves each is
//! still the same kind of object, still deleted, with the same data, target or device.
//!
//! Under `--dir DIR` (default: the ready file's directory) it makes `ghosts/` and in it,
//! each then removed while held:
//! - `cwd.d`: its working directory (also held by a descriptor);
//! - `dir.d/sub`: a directory held by a descriptor, its parent removed too;
//! - `fifo`: a FIFO held at both ends, [`FIFO_DATA`] queued in it;
//! - `null`: a copy of `/dev/null` made with mknod (mode [`NODE_MODE`]), open read-write;
//! - `link`: a symlink to [`LINK_TARGET`], held by `O_PATH | O_NOFOLLOW`;
//! - `sparse`: an [`SPARSE_SIZE`] file with two small runs of data, the rest holes, at
//!   offset [`SPARSE_POS`];
//! - `linked`: a file with a second name `linked.other` (which stays), open read-write;
//! - `mapped.tmp`: a file with a second name `mapped.name` (which stays), mapped shared
//!   and held by nothing else, as glibc's sem_open leaves a named semaphore in /dev/shm.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_testprogs::{c_path, check_stream, cvt, fill_stream, Mapping, Program, Report};

const FIFO_DATA: &[u8] = b"queued in a deleted fifo";
const NODE_MODE: u32 = 0o620;
const LINK_TARGET: &[u8] = b"../somewhere/else";
const SPARSE_SIZE: u64 = 8 << 20;
/// The two runs of data of the sparse file: (offset, length).
const SPARSE_RUNS: [(u64, usize); 2] = [(1 << 20, 4096), (6 << 20, 8192)];
const SPARSE_POS: u64 = 12345;
const LINKED_DATA: &[u8] = b"one inode, two names, one removed";
const MAPPED_DATA: &[u8] = b"mapped by a name since removed";
const MAPPED_LEN: usize = 4096;

struct State {
    dir: PathBuf,
    cwd_link: Vec<u8>,
    cwd_fd: File,
    dir_fd: File,
    fifo_r: File,
    fifo_w: File,
    node: File,
    link: File,
    sparse: File,
    linked: File,
    /// The shared mapping of `mapped.tmp`.
    mapped: Mapping,
}

fn main() {
    let mut program = Program::start(
        "tp-ghosts",
        &[(
            "--dir DIR",
            "where ghosts/ goes (default: the ready file's directory)",
        )],
    );
    let base = program
        .opt::<String>("--dir")
        .map_or_else(|| program.ready_dir(), PathBuf::from);
    let base = program.must(std::fs::canonicalize(&base), "resolve --dir");
    let state = program.must(set_up(&base.join("ghosts")), "make the deleted objects");
    program.ready();
    program.work_until_check(Duration::from_millis(100), || {});
    let report = check(&state);
    program.finish(&report);
}

fn open_raw(path: &Path, flags: i32) -> io::Result<File> {
    let c = c_path(path)?;
    // SAFETY: open(2) with a NUL-terminated path that outlives the call.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn set_up(dir: &Path) -> io::Result<State> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir(dir)?;
    let builder = || {
        let mut b = std::fs::DirBuilder::new();
        b.mode(0o750);
        b
    };

    let cwd = dir.join("cwd.d");
    builder().create(&cwd)?;
    let cwd_fd = open_raw(&cwd, libc::O_RDONLY | libc::O_DIRECTORY)?;
    std::env::set_current_dir(&cwd)?;
    std::fs::remove_dir(&cwd)?;
    let cwd_link = link_bytes("cwd")?;

    builder().create(dir.join("dir.d"))?;
    builder().create(dir.join("dir.d/sub"))?;
    let dir_fd = open_raw(&dir.join("dir.d/sub"), libc::O_RDONLY | libc::O_DIRECTORY)?;
    std::fs::remove_dir(dir.join("dir.d/sub"))?;
    std::fs::remove_dir(dir.join("dir.d"))?;

    let fifo = dir.join("fifo");
    // SAFETY: mkfifo(3) with a NUL-terminated path.
    cvt(unsafe { libc::mkfifo(c_path(&fifo)?.as_ptr(), 0o640) })?;
    let fifo_r = open_raw(&fifo, libc::O_RDONLY | libc::O_NONBLOCK)?;
    let mut fifo_w = open_raw(&fifo, libc::O_WRONLY)?;
    fifo_w.write_all(FIFO_DATA)?;
    std::fs::remove_file(&fifo)?;

    let null = dir.join("null");
    // SAFETY: mknod(2) with a NUL-terminated path.
    cvt(unsafe {
        libc::mknod(
            c_path(&null)?.as_ptr(),
            libc::S_IFCHR | NODE_MODE,
            libc::makedev(1, 3),
        )
    })?;
    // The umask may have taken bits away.
    std::fs::set_permissions(
        &null,
        std::os::unix::fs::PermissionsExt::from_mode(NODE_MODE),
    )?;
    let node = open_raw(&null, libc::O_RDWR)?;
    std::fs::remove_file(&null)?;

    let link = dir.join("link");
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(LINK_TARGET), &link)?;
    let link_fd = open_raw(&link, libc::O_PATH | libc::O_NOFOLLOW)?;
    std::fs::remove_file(&link)?;

    let sparse_path = dir.join("sparse");
    let mut sparse = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&sparse_path)?;
    for (i, (off, len)) in SPARSE_RUNS.iter().enumerate() {
        let mut buf = vec![0u8; *len];
        fill_stream(&mut buf, i as u64 + 1, *off);
        sparse.write_all_at(&buf, *off)?;
    }
    sparse.set_len(SPARSE_SIZE)?;
    sparse.seek(SeekFrom::Start(SPARSE_POS))?;
    std::fs::remove_file(&sparse_path)?;

    let linked_path = dir.join("linked");
    let linked = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&linked_path)?;
    linked.write_all_at(LINKED_DATA, 0)?;
    std::fs::hard_link(&linked_path, dir.join("linked.other"))?;
    std::fs::remove_file(&linked_path)?;

    let mapped_path = dir.join("mapped.tmp");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&mapped_path)?;
    file.write_all_at(MAPPED_DATA, 0)?;
    file.set_len(MAPPED_LEN as u64)?;
    std::fs::hard_link(&mapped_path, dir.join("mapped.name"))?;
    let mapped = Mapping::file_shared(file.as_raw_fd(), MAPPED_LEN)?;
    drop(file);
    std::fs::remove_file(&mapped_path)?;

    Ok(State {
        dir: dir.to_owned(),
        cwd_link,
        cwd_fd,
        dir_fd,
        fifo_r,
        fifo_w,
        node,
        link: link_fd,
        sparse,
        linked,
        mapped,
    })
}

/// The link of `/proc/self/NAME` (`cwd`, `fd/3`...), as bytes.
fn link_bytes(name: &str) -> io::Result<Vec<u8>> {
    Ok(std::fs::read_link(format!("/proc/self/{name}"))?
        .into_os_string()
        .into_encoded_bytes())
}

fn fd_link(f: &File) -> io::Result<Vec<u8>> {
    link_bytes(&format!("fd/{}", f.as_raw_fd()))
}

/// `PATH (deleted)` for `name` in the ghosts directory.
fn deleted(dir: &Path, name: &str) -> Vec<u8> {
    let mut v = dir.join(name).into_os_string().into_encoded_bytes();
    v.extend_from_slice(b" (deleted)");
    v
}

fn check(s: &State) -> Report {
    let mut report = Report::new();
    check_dirs(s, &mut report);
    check_fifo(s, &mut report);
    check_node(s, &mut report);
    check_link(s, &mut report);
    check_sparse(s, &mut report);
    check_linked(s, &mut report);
    check_mapped(s, &mut report);
    report
}

/// The mapping still holds its data, and is still the file named `mapped.name`: what
/// is written through one is read through the other.
fn check_mapped(s: &State, report: &mut Report) {
    // SAFETY: the mapping of MAPPED_LEN bytes made at set-up, mapped while `s` lives;
    // only this thread touches it.
    let mapped =
        unsafe { std::slice::from_raw_parts_mut(s.mapped.addr().cast::<u8>(), MAPPED_LEN) };
    report.check_eq("mapped data", &mapped[..MAPPED_DATA.len()], MAPPED_DATA);
    let at = MAPPED_DATA.len() + 100;
    mapped[at..at + 3].copy_from_slice(b"ONE");
    let through = report.ok_or_fail(std::fs::read(s.dir.join("mapped.name")), "read mapped.name");
    if let Some(through) = through {
        report.check(through.get(at..at + 3) == Some(b"ONE".as_slice()), || {
            "a write through the mapping does not show in mapped.name".into()
        });
    }
    mapped[at..at + 3].fill(0);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    report.check(
        !maps.contains("mapped.tmp") || maps.contains("mapped.tmp (deleted)"),
        || "mapped.tmp is mapped by a name that exists".into(),
    );
}

fn check_dirs(s: &State, report: &mut Report) {
    if let Some(link) = report.ok_or_fail(link_bytes("cwd"), "read the cwd link") {
        report.check_eq("cwd link", link, s.cwd_link.clone());
    }
    let cwd = report.ok_or_fail(std::fs::metadata("/proc/self/cwd"), "stat the cwd");
    let held = report.ok_or_fail(s.cwd_fd.metadata(), "stat the cwd's descriptor");
    if let (Some(cwd), Some(held)) = (cwd, held) {
        report.check(cwd.is_dir() && cwd.nlink() == 0, || {
            format!("cwd: not a deleted directory (nlink {})", cwd.nlink())
        });
        report.check_eq("cwd's descriptor is the cwd", held.ino(), cwd.ino());
        report.check_eq("cwd's mode", cwd.mode() & 0o7777, 0o750);
    }
    if let Some(m) = report.ok_or_fail(s.dir_fd.metadata(), "stat the directory") {
        report.check(m.is_dir() && m.nlink() == 0, || {
            format!("dir.d/sub: not a deleted directory (nlink {})", m.nlink())
        });
    }
}

fn check_fifo(s: &State, report: &mut Report) {
    for (end, f) in [("read end", &s.fifo_r), ("write end", &s.fifo_w)] {
        if let Some(link) = report.ok_or_fail(fd_link(f), "read a fifo link") {
            report.check_eq(&format!("fifo {end} link"), link, deleted(&s.dir, "fifo"));
        }
        if let Some(m) = report.ok_or_fail(f.metadata(), "stat the fifo") {
            report.check(m.file_type().is_fifo() && m.nlink() == 0, || {
                format!("fifo {end}: not a deleted fifo")
            });
        }
    }
    let mut buf = vec![0u8; 256];
    let n = (&s.fifo_r).read(&mut buf).unwrap_or(0);
    report.check_eq("fifo data", &buf[..n], FIFO_DATA);
    // Still one pipe: what goes in one end comes out of the other.
    let wrote = (&s.fifo_w).write_all(b"after");
    if report.ok_or_fail(wrote, "write into the fifo").is_some() {
        let n = (&s.fifo_r).read(&mut buf).unwrap_or(0);
        report.check_eq("fifo data written after", &buf[..n], b"after");
    }
}

fn check_node(s: &State, report: &mut Report) {
    if let Some(link) = report.ok_or_fail(fd_link(&s.node), "read the node's link") {
        report.check_eq("device node link", link, deleted(&s.dir, "null"));
    }
    if let Some(m) = report.ok_or_fail(s.node.metadata(), "stat the device node") {
        report.check(m.file_type().is_char_device() && m.nlink() == 0, || {
            "null: not a deleted character device".into()
        });
        report.check_eq("device number", m.rdev(), libc::makedev(1, 3));
        report.check_eq("device node mode", m.mode() & 0o7777, NODE_MODE);
    }
    let wrote = (&s.node).write(b"into the void");
    report.check_eq("write to the null copy", wrote.ok(), Some(13));
}

fn check_link(s: &State, report: &mut Report) {
    if let Some(link) = report.ok_or_fail(fd_link(&s.link), "read the symlink's fd link") {
        report.check_eq("symlink fd link", link, deleted(&s.dir, "link"));
    }
    if let Some(m) = report.ok_or_fail(s.link.metadata(), "stat the symlink") {
        report.check(m.file_type().is_symlink() && m.nlink() == 0, || {
            "link: not a deleted symlink".into()
        });
    }
    let mut buf = vec![0u8; 4096];
    let empty = CString::default();
    // SAFETY: readlinkat(2) on our O_PATH descriptor with an empty path; the kernel
    // writes at most `buf.len()` bytes into `buf`.
    let n = unsafe {
        libc::readlinkat(
            s.link.as_raw_fd(),
            empty.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if let Some(n) = report.ok_or_fail(criu_testprogs::cvt_size(n), "readlinkat") {
        report.check_eq("symlink target", &buf[..n], LINK_TARGET);
    }
}

fn check_sparse(s: &State, report: &mut Report) {
    let f = &s.sparse;
    if let Some(link) = report.ok_or_fail(fd_link(f), "read the sparse file's link") {
        report.check_eq("sparse file link", link, deleted(&s.dir, "sparse"));
    }
    if let Some(m) = report.ok_or_fail(f.metadata(), "stat the sparse file") {
        report.check_eq("sparse file size", m.size(), SPARSE_SIZE);
        report.check_eq("sparse file links", m.nlink(), 0);
        let data: u64 = SPARSE_RUNS.iter().map(|(_, l)| *l as u64).sum();
        report.check(m.blocks() * 512 < 4 * data, || {
            format!(
                "the holes were filled: {} bytes allocated",
                m.blocks() * 512
            )
        });
        report.check_eq("sparse file mode", m.mode() & 0o7777, 0o640);
    }
    let mut f = f;
    report.check_eq(
        "sparse file position",
        f.stream_position().ok(),
        Some(SPARSE_POS),
    );
    for (i, (off, len)) in SPARSE_RUNS.iter().enumerate() {
        let mut buf = vec![0u8; *len];
        if report
            .ok_or_fail(f.read_exact_at(&mut buf, *off), "read a run")
            .is_some()
        {
            if let Some((at, found, want)) = check_stream(&buf, i as u64 + 1, *off) {
                report.fail(format!("run {i} byte {at}: {found:#x}, not {want:#x}"));
            }
        }
    }
    let mut hole = vec![0xffu8; 4096];
    if report
        .ok_or_fail(f.read_exact_at(&mut hole, 3 << 20), "read a hole")
        .is_some()
    {
        report.check(hole.iter().all(|&b| b == 0), || "a hole holds data".into());
    }
    // SAFETY: lseek(2) on our own descriptor; SEEK_DATA moves nothing we rely on (the
    // position is put back below).
    let first_data = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA) };
    report.check_eq("first data", first_data, SPARSE_RUNS[0].0 as i64);
    let _ = f.seek(SeekFrom::Start(SPARSE_POS));
}

fn check_linked(s: &State, report: &mut Report) {
    if let Some(link) = report.ok_or_fail(fd_link(&s.linked), "read the linked file's link") {
        report.check_eq("linked file link", link, deleted(&s.dir, "linked"));
    }
    let other = report.ok_or_fail(
        std::fs::metadata(s.dir.join("linked.other")),
        "stat linked.other",
    );
    let held = report.ok_or_fail(s.linked.metadata(), "stat the linked file");
    if let (Some(other), Some(held)) = (other, held) {
        report.check_eq("the same inode as linked.other", held.ino(), other.ino());
        report.check_eq("names of the linked file", held.nlink(), 1);
    }
    let mut buf = vec![0u8; LINKED_DATA.len()];
    if report
        .ok_or_fail(s.linked.read_exact_at(&mut buf, 0), "read the linked file")
        .is_some()
    {
        report.check_eq("linked file data", &buf[..], LINKED_DATA);
    }
    // A write through the descriptor shows through the other name.
    if report
        .ok_or_fail(s.linked.write_all_at(b"ONE", 0), "write the linked file")
        .is_some()
    {
        let through = std::fs::read(s.dir.join("linked.other")).unwrap_or_default();
        report.check(through.starts_with(b"ONE inode"), || {
            format!("linked.other reads {:?}", String::from_utf8_lossy(&through))
        });
        let _ = s.linked.write_all_at(&LINKED_DATA[..3], 0);
    }
}
