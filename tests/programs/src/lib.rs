//! Shared protocol and helpers of the self-checking test programs (`tp-*`).
//!
//! Each program sets up one kind of process state, says it is ready, keeps working, and,
//! when asked, verifies that its state is still what it set up. A checkpoint/restore test
//! dumps, kills and restores the program in between; the restored program then proves it
//! is intact by checking itself (as CRIU's zdtm tests do).
//!
//! # Protocol
//!
//! ```text
//! PROG --ready-file PATH [--check-after SECS] [program options]
//! ```
//!
//! 1. The program installs the handler of the *check signal*, SIGUSR2, before anything
//!    else. The handler only sets a flag; no program uses SIGUSR2 for anything else.
//! 2. It sets up its state, then writes the line `ready <pid>` to `PATH`.
//! 3. It works (counting, touching memory, ...) until SIGUSR2 arrives, or until
//!    `--check-after SECS` (fractions allowed) have passed since it said ready.
//! 4. It verifies its whole state and writes one line, `pass` or
//!    `fail: <what differed>` (several findings separated by `; `), to `PATH.result`, then
//!    exits 0 on pass and 1 on fail.
//!
//! Every file of the protocol is written to `<file>.tmp` and renamed into place, so a
//! reader sees all of it or nothing. If setup fails, the program prints the reason to
//! stderr, writes `fail: setup: <reason>` to `PATH.result` and exits 2 without writing
//! the ready file; bad arguments print the usage and exit 2.
//!
//! A harness therefore: starts the program (best in its own process group), waits for
//! `PATH`, checkpoints/kills/restores it (or leaves it running), sends SIGUSR2 to the pid
//! of the ready line and reads `PATH.result`. The programs tolerate being frozen or
//! ptrace-stopped for any time (clocks may jump while they are stopped) and do not care
//! whether their pid changed or stayed the same. Some programs write more files next to
//! `PATH` for the harness (`PATH.fds`, ...); `README.md` lists them.

use std::ffi::CString;
use std::fmt::{Debug, Display};
use std::io::{self, Write};
use std::os::raw::c_int;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The signal that asks a program to check itself now.
pub const CHECK_SIGNAL: c_int = libc::SIGUSR2;

/// Exit status of a program whose check passed.
pub const EXIT_PASS: i32 = 0;
/// Exit status of a program whose check failed.
pub const EXIT_FAIL: i32 = 1;
/// Exit status for bad arguments or a failed setup.
pub const EXIT_SETUP: i32 = 2;

/// Set by the SIGUSR2 handler. Per process: a forked child starts with its own copy.
static CHECK_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_check_signal(_signo: c_int) {
    CHECK_REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether SIGUSR2 has arrived in this process.
pub fn check_requested() -> bool {
    CHECK_REQUESTED.load(Ordering::SeqCst)
}

/// Installs the SIGUSR2 handler (SA_RESTART, so interrupted syscalls resume).
pub fn install_check_handler() -> io::Result<()> {
    install_handler(CHECK_SIGNAL, on_check_signal, libc::SA_RESTART, &[])
}

/// Installs a plain `void handler(int)` for `signo` with `flags`, blocking `mask` while it
/// runs.
pub fn install_handler(
    signo: c_int,
    handler: extern "C" fn(c_int),
    flags: c_int,
    mask: &[c_int],
) -> io::Result<()> {
    install_raw_handler(
        signo,
        handler_addr(handler),
        flags & !libc::SA_SIGINFO,
        mask,
    )
}

/// Installs an SA_SIGINFO handler for `signo`; SA_SIGINFO is added to `flags`.
pub fn install_siginfo_handler(
    signo: c_int,
    handler: extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void),
    flags: c_int,
    mask: &[c_int],
) -> io::Result<()> {
    install_raw_handler(
        signo,
        siginfo_handler_addr(handler),
        flags | libc::SA_SIGINFO,
        mask,
    )
}

fn install_raw_handler(
    signo: c_int,
    handler: usize,
    flags: c_int,
    mask: &[c_int],
) -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    action.sa_mask = sigset(mask);
    action.sa_flags = flags;
    // SAFETY: `action` is fully initialised and the handler is an extern "C" function of
    // the signature its flags announce; the old action is not asked for.
    cvt(unsafe { libc::sigaction(signo, &action, std::ptr::null_mut()) })?;
    Ok(())
}

