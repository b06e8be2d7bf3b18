//! tp-signals: signal handlers, a blocked mask with signals pending in it, an interval
//! timer, a POSIX timer and an alternate signal stack; the check proves all of them
//! survived and still work.
//!
//! State:
//! - handlers: SIGUSR1 (SA_SIGINFO|SA_RESTART, blocks SIGHUP), SIGHUP (SA_ONSTACK|
//!   SA_RESTART, blocks SIGALRM), SIGRTMIN+1 (SA_SIGINFO), SIGALRM (SA_RESTART),
//!   SIGRTMIN+2 (SA_SIGINFO|SA_RESTART, blocks SIGALRM); SIGPROF ignored; SIGTERM default;
//! - SIGUSR1 and SIGRTMIN+1 blocked; SIGUSR1 pending for the thread (raise) and SIGRTMIN+1
//!   pending for the process (sigqueue, value 1234);
//! - ITIMER_REAL every 100 ms (SIGALRM counted), a CLOCK_MONOTONIC POSIX timer every
//!   50 ms (SIGRTMIN+2 with a known sigev_value, counted), and a POSIX timer on the main
//!   thread's CPU-time clock (a clock id with the thread's id in it, as haproxy's
//!   watchdog has) due in an hour of CPU time, without notification;
//! - a 64 KiB sigaltstack.
//!
//! Check: every disposition (handler, flags, mask), the blocked mask, the pending sets
//! (sigpending and SigPnd/ShdPnd of /proc/self/status), the sigaltstack, both timers'
//! intervals; the CPU-time timer still armed, with at most an hour left; both timer
//! counters grow past their value at `ready`; then unblocking
//! delivers SIGUSR1 (SI_TKILL) and SIGRTMIN+1 (SI_QUEUE, value 1234) exactly once each,
//! and a raised SIGHUP runs its handler on the alternate stack.

use std::os::raw::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use criu_testprogs::{
    cvt, handler_addr, install_handler, install_siginfo_handler, proc_status_hex, query_action,
    set_thread_sigmask, siginfo_handler_addr, signal_bits, sigrt, sigset, sigset_bits,
    thread_sigmask, wait_until, Mapping, Program, Report, CHECK_SIGNAL, SA_RESTORER,
};

const QUEUED_VALUE: usize = 1234;
const TIMER_COOKIE: usize = 0x7133_5EED;
const ALTSTACK_BYTES: usize = 64 * 1024;
const ITIMER_PERIOD: Duration = Duration::from_millis(100);
/// CPU time until the CPU-time timer is due: more than the program ever uses.
const CPU_TIMER_DUE: Duration = Duration::from_secs(3600);
const POSIX_TIMER_PERIOD: Duration = Duration::from_millis(50);

