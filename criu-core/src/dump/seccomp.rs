//! Seccomp filters of the dumped threads, for `seccomp.img`.
//!
//! The kernel numbers a thread's filters from the first one it installed
//! (PTRACE_SECCOMP_GET_FILTER index 0, see `get_nth_filter` in kernel/seccomp.c; the
//! ptrace(2) man page says the opposite, the kernel wins) up to the most recent one;
//! ENOENT comes past the last.
//!
//! The image holds one `seccomp_entry` listing filters, in CRIU's layout
//! (`dump_seccomp_filters` and `seccomp_prepare_threads` in criu/seccomp.c, and the
//! restorer's `restore_seccomp_filter`, which installs them in the order it collects them):
//! - a thread's `thread_core.seccomp_filter` is the 0-based position of the FIRST filter
//!   it installed (CRIU: `entry->img_filter_pos = img_filter_pos - 1` after writing the
//!   chain newest first);
//! - a filter's `prev` is the 0-based position of the filter installed right AFTER it on
//!   that thread, unset for the most recent one (CRIU: `chain->filter.prev =
//!   img_filter_pos - 1`, the entry written just before);
//! - restore starts at `seccomp_filter` and follows `prev`, installing in that order,
//!   which is the original order;
//! - `flags` is always set: the `SECCOMP_FILTER_FLAG_*` the kernel remembers (only
//!   `LOG`), plus `TSYNC` when a whole process is restored from its leader (below).
//!
//! So `prev` points to a newer filter, despite its name. Identical chains are stored once:
//! a filter is shared when its program, its flags and the filter installed after it are
//! all the same, so threads and processes with the same chain get the same position.
//!
//! The kernel hands the filters out only to a tracer, so every call here must come from
//! the thread that seized the task.

use std::collections::HashMap;
use std::io;

use criu_images::pb;

use crate::proc::ProcDir;
use crate::sys::{self, Pid};

const SECCOMP_MODE_STRICT: u32 = 1;
const SECCOMP_MODE_FILTER: u32 = 2;
const SECCOMP_FILTER_FLAG_TSYNC: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("thread {tid}: reading its seccomp mode: {source}")]
    Mode { tid: Pid, source: io::Error },
    #[error(
        "thread {tid} has seccomp filters, which only a dumper with CAP_SYS_ADMIN and no \
         seccomp filter of its own can read"
    )]
    Denied { tid: Pid },
    #[error("thread {tid}: reading seccomp filter {index}: {source}")]
    Filter {
        tid: Pid,
        index: u64,
        source: io::Error,
    },
    #[error(
        "thread {tid}: seccomp filter {index} hands syscalls to a supervisor \
         (SECCOMP_RET_USER_NOTIF), whose listener cannot be restored"
    )]
    UserNotif { tid: Pid, index: u64 },
    #[error("thread {tid}: reading the flags of seccomp filter {index}: {source}")]
    Metadata {
        tid: Pid,
        index: u64,
        source: io::Error,
    },
}

/// The two seccomp fields of a thread's `thread_core`, as CRIU fills them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadSeccomp {
    /// `SECCOMP_MODE_*`; unset when seccomp is off for the thread.
    pub seccomp_mode: Option<i32>,
    /// Position in `seccomp.img` of the first filter the thread installed (filter mode
    /// only); the others follow through `prev`.
    pub seccomp_filter: Option<u32>,
}

impl ThreadSeccomp {
    /// Sets the seccomp fields of `core` to these values.
    pub fn apply(&self, core: &mut pb::ThreadCoreEntry) {
        core.seccomp_mode = self.seccomp_mode;
        core.seccomp_filter = self.seccomp_filter;
    }
}

/// One installed filter, as the kernel gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Filter {
    /// Raw `struct sock_filter` array.
    program: Vec<u8>,
    /// `SECCOMP_FILTER_FLAG_*`.
    flags: u32,
}

/// What one thread had.
struct ThreadState {
    mode: u32,
    /// Filter mode only: oldest first.
    chain: Vec<Filter>,
}

