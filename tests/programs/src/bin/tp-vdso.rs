//! tp-vdso: the check reads the clocks through the vDSO (libc's clock_gettime,
//! gettimeofday, time and sched_getcpu use it) and through the system call, and proves
//! the two agree: a vDSO that was not rebuilt right after a restore (its code run
//! against another kernel's data, or entered at a wrong offset) crashes or lies here.
//!
//! State: the process has a vDSO (`AT_SYSINFO_EHDR`); its address goes to `PATH.vdso`
//! (hex). The program reads no clock between `ready` and the check.
//!
//! Check: for CLOCK_MONOTONIC, vDSO, system call and vDSO again are in order; for
//! CLOCK_REALTIME, CLOCK_BOOTTIME and the coarse clocks, the vDSO answer is within a second
//! of the system call's; gettimeofday and time within a second (two for `time`) of
//! CLOCK_REALTIME; sched_getcpu names a CPU of this machine.

use std::os::raw::c_int;
use std::time::Duration;

use criu_testprogs::{write_atomic, Program, Report};

fn ns(t: &libc::timespec) -> i128 {
    i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
}

/// clock_gettime through libc, that is the vDSO.
fn vdso_clock(clock: libc::clockid_t) -> std::io::Result<i128> {
    // SAFETY: an all-zero timespec is valid for the callee to overwrite.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid place for the result.
    if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ns(&t))
}

/// clock_gettime as a system call, bypassing the vDSO.
fn syscall_clock(clock: libc::clockid_t) -> std::io::Result<i128> {
    // SAFETY: an all-zero timespec is valid for the kernel to overwrite.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime(2) writes one timespec into `t`.
    let rc = unsafe { libc::syscall(libc::SYS_clock_gettime, clock, &mut t) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ns(&t))
}

const SECOND: i128 = 1_000_000_000;

fn check_clocks(report: &mut Report) {
    let clocks: [(c_int, &str); 5] = [
        (libc::CLOCK_MONOTONIC, "CLOCK_MONOTONIC"),
        (libc::CLOCK_REALTIME, "CLOCK_REALTIME"),
        (libc::CLOCK_BOOTTIME, "CLOCK_BOOTTIME"),
        (libc::CLOCK_MONOTONIC_COARSE, "CLOCK_MONOTONIC_COARSE"),
        (libc::CLOCK_REALTIME_COARSE, "CLOCK_REALTIME_COARSE"),
    ];
    for (clock, name) in clocks {
        let read = (vdso_clock(clock), syscall_clock(clock), vdso_clock(clock));
        let (Ok(before), Ok(kernel), Ok(after)) = read else {
            report.fail(format!("{name}: {read:?}"));
            continue;
        };
        if clock == libc::CLOCK_MONOTONIC {
            report.check(before <= kernel && kernel <= after, || {
                format!("{name}: vDSO {before}, system call {kernel}, vDSO {after} out of order")
            });
        } else {
            report.check((before - kernel).abs() < SECOND, || {
                format!("{name}: vDSO {before} ns, system call {kernel} ns")
            });
        }
    }
    let Ok(realtime) = syscall_clock(libc::CLOCK_REALTIME) else {
        return report.fail("CLOCK_REALTIME system call failed");
    };
    // SAFETY: an all-zero timeval is valid for the callee to overwrite.
    let mut tv: libc::timeval = unsafe { std::mem::zeroed() };
    // SAFETY: `tv` is a valid place for the result; no time zone is asked for.
    let rc = unsafe { libc::gettimeofday(&mut tv, std::ptr::null_mut()) };
    let tod = i128::from(tv.tv_sec) * SECOND + i128::from(tv.tv_usec) * 1000;
    report.check(rc == 0 && (tod - realtime).abs() < SECOND, || {
        format!("gettimeofday: {rc}, {tod} ns against {realtime} ns")
    });
    // SAFETY: time(2) with a null pointer only returns the time.
    let now = i128::from(unsafe { libc::time(std::ptr::null_mut()) });
    report.check((now * SECOND - realtime).abs() < 2 * SECOND, || {
        format!("time: {now} s against {realtime} ns")
    });
    // SAFETY: sched_getcpu has no arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    // SAFETY: sysconf has no memory arguments.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    report.check(cpu >= 0 && i64::from(cpu) < cpus as i64, || {
        format!("sched_getcpu: {cpu} of {cpus} CPUs")
    });
}

fn main() {
    let mut program = Program::start("tp-vdso", &[]);
    // SAFETY: getauxval only reads the auxiliary vector.
    let vdso = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    if vdso == 0 {
        program.setup_failed("no vDSO (AT_SYSINFO_EHDR is 0)");
    }
    let mut baseline = Report::new();
    check_clocks(&mut baseline);
    if !baseline.passed() {
        program.setup_failed(baseline.summary());
    }
    program.must(
        write_atomic(
            &program.companion(".vdso"),
            format!("{vdso:x}\n").as_bytes(),
        ),
        "write PATH.vdso",
    );
    program.ready();
    program.work_until_check(Duration::from_millis(10), || {});
    let mut report = Report::new();
    check_clocks(&mut report);
    program.finish(&report);
}