static USR1_COUNT: AtomicU32 = AtomicU32::new(0);
static USR1_CODE: AtomicI32 = AtomicI32::new(0);
static RT1_COUNT: AtomicU32 = AtomicU32::new(0);
static RT1_CODE: AtomicI32 = AtomicI32::new(0);
static RT1_VALUE: AtomicUsize = AtomicUsize::new(0);
static HUP_COUNT: AtomicU32 = AtomicU32::new(0);
static HUP_ON_ALTSTACK: AtomicBool = AtomicBool::new(false);
static ALRM_COUNT: AtomicU32 = AtomicU32::new(0);
static TIMER_COUNT: AtomicU32 = AtomicU32::new(0);
/// Timer signals that came without SI_TIMER or with the wrong value.
static TIMER_STRANGE: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_usr1(_signo: c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    USR1_CODE.store(code, Ordering::SeqCst);
    USR1_COUNT.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_rt1(_signo: c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; a queued signal
    // carries its sigval.
    let (code, value) = unsafe { ((*info).si_code, (*info).si_value().sival_ptr as usize) };
    RT1_CODE.store(code, Ordering::SeqCst);
    RT1_VALUE.store(value, Ordering::SeqCst);
    RT1_COUNT.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_hup(_signo: c_int) {
    // SAFETY: an all-zero stack_t is valid for the kernel to overwrite.
    let mut current: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: a null new stack only queries; sigaltstack is async-signal-safe.
    let queried = unsafe { libc::sigaltstack(std::ptr::null(), &mut current) } == 0;
    HUP_ON_ALTSTACK.store(
        queried && current.ss_flags & libc::SS_ONSTACK != 0,
        Ordering::SeqCst,
    );
    HUP_COUNT.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_alrm(_signo: c_int) {
    ALRM_COUNT.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_timer(_signo: c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; a timer signal
    // carries the timer's sigev_value.
    let (code, value) = unsafe { ((*info).si_code, (*info).si_value().sival_ptr as usize) };
    if code != libc::SI_TIMER || value != TIMER_COOKIE {
        TIMER_STRANGE.fetch_add(1, Ordering::SeqCst);
    }
    TIMER_COUNT.fetch_add(1, Ordering::SeqCst);
}

/// What `sigaction` must report for one signal.
struct Disposition {
    signo: c_int,
    name: &'static str,
    /// Handler address, SIG_IGN or SIG_DFL.
    handler: usize,
    flags: c_int,
    mask: Vec<c_int>,
}

fn dispositions() -> Vec<Disposition> {
    let d = |signo, name, handler, flags, mask: &[c_int]| Disposition {
        signo,
        name,
        handler,
        flags,
        mask: mask.to_vec(),
    };
    vec![
        d(
            libc::SIGUSR1,
            "SIGUSR1",
            siginfo_handler_addr(on_usr1),
            libc::SA_SIGINFO | libc::SA_RESTART,
            &[libc::SIGHUP],
        ),
        d(
            libc::SIGHUP,
            "SIGHUP",
            handler_addr(on_hup),
            libc::SA_ONSTACK | libc::SA_RESTART,
            &[libc::SIGALRM],
        ),
        d(
            sigrt(1),
            "SIGRTMIN+1",
            siginfo_handler_addr(on_rt1),
            libc::SA_SIGINFO,
            &[],
        ),
        d(
            libc::SIGALRM,
            "SIGALRM",
            handler_addr(on_alrm),
            libc::SA_RESTART,
            &[],
        ),
        d(
            sigrt(2),
            "SIGRTMIN+2",
            siginfo_handler_addr(on_timer),
            libc::SA_SIGINFO | libc::SA_RESTART,
            &[libc::SIGALRM],
        ),
        d(libc::SIGPROF, "SIGPROF", libc::SIG_IGN, 0, &[]),
        d(libc::SIGTERM, "SIGTERM", libc::SIG_DFL, 0, &[]),
    ]
}

fn blocked() -> Vec<c_int> {
    vec![libc::SIGUSR1, sigrt(1)]
}

/// The state set up before `ready` that the check compares against.
struct Setup {
    posix_timer: libc::timer_t,
    cpu_timer: libc::timer_t,
    altstack: Mapping,
}

fn set_up() -> Result<Setup, String> {
    let step =
        |what: &str, r: std::io::Result<c_int>| r.map(drop).map_err(|e| format!("{what}: {e}"));
    let altstack =
        Mapping::anonymous(ALTSTACK_BYTES, false).map_err(|e| format!("mmap the altstack: {e}"))?;
    let stack = libc::stack_t {
        ss_sp: altstack.addr(),
        ss_flags: 0,
        ss_size: altstack.len(),
    };
    // SAFETY: `stack` describes a mapping that lives as long as the program (it is returned
    // in `Setup` and never dropped before exit).
    let rc = unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) };
    step("sigaltstack", cvt(rc))?;

    for d in dispositions() {
        let installed = if d.handler == libc::SIG_IGN || d.handler == libc::SIG_DFL {
            set_disposition(d.signo, d.handler)
        } else if d.flags & libc::SA_SIGINFO != 0 {
            let handler = match d.signo {
                libc::SIGUSR1 => on_usr1,
                s if s == sigrt(1) => on_rt1,
                _ => on_timer,
            };
            install_siginfo_handler(d.signo, handler, d.flags, &d.mask)
        } else {
            let handler = if d.signo == libc::SIGHUP {
                on_hup
            } else {
                on_alrm
            };
            install_handler(d.signo, handler, d.flags, &d.mask)
        };
        installed.map_err(|e| format!("sigaction({}): {e}", d.name))?;
    }

    set_thread_sigmask(libc::SIG_BLOCK, &blocked()).map_err(|e| format!("block signals: {e}"))?;
    // SAFETY: raise has no memory arguments; SIGUSR1 is blocked, so it stays pending.
    step("raise SIGUSR1", cvt(unsafe { libc::raise(libc::SIGUSR1) }))?;
    let value = libc::sigval {
        sival_ptr: QUEUED_VALUE as *mut libc::c_void,
    };
    // SAFETY: sigqueue has no memory arguments besides the by-value sigval.
    let rc = unsafe { libc::sigqueue(libc::getpid(), sigrt(1), value) };
    step("sigqueue SIGRTMIN+1", cvt(rc))?;

    let itimer = libc::itimerval {
        it_interval: timeval(ITIMER_PERIOD),
        it_value: timeval(ITIMER_PERIOD),
    };
    // SAFETY: `itimer` is a valid itimerval; the old value is not asked for.
    let rc = unsafe { libc::setitimer(libc::ITIMER_REAL, &itimer, std::ptr::null_mut()) };
    step("setitimer", cvt(rc))?;

    // SAFETY: sigevent is plain data; zero is a valid start for the fields set below.
    let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
    event.sigev_notify = libc::SIGEV_SIGNAL;
    event.sigev_signo = sigrt(2);
    event.sigev_value = libc::sigval {
        sival_ptr: TIMER_COOKIE as *mut libc::c_void,
    };
    let mut posix_timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: `event` is initialised and `posix_timer` is a valid place for the new id.
    let rc = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut posix_timer) };
    step("timer_create", cvt(rc))?;
    let spec = libc::itimerspec {
        it_interval: timespec(POSIX_TIMER_PERIOD),
        it_value: timespec(POSIX_TIMER_PERIOD),
    };
    // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
    let rc = unsafe { libc::timer_settime(posix_timer, 0, &spec, std::ptr::null_mut()) };
    step("timer_settime", cvt(rc))?;

    let mut cpu_clock: libc::clockid_t = 0;
    // SAFETY: our own thread's handle, and a valid place for the clock id.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut cpu_clock) };
    if rc != 0 {
        return Err(format!("pthread_getcpuclockid: error {rc}"));
    }
    // SAFETY: sigevent is plain data; zero is a valid start for the field set below.
    let mut silent: libc::sigevent = unsafe { std::mem::zeroed() };
    silent.sigev_notify = libc::SIGEV_NONE;
    let mut cpu_timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: `silent` is initialised and `cpu_timer` is a valid place for the new id.
    let rc = unsafe { libc::timer_create(cpu_clock, &mut silent, &mut cpu_timer) };
    step("timer_create (thread CPU-time clock)", cvt(rc))?;
    let hour = libc::itimerspec {
        it_interval: timespec(CPU_TIMER_DUE),
        it_value: timespec(CPU_TIMER_DUE),
    };
    // SAFETY: `hour` is a valid itimerspec; the old value is not asked for.
    let rc = unsafe { libc::timer_settime(cpu_timer, 0, &hour, std::ptr::null_mut()) };
    step("timer_settime (thread CPU-time clock)", cvt(rc))?;
    Ok(Setup {
        posix_timer,
        cpu_timer,
        altstack,
    })
}

