//! Reading a task's state from /proc. The parsers take text, so they are tested on
//! strings without any process; `ProcDir` keeps an fd on `/proc/PID` and opens every file
//! relative to it, so a recycled pid cannot swap the task under us mid-read.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use crate::sys::Pid;

/// An open `/proc/PID` (or `/proc/PID/task/TID`) directory.
pub struct ProcDir {
    pid: Pid,
    dir: OwnedFd,
}

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

    /// The auxiliary vector as flat u64 key/value pairs, up to and including AT_NULL.
    pub fn auxv(&self) -> io::Result<Vec<u64>> {
        let raw = self.read_bytes("auxv")?;
        let words: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let mut out = Vec::new();
        for pair in words.chunks_exact(2) {
            out.extend_from_slice(pair);
            if pair[0] == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// The task's name (`comm`), as bytes without the newline: it is whatever the
    /// task set or its exe was called, not necessarily UTF-8.
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

/// The fields of `/proc/PID/stat` the engine uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub tty_nr: i32,
    pub flags: u32,
    pub priority: i64,
    pub nice: i64,
    pub num_threads: i64,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub exit_signal: i32,
    pub rt_priority: u32,
    pub policy: u32,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub exit_code: i32,
}

/// Parses `/proc/PID/stat`. The comm is in parentheses and may itself contain spaces
/// and parentheses, so it ends at the last `)`. Every field the engine uses must be there
/// (the kernel has printed all 52 since 3.5).
pub fn parse_stat(text: &str) -> Result<Stat, FieldError> {
    let open = text
        .find('(')
        .ok_or_else(|| FieldError::missing("2 (comm)"))?;
    let close = text
        .rfind(')')
        .filter(|&close| close > open)
        .ok_or_else(|| FieldError::garbled("2 (comm)", text))?;
    let pid = parse_field("1 (pid)", text[..open].trim())?;
    let comm = text[open + 1..close].to_owned();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    fn field<T: std::str::FromStr>(rest: &[&str], n: usize, name: &str) -> Result<T, FieldError> {
        let label = format!("{n} ({name})");
        let text = rest
            .get(n - 3)
            .ok_or_else(|| FieldError::missing(&*label))?;
        parse_field(&label, text)
    }
    let state: String = field(&rest, 3, "state")?;
    let mut state_chars = state.chars();
    let (Some(state_char), None) = (state_chars.next(), state_chars.next()) else {
        return Err(FieldError::garbled("3 (state)", &state));
    };
    Ok(Stat {
        pid,
        comm,
        state: state_char,
        ppid: field(&rest, 4, "ppid")?,
        pgid: field(&rest, 5, "pgrp")?,
        sid: field(&rest, 6, "session")?,
        tty_nr: field(&rest, 7, "tty_nr")?,
        flags: field(&rest, 9, "flags")?,
        priority: field(&rest, 18, "priority")?,
        nice: field(&rest, 19, "nice")?,
        num_threads: field(&rest, 20, "num_threads")?,
        start_code: field(&rest, 26, "startcode")?,
        end_code: field(&rest, 27, "endcode")?,
        start_stack: field(&rest, 28, "startstack")?,
        exit_signal: field(&rest, 38, "exit_signal")?,
        rt_priority: field(&rest, 40, "rt_priority")?,
        policy: field(&rest, 41, "policy")?,
        start_data: field(&rest, 45, "start_data")?,
        end_data: field(&rest, 46, "end_data")?,
        start_brk: field(&rest, 47, "start_brk")?,
        arg_start: field(&rest, 48, "arg_start")?,
        arg_end: field(&rest, 49, "arg_end")?,
        env_start: field(&rest, 50, "env_start")?,
        env_end: field(&rest, 51, "env_end")?,
        exit_code: field(&rest, 52, "exit_code")?,
    })
}

/// The fields of `/proc/PID/status` the engine uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub umask: Option<u32>,
    /// real, effective, saved, filesystem
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    /// Namespace pids, outermost first.
    pub ns_pid: Vec<i32>,
    pub ns_pgid: Vec<i32>,
    pub ns_sid: Vec<i32>,
    pub sig_pending: u64,
    pub shd_pending: u64,
    pub sig_blocked: u64,
    pub sig_ignored: u64,
    pub sig_caught: u64,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// 0 disabled, 1 strict, 2 filter
    pub seccomp: u32,
    /// The pid of the tracer, 0 if none.
    pub tracer_pid: i32,
    /// Locked memory (mlock), in kB.
    pub vm_locked_kb: u64,
}