/// The filters of every dumped thread, shared where identical.
#[derive(Debug, Default)]
pub struct SeccompTable {
    filters: Vec<pb::SeccompFilter>,
    /// (program, flags, position of the filter installed after it) -> position.
    known: HashMap<(Vec<u8>, u32, Option<u32>), u32>,
}

impl SeccompTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no filter was collected (seccomp.img then holds an empty entry).
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Collects the filters of one thread on its own and returns the value of its
    /// `thread_core.seccomp_filter`, the position of its first filter (`None` unless the
    /// thread is in filter mode). Call it on the tracer thread, with `tid`
    /// ptrace-stopped. For whole processes prefer `add_process`, which also does what
    /// CRIU does for threads sharing one chain.
    pub fn add_thread(&mut self, tid: Pid) -> Result<Option<u32>, SeccompError> {
        let state = read_thread(tid)?;
        Ok((state.mode == SECCOMP_MODE_FILTER).then(|| self.insert_chain(&state.chain)))
    }

    /// Collects the filters of every thread of a live process (`threads`: leader first,
    /// all ptrace-stopped by the calling thread) and returns each thread's seccomp fields.
    ///
    /// As CRIU does: when every thread runs the same chain, the chain is saved once, for
    /// the leader, with `SECCOMP_FILTER_FLAG_TSYNC` added to each filter, and the other
    /// threads are saved with seccomp off; restoring the leader's filters with TSYNC puts
    /// them on every thread again, as one shared chain. (The kernel cannot tell whether
    /// the threads got their filters through TSYNC or installed equal ones each; assuming
    /// TSYNC keeps later TSYNC calls of the program working after restore.)
    pub fn add_process(&mut self, threads: &[Pid]) -> Result<Vec<ThreadSeccomp>, SeccompError> {
        let mut states = Vec::with_capacity(threads.len());
        for &tid in threads {
            states.push(read_thread(tid)?);
        }
        let Some(leader) = states.first() else {
            return Ok(Vec::new());
        };
        // Flags do not count: the kernel does not report TSYNC, only LOG.
        let same_programs = |s: &ThreadState| {
            s.chain.len() == leader.chain.len()
                && s.chain
                    .iter()
                    .zip(&leader.chain)
                    .all(|(a, b)| a.program == b.program)
        };
        let shared = leader.mode == SECCOMP_MODE_FILTER
            && states
                .iter()
                .all(|s| s.mode == leader.mode && same_programs(s));
        if shared {
            let chain: Vec<Filter> = leader
                .chain
                .iter()
                .map(|f| Filter {
                    program: f.program.clone(),
                    flags: f.flags | SECCOMP_FILTER_FLAG_TSYNC,
                })
                .collect();
            let first = self.insert_chain(&chain);
            let mut out = vec![ThreadSeccomp::default(); threads.len()];
            out[0] = ThreadSeccomp {
                seccomp_mode: Some(pb::SeccompMode::Filter as i32),
                seccomp_filter: Some(first),
            };
            return Ok(out);
        }
        Ok(states
            .iter()
            .map(|s| match s.mode {
                0 => ThreadSeccomp::default(),
                SECCOMP_MODE_FILTER => ThreadSeccomp {
                    seccomp_mode: Some(pb::SeccompMode::Filter as i32),
                    seccomp_filter: Some(self.insert_chain(&s.chain)),
                },
                mode => ThreadSeccomp {
                    seccomp_mode: Some(mode as i32),
                    seccomp_filter: None,
                },
            })
            .collect())
    }

    /// The `seccomp.img` entry.
    pub fn entry(&self) -> pb::SeccompEntry {
        pb::SeccompEntry {
            seccomp_filters: self.filters.clone(),
        }
    }

    /// Stores a chain (oldest first), sharing filters already stored; returns the
    /// position of its oldest filter, the thread's `seccomp_filter`. `chain` is never
    /// empty. Filters are written newest first, as CRIU does, so that each one's `prev`
    /// (the filter installed after it) is known when it is written.
    fn insert_chain(&mut self, chain: &[Filter]) -> u32 {
        let mut newer = None;
        for f in chain.iter().rev() {
            let key = (f.program.clone(), f.flags, newer);
            let pos = match self.known.get(&key) {
                Some(&pos) => pos,
                None => {
                    let pos = self.filters.len() as u32;
                    self.filters.push(pb::SeccompFilter {
                        filter: f.program.clone(),
                        prev: newer,
                        flags: Some(f.flags),
                    });
                    self.known.insert(key, pos);
                    pos
                }
            };
            newer = Some(pos);
        }
        newer.expect("a thread in filter mode has at least one filter")
    }
}

