//! tp-paths: an open file, a shared and a private file mapping, and the working
//! directory, all with names that are not UTF-8 (Linux paths are bytes). The check proves
//! each still names the same file: by the path bytes the kernel shows, by inode, and by
//! what the file holds.
//!
//! Under `--dir DIR` (default: the ready file's directory) it creates [`SUBDIR`] and in it
//! [`FILE`] (held open read-write at offset [`FILE_OFFSET`]), [`SHARED`] (mapped
//! `MAP_SHARED`, a word written through the mapping) and [`PRIVATE`] (mapped
//! `MAP_PRIVATE`, its first page changed in memory only), then makes [`SUBDIR`] its
//! working directory. It also holds a memfd named [`MEMFD`], open and mapped shared, and
//! a unix datagram socket bound to the relative name [`SOCKET`] there, and an inotify
//! watch on [`SUBDIR`]. The names are printed, as Rust byte strings, in README.md.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_testprogs::{check_pattern, fill_pattern, random_seed, Mapping, Program, Report};

/// The directory, made the working directory: two bytes that are never UTF-8.
const SUBDIR: &[u8] = b"tp-paths-dir-\xff\xfe";
/// The open file, in [`SUBDIR`].
const FILE: &[u8] = b"file-\xfe\x80";
/// The shared mapping's file, in [`SUBDIR`].
const SHARED: &[u8] = b"shared-\xc3\x28.map";
/// The private mapping's file, in [`SUBDIR`].
const PRIVATE: &[u8] = b"private-\xe2\x82.map";
/// The socket's name, relative to [`SUBDIR`] (bound from there).
const SOCKET: &[u8] = b"sock-\xfe";
/// The memfd's name (`/memfd:NAME (deleted)` in links and maps).
const MEMFD: &[u8] = b"tp-paths-\xff\x80";
const FILE_DATA: &[u8] = b"0123456789abcdef";
const FILE_OFFSET: u64 = 5;
const MAP_BYTES: usize = 4 * 4096;
/// The word written through the shared mapping (index 3) and over the private
/// mapping's first page (index 0).
const MARK: u64 = 0x7061_7468_735f_6f6b;

struct State {
    dir: PathBuf,
    file: File,
    shared: Mapping,
    private: Mapping,
    memfd: File,
    memfd_map: Mapping,
    socket: UnixDatagram,
    inotify: File,
    seed: u64,
}

