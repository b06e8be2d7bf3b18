//! The vDSO: the dumped one against this kernel's, and a proxy when they differ; stage
//! 4 puts this kernel's where the task expects it.
//!
//! A restored task gets this kernel's vDSO. The program keeps pointers into the vDSO it
//! had (glibc looks its entry points up once, at start), and vDSO code reads the data
//! pages (`[vvar]`) of the kernel it belongs to. When the dumped vDSO is byte for byte
//! this kernel's, this kernel's is simply moved to the dumped address. When it differs
//! (another kernel), old code would run against data laid out for another kernel, or
//! old entry points would land in the middle of other code. Then, as CRIU's vDSO proxy
//! does, this kernel's vDSO (with its data pages) goes elsewhere, the dumped vDSO's bytes
//! go back at the dumped address as ordinary memory, and each of its exported entry
//! points is overwritten with a jump to the same symbol of this kernel's vDSO. What
//! cannot be redirected so is refused, saying why: a symbol this kernel lacks, entry
//! points too close for a jump, a dumped vDSO that is no ELF image or not fully saved,
//! or a thread stopped inside the old vDSO code.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use criu_images::pb;
use goblin::elf::sym::STT_FUNC;

use super::{free_area, unsupported, Rebuild, RestoreError, PAGE};
use crate::inject::Injector;
use crate::proc::MapEntry;
use crate::proc::ProcDir;
use crate::sys::Pid;
use criu_images::flags::vma::{VMA_AREA_VDSO, VMA_AREA_VVAR};

/// `movabs rax, imm64; jmp rax`: what each old entry point becomes.
pub(super) const TRAMPOLINE_LEN: u64 = 12;

/// The jump that replaces an old entry point: to `target`, in this kernel's vDSO.
pub(super) fn trampoline(target: u64) -> Vec<u8> {
    let mut code = vec![0x48, 0xb8];
    code.extend_from_slice(&target.to_le_bytes());
    code.extend_from_slice(&[0xff, 0xe0]);
    code
}

/// How the dumped vDSO of a process is to be rebuilt when it is not this kernel's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Proxy {
    /// The dumped vDSO's range.
    pub start: u64,
    pub end: u64,
    /// (offset of an entry point in the dumped vDSO, offset of the same symbol in this
    /// kernel's), one per distinct old entry point, in order.
    pub entries: Vec<(u64, u64)>,
}

/// Compares the vDSO of one dumped process (its VMAs `mm`, its `pagemap` into
/// `pages-<pages_id>.img`, the instruction pointers of its threads `ips`) with the
/// running kernel's: `None` when they are the same (or there is none to compare: no
/// vDSO, or its pages not in the images), else the proxy to build, or why none can be.
pub(super) fn check(
    pages: &[u8],
    mm: &pb::MmEntry,
    pagemap: &[pb::PagemapEntry],
    pages_id: u32,
    ips: &[u64],
) -> Result<Option<Proxy>, RestoreError> {
    let Some(vma) = mm.vmas.iter().find(|v| v.status & VMA_AREA_VDSO != 0) else {
        return Ok(None);
    };
    let pages_name = format!("pages-{pages_id}.img");
    let mismatch = |what: String| RestoreError::Mismatch {
        image: pages_name.clone(),
        what: format!(
            "the dumped vDSO (at {:#x}) is not this kernel's, and {what}",
            vma.start
        ),
    };
    let dumped =
        dumped_pages(pages, pagemap, vma.start, vma.end).map_err(|e| RestoreError::BadImage {
            image: pages_name.clone(),
            what: format!("the vDSO's pages: {e}"),
        })?;
    if dumped.iter().all(Option::is_none) {
        return Ok(None);
    }
    let live = live_vdso().map_err(|e| mismatch(format!("this kernel's cannot be read: {e}")))?;
    let Some(what) = difference(&dumped, &live) else {
        return Ok(None);
    };
    tracing::info!("the dumped vDSO at {:#x} differs: {what}", vma.start);
    let whole = dumped
        .iter()
        .cloned()
        .collect::<Option<Vec<_>>>()
        .map(|pages| pages.concat())
        .ok_or_else(|| mismatch("not all of its pages are saved".into()))?;
    let old = symbols(&whole).map_err(|e| mismatch(format!("it is no ELF image ({e})")))?;
    let new =
        symbols(&live).map_err(|e| mismatch(format!("this kernel's is no ELF image ({e})")))?;
    let len = vma.end - vma.start;
    if let Some(ip) = ips.iter().find(|&&ip| vma.start <= ip && ip < vma.end) {
        return Err(mismatch(format!(
            "a thread was stopped inside it (at {ip:#x}), where its old code cannot run"
        )));
    }
    let mut entries: Vec<(u64, u64)> = Vec::new();
    for (name, &at) in &old {
        let here = *new.get(name).ok_or_else(|| {
            mismatch(format!(
                "its symbol {name} is missing in this kernel's ({what})"
            ))
        })?;
        if !entries.iter().any(|&(o, _)| o == at) {
            entries.push((at, here));
        }
    }
    entries.sort();
    let too_close = entries
        .windows(2)
        .find(|w| w[1].0 - w[0].0 < TRAMPOLINE_LEN)
        .map(|w| w[0].0)
        .or_else(|| {
            entries
                .last()
                .filter(|e| e.0 + TRAMPOLINE_LEN > len)
                .map(|e| e.0)
        });
    if let Some(at) = too_close {
        return Err(mismatch(format!(
            "its entry point at {at:#x} has no room for a jump ({what})"
        )));
    }
    Ok(Some(Proxy {
        start: vma.start,
        end: vma.end,
        entries,
    }))
}

