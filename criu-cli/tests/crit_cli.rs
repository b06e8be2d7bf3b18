//! `criu-rs crit` as a user runs it: verbs, flags, and what it does with bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use criu_rs_suite::{fixtures, ScratchDir};

fn criu_rs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_criu-rs"))
}

fn run(args: &[&str]) -> Output {
    criu_rs().args(args).output().expect("run criu-rs")
}

fn fixture(rel: &str) -> PathBuf {
    fixtures().join("images").join(rel)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts a clean failure: non-zero exit, exactly one line on stderr that names `path`
/// and contains `what`, nothing on stdout, no panic.
fn assert_one_line_error(out: &Output, path: &Path, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one error line, got: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(&path.display().to_string()),
        "error does not name the file: {stderr}"
    );
    assert!(
        stderr.contains(what),
        "error does not say {what:?}: {stderr}"
    );
    assert!(out.stdout.is_empty(), "stdout should be empty on error");
}

/// The magic header of the `PSTREE` kind followed by `body`.
fn pstree_with(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x5456_4319u32.to_le_bytes());
    v.extend_from_slice(&0x5027_3030u32.to_le_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn decode_pretty_and_plain_to_stdout_and_file() {
    let scratch = ScratchDir::new("cli-decode");
    let img = fixture("fds/pipes-data.img");
    let out = run(&["crit", "decode", "-i", s(&img)]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("{\"magic\": \"PIPES_DATA\""), "{text}");
    assert!(
        text.contains("aGVsbG8tcGlwZQ=="),
        "pipe contents missing: {text}"
    );

    let json = scratch.path().join("pipes.json");
    let out = run(&["crit", "decode", "--pretty", "-i", s(&img), "-o", s(&json)]);
    assert!(out.status.success());
    let expected =
        std::fs::read_to_string(fixtures().join("crit-json/fds/pipes-data.pretty.json")).unwrap();
    assert_eq!(std::fs::read_to_string(&json).unwrap(), expected.trim_end());
}

#[test]
fn decode_reads_stdin_and_encode_writes_stdout() {
    let scratch = ScratchDir::new("cli-stdio");
    let img = fixture("looper/core-15178.img");
    let json = scratch.path().join("core.json");
    let status = criu_rs()
        .args(["crit", "decode", "-o", s(&json)])
        .stdin(std::fs::File::open(&img).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let out = criu_rs()
        .args(["crit", "encode"])
        .stdin(std::fs::File::open(&json).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = scratch.path().join("core.img");
    std::fs::write(&again, &out.stdout).unwrap();
    let a = run(&["crit", "decode", "-i", s(&img)]).stdout;
    let b = run(&["crit", "decode", "-i", s(&again)]).stdout;
    assert_eq!(a, b);
}

#[test]
fn info_counts_entries() {
    let out = run(&["crit", "info", s(&fixture("fds/pagemap-15238.img"))]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "{\n    \"magic\": \"PAGEMAP\",\n    \"count\": 13\n}\n"
    );
    let out = run(&["crit", "info", s(&fixture("fds/sk-queues.img"))]);
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("\"count\": 1"));
}

#[test]
fn show_nopl_hides_payloads() {
    let out = run(&["crit", "show", "--nopl", s(&fixture("fds/pipes-data.img"))]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\"extra\": \"... <10B>\""), "{text}");
}

#[test]
fn x_explorers_print_crits_text() {
    for what in ["ps", "fds", "mems", "rss"] {
        let out = run(&["crit", "x", s(&fixture("fds")), what]);
        assert!(out.status.success());
        let expected =
            std::fs::read_to_string(fixtures().join(format!("crit-json/fds/x-{what}.txt")))
                .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            expected,
            "x fds {what}"
        );
    }
}

