//! `criu-rs bench`: dump and restore speed on built-in workloads, side by side with CRIU.
//!
//! Each round starts a fresh workload (`_bench-workload`: N MiB of private memory filled
//! with a pattern, spread over processes and threads, optionally with a writer thread
//! that keeps rewriting it), dumps it with each tool and mode, kills what is left and
//! restores it detached. Tools alternate within a round, so a machine that gets busier
//! during the run weighs on both alike: compare ratios, not absolute times.
//!
//! Each measured command runs under `_rusage`, a wrapper whose only child is the command,
//! so its peak RSS and CPU time are the command's alone. Frozen time comes from the
//! `stats-dump` image both tools write; time-to-running is the wall time of `restore
//! -d`, which returns once the tree runs. The floor the dump is measured against is the
//! time this machine takes to fill one tmpfs file of the same size with all cores.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use criu_core::images::{pb, ImageReader};
use serde_json::{json, Value};

#[derive(Args)]
pub struct BenchArgs {
    /// MiB of private memory the workload holds (spread over its processes); several
    /// sizes (`256,1024,4096`) measure each and draw scale curves.
    #[arg(long, value_delimiter = ',', default_value = "256")]
    mib: Vec<u64>,
    /// Threads in each workload process.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Processes in the workload tree.
    #[arg(long, default_value_t = 1)]
    procs: u32,
    /// Keep one thread rewriting the workload's memory while it is dumped.
    #[arg(long)]
    writer: bool,
    /// Separate mappings the memory of each workload process is split into.
    #[arg(long, default_value_t = 1)]
    vmas: u32,
    /// Back the workload's memory with transparent huge pages (MADV_HUGEPAGE): 512
    /// times fewer page-table entries to copy, scan and write-protect.
    #[arg(long)]
    thp: bool,
    /// Fill the workload's memory with random bytes (incompressible) instead of a
    /// repeated byte per page.
    #[arg(long)]
    random: bool,
    /// Rounds per tool and mode (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Modes to measure: `dump` (the dump kills the tree), `snapshot` (`-R`, the tree
    /// runs on; criu-rs's default snapshot method), `snapshot-fork` (`-R
    /// --snapshot-method fork`, criu-rs only), `lazy` (a dump restored with
    /// `--lazy-pages`: the tree runs before its memory is in; criu-rs only, CRIU's needs
    /// its lazy-pages daemon), `incremental` (two `pre-dump`s, then `dump
    /// --prev-images-dir --track-mem`, each step's time, frozen time and pages written;
    /// criu-rs only: CRIU 4.2 cannot pre-dump without soft-dirty bits), `compress`
    /// (`dump --compress`, restored from the compressed pages; the images' size is
    /// printed under the table; criu-rs only: CRIU 4.2 has no compression).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "dump,snapshot,lazy",
        value_parser = ["dump", "snapshot", "snapshot-fork", "lazy", "incremental", "compress"]
    )]
    modes: Vec<String>,
    /// CRIU's binary, measured in the same rounds when given.
    #[arg(long, value_name = "PATH")]
    criu: Option<PathBuf>,
    /// Where images go (a tmpfs is fairest; default: a fresh directory in /dev/shm).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Write every measurement and the medians as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw the medians as a PNG figure in FILE.
    #[arg(long, value_name = "FILE")]
    png: Option<PathBuf>,
}

/// The workload: hidden subcommand `_bench-workload`.
#[derive(Args)]
pub struct WorkloadArgs {
    #[arg(long)]
    mib: u64,
    #[arg(long)]
    threads: u32,
    #[arg(long)]
    procs: u32,
    #[arg(long)]
    writer: bool,
    #[arg(long, default_value_t = 1)]
    vmas: u32,
    #[arg(long)]
    thp: bool,
    #[arg(long)]
    random: bool,
    /// A file written once the memory is filled (and every child's is).
    #[arg(long)]
    ready: PathBuf,
    /// A child of the workload's root (stays in its session).
    #[arg(long)]
    child: bool,
}

/// `_rusage CMD...`: runs CMD and prints its exit code, peak RSS and CPU time as JSON.
#[derive(Args)]
pub struct RusageArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

const PAGE: usize = 4096;