/// The saved pages of `[start, end)`, page by page (`None` for a page not saved).
fn dumped_pages(
    pages: &[u8],
    pagemap: &[pb::PagemapEntry],
    start: u64,
    end: u64,
) -> std::io::Result<Vec<Option<Vec<u8>>>> {
    let mut out = vec![None; ((end - start) / PAGE) as usize];
    let mut offset = 0u64;
    for e in pagemap {
        let len = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages)) * PAGE;
        let (from, to) = (e.vaddr.max(start), (e.vaddr + len).min(end));
        let mut at = from;
        while at < to {
            let off = (offset + (at - e.vaddr)) as usize;
            let page = super::chain::pages_at(pages, off, PAGE as usize)?;
            out[((at - start) / PAGE) as usize] = Some(page.to_vec());
            at += PAGE;
        }
        offset += len;
    }
    Ok(out)
}

/// This kernel's vDSO: the bytes of our own `[vdso]` mapping.
fn live_vdso() -> std::io::Result<Vec<u8>> {
    let me = Pid(std::process::id() as i32);
    let maps = ProcDir::open(me)?.maps_plain()?;
    let vdso = maps
        .iter()
        .find(|m| m.path == "[vdso]")
        .ok_or_else(|| std::io::Error::other("no [vdso] mapping"))?;
    let mut bytes = vec![0u8; (vdso.end - vdso.start) as usize];
    File::open("/proc/self/mem")?.read_exact_at(&mut bytes, vdso.start)?;
    Ok(bytes)
}

/// What differs between the dumped vDSO pages and the live vDSO, if anything: their
/// size, an exported symbol, or else the code.
fn difference(dumped: &[Option<Vec<u8>>], live: &[u8]) -> Option<String> {
    let dumped_len = dumped.len() * PAGE as usize;
    if dumped_len != live.len() {
        return Some(format!(
            "it is {dumped_len} bytes, this kernel's {}",
            live.len()
        ));
    }
    let differing: Vec<usize> = dumped
        .iter()
        .enumerate()
        .filter_map(|(i, page)| page.as_ref().map(|p| (i, p)))
        .flat_map(|(i, page)| {
            let base = i * PAGE as usize;
            page.iter()
                .zip(&live[base..base + page.len()])
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .map(move |(j, _)| base + j)
        })
        .collect();
    let first = *differing.first()?;
    // The symbols tell more than a byte offset, where the ELF header was saved.
    if let Some(header) = &dumped[0] {
        let mut whole = header.clone();
        for (i, page) in dumped.iter().enumerate().skip(1) {
            match page {
                Some(p) => whole.extend_from_slice(p),
                None => whole.extend_from_slice(&live[i * PAGE as usize..(i + 1) * PAGE as usize]),
            }
        }
        if let Some(what) = symbol_difference(&whole, live) {
            return Some(what);
        }
    }
    Some(format!(
        "same exported symbols, but {} bytes of it differ, the first at offset {first:#x}",
        differing.len()
    ))
}

/// The exported symbols (name to offset) of a vDSO image, or why it is not one.
fn symbols(image: &[u8]) -> Result<BTreeMap<String, u64>, String> {
    let elf = goblin::elf::Elf::parse(image).map_err(|e| e.to_string())?;
    Ok(elf
        .dynsyms
        .iter()
        .filter(|s| s.st_value != 0 && s.st_name != 0 && s.st_type() == STT_FUNC)
        .filter_map(|s| {
            let name = elf.dynstrtab.get_at(s.st_name)?;
            Some((name.to_owned(), s.st_value))
        })
        .collect())
}

