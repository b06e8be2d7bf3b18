//! tp-pty: a terminal server, as tmux or script is one: it holds pty masters, and a
//! session runs on one of them; the check proves every pty, the session's controlling
//! terminal and foreground group, and the data queued both ways survived.
//!
//! ```text
//! server (S, holds the masters) ── shell (L, leads a session on pty A)
//!                                    └─ job (J, its own group: A's foreground)
//! ```
//!
//! - pty A: S opens the master (posix_openpt, grantpt, unlockpt), sets the slave's
//!   settings through it (canonical mode with echo, ICRNL, ONLCR, `@` as VEOL) and a
//!   window size, and closes nothing else: it never opens the slave. L makes a session
//!   and opens the slave without O_NOCTTY (so it becomes its controlling terminal) on
//!   fds 0-2, forks J, which makes its own process group; L makes J's group the
//!   foreground one and ignores SIGTTOU/SIGTTIN, as a shell does. Queued before `ready`:
//!   typed input J has not read (lines ended by NL, CR and EOF, a tab among them, and a
//!   partial line with a non-ASCII character), its echo, and a line J wrote, both unread
//!   by S.
//! - pty B: S holds both ends (as openpty(3) leaves them), the slave in raw mode, with
//!   another window size; bytes no cooked terminal would pass unchanged (NUL, ^C, DEL, CR,
//!   0xff) queued both ways. `--packet yes` puts its master in packet mode.
//! - pty C: a master S never unlocked (locked): nobody can open its slave.
//! - pty D: two slaves S opened, then closed the master: they are hung up.
//!
//! J also holds `/dev/tty` and writes through it (`--dev-tty no`: through fd 1).
//!
//! `--queued no` leaves nothing queued (for restores that put queued data back through
//! the line discipline, as CRIU does); `--session-ctty no` does not check that J has the
//! controlling terminal too (CRIU gives it to the session leader only).
//!
//! `PATH.pty`: `a N`, `b N`, `c N` (the pty numbers), `leader PID`, `job PID`.
//!
//! Check (SIGUSR2 to S): each pty has its number, settings, window size, packet mode and
//! lock; the queued bytes are exactly there, both ways (A's lines come one read per
//! line, the partial line only once finished); L leads its session with A as its
//! controlling terminal and J's group in the foreground, J has it too and is in the
//! foreground; data goes both ways on A and B afterwards, and ^C typed on A interrupts J
//! (its group is the foreground). S then kills and reaps L and J.

use std::ffi::CStr;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use criu_testprogs::{cvt, cvt_size, install_handler, write_atomic, Program, Report};

/// What S types on A (J has not read it): lines ended by NL, CR and EOF (^D), then a
/// partial line.
const TYPED: &[u8] = b"first line\nsecond\tline\rthird\x04partial \xc3\xa9";
/// What J reads: the lines (CR turned into NL; EOF not read), one read each.
const LINES: [&[u8]; 3] = [b"first line\n", b"second\tline\n", b"third"];
/// The partial line, and how it ends after the restore.
const PARTIAL: &[u8] = b"partial \xc3\xa9";
/// The echo of TYPED on A's master (EOF is not echoed).
const ECHOED: &[u8] = b"first line\r\nsecond\tline\r\nthirdpartial \xc3\xa9";
/// What J wrote, and how S reads it (ONLCR).
const JOB_WROTE: &[u8] = b"from the job\n";
const JOB_WROTE_CR: &[u8] = b"from the job\r\n";
/// Raw bytes queued on B, both ways.
const RAW_IN: &[u8] = b"\x00\x03\x7f\r\n\xffin";
const RAW_OUT: &[u8] = b"raw\n\x00\x1b[0m\xffout";

const WINSIZE_A: libc::winsize = libc::winsize {
    ws_row: 37,
    ws_col: 101,
    ws_xpixel: 808,
    ws_ypixel: 555,
};
const WINSIZE_B: libc::winsize = libc::winsize {
    ws_row: 10,
    ws_col: 20,
    ws_xpixel: 0,
    ws_ypixel: 0,
};
/// The kernel's termios has 19 control characters.
const KERNEL_NCCS: usize = 19;
const WAIT: Duration = Duration::from_secs(10);

