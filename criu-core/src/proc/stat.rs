//! `/proc/PID/stat`: the task's state, parents, group, session and the addresses of its
//! code, data, stack, arguments and environment.
//!
//! Our parser, not procfs-core's `Stat`, which reads the same numbers as fast (about
//! 1 µs a read, both) but is not strict enough:
//! - it panics on a text with nothing after the comm's `)` or nothing before its `(`
//!   (it slices at `)` + 2 and `(` - 1), where this returns an error;
//! - its errors name no field: a garbled ppid is "x1: Failed to convert", a missing one
//!   "NoneError", both wrapped in "please report this procfs bug";
//! - it takes the first letter of a state of several as the state.
//!
//! Its comm would be lossy too, but that one we take from `comm`, as bytes
//! ([`super::ProcDir::comm`]); the `comm` here is for messages.

use super::{parse_field, FieldError};

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
    // The label is only written out for an error: 25 fields, read for every task.
    fn field<T: std::str::FromStr>(rest: &[&str], n: usize, name: &str) -> Result<T, FieldError> {
        let label = || format!("{n} ({name})");
        let text = rest
            .get(n - 3)
            .ok_or_else(|| FieldError::missing(label()))?;
        text.parse().map_err(|_| FieldError::garbled(label(), text))
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
}
