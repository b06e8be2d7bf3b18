//! CRIU's image format: the schema (generated from `proto/`), the table of image kinds,
//! streaming readers and writers of framed entries, and the JSON form that CRIU's `crit`
//! prints and reads.
//!
//! This crate knows formats, not processes: nothing here touches /proc or a task.
//!
//! No `unsafe` here: the format needs none.

#![forbid(unsafe_code)]

pub mod crit;
pub mod error;
pub mod flags;
pub mod frame;
pub mod json;
pub mod kind;
pub mod zpages;

pub use error::{Error, ErrorKind, Location, Result};
pub use frame::{
    create_image_dir, create_image_file, ImageReader, ImageWriter, Limits, IMAGE_DIR_MODE,
    IMAGE_FILE_MODE,
};
pub use kind::{Body, Extra, Family, ImageKind, KINDS};

/// The generated message types, one Rust type per CRIU message (`pb::CoreEntry`...).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// The encoded descriptor set of the whole schema, for reflection.
pub(crate) const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/criu_descriptors.bin"));

/// A path field of an image (`bytes` in our .proto where CRIU's says `string`: a Linux
/// path is any bytes but NUL) as a path.
pub fn path_of(bytes: &[u8]) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(bytes))
}

/// A path as the bytes an image's path field holds.
pub fn path_bytes(path: &std::path::Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

impl pb::RegFileEntry {
    /// The file's path at dump time.
    pub fn path(&self) -> &std::path::Path {
        path_of(&self.name)
    }
}
