//! Stage 3 for each process of the frozen tree: its kernel-object ids, open files,
//! memory map and the pages to save, then the state of each of its threads (registers,
//! and what only injected syscalls can read) and the process-wide state (task core, mm
//! fields, cwd and root). Zombies only have their task core.

use std::os::fd::AsFd;

use criu_images::pb;

use super::{
    hook, mm, refuse_unsupported, seccomp, snapshot, task, task_err, DumpError, ProcessDump, Stage,
    TreeDump,
};
use crate::affinity::TaskPin;
use crate::freeze::{FrozenProcess, TaskState};
use crate::inject::Injector;
use crate::proc::{MapEntry, PosixTimer, ProcDir};
use crate::sys::Pid;

/// Words of auxv CRIU keeps on x86_64 (its AT_VECTOR_SIZE): it saves at most this many
/// and its restore refuses an image with more as corrupted. Linux 6.18 gives 22 entries
/// plus the AT_NULL pair (46 words); what is cut is that terminator, which the kernel
/// puts back when the vector is set again (PR_SET_MM_MAP zero-fills the rest).
const CRIU_AUXV_WORDS: usize = 44;

/// The auxv words to save: as CRIU saves them, so that CRIU can restore our images.
fn saved_auxv(mut words: Vec<u64>) -> Vec<u64> {
    words.truncate(CRIU_AUXV_WORDS);
    words
}

/// The start of an executable mapping to run injected syscalls from.
/// Only a private mapping will do: the gadget is written into the page, and a write to a
/// shared mapping would reach the file or other processes.
fn gadget_address(maps: &[MapEntry]) -> Option<u64> {
    maps.iter()
        .find(|m| m.exec && !m.shared && m.path.starts_with('/'))
        .or_else(|| maps.iter().find(|m| m.exec && m.path == "[vdso]"))
        .map(|m| m.start)
}

/// What stage 3 found of a process's memory.
struct Memory {
    /// Where its injected calls run from.
    gadget: u64,
    /// Start and end of each VMA the pages were scanned in.
    vma_bounds: Vec<(u64, u64)>,
    page_runs: Vec<mm::PageRun>,
    /// VMAs whose pages are scanned in the snapshot child after the thaw (not in
    /// `page_runs`).
    held: Vec<mm::Vma>,
}

/// The page of the task's text that injected calls run from: they write a word of it for
/// a moment, which makes it a private copy (with the file's bytes again after). One that
/// was not a copy before is left to the file, as a scan before the calls would.
struct GadgetPage {
    start: u64,
    was_copy: bool,
}

impl GadgetPage {
    /// Read before the calls: only a file's text can become a private copy by them (the
    /// vDSO's pages are saved whole anyway).
    fn before_calls(pid: Pid, gadget: u64, vmas: &[mm::Vma]) -> Result<GadgetPage, DumpError> {
        let page = crate::sys::page_size();
        let start = gadget / page * page;
        let in_file = vmas.iter().any(|v| {
            matches!(v.backing, mm::Backing::FilePrivate { .. })
                && (v.map.start..v.map.end).contains(&gadget)
        });
        let was_copy = !in_file
            || mm::is_private_copy(pid, start).map_err(task_err(pid, "scanning the page map"))?;
        Ok(GadgetPage { start, was_copy })
    }

    /// `runs` scanned after the calls, without the page unless it was a copy before.
    fn as_before(&self, runs: Vec<mm::PageRun>) -> Vec<mm::PageRun> {
        if self.was_copy {
            runs
        } else {
            mm::without_range(runs, self.start, self.start + crate::sys::page_size())
        }
    }
}

