//! `criu-rs`: CRIU's command line. This front-end parses arguments, calls the engine and
//! the image layer, and owns output and exit codes.

mod crit;
mod dump;
mod logging;

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
    /// Read, write and explore CRIU images (the same verbs and flags as CRIU's crit).
    Crit(crit::CritArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dump(args) => dump::run(args),
        Command::Crit(args) => crit::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("criu-rs: {msg}");
            ExitCode::FAILURE
        }
    }
}
