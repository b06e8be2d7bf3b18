//! `container checkpoint` and `container restore`: the whole container saved with the
//! engine (frozen through its cgroup) and brought back in new namespaces.

use std::path::PathBuf;

use clap::Args;

use crate::runtime::Started;
use crate::store::{Container, Store};
use crate::{Error, Which};

#[derive(Args)]
pub struct CheckpointArgs {
    /// Keep the container running after the checkpoint.
    #[arg(short = 'R', long = "leave-running")]
    pub leave_running: bool,
    /// Write the checkpoint to one archive file.
    #[arg(short = 'e', long = "export")]
    pub export: Option<PathBuf>,
    /// Print the dump's statistics.
    #[arg(long = "print-stats")]
    pub print_stats: bool,
    #[command(flatten)]
    pub which: Which,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// Restore from an archive written by `checkpoint --export`.
    #[arg(short = 'i', long = "import")]
    pub import: Option<PathBuf>,
    /// The name of the container restored from an archive.
    #[arg(short = 'n', long = "name")]
    pub name: Option<String>,
    /// Keep the checkpoint images after the restore.
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub which: Which,
}

pub fn checkpoint(_store: &Store, _args: CheckpointArgs) -> Result<u8, Error> {
    Err(Error::Msg("checkpoint: not implemented yet".into()))
}

pub fn restore(_store: &Store, _args: RestoreArgs) -> Result<u8, Error> {
    Err(Error::Msg("restore: not implemented yet".into()))
}

pub fn restore_in_monitor(_store: &Store, _c: &Container) -> Result<Started, Error> {
    Err(Error::Msg("restore: not implemented yet".into()))
}
