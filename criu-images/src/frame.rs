//! Framed image files: a magic header, then entries of `u32 length` + protobuf payload,
//! some followed by extra raw data.
//!
//! Readers stream: they hold one entry at a time, never the whole file, and they never
//! allocate more than the configured limit because of a length prefix; data is read in
//! bounded chunks, so a lying length on a short file costs only what the file holds.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Location, Result};
use crate::kind::{Family, ImageKind, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC};

/// Size limits that protect readers from hostile images.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest protobuf payload of one entry. CRIU's biggest entries (an mm with tens of
    /// thousands of VMAs, a core with full xsave) stay far below 16 MiB.
    pub max_entry: u64,
    /// Largest extra data held in memory at once (pipe, queue, ghost file contents).
    pub max_extra: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entry: 16 << 20,
            max_extra: 256 << 20,
        }
    }
}

/// Bytes read per step when a length comes from the file: growth follows the data
/// actually present, not the claimed length.
const CHUNK: usize = 64 << 10;

/// Reads an image file entry by entry.
pub struct ImageReader<R> {
    inner: R,
    path: PathBuf,
    kind: &'static ImageKind,
    offset: u64,
    /// Entries read so far; the index of the next one.
    index: usize,
    /// False while the magic header is being read: errors then name no entry.
    in_body: bool,
    limits: Limits,
}

impl ImageReader<BufReader<File>> {
    /// Opens an image file and reads its magic.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let at = Location {
            path: path.to_owned(),
            entry: None,
            offset: 0,
        };
        let meta = std::fs::metadata(path).map_err(|e| Error::new(at.clone(), ErrorKind::Io(e)))?;
        if meta.is_dir() {
            return Err(Error::new(at, ErrorKind::IsDirectory));
        }
        let file = File::open(path).map_err(|e| Error::new(at, ErrorKind::Io(e)))?;
        ImageReader::new(BufReader::with_capacity(CHUNK, file), path)
    }
}

impl<R: Read> ImageReader<R> {
    /// Reads the magic header from `inner`; `path` is only used in errors.
    pub fn new(inner: R, path: impl Into<PathBuf>) -> Result<Self> {
        Self::with_limits(inner, path, Limits::default())
    }

    pub fn with_limits(inner: R, path: impl Into<PathBuf>, limits: Limits) -> Result<Self> {
        let mut reader = ImageReader {
            inner,
            path: path.into(),
            kind: &crate::kind::KINDS[0],
            offset: 0,
            index: 0,
            in_body: false,
            limits,
        };
        let first = match reader.read_u32_or_eof("magic")? {
            Some(m) => m,
            None => return Err(reader.error_at(0, ErrorKind::Empty)),
        };
        // Where criu-rs shares a magic with CRIU, the file name tells the kind.
        let file_name = reader
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let family = match first {
            IMG_COMMON_MAGIC => Some(("common", Family::Common)),
            IMG_SERVICE_MAGIC => Some(("service", Family::Service)),
            _ => None,
        };
        reader.kind = match family {
            None => match ImageKind::by_magic(first, &file_name) {
                Some(k) if k.family == Family::Bare => k,
                _ if first.to_le_bytes() == crate::zpages::MAGIC[..4] => {
                    return Err(reader.error_at(0, ErrorKind::CompressedPages))
                }
                _ => return Err(reader.error_at(0, ErrorKind::UnknownMagic { found: first })),
            },
            Some((first_name, family)) => {
                let magic = reader.read_u32_or_eof("magic")?.ok_or_else(|| {
                    reader.error(ErrorKind::Truncated {
                        what: "magic",
                        expected: 4,
                        got: 0,
                    })
                })?;
                match ImageKind::by_magic(magic, &file_name) {
                    Some(k) if k.family == family => k,
                    Some(k) => {
                        return Err(reader.error_at(
                            4,
                            ErrorKind::WrongMagic {
                                first: first_name,
                                found: magic,
                                expected: k.name,
                            },
                        ))
                    }
                    None => {
                        return Err(reader.error_at(4, ErrorKind::UnknownMagic { found: magic }))
                    }
                }
            }
        };
        reader.in_body = true;
        Ok(reader)
    }

