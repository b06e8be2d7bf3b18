//! The whole-namespace lock of a tree with a network namespace of its own, taken
//! before any of its connections is seen (see `FileTable::lock_network_namespace`).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::{DumpState, FileError, NetworkLock};
use crate::sys;

impl DumpState {
    /// Locks the network namespace `pid` lives in, whole (see
    /// `FileTable::lock_network_namespace`); nothing when a lock is made already.
    pub(in crate::files) fn lock_namespace(&mut self, pid: sys::Pid) -> Result<(), FileError> {
        if self.lock.is_some() {
            return Ok(());
        }
        let link = PathBuf::from(format!("/proc/{}/ns/net", pid.0));
        let ns: OwnedFd = std::fs::File::open(&link)
            .map_err(|source| FileError::Path {
                path: link.clone(),
                what: "opening the tree's network namespace to lock it",
                source,
            })?
            .into();
        let path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            ns.as_raw_fd()
        ));
        self.watch_namespace_lock(&link)?;
        let lock =
            NetworkLock::namespace(self.opts.lock, &self.opts.run_id, path).map_err(|e| {
                FileError::UnsupportedPath {
                    path: link,
                    kind: format!("the tree's network namespace: it could not be locked: {e}"),
                }
            })?;
        self.lock_ns = Some(ns);
        self.lock = Some(lock);
        Ok(())
    }

    /// Tells the watchdog (forked now if need be) how to lift a lock of the namespace
    /// `link` names, before it is made: a dumper killed outright leaves none behind.
    fn watch_namespace_lock(&mut self, link: &Path) -> Result<(), FileError> {
        let io = |what: &'static str| {
            let path = link.to_owned();
            move |source| FileError::Path { path, what, source }
        };
        if self.watchdog.is_none() {
            let me = sys::pidfd_open(sys::Pid(std::process::id() as i32))
                .map_err(io("opening a pidfd of the dumper"))?;
            let dog =
                sys::TcpWatchdog::spawn(me.as_fd()).map_err(io("forking the TCP watchdog"))?;
            self.watchdog = Some(dog);
        }
        let dog = self.watchdog.as_ref().expect("forked above");
        for argv in NetworkLock::namespace_undo_commands(self.opts.lock, &self.opts.run_id, link) {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            dog.on_death_run(&argv)
                .map_err(io("telling the TCP watchdog how to lift the lock"))?;
        }
        Ok(())
    }
}
