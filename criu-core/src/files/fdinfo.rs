//! Parsers for `/proc/PID/fdinfo/N`. They take the text, so they are tested on strings.
//!
//! Every file shows `pos:`, `flags:` (octal, with `O_CLOEXEC` added when the descriptor
//! has `FD_CLOEXEC`), `mnt_id:` and `ino:`; then each kind adds its own lines: eventfd
//! `eventfd-count:`, epoll one `tfd:` line per watched file, timerfd five lines, signalfd
//! `sigmask:`, inotify one `inotify wd:` line per watch, ptys `tty-index:`, and locks
//! held through the file `lock:`.

use std::fmt;

/// A line (or a missing one) that does not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// What was being read (`"flags"`, `"tfd"`...).
    pub what: &'static str,
    /// The offending line, or empty when the line is missing.
    pub line: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line.is_empty() {
            write!(f, "no {} line", self.what)
        } else {
            write!(f, "bad {} line {:?}", self.what, self.line)
        }
    }
}

impl std::error::Error for ParseError {}

fn bad(what: &'static str, line: &str) -> ParseError {
    ParseError {
        what,
        line: line.to_owned(),
    }
}

/// The lines every fdinfo file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Common {
    pub pos: u64,
    /// The open file description's flags, `O_CLOEXEC` removed.
    pub flags: u32,
    /// Whether the descriptor has `FD_CLOEXEC` (shown by the kernel as `O_CLOEXEC`).
    pub cloexec: bool,
    pub mnt_id: i32,
    pub ino: Option<u64>,
    /// The file has `lock:` lines: a POSIX, OFD or flock lock, or a lease.
    pub has_locks: bool,
}

/// The value after `name:` on a line starting with it, trimmed.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.strip_prefix(name)?.strip_prefix(':').map(str::trim)
}

fn parse_u64(s: &str, radix: u32) -> Option<u64> {
    u64::from_str_radix(s.trim(), radix).ok()
}

/// Reads the common lines. `flags` is octal in the kernel's output.
pub fn parse_common(text: &str) -> Result<Common, ParseError> {
    let (mut pos, mut flags, mut mnt_id, mut ino) = (None, None, -1, None);
    let mut has_locks = false;
    for line in text.lines() {
        if let Some(v) = field(line, "pos") {
            pos = Some(v.parse::<u64>().map_err(|_| bad("pos", line))?);
        } else if let Some(v) = field(line, "flags") {
            flags = Some(
                parse_u64(v, 8)
                    .and_then(|f| u32::try_from(f).ok())
                    .ok_or_else(|| bad("flags", line))?,
            );
        } else if let Some(v) = field(line, "mnt_id") {
            mnt_id = v.parse::<i32>().map_err(|_| bad("mnt_id", line))?;
        } else if let Some(v) = field(line, "ino") {
            ino = Some(v.parse::<u64>().map_err(|_| bad("ino", line))?);
        } else if field(line, "lock").is_some() {
            has_locks = true;
        }
    }
    let pos = pos.ok_or_else(|| bad("pos", ""))?;
    let flags = flags.ok_or_else(|| bad("flags", ""))?;
    let cloexec = flags & libc::O_CLOEXEC as u32 != 0;
    Ok(Common {
        pos,
        flags: flags & !(libc::O_CLOEXEC as u32),
        cloexec,
        mnt_id,
        ino,
        has_locks,
    })
}

/// Splits `key: value` and `key:value` tokens of a line into pairs, in order. Tokens
/// without a colon are returned with an empty value.
fn pairs(line: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut tokens = line.split_whitespace().peekable();
    while let Some(tok) = tokens.next() {
        match tok.split_once(':') {
            Some((key, "")) => {
                // "key:   value": the value is the next token, unless that is a key too.
                let value = match tokens.peek() {
                    Some(next) if !next.contains(':') => tokens.next().unwrap_or(""),
                    _ => "",
                };
                out.push((key, value));
            }
            Some((key, value)) => out.push((key, value)),
            None => out.push((tok, "")),
        }
    }
    out
}

