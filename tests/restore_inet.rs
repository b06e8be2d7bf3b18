//! IP socket states found by CRIU's own test suite (issue 10: the dump succeeded, killed
//! the program, and the restore then failed): a UDP socket bound to an address that is
//! not local with IP_FREEBIND set then cleared (zdtm sk-freebind-false), and the two
//! ends of a TCP connection that ended after both shut down for writing (zdtm
//! socket-tcp-close2). After a dump in the default (kill) mode and a restore, the
//! program finds each socket as it was.

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{check_restored, Reaper, ScratchDir, TestProcess};

/// Dumps `tp-inet --with WITH` (killing it), restores it, and returns its verdict.
fn round_trip(test: &str, with: &str) -> String {
    let scratch = ScratchDir::new(test);
    let mut tp = TestProcess::start(scratch.path(), "inet", &["--with", with]);
    let ready = tp.ready_file.clone();
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    let restored =
        restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let reaper = Reaper(restored.pid.0);
    check_restored(reaper.0, &ready)
}

#[test]
fn sockets_bound_with_ip_freebind_come_back_bound_with_the_same_option() {
    assert_eq!(round_trip("inet-freebind", "freebind").trim(), "pass");
}

#[test]
fn an_ended_tcp_connection_comes_back_ended_on_both_ends() {
    assert_eq!(round_trip("inet-tcp-closed", "tcp-closed").trim(), "pass");
}
