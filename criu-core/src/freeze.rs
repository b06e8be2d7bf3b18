//! Freezing a process tree with ptrace: every thread of every process is seized and
//! interrupted, and the tree is rescanned until no new thread or child shows up. The
//! `FrozenTree` guard owns the traced state: dropping it detaches every thread, so any
//! error path leaves the tree running as before.
//!
//! ptrace requests must come from the thread that attached the tracee, so a `FrozenTree`
//! is not `Send`: the whole dump drives ptrace from one thread.

use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use crate::cgroup::CgroupFreezer;
use crate::proc::ProcDir;
use crate::sys::{self, Pid, WaitStatus};

const PTRACE_EVENT_STOP: i32 = 128;

/// How a process was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Alive,
    /// In group-stop (SIGSTOP and friends): restored stopped.
    Stopped {
        signal: i32,
    },
    /// Exited but not reaped: only its pid, ids and exit code exist.
    Zombie {
        exit_code: i32,
    },
}

/// One process of the frozen tree.
#[derive(Debug, Clone)]
pub struct FrozenProcess {
    pub pid: Pid,
    pub ppid: Pid,
    pub pgid: Pid,
    pub sid: Pid,
    pub state: TaskState,
    /// Thread ids, the leader first.
    pub threads: Vec<Pid>,
}

#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("process {0} does not exist")]
    NoSuchProcess(Pid),
    #[error("refusing to dump process {pid}: {why}")]
    Refused { pid: Pid, why: String },
    #[error("cannot {op} task {tid}: {source}")]
    Ptrace {
        tid: Pid,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("task {tid} did not stop within {timeout:?}")]
    Timeout { tid: Pid, timeout: Duration },
    #[error("task {tid} exited while the tree was being frozen")]
    Exited { tid: Pid },
    #[error("reading /proc/{pid}: {source}")]
    Proc { pid: Pid, source: std::io::Error },
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
}

/// Refuses roots that must never be frozen: nonsense pids, init, the dumper itself.
pub fn check_target(root: Pid) -> Result<(), FreezeError> {
    if root.0 <= 0 {
        return Err(FreezeError::NoSuchProcess(root));
    }
    if root.0 == 1 {
        return Err(FreezeError::Refused {
            pid: root,
            why: "it is the init process of this pid namespace".into(),
        });
    }
    if root.0 == std::process::id() as i32 {
        return Err(FreezeError::Refused {
            pid: root,
            why: "it is the dumper itself".into(),
        });
    }
    if !std::path::Path::new(&format!("/proc/{}", root.0)).exists() {
        return Err(FreezeError::NoSuchProcess(root));
    }
    Ok(())
}

/// A frozen tree; dropping it resumes every task.
pub struct FrozenTree {
    /// Processes in discovery order: the root first, parents before children.
    pub processes: Vec<FrozenProcess>,
    /// Threads we attached and must detach.
    seized: Vec<Pid>,
    /// ptrace state belongs to the attaching thread.
    _not_send: PhantomData<*const ()>,
}

fn proc_err(pid: Pid) -> impl FnOnce(std::io::Error) -> FreezeError {
    move |source| FreezeError::Proc { pid, source }
}

fn ptrace_err(tid: Pid, op: &'static str) -> impl FnOnce(std::io::Error) -> FreezeError {
    move |source| FreezeError::Ptrace { tid, op, source }
}

fn is_gone(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ESRCH) | Some(libc::ENOENT))
}

