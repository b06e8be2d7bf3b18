//! tp-tree: a process tree sharing a pipe and a MAP_SHARED region; the check proves the
//! tree, its process groups, the sharing and every process's private memory survived.
//!
//! ```text
//! parent (P) ── child A ── grandchild G (own process group)
//!            └─ child B
//! ```
//!
//! - P, A and B are in P's process group; G makes itself the leader of its own. All are in
//!   P's session. Children die with their parent (PR_SET_PDEATHSIG) and leave if orphaned.
//! - One pipe, created before the forks: P writes 8-byte tokens 1, 2, 3... every ~2 ms
//!   (skipping when the pipe is full); A, B and G read them (each sees its tokens rising).
//! - One MAP_SHARED|MAP_ANONYMOUS page, the *board*: a slot per process with its pid, a
//!   counter it bumps every few ms, its state and at the end its findings.
//! - Each process fills a 128 KiB private heap buffer with its own pattern after the fork
//!   (so the copies diverge under copy-on-write).
//!
//! P writes `ready <P's pid>` once all three report ready on the board, and `PATH.pids`
//! (`ROLE PID` lines). On SIGUSR2, P checks its own memory and process group, waits for each
//! child's counter to move (they run and the page is still shared), writes a fresh nonce
//! to the board and sends SIGUSR2 to A, B and G. Each checks getppid(), its process group
//! and session, its private memory and its token order, echoes the nonce it sees, and
//! posts its findings; A also reaps G. P then drains the pipe and checks that every token
//! it wrote was read exactly once (children's counts plus what is left add up), reaps A and
//! B, and writes the combined result.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use criu_testprogs::{
    check_pattern, check_requested, cvt, cvt_size, fill_pattern, random_seed, wait_until,
    write_atomic, Mapping, Program, Report,
};

const PRIVATE_WORDS: usize = 16 * 1024;
const MESSAGE_BYTES: usize = 400;
const WAIT: Duration = Duration::from_secs(10);
/// Exit status of a child that found itself orphaned.
const EXIT_ORPHANED: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Parent,
    A,
    B,
    Grandchild,
}

impl Role {
    const CHILDREN: [Role; 3] = [Role::A, Role::B, Role::Grandchild];

    fn slot(self) -> usize {
        match self {
            Role::Parent => 0,
            Role::A => 1,
            Role::B => 2,
            Role::Grandchild => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Parent => "parent",
            Role::A => "child A",
            Role::B => "child B",
            Role::Grandchild => "grandchild",
        }
    }

    fn seed(self, seed: u64) -> u64 {
        (seed ^ (self.slot() as u64 + 1).wrapping_mul(0x0F0F_1234_0000_0001)) | 1
    }
}

// Slot states; a slot starts at 0 (the zeroed board) until its process is up.
const READY: u32 = 1;
const REPORTED: u32 = 2;

/// One process's part of the board.
#[repr(C)]
struct Slot {
    pid: AtomicI32,
    state: AtomicU32,
    counter: AtomicU64,
    /// The nonce this process read from the board at the check.
    echo: AtomicU64,
    tokens_read: AtomicU64,
    last_token: AtomicU64,
    passed: AtomicBool,
    message_len: AtomicU32,
    message: [AtomicU8; MESSAGE_BYTES],
}

/// The MAP_SHARED page. All zero is a valid board (every field is an atomic).
#[repr(C)]
struct Board {
    pgid: AtomicI32,
    sid: AtomicI32,
    nonce: AtomicU64,
    slots: [Slot; 4],
}

const _: () = assert!(std::mem::size_of::<Board>() <= 4096);

impl Board {
    fn slot(&self, role: Role) -> &Slot {
        &self.slots[role.slot()]
    }
}

impl Slot {
    fn post(&self, report: &Report) {
        let text = report.summary();
        let bytes = &text.as_bytes()[..text.len().min(MESSAGE_BYTES)];
        for (cell, &b) in self.message.iter().zip(bytes) {
            cell.store(b, Ordering::Relaxed);
        }
        self.message_len
            .store(bytes.len() as u32, Ordering::Relaxed);
        self.passed.store(report.passed(), Ordering::Relaxed);
        self.state.store(REPORTED, Ordering::SeqCst);
    }

    fn message(&self) -> String {
        let len = self.message_len.load(Ordering::SeqCst) as usize;
        let bytes: Vec<u8> = self.message[..len.min(MESSAGE_BYTES)]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// What every process knows about itself.
struct Me<'a> {
    role: Role,
    board: &'a Board,
    seed: u64,
    private: Vec<u64>,
    pipe_r: c_int,
}

impl Me<'_> {
    fn slot(&self) -> &Slot {
        self.board.slot(self.role)
    }