/// The current action of `signo` (sigaction(2) with a null new action).
pub fn query_action(signo: c_int) -> io::Result<libc::sigaction> {
    // SAFETY: an all-zero sigaction is a valid value for the kernel to overwrite.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries; `old` is a valid place to write.
    cvt(unsafe { libc::sigaction(signo, std::ptr::null(), &mut old) })?;
    Ok(old)
}

/// The `sa_sigaction` value [`install_handler`] stores for `handler`.
pub fn handler_addr(handler: extern "C" fn(c_int)) -> usize {
    handler as usize
}

/// The `sa_sigaction` value [`install_siginfo_handler`] stores for `handler`.
pub fn siginfo_handler_addr(
    handler: extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void),
) -> usize {
    handler as usize
}

/// The flag glibc adds to every action it installs (its signal return trampoline).
pub const SA_RESTORER: c_int = 0x0400_0000;

/// Command line, ready file and result file of one program run.
#[derive(Debug)]
pub struct Program {
    name: &'static str,
    ready_file: PathBuf,
    check_after: Option<Duration>,
    options: Vec<(String, String)>,
    ready_at: Option<Instant>,
}

impl Program {
    /// Installs the check-signal handler and parses the command line; `options` lists the
    /// program's own options as (`--flag VALUE`, help). Exits 2 with the usage on bad
    /// arguments, 0 after printing it for `--help`.
    pub fn start(name: &'static str, options: &[(&'static str, &'static str)]) -> Program {
        if let Err(e) = install_check_handler() {
            eprintln!("{name}: cannot install the SIGUSR2 handler: {e}");
            std::process::exit(EXIT_SETUP);
        }
        if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
            println!("{}", usage(name, options));
            std::process::exit(0);
        }
        match Self::parse(name, options, std::env::args().skip(1)) {
            Ok(program) => program,
            Err(why) => {
                eprintln!("{name}: {why}\n{}", usage(name, options));
                std::process::exit(EXIT_SETUP);
            }
        }
    }

    fn parse(
        name: &'static str,
        known: &[(&'static str, &'static str)],
        args: impl Iterator<Item = String>,
    ) -> Result<Program, String> {
        let mut ready_file = None;
        let mut check_after = None;
        let mut options = Vec::new();
        let mut args = args;
        while let Some(arg) = args.next() {
            let (flag, inline_value) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => {
                    (flag.to_owned(), Some(value.to_owned()))
                }
                _ => (arg.clone(), None),
            };
            let is_known = flag == "--ready-file"
                || flag == "--check-after"
                || known
                    .iter()
                    .any(|(spec, _)| spec.split(' ').next() == Some(flag.as_str()));
            if !is_known {
                return Err(format!("unknown argument `{arg}`"));
            }
            let value = match inline_value.or_else(|| args.next()) {
                Some(value) => value,
                None => return Err(format!("`{flag}` needs a value")),
            };
            match flag.as_str() {
                "--ready-file" => ready_file = Some(PathBuf::from(value)),
                "--check-after" => {
                    let secs: f64 = value
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                        .ok_or_else(|| format!("bad --check-after `{value}`"))?;
                    check_after = Some(Duration::from_secs_f64(secs));
                }
                _ => options.push((flag, value)),
            }
        }
        let ready_file = ready_file.ok_or("--ready-file PATH is required")?;
        Ok(Program {
            name,
            ready_file,
            check_after,
            options,
            ready_at: None,
        })
    }

    /// The value of `--flag`, parsed; `None` when absent. Exits 2 on a bad value.
    pub fn opt<T: FromStr>(&self, flag: &str) -> Option<T>
    where
        T::Err: Display,
    {
        let (_, raw) = self.options.iter().rev().find(|(f, _)| f == flag)?;
        match raw.parse() {
            Ok(value) => Some(value),
            Err(e) => {
                eprintln!("{}: bad value `{raw}` for {flag}: {e}", self.name);
                std::process::exit(EXIT_SETUP);
            }
        }
    }

    /// The value of `--flag`, or `default` when absent.
    pub fn opt_or<T: FromStr>(&self, flag: &str, default: T) -> T
    where
        T::Err: Display,
    {
        self.opt(flag).unwrap_or(default)
    }

    /// The program's name, as given to [`Program::start`].
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `PATH`, where `ready <pid>` goes.
    pub fn ready_file(&self) -> &Path {
        &self.ready_file
    }

    /// `PATH` with `suffix` appended (`".result"`, `".fds"`...).
    pub fn companion(&self, suffix: &str) -> PathBuf {
        let mut os = self.ready_file.clone().into_os_string();
        os.push(suffix);
        PathBuf::from(os)
    }

    /// `PATH.result`.
    pub fn result_file(&self) -> PathBuf {
        self.companion(".result")
    }

    /// The directory of the ready file (default home of a program's scratch files).
    pub fn ready_dir(&self) -> PathBuf {
        match self.ready_file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Unwraps a setup step, or reports `fail: setup: WHAT: ERROR` and exits 2.
    pub fn must<T, E: Display>(&self, result: Result<T, E>, what: &str) -> T {
        match result {
            Ok(value) => value,
            Err(e) => self.setup_failed(format_args!("{what}: {e}")),
        }
    }

    /// Reports a failed setup (stderr and `PATH.result`) and exits 2.
    pub fn setup_failed(&self, why: impl Display) -> ! {
        let line = one_line(&format!("fail: setup: {why}"));
        eprintln!("{}: {line}", self.name);
        let _ = write_atomic(&self.result_file(), format!("{line}\n").as_bytes());
        std::process::exit(EXIT_SETUP);
    }

    /// Writes `ready <pid>` to `PATH` and starts the `--check-after` clock.
    pub fn ready(&mut self) {
        let line = format!("ready {}\n", std::process::id());
        let written = write_atomic(&self.ready_file, line.as_bytes());
        self.must(written, "write the ready file");
        self.ready_at = Some(Instant::now());
    }

    /// Whether it is time to check: SIGUSR2 arrived or `--check-after` has elapsed.
    pub fn check_due(&self) -> bool {
        if check_requested() {
            return true;
        }
        match (self.check_after, self.ready_at) {
            (Some(after), Some(ready_at)) => ready_at.elapsed() >= after,
            _ => false,
        }
    }

    /// Calls `work` every `tick` until [`Program::check_due`]; at least once, so a check
    /// can count on the work having run after `ready`.
    /// The pause is cut into slices of at most 10 ms, so a check starts promptly.
    pub fn work_until_check(&self, tick: Duration, mut work: impl FnMut()) {
        let slice = tick.min(Duration::from_millis(10));
        // Counted, not timed: a clock that jumps across a checkpoint cannot stretch it.
        let slices = tick.as_nanos().div_ceil(slice.as_nanos().max(1)).max(1);
        loop {
            work();
            for _ in 0..slices {
                if self.check_due() {
                    return;
                }
                std::thread::sleep(slice);
            }
        }
    }

    /// Writes the report to `PATH.result` and exits 0 (pass) or 1 (fail).
    pub fn finish(&self, report: &Report) -> ! {
        let line = report.summary();
        if let Err(e) = write_atomic(&self.result_file(), format!("{line}\n").as_bytes()) {
            eprintln!(
                "{}: cannot write {}: {e}",
                self.name,
                self.result_file().display()
            );
            std::process::exit(EXIT_SETUP);
        }
        if !report.passed() {
            eprintln!("{}: {line}", self.name);
        }
        std::process::exit(if report.passed() {
            EXIT_PASS
        } else {
            EXIT_FAIL
        });
    }
}