static INTERRUPTS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_sigint(_: c_int) {
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
}

fn main() {
    let mut program = Program::start(
        "tp-pty",
        &[
            (
                "--packet yes|no",
                "pty B's master in packet mode (default no)",
            ),
            ("--queued yes|no", "queue data both ways (default yes)"),
            (
                "--session-ctty yes|no",
                "check the job's controlling terminal too (default yes)",
            ),
            (
                "--dev-tty yes|no",
                "the job holds /dev/tty and answers through it (default yes)",
            ),
        ],
    );
    let packet = program.opt_or::<String>("--packet", "no".into()) == "yes";
    let queued = program.opt_or::<String>("--queued", "yes".into()) == "yes";
    let session_ctty = program.opt_or::<String>("--session-ctty", "yes".into()) == "yes";
    let dev_tty = program.opt_or::<String>("--dev-tty", "yes".into()) == "yes";

    // pty A and the session on it.
    let a = program.must(open_master(true), "open pty A");
    let a_index = program.must(pty_number(a), "pty A's number");
    let a_termios = cooked();
    program.must(set_termios(a, &a_termios), "set pty A's settings");
    program.must(set_winsize(a, &WINSIZE_A), "set pty A's window size");
    let to_leader = program.must(pipe(), "pipe");
    let from_leader = program.must(pipe(), "pipe");
    let to_job = program.must(pipe(), "pipe");
    let from_job = program.must(pipe(), "pipe");
    let job_pid = program.must(pipe(), "pipe");
    // SAFETY: single-threaded here; the child only runs its own code and exits.
    let leader = unsafe { libc::fork() };
    if leader < 0 {
        program.setup_failed("fork");
    }
    if leader == 0 {
        close_all(&[
            a,
            to_leader.1,
            from_leader.0,
            to_job.1,
            from_job.0,
            job_pid.0,
        ]);
        let code = leader_main(
            a_index,
            [to_leader.0, from_leader.1, to_job.0, from_job.1, job_pid.1],
            dev_tty,
        );
        // SAFETY: ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    close_all(&[to_leader.0, from_leader.1, to_job.0, from_job.1, job_pid.1]);
    let job = match read_line(job_pid.0, WAIT) {
        Some(line) => line.trim().parse::<libc::pid_t>().unwrap_or(0),
        None => 0,
    };
    if job <= 0 {
        kill_quietly(leader);
        program.setup_failed("the session did not start");
    }
    let mut s = Server {
        a,
        a_index,
        a_termios,
        to_leader: to_leader.1,
        from_leader: from_leader.0,
        to_job: to_job.1,
        from_job: from_job.0,
        leader,
        job,
        b: (-1, -1),
        b_index: 0,
        b_termios: cooked(),
        c: -1,
        c_index: 0,
        d: [-1, -1],
        packet,
        queued,
        session_ctty,
    };
    if let Err(e) = s.set_up_b_and_c() {
        s.kill();
        program.setup_failed(format!("ptys B and C: {e}"));
    }
    if queued {
        if let Err(e) = s.queue_on_a() {
            s.kill();
            program.setup_failed(format!("queueing on pty A: {e}"));
        }
    }
    let info = format!(
        "a {}\nb {}\nc {}\nleader {}\njob {}\n",
        s.a_index, s.b_index, s.c_index, s.leader, s.job
    );
    if let Err(e) = write_atomic(&program.companion(".pty"), info.as_bytes()) {
        s.kill();
        program.setup_failed(format!("write PATH.pty: {e}"));
    }
    program.ready();
    program.work_until_check(Duration::from_millis(50), || {});
    let report = s.check();
    s.kill();
    program.finish(&report);
}

/// The server's view: its ptys and its session's processes.
struct Server {
    a: c_int,
    a_index: u32,
    a_termios: libc::termios,
    to_leader: c_int,
    from_leader: c_int,
    to_job: c_int,
    from_job: c_int,
    leader: libc::pid_t,
    job: libc::pid_t,
    /// B's master and slave.
    b: (c_int, c_int),
    b_index: u32,
    b_termios: libc::termios,
    c: c_int,
    c_index: u32,
    /// D's hung-up slaves.
    d: [c_int; 2],
    packet: bool,
    queued: bool,
    session_ctty: bool,
}

impl Server {
    fn set_up_b_and_c(&mut self) -> std::io::Result<()> {
        let m = open_master(true)?;
        self.b_index = pty_number(m)?;
        let path = format!("/dev/pts/{}\0", self.b_index);
        let path = CStr::from_bytes_with_nul(path.as_bytes()).expect("NUL-terminated");
        // SAFETY: a NUL-terminated path.
        let s = cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) })?;
        self.b = (m, s);
        let mut t = get_termios(s)?;
        // SAFETY: `t` is a valid termios.
        unsafe { libc::cfmakeraw(&mut t) };
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        set_termios(s, &t)?;
        self.b_termios = get_termios(s)?;
        set_winsize(m, &WINSIZE_B)?;
        if self.queued {
            write_all(m, RAW_IN)?;
            write_all(s, RAW_OUT)?;
            // The line disciplines take both on their own time.
            let want = |fd, n| move || inq(fd).is_ok_and(|q| q == n);
            if !wait_until(want(s, RAW_IN.len())) || !wait_until(want(m, RAW_OUT.len())) {
                return Err(std::io::Error::other("pty B's queues did not fill"));
            }
        }
        if self.packet {
            ioctl_int(m, libc::TIOCPKT, 1)?;
        }
        self.c = open_master(false)?;
        self.c_index = pty_number(self.c)?;
        let d = open_master(true)?;
        let path = format!("/dev/pts/{}\0", pty_number(d)?);
        for slave in &mut self.d {
            // SAFETY: a NUL-terminated path.
            *slave =
                cvt(unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_NOCTTY) })?;
        }
        // SAFETY: our own fd; closing the master hangs the slaves up.
        unsafe { libc::close(d) };
        Ok(())
    }

    /// Types on A, waits for the echo, has the job write a line: both queues of A
    /// hold known bytes.
    fn queue_on_a(&mut self) -> std::io::Result<()> {
        write_all(self.a, TYPED)?;
        let a = self.a;
        if !wait_until(|| inq(a).is_ok_and(|n| n == ECHOED.len())) {
            return Err(std::io::Error::other(format!(
                "the echo did not come ({:?} bytes)",
                inq(a)
            )));
        }
        self.ask_job("write")?;
        let total = ECHOED.len() + JOB_WROTE_CR.len();
        if !wait_until(|| inq(a).is_ok_and(|n| n == total)) {
            return Err(std::io::Error::other("the job's line did not come"));
        }
        Ok(())
    }

    fn ask_job(&self, command: &str) -> std::io::Result<String> {
        ask(self.to_job, self.from_job, command)
    }

    fn ask_leader(&self, command: &str) -> std::io::Result<String> {
        ask(self.to_leader, self.from_leader, command)
    }

    fn check(&mut self) -> Report {
        let mut report = Report::new();
        self.check_a(&mut report);
        self.check_b(&mut report);
        self.check_c(&mut report);
        self.check_d(&mut report);
        report
    }

    fn check_a(&mut self, report: &mut Report) {
        let a = self.a;
        report.check_eq("pty A's number", pty_number(a).ok(), Some(self.a_index));
        if let Some(t) = report.ok_or_fail(get_termios(a), "pty A's settings") {
            check_termios(report, "pty A", &t, &self.a_termios);
        }
        if let Some(w) = report.ok_or_fail(get_winsize(a), "pty A's window size") {
            check_winsize(report, "pty A", &w, &WINSIZE_A);
        }
        report.check_eq("pty A locked", ioctl_get(a, TIOCGPTLCK).ok(), Some(0));
        report.check_eq("pty A packet mode", ioctl_get(a, TIOCGPKT).ok(), Some(0));
        if self.queued {
            let mut want = ECHOED.to_vec();
            want.extend_from_slice(JOB_WROTE_CR);
            let got = read_exactly(a, want.len(), false);
            report.check(got == want, || {
                format!(
                    "pty A's master queue: {}, expected {}",
                    show(&got),
                    show(&want)
                )
            });
        }
        for (who, answer) in [
            ("leader", self.ask_leader("check")),
            (
                "job",
                self.ask_job(&format!("check {} {}", self.session_ctty, self.queued)),
            ),
        ] {
            match answer {
                Ok(line) if line == "pass" => {}
                Ok(line) => report.fail(format!("{who}: {line}")),
                Err(e) => report.fail(format!("{who}: no answer: {e}")),
            }
        }
        // Both ways once more: the partial line finished by new input, then the job's
        // answer; the new echo comes first.
        if let Err(e) = write_all(a, b"!\r") {
            report.fail(format!("typing on pty A: {e}"));
            return;
        }
        let expect = if self.queued {
            let mut line = PARTIAL.to_vec();
            line.extend_from_slice(b"!\n");
            line
        } else {
            b"!\n".to_vec()
        };
        match self.ask_job("read") {
            Ok(line) if line.as_bytes() == show(&expect).as_bytes() => {}
            Ok(line) => report.fail(format!(
                "the job read {line} after the restore, expected {}",
                show(&expect)
            )),
            Err(e) => report.fail(format!("job: no answer to read: {e}")),
        }
        let want = b"!\r\npong\r\n";
        let got = read_exactly(a, want.len(), false);
        report.check(got == want, || {
            format!(
                "pty A after the restore: {}, expected {}",
                show(&got),
                show(want)
            )
        });
        // ^C typed on A interrupts the foreground group: the job's.
        if let Err(e) = write_all(a, b"\x03") {
            report.fail(format!("typing ^C on pty A: {e}"));
            return;
        }
        match self.ask_job("interrupted") {
            Ok(line) if line == "pass" => {}
            Ok(line) => report.fail(format!("job after ^C: {line}")),
            Err(e) => report.fail(format!("job: no answer after ^C: {e}")),
        }
    }

    fn check_b(&mut self, report: &mut Report) {
        let (m, s) = self.b;
        report.check_eq("pty B's number", pty_number(m).ok(), Some(self.b_index));
        report.check_eq(
            "pty B's slave",
            criu_testprogs::fd_link(s).ok(),
            Some(format!("/dev/pts/{}", self.b_index)),
        );
        if let Some(t) = report.ok_or_fail(get_termios(s), "pty B's settings") {
            check_termios(report, "pty B", &t, &self.b_termios);
        }
        if let Some(w) = report.ok_or_fail(get_winsize(m), "pty B's window size") {
            check_winsize(report, "pty B", &w, &WINSIZE_B);
        }
        report.check_eq(
            "pty B packet mode",
            ioctl_get(m, TIOCGPKT).ok(),
            Some(i32::from(self.packet)),
        );
        if self.queued {
            let got = read_exactly(m, RAW_OUT.len(), self.packet);
            report.check(got == RAW_OUT, || {
                format!(
                    "pty B's master queue: {}, expected {}",
                    show(&got),
                    show(RAW_OUT)
                )
            });
            let got = read_exactly(s, RAW_IN.len(), false);
            report.check(got == RAW_IN, || {
                format!(
                    "pty B's slave queue: {}, expected {}",
                    show(&got),
                    show(RAW_IN)
                )
            });
        }
        let ok = write_all(m, b"m2s").is_ok() && read_exactly(s, 3, false) == b"m2s";
        report.check(ok, || "pty B carries no data master to slave".into());
        let ok = write_all(s, b"s2m").is_ok() && read_exactly(m, 3, self.packet) == b"s2m";
        report.check(ok, || "pty B carries no data slave to master".into());
    }

    fn check_c(&mut self, report: &mut Report) {
        report.check_eq(
            "pty C's number",
            pty_number(self.c).ok(),
            Some(self.c_index),
        );
        report.check_eq("pty C locked", ioctl_get(self.c, TIOCGPTLCK).ok(), Some(1));
        let path = format!("/dev/pts/{}\0", self.c_index);
        let path = CStr::from_bytes_with_nul(path.as_bytes()).expect("NUL-terminated");
        // SAFETY: a NUL-terminated path.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
        let err = std::io::Error::last_os_error().raw_os_error();
        if fd >= 0 {
            // SAFETY: our own fd.
            unsafe { libc::close(fd) };
            report.fail("pty C's slave opens: it is not locked");
        } else {
            report.check_eq("opening pty C's slave", err, Some(libc::EIO));
        }
    }

    fn check_d(&mut self, report: &mut Report) {
        for slave in self.d {
            let link = criu_testprogs::fd_link(slave).unwrap_or_default();
            report.check(
                link.starts_with("/dev/pts/") && link.ends_with(" (deleted)"),
                || format!("pty D's slave is {link}, not a deleted /dev/pts/N"),
            );
            let settings = get_termios(slave).map_err(|e| e.raw_os_error());
            report.check_eq(
                "pty D's slave settings",
                settings.err(),
                Some(Some(libc::EIO)),
            );
            let mut b = [0u8; 8];
            // SAFETY: `b` is valid for its length.
            let n = unsafe { libc::read(slave, b.as_mut_ptr().cast(), b.len()) };
            report.check_eq("a read of pty D's slave", n, 0);
            let w = write_all(slave, b"x").map_err(|e| e.raw_os_error());
            report.check_eq("a write to pty D's slave", w.err(), Some(Some(libc::EIO)));
        }
    }

    fn kill(&self) {
        kill_quietly(self.job);
        kill_quietly(self.leader);
    }
}