/// The seccomp mode of thread `tid` (0 none, 1 strict, 2 filter), `None` when its status
/// cannot be read or parsed: for the callers that take a careful path when unsure.
pub fn seccomp_mode(tid: Pid) -> Option<u32> {
    // Read as bytes: a comm that is not UTF-8 must not hide the mode.
    let bytes = std::fs::read(format!("/proc/{}/status", tid.0)).ok()?;
    Status::parse(&String::from_utf8_lossy(&bytes))
        .ok()
        .map(|s| s.seccomp)
}

impl Status {
    /// Lines every kernel the engine supports prints for any task, zombies included.
    const REQUIRED: [&'static str; 12] = [
        "Uid", "Gid", "Groups", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt", "CapInh",
        "CapPrm", "CapEff", "CapBnd",
    ];

    /// Parses `/proc/PID/status`. The lines of [`Self::REQUIRED`] must be there; the others
    /// may be absent and then mean what their absence means: no `Umask` (before 4.7),
    /// no `NSpid` (before 4.1, no pid namespaces), no `CapAmb` (before 4.3, none), no
    /// `NoNewPrivs`/`Seccomp` (no such feature in the kernel, so unset), no `VmLck` (no
    /// memory: a zombie or a kernel thread), no `TracerPid` (not traced). A line that is
    /// present but does not parse is an error.
    pub fn parse(text: &str) -> Result<Status, FieldError> {
        let mut s = Status::default();
        let mut seen = Vec::new();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let ints = |n: usize| -> Result<Vec<i64>, FieldError> {
                let v: Vec<i64> = value
                    .split_whitespace()
                    .map(|v| parse_field(key, v))
                    .collect::<Result<_, _>>()?;
                if v.len() < n {
                    return Err(FieldError::garbled(key, value));
                }
                Ok(v)
            };
            let four = || -> Result<[u32; 4], FieldError> {
                let v = ints(4)?;
                let mut out = [0; 4];
                for (o, x) in out.iter_mut().zip(&v) {
                    *o = u32::try_from(*x).map_err(|_| FieldError::garbled(key, value))?;
                }
                Ok(out)
            };
            let pids = || -> Result<Vec<i32>, FieldError> {
                value
                    .split_whitespace()
                    .map(|v| parse_field(key, v))
                    .collect()
            };
            let hex = || parse_hex(key, value);
            match key {
                "Umask" => {
                    s.umask = Some(
                        u32::from_str_radix(value, 8)
                            .map_err(|_| FieldError::garbled(key, value))?,
                    )
                }
                "Uid" => s.uids = four()?,
                "Gid" => s.gids = four()?,
                "Groups" => {
                    s.groups = value
                        .split_whitespace()
                        .map(|v| parse_field(key, v))
                        .collect::<Result<_, _>>()?
                }
                "NSpid" => s.ns_pid = pids()?,
                "NSpgid" => s.ns_pgid = pids()?,
                "NSsid" => s.ns_sid = pids()?,
                "SigPnd" => s.sig_pending = hex()?,
                "ShdPnd" => s.shd_pending = hex()?,
                "SigBlk" => s.sig_blocked = hex()?,
                "SigIgn" => s.sig_ignored = hex()?,
                "SigCgt" => s.sig_caught = hex()?,
                "CapInh" => s.cap_inh = hex()?,
                "CapPrm" => s.cap_prm = hex()?,
                "CapEff" => s.cap_eff = hex()?,
                "CapBnd" => s.cap_bnd = hex()?,
                "CapAmb" => s.cap_amb = hex()?,
                "NoNewPrivs" => {
                    s.no_new_privs = match value {
                        "0" => false,
                        "1" => true,
                        _ => return Err(FieldError::garbled(key, value)),
                    }
                }
                "Seccomp" => s.seccomp = parse_field(key, value)?,
                "TracerPid" => s.tracer_pid = parse_field(key, value)?,
                "VmLck" => {
                    let kb = value
                        .strip_suffix("kB")
                        .ok_or_else(|| FieldError::garbled(key, value))?;
                    s.vm_locked_kb = parse_field(key, kb.trim())?;
                }
                _ => {}
            }
            seen.push(key);
        }
        if let Some(absent) = Self::REQUIRED.iter().find(|k| !seen.contains(k)) {
            return Err(FieldError::missing(*absent));
        }
        Ok(s)
    }
}

