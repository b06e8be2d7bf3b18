//! criu-rs's own compressed pages file, `pages-N.zst.img`: the bytes of `pages-N.img`
//! in zstd blocks. **Not CRIU's format**: CRIU 4.2 compresses nothing, and the LZ4 page
//! compression of CRIU's development branch (after 4.2) could not be read here, so this
//! file has a name of its own and a magic of its own; CRIU and crit find no
//! `pages-N.img` beside it and say so. A restore by criu-rs unpacks it into
//! `pages-N.img` first.
//!
//! Layout (little endian):
//!
//! ```text
//! magic "CRSZPG01" | block bytes u32 | level i32 | raw length u64 | blocks u64
//! stored length u32, per block (high bit: the block is stored as it is)
//! the blocks, back to back
//! ```
//!
//! Block `i` holds raw bytes `[i * block, min((i + 1) * block, raw length))`: blocks are
//! compressed and unpacked independently, on every core.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The file's first eight bytes.
pub const MAGIC: [u8; 8] = *b"CRSZPG01";
/// Raw bytes per block.
pub const BLOCK_BYTES: u32 = 1 << 20;
/// Bytes before the length table.
const HEADER_BYTES: u64 = 32;
/// The high bit of a stored length: the block is kept uncompressed (it did not shrink).
const STORED_RAW: u32 = 1 << 31;
/// zstd's level: its fastest positive one (~0.4-0.5 GB/s per core here on pages).
pub const LEVEL: i32 = 1;

/// The compressed file's name for pages image `pages_id`.
pub fn file_name(pages_id: u32) -> String {
    format!("pages-{pages_id}.zst.img")
}

/// The pages id of a compressed file's name (`pages-N.zst.img`).
pub fn pages_id_of(name: &str) -> Option<u32> {
    name.strip_prefix("pages-")?
        .strip_suffix(".zst.img")?
        .parse()
        .ok()
}

/// What unpacking a compressed pages file found wrong.
#[derive(Debug, thiserror::Error)]
pub enum ZpagesError {
    #[error("reading or writing: {0}")]
    Io(#[from] io::Error),
    #[error("not a criu-rs compressed pages file (magic {0:02x?})")]
    Magic([u8; 8]),
    #[error("header: {0}")]
    Header(String),
    #[error("block {block}: {what}")]
    Block { block: u64, what: String },
}

struct Header {
    block_bytes: u64,
    raw_len: u64,
    blocks: u64,
}

impl Header {
    /// The header of `raw_len` raw bytes in blocks of `BLOCK_BYTES`.
    fn for_raw(raw_len: u64) -> Header {
        let block_bytes = u64::from(BLOCK_BYTES);
        Header {
            block_bytes,
            raw_len,
            blocks: raw_len.div_ceil(block_bytes),
        }
    }

    /// Its `HEADER_BYTES` bytes, as the file starts.
    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_BYTES as usize);
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&(self.block_bytes as u32).to_le_bytes());
        bytes.extend_from_slice(&LEVEL.to_le_bytes());
        bytes.extend_from_slice(&self.raw_len.to_le_bytes());
        bytes.extend_from_slice(&self.blocks.to_le_bytes());
        bytes
    }

    /// Raw bytes of block `block`.
    fn raw_len_of(&self, block: u64) -> u64 {
        (self.raw_len - block * self.block_bytes).min(self.block_bytes)
    }
}

/// Keeps `e` in `slot` unless an earlier error is there.
fn keep_first<E>(slot: &Mutex<Option<E>>, e: E) {
    if let Ok(mut first) = slot.lock() {
        first.get_or_insert(e);
    }
}

