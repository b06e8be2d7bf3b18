//! `criu-rs`: CRIU's command line. This front-end parses arguments, calls the engine and
//! the image layer, and owns output and exit codes.

mod crit;
mod dump;
mod logging;
mod restore;
mod signals;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "criu-rs",
    version,
    about = "Checkpoint/restore in userspace, in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checkpoint a process tree into an image directory.
    Dump(dump::DumpArgs),
    /// Restore a process tree from an image directory.
    Restore(restore::RestoreArgs),
    /// Read, write and explore CRIU images (the same verbs and flags as CRIU's crit).
    Crit(crit::CritArgs),
}

fn main() -> ExitCode {
    criu_core::sys::default_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        // Before any thread exists: every thread inherits the blocked stop signals.
        Command::Dump(args) => dump::run(args, &signals::Signals::catch()).map(|()| 0),
        Command::Restore(args) => restore::run(args, &signals::Signals::catch()),
        Command::Crit(args) => crit::run(args).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(msg) => {
            eprintln!("criu-rs: {msg}");
            ExitCode::FAILURE
        }
    }
}