/// The ptrace options under which syscalls can be injected into `tid`: a thread under
/// seccomp (strict mode, or filters that may forbid what injection calls) needs
/// PTRACE_O_SUSPEND_SECCOMP, so the injected syscalls are not filtered (strict mode would
/// kill the task at the first one). Set only while the thread is stopped for good, so none
/// of its own code ever runs unfiltered; the suspension ends when it is detached. Every
/// PTRACE_SETOPTIONS of an injection stage replaces the options, so each one ORs these in.
pub fn injection_options(tid: Pid) -> libc::c_int {
    injection_options_for(crate::proc::seccomp_mode(tid))
}

/// [`injection_options`] for a thread whose seccomp mode (`Seccomp:` of its status) was
/// read already.
pub fn injection_options_for(seccomp_mode: Option<u32>) -> libc::c_int {
    // Unsure (an unreadable status) counts as under seccomp: suspending it for a task
    // that has none changes nothing.
    if seccomp_mode == Some(0) {
        0
    } else {
        sys::PTRACE_O_SUSPEND_SECCOMP
    }
}

/// The seccomp mode of a thread and, in filter mode, its chain (oldest first).
fn read_thread(tid: Pid) -> Result<ThreadState, SeccompError> {
    let mode = ProcDir::open(tid)
        .and_then(|d| d.status())
        .map_err(|source| SeccompError::Mode { tid, source })?
        .seccomp;
    if mode != SECCOMP_MODE_FILTER {
        debug_assert!(mode == 0 || mode == SECCOMP_MODE_STRICT);
        return Ok(ThreadState {
            mode,
            chain: Vec::new(),
        });
    }
    // Index 0 is the first filter installed; ENOENT past the most recent.
    let mut chain = Vec::new();
    let mut metadata = true;
    for index in 0.. {
        let program = match sys::ptrace_seccomp_get_filter(tid, index) {
            Ok(p) => p,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && index > 0 => break,
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                return Err(SeccompError::Denied { tid })
            }
            Err(source) => return Err(SeccompError::Filter { tid, index, source }),
        };
        let flags = if metadata {
            match sys::ptrace_seccomp_get_metadata(tid, index) {
                Ok(flags) => flags as u32,
                // A kernel older than 4.16 keeps no flags to report.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    metadata = false;
                    0
                }
                Err(source) => return Err(SeccompError::Metadata { tid, index, source }),
            }
        } else {
            0
        };
        if returns_user_notif(&program) {
            return Err(SeccompError::UserNotif { tid, index });
        }
        chain.push(Filter { program, flags });
    }
    Ok(ThreadState { mode, chain })
}