    pub fn kind(&self) -> &'static ImageKind {
        self.kind
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Index of the next entry.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The location of the entry being read, for errors raised by callers.
    pub fn location(&self) -> Location {
        Location {
            path: self.path.clone(),
            entry: self.in_body.then_some(self.index),
            offset: self.offset,
        }
    }

    pub fn error(&self, kind: ErrorKind) -> Error {
        Error::new(self.location(), kind)
    }

    fn error_at(&self, offset: u64, kind: ErrorKind) -> Error {
        Error::new(
            Location {
                path: self.path.clone(),
                entry: None,
                offset,
            },
            kind,
        )
    }

    /// Reads the next entry's payload, or `None` at a clean end of file.
    pub fn next_payload(&mut self) -> Result<Option<Vec<u8>>> {
        let start = self.offset;
        let Some(len) = self.read_u32_or_eof("entry length")? else {
            return Ok(None);
        };
        let len = u64::from(len);
        if len > self.limits.max_entry {
            self.offset = start;
            return Err(self.error(ErrorKind::EntryTooLarge {
                len,
                limit: self.limits.max_entry,
            }));
        }
        let payload = self.read_bounded(len, "entry payload")?;
        self.index += 1;
        Ok(Some(payload))
    }

    /// Reads and decodes the next entry as `M`.
    pub fn next_entry<M: prost::Message + Default>(&mut self) -> Result<Option<M>> {
        let start = self.offset;
        let index = self.index;
        let Some(payload) = self.next_payload()? else {
            return Ok(None);
        };
        M::decode(payload.as_slice()).map(Some).map_err(|source| {
            Error::new(
                Location {
                    path: self.path.clone(),
                    entry: Some(index),
                    offset: start,
                },
                ErrorKind::Decode {
                    message: short_type_name::<M>(),
                    source,
                },
            )
        })
    }

    /// Reads `len` bytes of extra data that follow an entry, into memory (bounded by
    /// `Limits::max_extra`).
    pub fn read_extra(&mut self, len: u64, what: &'static str) -> Result<Vec<u8>> {
        if len > self.limits.max_extra {
            return Err(self.error(ErrorKind::ExtraTooLarge {
                what,
                len,
                limit: self.limits.max_extra,
            }));
        }
        self.read_bounded(len, what)
    }

    /// Copies `len` bytes of extra data to `out` without holding them in memory.
    pub fn copy_extra(&mut self, len: u64, what: &'static str, out: &mut impl Write) -> Result<()> {
        let copied = io::copy(&mut (&mut self.inner).take(len), out)
            .map_err(|e| self.error(ErrorKind::Io(e)))?;
        self.offset += copied;
        if copied < len {
            return Err(self.error(ErrorKind::Truncated {
                what,
                expected: len,
                got: copied,
            }));
        }
        Ok(())
    }

    /// Skips `len` bytes (padding, or extra data the caller does not want).
    pub fn skip(&mut self, len: u64, what: &'static str) -> Result<()> {
        self.copy_extra(len, what, &mut io::sink())
    }

    /// Reads everything left in the file (bounded by `Limits::max_extra`).
    pub fn read_to_end(&mut self, what: &'static str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let limit = self.limits.max_extra;
        let n = (&mut self.inner)
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| self.error(ErrorKind::Io(e)))?;
        self.offset += n as u64;
        if n as u64 > limit {
            return Err(self.error(ErrorKind::ExtraTooLarge {
                what,
                len: n as u64,
                limit,
            }));
        }
        Ok(out)
    }

    fn read_bounded(&mut self, len: u64, what: &'static str) -> Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(len.min(CHUNK as u64) as usize);
        let got = (&mut self.inner)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|e| self.error(ErrorKind::Io(e)))? as u64;
        if got < len {
            let err = self.error(ErrorKind::Truncated {
                what,
                expected: len,
                got,
            });
            self.offset += got;
            return Err(err);
        }
        self.offset += got;
        Ok(buf)
    }

    /// A little-endian u32, or `None` if the file ends exactly here.
    fn read_u32_or_eof(&mut self, what: &'static str) -> Result<Option<u32>> {
        let mut buf = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.error(ErrorKind::Io(e))),
            }
        }
        match got {
            0 => Ok(None),
            4 => {
                self.offset += 4;
                Ok(Some(u32::from_le_bytes(buf)))
            }
            _ => Err(self.error(ErrorKind::Truncated {
                what,
                expected: 4,
                got: got as u64,
            })),
        }
    }
}

