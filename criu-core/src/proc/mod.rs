//! Reading a task's state from /proc. `ProcDir` keeps an fd on `/proc/PID` and opens
//! every file relative to it, so a recycled pid cannot swap the task under us mid-read;
//! the parsers take text, so they are tested on strings without any process.
//!
//! One module per file, each saying what it reads and, where the parser is our own, why:
//!
//! | file | parser | why |
//! | --- | --- | --- |
//! | `limits` | procfs-core (`limits.rs`) | it finds rows by name |
//! | `stat` | ours (`stat.rs`) | procfs panics on some texts, names no field |
//! | `status` | ours (`status.rs`) | procfs is 5x slower, looser, names fewer fields |
//! | `smaps`, `maps` | ours (`maps.rs`) | procfs is 2.5x slower, drops VmFlags it does not know |
//! | `mountinfo` | ours (`mountinfo.rs`) | procfs keeps no bytes, does not unescape |
//! | `timers` | ours (`timers.rs`) | procfs has no parser for it |
//! | `auxv`, `comm`, `task/*/children`, `task/`, `fd/` here | ours | see each function |
//!
//! The rule for all of them: a field that is missing or does not parse is an error
//! naming the file and the field ([`FieldError`]), never a 0 or a default; names the
//! task chose (paths, mount points, comm) are read as bytes. procfs (its parsers,
//! procfs-core, on the files `ProcDir` opens) is used where it keeps that rule and is
//! not slower where speed counts; the times are procfs-core 0.18 against ours on the
//! same text, in one run, in a release build.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use crate::sys::Pid;

mod limits;
mod maps;
mod mountinfo;
mod stat;
mod status;
mod timers;

pub use limits::parse_limits;
pub use maps::{parse_smaps, MapEntry};
pub use mountinfo::{Mount, MountTable};
pub use stat::{parse_stat, Stat};
pub use status::{seccomp_mode, Status};
pub use timers::{parse_timers, PosixTimer};

/// A path (ours) of the root of `pid`'s mount namespace, under which the paths its
/// links show (`/proc/PID/fd/N`, `maps`, `cwd`) name the same files.
///
/// Those links are written from the root of the mount tree (ours when the task shares
/// our mount namespace), not from the task's own root: a chrooted task's files read
/// `/srv/jail/etc/x`, not `/etc/x`. So `/proc/PID/root` alone is the right base only
/// when the task is not chrooted; otherwise one `..` per component of its root's path
/// climbs from its root to the top of its mount tree (a walk through the magic link
/// goes on in the task's mounts, also in another mount namespace).
pub fn mount_root(pid: Pid) -> io::Result<std::ffi::OsString> {
    let root = std::fs::read_link(format!("/proc/{}/root", pid.0))?;
    let mut base = std::ffi::OsString::from(format!("/proc/{}/root", pid.0));
    for part in root.components() {
        if matches!(part, std::path::Component::Normal(_)) {
            base.push("/..");
        }
    }
    Ok(base)
}

/// MemAvailable of `/proc/meminfo` (the memory the machine can give without swapping),
/// in bytes; `None` when the kernel does not show it.
pub fn mem_available() -> io::Result<Option<u64>> {
    use procfs_core::FromRead;
    let meminfo = procfs_core::Meminfo::from_file("/proc/meminfo")
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, procfs_reason(e)))?;
    Ok(meminfo.mem_available)
}

/// The text of a `/proc/sys` file, read in one `read(2)`.
///
/// The kernel's integer sysctl handlers answer only a read at offset 0 and return
/// end-of-file at any other offset, so a reader that starts with a small buffer (as
/// `fs::read_to_string` does, 32 bytes) gets the value cut short: `kernel/sem` with
/// four large numbers read as three and a bit. One read with a page-sized buffer
/// gets it whole (sysctl values are at most a page).
pub fn read_sysctl(path: impl AsRef<std::path::Path>) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 4096 + 1];
    let len = file.read(&mut buf)?;
    if len == buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a sysctl value longer than a page",
        ));
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// An open `/proc/PID` (or `/proc/PID/task/TID`) directory.
pub struct ProcDir {
    pid: Pid,
    dir: OwnedFd,
}

/// `PF_IO_WORKER` in a task's `stat` flags: an io_uring kernel thread of the process
/// (io-wq worker or SQPOLL thread).
pub const PF_IO_WORKER: u32 = 0x10;

impl ProcDir {
    pub fn open(pid: Pid) -> io::Result<Self> {
        Self::open_path(pid, format!("/proc/{}", pid.0))
    }