/// The session leader (a shell): makes its session on pty A, starts the job in its own
/// group in the foreground, and answers the server.
/// `pipes`: commands and answers of the leader, of the job, and where the job's pid
/// goes. `dev_tty`: the job holds /dev/tty.
fn leader_main(index: u32, pipes: [c_int; 5], dev_tty: bool) -> i32 {
    let [cmd, answer, job_cmd, job_answer, job_pid] = pipes;
    // SAFETY: plain calls with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::signal(libc::SIGTTIN, libc::SIG_IGN);
        if libc::setsid() < 0 {
            return 3;
        }
    }
    let path = format!("/dev/pts/{index}\0");
    // Without O_NOCTTY: a session leader without a terminal gets this one.
    // SAFETY: a NUL-terminated path.
    let tty = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR) };
    if tty < 0 {
        return 4;
    }
    for n in 0..3 {
        // SAFETY: our own fds.
        unsafe { libc::dup2(tty, n) };
    }
    // SAFETY: our own fd.
    unsafe { libc::close(tty) };
    // SAFETY: single-threaded; the child runs its own code and exits.
    let job = unsafe { libc::fork() };
    if job == 0 {
        close_all(&[cmd, answer, job_pid]);
        // SAFETY: ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(job_main(job_cmd, job_answer, dev_tty)) };
    }
    close_all(&[job_cmd, job_answer]);
    if job < 0 {
        return 5;
    }
    // SAFETY: plain calls with integer arguments (both sides set the group: no race).
    unsafe {
        libc::setpgid(job, job);
        if libc::tcsetpgrp(0, job) < 0 {
            return 6;
        }
    }
    let _ = write_all(job_pid, format!("{job}\n").as_bytes());
    close_all(&[job_pid]);
    loop {
        let Some(command) = read_line(cmd, Duration::from_secs(3600)) else {
            return 0;
        };
        let reply = match command.as_str() {
            "check" => {
                let mut report = Report::new();
                check_ctty(&mut report, index, true, job);
                report.summary()
            }
            other => format!("fail: unknown command {other}"),
        };
        if write_all(answer, format!("{reply}\n").as_bytes()).is_err() {
            return 0;
        }
    }
}