fn set_disposition(signo: c_int, handler: libc::sighandler_t) -> std::io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value; SIG_IGN/SIG_DFL need no handler.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    // SAFETY: `action` is initialised; the old action is not asked for.
    cvt(unsafe { libc::sigaction(signo, &action, std::ptr::null_mut()) }).map(drop)
}

fn timeval(d: Duration) -> libc::timeval {
    libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    }
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as _,
    }
}

fn main() {
    let mut program = Program::start("tp-signals", &[]);
    let setup = match set_up() {
        Ok(setup) => setup,
        Err(e) => program.setup_failed(e),
    };
    let alarms_at_ready = ALRM_COUNT.load(Ordering::SeqCst);
    let timers_at_ready = TIMER_COUNT.load(Ordering::SeqCst);
    program.ready();
    program.work_until_check(Duration::from_millis(10), || {});

    let mut report = Report::new();
    check_dispositions(&mut report);
    check_mask_and_pending(&mut report);
    check_altstack(&mut report, &setup.altstack);
    check_timers(&mut report, &setup, alarms_at_ready, timers_at_ready);
    check_delivery(&mut report);
    stop_timers(&setup);
    program.finish(&report);
}

fn check_dispositions(report: &mut Report) {
    let mut all = dispositions();
    all.push(Disposition {
        signo: CHECK_SIGNAL,
        name: "SIGUSR2",
        handler: usize::MAX, // installed by the protocol; only the flags are checked
        flags: libc::SA_RESTART,
        mask: vec![],
    });
    for d in all {
        let action = match query_action(d.signo) {
            Ok(action) => action,
            Err(e) => {
                report.fail(format!("sigaction({}): {e}", d.name));
                continue;
            }
        };
        if d.handler != usize::MAX {
            report.check(action.sa_sigaction == d.handler, || {
                format!(
                    "{} handler is {:#x}, expected {:#x}",
                    d.name, action.sa_sigaction, d.handler
                )
            });
        }
        if d.handler == libc::SIG_IGN || d.handler == libc::SIG_DFL {
            continue;
        }
        report.check_eq(
            &format!("{} flags", d.name),
            action.sa_flags & !SA_RESTORER,
            d.flags,
        );
        report.check_eq(
            &format!("{} sa_mask", d.name),
            sigset_bits(&action.sa_mask),
            signal_bits(&d.mask),
        );
    }
}