    fn fill_private(&mut self) {
        fill_pattern(&mut self.private, self.role.seed(self.seed), 0);
    }

    fn check_private(&self, report: &mut Report) {
        if let Some(m) = check_pattern(&self.private, self.role.seed(self.seed), 0) {
            report.fail(format!("private memory: {m}"));
        }
    }
}

fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

fn getppid() -> libc::pid_t {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() }
}

fn getpgid() -> libc::pid_t {
    // SAFETY: getpgid(0) has no preconditions.
    unsafe { libc::getpgid(0) }
}

fn getsid() -> libc::pid_t {
    // SAFETY: getsid(0) has no preconditions.
    unsafe { libc::getsid(0) }
}

fn main() {
    let mut program = Program::start("tp-tree", &[]);
    let mut board_map = program.must(Mapping::anonymous(4096, true), "mmap the shared board");
    board_map.words_mut().fill(0);
    // SAFETY: the page is zeroed, 4096 bytes, page aligned (enough for Board's atomics) and
    // outlives `board`; all-zero is a valid Board; it is only accessed through atomics.
    let board: &Board = unsafe { &*board_map.addr().cast::<Board>() };

    let mut pipe = [-1; 2];
    // SAFETY: `pipe` has room for the two fds pipe2 writes.
    program.must(
        cvt(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_NONBLOCK) }),
        "pipe2",
    );
    let [pipe_r, pipe_w] = pipe;

    board.pgid.store(getpgid(), Ordering::SeqCst);
    board.sid.store(getsid(), Ordering::SeqCst);
    let mut me = Me {
        role: Role::Parent,
        board,
        seed: random_seed(),
        private: vec![0; PRIVATE_WORDS],
        pipe_r,
    };
    me.fill_private();
    me.slot().pid.store(getpid(), Ordering::SeqCst);
    me.slot().state.store(READY, Ordering::SeqCst);

    let parent = getpid();
    let a = fork_child(&program, &mut me, Role::A, parent, pipe_w, &[]);
    let b = fork_child(&program, &mut me, Role::B, parent, pipe_w, &[a]);
    let children = [a, b];

    let all_ready = wait_until(WAIT, || {
        Role::CHILDREN
            .iter()
            .all(|r| board.slot(*r).state.load(Ordering::SeqCst) == READY)
    });
    if !all_ready {
        kill_children(&children);
        program.setup_failed("the children did not all report ready within 10 s");
    }
    let pids: String = [Role::Parent, Role::A, Role::B, Role::Grandchild]
        .iter()
        .map(|r| {
            format!(
                "{} {}\n",
                r.name().replace(' ', "-"),
                board.slot(*r).pid.load(Ordering::SeqCst)
            )
        })
        .collect();
    if let Err(e) = write_atomic(&program.companion(".pids"), pids.as_bytes()) {
        kill_children(&children);
        program.setup_failed(format!("write PATH.pids: {e}"));
    }

    let counters_at_ready: Vec<u64> = Role::CHILDREN
        .iter()
        .map(|r| board.slot(*r).counter.load(Ordering::SeqCst))
        .collect();
    program.ready();
    let mut written = 0u64;
    program.work_until_check(Duration::from_millis(2), || {
        let token = (written + 1).to_ne_bytes();
        // SAFETY: `token` is valid for 8 bytes of reading; the pipe is non-blocking.
        let n = unsafe { libc::write(pipe_w, token.as_ptr().cast(), token.len()) };
        if n == 8 {
            written += 1;
        }
        me.slot().counter.fetch_add(1, Ordering::SeqCst);
    });

    let report = parent_check(&me, &children, &counters_at_ready, written);
    program.finish(&report);
}

/// Forks `role` (killing `forked` if that fails); returns the child's pid in the parent.
/// The child never returns.
fn fork_child(
    program: &Program,
    me: &mut Me,
    role: Role,
    parent: libc::pid_t,
    pipe_w: c_int,
    forked: &[libc::pid_t],
) -> libc::pid_t {
    // SAFETY: the program is single-threaded, so the child may keep running Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        kill_children(forked);
        program.setup_failed(format!(
            "fork {}: {}",
            role.name(),
            std::io::Error::last_os_error()
        ));
    }
    if pid > 0 {
        return pid;
    }
    std::process::exit(child_main(me, role, parent, pipe_w));
}