/// One mapping of `/proc/PID/smaps`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The path or pseudo-name (`[heap]`, `[vdso]`...), empty for anonymous memory.
    pub path: String,
    /// Two-letter VmFlags (`gd` grows down, `dd` do-not-dump, `sd` soft-dirty...).
    pub vm_flags: Vec<String>,
    /// smaps sizes in kB: resident, anonymous (incl. private copies of file pages), swap.
    pub rss_kb: u64,
    pub anonymous_kb: u64,
    pub swap_kb: u64,
}

impl MapEntry {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.vm_flags.iter().any(|f| f == flag)
    }

    /// A deleted file's path has this suffix in maps.
    pub fn is_deleted(&self) -> bool {
        self.path.ends_with(" (deleted)")
    }
}

fn parse_map_header(line: &str) -> Result<MapEntry, FieldError> {
    let mut it = line.splitn(6, ' ');
    let mut next = |name: &str| it.next().ok_or_else(|| FieldError::missing(name));
    let range = next("address")?;
    let perms_text = next("perms")?;
    let offset = parse_hex("offset", next("offset")?)?;
    let dev = next("dev")?;
    let inode = parse_field("inode", next("inode")?)?;
    let path = it.next().unwrap_or("").trim_start().to_owned();
    let (start, end) = range
        .split_once('-')
        .ok_or_else(|| FieldError::garbled("address", range))?;
    let (major, minor) = dev
        .split_once(':')
        .ok_or_else(|| FieldError::garbled("dev", dev))?;
    let perms = perms_text.as_bytes();
    if perms.len() != 4 {
        return Err(FieldError::garbled("perms", perms_text));
    }
    let dev_number =
        |text: &str| u32::from_str_radix(text, 16).map_err(|_| FieldError::garbled("dev", dev));
    Ok(MapEntry {
        start: parse_hex("address", start)?,
        end: parse_hex("address", end)?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset,
        dev_major: dev_number(major)?,
        dev_minor: dev_number(minor)?,
        inode,
        path,
        ..Default::default()
    })
}