#[test]
fn hostile_inputs_give_one_clear_error() {
    let scratch = ScratchDir::new("cli-hostile");
    let dir = scratch.path();
    let core = std::fs::read(fixture("fds/core-15238.img")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.img",
            core[..core.len() / 2].to_vec(),
            "file ends after",
        ),
        (
            "wrong-magic.img",
            b"\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00".to_vec(),
            "unknown magic 0x04030201",
        ),
        (
            "huge-length.img",
            pstree_with(&[0xff, 0xff, 0xff, 0xff, 8, 1]),
            "entry length 4294967295 exceeds the limit",
        ),
        (
            "not-protobuf.img",
            pstree_with(&[4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            "not a valid pstree_entry",
        ),
        (
            "missing-field.img",
            pstree_with(&[2, 0, 0, 0, 0x08, 0x05]),
            "lacks required field",
        ),
        ("empty.img", Vec::new(), "empty file"),
        (
            "half-magic.img",
            vec![0x19, 0x43],
            "file ends after 2 of 4 bytes of magic",
        ),
    ];
    for (name, bytes, what) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        for verb in [&["decode", "-i"][..], &["show"], &["info"]] {
            let mut args = vec!["crit"];
            args.extend_from_slice(verb);
            args.push(s(&path));
            assert_one_line_error(&run(&args), &path, what);
        }
    }
    assert_one_line_error(
        &run(&["crit", "decode", "-i", s(dir)]),
        dir,
        "is a directory",
    );
    assert_one_line_error(
        &run(&["crit", "encode", "-i", s(dir), "-o", "/dev/null"]),
        dir,
        "is a directory",
    );
    let missing = dir.join("no-such.img");
    assert_one_line_error(
        &run(&["crit", "decode", "-i", s(&missing)]),
        &missing,
        "No such file",
    );
    assert_one_line_error(
        &run(&["crit", "x", s(&missing), "ps"]),
        &missing,
        "not a directory",
    );
}

#[test]
fn hostile_json_gives_one_clear_error() {
    let scratch = ScratchDir::new("cli-hostile-json");
    let cases = [
        ("not-json.json", "this is not json", "not JSON"),
        ("no-magic.json", "{\"entries\": []}", "no \"magic\""),
        ("bad-magic.json", "{\"magic\": \"NOPE\", \"entries\": []}", "unknown magic \"NOPE\""),
        ("bad-field.json", "{\"magic\": \"PSTREE\", \"entries\": [{\"pid\": \"x\", \"ppid\": 0, \"pgid\": 1, \"sid\": 1}]}", "entries[0].pid"),
        ("bad-range.json", "{\"magic\": \"PSTREE\", \"entries\": [{\"pid\": 99999999999, \"ppid\": 0, \"pgid\": 1, \"sid\": 1}]}", "out of range"),
        ("missing.json", "{\"magic\": \"PSTREE\", \"entries\": [{\"pid\": 1}]}", "lacks required field ppid"),
    ];
    for (name, text, what) in cases {
        let path = scratch.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = run(&[
            "crit",
            "encode",
            "-i",
            s(&path),
            "-o",
            s(&scratch.path().join("out.img")),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains(what), "{name}: {stderr}");
    }
}

/// A length prefix, or an extra-data size, that claims far more than the file holds must
/// not make the reader allocate that much: run under a 64 MiB address-space limit.
#[test]
fn claimed_sizes_do_not_drive_allocation() {
    let scratch = ScratchDir::new("cli-bounded");
    // An entry that claims 16 MiB - 1 (inside the entry limit) in a file of a few bytes.
    let big_entry = scratch.path().join("big-entry.img");
    std::fs::write(&big_entry, pstree_with(&[0xff, 0xff, 0xff, 0x00, 1, 2, 3])).unwrap();
    // A pipe-data entry whose extra data claims 200 MiB (inside the extra limit).
    let mut pipe = Vec::new();
    pipe.extend_from_slice(&0x5456_4319u32.to_le_bytes());
    pipe.extend_from_slice(&0x5645_3709u32.to_le_bytes());
    // pipe_data_entry { pipe_id: 1, bytes: 200 MiB, size: 65536 }
    let mut msg = vec![0x08, 0x01, 0x10];
    let mut n: u32 = 200 << 20;
    while n >= 0x80 {
        msg.push((n as u8) | 0x80);
        n >>= 7;
    }
    msg.push(n as u8);
    msg.extend_from_slice(&[0x18, 0x80, 0x80, 0x04]);
    pipe.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    pipe.extend_from_slice(&msg);
    pipe.extend_from_slice(b"only-a-little");
    let big_extra = scratch.path().join("pipes-data.img");
    std::fs::write(&big_extra, pipe).unwrap();

    for path in [&big_entry, &big_extra] {
        let out = Command::new("prlimit")
            .arg(format!("--as={}", 64u64 << 20))
            .arg(env!("CARGO_BIN_EXE_criu-rs"))
            .args(["crit", "decode", "-i", s(path)])
            .output()
            .expect("prlimit (util-linux) runs");
        assert_one_line_error(&out, path, "file ends after");
    }
}
