//! Restoring where the CPU or the kernel differs from the dumping one, simulated by
//! editing real images with our own encoder: xsave state this CPU lacks is refused
//! (naming the feature) unless `--cpu-cap=none`, and a vDSO that is not this kernel's
//! is redirected to this kernel's (CRIU's vDSO proxy) or, where it cannot be, refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_core::arch::{self, CpuCap};
use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::{restore, RestoreOptions};
use criu_core::sys::Pid;
use criu_images::{pb, ImageKind, ImageReader, ImageWriter};
use criu_rs_suite::{clean_command, workspace_bin, Reaper, ScratchDir, TestProcess};

/// VMA status bit of the vDSO (CRIU's VMA_AREA_VDSO).
const VMA_AREA_VDSO: u32 = 1 << 3;
const PAGE: u64 = 4096;

/// tp-`name`, dumped (and so killed).
fn dumped(scratch: &ScratchDir, name: &str, args: &[&str]) -> (TestProcess, PathBuf) {
    let mut tp = TestProcess::start(scratch.path(), name, args);
    let images = scratch.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dump(&DumpOptions::new(Pid(tp.pid), &images)).unwrap_or_else(|e| panic!("dump: {e}"));
    let _ = tp.child.wait();
    (tp, images)
}

fn copy_images(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn read_core(path: &Path) -> pb::CoreEntry {
    let mut r = ImageReader::open(path).unwrap();
    r.next_entry().unwrap().expect("a core entry")
}

/// Rewrites the core image of `pid` in `dir` after `edit`.
fn edit_core(dir: &Path, pid: i32, edit: impl FnOnce(&mut pb::CoreEntry)) {
    let path = dir.join(format!("core-{pid}.img"));
    let mut core = read_core(&path);
    edit(&mut core);
    let mut w = ImageWriter::create(&path, ImageKind::by_name("CORE").unwrap()).unwrap();
    w.write_entry(&core).unwrap();
    w.finish().unwrap();
}

/// Restores `opts.images_dir`, expecting a refusal that mentions every one of `says`
/// and leaves no process behind: a restore creates the dumped pid `pid` first.
fn refused(opts: &RestoreOptions, pid: i32, says: &[&str]) -> String {
    let err = match restore(opts) {
        Err(e) => e.to_string(),
        Ok(r) => {
            drop(Reaper(r.pid.0));
            panic!("restore of {} succeeded", opts.images_dir.display());
        }
    };
    for s in says {
        assert!(err.contains(s), "{err:?} should mention {s:?}");
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "a refused restore left process {pid}"
    );
    err
}

/// Restores `opts.images_dir`; the guard kills the restored program.
fn restored(opts: &RestoreOptions) -> Reaper {
    let restored = restore(opts).unwrap_or_else(|e| panic!("restore: {e}"));
    Reaper(restored.pid.0)
}

/// Asks the restored program to check itself and expects `pass` (it exits then).
fn passes(reaper: &Reaper, tp: &TestProcess) {
    // SAFETY: kill(2) on the restored child.
    unsafe { libc::kill(reaper.0, libc::SIGUSR2) };
    let result = criu_rs_suite::wait_for_file(
        &tp.ready_file.with_extension("ready.result"),
        Duration::from_secs(60),
    );
    assert_eq!(result.as_deref(), Some("pass"), "the restored program");
}

#[test]
fn xsave_state_this_cpu_lacks_is_refused_unless_cpu_cap_none() {
    let here = arch::xfeatures_here();
    // PKRU, MPX, CET, AMX, APX: one of them this CPU does not enable.
    let Some(bit) = [9u32, 3, 4, 11, 17, 18, 19]
        .into_iter()
        .find(|b| here & (1 << b) == 0)
    else {
        eprintln!("this CPU enables every xsave feature we know: nothing to test");
        return;
    };
    let scratch = ScratchDir::new("restore-cpu-xsave");
    let (tp, images) = dumped(&scratch, "memhog", &["--mib", "8"]);
    let edited = scratch.path().join("edited");
    copy_images(&images, &edited);
    edit_core(&edited, tp.pid, |core| {
        let fp = &mut core.thread_info.as_mut().unwrap().fpregs;
        fp.xsave.as_mut().expect("an xsave area").xstate_bv |= 1 << bit;
    });
    let feature = format!("xfeatures bit {bit}");
    let core = format!("core-{}.img", tp.pid);
    refused(
        &RestoreOptions::new(&edited),
        tp.pid,
        &[&core, &feature, "this CPU lacks", "--cpu-cap=none"],
    );

    // Comparing CPUID words (`ins`, `cpu`) is not done: asked for, it is refused.
    for cap in ["ins", "cpu", "all"] {
        let strict = RestoreOptions {
            cpu_cap: CpuCap::parse(cap).unwrap(),
            ..RestoreOptions::new(&images)
        };
        refused(&strict, tp.pid, &["checking CPU capability"]);
    }

    // The dumping CPU described in a cpuinfo image (CRIU writes one with --cpu-cap):
    // all of its xsave features are needed, used or not.
    let described = scratch.path().join("described");
    copy_images(&images, &described);
    let cpu = pb::CpuinfoX86Entry {
        xfeatures_mask: Some(here | 1 << bit),
        ..Default::default()
    };
    let mut w = ImageWriter::create(
        described.join("cpuinfo.img"),
        ImageKind::by_name("CPUINFO").unwrap(),
    )
    .unwrap();
    w.write_entry(&pb::CpuinfoEntry {
        x86_entry: vec![cpu],
    })
    .unwrap();
    w.finish().unwrap();
    refused(
        &RestoreOptions::new(&described),
        tp.pid,
        &["cpuinfo.img", &feature, "this CPU lacks"],
    );

    // The command line refuses the same, before anything runs.
    let out = clean_command(workspace_bin("criu-rs").to_str().unwrap())
        .args(["restore", "-d", "-o", "-", "-D"])
        .arg(&edited)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "criu-rs restore: {stderr}");
    assert!(stderr.contains(&feature), "{stderr}");

    // Forced: the state this CPU cannot hold is dropped and the program runs on.
    let forced = RestoreOptions {
        cpu_cap: CpuCap::parse("none").unwrap(),
        ..RestoreOptions::new(&edited)
    };
    passes(&restored(&forced), &tp);
    wait_gone(tp.pid);

    // The same through the command line (detached: the tree outlives criu-rs).
    let out = clean_command(workspace_bin("criu-rs").to_str().unwrap())
        .args(["restore", "-d", "-o", "-", "--cpu-cap=none", "-D"])
        .arg(&edited)
        .output()
        .unwrap();
    let _gone = KillOnDrop(tp.pid);
    assert!(
        out.status.success(),
        "criu-rs restore --cpu-cap=none: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = tp.ready_file.with_extension("ready.result");
    let _ = std::fs::remove_file(&result);
    // SAFETY: kill(2) on the process the command restored.
    unsafe { libc::kill(tp.pid, libc::SIGUSR2) };
    let verdict = criu_rs_suite::wait_for_file(&result, Duration::from_secs(60));
    assert_eq!(verdict.as_deref(), Some("pass"), "restored by criu-rs");
}

/// Waits (bounded) until process `pid` is gone.
fn wait_gone(pid: i32) {
    criu_rs_suite::wait_until("the process to go", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
}

/// Kills a process that is not our child (a detached restore) and waits until it is gone.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process this test restored.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{}", self.0)).exists()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Where the dumped vDSO of `pid` is: its address, length, and offset in its pages image.
fn dumped_vdso(dir: &Path, pid: i32) -> (u64, u64, PathBuf, u64) {
    let mut r = ImageReader::open(dir.join(format!("mm-{pid}.img"))).unwrap();
    let mm: pb::MmEntry = r.next_entry().unwrap().expect("an mm entry");
    let vma = mm
        .vmas
        .iter()
        .find(|v| v.status & VMA_AREA_VDSO != 0)
        .expect("a vDSO mapping");
    let mut r = ImageReader::open(dir.join(format!("pagemap-{pid}.img"))).unwrap();
    let head: pb::PagemapHead = r.next_entry().unwrap().unwrap();
    let mut offset = 0;
    while let Some(e) = r.next_entry::<pb::PagemapEntry>().unwrap() {
        let len = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages)) * PAGE;
        if e.vaddr <= vma.start && vma.end <= e.vaddr + len {
            let pages = dir.join(format!("pages-{}.img", head.pages_id));
            return (
                vma.start,
                vma.end - vma.start,
                pages,
                offset + vma.start - e.vaddr,
            );
        }
        offset += len;
    }
    panic!("the vDSO's pages are not in the images");
}

