//! The archives crpod reads and writes: tar, plain or compressed with gzip or zstd
//! (podman's default export compression), in-process with the `tar`, `flate2` and `zstd`
//! crates.
//!
//! Unpacking checks every entry before it writes it, so a hostile archive is refused
//! with the entry named and nothing written outside the target. Names are bytes, never
//! lossy strings: a newline or a non-UTF-8 byte in a name cannot hide a component from
//! the checks. An entry is refused when its name is absolute or has a `..` component,
//! when it would be written below a symlink (one of this archive's or of a layer
//! unpacked before), when it is a hard link to a name outside the archive, or a symlink
//! whose relative target climbs above the root. Absolute symlink targets are kept: they
//! mean a path in the container's root, and nothing here follows a link while unpacking.
//!
//! Compression is read from an archive's first bytes (its name may lie) and chosen for
//! a new archive by the name's extension.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::Error;

/// How an archive's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a new archive at `path`, from its name: `.tar.gz`/`.tgz`
    /// gzip, `.tar.zst`/`.tzst` zstd, anything else a plain tar. Names of other
    /// compressions are refused rather than written uncompressed under a lying name.
    pub fn for_name(path: &Path) -> Result<Compression, Error> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let ends = |exts: &[&'static str]| exts.iter().find(|e| name.ends_with(*e)).copied();
        if ends(&[".gz", ".tgz"]).is_some() {
            return Ok(Compression::Gzip);
        }
        if ends(&[".zst", ".zstd", ".tzst"]).is_some() {
            return Ok(Compression::Zstd);
        }
        if let Some(ext) = ends(&[
            ".xz", ".txz", ".bz2", ".tbz", ".tbz2", ".lz4", ".lzma", ".z",
        ]) {
            return Err(Error::Msg(format!(
                "{}: {ext} compression is not supported: name the archive .tar, .tar.gz or .tar.zst",
                path.display()
            )));
        }
        Ok(Compression::None)
    }

    /// The compression of a stream from its first bytes (its magic number).
    fn sniff(head: &[u8]) -> Result<Compression, &'static str> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Ok(Compression::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Ok(Compression::Zstd)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Err("it is xz-compressed: crpod reads tar archives plain or compressed with gzip or zstd")
        } else if head.starts_with(b"BZh") {
            Err("it is bzip2-compressed: crpod reads tar archives plain or compressed with gzip or zstd")
        } else {
            Ok(Compression::None)
        }
    }
}

/// The tar stream of the archive at `path`, decompressed as its first bytes say. Errors
/// do not name the file: the caller says what it was reading.
pub fn open(path: &Path) -> Result<Box<dyn Read>, Error> {
    let file = File::open(path).map_err(|e| Error::Msg(format!("cannot open it: {e}")))?;
    let mut input = BufReader::with_capacity(1 << 16, file);
    let head = input
        .fill_buf()
        .map_err(|e| Error::Msg(format!("cannot read it: {e}")))?;
    if head.is_empty() {
        // A tar stream of no entries still has its end blocks: nothing at all is not one.
        return Err(Error::Msg("it is empty, not a tar archive".into()));
    }
    let kind = Compression::sniff(head).map_err(|why| Error::Msg(why.to_owned()))?;
    Ok(match kind {
        Compression::None => Box::new(input),
        // Multi-member: `pigz` and concatenated gzip files are one stream.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|e| Error::Msg(format!("cannot start zstd: {e}")))?,
        ),
    })
}

/// How [`unpack`] treats an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole tree (a root filesystem, a checkpoint archive): unpacked as it is.
    Tree,
    /// An image layer unpacked over the layers below: `.wh.NAME` removes NAME of those,
    /// `.wh..wh..opq` empties its directory of them; neither is unpacked itself.
    Layer,
}

/// An entry's name for messages: as text when it is UTF-8 (control characters escaped),
/// else with every byte outside printable ASCII as `\xNN`.
pub fn show(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("\"{}\"", name.escape_ascii()),
    }
}

/// The components of an entry's name (`.` and empty ones dropped), or why the name
/// is refused.
fn components(name: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if name.first() == Some(&b'/') {
        return Err("absolute path");
    }
    if name.contains(&0) {
        return Err("NUL byte in the name");
    }
    let mut out = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("`..` in the path"),
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// Whether a symlink `depth` directories below the root, pointing at `target`, stays
/// inside the root. Absolute targets do: they name a path in the container's root.
fn link_stays_inside(depth: usize, target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        return true;
    }
    let mut depth = depth;
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    true
}