/// Parses `/proc/PID/smaps` (or `maps`): header lines start with a hex range. An error
/// names the line (1-based) and the field.
pub fn parse_smaps(text: &str) -> Result<Vec<MapEntry>, FieldError> {
    let mut out: Vec<MapEntry> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let at = |e: FieldError| e.on_line(index + 1);
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.vm_flags = flags.split_whitespace().map(str::to_owned).collect();
            }
            continue;
        }
        let first = line.split(' ').next().unwrap_or("");
        if first.contains('-') && first.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            out.push(parse_map_header(line).map_err(at)?);
            continue;
        }
        if let (Some((key, value)), Some(last)) = (line.split_once(':'), out.last_mut()) {
            let kb = || -> Result<u64, FieldError> {
                let number = value
                    .trim()
                    .strip_suffix("kB")
                    .ok_or_else(|| FieldError::garbled(key, value.trim()))?;
                parse_field(key, number.trim())
            };
            match key {
                "Rss" => last.rss_kb = kb().map_err(at)?,
                "Anonymous" => last.anonymous_kb = kb().map_err(at)?,
                "Swap" => last.swap_kb = kb().map_err(at)?,
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Parses `/proc/PID/limits` into (soft, hard) pairs in RLIMIT_* index order;
/// "unlimited" is RLIM_INFINITY. Every line after the heading must hold both values.
pub fn parse_limits(text: &str) -> Result<Vec<(u64, u64)>, FieldError> {
    let value = |name: &str, v: &str| {
        if v == "unlimited" {
            Ok(u64::MAX)
        } else {
            parse_field(name, v)
        }
    };
    text.lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            // Names have spaces, values start at a fixed column: columns are separated by
            // two or more spaces, so split the tail after the name.
            let name = line.get(..26).unwrap_or(line).trim();
            let mut cols = line.get(26..).unwrap_or("").split_whitespace();
            let soft = cols
                .next()
                .ok_or_else(|| FieldError::missing(format!("{name}: soft limit")))?;
            let hard = cols
                .next()
                .ok_or_else(|| FieldError::missing(format!("{name}: hard limit")))?;
            Ok((
                value(&format!("{name}: soft limit"), soft)?,
                value(&format!("{name}: hard limit"), hard)?,
            ))
        })
        .collect()
}