fn child_main(me: &mut Me, role: Role, parent: libc::pid_t, pipe_w: c_int) -> i32 {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    if getppid() != parent {
        return EXIT_ORPHANED; // the parent died before the death signal was armed
    }
    me.role = role;
    me.fill_private();
    if role == Role::Grandchild {
        // SAFETY: setpgid has no memory arguments.
        unsafe { libc::setpgid(0, 0) };
    }
    let mut grandchild = None;
    if role == Role::A {
        // G inherits the write end too and closes its copy itself.
        grandchild = fork_grandchild(me, getpid(), pipe_w);
    }
    // SAFETY: closing our copy of the write end; only the parent writes tokens.
    unsafe { libc::close(pipe_w) };
    me.slot().pid.store(getpid(), Ordering::SeqCst);
    me.slot().state.store(READY, Ordering::SeqCst);

    let mut tokens_read = 0u64;
    let mut last_token = 0u64;
    let mut out_of_order = None;
    while !check_requested() {
        me.slot().counter.fetch_add(1, Ordering::SeqCst);
        if getppid() != parent {
            return EXIT_ORPHANED;
        }
        for token in read_tokens(me.pipe_r, 5) {
            if token <= last_token && out_of_order.is_none() {
                out_of_order = Some((last_token, token));
            }
            last_token = token;
            tokens_read += 1;
        }
    }

    let mut report = Report::new();
    report.check_eq("getppid", getppid(), parent);
    let (expected_pgid, what) = if role == Role::Grandchild {
        (getpid(), "process group (own)")
    } else {
        (
            me.board.pgid.load(Ordering::SeqCst),
            "process group (the parent's)",
        )
    };
    report.check_eq(what, getpgid(), expected_pgid);
    report.check_eq("session", getsid(), me.board.sid.load(Ordering::SeqCst));
    me.check_private(&mut report);
    if let Some((before, after)) = out_of_order {
        report.fail(format!("token {after} came after token {before}"));
    }
    // The parent writes the nonce before it signals.
    let mut nonce = 0;
    wait_until(Duration::from_secs(1), || {
        nonce = me.board.nonce.load(Ordering::SeqCst);
        nonce != 0
    });
    me.slot().echo.store(nonce, Ordering::SeqCst);
    if let Some(g) = grandchild {
        reap(&mut report, "grandchild", g);
    }
    me.slot().tokens_read.store(tokens_read, Ordering::SeqCst);
    me.slot().last_token.store(last_token, Ordering::SeqCst);
    me.slot().post(&report);
    if report.passed() {
        0
    } else {
        1
    }
}

/// Forks the grandchild from A; returns its pid in A.
fn fork_grandchild(me: &mut Me, a: libc::pid_t, pipe_w: c_int) -> Option<libc::pid_t> {
    // SAFETY: the process is single-threaded, so the child may keep running Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return None; // A reports ready without G; the parent's wait for G times out.
    }
    if pid > 0 {
        // G does this too: whoever runs first creates the group, the other call is a no-op.
        // SAFETY: setpgid has no memory arguments.
        unsafe { libc::setpgid(pid, pid) };
        return Some(pid);
    }
    std::process::exit(child_main(me, Role::Grandchild, a, pipe_w));
}

/// Tokens read within `timeout_ms` (none if the pipe stays empty).
fn read_tokens(pipe_r: c_int, timeout_ms: c_int) -> Vec<u64> {
    let mut pfd = libc::pollfd {
        fd: pipe_r,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, timeout_ms) } != 1 {
        return Vec::new();
    }
    let mut buf = [0u8; 8 * 64];
    // SAFETY: `buf` is valid for its length of writing; the pipe is non-blocking.
    let Ok(n) = cvt_size(unsafe { libc::read(pipe_r, buf.as_mut_ptr().cast(), buf.len()) }) else {
        return Vec::new();
    };
    // Tokens are written whole (8 bytes < PIPE_BUF) and read in multiples of 8.
    buf[..n]
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
        .collect()
}

