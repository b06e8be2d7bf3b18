//! Running containers: the monitor that owns each one, the init that builds its
//! namespaces and root filesystem, and the operations on running containers.
//!
//! How a container starts (`run`), in order, and why:
//! 1. crpod creates the container's directory and starts a monitor (crpod itself, hidden
//!    subcommand `_monitor`), which calls setsid so it outlives the terminal and crpod.
//! 2. The monitor creates the container's cgroup (`crpod/ID` in the cgroup v2 hierarchy,
//!    see `cgroup`) and unshares its pid namespace for its children only, so its next child is pid 1
//!    of a new namespace and the monitor is that init's parent: it alone can wait for it
//!    and keep its exit code while crpod is not running.
//! 3. The init (crpod again, hidden subcommand `_init`) joins the cgroup, unshares the
//!    mount, uts, ipc (and, unless `--network host`, net) namespaces, mounts the overlay
//!    root (image read-only below, the container's `upper` above), /proc of its pid
//!    namespace, /sys, a minimal /dev with its own /dev/pts, sets the hostname, brings
//!    loopback up, pivots into the new root, denies io_uring as podman's default seccomp
//!    profile does (ENOSYS), and execs the command. Its stdout and stderr
//!    are the container's log. Any failure before the exec is written to a pipe the
//!    monitor reads, so `run` can report it.
//! 4. The monitor reports "started" to `run`, waits for the init, records the exit code
//!    (or that a checkpoint ended it), and removes the cgroup. The mounts live only in the
//!    container's mount namespace, so they go with its last process.
//!
//! With a user namespace of its own (`--userns`, `--uidmap`) the mount and network
//! namespaces stay owned by the host's user namespace, built by `_init` as host root (so
//! a restore can build them again the same way), and the container's user namespace owns
//! its pid, uts and ipc namespaces (a checkpoint needs that layout):
//! - the monitor does not unshare its pid namespace; `_init` (in the host's) builds the
//!   root as above without /proc, then clones the container's init with new user, pid,
//!   uts and ipc namespaces as the monitor's child (CLONE_PARENT), writes its uid and
//!   gid maps from outside, mounts /proc of its pid namespace (procfs's `pidns`
//!   parameter: no process of ours needs to enter it), pivots (which moves the waiting
//!   init's root too), tells the monitor the init's pid and lets it go, and exits;
//! - the init becomes root of its namespace (uid and gid 0 when mapped), makes its own
//!   session, sets the hostname and execs the command;
//! - the root of the writable layer belongs to the container's root.

use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::cgroup;
use crate::store::{self, Container, State, Status, Store, UserNs};
use crate::Error;

/// crpod itself, re-executed as one of its hidden verbs (`_monitor`, `_init`) for
/// container `id` under `store`.
fn hidden_verb(store: &Store, verb: &str, id: &str) -> Result<Command, Error> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| Error::io(Path::new("/proc/self/exe"), "read", e))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--root").arg(&store.root).arg(verb).arg(id);
    Ok(cmd)
}

/// Starts the monitor of container `c` and waits until the container runs (or failed
/// to start, with the init's reason). `restore` makes the monitor restore the last
/// checkpoint instead of starting the command.
pub fn start_monitor(store: &Store, c: &Container, restore: bool) -> Result<(), Error> {
    let mut cmd = hidden_verb(store, "_monitor", &c.config.id)?;
    if restore {
        cmd.arg("--restore");
    }
    let monitor_log = File::create(c.dir.join("monitor.log"))
        .map_err(|e| Error::io(&c.dir.join("monitor.log"), "create", e))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(monitor_log)
        .spawn()
        .map_err(|e| Error::Msg(format!("cannot start the container's monitor: {e}")))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    // The monitor goes on alone (it called setsid); it is not ours to wait for, but
    // reaping it when it exits early keeps no zombie of ours around.
    std::thread::spawn(move || child.wait());
    match line.trim_end().split_once(' ') {
        Some(("ok", _)) => Ok(()),
        Some(("error", why)) => Err(Error::Msg(why.to_owned())),
        _ => {
            let log = std::fs::read_to_string(c.dir.join("monitor.log")).unwrap_or_default();
            Err(Error::Msg(format!(
                "the container's monitor ended without starting it: {}",
                log.trim()
            )))
        }
    }
}