/// `root` joined with the parents of `comps`, checked so that a write there stays
/// inside `root`: every parent that exists is a real directory (not a symlink, which
/// would carry the write elsewhere). With `create`, missing parents are made.
fn parent_inside(root: &Path, comps: &[&[u8]], create: bool) -> Result<Option<PathBuf>, String> {
    let mut dir = root.to_owned();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        dir.push(std::ffi::OsStr::from_bytes(c));
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "it lies below the symlink {}",
                    show(
                        dir.strip_prefix(root)
                            .unwrap_or(&dir)
                            .as_os_str()
                            .as_bytes()
                    )
                ))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "it lies below {}, which is not a directory",
                    show(
                        dir.strip_prefix(root)
                            .unwrap_or(&dir)
                            .as_os_str()
                            .as_bytes()
                    )
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                std::fs::create_dir(&dir)
                    .map_err(|e| format!("cannot create its directory: {e}"))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot look at its directory: {e}")),
        }
    }
    Ok(Some(dir))
}

/// Removes whatever is at `path` (a directory with its contents), never following a
/// symlink; nothing there is fine.
fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A checked entry: its name's components and what to do with it.
enum Plan<'a> {
    /// The root itself (`./`): nothing to write.
    Root,
    /// `.wh.NAME` of a layer: remove NAME (the last component) of the layers below.
    Whiteout(Vec<&'a [u8]>),
    /// `.wh..wh..opq` of a layer: empty its directory of the layers below.
    Opaque(Vec<&'a [u8]>),
    /// Aufs bookkeeping (`.wh..wh.plnk` and the like): skipped.
    Skip,
    Write(Vec<&'a [u8]>),
}

/// Checks one entry's name (and link target) as far as it can be without the tree.
fn plan<'a>(
    name: &'a [u8],
    entry_type: tar::EntryType,
    link: Option<&[u8]>,
    kind: Kind,
) -> Result<Plan<'a>, String> {
    if entry_type.is_pax_global_extensions() {
        // Archive-wide metadata (`git archive` puts its commit there), not a file.
        return Ok(Plan::Skip);
    }
    let mut comps = components(name).map_err(str::to_owned)?;
    let Some(last) = comps.last().copied() else {
        return Ok(Plan::Root);
    };
    if kind == Kind::Layer {
        if last == b".wh..wh..opq" {
            comps.pop();
            return Ok(Plan::Opaque(comps));
        }
        if last.starts_with(b".wh..wh.") {
            return Ok(Plan::Skip);
        }
        if let Some(gone) = last.strip_prefix(b".wh.") {
            comps.pop();
            comps.push(gone);
            return Ok(Plan::Whiteout(comps));
        }
    }
    if entry_type.is_symlink() {
        let target = link.ok_or("a symlink without a target")?;
        if target.is_empty() || !link_stays_inside(comps.len() - 1, target) {
            return Err(format!("a symlink to {} escapes the root", show(target)));
        }
    } else if entry_type.is_hard_link() {
        let target = link.ok_or("a hard link without a target")?;
        components(target)
            .map_err(|why| format!("a hard link to {} ({why}) escapes the root", show(target)))?;
    } else if !(entry_type.is_file()
        || entry_type.is_dir()
        || entry_type.is_contiguous()
        || entry_type.is_gnu_sparse()
        || entry_type.is_character_special()
        || entry_type.is_block_special()
        || entry_type.is_fifo())
    {
        return Err(format!(
            "unsupported entry type {:?}",
            char::from(entry_type.as_byte())
        ));
    }
    Ok(Plan::Write(comps))
}

