//! crpod with a user namespace of its own (issue 14): `run --userns=auto` and
//! `run --uidmap/--gidmap` with non-identity maps, each a shell counter that first
//! reports what it sees (its uid map, that it is uid 0, that it can rename its host and
//! write its `/`), checkpointed and restored: the count goes on with no gap, and the
//! restored init has the same maps and host credentials as the first, seen from the
//! host and from inside. Each test has its own `--root` (`Pod`), whose guard removes its
//! containers also on failure; host ids given with --uidmap are the test's own.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{mode_of, state_of, Pod, LOOP};
use criu_rs_suite::{numbers, wait_until};

/// The counter, after the lines about itself (none of them a bare number).
fn script() -> String {
    format!(
        "echo \"map: $(cat /proc/self/uid_map)\"; echo \"uid=$(id -u) gid=$(id -g)\"; \
         hostname renamed && echo \"host=$(hostname)\"; \
         touch /made-by-root && echo 'wrote /'; {LOOP}"
    )
}

/// A map file's lines with single spaces.
fn map_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn host_map(pid: i64, file: &str) -> Vec<String> {
    map_lines(&std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap())
}

fn status_ids(pid: i64, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")).map(str::to_owned))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn ns_link(pid: i64, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn inspect(pod: &Pod, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&pod.ok(&["inspect", name])).unwrap();
    v[0].clone()
}

/// What the host sees of a running container's init: its maps, its host ids (those of
/// the container's root), and a user namespace other than ours.
struct HostView {
    uid_map: Vec<String>,
    gid_map: Vec<String>,
    uid: String,
    gid: String,
}

fn host_view(pid: i64) -> HostView {
    assert_ne!(
        ns_link(pid, "user"),
        ns_link(std::process::id() as i64, "user")
    );
    // Its pid, uts and ipc namespaces belong to its user namespace, its mount and
    // network namespaces are not ours either.
    for kind in ["pid", "uts", "ipc", "mnt", "net"] {
        assert_ne!(
            ns_link(pid, kind),
            ns_link(std::process::id() as i64, kind),
            "{kind}"
        );
    }
    HostView {
        uid_map: host_map(pid, "uid_map"),
        gid_map: host_map(pid, "gid_map"),
        uid: status_ids(pid, "Uid"),
        gid: status_ids(pid, "Gid"),
    }
}