impl FrozenTree {
    /// Freezes `root` and all its descendants. Each stop is awaited at most `timeout`.
    pub fn freeze(root: Pid, timeout: Duration) -> Result<FrozenTree, FreezeError> {
        check_target(root)?;
        let me = Pid(std::process::id() as i32);
        let mut tree = FrozenTree {
            processes: Vec::new(),
            seized: Vec::new(),
            _not_send: PhantomData,
        };
        let mut queue = vec![root];
        // Rescan until a full pass finds nothing new: a fork or clone that raced with the
        // first pass shows up once its parent is stopped.
        loop {
            let mut found_new = false;
            while let Some(pid) = queue.pop() {
                if tree.processes.iter().any(|p| p.pid == pid) {
                    continue;
                }
                if pid == me {
                    return Err(FreezeError::Refused {
                        pid: root,
                        why: "the dumper is part of the tree".into(),
                    });
                }
                match tree.seize_process(pid, timeout) {
                    Ok(()) => found_new = true,
                    Err(FreezeError::NoSuchProcess(_)) if pid != root => {}
                    Err(e) => return Err(e),
                }
            }
            for i in 0..tree.processes.len() {
                let p = tree.processes[i].clone();
                if matches!(p.state, TaskState::Zombie { .. }) {
                    continue;
                }
                let dir = ProcDir::open(p.pid).map_err(proc_err(p.pid))?;
                if tree.seize_threads(&dir, i, timeout)? {
                    found_new = true;
                }
                queue.extend(dir.children().map_err(proc_err(p.pid))?);
            }
            queue.retain(|pid| !tree.processes.iter().any(|p| p.pid == *pid));
            if queue.is_empty() && !found_new {
                break;
            }
        }
        Ok(tree)
    }

    fn seize_process(&mut self, pid: Pid, timeout: Duration) -> Result<(), FreezeError> {
        let dir = match ProcDir::open(pid) {
            Ok(d) => d,
            Err(e) if is_gone(&e) => return Err(FreezeError::NoSuchProcess(pid)),
            Err(e) => return Err(FreezeError::Proc { pid, source: e }),
        };
        let stat = match dir.stat() {
            Ok(s) => s,
            Err(e) if is_gone(&e) => return Err(FreezeError::NoSuchProcess(pid)),
            Err(e) => return Err(FreezeError::Proc { pid, source: e }),
        };
        let status = dir.status().map_err(proc_err(pid))?;
        if status.tracer_pid != 0 {
            let why = format!("it is already traced by process {}", status.tracer_pid);
            return Err(FreezeError::Refused { pid, why });
        }
        let state = match stat.state {
            'Z' => TaskState::Zombie {
                exit_code: stat.exit_code,
            },
            'T' => TaskState::Stopped {
                signal: libc::SIGSTOP,
            },
            _ => TaskState::Alive,
        };
        self.processes.push(FrozenProcess {
            pid,
            ppid: Pid(stat.ppid),
            pgid: Pid(stat.pgid),
            sid: Pid(stat.sid),
            state,
            threads: if matches!(state, TaskState::Zombie { .. }) {
                vec![pid]
            } else {
                Vec::new()
            },
        });
        if matches!(state, TaskState::Zombie { .. }) {
            return Ok(());
        }
        let index = self.processes.len() - 1;
        match self.seize_threads(&dir, index, timeout) {
            Ok(_) => Ok(()),
            Err(FreezeError::Exited { tid }) if tid == pid => {
                // The process ended while being seized: record it as the zombie it now
                // is, or forget it if its parent already reaped it.
                self.processes.pop();
                self.seize_process(pid, timeout)
            }
            Err(e) => Err(e),
        }
    }

