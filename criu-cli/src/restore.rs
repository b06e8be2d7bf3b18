//! `criu-rs restore`: CRIU's restore options mapped onto `criu_core::restore`.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use criu_core::arch::CpuCap;
use criu_core::restore::{self, RestoreOptions};

use crate::logging::{DirArgs, LogArgs};
use crate::progress::{ProgressArgs, Shown};
use crate::signals::Signals;

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    dirs: DirArgs,
    /// Exit once the tree runs instead of waiting for its root.
    #[arg(short = 'd', long = "restore-detached")]
    detached: bool,
    /// Restore the root as a sibling of criu-rs instead of a child (accepted; with -d the
    /// tree is reparented as soon as criu-rs exits).
    #[arg(long = "restore-sibling")]
    sibling: bool,
    /// The tree was dumped as a shell job: it joins this terminal and session.
    #[arg(short = 'j', long = "shell-job")]
    shell_job: bool,
    /// `NS:PATH`: enter this existing namespace (net, mnt, uts, ipc) instead of ours.
    #[arg(long = "join-ns", value_name = "NS:PATH")]
    join_ns: Vec<String>,
    /// The tree's root filesystem, as we see it: paths of files are looked up there.
    #[arg(long = "root", value_name = "DIR")]
    root: Option<PathBuf>,
    /// `mnt[KEY]:PATH`: the external mount the dump saved by KEY is a bind of PATH.
    #[arg(long = "external", value_name = "RES")]
    external: Vec<String>,
    /// `KEY:PATH`, CRIU's older spelling of `--external mnt[KEY]:PATH`.
    #[arg(short = 'M', long = "ext-mount-map", value_name = "KEY:PATH")]
    ext_mount_map: Vec<String>,
    /// `fd[N]:KEY`: the dumped file KEY is our open fd N.
    #[arg(long = "inherit-fd", value_name = "fd[N]:KEY")]
    inherit_fd: Vec<String>,
    /// Write the root's pid to this file.
    #[arg(long = "pidfile", value_name = "FILE")]
    pidfile: Option<PathBuf>,
    /// What this CPU must offer of the dumping one, as in CRIU (comma-separated):
    /// `fpu` (default: every xsave feature the images need), `none` (restore anyway),
    /// `ins`, `cpu`, `all`; `^` negates.
    #[arg(
        long = "cpu-cap",
        value_name = "CAP",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = ""
    )]
    cpu_cap: Option<String>,
    /// Leave the tree in criu-rs's own time namespace. By default (as with CRIU) the
    /// tree gets a new one whose CLOCK_MONOTONIC and CLOCK_BOOTTIME go on from the values
    /// they had at the dump, so the time it spent dumped does not show; with this flag
    /// those clocks jump to this host's (by the downtime, or by the offsets of a time
    /// namespace the tree had).
    #[arg(long = "no-timens")]
    no_timens: bool,
    /// Accepted as CRIU does: the restore lifts the lock the dump's images name.
    #[arg(long = "network-lock", value_name = "METHOD",
          value_parser = ["nftables", "iptables", "skip"])]
    network_lock: Option<String>,
    /// Print the restore statistics at the end.
    #[arg(long = "display-stats")]
    display_stats: bool,
    /// Accepted (CRIU: rebuild the mount namespace with its older mount engine instead of
    /// the one built on `MOVE_MOUNT_SET_GROUP`). criu-rs has one engine, which sets
    /// sharing groups with `MOVE_MOUNT_SET_GROUP`; the mounts it makes are the same.
    #[arg(long = "mntns-compat-mode", overrides_with = "no_mntns_compat_mode")]
    mntns_compat_mode: bool,
    /// Accepted (see --mntns-compat-mode): the default.
    #[arg(long = "no-mntns-compat-mode", overrides_with = "mntns_compat_mode")]
    no_mntns_compat_mode: bool,
    /// Accepted as CRIU does: it matters only to a dump that detects external mounts
    /// itself (`--ext-mount-map auto`), which lets one be a slave of a mount outside.
    #[arg(long = "enable-external-masters")]
    enable_external_masters: bool,
    /// Accepted as CRIU does (see --enable-external-masters): lets an auto-detected
    /// external mount share with a mount outside.
    #[arg(long = "enable-external-sharing")]
    enable_external_sharing: bool,
    /// Let the tree run before its private anonymous memory is in: pages come on
    /// fault and in the background, served by criu-rs until every one is in (with -d,
    /// by a criu-rs process of its own, in the background). If that server dies
    /// first, the tree is killed.
    #[arg(long = "lazy-pages")]
    lazy_pages: bool,
    /// With --lazy-pages: no background copy, pages come only on fault (for tests).
    #[arg(long = "lazy-no-background", hide = true)]
    lazy_no_background: bool,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    progress: ProgressArgs,
    #[command(flatten)]
    compat: crate::compat::CompatArgs,
}