/// The job: its own group, in the foreground; reads and writes the terminal when told.
/// With `dev_tty` it holds /dev/tty and writes through it.
fn job_main(cmd: c_int, answer: c_int, dev_tty: bool) -> i32 {
    // SAFETY: plain calls; the handler only counts.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::setpgid(0, 0);
    }
    let out = if dev_tty {
        // SAFETY: a NUL-terminated path.
        let fd = unsafe { libc::open(c"/dev/tty".as_ptr(), libc::O_RDWR) };
        if fd < 0 {
            return 4;
        }
        fd
    } else {
        1
    };
    if install_handler(libc::SIGINT, on_sigint, libc::SA_RESTART, &[]).is_err() {
        return 3;
    }
    loop {
        let Some(command) = read_line(cmd, Duration::from_secs(3600)) else {
            return 0;
        };
        let reply = match command.as_str() {
            "write" => match write_all(out, JOB_WROTE) {
                Ok(()) => "pass".to_owned(),
                Err(e) => format!("fail: {e}"),
            },
            c if c.starts_with("check ") => {
                // `check CTTY QUEUED`: whether to look at its controlling terminal and
                // for the queued lines.
                let ctty = c.split(' ').nth(1) == Some("true");
                let queued = c.split(' ').nth(2) == Some("true");
                let mut report = Report::new();
                // SAFETY: plain calls.
                let (me, sid) = unsafe { (libc::getpid(), libc::getsid(0)) };
                let index = std::fs::read_link("/proc/self/fd/0")
                    .ok()
                    .and_then(|l| l.to_str()?.strip_prefix("/dev/pts/")?.parse().ok())
                    .unwrap_or(u32::MAX);
                if ctty {
                    check_ctty(&mut report, index, false, me);
                }
                if out != 1 {
                    // /dev/tty stands for pty A.
                    let dev = ioctl_get(out, TIOCGDEV).map(|d| d as u32);
                    let want = ((136 + index / 256) << 8) | (index % 256);
                    report.check_eq("the terminal /dev/tty stands for", dev.ok(), Some(want));
                }
                // SAFETY: plain call.
                report.check_eq("job's group", unsafe { libc::getpgrp() }, me);
                report.check(sid != me, || "the job leads a session".into());
                if queued {
                    for want in LINES {
                        let got = read_line_raw(0);
                        report.check(got == want, || {
                            format!("job read {}, expected {}", show(&got), show(want))
                        });
                    }
                }
                // The partial line is not a line yet (and nothing else is there).
                report.check(!readable(0, 100), || {
                    "the partial line reads as a line".into()
                });
                report.summary()
            }
            "read" => {
                let line = read_line_raw(0);
                let _ = write_all(out, b"pong\n");
                show(&line)
            }
            "interrupted" => {
                let mut waited = 0;
                while INTERRUPTS.load(Ordering::SeqCst) == 0 && waited < 300 {
                    std::thread::sleep(Duration::from_millis(10));
                    waited += 1;
                }
                match INTERRUPTS.load(Ordering::SeqCst) {
                    1 => "pass".to_owned(),
                    n => format!("fail: {n} SIGINTs"),
                }
            }
            other => format!("fail: unknown command {other}"),
        };
        if write_all(answer, format!("{reply}\n").as_bytes()).is_err() {
            return 0;
        }
    }
}

