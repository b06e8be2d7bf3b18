//! The tree's cgroup namespace (`--manage-cgroups`): recorded as a prefix of the
//! root's cgroup paths (see `cgroups/dump.rs`), made again by the root before it
//! clones anyone, so that every task inherits it.

use super::*;

pub(super) use crate::cgroups::restore::CgroupRestore;

/// The root (our number `child`, still a copy of the restorer) goes into the roots
/// of its cgroup namespace and unshares a new one there, when its set records one.
/// Every task is moved into its own cgroups (below those roots) at the end, through
/// the yard, whose paths are the restorer's view and so unaffected.
pub(super) fn enter_cgroup_namespace(
    cg: &CgroupRestore,
    root: &Images,
    child: Pid,
    gadget: u64,
) -> Result<(), RestoreError> {
    let set = crate::cgroups::restore::set_of(&root.core);
    if !cg.enter_cgns_roots(child, set)? {
        return Ok(());
    }
    let mut inj = Injector::new(child, gadget).map_err(terr(root.pid, "starting injection"))?;
    inj.syscall_ok(
        "unshare(CLONE_NEWCGROUP)",
        libc::SYS_unshare,
        [libc::CLONE_NEWCGROUP as u64, 0, 0, 0, 0, 0],
    )
    .and_then(|_| inj.finish())
    .map_err(terr(root.pid, "making its cgroup namespace"))?;
    tracing::debug!(%child, set, "new cgroup namespace");
    Ok(())
}
