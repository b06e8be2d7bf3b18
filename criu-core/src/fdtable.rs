//! Fd tables shared between processes (`clone(CLONE_FILES)` without `CLONE_THREAD`).
//!
//! The images name each process's table by its `files_id`; processes with the same id
//! share one table. A restore can only rebuild the sharing the way it came about: a
//! process is cloned with `CLONE_FILES` from its parent. So a group of processes sharing
//! a table must hang together through parent links: every member but the first (its
//! topmost) has its parent in the group. Dump refuses any other sharing, before the
//! tree is changed, and restore refuses images that hold it.

use std::collections::HashMap;

/// A live process as the sharing check sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdTableUser {
    pub pid: i32,
    pub ppid: i32,
    pub files_id: u32,
}

/// A process that shares its fd table with others of the tree but not with its parent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "process {pid} shares its fd table with process {with}, but not with its parent {ppid}: \
     such sharing cannot be rebuilt"
)]
pub struct UnrebuildableSharing {
    pub pid: i32,
    pub ppid: i32,
    pub with: i32,
}

/// Checks that every shared fd table of `tasks` can be rebuilt by cloning with
/// `CLONE_FILES` from the parent.
pub fn check_sharing(tasks: &[FdTableUser]) -> Result<(), UnrebuildableSharing> {
    let by_pid: HashMap<i32, &FdTableUser> = tasks.iter().map(|t| (t.pid, t)).collect();
    let mut members: HashMap<u32, Vec<&FdTableUser>> = HashMap::new();
    for t in tasks {
        members.entry(t.files_id).or_default().push(t);
    }
    for group in members.values().filter(|g| g.len() > 1) {
        // Exactly one member of a group may have its parent outside it: the one the
        // others descend from.
        let tops: Vec<&&FdTableUser> = group
            .iter()
            .filter(|t| by_pid.get(&t.ppid).is_none_or(|p| p.files_id != t.files_id))
            .collect();
        if let [_, second, ..] = tops.as_slice() {
            return Err(UnrebuildableSharing {
                pid: second.pid,
                ppid: second.ppid,
                with: tops[0].pid,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pid: i32, ppid: i32, files_id: u32) -> FdTableUser {
        FdTableUser {
            pid,
            ppid,
            files_id,
        }
    }

    #[test]
    fn a_table_shared_down_parent_links_is_accepted() {
        // 1 shares with its children 2 and 3, and 2 with its child 4; 5 has its own.
        let tree = [
            t(1, 0, 10),
            t(2, 1, 10),
            t(3, 1, 10),
            t(4, 2, 10),
            t(5, 2, 11),
        ];
        assert_eq!(check_sharing(&tree), Ok(()));
    }

    #[test]
    fn a_table_shared_between_siblings_only_is_refused() {
        // 2 and 3 share a table their parent 1 does not have.
        let tree = [t(1, 0, 10), t(2, 1, 11), t(3, 1, 11)];
        let err = check_sharing(&tree).unwrap_err();
        assert!([2, 3].contains(&err.pid) && [2, 3].contains(&err.with));
        assert_ne!(err.pid, err.with);
        assert!(err.to_string().contains("not with its parent 1"), "{err}");
    }

    #[test]
    fn a_grandchild_sharing_across_a_gap_is_refused() {
        // 3 shares 1's table, but its parent 2 has a table of its own.
        let tree = [t(1, 0, 10), t(2, 1, 11), t(3, 2, 10)];
        assert!(check_sharing(&tree).is_err());
    }
}