/// The calling process's controlling terminal is pty `index`, its session's
/// (`leader`: it leads that session), with group `foreground` in the foreground.
fn check_ctty(report: &mut Report, index: u32, leader: bool, foreground: libc::pid_t) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let tty_nr: u64 = fields.get(4).and_then(|f| f.parse().ok()).unwrap_or(0);
    let want = libc::makedev(136 + index / 256, index % 256);
    report.check_eq("controlling terminal (tty_nr)", tty_nr, want);
    // SAFETY: plain calls on fd 0.
    let (me, sid, fg) = unsafe { (libc::getpid(), libc::tcgetsid(0), libc::tcgetpgrp(0)) };
    if leader {
        report.check_eq("the terminal's session", sid, me);
    }
    report.check_eq("the terminal's foreground group", fg, foreground);
    // SAFETY: a NUL-terminated path.
    let tty = unsafe { libc::open(c"/dev/tty".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if tty < 0 {
        report.fail(format!(
            "/dev/tty does not open: {}",
            std::io::Error::last_os_error()
        ));
    } else {
        // SAFETY: our own fd.
        unsafe { libc::close(tty) };
    }
}

// --- helpers --------------------------------------------------------------------------

const TIOCGPKT: libc::c_ulong = 0x8004_5438;
const TIOCGPTLCK: libc::c_ulong = 0x8004_5439;
const TIOCGDEV: libc::c_ulong = 0x8004_5432;

fn open_master(unlock: bool) -> std::io::Result<c_int> {
    // SAFETY: plain calls with integer arguments.
    let m = cvt(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) })?;
    // SAFETY: as above, on our own master.
    cvt(unsafe { libc::grantpt(m) })?;
    if unlock {
        // SAFETY: as above.
        cvt(unsafe { libc::unlockpt(m) })?;
    }
    Ok(m)
}