/// Unpacks the archive at `archive` into the existing directory `target`, checking
/// every entry first (see the module comment). A layer is read twice: once to check all
/// of it and apply its whiteouts, which hide only what the layers below had, then to
/// unpack it. An error names the entry; the caller removes a half-unpacked target.
pub fn unpack(archive: &Path, target: &Path, kind: Kind) -> Result<(), Error> {
    if kind == Kind::Layer {
        let whiteouts = each_entry(archive, |entry| {
            let name = entry.path_bytes();
            let link = entry.link_name_bytes();
            match plan(&name, entry.header().entry_type(), link.as_deref(), kind)? {
                Plan::Whiteout(comps) => Ok(Some((owned(&comps), false))),
                Plan::Opaque(comps) => Ok(Some((owned(&comps), true))),
                // Below a symlink of a lower layer: refused before anything is written,
                // also where this layer would replace the link by a directory first.
                Plan::Write(comps) => parent_inside(target, &comps, false).map(|_| None),
                _ => Ok(None),
            }
        })?;
        for (comps, opaque) in whiteouts.into_iter().flatten() {
            apply_whiteout(target, &comps, opaque)?;
        }
    }
    each_entry(archive, |entry| write_entry(entry, target, kind))?;
    Ok(())
}

fn owned(comps: &[&[u8]]) -> Vec<Vec<u8>> {
    comps.iter().map(|c| c.to_vec()).collect()
}

/// Runs `f` on every entry of the archive; an error names the entry (the caller names
/// the archive).
fn each_entry<T>(
    archive: &Path,
    mut f: impl FnMut(&mut tar::Entry<'_, Box<dyn Read>>) -> Result<T, String>,
) -> Result<Vec<T>, Error> {
    let mut tar = tar::Archive::new(open(archive)?);
    // Owners are kept when we can set them (as root), as `tar` does; modes exactly.
    let root = nix::unistd::geteuid().is_root();
    tar.set_preserve_ownerships(root);
    tar.set_preserve_permissions(true);
    tar.set_preserve_mtime(true);
    tar.set_mask(0);
    let entries = tar
        .entries()
        .map_err(|e| Error::Msg(format!("not a tar archive: {e}")))?;
    let mut out = Vec::new();
    let mut last: Option<Vec<u8>> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            let after = last
                .as_deref()
                .map(|n| format!(" after entry {}", show(n)))
                .unwrap_or_default();
            Error::Msg(format!("unreadable{after}: {e}"))
        })?;
        let name = entry.path_bytes().into_owned();
        out.push(f(&mut entry).map_err(|why| Error::Msg(format!("entry {}: {why}", show(&name))))?);
        last = Some(name);
    }
    Ok(out)
}

fn apply_whiteout(target: &Path, comps: &[Vec<u8>], opaque: bool) -> Result<(), Error> {
    let comps: Vec<&[u8]> = comps.iter().map(Vec::as_slice).collect();
    let shown = show(&comps.join(&b'/'));
    let refuse = |why: String| Error::Msg(format!("whiteout of {shown}: {why}"));
    if opaque {
        // The directory itself must be a real one of ours: check it as a parent.
        let mut with_child = comps.clone();
        with_child.push(b"x");
        let Some(dir) = parent_inside(target, &with_child, false).map_err(refuse)? else {
            return Ok(());
        };
        let Ok(children) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for child in children.flatten() {
            remove_any(&child.path()).map_err(|e| Error::io(&child.path(), "remove", e))?;
        }
        return Ok(());
    }
    let Some(dir) = parent_inside(target, &comps, false).map_err(refuse)? else {
        return Ok(());
    };
    let Some(gone) = comps.last() else {
        return Ok(());
    };
    let path = dir.join(std::ffi::OsStr::from_bytes(gone));
    remove_any(&path).map_err(|e| Error::io(&path, "remove", e))
}

