//! tp-vfork: catches a dump while a parent waits in vfork(). After `ready` (and once
//! `--go-file` exists, if given: time to move it into a cgroup), it vforks a child that waits `--window-ms` (default 3000) and then execs `sleep 1000`; until that
//! exec the parent sleeps in the kernel, where no signal or ptrace interrupt stops it.
//! With `--stop-child 1` the child stops itself (SIGSTOP) before waiting, so its parent
//! is stuck until someone continues it.
//!
//! Check: the parent came back from vfork() with the child's pid and that child is still
//! its child (running `sleep`, or stopped).

use std::ffi::CString;
use std::time::Duration;

use criu_testprogs::{Program, Report};

struct ChildArgs {
    stop: bool,
    window: libc::timespec,
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
}

/// The vfork child: raw system calls on data prepared by the parent, then exec.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the parent's ChildArgs, valid until we exec or exit; the
    // calls are async-signal-safe and take pointers made before the clone.
    unsafe {
        let args = &*(arg as *const ChildArgs);
        if args.stop {
            libc::kill(libc::getpid(), libc::SIGSTOP);
        }
        libc::nanosleep(&args.window, std::ptr::null_mut());
        libc::execv(args.path, args.argv);
        libc::_exit(127)
    }
}

fn main() {
    let mut program = Program::start(
        "tp-vfork",
        &[
            ("--window-ms MS", "how long the child waits before its exec"),
            ("--stop-child 0|1", "the child stops itself before waiting"),
            ("--go-file PATH", "vfork only once this file exists"),
        ],
    );
    let window_ms: i64 = program.opt_or("--window-ms", 3000);
    let stop_child = program.opt_or("--stop-child", 0u8) == 1;
    // Everything the child uses is made before vfork: it may not allocate.
    let sleep = CString::new("/bin/sleep").unwrap_or_default();
    let arg0 = CString::new("sleep").unwrap_or_default();
    let arg1 = CString::new("1000").unwrap_or_default();
    let argv = [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    let window = libc::timespec {
        tv_sec: window_ms / 1000,
        tv_nsec: (window_ms % 1000) * 1_000_000,
    };
    let go_file: Option<String> = program.opt("--go-file");
    program.ready();
    if let Some(go) = go_file {
        while !std::path::Path::new(&go).exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let child_args = ChildArgs {
        stop: stop_child,
        window,
        path: sleep.as_ptr(),
        argv: argv.as_ptr(),
    };
    // vfork semantics (the parent waits until the child execs or exits) with a stack of
    // the child's own: clone(CLONE_VM | CLONE_VFORK).
    let mut stack = vec![0u8; 64 * 1024];
    // SAFETY: the stack is ours and outlives the child's use of it (we wait until it
    // execs); `child_main` only reads `child_args`, which lives on past the call.
    let child = unsafe {
        libc::clone(
            child_main,
            stack.as_mut_ptr().add(stack.len()).cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&child_args as *const ChildArgs).cast_mut().cast(),
        )
    };
    let mut report = Report::new();
    program.work_until_check(Duration::from_millis(100), || {});
    if child < 0 {
        report.fail(format!("vfork: {}", std::io::Error::last_os_error()));
    } else {
        let children =
            std::fs::read_to_string(format!("/proc/self/task/{}/children", std::process::id()))
                .unwrap_or_default();
        if !children.split_whitespace().any(|c| c == child.to_string()) {
            report.fail(format!("vfork child {child} is not among {children:?}"));
        }
    }
    program.finish(&report);
}