impl TreeDump<'_> {
    /// Stage 3 for process `p`: into `self.dumps`, with what its images need.
    pub(super) fn dump_process(&mut self, p: &FrozenProcess) -> Result<(), DumpError> {
        let pid = p.pid;
        tracing::info!(%pid, threads = p.threads.len(), state = ?p.state, "dumping process");
        let dir = ProcDir::open(pid).map_err(task_err(pid, "opening /proc"))?;
        let task_ids = self.task_ids(pid)?;
        if let TaskState::Zombie { exit_code } = p.state {
            return self.dump_zombie(p, &dir, task_ids, exit_code);
        }

        // Open files, once per shared fd table.
        let fdinfo = if self.dumped_files_ids.contains(&task_ids.files_id) {
            None
        } else {
            self.dumped_files_ids.push(task_ids.files_id);
            Some(self.files.dump_task_fds(pid)?)
        };
        hook(self.opts, Stage::Files)?;

        let (memory, cores, extras) = if self.protection.has(pid) {
            self.scan_memory_protected(p, &dir)?
        } else if self.wants_snapshot {
            self.scan_memory_after_injecting(p, &dir)?
        } else {
            let memory = self.scan_memory(pid, &dir)?;
            hook(self.opts, Stage::Memory)?;
            let (cores, extras) = self.dump_threads(p, &dir, memory.gadget, false)?;
            (memory, cores, extras)
        };
        hook(self.opts, Stage::Tasks)?;

        let mm_entry = self.mm_entry(pid, &dir, extras.unwrap_or_default())?;
        let fs = self.fs_entry(pid, &dir)?;
        self.dumps.push(ProcessDump {
            frozen: p.clone(),
            ids: task_ids,
            cores,
            mm: Some(mm_entry),
            page_runs: memory.page_runs,
            held: memory.held,
            vma_bounds: memory.vma_bounds,
            gadget: memory.gadget,
            fs: Some(fs),
            fdinfo,
        });
        Ok(())
    }

    /// The kernel-object ids of `pid`; a namespace seen for the first time gets `pid`
    /// as the task to read its contents from.
    fn task_ids(&mut self, pid: Pid) -> Result<pb::TaskKobjIdsEntry, DumpError> {
        let task_ids = self
            .ids
            .ids(pid)
            .map_err(task_err(pid, "comparing kernel objects"))?;
        for &(kind, inode, id) in &self.ids.ns_inodes {
            self.files
                .set_ns_id(super::ids::clone_flag(kind), inode, id);
            if !self.ns_tasks.iter().any(|t| t.2 == id) {
                // The dumper's own namespaces were numbered first; they need no images.
                self.ns_tasks.push((kind, inode, id, pid));
            }
        }
        Ok(task_ids)
    }

    /// A zombie: its task core (state, exit code) is all there is.
    fn dump_zombie(
        &mut self,
        p: &FrozenProcess,
        dir: &ProcDir,
        task_ids: pb::TaskKobjIdsEntry,
        exit_code: i32,
    ) -> Result<(), DumpError> {
        let tc = task::task_core(dir, task::TASK_ZOMBIE, exit_code, None, None)
            .map_err(task_err(p.pid, "reading zombie state"))?;
        let core = pb::CoreEntry {
            mtype: pb::core_entry::March::X8664 as i32,
            tc: Some(tc),
            ..Default::default()
        };
        self.dumps.push(ProcessDump {
            frozen: p.clone(),
            ids: task_ids,
            cores: vec![core],
            mm: None,
            page_runs: vec![],
            held: vec![],
            vma_bounds: vec![],
            gadget: 0,
            fs: None,
            fdinfo: None,
        });
        Ok(())
    }

    /// The memory map, an address for injected calls, and the VMAs refused if any.
    fn read_map(pid: Pid, dir: &ProcDir) -> Result<(u64, Vec<mm::Vma>), DumpError> {
        let maps = dir.maps_plain().map_err(task_err(pid, "reading maps"))?;
        let gadget = gadget_address(&maps).ok_or_else(|| DumpError::Unsupported {
            pid,
            what: "a process without any executable mapping".into(),
        })?;
        let vmas = mm::vmas(maps);
        refuse_unsupported(pid, &vmas)?;
        Ok((gadget, vmas))
    }

    /// [`Self::dump_threads`] then [`Self::scan_memory`], for a live snapshot: the
    /// page map is scanned once the threads' state is read and the snapshot child made,
    /// while a second core reads the process's smaps (both walk its page tables under the
    /// read side of its mmap lock, so they run side by side; the injected calls and the
    /// fork take the write side, so neither could overlap them). The injected calls
    /// change nothing the scan looks at, but for a moment the word of the task's text they
    /// run from, which makes that page a private copy (with the file's bytes again after):
    /// it is left out unless it was one before.
    #[allow(clippy::type_complexity)]
    fn scan_memory_after_injecting(
        &mut self,
        p: &FrozenProcess,
        dir: &ProcDir,
    ) -> Result<(Memory, Vec<pb::CoreEntry>, Option<task::ProcessExtras>), DumpError> {
        let pid = p.pid;
        let (gadget, vmas) = Self::read_map(pid, dir)?;
        let gadget_page = GadgetPage::before_calls(pid, gadget, &vmas)?;
        // Its snapshot child would attach its SysV segments once more, which the
        // segments' counts of attachments (sysvshm.rs) would take for a user outside.
        let sysv = vmas
            .iter()
            .any(|v| matches!(v.backing, mm::Backing::SysvShm { .. }));
        if sysv {
            tracing::info!(%pid, "no live snapshot (its memory is copied frozen): SysV shared memory attached");
        }
        let (cores, extras) = self.dump_threads(p, dir, gadget, !sysv)?;
        if let Some(memory) = self.scan_memory_beside_child(pid, gadget, &vmas, &gadget_page)? {
            return Ok((memory, cores, extras));
        }
        let (scanned, smaps) = mm::scan_pages_beside_smaps(pid, &vmas);
        self.smaps_read.push((pid, smaps));
        let (page_runs, scanned) = scanned.map_err(task_err(pid, "scanning the page map"))?;
        let page_runs = gadget_page.as_before(page_runs);
        hook(self.opts, Stage::Memory)?;
        self.stats.pages_scanned += scanned;
        let page_runs = self.refer_to_parent(pid, &vmas, page_runs)?;
        let memory = Memory {
            gadget,
            vma_bounds: vmas.iter().map(|v| (v.map.start, v.map.end)).collect(),
            page_runs,
            held: Vec::new(),
        };
        Ok((memory, cores, extras))
    }

    /// [`Self::dump_threads`] then the page scan, for a process whose memory is
    /// write-protected (`protect.rs`): once the injected calls are done, its pages
    /// written since the protection are protected again, and the pages of every VMA
    /// scanned (~1 ms per GiB). VmFlags come from the smaps read before the freeze when
    /// the map is still the same (as with a snapshot child), else smaps is read now.
    #[allow(clippy::type_complexity)]
    fn scan_memory_protected(
        &mut self,
        p: &FrozenProcess,
        dir: &ProcDir,
    ) -> Result<(Memory, Vec<pb::CoreEntry>, Option<task::ProcessExtras>), DumpError> {
        let pid = p.pid;
        let (gadget, vmas) = Self::read_map(pid, dir)?;
        let gadget_page = GadgetPage::before_calls(pid, gadget, &vmas)?;
        let (cores, extras) = self.dump_threads(p, dir, gadget, false)?;
        self.protection
            .seal(pid, &vmas)
            .map_err(task_err(pid, "protecting its written pages again"))?;
        let before = self.smaps_before_if_same(pid, &vmas);
        let (scanned, smaps) = match before {
            Some(before) => (mm::scan_pages(pid, &vmas), Ok(before)),
            None => mm::scan_pages_beside_smaps(pid, &vmas),
        };
        self.smaps_read.push((pid, smaps));
        let (page_runs, scanned) = scanned.map_err(task_err(pid, "scanning the page map"))?;
        let page_runs = gadget_page.as_before(page_runs);
        hook(self.opts, Stage::Memory)?;
        self.stats.pages_scanned += scanned;
        tracing::debug!(%pid, runs = page_runs.len(), "page map scanned, write-protected VMAs copied after the thaw");
        let memory = Memory {
            gadget,
            vma_bounds: vmas.iter().map(|v| (v.map.start, v.map.end)).collect(),
            page_runs,
            held: Vec::new(),
        };
        Ok((memory, cores, extras))
    }

    /// The frozen half of [`Self::scan_memory_after_injecting`] when the process has a
    /// snapshot child and its smaps, read before the freeze, still describes its map
    /// (not for an incremental dump, whose written-page tracking lives in the process's
    /// own page tables): only the VMAs the child does not hold are scanned now; the
    /// others are scanned in the child after the thaw (`LiveCopy`), and smaps is not
    /// read at all while frozen. Both are walks of every page-table entry (~10 and ~30
    /// ms per resident GiB here) that would otherwise stop the tree. None: the frozen
    /// scan of everything it is.
    fn scan_memory_beside_child(
        &mut self,
        pid: Pid,
        gadget: u64,
        vmas: &[mm::Vma],
        gadget_page: &GadgetPage,
    ) -> Result<Option<Memory>, DumpError> {
        let Some(child) = self.snapshots.of(pid).map(|c| c.pid) else {
            return Ok(None);
        };
        if self.incremental.is_some() {
            return Ok(None);
        }
        let Some(before) = self.smaps_before_if_same(pid, vmas) else {
            return Ok(None);
        };
        let with_flags = mm::vmas(before.clone());
        let child_maps = ProcDir::open(child)
            .and_then(|d| d.maps_plain())
            .map_err(task_err(pid, "reading its snapshot child's maps"))?;
        let held = snapshot::held_in_child(&before, &child_maps);
        let frozen_vmas: Vec<mm::Vma> = with_flags
            .iter()
            .filter(|v| !snapshot::in_order(&held, (v.map.start, v.map.end)))
            .cloned()
            .collect();
        let held_vmas: Vec<mm::Vma> = with_flags
            .into_iter()
            .filter(|v| snapshot::in_order(&held, (v.map.start, v.map.end)))
            .collect();
        let (page_runs, scanned) =
            mm::scan_pages(pid, &frozen_vmas).map_err(task_err(pid, "scanning the page map"))?;
        let page_runs = gadget_page.as_before(page_runs);
        hook(self.opts, Stage::Memory)?;
        self.stats.pages_scanned += scanned;
        tracing::debug!(%pid, %child, held = held_vmas.len(), frozen_runs = page_runs.len(), "held VMAs scanned in the snapshot child after the thaw");
        self.smaps_read.push((pid, Ok(before)));
        Ok(Some(Memory {
            gadget,
            vma_bounds: vmas.iter().map(|v| (v.map.start, v.map.end)).collect(),
            page_runs,
            held: held_vmas,
        }))
    }

    /// The smaps of `pid` read before the freeze, when the frozen map `vmas` is still
    /// the one it describes (bounds, protection, backing): its VmFlags stand then, and
    /// smaps need not be read again while frozen.
    fn smaps_before_if_same(&self, pid: Pid, vmas: &[mm::Vma]) -> Option<Vec<MapEntry>> {
        let (_, before) = self.smaps_before.iter().find(|(p, _)| *p == pid)?;
        // As VMAs: `[vvar]` and `[vvar_vclock]` count as one, as in `vmas`.
        let with_flags = mm::vmas(before.clone());
        let same = with_flags.len() == vmas.len()
            && with_flags
                .iter()
                .zip(vmas)
                .all(|(a, b)| snapshot::same_mapping(&a.map, &b.map));
        if !same {
            tracing::debug!(%pid, "map changed since smaps was read: smaps read frozen");
            return None;
        }
        Some(before.clone())
    }

    /// Memory map and the pages to save. `maps` has all the scan needs; the VmFlags of
    /// the image's VMA entries come from smaps, read meanwhile (see TreeSmaps).
    fn scan_memory(&mut self, pid: Pid, dir: &ProcDir) -> Result<Memory, DumpError> {
        let (gadget, vmas) = Self::read_map(pid, dir)?;
        let vma_bounds = vmas.iter().map(|v| (v.map.start, v.map.end)).collect();
        let (page_runs, scanned) =
            mm::scan_pages(pid, &vmas).map_err(task_err(pid, "scanning the page map"))?;
        self.stats.pages_scanned += scanned;
        let page_runs = self.refer_to_parent(pid, &vmas, page_runs)?;
        Ok(Memory {
            gadget,
            vma_bounds,
            page_runs,
            held: Vec::new(),
        })
    }

    /// Registers and injected reads, thread by thread; the leader also reads the
    /// process-wide values, which go into the first core's task core. Returns the cores
    /// and those values.
    fn dump_threads(
        &mut self,
        p: &FrozenProcess,
        dir: &ProcDir,
        gadget: u64,
        snapshot: bool,
    ) -> Result<(Vec<pb::CoreEntry>, Option<task::ProcessExtras>), DumpError> {
        let pid = p.pid;
        let mut cores = Vec::with_capacity(p.threads.len());
        let mut process_extras = None;
        let timers = dir.timers().map_err(task_err(pid, "reading timers"))?;
        // One self-restoring area for all the threads, handed from one to the next; the
        // last one unmaps it (and a failure on the way, through the thread that had it).
        let mut area = None;
        for (i, &tid) in p.threads.iter().enumerate() {
            let leader_timers = (tid == pid).then_some(timers.as_slice());
            let keep_area = i + 1 < p.threads.len();
            let (core, extras) = self.dump_thread(
                p,
                tid,
                gadget,
                leader_timers,
                snapshot,
                (&mut area, keep_area),
            )?;
            if extras.is_some() {
                process_extras = extras;
            }
            cores.push(core);
        }
        let (state, stop_signo) = match p.state {
            TaskState::Stopped { signal } => (task::TASK_STOPPED, Some(signal as u32)),
            _ => (task::TASK_ALIVE, None),
        };
        let tc = task::task_core(dir, state, 0, stop_signo, process_extras.as_ref())
            .map_err(task_err(pid, "reading task state"))?;
        cores[0].tc = Some(tc);
        for (core, filters) in cores.iter_mut().zip(self.seccomp.add_process(&p.threads)?) {
            if let Some(thread_core) = core.thread_core.as_mut() {
                filters.apply(thread_core);
            }
        }
        Ok((cores, process_extras))
    }

    /// Thread `tid` of `p`: its core, read by injected calls from `gadget`; with
    /// `leader_timers` (the process's POSIX timers, for the leader) also the
    /// process-wide values.
    fn dump_thread(
        &mut self,
        p: &FrozenProcess,
        tid: Pid,
        gadget: u64,
        leader_timers: Option<&[PosixTimer]>,
        snapshot: bool,
        (area, keep_area): (&mut Option<crate::inject::SharedArea>, bool),
    ) -> Result<(pb::CoreEntry, Option<task::ProcessExtras>), DumpError> {
        let pid = p.pid;
        // Syscall stops tell themselves apart (self-restoring calls step through
        // them); seccomp stays suspended for injection.
        // Read once, while frozen: creds and the seccomp mode do not change meanwhile.
        let status = ProcDir::open_thread(pid, tid)
            .and_then(|d| d.status())
            .map_err(task_err(tid, "reading status"))?;
        let injection_options = seccomp::injection_options_for(Some(status.seccomp));
        let options = injection_options | libc::PTRACE_O_TRACESYSGOOD;
        // The area another thread left, for a thread that may use one (not under
        // seccomp, see `make_self_restoring`); one it may not is unmapped here.
        let shared = area.take().filter(|_| injection_options == 0);
        let mut inj = match shared {
            Some(shared) => Injector::in_area(tid, shared, options),
            None => Injector::new(tid, gadget),
        }
        .map_err(task_err(tid, "preparing syscall injection"))?;
        // A thread whose tracer dies returns into its own context by itself (see
        // inject.rs), but for the two moments its injected code is mapped and
        // unmapped, when a dying dumper takes it along.
        let self_restoring = inj
            .make_self_restoring(options)
            .map_err(task_err(tid, "preparing syscall injection"))?;
        // One that cannot (under seccomp, or refused writable code) is taken along
        // while its code or registers are not its own, and is pinned on our CPU
        // meanwhile (see affinity.rs; its own affinity comes back when the pin drops).
        // A self-restoring one is not pinned: a dying dumper could not give it its
        // affinity back.
        let (_window, _on_our_cpu) = if self_restoring {
            (None, None)
        } else {
            let window = crate::freeze::KillIfTracerDies::arm(tid, "reading state", options)
                .map_err(task_err(tid, "setting PTRACE_O_EXITKILL"))?;
            (Some(window), Some(TaskPin::to_current_cpu(tid)))
        };
        if tid == p.threads[0] && self.dumps.is_empty() {
            hook(self.opts, Stage::Injected)?;
        }
        let process_extras = match leader_timers {
            Some(timers) => Some(
                task::process_extras(&mut inj, timers)
                    .map_err(task_err(pid, "reading process state"))?,
            ),
            None => None,
        };
        let extras =
            task::thread_extras(&mut inj).map_err(task_err(tid, "reading thread state"))?;
        // The live snapshot's copy-on-write image, last: the moment the memory is saved
        // is after every call above (which write only their scratch area).
        if leader_timers.is_some() && snapshot && self_restoring {
            let made = super::snapshot::clone_snapshot_child(
                &mut inj,
                pid,
                tid,
                options,
                &mut self.snapshots,
            );
            if let Err(e) = made {
                tracing::info!(%pid, "no live snapshot (its memory is copied frozen): {e}");
            }
        }
        let regs = *inj.saved_regs();
        if keep_area {
            *area = inj
                .finish_keeping_area()
                .map_err(task_err(tid, "undoing syscall injection"))?;
        } else {
            inj.finish()
                .map_err(task_err(tid, "undoing syscall injection"))?;
        }
        let core = task::thread_core((pid, tid), &status, &regs, &extras)
            .map_err(task_err(tid, "reading thread state"))?;
        Ok((core, process_extras))
    }

    /// The mm entry of `pid` (its VMAs come later, from smaps), registering its exe.
    fn mm_entry(
        &mut self,
        pid: Pid,
        dir: &ProcDir,
        extras: task::ProcessExtras,
    ) -> Result<pb::MmEntry, DumpError> {
        let stat = dir.stat().map_err(task_err(pid, "reading stat"))?;
        let exe = dir
            .read_link("exe")
            .map_err(task_err(pid, "reading the exe link"))?;
        let exe_file = std::fs::File::open(format!("/proc/{}/exe", pid.0)).ok();
        let exe_file_id =
            self.files
                .reg_file(pid, &exe, exe_file.as_ref().map(AsFd::as_fd), 0, 0)?;
        Ok(pb::MmEntry {
            mm_start_code: stat.start_code,
            mm_end_code: stat.end_code,
            mm_start_data: stat.start_data,
            mm_end_data: stat.end_data,
            mm_start_stack: stat.start_stack,
            mm_start_brk: stat.start_brk,
            mm_brk: extras.brk,
            mm_arg_start: stat.arg_start,
            mm_arg_end: stat.arg_end,
            mm_env_start: stat.env_start,
            mm_env_end: stat.env_end,
            exe_file_id,
            mm_saved_auxv: saved_auxv(dir.auxv().map_err(task_err(pid, "reading auxv"))?),
            // Filled in from smaps once the pages are copied.
            vmas: Vec::new(),
            dumpable: Some(extras.dumpable),
            aios: Vec::new(),
            thp_disabled: Some(extras.thp_disabled),
        })
    }

    /// The fs entry of `pid`: cwd and root (registered as files) and umask.
    fn fs_entry(&mut self, pid: Pid, dir: &ProcDir) -> Result<pb::FsEntry, DumpError> {
        let cwd = dir.read_link("cwd").map_err(task_err(pid, "reading cwd"))?;
        let root = dir
            .read_link("root")
            .map_err(task_err(pid, "reading root"))?;
        // O_PATH: a dead process's /proc dir (a cwd there) refuses a plain open.
        let open = |name: &str| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH)
                .open(format!("/proc/{}/{name}", pid.0))
                .ok()
        };
        let (cwd_file, root_file) = (open("cwd"), open("root"));
        Ok(pb::FsEntry {
            cwd_id: self
                .files
                .reg_file(pid, &cwd, cwd_file.as_ref().map(AsFd::as_fd), 0, 0)?,
            root_id: self
                .files
                .reg_file(pid, &root, root_file.as_ref().map(AsFd::as_fd), 0, 0)?,
            umask: dir.status().map_err(task_err(pid, "reading status"))?.umask,
        })
    }
}
