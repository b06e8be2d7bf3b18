//! Open files, both ways: the dump records every descriptor of the tree (`dump.rs`),
//! the restore opens each open file description again (`restore.rs`).

pub mod fdinfo;
pub mod kinds;

mod anon;
mod diag;
mod dump;
mod inet;
mod inotify;
mod memfd;
mod ns;
mod pipe;
mod reg;
pub mod restore;
mod socket;
mod tty;
mod unix;

pub use dump::{FileError, FileTable, TreeChecks, DEFAULT_GHOST_LIMIT};
pub use memfd::MemfdInode;