fn name(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

fn main() {
    let mut program = Program::start(
        "tp-paths",
        &[(
            "--dir DIR",
            "where the non-UTF-8 directory goes (default: the ready file's)",
        )],
    );
    let base = program
        .opt::<String>("--dir")
        .map_or_else(|| program.ready_dir(), PathBuf::from);
    let base = program.must(std::fs::canonicalize(&base), "resolve --dir");
    let state = program.must(set_up(&base), "create the files");
    program.ready();
    program.work_until_check(Duration::from_millis(100), || {});
    let report = check(&state);
    program.finish(&report);
}

fn set_up(base: &Path) -> io::Result<State> {
    let dir = base.join(name(SUBDIR));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir)?;
    let seed = random_seed();

    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.join(name(FILE)))?;
    file.write_all(FILE_DATA)?;
    file.seek(SeekFrom::Start(FILE_OFFSET))?;

    let map_file = |file_name: &[u8], seed: u64| -> io::Result<File> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(name(file_name)))?;
        let mut words = vec![0u64; MAP_BYTES / 8];
        fill_pattern(&mut words, seed, 0);
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        f.write_all_at(&bytes, 0)?;
        Ok(f)
    };
    let shared_file = map_file(SHARED, seed)?;
    let mut shared = Mapping::file_shared(shared_file.as_raw_fd(), MAP_BYTES)?;
    shared.words_mut()[3] = MARK;
    let private_file = map_file(PRIVATE, !seed)?;
    let mut private = Mapping::file_private(private_file.as_raw_fd(), MAP_BYTES)?;
    private.words_mut()[0] = MARK;
    // The mappings hold the files: only the open file keeps a descriptor.
    drop((shared_file, private_file));

    let memfd_name = std::ffi::CString::new(MEMFD).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: memfd_create(2) with a NUL-terminated name; the new fd is owned below.
    let fd = unsafe { libc::memfd_create(memfd_name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let memfd = unsafe { <File as std::os::unix::io::FromRawFd>::from_raw_fd(fd) };
    memfd.set_len(MAP_BYTES as u64)?;
    let mut memfd_map = Mapping::file_shared(memfd.as_raw_fd(), MAP_BYTES)?;
    fill_pattern(memfd_map.words_mut(), seed ^ 0x5a5a, 0);

    std::env::set_current_dir(&dir)?;
    let socket = UnixDatagram::bind(name(SOCKET))?;
    // SAFETY: inotify_init1(2) takes no pointers; the new fd is owned below.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let inotify = unsafe { <File as std::os::unix::io::FromRawFd>::from_raw_fd(fd) };
    let dir_c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::inotify_add_watch(fd, dir_c.as_ptr(), libc::IN_CREATE) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(State {
        dir,
        file,
        shared,
        private,
        memfd,
        memfd_map,
        socket,
        inotify,
        seed,
    })
}

fn check(s: &State) -> Report {
    let mut report = Report::new();
    check_file(s, &mut report);
    check_cwd(s, &mut report);
    check_mappings(s, &mut report);
    check_memfd(s, &mut report);
    check_socket(s, &mut report);
    check_inotify(s, &mut report);
    report
}

/// The watch on the directory still reports a file created in it.
fn check_inotify(s: &State, report: &mut Report) {
    use std::io::Read;
    let mut drain = [0u8; 4096];
    while (&s.inotify).read(&mut drain).is_ok_and(|n| n > 0) {}
    let probe_name: &[u8] = b"probe-\xfd";
    if report
        .ok_or_fail(
            File::create(s.dir.join(name(probe_name))),
            "create the probe",
        )
        .is_none()
    {
        return;
    }
    let mut pfd = libc::pollfd {
        fd: s.inotify.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the call only.
    let ready = unsafe { libc::poll(&mut pfd, 1, 2000) };
    let mut buf = [0u8; 4096];
    let n = if ready > 0 {
        (&s.inotify).read(&mut buf).unwrap_or(0)
    } else {
        0
    };
    // Events: wd, mask, cookie, len (4 bytes each), then a NUL-padded name.
    let mut found = false;
    let mut at = 0;
    while at + 16 <= n {
        let word =
            |i: usize| u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().unwrap_or_default());
        let len = word(12) as usize;
        let event_name = buf.get(at + 16..at + 16 + len).unwrap_or_default();
        let event_name = event_name.split(|&b| b == 0).next().unwrap_or_default();
        found |= word(4) & libc::IN_CREATE != 0 && event_name == probe_name;
        at += 16 + len;
    }
    let _ = std::fs::remove_file(s.dir.join(name(probe_name)));
    report.check(found, || {
        "inotify: no IN_CREATE event for the probe in the directory within 2 s".into()
    });
}

fn check_socket(s: &State, report: &mut Report) {
    if let Some(addr) = report.ok_or_fail(s.socket.local_addr(), "getsockname") {
        report.check_eq("socket's name", addr.as_pathname(), Some(name(SOCKET)));
    }
    // Reached at its file in the directory it was bound in.
    let Some(client) = report.ok_or_fail(UnixDatagram::unbound(), "create a client socket") else {
        return;
    };
    let sent = client.send_to(b"ping", s.dir.join(name(SOCKET)));
    if report
        .ok_or_fail(sent, "send to the socket's file")
        .is_none()
    {
        return;
    }
    let mut buf = [0u8; 8];
    let _ = s.socket.set_read_timeout(Some(Duration::from_secs(2)));
    if let Some(n) = report.ok_or_fail(s.socket.recv(&mut buf), "receive on the socket") {
        report.check_eq("datagram", &buf[..n], b"ping");
    }
}

fn check_memfd(s: &State, report: &mut Report) {
    let mut expected = b"/memfd:".to_vec();
    expected.extend_from_slice(MEMFD);
    expected.extend_from_slice(b" (deleted)");
    let fd = s.memfd.as_raw_fd();
    if let Some(link) = report.ok_or_fail(link_bytes(&format!("fd/{fd}")), "read the memfd link") {
        report.check_eq("memfd's name", link, expected.clone());
    }
    if let Some(shown) = report.ok_or_fail(mapped_path(s.memfd_map.addr() as usize), "read maps") {
        report.check_eq("memfd mapping's name", shown, Some(expected));
    }
    if let Some(m) = check_pattern(s.memfd_map.words(), s.seed ^ 0x5a5a, 0) {
        report.fail(format!("memfd mapping: {m}"));
    }
    // The descriptor and the mapping are the same memory.
    let mut word = [0u8; 8];
    if report
        .ok_or_fail(s.memfd.read_exact_at(&mut word, 8), "read the memfd")
        .is_some()
    {
        report.check_eq(
            "memfd word 1 through the fd",
            u64::from_ne_bytes(word),
            s.memfd_map.words()[1],
        );
    }
}

/// The link of `/proc/self/...` as bytes.
fn link_bytes(what: &str) -> io::Result<Vec<u8>> {
    Ok(std::fs::read_link(format!("/proc/self/{what}"))?
        .into_os_string()
        .into_encoded_bytes())
}

fn same_inode(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

fn check_file(s: &State, report: &mut Report) {
    let path = s.dir.join(name(FILE));
    let fd = s.file.as_raw_fd();
    if let Some(link) = report.ok_or_fail(link_bytes(&format!("fd/{fd}")), "read the fd link") {
        report.check_eq(
            "open file's path",
            link,
            path.as_os_str().as_bytes().to_vec(),
        );
    }
    if let (Some(open), Some(named)) = (
        report.ok_or_fail(s.file.metadata(), "fstat the open file"),
        report.ok_or_fail(std::fs::metadata(&path), "stat the file by its name"),
    ) {
        report.check(same_inode(&open, &named), || {
            "the open file is not the file its name names".into()
        });
    }
    let mut file = &s.file;
    if let Some(pos) = report.ok_or_fail(file.stream_position(), "read the offset") {
        report.check_eq("open file's offset", pos, FILE_OFFSET);
    }
    let mut data = vec![0u8; FILE_DATA.len()];
    if report
        .ok_or_fail(s.file.read_exact_at(&mut data, 0), "read the open file")
        .is_some()
    {
        report.check_eq("open file's data", data.as_slice(), FILE_DATA);
    }
}

fn check_cwd(s: &State, report: &mut Report) {
    if let Some(link) = report.ok_or_fail(link_bytes("cwd"), "read the cwd link") {
        report.check_eq(
            "working directory's path",
            link,
            s.dir.as_os_str().as_bytes().to_vec(),
        );
    }
    if let (Some(here), Some(named)) = (
        report.ok_or_fail(std::fs::metadata("."), "stat ."),
        report.ok_or_fail(std::fs::metadata(&s.dir), "stat the directory by its name"),
    ) {
        report.check(same_inode(&here, &named), || {
            "the working directory is not the directory its name names".into()
        });
    }
    // Relative names resolve in it.
    report.check(Path::new(name(FILE)).exists(), || {
        "the open file is not found by its name relative to the working directory".into()
    });
}

/// The path `/proc/self/maps` shows for the mapping at `addr`, as bytes.
fn mapped_path(addr: usize) -> io::Result<Option<Vec<u8>>> {
    let maps = std::fs::read("/proc/self/maps")?;
    for line in maps.split(|&b| b == b'\n') {
        let start = line.split(|&b| b == b'-').next().unwrap_or_default();
        let start = std::str::from_utf8(start)
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok());
        if start != Some(addr) {
            continue;
        }
        // Five fields, then spaces, then the path.
        let mut rest = line;
        for _ in 0..5 {
            let at = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
            rest = &rest[(at + 1).min(rest.len())..];
        }
        let path = rest
            .iter()
            .position(|&b| b != b' ')
            .map_or(&[][..], |i| &rest[i..]);
        return Ok(Some(path.to_vec()));
    }
    Ok(None)
}

fn check_mapping(report: &mut Report, what: &str, mapping: &Mapping, path: &Path) {
    let expected = path.as_os_str().as_bytes().to_vec();
    if let Some(shown) = report.ok_or_fail(mapped_path(mapping.addr() as usize), "read maps") {
        report.check_eq(&format!("{what} mapping's path"), shown, Some(expected));
    }
    let by_map = std::fs::metadata(format!(
        "/proc/self/map_files/{:x}-{:x}",
        mapping.addr() as usize,
        mapping.addr() as usize + mapping.len()
    ));
    if let (Some(mapped), Some(named)) = (
        report.ok_or_fail(by_map, "stat the mapped file"),
        report.ok_or_fail(std::fs::metadata(path), "stat the mapped file by its name"),
    ) {
        report.check(same_inode(&mapped, &named), || {
            format!("the {what} mapping is not of the file its name names")
        });
    }
}

fn file_words(path: &Path) -> io::Result<Vec<u64>> {
    let bytes = std::fs::read(path)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
        .collect())
}