fn get<'a>(pairs: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// An eventfd's counter and whether it is in semaphore mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eventfd {
    pub count: u64,
    pub semaphore: bool,
}

pub fn parse_eventfd(text: &str) -> Result<Eventfd, ParseError> {
    let mut count = None;
    let mut semaphore = false;
    for line in text.lines() {
        if let Some(v) = field(line, "eventfd-count") {
            count = Some(parse_u64(v, 16).ok_or_else(|| bad("eventfd-count", line))?);
        } else if let Some(v) = field(line, "eventfd-semaphore") {
            semaphore = v != "0";
        }
    }
    Ok(Eventfd {
        count: count.ok_or_else(|| bad("eventfd-count", ""))?,
        semaphore,
    })
}

/// One file watched by an epoll instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollTarget {
    /// The descriptor number it was added under.
    pub tfd: i32,
    pub events: u32,
    pub data: u64,
    /// Position, inode and device of the target file (kernels since 3.19).
    pub pos: Option<u64>,
    pub ino: Option<u64>,
    pub sdev: Option<u32>,
}

/// The `tfd:` lines, in the kernel's order:
/// `tfd:        5 events:       19 data:                7  pos:0 ino:40e sdev:10`.
pub fn parse_epoll(text: &str) -> Result<Vec<EpollTarget>, ParseError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("tfd:")) {
        let p = pairs(line);
        let err = || bad("tfd", line);
        let tfd = get(&p, "tfd")
            .and_then(|v| v.parse().ok())
            .ok_or_else(err)?;
        let events = get(&p, "events")
            .and_then(|v| parse_u64(v, 16))
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(err)?;
        let data = get(&p, "data")
            .and_then(|v| parse_u64(v, 16))
            .ok_or_else(err)?;
        let pos = match get(&p, "pos") {
            Some(v) => Some(v.parse::<u64>().map_err(|_| err())?),
            None => None,
        };
        let ino = match get(&p, "ino") {
            Some(v) => Some(parse_u64(v, 16).ok_or_else(err)?),
            None => None,
        };
        let sdev = match get(&p, "sdev") {
            Some(v) => Some(
                parse_u64(v, 16)
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(err)?,
            ),
            None => None,
        };
        out.push(EpollTarget {
            tfd,
            events,
            data,
            pos,
            ino,
            sdev,
        });
    }
    Ok(out)
}

/// A signalfd's mask (bit n-1 stands for signal n).
pub fn parse_signalfd(text: &str) -> Result<u64, ParseError> {
    let line = text
        .lines()
        .find(|l| l.starts_with("sigmask:"))
        .ok_or_else(|| bad("sigmask", ""))?;
    field(line, "sigmask")
        .and_then(|v| parse_u64(v, 16))
        .ok_or_else(|| bad("sigmask", line))
}

/// A timerfd's clock and timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timerfd {
    pub clockid: u32,
    /// Expirations not read yet.
    pub ticks: u64,
    /// `TFD_TIMER_ABSTIME`, `TFD_TIMER_CANCEL_ON_SET` (octal in the text).
    pub settime_flags: u32,
    /// Time to the next expiry, (seconds, nanoseconds).
    pub value: (u64, u64),
    pub interval: (u64, u64),
}