/// The file range of ELF section `name` in an ELF64 image.
fn elf_section(elf: &[u8], name: &str) -> (usize, usize) {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let names = u64_at(header(shstrndx) + 0x18);
    (0..shnum)
        .map(header)
        .find(|&h| {
            let at = names + u32_at(h);
            elf[at..].split(|&b| b == 0).next() == Some(name.as_bytes())
        })
        .map(|h| (u64_at(h + 0x18), u64_at(h + 0x20)))
        .unwrap_or_else(|| panic!("no section {name}"))
}

/// Edits the dumped vDSO bytes in the pages image with `edit`.
fn edit_vdso(dir: &Path, pid: i32, edit: impl FnOnce(&mut Vec<u8>)) -> u64 {
    use std::os::unix::fs::FileExt;
    let (start, len, pages, offset) = dumped_vdso(dir, pid);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pages)
        .unwrap();
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, offset).unwrap();
    assert_eq!(
        &bytes[..4],
        b"\x7fELF",
        "the saved vDSO starts with its ELF header"
    );
    edit(&mut bytes);
    file.write_all_at(&bytes, offset).unwrap();
    start
}

/// The maps line of `pid` that starts at `addr`.
fn maps_line(pid: i32, addr: u64) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(&format!("{addr:x}-")))
        .map(str::to_owned)
}