pub fn workload(args: WorkloadArgs) -> Result<i32, String> {
    if !args.child {
        // A session of its own: both tools dump a session leader without --shell-job.
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let share = args.mib / u64::from(args.procs.max(1));
    let mut children = Vec::new();
    for i in 1..args.procs {
        let ready = args.ready.with_extension(format!("child{i}"));
        let child = Command::new(&exe)
            .arg("_bench-workload")
            .args(["--mib", &share.to_string()])
            .args(["--threads", &args.threads.to_string()])
            .args(["--vmas", &args.vmas.to_string()])
            .args(["--procs", "1", "--child", "--ready"])
            .arg(&ready)
            .args(args.writer.then_some("--writer"))
            .args(args.thp.then_some("--thp"))
            .args(args.random.then_some("--random"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting a workload child: {e}"))?;
        children.push((child, ready));
    }
    let len = (share as usize * 1024 * 1024).max(PAGE);
    let count = (args.vmas.max(1) as usize).min(len / PAGE);
    let mut regions = Vec::with_capacity(count);
    for r in 0..count {
        let size = (len / count / PAGE).max(1) * PAGE;
        let region = memmap2::MmapMut::map_anon(size).map_err(|e| format!("mmap: {e}"))?;
        // Neighbours with other flags: the kernel cannot merge them into one mapping.
        let advice = match (r % 2, args.thp) {
            (1, _) => Some(memmap2::Advice::NoHugePage),
            (_, true) => Some(memmap2::Advice::HugePage),
            _ => None,
        };
        if let Some(advice) = advice {
            region.advise(advice).map_err(|e| format!("madvise: {e}"))?;
        }
        regions.push(region);
    }
    let mut i = 0usize;
    // xorshift64: fast, and nothing a compressor can shrink.
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    for region in &mut regions {
        for page in region.chunks_mut(PAGE) {
            if args.random {
                for word in page.chunks_exact_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    word.copy_from_slice(&x.to_ne_bytes());
                }
            } else {
                page.fill((i % 251) as u8 + 1);
            }
            i += 1;
        }
    }
    for _ in 1..args.threads {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(1));
        });
    }
    for (_, ready) in &children {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready.exists() {
            if Instant::now() > deadline {
                return Err("a workload child never got ready".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Written aside and renamed into place: the file exists only once it is whole and
    // closed. (A parent that saw a child's file exist while the child still wrote it
    // went on, and a dump then caught the child with the file open and empty; the
    // restore refused it as changed since.)
    let partial = PathBuf::from(format!("{}.partial", args.ready.display()));
    std::fs::write(&partial, b"ready").map_err(|e| e.to_string())?;
    std::fs::rename(&partial, &args.ready).map_err(|e| e.to_string())?;
    if args.writer {
        // Rewrites one word of every page, round after round, as fast as it can, and
        // notes each stretch of more than STALL in which it wrote nothing (frozen, or
        // waiting on its memory) in the stalls file: `START_NS END_NS` (CLOCK_MONOTONIC).
        // Opened for each note only: a file held open would differ from its image.
        let stalls = args.ready.with_extension("stalls");
        let _ = std::fs::remove_file(&stalls);
        let note = |line: String| {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&stalls);
            if let Ok(mut file) = file {
                let _ = file.write_all(line.as_bytes());
            }
        };
        let mut round: u64 = 0;
        let mut last = monotonic_ns();
        loop {
            round = round.wrapping_add(1);
            for region in &mut regions {
                for (i, page) in region.chunks_mut(PAGE).enumerate() {
                    page[..8].copy_from_slice(&round.to_ne_bytes());
                    if i % 16 == 0 {
                        let now = monotonic_ns();
                        if now - last > STALL_NS {
                            note(format!("{last} {now}\n"));
                        }
                        last = now;
                    }
                }
            }
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The shortest stretch without a write the workload's writer notes as a stall.
const STALL_NS: u64 = 1_000_000;

fn monotonic_ns() -> u64 {
    let t = criu_core::sys::clock_gettime(libc::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.0 as u64 * 1_000_000_000 + t.1 as u64
}

/// The longest stall the writer of the workload whose ready file is `ready` noted that
/// overlaps `[from, to]` (ns, CLOCK_MONOTONIC), in seconds; NaN without a writer.
fn longest_stall(ready: &Path, from: u64, to: u64) -> f64 {
    let Ok(text) = std::fs::read_to_string(ready.with_extension("stalls")) else {
        return f64::NAN;
    };
    text.lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?))
        })
        .filter(|&(a, b)| b >= from && a <= to)
        .map(|(a, b)| (b - a) as f64 / 1e9)
        .fold(0.0, f64::max)
}

pub fn rusage(args: RusageArgs) -> Result<i32, String> {
    use nix::sys::resource::{getrusage, UsageWho};
    let (program, rest) = args.command.split_first().ok_or("no command")?;
    let status = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("running {program}: {e}"))?;
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).map_err(|e| e.to_string())?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let out = json!({
        "code": status.code().unwrap_or(-1),
        "maxrss_kib": usage.max_rss(),
        "cpu_s": secs(usage.user_time()) + secs(usage.system_time()),
    });
    println!("{out}");
    Ok(0)
}

