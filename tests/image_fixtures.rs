//! The image layer against images written by real CRIU 4.2: our decode prints what CRIU's
//! crit printed, encode gives back equivalent images, and Debian's crit reads what we write.

use std::path::Path;

use criu_images::crit::{self, DecodeOptions, ImageDir};
use criu_images::{pb, ImageKind, ImageReader, ImageWriter};
use criu_rs_suite::{
    crit_decode, debian_crit, fixture_dumps, fixture_images, fixtures, ScratchDir,
};
use serde_json::Value;

fn decode_file(path: &Path, pretty: bool) -> Value {
    let mut r = ImageReader::open(path).unwrap_or_else(|e| panic!("{e}"));
    crit::decode(
        &mut r,
        DecodeOptions {
            pretty,
            no_payload: false,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn expected(dump: &str, base: &str, suffix: &str) -> (String, Value) {
    let path = fixtures()
        .join("crit-json")
        .join(dump)
        .join(format!("{base}{suffix}"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (text, value)
}

#[test]
fn decode_matches_criu_crit_for_every_fixture() {
    let mut checked = 0;
    for dump in fixture_dumps() {
        for (path, base) in fixture_images(&dump) {
            for (pretty, suffix) in [(false, ".json"), (true, ".pretty.json")] {
                let ours = decode_file(&path, pretty);
                let (text, theirs) = expected(&dump, &base, suffix);
                assert_eq!(
                    ours, theirs,
                    "{dump}/{base}{suffix}: decoded JSON differs from CRIU 4.2's crit"
                );
                // Beyond equal values, the text itself is crit's (separators, escapes, indent).
                assert_eq!(
                    crit::to_python_json(&ours, pretty),
                    text.trim_end(),
                    "{dump}/{base}{suffix}: layout"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 100, "only {checked} fixture files were checked");
}

#[test]
fn explorers_match_criu_crit() {
    for dump in fixture_dumps() {
        let mut dir = ImageDir::new(fixtures().join("images").join(&dump));
        let outputs = [
            ("ps", dir.ps()),
            ("fds", dir.fds()),
            ("mems", dir.mems()),
            ("rss", dir.rss()),
        ];
        for (what, ours) in outputs {
            let ours = ours.unwrap_or_else(|e| panic!("x {dump} {what}: {e}"));
            let path = fixtures()
                .join("crit-json")
                .join(&dump)
                .join(format!("x-{what}.txt"));
            let theirs = std::fs::read_to_string(&path).unwrap();
            assert_eq!(ours, theirs, "x {dump} {what}");
        }
    }
}

#[test]
fn encode_of_decode_round_trips() {
    let scratch = ScratchDir::new("encode-round-trip");
    let crit_bin = debian_crit();
    for dump in fixture_dumps() {
        for (path, base) in fixture_images(&dump) {
            for pretty in [false, true] {
                let doc = decode_file(&path, pretty);
                let out = scratch.path().join(format!("{dump}-{base}-{pretty}.img"));
                let bytes = crit::encode(&doc, Vec::new(), &out).unwrap_or_else(|e| panic!("{e}"));
                std::fs::write(&out, bytes).unwrap();
                assert_eq!(
                    decode_file(&out, false),
                    decode_file(&path, false),
                    "{dump}/{base} (pretty={pretty})"
                );
                if let Some(crit_bin) = &crit_bin {
                    let theirs = crit_decode(crit_bin, &path).unwrap();
                    let ours = crit_decode(crit_bin, &out).unwrap();
                    assert_eq!(
                        ours, theirs,
                        "Debian crit reads our encoding of {dump}/{base} differently"
                    );
                }
            }
        }
    }
}

/// Re-reads an image through the typed (prost) structs and writes it back with the typed
/// writer, so the generated types cover every field CRIU wrote.
fn rewrite_typed(src: &Path, dst: &Path) {
    let mut r = ImageReader::open(src).unwrap();
    let kind = r.kind();
    let mut w = ImageWriter::create(dst, kind).unwrap();
    macro_rules! copy_all {
        ($ty:ty) => {
            while let Some(e) = r.next_entry::<$ty>().unwrap() {
                w.write_entry(&e).unwrap();
            }
        };
    }
    match kind.name {
        "INVENTORY" => copy_all!(pb::InventoryEntry),
        "PSTREE" => copy_all!(pb::PstreeEntry),
        "CORE" => copy_all!(pb::CoreEntry),
        "IDS" => copy_all!(pb::TaskKobjIdsEntry),
        "FS" => copy_all!(pb::FsEntry),
        "MM" => copy_all!(pb::MmEntry),
        "FILES" => copy_all!(pb::FileEntry),
        "FDINFO" => copy_all!(pb::FdinfoEntry),
        "SECCOMP" => copy_all!(pb::SeccompEntry),
        "TIMENS" => copy_all!(pb::TimensEntry),
        "MEMFD_INODE" => copy_all!(pb::MemfdInodeEntry),
        "STATS" => copy_all!(pb::StatsEntry),
        "PAGEMAP" => {
            let head: pb::PagemapHead = r.next_entry().unwrap().unwrap();
            w.write_entry(&head).unwrap();
            copy_all!(pb::PagemapEntry);
        }
        "PIPES_DATA" => {
            while let Some(e) = r.next_entry::<pb::PipeDataEntry>().unwrap() {
                w.write_entry(&e).unwrap();
                w.write_raw(&r.read_extra(u64::from(e.bytes), "pipe data").unwrap())
                    .unwrap();
            }
        }
        "SK_QUEUES" => {
            while let Some(e) = r.next_entry::<pb::SkPacketEntry>().unwrap() {
                w.write_entry(&e).unwrap();
                w.write_raw(&r.read_extra(u64::from(e.length), "queue data").unwrap())
                    .unwrap();
            }
        }
        other => panic!("no typed copy for {other}"),
    }
    w.finish().unwrap();
}

#[test]
fn typed_structs_rewrite_every_fixture_identically() {
    let scratch = ScratchDir::new("typed-rewrite");
    let crit_bin = debian_crit();
    for dump in fixture_dumps() {
        for (path, base) in fixture_images(&dump) {
            let out = scratch.path().join(format!("{dump}-{base}.img"));
            rewrite_typed(&path, &out);
            assert_eq!(
                decode_file(&out, true),
                decode_file(&path, true),
                "{dump}/{base}"
            );
            if let Some(crit_bin) = &crit_bin {
                assert_eq!(
                    crit_decode(crit_bin, &out).unwrap(),
                    crit_decode(crit_bin, &path).unwrap(),
                    "{dump}/{base}"
                );
            }
        }
    }
}

#[test]
fn every_fixture_file_has_a_known_kind() {
    for dump in fixture_dumps() {
        for (path, _) in fixture_images(&dump) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let by_name =
                ImageKind::by_file_name(&name).unwrap_or_else(|| panic!("{name}: no kind"));
            let r = ImageReader::open(&path).unwrap();
            assert_eq!(by_name, r.kind(), "{name}: file name and magic disagree");
        }
    }
}

/// Paths are bytes in our schema where CRIU's says `string`: a file name that is not
/// UTF-8 is written, printed as Debian's crit prints it (Python's repr of the bytes, the
/// same text byte for byte), and read back from that JSON to the same bytes; UTF-8
/// names print exactly as crit prints them.
#[test]
fn non_utf8_paths_decode_as_crit_prints_them_and_encode_back() {
    let scratch = ScratchDir::new("fixtures-non-utf8");
    let kind = ImageKind::by_name("FILES").unwrap();
    for name in [
        &b"/tmp/dir-\xff\xfe/f"[..],
        "/tmp/é x".as_bytes(),
        b"/a'b\"c\\\x01",
    ] {
        let entry = pb::FileEntry {
            r#type: pb::FdTypes::Reg as i32,
            id: 1,
            reg: Some(pb::RegFileEntry {
                id: 1,
                name: name.to_vec(),
                fown: pb::FownEntry::default(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let path = scratch.path().join("files.img");
        let mut w = ImageWriter::create(&path, kind).unwrap();
        w.write_entry(&entry).unwrap();
        w.finish().unwrap();

        let ours = decode_file(&path, false);
        let text = crit::to_python_json(&ours, false);
        if let Some(debian) = debian_crit() {
            let out = std::process::Command::new(debian)
                .args(["decode", "-i"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(out.status.success(), "{name:?}");
            assert_eq!(
                text,
                String::from_utf8_lossy(&out.stdout).trim_end(),
                "{name:?}: our JSON against Debian's crit"
            );
        }
        let encoded = crit::encode(&ours, Vec::new(), &path).unwrap();
        let mut r = ImageReader::new(encoded.as_slice(), "files.img").unwrap();
        let back: pb::FileEntry = r.next_entry().unwrap().unwrap();
        assert_eq!(back.reg.unwrap().name, name, "{text}");
    }
}