fn pty_number(m: c_int) -> std::io::Result<u32> {
    ioctl_get(m, libc::TIOCGPTN).map(|n| n as u32)
}

fn ioctl_get(fd: c_int, request: libc::c_ulong) -> std::io::Result<i32> {
    let mut v: c_int = 0;
    // SAFETY: the requests used write one int.
    cvt(unsafe { libc::ioctl(fd, request as _, &mut v) })?;
    Ok(v)
}

fn ioctl_int(fd: c_int, request: libc::c_ulong, value: c_int) -> std::io::Result<()> {
    // SAFETY: the requests used read one int.
    cvt(unsafe { libc::ioctl(fd, request as _, &value) }).map(drop)
}

/// Bytes waiting to be read (FIONREAD).
fn inq(fd: c_int) -> std::io::Result<usize> {
    ioctl_get(fd, libc::FIONREAD).map(|n| n as usize)
}

/// Cooked settings a login terminal has, with `@` as an extra end of line.
fn cooked() -> libc::termios {
    // SAFETY: termios is plain integers.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    t.c_iflag = libc::ICRNL | libc::IXON | libc::IUTF8;
    t.c_oflag = libc::OPOST | libc::ONLCR;
    t.c_cflag = libc::CS8 | libc::CREAD | libc::B38400;
    t.c_lflag = libc::ICANON
        | libc::ECHO
        | libc::ECHOE
        | libc::ECHOK
        | libc::ECHOCTL
        | libc::ECHOKE
        | libc::ISIG
        | libc::IEXTEN;
    let cc = [
        (libc::VINTR, 3),
        (libc::VQUIT, 0x1c),
        (libc::VERASE, 0x7f),
        (libc::VKILL, 0x15),
        (libc::VEOF, 4),
        (libc::VEOL, b'@'),
        (libc::VSTART, 0x11),
        (libc::VSTOP, 0x13),
        (libc::VSUSP, 0x1a),
        (libc::VMIN, 1),
    ];
    for (i, v) in cc {
        t.c_cc[i] = v;
    }
    t
}

