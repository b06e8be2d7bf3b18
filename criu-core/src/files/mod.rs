//! Open files, both ways: the dump records every descriptor of the tree (`dump.rs`),
//! the restore opens each open file description again (`restore.rs`).

pub mod fdinfo;
pub mod kinds;

mod diag;
mod dump;
mod misc;
mod pipe;
mod reg;
pub mod restore;
mod socket;

pub use dump::{FileError, FileTable, TreeChecks, DEFAULT_GHOST_LIMIT};
pub use misc::MemfdInode;