/// The monitor (hidden subcommand `_monitor ID`); see the module comment.
///
/// `restore` is how to bring the container back from its checkpoint when the monitor
/// was started for a restore (`checkpoint::restore_in_monitor`, handed in by the front
/// end so that running containers need not know how checkpoints are made).
pub fn monitor(store: &Store, id: &str, restore: Option<Restorer>) -> Result<(), Error> {
    // Whatever our starter leaked to us (a terminal's or a CI agent's pipe) is not kept
    // open for the container's whole life.
    let _ = criu_core::sys::close_from(3);
    let _ = nix::unistd::setsid();
    let c = store.find(id)?;
    let mut report = std::io::stdout();
    let started = match start_container(store, &c, restore) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(report, "error {e}");
            if let Ok(cg) = cgroup::dir(&c.config.id) {
                let _ = std::fs::remove_dir(cg);
            }
            return Err(e);
        }
    };
    let mut state = c.state()?;
    state.status = Status::Running;
    state.pid = started.pid;
    state.monitor = std::process::id() as i32;
    state.started = store::now();
    state.checkpointed = false;
    state.checkpointing = false;
    c.set_state(&state)?;
    let _ = writeln!(report, "ok {}", started.pid);
    let _ = report.flush();
    // stdout is the pipe `run` reads: let it go so `run` sees the end of it.
    if let Ok(null) = File::open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }

    let code = started.wait();
    let mut state = c.state().unwrap_or_else(|_| State::created());
    state.status = Status::Exited;
    state.exit_code = code;
    state.finished = store::now();
    state.pid = 0;
    state.monitor = 0;
    if state.checkpointing {
        // Ended by its checkpoint, not by itself: shown as a clean exit, as podman does.
        state.checkpointed = true;
        state.checkpointing = false;
        state.exit_code = 0;
    }
    c.set_state(&state)?;
    cgroup::remove(&c.config.id);
    Ok(())
}

/// The container's init, started or restored; the monitor waits for it.
pub struct Started {
    /// Host pid of the init.
    pub pid: i32,
    child: Option<std::process::Child>,
}

impl Started {
    /// An init that is a child of ours std did not spawn: restored by the engine, or
    /// cloned by `_init` as our child (a user namespace of its own).
    pub fn child(pid: i32) -> Started {
        Started { pid, child: None }
    }
}