fn check_mask_and_pending(report: &mut Report) {
    let blocked_bits = signal_bits(&blocked());
    if let Some(mask) = report.ok_or_fail(thread_sigmask(), "sigprocmask") {
        report.check_eq("blocked mask", sigset_bits(&mask), blocked_bits);
    }
    let status = Path::new("/proc/thread-self/status");
    if let Some(bits) = report.ok_or_fail(proc_status_hex(status, "SigBlk"), "SigBlk") {
        report.check_eq("SigBlk", bits, blocked_bits);
    }
    // A timer signal may be pending for the instant before its delivery: ignore those.
    let timers = !signal_bits(&[libc::SIGALRM, sigrt(2)]);
    // SIGUSR1 was raised at the thread, SIGRTMIN+1 queued to the process.
    if let Some(bits) = report.ok_or_fail(proc_status_hex(status, "SigPnd"), "SigPnd") {
        report.check_eq(
            "SigPnd (thread-pending)",
            bits & timers,
            signal_bits(&[libc::SIGUSR1]),
        );
    }
    if let Some(bits) = report.ok_or_fail(proc_status_hex(status, "ShdPnd"), "ShdPnd") {
        report.check_eq(
            "ShdPnd (process-pending)",
            bits & timers,
            signal_bits(&[sigrt(1)]),
        );
    }
    let mut pending = sigset(&[]);
    // SAFETY: `pending` is a valid sigset_t to write.
    let rc = unsafe { libc::sigpending(&mut pending) };
    if report.ok_or_fail(cvt(rc), "sigpending").is_some() {
        report.check_eq("sigpending", sigset_bits(&pending) & timers, blocked_bits);
    }
    report.check_eq(
        "SIGUSR1 deliveries while blocked",
        USR1_COUNT.load(Ordering::SeqCst),
        0,
    );
    report.check_eq(
        "SIGRTMIN+1 deliveries while blocked",
        RT1_COUNT.load(Ordering::SeqCst),
        0,
    );
}

fn check_altstack(report: &mut Report, altstack: &Mapping) {
    // SAFETY: an all-zero stack_t is valid for the kernel to overwrite.
    let mut current: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: a null new stack only queries.
    let rc = unsafe { libc::sigaltstack(std::ptr::null(), &mut current) };
    if report.ok_or_fail(cvt(rc), "sigaltstack").is_none() {
        return;
    }
    report.check_eq(
        "sigaltstack (sp, size, flags)",
        (current.ss_sp as usize, current.ss_size, current.ss_flags),
        (altstack.addr() as usize, altstack.len(), 0),
    );
}