/// Set in the environment of the criu-rs process that restores lazily with -d and
/// serves the pages after its caller has returned.
const LAZY_DAEMON_ENV: &str = "CRIU_RS_LAZY_PAGES_SERVER";

/// The line the lazy pages server prints once the tree runs (not shown).
const LAZY_RUNNING: &str = "criu-rs: lazy pages: the tree runs";

pub fn run(args: RestoreArgs, signals: &Signals) -> Result<i32, String> {
    if args.lazy_pages && args.detached && std::env::var_os(LAZY_DAEMON_ENV).is_none() {
        return lazy_server_in_background();
    }
    let _log = args.log.install(args.dirs.work_dir(), "restore.log")?;
    // After the log is set up: callers (CRIU's test suite) read it after a failure.
    let mut cgroups = args
        .compat
        .cgroups()
        .inspect_err(|why| tracing::error!("{why}"))?;
    // As CRIU's, a relative --cgroup-yard is taken from the work directory.
    if let Some(yard) = cgroups.as_mut().and_then(|c| c.yard.as_mut()) {
        *yard = args.dirs.work_dir().join(&*yard);
    }
    let _ = args.sibling;
    if args.mntns_compat_mode {
        tracing::info!(
            "--mntns-compat-mode: criu-rs has one mount engine, which makes the same mounts"
        );
    }
    let _ = (
        args.no_mntns_compat_mode,
        args.enable_external_masters,
        args.enable_external_sharing,
    );
    if args.network_lock.is_some() {
        tracing::warn!("--network-lock is ignored on restore: the dump's method is used");
    }
    let start = Instant::now();
    tracing::info!(dir = %args.dirs.images_dir.display(), "restore starts");
    let mut join_ns = Vec::new();
    for spec in &args.join_ns {
        let (kind, path) = spec
            .split_once(':')
            .ok_or_else(|| format!("--join-ns {spec}: expected NS:PATH"))?;
        // CRIU also takes a pid: that task's namespace.
        let path = match path.parse::<u32>() {
            Ok(pid) => PathBuf::from(format!("/proc/{pid}/ns/{kind}")),
            Err(_) => PathBuf::from(path.split(',').next().unwrap_or(path)),
        };
        join_ns.push((kind.to_owned(), path));
    }
    let mut inherit_fds = Vec::new();
    for spec in &args.inherit_fd {
        let parsed = spec
            .strip_prefix("fd[")
            .and_then(|r| r.split_once("]:"))
            .and_then(|(n, key)| Some((n.parse::<i32>().ok()?, key)));
        let (fd, key) = parsed.ok_or_else(|| format!("--inherit-fd {spec}: expected fd[N]:KEY"))?;
        inherit_fds.push((key.to_owned(), fd));
    }
    let ext_mounts = ext_mount_paths(&args.external, &args.ext_mount_map)?;
    let cpu_cap = match &args.cpu_cap {
        Some(value) => CpuCap::parse(value).map_err(|e| format!("--cpu-cap: {e}"))?,
        None => CpuCap::default(),
    };
    let opts = RestoreOptions {
        cpu_cap,
        shell_job: args.shell_job,
        file_locks: args.compat.file_locks(),
        join_ns,
        root: args.root.clone(),
        inherit_fds,
        ext_mounts,
        tcp_established: args.compat.tcp_established,
        tcp_close: args.compat.tcp_close,
        interrupt: signals.interrupt(),
        cgroups,
        new_time_ns: !args.no_timens,
        ext_unix_sk: args.compat.ext_unix_sk(&[])?.allowed,
        lazy_pages: args.lazy_pages,
        lazy_background: !args.lazy_no_background,
        notify: args.compat.action_scripts(&args.dirs.images_dir, None),
        ..RestoreOptions::new(&args.dirs.images_dir)
    };
    // The lazy pages server of `-d --lazy-pages` runs in the background: no bar of its
    // own on the terminal its caller gives back.
    let in_background = std::env::var_os(LAZY_DAEMON_ENV).is_some();
    let bar = args.progress.show(
        &opts.progress,
        Shown::Restore,
        &args.log,
        args.shell_job || in_background,
    );
    let mut restored = restore::restore(&opts);
    drop(bar);
    let lazy = restored.as_mut().ok().and_then(|r| r.lazy.take());
    signals.finish(restored.is_ok());
    let restored = restored.map_err(|e| {
        tracing::error!("restore failed: {e}");
        format!(
            "restore from {} failed: {e}",
            args.dirs.images_dir.display()
        )
    })?;
    let took = start.elapsed();
    tracing::info!(pid = restored.pid.0, ?took, "restore finished");
    if let Some(path) = &args.pidfile {
        std::fs::write(path, format!("{}\n", restored.pid.0))
            .map_err(|e| format!("pidfile {}: {e}", path.display()))?;
    }
    if args.display_stats {
        let s = &restored.stats;
        println!("Displaying restore stats:");
        println!(
            "Pages restored: {} ({:#x})",
            s.pages_restored, s.pages_restored
        );
        println!("Forking time: {} us", s.forking_time);
        println!("Restore time: {} us", s.restore_time);
        println!("Total time: {} us", took.as_micros());
    }
    if args.detached {
        if let Some(lazy) = lazy {
            // The caller (our foreground half) returns on this line; we serve on.
            println!("{LAZY_RUNNING}");
            return lazy
                .wait()
                .map(|()| 0)
                .map_err(|e| format!("lazy pages: {e}"));
        }
        return Ok(0);
    }
    // Like CRIU without -d: wait for the restored root and hand on its exit status
    // (lazy pages are served meanwhile, and the rest once it is gone).
    let status = wait_for(restored.pid.0);
    if let Some(lazy) = lazy {
        lazy.wait().map_err(|e| format!("lazy pages: {e}"))?;
    }
    status
}

