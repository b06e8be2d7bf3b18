//! tp-attrs: process and thread attributes that only the kernel keeps, each set to a
//! value no fresh process has; the check proves every one is exactly as set.
//!
//! `--with LIST` (comma-separated; default all of
//! `sched,pdeath,oom,loginuid,thp,subreaper,nodump,filter,strict,novdso,membarrier`)
//! picks them:
//! - `sched`: the main thread runs SCHED_BATCH with nice 5; the worker thread runs
//!   SCHED_RR | SCHED_RESET_ON_FORK with priority 3.
//! - `pdeath`: parent-death signal SIGWINCH on the main thread, SIGURG on the worker
//!   (both ignored by default: the restorer ending does no harm).
//! - `oom`: oom_score_adj 345.
//! - `loginuid`: audit login uid 4242.
//! - `thp`: PR_SET_THP_DISABLE.
//! - `membarrier`: registered for the global and the private expedited membarrier (not
//!   for SYNC_CORE); the check lists the registrations and runs the barriers.
//! - `subreaper`: PR_SET_CHILD_SUBREAPER.
//! - `nodump`: PR_SET_DUMPABLE 0.
//! - `filter`: two stacked seccomp filters, installed by the main thread before the
//!   worker starts (so the worker inherits them): acct(2) fails with errno 4000,
//!   syslog(2) with errno 4001.
//! - `strict`: a thread in seccomp strict mode (started before any filter), echoing
//!   each byte it reads from one pipe, plus one, into another.
//! - `novdso`: a child process that unmapped its vDSO and vvar pages and pauses
//!   (it dies with its parent: parent-death signal SIGKILL).
//!
//! Check: each attribute read back in the thread it belongs to (sched_getscheduler,
//! PR_GET_PDEATHSIG, PR_GET_THP_DISABLE, /proc/self files, the filtered calls'
//! errnos, Seccomp: in each thread's status), one echo through the strict thread, and
//! the child's maps still without `[vdso]` or `[vvar...]`.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::Duration;

use criu_testprogs::{cvt, gettid, status_field, Program, Report};

const ALL: &str = "sched,pdeath,oom,loginuid,thp,subreaper,nodump,filter,strict,novdso,membarrier";
const MAIN_NICE: i32 = 5;
const WORKER_RT_PRIO: i32 = 3;
const OOM_SCORE_ADJ: i32 = 345;
const LOGINUID: u32 = 4242;
const ACCT_ERRNO: u32 = 4000;
const SYSLOG_ERRNO: u32 = 4001;
const SCHED_RESET_ON_FORK: i32 = 0x4000_0000;