#[test]
fn a_vdso_that_is_not_this_kernels_is_redirected_or_refused() {
    let scratch = ScratchDir::new("restore-cpu-vdso");
    // Its check reads the clocks through the vDSO and through system calls.
    let (tp, images) = dumped(&scratch, "vdso", &[]);

    // Another kernel's code behind the same symbols: a byte of .text differs. The old
    // bytes go back at the dumped address as a proxy whose entry points jump into this
    // kernel's vDSO, which moves elsewhere; the program reads its clock on through it.
    let code = scratch.path().join("code");
    copy_images(&images, &code);
    let start = edit_vdso(&code, tp.pid, |vdso| {
        let (text, size) = elf_section(vdso, ".text");
        vdso[text + size / 2] ^= 0xff;
    });
    let reaper = restored(&RestoreOptions::new(&code));
    let line = maps_line(reaper.0, start).unwrap_or_else(|| {
        panic!(
            "no proxy at {start:#x}:\n{}",
            std::fs::read_to_string(format!("/proc/{}/maps", reaper.0)).unwrap()
        )
    });
    assert!(!line.contains("[vdso]"), "{line}");
    assert!(line.contains("r-xp"), "{line}");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", reaper.0)).unwrap();
    assert!(
        maps.contains("[vdso]"),
        "this kernel's vDSO is mapped too:\n{maps}"
    );
    passes(&reaper, &tp);
    drop(reaper);

    // The same, with the program stopped inside the old vDSO code: that code cannot
    // run against this kernel's data, refused.
    let inside = scratch.path().join("inside");
    copy_images(&code, &inside);
    edit_core(&inside, tp.pid, |core| {
        core.thread_info.as_mut().unwrap().gpregs.ip = start + 0x100;
    });
    refused(
        &RestoreOptions::new(&inside),
        tp.pid,
        &["vDSO", "stopped inside it"],
    );

    // A symbol this kernel does not have: nothing to redirect it to, refused.
    let symbol = scratch.path().join("symbol");
    copy_images(&images, &symbol);
    edit_vdso(&symbol, tp.pid, |vdso| {
        let (strtab, size) = elf_section(vdso, ".dynstr");
        let names = &mut vdso[strtab..strtab + size];
        let at = names
            .windows(14)
            .position(|w| w == b"clock_gettime\0")
            .expect("clock_gettime in .dynstr");
        names[at + 12] = b'X';
    });
    refused(
        &RestoreOptions::new(&symbol),
        tp.pid,
        &["vDSO", "gettimX", "is missing in this kernel's"],
    );
}
