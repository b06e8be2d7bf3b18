//! `dump --compress`: the pages file replaced by criu-rs's compressed form
//! (`pages-N.zst.img`, `criu_images::zpages`), unpacked again by the restore; a damaged
//! one fails the restore by name and leaves no process behind.

use std::path::Path;

use criu_core::dump::{dump, DumpError, DumpOptions};
use criu_core::restore::{restore, RestoreError, RestoreOptions};
use criu_core::sys::Pid;
use criu_rs_suite::{check_restored, task_state, tracer_pid, Reaper, ScratchDir, TestProcess};

fn compressed_dump(tp: &mut TestProcess, images: &Path) {
    std::fs::create_dir_all(images).unwrap();
    let stats = dump(&DumpOptions {
        compress: true,
        ..DumpOptions::new(Pid(tp.pid), images)
    })
    .unwrap_or_else(|e| panic!("dump --compress: {e}"));
    tp.wait_gone();
    assert!(
        !images.join("pages-1.img").exists(),
        "the raw pages file stayed"
    );
    let packed = std::fs::metadata(images.join("pages-1.zst.img"))
        .expect("pages-1.zst.img")
        .len();
    // tp-memhog's pages do not compress: its blocks are kept as they are.
    let raw = stats.pages_written * 4096;
    assert!(
        packed <= raw + 32 + 4 * raw.div_ceil(1 << 20),
        "{raw} bytes of pages took {packed} bytes"
    );
}

#[test]
fn a_compressed_dump_restores_intact() {
    let scratch = ScratchDir::new("restore-compressed");
    let mut tp = TestProcess::start(scratch.path(), "memhog", &["--mib", "64"]);
    let images = scratch.path().join("images");
    compressed_dump(&mut tp, &images);
    // What a restorer killed while unpacking leaves: never taken for the pages.
    let partial = images.join(".pages-1.img.unpacking");
    std::fs::write(&partial, b"half").unwrap();
    let restored =
        restore(&RestoreOptions::new(&images)).unwrap_or_else(|e| panic!("restore: {e}"));
    let _reaper = Reaper(restored.pid.0);
    assert_eq!(restored.pid.0, tp.pid, "same pid");
    assert_eq!(check_restored(tp.pid, &tp.ready_file), "pass");
    // What the restore unpacked is gone again; the compressed file stays.
    assert!(!images.join("pages-1.img").exists());
    assert!(!partial.exists());
    assert!(images.join("pages-1.zst.img").exists());
}

#[test]
fn a_damaged_compressed_dump_fails_the_restore_by_name() {
    let scratch = ScratchDir::new("restore-compressed-damaged");
    let mut tp = TestProcess::start(scratch.path(), "memhog", &["--mib", "32"]);
    let images = scratch.path().join("images");
    compressed_dump(&mut tp, &images);
    let packed = std::fs::File::options()
        .read(true)
        .write(true)
        .open(images.join("pages-1.zst.img"))
        .unwrap();
    // Cut short: the last block reaches past the end.
    let len = packed.metadata().unwrap().len();
    packed.set_len(len - 1).unwrap();
    let err = restore(&RestoreOptions::new(&images))
        .map(|r| r.pid)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, RestoreError::BadImage { .. })
            && text.contains("pages-1.zst.img")
            && text.contains("block"),
        "{text}"
    );
    assert_eq!(
        task_state(tp.pid),
        None,
        "a process of the failed restore is left"
    );
    assert!(
        !images.join("pages-1.img").exists(),
        "half an unpacked file stayed"
    );
    assert!(!images.join(".pages-1.img.unpacking").exists());
}

#[test]
fn compressing_an_incremental_dump_is_refused_before_anything() {
    let scratch = ScratchDir::new("dump-compressed-incremental");
    let mut tp = TestProcess::start(scratch.path(), "memhog", &["--mib", "8"]);
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let err = dump(&DumpOptions {
        compress: true,
        prev_images_dir: Some("../pre".into()),
        ..DumpOptions::new(Pid(tp.pid), &images)
    })
    .unwrap_err();
    assert!(matches!(err, DumpError::Options(_)), "{err}");
    assert_eq!(tracer_pid(tp.pid), Some(0));
    assert_eq!(tp.check(), "pass");
}