/// `restore -d --lazy-pages`: the restore runs in a criu-rs process of its own, in a
/// process group of its own, which goes on serving pages once the tree runs; this one
/// passes on what it prints and returns once the tree runs (or with its failure).
fn lazy_server_in_background() -> Result<i32, String> {
    use std::io::{BufRead, Write};
    use std::os::unix::process::CommandExt;
    let mut server = std::process::Command::new("/proc/self/exe")
        .args(std::env::args_os().skip(1))
        .env(LAZY_DAEMON_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting the lazy pages server: {e}"))?;
    let out = server
        .stdout
        .take()
        .ok_or("no pipe from the lazy pages server")?;
    for line in std::io::BufReader::new(out).lines() {
        let line = line.map_err(|e| format!("reading the lazy pages server: {e}"))?;
        if line == LAZY_RUNNING {
            return Ok(0);
        }
        println!("{line}");
    }
    let _ = std::io::stdout().flush();
    // It ended without the tree running: its failure, as it said it on stderr.
    let status = server
        .wait()
        .map_err(|e| format!("waiting for the lazy pages server: {e}"))?;
    Ok(status.code().unwrap_or(1))
}

fn wait_for(pid: i32) -> Result<i32, String> {
    use std::os::unix::process::ExitStatusExt;
    // wait_child retries on EINTR.
    let status = criu_core::sys::wait_child(criu_core::sys::Pid(pid))
        .map_err(|e| format!("waiting for {pid}: {e}"))?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 128,
    })
}

/// `(KEY, PATH)` of `--external mnt[KEY]:PATH` and `--ext-mount-map KEY:PATH`. Other
/// external resources name nothing the restore needs: they are only logged.
fn ext_mount_paths(external: &[String], map: &[String]) -> Result<Vec<(String, PathBuf)>, String> {
    let mut out = Vec::new();
    for spec in external {
        match spec.strip_prefix("mnt[").and_then(|r| r.split_once("]:")) {
            Some((key, path)) if !key.is_empty() && !path.is_empty() => {
                out.push((key.to_owned(), PathBuf::from(path)));
            }
            _ => tracing::info!("--external {spec}: nothing to map on restore"),
        }
    }
    for spec in map {
        let (key, path) = spec
            .split_once(':')
            .filter(|(k, p)| !k.is_empty() && !p.is_empty())
            .ok_or_else(|| format!("--ext-mount-map {spec}: expected KEY:PATH"))?;
        out.push((key.to_owned(), PathBuf::from(path)));
    }
    // A relative path is ours, from where we run; the mounts are made by the tree's
    // root, whose working directory is not ours.
    if out.iter().any(|(_, p)| p.is_relative()) {
        let cwd = std::env::current_dir().map_err(|e| format!("our working directory: {e}"))?;
        for (_, path) in &mut out {
            if path.is_relative() {
                *path = cwd.join(&*path);
            }
        }
    }
    Ok(out)
}