fn get_termios(fd: c_int) -> std::io::Result<libc::termios> {
    // SAFETY: termios is plain integers.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid place for the kernel to write.
    cvt(unsafe { libc::tcgetattr(fd, &mut t) })?;
    Ok(t)
}

fn set_termios(fd: c_int, t: &libc::termios) -> std::io::Result<()> {
    // SAFETY: `t` is a valid termios.
    cvt(unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) }).map(drop)
}

fn get_winsize(fd: c_int) -> std::io::Result<libc::winsize> {
    let mut w = WINSIZE_B;
    // SAFETY: TIOCGWINSZ writes one winsize.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) })?;
    Ok(w)
}

fn set_winsize(fd: c_int, w: &libc::winsize) -> std::io::Result<()> {
    // SAFETY: TIOCSWINSZ reads one winsize.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, w) }).map(drop)
}

fn check_termios(report: &mut Report, what: &str, found: &libc::termios, want: &libc::termios) {
    let flags = |t: &libc::termios| (t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag);
    report.check_eq(&format!("{what} flags"), flags(found), flags(want));
    report.check_eq(
        &format!("{what} control characters"),
        &found.c_cc[..KERNEL_NCCS],
        &want.c_cc[..KERNEL_NCCS],
    );
}

fn check_winsize(report: &mut Report, what: &str, found: &libc::winsize, want: &libc::winsize) {
    let dims = |w: &libc::winsize| (w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel);
    report.check_eq(&format!("{what} window size"), dims(found), dims(want));
}

