//! Reading a task's state from /proc. The parsers take text, so they are tested on
//! strings without any process; `ProcDir` keeps an fd on `/proc/PID` and opens every file
//! relative to it, so a recycled pid cannot swap the task under us mid-read.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
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
        // SAFETY: openat on a directory fd we own with a NUL-terminated relative name;
        // the returned fd is new and owned by the File below.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                cname.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor returned by openat above.
        Ok(unsafe { File::from_raw_fd(fd) })
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

    /// Names of the entries of a subdirectory (`task`, `fd`...), as numbers.
    pub fn list_numbers(&self, name: &str) -> io::Result<Vec<i32>> {
        let path = format!("/proc/self/fd/{}/{name}", self.dir.as_raw_fd());
        let mut out: Vec<i32> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    pub fn stat(&self) -> io::Result<Stat> {
        parse_stat(&self.read_string("stat")?).ok_or_else(|| bad_format(self.pid, "stat"))
    }

    pub fn status(&self) -> io::Result<Status> {
        Ok(parse_status(&self.read_string("status")?))
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
                    text.split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .map(Pid),
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
        parse_smaps(&self.read_string("smaps")?).ok_or_else(|| bad_format(self.pid, "smaps"))
    }

    /// Every mapping without VmFlags or sizes (`maps`: no page-table walk).
    pub fn maps_plain(&self) -> io::Result<Vec<MapEntry>> {
        parse_smaps(&self.read_string("maps")?).ok_or_else(|| bad_format(self.pid, "maps"))
    }

    pub fn limits(&self) -> io::Result<Vec<(u64, u64)>> {
        Ok(parse_limits(&self.read_string("limits")?))
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

    /// A small integer file (`personality` is hex, the others decimal).
    pub fn read_number(&self, name: &str, radix: u32) -> io::Result<i64> {
        let text = self.read_string(name)?;
        i64::from_str_radix(text.trim(), radix)
            .or_else(|_| text.trim().parse::<u64>().map(|v| v as i64))
            .map_err(|_| bad_format(self.pid, name))
    }
}

fn bad_format(pid: Pid, name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("/proc/{pid}/{name} has an unexpected format"),
    )
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
/// and parentheses, so it ends at the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_owned();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let field = |n: usize| rest.get(n - 3).copied().unwrap_or("0");
    let num = |n: usize| field(n).parse::<i64>().unwrap_or(0);
    let unum = |n: usize| field(n).parse::<u64>().unwrap_or(0);
    Some(Stat {
        pid,
        comm,
        state: field(3).chars().next()?,
        ppid: num(4) as i32,
        pgid: num(5) as i32,
        sid: num(6) as i32,
        tty_nr: num(7) as i32,
        flags: unum(9) as u32,
        priority: num(18),
        nice: num(19),
        num_threads: num(20),
        start_code: unum(26),
        end_code: unum(27),
        start_stack: unum(28),
        exit_signal: num(38) as i32,
        rt_priority: unum(40) as u32,
        policy: unum(41) as u32,
        start_data: unum(45),
        end_data: unum(46),
        start_brk: unum(47),
        arg_start: unum(48),
        arg_end: unum(49),
        env_start: unum(50),
        env_end: unum(51),
        exit_code: num(52) as i32,
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

pub fn parse_status(text: &str) -> Status {
    let mut s = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let hex = || u64::from_str_radix(value, 16).unwrap_or(0);
        let ints = || {
            value
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect::<Vec<i64>>()
        };
        let four = || {
            let v = ints();
            std::array::from_fn(|i| v.get(i).copied().unwrap_or(0) as u32)
        };
        match key {
            "Umask" => s.umask = u32::from_str_radix(value, 8).ok(),
            "Uid" => s.uids = four(),
            "Gid" => s.gids = four(),
            "Groups" => s.groups = ints().into_iter().map(|g| g as u32).collect(),
            "NSpid" => s.ns_pid = ints().into_iter().map(|p| p as i32).collect(),
            "NSpgid" => s.ns_pgid = ints().into_iter().map(|p| p as i32).collect(),
            "NSsid" => s.ns_sid = ints().into_iter().map(|p| p as i32).collect(),
            "SigPnd" => s.sig_pending = hex(),
            "ShdPnd" => s.shd_pending = hex(),
            "SigBlk" => s.sig_blocked = hex(),
            "SigIgn" => s.sig_ignored = hex(),
            "SigCgt" => s.sig_caught = hex(),
            "CapInh" => s.cap_inh = hex(),
            "CapPrm" => s.cap_prm = hex(),
            "CapEff" => s.cap_eff = hex(),
            "CapBnd" => s.cap_bnd = hex(),
            "CapAmb" => s.cap_amb = hex(),
            "NoNewPrivs" => s.no_new_privs = value == "1",
            "Seccomp" => s.seccomp = value.parse().unwrap_or(0),
            "TracerPid" => s.tracer_pid = value.parse().unwrap_or(0),
            "VmLck" => {
                s.vm_locked_kb = value.trim_end_matches(" kB").parse().unwrap_or(0);
            }
            _ => {}
        }
    }
    s
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

fn parse_map_header(line: &str) -> Option<MapEntry> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim_start().to_owned();
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    if perms.len() < 4 {
        return None;
    }
    Some(MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset,
        dev_major: u32::from_str_radix(major, 16).ok()?,
        dev_minor: u32::from_str_radix(minor, 16).ok()?,
        inode,
        path,
        ..Default::default()
    })
}

/// Parses `/proc/PID/smaps` (or `maps`): header lines start with a hex range.
pub fn parse_smaps(text: &str) -> Option<Vec<MapEntry>> {
    let mut out: Vec<MapEntry> = Vec::new();
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.vm_flags = flags.split_whitespace().map(str::to_owned).collect();
            }
            continue;
        }
        if let (Some((key, value)), Some(last)) = (line.split_once(':'), out.last_mut()) {
            let kb = || {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(0)
            };
            match key {
                "Rss" => last.rss_kb = kb(),
                "Anonymous" => last.anonymous_kb = kb(),
                "Swap" => last.swap_kb = kb(),
                _ => {}
            }
        }
        let first = line.split(' ').next().unwrap_or("");
        if first.contains('-') && first.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            out.push(parse_map_header(line)?);
        }
    }
    Some(out)
}

