//! tp-looper: prints 0, 1, 2, ... one number per line on stdout every `--interval-ms`
//! (default 1000), flushing each line. Its own check has nothing to verify (it writes
//! `pass`); the harness checks the output: after a restore the numbers must continue where
//! they stopped, with no reset, gap or repeat.

use std::io::Write;
use std::time::Duration;

use criu_testprogs::{Program, Report};

fn main() {
    let mut program = Program::start(
        "tp-looper",
        &[("--interval-ms MS", "pause between lines (default 1000)")],
    );
    let interval = Duration::from_millis(program.opt_or("--interval-ms", 1000u64));
    let mut counter = 0u64;
    let mut report = Report::new();
    program.ready();
    let stdout = std::io::stdout();
    program.work_until_check(interval, || {
        let mut out = stdout.lock();
        if let Err(e) = writeln!(out, "{counter}").and_then(|_| out.flush()) {
            if report.passed() {
                report.fail(format!("write line {counter} to stdout: {e}"));
            }
        }
        counter += 1;
    });
    program.finish(&report);
}