    /// Seizes the threads of process `index` not seized yet, until its thread list is
    /// stable. Returns whether any new thread was seized.
    fn seize_threads(
        &mut self,
        dir: &ProcDir,
        index: usize,
        timeout: Duration,
    ) -> Result<bool, FreezeError> {
        let pid = self.processes[index].pid;
        let mut any = false;
        // io_uring workers are not the program's threads (`ProcDir::user_threads`): each
        // is looked at once, when it is first listed.
        let mut io_workers = Vec::new();
        loop {
            let threads = dir.threads().map_err(proc_err(pid))?;
            let mut new: Vec<Pid> = threads
                .into_iter()
                .filter(|t| !self.processes[index].threads.contains(t) && !io_workers.contains(t))
                .collect();
            new.retain(|&t| {
                let worker = dir.is_io_worker(t);
                if worker {
                    io_workers.push(t);
                }
                !worker
            });
            if new.is_empty() {
                return Ok(any);
            }
            for tid in new {
                match sys::ptrace_seize(tid, 0) {
                    Ok(()) => {}
                    // The thread exited between listing and seizing.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                    // EPERM also comes from a task that has just exited (ptrace cannot
                    // attach to a zombie): look at the process again.
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) && exiting(pid, tid) => {
                        if tid == pid {
                            return Err(FreezeError::Exited { tid });
                        }
                        continue;
                    }
                    Err(e) => return Err(ptrace_err(tid, "seize")(e)),
                }
                self.seized.push(tid);
                sys::ptrace_interrupt(tid).map_err(ptrace_err(tid, "interrupt"))?;
                let signal = match wait_for_stop(tid, timeout) {
                    Ok(signal) => signal,
                    // It exited between the seize and the stop: a thread simply leaves
                    // the list; a whole process is looked at again (now a zombie, or gone).
                    Err(FreezeError::Exited { .. }) => {
                        self.seized.retain(|t| *t != tid);
                        if tid == pid {
                            return Err(FreezeError::Exited { tid });
                        }
                        continue;
                    }
                    Err(FreezeError::Timeout { .. }) => {
                        return Err(timeout_error(pid, tid, timeout))
                    }
                    Err(e) => return Err(e),
                };
                if let Some(sig) = signal {
                    if tid == pid {
                        self.processes[index].state = TaskState::Stopped { signal: sig };
                    }
                }
                let threads = &mut self.processes[index].threads;
                if tid == pid {
                    threads.insert(0, tid);
                } else {
                    threads.push(tid);
                }
                any = true;
            }
        }
    }

    /// Every live (non-zombie) thread of the tree.
    pub fn live_threads(&self) -> impl Iterator<Item = (&FrozenProcess, Pid)> {
        self.processes
            .iter()
            .filter(|p| !matches!(p.state, TaskState::Zombie { .. }))
            .flat_map(|p| p.threads.iter().map(move |t| (p, *t)))
    }

    /// Detaches every thread: the tree runs on as before.
    pub fn resume(mut self) {
        self.detach_all();
    }

    /// Kills every process of the tree (the default after a successful dump).
    pub fn kill(mut self) {
        // As their tracer we see each death first, and until we have, the real parent
        // cannot reap the task (a container's monitor would wait as long as we live).
        // We wait through pidfds taken while the tasks surely live: a pidfd names its
        // task and no other, so the wait can go on in the background (a big process
        // takes a while to free its memory) without ever taking the stops of a new
        // task that got the same pid (a restore right after).
        let tracees: Vec<(Pid, Option<OwnedFd>)> = self
            .seized
            .drain(..)
            .map(|tid| (tid, sys::pidfd_open_thread(tid).ok()))
            .collect();
        for p in &self.processes {
            // One that is gone already needs nothing.
            let _ = sys::kill(p.pid, libc::SIGKILL);
        }
        if tracees.iter().all(|(_, fd)| fd.is_some()) {
            let reaper = std::thread::Builder::new()
                .name("reap-killed".into())
                .spawn(move || reap_killed(tracees));
            if let Err(e) = reaper {
                tracing::warn!(
                    "no thread to reap the killed tree ({e}): it is released when we exit"
                );
            }
            return;
        }
        reap_killed(tracees);
    }
}