/// Parses a `task/TID/children` file: pids separated by spaces.
fn parse_children(text: &str) -> Result<Vec<Pid>, FieldError> {
    text.split_whitespace()
        .map(|p| parse_field("child pid", p).map(Pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!((s.state, s.ppid, s.pgid, s.sid), ('S', 1, 42, 42));
        assert_eq!(
            (s.start_code, s.end_code, s.start_stack),
            (4096, 8192, 140000)
        );
        assert_eq!(s.num_threads, 3);
        assert_eq!((s.start_data, s.end_data, s.start_brk), (9000, 9100, 9200));
        assert_eq!((s.arg_start, s.env_end, s.exit_code), (140100, 140300, 7));
    }

    #[test]
    fn status_fields() {
        let text = "Umask:\t0022\nState:\tS (sleeping)\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t10 20 \nNSpid:\t77\t1\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000200\nSigBlk:\t0000000000010000\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000000000\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\nNoNewPrivs:\t1\nSeccomp:\t2\n";
        let s = Status::parse(text).unwrap();
        assert_eq!(s.umask, Some(0o22));
        assert_eq!(s.uids, [1, 2, 3, 4]);
        assert_eq!(s.gids, [5, 6, 7, 8]);
        assert_eq!(s.groups, vec![10, 20]);
        assert_eq!(s.ns_pid, vec![77, 1]);
        assert_eq!(s.sig_blocked, 1 << 16);
        assert_eq!(s.shd_pending, 1 << 9);
        assert_eq!(s.cap_eff, 0x1fffeffffff);
        assert!(s.no_new_privs);
        assert_eq!(s.seccomp, 2);
    }

    #[test]
    fn smaps_entries_and_flags() {
        let text = "\
5567283c0000-5567283c2000 r--p 00000000 fe:00 247030                     /usr/bin/cat
Size:                  8 kB
VmFlags: rd mr mw me sd
7fff2129d000-7fff212be000 rw-p 00000000 00:00 0                          [stack]
Rss:                   8 kB
VmFlags: rd wr mr mw me gd ac
7f00000000-7f00001000 rw-s 00000000 00:01 37                         /dev/zero (deleted)
";
        let maps = parse_smaps(text).unwrap();
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].path, "/usr/bin/cat");
        assert_eq!(
            (maps[0].dev_major, maps[0].dev_minor, maps[0].inode),
            (0xfe, 0, 247030)
        );
        assert!(maps[0].read && !maps[0].write && !maps[0].shared);
        assert!(maps[1].has_flag("gd"));
        assert_eq!((maps[0].rss_kb, maps[1].rss_kb), (0, 8));
        assert_eq!(maps[1].path, "[stack]");
        assert!(maps[2].shared && maps[2].is_deleted());
    }

    #[test]
    fn limits_table() {
        let text = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max open files            1024                 20000                files     
Max realtime timeout      unlimited            unlimited            us        
";
        assert_eq!(
            parse_limits(text).unwrap(),
            vec![(u64::MAX, u64::MAX), (1024, 20000), (u64::MAX, u64::MAX)]
        );
    }

    const STAT: &str = "42 (a) b (c)) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 3 0 100 0 0 18446744073709551615 4096 8192 140000 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 9000 9100 9200 140100 140200 140200 140300 7";

    #[test]
    fn stat_missing_or_garbled_fields_are_errors_naming_the_field() {
        // Cut after field 51 (env_end): exit_code is missing, not 0.
        let short = STAT.rsplit_once(' ').unwrap().0;
        assert_eq!(
            parse_stat(short).unwrap_err(),
            FieldError::Missing("52 (exit_code)".into())
        );
        let garbled = STAT.replacen(" S 1 42", " S x1 42", 1);
        assert_eq!(
            parse_stat(&garbled).unwrap_err(),
            FieldError::Garbled {
                field: "4 (ppid)".into(),
                text: "x1".into()
            }
        );
        // A ppid that does not fit an i32 is not silently truncated.
        let big = STAT.replacen(" S 1 42", " S 4294967297 42", 1);
        assert!(
            matches!(parse_stat(&big), Err(FieldError::Garbled { field, .. }) if field == "4 (ppid)")
        );
        assert_eq!(
            parse_stat("42 a S 1").unwrap_err(),
            FieldError::Missing("2 (comm)".into())
        );
        assert!(parse_stat("x (a) S").is_err());
        assert!(parse_stat("42 (a) ").is_err());
        assert!(parse_stat("42 (a) SS 1").is_err());
        assert!(parse_stat("").is_err());
    }

    const STATUS: &str = "Umask:\t0022\nState:\tS (sleeping)\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000000000\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";

    #[test]
    fn status_missing_or_garbled_fields_are_errors_naming_the_field() {
        let s = Status::parse(STATUS).unwrap();
        assert_eq!(s.cap_eff, 0x1ff_ffff_ffff);
        assert!(s.groups.is_empty());
        // Optional lines absent: their absence means "none".
        assert_eq!((s.seccomp, s.vm_locked_kb, s.no_new_privs), (0, 0, false));

        let no_blk = STATUS.replace("SigBlk:\t0000000000000000\n", "");
        assert_eq!(
            Status::parse(&no_blk).unwrap_err(),
            FieldError::Missing("SigBlk".into())
        );
        for (from, to, field) in [
            (
                "SigBlk:\t0000000000000000",
                "SigBlk:\t00000000zz000000",
                "SigBlk",
            ),
            ("Uid:\t0\t0\t0\t0", "Uid:\t0\t0\t0", "Uid"),
            ("Uid:\t0\t0\t0\t0", "Uid:\t0\t-1\t0\t0", "Uid"),
            ("Groups:\t", "Groups:\t10 x", "Groups"),
            ("Umask:\t0022", "Umask:\t0099", "Umask"),
            ("TracerPid:\t0", "TracerPid:\t", "TracerPid"),
        ] {
            let text = STATUS.replace(from, to);
            assert!(
                matches!(Status::parse(&text), Err(FieldError::Garbled { field: f, .. }) if f == field),
                "{to}: {:?}",
                Status::parse(&text)
            );
        }
        for line in [
            "Seccomp:\tfilter\n",
            "NoNewPrivs:\t2\n",
            "VmLck:\t12\n",
            "NSpid:\t1 a\n",
        ] {
            assert!(Status::parse(&format!("{STATUS}{line}")).is_err(), "{line}");
        }
        assert_eq!(
            Status::parse(&format!("{STATUS}VmLck:\t  12 kB\n"))
                .unwrap()
                .vm_locked_kb,
            12
        );
        assert_eq!(seccomp_mode(Pid(std::process::id() as i32)), Some(0));
    }

    #[test]
    fn smaps_garbled_fields_are_errors_naming_line_and_field() {
        let ok = "00400000-00401000 r-xp 00000000 fe:00 12 /bin/x\nRss:   4 kB\n";
        assert_eq!(parse_smaps(ok).unwrap()[0].rss_kb, 4);
        for (text, field) in [
            (
                "00400000-00401000 r-xp 00000000 fe:00 12 /bin/x\nRss:   four kB\n",
                "Rss on line 2",
            ),
            (
                "00400000-00401000 r-xp 00000000 fe:00 12 /bin/x\nSwap:   4\n",
                "Swap on line 2",
            ),
            (
                "00400000-00401000 r-xp 0000zz00 fe:00 12 /bin/x\n",
                "offset on line 1",
            ),
            (
                "00400000-00401000 r-x 00000000 fe:00 12 /bin/x\n",
                "perms on line 1",
            ),
            (
                "00400000-00401000 r-xp 00000000 fe00 12 /bin/x\n",
                "dev on line 1",
            ),
            (
                "00400000-00401000 r-xp 00000000 fe:00 1x2 /bin/x\n",
                "inode on line 1",
            ),
        ] {
            assert!(
                matches!(parse_smaps(text), Err(FieldError::Garbled { field: f, .. }) if f == field),
                "{field}: {:?}",
                parse_smaps(text)
            );
        }
        assert_eq!(
            parse_smaps("00400000-00401000 r-xp 00000000\n").unwrap_err(),
            FieldError::Missing("dev on line 1".into())
        );
    }

    #[test]
    fn limits_and_children_garbled_fields_are_errors() {
        let head =
            "Limit                     Soft Limit           Hard Limit           Units     \n";
        let bad = format!("{head}Max open files            1024                 lots                 files     \n");
        assert_eq!(
            parse_limits(&bad).unwrap_err(),
            FieldError::Garbled {
                field: "Max open files: hard limit".into(),
                text: "lots".into()
            }
        );
        let short = format!("{head}Max open files            1024\n");
        assert_eq!(
            parse_limits(&short).unwrap_err(),
            FieldError::Missing("Max open files: hard limit".into())
        );
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

/// One POSIX timer from `/proc/PID/timers`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PosixTimer {
    pub id: i32,
    pub signo: u32,
    pub sival_ptr: u64,
    /// SIGEV_* value, with SIGEV_THREAD_ID (4) added when it targets a thread.
    pub notify: u32,
    /// The pid or tid notified.
    pub notify_pid: i32,
    pub clock_id: u32,
}

