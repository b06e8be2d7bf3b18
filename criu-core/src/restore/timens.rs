//! The tree's time namespace: loaded in stage 1, made in stage 2.
//!
//! As CRIU does, every restored tree gets a new time namespace whose CLOCK_MONOTONIC and
//! CLOCK_BOOTTIME go on from the values the dump recorded (`timens-ID.img` for a tree
//! that had a namespace of its own, `timens-0.img` for one in the dumper's), so the time
//! between dump and restore does not show as a jump of those clocks: timeouts, absolute
//! sleeps and rate computations of the program carry on as if it had not stopped. A dump
//! without the image (an old CRIU's) leaves the tree in ours, as CRIU does;
//! `RestoreOptions::new_time_ns` off (`--no-timens`) does the same for any dump.
//!
//! The namespace must get its offsets before any task enters it. The root, still a
//! single-threaded copy of the restorer, unshares one (only its future children would be
//! in it), we write the offsets, and it enters the namespace itself (setns(2) needs a
//! single-threaded caller); everything it clones afterwards is born in it. Entering
//! makes the kernel drop the root's `[vvar]` pages, so the next access maps those of the
//! namespace: the vDSO shows the namespace's clocks from the first read, and stage 4
//! moves these mappings as it moves any `[vvar]`.

use super::*;
use crate::timens::{kernel_has_time_ns, Clocks};

/// Stage 1: the clocks the tree's new time namespace starts from, or `None` when the
/// tree stays in ours. Refused: processes in more than one time namespace (a dump never
/// makes those), and a tree with a namespace of its own on a kernel without them.
pub(super) fn load(
    opts: &RestoreOptions,
    procs: &[Images],
    host: Option<&pb::TaskKobjIdsEntry>,
) -> Result<Option<Clocks>, RestoreError> {
    let root = &procs[0];
    if let Some(p) = procs
        .iter()
        .find(|p| p.ids.time_ns_id != root.ids.time_ns_id)
    {
        return Err(unsupported(format!(
            "process {}: a time namespace other than the root's (nested time namespaces)",
            p.pid
        )));
    }
    if !opts.new_time_ns {
        tracing::info!("--no-timens: the tree gets the host's clocks");
        return Ok(None);
    }
    let own = match (root.ids.time_ns_id, host.and_then(|h| h.time_ns_id)) {
        (Some(tree), Some(dumper)) if tree != dumper => Some(tree),
        _ => None,
    };
    let image = format!("timens-{}.img", own.unwrap_or(0));
    if !opts.images_dir.join(&image).exists() {
        if own.is_some() {
            return Err(RestoreError::BadImage {
                image,
                what: "is missing, though the tree had a time namespace of its own".into(),
            });
        }
        tracing::info!("no {image}: the clocks were not dumped, the tree gets the host's");
        return Ok(None);
    }
    if !kernel_has_time_ns() {
        if own.is_some() {
            return Err(RestoreError::Mismatch {
                image,
                what: "the tree had a time namespace of its own, and this kernel has no \
                       time namespaces (--no-timens restores it with the host's clocks)"
                    .into(),
            });
        }
        tracing::info!("this kernel has no time namespaces: the tree gets the host's clocks");
        return Ok(None);
    }
    let entry: pb::TimensEntry = read_one(&opts.images_dir, &image)?;
    Clocks::from_entry(&entry)
        .map(Some)
        .map_err(|what| RestoreError::BadImage { image, what })
}

/// Stage 2, in the freshly cloned root (our number `root`) before it enters any other
/// namespace or clones anyone: a new time namespace whose clocks read `dumped` now, and
/// the root in it. Returns the offsets it got.
///
/// The namespace is handed to the root as a duplicate of our fd of it (through
/// `restorer_pidfd`, the task's number of our pidfd or courier, see `give_fd`): the root
/// may already be in a mount namespace without our /proc (a nested root, tree.rs).
pub(super) fn enter_new(
    root: Pid,
    gadget: u64,
    restorer_pidfd: u64,
    dumped: Clocks,
) -> std::io::Result<Clocks> {
    let mut inj = Injector::new(root, gadget)?;
    let scratch = inj.scratch(4096)?;
    inj.syscall_ok(
        "unshare(CLONE_NEWTIME)",
        libc::SYS_unshare,
        [libc::CLONE_NEWTIME as u64, 0, 0, 0, 0, 0],
    )?;
    // The new namespace starts with the offsets of the one the root was born in (which
    // is the namespace our children get, not necessarily ours), and the root's clocks
    // are read there: their difference is the host's clocks, whatever our own
    // namespace is.
    let start = Clocks::offsets_of(root)?;
    let host = clocks_in(&mut inj, scratch)? - start;
    let offsets = dumped - host;
    let path = format!("/proc/{}/timens_offsets", root.0);
    std::fs::write(&path, offsets.offsets_text()).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("writing {:?} to {path}: {e}", offsets.offsets_text()),
        )
    })?;
    let ns = File::open(format!("/proc/{}/ns/time_for_children", root.0))?;
    let fd = give_fd(&mut inj, restorer_pidfd, ns.as_raw_fd())?;
    let entered = inj.syscall_ok(
        "setns(CLONE_NEWTIME)",
        libc::SYS_setns,
        [fd, libc::CLONE_NEWTIME as u64, 0, 0, 0, 0],
    );
    inj.syscall_ok("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    entered?;
    inj.finish()?;
    Ok(offsets)
}

/// CLOCK_MONOTONIC and CLOCK_BOOTTIME as the task behind `inj` reads them (by system
/// call, into `scratch`).
fn clocks_in(inj: &mut Injector, scratch: u64) -> std::io::Result<Clocks> {
    let mut read = |clock: libc::clockid_t| -> std::io::Result<i128> {
        inj.syscall_ok(
            "clock_gettime",
            libc::SYS_clock_gettime,
            [clock as u64, scratch, 0, 0, 0, 0],
        )?;
        let raw = inj.read(scratch, 16)?;
        let word = |i: usize| i64::from_le_bytes(raw[i..i + 8].try_into().unwrap_or_default());
        Ok(i128::from(word(0)) * crate::timens::NSEC_PER_SEC + i128::from(word(8)))
    };
    Ok(Clocks {
        monotonic: read(libc::CLOCK_MONOTONIC)?,
        boottime: read(libc::CLOCK_BOOTTIME)?,
    })
}