/// Writes one entry under `target`, after its checks.
fn write_entry(
    entry: &mut tar::Entry<'_, Box<dyn Read>>,
    target: &Path,
    kind: Kind,
) -> Result<(), String> {
    let name = entry.path_bytes().into_owned();
    let link = entry.link_name_bytes().map(|l| l.into_owned());
    let entry_type = entry.header().entry_type();
    let comps = match plan(&name, entry_type, link.as_deref(), kind)? {
        Plan::Write(comps) => comps,
        _ => return Ok(()),
    };
    let dir = parent_inside(target, &comps, true)?.ok_or("its directory could not be made")?;
    let last = comps.last().copied().unwrap_or_default();
    let dst = dir.join(std::ffi::OsStr::from_bytes(last));
    // What a lower layer (or an earlier entry) left there is replaced; a directory
    // stays for a directory, so the layers' contents merge. A symlink is removed, never
    // written through.
    let keep = entry_type.is_dir() && std::fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir());
    if !keep {
        remove_any(&dst).map_err(|e| format!("cannot replace what is there: {e}"))?;
    }
    if entry_type.is_hard_link() {
        let comps = components(link.as_deref().unwrap_or_default()).map_err(str::to_owned)?;
        let from_dir =
            parent_inside(target, &comps, false)?.ok_or("its target is not in the archive")?;
        let from = from_dir.join(std::ffi::OsStr::from_bytes(
            comps.last().copied().unwrap_or_default(),
        ));
        // link(2) does not follow a symlink at `from`: the link is to the symlink.
        return std::fs::hard_link(&from, &dst).map_err(|e| format!("cannot link it: {e}"));
    }
    if entry_type.is_character_special() || entry_type.is_block_special() || entry_type.is_fifo() {
        return make_node(entry.header(), &dst);
    }
    entry
        .unpack(&dst)
        .map(drop)
        .map_err(|e| format!("cannot write it: {e}"))
}

/// A device node or fifo (the tar crate would write these as empty files): an overlay
/// upper layer holds its whiteouts as character devices 0:0, and root filesystems hold
/// /dev entries, which `tar` run as root made too.
fn make_node(header: &tar::Header, dst: &Path) -> Result<(), String> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let bad = |what: &str, e: io::Error| format!("bad {what} in its header: {e}");
    let kind = if header.entry_type().is_character_special() {
        SFlag::S_IFCHR
    } else if header.entry_type().is_block_special() {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFIFO
    };
    let major = header
        .device_major()
        .map_err(|e| bad("device", e))?
        .unwrap_or(0);
    let minor = header
        .device_minor()
        .map_err(|e| bad("device", e))?
        .unwrap_or(0);
    let mode = header.mode().map_err(|e| bad("mode", e))? & 0o7777;
    mknod(
        dst,
        kind,
        Mode::empty(),
        makedev(major.into(), minor.into()),
    )
    .map_err(|e| format!("cannot make the node: {e}"))?;
    if nix::unistd::geteuid().is_root() {
        let uid =
            u32::try_from(header.uid().map_err(|e| bad("owner", e))?).map_err(|e| e.to_string())?;
        let gid =
            u32::try_from(header.gid().map_err(|e| bad("group", e))?).map_err(|e| e.to_string())?;
        std::os::unix::fs::lchown(dst, Some(uid), Some(gid))
            .map_err(|e| format!("cannot set its owner: {e}"))?;
    }
    // The mode after the owner: chown clears set-id bits.
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set its mode: {e}"))?;
    let mtime = header.mtime().map_err(|e| bad("mtime", e))?;
    let when = nix::sys::time::TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
    nix::sys::stat::utimensat(
        None,
        dst,
        &when,
        &when,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| format!("cannot set its time: {e}"))
}