fn check_mappings(s: &State, report: &mut Report) {
    let shared_path = s.dir.join(name(SHARED));
    check_mapping(report, "shared", &s.shared, &shared_path);
    // Shared: the mark went to the file, and what is written now reaches it too.
    let mut expected = vec![0u64; MAP_BYTES / 8];
    fill_pattern(&mut expected, s.seed, 0);
    expected[3] = MARK;
    report.check(s.shared.words() == expected.as_slice(), || {
        "the shared mapping does not hold the file's words".into()
    });
    if let Some(words) = report.ok_or_fail(file_words(&shared_path), "read the shared file") {
        report.check(words == expected, || {
            "the shared file does not hold what was written through the mapping".into()
        });
    }

    let private_path = s.dir.join(name(PRIVATE));
    check_mapping(report, "private", &s.private, &private_path);
    // Private: the changed word is ours only; the rest is the file's.
    let words = s.private.words();
    report.check_eq("private mapping's changed word", words[0], MARK);
    if let Some(m) = check_pattern(&words[1..], !s.seed, 1) {
        report.fail(format!("private mapping: {m}"));
    }
    if let Some(file) = report.ok_or_fail(file_words(&private_path), "read the private file") {
        report.check(check_pattern(&file, !s.seed, 0).is_none(), || {
            "the private mapping's change reached its file".into()
        });
    }
}