/// One tool under measurement.
struct Tool {
    name: &'static str,
    bin: PathBuf,
}

/// A measured command: wall time and what `_rusage` said.
struct Measured {
    wall: Duration,
    maxrss_kib: i64,
    cpu_s: f64,
}

fn measure(cmd: &[&std::ffi::OsStr], stderr_to: &Path) -> Result<Measured, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let log = std::fs::File::create(stderr_to).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let out = Command::new(exe)
        .arg("_rusage")
        .args(cmd)
        .stdin(Stdio::null())
        .stderr(log)
        .output()
        .map_err(|e| e.to_string())?;
    let wall = started.elapsed();
    let said: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("the measuring wrapper said nothing readable: {e}"))?;
    if said["code"].as_i64() != Some(0) {
        let log = std::fs::read_to_string(stderr_to).unwrap_or_default();
        let what: Vec<String> = cmd.iter().map(|a| a.to_string_lossy().into()).collect();
        return Err(format!(
            "{} failed: {}",
            what.join(" "),
            log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        ));
    }
    Ok(Measured {
        wall,
        maxrss_kib: said["maxrss_kib"].as_i64().unwrap_or(0),
        cpu_s: said["cpu_s"].as_f64().unwrap_or(0.0),
    })
}

/// A started workload: its root's pid (also its process group's).
struct Workload {
    pid: i32,
    /// Every process of the tree (the restore needs all their pids free again).
    pids: Vec<i32>,
    child: Option<std::process::Child>,
    /// Its ready file (the stalls file sits beside it).
    ready: PathBuf,
}

/// `pid` and its descendants.
fn tree_pids(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        let tasks = std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten();
        for t in tasks.flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            all.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
        i += 1;
    }
    all
}