fn main() {
    let mut program = Program::start(
        "tp-attrs",
        &[("--with LIST", "attributes to set (default: all of them)")],
    );
    let with_list: String = program.opt_or("--with", ALL.to_string());
    let with: Vec<&str> = with_list.split(',').map(str::trim).collect();
    for w in &with {
        if !ALL.split(',').any(|a| a == *w) {
            program.setup_failed(format!("unknown attribute `{w}` (known: {ALL})"));
        }
    }
    let on = |name: &str| with.contains(&name);

    // Before any thread: a forked child of a multithreaded process may only call
    // async-signal-safe functions.
    let novdso_child = on("novdso").then(|| program.must(start_novdso_child(), "novdso child"));
    // Before the filters: a thread in filter mode cannot enter strict mode.
    let strict = on("strict").then(|| program.must(StrictThread::start(), "strict thread"));
    if on("filter") {
        program.must(
            install_filter(libc::SYS_acct, ACCT_ERRNO),
            "seccomp filter 1",
        );
        program.must(
            install_filter(libc::SYS_syslog, SYSLOG_ERRNO),
            "seccomp filter 2",
        );
    }
    if on("sched") {
        program.must(set_sched(0, libc::SCHED_BATCH, 0), "SCHED_BATCH");
        program.must(set_nice(MAIN_NICE), "nice");
    }
    if on("pdeath") {
        program.must(set_pdeath(libc::SIGWINCH), "PR_SET_PDEATHSIG");
    }
    if on("oom") {
        program.must(
            std::fs::write("/proc/self/oom_score_adj", OOM_SCORE_ADJ.to_string()),
            "oom_score_adj",
        );
    }
    if on("loginuid") {
        program.must(
            std::fs::write("/proc/self/loginuid", LOGINUID.to_string()),
            "loginuid",
        );
    }
    if on("thp") {
        // SAFETY: prctl with integer arguments only.
        let ret = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        program.must(cvt(ret), "PR_SET_THP_DISABLE");
    }
    let membarriers = on("membarrier").then(|| program.must(register_membarriers(), "membarrier"));
    for (name, option, value) in [
        ("subreaper", libc::PR_SET_CHILD_SUBREAPER, 1),
        ("nodump", libc::PR_SET_DUMPABLE, 0),
    ] {
        if on(name) {
            // SAFETY: prctl with integer arguments only.
            let ret = unsafe { libc::prctl(option, value as libc::c_ulong, 0, 0, 0) };
            program.must(cvt(ret), name);
        }
    }
    let worker = Worker::start(on("sched"), on("pdeath"), on("filter"));
    let worker = program.must(worker, "worker thread");

    program.ready();
    program.work_until_check(Duration::from_millis(10), || {});

    let mut report = Report::new();
    let main_tid = gettid();
    if on("sched") {
        check_sched(&mut report, "main", libc::SCHED_BATCH, 0, MAIN_NICE);
    }
    if on("pdeath") {
        report.check_eq("main PR_GET_PDEATHSIG", pdeath(), Ok(libc::SIGWINCH));
    }
    if on("oom") {
        report.check_eq(
            "oom_score_adj",
            read_trimmed("/proc/self/oom_score_adj"),
            Ok(OOM_SCORE_ADJ.to_string()),
        );
    }
    if on("loginuid") {
        report.check_eq(
            "loginuid",
            read_trimmed("/proc/self/loginuid"),
            Ok(LOGINUID.to_string()),
        );
    }
    if on("thp") {
        // SAFETY: prctl with integer arguments only.
        let ret = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        report.check_eq("PR_GET_THP_DISABLE", ret, 1);
    }
    if let Some(registered) = membarriers {
        check_membarriers(&mut report, registered);
    }
    if on("subreaper") {
        let mut flag: libc::c_int = -1;
        // SAFETY: the kernel writes one int into `flag`.
        let ret = unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut flag as *mut _) };
        report.check_eq("PR_GET_CHILD_SUBREAPER", (ret, flag), (0, 1));
    }
    if on("nodump") {
        // SAFETY: prctl with integer arguments only.
        let ret = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
        report.check_eq("PR_GET_DUMPABLE", ret, 0);
    }
    let filter_mode = if on("filter") { "2" } else { "0" };
    report.check_eq(
        "main Seccomp:",
        seccomp_mode(main_tid),
        Some(filter_mode.to_string()),
    );
    if on("filter") {
        check_filters(&mut report, "main");
    }
    report.absorb("worker: ", worker.check());
    if let Some(strict) = strict {
        report.check_eq(
            "strict thread Seccomp:",
            seccomp_mode(strict.tid),
            Some("1".to_string()),
        );
        report.ok_or_fail(strict.echo(41), "strict thread echo");
    }
    if let Some(child) = novdso_child {
        check_novdso_child(&mut report, child);
    }
    program.finish(&report);
}

const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_long = 1 << 1;
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_long = 1 << 2;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_long = 1 << 5;
const MEMBARRIER_CMD_GET_REGISTRATIONS: libc::c_long = 1 << 9;

