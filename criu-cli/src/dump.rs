//! `criu-rs dump`: CRIU's dump options mapped onto `criu_core::dump::DumpOptions`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use criu_core::dump::{self, DumpOptions, DumpStats};
use criu_core::netlock::LockMethod;
use criu_core::sys::Pid;

use crate::logging::{DirArgs, LogArgs};
use crate::progress::{ProgressArgs, Shown};
use crate::signals::Signals;

#[derive(Clone, Copy, clap::ValueEnum)]
enum SnapshotMethodArg {
    Auto,
    Fork,
    WriteProtect,
}

impl From<SnapshotMethodArg> for criu_core::dump::protect::SnapshotMethod {
    fn from(m: SnapshotMethodArg) -> Self {
        match m {
            SnapshotMethodArg::Auto => Self::Auto,
            SnapshotMethodArg::Fork => Self::Fork,
            SnapshotMethodArg::WriteProtect => Self::WriteProtect,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReleaseMemoryArg {
    Auto,
    Always,
    Never,
}

impl From<ReleaseMemoryArg> for criu_core::dump::release::ReleaseMemory {
    fn from(m: ReleaseMemoryArg) -> Self {
        match m {
            ReleaseMemoryArg::Auto => Self::Auto,
            ReleaseMemoryArg::Always => Self::Always,
            ReleaseMemoryArg::Never => Self::Never,
        }
    }
}

#[derive(Args)]
pub struct DumpArgs {
    /// Root of the process tree to dump.
    #[arg(short = 't', long = "tree", value_name = "PID")]
    pid: i32,
    #[command(flatten)]
    dirs: DirArgs,
    /// Leave the tree running after the dump.
    #[arg(short = 'R', long = "leave-running")]
    leave_running: bool,
    /// With -R: copy all memory while the tree is frozen, instead of copying its
    /// private memory afterwards from a copy-on-write image made at the freeze.
    #[arg(long = "no-live-snapshot")]
    no_live_snapshot: bool,
    /// With -R: how private memory is saved after the tree runs again. `fork`: from a
    /// copy-on-write child made at the freeze (the fork's page-table copy is frozen
    /// time, ~20 ms per GiB); `write-protect`: write-protected before the freeze, each
    /// page copied before its first write (frozen time does not grow with memory; the
    /// dump fails if the program releases memory not copied yet); `auto`:
    /// write-protect for processes with 64 MiB or more of it in 512 VMAs or fewer,
    /// fork for the others, and fork again if write protection failed.
    #[arg(
        long = "snapshot-method",
        value_name = "METHOD",
        default_value = "auto"
    )]
    snapshot_method: SnapshotMethodArg,
    /// Without -R or -s (the tree is killed after the dump): whether its memory is
    /// given back to the machine as it is saved. `auto`: where the machine could not
    /// hold the memory twice, or once writing the images turns out slow (memory the
    /// host must back first); `always`; `never` (the tree keeps it until it is killed).
    /// A dump that fails writes released memory back.
    #[arg(long = "release-memory", value_name = "WHEN", default_value = "auto")]
    release_memory: ReleaseMemoryArg,
    /// Compress the pages files (zstd) once the tree is let go: `pages-N.zst.img`,
    /// criu-rs's own form (CRIU and crit cannot read it; `criu-rs restore` unpacks it).
    /// Not with --prev-images-dir or pre-dump.
    #[arg(long = "compress")]
    compress: bool,
    /// Leave the tree stopped after the dump.
    #[arg(short = 's', long = "leave-stopped")]
    leave_stopped: bool,
    /// The tree is a shell job: its terminal is inherited on restore.
    #[arg(short = 'j', long = "shell-job")]
    shell_job: bool,
    /// Freeze the tree with this cgroup's freezer before seizing it.
    #[arg(long = "freeze-cgroup", value_name = "PATH")]
    freeze_cgroup: Option<PathBuf>,
    /// `--external net[INODE]:KEY`: the tree's own network namespace is external
    /// (recreated by the caller on restore, not saved);
    /// `mnt[MOUNTPOINT]:KEY`: that mount of the tree's mount namespace is external
    /// (restored as a bind of what the restore maps KEY to); `mnt[]` (CRIU: detect
    /// external bind mounts) is refused;
    /// `unix[INODE]`: that unix socket's peer may be outside the tree (`--ext-unix-sk`).
    #[arg(long = "external", value_name = "RES")]
    external: Vec<String>,
    /// Accepted as CRIU does: the tree's root as the restore will see it. The dump reads
    /// mounts and paths from the tree itself.
    #[arg(long = "root", value_name = "DIR")]
    root: Option<PathBuf>,
    /// `MOUNTPOINT:KEY`, CRIU's older spelling of `--external mnt[MOUNTPOINT]:KEY`.
    #[arg(short = 'M', long = "ext-mount-map", value_name = "MOUNTPOINT:KEY")]
    ext_mount_map: Vec<String>,
    /// Print the dump statistics at the end.
    #[arg(long = "display-stats")]
    display_stats: bool,
    /// Refused, as by CRIU: the mount engine is chosen on restore.
    #[arg(long = "mntns-compat-mode", overrides_with = "no_mntns_compat_mode")]
    mntns_compat_mode: bool,
    /// Accepted as CRIU does (see `restore --mntns-compat-mode`).
    #[arg(long = "no-mntns-compat-mode", overrides_with = "mntns_compat_mode")]
    no_mntns_compat_mode: bool,
    /// Accepted (CRIU: an external mount it detects itself, with `--ext-mount-map
    /// auto`, may be a slave of a mount outside the tree). criu-rs takes only external
    /// mounts named with `--external mnt[MOUNTPOINT]:KEY` and refuses `auto` by name,
    /// so the flag changes nothing.
    #[arg(long = "enable-external-masters")]
    enable_external_masters: bool,
    /// Accepted (see --enable-external-masters: an auto-detected external mount may
    /// share with a mount outside).
    #[arg(long = "enable-external-sharing")]
    enable_external_sharing: bool,
    /// Accepted as CRIU does: a dump writes no pid file (restore does).
    #[arg(long = "pidfile", value_name = "FILE")]
    pidfile: Option<PathBuf>,
    /// How a pre-dump reads memory (`splice` or `read`): criu-rs's pre-dump copies it
    /// one way (process_vm_readv, with the tree running), so the mode is checked and
    /// otherwise ignored.
    #[arg(long = "pre-dump-mode", value_name = "MODE", value_parser = ["splice", "read"])]
    pre_dump_mode: Option<String>,
    /// How TCP connections are locked while dumped: `nftables` (default), `iptables`
    /// or `skip`.
    #[arg(long = "network-lock", value_name = "METHOD", default_value = "nftables",
          value_parser = ["nftables", "iptables", "skip"])]
    network_lock: String,
    /// Seconds any task may take to stop.
    #[arg(long = "timeout", value_name = "SECS", default_value_t = 10)]
    timeout: u64,
    /// The images of the previous pre-dump (relative to the images dir, as in CRIU),
    /// linked as `parent`.
    #[arg(long = "prev-images-dir", value_name = "DIR")]
    prev_images_dir: Option<PathBuf>,
    /// Save only the pages written since the pre-dump in --prev-images-dir; the rest
    /// refers to it (a full dump where that cannot be told).
    #[arg(long = "track-mem")]
    track_mem: bool,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    progress: ProgressArgs,
    #[command(flatten)]
    compat: crate::compat::CompatArgs,
}

