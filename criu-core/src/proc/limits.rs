//! `/proc/PID/limits`: the resource limits, parsed by procfs-core's `Limits`.
//!
//! procfs finds each row by its name and knows which rows have no unit column, so a row
//! the kernel left out or moved is an error, not a neighbour's value dumped at its index
//! (the column split this replaced took the rows in order). Its text is ASCII: nothing of
//! it is lost to a `String`. Parsing it costs about 7 µs against 3.5 µs for the split,
//! once per process: nothing next to a dump.
//!
//! Two things stay here. procfs-core 0.18 takes a row's values counting from its end
//! (`len - 3`), which overflows on a row of fewer than three words, so such a row is
//! refused before procfs sees it. And its errors name no row ("NoneError" for a missing
//! one, the value alone for a garbled one), so when it refuses a table [`which_row`] finds
//! the row and value to name; only what that check cannot place keeps procfs's words.

use procfs_core::process::{Limit, LimitValue, Limits};
use procfs_core::FromRead;

use super::{procfs_reason, FieldError};

/// A row's name as the kernel prints it, and procfs's field for it.
type Row = (&'static str, fn(&Limits) -> Limit);

/// procfs's limits in RLIMIT_* index order (the kernel's table and CRIU's `rlimits`).
const ROWS: [Row; 16] = [
    ("Max cpu time", |l| l.max_cpu_time),
    ("Max file size", |l| l.max_file_size),
    ("Max data size", |l| l.max_data_size),
    ("Max stack size", |l| l.max_stack_size),
    ("Max core file size", |l| l.max_core_file_size),
    ("Max resident set", |l| l.max_resident_set),
    ("Max processes", |l| l.max_processes),
    ("Max open files", |l| l.max_open_files),
    ("Max locked memory", |l| l.max_locked_memory),
    ("Max address space", |l| l.max_address_space),
    ("Max file locks", |l| l.max_file_locks),
    ("Max pending signals", |l| l.max_pending_signals),
    ("Max msgqueue size", |l| l.max_msgqueue_size),
    ("Max nice priority", |l| l.max_nice_priority),
    ("Max realtime priority", |l| l.max_realtime_priority),
    ("Max realtime timeout", |l| l.max_realtime_timeout),
];

/// Parses `/proc/PID/limits` into (soft, hard) pairs in RLIMIT_* index order;
/// "unlimited" is RLIM_INFINITY. All 16 rows must be there, each with both values.
pub fn parse_limits(text: &str) -> Result<Vec<(u64, u64)>, FieldError> {
    if let Some(short) = text.lines().find(|l| l.split_whitespace().count() < 3) {
        return Err(FieldError::garbled("row", short.trim()));
    }
    let limits = Limits::from_read(text.as_bytes()).map_err(|e| {
        which_row(text).unwrap_or_else(|| FieldError::garbled("table", &procfs_reason(e)))
    })?;
    let value = |v: LimitValue| match v {
        LimitValue::Unlimited => u64::MAX,
        LimitValue::Value(v) => v,
    };
    Ok(ROWS
        .iter()
        .map(|(_, limit)| {
            let limit = limit(&limits);
            (value(limit.soft_limit), value(limit.hard_limit))
        })
        .collect())
}

/// The first row that is missing, or whose soft or hard value is missing or is neither
/// a number nor "unlimited" (procfs's own test of a value), as the field to name.
fn which_row(text: &str) -> Option<FieldError> {
    ROWS.iter().find_map(|(name, _)| {
        let Some(row) = text.lines().find_map(|l| l.strip_prefix(name)) else {
            return Some(FieldError::missing(*name));
        };
        let mut values = row.split_whitespace();
        ["soft limit", "hard limit"].iter().find_map(|which| {
            let field = format!("{name}: {which}");
            match values.next() {
                None => Some(FieldError::missing(field)),
                Some(v) => v
                    .parse::<LimitValue>()
                    .is_err()
                    .then(|| FieldError::garbled(field, v)),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole table as the kernel prints it, with `open` in place of the open-files row.
    fn table(open: &str) -> String {
        let rows = [
            "Limit                     Soft Limit           Hard Limit           Units     ",
            "Max cpu time              unlimited            unlimited            seconds   ",
            "Max file size             unlimited            unlimited            bytes     ",
            "Max data size             unlimited            unlimited            bytes     ",
            "Max stack size            8388608              unlimited            bytes     ",
            "Max core file size        0                    unlimited            bytes     ",
            "Max resident set          unlimited            unlimited            bytes     ",
            "Max processes             95402                95402                processes ",
            open,
            "Max locked memory         8388608              8388608              bytes     ",
            "Max address space         unlimited            unlimited            bytes     ",
            "Max file locks            unlimited            unlimited            locks     ",
            "Max pending signals       95402                95402                signals   ",
            "Max msgqueue size         819200               819200               bytes     ",
            "Max nice priority         0                    0                    ",
            "Max realtime priority     0                    0                    ",
            "Max realtime timeout      unlimited            unlimited            us        ",
        ];
        rows.iter()
            .filter(|r| !r.is_empty())
            .fold(String::new(), |t, r| t + r + "\n")
    }

    const OPEN_FILES: &str =
        "Max open files            1024                 20000                files     ";

    #[test]
    fn limits_table() {
        let limits = parse_limits(&table(OPEN_FILES)).unwrap();
        assert_eq!(limits.len(), 16);
        assert_eq!(limits[0], (u64::MAX, u64::MAX));
        assert_eq!(limits[libc::RLIMIT_STACK as usize], (8388608, u64::MAX));
        assert_eq!(limits[libc::RLIMIT_NOFILE as usize], (1024, 20000));
        assert_eq!(limits[libc::RLIMIT_NICE as usize], (0, 0));
        assert_eq!(limits[libc::RLIMIT_RTTIME as usize], (u64::MAX, u64::MAX));
    }

    #[test]
    fn limits_garbled_fields_are_errors() {
        let bad =
            table("Max open files            1024                 lots                 files     ");
        assert_eq!(
            parse_limits(&bad).unwrap_err(),
            FieldError::Garbled {
                field: "Max open files: hard limit".into(),
                text: "lots".into()
            }
        );
        let short = table("Max open files            1024");
        assert_eq!(
            parse_limits(&short).unwrap_err(),
            FieldError::Missing("Max open files: hard limit".into())
        );
        // A row left out is named, not its neighbour's value taken for it.
        assert_eq!(
            parse_limits(&table("")).unwrap_err(),
            FieldError::Missing("Max open files".into())
        );
        // Rows procfs would index out of range are refused before it sees them.
        for row in ["Max", "Max open", ""] {
            let text = table(OPEN_FILES) + row + "\n";
            assert!(
                matches!(parse_limits(&text), Err(FieldError::Garbled { ref field, .. }) if field == "row"),
                "{row:?}"
            );
        }
        // What the row check cannot place still fails, in procfs's words.
        let no_units = table("Max open files            1024                 20000");
        assert!(matches!(
            parse_limits(&no_units),
            Err(FieldError::Garbled { ref field, .. }) if field == "table"
        ));
    }
}