fn membarrier(cmd: libc::c_long) -> io::Result<libc::c_long> {
    // SAFETY: membarrier takes integer arguments only.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Registers for the global and the private expedited barriers the kernel offers, and
/// not for the others (SYNC_CORE stays unregistered, so a restore that registers too
/// much is caught as well); returns the registration commands used.
fn register_membarriers() -> io::Result<libc::c_long> {
    let supported = membarrier(MEMBARRIER_CMD_QUERY)?;
    let mut registered = 0;
    for cmd in [
        MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED,
        MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
    ] {
        if supported & cmd != 0 {
            membarrier(cmd)?;
            registered |= cmd;
        }
    }
    if registered == 0 {
        return Err(io::Error::other("no expedited membarrier on this kernel"));
    }
    Ok(registered)
}

/// The registrations are the ones made (where the kernel can list them), the registered
/// barriers run, and the unregistered SYNC_CORE one is refused with EPERM.
fn check_membarriers(report: &mut Report, registered: libc::c_long) {
    match membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS) {
        Ok(now) => report.check_eq("membarrier registrations", now, registered),
        // Before Linux 6.3 there is no such query.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(e) => report.fail(format!("MEMBARRIER_CMD_GET_REGISTRATIONS: {e}")),
    }
    for (register, execute, name) in [
        (
            MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED,
            MEMBARRIER_CMD_GLOBAL_EXPEDITED,
            "GLOBAL_EXPEDITED",
        ),
        (
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
            MEMBARRIER_CMD_PRIVATE_EXPEDITED,
            "PRIVATE_EXPEDITED",
        ),
    ] {
        if registered & register != 0 {
            if let Err(e) = membarrier(execute) {
                report.fail(format!("membarrier {name}: {e}"));
            }
        }
    }
    let sync_core =
        membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE).map_err(|e| e.raw_os_error());
    report.check(
        matches!(sync_core, Err(Some(libc::EPERM)) | Err(Some(libc::EINVAL))),
        || format!("the unregistered SYNC_CORE barrier answered {sync_core:?}, not EPERM"),
    );
}

fn read_trimmed(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| e.to_string())
}

/// The `Seccomp:` field of one thread of this process.
fn seccomp_mode(tid: libc::pid_t) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    status_field(&text, "Seccomp").map(str::to_string)
}

fn set_sched(tid: libc::pid_t, policy: i32, priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: the kernel reads one sched_param from `param`, which outlives the call.
    cvt(unsafe { libc::sched_setscheduler(tid, policy, &param) }).map(drop)
}

/// Nice of the calling thread (Linux: PRIO_PROCESS with a tid is that thread).
fn set_nice(nice: i32) -> io::Result<()> {
    // SAFETY: setpriority with integer arguments only.
    cvt(unsafe { libc::setpriority(libc::PRIO_PROCESS, gettid() as libc::id_t, nice) }).map(drop)
}

fn check_sched(report: &mut Report, who: &str, policy: i32, priority: i32, nice: i32) {
    // SAFETY: sched_getscheduler on the calling thread; no memory arguments.
    let found = unsafe { libc::sched_getscheduler(0) };
    report.check_eq(&format!("{who} policy"), found, policy);
    let mut param = libc::sched_param { sched_priority: -1 };
    // SAFETY: the kernel writes one sched_param into `param`.
    let ret = unsafe { libc::sched_getparam(0, &mut param) };
    report.check_eq(
        &format!("{who} priority"),
        (ret, param.sched_priority),
        (0, priority),
    );
    // SAFETY: errno is thread-local; getpriority has no memory arguments. -1 is a valid
    // nice value, so errno tells an error apart.
    let got = unsafe {
        *libc::__errno_location() = 0;
        let v = libc::getpriority(libc::PRIO_PROCESS, gettid() as libc::id_t);
        (v, *libc::__errno_location())
    };
    report.check_eq(&format!("{who} nice"), got, (nice, 0));
}

fn set_pdeath(sig: i32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) }).map(drop)
}

fn pdeath() -> Result<i32, String> {
    let mut sig: libc::c_int = -1;
    // SAFETY: the kernel writes one int into `sig`.
    let ret = unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut sig as *mut libc::c_int) };
    cvt(ret).map(|_| sig).map_err(|e| e.to_string())
}