/// Runs the counter as `name` with `userns_args`, checks what it reported about
/// itself, checkpoints and restores it, and checks it counts on with the same maps
/// and credentials. Returns the host view (the same before and after).
fn round_trip(pod: &Pod, name: &str, userns_args: &[&str]) -> HostView {
    let script = script();
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(userns_args);
    args.extend_from_slice(&["host", "/bin/sh", "-c", &script]);
    let id = pod.ok(&args).trim().to_owned();
    wait_until("the counter", Duration::from_secs(10), || {
        numbers(&pod.ok(&["logs", name])).len() >= 3
    });
    let log = pod.ok(&["logs", name]);
    let c = inspect(pod, name);
    let pid = c["State"]["Pid"].as_i64().unwrap();
    let before = host_view(pid);
    // Inside, its uid map is the one the host reads, and it is root there.
    let seen = map_lines(&log).join("\n");
    assert!(
        seen.contains(&format!("map: {}\n", before.uid_map.join("\n"))),
        "{log}"
    );
    assert!(log.contains("uid=0 gid=0\n"), "{log}");
    assert!(log.contains("host=renamed\n"), "{log}");
    assert!(log.contains("wrote /\n"), "{log}");
    let maps = &c["HostConfig"]["IDMappings"];
    let as_proc = |m: &serde_json::Value| -> Vec<String> {
        m.as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().replace(':', " "))
            .collect()
    };
    assert_eq!(as_proc(&maps["UidMap"]), before.uid_map, "{c}");
    assert_eq!(as_proc(&maps["GidMap"]), before.gid_map, "{c}");

    assert_eq!(pod.ok(&["container", "checkpoint", name]).trim(), id);
    let ps = pod.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited (0)"), "{ps}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    let images = pod.root.join("containers").join(&id).join("checkpoint");
    assert_eq!(mode_of(&images), 0o700);
    let names: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("userns-")),
        "the user namespace is in the images: {names:?}"
    );
    let stopped_at = numbers(&pod.ok(&["logs", name]));

    assert_eq!(pod.ok(&["container", "restore", name]).trim(), id);
    assert_eq!(state_of(pod, name)["Running"], true);
    wait_until("more output", Duration::from_secs(10), || {
        numbers(&pod.ok(&["logs", name])).len() >= stopped_at.len() + 3
    });
    let all = numbers(&pod.ok(&["logs", name]));
    assert!(
        all.iter().enumerate().all(|(i, &v)| v == i as u64),
        "counts on with no reset or gap: {all:?}"
    );
    let pid = state_of(pod, name)["Pid"].as_i64().unwrap();
    let after = host_view(pid);
    assert_eq!(after.uid_map, before.uid_map);
    assert_eq!(after.gid_map, before.gid_map);
    assert_eq!((&after.uid, &after.gid), (&before.uid, &before.gid));
    // A command run in it is root in the same user namespace, and sees the name the
    // container gave its host.
    let inside = pod.ok(&[
        "exec",
        name,
        "sh",
        "-c",
        "id -u; id -g; hostname; cat /proc/1/uid_map; readlink /proc/1/ns/user /proc/self/ns/user",
    ]);
    let lines = map_lines(&inside);
    assert_eq!(lines[0..3], ["0", "0", "renamed"], "{inside}");
    assert_eq!(
        lines[3..3 + before.uid_map.len()],
        before.uid_map[..],
        "{inside}"
    );
    let links = &lines[3 + before.uid_map.len()..];
    assert_eq!(links[0], links[1], "{inside}");
    assert_eq!(links[0], ns_link(pid, "user"));
    before
}

#[test]
fn userns_auto_round_trips_with_its_range() {
    let pod = Pod::new("userns-auto");
    let view = round_trip(&pod, "auto", &["--userns=auto"]);
    // The first range from 100000 (this --root has no other container), 65536 ids,
    // the same for gids; the container's root is the first host id of it.
    assert_eq!(view.uid_map, ["0 100000 65536"]);
    assert_eq!(view.gid_map, view.uid_map);
    assert_eq!(view.uid, "100000 100000 100000 100000");
    assert_eq!(view.gid, "100000 100000 100000 100000");
    // Another container takes the next free range, and a smaller one as asked.
    pod.ok(&[
        "run",
        "-d",
        "--name",
        "next",
        "--userns=auto:size=1000",
        "host",
        "sleep",
        "100",
    ]);
    let next = state_of(&pod, "next")["Pid"].as_i64().unwrap();
    assert_eq!(host_map(next, "uid_map"), ["0 165536 1000"]);
    pod.ok(&["rm", "-f", "-a"]);
}

#[test]
fn uidmap_and_gidmap_round_trip() {
    let pod = Pod::new("userns-maps");
    // Refused before any container exists.
    let err = pod.fails(&["run", "--userns=auto", "--uidmap", "0:1:1", "host", "true"]);
    assert!(err.contains("--userns=auto"), "{err}");
    let err = pod.fails(&["run", "--uidmap", "0:1", "host", "true"]);
    assert!(err.contains("CONTAINER:HOST:SIZE"), "{err}");
    assert!(pod.ok(&["ps", "-a", "-q"]).trim().is_empty());
    // Non-identity maps of this test's own, different for uids and gids, with a second
    // uid range.
    let view = round_trip(
        &pod,
        "maps",
        &[
            "--uidmap",
            "0:1300000:65536",
            "--uidmap",
            "65536:1500000:10",
            "--gidmap",
            "0:1400000:65536",
        ],
    );
    assert_eq!(view.uid_map, ["0 1300000 65536", "65536 1500000 10"]);
    assert_eq!(view.gid_map, ["0 1400000 65536"]);
    assert_eq!(view.uid, "1300000 1300000 1300000 1300000");
    assert_eq!(view.gid, "1400000 1400000 1400000 1400000");
}