fn parse_pair(v: &str) -> Option<(u64, u64)> {
    let inner = v.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (a, b) = inner.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

pub fn parse_timerfd(text: &str) -> Result<Timerfd, ParseError> {
    let mut t = Timerfd::default();
    let mut seen = 0u8;
    for line in text.lines() {
        if let Some(v) = field(line, "clockid") {
            t.clockid = v.parse().map_err(|_| bad("clockid", line))?;
            seen |= 1;
        } else if let Some(v) = field(line, "ticks") {
            t.ticks = v.parse().map_err(|_| bad("ticks", line))?;
            seen |= 2;
        } else if let Some(v) = field(line, "settime flags") {
            t.settime_flags = parse_u64(v, 8)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| bad("settime flags", line))?;
            seen |= 4;
        } else if let Some(v) = field(line, "it_value") {
            t.value = parse_pair(v).ok_or_else(|| bad("it_value", line))?;
            seen |= 8;
        } else if let Some(v) = field(line, "it_interval") {
            t.interval = parse_pair(v).ok_or_else(|| bad("it_interval", line))?;
            seen |= 16;
        }
    }
    for (bit, what) in [
        (1, "clockid"),
        (2, "ticks"),
        (4, "settime flags"),
        (8, "it_value"),
        (16, "it_interval"),
    ] {
        if seen & bit == 0 {
            return Err(bad(what, ""));
        }
    }
    Ok(t)
}

/// One inotify watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InotifyWatch {
    pub wd: u32,
    pub ino: u64,
    pub sdev: u32,
    pub mask: u32,
    pub ignored_mask: u32,
    /// The watched inode's file handle: (bytes, type, handle), `None` when the kernel
    /// could not encode one.
    pub handle: Option<(u32, u32, Vec<u8>)>,
}

/// The `inotify wd:` lines: `inotify wd:1 ino:3c4a7 sdev:fe00000 mask:300
/// ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000` (all hex).
pub fn parse_inotify(text: &str) -> Result<Vec<InotifyWatch>, ParseError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("inotify ")) {
        let p = pairs(line);
        let err = || bad("inotify wd", line);
        let hex32 = |key| {
            get(&p, key)
                .and_then(|v| parse_u64(v, 16))
                .and_then(|v| u32::try_from(v).ok())
        };
        let wd = hex32("wd").ok_or_else(err)?;
        let ino = get(&p, "ino")
            .and_then(|v| parse_u64(v, 16))
            .ok_or_else(err)?;
        let sdev = hex32("sdev").ok_or_else(err)?;
        let mask = hex32("mask").ok_or_else(err)?;
        let ignored_mask = hex32("ignored_mask").ok_or_else(err)?;
        let handle = match (
            hex32("fhandle-bytes"),
            hex32("fhandle-type"),
            get(&p, "f_handle"),
        ) {
            (Some(bytes), Some(kind), Some(hex)) => {
                Some((bytes, kind, decode_hex(hex).ok_or_else(err)?))
            }
            _ => None,
        };
        out.push(InotifyWatch {
            wd,
            ino,
            sdev,
            mask,
            ignored_mask,
            handle,
        });
    }
    Ok(out)
}

/// What a fanotify mark is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanotifyTarget {
    /// An inode: its number, device (the kernel's encoding) and file handle (bytes,
    /// type, handle; `None` when the kernel could not encode one).
    Inode {
        ino: u64,
        sdev: u32,
        handle: Option<(u32, u32, Vec<u8>)>,
    },
    /// A mount, by the id `/proc/PID/mountinfo` shows.
    Mount { mnt_id: u32 },
    /// A whole filesystem (`FAN_MARK_FILESYSTEM`), by device.
    Filesystem { sdev: u32 },
}

/// One fanotify mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanotifyMark {
    pub target: FanotifyTarget,
    /// The `FAN_MARK_*` flags the mark keeps (`FAN_MARK_IGNORED_SURV_MODIFY`...).
    pub mflags: u32,
    pub mask: u32,
    pub ignored_mask: u32,
}

/// A fanotify group as its fdinfo shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fanotify {
    /// `fanotify_init()` flags and event flags.
    pub flags: u32,
    pub event_flags: u32,
    pub marks: Vec<FanotifyMark>,
}