/// A filter on the calling thread: syscall `nr` fails with `errno`, everything else is
/// allowed. Allowed without no_new_privs because the program runs as root.
fn install_filter(nr: i64, errno: u32) -> io::Result<()> {
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let ld_w_abs = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret_k = (libc::BPF_RET | libc::BPF_K) as u16;
    let mut program = [
        // seccomp_data.nr is the first field.
        stmt(ld_w_abs, 0),
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: nr as u32,
        },
        stmt(ret_k, SECCOMP_RET_ERRNO | errno),
        stmt(ret_k, SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: the kernel copies the program `fprog` points to (which lives across the
    // call) into its own memory.
    cvt(unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    })
    .map(drop)
}

/// Both filtered calls fail with their own errno on the calling thread.
fn check_filters(report: &mut Report, who: &str) {
    let errno_of = |nr: i64, args: [i64; 3]| {
        // SAFETY: acct(NULL) and syslog(SYSLOG_ACTION_SIZE_BUFFER, NULL, 0) take no
        // memory; errno is thread-local.
        unsafe {
            *libc::__errno_location() = 0;
            let ret = libc::syscall(nr, args[0], args[1], args[2]);
            (ret, *libc::__errno_location())
        }
    };
    report.check_eq(
        &format!("{who} acct under the filter"),
        errno_of(libc::SYS_acct, [0, 0, 0]),
        (-1, ACCT_ERRNO as i32),
    );
    report.check_eq(
        &format!("{who} syslog under the filter"),
        errno_of(libc::SYS_syslog, [10, 0, 0]),
        (-1, SYSLOG_ERRNO as i32),
    );
}

/// The worker thread: its own scheduling and parent-death signal; it checks itself
/// when asked.
struct Worker {
    ask: mpsc::Sender<()>,
    answer: mpsc::Receiver<Report>,
}

impl Worker {
    fn start(sched: bool, with_pdeath: bool, filter: bool) -> io::Result<Worker> {
        let (ask, asked) = mpsc::channel::<()>();
        let (answer_tx, answer) = mpsc::channel::<Report>();
        let (setup_tx, setup) = mpsc::channel::<io::Result<()>>();
        std::thread::Builder::new()
            .name("worker".into())
            .spawn(move || {
                let mut result = Ok(());
                if sched {
                    let policy = libc::SCHED_RR | SCHED_RESET_ON_FORK;
                    result = result.and_then(|()| set_sched(0, policy, WORKER_RT_PRIO));
                }
                if with_pdeath {
                    result = result.and_then(|()| set_pdeath(libc::SIGURG));
                }
                let _ = setup_tx.send(result);
                if asked.recv().is_err() {
                    return;
                }
                let mut report = Report::new();
                if sched {
                    let policy = libc::SCHED_RR | SCHED_RESET_ON_FORK;
                    // The nice value comes from the main thread, which set it first.
                    check_sched(&mut report, "worker", policy, WORKER_RT_PRIO, MAIN_NICE);
                }
                if with_pdeath {
                    report.check_eq("PR_GET_PDEATHSIG", pdeath(), Ok(libc::SIGURG));
                }
                let mode = if filter { "2" } else { "0" };
                report.check_eq("Seccomp:", seccomp_mode(gettid()), Some(mode.to_string()));
                if filter {
                    check_filters(&mut report, "worker");
                }
                let _ = answer_tx.send(report);
            })?;
        setup
            .recv_timeout(Duration::from_secs(10))
            .map_err(|e| io::Error::other(format!("no word from the worker: {e}")))??;
        Ok(Worker { ask, answer })
    }

    fn check(&self) -> Report {
        let mut report = Report::new();
        if self.ask.send(()).is_err() {
            report.fail("the worker thread is gone");
            return report;
        }
        match self.answer.recv_timeout(Duration::from_secs(10)) {
            Ok(r) => r,
            Err(e) => {
                report.fail(format!("no answer from the worker: {e}"));
                report
            }
        }
    }
}

/// A thread in seccomp strict mode, echoing byte + 1.
struct StrictThread {
    tid: libc::pid_t,
    to: std::fs::File,
    from: std::fs::File,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: the kernel writes two fds into `fds`.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds are new and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl StrictThread {
    fn start() -> io::Result<StrictThread> {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (tid_tx, tid_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("strict".into())
            .spawn(move || {
                let (rfd, wfd) = (in_r.as_raw_fd(), out_w.as_raw_fd());
                let _ = tid_tx.send(gettid());
                // No signal may run a handler here: it could call anything.
                // SAFETY: an all-ones sigset blocks every signal; the old mask is not
                // asked for.
                unsafe {
                    let mut all: libc::sigset_t = std::mem::zeroed();
                    libc::sigfillset(&mut all);
                    libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
                }
                // From here only read, write, exit and rt_sigreturn are allowed: raw
                // syscalls on fds owned by this closure (never closed: the thread never
                // returns).
                // SAFETY: prctl with integer arguments; then read/write of one byte into
                // and from a local.
                unsafe {
                    libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_STRICT, 0, 0, 0);
                    let mut byte = [b'!'];
                    libc::syscall(libc::SYS_write, wfd, byte.as_ptr(), 1);
                    loop {
                        if libc::syscall(libc::SYS_read, rfd, byte.as_mut_ptr(), 1) == 1 {
                            byte[0] = byte[0].wrapping_add(1);
                            libc::syscall(libc::SYS_write, wfd, byte.as_ptr(), 1);
                        }
                    }
                }
            })?;
        let tid = tid_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|e| io::Error::other(format!("no tid from the strict thread: {e}")))?;
        let mut strict = StrictThread {
            tid,
            to: std::fs::File::from(in_w),
            from: std::fs::File::from(out_r),
        };
        let mut hello = [0u8];
        strict.read_with_timeout(&mut hello)?;
        if hello != [b'!'] {
            return Err(io::Error::other("the strict thread did not start"));
        }
        Ok(strict)
    }

    fn read_with_timeout(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own, for up to 10 s.
        let ready = cvt(unsafe { libc::poll(&mut pfd, 1, 10_000) })?;
        if ready == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in 10 s"));
        }
        self.from.read_exact(buf)
    }

    fn echo(mut self, byte: u8) -> Result<(), String> {
        self.to.write_all(&[byte]).map_err(|e| e.to_string())?;
        let mut back = [0u8];
        self.read_with_timeout(&mut back)
            .map_err(|e| e.to_string())?;
        if back[0] == byte + 1 {
            Ok(())
        } else {
            Err(format!("sent {byte}, got {} back", back[0]))
        }
    }
}

