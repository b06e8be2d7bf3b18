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
//! - or, in a new pid namespace, the session's leader is gone but the tasks at the top
//!   of the session are the root's children (the leader forked them and exited, so they
//!   went to the namespace's init: a daemon that forks twice). A helper child of the
//!   root with the session's id makes the session again, forks them, and is ended,
//!   which hands them to the root. They are born in the helper's group, the session's
//!   number: only they and their descendants that never left it may be in that group;
//! - the group's leader is in the tree, or the group's leader is gone but the group is
//!   in the root's session or in one whose leader lives in the tree: a helper with the
//!   group's id, cloned by the root or by that leader, leads it while its members join.

/// The ids of one task of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskIds {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    /// A zombie: it clones nothing at restore.
    pub zombie: bool,
}

/// A process group whose leader is gone, in session `sid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldGroup {
    pub pgid: u32,
    pub sid: u32,
}

/// What the restore makes for sessions and groups whose leader is gone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leaderless {
    /// Groups a helper holds while their members join: the root's, or their session
    /// leader's child.
    pub groups: Vec<HeldGroup>,
    /// Sessions (of a new pid namespace) a helper makes again and forks the tasks at
    /// their top into: the root's children of the session.
    pub sessions: Vec<u32>,
}

/// The sessions and groups whose leader is gone and that helpers must make, or what
/// cannot be rebuilt. `tasks` starts with the root (zombies included); `outside` are a
/// session and a group outside the tree that the tree may be in (a shell job's, which
/// the restore gives the caller's); `new_pid_ns`: the root is the init of a new pid
/// namespace.
pub fn leaderless(
    tasks: &[TaskIds],
    outside: &[u32],
    new_pid_ns: bool,
) -> Result<Leaderless, String> {
    let Some(root) = tasks.first() else {
        return Ok(Leaderless::default());
    };
    let task = |id: u32| tasks.iter().find(|t| t.pid == id);
    let mut out = Leaderless::default();
    for t in tasks {
        let session_made = task(t.sid).is_some() || t.sid == root.sid || outside.contains(&t.sid);
        if !session_made {
            remade_session(t, root, &task, new_pid_ns)?;
            if !out.sessions.contains(&t.sid) {
                out.sessions.push(t.sid);
            }
            if t.pgid == t.sid {
                continue;
            }
        }
        let held = out.groups.iter().any(|g| g.pgid == t.pgid);
        if task(t.pgid).is_some() || outside.contains(&t.pgid) || held {
            continue;
        }
        let live_leader = task(t.sid).is_some_and(|l| !l.zombie);
        if t.sid != root.sid && !live_leader {
            return Err(format!(
                "process group {} (its leader is gone) in session {}, which is not the \
                 root's and whose leader is not a live process of the tree",
                t.pgid, t.sid
            ));
        }
        out.groups.push(HeldGroup {
            pgid: t.pgid,
            sid: t.sid,
        });
    }
    Ok(out)
}

