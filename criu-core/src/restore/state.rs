//! Stage 7, the process-wide state: handlers, itimers, rlimits, name, personality, the
//! mm fields with the exe link, pending signals, POSIX timers, and last the leader's
//! seccomp filters and credentials. (The attributes of `attrs.rs` are set from here
//! too, in the order that file explains; per-thread state is `threads.rs`.)

use super::*;
use std::os::unix::fs::MetadataExt;

impl Rebuild<'_> {
    /// loginuid and the THP switch first (see attrs.rs), then the child subreaper flag
    /// and the membarrier registrations.
    pub(super) fn process_attrs(&mut self) -> Result<(), RestoreError> {
        let (img, scratch) = (self.img, self.scratch());
        attrs::set_loginuid(&mut self.inj, self.pid, img.tc.loginuid, scratch)
            .map_err(self.err("loginuid"))?;
        attrs::set_thp_disabled(&mut self.inj, img.mm.thp_disabled)
            .map_err(self.err("the THP switch"))?;
        attrs::set_child_subreaper(&mut self.inj, img.tc.child_subreaper)
            .map_err(self.err("the child subreaper flag"))?;
        attrs::set_membarrier(&mut self.inj, img.tc.membarrier_registration_mask)
            .map_err(self.err("the membarrier registrations"))?;
        Ok(())
    }

    /// Handlers and itimers go in at once: each struct at its own place in the scratch
    /// area, then one batch of calls. Handlers are those of signals 1 to 64 but SIGKILL
    /// and SIGSTOP, in order (stage 1 refused more than 62).
    pub(super) fn handlers_and_itimers(&mut self) -> Result<(), RestoreError> {
        let (img, scratch) = (self.img, self.scratch());
        let mut raw = Vec::with_capacity(32 * 62 + 96);
        let mut calls: Vec<(String, i64, [u64; 6])> = Vec::new();
        let mut sig = 0u64;
        for sa in &img.tc.sigactions {
            sig += 1;
            if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
                sig += 1;
            }
            let at = raw.len() as u64;
            for w in [sa.sigaction, sa.flags, sa.restorer, sa.mask] {
                raw.extend_from_slice(&w.to_le_bytes());
            }
            calls.push((
                format!("rt_sigaction (handler of signal {sig})"),
                libc::SYS_rt_sigaction,
                [sig, scratch + at, 0, 8, 0, 0],
            ));
        }
        if let Some(t) = &img.tc.timers {
            for (which, it) in [&t.real, &t.virt, &t.prof].into_iter().enumerate() {
                let at = raw.len() as u64;
                for w in [it.isec, it.iusec, it.vsec, it.vusec] {
                    raw.extend_from_slice(&w.to_le_bytes());
                }
                calls.push((
                    "setitimer".to_string(),
                    libc::SYS_setitimer,
                    [which as u64, scratch + at, 0, 0, 0, 0],
                ));
            }
        }
        self.inj
            .write(scratch, &raw)
            .map_err(self.err("writing handlers and itimers"))?;
        self.inj
            .syscalls_ok(&calls)
            .map_err(self.err("setting handlers and itimers"))?;
        Ok(())
    }

    /// The resource limits, in one batch. Raising a hard limit needs CAP_SYS_RESOURCE,
    /// which these machines lack; a limit that cannot be set stays as inherited.
    pub(super) fn rlimits(&mut self) -> Result<(), RestoreError> {
        let (img, scratch) = (self.img, self.scratch());
        let Some(limits) = &img.tc.rlimits else {
            return Ok(());
        };
        let mut raw = Vec::with_capacity(16 * limits.rlimits.len());
        let mut calls = Vec::with_capacity(limits.rlimits.len());
        for (res, l) in limits.rlimits.iter().enumerate() {
            let at = raw.len() as u64;
            raw.extend_from_slice(&l.cur.to_le_bytes());
            raw.extend_from_slice(&l.max.to_le_bytes());
            calls.push((libc::SYS_prlimit64, [0, res as u64, scratch + at, 0, 0, 0]));
        }
        self.inj
            .write(scratch, &raw)
            .map_err(self.err("writing the limits"))?;
        let results = self
            .inj
            .syscalls(&calls)
            .map_err(self.err("setting the limits"))?;
        for (res, ret) in results.into_iter().enumerate() {
            if let Err(e) = self.inj.check_result("prlimit64", ret) {
                tracing::warn!(pid = %self.pid, resource = res, "rlimit not restored: {e}");
            }
        }
        Ok(())
    }

    /// The name (comm) and the personality.
    pub(super) fn name_and_personality(&mut self) -> Result<(), RestoreError> {
        let (img, scratch) = (self.img, self.scratch());
        let mut comm = img.tc.comm.clone();
        comm.truncate(15);
        comm.push(0);
        self.inj
            .write(scratch, &comm)
            .map_err(self.err("writing the name"))?;
        self.inj
            .syscall_ok(
                "prctl(PR_SET_NAME)",
                libc::SYS_prctl,
                [libc::PR_SET_NAME as u64, scratch, 0, 0, 0, 0],
            )
            .map_err(self.err("name"))?;
        self.inj
            .syscall_ok(
                "personality",
                libc::SYS_personality,
                [u64::from(img.tc.personality), 0, 0, 0, 0, 0],
            )
            .map_err(self.err("personality"))?;
        Ok(())
    }

    /// The mm fields (code, data, brk, stack, arguments, environment, auxv) and the exe
    /// link, in one `PR_SET_MM_MAP`: allowed once no mapping of the old exe is left,
    /// which stage 3 saw to.
    pub(super) fn mm_fields(&mut self) -> Result<(), RestoreError> {
        let (img, scratch) = (self.img, self.scratch());
        let exe_name = img
            .files
            .get(&img.mm.exe_file_id)
            .and_then(|f| f.reg.as_ref())
            .map(|r| r.path().to_owned())
            .unwrap_or_default();
        let exe = open_in_task(&mut self.inj, scratch, &exe_name, libc::O_RDONLY)
            .map_err(self.err(&format!("opening exe {}", exe_name.display())))?;
        let auxv: Vec<u8> = img
            .mm
            .mm_saved_auxv
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let auxv_at = scratch + PAGE;
        self.inj
            .write(auxv_at, &auxv)
            .map_err(self.err("writing auxv"))?;
        let m = &img.mm;
        let mut map = Vec::new();
        for w in [
            m.mm_start_code,
            m.mm_end_code,
            m.mm_start_data,
            m.mm_end_data,
            m.mm_start_brk,
            m.mm_brk,
            m.mm_start_stack,
            m.mm_arg_start,
            m.mm_arg_end,
            m.mm_env_start,
            m.mm_env_end,
            auxv_at,
        ] {
            map.extend_from_slice(&w.to_le_bytes());
        }
        map.extend_from_slice(&(auxv.len() as u32).to_le_bytes());
        // The task is still a copy of us, its exe link ours. When the program is our own
        // executable (criu-rs restoring a criu-rs process), the kernel refuses to set
        // the link (EBUSY: the old exe is still mapped, by the program itself), and it
        // already points at the right file: -1 leaves it as it is.
        let ours = std::fs::metadata("/proc/self/exe").ok();
        let theirs = std::fs::metadata(format!("/proc/{}/fd/{exe}", self.pid.0)).ok();
        let same_file = match (ours, theirs) {
            (Some(a), Some(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        let exe_fd = if same_file { u32::MAX } else { exe as u32 };
        map.extend_from_slice(&exe_fd.to_le_bytes());
        self.inj
            .write(scratch, &map)
            .map_err(self.err("writing the mm map"))?;
        const PR_SET_MM: u64 = 35;
        const PR_SET_MM_MAP: u64 = 14;
        self.inj
            .syscall_ok(
                "prctl(PR_SET_MM_MAP)",
                libc::SYS_prctl,
                [PR_SET_MM, PR_SET_MM_MAP, scratch, map.len() as u64, 0, 0],
            )
            .map_err(self.err("mm fields"))?;
        self.inj
            .syscall_ok("close", libc::SYS_close, [exe, 0, 0, 0, 0, 0])
            .map_err(self.err("exe"))?;
        Ok(())
    }

    /// Process-wide pending signals, queued by the task to itself.
    pub(super) fn pending_signals(&mut self) -> Result<(), RestoreError> {
        let (img, scratch) = (self.img, self.scratch());
        for q in img.tc.signals_s.iter() {
            for sig in &q.signals {
                let signo = u32::from_le_bytes(
                    sig.siginfo
                        .get(..4)
                        .and_then(|b| b.try_into().ok())
                        .unwrap_or_default(),
                );
                self.inj
                    .write(scratch, &sig.siginfo)
                    .map_err(self.err("writing a pending signal"))?;
                self.inj
                    .syscall_ok(
                        "rt_sigqueueinfo",
                        libc::SYS_rt_sigqueueinfo,
                        [img.pid.0 as u64, u64::from(signo), scratch, 0, 0, 0],
                    )
                    .map_err(self.err(&format!("pending signal {signo}")))?;
            }
        }
        Ok(())
    }

    /// POSIX timers, once every thread a timer may notify exists: created with their
    /// old ids (PR_TIMER_CREATE_RESTORE_IDS, Linux 6.16) and armed with the time left.
    pub(super) fn posix_timers(&mut self) -> Result<(), RestoreError> {
        let (img, scratch) = (self.img, self.scratch());
        let posix = img
            .tc
            .timers
            .as_ref()
            .map(|t| t.posix.as_slice())
            .unwrap_or_default();
        if posix.is_empty() {
            return Ok(());
        }
        const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
        self.inj
            .syscall_ok(
                "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
                libc::SYS_prctl,
                [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0],
            )
            .map_err(self.err("asking for timer ids"))?;
        for t in posix {
            let mut sev = vec![0u8; 64];
            sev[0..8].copy_from_slice(&t.sival_ptr.to_le_bytes());
            sev[8..12].copy_from_slice(&(t.si_signo as i32).to_le_bytes());
            sev[12..16].copy_from_slice(&(t.it_sigev_notify as i32).to_le_bytes());
            sev[16..20].copy_from_slice(&t.notify_thread_id.unwrap_or(0).to_le_bytes());
            self.inj
                .write(scratch, &sev)
                .map_err(self.err("writing a timer"))?;
            self.inj
                .write(scratch + 128, &(t.it_id as i32).to_le_bytes())
                .map_err(self.err("writing a timer"))?;
            let clock = u64::from(t.clock_id);
            self.inj
                .syscall_ok(
                    "timer_create",
                    libc::SYS_timer_create,
                    [clock, scratch, scratch + 128, 0, 0, 0],
                )
                .map_err(self.err(&format!("creating POSIX timer {}", t.it_id)))?;
            let mut its = Vec::new();
            for w in [t.isec, t.insec, t.vsec, t.vnsec] {
                its.extend_from_slice(&w.to_le_bytes());
            }
            self.inj
                .write(scratch + 256, &its)
                .map_err(self.err("writing a timer"))?;
            let id = u64::from(t.it_id);
            self.inj
                .syscall_ok(
                    "timer_settime",
                    libc::SYS_timer_settime,
                    [id, 0, scratch + 256, 0, 0, 0],
                )
                .map_err(self.err(&format!("arming POSIX timer {}", t.it_id)))?;
        }
        self.inj
            .syscall_ok(
                "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
                libc::SYS_prctl,
                [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0],
            )
            .map_err(self.err("asking for timer ids"))?;
        Ok(())
    }

    /// The leader's seccomp filters, now that its threads exist (they would inherit
    /// them), and while it may still install them; then the credentials, last: once
    /// they drop, nothing but us (root) can trace or change the task, and nothing can
    /// attach to it half-built. What a credential change resets follows them.
    pub(super) fn seccomp_and_credentials(&mut self) -> Result<(), RestoreError> {
        let (img, scratch) = (self.img, self.scratch());
        let tcore = img.core.thread_core.as_ref();
        attrs::install_seccomp_filters(&mut self.inj, &img.seccomp[0])
            .map_err(self.err("seccomp filters"))?;
        if let Some(creds) = tcore.and_then(|t| t.creds.as_ref()) {
            set_creds(&mut self.inj, creds, scratch).map_err(self.err("credentials"))?;
        }
        attrs::set_pdeath_signal(&mut self.inj, tcore).map_err(self.err("parent-death signal"))?;
        attrs::set_dumpable(&mut self.inj, img.mm.dumpable)
            .map_err(self.err("the dumpable flag"))?;
        attrs::enter_seccomp_strict(&mut self.inj, &img.seccomp[0])
            .map_err(self.err("seccomp strict mode"))?;
        Ok(())
    }
}