fn pipe() -> std::io::Result<(c_int, c_int)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two fds.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((fds[0], fds[1]))
}

fn close_all(fds: &[c_int]) {
    for &fd in fds {
        // SAFETY: our own fds.
        unsafe { libc::close(fd) };
    }
}

fn write_all(fd: c_int, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is valid for its length.
        let n = cvt_size(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) })?;
        data = &data[n..];
    }
    Ok(())
}

fn readable(fd: c_int, timeout_ms: c_int) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd of ours.
    unsafe { libc::poll(&mut p, 1, timeout_ms) > 0 && p.revents & libc::POLLIN != 0 }
}

/// One read(2) of at most a line's worth (a canonical terminal gives one line).
fn read_line_raw(fd: c_int) -> Vec<u8> {
    if !readable(fd, 5000) {
        return Vec::new();
    }
    let mut buf = [0u8; 512];
    // SAFETY: `buf` is valid for its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    buf[..n.max(0) as usize].to_vec()
}

/// Reads `n` bytes (bounded wait); in packet mode without the status bytes.
fn read_exactly(fd: c_int, n: usize, packet: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut polls = 0;
    while out.len() < n && polls < 200 {
        polls += 1;
        if !readable(fd, 10) {
            continue;
        }
        let mut buf = [0u8; 4096];
        let want = if packet {
            n - out.len() + 1
        } else {
            n - out.len()
        };
        // SAFETY: `buf` is valid for `want` <= its length bytes.
        let got = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), want.min(buf.len())) };
        if got <= 0 {
            break;
        }
        let got = &buf[..got as usize];
        match (packet, got.split_first()) {
            (true, Some((0, data))) => out.extend_from_slice(data),
            (true, _) => {}
            (false, _) => out.extend_from_slice(got),
        }
    }
    out
}

/// A line from a pipe, without its newline; `None` on end-of-file or after `timeout`.
fn read_line(fd: c_int, timeout: Duration) -> Option<String> {
    let mut line = Vec::new();
    let slices = timeout.as_millis() / 100 + 1;
    let mut waited = 0;
    loop {
        if !readable(fd, 100) {
            waited += 1;
            if waited > slices {
                return None;
            }
            continue;
        }
        let mut b = [0u8; 1];
        // SAFETY: one byte into `b`.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        if n <= 0 {
            return None;
        }
        if b[0] == b'\n' {
            return Some(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
    }
}

/// Sends `command` and waits (bounded) for the one-line answer.
fn ask(to: c_int, from: c_int, command: &str) -> std::io::Result<String> {
    write_all(to, format!("{command}\n").as_bytes())?;
    read_line(from, WAIT).ok_or_else(|| std::io::Error::other("no answer"))
}

/// Bytes shown escaped, for messages (and the job's answers).
fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    criu_testprogs::wait_until(WAIT, &mut cond)
}

fn kill_quietly(pid: libc::pid_t) {
    if pid <= 0 {
        return;
    }
    // SAFETY: our own child (or grandchild); waitpid only reaps our children.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
}