impl Workload {
    fn start(args: &BenchArgs, mib: u64, dir: &Path) -> Result<Workload, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let ready = dir.join("workload.ready");
        let _ = std::fs::remove_file(&ready);
        let child = Command::new(exe)
            .arg("_bench-workload")
            .args(["--mib", &mib.to_string()])
            .args(["--threads", &args.threads.to_string()])
            .args(["--vmas", &args.vmas.to_string()])
            .args(["--procs", &args.procs.to_string(), "--ready"])
            .arg(&ready)
            .args(args.writer.then_some("--writer"))
            .args(args.thp.then_some("--thp"))
            .args(args.random.then_some("--random"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the workload: {e}"))?;
        let mut w = Workload {
            pid: child.id() as i32,
            pids: Vec::new(),
            child: Some(child),
            ready: ready.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready.exists() {
            if Instant::now() > deadline {
                w.kill();
                return Err("the workload did not get ready in 120 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        w.pids = tree_pids(w.pid);
        Ok(w)
    }

    /// Kills the whole group and reaps what is ours to reap (the first root is our
    /// child; a restored one is handed to us as the subreaper).
    fn kill(&mut self) {
        use nix::sys::signal::{killpg, SIGKILL};
        use nix::unistd::Pid;
        let _ = killpg(Pid::from_raw(self.pid), SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match nix::sys::wait::waitpid(
                Pid::from_raw(-1),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            ) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                    let gone = |p: &i32| !Path::new(&format!("/proc/{p}")).exists();
                    if gone(&self.pid) && self.pids.iter().all(gone) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One round of one tool and mode.
#[derive(Clone)]
struct Sample {
    tool: &'static str,
    mode: String,
    mib: u64,
    dump_s: f64,
    frozen_s: f64,
    /// The longest stretch the workload's writer wrote nothing during the dump (a
    /// dump that leaves the tree running; NaN otherwise).
    stall_s: f64,
    restore_s: f64,
    dump_maxrss_mib: f64,
    dump_cpu_s: f64,
    restore_maxrss_mib: f64,
    /// The steps of an incremental dump (the pre-dumps, then the dump).
    steps: Vec<Step>,
}

/// One step of an incremental dump: wall time, frozen time, MiB of pages written.
#[derive(Clone)]
struct Step {
    name: String,
    wall_s: f64,
    frozen_s: f64,
    pages_mib: f64,
}

/// MiB of the pages files in `dir` (not its parents').
fn pages_mib(dir: &Path) -> f64 {
    let bytes: u64 = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    bytes as f64 / (1 << 20) as f64
}

fn frozen_seconds(dir: &Path) -> f64 {
    let entry = ImageReader::open(dir.join("stats-dump"))
        .ok()
        .and_then(|mut r| r.next_entry::<pb::StatsEntry>().ok().flatten());
    entry
        .and_then(|e| e.dump)
        .map(|d| f64::from(d.frozen_time) / 1e6)
        .unwrap_or(f64::NAN)
}

fn one_round(
    args: &BenchArgs,
    mib: u64,
    tool: &Tool,
    mode: &str,
    dir: &Path,
) -> Result<Sample, String> {
    let images = dir.join(format!("{}-{mode}", tool.name));
    let _ = std::fs::remove_dir_all(&images);
    std::fs::create_dir_all(&images).map_err(|e| e.to_string())?;
    let mut workload = Workload::start(args, mib, dir)?;
    let pid = workload.pid.to_string();
    let bin = tool.bin.as_os_str();
    let mut dump: Vec<&std::ffi::OsStr> = vec![
        bin,
        "dump".as_ref(),
        "-t".as_ref(),
        pid.as_ref(),
        "-D".as_ref(),
        images.as_os_str(),
    ];
    if mode.starts_with("snapshot") {
        dump.push("-R".as_ref());
    }
    if mode == "snapshot-fork" {
        dump.push("--snapshot-method".as_ref());
        dump.push("fork".as_ref());
    }
    if mode == "compress" {
        dump.push("--compress".as_ref());
    }
    let mut steps = Vec::new();
    if mode == "incremental" {
        for k in 1..=2 {
            let step = images.join(format!("pre{k}"));
            std::fs::create_dir_all(&step).map_err(|e| e.to_string())?;
            let prev = format!("../pre{}", k - 1);
            let mut pre: Vec<&std::ffi::OsStr> = vec![
                bin,
                "pre-dump".as_ref(),
                "-t".as_ref(),
                pid.as_ref(),
                "-D".as_ref(),
                step.as_os_str(),
                "--no-progress".as_ref(),
            ];
            if k > 1 {
                pre.extend(
                    ["--prev-images-dir", prev.as_str(), "--track-mem"].map(std::ffi::OsStr::new),
                );
            }
            let m = measure(&pre, &step.join("bench-pre-dump.err"))?;
            steps.push(Step {
                name: format!("pre-dump {k}"),
                wall_s: m.wall.as_secs_f64(),
                frozen_s: frozen_seconds(&step),
                pages_mib: pages_mib(&step),
            });
        }
        dump.extend(["--prev-images-dir", "pre2", "--track-mem"].map(std::ffi::OsStr::new));
    }
    // Its stderr is a file, so no bar would show; said anyway (CRIU has no such flag).
    if tool.name == "criu-rs" {
        dump.push("--no-progress".as_ref());
    }
    let dump_from = monotonic_ns();
    let dumped = measure(&dump, &images.join("bench-dump.err"))?;
    let frozen_s = frozen_seconds(&images);
    // The dump's own line under the table, where what it wrote is the point.
    let step_name = match mode {
        "incremental" => Some("dump"),
        "compress" => Some("dump --compress"),
        _ => None,
    };
    if let Some(name) = step_name {
        steps.push(Step {
            name: name.into(),
            wall_s: dumped.wall.as_secs_f64(),
            frozen_s,
            pages_mib: pages_mib(&images),
        });
    }
    let stall_s = if mode.starts_with("snapshot") {
        // What the writer wrote meanwhile is in the file only once it writes again.
        std::thread::sleep(Duration::from_millis(50));
        longest_stall(&workload.ready, dump_from, monotonic_ns())
    } else {
        f64::NAN
    };
    // Whatever is left of the tree goes before the restore takes its pids again.
    workload.kill();
    let mut restore: Vec<&std::ffi::OsStr> = vec![
        bin,
        "restore".as_ref(),
        "-d".as_ref(),
        "-D".as_ref(),
        images.as_os_str(),
    ];
    if mode == "lazy" {
        restore.push("--lazy-pages".as_ref());
    }
    if tool.name == "criu-rs" {
        restore.push("--no-progress".as_ref());
    }
    let restored = measure(&restore, &images.join("bench-restore.err"))?;
    let alive = Path::new(&format!("/proc/{}", workload.pid)).exists();
    workload.kill();
    if !alive {
        return Err(format!(
            "{}: the restored workload is not running",
            tool.name
        ));
    }
    let _ = std::fs::remove_dir_all(&images);
    Ok(Sample {
        tool: tool.name,
        mode: mode.to_owned(),
        mib,
        dump_s: dumped.wall.as_secs_f64(),
        frozen_s,
        stall_s,
        steps,
        restore_s: restored.wall.as_secs_f64(),
        dump_maxrss_mib: dumped.maxrss_kib as f64 / 1024.0,
        dump_cpu_s: dumped.cpu_s,
        restore_maxrss_mib: restored.maxrss_kib as f64 / 1024.0,
    })
}

/// The floor under the conditions a dump round has: a fresh workload holding `mib` MiB
/// (so the machine has as much memory free, in the same state), then one tmpfs file of
/// the same size filled with every core. Measured once at the start of a round instead,
/// the fill took the pages the previous round had just freed (still backed by the host)
/// and left the dump after it the colder rest: 1.35-1.42x where a fill measured beside
/// the dump gives 1.0-1.15x.
fn floor_round(args: &BenchArgs, mib: u64, dir: &Path) -> Result<f64, String> {
    let _workload = Workload::start(args, mib, dir)?;
    fill_floor(mib, dir)
}

/// Seconds this machine takes to write `mib` MiB into one tmpfs file with every core.
fn fill_floor(mib: u64, dir: &Path) -> Result<f64, String> {
    let path = dir.join("fill-floor");
    let file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let chunk = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    std::thread::scope(|s| {
        for c in 0..cores {
            let (file, chunk) = (&file, &chunk);
            s.spawn(move || {
                let mut m = c;
                while m < mib {
                    let _ = file.write_all_at(chunk, m << 20);
                    m += cores;
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(secs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The medians of one tool and mode.
struct Summary {
    tool: &'static str,
    mode: String,
    mib: u64,
    dump_s: f64,
    frozen_s: f64,
    stall_s: f64,
    restore_s: f64,
    dump_maxrss_mib: f64,
    dump_cpu_s: f64,
    /// Medians of each step of an incremental dump.
    steps: Vec<Step>,
}

fn summarize(samples: &[Sample]) -> Vec<Summary> {
    let mut keys: Vec<(&'static str, String, u64)> = Vec::new();
    for s in samples {
        if !keys
            .iter()
            .any(|(t, m, mib)| *t == s.tool && *m == s.mode && *mib == s.mib)
        {
            keys.push((s.tool, s.mode.clone(), s.mib));
        }
    }
    keys.into_iter()
        .map(|(tool, mode, mib)| {
            let of = |f: fn(&Sample) -> f64| {
                median(
                    samples
                        .iter()
                        .filter(|s| s.tool == tool && s.mode == mode && s.mib == mib)
                        .map(f)
                        .collect(),
                )
            };
            Summary {
                tool,
                mib,
                dump_s: of(|s| s.dump_s),
                frozen_s: of(|s| s.frozen_s),
                stall_s: of(|s| s.stall_s),
                steps: {
                    let runs: Vec<&Sample> = samples
                        .iter()
                        .filter(|s| s.tool == tool && s.mode == mode && s.mib == mib)
                        .collect();
                    let names: Vec<String> = runs
                        .first()
                        .map(|r| r.steps.iter().map(|st| st.name.clone()).collect())
                        .unwrap_or_default();
                    names
                        .into_iter()
                        .enumerate()
                        .map(|(k, name)| {
                            let of_step = |f: fn(&Step) -> f64| {
                                median(runs.iter().filter_map(|r| r.steps.get(k)).map(f).collect())
                            };
                            Step {
                                name,
                                wall_s: of_step(|st| st.wall_s),
                                frozen_s: of_step(|st| st.frozen_s),
                                pages_mib: of_step(|st| st.pages_mib),
                            }
                        })
                        .collect()
                },
                restore_s: of(|s| s.restore_s),
                dump_maxrss_mib: of(|s| s.dump_maxrss_mib),
                dump_cpu_s: of(|s| s.dump_cpu_s),
                mode: mode.clone(),
            }
        })
        .collect()
}

pub fn run(args: BenchArgs) -> Result<i32, String> {
    // Restored trees are handed to us when their restorer exits, so we can end them.
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("subreaper: {e}"))?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/dev/shm/criu-rs-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = bench_in(&args, &dir);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn bench_in(args: &BenchArgs, dir: &Path) -> Result<i32, String> {
    let mut tools = vec![Tool {
        name: "criu-rs",
        bin: std::env::current_exe().map_err(|e| e.to_string())?,
    }];
    if let Some(criu) = &args.criu {
        tools.push(Tool {
            name: "criu",
            bin: criu.clone(),
        });
    }
    let sizes: Vec<String> = args.mib.iter().map(u64::to_string).collect();
    eprintln!(
        "workload: {} MiB, {} process(es) x {} thread(s){}; {} round(s); images in {}",
        sizes.join(", "),
        args.procs,
        args.threads,
        if args.writer { ", with a writer" } else { "" },
        args.rounds,
        dir.display()
    );
    let mut samples = Vec::new();
    let mut floors: Vec<(u64, Vec<f64>)> = args.mib.iter().map(|&m| (m, Vec::new())).collect();
    for round in 0..args.rounds {
        for (mib, floor) in &mut floors {
            let mib = *mib;
            floor.push(floor_round(args, mib, dir)?);
            for mode in &args.modes {
                // Alternate which tool goes first, so neither always gets the quieter slot.
                let order: Vec<&Tool> = if round % 2 == 0 {
                    tools.iter().collect()
                } else {
                    tools.iter().rev().collect()
                };
                for tool in order {
                    let ours_only = ["lazy", "snapshot-fork", "incremental", "compress"];
                    if ours_only.contains(&mode.as_str()) && tool.name != "criu-rs" {
                        continue;
                    }
                    let s = one_round(args, mib, tool, mode, dir)?;
                    eprintln!(
                    "round {}: {mib} MiB {:8} {:13} dump {:7.1} ms  frozen {:7.1} ms  restore {:7.1} ms",
                    round + 1,
                    s.tool,
                    s.mode,
                    s.dump_s * 1e3,
                    s.frozen_s * 1e3,
                    s.restore_s * 1e3
                );
                    samples.push(s);
                }
            }
        }
    }
    let summary = summarize(&samples);
    for (mib, floor) in &floors {
        let of_size: Vec<&Summary> = summary.iter().filter(|s| s.mib == *mib).collect();
        print_table(*mib, &of_size, median(floor.clone()));
    }
    if let Some(path) = &args.json {
        write_json(path, args, &samples, &summary, &floors)?;
    }
    if let Some(path) = &args.png {
        if let [(mib, floor)] = floors.as_slice() {
            let of_size: Vec<&Summary> = summary.iter().filter(|s| s.mib == *mib).collect();
            draw_png(path, args, *mib, &of_size, median(floor.clone()))?;
        } else {
            draw_scale_png(path, args, &summary, &floors)?;
        }
    }
    Ok(0)
}

fn print_table(mib: u64, summary: &[&Summary], floor: f64) {
    let gb = mib as f64 / 1024.0;
    let criu = |mode: &str| summary.iter().find(|s| s.tool == "criu" && s.mode == mode);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:8} {:13} {:>10} {:>10} {:>10} {:>11} {:>7} {:>9} {:>9} {:>13} {:>13}",
        "tool",
        "mode",
        "dump ms",
        "frozen ms",
        "stall ms",
        "restore ms",
        "GB/s",
        "peak MiB",
        "CPU-s/GB",
        "dump speedup",
        "rst speedup"
    );
    for s in summary {
        let ratio = |ours: f64, theirs: Option<f64>| match theirs {
            Some(t) if s.tool != "criu" && ours > 0.0 => format!("{:.2}x", t / ours),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:8} {:13} {:>10.1} {:>10.1} {:>10.1} {:>11.1} {:>7.2} {:>9.1} {:>9.2} {:>13} {:>13}",
            s.tool,
            s.mode,
            s.dump_s * 1e3,
            s.frozen_s * 1e3,
            s.stall_s * 1e3,
            s.restore_s * 1e3,
            gb / s.dump_s,
            s.dump_maxrss_mib,
            s.dump_cpu_s / gb.max(f64::MIN_POSITIVE),
            ratio(s.dump_s, criu(&s.mode).map(|c| c.dump_s)),
            ratio(s.restore_s, criu(&s.mode).map(|c| c.restore_s)),
        );
    }
    for s in summary.iter().filter(|s| !s.steps.is_empty()) {
        let steps: Vec<String> = s
            .steps
            .iter()
            .map(|st| {
                format!(
                    "{} {:.1} ms (frozen {:.1} ms, {:.1} MiB)",
                    st.name,
                    st.wall_s * 1e3,
                    st.frozen_s * 1e3,
                    st.pages_mib
                )
            })
            .collect();
        let _ = writeln!(out, "{} {}: {}", s.tool, s.mode, steps.join("; "));
    }
    if let Some(ours) = summary
        .iter()
        .find(|s| s.tool == "criu-rs" && s.mode == "dump")
    {
        let _ = writeln!(
            out,
            "tmpfs fill floor ({} MiB, all cores): {:.1} ms; criu-rs dump is {:.2}x of it",
            mib,
            floor * 1e3,
            ours.dump_s / floor
        );
    }
}

fn steps_json(steps: &[Step]) -> Value {
    steps
        .iter()
        .map(|st| {
            json!({"step": st.name, "wall_s": st.wall_s, "frozen_s": st.frozen_s,
                   "pages_mib": st.pages_mib})
        })
        .collect()
}

/// JSON has no NaN: a value not measured is null.
fn nan_null(v: f64) -> Value {
    if v.is_nan() {
        Value::Null
    } else {
        json!(v)
    }
}

fn write_json(
    path: &Path,
    args: &BenchArgs,
    samples: &[Sample],
    summary: &[Summary],
    floors: &[(u64, Vec<f64>)],
) -> Result<(), String> {
    let sample = |s: &Sample| {
        json!({
            "tool": s.tool, "mode": s.mode, "mib": s.mib, "dump_s": s.dump_s,
            "frozen_s": s.frozen_s, "stall_s": nan_null(s.stall_s), "restore_s": s.restore_s,
            "dump_maxrss_mib": s.dump_maxrss_mib, "dump_cpu_s": s.dump_cpu_s,
            "restore_maxrss_mib": s.restore_maxrss_mib, "steps": steps_json(&s.steps),
        })
    };
    let medians: Vec<Value> = summary
        .iter()
        .map(|s| {
            json!({
                "tool": s.tool, "mode": s.mode, "mib": s.mib, "dump_s": s.dump_s,
                "frozen_s": s.frozen_s, "stall_s": nan_null(s.stall_s), "restore_s": s.restore_s,
                "dump_maxrss_mib": s.dump_maxrss_mib, "dump_cpu_s": s.dump_cpu_s,
                "steps": steps_json(&s.steps),
            })
        })
        .collect();
    let doc = json!({
        "workload": {"mib": args.mib, "procs": args.procs, "threads": args.threads,
                     "vmas": args.vmas, "writer": args.writer, "thp": args.thp,
                     "random": args.random},
        "rounds": args.rounds,
        "tmpfs_fill_floor_s": floors
            .iter()
            .map(|(mib, f)| json!({"mib": mib, "seconds": f}))
            .collect::<Vec<_>>(),
        "samples": samples.iter().map(sample).collect::<Vec<_>>(),
        "medians": medians,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What each panel of a figure shows.
type Metric = (&'static str, fn(&Summary) -> f64);
const METRICS: [Metric; 3] = [
    ("dump wall (ms)", |s| s.dump_s * 1e3),
    ("frozen (ms)", |s| s.frozen_s * 1e3),
    ("restore to running (ms)", |s| s.restore_s * 1e3),
];
/// One colour per tool and mode (bars or lines), in order.
const COLORS: [plotters::style::RGBColor; 8] = [
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(44, 160, 44),
    plotters::style::RGBColor(214, 39, 40),
    plotters::style::RGBColor(148, 103, 189),
    plotters::style::RGBColor(140, 86, 75),
    plotters::style::RGBColor(227, 119, 194),
    plotters::style::RGBColor(23, 190, 207),
];

type Panel<'a> =
    plotters::drawing::DrawingArea<plotters::backend::BitMapBackend<'a>, plotters::coord::Shift>;

/// A panel's chart: milliseconds against bar index or MiB.
type Chart<'a, 'b> = plotters::chart::ChartContext<
    'a,
    plotters::backend::BitMapBackend<'b>,
    plotters::coord::cartesian::Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::types::RangedCoordf64,
    >,
>;

/// The legend box of a panel (which bar or line is which), at `position`.
fn draw_legend<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    position: plotters::chart::SeriesLabelPosition,
    font_size: u32,
) -> Result<(), String> {
    use plotters::style::{Color, BLACK, WHITE};
    chart
        .configure_series_labels()
        .position(position)
        .label_font(("sans-serif", font_size))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| format!("drawing a legend: {e}"))
}

/// A white 1200x520 figure at `path` titled after the workload (`what`: its size, or
/// "scale"), split into three panels, one per metric; the font registered first.
fn figure<'a>(
    path: &'a Path,
    what: &str,
    args: &BenchArgs,
) -> Result<(Panel<'a>, Vec<Panel<'a>>), String> {
    use plotters::prelude::*;
    register_font()?;
    let err = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    let root = BitMapBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = format!(
        "criu-rs bench: {what}, {} proc x {} thr{}{}{} (medians of {} rounds)",
        args.procs,
        args.threads,
        if args.writer { ", writer" } else { "" },
        if args.thp { ", THP" } else { "" },
        if args.random { ", random bytes" } else { "" },
        args.rounds
    );
    let root = root
        .titled(&title, ("sans-serif", 22))
        .map_err(|e| err(&e))?;
    let panels = root.split_evenly((1, 3));
    Ok((root, panels))
}

/// Registers a TrueType font for the figure's text (plotters draws none without one).
fn register_font() -> Result<(), String> {
    const CANDIDATES: [&str; 3] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    ];
    let bytes = CANDIDATES
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or("no TrueType font found for the figure (install fonts-dejavu-core)")?;
    // The font lives as long as the process: plotters keeps a 'static reference to it.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
        .map_err(|_| "the font could not be read".to_owned())
}

/// Three panels (dump wall, frozen, time-to-running), one bar per tool and mode, the
/// tmpfs fill floor as a line on the dump panel.
fn draw_png(
    path: &Path,
    args: &BenchArgs,
    mib: u64,
    summary: &[&Summary],
    floor: f64,
) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    let (root, panels) = figure(path, &format!("{mib} MiB"), args)?;
    for (i, (panel, (name, value))) in panels.iter().zip(METRICS).enumerate() {
        let values: Vec<f64> = summary
            .iter()
            .map(|s| value(s))
            .map(|v| if v.is_finite() { v } else { 0.0 })
            .collect();
        let mut top = values.iter().cloned().fold(0.0, f64::max);
        if i == 0 {
            top = top.max(floor * 1e3);
        }
        // Room above the bars for their values, and for the legends (the tools', on the
        // last panel; the floor's, on the first).
        let room = match i {
            0 => 1.35,
            2 => 1.5,
            _ => 1.2,
        };
        let top = (top * room).max(1.0);
        let n = summary.len();
        let mut chart = ChartBuilder::on(panel)
            .caption(name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(10)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..n as f64, 0f64..top)
            .map_err(|e| err(&e))?;
        let labels: Vec<String> = summary
            .iter()
            .map(|s| format!("{} {}", s.tool, s.mode))
            .collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| err(&e))?;
        for (k, v) in values.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let bar = chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(k as f64 + 0.15, 0.0), (k as f64 + 0.85, *v)],
                    color.filled(),
                )))
                .map_err(|e| err(&e))?;
            // Which bar is which: a legend on the last panel.
            if i == 2 {
                bar.label(labels[k].as_str()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
            }
        }
        if i == 2 {
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 13)?;
        }
        chart
            .draw_series(values.iter().enumerate().map(|(k, v)| {
                Text::new(
                    format!("{v:.1}"),
                    (k as f64 + 0.3, *v + top * 0.02),
                    ("sans-serif", 14),
                )
            }))
            .map_err(|e| err(&e))?;
        if i == 0 && floor.is_finite() {
            chart
                .draw_series(LineSeries::new(
                    [(0.0, floor * 1e3), (n as f64, floor * 1e3)],
                    BLACK.stroke_width(2),
                ))
                .map_err(|e| err(&e))?
                .label("tmpfs fill floor")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 13)?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Scale curves: three panels (dump wall, frozen, time-to-running) against the size, one
/// line per tool and mode, the tmpfs fill floor as a dashed line on the dump panel.
fn draw_scale_png(
    path: &Path,
    args: &BenchArgs,
    summary: &[Summary],
    floors: &[(u64, Vec<f64>)],
) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    let (root, panels) = figure(path, "scale", args)?;
    let mut lines: Vec<(&'static str, &str)> = Vec::new();
    for s in summary {
        if !lines.iter().any(|(t, m)| *t == s.tool && *m == s.mode) {
            lines.push((s.tool, s.mode.as_str()));
        }
    }
    let max_mib = floors.iter().map(|(m, _)| *m).max().unwrap_or(1) as f64;
    let floor_line: Vec<(f64, f64)> = floors
        .iter()
        .map(|(m, f)| (*m as f64, median(f.clone()) * 1e3))
        .collect();
    for (i, (panel, (name, value))) in panels.iter().zip(METRICS).enumerate() {
        let mut top = summary
            .iter()
            .map(value)
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        if i == 0 {
            top = floor_line.iter().map(|p| p.1).fold(top, f64::max);
        }
        let mut chart = ChartBuilder::on(panel)
            .caption(name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max_mib * 1.05, 0f64..(top * 1.3).max(1.0))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("MiB")
            .x_labels(5)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .x_label_style(("sans-serif", 13))
            .y_label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| err(&e))?;
        for (k, (tool, mode)) in lines.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let mut points: Vec<(f64, f64)> = summary
                .iter()
                .filter(|s| s.tool == *tool && s.mode == *mode)
                .map(|s| (s.mib as f64, value(s)))
                .filter(|p| p.1.is_finite())
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(format!("{tool} {mode}"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(|e| err(&e))?;
        }
        if i == 0 {
            chart
                .draw_series(DashedLineSeries::new(
                    floor_line.clone(),
                    6,
                    4,
                    BLACK.stroke_width(1),
                ))
                .map_err(|e| err(&e))?
                .label("tmpfs fill floor")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(1)));
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft, 12)?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