/// Parses `/proc/PID/timers`: blocks of `ID:`, `signal: N/PTR`, `notify: KIND/pid.N` or
/// `KIND/tid.N`, and `ClockID:` lines; each block must hold all four.
pub fn parse_timers(text: &str) -> Result<Vec<PosixTimer>, FieldError> {
    // Which of signal, notify, ClockID each timer has shown.
    let mut out: Vec<(PosixTimer, [bool; 3])> = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if key == "ID" {
            let id = parse_field("ID", value)?;
            out.push((
                PosixTimer {
                    id,
                    ..Default::default()
                },
                [false; 3],
            ));
            continue;
        }
        let Some((t, seen)) = out.last_mut() else {
            return Err(FieldError::missing(format!("ID before {key}")));
        };
        let field = |name: &str| format!("{name} of timer {}", t.id);
        match key {
            "signal" => {
                let (signo, ptr) = value
                    .split_once('/')
                    .ok_or_else(|| FieldError::garbled(field("signal"), value))?;
                t.signo = parse_field(&field("signal"), signo)?;
                t.sival_ptr = parse_hex(&field("signal"), ptr.trim_start_matches("0x"))?;
                seen[0] = true;
            }
            "notify" => {
                let garbled = || FieldError::garbled(field("notify"), value);
                let (kind, target) = value.split_once('/').ok_or_else(garbled)?;
                let base = match kind {
                    "signal" => libc::SIGEV_SIGNAL,
                    "none" => libc::SIGEV_NONE,
                    "thread" => libc::SIGEV_THREAD,
                    _ => return Err(garbled()),
                } as u32;
                let (who, pid) = target.split_once('.').ok_or_else(garbled)?;
                t.notify = base
                    | match who {
                        "tid" => libc::SIGEV_THREAD_ID as u32,
                        "pid" => 0,
                        _ => return Err(garbled()),
                    };
                t.notify_pid = parse_field(&field("notify"), pid)?;
                seen[1] = true;
            }
            "ClockID" => {
                t.clock_id = parse_field(&field("ClockID"), value)?;
                seen[2] = true;
            }
            _ => {}
        }
    }
    out.into_iter()
        .map(|(t, seen)| {
            match ["signal", "notify", "ClockID"]
                .iter()
                .zip(seen)
                .find(|(_, seen)| !seen)
            {
                Some((name, _)) => Err(FieldError::missing(format!("{name} of timer {}", t.id))),
                None => Ok(t),
            }
        })
        .collect()
}