/// The `fanotify` lines: `fanotify flags:10 event-flags:8000`, then one line per mark:
/// `fanotify ino:.. sdev:.. mflags:.. mask:.. ignored_mask:.. fhandle-bytes:..
/// fhandle-type:.. f_handle:..`, `fanotify mnt_id:.. mflags:..` or `fanotify sdev:..
/// mflags:..` (all hex).
pub fn parse_fanotify(text: &str) -> Result<Fanotify, ParseError> {
    let mut out = Fanotify::default();
    let mut header = false;
    for line in text.lines().filter(|l| l.starts_with("fanotify ")) {
        let p = pairs(line);
        let err = || bad("fanotify", line);
        let hex32 = |key| {
            get(&p, key)
                .and_then(|v| parse_u64(v, 16))
                .and_then(|v| u32::try_from(v).ok())
        };
        let first = p.get(1).map(|(k, _)| *k).unwrap_or("");
        if first == "flags" {
            out.flags = hex32("flags").ok_or_else(err)?;
            out.event_flags = hex32("event-flags").ok_or_else(err)?;
            header = true;
            continue;
        }
        let target = match first {
            "ino" => FanotifyTarget::Inode {
                ino: get(&p, "ino")
                    .and_then(|v| parse_u64(v, 16))
                    .ok_or_else(err)?,
                sdev: hex32("sdev").ok_or_else(err)?,
                handle: match (
                    hex32("fhandle-bytes"),
                    hex32("fhandle-type"),
                    get(&p, "f_handle"),
                ) {
                    (Some(bytes), Some(kind), Some(hex)) => {
                        Some((bytes, kind, decode_hex(hex).ok_or_else(err)?))
                    }
                    _ => None,
                },
            },
            "mnt_id" => FanotifyTarget::Mount {
                mnt_id: hex32("mnt_id").ok_or_else(err)?,
            },
            "sdev" => FanotifyTarget::Filesystem {
                sdev: hex32("sdev").ok_or_else(err)?,
            },
            _ => return Err(err()),
        };
        out.marks.push(FanotifyMark {
            target,
            mflags: hex32("mflags").ok_or_else(err)?,
            mask: hex32("mask").ok_or_else(err)?,
            ignored_mask: hex32("ignored_mask").ok_or_else(err)?,
        });
    }
    if !header {
        return Err(bad("fanotify flags", ""));
    }
    Ok(out)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The family of a lock shown on a `lock:` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// `fcntl(F_SETLK)`/`lockf`: owned by the process (its fd table), over a byte range.
    Posix,
    /// `flock(2)`: owned by the open file description, whole file.
    Flock,
    /// Open file description locks (`F_OFD_SETLK`): owned by the description, over a
    /// byte range.
    Ofd,
    /// `F_SETLEASE` leases: owned by the open file description, whole file.
    Lease,
    /// Anything else the kernel may show (NFS delegations, `ACCESS`, `UNKNOWN`).
    Other,
}

/// Read (shared) or write (exclusive); `Unlock` is what a lease being broken shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockType {
    Read,
    Write,
    Unlock,
}

/// One `lock:` line: `lock:\t1: POSIX  ADVISORY  WRITE 578 fe:00:10015553 5 14`.
///
/// The kernel shows, on a file's fdinfo, the locks taken through that very open file
/// description: the flock and OFD locks of the description (in every process holding
/// it), and the POSIX locks of the reading process's fd table that were taken through
/// it. Blocked waiters are never shown there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLock {
    pub kind: LockKind,
    pub ty: LockType,
    /// The owner's pid in the reader's pid namespace: -1 for OFD locks, 0 for an owner
    /// the reader cannot see. Only informative: the fd that shows a lock says who holds
    /// it.
    pub pid: i32,
    /// The first byte locked.
    pub start: u64,
    /// The last byte locked; `None` to the end of the file, however far it grows (`EOF`).
    pub end: Option<u64>,
    /// A lease being broken (`BREAKING`): someone opened the file in a way that
    /// conflicts with it and waits; `ty` is then what it is being broken to.
    pub breaking: bool,
}