impl Started {
    /// Waits for the init; its exit code as a shell shows it (128 + signal if killed).
    fn wait(self) -> i32 {
        let status = match self.child {
            Some(mut child) => child.wait().ok(),
            None => criu_core::sys::wait_child(criu_core::sys::Pid(self.pid)).ok(),
        };
        match status {
            Some(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
            None => 255,
        }
    }
}

/// Restores a container in its monitor (the engine makes its init our child).
pub type Restorer = fn(&Store, &Container) -> Result<Started, Error>;

fn start_container(
    store: &Store,
    c: &Container,
    restore: Option<Restorer>,
) -> Result<Started, Error> {
    let cg = cgroup::dir(&c.config.id)?;
    std::fs::create_dir_all(&cg).map_err(|e| Error::io(&cg, "create the cgroup", e))?;
    if let Some(restore) = restore {
        // The engine creates the pid namespace itself (the dumped init was pid 1).
        return restore(store, c);
    }
    let private_users = c.config.userns.is_some();
    if !private_users {
        // Our next child is pid 1 of a new pid namespace; we stay where we are.
        unshare(CloneFlags::CLONE_NEWPID)
            .map_err(|e| Error::Msg(format!("cannot create a pid namespace: {e}")))?;
    }
    let log = open_log(c)?;
    let stdout = log
        .try_clone()
        .map_err(|e| Error::io(&c.log_path(), "dup", e))?;
    let (mut child, mut sync) = spawn_init(store, c, false, stdout.into(), log.into())?;
    let mut why = String::new();
    let _ = sync.read_to_string(&mut why);
    drop(sync);
    if private_users {
        // `_init` is gone once the init it cloned runs (or failed).
        let _ = child.wait();
        return started_in_user_namespace(&why);
    }
    let started = Started {
        pid: child.id() as i32,
        child: Some(child),
    };
    if !why.is_empty() {
        let _ = started.wait();
        return Err(Error::Msg(why));
    }
    Ok(started)
}

/// What `_init` reported for a container in a user namespace of its own: "pid N" (our
/// child, the container's init) once cloned, then nothing more if the init ran the
/// command, or why it failed (the init is then killed and reaped).
fn started_in_user_namespace(report: &str) -> Result<Started, Error> {
    let (pid, why) = match report.split_once('\n') {
        Some((first, rest)) => match first.strip_prefix(INIT_PID) {
            Some(n) => (n.trim().parse::<i32>().ok(), rest),
            None => (None, report),
        },
        None => (None, report),
    };
    match pid {
        Some(pid) if why.is_empty() => Ok(Started::child(pid)),
        _ => {
            if let Some(pid) = pid {
                let _ = criu_core::sys::kill(criu_core::sys::Pid(pid), libc::SIGKILL);
                let _ = criu_core::sys::wait_child(criu_core::sys::Pid(pid));
            }
            Err(Error::Msg(if why.is_empty() {
                "the container's init ended without starting".into()
            } else {
                why.to_owned()
            }))
        }
    }
}

/// How `_init` tells the monitor the pid of the init it cloned (a line on the sync pipe).
const INIT_PID: &str = "pid ";

/// Starts `crpod _init ID` (`--holder` for a namespace holder) with a sync pipe it
/// finds through CRPOD_SYNC_FD; returns the child and the pipe's read end, which sees
/// the end of file once the child execs or exits, and what it reports before that.
fn spawn_init(
    store: &Store,
    c: &Container,
    holder: bool,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<(std::process::Child, File), Error> {
    let (sync_read, sync_write) =
        nix::unistd::pipe().map_err(|e| Error::Msg(format!("pipe: {e}")))?;
    let mut cmd = hidden_verb(store, "_init", &c.config.id)?;
    if holder {
        cmd.arg("--holder");
    }
    let what = if holder {
        "the namespace holder"
    } else {
        "the container's init"
    };
    let child = cmd
        .env("CRPOD_SYNC_FD", sync_write.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|e| Error::Msg(format!("cannot start {what}: {e}")))?;
    // Only the child holds the write end now: its exec or exit ends the pipe.
    drop(sync_write);
    Ok((child, File::from(sync_read)))
}

/// A process holding the container's mount, uts, ipc and net namespaces (see
/// `holder_steps`); kill it once something else lives in them.
pub fn spawn_holder(store: &Store, c: &Container) -> Result<std::process::Child, Error> {
    let (mut child, sync) = spawn_init(store, c, true, Stdio::null(), Stdio::inherit())?;
    let mut line = String::new();
    let _ = std::io::BufReader::new(sync).read_line(&mut line);
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::Msg(format!(
            "preparing the container's namespaces: {}",
            line.trim()
        )));
    }
    Ok(child)
}

/// The container's log, opened for appending (so a restored container writes on where
/// it stopped, and several writers never overwrite each other).
pub fn open_log(c: &Container) -> Result<File, Error> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(c.log_path())
        .map_err(|e| Error::io(&c.log_path(), "open", e))
}

/// Stops a step of `_init` with a message for the monitor.
fn step<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, Error> {
    r.map_err(|e| Error::Msg(format!("{what}: {e}")))
}