/// The first exported symbol that is missing from one vDSO or sits elsewhere.
fn symbol_difference(dumped: &[u8], live: &[u8]) -> Option<String> {
    let old = match symbols(dumped) {
        Ok(s) => s,
        Err(e) => return Some(format!("the dumped one is no ELF image ({e})")),
    };
    let new = symbols(live).ok()?;
    for (name, at) in &old {
        match new.get(name) {
            None => return Some(format!("symbol {name} (at {at:#x}) is missing here")),
            Some(here) if here != at => {
                return Some(format!(
                    "symbol {name} is at {at:#x} in it, at {here:#x} here"
                ))
            }
            Some(_) => {}
        }
    }
    new.keys()
        .find(|name| !old.contains_key(*name))
        .map(|name| format!("this kernel's symbol {name} is missing in it"))
}

/// Turns the dumped vDSO's bytes at `proxy.start` into a proxy: each old entry point
/// jumps to the same symbol of this kernel's vDSO at `live`; then it becomes read-only
/// code, as a vDSO is.
pub(super) fn redirect(inj: &mut Injector, proxy: &Proxy, live: u64) -> std::io::Result<()> {
    for &(old, new) in &proxy.entries {
        inj.write(proxy.start + old, &trampoline(live + new))?;
    }
    let rx = (libc::PROT_READ | libc::PROT_EXEC) as u64;
    inj.syscall_ok(
        "mprotect (vDSO proxy)",
        libc::SYS_mprotect,
        [proxy.start, proxy.end - proxy.start, rx, 0, 0, 0],
    )?;
    Ok(())
}

/// mremap(2)s the special mappings `block` (at `from`) so that it starts at `to`.
fn move_block(inj: &mut Injector, block: &[&MapEntry], from: u64, to: u64) -> std::io::Result<()> {
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    let base = block.iter().map(|m| m.start).min().unwrap_or(from);
    for m in block {
        let old = from + (m.start - base);
        let new = to + (m.start - base);
        let len = m.end - m.start;
        inj.syscall_ok("mremap", libc::SYS_mremap, [old, len, len, flags, new, 0])?;
    }
    Ok(())
}

