//! CRIU's image format: the schema (generated from `proto/`), the table of image kinds,
//! streaming readers and writers of framed entries, and the JSON form that CRIU's `crit`
//! prints and reads.
//!
//! This crate knows formats, not processes: nothing here touches /proc or a task.

pub mod crit;
pub mod error;
pub mod frame;
pub mod json;
pub mod kind;

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
