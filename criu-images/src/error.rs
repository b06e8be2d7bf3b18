//! Errors of the image layer. Every error says which file, which entry and which byte
//! offset it is about, and what was expected there.

use std::fmt;
use std::path::PathBuf;

/// Where in an image file something went wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    /// Index of the entry being read or written (0 is the first entry after the magic).
    pub entry: Option<usize>,
    /// Byte offset from the start of the file.
    pub offset: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        match self.entry {
            Some(entry) => write!(f, ": entry {entry} at offset {}", self.offset),
            None if self.offset > 0 => write!(f, " at offset {}", self.offset),
            None => Ok(()),
        }
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("{0}")]
    Io(#[source] std::io::Error),
    #[error("is a directory, not an image file")]
    IsDirectory,
    #[error("empty file, expected a magic number")]
    Empty,
    #[error("file ends after {got} of {expected} bytes of {what}")]
    Truncated {
        what: &'static str,
        expected: u64,
        got: u64,
    },
    #[error("unknown magic {found:#010x} (not a CRIU image, or a raw image such as pages-*.img)")]
    UnknownMagic { found: u32 },
    #[error(
        "a pages file compressed by `criu-rs dump --compress` (criu-rs's own form, not a CRIU \
         image): `criu-rs restore` unpacks it"
    )]
    CompressedPages,
    #[error("magic {found:#010x} after the {first} magic, expected {expected}")]
    WrongMagic {
        first: &'static str,
        found: u32,
        expected: &'static str,
    },
    #[error("{kind} image is raw data, not protobuf entries")]
    RawImage { kind: &'static str },
    #[error("entry length {len} exceeds the limit of {limit} bytes")]
    EntryTooLarge { len: u64, limit: u64 },
    #[error("{what} of {len} bytes exceeds the limit of {limit} bytes")]
    ExtraTooLarge {
        what: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("entry is not a valid {message} message: {source}")]
    Decode {
        message: String,
        source: prost::DecodeError,
    },
    #[error("{message} entry lacks required field {field}")]
    MissingRequired { message: String, field: String },
    #[error("image kind {0} has no message type in this schema")]
    NoSchema(String),
    #[error("JSON: {0}")]
    Json(String),
}

/// An error of the image layer, with its location.
#[derive(Debug)]
pub struct Error {
    pub location: Location,
    pub kind: ErrorKind,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.kind)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

impl Error {
    pub fn new(location: Location, kind: ErrorKind) -> Self {
        Error { location, kind }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
