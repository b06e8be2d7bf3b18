//! `/proc/PID/timers`: the POSIX timers. Our parser: procfs has none for this file.

use super::{parse_field, parse_hex, FieldError};

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
                // Negative for a CPU-time clock of a process or thread (its pid and
                // kind encoded, clock_getcpuclockid(3)); the image holds the same bits
                // unsigned, as CRIU's does.
                let clock: i32 = parse_field(&field("ClockID"), value)?;
                t.clock_id = clock as u32;
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
mod tests {
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
        // A thread's CPU-time clock (thread 31654, CPUCLOCK_SCHED | CPUCLOCK_PERTHREAD).
        let cpu = "ID: 0\nsignal: 10/0000000000000000\nnotify: signal/pid.9\nClockID: -253234\n";
        assert_eq!(parse_timers(cpu).unwrap()[0].clock_id, -253234i32 as u32);
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