/// `criu-rs pre-dump`: the tree's memory saved while it runs on (see
/// `criu_core::dump::predump`). It takes a dump's command line, as CRIU's does; what
/// only concerns the other images is accepted and has nothing to do here, and memory
/// is always tracked (`--track-mem`).
pub fn run_pre_dump(args: DumpArgs, signals: &Signals) -> Result<(), String> {
    if args.compress {
        return Err("--compress: pre-dump images are not compressed yet".to_owned());
    }
    let _log = args.log.install(args.dirs.work_dir(), "pre-dump.log")?;
    let opts = DumpOptions {
        work_dir: args.dirs.work_dir.clone(),
        freeze_timeout: Duration::from_secs(args.timeout),
        prev_images_dir: args.prev_images_dir.clone(),
        track_mem: true,
        interrupt: signals.interrupt(),
        notify: args
            .compat
            .action_scripts(&args.dirs.images_dir, Some(Pid(args.pid))),
        ..DumpOptions::new(Pid(args.pid), args.dirs.images_dir.clone())
    };
    let bar = args
        .progress
        .show(&opts.progress, Shown::PreDump, &args.log, args.shell_job);
    let result = dump::predump::pre_dump(&opts);
    drop(bar);
    signals.finish(result.is_ok());
    match result {
        Ok(report) => {
            tracing::info!(stats = ?report.stats, tracker = ?report.tracker, "pre-dump finished");
            if args.display_stats {
                print_stats(&report.stats);
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!("pre-dump failed: {e}");
            Err(format!("pre-dump of {} failed: {e}", args.pid))
        }
    }
}

pub fn run(args: DumpArgs, signals: &Signals) -> Result<(), String> {
    let _log = args.log.install(args.dirs.work_dir(), "dump.log")?;
    // After the log is set up: callers (CRIU's test suite) read it after a failure.
    let mut cgroups = args
        .compat
        .cgroups()
        .inspect_err(|why| tracing::error!("{why}"))?;
    // As CRIU's, a relative --cgroup-yard is taken from the work directory.
    if let Some(yard) = cgroups.as_mut().and_then(|c| c.yard.as_mut()) {
        *yard = args.dirs.work_dir().join(&*yard);
    }
    let _ = (&args.pidfile, &args.pre_dump_mode, &args.root);
    if args.mntns_compat_mode {
        return Err("--mntns-compat-mode is only valid on restore".to_owned());
    }
    let _ = (
        args.no_mntns_compat_mode,
        args.enable_external_masters,
        args.enable_external_sharing,
    );
    let opts = DumpOptions {
        work_dir: args.dirs.work_dir.clone(),
        leave_running: args.leave_running,
        live_snapshot: !args.no_live_snapshot,
        snapshot_method: args.snapshot_method.into(),
        release_memory: args.release_memory.into(),
        compress: args.compress,
        leave_stopped: args.leave_stopped,
        shell_job: args.shell_job,
        file_locks: args.compat.file_locks(),
        ghost_limit: args.compat.ghost_limit()?,
        link_remap: args.compat.link_remap(),
        freeze_cgroup: args.freeze_cgroup.clone(),
        freeze_timeout: Duration::from_secs(args.timeout),
        external_namespaces: args
            .external
            .iter()
            .filter(|e| !e.starts_with("unix[") && external_mount(e).is_none())
            .map(|e| external_kind(e))
            .collect::<Result<_, _>>()?,
        ext_mounts: ext_mounts(&args.external, &args.ext_mount_map)?,
        ext_unix_sk: args.compat.ext_unix_sk(&args.external)?,
        tcp_established: args.compat.tcp_established,
        tcp_close: args.compat.tcp_close,
        skip_in_flight: args.compat.skip_in_flight,
        // The parser allows the three names only.
        network_lock: LockMethod::parse(&args.network_lock).unwrap_or_default(),
        pause_after: test_pause_after()?,
        interrupt: signals.interrupt(),
        cgroups,
        prev_images_dir: args.prev_images_dir.clone(),
        track_mem: args.track_mem,
        notify: args
            .compat
            .action_scripts(&args.dirs.images_dir, Some(Pid(args.pid))),
        ..DumpOptions::new(Pid(args.pid), args.dirs.images_dir.clone())
    };
    // The run id names the network lock of the tree's TCP connections.
    tracing::info!(pid = args.pid, dir = %args.dirs.images_dir.display(), run_id = %opts.run_id, "dump starts");
    let bar = args
        .progress
        .show(&opts.progress, Shown::Dump, &args.log, args.shell_job);
    let result = dump::dump(&opts);
    drop(bar);
    signals.finish(result.is_ok());
    match result {
        Ok(stats) => {
            tracing::info!(?stats, "dump finished");
            if args.display_stats {
                print_stats(&stats);
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!("dump failed: {e}");
            Err(format!("dump of {} failed: {e}", args.pid))
        }
    }
}

fn print_stats(s: &DumpStats) {
    println!("Displaying dump stats:");
    println!("Freezing time: {} us", s.freezing_time);
    println!("Frozen time: {} us", s.frozen_time);
    println!("Memory dump time: {} us", s.memdump_time);
    println!("Memory write time: {} us", s.memwrite_time);
    println!(
        "Memory pages scanned: {} ({:#x})",
        s.pages_scanned, s.pages_scanned
    );
    println!(
        "Memory pages skipped from parent: {} ({:#x})",
        s.pages_skipped_parent, s.pages_skipped_parent
    );
    println!(
        "Memory pages written: {} ({:#x})",
        s.pages_written, s.pages_written
    );
}

/// `(MOUNTPOINT, KEY)` of CRIU's `--external mnt[MOUNTPOINT]:KEY` (a mount point
/// given: an external mount, not the whole namespace).
fn external_mount(spec: &str) -> Option<(String, String)> {
    let (mountpoint, key) = spec.strip_prefix("mnt[")?.split_once("]:")?;
    (!mountpoint.is_empty() && !key.is_empty()).then(|| (mountpoint.to_owned(), key.to_owned()))
}

/// The external mounts of `--external mnt[MOUNTPOINT]:KEY` and `--ext-mount-map
/// MOUNTPOINT:KEY`.
fn ext_mounts(external: &[String], map: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> =
        external.iter().filter_map(|e| external_mount(e)).collect();
    for spec in map {
        if spec == "auto" || spec.starts_with("auto:") {
            return Err(format!(
                "--ext-mount-map {spec}: external mounts are not detected by criu-rs; name \
                 each with --external mnt[MOUNTPOINT]:KEY"
            ));
        }
        let (mountpoint, key) = spec
            .split_once(':')
            .filter(|(m, k)| !m.is_empty() && !k.is_empty())
            .ok_or_else(|| format!("--ext-mount-map {spec}: expected MOUNTPOINT:KEY"))?;
        out.push((mountpoint.to_owned(), key.to_owned()));
    }
    Ok(out)
}

/// The namespace kind of a CRIU `--external` resource (`net[...]`, `mnt[...]`).
fn external_kind(spec: &str) -> Result<String, String> {
    let kind = spec.split('[').next().unwrap_or("");
    match kind {
        "net" => Ok(kind.to_owned()),
        // CRIU's `mnt[]{:FLAGS}` detects external bind mounts itself; taken as "the
        // mount namespace is not saved", it let a dump kill a tree no restore could
        // bring back.
        "mnt" => Err(format!(
            "--external {spec}: criu-rs does not detect external mounts itself (CRIU's \
             `mnt[]`); name each with --external mnt[MOUNTPOINT]:KEY"
        )),
        _ => Err(format!(
            "--external {spec}: only net[...] namespaces, mnt[MOUNTPOINT]:KEY mounts and \
             unix[...] sockets are supported"
        )),
    }
}

/// `CRIU_RS_TEST_PAUSE_AFTER=STAGE` (tests only): the dump waits after that stage until
/// it is interrupted, so a test can stop or kill it at a known moment.
fn test_pause_after() -> Result<Option<dump::Stage>, String> {
    use dump::Stage;
    let Ok(name) = std::env::var("CRIU_RS_TEST_PAUSE_AFTER") else {
        return Ok(None);
    };
    let stages = [
        Stage::Check,
        Stage::Freeze,
        Stage::Files,
        Stage::Memory,
        Stage::Injected,
        Stage::Tasks,
        Stage::Pages,
        Stage::Images,
    ];
    stages
        .into_iter()
        .find(|s| format!("{s:?}").eq_ignore_ascii_case(&name))
        .map(Some)
        .ok_or_else(|| format!("CRIU_RS_TEST_PAUSE_AFTER={name}: no such stage"))
}
