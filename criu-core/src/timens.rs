//! Time namespaces: the clocks a namespace shows and the offsets that make them.
//!
//! A time namespace adds a fixed offset to the host's CLOCK_MONOTONIC and CLOCK_BOOTTIME
//! (and to their raw, coarse and alarm variants). The offsets are against the host's
//! clocks, not against the parent namespace: a new namespace starts with a copy of its
//! creator's offsets, and its clocks read `host + offset`. They can be written through
//! `/proc/PID/timens_offsets` only until the first task enters the namespace.
//!
//! `/proc/PID/timens_offsets` shows the namespace PID's *children* get
//! (`/proc/PID/ns/time_for_children`), which is PID's own as long as it has not
//! unshared a new one; the dump refuses such a half-way task (as CRIU does), so for
//! every task of a dumped tree that file shows its own namespace's offsets.
//!
//! The image (`timens-ID.img`, CRIU's `timens_entry`) holds the two clocks as the
//! namespace showed them at the dump; the restore makes a new namespace whose offsets
//! are chosen so that its clocks read those values at that moment, and go on from there.

use std::io;

use criu_images::pb;

use crate::sys::{self, Pid};

/// Nanoseconds in a second.
pub const NSEC_PER_SEC: i128 = 1_000_000_000;

/// CLOCK_MONOTONIC and CLOCK_BOOTTIME in nanoseconds: two readings, or two offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Clocks {
    pub monotonic: i128,
    pub boottime: i128,
}

impl std::ops::Add for Clocks {
    type Output = Clocks;
    fn add(self, o: Clocks) -> Clocks {
        Clocks {
            monotonic: self.monotonic + o.monotonic,
            boottime: self.boottime + o.boottime,
        }
    }
}

impl std::ops::Sub for Clocks {
    type Output = Clocks;
    fn sub(self, o: Clocks) -> Clocks {
        Clocks {
            monotonic: self.monotonic - o.monotonic,
            boottime: self.boottime - o.boottime,
        }
    }
}

fn nanos((sec, nsec): (i64, i64)) -> i128 {
    i128::from(sec) * NSEC_PER_SEC + i128::from(nsec)
}

/// `ns` as (seconds, nanoseconds), the nanoseconds in 0..1e9 also for a negative value
/// (as the kernel's timespec normalises it).
pub fn split(ns: i128) -> (i128, i128) {
    (ns.div_euclid(NSEC_PER_SEC), ns.rem_euclid(NSEC_PER_SEC))
}

impl Clocks {
    /// The two clocks as the calling thread's time namespace shows them.
    pub fn now() -> io::Result<Clocks> {
        Ok(Clocks {
            monotonic: nanos(sys::clock_gettime(libc::CLOCK_MONOTONIC)?),
            boottime: nanos(sys::clock_gettime(libc::CLOCK_BOOTTIME)?),
        })
    }

    /// The offsets of the namespace `pid`'s children get (`/proc/PID/timens_offsets`).
    pub fn offsets_of(pid: Pid) -> io::Result<Clocks> {
        let path = format!("/proc/{}/timens_offsets", pid.0);
        let text = std::fs::read_to_string(&path)?;
        Clocks::parse_offsets(&text)
            .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {why}")))
    }

