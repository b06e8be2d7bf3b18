//! `/proc/PID/limits`: the resource limits.

use super::{parse_field, FieldError};

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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn limits_garbled_fields_are_errors() {
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
    }
}
