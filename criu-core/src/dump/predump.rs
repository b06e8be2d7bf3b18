//! `pre-dump`: the memory of a tree saved while it runs on, so that the final dump
//! (`dump --prev-images-dir DIR --track-mem`) saves only the pages written since.
//!
//! As CRIU's: the tree is frozen, its private memory copied into `pagemap-PID.img` +
//! `pages-N.img` (with `inventory.img` and `stats-dump`), and the tree thawed. Before
//! the copy each process gets its write tracking (`track.rs`): a chain of pre-dumps
//! saves, each time, only what was written since the one before (`PE_PARENT` for the
//! rest), and leaves a tracker process holding the tracking for the next dump.

use std::path::PathBuf;
use std::time::Instant;

use criu_images::{pb, ImageWriter};

use super::track::{self, Tracked, Tracking};
use super::{check_images_dir, kind, mm, task_err, write_one, DumpError, DumpOptions, DumpStats};
use crate::freeze::{FrozenTree, TaskState};
use crate::inject::Injector;
use crate::proc::ProcDir;
use crate::sys::{self, Pid};

/// What a pre-dump did besides its stats: the tracker it left.
#[derive(Debug, Clone)]
pub struct PreDumpReport {
    pub stats: DumpStats,
    /// The process that keeps the tracking for the next dump (None: not tracked).
    pub tracker: Option<Pid>,
}

/// Pre-dumps the tree rooted at `opts.pid` into `opts.images_dir` (with
/// `opts.prev_images_dir` as its parent). The tree runs on afterwards.
pub fn pre_dump(opts: &DumpOptions) -> Result<PreDumpReport, DumpError> {
    super::on_tracer_thread(|| pre_dump_as_tracer(opts))
}

/// One process's memory, scanned while frozen.
struct Scanned {
    pid: Pid,
    vpid: u32,
    runs: Vec<mm::PageRun>,
}

fn pre_dump_as_tracer(opts: &DumpOptions) -> Result<PreDumpReport, DumpError> {
    check_images_dir(&opts.images_dir)?;
    crate::freeze::check_target(opts.pid)?;
    let parent_dir: Option<PathBuf> = match &opts.prev_images_dir {
        Some(prev) => Some(
            track::link_parent(&opts.images_dir, prev).map_err(|source| DumpError::ImagesDir {
                path: opts.images_dir.join("parent"),
                source,
            })?,
        ),
        None => None,
    };
    let inherited = match &parent_dir {
        Some(dir) => Tracking::take_over(dir),
        None => Tracking::default(),
    };
    let freeze_start = Instant::now();
    let tree = FrozenTree::freeze(opts.pid, opts.freeze_timeout)?;
    let mut stats = DumpStats {
        freezing_time: freeze_start.elapsed().as_micros() as u32,
        ..Default::default()
    };
    let frozen_at = Instant::now();
    // Any error drops `tree` (which resumes it) and the tracking (which ends it).
    let (scanned, tracking) =
        scan_frozen(opts, &tree, parent_dir.as_deref(), inherited, &mut stats)?;
    stats.memdump_time = frozen_at.elapsed().as_micros() as u32;
    stats.processes = tree.processes.len();
    stats.threads = tree.live_threads().count();
    // The pages are copied with the tree running again: each was write-protected at
    // the freeze, so one written since (whose copy may be of any moment) is saved
    // again by the next dump, and one not written still holds what it held then.
    tree.resume();
    stats.frozen_time = frozen_at.elapsed().as_micros() as u32;
    tracing::info!(frozen_us = stats.frozen_time, "tree thawed");
    let write_start = Instant::now();
    let workers = if opts.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.workers
    };
    let dir = &opts.images_dir;
    for (i, p) in scanned.iter().enumerate() {
        let pages_id = i as u32 + 1;
        let pages_path = dir.join(format!("pages-{pages_id}.img"));
        let file = criu_images::create_image_file(&pages_path)
            .map_err(task_err(p.pid, "creating the pages file"))?;
        let (bytes, zeroed) = mm::copy_pages_running(
            p.pid,
            &p.runs,
            &file,
            workers,
            &opts.interrupt,
            &opts.progress,
        )
        .map_err(task_err(p.pid, "copying pages"))?;
        if zeroed > 0 {
            tracing::info!(pid = %p.pid, zeroed, "pages unmapped (or the process gone) before they were copied: saved as zeros");
        }
        stats.pages_written += bytes / sys::page_size();
        let mut w =
            ImageWriter::create(dir.join(format!("pagemap-{}.img", p.vpid)), kind("PAGEMAP"))?;
        w.write_entry(&pb::PagemapHead { pages_id })?;
        for e in mm::pagemap_entries(&p.runs) {
            w.write_entry(&e)?;
        }
        w.finish()?;
    }
    stats.memwrite_time = write_start.elapsed().as_micros() as u32;

    let tracker = if tracking.processes.is_empty() {
        None
    } else {
        match tracking.hand_over(dir) {
            Ok(pid) => Some(pid),
            Err(e) => {
                tracing::warn!("no tracker for the next dump ({e}): it will be a full one");
                None
            }
        }
    };
    write_inventory_and_stats(opts, &stats)?;
    Ok(PreDumpReport { stats, tracker })
}