/// Parses `/proc/PID/limits` into (soft, hard) pairs in RLIMIT_* index order;
/// "unlimited" is RLIM_INFINITY.
pub fn parse_limits(text: &str) -> Vec<(u64, u64)> {
    let value = |v: &str| {
        if v == "unlimited" {
            u64::MAX
        } else {
            v.parse().unwrap_or(0)
        }
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            // Names have spaces, values start at a fixed column: columns are separated by
            // two or more spaces, so split the tail after the name.
            let tail = line.get(26..)?;
            let mut cols = tail.split_whitespace();
            Some((value(cols.next()?), value(cols.next()?)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let text = "42 (a) b (c)) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 3 0 100 0 0 18446744073709551615 4096 8192 140000 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 9000 9100 9200 140100 140200 140200 140300 7";
        let s = parse_stat(text).unwrap();
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
        let text = "Umask:\t0022\nState:\tS (sleeping)\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t10 20 \nNSpid:\t77\t1\nSigBlk:\t0000000000010000\nShdPnd:\t0000000000000200\nCapEff:\t000001fffeffffff\nNoNewPrivs:\t1\nSeccomp:\t2\n";
        let s = parse_status(text);
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
            parse_limits(text),
            vec![(u64::MAX, u64::MAX), (1024, 20000), (u64::MAX, u64::MAX)]
        );
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
/// `KIND/tid.N`, and `ClockID:` lines.
pub fn parse_timers(text: &str) -> Vec<PosixTimer> {
    let mut out: Vec<PosixTimer> = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if key == "ID" {
            out.push(PosixTimer {
                id: value.parse().unwrap_or(0),
                ..Default::default()
            });
            continue;
        }
        let Some(t) = out.last_mut() else { continue };
        match key {
            "signal" => {
                let (signo, ptr) = value.split_once('/').unwrap_or((value, "0"));
                t.signo = signo.parse().unwrap_or(0);
                t.sival_ptr = u64::from_str_radix(ptr.trim_start_matches("0x"), 16).unwrap_or(0);
            }
            "notify" => {
                let (kind, target) = value.split_once('/').unwrap_or((value, ""));
                let base = match kind {
                    "signal" => libc::SIGEV_SIGNAL,
                    "none" => libc::SIGEV_NONE,
                    _ => libc::SIGEV_THREAD,
                } as u32;
                let (who, pid) = target.split_once('.').unwrap_or(("pid", "0"));
                t.notify = base
                    | if who == "tid" {
                        libc::SIGEV_THREAD_ID as u32
                    } else {
                        0
                    };
                t.notify_pid = pid.parse().unwrap_or(0);
            }
            "ClockID" => t.clock_id = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod timer_tests {
    use super::*;

    #[test]
    fn timers_file() {
        let text = "ID: 0\nsignal: 36/00000000000004d2\nnotify: signal/pid.77\nClockID: 1\nID: 3\nsignal: 14/0000000000000000\nnotify: signal/tid.78\nClockID: 0\n";
        let t = parse_timers(text);
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
        Ok(Self::parse(&std::fs::read_to_string(
            "/proc/self/mountinfo",
        )?))
    }

    /// Parses mountinfo text; lines it cannot read are skipped.
    pub fn parse(text: &str) -> Self {
        MountTable(
            text.lines()
                .filter_map(|line| {
                    let mut fields = line.split(' ');
                    let mnt_id = fields.next()?.parse().ok()?;
                    let devno = fields.nth(1)?;
                    let mountpoint = fields.nth(1)?;
                    let (maj, min) = devno.split_once(':')?;
                    let (maj, min): (u32, u32) = (maj.parse().ok()?, min.parse().ok()?);
                    Some(Mount {
                        mnt_id,
                        s_dev: (maj << 20) | (min & 0xf_ffff),
                        mountpoint: PathBuf::from(unescape_mountinfo(mountpoint)),
                    })
                })
                .collect(),
        )
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
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod mount_tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let text = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    30 1 254:1 / / rw - ext4 /dev/vda1 rw\n\
                    31 30 254:1 /x /mnt/with\\040space rw - ext4 /dev/vda1 rw\n\
                    garbage\n";
        let m = MountTable::parse(text).0;
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
        assert_eq!(unescape_mountinfo("a\\134b\\"), "a\\b\\");
    }
}