/// The container's init (hidden subcommand `_init ID`), pid 1 of its pid namespace:
/// builds the rest and execs the command (with a user namespace of its own: clones the
/// init, sets it up, and returns `Ok` once it runs). Returns an error only on failure,
/// after telling the monitor why through the sync pipe.
pub fn init(store: &Store, id: &str, holder: bool) -> Result<(), Error> {
    let sync: Option<File> = std::env::var("CRPOD_SYNC_FD")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .and_then(|fd| criu_core::sys::take_inherited_fd(fd).ok())
        .map(File::from);
    std::env::remove_var("CRPOD_SYNC_FD");
    // Nothing we hold by accident (an fd our caller leaked) reaches the container.
    let _ = criu_core::sys::cloexec_from(3);
    let result = if holder {
        holder_steps(store, id, sync.as_ref())
            .and_then(|()| Err(Error::Msg("the namespace holder was woken".into())))
    } else {
        init_steps(store, id, sync.as_ref())
    };
    if let (Err(e), Some(mut s)) = (&result, sync) {
        let _ = write!(s, "{e}");
    }
    result
}

/// The namespaces a container runs in besides its pid namespace: mount (the overlay
/// root, /sys, /dev; /proc needs the container's pid namespace, so it is left to whoever
/// creates that), uts with the hostname, ipc, and net with loopback up. With a user
/// namespace of its own, uts and ipc are left to the init, which makes them in it.
/// Returns the root to pivot into.
fn build_namespaces(store: &Store, c: &Container, with_proc: bool) -> Result<PathBuf, Error> {
    let cfg = &c.config;
    let mut flags = CloneFlags::CLONE_NEWNS;
    if cfg.userns.is_none() {
        flags |= CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    }
    if cfg.network != "host" {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    step("creating namespaces", unshare(flags))?;
    if let Some(userns) = &cfg.userns {
        // Before the overlay is mounted over it.
        crate::userns::give_upper(&c.dir.join("upper"), userns)?;
    }
    let rootfs = prepare_rootfs(store, c, with_proc && cfg.userns.is_none())?;
    if cfg.userns.is_none() {
        step(
            "setting the hostname",
            nix::unistd::sethostname(cfg.short_id()),
        )?;
    }
    if cfg.network != "host" {
        step("bringing loopback up", criu_core::sys::loopback_up())?;
    }
    Ok(rootfs)
}

/// `_init ID --holder`: builds the container's namespaces (as `_init`, without /proc)
/// for a restore to join, says "ready" on the sync pipe, and waits to be killed.
fn holder_steps(store: &Store, id: &str, sync: Option<&File>) -> Result<(), Error> {
    let c = store.find(id)?;
    let rootfs = build_namespaces(store, &c, false)?;
    enter_root(&rootfs)?;
    if let Some(mut s) = sync {
        step("reporting", s.write_all(b"ready\n"))?;
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn init_steps(store: &Store, id: &str, sync: Option<&File>) -> Result<(), Error> {
    let c = store.find(id)?;
    // Its own session, as a container's init has (and a dump expects of a tree root).
    let _ = nix::unistd::setsid();
    let procs = cgroup::dir(id)?.join("cgroup.procs");
    step("joining the cgroup", std::fs::write(&procs, "0"))?;
    let rootfs = build_namespaces(store, &c, true)?;
    if let Some(userns) = &c.config.userns {
        return start_in_user_namespace(&c, userns, &rootfs, sync);
    }
    enter_root(&rootfs)?;
    Err(exec_command(&c))
}

/// Makes io_uring unavailable to what this process starts from now on (its calls fail
/// with ENOSYS), as podman's default seccomp profile does: programs that can do without
/// it fall back to other I/O (MariaDB to libaio), which a checkpoint can record, where a
/// ring would be refused.
fn deny_io_uring() -> Result<(), Error> {
    let io_uring = [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ]
    .map(|nr| nr as u32);
    step(
        "denying io_uring (seccomp)",
        criu_core::sys::deny_syscalls(&io_uring, libc::ENOSYS as u16),
    )
}

/// Runs the container's command in place of this process (env and workdir as
/// configured); returns only why it could not.
fn exec_command(c: &Container) -> Error {
    let cfg = &c.config;
    // `run` refuses an empty command; a damaged config.json may still hold one.
    let Some((program, args)) = cfg.command.split_first() else {
        return Error::Msg(format!("{}: the container has no command", cfg.name));
    };
    if let Err(e) = deny_io_uring() {
        return e;
    }
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(default_env(cfg))
        .current_dir(&cfg.workdir);
    // exec only returns on failure.
    let e = cmd.exec();
    Error::Msg(format!("cannot run {program:?}: {e}"))
}

/// `_init` for a container with a user namespace of its own, in its mount (and net)
/// namespace with the root built under `rootfs` (see the module comment). Returns `Ok`
/// in `_init` once the init runs on its own; the init itself returns only why it failed.
fn start_in_user_namespace(
    c: &Container,
    userns: &UserNs,
    rootfs: &Path,
    sync: Option<&File>,
) -> Result<(), Error> {
    use criu_core::sys::{fork_into_namespaces, ForkedInto, Pid};
    let (go_read, go_write) = step(
        "making a pipe",
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC),
    )?;
    let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    let init = match step(
        "cloning the container's init",
        fork_into_namespaces(flags, true),
    )? {
        ForkedInto::Child => {
            drop(go_write);
            return Err(container_init(c, userns, go_read));
        }
        ForkedInto::Parent(pid) => pid,
    };
    drop(go_read);
    // Killed unless it goes: not our child (CLONE_PARENT), the monitor reaps it.
    struct Unstarted(Pid);
    impl Drop for Unstarted {
        fn drop(&mut self) {
            let _ = criu_core::sys::kill(self.0, libc::SIGKILL);
        }
    }
    let unstarted = Unstarted(init);
    if let Some(mut s) = sync {
        step("reporting", writeln!(s, "{INIT_PID}{}", init.0))?;
    }
    // As host root we may write any maps (and setgroups stays allowed inside).
    for (file, map) in [("uid_map", &userns.uid_map), ("gid_map", &userns.gid_map)] {
        let path = format!("/proc/{}/{file}", init.0);
        step(
            &format!("writing {path}"),
            std::fs::write(&path, UserNs::proc_text(map)),
        )?;
    }
    let pidns_path = format!("/proc/{}/ns/pid", init.0);
    let pidns =
        File::open(&pidns_path).map_err(|e| Error::io(Path::new(&pidns_path), "open", e))?;
    step(
        "mounting /proc",
        criu_core::sys::mount_proc(std::os::fd::AsFd::as_fd(&pidns), &rootfs.join("proc")),
    )?;
    // pivot_root also moves the root of every process whose root was the old one: the
    // waiting init's.
    enter_root(rootfs)?;
    step("letting the init go", File::from(go_write).write_all(b"g"))?;
    std::mem::forget(unstarted);
    Ok(())
}

/// In the container's user namespace: uid and gid 0 there (those mapped), no
/// supplementary groups, so what we create belongs to the container's root. Its
/// capabilities there stay full (a change to uid 0 keeps them).
fn become_root_of(userns: &UserNs) -> Result<(), Error> {
    let root = nix::unistd::Gid::from_raw(0);
    if UserNs::host_id(&userns.gid_map, 0).is_some() {
        step("setresgid", nix::unistd::setresgid(root, root, root))?;
        step("setgroups", nix::unistd::setgroups(&[]))?;
    }
    let root = nix::unistd::Uid::from_raw(0);
    if UserNs::host_id(&userns.uid_map, 0).is_some() {
        step("setresuid", nix::unistd::setresuid(root, root, root))?;
    }
    Ok(())
}

/// The container's init, pid 1 of its new namespaces: waits for `_init` to set it up
/// (`go`), becomes root of its user namespace where 0 is mapped, leads a session,
/// sets the hostname and runs the command. Returns only why it could not.
fn container_init(c: &Container, userns: &UserNs, go: OwnedFd) -> Error {
    let mut byte = [0u8; 1];
    match File::from(go).read(&mut byte) {
        Ok(1) => {}
        _ => return Error::Msg("the container's setup was abandoned".into()),
    }
    let steps = || -> Result<(), Error> {
        step("creating a session", nix::unistd::setsid())?;
        become_root_of(userns)?;
        step(
            "setting the hostname",
            nix::unistd::sethostname(c.config.short_id()),
        )
    };
    match steps() {
        Ok(()) => exec_command(c),
        Err(e) => e,
    }
}

/// PATH, HOSTNAME, TERM and the container's `-e` variables (which win).
pub fn default_env(cfg: &store::Config) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "PATH".to_owned(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ),
        ("HOSTNAME".to_owned(), cfg.short_id().to_owned()),
        ("container".to_owned(), "crpod".to_owned()),
    ];
    for kv in &cfg.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        env.retain(|(key, _)| key != k);
        env.push((k.to_owned(), v.to_owned()));
    }
    env
}

