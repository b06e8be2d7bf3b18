//! `/proc/PID/status`: credentials, signal masks, capabilities, namespace pids, seccomp.
//!
//! Our parser, not procfs-core's `Status`:
//! - speed: procfs puts every line in a HashMap of owned Strings: 15 µs a read against
//!   3 µs (4.7-5.5x in three runs). status is read for every thread at the freeze and
//!   for its seccomp mode at each injection stage (`seccomp_mode`).
//! - bytes: it reads lines as UTF-8, so a task whose name is not UTF-8 has a status it
//!   cannot read at all ("stream did not contain valid UTF-8").
//! - strictness: it takes `NoNewPrivs: 2` and `VmLck: 12` without its unit, and its
//!   errors do not always name the line (a missing one is "NoneError", a bad Uid names
//!   no Uid).

use super::{parse_field, parse_hex, FieldError};
use crate::sys::Pid;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
