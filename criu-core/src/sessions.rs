//! Which sessions and process groups a restore can rebuild. Dump (before it freezes
//! anything) and restore (before it creates anything) ask the same question here, so a
//! tree the restore would refuse is refused at dump, while it still runs.
//!
//! A restored task joins its session and group right after it is cloned: it calls
//! setsid() when it leads its session, and setpgid() to join its group. That works when
//! - the session's leader is in the tree (or the session is the one the tree is restored
//!   into: the root's own, or the caller's for a shell job), because a task inherits the
//!   session of the task that clones it: a session whose leader is gone cannot be
//!   entered again;
//! - the group's leader is in the tree, or the group's leader is gone but the group is
//!   in the root's session: a helper clone of the root with the group's id leads it
//!   while its members join (the root cannot clone with CLONE_PARENT as the init of a
//!   new pid namespace, so not there).

/// The ids of one task of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskIds {
    pub pid: u32,
    pub pgid: u32,
    pub sid: u32,
}

/// The process groups whose leader is gone and that a helper must hold, or what cannot
/// be rebuilt. `tasks` starts with the root (zombies included); `outside` are a session
/// and a group outside the tree that the tree may be in (a shell job's, which the
/// restore gives the caller's); `new_pid_ns`: the root is the init of a new pid
/// namespace.
pub fn leaderless_groups(
    tasks: &[TaskIds],
    outside: &[u32],
    new_pid_ns: bool,
) -> Result<Vec<u32>, String> {
    let Some(root) = tasks.first() else {
        return Ok(Vec::new());
    };
    let in_tree = |id: u32| tasks.iter().any(|t| t.pid == id);
    let mut out = Vec::new();
    for t in tasks {
        if !in_tree(t.sid) && t.sid != root.sid && !outside.contains(&t.sid) {
            return Err(format!(
                "process {} in session {}, whose leader is gone",
                t.pid, t.sid
            ));
        }
        if in_tree(t.pgid) || outside.contains(&t.pgid) || out.contains(&t.pgid) {
            continue;
        }
        if t.sid != root.sid || new_pid_ns {
            return Err(format!(
                "process group {} (its leader is gone) outside the root's session or in \
                 a new pid namespace",
                t.pgid
            ));
        }
        out.push(t.pgid);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pid: u32, pgid: u32, sid: u32) -> TaskIds {
        TaskIds { pid, pgid, sid }
    }

    #[test]
    fn groups_led_in_the_tree_need_nothing() {
        let tasks = [t(10, 10, 10), t(11, 10, 10), t(12, 12, 10), t(13, 12, 10)];
        assert_eq!(leaderless_groups(&tasks, &[], false), Ok(vec![]));
    }

    #[test]
    fn a_group_whose_leader_is_gone_gets_a_holder_once() {
        let tasks = [t(10, 10, 10), t(12, 11, 10), t(13, 11, 10)];
        assert_eq!(leaderless_groups(&tasks, &[], false), Ok(vec![11]));
        assert!(leaderless_groups(&tasks, &[], true).is_err());
    }

    #[test]
    fn a_session_whose_leader_is_gone_is_refused() {
        // 12 made its own session, forked 13 into it, and exited.
        let tasks = [t(10, 10, 10), t(13, 13, 12)];
        let e = leaderless_groups(&tasks, &[], false).unwrap_err();
        assert!(e.contains("session 12"), "{e}");
        // Also when only its group survives.
        let tasks = [t(10, 10, 10), t(13, 12, 12)];
        assert!(leaderless_groups(&tasks, &[], false).is_err());
    }

    #[test]
    fn a_shell_jobs_session_and_group_are_outside_the_tree() {
        let tasks = [t(20, 19, 5), t(21, 19, 5)];
        assert_eq!(leaderless_groups(&tasks, &[5, 19], false), Ok(vec![]));
    }
}