/// In the container's new mount namespace: the overlay root with /proc, /sys and a
/// minimal /dev, mounted under the container's `rootfs` directory.
pub fn prepare_rootfs(store: &Store, c: &Container, with_proc: bool) -> Result<PathBuf, Error> {
    let none: Option<&str> = None;
    step(
        "making mounts private",
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none),
    )?;
    let lower = store.image_rootfs(&c.config.image)?;
    let rootfs = c.dir.join("rootfs");
    step("creating rootfs", std::fs::create_dir_all(&rootfs))?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        c.dir.join("upper").display(),
        c.dir.join("work").display()
    );
    step(
        "mounting the overlay root",
        mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        ),
    )?;
    let at = |p: &str| rootfs.join(p);
    for d in ["proc", "sys", "dev", "tmp"] {
        step("creating mountpoints", std::fs::create_dir_all(at(d)))?;
    }
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if with_proc {
        step(
            "mounting /proc",
            mount(Some("proc"), &at("proc"), Some("proc"), nosuid, none),
        )?;
    }
    step(
        "mounting /sys",
        mount(
            Some("sysfs"),
            &at("sys"),
            Some("sysfs"),
            nosuid | MsFlags::MS_RDONLY,
            none,
        ),
    )?;
    step(
        "mounting /dev",
        mount(
            Some("tmpfs"),
            &at("dev"),
            Some("tmpfs"),
            MsFlags::MS_NOSUID,
            Some("mode=755,size=65536k"),
        ),
    )?;
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = at("dev").join(dev);
        step("creating /dev", File::create(&target))?;
        step(
            "binding /dev",
            mount(
                Some(Path::new("/dev").join(dev).as_path()),
                &target,
                none,
                MsFlags::MS_BIND,
                none,
            ),
        )?;
    }
    for d in ["pts", "shm"] {
        step("creating /dev", std::fs::create_dir_all(at("dev").join(d)))?;
    }
    step(
        "mounting /dev/pts",
        mount(
            Some("devpts"),
            &at("dev/pts"),
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
    )?;
    step(
        "mounting /dev/shm",
        mount(
            Some("shm"),
            &at("dev/shm"),
            Some("tmpfs"),
            nosuid,
            Some("mode=1777,size=65536k"),
        ),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        step(
            "linking /dev",
            std::os::unix::fs::symlink(target, at("dev").join(link)),
        )?;
    }
    Ok(rootfs)
}