fn usage(name: &str, options: &[(&str, &str)]) -> String {
    let mut text = format!("usage: {name} --ready-file PATH [--check-after SECS]");
    for (spec, _) in options {
        text.push_str(&format!(" [{spec}]"));
    }
    for (spec, help) in options {
        text.push_str(&format!("\n  {spec:<18} {help}"));
    }
    text
}

/// What a check found: nothing (pass) or a list of differences.
#[derive(Debug, Default)]
pub struct Report {
    failures: Vec<String>,
}

impl Report {
    pub fn new() -> Report {
        Report::default()
    }

    /// Records a difference.
    pub fn fail(&mut self, what: impl Into<String>) {
        self.failures.push(one_line(&what.into()));
    }

    /// Records `what()` unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(what());
        }
    }

    /// Records `WHAT: found F, expected E` unless they are equal.
    pub fn check_eq<T: PartialEq + Debug>(&mut self, what: &str, found: T, expected: T) {
        if found != expected {
            self.fail(format!("{what}: found {found:?}, expected {expected:?}"));
        }
    }

    /// Records `WHAT: ERROR` for a failed step of the check itself.
    pub fn ok_or_fail<T, E: Display>(&mut self, result: Result<T, E>, what: &str) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.fail(format!("{what}: {e}"));
                None
            }
        }
    }

    /// Takes over the findings of `other`, each prefixed with `prefix: `.
    pub fn absorb(&mut self, prefix: &str, other: Report) {
        for failure in other.failures {
            self.failures.push(format!("{prefix}: {failure}"));
        }
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// `pass`, or `fail: ` and the findings joined by `; `.
    pub fn summary(&self) -> String {
        if self.passed() {
            "pass".to_owned()
        } else {
            format!("fail: {}", self.failures.join("; "))
        }
    }
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// Writes `contents` to `path` atomically: to `<path>.tmp` first, then renamed.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(contents)?;
    }
    std::fs::rename(&tmp, path)
}