impl Rebuild<'_> {
    /// Stage 4: this kernel's vDSO and its data pages (in the task's maps `current`)
    /// at the dumped addresses, at their dumped distances; or, with a proxy, out of the
    /// dumped layout's way (stage 5 puts the dumped vDSO's bytes at its address).
    /// Returns where this kernel's vDSO went in the second case.
    pub(super) fn place_vdso(&mut self, current: &[MapEntry]) -> Result<Option<u64>, RestoreError> {
        let img = self.img;
        let vmas = &img.mm.vmas;
        let dumped_vvar = vmas
            .iter()
            .find(|v| v.status & VMA_AREA_VVAR != 0)
            .map(|v| v.start);
        let dumped_vdso = vmas
            .iter()
            .find(|v| v.status & VMA_AREA_VDSO != 0)
            .map(|v| v.start);
        let specials: Vec<_> = current
            .iter()
            .filter(|m| matches!(m.path.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]"))
            .collect();
        let mut live_vdso = None;
        if img.vdso_proxy.is_some() {
            let base = specials.iter().map(|m| m.start).min().unwrap_or(0);
            let total = specials.iter().map(|m| m.end).max().unwrap_or(base) - base;
            let aside = free_area(vmas, current, total).ok_or_else(|| {
                self.err("finding room")(std::io::Error::other("no room for this kernel's vDSO"))
            })?;
            let vdso = specials
                .iter()
                .find(|m| m.path == "[vdso]")
                .ok_or_else(|| {
                    self.err("finding this kernel's vDSO")(std::io::Error::other(
                        "no [vdso] mapping",
                    ))
                })?;
            move_block(&mut self.inj, &specials, base, aside)
                .map_err(self.err("moving the vDSO"))?;
            live_vdso = Some(aside + (vdso.start - base));
        } else if let (Some(dvvar), Some(dvdso)) = (dumped_vvar, dumped_vdso) {
            self.move_vdso_to(current, &specials, dvvar, dvdso)?;
        }
        // A task that had unmapped its vDSO (or its data pages) gets none: the
        // restorer's copies go.
        for m in &specials {
            let dumped = if m.path == "[vdso]" {
                dumped_vdso
            } else {
                dumped_vvar
            };
            if dumped.is_none() {
                self.inj
                    .syscall_ok(
                        "munmap",
                        libc::SYS_munmap,
                        [m.start, m.end - m.start, 0, 0, 0, 0],
                    )
                    .map_err(self.err(&format!("unmapping {}", m.path)))?;
            }
        }
        Ok(live_vdso)
    }

    /// Moves this kernel's vDSO and data pages (`specials`) so that the data pages start
    /// at `dvvar` and the vDSO at `dvdso`, as dumped; refused when their distance is
    /// not this kernel's.
    fn move_vdso_to(
        &mut self,
        current: &[MapEntry],
        specials: &[&MapEntry],
        dvvar: u64,
        dvdso: u64,
    ) -> Result<(), RestoreError> {
        let base = specials.iter().map(|m| m.start).min().unwrap_or(0);
        let cur_vdso = specials
            .iter()
            .find(|m| m.path == "[vdso]")
            .map(|m| m.start)
            .unwrap_or(0);
        if cur_vdso - base != dvdso - dvvar {
            return Err(unsupported(
                "a vDSO laid out differently from this kernel's",
            ));
        }
        let total = specials.iter().map(|m| m.end).max().unwrap_or(base) - base;
        let overlaps = |a: u64| a < base + total && base < a + total;
        let mut from = base;
        if overlaps(dvvar) && dvvar != base {
            // Through a temporary spot, so no move lands on a mapping still to move.
            let tmp = free_area(&self.img.mm.vmas, current, total).ok_or_else(|| {
                self.err("finding room")(std::io::Error::other("no room to move the vDSO"))
            })?;
            move_block(&mut self.inj, specials, from, tmp).map_err(self.err("moving the vDSO"))?;
            from = tmp;
        }
        if from != dvvar {
            move_block(&mut self.inj, specials, from, dvvar)
                .map_err(self.err("moving the vDSO"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(bytes: &[u8]) -> Vec<Option<Vec<u8>>> {
        bytes
            .chunks(PAGE as usize)
            .map(|p| Some(p.to_vec()))
            .collect()
    }

    #[test]
    fn a_trampoline_is_movabs_rax_then_jmp_rax() {
        let t = trampoline(0x1122_3344_5566_7788);
        assert_eq!(t.len() as u64, TRAMPOLINE_LEN);
        assert_eq!(&t[..2], &[0x48, 0xb8]);
        assert_eq!(&t[2..10], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&t[10..], &[0xff, 0xe0]);
    }

    #[test]
    fn the_live_vdso_matches_itself_and_changes_are_named() {
        let live = live_vdso().expect("our own vDSO");
        assert!(symbols(&live)
            .unwrap()
            .keys()
            .any(|n| n.contains("clock_gettime")));
        assert_eq!(difference(&pages(&live), &live), None);
        // An unsaved page is not compared.
        let mut partly = pages(&live);
        partly[1] = None;
        assert_eq!(difference(&partly, &live), None);

        // A byte of code, in the middle of .text.
        let elf = goblin::elf::Elf::parse(&live).unwrap();
        let text = elf
            .section_headers
            .iter()
            .find(|h| elf.shdr_strtab.get_at(h.sh_name) == Some(".text"))
            .unwrap();
        let mut code = live.clone();
        let at = (text.sh_offset + text.sh_size / 2) as usize;
        code[at] ^= 0xff;
        let what = difference(&pages(&code), &live).unwrap();
        assert!(what.contains("same exported symbols"), "{what}");
        assert!(what.contains(&format!("{at:#x}")), "{what}");

        // An exported symbol's address.
        let (i, sym) = elf
            .dynsyms
            .iter()
            .enumerate()
            .find(|(_, s)| s.st_value != 0 && s.st_name != 0)
            .unwrap();
        let name = elf.dynstrtab.get_at(sym.st_name).unwrap().to_owned();
        let dynsym = elf
            .section_headers
            .iter()
            .find(|h| h.sh_type == goblin::elf::section_header::SHT_DYNSYM)
            .unwrap();
        // st_value is at offset 8 of an Elf64_Sym.
        let value_at = dynsym.sh_offset as usize + i * 24 + 8;
        let mut moved = live.clone();
        moved[value_at..value_at + 8].copy_from_slice(&(sym.st_value + 16).to_le_bytes());
        let what = difference(&pages(&moved), &live).unwrap();
        assert!(what.contains(&name), "{what}");

        let what = difference(&pages(&live[..PAGE as usize]), &live).unwrap();
        assert!(what.contains("bytes"), "{what}");
    }
}