/// Writes a new archive at `path` (created 0600: it holds checkpoint images), compressed
/// as its name says, with `members`: (name in the archive, path on disk), directories
/// with everything below them. A failed write leaves no file behind.
pub fn write(path: &Path, members: &[(&str, PathBuf)]) -> Result<(), Error> {
    let compression = Compression::for_name(path)?;
    let file =
        criu_core::images::create_image_file(path).map_err(|e| Error::io(path, "create", e))?;
    let result = (|| {
        let mut builder = tar::Builder::new(Sink::new(file, compression)?);
        let mut links = HashMap::new();
        for (name, disk) in members {
            append_tree(&mut builder, Path::new(name), disk, &mut links)?;
        }
        builder
            .into_inner()
            .and_then(Sink::finish)
            .map_err(|e| Error::io(path, "write", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Appends `disk` as `name`, and for a directory everything below it (in name order, so
/// equal trees make equal archives). Files with several links are stored once, the other
/// names as hard links to the first; sockets are left out (`tar` does the same: a socket
/// is made by its server, not restored from a file).
fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    name: &Path,
    disk: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), Error> {
    let failed = |what: &'static str| move |e: io::Error| Error::io(disk, what, e);
    let meta = std::fs::symlink_metadata(disk).map_err(failed("stat"))?;
    let file_type = meta.file_type();
    if file_type.is_socket() {
        return Ok(());
    }
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    if file_type.is_dir() {
        builder
            .append_data(&mut header, name, io::empty())
            .map_err(failed("archive"))?;
        let mut children = std::fs::read_dir(disk)
            .and_then(|d| d.collect::<io::Result<Vec<_>>>())
            .map_err(failed("list"))?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            append_tree(builder, &name.join(child.file_name()), &child.path(), links)?;
        }
    } else if file_type.is_symlink() {
        let target = std::fs::read_link(disk).map_err(failed("read the link"))?;
        builder
            .append_link(&mut header, name, target)
            .map_err(failed("archive"))?;
    } else if file_type.is_file() {
        if meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                return builder
                    .append_link(&mut header, name, first)
                    .map_err(failed("archive"));
            }
            links.insert((meta.dev(), meta.ino()), name.to_owned());
        }
        // O_NOFOLLOW: a container left running may have swapped the file for a link.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(disk)
            .map_err(failed("open"))?;
        let data = Exactly {
            file,
            left: meta.len(),
        };
        builder
            .append_data(&mut header, name, data)
            .map_err(failed("archive"))?;
    } else {
        // Character and block devices (overlay whiteouts are 0:0) and fifos.
        let rdev = meta.rdev();
        header
            .set_device_major(nix::sys::stat::major(rdev) as u32)
            .and_then(|()| header.set_device_minor(nix::sys::stat::minor(rdev) as u32))
            .map_err(failed("archive"))?;
        header.set_size(0);
        builder
            .append_data(&mut header, name, io::empty())
            .map_err(failed("archive"))?;
    }
    Ok(())
}

/// A file's data as exactly `left` bytes, the size its header was given: cut if the
/// file grew since, padded with zeros if it shrank (a container left running with `-R`
/// may still write to it), so the archive stays readable either way.
struct Exactly {
    file: File,
    left: u64,
}

impl Read for Exactly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = match self.file.read(&mut buf[..want])? {
            0 => {
                buf[..want].fill(0);
                want
            }
            n => n,
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// Where a new archive's tar stream goes: the file, through a compressor or not.
enum Sink {
    Plain(BufWriter<File>),
    Gzip(flate2::write::GzEncoder<BufWriter<File>>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

impl Sink {
    fn new(file: File, compression: Compression) -> Result<Sink, Error> {
        let out = BufWriter::with_capacity(1 << 16, file);
        Ok(match compression {
            Compression::None => Sink::Plain(out),
            Compression::Gzip => Sink::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::default(),
            )),
            Compression::Zstd => Sink::Zstd(
                zstd::stream::write::Encoder::new(out, zstd::DEFAULT_COMPRESSION_LEVEL)
                    .map_err(|e| Error::Msg(format!("cannot start zstd: {e}")))?,
            ),
        })
    }

    /// Ends the compressed stream and flushes everything to the disk: an error here is
    /// an archive that is not whole.
    fn finish(self) -> io::Result<()> {
        let out = match self {
            Sink::Plain(out) => out,
            Sink::Gzip(z) => z.finish()?,
            Sink::Zstd(z) => z.finish()?,
        };
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Gzip(w) => w.write(buf),
            Sink::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Gzip(w) => w.flush(),
            Sink::Zstd(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A scratch directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("crpod-archive-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// An entry with a raw name (and link target) as bytes, as a hostile archive has it:
    /// the tar crate's own setters refuse `..` and absolute names.
    fn raw(builder: &mut tar::Builder<File>, name: &[u8], kind: tar::EntryType, link: &[u8]) {
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(kind);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1);
        header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        let data: &[u8] = if kind.is_file() { b"pwned\n" } else { b"" };
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }

    /// (name, type, link target) of an entry written with `raw`.
    type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8]);

    fn tar_of(path: &Path, entries: &[RawEntry]) {
        let mut builder = tar::Builder::new(File::create(path).unwrap());
        for (name, kind, link) in entries {
            raw(&mut builder, name, *kind, link);
        }
        builder.finish().unwrap();
    }

    #[test]
    fn compression_from_names_and_magic() {
        let c = |n: &str| Compression::for_name(Path::new(n)).ok();
        assert_eq!(c("x.tar"), Some(Compression::None));
        assert_eq!(c("checkpoint"), Some(Compression::None));
        assert_eq!(c("/a/x.tar.gz"), Some(Compression::Gzip));
        assert_eq!(c("x.TGZ"), Some(Compression::Gzip));
        assert_eq!(c("x.tar.zst"), Some(Compression::Zstd));
        assert_eq!(c("x.tzst"), Some(Compression::Zstd));
        assert_eq!(c("x.tar.xz"), None);
        assert_eq!(c("x.tar.bz2"), None);
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Ok(Compression::Gzip));
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Ok(Compression::Zstd)
        );
        assert_eq!(Compression::sniff(b"config.json\0"), Ok(Compression::None));
        assert_eq!(Compression::sniff(b""), Ok(Compression::None));
        assert!(Compression::sniff(b"BZh91AY").is_err());
        assert!(Compression::sniff(b"\xfd7zXZ\0\0").is_err());
    }

    #[test]
    fn names_are_checked_as_bytes() {
        assert_eq!(components(b"./a//b/."), Ok(vec![&b"a"[..], b"b"]));
        assert_eq!(components(b"./"), Ok(vec![]));
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../b").is_err());
        assert!(components(b"\xff/../x").is_err());
        assert!(components(b"a\n/../x").is_err());
        assert_eq!(components(b"a\n/..b"), Ok(vec![&b"a\n"[..], b"..b"]));
        assert!(link_stays_inside(0, b"/outside"));
        assert!(link_stays_inside(2, b"../../etc"));
        assert!(!link_stays_inside(2, b"../../../etc"));
        assert!(!link_stays_inside(0, b".."));
        assert!(link_stays_inside(0, b"a/../b"));
        assert_eq!(show(b"a\nb"), r#""a\nb""#);
        assert_eq!(show(b"caf\xe9"), r#""caf\xe9""#);
        assert_eq!(show("café".as_bytes()), r#""café""#);
    }

    /// Everything crpod archives (odd names, links, hard links, fifos, modes) comes back
    /// the same through each compression, and the compression is the name's.
    #[test]
    fn round_trip_through_each_compression() {
        let scratch = Scratch::new("round");
        let tree = scratch.0.join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        let odd = [&b"new\nline"[..], b"caf\xe9", "日本".as_bytes()];
        for name in odd {
            std::fs::write(
                tree.join("sub").join(std::ffi::OsStr::from_bytes(name)),
                name,
            )
            .unwrap();
        }
        std::fs::write(tree.join("exe"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(tree.join("exe"), std::fs::Permissions::from_mode(0o4750))
            .unwrap();
        std::fs::hard_link(tree.join("exe"), tree.join("sub/exe2")).unwrap();
        symlink("/etc/passwd", tree.join("abs")).unwrap();
        symlink("../exe", tree.join("sub/rel")).unwrap();
        nix::unistd::mkfifo(
            &tree.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let long = "d".repeat(150);
        std::fs::create_dir_all(tree.join(&long)).unwrap();
        std::fs::write(tree.join(&long).join("f"), b"long").unwrap();
        let root = nix::unistd::geteuid().is_root();
        if root {
            // An overlay whiteout.
            nix::sys::stat::mknod(
                &tree.join("gone"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )
            .unwrap();
        }
        for (ext, magic) in [
            ("tar", None),
            ("tar.gz", Some(0x1fu8)),
            ("tar.zst", Some(0x28)),
        ] {
            let archive = scratch.0.join(format!("a.{ext}"));
            write(&archive, &[("top", tree.clone())]).unwrap();
            let meta = std::fs::metadata(&archive).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{ext}");
            let head = std::fs::read(&archive).unwrap()[0];
            if let Some(m) = magic {
                assert_eq!(head, m, "{ext} is compressed");
            }
            let out = scratch.0.join(format!("out-{ext}"));
            std::fs::create_dir_all(&out).unwrap();
            unpack(&archive, &out, Kind::Tree).unwrap();
            let top = out.join("top");
            for name in odd {
                let got =
                    std::fs::read(top.join("sub").join(std::ffi::OsStr::from_bytes(name))).unwrap();
                assert_eq!(got, name, "{ext}");
            }
            let exe = std::fs::metadata(top.join("exe")).unwrap();
            assert_eq!(exe.permissions().mode() & 0o7777, 0o4750, "{ext}");
            let exe2 = std::fs::metadata(top.join("sub/exe2")).unwrap();
            assert_eq!((exe.ino(), exe.nlink()), (exe2.ino(), 2), "hard link kept");
            assert_eq!(
                std::fs::read_link(top.join("abs")).unwrap(),
                Path::new("/etc/passwd")
            );
            assert_eq!(
                std::fs::read_link(top.join("sub/rel")).unwrap(),
                Path::new("../exe")
            );
            let fifo = std::fs::symlink_metadata(top.join("fifo")).unwrap();
            assert!(fifo.file_type().is_fifo(), "{ext}");
            assert_eq!(std::fs::read(top.join(&long).join("f")).unwrap(), b"long");
            if root {
                let gone = std::fs::symlink_metadata(top.join("gone")).unwrap();
                assert!(
                    gone.file_type().is_char_device() && gone.rdev() == 0,
                    "{ext}"
                );
            }
        }
        assert!(write(&scratch.0.join("a.tar.xz"), &[("top", tree)]).is_err());
        assert!(!scratch.0.join("a.tar.xz").exists());
    }

    /// Each hostile archive is refused with the entry named, nothing written outside.
    #[test]
    fn hostile_archives_are_refused_naming_the_entry() {
        use tar::EntryType as T;
        let scratch = Scratch::new("hostile");
        let outside = scratch.0.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let out_abs = outside.join("abs");
        let out = outside.as_os_str().as_bytes();
        let cases: Vec<(Vec<RawEntry>, &str)> = vec![
            (
                vec![(out_abs.as_os_str().as_bytes(), T::Regular, b"")],
                "absolute path",
            ),
            (vec![(b"a/../../outside/dots", T::Regular, b"")], "`..`"),
            (
                vec![(b"esc", T::Symlink, out), (b"esc/pwned", T::Regular, b"")],
                r#""esc/pwned": it lies below the symlink "esc""#,
            ),
            (
                vec![
                    (b"esc\n", T::Symlink, out),
                    (b"esc\n/pwned", T::Regular, b""),
                ],
                r#""esc\n/pwned": it lies below the symlink"#,
            ),
            (
                vec![(b"\xff", T::Symlink, out), (b"\xff/pwned", T::Regular, b"")],
                r#""\xff/pwned": it lies below the symlink"#,
            ),
            (
                vec![(b"d/up", T::Symlink, b"../../outside")],
                "escapes the root",
            ),
            (vec![(b"hard", T::Link, b"../outside/x")], "hard link"),
            (vec![(b"hard", T::Link, out)], "hard link"),
            (
                vec![(b"\xff/../../outside/x", T::Regular, b"")],
                r#""\xff/../../outside/x": `..`"#,
            ),
        ];
        for (n, (entries, expected)) in cases.iter().enumerate() {
            let archive = scratch.0.join(format!("{n}.tar"));
            tar_of(&archive, entries);
            let target = scratch.0.join(format!("target{n}"));
            std::fs::create_dir_all(&target).unwrap();
            for kind in [Kind::Tree, Kind::Layer] {
                let err = unpack(&archive, &target, kind).unwrap_err().to_string();
                assert!(err.contains(expected), "case {n}: {err}");
                assert!(err.starts_with("entry "), "case {n}: {err}");
            }
            assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "case {n}");
        }
        // A layer's entry below a lower layer's symlink is refused before the layer
        // writes anything.
        let lower = scratch.0.join("lower.tar");
        tar_of(&lower, &[(b"esc", T::Symlink, out)]);
        let upper = scratch.0.join("upper.tar");
        tar_of(
            &upper,
            &[(b"first", T::Regular, b""), (b"esc/pwned", T::Regular, b"")],
        );
        let rootfs = scratch.0.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        unpack(&lower, &rootfs, Kind::Layer).unwrap();
        let err = unpack(&upper, &rootfs, Kind::Layer)
            .unwrap_err()
            .to_string();
        assert!(err.contains("symlink"), "{err}");
        assert!(!rootfs.join("first").exists());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn layers_apply_whiteouts_to_the_layers_below_only() {
        use tar::EntryType as T;
        let scratch = Scratch::new("whiteouts");
        let lower = scratch.0.join("lower.tar");
        tar_of(
            &lower,
            &[
                (b"etc", T::Directory, b""),
                (b"etc/gone", T::Regular, b""),
                (b"etc/kept", T::Regular, b""),
                (b"opq", T::Directory, b""),
                (b"opq/old", T::Regular, b""),
                (b"link", T::Symlink, b"/etc"),
            ],
        );
        let upper = scratch.0.join("upper.tar");
        tar_of(
            &upper,
            &[
                (b"opq/new", T::Regular, b""),
                (b"opq/.wh..wh..opq", T::Regular, b""),
                (b"etc/.wh.gone", T::Regular, b""),
                (b".wh.link", T::Regular, b""),
            ],
        );
        let rootfs = scratch.0.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        unpack(&lower, &rootfs, Kind::Layer).unwrap();
        unpack(&upper, &rootfs, Kind::Layer).unwrap();
        assert!(!rootfs.join("etc/gone").exists());
        assert!(rootfs.join("etc/kept").exists());
        assert!(!rootfs.join("opq/old").exists());
        assert!(
            rootfs.join("opq/new").exists(),
            "this layer's own entries stay"
        );
        assert!(std::fs::symlink_metadata(rootfs.join("link")).is_err());
        assert!(!rootfs.join("etc/.wh.gone").exists());
        assert!(!rootfs.join("opq/.wh..wh..opq").exists());
        // In a plain tree the same names are ordinary files.
        let tree = scratch.0.join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        unpack(&upper, &tree, Kind::Tree).unwrap();
        assert!(tree.join("etc/.wh.gone").exists());
    }

    /// A file that changed size after its header was written still gives exactly the
    /// header's size, so the archive stays readable (export of a container left running).
    #[test]
    fn file_data_is_exactly_the_size_in_the_header() {
        let scratch = Scratch::new("exactly");
        let path = scratch.0.join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        for (left, want) in [
            (4u64, &b"0123"[..]),
            (10, b"0123456789"),
            (13, b"0123456789\0\0\0"),
        ] {
            let mut got = Vec::new();
            let file = File::open(&path).unwrap();
            Exactly { file, left }.read_to_end(&mut got).unwrap();
            assert_eq!(got, want, "{left}");
        }
    }

    #[test]
    fn pax_global_headers_are_no_files() {
        let scratch = Scratch::new("pax");
        let archive = scratch.0.join("g.tar");
        tar_of(
            &archive,
            &[
                (b"pax_global_header", tar::EntryType::XGlobalHeader, b""),
                (b"f", tar::EntryType::Regular, b""),
            ],
        );
        let target = scratch.0.join("t");
        std::fs::create_dir_all(&target).unwrap();
        unpack(&archive, &target, Kind::Tree).unwrap();
        assert!(target.join("f").exists());
        assert!(!target.join("pax_global_header").exists());
    }

    #[test]
    fn broken_archives_are_errors() {
        let scratch = Scratch::new("broken");
        let target = scratch.0.join("target");
        std::fs::create_dir_all(&target).unwrap();
        let tree = scratch.0.join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("big"), vec![7u8; 200_000]).unwrap();
        for ext in ["tar", "tar.gz", "tar.zst"] {
            let good = scratch.0.join(format!("good.{ext}"));
            write(&good, &[("t", tree.clone())]).unwrap();
            let bytes = std::fs::read(&good).unwrap();
            let cut = scratch.0.join(format!("cut.{ext}"));
            std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
            assert!(unpack(&cut, &target, Kind::Tree).is_err(), "{ext}");
        }
        let empty = scratch.0.join("empty.tar");
        std::fs::write(&empty, b"").unwrap();
        let err = unpack(&empty, &target, Kind::Tree).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        // An empty layer is a valid archive (end blocks only).
        let no_entries = scratch.0.join("no-entries.tar");
        std::fs::write(&no_entries, [0u8; 1024]).unwrap();
        unpack(&no_entries, &target, Kind::Layer).unwrap();
        let junk = scratch.0.join("junk");
        std::fs::write(&junk, b"not an archive").unwrap();
        assert!(unpack(&junk, &target, Kind::Tree).is_err());
        let err = unpack(&scratch.0.join("none"), &target, Kind::Tree).unwrap_err();
        assert!(err.to_string().contains("cannot open"), "{err}");
    }
}
