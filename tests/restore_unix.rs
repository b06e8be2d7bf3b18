//! Unix sockets bound to names whose files were unlinked after the bind (issue 10: CRIU's
//! zdtm `fifo_upon_unix_socket00/01`, `sk-unix-dgram-ghost`, `sk-unix01` were dumped,
//! killed, and then not restored). tp-unixghost builds every such situation: a FIFO now
//! at the name, a relative name with the working directory moved away, names in
//! directories removed since, one name deleted twice, a deleted name a live socket holds
//! again, and a pair bound to one deleted name; after a dump (which kills it) and a
//! restore it must find every name, peer and queued datagram as it was, and the
//! filesystem as it left it. A socket whose file was renamed after the bind comes back
//! with its name and its file where it was moved to; one whose name now leads to
//! another file cannot be told apart from a covered one: that dump is refused before
//! anything changes, and the program runs on intact; so is a listener with a
//! connection not accepted yet that sent data (which waits where no restore can put it
//! back); one that sent nothing is connected again.

use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{check_restored, task_state, tracer_pid, Reaper, ScratchDir, TestProcess};

#[test]
fn sockets_bound_to_deleted_names_come_back_with_their_peers_and_queues() {
    round_trip("unix-ghost", &[]);
}

#[test]
fn a_connection_not_accepted_yet_is_connected_again() {
    round_trip("unix-inflight", &["--inflight", "yes"]);
}

/// A datagram end whose peer sent and closed (zdtm's socket_close_data).
#[test]
fn a_datagram_end_whose_peer_closed_keeps_its_data() {
    round_trip("unix-closed-peer", &["--closed-peer", "yes"]);
}

/// Starts tp-unixghost with `args`, dumps it (killing it), restores it, and expects its
/// check to pass and the directory of its sockets to be as before.
fn round_trip(test: &str, args: &[&str]) {
    let scratch = ScratchDir::new(test);
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let sockets = scratch.path().join("sockets");
    std::fs::create_dir_all(&sockets).unwrap();
    let mut all = vec!["--dir", sockets.to_str().unwrap()];
    all.extend_from_slice(args);
    let mut tp = TestProcess::start(scratch.path(), "unixghost", &all);
    let ready = tp.ready_file.clone();
    let listing = |dir: &std::path::Path| {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let before = listing(&sockets);

    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    assert_eq!(listing(&sockets), before, "the dump changed the directory");

    let restored =
        restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    // The restore leaves nothing behind either (moved-aside files, made directories).
    assert_eq!(
        listing(&sockets),
        before,
        "the restore changed the directory"
    );

    assert_eq!(check_restored(restored.pid.0, &ready), "pass");
}

/// A server that bound a temporary name and renamed its file into place (haproxy's
/// stats socket).
#[test]
fn a_socket_whose_file_was_renamed_keeps_its_name_and_its_file_where_it_went() {
    round_trip("unix-renamed", &["--renamed", "yes"]);
}

#[test]
fn a_socket_whose_name_now_leads_to_another_file_is_refused_and_left_running() {
    let scratch = ScratchDir::new("unix-renamed-over");
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let sockets = scratch.path().join("sockets");
    std::fs::create_dir_all(&sockets).unwrap();
    let mut tp = TestProcess::start(
        scratch.path(),
        "unixghost",
        &["--dir", sockets.to_str().unwrap(), "--renamed", "over"],
    );
    // Default mode: a dump that succeeded would kill the program.
    let opts = DumpOptions::new(Pid(tp.pid), &images);
    assert!(!opts.leave_running && !opts.leave_stopped);
    let err = dump(&opts).expect_err("a renamed socket file must be refused");
    let msg = err.to_string();
    let tmp = sockets.join("tp-unixghost.ren-tmp");
    let now = sockets.join("tp-unixghost.ren");
    assert!(
        msg.contains(&format!("bound to {}", tmp.display()))
            && msg.contains(&now.display().to_string())
            && msg.contains("now leads to another file"),
        "the message names the socket, its name, where its file is and why: {msg}"
    );
    runs_on_intact(&mut tp);
}

#[test]
fn a_listener_with_a_connection_not_accepted_is_refused_and_left_running() {
    let scratch = ScratchDir::new("unix-pending");
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let sockets = scratch.path().join("sockets");
    std::fs::create_dir_all(&sockets).unwrap();
    let mut tp = TestProcess::start(
        scratch.path(),
        "unixghost",
        &["--dir", sockets.to_str().unwrap(), "--pending", "yes"],
    );
    let err = dump(&DumpOptions::new(Pid(tp.pid), &images))
        .expect_err("a connection in flight must be refused");
    let msg = err.to_string();
    let name = sockets.join("tp-unixghost.pending");
    assert!(
        msg.contains(&name.display().to_string()) && msg.contains("not accepted yet"),
        "the message names the listener and why: {msg}"
    );
    runs_on_intact(&mut tp);
}

/// A program a dump refused: running, untraced, and passing its own check.
fn runs_on_intact(tp: &mut TestProcess) {
    assert!(
        matches!(task_state(tp.pid), Some('S') | Some('R')),
        "running"
    );
    assert_eq!(tracer_pid(tp.pid), Some(0), "not traced");
    assert_eq!(check_restored(tp.pid, &tp.ready_file), "pass");
    let _ = tp.child.wait();
}