/// Whether a classic BPF program can return SECCOMP_RET_USER_NOTIF: a `ret #k`
/// instruction with that action. The restored filter would have no listener (the
/// supervisor holds it, outside the tree), so its calls would fail with ENOSYS instead.
fn returns_user_notif(program: &[u8]) -> bool {
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ACTION_FULL: u32 = 0xffff_0000;
    const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
    program.chunks_exact(sys::SOCK_FILTER_SIZE).any(|insn| {
        // struct sock_filter: u16 code, u8 jt, u8 jf, u32 k.
        let code = u16::from_le_bytes([insn[0], insn[1]]);
        let k = u32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
        code == BPF_RET_K && k & SECCOMP_RET_ACTION_FULL == SECCOMP_RET_USER_NOTIF
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(byte: u8, flags: u32) -> Filter {
        Filter {
            program: vec![byte; sys::SOCK_FILTER_SIZE],
            flags,
        }
    }

    /// The programs in the order CRIU's restore installs them: from the thread's
    /// `seccomp_filter`, following `prev`.
    fn install_order(entry: &pb::SeccompEntry, start: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = Some(start);
        while let Some(pos) = at {
            let f = &entry.seccomp_filters[pos as usize];
            out.push(f.filter[0]);
            at = f.prev;
        }
        out
    }

    #[test]
    fn chains_are_stored_newest_first_and_restored_oldest_first() {
        let mut t = SeccompTable::new();
        let start = t.insert_chain(&[filter(1, 0), filter(2, 2), filter(3, 0)]);
        assert_eq!(start, 2);
        let e = t.entry();
        let programs: Vec<_> = e.seccomp_filters.iter().map(|f| f.filter[0]).collect();
        assert_eq!(programs, vec![3, 2, 1]);
        let prevs: Vec<_> = e.seccomp_filters.iter().map(|f| f.prev).collect();
        assert_eq!(prevs, vec![None, Some(0), Some(1)]);
        assert_eq!(e.seccomp_filters[1].flags, Some(2));
        assert_eq!(e.seccomp_filters[0].flags, Some(0));
        assert_eq!(install_order(&e, start), vec![1, 2, 3]);
    }

    #[test]
    fn identical_chains_and_suffixes_are_shared() {
        let mut t = SeccompTable::new();
        let a = t.insert_chain(&[filter(1, 0), filter(2, 0)]);
        let b = t.insert_chain(&[filter(1, 0), filter(2, 0)]);
        assert_eq!((a, b), (1, 1));
        // One more filter below the same chain: only that one is new.
        let c = t.insert_chain(&[filter(5, 0), filter(1, 0), filter(2, 0)]);
        assert_eq!(c, 2);
        assert_eq!(t.entry().seccomp_filters[2].prev, Some(1));
        // The same program followed by another filter is another filter.
        let d = t.insert_chain(&[filter(1, 0), filter(3, 0)]);
        assert_eq!(d, 4);
        // Flags count too.
        let e = t.insert_chain(&[filter(2, 2)]);
        assert_eq!(e, 5);
        let entry = t.entry();
        assert_eq!(entry.seccomp_filters.len(), 6);
        assert_eq!(install_order(&entry, a), vec![1, 2]);
        assert_eq!(install_order(&entry, c), vec![5, 1, 2]);
        assert_eq!(install_order(&entry, d), vec![1, 3]);
        assert_eq!(install_order(&entry, e), vec![2]);
    }

    #[test]
    fn user_notification_returns_are_found() {
        let insn = |code: u16, k: u32| {
            let mut b = code.to_le_bytes().to_vec();
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(&k.to_le_bytes());
            b
        };
        let allow = [insn(0x20, 0), insn(0x06, 0x7fff_0000)].concat();
        assert!(!returns_user_notif(&allow));
        let notif = [
            insn(0x20, 0),
            insn(0x06, 0x7fc0_0000),
            insn(0x06, 0x7fff_0000),
        ]
        .concat();
        assert!(returns_user_notif(&notif));
        // The same constant loaded, not returned, is no return.
        assert!(!returns_user_notif(&insn(0x00, 0x7fc0_0000)));
    }

    #[test]
    fn sets_thread_core_fields() {
        let mut core = pb::ThreadCoreEntry::default();
        ThreadSeccomp {
            seccomp_mode: Some(2),
            seccomp_filter: Some(4),
        }
        .apply(&mut core);
        assert_eq!((core.seccomp_mode, core.seccomp_filter), (Some(2), Some(4)));
    }
}