/// With the tree frozen: each process's pages, its tracking made or reset, and the
/// pages unwritten since the parent referred to it.
fn scan_frozen(
    opts: &DumpOptions,
    tree: &FrozenTree,
    parent_dir: Option<&std::path::Path>,
    mut inherited: Tracking,
    stats: &mut DumpStats,
) -> Result<(Vec<Scanned>, Tracking), DumpError> {
    let mut tracking = Tracking::default();
    let mut scanned = Vec::new();
    for p in &tree.processes {
        if matches!(p.state, TaskState::Zombie { .. }) {
            continue;
        }
        opts.interrupt.check()?;
        let pid = p.pid;
        let dir = ProcDir::open(pid).map_err(task_err(pid, "opening /proc"))?;
        let maps = dir.maps_plain().map_err(task_err(pid, "reading maps"))?;
        let gadget = maps
            .iter()
            .find(|m| m.exec && !m.shared && m.path.starts_with('/'))
            .map(|m| m.start);
        let vmas = mm::vmas(maps);
        let (runs, pages) =
            mm::scan_pages(pid, &vmas).map_err(task_err(pid, "scanning the page map"))?;
        stats.pages_scanned += pages;
        let vpid = track::virtual_pid(pid);
        let start_time = track::start_time(pid).map_err(task_err(pid, "reading stat"))?;
        // The tracking of the parent pre-dump, if this process had one.
        let taken = inherited
            .processes
            .iter()
            .position(|t| t.pid == pid && t.start_time == start_time)
            .map(|i| inherited.processes.swap_remove(i));
        let parent = parent_dir.and_then(|d| track::parent_coverage(d, vpid));
        let runs = match (&taken, &parent) {
            (Some(t), Some(parent)) => {
                let (runs, split) =
                    track::split_unchanged(pid, &vmas, runs, parent, &t.ranges, true)
                        .map_err(task_err(pid, "scanning written pages"))?;
                stats.pages_skipped_parent += split.in_parent;
                runs
            }
            _ => {
                if parent_dir.is_some() {
                    tracing::info!(%pid, "not tracked since the parent pre-dump: dumped in full");
                }
                runs
            }
        };
        let (mut uffd, mut known, mut fresh) = match taken {
            Some(t) => (Some(t.uffd), t.ranges, false),
            None => (gadget.and_then(|g| new_tracking(pid, g)), Vec::new(), true),
        };
        while let Some(u) = uffd.take() {
            match track::start_tracking(pid, &vmas, &u, &known) {
                Ok(ranges) => {
                    tracing::debug!(%pid, vmas = ranges.len(), "memory tracked");
                    tracking.processes.push(Tracked {
                        pid,
                        start_time,
                        uffd: u,
                        ranges,
                    });
                }
                // The userfaultfd's memory is gone: the process exec'ed since the last
                // pre-dump. It gets a new one.
                Err(e) if !fresh && e.raw_os_error() == Some(libc::ENOMEM) => {
                    tracing::info!(%pid, "its tracked memory is gone (exec): tracked anew");
                    (uffd, known, fresh) =
                        (gadget.and_then(|g| new_tracking(pid, g)), Vec::new(), true);
                }
                Err(e) => tracing::info!(%pid, "memory not tracked: {e}"),
            }
        }
        scanned.push(Scanned { pid, vpid, runs });
    }
    Ok((scanned, tracking))
}

/// A new write-tracking userfaultfd for `pid` (None, logged, when the kernel refuses).
/// The calls are injected only into a thread that returns into its own context should
/// the dumper die meanwhile (`Injector::make_self_restoring`): a pre-dump must never
/// leave the tree worse off, and one without tracking only makes the next dump full.
fn new_tracking(pid: Pid, gadget: u64) -> Option<sys::Uffd> {
    let options = super::seccomp::injection_options(pid) | libc::PTRACE_O_TRACESYSGOOD;
    let made = Injector::new(pid, gadget).and_then(|mut inj| {
        if !inj.make_self_restoring(options)? {
            inj.finish()?;
            return Err(std::io::Error::other(
                "its calls could not be made safe from a dying dumper (seccomp, or no writable code)",
            ));
        }
        let uffd = track::new_userfaultfd(&mut inj, pid);
        inj.finish()?;
        uffd
    });
    match made {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::info!(%pid, "memory not tracked: no userfaultfd ({e})");
            None
        }
    }
}

/// `inventory.img` (as CRIU's pre-dump writes it: the image version and the pre-dump
/// mode) and `stats-dump`.
fn write_inventory_and_stats(opts: &DumpOptions, stats: &DumpStats) -> Result<(), DumpError> {
    let inventory = pb::InventoryEntry {
        img_version: 2,
        fdinfo_per_id: Some(true),
        ns_per_id: Some(true),
        lsmtype: Some(pb::Lsmtype::NoLsm as i32),
        dump_criu_run_id: Some(opts.run_id.clone()),
        // CRIU's PRE_DUMP_SPLICE: memory is copied with the tree frozen.
        pre_dump_mode: Some(1),
        ..Default::default()
    };
    write_one(&opts.images_dir, "INVENTORY", "", &[inventory])?;
    let work = opts.work_dir.as_deref().unwrap_or(&opts.images_dir);
    let entry = pb::StatsEntry {
        dump: Some(pb::DumpStatsEntry {
            freezing_time: stats.freezing_time,
            frozen_time: stats.frozen_time,
            memdump_time: stats.memdump_time,
            memwrite_time: stats.memwrite_time,
            pages_scanned: stats.pages_scanned,
            pages_skipped_parent: stats.pages_skipped_parent,
            pages_written: stats.pages_written,
            ..Default::default()
        }),
        restore: None,
    };
    let mut w = ImageWriter::create(work.join("stats-dump"), kind("STATS"))?;
    w.write_entry(&entry)?;
    w.finish()?;
    Ok(())
}