/// pivot_root into `rootfs` and drop the old root, so nothing of the host's mount tree
/// stays reachable from inside.
pub fn enter_root(rootfs: &Path) -> Result<(), Error> {
    step("entering the root", nix::unistd::chdir(rootfs))?;
    step("pivot_root", nix::unistd::pivot_root(".", "."))?;
    step("detaching the old root", umount2(".", MntFlags::MNT_DETACH))?;
    step("entering the root", nix::unistd::chdir("/"))?;
    Ok(())
}

/// Sends `signal` to the container's init.
pub fn kill(c: &Container, signal: i32) -> Result<(), Error> {
    let state = c.state()?;
    if !state.is_running() {
        return Err(Error::NotRunning(c.config.name.clone()));
    }
    criu_core::sys::kill(criu_core::sys::Pid(state.pid), signal)
        .map_err(|e| Error::Msg(format!("cannot signal {}: {e}", c.config.name)))
}

/// Waits (bounded) until the monitor recorded the container's end.
pub fn wait_exited(c: &Container, timeout: Duration) -> Result<State, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let state = c.state()?;
        if state.status != Status::Running {
            return Ok(state);
        }
        if !state.is_running() && !monitor_alive(&state) {
            // Its monitor was killed: record the end ourselves.
            let mut state = state;
            state.status = Status::Exited;
            state.exit_code = 137;
            state.finished = store::now();
            state.pid = 0;
            c.set_state(&state)?;
            cgroup::remove(&c.config.id);
            return Ok(state);
        }
        if Instant::now() >= deadline {
            return Err(Error::Msg(format!(
                "{} did not stop within {timeout:?}",
                c.config.name
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn monitor_alive(state: &State) -> bool {
    state.monitor > 0 && Path::new(&format!("/proc/{}", state.monitor)).exists()
}

/// Runs `command` inside running container `c` (its namespaces, root, cgroup and
/// environment), with our stdin, stdout and stderr; returns its exit code.
pub fn exec(c: &Container, command: &[String]) -> Result<i32, Error> {
    let state = c.state()?;
    if !state.is_running() {
        return Err(Error::NotRunning(c.config.name.clone()));
    }
    let procs_path = cgroup::dir(&c.config.id)?.join("cgroup.procs");
    let mut procs = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(|e| Error::io(&procs_path, "open", e))?;
    // Opened before joining any: the mount namespace comes last, since after it no
    // host path is visible.
    let mut namespaces = Vec::new();
    for (name, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        // A restored container has a time namespace of its own (its clocks go on from
        // the checkpoint's): the command reads the same clocks as the container.
        ("time", CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let path = format!("/proc/{}/ns/{name}", state.pid);
        let fd: OwnedFd = File::open(&path)
            .map_err(|e| Error::io(Path::new(&path), "open", e))?
            .into();
        namespaces.push((name, flag, fd));
    }
    // Its own user namespace last: from inside it we would have no privileges over the
    // others (and only a process of one thread may enter one).
    if c.config.userns.is_some() {
        let path = format!("/proc/{}/ns/user", state.pid);
        let fd: OwnedFd = File::open(&path)
            .map_err(|e| Error::io(Path::new(&path), "open", e))?
            .into();
        namespaces.push(("user", CloneFlags::CLONE_NEWUSER, fd));
    }
    for (name, flag, fd) in &namespaces {
        setns(fd, *flag)
            .map_err(|e| Error::Msg(format!("cannot join the {name} namespace: {e}")))?;
    }
    if let Some(userns) = &c.config.userns {
        become_root_of(userns)?;
    }
    // The command gets the container's filter; we, a process of its own that only
    // waits, have it too.
    deny_io_uring()?;
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .env_clear()
        .envs(default_env(&c.config))
        .current_dir(&c.config.workdir)
        .spawn()
        .map_err(|e| {
            Error::Msg(format!(
                "cannot run {:?} in {}: {e}",
                command[0], c.config.name
            ))
        })?;
    let _ = write!(procs, "{}", child.id());
    let status = child
        .wait()
        .map_err(|e| Error::Msg(format!("waiting for {:?}: {e}", command[0])))?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Removes container `c` (killing it first with `force`) and everything it has.
pub fn remove_container(c: &Container, force: bool) -> Result<(), Error> {
    let s = c.state()?;
    if s.is_running() {
        if !force {
            return Err(Error::Msg(format!(
                "cannot remove container {} as it is running: stop it first or use --force",
                c.short_id()
            )));
        }
        let _ = kill(c, libc::SIGKILL);
        wait_exited(c, Duration::from_secs(20))?;
    } else if s.status == Status::Running {
        // The monitor is still recording the end.
        wait_exited(c, Duration::from_secs(20))?;
    }
    if let Ok(cg) = cgroup::dir(&c.config.id) {
        let _ = std::fs::remove_dir(cg);
    }
    std::fs::remove_dir_all(&c.dir).map_err(|e| Error::io(&c.dir, "remove", e))
}