/// Turns a libc `-1` return into the `errno` error.
pub fn cvt(ret: c_int) -> io::Result<c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Turns a libc `-1` return of a size into the `errno` error.
pub fn cvt_size(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A NUL-terminated copy of a path, for libc calls.
pub fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// 64 random bits from getrandom(2), never zero.
pub fn random_seed() -> u64 {
    let mut seed = 0u64;
    // SAFETY: the kernel writes at most 8 bytes into the 8-byte `seed`.
    let got = unsafe { libc::getrandom((&mut seed as *mut u64).cast(), 8, 0) };
    if got != 8 {
        // No getrandom: the clock and pid still differ from run to run.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        seed = nanos ^ (u64::from(std::process::id()) << 32);
    }
    seed | 1
}

/// The multiplier of Fibonacci hashing (2^64 / golden ratio).
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The word at `index` of the memory pattern of `seed`: `index * GOLDEN`, mixed with the
/// seed and rotated by it. Never zero for index 0 (seeds are odd), so an all-zero page
/// fails the check.
#[inline(always)]
pub fn pattern_word(seed: u64, index: u64) -> u64 {
    (index.wrapping_mul(GOLDEN) ^ seed).rotate_left((seed % 64) as u32)
}

/// Fills `words` with the pattern of `seed`, starting at pattern index `base`.
pub fn fill_pattern(words: &mut [u64], seed: u64, base: u64) {
    let rot = (seed % 64) as u32;
    let mut index = base;
    for word in words.iter_mut() {
        *word = (index.wrapping_mul(GOLDEN) ^ seed).rotate_left(rot);
        index = index.wrapping_add(1);
    }
}

/// Byte `index` of the byte stream of `seed` (the little-endian bytes of its memory
/// pattern, word after word): what a program writes into a connection, so the reader
/// can tell any byte lost, repeated or reordered.
#[inline(always)]
pub fn stream_byte(seed: u64, index: u64) -> u8 {
    (pattern_word(seed, index / 8) >> ((index % 8) * 8)) as u8
}

/// Fills `buf` with the byte stream of `seed` from byte `start`.
pub fn fill_stream(buf: &mut [u8], seed: u64, start: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = stream_byte(seed, start + i as u64);
    }
}

/// The offset in `buf` of the first byte that is not the stream of `seed` from byte
/// `start`, with the byte found and the one expected.
pub fn check_stream(buf: &[u8], seed: u64, start: u64) -> Option<(usize, u8, u8)> {
    buf.iter().enumerate().find_map(|(i, &b)| {
        let expected = stream_byte(seed, start + i as u64);
        (b != expected).then_some((i, b, expected))
    })
}

/// The first and the number of words of a region that differ from their pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatternMismatch {
    pub first_index: usize,
    pub found: u64,
    pub expected: u64,
    pub count: usize,
}

impl Display for PatternMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} words differ, first at word {} (byte offset {:#x}): found {:#018x}, expected {:#018x}",
            self.count,
            self.first_index,
            self.first_index * 8,
            self.found,
            self.expected
        )
    }
}