/// Whether task `t`, whose session's leader is gone, can be put back in it by a helper
/// of the root (see the module's comment).
fn remade_session<'a>(
    t: &TaskIds,
    root: &TaskIds,
    task: &dyn Fn(u32) -> Option<&'a TaskIds>,
    new_pid_ns: bool,
) -> Result<(), String> {
    let gone = || {
        format!(
            "process {} in session {}, whose leader is gone",
            t.pid, t.sid
        )
    };
    if !new_pid_ns {
        return Err(gone());
    }
    if t.ppid == root.pid {
        return Ok(());
    }
    // Forked by its parent, in the session already; in the session's group only if the
    // parent still is.
    match task(t.ppid) {
        Some(parent) if parent.sid == t.sid && (t.pgid != t.sid || parent.pgid == t.sid) => Ok(()),
        _ => Err(format!(
            "{}, and it is neither the child of the pid namespace's init nor in its \
             parent's session and group",
            gone()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pid: u32, ppid: u32, pgid: u32, sid: u32) -> TaskIds {
        TaskIds {
            pid,
            ppid,
            pgid,
            sid,
            zombie: false,
        }
    }

    /// Held groups, as (pgid, sid).
    fn groups(groups: &[(u32, u32)]) -> Leaderless {
        Leaderless {
            groups: groups
                .iter()
                .map(|&(pgid, sid)| HeldGroup { pgid, sid })
                .collect(),
            sessions: Vec::new(),
        }
    }

    #[test]
    fn groups_led_in_the_tree_need_nothing() {
        let tasks = [
            t(10, 1, 10, 10),
            t(11, 10, 10, 10),
            t(12, 10, 12, 10),
            t(13, 12, 12, 10),
        ];
        assert_eq!(leaderless(&tasks, &[], false), Ok(groups(&[])));
    }

    #[test]
    fn a_group_whose_leader_is_gone_gets_a_holder_once() {
        let tasks = [t(10, 1, 10, 10), t(12, 10, 11, 10), t(13, 10, 11, 10)];
        assert_eq!(leaderless(&tasks, &[], false), Ok(groups(&[(11, 10)])));
        assert_eq!(leaderless(&tasks, &[], true), Ok(groups(&[(11, 10)])));
        // In another session its live leader holds it.
        let tasks = [t(10, 1, 10, 10), t(12, 10, 12, 12), t(13, 12, 11, 12)];
        assert_eq!(leaderless(&tasks, &[], false), Ok(groups(&[(11, 12)])));
        // Not when that leader is a zombie.
        let mut zombie_leader = t(12, 10, 12, 12);
        zombie_leader.zombie = true;
        let tasks = [t(10, 1, 10, 10), zombie_leader, t(13, 12, 11, 12)];
        assert!(leaderless(&tasks, &[], false).is_err());
    }

    #[test]
    fn a_session_whose_leader_is_gone_is_refused_outside_a_new_pid_namespace() {
        // 12 made its own session, forked 13 into it, and exited.
        let tasks = [t(10, 1, 10, 10), t(13, 10, 13, 12)];
        let e = leaderless(&tasks, &[], false).unwrap_err();
        assert!(e.contains("session 12"), "{e}");
        // Also when only its group survives.
        let tasks = [t(10, 1, 10, 10), t(13, 10, 12, 12)];
        assert!(leaderless(&tasks, &[], false).is_err());
    }

    #[test]
    fn the_inits_orphans_get_their_gone_leaders_session_back() {
        // A daemon that forked twice: 6 made its session, forked 7 and exited; 7 went
        // to the init, forked 8 (its group) and 9 (which made a group of its own).
        let tasks = [
            t(1, 0, 1, 1),
            t(7, 1, 6, 6),
            t(8, 7, 6, 6),
            t(9, 7, 9, 6),
            t(10, 9, 9, 6),
        ];
        let made = leaderless(&tasks, &[], true).unwrap();
        assert_eq!(made.sessions, vec![6]);
        assert!(made.groups.is_empty());
    }

    #[test]
    fn a_gone_leaders_session_is_refused_where_a_helper_cannot_make_it() {
        // 7 is not the init's child: its parent 5 is in another session.
        let tasks = [t(1, 0, 1, 1), t(5, 1, 5, 1), t(7, 5, 6, 6)];
        let e = leaderless(&tasks, &[], true).unwrap_err();
        assert!(e.contains("session 6"), "{e}");
        // 9 is in the session's group, which its parent 8 had left before forking it.
        let tasks = [t(1, 0, 1, 1), t(8, 1, 8, 6), t(9, 8, 6, 6)];
        assert!(leaderless(&tasks, &[], true).is_err());
        // A group of the session whose leader is gone too.
        let tasks = [t(1, 0, 1, 1), t(8, 1, 5, 6)];
        assert!(leaderless(&tasks, &[], true).is_err());
    }

    #[test]
    fn a_shell_jobs_session_and_group_are_outside_the_tree() {
        let tasks = [t(20, 3, 19, 5), t(21, 20, 19, 5)];
        assert_eq!(leaderless(&tasks, &[5, 19], false), Ok(groups(&[])));
    }
}