    /// Parses `/proc/PID/timens_offsets`: a line per clock, `NAME SECONDS NANOSECONDS`,
    /// the clock named `monotonic`/`boottime` or by its number.
    pub fn parse_offsets(text: &str) -> Result<Clocks, String> {
        let (mut monotonic, mut boottime) = (None, None);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [clock, sec, nsec] = fields[..] else {
                return Err(format!("odd line {line:?}"));
            };
            let sec: i64 = sec.parse().map_err(|_| format!("odd line {line:?}"))?;
            let nsec: i64 = nsec.parse().map_err(|_| format!("odd line {line:?}"))?;
            let value = Some(nanos((sec, nsec)));
            match clock {
                "monotonic" | "1" => monotonic = value,
                "boottime" | "7" => boottime = value,
                other => return Err(format!("unknown clock {other:?}")),
            }
        }
        match (monotonic, boottime) {
            (Some(monotonic), Some(boottime)) => Ok(Clocks {
                monotonic,
                boottime,
            }),
            _ => Err("a clock is missing".into()),
        }
    }

    /// What to write to `/proc/PID/timens_offsets` to set these offsets (one write).
    pub fn offsets_text(&self) -> String {
        let (ms, mn) = split(self.monotonic);
        let (bs, bn) = split(self.boottime);
        format!("monotonic {ms} {mn}\nboottime {bs} {bn}\n")
    }

    /// The image entry of these clock readings.
    pub fn to_entry(&self) -> pb::TimensEntry {
        let timespec = |ns: i128| {
            // Clock readings are never negative; a reading is stored as CRIU stores it,
            // the seconds of a signed timespec in a uint64.
            let (sec, nsec) = split(ns);
            pb::Timespec {
                tv_sec: sec as u64,
                tv_nsec: nsec as u64,
            }
        };
        pb::TimensEntry {
            monotonic: timespec(self.monotonic),
            boottime: timespec(self.boottime),
        }
    }

    /// The clock readings of an image entry; `Err` says what is wrong with it.
    pub fn from_entry(e: &pb::TimensEntry) -> Result<Clocks, String> {
        let read = |what: &str, t: &pb::Timespec| {
            // A clock of the host that ran this long cannot exist: the kernel keeps them
            // far below 2^63 ns, so this also keeps the arithmetic exact.
            if t.tv_sec > i64::MAX as u64 / 2 || t.tv_nsec >= NSEC_PER_SEC as u64 {
                return Err(format!(
                    "its {what} clock ({} s {} ns) is not a time a clock can show",
                    t.tv_sec, t.tv_nsec
                ));
            }
            Ok(i128::from(t.tv_sec) * NSEC_PER_SEC + i128::from(t.tv_nsec))
        };
        Ok(Clocks {
            monotonic: read("monotonic", &e.monotonic)?,
            boottime: read("boottime", &e.boottime)?,
        })
    }
}

/// Whether the running kernel has time namespaces.
pub fn kernel_has_time_ns() -> bool {
    std::path::Path::new("/proc/self/timens_offsets").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets_by_name_and_number() {
        let text = "monotonic        1000         0\nboottime       -2000    500000\n";
        let c = Clocks::parse_offsets(text).unwrap();
        assert_eq!(c.monotonic, 1000 * NSEC_PER_SEC);
        assert_eq!(c.boottime, -2000 * NSEC_PER_SEC + 500_000);
        let c = Clocks::parse_offsets("1 5 6\n7 8 9\n").unwrap();
        assert_eq!((c.monotonic, c.boottime), (5_000_000_006, 8_000_000_009));
        assert!(Clocks::parse_offsets("monotonic 1 0\n").is_err());
        assert!(Clocks::parse_offsets("realtime 1 0\nmonotonic 1 0\nboottime 1 0\n").is_err());
        assert!(Clocks::parse_offsets("monotonic x 0\nboottime 1 0\n").is_err());
    }

    #[test]
    fn negative_offsets_are_written_as_the_kernel_reads_them() {
        // -1.5 s is -2 s + 0.5 s: the kernel wants 0 <= nsec < 1e9.
        let c = Clocks {
            monotonic: -1_500_000_000,
            boottime: 2_000_000_001,
        };
        assert_eq!(c.offsets_text(), "monotonic -2 500000000\nboottime 2 1\n");
        assert_eq!(Clocks::parse_offsets(&c.offsets_text()).unwrap(), c);
    }

    #[test]
    fn entries_round_trip_and_bogus_ones_are_refused() {
        let c = Clocks {
            monotonic: 12 * NSEC_PER_SEC + 34,
            boottime: 56 * NSEC_PER_SEC + 78,
        };
        let e = c.to_entry();
        assert_eq!((e.monotonic.tv_sec, e.monotonic.tv_nsec), (12, 34));
        assert_eq!(Clocks::from_entry(&e).unwrap(), c);
        let mut bad = e;
        bad.boottime.tv_nsec = NSEC_PER_SEC as u64;
        assert!(Clocks::from_entry(&bad).unwrap_err().contains("boottime"));
        let mut bad = e;
        bad.monotonic.tv_sec = u64::MAX;
        assert!(Clocks::from_entry(&bad).unwrap_err().contains("monotonic"));
    }

    #[test]
    fn our_own_clocks_and_offsets_read() {
        let a = Clocks::now().unwrap();
        let b = Clocks::now().unwrap();
        assert!(b.monotonic >= a.monotonic && b.boottime >= a.boottime);
        if kernel_has_time_ns() {
            Clocks::offsets_of(Pid(std::process::id() as i32)).unwrap();
        }
    }
}
