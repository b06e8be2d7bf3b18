//! tp-fsroot: where a process's paths start, and files of `/proc` that name processes.
//! One mode per run (`--mode`):
//!
//! - `chroot`: chroots into the ready file's directory (its jail) and works in [`SUBDIR`]
//!   in there. Before, it opens [`INSIDE`] in the jail (read-write), maps [`MAPPED`]
//!   in the jail shared, and opens [`OUTSIDE`] one directory above the jail, which no
//!   path of the jail reaches. The check proves the root and the cwd are the same
//!   directories (inode), paths still resolve inside the jail (a fresh open of
//!   [`INSIDE`] is the held file), the mapping still maps [`MAPPED`] (a word written
//!   through it is read back by path), and each file is the same one (inode, contents,
//!   offset). The result goes to the ready file's name inside the jail.
//! - `procfile`: holds `/proc/1/status`, a file of a process outside the tree. The check
//!   proves it still reads as pid 1's, and is the file a fresh open gives (inode).
//! - `deadcwd`: its cwd is `/proc/PID` of a child it has killed and reaped (an unhashed
//!   dir), and it holds that child's `/proc/PID/status`. The check proves getcwd fails
//!   with ENOENT, and the cwd and the fd read as the same paths as before.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_testprogs::{cvt, write_atomic, Mapping, Program, Report};

/// The cwd, inside the jail.
const SUBDIR: &str = "sub";
/// Held open read-write at [`INSIDE_POS`], inside the jail.
const INSIDE: &str = "inside.txt";
const INSIDE_DATA: &[u8] = b"a file inside the chroot";
const INSIDE_POS: u64 = 7;
/// Mapped shared, inside the jail.
const MAPPED: &str = "mapped.bin";
const MAP_BYTES: usize = 2 * 4096;
const MARK: u64 = 0x6673_726f_6f74_2121;
/// Held open read-only, next to the jail (outside it).
const OUTSIDE: &str = "tp-fsroot-outside.txt";
const OUTSIDE_DATA: &[u8] = b"a file outside the chroot";

fn main() {
    let mut program = Program::start(
        "tp-fsroot",
        &[("--mode MODE", "chroot, procfile or deadcwd")],
    );
    let mode: String = program.opt("--mode").unwrap_or_default();
    match mode.as_str() {
        "chroot" => chroot_mode(&mut program),
        "procfile" => procfile_mode(&mut program),
        "deadcwd" => deadcwd_mode(&mut program),
        other => program.setup_failed(format!("unknown --mode `{other}`")),
    }
}

/// (device, inode) of a path or a file.
type Id = (u64, u64);

fn id_of(meta: &std::fs::Metadata) -> Id {
    (meta.dev(), meta.ino())
}

struct Jailed {
    root: Id,
    cwd: Id,
    inside: File,
    inside_id: Id,
    mapping: Mapping,
    mapped_id: Id,
    outside: File,
    outside_id: Id,
}

fn chroot_mode(program: &mut Program) {
    let jail = program.must(
        std::fs::canonicalize(program.ready_dir()),
        "resolve the jail",
    );
    // Inside the jail, the ready and result files are at its root.
    let in_jail = |path: &Path| Path::new("/").join(path.file_name().unwrap_or_default());
    let (ready, result) = (
        in_jail(program.ready_file()),
        in_jail(&program.result_file()),
    );
    let state = program.must(jail_set_up(&jail), "set up the jail");
    let line = format!("ready {}\n", std::process::id());
    program.must(
        write_atomic(&ready, line.as_bytes()),
        "write the ready file",
    );
    program.work_until_check(Duration::from_millis(100), || {});
    let report = jail_check(&state);
    finish_at(program, &result, &report);
}

fn jail_set_up(jail: &Path) -> io::Result<Jailed> {
    std::fs::create_dir_all(jail.join(SUBDIR))?;
    let mut inside = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(jail.join(INSIDE))?;
    inside.write_all(INSIDE_DATA)?;
    inside.seek(SeekFrom::Start(INSIDE_POS))?;
    let mapped = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(jail.join(MAPPED))?;
    mapped.set_len(MAP_BYTES as u64)?;
    let mapping = Mapping::file_shared(mapped.as_raw_fd(), MAP_BYTES)?;
    let mapped_id = id_of(&mapped.metadata()?);
    // The mapping alone holds it.
    drop(mapped);
    let outside_path = jail.parent().unwrap_or(Path::new("/")).join(OUTSIDE);
    std::fs::write(&outside_path, OUTSIDE_DATA)?;
    let outside = File::open(&outside_path)?;
    std::os::unix::fs::chroot(jail)?;
    std::env::set_current_dir(Path::new("/").join(SUBDIR))?;
    Ok(Jailed {
        root: id_of(&std::fs::metadata("/")?),
        cwd: id_of(&std::fs::metadata(".")?),
        inside_id: id_of(&inside.metadata()?),
        inside,
        mapping,
        mapped_id,
        outside_id: id_of(&outside.metadata()?),
        outside,
    })
}