/// Compresses `raw` (all of it) into `out` (empty) with `workers` threads. Returns the
/// bytes written. Memory: a few blocks per worker.
pub fn compress(raw: &File, out: &File, workers: usize) -> io::Result<u64> {
    let header = Header::for_raw(raw.metadata()?.len());
    let (block, blocks) = (header.block_bytes, header.blocks);
    out.write_all_at(&header.encode(), 0)?;
    let table_at = HEADER_BYTES;
    let mut at = table_at + 4 * blocks;
    let mut table = vec![0u8; 4 * blocks as usize];
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<io::Error>> = Mutex::new(None);
    // At most this many blocks wait to be written in order.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>, bool)>(2 * workers.max(1));
    std::thread::scope(|s| -> io::Result<()> {
        for _ in 0..workers.max(1) {
            let (tx, next, first_error, header) = (tx.clone(), &next, &first_error, &header);
            s.spawn(move || {
                let mut buf = vec![0u8; BLOCK_BYTES as usize];
                // With each frame's checksum: a damaged block fails instead of unpacking
                // into other bytes of the right length.
                let compressor = zstd::bulk::Compressor::new(LEVEL).and_then(|mut c| {
                    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
                    Ok(c)
                });
                let mut compressor = match compressor {
                    Ok(c) => c,
                    Err(e) => return keep_first(first_error, e),
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                    if i >= blocks {
                        return;
                    }
                    let len = header.raw_len_of(i) as usize;
                    let packed = raw
                        .read_exact_at(&mut buf[..len], i * block)
                        .and_then(|()| compressor.compress(&buf[..len]));
                    let sent = match packed {
                        Ok(p) if p.len() < len => tx.send((i, p, false)),
                        Ok(_) => tx.send((i, buf[..len].to_vec(), true)),
                        Err(e) => return keep_first(first_error, e),
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        // Written in block order, as they come.
        let mut waiting: BTreeMap<u64, (Vec<u8>, bool)> = BTreeMap::new();
        let mut written = 0u64;
        for (i, bytes, as_is) in rx {
            waiting.insert(i, (bytes, as_is));
            while let Some((bytes, as_is)) = waiting.remove(&written) {
                out.write_all_at(&bytes, at)?;
                let stored = bytes.len() as u32 | if as_is { STORED_RAW } else { 0 };
                let slot = 4 * written as usize;
                table[slot..slot + 4].copy_from_slice(&stored.to_le_bytes());
                at += bytes.len() as u64;
                written += 1;
            }
        }
        if let Some(e) = first_error.lock().ok().and_then(|mut f| f.take()) {
            return Err(e);
        }
        if written != blocks {
            return Err(io::Error::other("a compression worker stopped early"));
        }
        Ok(())
    })?;
    out.write_all_at(&table, table_at)?;
    Ok(at)
}

/// Unpacks compressed pages file `input` into `out` (empty) with `workers` threads.
/// Returns the raw bytes written. A damaged file fails naming what is wrong.
pub fn decompress(input: &File, out: &File, workers: usize) -> Result<u64, ZpagesError> {
    let file_len = input.metadata()?.len();
    let mut head = [0u8; HEADER_BYTES as usize];
    input
        .read_exact_at(&mut head, 0)
        .map_err(|_| ZpagesError::Header(format!("only {file_len} bytes")))?;
    let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or_default());
    if head[..8] != MAGIC {
        return Err(ZpagesError::Magic(head[..8].try_into().unwrap_or_default()));
    }
    let header = Header {
        block_bytes: u64::from(u32::from_le_bytes(
            head[8..12].try_into().unwrap_or_default(),
        )),
        raw_len: word(16),
        blocks: word(24),
    };
    if header.block_bytes == 0 || header.block_bytes > 64 << 20 {
        return Err(ZpagesError::Header(format!(
            "block size {} out of range",
            header.block_bytes
        )));
    }
    if header.blocks != header.raw_len.div_ceil(header.block_bytes) {
        return Err(ZpagesError::Header(format!(
            "{} blocks for {} bytes of {} per block",
            header.blocks, header.raw_len, header.block_bytes
        )));
    }
    let table_len = header
        .blocks
        .checked_mul(4)
        .filter(|&t| HEADER_BYTES + t <= file_len)
        .ok_or_else(|| {
            ZpagesError::Header(format!(
                "a table of {} blocks does not fit in {file_len} bytes",
                header.blocks
            ))
        })?;
    let mut table = vec![0u8; table_len as usize];
    input.read_exact_at(&mut table, HEADER_BYTES)?;
    // Where each block starts, checked against the file's end.
    let mut blocks = Vec::with_capacity(header.blocks as usize);
    let mut at = HEADER_BYTES + table_len;
    for (i, entry) in table.chunks_exact(4).enumerate() {
        let stored = u32::from_le_bytes(entry.try_into().unwrap_or_default());
        let (len, as_is) = (u64::from(stored & !STORED_RAW), stored & STORED_RAW != 0);
        let raw_len = header.raw_len_of(i as u64);
        if (as_is && len != raw_len) || len == 0 || at + len > file_len {
            return Err(ZpagesError::Block {
                block: i as u64,
                what: format!("stored length {len} at {at} (file: {file_len} bytes)"),
            });
        }
        blocks.push((at, len, as_is));
        at += len;
    }
    out.set_len(header.raw_len)?;
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<ZpagesError>> = Mutex::new(None);
    let record = |e: ZpagesError| keep_first(&first_error, e);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            let (next, blocks, header, record, first_error) =
                (&next, &blocks, &header, &record, &first_error);
            s.spawn(move || {
                let mut packed = Vec::new();
                let mut raw = vec![0u8; header.block_bytes as usize];
                let mut unpacker = match zstd::bulk::Decompressor::new() {
                    Ok(d) => d,
                    Err(e) => return record(e.into()),
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(at, len, as_is)) = blocks.get(i) else {
                        return;
                    };
                    if first_error.lock().map(|f| f.is_some()).unwrap_or(true) {
                        return;
                    }
                    let raw_len = header.raw_len_of(i as u64) as usize;
                    packed.resize(len as usize, 0);
                    if let Err(e) = input.read_exact_at(&mut packed, at) {
                        return record(e.into());
                    }
                    let bytes = if as_is {
                        &packed[..]
                    } else {
                        match unpacker.decompress_to_buffer(&packed, &mut raw[..raw_len]) {
                            Ok(n) if n == raw_len => &raw[..raw_len],
                            Ok(n) => {
                                return record(ZpagesError::Block {
                                    block: i as u64,
                                    what: format!("{n} bytes unpacked, {raw_len} expected"),
                                })
                            }
                            Err(e) => {
                                return record(ZpagesError::Block {
                                    block: i as u64,
                                    what: format!("damaged: {e}"),
                                })
                            }
                        }
                    };
                    if let Err(e) = out.write_all_at(bytes, i as u64 * header.block_bytes) {
                        return record(e.into());
                    }
                }
            });
        }
    });
    match first_error.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(header.raw_len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> (std::path::PathBuf, File) {
        let path =
            std::env::temp_dir().join(format!("criu-images-zpages-{}-{name}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (path, file)
    }

    fn round_trip(raw: &[u8]) -> Vec<u8> {
        let (p1, input) = temp("raw");
        let (p2, packed) = temp("packed");
        let (p3, out) = temp("out");
        input.write_all_at(raw, 0).unwrap();
        compress(&input, &packed, 2).unwrap();
        decompress(&packed, &out, 2).unwrap();
        let mut back = vec![0u8; out.metadata().unwrap().len() as usize];
        out.read_exact_at(&mut back, 0).unwrap();
        for p in [p1, p2, p3] {
            let _ = std::fs::remove_file(p);
        }
        back
    }

    #[test]
    fn pages_come_back_byte_for_byte() {
        // Compressible pages, random ones (kept as they are) and a short last block.
        let mut raw = vec![0u8; 3 * BLOCK_BYTES as usize + 4096 * 3];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for (i, page) in raw.chunks_mut(4096).enumerate() {
            if i % 512 < 256 {
                page.fill(i as u8);
            } else {
                for b in page.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
            }
        }
        assert!(round_trip(&raw) == raw);
        assert!(round_trip(&[]).is_empty());
    }

    #[test]
    fn damaged_files_are_refused_by_what_is_wrong() {
        let (p1, input) = temp("raw-d");
        let (p2, packed) = temp("packed-d");
        input
            .write_all_at(&vec![7u8; 2 * BLOCK_BYTES as usize], 0)
            .unwrap();
        let len = compress(&input, &packed, 1).unwrap();
        let mut good = vec![0u8; len as usize];
        packed.read_exact_at(&mut good, 0).unwrap();
        let unpack = |bytes: &[u8]| {
            let (p, f) = temp("case");
            f.write_all_at(bytes, 0).unwrap();
            let (q, out) = temp("case-out");
            let r = decompress(&f, &out, 2).map_err(|e| e.to_string());
            let _ = (std::fs::remove_file(p), std::fs::remove_file(q));
            r
        };
        assert!(unpack(&good).is_ok());
        assert!(unpack(&good[..20]).unwrap_err().contains("header"));
        assert!(unpack(b"CRIUPAGESxxxxxxxxxxxxxxxxxxxxxxxxx")
            .unwrap_err()
            .contains("magic"));
        // Cut short: the last block's length reaches past the end.
        assert!(unpack(&good[..good.len() - 1])
            .unwrap_err()
            .contains("block 1"));
        // A block's bytes changed.
        let mut bad = good.clone();
        let last = bad.len() - 3;
        bad[last] ^= 0xff;
        assert!(unpack(&bad).unwrap_err().contains("block 1"));
        // A huge block count.
        let mut bad = good.clone();
        bad[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(unpack(&bad).unwrap_err().contains("header"));
        let _ = (std::fs::remove_file(p1), std::fs::remove_file(p2));
    }

    #[test]
    fn the_image_reader_names_a_compressed_pages_file() {
        let (p1, input) = temp("raw-r");
        let (p2, packed) = temp("packed-r");
        input.write_all_at(&[1u8; 8192], 0).unwrap();
        compress(&input, &packed, 1).unwrap();
        let err = crate::ImageReader::open(&p2).err().expect("refused");
        assert!(
            matches!(err.kind, crate::ErrorKind::CompressedPages),
            "{err}"
        );
        let _ = (std::fs::remove_file(p1), std::fs::remove_file(p2));
    }

    #[test]
    fn names() {
        assert_eq!(file_name(3), "pages-3.zst.img");
        assert_eq!(pages_id_of("pages-3.zst.img"), Some(3));
        assert_eq!(pages_id_of("pages-3.img"), None);
    }
}