#[cfg(test)]
mod timer_tests {
    use super::*;

    #[test]
    fn timers_file() {
        let text = "ID: 0\nsignal: 36/00000000000004d2\nnotify: signal/pid.77\nClockID: 1\nID: 3\nsignal: 14/0000000000000000\nnotify: signal/tid.78\nClockID: 0\n";
        let t = parse_timers(text).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (
                t[0].id,
                t[0].signo,
                t[0].sival_ptr,
                t[0].notify,
                t[0].notify_pid,
                t[0].clock_id
            ),
            (0, 36, 1234, 0, 77, 1)
        );
        assert_eq!((t[1].id, t[1].notify), (3, libc::SIGEV_THREAD_ID as u32));
    }

    #[test]
    fn timers_garbled_or_incomplete_blocks_are_errors() {
        let ok = "ID: 5\nsignal: 14/0000000000000000\nnotify: thread/pid.9\nClockID: 1\n";
        assert_eq!(
            parse_timers(ok).unwrap()[0].notify,
            libc::SIGEV_THREAD as u32
        );
        let missing = "ID: 5\nsignal: 14/0000000000000000\nnotify: signal/pid.9\n";
        assert_eq!(
            parse_timers(missing).unwrap_err(),
            FieldError::Missing("ClockID of timer 5".into())
        );
        for bad in [
            "ID: x\n",
            "ID: 5\nsignal: 14\nnotify: signal/pid.9\nClockID: 1\n",
            "ID: 5\nsignal: 14/zz\nnotify: signal/pid.9\nClockID: 1\n",
            "ID: 5\nsignal: 14/0\nnotify: bogus/pid.9\nClockID: 1\n",
            "ID: 5\nsignal: 14/0\nnotify: signal/who.9\nClockID: 1\n",
            "ID: 5\nsignal: 14/0\nnotify: signal/pid.\nClockID: 1\n",
            "signal: 14/0\n",
        ] {
            assert!(parse_timers(bad).is_err(), "{bad}");
        }
    }
}

/// One line of a mountinfo file, as much as reopening an inode needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mnt_id: u32,
    /// The kernel's internal dev_t, as fdinfo's `sdev` shows it: 12 bits of major above
    /// 20 bits of minor.
    pub s_dev: u32,
    pub mountpoint: PathBuf,
}

/// The mounts of a mount namespace, read from a mountinfo file.
#[derive(Debug, Clone, Default)]
pub struct MountTable(pub Vec<Mount>);