/// The `lock:` lines, in the kernel's order (flock, then POSIX and OFD, then leases).
pub fn parse_locks(text: &str) -> Result<Vec<FileLock>, ParseError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(v) = field(line, "lock") else {
            continue;
        };
        let err = || bad("lock", line);
        // "1:", kind, mode (ADVISORY, or a lease's state), type, pid, dev:ino, start, end.
        let tokens: Vec<&str> = v.split_whitespace().collect();
        let [id, kind, mode, ty, pid, _inode, start, end] = tokens[..] else {
            return Err(err());
        };
        if !id.ends_with(':') {
            return Err(err());
        }
        let kind = match kind {
            "POSIX" => LockKind::Posix,
            "FLOCK" => LockKind::Flock,
            "OFDLCK" => LockKind::Ofd,
            "LEASE" => LockKind::Lease,
            _ => LockKind::Other,
        };
        let ty = match ty {
            "READ" => LockType::Read,
            "WRITE" => LockType::Write,
            "UNLCK" => LockType::Unlock,
            _ => return Err(err()),
        };
        out.push(FileLock {
            kind,
            ty,
            pid: pid.parse().map_err(|_| err())?,
            start: start.parse().map_err(|_| err())?,
            end: match end {
                "EOF" => None,
                n => Some(n.parse().map_err(|_| err())?),
            },
            breaking: mode == "BREAKING",
        });
    }
    Ok(out)
}