/// Waits (bounded) for killed tracees to end, all at once: the init of a pid namespace
/// ends only after every other task in it was reaped, so waiting for one before the
/// others would stall. Through the pidfd when there is one, else by tid.
fn reap_killed(mut pending: Vec<(Pid, Option<OwnedFd>)>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !pending.is_empty() && std::time::Instant::now() < deadline {
        pending.retain(|(tid, fd)| {
            let status = match fd {
                Some(fd) => sys::waitid_pidfd_nohang(fd.as_fd()),
                None => sys::wait_nohang(*tid),
            };
            match status {
                Ok(None) => true,
                Ok(Some(sys::WaitStatus::Stopped { .. })) => {
                    let _ = sys::ptrace_cont(*tid, 0);
                    true
                }
                Ok(Some(_)) | Err(_) => false,
            }
        });
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl FrozenTree {
    fn detach_all(&mut self) {
        for tid in self.seized.drain(..) {
            match sys::ptrace_detach(tid, 0) {
                // ESRCH from a live tracee means it is not in a ptrace stop yet (seized
                // but never stopped, e.g. after a timeout): stop it, then detach.
                Err(e)
                    if e.raw_os_error() == Some(libc::ESRCH)
                        && sys::ptrace_interrupt(tid).is_ok() =>
                {
                    let _ = sys::wait_timeout(tid, Duration::from_secs(1));
                    let _ = sys::ptrace_detach(tid, 0);
                }
                // Gone (killed) or detached: nothing to undo.
                _ => {}
            }
        }
    }

    /// Freezes the tree rooted at `root` with the cgroup freezer first: the whole cgroup
    /// stops at once, every thread is seized and interrupted while nothing can fork or
    /// exit, then the cgroup is thawed and each thread traps into its ptrace stop before
    /// it runs another user instruction.
    pub fn freeze_with_cgroup(
        root: Pid,
        freezer: &mut CgroupFreezer,
        timeout: Duration,
    ) -> Result<FrozenTree, FreezeError> {
        check_target(root)?;
        // A dumper killed while the cgroup is frozen must not leave it frozen.
        let thaw_if_we_die = if freezer.is_frozen()? {
            None
        } else {
            let started = ThawIfDumperDies::start(freezer);
            Some(started.map_err(|source| crate::cgroup::CgroupError::Io {
                path: freezer.thaw_file().0,
                what: "starting the watchdog that thaws it if we die",
                source,
            })?)
        };
        freezer.freeze(timeout)?;
        let mut tree = FrozenTree {
            processes: Vec::new(),
            seized: Vec::new(),
            _not_send: PhantomData,
        };
        let seized = tree.seize_frozen(root, freezer);
        // Thaw in every case: a seized task only reports its stop once it runs again.
        let thawed = freezer.thaw();
        drop(thaw_if_we_die);
        seized?;
        thawed?;
        // Stops already taken: vfork children run to their exec out of turn.
        let mut stopped_early: Vec<Pid> = Vec::new();
        for i in 0..tree.processes.len() {
            let threads = tree.processes[i].threads.clone();
            if matches!(tree.processes[i].state, TaskState::Zombie { .. }) {
                continue;
            }
            let pid = tree.processes[i].pid;
            for tid in threads {
                if stopped_early.contains(&tid) {
                    continue;
                }
                // Interrupt again now that it runs: the v1 freezer's thaw puts a task back
                // into the sleep it was frozen in, losing the wake-up of the first one.
                let interrupted = sys::ptrace_interrupt(tid);
                let stopped = interrupted
                    .map_err(ptrace_err(tid, "interrupt"))
                    .and_then(|()| {
                        tree.wait_for_stop_past_vfork(pid, tid, timeout, &mut stopped_early)
                    });
                match stopped {
                    Ok(Some(sig)) if tid == tree.processes[i].pid => {
                        tree.processes[i].state = TaskState::Stopped { signal: sig };
                    }
                    Ok(_) => {}
                    // It was already exiting when the cgroup froze (exiting tasks are not
                    // frozen): it leaves the tree, unless it is the root.
                    Err(_)
                        if tree.processes[i].pid != root && exiting(tree.processes[i].pid, tid) =>
                    {
                        tree.seized.retain(|t| *t != tid);
                        tree.processes[i].threads.retain(|t| *t != tid);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // Processes whose threads all exited meanwhile are not part of the tree.
        tree.processes.retain(|p| !p.threads.is_empty());
        Ok(tree)
    }

    /// `wait_for_stop` for thread `tid` of `pid` after a cgroup freeze, which may have
    /// caught a vfork child between its vfork() and its exec: its parent then waits in
    /// the kernel and cannot stop, while the child, seized and interrupted with the rest,
    /// would stop before the exec that releases the parent. Such a child is let run to
    /// its exec (traced all the way) and stopped right after; `stopped_early` records it.
    fn wait_for_stop_past_vfork(
        &self,
        pid: Pid,
        tid: Pid,
        timeout: Duration,
        stopped_early: &mut Vec<Pid>,
    ) -> Result<Option<i32>, FreezeError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match wait_for_stop(tid, left.min(VFORK_CHECK_AFTER)) {
                Err(FreezeError::Timeout { .. }) if !left.is_zero() => {
                    let Some(child) = vfork_child(pid) else {
                        continue;
                    };
                    if self.seized.contains(&child)
                        && !stopped_early.contains(&child)
                        && run_to_exec(pid, child, left)?
                    {
                        stopped_early.push(child);
                    }
                }
                Err(FreezeError::Timeout { .. }) => {
                    return Err(timeout_error(pid, tid, timeout));
                }
                other => return other,
            }
        }
    }

    /// Seizes and interrupts every thread of the tree while its cgroup is frozen.
    fn seize_frozen(&mut self, root: Pid, freezer: &CgroupFreezer) -> Result<(), FreezeError> {
        if !freezer.processes()?.contains(&root) {
            return Err(FreezeError::Refused {
                pid: root,
                why: "it is not in the cgroup to freeze".into(),
            });
        }
        let mut queue = vec![root];
        while let Some(pid) = queue.pop() {
            if self.processes.iter().any(|p| p.pid == pid) {
                continue;
            }
            let dir = ProcDir::open(pid).map_err(proc_err(pid))?;
            let stat = dir.stat().map_err(proc_err(pid))?;
            let status = dir.status().map_err(proc_err(pid))?;
            if status.tracer_pid != 0 {
                let why = format!("it is already traced by process {}", status.tracer_pid);
                return Err(FreezeError::Refused { pid, why });
            }
            let zombie = stat.state == 'Z';
            let mut threads = if zombie {
                vec![pid]
            } else {
                dir.user_threads().map_err(proc_err(pid))?
            };
            // The leader first, as everywhere else.
            threads.sort_by_key(|t| *t != pid);
            self.processes.push(FrozenProcess {
                pid,
                ppid: Pid(stat.ppid),
                pgid: Pid(stat.pgid),
                sid: Pid(stat.sid),
                state: match stat.state {
                    'Z' => TaskState::Zombie {
                        exit_code: stat.exit_code,
                    },
                    'T' => TaskState::Stopped {
                        signal: libc::SIGSTOP,
                    },
                    _ => TaskState::Alive,
                },
                threads: threads.clone(),
            });
            if zombie {
                continue;
            }
            for tid in threads {
                match sys::ptrace_seize(tid, 0) {
                    Ok(()) => {}
                    // Exiting as the cgroup froze (exiting tasks are not frozen): a thread
                    // leaves the list, a whole process other than the root the tree.
                    Err(e) if pid != root && exiting(pid, tid) => {
                        let _ = e;
                        if let Some(p) = self.processes.iter_mut().find(|p| p.pid == pid) {
                            p.threads.retain(|t| *t != tid);
                        }
                        continue;
                    }
                    Err(e) => return Err(ptrace_err(tid, "seize")(e)),
                }
                self.seized.push(tid);
                sys::ptrace_interrupt(tid).map_err(ptrace_err(tid, "interrupt"))?;
            }
            queue.extend(dir.children().map_err(proc_err(pid))?);
        }
        Ok(())
    }
}

/// While it lives, a watchdog process thaws the cgroup if the dumper dies (SIGKILL,
/// the OOM killer): a frozen cgroup does not thaw by itself. Dropping it ends the
/// watchdog.
struct ThawIfDumperDies {
    watchdog: Pid,
    /// The pipe end whose byte tells the watchdog to exit.
    done: std::fs::File,
}

impl ThawIfDumperDies {
    fn start(freezer: &CgroupFreezer) -> std::io::Result<ThawIfDumperDies> {
        let (path, value) = freezer.thaw_file();
        let file = std::fs::File::options().write(true).open(path)?;
        let dumper = sys::pidfd_open(Pid(std::process::id() as i32))?;
        let (done_read, done) = sys::pipe(libc::O_CLOEXEC)?;
        let watchdog =
            sys::fork_thaw_watchdog(dumper.as_fd(), file.as_fd(), value, done_read.as_fd())?;
        Ok(ThawIfDumperDies {
            watchdog,
            done: done.into(),
        })
    }
}

impl Drop for ThawIfDumperDies {
    fn drop(&mut self) {
        let _ = std::io::Write::write(&mut &self.done, b"x");
        if let Err(e) = sys::wait_child(self.watchdog) {
            tracing::warn!(watchdog = %self.watchdog, "reaping the thaw watchdog: {e}");
        }
    }
}

/// While it lives, a death of the dumper (SIGKILL, the OOM killer) kills thread `tid`
/// (`PTRACE_O_EXITKILL`) instead of letting it run on: for the moments its code or
/// registers are not its own, while a syscall is injected into it. Dropping it gives
/// the thread back the options it was seized with (none), so that from then on a dying
/// dumper leaves it running as it was. Declare it before the `Injector` it covers, so
/// that it ends after the injection is undone.
pub struct KillIfTracerDies {
    tid: Pid,
    /// The options the thread goes back to when the window closes.
    base_options: libc::c_int,
    since: std::time::Instant,
    what: &'static str,
}

impl KillIfTracerDies {
    /// `base_options` are kept set while the window is open and after it closes
    /// (PTRACE_SETOPTIONS replaces them all).
    pub fn arm(
        tid: Pid,
        what: &'static str,
        base_options: libc::c_int,
    ) -> std::io::Result<KillIfTracerDies> {
        // Logged first: a log that ends here tells a dying dumper may have taken it along.
        tracing::debug!(%tid, what, "kill-if-dumper-dies window opened");
        sys::ptrace_setoptions(tid, base_options | libc::PTRACE_O_EXITKILL)?;
        Ok(KillIfTracerDies {
            tid,
            base_options,
            since: std::time::Instant::now(),
            what,
        })
    }
}

impl Drop for KillIfTracerDies {
    fn drop(&mut self) {
        if let Err(e) = sys::ptrace_setoptions(self.tid, self.base_options) {
            // Only a task that is gone or no longer stopped refuses this.
            tracing::debug!(tid = %self.tid, "clearing PTRACE_O_EXITKILL: {e}");
        }
        tracing::debug!(
            tid = %self.tid,
            what = self.what,
            us = self.since.elapsed().as_micros() as u64,
            "kill-if-dumper-dies window closed"
        );
    }
}

impl Drop for FrozenTree {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// Whether thread `tid` of `pid` is exiting or gone (zombie, dead, or no /proc entry).
fn exiting(pid: Pid, tid: Pid) -> bool {
    !matches!(
        ProcDir::open_thread(pid, tid).and_then(|d| d.stat()).map(|s| s.state),
        Ok(s) if s != 'Z' && s != 'X'
    )
}

/// How long a thread may take to stop before we look for the vfork child it may wait for.
const VFORK_CHECK_AFTER: Duration = Duration::from_millis(300);

/// The child of `pid` that shares its memory: a vfork child that has neither exec'd nor
/// exited yet, which `pid` waits for in the kernel (where no signal or interrupt stops it).
fn vfork_child(pid: Pid) -> Option<Pid> {
    let children = ProcDir::open(pid).ok()?.children().ok()?;
    children
        .into_iter()
        .find(|c| sys::kcmp_same(pid, *c, sys::KcmpType::Vm).unwrap_or(false))
}

/// The error for a thread that did not stop: a plain timeout, or, for a parent waiting
/// for its vfork child, which child that is (it may be stopped by job control).
fn timeout_error(pid: Pid, tid: Pid, timeout: Duration) -> FreezeError {
    match vfork_child(pid) {
        Some(child) => FreezeError::Refused {
            pid,
            why: format!(
                "it waits in vfork() for its child {child}, which did not exec or exit \
                 within {timeout:?}"
            ),
        },
        None => FreezeError::Timeout { tid, timeout },
    }
}

/// Lets the seized, interrupted vfork `child` of `parent` run until its exec (or exit),
/// then stops it again. Returns whether it is stopped (false: it exited).
fn run_to_exec(parent: Pid, child: Pid, timeout: Duration) -> Result<bool, FreezeError> {
    const PTRACE_EVENT_EXEC: i32 = libc::PTRACE_EVENT_EXEC;
    let deadline = std::time::Instant::now() + timeout;
    match wait_for_stop(child, timeout) {
        Ok(None) => {}
        // Stopped by job control before its exec: it is not ours to run.
        Ok(Some(_)) => return Err(timeout_error(parent, parent, timeout)),
        Err(FreezeError::Exited { .. }) => return Ok(false),
        Err(e) => return Err(e),
    }
    sys::ptrace_setoptions(child, libc::PTRACE_O_TRACEEXEC)
        .map_err(ptrace_err(child, "set options of"))?;
    sys::ptrace_cont(child, 0).map_err(ptrace_err(child, "continue"))?;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let status = sys::wait_timeout(child, left).map_err(|e| {
            if e.kind() == std::io::ErrorKind::TimedOut {
                timeout_error(parent, parent, timeout)
            } else {
                ptrace_err(child, "wait for")(e)
            }
        })?;
        match status {
            WaitStatus::Stopped {
                event: PTRACE_EVENT_EXEC,
                ..
            } => break,
            // An interrupt left over from the freeze: it is not the stop we want yet.
            WaitStatus::Stopped {
                event: PTRACE_EVENT_STOP,
                ..
            } => sys::ptrace_cont(child, 0).map_err(ptrace_err(child, "continue"))?,
            WaitStatus::Stopped { sig, .. } => {
                sys::ptrace_cont(child, sig).map_err(ptrace_err(child, "continue"))?
            }
            WaitStatus::Exited(_) | WaitStatus::Signaled(_) => return Ok(false),
        }
    }
    // Past the exec its parent runs again; the child stops where every other task does.
    sys::ptrace_setoptions(child, 0).map_err(ptrace_err(child, "set options of"))?;
    sys::ptrace_interrupt(child).map_err(ptrace_err(child, "interrupt"))?;
    sys::ptrace_cont(child, 0).map_err(ptrace_err(child, "continue"))?;
    match wait_for_stop(child, timeout) {
        Ok(_) => Ok(true),
        Err(FreezeError::Exited { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits for a seized and interrupted thread to stop. Returns `Some(signal)` when it is
/// in group-stop. Signals that arrive first are delivered (re-injected), never lost.
fn wait_for_stop(tid: Pid, timeout: Duration) -> Result<Option<i32>, FreezeError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // In short slices, interrupting again after each: an interrupt that met a
        // signal-delivery stop (a shell's SIGCHLD) may be used up by it, and the task
        // would run on without stopping. A second interrupt of a task that is already
        // on its way to the stop changes nothing.
        let slice = left.min(Duration::from_millis(200));
        let status = match sys::wait_timeout(tid, slice) {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && !left.is_zero() => {
                sys::ptrace_interrupt(tid).map_err(ptrace_err(tid, "interrupt"))?;
                continue;
            }
            other => other,
        }
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::TimedOut {
                FreezeError::Timeout { tid, timeout }
            } else {
                FreezeError::Ptrace {
                    tid,
                    op: "wait for",
                    source: e,
                }
            }
        })?;
        match status {
            WaitStatus::Stopped {
                sig,
                event: PTRACE_EVENT_STOP,
            } => {
                return Ok(match sig {
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => Some(sig),
                    _ => None,
                });
            }
            WaitStatus::Stopped { sig, .. } => {
                // A signal-delivery stop that raced with the interrupt: let the signal
                // through; the pending interrupt stops the task right after.
                sys::ptrace_cont(tid, sig).map_err(ptrace_err(tid, "continue"))?;
            }
            WaitStatus::Exited(_) | WaitStatus::Signaled(_) => {
                return Err(FreezeError::Exited { tid })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{settle_state, task_state, Spawned};

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn freezes_a_tree_and_resumes_it() {
        let sh = Spawned::start(&["/bin/sh", "-c", "sleep 100 & sleep 100 & wait"]);
        sh.wait_until("two children", |d| {
            d.children().map(|c| c.len() == 2).unwrap_or(false)
        });
        let tree = FrozenTree::freeze(sh.pid(), TIMEOUT).unwrap();
        assert_eq!(tree.processes.len(), 3);
        assert_eq!(tree.processes[0].pid, sh.pid());
        for p in &tree.processes {
            assert_eq!(
                task_state(p.pid),
                't',
                "{} should be in a tracing stop",
                p.pid
            );
            assert_eq!(p.threads, vec![p.pid]);
        }
        let pids: Vec<Pid> = tree.processes.iter().map(|p| p.pid).collect();
        tree.resume();
        for pid in pids {
            assert_eq!(
                settle_state(pid, 'S'),
                'S',
                "{pid} should sleep again after resume"
            );
        }
    }

    #[test]
    fn freezes_every_thread() {
        let py = Spawned::start(&[
            "python3",
            "-c",
            "import threading,time\n[threading.Thread(target=time.sleep,args=(100,)).start() for _ in range(3)]\ntime.sleep(100)",
        ]);
        py.wait_until("4 threads", |d| {
            d.threads().map(|t| t.len() == 4).unwrap_or(false)
        });
        let tree = FrozenTree::freeze(py.pid(), TIMEOUT).unwrap();
        assert_eq!(tree.processes.len(), 1);
        assert_eq!(tree.processes[0].threads.len(), 4);
        assert_eq!(tree.processes[0].threads[0], py.pid());
        drop(tree);
        assert_eq!(settle_state(py.pid(), 'S'), 'S');
    }

    #[test]
    fn stopped_tasks_stay_stopped() {
        let sleeper = Spawned::start(&["sleep", "100"]);
        sys::kill(sleeper.pid(), libc::SIGSTOP).unwrap();
        sleeper.wait_until("group stop", |d| {
            d.stat().map(|s| s.state == 'T').unwrap_or(false)
        });
        let tree = FrozenTree::freeze(sleeper.pid(), TIMEOUT).unwrap();
        assert!(matches!(
            tree.processes[0].state,
            TaskState::Stopped {
                signal: libc::SIGSTOP
            }
        ));
        tree.resume();
        assert_eq!(settle_state(sleeper.pid(), 'T'), 'T');
    }

    #[test]
    fn refuses_bad_targets() {
        assert!(matches!(
            FrozenTree::freeze(Pid(1), TIMEOUT),
            Err(FreezeError::Refused { .. })
        ));
        let me = Pid(std::process::id() as i32);
        assert!(matches!(
            FrozenTree::freeze(me, TIMEOUT),
            Err(FreezeError::Refused { .. })
        ));
        assert!(matches!(
            FrozenTree::freeze(Pid(i32::MAX - 1), TIMEOUT),
            Err(FreezeError::NoSuchProcess(_))
        ));
    }

    #[test]
    fn kill_ends_the_tree() {
        let sh = Spawned::start(&["/bin/sh", "-c", "sleep 100 & wait"]);
        sh.wait_until("a child", |d| {
            d.children().map(|c| c.len() == 1).unwrap_or(false)
        });
        let tree = FrozenTree::freeze(sh.pid(), TIMEOUT).unwrap();
        let child = tree.processes[1].pid;
        tree.kill();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while !matches!(task_state(child), '?' | 'Z') {
            assert!(
                std::time::Instant::now() < deadline,
                "child {child} survived the kill"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
