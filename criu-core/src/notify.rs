//! The points of a dump or a restore at which the caller is told, and may stop the work:
//! CRIU's action scripts, which its RPC service turns into NOTIFY messages (runc marks a
//! container checkpointed on `post-dump`, and takes the restored init on `post-restore`).
//!
//! The engine calls the front-end's notifier at each point; an error from it fails the
//! dump (the tree resumes) or the restore (the tree is killed), as a failing script does
//! in CRIU. Points after the tree runs again (`post-resume`) only report.

use std::fmt;
use std::sync::Arc;

use crate::sys::Pid;

/// One point of a dump or a restore, by CRIU's script name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A dump starts: nothing is frozen yet.
    PreDump,
    /// The tree is frozen and has its own network namespace: the caller may cut it off.
    NetworkLock,
    /// The images are written; the tree is still frozen. A refusal resumes it.
    PostDump,
    /// The network of a tree with its own network namespace may flow again.
    NetworkUnlock,
    /// A restore starts: no task exists yet.
    PreRestore,
    /// The root task exists in its namespaces (its pid, as we see it).
    SetupNamespaces(Pid),
    /// The namespaces are set up; the rest of the tree is built next.
    PostSetupNamespaces,
    /// The whole tree is rebuilt and still stopped (the root's pid, as we see it).
    PostRestore(Pid),
    /// The tree is about to run.
    PreResume,
    /// The tree runs.
    PostResume,
    /// A new pty was made for a terminal whose master was outside the tree (CRIU's
    /// `orphan_pts_master`): its master, our fd, goes to the caller with the message.
    OrphanPtsMaster(std::os::fd::RawFd),
}

impl Event {
    /// CRIU's name of the script (and of the RPC notification) for this point.
    pub fn script_name(self) -> &'static str {
        match self {
            Event::PreDump => "pre-dump",
            Event::NetworkLock => "network-lock",
            Event::PostDump => "post-dump",
            Event::NetworkUnlock => "network-unlock",
            Event::PreRestore => "pre-restore",
            Event::SetupNamespaces(_) => "setup-namespaces",
            Event::PostSetupNamespaces => "post-setup-namespaces",
            Event::PostRestore(_) => "post-restore",
            Event::PreResume => "pre-resume",
            Event::PostResume => "post-resume",
            Event::OrphanPtsMaster(_) => "orphan-pts-master",
        }
    }

    /// The fd CRIU sends with this notification (SCM_RIGHTS), if any.
    pub fn fd(self) -> Option<std::os::fd::RawFd> {
        match self {
            Event::OrphanPtsMaster(fd) => Some(fd),
            _ => None,
        }
    }

    /// The pid CRIU sends with this notification (the root's), if any.
    pub fn pid(self) -> Option<Pid> {
        match self {
            Event::SetupNamespaces(pid) | Event::PostRestore(pid) => Some(pid),
            _ => None,
        }
    }
}

/// The caller said no at a notification point (or could not be asked).
#[derive(Debug, thiserror::Error)]
#[error("the caller refused the {script} notification: {why}")]
pub struct NotifyError {
    pub script: &'static str,
    pub why: String,
}

type Callback = dyn Fn(Event) -> Result<(), String> + Send + Sync;

/// Whom to tell at each point; by default nobody.
#[derive(Clone, Default)]
pub struct Notifier(Option<Arc<Callback>>);

impl Notifier {
    /// A notifier that calls `callback` at each point; an `Err` stops the work.
    pub fn new(callback: impl Fn(Event) -> Result<(), String> + Send + Sync + 'static) -> Self {
        Notifier(Some(Arc::new(callback)))
    }

    /// Whether anybody is told (a caller over the RPC).
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Tells the caller that `event` is reached and waits for its answer.
    pub fn send(&self, event: Event) -> Result<(), NotifyError> {
        let Some(callback) = &self.0 else {
            return Ok(());
        };
        tracing::info!(script = event.script_name(), "notifying the caller");
        callback(event).map_err(|why| NotifyError {
            script: event.script_name(),
            why,
        })
    }

    /// As `send`, for points where the work cannot be undone any more: a refusal is
    /// only logged.
    pub fn report(&self, event: Event) {
        if let Err(e) = self.send(event) {
            tracing::warn!("{e} (too late to stop: ignored)");
        }
    }
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Notifier(set)"
        } else {
            "Notifier(none)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn names_are_criu_script_names_and_refusals_carry_them() {
        assert_eq!(Event::SetupNamespaces(Pid(7)).pid(), Some(Pid(7)));
        assert_eq!(Event::PostDump.pid(), None);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let notifier = Notifier::new(move |e| {
            log.lock().unwrap().push(e.script_name());
            if e == Event::PostDump {
                Err("no".into())
            } else {
                Ok(())
            }
        });
        assert!(notifier.send(Event::PreDump).is_ok());
        let err = notifier.send(Event::PostDump).unwrap_err();
        assert_eq!(err.script, "post-dump");
        notifier.report(Event::PostResume);
        assert_eq!(
            *seen.lock().unwrap(),
            ["pre-dump", "post-dump", "post-resume"]
        );
        assert!(Notifier::default().send(Event::PostDump).is_ok());
    }
}