impl MountTable {
    /// The mounts this process sees.
    pub fn read_self() -> io::Result<Self> {
        Self::parse(std::fs::read("/proc/self/mountinfo")?).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/self/mountinfo: {e}"),
            )
        })
    }

    /// Parses mountinfo text; every line must hold the fields this table keeps. Bytes:
    /// mount points need not be UTF-8.
    pub fn parse(text: impl AsRef<[u8]>) -> Result<Self, FieldError> {
        text.as_ref()
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.is_empty())
            .map(|(index, line)| Self::parse_line(line).map_err(|e| e.on_line(index + 1)))
            .collect::<Result<Vec<_>, _>>()
            .map(MountTable)
    }

    fn parse_line(line: &[u8]) -> Result<Mount, FieldError> {
        let mut fields = line.split(|&b| b == b' ');
        let mut next = |name: &str| fields.next().ok_or_else(|| FieldError::missing(name));
        // The fields before the mount point are numbers: ASCII.
        let mut ascii = |name: &str| {
            let field = next(name)?;
            std::str::from_utf8(field)
                .map_err(|_| FieldError::garbled(name, &String::from_utf8_lossy(field)))
        };
        let mnt_id = parse_field("mount ID", ascii("mount ID")?)?;
        ascii("parent ID")?;
        let devno = ascii("major:minor")?;
        let (maj, min) = devno
            .split_once(':')
            .ok_or_else(|| FieldError::garbled("major:minor", devno))?;
        let (maj, min): (u32, u32) = (parse_field("major", maj)?, parse_field("minor", min)?);
        next("root")?;
        let mountpoint = next("mount point")?;
        Ok(Mount {
            mnt_id,
            s_dev: (maj << 20) | (min & 0xf_ffff),
            mountpoint: PathBuf::from(std::ffi::OsString::from_vec(unescape_mountinfo(mountpoint))),
        })
    }

    /// Opens the inode a file handle names, trying each mount of device `s_dev` (a bind
    /// mount of a subtree may not reach it). Returns the fd and the mount that worked.
    pub fn open_by_handle(
        &self,
        s_dev: u32,
        handle_type: i32,
        handle: &[u8],
        flags: libc::c_int,
    ) -> io::Result<(OwnedFd, &Mount)> {
        let mut last = io::Error::from_raw_os_error(libc::ENODEV);
        for mount in self.0.iter().filter(|m| m.s_dev == s_dev) {
            let dir = match crate::sys::open_path(
                &mount.mountpoint,
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            ) {
                Ok(d) => d,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match crate::sys::open_by_handle_at(dir.as_fd(), handle_type, handle, flags) {
                Ok(fd) => return Ok((fd, mount)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape_mountinfo(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        if let Some(v) = octal {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod mount_tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn mountinfo_lines() {
        let text = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    30 1 254:1 / / rw - ext4 /dev/vda1 rw\n\
                    31 30 254:1 /x /mnt/with\\040space rw - ext4 /dev/vda1 rw\n";
        let m = MountTable::parse(text).unwrap().0;
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[1],
            Mount {
                mnt_id: 30,
                s_dev: (254 << 20) | 1,
                mountpoint: PathBuf::from("/")
            }
        );
        assert_eq!(m[2].mountpoint, PathBuf::from("/mnt/with space"));
        assert_eq!(unescape_mountinfo(b"a\\134b\\"), b"a\\b\\");
        // Multi-byte and non-UTF-8 bytes pass through (only space, tab, newline and
        // backslash are escaped by the kernel).
        assert_eq!(unescape_mountinfo("\\é\\ü".as_bytes()), "\\é\\ü".as_bytes());
        let odd = MountTable::parse(b"40 1 0:5 / /mnt/dir-\xff\\040x rw - tmpfs t rw\n").unwrap();
        assert_eq!(
            odd.0[0].mountpoint.as_os_str().as_bytes(),
            b"/mnt/dir-\xff x"
        );
        assert_eq!(
            MountTable::parse(format!("{text}garbage\n")).unwrap_err(),
            FieldError::Garbled {
                field: "mount ID on line 4".into(),
                text: "garbage".into()
            }
        );
        assert!(MountTable::parse("30 1 254x1 / / rw - ext4 /dev/vda1 rw\n").is_err());
    }
}