/// Compares `words` with the pattern of `seed` from index `base`.
pub fn check_pattern(words: &[u64], seed: u64, base: u64) -> Option<PatternMismatch> {
    let rot = (seed % 64) as u32;
    let mut mismatch: Option<PatternMismatch> = None;
    let mut index = base;
    for (i, &word) in words.iter().enumerate() {
        let expected = (index.wrapping_mul(GOLDEN) ^ seed).rotate_left(rot);
        if word != expected {
            match &mut mismatch {
                Some(m) => m.count += 1,
                None => {
                    mismatch = Some(PatternMismatch {
                        first_index: i,
                        found: word,
                        expected,
                        count: 1,
                    })
                }
            }
        }
        index = index.wrapping_add(1);
    }
    mismatch
}

/// A memory mapping, unmapped on drop.
pub struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    /// `len` bytes of anonymous memory, MAP_PRIVATE or MAP_SHARED as `shared` says.
    pub fn anonymous(len: usize, shared: bool) -> io::Result<Mapping> {
        let kind = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        Self::map(len, kind | libc::MAP_ANONYMOUS, -1)
    }

    /// `len` bytes of `fd` from offset 0, MAP_PRIVATE (copy-on-write).
    pub fn file_private(fd: c_int, len: usize) -> io::Result<Mapping> {
        Self::map(len, libc::MAP_PRIVATE, fd)
    }

    /// `len` bytes of `fd` from offset 0, MAP_SHARED (writes reach the file).
    pub fn file_shared(fd: c_int, len: usize) -> io::Result<Mapping> {
        Self::map(len, libc::MAP_SHARED, fd)
    }

    /// `len` bytes of private anonymous memory near `hint` (a hint only: the kernel picks
    /// another address when that one is taken).
    pub fn anonymous_near(hint: usize, len: usize) -> io::Result<Mapping> {
        Self::map_at(hint, len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)
    }

    fn map(len: usize, flags: c_int, fd: c_int) -> io::Result<Mapping> {
        Self::map_at(0, len, flags, fd)
    }

    fn map_at(hint: usize, len: usize, flags: c_int, fd: c_int) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping (no MAP_FIXED: the hint never replaces a mapping)
        // aliases nothing of ours.
        let addr = unsafe {
            libc::mmap(
                hint as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { addr, len })
    }

    pub fn addr(&self) -> *mut libc::c_void {
        self.addr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapping as 64-bit words.
    pub fn words(&self) -> &[u64] {
        // SAFETY: the mapping is readable, page aligned and `len` bytes long for as long as
        // `self` lives; any bit pattern is a valid u64.
        unsafe { std::slice::from_raw_parts(self.addr.cast::<u64>(), self.len / 8) }
    }

    /// The mapping as mutable 64-bit words.
    pub fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: as in `words`, and `&mut self` makes this the only borrow of the memory
        // (in this process; MAP_SHARED users must synchronise across processes themselves).
        unsafe { std::slice::from_raw_parts_mut(self.addr.cast::<u64>(), self.len / 8) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` is a mapping this value created and nobody borrows any more.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// `SIGRTMIN + n` as this libc numbers real-time signals.
pub fn sigrt(n: c_int) -> c_int {
    libc::SIGRTMIN() + n
}

/// A signal set holding `signals`.
pub fn sigset(signals: &[c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it right after.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t to write.
    unsafe { libc::sigemptyset(&mut set) };
    for &signo in signals {
        // SAFETY: `set` is initialised; an invalid number only makes sigaddset fail.
        unsafe { libc::sigaddset(&mut set, signo) };
    }
    set
}

/// A signal set as the 64-bit mask /proc prints (bit `n - 1` for signal `n`).
pub fn sigset_bits(set: &libc::sigset_t) -> u64 {
    let mut bits = 0u64;
    for signo in 1..=64 {
        // SAFETY: `set` is an initialised sigset_t; sigismember only reads it.
        if unsafe { libc::sigismember(set, signo) } == 1 {
            bits |= 1 << (signo - 1);
        }
    }
    bits
}

/// The mask bits of `signals` (bit `n - 1` for signal `n`).
pub fn signal_bits(signals: &[c_int]) -> u64 {
    signals.iter().fold(0, |bits, &s| bits | 1 << (s - 1))
}

/// The calling thread's blocked-signal mask.
pub fn thread_sigmask() -> io::Result<libc::sigset_t> {
    let mut old = sigset(&[]);
    // SAFETY: a null new set only queries; `old` is a valid sigset_t to write.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut old) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(old)
}

/// Sets the calling thread's blocked-signal mask (`how` = SIG_BLOCK/UNBLOCK/SETMASK).
pub fn set_thread_sigmask(how: c_int, signals: &[c_int]) -> io::Result<()> {
    let set = sigset(signals);
    // SAFETY: `set` is an initialised sigset_t; the old mask is not asked for.
    let rc = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// A hexadecimal field (`SigBlk`, `SigPnd`, `ShdPnd`, ...) of a /proc status file.
pub fn proc_status_hex(path: &Path, field: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    let value = status_field(&text, field).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no {field} in {}", path.display()),
        )
    })?;
    u64::from_str_radix(value, 16).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{field} `{value}`: {e}"),
        )
    })
}

/// The value of `Field:` in /proc status text.
pub fn status_field<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim())
    })
}

/// Where `/proc/self/fd/FD` points.
pub fn fd_link(fd: c_int) -> io::Result<String> {
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))?;
    Ok(target.to_string_lossy().into_owned())
}

/// `(F_GETFD, F_GETFL)` of `fd`.
pub fn fd_flags(fd: c_int) -> io::Result<(c_int, c_int)> {
    // SAFETY: F_GETFD and F_GETFL take no argument and only read the fd table.
    let fd_flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: as above.
    let fl_flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    Ok((fd_flags, fl_flags))
}

/// The calling thread's kernel id.
pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Polls `ready` every millisecond until it holds or about `timeout` passes; returns
/// whether it held. The wait counts sleeps instead of reading a clock, so a clock that
/// jumps (across a checkpoint) cannot stretch or cut it.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let polls = timeout.as_millis().max(1);
    for _ in 0..polls {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    ready()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Program, String> {
        Program::parse(
            "tp-test",
            &[("--mib N", "size"), ("--dir DIR", "dir")],
            args.iter().map(|s| s.to_string()),
        )
    }

    #[test]
    fn parses_options_in_both_spellings() {
        let p = parse(&["--ready-file", "/tmp/r", "--mib=12", "--check-after", "1.5"]).unwrap();
        assert_eq!(p.ready_file(), Path::new("/tmp/r"));
        assert_eq!(p.opt::<u64>("--mib"), Some(12));
        assert_eq!(p.opt::<String>("--dir"), None);
        assert_eq!(p.check_after, Some(Duration::from_millis(1500)));
        assert_eq!(p.result_file(), Path::new("/tmp/r.result"));
        assert_eq!(p.ready_dir(), Path::new("/tmp"));
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(parse(&["--mib", "3"]).unwrap_err().contains("--ready-file"));
        assert!(parse(&["--ready-file", "r", "--bogus", "1"])
            .unwrap_err()
            .contains("--bogus"));
        assert!(parse(&["--ready-file"])
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse(&["--ready-file", "r", "--check-after", "-1"]).is_err());
    }

    #[test]
    fn pattern_detects_changes() {
        let mut words = vec![0u64; 1000];
        fill_pattern(&mut words, 0x1234_5679, 7);
        assert_eq!(words[3], pattern_word(0x1234_5679, 10));
        assert_eq!(check_pattern(&words, 0x1234_5679, 7), None);
        words[500] ^= 1;
        words[900] = 0;
        let m = check_pattern(&words, 0x1234_5679, 7).unwrap();
        assert_eq!((m.first_index, m.count), (500, 2));
        assert!(check_pattern(&[0u64; 8], 0x1234_5679, 0).is_some());
    }

    #[test]
    fn signal_masks_round_trip() {
        let set = sigset(&[libc::SIGHUP, libc::SIGUSR1, sigrt(3)]);
        assert_eq!(
            sigset_bits(&set),
            signal_bits(&[libc::SIGHUP, libc::SIGUSR1, sigrt(3)])
        );
        assert_eq!(signal_bits(&[libc::SIGHUP]), 1);
    }

    #[test]
    fn reads_status_fields() {
        let text = "Name:\tx\nSigBlk:\t0000000000010000\nSigCgt:\t0\n";
        assert_eq!(status_field(text, "SigBlk"), Some("0000000000010000"));
        assert_eq!(status_field(text, "Sig"), None);
    }

    #[test]
    fn report_summary() {
        let mut r = Report::new();
        assert_eq!(r.summary(), "pass");
        r.check_eq("x", 1, 2);
        r.fail("two\nlines");
        assert_eq!(r.summary(), "fail: x: found 1, expected 2; two lines");
    }
}