    /// `/proc/PID/task/TID`, for per-thread files.
    pub fn open_thread(pid: Pid, tid: Pid) -> io::Result<Self> {
        Self::open_path(tid, format!("/proc/{}/task/{}", pid.0, tid.0))
    }

    fn open_path(pid: Pid, path: String) -> io::Result<Self> {
        let dir = File::open(&path)?;
        Ok(ProcDir {
            pid,
            dir: OwnedFd::from(dir),
        })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Opens a file below this directory.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        let cname = std::ffi::CString::new(name)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        crate::sys::openat_read(self.dir.as_fd(), &cname)
    }

    pub fn read_bytes(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open_file(name)?.read_to_end(&mut buf)?;
        Ok(buf)
    }

    pub fn read_string(&self, name: &str) -> io::Result<String> {
        Ok(String::from_utf8_lossy(&self.read_bytes(name)?).into_owned())
    }

    /// The target of a symlink below this directory (`exe`, `cwd`, `fd/3`...).
    pub fn read_link(&self, name: &str) -> io::Result<PathBuf> {
        std::fs::read_link(format!(
            "/proc/self/fd/{}/{name}",
            self.dir.as_fd().as_raw_fd()
        ))
    }

    /// Names of the entries of a subdirectory (`task`, `fd`...), as numbers. An entry
    /// that cannot be read or is not a number is an error, not skipped: a task or fd
    /// left out would be lost.
    pub fn list_numbers(&self, name: &str) -> io::Result<Vec<i32>> {
        let path = format!("/proc/self/fd/{}/{name}", self.dir.as_raw_fd());
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let file_name = entry?.file_name();
            let number = file_name.to_str().and_then(|n| n.parse().ok());
            out.push(number.ok_or_else(|| {
                self.bad_field(
                    name,
                    FieldError::garbled("entry name", &file_name.to_string_lossy()),
                )
            })?);
        }
        out.sort_unstable();
        Ok(out)
    }

    pub fn stat(&self) -> io::Result<Stat> {
        parse_stat(&self.read_string("stat")?).map_err(|e| self.bad_field("stat", e))
    }

    pub fn status(&self) -> io::Result<Status> {
        Status::parse(&self.read_string("status")?).map_err(|e| self.bad_field("status", e))
    }

    /// The threads of the process that run its code: `task/` less the io_uring
    /// workers the kernel runs in it (`iou-wrk-PID`, `iou-sqp-PID`, marked
    /// [`PF_IO_WORKER`]), which run kernel code only and are made again by the kernel
    /// as a ring needs them. A thread that exits while it is looked at is left out.
    pub fn user_threads(&self) -> io::Result<Vec<Pid>> {
        let mut threads = self.threads()?;
        threads.retain(|&tid| !self.is_io_worker(tid));
        Ok(threads)
    }

    /// Whether thread `tid` of this process is an io_uring worker ([`PF_IO_WORKER`]).
    pub fn is_io_worker(&self, tid: Pid) -> bool {
        if tid == self.pid {
            return false;
        }
        self.read_string(&format!("task/{}/stat", tid.0))
            .ok()
            .and_then(|text| parse_stat(&text).ok())
            .is_some_and(|stat| stat.flags & PF_IO_WORKER != 0)
    }

    pub fn threads(&self) -> io::Result<Vec<Pid>> {
        Ok(self.list_numbers("task")?.into_iter().map(Pid).collect())
    }

    /// Children of every thread of this process (`task/*/children`).
    pub fn children(&self) -> io::Result<Vec<Pid>> {
        let mut out = Vec::new();
        for tid in self.threads()? {
            match self.read_string(&format!("task/{}/children", tid.0)) {
                Ok(text) => out.extend(
                    parse_children(&text)
                        .map_err(|e| self.bad_field(&format!("task/{}/children", tid.0), e))?,
                ),
                // The thread exited between listing and reading.
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOENT)
                        || e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Every mapping with its VmFlags and sizes (`smaps`: the kernel walks the page
    /// tables for the sizes, tens of ms for a GiB).
    pub fn maps(&self) -> io::Result<Vec<MapEntry>> {
        parse_smaps(&self.read_string("smaps")?).map_err(|e| self.bad_field("smaps", e))
    }

    /// Every mapping without VmFlags or sizes (`maps`: no page-table walk).
    pub fn maps_plain(&self) -> io::Result<Vec<MapEntry>> {
        parse_smaps(&self.read_string("maps")?).map_err(|e| self.bad_field("maps", e))
    }

    pub fn limits(&self) -> io::Result<Vec<(u64, u64)>> {
        parse_limits(&self.read_string("limits")?).map_err(|e| self.bad_field("limits", e))
    }

    /// The POSIX timers (`timers`); none when the kernel has no such file (it needs
    /// CONFIG_CHECKPOINT_RESTORE).
    pub fn timers(&self) -> io::Result<Vec<PosixTimer>> {
        match self.read_string("timers") {
            Ok(text) => parse_timers(&text).map_err(|e| self.bad_field("timers", e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The auxiliary vector as flat u64 key/value pairs, up to and including AT_NULL
    /// (empty for a task without memory). Ours: procfs has it only on its `Process`, as
    /// a HashMap, which loses the order and repeated keys of the vector that
    /// PR_SET_MM_AUXV gives back to the restored task.
    pub fn auxv(&self) -> io::Result<Vec<u64>> {
        parse_auxv(&self.read_bytes("auxv")?).map_err(|e| self.bad_field("auxv", e))
    }

    /// The task's name (`comm`), as bytes without the newline: it is whatever the
    /// task set or its exe was called, not necessarily UTF-8 (procfs has it only in
    /// `Stat` and `Status`, as a lossy `String`).
    pub fn comm(&self) -> io::Result<Vec<u8>> {
        let mut comm = self.read_bytes("comm")?;
        if comm.last() == Some(&b'\n') {
            comm.pop();
        }
        Ok(comm)
    }

    /// A small integer file (`personality` is hex, the others decimal).
    pub fn read_number(&self, name: &str, radix: u32) -> io::Result<i64> {
        let text = self.read_string(name)?;
        i64::from_str_radix(text.trim(), radix)
            .or_else(|_| text.trim().parse::<u64>().map(|v| v as i64))
            .map_err(|_| self.bad_field(name, FieldError::garbled("value", text.trim())))
    }

    /// The error for a file below this directory whose text does not parse.
    fn bad_field(&self, name: &str, e: FieldError) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{}/{name}: {e}", self.pid.0),
        )
    }
}

/// A field of a /proc file that is missing or does not parse. The parsers never stand in
/// a 0 or a default for it: a wrong pid, mask or address would be dumped as if true.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("field {0} is missing")]
    Missing(String),
    #[error("field {field} does not parse: {text:?}")]
    Garbled { field: String, text: String },
}

impl FieldError {
    /// The same error, its field prefixed with the line it is on.
    fn on_line(self, line: usize) -> Self {
        match self {
            FieldError::Missing(field) => FieldError::Missing(format!("{field} on line {line}")),
            FieldError::Garbled { field, text } => FieldError::Garbled {
                field: format!("{field} on line {line}"),
                text,
            },
        }
    }

    fn missing(field: impl Into<String>) -> Self {
        FieldError::Missing(field.into())
    }

    fn garbled(field: impl Into<String>, text: &str) -> Self {
        FieldError::Garbled {
            field: field.into(),
            text: text.to_owned(),
        }
    }
}

/// Parses one field's text, naming the field when it does not parse.
fn parse_field<T: std::str::FromStr>(field: &str, text: &str) -> Result<T, FieldError> {
    text.parse().map_err(|_| FieldError::garbled(field, text))
}

/// Parses one hexadecimal field (no `0x`).
fn parse_hex(field: &str, text: &str) -> Result<u64, FieldError> {
    u64::from_str_radix(text, 16).map_err(|_| FieldError::garbled(field, text))
}

/// procfs's words for a text it refuses, without the "please report this procfs bug"
/// framing of its internal errors: a /proc text that does not parse is no bug of procfs.
fn procfs_reason(e: procfs_core::ProcError) -> String {
    match e {
        procfs_core::ProcError::InternalError(e) => e
            .msg
            .trim_start_matches("Internal Unwrap Error: ")
            .to_owned(),
        e => e.to_string(),
    }
}

/// Parses an auxv file: native-endian u64 key/value pairs, the last one AT_NULL (the
/// kernel writes the saved vector up to it). A vector cut short is an error, not the
/// pairs before the cut.
fn parse_auxv(raw: &[u8]) -> Result<Vec<u64>, FieldError> {
    if !raw.len().is_multiple_of(16) {
        return Err(FieldError::garbled(
            "length",
            &format!("{} bytes, not whole u64 pairs", raw.len()),
        ));
    }
    let mut out = Vec::with_capacity(raw.len() / 8);
    for pair in raw.chunks_exact(16) {
        let (key, value) = pair.split_at(8);
        let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap_or_default());
        out.extend([word(key), word(value)]);
        if word(key) == libc::AT_NULL {
            return Ok(out);
        }
    }
    if out.is_empty() {
        return Ok(out);
    }
    Err(FieldError::missing("AT_NULL"))
}

/// Parses a `task/TID/children` file: pids separated by spaces. Ours: procfs's
/// `Task::children` is the same split, but its error names neither the value nor the
/// thread.
fn parse_children(text: &str) -> Result<Vec<Pid>, FieldError> {
    text.split_whitespace()
        .map(|p| parse_field("child pid", p).map(Pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kernel/sem` with four large values is longer than a small first read: it must
    /// come back whole. Set in an IPC namespace of a thread of our own, left with it.
    #[test]
    fn a_sysctl_longer_than_a_small_read_is_read_whole() {
        let written = "150885729 249834266 1321692944 23038";
        let read = std::thread::spawn(move || {
            crate::sys::unshare(libc::CLONE_NEWIPC).expect("unshare an IPC namespace");
            std::fs::write("/proc/sys/kernel/sem", written).unwrap();
            read_sysctl("/proc/sys/kernel/sem").unwrap()
        })
        .join()
        .unwrap();
        let values: Vec<&str> = read.split_whitespace().collect();
        assert_eq!(values, written.split(' ').collect::<Vec<_>>());
    }

    #[test]
    fn the_mount_root_of_a_task_that_is_not_chrooted_is_its_root() {
        let me = Pid(std::process::id() as i32);
        let root = std::fs::read_link("/proc/self/root").unwrap();
        let base = mount_root(me).unwrap();
        let ups = root.components().count().saturating_sub(1);
        let expected = format!("/proc/{}/root{}", me.0, "/..".repeat(ups));
        assert_eq!(base, std::ffi::OsString::from(expected));
        if root == std::path::Path::new("/") {
            use std::os::unix::fs::MetadataExt;
            let top = std::fs::metadata(&base).unwrap();
            assert_eq!(top.ino(), std::fs::metadata("/").unwrap().ino());
        }
    }

    #[test]
    fn auxv_pairs_up_to_at_null() {
        let words = |w: &[u64]| w.iter().flat_map(|w| w.to_ne_bytes()).collect::<Vec<u8>>();
        assert_eq!(
            parse_auxv(&words(&[6, 4096, 0, 0, 0, 0])).unwrap(),
            vec![6, 4096, 0, 0]
        );
        assert_eq!(parse_auxv(&[]).unwrap(), Vec::<u64>::new());
        assert_eq!(
            parse_auxv(&words(&[6, 4096])).unwrap_err(),
            FieldError::missing("AT_NULL")
        );
        assert!(
            matches!(parse_auxv(&words(&[6, 4096, 0])), Err(FieldError::Garbled { field, .. }) if field == "length")
        );
    }

    #[test]
    fn children_garbled_pids_are_errors() {
        assert_eq!(parse_children("12 13 ").unwrap(), vec![Pid(12), Pid(13)]);
        assert!(parse_children("12 1x3").is_err());
    }

    /// Every live task's files parse: no real kernel output trips the strict parsers
    /// (kernel threads and zombies lack some lines). Tasks may exit meanwhile.
    #[test]
    fn reads_every_process_on_this_machine() {
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        let zombie_pid = Pid(zombie.id() as i32);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ProcDir::open(zombie_pid).unwrap().stat().unwrap().state != 'Z'
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut parsed = 0;
        for pid in std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        {
            let Ok(dir) = ProcDir::open(Pid(pid)) else {
                continue;
            };
            for result in [
                dir.stat().map(drop),
                dir.status().map(drop),
                dir.maps_plain().map(drop),
                dir.limits().map(drop),
                dir.timers().map(drop),
                dir.children().map(drop),
                dir.auxv().map(drop),
            ] {
                match result {
                    Ok(()) => parsed += 1,
                    Err(e) => assert_ne!(e.kind(), io::ErrorKind::InvalidData, "{pid}: {e}"),
                }
            }
        }
        assert!(parsed > 6);
        let zombie_dir = ProcDir::open(zombie_pid).unwrap();
        let (stat, status) = (zombie_dir.stat(), zombie_dir.status());
        zombie.wait().unwrap();
        assert_eq!(stat.unwrap().state, 'Z');
        status.unwrap();
    }

    #[test]
    fn reads_own_process() {
        let me = ProcDir::open(Pid(std::process::id() as i32)).unwrap();
        let stat = me.stat().unwrap();
        assert_eq!(stat.pid as u32, std::process::id());
        assert!(!me.threads().unwrap().is_empty());
        assert!(me.maps().unwrap().iter().any(|m| m.path == "[stack]"));
        assert_eq!(me.limits().unwrap().len(), 16);
        assert_eq!(me.auxv().unwrap().len() % 2, 0);
        assert!(me.read_link("exe").unwrap().is_absolute());
    }
}