/// The pty number of a `/dev/ptmx` file (`tty-index:`).
pub fn parse_tty_index(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| field(l, "tty-index")?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_lines() {
        let c = parse_common("pos:\t4\nflags:\t02100002\nmnt_id:\t27\nino:\t246951\n").unwrap();
        assert_eq!(c.pos, 4);
        assert_eq!(c.flags, 0o100002);
        assert!(c.cloexec);
        assert_eq!(c.mnt_id, 27);
        assert_eq!(c.ino, Some(246951));
        assert!(!c.has_locks);
        let c = parse_common("pos:\t0\nflags:\t00\nmnt_id:\t17\n").unwrap();
        assert!(!c.cloexec);
        assert_eq!(c.ino, None);
    }

    #[test]
    fn common_lines_refuse_garbage() {
        assert_eq!(parse_common("flags:\t02\n").unwrap_err(), bad("pos", ""));
        assert_eq!(
            parse_common("pos:\t0\nflags:\t09\n").unwrap_err(),
            bad("flags", "flags:\t09")
        );
        assert_eq!(parse_common("pos: x\nflags: 0\n").unwrap_err().what, "pos");
        assert!(parse_common("").is_err());
        // A flags value that does not fit 32 bits.
        assert!(parse_common("pos:\t0\nflags:\t077777777777777\n").is_err());
    }

    #[test]
    fn locks_are_noticed() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t27\nino:\t5\nlock:\t1: POSIX  ADVISORY  WRITE 12 fe:00:5 0 EOF\n";
        assert!(parse_common(text).unwrap().has_locks);
    }

    #[test]
    fn lock_lines() {
        let text = "pos:\t0\nflags:\t02100002\nmnt_id:\t27\nino:\t10015553\n\
            lock:\t1: POSIX  ADVISORY  WRITE 578 fe:00:10015553 5 14\n\
            lock:\t2: POSIX  ADVISORY  READ 578 fe:00:10015553 50 EOF\n\
            lock:\t3: OFDLCK ADVISORY  WRITE -1 fe:00:10015553 80 EOF\n\
            lock:\t4: FLOCK  ADVISORY  READ 31003 fe:00:10015553 0 EOF\n\
            lock:\t5: LEASE  BREAKING  UNLCK 12 fe:00:10015553 0 EOF\n\
            lock:\t6: DELEG  ACTIVE    READ 12 fe:00:10015553 0 EOF\n\
            lock:\t7: LEASE  ACTIVE    WRITE 12 fe:00:10015553 0 EOF\n";
        let locks = parse_locks(text).unwrap();
        let lock = |kind, ty, pid, start, end| FileLock {
            kind,
            ty,
            pid,
            start,
            end,
            breaking: false,
        };
        let breaking = FileLock {
            breaking: true,
            ..lock(LockKind::Lease, LockType::Unlock, 12, 0, None)
        };
        assert_eq!(
            locks,
            [
                lock(LockKind::Posix, LockType::Write, 578, 5, Some(14)),
                lock(LockKind::Posix, LockType::Read, 578, 50, None),
                lock(LockKind::Ofd, LockType::Write, -1, 80, None),
                lock(LockKind::Flock, LockType::Read, 31003, 0, None),
                breaking,
                lock(LockKind::Other, LockType::Read, 12, 0, None),
                lock(LockKind::Lease, LockType::Write, 12, 0, None),
            ]
        );
        assert!(parse_common(text).unwrap().has_locks);
        assert_eq!(parse_locks("pos:\t0\nflags:\t02\n").unwrap(), []);
    }

    #[test]
    fn lock_lines_refuse_garbage() {
        for line in [
            // An owner invisible to the reader on old kernels left the line empty.
            "lock:\t",
            "lock:\t1: POSIX  ADVISORY  WRITE 578 fe:00:5 0",
            "lock:\t1: POSIX  ADVISORY  MAYBE 578 fe:00:5 0 EOF",
            "lock:\t1: POSIX  ADVISORY  WRITE x fe:00:5 0 EOF",
            "lock:\t1: POSIX  ADVISORY  WRITE 5 fe:00:5 -1 EOF",
            "lock:\t1: POSIX  ADVISORY  WRITE 5 fe:00:5 0 END",
            "lock:\t1 POSIX  ADVISORY  WRITE 5 fe:00:5 0 EOF",
        ] {
            assert_eq!(parse_locks(line).unwrap_err().what, "lock", "{line}");
        }
    }

    #[test]
    fn eventfd() {
        let text = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\neventfd-count:               2a\neventfd-id: 1\neventfd-semaphore: 0\n";
        assert_eq!(
            parse_eventfd(text).unwrap(),
            Eventfd {
                count: 42,
                semaphore: false
            }
        );
        assert!(
            parse_eventfd("eventfd-count: 1\neventfd-semaphore: 1\n")
                .unwrap()
                .semaphore
        );
        assert!(parse_eventfd("pos: 0\n").is_err());
        assert!(parse_eventfd("eventfd-count: zz\n").is_err());
    }

    #[test]
    fn epoll_targets() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\n\
            tfd:        5 events:       19 data:                7  pos:0 ino:40e sdev:10\n\
            tfd:        3 events:       19 data: ffffffffffffffff  pos:12 ino:9d8d sdev:f\n";
        let t = parse_epoll(text).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0],
            EpollTarget {
                tfd: 5,
                events: 0x19,
                data: 7,
                pos: Some(0),
                ino: Some(0x40e),
                sdev: Some(0x10)
            }
        );
        assert_eq!(t[1].data, u64::MAX);
        assert_eq!(t[1].pos, Some(12));
        // Old kernels: no pos/ino/sdev.
        let t = parse_epoll("tfd:        3 events:       19 data:                7\n").unwrap();
        assert_eq!(t[0].ino, None);
        assert!(parse_epoll("tfd: x events: 1 data: 1\n").is_err());
        assert!(parse_epoll("tfd: 3 events: 1\n").is_err());
        assert!(parse_epoll("pos: 0\n").unwrap().is_empty());
    }

    #[test]
    fn signalfd() {
        assert_eq!(
            parse_signalfd("pos:\t0\nsigmask:\t0000000000000802\n").unwrap(),
            0x802
        );
        assert!(parse_signalfd("pos:\t0\n").is_err());
        assert!(parse_signalfd("sigmask:\tnope\n").is_err());
    }

    #[test]
    fn timerfd() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\nclockid: 1\nticks: 3\nsettime flags: 01\n\
            it_value: (4, 999973881)\nit_interval: (1, 0)\n";
        let t = parse_timerfd(text).unwrap();
        assert_eq!(
            t,
            Timerfd {
                clockid: 1,
                ticks: 3,
                settime_flags: 1,
                value: (4, 999973881),
                interval: (1, 0)
            }
        );
        let missing = "clockid: 1\nticks: 3\nsettime flags: 01\nit_value: (4, 9)\n";
        assert_eq!(parse_timerfd(missing).unwrap_err(), bad("it_interval", ""));
        assert!(parse_timerfd(
            "clockid: 1\nticks: 3\nsettime flags: 01\nit_value: 4, 9\nit_interval: (1, 0)\n"
        )
        .is_err());
        assert!(parse_timerfd(
            "clockid: 1\nticks: 3\nsettime flags: 08\nit_value: (4, 9)\nit_interval: (1, 0)\n"
        )
        .is_err());
    }

    #[test]
    fn fanotify() {
        let text = "pos:\t0\nflags:\t04002\nmnt_id:\t15\nino:\t1057\n\
            fanotify flags:12 event-flags:8000\n\
            fanotify ino:2f sdev:800001 mflags:0 mask:3b ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:2f00000011223344\n\
            fanotify mnt_id:1a mflags:40 mask:40000030 ignored_mask:3\n\
            fanotify sdev:800001 mflags:0 mask:2 ignored_mask:0\n";
        let f = parse_fanotify(text).unwrap();
        assert_eq!((f.flags, f.event_flags), (0x12, 0x8000));
        assert_eq!(f.marks.len(), 3);
        assert_eq!(
            f.marks[0].target,
            FanotifyTarget::Inode {
                ino: 0x2f,
                sdev: 0x80_0001,
                handle: Some((8, 1, vec![0x2f, 0, 0, 0, 0x11, 0x22, 0x33, 0x44])),
            }
        );
        assert_eq!(f.marks[0].mask, 0x3b);
        assert_eq!(f.marks[1].target, FanotifyTarget::Mount { mnt_id: 0x1a });
        assert_eq!(
            (f.marks[1].mflags, f.marks[1].mask, f.marks[1].ignored_mask),
            (0x40, 0x4000_0030, 3)
        );
        assert_eq!(
            f.marks[2].target,
            FanotifyTarget::Filesystem { sdev: 0x80_0001 }
        );
        assert!(parse_fanotify("pos:\t0\n").is_err());
        assert!(parse_fanotify("fanotify flags:0 event-flags:0\nfanotify what:1\n").is_err());
    }

    #[test]
    fn inotify() {
        let text = "pos:\t0\nflags:\t00\nmnt_id:\t17\nino:\t1038\n\
            inotify wd:1 ino:3c4a7 sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000\n\
            inotify wd:2 ino:2 sdev:fe00000 mask:800 ignored_mask:0\n";
        let w = parse_inotify(text).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].wd, 1);
        assert_eq!(w[0].ino, 0x3c4a7);
        assert_eq!(w[0].sdev, 0xfe00000);
        assert_eq!(w[0].mask, 0x300);
        assert_eq!(
            w[0].handle,
            Some((8, 1, vec![0xa7, 0xc4, 3, 0, 0, 0, 0, 0]))
        );
        assert_eq!(w[1].handle, None);
        assert!(parse_inotify("inotify wd:1 ino:zz sdev:0 mask:0 ignored_mask:0\n").is_err());
        assert!(parse_inotify("inotify wd:1 ino:1 sdev:0 mask:0 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:abc\n").is_err());
    }

    #[test]
    fn tty_index() {
        assert_eq!(parse_tty_index("pos:\t0\ntty-index:\t7\n"), Some(7));
        assert_eq!(parse_tty_index("pos:\t0\n"), None);
    }

    #[test]
    fn pairs_split_both_styles() {
        assert_eq!(
            pairs("tfd:   5 events:  19 pos:0"),
            vec![("tfd", "5"), ("events", "19"), ("pos", "0")]
        );
        assert_eq!(pairs("inotify wd:1"), vec![("inotify", ""), ("wd", "1")]);
        assert_eq!(pairs("a: b:1"), vec![("a", ""), ("b", "1")]);
    }
}