fn check_timers(report: &mut Report, setup: &Setup, alarms_at_ready: u32, timers_at_ready: u32) {
    // SAFETY: an all-zero itimerval is valid for the kernel to overwrite.
    let mut itimer: libc::itimerval = unsafe { std::mem::zeroed() };
    // SAFETY: `itimer` is a valid place to write.
    let rc = unsafe { libc::getitimer(libc::ITIMER_REAL, &mut itimer) };
    if report.ok_or_fail(cvt(rc), "getitimer").is_some() {
        report.check_eq(
            "ITIMER_REAL interval (s, us)",
            (
                itimer.it_interval.tv_sec as u64,
                itimer.it_interval.tv_usec as u64,
            ),
            (0, ITIMER_PERIOD.as_micros() as u64),
        );
    }
    // SAFETY: an all-zero itimerspec is valid for the kernel to overwrite.
    let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: the timer id came from timer_create; `spec` is a valid place to write.
    let rc = unsafe { libc::timer_gettime(setup.posix_timer, &mut spec) };
    if report.ok_or_fail(cvt(rc), "timer_gettime").is_some() {
        report.check_eq(
            "POSIX timer interval (s, ns)",
            (
                spec.it_interval.tv_sec as u64,
                spec.it_interval.tv_nsec as u64,
            ),
            (0, POSIX_TIMER_PERIOD.as_nanos() as u64),
        );
    }
    // SAFETY: an all-zero itimerspec is valid for the kernel to overwrite.
    let mut cpu: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: the timer id came from timer_create; `cpu` is a valid place to write.
    let rc = unsafe { libc::timer_gettime(setup.cpu_timer, &mut cpu) };
    if report
        .ok_or_fail(cvt(rc), "timer_gettime (CPU-time timer)")
        .is_some()
    {
        let left = Duration::new(cpu.it_value.tv_sec as u64, cpu.it_value.tv_nsec as u32);
        report.check_eq(
            "CPU-time timer: interval (s), and armed with at most that left",
            (
                cpu.it_interval.tv_sec as u64,
                !left.is_zero() && left <= CPU_TIMER_DUE,
            ),
            (CPU_TIMER_DUE.as_secs(), true),
        );
    }
    let grew = wait_until(Duration::from_secs(2), || {
        ALRM_COUNT.load(Ordering::SeqCst) > alarms_at_ready
            && TIMER_COUNT.load(Ordering::SeqCst) > timers_at_ready
    });
    if !grew {
        report.fail(format!(
            "timers stopped: SIGALRM count {} (at ready {alarms_at_ready}), SIGRTMIN+2 count {} (at ready {timers_at_ready})",
            ALRM_COUNT.load(Ordering::SeqCst),
            TIMER_COUNT.load(Ordering::SeqCst)
        ));
    }
    report.check_eq(
        "timer signals without SI_TIMER or the timer's value",
        TIMER_STRANGE.load(Ordering::SeqCst),
        0,
    );
}

fn check_delivery(report: &mut Report) {
    // Unblocking delivers the pending signals before sigprocmask returns.
    if let Err(e) = set_thread_sigmask(libc::SIG_UNBLOCK, &blocked()) {
        return report.fail(format!("unblock: {e}"));
    }
    let delivered = wait_until(Duration::from_secs(1), || {
        USR1_COUNT.load(Ordering::SeqCst) > 0 && RT1_COUNT.load(Ordering::SeqCst) > 0
    });
    // Give a duplicate the chance to show up.
    std::thread::sleep(Duration::from_millis(20));
    report.check(delivered, || {
        "pending signals not delivered after unblocking".to_owned()
    });
    report.check_eq("SIGUSR1 deliveries", USR1_COUNT.load(Ordering::SeqCst), 1);
    report.check_eq(
        "SIGUSR1 si_code",
        USR1_CODE.load(Ordering::SeqCst),
        libc::SI_TKILL,
    );
    report.check_eq("SIGRTMIN+1 deliveries", RT1_COUNT.load(Ordering::SeqCst), 1);
    report.check_eq(
        "SIGRTMIN+1 si_code",
        RT1_CODE.load(Ordering::SeqCst),
        libc::SI_QUEUE,
    );
    report.check_eq(
        "SIGRTMIN+1 value",
        RT1_VALUE.load(Ordering::SeqCst),
        QUEUED_VALUE,
    );

    // SAFETY: raise has no memory arguments; the SIGHUP handler is installed.
    if let Err(e) = cvt(unsafe { libc::raise(libc::SIGHUP) }) {
        return report.fail(format!("raise SIGHUP: {e}"));
    }
    report.check_eq("SIGHUP deliveries", HUP_COUNT.load(Ordering::SeqCst), 1);
    report.check(HUP_ON_ALTSTACK.load(Ordering::SeqCst), || {
        "SIGHUP handler did not run on the altstack".to_owned()
    });
}

fn stop_timers(setup: &Setup) {
    let off = libc::itimerval {
        it_interval: timeval(Duration::ZERO),
        it_value: timeval(Duration::ZERO),
    };
    let spec_off = libc::itimerspec {
        it_interval: timespec(Duration::ZERO),
        it_value: timespec(Duration::ZERO),
    };
    // SAFETY: both values are valid; the old values are not asked for.
    unsafe {
        libc::setitimer(libc::ITIMER_REAL, &off, std::ptr::null_mut());
        libc::timer_settime(setup.posix_timer, 0, &spec_off, std::ptr::null_mut());
    }
}
