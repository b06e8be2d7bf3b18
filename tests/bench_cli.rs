//! `criu-rs bench`: a small run of its built-in workload (two processes, two threads
//! each, a writer) dumped and restored in every mode (dump, -R snapshot by either method,
//! lazy restore, incremental, compressed); the table, the JSON and the PNG figure come
//! out, and no workload process is left behind.

use std::process::Output;

use criu_rs_suite::{clean_command, workspace_bin, ScratchDir};

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Processes whose command line names `needle` (the scratch dir: only this test's).
fn processes_naming(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn bench_measures_every_mode_and_draws_them() {
    let scratch = ScratchDir::new("bench-cli");
    let dir = scratch.path();
    let (json, png) = (dir.join("bench.json"), dir.join("bench.png"));
    let work = dir.join("work");
    let out = clean_command("timeout")
        .arg("300")
        .arg(workspace_bin("criu-rs"))
        .args([
            "bench",
            "--mib",
            "16",
            "--procs",
            "2",
            "--threads",
            "2",
            "--writer",
            "--thp",
            "--modes",
            "dump,snapshot,snapshot-fork,lazy,incremental,compress",
        ])
        .args(["--rounds", "1", "--dir"])
        .arg(&work)
        .arg("--json")
        .arg(&json)
        .arg("--png")
        .arg(&png)
        .output()
        .unwrap();
    let said = text(&out);
    let left = processes_naming(work.to_str().unwrap());
    for pid in &left {
        let _ = criu_core::sys::kill(criu_core::sys::Pid(*pid), libc::SIGKILL);
    }
    assert!(out.status.success(), "{said}");
    assert!(left.is_empty(), "workload processes left: {left:?}\n{said}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for row in [
        "criu-rs  dump",
        "criu-rs  snapshot",
        "criu-rs  snapshot-fork",
        "criu-rs  lazy",
        "criu-rs  incremental",
        "criu-rs incremental: pre-dump 1 ",
        "criu-rs  compress",
        "criu-rs compress: dump --compress ",
        "tmpfs fill floor",
    ] {
        assert!(stdout.contains(row), "no {row:?} in the table: {said}");
    }
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc["samples"].as_array().map(Vec::len), Some(6), "{doc}");
    for m in doc["medians"].as_array().unwrap() {
        for field in ["dump_s", "frozen_s", "restore_s", "dump_maxrss_mib"] {
            assert!(m[field].as_f64().is_some_and(|v| v > 0.0), "{field} in {m}");
        }
        // The writer's longest stall, for the dumps it survives.
        if m["mode"]
            .as_str()
            .is_some_and(|m| m.starts_with("snapshot"))
        {
            assert!(m["stall_s"].as_f64().is_some(), "stall_s in {m}");
        }
        let steps = m["steps"].as_array().map_or(0, Vec::len);
        let expected = match m["mode"].as_str() {
            Some("incremental") => 3,
            Some("compress") => 1,
            _ => 0,
        };
        assert_eq!(steps, expected, "steps in {m}");
    }
    let figure = std::fs::read(&png).unwrap();
    assert!(figure.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(figure.len() > 10_000, "a figure with nothing drawn in it");
}