fn jail_check(s: &Jailed) -> Report {
    let mut report = Report::new();
    let stat = |p: &str| std::fs::metadata(p).map(|m| id_of(&m));
    if let Some(root) = report.ok_or_fail(stat("/"), "stat /") {
        report.check_eq("root", root, s.root);
    }
    if let Some(cwd) = report.ok_or_fail(stat("."), "stat .") {
        report.check_eq("cwd", cwd, s.cwd);
    }
    // Paths resolve in the jail: the held file is the one its jail path names.
    let by_path = stat(&format!("/{INSIDE}"));
    if let Some(id) = report.ok_or_fail(by_path, "stat the inside file by its jail path") {
        report.check_eq("inside file by path", id, s.inside_id);
    }
    if let Some(m) = report.ok_or_fail(s.inside.metadata(), "fstat the inside file") {
        report.check_eq("inside file", id_of(&m), s.inside_id);
    }
    let mut inside = &s.inside;
    let pos = inside.stream_position();
    if let Some(pos) = report.ok_or_fail(pos, "the inside file's offset") {
        report.check_eq("inside offset", pos, INSIDE_POS);
    }
    let mut data = vec![0u8; INSIDE_DATA.len()];
    if report
        .ok_or_fail(s.inside.read_exact_at(&mut data, 0), "read the inside file")
        .is_some()
    {
        report.check_eq("inside data", data.as_slice(), INSIDE_DATA);
    }
    if let Some(m) = report.ok_or_fail(s.outside.metadata(), "fstat the outside file") {
        report.check_eq("outside file", id_of(&m), s.outside_id);
    }
    let mut outside = Vec::new();
    let read = (&s.outside)
        .seek(SeekFrom::Start(0))
        .and_then(|_| (&s.outside).read_to_end(&mut outside));
    if report.ok_or_fail(read, "read the outside file").is_some() {
        report.check_eq("outside data", outside.as_slice(), OUTSIDE_DATA);
    }
    // A word written through the mapping reaches the file its jail path names.
    let path = format!("/{MAPPED}");
    if let Some(m) = report.ok_or_fail(stat(&path), "stat the mapped file by path") {
        report.check_eq("mapped file by path", m, s.mapped_id);
    }
    // SAFETY: the mapping is MAP_BYTES long and page aligned; word 5 is inside it.
    unsafe { (s.mapping.addr() as *mut u64).add(5).write_volatile(MARK) };
    let mut word = [0u8; 8];
    let read = File::open(&path).and_then(|f| f.read_exact_at(&mut word, 5 * 8));
    if report.ok_or_fail(read, "read the mapped file").is_some() {
        report.check_eq(
            "word written through the mapping",
            u64::from_ne_bytes(word),
            MARK,
        );
    }
    report
}

/// As [`Program::finish`], to `result` (the jail's view of the result file).
fn finish_at(program: &Program, result: &Path, report: &Report) -> ! {
    let line = report.summary();
    if let Err(e) = write_atomic(result, format!("{line}\n").as_bytes()) {
        eprintln!("{}: cannot write {}: {e}", program.name(), result.display());
        std::process::exit(2);
    }
    std::process::exit(if report.passed() { 0 } else { 1 });
}

fn procfile_mode(program: &mut Program) {
    let status = program.must(File::open("/proc/1/status"), "open /proc/1/status");
    program.ready();
    program.work_until_check(Duration::from_millis(100), || {});
    let mut report = Report::new();
    let fresh = std::fs::metadata("/proc/1/status");
    if let (Some(held), Some(fresh)) = (
        report.ok_or_fail(status.metadata(), "fstat the held /proc/1/status"),
        report.ok_or_fail(fresh, "stat /proc/1/status"),
    ) {
        report.check_eq("inode", held.ino(), fresh.ino());
    }
    let mut text = String::new();
    let read = (&status)
        .seek(SeekFrom::Start(0))
        .and_then(|_| (&status).read_to_string(&mut text));
    if report
        .ok_or_fail(read, "read the held /proc/1/status")
        .is_some()
    {
        report.check(text.lines().any(|l| l == "Pid:\t1"), || {
            format!("the held file is not pid 1's status: {text:?}")
        });
    }
    program.finish(&report);
}

fn deadcwd_mode(program: &mut Program) {
    let (status, status_link, cwd_link) = program.must(dead_set_up(), "make a dead cwd");
    program.ready();
    program.work_until_check(Duration::from_millis(100), || {});
    let mut report = Report::new();
    let cwd = std::env::current_dir();
    report.check(
        matches!(&cwd, Err(e) if e.kind() == io::ErrorKind::NotFound),
        || format!("getcwd in a dead process's /proc dir: {cwd:?}, not ENOENT"),
    );
    let link = std::fs::read_link("/proc/self/cwd");
    if let Some(link) = report.ok_or_fail(link, "read the cwd link") {
        report.check_eq("cwd link", link, cwd_link);
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{}", status.as_raw_fd()));
    if let Some(link) = report.ok_or_fail(link, "read the status fd's link") {
        report.check_eq("status fd link", link, status_link);
    }
    program.finish(&report);
}

/// Forks a child that waits, goes into its `/proc/PID` and opens its `status`, kills
/// and reaps it. Returns that fd, its link and the cwd link.
fn dead_set_up() -> io::Result<(File, PathBuf, PathBuf)> {
    // SAFETY: the child only calls pause(2) until it is killed.
    let pid = cvt(unsafe { libc::fork() })?;
    if pid == 0 {
        loop {
            // SAFETY: pause(2) takes no arguments.
            unsafe { libc::pause() };
        }
    }
    let dir = format!("/proc/{pid}");
    let opened = std::env::set_current_dir(&dir).and_then(|()| File::open("status"));
    // SAFETY: kill(2) and waitpid(2) on our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    let status = opened?;
    let status_link = std::fs::read_link(format!("/proc/self/fd/{}", status.as_raw_fd()))?;
    let cwd_link = std::fs::read_link("/proc/self/cwd")?;
    Ok((status, status_link, cwd_link))
}