/// The ranges of the vDSO and its data pages in our maps.
fn vdso_ranges() -> io::Result<Vec<(usize, usize)>> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    Ok(maps
        .lines()
        .filter(|l| l.ends_with("[vdso]") || l.contains("[vvar"))
        .filter_map(|l| {
            let (range, _) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect())
}

/// Forks the child without a vDSO; returns its pid once it has unmapped it.
fn start_novdso_child() -> io::Result<libc::pid_t> {
    let ranges = vdso_ranges()?;
    if ranges.is_empty() {
        return Err(io::Error::other("no [vdso] to unmap"));
    }
    let (r, w) = pipe()?;
    // SAFETY: the program is single-threaded here; the child only makes raw syscalls
    // (no allocation, no libc state) and never returns.
    let pid = cvt(unsafe { libc::fork() })?;
    if pid == 0 {
        // SAFETY: raw syscalls with integer arguments and pointers to locals.
        unsafe {
            libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            for &(start, end) in &ranges {
                libc::syscall(libc::SYS_munmap, start, end - start);
            }
            let byte = [b'u'];
            libc::syscall(libc::SYS_write, w.as_raw_fd(), byte.as_ptr(), 1);
            loop {
                libc::syscall(libc::SYS_pause);
            }
        }
    }
    drop(w);
    let mut file = std::fs::File::from(r);
    let mut byte = [0u8];
    file.read_exact(&mut byte)?;
    Ok(pid)
}

fn check_novdso_child(report: &mut Report, child: libc::pid_t) {
    // A zombie has no maps at all: it must be alive.
    let state = std::fs::read_to_string(format!("/proc/{child}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()?.to_string()));
    report.check(state.as_deref() == Some("S"), || {
        format!("the child without a vDSO is in state {state:?}, not asleep")
    });
    match std::fs::read_to_string(format!("/proc/{child}/maps")) {
        Ok(maps) => {
            let found: Vec<&str> = maps
                .lines()
                .filter(|l| l.contains("[vdso]") || l.contains("[vvar"))
                .collect();
            report.check(found.is_empty(), || {
                format!("the child without a vDSO has {found:?}")
            });
        }
        Err(e) => report.fail(format!("the child without a vDSO is gone: {e}")),
    }
}