/// The mode of every image file: images hold the memory and the secrets of the dumped
/// processes (keys, tokens, passwords), so only the owner may read them. CRIU writes
/// 0644; its readers (`crit`, `criu restore`) run as the owner (root) and are not
/// affected.
pub const IMAGE_FILE_MODE: u32 = 0o600;

/// The mode of a directory created to hold images (see [`IMAGE_FILE_MODE`]).
pub const IMAGE_DIR_MODE: u32 = 0o700;

/// Creates (or truncates) an image file for reading and writing, with mode
/// [`IMAGE_FILE_MODE`] also when it existed before with a wider one: a file of an
/// earlier dump in the same directory keeps nothing of its old mode.
pub fn create_image_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(IMAGE_FILE_MODE)
        .open(path)?;
    // `mode` applies only to a file this call creates, and umask can only narrow it.
    if file.metadata()?.permissions().mode() & 0o777 != IMAGE_FILE_MODE {
        file.set_permissions(std::fs::Permissions::from_mode(IMAGE_FILE_MODE))?;
    }
    Ok(file)
}

/// Creates a directory for images with mode [`IMAGE_DIR_MODE`] (never wider, whatever
/// the umask).
pub fn create_image_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .mode(IMAGE_DIR_MODE)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(IMAGE_DIR_MODE))
}

/// Writes an image file entry by entry.
pub struct ImageWriter<W: Write> {
    inner: W,
    path: PathBuf,
    offset: u64,
    index: usize,
}

impl ImageWriter<BufWriter<File>> {
    /// Creates (or truncates) `path` with [`IMAGE_FILE_MODE`] and writes the magic of
    /// `kind`.
    pub fn create(path: impl AsRef<Path>, kind: &ImageKind) -> Result<Self> {
        let path = path.as_ref();
        let file = create_image_file(path).map_err(|e| {
            Error::new(
                Location {
                    path: path.to_owned(),
                    entry: None,
                    offset: 0,
                },
                ErrorKind::Io(e),
            )
        })?;
        ImageWriter::new(BufWriter::with_capacity(CHUNK, file), path, kind)
    }
}

impl<W: Write> ImageWriter<W> {
    pub fn new(inner: W, path: impl Into<PathBuf>, kind: &ImageKind) -> Result<Self> {
        let mut writer = ImageWriter {
            inner,
            path: path.into(),
            offset: 0,
            index: 0,
        };
        if kind.family == Family::Raw {
            return Err(writer.error(ErrorKind::RawImage { kind: kind.name }));
        }
        let header = kind.header();
        writer.write_raw(&header)?;
        Ok(writer)
    }

    fn error(&self, kind: ErrorKind) -> Error {
        Error::new(
            Location {
                path: self.path.clone(),
                entry: Some(self.index),
                offset: self.offset,
            },
            kind,
        )
    }

    /// Writes one framed entry from an already encoded payload.
    pub fn write_payload(&mut self, payload: &[u8]) -> Result<()> {
        let len = u32::try_from(payload.len()).map_err(|_| {
            self.error(ErrorKind::EntryTooLarge {
                len: payload.len() as u64,
                limit: u32::MAX.into(),
            })
        })?;
        self.write_raw(&len.to_le_bytes())?;
        self.write_raw(payload)?;
        self.index += 1;
        Ok(())
    }

    /// Encodes and writes one entry.
    pub fn write_entry<M: prost::Message>(&mut self, entry: &M) -> Result<()> {
        self.write_payload(&entry.encode_to_vec())
    }

    /// Writes extra data after the last entry.
    pub fn write_raw(&mut self, data: &[u8]) -> Result<()> {
        self.inner
            .write_all(data)
            .map_err(|e| self.error(ErrorKind::Io(e)))?;
        self.offset += data.len() as u64;
        Ok(())
    }