fn parent_check(
    me: &Me,
    children: &[libc::pid_t; 2],
    counters_at_ready: &[u64],
    written: u64,
) -> Report {
    let board = me.board;
    let mut report = Report::new();
    me.check_private(&mut report);
    report.check_eq(
        "parent process group",
        getpgid(),
        board.pgid.load(Ordering::SeqCst),
    );
    report.check_eq("parent session", getsid(), board.sid.load(Ordering::SeqCst));

    // The children run and the board is still shared: their counters move.
    let counters = || Role::CHILDREN.map(|r| board.slot(r).counter.load(Ordering::SeqCst));
    let at_check = counters();
    for ((role, now), then) in Role::CHILDREN.iter().zip(at_check).zip(counters_at_ready) {
        report.check(now >= *then, || {
            format!("{}: counter went back from {then} to {now}", role.name())
        });
    }
    let moving = wait_until(Duration::from_secs(2), || {
        counters()
            .iter()
            .zip(at_check)
            .all(|(now, then)| *now > then)
    });
    report.check(moving, || {
        format!(
            "children's counters stopped moving on the shared board: {:?}",
            counters()
        )
    });

    let nonce = random_seed();
    board.nonce.store(nonce, Ordering::SeqCst);
    for role in Role::CHILDREN {
        let pid = board.slot(role).pid.load(Ordering::SeqCst);
        // SAFETY: kill has no memory arguments; the pid is our child or grandchild.
        if unsafe { libc::kill(pid, criu_testprogs::CHECK_SIGNAL) } != 0 {
            report.fail(format!(
                "signal {} ({pid}): {}",
                role.name(),
                std::io::Error::last_os_error()
            ));
        }
    }
    let all_reported = wait_until(WAIT, || {
        Role::CHILDREN
            .iter()
            .all(|r| board.slot(*r).state.load(Ordering::SeqCst) == REPORTED)
    });
    let mut read_by_children = 0u64;
    let mut highest_read = 0u64;
    for role in Role::CHILDREN {
        let slot = board.slot(role);
        if slot.state.load(Ordering::SeqCst) != REPORTED {
            report.fail(format!("{} did not report within 10 s", role.name()));
            continue;
        }
        if !slot.passed.load(Ordering::SeqCst) {
            report.fail(format!("{}: {}", role.name(), slot.message()));
        }
        report.check_eq(
            &format!("{} saw the nonce", role.name()),
            slot.echo.load(Ordering::SeqCst),
            nonce,
        );
        read_by_children += slot.tokens_read.load(Ordering::SeqCst);
        highest_read = highest_read.max(slot.last_token.load(Ordering::SeqCst));
    }
    if all_reported {
        check_tokens(
            &mut report,
            me.pipe_r,
            written,
            read_by_children,
            highest_read,
        );
    }
    for (pid, role) in children.iter().zip([Role::A, Role::B]) {
        reap(&mut report, role.name(), *pid);
    }
    report
}

/// Every token written was read exactly once: by a child, or is still in the pipe, after
/// everything the children read.
fn check_tokens(
    report: &mut Report,
    pipe_r: c_int,
    written: u64,
    read_by_children: u64,
    highest_read: u64,
) {
    let mut left = Vec::new();
    loop {
        let batch = read_tokens(pipe_r, 0);
        if batch.is_empty() {
            break;
        }
        left.extend(batch);
    }
    report.check(read_by_children + left.len() as u64 == written, || {
        format!(
            "tokens: wrote {written}, children read {read_by_children}, {} left in the pipe",
            left.len()
        )
    });
    let expected_left: Vec<u64> =
        (written.saturating_sub(left.len() as u64) + 1..=written).collect();
    report.check(left.is_empty() || (left == expected_left && left[0] > highest_read), || {
        format!(
            "tokens left in the pipe are not the last ones written: first {:?}, children read up to {highest_read}",
            left.first()
        )
    });
}

/// Waits (bounded) for `pid` and checks it exited 0.
fn reap(report: &mut Report, what: &str, pid: libc::pid_t) {
    let mut outcome = None;
    wait_until(WAIT, || {
        let mut status = 0;
        // SAFETY: `status` is a valid place for the exit status.
        match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
            0 => return false,
            got if got == pid => outcome = Some(Ok(status)),
            _ => outcome = Some(Err(std::io::Error::last_os_error())),
        }
        true
    });
    match outcome {
        Some(Ok(status)) => {
            let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            report.check(ok, || {
                format!("{what} ({pid}) ended with wait status {status:#x}")
            });
        }
        Some(Err(e)) => report.fail(format!("{what} ({pid}): waitpid: {e}")),
        None => {
            // SAFETY: kill has no memory arguments; `pid` is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap_quietly(pid);
            report.fail(format!("{what} ({pid}) did not exit within 10 s"));
        }
    }
}

/// Setup failed: take the children down (G dies with A, by its parent-death signal).
fn kill_children(children: &[libc::pid_t]) {
    for &pid in children {
        // SAFETY: kill has no memory arguments; `pid` is our child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        reap_quietly(pid);
    }
}

fn reap_quietly(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: `status` is a valid place for the exit status.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}