    /// Flushes and returns the inner writer.
    pub fn finish(mut self) -> Result<W> {
        self.inner
            .flush()
            .map_err(|e| self.error(ErrorKind::Io(e)))?;
        Ok(self.inner)
    }
}

fn short_type_name<M>() -> String {
    let full = std::any::type_name::<M>();
    full.rsplit("::").next().unwrap_or(full).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::ImageKind;

    fn image(kind: &str, body: &[u8]) -> Vec<u8> {
        let mut v = ImageKind::by_name(kind).unwrap().header();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn empty_file_is_an_error() {
        let err = ImageReader::new(&b""[..], "x.img").err().unwrap();
        assert!(matches!(err.kind, ErrorKind::Empty), "{err}");
    }

    #[test]
    fn unknown_magic_names_the_value() {
        let err = ImageReader::new(&[1u8, 2, 3, 4, 5, 6, 7, 8][..], "x.img")
            .err()
            .unwrap();
        assert!(err.to_string().contains("0x04030201"), "{err}");
    }

    #[test]
    fn huge_length_prefix_is_refused_without_allocating() {
        let data = image("PSTREE", &[0xff, 0xff, 0xff, 0xff, 1, 2]);
        let mut r = ImageReader::new(data.as_slice(), "pstree.img").unwrap();
        let err = r.next_payload().unwrap_err();
        assert!(
            matches!(
                err.kind,
                ErrorKind::EntryTooLarge {
                    len: 0xffff_ffff,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.location.entry, Some(0));
        assert_eq!(err.location.offset, 8);
    }

    #[test]
    fn truncated_payload_says_how_much_was_there() {
        let data = image("PSTREE", &[10, 0, 0, 0, 1, 2, 3]);
        let mut r = ImageReader::new(data.as_slice(), "pstree.img").unwrap();
        let err = r.next_payload().unwrap_err();
        assert!(
            matches!(
                err.kind,
                ErrorKind::Truncated {
                    expected: 10,
                    got: 3,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn truncated_length_prefix() {
        let data = image("PSTREE", &[10, 0]);
        let mut r = ImageReader::new(data.as_slice(), "pstree.img").unwrap();
        assert!(matches!(
            r.next_payload().unwrap_err().kind,
            ErrorKind::Truncated {
                expected: 4,
                got: 2,
                ..
            }
        ));
    }

    #[test]
    fn writer_and_reader_round_trip() {
        let kind = ImageKind::by_name("PSTREE").unwrap();
        let mut w = ImageWriter::new(Vec::new(), "pstree.img", kind).unwrap();
        w.write_payload(b"\x08\x01").unwrap();
        w.write_payload(b"").unwrap();
        let bytes = w.finish().unwrap();
        let mut r = ImageReader::new(bytes.as_slice(), "pstree.img").unwrap();
        assert_eq!(r.kind().name, "PSTREE");
        assert_eq!(r.next_payload().unwrap().unwrap(), b"\x08\x01");
        assert_eq!(r.next_payload().unwrap().unwrap(), b"");
        assert!(r.next_payload().unwrap().is_none());
    }

    #[test]
    fn image_files_are_0600_and_image_dirs_0700_whatever_was_there() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let dir = std::env::temp_dir().join(format!("criu-images-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        create_image_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert!(
            create_image_dir(&dir).is_err(),
            "an existing directory is not reused"
        );

        let kind = ImageKind::by_name("PSTREE").unwrap();
        let fresh = dir.join("pstree.img");
        ImageWriter::create(&fresh, kind).unwrap().finish().unwrap();
        assert_eq!(mode(&fresh), 0o600);
        // A file left by an earlier dump, readable by all: narrowed when rewritten.
        let old = dir.join("core-1.img");
        std::fs::write(&old, b"old").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        ImageWriter::create(&old, kind).unwrap().finish().unwrap();
        assert_eq!(mode(&old), 0o600);
        let raw = dir.join("pages-1.img");
        std::fs::write(&raw, b"x").unwrap();
        std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o666)).unwrap();
        let f = create_image_file(&raw).unwrap();
        assert_eq!((mode(&raw), f.metadata().unwrap().len()), (0o600, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
